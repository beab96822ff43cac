//! The shared store on Redis or Valkey (single node or Cluster), for several instances.
//!
//! - **Limits** run `lua/gcra.lua`: every key of a request in one `EVALSHA`, checked and
//!   committed all-or-nothing on the server's clock (`TIME`), each key expiring when its
//!   TAT has passed. On a single node that is one round trip per request. In a Cluster,
//!   keys carry a hash tag per entity (`sf:{n447400123456}:t:…`), so a script never spans
//!   slots; a request's groups (one `EVALSHA` per hash tag) are sent at once over the
//!   multiplexed connection, which pipelines them per node, and if one group refuses after others
//!   committed, `lua/refund.lua` gives the others back — all-or-nothing across nodes.
//! - **Heuristic windows** run `lua/window.lua` (same semantics as `window.rs`).
//! - **Flags** (auto-blocks, verified numbers) are plain keys expiring at their `until`;
//!   blocks and offence counts are also indexed in one hash for `GET /v1/blocks`.
//! - **Faults**: every call has a timeout; a circuit breaker fails fast after repeated
//!   errors and lets one call through per cooldown to notice recovery; the connection
//!   reconnects by itself. The caller decides per rule what an error means
//!   (`on_store_error`); [`RedisStore::local`] is the in-process fallback.
//! - **Refused-key cache**: a key Redis refused is refused locally for up to a second, so
//!   a flood against one number does not become a flood against Redis (bounded, expiring,
//!   keyed by the limit's rate so that a reload is seen).
//!
//! Scripts are loaded with `SCRIPT LOAD` at connect and called by `EVALSHA`; on
//! `NOSCRIPT` (a restarted or failed-over node) the call falls back to `EVAL`, which loads
//! it again. Nothing here logs a phone number: errors carry Redis' message only.

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, RedisError, ServerErrorKind, Value};

use super::memory::{IdHasher, MemoryStore};
use super::window::Reading;
use super::{Entity, Flag, GcraCheck, GcraOutcome, LimitKey, StoreError, StoreStats, WindowOp};
use crate::clock::{duration_nanos, Timestamp};
use crate::config::StoreConfig;
use crate::decide::gcra::State;

/// A Lua script and its SHA1, for `EVALSHA`.
struct Lua {
    body: &'static str,
    sha: String,
}

impl Lua {
    fn new(body: &'static str) -> Lua {
        Lua {
            body,
            sha: redis::Script::new(body).get_hash().to_owned(),
        }
    }
}

const GCRA: &str = include_str!("lua/gcra.lua");
const REFUND: &str = include_str!("lua/refund.lua");
const WINDOW: &str = include_str!("lua/window.lua");
const UNFLAG: &str = include_str!("lua/unflag.lua");
/// The hash that indexes live flags (field: flag key, value: `until level label`).
const FLAG_INDEX: &str = "sf:flags";
/// Most refused keys remembered locally.
const REFUSED_CAP: usize = 100_000;

/// One connection kind; both multiplex concurrent calls over few sockets.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query(&mut self, cmd: &Cmd) -> redis::RedisResult<Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd).await,
            Conn::Cluster(c) => c.req_packed_command(cmd).await,
        }
    }
}

/// Trips after `threshold` consecutive failures and stays open for `cooldown`; then lets
/// one probe call through per cooldown (everyone else still fails at once): the probe's
/// success closes it, its failure keeps it open.
#[derive(Debug)]
struct Breaker {
    threshold: u32,
    cooldown: Duration,
    /// (consecutive failures, open until).
    state: Mutex<(u32, Option<tokio::time::Instant>)>,
}

impl Breaker {
    fn lock(&self) -> MutexGuard<'_, (u32, Option<tokio::time::Instant>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn allows(&self) -> bool {
        let mut s = self.lock();
        let now = tokio::time::Instant::now();
        match s.1 {
            Some(until) if now < until => false,
            Some(_) => {
                // Half-open: this call is the probe; the others fail at once meanwhile.
                s.1 = Some(now + self.cooldown);
                true
            }
            None => true,
        }
    }

    fn success(&self) {
        *self.lock() = (0, None);
    }

    /// Counts a failure; true when this one opened the breaker.
    fn failure(&self) -> bool {
        let mut s = self.lock();
        s.0 = s.0.saturating_add(1);
        if s.0 >= self.threshold {
            let opened = s.1.is_none();
            s.1 = Some(tokio::time::Instant::now() + self.cooldown);
            return opened;
        }
        false
    }

    #[cfg(test)]
    fn is_open(&self) -> bool {
        self.lock()
            .1
            .is_some_and(|until| tokio::time::Instant::now() < until)
    }
}

