//! TLS: HTTPS on the client API and mutual TLS between nodes, with real `keel` processes and
//! certificates from `keel certs`. Requests go through `curl` (as an operator would), which
//! also lets a test present any certificate on any port; a certificate reload is watched over
//! raw rustls connections, which can stay open across it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use integration_tests::{TIMEOUT, free_ports, keel_binary, wait_for};

/// Runs `keel certs` into `dir`.
fn certs(dir: &Path, cluster: &str, nodes: &str) {
    let out = Command::new(keel_binary())
        .args(["certs", "--dir"])
        .arg(dir)
        .args(["--cluster-id", cluster, "--nodes", nodes])
        .output()
        .expect("running keel certs");
    assert!(out.status.success(), "keel certs failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// `curl -sS` with `args`; returns (HTTP status or 0 on a transport failure, body, output).
fn curl(args: &[&str]) -> (u16, String, Output) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string(), out)
}

/// One `keel serve` process, killed on drop.
struct Proc {
    /// The child.
    child: Child,
    /// Its stderr log.
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS cluster of `keel serve` processes in a temporary directory.
struct Tls {
    /// The directory (certificates in `c/`).
    dir: tempfile::TempDir,
    /// `(http, raft)` ports by node index (node id - 1).
    ports: Vec<(u16, u16)>,
    /// Processes by node index.
    procs: Vec<Option<Proc>>,
}

impl Tls {
    /// Starts nodes 1, 2 and 3 and waits until they are three voters.
    fn start_three_voters(&mut self) {
        for id in 1..=3 {
            self.start(id, &[]);
            self.wait_ready(id);
        }
        wait_for(TIMEOUT, "three voters", || {
            let (s, body, _) = curl(&["--cacert", &self.ca(), &self.url(1, "/nodes")]);
            (s == 200 && body.matches("\"voter\":true").count() == 3).then_some(())
        });
    }

    /// Certificates for nodes 1..=n (cluster `demo`), ports for `n` nodes; nothing started.
    fn new(n: usize) -> Tls {
        let dir = tempfile::tempdir().expect("temp dir");
        certs(
            &dir.path().join("c"),
            "demo",
            &(1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(","),
        );
        let p = free_ports(2 * n);
        let ports = (0..n).map(|i| (p[2 * i], p[2 * i + 1])).collect();
        Tls { dir, ports, procs: (0..n).map(|_| None).collect() }
    }

    fn ca(&self) -> String {
        self.path("c/ca.pem")
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }

    /// `https://127.0.0.1:<http port of node id>`.
    fn url(&self, id: usize, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.ports[id - 1].0)
    }

    /// `https://127.0.0.1:<raft port of node id>`.
    fn raft_url(&self, id: usize, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.ports[id - 1].1)
    }

    /// Starts node `id` with `--tls-dir c` (joining node 1 unless it is node 1) and `extra`.
    fn start(&mut self, id: usize, extra: &[&str]) {
        let (http, raft) = self.ports[id - 1];
        let log = self.dir.path().join(format!("node{id}.log"));
        let mut cmd = Command::new(keel_binary());
        cmd.args(["serve", "--id", &id.to_string()])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--raft-addr", &format!("127.0.0.1:{raft}")])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node{id}")))
            .arg("--tls-dir")
            .arg(self.dir.path().join("c"))
            .args(extra);
        if id != 1 {
            cmd.args(["--join", &format!("https://127.0.0.1:{}", self.ports[0].0)]);
        }
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = cmd.stdout(Stdio::null()).stderr(stderr).spawn().expect("starting keel");
        self.procs[id - 1] = Some(Proc { child, log });
    }

    /// Waits until node `id` answers `/readyz` 200 over HTTPS.
    fn wait_ready(&self, id: usize) {
        wait_for(TIMEOUT, format!("node {id} ready over HTTPS"), || {
            (curl(&["--cacert", &self.ca(), &self.url(id, "/readyz")]).0 == 200).then_some(())
        });
    }

    /// The leader's id as node `id` sees it.
    fn leader(&self, id: usize) -> Option<usize> {
        let (status, body, _) = curl(&["--cacert", &self.ca(), &self.url(id, "/leader")]);
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status == 200).then(|| v["id"].as_str()?.parse().ok())?
    }

    /// Sends `join` to node `id` once it answers joins at all, and asserts it is refused (403).
    fn join_refused(&self, id: usize, join: &str) {
        let (s, body) = wait_for(TIMEOUT, "the join to be answered", || {
            let (s, body) = self.post(id, "/join", join);
            (s != 0 && s != 503).then_some((s, body))
        });
        assert_eq!(s, 403, "{body}");
    }

    /// POSTs JSON to node `id`'s client API.
    fn post(&self, id: usize, path: &str, body: &str) -> (u16, String) {
        let url = self.url(id, path);
        let (s, b, _) = curl(&[
            "--cacert",
            &self.ca(),
            "-XPOST",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            &url,
        ]);
        (s, b)
    }

    /// The log of node `id` so far.
    fn log(&self, id: usize) -> String {
        let log = &self.procs[id - 1].as_ref().expect("node started").log;
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// Kills node `id` with SIGKILL.
    fn kill(&mut self, id: usize) {
        self.procs[id - 1] = None;
    }

    /// POSTs `body` to node `id`'s Raft port presenting the certificate `cert` (key beside it).
    fn raft_post(
        &self,
        id: usize,
        path: &str,
        cert: &str,
        ca: &str,
        body: &str,
    ) -> (u16, String, Output) {
        let key = cert.replace(".pem", "-key.pem");
        curl(&[
            "--cacert",
            ca,
            "--cert",
            cert,
            "--key",
            &key,
            "-XPOST",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            &self.raft_url(id, path),
        ])
    }
}

