//! The decision path without sockets, phase by phase (criterion).
//!
//! `cargo bench --bench decision` (all), or e.g. `cargo bench --bench decision -- normalize`.
//! The async decision runs on the memory store, which never waits: each future is polled
//! once with a no-op waker, so no runtime overhead is counted.
//!
//! With the shipped rules, a stream of new numbers to one country is refused after a
//! while (country velocity, conversion rate): it measures the defended state. The
//! `…_all_forwarded` variants evaluate the same rules with every request allowed (number
//! limits as shipped, other limits raised out of reach, heuristics in shadow mode), which
//! is what a request that is forwarded costs. Each bench prints the verdicts it saw.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::Method;

use smsfence::clock::Timestamp;
use smsfence::config::default_routes;
use smsfence::decide::{self, Commit, Decision, Facts, Recipient, Verdict};
use smsfence::phone::{self, NumberFormat};
use smsfence::providers::{self, RequestView};
use smsfence::proxy::route::{RouteTable, Target};
use smsfence::rules::RuleSet;
use smsfence::store::{memory::MemoryStore, Store};

#[path = "common/rules.rs"]
mod common_rules;
use common_rules::all_forwarded_rules;

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

/// Distinct, valid numbers spread over many ranges: GB mobiles +447400…, +447300…
fn number(i: u64) -> String {
    // A multiplicative hash spreads consecutive i over the 10^6 numbers of a range.
    let n = (i.wrapping_mul(2_654_435_761) % 1_000_000) as u32;
    let range = ["7400", "7500", "7300", "7800", "7900"][(i % 5) as usize];
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

fn bench_route(c: &mut Criterion) {
    let table = RouteTable::new(&default_routes());
    c.bench_function("route/match_twilio_send", |b| {
        b.iter(|| table.find(black_box(&Method::POST), black_box(PATH)))
    });
    c.bench_function("route/miss", |b| {
        b.iter(|| table.find(black_box(&Method::POST), black_box("/nothing/here")))
    });
}

fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h
}

/// One send request per built-in preset, as its SDK writes it.
fn preset_requests() -> Vec<(&'static str, &'static str, HeaderMap, Bytes)> {
    let text = "Your verification code is 123456. It expires in 10 minutes.";
    vec![
        (
            "twilio_message",
            PATH,
            form_headers(),
            twilio_body("+447400123456"),
        ),
        (
            "twilio_verify_start",
            "/v2/Services/VA0123456789abcdef0123456789abcdef/Verifications",
            form_headers(),
            Bytes::from_static(b"To=%2B447400123456&Channel=sms"),
        ),
        (
            "vonage_sms",
            "/sms/json",
            form_headers(),
            Bytes::from(format!(
                "api_key=abcd1234&api_secret=secret&to=447400123456&from=Acme&text={}",
                form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>()
            )),
        ),
        (
            "telnyx_message",
            "/v2/messages",
            json_headers(),
            Bytes::from(format!(
                r#"{{"from":"+15005550006","to":"+447400123456","text":"{text}"}}"#
            )),
        ),
        (
            "plivo_message",
            "/v1/Account/MA0123456789ABCDEF01/Message/",
            json_headers(),
            Bytes::from(format!(
                r#"{{"src":"+15005550006","dst":"447400123456","text":"{text}"}}"#
            )),
        ),
        (
            "sinch_batch",
            "/xms/v1/plan0123456789/batches",
            json_headers(),
            Bytes::from(format!(
                r#"{{"from":"+15005550006","to":["447400123456"],"body":"{text}"}}"#
            )),
        ),
        (
            "infobip_v3",
            "/sms/3/messages",
            json_headers(),
            Bytes::from(format!(
                r#"{{"messages":[{{"sender":"Acme","destinations":[{{"to":"447400123456"}}],"content":{{"text":"{text}"}}}}]}}"#
            )),
        ),
    ]
}

