//! Serving HTTP under abuse: connection, header, body and concurrency limits.
//!
//! `axum::serve` reads request headers without a deadline, so a client that opens a connection
//! and sends a header byte now and then holds a task and its buffers for as long as it likes;
//! a thousand such clients cost a node memory and, with a connection cap, lock everyone else
//! out. [`serve`] accepts connections itself and gives each one to hyper with
//!
//! * a deadline for reading each request's headers ([`Limits::header_timeout`]; hyper closes
//!   the connection when it passes, which also ends idle keep-alive connections),
//! * a cap on open connections ([`Limits::max_connections`]; past it, new connections wait in
//!   the kernel's accept queue),
//! * Nagle's algorithm off (answers are small and latency-bound),
//! * with TLS, a deadline for the handshake too (the header timeout), so a
//!   client that stalls the handshake cannot hold a connection either. Each request carries a
//!   [`crate::tls::Peer`] extension: the remote address and the client's certificates.
//!
//! [`client_layers`] puts one middleware ([`front`]) in front of the client API, which does
//! what comes before routing, in order:
//!
//! 1. answers a CORS preflight (`OPTIONS`) at once ([`crate::headers`]);
//! 2. checks the query string as rqlite does ([`crate::params::validate`]; 400) and leaves the
//!    decoded pairs in the request for the handlers ([`crate::http::Params`]);
//! 3. caps the requests being handled at once ([`Limits::max_requests`]; past it a request is
//!    answered at once with 503 and `Retry-After`, rather than queued without bound);
//! 4. puts an idle timeout on a request body that has yet to arrive ([`Limits::body_timeout`]:
//!    a body that stops arriving ends the request with 408); an empty body (a `GET`) needs
//!    none, and gets no timer;
//! 5. adds rqlite's headers to every answer.
//!
//! These were five tower layers (two middlewares, a load shedder over a concurrency limit, its
//! error handler, and a body timeout that armed a timer for every request); as one function a
//! request pays for one boxed future and one clone of the inner service instead of several.
//! Authentication comes after it (`run.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody as _};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::timeout::TimeoutBody;

/// The HTTP limits of a node (flags of `keel serve`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections at most, per listener.
    pub max_connections: usize,
    /// Client requests handled at once at most; more are answered 503.
    pub max_requests: usize,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long a request body may go without sending anything.
    pub body_timeout: Duration,
}

/// How long to wait before accepting again after `accept` failed (out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until the process ends, within `limits`' connection and
/// header limits, over TLS with `tls` if given. Never returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            unreachable!("the connection semaphore is never closed")
        };
        let (tcp, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE/ENFILE: nothing to do but wait for connections to close.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let (router, acceptor) = (router.clone(), acceptor.clone());
        tokio::spawn(async move {
            match acceptor {
                None => {
                    let peer = crate::tls::Peer { addr, certificates: None };
                    serve_connection(tcp, router, peer, limits).await;
                }
                Some(acceptor) => {
                    let handshake = acceptor.accept(tcp);
                    match tokio::time::timeout(limits.header_timeout, handshake).await {
                        Ok(Ok(stream)) => {
                            let certificates =
                                stream.get_ref().1.peer_certificates().map(Arc::from);
                            let peer = crate::tls::Peer { addr, certificates };
                            serve_connection(stream, router, peer, limits).await;
                        }
                        Ok(Err(e)) => handshake_failed(addr, &e),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Serves HTTP/1 on one accepted connection until it ends, each request carrying `peer`.
async fn serve_connection<IO>(io: IO, router: Router, peer: crate::tls::Peer, limits: Limits)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let router = tower::ServiceExt::map_request(
        router,
        move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(peer.clone());
            request
        },
    );
    let service = TowerToHyperService::new(router);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service)
        // The Raft port's replication stream is an HTTP/1.1 upgrade.
        .with_upgrades();
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Logs a failed TLS handshake: certificate refusals under `keel::audit` (a client with no
/// certificate, or one the CA did not sign), anything else (port scans, plain HTTP) at debug.
fn handshake_failed(addr: SocketAddr, e: &std::io::Error) {
    let refused =
        e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).is_some_and(|tls| {
            matches!(
                tls,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        });
    if refused {
        tracing::warn!(target: "keel::audit", %addr, error = %e, "refused a TLS client certificate");
    } else {
        tracing::debug!(%addr, error = %e, "TLS handshake failed");
    }
}

/// Puts [`front`] in front of the client API (see the module docs), with `headers` on every
/// answer.
pub fn client_layers(router: Router, limits: Limits, headers: crate::headers::Headers) -> Router {
    let front_state = Arc::new(Front {
        headers,
        permits: Arc::new(Semaphore::new(limits.max_requests.max(1))),
        body_timeout: limits.body_timeout,
    });
    router.layer(axum::middleware::from_fn_with_state(front_state, front))
}

/// What [`front`] needs.
struct Front {
    /// rqlite's headers.
    headers: crate::headers::Headers,
    /// How long a request body may go without sending anything.
    body_timeout: Duration,
    /// One permit per request being handled (axum applies a layer to every route separately:
    /// one semaphore for them all).
    permits: Arc<Semaphore>,
}

/// Middleware: preflights, rqlite's parameter checks, the concurrency cap and rqlite's headers
/// (see the module docs).
async fn front(State(front): State<Arc<Front>>, mut req: Request, next: Next) -> Response {
    let mut response = if req.method() == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        let checked = req.uri().query().map(crate::params::validate).transpose();
        match checked {
            Err(message) => crate::http::bad_request(message),
            Ok(pairs) => {
                req.extensions_mut().insert(crate::http::Params(pairs.unwrap_or_default()));
                match front.permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let req = req.map(|body| {
                            if body.is_end_stream() {
                                body
                            } else {
                                Body::new(TimeoutBody::new(front.body_timeout, body))
                            }
                        });
                        let response = next.run(req).await;
                        drop(permit);
                        response
                    }
                    Err(_) => overloaded(),
                }
            }
        }
    };
    front.headers.add(response.headers_mut());
    response
}

/// The answer to a request refused by the concurrency cap.
fn overloaded() -> Response {
    let mut response = crate::http::error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "the node is handling as many requests as it allows (--max-concurrent-requests); \
         retry shortly",
    );
    response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}
