//! TLS on the proxy listener: HTTP/1.1 and HTTP/2 (ALPN) sends decided as over plain
//! HTTP, handshakes that fail or never come, certificates swapped without a restart, and
//! files that cannot be used refused at start-up.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use smsfence::config::Config;
use smsfence::proxy::{Instance, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::{crypto::ring, ClientConfig, RootCertStore};

const NO_RULES: &[(&str, &str)] = &[];
const COOLDOWN: &str =
    "[[limit]]\nname = \"cooldown\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\n";

/// A certificate authority and a server certificate it signed for 127.0.0.1.
struct Pki {
    ca: rustls_pki_types::CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    Pki {
        ca: ca.der().clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Writes the server's PEM files into `dir`.
fn write(dir: &Path, pki: &Pki) {
    std::fs::write(dir.join("cert.pem"), &pki.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &pki.key_pem).unwrap();
}

/// A TLS listener in front of `upstream`; `read_timeout` also bounds the handshake.
fn config_with(dir: &Path, upstream: &str, read_timeout: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrequest_read_timeout = \"{read_timeout}\"\n\
[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
[[route]]\nname = \"twilio\"\npreset = \"twilio\"\nupstream = \"{upstream}\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    )
}

fn config(dir: &Path, upstream: &str) -> String {
    config_with(dir, upstream, "5s")
}

/// A client that trusts only `ca`, offering h2 and http/1.1 (or http/1.1 only).
fn https_client(
    ca: &rustls_pki_types::CertificateDer<'static>,
    h2: bool,
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let tls = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let connector = if h2 {
        builder.enable_http1().enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A Twilio send to `to` over `client`: the status and HTTP version, or the error.
async fn send_over<C>(
    client: &Client<C, Full<Bytes>>,
    p: &Proxy,
    to: &str,
) -> Result<(u16, hyper::Version), String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let url = format!(
        "https://{}/2010-04-01/Accounts/ACtest/Messages.json",
        p.instance.proxy_addr
    );
    let body = format!("To={}&From=%2B15005550006&Body=hi", to.replace('+', "%2B"));
    let req = hyper::Request::post(url)
        .header(FORM.0, FORM.1)
        .header(BASIC.0, BASIC.1)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| "no answer in 5 s".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    let version = resp.version();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok((status, version))
}

#[tokio::test]
async fn sends_over_tls_are_decided_over_http1_and_h2() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    write(dir.path(), &pki);
    let up = MockUpstream::start().await;
    let p = Proxy::start(&config(dir.path(), &up.url()), &[("r.toml", COOLDOWN)]).await;

    let h1 = https_client(&pki.ca, false);
    assert_eq!(
        send_over(&h1, &p, "+14155550123").await,
        Ok((201, hyper::Version::HTTP_11))
    );
    let h2 = https_client(&pki.ca, true);
    assert_eq!(
        send_over(&h2, &p, "+14155550124").await,
        Ok((201, hyper::Version::HTTP_2))
    );
    // The cooldown holds across both: the same number again is throttled.
    assert_eq!(
        send_over(&h2, &p, "+14155550123").await,
        Ok((429, hyper::Version::HTTP_2))
    );
    let got: Vec<_> = up.requests().iter().map(|r| r.body.clone()).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(String::from_utf8_lossy(&got[1]).contains("To=%2B14155550124"));
}

/// The connection is closed within 3 s without a plain HTTP answer.
async fn assert_closed_unanswered(s: &mut tokio::net::TcpStream) {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "still open");
    assert!(!buf.starts_with(b"HTTP/"), "answered in plain HTTP");
}

/// Plain HTTP to the TLS port, and a client that never starts its handshake: each closed
/// and counted, neither served.
#[tokio::test]
async fn failed_and_silent_handshakes_are_closed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &pki());
    let up = MockUpstream::start().await;
    let p = Proxy::start(&config_with(dir.path(), &up.url(), "300ms"), NO_RULES).await;

    let mut plain = tokio::net::TcpStream::connect(p.instance.proxy_addr)
        .await
        .unwrap();
    plain
        .write_all(b"POST /2010-04-01/Accounts/ACtest/Messages.json HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut silent = tokio::net::TcpStream::connect(p.instance.proxy_addr)
        .await
        .unwrap();
    for s in [&mut plain, &mut silent] {
        assert_closed_unanswered(s).await;
    }
    assert!(up.requests().is_empty());
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert!(
        m.contains("smsfence_connection_errors_total{kind=\"tls\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("smsfence_connection_errors_total{kind=\"timeout\"} 1"),
        "{m}"
    );
}

/// A renewed certificate is served to new connections after a reload (SIGHUP); files that
/// cannot be used leave the one in use.
#[tokio::test]
async fn a_renewed_certificate_is_served_after_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let old = pki();
    write(dir.path(), &old);
    let up = MockUpstream::start().await;
    let p = Proxy::start(&config(dir.path(), &up.url()), NO_RULES).await;
    let tls = p.instance.app.tls.as_ref().unwrap();

    let new = pki();
    write(dir.path(), &new);
    // Not yet reloaded: a client trusting only the new CA is refused.
    assert!(send_over(&https_client(&new.ca, false), &p, "+14155550123")
        .await
        .is_err());
    tls.reload().unwrap();
    assert_eq!(
        send_over(&https_client(&new.ca, false), &p, "+14155550123")
            .await
            .map(|(s, _)| s),
        Ok(201)
    );

    // A key that is not the certificate's: the reload fails, the new certificate stays.
    std::fs::write(dir.path().join("key.pem"), &old.key_pem).unwrap();
    let err = tls.reload().unwrap_err().to_string();
    assert!(err.contains("key.pem"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "{err}");
    assert_eq!(
        send_over(&https_client(&new.ca, false), &p, "+14155550124")
            .await
            .map(|(s, _)| s),
        Ok(201)
    );
}

/// Files that cannot be used stop start-up with an error that names the file (and never
/// shows the key).
#[tokio::test]
async fn unusable_certificate_files_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let a = pki();
    let b = pki();
    let start = |cert: &str, key: &str| {
        std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
        std::fs::write(dir.path().join("key.pem"), key).unwrap();
        let text = format!(
            "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
            config(dir.path(), "sandbox")
        );
        let config = Config::from_toml("t.toml", &text).unwrap();
        async move {
            Instance::start(Options {
                config,
                rules: smsfence::rules::reload::Source::Embedded,
                watch_rules: false,
                clock: Arc::new(smsfence::clock::SystemClock::new()),
            })
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string()
        }
    };
    let mismatched = start(&a.cert_pem, &b.key_pem).await;
    assert!(mismatched.contains("key.pem"), "{mismatched}");
    let no_cert = start(&a.key_pem, &a.key_pem).await;
    assert!(no_cert.contains("holds no certificate"), "{no_cert}");
    let no_key = start(&a.cert_pem, "").await;
    assert!(no_key.contains("key.pem"), "{no_key}");
    for e in [&mismatched, &no_cert, &no_key] {
        assert!(!e.contains("PRIVATE KEY"), "{e}");
    }
    // Both keys are needed.
    let half = "[server]\n[server.tls]\ncert = \"c.pem\"\n";
    let err = Config::from_toml("t.toml", half).unwrap_err().to_string();
    assert!(err.contains("key"), "{err}");
}

/// The binary: SIGHUP swaps the certificate (and says so), and a broken pair on the next
/// SIGHUP is logged while the renewed certificate stays.
#[test]
fn sighup_reloads_the_certificate() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let old = pki();
    write(dir.path(), &old);
    let cfg = dir.path().join("svc.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("cert.pem").display(),
            dir.path().join("key.pem").display()
        ),
    )
    .unwrap();
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_smsfence"))
            .arg("--config")
            .arg(&cfg)
            .args(["--log-format", "json", "--no-watch"])
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    let wait_for = |message: &str| -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(v) = rx.recv_timeout(Duration::from_millis(200)) {
                if v["message"].as_str().is_some_and(|m| m.contains(message)) {
                    return v;
                }
            }
        }
        panic!("no log line with {message:?}");
    };
    let listening = wait_for("smsfence is listening");
    assert_eq!(listening["tls"], true);
    let addr = listening["proxy"].as_str().unwrap().to_owned();
    let hup = |child: &Running| {
        let pid = child.0.id().to_string();
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A new number each time: the embedded rules' cooldown would throttle a repeat.
    let sent = std::cell::Cell::new(0);
    let status = |ca: &rustls_pki_types::CertificateDer<'static>| {
        sent.set(sent.get() + 1);
        let body = format!("To=%2B1415555012{}&Body=hi", sent.get());
        let client = https_client(ca, false);
        let req = hyper::Request::post(format!(
            "https://{addr}/2010-04-01/Accounts/ACtest/Messages.json"
        ))
        .header(FORM.0, FORM.1)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), client.request(req))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|r| r.status().as_u16())
        })
    };
    assert_eq!(status(&old.ca), Some(201), "the sandbox over TLS");

    let new = pki();
    write(dir.path(), &new);
    hup(&child);
    wait_for("TLS certificate reloaded");
    assert_eq!(status(&new.ca), Some(201));
    assert_eq!(status(&old.ca), None, "the old certificate is still served");

    std::fs::write(dir.path().join("key.pem"), &old.key_pem).unwrap();
    hup(&child);
    let failed = wait_for("the certificate in use stays");
    assert_eq!(failed["level"], "ERROR");
    assert_eq!(status(&new.ca), Some(201));

    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(child.0.wait().unwrap().success());
}

