//! Provider presets: how each SMS API's requests are recognised and read, and how a
//! refusal is answered in that provider's own error format.
//!
//! One file per provider. Each exposes the same five things, which this module dispatches
//! on through [`Op`]:
//! - `ENDPOINTS`: the method and path of every request that sends (or checks) a code;
//! - `ROOTS`: the API roots whose other requests pass through untouched;
//! - `extract`: the recipients, sender, account and segment count of a request;
//! - `refusal`: the native throttle (429 + `Retry-After`) and block responses;
//! - `sandbox`: the provider's own success answer, for the built-in sandbox upstream;
//! - `conversion`: whether an upstream answer says a code was verified.
//!
//! Presets never log, never see the decision logic, and never keep message text: the text
//! is read only to count segments.

use std::borrow::Cow;
use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use serde::Deserialize;

use crate::decide::Reason;
use crate::phone::NumberFormat;

pub mod generic;
pub mod infobip;
pub mod plivo;
pub mod segments;
pub mod sinch;
pub mod telnyx;
pub mod twilio;
pub mod vonage;

/// A provider API a route speaks.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Twilio Messages and Verify v2.
    Twilio,
    /// Vonage (Nexmo) SMS, Verify v1 and v2, and Messages.
    Vonage,
    /// Telnyx Messaging v2 and Verify.
    Telnyx,
    /// Plivo Messages and Verify.
    Plivo,
    /// Sinch SMS (XMS batches) and Verification.
    Sinch,
    /// Infobip SMS v2 and v3, and 2FA.
    Infobip,
    /// Any other HTTP SMS API, read by a configured extractor.
    Generic,
}

impl Preset {
    /// The presets that need no extractor configuration.
    pub const BUILT_IN: [Preset; 6] = [
        Preset::Twilio,
        Preset::Vonage,
        Preset::Telnyx,
        Preset::Plivo,
        Preset::Sinch,
        Preset::Infobip,
    ];

    /// The lowercase name used in config, metrics and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Twilio => "twilio",
            Preset::Vonage => "vonage",
            Preset::Telnyx => "telnyx",
            Preset::Plivo => "plivo",
            Preset::Sinch => "sinch",
            Preset::Infobip => "infobip",
            Preset::Generic => "generic",
        }
    }

    /// The endpoints that send or check codes.
    pub fn endpoints(self) -> &'static [Endpoint] {
        match self {
            Preset::Twilio => twilio::ENDPOINTS,
            Preset::Vonage => vonage::ENDPOINTS,
            Preset::Telnyx => telnyx::ENDPOINTS,
            Preset::Plivo => plivo::ENDPOINTS,
            Preset::Sinch => sinch::ENDPOINTS,
            Preset::Infobip => infobip::ENDPOINTS,
            Preset::Generic => &[],
        }
    }

    /// API roots (patterns ending in `/**`) whose other requests pass through untouched.
    pub fn roots(self) -> &'static [&'static str] {
        match self {
            Preset::Twilio => twilio::ROOTS,
            Preset::Vonage => vonage::ROOTS,
            Preset::Telnyx => telnyx::ROOTS,
            Preset::Plivo => plivo::ROOTS,
            Preset::Sinch => sinch::ROOTS,
            Preset::Infobip => infobip::ROOTS,
            Preset::Generic => &[],
        }
    }
}

/// What a request does, for rules scoped to a kind.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// Sends a message.
    Send,
    /// Starts a verification (sends a code).
    VerifyStart,
    /// Checks a code a user typed.
    VerifyCheck,
}

impl RequestKind {
    /// Every kind.
    pub const ALL: [RequestKind; 3] = [
        RequestKind::Send,
        RequestKind::VerifyStart,
        RequestKind::VerifyCheck,
    ];

    /// The snake_case name used in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Send => "send",
            RequestKind::VerifyStart => "verify_start",
            RequestKind::VerifyCheck => "verify_check",
        }
    }

    /// The inverse of [`RequestKind::as_str`].
    pub fn parse(s: &str) -> Option<RequestKind> {
        RequestKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A set of request kinds (the scope of a rule): one bit each, so that the per-request
/// check is a mask rather than a hash lookup.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Kinds(u8);

impl Kinds {
    /// Whether `kind` is in the set.
    pub fn contains(self, kind: RequestKind) -> bool {
        self.0 & (1 << kind as u8) != 0
    }

    /// Adds `kind`.
    pub fn insert(&mut self, kind: RequestKind) {
        self.0 |= 1 << kind as u8;
    }

    /// How many kinds the set holds.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<RequestKind> for Kinds {
    fn from_iter<I: IntoIterator<Item = RequestKind>>(kinds: I) -> Kinds {
        let mut set = Kinds::default();
        for k in kinds {
            set.insert(k);
        }
        set
    }
}

/// One recognised operation of one preset.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A Twilio operation.
    Twilio(twilio::Op),
    /// A Vonage operation.
    Vonage(vonage::Op),
    /// A Telnyx operation.
    Telnyx(telnyx::Op),
    /// A Plivo operation.
    Plivo(plivo::Op),
    /// A Sinch operation.
    Sinch(sinch::Op),
    /// An Infobip operation.
    Infobip(infobip::Op),
    /// The generic extractor's one operation.
    Generic,
}

impl Op {
    /// The preset this operation belongs to.
    pub fn preset(self) -> Preset {
        match self {
            Op::Twilio(_) => Preset::Twilio,
            Op::Vonage(_) => Preset::Vonage,
            Op::Telnyx(_) => Preset::Telnyx,
            Op::Plivo(_) => Preset::Plivo,
            Op::Sinch(_) => Preset::Sinch,
            Op::Infobip(_) => Preset::Infobip,
            Op::Generic => Preset::Generic,
        }
    }
}