/// How long a refusal is answered locally before Redis is asked again: short, so that a
/// reload that loosens a limit, or a Cluster refund, is seen within a second.
const REFUSED_FOR: Duration = Duration::from_secs(1);

/// Refused keys: hash of (key, interval, burst) → (retry-after deadline, cache expiry,
/// smallest cost refused).
type RefusedMap = HashMap<u64, (Timestamp, Timestamp, u32), BuildHasherDefault<IdHasher>>;

/// One slot's call of the limit script ([`RedisStore::gcra`]).
struct Slot {
    /// The TAT keys, all of one hash tag.
    keys: Vec<String>,
    /// The script's arguments: commit, then (interval, burst, cost) per key.
    args: Vec<String>,
    /// Per key, the microseconds a refund takes back (`lua/refund.lua`).
    refund: Vec<String>,
}

/// Every slot's reply, when their task failed.
fn slots_failed(n: usize, e: &StoreError) -> Vec<Result<Vec<i64>, StoreError>> {
    (0..n)
        .map(|_| Err(StoreError::Unavailable(e.to_string())))
        .collect()
}

/// The Redis store.
pub struct RedisStore {
    /// Itself, for the background reconnect task.
    me: std::sync::Weak<RedisStore>,
    /// The connections (a pool of single-node managers, or one Cluster connection);
    /// empty until connected. Once made they reconnect by themselves.
    pool: ArcSwap<Vec<Conn>>,
    /// Round-robin over the pool.
    next: AtomicUsize,
    /// Whether a background connect is running.
    connecting: AtomicBool,
    cfg: StoreConfig,
    gcra: Lua,
    refund: Lua,
    window: Lua,
    unflag: Lua,
    breaker: Breaker,
    refused: Mutex<RefusedMap>,
    /// Clock time (ns) the full refused map was last swept for room.
    refused_swept: AtomicU64,
    /// The in-process limiter for rules with `on_store_error = "local"`.
    local: MemoryStore,
    /// Calls that timed out, and that failed otherwise (for metrics).
    timeouts: AtomicU64,
    failures: AtomicU64,
    /// Requests answered from the refused-key cache.
    cache_hits: AtomicU64,
    /// Keys in Redis at the last look (`DBSIZE`), for the tracked-keys gauge.
    keys: AtomicU64,
    /// Writes running in tasks of their own (give-backs, auto-blocks, verification
    /// records, several-slot limit calls), waited for at shutdown.
    tasks: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &self.cfg.cluster)
            .field("connected", &!self.pool.load().is_empty())
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for `cfg.urls`. Connects at once; when Redis is unreachable it starts
    /// degraded (every call fails fast until it connects) unless `require` is set, in
    /// which case the error is returned.
    pub async fn connect(cfg: &StoreConfig) -> Result<Arc<RedisStore>, StoreError> {
        let store = Arc::new_cyclic(|me| RedisStore {
            me: me.clone(),
            pool: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            connecting: AtomicBool::new(false),
            cfg: cfg.clone(),
            gcra: Lua::new(GCRA),
            refund: Lua::new(REFUND),
            window: Lua::new(WINDOW),
            unflag: Lua::new(UNFLAG),
            breaker: Breaker {
                threshold: cfg.breaker_failures.max(1),
                cooldown: cfg.breaker_cooldown,
                state: Mutex::new((0, None)),
            },
            refused: Mutex::new(RefusedMap::default()),
            refused_swept: AtomicU64::new(0),
            local: MemoryStore::new(cfg.max_keys),
            timeouts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            keys: AtomicU64::new(0),
            tasks: tokio_util::task::TaskTracker::new(),
        });
        match store.try_connect().await {
            Ok(()) => Ok(store),
            Err(e) if cfg.require_store => Err(e),
            Err(e) => {
                tracing::warn!("state store not reachable at start ({e}); starting degraded, retrying in the background");
                store.reconnect_in_background();
                Ok(store)
            }
        }
    }

    /// Runs `work` in a task of its own on this thread's runtime, tracked so that
    /// shutdown waits for it ([`Self::settle`]); `None` without a runtime.
    pub fn spawn_tracked<F>(&self, work: F) -> Option<tokio::task::JoinHandle<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        Some(rt.spawn(self.tasks.track_future(work)))
    }

    /// Waits (at most `within`) until the writes running in tasks of their own have ended:
    /// at shutdown, so that a give-back or a verification record started by a request
    /// whose client hung up is not cut off with the process. Each worker calls it on its
    /// own event loop (which runs its tasks meanwhile); `false` if some were still running.
    pub async fn settle(&self, within: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_ok()
    }

    /// One connection attempt, bounded by the connect timeout; loads the scripts.
    async fn try_connect(&self) -> Result<(), StoreError> {
        let timeout = self.cfg.connect_timeout;
        let attempt = async {
            let mut conns = Vec::new();
            if self.cfg.cluster {
                let client = redis::cluster::ClusterClientBuilder::new(self.cfg.urls.clone())
                    .connection_timeout(timeout)
                    .response_timeout(self.cfg.timeout)
                    .retries(1)
                    .build()?;
                conns.push(Conn::Cluster(client.get_async_connection().await?));
            } else {
                let client = redis::Client::open(self.cfg.urls[0].as_str())?;
                for _ in 0..self.cfg.pool_size.max(1) {
                    let cfg = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(self.cfg.timeout))
                        .set_number_of_retries(1)
                        .set_max_delay(Duration::from_millis(500));
                    conns.push(Conn::Single(
                        client.get_connection_manager_with_config(cfg).await?,
                    ));
                }
            }
            // Load the scripts now (on every primary in a Cluster), so that the request
            // path starts with EVALSHA hits.
            let mut c = conns[0].clone();
            for s in [GCRA, REFUND, WINDOW, UNFLAG] {
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(s);
                match &mut c {
                    Conn::Single(m) => {
                        m.req_packed_command(&load).await?;
                    }
                    Conn::Cluster(cl) => {
                        use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
                        cl.route_command(
                            load,
                            RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                        )
                        .await?;
                    }
                }
            }
            Ok::<_, RedisError>(conns)
        };
        let conns = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(unavailable(&e)),
            Err(_) => return Err(StoreError::Timeout),
        };
        // The breaker is left alone: the next call (the probe, if it is open) says
        // whether Redis answers again.
        self.pool.store(Arc::new(conns));
        tracing::info!(
            "state store connected ({})",
            if self.cfg.cluster {
                "cluster"
            } else {
                "single node"
            }
        );
        Ok(())
    }

    /// Keeps trying to make fresh connections (backing off up to 5 s) until it works.
    /// Called at start when Redis is down, and whenever the breaker opens: the
    /// connections reconnect by themselves too, but a fresh set is the sure way back.
    fn reconnect_in_background(&self) {
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.me.clone();
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(100);
            loop {
                tokio::time::sleep(wait).await;
                let Some(store) = me.upgrade() else { return };
                if store.try_connect().await.is_ok() {
                    store.connecting.store(false, Ordering::Release);
                    return;
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        });
    }

    /// Whether Redis answers a `PING` now, within the call timeout.
    pub async fn ping(&self) -> bool {
        matches!(
            self.call(&redis::cmd("PING")).await,
            Ok(Value::SimpleString(_) | Value::Okay)
        )
    }

    /// The in-process limiter used by rules with `on_store_error = "local"`.
    pub fn local(&self) -> &MemoryStore {
        &self.local
    }

    fn connection(&self) -> Result<Conn, StoreError> {
        let pool = self.pool.load();
        if pool.is_empty() {
            return Err(StoreError::Unavailable("not connected".into()));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % pool.len();
        Ok(pool[i].clone())
    }

    /// Runs one command under the breaker and the timeout, counting failures.
    async fn call(&self, cmd: &Cmd) -> Result<Value, StoreError> {
        if !self.breaker.allows() {
            return Err(StoreError::Unavailable("circuit open".into()));
        }
        let mut conn = self.connection()?;
        // An error reply may come back as a value: make it an error.
        let query = async { conn.query(cmd).await.and_then(Value::extract_error) };
        match tokio::time::timeout(self.cfg.timeout, query).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                Ok(v)
            }
            Ok(Err(e)) => {
                // NOSCRIPT is answered by EVAL, not an outage: Redis answered, so it counts
                // as a success (a half-open breaker's probe must close it, or the EVAL that
                // follows would be refused and the breaker would never close again).
                if matches!(e.kind(), ErrorKind::Server(ServerErrorKind::NoScript)) {
                    self.breaker.success();
                } else {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    // Broken connections get a fresh set in the background; a slow but
                    // connected Redis keeps its connections.
                    if self.breaker.failure() && !e.is_timeout() {
                        self.reconnect_in_background();
                    }
                }
                Err(unavailable(&e))
            }
            Err(_) => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                self.breaker.failure();
                Err(StoreError::Timeout)
            }
        }
    }

    /// `EVALSHA`, falling back to `EVAL` (which caches the script) on `NOSCRIPT`.
    async fn eval(
        &self,
        script: &Lua,
        keys: &[String],
        args: &[String],
    ) -> Result<Value, StoreError> {
        let build = |verb: &str, body: &str| {
            let mut c = redis::cmd(verb);
            c.arg(body).arg(keys.len()).arg(keys).arg(args);
            c
        };
        match self.call(&build("EVALSHA", &script.sha)).await {
            Err(StoreError::Unavailable(m)) if m == "NOSCRIPT" => {
                self.call(&build("EVAL", script.body)).await
            }
            other => other,
        }
    }

    /// See [`super::Store::gcra`].
    pub async fn gcra(
        &self,
        checks: &[GcraCheck<'_>],
        now: Timestamp,
        commit: bool,
    ) -> Result<GcraOutcome, StoreError> {
        if checks.is_empty() {
            return Ok(GcraOutcome::Allowed { states: Vec::new() });
        }
        if let Some(refused) = self.cached_refusal(checks, now) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(refused);
        }
        let keys: Vec<String> = checks.iter().map(|c| key(&c.key, 't')).collect();
        // Group by hash tag in a Cluster (each group one slot); one group on a single node.
        let groups: Vec<Vec<usize>> = if self.cfg.cluster {
            let mut by_tag: Vec<(&str, Vec<usize>)> = Vec::new();
            for (i, k) in keys.iter().enumerate() {
                let t = tag_of(k);
                match by_tag.iter_mut().find(|(x, _)| *x == t) {
                    Some((_, v)) => v.push(i),
                    None => by_tag.push((t, vec![i])),
                }
            }
            by_tag.into_iter().map(|(_, v)| v).collect()
        } else {
            vec![(0..checks.len()).collect()]
        };
        // Per slot: the script's keys and arguments, and what a refund would take back
        // (only ever needed across slots).
        let across = commit && groups.len() > 1;
        let slots: Vec<Slot> = groups
            .iter()
            .map(|g| {
                let keys: Vec<String> = g.iter().map(|&i| keys[i].clone()).collect();
                let mut args = vec![if commit { "1" } else { "0" }.to_owned()];
                let mut refund = Vec::with_capacity(if across { g.len() } else { 0 });
                for &i in g {
                    let c = &checks[i];
                    args.push(micros(c.interval).max(1).to_string());
                    args.push(c.burst.to_string());
                    args.push(c.cost.to_string());
                    if across {
                        refund.push((micros(c.interval).max(1) * u64::from(c.cost)).to_string());
                    }
                }
                Slot { keys, args, refund }
            })
            .collect();
        let replies = match self.me.upgrade() {
            // Several slots, committing: the calls and any refund run in a task of their
            // own, so a request dropped meanwhile (its client hung up) cannot leave some
            // slots' tokens taken for a request that was refused on another.
            Some(me) if across => {
                let task = self.spawn_tracked(async move { me.gcra_slots(&slots, true).await });
                match task {
                    Some(task) => task.await.unwrap_or_else(|e| {
                        let e =
                            StoreError::Unavailable(format!("the limit call's task failed: {e}"));
                        slots_failed(groups.len(), &e)
                    }),
                    None => slots_failed(
                        groups.len(),
                        &StoreError::Unavailable("no runtime to call on".into()),
                    ),
                }
            }
            _ => self.gcra_slots(&slots, commit).await,
        };

        let mut states = vec![
            State {
                remaining: 0,
                reset: Duration::ZERO
            };
            checks.len()
        ];
        let mut refused: Option<(usize, Duration)> = None;
        // A refusal from one slot is an answer even when another slot failed: it wins.
        let mut error = None;
        for (g, reply) in groups.iter().zip(replies) {
            let v = match reply {
                Ok(v) => v,
                Err(e) => {
                    error = Some(e);
                    continue;
                }
            };
            if v.first() == Some(&1) {
                for (j, &i) in g.iter().enumerate() {
                    states[i] = State {
                        remaining: u32::try_from(v.get(1 + 2 * j).copied().unwrap_or(0).max(0))
                            .unwrap_or(u32::MAX),
                        reset: Duration::from_micros(
                            u64::try_from(v.get(2 + 2 * j).copied().unwrap_or(0)).unwrap_or(0),
                        ),
                    };
                }
            } else {
                let at = usize::try_from(v.get(1).copied().unwrap_or(1) - 1).unwrap_or(0);
                let index = g.get(at).copied().unwrap_or(g[0]);
                let retry = Duration::from_micros(
                    u64::try_from(v.get(2).copied().unwrap_or(0)).unwrap_or(0),
                );
                if refused.is_none_or(|(_, r)| retry > r) {
                    refused = Some((index, retry));
                }
            }
        }
        // Across slots, what the other groups took was given back (`gcra_slots`).
        if let Some((index, retry_after)) = refused {
            self.remember_refusal(&checks[index], now, retry_after);
            return Ok(GcraOutcome::Refused {
                index,
                retry_after,
                capacity: false,
            });
        }
        if let Some(e) = error {
            return Err(e);
        }
        Ok(GcraOutcome::Allowed { states })
    }

    /// Runs the limit script on each slot, all at once; when committing and some slot
    /// did not commit (it refused, or failed), gives back what the others took —
    /// all-or-nothing across nodes. The replies, one per slot.
    async fn gcra_slots(&self, slots: &[Slot], commit: bool) -> Vec<Result<Vec<i64>, StoreError>> {
        let calls = slots
            .iter()
            .map(|s| async move { self.eval(&self.gcra, &s.keys, &s.args).await });
        let replies: Vec<Result<Vec<i64>, StoreError>> = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .map(|r| r.and_then(|v| ints(&v)))
            .collect();
        let took =
            |r: &Result<Vec<i64>, StoreError>| r.as_ref().is_ok_and(|v| v.first() == Some(&1));
        if commit && slots.len() > 1 && !replies.iter().all(took) {
            let refunds = slots
                .iter()
                .zip(&replies)
                .filter(|(_, r)| took(r))
                .map(|(s, _)| async move { self.eval(&self.refund, &s.keys, &s.refund).await });
            for r in futures_util::future::join_all(refunds).await {
                if let Err(e) = r {
                    tracing::warn!("could not give back a refused request's tokens: {e}");
                }
            }
        }
        replies
    }

    fn refused_lock(&self) -> MutexGuard<'_, RefusedMap> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached_refusal(&self, checks: &[GcraCheck<'_>], now: Timestamp) -> Option<GcraOutcome> {
        let cache = self.refused_lock();
        if cache.is_empty() {
            return None;
        }
        // The longest wait of the keys known refused, as Redis would answer (the first
        // one's would send the client back too early).
        let (index, until) = checks
            .iter()
            .enumerate()
            .filter_map(|(index, c)| {
                let (until, expires, cost) = *cache.get(&refusal_hash(c))?;
                (expires > now && until > now && c.cost >= cost).then_some((index, until))
            })
            .max_by_key(|&(_, until)| until)?;
        Some(GcraOutcome::Refused {
            index,
            retry_after: until.since(now),
            capacity: false,
        })
    }

    fn remember_refusal(&self, c: &GcraCheck<'_>, now: Timestamp, retry_after: Duration) {
        let mut cache = self.refused_lock();
        if cache.len() >= REFUSED_CAP {
            // Full: make room at most once a second, so that a flood of refused keys
            // does not turn every refusal into a scan; meanwhile new ones go uncached.
            let last = self.refused_swept.load(Ordering::Relaxed);
            if now.as_nanos().saturating_sub(last) < 1_000_000_000 {
                return;
            }
            self.refused_swept.store(now.as_nanos(), Ordering::Relaxed);
            cache.retain(|_, (_, expires, _)| *expires > now);
            if cache.len() >= REFUSED_CAP {
                return;
            }
        }
        let expires = now.add(retry_after.min(REFUSED_FOR));
        cache.insert(refusal_hash(c), (now.add(retry_after), expires, c.cost));
    }

    /// See [`super::Store::windows`]: one script call (one per slot in a Cluster).
    pub async fn windows(
        &self,
        ops: &[WindowOp<'_>],
        commit: &[bool],
    ) -> Result<Vec<Reading>, StoreError> {
        self.run_windows(ops, commit, false).await
    }

    /// See [`super::Store::give_back`]: the window script with negative amounts.
    pub async fn give_back(&self, ops: &[WindowOp<'_>]) -> Result<(), StoreError> {
        let sums: Vec<WindowOp<'_>> = ops
            .iter()
            .map(|op| WindowOp {
                member: None,
                near: None,
                ..*op
            })
            .collect();
        self.run_windows(&sums, &vec![true; sums.len()], true)
            .await
            .map(drop)
    }

    async fn run_windows(
        &self,
        ops: &[WindowOp<'_>],
        commit: &[bool],
        negative: bool,
    ) -> Result<Vec<Reading>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let groups: Vec<Vec<usize>> = if self.cfg.cluster {
            (0..ops.len()).map(|i| vec![i]).collect()
        } else {
            vec![(0..ops.len()).collect()]
        };
        let run = |g: &Vec<usize>| {
            let mut ks = Vec::with_capacity(g.len() * 2);
            let mut args = Vec::with_capacity(g.len() * 6);
            for &i in g {
                let op = &ops[i];
                args.push(if commit[i] { "1" } else { "0" }.to_owned());
                ks.push(key(&op.key, 'w'));
                ks.push(key(&op.key, 'm'));
                args.push(micros(op.window).max(10).to_string());
                args.push(if negative {
                    format!("-{}", op.amount)
                } else {
                    op.amount.to_string()
                });
                args.push(op.member.map_or_else(String::new, |m| m.to_string()));
                args.push(op.cap.to_string());
                args.push(op.near.map_or_else(String::new, |d| d.to_string()));
            }
            async move { self.eval(&self.window, &ks, &args).await }
        };
        let replies = futures_util::future::join_all(groups.iter().map(run)).await;
        let mut out = vec![Reading::default(); ops.len()];
        for (g, reply) in groups.iter().zip(replies) {
            let v = ints(&reply?)?;
            for (j, &i) in g.iter().enumerate() {
                let at =
                    |k: usize| u64::try_from(v.get(3 * j + k).copied().unwrap_or(0)).unwrap_or(0);
                out[i] = Reading {
                    total: at(0),
                    distinct: at(1),
                    near: at(2),
                };
            }
        }
        Ok(out)
    }

    /// See [`super::Store::flags`]. A flag is live while its key is: the key expires at
    /// the flag's `until` on Redis' clock, which every instance shares; `_now`, this
    /// instance's clock, would end a flag early on an instance whose clock runs ahead
    /// of the one that set it.
    pub async fn flags(
        &self,
        keys: &[LimitKey<'_>],
        _now: Timestamp,
    ) -> Result<Vec<Option<Flag>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let parse = |v: Value| match v {
            Value::BulkString(b) => parse_flag(&b),
            _ => None,
        };
        if !self.cfg.cluster {
            // One MGET: one round trip.
            let mut c = redis::cmd("MGET");
            for k in keys {
                c.arg(key(k, 'f'));
            }
            return match self.call(&c).await? {
                Value::Array(vs) if vs.len() == keys.len() => {
                    Ok(vs.into_iter().map(parse).collect())
                }
                other => Err(StoreError::Unavailable(format!(
                    "unexpected MGET reply {other:?}"
                ))),
            };
        }
        // Keys of a Cluster live in different slots: one GET each, all at once.
        let calls = keys.iter().map(|k| {
            let mut c = redis::cmd("GET");
            c.arg(key(k, 'f'));
            async move { self.call(&c).await }
        });
        let mut out = Vec::with_capacity(keys.len());
        for v in futures_util::future::join_all(calls).await {
            out.push(parse(v?));
        }
        Ok(out)
    }

    /// See [`super::Store::set_flag`].
    pub async fn set_flag(
        &self,
        key_: LimitKey<'_>,
        flag: Flag,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.put_flag(key_, flag, now, false).await.map(drop)
    }

    /// See [`super::Store::add_flag`]: `SET … NX`, so that of several instances (or
    /// requests) setting one flag at once exactly one does.
    pub async fn add_flag(
        &self,
        key_: LimitKey<'_>,
        flag: Flag,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.put_flag(key_, flag, now, true).await
    }

    /// Sets a flag (only if its key is absent, when `only_new`); `false` when it was not.
    async fn put_flag(
        &self,
        key_: LimitKey<'_>,
        flag: Flag,
        now: Timestamp,
        only_new: bool,
    ) -> Result<bool, StoreError> {
        let k = key(&key_, 'f');
        let v = format!("{} {} {}", flag.until.as_nanos(), flag.level, flag.label);
        // Rounded up: the key must not expire before the flag does.
        let ms = flag.until.since(now).as_nanos().div_ceil(1_000_000).max(1);
        let mut set = redis::cmd("SET");
        set.arg(&k)
            .arg(&v)
            .arg("PX")
            .arg(u64::try_from(ms).unwrap_or(u64::MAX));
        if only_new {
            set.arg("NX");
        }
        // `SET … NX` answers nil when the key was there.
        if self.call(&set).await? == Value::Nil {
            return Ok(false);
        }
        // Only blocks and their offence counts are listed (`GET /v1/blocks`); the
        // "verified" trust marks, one per verified number, stay out of the index, which
        // has no TTL of its own (expired entries are pruned by the sweeper and on listing).
        if flag.label == "verified" {
            return Ok(true);
        }
        let mut index = redis::cmd("HSET");
        index.arg(FLAG_INDEX).arg(&k).arg(&v);
        self.call(&index).await?;
        Ok(true)
    }

    /// The flag index: (field, value as stored, flag).
    async fn flag_index(&self) -> Result<Vec<(Vec<u8>, Vec<u8>, Flag)>, StoreError> {
        let mut all = redis::cmd("HGETALL");
        all.arg(FLAG_INDEX);
        let v = self.call(&all).await?;
        let items = match v {
            Value::Array(a) => a,
            Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => Vec::new(),
        };
        let mut out = Vec::new();
        for pair in items.chunks(2) {
            if let [Value::BulkString(k), Value::BulkString(v)] = pair {
                if let Some(f) = parse_flag(v) {
                    out.push((k.clone(), v.clone(), f));
                }
            }
        }
        Ok(out)
    }

    /// The live flags of the index; expired entries are dropped from it on the way
    /// (compare-and-delete, so that a flag set again meanwhile stays listed).
    async fn live_flags(&self, now: Timestamp) -> Result<Vec<(Vec<u8>, Flag)>, StoreError> {
        let (live, dead): (Vec<_>, Vec<_>) = self
            .flag_index()
            .await?
            .into_iter()
            .partition(|(_, _, f)| f.until > now);
        if !dead.is_empty() {
            let mut args = Vec::with_capacity(dead.len() * 2);
            for (k, v, _) in dead {
                args.push(k);
                args.push(v);
            }
            let mut evalsha = redis::cmd("EVALSHA");
            evalsha
                .arg(&self.unflag.sha)
                .arg(1)
                .arg(FLAG_INDEX)
                .arg(&args);
            if let Err(StoreError::Unavailable(m)) = self.call(&evalsha).await {
                if m == "NOSCRIPT" {
                    let mut eval = redis::cmd("EVAL");
                    eval.arg(self.unflag.body).arg(1).arg(FLAG_INDEX).arg(&args);
                    self.call(&eval).await?;
                } else {
                    return Err(StoreError::Unavailable(m));
                }
            }
        }
        Ok(live.into_iter().map(|(k, _, f)| (k, f)).collect())
    }

    /// See [`super::Store::list_flags`].
    pub async fn list_flags(&self, now: Timestamp) -> Result<Vec<Flag>, StoreError> {
        let mut v: Vec<Flag> = self
            .live_flags(now)
            .await?
            .into_iter()
            .map(|(_, f)| f)
            .collect();
        v.sort_by(|a, b| a.label.cmp(&b.label));
        Ok(v)
    }

    /// See [`super::Store::remove_flags`].
    pub async fn remove_flags(&self, label: &str) -> Result<usize, StoreError> {
        let hits: Vec<Vec<u8>> = self
            .flag_index()
            .await?
            .into_iter()
            .filter(|(_, _, f)| f.label == label)
            .map(|(k, _, _)| k)
            .collect();
        for k in &hits {
            let mut del = redis::cmd("DEL");
            del.arg(k.as_slice());
            self.call(&del).await?;
            let mut hdel = redis::cmd("HDEL");
            hdel.arg(FLAG_INDEX).arg(k.as_slice());
            self.call(&hdel).await?;
        }
        Ok(hits.len())
    }

    /// Remembers a verification reference → E.164 number for `ttl`, for a check that
    /// carries no number and may land on another instance.
    pub async fn put_ref(
        &self,
        reference: &str,
        e164: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut set = redis::cmd("SET");
        set.arg(ref_key(reference))
            .arg(e164)
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        self.call(&set).await.map(drop)
    }

    /// The number a verification reference went to, if any instance remembered it.
    pub async fn get_ref(&self, reference: &str) -> Result<Option<String>, StoreError> {
        let mut get = redis::cmd("GET");
        get.arg(ref_key(reference));
        Ok(match self.call(&get).await? {
            Value::BulkString(b) => String::from_utf8(b).ok(),
            _ => None,
        })
    }

    /// Drops expired refused-key entries and idle local-fallback keys.
    pub fn sweep(&self, now: Timestamp) -> usize {
        let mut cache = self.refused_lock();
        let before = cache.len();
        cache.retain(|_, (_, expires, _)| *expires > now);
        let dropped = before - cache.len();
        drop(cache);
        dropped + self.local.sweep(now)
    }

    /// Reads the number of keys in Redis (`DBSIZE`, summed over primaries in a Cluster)
    /// for the tracked-keys gauge, and drops expired entries from the flag index (which
    /// has no TTL of its own: under a run of auto-blocks it would otherwise grow until
    /// someone lists the blocks). Errors are ignored: the gauge keeps its last value.
    pub async fn refresh(&self, now: Timestamp) {
        let _ = self.live_flags(now).await;
        if let Ok(v) = self.call(&redis::cmd("DBSIZE")).await {
            if let Ok(n) = redis::from_redis_value::<u64>(v) {
                self.keys.store(n, Ordering::Relaxed);
            }
        }
    }

    /// Counters for metrics.
    pub fn stats(&self) -> StoreStats {
        let local = self.local.stats();
        StoreStats {
            keys: self.keys.load(Ordering::Relaxed),
            evictions: local.evictions,
            rejected: local.rejected,
            timeouts: self.timeouts.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
        }
    }
}

fn unavailable(e: &RedisError) -> StoreError {
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::NoScript) => StoreError::Unavailable("NOSCRIPT".into()),
        _ if e.is_timeout() => StoreError::Timeout,
        _ => StoreError::Unavailable(e.to_string()),
    }
}

