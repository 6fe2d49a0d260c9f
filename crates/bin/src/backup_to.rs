//! Backups to object storage: `keel serve --backup-to URL` uploads the database on a schedule,
//! `keel serve --restore-from URL` restores the newest backup into an empty node that
//! bootstraps a new cluster, and `keel restore --from URL [--at LSN|TIME]` loads one into a
//! running cluster.
//!
//! - [`Target`]: where backups go, from a URL: `s3://bucket/prefix` (any S3-compatible service),
//!   `gs://bucket/prefix`, `az://container/prefix` or `file:///dir`, through the `object_store`
//!   crate. Endpoints, regions and credentials come from each provider's usual environment
//!   variables (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`,
//!   `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, …; the builders' `from_env`).
//! - Each backup is one object, `<prefix>/keel-<UTC time>-lsn<N>.sqlite[.gz]`: the image
//!   `GET /db/backup` serves ([`node::Node::backup_image_at`]: a consistent copy without Keel's
//!   tables), named after the log index it holds and when it was taken, so names sort by age
//!   and a restore can pick one by either.
//! - [`schedule`]: every `--backup-interval`, on the leader only, an upload unless nothing was
//!   applied since the last one (the applied index is compared with the newest uploaded lsn,
//!   read back from the target when this node starts leading). The image is taken off the write
//!   path and streamed in parts ([`object_store::buffered::BufWriter`], multipart above one part):
//!   memory stays flat whatever the database size. A failed attempt is counted and retried
//!   with backoff, never blocking writes. After an upload, objects beyond `--backup-retain` are
//!   deleted, oldest first. Outcomes go to [`node::backup_report`] (`/status`, `/metrics`).
//! - [`restore_on_boot`] and [`restore_from`]: the newest backup (or the newest at or before
//!   `--at`) is fed to the node's load path (`/db/load`: [`node::Node::load`]), which replaces
//!   the database through the log, as `keel restore FILE` does.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use chrono::{DateTime, NaiveDateTime, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, ObjectStoreScheme};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

use node::Node;
use node::backup::{Format, TempFile, write_backup};

/// The size of one uploaded part (S3 wants at least 5 MiB but for the last).
const PART: usize = 8 << 20;
/// Parts uploaded at once: with [`PART`], bounds an upload's buffers at about 24 MiB.
const PARTS_IN_FLIGHT: usize = 2;
/// Chunks the image is read in, for upload.
const CHUNK: usize = 256 << 10;
/// The first wait after a failed attempt; doubled after each failure, up to the interval.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How long a node that has just bootstrapped waits to lead, before restoring.
const LEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The time in object names: sortable, no characters that need escaping.
const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// Where backups go: an object store and a prefix in it.
pub struct Target {
    /// The store.
    store: Arc<dyn ObjectStore>,
    /// The prefix objects are named under (empty for a whole bucket or directory).
    prefix: ObjectPath,
    /// The URL it was made from.
    url: String,
}

/// One backup found in a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its object's location.
    pub location: ObjectPath,
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// The log index it holds.
    pub lsn: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// The object name of a backup taken at `time` holding `lsn`.
fn object_name(time: DateTime<Utc>, lsn: u64, compress: bool) -> String {
    let ext = if compress { "sqlite.gz" } else { "sqlite" };
    format!("keel-{}-lsn{lsn}.{ext}", time.format(TIME_FORMAT))
}

/// The time and lsn in an object name made by [`object_name`]; `None` for other objects.
fn parse_name(name: &str) -> Option<(DateTime<Utc>, u64)> {
    let rest = name.strip_prefix("keel-")?;
    let rest = rest.strip_suffix(".sqlite.gz").or_else(|| rest.strip_suffix(".sqlite"))?;
    let (time, lsn) = rest.split_once("-lsn")?;
    let time = NaiveDateTime::parse_from_str(time, TIME_FORMAT).ok()?.and_utc();
    Some((time, lsn.parse().ok()?))
}

/// Which backup `keel restore --from --at` picks: the newest at or before a log index or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// At or before this log index.
    Lsn(u64),
    /// Taken at or before this time.
    Time(DateTime<Utc>),
}

/// Parses `--at`: a log index, or a time (RFC 3339, or as in object names).
pub fn parse_at(s: &str) -> Result<At, String> {
    if let Ok(lsn) = s.parse() {
        return Ok(At::Lsn(lsn));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(At::Time(t.with_timezone(&Utc)));
    }
    NaiveDateTime::parse_from_str(s, TIME_FORMAT)
        .map(|t| At::Time(t.and_utc()))
        .map_err(|_| format!("'{s}' is neither a log index nor a time (e.g. 2026-01-02T03:04:05Z)"))
}

