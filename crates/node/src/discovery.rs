//! Finding the nodes to form or join a cluster with through DNS (`keel serve --discovery`), as
//! rqlite's `-disco-mode dns` and `dns-srv`: instead of a fixed `--join` list, the addresses
//! come from DNS records an orchestrator keeps up to date (a Kubernetes headless service lists
//! the pods of a StatefulSet as they appear).
//!
//! [`Discovery::urls`] asks once and returns the client API URLs the records name:
//!
//! * [`Records::Address`] (`--discovery dns`): the A and AAAA records of a name, each at one
//!   port (by default this node's own client API port: the nodes of an orchestrated cluster
//!   usually share it).
//! * [`Records::Service`] (`--discovery dns-srv`): the SRV records of `_SERVICE._tcp.NAME`,
//!   each a target and a port; each target's A and AAAA records with that port. This lets the
//!   nodes use different ports.
//!
//! [`crate::Node::bootstrap_expect`] asks again every round, so nodes that appear later are
//! found. The lookups use hickory-resolver, with the system's configuration
//! (`/etc/resolv.conf`: its name servers and search domains) or with one name server
//! (`--discovery-resolver`). Answers are cached at most a second, whatever their TTL: the
//! rounds are half a second apart, and a name that does not exist yet (NXDOMAIN) must be asked
//! again soon.
//!
//! It does not choose among the records (SRV priority and weight are ignored, as in rqlite):
//! every node named is told of this one. Nor does it find this node among them: telling a node
//! about itself is harmless.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

/// The longest an answer is cached, whatever its TTL.
const CACHE_AT_MOST: Duration = Duration::from_secs(1);
/// How long one query to a name server may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Which DNS records name the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Records {
    /// The A and AAAA records of `host`, each at `port` (`--discovery dns`).
    Address {
        /// The name to look up.
        host: String,
        /// The client API port of every node found.
        port: u16,
    },
    /// The SRV records of `_{service}._tcp.{host}` (`--discovery dns-srv`).
    Service {
        /// The name the SRV records are under, after `_service._tcp.`.
        host: String,
        /// The service label, without its underscore.
        service: String,
    },
}

/// A way to find the nodes through DNS; see the module docs.
pub struct Discovery {
    /// What to look up.
    records: Records,
    /// `http` or `https`: the scheme of the URLs, as this node's own client API.
    scheme: &'static str,
    /// The name server(s), for the logs: `the system's resolver` or an address.
    server: String,
    /// The resolver, with its (short) cache.
    resolver: TokioResolver,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("records", &self.records)
            .field("server", &self.server)
            .finish()
    }
}

impl Discovery {
    /// Looks up `records` at `server` (or the name servers of the system's configuration),
    /// making `https` or `http` URLs. Fails if the host is empty or the system's resolver
    /// configuration cannot be read.
    pub fn new(records: Records, server: Option<SocketAddr>, https: bool) -> Result<Self, String> {
        let host = match &records {
            Records::Address { host, .. } | Records::Service { host, .. } => host,
        };
        if host.trim().is_empty() {
            return Err("--discovery-host is empty: give the DNS name that lists the nodes".into());
        }
        if let Records::Service { service, .. } = &records
            && (service.is_empty() || service.starts_with('_') || service.contains('.'))
        {
            return Err(format!(
                "--discovery-service {service:?}: give the service label alone (keel, not _keel._tcp)"
            ));
        }
        let provider = TokioRuntimeProvider::default();
        let (mut builder, described) = match server {
            Some(addr) => {
                let mut name_server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut name_server.connections {
                    connection.port = addr.port();
                }
                let config = ResolverConfig::from_parts(None, Vec::new(), vec![name_server]);
                (TokioResolver::builder_with_config(config, provider), addr.to_string())
            }
            None => (
                TokioResolver::builder(provider).map_err(|e| {
                    format!("cannot read the system's DNS configuration (/etc/resolv.conf): {e}; give --discovery-resolver")
                })?,
                "the system's resolver".to_string(),
            ),
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.positive_max_ttl = Some(CACHE_AT_MOST);
        options.negative_max_ttl = Some(CACHE_AT_MOST);
        options.timeout = QUERY_TIMEOUT;
        let resolver = builder.build().map_err(|e| format!("cannot set up DNS lookups: {e}"))?;
        Ok(Self {
            records,
            scheme: if https { "https" } else { "http" },
            server: described,
            resolver,
        })
    }

    /// What is looked up where, for the logs: `A/AAAA records of keel.test (port 4001) at
    /// 127.0.0.1:5353`.
    pub fn describe(&self) -> String {
        match &self.records {
            Records::Address { host, port } => {
                format!("A/AAAA records of {host} (port {port}) from {}", self.server)
            }
            Records::Service { host, service } => {
                format!("SRV records of _{service}._tcp.{host} from {}", self.server)
            }
        }
    }

    /// The client API URLs the records name now, sorted, without repeats. An error says why
    /// there are none (NXDOMAIN, no records, no answer).
    pub async fn urls(&self) -> Result<Vec<String>, String> {
        let addrs = match &self.records {
            Records::Address { host, port } => self
                .addresses(host)
                .await?
                .into_iter()
                .map(|ip| SocketAddr::new(ip, *port))
                .collect(),
            Records::Service { host, service } => self.services(host, service).await?,
        };
        let mut urls: Vec<String> =
            addrs.into_iter().map(|addr| format!("{}://{addr}", self.scheme)).collect();
        urls.sort();
        urls.dedup();
        Ok(urls)
    }

    /// The A and AAAA records of `host`.
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let found = self.resolver.lookup_ip(host).await.map_err(|e| failure(host, "A/AAAA", &e))?;
        Ok(found.iter().collect())
    }

    /// The SRV records of `_{service}._tcp.{host}`, each target resolved. A target that does
    /// not resolve is left out (and logged) while others do: it may be a node that is not
    /// up yet.
    async fn services(&self, host: &str, service: &str) -> Result<Vec<SocketAddr>, String> {
        let name = format!("_{service}._tcp.{host}");
        let found =
            self.resolver.srv_lookup(name.as_str()).await.map_err(|e| failure(&name, "SRV", &e))?;
        let mut addrs = Vec::new();
        let mut failed = Vec::new();
        for record in found.answers() {
            let RData::SRV(srv) = &record.data else { continue };
            match self.resolver.lookup_ip(srv.target.clone()).await {
                Ok(ips) => addrs.extend(ips.iter().map(|ip| SocketAddr::new(ip, srv.port))),
                Err(e) => {
                    let why = failure(&srv.target.to_string(), "A/AAAA", &e);
                    tracing::debug!("an SRV target does not resolve: {why}");
                    failed.push(why);
                }
            }
        }
        if addrs.is_empty() && !failed.is_empty() {
            return Err(format!("{name}: no target resolves ({})", failed.join("; ")));
        }
        Ok(addrs)
    }
}

/// Why a lookup of `kind` records of `name` found none, in a few words.
fn failure(name: &str, kind: &str, e: &NetError) -> String {
    if e.is_nx_domain() {
        format!("NXDOMAIN: {name} does not exist")
    } else if e.is_no_records_found() {
        format!("{name} has no {kind} records")
    } else {
        format!("looking up {name}: {e}")
    }
}
