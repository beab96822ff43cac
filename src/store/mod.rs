//! Rate-limit and heuristic state, behind one interface.
//!
//! [`Store`] is an enum rather than a trait object so that the in-process store (the
//! embedded default) costs no allocation or dynamic dispatch on the hot path. Every
//! operation takes the time from the caller (memory) or the server (Redis), commits
//! all-or-nothing, and never holds a lock across an `.await`.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ipnet::IpNet;

use crate::clock::Timestamp;
use crate::decide::gcra;
use crate::phone::Country;

pub mod memory;
pub mod redis;
pub mod window;

pub use window::Reading;

/// What a limit is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entity<'a> {
    /// One destination number (E.164 digits).
    Number(u64),
    /// A destination prefix (E.164 digits without the last N).
    Prefix(u64),
    /// A destination country.
    Country(Country),
    /// The end user's IP.
    Ip(IpAddr),
    /// The end user's subnet.
    Subnet(IpNet),
    /// The provider account.
    Account(&'a str),
    /// The end user's id.
    User(&'a str),
    /// The sender.
    Sender(&'a str),
    /// Everything.
    Global,
}

/// A key in the store: which rule, and what it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LimitKey<'a> {
    /// The rule's stable id (survives reloads while name and key kind stay the same).
    pub rule: u64,
    /// The counted entity.
    pub entity: Entity<'a>,
}

/// One GCRA check of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraCheck<'a> {
    /// The key.
    pub key: LimitKey<'a>,
    /// Emission interval: period / rate.
    pub interval: Duration,
    /// How many requests may pass at once.
    pub burst: u32,
    /// How many tokens this request takes (recipients, for request-wide keys).
    pub cost: u32,
    /// Refuse, rather than leave untracked, a new key past the key ceiling.
    pub on_overflow_closed: bool,
}

/// The outcome of a set of GCRA checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcraOutcome {
    /// Every check passed (and was committed if asked).
    Allowed {
        /// Remaining and reset per check, in order.
        states: Vec<gcra::State>,
    },
    /// At least one check failed; nothing was committed.
    Refused {
        /// The check that needs the longest wait.
        index: usize,
        /// How long until every check would pass.
        retry_after: Duration,
        /// Refused because the key ceiling is reached (`on_overflow = "closed"`).
        capacity: bool,
    },
}

/// One sliding-window operation of a heuristic (see [`window::Window::apply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowOp<'a> {
    /// The key (rule id + entity).
    pub key: LimitKey<'a>,
    /// The window length.
    pub window: Duration,
    /// What this request adds to the sum (1 for a count, micro-units for money).
    pub amount: u64,
    /// A member for the distinct count (a number's digits, a country code …).
    pub member: Option<u64>,
    /// Most distinct members kept (memory bound); `distinct` saturates just above it.
    pub cap: u16,
    /// Count other members within this distance of `member`.
    pub near: Option<u64>,
}

/// The label of a trust mark ("this number verified recently"); every other flag is an
/// auto-block or its offence count.
pub const TRUST_LABEL: &str = "verified";

/// A temporary mark on a key: an auto-block, or "this number verified recently".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// When it stops applying.
    pub until: Timestamp,
    /// Offences so far (auto-blocks double their period with each).
    pub level: u32,
    /// What it is about, for `GET /v1/blocks` (e.g. `prefix-velocity prefix +4474001`).
    pub label: String,
}

/// Why the store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer in time.
    #[error("state store timed out")]
    Timeout,
    /// The store is unreachable or answered with an error.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
}

/// Counters a store keeps about itself, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Keys tracked now.
    pub keys: u64,
    /// Idle keys dropped so far.
    pub evictions: u64,
    /// New keys not tracked (or refused) because the ceiling was reached.
    pub rejected: u64,
    /// Calls to a shared store that timed out.
    pub timeouts: u64,
    /// Calls to a shared store that failed otherwise (unreachable, error reply).
    pub failures: u64,
    /// Refusals answered from the local cache of refused keys, without a round trip.
    pub cache_hits: u64,
}

/// A store write under way that must not be lost with the request that started it (a
/// give-back, [`Store::give_back`]; a verification's record; a refusal's auto-blocks):
/// awaiting it yields its result, and dropping it unawaited does not stop it. On Redis it
/// runs in a task of its own with owned data; in memory it is done before it is returned
/// (no task, no allocation).
#[derive(Debug)]
#[must_use = "a detached write runs anyway; await it for its result"]
pub enum Detached {
    /// Done already (`None` once its result is taken).
    Done(Option<Result<(), StoreError>>),
    /// Running in a task of its own (Redis).
    Running(tokio::task::JoinHandle<Result<(), StoreError>>),
}

impl Detached {
    /// A write on the in-process store, done before this returns: its calls complete in
    /// the poll that makes them (an error if one ever paused).
    pub fn now(work: impl Future<Output = Result<(), StoreError>>) -> Detached {
        use futures_util::FutureExt;
        let paused = || {
            Err(StoreError::Unavailable(
                "the in-process store paused".into(),
            ))
        };
        Detached::Done(Some(work.now_or_never().unwrap_or_else(paused)))
    }