/// The newest of `backups` (sorted oldest first) that `at` allows.
pub fn pick(backups: &[Stored], at: Option<At>) -> Option<&Stored> {
    backups.iter().rev().find(|b| match at {
        None => true,
        Some(At::Lsn(lsn)) => b.lsn <= lsn,
        Some(At::Time(t)) => b.time <= t,
    })
}

impl Target {
    /// The target at `url` (see the module docs), with credentials from the environment.
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let parsed = url::Url::parse(url).with_context(|| format!("'{url}' is not a URL"))?;
        let unsupported = || {
            anyhow::anyhow!(
                "'{url}': backups go to s3://bucket/prefix, gs://bucket/prefix, \
                 az://container/prefix or file:///dir"
            )
        };
        let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|_| unsupported())?;
        // Connection refused or a 5xx: a few quick retries, then the attempt fails and the
        // schedule's own backoff takes over.
        let retry = object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::Local => {
                let dir = std::path::Path::new(parsed.path());
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating the backup directory {}", dir.display()))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(dir)?;
                return Ok(Target {
                    store: Arc::new(store),
                    prefix: ObjectPath::default(),
                    url: url.into(),
                });
            }
            ObjectStoreScheme::AmazonS3 => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_retry(retry)
                    .build()?,
            ),
            ObjectStoreScheme::GoogleCloudStorage => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry)
                    .build()?,
            ),
            ObjectStoreScheme::MicrosoftAzure => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry)
                    .build()?,
            ),
            _ => return Err(unsupported()),
        };
        Ok(Target { store, prefix, url: url.into() })
    }

    /// The URL it was made from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The backups under the prefix (objects named by [`object_name`]; others are left alone),
    /// oldest first.
    pub async fn list(&self) -> anyhow::Result<Vec<Stored>> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let metas: Vec<_> = self
            .store
            .list(prefix)
            .try_collect()
            .await
            .with_context(|| format!("listing the backups in {}", self.url))?;
        let mut backups: Vec<Stored> = metas
            .into_iter()
            .filter_map(|meta| {
                let (time, lsn) = parse_name(meta.location.filename()?)?;
                Some(Stored { location: meta.location, time, lsn, size: meta.size })
            })
            .collect();
        backups.sort_by_key(|b| (b.time, b.lsn));
        Ok(backups)
    }

    /// Streams the image at `image` (gzipped if `compress`) to a new object for `lsn`; returns
    /// its name and size.
    pub async fn upload(
        &self,
        image: TempFile,
        lsn: u64,
        compress: bool,
    ) -> anyhow::Result<(ObjectPath, u64)> {
        let name = object_name(Utc::now(), lsn, compress);
        let location = if self.prefix.as_ref().is_empty() {
            ObjectPath::from(name)
        } else {
            self.prefix.clone().join(name)
        };
        let mut writer = object_store::buffered::BufWriter::with_capacity(
            self.store.clone(),
            location.clone(),
            PART,
        )
        .with_max_concurrency(PARTS_IN_FLIGHT);
        let (tx, mut rx) = mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
        let producer = tokio::task::spawn_blocking(move || stream_image(image, compress, tx));
        let mut size = 0u64;
        let sent = async {
            while let Some(chunk) = rx.recv().await {
                let chunk = chunk.context("reading the backup image")?;
                size += chunk.len() as u64;
                writer.put(chunk).await?;
            }
            writer.shutdown().await?;
            anyhow::Ok(())
        }
        .await;
        drop(rx);
        let _ = producer.await;
        if let Err(e) = sent {
            let _ = writer.abort().await;
            return Err(e.context(format!("uploading {location} to {}", self.url)));
        }
        Ok((location, size))
    }

    /// Deletes the oldest backups beyond the newest `retain`; returns how many went.
    pub async fn prune(&self, retain: usize) -> anyhow::Result<usize> {
        let backups = self.list().await?;
        let excess = backups.len().saturating_sub(retain);
        for old in &backups[..excess] {
            self.store
                .delete(&old.location)
                .await
                .with_context(|| format!("deleting the old backup {}", old.location))?;
        }
        Ok(excess)
    }

    /// The body of `backup`, as a stream of chunks.
    async fn download(
        &self,
        backup: &Stored,
    ) -> anyhow::Result<futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>>
    {
        let got = self
            .store
            .get(&backup.location)
            .await
            .with_context(|| format!("reading {} from {}", backup.location, self.url))?;
        Ok(got.into_stream())
    }
}

