//! The proxy: the shared application state, the listeners, and a running [`Instance`].
//!
//! [`Instance::start`] is what `smsfence run` and every integration test call: it binds
//! the proxy and admin listeners (port 0 works), loads the rules, starts the background
//! tasks (store sweeper, rule watcher) and returns the bound addresses. Shutdown stops
//! accepting, lets in-flight requests finish within the drain timeout, and returns.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderName};
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::audit::{Audit, AuditEvent};
use crate::clock::Clock;
use crate::config::{Config, ConfigError, Route, StoreKind};
use crate::decide::{Decision, Hit, Recipient, Verdict};
use crate::metrics::{Metrics, Series};
use crate::phone::{Country, Destination};
use crate::rules::reload::{Rules, Source};
use crate::rules::RuleError;
use crate::store::{memory::MemoryStore, Store};
use prometheus::IntCounter;

pub mod handler;
pub mod refs;
pub mod route;
pub mod server;
pub mod tls;
pub mod upstream;

/// Who may set identity headers, and which.
#[derive(Debug, Clone)]
pub struct Trusted {
    /// Trusted TCP peers.
    pub peers: Vec<IpNet>,
    /// The end-user IP header.
    pub ip_header: Option<HeaderName>,
    /// The end-user id header.
    pub user_header: Option<HeaderName>,
}

/// The decision families' series (see [`Series`]) under packed keys: see
/// [`App::observe_decision`].
#[derive(Debug, Default)]
struct DecisionSeries {
    /// The entry keeps the rule name alive (its address is part of the key).
    decisions: Series<(Option<Arc<str>>, IntCounter)>,
    recipients: Series<IntCounter>,
    cost: Series<prometheus::Counter>,
}

/// A country's letters as 16 bits (0 for none).
fn country_bits(c: Option<Country>) -> u128 {
    c.map_or(0, |c| {
        let b = c.as_str().as_bytes();
        u128::from(b[0]) << 8 | u128::from(b[1])
    })
}

/// `allow`, `throttle`, `block` as 2 bits.
fn verdict_bits(verdict: &str) -> u128 {
    match verdict {
        "allow" => 0,
        "throttle" => 1,
        _ => 2,
    }
}

/// The address of a static label string: a key for it that needs no hashing of its text.
fn static_bits(s: &'static str) -> u128 {
    s.as_ptr() as usize as u128
}

/// A country as a label value: borrowed, no String per request.
fn country_label(c: &Option<Country>) -> &str {
    c.as_ref().map_or("unknown", Country::as_str)
}

