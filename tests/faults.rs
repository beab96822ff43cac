//! Hostile clients and faults: connections that never finish, slow admin clients,
//! upstreams that break, and shutdown with connections that never end.

mod common;

use std::time::Duration;

use common::*;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NO_RULES: &[(&str, &str)] = &[];

fn twilio_route(upstream: &str, extra: &str) -> String {
    format!("[[route]]\nname = \"twilio\"\npreset = \"twilio\"\nupstream = \"{upstream}\"\n{extra}")
}

/// Reads until the peer closes (or errors); `None` if it is still open after `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    match tokio::time::timeout(within, s.read_to_end(&mut buf)).await {
        Ok(_) => Some(buf),
        Err(_) => None,
    }
}

const FAST: &str = "[server]\nlisten = \"127.0.0.1:0\"\nrequest_read_timeout = \"300ms\"\n";

/// A connection that never sends a byte is closed like one that sends its headers too
/// slowly: otherwise each holds a file descriptor for ever.
#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let p = Proxy::start(FAST, NO_RULES).await;
    for addr in [p.instance.proxy_addr, p.instance.admin_addr] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut s, Duration::from_secs(3))
                .await
                .is_some(),
            "{addr}: a silent connection is still open"
        );
    }
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert!(
        m.contains("smsfence_connection_errors_total{kind=\"timeout\"} 2"),
        "{m}"
    );
}

/// The same for a client that starts the HTTP/2 preface and stops.
#[tokio::test]
async fn a_connection_that_stops_inside_the_h2_preface_is_closed() {
    let p = Proxy::start(FAST, NO_RULES).await;
    let mut s = TcpStream::connect(p.instance.proxy_addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(3))
            .await
            .is_some(),
        "a stalled preface is still open"
    );
}

/// Slow headers (one byte, then nothing) are cut off by the header timeout.
#[tokio::test]
async fn slow_headers_are_cut_off() {
    let p = Proxy::start(FAST, NO_RULES).await;
    let mut s = TcpStream::connect(p.instance.proxy_addr).await.unwrap();
    s.write_all(b"POST /2010-04-01/Accounts/ACtest/Messages.json HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3))
        .await
        .is_some());
}

/// An admin client that announces a body and sends it too slowly gets 408, as a proxy
/// client does, instead of holding its connection and handler for ever.
#[tokio::test]
async fn a_slow_admin_body_is_a_408() {
    let p = Proxy::start(FAST, NO_RULES).await;
    let answer = stalled_answer(
        p.instance.admin_addr,
        b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"number\":",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
}

/// Writes the start of a request and stops: what the server answered before closing.
async fn stalled_answer(addr: std::net::SocketAddr, start: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(start).await.unwrap();
    let buf = closed_within(&mut s, Duration::from_secs(3))
        .await
        .expect("answered and closed within 3 s");
    String::from_utf8_lossy(&buf).into_owned()
}

/// A proxy client's slow body: 408.
#[tokio::test]
async fn a_slow_proxy_body_is_a_408() {
    let p = Proxy::start(FAST, NO_RULES).await;
    let answer = stalled_answer(
        p.instance.proxy_addr,
        b"POST /2010-04-01/Accounts/ACtest/Messages.json HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nTo=",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
}

/// A chunked body past the limit: 413, never forwarded.
#[tokio::test]
async fn a_chunked_body_past_the_limit_is_a_413() {
    let up = MockUpstream::start().await;
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 100\n{}",
        twilio_route(&up.url(), "")
    );
    let p = Proxy::start(&cfg, NO_RULES).await;
    let mut s = TcpStream::connect(p.instance.proxy_addr).await.unwrap();
    let mut req = b"POST /2010-04-01/Accounts/ACtest/Messages.json HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..10 {
        req.extend_from_slice(b"20\r\n");
        req.extend_from_slice(&[b'a'; 32]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&req).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text:?}");
    assert!(up.requests().is_empty());
}

/// Shutdown with a response that never ends: the drain timeout is honoured.
#[tokio::test]
async fn shutdown_with_a_never_ending_answer_stops_after_the_drain_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 4096];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
                    .await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
        }
    });
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"300ms\"\n{}",
        twilio_route(&format!("http://{addr}"), "")
    );
    let p = Proxy::start(&cfg, NO_RULES).await;
    let mut s = TcpStream::connect(p.instance.proxy_addr).await.unwrap();
    s.write_all(b"GET /2010-04-01/Accounts/ACtest/Messages/SM1.json HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut b = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 200"));
    p.instance.shutdown();
    tokio::time::timeout(Duration::from_secs(5), p.instance.wait())
        .await
        .expect("stopped after the drain timeout");
}

