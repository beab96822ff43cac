//! The floor of the load benchmark: a reverse proxy on the same stack as smsfence (hyper's
//! HTTP/1 server, one current-thread runtime, the connection-API client with a pool of
//! kept-alive connections) doing nothing else — no routing, no extraction, no rules, no
//! metrics. What it costs per request is what any hyper-based proxy pays before its own
//! work (see BENCHMARKS.md, "The floor").
//!
//! `cargo run --release --example bare_proxy -- 127.0.0.1:19081 127.0.0.1:18080`
//! (listen address, upstream address; plain HTTP on loopback).

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type Pool = Rc<RefCell<Vec<SendRequest<Full<Bytes>>>>>;

/// One request forwarded upstream on a pooled connection (or a new one), the response
/// read whole and the connection put back.
async fn forward(
    pool: Pool,
    upstream: SocketAddr,
    req: Request<Incoming>,
) -> Option<Response<Full<Bytes>>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    let req = Request::from_parts(parts, Full::new(body));
    let pooled = std::iter::from_fn(|| pool.borrow_mut().pop()).find(|s| s.is_ready());
    let mut sender = match pooled {
        Some(s) => s,
        None => {
            let io = TcpStream::connect(upstream).await.ok()?;
            io.set_nodelay(true).ok()?;
            let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .ok()?;
            tokio::task::spawn_local(conn);
            s
        }
    };
    let (head, body) = sender.send_request(req).await.ok()?.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    if sender.ready().await.is_ok() {
        pool.borrow_mut().push(sender);
    }
    Some(Response::from_parts(head, Full::new(body)))
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = || std::io::Error::other("usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR");
    let listen: SocketAddr = args.next().and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let upstream: SocketAddr = args.next().and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(listen).await?;
        let pool: Pool = Rc::default();
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let pool = Rc::clone(&pool);
            tokio::task::spawn_local(async move {
                let svc = service_fn(move |req| {
                    let pool = Rc::clone(&pool);
                    async move {
                        let resp = forward(pool, upstream, req).await.unwrap_or_else(|| {
                            let mut r =
                                Response::new(Full::new(Bytes::from_static(b"upstream failed")));
                            *r.status_mut() = StatusCode::BAD_GATEWAY;
                            r
                        });
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
