//! Headers on every client API answer, and CORS preflights, as rqlite's `ServeHTTP` does.
//!
//! `serve::front` wraps the whole client API (outside authentication and the concurrency cap)
//! and adds them with [`Headers::add`], so that every answer, a 400, 401, 404 or 503
//! included, carries
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

use axum::http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// rqlite's version header.
pub const VERSION: HeaderName = HeaderName::from_static("x-rqlite-version");
/// rqlite's header naming the node that ran a database request (its Raft address).
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-rqlite-served-by");

/// The headers every answer gets, decided once at start.
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
    pub fn add(&self, headers: &mut HeaderMap) {
        headers.insert(VERSION, HeaderValue::from_static(env!("CARGO_PKG_VERSION")));
        if let Some(origin) = &self.allow_origin {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
        headers
            .insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("OPTIONS, GET, POST"));
        if self.auth {
            headers.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Content-Type, Authorization"),
            );
            headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        } else {
            headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Content-Type"));
        }
    }
}