/// An upstream that closes without answering (after the request was written): 502, once.
#[tokio::test]
async fn an_upstream_that_hangs_up_is_a_502_sent_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let mut b = [0u8; 4096];
                if s.read(&mut b).await.unwrap_or(0) > 0 {
                    c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await;
                drop(s);
            });
        }
    });
    let p = Proxy::start(&twilio_route(&format!("http://{addr}"), ""), NO_RULES).await;
    let a = twilio_send(&p, "+14155550123", &[]).await;
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// TLS to a plain-HTTP server: 502.
#[tokio::test]
async fn a_tls_failure_is_a_502() {
    let up = MockUpstream::start().await;
    let p = Proxy::start(&twilio_route(&format!("https://{}", up.addr), ""), NO_RULES).await;
    let a = twilio_send(&p, "+14155550123", &[]).await;
    assert_eq!(a.status, 502, "{}", a.text());
}

/// h2c (prior knowledge) is still served on a connection that lives longer than the header
/// timeout, as long as it is in use; so is an HTTP/1 request shorter than the preface.
#[tokio::test]
async fn h2c_and_short_http1_requests_are_still_served() {
    let config = "[server]\nlisten = \"127.0.0.1:0\"\nrequest_read_timeout = \"1s\"\n";
    let p = Proxy::start(config, NO_RULES).await;
    let mut sender = h2c_connect(&p).await;
    // 3 × 450 ms apart: past the 1 s header timeout since the connection was made, but
    // never idle for that long (a margin for a busy machine's late timers).
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(h2c_send(&mut sender, &p).await, Some(201));
    }

    let mut s = TcpStream::connect(p.instance.admin_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let buf = closed_within(&mut s, Duration::from_secs(3)).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.0 404"), "{text:?}");
}

/// An h2c connection idle for the header timeout is closed, as an HTTP/1.1 one is (it used
/// to be kept for ever: a file descriptor per idle client); a request in flight when it
/// goes idle still gets its answer (GOAWAY, then the connection ends).
#[tokio::test]
async fn an_idle_h2c_connection_is_closed() {
    let up = MockUpstream::start().await;
    let config = format!("{FAST}{}", twilio_route(&up.url(), ""));
    let p = Proxy::start(&config, NO_RULES).await;
    let mut sender = h2c_connect(&p).await;
    assert_eq!(h2c_send(&mut sender, &p).await, Some(201));
    let closed = async {
        while !sender.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(3), closed)
            .await
            .is_ok(),
        "an idle h2c connection is still open"
    );

    // The upstream holds the answer past the idle limit: the request still completes.
    let held = MockUpstream::with(|_| Reply {
        hang: true,
        ..Reply::json(201, r#"{"sid":"SMheld"}"#)
    })
    .await;
    let config = format!("{FAST}{}", twilio_route(&held.url(), ""));
    let p = Proxy::start(&config, NO_RULES).await;
    let mut sender = h2c_connect(&p).await;
    let release = async {
        held.arrived.notified().await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        held.release();
    };
    let (status, ()) = tokio::join!(h2c_send(&mut sender, &p), release);
    assert_eq!(status, Some(201));
}

