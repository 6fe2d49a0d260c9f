//! `keel certs`: creates a cluster CA and the certificates a TLS cluster needs.
//!
//! Files written to `--dir` (keys are PEM PKCS#8, mode 0600):
//!
//! - `ca.pem`, `ca-key.pem`: the cluster CA. Keep `ca-key.pem` off the nodes if you can: it
//!   only signs certificates.
//! - `node-<id>.pem`, `node-<id>-key.pem` per node: the node's certificate for mutual TLS
//!   between nodes, binding `keel://<cluster-id>/node/<id>` (see [`crate::tls`]), usable as
//!   server and as client, with the `--ip` addresses as IP SANs too (so tools such as curl can
//!   check them).
//! - `server.pem`, `server-key.pem`: the client API's HTTPS certificate, with the `--ip`
//!   addresses and `--dns` names (default `127.0.0.1` and `localhost`) as SANs.
//! - `client.pem`, `client-key.pem`: a client certificate for curl and the `keel` commands
//!   when the client API verifies client certificates (`--tls-client-ca ca.pem`). It names no
//!   node, so it cannot act as one.
//!
//! Existing files are never overwritten without `--force`. Without it, an existing CA
//! (`ca.pem` and `ca-key.pem`) is reused to sign the requested nodes' certificates (adding
//! nodes to a cluster), and existing `server.pem`/`client.pem` pairs are kept.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::tls::{NodeIdentity, check_cluster_id};

/// Flags of `keel certs`.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// Directory to write the files to (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// The cluster id bound into every node certificate (letters, digits, '.', '_', '-').
    #[arg(long, value_parser = parse_cluster_id)]
    pub cluster_id: String,
    /// Node ids to create certificates for (comma-separated): numbers or names, as each
    /// node's `keel serve --id`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<raft::NodeName>,
    /// IP addresses the nodes and the client API are reached at (repeatable).
    #[arg(long, default_value = "127.0.0.1")]
    pub ip: Vec<IpAddr>,
    /// DNS names the client API is reached at (repeatable).
    #[arg(long, default_value = "localhost")]
    pub dns: Vec<String>,
    /// How long the certificates are valid, in days.
    #[arg(long, default_value_t = 825, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub days: u32,
    /// Overwrite existing files (a new CA too).
    #[arg(long)]
    pub force: bool,
}

/// Parses `--cluster-id`.
fn parse_cluster_id(s: &str) -> Result<String, String> {
    check_cluster_id(s).map(|()| s.to_string())
}

/// A certificate and key to write.
struct Pair {
    /// What it is, for the summary.
    what: String,
    /// Certificate file.
    cert: PathBuf,
    /// Key file.
    key: PathBuf,
}

impl Pair {
    fn new(dir: &Path, stem: &str, what: String) -> Pair {
        Pair {
            what,
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}-key.pem")),
        }
    }

    fn exists(&self) -> bool {
        self.cert.exists() || self.key.exists()
    }
}

/// Runs `keel certs`: writes the files and prints what was written.
pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    for line in create(&args)? {
        println!("{line}");
    }
    Ok(())
}

