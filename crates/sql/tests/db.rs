//! Tests of `Db` and `Readers` that are not about SQL semantics: positions, snapshots, the
//! thread-safety contract, and sessions never changing the database.

use std::path::Path;

use sql::{Apply, Db, Readers, Statement, StatementResult, WriteRequest};
use wal::Applied;

/// One request with the given statements.
fn request(statements: &[&str]) -> WriteRequest {
    WriteRequest::of(statements)
}

/// Executes statements on `leader` and applies the record to every database in `dbs` at
/// `index`.
fn write(leader: &mut Db, dbs: &mut [&mut Db], index: u64, statements: &[&str]) {
    let speculation = leader.execute(&[request(statements)]).unwrap();
    for result in speculation.results.concat() {
        assert!(!result.is_error(), "{result:?}");
    }
    let entry = Apply { term: 1, index, record: Some(&speculation.record), membership: None };
    leader.apply(&[entry]).unwrap();
    for db in dbs {
        db.apply(&[entry]).unwrap();
    }
}

/// Counts the rows of `t` through a reader pool.
fn count(readers: &Readers) -> serde_json::Value {
    let results = readers.query(&[Statement::new("SELECT count(*) FROM t")], false).unwrap();
    match &results[0] {
        StatementResult::Rows { values, .. } => values[0][0].clone(),
        other => panic!("{other:?}"),
    }
}

/// A common table expression `s(x)` counting from 1 to `n`.
fn series(n: u64) -> String {
    format!("WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < {n})")
}

#[test]
fn contract() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<Db>();
    send_sync::<Readers>();
    send_sync::<sql::ImageSource>();
    fn clone<T: Clone>() {}
    clone::<sql::ImageSource>();
}

#[test]
fn positions() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("db")).unwrap();
    assert_eq!(db.applied().unwrap(), None);
    db.apply(&[]).unwrap();
    assert_eq!(db.applied().unwrap(), None);
    // Blank and membership entries carry no record; the last membership given wins and is
    // kept by later entries without one.
    let blank = Apply { term: 1, index: 1, record: None, membership: None };
    let members = Apply { term: 1, index: 2, record: None, membership: Some("{\"voters\":[1]}") };
    let next = Apply { term: 2, index: 3, record: None, membership: None };
    db.apply(&[blank, members]).unwrap();
    assert_eq!(
        db.applied().unwrap(),
        Some(Applied { term: 1, index: 2, membership: Some("{\"voters\":[1]}".into()) })
    );
    db.apply(&[next]).unwrap();
    assert_eq!(
        db.applied().unwrap(),
        Some(Applied { term: 2, index: 3, membership: Some("{\"voters\":[1]}".into()) })
    );
    // The position survives reopening.
    drop(db);
    let db = Db::open(&dir.path().join("db")).unwrap();
    assert_eq!(db.applied().unwrap().map(|a| a.index), Some(3));
}

#[test]
fn execute_never_changes_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("db")).unwrap();
    write(&mut db, &mut [], 1, &["CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v)"]);
    let before = db.dump().unwrap();
    let speculation = db
        .execute(&[
            request(&[
                "INSERT INTO t (v) VALUES (1)",
                "CREATE TABLE u (x)",
                "PRAGMA user_version = 5",
            ]),
            WriteRequest { transaction: true, ..request(&["DELETE FROM t", "nonsense"]) },
        ])
        .unwrap();
    assert!(!speculation.record.ops.is_empty());
    assert_eq!(db.dump().unwrap(), before);
    let version: Vec<StatementResult> =
        db.readers(1).unwrap().query(&[Statement::new("PRAGMA user_version")], false).unwrap();
    assert!(matches!(&version[0], StatementResult::Rows { values, .. } if values[0][0] == 0));
}

/// Clients may write anything into `sqlite_sequence`, as SQLite allows: values of any type,
/// NULL names, repeated names. The speculation answers, and a replica ends up equal.
#[test]
fn odd_sqlite_sequence_contents_replicate_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Db::open(&dir.path().join("leader")).unwrap();
    let mut replica = Db::open(&dir.path().join("replica")).unwrap();
    write(
        &mut leader,
        &mut [&mut replica],
        1,
        &["CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v)"],
    );
    write(&mut leader, &mut [&mut replica], 2, &["INSERT INTO t (v) VALUES (1)"]);
    let steps: [&[&str]; 5] = [
        &["UPDATE sqlite_sequence SET seq = 'u'"],
        &["INSERT INTO sqlite_sequence VALUES (NULL, 2.5), ('t', x'00ff'), (7, NULL)"],
        &["UPDATE sqlite_sequence SET seq = CAST(x'61ff' AS TEXT) WHERE name IS NULL"],
        &["INSERT INTO t (v) VALUES (2)", "DELETE FROM sqlite_sequence WHERE name = 7"],
        &["DELETE FROM sqlite_sequence WHERE name IS NULL OR seq = 'u'"],
    ];
    for (i, statements) in steps.iter().enumerate() {
        write(&mut leader, &mut [&mut replica], 3 + i as u64, statements);
        assert_eq!(replica.dump().unwrap(), leader.dump().unwrap(), "after {statements:?}");
    }
}