fn bench_extract(c: &mut Criterion) {
    let table = RouteTable::new(&default_routes());
    let mut g = c.benchmark_group("extract");
    for (name, path, headers, body) in preset_requests() {
        let m = table.find(&Method::POST, path).expect("a preset route");
        let Target::Op(op) = m.target else {
            panic!("{name}: a send endpoint")
        };
        let params: Vec<&str> = m.captures.iter().map(|&(s, e)| &path[s..e]).collect();
        let view = |body| RequestView {
            method: &Method::POST,
            path,
            params: &params,
            query: None,
            headers: &headers,
            body,
        };
        // A bench of an extraction that fails would measure an error path.
        let x =
            providers::extract(op, &view(&body), None).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(x.recipients.len(), 1, "{name}");
        g.bench_function(name, |b| {
            b.iter(|| providers::extract(op, &view(black_box(&body)), None))
        });
    }
    g.finish();
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
    let fast = numbers
        .iter()
        .filter(|n| phone::fast::normalize(&n[1..]).is_some())
        .count();
    for n in numbers {
        assert_eq!(
            phone::normalize(n, NumberFormat::E164, None),
            phone::normalize_full(n, NumberFormat::E164, None),
            "the fast path and the full parse disagree"
        );
    }
    eprintln!(
        "normalize: {fast} of {} numbers take the fast path",
        numbers.len()
    );
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

/// The verdicts a bench saw, printed after it so that a reader knows which path it timed.
#[derive(Default)]
struct Mix {
    allow: u64,
    refused: std::collections::BTreeMap<String, u64>,
}

impl Mix {
    fn add(&mut self, d: &Decision) {
        match &d.verdict {
            Verdict::Allow => self.allow += 1,
            v => {
                let (reason, rule) = v
                    .hit()
                    .map_or(("?", "?"), |h| (h.reason.as_str(), &*h.rule));
                *self
                    .refused
                    .entry(format!("{} {reason} ({rule})", v.as_str()))
                    .or_default() += 1;
            }
        }
    }

    fn print(&self, name: &str) {
        let total = self.allow + self.refused.values().sum::<u64>();
        if total == 0 {
            return; // filtered out
        }
        let pct = |n: u64| 100.0 * n as f64 / total.max(1) as f64;
        let mut line = format!(
            "{name}: verdicts over {total} runs: allow {:.1}%",
            pct(self.allow)
        );
        for (k, n) in &self.refused {
            line.push_str(&format!(", {k} {:.1}%", pct(*n)));
        }
        eprintln!("{line}");
    }
}

/// A store whose key ceiling a bench never reaches. At the default ceiling (a million
/// keys), a few hundred thousand runs of new numbers fill the store with keys that are not
/// idle yet (the shipped number limits keep a key for up to 2.4 hours), and from then on
/// the cost per request depends on how many runs criterion happened to make before: that
/// regime is measured by `benches/memory.rs` (its flood reports the time per decision
/// before and after the ceiling is reached).
fn unbounded_store() -> Store {
    Store::Memory(MemoryStore::new(usize::MAX))
}

fn bench_decide(c: &mut Criterion) {
    let mut g = c.benchmark_group("decide_default_rules");
    {
        let rules = default_rules();
        let store = Store::Memory(MemoryStore::new(1_000_000));
        let r = [phone::normalize("+447400123456", NumberFormat::E164, None)];
        let mut now = Timestamp::from_unix_secs(1_800_000_000);
        let mut mix = Mix::default();
        g.bench_function("one_hot_number", |b| {
            b.iter(|| {
                now = now.add(Duration::from_millis(1));
                let d = ready(decide::decide(&rules, &store, &facts(&r), now, Commit::Yes));
                mix.add(&d);
                d
            })
        });
        mix.print("decide_default_rules/one_hot_number");
    }
    for (name, rules) in [
        ("new_number_each_time", default_rules()),
        ("new_number_each_time_all_forwarded", all_forwarded_rules()),
    ] {
        // A new number every run (a million distinct ones before any repeats), the
        // number normalized outside the timed part.
        let store = unbounded_store();
        let mut i = 0u64;
        let mut now = Timestamp::from_unix_secs(1_800_000_000);
        let mut mix = Mix::default();
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    i += 1;
                    [phone::normalize(&number(i), NumberFormat::E164, None)]
                },
                |r| {
                    now = now.add(Duration::from_millis(1));
                    let d = ready(decide::decide(&rules, &store, &facts(&r), now, Commit::Yes));
                    mix.add(&d);
                    d
                },
                BatchSize::SmallInput,
            )
        });
        mix.print(&format!("decide_default_rules/{name}"));
    }
    g.finish();
}

/// Extract + normalize + decide: the whole request path short of sockets and forwarding.
fn bench_whole(c: &mut Criterion) {
    let table = RouteTable::new(&default_routes());
    let headers = form_headers();
    phone::fast::warm_up();
    let mut g = c.benchmark_group("whole_path");
    for (name, rules) in [
        ("new_number_each_time", default_rules()),
        ("new_number_each_time_all_forwarded", all_forwarded_rules()),
    ] {
        let store = unbounded_store();
        let mut i = 0u64;
        let mut now = Timestamp::from_unix_secs(1_800_000_000);
        let mut mix = Mix::default();
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    i += 1;
                    twilio_body(&number(i))
                },
                |body| {
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
                        body: &body,
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
                    let d = ready(decide::decide(&rules, &store, &f, now, Commit::Yes));
                    mix.add(&d);
                    d
                },
                BatchSize::SmallInput,
            )
        });
        mix.print(&format!("whole_path/{name}"));
    }
    g.finish();
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
