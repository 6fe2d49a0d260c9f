//! Page checksums: a SQLite VFS shim that keeps a checksum in every page of a database file,
//! so a node notices when its disk hands back other bytes than it wrote (bit rot).
//!
//! SQLite has no page checksums of its own: a flipped byte inside a row's payload passes
//! `PRAGMA quick_check`, and the node serves the flipped value and hashes it into table checks
//! as if it were the data. This module is SQLite's "checksum VFS shim" technique
//! (<https://sqlite.org/cksumvfs.html>), written over `rusqlite::ffi`:
//!
//! * A database keeps 8 *reserved bytes* at the end of every page (header byte 20 = 8), which
//!   SQLite never uses. New Keel databases get them before their first write
//!   ([`reserve_for_checksums`], called by `Db::connect`); a `VACUUM` on the apply connection,
//!   which asks for them too, gives them to an older database.
//! * [`register`] installs, once per process, a VFS named `keel-pagesum` as SQLite's default,
//!   wrapping the previous default (the unix VFS) and forwarding every method to it. Only files
//!   opened as a main database (`SQLITE_OPEN_MAIN_DB`) get this module's file methods; journals,
//!   `-wal` files and temp files are opened by the lower VFS as they are.
//! * Checking is on for a file whose header (offset 0, "SQLite format 3\0") says 8 reserved
//!   bytes (a page 1 whose header says otherwise, but which verifies with 8 there, has a
//!   damaged header, and fails like a damaged page). The flag is read from the file when it is opened, taken from every read or write of
//!   offset 0, and read again from the file while it is off whenever a read lock is taken or a
//!   checkpoint starts (so a database converted by `VACUUM` on another connection is checked
//!   from then on, and no connection checkpoints pages into it without checksums). A file
//!   that was empty gets the checksums of the pages SQLite wrote before page 1 when page 1
//!   arrives saying it is checked (SQLite may spill any page of its cache first: the backup
//!   API into a new image file does).
//! * `xWrite` of a whole page (a power of two of at least 512 bytes) while checking is on
//!   stores [`checksum`] of the page's first `n - 8` bytes and its offset in the last 8, in
//!   SQLite's buffer (SQLite owns it for the call and never reads the reserved bytes).
//! * `xRead` of a whole page while checking is on verifies it; on a mismatch it logs the file
//!   and the offset (`tracing` at error level and `sqlite3_log`), counts it ([`failures`]) and
//!   fails the read with `SQLITE_IOERR_DATA`, which `crate::error` names as damage of the
//!   database file, never as a transient I/O error.
//! * Memory-mapped I/O is off for main database files (`xFetch` hands out no pointer, so every
//!   page goes through `xRead`), and `SQLITE_IOCAP_SUBPAGE_READ` is cleared, so SQLite reads
//!   whole pages only (overflow pages included).
//!
//! The checksum is two CRC-32C (hardware-accelerated on x86-64 and aarch64): one of the page
//! offset and the first half of the page, one of the second half. Mixing the offset in makes a
//! page written or read at the wrong place fail too. One page costs one pass over 4 KiB, which
//! is small next to the system call that moves it.
//!
//! ## What it does not cover
//!
//! * Pages in the `-wal` file. They are written with whatever the reserved bytes held and are
//!   not checked when read from there; they get their checksum when a checkpoint copies them
//!   into the main file, and are checked whenever they are read from it afterwards. SQLite's
//!   own WAL frame checksums cover a torn or damaged frame at recovery (the frame and everything
//!   after it are dropped), not one damaged after a recovery.
//! * Databases with 0 reserved bytes (created before this module, or by other tools): they
//!   work as before, unchecked, until a `VACUUM` converts them.
//! * Repair. A damaged page is reported, never fixed: the node's copy is rebuilt from the
//!   others (`keel admin rebuild`).
//! * Files opened by other processes without the shim (the `sqlite3` shell) can read a checked
//!   database, but pages they write carry no checksum and then fail here.
//!
//! ## Safety
//!
//! Every `unsafe` function here is called by SQLite with the pointers its VFS contract
//! promises: `file` points to `szOsFile` bytes that SQLite allocated for the open file and
//! keeps until after `xClose`; our `File` header sits at its start and the lower VFS's file
//! right after it (`lower_file`); buffers are valid for `amount` bytes. A `sqlite3_file` is
//! used by one connection at a time (SQLite's locking of the connection), so the header's
//! fields need no synchronization. The `sqlite3_vfs` is leaked: SQLite keeps the pointer forever.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::mem::size_of;
use std::ptr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::ffi;

