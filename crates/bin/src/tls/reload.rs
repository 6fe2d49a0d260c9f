//! Certificates that change without a restart.
//!
//! Every TLS configuration of a node is built once, at start, over [`Current`] holders instead
//! of fixed certificates: the server's certificate is chosen per handshake by a resolver, a
//! client's certificate likewise, and the verifiers of client and server certificates delegate
//! to the verifier in force. [`Reload::run`] reads the files again and swaps what the holders
//! hold. The next handshake uses the new files; connections already established keep the
//! session they negotiated, so nothing is dropped: the replication streams, a client's
//! keep-alive connection and a transfer under way go on.
//!
//! What is reloaded: the client API's certificate, key and client CA (`--tls-cert`,
//! `--tls-key`, `--tls-client-ca`), and the node's certificate, key and cluster CA (`--node-cert`,
//! `--node-key`, `--node-ca`, or `--tls-dir`'s files), for serving and for calling other nodes.
//! A reload is all or nothing: every file is read and checked first (as at start: the key
//! fits the certificate, the node certificate chains to the CA and names this same node of
//! this same cluster), and only then is anything swapped; a refused reload leaves everything in
//! force and says why. TLS cannot be turned on or off by a reload.
//!
//! It runs on SIGHUP (with the credentials file, [`crate::auth`]) and on
//! `POST /admin/tls/reload`.
//!
//! One difference from a fixed configuration: the server no longer sends the client CA's names
//! as hints in its certificate request (rustls's verifier returns them by reference, which a
//! holder of a replaceable verifier cannot lend). Clients then offer the certificate they have,
//! which is what curl and the `keel` commands do anyway.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use serde_json::json;

use super::{NodeTls, provider, read_certs, read_key, read_roots};
use crate::http::{error_response, json_response};

/// A value in force that a reload may replace; readers take the one in force at the moment.
pub struct Current<T: ?Sized>(RwLock<Arc<T>>);

impl<T: ?Sized> Current<T> {
    /// Holds `value`.
    pub fn new(value: Arc<T>) -> Current<T> {
        Current(RwLock::new(value))
    }

    /// The value in force.
    pub fn get(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Puts `value` in force.
    pub fn set(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = value;
    }
}

impl<T: ?Sized> std::fmt::Debug for Current<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Current(..)")
    }
}

impl ResolvesServerCert for Current<CertifiedKey> {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for Current<CertifiedKey> {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The signature methods that client and server certificate verifiers share, delegated to the
/// verifier in force.
macro_rules! signatures_of_the_verifier_in_force {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.get().verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.get().verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.get().supported_verify_schemes()
        }
    };
}

impl ClientCertVerifier for Current<dyn ClientCertVerifier> {
    fn offer_client_auth(&self) -> bool {
        self.get().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.get().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // See the module docs.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.get().verify_client_cert(end_entity, intermediates, now)
    }

    signatures_of_the_verifier_in_force!();
}

impl ServerCertVerifier for Current<dyn ServerCertVerifier> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.get().verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    signatures_of_the_verifier_in_force!();
}

/// A certificate chain and its key, read from PEM files and checked to fit each other.
pub fn certified_key(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<CertifiedKey> {
    let chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    let certified = CertifiedKey::from_der(chain, key_der, &provider()).with_context(|| {
        format!("the key in {} does not fit the certificate in {}", key.display(), cert.display())
    })?;
    Ok(certified)
}

/// A verifier requiring client certificates signed by the CA in `ca`.
pub fn client_verifier(ca: &std::path::Path) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let roots = Arc::new(read_roots(ca)?);
    WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .with_context(|| format!("client CA {}", ca.display()))
}

/// The client API's HTTPS: its files and what a reload replaces.
pub struct ApiTls {
    /// `--tls-cert`.
    cert_path: PathBuf,
    /// `--tls-key`.
    key_path: PathBuf,
    /// `--tls-client-ca`, if client certificates are required.
    client_ca: Option<PathBuf>,
    /// The certificate served.
    cert: Arc<Current<CertifiedKey>>,
    /// The client-certificate verifier, with `client_ca`.
    verifier: Option<Arc<Current<dyn ClientCertVerifier>>>,
    /// The server configuration, built once over the holders.
    config: Arc<ServerConfig>,
}

impl ApiTls {
    /// Loads and checks the files: `cert`/`key` (PEM), and client certificates required from
    /// `client_ca` if given.
    pub fn load(cert: PathBuf, key: PathBuf, client_ca: Option<PathBuf>) -> anyhow::Result<ApiTls> {
        let served = Arc::new(Current::new(Arc::new(certified_key(&cert, &key)?)));
        let verifier = match &client_ca {
            Some(ca) => Some(Arc::new(Current::new(client_verifier(ca)?))),
            None => None,
        };
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match &verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(served.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ApiTls {
            cert_path: cert,
            key_path: key,
            client_ca,
            cert: served,
            verifier,
            config: Arc::new(config),
        })
    }

