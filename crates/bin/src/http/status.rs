//! `GET /status`: what a node knows of itself, in rqlite's shape with Keel's sections beside it.
//!
//! rqlite's `handleStatus` (`http/service.go`) answers one JSON document whose sections clients
//! and tools read by name; Keel answers the same sections with the same field names and types
//! ([`document`]):
//!
//! * `build`: `version`, `commit`, `branch`, `build_time` (from `build.rs`; `unknown` when git
//!   was not available), `compiler_toolchain`.
//! * `runtime`: rqlite's Go field names (`GOOS`, `GOARCH` in Go's spelling, `GOMAXPROCS` = the
//!   async runtime's worker threads, `num_cpu`, `num_goroutine` = live async tasks), `version`
//!   (the compiler's), `kubernetes_hint`.
//! * `os`: `pid`, `ppid`, `page_size`, `executable`, `hostname`.
//! * `http`: `bind_addr`, `auth` (`enabled`/`disabled`), `tls.enabled` (`"true"`/`"false"`, a
//!   string as in rqlite), `allow_origin` when set, `queue`; Keel adds `advertised_addr`.
//! * `node`: `start_time`, `current_time` (RFC 3339 with nanoseconds, as Go's `time.Time`),
//!   `uptime` (Go's duration format). Keel's own node fields (`id`, `role`, `term`, the log
//!   indexes, addresses, `stopped`) live in the same object: no name is shared, so rqlite's
//!   shape is whole and Keel's fields are additions.
//! * `store` (`store.Stats` in rqlite's `store/store.go`): `open`, `ready`, `node_id`, `addr`,
//!   `leader` {`addr`, `node_id`}, `raft` {`state` as rqlite spells it (`Leader`, `Follower`,
//!   `Candidate`, `Shutdown`; Keel's learners are `Follower` with `voter: false`), `term`,
//!   `applied_index`, `commit_index`, `last_log_index`, `last_snapshot_index`, `num_peers`,
//!   `voter`, `last_contact`, `log_size`, …}, `fsm_index`, `db_applied_index`, the Raft timing
//!   settings, `nodes` [{`id`, `addr`, `suffrage`}], `dir`, `dir_size`, and `sqlite3`
//!   {`version`, `path`, `size`, `db_size`, `wal_size`, …}.
//! * Keel's sections: `cluster` (members), `replication` (on the leader, each member's
//!   progress) and `snapshot` (snapshot counters).
//!
//! `?key=a.b` answers the sub-document at that path ([`sub_json`], rqlite's `getSubJSON`): an
//! unknown key is `{}`, a path that runs into a non-object answers that value.
//!
//! The database facts come from a read connection (`PRAGMA database_list`, `page_count`,
//! `page_size`) and the directory sizes from walking the data directory, both on a blocking
//! thread, so `/status` never waits for the write connection; when no read connection is free
//! within [`DISK_WAIT`], `/status` answers without them. A `key` outside `store` skips them.
//!
//! `http.queue._default` is the write queue's ([`node::queue::Queue::status`]). Not
//! reported (rqlite internals Keel does not have): BoltDB and transport statistics, CDC and
//! auto-vacuum state, SQLite memory and pool statistics.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use keel_api::status::{self, Status};
use serde_json::{Value, json};

use crate::http::{Node, Params, json_response};

/// How long `/status` waits for a read connection and the data directory's sizes.
const DISK_WAIT: Duration = Duration::from_secs(2);

/// `GET /status[?key=a.b][&pretty]`.
pub async fn status(
    State(node): State<Arc<Node>>,
    Query(p): Query<Vec<(String, String)>>,
) -> Response {
    let p = Params(p);
    let key = p.get("key").filter(|k| !k.is_empty());
    // Only `store` holds what is read from disk and the database.
    let disk = key.is_none_or(|k| k == "store" || k.starts_with("store."));
    let body = document(&node, disk).await;
    let body = serde_json::to_value(&body).expect("the status document serializes to JSON");
    match key {
        // rqlite re-encodes the sub-document compactly, whatever `pretty` says.
        Some(key) => json_response(StatusCode::OK, &sub_json(&body, key), false),
        None => json_response(StatusCode::OK, &body, p.has("pretty")),
    }
}

