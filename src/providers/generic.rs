//! The generic extractor: any other HTTP SMS API, described in the route's config.
//!
//! ```toml
//! [[route]]
//! name = "mocean"
//! preset = "generic"
//! upstream = "https://rest.moceanapi.com"
//! [route.generic]
//! method = "POST"
//! path = "/rest/2/sms"                     # `{}` matches one path segment
//! recipients = { form = "mocean-to", split = "," }
//! number_format = "international_digits"
//! text = { form = "mocean-text" }           # read only to count segments
//! ```
//!
//! A locator names exactly one place: `form` (a field of a URL-encoded body), `json` (a
//! JSON pointer where `*` matches every array element or object member), `query` (a
//! query parameter), `path_segment` (the index of a `{}` capture) or `header`; `split`
//! cuts a list (`,` `<` `;`). Refusals are rendered from `block` / `throttle` templates
//! with the placeholders `{reason}`, `{rule}`, `{message}` and `{retry_after}`, escaped
//! for the template's media type (JSON, XML, HTML, form) and filled in in one pass; an
//! unknown placeholder, or a JSON template that is not JSON once filled in, is a
//! configuration error. Values are never logged.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::StatusCode;
use serde::Deserialize;

use super::{
    segments, ExtractError, Extracted, NativeResponse, Refusal, RefusalKind, RequestKind,
    RequestView,
};
use crate::phone::NumberFormat;

/// Where a value is in a request.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LocatorDef {
    /// A form field.
    #[serde(default)]
    pub form: Option<String>,
    /// A JSON pointer with `*` wildcards.
    #[serde(default)]
    pub json: Option<String>,
    /// A query parameter.
    #[serde(default)]
    pub query: Option<String>,
    /// The index of a `{}` capture in `path`.
    #[serde(default)]
    pub path_segment: Option<usize>,
    /// A header.
    #[serde(default)]
    pub header: Option<String>,
    /// A list separator.
    #[serde(default)]
    pub split: Option<String>,
}

/// A response template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateDef {
    /// The HTTP status.
    pub status: u16,
    /// Extra headers; `content-type` defaults to `application/json`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body, with placeholders.
    pub body: String,
}

/// `method = "POST"` or `method = ["GET", "POST"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a method (\"POST\") or a list of methods")]
pub enum MethodDef {
    /// One method.
    One(String),
    /// Several methods: a provider that sends on a GET as on a POST.
    Many(Vec<String>),
}

impl MethodDef {
    fn as_slice(&self) -> &[String] {
        match self {
            MethodDef::One(m) => std::slice::from_ref(m),
            MethodDef::Many(ms) => ms,
        }
    }
}

/// `[route.generic]`: how to read any other HTTP SMS API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericConfig {
    /// The method of the send request, or every method the provider sends with
    /// (`["GET", "POST"]`).
    pub method: MethodDef,
    /// The path pattern of the send request (`{}` matches one segment).
    pub path: String,
    /// API roots (ending in `/**`) whose other requests pass through.
    #[serde(default)]
    pub roots: Vec<String>,
    /// `send` (default), `verify_start` or `verify_check`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Where the recipients are.
    pub recipients: LocatorDef,
    /// How the numbers are written.
    #[serde(default)]
    pub number_format: Option<NumberFormat>,
    /// Where the sender is.
    #[serde(default)]
    pub sender: Option<LocatorDef>,
    /// Where the text is (only to count segments).
    #[serde(default)]
    pub text: Option<LocatorDef>,
    /// Where the account id is.
    #[serde(default)]
    pub account: Option<LocatorDef>,
    /// The refusal answer for blocks.
    #[serde(default)]
    pub block: Option<TemplateDef>,
    /// The refusal answer for throttles.
    #[serde(default)]
    pub throttle: Option<TemplateDef>,
    /// The sandbox's success answer.
    #[serde(default)]
    pub sandbox: Option<TemplateDef>,
}

/// Where a value is, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A form field.
    Form(String),
    /// A JSON pointer, split into segments (`*` = every element).
    Json(Vec<String>),
    /// A query parameter.
    Query(String),
    /// A `{}` capture.
    PathSegment(usize),
    /// A header.
    Header(HeaderName),
}

/// A compiled locator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locator {
    /// Where.
    pub source: Source,
    /// List separator.
    pub split: Option<char>,
}

/// A compiled template.
#[derive(Debug, Clone)]
pub struct Template {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    media: Media,
    body: String,
}