/// An h2c (prior knowledge) connection to the proxy.
async fn h2c_connect(p: &Proxy) -> hyper::client::conn::http2::SendRequest<Full<bytes::Bytes>> {
    let s = TcpStream::connect(p.instance.proxy_addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// A Twilio send over h2c: its status, `None` if the connection refused it.
async fn h2c_send(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<bytes::Bytes>>,
    p: &Proxy,
) -> Option<u16> {
    use http_body_util::BodyExt;
    let req = hyper::Request::post(p.url("/2010-04-01/Accounts/ACtest/Messages.json"))
        .header(FORM.0, FORM.1)
        .header(BASIC.0, BASIC.1)
        .body(Full::new(bytes::Bytes::from_static(
            b"To=%2B14155550123&From=%2B15005550006&Body=hi",
        )))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .unwrap()
        .ok()?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await.unwrap();
    Some(status)
}

/// A generic route passing its whole space through (`roots = ["/**"]`).
fn catch_all_route(upstream: &str) -> String {
    format!(
        "[[route]]\nname = \"g\"\npreset = \"generic\"\nupstream = \"{upstream}\"\n\
[route.generic]\nmethod = \"POST\"\npath = \"/send\"\nroots = [\"/**\"]\n\
recipients = {{ form = \"to\" }}\n"
    )
}

/// CONNECT asks for a tunnel, which a reverse proxy does not make: it is refused at once
/// (it used to go upstream as `CONNECT /`, and the client waited on a tunnel).
#[tokio::test]
async fn connect_is_refused_and_never_forwarded() {
    let up = MockUpstream::start().await;
    let p = Proxy::start(&catch_all_route(&up.url()), NO_RULES).await;
    let mut s = TcpStream::connect(p.instance.proxy_addr).await.unwrap();
    s.write_all(b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n")
        .await
        .unwrap();
    let mut b = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut b))
        .await
        .expect("answered within 3 s")
        .unwrap();
    let text = String::from_utf8_lossy(&b[..n]);
    assert!(text.starts_with("HTTP/1.1 405"), "{text:?}");
    assert!(up.requests().is_empty());
    // The rest of that space still passes through.
    let a = send("GET", &p.url("/anything?x=1"), &[], "").await;
    assert_eq!(a.status, 201);
    assert_eq!(up.requests()[0].uri, "/anything?x=1");
}

/// smsfence never asks an upstream to switch protocols (it drops `Upgrade`), so a 101 is
/// a broken upstream: 502, not a 101 that leaves the client's connection in limbo.
#[tokio::test]
async fn an_upstream_switching_protocols_is_a_502() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 4096];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
                    .await;
                let _ = s.read(&mut b).await;
            });
        }
    });
    let p = Proxy::start(&twilio_route(&format!("http://{addr}"), ""), NO_RULES).await;
    let a = send(
        "GET",
        &p.url("/2010-04-01/Accounts/ACtest/Messages/SM1.json"),
        &[BASIC, ("connection", "upgrade"), ("upgrade", "websocket")],
        "",
    )
    .await;
    assert_eq!(a.status, 502, "{}", a.text());
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert!(
        m.contains(r#"smsfence_upstream_errors_total{kind="other",provider="twilio"} 1"#),
        "{m}"
    );
}

/// An upstream that answers with `answer` and then, holding the connection, sends nothing.
async fn stalling_upstream(answer: &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 4096];
                let _ = s.read(&mut b).await;
                let _ = s.write_all(answer).await;
                let _ = s.read(&mut b).await;
            });
        }
    });
    addr
}

/// An upstream whose body stops coming (after its head, or part-way) is cut off once
/// nothing has come for `upstream.timeout`: the client's connection is closed (its answer
/// cannot be completed) and the failure is counted as a timeout. It used to hang for as
/// long as the upstream held its connection.
#[tokio::test]
async fn an_upstream_body_that_stops_coming_is_cut_off_after_the_timeout() {
    let addr = stalling_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"si",
    )
    .await;
    let cfg = format!(
        "[upstream]\ntimeout = \"300ms\"\n{}",
        twilio_route(&format!("http://{addr}"), "")
    );
    let p = Proxy::start(&cfg, NO_RULES).await;
    for path in [
        // Streamed as it comes, and a Verify answer read for its conversion signal.
        "/2010-04-01/Accounts/ACtest/Messages/SM1.json",
        "/v2/Services/VA1/Verifications/VE1",
    ] {
        let mut s = TcpStream::connect(p.instance.proxy_addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let buf = closed_within(&mut s, Duration::from_secs(3))
            .await
            .unwrap_or_else(|| panic!("{path}: the client still waits"));
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text:?}");
        assert!(text.ends_with("{\"si"), "{path}: {text:?}");
    }
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert!(
        m.contains(r#"smsfence_upstream_errors_total{kind="timeout",provider="twilio"} 2"#),
        "{m}"
    );
}

