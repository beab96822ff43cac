//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and the `/v1` API
//! (`check`, `feedback`, `reload`, `rules`, `blocks`).
//!
//! It binds to loopback by default; when a token is configured, every `/v1` endpoint
//! needs `Authorization: Bearer <token>` (the probes and `/metrics` stay open for
//! scrapers and orchestrators). `/v1/check` is a dry run: it consumes nothing.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::decide::{self, Commit, Facts, Verdict};
use crate::phone::{self, Country, NumberFormat};
use crate::providers::NativeResponse;
use crate::providers::RequestKind;
use crate::proxy::handler::{native_response, Body};
use crate::proxy::App;

/// The admin endpoints' state.
#[derive(Debug)]
pub struct Admin {
    app: Arc<App>,
    token: Option<String>,
    /// `store.require_store`: readiness fails while the shared store is down.
    require_store: bool,
}

impl Admin {
    /// Admin endpoints over the proxy's state.
    pub fn new(app: Arc<App>, token: Option<String>, require_store: bool) -> Admin {
        Admin {
            app,
            token,
            require_store,
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
            .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then_some(token))
            .unwrap_or("");
        constant_time_eq(given.as_bytes(), token.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    native_response(NativeResponse::json(status, v))
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"error": {"message": message, "source": "smsfence"}}),
    )
}

/// Routes one admin request.
pub async fn handle(
    admin: Arc<Admin>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if path.starts_with("/v1/") && !admin.authorized(&req) {
        let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Ok(r);
    }
    let app = &admin.app;
    let resp = match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            // A shared store that is down degrades decisions (per rule: open, closed or
            // local) but does not stop the proxy, so readiness fails only when the
            // operator said the store is required.
            let rules = app.rules.snapshot();
            let healthy = app.store.ping().await;
            let draining = app.draining.load(std::sync::atomic::Ordering::Relaxed);
            let (code, status) = match (healthy, admin.require_store) {
                _ if draining => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
                (true, _) => (StatusCode::OK, "ready"),
                (false, false) => (StatusCode::OK, "degraded"),
                (false, true) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            };
            json_response(
                code,
                &json!({"status": status, "rules_generation": rules.generation, "store": app.store.kind(), "store_healthy": healthy}),
            )
        }
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Either::Left(Full::new(Bytes::from(app.metrics.render()))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::POST, "/v1/check") => match read_json::<CheckRequest>(app, req).await {
            Ok(c) => check(app, c).await,
            Err(r) => r,
        },
        (&Method::POST, "/v1/feedback") => match read_json::<FeedbackRequest>(app, req).await {
            Ok(f) => feedback(app, f).await,
            Err(r) => r,
        },
        (&Method::POST, "/v1/reload") => reload(app).await,
        (&Method::GET, "/v1/rules") => {
            let rules = app.rules.snapshot();
            json_response(
                StatusCode::OK,
                &json!({
                    "generation": rules.generation,
                    "source": rules.source,
                    "shadow": rules.shadow_all,
                    "rules": rules.summaries,
                    "last_reload_errors": app.rules.last_errors().iter().map(ToString::to_string).collect::<Vec<_>>(),
                }),
            )
        }
        (&Method::GET, "/v1/blocks") => list_blocks(app).await,
        (&Method::DELETE, p) if p.starts_with("/v1/blocks/") => {
            lift_block(app, &p["/v1/blocks/".len()..]).await
        }
        (_, p) => match allowed_method(p) {
            Some(allow) => {
                let mut r = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &format!("{method} is not allowed on {path}: use {allow}"),
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                r
            }
            None => error(StatusCode::NOT_FOUND, &format!("no admin endpoint {path}")),
        },
    };
    Ok(resp)
}

/// The method an admin path answers to, for a 405's `Allow`; `None` for unknown paths.
fn allowed_method(path: &str) -> Option<&'static str> {
    match path {
        "/healthz" | "/readyz" | "/metrics" | "/v1/rules" | "/v1/blocks" => Some("GET"),
        "/v1/check" | "/v1/feedback" | "/v1/reload" => Some("POST"),
        p if p.starts_with("/v1/blocks/") => Some("DELETE"),
        _ => None,
    }
}

