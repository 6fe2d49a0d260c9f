//! The calls whose bodies stream: `GET /db/backup` ([`Download`]), `POST /db/load`, and the
//! change stream ([`ChangeStream`]). None is retried once its body has started to flow.

use std::time::Duration;

use reqwest::Method;

use super::{Client, Reply, Target, describe};
use crate::changes::EventId;
use crate::error::{Error, Result};
use crate::load::LoadAnswer;
use crate::sse::Parser;
use crate::{Lsn, headers};

use crate::sse::Event;

/// A body being downloaded (a backup), chunk by chunk.
#[derive(Debug)]
pub struct Download {
    /// The answer whose body is read.
    response: reqwest::Response,
}

impl Download {
    /// The body's length, when the server said.
    pub fn content_length(&self) -> Option<u64> {
        self.response.content_length()
    }

    /// The next chunk; `None` at the end. Errors: the stream broke off.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>> {
        let url = self.response.url().to_string();
        self.response.chunk().await.map_err(|e| Error::Unexpected {
            url,
            message: format!("the stream broke off: {}", describe(&e)),
        })
    }
}

/// The change stream from one node, event by event.
#[derive(Debug)]
pub struct ChangeStream {
    /// The answer whose body is read.
    response: reqwest::Response,
    /// Bytes in, events out.
    parser: Parser,
    /// Events parsed and not yet taken.
    ready: std::collections::VecDeque<Event>,
}

impl ChangeStream {
    /// The next event (`message` for a change, `caught-up`, `end`), waiting up to `silence`
    /// for data or a keep-alive. `Ok(None)`: the server ended the stream. Errors: the
    /// connection broke, or nothing came for `silence`.
    pub async fn next_event(&mut self, silence: Duration) -> Result<Option<Event>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            let url = self.response.url().to_string();
            let broke = |message: String| Error::Unexpected { url: url.clone(), message };
            match tokio::time::timeout(silence, self.response.chunk()).await {
                Err(_) => return Err(broke(format!("no data or keep-alive for {silence:?}"))),
                Ok(Err(e)) => return Err(broke(format!("connection lost: {}", describe(&e)))),
                Ok(Ok(None)) => return Ok(None),
                Ok(Ok(Some(bytes))) => self.ready.extend(self.parser.feed(&bytes)),
            }
        }
    }
}

impl Client {
    /// Starts a backup (`GET /db/backup`) with `params` such as `fmt=sql`, `compress`,
    /// `noleader` (`None` values are flags). On the leader, unless `noleader` asks for the
    /// node in use's copy.
    pub async fn backup(&self, params: &[(&str, Option<&str>)]) -> Result<Download> {
        let noleader = params.iter().any(|(k, _)| *k == "noleader");
        let target = if noleader { Target::Any } else { Target::Leader };
        let base = self.pick(target).await;
        let mut url = reqwest::Url::parse(&format!("{base}/db/backup"))
            .map_err(|e| Error::Config(e.to_string()))?;
        for (key, value) in params {
            match value {
                Some(v) => url.query_pairs_mut().append_pair(key, v),
                None => url.query_pairs_mut().append_key_only(key),
            };
        }
        let response = self.open(Method::GET, url.as_str(), None).await?;
        Ok(Download { response })
    }

    /// Loads a SQLite file or SQL text, optionally gzipped (`POST /db/load`), on the leader.
    /// `content_type` is `application/octet-stream` for a SQLite file (or gzip), `text/plain`
    /// for SQL. A 200 answer may report a failed statement: see [`LoadAnswer::failure`].
    pub async fn load(
        &self,
        body: reqwest::Body,
        content_type: &str,
        content_length: Option<u64>,
    ) -> Result<LoadAnswer> {
        let base = self.pick(Target::Leader).await;
        let url = format!("{base}/db/load");
        let mut request = self
            .http_request(Method::POST, &url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        if let Some(length) = content_length {
            request = request.header(reqwest::header::CONTENT_LENGTH, length);
        }
        let response = request.send().await.map_err(|e| Error::Unreachable(describe(&e)))?;
        let status = response.status();
        let served_by = None;
        let body = response.bytes().await.map_err(|e| Error::Unreachable(describe(&e)))?;
        Reply { url, status, served_by, body: body.to_vec() }.json()
    }

    /// Opens the change stream of the node in use, from `from` (default: from now on), or
    /// after the event `resume` (sent as `Last-Event-ID`, which wins). Errors: the node's
    /// refusal (400 for a bad start, 410 when the start was compacted away), or no answer.
    pub async fn changes(
        &self,
        from: Option<Lsn>,
        resume: Option<EventId>,
    ) -> Result<ChangeStream> {
        let base = self.pick(Target::Any).await;
        let url = match from {
            Some(from) if resume.is_none() => format!("{base}/db/changes?from={from}"),
            _ => format!("{base}/db/changes"),
        };
        let response = self.open(Method::GET, &url, resume.map(|id| id.to_string())).await?;
        Ok(ChangeStream { response, parser: Parser::default(), ready: Default::default() })
    }

    /// Sends one request whose answer streams; a refusal is read whole and returned as one.
    async fn open(
        &self,
        method: Method,
        url: &str,
        last_event_id: Option<String>,
    ) -> Result<reqwest::Response> {
        let mut request = self.http_request(method, url);
        if let Some(id) = last_event_id {
            request = request.header(headers::LAST_EVENT_ID, id);
        }
        let response = request.send().await.map_err(|e| Error::Unreachable(describe(&e)))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        let reply = Reply { url: url.to_string(), status, served_by: None, body };
        Err(reply.checked().err().unwrap_or_else(|| Error::Unexpected {
            url: url.to_string(),
            message: format!("HTTP {status}"),
        }))
    }
}
