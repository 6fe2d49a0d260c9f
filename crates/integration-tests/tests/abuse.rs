//! Under abuse a node stays up, keeps serving everyone else, and its memory stays bounded:
//! clients that never finish their headers or their bodies are cut off after the node's
//! timeouts, and requests past the concurrency cap are answered 503 with `Retry-After` instead
//! of queueing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use integration_tests::{Level, TestCluster, wait_for};
use serde_json::json;

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Reads what the server sends on `stream` until it closes the connection (or `deadline`
/// passes: then panics).
fn read_until_closed(stream: &mut TcpStream, deadline: Instant) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the node did not close a slow connection in time");
        stream.set_read_timeout(Some(left)).expect("set_read_timeout");
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A reset is a close too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("the node did not close a slow connection in time")
            }
            Err(e) => panic!("reading a slow connection: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A thousand slow clients at once (half stall in their headers, half in their bodies): normal
/// requests are served meanwhile, the node's memory grows by a bounded amount, and the node
/// closes every slow connection itself: header stallers are dropped, body stallers get 408.
#[test]
fn a_thousand_slow_clients_neither_exhaust_memory_nor_lock_others_out() {
    const CLIENTS: usize = 1000;
    let c = TestCluster::start_with(
        1,
        0,
        &["--http-header-timeout", "4s", "--http-body-timeout", "4s"],
    );
    let node = c.leader();
    c.execute_ok(node, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]));
    let pid = c.pid(node).expect("node is running");
    let before = rss_kib(pid);
    let addr = c.http_addr(node).to_string();

    let start = Instant::now();
    let mut slow = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let mut stream = TcpStream::connect(&addr).expect("connect");
        let head: &[u8] = if i % 2 == 0 {
            b"POST /db/execute HTTP/1.1\r\nHost: keel\r\nX-Never-Ends: "
        } else {
            b"POST /db/execute HTTP/1.1\r\nHost: keel\r\nContent-Type: application/json\r\n\
              Content-Length: 1048576\r\n\r\n[\"INSERT INTO t(v) VALUES('"
        };
        stream.write_all(head).expect("write");
        slow.push(stream);
    }
    let opened = start.elapsed();

    // Everyone else is served while the slow clients hang on.
    let lsn = c.execute_ok(node, json!([["INSERT INTO t(v) VALUES(?)", "during"]]));
    assert!(lsn > 0);
    let answer = c.query(node, "SELECT count(*) FROM t", Level::Weak);
    assert_eq!(answer.rows(0), vec![vec![json!(1)]]);
    let during = rss_kib(pid);

    // The node closes every slow connection on its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut timed_out_bodies = 0;
    for (i, stream) in slow.iter_mut().enumerate() {
        let answer = read_until_closed(stream, deadline);
        if i % 2 == 1 {
            assert!(answer.starts_with("HTTP/1.1 408"), "a stalled body gets 408, got {answer:?}");
            timed_out_bodies += 1;
        } else {
            assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
                "a stalled header gets nothing or 408, got {answer:?}"
            );
        }
    }
    let closed = start.elapsed();
    drop(slow);
    let after = rss_kib(pid);
    let growth = during.saturating_sub(before);
    println!(
        "slow clients: {CLIENTS} opened in {opened:.2?}, all closed by the node after \
         {closed:.2?}; RSS before {before} KiB, with {CLIENTS} slow clients {during} KiB \
         (+{growth} KiB, {:.1} KiB per client), after {after} KiB",
        growth as f64 / CLIENTS as f64
    );
    assert_eq!(timed_out_bodies, CLIENTS / 2);
    assert!(growth < 64 * 1024, "{CLIENTS} slow clients grew the node by {growth} KiB");
    c.execute_ok(node, json!([["INSERT INTO t(v) VALUES(?)", "after"]]));
    c.assert_all_alive();
}

/// Past `--max-concurrent-requests`, a request is answered at once with 503 and `Retry-After`;
/// once the requests holding the slots end, requests are served again.
#[test]
fn requests_past_the_concurrency_cap_get_503_with_retry_after() {
    let c = TestCluster::start_with(
        1,
        0,
        &["--max-concurrent-requests", "4", "--http-body-timeout", "60s"],
    );
    let node = c.leader();
    let addr = c.http_addr(node).to_string();
    // Four requests whose bodies never arrive each hold a slot. The node dispatches accepted
    // connections in no particular order, so a probe can take a slot before the last holder
    // does; that holder is then refused at once and is replaced.
    let open_holder = || {
        let mut stream = TcpStream::connect(&addr).expect("connect");
        stream
            .write_all(
                b"POST /db/execute HTTP/1.1\r\nHost: keel\r\nContent-Type: application/json\r\n\
                  Content-Length: 64\r\n\r\n[",
            )
            .expect("write");
        stream.set_nonblocking(true).expect("set_nonblocking");
        stream
    };
    let mut holders: Vec<TcpStream> = (0..4).map(|_| open_holder()).collect();
    let refused = wait_for(Duration::from_secs(10), "a request refused with 503", || {
        for holder in &mut holders {
            if answered_early(holder) {
                *holder = open_holder();
            }
        }
        let answer = raw_get(&addr, "/status");
        answer.starts_with("HTTP/1.1 503").then_some(answer)
    });
    assert!(refused.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"), "{refused}");
    assert!(refused.contains("--max-concurrent-requests"), "{refused}");

    // The holders finish their bodies; the slots free up.
    for stream in &mut holders {
        stream.set_nonblocking(false).expect("set_nonblocking");
        let rest = format!("{:<62}]", "\"SELECT 1\"");
        stream.write_all(rest.as_bytes()).expect("write");
    }
    for stream in &mut holders {
        let answer = read_until_closed_or_answered(stream);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    wait_for(Duration::from_secs(10), "requests served again", || {
        raw_get(&addr, "/status").starts_with("HTTP/1.1 200").then_some(())
    });
}

/// Whether the node has already answered `holder` (a non-blocking stream whose request body
/// is unfinished): it was refused before it could take a slot.
fn answered_early(holder: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    match holder.read(&mut buf) {
        Ok(n) => {
            let answer = String::from_utf8_lossy(&buf[..n]);
            assert!(n == 0 || answer.starts_with("HTTP/1.1 503"), "a holder was answered {answer}");
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("reading a holder: {e}"),
    }
}

/// Reads until a complete answer head has arrived (the connection stays open: keep-alive).
fn read_until_closed_or_answered(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set_read_timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading an answer: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// `GET path` on a connection of its own; returns the whole answer (head and body).
fn raw_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: keel\r\nConnection: close\r\n\r\n")
        .expect("write");
    read_until_closed(&mut stream, Instant::now() + Duration::from_secs(10))
}
