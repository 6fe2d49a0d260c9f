//! The flusher: one task per node ([`run`]) that takes the queue in batches and runs each
//! through the write path until every request in it has a final outcome. rqlite:
//! `queue/queue.go` (batching) and `http/service.go`, `runQueue` (flushing and retrying).
//!
//! - [`next_batch`]: the first waiting request, plus whatever arrives until the batch holds
//!   `--write-queue-batch-size` requests or `--write-queue-timeout` has passed since the first
//!   one arrived (at once when the node is stopping).
//! - [`flush`]: one [`attempt`] after another, retrying only the requests whose verdict was
//!   transient, with backoff ([`RETRY_MIN`] doubling to [`RETRY_MAX`]; rqlite waits 1 s
//!   each time). Batches are flushed one at a time, in order, so a queued write never
//!   overtakes one queued before it.
//! - [`attempt`]: on the leader [`execute`]; elsewhere the batch goes to the leader's
//!   `/keel/queue` (Raft port), which runs [`execute`] there.

use std::sync::Arc;
use std::time::Duration;

use super::verdict::{self, Verdict};
use super::{Batch, Item, Outcome, Queue, Receiver};
use crate::Node;

/// First pause after a transient failure.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest pause between attempts.
const RETRY_MAX: Duration = Duration::from_secs(1);
/// How long a batch forwarded to the leader may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// Flushes `node`'s queue until the node stops.
pub async fn run(node: Arc<Node>, mut receiver: Receiver) {
    let queue = node.queue.clone();
    // The latest lsn a queued write of this node committed at (for checkpoints).
    let mut last_lsn: wal::Lsn = 0;
    loop {
        let items = next_batch(&queue, &mut receiver).await;
        if items.is_empty() {
            return;
        }
        let Some(outcomes) = flush(&node, &items, &mut last_lsn).await else {
            // The node is stopping and ran out of time; `Queue::drain` reports the loss.
            return;
        };
        for (item, outcome) in items.iter().zip(&outcomes) {
            match outcome {
                Outcome::Committed { .. } => node.metrics.queue_committed.inc(),
                Outcome::Failed { error, statement, lsn } => {
                    node.metrics.queue_failed.inc();
                    tracing::warn!(
                        sequence_number = item.request.seq,
                        statement,
                        lsn,
                        %error,
                        "queued write failed"
                    );
                }
            }
        }
        node.metrics.queue_depth.sub(i64::try_from(items.len()).unwrap_or(i64::MAX));
        queue.finish(items, outcomes);
    }
}

/// The next batch, in queue order; empty only if the queue is gone.
async fn next_batch(queue: &Queue, receiver: &mut Receiver) -> Vec<Item> {
    let rx = &mut receiver.rx;
    let Some(first) = rx.recv().await else { return Vec::new() };
    let options = queue.options();
    let deadline = tokio::time::Instant::from_std(first.arrived + options.timeout);
    let mut closing = queue.closing();
    let mut items = vec![first];
    while items.len() < options.batch_size {
        if let Ok(item) = rx.try_recv() {
            items.push(item);
            continue;
        }
        if *closing.borrow_and_update() {
            break;
        }
        tokio::select! {
            item = rx.recv() => match item {
                Some(item) => items.push(item),
                None => break,
            },
            () = tokio::time::sleep_until(deadline), if !options.timeout.is_zero() => break,
            changed = closing.changed() => if changed.is_err() { break },
        }
    }
    items
}

