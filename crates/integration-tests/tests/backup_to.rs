//! Backups to object storage: `keel serve --backup-to` uploads on a schedule (the leader only,
//! skipping when nothing changed, keeping `--backup-retain`), `keel serve --restore-from` boots
//! an empty node with the newest backup, `keel restore --from` loads one into a running
//! cluster, and a target that cannot be reached is counted without holding up writes.
//!
//! The S3 target is a real S3 server, compiled in: `s3s` (the S3 wire protocol, signatures
//! checked) over `s3s-fs` (objects are files in a directory), started by the test on a free
//! loopback port; `keel` reaches it through the usual AWS environment variables. The test reads
//! the uploaded objects back from that directory.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use integration_tests::{
    NodeId, TIMEOUT, TestCluster, assert_same_dump, free_ports, keel_binary, wait_for,
};
use reqwest::header::HeaderMap;
use serde_json::json;

/// The bucket the S3 tests use.
const BUCKET: &str = "keel";
/// The S3 server's only key pair.
const ACCESS_KEY: &str = "keel-test";
const SECRET_KEY: &str = "keel-test-secret";

/// An S3 server on loopback, serving the directory `root` (one subdirectory per bucket).
struct S3 {
    /// Its endpoint, `http://127.0.0.1:PORT`.
    endpoint: String,
    /// The objects, as files.
    root: tempfile::TempDir,
    /// Runs the server; dropping it stops the server.
    _runtime: tokio::runtime::Runtime,
}

impl S3 {
    /// Starts a server with one empty bucket, [`BUCKET`].
    fn start() -> S3 {
        use hyper_util::rt::TokioIo;
        use s3s::service::S3ServiceBuilder;

        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let mut builder = S3ServiceBuilder::new(s3s_fs::FileSystem::new(root.path()).unwrap());
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let service = service.clone();
                tokio::spawn(async move {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service);
                    let _ = connection.await;
                });
            }
        });
        S3 { endpoint, root, _runtime: runtime }
    }

    /// The objects under `prefix` of [`BUCKET`] (the directory of that name).
    fn dir(&self, prefix: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(prefix)
    }
}

/// The environment `keel` needs to reach an S3 endpoint.
fn s3_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

/// Borrows an environment list the way [`TestCluster::start_with_env`] takes it.
fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The backups in `dir` (files named `keel-*`), oldest first.
fn backups_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("keel-"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The backup section of node `id`'s `/status`.
fn backup_status(c: &TestCluster, id: NodeId) -> keel_api::status::Backup {
    c.status(id).backup.expect("a node started with --backup-to has a backup section")
}

/// Waits until node `id` has uploaded a backup holding `lsn` or later; returns its lsn.
fn wait_uploaded(c: &TestCluster, id: NodeId, lsn: u64) -> u64 {
    wait_for(TIMEOUT, format!("node {id} to upload a backup at lsn {lsn}"), || {
        backup_status(c, id).last.map(|last| last.lsn).filter(|&l| l >= lsn)
    })
}

/// The rows of `t` in the SQLite file at `path`, and whether it holds any of Keel's tables.
fn rows_in_file(path: &Path) -> (Vec<String>, bool) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let rows = conn
        .prepare("SELECT v FROM t ORDER BY id")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<Vec<String>, _>>()
        .unwrap();
    let internal: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE '\\_keel%' ESCAPE '\\'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (rows, internal > 0)
}

/// The lsn in a backup's object name (`keel-<time>-lsn<N>.sqlite[.gz]`).
fn lsn_of(path: &Path) -> u64 {
    let name = path.file_name().unwrap().to_string_lossy();
    let rest = name.split_once("-lsn").unwrap().1;
    rest.split('.').next().unwrap().parse().unwrap()
}