#[test]
fn apply_is_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Db::open(&dir.path().join("leader")).unwrap();
    let mut replica = Db::open(&dir.path().join("replica")).unwrap();
    write(&mut leader, &mut [&mut replica], 1, &["CREATE TABLE t (id INTEGER PRIMARY KEY)"]);
    let good = leader.execute(&[request(&["INSERT INTO t VALUES (1)"])]).unwrap().record;
    let clash = leader.execute(&[request(&["INSERT INTO t VALUES (2)"])]).unwrap().record;
    // Entry 3 conflicts on the replica (row 2 exists there already), so entry 2 must not be
    // applied either.
    let local = leader.execute(&[request(&["INSERT INTO t VALUES (2)"])]).unwrap().record;
    replica.apply(&[Apply { term: 1, index: 2, record: Some(&local), membership: None }]).unwrap();
    let before = replica.dump().unwrap();
    let entries = [
        Apply { term: 1, index: 3, record: Some(&good), membership: None },
        Apply { term: 1, index: 4, record: Some(&clash), membership: None },
    ];
    match replica.apply(&entries) {
        Err(sql::Error::Corrupt(message)) => assert!(message.contains("entry 4"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(replica.dump().unwrap(), before);
    assert_eq!(replica.applied().unwrap().map(|a| a.index), Some(2));
}

#[test]
fn image_and_install() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Db::open(&dir.path().join("leader")).unwrap();
    let mut follower = Db::open(&dir.path().join("follower")).unwrap();
    let readers = follower.readers(2).unwrap();
    write(&mut leader, &mut [], 1, &["CREATE TABLE t (a, b)"]);
    write(&mut leader, &mut [], 2, &["INSERT INTO t VALUES (1, 2), (3, 4), (5, 6)"]);
    write(&mut leader, &mut [], 3, &["DELETE FROM t WHERE a = 1"]);
    write(&mut leader, &mut [], 4, &["INSERT INTO t VALUES (7, 8)"]);

    // The image is one file in rollback-journal mode, with the leader's rows (rowids included)
    // and position.
    let image = dir.path().join("follower").join("image.part");
    std::fs::write(&image, b"stale").unwrap();
    let applied = leader.image_source().write_image(&image).unwrap();
    assert_eq!(applied, leader.applied().unwrap());
    assert!(!Path::new(&format!("{}-wal", image.display())).exists());
    assert_eq!(sql::dump(&image).unwrap(), leader.dump().unwrap());

    // The follower's readers see the installed contents, rowids included, and the position.
    let before = readers.query(&[Statement::new("SELECT count(*) FROM t")], false).unwrap();
    assert_eq!(before, vec![StatementResult::Error("no such table: t".into())]);
    let old_path = follower.path().to_path_buf();
    follower.install(&image).unwrap();
    assert!(!image.exists(), "the image was renamed into place");
    assert!(!old_path.exists(), "the old generation is deleted");
    assert_ne!(follower.path(), old_path);
    assert_eq!(count(&readers), 3);
    assert_eq!(follower.dump().unwrap(), leader.dump().unwrap());
    assert_eq!(follower.applied().unwrap(), leader.applied().unwrap());

    // The installed database is in WAL mode (readers keep their snapshot isolation).
    let conn = rusqlite::Connection::open(follower.path()).unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
    assert_eq!(mode, "wal");
    drop(conn);

    // Replication continues from the image: changesets address the same rowids.
    write(&mut leader, &mut [&mut follower], 5, &["UPDATE t SET b = 0 WHERE a = 7"]);
    assert_eq!(follower.dump().unwrap(), leader.dump().unwrap());

    // Reopening finds the installed generation; the directory holds nothing else.
    let expected = follower.dump().unwrap();
    let live = follower.path().to_path_buf();
    drop((follower, readers));
    let follower = Db::open(&dir.path().join("follower")).unwrap();
    assert_eq!(follower.path(), live);
    assert_eq!(follower.dump().unwrap(), expected);
    assert_eq!(follower.applied().unwrap().map(|a| a.index), Some(5));
}

#[test]
fn bad_images_leave_the_database_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("db")).unwrap();
    write(&mut db, &mut [], 1, &["CREATE TABLE t (a)", "INSERT INTO t VALUES (1)"]);
    let before = db.dump().unwrap();
    let path = db.path().to_path_buf();
    let image = dir.path().join("image");
    std::fs::write(&image, b"not a database").unwrap();
    match db.install(&image) {
        Err(sql::Error::InvalidInput(message)) => {
            assert!(message.contains("not a SQLite"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // A plain SQLite file without Keel's metadata.
    std::fs::remove_file(&image).unwrap();
    rusqlite::Connection::open(&image).unwrap().execute_batch("CREATE TABLE u (x)").unwrap();
    match db.install(&image) {
        Err(sql::Error::InvalidInput(message)) => {
            assert!(message.contains("_keel_meta"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(db.install(&dir.path().join("missing")), Err(sql::Error::Io(_))));
    assert_eq!(db.path(), path);
    assert_eq!(db.dump().unwrap(), before);
    assert_eq!(count(&db.readers(1).unwrap()), 1);
}

#[test]
fn images_are_consistent_while_writes_go_on() {
    // A writer keeps applying one row per entry while images are written from another
    // thread, without the Db: every image holds exactly the rows of the position it reports.
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("db")).unwrap();
    write(&mut db, &mut [], 1, &["CREATE TABLE t (id INTEGER PRIMARY KEY, pad)"]);
    write(
        &mut db,
        &mut [],
        2,
        &[&format!("{} INSERT INTO t (pad) SELECT zeroblob(1000) FROM s", series(3000))],
    );
    let source = db.image_source();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let imager = {
        let stop = stop.clone();
        let dir = dir.path().to_path_buf();
        std::thread::spawn(move || {
            let mut images = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || images < 3 {
                let image = dir.join(format!("image-{images}"));
                let applied = source.write_image(&image).unwrap().unwrap();
                let conn = rusqlite::Connection::open(&image).unwrap();
                let rows: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
                // Entry 2 inserted 3000 rows, every later entry one.
                assert_eq!(rows as u64, 3000 + applied.index - 2, "image {images}");
                images += 1;
            }
            images
        })
    };
    for index in 3..200 {
        write(&mut db, &mut [], index, &["INSERT INTO t (pad) VALUES (1)"]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(imager.join().unwrap() >= 3);
}

#[test]
fn reads_follow_installs() {
    // Readers query in a loop while the database is replaced by images of two other
    // databases in turn: every answer is one of the databases' whole contents, never an
    // error, and after each install returns, reads see the installed one.
    let dir = tempfile::tempdir().unwrap();
    let mut sources = Vec::new();
    for (i, rows) in [10u64, 20].into_iter().enumerate() {
        let mut source = Db::open(&dir.path().join(format!("source-{i}"))).unwrap();
        write(&mut source, &mut [], 1, &["CREATE TABLE t (id INTEGER PRIMARY KEY)"]);
        let insert = format!("{} INSERT INTO t SELECT x FROM s", series(rows));
        write(&mut source, &mut [], 2, &[&insert]);
        sources.push((source, rows));
    }
    let mut db = Db::open(&dir.path().join("db")).unwrap();
    write(&mut db, &mut [], 1, &["CREATE TABLE t (id INTEGER PRIMARY KEY)"]);
    let readers = std::sync::Arc::new(db.readers(3).unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (readers, stop) = (readers.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n = count(&readers).as_u64().unwrap();
                    assert!([0, 10, 20].contains(&n), "{n}");
                }
            })
        })
        .collect();
    for round in 0..20 {
        let (source, rows) = &sources[round % 2];
        let image = db.dir().join("incoming.part");
        source.image_source().write_image(&image).unwrap();
        db.install(&image).unwrap();
        assert_eq!(count(&readers).as_u64(), Some(*rows));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    // Only the live generation is left in the directory.
    let mut names: Vec<String> = std::fs::read_dir(db.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with("-wal") && !name.ends_with("-shm"))
        .collect();
    names.sort();
    assert_eq!(names, vec!["CURRENT".to_string(), "db-000021.sqlite".to_string()]);
}

#[test]
fn readers_run_concurrently_with_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut db = Db::open(&path).unwrap();
    write(&mut db, &mut [], 1, &["CREATE TABLE t (id INTEGER PRIMARY KEY)"]);
    let readers = std::sync::Arc::new(db.readers(2).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let readers = std::sync::Arc::clone(&readers);
            std::thread::spawn(move || {
                let mut last = 0;
                for _ in 0..50 {
                    let n = count(&readers).as_i64().unwrap();
                    assert!(n >= last, "reads went backwards");
                    last = n;
                }
            })
        })
        .collect();
    for i in 0..50 {
        write(&mut db, &mut [], 2 + i, &[&format!("INSERT INTO t VALUES ({i})")]);
    }
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(count(&readers), 50);
}

/// A request with the given statements and request id.
fn with_id(id: &str, statements: &[&str]) -> WriteRequest {
    WriteRequest { request_id: Some(id.to_string()), ..request(statements) }
}

/// The stored request answers, `(id, lsn)` in lsn and id order, read around `Db`.
fn stored_ids(db: &Db) -> Vec<(String, i64)> {
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    let mut stmt = conn.prepare("SELECT id, lsn FROM _keel_requests ORDER BY lsn, id").unwrap();
    stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// Executes `requests` on `leader` and applies the record at `index` to `leader` and `others`.
fn write_requests(
    leader: &mut Db,
    others: &mut [&mut Db],
    index: u64,
    requests: &[WriteRequest],
) -> sql::Speculation {
    let speculation = leader.execute(requests).unwrap();
    let entry = Apply { term: 1, index, record: Some(&speculation.record), membership: None };
    leader.apply(&[entry]).unwrap();
    for db in others {
        db.apply(&[entry]).unwrap();
    }
    speculation
}

#[test]
fn retries_are_answered_from_any_replica() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Db::open(&dir.path().join("leader")).unwrap();
    let mut replica = Db::open(&dir.path().join("replica")).unwrap();
    write(&mut leader, &mut [&mut replica], 1, &["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"]);

    let first = write_requests(
        &mut leader,
        &mut [&mut replica],
        2,
        &[with_id("abc", &["INSERT INTO t (v) VALUES ('x')"])],
    );
    assert_eq!(first.duplicates, vec![None]);
    assert_eq!(first.record.requests.len(), 1);
    assert_eq!(first.record.requests[0].id, "abc");
    assert_eq!(sql::answers::decode(&first.record.requests[0].results).unwrap(), first.results[0]);
    assert_eq!(stored_ids(&leader), vec![("abc".to_string(), 2)]);
    assert_eq!(stored_ids(&replica), stored_ids(&leader));

    // The replica, become leader, answers the retry from its own table: same results (time
    // included), the original lsn, nothing to replicate.
    let retry = replica.execute(&[with_id("abc", &["INSERT INTO t (v) VALUES ('x')"])]).unwrap();
    assert_eq!(retry.duplicates, vec![Some(2)]);
    assert_eq!(retry.results, first.results);
    assert_eq!(retry.record, wal::Record::default());
    assert_eq!(count(&replica.readers(1).unwrap()), 1);
}

#[test]
fn request_outcomes_are_looked_up_on_any_replica() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Db::open(&dir.path().join("leader")).unwrap();
    let mut replica = Db::open(&dir.path().join("replica")).unwrap();
    let readers = replica.readers(1).unwrap();
    let unknown = readers.request_answer("abc").unwrap();
    assert_eq!(unknown, sql::answers::Lookup { answer: None, applied: 0 });
    assert_eq!(unknown.oldest_kept(), 1);

    write(&mut leader, &mut [&mut replica], 1, &["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"]);
    let first = write_requests(
        &mut leader,
        &mut [&mut replica],
        2,
        &[with_id("abc", &["INSERT INTO t (v) VALUES ('x')"]), request(&["DELETE FROM t"])],
    );
    let found = readers.request_answer("abc").unwrap();
    assert_eq!(found.answer, Some((2, first.results[0].clone())));
    assert_eq!(found.applied, 2);
    // A request without an id leaves nothing to look up; an unknown id is unknown at 2.
    assert_eq!(readers.request_answer("other").unwrap().answer, None);
    // The window of kept answers follows the applied position.
    let later = sql::answers::Lookup { answer: None, applied: sql::answers::RETENTION + 10 };
    assert_eq!(later.oldest_kept(), 10);
}

#[test]
fn repeats_within_a_group_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("db")).unwrap();
    write(&mut db, &mut [], 1, &["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"]);
    let speculation = write_requests(
        &mut db,
        &mut [],
        2,
        &[
            with_id("a", &["INSERT INTO t (v) VALUES (1)"]),
            request(&["INSERT INTO t (v) VALUES (2)"]),
            with_id("a", &["INSERT INTO t (v) VALUES (3)"]),
        ],
    );
    assert_eq!(speculation.duplicates, vec![None, None, None]);
    assert_eq!(speculation.results[2], speculation.results[0]);
    let ids: Vec<&str> = speculation.record.requests.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec!["a"]);
    assert_eq!(count(&db.readers(1).unwrap()), 2);
    assert_eq!(stored_ids(&db), vec![("a".to_string(), 2)]);

    // A later group repeating a stored id twice answers both from the table.
    let again =
        db.execute(&[with_id("a", &["DELETE FROM t"]), with_id("a", &["DELETE FROM t"])]).unwrap();
    assert_eq!(again.duplicates, vec![Some(2), Some(2)]);
    assert_eq!(again.results, vec![speculation.results[0].clone(), speculation.results[0].clone()]);
    assert!(again.record.ops.is_empty() && again.record.requests.is_empty());
}