/// Reads `image` in chunks (gzipping them if `compress`) into `tx`, on a blocking thread.
fn stream_image(image: TempFile, compress: bool, tx: mpsc::Sender<std::io::Result<bytes::Bytes>>) {
    let mut out = Chunks { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
    let written = if compress {
        let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
        write_backup(image.path(), Format::Sqlite, None, &mut gz)
            .and_then(|()| Ok(gz.finish()?.flush_chunk()?))
    } else {
        write_backup(image.path(), Format::Sqlite, None, &mut out)
            .and_then(|()| Ok(out.flush_chunk()?))
    };
    if let Err(e) = written {
        let _ = tx.blocking_send(Err(std::io::Error::other(format!("{e:#}"))));
    }
}

/// A `Write` that sends [`CHUNK`]-sized chunks over a channel, waiting while it is full.
struct Chunks {
    /// Where chunks go.
    tx: mpsc::Sender<std::io::Result<bytes::Bytes>>,
    /// The chunk being filled.
    buf: Vec<u8>,
}

impl Chunks {
    /// Sends what is buffered.
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(chunk.into()))
            .map_err(|_| std::io::Error::other("the upload stopped"))
    }
}

impl std::io::Write for Chunks {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_chunk()
    }
}

/// `--backup-interval`, `--backup-retain` and `--backup-compress`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Time between two backups.
    pub every: Duration,
    /// Backups kept; older ones are deleted after an upload. `None` keeps all.
    pub retain: Option<usize>,
    /// gzip each backup.
    pub compress: bool,
}

/// Runs the backup schedule of `node` to `target` until the node is dropped (see the module
/// docs).
pub async fn schedule(node: std::sync::Weak<Node>, target: Target, schedule: Schedule) {
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + schedule.every, schedule.every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The newest lsn in the target, once known; forgotten when this node stops leading (another
    // leader may upload meanwhile).
    let mut uploaded: Option<u64> = None;
    loop {
        ticks.tick().await;
        let mut backoff = FIRST_BACKOFF.min(schedule.every);
        loop {
            let Some(node) = node.upgrade() else { return };
            if !node.is_leader() {
                uploaded = None;
                break;
            }
            let report = &node.metrics().backups;
            match attempt(&node, &target, schedule, &mut uploaded).await {
                Ok(Some(lsn)) => {
                    uploaded = Some(lsn);
                    break;
                }
                Ok(None) => {
                    report.skipped();
                    break;
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    tracing::warn!(%error, retry_in = ?backoff, target = target.url(), "backup failed");
                    report.failed(&error);
                }
            }
            drop(node);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(schedule.every.max(FIRST_BACKOFF));
        }
    }
}

/// One backup: `Ok(None)` when nothing was applied since the newest upload, else the lsn
/// uploaded.
async fn attempt(
    node: &Arc<Node>,
    target: &Target,
    schedule: Schedule,
    uploaded: &mut Option<u64>,
) -> anyhow::Result<Option<u64>> {
    if uploaded.is_none() {
        *uploaded = Some(target.list().await?.last().map_or(0, |b| b.lsn));
    }
    // Equal, not "at most": a newest backup beyond this node's applied index comes from another
    // log (the cluster this one was restored from), and says nothing about this one's data.
    if *uploaded == Some(node.applied()) {
        return Ok(None);
    }
    let (started, at) = (Instant::now(), SystemTime::now());
    let (image, lsn) = node.backup_image_at(false).await.context("taking the backup image")?;
    let (location, size) = target.upload(image, lsn, schedule.compress).await?;
    let took = started.elapsed();
    node.metrics().backups.uploaded(location.as_ref(), lsn, size, took, at);
    tracing::info!(object = %location, lsn, bytes = size, secs = took.as_secs_f64(), "backup uploaded");
    if let Some(retain) = schedule.retain {
        match target.prune(retain).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, retain, "old backups deleted"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "deleting old backups failed"),
        }
    }
    Ok(Some(lsn))
}

