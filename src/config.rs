//! Service settings: listeners, routes, upstreams, trusted headers, store, admin, audit.
//!
//! Read from one TOML file (or none: [`Config::default`] routes every provider to the
//! built-in sandbox), checked with `deny_unknown_fields`, then [`Config::validate`]d into
//! the form the proxy runs on. Every error names the file, the line and the key.
//! Rule files are not here: they live in `rules/` and reload on their own (see `rules`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Uri;
use ipnet::IpNet;
use serde::Deserialize;

use crate::clock::serde_duration;
use crate::phone::{Country, NumberFormat};
use crate::providers::generic::GenericConfig;
use crate::providers::Preset;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message, so not a `source` too: it would be printed twice).
        error: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// toml's message, which names the line, column and key.
        message: String,
    },
    /// A value is well-formed but unusable.
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The line the offending table starts on (1-based).
        line: usize,
        /// The key, e.g. `route "twilio".upstream`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole service configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The proxy listener.
    pub server: ServerConfig,
    /// How smsfence talks to upstream providers.
    pub upstream: UpstreamConfig,
    /// Who may tell smsfence the end user's IP and id, and in which headers.
    pub trusted: TrustedConfig,
    /// The admin listener.
    pub admin: AdminConfig,
    /// Where rate-limit and heuristic state lives.
    pub store: StoreConfig,
    /// The audit log of decisions.
    pub audit: AuditConfig,
    /// The routes; none means "every preset, to the sandbox".
    #[serde(rename = "route")]
    pub routes: Vec<toml::Spanned<RouteConfig>>,
    /// The file name and text this was read from, for line numbers in errors.
    #[serde(skip)]
    origin: Option<(String, String)>,
}