/// Counts a decision in the decision, recipient, cost and degraded families. Recipients
/// are counted only for a request that sends a code (`sends`): a code check sends
/// nothing, and `smsfence_recipients_total` is the denominator of the conversion rate.
fn count_decision(
    m: &Metrics,
    series: &DecisionSeries,
    decision: &Decision,
    recipients: &[Recipient],
    sends: bool,
) {
    let country_of = |i: Option<usize>| {
        recipients
            .get(i.unwrap_or(0))
            .and_then(|r| r.as_ref().ok())
            .and_then(Destination::country)
    };
    let decided = |verdict: &'static str, hit: Option<&Hit>, mode: &'static str| {
        let country = country_of(hit.and_then(|h| h.recipient));
        // The rule name is keyed by its address: the entry keeps the name alive, so
        // no other name can take that address while the entry exists.
        let (reason_bits, rule_bits) = hit.map_or((0, 0), |h| {
            (
                h.reason as u128 + 1,
                Arc::as_ptr(&h.rule).cast::<u8>() as usize as u128,
            )
        });
        let key = country_bits(country)
            | verdict_bits(verdict) << 16
            | u128::from(mode == "shadow") << 18
            | reason_bits << 19
            | rule_bits << 64;
        let resolve = || {
            let (reason, rule) = hit.map_or(("none", "none"), |h| (h.reason.as_str(), &*h.rule));
            let labels = [verdict, reason, rule, country_label(&country), mode];
            (
                hit.map(|h| Arc::clone(&h.rule)),
                m.decisions.with_label_values(&labels),
            )
        };
        series.decisions.with(key, resolve, |(_, c)| c.inc());
    };
    decided(decision.verdict.as_str(), decision.verdict.hit(), "enforce");
    for h in &decision.shadow {
        let would = if h.reason == crate::decide::Reason::RateLimited {
            "throttle"
        } else {
            "block"
        };
        decided(would, Some(h), "shadow");
    }
    let verdict = decision.verdict.as_str();
    for r in recipients.iter().filter(|_| sends) {
        let (country, kind) = match r {
            Ok(d) => (d.country(), d.number_type().as_str()),
            Err(_) => (None, "invalid"),
        };
        let resolve = || {
            m.recipients
                .with_label_values(&[country_label(&country), kind, verdict])
        };
        let key = country_bits(country) | verdict_bits(verdict) << 16 | static_bits(kind) << 18;
        series.recipients.with(key, resolve, IntCounter::inc);
    }
    if let Some(cost) = decision.cost {
        let allowed = matches!(decision.verdict, Verdict::Allow);
        let outcome = if allowed { "allowed" } else { "refused" };
        let country = country_of(None);
        let resolve = || {
            m.estimated_cost
                .with_label_values(&[country_label(&country), outcome])
        };
        let key = country_bits(country) | u128::from(allowed) << 16;
        series.cost.with(key, resolve, |c| c.inc_by(cost));
    }
    if decision.degraded {
        let fallback = if decision.local {
            "local"
        } else if matches!(decision.verdict, Verdict::Allow) {
            "open"
        } else {
            "closed"
        };
        m.degraded_decisions.with_label_values(&[fallback]).inc();
    }
}

/// Everything a request needs, shared by all connections.
pub struct App {
    /// The routes, in config order.
    pub routes: Vec<Route>,
    /// The compiled route table.
    pub table: route::RouteTable,
    /// The active rules.
    pub rules: Arc<Rules>,
    /// The state store.
    pub store: Arc<Store>,
    /// The clock decisions use.
    pub clock: Arc<dyn Clock>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The upstream client.
    pub upstream: upstream::Upstream,
    /// Identity headers and who may set them.
    pub trusted: Trusted,
    /// Largest request body.
    pub max_body: usize,
    /// Time allowed to read a request body.
    pub read_timeout: Duration,
    /// Verification id → number.
    pub refs: refs::VerifyRefs,
    /// The audit log.
    pub audit: Audit,
    /// Per route (same index as `routes`): request metric series, resolved once.
    pub route_series: Vec<crate::metrics::RouteSeries>,
    /// Decision metric series, resolved once per label set.
    decision_series: DecisionSeries,
    /// Upstream latency series by (provider, status class), resolved once.
    upstream_series: Series<prometheus::Histogram>,
    /// Shutting down: `/readyz` answers 503 (see [`Instance::stop`]).
    pub draining: std::sync::atomic::AtomicBool,
    /// Request ids.
    next_id: AtomicU64,
    /// A per-process prefix for request ids.
    id_prefix: u32,
    /// The proxy listener's TLS (`server.tls`), reloaded on SIGHUP.
    pub tls: Option<tls::Tls>,
    /// The admin listener's TLS (`admin.tls`), reloaded with it.
    pub admin_tls: Option<tls::Tls>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

impl App {
    /// Reads the listeners' certificates again (SIGHUP, `POST /v1/reload`), each logged:
    /// one that cannot be used keeps serving the certificate in use. Per listener with
    /// TLS (`"server"`, `"admin"`): `Ok`, or why not.
    pub fn reload_tls(&self) -> Vec<(&'static str, Result<(), tls::TlsError>)> {
        [("server", &self.tls), ("admin", &self.admin_tls)]
            .into_iter()
            .filter_map(|(listener, tls)| {
                let result = tls.as_ref()?.reload();
                match &result {
                    Ok(()) => tracing::info!(listener, "TLS certificate reloaded"),
                    Err(e) => tracing::error!(listener, "{e}; the certificate in use stays"),
                }
                Some((listener, result))
            })
            .collect()
    }

