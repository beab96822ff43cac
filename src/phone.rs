//! Phone-number normalization into a [`Destination`].
//!
//! Every recipient a provider preset finds goes through [`normalize`] before any rule sees
//! it: the result carries the E.164 digits, the real ISO country (so +1 numbers of
//! Caribbean nations are not "US"), the number type and validity, all from the
//! `phonenumber` crate's metadata. A [`Destination`] is `Copy` and fits in 16 bytes, so
//! the decision path never allocates for it. This module never logs a number.

use std::fmt;
use std::str::FromStr;

use phonenumber::metadata::DATABASE;
use phonenumber::Type;

/// An ISO 3166-1 alpha-2 country code, upper case.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    /// Parses a two-letter code, any case (`"us"`, `"GB"`); `None` if it is not two
    /// letters or names no country of the numbering metadata (`"UK"` for `GB`): no number
    /// would ever be of it, so a rule naming it would silently match nothing.
    pub fn parse(s: &str) -> Option<Country> {
        let b = s.as_bytes();
        if b.len() != 2 || !b.iter().all(u8::is_ascii_alphabetic) {
            return None;
        }
        let c = Country([b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()]);
        DATABASE.by_id(c.as_str()).map(|_| c)
    }

    /// The code as a string slice, e.g. `"US"`.
    pub fn as_str(&self) -> &str {
        // Invariant: only built from two ASCII letters.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    fn to_id(self) -> Option<phonenumber::country::Id> {
        phonenumber::country::Id::from_str(self.as_str()).ok()
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of line a number is, from the numbering plan's metadata.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum NumberType {
    /// A mobile number.
    Mobile,
    /// A fixed-line (landline) number.
    FixedLine,
    /// Fixed line or mobile: the plan does not tell them apart (e.g. the USA).
    FixedLineOrMobile,
    /// Voice over IP.
    Voip,
    /// Premium rate: the classic toll-fraud destination.
    PremiumRate,
    /// Shared cost.
    SharedCost,
    /// Freephone.
    TollFree,
    /// A personal (follow-me) number.
    PersonalNumber,
    /// A pager.
    Pager,
    /// A universal access (company) number.
    Uan,
    /// Voicemail access.
    Voicemail,
    /// Anything else, or a number that matches no pattern of its region.
    Unknown,
}

impl NumberType {
    /// Every type, in a stable order.
    pub const ALL: [NumberType; 12] = [
        NumberType::Mobile,
        NumberType::FixedLine,
        NumberType::FixedLineOrMobile,
        NumberType::Voip,
        NumberType::PremiumRate,
        NumberType::SharedCost,
        NumberType::TollFree,
        NumberType::PersonalNumber,
        NumberType::Pager,
        NumberType::Uan,
        NumberType::Voicemail,
        NumberType::Unknown,
    ];

    /// The snake_case name used in rule files, metrics and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            NumberType::Mobile => "mobile",
            NumberType::FixedLine => "fixed_line",
            NumberType::FixedLineOrMobile => "fixed_line_or_mobile",
            NumberType::Voip => "voip",
            NumberType::PremiumRate => "premium_rate",
            NumberType::SharedCost => "shared_cost",
            NumberType::TollFree => "toll_free",
            NumberType::PersonalNumber => "personal_number",
            NumberType::Pager => "pager",
            NumberType::Uan => "uan",
            NumberType::Voicemail => "voicemail",
            NumberType::Unknown => "unknown",
        }
    }

    /// The inverse of [`NumberType::as_str`].
    pub fn parse(s: &str) -> Option<NumberType> {
        NumberType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    fn from_metadata(t: Type) -> NumberType {
        match t {
            Type::Mobile => NumberType::Mobile,
            Type::FixedLine => NumberType::FixedLine,
            Type::FixedLineOrMobile => NumberType::FixedLineOrMobile,
            Type::Voip => NumberType::Voip,
            Type::PremiumRate => NumberType::PremiumRate,
            Type::SharedCost => NumberType::SharedCost,
            Type::TollFree => NumberType::TollFree,
            Type::PersonalNumber => NumberType::PersonalNumber,
            Type::Pager => NumberType::Pager,
            Type::Uan => NumberType::Uan,
            Type::Voicemail => NumberType::Voicemail,
            _ => NumberType::Unknown,
        }
    }
}

