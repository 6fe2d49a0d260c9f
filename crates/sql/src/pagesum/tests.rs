use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use test_case::test_case;

use super::*;
use crate::image::tests::write;
use crate::{Apply, Db, Statement, StatementResult};

/// The value the test rows carry in row 500, found in the file to damage it.
const NEEDLE: &str = "needle-0123456789abcdef";

/// Fills table `t` with 1000 rows of about 100 bytes over a few records; row 500 holds
/// [`NEEDLE`]. Returns the next free index.
fn fill(db: &mut Db, mut index: u64) -> u64 {
    write(db, index, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)");
    index += 1;
    for chunk in 0..10 {
        let values: Vec<String> = (chunk * 100..(chunk + 1) * 100)
            .map(|i| {
                let v = if i == 500 {
                    NEEDLE.to_string()
                } else {
                    format!("row-{i:04}-{}", "x".repeat(90))
                };
                format!("({i}, '{v}')")
            })
            .collect();
        write(db, index, &format!("INSERT INTO t VALUES {}", values.join(", ")));
        index += 1;
    }
    index
}

/// The live database file of a fresh directory.
fn live_file(dir: &Path) -> PathBuf {
    dir.join(crate::generation::file_name(1))
}

/// Flips one bit in the middle of [`NEEDLE`] in the closed database file at `path`, whose
/// `-wal` must be gone (checkpointed into the file).
fn flip_needle(path: &Path) {
    assert!(!wal_file(path).exists(), "the row must be in the main file");
    let mut bytes = fs::read(path).unwrap();
    let at = bytes.windows(NEEDLE.len()).position(|w| w == NEEDLE.as_bytes()).unwrap();
    bytes[at + 10] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

fn wal_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// A plain read-write connection through the registered VFS.
fn open_plain(path: &Path) -> Connection {
    register().unwrap();
    Connection::open(path).unwrap()
}

fn extended_code(error: &rusqlite::Error) -> Option<c_int> {
    match error {
        rusqlite::Error::SqliteFailure(e, _) => Some(e.extended_code),
        _ => None,
    }
}

#[test_case(512)]
#[test_case(4096)]
#[test_case(65536)]
fn a_checksum_covers_every_byte_and_the_offset(size: usize) {
    let mut page: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let sum = checksum(&page, 4096);
    let at = size - 8;
    page[at..].copy_from_slice(&sum);
    assert!(verifies(&page, 4096));
    assert!(!verifies(&page, 8192), "the same bytes at another offset");
    for byte in [0, size / 2 - 1, size / 2, at - 1, at, size - 1] {
        page[byte] ^= 0x80;
        assert!(!verifies(&page, 4096), "a flip at {byte} of {size}");
        page[byte] ^= 0x80;
    }
}

#[test]
fn new_databases_reserve_eight_bytes_and_every_page_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = live_file(&dir.path().join("db"));
    let mut db = Db::open(&dir.path().join("db")).unwrap();
    fill(&mut db, 1);
    let image = dir.path().join("image");
    db.image_source().write_image(&image).unwrap();
    drop(db);
    for file in [&path, &image] {
        let bytes = fs::read(file).unwrap();
        assert_eq!(bytes[20], RESERVE, "{}", file.display());
        assert!(bytes.len() / 4096 > 10, "{} pages", bytes.len() / 4096);
        assert_eq!(damaged_pages(file).unwrap(), Vec::<u64>::new(), "{}", file.display());
    }
    // Every page read back through SQLite verifies.
    let conn = open_plain(&path);
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let rows: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 1000);
}

/// A copy into a new file through a small page cache writes pages before page 1 (cache spills),
/// copied from the `-wal` file with whatever their reserved bytes held: they get their
/// checksums once page 1 says the file is checked.
#[test]
fn pages_spilled_before_page_one_get_their_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("db")).unwrap();
    fill(&mut db, 1);
    // Still open: the rows are in the -wal file, not yet checkpointed.
    assert!(wal_file(&live_file(&dir.path().join("db"))).metadata().unwrap().len() > 40_000);
    let source = open_plain(&live_file(&dir.path().join("db")));
    let copy = dir.path().join("copy");
    let mut target = open_plain(&copy);
    target.execute_batch("PRAGMA cache_size = 2").unwrap();
    rusqlite::backup::Backup::new(&source, &mut target).unwrap().step(-1).unwrap();
    drop(target);
    let bytes = fs::read(&copy).unwrap();
    assert_eq!(bytes[20], RESERVE);
    assert!(bytes.len() / 4096 > 10, "{} pages", bytes.len() / 4096);
    assert_eq!(damaged_pages(&copy).unwrap(), Vec::<u64>::new());
    drop(db);
}