/// The whole `/status` document (see the module docs); without `disk`, the facts read from
/// disk and the database are left out (zero sizes, no `sqlite3` facts but the version).
async fn document(node: &Node, disk: bool) -> Status {
    let s = node.cluster();
    let disk = if disk {
        let (readers, dir) = (node.readers(), node.data_dir().to_path_buf());
        let read = tokio::task::spawn_blocking(move || Disk::read(&readers, &dir));
        // Every read connection may be busy: answer without the database facts then.
        match tokio::time::timeout(DISK_WAIT, read).await {
            Ok(Ok(disk)) => disk,
            _ => Disk::default(),
        }
    } else {
        Disk::default()
    };
    let members = s.members.iter().map(|m| status::Member {
        id: m.id,
        name: m.node.name.clone(),
        node: status::Addresses {
            http_addr: m.node.http_addr.clone(),
            raft_addr: m.node.raft_addr.clone(),
        },
        voter: m.voter,
    });
    Status {
        backup: node.metrics().backups.status(),
        build: build(),
        runtime: runtime(),
        os: os(),
        http: http(node),
        node: node_section(node, &s),
        store: store(node, &s, disk),
        cluster: status::Cluster { members: members.collect() },
        disk: Some(disk_section(&node.space())),
        divergence: node.divergence(),
        replication: node
            .replication_all(&s)
            .map(|all| all.into_iter().map(|(id, r)| (label(&s, id), r)).collect()),
        snapshot: snapshot(node.snapshots().read()),
    }
}

/// How node `id` is shown: its name if the membership gives it one, else its number.
fn label(s: &raft::cluster::State, id: raft::NodeId) -> String {
    s.members.iter().find(|m| m.id == id).map_or_else(|| id.to_string(), |m| m.label())
}

/// Keel's `disk`: the free space and what a full disk refused.
fn disk_section(r: &raft::space::Report) -> status::Disk {
    status::Disk {
        apply_retries: r.apply_retries,
        free_bytes: r.free,
        full: r.full,
        full_episodes: r.episodes,
        log_room_bytes: r.room,
        refused_appends: r.refused_appends,
        refused_writes: r.refused_writes,
        reserve_bytes: r.reserve,
    }
}

/// rqlite's `node` times, and Keel's own facts about the node in the same object.
fn node_section(node: &Node, s: &raft::cluster::State) -> status::Node {
    let settings = node.settings();
    status::Node {
        start_time: rfc3339(settings.started),
        current_time: rfc3339(SystemTime::now()),
        uptime: go_duration_string(settings.started_at.elapsed()),
        id: s.id,
        name: node.me().name.clone(),
        leader_name: s
            .leader_id
            .and_then(|id| s.members.iter().find(|m| m.id == id))
            .and_then(|m| m.node.name.clone()),
        role: match s.role {
            raft::cluster::Role::Leader => status::Role::Leader,
            raft::cluster::Role::Follower => status::Role::Follower,
            raft::cluster::Role::Candidate => status::Role::Candidate,
            raft::cluster::Role::Learner => status::Role::Learner,
            raft::cluster::Role::Shutdown => status::Role::Shutdown,
        },
        term: s.term,
        leader_id: s.leader_id,
        last_log_index: s.last_log_index,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        snapshot_index: s.snapshot_index,
        http_addr: node.me().http_addr.clone(),
        raft_addr: node.me().raft_addr.clone(),
        stopped: s.stopped.clone(),
    }
}

/// rqlite's `build` section.
fn build() -> status::Build {
    let built = env!("KEEL_BUILD_UNIX_TIME").parse().unwrap_or(0);
    status::Build {
        version: env!("CARGO_PKG_VERSION").into(),
        commit: env!("KEEL_GIT_COMMIT").into(),
        branch: env!("KEEL_GIT_BRANCH").into(),
        build_time: rfc3339(UNIX_EPOCH + Duration::from_secs(built)),
        compiler_toolchain: "rustc".into(),
    }
}

