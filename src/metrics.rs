//! One Prometheus registry, owned (never the global default), with typed families.
//!
//! Label values come only from enums and bounded sets — providers, routes, decisions,
//! reasons, rule names, ISO countries. Never a phone number, an IP, an account id or
//! message text.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds, from 10 µs to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every metric smsfence exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Requests by provider, route and outcome.
    pub requests: IntCounterVec,
    /// Whole-request latency by provider and outcome.
    pub request_duration: HistogramVec,
    /// Decisions by decision, reason, rule, country and mode (enforce/shadow).
    pub decisions: IntCounterVec,
    /// Recipients evaluated by country, number type and decision.
    pub recipients: IntCounterVec,
    /// Upstream latency by provider and status class.
    pub upstream_duration: HistogramVec,
    /// Upstream errors by provider and kind.
    pub upstream_errors: IntCounterVec,
    /// Time smsfence itself adds (everything but the upstream exchange).
    pub overhead: Histogram,
    /// Rule reloads by result.
    pub reloads: IntCounterVec,
    /// The active rules generation.
    pub rules_generation: IntGauge,
    /// 1 when the last rules load succeeded, 0 while the last one failed.
    pub rules_last_reload_successful: IntGauge,
    /// Unix time of the last successful rules load, in seconds.
    pub rules_last_reload_success_timestamp: prometheus::Gauge,
    /// Active rules by kind and mode.
    pub rules_active: IntGaugeVec,
    /// Tracked keys per store.
    pub store_keys: IntGaugeVec,
    /// Idle keys evicted per store.
    pub store_evictions: IntCounterVec,
    /// New keys not tracked because of the ceiling, per store.
    pub store_rejected: IntCounterVec,
    /// Refusals answered from the shared store's local cache of refused keys.
    pub store_cache_hits: IntCounterVec,
    /// Store errors by store and kind.
    pub store_errors: IntCounterVec,
    /// Decisions made without the store (degraded).
    pub degraded_decisions: IntCounterVec,
    /// Conversions recorded by source, outcome and country.
    pub conversions: IntCounterVec,
    /// Estimated cost by country and outcome (allowed / refused).
    pub estimated_cost: prometheus::CounterVec,
    /// Connections and requests that failed before routing (malformed HTTP, timeouts).
    pub connection_errors: IntCounterVec,
    /// Audit events dropped (slow or failed writer).
    pub audit_dropped: IntCounter,
}