#[test]
fn failed_requests_keep_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("db")).unwrap();
    write(
        &mut db,
        &mut [],
        1,
        &["CREATE TABLE t (id INTEGER PRIMARY KEY)", "INSERT INTO t VALUES (1)"],
    );
    let failing = WriteRequest {
        transaction: true,
        ..with_id("f", &["INSERT INTO t VALUES (2)", "INSERT INTO t VALUES (1)"])
    };
    let first = write_requests(&mut db, &mut [], 2, std::slice::from_ref(&failing));
    assert!(first.record.ops.is_empty(), "the failed request changed nothing");
    assert_eq!(first.record.requests.len(), 1, "but its answer is replicated");
    assert_eq!(
        first.results[0][1],
        StatementResult::Error("UNIQUE constraint failed: t.id".to_string())
    );
    // Once the conflict is gone, the retry would succeed if it ran; it gets the stored error.
    write(&mut db, &mut [], 3, &["DELETE FROM t"]);
    let retry = db.execute(&[failing]).unwrap();
    assert_eq!(retry.duplicates, vec![Some(2)]);
    assert_eq!(retry.results, first.results);
}

#[test]
fn answers_depend_on_the_log_alone() {
    // The same entries applied in one call, one by one, or grouped otherwise leave the same
    // answers after each entry: pruning follows each entry's index, not the call.
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Db::open(&dir.path().join("leader")).unwrap();
    let create = leader.execute(&[request(&["CREATE TABLE t (id INTEGER PRIMARY KEY)"])]).unwrap();
    let create = Apply { term: 1, index: 1, record: Some(&create.record), membership: None };
    leader.apply(&[create]).unwrap();
    let records: Vec<wal::Record> = (0..4u64)
        .map(|i| {
            let request = with_id(&format!("r{i}"), &[&format!("INSERT INTO t VALUES ({i})")]);
            let record = leader.execute(&[request]).unwrap().record;
            leader
                .apply(&[Apply { term: 1, index: 2 + i, record: Some(&record), membership: None }])
                .unwrap();
            record
        })
        .collect();
    // Entries 2..=5 carry r0..r3; the blank entry at RETENTION + 3 prunes r0 (lsn 2 < 3).
    let mut entries: Vec<Apply<'_>> = (2..)
        .zip(&records)
        .map(|(index, record)| Apply { term: 1, index, record: Some(record), membership: None })
        .collect();
    let last = sql::answers::RETENTION + 3;
    entries.push(Apply { term: 1, index: last, record: None, membership: None });
    let ids = |names: &[(&str, i64)]| -> Vec<(String, i64)> {
        names.iter().map(|(id, lsn)| (id.to_string(), *lsn)).collect()
    };
    let expected = [
        ids(&[("r0", 2)]),
        ids(&[("r0", 2), ("r1", 3)]),
        ids(&[("r0", 2), ("r1", 3), ("r2", 4)]),
        ids(&[("r0", 2), ("r1", 3), ("r2", 4), ("r3", 5)]),
        ids(&[("r1", 3), ("r2", 4), ("r3", 5)]),
    ];
    for groups in [vec![5], vec![1, 1, 1, 1, 1], vec![2, 3], vec![4, 1]] {
        let mut replica = Db::open(&dir.path().join(format!("replica-{groups:?}"))).unwrap();
        replica.apply(&[create]).unwrap();
        let mut at = 0;
        for size in groups {
            replica.apply(&entries[at..at + size]).unwrap();
            at += size;
            assert_eq!(stored_ids(&replica), expected[at - 1], "after {at} entries");
        }
        assert_eq!(replica.applied().unwrap().map(|a| a.index), Some(last));
    }
}

