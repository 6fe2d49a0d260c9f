//! `Replica` as Raft's store: snapshots are written without the database thread, and an
//! install publishes the installed position.

use std::sync::mpsc;
use std::time::Duration;

use follower::Replica;
use raft::state_machine::{Committed, Store};

/// Speculates `sql` on `replica`'s database and applies it through the store at `index`.
fn write(replica: &Replica, index: u64, sql: &str) {
    let request = sql::WriteRequest {
        statements: vec![sql::Statement::new(sql)],
        transaction: false,
        rows: false,
        request_id: None,
        timeout: None,
    };
    let record = replica.db().run_blocking(move |db| db.execute(&[request])).unwrap().record;
    let entry = Committed { term: 1, index, record: Some(record), membership: None };
    futures::executor::block_on(replica.apply(std::sync::Arc::new(vec![entry]))).unwrap();
}

#[test]
fn snapshots_run_without_the_lock_and_installs_publish() {
    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::new(sql::Db::open(&dir.path().join("a")).unwrap()).unwrap();
    write(&replica, 1, "CREATE TABLE t (v)");
    write(&replica, 2, "INSERT INTO t VALUES (1), (2)");
    assert_eq!(*replica.applied().borrow(), 2);

    // The image is written while someone else holds the database (the leader's writer, say).
    let image = dir.path().join("b").join("incoming.part");
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let (holding, held) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let hold = replica.db().run(move |_| {
        holding.send(()).unwrap();
        released.recv().unwrap();
        Ok(())
    });
    held.recv().unwrap();
    let (tx, rx) = mpsc::channel();
    let (writer, path) = (replica.clone(), image.clone());
    std::thread::spawn(move || tx.send(writer.snapshot_to(&path).unwrap()).unwrap());
    let applied =
        rx.recv_timeout(Duration::from_secs(30)).expect("snapshot_to waited for the thread");
    release.send(()).unwrap();
    futures::executor::block_on(hold).unwrap();
    assert_eq!(applied.map(|a| (a.term, a.index)), Some((1, 2)));

    // Another node installs it: its position and watch move to the image's.
    let other = Replica::new(sql::Db::open(&dir.path().join("b")).unwrap()).unwrap();
    let watch = other.applied();
    assert_eq!(*watch.borrow(), 0);
    other.install(&image).unwrap();
    assert_eq!(*watch.borrow(), 2);
    assert_eq!(Store::applied(&other).unwrap().map(|a| a.index), Some(2));
    let dump = |r: &Replica| r.db().run_blocking(|db| db.dump()).unwrap();
    assert_eq!(dump(&other), dump(&replica));

    // Snapshots follow the install: the other node's next image is of the installed database.
    write(&other, 3, "INSERT INTO t VALUES (3)");
    let again = other.snapshot_to(&dir.path().join("again")).unwrap();
    assert_eq!(again.map(|a| a.index), Some(3));
}
