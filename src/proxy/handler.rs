//! One request, phase by phase: route → read body → extract → normalize → decide →
//! forward or answer natively → observe.
//!
//! Every phase that can fail answers with a clear status (404, 408, 413, 400, 502, 504)
//! and a JSON body naming smsfence, and is counted. Nothing here panics on input, logs a
//! number, or keeps message text.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::http::uri::InvalidUri;
use hyper::{Method, Request, Response, StatusCode, Uri};

use super::route::Target;
use super::upstream::{UpstreamBody, UpstreamError};
use super::App;
use crate::audit::AuditEvent;
use crate::config::{OnUnsupported, Route, Upstream};
use crate::decide::{self, Commit, Decision, Facts, Reason, Recipient, Verdict};
use crate::phone::{self, Destination};
use crate::providers::{
    self, ConversionSignal, Extracted, NativeResponse, Op, Refusal, RefusalKind, RequestView,
};

/// The body of every response the proxy sends: its own, or the upstream's, streamed.
pub type Body = Either<Full<Bytes>, UpstreamBody>;

/// Largest upstream body buffered to read a verification outcome.
const MAX_BUFFERED_RESPONSE: usize = 1024 * 1024;

/// How a request ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Decided, allowed and forwarded (or answered by the sandbox).
    Forwarded,
    /// Forwarded undecided (not a send, or unreadable with passthrough on).
    Passthrough,
    /// Refused with a throttle.
    Throttled,
    /// Refused with a block.
    Blocked,
    /// No route.
    NotFound,
    /// Body over the limit.
    BodyTooLarge,
    /// The client sent too slowly.
    ReadTimeout,
    /// The client's body broke off.
    BadRequest,
    /// The upstream could not be reached or broke.
    UpstreamError,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The client hung up before the answer.
    ClientClosed,
}

impl Outcome {
    /// Every outcome, in a stable order ([`Outcome::index`]).
    pub const ALL: [Outcome; 11] = [
        Outcome::Forwarded,
        Outcome::Passthrough,
        Outcome::Throttled,
        Outcome::Blocked,
        Outcome::NotFound,
        Outcome::BodyTooLarge,
        Outcome::ReadTimeout,
        Outcome::BadRequest,
        Outcome::UpstreamError,
        Outcome::UpstreamTimeout,
        Outcome::ClientClosed,
    ];

    /// The position in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Passthrough => "passthrough",
            Outcome::Throttled => "throttled",
            Outcome::Blocked => "blocked",
            Outcome::NotFound => "not_found",
            Outcome::BodyTooLarge => "body_too_large",
            Outcome::ReadTimeout => "read_timeout",
            Outcome::BadRequest => "bad_request",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::ClientClosed => "client_closed",
        }
    }
}

/// What one request accumulates on its way, for metrics and the audit event.
struct Ctx<'a> {
    provider: &'static str,
    route: &'a str,
    /// Index of the matched route, for its cached metric series.
    route_index: Option<usize>,
    /// Where the route's prefix ends in the request's path.
    prefix_end: usize,
    outcome: Outcome,
    /// Time spent waiting on the upstream: its response head, and a body read whole for
    /// a conversion signal.
    upstream_time: Duration,
    /// When the exchange began, while smsfence waits on the upstream (a client that hangs
    /// up then has waited on the upstream, not on smsfence, since).
    upstream_since: Option<Instant>,
    upstream_status: Option<u16>,
    /// Why the upstream gave no answer (`Refused`: the request never reached it).
    upstream_error: Option<UpstreamError>,
    /// The audit event, once the request is decided (written by [`finish_event`]).
    event: AuditEvent,
    /// What an allowed request added to conversion rates and budgets
    /// ([`Decision::counted`]), until it is given back: here so that a client that hangs
    /// up after the provider refused the send still has it given back.
    counted: Vec<crate::store::WindowOp<'static>>,
}