fn micros(d: Duration) -> u64 {
    duration_nanos(d) / 1_000
}

/// FNV-1a: a stable hash (the same on every instance) for account, user and sender ids,
/// so they are not stored in Redis in the clear.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The refused-key cache's key: the limit's key with its rate, so that a reload that
/// changes the rate is not answered from the old one's refusals.
fn refusal_hash(c: &GcraCheck<'_>) -> u64 {
    let k = key(&c.key, 't');
    fnv(format!("{k} {} {}", micros(c.interval), c.burst).as_bytes())
}

/// The Redis key of `k`: `sf:{<entity>}:<kind>:<rule>`. The braces are the Cluster hash
/// tag: every key about one entity lives in one slot.
fn key(k: &LimitKey<'_>, kind: char) -> String {
    let entity = match k.entity {
        Entity::Number(d) => format!("n{d}"),
        Entity::Prefix(d) => format!("p{d}"),
        Entity::Country(c) => format!("c{c}"),
        Entity::Ip(ip) => format!("i{ip}"),
        Entity::Subnet(net) => format!("s{net}"),
        Entity::Account(s) => format!("a{:016x}", fnv(s.as_bytes())),
        Entity::User(s) => format!("u{:016x}", fnv(s.as_bytes())),
        Entity::Sender(s) => format!("x{:016x}", fnv(s.as_bytes())),
        Entity::Global => "g".to_owned(),
    };
    format!("sf:{{{entity}}}:{kind}:{:016x}", k.rule)
}

