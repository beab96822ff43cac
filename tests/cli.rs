//! The binary itself: starts on its embedded defaults with no config, serves, and exits 0
//! on SIGTERM.

mod common;

use common::Running;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn runs_with_no_config_and_stops_cleanly_on_sigterm() {
    let empty = tempfile::tempdir().unwrap(); // no ./rules here: the embedded defaults apply
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_smsfence"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .current_dir(empty.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut proxy = None;
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.is_none() && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["message"] == "smsfence is listening" {
                    assert_eq!(v["rules"], "embedded defaults");
                    proxy = v["proxy"].as_str().map(str::to_owned);
                }
            }
            log.push(line);
        }
    }
    let proxy = proxy.unwrap_or_else(|| panic!("no start-up line: {log:#?}"));
    let mut example = false;
    while !example && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log lines only");
            example = v["example"]
                .as_str()
                .is_some_and(|e| e.contains("curl -i -u ACtest:secret"));
        }
    }
    assert!(example, "the start-up log prints a curl example");

    // One request through the sandbox.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(&proxy).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::post("/2010-04-01/Accounts/ACtest/Messages.json")
            .header("host", &proxy)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                "To=%2B14155550123&Body=hi",
            )))
            .unwrap();
        send.send_request(req).await.unwrap().status()
    });
    assert_eq!(status, 201);

    let code = stop(&mut child);
    assert!(code.success(), "exit status {code:?}");
}

/// Sends `signal` (`-TERM`, `-HUP`) to the child.
fn signal(child: &std::process::Child, signal: &str) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap()
        .success());
}

/// SIGTERM, then its exit status (within 15 s).
fn stop(child: &mut std::process::Child) -> std::process::ExitStatus {
    signal(child, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "smsfence did not stop within 15 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_broken_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("svc.toml");
    std::fs::write(&cfg, "[server]\nlisten = \"127.0.0.1:0\"\nmax_body = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_smsfence"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("svc.toml") && err.contains("line 3") && err.contains("max_body"),
        "{err}"
    );
}

#[test]
fn flags_before_run_are_not_silently_ignored() {
    // `smsfence --config prod.toml run` must not start on the sandbox defaults.
    let empty = tempfile::tempdir().unwrap();
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_smsfence"))
            .args(["--config", "/nonexistent/svc.toml", "run"])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .current_dir(empty.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = status.expect("smsfence started, ignoring --config given before `run`");
    assert!(!status.success(), "{status:?}");
}

#[test]
fn start_up_errors_say_it_once() {
    // The I/O error was printed twice: in the message and again as its source.
    let out = Command::new(env!("CARGO_BIN_EXE_smsfence"))
        .args(["--config", "/nonexistent/svc.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_smsfence"))
        .args(["--listen", &addr, "--admin-listen", "127.0.0.1:0"])
        .current_dir(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr), "{err}");
    assert_eq!(err.matches("os error 98").count(), 1, "{err}");
}

#[test]
fn no_watch_takes_the_usual_spellings_of_true_and_false() {
    // SMSFENCE_NO_WATCH=1 in a container's environment was refused ("possible values:
    // true, false"), even by `check-rules` run in that container.
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/rules");
    for v in ["1", "0", "yes", "no", "on", "off", "true", "false"] {
        let out = Command::new(env!("CARGO_BIN_EXE_smsfence"))
            .args(["check-rules", rules])
            .env("SMSFENCE_NO_WATCH", v)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "SMSFENCE_NO_WATCH={v}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_sighup_during_start_up_is_a_reload_not_the_end() {
    // Start-up waits for the store (here a Redis that accepts and never answers) up to its
    // connect timeout; a SIGHUP then used to kill the process (no handler yet).
    let redis = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("svc.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [store]\nkind = \"redis\"\nurls = [\"redis://{}\"]\npool_size = 1\n\
             timeout = \"3s\"\nconnect_timeout = \"3s\"\n",
            redis.local_addr().unwrap()
        ),
    )
    .unwrap();
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_smsfence"))
            .args(["--config", config.to_str().unwrap(), "--log-format", "json"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Its connection to the store: smsfence is inside start-up now.
    let (conn, _) = redis.accept().unwrap();
    signal(&child, "-HUP");
    // Read to the end, so that its later log lines have a reader.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("smsfence is listening") {
                let _ = tx.send(());
            }
        }
    });
    let listening = rx.recv_timeout(Duration::from_secs(20)).is_ok();
    drop(conn);
    let status = child.try_wait().unwrap();
    assert!(
        listening && status.is_none(),
        "smsfence did not survive the SIGHUP: {status:?}"
    );
    let status = stop(&mut child);
    assert!(status.success(), "{status:?}");
}