#[test]
fn answers_travel_in_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Db::open(&dir.path().join("leader")).unwrap();
    let mut follower = Db::open(&dir.path().join("follower")).unwrap();
    write(&mut leader, &mut [], 1, &["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"]);
    let first = write_requests(
        &mut leader,
        &mut [],
        2,
        &[with_id("snap", &["INSERT INTO t (v) VALUES ('x')"])],
    );
    let image = dir.path().join("follower").join("image.part");
    leader.image_source().write_image(&image).unwrap();
    follower.install(&image).unwrap();
    let retry = follower.execute(&[with_id("snap", &["INSERT INTO t (v) VALUES ('x')"])]).unwrap();
    assert_eq!(retry.duplicates, vec![Some(2)]);
    assert_eq!(retry.results, first.results);
}

/// The `name` column of `results[i]`'s rows.
fn names_in(results: &[StatementResult], i: usize) -> Vec<String> {
    match &results[i] {
        StatementResult::Rows { values, .. } => {
            values.iter().map(|row| row[1].as_str().unwrap_or_default().to_string()).collect()
        }
        other => panic!("statement {i}: {other:?}"),
    }
}

/// Keel's tables stay out of client SQL on every path: a write that copies `sqlite_master`
/// (its masked text is what replicates, so the replica's copy is the same), a write request that
/// returns rows (`/db/request` on the leader), and the read pool (`/db/query`); reading them is
/// refused on each.
#[test]
fn bookkeeping_is_hidden_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Db::open(&dir.path().join("leader")).unwrap();
    let mut replica = Db::open(&dir.path().join("replica")).unwrap();
    write(
        &mut leader,
        &mut [&mut replica],
        1,
        &["CREATE TABLE t (a)", "CREATE TABLE copy AS SELECT type, name FROM main.sqlite_master"],
    );
    for db in [&leader, &replica] {
        let results = db
            .readers(1)
            .unwrap()
            .query(
                &[
                    Statement::new("SELECT type, name FROM copy ORDER BY name"),
                    Statement::new("SELECT * FROM sqlite_schema ORDER BY name"),
                    Statement::new("PRAGMA table_list"),
                    Statement::new("SELECT * FROM _keel_meta"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(names_in(&results, 0), ["t"]);
        assert_eq!(names_in(&results, 1), ["copy", "t"]);
        assert!(!names_in(&results, 2).iter().any(|n| n.starts_with("_keel_")), "{results:?}");
        assert_eq!(
            results[3],
            StatementResult::Error("_keel_meta is an internal table of Keel".into())
        );
    }
    let rows = |sql: &str| WriteRequest { rows: true, ..request(&[sql]) };
    let speculation = leader
        .execute(&[
            rows("SELECT * FROM sqlite_master ORDER BY name"),
            rows("SELECT * FROM _keel_requests"),
        ])
        .unwrap();
    assert_eq!(names_in(&speculation.results[0], 0), ["copy", "t"]);
    assert_eq!(
        speculation.results[1],
        [StatementResult::Error("_keel_requests is an internal table of Keel".into())]
    );
}

/// An entry at `index` in term 1 carrying `record`.
fn entry(index: u64, record: &wal::Record) -> Apply<'_> {
    Apply { term: 1, index, record: Some(record), membership: None }
}

#[test]
fn a_held_speculation_is_committed_by_the_apply_of_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Db::open(&dir.path().join("leader")).unwrap();
    let mut replica = Db::open(&dir.path().join("replica")).unwrap();
    write(&mut leader, &mut [&mut replica], 1, &["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"]);
    let readers = leader.readers(1).unwrap();

    let statements = ["INSERT INTO t (v) VALUES (random())", "INSERT INTO t (v) VALUES ('b')"];
    let held = leader.execute_held(&[request(&statements)], 1).unwrap();
    // Readers never see the open transaction.
    assert_eq!(count(&readers), 0);
    leader.apply(&[entry(2, &held.record)]).unwrap();
    replica.apply(&[entry(2, &held.record)]).unwrap();
    assert_eq!(leader.held_commits(), 1);
    assert_eq!(count(&readers), 2);
    assert_eq!(leader.applied().unwrap().map(|a| (a.term, a.index)), Some((1, 2)));
    // The leader kept its own rows (random() ran once), the replica applied the changeset.
    assert_eq!(leader.dump().unwrap(), replica.dump().unwrap());
}

