//! The proxy core end to end: forwarding, pass-through, errors, the sandbox, the admin
//! endpoints and graceful shutdown.

mod common;

use std::time::Duration;

use common::*;

const NO_RULES: &[(&str, &str)] = &[];

fn twilio_route(upstream: &str, extra: &str) -> String {
    format!("[[route]]\nname = \"twilio\"\npreset = \"twilio\"\nupstream = \"{upstream}\"\n{extra}")
}

#[tokio::test]
async fn forwards_a_twilio_send_byte_for_byte() {
    let up = MockUpstream::with(|_| {
        let mut r = Reply::json(201, r#"{"sid":"SM1","status":"queued"}"#);
        r.headers.push(("x-upstream", "yes".into()));
        r
    })
    .await;
    let p = Proxy::start(&twilio_route(&up.url(), ""), NO_RULES).await;
    let body = "To=%2B14155550123&From=%2B15005550006&Body=Your+code+is+123456";
    let a = send(
        "POST",
        &p.url("/2010-04-01/Accounts/ACtest/Messages.json?Foo=bar%20baz"),
        &[
            FORM,
            BASIC,
            ("x-custom", "kept"),
            ("connection", "keep-alive"),
        ],
        body,
    )
    .await;
    assert_eq!(a.status, 201);
    assert_eq!(a.header("x-upstream"), Some("yes"));
    assert_eq!(a.json()["sid"], "SM1");
    let got = up.requests();
    assert_eq!(got.len(), 1, "sent upstream exactly once");
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.uri,
        "/2010-04-01/Accounts/ACtest/Messages.json?Foo=bar%20baz"
    );
    assert_eq!(r.body, body.as_bytes());
    assert_eq!(r.headers.get("authorization").unwrap(), BASIC.1);
    assert_eq!(r.headers.get("x-custom").unwrap(), "kept");
    assert_eq!(r.headers.get("content-type").unwrap(), FORM.1);
    assert_eq!(
        r.headers.get("host").unwrap().to_str().unwrap(),
        up.addr.to_string()
    );
}

