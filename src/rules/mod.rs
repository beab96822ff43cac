//! Rule files: their TOML schema, their validation, and the immutable [`RuleSet`] they
//! compile into.
//!
//! A rules directory holds any number of `*.toml` files, read in name order and merged;
//! rule names are unique across them. Every mistake is reported as
//! `file:line: rule: message`, all of them at once, and a rule set with any mistake is
//! never used (see [`reload`]). Compiled rules hold parsed types only — prefixes as
//! digits, countries as codes, CIDRs as `IpNet` — so deciding never parses a string.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::clock::{parse_duration, Timestamp};
use crate::config::line_of;
use crate::decide::{Facts, Reason};
use crate::phone::{Country, Destination, DigitPrefix, NumberType};
use crate::providers::{Kinds, RequestKind};
use crate::store::Entity;

pub mod heuristic;
pub mod reload;

pub use heuristic::{Check, HeuristicRule, Prices};

/// The default rule files, compiled into the binary for when no rules directory exists.
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        "00-settings.toml",
        include_str!("../../rules/00-settings.toml"),
    ),
    ("10-lists.toml", include_str!("../../rules/10-lists.toml")),
    (
        "20-policies.toml",
        include_str!("../../rules/20-policies.toml"),
    ),
    ("30-limits.toml", include_str!("../../rules/30-limits.toml")),
    (
        "40-heuristics.toml",
        include_str!("../../rules/40-heuristics.toml"),
    ),
    ("prices.toml", include_str!("../../rules/prices.toml")),
];

/// One mistake in a rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The file.
    pub file: String,
    /// The 1-based line.
    pub line: usize,
    /// The rule's name, or `-` when the mistake is not inside a named rule.
    pub rule: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file, self.line, self.rule, self.message
        )
    }
}

/// Whether a rule refuses, only records, or does nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse requests.
    #[default]
    Enforce,
    /// Decide and record, never refuse.
    Shadow,
    /// Not evaluated.
    Off,
}

impl Mode {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
            Mode::Off => "off",
        }
    }
}

/// What happens to a rule when the shared store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Allow the request.
    Open,
    /// Refuse the request (reason `store_unavailable`).
    Closed,
    /// Decide with the in-process limiter instead.
    #[default]
    Local,
}

/// What happens to a new key past the memory store's key ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOverflow {
    /// Leave it untracked; coarser limits still apply (counted).
    #[default]
    Open,
    /// Refuse the request (reason `capacity`, counted).
    Closed,
}

/// What a limit is keyed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// The destination number.
    Number,
    /// The destination without its last `drop` digits.
    Prefix {
        /// Digits dropped.
        drop: u32,
    },
    /// The destination country.
    Country,
    /// The end user's IP.
    Ip,
    /// The end user's subnet.
    Subnet {
        /// IPv4 prefix length.
        v4: u8,
        /// IPv6 prefix length.
        v6: u8,
    },
    /// The provider account.
    Account,
    /// The end user's id.
    User,
    /// The sender.
    Sender,
    /// One key for everything.
    Global,
}

