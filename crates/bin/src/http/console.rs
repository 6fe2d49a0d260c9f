//! The web console served by every node at `/console`: the cluster at a glance (roles, terms,
//! applied indexes, replication lag with a live chart, who leads and since when), operator
//! buttons (promote, add a learner, remove) and a SQL editor.
//!
//! # Shape
//!
//! The console is three static files in `crates/bin/console/` (`index.html`, `console.js`,
//! `console.css`): plain HTML, CSS and JavaScript without a build step, embedded into the binary
//! with `include_str!` so `keel` stays one file. [`router`] serves them at `/console`,
//! `/console/console.js` and `/console/console.css`, with an `ETag` and `Cache-Control:
//! no-cache` (the browser revalidates, and gets `304 Not Modified` while the binary is the
//! same, so an upgrade is picked up at the next load), and a Content-Security-Policy that
//! allows only the console's own script and style.
//!
//! Everything the page shows comes from the JSON API every client uses: `/nodes` for the
//! members and whether this node reaches them, each member's `/status` for its role, term and
//! applied index, and the leader's `/status` (its `replication` subtree) for every member's
//! lag. Operator buttons call `/admin/promote`, `/admin/membership` and `/remove`; the SQL
//! editor calls `/db/request` with the chosen `level` and `durability`.
//!
//! A browser may only read answers from the origin that served the page, so the page cannot
//! ask another node for its `/status` directly. [`peer_status`] relays it:
//! `GET /console/peer/{id}/status` fetches member `id`'s own `/status` and answers it unchanged.
//! Only members of the cluster can be named, so the relay cannot be pointed at an arbitrary
//! address.
//!
//! When the node that served the page stops answering, the page says so, lists the other
//! members' consoles and, unless told not to, moves to the first one that answers (see
//! `console.js`).
//!
//! # What it deliberately does not do
//!
//! * No authentication of its own: requests carry whatever credentials the browser has for this
//!   origin, and a 401 or 403 answer is shown as such, so an `admin` permission can be checked
//!   by the endpoints themselves when it exists.
//! * No history across page loads: the lag chart and "leader since" start when the page
//!   opens (the page says "seen since" until it has witnessed a change of leader).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::http::{Node, error_response};

/// How long the relay waits for a member's `/status`: the page polls every second, and a
/// member that takes longer is shown as not answering.
const PEER_TIMEOUT: Duration = Duration::from_millis(900);

/// The page's Content-Security-Policy: only the console's own script and style run;
/// `connect-src` admits other members' origins because the page probes them (`no-cors`) to
/// find a live node when its own stops answering.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self' http: https:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file and how it is served.
struct Asset {
    /// The file's contents.
    body: &'static str,
    /// Its `Content-Type`.
    content_type: &'static str,
    /// Its entity tag, a hash of the contents: changes when the binary's copy changes.
    etag: LazyLock<HeaderValue>,
}

impl Asset {
    /// The answer to a `GET`: `304 Not Modified` when the browser's copy is current.
    fn serve(&self, headers: &HeaderMap) -> Response {
        let etag = &*self.etag;
        let fresh = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        let common = [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::ETAG, etag.clone()),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
        ];
        if fresh {
            return (StatusCode::NOT_MODIFIED, common).into_response();
        }
        let content_type = [(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type))];
        (StatusCode::OK, common, content_type, self.body).into_response()
    }
}

/// A strong entity tag for `body`. `DefaultHasher` may differ between Rust releases, which
/// only means a new binary's tags differ from an old one's: exactly when they should.
fn etag(body: &str) -> HeaderValue {
    let mut hasher = DefaultHasher::new();
    body.hash(&mut hasher);
    HeaderValue::from_str(&format!("\"{:016x}\"", hasher.finish()))
        .expect("a quoted hex string is a valid header value")
}

/// The page.
static INDEX: Asset = Asset {
    body: include_str!("../../console/index.html"),
    content_type: "text/html; charset=utf-8",
    etag: LazyLock::new(|| etag(INDEX.body)),
};

/// The script.
static SCRIPT: Asset = Asset {
    body: include_str!("../../console/console.js"),
    content_type: "text/javascript; charset=utf-8",
    etag: LazyLock::new(|| etag(SCRIPT.body)),
};

/// The style sheet.
static STYLE: Asset = Asset {
    body: include_str!("../../console/console.css"),
    content_type: "text/css; charset=utf-8",
    etag: LazyLock::new(|| etag(STYLE.body)),
};

/// The console's routes, merged into the client API router.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/console", get(|h: HeaderMap| async move { INDEX.serve(&h) }))
        .route("/console/", get(|| async { Redirect::permanent("/console") }))
        .route("/console/console.js", get(|h: HeaderMap| async move { SCRIPT.serve(&h) }))
        .route("/console/console.css", get(|h: HeaderMap| async move { STYLE.serve(&h) }))
        .route("/console/peer/{id}/status", get(peer_status))
        .with_state(node)
}

/// `GET /console/peer/{id}/status`: member `id`'s own `/status`, relayed unchanged (status code
/// and body) and asked with the caller's `Authorization`; 404 for a node that is not a member,
/// 502 when the member does not answer.
async fn peer_status(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(id) = id.parse::<raft::NodeId>().ok().filter(|&id| id > 0) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a node id (a positive number)"),
        );
    };
    let Some(member) = node.member(id) else {
        return error_response(
            StatusCode::NOT_FOUND,
            format!("node {id} is not a member of the cluster"),
        );
    };
    let url = format!("{}://{}/status", node.peers().api_scheme, member.node.http_addr);
    let mut relay = node.peers().api.get(&url).timeout(PEER_TIMEOUT);
    // The member decides what the caller may see, as if asked directly.
    if let Some(credentials) = headers.get(header::AUTHORIZATION) {
        relay = relay.header(header::AUTHORIZATION, credentials.clone());
    }
    let answer = relay.send().await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => return not_answering(id, &e),
    };
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    match answer.bytes().await {
        Ok(body) => {
            let mut r = (status, body).into_response();
            if let Some(ct) = content_type {
                r.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => not_answering(id, &e),
    }
}

/// The relay's answer when member `id` cannot be reached.
fn not_answering(id: raft::NodeId, e: &reqwest::Error) -> Response {
    let why = if e.is_timeout() { "timed out".to_string() } else { crate::admin::root_cause(e) };
    error_response(StatusCode::BAD_GATEWAY, format!("node {id} did not answer: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_revalidated_by_etag() {
        let first = SCRIPT.serve(&HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[header::ETAG].clone();
        assert_eq!(first.headers()[header::CACHE_CONTROL], "no-cache");
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, tag);
        assert_eq!(SCRIPT.serve(&headers).status(), StatusCode::NOT_MODIFIED);
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(SCRIPT.serve(&headers).status(), StatusCode::OK);
    }

    #[test]
    fn each_asset_has_its_own_tag() {
        assert_ne!(*INDEX.etag, *SCRIPT.etag);
        assert_ne!(*SCRIPT.etag, *STYLE.etag);
    }
}