/// The service function: never fails, always answers.
pub async fn handle(
    app: Arc<App>,
    peer: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let mut request = InFlight {
        app: &app,
        started,
        answered: false,
        ctx: Ctx {
            provider: "none",
            route: "none",
            route_index: None,
            prefix_end: 0,
            outcome: Outcome::NotFound,
            upstream_time: Duration::ZERO,
            upstream_since: None,
            upstream_status: None,
            upstream_error: None,
            event: AuditEvent::default(),
            counted: Vec::new(),
        },
    };
    let resp = handle_inner(&app, peer, req, &mut request.ctx, started).await;
    request.answered = true;
    count_request(&app, &request.ctx, started);
    Ok(resp)
}

/// A request in flight. hyper drops the handler when the client hangs up before the
/// answer; a request decided by then (maybe already sent upstream: the message may go
/// out) is still counted, with the outcome `client_closed`, and audited.
struct InFlight<'a> {
    app: &'a App,
    started: Instant,
    answered: bool,
    ctx: Ctx<'a>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        self.ctx.outcome = Outcome::ClientClosed;
        if let Some(since) = self.ctx.upstream_since.take() {
            self.ctx.upstream_time = since.elapsed();
        }
        // The provider's answer was in (or it was never reached) when the client hung up:
        // a send it did not take is not counted, as if the client had waited.
        if not_taken(&self.ctx) && !self.ctx.counted.is_empty() {
            // Runs to its end by itself (a task of its own on Redis); its result has no one
            // to go to but the store's own failure counters.
            drop(decide::heuristics::give_back(
                &self.app.store,
                &self.ctx.counted,
                self.app.clock.now(),
            ));
        }
        count_request(self.app, &self.ctx, self.started);
        if self.ctx.event.decision.is_some() {
            self.ctx.event.client_closed = true;
            finish_event(self.app, &mut self.ctx, self.started);
        }
    }
}

/// Whether the provider did not take the send: it answered with an error status, or the
/// request never reached it. `false` while its answer is unknown.
fn not_taken(ctx: &Ctx<'_>) -> bool {
    match ctx.upstream_status {
        Some(status) => status >= 400,
        None => ctx.upstream_error == Some(UpstreamError::Refused),
    }
}

/// Counts a request in the request and latency families.
fn count_request(app: &App, ctx: &Ctx<'_>, started: Instant) {
    let elapsed = started.elapsed();
    let m = &app.metrics;
    let labels = (ctx.provider, ctx.route, ctx.outcome.as_str());
    let seconds = elapsed.as_secs_f64();
    match ctx.route_index.and_then(|i| app.route_series.get(i)) {
        Some(series) => series.observe(m, labels, ctx.outcome.index(), seconds),
        None => {
            m.requests
                .with_label_values(&[labels.0, labels.1, labels.2])
                .inc();
            m.request_duration
                .with_label_values(&[labels.0, labels.2])
                .observe(seconds);
        }
    }
    m.overhead
        .observe(elapsed.saturating_sub(ctx.upstream_time).as_secs_f64());
}

