//! The audit log: one JSON line per decision and per verification outcome.
//!
//! Lines are valid input to `smsfence replay` (`ts`, `event`, `number`, `ip`, `user`,
//! `account`, `provider`, `segments`), so production traffic can be replayed against a
//! new rule set. Events go through a bounded channel to one writer task: the request path
//! never blocks on disk, and a full channel drops the event and counts it. The file is
//! opened per batch, so an external rotation (logrotate's rename) is followed at once.
//! On shutdown [`Audit::flush`] waits until every queued event is written.
//! Never written: message text, codes, credentials. Numbers are written in full, masked
//! or as a keyed hash, as configured.

use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{AuditConfig, IdentityRedaction, NumberRedaction};
use crate::metrics::Metrics;

/// One audit record.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct AuditEvent {
    /// RFC 3339 time of the decision.
    pub ts: String,
    /// `send` (a decided request) or `verified` / `failed` (a verification outcome).
    pub event: &'static str,
    /// The request id (also in the `Smsfence-Request-Id` response header).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// The provider preset.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub provider: &'static str,
    /// The route name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub route: String,
    /// `send`, `verify_start`, `verify_check`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// `allow`, `throttle`, `block` (send events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    /// Reason codes of the refusal.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<&'static str>,
    /// The refusing rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Shadow rules that would have refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadow: Vec<String>,
    /// The first recipient (as configured: full, masked or hashed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// Further recipients of a multi-recipient request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub numbers: Vec<String>,
    /// Destination country of the first recipient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Number type of the first recipient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number_type: Option<&'static str>,
    /// End-user IP from the trusted header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// End-user id from the trusted header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Provider account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Segments per recipient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<u32>,
    /// Estimated cost of the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// Upstream status, when forwarded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// Why the upstream gave no answer (`refused`: the send never reached it; `timeout`,
    /// `reset`, `other`), when forwarded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_error: Option<&'static str>,
    /// Whole-request latency in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Upstream latency in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<f64>,
    /// Whether the decision was made without the store.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub degraded: bool,
    /// The client hung up before the answer (a send may still have gone out).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub client_closed: bool,
}

/// The audit sink: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: Option<mpsc::Sender<Msg>>,
    redaction: NumberRedaction,
    identities: IdentityRedaction,
    hash_key: (u64, u64),
    metrics: Arc<Metrics>,
}

const CHANNEL: usize = 16_384;

/// What the writer receives.
#[derive(Debug)]
enum Msg {
    Event(Box<AuditEvent>),
    /// Answered once everything queued before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Audit {
    /// An audit log that writes nowhere.
    pub fn disabled(metrics: Arc<Metrics>) -> Audit {
        Audit {
            tx: None,
            redaction: NumberRedaction::Full,
            identities: IdentityRedaction::Full,
            hash_key: (0, 0),
            metrics,
        }
    }

    /// Starts the writer task for the configured output.
    pub fn start(cfg: &AuditConfig, metrics: Arc<Metrics>) -> std::io::Result<Audit> {
        let Some(output) = cfg.output.clone() else {
            return Ok(Audit::disabled(metrics));
        };
        let (tx, rx) = mpsc::channel(CHANNEL);
        let target = if output == "stdout" {
            Target::Stdout
        } else {
            let path = PathBuf::from(&output);
            // Fail at start-up, not on the first event, when the file cannot be opened.
            open_append(&path)?;
            Target::File {
                path,
                max_bytes: cfg.max_bytes,
            }
        };
        let writer_metrics = Arc::clone(&metrics);
        std::thread::Builder::new()
            .name("smsfence-audit".into())
            .spawn(move || writer(rx, target, writer_metrics))?;
        // SipHash-2-4 keyed with two words derived from the configured key: the same key
        // gives the same hashes on every instance and every build (std's DefaultHasher
        // does not promise a stable algorithm). Without a key, a random one per process.
        let hash_key = match cfg.hash_key.as_deref() {
            Some(k) => (siphash((0, 0), k.as_bytes()), siphash((1, 0), k.as_bytes())),
            None => {
                let r = std::hash::RandomState::new();
                (r.hash_one(0u8), r.hash_one(1u8))
            }
        };
        Ok(Audit {
            tx: Some(tx),
            redaction: cfg.numbers,
            identities: cfg.identities,
            hash_key,
            metrics,
        })
    }

    /// Whether events are written anywhere.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues an event; drops and counts it when the writer is behind.
    pub fn emit(&self, event: AuditEvent) {
        if let Some(tx) = &self.tx {
            if tx.try_send(Msg::Event(Box::new(event))).is_err() {
                self.metrics.audit_dropped.inc();
            }
        }
    }