#[test]
fn a_flipped_byte_in_a_row_fails_its_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("db")).unwrap();
    fill(&mut db, 1);
    drop(db);
    let path = live_file(&dir.path().join("db"));
    flip_needle(&path);
    assert_eq!(damaged_pages(&path).unwrap().len(), 1);

    let conn = open_plain(&path);
    // Rows on other pages read as ever.
    let v: String = conn.query_row("SELECT v FROM t WHERE id = 1", [], |r| r.get(0)).unwrap();
    assert!(v.starts_with("row-0001"));
    let before = failures();
    let error = conn.query_row("SELECT v FROM t WHERE id = 500", [], |r| r.get::<_, String>(0));
    assert_eq!(extended_code(&error.unwrap_err()), Some(ffi::SQLITE_IOERR_DATA));
    assert!(failures() > before);
    // quick_check names the page it cannot read, e.g. "Tree 6 page 21: unable to get the
    // page. error code=8202".
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).unwrap();
    assert!(check.contains(&format!("error code={}", ffi::SQLITE_IOERR_DATA)), "{check}");
    drop(conn);

    // Through Keel: the database opens, and a read of the row answers an error naming the damage.
    let db = Db::open(&dir.path().join("db")).unwrap();
    let readers = db.readers(1).unwrap();
    let results =
        readers.query(&[Statement::new("SELECT v FROM t WHERE id = 500")], false).unwrap();
    match &results[0] {
        StatementResult::Error(message) => assert_eq!(message, crate::error::DAMAGED),
        other => panic!("read the damaged row: {other:?}"),
    }
    let results = readers.query(&[Statement::new("SELECT v FROM t WHERE id = 2")], false).unwrap();
    assert!(!results[0].is_error(), "{results:?}");
}

/// A flipped bit in the header's reserved-bytes count would turn checking off for the whole
/// file; page 1 still ends in its checksum, so the damage is found instead.
#[test]
fn a_damaged_header_does_not_turn_checking_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("db")).unwrap();
    fill(&mut db, 1);
    drop(db);
    let path = live_file(&dir.path().join("db"));
    assert!(!wal_file(&path).exists(), "page 1 must be in the main file");
    let mut bytes = fs::read(&path).unwrap();
    assert_eq!(bytes[20], RESERVE);
    bytes[20] ^= 0x08;
    fs::write(&path, bytes).unwrap();

    let conn = open_plain(&path);
    let error = conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0));
    assert_eq!(extended_code(&error.unwrap_err()), Some(ffi::SQLITE_IOERR_DATA));
}

/// A follower whose copy of a page is damaged stops applying, with an error naming the damage,
/// when an entry changes a row on that page.
#[test]
fn applying_to_a_damaged_page_is_corruption_named_as_damage() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Db::open(&dir.path().join("a")).unwrap();
    let mut follower = Db::open(&dir.path().join("b")).unwrap();
    let next = fill(&mut leader, 1);
    assert_eq!(fill(&mut follower, 1), next);
    drop(follower);
    flip_needle(&live_file(&dir.path().join("b")));
    let mut follower = Db::open(&dir.path().join("b")).unwrap();

    let record = write(&mut leader, next, "UPDATE t SET v = 'changed' WHERE id = 500");
    let entry = Apply { term: 1, index: next, record: Some(&record), membership: None };
    let error = follower.apply(&[entry]).unwrap_err();
    assert!(matches!(error, crate::Error::Corrupt(_)), "{error:?}");
    assert!(error.is_deterministic());
    assert!(error.to_string().contains(crate::error::DAMAGED), "{error}");
    assert_eq!(follower.applied().unwrap().map(|a| a.index), Some(next - 1));
}

#[test]
fn an_image_of_a_damaged_database_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("db")).unwrap();
    fill(&mut db, 1);
    drop(db);
    flip_needle(&live_file(&dir.path().join("db")));
    let db = Db::open(&dir.path().join("db")).unwrap();
    let error = db.image_source().write_image(&dir.path().join("image")).unwrap_err();
    assert!(error.to_string().contains(crate::error::DAMAGED), "{error}");
    assert!(error.is_deterministic());
}

