//! The `[[heuristic]]` and `[prices]` tables: schema checks and compiled types.
//!
//! Each heuristic kind takes its own fields; a field that does not apply to the kind is
//! an error (a typo in a fraud rule must fail loudly), and so is a missing one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{stable_id, At, Compiler, HeuristicDef, KeyKind, Mode, PricesDef};
use crate::clock::parse_duration;
use crate::phone::Country;
use crate::providers::{Kinds, RequestKind};

/// What a heuristic looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// Requests and distinct numbers per prefix in a window.
    PrefixVelocity {
        /// Prefix lengths: digits dropped from the end.
        drop: Vec<u32>,
        /// The window.
        window: Duration,
        /// Most requests per prefix.
        max_requests: Option<u64>,
        /// Most distinct numbers per prefix.
        max_distinct: Option<u64>,
    },
    /// Many distinct numbers close to each other (a range walk).
    AdjacentNumbers {
        /// Numbers at most this far apart are neighbours.
        distance: u64,
        /// The window.
        window: Duration,
        /// Refuse when a number has this many neighbours already.
        max_near: u64,
    },
    /// Sends vs verified per prefix or country.
    ConversionRate {
        /// `Prefix { drop }` or `Country`.
        key: KeyKind,
        /// The window.
        window: Duration,
        /// No verdict below this many sends.
        min_sends: u64,
        /// Refuse below this share verified.
        min_rate: f64,
    },
    /// A per-country cap that follows the country's verified history.
    CountryBudget {
        /// The window capped.
        window: Duration,
        /// The window of the verified baseline.
        baseline_window: Duration,
        /// The cap never goes below this.
        floor: u64,
        /// The cap is this multiple of the baseline (scaled to `window`).
        multiplier: f64,
        /// An absolute cap.
        max: Option<u64>,
    },
    /// Estimated spend budgets.
    SpendBudget {
        /// Global per hour.
        hourly: Option<f64>,
        /// Global per day.
        daily: Option<f64>,
        /// Per country per hour.
        country_hourly: Option<f64>,
        /// Per country per day.
        country_daily: Option<f64>,
    },
    /// One IP or subnet sending to many numbers or countries.
    IpSpread {
        /// `Ip` or `Subnet`.
        key: KeyKind,
        /// The window.
        window: Duration,
        /// Most distinct destination countries.
        max_countries: Option<u64>,
        /// Most distinct numbers.
        max_numbers: Option<u64>,
    },
}

/// The largest distinct-count threshold a window can reach (it keeps `u16::MAX` members).
const MAX_MEMBERS: u64 = u16::MAX as u64 - 1;

/// A compiled heuristic.
#[derive(Debug, Clone)]
pub struct HeuristicRule {
    /// The name.
    pub name: Arc<str>,
    /// Stable id for store keys.
    pub id: u64,
    /// Enforce or shadow.
    pub mode: Mode,
    /// Which request kinds it looks at.
    pub kinds: Kinds,
    /// Auto-block the offending key for this long (doubling on repeat offences).
    pub block_for: Option<Duration>,
    /// The longest auto-block.
    pub max_block: Duration,
    /// What it checks.
    pub check: Check,
}

/// Prices per SMS segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Prices {
    /// The currency of every figure.
    pub currency: String,
    /// For countries not listed.
    pub default: f64,
    /// Per country.
    pub countries: HashMap<Country, f64>,
}

impl Prices {
    /// The price of one segment to `country`.
    pub fn per_segment(&self, country: Option<Country>) -> f64 {
        country
            .and_then(|c| self.countries.get(&c).copied())
            .unwrap_or(self.default)
    }
}

impl Compiler {
    pub(super) fn prices(&mut self, file: &str, line: usize, d: PricesDef) {
        let at = At {
            file,
            line,
            rule: "prices",
        };
        if self.set.prices.is_some() {
            return self.err(&at, "a second [prices] table (there can be one)");
        }
        let mut countries = HashMap::new();
        let mut ok = d.default.is_finite() && d.default >= 0.0;
        if !ok {
            self.err(&at, "default must be a price of zero or more");
        }
        for (c, p) in d.countries {
            match Country::parse(&c) {
                Some(cc) if p.is_finite() && p >= 0.0 => {
                    countries.insert(cc, p);
                }
                Some(_) => {
                    ok = false;
                    self.err(&at, format!("countries.{c}: a price must be zero or more"));
                }
                None => {
                    ok = false;
                    self.err(
                        &at,
                        format!("countries: {c:?} is not a country code (ISO 3166-1 alpha-2 with a numbering plan, e.g. GB, not UK)"),
                    );
                }
            }
        }
        if ok {
            self.set.prices = Some(Prices {
                currency: d.currency,
                default: d.default,
                countries,
            });
        }
    }