/// Creates the files; returns the summary lines.
pub fn create(args: &CertsArgs) -> anyhow::Result<Vec<String>> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut nodes = args.nodes.clone();
    nodes.sort_unstable();
    nodes.dedup();

    let ca = Pair::new(dir, "ca", "cluster CA".into());
    let reuse_ca = !args.force && ca.cert.exists() && ca.key.exists();
    let node_pairs: Vec<(raft::NodeName, Pair)> = nodes
        .iter()
        .map(|id| (id.clone(), Pair::new(dir, &format!("node-{id}"), format!("node {id}"))))
        .collect();
    let server = Pair::new(dir, "server", "client API HTTPS certificate".into());
    let client = Pair::new(dir, "client", "client certificate (for --tls-client-ca)".into());

    if !args.force {
        let mut pairs: Vec<&Pair> = node_pairs.iter().map(|(_, pair)| pair).collect();
        if !reuse_ca {
            pairs.extend([&ca, &server, &client]);
        }
        let taken: Vec<String> = pairs
            .iter()
            .flat_map(|pair| [&pair.cert, &pair.key])
            .filter(|path| path.exists())
            .map(|path| path.display().to_string())
            .collect();
        if !taken.is_empty() {
            bail!("refusing to overwrite {} (use --force to replace them)", taken.join(", "));
        }
    }

    let mut summary = Vec::new();
    let (ca_key, issuer) = if reuse_ca {
        let key_pem = std::fs::read_to_string(&ca.key)
            .with_context(|| format!("reading {}", ca.key.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("parsing the CA key {}", ca.key.display()))?;
        let cert_pem = std::fs::read_to_string(&ca.cert)
            .with_context(|| format!("reading {}", ca.cert.display()))?;
        summary.push(format!("reusing the cluster CA {}", ca.cert.display()));
        (key, cert_pem)
    } else {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("Keel cluster CA ({})", args.cluster_id));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, args.days);
        let cert = params.self_signed(&key).context("signing the CA certificate")?;
        write(&ca.cert, cert.pem().as_bytes(), false)?;
        write(&ca.key, key.serialize_pem().as_bytes(), true)?;
        summary.push(format!("wrote {} and {} ({})", ca.cert.display(), ca.key.display(), ca.what));
        (key, cert.pem())
    };
    let issuer = Issuer::from_ca_cert_pem(&issuer, &ca_key)
        .with_context(|| format!("reading the CA certificate {}", ca.cert.display()))?;

    let sign = |pair: &Pair, mut params: CertificateParams| -> anyhow::Result<String> {
        let key = KeyPair::generate().context("generating a key")?;
        validity(&mut params, args.days);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer).context("signing a certificate")?;
        write(&pair.cert, cert.pem().as_bytes(), false)?;
        write(&pair.key, key.serialize_pem().as_bytes(), true)?;
        Ok(format!("wrote {} and {} ({})", pair.cert.display(), pair.key.display(), pair.what))
    };

    for (id, pair) in &node_pairs {
        let identity = NodeIdentity { cluster: args.cluster_id.clone(), node: id.clone() };
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("keel node {id} of {}", args.cluster_id));
        params.subject_alt_names =
            vec![SanType::URI(identity.uri().try_into().context("identity URI")?)];
        params.subject_alt_names.extend(args.ip.iter().map(|ip| SanType::IpAddress(*ip)));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let line = sign(pair, params)?;
        summary.push(format!("{line}: {}", identity.uri()));
    }

    if args.force || !server.exists() {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("keel client API ({})", args.cluster_id));
        params.subject_alt_names = args.ip.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        for dns in &args.dns {
            params.subject_alt_names.push(SanType::DnsName(
                dns.clone().try_into().with_context(|| format!("--dns {dns}"))?,
            ));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        summary.push(sign(&server, params)?);
    } else {
        summary.push(format!("kept {} (exists)", server.cert.display()));
    }
    if args.force || !client.exists() {
        let mut params = CertificateParams::default();
        params.distinguished_name = name("keel client");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        summary.push(sign(&client, params)?);
    } else {
        summary.push(format!("kept {} (exists)", client.cert.display()));
    }
    Ok(summary)
}

/// A distinguished name with only a common name.
fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Valid from an hour ago (clock skew) for `days` days.
fn validity(params: &mut CertificateParams, days: u32) {
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(u64::from(days) * 86_400)).into();
}

/// Writes a file, readable only by its owner if `secret`.
fn write(path: &Path, contents: &[u8], secret: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents).with_context(|| format!("writing {}", path.display()))?;
    file.sync_all().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path, nodes: &[&str], force: bool) -> CertsArgs {
        CertsArgs {
            dir: dir.to_path_buf(),
            cluster_id: "test".into(),
            nodes: nodes.iter().map(|n| n.parse().unwrap()).collect(),
            ip: vec!["127.0.0.1".parse().unwrap()],
            dns: vec!["localhost".into()],
            days: 1,
            force,
        }
    }

    #[test]
    fn creates_loadable_node_certificates_and_refuses_to_overwrite() {
        crate::tls::install_provider();
        let dir = tempfile::tempdir().unwrap();
        create(&args(dir.path(), &["1", "2", "keel-0"], false)).unwrap();
        let files = |id: &str| crate::tls::NodeFiles {
            cert: dir.path().join(format!("node-{id}.pem")),
            key: dir.path().join(format!("node-{id}-key.pem")),
            ca: dir.path().join("ca.pem"),
        };
        let name = |id: &str| raft::NodeName::parse(id).unwrap();
        let tls = crate::tls::NodeTls::load(name("2"), &files("2")).unwrap();
        assert_eq!(tls.identity(), &NodeIdentity { cluster: "test".into(), node: name("2") });
        // A named node's certificate binds its name.
        let tls = crate::tls::NodeTls::load(name("keel-0"), &files("keel-0")).unwrap();
        assert_eq!(tls.identity().uri(), "keel://test/node/keel-0");
        // A certificate of node 1 does not load as node 2, nor as a named node.
        let err = crate::tls::NodeTls::load(name("2"), &files("1")).unwrap_err().to_string();
        assert!(err.contains("is for node 1"), "{err}");
        let err = crate::tls::NodeTls::load(name("keel-1"), &files("keel-0")).unwrap_err();
        assert!(err.to_string().contains("is for node keel-0"), "{err}");
        // Again: refused, naming the files.
        let err = create(&args(dir.path(), &["1"], false)).unwrap_err().to_string();
        assert!(err.contains("node-1.pem"), "{err}");
        // A new node with the existing CA: its certificate is valid under that CA.
        let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        create(&args(dir.path(), &["3"], false)).unwrap();
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
        crate::tls::NodeTls::load(name("3"), &files("3")).unwrap();
        // --force replaces everything, CA included.
        create(&args(dir.path(), &["1"], true)).unwrap();
        assert_ne!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
        crate::tls::NodeTls::load(name("1"), &files("1")).unwrap();
        crate::tls::reload::ApiTls::load(
            dir.path().join("server.pem"),
            dir.path().join("server-key.pem"),
            Some(dir.path().join("ca.pem")),
        )
        .unwrap();
    }
}