/// How a route's recipients are written.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberFormat {
    /// `+` and the international digits; a number without `+` is national, read with the
    /// default region (and without one, not a number).
    #[default]
    E164,
    /// International digits without `+` (Vonage, Infobip, Sinch accept this).
    InternationalDigits,
    /// National format in the route's default region.
    National,
}

/// A recipient, normalized.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    /// The E.164 digits without `+` (at most 15 digits, so they fit a `u64`).
    digits: u64,
    /// The country calling code (1, 44, 882 …).
    calling_code: u16,
    /// The real country, `None` for non-geographic codes (+800, +882, +883 …).
    country: Option<Country>,
    /// The line type.
    number_type: NumberType,
    /// Whether the number matches its region's numbering plan.
    valid: bool,
}

impl fmt::Debug for Destination {
    // Numbers are personal data: Debug output shows only the country and type.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Destination")
            .field("country", &self.country)
            .field("type", &self.number_type)
            .field("valid", &self.valid)
            .finish_non_exhaustive()
    }
}

impl Destination {
    /// The E.164 digits as an integer (no `+`).
    pub fn digits(&self) -> u64 {
        self.digits
    }

    /// The number in E.164, e.g. `+14155550123`.
    pub fn e164(&self) -> String {
        format!("+{}", self.digits)
    }

    /// The number of digits in the E.164 form.
    pub fn len(&self) -> u32 {
        self.digits.checked_ilog10().map_or(1, |l| l + 1)
    }

    /// Never true: a destination has at least one digit. Here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The number without its last `drop` digits (at least the calling code remains).
    pub fn prefix(&self, drop: u32) -> u64 {
        let keep_min = self.calling_code.checked_ilog10().map_or(1, |l| l + 1);
        let drop = drop.min(self.len().saturating_sub(keep_min));
        self.digits / 10u64.pow(drop)
    }

    /// The country calling code.
    pub fn calling_code(&self) -> u16 {
        self.calling_code
    }

    /// The ISO country, `None` for non-geographic numbers.
    pub fn country(&self) -> Option<Country> {
        self.country
    }

    /// The line type.
    pub fn number_type(&self) -> NumberType {
        self.number_type
    }

    /// Whether the number is valid in its numbering plan.
    pub fn is_valid(&self) -> bool {
        self.valid
    }

    /// Whether the E.164 digits start with `prefix_digits` (an E.164 prefix without `+`).
    pub fn has_prefix(&self, prefix: &DigitPrefix) -> bool {
        let len = self.len();
        len >= prefix.len && self.digits / 10u64.pow(len - prefix.len) == prefix.value
    }
}

/// An E.164 prefix such as `+4479`, compiled for fast matching.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct DigitPrefix {
    /// The prefix digits as an integer.
    value: u64,
    /// How many digits it has.
    len: u32,
}

impl DigitPrefix {
    /// Parses `+4479` or `4479` (1 to 15 digits).
    pub fn parse(s: &str) -> Option<DigitPrefix> {
        let d = s.strip_prefix('+').unwrap_or(s);
        if d.is_empty()
            || d.len() > 15
            || !d.bytes().all(|b| b.is_ascii_digit())
            || d.starts_with('0')
        {
            return None;
        }
        Some(DigitPrefix {
            value: d.parse().ok()?,
            len: d.len() as u32,
        })
    }
}

/// Why a string could not be read as a phone number at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// Nothing that looks like a number.
    #[error("not a phone number")]
    NotANumber,
    /// A national number and no region to read it in.
    #[error("a national number with no default region to read it in")]
    NoRegion,
    /// More digits than E.164 allows.
    #[error("too long for E.164")]
    TooLong,
}