/// rqlite's `runtime` section, with Go's field names and spellings.
fn runtime() -> status::Runtime {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (workers, tasks) = tokio::runtime::Handle::try_current().map_or((cpus, 0), |h| {
        let m = h.metrics();
        (m.num_workers(), m.num_alive_tasks())
    });
    let goarch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64",
        other => other,
    };
    let goos = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    status::Runtime {
        GOARCH: goarch.into(),
        GOOS: goos.into(),
        GOMAXPROCS: workers,
        num_cpu: cpus,
        num_goroutine: tasks,
        version: env!("KEEL_RUSTC_VERSION").into(),
        kubernetes_hint: std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
    }
}

/// rqlite's `os` section.
fn os() -> status::Os {
    // SAFETY: getppid and sysconf take no pointers and cannot fail in a way that matters here.
    let (ppid, page_size) = unsafe { (libc::getppid(), libc::sysconf(libc::_SC_PAGESIZE)) };
    status::Os {
        pid: std::process::id(),
        ppid,
        page_size,
        executable: std::env::current_exe().ok().map(|exe| exe.display().to_string()),
        hostname: hostname(),
    }
}

/// The machine's host name (`gethostname`).
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// rqlite's `http` section.
fn http(node: &Node) -> status::Http {
    let settings = node.settings();
    status::Http {
        bind_addr: settings.http_bind.clone(),
        advertised_addr: node.me().http_addr.clone(),
        auth: if settings.auth { "enabled" } else { "disabled" }.into(),
        tls: status::Tls { enabled: settings.tls.to_string() },
        // rqlite's queue statistics: `http.queue._default.sequence_number`.
        queue: status::Queues { default: node.queue().status() },
        allow_origin: settings.allow_origin.clone(),
    }
}

/// rqlite's `store` section.
fn store(node: &Node, s: &raft::cluster::State, disk: Disk) -> status::Store {
    let leader = s.leader_id.and_then(|id| s.members.iter().find(|m| m.id == id));
    let voter = s.members.iter().find(|m| m.id == s.id).is_some_and(|m| m.voter);
    let state = match s.role {
        raft::cluster::Role::Leader => "Leader",
        raft::cluster::Role::Follower | raft::cluster::Role::Learner => "Follower",
        raft::cluster::Role::Candidate => "Candidate",
        raft::cluster::Role::Shutdown => "Shutdown",
    };
    // hashicorp/raft's `last_contact`: 0 on the leader, else the time since the leader was
    // last heard from, or "never".
    let last_contact = if s.role == raft::cluster::Role::Leader {
        status::LastContact::Leader(0)
    } else {
        status::LastContact::Since(
            node.last_contact()
                .map_or_else(|| "never".into(), |(at, _)| go_duration_string(at.elapsed())),
        )
    };
    let nodes = s.members.iter().map(|m| status::StoreNode {
        id: m.label(),
        addr: m.node.raft_addr.clone(),
        suffrage: if m.voter { "voter" } else { "nonvoter" }.into(),
    });
    let settings = node.settings();
    status::Store {
        open: true,
        ready: s.stopped.is_none() && node.leader_reachable(s).is_ok(),
        node_id: node.me().label(s.id),
        addr: node.me().raft_addr.clone(),
        leader: status::StoreLeader {
            node_id: leader.map(raft::cluster::Member::label).unwrap_or_default(),
            addr: leader.map(|l| l.node.raft_addr.clone()).unwrap_or_default(),
        },
        raft: status::Raft {
            state: state.into(),
            term: s.term,
            applied_index: s.applied_index,
            commit_index: s.commit_index,
            last_log_index: s.last_log_index,
            last_snapshot_index: s.snapshot_index.unwrap_or(0),
            num_peers: s.members.iter().filter(|m| m.voter && m.id != s.id).count(),
            voter,
            last_contact,
            log_size: disk.log_size,
            log_size_friendly: friendly_bytes(disk.log_size),
        },
        fsm_index: s.applied_index,
        db_applied_index: s.applied_index,
        heartbeat_timeout: go_duration_string(settings.heartbeat),
        election_timeout: go_duration_string(settings.election_timeout),
        snapshot_threshold: settings.snapshot_entries,
        trailing_logs: settings.trailing_logs,
        nodes: nodes.collect(),
        dir: node.data_dir().display().to_string(),
        dir_size: disk.dir_size,
        dir_size_friendly: friendly_bytes(disk.dir_size),
        sqlite3: disk.sqlite,
    }
}

