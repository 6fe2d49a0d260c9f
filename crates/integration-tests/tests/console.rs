//! The web console (`/console`) as served by a real cluster: the page and its assets from the
//! leader and a follower, and every endpoint the page's script calls, called the way the
//! script calls it and checked for the fields the script reads. The page itself, in a real
//! browser, is `console_browser.rs`.

use std::collections::BTreeSet;

use integration_tests::{NodeId, Reply, TIMEOUT, TestCluster, wait_for};
use reqwest::blocking::Client;
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use serde_json::{Value, json};

/// The console's script, as embedded in the binary.
const SCRIPT: &str = include_str!("../../bin/console/console.js");

/// Asserts a 200 answer and returns its JSON.
fn ok(what: &str, reply: Reply) -> Value {
    assert_eq!(reply.status, 200, "{what}: {}", reply.body);
    reply.json()
}

/// The value of every `attr="…"` in `html`.
fn attribute_values(html: &str, attr: &str) -> Vec<String> {
    let needle = format!("{attr}=\"");
    html.match_indices(&needle)
        .filter_map(|(at, _)| {
            let rest = &html[at + needle.len()..];
            rest.find('"').map(|end| rest[..end].to_string())
        })
        .collect()
}

/// The paths (without query) of the same-origin requests the script makes: every string or
/// template literal in it that starts with `/` and a letter.
fn script_paths() -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for quote in ['\'', '`'] {
        for (at, _) in SCRIPT.match_indices(quote) {
            let rest = &SCRIPT[at + 1..];
            if rest.starts_with('/') && rest[1..].starts_with(|c: char| c.is_ascii_lowercase()) {
                let end = rest.find(['?', '$', '\'', '`']).unwrap_or(0);
                paths.insert(rest[..end].to_string());
            }
        }
    }
    paths
}

/// The page and its assets, from the leader and from a follower: types, caching, and the page
/// loads exactly the assets that are served.
#[test]
fn page_and_assets_are_served_by_every_node() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let follower = c.followers(leader)[0];
    let client = Client::new();
    for id in [leader, follower] {
        let page = client.get(c.url(id, "/console")).send().expect("GET /console");
        assert_eq!(page.status(), 200, "node {id}: GET /console");
        let header = |r: &reqwest::blocking::Response, name| {
            r.headers().get(name).map(|v| v.to_str().unwrap_or_default().to_string())
        };
        assert_eq!(header(&page, CONTENT_TYPE).as_deref(), Some("text/html; charset=utf-8"));
        assert_eq!(header(&page, CACHE_CONTROL).as_deref(), Some("no-cache"));
        let csp = header(&page, reqwest::header::CONTENT_SECURITY_POLICY).unwrap_or_default();
        assert!(csp.contains("script-src 'self'"), "node {id}: CSP {csp:?}");
        let html = page.text().expect("page body");

        let scripts = attribute_values(&html, "src");
        let styles: Vec<String> =
            attribute_values(&html, "href").into_iter().filter(|h| h.ends_with(".css")).collect();
        assert_eq!(scripts, ["/console/console.js"], "node {id}: the page's scripts");
        assert_eq!(styles, ["/console/console.css"], "node {id}: the page's style sheets");
        for (path, content_type, embedded) in [
            ("/console/console.js", "text/javascript; charset=utf-8", SCRIPT),
            (
                "/console/console.css",
                "text/css; charset=utf-8",
                include_str!("../../bin/console/console.css"),
            ),
        ] {
            let asset = client.get(c.url(id, path)).send().expect("GET asset");
            assert_eq!(asset.status(), 200, "node {id}: GET {path}");
            assert_eq!(header(&asset, CONTENT_TYPE).as_deref(), Some(content_type), "{path}");
            assert_eq!(header(&asset, CACHE_CONTROL).as_deref(), Some("no-cache"), "{path}");
            let etag = header(&asset, ETAG).unwrap_or_else(|| panic!("{path} has no ETag"));
            assert_eq!(asset.text().expect("asset body"), embedded, "node {id}: {path}");
            // A browser holding the current copy revalidates it for free.
            let again = client
                .get(c.url(id, path))
                .header(IF_NONE_MATCH, &etag)
                .send()
                .expect("conditional GET");
            assert_eq!(again.status(), 304, "node {id}: {path} with If-None-Match {etag}");
        }
        let slash = c.get(id, "/console/");
        assert_eq!(slash.status, 308, "node {id}: /console/ redirects");
        assert_eq!(slash.location.as_deref(), Some("/console"));
    }
}

