//! `keel bench failover`: kill -9 the leader of a 3-node cluster under write load, again and
//! again, and measure how long writes stop; then hand leadership over gracefully and measure
//! the longest pause between acknowledged writes. Finally every acknowledged write must be on
//! every node.
//!
//! Everything but the writer goes through [`keel_api::Client`]: creating the table, finding the
//! leader to kill, the promotions, the readiness of a restarted node and the final reads. The
//! writer keeps its own loop (a 2 s timeout, the next node after a failure, a 2 ms pause): the
//! gap it measures is the cluster's failover, and the client's growing pauses between retries
//! (from 50 ms) would be added to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use keel_api::{Level, Statement};
use serde_json::json;

use super::BenchArgs;
use crate::local::LocalNode;

/// One acknowledged write of the failover writer.
struct Acked {
    /// The value it inserted.
    value: i64,
    /// When its request was sent (its last attempt).
    sent: Instant,
    /// When its acknowledgement arrived.
    at: Instant,
}

/// From `killed_at` to the first acknowledgement of a write sent after it, and to the first
/// acknowledgement after it of any write; `None` until a write sent after it is acknowledged.
fn first_acks(acked: &[Acked], killed_at: Instant) -> Option<(Duration, Duration)> {
    let after: Vec<&Acked> = acked.iter().rev().take_while(|a| a.at > killed_at).collect();
    let sent_after = after.iter().rev().find(|a| a.sent > killed_at)?;
    let any = after.last()?;
    Some((sent_after.at.duration_since(killed_at), any.at.duration_since(killed_at)))
}

/// Percentile `q` (0..=1) of sorted durations, in milliseconds.
fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

/// The leader's id as the first live node that knows one sees it.
async fn find_leader(probe: &keel_api::Client) -> Option<u64> {
    let leader = probe.find_leader().await.ok()?;
    probe.on(&leader).ok()?.status().await.ok().map(|s| s.node.id)
}