/// A request a preset recognises: method, path pattern and operation.
///
/// Patterns are `/`-separated; `{}` matches exactly one segment and is captured.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    /// The HTTP method.
    pub method: &'static str,
    /// The path pattern, e.g. `/2010-04-01/Accounts/{}/Messages.json`.
    pub pattern: &'static str,
    /// What it does.
    pub op: Op,
}

/// What a preset sees of a request. The body is already fully read and bounded.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path, route prefix already stripped.
    pub path: &'a str,
    /// The segments captured by `{}` in the endpoint pattern, in order.
    pub params: &'a [&'a str],
    /// The raw query string, if any.
    pub query: Option<&'a str>,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The body bytes.
    pub body: &'a [u8],
}

impl RequestView<'_> {
    /// Whether the Content-Type is JSON (`application/json`, `…+json`).
    pub fn is_json(&self) -> bool {
        content_type(self.headers).is_some_and(|c| {
            c.eq_ignore_ascii_case("application/json")
                || c.len() >= 5 && c.as_bytes()[c.len() - 5..].eq_ignore_ascii_case(b"+json")
        })
    }

    /// Whether the Content-Type is a URL-encoded form.
    pub fn is_form(&self) -> bool {
        content_type(self.headers)
            .is_some_and(|c| c.eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    }

    /// The user of HTTP Basic authentication, if any (never the password).
    pub fn basic_user(&self) -> Option<String> {
        basic_auth_user(self.headers)
    }

    /// The `n`th captured path segment, percent-decoded.
    pub fn param(&self, n: usize) -> Option<String> {
        self.params.get(n).map(|p| {
            if p.contains('%') {
                percent_encoding::percent_decode_str(p)
                    .decode_utf8_lossy()
                    .into_owned()
            } else {
                // Its own decoding: the common case, without the decoder's byte walk.
                p.to_string()
            }
        })
    }

    /// Every value of a form field in the body (`+` and `%20` both decode to a space).
    pub fn form_values(&self, key: &str) -> Vec<String> {
        form_values(self.body, key)
    }

    /// The first value of a form field in the body.
    pub fn form_value(&self, key: &str) -> Option<String> {
        form_value(self.body, key)
    }

    /// The first value of each of `keys`, in one pass over the body.
    pub fn form_first<const K: usize>(&self, keys: [&str; K]) -> [Option<String>; K] {
        form_first(self.body, keys)
    }

    /// The body as JSON, refused when an object names a key twice: smsfence would read
    /// one of the values and a provider's parser may read the other.
    pub fn json(&self) -> Result<serde_json::Value, ExtractError> {
        match serde_json::from_slice::<UniqueKeys>(self.body) {
            Ok(UniqueKeys(v)) => Ok(v),
            // The only data error this reading can give: every JSON value is accepted.
            Err(e) if e.is_data() => Err(ExtractError::MalformedBody(
                "a JSON object names the same key twice",
            )),
            Err(_) => Err(ExtractError::MalformedBody("the body is not valid JSON")),
        }
    }
}

/// A JSON document read as `serde_json::Value` reads it, except that an object naming a
/// key twice, or in two letter cases, is an error (the `Value` keeps the last).
struct UniqueKeys(serde_json::Value);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor).map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(UniqueKeys(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(out.into())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // An object of a few keys is checked by a scan; a larger one keeps its keys in
        // lower case in a set, or each key would scan all before it (a 64 KiB object of
        // short keys then cost its worker seconds of CPU).
        const SCANNED: usize = 16;
        let mut out = serde_json::Map::new();
        let mut lower: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let UniqueKeys(v) = map.next_value()?;
            // Also in another letter case: some parsers (Go's, .NET's) match keys so.
            let repeated = if out.len() < SCANNED {
                out.keys().any(|k| k.eq_ignore_ascii_case(&key))
            } else {
                if lower.is_empty() {
                    lower.extend(out.keys().map(|k| k.to_ascii_lowercase()));
                }
                !lower.insert(key.to_ascii_lowercase())
            };
            if repeated {
                return Err(serde::de::Error::custom("duplicate key"));
            }
            out.insert(key, v);
        }
        Ok(out.into())
    }
}

/// The media type of a Content-Type header, without parameters (compare it ignoring
/// ASCII case).
pub fn content_type(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(hyper::header::CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next().unwrap_or("").trim())
}

/// Every value of `key` in a URL-encoded form body.
pub fn form_values(body: &[u8], key: &str) -> Vec<String> {
    form_fields(body, key).collect()
}

/// Whether a URL-encoded form names a field that a server may read as `key` though it is
/// not `key`: `key[]` or `key[0]` (PHP and Rack read a list, the last field winning),
/// `key` in another case (ASP.NET binds names ignoring case), or with `.` or a space for
/// a `_` (PHP's names).
pub fn form_lookalike(body: &[u8], key: &str) -> bool {
    let key = key.as_bytes();
    form_pairs(body).any(|(name, _)| {
        let name = &*name.decoded();
        name != key
            && (name.starts_with(key) && name.get(key.len()) == Some(&b'[')
                || name.len() == key.len()
                    && name.iter().zip(key).all(|(&n, &k)| {
                        n.eq_ignore_ascii_case(&k) || k == b'_' && (n == b'.' || n == b' ')
                    }))
    })
}

