//! The fast path of [`normalize`](super::normalize) for international digits.
//!
//! `phonenumber::parse` followed by validity and type costs ≈ 14 µs: its regexes sit in a
//! 100-entry LRU cache behind a mutex that the ~2,500 patterns of the metadata keep
//! evicting, and it resolves the region three times. This module replays the same
//! algorithm, step for step, on `+` and ASCII digits only, with regexes compiled once per
//! calling code (at that code's first use) from the same metadata, each region resolved
//! once. Wherever the full parse would do something this replay does not model — strip a
//! national or carrier prefix, refuse the number, overflow — it answers `None` and the
//! caller falls back to the full parse. It must never give an answer the full parse would
//! not: `tests/phone_differential.rs` checks over a million generated numbers.

use std::sync::OnceLock;

use phonenumber::metadata::{Descriptor, Metadata, DATABASE};
use phonenumber::Type;
use regex::{Regex, RegexBuilder};

use super::{Country, Destination, NumberType};

/// Calling codes are 1 to 3 digits.
const CODES: usize = 1000;

/// One pattern of a descriptor: "does the national number start with a match, at one of
/// the possible lengths", as `Descriptor::is_match` has it.
struct Pattern {
    /// `^(?:pattern)`: a match at the start exists iff the crate's unanchored leftmost
    /// `find` starts at 0.
    re: Regex,
    /// Possible lengths; empty means any.
    lengths: Vec<u16>,
}

impl Pattern {
    fn new(d: &Descriptor) -> Option<Pattern> {
        Some(Pattern {
            re: anchored(d.national_number().as_str())?,
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
    /// `leading_digits`, anchored.
    leading: Option<Regex>,
    /// `national_prefix_for_parsing`, as written (unanchored, like the crate uses it).
    prefix_for_parsing: Option<Regex>,
    national_prefix: Option<String>,
}

impl Region {
    fn new(m: &Metadata) -> Option<Region> {
        let d = m.descriptors();
        let mut ordered = Vec::new();
        for (t, desc) in [
            (Type::PremiumRate, d.premium_rate()),
            (Type::TollFree, d.toll_free()),
            (Type::SharedCost, d.shared_cost()),
            (Type::Voip, d.voip()),
            (Type::PersonalNumber, d.personal_number()),
            (Type::Pager, d.pager()),
            (Type::Uan, d.uan()),
            (Type::Voicemail, d.voicemail()),
        ] {
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
                Some(r) => Some(anchored(r.as_str())?),
                None => None,
            },
            prefix_for_parsing: match m.national_prefix_for_parsing() {
                Some(r) => Some(compile(r.as_str())?),
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
            Some(re) => re.find(national).is_some_and(|m| m.start() == 0) || np(national),
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

    /// `validator::source_for`.
    fn source_for(&self, national: &str) -> Option<&Region> {
        if self.single {
            return self.regions.first();
        }
        self.regions.iter().find(|r| match &r.leading {
            Some(re) => re.is_match(national),
            None => r.number_type(national) != Type::Unknown,
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

fn compile(pattern: &str) -> Option<Regex> {
    RegexBuilder::new(pattern)
        .ignore_whitespace(true)
        .build()
        .ok()
}

fn anchored(pattern: &str) -> Option<Regex> {
    compile(&format!("^(?:{pattern}\n)"))
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
    let region = calling.source_for(value_str);
    if region.is_some_and(|r| r.strips_prefix(national)) {
        return None;
    }
    let national_value: u64 = value_str.parse().ok()?;
    let e164: u64 = digits.parse().ok()?;
    // PhoneNumber::metadata and ::number_type read the value without leading zeros;
    // is_valid_with reads it with them.
    let t = region.map_or(Type::Unknown, |r| r.number_type(value_str));
    let valid = if national.len() == value_str.len() {
        t != Type::Unknown
    } else {
        calling
            .source_for(national)
            .is_some_and(|r| r.number_type(national) != Type::Unknown)
    };
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
