//! rqlite compatibility of `/status`, `/readyz`, response headers, CORS and query parameters.
//!
//! Each test names the rqlite code whose behaviour it checks (rqlite/rqlite `http/service.go`,
//! `http/query_params.go`, `store/store.go`).

use std::time::Duration;

use base64::Engine as _;
use integration_tests::{NodeId, TIMEOUT, TestCluster, wait_for};
use reqwest::blocking::Client;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::json;

/// A plain client for requests whose headers matter.
fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// `GET` (or another method) on node `id`: status, headers and body.
fn call(c: &TestCluster, method: &str, id: NodeId, path: &str) -> (u16, HeaderMap, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let response = client().request(method, c.url(id, path)).send().expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().expect("body"))
}

/// A header's value as text, or `""`.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// `/status` has rqlite's sections with rqlite's field names and types (`handleStatus` in
/// `http/service.go`, `Store.Stats` in `store/store.go`), on the leader and on a follower;
/// Keel's own sections are beside them.
#[test]
fn status_has_rqlites_sections_and_fields() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let follower = c.followers(leader)[0];
    c.execute_ok(leader, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]));
    for id in [leader, follower] {
        let s = c.get(id, "/status").json();
        // build
        assert_eq!(s["build"]["version"], env!("CARGO_PKG_VERSION"), "{s}");
        for field in ["commit", "branch", "build_time"] {
            assert!(s["build"][field].as_str().is_some_and(|v| !v.is_empty()), "{field}: {s}");
        }
        // runtime
        for field in ["GOOS", "GOARCH", "version"] {
            assert!(s["runtime"][field].as_str().is_some_and(|v| !v.is_empty()), "{field}: {s}");
        }
        assert!(s["runtime"]["num_cpu"].as_u64().is_some_and(|n| n >= 1), "{s}");
        assert!(s["runtime"]["GOMAXPROCS"].as_u64().is_some_and(|n| n >= 1), "{s}");
        // os
        let pid = c.pid(id).expect("pid");
        assert_eq!(s["os"]["pid"], json!(pid), "{s}");
        assert!(s["os"]["ppid"].as_u64().is_some(), "{s}");
        assert!(s["os"]["page_size"].as_u64().is_some_and(|n| n >= 512), "{s}");
        assert!(s["os"]["executable"].as_str().is_some_and(|e| e.ends_with("keel")), "{s}");
        assert!(s["os"]["hostname"].is_string(), "{s}");
        // http
        assert_eq!(s["http"]["bind_addr"], c.http_addr(id), "{s}");
        assert_eq!(s["http"]["auth"], "disabled", "{s}");
        assert_eq!(s["http"]["tls"]["enabled"], "false", "{s}");
        // node: rqlite's times, Keel's fields beside them
        for field in ["start_time", "current_time"] {
            let t = s["node"][field].as_str().unwrap_or_default();
            assert!(t.len() >= 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T', "{field}: {s}");
        }
        assert!(s["node"]["uptime"].as_str().is_some_and(|u| u.ends_with('s')), "{s}");
        assert_eq!(s["node"]["id"], json!(id), "{s}");
        // store
        let store = &s["store"];
        assert_eq!(store["open"], true, "{s}");
        assert_eq!(store["ready"], true, "{s}");
        assert_eq!(store["node_id"], id.to_string(), "{s}");
        assert_eq!(store["addr"], c.raft_addr(id), "{s}");
        assert_eq!(store["leader"]["node_id"], leader.to_string(), "{s}");
        assert_eq!(store["leader"]["addr"], c.raft_addr(leader), "{s}");
        let state = if id == leader { "Leader" } else { "Follower" };
        assert_eq!(store["raft"]["state"], state, "{s}");
        for field in ["term", "applied_index", "commit_index", "last_log_index", "log_size"] {
            assert!(store["raft"][field].as_u64().is_some_and(|n| n > 0), "{field}: {s}");
        }
        assert_eq!(store["raft"]["voter"], true, "{s}");
        assert_eq!(store["raft"]["num_peers"], 2, "{s}");
        let nodes = store["nodes"].as_array().expect("store.nodes");
        let ids: Vec<&str> = nodes.iter().filter_map(|n| n["id"].as_str()).collect();
        assert_eq!(ids, ["1", "2", "3"], "{s}");
        assert!(nodes.iter().all(|n| n["suffrage"] == "voter" && n["addr"].is_string()), "{s}");
        assert!(store["dir"].as_str().is_some_and(|d| !d.is_empty()), "{s}");
        assert!(store["dir_size"].as_u64().is_some_and(|n| n > 0), "{s}");
        let sqlite = &store["sqlite3"];
        assert!(sqlite["version"].as_str().is_some_and(|v| v.starts_with("3.")), "{s}");
        assert!(sqlite["path"].as_str().is_some_and(|p| p.ends_with(".sqlite")), "{s}");
        assert!(sqlite["size"].as_u64().is_some_and(|n| n > 0), "{s}");
        assert!(sqlite["db_size"].as_u64().is_some_and(|n| n > 0), "{s}");
        // Keel's sections
        assert!(s["cluster"]["members"].is_array(), "{s}");
        assert!(s["snapshot"].is_object(), "{s}");
        assert_eq!(s["replication"].is_object(), id == leader, "{s}");
    }
}

