//! Workloads: what the clients do, and how each answer is classified.
//!
//! - **register**: per-key reads (`level=linearizable`), writes (upserts) and compare-and-set
//!   (`UPDATE … WHERE v = ?`, swapped iff one row changed). Keys rotate so each key's
//!   history stays small enough to check.
//! - **set**: inserts of unique values; a few reads of the whole set, some from learners at
//!   `level=none` (their staleness is reported). After healing, every acknowledged insert must
//!   be in the final read.
//! - **bank**: transfers between accounts, two updates in one transaction; reads of every
//!   balance from any node, at `linearizable` or `none`. The total must never change.
//! - **append**: transactions of list appends and reads (`/db/request?transaction`), checked
//!   for dependency cycles in the manner of Elle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_api::blocking::Client;
use keel_api::{Level, Statement};
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use super::history::{Outcome, Ranges};

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Linearizable compare-and-set registers.
    Register,
    /// Inserts that must all survive.
    Set,
    /// Transfers that keep the total.
    Bank,
    /// List-append transactions.
    Append,
}

impl Workload {
    /// Every workload.
    pub const ALL: [Workload; 4] =
        [Workload::Register, Workload::Set, Workload::Bank, Workload::Append];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Set => "set",
            Workload::Bank => "bank",
            Workload::Append => "append",
        }
    }

    /// The schema (and initial rows) created before the clients start.
    pub fn setup(self) -> Value {
        match self {
            Workload::Register => json!(["CREATE TABLE reg (k INTEGER PRIMARY KEY, v INTEGER)"]),
            Workload::Set => json!(["CREATE TABLE sets (v INTEGER PRIMARY KEY)"]),
            Workload::Bank => {
                let mut statements =
                    vec![json!("CREATE TABLE bank (id INTEGER PRIMARY KEY, b INTEGER NOT NULL)")];
                for id in 0..BANK_ACCOUNTS {
                    statements.push(json!([
                        "INSERT INTO bank(id, b) VALUES(?, ?)",
                        id,
                        BANK_INITIAL
                    ]));
                }
                Value::Array(statements)
            }
            Workload::Append => {
                json!(["CREATE TABLE lists (k INTEGER PRIMARY KEY, v TEXT NOT NULL)"])
            }
        }
    }

    /// The query that reads the whole final state, for the convergence check.
    pub fn dump_query(self) -> &'static str {
        match self {
            Workload::Register => "SELECT k, v FROM reg ORDER BY k",
            Workload::Set => "SELECT v FROM sets ORDER BY v",
            Workload::Bank => "SELECT id, b FROM bank ORDER BY id",
            Workload::Append => "SELECT k, v FROM lists ORDER BY k",
        }
    }
}

/// Bank accounts.
pub const BANK_ACCOUNTS: i64 = 5;
/// Each account's opening balance.
pub const BANK_INITIAL: i64 = 100;
/// Register keys in use at once.
const REGISTER_KEYS: u64 = 4;
/// Operations on each register key before it is retired.
const REGISTER_OPS_PER_KEY: u64 = 150;
/// List keys in use at once.
const APPEND_KEYS: u64 = 6;
/// Transactions on each window of list keys before it moves on.
const APPEND_TXNS_PER_WINDOW: u64 = 400;

/// Counters shared by every client of a run, to make values unique and rotate keys.
#[derive(Debug, Default)]
pub struct Shared {
    ops: AtomicU64,
    values: AtomicU64,
}

/// One operation to run: what it is, and the HTTP request that does it.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The operation's name in the history.
    pub f: &'static str,
    /// Its input, for the history and the checkers.
    pub value: Value,
    /// How to send it.
    pub request: Request,
    /// Whether it writes (an unclear answer is then `info`; for a read it is `fail`).
    pub writes: bool,
    /// Send it to a learner if there is one (a `level=none` replica read).
    pub learner: bool,
}

