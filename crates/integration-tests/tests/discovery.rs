//! Clusters formed by nodes that find each other through DNS (`keel serve --bootstrap-expect N
//! --discovery dns|dns-srv`), against a DNS server the test runs on loopback and whose records
//! it changes while the nodes run ([`DnsServer`]); and the flags' errors.

use std::process::Command;

use integration_tests::{
    DISCOVERY_HOST, Discover, DnsServer, Level, TIMEOUT, TestCluster, keel_binary, wait_for,
};
use serde_json::json;

/// Waits until node `id`'s log contains `text`.
fn wait_logged(c: &TestCluster, id: u64, text: &str) {
    wait_for(TIMEOUT, format!("node {id} to log {text:?}"), || {
        c.assert_alive(id);
        c.log(id).contains(text).then_some(())
    });
}

/// A write on the leader is read back from every node's own copy.
fn assert_write_reaches_all(c: &TestCluster, value: &str) {
    let leader = c.leader();
    let lsn = c.execute_ok(leader, json!([["INSERT INTO t VALUES (?)", value]]));
    for id in c.ids() {
        c.wait_applied(id, lsn);
        let sql = format!("SELECT count(*) FROM t WHERE v = '{value}'");
        let rows = c.query(id, &sql, Level::None).rows(0);
        assert_eq!(rows, vec![vec![json!(1)]], "node {id}");
    }
}

/// Three nodes started with `--discovery dns` before their name exists: each keeps asking
/// (NXDOMAIN, logged) instead of giving up. Once the A records appear they form one cluster:
/// one leader, three voters, a write on the leader read on every node. A fourth node started
/// later with the same flags, once the name lists it too, joins that cluster as a voter
/// instead of forming another.
#[test]
fn nodes_found_by_a_records_form_one_cluster_and_a_later_node_joins_it() {
    let dns = DnsServer::start();
    let mut c = TestCluster::discovering(3, Discover::Dns, &dns);
    let ids = c.ids();
    for &id in &ids {
        c.start_node(id);
    }
    for &id in &ids {
        wait_logged(&c, id, "no nodes found yet");
    }
    let log = c.log(1);
    assert!(
        log.contains(&format!("NXDOMAIN: {DISCOVERY_HOST} does not exist"))
            && log.contains("asking again"),
        "{log}"
    );

    c.publish(&dns, Discover::Dns, &ids);
    c.wait_formed();
    // A node may become a member through another's bootstrap before its own next lookup.
    assert!(ids.iter().any(|&id| c.log(id).contains("found 3 node(s)")), "{}", c.log(1));
    let bootstraps: usize =
        ids.iter().map(|&id| c.log(id).matches("bootstrapping the cluster").count()).sum();
    assert!(bootstraps >= 1, "some node bootstrapped the cluster");
    c.execute_ok(c.leader(), json!(["CREATE TABLE t (v TEXT)"]));
    assert_write_reaches_all(&c, "three");

    let fourth = c.lay_out_discovering(Discover::Dns);
    let all = c.ids();
    c.publish(&dns, Discover::Dns, &all);
    c.start_node(fourth);
    c.wait_joined(fourth);
    c.wait_formed();
    assert!(
        c.log(fourth).contains("joined a running cluster instead of forming one"),
        "{}",
        c.log(fourth)
    );
    assert!(!c.log(fourth).contains("bootstrapping the cluster"), "{}", c.log(fourth));
    assert_write_reaches_all(&c, "four");
}

/// Three nodes on different ports found through SRV records (`--discovery dns-srv`), which
/// appear as the nodes start, as an orchestrator's would: the first two learn of each other
/// and wait for a third; once it starts and is published, the three form one cluster. A
/// restart of all three with the same flags forms nothing new.
#[test]
fn nodes_found_by_srv_records_on_their_own_ports_form_one_cluster() {
    let dns = DnsServer::start();
    let c = TestCluster::discovering(3, Discover::DnsSrv, &dns);
    let ids = c.ids();
    let ports: std::collections::BTreeSet<&str> =
        ids.iter().map(|&id| c.http_addr(id).rsplit_once(':').unwrap().1).collect();
    assert_eq!(ports.len(), 3, "each node has its own port");
    c.start_node(ids[0]);
    c.start_node(ids[1]);
    c.publish(&dns, Discover::DnsSrv, &ids[..2]);
    for &id in &ids[..2] {
        wait_logged(&c, id, "found 2 node(s)");
        wait_logged(&c, id, "node made contact to form a cluster");
    }
    assert!(c.current_leader().is_none(), "no cluster forms with 2 of 3 nodes");

    c.start_node(ids[2]);
    c.publish(&dns, Discover::DnsSrv, &ids);
    c.wait_formed();
    c.execute_ok(c.leader(), json!(["CREATE TABLE t (v TEXT)"]));
    assert_write_reaches_all(&c, "srv");
    assert!(c.log(1).contains("_keel._tcp.keel.test"), "{}", c.log(1));

    // Started again with the same flags, they find their cluster on disk: nothing new forms.
    let bootstraps = |c: &TestCluster| -> usize {
        c.ids().iter().map(|&id| c.log(id).matches("bootstrapping the cluster").count()).sum()
    };
    let formed = bootstraps(&c);
    c.restart_all();
    assert_eq!(bootstraps(&c), formed, "a restart bootstraps nothing");
    for &id in &ids {
        assert!(c.log(id).contains("already a cluster member"), "node {id}: {}", c.log(id));
    }
    assert_write_reaches_all(&c, "again");
}

/// Bad discovery flags fail the start with a message that says what is wrong.
#[test]
fn discovery_flags_are_checked() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bootstrap-expect", "3", "--discovery", "dns"], "--discovery-host"),
        (&["--bootstrap-expect", "3", "--discovery", "consul", "--discovery-host", "x"], "dns-srv"),
        (
            &[
                "--bootstrap-expect",
                "3",
                "--discovery",
                "dns",
                "--discovery-host",
                "x",
                "--join",
                "http://127.0.0.1:1",
            ],
            "cannot be used with",
        ),
        (&["--discovery", "dns", "--discovery-host", "x"], "--bootstrap-expect"),
        (
            &["--bootstrap-expect", "3", "--discovery", "dns", "--discovery-host", ""],
            "--discovery-host is empty",
        ),
        (&["--bootstrap-expect", "3"], "--join URL,URL,... or --discovery"),
        (
            &[
                "--bootstrap-expect",
                "3",
                "--discovery",
                "dns-srv",
                "--discovery-host",
                "x",
                "--discovery-port",
                "4001",
            ],
            "--discovery-port is for --discovery dns",
        ),
        (
            &[
                "--bootstrap-expect",
                "3",
                "--discovery",
                "dns",
                "--discovery-host",
                "x",
                "--discovery-service",
                "keel",
            ],
            "--discovery-service is for --discovery dns-srv",
        ),
        (
            &[
                "--bootstrap-expect",
                "3",
                "--discovery",
                "dns-srv",
                "--discovery-host",
                "x",
                "--discovery-service",
                "_keel._tcp",
            ],
            "the service label alone",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (flags, says)) in cases.iter().enumerate() {
        let ports = integration_tests::free_ports(2);
        let data = dir.path().join(format!("node{i}"));
        let out = Command::new(keel_binary())
            .args(["serve", "--http-addr", &format!("127.0.0.1:{}", ports[0])])
            .args(["--raft-addr", &format!("127.0.0.1:{}", ports[1])])
            .arg("--data-dir")
            .arg(&data)
            .args(*flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} started");
        assert!(stderr.contains(says), "{flags:?}: expected {says:?} in {stderr}");
    }
}
