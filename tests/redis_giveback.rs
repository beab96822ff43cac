//! A client that hangs up cannot leave a spend budget charged for a send that never went
//! out. Against a real Redis (started here on a loopback port, as in `redis.rs`), reached
//! through a relay in the test that can hold one connection's traffic from a chosen
//! command on: the request is caught with its store call held, its client hangs up
//! (hyper drops the request), the traffic is let through, and the budget must be back
//! where it was — the next send that fits it passes. Then a client that hangs up after
//! the provider refused its send (either store). Last, the other writes a request makes
//! that must not be lost with it: a Verify start's reference, a verification's record,
//! a Cluster's refund of a refused request's tokens, and an auto-block's listing.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use common::redis_server::{wait_until, Redis};
use common::*;

/// A one-node Cluster on `port` holding every slot, that tells its clients to reach it
/// through `announce` (a relay's port), so that they do.
fn cluster(port: u16, announce: u16) -> Redis {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--cluster-enabled",
        "yes",
        "--cluster-port",
        &free_port().to_string(),
        "--cluster-config-file",
        &dir.path().join("nodes.conf").to_string_lossy(),
        "--cluster-announce-ip",
        "127.0.0.1",
        "--cluster-announce-port",
        &announce.to_string(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let r = Redis::start_with(port, &args, false);
    assert!(r.cli(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]).is_some());
    wait_until(Duration::from_secs(20), || {
        r.cli(&["CLUSTER", "INFO"])
            .is_some_and(|i| i.contains("cluster_state:ok"))
    });
    r
}

/// Where the relay stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hold {
    /// Everything goes through.
    Off,
    /// The first connection to send a chunk holding these bytes is held from it on.
    Armed(Vec<u8>),
    /// A connection is held.
    Holding,
    /// Let through, for good.
    Released,
    /// What the held connection sent is dropped, and the connection with it.
    Cut,
}

/// A loopback TCP relay to Redis that can hold what one connection sends.
struct Relay {
    addr: std::net::SocketAddr,
    hold: Arc<watch::Sender<Hold>>,
}

impl Relay {
    async fn start(to: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = Arc::new(watch::Sender::new(Hold::Off));
        let state = Arc::clone(&hold);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let mut held = false;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        state.send_if_modified(|h| match h {
                            Hold::Armed(p) if chunk.windows(p.len()).any(|w| w == &p[..]) => {
                                held = true;
                                *h = Hold::Holding;
                                true
                            }
                            _ => false,
                        });
                        if held {
                            let mut rx = state.subscribe();
                            let after = rx
                                .wait_for(|h| matches!(h, Hold::Released | Hold::Cut))
                                .await
                                .map(|h| h.clone());
                            if !matches!(after, Ok(Hold::Released)) {
                                break;
                            }
                            held = false;
                        }
                        if sw.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Relay { addr, hold }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Holds the first connection that sends `pattern`, from that chunk on.
    fn arm(&self, pattern: &[u8]) {
        self.hold.send_replace(Hold::Armed(pattern.to_vec()));
    }

    async fn holding(&self) {
        let mut rx = self.hold.subscribe();
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|h| *h == Hold::Holding),
        )
        .await
        .expect("the relay holds a call within 10 s")
        .unwrap();
    }

    fn release(&self) {
        self.hold.send_replace(Hold::Released);
    }

    /// Drops the held connection with what it sent from the held command on: as if the
    /// command had never been made.
    fn cut(&self) {
        self.hold.send_replace(Hold::Cut);
    }
}

/// A spend budget of 0.35 an hour at 0.10 a send: three sends fit, a fourth does not.
/// The store timeout is long, so that no held call can time out (and be given back
/// anyway) before the client hangs up.
async fn proxy(relay: &Relay, up: &MockUpstream, extra_rules: &str) -> Proxy {
    let rules = format!(
        "[prices]\ndefault = 0.10\n[[heuristic]]\nname = \"spend\"\nkind = \"spend_budget\"\nhourly = 0.35\n{extra_rules}"
    );
    proxy_with(relay, up, false, &rules).await
}

/// smsfence on Redis (a Cluster when `cluster`) through `relay`, with these rules.
async fn proxy_with(relay: &Relay, up: &MockUpstream, cluster: bool, rules: &str) -> Proxy {
    let cfg = format!(
        "[store]\nkind = \"redis\"\nurls = [{:?}]\ncluster = {cluster}\ntimeout = \"30s\"\nsweep_interval = \"1h\"\n{}",
        relay.url(),
        all_presets_to(&up.url())
    );
    Proxy::start(&cfg, &[("r.toml", rules)]).await
}