/// `[admin.tls]` for the admin listener (here with a plain proxy listener).
fn admin_tls_config(dir: &Path, upstream: &str) -> String {
    format!(
        "[[route]]\nname = \"twilio\"\npreset = \"twilio\"\nupstream = \"{upstream}\"\n\
[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"T0ken-for-tests\"\n\
[admin.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        dir.join("admin-cert.pem").display(),
        dir.join("admin-key.pem").display()
    )
}

/// An admin call over `client` to the admin listener: the status and the body.
async fn admin_over<C>(
    client: &Client<C, Full<Bytes>>,
    p: &Proxy,
    method: &str,
    path: &str,
) -> Result<(u16, String), String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("https://{}{path}", p.instance.admin_addr))
        .header("authorization", "Bearer T0ken-for-tests")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| "no answer in 5 s".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The admin listener over TLS: its API and metrics answer over HTTPS only (plain HTTP is
/// closed and counted); the proxy listener stays plain.
#[tokio::test]
async fn the_admin_listener_serves_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    std::fs::write(dir.path().join("admin-cert.pem"), &pki.cert_pem).unwrap();
    std::fs::write(dir.path().join("admin-key.pem"), &pki.key_pem).unwrap();
    let up = MockUpstream::start().await;
    let p = Proxy::start(&admin_tls_config(dir.path(), &up.url()), NO_RULES).await;
    assert!(p.instance.app.tls.is_none());

    let client = https_client(&pki.ca, false);
    let (status, body) = admin_over(&client, &p, "GET", "/v1/rules").await.unwrap();
    assert_eq!(status, 200, "{body}");

    // Plain HTTP to the admin port: not answered, counted as a failed handshake.
    let mut plain = tokio::net::TcpStream::connect(p.instance.admin_addr)
        .await
        .unwrap();
    plain
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_closed_unanswered(&mut plain).await;
    let (_, metrics) = admin_over(&client, &p, "GET", "/metrics").await.unwrap();
    assert!(
        metrics.contains("smsfence_connection_errors_total{kind=\"tls\"} 1"),
        "{metrics}"
    );

    // The proxy listener is untouched: a plain send goes through.
    let r = send(
        "POST",
        &p.url("/2010-04-01/Accounts/ACtest/Messages.json"),
        &[FORM, BASIC],
        "To=%2B14155550123&From=%2B15005550006&Body=hi",
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
}

/// `POST /v1/reload` reads both listeners' certificates again, as SIGHUP; one that cannot be
/// used is reported (422, naming the file, never the key) and the one in use stays.
#[tokio::test]
async fn post_v1_reload_swaps_both_listeners_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let old = pki();
    write(dir.path(), &old);
    std::fs::write(dir.path().join("admin-cert.pem"), &old.cert_pem).unwrap();
    std::fs::write(dir.path().join("admin-key.pem"), &old.key_pem).unwrap();
    let up = MockUpstream::start().await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display(),
        admin_tls_config(dir.path(), &up.url())
    );
    let p = Proxy::start(&text, NO_RULES).await;

    let new = pki();
    write(dir.path(), &new);
    std::fs::write(dir.path().join("admin-cert.pem"), &new.cert_pem).unwrap();
    std::fs::write(dir.path().join("admin-key.pem"), &new.key_pem).unwrap();
    let (old_client, new_client) = (https_client(&old.ca, false), https_client(&new.ca, false));
    assert!(admin_over(&new_client, &p, "GET", "/healthz")
        .await
        .is_err());

    let (status, body) = admin_over(&old_client, &p, "POST", "/v1/reload")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "reloaded");
    assert_eq!(
        v["tls"],
        serde_json::json!({"server": "reloaded", "admin": "reloaded"})
    );
    // New connections to both listeners get the renewed certificates.
    assert_eq!(
        send_over(&https_client(&new.ca, false), &p, "+14155550123")
            .await
            .map(|(s, _)| s),
        Ok(201)
    );
    let fresh = https_client(&new.ca, false);
    assert_eq!(
        admin_over(&fresh, &p, "GET", "/healthz")
            .await
            .map(|(s, _)| s),
        Ok(200)
    );
    assert!(
        admin_over(&https_client(&old.ca, false), &p, "GET", "/healthz")
            .await
            .is_err()
    );

    // The admin key no longer the certificate's: reported, and the renewed one stays.
    std::fs::write(dir.path().join("admin-key.pem"), &old.key_pem).unwrap();
    let (status, body) = admin_over(&fresh, &p, "POST", "/v1/reload").await.unwrap();
    assert_eq!(status, 422, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "failed");
    assert_eq!(
        v["tls"],
        serde_json::json!({"server": "reloaded", "admin": "failed"})
    );
    let errors = v["errors"].to_string();
    assert!(errors.contains("admin-key.pem"), "{errors}");
    assert!(!body.contains("PRIVATE KEY"), "{body}");
    assert_eq!(
        admin_over(&https_client(&new.ca, false), &p, "GET", "/healthz")
            .await
            .map(|(s, _)| s),
        Ok(200)
    );
}