#[test]
fn a_held_speculation_is_rolled_back_by_any_other_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Db::open(&dir.path().join("leader")).unwrap();
    let mut replica = Db::open(&dir.path().join("replica")).unwrap();
    write(&mut leader, &mut [&mut replica], 1, &["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"]);

    // A blank entry first (a new term's): the speculation is rolled back, and its record,
    // one index later than the speculation expected, is applied from its changesets.
    let held = leader.execute_held(&[request(&["INSERT INTO t (v) VALUES (1)"])], 1).unwrap();
    let blank = Apply { term: 2, index: 2, record: None, membership: None };
    leader.apply(&[blank]).unwrap();
    let moved = Apply { term: 2, ..entry(3, &held.record) };
    leader.apply(&[moved]).unwrap();
    replica.apply(&[blank, moved]).unwrap();
    assert_eq!(leader.held_commits(), 0);
    assert_eq!(leader.dump().unwrap(), replica.dump().unwrap());

    // Another record at the expected index (another leader's): rolled back, then applied.
    let held = leader.execute_held(&[request(&["INSERT INTO t (v) VALUES (2)"])], 2).unwrap();
    let other = replica.execute(&[request(&["INSERT INTO t (v) VALUES (3)"])]).unwrap();
    let other_entry = Apply { term: 2, ..entry(4, &other.record) };
    leader.apply(&[other_entry]).unwrap();
    replica.apply(&[other_entry]).unwrap();
    assert_eq!(leader.held_commits(), 0);
    assert_eq!(leader.dump().unwrap(), replica.dump().unwrap());
    assert!(leader.dump().unwrap().contains("rowid 2: 2, 3"), "{}", leader.dump().unwrap());
    // The held record in a different term than it was speculated for is not committed.
    drop(held);
    let held = leader.execute_held(&[request(&["INSERT INTO t (v) VALUES (5)"])], 2).unwrap();
    let late = Apply { term: 3, ..entry(5, &held.record) };
    leader.apply(&[late]).unwrap();
    replica.apply(&[late]).unwrap();
    assert_eq!(leader.held_commits(), 0);
    assert_eq!(leader.dump().unwrap(), replica.dump().unwrap());
}

