//! Backup and load over HTTP, rqlite-compatible: `GET /db/backup` and `POST /db/load` (and
//! rqlite's `/boot`). The node takes the image and runs the load ([`node::backup`]); this
//! module streams the image out and spools the body in, so memory stays bounded whatever the
//! size of the database.
//!
//! - A backup is streamed out in chunks: as the SQLite file itself (default; `fmt=delete` and
//!   `fmt=binary` are the same), or as a sqlite3 `.dump` text (`fmt=sql`, optionally only
//!   `tables=a,b`), optionally gzip-compressed (`compress`). `vacuum` compacts the copy first.
//!   It is taken on the leader (a follower forwards the request, streaming the answer back)
//!   unless `noleader` asks for this node's copy.
//! - A load is spooled to a temporary file and handed to the node.
//!
//! The answer has rqlite's shape (see [`load_answer`]): `{"results": []}` for a SQLite file;
//! for SQL text, `/db/execute`'s answer with one result, the counters the text's last statement
//! left or the error that stopped it (rqlite runs the whole text as one statement). Keel adds
//! its counters beside `results`.
//!
//! IMPLEMENTATION CAVEATS: a load is not atomic beyond one batch: if it fails half way (a bad
//! statement, a lost leadership), the batches before stay applied and the answer says how many
//! statements were; loading again from the start is safe for a SQLite file (it replaces). A
//! load holds no lock against concurrent writes from other clients.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt as _;
use keel_api::ErrorAnswer;
use keel_api::load::LoadAnswer;
use node::backup::{Format, LoadKind, Progress, TempFile, write_backup};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

use super::{
    Node, Params, Route, bad_request, error_response, forward_request, json_response, node_error,
    route_to_leader, unavailable,
};

/// Size of the chunks a backup is streamed in.
const CHUNK: usize = 256 << 10;

/// The backup and load routes of the client API.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/db/backup", get(backup))
        .route("/db/load", post(load))
        .route("/boot", post(load))
        .with_state(node)
}

/// Streams the leader's answer to a forwarded request back to the client.
async fn forward(node: &Node, method: Method, url: &str, req: Request) -> Response {
    let headers = req.headers().clone();
    let body = reqwest::Body::wrap_stream(req.into_body().into_data_stream());
    match forward_request(node, &method, url, &headers).body(body).send().await {
        Ok(resp) => {
            let mut r = Response::builder().status(resp.status());
            for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH, header::LOCATION] {
                if let Some(v) = resp.headers().get(&name) {
                    r = r.header(name, v.clone());
                }
            }
            r.body(Body::from_stream(resp.bytes_stream()))
                .unwrap_or_else(|e| error_response(StatusCode::INTERNAL_SERVER_ERROR, e))
        }
        Err(e) => unavailable(format!("forwarding to the leader failed: {e}")),
    }
}

/// `GET /db/backup`.
async fn backup(
    State(node): State<Arc<Node>>,
    Query(p): Query<Vec<(String, String)>>,
    req: Request,
) -> Response {
    let p = Params(p);
    let format = match p.get("fmt") {
        None | Some("" | "binary" | "delete") => Format::Sqlite,
        Some("sql") => Format::Sql,
        Some(other) => {
            return bad_request(format!("unknown backup format '{other}' (use sql or binary)"));
        }
    };
    let tables: Option<Vec<String>> = p.get("tables").map(|t| {
        t.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect()
    });
    if tables.is_some() && format != Format::Sql {
        return bad_request("tables= is only supported with fmt=sql");
    }
    if !p.has("noleader") {
        match route_to_leader(&node, &p, req.uri(), req.headers()).await {
            Route::Here => {}
            Route::Answer(r) => return r,
            Route::Forward(way) => return forward(&node, Method::GET, &way.url, req).await,
        }
    }
    let image = match node.backup_image(p.has("vacuum")).await {
        Ok(image) => image,
        Err(e) => return node_error(e, false),
    };

    let compress = p.has("compress");
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let image = image;
        let mut out = ChunkWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
        let res = if compress {
            let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
            write_backup(image.path(), format, tables.as_deref(), &mut gz)
                .and_then(|()| gz.finish().map_err(anyhow::Error::from))
                .and_then(|mut w| w.flush().map_err(anyhow::Error::from))
        } else {
            write_backup(image.path(), format, tables.as_deref(), &mut out)
                .and_then(|()| out.flush().map_err(anyhow::Error::from))
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "backup stream failed");
            let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
        }
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let content_type = match (format, compress) {
        (Format::Sql, false) => "application/sql",
        _ => "application/octet-stream",
    };
    let mut r = Body::from_stream(stream).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A `Write` that sends what is written in chunks over a channel, waiting while the channel is