    /// The end user's IP and id, believed only from trusted peers.
    pub fn identity(&self, peer: IpAddr, headers: &HeaderMap) -> (Option<IpAddr>, Option<String>) {
        let peer = canonical(peer);
        if !self.trusted.peers.iter().any(|n| n.contains(&peer)) {
            return (None, None);
        }
        let ip = self.trusted.ip_header.as_ref().and_then(|h| {
            // Read a list from the right, skipping trusted proxies: the first untrusted
            // address is the client.
            let values: Vec<&str> = headers
                .get_all(h)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .collect();
            let parsed: Vec<IpAddr> = values
                .iter()
                .rev()
                .filter_map(|s| parse_ip(s.trim()))
                .collect();
            parsed
                .iter()
                .copied()
                .find(|ip| !self.trusted.peers.iter().any(|n| n.contains(ip)))
                .or_else(|| parsed.last().copied())
        });
        let user = self
            .trusted
            .user_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|u| !u.is_empty() && u.len() <= 256)
            .map(str::to_owned);
        (ip, user)
    }

    /// A new request id.
    pub fn next_request_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        request_id(self.id_prefix, n)
    }

    /// Counts a decision in the metrics (`sends`: the request sends a code, not a check).
    pub fn observe_decision(&self, decision: &Decision, recipients: &[Recipient], sends: bool) {
        count_decision(
            &self.metrics,
            &self.decision_series,
            decision,
            recipients,
            sends,
        );
    }

    /// Observes the upstream exchange's latency under (provider, status class).
    pub fn observe_upstream(&self, provider: &'static str, status: u16, seconds: f64) {
        let class = crate::metrics::status_class(status);
        let resolve = || {
            self.metrics
                .upstream_duration
                .with_label_values(&[provider, class])
        };
        let key = static_bits(provider) | static_bits(class) << 64;
        self.upstream_series
            .with(key, resolve, |h| h.observe(seconds));
    }

    /// Records a verification outcome for a number: the heuristics' state (conversion
    /// rates, country baselines, trust), metrics and the audit log.
    pub async fn record_conversion(
        &self,
        dest: &Destination,
        source: &'static str,
        verified: bool,
    ) {
        let outcome = if verified { "verified" } else { "failed" };
        // The record is under way before the first pause and runs to its end by itself
        // (`record_verified_detached`); it is counted and audited before it is awaited, so
        // a client that hangs up meanwhile (dropping this) loses none of it.
        let recording = verified.then(|| {
            crate::decide::heuristics::record_verified_detached(
                self.rules.snapshot(),
                &self.store,
                *dest,
                self.clock.now(),
            )
        });
        let country = dest
            .country()
            .map_or_else(|| "unknown".to_owned(), |c| c.to_string());
        self.metrics
            .conversions
            .with_label_values(&[source, outcome, &country])
            .inc();
        if self.audit.enabled() {
            self.audit.emit(AuditEvent {
                ts: self.clock.now().to_rfc3339(),
                event: outcome,
                provider: "",
                number: Some(self.audit.number(&dest.e164())),
                country: Some(country),
                ..AuditEvent::default()
            });
        }
        if let Some(recording) = recording {
            if let Err(e) = recording.await {
                self.metrics
                    .store_errors
                    .with_label_values(&[self.store.kind(), "conversion"])
                    .inc();
                tracing::warn!("could not record a conversion: {e}");
            }
        }
    }
}

/// `sf-{prefix:08x}-{n:x}`, written without the formatting machinery (one per refusal).
fn request_id(prefix: u32, n: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let nibble = |v: u64, i: u32| char::from(HEX[((v >> (4 * i)) & 15) as usize]);
    let mut out = String::with_capacity(3 + 8 + 1 + 16);
    out.push_str("sf-");
    for i in (0..8).rev() {
        out.push(nibble(u64::from(prefix), i));
    }
    out.push('-');
    for i in (0..(u64::BITS - n.leading_zeros()).div_ceil(4).max(1)).rev() {
        out.push(nibble(n, i));
    }
    out
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .map(canonical)
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why an instance could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The rules have mistakes.
    #[error("the rules have {} mistake(s):\n{}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Rules(Vec<RuleError>),
    /// A listener could not be bound.
    #[error("binding {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why (in the message, so not a `source` too: it would be printed twice).
        error: std::io::Error,
    },
    /// The audit log could not be opened.
    #[error("opening the audit log {path}: {error}")]
    Audit {
        /// `audit.output`.
        path: String,
        /// Why (in the message, so not a `source` too: it would be printed twice).
        error: std::io::Error,
    },
    /// A proxy worker's thread or event loop could not be started.
    #[error("starting a proxy worker: {0}")]
    Worker(std::io::Error),
    /// The listener's TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The shared store is unreachable and `store.require_store` is set.
    #[error("connecting to the state store (store.require_store = true): {0}")]
    Store(crate::store::StoreError),
}