/// The first value of `key` in a URL-encoded form body.
pub fn form_value(body: &[u8], key: &str) -> Option<String> {
    form_fields(body, key).next()
}

/// The first value of each of `keys` in a URL-encoded form body, in one pass: what
/// [`form_value`] gives for each.
pub fn form_first<const K: usize>(body: &[u8], keys: [&str; K]) -> [Option<String>; K] {
    let mut out: [Option<String>; K] = std::array::from_fn(|_| None);
    for (name, value) in form_pairs(body) {
        for (slot, key) in out.iter_mut().zip(keys) {
            if slot.is_none() && name.is(key) {
                *slot = Some(form_decode(value));
            }
        }
    }
    out
}

/// [`form_first`], refusing a body where a field of `unique` is given again with another
/// value (smsfence would read the first, the provider may read another): the error names
/// that field.
pub fn form_first_unique<const K: usize>(
    body: &[u8],
    keys: [&'static str; K],
    unique: [bool; K],
) -> Result<[Option<String>; K], &'static str> {
    let mut out: [Option<String>; K] = std::array::from_fn(|_| None);
    for (name, value) in form_pairs(body) {
        // A name is decoded (when it needs it) once, not once per key.
        let name = name.decoded();
        for ((slot, key), unique) in out.iter_mut().zip(keys).zip(unique) {
            if *name != *key.as_bytes() {
                continue;
            }
            match slot {
                None => *slot = Some(form_decode(value)),
                Some(first) if unique && *first != form_decode(value) => return Err(key),
                Some(_) => {}
            }
        }
    }
    Ok(out)
}

/// The decoded values of `key`, as `form_urlencoded::parse` reads the body, without
/// decoding the fields that cannot be `key`.
fn form_fields<'b>(body: &'b [u8], key: &'b str) -> impl Iterator<Item = String> + 'b {
    form_pairs(body)
        .filter(move |(name, _)| name.is(key))
        .map(|(_, value)| form_decode(value))
}

/// The raw (name, value) pairs of a URL-encoded form body, split as
/// `form_urlencoded::parse` splits it: on `&`, then on the first `=`; empty fields skipped.
fn form_pairs(body: &[u8]) -> impl Iterator<Item = (FormName<'_>, &[u8])> {
    body.split(|&b| b == b'&')
        .filter(|field| !field.is_empty())
        .map(|field| match field.iter().position(|&b| b == b'=') {
            Some(eq) => (FormName(&field[..eq]), &field[eq + 1..]),
            None => (FormName(field), &field[field.len()..]),
        })
}

/// A form field's name, still encoded.
#[derive(Clone, Copy)]
struct FormName<'b>(&'b [u8]);

impl<'b> FormName<'b> {
    /// Whether the name decodes to `key`. An ASCII name with no `%` or `+` is its own
    /// decoding, so it is compared as it is: only names that need it are decoded (a
    /// name of invalid UTF-8 decodes to U+FFFD, which a key may hold).
    fn is(self, key: &str) -> bool {
        *self.decoded() == *key.as_bytes()
    }

    /// The decoded name: itself when it is plain, without a copy.
    fn decoded(self) -> Cow<'b, [u8]> {
        match self.plain() {
            Some(plain) => Cow::Borrowed(plain),
            None => Cow::Owned(form_decode(self.0).into_bytes()),
        }
    }

    /// The name as it is when that is its decoding: ASCII with no `%` or `+`.
    fn plain(self) -> Option<&'b [u8]> {
        let needs_decoding = self
            .0
            .iter()
            .any(|&b| b == b'%' || b == b'+' || !b.is_ascii());
        (!needs_decoding).then_some(self.0)
    }
}

