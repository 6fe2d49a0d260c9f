//! TLS: HTTPS on the client API, mutual TLS between nodes, and the HTTP clients of the `keel`
//! commands. Everything runs on rustls with the `ring` crypto provider.
//!
//! # Identity binding
//!
//! A node certificate names its node with one URI subject alternative name,
//! `keel://<cluster-id>/node/<node-id>` ([`NodeIdentity`]), and is signed by the cluster CA.
//! `keel certs` ([`crate::certs`]) writes such certificates. A node reads its own cluster id
//! from its certificate ([`NodeTls::load`] refuses to start if the certificate names another
//! node id than `--id`), so no extra flag can disagree with it.
//!
//! # What is verified on the Raft address
//!
//! - Server side ([`NodeTls::server_config`]): the client must present a certificate that
//!   chains to the cluster CA with the client-auth usage, or the handshake fails. Then
//!   [`require_node`] (a middleware in front of every node-to-node route) reads the
//!   certificate's identity: no `keel://` name, or another cluster id, is answered 403 and
//!   logged under the `keel::audit` target; otherwise the proven node id travels with the
//!   request as a [`raft::network::PeerNode`], which the Raft RPC handlers (and
//!   `/keel/applied`) compare with the sender the request names.
//! - Client side ([`NodeTls::client`]): the server's certificate must chain to the cluster CA
//!   with the server-auth usage and name a node of the same cluster, and, when the caller
//!   knows which node it is calling (Raft RPCs: the target of the membership entry), that
//!   node id. Host names and IP addresses are NOT checked on this path: nodes are addressed
//!   by `ip:port`, and the node id is the identity that matters, so the verifier checks the
//!   chain and the binding instead of the name.
//!
//! # The client API
//!
//! [`ApiTls`] serves the API over HTTPS with the operator's certificate, and with
//! `--tls-client-ca` requires client certificates from that CA. Clients verify that
//! certificate in the ordinary way (host name or IP address in its SANs). A node calling
//! another node's client API (forwarding to the leader, joining, readiness probes) uses
//! [`node::Peers::api`]: it trusts the cluster CA and `KEEL_CACERT`, and presents its node
//! certificate in case the API asks for one.
//!
//! Certificates and keys are read again on SIGHUP and on `POST /admin/tls/reload`, without
//! dropping established connections ([`reload`]).
//!
//! What this module does not do: certificate revocation (CRLs, OCSP), or authorizing users (the
//! `auth` module does that).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};

pub mod reload;

use reload::{ApiTls, Current};

/// Environment variable naming a CA certificate (PEM) that the `keel` commands trust for
/// `https://` URLs, like `--cacert`.
pub const CACERT_ENV: &str = "KEEL_CACERT";

/// The URI scheme of node identities in certificates.
const IDENTITY_SCHEME: &str = "keel://";

/// The crypto provider every TLS configuration here uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes `ring` the process's default crypto provider, which reqwest clients built without an
/// explicit TLS configuration use. Idempotent; `main` calls it first thing.
///
/// reqwest is built with its `rustls` feature (aws-lc-rs as its fallback provider) rather than
/// `rustls-no-provider`: in a workspace build cargo unifies reqwest's features across crates,
/// and with no fallback every client built by a process that never installed a provider (the
/// test harness, the raft crate's tests) would panic.
pub fn install_provider() {
    // Fails only when a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("reading a PEM private key from {}", path.display()))
}

/// Reads the CA certificates of a PEM file into a root store.
pub fn read_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("{} holds an unusable CA certificate", path.display()))?;
    }
    Ok(roots)
}

/// Checks a cluster id: 1 to 64 ASCII letters, digits, `.`, `_` or `-` (it becomes part of a
/// URI in every node certificate).
pub fn check_cluster_id(id: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cluster id '{id}' must be 1 to 64 letters, digits, '.', '_' or '-' characters"
        ))
    }
}