#[test]
fn the_leader_backs_up_to_s3_and_an_empty_node_restores_from_it() {
    let s3 = S3::start();
    let env = s3_env(&s3.endpoint);
    let target = "s3://keel/db";
    let flags = ["--backup-to", target, "--backup-interval", "300ms", "--backup-retain", "2"];
    let c = TestCluster::start_with_env(3, 0, &flags, &borrowed(&env), HeaderMap::new());
    let leader = c.leader();
    c.execute_ok(leader, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]));
    // Above one part (8 MiB), so every upload is a multipart upload.
    c.execute_ok(leader, json!(["CREATE TABLE big (b BLOB)"]));
    for _ in 0..5 {
        c.execute_ok(leader, json!(["INSERT INTO big VALUES (randomblob(2 * 1024 * 1024))"]));
    }
    // Each write is backed up by a later tick.
    for i in 0..3 {
        let lsn = c.execute_ok(leader, json!([["INSERT INTO t(v) VALUES(?)", format!("row {i}")]]));
        wait_uploaded(&c, leader, lsn);
    }
    // Nothing changes: the ticks are skipped and nothing is uploaded.
    let before = backup_status(&c, leader);
    let after = wait_for(TIMEOUT, "two skipped ticks", || {
        Some(backup_status(&c, leader)).filter(|b| b.skipped >= before.skipped + 2)
    });
    assert_eq!(after.uploads, before.uploads, "an upload although nothing changed: {after:?}");
    assert!(before.uploads >= 3, "{before:?}");
    assert_eq!((before.failures, before.last_error.as_deref()), (0, None), "{before:?}");
    // Only the leader uploads.
    for id in c.followers(leader) {
        let b = backup_status(&c, id);
        assert_eq!((b.uploads, b.last), (0, None), "follower {id} uploaded");
    }
    assert!(c.metric(leader, "keel_backup_uploads_total") >= 3.0);
    assert_eq!(c.metric(leader, "keel_backup_last_lsn"), after.last.as_ref().unwrap().lsn as f64);
    // Only the newest two are kept, and the newest holds every row and none of Keel's tables.
    let dir = s3.dir("db");
    let kept = wait_for(TIMEOUT, "old backups to be deleted down to 2", || {
        Some(backups_in(&dir)).filter(|b| b.len() == 2)
    });
    let newest = kept.last().unwrap();
    assert_eq!(lsn_of(newest), after.last.as_ref().unwrap().lsn);
    assert!(std::fs::metadata(newest).unwrap().len() > 10 << 20, "smaller than the data");
    let (rows, internal) = rows_in_file(newest);
    assert_eq!(rows, ["row 0", "row 1", "row 2"]);
    assert!(!internal, "the backup holds Keel's tables");

    // A new cluster's first node, empty, boots with the newest backup.
    let expected = c.dump(leader);
    let old_lsn = after.last.unwrap().lsn;
    drop(c);
    let flags = ["--restore-from", target, "--backup-to", target, "--backup-interval", "300ms"];
    let restored = TestCluster::start_with_env(1, 0, &flags, &borrowed(&env), HeaderMap::new());
    assert_same_dump(&expected, &restored.dump(1), "the node restored from S3");
    // Its log is new and shorter than the old cluster's: the old cluster's newest backup, at a
    // higher lsn, does not stop it from uploading its own.
    let applied = restored.status(1).node.applied_index;
    assert!(applied < old_lsn, "the premise: {applied} < {old_lsn}");
    wait_uploaded(&restored, 1, applied);
}

#[test]
fn backups_to_a_directory_compressed_and_keel_restore_from_picks_one() {
    let dir = tempfile::tempdir().unwrap();
    let target = format!("file://{}/backups", dir.path().display());
    let flags = ["--backup-to", target.as_str(), "--backup-interval", "200ms", "--backup-compress"];
    let c = TestCluster::start_with(1, 0, &flags);
    let lsn = c.execute_ok(
        1,
        json!([
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
            "INSERT INTO t(v) VALUES('a'), ('b')"
        ]),
    );
    let first = wait_uploaded(&c, 1, lsn);
    let first_dump = c.dump(1);
    let lsn = c.execute_ok(1, json!(["INSERT INTO t(v) VALUES('c')"]));
    wait_uploaded(&c, 1, lsn);
    let files = backups_in(&dir.path().join("backups"));
    let newest = files.last().unwrap();
    assert!(newest.to_string_lossy().ends_with(".sqlite.gz"), "{}", newest.display());
    let mut image = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(newest).unwrap())
        .read_to_end(&mut image)
        .unwrap();
    let plain = dir.path().join("newest.sqlite");
    std::fs::write(&plain, image).unwrap();
    assert_eq!(rows_in_file(&plain).0, ["a", "b", "c"]);

    // `keel restore --from --at` loads the older backup into the running cluster.
    c.execute_ok(1, json!(["DELETE FROM t"]));
    let out = Command::new(keel_binary())
        .args(["restore", &format!("http://{}", c.http_addr(1)), "--from", &target])
        .args(["--at", &first.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "keel restore --from failed: {stderr}");
    assert!(stderr.contains(&format!("lsn{first}")), "restored another backup: {stderr}");
    assert_same_dump(&first_dump, &c.dump(1), "the cluster after keel restore --from --at");
}

#[test]
fn an_unreachable_target_counts_failures_while_writes_go_on() {
    // Nothing listens on this port.
    let endpoint = format!("http://127.0.0.1:{}", free_ports(1)[0]);
    let env = s3_env(&endpoint);
    let flags = ["--backup-to", "s3://keel/db", "--backup-interval", "200ms"];
    let c = TestCluster::start_with_env(1, 0, &flags, &borrowed(&env), HeaderMap::new());
    c.execute_ok(1, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]));
    let mut written = 0;
    wait_for(TIMEOUT, "two failed backups in /metrics", || {
        c.execute_ok(1, json!([["INSERT INTO t(v) VALUES(?)", written.to_string()]]));
        written += 1;
        (c.metric(1, "keel_backup_failures_total") >= 2.0).then_some(())
    });
    assert_eq!(c.rows(1, "SELECT count(*) FROM t"), [[json!(written)]]);
    let status = backup_status(&c, 1);
    assert_eq!((status.uploads, status.last), (0, None));
    assert!(status.last_error.is_some_and(|e| e.contains("s3://keel/db")), "no error in /status");
}
