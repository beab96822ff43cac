//! The accept loop shared by the proxy and admin listeners, with graceful shutdown.
//!
//! Shutdown is a `watch` channel: when it flips, the loop stops accepting and drops the
//! listener, then every open connection is told to finish its in-flight request and
//! close (hyper's graceful shutdown); after `drain` whatever is left is abandoned.
//! HTTP/1.1 and h2c are both served; malformed HTTP gets hyper's 400 and is counted.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
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
            .serve_connection(TokioIo::new(Sniffing::new(stream, header_timeout)), service)
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
        // A client that did not show its protocol in time (see `Sniffing`).
        None if e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) =>
        {
            "timeout"
        }
        _ => "io",
    }
}

/// The HTTP/2 connection preface, which hyper's `auto` builder looks for first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client connection that must show which protocol it speaks within the header timeout.
///
/// hyper's `auto` builder reads up to the HTTP/2 preface before either protocol (and so
/// its header timeout) starts; a client that sends nothing, or stops inside the preface,
/// would hold its connection for ever. Once the bytes read differ from the preface or
/// complete it, reads are passed through untimed.
struct Sniffing {
    stream: TcpStream,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    matched: usize,
}

impl Sniffing {
    fn new(stream: TcpStream, timeout: Duration) -> Sniffing {
        Sniffing {
            stream,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            matched: 0,
        }
    }
}

impl AsyncRead for Sniffing {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Some(deadline) = &mut this.deadline {
            match &polled {
                Poll::Ready(Ok(())) => {
                    let new = &buf.filled()[before..];
                    let n = new.len().min(H2_PREFACE.len() - this.matched);
                    this.matched += n;
                    if n == 0
                        || new[..n] != H2_PREFACE[this.matched - n..this.matched]
                        || this.matched == H2_PREFACE.len()
                    {
                        this.deadline = None;
                    }
                }
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
                }
                _ => {}
            }
        }
        polled
    }
}

impl AsyncWrite for Sniffing {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
