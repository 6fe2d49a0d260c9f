//! The shell's connection to a cluster: a [`keel_api::Client`] run on the shell's own runtime
//! while Ctrl-C is watched, and the words the shell uses when a node stops answering.
//!
//! [`Cluster::call`] runs one client call. The client does the network work: it sends what
//! needs the leader to the leader it finds (`GET /leader`) and remembers, everything else to
//! the node in use; it moves to another node when one does not answer (connection refused or
//! reset, no answer within `--timeout`), waits out a `503` while a leader is elected, and sends
//! a statement again with its `request_id`, so that a retried write is answered with its first
//! result instead of running twice; a `503` that says the write is committed is final. It
//! keeps at this for at most the retry window the shell gives it ([`super::RETRY_FOR`]).
//!
//! What the shell adds is saying so: the client tells [`Cluster`] of every node that did not
//! answer ([`keel_api::ClientBuilder::on_unanswered`]); when a call ends on another node in use
//! than it started on, the shell prints `<node> is not answering (<why>); switched to <node>`,
//! and when no node answered at all, the error names each node and why. Nodes are named by URL
//! and, when `/nodes` has named it, id ([`Cluster::refresh`], at start, after a switch, and on
//! `.nodes`; the client learns the members from the same answers).
//!
//! IMPLEMENTATION CAVEATS: a node that accepts connections but never answers (a stopped
//! process) is only left after the request timeout (or Ctrl-C). Nodes are listed by the
//! addresses they advertise (`api_addr`); if the URL the shell was started with names one of
//! them differently (`localhost` for `127.0.0.1`), that node is listed twice, which costs a
//! second try when it is down, nothing more.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use keel_api::cluster::NodeInfo;

use super::interrupt;

/// How long to wait for a connection before trying another node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Nodes that did not answer during the current call, in order, with the reason.
type Unanswered = Arc<Mutex<Vec<(String, String)>>>;

/// The cluster the shell talks to, through the node in use.
pub struct Cluster {
    /// Runs the requests (the shell itself is synchronous).
    runtime: tokio::runtime::Runtime,
    /// The client: leader finding, failover, retries with the same request id.
    client: keel_api::Client,
    /// Filled by the client as nodes fail to answer; emptied before each call.
    unanswered: Unanswered,
    /// Node ids by base URL, from the last `/nodes` answer.
    ids: HashMap<String, String>,
}

