//! What page checksums cost: inserts 200,000 rows into a file database in WAL mode
//! (`synchronous = NORMAL`, 1,000 rows per transaction, as Keel's apply connection runs), then
//! reads them all back through a fresh connection, once through SQLite's own VFS with no
//! reserved bytes and once through `sql::pagesum` with checksums, alternating, three rounds.
//!
//! ```sh
//! cargo run --release -p sql --example pagesum_cost
//! ```

use std::time::{Duration, Instant};

use rusqlite::Connection;

/// Rows inserted per run.
const ROWS: usize = 200_000;
/// Rows per transaction.
const BATCH: usize = 1_000;

/// The time to insert [`ROWS`] rows and the time to read them back, in a new file in `dir`.
fn run(dir: &std::path::Path, checked: bool) -> (Duration, Duration) {
    let path = dir.join(if checked { "checked.db" } else { "plain.db" });
    let _ = std::fs::remove_file(&path);
    let open = || match checked {
        true => Connection::open(&path).unwrap(),
        false => Connection::open_with_flags_and_vfs(
            &path,
            rusqlite::OpenFlags::default(),
            sql::pagesum::unchecked_vfs().unwrap(),
        )
        .unwrap(),
    };
    let conn = open();
    if checked {
        sql::pagesum::reserve_for_checksums(&conn).unwrap();
    }
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, n INTEGER, pad BLOB)",
    )
    .unwrap();
    let started = Instant::now();
    for batch in 0..ROWS / BATCH {
        conn.execute_batch("BEGIN").unwrap();
        let mut insert = conn
            .prepare_cached("INSERT INTO t (name, n, pad) VALUES (?1, ?2, randomblob(64))")
            .unwrap();
        for i in 0..BATCH {
            let n = batch * BATCH + i;
            insert.execute((format!("user-{n}"), n as i64)).unwrap();
        }
        drop(insert);
        conn.execute_batch("COMMIT").unwrap();
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    let write = started.elapsed();
    drop(conn);
    let conn = open();
    let started = Instant::now();
    let sum: i64 = conn
        .query_row("SELECT sum(length(name) + n + length(pad)) FROM t", [], |r| r.get(0))
        .unwrap();
    assert!(sum > 0);
    let read = started.elapsed();
    let header = std::fs::read(&path).unwrap();
    assert_eq!(header[20], if checked { 8 } else { 0 });
    (write, read)
}

fn main() {
    sql::pagesum::register().unwrap();
    let dir = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();
    println!("{ROWS} rows, {BATCH} per transaction; insert + checkpoint, then a full scan");
    for round in 1..=3 {
        for checked in [false, true] {
            let (write, read) = run(dir.path(), checked);
            println!(
                "round {round} {:<9} insert {:>7.1} ms   scan {:>6.1} ms",
                if checked { "checked" } else { "unchecked" },
                write.as_secs_f64() * 1e3,
                read.as_secs_f64() * 1e3
            );
        }
    }
}