/// An HTTP request to a node.
#[derive(Debug, Clone)]
pub enum Request {
    /// `POST /db/execute?<params>` with a JSON body.
    Execute { params: &'static str, body: Value },
    /// `POST /db/request?<params>` with a JSON body.
    Mixed { params: &'static str, body: Value },
    /// `POST /db/query?<params>` with a JSON body.
    Query { params: &'static str, body: Value },
}

/// Makes the next operation of a client.
pub fn generate(workload: Workload, rng: &mut StdRng, shared: &Shared) -> Invocation {
    let n = shared.ops.fetch_add(1, Ordering::Relaxed);
    match workload {
        Workload::Register => {
            let key = (n / (REGISTER_KEYS * REGISTER_OPS_PER_KEY)) * REGISTER_KEYS
                + rng.gen_range(0..REGISTER_KEYS);
            match rng.gen_range(0..4) {
                0 | 1 => Invocation {
                    f: "read",
                    value: json!({ "key": key }),
                    request: Request::Query {
                        params: "level=linearizable",
                        body: json!([["SELECT v FROM reg WHERE k = ?", key]]),
                    },
                    writes: false,
                    learner: false,
                },
                2 => {
                    let v = rng.gen_range(0..5);
                    Invocation {
                        f: "write",
                        value: json!({ "key": key, "value": v }),
                        request: Request::Execute {
                            params: "",
                            body: json!([[
                                "INSERT INTO reg(k, v) VALUES(?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                                key,
                                v
                            ]]),
                        },
                        writes: true,
                        learner: false,
                    }
                }
                _ => {
                    let (from, to) = (rng.gen_range(0..5), rng.gen_range(0..5));
                    Invocation {
                        f: "cas",
                        value: json!({ "key": key, "from": from, "to": to }),
                        request: Request::Execute {
                            params: "",
                            body: json!([[
                                "UPDATE reg SET v = ? WHERE k = ? AND v = ?",
                                to,
                                key,
                                from
                            ]]),
                        },
                        writes: true,
                        learner: false,
                    }
                }
            }
        }
        Workload::Set => {
            if rng.gen_range(0..40) == 0 {
                let learner = rng.gen_bool(0.5);
                Invocation {
                    f: "read-all",
                    value: json!({ "learner": learner }),
                    request: Request::Query {
                        params: if learner { "level=none" } else { "level=linearizable" },
                        body: json!(["SELECT v FROM sets ORDER BY v"]),
                    },
                    writes: false,
                    learner,
                }
            } else {
                let v = shared.values.fetch_add(1, Ordering::Relaxed);
                Invocation {
                    f: "add",
                    value: json!(v),
                    request: Request::Execute {
                        params: "",
                        body: json!([["INSERT INTO sets(v) VALUES(?)", v]]),
                    },
                    writes: true,
                    learner: false,
                }
            }
        }
        Workload::Bank => {
            if rng.gen_bool(0.5) {
                let (params, learner) = match rng.gen_range(0..3) {
                    0 => ("level=linearizable", false),
                    1 => ("level=none", false),
                    _ => ("level=none", true),
                };
                Invocation {
                    f: "read",
                    value: json!({ "level": params }),
                    request: Request::Query {
                        params,
                        body: json!(["SELECT id, b FROM bank ORDER BY id"]),
                    },
                    writes: false,
                    learner,
                }
            } else {
                let from = rng.gen_range(0..BANK_ACCOUNTS);
                let to = (from + rng.gen_range(1..BANK_ACCOUNTS)) % BANK_ACCOUNTS;
                let amount = rng.gen_range(1..=5);
                Invocation {
                    f: "transfer",
                    value: json!({ "from": from, "to": to, "amount": amount }),
                    request: Request::Execute {
                        params: "transaction",
                        body: json!([
                            ["UPDATE bank SET b = b - ? WHERE id = ?", amount, from],
                            ["UPDATE bank SET b = b + ? WHERE id = ?", amount, to]
                        ]),
                    },
                    writes: true,
                    learner: false,
                }
            }
        }
        Workload::Append => {
            let base = (n / APPEND_TXNS_PER_WINDOW) * (APPEND_KEYS / 2);
            let count = rng.gen_range(1..=4);
            let mut mops = Vec::new();
            let mut statements = Vec::new();
            let mut writes = false;
            for _ in 0..count {
                let key = base + rng.gen_range(0..APPEND_KEYS);
                if rng.gen_bool(0.5) {
                    let v = shared.values.fetch_add(1, Ordering::Relaxed);
                    mops.push(json!(["append", key, v]));
                    statements.push(json!([
                        "INSERT INTO lists(k, v) VALUES(?, ?) ON CONFLICT(k) DO UPDATE SET v = v || ',' || excluded.v",
                        key,
                        v.to_string()
                    ]));
                    writes = true;
                } else {
                    mops.push(json!(["r", key, null]));
                    statements.push(json!(["SELECT v FROM lists WHERE k = ?", key]));
                }
            }
            Invocation {
                f: "txn",
                value: Value::Array(mops),
                request: Request::Mixed {
                    params: "transaction&level=linearizable",
                    body: Value::Array(statements),
                },
                writes,
                learner: false,
            }
        }
    }
}

/// What came back for an operation.
#[derive(Debug)]
pub struct Completion {
    /// How it ended.
    pub outcome: Outcome,
    /// The result (workload-specific) when ok: see [`perform`].
    pub result: Value,
    /// The values of a whole-set read (`read-all`), compactly.
    pub values: Option<Ranges>,
    /// The error otherwise.
    pub error: Option<String>,
}

/// How long one operation may take before its outcome counts as unknown.
pub const TIMEOUT: Duration = Duration::from_secs(6);

/// Sends `inv` to the node `client` is pinned to (see [`super::cluster::pinned`]) and
/// classifies the answer. `served_by`: the Raft address of that node, when the answer must
/// come from it (a learner's read of its own copy); an answer from another node is then a
/// failure.
///
/// Nothing sent (the connection failed) and answers that say nothing was written are
/// failures; a write whose answer did not come, or says it may have been committed, is
/// `info` (a read is simply failed). A refused read or write and a statement's error are
/// failures; the rest is `ok`, with the answer's results and lsn as the result.
///
/// A history holds every result to the end of the run, so it keeps only what the checkers
/// need: the rows (`values`) and `rows_affected` of each statement, and the lsn; the rows of
/// a `read-all` become [`Completion::values`].
pub fn perform(client: &Client, inv: &Invocation, served_by: Option<&str>) -> Completion {
    let (params, body) = match &inv.request {
        Request::Execute { params, body } => (*params, body),
        Request::Mixed { params, body } => (*params, body),
        Request::Query { params, body } => (*params, body),
    };
    let unclear = if inv.writes { Outcome::Info } else { Outcome::Fail };
    let failed = |outcome, error: String| Completion {
        outcome,
        result: Value::Null,
        values: None,
        error: Some(error),
    };
    let statements: Vec<Statement> = match serde_json::from_value(body.clone()) {
        Ok(statements) => statements,
        Err(e) => return failed(Outcome::Fail, format!("not statements: {e}")),
    };
    let api = client.inner();
    let mut call = match &inv.request {
        Request::Execute { .. } => api.write(statements),
        Request::Mixed { .. } => api.unified(statements),
        Request::Query { .. } => api.read(statements),
    };
    for param in params.split('&').filter(|p| !p.is_empty()) {
        call = match param.split_once('=') {
            Some(("level", level)) => match level.parse::<Level>() {
                Ok(level) => call.level(level),
                Err(_) => call.raw_param("level", Some(level)),
            },
            Some((name, value)) => call.raw_param(name, Some(value)),
            None => call.raw_param(param, None),
        };
    }
    let answer = match client.send(call) {
        Ok(answer) => answer,
        // Refused or unreachable: nothing was sent. (A read that was sent and not answered
        // ends here too, and is a failure either way.)
        Err(keel_api::Error::Unreachable(e)) => return failed(Outcome::Fail, e),
        Err(keel_api::Error::Refused { status, answer }) => {
            let error = format!("HTTP {status}: {}", answer.error);
            // Answers that say nothing was written are definite failures; 4xx are refusals.
            let definite = (400..500).contains(&status) || says_nothing_written(&error);
            return failed(if definite { Outcome::Fail } else { unclear }, error);
        }
        Err(keel_api::Error::OutcomeUnknown(e)) => {
            let outcome = if says_nothing_written(&e) { Outcome::Fail } else { unclear };
            return failed(outcome, e);
        }
        Err(e) => return failed(unclear, e.to_string()),
    };
    if let Some((_, error)) = answer.first_error() {
        // A stale read, or a statement failed: the request (one statement, or a transaction)
        // was rolled back.
        return failed(Outcome::Fail, error.to_string());
    }
    if let Some(want) = served_by
        && answer.served_by.as_deref().is_some_and(|by| by != want)
    {
        // Only reads ask for this: nothing was written either way.
        return failed(
            Outcome::Fail,
            format!(
                "served by {}, not by the node asked ({want})",
                answer.served_by.as_deref().unwrap_or_default()
            ),
        );
    }
    if inv.f == "read-all" {
        let rows = answer.results.into_iter().next().and_then(|r| r.values).unwrap_or_default();
        let (values, others) = set_values(&rows);
        let mut result = json!({ "lsn": answer.lsn });
        if others > 0 {
            result["not_integers"] = json!(others);
        }
        return Completion { outcome: Outcome::Ok, result, values: Some(values), error: None };
    }
    let results: Vec<Value> = answer
        .results
        .into_iter()
        .map(|r| {
            let mut kept = serde_json::Map::new();
            if let Some(values) = r.values {
                kept.insert("values".into(), json!(values));
            }
            if let Some(n) = r.rows_affected {
                kept.insert("rows_affected".into(), json!(n));
            }
            Value::Object(kept)
        })
        .collect();
    Completion {
        outcome: Outcome::Ok,
        result: json!({ "results": results, "lsn": answer.lsn }),
        values: None,
        error: None,
    }
}

/// The set a whole-set read returned (the first column of each row), and how many rows held
/// something else than a non-negative integer (the set workload inserts nothing else).
pub fn set_values(rows: &[Vec<Value>]) -> (Ranges, u64) {
    let mut others = 0;
    let values = Ranges::new(rows.iter().filter_map(|r| {
        let v = r.first().and_then(Value::as_u64);
        if v.is_none() {
            others += 1;
        }
        v
    }));
    (values, others)
}

/// Whether an error says the request wrote nothing.
fn says_nothing_written(error: &str) -> bool {
    error.contains("nothing was written") || error.contains("leader not found")
}

/// Rows of result `i` of an ok completion's results.
pub fn rows(result: &Value, i: usize) -> Vec<Vec<Value>> {
    result["results"][i]["values"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r.as_array().cloned()).collect())
        .unwrap_or_default()
}

/// `rows_affected` of result `i`.
pub fn rows_affected(result: &Value, i: usize) -> i64 {
    result["results"][i]["rows_affected"].as_i64().unwrap_or(0)
}

/// Parses a stored list (`"1,2,3"`) into its elements.
pub fn parse_list(text: Option<&str>) -> Vec<u64> {
    match text {
        None | Some("") => Vec::new(),
        Some(t) => t.split(',').filter_map(|x| x.parse().ok()).collect(),
    }
}