/// The proxy listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// Largest request body read; larger ones get 413.
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(with = "serde_duration")]
    pub drain_timeout: Duration,
    /// After SIGTERM, how long `/readyz` answers 503 while requests are still served,
    /// before the listeners close: time for load balancers to stop sending.
    #[serde(with = "serde_duration")]
    pub shutdown_delay: Duration,
    /// How long a client may take to send its request head and body.
    #[serde(with = "serde_duration")]
    pub request_read_timeout: Duration,
    /// Proxy workers, each a thread with its own event loop, sharing the listening
    /// socket (0 = one per core). Worker 0 runs on the thread that starts the instance.
    pub worker_threads: usize,
    /// Serve the proxy listener over TLS.
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]` / `[admin.tls]`: a listener's certificate and key, read again on SIGHUP
/// and `POST /v1/reload`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first.
    pub cert: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of that certificate.
    pub key: std::path::PathBuf,
}

impl ServerConfig {
    /// The number of proxy workers `worker_threads` asks for.
    pub fn workers(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            request_read_timeout: Duration::from_secs(10),
            worker_threads: 0,
            tls: None,
        }
    }
}

/// How smsfence talks to upstream providers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Time allowed to open a TCP (and TLS) connection.
    #[serde(with = "serde_duration")]
    pub connect_timeout: Duration,
    /// Time allowed for the whole upstream exchange, from sending to the response head;
    /// also the longest pause allowed within the response body (then it is cut off).
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
    /// How long an idle pooled connection is kept (checked every `store.sweep_interval`).
    #[serde(with = "serde_duration")]
    pub pool_idle_timeout: Duration,
    /// Most idle connections kept per upstream host.
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(15),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
        }
    }
}

/// The end user's identity, as told by the app in headers it is trusted to set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustedConfig {
    /// TCP peers whose identity headers are believed (the app servers).
    pub peers: Vec<IpNet>,
    /// Header carrying the end user's IP. `X-Forwarded-For` style lists are read from the
    /// right, skipping addresses in `peers`.
    pub ip_header: Option<String>,
    /// Header carrying the end user's id in the app.
    pub user_header: Option<String>,
}

impl Default for TrustedConfig {
    fn default() -> Self {
        TrustedConfig {
            peers: vec![
                "127.0.0.0/8".parse().expect("valid literal"),
                "::1/128".parse().expect("valid literal"),
            ],
            ip_header: Some("X-Smsfence-End-User-Ip".into()),
            user_header: Some("X-Smsfence-End-User-Id".into()),
        }
    }
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where `/metrics`, `/healthz`, `/readyz` and `/v1/*` listen. Loopback by default.
    pub listen: SocketAddr,
    /// When set, `/v1/*` endpoints need `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Serve the admin listener over TLS (`[admin.tls]`, as `[server.tls]`).
    pub tls: Option<TlsConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: None,
            tls: None,
        }
    }
}

/// Which state store backs the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In-process, bounded. The default.
    #[default]
    Memory,
    /// Redis or Valkey, shared by several instances.
    Redis,
}

/// Where rate-limit and heuristic state lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `memory` (default) or `redis`.
    pub kind: StoreKind,
    /// Ceiling on tracked keys in memory; past it new keys are not tracked (counted).
    pub max_keys: usize,
    /// How often idle keys are swept from memory.
    #[serde(with = "serde_duration")]
    pub sweep_interval: Duration,
    /// Redis URLs: one for a single node, several seeds for a Cluster.
    pub urls: Vec<String>,
    /// Whether `urls` name a Redis Cluster.
    pub cluster: bool,
    /// Per-call timeout against Redis.
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
    /// Timeout for connecting to Redis.
    #[serde(with = "serde_duration")]
    pub connect_timeout: Duration,
    /// Multiplexed connections to a single node (a Cluster uses one per node).
    pub pool_size: usize,
    /// Consecutive failed calls that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker fails calls at once before trying Redis again.
    #[serde(with = "serde_duration")]
    pub breaker_cooldown: Duration,
    /// Refuse to start when the store cannot be reached.
    pub require_store: bool,
    /// How long a Verify start's id is remembered for its checks and resends (in-process,
    /// and in Redis): at least as long as the longest-lived code the app starts.
    #[serde(with = "serde_duration")]
    pub verify_ref_ttl: Duration,
    /// Ceiling on the ids remembered in-process (past it the oldest half is dropped).
    pub max_verify_refs: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Memory,
            max_keys: 1_000_000,
            sweep_interval: Duration::from_secs(10),
            urls: Vec::new(),
            cluster: false,
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
            pool_size: 2,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_millis(500),
            require_store: false,
            verify_ref_ttl: crate::proxy::refs::TTL,
            max_verify_refs: 100_000,
        }
    }
}

/// How numbers appear in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NumberRedaction {
    /// The full E.164 number (replayable as is).
    #[default]
    Full,
    /// The last four digits replaced by `*`.
    Masked,
    /// A keyed hash (stable within one key, not reversible).
    Hash,
}

/// How the end user's IP and id appear in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IdentityRedaction {
    /// As received in the trusted headers (replayable as is).
    #[default]
    Full,
    /// A keyed hash with the numbers' key: the same IP or id gives the same hash.
    Hash,
    /// Not written.
    Omit,
}

/// The shortest `audit.hash_key` taken (bytes).
pub const MIN_HASH_KEY: usize = 16;

/// The audit log of decisions.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// `"stdout"`, a file path, or unset for no audit log.
    pub output: Option<String>,
    /// How numbers are written.
    pub numbers: NumberRedaction,
    /// How the end user's IP and id (`ip`, `user`) are written.
    pub identities: IdentityRedaction,
    /// The key for `numbers = "hash"` and `identities = "hash"`.
    pub hash_key: Option<String>,
    /// Rotate the file to `<file>.1` past this size (bytes); 0 = never. The file is
    /// opened anew for every batch of lines, so an external logrotate that moves it
    /// away needs no signal.
    pub max_bytes: u64,
}

/// What to do with a request a preset cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnUnsupported {
    /// Refuse it with reason `unsupported_request`.
    #[default]
    Refuse,
    /// Forward it undecided (counted).
    Passthrough,
}

/// One route: a provider preset, where it forwards to, and how to read its numbers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, used in metrics and logs.
    pub name: String,
    /// Which provider API this route speaks.
    pub preset: Preset,
    /// `"sandbox"` or the provider's base URL, e.g. `https://api.twilio.com`.
    pub upstream: String,
    /// A path prefix the proxy strips before matching and forwarding.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Region for national-format numbers (no `+`), e.g. `"GB"`; without it an E.164
    /// route refuses them.
    #[serde(default)]
    pub default_region: Option<String>,
    /// How recipients are written, when the preset does not decide it.
    #[serde(default)]
    pub number_format: Option<NumberFormat>,
    /// What to do with requests the preset cannot read.
    #[serde(default)]
    pub on_unsupported: OnUnsupported,
    /// A throttle whose retry-after is longer than this is answered as a block (the
    /// provider's non-retryable error), for SDKs that sleep out a 429's `Retry-After` by
    /// themselves; `"off"` never. Default: `"10s"` for Sinch, off elsewhere.
    #[serde(default)]
    pub max_retry_after: Option<String>,
    /// The extractor of a `generic` route.
    #[serde(default)]
    pub generic: Option<GenericConfig>,
}

/// Where a route forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// The built-in sandbox that answers like the provider and sends nothing.
    Sandbox,
    /// A real base URL.
    Url {
        /// `http` or `https`.
        scheme: hyper::http::uri::Scheme,
        /// Host and port.
        authority: hyper::http::uri::Authority,
        /// A path the forwarded path is appended to (no trailing slash; may be empty).
        base_path: String,
    },
}

/// A route after validation.
#[derive(Debug, Clone)]
pub struct Route {
    /// Unique name.
    pub name: String,
    /// The provider preset.
    pub preset: Preset,
    /// Where it forwards.
    pub upstream: Upstream,
    /// The prefix stripped before matching (no trailing slash; may be empty).
    pub path_prefix: String,
    /// Region for national numbers.
    pub default_region: Option<Country>,
    /// Number format override.
    pub number_format: Option<NumberFormat>,
    /// Unreadable requests: refuse or pass through.
    pub on_unsupported: OnUnsupported,
    /// Throttles longer than this are answered as blocks (see [`RouteConfig`]).
    pub max_retry_after: Option<Duration>,
    /// The generic extractor, compiled.
    pub generic: Option<crate::providers::generic::Generic>,
}

impl Config {
    /// Reads and parses a TOML file (not yet validated).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Config::from_toml(&path.display().to_string(), &text)
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn from_toml(origin: &str, text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: parse_message(text, &e),
        })?;
        config.origin = Some((origin.to_owned(), text.to_owned()));
        Ok(config)
    }

    /// Checks every value and compiles the routes.
    pub fn validate(&self) -> Result<Vec<Route>, ConfigError> {
        let (origin, text) = self
            .origin
            .clone()
            .unwrap_or_else(|| ("<default>".to_owned(), String::new()));
        // Errors found after parsing carry no span: outside routes (offset 0) the line is
        // found from the key's name.
        let err = |span_start: usize, key: String, message: String| ConfigError::Invalid {
            path: origin.clone(),
            line: if span_start == 0 {
                line_of_key(&text, &key)
            } else {
                line_of(&text, span_start)
            },
            key,
            message,
        };
        if self.server.max_body_bytes == 0 {
            return Err(err(
                0,
                "server.max_body_bytes".into(),
                "must be above 0".into(),
            ));
        }
        if self.server.worker_threads > 1024 {
            return Err(err(
                0,
                "server.worker_threads".into(),
                "at most 1024 (0 = one per core)".into(),
            ));
        }
        let (proxy, admin) = (self.server.listen, self.admin.listen);
        if proxy.port() != 0
            && proxy.port() == admin.port()
            && (proxy.ip() == admin.ip()
                || proxy.ip().is_unspecified()
                || admin.ip().is_unspecified())
        {
            return Err(err(
                0,
                "admin.listen".into(),
                format!("{admin} overlaps server.listen ({proxy}): the admin API needs a port of its own"),
            ));
        }
        if self
            .admin
            .token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(err(
                0,
                "admin.token".into(),
                "must not be empty (leave it out to run the admin API without a token)".into(),
            ));
        }
        // A key anyone can guess (empty: an unset variable in a template) makes hashed
        // numbers reversible by hashing every number of a country with it.
        if self
            .audit
            .hash_key
            .as_deref()
            .is_some_and(|k| k.len() < MIN_HASH_KEY)
        {
            return Err(err(
                0,
                "audit.hash_key".into(),
                format!("must be at least {MIN_HASH_KEY} bytes (a random string): a short key lets anyone reverse the hashed numbers"),
            ));
        }
        if self.upstream.timeout.is_zero() || self.upstream.connect_timeout.is_zero() {
            return Err(err(
                0,
                "upstream.timeout".into(),
                "timeouts must be above 0".into(),
            ));
        }
        for (key, header) in [
            ("trusted.ip_header", &self.trusted.ip_header),
            ("trusted.user_header", &self.trusted.user_header),
        ] {
            if let Some(h) = header {
                if hyper::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return Err(err(
                        0,
                        key.into(),
                        format!("{h:?} is not a valid header name"),
                    ));
                }
            }
        }
        if self.store.verify_ref_ttl < Duration::from_secs(60)
            || self.store.verify_ref_ttl > Duration::from_secs(7 * 24 * 3600)
        {
            return Err(err(
                0,
                "store.verify_ref_ttl".into(),
                "must be between 1m and 7d".into(),
            ));
        }
        if self.store.max_verify_refs < 1000 {
            return Err(err(
                0,
                "store.max_verify_refs".into(),
                "must be at least 1000".into(),
            ));
        }
        if self.store.kind == StoreKind::Redis && self.store.urls.is_empty() {
            return Err(err(
                0,
                "store.urls".into(),
                "kind = \"redis\" needs at least one URL".into(),
            ));
        }
        if self.routes.is_empty() {
            return Ok(default_routes());
        }
        let mut names = HashSet::new();
        let mut routes = Vec::with_capacity(self.routes.len());
        for spanned in &self.routes {
            let start = spanned.span().start;
            let r = spanned.get_ref();
            let key = |k: &str| format!("route {:?}.{k}", r.name);
            if r.name.is_empty() || !names.insert(r.name.clone()) {
                return Err(err(
                    start,
                    key("name"),
                    "route names must be non-empty and unique".into(),
                ));
            }
            let upstream =
                parse_upstream(&r.upstream).map_err(|m| err(start, key("upstream"), m))?;
            let path_prefix = match &r.path_prefix {
                None => String::new(),
                Some(p) if p.starts_with('/') => p.trim_end_matches('/').to_owned(),
                Some(_) => {
                    return Err(err(start, key("path_prefix"), "must start with '/'".into()))
                }
            };
            let default_region = match &r.default_region {
                None => None,
                Some(s) => Some(Country::parse(s).ok_or_else(|| {
                    err(
                        start,
                        key("default_region"),
                        format!("{s:?} is not a country code (ISO 3166-1 alpha-2 with a numbering plan, e.g. GB, not UK)"),
                    )
                })?),
            };
            if r.number_format == Some(NumberFormat::National) && default_region.is_none() {
                return Err(err(
                    start,
                    key("number_format"),
                    "\"national\" needs default_region".into(),
                ));
            }
            let generic = match (r.preset, &r.generic) {
                (Preset::Generic, Some(g)) => {
                    if g.number_format == Some(NumberFormat::National) && default_region.is_none() {
                        return Err(err(
                            start,
                            key("generic"),
                            "number_format: \"national\" needs default_region".into(),
                        ));
                    }
                    Some(g.compile().map_err(|m| err(start, key("generic"), m))?)
                }
                (Preset::Generic, None) => {
                    return Err(err(
                        start,
                        key("generic"),
                        "a generic route needs a [route.generic] table".into(),
                    ))
                }
                (_, Some(_)) => {
                    return Err(err(
                        start,
                        key("generic"),
                        "only preset = \"generic\" takes a generic table".into(),
                    ))
                }
                (_, None) => None,
            };
            let max_retry_after = match r.max_retry_after.as_deref() {
                None => default_max_retry_after(r.preset),
                Some("off") => None,
                Some(s) => Some(crate::clock::parse_duration(s).ok_or_else(|| {
                    err(
                        start,
                        key("max_retry_after"),
                        format!("{s:?} is not a duration (e.g. \"10s\") or \"off\""),
                    )
                })?),
            };
            routes.push(Route {
                name: r.name.clone(),
                preset: r.preset,
                upstream,
                path_prefix,
                default_region,
                number_format: r.number_format,
                on_unsupported: r.on_unsupported,
                max_retry_after,
                generic,
            });
        }
        Ok(routes)
    }
}

/// The Sinch SDKs sleep out a 429's `Retry-After` and retry three times: a per-number
/// cooldown of minutes would hang the app's call for that long, three times over. Past
/// ten seconds a Sinch throttle is answered as a block, which they raise at once.
fn default_max_retry_after(preset: Preset) -> Option<Duration> {
    (preset == Preset::Sinch).then_some(Duration::from_secs(10))
}

/// One route per provider preset, all to the sandbox: the embedded default.
pub fn default_routes() -> Vec<Route> {
    Preset::BUILT_IN
        .iter()
        .map(|&preset| Route {
            name: preset.as_str().to_owned(),
            preset,
            upstream: Upstream::Sandbox,
            path_prefix: String::new(),
            default_region: None,
            number_format: None,
            on_unsupported: OnUnsupported::Refuse,
            max_retry_after: default_max_retry_after(preset),
            generic: None,
        })
        .collect()
}

fn parse_upstream(s: &str) -> Result<Upstream, String> {
    if s == "sandbox" {
        return Ok(Upstream::Sandbox);
    }
    let uri: Uri = s.parse().map_err(|e| {
        format!("{s:?} is not a URL ({e}); use \"sandbox\" or e.g. \"https://api.twilio.com\"")
    })?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("{s:?} has no scheme"))?;
    if scheme != hyper::http::uri::Scheme::HTTP && scheme != hyper::http::uri::Scheme::HTTPS {
        return Err(format!(
            "{s:?}: only http and https upstreams are supported"
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{s:?} has no host"))?;
    // Neither is repeated in the message: they may hold credentials.
    if authority.as_str().contains('@') {
        return Err("an upstream URL cannot carry credentials (user:password@host): the client's own Authorization header is forwarded".to_owned());
    }
    if uri.query().is_some() {
        return Err(format!(
            "{}://{authority}{}: an upstream base URL cannot carry a query",
            uri.scheme_str().unwrap_or_default(),
            uri.path()
        ));
    }
    Ok(Upstream::Url {
        scheme,
        authority,
        base_path: uri.path().trim_end_matches('/').to_owned(),
    })
}

/// Where and what, from a toml error: its own rendering quotes the offending line, and
/// serde's messages the offending value, either of which may be a secret (`token`,
/// `hash_key`, a Redis URL with a password).
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let message = without_value(e.message().trim()).replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let offset = span.start.min(text.len());
            let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
            let column = text[line_start..offset].chars().count() + 1;
            format!("line {}, column {column}: {message}", line_of(text, offset))
        }
        None => message,
    }
}

/// A serde message without the value it quotes: `invalid type: integer `5`, expected a
/// string` becomes `invalid type: integer, expected a string`.
pub(crate) fn without_value(message: &str) -> String {
    ["invalid type: ", "invalid value: "]
        .iter()
        .find_map(|lead| {
            let rest = message.strip_prefix(lead)?;
            let (unexpected, expected) = rest.split_once(", expected ")?;
            // `integer `5``, `string "x"`: the kind of value, not the value.
            let kind = unexpected.split(['`', '"']).next().unwrap_or("").trim();
            Some(format!("{lead}{kind}, expected {expected}"))
        })
        .unwrap_or_else(|| message.to_owned())
}

/// The line where a dotted key (`server.max_body_bytes`) is set: `max_body_bytes = …` in
/// `[server]`, or the whole dotted key at the top; else the table's header; else 1.
fn line_of_key(text: &str, dotted: &str) -> usize {
    let Some((table, key)) = dotted.rsplit_once('.') else {
        return 1;
    };
    let sets = |line: &str, key: &str| {
        line.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    let mut current = "";
    let mut header = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix('[') {
            current = rest
                .split(']')
                .next()
                .unwrap_or("")
                .trim_matches(['[', ' ']);
            if line.starts_with("[[") {
                current = "[[]]"; // an array of tables: no dotted key of ours is in it
            } else if current == table {
                header = Some(i + 1);
            }
        } else if (current == table && sets(line, key))
            || (current.is_empty() && sets(line, dotted))
        {
            return i + 1;
        }
    }
    header.unwrap_or(1)
}

/// The 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_found_after_parsing_name_the_keys_line() {
        let text = "# smsfence\n[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 0\n\n[admin]\ntoken = \" \"\n";
        for (key, line) in [("server.max_body_bytes", 4), ("admin.token", 7)] {
            let bad = text.replace(
                if key == "admin.token" {
                    "max_body_bytes = 0"
                } else {
                    "token = \" \""
                },
                "",
            );
            let err = Config::from_toml("s.toml", &bad)
                .and_then(|c| c.validate())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(&format!("s.toml:{line}: {key}")), "{err}");
        }
        // Not written at all: the table's header, else line 1.
        assert_eq!(super::line_of_key(text, "upstream.timeout"), 1);
        assert_eq!(super::line_of_key(text, "server.worker_threads"), 2);
        assert_eq!(super::line_of_key("store.urls = []\n", "store.urls"), 1);
        assert_eq!(
            super::line_of_key("[[route]]\nstore.urls = 1\n[store]\n", "store.urls"),
            3
        );
    }

    use super::*;

    #[test]
    fn empty_config_routes_every_preset_to_the_sandbox() {
        let c = Config::from_toml("x.toml", "").unwrap();
        let routes = c.validate().unwrap();
        assert_eq!(routes.len(), Preset::BUILT_IN.len());
        assert!(routes.iter().all(|r| r.upstream == Upstream::Sandbox));
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = Config::from_toml(
            "svc.toml",
            "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 2\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("svc.toml"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn bad_route_names_line_and_key() {
        let text = "[server]\nmax_body_bytes = 10\n\n[[route]]\nname = \"t\"\npreset = \"twilio\"\nupstream = \"ftp://x\"\n";
        let e = Config::from_toml("svc.toml", text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("svc.toml:4: route \"t\".upstream"), "{e}");
    }

    #[test]
    fn generic_route_mistakes_name_line_and_key() {
        let route = |generic: &str, route: &str| {
            let text = format!(
                "[[route]]\nname = \"g\"\npreset = \"generic\"\nupstream = \"sandbox\"\n{route}\n[route.generic]\nmethod = \"POST\"\nrecipients = {{ form = \"to\" }}\n{generic}\n"
            );
            Config::from_toml("svc.toml", &text)
                .unwrap()
                .validate()
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let e = route("path = \"/s\"\nnumber_format = \"national\"", "").unwrap_err();
        assert!(e.starts_with("svc.toml:1: route \"g\".generic"), "{e}");
        assert!(
            e.contains("number_format: \"national\" needs default_region"),
            "{e}"
        );
        route(
            "path = \"/s\"\nnumber_format = \"national\"",
            "default_region = \"GB\"",
        )
        .unwrap();
        // "UK" is two letters but no region: every national number would be refused.
        let e = route(
            "path = \"/s\"\nnumber_format = \"national\"",
            "default_region = \"UK\"",
        )
        .unwrap_err();
        assert!(
            e.contains("default_region: \"UK\" is not a country code"),
            "{e}"
        );
        let e = route("path = \"/send?api=1\"", "").unwrap_err();
        assert!(e.contains("path: "), "{e}");
        let e = route(
            "path = \"/s\"\n[route.generic.block]\nstatus = 101\nbody = '{}'",
            "",
        )
        .unwrap_err();
        assert!(e.contains("block.status: 101"), "{e}");
    }

    #[test]
    fn verify_references_live_as_configured_within_bounds() {
        let c = Config::from_toml(
            "svc.toml",
            "[store]\nverify_ref_ttl = \"3h\"\nmax_verify_refs = 500000\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.store.verify_ref_ttl, Duration::from_secs(3 * 3600));
        assert_eq!(c.store.max_verify_refs, 500_000);
        for (text, key) in [
            (
                "[store]\nverify_ref_ttl = \"10s\"\n",
                "store.verify_ref_ttl",
            ),
            (
                "[store]\nverify_ref_ttl = \"30d\"\n",
                "store.verify_ref_ttl",
            ),
            ("[store]\nmax_verify_refs = 10\n", "store.max_verify_refs"),
        ] {
            let e = Config::from_toml("svc.toml", text)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("svc.toml:2"), "{text}: {e}");
        }
    }

    #[test]
    fn an_empty_admin_token_is_an_error_not_an_open_api() {
        // `token = ""` (an unset variable in a template) would let every request in.
        let e = Config::from_toml("svc.toml", "[admin]\ntoken = \"\"\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("admin.token"), "{e}");
    }

    /// A hash key anyone could guess (empty: an unset variable in a template; or short)
    /// makes the audit log's hashed numbers reversible by hashing every number.
    #[test]
    fn a_short_audit_hash_key_is_an_error_not_a_public_key() {
        for key in ["", "short-key"] {
            let text = format!("[audit]\nnumbers = \"hash\"\nhash_key = \"{key}\"\n");
            let e = Config::from_toml("svc.toml", &text)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains("audit.hash_key"), "{e}");
            assert!(
                key.is_empty() || !e.contains(key),
                "the key is not repeated: {e}"
            );
        }
        let text = "[audit]\nnumbers = \"hash\"\nhash_key = \"0123456789abcdef\"\n";
        assert!(Config::from_toml("svc.toml", text)
            .unwrap()
            .validate()
            .is_ok());
    }

    /// toml's own message quotes the offending line, and serde's the offending value: a
    /// typo next to a secret (`tokn = "…"`), a secret left unquoted or of the wrong type
    /// would be printed to the logs. The error names the file, line, column and key only.
    #[test]
    fn parse_errors_name_the_place_but_never_echo_the_value() {
        for (text, line, says) in [
            (
                "[admin]\ntokn = \"TopSecretTok\"\n",
                2,
                "unknown field `tokn`",
            ),
            ("[admin]\ntoken = TopSecretTok\n", 2, "invalid string"),
            (
                "[admin]\n\ntoken = 4242TopSecretTok\n",
                3,
                "expected newline",
            ),
            (
                "[admin]\ntoken = 98765432\n",
                2,
                "invalid type: integer, expected a string",
            ),
            (
                "[store]\nurls = \"redis://:TopSecretTok@10.0.0.5\"\n",
                2,
                "invalid type: string, expected a sequence",
            ),
            (
                "[audit]\nhash_key = [\"TopSecretTok\"]\n",
                2,
                "expected a string",
            ),
        ] {
            let e = Config::from_toml("svc.toml", text).unwrap_err().to_string();
            assert!(
                !e.contains("TopSecretTok") && !e.contains("98765432"),
                "{text}: {e}"
            );
            assert!(e.starts_with("svc.toml: line "), "{e}");
            assert!(e.contains(&format!("line {line}")), "{text}: {e}");
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn the_proxy_and_the_admin_api_cannot_share_an_address() {
        let text = "[server]\nlisten = \"0.0.0.0:8080\"\n[admin]\nlisten = \"0.0.0.0:8080\"\n";
        let e = Config::from_toml("svc.toml", text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("admin.listen"), "{e}");
        assert!(e.contains("server.listen"), "{e}");
        // Port 0 (any free port) twice is two different ports.
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n";
        assert!(Config::from_toml("svc.toml", text)
            .unwrap()
            .validate()
            .is_ok());
    }

    #[test]
    fn upstream_urls() {
        let u = parse_upstream("https://api.twilio.com/").unwrap();
        assert!(matches!(u, Upstream::Url { ref base_path, .. } if base_path.is_empty()));
        assert!(parse_upstream("api.twilio.com").is_err());
        assert!(parse_upstream("http://h/?q=1").is_err());
    }

    /// Credentials in an upstream URL would be logged (the start-up banner prints every
    /// route's upstream) and sent as the Host header: refused, without repeating them.
    #[test]
    fn upstream_urls_with_credentials_are_refused_without_echoing_them() {
        for url in [
            "https://ACuser:TopSecretTok@api.twilio.com",
            "https://api.twilio.com/?token=TopSecretTok",
            "https://ACuser:TopSecretTok@api.twilio.com/?token=TopSecretTok",
        ] {
            let e = parse_upstream(url).unwrap_err();
            assert!(!e.contains("TopSecretTok"), "{url}: {e}");
        }
    }
}
