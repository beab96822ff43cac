//! Vonage (Nexmo): the SMS API, Verify v1 and v2, and the Messages API.
//!
//! - `POST /sms/json`: form (Python SDK) or JSON (Node SDK), `to` as international digits
//!   without `+`, `from`, `text`; the account is `api_key` in the body or the Basic user.
//!   Vonage's SMS API answers errors with HTTP 200 and a per-message `status`
//!   (`"1"` throttled, `"7"` number barred …), which is what its SDKs read: `SmsError`
//!   (Python), `MessageSendPartialFailure` (Node). A throttle here is therefore a 200 with
//!   status `"1"` plus a `Retry-After` header, not a 429.
//! - `POST /v2/verify`: JSON `workflow[].to`; the answer (202 `{request_id}`) is
//!   remembered so that `POST /v2/verify/{request_id}` (JSON `{"code"}`, no number) can be
//!   counted against the number and its success recorded as a conversion;
//!   `POST /v2/verify/{request_id}/next_workflow` (no body) sends the code again and is
//!   decided as a start for that number.
//!   Errors are RFC 7807 problem documents (`RateLimitedError` for a 429 in Python).
//! - Verify v1 (api.nexmo.com, the OpenAPI "Verify API (v1)" and vonage-python-sdk
//!   `VerifyLegacy`): `/verify/{json,xml}` and `/verify/psd2/json` start (`number`, with
//!   `country` when it is national), `/verify/check/{format}` checks (`request_id`, `code`),
//!   `/verify/control/{format}` with `cmd=trigger_next_event` sends the code again (`cancel`
//!   passes). Fields come from a form or JSON body or the query string (every endpoint
//!   also takes a GET). Errors are HTTP 200 with `status` ≠ `"0"` and `error_text`, which
//!   vonage-python-sdk raises (`VerifyError`) and vonage-node-sdk returns as `errorText`;
//!   `.xml` answers are `<verify_response>` (`<response>` for control).
//! - Messages API `POST /v1/messages`: `to` of each message (the primary one, top level or
//!   under `message` as vonage-python-sdk sends it with `failover`, and each of `failover`)
//!   on a channel that reaches a phone number; `messenger` ids are not numbers. Errors
//!   are RFC 7807 problems.
//!
//! Never read: `api_secret`, `sig`, the JWT.

use hyper::StatusCode;
use serde_json::json;

use super::{
    sandbox_id, segments, ConversionSignal, Endpoint, ExtractError, Extracted, NativeResponse,
    Refusal, RefusalKind, RequestKind, RequestView,
};
use crate::decide::Reason;
use crate::phone::NumberFormat;

/// Vonage operations.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `/sms/json`.
    Sms,
    /// `/v2/verify` start.
    VerifyStart,
    /// `/v2/verify/{request_id}` check.
    VerifyCheck,
    /// `/v2/verify/{request_id}/next_workflow`: the code sent again, by the workflow's
    /// next channel — a start again, for the number the `request_id` was started for.
    VerifyNext,
    /// Verify v1 `/verify/{format}` and `/verify/psd2/{format}`: a start.
    LegacyStart(Format),
    /// Verify v1 `/verify/check/{format}`.
    LegacyCheck(Format),
    /// Verify v1 `/verify/control/{format}`: `trigger_next_event` is a start again for
    /// the `request_id`'s number; `cancel` passes.
    LegacyControl(Format),
    /// Messages API `/v1/messages`.
    Message,
}

/// The answer format a Verify v1 path names.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// `…/json`.
    Json,
    /// `…/xml`.
    Xml,
}

impl Op {
    /// The request kind.
    pub fn kind(self) -> RequestKind {
        match self {
            Op::Sms | Op::Message => RequestKind::Send,
            Op::VerifyStart | Op::VerifyNext | Op::LegacyStart(_) | Op::LegacyControl(_) => {
                RequestKind::VerifyStart
            }
            Op::VerifyCheck | Op::LegacyCheck(_) => RequestKind::VerifyCheck,
        }
    }
}