/// The node a certificate was issued to: `keel://<cluster>/node/<node>` in its SANs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The cluster id (see [`check_cluster_id`]).
    pub cluster: String,
    /// The node: a positive number, or a name (`keel serve --id`).
    pub node: raft::NodeName,
}

impl NodeIdentity {
    /// The URI naming this identity in a certificate.
    pub fn uri(&self) -> String {
        format!("{IDENTITY_SCHEME}{}/node/{}", self.cluster, self.node)
    }

    /// Parses `keel://<cluster>/node/<id>`.
    pub fn from_uri(uri: &str) -> Result<NodeIdentity, String> {
        let bad = || format!("'{uri}' is not a node identity (keel://<cluster-id>/node/<id>)");
        let rest = uri.strip_prefix(IDENTITY_SCHEME).ok_or_else(bad)?;
        let (cluster, node) = rest.split_once("/node/").ok_or_else(bad)?;
        check_cluster_id(cluster)?;
        let id = raft::NodeName::parse(node).map_err(|_| bad())?;
        // Canonical only, so one node has one name (`007` is refused).
        if id.to_string() != node {
            return Err(bad());
        }
        Ok(NodeIdentity { cluster: cluster.to_string(), node: id })
    }

    /// The identity a certificate binds: its single `keel://` URI SAN.
    pub fn of(cert: &CertificateDer<'_>) -> Result<NodeIdentity, String> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert)
            .map_err(|e| format!("unparsable certificate: {e}"))?;
        let sans = parsed
            .subject_alternative_name()
            .map_err(|e| format!("bad subject alternative names: {e}"))?;
        let mut found = None;
        for name in sans.iter().flat_map(|ext| ext.value.general_names.iter()) {
            if let x509_parser::extensions::GeneralName::URI(uri) = name
                && uri.starts_with(IDENTITY_SCHEME)
            {
                if found.is_some() {
                    return Err("the certificate names more than one keel:// identity".into());
                }
                found = Some(NodeIdentity::from_uri(uri)?);
            }
        }
        found.ok_or_else(|| "the certificate names no keel:// node identity".into())
    }
}

/// A node's TLS setup from its `keel serve` flags.
pub struct ServeTls {
    /// The client API's HTTPS, when on.
    pub api: Option<Arc<ApiTls>>,
    /// Mutual TLS between nodes, when on.
    pub node: Option<Arc<NodeTls>>,
}

impl ServeTls {
    /// Loads and checks the files the flags name (`--tls-dir` fills in what is not given).
    pub fn from_args(args: &crate::ServeArgs) -> anyhow::Result<ServeTls> {
        let in_dir = |name: String| args.tls_dir.as_ref().map(|dir| dir.join(name));
        let api_cert = args.tls_cert.clone().or_else(|| in_dir("server.pem".into()));
        let api_key = args.tls_key.clone().or_else(|| in_dir("server-key.pem".into()));
        let api = match (&api_cert, &api_key) {
            (Some(cert), Some(key)) => {
                Some(Arc::new(ApiTls::load(cert.clone(), key.clone(), args.tls_client_ca.clone())?))
            }
            _ if args.tls_client_ca.is_some() => {
                bail!("--tls-client-ca needs HTTPS on the client API (--tls-cert and --tls-key)")
            }
            _ => None,
        };
        let id = &args.id;
        let node_cert = args.node_cert.clone().or_else(|| in_dir(format!("node-{id}.pem")));
        let node_key = args.node_key.clone().or_else(|| in_dir(format!("node-{id}-key.pem")));
        let node_ca = args.node_ca.clone().or_else(|| in_dir("ca.pem".into()));
        let node = match (node_cert, node_key, node_ca) {
            (Some(cert), Some(key), Some(ca)) => {
                Some(Arc::new(NodeTls::load(id.clone(), &NodeFiles { cert, key, ca })?))
            }
            _ => None,
        };
        Ok(ServeTls { api, node })
    }
}

/// Where a node's node-to-node TLS files are.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    /// This node's certificate (PEM, the chain if there are intermediates).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
}