#[tokio::test]
async fn route_prefix_is_replaced_by_the_upstream_base_path() {
    let up = MockUpstream::with(|_| Reply::json(201, r#"{"sid":"SM1"}"#)).await;
    let route = twilio_route(&format!("{}/base", up.url()), "path_prefix = \"/twilio\"\n");
    let p = Proxy::start(&route, NO_RULES).await;
    let body = "To=%2B14155550123&From=%2B15005550006&Body=hi";
    let path = "/2010-04-01/Accounts/ACtest/Messages.json";
    for query in ["?Foo=1", ""] {
        let url = p.url(&format!("/twilio{path}{query}"));
        assert_eq!(send("POST", &url, &[FORM, BASIC], body).await.status, 201);
    }
    let seen: Vec<String> = up.requests().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(seen, [format!("/base{path}?Foo=1"), format!("/base{path}")]);
}

#[tokio::test]
async fn trusted_identity_headers_are_used_and_stripped() {
    let up = MockUpstream::start().await;
    let rules = r#"
[[limit]]
name = "ip"
key = "ip"
rate = "1/hour"
burst = 1
"#;
    let p = Proxy::start(&twilio_route(&up.url(), ""), &[("r.toml", rules)]).await;
    let ip = ("x-smsfence-end-user-ip", "203.0.113.7");
    let user = ("x-smsfence-end-user-id", "u-42");
    assert_eq!(
        twilio_send(&p, "+14155550123", &[ip, user]).await.status,
        201
    );
    // Same end-user IP, another number: the IP limit refuses.
    let a = twilio_send(&p, "+14155550124", &[ip, user]).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("smsfence-rule"), Some("ip"));
    // Another IP passes.
    assert_eq!(
        twilio_send(
            &p,
            "+14155550125",
            &[("x-smsfence-end-user-ip", "203.0.113.8")]
        )
        .await
        .status,
        201
    );
    for r in up.requests() {
        assert!(r.headers.get("x-smsfence-end-user-ip").is_none());
        assert!(r.headers.get("x-smsfence-end-user-id").is_none());
    }
}

/// A trusted peer written in the IPv4-mapped form (`::ffff:127.0.0.0/104`) is the IPv4
/// network: peers are matched as IPv4 (it used to trust no one).
#[tokio::test]
async fn trusted_peers_written_ipv4_mapped_match_ipv4_peers() {
    let up = MockUpstream::start().await;
    let rules = "[[limit]]\nname = \"ip\"\nkey = \"ip\"\nrate = \"1/hour\"\nburst = 1\n";
    let config = format!(
        "{}[trusted]\npeers = [\"::ffff:127.0.0.0/104\"]\n",
        twilio_route(&up.url(), "")
    );
    let p = Proxy::start(&config, &[("r.toml", rules)]).await;
    let ip = ("x-smsfence-end-user-ip", "203.0.113.7");
    assert_eq!(twilio_send(&p, "+14155550123", &[ip]).await.status, 201);
    let a = twilio_send(&p, "+14155550124", &[ip]).await;
    assert_eq!(a.status, 429, "the end user's IP was not believed");
    assert_eq!(a.header("smsfence-rule"), Some("ip"));
}

#[tokio::test]
async fn passthrough_of_non_send_requests() {
    let up = MockUpstream::with(|_| Reply::json(200, r#"{"messages":[]}"#)).await;
    let p = Proxy::start(&twilio_route(&up.url(), ""), NO_RULES).await;
    let a = send(
        "GET",
        &p.url("/2010-04-01/Accounts/ACtest/Messages.json?PageSize=5"),
        &[BASIC],
        "",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        up.requests()[0].uri,
        "/2010-04-01/Accounts/ACtest/Messages.json?PageSize=5"
    );
}

#[tokio::test]
async fn unknown_path_is_a_json_404_naming_smsfence() {
    let p = Proxy::start("", NO_RULES).await;
    let a = send("POST", &p.url("/no/such/api"), &[], "x").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["error"]["source"], "smsfence");
    assert_eq!(a.json()["error"]["code"], "no_route");
}

#[tokio::test]
async fn oversized_body_is_413_and_not_forwarded() {
    let up = MockUpstream::start().await;
    let p = Proxy::start(
        &format!(
            "{}\n[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 1024\n",
            twilio_route(&up.url(), "")
        ),
        NO_RULES,
    )
    .await;
    let big = format!("To=%2B14155550123&Body={}", "a".repeat(2000));
    let a = send(
        "POST",
        &p.url("/2010-04-01/Accounts/ACtest/Messages.json"),
        &[FORM, BASIC],
        big,
    )
    .await;
    assert_eq!(a.status, 413);
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn refused_upstream_is_a_quick_502() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let p = Proxy::start(
        &twilio_route(&format!("http://127.0.0.1:{port}"), ""),
        NO_RULES,
    )
    .await;
    let a = twilio_send(&p, "+14155550123", &[]).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["error"]["code"], "upstream_unreachable");
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert!(
        m.contains("smsfence_upstream_errors_total{kind=\"refused\",provider=\"twilio\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn slow_upstream_is_a_504() {
    let up = MockUpstream::with(|_| {
        let mut r = Reply::json(201, "{}");
        r.hang = true;
        r
    })
    .await;
    let cfg = format!(
        "{}\n[upstream]\ntimeout = \"300ms\"\n",
        twilio_route(&up.url(), "")
    );
    let p = Proxy::start(&cfg, NO_RULES).await;
    let a = twilio_send(&p, "+14155550123", &[]).await;
    assert_eq!(a.status, 504);
    assert_eq!(a.json()["error"]["code"], "upstream_timeout");
    up.release();
    assert_eq!(up.requests().len(), 1, "sent once, never retried");
}

#[tokio::test]
async fn malformed_http_is_a_400_and_the_proxy_keeps_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = Proxy::start("", NO_RULES).await;
    let mut s = tokio::net::TcpStream::connect(p.instance.proxy_addr)
        .await
        .unwrap();
    s.write_all(b"THIS IS NOT HTTP\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    assert_eq!(twilio_send(&p, "+14155550123", &[]).await.status, 201);
}

#[tokio::test]
async fn sandbox_answers_with_no_config_at_all() {
    let p = Proxy::start_default_rules("").await;
    let a = twilio_send(&p, "+14155550123", &[]).await;
    assert_eq!(a.status, 201);
    let j = a.json();
    assert!(j["sid"].as_str().unwrap().starts_with("SM"));
    assert_eq!(j["status"], "queued");
    assert_eq!(j["to"], "+14155550123");
    // The default per-number cooldown answers the second send natively.
    let b = twilio_send(&p, "+14155550123", &[]).await;
    assert_eq!(b.status, 429);
    assert_eq!(b.json()["code"], 20429);
    assert_eq!(b.header("retry-after"), Some("60"));
    // After the cooldown, it passes again.
    p.advance(Duration::from_secs(60));
    assert_eq!(twilio_send(&p, "+14155550123", &[]).await.status, 201);
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let p = Proxy::start_default_rules("").await;
    assert_eq!(send("GET", &p.admin("/healthz"), &[], "").await.status, 200);
    let r = send("GET", &p.admin("/readyz"), &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["rules_generation"], 1);
    twilio_send(&p, "+14155550123", &[]).await;
    let m = send("GET", &p.admin("/metrics"), &[], "").await;
    assert_eq!(m.status, 200);
    let text = m.text();
    assert!(
        text.contains(
            "smsfence_requests_total{outcome=\"forwarded\",provider=\"twilio\",route=\"twilio\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("smsfence_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(!text.contains("4155550123"), "no phone number in metrics");
}

/// With `shutdown_delay`, a stopping instance first tells its load balancer (`/readyz`
/// 503) and keeps serving; without it, `/readyz` would just stop answering.
#[tokio::test]
async fn a_shutdown_delay_answers_not_ready_and_keeps_serving() {
    let up = MockUpstream::with(|_| Reply::json(201, r#"{"sid":"SM1"}"#)).await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_delay = \"60s\"\n{}",
        twilio_route(&up.url(), "")
    );
    let p = Proxy::start(&config, NO_RULES).await;
    let ready = send("GET", &p.admin("/readyz"), &[], "").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    let url = p.url("/2010-04-01/Accounts/ACtest/Messages.json");
    let meanwhile = async {
        let ready = send("GET", &p.admin("/readyz"), &[], "").await;
        let sent = send("POST", &url, &[FORM, BASIC], "To=%2B14155550123&Body=x").await;
        (ready, sent)
    };
    let (ready, sent) = tokio::select! {
        biased; // `stop` first: it says "shutting down" before the requests are sent
        _ = p.instance.stop() => panic!("stopped before its shutdown delay"),
        r = meanwhile => r,
    };
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "shutting_down");
    assert_eq!(sent.status, 201);
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn graceful_shutdown_finishes_an_in_flight_request() {
    let up = MockUpstream::with(|_| {
        let mut r = Reply::json(201, r#"{"sid":"SMslow"}"#);
        r.hang = true;
        r
    })
    .await;
    let p = Proxy::start(&twilio_route(&up.url(), ""), NO_RULES).await;
    let url = p.url("/2010-04-01/Accounts/ACtest/Messages.json");
    let in_flight = tokio::spawn(async move {
        send("POST", &url, &[FORM, BASIC], "To=%2B14155550123&Body=x").await
    });
    // Wait until the request is at the upstream, then ask for shutdown.
    tokio::time::timeout(Duration::from_secs(5), up.arrived.notified())
        .await
        .unwrap();
    let addr = p.instance.proxy_addr;
    p.instance.shutdown();
    // New connections are refused once the listener is dropped (poll with a bound).
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "listener closed after shutdown");
    up.release();
    let a = in_flight.await.unwrap();
    assert_eq!(a.status, 201);
    assert_eq!(a.json()["sid"], "SMslow");
    tokio::time::timeout(Duration::from_secs(5), p.instance.wait())
        .await
        .expect("drained");
}

/// A config with `workers` proxy workers and a Twilio route to `upstream`.
fn with_workers(workers: usize, upstream: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworker_threads = {workers}\n{}",
        twilio_route(upstream, "")
    )
}

/// Names of this process's threads that are proxy workers (`sf-worker-N`).
fn worker_threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| n.starts_with("sf-worker-"))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_the_listener_the_limits_and_stop_together() {
    let up = MockUpstream::start().await;
    let cooldown =
        "[[limit]]\nname = \"cooldown\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\n";
    let p = Proxy::start(&with_workers(4, &up.url()), &[("r.toml", cooldown)]).await;
    // Any test in this binary may run its own instance at the same time: count ours by
    // their presence, not by the exact list.
    let running = worker_threads();
    for i in 1..4 {
        assert!(running.contains(&format!("sf-worker-{i}")), "{running:?}");
    }
    // 24 clients on their own connections at once, all for one number: whichever worker
    // accepts each, the cooldown lets exactly one through.
    let same: Vec<_> = (0..24)
        .map(|_| {
            let p = &p;
            async move { twilio_send(p, "+447400900123", &[]).await.status }
        })
        .collect();
    let statuses = futures_util::future::join_all(same).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 23);
    // 24 distinct numbers at once: all forwarded, each exactly once.
    let distinct: Vec<_> = (0..24)
        .map(|i| {
            let p = &p;
            async move {
                twilio_send(p, &format!("+4474009002{i:02}"), &[])
                    .await
                    .status
            }
        })
        .collect();
    let statuses = futures_util::future::join_all(distinct).await;
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert_eq!(up.requests().len(), 25);

    let addr = p.instance.proxy_addr;
    p.instance.shutdown();
    tokio::time::timeout(Duration::from_secs(5), p.instance.wait())
        .await
        .expect("every worker drained and stopped");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no worker still accepts"
    );
}

/// Reads one request from a raw socket — the head, then its Content-Length of body —
/// taking it off `buf` (which keeps what came after it); its head, lower-cased. `None`
/// when the connection ends first.
async fn read_request(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..head_end + len);
    Some(head)
}

/// A bare HTTP/1.1 upstream that counts connections and requests; with `close_each` it
/// closes every connection after one answer (as an upstream with no keep-alive does).
async fn counting_upstream(
    close_each: bool,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (conns, reqs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, r) = (Arc::clone(&conns), Arc::clone(&reqs));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let r = Arc::clone(&r);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    if read_request(&mut s, &mut buf).await.is_none() {
                        return;
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    let body = r#"{"sid":"SMraw"}"#;
                    let resp = format!(
                        "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                    if close_each {
                        let _ = s.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    (addr, conns, reqs)
}

/// Sends `n` Twilio sends, each answered 201, through one worker to a counting upstream
/// (`close_each` as in [`counting_upstream`]); the proxy, upstream connections, requests.
async fn sends_through_one_worker(
    close_each: bool,
    extra_config: &str,
    n: usize,
) -> (Proxy, usize, usize) {
    use std::sync::atomic::Ordering;
    let (addr, conns, reqs) = counting_upstream(close_each).await;
    let config = format!(
        "{}\n{extra_config}",
        with_workers(1, &format!("http://{addr}"))
    );
    let p = Proxy::start(&config, NO_RULES).await;
    for i in 0..n {
        let a = twilio_send(&p, &format!("+4474009003{i:02}"), &[]).await;
        assert_eq!(a.status, 201, "request {i}: {}", a.text());
        assert_eq!(a.json()["sid"], "SMraw");
    }
    let (c, r) = (conns.load(Ordering::SeqCst), reqs.load(Ordering::SeqCst));
    (p, c, r)
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let (p, conns, reqs) = sends_through_one_worker(false, "", 5).await;
    assert_eq!(reqs, 5);
    assert_eq!(conns, 1, "one upstream connection, reused");
    assert_eq!(p.instance.app.upstream.idle_connections(), 1);
}

#[tokio::test]
async fn an_upstream_that_closes_each_connection_gets_each_request_once() {
    let (_p, conns, reqs) = sends_through_one_worker(true, "", 4).await;
    // Every request reached the upstream exactly once, each on a connection of its own
    // (a closed connection is never handed out, and nothing is sent twice).
    assert_eq!(reqs, 4);
    assert_eq!(conns, 4);
}

#[tokio::test]
async fn pool_settings_bound_the_idle_connections() {
    // No idle connection kept: every request opens its own (and the upstream sees each once).
    let extra = "[upstream]\npool_max_idle_per_host = 0\n";
    let (p, conns, reqs) = sends_through_one_worker(false, extra, 3).await;
    assert_eq!(reqs, 3);
    assert_eq!(conns, 3);
    assert_eq!(p.instance.app.upstream.idle_connections(), 0);
}

/// The background sweep (off the event loop, on a blocking thread) drops keys once the
/// test clock has moved past them, and publishes the store gauges.
#[tokio::test]
async fn the_sweeper_drops_idle_keys_and_reports_them() {
    let up = MockUpstream::start().await;
    let config = format!(
        "[store]\nsweep_interval = \"100ms\"\n{}",
        twilio_route(&up.url(), "")
    );
    let limit = "[[limit]]\nname = \"cooldown\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\n";
    let p = Proxy::start(&config, &[("limits.toml", limit)]).await;
    assert_eq!(twilio_send(&p, "+447400123456", &[]).await.status, 201);
    let admin = p.admin("/metrics");
    // A metric's value once the 100 ms background tick has published `want` (bounded: 5 s).
    let published = |name: &'static str, want: u64| {
        let admin = admin.clone();
        async move {
            let mut seen = None;
            for _ in 0..50 {
                let text = send("GET", &admin, &[], "").await.text();
                seen = text
                    .lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
                if seen == Some(want) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        }
    };
    let keys = "smsfence_store_keys{store=\"memory\"}";
    assert_eq!(
        published(keys, 1).await,
        Some(1),
        "the key is tracked and reported"
    );
    p.advance(Duration::from_secs(61));
    let evictions = "smsfence_store_evictions_total{store=\"memory\"}";
    assert_eq!(
        published(evictions, 1).await,
        Some(1),
        "the idle key was swept"
    );
    assert_eq!(published(keys, 0).await, Some(0));
}

/// An upstream on a raw socket: reads each request (head and Content-Length body), then
/// writes `answer`'s pieces, each after its delay. Returns its address and the heads it
/// read (lower-cased).
async fn scripted_upstream(
    answer: Vec<(Duration, Vec<u8>)>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (seen, answer) = (Arc::clone(&seen), Arc::clone(&answer));
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some(head) = read_request(&mut s, &mut buf).await else {
                    return;
                };
                seen.lock().unwrap().push(head);
                for (delay, bytes) in answer.iter() {
                    tokio::time::sleep(*delay).await;
                    if s.write_all(bytes).await.is_err() {
                        return;
                    }
                }
                // Hold the connection until the proxy is done with it.
                let _ = s.read(&mut [0u8; 64]).await;
            });
        }
    });
    (addr, heads)
}

