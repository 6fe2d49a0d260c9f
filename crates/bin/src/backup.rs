//! Backup and load, rqlite-compatible: `GET /db/backup`, `POST /db/load`, and the commands
//! `keel backup URL FILE` and `keel restore URL FILE`.
//!
//! Everything streams, so memory stays bounded whatever the size of the database:
//!
//! - A backup is a consistent image of the database taken on its own read connection
//!   ([`sql::ImageSource`], the same copy a Raft snapshot uses; writes go on meanwhile), with
//!   Keel's internal tables removed, written to a temporary file under the data directory and
//!   streamed out in chunks: as the SQLite file itself (default; `fmt=delete` and
//!   `fmt=binary` are the same), or as a sqlite3 `.dump` text (`fmt=sql`, optionally only
//!   `tables=a,b`), optionally gzip-compressed (`compress`). `vacuum` compacts the copy first.
//!   It is taken on the leader (a follower forwards the request, streaming the answer back)
//!   unless `noleader` asks for this node's copy.
//! - A load is spooled to a temporary file, recognised by its first bytes (gzip, a SQLite
//!   file, or SQL text), and fed to the leader's write path in batches ([`sql::load`]): each
//!   batch is one write request, one Raft entry, atomic; the load as a whole is not. A SQLite
//!   file REPLACES the database (every user table, view, index and trigger is dropped first,
//!   as rqlite does); SQL text is executed as it is. Progress is logged.
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

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt as _;
use serde_json::json;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

use crate::http::{
    Node, Params, Route, bad_request, error_response, forward_request, json_response,
    route_to_leader, unavailable, write_error,
};

/// Size of the chunks a backup is streamed in.
const CHUNK: usize = 256 << 10;
/// First bytes of a SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// First bytes of a gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Log a load's progress every this many batches.
const PROGRESS_EVERY: u64 = 100;

/// The backup and load routes of the client API.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/db/backup", get(backup))
        .route("/db/load", post(load))
        .route("/boot", post(load))
        .with_state(node)
}

/// What a backup is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// The SQLite database file.
    Sqlite,
    /// sqlite3's `.dump` text.
    Sql,
}

