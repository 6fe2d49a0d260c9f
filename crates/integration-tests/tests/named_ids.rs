//! Node ids that are names (`keel serve --id keel-0`, as a Kubernetes StatefulSet's pod names):
//! a cluster of three named nodes shows the names in `/nodes` and `/status` as rqlite does,
//! replicates, removes a node by name, keeps a restarted node's name, and refuses a node whose
//! Raft id is already a member's under another name. The harness's `TestCluster` numbers its
//! nodes, so this file starts its own processes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use integration_tests::{TIMEOUT, free_ports, keel_binary, wait_for};
use serde_json::{Value, json};

/// One named node's command line and process.
struct Named {
    name: &'static str,
    http: String,
    raft: String,
    data: PathBuf,
    log: PathBuf,
    join: Option<String>,
    child: Option<Child>,
}

impl Named {
    fn start(&mut self) {
        assert!(self.child.is_none(), "{} runs already", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("cannot open the node's log");
        let mut args = vec![
            "serve".to_string(),
            format!("--id={}", self.name),
            format!("--http-addr={}", self.http),
            format!("--raft-addr={}", self.raft),
            format!("--data-dir={}", self.data.display()),
            "--heartbeat=60ms".into(),
            "--election-timeout=300ms".into(),
        ];
        if let Some(join) = &self.join {
            args.push(format!("--join={join}"));
        }
        let child = Command::new(keel_binary())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cannot clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("cannot start keel");
        self.child = Some(child);
    }

    /// SIGTERM, then waits for the exit.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("the node runs");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own unreaped child; touches no memory of ours.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        child.wait().expect("cannot wait for the node");
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }
}