async fn handle_inner<'a>(
    app: &'a App,
    peer: IpAddr,
    req: Request<Incoming>,
    ctx: &mut Ctx<'a>,
    started: Instant,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    if parts.method == Method::CONNECT {
        // A tunnel to a host the client names: not what a reverse proxy makes.
        ctx.outcome = Outcome::BadRequest;
        return own_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "connect",
            "smsfence is a reverse proxy and makes no tunnels (CONNECT)",
        );
    }
    if super::route::ambiguous_path(parts.uri.path()) {
        ctx.outcome = Outcome::BadRequest;
        return own_error(
            StatusCode::BAD_REQUEST,
            "bad_path",
            "smsfence refuses paths with dot segments or encoded slashes",
        );
    }
    let Some(m) = app.table.find(&parts.method, parts.uri.path()) else {
        ctx.outcome = Outcome::NotFound;
        return own_error(
            StatusCode::NOT_FOUND,
            "no_route",
            &format!(
                "smsfence has no route for {} {}",
                parts.method,
                redact_path(parts.uri.path())
            ),
        );
    };
    let route = &app.routes[m.route];
    ctx.provider = route.preset.as_str();
    ctx.route = &route.name;
    ctx.route_index = Some(m.route);
    ctx.prefix_end = m.prefix_end;

    let body = match read_body(app, &parts.headers, body).await {
        Ok(b) => b,
        Err((outcome, resp)) => {
            ctx.outcome = outcome;
            return resp;
        }
    };
    let (ip, user) = app.identity(peer, &parts.headers);
    for h in [&app.trusted.ip_header, &app.trusted.user_header]
        .into_iter()
        .flatten()
    {
        parts.headers.remove(h);
    }

    let Target::Op(op) = m.target else {
        ctx.outcome = Outcome::Passthrough;
        return forward(app, route, &parts, body, ctx, None).await.0;
    };

    let full_path = parts.uri.path();
    let path = &full_path[m.prefix_end..];
    let params: Vec<&str> = m.captures.iter().map(|&(s, e)| &full_path[s..e]).collect();
    let view = RequestView {
        method: &parts.method,
        path,
        params: &params,
        query: parts.uri.query(),
        headers: &parts.headers,
        body: &body,
    };
    let kind = match (&route.generic, op) {
        (Some(g), Op::Generic) => g.kind,
        _ => providers::kind(op),
    };
    let now = app.clock.now();
    // Numbered only when something shows it (a refusal, the audit log).
    let request_id = std::cell::LazyCell::new(|| app.next_request_id());
    // Events are only built when the audit log is on (finish_event drops them otherwise).
    if app.audit.enabled() {
        ctx.event = AuditEvent {
            event: "send",
            request_id: (*request_id).clone(),
            provider: ctx.provider,
            route: route.name.clone(),
            kind: Some(kind.as_str()),
            ip: ip.and_then(|i| app.audit.identity(&i.to_string())),
            user: user.as_deref().and_then(|u| app.audit.identity(u)),
            ..AuditEvent::default()
        };
    }

    let extracted = match providers::extract(op, &view, route.generic.as_ref()) {
        Ok(x) => x,
        Err(e) if route.on_unsupported == OnUnsupported::Passthrough => {
            tracing::debug!(route = %route.name, "forwarding an unreadable request undecided: {e}");
            ctx.outcome = Outcome::Passthrough;
            return forward(app, route, &parts, body, ctx, None).await.0;
        }
        Err(e) => {
            tracing::debug!(route = %route.name, "refusing an unreadable request: {e}");
            let hit = builtin_unsupported();
            let decision = Decision {
                verdict: Verdict::Block(hit),
                shadow: Vec::new(),
                degraded: false,
                local: false,
                rate_limit: None,
                cost: None,
                counted: Vec::new(),
            };
            app.observe_decision(&decision, &[], true);
            ctx.outcome = Outcome::Blocked;
            ctx.event.ts = now.to_rfc3339();
            ctx.event.decision = Some("block");
            ctx.event.reasons = vec![Reason::UnsupportedRequest.as_str()];
            ctx.event.rule = Some(decide::BUILTIN.to_owned());
            finish_event(app, ctx, started);
            let hit = decision
                .verdict
                .hit()
                .cloned()
                .unwrap_or_else(builtin_unsupported);
            return refusal_response(op, route, RefusalKind::Block, &hit, 0, &request_id);
        }
    };
    if extracted.no_phone {
        ctx.outcome = Outcome::Passthrough;
        return forward(app, route, &parts, body, ctx, None).await.0;
    }

    let format = extracted
        .number_format
        .or(route.number_format)
        .unwrap_or_default();
    let mut recipients: Vec<Recipient> = extracted
        .recipients
        .iter()
        .map(|r| phone::normalize(r, format, route.default_region))
        .collect();
    if recipients.is_empty() {
        if let Some(r) = extracted.verify_ref.as_deref() {
            if let Some(d) = app.verify_ref(r, now).await {
                recipients.push(Ok(d));
            }
        }
    }
    if recipients.is_empty() {
        // A check naming a verification smsfence never saw start: nothing to decide on.
        ctx.outcome = Outcome::Passthrough;
        return forward(
            app,
            route,
            &parts,
            body.clone(),
            ctx,
            Some((op, &view, &extracted, &recipients)),
        )
        .await
        .0;
    }

    let facts = Facts {
        kind,
        recipients: &recipients,
        ip,
        user: user.as_deref(),
        account: extracted.account.as_deref(),
        sender: extracted.sender.as_deref(),
        segments: extracted.segments,
    };
    let rules = app.rules.snapshot();
    let decision = decide::decide(&rules, &app.store, &facts, now, Commit::Yes).await;
    app.observe_decision(
        &decision,
        &recipients,
        kind != providers::RequestKind::VerifyCheck,
    );

    ctx.event.decision = Some(decision.verdict.as_str());
    ctx.event.segments = Some(extracted.segments);
    ctx.event.degraded = decision.degraded;
    ctx.event.cost = decision.cost;
    if app.audit.enabled() {
        // Formatting and copies only when an event will be written.
        ctx.event.ts = now.to_rfc3339();
        ctx.event.account = extracted.account.clone();
        ctx.event.shadow = decision.shadow.iter().map(|h| h.rule.to_string()).collect();
        // Every recipient in its place: one that is not a phone number is written as
        // `invalid` (never as sent), so that replay decides it as it was decided here.
        let mut numbers = recipients.iter().map(|r| match r {
            Ok(d) => app.audit.number(&d.e164()),
            Err(_) => "invalid".to_owned(),
        });
        ctx.event.number = numbers.next();
        ctx.event.numbers = numbers.collect();
        if let Some(Ok(d)) = recipients.first() {
            ctx.event.country = d.country().map(|c| c.to_string());
            ctx.event.number_type = Some(d.number_type().as_str());
        }
    }

    let resp = match &decision.verdict {
        Verdict::Allow => {
            ctx.outcome = Outcome::Forwarded;
            ctx.counted = decision.counted;
            let (mut resp, _) = forward(
                app,
                route,
                &parts,
                body.clone(),
                ctx,
                Some((op, &view, &extracted, &recipients)),
            )
            .await;
            // The provider refused the send (an error status) or was never reached: no
            // code went out and nothing was spent, so the send is not counted. A timeout
            // or a broken exchange stays counted: the code may have gone out. (A client
            // that hangs up once the answer is known has it given back by `InFlight`.)
            if not_taken(ctx) && !ctx.counted.is_empty() {
                let counted = std::mem::take(&mut ctx.counted);
                let given = decide::heuristics::give_back(&app.store, &counted, app.clock.now());
                if let Err(e) = given.await {
                    app.store_error("conversion", &e);
                }
            }
            if let Some(rl) = &decision.rate_limit {
                let h = resp.headers_mut();
                let quota = u64::from(rl.quota);
                let policy = rate_limit_item(&rl.rule, [("q", quota), ("w", rl.window_secs)]);
                let remaining = u64::from(rl.remaining);
                let state = rate_limit_item(&rl.rule, [("r", remaining), ("t", rl.reset_secs)]);
                if let (Ok(p), Ok(s)) = (
                    HeaderValue::from_str(&policy),
                    HeaderValue::from_str(&state),
                ) {
                    h.insert(HeaderName::from_static("ratelimit-policy"), p);
                    h.insert(HeaderName::from_static("ratelimit"), s);
                }
            }
            resp
        }
        Verdict::Throttle { hit, retry_after } => {
            ctx.outcome = Outcome::Throttled;
            ctx.event.reasons = vec![hit.reason.as_str()];
            ctx.event.rule = Some(hit.rule.to_string());
            // A throttle longer than the route accepts is answered as a block, so that an
            // SDK that sleeps out Retry-After by itself raises at once (reason unchanged).
            let kind = if route.max_retry_after.is_some_and(|m| *retry_after > m) {
                RefusalKind::Block
            } else {
                RefusalKind::Throttle {
                    retry_after: *retry_after,
                }
            };
            refusal_response(op, route, kind, hit, recipients.len(), &request_id)
        }
        Verdict::Block(hit) => {
            ctx.outcome = Outcome::Blocked;
            ctx.event.reasons = vec![hit.reason.as_str()];
            ctx.event.rule = Some(hit.rule.to_string());
            refusal_response(
                op,
                route,
                RefusalKind::Block,
                hit,
                recipients.len(),
                &request_id,
            )
        }
    };
    finish_event(app, ctx, started);
    resp
}

