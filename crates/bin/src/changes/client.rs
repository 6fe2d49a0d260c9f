//! `keel changes`: follows `GET /db/changes` and prints each change as one JSON line.
//!
//! The command keeps the id of the last event it received ([`EventId`]) and, when the connection drops (the node died, the network failed, the stream went
//! silent for longer than three keep-alive intervals), reconnects with that id as
//! `Last-Event-ID`: to the same node, or to another member from the last `/nodes` answer, in
//! turn. Since every node streams the same log and the id says exactly which events were
//! received, nothing is printed twice and nothing is skipped. An event that would go backwards
//! is refused as a fatal error rather than printed or silently dropped.
//!
//! Changes go to stdout, one line each, flushed per line; progress and errors go to stderr.
//! Fatal answers (400 for a bad start, 401/403 for missing credentials, 410 when the start has
//! been compacted away, or the stream falling behind compaction) end the command with an error.
//! Credentials go in the URL (`http://user:password@host:port`), as for the other commands.
//!
//! Each connection is one call of [`keel_api::Client::changes`] on a client pinned to the node
//! ([`keel_api::Client::on`]) with retries off: which node to try next, how long to pause and
//! when to give up (`--give-up-after`) is this loop's policy, because a change stream resumes
//! from the last event received, which the client's retry of a whole call knows nothing of.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use keel_api::ErrorAnswer;
use keel_api::changes::EventId;
use keel_api::sse::Event;

use super::{ChangesArgs, KEEP_ALIVE};

/// How long a connection attempt (and the `/nodes` question) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A stream that sends nothing (not even a keep-alive) for this long is treated as dead.
const SILENCE: Duration = Duration::from_secs(KEEP_ALIVE.as_secs() * 3);
/// The pause after every node has been tried without success, doubling up to
/// [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between rounds of reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why one connection stopped.
enum Stop {
    /// The command is done (`--limit` or `--until-lsn` reached).
    Done,
    /// The connection failed or ended; try again, maybe elsewhere. `progressed` says whether
    /// it delivered anything (so the node was reachable).
    Lost { reason: String, progressed: bool },
}

/// What the command carries from one connection to the next.
struct Follower {
    /// The command's flags.
    args: ChangesArgs,
    /// The id of the last event received: where to resume.
    last: Option<EventId>,
    /// Changes printed so far.
    printed: u64,
    /// Where changes go.
    out: std::io::StdoutLock<'static>,
}

