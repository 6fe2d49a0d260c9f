//! Row-change capture and replay through SQLite's session extension, over raw FFI.
//!
//! This and `pagesum` (page checksums) are the crate's modules of `unsafe` code. It wraps the
//! few C functions of the session extension that Keel needs, plus one connection-level call
//! rusqlite does not expose:
//!
//! * [`Session`] records every row a connection inserts, updates or deletes from the moment it
//!   is created ([`Session::new`]) and turns them into a *changeset* ([`Session::changeset`]): a
//!   compact binary list of net row changes, with old and new values, that SQLite can replay
//!   elsewhere. `execute` creates one per stretch of DML between two DDL statements.
//! * [`tables`] lists the tables a changeset touches and their column counts, so `apply` can
//!   refuse a changeset whose tables do not match the local schema (the session extension itself
//!   silently skips such changes, which would be a silent divergence).
//! * [`apply`] replays a changeset with a conflict handler that aborts on the first conflict of
//!   any kind: on a replica that holds exactly the state the leader computed the changeset
//!   against, a conflict can only mean divergence.
//! * [`describe`] prints a changeset row by row, for tests and debugging.
//! * [`deferred_foreign_key_violations`] asks the connection whether a COMMIT would fail on a
//!   deferred foreign-key constraint; rusqlite does not expose `sqlite3_db_status`.
//!
//! Why raw FFI: rusqlite's safe `session` feature needs libclang at build time, and it cannot set
//! `SQLITE_SESSION_OBJCONFIG_ROWID`, without which tables that have no PRIMARY KEY (most tables
//! of rqlite users) are silently not captured. The bundled SQLite is compiled with
//! `SQLITE_ENABLE_SESSION` and `SQLITE_ENABLE_PREUPDATE_HOOK` (see `.cargo/config.toml`), and the
//! prebuilt bindings of `libsqlite3-sys` declare every function used here.
//!
//! Safety argument, shared by every `unsafe` block below:
//!
//! * The `sqlite3*` handle comes from a live `&Connection` that the caller borrows for at least
//!   as long as the call (and, for [`Session`], for the session's whole life: `Session<'conn>`
//!   holds the borrow). rusqlite opens connections with `SQLITE_OPEN_NO_MUTEX`, and `&Connection`
//!   is `!Sync`, so no other thread uses the handle meanwhile.
//! * Buffers SQLite allocates (`sqlite3session_changeset`) are copied into a `Vec` and released
//!   with `sqlite3_free` exactly once. Buffers we pass in (`&[u8]` changesets) are only read by
//!   SQLite even though the C signatures take `void*`.
//! * Callbacks (`table_filter`, `on_conflict`) never unwind across the FFI boundary: they catch
//!   panics and turn them into a conservative answer.
//!
//! What this module does not do: decide *when* to capture or apply (that is `db.rs`), patchsets,
//! rebasing, inversion or streaming APIs.

use std::borrow::Cow;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::{self, NonNull};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, ffi};

/// Decides whether a session records changes to the named table.
pub(crate) type TableFilter = Box<dyn Fn(&str) -> bool>;

/// Turns a SQLite result code into a rusqlite error, with the connection's message if it has one.
fn check(db: *mut ffi::sqlite3, rc: c_int) -> rusqlite::Result<()> {
    if rc == ffi::SQLITE_OK {
        return Ok(());
    }
    // SAFETY: `db` is a live handle (see module docs); sqlite3_errmsg returns a string owned by
    // the connection, valid until the next call on it, and we copy it at once.
    let message = unsafe {
        let msg = ffi::sqlite3_errmsg(db);
        (!msg.is_null()).then(|| CStr::from_ptr(msg).to_string_lossy().into_owned())
    };
    // The connection's message may belong to an earlier call when the session functions fail
    // without setting it (e.g. SQLITE_NOMEM); only use it when its code matches.
    // SAFETY: as above.
    let errcode = unsafe { ffi::sqlite3_errcode(db) };
    let message = message.filter(|_| errcode == rc);
    Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), message))
}