fn finish_event(app: &App, ctx: &mut Ctx<'_>, started: Instant) {
    let event = &mut ctx.event;
    if !app.audit.enabled() {
        // Taken all the same: the request is finished.
        event.decision = None;
        return;
    }
    event.upstream_status = ctx.upstream_status;
    event.upstream_error = ctx.upstream_error.map(UpstreamError::as_str);
    event.latency_ms = Some(started.elapsed().as_secs_f64() * 1e3);
    if ctx.upstream_time > Duration::ZERO {
        event.upstream_ms = Some(ctx.upstream_time.as_secs_f64() * 1e3);
    }
    app.audit.emit(std::mem::take(event));
}

/// Reads the whole body, bounded in size and time.
async fn read_body(
    app: &App,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Bytes, (Outcome, Response<Body>)> {
    let max = app.max_body;
    let too_large = || {
        (
            Outcome::BodyTooLarge,
            own_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("smsfence accepts request bodies of at most {max} bytes"),
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(app.read_timeout, Limited::new(body, max).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(_)) => Err((
            Outcome::BadRequest,
            own_error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "smsfence could not read the request body",
            ),
        )),
        Err(_) => Err((
            Outcome::ReadTimeout,
            own_error(
                StatusCode::REQUEST_TIMEOUT,
                "read_timeout",
                "smsfence timed out reading the request body",
            ),
        )),
    }
}

type OpContext<'v> = (Op, &'v RequestView<'v>, &'v Extracted, &'v [Recipient]);

/// Forwards to the route's upstream (or the sandbox) and reads any conversion signal.
/// Returns the response and the upstream status.
async fn forward<'a>(
    app: &'a App,
    route: &'a Route,
    parts: &Parts,
    body: Bytes,
    ctx: &mut Ctx<'a>,
    op: Option<OpContext<'_>>,
) -> (Response<Body>, Option<u16>) {
    let (scheme, authority, base_path) = match &route.upstream {
        Upstream::Sandbox => {
            let Some((op, view, extracted, recipients)) = op else {
                return (
                    own_error(
                        StatusCode::NOT_IMPLEMENTED,
                        "sandbox",
                        "the smsfence sandbox answers only send and verify endpoints",
                    ),
                    None,
                );
            };
            let native = providers::sandbox(op, view, extracted, route.generic.as_ref());
            ctx.upstream_status = Some(native.status.as_u16());
            let signal = providers::conversion(op, view, extracted, native.status, &native.body);
            app.apply_signal(signal, recipients).await;
            return (
                native_response(native),
                Some(ctx.upstream_status.unwrap_or(200)),
            );
        }
        Upstream::Url {
            scheme,
            authority,
            base_path,
        } => (scheme, authority, base_path),
    };
    let uri = match upstream_uri(&parts.uri, ctx.prefix_end, base_path) {
        Ok(u) => u,
        Err(_) => {
            ctx.outcome = Outcome::BadRequest;
            return (
                own_error(
                    StatusCode::BAD_REQUEST,
                    "bad_path",
                    "smsfence could not build the upstream URL",
                ),
                None,
            );
        }
    };
    // hyper frames an empty body with no Content-Length at all; upstreams that require
    // one on a POST answer 411. An empty body the client framed, or sent with a method
    // that carries one, goes on as `Content-Length: 0`.
    let empty_framed = body.is_empty()
        && (parts.headers.contains_key(header::CONTENT_LENGTH)
            || parts.headers.contains_key(header::TRANSFER_ENCODING)
            || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH));
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = forward_headers(&parts.headers);
    if empty_framed {
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
        req.headers_mut().insert(header::HOST, host);
    }

    let sent = Instant::now();
    ctx.upstream_since = Some(sent);
    let result = app
        .upstream
        .send(ctx.provider, scheme, authority, req)
        .await;
    ctx.upstream_time = sent.elapsed();
    ctx.upstream_since = None;
    let resp = match result {
        Ok(r) => r,
        Err(kind) => {
            app.metrics
                .upstream_errors
                .with_label_values(&[ctx.provider, kind.as_str()])
                .inc();
            tracing::warn!(route = %route.name, kind = kind.as_str(), "upstream request failed");
            ctx.upstream_error = Some(kind);
            return match kind {
                UpstreamError::Timeout => {
                    ctx.outcome = Outcome::UpstreamTimeout;
                    (
                        own_error(
                            StatusCode::GATEWAY_TIMEOUT,
                            "upstream_timeout",
                            &format!(
                                "the upstream of route {:?} did not answer within {:?}",
                                route.name,
                                app.upstream.timeout()
                            ),
                        ),
                        None,
                    )
                }
                _ => {
                    ctx.outcome = Outcome::UpstreamError;
                    (
                        own_error(
                            StatusCode::BAD_GATEWAY,
                            "upstream_unreachable",
                            &format!(
                                "the upstream of route {:?} could not be reached ({})",
                                route.name,
                                kind.as_str()
                            ),
                        ),
                        None,
                    )
                }
            };
        }
    };
    let status = resp.status();
    ctx.upstream_status = Some(status.as_u16());
    app.observe_upstream(
        ctx.provider,
        status.as_u16(),
        ctx.upstream_time.as_secs_f64(),
    );

    let (mut head, incoming) = resp.into_parts();
    // A body that came chunked goes on chunked (or whole): a Content-Length sent along
    // with Transfer-Encoding does not describe it (RFC 9112 §6.3).
    if head.headers.contains_key(header::TRANSFER_ENCODING) {
        head.headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut head.headers);
    match op {
        Some((op, view, extracted, recipients)) if providers::wants_response_body(op) => {
            let left = app.upstream.timeout().saturating_sub(ctx.upstream_time);
            ctx.upstream_since = Some(sent);
            let read = read_upstream_body(incoming, left).await;
            ctx.upstream_time = sent.elapsed();
            ctx.upstream_since = None;
            match read {
                UpstreamRead::Whole(bytes) => {
                    app.apply_signal(
                        providers::conversion(op, view, extracted, status, &bytes),
                        recipients,
                    )
                    .await;
                    head.headers.remove(header::CONTENT_LENGTH);
                    (
                        Response::from_parts(head, Either::Left(Full::new(bytes))),
                        Some(status.as_u16()),
                    )
                }
                UpstreamRead::Partial(read, rest) => {
                    // The upstream answered; its answer goes to the client as it comes,
                    // without a conversion signal.
                    tracing::debug!(
                        route = %route.name,
                        "upstream body too slow or too large to read for a conversion signal"
                    );
                    (
                        Response::from_parts(head, Either::Right(rest.after(read))),
                        Some(status.as_u16()),
                    )
                }
                UpstreamRead::Broken => {
                    // Counted by the body, with its kind.
                    ctx.outcome = Outcome::UpstreamError;
                    (
                        own_error(
                            StatusCode::BAD_GATEWAY,
                            "upstream_body",
                            "the upstream response body broke off",
                        ),
                        Some(status.as_u16()),
                    )
                }
            }
        }
        _ => (
            Response::from_parts(head, Either::Right(incoming)),
            Some(status.as_u16()),
        ),
    }
}

