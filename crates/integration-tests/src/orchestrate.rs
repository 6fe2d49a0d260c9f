//! Harness support for membership as orchestrators drive it (`tests/orchestrate.rs`): a node
//! that comes back at new addresses ([`TestCluster::move_node`]), clusters formed by
//! `--bootstrap-expect` ([`TestCluster::start_expecting`]), or with the nodes found through DNS
//! ([`TestCluster::discovering`], [`Discover`]), the leader's view of members' addresses, and
//! nodes' logs.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;

use keel_api::status::Role;
use reqwest::header::HeaderMap;

use crate::dns::DnsServer;
use crate::process::{Node, Process, free_ports};
use crate::{NodeId, TIMEOUT, keel_binary, wait_for};
use crate::{TestCluster, lock};

impl TestCluster {
    /// Stops node `id` (SIGTERM) if it runs, gives it fresh ports, and starts it again with
    /// `--join` naming every other node; with its data directory emptied first if `fresh`.
    /// Waits until it answers (`/readyz?noleader`). Its later restarts keep the new ports.
    pub fn move_node(&mut self, id: NodeId, fresh: bool) {
        if lock(&self.node(id).process).child.is_some() {
            self.stop(id);
        }
        let join: Vec<String> = self
            .nodes
            .values()
            .filter(|node| node.id != id)
            .map(|node| format!("http://{}", node.http_addr))
            .collect();
        let ports = free_ports(2);
        let node = self.nodes.get_mut(&id).expect("the node exists");
        node.http_addr = format!("127.0.0.1:{}", ports[0]);
        node.raft_addr = format!("127.0.0.1:{}", ports[1]);
        node.join = Some(join.join(","));
        if fresh {
            std::fs::remove_dir_all(&node.data_dir).expect("cannot empty the data directory");
        }
        node.spawn();
        wait_for(TIMEOUT, format!("node {id} to answer at its new addresses"), || {
            self.answering(id).then_some(())
        });
    }

    /// Node `viewer`'s `/nodes?nonvoters`: each member's Raft address and voter flag; `None`
    /// if it does not answer.
    pub fn member_addrs(&self, viewer: NodeId) -> Option<BTreeMap<NodeId, (String, bool)>> {
        if !self.node(viewer).is_up() {
            return None;
        }
        let nodes = self.client_of(viewer).nodes().ok()?;
        nodes.iter().map(|node| Some((node.node_id()?, (node.addr.clone(), node.voter)))).collect()
    }

    /// The current leader's members, as `/nodes?nonvoters` lists them (id to voter flag);
    /// `None` without a leader that answers.
    pub fn leader_members(&self) -> Option<BTreeMap<NodeId, bool>> {
        self.current_leader().and_then(|leader| self.members(leader))
    }

    /// Node `id`'s whole log, across its starts.
    pub fn log(&self, id: NodeId) -> String {
        let path = &self.node(id).log_path;
        let bytes = std::fs::read(path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Starts `n` voters at once, each with `--bootstrap-expect n --join <every node>` and
    /// `extra_args`, and waits until one leader lists all `n` as voters and every node is ready.
    pub fn start_expecting(n: usize, extra_args: &[&str]) -> Self {
        keel_binary();
        let expect = n.to_string();
        let mut args = vec!["--bootstrap-expect", expect.as_str()];
        args.extend_from_slice(extra_args);
        let mut cluster = Self::new(n, 0, &args, &[], HeaderMap::new());
        let join: Vec<String> =
            cluster.nodes.values().map(|node| format!("http://{}", node.http_addr)).collect();
        for node in cluster.nodes.values_mut() {
            node.join = Some(join.join(","));
        }
        for node in cluster.nodes.values() {
            node.spawn();
        }
        cluster.wait_formed();
        cluster
    }

    /// Stops every node (SIGTERM), starts them all again at once with the same flags, and
    /// waits until they form one cluster again ([`TestCluster::wait_formed`]).
    pub fn restart_all(&self) {
        for &id in self.nodes.keys() {
            if lock(&self.node(id).process).child.is_some() {
                self.stop(id);
            }
        }
        for node in self.nodes.values() {
            node.spawn();
        }
        self.wait_formed();
    }

    /// Waits until one leader lists every node as a voter, and every node is ready and follows
    /// or is that leader.
    pub fn wait_formed(&self) {
        let all: BTreeMap<NodeId, bool> = self.nodes.keys().map(|&id| (id, true)).collect();
        wait_for(TIMEOUT, "one cluster of every node, all voters, all ready", || {
            for &id in self.nodes.keys() {
                self.assert_alive(id);
            }
            let leader = self.current_leader()?;
            let formed = self.members(leader)? == all
                && self.nodes.keys().all(|&id| {
                    self.ready(id)
                        && self.try_status(id).is_some_and(|s| {
                            s.node.leader_id == Some(leader)
                                && matches!(s.node.role, Role::Leader | Role::Follower)
                        })
                });
            formed.then_some(())
        });
    }
}

/// The DNS name nodes started by [`TestCluster::discovering`] look up.
pub const DISCOVERY_HOST: &str = "keel.test";

/// How nodes laid out by [`TestCluster::discovering`] find each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discover {
    /// `--discovery dns`: the A records of [`DISCOVERY_HOST`]. Every node's client API is on the
    /// same port (the default `--discovery-port`), node N's at `127.0.0.N`.
    Dns,
    /// `--discovery dns-srv`: the SRV records of `_keel._tcp.`[`DISCOVERY_HOST`], one per node:
    /// target `nodeN.keel.test` (A record `127.0.0.1`) and that node's own client API port.
    DnsSrv,
}

impl Discover {
    /// The `--discovery` flags, asking `dns`.
    fn flags(self, dns: &DnsServer) -> Vec<String> {
        let mode = match self {
            Discover::Dns => "dns",
            Discover::DnsSrv => "dns-srv",
        };
        ["--discovery", mode, "--discovery-host", DISCOVERY_HOST, "--discovery-resolver"]
            .iter()
            .map(|s| (*s).to_string())
            .chain([dns.addr().to_string()])
            .collect()
    }
}

impl TestCluster {
    /// Lays out `n` voters, each to start with `--bootstrap-expect n` and the `--discovery`
    /// flags of `mode` asking `dns` (and no `--join`), without starting any or publishing any
    /// record: the test does both ([`TestCluster::start_node`], [`TestCluster::publish`]).
    pub fn discovering(n: usize, mode: Discover, dns: &DnsServer) -> Self {
        keel_binary();
        let expect = n.to_string();
        let mut args = vec!["--bootstrap-expect".to_string(), expect];
        args.extend(mode.flags(dns));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cluster = Self::new(n, 0, &args, &[], HeaderMap::new());
        let port = free_ports(1)[0];
        for node in cluster.nodes.values_mut() {
            node.join = None;
            if mode == Discover::Dns {
                node.http_addr = format!("127.0.0.{}:{port}", node.id);
            }
        }
        cluster
    }