/// One name or value of a URL-encoded form, decoded as `form_urlencoded` decodes it —
/// `+` is a space, `%` and two hex digits a byte, any other `%` itself, invalid UTF-8
/// replaced — in one pass and one allocation.
fn form_decode(raw: &[u8]) -> String {
    fn hex(b: Option<&u8>) -> Option<u8> {
        char::from(*b?).to_digit(16).map(|d| d as u8)
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let (Some(hi), Some(lo)) = (hex(raw.get(i + 1)), hex(raw.get(i + 2))) {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The one value of a field given (possibly) several times: `None` when absent, the value
/// when every occurrence agrees, and an error when they differ — smsfence reads one, the
/// provider may read another.
pub fn single_value(
    values: Vec<String>,
    what: &'static str,
) -> Result<Option<String>, ExtractError> {
    let mut values = values.into_iter();
    let first = values.next();
    if values.any(|v| Some(&v) != first.as_ref()) {
        return Err(ExtractError::Unsupported(what));
    }
    Ok(first)
}

/// The user part of `Authorization: Basic …`.
pub fn basic_auth_user(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let v = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
    (!user.is_empty()).then(|| user.to_owned())
}

/// A successful upstream answer read as JSON, for the presets' `conversion`: anything else
/// (an error status, a body that is not JSON) says nothing about a verification.
pub fn success_json(status: StatusCode, body: &[u8]) -> Option<serde_json::Value> {
    if !status.is_success() {
        return None;
    }
    serde_json::from_slice(body).ok()
}

/// A JSON string field, or `None`.
pub fn json_str<'v>(v: &'v serde_json::Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(serde_json::Value::as_str)
}

/// What a preset read from a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extracted {
    /// Every recipient, as written by the client (not yet normalized).
    pub recipients: Vec<String>,
    /// How these recipients are written, when the preset knows (Vonage: digits, no `+`).
    pub number_format: Option<NumberFormat>,
    /// The sender id or number, when given.
    pub sender: Option<String>,
    /// The provider account (path SID, API key or Basic-auth user).
    pub account: Option<String>,
    /// SMS segments per recipient, counted from the text (1 when there is no text).
    pub segments: u32,
    /// A reference that a later check request uses instead of the number (Twilio
    /// `VerificationSid`, Vonage `request_id`), when this request carries one.
    pub verify_ref: Option<String>,
    /// True when the request sends nothing smsfence can decide on (Verify by email):
    /// it is forwarded undecided and counted.
    pub no_phone: bool,
}

/// Why a preset could not read a request it recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// The body is not what the endpoint takes (bad JSON, wrong content type).
    #[error("malformed request: {0}")]
    MalformedBody(&'static str),
    /// The recipient field is missing or empty.
    #[error("the request names no recipient ({0})")]
    MissingRecipient(&'static str),
    /// A shape smsfence does not read (group ids, `to_add`, …).
    #[error("unsupported request shape: {0}")]
    Unsupported(&'static str),
}

/// What an answer from upstream tells about verification, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversionSignal {
    /// Nothing.
    None,
    /// A verification started: later checks may name `reference` instead of the number.
    Started {
        /// The provider's id for the verification.
        reference: String,
    },
    /// The code was approved for this number (as written by the client).
    Verified {
        /// The number, when the request or response carried it.
        number: Option<String>,
        /// The verification reference, for checks that carry no number.
        reference: Option<String>,
    },
}

/// Whether a refusal is a throttle (retryable) or a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Too many requests; retry after the given time.
    Throttle {
        /// When a retry would be allowed.
        retry_after: Duration,
    },
    /// Refused by policy; retrying will not help.
    Block,
}

/// A refusal, as the native response builders see it.
#[derive(Debug, Clone)]
pub struct Refusal<'a> {
    /// Throttle or block.
    pub kind: RefusalKind,
    /// The stable reason code.
    pub reason: Reason,
    /// The rule that refused.
    pub rule: &'a str,
    /// Which recipient (0-based) caused it, for multi-recipient requests.
    pub recipient: Option<usize>,
    /// How many recipients the request had.
    pub recipients: usize,
}

impl Refusal<'_> {
    /// A human sentence with the stable reason code and rule; never the number or text.
    pub fn message(&self) -> String {
        use std::fmt::Write as _;
        let mut m = String::with_capacity(128 + self.rule.len());
        m.push_str(match self.kind {
            RefusalKind::Throttle { .. } => "Too many messages: ",
            RefusalKind::Block => "Message refused: ",
        });
        m.push_str(self.reason.sentence());
        // Writing into a String cannot fail.
        if let (Some(i), n) = (self.recipient, self.recipients) {
            if n > 1 {
                let _ = write!(m, " (recipient {} of {n})", i + 1);
            }
        }
        if let Some(secs) = self.retry_after_secs() {
            let _ = write!(m, "; retry after {secs} s");
        }
        let _ = write!(
            m,
            ". [smsfence reason={} rule={}]",
            self.reason.as_str(),
            self.rule
        );
        m
    }

    /// The `Retry-After` value in whole seconds (rounded up, at least 1), for throttles.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self.kind {
            RefusalKind::Throttle { retry_after } => Some(retry_after_secs(retry_after)),
            RefusalKind::Block => None,
        }
    }
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    secs.max(1)
}

/// A response smsfence writes itself (refusals, sandbox answers, errors).
#[derive(Debug, Clone)]
pub struct NativeResponse {
    /// The status.
    pub status: StatusCode,
    /// Extra headers (Content-Type is set from `content_type`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The Content-Type.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
}

impl NativeResponse {
    /// A JSON response: a `json!` value, or a typed body (refusals: no map is built).
    pub fn json(status: StatusCode, body: &impl serde::Serialize) -> Self {
        NativeResponse {
            status,
            headers: Vec::new(),
            content_type: "application/json",
            // Values and derived structs with string keys always serialize.
            body: Bytes::from(serde_json::to_vec(body).unwrap_or_default()),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl AsRef<str>) -> Self {
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.headers.push((HeaderName::from_static(name), v));
        }
        self
    }

    /// Adds `Retry-After` when the refusal is a throttle.
    pub fn with_retry_after(self, refusal: &Refusal<'_>) -> Self {
        match refusal.retry_after_secs() {
            Some(s) => self.with_header("retry-after", s.to_string()),
            None => self,
        }
    }
}

/// Reads a request of a recognised operation.
pub fn extract(
    op: Op,
    req: &RequestView<'_>,
    generic: Option<&generic::Generic>,
) -> Result<Extracted, ExtractError> {
    // A body that another reader could see differently is not read at all: compressed
    // (smsfence reads the bytes as sent, the provider may inflate them), or under several
    // Content-Types (smsfence reads the first, the provider may pick another).
    let encoded = req
        .headers
        .get_all(hyper::header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(ExtractError::Unsupported(
            "a Content-Encoding on the request",
        ));
    }
    if req
        .headers
        .get_all(hyper::header::CONTENT_TYPE)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(ExtractError::Unsupported("several Content-Type headers"));
    }
    match op {
        Op::Twilio(op) => twilio::extract(op, req),
        Op::Vonage(op) => vonage::extract(op, req),
        Op::Telnyx(op) => telnyx::extract(op, req),
        Op::Plivo(op) => plivo::extract(op, req),
        Op::Sinch(op) => sinch::extract(op, req),
        Op::Infobip(op) => infobip::extract(op, req),
        Op::Generic => match generic {
            Some(g) => g.extract(req),
            None => Err(ExtractError::Unsupported(
                "generic route without an extractor",
            )),
        },
    }
}

