//! The nemesis: faults on a seeded schedule, each followed by a heal.
//!
//! A schedule alternates a fault phase (2–5 s) with a quiet phase (1–3 s) until the run's
//! fault time is over. Each fault phase picks one fault kind from those enabled; every heal
//! undoes all of them (reconnect, resume, reset clocks, free disks, restart dead nodes,
//! re-add removed ones), as Jepsen's `:heal` does.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::cluster::{Cluster, TableCheck};
use super::corrupt::{self, Damage};
use super::history::History;
use super::net::Net;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Fault {
    /// kill -9 one node, the leader, or a minority; restart on heal.
    Kill,
    /// SIGSTOP one node or the leader; SIGCONT on heal.
    Pause,
    /// Isolate one node or the leader, split majority/minority, or a bridge.
    Partition,
    /// Move a node's wall clock by up to ±10 minutes (libfaketime).
    Clock,
    /// Fill a node's disk (tmpfs balloon); the node must stay up (checked at the heal).
    Disk,
    /// Restart a node with fsync failing at random (libfiu); it must abort, not go on.
    Fsync,
    /// Remove a follower from the membership; on heal, wipe it and add it back.
    Member,
    /// Promote a follower to leader under load (admin transfer).
    Promote,
    /// Coordinated power loss: every node is killed and loses what it had not fsynced.
    Powerloss,
    /// `VACUUM` on every replica under load (`POST /admin/vacuum` through a random node).
    Vacuum,
    /// Bad links between nodes, through the proxies ([`super::proxy`]): delay with jitter,
    /// bandwidth limits, connections dropped mid-stream, one direction stalled, replication
    /// frames replayed out of order and twice.
    Net,
    /// Damage one node's stored state, stopped or running ([`super::corrupt`]): a bit flipped
    /// in its log, database or snapshot image, or a log segment cut short. It must not start
    /// on a damaged log; on heal it is rebuilt with `keel admin rebuild --data-dir`.
    Corrupt,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 12] = [
        Fault::Kill,
        Fault::Pause,
        Fault::Partition,
        Fault::Clock,
        Fault::Disk,
        Fault::Fsync,
        Fault::Member,
        Fault::Promote,
        Fault::Powerloss,
        Fault::Vacuum,
        Fault::Net,
        Fault::Corrupt,
    ];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::Clock => "clock",
            Fault::Disk => "disk",
            Fault::Fsync => "fsync",
            Fault::Member => "member",
            Fault::Promote => "promote",
            Fault::Powerloss => "powerloss",
            Fault::Vacuum => "vacuum",
            Fault::Net => "net",
            Fault::Corrupt => "corrupt",
        }
    }
}

/// The least time a fault acts before it is healed.
const MIN_FAULT_TIME: Duration = Duration::from_secs(2);

/// Counts of faults injected, by kind.
pub type FaultCounts = BTreeMap<&'static str, u64>;

/// How long the cluster may take to catch up after the heal of a `net` fault before the
/// schedule goes on without it (the run's recovery check after the last heal is separate).
const NET_RECOVERY_WAIT: Duration = Duration::from_secs(20);

/// Runs the schedule until `until`, then heals. Returns the counts of faults injected. After
/// every heal, `keel check` compares the replicas; its verdicts go to `checks`. After the heal
/// of a `net` fault, the seconds until the cluster had a leader that every node had caught up
/// with go to `net_recoveries` (`None`: not within 20 s).
pub fn run(
    cluster: &mut Cluster,
    faults: &[Fault],
    rng: &mut StdRng,
    history: &History,
    until: Instant,
    checks: &mut Vec<TableCheck>,
    net_recoveries: &mut Vec<Option<f64>>,
) -> FaultCounts {
    let mut counts = FaultCounts::new();
    // Let the clients start against a healthy cluster.
    sleep_until(Instant::now() + Duration::from_millis(rng.gen_range(500..1500)), until);
    // A fault needs time to act before the heal that ends its round: a full disk, for one,
    // is felt only once the node next writes. A fault injected just before `until` would be
    // healed before it took effect.
    while !faults.is_empty() && Instant::now() + MIN_FAULT_TIME < until {
        let fault = *faults.choose(rng).expect("faults is not empty");
        match inject(cluster, fault, rng, history) {
            Ok(true) => *counts.entry(fault.name()).or_default() += 1,
            Ok(false) => {}
            Err(e) => history.fault("nemesis-error", format!("{}: {e:#}", fault.name())),
        }
        sleep_until(Instant::now() + Duration::from_millis(rng.gen_range(2000..5000)), until);
        heal(cluster, history);
        if fault == Fault::Net {
            net_recoveries.push(measure_recovery(cluster, history));
        }
        checks.push(check_tables(cluster, history, Duration::from_secs(5)));
        sleep_until(Instant::now() + Duration::from_millis(rng.gen_range(1000..3000)), until);
    }
    counts
}