/// A temporary file under the node's data directory, removed (with its SQLite side files) when
/// dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(node: &Node, what: &str) -> io::Result<TempFile> {
        let dir = node.data_dir.join("tmp");
        std::fs::create_dir_all(&dir)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(TempFile(dir.join(format!("{what}-{nanos}.tmp"))))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let mut p = self.0.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
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
            Route::Forward { url, .. } => return forward(&node, Method::GET, &url, req).await,
        }
    }
    let image = match TempFile::new(&node, "backup") {
        Ok(t) => t,
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let source = node.image_source.clone();
    let vacuum = p.has("vacuum");
    let path = image.0.clone();
    let started = Instant::now();
    let made = tokio::task::spawn_blocking(move || -> sql::Result<()> {
        source.write_image(&path)?;
        sql::backup::strip_internal(&path)?;
        if vacuum {
            sql::backup::vacuum(&path)?;
        }
        Ok(())
    })
    .await;
    match made {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
    let size = std::fs::metadata(&image.0).map_or(0, |m| m.len());
    tracing::info!(bytes = size, took = ?started.elapsed(), ?format, "backup image taken");

    let compress = p.has("compress");
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let image = image;
        let mut out = ChunkWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
        let res = if compress {
            let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
            write_backup(&image.0, format, tables.as_deref(), &mut gz)
                .and_then(|()| gz.finish().map_err(anyhow::Error::from))
                .and_then(|mut w| w.flush().map_err(anyhow::Error::from))
        } else {
            write_backup(&image.0, format, tables.as_deref(), &mut out)
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

/// Writes the backup of `image` in `format` to `out`.
fn write_backup(
    image: &Path,
    format: Format,
    tables: Option<&[String]>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match format {
        Format::Sqlite => {
            io::copy(&mut std::fs::File::open(image)?, out)?;
        }
        Format::Sql => sql::backup::dump_sql(image, tables, out)?,
    }
    Ok(())
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

/// What a load was given, recognised by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoadKind {
    /// A SQLite database file: replaces the database.
    Sqlite,
    /// SQL text: executed in batches.
    Text,
}

/// Decompresses `path` into a new temporary file if it is gzip; returns the file to load and
/// what it is.
fn prepare_load(
    node_tmp: TempFile,
    spare: TempFile,
    binary: bool,
) -> anyhow::Result<(TempFile, LoadKind)> {
    let mut head = [0u8; 16];
    let n = read_head(&node_tmp.0, &mut head)?;
    let file = if n >= 2 && head[..2] == GZIP_MAGIC {
        let mut gz = flate2::read::GzDecoder::new(std::fs::File::open(&node_tmp.0)?);
        let mut out = std::fs::File::create(&spare.0)?;
        io::copy(&mut gz, &mut out).context("the body looks like gzip but does not decompress")?;
        drop(node_tmp);
        spare
    } else {
        node_tmp
    };
    let n = read_head(&file.0, &mut head)?;
    if n == 0 {
        anyhow::bail!("the body is empty: send a SQLite database file or SQL text");
    }
    let kind = if n == 16 && head == *SQLITE_MAGIC { LoadKind::Sqlite } else { LoadKind::Text };
    if kind == LoadKind::Text && binary {
        anyhow::bail!(
            "the body is sent as application/octet-stream but is not a SQLite database file (it does not start with \"SQLite format 3\"); send SQL text as text/plain"
        );
    }
    Ok((file, kind))
}

fn read_head(path: &Path, head: &mut [u8; 16]) -> io::Result<usize> {
    let mut f = std::fs::File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A batch for the leader, or why the load cannot go on.
type Batch = Result<Vec<sql::Statement>, String>;

/// Reads the batches of a load on a blocking thread and sends them, at most two ahead.
fn produce_batches(
    node: Arc<Node>,
    file: TempFile,
    kind: LoadKind,
    tx: mpsc::Sender<Batch>,
) -> anyhow::Result<()> {
    match kind {
        LoadKind::Sqlite => {
            let mut load = sql::load::FileLoad::open(&file.0).map_err(|e| {
                anyhow::anyhow!("the body starts like a SQLite file but cannot be read: {e}")
            })?;
            let drops = {
                let db = node.db.lock().expect("db mutex poisoned");
                sql::load::drop_user_objects(&db)?
            };
            if !drops.is_empty() && tx.blocking_send(Ok(drops)).is_err() {
                return Ok(());
            }
            while let Some(batch) = load.next_batch()? {
                if tx.blocking_send(Ok(batch)).is_err() {
                    return Ok(());
                }
            }
        }
        LoadKind::Text => {
            let reader = io::BufReader::with_capacity(CHUNK, std::fs::File::open(&file.0)?);
            let mut load = sql::load::TextLoad::new(reader);
            while let Some(batch) = load.next_batch()? {
                if tx.blocking_send(Ok(batch)).is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// `POST /db/load` (and rqlite's `/boot`, which Keel treats the same way: the body goes
/// through the log like any load, so it works on clusters of any size).
async fn load(
    State(node): State<Arc<Node>>,
    Query(p): Query<Vec<(String, String)>>,
    req: Request,
) -> Response {
    let p = Params(p);
    let durability = match p.durability(node.durability) {
        Ok(d) => d,
        Err(r) => return r,
    };
    match route_to_leader(&node, &p, req.uri(), req.headers()).await {
        Route::Here => {}
        Route::Answer(r) => return r,
        Route::Forward { url, .. } => return forward(&node, Method::POST, &url, req).await,
    }
    let started = Instant::now();
    let binary = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/octet-stream"));
    let (spool, spare) = match (TempFile::new(&node, "load"), TempFile::new(&node, "load-gunzip")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let bytes = match spool_body(req.into_body(), &spool.0).await {
        Ok(n) => n,
        Err(e) => return bad_request(format!("reading the body failed: {e}")),
    };
    let prepared = tokio::task::spawn_blocking(move || prepare_load(spool, spare, binary)).await;
    let (file, kind) = match prepared {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return bad_request(format!("{e:#}")),
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    tracing::info!(bytes, ?kind, "loading");

    let (tx, mut rx) = mpsc::channel::<Batch>(2);
    let producer = {
        let node = node.clone();
        let tx = tx.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = produce_batches(node, file, kind, tx.clone()) {
                let _ = tx.blocking_send(Err(format!("{e:#}")));
            }
        })
    };
    drop(tx);
    let mut progress = Progress::default();
    let failure = loop {
        let Some(batch) = rx.recv().await else { break None };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => break Some(bad_request(e)),
        };
        let n = batch.len() as u64;
        let request = sql::WriteRequest {
            statements: batch,
            transaction: true,
            rows: false,
            request_id: None,
            timeout: None,
        };
        match node.leader.write(request, durability).await {
            Ok(outcome) => {
                let error = outcome.results.iter().enumerate().find_map(|(i, r)| match r {
                    sql::StatementResult::Error(m) => Some((i, m.clone())),
                    _ => None,
                });
                if let Some((i, message)) = error {
                    progress.failed = Some((progress.statements + i as u64 + 1, message));
                    break None;
                }
                progress.statements += n;
                progress.batches += 1;
                progress.lsn = outcome.lsn;
                progress.last = outcome.results.last().cloned();
                if progress.batches % PROGRESS_EVERY == 0 {
                    tracing::info!(
                        progress.batches,
                        progress.statements,
                        progress.lsn,
                        "load progress"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, progress.statements, "load stopped");
                break Some(write_error(e));
            }
        }
    };
    drop(rx);
    let _ = producer.await;
    if let Some(r) = failure {
        return r;
    }
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

/// How far a load got.
#[derive(Debug, Default)]
struct Progress {
    /// Statements applied (of the batches that succeeded).
    statements: u64,
    /// Batches applied.
    batches: u64,
    /// The log index of the last batch applied, 0 before the first.
    lsn: u64,
    /// The result of the last statement applied.
    last: Option<sql::StatementResult>,
    /// The failed statement (1-based position among the statements run) and its error; its
    /// batch was rolled back.
    failed: Option<(u64, String)>,
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
) -> Result<serde_json::Value, serde_json::Value> {
    let time = took.as_secs_f64();
    let format = sql::Format { timings, ..sql::Format::default() };
    if let Some((statement, message)) = &progress.failed {
        if kind == LoadKind::Sqlite {
            return Err(json!({
                "error": format!("statement {statement} of the load failed: {message}; that batch was rolled back"),
                "statements_applied": progress.statements,
                "lsn": progress.lsn,
            }));
        }
        return Ok(json!({
            "results": [sql::StatementResult::Error(message.clone()).to_json(&format, false)],
            "statements_applied": progress.statements,
            "failed_statement": statement,
            "batches": progress.batches,
            "bytes": bytes,
            "lsn": progress.lsn,
            "time": time,
        }));
    }
    let results = match kind {
        LoadKind::Sqlite => json!([]),
        LoadKind::Text => {
            let last = match &progress.last {
                Some(sql::StatementResult::Exec { last_insert_id, rows_affected, .. }) => {
                    sql::StatementResult::Exec {
                        last_insert_id: *last_insert_id,
                        rows_affected: *rows_affected,
                        time,
                    }
                }
                _ => sql::StatementResult::Exec { last_insert_id: 0, rows_affected: 0, time },
            };
            json!([last.to_json(&format, false)])
        }
    };
    Ok(json!({
        "results": results,
        "statements": progress.statements,
        "batches": progress.batches,
        "bytes": bytes,
        "lsn": progress.lsn,
        "time": time,
    }))
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

/// Flags of `keel backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Any node's HTTP URL, e.g. `http://127.0.0.1:4001` (the backup is taken on the leader).
    pub url: String,
    /// File to write; written under a temporary name and renamed when complete.
    pub file: PathBuf,
    /// `sqlite` (a database file) or `sql` (a text dump).
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "sql"])]
    pub format: String,
    /// gzip the backup.
    #[arg(long)]
    pub compress: bool,
    /// Back up the node at URL itself rather than the leader.
    #[arg(long)]
    pub noleader: bool,
    /// CA certificate (PEM) to trust for `https://` URLs, besides the system's.
    #[arg(long, env = "KEEL_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
}

/// Flags of `keel restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Any node's HTTP URL (the load runs on the leader).
    pub url: String,
    /// A SQLite database file (replaces the database), SQL text, or either gzipped.
    pub file: PathBuf,
    /// CA certificate (PEM) to trust for `https://` URLs, besides the system's.
    #[arg(long, env = "KEEL_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
}

fn progress_bar(total: Option<u64>, what: &str) -> indicatif::ProgressBar {
    let bar = match total {
        Some(t) => indicatif::ProgressBar::new(t).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} {bytes} {binary_bytes_per_sec}",
            )
            .expect("valid template"),
        ),
    };
    bar.set_message(what.to_string());
    bar
}

fn base_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.contains("://") { url.to_string() } else { format!("http://{url}") }
}

/// `keel backup URL FILE`: streams a backup to FILE with a progress bar.
pub async fn run_backup(args: BackupArgs) -> anyhow::Result<()> {
    let mut query = Vec::new();
    if args.format == "sql" {
        query.push("fmt=sql");
    }
    if args.compress {
        query.push("compress");
    }
    if args.noleader {
        query.push("noleader");
    }
    let url = format!("{}/db/backup?{}", base_url(&args.url), query.join("&"));
    let client = crate::tls::client_builder(args.cacert.as_deref())?.build()?;
    let resp = client.get(&url).send().await.with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        anyhow::bail!("backup failed: HTTP {status}: {body}");
    }
    let tmp = args.file.with_extension("partial");
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("creating {}", tmp.display()))?;
    let bar = progress_bar(resp.content_length(), "backup");
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("the backup stream broke off; nothing was written")?;
        file.write_all(&chunk).await?;
        bar.inc(chunk.len() as u64);
    }
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&tmp, &args.file).await?;
    bar.finish();
    eprintln!("wrote {} ({} bytes)", args.file.display(), bar.position());
    Ok(())
}