use crate::error::{Error, Result};

/// The name this module's VFS registers under.
pub const VFS_NAME: &CStr = c"keel-pagesum";

/// How many reserved bytes per page a checked database has: the checksum.
pub const RESERVE: u8 = 8;

/// The first 16 bytes of every SQLite database file.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// How many page reads failed their checksum in this process (for status and tests).
static FAILURES: AtomicU64 = AtomicU64::new(0);

/// How many page reads failed their checksum since the process started.
pub fn failures() -> u64 {
    FAILURES.load(Ordering::Relaxed)
}

/// Registers the checksumming VFS as SQLite's default, once per process; later calls return
/// the first call's outcome. Every connection opened afterwards without naming a VFS uses it;
/// connections opened before keep the VFS they have. Call it before opening any database.
pub fn register() -> Result<()> {
    static OUTCOME: OnceLock<std::result::Result<(), c_int>> = OnceLock::new();
    // SAFETY: `install` runs once (OnceLock), and only calls SQLite's thread-safe VFS registry.
    match OUTCOME.get_or_init(|| unsafe { install() }) {
        Ok(()) => Ok(()),
        Err(code) => Err(Error::Sqlite(rusqlite::Error::SqliteFailure(
            ffi::Error::new(*code),
            Some("cannot register the page-checksum VFS".into()),
        ))),
    }
}

/// The name of the VFS under this one (the default before [`register`]): opening a file with it
/// reads pages without verifying them. For files that are not Keel's databases (a user's file
/// to load, which another tool may have edited after a Keel backup gave it reserved bytes).
pub fn unchecked_vfs() -> Result<&'static CStr> {
    register()?;
    // SAFETY: `register` succeeded, so `install` stored the lower VFS, which lives forever.
    let lower = unsafe { &*LOWER.get().expect("set by install").0 };
    // SAFETY: a registered VFS's name is a NUL-terminated string that lives as long as it.
    Ok(unsafe { CStr::from_ptr(lower.zName) })
}

/// The lower VFS, set once by `install`.
static LOWER: OnceLock<Lower> = OnceLock::new();

/// A pointer to the lower VFS, which SQLite never frees: shareable between threads.
struct Lower(*const ffi::sqlite3_vfs);
// SAFETY: the pointer is only read, and SQLite's VFS objects are immutable once registered.
unsafe impl Send for Lower {}
// SAFETY: as above.
unsafe impl Sync for Lower {}

/// Asks for [`RESERVE`] reserved bytes per page on `conn`'s main database. Takes effect when
/// the database is created (an empty file) or rebuilt by `VACUUM`; a database with content
/// keeps its layout otherwise (SQLite ignores the request then).
pub fn reserve_for_checksums(conn: &rusqlite::Connection) -> Result<()> {
    let mut reserve = c_int::from(RESERVE);
    // SAFETY: the handle is valid while `conn` is borrowed; SQLITE_FCNTL_RESERVE_BYTES reads
    // and writes the int behind the pointer, which lives across the call.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_RESERVE_BYTES,
            (&raw mut reserve).cast(),
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(Error::Sqlite(rusqlite::Error::SqliteFailure(
            ffi::Error::new(rc),
            Some("cannot reserve bytes for page checksums".into()),
        )));
    }
    Ok(())
}

/// The checksum of a whole page at `offset`: `page` without its last 8 bytes.
pub fn checksum(page: &[u8], offset: u64) -> [u8; 8] {
    let data = &page[..page.len() - usize::from(RESERVE)];
    let (first, second) = data.split_at(data.len() / 2);
    let low = crc32c::crc32c_append(crc32c::crc32c(&offset.to_le_bytes()), first);
    let high = crc32c::crc32c(second);
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&low.to_le_bytes());
    out[4..].copy_from_slice(&high.to_le_bytes());
    out
}

/// Whether the first bytes of a database file say its pages carry checksums.
pub fn is_checked(header: &[u8]) -> bool {
    header.len() >= 100 && header[..16] == MAGIC[..] && header[20] == RESERVE
}

/// Whether `page`, page 1 of a file whose header says it is not checked, verifies once its
/// reserved-bytes count is set back to 8: then that byte was damaged (a page of an unchecked
/// file ends in its checksum only by a chance of one in 2^64).
fn header_damaged(page: &[u8]) -> bool {
    if is_checked(page) || page[..16] != MAGIC[..] {
        return false;
    }
    let mut restored = page.to_vec();
    restored[20] = RESERVE;
    verifies(&restored, 0)
}