/// A vote request from candidate `node` (term 1), as openraft serializes it.
fn vote_from(node: u64) -> String {
    format!(
        r#"{{"vote":{{"leader_id":{{"term":1,"voted_for":{node}}},"committed":false}},"last_log_id":null}}"#
    )
}

#[test]
fn three_nodes_over_tls_write_read_fail_over_and_refuse_impostors() {
    let mut c = Tls::new(3);
    // Certificates the cluster must refuse: another CA, and another cluster id under this CA.
    certs(&c.dir.path().join("other-ca"), "demo", "3,4");
    certs(&c.dir.path().join("c"), "elsewhere", "9");
    c.start_three_voters();

    // Writes through a follower (forwarded to the leader over HTTPS), reads on another.
    let (s, body) =
        c.post(2, "/db/execute", r#"["CREATE TABLE t (x)", "INSERT INTO t VALUES (42)"]"#);
    assert_eq!(s, 200, "{body}");
    assert!(!body.contains("error"), "{body}");
    wait_for(TIMEOUT, "the row on node 3", || {
        let url = c.url(3, "/db/query?level=none&q=SELECT%20x%20FROM%20t");
        let (s, body, _) = curl(&["--cacert", &c.ca(), &url]);
        (s == 200 && body.contains("[[42]]")).then_some(())
    });

    // curl with the CA works; plain HTTP to the HTTPS port does not.
    let (s, body, _) = curl(&["--cacert", &c.ca(), &c.url(1, "/status")]);
    assert_eq!(s, 200, "{body}");
    let plain = format!("http://127.0.0.1:{}/status", c.ports[0].0);
    let (s, _, out) = curl(&[&plain]);
    assert!(s != 200 && !out.status.success(), "plain HTTP answered {s}");

    // Another CA: the TLS handshake on the Raft port fails (no HTTP status at all).
    let other = c.path("other-ca/node-3.pem");
    let (s, _, out) = c.raft_post(1, "/raft/vote", &other, &c.ca(), &vote_from(3));
    assert_eq!(s, 0, "a certificate of another CA got HTTP {s}");
    assert!(!out.status.success());
    wait_for(TIMEOUT, "the handshake refusal in node 1's log", || {
        c.log(1).contains("refused a TLS client certificate").then_some(())
    });

    // Same CA, another cluster id: 403, logged for audit.
    let foreign = c.path("c/node-9.pem");
    let (s, body, _) = c.raft_post(1, "/raft/vote", &foreign, &c.ca(), &vote_from(9));
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("elsewhere"), "{body}");
    wait_for(TIMEOUT, "the refusal in node 1's log", || {
        let log = c.log(1);
        (log.contains("keel::audit") && log.contains("another cluster")).then_some(())
    });

    // Node 2's certificate claiming to be node 3: refused, in a vote and an applied report.
    let node2 = c.path("c/node-2.pem");
    let (s, body, _) = c.raft_post(1, "/raft/vote", &node2, &c.ca(), &vote_from(3));
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("node 2"), "{body}");
    let (s, body, _) = c.raft_post(1, "/keel/applied", &node2, &c.ca(), r#"{"id":3,"applied":1}"#);
    assert_eq!(s, 403, "{body}");
    // Its own id is accepted (the check is the binding, not the certificate alone).
    let (s, body, _) = c.raft_post(1, "/keel/applied", &node2, &c.ca(), r#"{"id":2,"applied":1}"#);
    assert_eq!(s, 204, "{body}");

    // A node holding another CA's certificate cannot join: the leader checks the new node's
    // Raft address, whose handshake fails.
    let ports = free_ports(2);
    let (http4, raft4) = (ports[0], ports[1]);
    let log4 = c.dir.path().join("impostor.log");
    let impostor = Command::new(keel_binary())
        .args(["serve", "--id", "4", "--http-addr", &format!("127.0.0.1:{http4}")])
        .args(["--raft-addr", &format!("127.0.0.1:{raft4}")])
        .arg("--data-dir")
        .arg(c.dir.path().join("impostor"))
        .arg("--tls-dir")
        .arg(c.dir.path().join("other-ca"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log4).expect("log"))
        .spawn()
        .expect("starting the impostor");
    let _impostor = Proc { child: impostor, log: log4 };
    let leader = wait_for(TIMEOUT, "a leader", || c.leader(1));
    let join = format!(
        r#"{{"id":4,"raft_addr":"127.0.0.1:{raft4}","http_addr":"127.0.0.1:{http4}","voter":true}}"#
    );
    c.join_refused(leader, &join);
    let (_, nodes, _) = curl(&["--cacert", &c.ca(), &c.url(leader, "/nodes?nonvoters")]);
    assert!(!nodes.contains("\"4\""), "node 4 became a member: {nodes}");
    assert!(c.log(leader).contains("refused a join"), "no audit line for the join");

    // Fail-over over TLS: kill the leader; another takes writes.
    c.kill(leader);
    let survivor = (1..=3).find(|&i| i != leader).expect("a survivor");
    let new_leader =
        wait_for(TIMEOUT, "a new leader", || c.leader(survivor).filter(|&l| l != leader));
    let (s, body) = wait_for(TIMEOUT, "a write after fail-over", || {
        let (s, body) = c.post(survivor, "/db/execute", r#"["INSERT INTO t VALUES (43)"]"#);
        (s == 200 && !body.contains("error")).then_some((s, body))
    });
    assert_eq!(s, 200, "{body}");
    let url = c.url(new_leader, "/db/query?q=SELECT%20count(*)%20FROM%20t");
    let (_, body, _) = curl(&["--cacert", &c.ca(), &url]);
    assert!(body.contains("[[2]]"), "{body}");
}

/// Under mutual TLS the leader gives a read index only to members: a certificate of this
/// cluster's CA and cluster id, for a node that was never added, is refused (403, logged for
/// audit), while a member's is answered, and a follower's linearizable read (which asks the
/// leader for a read index) works.
#[test]
fn read_index_is_given_to_members_only() {
    let mut c = Tls::new(3);
    // Node 7 of cluster `demo`, signed by the cluster CA, but never a member.
    certs(&c.dir.path().join("c"), "demo", "7");
    c.start_three_voters();
    let (s, body) =
        c.post(1, "/db/execute", r#"["CREATE TABLE t (x)", "INSERT INTO t VALUES (42)"]"#);
    assert_eq!(s, 200, "{body}");
    let leader = wait_for(TIMEOUT, "a leader", || c.leader(1));
    let follower = (1..=3).find(|&i| i != leader).expect("a follower");

    let outsider = c.path("c/node-7.pem");
    let (s, body, _) = c.raft_post(leader, "/keel/read-index", &outsider, &c.ca(), "");
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("node 7") && body.contains("not a member"), "{body}");
    wait_for(TIMEOUT, "the refusal in the leader's log", || {
        let log = c.log(leader);
        (log.contains("keel::audit") && log.contains("refused a read index")).then_some(())
    });

    let member = c.path(&format!("c/node-{follower}.pem"));
    let (s, body, _) = c.raft_post(leader, "/keel/read-index", &member, &c.ca(), "");
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"index\""), "{body}");

    let url = c.url(follower, "/db/query?level=linearizable&q=SELECT%20x%20FROM%20t");
    let (s, body, _) = curl(&["--cacert", &c.ca(), &url]);
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("[[42]]"), "{body}");
}

