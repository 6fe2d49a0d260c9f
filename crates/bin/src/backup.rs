//! `keel backup URL FILE` and `keel restore URL FILE`: stream a backup of a running cluster to
//! a file, or a file into it (`/db/backup` and `/db/load`, [`crate::http::backup`]), with a
//! progress bar. `keel restore URL --from TARGET` takes the file from object storage instead
//! ([`crate::backup_to`]).
//!
//! Both go through [`keel_api::Client`]: [`write_backup`] through [`keel_api::Client::backup`]
//! (on the leader the client finds, or with `noleader` on the node given) and [`restore`]
//! through [`keel_api::Client::load`] (on the leader). `keel shell`'s `.backup` and `.restore`
//! call the same two functions with the shell's client, and its `.dump` without a file
//! [`copy`]s the SQL text into the shell's output. Neither is retried once its body has started
//! to flow; a backup is written under a temporary name and renamed when complete.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use futures::StreamExt as _;
use keel_api::Download;
use node::backup::{GZIP_MAGIC, SQLITE_MAGIC, read_head};

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
    #[arg(required_unless_present = "from", conflicts_with = "from")]
    pub file: Option<PathBuf>,
    /// Restore the newest backup in this object storage target instead of a file
    /// (`s3://bucket/prefix`, `gs://…`, `az://…`, `file:///dir`; as `keel serve --backup-to`).
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,
    /// With `--from`: the newest backup at or before this log index, or taken at or before
    /// this time (RFC 3339, e.g. `2026-01-02T03:04:05Z`).
    #[arg(long, value_name = "LSN|TIME", requires = "from", value_parser = crate::backup_to::parse_at)]
    pub at: Option<crate::backup_to::At>,
    /// CA certificate (PEM) to trust for `https://` URLs, besides the system's.
    #[arg(long, env = "KEEL_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
}

pub(crate) fn progress_bar(total: Option<u64>, what: &str) -> indicatif::ProgressBar {
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

/// A client of the node at `url`, trusting `cacert` (see [`crate::tls::client_builder`]).
fn client(url: &str, cacert: Option<&Path>) -> anyhow::Result<keel_api::Client> {
    let client =
        keel_api::Client::builder([url]).http(crate::tls::client_builder(cacert)?).build()?;
    Ok(client)
}

/// A failed call in these commands' words: a refusal as `HTTP <status>: <body>`.
pub(crate) fn failed(what: &str, e: keel_api::Error) -> anyhow::Error {
    match (e.status(), e.answer()) {
        (Some(status), Some(answer)) => {
            let status = reqwest::StatusCode::from_u16(status)
                .map_or_else(|_| status.to_string(), |s| s.to_string());
            let body = serde_json::to_string(answer).unwrap_or_else(|_| answer.error.clone());
            anyhow::anyhow!("{what} failed: HTTP {status}: {body}")
        }
        _ => anyhow::Error::new(e).context(format!("{what} failed")),
    }
}

/// `keel backup URL FILE`: streams a backup to FILE with a progress bar.
pub async fn run_backup(args: BackupArgs) -> anyhow::Result<()> {
    let mut params = Vec::new();
    if args.format == "sql" {
        params.push(("fmt", Some("sql")));
    }
    if args.compress {
        params.push(("compress", None));
    }
    if args.noleader {
        params.push(("noleader", None));
    }
    let client = client(&args.url, args.cacert.as_deref())?;
    write_backup(&client, &params, &args.file).await
}

/// Streams a backup (`/db/backup` with `params`, such as `fmt=sql`) to `file`, under a
/// temporary name (`.partial`) until it is complete and synced.
pub async fn write_backup(
    client: &keel_api::Client,
    params: &[(&str, Option<&str>)],
    file: &Path,
) -> anyhow::Result<()> {
    let mut download = start_backup(client, params).await?;
    let tmp = file.with_extension("partial");
    let mut out =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let bar = progress_bar(download.content_length(), "backup");
    copy(&mut download, &mut bar.wrap_write(&mut out))
        .await
        .with_context(|| format!("{} was not written", file.display()))?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&tmp, file)?;
    bar.finish();
    eprintln!("wrote {} ({} bytes)", file.display(), bar.position());
    Ok(())
}

/// Starts a backup (`/db/backup` with `params`): on the leader the client finds, unless
/// `noleader` is among them. Errors: the backup was refused, or no node answered.
pub async fn start_backup(
    client: &keel_api::Client,
    params: &[(&str, Option<&str>)],
) -> anyhow::Result<Download> {
    client.backup(params).await.map_err(|e| failed("backup", e))
}

/// Writes the rest of `download` to `out` as it arrives (`keel shell`'s `.dump` copies into
/// its output this way). The writes block: the commands that call this do nothing else
/// meanwhile. Errors: the stream broke off (what came before is written), or `out` refused a
/// write.
pub async fn copy(download: &mut Download, out: &mut impl Write) -> anyhow::Result<()> {
    while let Some(chunk) = download.chunk().await.context("the backup stream broke off")? {
        out.write_all(&chunk).context("writing the backup")?;
    }
    Ok(())
}

/// `keel restore URL FILE`: streams FILE to `/db/load` with a progress bar.
pub async fn run_restore(args: RestoreArgs) -> anyhow::Result<()> {
    let client = client(&args.url, args.cacert.as_deref())?;
    match (&args.from, &args.file) {
        (Some(from), _) => crate::backup_to::restore_from(&client, from, args.at).await,
        (None, Some(file)) => restore(&client, file).await,
        (None, None) => anyhow::bail!("give a FILE or --from URL"),
    }
}

/// Streams `path` to `/db/load` on the leader with a progress bar, as a SQLite file (or gzip)
/// or as SQL text, by its first bytes. Errors: the load was refused, or a statement failed.
pub async fn restore(client: &keel_api::Client, path: &Path) -> anyhow::Result<()> {
    let file =
        tokio::fs::File::open(path).await.with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().await?.len();
    let mut head = [0u8; 16];
    let n = read_head(path, &mut head)?;
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
    let body = reqwest::Body::wrap_stream(stream);
    let answer = client.load(body, content_type, Some(size)).await;
    bar.finish_with_message("uploaded; the leader is applying it");
    let answer = answer.map_err(|e| failed("restore", e))?;
    let text = serde_json::to_string(&answer)?;
    if let Some(error) = answer.failure() {
        anyhow::bail!("restore failed: {error}: {text}");
    }
    eprintln!("restored from {}: {text}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_status_and_body() {
        let refused = keel_api::Error::Refused {
            status: 400,
            answer: Box::new(keel_api::ErrorAnswer::new("tables= is only supported with fmt=sql")),
        };
        assert_eq!(
            failed("backup", refused).to_string(),
            r#"backup failed: HTTP 400 Bad Request: {"error":"tables= is only supported with fmt=sql"}"#
        );
        let unreachable = keel_api::Error::Unreachable("http://h:1: Connection refused".into());
        assert_eq!(
            format!("{:#}", failed("restore", unreachable)),
            "restore failed: no node answered: http://h:1: Connection refused"
        );
    }

    #[test]
    fn urls_get_a_scheme() {
        let c = client("127.0.0.1:4001/", None).unwrap();
        assert_eq!(c.nodes_known(), ["http://127.0.0.1:4001"]);
        assert!(client("ftp://h", None).is_err());
    }
}