/// What a template's body is, by its `content-type`: how placeholders are escaped in it
/// and the Content-Type it is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    /// `…json…`: inside JSON strings.
    Json,
    /// `…xml…`: markup.
    Xml,
    /// `text/html`: markup.
    Html,
    /// `application/x-www-form-urlencoded`: percent-encoded.
    Form,
    /// Anything else: plain text, as it is.
    Text,
}

impl Media {
    fn of(content_type: &str) -> Media {
        let c = content_type.to_ascii_lowercase();
        if c.contains("json") {
            Media::Json
        } else if c.starts_with("text/html") {
            Media::Html
        } else if c.contains("xml") {
            Media::Xml
        } else if c.starts_with("application/x-www-form-urlencoded") {
            Media::Form
        } else {
            Media::Text
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Media::Json => "application/json",
            Media::Xml => "application/xml; charset=utf-8",
            Media::Html => "text/html; charset=utf-8",
            Media::Form => "application/x-www-form-urlencoded",
            Media::Text => "text/plain; charset=utf-8",
        }
    }

    /// Appends `s`, escaped so that it stays one value of this media type.
    fn push(self, out: &mut String, s: &str) {
        match self {
            Media::Json => {
                let q = serde_json::to_string(s).unwrap_or_default();
                out.push_str(&q[1..q.len().saturating_sub(1)]);
            }
            Media::Xml | Media::Html => {
                for c in s.chars() {
                    match c {
                        '&' => out.push_str("&amp;"),
                        '<' => out.push_str("&lt;"),
                        '>' => out.push_str("&gt;"),
                        '"' => out.push_str("&quot;"),
                        '\'' => out.push_str("&#39;"),
                        c => out.push(c),
                    }
                }
            }
            Media::Form => out.extend(form_urlencoded::byte_serialize(s.as_bytes())),
            Media::Text => out.push_str(s),
        }
    }
}

/// The placeholders a template body may hold.
const PLACEHOLDERS: [&str; 4] = ["reason", "rule", "message", "retry_after"];

/// The first `{name}` in `s` (lower-case letters and `_` between braces; JSON's own
/// braces never look like one): where it starts, and the name.
fn placeholder(s: &str) -> Option<(usize, &str)> {
    let mut from = 0;
    while let Some(at) = s[from..].find('{').map(|i| from + i) {
        let rest = &s[at + 1..];
        let len = rest
            .bytes()
            .take_while(|b| b.is_ascii_lowercase() || *b == b'_')
            .count();
        if len > 0 && rest.as_bytes().get(len) == Some(&b'}') {
            return Some((at, &rest[..len]));
        }
        from = at + 1;
    }
    None
}

/// How a route's locators read the body: it must be sent that way, since a provider
/// reads a body by its Content-Type (a multipart or JSON body can hold text that looks
/// like a form field smsfence would read instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Form,
    Json,
}

/// A compiled generic extractor.
#[derive(Debug, Clone)]
pub struct Generic {
    /// The methods that send, upper-cased (the route table compares methods upper-cased).
    pub methods: Vec<String>,
    /// The path pattern.
    pub path: String,
    /// Pass-through roots.
    pub roots: Vec<String>,
    /// The request kind.
    pub kind: RequestKind,
    recipients: Locator,
    /// What the body must be, when a locator reads it.
    body: Option<BodyKind>,
    number_format: Option<NumberFormat>,
    sender: Option<Locator>,
    text: Option<Locator>,
    account: Option<Locator>,
    block: Option<Template>,
    throttle: Option<Template>,
    sandbox: Option<Template>,
}

