//! `keel`: the Keel server binary.
//!
//! - `keel serve` runs one node: the SQLite database, the Raft node and the HTTP API
//!   ([`run`], the [`node`] crate, [`http`]).
//! - `keel local` starts a local cluster of `keel serve` child processes for trying Keel out
//!   ([`local`]).
//! - `keel bench` measures a running cluster ([`mod@bench`]).
//! - `keel certs` creates a cluster CA and certificates for TLS ([`certs`], [`tls`]).
//! - `keel backup` and `keel restore` stream a backup out of, or a load into, a running
//!   cluster ([`backup`]); `keel serve --backup-to` backs up to object storage on a schedule
//!   and `--restore-from` restores from it ([`backup_to`]).
//! - `keel shell` is an interactive SQL shell against any node ([`shell`]).
//! - `keel changes` prints the committed row changes of a running cluster ([`changes`]).
//! - `keel admin` changes a running cluster's leadership and membership ([`admin`]);
//!   `keel admin recover` rewrites a stopped node's membership after a lost majority
//!   ([`recover`]).
//! - Every node serves a web console at `/console` ([`http::console`]).
//!
//! Logs go to stderr; `RUST_LOG` selects what is shown (default `info,openraft=warn`).

// Handlers return early with a ready `Response` as the error; boxing it would only add noise.
#![allow(clippy::result_large_err)]

mod admin;
mod args;
mod auth;
mod backup;
mod backup_to;
mod bench;
mod bench_bootstrap;
mod certs;
mod changes;
mod check;
mod data_dir;
mod headers;
mod http;
mod local;
mod params;
mod pg;
mod recover;
mod run;
mod serve;
mod shell;
mod tls;

use clap::Parser;

use args::{Cli, Command};
pub use args::{LocalArgs, PlantedBug, ServeArgs, parse_durability, parse_duration};

/// Caps glibc's malloc arenas at two. By default glibc gives each busy thread an arena of its
/// own (up to 8 per core) and keeps freed memory in it; after a snapshot transfer or a burst of
/// large records a node held tens of MB per arena. Two arenas keep a node's memory bounded
/// (peak RSS of a node joining a 512 MiB database: 75 MiB) at no measurable cost in speed.
///
/// Also fixes the size from which an allocation gets pages of its own (`mmap`, given back to
/// the system when freed) at 1 MiB. glibc's default starts at 128 KiB and rises to the largest
/// block freed so far (up to 32 MiB): after the first batches of a catch-up (megabytes of log
/// entries, frames and records, each freed after use) every later one was carved out of the
/// arenas instead, which then kept the high-water mark of all of them. A learner catching up
/// from a log of 1,000,000 rows peaked at 138 MB with the rising threshold, 106 MB with a fixed
/// one, and held 70 MB afterwards instead of 138 MB.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Raises the soft limit on open files to the hard limit, as Go and many servers do: each
/// client connection takes a descriptor, and the usual soft limit of 1024 would turn a burst
/// of clients into refused connections long before `--max-connections`.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// `keel hash-password`: reads one line from stdin, prints its argon2id PHC string.
fn hash_password() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        anyhow::bail!("no password on stdin");
    }
    println!("{}", auth::hash_password(password)?);
    Ok(())
}

/// With `--features dhat-heap`, every allocation goes through dhat, which writes a heap
/// profile (`dhat-heap.json`, for dhat's viewer) when `main` returns.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() -> anyhow::Result<()> {
    // Declared first, so dropped (and the profile written) after everything else.
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::new_heap();
    limit_malloc_arenas();
    raise_open_files_limit();
    tls::install_provider();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Before any database opens: every page of Keel's databases carries a checksum.
    sql::pagesum::register()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(run::serve(args)),
        Command::Local(args) => runtime.block_on(local::run(args)),
        Command::Bench(args) => runtime.block_on(bench::run(args)),
        Command::Admin(args) => runtime.block_on(admin::run(args)),
        Command::Certs(args) => certs::run(args),
        Command::Backup(args) => runtime.block_on(backup::run_backup(args)),
        Command::Restore(args) => runtime.block_on(backup::run_restore(args)),
        Command::Shell(args) => shell::run(args),
        Command::HashPassword => hash_password(),
        Command::Changes(args) => runtime.block_on(changes::run(args)),
        Command::Check(args) => runtime.block_on(check::run(args)),
    }
}