/// An open SQLite session recording row changes on the `main` database of one connection.
///
/// Invariants:
/// * `SQLITE_SESSION_OBJCONFIG_ROWID` is on, so tables without a PRIMARY KEY are recorded by
///   rowid (the changeset then carries the rowid as an extra first primary-key column).
/// * It is attached to all tables (present and future) that `filter` accepts.
/// * It borrows the connection, so it cannot outlive it or leave the call that created it.
pub(crate) struct Session<'conn> {
    /// The C session object, deleted on drop.
    raw: NonNull<ffi::sqlite3_session>,
    /// The table filter; boxed twice so the callback context is a thin, stable pointer. It must
    /// live as long as `raw`, which calls it lazily on the first change to each table.
    filter: Box<TableFilter>,
    /// Ties the session to the connection it records.
    _conn: PhantomData<&'conn Connection>,
}

impl<'conn> Session<'conn> {
    /// Creates a session on `conn`'s main database that records changes to every table `filter`
    /// accepts, from now on.
    pub(crate) fn new(conn: &'conn Connection, filter: TableFilter) -> rusqlite::Result<Self> {
        // SAFETY: see module docs; `conn` outlives the session through `'conn`.
        let db = unsafe { conn.handle() };
        let mut raw = ptr::null_mut();
        // SAFETY: `db` is live, the schema name is a NUL-terminated literal, `raw` is a valid
        // out-pointer.
        check(db, unsafe { ffi::sqlite3session_create(db, c"main".as_ptr(), &mut raw) })?;
        let raw = NonNull::new(raw).ok_or_else(|| {
            rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_NOMEM), None)
        })?;
        // From here on, `Drop` deletes the session on every error path.
        let session = Session { raw, filter: Box::new(filter), _conn: PhantomData };

        // Record rowid tables without a PRIMARY KEY by rowid. Must happen before attach.
        let mut rowid: c_int = 1;
        // SAFETY: `raw` is a live session; for OBJCONFIG_ROWID, pArg points to an int that
        // SQLite reads and then overwrites with the current setting.
        let rc = unsafe {
            ffi::sqlite3session_object_config(
                raw.as_ptr(),
                ffi::SQLITE_SESSION_OBJCONFIG_ROWID,
                (&raw mut rowid).cast::<c_void>(),
            )
        };
        check(db, rc)?;
        if rowid != 1 {
            // The session has already been attached, which cannot be the case here.
            return Err(rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_MISUSE),
                Some("could not enable SQLITE_SESSION_OBJCONFIG_ROWID".to_string()),
            ));
        }

        let context: *const TableFilter = &*session.filter;
        // SAFETY: `raw` is live; `context` points into the heap allocation owned by
        // `session.filter`, which lives exactly as long as the session (dropped after
        // sqlite3session_delete, see Drop).
        unsafe {
            ffi::sqlite3session_table_filter(
                raw.as_ptr(),
                Some(table_filter),
                context.cast_mut().cast::<c_void>(),
            );
        }
        // SAFETY: `raw` is live; a NULL table name attaches all tables, including later ones.
        check(db, unsafe { ffi::sqlite3session_attach(raw.as_ptr(), ptr::null()) })?;
        Ok(session)
    }

    /// Returns the changeset of everything recorded so far: the net change per row, computed
    /// against the database's *current* contents. Call it before the changes are rolled back,
    /// and before DDL alters a recorded table. Empty when nothing changed.
    pub(crate) fn changeset(&self) -> rusqlite::Result<Vec<u8>> {
        let mut len: c_int = 0;
        let mut buf: *mut c_void = ptr::null_mut();
        // SAFETY: `raw` is live; `len` and `buf` are valid out-pointers.
        let rc = unsafe { ffi::sqlite3session_changeset(self.raw.as_ptr(), &mut len, &mut buf) };
        let bytes = if rc == ffi::SQLITE_OK && !buf.is_null() && len > 0 {
            // SAFETY: on success SQLite returns a buffer of exactly `len` bytes.
            unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len as usize) }.to_vec()
        } else {
            Vec::new()
        };
        // SAFETY: `buf` is NULL or was allocated by SQLite for us; freed exactly once.
        unsafe { ffi::sqlite3_free(buf) };
        if rc != ffi::SQLITE_OK {
            return Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None));
        }
        Ok(bytes)
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // SAFETY: `raw` is live and deleted exactly once; the filter box is dropped after this.
        unsafe { ffi::sqlite3session_delete(self.raw.as_ptr()) };
    }
}

