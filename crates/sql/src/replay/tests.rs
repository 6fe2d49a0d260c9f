//! [`super::apply`] against SQLite's own apply: random writes on a source database, the
//! changeset applied both ways to identical copies, and the outcomes compared.

use rusqlite::Connection;

use super::{Shape, apply, handles, replay, shape};
use crate::session::{self, Session};

/// Tables of every shape a changeset can record: an INTEGER PRIMARY KEY with a UNIQUE column,
/// a rowid table without a key, a composite key WITHOUT ROWID, a generated column and an odd
/// name, and a text primary key on a rowid table.
const SCHEMA: &str = "
    CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT, c REAL UNIQUE);
    CREATE TABLE n (x, y, z);
    CREATE TABLE w (k1 TEXT, k2 INT, v BLOB, u INT UNIQUE, PRIMARY KEY (k1, k2)) WITHOUT ROWID;
    CREATE TABLE \"g \"\"q\" (id INTEGER PRIMARY KEY, v INT, d INT GENERATED ALWAYS AS (v * 2) VIRTUAL, \"we\"\"ird\" TEXT);
    CREATE TABLE s (name TEXT PRIMARY KEY, n INT NOT NULL CHECK (n >= 0));
";

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }

    /// A value literal from a small domain, so that keys and unique values collide.
    fn value(&mut self) -> String {
        match self.below(7) {
            0 => "NULL".to_string(),
            1 => format!("{}.5", self.below(5)),
            2 => format!("'s{}'", self.below(5)),
            3 => format!("x'0{}'", self.below(5)),
            _ => self.below(6).to_string(),
        }
    }

    /// One random write statement (it may fail; failures are ignored).
    fn statement(&mut self) -> String {
        let (a, b) = (self.value(), self.value());
        let k = self.below(6);
        match self.below(16) {
            0 => format!("INSERT INTO t (a, b, c) VALUES ({k}, {a}, {b})"),
            1 => format!("UPDATE t SET c = {a} WHERE a = {k}"),
            2 => format!("UPDATE t SET b = {a}, c = {b} WHERE a = {k}"),
            3 => format!("DELETE FROM t WHERE a = {k}"),
            // Swaps the unique values of two rows through a third value: the changeset's
            // order can make the swap fail one way and succeed the other.
            4 => format!(
                "UPDATE t SET b = c WHERE a = {k}; UPDATE t SET c = NULL WHERE a = {k}; \
                 UPDATE t SET b = c, c = (SELECT b FROM t WHERE a = {k}) WHERE a = {j}; \
                 UPDATE t SET c = (SELECT b FROM t WHERE a = {j}) WHERE a = {k}",
                j = (k + 1) % 6
            ),
            5 => format!("INSERT INTO n VALUES ({a}, {b}, {k})"),
            6 => format!("UPDATE n SET y = {a} WHERE z = {k}"),
            7 => format!("DELETE FROM n WHERE rowid = {k}"),
            8 => {
                format!("INSERT INTO w (k1, k2, v, u) VALUES ('k{k}', {}, {a}, {b})", self.below(3))
            }
            9 => format!("UPDATE w SET v = {a}, u = {b} WHERE k1 = 'k{k}'"),
            10 => format!("DELETE FROM w WHERE k2 = {}", self.below(3)),
            11 => format!("INSERT INTO \"g \"\"q\" (id, v, \"we\"\"ird\") VALUES ({k}, {a}, {b})"),
            12 => format!("UPDATE \"g \"\"q\" SET v = {a} WHERE id = {k}"),
            13 => format!("INSERT INTO s VALUES ('n{k}', {})", self.below(4)),
            14 => format!("UPDATE s SET n = n - 1 WHERE name = 'n{k}'"),
            _ => format!("DELETE FROM s WHERE name = 'n{k}'"),
        }
    }
}

/// A database with the schema and the given rows.
fn database(setup: &[String]) -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    for statement in setup {
        let _ = conn.execute_batch(statement);
    }
    conn
}

