//! `keel-tour`: runs what the documentation tells a user to run, as written, and checks the
//! answers (see [`integration_tests::tour`]).
//!
//! ```sh
//! keel-tour command start        # prints the README's command that starts a local cluster
//! keel-tour command test         # prints the README's command that runs the tests
//! keel-tour readme               # runs the start command verbatim, the curl tour, then Ctrl-C
//! keel-tour docs --keel target/release/keel docs/*.md   # the blocks marked `<!-- ci: run -->`
//! ```
//!
//! `readme` starts the README's command in a process group of its own, as a terminal would, so
//! that SIGINT to the group is exactly a Ctrl-C. It waits until the three nodes answer
//! `/readyz`, runs every command of the "A tour with curl" section in order with `bash -c`,
//! acting on the one step the tour only describes in a comment (killing the leader), then
//! sends SIGINT and checks that every process of the group is gone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use integration_tests::chaos::cluster::pinned;
use integration_tests::tour::{self, TourCommand};
use serde_json::Value;

/// The HTTP addresses of `keel local`'s three voters with its default base port.
const NODES: [&str; 3] = ["127.0.0.1:4001", "127.0.0.1:4003", "127.0.0.1:4005"];

/// How long one tour command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the cluster may take to stop after Ctrl-C (`keel local` gives its nodes 10 s
/// before SIGKILL).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(name = "keel-tour", about = "Runs the README's and the docs' commands as written")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Prints one of the README's two commands.
    Command {
        /// `start` (a local cluster) or `test` (the test suite).
        which: String,
        /// The README.
        #[arg(long, default_value_os_t = workspace().join("README.md"))]
        readme: PathBuf,
    },
    /// Runs the README's start command verbatim and its curl tour against it.
    Readme {
        /// The README; its directory is where the start command runs.
        #[arg(long, default_value_os_t = workspace().join("README.md"))]
        readme: PathBuf,
        /// How long the cluster may take to become ready (a release build comes first).
        #[arg(long, default_value = "1800")]
        ready_timeout_secs: u64,
    },
    /// Runs the blocks marked `<!-- ci: run -->` of each page against a fresh `keel local`.
    Docs {
        /// The keel binary.
        #[arg(long)]
        keel: PathBuf,
        /// Print what each command answered (to refresh a page's outputs).
        #[arg(long)]
        show: bool,
        /// The pages.
        pages: Vec<PathBuf>,
    },
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Command { which, readme } => print_command(&which, &readme),
        Cmd::Readme { readme, ready_timeout_secs } => {
            run_readme(&readme, Duration::from_secs(ready_timeout_secs))
        }
        Cmd::Docs { keel, show, pages } => run_docs(&keel, &pages, show),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-tour: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn print_command(which: &str, readme: &Path) -> Result<(), String> {
    let (start, test) = tour::readme_commands(&read(readme)?)?;
    match which {
        "start" => println!("{start}"),
        "test" => println!("{test}"),
        other => return Err(format!("unknown command `{other}`: start or test")),
    }
    Ok(())
}

fn run_readme(readme: &Path, ready_timeout: Duration) -> Result<(), String> {
    let text = read(readme)?;
    let dir = readme.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (start, _) = tour::readme_commands(&text)?;
    let commands = tour::section_commands(&text, "A tour with curl")?;
    if dir.join("keel-data/local").exists() {
        return Err(format!(
            "{} exists: the tour's answers are those of a fresh cluster; remove it first",
            dir.join("keel-data/local").display()
        ));
    }
    println!("== {start}   (in {})", dir.display());
    let mut cluster = Group::start(Command::new("sh").arg("-c").arg(&start).current_dir(dir))?;
    let scratch = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let outcome = cluster
        .wait_ready(ready_timeout)
        .and_then(|()| Shell::start(scratch.path()))
        .and_then(|mut shell| run_tour(&commands, &cluster, &mut shell, Check::Strict, false));
    let stopped = cluster.interrupt();
    outcome.and(stopped)
}

fn run_docs(keel: &Path, pages: &[PathBuf], show: bool) -> Result<(), String> {
    let keel = std::fs::canonicalize(keel).map_err(|e| format!("{}: {e}", keel.display()))?;
    for page in pages {
        let blocks = tour::marked_blocks(&read(page)?)?;
        if blocks.is_empty() {
            continue;
        }
        let data = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        println!("== {} ({} blocks) against a fresh `keel local`", page.display(), blocks.len());
        let mut command = Command::new(&keel);
        command.arg("local").arg("--data-dir").arg(data.path().join("local"));
        command.current_dir(data.path());
        let mut cluster = Group::start(&mut command)?;
        let outcome = cluster
            .wait_ready(Duration::from_secs(120))
            .and_then(|()| Shell::start(data.path()))
            .and_then(|mut shell| {
                blocks
                    .iter()
                    .try_for_each(|b| run_tour(b, &cluster, &mut shell, Check::Shown, show))
            });
        let stopped = cluster.interrupt();
        outcome.and(stopped).map_err(|e| format!("{}: {e}", page.display()))?;
    }
    Ok(())
}