#[test]
fn wal_checkpoints_and_reopens_keep_every_page_verifying() {
    let dir = tempfile::tempdir().unwrap();
    let path = live_file(&dir.path().join("db"));
    let mut db = Db::open(&dir.path().join("db")).unwrap();
    let readers = db.readers(2).unwrap();
    let mut index = fill(&mut db, 1);
    // More than SQLite's automatic checkpoint (1000 pages) in the WAL, in many transactions,
    // with reads between them.
    for round in 0..40 {
        let sql = format!(
            "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 100) \
             INSERT INTO t (v) SELECT printf('%0500d', n) FROM s; \
             UPDATE t SET v = v || '{round}' WHERE id % 97 = {round}"
        );
        write(&mut db, index, &sql);
        index += 1;
        let results = readers.query(&[Statement::new("SELECT sum(length(v)) FROM t")], false);
        assert!(!results.unwrap()[0].is_error());
    }
    db.connection().query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    assert_eq!(damaged_pages(&path).unwrap(), Vec::<u64>::new());
    write(&mut db, index, "DELETE FROM t WHERE id % 3 = 0");
    drop(readers);
    drop(db);
    assert_eq!(fs::read(&path).unwrap()[20], RESERVE);
    assert_eq!(damaged_pages(&path).unwrap(), Vec::<u64>::new());
    let db = Db::open(&dir.path().join("db")).unwrap();
    let conn = db.connection();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let rows: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, (0..5000).filter(|id| id % 3 != 0).count() as i64);
}

/// A database without reserved bytes (made before page checksums) works as before, unchecked;
/// a `VACUUM` gives it checksums.
#[test]
fn unchecked_databases_work_and_a_vacuum_converts_them() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    fs::create_dir(&db_dir).unwrap();
    fs::write(db_dir.join("CURRENT"), format!("{}\n", crate::generation::file_name(1))).unwrap();
    let path = live_file(&db_dir);
    let conn = open_plain(&path);
    conn.execute_batch("CREATE TABLE old (v TEXT); INSERT INTO old VALUES ('kept')").unwrap();
    drop(conn);
    assert_eq!(fs::read(&path).unwrap()[20], 0);

    let mut db = Db::open(&db_dir).unwrap();
    let next = fill(&mut db, 1);
    drop(db);
    assert_eq!(fs::read(&path).unwrap()[20], 0, "an existing database keeps its layout");
    flip_needle(&path);
    // Unchecked: the flipped value is read as if it were the data.
    let conn = open_plain(&path);
    let v: String = conn.query_row("SELECT v FROM t WHERE id = 500", [], |r| r.get(0)).unwrap();
    assert_ne!(v, NEEDLE);
    conn.execute("UPDATE t SET v = ?1 WHERE id = 500", [NEEDLE]).unwrap();
    drop(conn);

    let mut db = Db::open(&db_dir).unwrap();
    let vacuum = wal::Record { ops: vec![wal::Op::Vacuum], requests: Vec::new() };
    db.apply(&[Apply { term: 1, index: next, record: Some(&vacuum), membership: None }]).unwrap();
    write(&mut db, next + 1, "INSERT INTO t (v) VALUES ('after')");
    drop(db);
    assert_eq!(fs::read(&path).unwrap()[20], RESERVE);
    assert_eq!(damaged_pages(&path).unwrap(), Vec::<u64>::new());
    flip_needle(&path);
    let conn = open_plain(&path);
    let error = conn.query_row("SELECT v FROM t WHERE id = 500", [], |r| r.get::<_, String>(0));
    assert_eq!(extended_code(&error.unwrap_err()), Some(ffi::SQLITE_IOERR_DATA));
    let v: String = conn.query_row("SELECT v FROM old", [], |r| r.get(0)).unwrap();
    assert_eq!(v, "kept");
}

/// A user's file that another tool edited after a Keel backup gave it reserved bytes loads: a
/// load reads it without verifying pages, while Keel's own opens would refuse the edited page.
#[test]
fn a_file_edited_by_another_tool_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("db")).unwrap();
    fill(&mut db, 1);
    let image = dir.path().join("backup.sqlite");
    db.image_source().write_image(&image).unwrap();
    drop(db);
    let flags = rusqlite::OpenFlags::default();
    let other =
        Connection::open_with_flags_and_vfs(&image, flags, unchecked_vfs().unwrap()).unwrap();
    other.execute("UPDATE t SET v = 'edited' WHERE id = 500", []).unwrap();
    drop(other);
    // The row's page, and page 1 (its change counter).
    assert_eq!(damaged_pages(&image).unwrap().len(), 2);
    let checked = open_plain(&image);
    let error = checked.query_row("SELECT v FROM t WHERE id = 500", [], |r| r.get::<_, String>(0));
    assert_eq!(extended_code(&error.unwrap_err()), Some(ffi::SQLITE_IOERR_DATA));
    drop(checked);
    let mut load = crate::load::FileLoad::open(&image).unwrap();
    let mut statements = Vec::new();
    while let Some(batch) = load.next_batch().unwrap() {
        statements.extend(batch);
    }
    let edited = statements.iter().filter(|s| format!("{:?}", s.params).contains("edited"));
    assert_eq!(edited.count(), 1, "the edited row is loaded");
}