/// Vonage's sending endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "POST",
        pattern: "/sms/json",
        op: super::Op::Vonage(Op::Sms),
    },
    // `/sms/{format}`, json or xml; every parameter may also be in the query string, of a
    // GET too.
    Endpoint {
        method: "POST",
        pattern: "/sms/xml",
        op: super::Op::Vonage(Op::Sms),
    },
    Endpoint {
        method: "GET",
        pattern: "/sms/json",
        op: super::Op::Vonage(Op::Sms),
    },
    Endpoint {
        method: "GET",
        pattern: "/sms/xml",
        op: super::Op::Vonage(Op::Sms),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/verify",
        op: super::Op::Vonage(Op::VerifyStart),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/verify/{}",
        op: super::Op::Vonage(Op::VerifyCheck),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/verify/{}/next_workflow",
        op: super::Op::Vonage(Op::VerifyNext),
    },
    // Verify v1: every endpoint "is available by `GET` request as well as `POST`", in
    // `json` or `xml` (PSD2's XML is documented as unsupported: decided all the same, so
    // that it cannot pass undecided).
    Endpoint {
        method: "POST",
        pattern: "/verify/json",
        op: super::Op::Vonage(Op::LegacyStart(Format::Json)),
    },
    Endpoint {
        method: "GET",
        pattern: "/verify/json",
        op: super::Op::Vonage(Op::LegacyStart(Format::Json)),
    },
    Endpoint {
        method: "POST",
        pattern: "/verify/xml",
        op: super::Op::Vonage(Op::LegacyStart(Format::Xml)),
    },
    Endpoint {
        method: "GET",
        pattern: "/verify/xml",
        op: super::Op::Vonage(Op::LegacyStart(Format::Xml)),
    },
    Endpoint {
        method: "POST",
        pattern: "/verify/psd2/json",
        op: super::Op::Vonage(Op::LegacyStart(Format::Json)),
    },
    Endpoint {
        method: "GET",
        pattern: "/verify/psd2/json",
        op: super::Op::Vonage(Op::LegacyStart(Format::Json)),
    },
    Endpoint {
        method: "POST",
        pattern: "/verify/psd2/xml",
        op: super::Op::Vonage(Op::LegacyStart(Format::Xml)),
    },
    Endpoint {
        method: "GET",
        pattern: "/verify/psd2/xml",
        op: super::Op::Vonage(Op::LegacyStart(Format::Xml)),
    },
    Endpoint {
        method: "POST",
        pattern: "/verify/check/json",
        op: super::Op::Vonage(Op::LegacyCheck(Format::Json)),
    },
    Endpoint {
        method: "GET",
        pattern: "/verify/check/json",
        op: super::Op::Vonage(Op::LegacyCheck(Format::Json)),
    },
    Endpoint {
        method: "POST",
        pattern: "/verify/check/xml",
        op: super::Op::Vonage(Op::LegacyCheck(Format::Xml)),
    },
    Endpoint {
        method: "GET",
        pattern: "/verify/check/xml",
        op: super::Op::Vonage(Op::LegacyCheck(Format::Xml)),
    },
    Endpoint {
        method: "POST",
        pattern: "/verify/control/json",
        op: super::Op::Vonage(Op::LegacyControl(Format::Json)),
    },
    Endpoint {
        method: "GET",
        pattern: "/verify/control/json",
        op: super::Op::Vonage(Op::LegacyControl(Format::Json)),
    },
    Endpoint {
        method: "POST",
        pattern: "/verify/control/xml",
        op: super::Op::Vonage(Op::LegacyControl(Format::Xml)),
    },
    Endpoint {
        method: "GET",
        pattern: "/verify/control/xml",
        op: super::Op::Vonage(Op::LegacyControl(Format::Xml)),
    },
    Endpoint {
        method: "POST",
        pattern: "/v1/messages",
        op: super::Op::Vonage(Op::Message),
    },
];

/// Vonage API roots that pass through.
pub const ROOTS: &[&str] = &["/sms/**", "/v2/verify/**", "/verify/**", "/v1/messages/**"];

/// A field from a form or JSON body.
fn field(req: &RequestView<'_>, json: Option<&serde_json::Value>, key: &str) -> Option<String> {
    match json {
        Some(v) => v.get(key).and_then(|x| match x {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }),
        None => req.form_value(key),
    }
}

/// A Verify v1 request's JSON body, if it has one (else a form, or only a query string).
fn legacy_json(req: &RequestView<'_>) -> Result<Option<serde_json::Value>, ExtractError> {
    if req.is_json() {
        Ok(Some(req.json()?))
    } else if req.is_form() || req.body.is_empty() {
        Ok(None)
    } else {
        Err(ExtractError::MalformedBody(
            "Vonage Verify v1 takes a form or JSON body",
        ))
    }
}

/// The one value of an SMS API or Verify v1 field, from the body and the query string
/// (Vonage reads both): several different values are refused, an empty one is none. A JSON value that is
/// neither a string nor a number (a list, an object, a boolean) is refused too: smsfence
/// would decide the query string's value, or none, while Vonage may read the body's.
fn legacy_field(
    req: &RequestView<'_>,
    json: Option<&serde_json::Value>,
    key: &str,
    what: &'static str,
) -> Result<Option<String>, ExtractError> {
    if let Some(v) = json.and_then(|j| j.get(key)) {
        if !(v.is_string() || v.is_number() || v.is_null()) {
            return Err(ExtractError::Unsupported(
                "a Vonage field that is neither a string nor a number",
            ));
        }
    }
    // A name that a server may bind as `key` (`NUMBER`, `number[]`) beside the one
    // smsfence reads: the provider may read the other.
    let query = req.query.unwrap_or("").as_bytes();
    let lookalike = match json.and_then(serde_json::Value::as_object) {
        Some(o) => o.keys().any(|k| k != key && k.eq_ignore_ascii_case(key)),
        None => super::form_lookalike(req.body, key),
    };
    if lookalike || super::form_lookalike(query, key) {
        return Err(ExtractError::Unsupported(
            "a Vonage field named in another letter case or as a list",
        ));
    }
    let mut values: Vec<String> = match json {
        Some(_) => field(req, json, key).into_iter().collect(),
        None => req.form_values(key),
    };
    values.extend(super::form_values(query, key));
    Ok(super::single_value(values, what)?.filter(|v| !v.trim().is_empty()))
}