/// The `xFilter` callback of [`Session`]: calls the boxed [`TableFilter`].
unsafe extern "C" fn table_filter(context: *mut c_void, table: *const c_char) -> c_int {
    // SAFETY: `context` is the `*const TableFilter` installed by `Session::new`, alive while the
    // session is; `table` is a NUL-terminated table name owned by SQLite for this call.
    let (filter, table) =
        unsafe { (&*context.cast_const().cast::<TableFilter>(), CStr::from_ptr(table)) };
    let table = table.to_string_lossy();
    // A panicking filter records the table: capturing too much fails loudly on apply, capturing
    // too little would diverge silently.
    catch_unwind(AssertUnwindSafe(|| filter(&table))).map_or(1, c_int::from)
}

/// One table as a changeset describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChangedTable {
    /// The table name.
    pub(crate) name: String,
    /// The number of columns in the changeset's records for this table (for a table recorded by
    /// rowid, this includes the leading rowid column).
    pub(crate) columns: usize,
    /// Which of those columns form the primary key.
    pub(crate) primary_key: Vec<bool>,
}

/// One change under a changeset iterator, as [`for_each_change`] hands it out.
pub(crate) struct Change<'a> {
    /// The live iterator, positioned on this change; valid only during the callback.
    iter: *mut ffi::sqlite3_changeset_iter,
    /// The changed table's name (borrowed from the iterator when it is valid UTF-8).
    pub(crate) table: Cow<'a, str>,
    /// How many columns the change records.
    pub(crate) columns: c_int,
    /// `SQLITE_INSERT`, `SQLITE_UPDATE` or `SQLITE_DELETE`.
    pub(crate) op: c_int,
}

impl Change<'_> {
    /// The old (`old = true`) or new value of column `i`; `None` when the change does not carry
    /// it: an insert has no old values, a delete no new ones, and an update only those of its
    /// primary key (old) and of the columns it changed (old and new).
    pub(crate) fn value(&self, i: usize, old: bool) -> Option<ValueRef<'_>> {
        let i = c_int::try_from(i).ok().filter(|&i| i < self.columns)?;
        let carries =
            if old { self.op != ffi::SQLITE_INSERT } else { self.op != ffi::SQLITE_DELETE };
        if !carries {
            return None;
        }
        // SAFETY: the kind and index are checked above. The values are owned by the iterator,
        // which does not step while `self` is borrowed (`for_each_change` steps only after the
        // callback returns), so the borrowed slices live long enough.
        unsafe { raw_value(self.iter, i, old) }
    }
}

/// Calls `f` on every change in `changeset`, in order: starts, steps and finalizes SQLite's
/// changeset iterator (the one place that does), and fails if the changeset is malformed or
/// `f` fails.
pub(crate) fn for_each_change(
    changeset: &[u8],
    mut f: impl FnMut(&Change<'_>) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    if changeset.is_empty() {
        return Ok(());
    }
    let len = c_int::try_from(changeset.len()).map_err(|_| too_big())?;
    let mut iter = ptr::null_mut();
    // SAFETY: `changeset` outlives the iterator (finalized below); SQLite only reads it.
    let rc = unsafe {
        ffi::sqlite3changeset_start(&mut iter, len, changeset.as_ptr().cast_mut().cast::<c_void>())
    };
    if rc != ffi::SQLITE_OK {
        return Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None));
    }
    let mut rc;
    let mut failed = None;
    loop {
        // SAFETY: `iter` is a live iterator until finalized.
        rc = unsafe { ffi::sqlite3changeset_next(iter) };
        if rc != ffi::SQLITE_ROW {
            break;
        }
        let mut name: *const c_char = ptr::null();
        let (mut columns, mut op, mut indirect): (c_int, c_int, c_int) = (0, 0, 0);
        // SAFETY: `iter` points at a change (SQLITE_ROW); the out-pointers are valid. The
        // returned name lives until the next call to sqlite3changeset_next.
        let ok = unsafe {
            ffi::sqlite3changeset_op(iter, &mut name, &mut columns, &mut op, &mut indirect)
                == ffi::SQLITE_OK
        };
        if !ok || name.is_null() {
            rc = ffi::SQLITE_CORRUPT;
            break;
        }
        // SAFETY: see above; the name is only used before the next step.
        let table = unsafe { CStr::from_ptr(name) }.to_string_lossy();
        if let Err(e) = f(&Change { iter, table, columns, op }) {
            failed = Some(e);
            rc = ffi::SQLITE_DONE;
            break;
        }
    }
    // SAFETY: finalized exactly once; returns the first error met while iterating, if any.
    let finalize = unsafe { ffi::sqlite3changeset_finalize(iter) };
    if let Some(e) = failed {
        return Err(e);
    }
    if rc != ffi::SQLITE_DONE || finalize != ffi::SQLITE_OK {
        let code = if rc != ffi::SQLITE_DONE { rc } else { finalize };
        return Err(rusqlite::Error::SqliteFailure(ffi::Error::new(code), None));
    }
    Ok(())
}

