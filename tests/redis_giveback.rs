//! A client that hangs up cannot leave a spend budget charged for a send that never went
//! out. Against a real Redis (started here on a loopback port, as in `redis.rs`), reached
//! through a relay in the test that can hold one connection's traffic from a chosen
//! command on: the request is caught with its store call held, its client hangs up
//! (hyper drops the request), the traffic is let through, and the budget must be back
//! where it was — the next send that fits it passes. Last, a client that hangs up after
//! the provider refused its send (either store).

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use common::*;

/// A `redis-server` on loopback, killed on drop.
struct Redis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        ensure_tools(&["redis-server", "redis-cli"], "install-redis.sh");
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let r = Redis {
            port,
            child,
            _dir: dir,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server up");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
                            let _ = rx.wait_for(|h| *h == Hold::Released).await;
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
}

/// A spend budget of 0.35 an hour at 0.10 a send: three sends fit, a fourth does not.
/// The store timeout is long, so that no held call can time out (and be given back
/// anyway) before the client hangs up.
async fn proxy(relay: &Relay, up: &MockUpstream, extra_rules: &str) -> Proxy {
    let cfg = format!(
        "[store]\nkind = \"redis\"\nurls = [{:?}]\ntimeout = \"30s\"\nsweep_interval = \"1h\"\n{}",
        relay.url(),
        all_presets_to(&up.url())
    );
    let rules = format!(
        "[prices]\ndefault = 0.10\n[[heuristic]]\nname = \"spend\"\nkind = \"spend_budget\"\nhourly = 0.35\n{extra_rules}"
    );
    Proxy::start(&cfg, &[("r.toml", &rules)]).await
}

/// A Twilio send written on a raw connection, to be dropped (the client hangs up).
async fn raw_send(p: &Proxy, to: &str) -> TcpStream {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("To", to)
        .append_pair("From", "+15005550006")
        .append_pair("Body", "Your code is 123456")
        .finish();
    let mut s = TcpStream::connect(p.instance.proxy_addr).await.unwrap();
    s.write_all(
        format!(
            "POST /2010-04-01/Accounts/ACtest/Messages.json HTTP/1.1\r\nhost: x\r\n\
             authorization: {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n{body}",
            BASIC.1,
            FORM.1,
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s
}

/// Hangs up, and waits until smsfence has dropped the request.
async fn hang_up(p: &Proxy, s: TcpStream) {
    drop(s);
    let closed =
        r#"smsfence_requests_total{outcome="client_closed",provider="twilio",route="twilio"} 1"#;
    let m = metrics_with(p, closed).await;
    assert!(m.contains(closed), "the request was dropped: {m}");
}

/// Sends to `to` until one is allowed (a refused try gives its own reservation back, so
/// trying again changes nothing), at most 5 s; the last status.
async fn allowed_within(p: &Proxy, to: &str) -> u16 {
    let start = Instant::now();
    loop {
        let status = twilio_send(p, to, &[]).await.status.as_u16();
        if status == 201 || start.elapsed() > Duration::from_secs(5) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The client hangs up while the call that reserves its budget is out: the script runs
/// (the reservation is made) but its answer finds the request gone. The reservation is
/// given back all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_while_the_budget_is_reserved_gives_the_reservation_back() {
    let redis = Redis::start();
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
    let redis = Redis::start();
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
