//! The fast path of [`normalize`](super::normalize) for international digits.
//!
//! `phonenumber::parse` followed by validity and type costs ≈ 14 µs: its regexes sit in a
//! 100-entry LRU cache behind a mutex that the ~2,500 patterns of the metadata keep
//! evicting, and it resolves the region three times. This module replays the same
//! algorithm, step for step, on `+` and ASCII digits only, with the same metadata's
//! patterns compiled once per calling code into small fully built DFAs (≈ 2 MiB for every
//! code; a search walks a table, with no cache pool), each region resolved once. Wherever the full parse would do something this replay does not model — strip a
//! national or carrier prefix, refuse the number, overflow — it answers `None` and the
//! caller falls back to the full parse. It must never give an answer the full parse would
//! not: `tests/phone_differential.rs` checks over a million generated numbers.

use std::sync::OnceLock;

use phonenumber::metadata::{Descriptor, Metadata, DATABASE};
use phonenumber::Type;
use regex::{Regex, RegexBuilder};
use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input};

use super::{Country, Destination, NumberType};

/// Calling codes are 1 to 3 digits.
const CODES: usize = 1000;

/// "Does `value` start with a match of the pattern": the crate's unanchored leftmost
/// `find` starting at 0.
enum Matcher {
    /// The pattern as a fully built DFA, anchored at the start: a search is a walk of a
    /// table, with no cache to take from a shared pool.
    Dfa(Box<dense::DFA<Vec<u32>>>),
    /// The few patterns whose DFA would be too large stay lazy regexes.
    Lazy(Regex),
}

impl Matcher {
    fn new(pattern: &str) -> Option<Matcher> {
        // The metadata's patterns are ASCII and the input is ASCII digits, so Unicode
        // classes (`\d`) and ASCII ones match the same here.
        let dfa = dense::Builder::new()
            .syntax(
                syntax::Config::new()
                    .unicode(false)
                    .utf8(false)
                    .ignore_whitespace(true),
            )
            .configure(
                dense::Config::new()
                    .start_kind(StartKind::Anchored)
                    .minimize(false)
                    .dfa_size_limit(Some(64 * 1024))
                    .determinize_size_limit(Some(1024 * 1024)),
            )
            .build(&format!("(?:{pattern}\n)"));
        match dfa {
            Ok(d) => Some(Matcher::Dfa(Box::new(d))),
            Err(_) => anchored(pattern).map(Matcher::Lazy),
        }
    }

    fn is_match(&self, value: &str) -> bool {
        match self {
            // Anchored, no quit bytes: the search cannot fail.
            Matcher::Dfa(d) => d
                .try_search_fwd(&Input::new(value).anchored(Anchored::Yes).earliest(true))
                .is_ok_and(|m| m.is_some()),
            Matcher::Lazy(re) => re.is_match(value),
        }
    }
}

/// One pattern of a descriptor: "does the national number start with a match, at one of
/// the possible lengths", as `Descriptor::is_match` has it.
struct Pattern {
    re: Matcher,
    /// Possible lengths; empty means any.
    lengths: Vec<u16>,
}

impl Pattern {
    fn new(d: &Descriptor) -> Option<Pattern> {
        Some(Pattern {
            re: Matcher::new(d.national_number().as_str())?,
            lengths: d.possible_length().to_vec(),
        })
    }

    fn is_match(&self, value: &str) -> bool {
        (self.lengths.is_empty() || self.lengths.contains(&(value.len() as u16)))
            && self.re.is_match(value)
    }
}

/// One region's metadata, compiled.
struct Region {
    country: Option<Country>,
    general: Pattern,
    /// Premium rate, toll free, shared cost, VoIP, personal, pager, UAN, voicemail: the
    /// order `validator::number_type` tries them in.
    ordered: Vec<(Type, Pattern)>,
    fixed_line: Option<Pattern>,
    mobile: Option<Pattern>,
    /// The fixed-line and mobile patterns are the same text.
    fixed_is_mobile: bool,
    /// `leading_digits`.
    leading: Option<Matcher>,
    /// `national_prefix_for_parsing` (the crate finds it anywhere; only a find at 0
    /// strips, and that is a match at the start).
    prefix_for_parsing: Option<Matcher>,
    national_prefix: Option<String>,
}