/// Every endpoint the script calls, called from a follower (where a page is usually opened)
/// the way the script calls it, with the fields the script reads.
#[test]
fn endpoints_the_script_calls_answer_what_it_reads() {
    // The test below covers exactly these; a new call in the script needs a check here.
    let expected: BTreeSet<String> = [
        "/admin/membership",
        "/admin/promote",
        "/console",
        "/console/peer/",
        "/db/request",
        "/nodes",
        "/readyz",
        "/remove",
        "/status",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(script_paths(), expected, "the paths console.js requests");

    let c = TestCluster::start(3, 1);
    let leader = c.leader();
    let followers = c.followers(leader);
    let (page, other) = (followers[0], followers[1]);
    let learner = c.learners()[0];

    // The members, and whether the serving node reaches them (refresh()).
    let nodes = ok("/nodes", c.get(page, "/nodes?nonvoters&ver=2"));
    let listed: Vec<&Value> = nodes["nodes"].as_array().expect("nodes array").iter().collect();
    assert_eq!(listed.len(), 4, "{nodes}");
    for n in &listed {
        assert!(n["id"].is_string() && n["api_addr"].as_str().unwrap().starts_with("http://"));
        let voter = n["id"].as_str() != Some(learner.to_string().as_str());
        assert!(n["addr"].is_string() && n["voter"] == voter && n["reachable"] == true, "{n}");
    }
    // The serving node's own view, and each member's through the relay.
    let own = ok("/status", c.get(page, "/status"));
    assert_eq!(own["node"]["id"], json!(page));
    for id in c.ids() {
        let status = ok("relayed /status", c.get(page, &format!("/console/peer/{id}/status")));
        let node = &status["node"];
        assert_eq!(node["id"], json!(id));
        let role = match id {
            _ if id == leader => "leader",
            _ if id == learner => "learner",
            _ => "follower",
        };
        assert_eq!(node["role"], role, "node {id}");
        assert!(node["term"].as_u64().is_some_and(|t| t > 0), "node {id}: {node}");
        assert!(node["applied_index"].as_u64().is_some(), "node {id}: {node}");
    }
    // The leader's replication subtree gives every follower's lag, in entries and ms, once
    // the followers have reported their applied index.
    wait_for(TIMEOUT, "lag of every other member in the leader's relayed /status", || {
        let status = c.get(page, &format!("/console/peer/{leader}/status")).json();
        followers
            .iter()
            .chain([&learner])
            .all(|f| {
                let r = &status["replication"][f.to_string()];
                r["lag_entries"].as_u64().is_some() && r["lag_ms"].as_u64().is_some()
            })
            .then_some(())
    });

    // The SQL editor: statements as a JSON array to /db/request with timings, level and
    // durability; the answer's lsn, time and per-statement results.
    let write = ok(
        "write",
        c.post(
            page,
            "/db/request?timings=&level=weak&durability=sync",
            json!([
                "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
                "INSERT INTO t(v) VALUES (NULL), ('x')"
            ])
            .to_string(),
        ),
    );
    let lsn = write["lsn"].as_u64().expect("lsn");
    assert!(lsn > 0 && write["time"].is_f64(), "{write}");
    assert_eq!(write["results"][1]["rows_affected"], 2, "{write}");
    assert_eq!(write["results"][1]["last_insert_id"], 2, "{write}");
    let read = ok(
        "read",
        c.post(
            page,
            "/db/request?timings=&level=linearizable",
            json!(["SELECT id, v FROM t ORDER BY id"]).to_string(),
        ),
    );
    assert!(read["lsn"].as_u64().is_some_and(|l| l >= lsn), "{read}");
    let result = &read["results"][0];
    assert_eq!(result["columns"], json!(["id", "v"]));
    assert_eq!(result["values"], json!([[1, null], [2, "x"]]));
    assert!(result["time"].is_f64(), "{read}");
    let bad = ok("bad SQL", c.post(page, "/db/request", json!(["SELECT * FROM nope"]).to_string()));
    assert!(bad["results"][0]["error"].as_str().unwrap_or_default().contains("no such table"));

    // The buttons. Add learner with a bad request shows the server's reason.
    let refused =
        c.post(page, "/admin/membership", json!({"action": "add-learner", "id": 9}).to_string());
    assert_eq!(refused.status, 400);
    assert!(refused.json()["error"].as_str().unwrap_or_default().contains("raft_addr"));
    // Promote the serving follower.
    let promoted = ok("promote", c.post(page, &format!("/admin/promote?node={page}"), ""));
    assert_eq!(promoted["leader"], json!(page));
    assert!(promoted["term"].as_u64().is_some());
    assert_eq!(c.leader(), page);
    // A member that does not answer: the relay says so (502) with a reason.
    c.kill(other);
    let gone = c.get(page, &format!("/console/peer/{other}/status"));
    assert_eq!(gone.status, 502, "{}", gone.body);
    assert!(gone.json()["error"].as_str().unwrap_or_default().contains(&format!("node {other}")));
    // Remove it, with the id as a string as the script sends it.
    let removed = c.delete(page, "/remove", json!({"id": other.to_string()}).to_string());
    assert_eq!(ok("remove", removed)["removed"], json!(other));
    let after = ok("/nodes", c.get(page, "/nodes?nonvoters&ver=2"));
    let ids: Vec<NodeId> = after["nodes"]
        .as_array()
        .expect("nodes array")
        .iter()
        .map(|n| n["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(!ids.contains(&other), "{after}");
    // A node that is no longer a member cannot be named to the relay.
    assert_eq!(c.get(page, &format!("/console/peer/{other}/status")).status, 404);
    // Where the page moves when its node stops answering: another member's page and /readyz.
    let readyz = c.get(leader, "/readyz?noleader");
    assert_eq!(readyz.status, 200);
    assert_eq!(c.get(leader, "/console").status, 200);
}