fn compile_locator(key: &str, d: &LocatorDef) -> Result<Locator, String> {
    let mut sources = Vec::new();
    if let Some(f) = &d.form {
        sources.push(Source::Form(f.clone()));
    }
    if let Some(j) = &d.json {
        let Some(rest) = j.strip_prefix('/') else {
            return Err(format!(
                "{key}.json: a JSON pointer starts with '/', e.g. \"/messages/*/to\""
            ));
        };
        // `~` escapes `~0` (`~`) and `~1` (`/`) and nothing else (RFC 6901).
        if rest.split('~').skip(1).any(|s| !s.starts_with(['0', '1'])) {
            return Err(format!(
                "{key}.json: `~` in a JSON pointer is `~0` (for ~) or `~1` (for /)"
            ));
        }
        sources.push(Source::Json(
            rest.split('/')
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect(),
        ));
    }
    if let Some(q) = &d.query {
        sources.push(Source::Query(q.clone()));
    }
    if let Some(i) = d.path_segment {
        sources.push(Source::PathSegment(i));
    }
    if let Some(h) = &d.header {
        let name = HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| format!("{key}.header: {h:?} is not a header name"))?;
        sources.push(Source::Header(name));
    }
    if sources.len() != 1 {
        return Err(format!(
            "{key}: give exactly one of form, json, query, path_segment, header"
        ));
    }
    let split = match d.split.as_deref() {
        None => None,
        Some(s) if s.chars().count() == 1 => s.chars().next(),
        Some(s) => {
            return Err(format!(
                "{key}.split: {s:?} must be one character such as \",\""
            ))
        }
    };
    Ok(Locator {
        source: sources.remove(0),
        split,
    })
}

fn compile_template(key: &str, t: &TemplateDef) -> Result<Template, String> {
    // A 1xx is not a final answer (101 would switch the connection's protocol).
    let status = StatusCode::from_u16(t.status)
        .ok()
        .filter(|s| !s.is_informational())
        .ok_or_else(|| format!("{key}.status: {} is not a final HTTP status", t.status))?;
    let mut headers = Vec::new();
    let mut media = Media::Json;
    for (k, v) in &t.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("{key}.headers: {k:?} is not a header name"))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| format!("{key}.headers.{k}: not a valid header value"))?;
        if name == hyper::header::CONTENT_TYPE {
            // Media types are case-insensitive (`Application/JSON`).
            media = Media::of(v);
        }
        if name == hyper::header::RETRY_AFTER && key == "throttle" {
            return Err(format!(
                "{key}.headers.{k}: a throttle's Retry-After is the time its limit gives"
            ));
        }
        headers.push((name, value));
    }
    let template = Template {
        status,
        headers,
        media,
        body: t.body.clone(),
    };
    // The sandbox's answer is sent as written; a refusal has its placeholders filled in.
    let sample = match key {
        "block" => Some(RefusalKind::Block),
        "throttle" => Some(RefusalKind::Throttle {
            retry_after: std::time::Duration::from_secs(60),
        }),
        _ => None,
    };
    if let Some(kind) = sample {
        let mut rest = t.body.as_str();
        while let Some((at, name)) = placeholder(rest) {
            if !PLACEHOLDERS.contains(&name) {
                return Err(format!(
                    "{key}.body: unknown placeholder {{{name}}} (known: {{reason}}, {{rule}}, {{message}}, {{retry_after}})"
                ));
            }
            rest = &rest[at + name.len() + 2..];
        }
        if media == Media::Json {
            let sample = Refusal {
                kind,
                reason: crate::decide::Reason::RateLimited,
                rule: "rule",
                recipient: None,
                recipients: 1,
            };
            let body = render(&template, Some(&sample)).body;
            if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
                return Err(format!(
                    "{key}.body: not valid JSON once its placeholders are filled in ({e})"
                ));
            }
        }
    } else if media == Media::Json
        && serde_json::from_str::<serde::de::IgnoredAny>(&t.body).is_err()
    {
        return Err(format!("{key}.body: not valid JSON"));
    }
    Ok(template)
}

