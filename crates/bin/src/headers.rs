//! Headers on every client API answer, and CORS preflights, as rqlite's `ServeHTTP` does.
//!
//! [`apply`] wraps the whole client API (outside authentication, parameter checks and the
//! concurrency cap), so that every answer, a 401 or a 404 included, carries
//!
//! * `X-RQLITE-VERSION: <Keel's version>` (rqlite's `addBuildVersion`),
//! * `Access-Control-Allow-Methods: OPTIONS, GET, POST`,
//! * `Access-Control-Allow-Headers: Content-Type` (`Content-Type, Authorization` and
//!   `Access-Control-Allow-Credentials: true` when `--auth` is on),
//! * `Access-Control-Allow-Origin: <origin>` when `--http-allow-origin` is set
//!   (rqlite's `addAllowHeaders`).
//!
//! An `OPTIONS` request to any path is a CORS preflight: answered 200 with those headers at
//! once, without credentials, as rqlite does. `X-RQLITE-SERVED-BY` (the Raft address of the
//! node that ran a database request) is set by the `/db/*` handlers, which know who ran it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// rqlite's version header.
pub const VERSION: HeaderName = HeaderName::from_static("x-rqlite-version");
/// rqlite's header naming the node that ran a database request (its Raft address).
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-rqlite-served-by");

/// The headers [`apply`] adds, decided once at start.
#[derive(Clone, Debug)]
pub struct Headers {
    /// `Access-Control-Allow-Origin`, from `--http-allow-origin`.
    allow_origin: Option<HeaderValue>,
    /// Whether `--auth` is on (credentials may be sent cross-origin).
    auth: bool,
}

impl Headers {
    /// The headers for a node with `--http-allow-origin` `allow_origin` and `--auth` `auth`.
    /// An origin that is not a valid header value is an error.
    pub fn new(allow_origin: Option<&str>, auth: bool) -> anyhow::Result<Headers> {
        let allow_origin = allow_origin
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| anyhow::anyhow!("--http-allow-origin is not a valid header value"))?;
        Ok(Headers { allow_origin, auth })
    }

    /// Adds the headers to an answer.
    fn add(&self, headers: &mut HeaderMap) {
        headers.insert(VERSION, HeaderValue::from_static(env!("CARGO_PKG_VERSION")));
        if let Some(origin) = &self.allow_origin {
            headers.insert("access-control-allow-origin", origin.clone());
        }
        headers
            .insert("access-control-allow-methods", HeaderValue::from_static("OPTIONS, GET, POST"));
        if self.auth {
            headers.insert(
                "access-control-allow-headers",
                HeaderValue::from_static("Content-Type, Authorization"),
            );
            headers.insert("access-control-allow-credentials", HeaderValue::from_static("true"));
        } else {
            headers
                .insert("access-control-allow-headers", HeaderValue::from_static("Content-Type"));
        }
    }
}

/// Middleware: answers `OPTIONS` at once, and adds the headers to every answer.
pub async fn apply(State(headers): State<Arc<Headers>>, req: Request, next: Next) -> Response {
    let mut response = if req.method() == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(req).await
    };
    headers.add(response.headers_mut());
    response
}
