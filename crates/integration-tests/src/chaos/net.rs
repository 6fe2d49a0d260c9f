//! Where the nodes live on the network, and how it is cut.
//!
//! In [`Net::Netns`] mode (root, iproute2), every node runs in a network namespace of its own,
//! joined by a veth pair to a bridge in a `hub` namespace, as canonical/jepsen.dqlite does on
//! one machine. The harness itself moves into the hub namespace ([`Netns::enter_hub`]) before
//! it starts any thread, so its clients reach every node while the root namespace never sees
//! the private addresses. A partition between nodes A and B is a pair of blackhole routes (in
//! A's namespace towards B, in B's towards A): packets between them vanish, the clients in the
//! hub still reach both. That needs only iproute2 (no iptables, no `tc netem`, which this
//! kernel lacks).
//!
//! [`Net::Loopback`] runs every node on 127.0.0.1 and cannot partition; it is for machines
//! where the harness is not root. Runs there leave partitions out of the schedule and say so.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The network the nodes run on.
#[derive(Debug)]
pub enum Net {
    /// One namespace per node behind a bridge; partitions possible.
    Netns(Netns),
    /// Every node on 127.0.0.1; no partitions.
    Loopback,
}

impl Net {
    /// Netns mode when running as root with `ip` available, loopback otherwise (or when
    /// `loopback` is asked for).
    pub fn detect(nodes: usize, loopback: bool) -> anyhow::Result<Net> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let ip = Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
        if loopback || !root || !ip {
            if !loopback {
                eprintln!(
                    "chaos: not root or no iproute2: nodes run on loopback and partitions are \
                     left out"
                );
            }
            return Ok(Net::Loopback);
        }
        Ok(Net::Netns(Netns::create(nodes)?))
    }

    /// Whether partitions can be made.
    pub fn can_partition(&self) -> bool {
        matches!(self, Net::Netns(_))
    }
}

/// Network namespaces `<prefix>hub` and `<prefix>n1` … `<prefix>nN`; removed on drop.
#[derive(Debug)]
pub struct Netns {
    prefix: String,
    nodes: usize,
    /// Pairs (a, b), a < b, currently cut.
    cut: BTreeSet<(usize, usize)>,
}

/// Runs `ip` with `args`; fails with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Netns {
    /// Builds the topology. Namespaces left by an earlier harness process that is gone are
    /// removed first.
    pub fn create(nodes: usize) -> anyhow::Result<Netns> {
        remove_stale();
        let prefix = format!("kc{}", std::process::id());
        // Made first, so that a failure below drops it, which removes what was made.
        let net = Netns { prefix, nodes, cut: BTreeSet::new() };
        let hub = net.hub();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "addr", "add", &format!("{}/24", net.hub_ip()), "dev", "br0"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 1..=nodes {
            let ns = net.node_ns(i);
            let veth = format!("v{i}");
            ip(&["netns", "add", &ns])?;
            ip(&[
                "-n", &hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &veth, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &veth, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", net.node_ip(i)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// The hub namespace's name.
    fn hub(&self) -> String {
        format!("{}hub", self.prefix)
    }

    /// The hub's address on the bridge: the harness's, and its proxies' ([`super::proxy`]).
    pub fn hub_ip(&self) -> &'static str {
        "10.88.0.1"
    }

    /// Node `i`'s namespace name (1-based).
    pub fn node_ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    /// Node `i`'s address (1-based).
    pub fn node_ip(&self, i: usize) -> String {
        format!("10.88.0.{}", 10 + i)
    }

    /// Moves the calling thread into the hub namespace. Call it before any other thread is
    /// started: threads started later inherit it.
    pub fn enter_hub(&self) -> anyhow::Result<()> {
        let path = format!("/run/netns/{}", self.hub());
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        use std::os::fd::AsRawFd;
        // SAFETY: a valid namespace file descriptor, owned by `file` for the call.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns into {path}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The command prefix that runs a program in node `i`'s namespace.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.node_ns(i)]
    }

    /// Adds (`add`) or removes (`del`) the blackhole routes between nodes `a` and `b`, in
    /// both namespaces.
    fn blackhole(&self, action: &str, a: usize, b: usize) -> anyhow::Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            let dest = format!("{}/32", self.node_ip(to));
            ip(&["-n", &self.node_ns(from), "route", action, "blackhole", &dest])?;
        }
        Ok(())
    }

    /// Cuts traffic between nodes `a` and `b` (both directions).
    pub fn cut(&mut self, a: usize, b: usize) -> anyhow::Result<()> {
        let pair = (a.min(b), a.max(b));
        if a == b || self.cut.contains(&pair) {
            return Ok(());
        }
        self.blackhole("add", a, b)?;
        self.cut.insert(pair);
        Ok(())
    }

    /// Restores every cut link.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        for (a, b) in std::mem::take(&mut self.cut) {
            self.blackhole("del", a, b)?;
        }
        Ok(())
    }

    /// The pairs currently cut.
    pub fn cut_pairs(&self) -> Vec<(usize, usize)> {
        self.cut.iter().copied().collect()
    }

    /// How many nodes the topology has.
    pub fn nodes(&self) -> usize {
        self.nodes
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for i in 1..=self.nodes {
            let _ = ip(&["netns", "del", &self.node_ns(i)]);
        }
        let _ = ip(&["netns", "del", &self.hub()]);
    }
}

/// Removes `kc<pid>*` namespaces whose harness process no longer exists.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix("kc") else { continue };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(pid) = digits.parse::<u32>() else { continue };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // Nodes of a harness that died without cleaning up still run in there.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &name]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill has no memory-safety preconditions.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = ip(&["netns", "del", &name]);
        }
    }
}
