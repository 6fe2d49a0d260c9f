//! Backups and loads, the node's side: a consistent image of the database, and a load fed to
//! the writer in batches. The HTTP layer streams the image out and spools the load in; both use
//! files under the node's `tmp/` ([`TempFile`]), so memory stays bounded whatever the size of
//! the database.
//!
//! - [`Node::backup_image`]: a consistent image taken on its own read connection
//!   ([`sql::ImageSource`], the same copy a Raft snapshot uses; writes go on meanwhile), with
//!   Keel's internal tables removed, optionally vacuumed; [`write_backup`] writes it out as the
//!   SQLite file or as a sqlite3 `.dump` text.
//! - [`Node::load`]: a spooled file, recognised by its first bytes (gzip, a SQLite file, or SQL
//!   text; [`prepare_load`]), read in batches on a blocking thread ([`sql::load`]) and fed to
//!   the writer: each batch is one write request, one Raft entry, atomic; the load as a whole
//!   is not. A SQLite file REPLACES the database (every user table, view, index and trigger is
//!   dropped first, as rqlite does); SQL text is executed as it is. Progress is logged.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::{Error, Node};

/// Read size of a loaded text file.
const CHUNK: usize = 256 << 10;
/// The first 16 bytes of every SQLite database file.
pub const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// The first two bytes of a gzip stream.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// A load logs its progress every this many batches.
const PROGRESS_EVERY: u64 = 100;

/// What a backup is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The SQLite database file.
    Sqlite,
    /// sqlite3's `.dump` text.
    Sql,
}

/// A temporary file under the node's data directory, removed (with its SQLite side files) when
/// dropped.
pub struct TempFile(PathBuf);