/// An upstream response body read for its conversion signal.
enum UpstreamRead {
    /// All of it.
    Whole(Bytes),
    /// Not all within the time left or [`MAX_BUFFERED_RESPONSE`]: what was read, and the
    /// body to go on with.
    Partial(Bytes, UpstreamBody),
    /// The upstream broke the body off.
    Broken,
}

async fn read_upstream_body(mut body: UpstreamBody, left: Duration) -> UpstreamRead {
    let deadline = tokio::time::Instant::now() + left;
    let mut parts: Vec<Bytes> = Vec::new();
    let mut len = 0;
    let joined = |parts: Vec<Bytes>| match <[Bytes; 1]>::try_from(parts) {
        Ok([one]) => one,
        Err(parts) => Bytes::from(parts.concat()),
    };
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(None) => return UpstreamRead::Whole(joined(parts)),
            Ok(Some(Err(_))) => return UpstreamRead::Broken,
            Ok(Some(Ok(frame))) => {
                // Trailers are dropped, as when the whole body is sent on.
                if let Ok(data) = frame.into_data() {
                    len += data.len();
                    parts.push(data);
                    if len > MAX_BUFFERED_RESPONSE {
                        return UpstreamRead::Partial(joined(parts), body);
                    }
                }
            }
            Err(_) => return UpstreamRead::Partial(joined(parts), body),
        }
    }
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1, which names
/// Proxy-Connection too).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Usually there are none: one pass over the names costs less than eight removals.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for h in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(h);
    }
}