/// full (so a slow client slows the producer instead of growing a buffer). Fails once the
/// receiver is gone (the client went away).
struct ChunkWriter {
    /// Where chunks go.
    tx: mpsc::Sender<io::Result<Bytes>>,
    /// The chunk being filled.
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// `POST /db/load` (and rqlite's `/boot`, which Keel treats the same way: the body goes
/// through the log like any load, so it works on clusters of any size).
async fn load(
    State(node): State<Arc<Node>>,
    Query(p): Query<Vec<(String, String)>>,
    req: Request,
) -> Response {
    let p = Params(p);
    let durability = match p.durability(node.durability()) {
        Ok(d) => d,
        Err(r) => return r,
    };
    match route_to_leader(&node, &p, req.uri(), req.headers()).await {
        Route::Here => {}
        Route::Answer(r) => return r,
        Route::Forward(way) => return forward(&node, Method::POST, &way.url, req).await,
    }
    let started = Instant::now();
    let binary = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/octet-stream"));
    let spool = match TempFile::new(&node, "load") {
        Ok(t) => t,
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let bytes = match spool_body(req.into_body(), spool.path()).await {
        Ok(n) => n,
        Err(e) => return bad_request(format!("reading the body failed: {e}")),
    };
    let (kind, progress) = match node.load(spool, binary, durability).await {
        Ok(done) => done,
        Err(e) => return node_error(e, false),
    };
    let answer = load_answer(&progress, kind, bytes, started.elapsed(), p.has("timings"));
    match &progress.failed {
        Some((statement, error)) => {
            tracing::warn!(statement, error = %error, applied = progress.statements, "load failed");
        }
        None => tracing::info!(
            progress.statements,
            progress.batches,
            progress.lsn,
            took = ?started.elapsed(),
            "load finished"
        ),
    }
    answer.map_or_else(
        |body| json_response(StatusCode::BAD_REQUEST, &body, false),
        |body| json_response(StatusCode::OK, &body, p.has("pretty")),
    )
}

/// The answer to a load that ran to its end or to a failing statement: `Ok` for 200, `Err` for
/// 400.
///
/// rqlite (`http/service.go`, `handleLoad`) answers a SQLite file with `{"results": []}`, and runs
/// SQL text as ONE statement of an execute request (`RollbackOnError`), so its answer is
/// `/db/execute`'s with one result: the counters the text's last statement left, or the error
/// that stopped it, with 200 either way. Keel answers the same `results` and adds its counters:
/// `statements`, `batches`, `bytes`, `lsn`, `time`; after a failure `statements_applied` (the
/// statements before the failing one's batch, which stay applied) and `failed_statement`.
/// A failing statement of a SQLite file's load (rqlite's cannot fail that way) answers 400 with
/// Keel's `error`.
fn load_answer(
    progress: &Progress,
    kind: LoadKind,
    bytes: u64,
    took: std::time::Duration,
    timings: bool,
) -> Result<LoadAnswer, ErrorAnswer> {
    let time = took.as_secs_f64();
    let answer = LoadAnswer {
        batches: Some(progress.batches),
        bytes: Some(bytes),
        lsn: Some(progress.lsn),
        time: Some(time),
        ..LoadAnswer::default()
    };
    if let Some((statement, message)) = &progress.failed {
        if kind == LoadKind::Sqlite {
            return Err(ErrorAnswer {
                statements_applied: Some(progress.statements),
                lsn: Some(progress.lsn),
                ..ErrorAnswer::new(format!(
                    "statement {statement} of the load failed: {message}; that batch was rolled back"
                ))
            });
        }
        return Ok(LoadAnswer {
            results: vec![keel_api::StatementResult::error(message.clone())],
            statements_applied: Some(progress.statements),
            failed_statement: Some(*statement),
            ..answer
        });
    }
    let results = match kind {
        LoadKind::Sqlite => Vec::new(),
        LoadKind::Text => {
            let (last_insert_id, rows_affected) = match &progress.last {
                Some(sql::StatementResult::Exec { last_insert_id, rows_affected, .. }) => {
                    (*last_insert_id, *rows_affected)
                }
                _ => (0, 0),
            };
            let last = keel_api::StatementResult::exec(last_insert_id, rows_affected);
            vec![if timings { last.with_time(time) } else { last }]
        }
    };
    Ok(LoadAnswer { results, statements: Some(progress.statements), ..answer })
}

/// Writes a request body to `path` chunk by chunk; returns its size.
async fn spool_body(body: Body, path: &Path) -> anyhow::Result<u64> {
    let mut file = tokio::fs::File::create(path).await?;
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        n += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_writer_sends_full_chunks_then_the_rest() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut w = ChunkWriter { tx, buf: Vec::new() };
        let data = vec![7u8; CHUNK * 2 + 10];
        w.write_all(&data).unwrap();
        w.flush().unwrap();
        drop(w);
        let mut sizes = Vec::new();
        while let Ok(c) = rx.try_recv() {
            sizes.push(c.unwrap().len());
        }
        assert_eq!(sizes, vec![CHUNK, CHUNK, 10]);
    }

    #[test]
    fn chunk_writer_fails_when_the_client_is_gone() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut w = ChunkWriter { tx, buf: Vec::new() };
        let err = w.write_all(&vec![0u8; CHUNK]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