impl TempFile {
    /// A new file name under `node`'s `tmp/` (created if missing), named after `what`.
    pub fn new(node: &Node, what: &str) -> io::Result<TempFile> {
        let dir = node.data_dir.join("tmp");
        std::fs::create_dir_all(&dir)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(TempFile(dir.join(format!("{what}-{nanos}.tmp"))))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
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

/// Writes the backup of `image` in `format` to `out`.
pub fn write_backup(
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

/// What a load was given, recognised by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadKind {
    /// A SQLite database file: replaces the database.
    Sqlite,
    /// SQL text: executed in batches.
    Text,
}

/// Decompresses `path` into a new temporary file if it is gzip; returns the file to load and
/// what it is.
pub fn prepare_load(
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

/// Reads up to 16 first bytes of `path` into `head`; returns how many there were.
pub fn read_head(path: &Path, head: &mut [u8; 16]) -> io::Result<usize> {
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
    node: &Node,
    file: TempFile,
    kind: LoadKind,
    tx: mpsc::Sender<Batch>,
) -> anyhow::Result<()> {
    match kind {
        LoadKind::Sqlite => {
            let mut load = sql::load::FileLoad::open(&file.0).map_err(|e| {
                anyhow::anyhow!("the body starts like a SQLite file but cannot be read: {e}")
            })?;
            let drops = node.db.run_blocking(|db| sql::load::drop_user_objects(db))?;
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

/// How far a load got.
#[derive(Debug, Default)]
pub struct Progress {
    /// Statements applied (of the batches that succeeded).
    pub statements: u64,
    /// Batches applied.
    pub batches: u64,
    /// The log index of the last batch applied, 0 before the first.
    pub lsn: u64,
    /// The result of the last statement applied.
    pub last: Option<sql::StatementResult>,
    /// The failed statement (1-based position among the statements run) and its error; its
    /// batch was rolled back.
    pub failed: Option<(u64, String)>,
}

impl Node {
    /// Takes a consistent image of the database into a temporary file, without Keel's internal
    /// tables, vacuumed if asked.
    pub async fn backup_image(&self, vacuum: bool) -> Result<TempFile, Error> {
        Ok(self.backup_image_at(vacuum).await?.0)
    }

    /// [`Node::backup_image`], with the log index the image holds (0 before the first apply):
    /// read from the copy itself, so it matches the contents whatever the writer did meanwhile.
    pub async fn backup_image_at(&self, vacuum: bool) -> Result<(TempFile, wal::Lsn), Error> {
        let image = TempFile::new(self, "backup").map_err(|e| Error::Internal(e.to_string()))?;
        let source = self.image_source.clone();
        let path = image.0.clone();
        let started = Instant::now();
        let applied = tokio::task::spawn_blocking(move || -> sql::Result<wal::Lsn> {
            let applied = source.write_image(&path)?;
            sql::backup::strip_internal(&path)?;
            if vacuum {
                sql::backup::vacuum(&path)?;
            }
            Ok(applied.map_or(0, |a| a.index))
        })
        .await?
        .map_err(|e| Error::Internal(e.to_string()))?;
        let size = std::fs::metadata(&image.0).map_or(0, |m| m.len());
        tracing::info!(bytes = size, lsn = applied, took = ?started.elapsed(), "backup image taken");
        Ok((image, applied))
    }

    /// Loads a spooled body (see the module docs): `binary` if it was sent as
    /// `application/octet-stream` (then it must be a SQLite file). Returns what it was and how
    /// far the load got; a statement that failed is in the progress, not an error. `Err` is an
    /// invalid body (`InvalidInput`) or a write that failed (the batches before it stay).
    pub async fn load(
        self: &Arc<Self>,
        spool: TempFile,
        binary: bool,
        durability: leader::Durability,
    ) -> Result<(LoadKind, Progress), Error> {
        let spare =
            TempFile::new(self, "load-gunzip").map_err(|e| Error::Internal(e.to_string()))?;
        let prepared =
            tokio::task::spawn_blocking(move || prepare_load(spool, spare, binary)).await?;
        let (file, kind) = prepared.map_err(|e| Error::InvalidInput(format!("{e:#}")))?;
        let bytes = std::fs::metadata(file.path()).map_or(0, |m| m.len());
        tracing::info!(bytes, ?kind, "loading");
        let (tx, mut rx) = mpsc::channel::<Batch>(2);
        let producer = {
            let node = self.clone();
            let tx = tx.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = produce_batches(&node, file, kind, tx.clone()) {
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
                Err(e) => break Some(Error::InvalidInput(e)),
            };
            match self.load_batch(batch, durability, &mut progress).await {
                Ok(true) => {}
                Ok(false) => break None,
                Err(e) => break Some(e),
            }
        };
        drop(rx);
        let _ = producer.await;
        match failure {
            Some(e) => Err(e),
            None => Ok((kind, progress)),
        }
    }

    /// Writes one batch of a load; `Ok(false)` when a statement of it failed (recorded in
    /// `progress`: the load stops there).
    async fn load_batch(
        &self,
        batch: Vec<sql::Statement>,
        durability: leader::Durability,
        progress: &mut Progress,
    ) -> Result<bool, Error> {
        let n = batch.len() as u64;
        let request = sql::WriteRequest {
            statements: batch,
            transaction: true,
            rows: false,
            request_id: None,
            timeout: None,
        };
        let outcome = self.leader.write(request, durability).await.map_err(|e| {
            tracing::warn!(error = %e, progress.statements, "load stopped");
            Error::Leader(e)
        })?;
        let error = outcome.results.iter().enumerate().find_map(|(i, r)| match r {
            sql::StatementResult::Error(m) => Some((i, m.clone())),
            _ => None,
        });
        if let Some((i, message)) = error {
            progress.failed = Some((progress.statements + i as u64 + 1, message));
            return Ok(false);
        }
        progress.statements += n;
        progress.batches += 1;
        progress.lsn = outcome.lsn;
        progress.last = outcome.results.last().cloned();
        if progress.batches.is_multiple_of(PROGRESS_EVERY) {
            tracing::info!(progress.batches, progress.statements, progress.lsn, "load progress");
        }
        Ok(true)
    }
}
