//! `GET /db/changes?from=<lsn>`: the committed row changes of the database as server-sent
//! events, from the node's change stream ([`node::changes`]).
//!
//! The start comes from `Last-Event-ID` (a reconnecting client) or `?from=` (default: the next
//! entry this node will apply, i.e. only new changes). A start the node has compacted away is
//! answered 410 with the first LSN it still holds, before any event; a malformed one 400.
//! Each event's SSE `id` is its [`EventId`], so an EventSource resumes exactly where it left
//! off; keep-alive comments every [`KEEP_ALIVE`] keep idle connections open through proxies.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use node::changes::{EventId, Position, StartError};
use serde_json::json;

use super::{Node, Params, bad_request, error_response, json_response};

/// How often an idle stream sends a keep-alive comment.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// The change stream's routes.
pub fn router(node: Arc<Node>) -> Router {
    Router::new().route("/db/changes", get(stream)).with_state(node)
}

/// Works out where a stream starts: `Last-Event-ID` wins over `from` (an EventSource
/// reconnects to the same URL, `from` included, with the header added); neither means the next
/// entry after `applied`.
fn start(params: &Params, headers: &HeaderMap, applied: wal::Lsn) -> Result<Position, String> {
    if let Some(id) = headers.get("last-event-id") {
        let id = id.to_str().map_err(|_| "Last-Event-ID is not text".to_string())?;
        let id: EventId = id.parse()?;
        return Position::after(id).ok_or_else(|| format!("Last-Event-ID {id} is out of range"));
    }
    match params.get("from") {
        None => Ok(Position { lsn: applied + 1, skip: 0 }),
        Some(from) => match from.trim().parse::<u64>() {
            Ok(lsn) => Ok(Position { lsn, skip: 0 }),
            Err(_) => Err(format!("from must be a log position (an integer >= 0), not {from:?}")),
        },
    }
}

/// `GET /db/changes`: see the module docs.
async fn stream(
    State(node): State<Arc<Node>>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let params = Params(params);
    let position = match start(&params, &headers, node.applied()) {
        Ok(position) => position,
        Err(message) => return bad_request(message),
    };
    let changes = match node.changes(position).await {
        Ok(changes) => changes,
        Err(StartError::Gone(gone)) => return gone_answer(position.lsn, gone.first),
        Err(StartError::Log(e)) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let events = futures::stream::unfold(changes, |mut changes| async move {
        changes.next_event().await.map(|event| (Ok::<_, Infallible>(sse(event)), changes))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}

/// A change stream event as an SSE event.
fn sse(event: node::changes::Event) -> Event {
    fn data(value: &impl serde::Serialize) -> String {
        serde_json::to_string(value).expect("change stream events serialize to JSON")
    }
    match event {
        node::changes::Event::Change(id, change) => {
            Event::default().id(id.to_string()).data(data(&change))
        }
        node::changes::Event::CaughtUp(caught_up) => {
            Event::default().event("caught-up").id(caught_up.lsn.to_string()).data(data(&caught_up))
        }
        node::changes::Event::End(end) => Event::default().event("end").data(data(&end)),
    }
}

/// The 410 answer for a start older than the log holds.
fn gone_answer(from: wal::Lsn, first: wal::Lsn) -> Response {
    json_response(
        StatusCode::GONE,
        &json!({
            "error": format!(
                "changes from lsn {from} are no longer in this node's log (compacted into a \
                 snapshot); the first lsn it can stream is {first}"
            ),
            "first_lsn": first,
        }),
        false,
    )
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn the_start_prefers_last_event_id_over_from() {
        let params = |from: Option<&str>| {
            Params(from.map(|f| vec![("from".to_string(), f.to_string())]).unwrap_or_default())
        };
        let none = HeaderMap::new();
        let mut resumed = HeaderMap::new();
        resumed.insert("last-event-id", HeaderValue::from_static("9:2"));

        assert_eq!(start(&params(None), &none, 41), Ok(Position { lsn: 42, skip: 0 }));
        assert_eq!(start(&params(Some("5")), &none, 41), Ok(Position { lsn: 5, skip: 0 }));
        assert_eq!(start(&params(Some("5")), &resumed, 41), Ok(Position { lsn: 9, skip: 3 }));
        for bad in ["", "abc", "-3", "1e3", "99999999999999999999"] {
            assert!(start(&params(Some(bad)), &none, 41).is_err(), "{bad:?}");
        }
        let mut garbage = HeaderMap::new();
        garbage.insert("last-event-id", HeaderValue::from_static("soon"));
        assert!(start(&params(None), &garbage, 41).is_err());
    }
}