/// An empty POST goes on with `Content-Length: 0` (hyper would send no length at all,
/// and upstreams that require one on a POST answer 411); a GET goes on without one.
#[tokio::test]
async fn an_empty_post_is_forwarded_with_content_length_zero() {
    let up = MockUpstream::start().await;
    let p = Proxy::start(&twilio_route(&up.url(), ""), NO_RULES).await;
    let path = "/2010-04-01/Accounts/ACtest/Calls/CA1.json";
    let a = send("POST", &p.url(path), &[BASIC, ("content-length", "0")], "").await;
    assert_eq!(a.status, 201, "{}", a.text());
    let a = send("GET", &p.url(path), &[BASIC], "").await;
    assert_eq!(a.status, 201, "{}", a.text());
    let got = up.requests();
    assert_eq!(got[0].headers.get("content-length").unwrap(), "0");
    assert_eq!(got[1].headers.get("content-length"), None);
}

/// Empty segments around the route prefix (`//twilio/…` matches `/twilio`) do not shift
/// the path the upstream receives.
#[tokio::test]
async fn empty_segments_around_the_prefix_do_not_shift_the_upstream_path() {
    let up = MockUpstream::start().await;
    let route = twilio_route(&format!("{}/base", up.url()), "path_prefix = \"/twilio\"\n");
    let p = Proxy::start(&route, NO_RULES).await;
    let body = "To=%2B14155550123&From=%2B15005550006&Body=hi";
    for path in [
        "//twilio/2010-04-01/Accounts/ACtest/Messages.json",
        "/twilio/2010-04-01/Accounts/ACtest/Messages.json",
    ] {
        let a = send("POST", &p.url(path), &[FORM, BASIC], body).await;
        assert_eq!(a.status, 201, "{path}: {}", a.text());
    }
    let uris: Vec<String> = up.requests().into_iter().map(|r| r.uri).collect();
    assert_eq!(uris, ["/base/2010-04-01/Accounts/ACtest/Messages.json"; 2]);
}