/// Lists the tables `changeset` touches, in order of first appearance, with the shape of their
/// records. Fails if the changeset is malformed.
pub(crate) fn tables(changeset: &[u8]) -> rusqlite::Result<Vec<ChangedTable>> {
    let mut tables: Vec<ChangedTable> = Vec::new();
    for_each_change(changeset, |change| {
        if tables.last().is_some_and(|t| t.name == change.table) {
            return Ok(());
        }
        let mut pk: *mut u8 = ptr::null_mut();
        let mut pk_columns: c_int = 0;
        // SAFETY: `change.iter` points at a change; the PK array lives until the next step
        // and is copied now.
        let primary_key = unsafe {
            if ffi::sqlite3changeset_pk(change.iter, &mut pk, &mut pk_columns) != ffi::SQLITE_OK {
                return Err(rusqlite::Error::SqliteFailure(
                    ffi::Error::new(ffi::SQLITE_CORRUPT),
                    None,
                ));
            }
            if pk.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(pk, pk_columns.max(0) as usize)
                    .iter()
                    .map(|&b| b != 0)
                    .collect()
            }
        };
        tables.push(ChangedTable {
            name: change.table.to_string(),
            columns: change.columns.max(0) as usize,
            primary_key,
        });
        Ok(())
    })?;
    Ok(tables)
}

/// The error for a changeset larger than the C API's `int` length.
fn too_big() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        ffi::Error::new(ffi::SQLITE_TOOBIG),
        Some("changeset larger than 2 GiB".to_string()),
    )
}

/// Why [`apply`] failed.
#[derive(Debug)]
pub(crate) enum ApplyError {
    /// A change conflicted with the local database; nothing of the changeset was applied.
    Conflict {
        /// What SQLite reported (`SQLITE_CHANGESET_DATA`, `NOTFOUND`, `CONFLICT`,
        /// `CONSTRAINT` or `FOREIGN_KEY`), spelled out.
        kind: &'static str,
        /// The table of the conflicting change, when known.
        table: String,
    },
    /// SQLite failed for another reason.
    Sqlite(rusqlite::Error),
}