/// A Verify v1 `number`, as international digits: read in `country` when one is given and
/// the number is national there (Vonage "will then format the number for you").
///
/// Digits that are a valid number both as they are and as a national number of `country`
/// (`3522345678` with `US`: +352 2345678 or +1 352-234-5678) name two numbers, and the
/// Vonage SDKs document a `number` as E.164 only "unless you are setting country
/// explicitly": such a start is refused rather than decided as one of them.
fn legacy_number(number: String, country: Option<&str>) -> Result<String, ExtractError> {
    let Some(country) = country else {
        return Ok(number);
    };
    // A country smsfence does not know (`UK`, `USA`) may be one Vonage formats in.
    let Some(country) = crate::phone::Country::parse(country.trim()) else {
        return Err(ExtractError::Unsupported(
            "a Verify v1 `country` that is not an ISO 3166-1 alpha-2 code",
        ));
    };
    let national = crate::phone::normalize(&number, NumberFormat::National, Some(country));
    let international = crate::phone::normalize(&number, NumberFormat::InternationalDigits, None);
    match (national, international) {
        (Ok(n), Ok(i)) if n.is_valid() && i.is_valid() && n.e164() != i.e164() => Err(
            ExtractError::Unsupported("a `number` that `country` reads as another number"),
        ),
        // Digits that are a valid number as they are stay as they are.
        (_, Ok(d)) if d.is_valid() => Ok(number),
        (Ok(d), _) => Ok(d.e164()),
        _ => Ok(number),
    }
}

/// The channels of the Messages API that reach a phone number (vonage-python-sdk
/// `ChannelType`: `to` in E.164 without `+`).
const PHONE_CHANNELS: &[&str] = &["sms", "mms", "rcs", "whatsapp", "viber_service"];