/// Whether `amount` bytes is a whole page: a power of two of at least 512.
fn is_page(amount: c_int) -> bool {
    amount >= 512 && (amount & (amount - 1)) == 0
}

/// Whether the page at `offset` (with its checksum in the last 8 bytes) verifies.
fn verifies(page: &[u8], offset: u64) -> bool {
    page[page.len() - usize::from(RESERVE)..] == checksum(page, offset)
}

/// The byte offsets of the pages of the database file at `path` that fail their checksum, read
/// straight from the file (no SQLite): for tests and tools. Empty for a file whose header does
/// not say it is checked.
pub fn damaged_pages(path: &std::path::Path) -> std::io::Result<Vec<u64>> {
    let bytes = std::fs::read(path)?;
    if !is_checked(&bytes) {
        return Ok(Vec::new());
    }
    let size = page_size(&bytes);
    let mut damaged = Vec::new();
    for (i, page) in bytes.chunks_exact(size).enumerate() {
        let offset = (i * size) as u64;
        if !verifies(page, offset) {
            damaged.push(offset);
        }
    }
    Ok(damaged)
}

/// The per-file header this VFS puts in front of the lower VFS's file.
#[repr(C)]
struct File {
    /// SQLite's base: `pMethods` points to [`METHODS`].
    base: ffi::sqlite3_file,
    /// Whether the file's pages carry checksums (header byte 20 is 8).
    checked: bool,
    /// Whether the file had no header (shorter than 100 bytes) when last looked at: every page
    /// in it was then written through this handle since, in the transaction creating the
    /// database, maybe before page 1 said they carry checksums (SQLite may spill any page of
    /// its cache first; the backup API into an empty file does). When page 1 arrives saying
    /// so, those pages get their checksums ([`seal`]).
    fresh: bool,
    /// The file's name, for messages (SQLite keeps it valid until `xClose`).
    name: *const c_char,
}

/// The size of [`File`], which is a multiple of 8, so the lower file after it is aligned.
const HEADER: usize = size_of::<File>();
const _: () = assert!(HEADER.is_multiple_of(8));

/// The lower VFS's file, right after our header.
///
/// # Safety
/// `file` is a file this VFS opened as a main database.
unsafe fn lower_file(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    // SAFETY: SQLite allocated `szOsFile` = HEADER + the lower size bytes for it.
    unsafe { file.cast::<u8>().add(HEADER).cast() }
}

/// The lower file's methods.
///
/// # Safety
/// `file` is a file this VFS opened as a main database, not yet closed.
unsafe fn lower_methods(file: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
    // SAFETY: the lower VFS set its methods when it opened the file; they are static.
    unsafe { &*(*lower_file(file)).pMethods }
}

/// The VFS this one wraps, kept in `pAppData`.
///
/// # Safety
/// `vfs` is this module's VFS.
unsafe fn lower_vfs(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    // SAFETY: `install` stored the lower VFS there, and VFSes are never freed.
    unsafe { (*vfs).pAppData.cast() }
}

/// Registers the VFS (see [`register`]).
///
/// # Safety
/// Called once per process.
unsafe fn install() -> std::result::Result<(), c_int> {
    // SAFETY: sqlite3_vfs_find initializes SQLite if needed and returns a registered VFS or
    // null.
    let lower = unsafe { ffi::sqlite3_vfs_find(ptr::null()) };
    if lower.is_null() {
        return Err(ffi::SQLITE_ERROR);
    }
    // SAFETY: `lower` is a registered VFS, valid forever.
    let base = unsafe { &*lower };
    let _ = LOWER.set(Lower(lower));
    let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
        iVersion: base.iVersion.min(3),
        szOsFile: HEADER as c_int + base.szOsFile,
        mxPathname: base.mxPathname,
        pNext: ptr::null_mut(),
        zName: VFS_NAME.as_ptr(),
        pAppData: lower.cast(),
        xOpen: Some(open),
        xDelete: Some(vfs_delete),
        xAccess: Some(vfs_access),
        xFullPathname: Some(vfs_full_pathname),
        xDlOpen: Some(vfs_dl_open),
        xDlError: Some(vfs_dl_error),
        xDlSym: Some(vfs_dl_sym),
        xDlClose: Some(vfs_dl_close),
        xRandomness: Some(vfs_randomness),
        xSleep: Some(vfs_sleep),
        xCurrentTime: Some(vfs_current_time),
        xGetLastError: Some(vfs_get_last_error),
        xCurrentTimeInt64: base.xCurrentTimeInt64.and(Some(vfs_current_time_int64)),
        xSetSystemCall: base.xSetSystemCall.and(Some(vfs_set_system_call)),
        xGetSystemCall: base.xGetSystemCall.and(Some(vfs_get_system_call)),
        xNextSystemCall: base.xNextSystemCall.and(Some(vfs_next_system_call)),
    }));
    // SAFETY: `vfs` is leaked, so it outlives every connection; 1 makes it the default.
    match unsafe { ffi::sqlite3_vfs_register(vfs, 1) } {
        ffi::SQLITE_OK => Ok(()),
        code => Err(code),
    }
}