/// Runs the command; see the module docs.
pub(super) async fn run(args: ChangesArgs) -> anyhow::Result<()> {
    if args.limit == Some(0) {
        return Ok(());
    }
    // One attempt per call: this loop is the command's own reconnection policy. The URL's
    // credentials go to every node.
    let client = keel_api::Client::builder([&args.url])
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CONNECT_TIMEOUT)
        .retry_for(Duration::ZERO)
        .build()
        .with_context(|| format!("{:?} is not a node's URL", args.url))?;
    let first = client.nodes_known().swap_remove(0);
    let mut candidates = vec![first.clone()];
    // Learn the other members now, while the given node answers: it may be the one that dies.
    if let Some(members) = members(&client, &first).await {
        candidates = merge(&first, members);
    }
    let mut follower = Follower { args, last: None, printed: 0, out: std::io::stdout().lock() };
    let mut turn = 0usize;
    let mut failed_round = 0usize;
    let mut backoff = MIN_BACKOFF;
    let mut failing_since: Option<Instant> = None;
    loop {
        let url = candidates[turn % candidates.len()].clone();
        match follower.follow(&client, &url).await? {
            Stop::Done => return Ok(()),
            Stop::Lost { reason, progressed } => {
                let resume = follower.last.map_or_else(
                    || follower.args.from.map_or("the tail".to_string(), |f| format!("lsn {f}")),
                    |id| format!("after event {id}"),
                );
                eprintln!("keel changes: {url}: {reason}; resuming from {resume}");
                if progressed {
                    failing_since = None;
                    failed_round = 0;
                    backoff = MIN_BACKOFF;
                    // Refresh the members while this node may still answer.
                    if let Some(members) = members(&client, &url).await {
                        candidates = merge(&first, members);
                    }
                } else {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if let Some(limit) = follower.args.give_up_after
                        && since.elapsed() > limit
                    {
                        bail!("no node answered for {limit:?}; last error: {reason}");
                    }
                    failed_round += 1;
                }
                turn += 1;
                if failed_round >= candidates.len() {
                    failed_round = 0;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

impl Follower {
    /// Streams from one node until the connection stops; `Err` for a fatal answer.
    async fn follow(&mut self, client: &keel_api::Client, url: &str) -> anyhow::Result<Stop> {
        let lost = |reason: String| Ok(Stop::Lost { reason, progressed: false });
        let node = client.on(url)?;
        let from = if self.last.is_some() { None } else { self.args.from };
        let mut stream = match node.changes(from, self.last).await {
            Ok(stream) => stream,
            Err(keel_api::Error::Unreachable(why)) => {
                return lost(format!("cannot connect: {why}"));
            }
            Err(e) => match e.status() {
                // Retrying cannot fix a bad start, a compacted one, or missing credentials.
                Some(status @ (400 | 401 | 403 | 410)) => {
                    let message = e.answer().map_or_else(String::new, |a| a.error.clone());
                    bail!("{url} answered {}: {message}", status_text(status));
                }
                Some(status) => return lost(format!("answered {}", status_text(status))),
                None => return lost(e.to_string()),
            },
        };
        let mut progressed = false;
        loop {
            let reason = match stream.next_event(SILENCE).await {
                Ok(Some(event)) => {
                    progressed = true;
                    if let Some(stop) = self.handle(event)? {
                        return Ok(stop);
                    }
                    continue;
                }
                Ok(None) => "the server ended the stream".to_string(),
                Err(keel_api::Error::Unexpected { message, .. }) => message,
                Err(e) => e.to_string(),
            };
            return Ok(Stop::Lost { reason, progressed });
        }
    }

    /// Handles one event; `Some` stops the connection.
    fn handle(&mut self, event: Event) -> anyhow::Result<Option<Stop>> {
        if event.event == "end" {
            let data = serde_json::from_str::<ErrorAnswer>(&event.data)
                .unwrap_or_else(|_| ErrorAnswer::new(event.data.clone()));
            if data.first_lsn.is_some() {
                bail!("{}", data.error);
            }
            return Ok(Some(Stop::Lost { reason: data.error, progressed: true }));
        }
        let Some(id) = event.id.as_deref() else {
            return Ok(None); // Not an event of the change stream.
        };
        let id: EventId =
            id.parse().map_err(|e: String| anyhow::anyhow!("unexpected event id: {e}"))?;
        // A change comes after the last event; a `caught-up` may repeat its position.
        let repeat_allowed = event.event != "message";
        if let Some(last) = self.last
            && (id.order() < last.order() || (id.order() == last.order() && !repeat_allowed))
        {
            bail!("event {id} arrived after event {last}: the stream went backwards");
        }
        let until = self.args.until_lsn;
        if event.event == "message" {
            if until.is_some_and(|until| id.lsn > until) {
                return Ok(Some(Stop::Done));
            }
            writeln!(self.out, "{}", event.data)
                .and_then(|()| self.out.flush())
                .context("writing to stdout")?;
            self.printed += 1;
        }
        self.last = Some(id);
        let limit_reached = self.args.limit.is_some_and(|limit| self.printed >= limit);
        let until_reached = until.is_some_and(|until| id.seq.is_none() && id.lsn >= until);
        Ok((limit_reached || until_reached).then_some(Stop::Done))
    }
}

/// The HTTP URLs of the cluster's members, asked of `url`; `None` if it does not answer.
async fn members(client: &keel_api::Client, url: &str) -> Option<Vec<String>> {
    let nodes = client.on(url).ok()?.nodes().await.ok()?;
    Some(
        nodes
            .into_iter()
            .filter_map(|n| keel_api::base_url(&n.api_addr).ok())
            .map(|(u, _)| u)
            .collect(),
    )
}

/// A status code with its reason phrase, `410 Gone`.
fn status_text(status: u16) -> String {
    reqwest::StatusCode::from_u16(status).map_or_else(|_| status.to_string(), |s| s.to_string())
}

/// The URLs to try: the one given first, then the members.
fn merge(first: &str, members: Vec<String>) -> Vec<String> {
    let mut urls = vec![first.to_string()];
    for member in members {
        if !urls.contains(&member) {
            urls.push(member);
        }
    }
    urls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_http_writes_them() {
        assert_eq!(status_text(410), "410 Gone");
        assert_eq!(status_text(400), "400 Bad Request");
    }

    #[test]
    fn the_given_url_stays_first() {
        let urls = merge(
            "http://a:1",
            vec!["http://b:2".into(), "http://a:1".into(), "http://c:3".into()],
        );
        assert_eq!(urls, vec!["http://a:1", "http://b:2", "http://c:3"]);
    }
}