/// An answer that comes chunked with a Content-Length as well reaches the client whole:
/// the length, which does not describe a chunked body, is not passed on.
#[tokio::test]
async fn a_chunked_answer_with_a_content_length_reaches_the_client_whole() {
    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
transfer-encoding: chunked\r\ncontent-length: 2\r\n\r\nc\r\n{\"sid\":\"X1\"}\r\n0\r\n\r\n";
    let (addr, _) = scripted_upstream(vec![(Duration::ZERO, answer.to_vec())]).await;
    let p = Proxy::start(&twilio_route(&format!("http://{addr}"), ""), NO_RULES).await;
    let a = send(
        "GET",
        &p.url("/2010-04-01/Accounts/ACtest/Messages/SM1.json"),
        &[BASIC],
        "",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), r#"{"sid":"X1"}"#);
}

/// A Verify answer is read whole for its conversion signal; one that is larger than the
/// proxy buffers, or slower than the upstream timeout leaves, is streamed to the client
/// as the upstream sent it (it used to be replaced by a 502: the code was sent, and a
/// client retrying on 502 would send another). Here the slow answer's head comes after
/// 0.7 of the 1 s timeout and its body 0.7 s later: each pause is within the timeout.
#[tokio::test]
async fn a_verify_answer_too_large_or_too_slow_to_read_is_streamed_not_replaced() {
    let large = format!(r#"{{"sid":"VE1","pad":"{}"}}"#, "x".repeat(1_100_000));
    let small = r#"{"sid":"VE2","status":"pending"}"#.to_owned();
    let slow = Duration::from_millis(700);
    for (body, delay) in [(large, Duration::ZERO), (small, slow)] {
        let head = format!(
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let (addr, heads) = scripted_upstream(vec![
            (delay, head.into_bytes()),
            (delay, body.clone().into_bytes()),
        ])
        .await;
        let cfg = format!(
            "{}\n[upstream]\ntimeout = \"1s\"\n",
            twilio_route(&format!("http://{addr}"), "")
        );
        let p = Proxy::start(&cfg, NO_RULES).await;
        let form = "To=%2B14155550123&Channel=sms";
        let a = send(
            "POST",
            &p.url("/v2/Services/VA1/Verifications"),
            &[FORM, BASIC],
            form,
        )
        .await;
        assert_eq!(a.status, 201, "{}", &a.text()[..a.text().len().min(200)]);
        assert_eq!(
            a.header("content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(a.body.len(), body.len());
        assert_eq!(heads.lock().unwrap().len(), 1, "sent upstream once");
    }
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_request_is_still_audited_and_counted() {
    let up = MockUpstream::with(|_| {
        let mut r = Reply::json(201, r#"{"sid":"SMslow"}"#);
        r.hang = true;
        r
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let cfg = format!(
        "{}\n[audit]\noutput = \"{}\"\n",
        twilio_route(&up.url(), ""),
        audit.display()
    );
    let p = Proxy::start(&cfg, NO_RULES).await;
    let s = raw_twilio_send(p.instance.proxy_addr).await;
    // The send is decided and at the upstream when the client hangs up.
    tokio::time::timeout(Duration::from_secs(5), up.arrived.notified())
        .await
        .unwrap();
    drop(s);
    let counted =
        r#"smsfence_requests_total{outcome="client_closed",provider="twilio",route="twilio"} 1"#;
    let m = metrics_with(&p, counted).await;
    up.release();
    assert!(m.contains(counted), "the request is counted: {m}");
    assert!(
        m.contains(r#"smsfence_decisions_total{country="US",decision="allow",mode="enforce",reason="none",rule="none"} 1"#),
        "{m}"
    );
    let mut text = String::new();
    for _ in 0..250 {
        text = std::fs::read_to_string(&audit).unwrap_or_default();
        if !text.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "one audit line per decision: {text:?}");
    assert_eq!(lines[0]["decision"], "allow", "{text}");
    assert_eq!(lines[0]["client_closed"], true, "{text}");
    assert!(lines[0].get("upstream_status").is_none(), "{text}");
}

/// Fields that describe one hop go neither up nor down: those RFC 9110 §7.6.1 names
/// (Proxy-Connection among them), those the Connection field names, and `Expect`,
/// which smsfence has answered itself by reading the whole body before forwarding.
#[tokio::test]
async fn hop_by_hop_fields_stay_on_their_hop_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
connection: keep-alive, x-hop\r\nx-hop: 1\r\nkeep-alive: timeout=5\r\n\
proxy-connection: keep-alive\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n\
content-length: 2\r\n\r\n{}";
    let (addr, heads) = scripted_upstream(vec![(Duration::ZERO, answer.to_vec())]).await;
    let p = Proxy::start(&twilio_route(&format!("http://{addr}"), ""), NO_RULES).await;
    let mut s = tokio::net::TcpStream::connect(p.instance.proxy_addr)
        .await
        .unwrap();
    s.write_all(
        b"GET /2010-04-01/Accounts/ACtest/Messages/SM1.json HTTP/1.1\r\nhost: x\r\n\
te: trailers\r\nkeep-alive: 5\r\nproxy-connection: keep-alive\r\nconnection: x-mine\r\n\
x-mine: 1\r\nupgrade: h2c\r\nexpect: 100-continue\r\nx-end-to-end: kept\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.ends_with(b"{}") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "{:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    let down = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    assert!(down.starts_with("http/1.1 200"), "{down}");
    for gone in ["x-hop", "keep-alive", "proxy-connection"] {
        assert!(
            !down.contains(&format!("\n{gone}:")),
            "{gone} went down: {down}"
        );
    }
    assert!(
        down.contains("set-cookie: a=1\r\nset-cookie: b=2\r\n"),
        "{down}"
    );
    let up = heads.lock().unwrap()[0].clone();
    for gone in [
        "te",
        "keep-alive",
        "proxy-connection",
        "x-mine",
        "upgrade",
        "expect",
    ] {
        assert!(!up.contains(&format!("\n{gone}:")), "{gone} went up: {up}");
    }
    assert!(up.contains("x-end-to-end: kept\r\n"), "{up}");
}

/// `upstream.pool_idle_timeout` is honoured for every pooled connection: also for those
/// of an upstream nobody calls any more, and those under the one in use (the pool hands
/// out its most recent connection first, and looked at no other). They stayed open for
/// as long as the upstream kept them.
#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_pool_idle_timeout() {
    let up = MockUpstream::with(|_| {
        let mut r = Reply::json(201, r#"{"sid":"SM1"}"#);
        r.hang = true;
        r
    })
    .await;
    let cfg = format!(
        "[upstream]\npool_idle_timeout = \"300ms\"\n[store]\nsweep_interval = \"100ms\"\n{}",
        twilio_route(&up.url(), "")
    );
    let p = Proxy::start(&cfg, NO_RULES).await;
    // Two sends at once: two upstream connections, both pooled once answered.
    let sends: Vec<_> = ["+14155550123", "+14155550124"]
        .into_iter()
        .map(|to| {
            let url = p.url("/2010-04-01/Accounts/ACtest/Messages.json");
            let body = format!("To={}&Body=x", to.replace('+', "%2B"));
            tokio::spawn(async move { send("POST", &url, &[FORM, BASIC], body).await })
        })
        .collect();
    for _ in 0..200 {
        if up.requests().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    up.release();
    for s in sends {
        assert_eq!(s.await.unwrap().status, 201);
    }
    let pool = &p.instance.app.upstream;
    // Polled until it holds (at most 2 s).
    let idle_becomes = |want: usize| async move {
        let mut idle = usize::MAX;
        for _ in 0..100 {
            idle = pool.idle_connections();
            if idle == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        idle
    };
    assert_eq!(idle_becomes(2).await, 2, "both connections pooled");
    assert_eq!(
        idle_becomes(0).await,
        0,
        "idle past pool_idle_timeout, and still pooled"
    );
}

/// The sum of a histogram's observations in a scrape, over the series whose labels
/// contain every one of `must`.
fn histogram_sum(metrics: &str, family: &str, must: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}_sum")) && must.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `smsfence_proxy_overhead_seconds` is the time smsfence adds: a client that hangs up
/// while the upstream holds its request did not wait on smsfence for all that time.
#[tokio::test]
async fn a_client_hang_up_during_the_upstream_exchange_is_not_overhead() {
    let up = MockUpstream::with(|_| {
        let mut r = Reply::json(201, r#"{"sid":"SMslow"}"#);
        r.hang = true;
        r
    })
    .await;
    let p = Proxy::start(&twilio_route(&up.url(), ""), NO_RULES).await;
    let s = raw_twilio_send(p.instance.proxy_addr).await;
    tokio::time::timeout(Duration::from_secs(5), up.arrived.notified())
        .await
        .unwrap();
    // The request is at the upstream from here on: at least this long is upstream time.
    let held = std::time::Instant::now();
    drop(s);
    let held = held.elapsed().as_secs_f64();
    let counted =
        r#"smsfence_requests_total{outcome="client_closed",provider="twilio",route="twilio"} 1"#;
    let m = metrics_with(&p, counted).await;
    up.release();
    assert!(m.contains(counted), "{m}");
    let total = histogram_sum(
        &m,
        "smsfence_request_duration_seconds",
        &[r#"outcome="client_closed""#],
    );
    let overhead = histogram_sum(&m, "smsfence_proxy_overhead_seconds", &[]);
    assert!(
        overhead < total && total - overhead >= held,
        "overhead {overhead} s of a request of {total} s, {held} s of it at the upstream"
    );
}

/// A Verify check's answer is read whole for its outcome: waiting for a body the
/// upstream is slow to send is upstream time, not smsfence's overhead.
#[tokio::test]
async fn a_slow_verify_answer_body_is_not_overhead() {
    let body = br#"{"status":"approved","valid":true}"#;
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let (addr, _) = scripted_upstream(vec![
        (Duration::ZERO, head.into_bytes()),
        (Duration::from_millis(300), body.to_vec()),
    ])
    .await;
    let p = Proxy::start(&twilio_route(&format!("http://{addr}"), ""), NO_RULES).await;
    // Numbers of a calling code are first read in a debug build in about a second: not
    // in this request.
    let number = r#"{"number":"+447400123456"}"#;
    send("POST", &p.admin("/v1/check"), &[JSON], number).await;
    let a = send(
        "POST",
        &p.url("/v2/Services/VA1/VerificationCheck"),
        &[FORM, BASIC],
        "To=%2B447400123456&Code=123456",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    let total = histogram_sum(&m, "smsfence_request_duration_seconds", &[]);
    let overhead = histogram_sum(&m, "smsfence_proxy_overhead_seconds", &[]);
    assert!(total >= 0.3, "{m}");
    assert!(
        overhead < 0.2,
        "overhead {overhead} s of a request of {total} s, 0.3 s of it waiting for the upstream's body"
    );
}

/// A Twilio send written on a raw connection, which the test can then drop mid-exchange.
async fn raw_twilio_send(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let path = "/2010-04-01/Accounts/ACtest/Messages.json";
    raw_form_post(addr, path, "To=%2B14155550123&Body=x").await
}

/// New keys fill the memory store's ceiling; then traffic turns to a country the store
/// holds nothing about yet. Its country limit and its country spend budget still apply:
/// the keys of countries (and the global key) are a bounded few, always tracked. They used
/// to be left untracked like any new key, so that at the ceiling a country limit, a budget
/// (or a global limit that had gone idle) refused nothing at all.
#[tokio::test]
async fn country_limits_and_budgets_hold_when_the_store_is_full() {
    let up = MockUpstream::start().await;
    let rules = "[[limit]]\nname = \"per-number\"\nkey = \"number\"\nrate = \"1/1h\"\nburst = 1\n\
                 [[limit]]\nname = \"per-country\"\nkey = \"country\"\nrate = \"4/1h\"\nburst = 4\n\
                 [prices]\ndefault = 0.10\n\
                 [[heuristic]]\nname = \"spend\"\nkind = \"spend_budget\"\ncountry_hourly = 0.35\n";
    // Nine keys: four numbers, a country and four spend windows (hour and day, global and
    // the country's).
    let cfg = format!("[store]\nmax_keys = 9\n{}", twilio_route(&up.url(), ""));
    let p = Proxy::start(&cfg, &[("r.toml", rules)]).await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        statuses.push(
            twilio_send(&p, &format!("+44740090{i:04}"), &[])
                .await
                .status,
        );
    }
    // Three sent; the fourth over the budget, the fifth over the limit.
    assert_eq!(up.requests().len(), 3, "{statuses:?}");
    // Then distinct German numbers: three sends fit the budget (0.35 at 0.10 each).
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(
            twilio_send(&p, &format!("+4915112345{i:03}"), &[])
                .await
                .status,
        );
    }
    assert_eq!(up.requests().len(), 6, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 3);
}

/// Fifty clients at once over four workers: a per-IP limit of one lets exactly one of the
/// same IP's sends through, and a spend budget of five sends is never overrun by sends
/// from fifty IPs (each reserves its cost in the step that reads the budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_keep_a_per_ip_limit_and_a_spend_budget_exactly() {
    let up = MockUpstream::start().await;
    let rules = "[[limit]]\nname = \"per-ip\"\nkey = \"ip\"\nrate = \"1/1h\"\nburst = 1\n\
                 [prices]\ndefault = 0.10\n\
                 [[heuristic]]\nname = \"spend\"\nkind = \"spend_budget\"\nhourly = 0.55\n";
    let p = Proxy::start(&with_workers(4, &up.url()), &[("r.toml", rules)]).await;
    let burst = |ip: fn(usize) -> String, first: usize| {
        let p = &p;
        futures_util::future::join_all((0..50).map(move |i| async move {
            let ip = ip(i);
            let to = format!("+4474009{:05}", first + i);
            twilio_send(p, &to, &[("x-smsfence-end-user-ip", &ip)])
                .await
                .status
                .as_u16()
        }))
    };
    let same_ip = burst(|_| "203.0.113.7".to_owned(), 0).await;
    assert_eq!(
        same_ip.iter().filter(|&&s| s == 201).count(),
        1,
        "{same_ip:?}"
    );
    assert_eq!(up.requests().len(), 1);
    // Fifty IPs: the budget has room for four more sends.
    let many_ips = burst(|i| format!("198.51.100.{}", i + 1), 100).await;
    assert_eq!(
        many_ips.iter().filter(|&&s| s == 201).count(),
        4,
        "{many_ips:?}"
    );
    assert_eq!(up.requests().len(), 5);
}