/// One item of the IETF `RateLimit` / `RateLimit-Policy` fields: `"name";k=v;k=v`
/// (written without the formatting machinery: it is on every allowed request).
fn rate_limit_item(name: &str, params: [(&str, u64); 2]) -> String {
    let mut s = String::with_capacity(name.len() + 48);
    s.push('"');
    s.push_str(name);
    s.push('"');
    for (key, value) in params {
        s.push(';');
        s.push_str(key);
        s.push('=');
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut v = value;
        loop {
            at -= 1;
            digits[at] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        s.extend(digits[at..].iter().map(|&d| char::from(d)));
    }
    s
}

/// The origin-form URI sent upstream: the base path, then the request's path without the
/// route's prefix, then its query. With neither prefix nor base path it is the request's
/// own path and query, shared rather than formatted and parsed again.
fn upstream_uri(uri: &Uri, prefix_end: usize, base_path: &str) -> Result<Uri, InvalidUri> {
    if prefix_end == 0 && base_path.is_empty() {
        if let Some(pq) = uri.path_and_query() {
            return Ok(Uri::from(pq.clone()));
        }
    }
    let path = uri.path();
    let rest = &path[prefix_end.min(path.len())..];
    // A request for the prefix itself, on a route with no base path: the root.
    let root = if base_path.is_empty() && rest.is_empty() {
        "/"
    } else {
        ""
    };
    match uri.query() {
        Some(q) => Uri::try_from(format!("{base_path}{root}{rest}?{q}")),
        None => Uri::try_from(format!("{base_path}{root}{rest}")),
    }
}

fn forward_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut h = incoming.clone();
    strip_hop_by_hop(&mut h);
    h.remove(header::HOST);
    // The body was read whole; hyper sets Content-Length from it. An `Expect:
    // 100-continue` was answered by reading it: the body follows its head at once.
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::EXPECT);
    h
}