/// Normalizes one recipient as written by a client.
///
/// `Err` means the string could not be read as a number (or is written with more than
/// digits, a leading `+` and the separators ` -.()`, which providers may read otherwise);
/// `Ok` with `is_valid() == false` means it parsed but matches no numbering plan. Both are
/// refused as `invalid_number`.
///
/// International digits (`+` and ASCII digits, or bare digits read as international) go
/// through [`fast`], a table built once from the same metadata; anything it is not sure
/// about, and every other shape, goes through the full `phonenumber` parse
/// ([`normalize_full`]). Both give the same answer (`tests/phone_differential.rs`).
pub fn normalize(
    raw: &str,
    format: NumberFormat,
    default_region: Option<Country>,
) -> Result<Destination, PhoneError> {
    let trimmed = raw.trim();
    if let Some(digits) = international_digits(trimmed, format) {
        if let Some(d) = fast::normalize(digits) {
            return Ok(d);
        }
    }
    normalize_full(raw, format, default_region)
}

/// Loads the numbering metadata and builds the fast tables of every calling code now
/// (about 0.4 s of CPU and 2 MiB of DFAs), so that no request waits for them: the
/// busiest codes first.
pub fn warm_up() {
    const COMMON: [&str; 16] = [
        "+14155550123",
        "+447400123456",
        "+4915112345678",
        "+33612345678",
        "+919812345678",
        "+5511912345678",
        "+61412345678",
        "+819012345678",
        "+8613812345678",
        "+34612345678",
        "+393123456789",
        "+525512345678",
        "+27821234567",
        "+2348031234567",
        "+6281234567890",
        "+639171234567",
    ];
    for n in COMMON {
        let _ = normalize(n, NumberFormat::E164, None);
    }
    fast::warm_up();
}

/// The ASCII digits after the calling code's `+`, when `raw` (trimmed) is read as an
/// international number by [`normalize_full`] and is nothing but digits.
fn international_digits(raw: &str, format: NumberFormat) -> Option<&str> {
    if raw.is_empty() || raw.len() > 64 {
        return None;
    }
    let digits = if let Some(d) = raw.strip_prefix('+') {
        d
    } else if format == NumberFormat::InternationalDigits {
        raw.strip_prefix("00").unwrap_or(raw)
    } else {
        return None;
    };
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// Whether `raw` (trimmed) is an optional leading `+` and then ASCII digits and the
/// separators ` -.()` only: what every provider reads as the same digits.
///
/// `phonenumber` reads far more, in ways a provider need not share: letters as keypad
/// digits (`+499A001234567` is a German fixed line to it, and +49 900 1234567, premium
/// rate, to a provider that drops letters), everything after an extension mark (`,` `;`
/// `#` `~` `x` `ext`) dropped (`+6619001234,56` is a Thai fixed line to it, +66 1900
/// 123456, premium rate, to a provider that drops punctuation), leading and trailing
/// junk, several `+`, `tel:` URIs, Unicode spaces and dashes. Such a recipient is not a
/// number here, and so refused as `invalid_number`.
fn plainly_written(raw: &str) -> bool {
    raw.strip_prefix('+')
        .unwrap_or(raw)
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b' ' | b'-' | b'.' | b'(' | b')'))
}