/// A Twilio send written on a raw connection, to be dropped (the client hangs up).
async fn raw_send(p: &Proxy, to: &str) -> TcpStream {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("To", to)
        .append_pair("From", "+15005550006")
        .append_pair("Body", "Your code is 123456")
        .finish();
    raw_post(p, "/2010-04-01/Accounts/ACtest/Messages.json", &body).await
}

/// A Twilio form POST written on a raw connection, to be dropped (the client hangs up).
async fn raw_post(p: &Proxy, path: &str, body: &str) -> TcpStream {
    raw_form_post(p.instance.proxy_addr, path, body).await
}

/// Hangs up, and waits until smsfence has dropped the request.
async fn hang_up(p: &Proxy, s: TcpStream) {
    drop(s);
    let closed =
        r#"smsfence_requests_total{outcome="client_closed",provider="twilio",route="twilio"} 1"#;
    let m = metrics_with(p, closed).await;
    assert!(m.contains(closed), "the request was dropped: {m}");
}

/// Calls `attempt` until its answer is `done`, at most 5 s (short pauses between tries);
/// the last answer.
async fn within_5s<T, F: std::future::Future<Output = T>>(
    mut attempt: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T {
    let start = Instant::now();
    loop {
        let answer = attempt().await;
        if done(&answer) || start.elapsed() > Duration::from_secs(5) {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends to `to` until one is allowed (a refused try gives its own reservation back, so
/// trying again changes nothing), at most 5 s; the last status.
async fn allowed_within(p: &Proxy, to: &str) -> u16 {
    let send = || async { twilio_send(p, to, &[]).await.status.as_u16() };
    within_5s(send, |status| *status == 201).await
}

/// The client hangs up while the call that reserves its budget is out: the script runs
/// (the reservation is made) but its answer finds the request gone. The reservation is
/// given back all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_while_the_budget_is_reserved_gives_the_reservation_back() {
    let redis = Redis::start(false);
    let relay = Relay::start(redis.port).await;
    let up = MockUpstream::start().await;
    let p = proxy(&relay, &up, "").await;
    for to in ["+447400123001", "+447400123002"] {
        assert_eq!(twilio_send(&p, to, &[]).await.status, 201);
    }

    // The heuristics' one store call of the third send: the window script.
    let window = redis::Script::new(include_str!("../src/store/lua/window.lua"));
    relay.arm(window.get_hash().as_bytes());
    let s = raw_send(&p, "+447400123003").await;
    relay.holding().await;
    hang_up(&p, s).await;
    relay.release();

    // 0.20 spent: a third send fits (0.30 of 0.35), were the dropped one's 0.10 still
    // reserved it would not (0.40).
    assert_eq!(allowed_within(&p, "+447400999001").await, 201);
    assert_eq!(up.requests().len(), 3, "the dropped send never went out");
}

/// A send refused by one heuristic (prefix velocity) whose auto-block is being set when
/// the client hangs up: its spend reservation is given back all the same (it used to be
/// given back only after the auto-block was set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_while_an_auto_block_is_set_gives_the_reservation_back() {
    let redis = Redis::start(false);
    let relay = Relay::start(redis.port).await;
    let up = MockUpstream::start().await;
    let pv = "[[heuristic]]\nname = \"pv\"\nkind = \"prefix_velocity\"\ndrop_digits = [3]\nwindow = \"10m\"\nmax_requests = 2\nblock_for = \"1m\"\n";
    let p = proxy(&relay, &up, pv).await;
    for to in ["+447400123001", "+447400123002"] {
        assert_eq!(twilio_send(&p, to, &[]).await.status, 201);
    }

    // The third send to the block trips `pv`: the auto-block is a `SET … NX`.
    relay.arm(b"\r\n$3\r\nSET\r\n");
    let s = raw_send(&p, "+447400123003").await;
    relay.holding().await;
    hang_up(&p, s).await;
    relay.release();

    assert_eq!(allowed_within(&p, "+447400999001").await, 201);
    assert_eq!(up.requests().len(), 3, "the refused send never went out");
}

/// An upstream that answers its first request with a 400 whose body never ends, and every
/// later one with a 201.
async fn refusing_then_stalling_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut s, _)) = listener.accept().await {
            let stall = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    // One request per read is enough for these small ones.
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let answer: &[u8] = if stall {
                        b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"code\":"
                    } else {
                        b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
                    };
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                    if stall {
                        // Holds the connection open until the proxy lets go of it.
                        let _ = s.read(&mut buf).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The provider refused a Verify start (400), and the client hangs up while smsfence still
/// reads that answer's body: the send was not taken, so its spend is given back as if the
/// client had waited (it used to be given back only after the body was read). The same
/// with either store: here the in-process one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_after_the_provider_refused_gives_the_reservation_back() {
    let up = refusing_then_stalling_upstream().await;
    let cfg =
        format!("[[route]]\nname = \"twilio\"\npreset = \"twilio\"\nupstream = \"http://{up}\"\n");
    let rules = "[prices]\ndefault = 0.10\n[[heuristic]]\nname = \"spend\"\nkind = \"spend_budget\"\nhourly = 0.35\n";
    let p = Proxy::start(&cfg, &[("r.toml", rules)]).await;

    let body = "To=%2B447400123001&Channel=sms";
    let mut s = TcpStream::connect(p.instance.proxy_addr).await.unwrap();
    s.write_all(
        format!(
            "POST /v2/Services/VAtest/Verifications HTTP/1.1\r\nhost: x\r\n\
             authorization: {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n{body}",
            BASIC.1,
            FORM.1,
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The 400 is in once smsfence counts it; its body is still being read.
    let refused =
        r#"smsfence_upstream_duration_seconds_count{provider="twilio",status_class="4xx"} 1"#;
    let m = metrics_with(&p, refused).await;
    assert!(m.contains(refused), "the provider's answer arrived: {m}");
    hang_up(&p, s).await;

    // Nothing spent: three sends fit the budget (0.30 of 0.35).
    for to in ["+447400999001", "+447400999002", "+447400999003"] {
        assert_eq!(twilio_send(&p, to, &[]).await.status, 201, "{to}");
    }
}

/// Twilio Verify on a mock: a start answers `VEheld`; a check approves it, naming no
/// number (the check is matched to its number by the start's reference).
async fn verify_upstream() -> MockUpstream {
    MockUpstream::with(|r| {
        if r.uri.contains("VerificationCheck") {
            Reply::json(200, r#"{"sid":"VEheld","status":"approved"}"#)
        } else {
            Reply::json(201, r#"{"sid":"VEheld","status":"pending"}"#)
        }
    })
    .await
}

/// The client of a Verify start hangs up while its reference is being shared, and that
/// shared copy is lost (cut here): this instance still matches the check, which carries
/// only the reference, to its number, and counts its approval as a conversion. (The
/// shared copy used to be written before this instance's own, which a hang-up then lost
/// too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_while_a_verify_start_is_shared_keeps_its_reference() {
    let redis = Redis::start(false);
    let relay = Relay::start(redis.port).await;
    let up = verify_upstream().await;
    let p = proxy(&relay, &up, "").await;

    // The reference's key is `sf:{v…}:r`.
    relay.arm(b"}:r\r\n");
    let s = raw_post(
        &p,
        "/v2/Services/VAtest/Verifications",
        "To=%2B447400123001&Channel=sms",
    )
    .await;
    relay.holding().await;
    hang_up(&p, s).await;
    relay.cut();

    let check = send(
        "POST",
        &p.url("/v2/Services/VAtest/VerificationCheck"),
        &[FORM, BASIC],
        "VerificationSid=VEheld&Code=123456",
    )
    .await;
    assert_eq!(check.status, 200, "{}", check.text());
    let verified =
        r#"smsfence_conversions_total{country="GB",outcome="verified",source="verify_check"} 1"#;
    let m = metrics_with(&p, verified).await;
    assert!(m.contains(verified), "the check was matched: {m}");
}

/// Polls the dry-run `/v1/check` of `number` until it allows, at most 5 s; the last
/// decision.
async fn checks_allowed_within(p: &Proxy, number: &str) -> String {
    let check = || async {
        let body = format!(r#"{{"number":"{number}"}}"#);
        let a = send("POST", &p.admin("/v1/check"), &[JSON], body).await;
        a.json()["decision"].as_str().unwrap_or("").to_owned()
    };
    within_5s(check, |decision| decision == "allow").await
}

/// A verification whose client hangs up while it is recorded (its number just marked
/// trusted) still counts in the conversion rate. It used to stop there: the verification
/// was never counted, and could not be again (its number trusted, later verifications
/// are skipped), so the rate read too low and sends were refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_while_a_verification_is_recorded_still_counts_it() {
    let redis = Redis::start(false);
    let relay = Relay::start(redis.port).await;
    let up = verify_upstream().await;
    let rules = "[settings]\ntrust_verified = \"30d\"\n\
        [[heuristic]]\nname = \"conv\"\nkind = \"conversion_rate\"\nkey = \"country\"\nwindow = \"1h\"\nmin_sends = 3\nmin_rate = 0.5\n";
    let p = proxy_with(&relay, &up, false, rules).await;
    for n in ["+18765550121", "+18765550122"] {
        assert_eq!(twilio_send(&p, n, &[]).await.status, 201);
    }
    let third = twilio_send(&p, "+18765550123", &[]).await;
    assert_eq!(third.header("smsfence-reason"), Some("low_conversion"));

    // The first of the two verifications: held at its trust mark, `… 0 verified`.
    relay.arm(b" 0 verified\r\n");
    let s = raw_post(
        &p,
        "/v2/Services/VAtest/VerificationCheck",
        "To=%2B18765550121&Code=123456",
    )
    .await;
    relay.holding().await;
    hang_up(&p, s).await;
    relay.release();
    let b = send(
        "POST",
        &p.admin("/v1/feedback"),
        &[JSON],
        r#"{"number":"+18765550122","outcome":"verified"}"#,
    )
    .await;
    assert_eq!(b.status, 204);

    // Two of three verified: the rate is back over a half. With one it would not be.
    assert_eq!(checks_allowed_within(&p, "+18765550124").await, "allow");
}

/// A request whose limits live in two Cluster slots is refused by one after the other
/// took its token, and its client hangs up while the slots' calls are out: the token the
/// other slot took is given back all the same (the refund used to be made only if the
/// request was still there to make it). A one-node Cluster reached through the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_while_a_cluster_refuses_gives_the_other_slots_tokens_back() {
    let port = free_port();
    let relay = Relay::start(port).await;
    let _redis = cluster(port, relay.addr.port());
    let up = MockUpstream::start().await;
    let both = "[[limit]]\nname = \"per-number\"\nkey = \"number\"\nrate = \"1/1h\"\nburst = 1\n\
                [[limit]]\nname = \"per-prefix\"\nkey = \"prefix\"\ndrop_digits = 3\nrate = \"2/1h\"\nburst = 2\n";
    let p = proxy_with(&relay, &up, true, both).await;
    for to in ["+447400123001", "+447400123002"] {
        let a = twilio_send(&p, to, &[]).await;
        assert_eq!(a.status, 201, "{}", a.text());
    }

    // The third send: its number's slot takes a token, its prefix's refuses.
    let gcra = redis::Script::new(include_str!("../src/store/lua/gcra.lua"));
    relay.arm(gcra.get_hash().as_bytes());
    let s = raw_send(&p, "+447400123003").await;
    relay.holding().await;
    hang_up(&p, s).await;
    relay.release();

    // Without the prefix limit, the number's token is all that decides.
    let only_number =
        "[[limit]]\nname = \"per-number\"\nkey = \"number\"\nrate = \"1/1h\"\nburst = 1\n";
    let dir = p.rules_dir.as_ref().unwrap().path();
    std::fs::write(dir.join("r.toml"), only_number).unwrap();
    let r = send("POST", &p.admin("/v1/reload"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(allowed_within(&p, "+447400123003").await, 201);
    assert_eq!(allowed_within(&p, "+447400123001").await, 429, "spent");
}

/// An auto-block whose request's client hangs up as the block is set is listed all the
/// same (`GET /v1/blocks`), its offence counted: its writes run to their end. (The block
/// used to be enforced but left out of the listing, and the next one not doubled.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_while_an_auto_block_is_set_still_lists_it() {
    let redis = Redis::start(false);
    let relay = Relay::start(redis.port).await;
    let up = MockUpstream::start().await;
    let pv = "[[heuristic]]\nname = \"pv\"\nkind = \"prefix_velocity\"\ndrop_digits = [3]\nwindow = \"10m\"\nmax_requests = 2\nblock_for = \"1m\"\n";
    let p = proxy_with(&relay, &up, false, pv).await;
    for to in ["+447400123001", "+447400123002"] {
        assert_eq!(twilio_send(&p, to, &[]).await.status, 201);
    }

    // The third send to the block trips `pv`: the auto-block is a `SET … NX`.
    relay.arm(b"\r\n$3\r\nSET\r\n");
    let s = raw_send(&p, "+447400123003").await;
    relay.holding().await;
    hang_up(&p, s).await;
    relay.release();

    let start = Instant::now();
    let listed = loop {
        let blocks = send("GET", &p.admin("/v1/blocks"), &[], "").await.json();
        if blocks["blocks"][0]["block"] == "pv prefix +447400123"
            || start.elapsed() > Duration::from_secs(5)
        {
            break blocks;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        listed["blocks"][0]["block"], "pv prefix +447400123",
        "{listed}"
    );
    // Its offence count is in too (a second `SET`), for the next block to double.
    let start = Instant::now();
    while redis.calls("set") < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the offence count was set"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Shutdown waits for the writes a worker's requests left running in tasks of their own:
/// a worker's event loop ends with `settle`, and a write still held at that moment (here a
/// Verify start's shared reference, left running by a request that is gone) lands once
/// Redis answers, instead of being cut off with the event loop.
#[test]
fn a_worker_ending_waits_for_its_detached_writes() {
    use smsfence::phone::{normalize, NumberFormat};
    use smsfence::store::{redis::RedisStore, Store};
    let test_rt = tokio::runtime::Runtime::new().unwrap();
    let redis = Redis::start(false);
    let relay = test_rt.block_on(Relay::start(redis.port));
    let cfg = smsfence::config::Config::from_toml(
        "t.toml",
        &format!(
            "[store]\nkind = \"redis\"\nurls = [{:?}]\ntimeout = \"30s\"\n",
            relay.url()
        ),
    )
    .unwrap()
    .store;
    let dest = normalize("+447400123456", NumberFormat::E164, None).unwrap();
    // The reference's `SET … PX ttl`.
    relay.arm(b"$2\r\nPX\r\n");

    // A worker of its own, as smsfence's: a single-threaded event loop on its thread.
    let worker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let settled = rt.block_on(async {
            let store = Store::Redis(RedisStore::connect(&cfg).await.unwrap());
            // Started, and dropped unawaited: the request that made it is gone.
            drop(store.put_ref("VE-settle", &dest, Duration::from_secs(3600)));
            store.settle(Duration::from_secs(10)).await
        });
        drop(rt);
        settled
    });
    test_rt.block_on(relay.holding());
    // Still settling while its write has no answer: the relay delivers what it held even
    // once its client is gone, so the reference landing below would not tell a settle
    // that waits from one that returns as soon as the write is on the wire.
    let held = Instant::now();
    while held.elapsed() < Duration::from_millis(300) {
        assert!(
            !worker.is_finished(),
            "the worker ended with its write unanswered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    relay.release();
    assert!(worker.join().unwrap(), "settled within 10 s");

    let check = test_rt.block_on(async {
        let store = Store::Redis(RedisStore::connect(&redis.store_config()).await.unwrap());
        store.get_ref("VE-settle").await.unwrap()
    });
    assert_eq!(check.map(|d| d.e164()), Some("+447400123456".to_owned()));
}

/// Shutdown waits for what a request left running: a client hangs up while its budget's
/// reserving script is held, the instance (two proxy workers: the request is on either
/// event loop) is shut down, and `Instance::wait` does not return until Redis answers and
/// the reservation is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_held_reservation_to_be_given_back() {
    let redis = Redis::start(false);
    let relay = Relay::start(redis.port).await;
    let up = MockUpstream::start().await;
    let rules =
        "[prices]\ndefault = 0.10\n[[heuristic]]\nname = \"spend\"\nkind = \"spend_budget\"\nhourly = 0.35\n";
    let config = |url: String| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworker_threads = 2\n\
             [store]\nkind = \"redis\"\nurls = [{url:?}]\ntimeout = \"30s\"\nsweep_interval = \"1h\"\n{}",
            all_presets_to(&up.url())
        )
    };
    let p = Proxy::start(&config(relay.url()), &[("r.toml", rules)]).await;
    for to in ["+447400123001", "+447400123002"] {
        assert_eq!(twilio_send(&p, to, &[]).await.status, 201);
    }
    let window = redis::Script::new(include_str!("../src/store/lua/window.lua"));
    relay.arm(window.get_hash().as_bytes());
    let s = raw_send(&p, "+447400123003").await;
    relay.holding().await;
    hang_up(&p, s).await;

    let Proxy { instance, .. } = p;
    instance.shutdown();
    let waiting = tokio::spawn(instance.wait());
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) {
        assert!(!waiting.is_finished(), "shut down with a write unanswered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.release();
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("shut down within 10 s of Redis answering")
        .unwrap();

    // 0.20 spent: a third send fits (0.30 of 0.35); were the dropped one's 0.10 still
    // reserved it would not (0.40).
    let q = Proxy::start(&config(redis.url()), &[("r.toml", rules)]).await;
    assert_eq!(allowed_within(&q, "+447400999001").await, 201);
}
