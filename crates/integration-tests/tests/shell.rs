//! `keel shell` as a user meets it: the real binary in a pseudo-terminal (rustyline editing,
//! history, completion) against a real 3-node cluster, and with piped input against one node.
//!
//! The terminal echoes what is typed and rustyline redraws the line as it goes, so the test
//! waits for text only the shell's answers contain (a result table, a count line, an error),
//! never for the prompt. ANSI escape codes are stripped from what is read; lines end in `\r\n`
//! on a terminal.

use std::path::Path;
use std::process::{Command, Stdio};

use integration_tests::{NodeId, TIMEOUT, TestCluster, keel_binary, wait_for};
use rexpect::session::PtySession;
use serde_json::json;

/// How long one expected answer may take (an election and a retry included).
const EXPECT_TIMEOUT_MS: u64 = 20_000;

/// Starts `keel shell` on `node` of `c` in a pseudo-terminal, with its history in `history`.
fn spawn_shell(c: &TestCluster, node: NodeId, history: &Path) -> PtySession {
    let mut command = Command::new(keel_binary());
    command
        .args(["shell", &format!("http://{}", c.http_addr(node))])
        .env("KEEL_HISTORY", history)
        .env("TERM", "xterm")
        .env_remove("RUST_LOG");
    let options = rexpect::reader::Options::new()
        .timeout_ms(Some(EXPECT_TIMEOUT_MS))
        .strip_ansi_escape_codes(true);
    rexpect::spawn_with_options(command, options).expect("keel shell starts in a pty")
}

/// Types `line` (and Enter) and waits until the output shows `expected`; returns what came
/// before it (the echo of the line included).
fn send(shell: &mut PtySession, line: &str, expected: &str) -> String {
    shell.send_line(line).unwrap_or_else(|e| panic!("typing {line:?}: {e}"));
    expect(shell, expected, line)
}

/// Waits until the output shows `expected`; returns what came before it.
fn expect(shell: &mut PtySession, expected: &str, after: &str) -> String {
    shell
        .exp_string(expected)
        .unwrap_or_else(|e| panic!("after {after:?}, expected {expected:?} in the output: {e}"))
}

/// Lines as a terminal shows them.
fn crlf(lines: &[&str]) -> String {
    lines.iter().map(|l| format!("{l}\r\n")).collect()
}