/// How answers without a `# ->` line are checked.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// The README's tour: every command prints something, and no JSON answer carries an error.
    Strict,
    /// A docs page, which also shows refusals on purpose: an answer has the shape of the output
    /// the page shows after the command.
    Shown,
}

/// Runs `commands` in order against a running cluster, in `shell`.
fn run_tour(
    commands: &[TourCommand],
    cluster: &Group,
    shell: &mut Shell,
    check: Check,
    show: bool,
) -> Result<(), String> {
    for command in commands {
        if command.comments.iter().any(|c| c.starts_with("Kill the leader")) {
            kill_leader(cluster)?;
        }
        let shown = command.text.lines().next().unwrap_or_default();
        let output = shell.run(&command.text)?;
        check_answer(command, &output, check)
            .map_err(|e| format!("`{}` answered:\n{output}\nwhich is wrong: {e}", command.text))?;
        println!("ok  {shown}{}", if command.text.contains('\n') { " …" } else { "" });
        if show {
            println!("{output}");
        }
    }
    Ok(())
}

/// Checks one answer (see the module docs of [`integration_tests::tour`]).
fn check_answer(command: &TourCommand, output: &str, check: Check) -> Result<(), String> {
    let json: Option<Value> = serde_json::from_str(output).ok();
    if let Some(expect) = &command.expect {
        let expected = tour::parse_expected(expect)?;
        let actual = json.ok_or("not JSON, but a JSON answer is shown")?;
        return tour::matches(&expected, &actual);
    }
    if let Some(shown) = &command.shown {
        tour::same_shape(shown, output)?;
    }
    match check {
        Check::Shown => Ok(()),
        Check::Strict if output.trim().is_empty() => Err("it printed nothing".into()),
        Check::Strict => match json.as_ref().map(tour::answer_errors) {
            Some(errors) if !errors.is_empty() => Err(errors.join("; ")),
            _ => Ok(()),
        },
    }
}