    /// Runs `work` in a task of its own on `r`'s tracker ([`Store::settle`]), started now
    /// (an error if there is no runtime to run it on: the process is going down).
    pub fn spawn(
        r: &redis::RedisStore,
        work: impl Future<Output = Result<(), StoreError>> + Send + 'static,
    ) -> Detached {
        match r.spawn_tracked(work) {
            Some(task) => Detached::Running(task),
            None => Detached::Done(Some(Err(StoreError::Unavailable(
                "no runtime to write on".into(),
            )))),
        }
    }
}

impl Future for Detached {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            Detached::Done(result) => Poll::Ready(result.take().unwrap_or(Ok(()))),
            Detached::Running(task) => Pin::new(task).poll(cx).map(|joined| {
                joined.unwrap_or_else(|e| {
                    Err(StoreError::Unavailable(format!(
                        "detached store task failed: {e}"
                    )))
                })
            }),
        }
    }
}

/// Reservations a request holds on the shared store ([`Store::reserve`]) until it
/// settles them: if dropped unsettled (the request was dropped), they are given back
/// from a task of their own. Empty, and free, on the in-process store.
#[derive(Debug, Default)]
#[must_use = "an unsettled reservation is given back when dropped"]
pub struct Held(Option<(Arc<redis::RedisStore>, Vec<WindowOp<'static>>)>);

impl Held {
    /// The request has settled the reservations: they stand (it goes on to be sent) or it
    /// gives them back itself.
    pub fn settle(mut self) {
        self.0 = None;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some((r, ops)) = self.0.take() else {
            return;
        };
        // No runtime: the process is going down, and the reservations with it.
        let store = Arc::clone(&r);
        let _ = store.spawn_tracked(async move {
            if let Err(e) = r.give_back(&ops).await {
                tracing::warn!("could not give back an abandoned request's reservation: {e}");
            }
        });
    }
}

/// The state store.
#[derive(Debug)]
pub enum Store {
    /// In-process, bounded.
    Memory(memory::MemoryStore),
    /// Redis or Valkey, shared by several instances.
    Redis(Arc<redis::RedisStore>),
}

impl Store {
    /// The label for metrics: `memory` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }

    /// Whether the store answers now: a round trip to Redis (for `/readyz`).
    pub async fn ping(&self) -> bool {
        match self {
            Store::Memory(_) => true,
            Store::Redis(r) => r.ping().await,
        }
    }

    /// The in-process limiter that rules with `on_store_error = "local"` fall back to
    /// when a shared store fails (`None` for the memory store, which cannot fail).
    pub fn fallback(&self) -> Option<&memory::MemoryStore> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(r) => Some(r.local()),
        }
    }

    /// Runs every check; if all pass, commits them (when `commit`), else commits none.
    pub async fn gcra(
        &self,
        checks: &[GcraCheck<'_>],
        now: Timestamp,
        commit: bool,
    ) -> Result<GcraOutcome, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.gcra(checks, now, commit)),
            Store::Redis(r) => r.gcra(checks, now, commit).await,
        }
    }

    /// Applies window operations (each on its own; no all-or-nothing): reads every window
    /// as if this request were added and, when `commit`, adds it.
    pub async fn windows(
        &self,
        ops: &[WindowOp<'_>],
        now: Timestamp,
        commit: bool,
    ) -> Result<Vec<Reading>, StoreError> {
        self.windows_each(ops, &vec![commit; ops.len()], now).await
    }

    /// [`Store::windows`] with a commit flag per op, in one store operation (one round
    /// trip on Redis).
    pub async fn windows_each(
        &self,
        ops: &[WindowOp<'_>],
        commit: &[bool],
        now: Timestamp,
    ) -> Result<Vec<Reading>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.windows(ops, now, commit)),
            // Redis windows run on the server's clock, shared by every instance.
            Store::Redis(r) => r.windows(ops, commit).await,
        }
    }

    /// [`Store::windows_each`] for a real request that reserves `held` (some of what
    /// `ops` add: its budget sends). Should the request be dropped (its client hung up)
    /// while the call is out, or before it settles the [`Held`] it gets back, what the
    /// store reserved is given back by itself. A call that failed (a timeout whose script
    /// may or may not have run) holds nothing: giving back what may never have been added
    /// could under-count.
    pub async fn reserve(
        &self,
        ops: &[WindowOp<'static>],
        commit: &[bool],
        held: &[WindowOp<'static>],
        now: Timestamp,
    ) -> Result<(Vec<Reading>, Held), StoreError> {
        match self {
            // Nothing to cancel: the call completes in the poll that makes it.
            Store::Memory(m) => Ok((m.windows(ops, now, commit), Held(None))),
            Store::Redis(r) if held.is_empty() => Ok((r.windows(ops, commit).await?, Held(None))),
            Store::Redis(r) => {
                // The call runs in its own task, which hands the reservation over with the
                // readings: a reply that finds the request gone (the message dropped with
                // the channel) drops its `Held`, which gives back.
                let (tx, rx) = tokio::sync::oneshot::channel();
                let (store, ops, commit, held) =
                    (Arc::clone(r), ops.to_vec(), commit.to_vec(), held.to_vec());
                let _ = r.spawn_tracked(async move {
                    let reply = store.windows(&ops, &commit).await;
                    let _ = tx.send(reply.map(|reads| (reads, Held(Some((store, held))))));
                });
                rx.await.unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(
                        "the window call's task ended".into(),
                    ))
                })
            }
        }
    }

    /// Waits, at most `within`, until the shared store's writes that run in tasks of their
    /// own have ended ([`redis::RedisStore::settle`]); at once in memory, where every
    /// write is done before it returns. `false` if some were still running.
    pub async fn settle(&self, within: Duration) -> bool {
        match self {
            Store::Memory(_) => true,
            Store::Redis(r) => r.settle(within).await,
        }
    }

    /// Takes `amount` back off each window (a refused request's budget reservation, a
    /// send the provider did not take). It starts at once and runs to its end even if
    /// what is returned is dropped unawaited: on Redis, in a task of its own, so a client
    /// that hangs up meanwhile cannot leave the reservation standing; in memory, before
    /// this returns (no task, no allocation).
    pub fn give_back(&self, ops: &[WindowOp<'static>], now: Timestamp) -> Detached {
        if ops.is_empty() {
            return Detached::Done(Some(Ok(())));
        }
        match self {
            Store::Memory(m) => {
                m.give_back(ops, now);
                Detached::Done(Some(Ok(())))
            }
            Store::Redis(r) => {
                let (store, ops) = (Arc::clone(r), ops.to_vec());
                Detached::spawn(r, async move { store.give_back(&ops).await })
            }
        }
    }

    /// Shares a verification reference → number with other instances (a no-op in
    /// memory, where the proxy's own map is the only one). It starts at once and runs to
    /// its end even if what is returned is dropped unawaited ([`Detached`]): a client that
    /// hangs up meanwhile cannot keep a check on another instance from being matched.
    pub fn put_ref(
        &self,
        reference: &str,
        dest: &crate::phone::Destination,
        ttl: Duration,
    ) -> Detached {
        match self {
            Store::Memory(_) => Detached::Done(Some(Ok(()))),
            Store::Redis(r) => {
                let (store, reference, e164) = (Arc::clone(r), reference.to_owned(), dest.e164());
                Detached::spawn(
                    r,
                    async move { store.put_ref(&reference, &e164, ttl).await },
                )
            }
        }
    }

    /// A reference another instance shared (`None` in memory).
    pub async fn get_ref(
        &self,
        reference: &str,
    ) -> Result<Option<crate::phone::Destination>, StoreError> {
        match self {
            Store::Memory(_) => Ok(None),
            Store::Redis(r) => Ok(r.get_ref(reference).await?.and_then(|n| {
                crate::phone::normalize(&n, crate::phone::NumberFormat::E164, None).ok()
            })),
        }
    }

    /// The live flags of these keys (`None` where there is none or it expired).
    pub async fn flags(
        &self,
        keys: &[LimitKey<'_>],
        now: Timestamp,
    ) -> Result<Vec<Option<Flag>>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.flags(keys, now)),
            Store::Redis(r) => r.flags(keys, now).await,
        }
    }

    /// Sets (or replaces) a flag; it expires by itself at `flag.until`.
    pub async fn set_flag(
        &self,
        key: LimitKey<'_>,
        flag: Flag,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.set_flag(key, flag, now);
                Ok(())
            }
            Store::Redis(r) => r.set_flag(key, flag, now).await,
        }
    }

    /// Sets a flag unless a live one is on the key already, in one atomic step: `false`
    /// (nothing written) when one is. Two requests that both found no auto-block and both
    /// tripped its heuristic are one offence, not two.
    pub async fn add_flag(
        &self,
        key: LimitKey<'_>,
        flag: Flag,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.add_flag(key, flag, now)),
            Store::Redis(r) => r.add_flag(key, flag, now).await,
        }
    }

    /// Every live flag, sorted by label.
    pub async fn list_flags(&self, now: Timestamp) -> Result<Vec<Flag>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.list_flags(now)),
            Store::Redis(r) => r.list_flags(now).await,
        }
    }

    /// Removes the flags with this label; returns how many.
    pub async fn remove_flags(&self, label: &str) -> Result<usize, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.remove_flags(label)),
            Store::Redis(r) => r.remove_flags(label).await,
        }
    }

    /// Drops idle keys; returns how many.
    pub fn sweep(&self, now: Timestamp) -> usize {
        match self {
            Store::Memory(m) => m.sweep(now),
            Store::Redis(r) => r.sweep(now),
        }
    }

    /// Refreshes what [`Store::stats`] reports that needs a round trip (Redis' key count),
    /// and prunes Redis' flag index of flags expired by `now`.
    pub async fn refresh(&self, now: Timestamp) {
        if let Store::Redis(r) = self {
            r.refresh(now).await;
        }
    }

    /// Counters for metrics.
    pub fn stats(&self) -> StoreStats {
        match self {
            Store::Memory(m) => m.stats(),
            Store::Redis(r) => r.stats(),
        }
    }
}