/// What the conflict handler saw, passed to it through `pCtx`.
#[derive(Default)]
struct ConflictContext {
    /// The first conflict, if any.
    first: Option<(&'static str, String)>,
}

/// Applies `changeset` to `conn`'s main database, all or nothing: the first conflict of any kind
/// aborts it, and SQLite rolls back everything this call applied.
///
/// `conn` must have foreign keys off (the apply connection does): the changeset already
/// contains the effects of foreign-key actions as captured on the leader, so none may run
/// again. SQLite's own way to say so per call, `SQLITE_CHANGESETAPPLY_FKNOACTION`, is not used:
/// it moves the connection's schema cookie on entry and exit, which expires every prepared
/// statement of the connection, so each apply re-read the schema and parsed its statements
/// again (a tenth of a leader's CPU with one client). The caller must have checked with
/// [`tables`] that every table exists with matching columns, since SQLite silently skips
/// changes to tables that do not.
pub(crate) fn apply(conn: &Connection, changeset: &[u8]) -> Result<(), ApplyError> {
    if changeset.is_empty() {
        return Ok(());
    }
    let len = c_int::try_from(changeset.len()).map_err(|_| ApplyError::Sqlite(too_big()))?;
    let mut context = ConflictContext::default();
    // SAFETY: see module docs for `db`; `changeset` is only read; `context` outlives the call;
    // `on_conflict` matches the expected signature and does not unwind.
    let rc = unsafe {
        let db = conn.handle();
        ffi::sqlite3changeset_apply_v2(
            db,
            len,
            changeset.as_ptr().cast_mut().cast::<c_void>(),
            None,
            Some(on_conflict),
            (&raw mut context).cast::<c_void>(),
            ptr::null_mut(),
            ptr::null_mut(),
            0,
        )
    };
    match (rc, context.first) {
        (ffi::SQLITE_OK, None) => Ok(()),
        (_, Some((kind, table))) => Err(ApplyError::Conflict { kind, table }),
        (rc, None) => {
            // SAFETY: as above.
            let db = unsafe { conn.handle() };
            Err(ApplyError::Sqlite(
                check(db, rc)
                    .err()
                    .unwrap_or_else(|| rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None)),
            ))
        }
    }
}

/// The `xConflict` callback of [`apply`]: records the first conflict and aborts.
unsafe extern "C" fn on_conflict(
    context: *mut c_void,
    conflict: c_int,
    iter: *mut ffi::sqlite3_changeset_iter,
) -> c_int {
    let kind = match conflict {
        ffi::SQLITE_CHANGESET_DATA => "row differs from the changeset's old values",
        ffi::SQLITE_CHANGESET_NOTFOUND => "row to update or delete not found",
        ffi::SQLITE_CHANGESET_CONFLICT => "row to insert already exists",
        ffi::SQLITE_CHANGESET_CONSTRAINT => "constraint violation",
        ffi::SQLITE_CHANGESET_FOREIGN_KEY => "foreign key violation",
        _ => "unknown conflict",
    };
    let mut name: *const c_char = ptr::null();
    let (mut columns, mut op, mut indirect): (c_int, c_int, c_int) = (0, 0, 0);
    // SAFETY: `iter` is the live iterator SQLite passes for this call (NULL-checked for the
    // FOREIGN_KEY case, where it has no current change); the name is copied at once.
    let table = unsafe {
        if !iter.is_null()
            && ffi::sqlite3changeset_op(iter, &mut name, &mut columns, &mut op, &mut indirect)
                == ffi::SQLITE_OK
            && !name.is_null()
        {
            CStr::from_ptr(name).to_string_lossy().into_owned()
        } else {
            String::new()
        }
    };
    // SAFETY: `context` is the `ConflictContext` passed by `apply`, alive for the whole call.
    let context = unsafe { &mut *context.cast::<ConflictContext>() };
    context.first.get_or_insert((kind, table));
    ffi::SQLITE_CHANGESET_ABORT
}

/// Returns whether the open transaction has unresolved deferred foreign-key violations, i.e.
/// whether a COMMIT would fail with "FOREIGN KEY constraint failed". `execute` never commits, so
/// it asks this instead.
pub(crate) fn deferred_foreign_key_violations(conn: &Connection) -> rusqlite::Result<bool> {
    let (mut current, mut highwater): (c_int, c_int) = (0, 0);
    // SAFETY: see module docs; the out-pointers are valid.
    let rc = unsafe {
        let db = conn.handle();
        let rc = ffi::sqlite3_db_status(
            db,
            ffi::SQLITE_DBSTATUS_DEFERRED_FKS,
            &mut current,
            &mut highwater,
            0,
        );
        check(db, rc)
    };
    rc.map(|()| current > 0)
}

