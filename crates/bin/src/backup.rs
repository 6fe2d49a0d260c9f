//! `keel backup URL FILE` and `keel restore URL FILE`: stream a backup of a running cluster to
//! a file, or a file into it (`/db/backup` and `/db/load`, [`crate::http::backup`]), with a
//! progress bar.

use std::path::PathBuf;

use anyhow::Context as _;
use axum::http::header;
use futures::StreamExt as _;
use node::backup::{GZIP_MAGIC, SQLITE_MAGIC, read_head};
use tokio::io::AsyncWriteExt as _;

/// Size of the chunks a restore is streamed in.
const CHUNK: usize = 256 << 10;

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