/// The subnet of `ip` at the given prefix lengths.
pub fn subnet_of(ip: IpAddr, v4: u8, v6: u8) -> IpNet {
    let len = if ip.is_ipv4() { v4 } else { v6 };
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

/// `::ffff:1.2.3.0/120` as `1.2.3.0/24`: client addresses are matched as IPv4 when they
/// are IPv4-mapped, so a list (or `trusted.peers`) written in the mapped form must be too.
pub fn ipv4_mapped_net(n: IpNet) -> IpNet {
    match n {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
            .addr()
            .to_ipv4_mapped()
            .and_then(|a| IpNet::new(IpAddr::V4(a), v6.prefix_len() - 96).ok())
            .unwrap_or(n),
        _ => n,
    }
}

/// A compiled rate limit.
#[derive(Debug, Clone)]
pub struct LimitRule {
    /// The name.
    pub name: Arc<str>,
    /// Stable id: the hash of name and key, so state survives reloads that keep both.
    pub id: u64,
    /// Enforce or shadow (`off` rules are not compiled in).
    pub mode: Mode,
    /// The key.
    pub key: KeyKind,
    /// Period / rate.
    pub interval: Duration,
    /// Requests that may pass at once.
    pub burst: u32,
    /// Which request kinds it counts.
    pub kinds: Kinds,
    /// Whether it sends the IETF RateLimit headers.
    pub headers: bool,
    /// Behaviour when the shared store is unreachable.
    pub on_store_error: OnStoreError,
    /// Refuse new keys past the memory ceiling.
    pub overflow_closed: bool,
}

impl LimitRule {
    /// Whether it counts requests of this kind.
    pub fn applies_to(&self, kind: RequestKind) -> bool {
        self.kinds.contains(kind)
    }

    /// The entity of a destination-keyed limit (`None` for request-keyed ones).
    pub fn destination_entity(&self, d: &Destination) -> Option<Entity<'static>> {
        match self.key {
            KeyKind::Number => Some(Entity::Number(d.digits())),
            KeyKind::Prefix { drop } => Some(Entity::Prefix(d.prefix(drop))),
            KeyKind::Country => d.country().map(Entity::Country),
            _ => None,
        }
    }

    /// Whether a store outage refuses.
    pub fn fails_closed(&self) -> bool {
        self.on_store_error == OnStoreError::Closed
    }
}

/// What an allow-list match skips.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skip {
    /// Deny lists.
    pub deny: bool,
    /// Policies.
    pub policies: bool,
    /// Every limit.
    pub limits: bool,
    /// Every heuristic.
    pub heuristics: bool,
    /// Individual rules by name.
    pub rules: Vec<Arc<str>>,
}

impl Skip {
    /// Skips nothing.
    pub fn none() -> Skip {
        Skip::default()
    }

    /// Skips everything.
    pub fn all() -> Skip {
        Skip {
            deny: true,
            policies: true,
            limits: true,
            heuristics: true,
            rules: Vec::new(),
        }
    }

    /// Both skips together.
    pub fn union(mut self, other: &Skip) -> Skip {
        self.deny |= other.deny;
        self.policies |= other.policies;
        self.limits |= other.limits;
        self.heuristics |= other.heuristics;
        self.rules.extend(other.rules.iter().cloned());
        self
    }

    /// Whether the named limit is skipped.
    pub fn skips_limit(&self, name: &str) -> bool {
        self.limits || self.rules.iter().any(|r| &**r == name)
    }

    /// Whether the named heuristic is skipped.
    pub fn skips_heuristic(&self, name: &str) -> bool {
        self.heuristics || self.rules.iter().any(|r| &**r == name)
    }

    /// Whether `skip` names this rule (for deny lists and policies, which `deny` and
    /// `policies` skip all of).
    pub fn skips_rule(&self, name: &str) -> bool {
        self.rules.iter().any(|r| &**r == name)
    }
}

/// A compiled allow or deny list.
#[derive(Debug, Clone, Default)]
pub struct ListRule {
    /// The name.
    pub name: Arc<str>,
    /// Enforce or shadow (deny lists only).
    pub mode: Mode,
    /// E.164 digits.
    pub numbers: HashSet<u64>,
    /// E.164 prefixes.
    pub prefixes: Vec<DigitPrefix>,
    /// Countries.
    pub countries: HashSet<Country>,
    /// End-user IP ranges.
    pub cidrs: Vec<IpNet>,
    /// End-user ids.
    pub users: HashSet<String>,
    /// Provider accounts.
    pub accounts: HashSet<String>,
    /// Senders.
    pub senders: HashSet<String>,
    /// When the list stops applying.
    pub until: Option<Timestamp>,
    /// For allow lists: what a match skips.
    pub skip: Skip,
}

impl ListRule {
    /// Whether the request's IP, user, account or sender is listed.
    pub fn matches_request(&self, f: &Facts<'_>) -> bool {
        self.denies_request(f).is_some()
    }

    /// Whether the destination's number, prefix or country is listed.
    pub fn matches_destination(&self, d: &Destination) -> bool {
        self.denies_destination(d).is_some()
    }