/// A key file whose line breaks were lost (pasted from a one-line secret, or a BEGIN line
/// run into the base64) is refused at start-up and on reload, with an error that names
/// the file and shows none of the key: rustls' PEM errors quote the offending line, which
/// here is the key itself.
#[tokio::test]
async fn a_key_file_without_its_line_breaks_is_refused_without_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    let good = pki();
    write(dir.path(), &good);
    let up = MockUpstream::start().await;
    let p = Proxy::start(&config(dir.path(), &up.url()), NO_RULES).await;
    let tls = p.instance.app.tls.as_ref().unwrap();

    let body: Vec<&str> = good
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let secret = body[0];
    // The key's bytes as `{:?}` of a byte vector would show them.
    let as_bytes = secret
        .bytes()
        .take(12)
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let flattened = [
        // Line breaks turned into spaces, or dropped.
        good.key_pem.replace('\n', " "),
        good.key_pem.replace('\n', ""),
        // The BEGIN line run into the base64.
        good.key_pem.replacen("-----\n", "-----", 1),
    ];
    for key in &flattened {
        std::fs::write(dir.path().join("key.pem"), key).unwrap();
        let reload = tls.reload().unwrap_err().to_string();
        let load = smsfence::proxy::tls::Tls::load(
            &dir.path().join("cert.pem"),
            &dir.path().join("key.pem"),
        )
        .unwrap_err()
        .to_string();
        for err in [reload, load] {
            assert!(err.contains("key.pem"), "{err}");
            assert!(!err.contains(secret), "{err}");
            assert!(!err.contains(&as_bytes), "{err}");
            assert!(!err.contains("PRIVATE KEY"), "{err}");
        }
    }
    // The certificate in use stays.
    assert_eq!(
        send_over(&https_client(&good.ca, false), &p, "+14155550123")
            .await
            .map(|(s, _)| s),
        Ok(201)
    );
}