/// This node's mutual-TLS material for the Raft address. See the module docs.
///
/// Invariants:
/// * the certificate in force chains to the roots in force and binds `identity`; its key fits;
/// * a reload ([`reload`]) replaces certificate, key and roots, never the identity.
pub struct NodeTls {
    /// Who this node is.
    identity: NodeIdentity,
    /// Where its files are, for reloads.
    files: NodeFiles,
    /// The material in force.
    current: NodeCurrent,
    /// The node-to-node server configuration, built once over `current`.
    server: Arc<ServerConfig>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").field("identity", &self.identity).finish_non_exhaustive()
    }
}

/// The holders of a node's replaceable material.
struct NodeCurrent {
    /// The cluster CA.
    roots: Arc<Current<RootCertStore>>,
    /// This node's certificate chain and key.
    cert: Arc<Current<CertifiedKey>>,
    /// Verifies other nodes' client certificates (the cluster CA, client-auth usage).
    client_verifier: Arc<Current<dyn ClientCertVerifier>>,
    /// Verifies other nodes' client-API certificates: the cluster CA and `KEEL_CACERT`, with
    /// host names checked.
    api_verifier: Arc<Current<dyn ServerCertVerifier>>,
}

/// A node's files, read and checked ([`NodeMaterial::read`]).
pub struct NodeMaterial {
    /// The identity the certificate binds.
    identity: NodeIdentity,
    /// The cluster CA.
    roots: Arc<RootCertStore>,
    /// The certificate chain and key.
    cert: CertifiedKey,
    /// See [`NodeCurrent::client_verifier`].
    client_verifier: Arc<dyn ClientCertVerifier>,
    /// See [`NodeCurrent::api_verifier`].
    api_verifier: Arc<dyn ServerCertVerifier>,
}

impl NodeMaterial {
    /// Reads node `id`'s files and checks them: the certificate chains to the CA, binds a
    /// node identity whose node id is `id`, and fits the key.
    fn read(id: raft::NodeName, files: &NodeFiles) -> anyhow::Result<NodeMaterial> {
        let cert = reload::certified_key(&files.cert, &files.key)?;
        let chain = &cert.cert;
        let roots = Arc::new(read_roots(&files.ca)?);
        let identity = NodeIdentity::of(&chain[0])
            .map_err(|e| anyhow::anyhow!("node certificate {}: {e}", files.cert.display()))?;
        if identity.node != id {
            bail!(
                "node certificate {} is for node {} ({}), but this node is --id {id}",
                files.cert.display(),
                identity.node,
                identity.uri()
            );
        }
        let parsed = ParsedCertificate::try_from(&chain[0])
            .with_context(|| format!("node certificate {}", files.cert.display()))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &chain[1..],
            UnixTime::now(),
            provider().signature_verification_algorithms.all,
        )
        .with_context(|| {
            format!(
                "node certificate {} is not valid under the CA {}",
                files.cert.display(),
                files.ca.display()
            )
        })?;
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .context("building the node client-certificate verifier")?;
        let mut api_roots = extra_roots()?;
        api_roots.roots.extend(roots.roots.iter().cloned());
        let api_verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(api_roots), provider())
                .build()
                .context("building the client-API certificate verifier")?;
        Ok(NodeMaterial { identity, roots, cert, client_verifier, api_verifier })
    }
}