/// The shell in a terminal: DDL and writes, a multi-line statement, aligned results, the
/// dot-commands, settings refused when bad, an error that the shell survives, the timer, tab
/// completion of a table name, a backup that is a SQLite file, a load of SQL text, and failover
/// when the node the shell talks to (the leader) is killed. The history file keeps the
/// statements.
#[test]
fn interactive_shell_against_a_three_node_cluster() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let work = tempfile::tempdir().unwrap();
    let history = work.path().join("history");
    let mut shell = spawn_shell(&c, leader, &history);
    expect(&mut shell, &format!("Connected to http://{}", c.http_addr(leader)), "start");

    send(
        &mut shell,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, score REAL);",
        "0 rows affected",
    );
    // Multi-line: the first line leaves the statement open, the continuation prompt shows.
    send(&mut shell, "INSERT INTO users(name, score) VALUES", "...> ");
    send(&mut shell, "  ('fiona', 1.5),", "...> ");
    send(&mut shell, "  ('declan', NULL);", "2 rows affected");
    send(
        &mut shell,
        "SELECT id, name, score FROM users ORDER BY id;",
        &crlf(&[
            " id | name   | score",
            "----+--------+-------",
            "  1 | fiona  |   1.5",
            "  2 | declan | NULL",
            "(2 rows)",
        ]),
    );

    send(&mut shell, ".tables", "\nusers\r\n");
    send(
        &mut shell,
        ".schema users",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, score REAL);\r\n",
    );
    // A schema statement reports the counters the last write left (the insert of 2 rows), as
    // rqlite's results do.
    send(&mut shell, "CREATE INDEX users_name ON users(name);", "2 rows affected");
    send(&mut shell, ".indexes users", &crlf(&[" users_name | users", "(1 index)"]));
    let nodes = send(&mut shell, ".nodes", "(3 nodes)");
    for id in c.ids() {
        assert!(nodes.contains(&format!("http://{}", c.http_addr(id))), "node {id} in {nodes}");
    }
    assert_eq!(nodes.matches(" leader ").count(), 1, "one leader in {nodes}");
    send(
        &mut shell,
        ".leader",
        &format!("node {leader} at http://{} (raft {})", c.http_addr(leader), c.raft_addr(leader)),
    );
    send(&mut shell, ".status", &format!("node:        {leader} (leader)"));

    // Settings: good values accepted and used, bad ones refused with the reason.
    send(&mut shell, ".consistency strong", "consistency: strong");
    send(
        &mut shell,
        ".consistency sometimes",
        "Error: unknown consistency level 'sometimes' (use none, weak, linearizable, strong or auto)",
    );
    send(&mut shell, ".consistency", "consistency: strong");
    send(&mut shell, ".durability replicas:2", "durability: replicas:2");
    send(
        &mut shell,
        ".durability eventually",
        "Error: unknown durability 'eventually' (use semi-sync, sync or replicas:K)",
    );
    send(&mut shell, "INSERT INTO users(name) VALUES ('everywhere');", "1 row affected");
    send(&mut shell, ".durability replicas:5", "durability: replicas:5");
    send(
        &mut shell,
        "INSERT INTO users(name) VALUES ('impossible');",
        "Error: durability replicas:5 cannot be met: the cluster has 2 other members",
    );
    send(&mut shell, ".durability semi-sync", "durability: semi-sync");

    // Errors are shown plainly and the shell goes on.
    send(&mut shell, "SELECT * FROM nope;", "Error: no such table: nope");
    send(
        &mut shell,
        ".frobnicate",
        "Error: unknown command '.frobnicate': type .help for the list",
    );
    send(&mut shell, "SELECT count(*) AS n FROM users;", &crlf(&[" n", "---", " 3", "(1 row)"]));

    send(&mut shell, ".timer on", "timer: on");
    shell.send_line("SELECT 42 AS answer;").unwrap();
    expect(&mut shell, &crlf(&[" answer", "--------", "     42", "(1 row)"]), "SELECT 42");
    shell.exp_regex(r"Time: \d+\.\d{3} ms").expect("the timer prints the time");
    send(&mut shell, ".timer off", "timer: off");

    // Tab completes the table name ("use" matches no keyword).
    shell.send("SELECT name FROM use\t").unwrap();
    send(&mut shell, " WHERE id = 1;", &crlf(&[" name", "-------", " fiona", "(1 row)"]));

    let backup = work.path().join("backup.sqlite");
    send(&mut shell, &format!(".backup {}", backup.display()), "wrote ");
    let bytes = std::fs::read(&backup).expect("the backup file exists");
    assert!(bytes.starts_with(b"SQLite format 3\0"), "the backup is a SQLite file");
    let copy = rusqlite::Connection::open(&backup).unwrap();
    let names: Vec<String> = copy
        .prepare("SELECT name FROM users ORDER BY id")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(names, ["fiona", "declan", "everywhere"]);

    let script = work.path().join("more.sql");
    std::fs::write(&script, "INSERT INTO users(name) VALUES ('restored');\n").unwrap();
    send(&mut shell, &format!(".restore {}", script.display()), "restored from ");
    send(&mut shell, "SELECT count(*) AS n FROM users;", &crlf(&[" n", "---", " 4", "(1 row)"]));

    // Failover: the node the shell talks to dies; the next statement runs on another node.
    c.kill(leader);
    shell.send_line("INSERT INTO users(name) VALUES ('after failover');").unwrap();
    let switched = expect(&mut shell, "1 row affected", "the insert after the kill");
    // The reason depends on timing (a refused connection, or a pooled one found closed).
    let dead = format!("http://{} (node {leader}) is not answering (", c.http_addr(leader));
    assert!(switched.contains(&dead), "the shell says which node stopped answering: {switched}");
    assert!(switched.contains("); switched to http://"), "the shell says it switched: {switched}");
    send(&mut shell, "SELECT count(*) AS n FROM users;", &crlf(&[" n", "---", " 5", "(1 row)"]));
    let new_leader = c.leader();
    assert_eq!(
        c.rows(new_leader, "SELECT count(*) FROM users WHERE name = 'after failover'"),
        vec![vec![json!(1)]],
        "the write after the failover is applied exactly once"
    );

    shell.send_line(".quit").unwrap();
    shell.exp_eof().expect("the shell exits on .quit");
    let saved = std::fs::read_to_string(&history).expect("the history file is written");
    assert!(saved.contains("SELECT id, name, score FROM users ORDER BY id;"), "{saved}");
    assert!(saved.contains(".consistency strong"), "{saved}");
}