/// The operation's kind (send, verify start, verify check).
pub fn kind(op: Op) -> RequestKind {
    match op {
        Op::Twilio(op) => op.kind(),
        Op::Vonage(op) => op.kind(),
        Op::Plivo(op) => op.kind(),
        Op::Telnyx(op) => op.kind(),
        Op::Infobip(op) => op.kind(),
        Op::Sinch(op) => op.kind(),
        Op::Generic => RequestKind::Send,
    }
}

/// The native answer to a refused request.
///
/// A preset's refusal is a function of the operation and the refusal alone, and a flood
/// is answered with the same few refusals over and over: each worker thread keeps the last
/// [`RECENT_REFUSALS`] it built and hands out copies (sharing the body) instead of building
/// the sentence, the JSON and the header values again. Refusals that carry an id of their
/// own (Vonage Verify's problem `instance`, Plivo's `api_id`) and generic routes' (rendered
/// from their templates) are always built.
pub fn refusal(
    op: Op,
    refusal: &Refusal<'_>,
    generic: Option<&generic::Generic>,
) -> NativeResponse {
    let fixed = !matches!(
        op,
        Op::Generic
            | Op::Plivo(_)
            | Op::Vonage(
                vonage::Op::VerifyStart
                    | vonage::Op::VerifyCheck
                    | vonage::Op::VerifyNext
                    | vonage::Op::Message
            )
    );
    if !fixed {
        return build_refusal(op, refusal, generic);
    }
    let key = RefusalKey {
        op,
        retry_after: refusal.retry_after_secs(),
        reason: refusal.reason,
        recipient: refusal.recipient,
        recipients: refusal.recipients,
    };
    RECENT.with_borrow_mut(|recent| {
        if let Some((_, _, resp)) = recent
            .entries
            .iter()
            .find(|(k, rule, _)| *k == key && **rule == *refusal.rule)
        {
            return resp.clone();
        }
        let resp = build_refusal(op, refusal, None);
        let entry = (key, Box::from(refusal.rule), resp.clone());
        if recent.entries.len() < RECENT_REFUSALS {
            recent.entries.push(entry);
        } else {
            recent.entries[recent.next] = entry;
            recent.next = (recent.next + 1) % RECENT_REFUSALS;
        }
        resp
    })
}

/// How many refusals each worker thread keeps for reuse.
pub const RECENT_REFUSALS: usize = 8;

/// Everything a preset's refusal depends on, but the rule's name.
#[derive(Clone, Copy, PartialEq, Eq)]
struct RefusalKey {
    op: Op,
    retry_after: Option<u64>,
    reason: Reason,
    recipient: Option<usize>,
    recipients: usize,
}

/// The refusals a thread built last, replaced oldest first.
#[derive(Default)]
struct RecentRefusals {
    entries: Vec<(RefusalKey, Box<str>, NativeResponse)>,
    next: usize,
}

thread_local! {
    static RECENT: std::cell::RefCell<RecentRefusals> = std::cell::RefCell::default();
}

fn build_refusal(
    op: Op,
    refusal: &Refusal<'_>,
    generic: Option<&generic::Generic>,
) -> NativeResponse {
    let resp = match op {
        Op::Twilio(op) => twilio::refusal(op, refusal),
        Op::Vonage(op) => vonage::refusal(op, refusal),
        Op::Telnyx(op) => telnyx::refusal(op, refusal),
        Op::Plivo(_) => plivo::refusal(refusal),
        Op::Sinch(op) => sinch::refusal(op, refusal),
        Op::Infobip(op) => infobip::refusal(op, refusal),
        Op::Generic => generic::refusal(generic, refusal),
    };
    resp.with_header("smsfence-reason", refusal.reason.as_str())
        .with_header("smsfence-rule", refusal.rule)
}

/// The sandbox's success answer to an allowed request.
pub fn sandbox(
    op: Op,
    req: &RequestView<'_>,
    extracted: &Extracted,
    generic: Option<&generic::Generic>,
) -> NativeResponse {
    match op {
        Op::Twilio(op) => twilio::sandbox(op, req, extracted),
        Op::Vonage(op) => vonage::sandbox(op, req, extracted),
        Op::Telnyx(op) => telnyx::sandbox(op, req, extracted),
        Op::Plivo(op) => plivo::sandbox(op, req, extracted),
        Op::Sinch(op) => sinch::sandbox(op, req, extracted),
        Op::Infobip(op) => infobip::sandbox(op, req, extracted),
        Op::Generic => generic::sandbox(generic),
    }
}

/// What an upstream answer says about verification.
pub fn conversion(
    op: Op,
    req: &RequestView<'_>,
    extracted: &Extracted,
    status: StatusCode,
    body: &[u8],
) -> ConversionSignal {
    match op {
        Op::Twilio(op) => twilio::conversion(op, req, extracted, status, body),
        Op::Vonage(op) => vonage::conversion(op, req, extracted, status, body),
        Op::Telnyx(op) => telnyx::conversion(op, req, extracted, status, body),
        Op::Infobip(op) => infobip::conversion(op, req, extracted, status, body),
        Op::Sinch(op) => sinch::conversion(op, req, extracted, status, body),
        Op::Plivo(op) => plivo::conversion(op, req, status, body),
        Op::Generic => ConversionSignal::None,
    }
}