    /// The server configuration of the client API.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// Reads and checks the files, changing nothing yet.
    fn read_files(&self) -> anyhow::Result<ApiFiles> {
        Ok(ApiFiles {
            served: certified_key(&self.cert_path, &self.key_path)?,
            verifier: self.client_ca.as_deref().map(client_verifier).transpose()?,
        })
    }

    /// Puts files read by [`ApiTls::read_files`] in force; says what is served.
    fn put_in_force(&self, files: ApiFiles) -> String {
        let what = describe(&files.served.cert[0]);
        self.cert.set(Arc::new(files.served));
        if let (Some(holder), Some(verifier)) = (&self.verifier, files.verifier) {
            holder.set(verifier);
        }
        what
    }
}

/// The client API's files, read and checked.
struct ApiFiles {
    /// The certificate to serve.
    served: CertifiedKey,
    /// The client-certificate verifier, if client certificates are required.
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

/// A certificate's subject, serial number and end of validity, for the log and the answer.
pub fn describe(cert: &CertificateDer<'_>) -> String {
    match x509_parser::parse_x509_certificate(cert) {
        Ok((_, parsed)) => format!(
            "{} (serial {}, valid until {})",
            parsed.subject(),
            parsed.raw_serial_as_string(),
            parsed.validity().not_after
        ),
        Err(e) => format!("an unparsable certificate ({e})"),
    }
}

/// Everything a reload touches: the client API's TLS and the node's.
#[derive(Clone, Default)]
pub struct Reload {
    /// The client API's HTTPS, if on.
    pub api: Option<Arc<ApiTls>>,
    /// Mutual TLS between nodes, if on.
    pub node: Option<Arc<NodeTls>>,
}

impl Reload {
    /// Whether there is anything to reload.
    pub fn any(&self) -> bool {
        self.api.is_some() || self.node.is_some()
    }

    /// Reads every file again; all or nothing (see the module docs). Returns what is now
    /// served, as JSON.
    pub fn run(&self) -> anyhow::Result<serde_json::Value> {
        // Check everything before swapping anything.
        let api = match &self.api {
            Some(api) => Some(api.read_files().context("client API")?),
            None => None,
        };
        let node = match &self.node {
            Some(node) => Some(node.read_files().context("node-to-node TLS")?),
            None => None,
        };
        let mut answer = json!({});
        if let (Some(holder), Some(files)) = (&self.api, api) {
            answer["api"] = json!(holder.put_in_force(files));
        }
        if let (Some(holder), Some(material)) = (&self.node, node) {
            answer["node"] = json!(holder.put_in_force(material));
        }
        Ok(answer)
    }

    /// Logs the outcome of a reload under the audit target.
    fn log(outcome: &anyhow::Result<serde_json::Value>, trigger: &str) {
        match outcome {
            Ok(served) => {
                tracing::info!(target: crate::auth::AUDIT, %trigger, %served, "certificates reloaded")
            }
            Err(e) => tracing::error!(
                target: crate::auth::AUDIT,
                %trigger,
                error = %format!("{e:#}"),
                "certificate reload refused; the certificates in force stay"
            ),
        }
    }
}

/// `POST /admin/tls/reload`.
pub fn router(reload: Reload) -> Router {
    Router::new().route("/admin/tls/reload", post(reload_route)).with_state(reload)
}

/// Reads the certificates again: 200 with what is served, 400 with the reason if refused.
async fn reload_route(State(reload): State<Reload>) -> Response {
    if !reload.any() {
        return error_response(
            StatusCode::BAD_REQUEST,
            "this node serves no TLS: there are no certificates to reload",
        );
    }
    let outcome = match tokio::task::spawn_blocking(move || reload.run()).await {
        Ok(outcome) => outcome,
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    Reload::log(&outcome, "api");
    match outcome {
        Ok(served) => json_response(StatusCode::OK, &served, false),
        Err(e) => error_response(StatusCode::BAD_REQUEST, format!("{e:#}")),
    }
}

/// On every SIGHUP, for as long as the process runs: reloads the credentials file (if any) and
/// the certificates (if any).
pub async fn on_sighup(auth: Option<Arc<crate::auth::Auth>>, reload: Reload) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install a SIGHUP handler: reload with the API");
            return;
        }
    };
    while hup.recv().await.is_some() {
        if let Some(auth) = &auth {
            crate::auth::reload_logged(auth.clone(), "SIGHUP").await;
        }
        if reload.any() {
            let reload = reload.clone();
            match tokio::task::spawn_blocking(move || reload.run()).await {
                Ok(outcome) => Reload::log(&outcome, "SIGHUP"),
                Err(e) => tracing::error!(error = %e, "certificate reload failed"),
            }
        }
    }
}