/// Every row of every table, as text, with the rowids the changeset does not carry (`s` is
/// recorded by its text key) when `hidden` is set.
fn contents_of(conn: &Connection, hidden: bool) -> Vec<String> {
    let mut rows = Vec::new();
    for (table, query) in [
        ("t", "SELECT a, b, c, typeof(c) FROM t ORDER BY a"),
        ("n", "SELECT rowid, x, y, z, typeof(x) FROM n ORDER BY rowid"),
        ("w", "SELECT k1, k2, v, u, typeof(v) FROM w ORDER BY k1, k2"),
        ("g", "SELECT id, v, d, \"we\"\"ird\" FROM \"g \"\"q\" ORDER BY id"),
        (
            "s",
            if hidden {
                "SELECT rowid, name, n FROM s ORDER BY name"
            } else {
                "SELECT name, n FROM s ORDER BY name"
            },
        ),
    ] {
        let mut stmt = conn.prepare(query).unwrap();
        let columns = stmt.column_count();
        let mut result = stmt.query([]).unwrap();
        while let Some(row) = result.next().unwrap() {
            let values: Vec<String> =
                (0..columns).map(|i| format!("{:?}", row.get_ref(i).unwrap())).collect();
            rows.push(format!("{table}: {}", values.join(", ")));
        }
    }
    rows
}

/// Every row of every table, hidden rowids included: what two replicas must agree on.
fn contents(conn: &Connection) -> Vec<String> {
    contents_of(conn, true)
}

/// The shapes of the tables a changeset touches, as the apply path builds them.
fn shapes(conn: &Connection, changeset: &[u8]) -> Vec<Shape> {
    session::tables(changeset)
        .unwrap()
        .into_iter()
        .map(|t| shape(conn, &t.name).unwrap().expect("the table exists"))
        .collect()
}

/// Applies `changeset` in a transaction both ways; returns whether each succeeded.
fn both(sqlite: &Connection, ours: &Connection, changeset: &[u8]) -> (bool, bool) {
    sqlite.execute_batch("BEGIN").unwrap();
    ours.execute_batch("BEGIN").unwrap();
    let by_sqlite = session::apply(sqlite, changeset).is_ok();
    let shapes = shapes(ours, changeset);
    assert!(handles(&shapes));
    let by_us = apply(ours, changeset, &shapes).is_ok();
    for (conn, ok) in [(sqlite, by_sqlite), (ours, by_us)] {
        conn.execute_batch(if ok { "COMMIT" } else { "ROLLBACK" }).unwrap();
    }
    (by_sqlite, by_us)
}

#[test]
fn random_changesets_apply_as_sqlite_applies_them() {
    let mut multi_row = 0;
    for seed in 1..=400u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let setup: Vec<String> = (0..rng.below(20)).map(|_| rng.statement()).collect();
        let source = database(&setup);
        let (sqlite, ours) = (database(&setup), database(&setup));
        assert_eq!(contents(&source), contents(&ours), "seed {seed}: copies differ before");

        let session = Session::new(&source, Box::new(|_| true)).unwrap();
        for _ in 0..1 + rng.below(25) {
            let _ = source.execute_batch(&rng.statement());
        }
        let changeset = session.changeset().unwrap();
        drop(session);

        let (by_sqlite, by_us) = both(&sqlite, &ours, &changeset);
        assert!(by_sqlite, "seed {seed}: SQLite's apply failed on an identical copy");
        assert!(by_us, "seed {seed}: replay failed on an identical copy");
        assert_eq!(
            contents_of(&ours, false),
            contents_of(&source, false),
            "seed {seed}: replay differs from source"
        );
        assert_eq!(contents(&ours), contents(&sqlite), "seed {seed}: replay differs from SQLite");
        multi_row += usize::from(session::describe(&changeset).unwrap().len() > 1);
    }
    assert!(multi_row > 100, "the generator made too few multi-row changesets");
}