async fn read_json<T: for<'de> Deserialize<'de>>(
    app: &App,
    req: Request<Incoming>,
) -> Result<T, Response<Body>> {
    let read = Limited::new(req.into_body(), 64 * 1024).collect();
    let body = match tokio::time::timeout(app.read_timeout, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "timed out reading the request body",
            ))
        }
        Ok(Err(_)) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body must be JSON of at most 64 KiB",
            ))
        }
    };
    serde_json::from_slice(&body).map_err(|e| {
        // Syntax errors and missing fields name only positions and smsfence's own field
        // names; other data errors repeat what they could not use (a number, say).
        let text = e.to_string();
        let message = if e.classify() != serde_json::error::Category::Data
            || text.starts_with("missing field")
        {
            format!("invalid JSON body: {text}")
        } else if text.starts_with("invalid type: ") || text.starts_with("invalid value: ") {
            // The kind of value and what was expected, without the value.
            format!("invalid JSON body: {}", crate::config::without_value(&text))
        } else {
            format!(
                "invalid JSON body: an unknown field, or a value of the wrong type, at line {} column {}",
                e.line(),
                e.column()
            )
        };
        error(StatusCode::BAD_REQUEST, &message)
    })
}

/// `POST /v1/check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    number: String,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    account: Option<String>,
    #[serde(default)]
    sender: Option<String>,
    #[serde(default)]
    default_region: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

/// `POST /v1/reload`: the rules, and the listeners' certificates, as SIGHUP. Anything that
/// cannot be used is listed in `errors` (422) and what was in use stays.
async fn reload(app: &App) -> Response<Body> {
    let mut errors: Vec<String> = match app.rules.reload_async().await {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    };
    let mut tls = serde_json::Map::new();
    for (listener, result) in app.reload_tls() {
        let outcome = match result {
            Ok(()) => "reloaded",
            Err(e) => {
                errors.push(e.to_string());
                "failed"
            }
        };
        tls.insert(listener.to_owned(), outcome.into());
    }
    let mut body = json!({
        "status": if errors.is_empty() { "reloaded" } else { "failed" },
        "generation": app.rules.snapshot().generation,
    });
    if !errors.is_empty() {
        body["errors"] = errors.into();
    }
    if !tls.is_empty() {
        body["tls"] = tls.into();
    }
    let status = if body["status"] == "reloaded" {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    json_response(status, &body)
}

async fn check(app: &App, c: CheckRequest) -> Response<Body> {
    let region = match c.default_region.as_deref().map(Country::parse) {
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "default_region must be a country code (ISO 3166-1 alpha-2 with a numbering plan, e.g. GB, not UK)",
            )
        }
        Some(r) => r,
        None => None,
    };
    let ip = match c.ip.as_deref().map(str::parse::<IpAddr>) {
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "ip must be an IPv4 or IPv6 address",
            )
        }
        Some(Ok(ip)) => Some(ip),
        None => None,
    };
    let kind = match c.kind.as_deref().map(RequestKind::parse) {
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "kind must be send, verify_start or verify_check",
            )
        }
        Some(Some(k)) => k,
        None => RequestKind::Send,
    };
    // Without a region, digits without `+` are international, as they always were here.
    let format = if region.is_some() {
        NumberFormat::National
    } else {
        NumberFormat::InternationalDigits
    };
    let recipient = phone::normalize(&c.number, format, region);
    let recipients = [recipient.clone()];
    let facts = Facts {
        kind,
        recipients: &recipients,
        ip,
        user: c.user.as_deref(),
        account: c.account.as_deref(),
        sender: c.sender.as_deref(),
        segments: 1,
    };
    let rules = app.rules.snapshot();
    let d = decide::decide(&rules, &app.store, &facts, app.clock.now(), Commit::DryRun).await;
    let number = match &recipient {
        Ok(dest) => json!({
            "e164": dest.e164(),
            "country": dest.country().map(|c| c.to_string()),
            "type": dest.number_type().as_str(),
            "valid": dest.is_valid(),
        }),
        Err(e) => {
            json!({"e164": null, "country": null, "type": null, "valid": false, "error": e.to_string()})
        }
    };
    let hit = d.verdict.hit();
    let retry_after = match &d.verdict {
        Verdict::Throttle { retry_after, .. } => {
            Some(crate::providers::retry_after_secs(*retry_after))
        }
        _ => None,
    };
    json_response(
        StatusCode::OK,
        &json!({
            "decision": d.verdict.as_str(),
            "reasons": hit.map(|h| vec![h.reason.as_str()]).unwrap_or_default(),
            "rule": hit.map(|h| h.rule.to_string()),
            "retry_after": retry_after,
            "shadow": d.shadow.iter().map(|h| json!({"rule": h.rule.to_string(), "reason": h.reason.as_str()})).collect::<Vec<_>>(),
            "number": number,
            "rules_generation": rules.generation,
        }),
    )
}

