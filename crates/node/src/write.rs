//! A write through the writer ([`leader::Leader`]), on the leader.
//!
//! The caller has already routed the request here ([`Node::route`] said [`crate::Route::Here`]).
//! If leadership is lost before the write is appended, the answer is
//! `Error::Leader(leader::Error::NotLeader)`: nothing was written, and the caller routes it
//! again. Counters and the commit-time histogram are updated here.

use std::time::Instant;

use crate::{Error, Node};

/// One write request.
#[derive(Debug)]
pub struct WriteCall {
    /// The statements, their options and the idempotency key.
    pub request: sql::WriteRequest,
    /// How durable it must be before it is acknowledged.
    pub durability: leader::Durability,
    /// rqlite's `qualify_columns`: name rows columns `table.column`.
    pub qualify_columns: bool,
    /// When the request arrived, for the commit-time histogram.
    pub received: Instant,
}

impl Node {
    /// Runs a write on this node, which must lead (see the module docs).
    pub async fn write(&self, call: WriteCall) -> Result<leader::Outcome, Error> {
        let WriteCall { request, durability, qualify_columns, received } = call;
        let qualify =
            (request.rows && qualify_columns).then(|| crate::read::sql_texts(&request.statements));
        match self.leader.write(request, durability).await {
            Ok(mut outcome) => {
                self.metrics.writes.inc();
                if let Some(texts) = qualify {
                    outcome.results = self.qualify_columns(texts, outcome.results).await?;
                }
                let label = durability.to_string();
                self.metrics
                    .commit_seconds
                    .with_label_values(&[label.as_str()])
                    .observe(received.elapsed().as_secs_f64());
                Ok(outcome)
            }
            Err(e) => {
                // Leadership lost before the append: the caller routes the write again, and
                // counts it only if it gives up.
                if !matches!(e, leader::Error::NotLeader { .. }) {
                    self.count_error(&e);
                }
                Err(Error::Leader(e))
            }
        }
    }

    /// Counts a write that failed with `e` in `keel_errors_total{kind}`.
    pub fn count_error(&self, e: &leader::Error) {
        self.metrics.errors.with_label_values(&[crate::error::kind(e)]).inc();
    }
}