/// Whether `conversion` needs the upstream body for this operation (so it is buffered).
pub fn wants_response_body(op: Op) -> bool {
    match op {
        Op::Twilio(op) => matches!(op, twilio::Op::VerifyStart | twilio::Op::VerifyCheck),
        Op::Vonage(op) => matches!(
            op,
            vonage::Op::VerifyStart
                | vonage::Op::VerifyCheck
                | vonage::Op::LegacyStart(_)
                | vonage::Op::LegacyCheck(_)
        ),
        Op::Telnyx(op) => op != telnyx::Op::Send,
        Op::Infobip(op) => matches!(
            op,
            infobip::Op::PinSms | infobip::Op::PinVoice | infobip::Op::PinVerify
        ),
        Op::Sinch(op) => !matches!(op, sinch::Op::Send | sinch::Op::Update),
        Op::Plivo(op) => op != plivo::Op::Send,
        Op::Generic => false,
    }
}

/// A process-unique id of `len` hex digits for sandbox answers (not random, not secret).
pub fn sandbox_id(prefix: &str, len: usize) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (n << 17);
    let hex = format!("{mixed:016x}{n:016x}");
    format!("{prefix}{}", &hex[..len.min(hex.len())])
}

/// Strips a `whatsapp:`-style channel prefix from a recipient; `None` for non-phone
/// addresses (`messenger:…`, e-mail).
pub fn phone_part(raw: &str) -> Option<Cow<'_, str>> {
    let raw = raw.trim();
    if let Some(rest) = raw
        .strip_prefix("whatsapp:")
        .or_else(|| raw.strip_prefix("sms:"))
        .or_else(|| raw.strip_prefix("tel:"))
    {
        return Some(Cow::Borrowed(rest));
    }
    if raw.contains('@') || raw.contains(':') {
        return None;
    }
    Some(Cow::Borrowed(raw))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn form_fields_read_as_form_urlencoded_does() {
        let bodies: [&[u8]; 11] = [
            b"To=%2B447400123456&From=%2B15005550006&Body=Your+code+is+123456",
            b"T%6F=%2B1&To=second&To=third",
            b"To&To=&=x&&To=a=b&",
            b"B+ody=1&Body=2&Body%20=3&Body+=4",
            b"To=%zz%2&To=%F0%9F%98%80&To=%FF",
            b"%54%6f=encoded-name&to=lower",
            b"",
            b"&&&",
            b"To=+44+7400+123456",
            b"\xff=lossy&\xc3\xa9=e-acute&%C3%A9=encoded",
            b"\xff\xfe=two&\xef\xbf\xbd=replacement",
        ];
        for body in bodies {
            let keys = ["To", "Body", "B ody", "Body ", "", "to", "From"];
            for key in keys
                .into_iter()
                .chain(["\u{fffd}", "\u{fffd}\u{fffd}", "é"])
            {
                let expected: Vec<String> = form_urlencoded::parse(body)
                    .filter(|(k, _)| k == key)
                    .map(|(_, v)| v.into_owned())
                    .collect();
                assert_eq!(form_values(body, key), expected, "{body:?} {key:?}");
                assert_eq!(form_value(body, key), expected.first().cloned());
                let [first, body_field] = form_first(body, [key, "Body"]);
                assert_eq!(first, expected.first().cloned());
                assert_eq!(body_field, form_value(body, "Body"));
                let key: &'static str = String::from(key).leak();
                let relaxed = form_first_unique(body, [key, "Body"], [false, false]);
                assert_eq!(relaxed, Ok([first, body_field]), "{body:?} {key:?}");
                let differing = expected.iter().any(|v| Some(v) != expected.first());
                let strict = form_first_unique(body, [key, "Body"], [true, false]);
                assert_eq!(strict.is_err(), differing, "{body:?} {key:?}");
            }
        }
    }

    #[test]
    fn json_bodies_read_as_serde_json_reads_them_unless_a_key_repeats() {
        let view = |body: &'static [u8]| RequestView {
            method: &Method::POST,
            path: "/",
            query: None,
            headers: Box::leak(Box::new(HeaderMap::new())),
            body,
            params: &[],
        };
        let docs: [&[u8]; 7] = [
            br#"{"to":"+447400123456","n":[1,-2,3.5,18446744073709551615,1e300,null,true],"o":{}}"#,
            br#"[{"a":{"b":[{"c":"\u00e9"}]}},"",0]"#,
            br#""text""#,
            b"-0.0",
            br#"{"a":1,"b":2,"a ":3,"\u00e4":4,"\u00c4":5}"#,
            br#"{"x":{"a":1},"y":{"a":1}}"#,
            b" null ",
        ];
        for doc in docs {
            let want: serde_json::Value = serde_json::from_slice(doc).unwrap();
            assert_eq!(view(doc).json().unwrap(), want, "{doc:?}");
        }
        for doc in [
            &br#"{"to":"+1","to":"+2"}"#[..],
            br#"{"to":"+1","to":"+1"}"#,
            br#"{"m":[{"d":[{"to":"1","x":0,"to":"2"}]}]}"#,
            br#"{"\u0074o":"+1","to":"+2"}"#,
            br#"{"to":"+1","TO":"+2"}"#,
            br#"{"m":[{"To":"1","x":0,"tO":"2"}]}"#,
        ] {
            assert!(
                matches!(view(doc).json(), Err(ExtractError::MalformedBody(m)) if m.contains("twice")),
                "{doc:?}"
            );
        }
        for doc in [&b"{"[..], b"{\"a\":}", b"", b"[1,]", b"1e400"] {
            assert!(
                matches!(view(doc).json(), Err(ExtractError::MalformedBody(m)) if m.contains("not valid")),
                "{doc:?}"
            );
        }
    }

    #[test]
    fn a_json_object_of_many_keys_is_read_in_linear_time() {
        // 40,000 keys (≈ 360 KB): checking each against all before it took minutes.
        let mut doc = String::from("{");
        for i in 0..40_000u32 {
            doc.push_str(&format!("\"{i:x}\":0,"));
        }
        let unique = format!("{}}}", doc.trim_end_matches(','));
        let repeated = format!("{doc}\"9C3F\":1}}");
        let view = |body: &str| RequestView {
            method: &Method::POST,
            path: "/",
            query: None,
            headers: Box::leak(Box::new(HeaderMap::new())),
            body: body.as_bytes().to_vec().leak(),
            params: &[],
        };
        let started = std::time::Instant::now();
        assert_eq!(
            view(&unique).json().unwrap().as_object().unwrap().len(),
            40_000
        );
        assert!(
            matches!(view(&repeated).json(), Err(ExtractError::MalformedBody(m)) if m.contains("twice"))
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn form_decoding_matches_form_urlencoded_on_random_bodies() {
        // Bodies over an alphabet dense in the cases that matter: separators, `+`,
        // escapes that are complete, truncated or not hex, bytes that are not UTF-8.
        let alphabet: &[u8] = b"To=&%+2BfF0a \xff\xc3\xa9";
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..20_000 {
            let len = next(24);
            let body: Vec<u8> = (0..len).map(|_| alphabet[next(alphabet.len())]).collect();
            for key in ["To", "T o", "", "%"] {
                let expected: Vec<String> = form_urlencoded::parse(&body)
                    .filter(|(k, _)| k == key)
                    .map(|(_, v)| v.into_owned())
                    .collect();
                assert_eq!(form_values(&body, key), expected, "{body:?} {key:?}");
                let [first] = form_first(&body, [key]);
                assert_eq!(first, expected.first().cloned(), "{body:?} {key:?}");
            }
        }
    }

    /// A POST view for preset unit tests.
    pub(crate) fn view<'a>(
        headers: &'a HeaderMap,
        params: &'a [&'a str],
        body: &'a [u8],
    ) -> RequestView<'a> {
        RequestView {
            method: &Method::POST,
            path: "/",
            params,
            query: None,
            headers,
            body,
        }
    }

    /// `Content-Type: application/x-www-form-urlencoded`.
    pub(crate) fn form_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h
    }

    /// `Content-Type: application/json`.
    pub(crate) fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        h
    }

    #[test]
    fn media_types_compare_without_case_or_parameters() {
        let kinds = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("content-type", HeaderValue::from_static(ct));
            let v = view(&h, &[], b"");
            (v.is_form(), v.is_json())
        };
        assert_eq!(kinds("application/x-www-form-urlencoded"), (true, false));
        assert_eq!(
            kinds("Application/X-WWW-Form-URLEncoded; charset=UTF-8"),
            (true, false)
        );
        assert_eq!(kinds(" application/json ;charset=utf-8"), (false, true));
        assert_eq!(kinds("application/vnd.api+JSON"), (false, true));
        assert_eq!(kinds("json"), (false, false));
        assert_eq!(kinds("text/plain"), (false, false));
        assert_eq!(kinds(""), (false, false));
    }

    #[test]
    fn basic_user_never_the_password() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Basic QUN4eHg6c2VjcmV0"),
        );
        assert_eq!(basic_auth_user(&h).as_deref(), Some("ACxxx"));
        h.insert("authorization", HeaderValue::from_static("Bearer abc"));
        assert_eq!(basic_auth_user(&h), None);
        h.insert("authorization", HeaderValue::from_static("Basic !!!"));
        assert_eq!(basic_auth_user(&h), None);
    }

    #[test]
    fn form_decodes_plus_and_percent_20() {
        assert_eq!(
            form_value(b"Body=a+b&To=%2B1", "Body").as_deref(),
            Some("a b")
        );
        assert_eq!(form_value(b"Body=a%20b", "Body").as_deref(), Some("a b"));
        assert_eq!(form_value(b"\xff\xfe=\xff", "To"), None);
    }

    /// Every preset's refusal body, whole: the typed bodies give exactly the JSON each
    /// provider's SDK parses (the fields that are random per answer checked by shape).
    #[test]
    fn refusal_bodies_keep_each_providers_shape() {
        use serde_json::json;
        let throttle = Refusal {
            kind: RefusalKind::Throttle {
                retry_after: Duration::from_millis(1500),
            },
            reason: Reason::RateLimited,
            rule: "number-cooldown",
            recipient: Some(1),
            recipients: 2,
        };
        let block = Refusal {
            kind: RefusalKind::Block,
            reason: Reason::DeniedCountry,
            rule: "deny \"xx\"",
            recipient: None,
            recipients: 1,
        };
        let (t, b) = (throttle.message(), block.message());
        assert_eq!(
            t,
            "Too many messages: a rate limit was reached (recipient 2 of 2); retry after 2 s. \
             [smsfence reason=rate_limited rule=number-cooldown]"
        );
        let body = |op: Op, r: &Refusal<'_>| -> serde_json::Value {
            let n = refusal(op, r, None);
            assert_eq!(
                n.headers.iter().any(|(k, _)| k == "retry-after"),
                r.retry_after_secs().is_some(),
                "{op:?}"
            );
            serde_json::from_slice(&n.body).unwrap()
        };
        let cases = [
            (
                Op::Twilio(twilio::Op::Message),
                &throttle,
                json!({"code": 20429, "message": t, "more_info": "https://www.twilio.com/docs/errors/20429", "status": 429}),
            ),
            (
                Op::Twilio(twilio::Op::VerifyStart),
                &block,
                json!({"code": 60605, "message": b, "more_info": "https://www.twilio.com/docs/errors/60605", "status": 403}),
            ),
            (
                Op::Vonage(vonage::Op::Sms),
                &block,
                json!({"message-count": "1", "messages": [{"status": "7", "error-text": format!("Number Barred: {b}")}]}),
            ),
            (
                Op::Telnyx(telnyx::Op::Send),
                &throttle,
                json!({"errors": [{"code": "10011", "title": "Too many requests", "detail": t}]}),
            ),
            (
                Op::Sinch(sinch::Op::Send),
                &block,
                json!({"code": "forbidden", "text": b}),
            ),
            (
                Op::Sinch(sinch::Op::VerifyStart),
                &block,
                json!({"errorCode": 40300, "message": b}),
            ),
            (
                Op::Infobip(infobip::Op::SendV2),
                &throttle,
                json!({"requestError": {"serviceException": {"messageId": "TOO_MANY_REQUESTS", "text": t}}}),
            ),
            (
                Op::Infobip(infobip::Op::SendV3),
                &block,
                json!({"errorCode": "E403", "description": b, "action": "Do not retry: the destination is refused by policy.", "violations": [], "resources": []}),
            ),
            (
                Op::Generic,
                &block,
                json!({"error": {"code": "denied_country", "rule": "deny \"xx\"", "message": b}}),
            ),
        ];
        for (op, r, want) in cases {
            assert_eq!(body(op, r), want, "{op:?}");
        }
        // Random per answer: Vonage Verify's problem instance, Plivo's api_id.
        let v = body(Op::Vonage(vonage::Op::VerifyStart), &throttle);
        assert_eq!(
            v["type"],
            "https://developer.vonage.com/api-errors#throttled"
        );
        assert_eq!(
            (&v["title"], &v["detail"]),
            (&json!("Rate Limit Hit"), &json!(t))
        );
        assert_eq!(v["instance"].as_str().map(str::len), Some(32));
        assert_eq!(v.as_object().map(|o| o.len()), Some(4));
        let p = body(Op::Plivo(plivo::Op::Send), &block);
        assert_eq!(p["error"], json!(b));
        assert_eq!(p["api_id"].as_str().map(str::len), Some(36));
        assert_eq!(p.as_object().map(|o| o.len()), Some(2));
    }

    /// Reused refusals are the ones built afresh: every key part and the rule's name tell
    /// them apart, beyond the cache's size too; answers with ids of their own stay unique.
    #[test]
    fn reused_refusals_are_the_ones_built_afresh() {
        let same = |a: &NativeResponse, b: &NativeResponse| {
            a.status == b.status
                && a.content_type == b.content_type
                && a.headers == b.headers
                && a.body == b.body
        };
        let ops = [
            Op::Twilio(twilio::Op::Message),
            Op::Twilio(twilio::Op::VerifyStart),
            Op::Vonage(vonage::Op::Sms),
            Op::Telnyx(telnyx::Op::Send),
            Op::Sinch(sinch::Op::Send),
            Op::Infobip(infobip::Op::SendV2),
        ];
        let kinds = [
            RefusalKind::Block,
            RefusalKind::Throttle {
                retry_after: Duration::from_secs(3),
            },
            RefusalKind::Throttle {
                retry_after: Duration::from_secs(4),
            },
        ];
        let mut built = 0;
        // Twice round, so that the second pass meets both reused and evicted entries.
        for _ in 0..2 {
            for op in ops {
                for kind in kinds {
                    for (reason, rule) in [
                        (Reason::RateLimited, "a"),
                        (Reason::RateLimited, "b"),
                        (Reason::DeniedCountry, "a"),
                    ] {
                        for (recipient, recipients) in [(None, 1), (Some(0), 2), (Some(1), 2)] {
                            let r = Refusal {
                                kind,
                                reason,
                                rule,
                                recipient,
                                recipients,
                            };
                            // Twice in a row: the second is reused.
                            for _ in 0..2 {
                                let got = refusal(op, &r, None);
                                assert!(same(&got, &build_refusal(op, &r, None)), "{op:?} {r:?}");
                                built += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(built, 2 * ops.len() * 3 * 3 * 3 * 2);
        let r = Refusal {
            kind: RefusalKind::Block,
            reason: Reason::DeniedCountry,
            rule: "a",
            recipient: None,
            recipients: 1,
        };
        for op in [
            Op::Plivo(plivo::Op::Send),
            Op::Vonage(vonage::Op::VerifyStart),
        ] {
            assert_ne!(refusal(op, &r, None).body, refusal(op, &r, None).body);
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(59_001)), 60);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn refusal_message_names_reason_and_rule_not_number() {
        let r = Refusal {
            kind: RefusalKind::Throttle {
                retry_after: Duration::from_secs(30),
            },
            reason: Reason::RateLimited,
            rule: "number-cooldown",
            recipient: Some(1),
            recipients: 3,
        };
        let m = r.message();
        assert!(
            m.contains("reason=rate_limited rule=number-cooldown"),
            "{m}"
        );
        assert!(m.contains("recipient 2 of 3"), "{m}");
        assert!(m.contains("retry after 30 s"), "{m}");
    }
}