/// What to start.
pub struct Options {
    /// The service config.
    pub config: Config,
    /// Where rules come from.
    pub rules: Source,
    /// Watch the rules directory for changes.
    pub watch_rules: bool,
    /// The clock decisions use.
    pub clock: Arc<dyn Clock>,
}

/// A running smsfence.
pub struct Instance {
    /// Where the proxy listens.
    pub proxy_addr: SocketAddr,
    /// Where the admin endpoints listen.
    pub admin_addr: SocketAddr,
    /// The shared state (for tests and the CLI).
    pub app: Arc<App>,
    shutdown: watch::Sender<bool>,
    shutdown_delay: Duration,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Lets the proxy workers' event loops end, once every worker has settled its store
    /// writes (see [`Instance::wait`]).
    release: watch::Sender<bool>,
    _watcher: Option<crate::rules::reload::Watch>,
}

impl Instance {
    /// Validates the config, loads the rules, binds both listeners and starts serving.
    pub async fn start(opts: Options) -> Result<Instance, StartError> {
        let routes = opts.config.validate()?;
        let load = |t: &Option<crate::config::TlsConfig>| {
            t.as_ref()
                .map(|t| tls::Tls::load(&t.cert, &t.key))
                .transpose()
        };
        let tls = load(&opts.config.server.tls)?;
        let admin_tls = load(&opts.config.admin.tls)?;
        let metrics = Arc::new(Metrics::new());
        let rules = Arc::new(
            Rules::load(opts.rules.clone(), Arc::clone(&metrics)).map_err(StartError::Rules)?,
        );
        let cfg = &opts.config;
        let store = Arc::new(match cfg.store.kind {
            StoreKind::Memory => Store::Memory(MemoryStore::new(cfg.store.max_keys)),
            StoreKind::Redis => Store::Redis(
                crate::store::redis::RedisStore::connect(&cfg.store)
                    .await
                    .map_err(StartError::Store)?,
            ),
        });
        // The store's series exist at 0 from the start, so that rate() sees its first
        // errors; only its own (a dashboard would show a store not in use at 0).
        metrics.track_store(store.kind());
        let audit =
            Audit::start(&cfg.audit, Arc::clone(&metrics)).map_err(|error| StartError::Audit {
                path: cfg.audit.output.clone().unwrap_or_default(),
                error,
            })?;
        let header = |h: &Option<String>| {
            h.as_ref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok())
        };
        let route_series = routes
            .iter()
            .map(|_| crate::metrics::RouteSeries::new(handler::Outcome::ALL.len()))
            .collect();
        let app = Arc::new(App {
            table: route::RouteTable::new(&routes),
            route_series,
            decision_series: DecisionSeries::default(),
            upstream_series: Series::default(),
            routes,
            rules: Arc::clone(&rules),
            store: Arc::clone(&store),
            clock: Arc::clone(&opts.clock),
            metrics: Arc::clone(&metrics),
            upstream: upstream::Upstream::new(
                &cfg.upstream,
                cfg.server.workers(),
                metrics.upstream_errors.clone(),
            ),
            trusted: Trusted {
                peers: (cfg.trusted.peers.iter().copied())
                    .map(crate::rules::ipv4_mapped_net)
                    .collect(),
                ip_header: header(&cfg.trusted.ip_header),
                user_header: header(&cfg.trusted.user_header),
            },
            max_body: cfg.server.max_body_bytes,
            read_timeout: cfg.server.request_read_timeout,
            refs: refs::VerifyRefs::new(cfg.store.max_verify_refs, cfg.store.verify_ref_ttl),
            audit,
            draining: std::sync::atomic::AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            id_prefix: std::process::id(),
            tls,
            admin_tls,
        });

