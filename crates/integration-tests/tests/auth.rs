//! Users and permissions (`keel serve --auth FILE`): every client endpoint, on the leader and on
//! a follower (which forwards), answers exactly 401 to anonymous callers and wrong passwords,
//! 403 to a user without the permission, and succeeds for a user with it. A follower cannot
//! lend a forwarded request rights its caller lacks at the leader; the file reloads on SIGHUP
//! and through the API; passwords may be argon2 hashes made by `keel hash-password`. Failed
//! logins are limited per user and per client address.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use integration_tests::{NodeId, TestCluster, keel_binary, wait_for};
use reqwest::blocking::Client;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Value, json};

/// The permissions a user can hold, but `all`.
const PERMS: &[&str] = &[
    "execute",
    "query",
    "load",
    "backup",
    "status",
    "ready",
    "join",
    "remove",
    "leader-ops",
    "ui",
    "admin",
];

/// The superuser the test harness itself uses.
const ROOT: (&str, &str) = ("root", "root-password");

/// The credentials file: per permission `has-P` (only P) and `not-P` (everything but P), `rw`
/// (query and execute), `joiner` for the nodes' own joins, and `root` with an argon2 hash.
fn users(root_hash: &str, anyone: &[&str]) -> Value {
    let mut users = vec![
        json!({"username": ROOT.0, "password": root_hash, "perms": ["all"]}),
        json!({"username": "joiner", "password": "join-pw", "perms": ["join"]}),
        json!({"username": "rw", "password": "rw-pw", "perms": ["query", "execute"]}),
        json!({"username": "*", "perms": anyone}),
    ];
    for perm in PERMS {
        users.push(json!({"username": format!("has-{perm}"), "password": format!("pw-{perm}"), "perms": [perm]}));
        let others: Vec<&str> = PERMS.iter().copied().filter(|p| p != perm).collect();
        users.push(json!({"username": format!("not-{perm}"), "password": format!("pw-not-{perm}"), "perms": others}));
    }
    Value::Array(users)
}

/// `keel hash-password` of `password`.
fn hash_password(password: &str) -> String {
    let mut child = Command::new(keel_binary())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running keel hash-password");
    writeln!(child.stdin.take().expect("stdin"), "{password}").expect("writing the password");
    let out = child.wait_with_output().expect("keel hash-password");
    assert!(out.status.success(), "keel hash-password failed");
    let hash = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    hash
}

/// A 3-node cluster started with [`users`] as its `--auth` file, `*` holding `anyone`, with a
/// table `t`; the harness itself calls as `root`.
struct Secured {
    c: TestCluster,
    file: std::path::PathBuf,
    root_hash: String,
    _dir: tempfile::TempDir,
}

impl Secured {
    fn start(anyone: &[&str]) -> Secured {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("users.json");
        let root_hash = hash_password(ROOT.1);
        std::fs::write(&file, users(&root_hash, anyone).to_string()).expect("writing users");
        let file_arg = file.to_str().expect("utf-8 path");
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, basic(ROOT.0, ROOT.1));
        // The matrix sends many wrong passwords from one address: no login limit here (the
        // limit has a test of its own).
        let c = TestCluster::start_with_headers(
            3,
            0,
            &["--auth", file_arg, "--join-as", "joiner:join-pw", "--auth-failures-per-minute", "0"],
            headers,
        );
        c.execute_ok(c.leader(), json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]));
        Secured { c, file, root_hash, _dir: dir }
    }
}

/// A Basic `Authorization` value.
fn basic(user: &str, password: &str) -> HeaderValue {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    HeaderValue::from_str(&format!("Basic {token}")).expect("header value")
}

/// Who calls.
#[derive(Clone, Copy, Debug)]
enum Caller<'a> {
    Anonymous,
    User(&'a str, &'a str),
}

/// One endpoint of the matrix.
struct Endpoint {
    method: &'static str,
    path: String,
    body: Option<(&'static str, String)>,
    /// The user with exactly the permission(s) needed, and one with everything else.
    with: (String, String),
    without: (String, String),
    /// The answer for `with` (what the endpoint gives an allowed caller).
    allowed: u16,
}

/// Sends one request and returns its status.
fn send(client: &Client, c: &TestCluster, node: NodeId, e: &Endpoint, caller: Caller<'_>) -> u16 {
    let url = c.url(node, &e.path);
    let mut request = match e.method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        other => panic!("method {other}"),
    };
    if let Some((content_type, body)) = &e.body {
        request = request.header(CONTENT_TYPE, *content_type).body(body.clone());
    }
    if let Caller::User(user, password) = caller {
        request = request.header(AUTHORIZATION, basic(user, password));
    }
    let response = request.send().unwrap_or_else(|err| panic!("{} {}: {err}", e.method, e.path));
    if response.status().as_u16() == 401 {
        assert!(response.headers().contains_key("www-authenticate"), "401 without a challenge");
    }
    // Dropped unread: the change stream never ends.
    response.status().as_u16()
}

