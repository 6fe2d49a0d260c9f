//! Page checksums against real nodes: one byte of a row flipped in a stopped follower's
//! database file (bit rot) is never served. The restarted node answers a read of that row with
//! an error naming the damage and logs the file and offset; the other nodes serve the row as
//! written; and when an entry changes that row, the damaged node stops applying (and exits),
//! naming the damage, while the others apply it.

use std::path::{Path, PathBuf};

use integration_tests::{Level, TestCluster};
use serde_json::{Value, json};

/// The value of row 500, found in the file to damage it.
const NEEDLE: &str = "needle-0123456789abcdef";

/// The live database file of node `id` (`db/CURRENT` names it).
fn database_file(c: &TestCluster, id: u64) -> PathBuf {
    let db = c.data_dir(id).join("db");
    let current = std::fs::read_to_string(db.join("CURRENT")).expect("db/CURRENT");
    db.join(current.trim())
}

/// Flips one bit in the middle of [`NEEDLE`] in the database file at `path`.
fn flip_needle(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(NEEDLE.len())
        .position(|w| w == NEEDLE.as_bytes())
        .expect("the row is in the main database file (checkpointed)");
    bytes[at + 10] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// Row 500's value as node `id` serves it from its own copy.
fn row_500(c: &TestCluster, id: u64) -> Vec<Vec<Value>> {
    c.query(id, "SELECT v FROM t WHERE id = 500", Level::None).rows(0)
}

/// `store.sqlite3.page_checksum_failures` in node `id`'s `/status`.
fn checksum_failures(c: &TestCluster, id: u64) -> u64 {
    c.status(id).store.sqlite3.page_checksum_failures
}

#[test]
fn a_flipped_byte_in_a_followers_database_file_is_refused_not_served() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    c.execute_ok(leader, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]));
    let mut lsn = 0;
    for chunk in 0..10 {
        let inserts: Vec<Value> = (chunk * 100..(chunk + 1) * 100)
            .map(|i| {
                let v = if i == 500 {
                    NEEDLE.to_string()
                } else {
                    format!("row-{i}-{}", "x".repeat(90))
                };
                json!(["INSERT INTO t VALUES (?, ?)", i, v])
            })
            .collect();
        lsn = c.execute_ok(leader, Value::Array(inserts));
    }
    c.wait_all_applied(lsn);

    let victim = c.followers(leader)[0];
    let other = c.followers(leader).into_iter().find(|&id| id != victim).unwrap();
    c.stop(victim);
    let path = database_file(&c, victim);
    // A clean stop may leave the last writes in the -wal file; bit rot is about the database
    // file, so checkpoint them into it first, through Keel's VFS (which writes the checksums).
    sql::pagesum::register().unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    drop(conn);
    assert_eq!(sql::pagesum::damaged_pages(&path).unwrap(), Vec::<u64>::new());
    flip_needle(&path);
    assert_eq!(sql::pagesum::damaged_pages(&path).unwrap().len(), 1);
    c.restart(victim);

    // The damaged node answers an error naming the damage, never the flipped value.
    let answer = c.query(victim, "SELECT v FROM t WHERE id = 500", Level::None);
    let error = answer.error(0).unwrap_or_else(|| panic!("read the damaged row: {answer:?}"));
    assert!(error.contains("damaged: a page failed its checksum"), "{error}");
    assert!(error.contains("keel admin rebuild"), "{error}");
    // Rows on other pages are served as ever.
    let rows = c.query(victim, "SELECT v FROM t WHERE id = 1", Level::None).rows(0);
    assert_eq!(rows, vec![vec![json!(format!("row-1-{}", "x".repeat(90)))]]);
    // Its log names the file and the offset.
    let log = c.log(victim);
    let line = log
        .lines()
        .find(|line| line.contains("page checksum mismatch"))
        .unwrap_or_else(|| panic!("no log line names the damage:\n{log}"));
    assert!(line.contains(&path.display().to_string()) && line.contains("offset="), "{line}");
    // Its /status and /metrics count the failed read; the others count none.
    assert!(checksum_failures(&c, victim) >= 1, "node {victim} counts no failed page read");
    assert!(c.metric(victim, "keel_page_checksum_failures_total") >= 1.0);
    for id in [leader, other] {
        assert_eq!(checksum_failures(&c, id), 0, "node {id}");
    }
    // The others serve the row as written.
    for id in [leader, other] {
        assert_eq!(row_500(&c, id), vec![vec![json!(NEEDLE)]], "node {id}");
    }

    // An entry that changes the row: the damaged node cannot apply it and stops, saying why;
    // the others apply it.
    let lsn = c.execute_ok(leader, json!([["UPDATE t SET v = 'changed' WHERE id = 500"]]));
    let status = c.wait_exited(victim);
    assert!(!status.success(), "{status}");
    let log = c.log(victim);
    let stopping = log
        .lines()
        .find(|line| line.contains("cannot apply committed entries; stopping"))
        .unwrap_or_else(|| panic!("no log line says the node stopped applying:\n{log}"));
    assert!(stopping.contains("damaged: a page failed its checksum"), "{stopping}");
    c.wait_applied(other, lsn);
    for id in [leader, other] {
        assert_eq!(row_500(&c, id), vec![vec![json!("changed")]], "node {id}");
    }
    // Two of three voters still make a quorum.
    c.execute_ok(leader, json!(["INSERT INTO t (v) VALUES ('after')"]));
}