/// `xOpen`: main database files get [`METHODS`] around the lower file; others are the lower
/// VFS's files as they are.
unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: see the module's safety section for every pointer used below.
    unsafe {
        let lower = lower_vfs(vfs);
        let lower_open = (*lower).xOpen.expect("a VFS has xOpen");
        if flags & ffi::SQLITE_OPEN_MAIN_DB == 0 {
            return lower_open(lower, name, file, flags, out_flags);
        }
        file.cast::<File>().write(File {
            base: ffi::sqlite3_file { pMethods: ptr::null() },
            checked: false,
            fresh: false,
            name,
        });
        let sub = lower_file(file);
        (*sub).pMethods = ptr::null();
        let rc = lower_open(lower, name, sub, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            if let Some(close) = (*sub).pMethods.as_ref().and_then(|m| m.xClose) {
                close(sub);
            }
            return rc;
        }
        (*file).pMethods = &METHODS;
        refresh(file);
        ffi::SQLITE_OK
    }
}

/// Reads the header from the file and sets whether it is checked (a file too short to have a
/// header is not).
///
/// # Safety
/// `file` is an open main database file of this VFS.
unsafe fn refresh(file: *mut ffi::sqlite3_file) {
    let mut header = [0u8; 100];
    // SAFETY: see the module's safety section; the buffer is 100 bytes.
    unsafe {
        let sub = lower_file(file);
        let read = lower_methods(file).xRead.expect("a file has xRead");
        let rc = read(sub, header.as_mut_ptr().cast(), 100, 0);
        let this = &mut *file.cast::<File>();
        this.checked = rc == ffi::SQLITE_OK && is_checked(&header);
        this.fresh = rc == ffi::SQLITE_IOERR_SHORT_READ;
    }
}

/// `xClose`.
unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: see the module's safety section.
    unsafe {
        let sub = lower_file(file);
        let rc = (lower_methods(file).xClose.expect("a file has xClose"))(sub);
        (*file).pMethods = ptr::null();
        rc
    }
}

/// `xRead`: verifies whole pages of a checked file.
unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: see the module's safety section; `buf` holds `amount` bytes.
    unsafe {
        let rc = (lower_methods(file).xRead.expect("a file has xRead"))(
            lower_file(file),
            buf,
            amount,
            offset,
        );
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let bytes = std::slice::from_raw_parts(buf.cast::<u8>(), amount as usize);
        let this = &mut *file.cast::<File>();
        if offset == 0 && bytes.len() >= 100 {
            // A checked file never stops being one (reserved bytes only grow, and Keel asks
            // for 8): page 1 whose header says otherwise, yet ends in the checksum it would
            // have with 8 there, had its header damaged on disk, which would otherwise turn
            // checking off unnoticed.
            if is_page(amount) && header_damaged(bytes) {
                report(this, offset);
                return ffi::SQLITE_IOERR_DATA;
            }
            this.checked = is_checked(bytes);
        }
        if this.checked && is_page(amount) && !verifies(bytes, offset as u64) {
            report(this, offset);
            return ffi::SQLITE_IOERR_DATA;
        }
        ffi::SQLITE_OK
    }
}

/// Logs and counts a page that failed its checksum.
fn report(file: &File, offset: i64) {
    FAILURES.fetch_add(1, Ordering::Relaxed);
    let name = if file.name.is_null() {
        "?".into()
    } else {
        // SAFETY: SQLite keeps the name valid while the file is open.
        unsafe { CStr::from_ptr(file.name) }.to_string_lossy()
    };
    tracing::error!(
        file = %name,
        offset,
        "page checksum mismatch: the database file is damaged on this node's storage"
    );
    if let Ok(message) =
        std::ffi::CString::new(format!("page checksum mismatch at offset {offset} of {name}"))
    {
        // SAFETY: a format string with one %s and a NUL-terminated argument.
        unsafe { ffi::sqlite3_log(ffi::SQLITE_IOERR_DATA, c"%s".as_ptr(), message.as_ptr()) };
    }
}

