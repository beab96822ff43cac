//! The upstream client: keep-alive HTTP/1.1 over TCP or rustls, one connection pool per
//! proxy worker, a connect timeout and a total timeout, and errors sorted into kinds for
//! metrics. A response body may not pause for longer than the total timeout either: it
//! fails then (and is counted), rather than hold its client for as long as the upstream
//! holds the connection.
//!
//! Built on hyper's connection API rather than a general-purpose pooled client: a
//! worker takes an idle connection from its own pool, sends, and the connection goes
//! back to that pool when the response body has been read to its end — no shared pool,
//! no per-request bookkeeping task. Upstreams are spoken to in HTTP/1.1 (as nginx does);
//! every provider API accepts it.
//!
//! Requests are sent once. A request is re-sent only when hyper hands it back unwritten
//! (a pooled connection found closed before anything was sent), on another connection.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::http::uri::{Authority, Scheme};
use hyper::{Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use prometheus::IntCounterVec;
use tower_service::Service;

use crate::config::UpstreamConfig;

/// Why an upstream exchange, or its response body, failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The connection was refused or could not be opened (TCP or TLS).
    #[error("the upstream connection could not be opened")]
    Refused,
    /// No response head within the timeout, or a body that paused for longer.
    #[error("the upstream did not answer in time")]
    Timeout,
    /// The connection broke mid-exchange.
    #[error("the upstream connection broke")]
    Reset,
    /// Anything else (a malformed response, a protocol error).
    #[error("the upstream answer was not usable HTTP")]
    Other,
}

impl UpstreamError {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Refused => "refused",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Reset => "reset",
            UpstreamError::Other => "other",
        }
    }

    fn of(e: &hyper::Error) -> UpstreamError {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        // A body cut short (the connection closed inside it) is an `UnexpectedEof`.
        let io_reset = std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| {
                matches!(
                    io.kind(),
                    ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof
                )
            });
        if e.is_canceled() || e.is_incomplete_message() || e.is_closed() || io_reset {
            UpstreamError::Reset
        } else {
            UpstreamError::Other
        }
    }
}

thread_local! {
    /// Which proxy worker runs on this thread (0 on any thread not started as one).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks this thread as proxy worker `index`: its requests use that worker's pool.
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

type Sender = SendRequest<Full<Bytes>>;

/// The upstream client, shared by every worker (each uses its own pool).
#[derive(Clone)]
pub struct Upstream {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("workers", &self.shared.workers.len())
            .field("timeout", &self.shared.timeout)
            .finish()
    }
}

struct Shared {
    workers: Box<[Mutex<Vec<Host>>]>,
    /// `smsfence_upstream_errors_total`, for bodies that fail after their exchange.
    errors: IntCounterVec,
    connector: HttpsConnector<HttpConnector>,
    timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

/// One upstream host's idle connections in one worker's pool.
struct Host {
    scheme: Scheme,
    authority: Authority,
    idle: Vec<Idle>,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

impl Upstream {
    /// A client with the configured timeouts and one pool per worker; response bodies
    /// that fail count in `errors` (by provider and kind).
    pub fn new(cfg: &UpstreamConfig, workers: usize, errors: IntCounterVec) -> Upstream {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Upstream {
            shared: Arc::new(Shared {
                workers: (0..workers.max(1))
                    .map(|_| Mutex::new(Vec::new()))
                    .collect(),
                errors,
                connector,
                timeout: cfg.timeout,
                idle_timeout: cfg.pool_idle_timeout,
                max_idle: cfg.pool_max_idle_per_host,
            }),
        }
    }

    /// Sends one request (origin-form URI, `Host` set) to `scheme://authority` and waits
    /// for the response head, within the total timeout. Its body's failures are counted
    /// under `provider`.
    pub async fn send(
        &self,
        provider: &'static str,
        scheme: &Scheme,
        authority: &Authority,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let exchange = self.exchange(provider, scheme, authority, req);
        tokio::time::timeout(self.shared.timeout, exchange)
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }

