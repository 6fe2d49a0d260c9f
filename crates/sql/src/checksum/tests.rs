use super::*;
use crate::{Apply, Db, WriteRequest};

fn request(statements: &[&str]) -> WriteRequest {
    WriteRequest::of(statements)
}

/// Runs `statements` on `db` and applies the record at `index`.
fn write(db: &mut Db, index: Lsn, statements: &[&str]) {
    let speculation = db.execute(&[request(statements)]).unwrap();
    for result in speculation.results.concat() {
        assert!(!result.is_error(), "{result:?}");
    }
    db.apply(&[Apply { term: 1, index, record: Some(&speculation.record), membership: None }])
        .unwrap();
}

/// Every chunk of `table` on `conn`, `limit` rows at a time: (rows, checksum) each.
fn all_chunks(conn: &Connection, table: &str, limit: u64) -> Vec<(u64, String)> {
    let mut from = None;
    let mut out = Vec::new();
    loop {
        let c = chunk(conn, table, from.as_deref(), limit, false).unwrap();
        out.push((c.rows, c.checksum.clone()));
        if c.done {
            return out;
        }
        from = c.last_key;
    }
}

#[test]
fn values_are_encoded_by_type_exactly() {
    let mut out = Vec::new();
    encode(&mut out, ValueRef::Integer(1));
    encode(&mut out, ValueRef::Real(1.0));
    encode(&mut out, ValueRef::Text(b"1"));
    encode(&mut out, ValueRef::Blob(b"1"));
    encode(&mut out, ValueRef::Null);
    assert_eq!(
        hex(&out),
        concat!(
            "01",
            "0000000000000001",
            "02",
            "3ff0000000000000",
            "03",
            "0000000000000001",
            "31",
            "04",
            "0000000000000001",
            "31",
            "00"
        )
    );
    // Keys round-trip through their hex form.
    let key = hex(&out);
    let values = decode_key(&key).unwrap();
    assert_eq!(values.len(), 5);
    assert_eq!(describe_key(&key), "(1, 1.0, '1', X'31', NULL)");
    assert!(decode_key("01ff").is_err());
    assert!(decode_key("zz").is_err());
}

#[test]
fn chunks_cover_every_row_and_tell_types_apart() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Db::open(&dir.path().join("a")).unwrap();
    let mut b = Db::open(&dir.path().join("b")).unwrap();
    let schema = [
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v)",
        "CREATE TABLE w (k TEXT, n INTEGER, v, PRIMARY KEY (k, n)) WITHOUT ROWID",
    ];
    write(&mut a, 1, &schema);
    write(&mut b, 1, &schema);
    let rows: Vec<String> = (0..25)
        .map(|i| format!("INSERT INTO t VALUES ({i}, 'x{i}')"))
        .chain((0..25).map(|i| format!("INSERT INTO w VALUES ('k{}', {i}, {i})", i % 3)))
        .collect();
    let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
    write(&mut a, 2, &rows);
    write(&mut b, 2, &rows);
    // The same value as INTEGER on one side and REAL on the other.
    write(&mut a, 3, &["INSERT INTO t VALUES (100, 1)"]);
    write(&mut b, 3, &["INSERT INTO t VALUES (100, 1.0)"]);

    let read = |db: &Db| {
        let conn = Connection::open(db.path()).unwrap();
        conn.execute_batch("BEGIN").unwrap();
        conn
    };
    let (ra, rb) = (read(&a), read(&b));
    assert_eq!(tables(&ra).unwrap(), vec!["sqlite_schema", "t", "w"]);
    assert_eq!(all_chunks(&ra, SCHEMA_TABLE, 10), all_chunks(&rb, SCHEMA_TABLE, 10));
    assert_eq!(all_chunks(&ra, "w", 7), all_chunks(&rb, "w", 7));
    let w = all_chunks(&ra, "w", 7);
    assert_eq!(w.iter().map(|c| c.0).collect::<Vec<_>>(), vec![7, 7, 7, 4]);
    let (ta, tb) = (all_chunks(&ra, "t", 10), all_chunks(&rb, "t", 10));
    assert_eq!(ta.iter().map(|c| c.0).sum::<u64>(), 26);
    assert_eq!(ta[..2], tb[..2], "the first 20 rows agree");
    assert_ne!(ta[2], tb[2], "the chunk holding 1 and 1.0 differs");

    // The detail of the differing chunk names the row.
    let first = chunk(&ra, "t", None, 20, false).unwrap();
    let da = chunk(&ra, "t", first.last_key.as_deref(), 20, true).unwrap().detail.unwrap();
    let db_ = chunk(&rb, "t", first.last_key.as_deref(), 20, true).unwrap().detail.unwrap();
    let differing: Vec<String> =
        da.iter().zip(&db_).filter(|(x, y)| x != y).map(|(x, _)| describe_key(&x.0)).collect();
    assert_eq!(differing, vec!["100"]);

    // Tables a check does not cover.
    for table in ["_keel_meta", "nope", "sqlite_stat1"] {
        assert!(
            matches!(chunk(&ra, table, None, 10, false), Err(Error::InvalidInput(_))),
            "{table}"
        );
    }
}

#[test]
fn a_pin_takes_its_snapshot_inside_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("db")).unwrap();
    write(&mut db, 1, &["CREATE TABLE t (id INTEGER PRIMARY KEY)"]);
    let pins = db.pins();
    assert_eq!(pins.pin(1), Err(PinError::Passed { lsn: 1, applied: 1 }));
    pins.pin(3).unwrap();
    pins.pin(3).unwrap(); // asking again is fine
    pins.pin(4).unwrap();
    // Entries 2..=5 arrive in one batch; the pins see the state after 3 and after 4.
    let records: Vec<_> = (2..=5)
        .map(|i| db.execute(&[request(&[&format!("INSERT INTO t VALUES ({i})")])]).unwrap().record)
        .collect();
    // Each record was speculated against the state before any of them: distinct rows, so
    // they apply one after the other.
    let entries: Vec<Apply<'_>> = records
        .iter()
        .zip(2..)
        .map(|(r, index)| Apply { term: 1, index, record: Some(r), membership: None })
        .collect();
    db.apply(&entries).unwrap();
    let count = |s: &Snapshot| -> i64 {
        s.lock().unwrap().query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap()
    };
    let at3 = pins.wait(3, Duration::from_secs(1)).unwrap();
    let at4 = pins.wait(4, Duration::from_secs(1)).unwrap();
    assert_eq!((count(&at3), count(&at4)), (2, 3));
    // A pin that arrives too late, or one never made, says so; a pin not reached times out.
    assert_eq!(pins.pin(5), Err(PinError::Passed { lsn: 5, applied: 5 }));
    assert!(matches!(pins.wait(9, Duration::ZERO), Err(PinError::Gone { lsn: 9, .. })));
    pins.pin(9).unwrap();
    assert!(matches!(
        pins.wait(9, Duration::from_millis(10)),
        Err(PinError::NotReached { lsn: 9, applied: 5, .. })
    ));
    pins.release(3);
    assert!(matches!(pins.wait(3, Duration::ZERO), Err(PinError::Gone { .. })));
}