fn builtin_unsupported() -> decide::Hit {
    decide::Hit {
        reason: Reason::UnsupportedRequest,
        rule: Arc::from(decide::BUILTIN),
        recipient: None,
    }
}

/// The native refusal, with the `Smsfence-Reason` header.
fn refusal_response(
    op: Op,
    route: &Route,
    kind: RefusalKind,
    hit: &decide::Hit,
    recipients: usize,
    request_id: &str,
) -> Response<Body> {
    let refusal = Refusal {
        kind,
        reason: hit.reason,
        rule: &hit.rule,
        recipient: hit.recipient,
        recipients,
    };
    let native = providers::refusal(op, &refusal, route.generic.as_ref())
        .with_header("smsfence-request-id", request_id);
    native_response(native)
}

/// Turns a [`NativeResponse`] into a hyper response.
pub fn native_response(n: NativeResponse) -> Response<Body> {
    let mut resp = Response::new(Either::Left(Full::new(n.body)));
    *resp.status_mut() = n.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(n.content_type),
    );
    for (k, v) in n.headers {
        h.append(k, v);
    }
    resp
}

/// smsfence's own error: `{"error": {"code", "message"}}` and `Smsfence-Error`.
pub fn own_error(status: StatusCode, code: &'static str, message: &str) -> Response<Body> {
    let body =
        serde_json::json!({"error": {"code": code, "message": message, "source": "smsfence"}});
    native_response(NativeResponse::json(status, &body).with_header("smsfence-error", code))
}

