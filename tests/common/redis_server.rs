//! A `redis-server` the tests start themselves on a loopback port (Debian's, installed by
//! `scripts/install-redis.sh` when missing), killed on drop (also when the test fails).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{ensure_tools, free_port};

/// A `redis-server` on loopback.
pub struct Redis {
    pub port: u16,
    bus_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra `redis-server` arguments, kept for a restart.
    extra: Vec<String>,
}

impl Redis {
    /// A server (a one-node Cluster without slots when `cluster`) on a free port.
    pub fn start(cluster: bool) -> Redis {
        Redis::start_with(free_port(), &[], cluster)
    }

    /// A server on `port` with these extra arguments.
    pub fn start_with(port: u16, extra: &[String], cluster: bool) -> Redis {
        ensure_tools(&["redis-server", "redis-cli"], "install-redis.sh");
        let mut r = Redis {
            port,
            bus_port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            extra: extra.to_vec(),
        };
        r.spawn(cluster);
        r
    }

    /// Starts (again, after [`Redis::kill`]) the server on the same port.
    pub fn spawn(&mut self, cluster: bool) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if cluster {
            // The bus port explicitly: by default it is port + 10000, which may not exist.
            cmd.args(["--cluster-enabled", "yes", "--cluster-port"])
                .arg(self.bus_port.to_string())
                .arg("--cluster-config-file")
                .arg(self.dir.path().join("nodes.conf"));
        }
        self.child = Some(cmd.spawn().expect("start redis-server"));
        wait_until(Duration::from_secs(10), || {
            self.cli(&["PING"]).is_some_and(|o| o.trim() == "PONG")
        });
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A store configuration for this server alone, for tests that drive the store
    /// directly.
    pub fn store_config(&self) -> smsfence::config::StoreConfig {
        smsfence::config::StoreConfig {
            kind: smsfence::config::StoreKind::Redis,
            urls: vec![self.url()],
            ..smsfence::config::StoreConfig::default()
        }
    }

    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Calls of one command since the last `CONFIG RESETSTAT`.
    pub fn calls(&self, command: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]).unwrap_or_default();
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `ok` until it holds, at most `limit` (short pauses between tries; fails loudly).
pub fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