        let bind_error = |addr: SocketAddr| move |error| StartError::Bind { addr, error };
        // Bound by tokio (SO_REUSEADDR, a backlog of 1024), then handed to the workers as a
        // std socket that each registers with its own event loop.
        let proxy_listener = TcpListener::bind(cfg.server.listen)
            .await
            .and_then(TcpListener::into_std)
            .map_err(bind_error(cfg.server.listen))?;
        let admin_listener = TcpListener::bind(cfg.admin.listen)
            .await
            .map_err(bind_error(cfg.admin.listen))?;
        let proxy_addr = proxy_listener
            .local_addr()
            .map_err(bind_error(cfg.server.listen))?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(bind_error(cfg.admin.listen))?;

        let (shutdown, rx) = watch::channel(false);
        let (release, released) = watch::channel(false);
        let drain = cfg.server.drain_timeout;
        let mut tasks = Vec::new();
        // Thread per core, as nginx's workers: every worker accepts from the same
        // listening socket and serves its connections start to end on its own
        // single-threaded event loop, with its own upstream pool. Worker 0 runs here.
        for index in 0..cfg.server.workers() {
            let listener = proxy_listener
                .try_clone()
                .map_err(bind_error(cfg.server.listen))?;
            let worker = proxy_worker(
                Arc::clone(&app),
                listener,
                rx.clone(),
                drain,
                cfg.server.request_read_timeout,
            );
            if index == 0 {
                tasks.push(tokio::spawn(worker));
                continue;
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(StartError::Worker)?;
            let (done, finished) = tokio::sync::oneshot::channel::<()>();
            let (up, started) = tokio::sync::oneshot::channel::<()>();
            let store = Arc::clone(&app.store);
            let mut released = released.clone();
            std::thread::Builder::new()
                .name(format!("sf-worker-{index}"))
                .spawn(move || {
                    upstream::set_worker(index);
                    let _ = up.send(());
                    runtime.block_on(worker);
                    // Store writes this worker's requests left running (a give-back for a
                    // client that hung up) end before its event loop does.
                    runtime.block_on(settle(&store));
                    let _ = done.send(());
                    // The event loop keeps running until every worker has settled: shared
                    // Redis connections live on the event loop that made them, and the
                    // other workers' writes may go through them.
                    runtime.block_on(async {
                        let _ = released.wait_for(|r| *r).await;
                    });
                    // Tasks the worker spawned (upstream connections) end with it.
                    runtime.shutdown_timeout(Duration::from_secs(1));
                })
                .map_err(StartError::Worker)?;
            // Started means every worker is running (and named) when `start` returns.
            let _ = started.await;
            tasks.push(tokio::spawn(async move {
                let _ = finished.await;
            }));
        }
        {
            let admin = Arc::new(crate::admin::Admin::new(
                Arc::clone(&app),
                cfg.admin.token.clone(),
                cfg.store.require_store,
            ));
            let rx = rx.clone();
            let timeout = cfg.server.request_read_timeout;
            let metrics = Arc::clone(&metrics);
            let tls = app.admin_tls.as_ref().map(|t| t.acceptor().clone());
            tasks.push(tokio::spawn(async move {
                server::serve(
                    admin_listener,
                    rx,
                    drain,
                    timeout,
                    metrics,
                    tls,
                    move |_peer, req| crate::admin::handle(Arc::clone(&admin), req),
                )
                .await;
            }));
        }
        tasks.push(tokio::spawn(sweeper(
            Arc::clone(&app),
            cfg.store.sweep_interval,
            rx,
        )));

        let watcher = match (&opts.rules, opts.watch_rules) {
            (Source::Dir(dir), true) => {
                match crate::rules::reload::watch(
                    Arc::clone(&rules),
                    dir,
                    Duration::from_millis(300),
                ) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::warn!("cannot watch {} for changes ({e}); reload with SIGHUP or POST /v1/reload", dir.display());
                        None
                    }
                }
            }
            _ => None,
        };

        Ok(Instance {
            proxy_addr,
            admin_addr,
            app,
            shutdown,
            shutdown_delay: cfg.server.shutdown_delay,
            tasks,
            release,
            _watcher: watcher,
        })
    }

    /// Stops accepting connections; in-flight requests may finish within the drain timeout.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// The way out on SIGTERM: `/readyz` answers 503 at once, requests are still served
    /// for `server.shutdown_delay` (load balancers see the 503 and stop sending), then
    /// [`Instance::shutdown`].
    pub async fn stop(&self) {
        self.app
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if !self.shutdown_delay.is_zero() {
            tracing::info!(delay = ?self.shutdown_delay, "shutting down: /readyz answers 503, still serving until the delay is over");
            tokio::time::sleep(self.shutdown_delay).await;
        }
        self.shutdown();
    }

    /// Waits until both listeners have drained and every task has stopped, then until the
    /// store writes those requests left running have ended and their audit events are
    /// written (at most five seconds each).
    pub async fn wait(self) {
        // The listeners, the sweeper, and each proxy worker's having settled its writes.
        for t in self.tasks {
            let _ = t.await;
        }
        settle(&self.app.store).await;
        let _ = self.release.send(true);
        if !self.app.audit.flush(Duration::from_secs(5)).await {
            tracing::warn!("the audit log's last events could not be written within 5 s");
        }
    }
}