impl NodeTls {
    /// Loads node `id`'s files and checks them ([`NodeMaterial::read`]).
    pub fn load(id: raft::NodeName, files: &NodeFiles) -> anyhow::Result<NodeTls> {
        let material = NodeMaterial::read(id, files)?;
        let current = NodeCurrent {
            roots: Arc::new(Current::new(material.roots)),
            cert: Arc::new(Current::new(Arc::new(material.cert))),
            client_verifier: Arc::new(Current::new(material.client_verifier)),
            api_verifier: Arc::new(Current::new(material.api_verifier)),
        };
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_client_cert_verifier(current.client_verifier.clone())
            .with_cert_resolver(current.cert.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(NodeTls {
            identity: material.identity,
            files: files.clone(),
            current,
            server: Arc::new(server),
        })
    }

    /// Reads this node's files again and checks them as [`NodeTls::load`] does, and that they
    /// bind the same identity; changes nothing yet.
    pub fn read_files(&self) -> anyhow::Result<NodeMaterial> {
        let material = NodeMaterial::read(self.identity.node.clone(), &self.files)?;
        if material.identity != self.identity {
            bail!(
                "node certificate {} names {}, but this node is {}: a reload cannot change a \
                 node's cluster",
                self.files.cert.display(),
                material.identity.uri(),
                self.identity.uri()
            );
        }
        Ok(material)
    }

    /// Puts material read by [`NodeTls::read_files`] in force; says what is served.
    pub fn put_in_force(&self, material: NodeMaterial) -> String {
        let what = reload::describe(&material.cert.cert[0]);
        self.current.roots.set(material.roots);
        self.current.cert.set(Arc::new(material.cert));
        self.current.client_verifier.set(material.client_verifier);
        self.current.api_verifier.set(material.api_verifier);
        what
    }

    /// This node's identity (from its certificate).
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// The server configuration of the Raft address: client certificates from the cluster CA
    /// required.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// A client configuration presenting this node's certificate and accepting only servers
    /// whose certificate is a node of this cluster (node `expect` if given).
    pub fn client_config(&self, expect: Option<raft::NodeId>) -> anyhow::Result<ClientConfig> {
        let verifier = NodeVerifier {
            roots: self.current.roots.clone(),
            provider: provider(),
            cluster: self.identity.cluster.clone(),
            expect,
        };
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(self.current.cert.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// An HTTP client for other nodes' Raft addresses; see [`NodeTls::client_config`].
    pub fn client(&self, expect: Option<raft::NodeId>) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .tls_backend_preconfigured(self.client_config(expect)?)
            .build()?)
    }

    /// The Raft transport: HTTPS, one client per target node, each accepting only that node.
    pub fn transport(self: &Arc<Self>) -> raft::network::Transport {
        let tls = self.clone();
        raft::network::Transport::https(move |target| {
            tls.client(Some(target)).map_err(|e| format!("{e:#}"))
        })
    }
}

/// Verifies a node's server certificate: the chain to the cluster CA and the identity
/// binding, not the host name (see the module docs).
#[derive(Debug)]
struct NodeVerifier {
    /// The cluster CA in force.
    roots: Arc<Current<RootCertStore>>,
    /// Signature algorithms.
    provider: Arc<CryptoProvider>,
    /// The cluster the server must belong to.
    cluster: String,
    /// The node the server must be, when known.
    expect: Option<raft::NodeId>,
}

/// A certificate refusal carrying a message.
fn refuse(message: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        std::io::Error::other(message),
    ))))
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots.get(),
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let server = server_name.to_str();
        let identity = NodeIdentity::of(end_entity).map_err(|e| {
            tracing::warn!(target: "keel::audit", %server, error = %e, "refused a node's server certificate");
            refuse(e)
        })?;
        if identity.cluster != self.cluster {
            let e = format!(
                "the server's certificate is {}, of cluster '{}', not of this cluster '{}'",
                identity.uri(),
                identity.cluster,
                self.cluster
            );
            tracing::warn!(target: "keel::audit", %server, error = %e, "refused a node's server certificate");
            return Err(refuse(e));
        }
        if let Some(expect) = self.expect
            && identity.node.id() != expect
        {
            let e = format!(
                "the server at this address is node {} (Raft id {}), but the node of Raft id {expect} was expected",
                identity.node,
                identity.node.id()
            );
            tracing::warn!(target: "keel::audit", %server, error = %e, "refused a node's server certificate");
            return Err(refuse(e));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Who is at the other end of a connection: put into every request's extensions by
/// [`crate::serve`].
#[derive(Debug, Clone)]
pub struct Peer {
    /// The remote address.
    pub addr: SocketAddr,
    /// The certificate chain the client presented over TLS, if any.
    pub certificates: Option<Arc<[CertificateDer<'static>]>>,
}

/// Middleware of the Raft address under mutual TLS: admits a request only if its connection
/// presented a node certificate of this cluster, and passes the proven node id on as a
/// [`raft::network::PeerNode`]. Refusals are answered 403 and logged under `keel::audit`.
pub async fn require_node(
    State(tls): State<Arc<NodeTls>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request.extensions().get::<Peer>().cloned();
    let addr = peer.as_ref().map(|p| p.addr.to_string()).unwrap_or_default();
    let path = request.uri().path().to_string();
    let identity = match peer.as_ref().and_then(|p| p.certificates.as_ref()) {
        Some(chain) if !chain.is_empty() => NodeIdentity::of(&chain[0]),
        _ => Err("no client certificate".to_string()),
    };
    match identity {
        Ok(identity) if identity.cluster == tls.identity.cluster => {
            request.extensions_mut().insert(raft::network::PeerNode(identity.node.id()));
            next.run(request).await
        }
        Ok(identity) => {
            tracing::warn!(
                target: "keel::audit",
                peer = %addr,
                %path,
                certificate = %identity.uri(),
                cluster = %tls.identity.cluster,
                "refused a node-to-node request: the certificate is of another cluster"
            );
            (
                StatusCode::FORBIDDEN,
                format!(
                    "the client certificate ({}) is of cluster '{}', not '{}'",
                    identity.uri(),
                    identity.cluster,
                    tls.identity.cluster
                ),
            )
                .into_response()
        }
        Err(e) => {
            tracing::warn!(
                target: "keel::audit",
                peer = %addr,
                %path,
                error = %e,
                "refused a node-to-node request: no node identity"
            );
            (StatusCode::FORBIDDEN, format!("node-to-node requests need a node certificate: {e}"))
                .into_response()
        }
    }
}

/// How a node reaches other nodes ([`node::Peers`]): over HTTPS to their client APIs if
/// `api_https`, and with mutual TLS between nodes if `tls` is given. Under mutual TLS a joining
/// node must prove its identity ([`verify_node`]).
pub fn peers(api_https: bool, tls: Option<Arc<NodeTls>>) -> anyhow::Result<node::Peers> {
    let mut api = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none());
    if api_https {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let mut config = match &tls {
            Some(tls) => builder
                .dangerous()
                .with_custom_certificate_verifier(tls.current.api_verifier.clone())
                .with_client_cert_resolver(tls.current.cert.clone()),
            None => builder.with_root_certificates(extra_roots()?).with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        api = api.tls_backend_preconfigured(config);
    }
    let node = match &tls {
        Some(tls) => tls.client(None)?,
        None => reqwest::Client::builder().no_proxy().tcp_nodelay(true).build()?,
    };
    let verify = tls.clone().map(|tls| -> node::peer::VerifyNode {
        Arc::new(move |id, raft_addr| Box::pin(verify_node(tls.clone(), id, raft_addr)))
    });
    Ok(node::Peers {
        api_scheme: if api_https { "https" } else { "http" },
        api: api.build()?,
        node_scheme: if tls.is_some() { "https" } else { "http" },
        node,
        verify,
    })
}

/// Checks, under mutual TLS, that the server at `raft_addr` holds node `id`'s certificate of
/// this cluster (a TLS handshake that proves it).
async fn verify_node(tls: Arc<NodeTls>, id: raft::NodeId, raft_addr: String) -> Result<(), String> {
    let client = tls.client(Some(id)).map_err(|e| format!("{e:#}"))?;
    let url = format!("https://{raft_addr}/keel/identity");
    // Any HTTP answer proves the handshake, and with it the identity.
    match client.get(&url).timeout(std::time::Duration::from_secs(10)).send().await {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "the node at {raft_addr} did not prove that it is node {id} of cluster '{}': {}",
            tls.identity.cluster,
            error_chain(&e)
        )),
    }
}