/// The snapshot counters of Keel's `snapshot` section; indexes are `null` when there is none.
fn snapshot(c: raft::SnapshotCounts) -> status::Snapshot {
    let index = |i: u64| (i != 0).then_some(i);
    status::Snapshot {
        index: index(c.current_index),
        size: c.current_size,
        built: c.built,
        last_built_index: index(c.last_built_index),
        sent: c.sent,
        send_failures: c.send_failures,
        received: c.received,
        receive_failures: c.receive_failures,
        installed: c.installed,
        last_installed_index: index(c.last_installed_index),
        bytes_sent: c.bytes_sent,
        bytes_received: c.bytes_received,
        damaged: c.damaged,
    }
}

/// What `/status` reads from disk and the database, on a blocking thread.
struct Disk {
    /// Bytes under the data directory.
    dir_size: u64,
    /// Bytes of the Raft log (`raft/`).
    log_size: u64,
    /// rqlite's `store.sqlite3` section.
    sqlite: status::Sqlite3,
}

impl Default for Disk {
    fn default() -> Disk {
        Disk { dir_size: 0, log_size: 0, sqlite: bare_sqlite() }
    }
}

impl Disk {
    /// Reads the sizes and the database facts; a fact that cannot be read is left out.
    fn read(readers: &sql::Readers, dir: &Path) -> Disk {
        Disk {
            dir_size: dir_size(dir),
            log_size: dir_size(&dir.join("raft")),
            sqlite: sqlite(readers),
        }
    }
}

/// The `sqlite3` facts known without reading the database: SQLite's version and the page
/// checksum failures.
fn bare_sqlite() -> status::Sqlite3 {
    status::Sqlite3 {
        version: rusqlite::version().into(),
        page_checksum_failures: sql::pagesum::failures(),
        ..Default::default()
    }
}

/// rqlite's `store.sqlite3` section: `version`, `path`, `size` (the file), `db_size` (pages
/// times page size), `wal_size`, `page_size`, `page_count`; and Keel's `freelist_count`, the
/// free pages a `VACUUM` would give back, and `page_checksum_failures`, the page reads
/// that failed their checksum since start.
fn sqlite(readers: &sql::Readers) -> status::Sqlite3 {
    let mut out = bare_sqlite();
    let statements =
        ["PRAGMA database_list", "PRAGMA page_count", "PRAGMA page_size", "PRAGMA freelist_count"]
            .map(sql::Statement::new);
    let Ok(results) = readers.query(&statements, true) else { return out };
    let first = |i: usize| match results.get(i) {
        Some(sql::StatementResult::Rows { columns, values, .. }) => {
            values.first().map(|row| (columns.clone(), row.clone()))
        }
        _ => None,
    };
    if let Some((columns, row)) = first(0)
        && let Some(file) = columns.iter().position(|c| c == "file").and_then(|i| row[i].as_str())
    {
        let path = PathBuf::from(file);
        let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        out.path = Some(file.to_string());
        out.size = Some(len(&path));
        let mut wal = path.into_os_string();
        wal.push("-wal");
        out.wal_size = Some(len(Path::new(&wal)));
    }
    let number = |i: usize| first(i).and_then(|(_, row)| row.first().and_then(Value::as_u64));
    if let (Some(pages), Some(page_size)) = (number(1), number(2)) {
        out.page_count = Some(pages);
        out.page_size = Some(page_size);
        out.db_size = Some(pages * page_size);
        out.db_size_friendly = Some(friendly_bytes(pages * page_size));
    }
    out.freelist_count = number(3);
    out
}