fn sleep_until(t: Instant, limit: Instant) {
    let t = t.min(limit);
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Seconds from now until the cluster has a leader every node has caught up with; logged.
fn measure_recovery(cluster: &mut Cluster, history: &History) -> Option<f64> {
    let healed = Instant::now();
    let done = cluster.wait_until(NET_RECOVERY_WAIT, "recovery", |c| c.caught_up().is_some());
    let secs = done.is_ok().then(|| healed.elapsed().as_secs_f64());
    let what = secs.map_or(format!("not within {NET_RECOVERY_WAIT:?}"), |s| format!("{s:.2}s"));
    history.fault("recovered", format!("after net: {what}"));
    secs
}

/// Picks `k` distinct nodes among `from`.
fn pick(rng: &mut StdRng, from: &[usize], k: usize) -> Vec<usize> {
    let mut v = from.to_vec();
    v.shuffle(rng);
    v.truncate(k);
    v
}

/// Injects one fault; `Ok(false)` when it did not apply (e.g. no follower to promote).
fn inject(
    cluster: &mut Cluster,
    fault: Fault,
    rng: &mut StdRng,
    history: &History,
) -> anyhow::Result<bool> {
    let all: Vec<usize> = (1..=cluster.nodes.len()).filter(|&i| !cluster.node(i).removed).collect();
    let voters: Vec<usize> = cluster.voters();
    let leader = cluster.leader();
    let minority = voters.len().saturating_sub(1) / 2;
    match fault {
        Fault::Kill => {
            let targets = match (rng.gen_range(0..3), leader) {
                (0, Some(l)) => vec![l],
                (1, _) if minority > 1 => pick(rng, &voters, minority),
                _ => pick(rng, &all, 1),
            };
            for &i in &targets {
                cluster.kill(i);
            }
            history.fault("kill", format!("nodes {targets:?} (leader {leader:?})"));
        }
        Fault::Pause => {
            let targets = match (rng.gen_bool(0.5), leader) {
                (true, Some(l)) => vec![l],
                _ => pick(rng, &all, 1),
            };
            for &i in &targets {
                cluster.pause(i);
            }
            history.fault("pause", format!("nodes {targets:?} (leader {leader:?})"));
        }
        Fault::Partition => {
            let Net::Netns(net) = &mut cluster.net else { return Ok(false) };
            let n = net.nodes();
            let ids: Vec<usize> = (1..=n).collect();
            let shape = rng.gen_range(0..4);
            let (name, side_a): (&str, Vec<usize>) = match (shape, leader) {
                (0, Some(l)) => ("isolate-leader", vec![l]),
                (1, _) => ("isolate-one", pick(rng, &ids, 1)),
                (2, _) => ("majority-minority", pick(rng, &ids, n / 2)),
                _ => ("bridge", Vec::new()),
            };
            if name == "bridge" {
                // Two halves that cannot talk, and one node that talks to both.
                let mut order = ids.clone();
                order.shuffle(rng);
                let bridge = order[0];
                let rest = &order[1..];
                let (left, right) = rest.split_at(rest.len() / 2);
                for &a in left {
                    for &b in right {
                        net.cut(a, b)?;
                    }
                }
                if let Some(proxies) = &cluster.proxies {
                    for &a in left {
                        for &b in right {
                            proxies.cut(a, b);
                        }
                    }
                }
                history
                    .fault("partition", format!("bridge {bridge} between {left:?} and {right:?}"));
            } else {
                for &a in &side_a {
                    for &b in ids.iter().filter(|b| !side_a.contains(b)) {
                        net.cut(a, b)?;
                        if let Some(proxies) = &cluster.proxies {
                            proxies.cut(a, b);
                        }
                    }
                }
                history
                    .fault("partition", format!("{name}: {side_a:?} cut off (leader {leader:?})"));
            }
        }
        Fault::Clock => {
            let k = rng.gen_range(1..=all.len().max(1));
            let targets = pick(rng, &all, k);
            let mut moved = Vec::new();
            for &i in &targets {
                let secs: i64 = rng.gen_range(-600..=600);
                let offset = format!("{secs:+}s");
                cluster.set_clock(i, &offset)?;
                moved.push(format!("{i}:{offset}"));
            }
            history.fault("clock", moved.join(" "));
        }
        Fault::Disk => {
            let i = pick(rng, &all, 1)[0];
            cluster.fill_disk(i)?;
            history.fault("disk", format!("node {i} full"));
        }
        Fault::Fsync => {
            let i = pick(rng, &all, 1)[0];
            cluster.kill(i);
            cluster.nodes[i - 1].fsync_faults = true;
            cluster.restart(i)?;
            history.fault("fsync", format!("node {i} restarted with fsync failing 2% of the time"));
        }
        Fault::Member => {
            let followers: Vec<usize> =
                voters.iter().copied().filter(|&v| Some(v) != leader).collect();
            let (Some(l), false) = (leader, followers.is_empty()) else { return Ok(false) };
            let i = pick(rng, &followers, 1)[0];
            match cluster.api(l)?.remove(i as u64) {
                Ok(_) => {
                    cluster.kill(i);
                    cluster.nodes[i - 1].removed = true;
                    history.fault("member", format!("node {i} removed"));
                }
                Err(keel_api::Error::Refused { status, answer }) => {
                    let text = answer.error;
                    history.fault("member", format!("removing node {i} refused: {status} {text}"));
                    return Ok(false);
                }
                Err(e) => {
                    history.fault("member", format!("removing node {i} failed: {e}"));
                    return Ok(false);
                }
            }
        }
        Fault::Powerloss => {
            let mut lost = Vec::new();
            for i in 1..=cluster.nodes.len() {
                cluster.kill(i);
            }
            for i in 1..=cluster.nodes.len() {
                let (wal_bytes, db) = cluster.lose_unsynced(i)?;
                lost.push(format!("{i}: {wal_bytes} log bytes, sqlite {db}"));
            }
            history.fault("powerloss", format!("every node killed; lost {}", lost.join("; ")));
        }
        Fault::Vacuum => {
            let i = pick(rng, &all, 1)[0];
            let answer = cluster.api(i)?.vacuum();
            history.fault("vacuum", format!("through node {i}: {answer:?}"));
        }
        Fault::Net => {
            let Some(what) = bad_links(cluster, rng, leader) else { return Ok(false) };
            history.fault("net", what);
        }
        Fault::Corrupt => {
            let i = pick(rng, &all, 1)[0];
            let stopped = rng.gen_bool(0.5);
            if stopped {
                cluster.kill(i);
            }
            let log_from = std::fs::metadata(&cluster.node(i).log).map_or(0, |m| m.len());
            let (target, what) = corrupt::damage(&cluster.node(i).data, rng)?;
            cluster.nodes[i - 1].damaged = Some(Damage { target, stopped, log_from });
            let how = if stopped { "stopped, then started on it" } else { "running" };
            history.fault("corrupt", format!("node {i} ({how}), {}: {what}", target.name()));
            if stopped {
                cluster.restart(i)?;
            }
        }
        Fault::Promote => {
            let followers: Vec<usize> =
                voters.iter().copied().filter(|&v| Some(v) != leader).collect();
            let (Some(l), false) = (leader, followers.is_empty()) else { return Ok(false) };
            let i = pick(rng, &followers, 1)[0];
            let answer = cluster.api(l)?.promote(i as u64);
            history.fault("promote", format!("node {i} (was {l}): {answer:?}"));
        }
    }
    Ok(true)
}

/// Makes some links bad, through the proxies, in one of six shapes; says what it did. `None`
/// without proxies.
fn bad_links(cluster: &Cluster, rng: &mut StdRng, leader: Option<usize>) -> Option<String> {
    let proxies = cluster.proxies.as_ref()?;
    let ids: Vec<usize> = (1..=cluster.nodes.len()).collect();
    let pairs: Vec<(usize, usize)> = ids
        .iter()
        .flat_map(|&a| ids.iter().filter(move |&&b| b != a).map(move |&b| (a, b)))
        .collect();
    let ms = |n: u64| Duration::from_millis(n);
    // The leader half the time, else any node.
    let one = match leader {
        Some(l) if rng.gen_bool(0.5) => l,
        _ => pick(rng, &ids, 1)[0],
    };
    let touching = |x: usize| pairs.iter().copied().filter(move |&(a, b)| a == x || b == x);
    let what = match rng.gen_range(0..6) {
        0 => {
            for &(a, b) in &pairs {
                let (delay, jitter) = (ms(rng.gen_range(1..=100)), ms(rng.gen_range(0..=100)));
                proxies.set(a, b, |l| (l.delay, l.jitter) = (delay, jitter));
            }
            "slow: every link delayed 1-100 ms plus 0-100 ms of jitter".to_string()
        }
        1 => {
            let rate = rng.gen_range(8..=128) << 10;
            for (a, b) in touching(one) {
                proxies.set(a, b, |l| l.bandwidth = Some(rate));
            }
            format!("narrow: links of node {one} limited to {} KiB/s each way", rate >> 10)
        }
        2 => {
            let least = ms(rng.gen_range(50..=500));
            let most = least + ms(rng.gen_range(0..=2000));
            for &(a, b) in &pairs {
                proxies.set(a, b, |l| l.drop_after = Some((least, most)));
            }
            format!("lossy: every connection dropped after {least:?}-{most:?}")
        }
        3 => {
            // Every byte `one` sends to the others is held; what they send it flows.
            for &b in ids.iter().filter(|&&b| b != one) {
                proxies.set(one, b, |l| l.stall_up = true);
                proxies.set(b, one, |l| l.stall_down = true);
            }
            format!("one-way: node {one}'s bytes to the others held, theirs to it flow")
        }
        4 => {
            let from = leader.unwrap_or(one);
            for &b in ids.iter().filter(|&&b| b != from) {
                proxies.set(from, b, |l| l.replay = true);
            }
            format!(
                "replay: node {from}'s recent appends replayed to the others, shuffled, some twice"
            )
        }
        _ => {
            let least = ms(rng.gen_range(200..=1000));
            let most = least + ms(rng.gen_range(0..=3000));
            for &(a, b) in &pairs {
                let (delay, jitter) = (ms(rng.gen_range(1..=50)), ms(rng.gen_range(0..=150)));
                proxies.set(a, b, |l| {
                    (l.delay, l.jitter) = (delay, jitter);
                    l.drop_after = Some((least, most));
                    l.replay = Some(a) == leader;
                });
            }
            format!(
                "bad: every link delayed 1-50 ms plus 0-150 ms of jitter, connections dropped \
                 after {least:?}-{most:?}, the leader's ({leader:?}) appends replayed"
            )
        }
    };
    Some(what)
}

/// Runs `keel check` (members get `wait` to reach the pinned index) and records its verdict
/// in the history.
pub fn check_tables(cluster: &Cluster, history: &History, wait: Duration) -> TableCheck {
    let verdict = cluster.table_check(wait);
    let what = match &verdict {
        TableCheck::Same => "replicas identical".to_string(),
        TableCheck::Different(out) => format!("REPLICAS DIFFER: {out}"),
        TableCheck::NotRun(why) => format!("not run: {why}"),
    };
    history.fault("check", what);
    verdict
}

/// Undoes every fault: network, pauses, clocks, disks, fsync faults, dead and removed nodes.
/// A node whose disk was full must still run: one that exited is a violation
/// ([`Cluster::exits`]).
pub fn heal(cluster: &mut Cluster, history: &History) {
    for i in 1..=cluster.nodes.len() {
        if cluster.node(i).disk_full
            && let Some(status) = cluster.exited_by_itself(i)
        {
            let what = format!("node {i} exited ({status}) while its disk was full");
            history.fault("disk", format!("VIOLATION {what}"));
            cluster.exits.push(what);
        }
    }
    if let Net::Netns(net) = &mut cluster.net
        && !net.cut_pairs().is_empty()
        && let Err(e) = net.heal()
    {
        history.fault("nemesis-error", format!("heal network: {e:#}"));
    }
    let mut proxied = String::new();
    if let Some(proxies) = &cluster.proxies {
        proxies.heal();
        let s = proxies.stats();
        proxied = format!(
            "; proxies so far: {} connections, {} dropped, {} replays of {} frames",
            s.connections, s.dropped, s.replays, s.replayed_frames
        );
    }
    for i in 1..=cluster.nodes.len() {
        if let Some(damage) = cluster.nodes[i - 1].damaged.take() {
            rebuild_damaged(cluster, i, &damage, history);
        }
    }
    let mut restarted = Vec::new();
    for i in 1..=cluster.nodes.len() {
        if cluster.node(i).paused {
            cluster.resume(i);
        }
        let _ = cluster.set_clock(i, "+0");
        cluster.free_disk(i);
        if cluster.node(i).fsync_faults {
            cluster.kill(i);
            cluster.nodes[i - 1].fsync_faults = false;
        }
        if cluster.node(i).removed {
            continue;
        }
        if !cluster.running(i) {
            match cluster.restart(i) {
                Ok(()) => restarted.push(i),
                Err(e) => history.fault("nemesis-error", format!("restart node {i}: {e:#}")),
            }
        }
    }
    // Removed nodes come back wiped, joining as new members.
    for i in 1..=cluster.nodes.len() {
        if cluster.node(i).removed {
            let rejoin = cluster.wipe(i).and_then(|()| {
                cluster.nodes[i - 1].removed = false;
                cluster.restart(i)
            });
            match rejoin {
                Ok(()) => restarted.push(i),
                Err(e) => history.fault("nemesis-error", format!("re-add node {i}: {e:#}")),
            }
        }
    }
    history.fault("heal", format!("restarted {restarted:?}{proxied}"));
}

/// The heal of a `corrupt` fault on node `i`: records what the node found in its log, holds
/// a node started on a damaged log that did not refuse to start as a violation
/// ([`Cluster::undetected`]), and rebuilds the node ([`Cluster::rebuild_offline`]); the heal's
/// restart then brings it back with `--join`.
fn rebuild_damaged(cluster: &mut Cluster, i: usize, damage: &Damage, history: &History) {
    let refused = cluster.exited_by_itself(i);
    let found = corrupt::findings(&cluster.node(i).log, damage.log_from);
    let seen = if found.is_empty() { "nothing in its log".to_string() } else { found.join(" | ") };
    let what = match refused {
        Some(status) => format!("refused to run ({status}); it said: {seen}"),
        None => format!("still running; it said: {seen}"),
    };
    history.fault("corrupt", format!("node {i}, {}: {what}", damage.target.name()));
    if damage.stopped && damage.target.refuses_start() && refused.is_none() {
        let what = format!("node {i} started on a damaged log ({})", damage.target.name());
        history.fault("corrupt", format!("VIOLATION {what}"));
        cluster.undetected.push(what);
    }
    cluster.kill(i);
    match cluster.rebuild_offline(i) {
        Ok(said) => history.fault("corrupt", format!("node {i} rebuilt: {said}")),
        Err(e) => history.fault("nemesis-error", format!("rebuild node {i}: {e:#}")),
    }
}
