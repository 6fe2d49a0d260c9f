//! Tests of the proxies on loopback: node 1 is 127.0.0.1 (where the tests connect from),
//! node 2 is an echo server on 127.0.0.2 whose proxies listen on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::*;

/// An echo server on 127.0.0.2 (every connection echoed by a thread of its own); its
/// address.
fn echo() -> String {
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Proxies for node 1 (127.0.0.1, nothing listening) and node 2 (the echo server, both
/// ports).
fn proxies() -> Proxies {
    let server = echo();
    let targets = vec![
        Target { ip: "127.0.0.1".into(), http: "127.0.0.1:1".into(), raft: "127.0.0.1:1".into() },
        Target { ip: "127.0.0.2".into(), http: server.clone(), raft: server },
    ];
    Proxies::start("127.0.0.1", targets).unwrap()
}

fn connect(addr: &str) -> TcpStream {
    let conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn
}

/// Reads exactly `n` bytes, or fails the test.
fn read_n(conn: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    conn.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn a_clean_link_relays_both_ways() {
    let p = proxies();
    let mut conn = connect(p.http(2));
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let mut writer = conn.try_clone().unwrap();
    let sent = data.clone();
    let t = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    assert_eq!(read_n(&mut conn, data.len()), data);
    t.join().unwrap();
    assert_eq!(p.stats().connections, 1);
}

#[test]
fn delay_applies_to_every_chunk_in_each_direction() {
    let p = proxies();
    p.set(1, 2, |l| l.delay = Duration::from_millis(150));
    let mut conn = connect(p.raft(2));
    let start = Instant::now();
    conn.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut conn, 4), b"ping");
    // Both directions are delayed: at least two delays for the round trip.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(300), "the round trip took {took:?}");
    p.heal();
    let start = Instant::now();
    conn.write_all(b"pong").unwrap();
    assert_eq!(read_n(&mut conn, 4), b"pong");
    // Still delayed, it would take at least 300 ms again.
    assert!(start.elapsed() < Duration::from_millis(300), "healed, took {:?}", start.elapsed());
}

#[test]
fn a_stalled_direction_holds_its_bytes_until_healed() {
    let p = proxies();
    let mut conn = connect(p.http(2));
    p.set(1, 2, |l| l.stall_up = true);
    conn.write_all(b"held").unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
    let mut buf = [0u8; 4];
    let err = conn.read(&mut buf).unwrap_err();
    assert!(matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
    p.heal();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(read_n(&mut conn, 4), b"held");
}

#[test]
fn bandwidth_paces_the_bytes() {
    let p = proxies();
    p.set(1, 2, |l| l.bandwidth = Some(64 << 10));
    let mut conn = connect(p.http(2));
    let data = vec![7u8; 32 << 10];
    let start = Instant::now();
    let mut writer = conn.try_clone().unwrap();
    let sent = data.clone();
    let t = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    assert_eq!(read_n(&mut conn, data.len()), data);
    t.join().unwrap();
    // 32 KiB at 64 KiB/s takes half a second each way; the echo starts while the upload goes
    // on, so the two directions overlap and the round trip takes a little over half a second.
    // Unpaced, it takes milliseconds.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(450), "32 KiB took {took:?}");
}

#[test]
fn drop_after_closes_connections_mid_stream() {
    let p = proxies();
    p.set(1, 2, |l| l.drop_after = Some((Duration::from_millis(100), Duration::from_millis(200))));
    let mut conn = connect(p.http(2));
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let closed = loop {
        if conn.write_all(b"x").is_err() {
            break true;
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break true,
            Ok(_) => {}
        }
        if start.elapsed() > Duration::from_secs(3) {
            break false;
        }
    };
    assert!(closed, "the connection lived on");
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert_eq!(p.stats().dropped, 1);
}

#[test]
fn a_cut_link_closes_new_connections() {
    let p = proxies();
    p.cut(1, 2);
    let mut conn = connect(p.http(2));
    conn.write_all(b"x").ok();
    let mut buf = [0u8; 1];
    assert!(conn.read(&mut buf).map_or(true, |n| n == 0), "a cut link relayed");
    assert_eq!(p.stats().connections, 0);
}

/// A replication frame: a 4-byte length, then `body`.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[test]
fn the_parser_keeps_the_frames_after_a_stream_opens() {
    let p = proxies();
    let shared = &p.shared;
    let mut parser = Parser::default();
    let key = (1, 2);
    // A request with a body first (a vote), then the stream's upgrade request, then frames,
    // split across feeds at awkward places.
    let mut bytes = b"POST /raft/vote HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello".to_vec();
    let head = b"POST /raft/stream HTTP/1.1\r\nupgrade: keel-raft-stream/1\r\n\r\n".to_vec();
    bytes.extend_from_slice(&head);
    bytes.extend(frame(b"one"));
    bytes.extend(frame(&vec![9; CAPTURE_MAX_FRAME + 1]));
    bytes.extend(frame(b"three"));
    for piece in bytes.chunks(7) {
        parser.feed(piece, shared, key);
    }
    let captures = shared.captures.lock().unwrap();
    let capture = &captures[&key];
    assert_eq!(capture.head.as_deref(), Some(&head[..]));
    let kept: Vec<&[u8]> = capture.frames.iter().map(|f| &f[..]).collect();
    assert_eq!(kept, [&frame(b"one")[..], &frame(b"three")[..]], "the large frame is not kept");
}

#[test]
fn a_chunked_body_turns_the_parser_off() {
    let p = proxies();
    let mut parser = Parser::default();
    let bytes = b"POST /raft/snapshot HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\n";
    parser.feed(bytes, &p.shared, (1, 2));
    assert!(matches!(parser, Parser::Off), "{parser:?}");
}

#[test]
fn a_replay_opens_a_stream_and_sends_kept_frames() {
    // A follower stand-in: answers the upgrade with 101, then counts the frame bytes.
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    let follower = listener.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while head_end(&got).is_none() {
            let n = conn.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        let end = head_end(&got).unwrap();
        tx.send(got[..end].to_vec()).unwrap();
        conn.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").unwrap();
        let mut frames = got[end..].to_vec();
        conn.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            frames.extend_from_slice(&buf[..n]);
        }
        tx.send(frames).unwrap();
    });
    let targets = vec![
        Target { ip: "127.0.0.1".into(), http: "127.0.0.1:1".into(), raft: "127.0.0.1:1".into() },
        Target { ip: "127.0.0.2".into(), http: follower.clone(), raft: follower },
    ];
    let p = Proxies::start("127.0.0.1", targets).unwrap();
    let head = b"POST /raft/stream HTTP/1.1\r\nupgrade: keel-raft-stream/1\r\n\r\n".to_vec();
    {
        let mut captures = p.shared.captures.lock().unwrap();
        let capture = captures.entry((1, 2)).or_default();
        capture.head = Some(head.clone());
        capture.frames.push_back(frame(b"append"));
    }
    p.set(1, 2, |l| l.replay = true);
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), head);
    // One kept frame: it goes out once, and once more (the duplicate).
    let frames = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(frames, [frame(b"append"), frame(b"append")].concat());
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.stats().replays == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(p.stats().replayed_frames >= 2, "{:?}", p.stats());
}