impl Cluster {
    /// A cluster reached through `url` (a node's HTTP URL; `http://` is added when missing),
    /// with each attempt timing out after `timeout`, calls retried for up to `retry_for`,
    /// `user` (`NAME:PASSWORD`) sent as basic auth, and `cacert` trusted for `https://` URLs
    /// (see [`crate::tls::client_builder`]). Nothing is sent yet.
    ///
    /// Errors: `url` is not an `http` or `https` URL with a host; the CA or client
    /// certificate cannot be read.
    pub fn new(
        url: &str,
        user: Option<&str>,
        timeout: Duration,
        retry_for: Duration,
        cacert: Option<&Path>,
    ) -> anyhow::Result<Cluster> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let unanswered = Unanswered::default();
        let record = unanswered.clone();
        let mut builder = keel_api::Client::builder([url])
            .http(crate::tls::client_builder(cacert)?)
            .timeout(timeout)
            .connect_timeout(CONNECT_TIMEOUT)
            .retry_for(retry_for)
            .on_unanswered(move |node, why| {
                let mut seen = record.lock().unwrap_or_else(PoisonError::into_inner);
                seen.push((node.to_string(), why.to_string()));
            });
        if let Some(user) = user {
            let (name, password) = match user.split_once(':') {
                Some((name, password)) => (name, Some(password.to_string())),
                None => (user, None),
            };
            builder = builder.basic_auth(name, password);
        }
        // reqwest's client registers its connector with the runtime it is built in.
        let client = runtime.block_on(async { builder.build() })?;
        Ok(Cluster { runtime, client, unanswered, ids: HashMap::new() })
    }

    /// Runs `future` (another command's requests) on the shell's runtime until it ends or
    /// Ctrl-C is pressed.
    pub fn block_on<T>(&self, future: impl Future<Output = T>) -> Result<T, String> {
        self.runtime.block_on(async {
            tokio::select! {
                done = future => Ok(done),
                () = interrupt::wait() => Err(interrupt::CANCELLED.to_string()),
            }
        })
    }

    /// The client, for commands that make their own calls ([`crate::backup`]).
    pub fn client(&self) -> &keel_api::Client {
        &self.client
    }

    /// The base URL of the node in use.
    pub fn current(&self) -> String {
        self.client.nodes_known().swap_remove(0)
    }

    /// Runs one client call until it ends or Ctrl-C is pressed, and says so on stderr when
    /// it ended on another node in use. Errors: the server's reason, the nodes that did not
    /// answer and why, or [`interrupt::CANCELLED`].
    pub fn call<T>(
        &mut self,
        call: impl AsyncFnOnce(&keel_api::Client) -> keel_api::Result<T>,
    ) -> Result<T, String> {
        let before = self.current();
        self.take_unanswered();
        let client = self.client.clone();
        let outcome = self.block_on(call(&client))?;
        let unanswered = self.take_unanswered();
        if let Err(keel_api::Error::Unreachable(why)) = &outcome {
            return Err(self.none_answered(&unanswered).unwrap_or_else(|| why.clone()));
        }
        let after = self.current();
        if after != before {
            let why = unanswered.iter().find(|(node, _)| *node == before).or(unanswered.first());
            let why = why.map_or_else(String::new, |(_, why)| format!(" ({why})"));
            eprintln!(
                "{} is not answering{why}; switched to {}",
                self.describe(&before),
                self.describe(&after)
            );
            // Best effort: the new node's peers, so the next switch can name them.
            let _ = self.refresh();
        }
        outcome.map_err(|e| error_text(&e))
    }

    /// Reads the members from the node in use (`GET /nodes`, through [`Cluster::call`]), so
    /// that the shell can name them and the client fail over to them.
    pub fn refresh(&mut self) -> Result<Vec<NodeInfo>, String> {
        let nodes = self.call(async |c| c.nodes().await)?;
        for node in &nodes {
            if let Ok((url, _)) = keel_api::base_url(&node.api_addr) {
                self.ids.insert(url, node.id.clone());
            }
        }
        Ok(nodes)
    }

    /// `http://… (node 2)`, or the URL alone when the id is not known.
    pub fn describe(&self, url: &str) -> String {
        match self.ids.get(url) {
            Some(id) => format!("{url} (node {id})"),
            None => url.to_string(),
        }
    }

    /// Every node that did not answer, once each with its first reason; `None` if the client
    /// reported none.
    fn none_answered(&self, unanswered: &[(String, String)]) -> Option<String> {
        let mut named: Vec<&str> = Vec::new();
        let mut lines = Vec::new();
        for (node, why) in unanswered {
            if !named.contains(&node.as_str()) {
                named.push(node);
                lines.push(format!("{} is not answering ({why})", self.describe(node)));
            }
        }
        (!lines.is_empty()).then(|| lines.join("; "))
    }

    /// What the client reported since the last look, emptied.
    fn take_unanswered(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.unanswered.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A failed call in the shell's words: the server's own error text for a refusal (its JSON
/// `error`, or its text, or the status when the body says nothing), else the client's.
pub fn error_text(error: &keel_api::Error) -> String {
    match error.answer() {
        Some(answer) => answer.error.clone(),
        None => error.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::sync::mpsc;
    use std::time::Instant;

    use super::*;

    /// A cluster of `url` that makes one attempt per call.
    pub(crate) fn once(url: &str) -> Cluster {
        Cluster::new(url, None, Duration::from_secs(2), Duration::ZERO, None).unwrap()
    }

    /// A server on a loopback port that answers every request (one per connection) with what
    /// `answer` makes of its request line: a status line and a body. Returns its URL and the
    /// request lines as they arrive.
    pub(crate) fn serve(
        answer: impl Fn(&str) -> (&'static str, String) + Send + 'static,
    ) -> (String, mpsc::Receiver<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (seen, requests) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut reader = BufReader::new(stream.unwrap());
                let (mut head, mut line, mut length) = (String::new(), String::new(), 0);
                reader.read_line(&mut head).unwrap();
                while reader.read_line(&mut line).unwrap() > 2 {
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap();
                    }
                    line.clear();
                }
                reader.read_exact(&mut vec![0; length]).unwrap();
                let (status, body) = answer(head.trim());
                let _ = seen.send(head.trim().to_string());
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                reader.get_mut().write_all(reply.as_bytes()).unwrap();
            }
        });
        (url, requests)
    }

    #[test]
    fn bad_urls_are_refused_at_once() {
        for url in ["http://[bad", "ftp://x", "a b", ""] {
            assert!(
                Cluster::new(url, None, Duration::from_secs(1), Duration::ZERO, None).is_err(),
                "{url}"
            );
        }
        let c = once("localhost:4001/");
        assert_eq!(c.current(), "http://localhost:4001");
    }

    #[test]
    fn nodes_are_named_by_id_once_known() {
        let mut c = once("localhost:4003");
        assert_eq!(c.describe("http://localhost:4003"), "http://localhost:4003");
        c.ids.insert("http://localhost:4003".into(), "2".into());
        assert_eq!(c.describe("http://localhost:4003"), "http://localhost:4003 (node 2)");
        let unanswered = [
            ("http://localhost:4003".to_string(), "Connection refused".to_string()),
            ("http://b:1".to_string(), "timed out".to_string()),
            ("http://localhost:4003".to_string(), "Connection reset".to_string()),
        ];
        assert_eq!(
            c.none_answered(&unanswered).unwrap(),
            "http://localhost:4003 (node 2) is not answering (Connection refused); \
             http://b:1 is not answering (timed out)"
        );
    }

    #[test]
    fn errors_are_the_server_text() {
        // Calls watch for Ctrl-C: keep another test's press from landing here.
        let _one = interrupt::tests::FLAG.lock().unwrap_or_else(PoisonError::into_inner);
        interrupt::clear();
        let answers = [
            ("503 Service Unavailable", r#"{"error":"leader not found"}"#),
            ("500 Internal Server Error", "boom\n"),
            ("502 Bad Gateway", ""),
            ("400 Bad Request", r#"{"error":"no such table: t"}"#),
            ("200 OK", "<html>"),
        ];
        let next = std::sync::atomic::AtomicUsize::new(0);
        let (url, _) = serve(move |_| {
            let (status, body) = answers[next.fetch_add(1, std::sync::atomic::Ordering::SeqCst)];
            (status, body.to_string())
        });
        let mut c = once(&url);
        let mut status = || c.call(async |c| c.status().await).unwrap_err();
        assert_eq!(status(), "leader not found");
        assert_eq!(status(), "boom");
        assert_eq!(status(), "HTTP 502 Bad Gateway");
        assert_eq!(status(), "no such table: t");
        assert!(status().contains("<html>"), "an answer that is not JSON is shown");
    }

    #[test]
    fn ctrl_c_cancels_a_request_that_gets_no_answer() {
        let _one = interrupt::tests::FLAG.lock().unwrap_or_else(PoisonError::into_inner);
        // A listener that never accepts: the kernel completes the connection, nobody answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let mut c =
            Cluster::new(&url, None, Duration::from_secs(60), Duration::from_secs(60), None)
                .unwrap();
        interrupt::clear();
        interrupt::tests::press();
        let started = Instant::now();
        assert_eq!(c.call(async |c| c.status().await).unwrap_err(), interrupt::CANCELLED);
        assert!(started.elapsed() < Duration::from_secs(30), "cancelled without waiting");
        assert!(!interrupt::take(), "the Ctrl-C was used up");
    }

    #[test]
    fn an_unreachable_cluster_names_every_node_tried() {
        let _one = interrupt::tests::FLAG.lock().unwrap_or_else(PoisonError::into_inner);
        interrupt::clear();
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut c = Cluster::new(
            &format!("127.0.0.1:{port}"),
            None,
            Duration::from_secs(2),
            Duration::from_millis(300),
            None,
        )
        .unwrap();
        let error = c.call(async |c| c.status().await).unwrap_err();
        assert_eq!(error, format!("http://127.0.0.1:{port} is not answering (Connection refused)"));
    }
}