    async fn exchange(
        &self,
        provider: &'static str,
        scheme: &Scheme,
        authority: &Authority,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let worker = WORKER.with(Cell::get) % self.shared.workers.len();
        loop {
            let (host, pooled) = self.shared.checkout(worker, scheme, authority);
            let reused = pooled.is_some();
            let mut sender = match pooled {
                Some(s) => s,
                None => self.connect(scheme, authority).await?,
            };
            match sender.try_send_request(req).await {
                // `Upgrade` is never sent on, so no protocol switch was asked for: a
                // broken upstream (and its connection, handed over to the switch, is lost).
                Ok(resp) if resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS => {
                    return Err(UpstreamError::Other);
                }
                Ok(resp) => {
                    let back = Return {
                        shared: Arc::clone(&self.shared),
                        worker,
                        host,
                        sender,
                    };
                    return Ok(resp.map(|inner| UpstreamBody {
                        read: None,
                        inner,
                        back: Some(back),
                        provider,
                        idle: None,
                        moved: false,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the pooled connection had closed. Another one (a new
                    // one once the pool is empty) gets it; a new connection is not retried.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(UpstreamError::of(e.error())),
                },
            }
        }
    }

    async fn connect(
        &self,
        scheme: &Scheme,
        authority: &Authority,
    ) -> Result<Sender, UpstreamError> {
        let uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|_| UpstreamError::Other)?;
        let io = self.shared.connector.clone().call(uri).await.map_err(|e| {
            tracing::debug!("upstream connect failed: {e}");
            UpstreamError::Refused
        })?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::of(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        Ok(sender)
    }

    /// Closes the pooled connections that have been idle for longer than the pool's idle
    /// timeout, or that the upstream closed. Handing a connection out looks only at the
    /// most recent ones; this, called in the background, reaches the others.
    pub fn prune_idle(&self) {
        let max = self.shared.idle_timeout;
        for worker in self.shared.workers.iter() {
            for host in lock(worker).iter_mut() {
                host.idle
                    .retain(|i| i.sender.is_ready() && i.since.elapsed() < max);
            }
        }
    }

    /// The total timeout.
    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// Idle connections in every worker's pool (for tests).
    pub fn idle_connections(&self) -> usize {
        self.shared
            .workers
            .iter()
            .map(|w| lock(w).iter().map(|h| h.idle.len()).sum::<usize>())
            .sum()
    }
}

fn lock(m: &Mutex<Vec<Host>>) -> MutexGuard<'_, Vec<Host>> {
    // A panic while holding the lock leaves the idle lists consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// The host's slot in the worker's pool, and an idle connection ready to use if one is.
    fn checkout(
        &self,
        worker: usize,
        scheme: &Scheme,
        authority: &Authority,
    ) -> (usize, Option<Sender>) {
        let mut hosts = lock(&self.workers[worker]);
        let index = match hosts
            .iter()
            .position(|h| h.authority == *authority && h.scheme == *scheme)
        {
            Some(i) => i,
            None => {
                hosts.push(Host {
                    scheme: scheme.clone(),
                    authority: authority.clone(),
                    idle: Vec::new(),
                });
                hosts.len() - 1
            }
        };
        let idle = &mut hosts[index].idle;
        // Most recently used first; closed, expired or busy connections are dropped.
        while let Some(i) = idle.pop() {
            if i.sender.is_ready() && i.since.elapsed() < self.idle_timeout {
                return (index, Some(i.sender));
            }
        }
        (index, None)
    }

    fn put(&self, worker: usize, host: usize, sender: Sender) {
        let mut hosts = lock(&self.workers[worker]);
        let idle = &mut hosts[host].idle;
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

/// Where a connection goes back once its response has been read.
struct Return {
    shared: Arc<Shared>,
    worker: usize,
    host: usize,
    sender: Sender,
}

/// An upstream response body. Read to its end, it returns its connection to the pool;
/// dropped early, the connection is closed (HTTP/1.1 cannot abandon a response). It
/// fails when the upstream breaks it off or sends nothing more for the total timeout.
pub struct UpstreamBody {
    /// Bytes already read from `inner`, given out first (see [`UpstreamBody::after`]).
    read: Option<Bytes>,
    inner: Incoming,
    /// The connection's way back to the pool; `None` once returned or failed.
    back: Option<Return>,
    /// Whose failures these are, for the metric.
    provider: &'static str,
    /// Armed the first time a read has to wait (most bodies come with their head, and
    /// never need it); then re-armed for each wait that follows a frame.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A frame came since `idle` was armed.
    moved: bool,
}

impl UpstreamBody {
    /// The body with `read` — bytes taken from it already — given out first.
    pub fn after(mut self, read: Bytes) -> Self {
        self.read = Some(read).filter(|b| !b.is_empty());
        self
    }

    /// A read that has to wait: the body fails once nothing has come for the timeout.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let Some(back) = &self.back else {
            return Poll::Pending;
        };
        let timeout = back.shared.timeout;
        let idle = match &mut self.idle {
            Some(idle) if self.moved => {
                idle.as_mut().reset(tokio::time::Instant::now() + timeout);
                idle
            }
            Some(idle) => idle,
            None => self.idle.insert(Box::pin(tokio::time::sleep(timeout))),
        };
        self.moved = false;
        match idle.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(self.fail(UpstreamError::Timeout)))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The body failed: its connection is closed (not pooled) and the failure counted.
    fn fail(&mut self, kind: UpstreamError) -> UpstreamError {
        if let Some(r) = self.back.take() {
            r.shared
                .errors
                .with_label_values(&[self.provider, kind.as_str()])
                .inc();
        }
        self.idle = None;
        kind
    }

    fn release(&mut self) {
        if let Some(r) = self.back.take() {
            if r.sender.is_ready() {
                r.shared.put(r.worker, r.host, r.sender);
            } else if let Ok(rt) = tokio::runtime::Handle::try_current() {
                // The connection finishes the exchange on its next turn: pool it then.
                rt.spawn(async move {
                    let Return {
                        shared,
                        worker,
                        host,
                        mut sender,
                    } = r;
                    let ready = std::future::poll_fn(|cx| sender.poll_ready(cx));
                    if let Ok(Ok(())) = tokio::time::timeout(shared.timeout, ready).await {
                        shared.put(worker, host, sender);
                    }
                });
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        if let Some(read) = this.read.take() {
            return Poll::Ready(Some(Ok(Frame::data(read))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => this.wait(cx),
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.moved = true;
                if this.inner.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(this.fail(UpstreamError::of(&e))))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let hint = self.inner.size_hint();
        let read = self.read.as_ref().map_or(0, |b| b.len() as u64);
        let mut sum = SizeHint::new();
        sum.set_lower(hint.lower() + read);
        if let Some(upper) = hint.upper() {
            sum.set_upper(upper + read);
        }
        sum
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body with nothing left to read (204, or read to its end) frees its
        // connection; otherwise dropping the sender closes it.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