/// A path for messages: segments that look like credentials or numbers are masked.
pub fn redact_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let digits = seg.bytes().filter(u8::is_ascii_digit).count();
        let long_token = seg.len() >= 16
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if digits >= 6 || long_token {
            out.push_str("***");
        } else {
            out.push_str(seg);
        }
    }
    out
}

impl App {
    /// The number a verification reference went to: this instance's map first, then the
    /// shared store (a check may reach another instance than its start).
    async fn verify_ref(
        &self,
        reference: &str,
        now: crate::clock::Timestamp,
    ) -> Option<Destination> {
        if let Some(d) = self.refs.get(reference, now) {
            return Some(d);
        }
        match self.store.get_ref(reference).await {
            Ok(d) => d,
            Err(e) => {
                self.store_error("verify_ref", &e);
                None
            }
        }
    }

    fn store_error(&self, what: &'static str, e: &crate::store::StoreError) {
        self.metrics
            .store_errors
            .with_label_values(&[self.store.kind(), what])
            .inc();
        tracing::warn!("state store: {what}: {e}");
    }

    /// Records what a verification outcome says: the reference map and conversions.
    async fn apply_signal(&self, signal: ConversionSignal, recipients: &[Recipient]) {
        let now = self.clock.now();
        let first: Option<Destination> = recipients.iter().find_map(|r| r.as_ref().ok().copied());
        match signal {
            ConversionSignal::None => {}
            ConversionSignal::Started { reference } => {
                if let Some(d) = first {
                    // Both copies are under way before the first pause, so a client that
                    // hangs up meanwhile loses neither: this instance's at once, the shared
                    // one in a task of its own.
                    let shared = self.store.put_ref(&reference, &d, self.refs.ttl());
                    self.refs.insert(reference, d, now);
                    if let Err(e) = shared.await {
                        self.store_error("verify_ref", &e);
                    }
                }
            }
            ConversionSignal::Verified { number, reference } => {
                let mut dest = first.or_else(|| {
                    number.and_then(|n| phone::normalize(&n, phone::NumberFormat::E164, None).ok())
                });
                if dest.is_none() {
                    if let Some(r) = reference {
                        dest = self.verify_ref(&r, now).await;
                    }
                }
                if let Some(d) = dest {
                    self.record_conversion(&d, "verify_check", true).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_of_paths() {
        assert_eq!(
            redact_path("/API/V1/abcdef1234567890abcd/SMS/+447700900123/AUTOGEN"),
            "/API/V1/***/SMS/***/AUTOGEN"
        );
        assert_eq!(redact_path("/sms/json"), "/sms/json");
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let f = forward_headers(&h);
        assert!(f.get("connection").is_none());
        assert!(f.get("x-private").is_none());
        assert!(f.get("transfer-encoding").is_none());
        assert_eq!(f.get("authorization").unwrap(), "Basic abc");
    }

    #[test]
    fn upstream_uris_keep_what_follows_the_prefix() {
        let cases = [
            // (request, prefix end, base path, upstream)
            ("/a/b?x=1", 0, "", "/a/b?x=1"),
            ("/p/a/b?x=1", 2, "", "/a/b?x=1"),
            ("/p/a/b", 2, "/base", "/base/a/b"),
            ("//p/a", 3, "/base", "/base/a"),
            // The prefix itself, with no base path: the upstream's root.
            ("/p", 2, "", "/"),
            ("/p?x=1", 2, "", "/?x=1"),
            ("/p", 2, "/base", "/base"),
        ];
        for (request, end, base, want) in cases {
            let uri: Uri = request.parse().unwrap();
            let got = upstream_uri(&uri, end, base).unwrap();
            assert_eq!(got.to_string(), want, "{request} {end} {base}");
        }
    }

    #[test]
    fn rate_limit_items_read_as_formatted() {
        for (a, b) in [(0, 0), (1, 9), (10, 99), (u64::from(u32::MAX), u64::MAX)] {
            assert_eq!(
                rate_limit_item("per-number", [("q", a), ("w", b)]),
                format!("\"per-number\";q={a};w={b}")
            );
        }
    }
}