/// The reference path: every recipient through the full `phonenumber` parse, validity and
/// type. [`normalize`] gives the same result faster; this is public for the differential
/// test and the benches.
pub fn normalize_full(
    raw: &str,
    format: NumberFormat,
    default_region: Option<Country>,
) -> Result<Destination, PhoneError> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > 64 || !plainly_written(raw) {
        return Err(PhoneError::NotANumber);
    }
    let parsed = if raw.starts_with('+') {
        phonenumber::parse(None, raw)
    } else if format == NumberFormat::InternationalDigits {
        // Vonage-style digits: international, as those providers read them.
        let digits = raw.strip_prefix("00").unwrap_or(raw);
        phonenumber::parse(None, format!("+{digits}"))
    } else {
        // An E.164 route's number without its `+` is national: Twilio reads it in its
        // sender's country (`6589068136` is Jamaica to a US sender, Singapore read as
        // international), so only the route's region can say which it is.
        let region = default_region
            .and_then(Country::to_id)
            .ok_or(PhoneError::NoRegion)?;
        phonenumber::parse(Some(region), raw)
    }
    .map_err(|_| PhoneError::NotANumber)?;

    let calling_code = parsed.code().value();
    let national = parsed.national().value();
    let national_len =
        national.checked_ilog10().map_or(1, |l| l + 1) + parsed.national().zeros() as u32;
    let cc_len = calling_code.checked_ilog10().map_or(1, |l| l + 1);
    if cc_len + national_len > 15 {
        return Err(PhoneError::TooLong);
    }
    let digits = u64::from(calling_code) * 10u64.pow(national_len) + national;

    let valid = parsed.is_valid_with(&DATABASE);
    // `PhoneNumber::metadata` and `::number_type` read the national number without its
    // leading zeros (`is_valid_with` reads it with them): +39 02 1234 5678 would be a
    // valid number of no country, outside every rule on IT. Read with its zeros, as
    // libphonenumber does.
    let zeros = parsed.national().zeros() as usize;
    let (country, number_type) = if zeros > 0 {
        let national = format!("{}{national}", "0".repeat(zeros));
        match region_and_type(calling_code, &national) {
            Some((m, t)) => (Country::parse(m.id()), NumberType::from_metadata(t)),
            None => (None, NumberType::Unknown),
        }
    } else {
        match parsed.metadata(&DATABASE) {
            Some(m) => (
                Country::parse(m.id()),
                NumberType::from_metadata(parsed.number_type(&DATABASE)),
            ),
            None => (None, NumberType::Unknown),
        }
    };
    Ok(Destination {
        digits,
        calling_code,
        country,
        number_type,
        valid,
    })
}

/// The region `phonenumber` picks for `national` (with its leading zeros) under `code`,
/// and the number's type there: the crate's `source_for` and `number_type`, which its
/// public API offers only on the national number without its zeros.
fn region_and_type(code: u16, national: &str) -> Option<(&'static phonenumber::Metadata, Type)> {
    let regions = DATABASE.region(&code)?;
    if let [only] = regions[..] {
        let m = if only == "001" {
            DATABASE.by_code(&code)?.into_iter().next()?
        } else {
            only.parse::<phonenumber::country::Id>().ok()?;
            DATABASE.by_id(only)?
        };
        return Some((m, type_in(m, national)));
    }
    regions.into_iter().find_map(|r| {
        r.parse::<phonenumber::country::Id>().ok()?;
        let m = DATABASE.by_id(r)?;
        match m.leading_digits() {
            Some(re) => re
                .find(national)
                .is_some_and(|f| f.start() == 0)
                .then(|| (m, type_in(m, national))),
            None => Some((m, type_in(m, national))).filter(|(_, t)| *t != Type::Unknown),
        }
    })
}

/// The descriptors `phonenumber`'s `validator::number_type` tries before fixed line and
/// mobile, in its order (the full and the fast path both follow it).
fn ordered_descriptors(
    d: &phonenumber::metadata::Descriptors,
) -> [(Type, Option<&phonenumber::metadata::Descriptor>); 8] {
    [
        (Type::PremiumRate, d.premium_rate()),
        (Type::TollFree, d.toll_free()),
        (Type::SharedCost, d.shared_cost()),
        (Type::Voip, d.voip()),
        (Type::PersonalNumber, d.personal_number()),
        (Type::Pager, d.pager()),
        (Type::Uan, d.uan()),
        (Type::Voicemail, d.voicemail()),
    ]
}

