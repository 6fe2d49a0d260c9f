//! The command line: `keel`'s subcommands and the flags of `keel serve` and `keel local` (the
//! other subcommands keep their flags beside their code), and the parsers flags share.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::{admin, backup, bench, certs, changes, check, params, shell};

/// Keel: a replicated SQL database with one leader, speaking rqlite's HTTP API.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about, long_about = None, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the biggest variant (`serve`'s flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node of a cluster.
    Serve(ServeArgs),
    /// Start a local cluster of `keel serve` processes and keep it running until Ctrl-C.
    Local(LocalArgs),
    /// Measure a running cluster: throughput and latency percentiles.
    Bench(bench::BenchArgs),
    /// Operate a running cluster: promote a node, change membership, show status.
    Admin(admin::AdminArgs),
    /// Create a cluster CA and certificates for TLS (nodes, client API, a client).
    Certs(certs::CertsArgs),
    /// Stream a backup of a running cluster's database to a file.
    Backup(backup::BackupArgs),
    /// Load a SQLite file or SQL text into a running cluster (a SQLite file replaces the
    /// database), or a backup from object storage (`--from`).
    #[command(
        override_usage = "keel restore <URL> <FILE>\n       keel restore <URL> --from <TARGET> [--at <LSN|TIME>]"
    )]
    Restore(backup::RestoreArgs),
    /// Print an argon2 hash of a password (read from stdin) for the `--auth` file.
    HashPassword,
    /// An interactive SQL shell against any node of a cluster.
    Shell(shell::ShellArgs),
    /// Print the committed row changes of a cluster, from a log position on, as JSON lines.
    Changes(changes::ChangesArgs),
    /// Check that every replica holds the same data: checksums of every table at one log
    /// index, compared (exit 0: identical, 1: different, 2: could not check).
    Check(check::CheckArgs),
}

/// How `keel serve --discovery` finds the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiscoveryMode {
    /// The A and AAAA records of `--discovery-host`, at `--discovery-port`.
    Dns,
    /// The SRV records of `_<--discovery-service>._tcp.<--discovery-host>`.
    DnsSrv,
}