impl Metrics {
    /// Registers every family in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c =
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric definition");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric name");
            h
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g =
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric name");
            g
        };
        let requests = counter(
            "smsfence_requests_total",
            "Requests received, by provider, route and outcome.",
            &["provider", "route", "outcome"],
        );
        let request_duration = histogram(
            "smsfence_request_duration_seconds",
            "Whole-request latency as the client sees it, by provider and outcome.",
            &["provider", "outcome"],
        );
        let decisions = counter(
            "smsfence_decisions_total",
            "Decisions by decision (allow/throttle/block), reason, rule, destination country and mode (enforce/shadow).",
            &["decision", "reason", "rule", "country", "mode"],
        );
        let recipients = counter(
            "smsfence_recipients_total",
            "Recipients evaluated, by country, number type and the request's decision.",
            &["country", "number_type", "decision"],
        );
        let upstream_duration = histogram(
            "smsfence_upstream_duration_seconds",
            "Upstream exchange latency (to the response head), by provider and status class.",
            &["provider", "status_class"],
        );
        let upstream_errors = counter(
            "smsfence_upstream_errors_total",
            "Upstream failures by provider and kind (refused, timeout, reset, other).",
            &["provider", "kind"],
        );
        let overhead = Histogram::with_opts(
            HistogramOpts::new(
                "smsfence_proxy_overhead_seconds",
                "Time smsfence adds to a request: everything except the upstream exchange.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(overhead.clone()))
            .expect("unique metric name");
        let reloads = counter(
            "smsfence_rule_reloads_total",
            "Rule reloads by result (success/failure).",
            &["result"],
        );
        let rules_generation = IntGauge::new(
            "smsfence_rules_generation",
            "Generation of the active rule set.",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(rules_generation.clone()))
            .expect("unique metric name");
        let rules_last_reload_successful = IntGauge::new(
            "smsfence_rules_last_reload_successful",
            "Whether the last rules load succeeded (1) or failed and older rules are active (0).",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(rules_last_reload_successful.clone()))
            .expect("unique metric name");
        let rules_last_reload_success_timestamp = prometheus::Gauge::new(
            "smsfence_rules_last_reload_success_timestamp_seconds",
            "Unix time of the last successful rules load.",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(rules_last_reload_success_timestamp.clone()))
            .expect("unique metric name");
        let rules_active = gauge_vec(
            "smsfence_rules_active",
            "Active rules by kind and mode.",
            &["kind", "mode"],
        );
        let store_keys = gauge_vec(
            "smsfence_store_keys",
            "Keys tracked by the state store.",
            &["store"],
        );
        let store_evictions = counter(
            "smsfence_store_evictions_total",
            "Idle keys evicted.",
            &["store"],
        );
        let store_rejected = counter(
            "smsfence_store_keys_rejected_total",
            "New keys not tracked (or refused) because the key ceiling was reached.",
            &["store"],
        );
        let store_cache_hits = counter(
            "smsfence_store_refused_cache_hits_total",
            "Refusals answered from the local cache of refused keys, without a shared-store round trip.",
            &["store"],
        );
        let store_errors = counter(
            "smsfence_store_errors_total",
            "State store errors by kind.",
            &["store", "kind"],
        );
        let degraded_decisions = counter(
            "smsfence_degraded_decisions_total",
            "Decisions made without the state store, by fallback (open/closed/local).",
            &["fallback"],
        );
        let conversions = counter(
            "smsfence_conversions_total",
            "Verification outcomes recorded, by source (verify_check/feedback), outcome and country.",
            &["source", "outcome", "country"],
        );
        let estimated_cost = prometheus::CounterVec::new(
            Opts::new(
                "smsfence_estimated_cost_total",
                "Estimated SMS cost (price table currency) by destination country and outcome (allowed/refused).",
            ),
            &["country", "outcome"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(estimated_cost.clone()))
            .expect("unique metric name");
        let connection_errors = counter(
            "smsfence_connection_errors_total",
            "Client connections that failed (malformed HTTP, read timeouts, resets).",
            &["kind"],
        );
        let audit_dropped = IntCounter::new(
            "smsfence_audit_dropped_total",
            "Audit events that could not be written.",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(audit_dropped.clone()))
            .expect("unique metric name");
        let build = IntGaugeVec::new(
            Opts::new("smsfence_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(build.clone()))
            .expect("unique metric name");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        // Series that only move on trouble exist from the start at 0, so that dashboards
        // and alerts (increase, rate) see a value rather than nothing. The store's are
        // made by [`Metrics::track_store`], for the one store in use.
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        for p in crate::providers::Preset::BUILT_IN
            .iter()
            .map(|p| p.as_str())
            .chain(["generic"])
        {
            for kind in ["refused", "timeout", "reset", "other"] {
                upstream_errors.with_label_values(&[p, kind]);
            }
        }
        for fallback in ["open", "closed", "local"] {
            degraded_decisions.with_label_values(&[fallback]);
        }
        for kind in ["malformed", "timeout", "incomplete", "io", "accept", "tls"] {
            connection_errors.with_label_values(&[kind]);
        }

        Metrics {
            registry,
            requests,
            request_duration,
            decisions,
            recipients,
            upstream_duration,
            upstream_errors,
            overhead,
            reloads,
            rules_generation,
            rules_last_reload_successful,
            rules_last_reload_success_timestamp,
            rules_active,
            store_keys,
            store_evictions,
            store_rejected,
            store_cache_hits,
            store_errors,
            degraded_decisions,
            conversions,
            estimated_cost,
            connection_errors,
            audit_dropped,
        }
    }

    /// Makes the series of the state store `store` (`memory` or `redis`) at 0: its key
    /// gauge, and the counters that only move on trouble.
    pub fn track_store(&self, store: &str) {
        for kind in ["timeout", "unavailable", "conversion", "verify_ref"] {
            self.store_errors.with_label_values(&[store, kind]);
        }
        self.store_keys.with_label_values(&[store]);
        self.store_evictions.with_label_values(&[store]);
        self.store_rejected.with_label_values(&[store]);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// `2xx`, `4xx`, `5xx` …
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The request counter and latency histogram of one (provider, route, outcome), resolved
/// from their families once and then reused: `with_label_values` hashes the labels and
/// takes a lock on every call, which the request path need not pay.
#[derive(Debug, Default)]
pub struct RouteSeries {
    slots: Vec<std::sync::OnceLock<(IntCounter, Histogram)>>,
}

impl RouteSeries {
    /// Room for `outcomes` outcomes; each series is created at its first use, exactly as
    /// `with_label_values` would (so `/metrics` shows the same series).
    pub fn new(outcomes: usize) -> RouteSeries {
        RouteSeries {
            slots: (0..outcomes).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    /// Counts one request and observes its latency (seconds).
    pub fn observe(&self, m: &Metrics, labels: (&str, &str, &str), outcome: usize, seconds: f64) {
        let (provider, route, outcome_label) = labels;
        let resolve = || {
            (
                m.requests
                    .with_label_values(&[provider, route, outcome_label]),
                m.request_duration
                    .with_label_values(&[provider, outcome_label]),
            )
        };
        match self.slots.get(outcome) {
            Some(slot) => {
                let (c, h) = slot.get_or_init(resolve);
                c.inc();
                h.observe(seconds);
            }
            None => {
                let (c, h) = resolve();
                c.inc();
                h.observe(seconds);
            }
        }
    }
}

/// Most label sets a [`Series`] keeps; past it, it starts again. The registry itself keeps
/// every series it ever made (rules × reasons × ~250 countries × modes can pass 10,000), so
/// this only bounds what rule renames across reloads leave behind: ≈ 64 bytes an entry.
const SERIES_MAX: usize = 65_536;

/// Series of one labelled family resolved once per distinct label set and then reused,
/// like [`RouteSeries`], for families whose label sets are not known up front (rule names,
/// countries). The caller packs the label values into a `u128` key (enum indices, country
/// letters, addresses of static or pinned strings): looking it up costs a fraction of
/// `with_label_values`, which hashes every label string and takes the family's lock on
/// each call.
#[derive(Debug)]
pub struct Series<M> {
    map: dashmap::DashMap<u128, M, std::hash::BuildHasherDefault<PackedHasher>>,
}

impl<M: Clone> Default for Series<M> {
    fn default() -> Self {
        Series {
            map: dashmap::DashMap::default(),
        }
    }
}

impl<M: Clone> Series<M> {
    /// Applies `f` to the series of `key`, resolving it with `resolve` (normally
    /// `with_label_values`) the first time.
    pub fn with(&self, key: u128, resolve: impl FnOnce() -> M, f: impl FnOnce(&M)) {
        if let Some(m) = self.map.get(&key) {
            f(&m);
            return;
        }
        let m = resolve();
        f(&m);
        if self.map.len() >= SERIES_MAX {
            self.map.clear();
        }
        self.map.insert(key, m);
    }
}

/// Hashes a packed `u128` key with one multiply. Keys are label sets the process itself
/// produces (a bounded set), not attacker-chosen values, so no keyed hash is needed.
#[derive(Default)]
pub struct PackedHasher(u64);

impl std::hash::Hasher for PackedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        let x = (self.0.rotate_left(29) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 31);
    }
    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }
}