#[test]
fn client_certificates_on_the_client_api() {
    let mut c = Tls::new(1);
    let ca = c.ca();
    c.start(1, &["--tls-client-ca", &ca]);
    let (cert, key) = (c.path("c/client.pem"), c.path("c/client-key.pem"));
    wait_for(TIMEOUT, "node 1 ready (with a client certificate)", || {
        let (s, _, _) =
            curl(&["--cacert", &ca, "--cert", &cert, "--key", &key, &c.url(1, "/readyz")]);
        (s == 200).then_some(())
    });
    // Without a client certificate: the handshake fails, no HTTP answer.
    let (s, _, out) = curl(&["--cacert", &ca, &c.url(1, "/status")]);
    assert_eq!(s, 0);
    assert!(!out.status.success());
    // With one: served.
    let (s, body, _) =
        curl(&["--cacert", &ca, "--cert", &cert, "--key", &key, &c.url(1, "/status")]);
    assert_eq!(s, 200, "{body}");
}

#[test]
fn a_stalled_handshake_is_cut_off_at_the_header_deadline() {
    use std::io::Read;
    let mut c = Tls::new(1);
    c.start(1, &["--http-header-timeout", "1s"]);
    c.wait_ready(1);
    for port in [c.ports[0].0, c.ports[0].1] {
        // Connect and send nothing: the server must close the connection, not wait forever.
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(15))).expect("timeout");
        let started = std::time::Instant::now();
        let mut buf = [0u8; 16];
        let read = tcp.read(&mut buf);
        let waited = started.elapsed();
        assert!(
            matches!(read, Ok(0))
                || read.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "port {port}: expected the server to close the connection, got {read:?}"
        );
        assert!(
            waited < std::time::Duration::from_secs(10),
            "port {port}: closed after {waited:?}"
        );
    }
}