#[test]
fn a_held_speculation_keeps_the_counters_clients_see() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Db::open(&dir.path().join("leader")).unwrap();
    write(&mut leader, &mut [], 1, &["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"]);
    let exec = |result: &StatementResult| match result {
        StatementResult::Exec { last_insert_id, rows_affected, .. } => {
            (*last_insert_id, *rows_affected)
        }
        other => panic!("{other:?}"),
    };
    // An UPDATE that matched nothing leaves 0 changes; the commit's own writes must not show.
    let mut index = 2;
    for (statements, expected) in [
        (&["INSERT INTO t (id, v) VALUES (7, 1)"][..], (7, 1)),
        (&["INSERT INTO t (id, v) VALUES (8, 1)", "UPDATE t SET v = 2 WHERE id = 99"][..], (8, 0)),
    ] {
        let held = leader.execute_held(&[request(statements)], 1).unwrap();
        assert_eq!(exec(held.results[0].last().unwrap()), expected, "{statements:?}");
        leader.apply(&[entry(index, &held.record)]).unwrap();
        index += 1;
        // A statement that writes no rows shows what the last client statement left.
        let next = leader.execute(&[request(&["CREATE INDEX IF NOT EXISTS i ON t (v)"])]).unwrap();
        assert_eq!(exec(&next.results[0][0]), expected, "after {statements:?}");
    }
    assert_eq!(leader.held_commits(), 2);
    // More than one change cannot be restored: such a speculation is not held.
    let many = leader
        .execute_held(
            &[request(&["UPDATE t SET v = 3"]), request(&["INSERT INTO t (v) VALUES (1), (2)"])],
            1,
        )
        .unwrap();
    assert_eq!(exec(&many.results[1][0]), (10, 2), "{:?}", many.results);
    leader.apply(&[entry(index, &many.record)]).unwrap();
    assert_eq!(leader.held_commits(), 2);
    let next = leader.execute(&[request(&["CREATE INDEX IF NOT EXISTS i ON t (v)"])]).unwrap();
    assert_eq!(exec(&next.results[0][0]).1, 2);
}