impl GenericConfig {
    /// Checks and compiles the extractor; errors name the key.
    pub fn compile(&self) -> Result<Generic, String> {
        let mut methods: Vec<String> = Vec::new();
        for m in self.method.as_slice() {
            if hyper::Method::from_bytes(m.as_bytes()).is_err() {
                return Err(format!("method: {m:?} is not an HTTP method"));
            }
            let m = m.to_ascii_uppercase();
            if !methods.contains(&m) {
                methods.push(m);
            }
        }
        if methods.is_empty() {
            return Err("method: names no method".into());
        }
        if !self.path.starts_with('/') {
            return Err("path: must start with '/'".into());
        }
        if self.path.contains(['?', '#']) {
            return Err(
                "path: only the path (`?` and `#` never reach it; read query parameters with `query`)"
                    .into(),
            );
        }
        let captures = self.path.split('/').filter(|s| *s == "{}").count();
        let kind = match self.kind.as_deref() {
            None => RequestKind::Send,
            Some(k) => RequestKind::parse(k)
                .ok_or_else(|| format!("kind: {k:?} is not send, verify_start or verify_check"))?,
        };
        let check_capture = |key: &str, l: &Locator| {
            match l.source {
            Source::PathSegment(i) if i >= captures => {
                Err(format!("{key}.path_segment: {i} but path has {captures} `{{}}` capture(s) (counted from 0)"))
            }
            _ => Ok(()),
        }
        };
        let recipients = compile_locator("recipients", &self.recipients)?;
        check_capture("recipients", &recipients)?;
        let opt = |key: &str, d: &Option<LocatorDef>| -> Result<Option<Locator>, String> {
            d.as_ref().map(|d| compile_locator(key, d)).transpose()
        };
        let sender = opt("sender", &self.sender)?;
        let text = opt("text", &self.text)?;
        let account = opt("account", &self.account)?;
        for (k, l) in [("sender", &sender), ("text", &text), ("account", &account)] {
            if let Some(l) = l {
                check_capture(k, l)?;
            }
        }
        let mut body = None;
        for l in [
            Some(&recipients),
            sender.as_ref(),
            text.as_ref(),
            account.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            let kind = match l.source {
                Source::Form(_) => BodyKind::Form,
                Source::Json(_) => BodyKind::Json,
                _ => continue,
            };
            if body.is_some_and(|b| b != kind) {
                return Err(
                    "recipients, sender, text and account read the body both as a form and as JSON: \
                     a request has one Content-Type"
                        .into(),
                );
            }
            body = Some(kind);
        }
        for r in &self.roots {
            if !r.starts_with('/') || !r.ends_with("/**") {
                return Err(format!("roots: {r:?} must look like \"/api/**\""));
            }
        }
        let tpl = |key: &str, t: &Option<TemplateDef>| {
            t.as_ref().map(|t| compile_template(key, t)).transpose()
        };
        Ok(Generic {
            methods,
            path: self.path.clone(),
            roots: self.roots.clone(),
            kind,
            recipients,
            body,
            number_format: self.number_format,
            sender,
            text,
            account,
            block: tpl("block", &self.block)?,
            throttle: tpl("throttle", &self.throttle)?,
            sandbox: tpl("sandbox", &self.sandbox)?,
        })
    }
}

/// Every value at a JSON pointer with `*` wildcards.
///
/// For the recipients (`strict`), every place the pointer leads to must be there: a
/// message of a list without its `to` may be read by a provider under another spelling.
/// So may a key a case-blind reader (Go's `encoding/json`, ASP.NET) takes for the
/// pointer's: an object with `To` (alone, or beside `to`) is unsupported.
fn json_values<'v>(
    v: &'v serde_json::Value,
    path: &[String],
    strict: bool,
    out: &mut Vec<&'v serde_json::Value>,
) -> Result<(), ExtractError> {
    let Some((head, rest)) = path.split_first() else {
        out.push(v);
        return Ok(());
    };
    let missing = || {
        if strict {
            Err(ExtractError::MissingRecipient(
                "a place the recipients pointer names",
            ))
        } else {
            Ok(())
        }
    };
    match (head.as_str(), v) {
        ("*", serde_json::Value::Array(a)) => {
            a.iter().try_for_each(|x| json_values(x, rest, strict, out))
        }
        ("*", serde_json::Value::Object(o)) => o
            .values()
            .try_for_each(|x| json_values(x, rest, strict, out)),
        (k, serde_json::Value::Object(o)) => {
            if strict && o.keys().any(|o| o != k && o.eq_ignore_ascii_case(k)) {
                return Err(ExtractError::Unsupported(
                    "a recipients key given again in another case",
                ));
            }
            match o.get(k) {
                Some(x) => json_values(x, rest, strict, out),
                None => missing(),
            }
        }
        (k, serde_json::Value::Array(a)) => match k.parse::<usize>().ok().and_then(|i| a.get(i)) {
            Some(x) => json_values(x, rest, strict, out),
            None => missing(),
        },
        _ => missing(),
    }
}