/// A TLS connection of the test's own, kept open across requests: sends HTTP/1.1 GETs with
/// keep-alive and tells which certificate the server presented.
struct Raw {
    stream: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
}

impl Raw {
    /// Connects to `127.0.0.1:port`, trusting `ca`, presenting `client` (certificate and key
    /// files) if given.
    fn connect(port: u16, ca: &str, client: Option<(&str, &str)>) -> Raw {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).expect("ca") {
            roots.add(cert.expect("ca certificate")).expect("adding the ca");
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(cert)
                        .expect("cert")
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_file(key).expect("key"),
                )
                .expect("client certificate"),
            None => builder.with_no_client_auth(),
        };
        let name = ServerName::try_from("127.0.0.1").expect("server name");
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("tls");
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
        let mut raw = Raw { stream: rustls::StreamOwned::new(conn, tcp) };
        while raw.stream.conn.is_handshaking() {
            raw.stream.conn.complete_io(&mut raw.stream.sock).expect("TLS handshake");
        }
        raw
    }

    /// The end-entity certificate the server presented (DER).
    fn server_certificate(&self) -> Vec<u8> {
        self.stream.conn.peer_certificates().expect("a server certificate")[0].to_vec()
    }

    /// `GET path` on this connection; the status and body.
    fn get(&mut self, path: &str) -> (u16, String) {
        use std::io::{Read as _, Write as _};
        write!(self.stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
        self.stream.flush().expect("flush");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.stream.read_exact(&mut byte).expect("reading the answer's head");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_string)
            })
            .and_then(|v| v.trim().parse().ok())
            .expect("a Content-Length");
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).expect("reading the body");
        (status, String::from_utf8_lossy(&body).to_string())
    }
}

/// The first certificate of a PEM file (DER).
fn first_certificate(path: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_file_iter(path)
        .expect("pem")
        .next()
        .expect("a certificate")
        .unwrap()
        .to_vec()
}

