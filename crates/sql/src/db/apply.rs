//! Applying committed records, and installing a snapshot image: the only ways the database
//! changes.
//!
//! [`Db::apply`] (every node, the leader included) applies committed records in one transaction
//! together with the new applied position, which is stored in the database itself
//! (`_keel_meta`, see [`crate::meta`]), so data and position can never disagree after a crash,
//! and with the answers of requests that carried a request id (`_keel_requests`, see
//! [`crate::answers`]). [`Db::install`] (a node behind the leader's log) replaces the whole
//! database by an image received in a Raft snapshot, by renaming the image into the database
//! directory as the next generation (see `generation`): no copy, whatever the size.
//!
//! ## How `apply` keeps replicas identical
//!
//! Records are applied on the apply connection (see the parent module): triggers and foreign
//! keys off, because the changesets already contain what triggers and cascades did on the
//! leader, and defensive mode off, because FTS shadow tables are written directly.
//! `Op::Changes` is first validated against the local schema (every table exists, same column
//! count and primary key), since SQLite would silently skip mismatching changes; then applied
//! with a conflict handler that aborts on any conflict. Any failure rolls the whole batch back.
//! A failure that applying again would repeat (a conflict, a missing table, a failing DDL
//! statement, a malformed record) is [`Error::Corrupt`]: this replica cannot apply the entry as
//! the leader did, and the node must stop rather than diverge. A failure of the environment
//! (disk I/O, a full disk, a lock held too long) stays [`Error::Sqlite`], so the caller can tell
//! the two apart ([`Error::is_deterministic`]). `Op::Ddl` runs as SQL text; `CREATE TABLE … AS
//! SELECT` rows are created there and only there (sessions do not record them, verified), and
//! `execute` rejects the non-deterministic kind.
//!
//! Virtual tables (FTS5) replicate through their shadow tables, which changesets write
//! underneath the virtual table. FTS5 caches its index structure per connection and only
//! notices commits of *other* connections: the client connection sees the applier's commits as
//! such, and after applying changes to a shadow table `apply` replaces its own connection with a
//! fresh one.
//!
//! ## The leader keeps its speculation
//!
//! The leader's writer speculates with [`Db::execute_held`] (and [`Db::execute_stacked`]),
//! which leave the speculation's transaction open instead of rolling it back. When `apply` is
//! handed the entries that carry those records, at the indexes and in the term they were made
//! for, the transaction is committed instead of applying the changesets a second time (see
//! `held`). The leader's rows then come from running the SQL, the replicas' from the
//! changesets; table checks (`crate::checksum`, `keel check`) verify that the two agree.
//! Anything else rolls the held transaction back first, and the records are applied from their
//! changesets like on every follower.

use std::path::Path;
use std::sync::Arc;

use rusqlite::OptionalExtension as _;
use wal::{Op, Record};

use super::held::Taken;
use super::{Db, internal};
use crate::answers;
use crate::error::{Error, Result, is_damaged, is_environmental};
use crate::generation::{self, Generation};
use crate::image;
pub use crate::meta::Apply;
use crate::meta::{self, Recorded};
use crate::replay::{self, Shape};
use crate::session::{self, ApplyError};
use crate::verdicts::Verdicts;

