//! The accept loop shared by the proxy and admin listeners, with graceful shutdown.
//!
//! Shutdown is a `watch` channel: when it flips, the loop stops accepting and drops the
//! listener, then every open connection is told to finish its in-flight request and
//! close (hyper's graceful shutdown); after `drain` whatever is left is abandoned.
//! HTTP/1.1 and h2c are both served; malformed HTTP gets hyper's 400 and is counted.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::handler::Body;
use crate::metrics::Metrics;

/// Serves `listener` with `handler` until `stop` flips, then drains for at most `drain`.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
    header_timeout: Duration,
    metrics: Arc<Metrics>,
    handler: F,
) where
    F: Fn(IpAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    metrics.connection_errors.with_label_values(&["accept"]).inc();
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let peer_ip = peer.ip();
        let service = hyper::service::service_fn(move |req| handler(peer_ip, req));
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                let kind = classify(&*e);
                metrics.connection_errors.with_label_values(&[kind]).inc();
                tracing::debug!(kind, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => {
            tracing::warn!("drain timeout of {drain:?} reached; closing remaining connections");
        }
    }
}

fn classify(e: &(dyn std::error::Error + 'static)) -> &'static str {
    match e.downcast_ref::<hyper::Error>() {
        Some(h) if h.is_parse() || h.is_parse_status() => "malformed",
        Some(h) if h.is_timeout() => "timeout",
        Some(h) if h.is_incomplete_message() => "incomplete",
        _ => "io",
    }
}