/// `?key=` answers a sub-document as rqlite's `getSubJSON` (`http/service.go`): `{}` for an
/// unknown name, the value itself when the path runs past a leaf.
#[test]
fn status_key_selects_a_sub_document() {
    let c = TestCluster::start(1, 0);
    let raft = c.get(1, "/status?key=store.raft").json();
    assert_eq!(raft["state"], "Leader", "{raft}");
    assert!(raft["applied_index"].as_u64().is_some(), "{raft}");
    assert!(raft.get("store").is_none(), "{raft}");
    assert_eq!(c.get(1, "/status?key=store.raft.state").json(), json!("Leader"));
    assert_eq!(c.get(1, "/status?key=store.node_id.deeper").json(), json!("1"));
    let unknown = c.get(1, "/status?key=no.such.thing");
    assert_eq!((unknown.status, unknown.json()), (200, json!({})));
    assert_eq!(c.get(1, "/status?key=build&pretty").json()["version"], env!("CARGO_PKG_VERSION"));
}

/// `/readyz` as rqlite's `handleReadyz` (`http/service.go`): a check list ending with the
/// database's `SELECT 1`; `sync` waits for this node to catch up with the leader's commit
/// index; `noleader` only asks whether the node answers. A follower whose leader is gone (no
/// quorum left) is not ready, unless `noleader`.
#[test]
fn readyz_checks_leader_store_sync_and_database() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let followers = c.followers(leader);
    c.execute_ok(leader, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY)"]));
    for id in [leader, followers[0]] {
        let ready = c.get(id, "/readyz");
        assert_eq!(ready.status, 200, "{}", ready.body);
        assert_eq!(ready.body, "[+]node ok\n[+]leader ok\n[+]store ok\n[+]db ok");
        let synced = c.get(id, "/readyz?sync&timeout=5s");
        assert_eq!(synced.status, 200, "{}", synced.body);
        assert_eq!(synced.body, "[+]node ok\n[+]leader ok\n[+]store ok\n[+]sync ok\n[+]db ok");
        let noleader = c.get(id, "/readyz?noleader");
        assert_eq!((noleader.status, noleader.body.as_str()), (200, "[+]node ok"));
    }
    // The leader and one follower die: the last node has no leader to reach.
    let survivor = followers[1];
    c.kill(leader);
    c.kill(followers[0]);
    let answer = wait_for(TIMEOUT, "the survivor to be not ready", || {
        let reply = c.get(survivor, "/readyz");
        (reply.status == 503).then_some(reply.body)
    });
    assert!(
        answer == "[+]node ok\n[+]leader does not exist"
            || answer.starts_with("[+]node ok\n[+]leader not contactable: "),
        "{answer}"
    );
    let noleader = c.get(survivor, "/readyz?noleader");
    assert_eq!((noleader.status, noleader.body.as_str()), (200, "[+]node ok"));
    assert_eq!(c.get(survivor, "/status?key=store.ready").json(), json!(false));
}