/// `keel restore URL FILE`: streams FILE to `/db/load` with a progress bar.
pub async fn run_restore(args: RestoreArgs) -> anyhow::Result<()> {
    let file = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("opening {}", args.file.display()))?;
    let size = file.metadata().await?.len();
    let mut head = [0u8; 16];
    let n = read_head(&args.file, &mut head)?;
    let content_type = if (n == 16 && head == *SQLITE_MAGIC) || (n >= 2 && head[..2] == GZIP_MAGIC)
    {
        "application/octet-stream"
    } else {
        "text/plain"
    };
    let bar = progress_bar(Some(size), "upload");
    let counter = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, CHUNK).map(move |chunk| {
        if let Ok(c) = &chunk {
            counter.inc(c.len() as u64);
        }
        chunk
    });
    let url = format!("{}/db/load", base_url(&args.url));
    let client = crate::tls::client_builder(args.cacert.as_deref())?.build()?;
    let resp = client
        .post(&url)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    bar.finish_with_message("uploaded; the leader is applying it");
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("restore failed: HTTP {status}: {body}");
    }
    if let Some(error) = load_error(&body) {
        anyhow::bail!("restore failed: {error}: {body}");
    }
    eprintln!("restored from {}: {body}", args.file.display());
    Ok(())
}