/// An upstream that breaks its body off is counted as a reset (the client sees its
/// connection closed before the end of the answer).
#[tokio::test]
async fn an_upstream_body_broken_off_is_counted() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 4096];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
                    .await;
            });
        }
    });
    let p = Proxy::start(&twilio_route(&format!("http://{addr}"), ""), NO_RULES).await;
    let mut s = TcpStream::connect(p.instance.proxy_addr).await.unwrap();
    s.write_all(b"GET /2010-04-01/Accounts/ACtest/Messages/SM1.json HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let buf = closed_within(&mut s, Duration::from_secs(3)).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.ends_with("3\r\nabc\r\n"), "no last chunk: {text:?}");
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert!(
        m.contains(r#"smsfence_upstream_errors_total{kind="reset",provider="twilio"} 1"#),
        "{m}"
    );
}

/// A disk that fills up inside a line leaves no torn line in the audit log: a batch that
/// cannot be written whole is taken back out, so the lines written once there is room
/// again are not glued to a fragment (which replay and log shippers read as garbage).
/// The full disk here is a file size limit (`ulimit -f`, with SIGXFSZ ignored: writes past
/// it fail part-way, as on a full disk).
#[test]
fn a_full_disk_leaves_no_torn_audit_line() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let cfg = dir.path().join("svc.toml");
    std::fs::write(&cfg, format!("[audit]\noutput = \"{}\"\n", audit.display())).unwrap();
    let (proxy, admin) = (free_port(), free_port());
    let mut child = Running(
        std::process::Command::new("bash")
            .args([
                "-c",
                r#"ulimit -f 2; trap '' XFSZ; exec "$@""#,
                "bash",
                env!("CARGO_BIN_EXE_smsfence"),
                "--listen",
                &format!("127.0.0.1:{proxy}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
                "--rules",
                concat!(env!("CARGO_MANIFEST_DIR"), "/rules"),
                "--config",
            ])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = |port: u16, path: &str| format!("http://127.0.0.1:{port}{path}");
    rt.block_on(async {
        let started = std::time::Instant::now();
        loop {
            let req = hyper::Request::get(url(admin, "/healthz"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            if client().request(req).await.is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "smsfence did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // 20 lines of about 400 bytes, one at a time, into 2 KiB.
        for i in 0..20 {
            let body = format!("To=%2B4474001234{i:02}&From=%2B15005550006&Body=hi");
            let path = "/2010-04-01/Accounts/ACtest/Messages.json";
            send("POST", &url(proxy, path), &[FORM, BASIC], body).await;
        }
    });
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(text.lines().count() >= 3, "lines were written: {text}");
    assert!(text.ends_with('\n'), "a torn last line: {text}");
    for line in text.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "{line}"
        );
    }
}

/// A batch of thousands of recipients is decided in time linear in their number: each
/// recipient's limit key was searched for among all those before it, so a 256 KiB Sinch
/// batch of 16,000 numbers under three per-number limits held its worker for over ten
/// seconds (in a debug build).
#[tokio::test]
async fn a_batch_of_thousands_of_recipients_is_decided_at_once() {
    let up = MockUpstream::start().await;
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 262144\n\
         [[route]]\nname = \"sinch\"\npreset = \"sinch\"\nupstream = \"{}\"\n",
        up.url()
    );
    let rules: String = ["minute", "hour", "day"]
        .iter()
        .map(|p| {
            format!(
                "[[limit]]\nname = \"per-{p}\"\nkey = \"number\"\nrate = \"5/{p}\"\nburst = 5\n"
            )
        })
        .collect();
    let p = Proxy::start(&cfg, &[("limits.toml", &rules)]).await;
    let to: Vec<String> = (0..16_000).map(|i| format!("\"447400{i:06}\"")).collect();
    let body = format!(r#"{{"from":"ACME","to":[{}],"body":"hi"}}"#, to.join(","));
    let started = std::time::Instant::now();
    // `send` gives up after 10 s.
    let a = send("POST", &p.url("/xms/v1/plan1/batches"), &[JSON], body).await;
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(up.requests().len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A shadow rule firing on each of thousands of recipients is recorded in time linear in
/// their number: each hit was searched for among all the hits before it, so a batch of
/// 24,000 consecutive numbers under a shadow range-walk rule held its worker for over ten
/// seconds (in a debug build).
#[tokio::test]
async fn a_shadow_rule_firing_on_thousands_of_recipients_is_recorded_at_once() {
    let up = MockUpstream::start().await;
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 524288\n\
         [[route]]\nname = \"sinch\"\npreset = \"sinch\"\nupstream = \"{}\"\n",
        up.url()
    );
    let rules = "[[heuristic]]\nname = \"walk\"\nmode = \"shadow\"\nkind = \"adjacent_numbers\"\n\
                 window = \"10m\"\ndistance = 10\nmax_near = 2\n";
    let p = Proxy::start(&cfg, &[("heuristics.toml", rules)]).await;
    let to: Vec<String> = (0..24_000).map(|i| format!("\"44740{i:07}\"")).collect();
    let body = format!(r#"{{"from":"ACME","to":[{}],"body":"hi"}}"#, to.join(","));
    let started = std::time::Instant::now();
    // `send` gives up after 10 s.
    let a = send("POST", &p.url("/xms/v1/plan1/batches"), &[JSON], body).await;
    assert_eq!(a.status, 201, "a shadow rule refuses nothing: {}", a.text());
    assert_eq!(up.requests().len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert!(m.contains("rule=\"walk\""), "the shadow rule fired");
}