/// Reads the Messages API's messages: the primary one and each failover.
fn read_messages(v: &serde_json::Value, out: &mut Extracted) -> Result<(), ExtractError> {
    // vonage-python-sdk sends `{"message": {…}, "failover": […]}`; the API reference
    // puts the message's fields at the top level beside `failover`.
    let primary = match v.get("message") {
        Some(m) if m.is_object() && v.get("to").is_none() => m,
        _ => v,
    };
    let failover = match v.get("failover").or_else(|| primary.get("failover")) {
        None | Some(serde_json::Value::Null) => &[][..],
        Some(serde_json::Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(ExtractError::Unsupported("a `failover` that is not a list")),
    };
    if primary.get("failover").is_some() && v.get("failover").is_some() && primary != v {
        return Err(ExtractError::Unsupported("two `failover` lists"));
    }
    let mut phones = 0;
    for (i, m) in std::iter::once(primary).chain(failover).enumerate() {
        let channel = super::json_str(m, "channel").unwrap_or("");
        if channel == "messenger" {
            // A Facebook page-scoped id, not a phone number.
            continue;
        }
        if !PHONE_CHANNELS.contains(&channel) {
            return Err(ExtractError::Unsupported(
                "a Messages API channel smsfence does not read",
            ));
        }
        phones += 1;
        let to = match m.get("to") {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(ExtractError::MissingRecipient("to")),
        };
        if !out.recipients.contains(&to) {
            out.recipients.push(to);
        }
        if i == 0 {
            out.sender = super::json_str(m, "from").map(str::to_owned);
            if channel == "sms" {
                out.segments = super::json_str(m, "text").map_or(1, segments::count);
            }
        }
    }
    out.no_phone = phones == 0;
    Ok(())
}

/// Reads a Vonage request.
pub fn extract(op: Op, req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    let mut out = Extracted {
        segments: 1,
        number_format: Some(NumberFormat::InternationalDigits),
        ..Extracted::default()
    };
    match op {
        Op::Sms => {
            let json = if req.is_json() {
                Some(req.json()?)
            } else if req.is_form() || req.body.is_empty() {
                None
            } else {
                return Err(ExtractError::MalformedBody(
                    "Vonage SMS takes a form or JSON body",
                ));
            };
            // Vonage reads the query string as well as the body: every `to` in either.
            let query = req.query.unwrap_or("").as_bytes();
            let to = legacy_field(req, json.as_ref(), "to", "several different `to`")?;
            out.recipients
                .push(to.ok_or(ExtractError::MissingRecipient("to"))?);
            let field =
                |key| field(req, json.as_ref(), key).or_else(|| super::form_value(query, key));
            out.sender = field("from");
            out.account = field("api_key").or_else(|| req.basic_user());
            out.segments = field("text").map_or(1, |t| segments::count(&t));
        }
        Op::VerifyStart => {
            if !req.is_json() {
                return Err(ExtractError::MalformedBody(
                    "Vonage Verify takes a JSON body",
                ));
            }
            let v = req.json()?;
            let workflow = v
                .get("workflow")
                .and_then(serde_json::Value::as_array)
                .ok_or(ExtractError::MissingRecipient("workflow[].to"))?;
            let mut email_only = true;
            for step in workflow {
                let channel = super::json_str(step, "channel").unwrap_or("");
                if channel == "email" {
                    continue;
                }
                email_only = false;
                match super::json_str(step, "to") {
                    Some(to) if !out.recipients.iter().any(|r| r == to) => {
                        out.recipients.push(to.to_owned())
                    }
                    Some(_) => {}
                    None => return Err(ExtractError::MissingRecipient("workflow[].to")),
                }
            }
            if workflow.is_empty() {
                return Err(ExtractError::MissingRecipient("workflow[].to"));
            }
            out.no_phone = email_only;
            out.sender = super::json_str(&v, "brand").map(str::to_owned);
            out.account = req.basic_user();
        }
        // No body: the number is the one the `request_id` was started for.
        Op::VerifyCheck | Op::VerifyNext => {
            out.verify_ref = req.param(0);
            out.account = req.basic_user();
        }
        Op::LegacyStart(_) => {
            let json = legacy_json(req)?;
            let j = json.as_ref();
            let number = legacy_field(req, j, "number", "several different `number`")?
                .ok_or(ExtractError::MissingRecipient("number"))?;
            let country = legacy_field(req, j, "country", "several different `country`")?;
            out.recipients
                .push(legacy_number(number, country.as_deref())?);
            out.sender = legacy_field(req, j, "sender_id", "several different `sender_id`")?;
            out.account = legacy_field(req, j, "api_key", "several different `api_key`")?
                .or_else(|| req.basic_user());
        }
        Op::LegacyCheck(_) | Op::LegacyControl(_) => {
            let json = legacy_json(req)?;
            let j = json.as_ref();
            if let Op::LegacyControl(_) = op {
                match legacy_field(req, j, "cmd", "several different `cmd`")?.as_deref() {
                    Some("trigger_next_event") => {}
                    // Sends nothing.
                    Some("cancel") => out.no_phone = true,
                    _ => {
                        return Err(ExtractError::Unsupported(
                            "a Verify control `cmd` other than trigger_next_event or cancel",
                        ))
                    }
                }
            }
            out.verify_ref = legacy_field(req, j, "request_id", "several different `request_id`")?;
            out.account = legacy_field(req, j, "api_key", "several different `api_key`")?
                .or_else(|| req.basic_user());
        }
        Op::Message => {
            if !req.is_json() {
                return Err(ExtractError::MalformedBody(
                    "the Vonage Messages API takes a JSON body",
                ));
            }
            read_messages(&req.json()?, &mut out)?;
            out.account = req.basic_user();
        }
    }
    Ok(out)
}

/// Vonage's native error for a refusal.
pub fn refusal(op: Op, refusal: &Refusal<'_>) -> NativeResponse {
    match op {
        Op::Sms => {
            let (status, text) = match (refusal.kind, refusal.reason) {
                (RefusalKind::Throttle { .. }, _) => ("1", "Throttled"),
                (_, Reason::InvalidNumber | Reason::UnsupportedRequest) => ("3", "Invalid Message"),
                _ => ("7", "Number Barred"),
            };
            /// The SMS API's answer: HTTP 200, the error in the message's status.
            #[derive(serde::Serialize)]
            struct Answer {
                #[serde(rename = "message-count")]
                count: &'static str,
                messages: [Message; 1],
            }
            #[derive(serde::Serialize)]
            struct Message {
                status: &'static str,
                #[serde(rename = "error-text")]
                error_text: String,
            }
            NativeResponse::json(
                StatusCode::OK,
                &Answer {
                    count: "1",
                    messages: [Message {
                        status,
                        error_text: format!("{text}: {}", refusal.message()),
                    }],
                },
            )
            .with_retry_after(refusal)
        }
        Op::LegacyStart(format) | Op::LegacyCheck(format) | Op::LegacyControl(format) => {
            let start = matches!(op, Op::LegacyStart(_));
            // The codes of the OpenAPI's `requestErrorResponse` (start) and
            // `checkErrorResponse` / `controlErrorResponse`.
            let (status, text) = match (refusal.kind, refusal.reason) {
                (RefusalKind::Throttle { .. }, _) => ("1", "Throttled"),
                (_, Reason::InvalidNumber) => ("3", "Invalid value for number"),
                (_, Reason::UnsupportedRequest) => ("3", "Invalid value"),
                (_, Reason::DeniedCountry | Reason::CountryNotAllowed) if start => {
                    ("15", "The destination number is not in a supported network")
                }
                _ if start => (
                    "7",
                    "The number you are trying to verify is blacklisted for verification",
                ),
                _ => (
                    "6",
                    "The Vonage platform was unable to process this message",
                ),
            };
            let error_text = format!("{text}: {}", refusal.message());
            let fields: &[(&str, &str)] = match op {
                // `controlErrorResponse` has no `request_id`.
                Op::LegacyControl(_) => &[("status", status), ("error_text", &error_text)],
                _ => &[
                    ("request_id", ""),
                    ("status", status),
                    ("error_text", &error_text),
                ],
            };
            legacy_answer(op, format, fields).with_retry_after(refusal)
        }
        Op::VerifyStart | Op::VerifyCheck | Op::VerifyNext | Op::Message => {
            let (status, kind, title) = match (refusal.kind, refusal.reason) {
                (RefusalKind::Throttle { .. }, _) => {
                    (StatusCode::TOO_MANY_REQUESTS, "throttled", "Rate Limit Hit")
                }
                (_, Reason::InvalidNumber | Reason::UnsupportedRequest) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-params",
                    "Invalid params",
                ),
                _ => (StatusCode::FORBIDDEN, "fraud-check", "Forbidden"),
            };
            /// An RFC 7807 problem, as Vonage's newer APIs answer.
            #[derive(serde::Serialize)]
            struct Problem {
                #[serde(rename = "type")]
                kind: String,
                title: &'static str,
                detail: String,
                instance: String,
            }
            let mut r = NativeResponse::json(
                status,
                &Problem {
                    kind: format!("https://developer.vonage.com/api-errors#{kind}"),
                    title,
                    detail: refusal.message(),
                    instance: sandbox_id("", 32),
                },
            )
            .with_retry_after(refusal);
            r.content_type = "application/problem+json";
            r
        }
    }
}