impl Region {
    fn new(m: &Metadata) -> Option<Region> {
        let d = m.descriptors();
        let mut ordered = Vec::new();
        for (t, desc) in super::ordered_descriptors(d) {
            if let Some(desc) = desc {
                ordered.push((t, Pattern::new(desc)?));
            }
        }
        let fixed_text = d.fixed_line().map(|f| f.national_number().as_str());
        let mobile_text = d.mobile().map(|f| f.national_number().as_str());
        Some(Region {
            country: Country::parse(m.id()),
            general: Pattern::new(d.general())?,
            ordered,
            fixed_line: match d.fixed_line() {
                Some(f) => Some(Pattern::new(f)?),
                None => None,
            },
            mobile: match d.mobile() {
                Some(f) => Some(Pattern::new(f)?),
                None => None,
            },
            fixed_is_mobile: fixed_text == mobile_text,
            leading: match m.leading_digits() {
                Some(r) => Some(Matcher::new(r.as_str())?),
                None => None,
            },
            prefix_for_parsing: match m.national_prefix_for_parsing() {
                Some(r) => Some(Matcher::new(r.as_str())?),
                None => None,
            },
            national_prefix: m.national_prefix().map(str::to_owned),
        })
    }

    /// `validator::number_type`.
    fn number_type(&self, value: &str) -> Type {
        if !self.general.is_match(value) {
            return Type::Unknown;
        }
        if let Some((t, _)) = self.ordered.iter().find(|(_, p)| p.is_match(value)) {
            return *t;
        }
        let matches = |p: &Option<Pattern>| p.as_ref().is_some_and(|p| p.is_match(value));
        if matches(&self.fixed_line) {
            if self.fixed_is_mobile || matches(&self.mobile) {
                return Type::FixedLineOrMobile;
            }
            return Type::FixedLine;
        }
        if matches(&self.mobile) {
            return Type::Mobile;
        }
        Type::Unknown
    }

    /// Whether the full parse would strip a national (or carrier) prefix from `national`:
    /// the one step this module does not replay.
    fn strips_prefix(&self, national: &str) -> bool {
        let np = |n: &str| {
            self.national_prefix
                .as_deref()
                .is_some_and(|p| n.starts_with(p))
        };
        match &self.prefix_for_parsing {
            Some(m) => m.is_match(national) || np(national),
            None => np(national),
        }
    }
}

/// Everything about one calling code.
struct Code {
    /// The regions of `Database::region`, in its order.
    regions: Vec<Region>,
    /// One region that `source_for` always picks (a single region, or non-geographic).
    single: bool,
}

impl Code {
    fn new(code: u16) -> Option<Code> {
        let names = DATABASE.region(&code)?;
        if names.len() == 1 {
            let meta = if names[0] == "001" {
                DATABASE.by_code(&code)?.into_iter().next()?
            } else {
                // `source_for` gives up on a region the crate's `Id` does not know.
                names[0].parse::<phonenumber::country::Id>().ok()?;
                DATABASE.by_id(names[0])?
            };
            return Some(Code {
                regions: vec![Region::new(meta)?],
                single: true,
            });
        }
        let mut regions = Vec::with_capacity(names.len());
        for name in names {
            name.parse::<phonenumber::country::Id>().ok()?;
            regions.push(Region::new(DATABASE.by_id(name)?)?);
        }
        Some(Code {
            regions,
            single: false,
        })
    }

    /// `validator::source_for`; with the region's `number_type` of `national` when
    /// choosing the region computed it (so that the caller need not do it again).
    fn source_for(&self, national: &str) -> Option<(&Region, Option<Type>)> {
        if self.single {
            return self.regions.first().map(|r| (r, None));
        }
        self.regions.iter().find_map(|r| match &r.leading {
            Some(re) => re.is_match(national).then_some((r, None)),
            None => {
                let t = r.number_type(national);
                (t != Type::Unknown).then_some((r, Some(t)))
            }
        })
    }
}

/// Per calling code: `None` inside when the code is unknown or could not be compiled
/// (then the full parse answers).
static TABLE: [OnceLock<Option<Code>>; CODES] = [const { OnceLock::new() }; CODES];

/// Which calling codes exist, for the code split of `helper::country_code`.
static KNOWN: OnceLock<Vec<bool>> = OnceLock::new();

fn known(code: usize) -> bool {
    KNOWN.get_or_init(|| {
        let mut k = vec![false; CODES];
        for m in DATABASE.iter() {
            if let Some(slot) = k.get_mut(usize::from(m.country_code())) {
                *slot = true;
            }
        }
        k
    })[code]
}