impl Generic {
    /// Every value a locator finds (`strict` for the recipients: see [`json_values`]).
    fn find(
        &self,
        l: &Locator,
        strict: bool,
        req: &RequestView<'_>,
        json: &mut Option<serde_json::Value>,
    ) -> Result<Vec<String>, ExtractError> {
        let raw: Vec<String> = match &l.source {
            // A server that reads "the parameters" may take a field from the form body or
            // the query string: every value in either is read (one in both, once).
            Source::Form(name) | Source::Query(name) => {
                let query = req.query.unwrap_or("").as_bytes();
                let form = if req.is_form() { req.body } else { &[] };
                let (first, other) = match l.source {
                    Source::Form(_) => (form, query),
                    _ => (query, form),
                };
                if strict
                    && (super::form_lookalike(first, name) || super::form_lookalike(other, name))
                {
                    return Err(ExtractError::Unsupported(
                        "a field a server may read as the recipients field",
                    ));
                }
                let mut out = super::form_values(first, name);
                let more = super::form_values(other, name);
                if !more.is_empty() {
                    // A set, not a scan of `out` for each value: thousands of values in
                    // both would cost their worker seconds.
                    let mut seen: HashSet<String> = out.iter().cloned().collect();
                    for v in more {
                        if seen.insert(v.clone()) {
                            out.push(v);
                        }
                    }
                }
                out
            }
            Source::PathSegment(i) => req.param(*i).into_iter().collect(),
            // A value that is not visible ASCII is skipped, or, for the recipients (which
            // a provider may read as Latin-1), unsupported.
            Source::Header(h) => {
                let mut out = Vec::new();
                for v in req.headers.get_all(h) {
                    match v.to_str() {
                        Ok(v) => out.push(v.to_owned()),
                        Err(_) if strict => {
                            return Err(ExtractError::Unsupported(
                                "a recipients header that is not visible ASCII",
                            ))
                        }
                        Err(_) => {}
                    }
                }
                out
            }
            Source::Json(path) => {
                if json.is_none() {
                    *json = Some(req.json()?);
                }
                let mut found = Vec::new();
                if let Some(v) = json.as_ref() {
                    json_values(v, path, strict, &mut found)?;
                }
                let mut out = Vec::new();
                for v in found {
                    match v {
                        serde_json::Value::String(s) => out.push(s.clone()),
                        serde_json::Value::Number(n) => out.push(n.to_string()),
                        serde_json::Value::Array(a) => {
                            for x in a {
                                match x {
                                    serde_json::Value::String(s) => out.push(s.clone()),
                                    serde_json::Value::Number(n) => out.push(n.to_string()),
                                    _ => {
                                        return Err(ExtractError::Unsupported(
                                            "a recipient that is not a string or number",
                                        ))
                                    }
                                }
                            }
                        }
                        serde_json::Value::Null => {}
                        _ => {
                            return Err(ExtractError::Unsupported(
                                "a value that is not a string or number",
                            ))
                        }
                    }
                }
                out
            }
        };
        Ok(match l.split {
            Some(c) => raw
                .iter()
                .flat_map(|v| v.split(c))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            None => raw
                .into_iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        })
    }

    /// Reads a request.
    pub fn extract(&self, req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
        match self.body {
            Some(BodyKind::Form) if !req.is_form() => {
                return Err(ExtractError::MalformedBody(
                    "this route takes application/x-www-form-urlencoded bodies",
                ))
            }
            Some(BodyKind::Json) if !req.is_json() => {
                return Err(ExtractError::MalformedBody("this route takes JSON bodies"))
            }
            _ => {}
        }
        let mut json = None;
        let recipients = self.find(&self.recipients, true, req, &mut json)?;
        if recipients.is_empty() {
            return Err(ExtractError::MissingRecipient(
                "the configured recipients locator",
            ));
        }
        let first = |l: &Option<Locator>,
                     json: &mut Option<serde_json::Value>|
         -> Result<Option<String>, ExtractError> {
            Ok(match l {
                Some(l) => self.find(l, false, req, json)?.into_iter().next(),
                None => None,
            })
        };
        let sender = first(&self.sender, &mut json)?;
        let account = first(&self.account, &mut json)?;
        let text = first(&self.text, &mut json)?;
        Ok(Extracted {
            recipients,
            number_format: self.number_format,
            sender,
            account,
            segments: text.map_or(1, |t| segments::count(&t)),
            ..Extracted::default()
        })
    }
}