    pub(super) fn heuristic(&mut self, file: &str, line: usize, d: HeuristicDef) {
        let at = At {
            file,
            line,
            rule: &d.name,
        };
        if !self.name(&at, "heuristic", d.mode) {
            return;
        }
        let before = self.errors.len();
        let given: [(&str, bool); 22] = [
            ("window", d.window.is_some()),
            ("drop_digits", d.drop_digits.is_some()),
            ("key", d.key.is_some()),
            ("max_requests", d.max_requests.is_some()),
            ("max_distinct", d.max_distinct.is_some()),
            ("distance", d.distance.is_some()),
            ("max_near", d.max_near.is_some()),
            ("min_sends", d.min_sends.is_some()),
            ("min_rate", d.min_rate.is_some()),
            ("baseline_window", d.baseline_window.is_some()),
            ("floor", d.floor.is_some()),
            ("multiplier", d.multiplier.is_some()),
            ("max", d.max.is_some()),
            ("hourly", d.hourly.is_some()),
            ("daily", d.daily.is_some()),
            ("country_hourly", d.country_hourly.is_some()),
            ("country_daily", d.country_daily.is_some()),
            ("max_countries", d.max_countries.is_some()),
            ("max_numbers", d.max_numbers.is_some()),
            ("ipv4_prefix", d.ipv4_prefix.is_some()),
            ("ipv6_prefix", d.ipv6_prefix.is_some()),
            ("max_block", d.max_block.is_some()),
        ];
        let allowed: &[&str] = match d.kind.as_str() {
            "prefix_velocity" => &["window", "drop_digits", "max_requests", "max_distinct", "max_block"],
            "adjacent_numbers" => &["window", "distance", "max_near", "max_block"],
            "conversion_rate" => &["window", "key", "drop_digits", "min_sends", "min_rate", "max_block"],
            "country_budget" => &["window", "baseline_window", "floor", "multiplier", "max", "max_block"],
            "spend_budget" => &["hourly", "daily", "country_hourly", "country_daily"],
            "ip_spread" => &["window", "key", "ipv4_prefix", "ipv6_prefix", "max_countries", "max_numbers", "max_block"],
            other => {
                return self.err(
                    &at,
                    format!("unknown kind {other:?}: expected prefix_velocity, adjacent_numbers, conversion_rate, country_budget, spend_budget or ip_spread"),
                )
            }
        };
        for (field, present) in given {
            if present && !allowed.contains(&field) {
                self.err(
                    &at,
                    format!("{field} does not apply to kind = {:?}", d.kind),
                );
            }
        }
        // A window keeps at most u16::MAX distinct members, so a count saturates just
        // above that: a larger threshold could never be reached.
        for (field, value) in [
            ("max_distinct", d.max_distinct),
            ("max_near", d.max_near),
            ("max_countries", d.max_countries),
            ("max_numbers", d.max_numbers),
        ] {
            if value.is_some_and(|v| v > MAX_MEMBERS) {
                self.err(&at, format!("{field} must be at most {MAX_MEMBERS}"));
            }
        }
        let window = match d.window.as_deref().map(|w| (w, parse_duration(w))) {
            Some((_, Some(w))) if !w.is_zero() => Some(w),
            Some((w, _)) => {
                self.err(
                    &at,
                    format!("window: {w:?} is not a duration such as \"10m\""),
                );
                None
            }
            None => None,
        };
        let need =
            |c: &mut Compiler, what: &str| c.err(&at, format!("kind = {:?} needs {what}", d.kind));
        let check = match d.kind.as_str() {
            "prefix_velocity" => {
                let drop = d.drop_digits.clone().unwrap_or_else(|| vec![3, 4]);
                if drop.is_empty() || drop.iter().any(|n| !(1..=12).contains(n)) {
                    self.err(&at, "drop_digits must list numbers between 1 and 12");
                }
                // The same block twice would count each request twice against
                // max_requests.
                if let Some(n) = drop
                    .iter()
                    .enumerate()
                    .find_map(|(i, n)| drop[..i].contains(n).then_some(n))
                {
                    self.err(&at, format!("drop_digits lists {n} twice"));
                }
                if d.max_requests.is_none() && d.max_distinct.is_none() {
                    need(self, "max_requests or max_distinct");
                }
                window.map(|window| Check::PrefixVelocity {
                    drop,
                    window,
                    max_requests: d.max_requests,
                    max_distinct: d.max_distinct,
                })
            }
            "adjacent_numbers" => match (d.distance, d.max_near) {
                (Some(distance), Some(max_near)) if distance > 0 && max_near > 0 => {
                    window.map(|window| Check::AdjacentNumbers {
                        distance,
                        window,
                        max_near,
                    })
                }
                _ => {
                    need(self, "distance and max_near above 0");
                    None
                }
            },
            "conversion_rate" => {
                let key = match (d.key.as_deref(), d.drop_digits.as_deref()) {
                    (Some("country"), None) => Some(KeyKind::Country),
                    (Some("prefix"), Some([n])) if (1..=12).contains(n) => {
                        Some(KeyKind::Prefix { drop: *n })
                    }
                    _ => {
                        need(
                            self,
                            "key = \"country\", or key = \"prefix\" with drop_digits = [N]",
                        );
                        None
                    }
                };
                let rate = d.min_rate.filter(|r| (0.0..=1.0).contains(r));
                if rate.is_none() {
                    need(self, "min_rate between 0 and 1");
                }
                match (key, window, rate) {
                    (Some(key), Some(window), Some(min_rate)) => Some(Check::ConversionRate {
                        key,
                        window,
                        min_sends: d.min_sends.unwrap_or(20),
                        min_rate,
                    }),
                    _ => None,
                }
            }
            "country_budget" => {
                let baseline = d
                    .baseline_window
                    .as_deref()
                    .and_then(parse_duration)
                    .filter(|b| !b.is_zero());
                let multiplier = d.multiplier.filter(|m| m.is_finite() && *m > 0.0);
                match (window, baseline, d.floor, multiplier) {
                    (Some(window), Some(baseline_window), Some(floor), Some(multiplier)) => {
                        Some(Check::CountryBudget {
                            window,
                            baseline_window,
                            floor,
                            multiplier,
                            max: d.max,
                        })
                    }
                    _ => {
                        need(self, "window, baseline_window, floor and multiplier (> 0)");
                        None
                    }
                }
            }
            "spend_budget" => {
                let budgets = [d.hourly, d.daily, d.country_hourly, d.country_daily];
                if budgets.iter().all(Option::is_none) {
                    need(
                        self,
                        "at least one of hourly, daily, country_hourly, country_daily",
                    );
                }
                if budgets.iter().flatten().any(|b| !b.is_finite() || *b < 0.0) {
                    self.err(&at, "budgets must be zero or more");
                }
                Some(Check::SpendBudget {
                    hourly: d.hourly,
                    daily: d.daily,
                    country_hourly: d.country_hourly,
                    country_daily: d.country_daily,
                })
            }
            "ip_spread" => {
                let key = match d.key.as_deref().unwrap_or("ip") {
                    "ip" if d.ipv4_prefix.is_some() || d.ipv6_prefix.is_some() => {
                        self.err(
                            &at,
                            "ipv4_prefix / ipv6_prefix only apply to key = \"subnet\"",
                        );
                        None
                    }
                    "ip" => Some(KeyKind::Ip),
                    "subnet" => match (d.ipv4_prefix.unwrap_or(24), d.ipv6_prefix.unwrap_or(56)) {
                        (v4, v6) if v4 <= 32 && v6 <= 128 => Some(KeyKind::Subnet { v4, v6 }),
                        _ => {
                            self.err(
                                &at,
                                "ipv4_prefix must be at most 32 and ipv6_prefix at most 128",
                            );
                            None
                        }
                    },
                    _ => {
                        need(self, "key = \"ip\" or \"subnet\"");
                        None
                    }
                };
                if d.max_countries.is_none() && d.max_numbers.is_none() {
                    need(self, "max_countries or max_numbers");
                }
                match (key, window) {
                    (Some(key), Some(window)) => Some(Check::IpSpread {
                        key,
                        window,
                        max_countries: d.max_countries,
                        max_numbers: d.max_numbers,
                    }),
                    _ => None,
                }
            }
            _ => None,
        };
        if window.is_none() && allowed.contains(&"window") && d.window.is_none() {
            need(self, "window");
        }
        let block_for = match d.block_for.as_deref() {
            None => None,
            Some(b) => match parse_duration(b) {
                Some(b) if !b.is_zero() && d.kind != "spend_budget" => Some(b),
                Some(_) if d.kind == "spend_budget" => {
                    self.err(&at, "block_for does not apply to kind = \"spend_budget\"");
                    None
                }
                _ => {
                    self.err(
                        &at,
                        format!("block_for: {b:?} is not a duration such as \"30m\""),
                    );
                    None
                }
            },
        };
        let max_block = match d.max_block.as_deref() {
            None => Duration::from_secs(24 * 3600),
            Some(m) => parse_duration(m).unwrap_or_else(|| {
                self.err(&at, format!("max_block: {m:?} is not a duration"));
                Duration::ZERO
            }),
        };
        if let (Some(b), Some(m)) = (block_for, d.max_block.as_deref()) {
            if parse_duration(m).is_some_and(|m| m < b) {
                let b = d.block_for.as_deref().unwrap_or_default();
                self.err(
                    &at,
                    format!("max_block ({m:?}) must be at least block_for ({b:?})"),
                );
            }
        }
        let kinds = match &d.kinds {
            None => [RequestKind::Send, RequestKind::VerifyStart]
                .into_iter()
                .collect(),
            Some(list) => list
                .iter()
                .filter_map(|k| RequestKind::parse(k))
                .collect::<Kinds>(),
        };
        if d.kinds
            .as_ref()
            .is_some_and(|l| l.len() != kinds.len() || l.is_empty())
        {
            self.err(
                &at,
                "kinds: expected a non-empty list of send, verify_start, verify_check",
            );
        }
        let _ = d.description;
        let Some(check) = check else { return };
        if self.errors.len() > before || d.mode == Mode::Off {
            return;
        }
        self.set.heuristics.push(HeuristicRule {
            id: stable_id(&d.name, &KeyKind::Global) ^ 0x4855_5249_5354_4943,
            name: Arc::from(d.name.as_str()),
            mode: d.mode,
            kinds,
            block_for,
            max_block,
            check,
        });
    }
}