/// Flags of `keel serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// This node's id, unique in the cluster: a positive number, or a name of up to 64
    /// letters, digits, '.', '_' and '-' (such as a Kubernetes pod name, `keel-0`).
    #[arg(long, default_value = "1", value_name = "ID")]
    pub id: raft::NodeName,
    /// Address for the client HTTP API (rqlite-compatible).
    #[arg(long, default_value = "127.0.0.1:4001")]
    pub http_addr: String,
    /// Address for node-to-node Raft traffic.
    #[arg(long, default_value = "127.0.0.1:4002")]
    pub raft_addr: String,
    /// Also serve reads over PostgreSQL's wire protocol on this address (off without it):
    /// `psql`, `pgbench` and PostgreSQL drivers read this node's copy, at the consistency
    /// `SET keel.read_consistency` chooses (`none` by default). Credentials and certificates
    /// are the client API's. See docs/postgres.md.
    #[arg(long, value_name = "HOST:PORT")]
    pub pg_addr: Option<String>,
    /// The client API address other nodes and clients are told to use, when it differs from
    /// `--http-addr` (which may be `0.0.0.0:PORT`, or behind NAT).
    #[arg(long, value_name = "HOST:PORT")]
    pub http_adv_addr: Option<String>,
    /// The Raft address other nodes are told to use, when it differs from `--raft-addr`.
    #[arg(long, value_name = "HOST:PORT")]
    pub raft_adv_addr: Option<String>,
    /// The value of the `Access-Control-Allow-Origin` header on every client API answer, for
    /// browser applications served from another origin (rqlite's `-http-allow-origin`), such
    /// as `https://example.com`. Without it the header is not sent.
    #[arg(long, value_name = "ORIGIN")]
    pub http_allow_origin: Option<String>,
    /// Directory for the database, the Raft log and snapshots. Created if missing.
    #[arg(long, default_value = "./keel-data")]
    pub data_dir: PathBuf,
    /// HTTP URLs of cluster members to ask to add this node (comma-separated; any member works,
    /// the request is forwarded to the leader). Ignored when the node already belongs to a
    /// cluster. Without it, a node with an empty data directory starts a new one-node cluster.
    #[arg(long, value_delimiter = ',')]
    pub join: Vec<String>,
    /// Join as a learner: a non-voting, asynchronously replicated read replica.
    #[arg(long)]
    pub learner: bool,
    /// Form a new cluster of this many voters with the nodes of `--join`, all started with
    /// the same flags (as rqlite's `-bootstrap-expect`): each node tells the others its
    /// addresses, and once a node knows this many (itself included) it bootstraps the cluster
    /// with them all, the same membership on every node. Ignored when the node already belongs
    /// to a cluster, or when a node of `--join` already leads one (the node joins it instead).
    /// With `--discovery`, the nodes are found through DNS instead of `--join`.
    #[arg(long, value_name = "N", conflicts_with = "learner", value_parser = clap::value_parser!(u64).range(1..=99))]
    pub bootstrap_expect: Option<u64>,
    /// Find the nodes of `--bootstrap-expect` through DNS instead of `--join` (rqlite's
    /// `-disco-mode`), asking again every round until the cluster is formed or joined: `dns`,
    /// the A/AAAA records of `--discovery-host`, each at `--discovery-port`; `dns-srv`, the SRV
    /// records of `_<--discovery-service>._tcp.<--discovery-host>` (targets and ports). A node
    /// started after the cluster formed joins it. Needs `--bootstrap-expect`; not with `--join`.
    #[arg(long, value_enum, value_name = "MODE", requires_all = ["discovery_host", "bootstrap_expect"], conflicts_with = "join")]
    pub discovery: Option<DiscoveryMode>,
    /// The DNS name of `--discovery` (a Kubernetes headless service, for instance).
    #[arg(long, value_name = "NAME", requires = "discovery")]
    pub discovery_host: Option<String>,
    /// The client API port of the nodes `--discovery dns` finds. Default: this node's own
    /// (advertised) client API port.
    #[arg(long, value_name = "PORT", requires = "discovery", value_parser = clap::value_parser!(u16).range(1..))]
    pub discovery_port: Option<u16>,
    /// The service label of `--discovery dns-srv`, without its underscore: the records looked up
    /// are `_SERVICE._tcp.<--discovery-host>`. Default: `keel`.
    #[arg(long, value_name = "SERVICE", requires = "discovery")]
    pub discovery_service: Option<String>,
    /// The DNS server `--discovery` asks, instead of the system's (`/etc/resolv.conf`).
    #[arg(long, value_name = "IP:PORT", requires = "discovery")]
    pub discovery_resolver: Option<std::net::SocketAddr>,
    /// On SIGTERM/SIGINT, leave the cluster before shutting down: a follower or learner asks
    /// the leader to remove it, a leader first hands leadership over. Gives up after 10s (no
    /// leader, no quorum) and shuts down anyway; the last voter never leaves.
    #[arg(long)]
    pub leave_on_shutdown: bool,
    /// On the leader, remove members it has not heard from for this long: learners always,
    /// voters only while at least 3 voters remain and the voters it hears from stay a quorum
    /// (otherwise it logs why and checks again later). Off by default.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub reap_after: Option<Duration>,
    /// Leader heartbeat interval.
    #[arg(long, default_value = "40ms", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Minimum election timeout. The leader lease is 4/3 of it: a follower that hears no leader
    /// for the lease plus a random timeout between this and the lease starts an election, and
    /// one whose leader's connections all closed (it died) starts one right after the lease. A
    /// new leader takes writes about 1.6 times this after the old one dies. Raise it on slow or
    /// overloaded machines, where a stall this long would cause needless elections.
    #[arg(long, default_value = "90ms", value_parser = parse_duration)]
    pub election_timeout: Duration,
    /// Take a snapshot (and allow older log entries to be purged) every this many log entries.
    #[arg(long, default_value_t = 20_000)]
    pub snapshot_entries: u64,
    /// Log entries kept behind the latest snapshot, so a follower slightly behind it catches
    /// up from the log instead of receiving the whole database.
    #[arg(long, default_value_t = 1_000)]
    pub trailing_logs: u64,
    /// Default durability of writes: `semi-sync` (a majority of voters has it durably), `sync`
    /// (every voter and learner has applied it) or `replicas:K` (K other members applied it).
    /// A request overrides it with `?durability=`.
    #[arg(long, default_value = "semi-sync", value_parser = parse_durability)]
    pub durability: leader::Durability,
    /// How long a write waits for its durability (commit, or the replicas `sync`/`replicas:K`
    /// need) before answering 503 that says how far it got.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub sync_timeout: Duration,
    /// How many write batches may replicate at once. A batch that arrives while fewer are in
    /// flight is executed on top of them and proposed right after them, instead of waiting
    /// for their round trip. 1, the default, waits for each batch before the next: deeper
    /// pipelines help a few concurrent writers and cost throughput under heavy load
    /// (docs/benchmarks.md).
    #[arg(long, env = "KEEL_WRITE_PIPELINE", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub write_pipeline: u8,
    /// Free space in the data directory's file system below which this node takes no new
    /// writes: as leader it answers them 507 (nothing written), as follower it refuses
    /// appends from the leader (the other voters carry the commit). Reads go on, and so does
    /// everything else once space returns, without a restart. Sizes like `64MiB`, `1GiB`.
    #[arg(long, default_value = "64MiB", value_parser = crate::bench_bootstrap::parse_size)]
    pub disk_reserve: u64,
    /// How often this node refreshes the query planner's statistics of its own copy (SQLite's
    /// `PRAGMA optimize`, bounded by `analysis_limit`); 0 never does.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub optimize_interval: Duration,
    /// How often the leader checks whether to `VACUUM` (through the log, on every replica):
    /// when free pages are a quarter of the file or more; 0 never does.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub auto_vacuum_interval: Duration,
    /// Back up the database to object storage on a schedule (on the leader only):
    /// `s3://bucket/prefix` (any S3-compatible service), `gs://bucket/prefix`,
    /// `az://container/prefix` or `file:///dir`. Endpoint, region and credentials come from the
    /// provider's usual environment variables (e.g. `AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`; `AWS_ALLOW_HTTP=true` for a plain-http
    /// endpoint).
    #[arg(long, value_name = "URL")]
    pub backup_to: Option<String>,
    /// Time between two backups of `--backup-to` (skipped when nothing changed since the last).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub backup_interval: Duration,
    /// Backups `--backup-to` keeps; older ones are deleted after each upload. Default: all.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub backup_retain: Option<u64>,
    /// gzip the backups of `--backup-to`.
    #[arg(long)]
    pub backup_compress: bool,
    /// Restore the newest backup from this object storage target (as `--backup-to`) before
    /// serving, when the data directory is empty and there is no `--join`: the node bootstraps
    /// a new cluster with that data. Ignored otherwise.
    #[arg(long, value_name = "URL")]
    pub restore_from: Option<String>,
    /// Credentials file (rqlite's `-auth` format: a JSON array of users with passwords and
    /// permissions). Without it, every client may do everything. Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub auth: Option<PathBuf>,
    /// Failed logins (unknown user or wrong password) allowed per user name and per client
    /// address within a minute; past it, such requests are answered 429 with `Retry-After`
    /// until the oldest failure is a minute old. 0 allows any number.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub auth_failures_per_minute: usize,
    /// `USER:PASSWORD` sent with `--join` when the cluster requires credentials (a user with
    /// the `join` permission, or `join-read-only` for a learner).
    #[arg(long, env = "KEEL_JOIN_AS", value_name = "USER:PASSWORD", hide_env_values = true)]
    pub join_as: Option<String>,
    /// Serve the client API over HTTPS with this certificate (PEM; the chain if any).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates on the client API, signed by this CA (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// This node's certificate (PEM) for mutual TLS between nodes; it must bind
    /// `keel://<cluster-id>/node/<--id>` (see `keel certs`).
    #[arg(long, value_name = "FILE", requires_all = ["node_key", "node_ca"])]
    pub node_cert: Option<PathBuf>,
    /// The private key (PEM) of `--node-cert`.
    #[arg(long, value_name = "FILE", requires = "node_cert")]
    pub node_key: Option<PathBuf>,
    /// The cluster CA (PEM): other nodes' certificates must be signed by it.
    #[arg(long, value_name = "FILE", requires = "node_cert")]
    pub node_ca: Option<PathBuf>,
    /// A directory written by `keel certs`: shorthand for `--node-cert DIR/node-<id>.pem
    /// --node-key DIR/node-<id>-key.pem --node-ca DIR/ca.pem --tls-cert DIR/server.pem
    /// --tls-key DIR/server-key.pem` (explicit flags win).
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Read-only SQLite connections serving queries.
    #[arg(long, default_value_t = 4)]
    pub readers: usize,
    /// The longest one client SQL statement may run (reads and writes) before it is interrupted
    /// with an error; a request may ask for less with `db_timeout`. Writes run one after
    /// another, so this bounds how long one statement can hold up every other write.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub max_statement_time: Duration,
    /// Open HTTP connections at most, on each of the client and Raft addresses; further
    /// connections wait to be accepted.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Client requests handled at once at most; further ones are answered 503 with
    /// `Retry-After` instead of queueing without bound.
    #[arg(long, default_value_t = 1024)]
    pub max_concurrent_requests: usize,
    /// How long a client may take to send a request's headers (and how long an idle
    /// keep-alive connection stays open) before the connection is closed.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,
    /// How long a request body may send nothing before the request ends with 408.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub http_body_timeout: Duration,
    /// The most rows one statement may return; more is an error for that statement.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_result_rows: usize,
    /// The most bytes of values (text and blob lengths, 8 per number) one statement may
    /// return; more is an error for that statement.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_result_bytes: usize,
    /// Enforce foreign key constraints (and run their ON DELETE/ON UPDATE actions) in client
    /// SQL, as rqlite's `-fk`; off by default, as there. The leader enforces them; what its
    /// statements did reaches every node as rows, so replicas stay identical either way. Give
    /// every node the same setting: whichever node leads decides.
    #[arg(long)]
    pub fk: bool,
    /// Queued writes (`/db/execute?queue`) waiting to be flushed at most; further ones are
    /// answered 503 with `Retry-After` (rqlite's `-write-queue-capacity`).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub write_queue_capacity: u64,
    /// Queued writes flushed together at most (rqlite's `-write-queue-batch-size`).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub write_queue_batch_size: u64,
    /// How long the first queued write of a batch waits for others before the batch is
    /// flushed; 0 flushes only full batches (rqlite's `-write-queue-timeout`).
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub write_queue_timeout: Duration,
    /// Flush each batch of queued writes as one transaction: one failing statement fails the
    /// whole batch (rqlite's `-write-queue-tx`).
    #[arg(long)]
    pub write_queue_tx: bool,
    /// Plants a known bug, to show that the fault harness (`keel-chaos`) catches it. Never
    /// use it for data you care about.
    #[arg(long, hide = true, value_enum)]
    pub unsafe_plant_bug: Vec<PlantedBug>,
    /// Record each log segment's durable length beside it (`<segment>.synced`), so a fault
    /// harness can simulate a power loss. Costs one small write per append.
    #[arg(long, hide = true)]
    pub wal_sync_marks: bool,
}