/// A Verify v1 answer, HTTP 200: a flat JSON object, or for `xml` a flat element named
/// as the OpenAPI's schemas name it: `<response>` for control, `<verify_response>` else.
fn legacy_answer(op: Op, format: Format, fields: &[(&str, &str)]) -> NativeResponse {
    match format {
        Format::Json => {
            let map: serde_json::Map<String, serde_json::Value> = fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), json!(v)))
                .collect();
            NativeResponse::json(StatusCode::OK, &map)
        }
        Format::Xml => {
            let root = match op {
                Op::LegacyControl(_) => "response",
                _ => "verify_response",
            };
            let mut xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><{root}>");
            for (k, v) in fields {
                xml.push_str(&format!("<{k}>{}</{k}>", xml_escape(v)));
            }
            xml.push_str(&format!("</{root}>"));
            NativeResponse {
                status: StatusCode::OK,
                headers: Vec::new(),
                content_type: "text/xml",
                body: xml.into(),
            }
        }
    }
}

/// Text escaped for an XML element.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The text of the first `<tag>…</tag>` in an XML answer (Verify v1's are flat).
fn xml_tag<'b>(body: &'b str, tag: &str) -> Option<&'b str> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{tag}>"))?;
    Some(body[start..start + end].trim())
}

/// The sandbox's Vonage answer.
pub fn sandbox(op: Op, req: &RequestView<'_>, ex: &Extracted) -> NativeResponse {
    match op {
        Op::Sms => {
            let to = ex
                .recipients
                .first()
                .map(|t| t.trim_start_matches('+').to_owned())
                .unwrap_or_default();
            NativeResponse::json(
                StatusCode::OK,
                &json!({
                    "message-count": "1",
                    "messages": [{
                        "to": to,
                        "message-id": sandbox_id("", 32),
                        "status": "0",
                        "remaining-balance": "10.00000000",
                        "message-price": "0.03330000",
                        "network": "12345",
                    }],
                }),
            )
        }
        Op::VerifyStart => {
            let id = uuid_like();
            NativeResponse::json(
                StatusCode::ACCEPTED,
                &json!({"request_id": id, "check_url": format!("https://api-eu.vonage.com/v2/verify/{id}/silent-auth/redirect")}),
            )
        }
        Op::VerifyNext => NativeResponse::json(StatusCode::OK, &json!({})),
        Op::LegacyStart(format) => {
            let id = sandbox_id("", 32);
            legacy_answer(op, format, &[("request_id", &id), ("status", "0")])
        }
        Op::LegacyControl(format) => {
            let json = legacy_json(req).ok().flatten();
            let cmd = legacy_field(req, json.as_ref(), "cmd", "cmd")
                .ok()
                .flatten()
                .unwrap_or_default();
            legacy_answer(op, format, &[("status", "0"), ("command", &cmd)])
        }
        Op::LegacyCheck(format) => {
            let json = legacy_json(req).ok().flatten();
            let code = legacy_field(req, json.as_ref(), "code", "code")
                .ok()
                .flatten();
            let id = ex.verify_ref.clone().unwrap_or_default();
            match code.as_deref() {
                Some(c) if c != "000000" => legacy_answer(
                    op,
                    format,
                    &[
                        ("request_id", &id),
                        ("event_id", &sandbox_id("", 16)),
                        ("status", "0"),
                        ("price", "0.10000000"),
                        ("currency", "EUR"),
                    ],
                ),
                _ => legacy_answer(
                    op,
                    format,
                    &[
                        ("request_id", &id),
                        ("status", "16"),
                        (
                            "error_text",
                            "The code inserted does not match the expected value",
                        ),
                    ],
                ),
            }
        }
        Op::Message => {
            NativeResponse::json(StatusCode::ACCEPTED, &json!({"message_uuid": uuid_like()}))
        }
        Op::VerifyCheck => {
            let code = req
                .json()
                .ok()
                .and_then(|v| super::json_str(&v, "code").map(str::to_owned));
            let id = req.param(0).unwrap_or_default();
            match code.as_deref() {
                Some(c) if c != "000000" => NativeResponse::json(
                    StatusCode::OK,
                    &json!({"request_id": id, "status": "completed"}),
                ),
                _ => {
                    let mut r = NativeResponse::json(
                        StatusCode::BAD_REQUEST,
                        &json!({
                            "type": "https://developer.vonage.com/api-errors/verify#invalid-code",
                            "title": "Invalid Code",
                            "detail": "The code you provided does not match the expected value.",
                            "instance": sandbox_id("", 32),
                        }),
                    );
                    r.content_type = "application/problem+json";
                    r
                }
            }
        }
    }
}