/// A leader cut off from its majority keeps its role until it hears of a higher term, but can
/// commit nothing: its `/readyz` says so, and says ready again once the majority is back.
#[test]
fn readyz_is_false_on_a_leader_that_cannot_reach_a_quorum() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    c.execute_ok(leader, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY)"]));
    assert_eq!(c.get(leader, "/readyz").status, 200);
    let followers = c.followers(leader);
    for &f in &followers {
        c.pause(f);
    }
    let answer = wait_for(TIMEOUT, "the isolated leader to be not ready", || {
        let reply = c.get(leader, "/readyz");
        (reply.status == 503).then_some(reply.body)
    });
    assert!(answer.starts_with("[+]node ok\n[+]leader cannot reach a quorum: "), "{answer}");
    for &f in &followers {
        c.resume(f);
    }
    wait_for(TIMEOUT, "a ready leader again", || {
        let leader = c.current_leader()?;
        (c.get(leader, "/readyz").status == 200).then_some(())
    });
}

/// A node removed from the cluster keeps running, but serves no one's writes or fresh reads:
/// its `/readyz` says it is not ready once its leader has been silent for the election
/// timeout plus a second (the leader stops replicating to it; the removal itself does not
/// reach it).
#[test]
fn readyz_is_false_on_a_removed_node() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    c.execute_ok(leader, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY)"]));
    let removed = c.followers(leader)[0];
    assert_eq!(c.get(removed, "/readyz").status, 200);
    let answer = c.delete(leader, "/remove", json!({"id": removed.to_string()}).to_string());
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = wait_for(TIMEOUT, "the removed node to be not ready", || {
        let reply = c.get(removed, "/readyz");
        (reply.status == 503).then_some(reply.body)
    });
    assert!(
        answer.starts_with("[+]node ok\n[+]leader not contactable: ")
            || answer == "[+]node ok\n[+]leader does not exist",
        "{answer}"
    );
}

/// Every answer carries `X-RQLITE-VERSION` (rqlite's `addBuildVersion`), and the CORS
/// headers of `addAllowHeaders` (`Access-Control-Allow-Methods: OPTIONS, GET, POST`,
/// `Access-Control-Allow-Headers: Content-Type`; no `Access-Control-Allow-Origin` without
/// `-http-allow-origin`); database answers carry `X-RQLITE-SERVED-BY`, the Raft address of the
/// node that ran them (the leader's for a forwarded write); `OPTIONS` on any path is answered
/// 200 (`ServeHTTP`).
#[test]
fn headers_on_every_answer_and_preflights_without_an_origin() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let follower = c.followers(leader)[0];
    c.execute_ok(leader, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY)"]));
    let paths = [
        ("GET", "/status"),
        ("GET", "/readyz"),
        ("GET", "/nodes"),
        ("GET", "/db/query?q=SELECT+1"),
        ("GET", "/no/such/path"),
        ("DELETE", "/db/query"),
        ("OPTIONS", "/db/execute"),
        ("OPTIONS", "/anything/at/all"),
    ];
    for (method, path) in paths {
        let (status, headers, body) = call(&c, method, follower, path);
        assert_eq!(header(&headers, "x-rqlite-version"), env!("CARGO_PKG_VERSION"), "{path}");
        assert_eq!(header(&headers, "access-control-allow-methods"), "OPTIONS, GET, POST");
        assert_eq!(header(&headers, "access-control-allow-headers"), "Content-Type");
        assert!(headers.get("access-control-allow-origin").is_none(), "{method} {path}");
        if method == "OPTIONS" {
            assert_eq!((status, body.as_str()), (200, ""), "{path}");
        }
    }
    let (_, headers, _) = call(&c, "GET", leader, "/db/query?q=SELECT+1");
    assert_eq!(header(&headers, "x-rqlite-served-by"), c.raft_addr(leader));
    let (_, headers, _) = call(&c, "GET", follower, "/db/query?q=SELECT+1&level=none");
    assert_eq!(header(&headers, "x-rqlite-served-by"), c.raft_addr(follower));
    let write = client()
        .post(c.url(follower, "/db/execute"))
        .header("Content-Type", "application/json")
        .body(json!(["INSERT INTO t VALUES (1)"]).to_string())
        .send()
        .expect("write");
    assert_eq!(write.status(), 200);
    assert_eq!(header(write.headers(), "x-rqlite-served-by"), c.raft_addr(leader));
}