impl Db {
    /// Makes the database image at `image` (written by [`crate::ImageSource::write_image`] on some
    /// node: complete, fsynced, rollback-journal mode) the live database, taking the file over.
    ///
    /// The image is checked first (a SQLite file with a `_keel_meta` row); a bad one gives
    /// [`Error::InvalidInput`] and changes nothing. It is then renamed into the directory as
    /// the next generation, so it must be on the same file system to cost nothing (otherwise
    /// it is copied), opened in WAL mode as the new write connections, and named in `CURRENT`;
    /// then the old generation's files are deleted. After a crash at any point the directory
    /// holds the old database or the new one, whole. Readers that began before this returns
    /// finish on the old file; every read that starts after sees the new one.
    pub fn install(&mut self, image: &Path) -> Result<()> {
        image::check(image)?;
        self.end_transaction();
        let number = self.generation.number + 1;
        let path = self.dir.join(generation::file_name(number));
        // Left by an earlier install that failed before switching CURRENT.
        generation::remove_database(&path)?;
        generation::move_into(image, &self.dir, &path)?;
        // Open the new generation before it becomes CURRENT: if it cannot be opened, the old
        // database stays live, here and after a restart.
        let prepared = Self::connect(&path)
            .and_then(|opened| Ok((opened, Self::connect_applier(&path)?)))
            .and_then(|opened| generation::prepare_current(&self.dir, number).map(|()| opened))
            .and_then(|opened| generation::commit_current(&self.dir).map(|()| opened));
        let ((conn, policy, watchdog), applier) = match prepared {
            Ok(opened) => opened,
            Err(error) => {
                if let Err(cleanup) = generation::remove_database(&path) {
                    tracing::warn!(error = %cleanup, "cannot delete the refused generation");
                }
                return Err(error);
            }
        };
        // CURRENT names the new generation now; switch everything to it.
        let old_conn = std::mem::replace(&mut self.conn, conn);
        let old_applier = std::mem::replace(&mut self.applier, applier);
        self.policy = policy;
        self.watchdog = watchdog;
        self.verdicts = Verdicts::default();
        self.capped = false;
        let old = std::mem::replace(&mut self.generation, Arc::new(Generation { number, path }));
        self.live.switch(self.generation.clone());
        // The image's chain continues here; the hashes of entries before it were never ours.
        self.chain = meta::read_chain(&self.conn)?;
        self.recent.clear();
        if let Ok(Some(applied)) = meta::read_applied(&self.conn) {
            self.committed(applied.index);
        }
        for old in [old_conn, old_applier] {
            if let Err((_, error)) = old.close() {
                tracing::warn!(%error, "closing a write connection of the old generation");
            }
        }
        // Until the directory is synced, a crash may bring CURRENT back to the old generation,
        // whose files must then still exist.
        generation::sync_dir(&self.dir)?;
        if let Err(error) = generation::remove_database(&old.path) {
            tracing::warn!(%error, file = %old.path.display(), "cannot delete the old generation; it goes at the next open");
        }
        tracing::info!(generation = number, "installed database image");
        Ok(())
    }