/// Certificates replaced on disk and reloaded (`POST /admin/tls/reload`, then SIGHUP): new
/// handshakes get the new client-API and node certificates, a connection opened before the
/// reload goes on answering, the cluster keeps replicating, and files that do not fit (a key of
/// another certificate, another node's certificate) are refused with everything in force kept.
#[test]
fn certificates_reload_without_dropping_connections() {
    let mut c = Tls::new(3);
    c.start_three_voters();
    let (s, body) =
        c.post(1, "/db/execute", r#"["CREATE TABLE t (x)", "INSERT INTO t VALUES (1)"]"#);
    assert_eq!(s, 200, "{body}");
    // New certificates for every node and the API, signed by the same CA.
    let fresh = c.dir.path().join("c2");
    std::fs::create_dir_all(&fresh).expect("mkdir");
    for file in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(c.dir.path().join("c").join(file), fresh.join(file)).expect("copy the CA");
    }
    certs(&fresh, "demo", "1,2,3");
    let (http1, raft1) = c.ports[0];
    let old_api = first_certificate(&c.path("c/server.pem"));
    let mut kept = Raw::connect(http1, &c.ca(), None);
    assert_eq!(kept.get("/readyz").0, 200);
    assert_eq!(kept.server_certificate(), old_api);

    let install = |names: &[(&str, &str)]| {
        for (from, to) in names {
            std::fs::copy(c.dir.path().join(from), c.dir.path().join("c").join(to)).expect("copy");
        }
    };
    let node1 = [
        ("c2/node-1.pem", "node-1.pem"),
        ("c2/node-1-key.pem", "node-1-key.pem"),
        ("c2/server.pem", "server.pem"),
        ("c2/server-key.pem", "server-key.pem"),
    ];
    install(&node1);
    let (s, body) = c.post(1, "/admin/tls/reload", "");
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"api\"") && body.contains("\"node\""), "{body}");

    // The connection from before the reload still answers; new ones see the new certificates.
    assert_eq!(kept.get("/readyz").0, 200, "an established connection must survive a reload");
    assert_eq!(kept.server_certificate(), old_api);
    let new_api = first_certificate(&c.path("c2/server.pem"));
    assert_eq!(Raw::connect(http1, &c.ca(), None).server_certificate(), new_api);
    let node2 = (c.path("c/node-2.pem"), c.path("c/node-2-key.pem"));
    let raft = Raw::connect(raft1, &c.ca(), Some((&node2.0, &node2.1)));
    assert_eq!(raft.server_certificate(), first_certificate(&c.path("c2/node-1.pem")));
    // The cluster goes on: a write through node 1 reaches every node.
    let (s, body) = c.post(1, "/db/execute", r#"["INSERT INTO t VALUES (2)"]"#);
    assert_eq!(s, 200, "{body}");
    for id in 1..=3 {
        wait_for(TIMEOUT, format!("the row on node {id}"), || {
            let url = c.url(id, "/db/query?level=none&q=SELECT%20count(*)%20FROM%20t");
            let (s, body, _) = curl(&["--cacert", &c.ca(), &url]);
            (s == 200 && body.contains("[[2]]")).then_some(())
        });
    }

    // Files that do not fit are refused, and what is in force stays.
    install(&[("c2/node-2-key.pem", "server-key.pem")]);
    let (s, body) = c.post(1, "/admin/tls/reload", "");
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("does not fit"), "{body}");
    install(&[("c2/server-key.pem", "server-key.pem"), ("c2/node-2.pem", "node-1.pem")]);
    install(&[("c2/node-2-key.pem", "node-1-key.pem")]);
    let (s, body) = c.post(1, "/admin/tls/reload", "");
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("is for node 2"), "{body}");
    assert_eq!(Raw::connect(http1, &c.ca(), None).server_certificate(), new_api);

    // SIGHUP reloads too: back to node 1's own files, and the log says so.
    install(&node1[..2]);
    let pid = c.procs[0].as_ref().expect("node 1 runs").child.id();
    // SAFETY: kill(2) with our own child's pid and a plain signal number.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) }, 0);
    wait_for(TIMEOUT, "the SIGHUP reload in node 1's log", || {
        let log = c.log(1);
        (log.matches("certificates reloaded").count() >= 2).then_some(())
    });
    let raft = Raw::connect(raft1, &c.ca(), Some((&node2.0, &node2.1)));
    assert_eq!(raft.server_certificate(), first_certificate(&c.path("c2/node-1.pem")));
}

/// Under mutual TLS a member that comes back at new addresses proves its id there as a new
/// node does: a join naming node 2 at node 3's Raft address is refused and nothing moves; node
/// 3 itself, started again on other ports with its data, is moved to them.
#[test]
fn a_move_needs_the_moved_nodes_certificate() {
    let mut c = Tls::new(3);
    c.start_three_voters();
    let leader = wait_for(TIMEOUT, "a leader", || c.leader(1));
    let addr_of = |c: &Tls, id: &str| -> String {
        let (_, nodes, _) = curl(&["--cacert", &c.ca(), &c.url(1, "/nodes?nonvoters")]);
        let nodes: serde_json::Value = serde_json::from_str(&nodes).unwrap_or_default();
        nodes[id]["addr"].as_str().unwrap_or_default().to_string()
    };
    let node2 = format!("127.0.0.1:{}", c.ports[1].1);
    let (http3, raft3) = c.ports[2];
    let claim = format!(
        r#"{{"id":2,"raft_addr":"127.0.0.1:{raft3}","http_addr":"127.0.0.1:{http3}","voter":true}}"#
    );
    c.join_refused(leader, &claim);
    assert!(c.log(leader).contains("refused a join"), "no audit line for the join");
    assert_eq!(addr_of(&c, "2"), node2);

    c.kill(3);
    let ports = free_ports(2);
    c.ports[2] = (ports[0], ports[1]);
    c.start(3, &[]);
    let moved = format!("127.0.0.1:{}", ports[1]);
    wait_for(TIMEOUT, "node 3 listed at its new Raft address", || {
        (addr_of(&c, "3") == moved).then_some(())
    });
    c.wait_ready(3);
}
