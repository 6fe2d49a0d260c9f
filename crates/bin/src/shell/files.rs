//! The dot-commands that move the database, or statements, between files and the cluster:
//! `.backup` and `.dump` out, `.restore` and `.boot` in, and `.read`, which runs a file's
//! statements one by one as if they were typed.
//!
//! The transfers are `keel backup` and `keel restore` ([`crate::backup`]) with the shell's
//! client: `.backup` is `keel backup FILE`, `.dump FILE` is `keel backup --format sql FILE`
//! (with rqlite's table list, `tables=`), and `.dump` without a file copies the same SQL text
//! into the shell's output ([`crate::backup::copy`]). `.restore` is `keel restore`. rqlite's
//! `.boot` loads a SQLite file into a single node outside Raft; Keel's `/boot` is a load like
//! any other, through the log, so `.boot` is `.restore` limited to SQLite files (what rqlite's
//! accepts).
//!
//! `.read` differs from `.restore` of SQL text: it sends each statement as its own request and
//! shows each result, where a load runs the text in large batches and answers once. That is
//! what rqlite's `.read` does; sqlite3's `.read` also runs dot-commands, and so does this one.

use std::path::Path;

use node::backup::{SQLITE_MAGIC, read_head};

use super::input::Input;
use super::{Flow, Shell, interrupt};

impl Shell {
    /// `.backup FILE`: a SQLite file.
    pub(super) fn backup(&mut self, file: &Path) -> Result<(), String> {
        self.write_backup(&[], file)
    }

    /// `.dump [FILE [TABLE,...]]`: the SQL text of the database, or of `tables`, to `file`, or
    /// to the output.
    pub(super) fn dump(&mut self, file: Option<&Path>, tables: &[String]) -> Result<(), String> {
        let tables = tables.join(",");
        let mut params = vec![("fmt", Some("sql"))];
        if !tables.is_empty() {
            params.push(("tables", Some(tables.as_str())));
        }
        if let Some(file) = file {
            return self.write_backup(&params, file);
        }
        let (client, out) = (self.cluster.client(), &mut self.out);
        let copied = self.cluster.block_on(async {
            let mut download = crate::backup::start_backup(client, &params).await?;
            crate::backup::copy(&mut download, out).await
        })?;
        copied.map_err(|e| format!("{e:#}"))
    }

    /// Streams a backup with `params` to `file`; a backup that fails or is cancelled leaves
    /// no partial file.
    fn write_backup(&self, params: &[(&str, Option<&str>)], file: &Path) -> Result<(), String> {
        let partial = file.with_extension("partial");
        let client = self.cluster.client();
        let done = self.block_on(crate::backup::write_backup(client, params, file));
        if done.is_err() {
            // Written under this name and renamed when complete.
            let _ = std::fs::remove_file(partial);
        }
        done
    }

    /// `.restore FILE`: a SQLite file (replaces the database) or SQL text, loaded on the leader.
    pub(super) fn restore(&mut self, file: &Path) -> Result<(), String> {
        self.schema_changed = true;
        self.block_on(crate::backup::restore(self.cluster.client(), file))
    }

    /// `.boot FILE`: `.restore` of a SQLite file; anything else is refused before it is sent.
    pub(super) fn boot(&mut self, file: &Path) -> Result<(), String> {
        let mut head = [0u8; 16];
        let n = read_head(file, &mut head)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        if n < head.len() || head != *SQLITE_MAGIC {
            return Err(format!(
                "{} is not a SQLite database file: .boot loads SQLite files only \
                 (use .restore for SQL text or a gzipped file)",
                file.display()
            ));
        }
        self.restore(file)
    }

    /// `.read FILE`: runs the statements and dot-commands of FILE in order, each result to the
    /// output and each error to stderr, going on after an error; fails at the end if any
    /// failed. Ctrl-C stops it; `.quit` in FILE ends the file, not the shell. A file that
    /// reads itself, directly or not, is refused.
    pub(super) fn read(&mut self, file: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let name = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
        if self.reading.contains(&name) {
            return Err(format!("{} is being read already (a .read loop)", file.display()));
        }
        self.reading.push(name);
        let counts = self.read_text(&text);
        self.reading.pop();
        let (run, failed, cancelled) = counts;
        let file = file.display();
        if cancelled {
            return Err(format!("{file}: stopped by Ctrl-C after {run} statements and commands"));
        }
        if failed > 0 {
            return Err(format!("{failed} of {run} statements and commands in {file} failed"));
        }
        Ok(())
    }

    /// Runs the items of `text`; returns how many ran, how many failed, and whether Ctrl-C
    /// stopped them.
    fn read_text(&mut self, text: &str) -> (usize, usize, bool) {
        let mut input = Input::default();
        let mut items = Vec::new();
        for line in text.lines() {
            items.extend(input.push_line(line));
        }
        items.extend(input.finish());
        let (mut run, mut failed) = (0, 0);
        for item in &items {
            if interrupt::take() {
                return (run, failed, true);
            }
            let result = self.execute(item);
            let cancelled = result.as_ref().is_err_and(|why| why == interrupt::CANCELLED);
            let (flow, ok) = self.report(result);
            run += 1;
            failed += usize::from(!ok);
            if cancelled {
                return (run, failed, true);
            }
            if flow == Flow::Quit {
                break;
            }
        }
        (run, failed, false)
    }
}