/// The error a load's 200 answer reports, if any: a statement of SQL text that failed (in
/// `results`, as rqlite reports it), or a request-level `error`.
fn load_error(body: &str) -> Option<String> {
    let answer: serde_json::Value = serde_json::from_str(body).ok()?;
    if let Some(error) = answer["error"].as_str() {
        return Some(error.to_string());
    }
    let results = answer["results"].as_array()?;
    let error = results.iter().find_map(|r| r["error"].as_str())?;
    Some(match answer["failed_statement"].as_u64() {
        Some(n) => format!(
            "statement {n} failed: {error}; its batch was rolled back, {} statements before it stay applied",
            answer["statements_applied"]
        ),
        None => error.to_string(),
    })
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

    #[test]
    fn load_errors() {
        assert_eq!(load_error(r#"{"results":[{"last_insert_id":3}],"lsn":4}"#), None);
        assert_eq!(load_error(r#"{"results":[]}"#), None);
        assert_eq!(load_error("not json"), None);
        assert_eq!(
            load_error(
                r#"{"results":[{"error":"no such table: x"}],"failed_statement":7,"statements_applied":5}"#
            )
            .as_deref(),
            Some(
                "statement 7 failed: no such table: x; its batch was rolled back, 5 statements before it stay applied"
            )
        );
        assert_eq!(
            load_error(r#"{"results":[],"error":"leader not found"}"#).as_deref(),
            Some("leader not found")
        );
    }

    #[test]
    fn urls() {
        assert_eq!(base_url("127.0.0.1:4001/"), "http://127.0.0.1:4001");
        assert_eq!(base_url("https://h:1"), "https://h:1");
    }
}