/// A group stacked on a held one (the writer pipelining): the first entry is deferred until
/// the second comes, then both commit at once; nothing shows before; the replica, applying
/// the changesets, ends up equal.
#[test]
fn stacked_speculations_commit_when_every_entry_has_come() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Db::open(&dir.path().join("leader")).unwrap();
    let mut replica = Db::open(&dir.path().join("replica")).unwrap();
    write(&mut leader, &mut [&mut replica], 1, &["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"]);
    let published = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = published.clone();
    leader.on_commit(move |position| seen.lock().unwrap().push(position.index));
    let readers = leader.readers(1).unwrap();

    for (first_alone, base) in [(true, 1), (false, 3)] {
        let a =
            leader.execute_held(&[request(&["INSERT INTO t (v) VALUES (random())"])], 1).unwrap();
        // The second sees the first's row: its changeset updates it.
        let b = leader
            .execute_stacked(
                &[request(&["UPDATE t SET v = v || 'b' WHERE id = last_insert_rowid()"])],
                1,
            )
            .unwrap()
            .expect("stacked on the held speculation");
        assert_eq!(
            b.results[0],
            a.results[0].iter().map(|_| b.results[0][0].clone()).collect::<Vec<_>>()
        );
        let (ea, eb) = (entry(base + 1, &a.record), entry(base + 2, &b.record));
        let before = count(&readers);
        if first_alone {
            leader.apply(&[ea]).unwrap();
            // Committed by Raft, deferred here: not visible, position unmoved.
            assert_eq!(count(&readers), before);
            assert_eq!(leader.applied().unwrap().map(|a| a.index), Some(base));
            leader.apply(&[eb]).unwrap();
        } else {
            leader.apply(&[ea, eb]).unwrap();
        }
        replica.apply(&[ea, eb]).unwrap();
        assert_eq!(leader.applied().unwrap().map(|a| a.index), Some(base + 2));
        assert_eq!(leader.dump().unwrap(), replica.dump().unwrap());
        assert_eq!(leader.position_hash(), replica.position_hash());
    }
    assert_eq!(leader.held_commits(), 4);
    assert_eq!(*published.lock().unwrap(), vec![3, 5]);
}