/// Flushes one batch: one outcome per item, in order; `None` if the node is stopping and gave
/// up before every request had a final outcome.
async fn flush(node: &Node, items: &[Item], last_lsn: &mut wal::Lsn) -> Option<Vec<Outcome>> {
    let queue = &node.queue;
    let (first, last) = (items[0].request.seq, items[items.len() - 1].request.seq);
    let mut outcomes: Vec<Option<Outcome>> = vec![None; items.len()];
    // Requests without statements (checkpoints) have nothing to write.
    let mut todo: Vec<usize> =
        (0..items.len()).filter(|&i| super::statement_count(&items[i].request) > 0).collect();
    let mut delay = RETRY_MIN;
    while !todo.is_empty() {
        let batch = Batch {
            requests: todo.iter().map(|&i| items[i].request.clone()).collect(),
            transaction: queue.options().transaction,
            id: format!("keel-queue:{}:{first}-{last}", node.id),
        };
        let verdicts = attempt(node, &batch).await;
        let mut retry = Vec::new();
        let mut reason = String::new();
        for (&i, v) in todo.iter().zip(verdicts) {
            match v {
                Verdict::Done(outcome) => outcomes[i] = Some(outcome),
                Verdict::Retry(why) => {
                    retry.push(i);
                    reason = why;
                }
            }
        }
        todo = retry;
        if todo.is_empty() {
            break;
        }
        node.metrics.queue_retries.inc();
        if queue.gave_up() {
            return None;
        }
        tracing::warn!(
            first = items[todo[0]].request.seq,
            last = items[todo[todo.len() - 1]].request.seq,
            requests = todo.len(),
            error = %reason,
            retry_in_ms = delay.as_millis(),
            "queued writes not flushed yet; retrying"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
    let batch_lsn = outcomes.iter().flatten().filter_map(lsn_of).max().unwrap_or(0);
    *last_lsn = (*last_lsn).max(batch_lsn);
    let lsn = *last_lsn;
    Some(outcomes.into_iter().map(|o| o.unwrap_or(Outcome::Committed { lsn })).collect())
}

/// The lsn an outcome carries, if any.
fn lsn_of(outcome: &Outcome) -> Option<wal::Lsn> {
    match outcome {
        Outcome::Committed { lsn } => Some(*lsn),
        Outcome::Failed { lsn, .. } => *lsn,
    }
}

/// One try at a batch: here if this node leads, else at the leader; every request gets a
/// transient verdict when there is no leader or it cannot be reached.
async fn attempt(node: &Node, batch: &Batch) -> Vec<Verdict> {
    let retry_all = |why: String| vec![Verdict::Retry(why); batch.requests.len()];
    if raft::client::leader_term(&node.raft).is_ok() {
        return execute(node, batch).await;
    }
    let Some(leader) = raft::cluster::leader(&node.raft).filter(|l| l.id != node.id) else {
        return retry_all("leader not found".to_string());
    };
    forward(node, &leader, batch).await.unwrap_or_else(retry_all)
}

/// Sends a batch to the leader's `/keel/queue`.
async fn forward(
    node: &Node,
    leader: &raft::cluster::Member,
    batch: &Batch,
) -> Result<Vec<Verdict>, String> {
    let url = format!("{}://{}/keel/queue", node.peers.node_scheme, leader.node.raft_addr);
    let sent = node.peers.node.post(&url).json(batch).timeout(FORWARD_TIMEOUT).send().await;
    let resp = sent.map_err(|e| format!("forwarding to leader {} failed: {e}", leader.id))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(format!("leader {} answered {status}: {text}", leader.id));
    }
    let verdicts: Vec<Verdict> =
        resp.json().await.map_err(|e| format!("bad answer from leader {}: {e}", leader.id))?;
    if verdicts.len() != batch.requests.len() {
        return Err(format!(
            "leader {} answered {} verdicts for {} requests",
            leader.id,
            verdicts.len(),
            batch.requests.len()
        ));
    }
    Ok(verdicts)
}

/// Runs a batch through this node's write path (this node should lead; if it does not, the
/// verdicts say retry). One verdict per request, in order.
pub async fn execute(node: &Node, batch: &Batch) -> Vec<Verdict> {
    let mut verdicts: Vec<Option<Verdict>> = vec![None; batch.requests.len()];
    let mut writes = Vec::new();
    let mut index = Vec::new();
    for (i, request) in batch.requests.iter().enumerate() {
        match sql::parse_statements(&request.statements) {
            Ok(statements) => {
                writes.push(sql::WriteRequest {
                    statements,
                    transaction: request.transaction,
                    timeout: request.db_timeout_ms.map(Duration::from_millis),
                    rows: false,
                    request_id: Some(request.request_id.clone()),
                });
                index.push(i);
            }
            // Validated when queued; only a damaged batch gets here.
            Err(e) => {
                verdicts[i] =
                    Some(Verdict::Done(crate::queue::ledger::failed(&e.to_string(), None, None)))
            }
        }
    }
    if writes.is_empty() {
        // Nothing valid to write.
    } else if batch.transaction {
        let counts: Vec<usize> = writes.iter().map(|w| w.statements.len()).collect();
        let seqs: Vec<_> = index.iter().map(|&i| batch.requests[i].seq).collect();
        let merged = sql::WriteRequest {
            statements: writes.into_iter().flat_map(|w| w.statements).collect(),
            transaction: true,
            timeout: batch
                .requests
                .iter()
                .filter_map(|r| r.db_timeout_ms)
                .min()
                .map(Duration::from_millis),
            rows: false,
            request_id: Some(batch.id.clone()),
        };
        let answer = node.leader.write_all(vec![merged]).await.pop().unwrap_or_else(|| {
            Err(leader::Error::Internal("the write path gave no answer".to_string()))
        });
        let split = verdict::split_transaction(answer, &counts, &seqs);
        for (i, v) in index.into_iter().zip(split) {
            verdicts[i] = Some(v);
        }
    } else {
        let transactions: Vec<bool> = writes.iter().map(|w| w.transaction).collect();
        let answers = node.leader.write_all(writes).await;
        for ((i, answer), transaction) in index.into_iter().zip(answers).zip(transactions) {
            verdicts[i] = Some(verdict::of_write(answer, transaction));
        }
    }
    verdicts
        .into_iter()
        .map(|v| v.unwrap_or_else(|| Verdict::Retry("no answer".to_string())))
        .collect()
}