/// Runs the benchmark on a cluster of its own (see the module docs).
pub(super) async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("keel-bench-failover-{}", std::process::id()));
    let mut nodes =
        crate::local::start_cluster(&dir, 3, 0, args.base_port, None, &args.serve_flag, true)
            .await?;
    let result = failover_trials(args, &mut nodes).await;
    crate::local::stop_all(&mut nodes).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn failover_trials(args: &BenchArgs, nodes: &mut [LocalNode]) -> anyhow::Result<()> {
    let flags = &args.serve_flag;
    let cluster = crate::local::client_builder(nodes, flags)?.build()?;
    let probe = crate::local::client_builder(nodes, flags)?
        .timeout(Duration::from_millis(500))
        .retry_for(Duration::ZERO)
        .build()?;
    let url = |n: &LocalNode| format!("{}://{}", crate::local::scheme(flags), n.http);
    let create = ["CREATE TABLE IF NOT EXISTS failover (v INTEGER PRIMARY KEY)"];
    cluster.execute(create).await.context("creating the table failed")?;
    // The writer's own HTTP client: see the module docs.
    let client = reqwest::Client::builder().no_proxy().build()?;
    let addrs: Vec<String> = nodes.iter().map(|n| n.http.clone()).collect();

    // One writer: inserts 1, 2, 3, … through whichever node answers, recording every
    // acknowledged value, when its request was sent and when it was acknowledged.
    let acked: Arc<std::sync::Mutex<Vec<Acked>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, acked, stop, addrs) =
            (client.clone(), acked.clone(), stop.clone(), addrs.clone());
        tokio::spawn(async move {
            let (mut next, mut node) = (1i64, 0usize);
            while !stop.load(Ordering::Relaxed) {
                let url = format!("http://{}/db/execute", addrs[node % addrs.len()]);
                let body = json!([["INSERT OR IGNORE INTO failover(v) VALUES(?)", next]]);
                let sent = Instant::now();
                match client.post(&url).json(&body).timeout(Duration::from_secs(2)).send().await {
                    Ok(r) if r.status().is_success() => {
                        let at = Instant::now();
                        acked.lock().expect("acked mutex").push(Acked { value: next, sent, at });
                        next += 1;
                    }
                    _ => {
                        node += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
        })
    };

    // Per trial, from the kill to the first acknowledgement of a write sent after it; and, as
    // measured before, to the first acknowledgement after it of any write, which may have
    // been sent before the kill and answered by the dying leader.
    let (mut gaps, mut any_gaps) = (Vec::new(), Vec::new());
    for trial in 1..=args.trials {
        // Wait for the writer to be making progress, so the gap measures the failover alone.
        let before = acked.lock().expect("acked mutex").len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while acked.lock().expect("acked mutex").len() < before + 10 {
            if Instant::now() > deadline {
                bail!("trial {trial}: the cluster is not taking writes");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let Some(leader) = find_leader(&probe).await else { bail!("trial {trial}: no leader") };
        let i = nodes.iter().position(|n| n.id == leader).context("leader is not one of ours")?;
        let killed_at = Instant::now();
        nodes[i].child.start_kill()?;
        nodes[i].child.wait().await?;
        let deadline = killed_at + Duration::from_secs(10);
        let (gap, any_gap) = loop {
            if let Some(gaps) = first_acks(&acked.lock().expect("acked mutex"), killed_at) {
                break gaps;
            }
            if Instant::now() > deadline {
                bail!(
                    "trial {trial}: no write sent after killing node {leader} was acknowledged within 10 s"
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        if !args.json {
            println!(
                "trial {trial}: killed leader node {leader}; first write sent after the kill acknowledged after {:.0} ms (any write: {:.0} ms)",
                gap.as_secs_f64() * 1e3,
                any_gap.as_secs_f64() * 1e3
            );
        }
        gaps.push(gap);
        any_gaps.push(any_gap);
        nodes[i].restart()?;
        let restarted = probe.on(&url(&nodes[i]))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !restarted.ready(false, false).await.is_ok_and(|r| r.ready) {
            if Instant::now() > deadline {
                bail!("trial {trial}: node {leader} not ready after restart");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Graceful promotions: the write gap is the longest pause between acknowledged writes
    // around the transfer.
    let mut promote_gaps = Vec::new();
    for trial in 1..=args.trials {
        let Some(leader) = find_leader(&probe).await else { bail!("promotion {trial}: no leader") };
        let target = nodes.iter().map(|n| n.id).find(|id| *id != leader).context("no follower")?;
        let began = Instant::now();
        if let Err(e) = cluster.promote(target).await {
            bail!("promotion {trial}: {e}");
        }
        let done = Instant::now();
        let after = done + Duration::from_millis(500);
        while Instant::now() < after
            || acked.lock().expect("acked mutex").last().is_none_or(|a| a.at < done)
        {
            if Instant::now() > done + Duration::from_secs(10) {
                bail!("promotion {trial}: no write acknowledged after the transfer");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let times: Vec<Instant> = acked
            .lock()
            .expect("acked mutex")
            .iter()
            .map(|a| a.at)
            .filter(|at| *at + Duration::from_millis(200) >= began && *at <= after)
            .collect();
        let gap = times.windows(2).map(|w| w[1].duration_since(w[0])).max().unwrap_or_default();
        if !args.json {
            println!(
                "promotion {trial}: node {leader} -> node {target} in {:.0} ms; longest write gap {:.0} ms",
                done.duration_since(began).as_secs_f64() * 1e3,
                gap.as_secs_f64() * 1e3
            );
        }
        promote_gaps.push(gap);
    }

    stop.store(true, Ordering::Relaxed);
    writer.await?;

    // Every acknowledged value must be on every node.
    let acked: Vec<i64> = acked.lock().expect("acked mutex").iter().map(|a| a.value).collect();
    let last = acked.last().copied().unwrap_or(0);
    let mut lost = 0usize;
    for n in nodes.iter() {
        let node = cluster.on(&url(n))?;
        let read = node.read([Statement::new("SELECT v FROM failover")]);
        let answer =
            read.level(Level::Linearizable).timeout(Duration::from_secs(20)).send().await?;
        let rows = answer.results.first().map(|r| r.values()).unwrap_or_default();
        let present: std::collections::HashSet<i64> =
            rows.iter().filter_map(|r| r.first()?.as_i64()).collect();
        lost += acked.iter().filter(|v| !present.contains(v)).count();
    }
    gaps.sort();
    any_gaps.sort();
    promote_gaps.sort();
    let figures = json!({
        "workload": "failover",
        "trials": gaps.len(),
        "promote_gap_p50_ms": percentile_ms(&promote_gaps, 0.5),
        "promote_gap_max_ms": promote_gaps.last().map_or(0.0, |g| g.as_secs_f64() * 1e3),
        "acknowledged_writes": acked.len(),
        "last_value": last,
        "lost_acknowledged_writes": lost,
        "p50_ms": percentile_ms(&gaps, 0.5),
        "max_ms": gaps.last().map_or(0.0, |g| g.as_secs_f64() * 1e3),
        "any_ack_p50_ms": percentile_ms(&any_gaps, 0.5),
        "any_ack_max_ms": any_gaps.last().map_or(0.0, |g| g.as_secs_f64() * 1e3),
    });
    if args.json {
        println!("{figures}");
    } else {
        println!(
            "failover: {} trials, kill -9 leader -> first acknowledged write sent after the kill: p50 {:.0} ms, max {:.0} ms (first acknowledgement of any write: p50 {:.0} ms, max {:.0} ms); {} writes acknowledged, {} lost",
            gaps.len(),
            percentile_ms(&gaps, 0.5),
            gaps.last().map_or(0.0, |g| g.as_secs_f64() * 1e3),
            percentile_ms(&any_gaps, 0.5),
            any_gaps.last().map_or(0.0, |g| g.as_secs_f64() * 1e3),
            acked.len(),
            lost
        );
        println!(
            "promote: {} transfers, longest write gap: p50 {:.0} ms, max {:.0} ms",
            promote_gaps.len(),
            percentile_ms(&promote_gaps, 0.5),
            promote_gaps.last().map_or(0.0, |g| g.as_secs_f64() * 1e3)
        );
    }
    if lost > 0 {
        bail!("{lost} acknowledged writes are missing");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_sent_before_the_kill_counts_only_as_any_acknowledgement() {
        let kill = Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        let before = kill.checked_sub(ms(5)).expect("an instant before the kill");
        let acked = [
            Acked { value: 1, sent: before, at: before + ms(1) },
            // Sent before the kill, answered just after it (by the dying leader).
            Acked { value: 2, sent: before + ms(2), at: kill + ms(1) },
            Acked { value: 3, sent: kill + ms(100), at: kill + ms(250) },
            Acked { value: 4, sent: kill + ms(251), at: kill + ms(260) },
        ];
        assert_eq!(first_acks(&acked[..2], kill), None);
        assert_eq!(first_acks(&acked, kill), Some((ms(250), ms(1))));
    }
}