fn render(t: &Template, refusal: Option<&Refusal<'_>>) -> NativeResponse {
    let body = match refusal {
        None => t.body.clone(),
        Some(r) => {
            // One pass: a value filled in is never read again for placeholders.
            let mut body = String::with_capacity(t.body.len() + 128);
            let mut rest = t.body.as_str();
            while let Some((at, name)) = placeholder(rest) {
                body.push_str(&rest[..at]);
                let end = at + name.len() + 2;
                match name {
                    "reason" => t.media.push(&mut body, r.reason.as_str()),
                    "rule" => t.media.push(&mut body, r.rule),
                    "message" => t.media.push(&mut body, &r.message()),
                    "retry_after" => {
                        if let Some(s) = r.retry_after_secs() {
                            body.push_str(&s.to_string());
                        }
                    }
                    _ => body.push_str(&rest[at..end]),
                }
                rest = &rest[end..];
            }
            body.push_str(rest);
            body
        }
    };
    let mut n = NativeResponse {
        status: t.status,
        headers: Vec::new(),
        content_type: t.media.content_type(),
        body: Bytes::from(body),
    };
    for (k, v) in &t.headers {
        if k != hyper::header::CONTENT_TYPE {
            n.headers.push((k.clone(), v.clone()));
        }
    }
    if let Some(r) = refusal {
        n = n.with_retry_after(r);
    }
    n
}

/// The configured refusal response (a JSON default when no template is set).
pub fn refusal(g: Option<&Generic>, refusal: &Refusal<'_>) -> NativeResponse {
    let template = g.and_then(|g| match refusal.kind {
        RefusalKind::Throttle { .. } => g.throttle.as_ref(),
        RefusalKind::Block => g.block.as_ref(),
    });
    match template {
        Some(t) => render(t, Some(refusal)),
        None => {
            let status = match refusal.kind {
                RefusalKind::Throttle { .. } => StatusCode::TOO_MANY_REQUESTS,
                RefusalKind::Block => StatusCode::FORBIDDEN,
            };
            /// smsfence's own refusal body, for routes without a template.
            #[derive(serde::Serialize)]
            struct Body<'a> {
                error: Error<'a>,
            }
            #[derive(serde::Serialize)]
            struct Error<'a> {
                code: &'static str,
                message: String,
                rule: &'a str,
            }
            let error = Error {
                code: refusal.reason.as_str(),
                message: refusal.message(),
                rule: refusal.rule,
            };
            NativeResponse::json(status, &Body { error }).with_retry_after(refusal)
        }
    }
}