#[test]
fn a_changed_replica_fails_both_ways_alike() {
    let mut conflicts = 0;
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
        let setup: Vec<String> = (0..5 + rng.below(20)).map(|_| rng.statement()).collect();
        let source = database(&setup);
        let (sqlite, ours) = (database(&setup), database(&setup));
        // The replicas drift from the source by the same random writes.
        let drift: Vec<String> = (0..3).map(|_| rng.statement()).collect();
        for statement in &drift {
            let _ = sqlite.execute_batch(statement);
            let _ = ours.execute_batch(statement);
        }

        let session = Session::new(&source, Box::new(|_| true)).unwrap();
        for _ in 0..1 + rng.below(10) {
            let _ = source.execute_batch(&rng.statement());
        }
        let changeset = session.changeset().unwrap();
        drop(session);

        let (by_sqlite, by_us) = both(&sqlite, &ours, &changeset);
        assert_eq!(
            by_sqlite,
            by_us,
            "seed {seed}: outcomes differ after drift {drift:?} on {:?}",
            session::describe(&changeset).unwrap()
        );
        assert_eq!(contents(&ours), contents(&sqlite), "seed {seed}: contents differ");
        conflicts += usize::from(!by_us);
    }
    assert!(conflicts > 20, "too few conflicts to compare: {conflicts}");
}

#[test]
fn rows_that_swap_a_unique_value_are_applied() {
    let setup = vec!["INSERT INTO t VALUES (1, 'a', 1.0), (2, 'b', 2.0)".to_string()];
    let source = database(&setup);
    let ours = database(&setup);
    let session = Session::new(&source, Box::new(|_| true)).unwrap();
    source
        .execute_batch(
            "UPDATE t SET c = 9 WHERE a = 1; UPDATE t SET c = 1 WHERE a = 2; UPDATE t SET c = 2 WHERE a = 1",
        )
        .unwrap();
    let changeset = session.changeset().unwrap();
    drop(session);
    let sqlite = database(&setup);
    session::apply(&sqlite, &changeset).unwrap();
    let shapes = shapes(&ours, &changeset);
    apply(&ours, &changeset, &shapes).unwrap();
    assert_eq!(contents(&ours), contents(&source));
}

#[test]
fn a_unique_value_taken_before_it_is_freed_is_retried() {
    for (first, second) in [(1, 2), (2, 1)] {
        let setup = vec!["INSERT INTO t VALUES (1, 'a', 1.0), (2, 'b', 2.0)".to_string()];
        let source = database(&setup);
        let ours = database(&setup);
        let session = Session::new(&source, Box::new(|_| true)).unwrap();
        // Row `second` gives up its value, then row `first` takes it.
        source
            .execute_batch(&format!(
                "UPDATE t SET c = 5 WHERE a = {second}; UPDATE t SET c = {second}.0 WHERE a = {first}"
            ))
            .unwrap();
        let changeset = session.changeset().unwrap();
        drop(session);
        let shapes = shapes(&ours, &changeset);
        replay(&ours, &changeset, &shapes).unwrap();
        assert_eq!(contents(&ours), contents(&source));
    }
}

#[test]
fn a_constraint_that_never_clears_aborts() {
    let setup = vec!["INSERT INTO t VALUES (1, 'a', 1.0)".to_string()];
    let source = database(&setup);
    let ours = database(&setup);
    let session = Session::new(&source, Box::new(|_| true)).unwrap();
    source.execute_batch("INSERT INTO t VALUES (2, 'b', 2.0)").unwrap();
    let changeset = session.changeset().unwrap();
    drop(session);
    // The replica has another row holding the unique value.
    ours.execute_batch("INSERT INTO t VALUES (3, 'c', 2.0)").unwrap();
    let shapes = shapes(&ours, &changeset);
    let error = apply(&ours, &changeset, &shapes).unwrap_err();
    assert!(
        matches!(error, session::ApplyError::Conflict { kind: "constraint violation", ref table } if table == "t"),
        "{error:?}"
    );
}