/// Describes every change in `changeset`, one line each, for tests and debugging:
/// `INSERT t (1, 'a')`, `DELETE t (1, 'a')`, `UPDATE t (1, 'a' → 'b', _)` where `_` is a
/// column the update leaves alone. Values print as SQL literals; a table recorded by rowid
/// shows the rowid first.
pub(crate) fn describe(changeset: &[u8]) -> rusqlite::Result<Vec<String>> {
    let mut lines = Vec::new();
    for_each_change(changeset, |change| {
        let (iter, op) = (change.iter, change.op);
        let mut fields = Vec::with_capacity(change.columns.max(0) as usize);
        for i in 0..change.columns {
            let old = (op != ffi::SQLITE_INSERT).then(|| column(iter, i, true)).flatten();
            let new = (op != ffi::SQLITE_DELETE).then(|| column(iter, i, false)).flatten();
            fields.push(match (old, new) {
                (Some(old), Some(new)) => format!("{old} → {new}"),
                (Some(value), None) | (None, Some(value)) => value,
                (None, None) => "_".to_string(),
            });
        }
        let verb = match op {
            ffi::SQLITE_INSERT => "INSERT",
            ffi::SQLITE_UPDATE => "UPDATE",
            ffi::SQLITE_DELETE => "DELETE",
            _ => "?",
        };
        lines.push(format!("{verb} {} ({})", change.table, fields.join(", ")));
        Ok(())
    })?;
    Ok(lines)
}

/// The old (`old = true`) or new value of column `i` of the iterator's current change, as an
/// SQL literal; `None` when the changeset does not carry it.
fn column(iter: *mut ffi::sqlite3_changeset_iter, i: c_int, old: bool) -> Option<String> {
    // SAFETY: `iter` points at a change of the matching kind (checked by the caller) and `i`
    // is below its column count.
    unsafe { change_value(iter, i, old, crate::schema::literal) }
}

/// Reads the old (`old = true`) or new value of column `i` of the iterator's current change and
/// gives it to `read`; `None` when the changeset does not carry it (a column an update left
/// alone). Shared by the change descriptions here and the change stream (`changes`).
///
/// # Safety
///
/// `iter` must point at a change of a kind that carries old (update, delete) or new (insert,
/// update) values, and `i` must be below its column count.
pub(crate) unsafe fn change_value<T>(
    iter: *mut ffi::sqlite3_changeset_iter,
    i: c_int,
    old: bool,
    read: impl FnOnce(ValueRef<'_>) -> T,
) -> Option<T> {
    // SAFETY: per the contract; the value is read before this call returns.
    unsafe { raw_value(iter, i, old) }.map(read)
}

/// The old or new value of column `i` of the iterator's current change, borrowing memory the
/// iterator owns; `None` when the change does not carry it.
///
/// # Safety
///
/// As [`change_value`], and the caller must not use the value after the iterator steps.
unsafe fn raw_value<'a>(
    iter: *mut ffi::sqlite3_changeset_iter,
    i: c_int,
    old: bool,
) -> Option<ValueRef<'a>> {
    let mut value: *mut ffi::sqlite3_value = ptr::null_mut();
    // SAFETY: per the contract. The value is owned by the iterator and valid until its next
    // step, which the caller's lifetime `'a` must not outlast.
    unsafe {
        let rc = if old {
            ffi::sqlite3changeset_old(iter, i, &mut value)
        } else {
            ffi::sqlite3changeset_new(iter, i, &mut value)
        };
        if rc != ffi::SQLITE_OK || value.is_null() {
            return None;
        }
        let bytes = |data: *const u8| {
            let len = ffi::sqlite3_value_bytes(value).max(0) as usize;
            if data.is_null() { &[][..] } else { std::slice::from_raw_parts(data, len) }
        };
        Some(match ffi::sqlite3_value_type(value) {
            ffi::SQLITE_INTEGER => ValueRef::Integer(ffi::sqlite3_value_int64(value)),
            ffi::SQLITE_FLOAT => ValueRef::Real(ffi::sqlite3_value_double(value)),
            ffi::SQLITE_TEXT => ValueRef::Text(bytes(ffi::sqlite3_value_text(value))),
            ffi::SQLITE_BLOB => ValueRef::Blob(bytes(ffi::sqlite3_value_blob(value).cast::<u8>())),
            _ => ValueRef::Null,
        })
    }
}