/// Whatever interrupts a stack (another entry between, the writer releasing it, a group that
/// cannot be held), every record ends up applied once, and the leader equals the replica.
#[test]
fn interrupted_stacks_fall_back_to_the_changesets() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Db::open(&dir.path().join("leader")).unwrap();
    let mut replica = Db::open(&dir.path().join("replica")).unwrap();
    write(&mut leader, &mut [&mut replica], 1, &["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"]);
    let insert = |v: i64| request(&[&*format!("INSERT INTO t (v) VALUES ({v})")]).clone();
    let stack = |leader: &mut Db, v: i64| {
        let a = leader.execute_held(&[insert(v)], 1).unwrap().record;
        let b = leader.execute_stacked(&[insert(v + 1)], 1).unwrap().expect("stacked").record;
        (a, b)
    };

    // A membership entry between the two: the first is applied from its record with it, the
    // second later from its own.
    let (a, b) = stack(&mut leader, 10);
    let members = Apply { term: 1, index: 3, record: None, membership: Some("{\"voters\":[1]}") };
    let entries = [entry(2, &a), members, entry(4, &b)];
    leader.apply(&entries[..1]).unwrap();
    leader.apply(&entries[1..2]).unwrap();
    assert_eq!(leader.applied().unwrap().map(|a| a.index), Some(3));
    leader.apply(&entries[2..]).unwrap();
    replica.apply(&entries).unwrap();
    assert_eq!(leader.dump().unwrap(), replica.dump().unwrap());

    // The writer releases the stack after the first entry came: it is applied at once.
    let (a, b) = stack(&mut leader, 20);
    leader.apply(&[entry(5, &a)]).unwrap();
    leader.release_held().unwrap();
    assert_eq!(leader.applied().unwrap().map(|a| a.index), Some(5));
    leader.apply(&[entry(6, &b)]).unwrap();
    replica.apply(&[entry(5, &a), entry(6, &b)]).unwrap();
    assert_eq!(leader.dump().unwrap(), replica.dump().unwrap());

    // A stacked group that changed nothing is undone and the stack stays.
    let a = leader.execute_held(&[insert(30)], 1).unwrap().record;
    let none = leader.execute_stacked(&[request(&["UPDATE t SET v = 0 WHERE id = 999"])], 1);
    assert!(none.unwrap().expect("stacked").record.ops.is_empty());
    // A stacked group leaving more than one change rolls the whole stack back; both records
    // are then applied from their changesets.
    let many =
        leader.execute_stacked(&[request(&["INSERT INTO t (v) VALUES (31), (32)"])], 1).unwrap();
    let many = many.expect("speculated").record;
    // Nothing is held any more to stack on.
    assert!(leader.execute_stacked(&[insert(33)], 1).unwrap().is_none());
    let commits = leader.held_commits();
    leader.apply(&[entry(7, &a), entry(8, &many)]).unwrap();
    replica.apply(&[entry(7, &a), entry(8, &many)]).unwrap();
    assert_eq!(leader.held_commits(), commits);
    assert_eq!(leader.dump().unwrap(), replica.dump().unwrap());

    // Reading the database (a dump) leaves a stack alone; a fresh speculation (another use of
    // the client connection) first applies what was deferred in it.
    let (a, b) = stack(&mut leader, 35);
    leader.apply(&[entry(9, &a)]).unwrap();
    let dumped = leader.dump().unwrap();
    assert_eq!(leader.applied().unwrap().map(|a| a.index), Some(8));
    let plain = leader.execute(&[request(&["SELECT 1"])]).unwrap();
    assert!(plain.record.ops.is_empty());
    assert_eq!(leader.applied().unwrap().map(|a| a.index), Some(9));
    assert_ne!(leader.dump().unwrap(), dumped);
    leader.apply(&[entry(10, &b)]).unwrap();
    replica.apply(&[entry(9, &a), entry(10, &b)]).unwrap();
    assert_eq!(leader.dump().unwrap(), replica.dump().unwrap());

    // Nothing to stack on in another term, or with nothing held.
    let a = leader.execute_held(&[insert(40)], 1).unwrap().record;
    assert!(leader.execute_stacked(&[insert(41)], 2).unwrap().is_none());
    leader.apply(&[entry(11, &a)]).unwrap();
    assert!(leader.execute_stacked(&[insert(42)], 1).unwrap().is_none());
    replica.apply(&[entry(11, &a)]).unwrap();
    assert_eq!(leader.dump().unwrap(), replica.dump().unwrap());
}

/// `optimize` fills in the planner's statistics on this node's copy, and waits while the
/// writer holds a speculation open.
#[test]
fn optimize_gathers_statistics_when_nothing_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("db")).unwrap();
    write(
        &mut db,
        &mut [],
        1,
        &["CREATE TABLE t (id INTEGER PRIMARY KEY, v)", "CREATE INDEX tv ON t (v)"],
    );
    write(
        &mut db,
        &mut [],
        2,
        &[&format!("{} INSERT INTO t (v) SELECT x % 7 FROM s", series(2000))],
    );
    let held = db.execute_held(&[request(&["INSERT INTO t (v) VALUES (1)"])], 1).unwrap();
    assert!(!db.optimize().unwrap(), "ran while a speculation was held");
    db.apply(&[entry(3, &held.record)]).unwrap();
    assert!(db.optimize().unwrap());
    let stats = db.readers(1).unwrap();
    let rows = stats
        .query(&[Statement::new("SELECT count(*) FROM sqlite_stat1 WHERE tbl = 't'")], false)
        .unwrap();
    assert!(
        matches!(&rows[0], StatementResult::Rows { values, .. } if values[0][0].as_i64() > Some(0)),
        "{rows:?}"
    );
}