/// An audit log in a directory that does not exist stops start-up with a message that
/// names the file (it said only "opening the audit log: No such file or directory"), as
/// a JSON log line with `--log-format json`.
#[test]
fn an_audit_log_that_cannot_be_opened_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("missing").join("audit.jsonl");
    let config = dir.path().join("svc.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [audit]\noutput = \"{}\"\n",
            audit.display()
        ),
    )
    .unwrap();
    let run = |format: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_smsfence"))
            .args(["--config", config.to_str().unwrap(), "--log-format", format])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let message = format!(
        "opening the audit log {}: No such file or directory",
        audit.display()
    );
    let stderr = run("pretty");
    assert!(stderr.contains(&format!("smsfence: {message}")), "{stderr}");
    // With JSON logs, the error is a JSON log line too.
    let stderr = run("json");
    let last: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("not a JSON line ({e}): {stderr}"));
    assert_eq!(last["level"], "ERROR", "{stderr}");
    assert!(
        last["message"].as_str().unwrap().starts_with(&message),
        "{stderr}"
    );
}

/// smsfence run on `config` from an empty directory (kept while it runs), on loopback
/// ports, logging at info in `format` to a piped stderr.
fn run_on(config: &str, format: &str) -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("svc.toml");
    std::fs::write(&cfg, config).unwrap();
    let child = Running(
        Command::new(env!("CARGO_BIN_EXE_smsfence"))
            .arg("--config")
            .arg(&cfg)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--log-format", format, "--no-watch"])
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    (dir, child)
}

/// The start-up log of smsfence run on `config` from an empty directory (JSON lines), from
/// start to its exit after SIGTERM: the banner is written before the signal is handled.
fn start_up_log(config: &str) -> Vec<serde_json::Value> {
    let (_dir, mut child) = run_on(config, "json");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log lines only");
        let listening = v["message"] == "smsfence is listening";
        log.push(v);
        if listening {
            break;
        }
    }
    assert!(
        log.iter().any(|v| v["message"] == "smsfence is listening"),
        "{log:#?}"
    );
    signal(&child, "-TERM");
    log.extend(
        lines
            .map_while(Result::ok)
            .map(|l| serde_json::from_str(&l).expect("JSON log lines only")),
    );
    assert!(child.wait().unwrap().success(), "{log:#?}");
    log
}

#[test]
fn the_start_up_example_is_printed_only_when_it_reaches_the_sandbox() {
    let examples = |log: &[serde_json::Value]| -> Vec<String> {
        log.iter()
            .filter_map(|v| v["example"].as_str().map(str::to_owned))
            .collect()
    };
    // A Twilio route to a real provider: the example would send there (made-up credentials).
    let real = start_up_log(
        "[[route]]\nname = \"twilio\"\npreset = \"twilio\"\nupstream = \"http://127.0.0.1:9\"\n",
    );
    assert!(examples(&real).is_empty(), "{real:#?}");
    // A sandbox route under a prefix: the example goes through the prefix.
    let prefixed = start_up_log(
        "[[route]]\nname = \"tw\"\npreset = \"twilio\"\nupstream = \"sandbox\"\npath_prefix = \"/tw\"\n",
    );
    let ex = examples(&prefixed);
    assert_eq!(ex.len(), 1, "{prefixed:#?}");
    assert!(
        ex[0].contains("/tw/2010-04-01/Accounts/ACtest/Messages.json"),
        "{}",
        ex[0]
    );
}

/// The lines of the pretty start-up example (from "Try it" to "Metrics:") of smsfence run
/// on `config` from an empty directory.
fn pretty_start_up_example(config: &str) -> Vec<String> {
    let (_dir, mut child) = run_on(config, "pretty");
    let mut example = Vec::new();
    // Kept open until smsfence has exited: its shutdown lines go to the same pipe.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref().map_while(Result::ok) {
        let done = line.starts_with("Metrics:");
        if line.starts_with("Try it") || !example.is_empty() {
            example.push(line);
        }
        if done {
            break;
        }
    }
    assert!(stop(&mut child).success());
    drop(lines);
    example
}

#[test]
fn the_start_up_example_asks_the_admin_api_with_a_token_when_one_is_set() {
    let sandbox = "[[route]]\nname = \"twilio\"\npreset = \"twilio\"\nupstream = \"sandbox\"\n";
    let check = |example: &[String]| -> String {
        example
            .iter()
            .find(|l| l.contains("/v1/check"))
            .unwrap_or_else(|| panic!("no /v1/check example: {example:#?}"))
            .clone()
    };
    // Without a token, /v1/check is open.
    let open = check(&pretty_start_up_example(sandbox));
    assert!(!open.contains("Authorization"), "{open}");
    // With one, the printed command would get 401 without the header; the token itself is
    // never printed.
    let secret = "s3cret-admin-token";
    let line = check(&pretty_start_up_example(&format!(
        "{sandbox}[admin]\ntoken = \"{secret}\"\n"
    )));
    assert!(
        line.contains("-H 'Authorization: Bearer <admin.token>'"),
        "{line}"
    );
    assert!(!line.contains(secret), "{line}");
}
