//! The pooled upstream client: keep-alive HTTP/1.1 and HTTP/2 over rustls, with a
//! connect timeout and a total timeout, and errors sorted into kinds for metrics.
//!
//! Requests are sent once. hyper's pool re-sends only a request that never left (a
//! pooled connection found closed before writing), which is not a second send.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamConfig;

/// Why an upstream exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// The connection was refused or could not be opened.
    Refused,
    /// No response head within the timeout.
    Timeout,
    /// The connection broke mid-exchange.
    Reset,
    /// Anything else (TLS, protocol).
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
}

type Pooled = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

thread_local! {
    /// Which proxy worker runs on this thread (0 on any thread not started as one).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks this thread as proxy worker `index`: its requests use that worker's pool.
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// The upstream clients: one connection pool per proxy worker, so a request and the
/// upstream connection it travels on are driven by the same thread.
#[derive(Clone, Debug)]
pub struct Upstream {
    clients: Arc<[Pooled]>,
    timeout: Duration,
}

impl Upstream {
    /// One client per worker with the configured timeouts and pool.
    pub fn new(cfg: &UpstreamConfig, workers: usize) -> Upstream {
        Upstream {
            clients: (0..workers.max(1)).map(|_| Self::client(cfg)).collect(),
            timeout: cfg.timeout,
        }
    }

    fn client(cfg: &UpstreamConfig) -> Pooled {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https)
    }

    /// Sends one request and waits for the response head.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let client = &self.clients[WORKER.with(Cell::get) % self.clients.len()];
        match tokio::time::timeout(self.timeout, client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Refused),
            Ok(Err(e)) => {
                let text = format!("{e:?}");
                if text.contains("Canceled")
                    || text.contains("IncompleteMessage")
                    || text.contains("reset")
                {
                    Err(UpstreamError::Reset)
                } else {
                    Err(UpstreamError::Other)
                }
            }
        }
    }

    /// The total timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}
