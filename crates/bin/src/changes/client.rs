//! `keel changes`: follows `GET /db/changes` and prints each change as one JSON line.
//!
//! The command keeps the id of the last event it received (see the event ids in the parent
//! module) and, when the connection drops (the node died, the network failed, the stream went
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

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::sse::{Parser, SseEvent};
use super::{ChangesArgs, EventId, KEEP_ALIVE};

/// How long a connection attempt may take.
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
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;
    let (first, credentials) = split_credentials(&args.url)?;
    let http = Http { client: http, credentials };
    let mut candidates = vec![first.clone()];
    // Learn the other members now, while the given node answers: it may be the one that dies.
    if let Some(members) = members(&http, &first).await {
        candidates = merge(&first, members);
    }
    let mut follower = Follower { args, last: None, printed: 0, out: std::io::stdout().lock() };
    let mut turn = 0usize;
    let mut failed_round = 0usize;
    let mut backoff = MIN_BACKOFF;
    let mut failing_since: Option<Instant> = None;
    loop {
        let url = candidates[turn % candidates.len()].clone();
        match follower.follow(&http, &url).await? {
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
                    if let Some(members) = members(&http, &url).await {
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
    async fn follow(&mut self, http: &Http, url: &str) -> anyhow::Result<Stop> {
        let request = match (self.last, self.args.from) {
            (Some(id), _) => {
                http.get(format!("{url}/db/changes")).header("Last-Event-ID", id.to_string())
            }
            (None, Some(from)) => http.get(format!("{url}/db/changes?from={from}")),
            (None, None) => http.get(format!("{url}/db/changes")),
        };
        let lost = |reason: String| Ok(Stop::Lost { reason, progressed: false });
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => return lost(format!("cannot connect: {e}")),
        };
        let status = response.status();
        // Retrying cannot fix a bad start, a compacted one, or missing credentials.
        let fatal = [
            reqwest::StatusCode::BAD_REQUEST,
            reqwest::StatusCode::UNAUTHORIZED,
            reqwest::StatusCode::FORBIDDEN,
            reqwest::StatusCode::GONE,
        ];
        if fatal.contains(&status) {
            let body = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(body);
            bail!("{url} answered {status}: {message}");
        }
        if !status.is_success() {
            return lost(format!("answered {status}"));
        }
        let mut parser = Parser::default();
        let mut progressed = false;
        loop {
            let chunk = match tokio::time::timeout(SILENCE, response.chunk()).await {
                Err(_) => format!("no data or keep-alive for {SILENCE:?}"),
                Ok(Err(e)) => format!("connection lost: {e}"),
                Ok(Ok(None)) => "the server ended the stream".to_string(),
                Ok(Ok(Some(bytes))) => {
                    progressed = true;
                    for event in parser.feed(&bytes) {
                        if let Some(stop) = self.handle(event)? {
                            return Ok(stop);
                        }
                    }
                    continue;
                }
            };
            return Ok(Stop::Lost { reason: chunk, progressed });
        }
    }

    /// Handles one event; `Some` stops the connection.
    fn handle(&mut self, event: SseEvent) -> anyhow::Result<Option<Stop>> {
        if event.event == "end" {
            let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            let message = data["error"].as_str().unwrap_or(&event.data).to_string();
            if data.get("first_lsn").is_some() {
                bail!("{message}");
            }
            return Ok(Some(Stop::Lost { reason: message, progressed: true }));
        }
        let Some(id) = event.id.as_deref() else {
            return Ok(None); // Not an event of the change stream.
        };
        let id: EventId =
            id.parse().map_err(|e: String| anyhow::anyhow!("unexpected event id: {e}"))?;
        // A change comes after the last event; a `caught-up` may repeat its position.
        let repeat_allowed = event.event != "message";
        if let Some(last) = self.last
            && (order(id) < order(last) || (order(id) == order(last) && !repeat_allowed))
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

/// Orders event ids as the stream sends them: by LSN, then by position in the record, the
/// record's last event (no `seq`) after the others.
fn order(id: EventId) -> (u64, u64) {
    (id.lsn, id.seq.unwrap_or(u64::MAX))
}

/// The HTTP URLs of the cluster's members, asked of `url`; `None` if it does not answer.
async fn members(http: &Http, url: &str) -> Option<Vec<String>> {
    let answer = http
        .get(format!("{url}/nodes?nonvoters&ver=2"))
        .timeout(CONNECT_TIMEOUT)
        .send()
        .await
        .ok()?
        .json::<Value>()
        .await
        .ok()?;
    let nodes = answer["nodes"].as_array()?;
    Some(
        nodes
            .iter()
            .filter_map(|n| n["api_addr"].as_str())
            .map(|a| a.trim_end_matches('/').to_string())
            .collect(),
    )
}

/// A user name and its password, if any.
type Credentials = (String, Option<String>);

/// The HTTP client, with the credentials of the URL given on the command line (if any) for
/// every node: the members' URLs from `/nodes` carry none.
struct Http {
    /// The client.
    client: reqwest::Client,
    /// User name and password, sent with HTTP basic authentication.
    credentials: Option<Credentials>,
}

impl Http {
    /// A GET request to `url`, with the credentials.
    fn get(&self, url: String) -> reqwest::RequestBuilder {
        let request = self.client.get(url);
        match &self.credentials {
            Some((user, password)) => request.basic_auth(user, password.as_deref()),
            None => request,
        }
    }
}

/// Splits `http://user:password@host:port/` into the URL without credentials (and without a
/// trailing slash) and the credentials.
fn split_credentials(url: &str) -> anyhow::Result<(String, Option<Credentials>)> {
    let mut parsed =
        reqwest::Url::parse(url).with_context(|| format!("{url:?} is not a node's URL"))?;
    let user = parsed.username().to_string();
    let credentials = (!user.is_empty()).then(|| (user, parsed.password().map(str::to_string)));
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    Ok((parsed.as_str().trim_end_matches('/').to_string(), credentials))
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
    fn ids_order_within_and_across_records() {
        let id = |s: &str| s.parse::<EventId>().unwrap();
        let sent = ["3:0", "3:1", "3", "4", "7:0", "7"];
        for pair in sent.windows(2) {
            assert!(order(id(pair[0])) < order(id(pair[1])), "{pair:?}");
        }
    }

    #[test]
    fn credentials_come_off_the_url() {
        assert_eq!(
            split_credentials("http://ann:s3cret@127.0.0.1:4001/").unwrap(),
            (
                "http://127.0.0.1:4001".to_string(),
                Some(("ann".to_string(), Some("s3cret".to_string())))
            )
        );
        assert_eq!(
            split_credentials("http://127.0.0.1:4001").unwrap(),
            ("http://127.0.0.1:4001".to_string(), None)
        );
        assert!(split_credentials("127.0.0.1 4001").is_err());
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