/// A UUID-shaped sandbox id.
fn uuid_like() -> String {
    let h = sandbox_id("", 32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Whether Vonage's answer starts or approves a verification.
pub fn conversion(
    op: Op,
    req: &RequestView<'_>,
    ex: &Extracted,
    status: StatusCode,
    body: &[u8],
) -> ConversionSignal {
    if !status.is_success() {
        return ConversionSignal::None;
    }
    if let Op::LegacyStart(format) | Op::LegacyCheck(format) = op {
        return legacy_conversion(op, format, ex, body);
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return ConversionSignal::None;
    };
    match op {
        Op::Sms
        | Op::VerifyNext
        | Op::Message
        | Op::LegacyStart(_)
        | Op::LegacyCheck(_)
        | Op::LegacyControl(_) => ConversionSignal::None,
        Op::VerifyStart => match super::json_str(&v, "request_id") {
            Some(id) => ConversionSignal::Started {
                reference: id.to_owned(),
            },
            None => ConversionSignal::None,
        },
        Op::VerifyCheck => match super::json_str(&v, "status") {
            Some("completed") => ConversionSignal::Verified {
                number: None,
                reference: req.param(0),
            },
            _ => ConversionSignal::None,
        },
    }
}

/// What a Verify v1 answer (HTTP 200 whatever the outcome) says: `status` `"0"` is a
/// start (its `request_id` remembered) or an approved code; a start answered `"10"`
/// (concurrent verifications) names the one in progress for the same number.
fn legacy_conversion(op: Op, format: Format, ex: &Extracted, body: &[u8]) -> ConversionSignal {
    let json;
    let text;
    let (status, id) = match format {
        Format::Json => {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
                return ConversionSignal::None;
            };
            json = v;
            (
                super::json_str(&json, "status"),
                super::json_str(&json, "request_id"),
            )
        }
        Format::Xml => {
            let Ok(t) = std::str::from_utf8(body) else {
                return ConversionSignal::None;
            };
            text = t;
            (xml_tag(text, "status"), xml_tag(text, "request_id"))
        }
    };
    match (op, status, id) {
        (Op::LegacyStart(_), Some("0" | "10"), Some(id)) if !id.is_empty() => {
            ConversionSignal::Started {
                reference: id.to_owned(),
            }
        }
        (Op::LegacyCheck(_), Some("0"), _) => ConversionSignal::Verified {
            number: None,
            reference: ex.verify_ref.clone(),
        },
        _ => ConversionSignal::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::tests::{form_headers, json_headers, view};

    #[test]
    fn sms_form_and_json() {
        let h = form_headers();
        let ex = extract(
            Op::Sms,
            &view(
                &h,
                &[],
                b"api_key=abc&api_secret=s3cr3t&from=ACME&to=447400123456&text=Code+1234",
            ),
        )
        .unwrap();
        assert_eq!(ex.recipients, vec!["447400123456"]);
        assert_eq!(ex.account.as_deref(), Some("abc"));
        assert_eq!(ex.number_format, Some(NumberFormat::InternationalDigits));
        let h = json_headers();
        let ex = extract(
            Op::Sms,
            &view(
                &h,
                &[],
                br#"{"api_key":"abc","to":"447400123456","from":"ACME","text":"hi"}"#,
            ),
        )
        .unwrap();
        assert_eq!(ex.recipients, vec!["447400123456"]);
        assert_eq!(
            extract(Op::Sms, &view(&h, &[], b"{")),
            Err(ExtractError::MalformedBody("the body is not valid JSON"))
        );
        assert_eq!(
            extract(Op::Sms, &view(&h, &[], br#"{"text":"x"}"#)),
            Err(ExtractError::MissingRecipient("to"))
        );
    }

    #[test]
    fn verify_start_and_check() {
        let h = json_headers();
        let body = br#"{"brand":"ACME","workflow":[{"channel":"sms","to":"447400123456"},{"channel":"voice","to":"447400123456"}]}"#;
        let ex = extract(Op::VerifyStart, &view(&h, &[], body)).unwrap();
        assert_eq!(ex.recipients, vec!["447400123456"]);
        let email = extract(
            Op::VerifyStart,
            &view(
                &h,
                &[],
                br#"{"brand":"A","workflow":[{"channel":"email","to":"a@b.c"}]}"#,
            ),
        )
        .unwrap();
        assert!(email.no_phone);
        let check = extract(
            Op::VerifyCheck,
            &view(&h, &["req-1"], br#"{"code":"1234"}"#),
        )
        .unwrap();
        assert_eq!(check.verify_ref.as_deref(), Some("req-1"));
        let started = conversion(
            Op::VerifyStart,
            &view(&h, &[], body),
            &ex,
            StatusCode::ACCEPTED,
            br#"{"request_id":"req-1"}"#,
        );
        assert_eq!(
            started,
            ConversionSignal::Started {
                reference: "req-1".into()
            }
        );
        let done = conversion(
            Op::VerifyCheck,
            &view(&h, &["req-1"], b""),
            &check,
            StatusCode::OK,
            br#"{"status":"completed"}"#,
        );
        assert_eq!(
            done,
            ConversionSignal::Verified {
                number: None,
                reference: Some("req-1".into())
            }
        );
    }

    #[test]
    fn sms_refusals_are_200_with_status() {
        let r = refusal(
            Op::Sms,
            &Refusal {
                kind: RefusalKind::Throttle {
                    retry_after: std::time::Duration::from_secs(9),
                },
                reason: Reason::RateLimited,
                rule: "r",
                recipient: None,
                recipients: 1,
            },
        );
        assert_eq!(r.status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["messages"][0]["status"], "1");
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| n == "retry-after" && v == "9"));
        let b = refusal(
            Op::VerifyStart,
            &Refusal {
                kind: RefusalKind::Block,
                reason: Reason::NumberType,
                rule: "r",
                recipient: None,
                recipients: 1,
            },
        );
        assert_eq!(b.status, StatusCode::FORBIDDEN);
        assert_eq!(b.content_type, "application/problem+json");
    }
    #[test]
    fn legacy_verify_reads_form_json_and_query() {
        let f = form_headers();
        let ex = extract(
            Op::LegacyStart(Format::Json),
            &view(
                &f,
                &[],
                b"api_key=abc&api_secret=s3cr3t&number=447400123456&brand=ACME&workflow_id=4",
            ),
        )
        .unwrap();
        assert_eq!(ex.recipients, vec!["447400123456"]);
        assert_eq!(ex.account.as_deref(), Some("abc"));
        let j = json_headers();
        let ex = extract(
            Op::LegacyStart(Format::Json),
            &view(
                &j,
                &[],
                br#"{"number":"447400123456","payee":"ACME","amount":"10.00"}"#,
            ),
        )
        .unwrap();
        assert_eq!(ex.recipients, vec!["447400123456"]);
        // `country`: a national number read in it; international digits stay as they are.
        let ex = extract(
            Op::LegacyStart(Format::Json),
            &view(&f, &[], b"number=07400123456&country=GB&brand=A"),
        )
        .unwrap();
        assert_eq!(ex.recipients, vec!["+447400123456"]);
        let ex = extract(
            Op::LegacyStart(Format::Json),
            &view(&f, &[], b"number=447400123456&country=GB&brand=A"),
        )
        .unwrap();
        assert_eq!(ex.recipients, vec!["447400123456"]);
        // The query string is read too (a GET, or a POST with parameters in the URL).
        let mut q = view(&f, &[], b"brand=A");
        q.query = Some("number=447400123456");
        let ex = extract(Op::LegacyStart(Format::Xml), &q).unwrap();
        assert_eq!(ex.recipients, vec!["447400123456"]);
        let mut two = view(&f, &[], b"number=447400123456");
        two.query = Some("number=449098790123");
        assert!(matches!(
            extract(Op::LegacyStart(Format::Json), &two),
            Err(ExtractError::Unsupported(_))
        ));
        assert_eq!(
            extract(Op::LegacyStart(Format::Json), &view(&f, &[], b"brand=A")),
            Err(ExtractError::MissingRecipient("number"))
        );
        let check = extract(
            Op::LegacyCheck(Format::Json),
            &view(&f, &[], b"request_id=abc123&code=1234"),
        )
        .unwrap();
        assert_eq!(check.verify_ref.as_deref(), Some("abc123"));
        assert!(check.recipients.is_empty());
        let next = extract(
            Op::LegacyControl(Format::Json),
            &view(&f, &[], b"request_id=abc123&cmd=trigger_next_event"),
        )
        .unwrap();
        assert_eq!(next.verify_ref.as_deref(), Some("abc123"));
        assert!(!next.no_phone);
        let cancel = extract(
            Op::LegacyControl(Format::Json),
            &view(&f, &[], b"request_id=abc123&cmd=cancel"),
        )
        .unwrap();
        assert!(cancel.no_phone);
        assert!(matches!(
            extract(
                Op::LegacyControl(Format::Json),
                &view(&f, &[], b"request_id=abc123&cmd=other"),
            ),
            Err(ExtractError::Unsupported(_))
        ));
    }

    #[test]
    fn legacy_verify_answers_and_conversions() {
        let f = form_headers();
        let check = Extracted {
            verify_ref: Some("abc123".into()),
            ..Extracted::default()
        };
        let v = view(&f, &[], b"");
        let signal = |op, body: &[u8]| conversion(op, &v, &check, StatusCode::OK, body);
        assert_eq!(
            signal(
                Op::LegacyStart(Format::Json),
                br#"{"request_id":"abc123","status":"0"}"#
            ),
            ConversionSignal::Started {
                reference: "abc123".into()
            }
        );
        assert_eq!(
            signal(
                Op::LegacyStart(Format::Xml),
                b"<?xml version=\"1.0\"?><verify_response><request_id>abc123</request_id><status>0</status></verify_response>"
            ),
            ConversionSignal::Started {
                reference: "abc123".into()
            }
        );
        // An error is HTTP 200 too.
        assert_eq!(
            signal(
                Op::LegacyStart(Format::Json),
                br#"{"request_id":"","status":"3","error_text":"Invalid value for number"}"#
            ),
            ConversionSignal::None
        );
        let verified = ConversionSignal::Verified {
            number: None,
            reference: Some("abc123".into()),
        };
        assert_eq!(
            signal(
                Op::LegacyCheck(Format::Json),
                br#"{"request_id":"abc123","event_id":"0A0","status":"0","price":"0.1","currency":"EUR"}"#
            ),
            verified
        );
        assert_eq!(
            signal(
                Op::LegacyCheck(Format::Xml),
                b"<verify_response><status>0</status></verify_response>"
            ),
            verified
        );
        assert_eq!(
            signal(
                Op::LegacyCheck(Format::Json),
                br#"{"request_id":"abc123","status":"16","error_text":"The code inserted does not match the expected value"}"#
            ),
            ConversionSignal::None
        );
        let refuse = |op, kind, reason| {
            refusal(
                op,
                &Refusal {
                    kind,
                    reason,
                    rule: "r<&>",
                    recipient: None,
                    recipients: 1,
                },
            )
        };
        let throttle = RefusalKind::Throttle {
            retry_after: std::time::Duration::from_secs(9),
        };
        let t = refuse(Op::LegacyCheck(Format::Json), throttle, Reason::RateLimited);
        assert_eq!(t.status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!((&v["status"], &v["request_id"]), (&json!("1"), &json!("")));
        assert!(v["error_text"].as_str().unwrap().starts_with("Throttled: "));
        assert!(t
            .headers
            .iter()
            .any(|(n, v)| n == "retry-after" && v == "9"));
        let status = |op, reason| {
            let r = refuse(op, RefusalKind::Block, reason);
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            v["status"].as_str().unwrap().to_owned()
        };
        let start = Op::LegacyStart(Format::Json);
        assert_eq!(status(start, Reason::NumberType), "7");
        assert_eq!(status(start, Reason::DeniedCountry), "15");
        assert_eq!(status(start, Reason::InvalidNumber), "3");
        assert_eq!(
            status(Op::LegacyControl(Format::Json), Reason::NumberType),
            "6"
        );
        let x = refuse(
            Op::LegacyStart(Format::Xml),
            RefusalKind::Block,
            Reason::NumberType,
        );
        let body = std::str::from_utf8(&x.body).unwrap();
        assert_eq!(x.content_type, "text/xml");
        assert_eq!(xml_tag(body, "status"), Some("7"));
        assert_eq!(xml_tag(body, "request_id"), Some(""));
        assert!(body.contains("rule=r&lt;&amp;&gt;"), "{body}");
        let c = refuse(
            Op::LegacyControl(Format::Xml),
            throttle,
            Reason::RateLimited,
        );
        let body = std::str::from_utf8(&c.body).unwrap();
        assert!(
            body.contains("<response><status>1</status><error_text>Throttled: "),
            "{body}"
        );
    }

    #[test]
    fn messages_api_channels_and_failover() {
        let j = json_headers();
        let read = |body: &[u8]| extract(Op::Message, &view(&j, &[], body));
        let ex = read(
            br#"{"to":"447400123456","from":"ACME","channel":"sms","message_type":"text","text":"hi"}"#,
        )
        .unwrap();
        assert_eq!(ex.recipients, vec!["447400123456"]);
        assert_eq!(ex.sender.as_deref(), Some("ACME"));
        for channel in ["mms", "rcs", "whatsapp", "viber_service"] {
            let body = format!(
                r#"{{"to":"447400123456","from":"A","channel":"{channel}","message_type":"text","text":"hi"}}"#
            );
            assert_eq!(
                read(body.as_bytes()).unwrap().recipients,
                vec!["447400123456"]
            );
        }
        // Failover at the top level (API reference) and under `message` (Python SDK).
        let top = read(
            br#"{"to":"447400123456","from":"A","channel":"rcs","message_type":"text","text":"hi","failover":[{"to":"449098790123","from":"A","channel":"sms","message_type":"text","text":"hi"}]}"#,
        )
        .unwrap();
        assert_eq!(top.recipients, vec!["447400123456", "449098790123"]);
        let wrapped = read(
            br#"{"message":{"to":"447400123456","from":"A","channel":"whatsapp","message_type":"text","text":"hi"},"failover":[{"to":"447400123456","from":"A","channel":"sms","message_type":"text","text":"hi"},{"to":"449098790123","from":"A","channel":"sms","message_type":"text","text":"hi"}]}"#,
        )
        .unwrap();
        assert_eq!(wrapped.recipients, vec!["447400123456", "449098790123"]);
        // Messenger ids are not phone numbers: passed; but not its phone failovers.
        let m = read(br#"{"to":"10152368852405295","from":"1234","channel":"messenger","message_type":"text","text":"hi"}"#).unwrap();
        assert!(m.no_phone);
        let mf = read(br#"{"to":"10152368852405295","from":"1234","channel":"messenger","message_type":"text","text":"hi","failover":[{"to":"449098790123","from":"A","channel":"sms","message_type":"text","text":"hi"}]}"#).unwrap();
        assert!(!mf.no_phone);
        assert_eq!(mf.recipients, vec!["449098790123"]);
        assert!(matches!(
            read(br#"{"to":"447400123456","channel":"pigeon","message_type":"text"}"#),
            Err(ExtractError::Unsupported(_))
        ));
        assert!(matches!(
            read(br#"{"to":"447400123456","channel":"sms","failover":{"to":"1"}}"#),
            Err(ExtractError::Unsupported(_))
        ));
        assert_eq!(
            read(br#"{"channel":"sms","message_type":"text","text":"hi"}"#),
            Err(ExtractError::MissingRecipient("to"))
        );
    }
}