/// Bytes of the files under `dir`, recursively; what cannot be read counts as nothing.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// The sub-document of `value` at the dot-separated `key`, as rqlite's `getSubJSON`: `{}` when
/// a name is missing; when the path runs into a value that is not an object, that value.
pub fn sub_json(value: &Value, key: &str) -> Value {
    let mut current = value;
    for name in key.split('.') {
        match current {
            Value::Object(map) => match map.get(name) {
                Some(v) => current = v,
                None => return json!({}),
            },
            other => return other.clone(),
        }
    }
    current.clone()
}

/// A duration as Go's `time.Duration.String` writes it: `1h2m3.5s`, `40ms`, `1.5µs`, `0s`.
pub fn go_duration_string(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (unit, scale) = match nanos {
            n if n < 1_000 => ("ns", 1),
            n if n < 1_000_000 => ("µs", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{}{unit}", decimal(nanos, scale));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = nanos / 60_000_000_000 % 60;
    let seconds = decimal(nanos % 60_000_000_000, 1_000_000_000);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

/// `value / scale` in decimal, with the fraction's trailing zeros (and a bare point) removed.
fn decimal(value: u128, scale: u128) -> String {
    let whole = value / scale;
    let fraction = value % scale;
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = scale.to_string().len() - 1;
    let fraction = format!("{fraction:0digits$}");
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

/// A time as Go's `time.Time` JSON form, in UTC: RFC 3339 with nanoseconds, trailing zeros
/// trimmed (`2026-12-06T19:51:18.5Z`).
pub fn rfc3339(t: SystemTime) -> String {
    sql::rfc3339_utc(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// Bytes as go-humanize's `Bytes` (SI units): `512 B`, `4.1 kB`, `83 MB`.
pub fn friendly_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let exp = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let exp = exp.min(UNITS.len() - 1);
    let value = (n as f64 / 1000f64.powi(exp as i32) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exp])
    } else {
        format!("{value:.0} {}", UNITS[exp])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    fn doc() -> Value {
        json!({ "store": { "raft": { "state": "Leader", "term": 3 }, "node_id": "1" } })
    }

    #[test_case("store.raft", json!({ "state": "Leader", "term": 3 }))]
    #[test_case("store.raft.state", json!("Leader"))]
    #[test_case("store.node_id", json!("1"))]
    #[test_case("store.node_id.more", json!("1"); "path past a leaf answers the leaf")]
    #[test_case("nothing", json!({}))]
    #[test_case("store.nothing", json!({}))]
    #[test_case("store.", json!({}); "empty name")]
    fn sub_documents(key: &str, expected: Value) {
        assert_eq!(sub_json(&doc(), key), expected);
    }

    #[test_case(Duration::ZERO, "0s")]
    #[test_case(Duration::from_nanos(15), "15ns")]
    #[test_case(Duration::from_nanos(1_500), "1.5µs"; "microseconds")]
    #[test_case(Duration::from_millis(40), "40ms")]
    #[test_case(Duration::from_micros(90_250), "90.25ms")]
    #[test_case(Duration::from_millis(3_200), "3.2s")]
    #[test_case(Duration::from_secs(60), "1m0s")]
    #[test_case(Duration::from_secs(3_725), "1h2m5s")]
    fn go_durations(d: Duration, expected: &str) {
        assert_eq!(go_duration_string(d), expected);
    }

    #[test_case(0, "1970-01-01T00:00:00Z")]
    #[test_case(951_782_400_500_000_000, "2000-02-29T00:00:00.5Z")]
    #[test_case(1_796_587_878_000_000_123, "2026-12-06T20:11:18.000000123Z")]
    fn times(nanos: u64, expected: &str) {
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_nanos(nanos)), expected);
    }

    #[test_case(0, "0 B")]
    #[test_case(9, "9 B")]
    #[test_case(512, "512 B")]
    #[test_case(4_096, "4.1 kB")]
    #[test_case(82_854_982, "83 MB")]
    fn friendly(n: u64, expected: &str) {
        assert_eq!(friendly_bytes(n), expected);
    }
}