/// How long shutdown waits for store writes still running in tasks of their own.
const SETTLE: Duration = Duration::from_secs(5);

/// Waits for the store writes still running on this event loop, at most [`SETTLE`].
async fn settle(store: &Store) {
    if !store.settle(SETTLE).await {
        tracing::warn!("store writes still under way after {SETTLE:?} were cut off by shutdown");
    }
}

/// One proxy worker: serves connections accepted from `listener` until shutdown.
async fn proxy_worker(
    app: Arc<App>,
    listener: std::net::TcpListener,
    stop: watch::Receiver<bool>,
    drain: Duration,
    read_timeout: Duration,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("a proxy worker cannot use the listening socket: {e}");
            return;
        }
    };
    let metrics = Arc::clone(&app.metrics);
    let tls = app.tls.as_ref().map(|t| t.acceptor().clone());
    server::serve(
        listener,
        stop,
        drain,
        read_timeout,
        metrics,
        tls,
        move |peer, req| handler::handle(Arc::clone(&app), peer, req),
    )
    .await;
}

/// Sweeps idle keys and idle upstream connections, and publishes store gauges, until
/// shutdown.
async fn sweeper(app: Arc<App>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    let kind = app.store.kind();
    let mut last = app.store.stats();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        // Off the event loop: with a million keys a sweep takes milliseconds (≈ 4 ms for
        // 1M limit keys here, ≈ 18 ms when it drops them all), and this runtime serves
        // requests too.
        let swept = Arc::clone(&app);
        let now = app.clock.now();
        let _ = tokio::task::spawn_blocking(move || swept.store.sweep(now)).await;
        app.upstream.prune_idle();
        app.store.refresh(now).await;
        let s = app.store.stats();
        let m = &app.metrics;
        m.store_keys
            .with_label_values(&[kind])
            .set(i64::try_from(s.keys).unwrap_or(i64::MAX));
        m.store_evictions
            .with_label_values(&[kind])
            .inc_by(s.evictions.saturating_sub(last.evictions));
        m.store_rejected
            .with_label_values(&[kind])
            .inc_by(s.rejected.saturating_sub(last.rejected));
        m.store_errors
            .with_label_values(&[kind, "timeout"])
            .inc_by(s.timeouts.saturating_sub(last.timeouts));
        m.store_errors
            .with_label_values(&[kind, "unavailable"])
            .inc_by(s.failures.saturating_sub(last.failures));
        m.store_cache_hits
            .with_label_values(&[kind])
            .inc_by(s.cache_hits.saturating_sub(last.cache_hits));
        last = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Reason;
    use crate::phone::NumberFormat;

    fn hit(reason: Reason, rule: &str, recipient: Option<usize>) -> Hit {
        Hit {
            reason,
            rule: Arc::from(rule),
            recipient,
        }
    }

    #[test]
    fn request_ids_read_as_formatted() {
        let mut values = vec![0, 1, 9, 10, 15, 16, 255, 256, u64::MAX];
        values.extend((0..64).map(|b| 1u64 << b));
        values.extend((1..64).map(|b| (1u64 << b) - 1));
        for prefix in [0, 1, 0xabc, 0xdead_beef, u32::MAX] {
            for &n in &values {
                assert_eq!(request_id(prefix, n), format!("sf-{prefix:08x}-{n:x}"));
            }
        }
    }

    fn decision(verdict: Verdict, shadow: Vec<Hit>, cost: Option<f64>) -> Decision {
        Decision {
            verdict,
            shadow,
            degraded: false,
            local: false,
            rate_limit: None,
            cost,
            counted: Vec::new(),
        }
    }

    /// The cached series count exactly what `with_label_values` would: per label set,
    /// whatever `Arc` carries a rule's name (each reload makes new ones).
    #[test]
    fn decision_series_count_each_label_set() {
        let m = Metrics::new();
        let series = DecisionSeries::default();
        let n = |s: &str| crate::phone::normalize(s, NumberFormat::default(), None);
        let gb = [n("+447400123456")];
        let us_gb = [n("+12015550123"), n("+447400123456")];
        let invalid = [n("+999")];
        for _ in 0..3 {
            let shadow = vec![
                hit(Reason::IpSpread, "ip-spread", Some(0)),
                hit(Reason::RateLimited, "cooldown", Some(1)),
            ];
            count_decision(
                &m,
                &series,
                &decision(Verdict::Allow, shadow, Some(0.5)),
                &us_gb,
                true,
            );
        }
        for rule in ["deny-premium", "deny-premium", "deny-other"] {
            let block = Verdict::Block(hit(Reason::DeniedCountry, rule, Some(0)));
            count_decision(&m, &series, &decision(block, vec![], Some(0.25)), &gb, true);
        }
        let invalid_hit = Verdict::Block(hit(Reason::InvalidNumber, "builtin", Some(0)));
        count_decision(
            &m,
            &series,
            &decision(invalid_hit, vec![], None),
            &invalid,
            true,
        );

        let text = m.render();
        for line in [
            r#"smsfence_decisions_total{country="US",decision="allow",mode="enforce",reason="none",rule="none"} 3"#,
            r#"smsfence_decisions_total{country="US",decision="block",mode="shadow",reason="ip_spread",rule="ip-spread"} 3"#,
            r#"smsfence_decisions_total{country="GB",decision="throttle",mode="shadow",reason="rate_limited",rule="cooldown"} 3"#,
            r#"smsfence_decisions_total{country="GB",decision="block",mode="enforce",reason="denied_country",rule="deny-premium"} 2"#,
            r#"smsfence_decisions_total{country="GB",decision="block",mode="enforce",reason="denied_country",rule="deny-other"} 1"#,
            r#"smsfence_decisions_total{country="unknown",decision="block",mode="enforce",reason="invalid_number",rule="builtin"} 1"#,
            r#"smsfence_recipients_total{country="US",decision="allow",number_type="fixed_line_or_mobile"} 3"#,
            r#"smsfence_recipients_total{country="GB",decision="allow",number_type="mobile"} 3"#,
            r#"smsfence_recipients_total{country="GB",decision="block",number_type="mobile"} 3"#,
            r#"smsfence_recipients_total{country="unknown",decision="block",number_type="invalid"} 1"#,
            r#"smsfence_estimated_cost_total{country="US",outcome="allowed"} 1.5"#,
            r#"smsfence_estimated_cost_total{country="GB",outcome="refused"} 0.75"#,
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        // Nothing else was counted.
        let counted = |family: &str| {
            text.lines()
                .filter(|l| l.starts_with(family))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        assert_eq!(counted("smsfence_decisions_total{"), 13.0);
        assert_eq!(counted("smsfence_recipients_total{"), 10.0);
    }
}
