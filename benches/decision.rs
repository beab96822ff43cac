//! The decision path without sockets, phase by phase (criterion).
//!
//! `cargo bench --bench decision` (all), or e.g. `cargo bench --bench decision -- normalize`.
//! The async decision runs on the memory store, which never waits: each future is polled
//! once with a no-op waker, so no runtime overhead is counted.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::Method;

use smsfence::clock::Timestamp;
use smsfence::config::default_routes;
use smsfence::decide::{self, Commit, Facts, Recipient};
use smsfence::phone::{self, NumberFormat};
use smsfence::providers::{self, Op, RequestView};
use smsfence::proxy::route::{RouteTable, Target};
use smsfence::rules::RuleSet;
use smsfence::store::{memory::MemoryStore, Store};

struct Noop;
impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// Polls a future that never waits (the memory store) to completion.
fn ready<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the memory store never waits"),
    }
}

const PATH: &str = "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json";

/// Distinct, valid numbers spread over many ranges: GB mobiles +447400…, +447700…
fn number(i: u64) -> String {
    // A multiplicative hash spreads consecutive i over the 10^6 numbers of a range.
    let n = (i.wrapping_mul(2_654_435_761) % 1_000_000) as u32;
    let range = ["7400", "7500", "7700", "7800", "7900"][(i % 5) as usize];
    format!("+44{range}{n:06}")
}

fn twilio_body(to: &str) -> Bytes {
    let to: String = form_urlencoded::byte_serialize(to.as_bytes()).collect();
    Bytes::from(format!(
        "To={to}&From=%2B15005550006&Body=Your+verification+code+is+123456.+It+expires+in+10+minutes."
    ))
}

fn form_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    h
}

fn twilio_op(table: &RouteTable) -> (Op, Vec<(usize, usize)>) {
    let m = table.find(&Method::POST, PATH).expect("the twilio route");
    match m.target {
        Target::Op(op) => (op, m.captures),
        Target::Passthrough => panic!("a send endpoint"),
    }
}

fn bench_route(c: &mut Criterion) {
    let table = RouteTable::new(&default_routes());
    c.bench_function("route/match_twilio_send", |b| {
        b.iter(|| table.find(black_box(&Method::POST), black_box(PATH)))
    });
    c.bench_function("route/miss", |b| {
        b.iter(|| table.find(black_box(&Method::POST), black_box("/nothing/here")))
    });
}

fn bench_extract(c: &mut Criterion) {
    let table = RouteTable::new(&default_routes());
    let (op, captures) = twilio_op(&table);
    let headers = form_headers();
    let body = twilio_body("+447400123456");
    let params: Vec<&str> = captures.iter().map(|&(s, e)| &PATH[s..e]).collect();
    c.bench_function("extract/twilio_message", |b| {
        b.iter(|| {
            let view = RequestView {
                method: &Method::POST,
                path: PATH,
                params: &params,
                query: None,
                headers: &headers,
                body: black_box(&body),
            };
            providers::extract(op, &view, None)
        })
    });
}

fn bench_normalize(c: &mut Criterion) {
    // A mix: GB, US, Jamaica (+1 876), Italy (leading 0), France, India, Germany, Brazil.
    let numbers = [
        "+447400123456",
        "+14155550123",
        "+18765550123",
        "+390612345678",
        "+33612345678",
        "+919876543210",
        "+4915123456789",
        "+5511961234567",
    ];
    phone::fast::warm_up();
    let mut g = c.benchmark_group("normalize");
    g.throughput(Throughput::Elements(numbers.len() as u64));
    g.bench_function("fast", |b| {
        b.iter(|| {
            for n in numbers {
                let _ = black_box(phone::normalize(black_box(n), NumberFormat::E164, None));
            }
        })
    });
    g.bench_function("full_parse", |b| {
        b.iter(|| {
            for n in numbers {
                let _ = black_box(phone::normalize_full(
                    black_box(n),
                    NumberFormat::E164,
                    None,
                ));
            }
        })
    });
    g.finish();
}

fn default_rules() -> RuleSet {
    RuleSet::embedded().expect("the embedded rules compile")
}

fn facts<'a>(recipients: &'a [Recipient]) -> Facts<'a> {
    Facts {
        kind: providers::RequestKind::Send,
        recipients,
        ip: None,
        user: None,
        account: Some("AC0123456789abcdef0123456789abcdef"),
        sender: Some("+15005550006"),
        segments: 1,
    }
}

fn bench_decide(c: &mut Criterion) {
    let rules = default_rules();
    let mut g = c.benchmark_group("decide_default_rules");
    {
        let store = Store::Memory(MemoryStore::new(1_000_000));
        let r = [phone::normalize("+447400123456", NumberFormat::E164, None)];
        let mut now = Timestamp::from_unix_secs(1_800_000_000);
        g.bench_function("one_hot_number", |b| {
            b.iter(|| {
                now = now.add(Duration::from_millis(1));
                ready(decide::decide(&rules, &store, &facts(&r), now, Commit::Yes))
            })
        });
    }
    {
        let store = Store::Memory(MemoryStore::new(1_000_000));
        let dests: Vec<Recipient> = (0..65_536)
            .map(|i| phone::normalize(&number(i), NumberFormat::E164, None))
            .collect();
        let mut i = 0usize;
        let mut now = Timestamp::from_unix_secs(1_800_000_000);
        g.bench_function("new_number_each_time", |b| {
            b.iter(|| {
                i = (i + 1) % dests.len();
                now = now.add(Duration::from_millis(1));
                let r = std::slice::from_ref(&dests[i]);
                ready(decide::decide(&rules, &store, &facts(r), now, Commit::Yes))
            })
        });
    }
    g.finish();
}

/// Extract + normalize + decide: the whole request path short of sockets and forwarding.
fn bench_whole(c: &mut Criterion) {
    let rules = default_rules();
    let table = RouteTable::new(&default_routes());
    let headers = form_headers();
    let bodies: Vec<Bytes> = (0..65_536).map(|i| twilio_body(&number(i))).collect();
    let store = Store::Memory(MemoryStore::new(1_000_000));
    phone::fast::warm_up();
    let mut i = 0usize;
    let mut now = Timestamp::from_unix_secs(1_800_000_000);
    c.bench_function("whole_path/new_number_each_time", |b| {
        b.iter(|| {
            i = (i + 1) % bodies.len();
            now = now.add(Duration::from_millis(1));
            let m = table.find(&Method::POST, PATH).expect("route");
            let Target::Op(op) = m.target else {
                unreachable!("a send endpoint")
            };
            let params: Vec<&str> = m.captures.iter().map(|&(s, e)| &PATH[s..e]).collect();
            let view = RequestView {
                method: &Method::POST,
                path: PATH,
                params: &params,
                query: None,
                headers: &headers,
                body: &bodies[i],
            };
            let x = providers::extract(op, &view, None).expect("a twilio message");
            let format = x.number_format.unwrap_or_default();
            let recipients: Vec<Recipient> = x
                .recipients
                .iter()
                .map(|r| phone::normalize(r, format, None))
                .collect();
            let f = Facts {
                kind: providers::kind(op),
                recipients: &recipients,
                ip: None,
                user: None,
                account: x.account.as_deref(),
                sender: x.sender.as_deref(),
                segments: x.segments,
            };
            ready(decide::decide(&rules, &store, &f, now, Commit::Yes))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = bench_route, bench_extract, bench_normalize, bench_decide, bench_whole
}
criterion_main!(benches);