/// `xWrite`: stores the checksum of whole pages of a checked file.
unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: see the module's safety section; `buf` holds `amount` bytes, and SQLite hands
    // it over for the call: it is a page of its cache or a buffer of its own, never
    // read-only memory (memory-mapped pages are never written through xWrite here, since
    // `fetch` hands none out). The technique writes the checksum into it in place.
    unsafe {
        let this = &mut *file.cast::<File>();
        let mut unsealed = None;
        if offset == 0 && amount >= 100 {
            let header = std::slice::from_raw_parts(buf.cast::<u8>(), 100);
            if is_checked(header) && !this.checked && this.fresh {
                unsealed = Some(page_size(header));
            }
            this.checked = is_checked(header);
            this.fresh = false;
        }
        if this.checked && is_page(amount) {
            let page = std::slice::from_raw_parts_mut(buf.cast::<u8>().cast_mut(), amount as usize);
            let sum = checksum(page, offset as u64);
            let at = page.len() - usize::from(RESERVE);
            page[at..].copy_from_slice(&sum);
        }
        let rc = (lower_methods(file).xWrite.expect("a file has xWrite"))(
            lower_file(file),
            buf,
            amount,
            offset,
        );
        match unsealed {
            Some(size) if rc == ffi::SQLITE_OK => seal(file, size),
            _ => rc,
        }
    }
}

/// The page size a database header gives (bytes 16 and 17; 1 means 65536).
fn page_size(header: &[u8]) -> usize {
    match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        size => usize::from(size),
    }
}

/// Stores the checksum of every page after page 1 of a fresh file (see [`File::fresh`]),
/// reading each back from the lower file. Pages smaller than 512 bytes or of a size that is not
/// a power of two are not SQLite's: nothing is done.
///
/// # Safety
/// `file` is an open main database file of this VFS.
unsafe fn seal(file: *mut ffi::sqlite3_file, size: usize) -> c_int {
    let Ok(amount) = c_int::try_from(size) else { return ffi::SQLITE_OK };
    if !is_page(amount) {
        return ffi::SQLITE_OK;
    }
    // SAFETY: see the module's safety section; `page` holds `amount` bytes.
    unsafe {
        let sub = lower_file(file);
        let methods = lower_methods(file);
        let mut end: ffi::sqlite3_int64 = 0;
        let rc = (methods.xFileSize.expect("a file has xFileSize"))(sub, &raw mut end);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let mut page = vec![0u8; size];
        let mut offset = size as ffi::sqlite3_int64;
        while offset + size as ffi::sqlite3_int64 <= end {
            let rc = (methods.xRead.expect("a file has xRead"))(
                sub,
                page.as_mut_ptr().cast(),
                amount,
                offset,
            );
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            let sum = checksum(&page, offset as u64);
            page[size - usize::from(RESERVE)..].copy_from_slice(&sum);
            let rc = (methods.xWrite.expect("a file has xWrite"))(
                sub,
                page.as_ptr().cast(),
                amount,
                offset,
            );
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            offset += size as ffi::sqlite3_int64;
        }
        ffi::SQLITE_OK
    }
}

/// `xLock`: while the file is not known to be checked, reads its header again when a read
/// lock is taken (another connection may have converted it).
unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: see the module's safety section.
    unsafe {
        let rc = (lower_methods(file).xLock.expect("a file has xLock"))(lower_file(file), level);
        if rc == ffi::SQLITE_OK
            && level == ffi::SQLITE_LOCK_SHARED
            && !(*file.cast::<File>()).checked
        {
            refresh(file);
        }
        rc
    }
}

/// `xFileControl`: forwarded; at the start of a checkpoint, a file not known to be checked
/// reads its header again, so no page is copied into a checked file without its checksum.
unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: see the module's safety section.
    unsafe {
        if op == ffi::SQLITE_FCNTL_CKPT_START && !(*file.cast::<File>()).checked {
            refresh(file);
        }
        (lower_methods(file).xFileControl.expect("a file has xFileControl"))(
            lower_file(file),
            op,
            arg,
        )
    }
}