    /// The reason a deny list refuses this destination, if it does.
    pub fn denies_destination(&self, d: &Destination) -> Option<Reason> {
        if self.numbers.contains(&d.digits()) {
            Some(Reason::DeniedNumber)
        } else if self.prefixes.iter().any(|p| d.has_prefix(p)) {
            Some(Reason::DeniedPrefix)
        } else if d.country().is_some_and(|c| self.countries.contains(&c)) {
            Some(Reason::DeniedCountry)
        } else {
            None
        }
    }

    /// The reason a deny list refuses this request's origin, if it does.
    pub fn denies_request(&self, f: &Facts<'_>) -> Option<Reason> {
        if f.ip
            .is_some_and(|ip| self.cidrs.iter().any(|n| n.contains(&ip)))
        {
            Some(Reason::DeniedIp)
        } else if f.user.is_some_and(|u| self.users.contains(u)) {
            Some(Reason::DeniedUser)
        } else if f.account.is_some_and(|a| self.accounts.contains(a)) {
            Some(Reason::DeniedAccount)
        } else if f.sender.is_some_and(|s| self.senders.contains(s)) {
            Some(Reason::DeniedSender)
        } else {
            None
        }
    }
}

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct PolicyRule {
    /// The name.
    pub name: Arc<str>,
    /// Enforce or shadow.
    pub mode: Mode,
    /// Number types refused.
    pub deny_types: Vec<NumberType>,
    /// Country allow-list (`Some(true)`) or deny-list (`Some(false)`) mode.
    pub country_allow: Option<bool>,
    /// The countries of the country mode.
    pub countries: HashSet<Country>,
}

impl PolicyRule {
    /// The reason this policy refuses the destination, if it does.
    pub fn refuses(&self, d: &Destination) -> Option<Reason> {
        if self.deny_types.contains(&d.number_type()) {
            return Some(Reason::NumberType);
        }
        let listed = d.country().is_some_and(|c| self.countries.contains(&c));
        match self.country_allow {
            Some(true) if !listed => Some(Reason::CountryNotAllowed),
            Some(false) if listed => Some(Reason::DeniedCountry),
            _ => None,
        }
    }
}

/// A line of `GET /v1/rules` and `check-rules`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleSummary {
    /// The name.
    pub name: String,
    /// `limit`, `allow`, `deny`, `policy` or `heuristic`.
    pub kind: &'static str,
    /// `enforce`, `shadow` or `off`.
    pub mode: &'static str,
    /// The file.
    pub file: String,
    /// The line.
    pub line: usize,
}

/// An immutable, validated rule set: what one request is decided against.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    /// Increments on every successful load.
    pub generation: u64,
    /// Global shadow: nothing is refused, everything is recorded.
    pub shadow_all: bool,
    /// The name given to built-in refusals.
    pub builtin_name: Arc<str>,
    /// Allow lists.
    pub allow: Vec<ListRule>,
    /// Deny lists.
    pub deny: Vec<ListRule>,
    /// Policies.
    pub policies: Vec<PolicyRule>,
    /// Rate limits.
    pub limits: Vec<LimitRule>,
    /// Pumping heuristics.
    pub heuristics: Vec<HeuristicRule>,
    /// Price per segment, for cost estimates and spend budgets.
    pub prices: Option<Prices>,
    /// Numbers verified within this long skip the heuristics.
    pub trust_verified: Option<Duration>,
    /// Every rule, for listings.
    pub summaries: Vec<RuleSummary>,
    /// Where the rules came from.
    pub source: String,
}

impl RuleSet {
    /// A rule set with no rules (only the built-in refusals).
    pub fn empty() -> RuleSet {
        RuleSet {
            builtin_name: Arc::from(crate::decide::BUILTIN),
            ..RuleSet::default()
        }
    }