pub use node::membership::error_chain;

/// The roots in `KEEL_CACERT`, if set; empty otherwise.
fn extra_roots() -> anyhow::Result<RootCertStore> {
    match std::env::var_os(CACERT_ENV) {
        Some(path) if !path.is_empty() => read_roots(Path::new(&path))
            .with_context(|| format!("{CACERT_ENV}={}", Path::new(&path).display())),
        _ => Ok(RootCertStore::empty()),
    }
}

/// Environment variables naming a client certificate and its key (PEM) that the `keel`
/// commands present, for a client API started with `--tls-client-ca`.
pub const CLIENT_CERT_ENV: [&str; 2] = ["KEEL_CLIENT_CERT", "KEEL_CLIENT_KEY"];

/// A reqwest client builder for the `keel` commands that talk to a node: trusts the CA
/// certificate `cacert` (a `--cacert` flag) or else the one named by `KEEL_CACERT` for
/// `https://` URLs, besides the system's roots; presents the client certificate named by
/// `KEEL_CLIENT_CERT` and `KEEL_CLIENT_KEY` if set; uses no proxy. `keel shell` and
/// `keel changes` should build their clients with it.
pub fn client_builder(cacert: Option<&Path>) -> anyhow::Result<reqwest::ClientBuilder> {
    install_provider();
    let mut builder = reqwest::Client::builder().no_proxy();
    let env = |name: &str| std::env::var_os(name).filter(|p| !p.is_empty()).map(PathBuf::from);
    if let Some(path) = cacert.map(Path::to_path_buf).or_else(|| env(CACERT_ENV)) {
        for cert in read_certs(&path)? {
            let cert = reqwest::Certificate::from_der(&cert)
                .with_context(|| format!("CA certificate in {}", path.display()))?;
            builder = builder.add_root_certificate(cert);
        }
    }
    let [cert_var, key_var] = CLIENT_CERT_ENV;
    match (env(cert_var), env(key_var)) {
        (Some(cert), Some(key)) => {
            let mut pem = std::fs::read(&cert)
                .with_context(|| format!("reading {cert_var}={}", cert.display()))?;
            pem.push(b'\n');
            pem.extend(
                std::fs::read(&key)
                    .with_context(|| format!("reading {key_var}={}", key.display()))?,
            );
            let identity = reqwest::Identity::from_pem(&pem)
                .with_context(|| format!("the client certificate {}", cert.display()))?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        _ => bail!("set both {cert_var} and {key_var}, or neither"),
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip() {
        let id = NodeIdentity { cluster: "prod-1".into(), node: raft::NodeName::numeric(7) };
        assert_eq!(id.uri(), "keel://prod-1/node/7");
        assert_eq!(NodeIdentity::from_uri(&id.uri()), Ok(id));
        let named = raft::NodeName::parse("keel-0").unwrap();
        let id = NodeIdentity { cluster: "prod-1".into(), node: named.clone() };
        assert_eq!(id.uri(), "keel://prod-1/node/keel-0");
        assert_eq!(NodeIdentity::from_uri(&id.uri()).map(|i| i.node), Ok(named));
    }

    #[test]
    fn bad_identities_are_refused() {
        for uri in [
            "keel://prod/node/0",
            "keel://prod/node/007",
            "keel://prod/node/+7",
            "keel://prod/node/a b",
            "keel://prod/node/",
            "keel:///node/1",
            "keel://a b/node/1",
            "http://prod/node/1",
            "keel://prod/nodes/1",
        ] {
            assert!(NodeIdentity::from_uri(uri).is_err(), "{uri} accepted");
        }
    }

    #[test]
    fn cluster_ids() {
        assert!(check_cluster_id("prod.eu-1_a").is_ok());
        assert!(check_cluster_id("").is_err());
        assert!(check_cluster_id("a/b").is_err());
        assert!(check_cluster_id(&"x".repeat(65)).is_err());
    }
}
