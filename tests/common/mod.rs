//! The integration-test harness: the real proxy on 127.0.0.1:0 in front of a mock
//! upstream (also on port 0) that records every request it receives.
//!
//! Nothing here sleeps to wait: servers report their bound address before the test goes
//! on, slow upstreams hang on a `Notify` the test releases, and time in decisions comes
//! from a `ManualClock` the test moves.
#![allow(dead_code)]

pub mod redis_server;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use smsfence::clock::{ManualClock, Timestamp};
use smsfence::config::Config;
use smsfence::proxy::{Instance, Options};
use smsfence::rules::reload::Source;

/// A request as the mock upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query, exactly as received.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the mock answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    /// Hold the answer until the test calls `release()`.
    pub hang: bool,
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).expect("valid status"),
            headers: vec![("content-type", "application/json".into())],
            body: Bytes::from(body.to_owned()),
            hang: false,
        }
    }
}

type Responder = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A recording mock upstream.
pub struct MockUpstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Recorded>>>,
    release: Arc<Notify>,
    /// Requests that have arrived and are hanging.
    pub arrived: Arc<Notify>,
}

impl MockUpstream {
    /// Answers every request with 201 and a small Twilio-like body.
    pub async fn start() -> MockUpstream {
        MockUpstream::with(|_| Reply::json(201, r#"{"sid":"SMmock","status":"queued"}"#)).await
    }

    pub async fn with(
        responder: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock upstream");
        let addr = listener.local_addr().expect("local addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let arrived = Arc::new(Notify::new());
        let responder: Responder = Arc::new(responder);
        {
            let received = Arc::clone(&received);
            let release = Arc::clone(&release);
            let arrived = Arc::clone(&arrived);
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let received = Arc::clone(&received);
                    let responder = Arc::clone(&responder);
                    let release = Arc::clone(&release);
                    let arrived = Arc::clone(&arrived);
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(
                            move |req: Request<hyper::body::Incoming>| {
                                let received = Arc::clone(&received);
                                let responder = Arc::clone(&responder);
                                let release = Arc::clone(&release);
                                let arrived = Arc::clone(&arrived);
                                async move {
                                    let (parts, body) = req.into_parts();
                                    let body = body
                                        .collect()
                                        .await
                                        .map(|c| c.to_bytes())
                                        .unwrap_or_default();
                                    let rec = Recorded {
                                        method: parts.method,
                                        uri: parts.uri.to_string(),
                                        headers: parts.headers,
                                        body,
                                    };
                                    let reply = responder(&rec);
                                    received.lock().unwrap().push(rec);
                                    if reply.hang {
                                        arrived.notify_one();
                                        release.notified().await;
                                    }
                                    let mut resp = Response::new(Full::new(reply.body));
                                    *resp.status_mut() = reply.status;
                                    for (k, v) in reply.headers {
                                        resp.headers_mut().insert(k, v.parse().unwrap());
                                    }
                                    Ok::<_, Infallible>(resp)
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        }
        MockUpstream {
            addr,
            received,
            release,
            arrived,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.received.lock().unwrap().clone()
    }

    /// Lets every hanging request answer.
    pub fn release(&self) {
        self.release.notify_waiters();
    }
}

/// A running proxy plus the clock its decisions use.
pub struct Proxy {
    pub instance: Instance,
    pub clock: Arc<ManualClock>,
    /// Keeps a temporary rules directory alive.
    pub rules_dir: Option<tempfile::TempDir>,
}

/// The start of every test clock: 2026-11-22T10:00:00Z.
pub const T0: u64 = 1_795_341_600;

impl Proxy {
    /// Starts smsfence with this service config (TOML) and these rule files.
    pub async fn start(config_toml: &str, rule_files: &[(&str, &str)]) -> Proxy {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in rule_files {
            std::fs::write(dir.path().join(name), text).expect("write rule file");
        }
        Proxy::start_with(
            config_toml,
            Source::Dir(dir.path().to_owned()),
            Some(dir),
            false,
        )
        .await
    }

    /// Starts smsfence with the shipped default rules (`rules/` of this repository).
    pub async fn start_default_rules(config_toml: &str) -> Proxy {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        Proxy::start_with(config_toml, Source::Dir(dir), None, false).await
    }

    pub async fn start_with(
        config_toml: &str,
        rules: Source,
        rules_dir: Option<tempfile::TempDir>,
        watch: bool,
    ) -> Proxy {
        let text = format!(
            "{config_toml}\n{}",
            if config_toml.contains("[server]") {
                ""
            } else {
                "[server]\nlisten = \"127.0.0.1:0\"\n"
            }
        );
        let text = if text.contains("[admin]") {
            text
        } else {
            format!("{text}\n[admin]\nlisten = \"127.0.0.1:0\"\n")
        };
        let config = Config::from_toml("test.toml", &text).expect("test config parses");
        let clock = Arc::new(ManualClock::new(Timestamp::from_unix_secs(T0)));
        let instance = Instance::start(Options {
            config,
            rules,
            watch_rules: watch,
            clock: clock.clone(),
        })
        .await
        .expect("proxy starts");
        Proxy {
            instance,
            clock,
            rules_dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.instance.proxy_addr)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.instance.admin_addr)
    }

    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }
}

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A plain HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends one request and reads the whole answer (bounded to 10 s).
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).expect("valid request");
    let fut = async {
        let resp = client().request(req).await.expect("request succeeds");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("answer within 10 s")
}

pub const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
pub const JSON: (&str, &str) = ("content-type", "application/json");
/// Basic ACtest:secret.
pub const BASIC: (&str, &str) = ("authorization", "Basic QUN0ZXN0OnNlY3JldA==");

/// POSTs a Twilio Messages send to `to`.
pub async fn twilio_send(p: &Proxy, to: &str, extra: &[(&str, &str)]) -> Answer {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("To", to)
        .append_pair("From", "+15005550006")
        .append_pair("Body", "Your code is 123456")
        .finish();
    let mut headers = vec![FORM, BASIC];
    headers.extend_from_slice(extra);
    send(
        "POST",
        &p.url("/2010-04-01/Accounts/ACtest/Messages.json"),
        &headers,
        body,
    )
    .await
}

/// A route config sending every built-in preset to `upstream`.
pub fn all_presets_to(upstream: &str) -> String {
    ["twilio", "vonage", "telnyx", "plivo", "sinch", "infobip"]
        .iter()
        .map(|p| {
            format!("[[route]]\nname = \"{p}\"\npreset = \"{p}\"\nupstream = \"{upstream}\"\n")
        })
        .collect()
}

/// Makes sure these programs run (`--version`), else runs the project's installer
/// (`scripts/<installer>`), and fails loudly if they still do not.
pub fn ensure_tools(programs: &[&str], installer: &str) {
    let have = |b: &str| {
        std::process::Command::new(b)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if programs.iter().all(|p| have(p)) {
        return;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(installer);
    let status = std::process::Command::new("bash")
        .arg(&script)
        .status()
        .expect("run the installer");
    assert!(
        status.success() && programs.iter().all(|p| have(p)),
        "{} could not install {programs:?}",
        script.display()
    );
}

/// A loopback port free right now (for servers that cannot report the one they bound).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process (smsfence, promtool, Prometheus …) that is killed and reaped when the
/// test ends, also when it fails before stopping it: otherwise it would outlive the test.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

/// `/metrics` once it holds `needle` (or, after 5 s, as it is then): for what is counted
/// when a connection ends or the sweeper runs, after the request that caused it answered.
pub async fn metrics_with(p: &Proxy, needle: &str) -> String {
    let mut m = String::new();
    for _ in 0..250 {
        m = send("GET", &p.admin("/metrics"), &[], "").await.text();
        if m.contains(needle) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m
}

/// The verified `verify_check` conversions counted for GB, as `/metrics` shows them ("0"
/// before the first).
pub async fn verify_check_conversions(p: &Proxy) -> String {
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    m.lines()
        .find(|l| {
            l.starts_with("smsfence_conversions_total{")
                && l.contains(r#"country="GB""#)
                && l.contains(r#"source="verify_check""#)
                && l.contains(r#"outcome="verified""#)
        })
        .map(|l| l.rsplit(' ').next().unwrap_or("").to_owned())
        .unwrap_or_else(|| "0".into())
}

/// A Basic-authenticated form POST written on a raw connection to `addr`, which the test
/// can then drop mid-exchange (its client hangs up).
pub async fn raw_form_post(addr: SocketAddr, path: &str, body: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\n\
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
