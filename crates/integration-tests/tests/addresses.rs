//! A node that listens on every interface must be told what address to advertise: otherwise
//! it would tell the cluster `0.0.0.0`, which no other machine can use. With
//! `--http-adv-addr`/`--raft-adv-addr` the cluster sees the advertised addresses.

use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::{free_ports, keel_binary, wait_for};

#[test]
fn listening_on_every_interface_needs_an_advertised_address() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = free_ports(2);
    let (http, raft) = (ports[0], ports[1]);

    let refused = Command::new(keel_binary())
        .args(["serve", "--http-addr", &format!("0.0.0.0:{http}")])
        .args(["--raft-addr", &format!("127.0.0.1:{raft}")])
        .arg("--data-dir")
        .arg(dir.path().join("refused"))
        .stdout(Stdio::null())
        .output()
        .expect("running keel serve");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--http-adv-addr"), "{stderr}");

    let mut node = Command::new(keel_binary())
        .args(["serve", "--http-addr", &format!("0.0.0.0:{http}")])
        .args(["--http-adv-addr", &format!("127.0.0.1:{http}")])
        .args(["--raft-addr", &format!("0.0.0.0:{raft}")])
        .args(["--raft-adv-addr", &format!("127.0.0.1:{raft}")])
        .arg("--data-dir")
        .arg(dir.path().join("node"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting keel serve");
    let client = reqwest::blocking::Client::builder().no_proxy().build().expect("client");
    let nodes = wait_for(Duration::from_secs(30), "the node to list itself in /nodes", || {
        let reply = client.get(format!("http://127.0.0.1:{http}/nodes")).send().ok()?;
        let nodes = reply.json::<serde_json::Value>().ok()?;
        nodes.get("1").is_some().then_some(nodes)
    });
    let _ = node.kill();
    let _ = node.wait();
    let me = &nodes["1"];
    assert_eq!(me["api_addr"], format!("http://127.0.0.1:{http}"), "{nodes}");
    assert_eq!(me["addr"], format!("127.0.0.1:{raft}"), "{nodes}");
}
