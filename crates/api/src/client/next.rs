//! What the client does after one attempt: the decision, without sockets or clocks.
//!
//! [`after_answer`] reads an HTTP answer and [`after_failure`] a request that got none; both
//! say whether the call is over, must go to the leader's address, may be sent again (nothing
//! was written), or may be sent again only if it is safe to repeat (a read, or a write with a
//! request id, which Keel answers a second time with its first outcome).
//!
//! Keel's 503 answers say in words which kind they are (`docs/http-api.md`, "503s a write can
//! get"): `…the write may or may not have been committed…`, `forwarding to leader N failed`
//! and `reading the leader's answer failed` leave the outcome unknown; one with `"committed":
//! true` is committed and must not be retried; every other 503 wrote nothing.

use std::time::Duration;

use crate::failure::ErrorAnswer;

/// The decision after one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// The answer is final: hand it to the caller (success or error).
    Done,
    /// The leader is elsewhere (a 301/307/308): send the same request to this URL's node.
    Redirect(String),
    /// Nothing was done: send again, to the leader as found afresh, after `pause`.
    Retry {
        /// How long to wait first (the server's `Retry-After`, capped by the caller).
        pause: Option<Duration>,
    },
    /// The outcome is unknown: send again only if repeating is safe.
    RetryIfSafe {
        /// How long to wait first.
        pause: Option<Duration>,
    },
}

/// The decision after an HTTP answer with `status`, `body`, and the `Location` and
/// `Retry-After` headers.
pub(crate) fn after_answer(
    status: u16,
    body: &[u8],
    location: Option<&str>,
    retry_after: Option<Duration>,
) -> Next {
    if matches!(status, 301 | 302 | 307 | 308) {
        return match location.and_then(origin) {
            Some(base) => Next::Redirect(base),
            None => Next::Done,
        };
    }
    if status != 503 {
        return Next::Done;
    }
    let Ok(answer) = serde_json::from_slice::<ErrorAnswer>(body) else {
        // Not Keel's JSON (a proxy's page): nothing says what happened.
        return Next::RetryIfSafe { pause: retry_after };
    };
    let message = answer.error.as_str();
    if answer.is_committed() || answer.applied_index.is_some() || message.contains("is lost") {
        // Committed, or a read that waited as long as it was told to, or a queued write gone
        // with its node: repeating cannot help.
        Next::Done
    } else if message.contains("may or may not have been committed")
        || message.starts_with("forwarding to leader")
        || message.starts_with("reading the leader's answer")
    {
        Next::RetryIfSafe { pause: retry_after }
    } else {
        Next::Retry { pause: retry_after }
    }
}

/// The decision after a request that got no answer. A failed connection sent nothing; any
/// other failure (a timeout, a reset) may have come after the node received the request.
pub(crate) fn after_failure(connect: bool) -> Next {
    if connect { Next::Retry { pause: None } } else { Next::RetryIfSafe { pause: None } }
}

/// `scheme://host:port` of an absolute URL.
pub(crate) fn origin(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    parsed.host_str()?;
    Some(parsed.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Next {
        after_answer(status, body.as_bytes(), None, Some(Duration::from_secs(1)))
    }

    #[test]
    fn successes_and_client_errors_are_final() {
        assert_eq!(answer(200, r#"{"results":[]}"#), Next::Done);
        assert_eq!(answer(400, r#"{"error":"no statements"}"#), Next::Done);
        assert_eq!(answer(500, r#"{"error":"boom"}"#), Next::Done);
    }

    #[test]
    fn redirects_name_the_leader() {
        let next = after_answer(301, b"", Some("http://127.0.0.1:4001/db/execute?redirect"), None);
        assert_eq!(next, Next::Redirect("http://127.0.0.1:4001".into()));
        assert_eq!(after_answer(301, b"", None, None), Next::Done);
    }

    #[test]
    fn unavailable_answers_by_what_they_say() {
        let pause = Some(Duration::from_secs(1));
        for nothing_written in [
            "leader not found",
            "leadership changed; nothing was written, retry",
            "no leader is reachable (leader not contactable: last heard from node 1 2.100s ago); the request was not forwarded and not applied (nothing was written): retry later",
            "no quorum: the leader cannot reach a majority",
            "the node is handling as many requests as it allows (--max-concurrent-requests)",
        ] {
            let body = format!(r#"{{"error":"{nothing_written}"}}"#);
            assert_eq!(answer(503, &body), Next::Retry { pause }, "{nothing_written}");
        }
        for unknown in [
            "timed out; the write may or may not have been committed: retry with the same request_id to be safe",
            "forwarding to leader 1 failed: connection reset",
            "reading the leader's answer failed: eof",
        ] {
            let body = format!(r#"{{"error":"{unknown}"}}"#);
            assert_eq!(answer(503, &body), Next::RetryIfSafe { pause }, "{unknown}");
        }
        let committed = r#"{"committed":true,"error":"the write is committed at lsn 7 but…","lsn":7,"unconfirmed":[3]}"#;
        assert_eq!(answer(503, committed), Next::Done);
        let min_lsn = r#"{"applied_index":13,"error":"min_lsn 500 not reached within 1.000s"}"#;
        assert_eq!(answer(503, min_lsn), Next::Done);
        assert_eq!(answer(503, "<html>"), Next::RetryIfSafe { pause });
    }

    #[test]
    fn failures_without_an_answer() {
        assert_eq!(after_failure(true), Next::Retry { pause: None });
        assert_eq!(after_failure(false), Next::RetryIfSafe { pause: None });
    }
}