/// Runs `keel shell URL` with `input` on stdin (not a terminal); returns exit success, stdout
/// and stderr.
fn run_piped(url: &str, input: &str) -> (bool, String, String) {
    let mut child = Command::new(keel_binary())
        .args(["shell", url])
        .env("KEEL_HISTORY", "")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keel shell starts");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Piped input: statements are read from stdin and their results printed; a failed statement
/// makes the exit status non-zero without stopping the rest; a last statement without `;`
/// still runs.
#[test]
fn piped_statements_print_results_and_set_the_exit_status() {
    let c = TestCluster::start(1, 0);
    let url = format!("http://{}", c.http_addr(1));

    let (ok, stdout, stderr) = run_piped(
        &url,
        "CREATE TABLE t (a INTEGER, b TEXT);\n\
         INSERT INTO t VALUES (1, 'one'), (2, NULL);\n\
         -- a comment between statements\n\
         SELECT a, b\n  FROM t ORDER BY a;\n",
    );
    assert!(ok, "stderr: {stderr}");
    assert_eq!(
        stdout,
        "0 rows affected\n2 rows affected\n a | b\n---+------\n 1 | one\n 2 | NULL\n(2 rows)\n"
    );

    let (ok, stdout, stderr) =
        run_piped(&url, "SELECT * FROM missing;\n.tables\nSELECT count(*) AS n FROM t");
    assert!(!ok, "a failed statement fails the run; stdout: {stdout}");
    assert_eq!(stdout, "t\n n\n---\n 2\n(1 row)\n");
    assert!(stderr.contains("Error: no such table: missing"), "{stderr}");
    assert!(stderr.contains("1 of 3 statements and commands failed"), "{stderr}");
    assert_eq!(c.rows(1, "SELECT count(*) FROM t"), vec![vec![json!(2)]]);
}

/// The rows of `sql` in a SQLite database made from the SQL text `dump`.
fn rows_of_dump(dump: &str, sql: &str) -> Vec<(i64, Option<String>)> {
    let db = rusqlite::Connection::open_in_memory().unwrap();
    db.execute_batch(dump).unwrap_or_else(|e| panic!("the dump runs in sqlite3: {e}\n{dump}"));
    let mut statement = db.prepare(sql).unwrap();
    let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

/// rqlite's dot-commands that move data, piped: `.mode csv`, `.output` to a file and back,
/// `.dump` to stdout and to a file (with a table list), `.read` of a script, `.boot` of a
/// SQLite file (and its refusal of SQL text), `.ready`, `.expvar` and `.sysdump`.
#[test]
fn piped_rqlite_dot_commands_move_data_in_and_out() {
    let c = TestCluster::start(1, 0);
    let url = format!("http://{}", c.http_addr(1));
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str| work.path().join(name).display().to_string();
    std::fs::write(
        path("script.sql"),
        "-- more rows\nINSERT INTO t VALUES (3, 'three');\n.mode line\nSELECT a, b\n  FROM t WHERE a = 3;\n",
    )
    .unwrap();

    let (ok, stdout, stderr) = run_piped(
        &url,
        &format!(
            "CREATE TABLE t (a INTEGER, b TEXT);\n\
             CREATE TABLE other (x);\n\
             INSERT INTO t VALUES (1, 'one, two'), (2, NULL);\n\
             .mode csv\n\
             SELECT a, b FROM t ORDER BY a;\n\
             .output {counted}\n\
             SELECT count(*) AS n FROM t;\n\
             .output stdout\n\
             .mode column\n\
             .backup {seed}\n\
             .read {script}\n\
             .mode column\n\
             .dump {dumped} t\n\
             .dump\n",
            counted = path("counted.txt"),
            seed = path("seed.sqlite"),
            script = path("script.sql"),
            dumped = path("t.sql"),
        ),
    );
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    // `.mode column` is set twice: before the backup, and before the dumps.
    let (before, rest) = stdout.split_once("mode: column\n").unwrap();
    let (read, dump) = rest.split_once("mode: column\n").unwrap();
    assert_eq!(
        before,
        "0 rows affected\n0 rows affected\n2 rows affected\nmode: csv\n\
         a,b\r\n1,\"one, two\"\r\n2,\r\n"
    );
    assert_eq!(std::fs::read_to_string(path("counted.txt")).unwrap(), "n\r\n2\r\n");
    assert_eq!(read, "1 row affected\nmode: line\na = 3\nb = three\n");
    let all = vec![(1, Some("one, two".to_string())), (2, None), (3, Some("three".to_string()))];
    assert_eq!(rows_of_dump(dump, "SELECT a, b FROM t ORDER BY a"), all, "{dump}");
    assert!(dump.contains("CREATE TABLE other"), "the whole database: {dump}");
    let t_only = std::fs::read_to_string(path("t.sql")).unwrap();
    assert_eq!(rows_of_dump(&t_only, "SELECT a, b FROM t ORDER BY a"), all);
    assert!(!t_only.contains("other"), "only the tables asked for: {t_only}");
    assert!(stderr.contains(&format!("wrote {}", path("t.sql"))), "{stderr}");

    // .boot loads a SQLite file (the backup taken before the script ran): row 3 is gone.
    let (ok, stdout, stderr) = run_piped(
        &url,
        &format!(
            ".boot {seed}\n.mode csv\nSELECT count(*) AS n FROM t;\n.boot {script}\n",
            seed = path("seed.sqlite"),
            script = path("script.sql"),
        ),
    );
    assert!(!ok, "booting from SQL text fails the run: {stdout}");
    assert_eq!(stdout, "mode: csv\nn\r\n2\r\n");
    assert!(
        stderr.contains(&format!(
            "Error: {} is not a SQLite database file: .boot loads SQLite files only",
            path("script.sql")
        )),
        "{stderr}"
    );
    assert!(stderr.contains("1 of 4 statements and commands failed"), "{stderr}");

    let (ok, stdout, stderr) =
        run_piped(&url, &format!(".ready\n.expvar\n.sysdump {}\n", path("sysdump.txt")));
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.starts_with("ready\n  [+]"), "{stdout}");
    assert!(
        stdout.contains(
            "# Keel has no /debug/vars (Go's expvar); these are its metrics, GET /metrics\n# "
        ),
        "{stdout}"
    );
    assert!(stdout.contains("\nkeel_"), "the metrics follow: {stdout}");
    let sysdump = std::fs::read_to_string(path("sysdump.txt")).unwrap();
    for page in ["/status?pretty", "/nodes?nonvoters&pretty", "/readyz", "/metrics"] {
        assert!(
            sysdump.contains(&format!("URL: {url}{page}\nStatus: OK\n\n")),
            "{page}: {sysdump}"
        );
    }
    assert!(sysdump.contains("\"leader\""), "{sysdump}");
}

/// `.stepdown NODEID` hands leadership to that node and `.remove NODEID` takes a running
/// follower out of the membership, both from a shell on the old leader.
#[test]
fn stepdown_and_remove_change_a_three_node_cluster() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let followers = c.followers(leader);
    let (next, removed) = (followers[0], followers[1]);
    let url = format!("http://{}", c.http_addr(leader));

    let (ok, stdout, stderr) =
        run_piped(&url, &format!(".stepdown {next}\n.remove {removed}\n.remove x\n"));
    assert!(!ok, "a node id that is no member fails the run");
    assert!(stdout.starts_with(&format!("node {next} is now the leader (term ")), "{stdout}");
    assert!(stdout.ends_with(&format!("node {removed} removed from the cluster\n")), "{stdout}");
    assert!(stderr.contains("node x is not a member of the cluster"), "{stderr}");
    wait_for(TIMEOUT, format!("node {next} to lead"), || {
        (c.current_leader() == Some(next)).then_some(())
    });
    let mut expected = vec![leader, next];
    expected.sort_unstable();
    wait_for(TIMEOUT, "the membership without the removed node", || {
        let nodes: keel_api::cluster::NodeMap = c.get(next, "/nodes?nonvoters").parse();
        let mut ids: Vec<NodeId> = nodes.keys().map(|id| id.parse().unwrap()).collect();
        ids.sort_unstable();
        (ids == expected).then_some(())
    });
}
