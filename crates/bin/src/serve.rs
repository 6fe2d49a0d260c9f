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
//! * Nagle's algorithm off (answers are small and latency-bound).
//!
//! [`client_layers`] wraps the client API with an idle timeout on request bodies
//! ([`Limits::body_timeout`]: a body that stops arriving ends the request with 408) and a cap
//! on requests being handled at once ([`Limits::max_requests`]; past it a request is answered
//! at once with 503 and `Retry-After`, rather than queued without bound).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;

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
/// header limits. Never returns.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            unreachable!("the connection semaphore is never closed")
        };
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
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
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// Wraps the client API in the body idle timeout and the concurrency cap (see the module docs).
pub fn client_layers(router: Router, limits: Limits) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(overloaded))
            .load_shed()
            // axum applies a layer to every route separately: one semaphore for them all.
            .layer(GlobalConcurrencyLimitLayer::new(limits.max_requests.max(1)))
            .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(limits.body_timeout)),
    )
}

/// The answer to a request refused by the concurrency cap.
async fn overloaded(error: tower::BoxError) -> Response {
    if error.is::<tower::load_shed::error::Overloaded>() {
        let mut response = crate::http::error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is handling as many requests as it allows (--max-concurrent-requests); \
             retry shortly",
        );
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return response;
    }
    (StatusCode::INTERNAL_SERVER_ERROR, format!("unhandled internal error: {error}"))
        .into_response()
}