/// `xDeviceCharacteristics`: the lower file's, without sub-page reads (every read of a page
/// must be whole to be verified).
unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: see the module's safety section.
    unsafe {
        let lower = lower_methods(file).xDeviceCharacteristics.expect("a file has it");
        lower(lower_file(file)) & !ffi::SQLITE_IOCAP_SUBPAGE_READ
    }
}

/// `xFetch`: no memory-mapped pages, so every page is read (and verified) through `xRead`.
unsafe extern "C" fn fetch(
    _file: *mut ffi::sqlite3_file,
    _offset: ffi::sqlite3_int64,
    _amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: SQLite passes a valid pointer for the result.
    unsafe { *out = ptr::null_mut() };
    ffi::SQLITE_OK
}

/// Defines file methods that forward to the lower file unchanged.
macro_rules! forward_file {
    ($($name:ident => $method:ident ( $($arg:ident : $ty:ty),* );)*) => {$(
        #[doc = concat!("`", stringify!($method), "`, forwarded to the lower file.")]
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> c_int {
            // SAFETY: see the module's safety section.
            unsafe {
                match lower_methods(file).$method {
                    Some(method) => method(lower_file(file), $($arg),*),
                    None => ffi::SQLITE_IOERR,
                }
            }
        }
    )*};
}

forward_file! {
    truncate => xTruncate(size: ffi::sqlite3_int64);
    sync => xSync(flags: c_int);
    file_size => xFileSize(size: *mut ffi::sqlite3_int64);
    unlock => xUnlock(level: c_int);
    check_reserved_lock => xCheckReservedLock(out: *mut c_int);
    sector_size => xSectorSize();
    shm_map => xShmMap(region: c_int, size: c_int, extend: c_int, out: *mut *mut c_void);
    shm_lock => xShmLock(offset: c_int, n: c_int, flags: c_int);
    shm_unmap => xShmUnmap(delete: c_int);
    unfetch => xUnfetch(offset: ffi::sqlite3_int64, page: *mut c_void);
}

/// `xShmBarrier`, forwarded to the lower file.
unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: see the module's safety section.
    unsafe {
        if let Some(barrier) = lower_methods(file).xShmBarrier {
            barrier(lower_file(file));
        }
    }
}

/// The methods of a main database file opened by this VFS.
static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

/// Defines VFS methods that forward to the lower VFS unchanged.
macro_rules! forward_vfs {
    ($($name:ident => $method:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty;)*) => {$(
        #[doc = concat!("`", stringify!($method), "`, forwarded to the lower VFS.")]
        unsafe extern "C" fn $name(vfs: *mut ffi::sqlite3_vfs, $($arg: $ty),*) -> $ret {
            // SAFETY: see the module's safety section; `install` only sets the optional
            // methods the lower VFS has.
            unsafe {
                let lower = lower_vfs(vfs);
                ((*lower).$method.expect(concat!("the lower VFS has ", stringify!($method))))(
                    lower, $($arg),*
                )
            }
        }
    )*};
}

forward_vfs! {
    vfs_delete => xDelete(name: *const c_char, sync: c_int) -> c_int;
    vfs_access => xAccess(name: *const c_char, flags: c_int, out: *mut c_int) -> c_int;
    vfs_full_pathname => xFullPathname(name: *const c_char, n: c_int, out: *mut c_char) -> c_int;
    vfs_dl_open => xDlOpen(name: *const c_char) -> *mut c_void;
    vfs_dl_error => xDlError(n: c_int, out: *mut c_char) -> ();
    vfs_dl_sym => xDlSym(handle: *mut c_void, symbol: *const c_char)
        -> Option<unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char)>;
    vfs_dl_close => xDlClose(handle: *mut c_void) -> ();
    vfs_randomness => xRandomness(n: c_int, out: *mut c_char) -> c_int;
    vfs_sleep => xSleep(micros: c_int) -> c_int;
    vfs_current_time => xCurrentTime(out: *mut f64) -> c_int;
    vfs_get_last_error => xGetLastError(n: c_int, out: *mut c_char) -> c_int;
    vfs_current_time_int64 => xCurrentTimeInt64(out: *mut ffi::sqlite3_int64) -> c_int;
    vfs_set_system_call => xSetSystemCall(name: *const c_char, call: ffi::sqlite3_syscall_ptr)
        -> c_int;
    vfs_get_system_call => xGetSystemCall(name: *const c_char) -> ffi::sqlite3_syscall_ptr;
    vfs_next_system_call => xNextSystemCall(name: *const c_char) -> *const c_char;
}

#[cfg(test)]
mod tests;