/// Bugs `keel serve --unsafe-plant-bug` can plant; each breaks a promise the fault harness
/// checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlantedBug {
    /// Answer a write before its record is committed.
    AckBeforeCommit,
    /// Serve `level=linearizable` reads from the local copy without a read index.
    StaleLinearizable,
    /// Acknowledge log appends without fdatasync (detected by `keel-chaos`' power-loss
    /// fault, which needs `--wal-sync-marks`).
    SkipFsync,
    /// Record this node's apply hash as if an earlier entry had been applied with other bytes
    /// (the data stays right): the leader's apply hash comparison must flag the node. A test
    /// hook for that comparison.
    SkewApplyHash,
    /// Start on a Raft log damaged in a way a torn write cannot explain, cutting it at the
    /// damage (detected by `keel-chaos`' corruption fault).
    TrustDamagedLog,
}

/// Flags of `keel local`.
#[derive(Debug, Clone, clap::Args)]
pub struct LocalArgs {
    /// Number of voting nodes (HTTP ports 4001, 4003, …; Raft ports 4002, 4004, …).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
    /// Number of learners (async read replicas), on the port pairs after the voters'.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=9))]
    pub learners: u64,
    /// Directory holding one data directory per node. Reused when run again.
    #[arg(long, default_value = "./keel-data/local")]
    pub data_dir: PathBuf,
    /// First HTTP port; node N uses base + 2(N-1) for HTTP and the next port for Raft.
    #[arg(long, default_value_t = 4001)]
    pub base_port: u16,
    /// HTTPS on the client API and mutual TLS between nodes, with certificates created in
    /// `<data-dir>/tls` by `keel certs` if missing.
    #[arg(long)]
    pub tls: bool,
    /// Start every node with `--fk`: foreign key constraints enforced.
    #[arg(long)]
    pub fk: bool,
    /// Serve reads over PostgreSQL's wire protocol too: node N on this port + N - 1
    /// (`keel serve --pg-addr`).
    #[arg(long, value_name = "PORT")]
    pub pg_port: Option<u16>,
}

/// Parses a durability mode (`semi-sync`, `sync`, `replicas:K`).
pub fn parse_durability(s: &str) -> Result<leader::Durability, String> {
    s.parse()
}

/// Parses a flag's duration: Go's syntax (`500ms`, `2s`, `1m30s`, as rqlite's flags and
/// parameters, [`params::go_duration`]), or a bare number of seconds (`3`, `1.5`); not negative.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let invalid = || format!("'{s}' is not a valid duration (try 500ms, 2s, 1m)");
    if s.starts_with('-') {
        return Err(invalid());
    }
    let duration = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.0..=1e9).contains(&secs) => {
            Duration::from_secs_f64(secs)
        }
        Ok(_) => return Err(format!("'{s}' is out of range")),
        Err(_) => params::go_duration(s).map_err(|()| invalid())?,
    };
    if duration > Duration::from_secs(1_000_000_000) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