/// With `--http-allow-origin` every answer carries `Access-Control-Allow-Origin`, and `/status`
/// reports it (`http.allow_origin`); with `--auth`, `Authorization` is an allowed header and
/// credentials are allowed (`addAllowHeaders`), and a preflight needs no credentials while
/// other requests still do (`ServeHTTP` answers `OPTIONS` before any permission check).
#[test]
fn cors_with_allow_origin_and_auth() {
    let dir = tempfile::tempdir().expect("temp dir");
    let users = dir.path().join("users.json");
    let file = json!([{"username": "admin", "password": "pw", "perms": ["all"]}]);
    std::fs::write(&users, file.to_string()).expect("writing users");
    let token = base64::engine::general_purpose::STANDARD.encode("admin:pw");
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Basic {token}")).unwrap());
    let origin = "https://app.example.com";
    let args = ["--http-allow-origin", origin, "--auth", users.to_str().expect("utf-8")];
    let c = TestCluster::start_with_headers(1, 0, &args, headers);

    let (status, headers, body) = call(&c, "OPTIONS", 1, "/db/query");
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(header(&headers, "access-control-allow-origin"), origin);
    assert_eq!(header(&headers, "access-control-allow-methods"), "OPTIONS, GET, POST");
    assert_eq!(header(&headers, "access-control-allow-headers"), "Content-Type, Authorization");
    assert_eq!(header(&headers, "access-control-allow-credentials"), "true");

    let (status, headers, _) = call(&c, "GET", 1, "/status");
    assert_eq!(status, 401, "a request without credentials is refused");
    assert_eq!(header(&headers, "access-control-allow-origin"), origin);
    assert_eq!(header(&headers, "x-rqlite-version"), env!("CARGO_PKG_VERSION"));

    let s = c.get(1, "/status").json();
    assert_eq!(s["http"]["allow_origin"], origin, "{s}");
    assert_eq!(s["http"]["auth"], "enabled", "{s}");
}