    /// Lays out one more node like those of [`TestCluster::discovering`] (same flags; in
    /// [`Discover::Dns`] at `127.0.0.<id>` on their port), without starting it; returns its id.
    pub fn lay_out_discovering(&mut self, mode: Discover) -> NodeId {
        let first = self.nodes.values().next().expect("a cluster has nodes");
        let (extra_args, env) = (first.extra_args.clone(), first.env.clone());
        let id = self.nodes.keys().chain(self.retired.keys()).max().copied().unwrap_or(0) + 1;
        let ports = free_ports(2);
        let http_addr = match mode {
            Discover::Dns => {
                let port = first.http_addr.rsplit_once(':').expect("HOST:PORT").1;
                format!("127.0.0.{id}:{port}")
            }
            Discover::DnsSrv => format!("127.0.0.1:{}", ports[0]),
        };
        let node = Node {
            id,
            learner: false,
            http_addr,
            raft_addr: format!("127.0.0.1:{}", ports[1]),
            data_dir: self.dir.path().join(format!("node{id}")),
            log_path: self.dir.path().join(format!("node{id}.log")),
            join: None,
            extra_args,
            env,
            process: Mutex::new(Process::default()),
        };
        self.nodes.insert(id, node);
        id
    }

    /// Starts node `id` with its flags, without waiting for anything.
    pub fn start_node(&self, id: NodeId) {
        self.node(id).spawn();
    }

    /// Makes `dns` name exactly the nodes `ids` (the records of `mode`; see [`Discover`]).
    pub fn publish(&self, dns: &DnsServer, mode: Discover, ids: &[NodeId]) {
        let addrs: Vec<SocketAddr> = ids
            .iter()
            .map(|&id| self.http_addr(id).parse().expect("a node's address is IP:PORT"))
            .collect();
        match mode {
            Discover::Dns => {
                let ips: Vec<Ipv4Addr> = addrs
                    .iter()
                    .map(|addr| match addr.ip() {
                        IpAddr::V4(ip) => ip,
                        IpAddr::V6(ip) => panic!("test nodes listen on IPv4, not {ip}"),
                    })
                    .collect();
                dns.set_a(DISCOVERY_HOST, &ips);
            }
            Discover::DnsSrv => {
                let targets: Vec<(String, u16)> = ids
                    .iter()
                    .zip(&addrs)
                    .map(|(id, addr)| (format!("node{id}.{DISCOVERY_HOST}"), addr.port()))
                    .collect();
                for (target, _) in &targets {
                    dns.set_a(target, &[Ipv4Addr::LOCALHOST]);
                }
                let targets: Vec<(&str, u16)> =
                    targets.iter().map(|(t, p)| (t.as_str(), *p)).collect();
                dns.set_srv(&format!("_keel._tcp.{DISCOVERY_HOST}"), &targets);
            }
        }
    }
}