/// The sandbox's answer for a generic route.
pub fn sandbox(g: Option<&Generic>) -> NativeResponse {
    match g.and_then(|g| g.sandbox.as_ref()) {
        Some(t) => render(t, None),
        None => NativeResponse::json(
            StatusCode::OK,
            &serde_json::json!({"status": "accepted", "sandbox": true}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Reason;
    use crate::providers::tests::{form_headers, json_headers, view};

    fn generic(toml_text: &str) -> Generic {
        let c: GenericConfig = toml::from_str(toml_text).unwrap();
        c.compile().unwrap()
    }

    #[test]
    fn form_list_with_split() {
        let g = generic("method = \"POST\"\npath = \"/rest/2/sms\"\nrecipients = { form = \"mocean-to\", split = \",\" }\ntext = { form = \"mocean-text\" }\n");
        let h = form_headers();
        let ex = g
            .extract(&view(
                &h,
                &[],
                b"mocean-to=447400123456%2C447400123457&mocean-text=hi+there",
            ))
            .unwrap();
        assert_eq!(ex.recipients, vec!["447400123456", "447400123457"]);
        assert_eq!(ex.segments, 1);
        assert!(matches!(
            g.extract(&view(&h, &[], b"mocean-text=x")),
            Err(ExtractError::MissingRecipient(_))
        ));
    }

    #[test]
    fn recipients_in_both_the_query_and_the_form_are_merged_in_linear_time() {
        let g = generic("method = \"POST\"\npath = \"/sms\"\nrecipients = { form = \"to\" }\n");
        let h = form_headers();
        let numbers = |from: u32| -> String {
            (from..from + 20_000)
                .map(|i| format!("to=4474{i:08}"))
                .collect::<Vec<_>>()
                .join("&")
        };
        // Half of the query's numbers are in the body too: each is read once.
        let (body, query) = (numbers(0), numbers(10_000));
        let req = RequestView {
            query: Some(&query),
            ..view(&h, &[], body.as_bytes())
        };
        let started = std::time::Instant::now();
        let ex = g.extract(&req).unwrap();
        assert_eq!(ex.recipients.len(), 30_000);
        assert_eq!(ex.recipients[29_999], "447400029999");
        // A scan of every value read for each new one took about six seconds (debug build).
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
    }

    #[test]
    fn json_pointer_wildcards() {
        let g = generic("method = \"POST\"\npath = \"/v3/send\"\nrecipients = { json = \"/messages/*/to/*\" }\naccount = { json = \"/account\" }\n");
        let h = json_headers();
        let body = br#"{"account":"a1","messages":[{"to":["+447400123456","+447400123457"]},{"to":["+447400123458"]}]}"#;
        let ex = g.extract(&view(&h, &[], body)).unwrap();
        assert_eq!(ex.recipients.len(), 3);
        assert_eq!(ex.account.as_deref(), Some("a1"));
        assert!(matches!(
            g.extract(&view(&h, &[], b"{oops")),
            Err(ExtractError::MalformedBody(_))
        ));
    }

    #[test]
    fn path_query_and_header() {
        let g = generic("method = \"GET\"\npath = \"/API/V1/{}/SMS/{}/AUTOGEN\"\nrecipients = { path_segment = 1 }\n");
        let h = form_headers();
        let ex = g
            .extract(&view(&h, &["key123", "+919812345678"], b""))
            .unwrap();
        assert_eq!(ex.recipients, vec!["+919812345678"]);
        let bad: GenericConfig = toml::from_str(
            "method = \"GET\"\npath = \"/x/{}\"\nrecipients = { path_segment = 1 }\n",
        )
        .unwrap();
        assert!(bad.compile().unwrap_err().contains("path_segment: 1"));
        let two: GenericConfig = toml::from_str(
            "method = \"GET\"\npath = \"/\"\nrecipients = { query = \"to\", form = \"to\" }\n",
        )
        .unwrap();
        assert!(two.compile().unwrap_err().contains("exactly one"));
    }

    #[test]
    fn locators_read_the_body_one_way() {
        let mixed: GenericConfig = toml::from_str(
            "method = \"POST\"\npath = \"/s\"\nrecipients = { form = \"to\" }\ntext = { json = \"/text\" }\n",
        )
        .unwrap();
        assert!(mixed
            .compile()
            .unwrap_err()
            .contains("both as a form and as JSON"));
        let g = generic("method = \"post\"\npath = \"/s\"\nrecipients = { form = \"to\" }\n");
        assert_eq!(g.methods, ["POST"]);
        let h = json_headers();
        assert!(matches!(
            g.extract(&view(&h, &[], b"to=447400123456")),
            Err(ExtractError::MalformedBody(_))
        ));
    }

    #[test]
    fn templates_escape_json() {
        let g = generic(
            "method = \"POST\"\npath = \"/s\"\nrecipients = { form = \"to\" }\n[block]\nstatus = 200\nbody = '{\"status\":5,\"err_msg\":\"{message}\",\"code\":\"{reason}\"}'\n",
        );
        let r = Refusal {
            kind: RefusalKind::Block,
            reason: Reason::DeniedPrefix,
            rule: "r\"q",
            recipient: None,
            recipients: 1,
        };
        let n = refusal(Some(&g), &r);
        assert_eq!(n.status, StatusCode::OK);
        let v: serde_json::Value =
            serde_json::from_slice(&n.body).expect("valid JSON after substitution");
        assert_eq!(v["code"], "denied_prefix");
        assert!(v["err_msg"].as_str().unwrap().contains("rule=r\"q"));
    }

    #[test]
    fn a_json_content_type_in_capitals_is_json() {
        let g = generic(
            "method = \"POST\"\npath = \"/s\"\nrecipients = { form = \"to\" }\n[block]\nstatus = 403\nheaders = { \"content-type\" = \"Application/JSON\" }\nbody = '{\"rule\":\"{rule}\"}'\n",
        );
        let r = Refusal {
            kind: RefusalKind::Block,
            reason: Reason::DeniedPrefix,
            rule: "r\"q",
            recipient: None,
            recipients: 1,
        };
        let n = refusal(Some(&g), &r);
        assert_eq!(n.content_type, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&n.body).expect("escaped");
        assert_eq!(v["rule"], "r\"q");
    }

    fn block(rule: &str) -> Refusal<'_> {
        Refusal {
            kind: RefusalKind::Block,
            reason: Reason::DeniedPrefix,
            rule,
            recipient: None,
            recipients: 1,
        }
    }

    #[test]
    fn templates_escape_xml_and_forms() {
        let g = generic(
            "method = \"POST\"\npath = \"/s\"\nrecipients = { form = \"to\" }\n[block]\nstatus = 400\nheaders = { \"content-type\" = \"text/xml\" }\nbody = '<r><rule>{rule}</rule></r>'\n",
        );
        let n = refusal(Some(&g), &block("a</rule><x>&"));
        assert_eq!(
            &n.body[..],
            b"<r><rule>a&lt;/rule&gt;&lt;x&gt;&amp;</rule></r>"
        );
        assert_eq!(n.content_type, "application/xml; charset=utf-8");
        let g = generic(
            "method = \"POST\"\npath = \"/s\"\nrecipients = { form = \"to\" }\n[block]\nstatus = 400\nheaders = { \"content-type\" = \"application/x-www-form-urlencoded\" }\nbody = 'status=error&rule={rule}'\n",
        );
        let n = refusal(Some(&g), &block("a&status=ok"));
        assert_eq!(&n.body[..], b"status=error&rule=a%26status%3Dok");
    }

    #[test]
    fn a_value_filled_in_is_not_read_for_placeholders() {
        let g = generic(
            "method = \"POST\"\npath = \"/s\"\nrecipients = { form = \"to\" }\n[block]\nstatus = 400\nheaders = { \"content-type\" = \"text/plain\" }\nbody = '{rule} {reason}'\n",
        );
        let n = refusal(Some(&g), &block("{message}"));
        assert_eq!(&n.body[..], b"{message} denied_prefix");
    }

    #[test]
    fn templates_are_checked_when_compiled() {
        let compile = |tail: &str| {
            let c: GenericConfig = toml::from_str(&format!(
                "method = \"POST\"\npath = \"/s\"\nrecipients = {{ form = \"to\" }}\n{tail}"
            ))
            .unwrap();
            c.compile().map(|_| ())
        };
        let e = compile("[block]\nstatus = 403\nbody = '{\"code\":\"{reson}\"}'\n").unwrap_err();
        assert!(e.contains("block.body: unknown placeholder {reson}"), "{e}");
        // Unquoted, `{retry_after}` is empty in a block: not JSON.
        let e = compile("[block]\nstatus = 403\nbody = '{\"retry\":{retry_after}}'\n").unwrap_err();
        assert!(e.contains("block.body: not valid JSON"), "{e}");
        compile("[throttle]\nstatus = 429\nbody = '{\"retry\":{retry_after}}'\n").unwrap();
        let e = compile("[throttle]\nstatus = 429\nbody = '{\"a\":1'\n").unwrap_err();
        assert!(e.contains("throttle.body: not valid JSON"), "{e}");
        let e = compile("[sandbox]\nstatus = 200\nbody = 'ok'\n").unwrap_err();
        assert!(e.contains("sandbox.body: not valid JSON"), "{e}");
        compile("[sandbox]\nstatus = 200\nheaders = { \"content-type\" = \"text/plain\" }\nbody = 'ok'\n").unwrap();
        let e = compile(
            "[throttle]\nstatus = 429\nheaders = { \"retry-after\" = \"5\" }\nbody = '{}'\n",
        )
        .unwrap_err();
        assert!(e.contains("throttle.headers.retry-after"), "{e}");
    }

    #[test]
    fn a_recipient_header_smsfence_cannot_read_is_unsupported() {
        let g = generic("method = \"POST\"\npath = \"/s\"\nrecipients = { header = \"x-to\" }\n");
        let mut h = hyper::HeaderMap::new();
        h.append("x-to", HeaderValue::from_static("+447400123456"));
        h.append(
            "x-to",
            HeaderValue::from_bytes(b"+44909879\xa00123").unwrap(),
        );
        assert!(matches!(
            g.extract(&view(&h, &[], b"")),
            Err(ExtractError::Unsupported(_))
        ));
    }

    #[test]
    fn a_json_pointer_escape_is_0_or_1() {
        let c: GenericConfig =
            toml::from_str("method = \"POST\"\npath = \"/s\"\nrecipients = { json = \"/a~2b\" }\n")
                .unwrap();
        assert!(c.compile().unwrap_err().contains("recipients.json"));
        let g =
            generic("method = \"POST\"\npath = \"/s\"\nrecipients = { json = \"/a~1b/c~0d\" }\n");
        let h = json_headers();
        let ex = g
            .extract(&view(&h, &[], br#"{"a/b":{"c~d":"+447400123456"}}"#))
            .unwrap();
        assert_eq!(ex.recipients, vec!["+447400123456"]);
    }
}