/// `GET /v1/blocks`: active auto-blocks, each saying whether the current rules still
/// enforce it (a block of a heuristic since removed, put in shadow or without `block_for`
/// refuses nothing, though it stays in the store until it ends).
async fn list_blocks(app: &App) -> Response<Body> {
    let now = app.clock.now();
    let rules = app.rules.snapshot();
    let enforced = |label: &str| {
        let rule = label.split(' ').next().unwrap_or("");
        !rules.shadow_all
            && rules.heuristics.iter().any(|h| {
                &*h.name == rule && h.mode == crate::rules::Mode::Enforce && h.block_for.is_some()
            })
    };
    match app.store.list_flags(now).await {
        Ok(flags) => {
            let blocks: Vec<serde_json::Value> = flags
                .iter()
                .filter(|f| {
                    f.label != crate::store::TRUST_LABEL && !f.label.ends_with("(offences)")
                })
                .map(|f| {
                    json!({
                        "block": f.label,
                        "offences": f.level + 1,
                        "remaining_secs": f.until.since(now).as_secs(),
                        "enforced": enforced(&f.label),
                    })
                })
                .collect();
            json_response(StatusCode::OK, &json!({"blocks": blocks}))
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `DELETE /v1/blocks/{rule}/{kind}/{value}`: lifts the block `GET /v1/blocks` lists as
/// `"{rule} {kind} {value}"` (and forgets its offences).
async fn lift_block(app: &App, rest: &str) -> Response<Body> {
    let rest = percent_encoding::percent_decode_str(rest)
        .decode_utf8_lossy()
        .into_owned();
    let mut parts = rest.splitn(3, '/');
    let (Some(rule), Some(kind), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "use DELETE /v1/blocks/{rule}/{kind}/{value}, as listed by GET /v1/blocks",
        );
    };
    let value = if kind == "prefix" && !value.starts_with('+') {
        format!("+{value}")
    } else {
        value.to_owned()
    };
    let label = format!("{rule} {kind} {value}");
    match app.store.remove_flags(&label).await {
        Ok(0) => error(StatusCode::NOT_FOUND, "no such block"),
        Ok(_) => {
            let _ = app.store.remove_flags(&format!("{label} (offences)")).await;
            tracing::info!(block = %label, "auto-block lifted by the admin API");
            json_response(StatusCode::OK, &json!({"lifted": label}))
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `POST /v1/feedback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackRequest {
    number: String,
    outcome: FeedbackOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FeedbackOutcome {
    Verified,
    Failed,
}

async fn feedback(app: &App, f: FeedbackRequest) -> Response<Body> {
    // Digits without `+` are international, as the digits-only presets send them.
    match phone::normalize(&f.number, NumberFormat::InternationalDigits, None) {
        Ok(d) if d.is_valid() => {
            app.record_conversion(&d, "feedback", f.outcome == FeedbackOutcome::Verified)
                .await;
            let mut r = Response::new(Either::Left(Full::new(Bytes::new())));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        _ => error(
            StatusCode::BAD_REQUEST,
            "number must be a valid E.164 number such as +14155550123",
        ),
    }
}