    /// Loads a rules directory: every `*.toml` file in name order, hidden files skipped.
    pub fn load_dir(dir: &Path) -> Result<RuleSet, Vec<RuleError>> {
        let files = rule_files(dir).map_err(|e| {
            vec![RuleError {
                file: dir.display().to_string(),
                line: 1,
                rule: "-".into(),
                message: format!("cannot read the rules directory: {e}"),
            }]
        })?;
        let mut texts = Vec::with_capacity(files.len());
        let mut errors = Vec::new();
        for path in files {
            match std::fs::read_to_string(&path) {
                Ok(t) => texts.push((path.display().to_string(), t)),
                Err(e) => errors.push(RuleError {
                    file: path.display().to_string(),
                    line: 1,
                    rule: "-".into(),
                    message: format!("cannot read: {e}"),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut set = RuleSet::compile(texts.iter().map(|(f, t)| (f.as_str(), t.as_str())))?;
        set.source = dir.display().to_string();
        Ok(set)
    }

    /// The rules compiled into the binary.
    pub fn embedded() -> Result<RuleSet, Vec<RuleError>> {
        let mut set = RuleSet::compile(EMBEDDED.iter().map(|(f, t)| (*f, *t)))?;
        set.source = "embedded defaults".into();
        Ok(set)
    }

    /// Compiles rule files given as (name, text) pairs.
    pub fn compile<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<RuleSet, Vec<RuleError>> {
        let mut c = Compiler {
            set: RuleSet::empty(),
            errors: Vec::new(),
            names: HashMap::new(),
            skip_names: Vec::new(),
        };
        for (file, text) in files {
            c.file(file, text);
        }
        // Rule names in `skip` may be defined in any file: checked once all are read.
        for (file, line, rule, skipped) in std::mem::take(&mut c.skip_names) {
            if !c.names.contains_key(&skipped) {
                let at = At {
                    file: &file,
                    line,
                    rule: &rule,
                };
                c.err(&at, format!("skip: {skipped:?} is neither all, deny, policies, limits, heuristics nor a rule name"));
            }
        }
        // A spend budget without a price table would never fire: a mistake, wherever
        // the table is missing from.
        if c.set.prices.is_none() {
            let spend: Vec<Arc<str>> = c
                .set
                .heuristics
                .iter()
                .filter(|h| matches!(h.check, Check::SpendBudget { .. }))
                .map(|h| h.name.clone())
                .collect();
            for name in spend {
                let Some(s) = c.set.summaries.iter().find(|s| *s.name == *name) else {
                    continue;
                };
                let (file, line) = (s.file.clone(), s.line);
                let at = At {
                    file: &file,
                    line,
                    rule: &name,
                };
                c.err(&at, "kind = \"spend_budget\" needs a [prices] table");
            }
        }
        if c.errors.is_empty() {
            Ok(c.set)
        } else {
            Err(c.errors)
        }
    }
}

/// The `*.toml` files of a directory, sorted, hidden and backup files skipped.
pub fn rule_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && name.ends_with(".toml") && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

// ---- the file schema -------------------------------------------------------------------

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    settings: Option<Spanned<Settings>>,
    #[serde(default)]
    limit: Vec<Spanned<LimitDef>>,
    #[serde(default)]
    list: Vec<Spanned<ListDef>>,
    #[serde(default)]
    policy: Vec<Spanned<PolicyDef>>,
    #[serde(default)]
    heuristic: Vec<Spanned<HeuristicDef>>,
    #[serde(default)]
    prices: Option<Spanned<PricesDef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    trust_verified: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PricesDef {
    #[serde(default = "default_currency")]
    currency: String,
    default: f64,
    #[serde(default)]
    countries: HashMap<String, f64>,
}

fn default_currency() -> String {
    "USD".into()
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HeuristicDef {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    mode: Mode,
    kind: String,
    #[serde(default)]
    kinds: Option<Vec<String>>,
    window: Option<String>,
    drop_digits: Option<Vec<u32>>,
    key: Option<String>,
    max_requests: Option<u64>,
    max_distinct: Option<u64>,
    distance: Option<u64>,
    max_near: Option<u64>,
    min_sends: Option<u64>,
    min_rate: Option<f64>,
    baseline_window: Option<String>,
    floor: Option<u64>,
    multiplier: Option<f64>,
    max: Option<u64>,
    hourly: Option<f64>,
    daily: Option<f64>,
    country_hourly: Option<f64>,
    country_daily: Option<f64>,
    max_countries: Option<u64>,
    max_numbers: Option<u64>,
    ipv4_prefix: Option<u8>,
    ipv6_prefix: Option<u8>,
    block_for: Option<String>,
    max_block: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitDef {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    mode: Mode,
    key: String,
    rate: String,
    burst: u32,
    #[serde(default)]
    kinds: Option<Vec<String>>,
    #[serde(default)]
    drop_digits: Option<u32>,
    #[serde(default)]
    ipv4_prefix: Option<u8>,
    #[serde(default)]
    ipv6_prefix: Option<u8>,
    #[serde(default)]
    headers: bool,
    #[serde(default)]
    on_store_error: OnStoreError,
    #[serde(default)]
    on_overflow: OnOverflow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ListAction {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListDef {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    mode: Mode,
    action: ListAction,
    #[serde(default)]
    numbers: Vec<String>,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    countries: Vec<String>,
    #[serde(default)]
    cidrs: Vec<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    accounts: Vec<String>,
    #[serde(default)]
    senders: Vec<String>,
    #[serde(default)]
    until: Option<toml::value::Datetime>,
    #[serde(default)]
    skip: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CountryMode {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDef {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    deny_types: Vec<String>,
    #[serde(default)]
    country_mode: Option<CountryMode>,
    #[serde(default)]
    countries: Vec<String>,
}

// ---- compiling ------------------------------------------------------------------------

struct Compiler {
    set: RuleSet,
    errors: Vec<RuleError>,
    /// Rule name → (file, line) of its first definition.
    names: HashMap<String, (String, usize)>,
    /// Rule names given in allow lists' `skip`: (file, line, list, name).
    skip_names: Vec<(String, usize, String, String)>,
}

/// Where a rule is, for errors.
struct At<'a> {
    file: &'a str,
    line: usize,
    rule: &'a str,
}

impl Compiler {
    fn err(&mut self, at: &At<'_>, message: impl Into<String>) {
        self.errors.push(RuleError {
            file: at.file.to_owned(),
            line: at.line,
            rule: at.rule.to_owned(),
            message: message.into(),
        });
    }

    fn file(&mut self, file: &str, text: &str) {
        let parsed: RuleFile = match toml::from_str(text) {
            Ok(p) => p,
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                let line = line_of(text, offset);
                self.errors.push(RuleError {
                    file: file.to_owned(),
                    line,
                    rule: rule_name_around(text, offset).unwrap_or_else(|| "-".into()),
                    message: e.message().trim().to_owned(),
                });
                return;
            }
        };
        if let Some(s) = parsed.settings {
            let line = line_of(text, s.span().start);
            let s = s.into_inner();
            self.set.shadow_all |= s.shadow;
            if let Some(t) = &s.trust_verified {
                let at = At {
                    file,
                    line,
                    rule: "settings",
                };
                match parse_duration(t) {
                    Some(d) => self.set.trust_verified = Some(d).filter(|d| !d.is_zero()),
                    None => self.err(
                        &at,
                        format!("trust_verified: {t:?} is not a duration such as \"30d\""),
                    ),
                }
            }
        }
        if let Some(p) = parsed.prices {
            let line = line_of(text, p.span().start);
            self.prices(file, line, p.into_inner());
        }
        for h in parsed.heuristic {
            let line = line_of(text, h.span().start);
            self.heuristic(file, line, h.into_inner());
        }
        for l in parsed.limit {
            let line = line_of(text, l.span().start);
            self.limit(file, line, l.into_inner());
        }
        for l in parsed.list {
            let line = line_of(text, l.span().start);
            self.list(file, line, l.into_inner());
        }
        for p in parsed.policy {
            let line = line_of(text, p.span().start);
            self.policy(file, line, p.into_inner());
        }
    }

    /// Registers a name; false (with an error) when it is empty, malformed or taken.
    fn name(&mut self, at: &At<'_>, kind: &'static str, mode: Mode) -> bool {
        let name = at.rule;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            self.err(
                at,
                "a rule name must be non-empty and use only letters, digits, '-', '_', '.', ':'",
            );
            return false;
        }
        if let Some((f, l)) = self.names.get(name) {
            let msg = format!("duplicate rule name (first defined at {f}:{l})");
            self.err(at, msg);
            return false;
        }
        self.names
            .insert(name.to_owned(), (at.file.to_owned(), at.line));
        self.set.summaries.push(RuleSummary {
            name: name.to_owned(),
            kind,
            mode: mode.as_str(),
            file: at.file.to_owned(),
            line: at.line,
        });
        true
    }

    fn limit(&mut self, file: &str, line: usize, d: LimitDef) {
        let at = At {
            file,
            line,
            rule: &d.name,
        };
        if !self.name(&at, "limit", d.mode) {
            return;
        }
        let interval = match parse_rate(&d.rate) {
            Ok(i) => i,
            Err(m) => return self.err(&at, m),
        };
        if d.burst == 0 {
            return self.err(&at, "burst must be at least 1");
        }
        let key = match d.key.as_str() {
            "number" => KeyKind::Number,
            "prefix" => match d.drop_digits {
                Some(n) if (1..=12).contains(&n) => KeyKind::Prefix { drop: n },
                Some(_) => return self.err(&at, "drop_digits must be between 1 and 12"),
                None => return self.err(&at, "key = \"prefix\" needs drop_digits (digits removed from the end)"),
            },
            "country" => KeyKind::Country,
            "ip" => KeyKind::Ip,
            "subnet" => {
                let (v4, v6) = (d.ipv4_prefix.unwrap_or(24), d.ipv6_prefix.unwrap_or(56));
                if v4 > 32 || v6 > 128 {
                    return self.err(&at, "ipv4_prefix must be at most 32 and ipv6_prefix at most 128");
                }
                KeyKind::Subnet { v4, v6 }
            }
            "account" => KeyKind::Account,
            "user" => KeyKind::User,
            "sender" => KeyKind::Sender,
            "global" => KeyKind::Global,
            other => {
                return self.err(
                    &at,
                    format!("unknown key {other:?}: expected number, prefix, country, ip, subnet, account, user, sender or global"),
                )
            }
        };
        if d.drop_digits.is_some() && !matches!(key, KeyKind::Prefix { .. }) {
            return self.err(&at, "drop_digits only applies to key = \"prefix\"");
        }
        if (d.ipv4_prefix.is_some() || d.ipv6_prefix.is_some())
            && !matches!(key, KeyKind::Subnet { .. })
        {
            return self.err(
                &at,
                "ipv4_prefix / ipv6_prefix only apply to key = \"subnet\"",
            );
        }
        let kinds = match &d.kinds {
            None => [RequestKind::Send, RequestKind::VerifyStart]
                .into_iter()
                .collect(),
            Some(list) => {
                let mut set = Kinds::default();
                for k in list {
                    match RequestKind::parse(k) {
                        Some(k) => {
                            set.insert(k);
                        }
                        None => {
                            return self.err(
                                &at,
                                format!(
                                "unknown kind {k:?}: expected send, verify_start or verify_check"
                            ),
                            )
                        }
                    }
                }
                if set.is_empty() {
                    return self.err(&at, "kinds must not be empty");
                }
                set
            }
        };
        let _ = d.description;
        if d.mode == Mode::Off {
            return;
        }
        self.set.limits.push(LimitRule {
            name: Arc::from(d.name.as_str()),
            id: stable_id(&d.name, &key),
            mode: d.mode,
            key,
            interval,
            burst: d.burst,
            kinds,
            headers: d.headers,
            on_store_error: d.on_store_error,
            overflow_closed: d.on_overflow == OnOverflow::Closed,
        });
    }

    fn list(&mut self, file: &str, line: usize, d: ListDef) {
        let kind = match d.action {
            ListAction::Allow => "allow",
            ListAction::Deny => "deny",
        };
        let at = At {
            file,
            line,
            rule: &d.name,
        };
        if !self.name(&at, kind, d.mode) {
            return;
        }
        let _ = d.description;
        let mut rule = ListRule {
            name: Arc::from(d.name.as_str()),
            mode: d.mode,
            ..ListRule::default()
        };
        let before = self.errors.len();
        for n in &d.numbers {
            match crate::phone::normalize(n, crate::phone::NumberFormat::E164, None) {
                Ok(dest) if n.starts_with('+') => {
                    rule.numbers.insert(dest.digits());
                }
                _ => self.err(
                    &at,
                    format!("numbers: {n:?} is not an E.164 number (+ and digits)"),
                ),
            }
        }
        for p in &d.prefixes {
            match DigitPrefix::parse(p) {
                Some(dp) if p.starts_with('+') => rule.prefixes.push(dp),
                _ => self.err(
                    &at,
                    format!("prefixes: {p:?} is not an E.164 prefix such as \"+4470\""),
                ),
            }
        }
        for c in &d.countries {
            match Country::parse(c) {
                Some(c) => {
                    rule.countries.insert(c);
                }
                None => self.err(
                    &at,
                    format!("countries: {c:?} is not a country code (ISO 3166-1 alpha-2 with a numbering plan, e.g. GB, not UK)"),
                ),
            }
        }
        for c in &d.cidrs {
            match c
                .parse::<IpNet>()
                .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(n) => rule.cidrs.push(ipv4_mapped_net(n).trunc()),
                Err(_) => self.err(&at, format!("cidrs: {c:?} is not an IP address or CIDR")),
            }
        }
        rule.users = d.users.iter().cloned().collect();
        rule.accounts = d.accounts.iter().cloned().collect();
        rule.senders = d.senders.iter().cloned().collect();
        if let Some(until) = &d.until {
            match Timestamp::parse_rfc3339(&until.to_string()) {
                Some(t) => rule.until = Some(t),
                None => self.err(
                    &at,
                    "until must be an RFC 3339 date-time with an offset, e.g. 2027-01-01T00:00:00Z",
                ),
            }
        }
        match (d.action, &d.skip) {
            (ListAction::Deny, Some(_)) => self.err(&at, "skip only applies to allow lists"),
            (ListAction::Allow, None) => rule.skip = Skip::all(),
            (ListAction::Allow, Some(items)) if items.is_empty() => self.err(
                &at,
                "skip = [] skips nothing: list what the allow list skips, or leave skip out for \"all\"",
            ),
            (ListAction::Allow, Some(items)) => {
                for s in items {
                    match s.as_str() {
                        "all" => rule.skip = rule.skip.clone().union(&Skip::all()),
                        "deny" => rule.skip.deny = true,
                        "policies" => rule.skip.policies = true,
                        "limits" => rule.skip.limits = true,
                        "heuristics" => rule.skip.heuristics = true,
                        name => {
                            self.skip_names.push((
                                file.to_owned(),
                                line,
                                d.name.clone(),
                                name.to_owned(),
                            ));
                            rule.skip.rules.push(Arc::from(name));
                        }
                    }
                }
            }
            (ListAction::Deny, None) => {}
        }
        if d.action == ListAction::Allow && d.mode == Mode::Shadow {
            self.err(
                &at,
                "an allow list cannot be in shadow mode (it never refuses anything)",
            );
        }
        let empty = rule.numbers.is_empty()
            && rule.prefixes.is_empty()
            && rule.countries.is_empty()
            && rule.cidrs.is_empty()
            && rule.users.is_empty()
            && rule.accounts.is_empty()
            && rule.senders.is_empty();
        if empty && self.errors.len() == before {
            self.err(&at, "the list has no entries (numbers, prefixes, countries, cidrs, users, accounts or senders)");
        }
        if self.errors.len() > before || d.mode == Mode::Off {
            return;
        }
        match d.action {
            ListAction::Allow => self.set.allow.push(rule),
            ListAction::Deny => self.set.deny.push(rule),
        }
    }

    fn policy(&mut self, file: &str, line: usize, d: PolicyDef) {
        let at = At {
            file,
            line,
            rule: &d.name,
        };
        if !self.name(&at, "policy", d.mode) {
            return;
        }
        let _ = d.description;
        let before = self.errors.len();
        let mut deny_types = Vec::new();
        for t in &d.deny_types {
            match NumberType::parse(t) {
                Some(t) => deny_types.push(t),
                None => self.err(
                    &at,
                    format!(
                        "deny_types: unknown number type {t:?}: expected one of {}",
                        NumberType::ALL.map(NumberType::as_str).join(", ")
                    ),
                ),
            }
        }
        let mut countries = HashSet::new();
        for c in &d.countries {
            match Country::parse(c) {
                Some(c) => {
                    countries.insert(c);
                }
                None => self.err(
                    &at,
                    format!("countries: {c:?} is not a country code (ISO 3166-1 alpha-2 with a numbering plan, e.g. GB, not UK)"),
                ),
            }
        }
        match (d.country_mode, countries.is_empty()) {
            (None, false) => self.err(&at, "countries needs country_mode = \"allow\" or \"deny\""),
            (Some(_), true) if self.errors.len() == before => {
                self.err(&at, "country_mode needs a non-empty countries list")
            }
            _ => {}
        }
        if deny_types.is_empty() && d.country_mode.is_none() && self.errors.len() == before {
            self.err(
                &at,
                "the policy does nothing: give deny_types or country_mode + countries",
            );
        }
        if self.errors.len() > before || d.mode == Mode::Off {
            return;
        }
        self.set.policies.push(PolicyRule {
            name: Arc::from(d.name.as_str()),
            mode: d.mode,
            deny_types,
            country_allow: d.country_mode.map(|m| m == CountryMode::Allow),
            countries,
        });
    }
}

/// Parses `"N/period"` (`"5/10m"`, `"1/60s"`, `"100/hour"`) into an emission interval.
pub fn parse_rate(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("rate {s:?} must look like \"N/period\", e.g. \"1/60s\", \"5/10m\", \"100/hour\"")
    };
    let (n, period) = s.split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let period = period.trim();
    let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
        parse_duration(period)
    } else {
        parse_duration(&format!("1{period}"))
    }
    .ok_or_else(bad)?;
    if n == 0 || period.is_zero() {
        return Err(format!("rate {s:?} must be above zero"));
    }
    // The Redis store counts in microseconds: a faster rate would be decided differently
    // there (and below a nanosecond, not at all in memory). Such a rate is "no limit in
    // practice"; it is kept as 1000000/1s by both stores.
    Ok((period / n).max(Duration::from_micros(1)))
}

/// A hash of the rule's name and key kind that is the same in every process and reload
/// (FNV-1a, not the randomized std hasher).
fn stable_id(name: &str, key: &KeyKind) -> u64 {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    name.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

/// The `name = "…"` of the table around a byte offset, for errors toml reports (at a key,
/// or at the table's `[[…]]` header for a missing field). Headers may be indented, as TOML
/// allows.
fn rule_name_around(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let header = |line: &str| line.trim_start_matches([' ', '\t']).starts_with('[');
    // The table starts at the offset's own line when that is a header, else at the last
    // header above it; it ends before the next header below that line.
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let mut start = 0;
    let mut at = 0;
    for line in text[..line_start].split_inclusive('\n') {
        if header(line) {
            start = at;
        }
        at += line.len();
    }
    if header(&text[line_start..]) {
        start = line_start;
    }
    let line_end = text[offset..]
        .find('\n')
        .map_or(text.len(), |i| offset + i + 1);
    let mut end = text.len();
    let mut at = line_end;
    for line in text[line_end..].split_inclusive('\n') {
        if header(line) {
            end = at;
            break;
        }
        at += line.len();
    }
    text[start..end].lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "name").then(|| v.trim().trim_matches('"').to_owned())
    })
}

#[cfg(test)]
mod tests;