/// The key of a verification reference (hashed: references are provider ids of any
/// length and alphabet).
fn ref_key(reference: &str) -> String {
    format!("sf:{{v{:016x}}}:r", fnv(reference.as_bytes()))
}

/// The hash tag of a key built by [`key`].
fn tag_of(k: &str) -> &str {
    k.split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map_or(k, |(t, _)| t)
}

fn ints(v: &Value) -> Result<Vec<i64>, StoreError> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::Int(i) => Ok(*i),
                other => Err(StoreError::Unavailable(format!(
                    "unexpected script reply {other:?}"
                ))),
            })
            .collect(),
        other => Err(StoreError::Unavailable(format!(
            "unexpected script reply {other:?}"
        ))),
    }
}

fn parse_flag(b: &[u8]) -> Option<Flag> {
    let s = std::str::from_utf8(b).ok()?;
    let mut parts = s.splitn(3, ' ');
    let until = Timestamp::from_nanos(parts.next()?.parse().ok()?);
    let level = parts.next()?.parse().ok()?;
    let label = parts.next()?.to_owned();
    Some(Flag {
        until,
        level,
        label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phone::Country;

    #[test]
    fn keys_carry_one_hash_tag_per_entity() {
        let n = LimitKey {
            rule: 7,
            entity: Entity::Number(447_400_123_456),
        };
        assert_eq!(key(&n, 't'), "sf:{n447400123456}:t:0000000000000007");
        assert_eq!(tag_of(&key(&n, 'w')), "n447400123456");
        let c = LimitKey {
            rule: 1,
            entity: Entity::Country(Country::parse("gb").unwrap()),
        };
        assert_eq!(tag_of(&key(&c, 't')), "cGB");
        // Free-text ids are hashed, never stored in the clear.
        let u = LimitKey {
            rule: 1,
            entity: Entity::User("alice@example.com"),
        };
        assert!(!key(&u, 't').contains("alice"));
    }

    #[test]
    fn flags_round_trip() {
        let f = parse_flag(b"1700000000000000000 3 prefix-velocity prefix +4474001").unwrap();
        assert_eq!(f.level, 3);
        assert_eq!(f.label, "prefix-velocity prefix +4474001");
        assert!(parse_flag(b"garbage").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_failures_and_half_opens_after_cooldown() {
        let b = Breaker {
            threshold: 3,
            cooldown: Duration::from_secs(1),
            state: Mutex::new((0, None)),
        };
        for _ in 0..3 {
            assert!(b.allows());
            b.failure();
        }
        assert!(!b.allows() && b.is_open());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(b.allows(), "half-open after the cooldown: one probe");
        assert!(
            !b.allows(),
            "the others fail at once while the probe is out"
        );
        b.failure();
        assert!(!b.allows(), "one failure while half-open opens it again");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(b.allows());
        b.success();
        b.failure();
        assert!(b.allows(), "closed again after a success");
    }
}