    /// Waits, at most `within`, until every event queued so far is written (on shutdown:
    /// the writer is a detached thread that the process's exit would cut short). False
    /// when that took longer.
    pub async fn flush(&self, within: std::time::Duration) -> bool {
        let Some(tx) = &self.tx else {
            return true;
        };
        let (ack, written) = tokio::sync::oneshot::channel();
        tokio::time::timeout(within, async {
            tx.send(Msg::Flush(ack)).await.is_ok() && written.await.is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// The end user's IP or id as the audit log writes it (`None`: left out).
    pub fn identity(&self, value: &str) -> Option<String> {
        match self.identities {
            IdentityRedaction::Full => Some(value.to_owned()),
            IdentityRedaction::Hash => Some(format!(
                "h:{:016x}",
                siphash(self.hash_key, value.as_bytes())
            )),
            IdentityRedaction::Omit => None,
        }
    }

    /// A number as the audit log writes it.
    pub fn number(&self, e164: &str) -> String {
        match self.redaction {
            NumberRedaction::Full => e164.to_owned(),
            NumberRedaction::Masked => {
                let keep = e164.len().saturating_sub(4);
                format!("{}****", &e164[..keep])
            }
            NumberRedaction::Hash => format!("h:{:016x}", siphash(self.hash_key, e164.as_bytes())),
        }
    }
}

enum Target {
    Stdout,
    File { path: PathBuf, max_bytes: u64 },
}

impl Target {
    /// For messages: the path, or `stdout`.
    fn name(&self) -> std::path::Display<'_> {
        match self {
            Target::Stdout => std::path::Path::new("stdout").display(),
            Target::File { path, .. } => path.display(),
        }
    }
}

/// Opens the file for appending; one it creates is readable by its owner only (it holds
/// numbers and IPs). An existing file keeps its mode.
fn open_append(path: &PathBuf) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

fn writer(mut rx: mpsc::Receiver<Msg>, target: Target, metrics: Arc<Metrics>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut acks = Vec::new();
    // Whether the last batch could not be written: logged once when writing starts to
    // fail and once when it works again, not once per batch.
    let mut failing = false;
    while let Some(first) = rx.blocking_recv() {
        buf.clear();
        let mut events = 0;
        let mut next = Some(first);
        while let Some(m) = next {
            match m {
                Msg::Event(e) => {
                    if serde_json::to_writer(&mut buf, &e).is_ok() {
                        buf.push(b'\n');
                        events += 1;
                    } else {
                        metrics.audit_dropped.inc();
                    }
                }
                Msg::Flush(ack) => acks.push(ack),
            }
            next = if buf.len() < 64 * 1024 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if !buf.is_empty() {
            let written = match &target {
                Target::Stdout => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&buf).and_then(|()| out.flush())
                }
                Target::File { path, max_bytes } => write_file(path, *max_bytes, &buf),
            };
            match written {
                Err(e) => {
                    metrics.audit_dropped.inc_by(events);
                    if !failing {
                        tracing::error!(
                            "cannot write the audit log {}: {e}; its events are dropped (smsfence_audit_dropped_total) until it can",
                            target.name()
                        );
                    }
                    failing = true;
                }
                Ok(()) if failing => {
                    tracing::info!("the audit log {} is written again", target.name());
                    failing = false;
                }
                Ok(()) => {}
            }
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// Appends to the file (opened per batch, so a rename by logrotate is followed at once),
/// rotating it to `<file>.1` first when it has grown past `max_bytes`. A batch is written
/// whole or not at all.
fn write_file(path: &PathBuf, max_bytes: u64, buf: &[u8]) -> std::io::Result<()> {
    if max_bytes > 0 {
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.len() + buf.len() as u64 > max_bytes {
                let mut rotated = path.clone().into_os_string();
                rotated.push(".1");
                std::fs::rename(path, rotated)?;
            }
        }
    }
    let mut f = open_append(path)?;
    let start = f.metadata()?.len();
    f.write_all(buf).inspect_err(|_| {
        // Failed part-way (a full disk): the fragment is taken back out, so that no line
        // written once there is room again is glued to it.
        if f.metadata().is_ok_and(|m| m.len() > start) {
            let _ = f.set_len(start);
        }
    })
}

/// SipHash-2-4 with a 128-bit key: a stable, keyed PRF (std keeps the algorithm
/// available under its old name).
#[allow(deprecated)]
fn siphash(key: (u64, u64), bytes: &[u8]) -> u64 {
    let mut h = std::hash::SipHasher::new_with_keys(key.0, key.1);
    h.write(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything emitted before a flush is on disk when it returns (shutdown relies on
    /// it: the writer thread is not joined).
    #[tokio::test]
    async fn flush_returns_once_every_queued_event_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let cfg = AuditConfig {
            output: Some(path.display().to_string()),
            ..AuditConfig::default()
        };
        let metrics = Arc::new(Metrics::new());
        let audit = Audit::start(&cfg, Arc::clone(&metrics)).unwrap();
        let n = 10_000;
        for i in 0..n {
            audit.emit(AuditEvent {
                event: "send",
                request_id: format!("r{i}"),
                ..AuditEvent::default()
            });
        }
        assert!(audit.flush(std::time::Duration::from_secs(10)).await);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count() as u64 + metrics.audit_dropped.get(), n);
        assert!(text
            .lines()
            .last()
            .unwrap()
            .contains(&format!("r{}", n - 1)));
    }

    /// Events that cannot be written (the directory is gone, the disk is full) are each
    /// counted as dropped, not one per batch of them; writing resumes once it can.
    #[tokio::test]
    async fn every_event_that_cannot_be_written_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("logs");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("audit.jsonl");
        let cfg = AuditConfig {
            output: Some(path.display().to_string()),
            ..AuditConfig::default()
        };
        let metrics = Arc::new(Metrics::new());
        let audit = Audit::start(&cfg, Arc::clone(&metrics)).unwrap();
        std::fs::remove_dir_all(&sub).unwrap();
        let emit = |i: u32| {
            audit.emit(AuditEvent {
                event: "send",
                request_id: format!("r{i}"),
                ..AuditEvent::default()
            })
        };
        for i in 0..1000 {
            emit(i);
        }
        assert!(audit.flush(std::time::Duration::from_secs(10)).await);
        assert_eq!(metrics.audit_dropped.get(), 1000);
        std::fs::create_dir(&sub).unwrap();
        emit(1000);
        assert!(audit.flush(std::time::Duration::from_secs(10)).await);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        assert_eq!(metrics.audit_dropped.get(), 1000);
    }

    /// logrotate's two ways: a rename (with or without `create`) is followed by the next
    /// batch, which goes to a new file at the path; `copytruncate` empties the file under
    /// the writer, whose next lines start at its new end (no hole of NULs before them).
    #[tokio::test]
    async fn rotation_by_rename_or_copytruncate_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let cfg = AuditConfig {
            output: Some(path.display().to_string()),
            ..AuditConfig::default()
        };
        let audit = Audit::start(&cfg, Arc::new(Metrics::new())).unwrap();
        let write = |id: &str| {
            audit.emit(AuditEvent {
                event: "send",
                request_id: id.to_owned(),
                ..AuditEvent::default()
            });
            audit.flush(std::time::Duration::from_secs(10))
        };
        assert!(write("before").await);
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
        assert!(write("renamed").await);
        std::fs::copy(&path, dir.path().join("audit.jsonl.2")).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        assert!(write("truncated").await);
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(read("audit.jsonl.1").contains("\"before\""));
        assert!(read("audit.jsonl.2").contains("\"renamed\""));
        let now = read("audit.jsonl");
        assert_eq!(now.lines().count(), 1, "{now:?}");
        assert!(
            now.starts_with('{') && now.contains("\"truncated\""),
            "{now:?}"
        );
    }

    /// Hashes are stable under one key (across instances and restarts) and differ
    /// under another; without a key, they differ per process.
    #[test]
    fn hashed_numbers_depend_on_the_key() {
        let hashed = |key: Option<&str>| {
            let cfg = AuditConfig {
                output: Some("stdout".into()),
                numbers: NumberRedaction::Hash,
                hash_key: key.map(str::to_owned),
                ..AuditConfig::default()
            };
            let audit = Audit::start(&cfg, Arc::new(Metrics::new())).unwrap();
            audit.number("+14155550123")
        };
        let a = hashed(Some("0123456789abcdef"));
        assert_eq!(a, hashed(Some("0123456789abcdef")));
        assert!(
            a.starts_with("h:") && a.len() == 18 && !a.contains("4155550123"),
            "{a}"
        );
        assert_ne!(a, hashed(Some("0123456789abcdeF")));
        assert_ne!(hashed(None), hashed(None));
    }

    /// The file holds numbers and IPs: created for its owner only, also when rotation
    /// starts a new one.
    #[tokio::test]
    async fn the_file_is_created_for_its_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let cfg = AuditConfig {
            output: Some(path.display().to_string()),
            max_bytes: 1,
            ..AuditConfig::default()
        };
        let audit = Audit::start(&cfg, Arc::new(Metrics::new())).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        for i in 0..2 {
            audit.emit(AuditEvent {
                event: "send",
                request_id: format!("r{i}"),
                ..AuditEvent::default()
            });
            assert!(audit.flush(std::time::Duration::from_secs(10)).await);
        }
        // Rotated past max_bytes: a new file, created the same way.
        assert!(dir.path().join("audit.jsonl.1").exists());
        assert_eq!(mode(&path), 0o600);
    }
}