    /// Applies committed entries in one SQLite transaction together with the new applied
    /// position (the last entry's) and membership (the last given). Each record's request
    /// answers are stored with the entry's index, and answers older than the retention window
    /// are pruned after each entry ([`crate::answers`]). On error nothing is applied;
    /// [`Error::Corrupt`] means a record cannot be applied identically here.
    ///
    /// A batch holding an index a table check has pinned ([`crate::checksum`]) is committed in
    /// two parts, split after that index, and the pin takes its snapshot in between; an error
    /// in the second part then leaves the first applied, with its own stored position, as if
    /// the entries had come in two calls.
    ///
    /// On the leader, an entry that carries the record of the speculation left open by
    /// [`Db::execute_held`] is not applied again: that transaction is committed instead (see
    /// the module docs).
    pub fn apply(&mut self, entries: &[Apply<'_>]) -> Result<()> {
        match self.take_held(entries) {
            Taken::Entries(taken) => self.apply_entries(&entries[taken..]),
            Taken::RolledBack { held, taken } => {
                let mut all = held.deferred();
                all.extend_from_slice(&entries[taken..]);
                self.apply_entries(&all)
            }
        }
    }

    /// [`Db::apply`] from the records. A `VACUUM` record ([`Op::Vacuum`]) is applied on its
    /// own: the entries before it are committed, then `VACUUM` runs outside any transaction,
    /// then its position is recorded. A crash between the two runs it again on replay, which
    /// changes nothing more (rowids are already compact).
    pub(super) fn apply_entries(&mut self, entries: &[Apply<'_>]) -> Result<()> {
        let mut rest = entries;
        while let Some(at) = rest.iter().position(is_vacuum) {
            let (before, after) = rest.split_at(at);
            self.apply_pinned(before)?;
            self.vacuum(&after[0])?;
            self.apply_pinned(&after[..1])?;
            rest = &after[1..];
        }
        self.apply_pinned(rest)
    }

    /// Runs `VACUUM` for `entry` on the apply connection, outside any transaction, and opens
    /// that connection again (FTS5 caches structure per connection).
    fn vacuum(&mut self, entry: &Apply<'_>) -> Result<()> {
        self.end_transaction();
        self.end_apply();
        let started = std::time::Instant::now();
        // VACUUM attaches its temporary copy; the apply connection otherwise allows no
        // attachment (`limits::harden`), and is replaced right after.
        self.applier.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED, 1)?;
        self.applier
            .execute_batch("VACUUM")
            .map_err(|e| failure(e, |e| format!("VACUUM failed: {e}")))
            .map_err(|e| located(e, &format!("entry {} (term {})", entry.index, entry.term)))?;
        self.applier = Self::connect_applier(&self.generation.path)?;
        tracing::info!(
            index = entry.index,
            secs = started.elapsed().as_secs_f64(),
            "VACUUM applied"
        );
        Ok(())
    }

    /// [`Db::apply`] of entries without `VACUUM`, split where a table check has pinned an
    /// index.
    fn apply_pinned(&mut self, entries: &[Apply<'_>]) -> Result<()> {
        let mut rest = entries;
        while let Some(at) = self.pins.split_at(rest.iter().map(|e| e.index)) {
            let (through, after) = rest.split_at(at + 1);
            self.apply_part(through)?;
            rest = after;
        }
        self.apply_part(rest)
    }

    /// [`Db::apply`] of entries that no pin splits; tells the pins what is committed.
    fn apply_part(&mut self, entries: &[Apply<'_>]) -> Result<()> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        self.end_transaction();
        internal(&self.applier, "BEGIN IMMEDIATE")?;
        let outcome = self.apply_in_transaction(entries);
        match outcome {
            Ok((touched_shadow_tables, recorded)) => {
                if let Err(error) = internal(&self.applier, "COMMIT") {
                    self.end_apply();
                    return Err(error.into());
                }
                if touched_shadow_tables {
                    // A virtual table (FTS5) caches its index structure per connection and only
                    // notices changes committed by *other* connections. Its shadow tables were
                    // just written underneath it, so start over with a fresh connection.
                    self.applier = Self::connect_applier(&self.generation.path)?;
                }
                self.chain = recorded.chain;
                self.recent.extend(&recorded.hashes);
                self.committed(last.index);
                Ok(())
            }
            Err(error) => {
                self.end_apply();
                Err(error)
            }
        }
    }

    /// The body of [`Db::apply`], inside its transaction. Returns whether a changeset wrote a
    /// virtual table's shadow tables, and the apply hash after the entries with each entry's
    /// (see [`meta::write_applied`]).
    fn apply_in_transaction(&mut self, entries: &[Apply<'_>]) -> Result<(bool, Recorded)> {
        let mut touched_shadow_tables = false;
        for entry in entries {
            if let Some(record) = entry.record {
                touched_shadow_tables |= self.apply_record(entry, record)?;
            }
            // After every entry, not once per call: the table's content must depend on the log
            // alone, not on how entries were grouped into calls (see `answers`).
            answers::prune(&self.applier, entry.index)?;
        }
        let chain = self.chain_to_extend();
        let recorded = meta::write_applied(&self.applier, chain, entries)?;
        Ok((touched_shadow_tables, recorded))
    }

    /// Applies one entry's record: its ops, then its request answers. Returns whether a
    /// changeset wrote a virtual table's shadow tables.
    fn apply_record(&self, entry: &Apply<'_>, record: &Record) -> Result<bool> {
        let mut touched_shadow_tables = false;
        for (i, op) in record.ops.iter().enumerate() {
            let at = || format!("entry {} (term {}) op {i}", entry.index, entry.term);
            match op {
                Op::Ddl(sql) => self
                    .applier
                    .execute_batch(sql)
                    .map_err(|e| failure(e, |e| format!("DDL failed: {e}: {sql}")))
                    .map_err(|e| located(e, &at()))?,
                // Run before the transaction (`apply_entries`).
                Op::Vacuum => {}
                Op::Changes(changeset) => {
                    let (shadow, shapes) =
                        self.validate(changeset).map_err(|e| located(e, &at()))?;
                    touched_shadow_tables |= shadow;
                    if replay::handles(&shapes) {
                        replay::apply(&self.applier, changeset, &shapes)
                    } else {
                        session::apply(&self.applier, changeset)
                    }
                    .map_err(|e| match e {
                        ApplyError::Conflict { kind, table } => {
                            Error::Corrupt(format!("conflict on table {table}: {kind}"))
                        }
                        ApplyError::Sqlite(e) => {
                            failure(e, |e| format!("changeset apply failed: {e}"))
                        }
                    })
                    .map_err(|e| located(e, &at()))?;
                }
            }
        }
        answers::store(&self.applier, entry.index, &record.requests)
            .map_err(|e| located(e, &format!("entry {} (term {})", entry.index, entry.term)))?;
        Ok(touched_shadow_tables)
    }

    /// Checks that every table a changeset touches exists here with the same columns and
    /// primary key; SQLite's apply would silently skip changes that do not match. Returns
    /// whether one of the tables is a virtual table's shadow table, and the tables' shapes for
    /// [`replay::apply`].
    fn validate(&self, changeset: &[u8]) -> Result<(bool, Vec<Shape>)> {
        let tables = session::tables(changeset)
            .map_err(|e| failure(e, |e| format!("malformed changeset: {e}")))?;
        let schema = |e: rusqlite::Error| failure(e, |e| format!("reading the local schema: {e}"));
        let mut shadow = false;
        let mut shapes = Vec::with_capacity(tables.len());
        for table in tables {
            let kind: Option<String> = self
                .applier
                .prepare_cached(
                    "SELECT type FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
                )
                .and_then(|mut stmt| stmt.query_row([&table.name], |row| row.get(0)).optional())
                .map_err(schema)?;
            shadow |= kind.as_deref() == Some("shadow");
            let Some(shape) = replay::shape(&self.applier, &table.name).map_err(schema)? else {
                return Err(Error::Corrupt(format!("changeset for missing table {}", table.name)));
            };
            let expected = &shape.primary_key;
            if table.columns != expected.len() || table.primary_key != *expected {
                return Err(Error::Corrupt(format!(
                    "changeset for table {} has {} columns (primary key {:?}), the local table {} ({:?})",
                    table.name,
                    table.columns,
                    table.primary_key,
                    expected.len(),
                    expected
                )));
            }
            shapes.push(shape);
        }
        Ok((shadow, shapes))
    }

    /// Rolls back any open transaction of the apply connection. Never fails, like
    /// [`Db::end_transaction`].
    fn end_apply(&self) {
        if !self.applier.is_autocommit()
            && let Err(error) = internal(&self.applier, "ROLLBACK")
        {
            tracing::warn!(%error, "rollback of an apply failed");
        }
    }
}

impl Db {
    /// The apply hash the next recorded entries extend: this node's, or once after
    /// [`Db::plant_apply_hash_skew`], a skewed one.
    pub(super) fn chain_to_extend(&mut self) -> Option<wal::ApplyHash> {
        match std::mem::take(&mut self.skew_apply_hash) {
            true => self.chain.map(skew),
            false => self.chain,
        }
    }
}

/// The planted fault of [`Db::plant_apply_hash_skew`]: the digest as if one earlier entry had
/// been applied with other bytes.
fn skew(hash: wal::ApplyHash) -> wal::ApplyHash {
    let mut digest = hash.digest;
    digest[0] ^= 0xff;
    wal::ApplyHash { digest, ..hash }
}

/// A SQLite error while applying: [`Error::Corrupt`] described by `describe` when doing it
/// again fails the same way, SQLite's error as it is when the environment failed (see
/// [`Error::is_deterministic`]).
///
/// A page that failed its checksum is `Corrupt` too, named as damage of the database file
/// ([`crate::error::DAMAGED`]): this node's copy must be rebuilt, and applying again would meet
/// the same page.
fn failure(error: rusqlite::Error, describe: impl FnOnce(&rusqlite::Error) -> String) -> Error {
    if is_damaged(&error) {
        Error::Corrupt(crate::error::DAMAGED.to_string())
    } else if is_environmental(&error) {
        Error::Sqlite(error)
    } else {
        Error::Corrupt(describe(&error))
    }
}

/// Whether an entry's record is a `VACUUM`.
fn is_vacuum(entry: &Apply<'_>) -> bool {
    entry.record.is_some_and(|record| record.ops.iter().any(|op| matches!(op, Op::Vacuum)))
}

/// Names the entry (and op) a corruption happened in; other errors pass as they are.
fn located(error: Error, at: &str) -> Error {
    match error {
        Error::Corrupt(message) => Error::Corrupt(format!("{at}: {message}")),
        error => error,
    }
}