/// Kills the leader with SIGKILL, as the tour tells the user to, and waits until another node
/// leads.
fn kill_leader(cluster: &Group) -> Result<(), String> {
    let leader = leader_of(NODES[1]).ok_or("no node leads before the kill")?;
    let pid = cluster
        .processes()
        .into_iter()
        .find(|p| p.cmdline.contains("serve") && p.cmdline.contains(&leader))
        .ok_or_else(|| format!("no `keel serve` process with --http-addr {leader}"))?
        .pid;
    println!("..  killing the leader, {leader} (pid {pid}), with SIGKILL");
    signal(pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let successor = NODES.iter().filter(|n| **n != leader).find_map(|n| leader_of(n));
        if successor.is_some_and(|s| s != leader) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("no other node took over within 20 s of killing the leader".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client of `node` alone: one attempt of at most 2 s, no retries.
fn client_of(node: &str) -> Option<keel_api::blocking::Client> {
    pinned(&format!("http://{node}"), Duration::from_secs(2)).ok()
}

/// The HTTP address of the leader as `node` sees it (`GET /leader`).
fn leader_of(node: &str) -> Option<String> {
    let api = client_of(node)?.leader().ok()?.api_addr;
    Some(api.trim_start_matches("http://").trim_start_matches("https://").to_string())
}

/// Whether `node` answers `/readyz` with 200.
fn ready(node: &str) -> bool {
    client_of(node).and_then(|c| c.ready(false, false).ok()).is_some_and(|r| r.ready)
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory effects; a stale pid only yields ESRCH.
    unsafe { libc::kill(pid, signal) };
}

/// One bash process that runs a tour's commands one after another, as a user's terminal would:
/// a variable one command sets is there for the next. Each command's output goes to files of
/// its own, and its exit status to a file that appears when it is done.
struct Shell {
    bash: Child,
    input: std::process::ChildStdin,
    dir: tempfile::TempDir,
    count: usize,
}

impl Shell {
    /// Starts bash in `cwd` (files the commands write, such as backups, land there).
    fn start(cwd: &Path) -> Result<Shell, String> {
        let mut bash = Command::new("bash")
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run bash: {e}"))?;
        let input = bash.stdin.take().ok_or("bash has no stdin")?;
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        Ok(Shell { bash, input, dir, count: 0 })
    }

    /// Runs `text` and returns what it printed on stdout; an error if it failed or hung.
    fn run(&mut self, text: &str) -> Result<String, String> {
        use std::io::Write as _;
        self.count += 1;
        let file = |name: &str| self.dir.path().join(format!("{name}.{}", self.count));
        let (out, err, status) = (file("out"), file("err"), file("status"));
        let script = format!(
            "{{\n{text}\n}} >'{}' 2>'{}' </dev/null; echo $? >'{}.part'; mv '{}.part' '{}'\n",
            out.display(),
            err.display(),
            status.display(),
            status.display(),
            status.display()
        );
        self.input
            .write_all(script.as_bytes())
            .and_then(|()| self.input.flush())
            .map_err(|e| format!("bash went away: {e}"))?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let code = loop {
            if let Ok(code) = std::fs::read_to_string(&status) {
                break code.trim().to_string();
            }
            if Instant::now() > deadline {
                return Err(format!("`{text}` did not finish within {COMMAND_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = std::fs::read_to_string(&out).unwrap_or_default();
        if code != "0" {
            let stderr = std::fs::read_to_string(&err).unwrap_or_default();
            return Err(format!("`{text}` failed (exit status {code}):\n{stdout}{stderr}"));
        }
        Ok(stdout)
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.bash.kill();
        let _ = self.bash.wait();
    }
}

/// A process of the group, from `/proc`.
struct Process {
    pid: i32,
    cmdline: String,
}

/// A command started in a process group of its own, its output kept in a file.
struct Group {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Group {
    fn start(command: &mut Command) -> Result<Group, String> {
        use std::os::unix::process::CommandExt as _;
        let busy: Vec<&str> =
            NODES.iter().copied().filter(|n| std::net::TcpStream::connect(n).is_ok()).collect();
        if !busy.is_empty() {
            return Err(format!("something already listens on {}", busy.join(", ")));
        }
        let log = tempfile::NamedTempFile::new().map_err(|e| format!("log file: {e}"))?;
        let out = log.reopen().map_err(|e| e.to_string())?;
        let err = log.reopen().map_err(|e| e.to_string())?;
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {command:?}: {e}"))?;
        Ok(Group { child, log })
    }

    fn pgid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    fn output_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let started = Instant::now();
        let mut said = Instant::now();
        loop {
            if NODES.iter().all(|n| ready(n)) {
                println!("..  3 nodes ready after {:.0?}", started.elapsed());
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("it exited ({status}) before the cluster was ready:\n{}", {
                    self.output_tail()
                }));
            }
            if Instant::now() > deadline {
                return Err(format!("the cluster was not ready within {timeout:?}:\n{}", {
                    self.output_tail()
                }));
            }
            if said.elapsed() > Duration::from_secs(60) {
                println!("..  waiting for 3 ready nodes ({:.0?})", started.elapsed());
                said = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every living process of the group, and their descendants that left it.
    fn processes(&self) -> Vec<Process> {
        // (pid, parent pid, process group, zombie, command line)
        let mut all: Vec<(i32, i32, i32, bool, String)> = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // The command name (field 2) may hold spaces; the fields after it are plain.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let (Some(state), Some(ppid), Some(pgrp)) = (
                fields.first(),
                fields.get(1).and_then(|s| s.parse::<i32>().ok()),
                fields.get(2).and_then(|s| s.parse::<i32>().ok()),
            ) else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            all.push((pid, ppid, pgrp, *state == "Z", cmdline));
        }
        let mut members: Vec<i32> =
            all.iter().filter(|p| p.2 == self.pgid()).map(|p| p.0).collect();
        loop {
            let more: Vec<i32> = all
                .iter()
                .filter(|p| members.contains(&p.1) && !members.contains(&p.0))
                .map(|p| p.0)
                .collect();
            if more.is_empty() {
                break;
            }
            members.extend(more);
        }
        all.into_iter()
            .filter(|p| members.contains(&p.0) && !p.3)
            .map(|p| Process { pid: p.0, cmdline: p.4 })
            .collect()
    }

    /// Ctrl-C: SIGINT to the whole group, then checks that every process is gone.
    fn interrupt(&mut self) -> Result<(), String> {
        let before = self.processes();
        println!("..  Ctrl-C (SIGINT to {} processes)", before.len());
        signal(-self.pgid(), libc::SIGINT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            let left: Vec<Process> = self.processes();
            if exited && left.is_empty() {
                println!("..  stopped: every process is gone");
                return Ok(());
            }
            if Instant::now() > deadline {
                let names: Vec<String> =
                    left.iter().map(|p| format!("{} ({})", p.pid, p.cmdline)).collect();
                signal(-self.pgid(), libc::SIGKILL);
                for p in &left {
                    signal(p.pid, libc::SIGKILL);
                }
                let _ = self.child.wait();
                return Err(format!(
                    "{STOP_TIMEOUT:?} after Ctrl-C, still running: {}\n{}",
                    names.join(", "),
                    self.output_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