/// `phonenumber`'s `validator::number_type`: the first descriptor that matches.
fn type_in(m: &phonenumber::Metadata, national: &str) -> Type {
    let d = m.descriptors();
    let hit =
        |d: Option<&phonenumber::metadata::Descriptor>| d.is_some_and(|d| d.is_match(national));
    if !d.general().is_match(national) {
        return Type::Unknown;
    }
    for (t, desc) in ordered_descriptors(d) {
        if hit(desc) {
            return t;
        }
    }
    let same = d.fixed_line().map(|f| f.national_number().as_str())
        == d.mobile().map(|f| f.national_number().as_str());
    match (hit(d.fixed_line()), hit(d.mobile())) {
        (true, mobile) if same || mobile => Type::FixedLineOrMobile,
        (true, _) => Type::FixedLine,
        (false, true) => Type::Mobile,
        (false, false) => Type::Unknown,
    }
}

pub mod fast;

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Destination {
        normalize(s, NumberFormat::E164, None).expect("parses")
    }

    #[test]
    fn e164_mobile_us() {
        let d = n("+14155550123");
        assert_eq!(d.e164(), "+14155550123");
        assert_eq!(d.country(), Country::parse("US"));
        assert_eq!(d.len(), 11);
    }

    #[test]
    fn caribbean_plus_one_is_its_own_country() {
        // Jamaica, +1 876: a classic pumping destination that must not count as US.
        let d = n("+18765550123");
        assert_eq!(d.country(), Country::parse("JM"));
    }

    #[test]
    fn uk_mobile_and_premium() {
        // (+44 7700 900xxx is Ofcom's drama range: not valid, so not used here.)
        let m = n("+447400123456");
        assert_eq!(m.country(), Country::parse("GB"));
        assert_eq!(m.number_type(), NumberType::Mobile);
        assert!(m.is_valid());
        let p = n("+449098790123");
        assert_eq!(p.number_type(), NumberType::PremiumRate);
    }

    #[test]
    fn leading_zero_numbers_have_their_country_and_type() {
        // Italian fixed lines keep their 0 after +39; Côte d'Ivoire's ten-digit numbers
        // start with 0. Both paths must read the zero, or the number has no country (no
        // per-country rule sees it) and no type. +39 06 698 is the Vatican.
        for (raw, country, t) in [
            ("+390212345678", "IT", NumberType::FixedLine),
            ("+390669812345", "VA", NumberType::FixedLine),
            ("+2250701234567", "CI", NumberType::Mobile),
        ] {
            for d in [
                n(raw),
                normalize_full(raw, NumberFormat::E164, None).expect("parses"),
            ] {
                assert!(d.is_valid(), "{raw}");
                assert_eq!(d.country(), Country::parse(country), "{raw}");
                assert_eq!(d.number_type(), t, "{raw}");
            }
        }
    }

    #[test]
    fn international_digits_and_national() {
        let v = normalize("447700900123", NumberFormat::InternationalDigits, None).unwrap();
        assert_eq!(v.e164(), "+447700900123");
        let gb = Country::parse("gb");
        let nat = normalize("07700 900123", NumberFormat::National, gb).unwrap();
        assert_eq!(nat.e164(), "+447700900123");
        assert_eq!(
            normalize("07700 900123", NumberFormat::National, None),
            Err(PhoneError::NoRegion)
        );
    }

    #[test]
    fn italian_leading_zero_is_kept() {
        let d = n("+390612345678");
        assert_eq!(d.e164(), "+390612345678");
        assert_eq!(d.calling_code(), 39);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for s in [
            "",
            "hello",
            "+",
            "++1",
            "+1234567890123456789",
            "\u{0}\u{1}",
            "+99999",
        ] {
            let r = normalize(s, NumberFormat::E164, None);
            assert!(r.is_err() || !r.unwrap().is_valid(), "{s:?}");
        }
    }

    /// A number written with more than digits and plain separators is read by
    /// `phonenumber` in ways a provider need not share: letters become digits, and
    /// everything after an extension mark (`,` `;` `#` `~` `x` `ext`) is dropped, so that
    /// smsfence would decide a Thai fixed line where the provider dials the premium-rate
    /// +66 1900 123456. None of them is a number.
    #[test]
    fn only_digits_and_plain_separators_are_read() {
        let th = Country::parse("TH");
        for s in [
            "+6619001234,56",
            "+6619001234;56",
            "+6619001234#56",
            "+6619001234~56",
            "+6619001234 , 56",
            "+6619001234x56",
            "+6619001234 ext 56",
            "+6619001234/x56",
            "6619001234,56",
            "+499A001234567",
            "+1-800-FLOWERS",
            "+447400123456#",
            "+447400123456!",
            "*+447400123456",
            "abc+447400123456",
            "++447400123456",
            "+ +447400123456",
            "44+7400123456",
            "tel:+447400123456",
            "tel:7400123456;phone-context=+44",
            "\u{ff0b}447400123456",
            "+44\u{a0}7400123456",
            "+44\u{200b}7400123456",
            "+44\u{2013}7400123456",
            "+44\t7400123456",
            "+447400123456\n+449098790123",
        ] {
            for (format, region) in [
                (NumberFormat::E164, None),
                (NumberFormat::E164, th),
                (NumberFormat::InternationalDigits, None),
                (NumberFormat::National, th),
            ] {
                assert_eq!(
                    normalize(s, format, region),
                    Err(PhoneError::NotANumber),
                    "{s:?} {format:?} {region:?}"
                );
            }
        }
        // Spaces, dashes, dots and parentheses stay as readable as before.
        let gb = Country::parse("GB");
        let us = Country::parse("US");
        for (s, format, region, want) in [
            ("+44 7400 123456", NumberFormat::E164, None, "+447400123456"),
            ("+44-7400-123456", NumberFormat::E164, None, "+447400123456"),
            ("+44.7400.123456", NumberFormat::E164, None, "+447400123456"),
            (
                " +44 (0) 7400 123456 ",
                NumberFormat::E164,
                None,
                "+447400123456",
            ),
            (
                "+ 44 7400 123456",
                NumberFormat::E164,
                None,
                "+447400123456",
            ),
            (
                "44 7400 123456",
                NumberFormat::InternationalDigits,
                None,
                "+447400123456",
            ),
            ("07400 123456", NumberFormat::National, gb, "+447400123456"),
            ("(415) 555-0123", NumberFormat::E164, us, "+14155550123"),
        ] {
            let d = normalize(s, format, region).expect(s);
            assert_eq!(d.e164(), want, "{s:?}");
        }
    }

    /// Digits without `+` on an E.164 route are international to smsfence only when there
    /// is no other reading: Twilio reads them in its sender's country, so that
    /// `6589068136` is +1 658 906 8136 (Jamaica) to it and was +65 8906 8136 (Singapore)
    /// here. With no region to read them in, they are not a number.
    #[test]
    fn e164_digits_without_plus_need_a_region() {
        for s in [
            "6589068136",
            "447400123456",
            "00447400123456",
            "(658) 906-8136",
        ] {
            assert_eq!(
                normalize(s, NumberFormat::E164, None),
                Err(PhoneError::NoRegion),
                "{s:?}"
            );
            assert_eq!(
                normalize_full(s, NumberFormat::E164, None),
                Err(PhoneError::NoRegion),
                "{s:?}"
            );
        }
        let us = normalize("6589068136", NumberFormat::E164, Country::parse("US")).unwrap();
        assert_eq!(
            (us.e164(), us.country()),
            ("+16589068136".into(), Country::parse("JM"))
        );
        // International digits stay international, with or without a region.
        let sg = normalize("6589068136", NumberFormat::InternationalDigits, None).unwrap();
        assert_eq!(sg.country(), Country::parse("SG"));
        assert_eq!(n("+6589068136").country(), Country::parse("SG"));
    }

    #[test]
    fn prefixes() {
        let d = n("+447700900123");
        assert_eq!(d.prefix(3), 447700900);
        assert_eq!(d.prefix(99), 44);
        let p = DigitPrefix::parse("+4477").unwrap();
        assert!(d.has_prefix(&p));
        assert!(!d.has_prefix(&DigitPrefix::parse("+4478").unwrap()));
        assert!(DigitPrefix::parse("+0").is_none());
        assert!(DigitPrefix::parse("+44a").is_none());
    }
}