/// Whether the data directory `dir` holds no node yet (missing, or nothing but the lock and
/// spool files): the only kind `--restore-from` restores into.
pub fn is_empty_data_dir(dir: &std::path::Path) -> anyhow::Result<bool> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let name = entry?.file_name();
        if name != crate::data_dir::LOCK_FILE && name != "tmp" {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `keel serve --restore-from URL` on an empty node without `--join`: bootstraps a one-node
/// cluster and loads the newest backup before the client API is served. A target without
/// backups starts the node empty (a new deployment); an unreachable one fails the start.
pub async fn restore_on_boot(node: &Arc<Node>, url: &str) -> anyhow::Result<()> {
    let target = Target::parse(url)?;
    let backups = target.list().await?;
    let Some(newest) = pick(&backups, None) else {
        tracing::warn!(target = url, "no backup to restore (--restore-from): starting empty");
        return Ok(());
    };
    tracing::info!(object = %newest.location, lsn = newest.lsn, bytes = newest.size, "restoring (--restore-from)");
    let started = Instant::now();
    node.bootstrap_or_join(&[], true, None).await?;
    let deadline = Instant::now() + LEAD_TIMEOUT;
    while !node.is_leader() {
        anyhow::ensure!(Instant::now() < deadline, "the new one-node cluster elected no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spool = TempFile::new(node, "restore")?;
    let mut file = tokio::fs::File::create(spool.path()).await?;
    let mut body = target.download(newest).await?;
    while let Some(chunk) = body.next().await {
        file.write_all(&chunk.context("the backup download broke off")?).await?;
    }
    file.sync_all().await?;
    drop(file);
    let (_, progress) = node
        .load(spool, true, node.durability())
        .await
        .with_context(|| format!("restoring {}", newest.location))?;
    if let Some((at, error)) = progress.failed {
        anyhow::bail!("restoring {}: statement {at} failed: {error}", newest.location);
    }
    tracing::info!(
        object = %newest.location,
        statements = progress.statements,
        lsn = progress.lsn,
        secs = started.elapsed().as_secs_f64(),
        "restored (--restore-from)"
    );
    Ok(())
}

/// `keel restore --from URL [--at LSN|TIME]`: streams the chosen backup from the target into
/// the cluster's `/db/load`, with a progress bar.
pub async fn restore_from(
    client: &keel_api::Client,
    url: &str,
    at: Option<At>,
) -> anyhow::Result<()> {
    let target = Target::parse(url)?;
    let backups = target.list().await?;
    let chosen = pick(&backups, at).with_context(|| match at {
        None => format!("no backup in {url}"),
        Some(at) => format!("no backup in {url} at or before {at:?} ({} in all)", backups.len()),
    })?;
    eprintln!("restoring {} (lsn {}, taken {})", chosen.location, chosen.lsn, chosen.time);
    let bar = crate::backup::progress_bar(Some(chosen.size), "restore");
    let counter = bar.clone();
    let stream = target.download(chosen).await?.map(move |chunk| {
        if let Ok(c) = &chunk {
            counter.inc(c.len() as u64);
        }
        chunk
    });
    let body = reqwest::Body::wrap_stream(stream);
    let answer = client.load(body, "application/octet-stream", Some(chosen.size)).await;
    bar.finish_with_message("sent; the leader is applying it");
    let answer = answer.map_err(|e| crate::backup::failed("restore", e))?;
    let text = serde_json::to_string(&answer)?;
    if let Some(error) = answer.failure() {
        anyhow::bail!("restore failed: {error}: {text}");
    }
    eprintln!("restored from {}: {text}", chosen.location);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_time_and_lsn_and_sort_by_age() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z").unwrap().with_timezone(&Utc);
        let name = object_name(t, 42, true);
        assert_eq!(name, "keel-20260102T030405Z-lsn42.sqlite.gz");
        assert_eq!(parse_name(&name), Some((t, 42)));
        assert_eq!(parse_name(&object_name(t, 7, false)), Some((t, 7)));
        assert_eq!(parse_name("notes.txt"), None);
        assert_eq!(parse_name("keel-garbage-lsn1.sqlite"), None);
        let later = object_name(t + chrono::TimeDelta::seconds(1), 3, false);
        assert!(name < later);
    }

    #[test]
    fn at_picks_the_newest_allowed() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-02T00:00:00Z").unwrap().with_timezone(&Utc);
        let backup = |secs, lsn| Stored {
            location: ObjectPath::from(format!("b{lsn}")),
            time: t0 + chrono::TimeDelta::seconds(secs),
            lsn,
            size: 1,
        };
        let all = [backup(0, 10), backup(60, 20), backup(120, 30)];
        assert_eq!(pick(&all, None).unwrap().lsn, 30);
        assert_eq!(pick(&all, Some(parse_at("25").unwrap())).unwrap().lsn, 20);
        assert_eq!(pick(&all, Some(parse_at("2026-01-02T00:01:30Z").unwrap())).unwrap().lsn, 20);
        assert_eq!(pick(&all, Some(parse_at("20260102T000000Z").unwrap())).unwrap().lsn, 10);
        assert_eq!(pick(&all, Some(At::Lsn(9))), None);
        assert!(parse_at("yesterday").is_err());
    }

    #[test]
    fn only_s3_gs_az_and_file_urls() {
        assert!(Target::parse("ftp://host/x").is_err());
        assert!(Target::parse("no url").is_err());
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/backups", dir.path().display());
        Target::parse(&url).unwrap();
        assert!(dir.path().join("backups").is_dir());
    }
}
