//! The accept loop shared by the proxy and admin listeners, with graceful shutdown.
//!
//! Shutdown is a `watch` channel: when it flips, the loop stops accepting and drops the
//! listener, then every open connection is told to finish its in-flight request and
//! close (hyper's graceful shutdown); after `drain` whatever is left is abandoned.
//! HTTP/1.1 and h2c are both served; malformed HTTP gets hyper's 400 and is counted.
//!
//! A connection idle for the header timeout is closed, whichever protocol it speaks:
//! hyper does it for HTTP/1.1 (its header timeout also runs between requests); an h2c
//! connection, which hyper's HTTP/2 server would keep for ever, is shut down gracefully
//! here (GOAWAY: a request still in flight finishes) once no byte has passed either way
//! for that long.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::handler::Body;
use crate::metrics::Metrics;

/// Serves `listener` with `handler` until `stop` flips, then drains for at most `drain`;
/// over TLS when `tls` is given.
#[allow(clippy::too_many_arguments)]
pub async fn serve<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
    header_timeout: Duration,
    metrics: Arc<Metrics>,
    tls: Option<TlsAcceptor>,
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
    let builder = Arc::new(builder);
    // Each connection's task holds a receiver of `alive`: when none is left, all are done.
    let (alive, _) = watch::channel(());
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
        let conn = Conn {
            builder: Arc::clone(&builder),
            peer: peer.ip(),
            handler: handler.clone(),
            header_timeout,
            stop: stop.clone(),
            alive: alive.subscribe(),
            metrics: Arc::clone(&metrics),
        };
        match &tls {
            None => conn.spawn(stream),
            // The handshake runs in the connection's own task, timed like a request head.
            Some(acceptor) => {
                let handshake = acceptor.accept(stream);
                tokio::spawn(async move {
                    match tokio::time::timeout(header_timeout, handshake).await {
                        Ok(Ok(stream)) => conn.spawn(stream),
                        Ok(Err(e)) => {
                            conn.metrics
                                .connection_errors
                                .with_label_values(&["tls"])
                                .inc();
                            tracing::debug!("TLS handshake failed: {e}");
                        }
                        Err(_) => {
                            conn.metrics
                                .connection_errors
                                .with_label_values(&["timeout"])
                                .inc();
                            tracing::debug!("TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = alive.closed() => {}
        _ = tokio::time::sleep(drain) => {
            tracing::warn!("drain timeout of {drain:?} reached; closing remaining connections");
        }
    }
}

/// An accepted connection, ready to be served.
struct Conn<F> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    peer: IpAddr,
    handler: F,
    header_timeout: Duration,
    stop: watch::Receiver<bool>,
    /// Dropped when the connection ends (see `serve`'s drain).
    alive: watch::Receiver<()>,
    metrics: Arc<Metrics>,
}

impl<F, Fut> Conn<F>
where
    F: Fn(IpAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    /// Serves the connection in a task of its own until it ends.
    fn spawn<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            builder,
            peer,
            handler,
            header_timeout,
            mut stop,
            alive,
            metrics,
        } = self;
        let service = hyper::service::service_fn(move |req| handler(peer, req));
        let activity = Arc::new(Activity::new());
        let io = Sniffing::new(stream, header_timeout, Arc::clone(&activity));
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        // The connection is told to shut down gracefully from a task of its own, which waits
        // for the stop signal or (h2c) idleness: the connection's task polls nothing more per
        // request than the connection itself.
        let graceful = GracefulShutdown::new();
        let conn = graceful.watch(conn);
        let (ended, ended_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _alive = alive;
            let _ended = ended;
            if let Err(e) = conn.await {
                let kind = classify(&*e);
                metrics.connection_errors.with_label_values(&[kind]).inc();
                tracing::debug!(kind, "client connection ended with an error");
            }
        });
        tokio::spawn(async move {
            tokio::select! {
                _ = ended_rx => return,
                _ = async { drop(stop.wait_for(|stopped| *stopped).await) } => {}
                _ = activity.idle(header_timeout) => {}
            }
            graceful.shutdown().await;
        });
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

/// When an h2c connection last read or wrote a byte, for its idle limit.
///
/// HTTP/1.1 connections are left to hyper, whose header timeout also runs between requests;
/// only a connection that completed the HTTP/2 preface is timed here.
struct Activity {
    /// When the connection was accepted; `last` counts from here.
    start: Instant,
    /// Milliseconds from `start` to the last byte read or written on an h2c connection,
    /// or [`Activity::UNKNOWN`] / [`Activity::HTTP1`].
    last: AtomicU64,
}

impl Activity {
    const UNKNOWN: u64 = u64::MAX;
    const HTTP1: u64 = u64::MAX - 1;

    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(Activity::UNKNOWN),
        }
    }

    fn set(&self, state: u64) {
        self.last.store(state, Ordering::Relaxed);
    }

    /// Records a byte read or written on an h2c connection.
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis();
        self.set(u64::try_from(ms).unwrap_or(Activity::HTTP1 - 1));
    }

    /// Completes once an h2c connection has been idle for `limit`; never for HTTP/1.1.
    async fn idle(&self, limit: Duration) {
        let mut deadline = self.start + limit;
        loop {
            tokio::time::sleep_until(deadline).await;
            match self.last.load(Ordering::Relaxed) {
                Activity::HTTP1 => std::future::pending::<()>().await,
                // Still sniffing: `Sniffing` ends the connection if that takes too long.
                Activity::UNKNOWN => deadline += limit,
                last => {
                    let until = self.start + Duration::from_millis(last) + limit;
                    if until <= Instant::now() {
                        return;
                    }
                    deadline = until;
                }
            }
        }
    }
}

/// A client connection that must show which protocol it speaks within the header timeout.
///
/// hyper's `auto` builder reads up to the HTTP/2 preface before either protocol (and so
/// its header timeout) starts; a client that sends nothing, or stops inside the preface,
/// would hold its connection for ever. Once the bytes read differ from the preface or
/// complete it, reads are passed through untimed — and on an h2c connection, every byte
/// read or written is recorded in its [`Activity`].
struct Sniffing<S> {
    stream: S,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    matched: usize,
    activity: Arc<Activity>,
    h2: bool,
}

impl<S> Sniffing<S> {
    fn new(stream: S, timeout: Duration, activity: Arc<Activity>) -> Sniffing<S> {
        Sniffing {
            stream,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            matched: 0,
            activity,
            h2: false,
        }
    }

    /// Records traffic on an h2c connection after a poll that moved `n` bytes.
    fn moved(&self, n: usize) {
        if self.h2 && n > 0 {
            self.activity.touch();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniffing<S> {
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
                    if n == 0 || new[..n] != H2_PREFACE[this.matched - n..this.matched] {
                        this.deadline = None;
                        this.activity.set(Activity::HTTP1);
                    } else if this.matched == H2_PREFACE.len() {
                        this.deadline = None;
                        this.h2 = true;
                    }
                }
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
                }
                _ => {}
            }
        }
        if let Poll::Ready(Ok(())) = polled {
            this.moved(buf.filled().len() - before);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniffing<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.moved(n);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            this.moved(n);
        }
        polled
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