/// Every parameter rqlite's `http/query_params.go` knows is accepted on the endpoints where
/// rqlite takes it, and none is a 400; an unknown `level` is `weak` (`LevelFromString`).
#[test]
fn every_rqlite_parameter_is_accepted() {
    let c = TestCluster::start(1, 0);
    c.execute_ok(1, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]));
    let common = "pretty&timings&associative&blob_array&qualify_columns&redirect&retries=2\
                  &raft_index&noparse&norwrandom&norwtime&bypass&timeout=10s&db_timeout=5s";
    let writes = [
        format!("/db/execute?{common}&transaction"),
        format!("/db/request?{common}&transaction&level=strong&linearizable_timeout=3s"),
    ];
    for path in &writes {
        let reply = c.post(1, path, json!([["INSERT INTO t(v) VALUES(?)", "x"]]).to_string());
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        assert!(reply.json()["results"][0].get("error").is_none(), "{path}: {}", reply.body);
        assert!(reply.json()["raft_index"].as_u64().is_some(), "{path}: {}", reply.body);
    }
    let reads = [
        "level=none&freshness=1s&freshness_strict",
        "level=weak",
        "level=linearizable&linearizable_timeout=5s",
        "level=strong",
        "level=auto",
        "level=NoNsEnSe",
    ];
    for level in reads {
        let path = format!("/db/query?{common}&{level}&transaction&q=SELECT+count(*)+FROM+t");
        let reply = c.get(1, &path);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        assert_eq!(reply.json()["results"][0]["rows"][0]["count(*)"], 2, "{path}: {}", reply.body);
    }
    for path in [
        "/status?pretty&key=store&timeout=1s&retries=1",
        "/nodes?nonvoters&ver=2&timeout=1s&retries=1&pretty",
        "/leader?timeout=1s&retries=1",
        "/readyz?sync&timeout=5s&retries=1",
        "/readyz?noleader&retries=0",
        "/db/backup?fmt=sql&tables=t&noleader&retries=1&timeout=5s",
    ] {
        let reply = c.get(1, path);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
}

/// Bad values are refused as rqlite's `NewQueryParams` refuses them: 400 with rqlite's message,
/// on any path, before any permission check.
#[test]
fn bad_parameter_values_are_answered_as_rqlite_does() {
    let c = TestCluster::start(1, 0);
    let cases = [
        ("/db/query?q=SELECT+1&timeout=5", "timeout is not a valid duration"),
        ("/db/query?q=SELECT+1&freshness=soon", "freshness is not a valid duration"),
        ("/db/query?q=SELECT+1&db_timeout=1x", "db_timeout is not a valid duration"),
        (
            "/db/query?q=SELECT+1&level=linearizable&linearizable_timeout=",
            "linearizable_timeout is not a valid duration",
        ),
        ("/db/query?q=SELECT+1&level=none&freshness_strict", "freshness_strict requires freshness"),
        ("/db/query?q=SELECT+1&retries=two", "retries is not a valid integer"),
        ("/db/query?q=", "query parameter not set"),
        ("/status?timeout=forever", "timeout is not a valid duration"),
        ("/readyz?retries=1.5", "retries is not a valid integer"),
        ("/nodes?trailing_logs=x", "trailing_logs is not a valid integer"),
        ("/db/query?q=SELECT+1&x=%zz", "invalid URL escape \"%zz\""),
    ];
    for (path, message) in cases {
        let reply = c.get(1, path);
        assert_eq!(reply.status, 400, "{path}: {}", reply.body);
        assert_eq!(reply.json()["error"], message, "{path}");
    }
    let reply = c.post(1, "/db/execute?retries=-", json!(["SELECT 1"]).to_string());
    assert_eq!(
        (reply.status, reply.json()["error"].clone()),
        (400, json!("retries is not a valid integer"))
    );
}