fn code(code: usize) -> Option<&'static Code> {
    TABLE
        .get(code)?
        .get_or_init(|| Code::new(code as u16))
        .as_ref()
}

fn anchored(pattern: &str) -> Option<Regex> {
    RegexBuilder::new(&format!("^(?:{pattern}\n)"))
        .ignore_whitespace(true)
        .build()
        .ok()
}

/// Builds the tables of every calling code now rather than at each code's first use
/// (a few milliseconds per code in release builds).
pub fn warm_up() {
    for c in 1..CODES {
        if known(c) {
            let _ = code(c);
        }
    }
}

/// Normalizes `digits`: the ASCII digits after a `+`. `None` means "ask the full parse",
/// never "invalid".
pub fn normalize(digits: &str) -> Option<Destination> {
    let b = digits.as_bytes();
    // helper::country_code: more than two digits, no leading 0, the shortest known code.
    if b.len() <= 2 || b[0] == b'0' || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut value = 0usize;
    let mut split = None;
    for (i, &c) in b.iter().take(3).enumerate() {
        value = value * 10 + usize::from(c - b'0');
        if known(value) {
            split = Some((i + 1, value));
            break;
        }
    }
    let (cc_len, cc) = split?;
    let national = &digits[cc_len..];
    let calling = code(cc)?;
    let value_str = national.trim_start_matches('0');
    // NationalNumber: no empty value, nothing the crate or E.164 would call too long.
    if national.len() < 2 || value_str.is_empty() || cc_len + national.len() > 15 {
        return None;
    }
    // The full parse strips a national prefix only if the region chosen for the value
    // without its leading zeros has one.
    let without_zeros = calling.source_for(value_str);
    if without_zeros.is_some_and(|(r, _)| r.strips_prefix(national)) {
        return None;
    }
    let national_value: u64 = value_str.parse().ok()?;
    let e164: u64 = digits.parse().ok()?;
    // Region, type and validity read the national number with its leading zeros (as
    // `normalize_full` does: +39 02… is an Italian fixed line); most numbers have none.
    let source = if national.len() == value_str.len() {
        without_zeros
    } else {
        calling.source_for(national)
    };
    let region = source.map(|(r, _)| r);
    let t = match source {
        Some((_, Some(t))) => t,
        Some((r, None)) => r.number_type(national),
        None => Type::Unknown,
    };
    let valid = t != Type::Unknown;
    let (country, number_type) = match region {
        Some(r) => (r.country, NumberType::from_metadata(t)),
        None => (None, NumberType::Unknown),
    };
    debug_assert!(national_value > 0);
    Some(Destination {
        digits: e164,
        calling_code: cc as u16,
        country,
        number_type,
        valid,
    })
}

#[cfg(test)]
mod tests {
    /// How the compiled tables of every known calling code are held: (patterns as DFAs,
    /// patterns left lazy, bytes of the DFAs). Builds every table.
    fn table_stats() -> (usize, usize, usize) {
        super::warm_up();
        let (mut dfa, mut lazy, mut bytes) = (0, 0, 0);
        let mut count = |m: &super::Matcher| match m {
            super::Matcher::Dfa(d) => {
                dfa += 1;
                bytes += d.memory_usage();
            }
            super::Matcher::Lazy(_) => lazy += 1,
        };
        for slot in &super::TABLE {
            for r in slot
                .get()
                .and_then(Option::as_ref)
                .map_or(&[][..], |c| &c.regions[..])
            {
                let patterns = std::iter::once(&r.general)
                    .chain(r.ordered.iter().map(|(_, p)| p))
                    .chain(r.fixed_line.iter())
                    .chain(r.mobile.iter());
                for p in patterns {
                    count(&p.re);
                }
                for m in r.leading.iter().chain(r.prefix_for_parsing.iter()) {
                    count(m);
                }
            }
        }
        (dfa, lazy, bytes)
    }

    #[test]
    fn nearly_every_pattern_is_a_small_dfa() {
        let (dfa, lazy, bytes) = table_stats();
        println!("{dfa} DFAs ({} KiB), {lazy} lazy", bytes / 1024);
        assert!(dfa > 1000, "{dfa}");
        assert!(lazy * 100 <= dfa, "{lazy} of {dfa} left lazy");
        assert!(bytes < 64 * 1024 * 1024, "{bytes}");
    }
}