/// Three named nodes; SIGKILLed on drop, with their logs printed if the test failed.
struct Cluster {
    nodes: Vec<Named>,
    _dir: tempfile::TempDir,
    http: reqwest::blocking::Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            if std::thread::panicking() {
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- {} ----", node.name);
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl Cluster {
    fn start(names: [&'static str; 3]) -> Cluster {
        keel_binary();
        let dir = tempfile::tempdir().expect("cannot make a temporary directory");
        let ports = free_ports(2 * names.len());
        let first = format!("http://127.0.0.1:{}", ports[0]);
        let nodes = names
            .iter()
            .enumerate()
            .map(|(i, &name)| Named {
                name,
                http: format!("127.0.0.1:{}", ports[2 * i]),
                raft: format!("127.0.0.1:{}", ports[2 * i + 1]),
                data: dir.path().join(name),
                log: dir.path().join(format!("{name}.log")),
                join: (i > 0).then(|| first.clone()),
                child: None,
            })
            .collect();
        let http = reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        let mut c = Cluster { nodes, _dir: dir, http };
        for i in 0..c.nodes.len() {
            c.nodes[i].start();
            let name = c.nodes[i].name;
            wait_for(TIMEOUT, format!("{name} to be ready"), || c.ready(i).then_some(()));
        }
        c
    }

    fn get(&self, i: usize, path: &str) -> Option<Value> {
        let resp = self.http.get(self.nodes[i].url(path)).send().ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().ok()
    }

    fn ready(&self, i: usize) -> bool {
        let resp = self.http.get(self.nodes[i].url("/readyz")).send();
        resp.is_ok_and(|r| r.status().is_success())
    }

    /// `/nodes?nonvoters` of node `i`: ids (the map's keys) of the members.
    fn members(&self, i: usize) -> Option<BTreeSet<String>> {
        let nodes = self.get(i, "/nodes?nonvoters")?;
        Some(nodes.as_object()?.keys().cloned().collect())
    }

    /// The index of the node that leads, by node `i`'s `/status`.
    fn leader(&self) -> usize {
        wait_for(TIMEOUT, "a leader", || {
            (0..self.nodes.len()).find(|&i| {
                self.nodes[i].child.is_some()
                    && self.get(i, "/status").is_some_and(|s| s["node"]["role"] == "leader")
            })
        })
    }

    fn send(&self, i: usize, method: reqwest::Method, path: &str, body: Value) -> (u16, String) {
        let resp = self
            .http
            .request(method, self.nodes[i].url(path))
            .json(&body)
            .send()
            .expect("the node answers");
        (resp.status().as_u16(), resp.text().unwrap_or_default())
    }

    /// Waits until node `i`'s own copy has row `v`.
    fn wait_row(&self, i: usize, v: &str) {
        let name = self.nodes[i].name;
        wait_for(TIMEOUT, format!("{name} to have row {v}"), || {
            let q =
                format!("/db/query?level=none&q=SELECT%20count(*)%20FROM%20t%20WHERE%20v='{v}'");
            let answer = self.get(i, &q)?;
            (answer["results"][0]["values"] == json!([[1]])).then_some(())
        });
    }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_cluster_of_named_nodes() {
    let mut c = Cluster::start(["keel-0", "keel-1", "keel-2"]);
    let all = names(&["keel-0", "keel-1", "keel-2"]);

    // `/nodes`: keyed by name, and each `id` is the name (rqlite's shape).
    for i in 0..3 {
        wait_for(TIMEOUT, format!("{} to list every member", c.nodes[i].name), || {
            (c.members(i)? == all).then_some(())
        });
    }
    let nodes = c.get(0, "/nodes?nonvoters").expect("/nodes answers");
    for name in &all {
        assert_eq!(nodes[name]["id"], json!(name), "{nodes}");
        assert_eq!(nodes[name]["voter"], json!(true), "{nodes}");
    }
    let list = c.get(1, "/nodes?ver=2").expect("/nodes?ver=2 answers");
    let listed: BTreeSet<String> = list["nodes"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|n| n["id"].as_str().expect("a string id").to_string())
        .collect();
    assert_eq!(listed, all);

    // `/status`: rqlite's `store` names itself, its leader and its nodes by name; Keel's
    // `node` and `cluster` carry the names beside the Raft ids.
    let leader = c.leader();
    let leader_name = c.nodes[leader].name;
    for i in 0..3 {
        let name = c.nodes[i].name;
        let status = wait_for(TIMEOUT, format!("{name}'s status to name its leader"), || {
            c.get(i, "/status").filter(|s| s["store"]["leader"]["node_id"] == json!(leader_name))
        });
        assert_eq!(status["store"]["node_id"], json!(name), "{status}");
        assert_eq!(status["node"]["name"], json!(name));
        assert_eq!(status["node"]["leader_name"], json!(leader_name));
        let store_ids: BTreeSet<String> = status["store"]["nodes"]
            .as_array()
            .expect("store.nodes")
            .iter()
            .map(|n| n["id"].as_str().expect("a string id").to_string())
            .collect();
        assert_eq!(store_ids, all);
        let member_names: BTreeSet<String> = status["cluster"]["members"]
            .as_array()
            .expect("cluster.members")
            .iter()
            .map(|m| m["name"].as_str().expect("a name").to_string())
            .collect();
        assert_eq!(member_names, all);
        // A named node's Raft id has the top bit set: never a numeric id below 2^63.
        assert!(status["node"]["id"].as_u64().expect("a number") >= 1 << 63);
    }
    let status = c.get(leader, "/status").expect("the leader's status");
    let followers: BTreeSet<String> =
        status["replication"].as_object().expect("replication").keys().cloned().collect();
    assert_eq!(followers, &all - &names(&[leader_name]), "{status}");

    // A write replicates to every node.
    let (code, body) = c.send(
        leader,
        reqwest::Method::POST,
        "/db/execute",
        json!(["CREATE TABLE t (v TEXT)", "INSERT INTO t VALUES ('one')"]),
    );
    assert_eq!(code, 200, "{body}");
    for i in 0..3 {
        c.wait_row(i, "one");
    }

    // A follower restarted on its data directory keeps its name, and keeps replicating.
    let restarted = (0..3).find(|&i| i != leader).expect("a follower");
    let restarted_name = c.nodes[restarted].name;
    c.nodes[restarted].stop();
    c.nodes[restarted].start();
    wait_for(TIMEOUT, format!("{restarted_name} to be ready again"), || {
        c.ready(restarted).then_some(())
    });
    let status = c.get(restarted, "/status").expect("its status");
    assert_eq!(status["store"]["node_id"], json!(restarted_name), "{status}");
    assert_eq!(c.members(restarted), Some(all.clone()));
    let leader = c.leader();
    let (code, body) = c.send(
        leader,
        reqwest::Method::POST,
        "/db/execute",
        json!(["INSERT INTO t VALUES ('two')"]),
    );
    assert_eq!(code, 200, "{body}");
    c.wait_row(restarted, "two");

    // A node whose Raft id is a member's under another name is refused: here a numeric id
    // equal to the id of a member's name.
    let taken = c.nodes[restarted].name;
    let taken_id = status["node"]["id"].as_u64().expect("a number");
    let (code, body) = c.send(
        leader,
        reqwest::Method::POST,
        "/join",
        json!({"id": taken_id, "raft_addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2"}),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains(&format!("held by member {taken}")), "{body}");
    // A name that does not go with the id it claims is refused too.
    let (code, body) = c.send(
        leader,
        reqwest::Method::POST,
        "/join",
        json!({"id": taken_id, "name": "other", "raft_addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2"}),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("does not go with"), "{body}");

    // Removal by name, as rqlite's body says it; an unknown name is refused by name.
    let (code, body) = c.send(leader, reqwest::Method::DELETE, "/remove", json!({"id": "keel-9"}));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("node keel-9 is not a member"), "{body}");
    let removed = (0..3).find(|&i| i != leader && i != restarted).expect("another follower");
    let removed_name = c.nodes[removed].name;
    let cli = Command::new(keel_binary())
        .args(["admin", "--cluster", &c.nodes[leader].url(""), "remove", removed_name])
        .output()
        .expect("keel admin runs");
    let out = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "{out}{}", String::from_utf8_lossy(&cli.stderr));
    assert!(out.contains(&format!("node {removed_name} removed")), "{out}");
    wait_for(TIMEOUT, format!("{removed_name} to be gone from the membership"), || {
        (c.members(leader)? == &all - &names(&[removed_name])).then_some(())
    });
    c.nodes[removed].stop();
}

/// An invalid `--id` stops the start with the reason.
#[test]
fn an_invalid_name_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (id, why) in [
        ("keel 0", "has the character ' '"),
        ("-x", "must start with a letter or a digit"),
        ("0", "must be positive"),
    ] {
        let out = Command::new(keel_binary())
            .args(["serve", &format!("--id={id}"), "--data-dir"])
            .arg(data(dir.path()))
            .output()
            .expect("keel runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--id {id:?} was accepted");
        assert!(err.contains(why), "--id {id:?}: {err}");
    }
    let long = "n".repeat(65);
    let out = Command::new(keel_binary())
        .args(["serve", "--id", &long, "--data-dir"])
        .arg(data(dir.path()))
        .output()
        .expect("keel runs");
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 64"));
}

fn data(dir: &Path) -> PathBuf {
    dir.join("data")
}