/// `blob_array` gives BLOBs as arrays of byte values instead of base64, and `qualify_columns`
/// names each column that comes from a table `table.column` (rqlite's `qualifyRowColumns` in
/// `db/db.go`, with `sqlite3_column_table_name`: the table's own name, not an alias), in the
/// columnar and associative forms and on `/db/request`.
#[test]
fn blob_array_and_qualify_columns() {
    let c = TestCluster::start(1, 0);
    c.execute_ok(
        1,
        json!([
            "CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)",
            "CREATE TABLE u (id INTEGER PRIMARY KEY, t_id INTEGER, name TEXT)",
            "INSERT INTO t VALUES (1, x'DEADBEEF')",
            "INSERT INTO u VALUES (7, 1, 'seven')",
        ]),
    );
    let sql = "SELECT b FROM t";
    assert_eq!(c.query_with(1, sql, "").json()["results"][0]["values"], json!([["3q2+7w=="]]));
    let array = c.query_with(1, sql, "blob_array").json();
    assert_eq!(array["results"][0]["values"], json!([[[222, 173, 190, 239]]]), "{array}");

    let join = "SELECT a.id, x.name, a.id + 1 AS next FROM t AS a JOIN u AS x ON x.t_id = a.id";
    let plain = c.query_with(1, join, "").json();
    assert_eq!(plain["results"][0]["columns"], json!(["id", "name", "next"]), "{plain}");
    let qualified = c.query_with(1, join, "qualify_columns").json();
    let result = &qualified["results"][0];
    assert_eq!(result["columns"], json!(["t.id", "u.name", "next"]), "{qualified}");
    assert_eq!(result["values"], json!([[1, "seven", 2]]), "{qualified}");
    let associative = c.query_with(1, join, "qualify_columns&associative").json();
    assert_eq!(
        associative["results"][0]["rows"],
        json!([{"t.id": 1, "u.name": "seven", "next": 2}]),
        "{associative}"
    );
    let request = c.post(
        1,
        "/db/request?qualify_columns&blob_array",
        json!([["SELECT id, b FROM t"]]).to_string(),
    );
    let result = &request.json()["results"][0];
    assert_eq!(result["columns"], json!(["t.id", "t.b"]), "{}", request.body);
    assert_eq!(result["values"], json!([[1, [222, 173, 190, 239]]]), "{}", request.body);
}

/// `linearizable_timeout` bounds how long a linearizable read waits for its read index
/// (rqlite's `QueryRequest.LinearizableTimeout`, `http/service.go` `handleQuery`): with both
/// followers paused the leader cannot confirm its leadership, and the read is answered 503
/// once the bound passes.
#[test]
fn linearizable_timeout_bounds_the_read_index_wait() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let followers = c.followers(leader);
    for &f in &followers {
        c.pause(f);
    }
    let started = std::time::Instant::now();
    let reply = c.query_with(
        leader,
        "SELECT 1",
        "level=linearizable&linearizable_timeout=10ms&timeout=20s",
    );
    let elapsed = started.elapsed();
    for &f in &followers {
        c.resume(f);
    }
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.body.contains("linearizable_timeout"), "{}", reply.body);
    assert!(elapsed < Duration::from_secs(5), "answered after {elapsed:?}");
}

/// Every node refreshes the planner's statistics of its own copy (`--optimize-interval`), and
/// `/status` shows the free pages that deleted rows leave.
#[test]
fn nodes_optimize_their_copy_and_report_free_pages() {
    let c = TestCluster::start_with(3, 0, &["--optimize-interval", "300ms"]);
    let leader = c.leader();
    c.execute_ok(
        leader,
        json!([
            "CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER, pad BLOB)",
            "CREATE INDEX tk ON t (k)",
            "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 3000) INSERT INTO t (k, pad) SELECT x % 10, zeroblob(500) FROM s",
        ]),
    );
    let lsn = c.execute_ok(leader, json!(["DELETE FROM t WHERE id > 100"]));
    for id in c.ids() {
        c.wait_applied(id, lsn);
        wait_for(TIMEOUT, format!("statistics on node {id}"), || {
            // `sqlite_stat1` exists only once a first analysis created it.
            let one = vec![vec![json!(1)]];
            let exists = "SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_stat1'";
            let analysed = "SELECT count(*) > 0 FROM sqlite_stat1 WHERE tbl = 't'";
            (c.metric(id, "keel_optimize_runs_total") >= 1.0
                && c.rows(id, exists) == one
                && c.rows(id, analysed) == one)
                .then_some(())
        });
        let s = c.get(id, "/status").json();
        let free = s["store"]["sqlite3"]["freelist_count"].as_u64().unwrap_or_default();
        assert!(free > 100, "node {id}: {free} free pages after deleting most rows");
    }
}