/// An endpoint that `has-<perm>` may call (answered 200) and `not-<perm>` may not.
fn endpoint(
    method: &'static str,
    path: impl Into<String>,
    body: Option<(&'static str, String)>,
    perm: &str,
) -> Endpoint {
    Endpoint {
        method,
        path: path.into(),
        body,
        with: user(perm),
        without: not_user(perm),
        allowed: 200,
    }
}

fn user(perm: &str) -> (String, String) {
    (format!("has-{perm}"), format!("pw-{perm}"))
}

fn not_user(perm: &str) -> (String, String) {
    (format!("not-{perm}"), format!("pw-not-{perm}"))
}

#[test]
fn every_endpoint_answers_401_403_or_success_exactly_on_leader_and_follower() {
    // Bound whole: the temporary directory holding the users file must outlive the cluster.
    let secured = Secured::start(&[]);
    let c = &secured.c;
    let leader = c.leader();
    let follower = c.followers(leader)[0];
    let client = Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");

    let member = follower;
    let join_body = json!({
        "id": member, "raft_addr": c.raft_addr(member), "http_addr": c.http_addr(member)
    })
    .to_string();
    let endpoints = vec![
        endpoint(
            "POST",
            "/db/execute",
            Some(("application/json", json!(["INSERT INTO t(v) VALUES('m')"]).to_string())),
            "execute",
        ),
        endpoint("GET", "/db/query?q=SELECT%20count(*)%20FROM%20t", None, "query"),
        Endpoint {
            method: "POST",
            path: "/db/request".into(),
            body: Some(("application/json", json!(["SELECT 1"]).to_string())),
            with: ("rw".into(), "rw-pw".into()),
            without: not_user("execute"),
            allowed: 200,
        },
        endpoint("GET", "/db/changes?from=1", None, "query"),
        endpoint("GET", "/db/backup", None, "backup"),
        endpoint(
            "POST",
            "/db/load",
            Some(("text/plain", "INSERT INTO t(v) VALUES('loaded');".into())),
            "load",
        ),
        endpoint("GET", "/status", None, "status"),
        endpoint("GET", "/nodes", None, "status"),
        endpoint("GET", "/metrics", None, "status"),
        Endpoint {
            method: "GET",
            path: "/leader".into(),
            body: None,
            // `status` or `leader-ops` allows it: the user without has neither.
            with: user("status"),
            without: ("rw".into(), "rw-pw".into()),
            allowed: 200,
        },
        endpoint("GET", "/readyz", None, "ready"),
        endpoint("POST", "/join", Some(("application/json", join_body)), "join"),
        endpoint("POST", format!("/admin/promote?node={leader}"), None, "admin"),
        Endpoint {
            method: "POST",
            path: "/admin/membership".into(),
            body: Some((
                "application/json",
                json!({"action": "promote", "id": member}).to_string(),
            )),
            with: user("admin"),
            without: not_user("admin"),
            allowed: 200,
        },
        endpoint("POST", "/admin/auth/reload", None, "admin"),
        Endpoint {
            method: "POST",
            path: "/leader".into(),
            body: Some(("application/json", json!({"id": leader}).to_string())),
            // `leader-ops` or `admin` allows it.
            with: user("leader-ops"),
            without: ("rw".into(), "rw-pw".into()),
            allowed: 200,
        },
        Endpoint {
            method: "DELETE",
            path: "/remove".into(),
            body: Some(("application/json", json!({"id": 99}).to_string())),
            // `remove` or `admin` allows it; node 99 is no member, which the handler says.
            with: user("remove"),
            without: ("rw".into(), "rw-pw".into()),
            allowed: 400,
        },
        endpoint("GET", "/console", None, "ui"),
        // A path no route serves needs `all`: closed by default.
        Endpoint {
            method: "GET",
            path: "/no/such/route".into(),
            body: None,
            with: (ROOT.0.into(), ROOT.1.into()),
            without: not_user("admin"),
            allowed: 404,
        },
    ];

    let mut checked = 0;
    let mut failures = Vec::new();
    for node in [leader, follower] {
        for e in &endpoints {
            let cases = [
                ("anonymous", Caller::Anonymous, 401),
                ("wrong password", Caller::User(&e.with.0, "not-the-password"), 401),
                ("unknown user", Caller::User("mallory", "pw"), 401),
                ("without the permission", Caller::User(&e.without.0, &e.without.1), 403),
                ("with the permission", Caller::User(&e.with.0, &e.with.1), e.allowed),
            ];
            for (who, caller, expected) in cases {
                let status = send(&client, c, node, e, caller);
                checked += 1;
                if status != expected {
                    failures.push(format!(
                        "node {node} ({}) {} {} as {who}: {status}, expected {expected}",
                        if node == leader { "leader" } else { "follower" },
                        e.method,
                        e.path
                    ));
                }
            }
        }
    }
    println!("authorization matrix: {checked} requests, {} unexpected", failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_follower_cannot_launder_a_request_and_reloads_take_effect() {
    let Secured { c, file, root_hash, _dir } = Secured::start(&["status"]);
    let leader = c.leader();
    let follower = c.followers(leader)[0];
    let anonymous = Client::builder().no_proxy().build().expect("client");
    let write = |node: NodeId| {
        anonymous
            .post(c.url(node, "/db/execute"))
            .header(CONTENT_TYPE, "application/json")
            .body(json!(["INSERT INTO t(v) VALUES('anonymous')"]).to_string())
            .send()
            .expect("request")
            .status()
            .as_u16()
    };
    // Every member is seen as reachable though its readiness probe needs credentials.
    let nodes = c.get(leader, "/nodes").json();
    for id in c.ids() {
        assert_eq!(nodes[id.to_string()]["reachable"], true, "{nodes}");
    }
    // `*` has status: anonymous /status works, anonymous writes do not.
    let status = anonymous.get(c.url(follower, "/status")).send().expect("status");
    assert_eq!(status.status().as_u16(), 200);
    assert_eq!(write(follower), 401);

    // The follower alone now lets anyone do anything (SIGHUP reloads only it).
    std::fs::write(&file, users(&root_hash, &["all"]).to_string()).expect("writing users");
    let pid = c.pid(follower).expect("follower runs");
    // SAFETY: kill(2) with our own child's pid and a plain signal number.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0);
    wait_for(Duration::from_secs(20), "the follower to reload", || {
        let r = anonymous.get(c.url(follower, "/db/query?q=SELECT%201&level=none")).send().ok()?;
        (r.status().as_u16() == 200).then_some(())
    });
    // The follower forwards the anonymous write; the leader, still strict, refuses it.
    assert_eq!(write(follower), 401, "a follower must not launder an anonymous write");
    assert_eq!(write(leader), 401);

    // An admin reloads the leader through the API: now anonymous writes are allowed everywhere.
    let reload = c.post(leader, "/admin/auth/reload", "");
    assert_eq!(reload.status, 200, "{}", reload.body);
    assert_eq!(write(follower), 200);
    assert_eq!(write(leader), 200);

    // A broken file is refused; the users in force stay.
    std::fs::write(&file, "[{\"username\": \"x\", \"perms\": [\"fly\"]}]").expect("writing");
    let reload = c.post(leader, "/admin/auth/reload", "");
    assert_eq!(reload.status, 400, "{}", reload.body);
    assert!(reload.body.contains("unknown permission"), "{}", reload.body);
    assert_eq!(write(leader), 200);
}

/// With 3 failed logins a minute allowed: three wrong passwords for `rw` from one address, and
/// then that address, and that user from any address, get 429 with `Retry-After`, even with
/// the right password; another user from another address is unaffected, and requests without
/// credentials are no logins. Clients bind to different loopback addresses (127.0.0.0/8).
#[test]
fn failed_logins_are_limited_per_user_and_per_address() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("users.json");
    std::fs::write(&file, users(&hash_password(ROOT.1), &["ready"]).to_string()).expect("users");
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, basic(ROOT.0, ROOT.1));
    let file_arg = file.to_str().expect("utf-8 path");
    let c = TestCluster::start_with_headers(
        1,
        0,
        &["--auth", file_arg, "--auth-failures-per-minute", "3"],
        headers,
    );
    let from = |ip: [u8; 4]| {
        Client::builder().no_proxy().local_address(std::net::IpAddr::from(ip)).build().unwrap()
    };
    let (mallory, elsewhere) = (from([127, 0, 0, 2]), from([127, 0, 0, 3]));
    let query = |client: &Client, who: Option<(&str, &str)>| {
        let mut request = client.get(c.url(1, "/db/query?q=SELECT%201"));
        if let Some((user, password)) = who {
            request = request.header(AUTHORIZATION, basic(user, password));
        }
        let response = request.send().expect("request");
        let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        (response.status().as_u16(), retry, response.text().unwrap_or_default())
    };
    assert_eq!(query(&mallory, Some(("rw", "rw-pw"))).0, 200);
    for _ in 0..3 {
        assert_eq!(query(&mallory, Some(("rw", "guess"))).0, 401);
    }
    // The address is used up: even the right password is refused, with a wait to honour.
    let (status, retry, body) = query(&mallory, Some(("rw", "rw-pw")));
    assert_eq!(status, 429, "{body}");
    let seconds: u64 = retry.expect("Retry-After").parse().expect("whole seconds");
    assert!((1..=60).contains(&seconds), "Retry-After {seconds}");
    assert!(body.contains("too many failed logins"), "{body}");
    let (status, _, body) = query(&mallory, Some(("has-query", "pw-query")));
    assert_eq!(status, 429, "the address is limited for every user: {body}");
    // The user is used up from any address; another user elsewhere is not.
    let (status, _, body) = query(&elsewhere, Some(("rw", "rw-pw")));
    assert_eq!(status, 429, "the user is limited from every address: {body}");
    assert!(body.contains("user rw"), "{body}");
    assert_eq!(query(&elsewhere, Some(("has-query", "pw-query"))).0, 200);
    // No credentials, no login: the usual 401, and `*`'s route still answers.
    assert_eq!(query(&mallory, None).0, 401);
    let ready = mallory.get(c.url(1, "/readyz")).send().expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
}
