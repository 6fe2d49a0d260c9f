//! Users and permissions for the client API: HTTP basic auth checked against a credentials file
//! in rqlite's format, and an audit log.
//!
//! The file (`keel serve --auth FILE`) is a JSON array of users:
//!
//! ```json
//! [
//!   {"username": "admin", "password": "$argon2id$v=19$m=19456,t=2,p=1$...", "perms": ["all"]},
//!   {"username": "app", "password": "plain text works too", "perms": ["query", "execute"]},
//!   {"username": "*", "perms": ["status", "ready"]}
//! ]
//! ```
//!
//! A password is an argon2 PHC string (`keel hash-password` makes one), a bcrypt hash
//! (`$2a$`/`$2b$`/`$2y$`, as rqlite accepts), or plain text. `*` stands for everyone, with or
//! without credentials. Permissions are rqlite's (`all`, `execute`, `query`, `load`, `backup`,
//! `status`, `ready`, `join`, `join-read-only`, `remove`, `snapshot`, `leader-ops`, `ui`) plus
//! Keel's `admin` (promotion, membership changes, reloading this file). Each route needs the
//! permissions [`required`] lists; a path it does not know needs `all`, so a route added later
//! is closed until it is listed.
//!
//! The check follows rqlite's order: if `*` has the permission, anyone may; otherwise the
//! request must carry the credentials of a user who has it (or `all`). Unlike rqlite, Keel
//! tells the two failures apart: no or wrong credentials are 401 (with `WWW-Authenticate`), a
//! known user without the permission is 403.
//!
//! Argon2 costs tens of milliseconds by design, so a successful check is remembered for
//! [`CACHE_TTL`] under a keyed SHA-256 of the user and password (the key is random per
//! process; the cache never holds a password). Plain-text passwords are kept the same way, as
//! keyed digests compared in constant time. An unknown user costs an argon2 verification too,
//! so the answer's timing does not tell which users exist.
//!
//! The file is read again on SIGHUP and on `POST /admin/auth/reload`; a file that does not
//! parse is refused and the users in force stay. Authentication failures and administrative
//! actions are logged under the tracing target `keel::audit`.
//!
//! Failed logins are limited per user name and per client address ([`limit`], `keel serve
//! --auth-failures-per-minute`): past the limit such requests get 429 and `Retry-After`.
//!
//! A follower checks a request before forwarding it and forwards the caller's `Authorization`
//! header, nothing of its own, so the leader checks the same caller again: a follower cannot
//! lend a request more rights than its caller has.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use argon2::{Argon2, PasswordHasher as _, PasswordVerifier as _};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::post;
use base64::Engine as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::http::{error_response, json_response};

pub mod limit;

/// The tracing target of the audit log.
pub const AUDIT: &str = "keel::audit";

/// How long a successful password check is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(600);

/// The most remembered checks; the cache is emptied when it is full.
const CACHE_MAX: usize = 10_000;

/// A permission, as named in the credentials file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Perm {
    /// Everything.
    All,
    /// `/db/execute` (and the write half of `/db/request`).
    Execute,
    /// `/db/query`, the read half of `/db/request`, and the change stream.
    Query,
    /// `/db/load` and `/boot`.
    Load,
    /// `/db/backup`.
    Backup,
    /// `/status`, `/nodes`, `/metrics`, `GET /leader`.
    Status,
    /// `/readyz`.
    Ready,
    /// `/join` as a voter or a learner.
    Join,
    /// `/join` as a learner only (rqlite's `join-read-only`).
    JoinReadOnly,
    /// `DELETE /remove`.
    Remove,
    /// Snapshots (rqlite's `/snapshot`; accepted for compatibility).
    Snapshot,
    /// `POST /leader` (step down).
    LeaderOps,
    /// The web console.
    Ui,
    /// Keel's `/admin/*`: promote, membership, reloading users.
    Admin,
}

impl std::str::FromStr for Perm {
    type Err = String;

    fn from_str(s: &str) -> Result<Perm, String> {
        Ok(match s {
            "all" => Perm::All,
            "execute" => Perm::Execute,
            "query" => Perm::Query,
            "load" => Perm::Load,
            "backup" => Perm::Backup,
            "status" => Perm::Status,
            "ready" => Perm::Ready,
            "join" => Perm::Join,
            "join-read-only" | "join-read-replica" => Perm::JoinReadOnly,
            "remove" => Perm::Remove,
            "snapshot" => Perm::Snapshot,
            "leader-ops" => Perm::LeaderOps,
            "ui" => Perm::Ui,
            "admin" => Perm::Admin,
            other => return Err(format!("unknown permission {other:?}")),
        })
    }
}

impl std::fmt::Display for Perm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Perm::All => "all",
            Perm::Execute => "execute",
            Perm::Query => "query",
            Perm::Load => "load",
            Perm::Backup => "backup",
            Perm::Status => "status",
            Perm::Ready => "ready",
            Perm::Join => "join",
            Perm::JoinReadOnly => "join-read-only",
            Perm::Remove => "remove",
            Perm::Snapshot => "snapshot",
            Perm::LeaderOps => "leader-ops",
            Perm::Ui => "ui",
            Perm::Admin => "admin",
        })
    }
}

/// What a request needs: every entry, each satisfied by any of its permissions.
pub type Needs = &'static [&'static [Perm]];

/// The permissions a request needs, by method and path. Every path needs something; a learner's
/// join, which `join-read-only` also allows, is told apart by [`guard`], which reads the body.
pub fn required(method: &Method, path: &str) -> Needs {
    match (method, path) {
        (_, "/db/execute") => &[&[Perm::Execute]],
        (_, p) if p.starts_with("/db/queue/") || p.starts_with("/db/requests/") => {
            &[&[Perm::Execute]]
        }
        (_, "/db/query") => &[&[Perm::Query]],
        (_, "/db/request") => &[&[Perm::Query], &[Perm::Execute]],
        (_, "/db/changes" | "/db/checksum") => &[&[Perm::Query]],
        (_, "/db/checksum/report") => &[&[Perm::Admin]],
        (_, "/db/backup") => &[&[Perm::Backup]],
        (_, "/db/load" | "/boot") => &[&[Perm::Load]],
        (_, "/status" | "/nodes" | "/metrics") => &[&[Perm::Status]],
        (&Method::GET, "/leader") => &[&[Perm::Status, Perm::LeaderOps]],
        (_, "/leader") => &[&[Perm::LeaderOps, Perm::Admin]],
        (_, "/readyz") => &[&[Perm::Ready]],
        (_, "/join" | "/notify") => &[&[Perm::Join]],
        (_, "/remove") => &[&[Perm::Remove, Perm::Admin]],
        (_, p) if p == "/console" || p.starts_with("/console/") => &[&[Perm::Ui]],
        (_, p) if p.starts_with("/admin/") => &[&[Perm::Admin]],
        _ => &[&[Perm::All]],
    }
}

/// One user's entry in the credentials file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// The name; `*` for everyone.
    username: String,
    /// Plain text, an argon2 PHC string or a bcrypt hash; absent only for `*`.
    #[serde(default)]
    password: Option<String>,
    /// Permission names.
    #[serde(default)]
    perms: Vec<String>,
}

/// How a user's password is checked.
enum Secret {
    /// A plain-text password, kept as its keyed digest.
    Plain([u8; 32]),
    /// An argon2 PHC string.
    Argon2(String),
    /// A bcrypt hash.
    Bcrypt(String),
}

/// A user from the file.
struct User {
    /// How the password is checked.
    secret: Secret,
    /// What the user may do.
    perms: BTreeSet<Perm>,
}

/// The users in force.
#[derive(Default)]
struct Users {
    /// By name.
    users: HashMap<String, User>,
    /// What everyone may do (`*`).
    anyone: BTreeSet<Perm>,
}

/// Whether `perms` satisfies `needs`.
fn grants(perms: &BTreeSet<Perm>, needs: Needs) -> bool {
    perms.contains(&Perm::All) || needs.iter().all(|any| any.iter().any(|p| perms.contains(p)))
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No credentials, unknown user or wrong password: 401.
    Unauthenticated(String),
    /// A known user without the permission: 403.
    Forbidden(String),
}

/// Why [`Auth::login`] refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    /// Wrong credentials, or a user without the permission.
    Denied(Denied),
    /// Too many failed logins for the user or the address: the reason says when to retry.
    TooMany {
        /// What to tell the client.
        reason: String,
    },
}

/// The credentials of a node, loaded from a file and reloadable.
pub struct Auth {
    /// The credentials file.
    path: PathBuf,
    /// The users in force.
    users: RwLock<Arc<Users>>,
    /// The random key of the digests.
    key: [u8; 32],
    /// Digests of recently verified (user, password) pairs and when they were verified.
    cache: Mutex<HashMap<[u8; 32], Instant>>,
    /// An argon2 hash checked for unknown users, so they cost what known ones do.
    decoy: String,
    /// Failed logins per user and address.
    limiter: limit::Limiter,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Auth {
    /// Reads the credentials file; fails with a message naming the problem. `failures_per_minute`
    /// failed logins are allowed per user and per client address (0: any number).
    pub fn load(path: &Path, failures_per_minute: usize) -> anyhow::Result<Auth> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let decoy = hash_password("decoy password for unknown users")?;
        let auth = Auth {
            path: path.to_path_buf(),
            users: RwLock::new(Arc::new(Users::default())),
            key,
            cache: Mutex::new(HashMap::new()),
            decoy,
            limiter: limit::Limiter::new(failures_per_minute),
        };
        auth.reload()?;
        Ok(auth)
    }

    /// Reads the file again and puts its users in force; on error the users in force stay.
    /// Returns the number of users.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("reading credentials file {}", self.path.display()))?;
        let users = self
            .parse(&text)
            .with_context(|| format!("credentials file {}", self.path.display()))?;
        let count = users.users.len();
        *self.users.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(users);
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).clear();
        Ok(count)
    }

    /// Parses the file's text.
    fn parse(&self, text: &str) -> anyhow::Result<Users> {
        let entries: Vec<Entry> = serde_json::from_str(text)
            .context("expected a JSON array of {\"username\", \"password\", \"perms\"}")?;
        let mut users = Users::default();
        for entry in entries {
            let perms = entry
                .perms
                .iter()
                .map(|p| p.parse::<Perm>())
                .collect::<Result<BTreeSet<_>, _>>()
                .map_err(|e| anyhow::anyhow!("user {:?}: {e}", entry.username))?;
            if entry.username == "*" {
                users.anyone.extend(perms);
                continue;
            }
            if entry.username.is_empty() || entry.username.contains(':') {
                anyhow::bail!("user {:?}: a name must be non-empty without ':'", entry.username);
            }
            let Some(password) = entry.password else {
                anyhow::bail!("user {:?} has no password", entry.username);
            };
            let secret = if password.starts_with("$argon2") {
                argon2::PasswordHash::new(&password).map_err(|e| {
                    anyhow::anyhow!("user {:?}: bad argon2 hash: {e}", entry.username)
                })?;
                Secret::Argon2(password)
            } else if ["$2a$", "$2b$", "$2y$"].iter().any(|p| password.starts_with(p)) {
                Secret::Bcrypt(password)
            } else {
                Secret::Plain(self.digest(&entry.username, &password))
            };
            if users.users.insert(entry.username.clone(), User { secret, perms }).is_some() {
                anyhow::bail!("user {:?} appears twice", entry.username);
            }
        }
        Ok(users)
    }

    /// The keyed digest of a user and password.
    fn digest(&self, user: &str, password: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.key);
        hasher.update(user.as_bytes());
        hasher.update([0]);
        hasher.update(password.as_bytes());
        hasher.finalize().into()
    }

    /// Checks a request's credentials against what it needs. `Ok` carries the user's name
    /// (`None` when `*` grants it). May block for an argon2 or bcrypt verification; call it from
    /// a blocking thread, after [`Auth::check_quick`] could not decide.
    pub fn check(&self, headers: &HeaderMap, needs: Needs) -> Result<Option<String>, Denied> {
        self.check_with(headers, needs, true)
            .unwrap_or_else(|| unreachable!("a check allowed to hash always decides"))
    }

    /// Whether `*` has what `needs` lists: then no password is asked for.
    pub fn anyone_may(&self, needs: Needs) -> bool {
        grants(&self.users.read().unwrap_or_else(PoisonError::into_inner).anyone, needs)
    }

    /// A login by user name and password from `addr`, for a protocol other than HTTP (the
    /// PostgreSQL endpoint): the failed-login limit, the check, the audit log line and the
    /// count of a failure, as [`guard`] does for a request. May block for a password hash:
    /// call it from a blocking thread. `what` names the endpoint in the log.
    pub fn login(
        &self,
        name: &str,
        password: &str,
        addr: std::net::IpAddr,
        needs: Needs,
        what: &str,
    ) -> Result<Option<String>, Login> {
        let keys = [limit::Key::User(name.to_string()), limit::Key::Addr(addr)];
        let now = Instant::now();
        if let Some((key, wait)) = self.limiter.blocked(&keys, now) {
            let (reason, seconds) = too_many(&key, wait, self.limiter.per_minute());
            tracing::warn!(target: AUDIT, endpoint = what, %key, seconds, "login refused: too many failures");
            return Err(Login::TooMany { reason });
        }
        let credentials = Ok(Some((name.to_string(), password.to_string())));
        match self.check_credentials(credentials, needs, true) {
            Some(Ok(user)) => Ok(user),
            Some(Err(Denied::Unauthenticated(reason))) => {
                tracing::warn!(target: AUDIT, endpoint = what, %addr, %reason, "authentication failed");
                self.limiter.failed(&keys, now);
                Err(Login::Denied(Denied::Unauthenticated(reason)))
            }
            Some(Err(denied)) => {
                tracing::warn!(target: AUDIT, endpoint = what, %addr, reason = ?denied, "permission denied");
                Err(Login::Denied(denied))
            }
            None => unreachable!("a check allowed to hash always decides"),
        }
    }

    /// [`Auth::check`] without hashing, cheap enough for an async thread: `*`, plain-text
    /// passwords, wrong credentials of plain-text users and cached checks decide here. `None`
    /// when deciding needs an argon2 or bcrypt verification (a hashed password not in the
    /// cache, or an unknown user, who costs a decoy verification).
    pub fn check_quick(
        &self,
        headers: &HeaderMap,
        needs: Needs,
    ) -> Option<Result<Option<String>, Denied>> {
        self.check_with(headers, needs, false)
    }

    /// The check; with `slow` false, `None` where it would have to hash.
    fn check_with(
        &self,
        headers: &HeaderMap,
        needs: Needs,
        slow: bool,
    ) -> Option<Result<Option<String>, Denied>> {
        self.check_credentials(basic_credentials(headers), needs, slow)
    }

    /// The check of a user name and password, however they came.
    fn check_credentials(
        &self,
        credentials: Result<Option<(String, String)>, Denied>,
        needs: Needs,
        slow: bool,
    ) -> Option<Result<Option<String>, Denied>> {
        let users = self.users.read().unwrap_or_else(PoisonError::into_inner).clone();
        if grants(&users.anyone, needs) {
            return Some(Ok(None));
        }
        let (name, password) = match credentials {
            Ok(Some(credentials)) => credentials,
            Ok(None) => return Some(Err(Denied::Unauthenticated("credentials required".into()))),
            Err(denied) => return Some(Err(denied)),
        };
        let wrong = || {
            Some(Err(Denied::Unauthenticated(format!("unknown user or wrong password ({name})"))))
        };
        let Some(user) = users.users.get(&name) else {
            if !slow {
                return None;
            }
            // Cost what a known user costs.
            let _ = Argon2::default().verify_password(password.as_bytes(), self.decoy.as_str());
            return wrong();
        };
        if !self.verify(&name, &password, &user.secret, slow)? {
            return wrong();
        }
        if !grants(&user.perms, needs) {
            let missing: Vec<String> = needs
                .iter()
                .filter(|any| !any.iter().any(|p| user.perms.contains(p)))
                .map(|any| any.iter().map(Perm::to_string).collect::<Vec<_>>().join(" or "))
                .collect();
            return Some(Err(Denied::Forbidden(format!(
                "user {name} lacks the permission {}",
                missing.join(" and ")
            ))));
        }
        Some(Ok(Some(name)))
    }

    /// Whether `password` is the user's; `None` when that needs hashing and `slow` is false.
    fn verify(&self, name: &str, password: &str, secret: &Secret, slow: bool) -> Option<bool> {
        let digest = self.digest(name, password);
        let phc_or_bcrypt = match secret {
            Secret::Plain(expected) => return Some(constant_time_eq(expected, &digest)),
            Secret::Argon2(hash) | Secret::Bcrypt(hash) => hash,
        };
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.get(&digest).is_some_and(|at| now.duration_since(*at) < CACHE_TTL) {
                return Some(true);
            }
        }
        if !slow {
            return None;
        }
        let ok = match secret {
            Secret::Argon2(_) => Argon2::default()
                .verify_password(password.as_bytes(), phc_or_bcrypt.as_str())
                .is_ok(),
            _ => bcrypt::verify(password, phc_or_bcrypt).unwrap_or(false),
        };
        if ok {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(digest, now);
        }
        Some(ok)
    }
}

/// Compares two digests without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The user and password of a basic `Authorization` header; `Ok(None)` without one.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, Denied> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let bad = || Denied::Unauthenticated("malformed Authorization header".into());
    let value = value.to_str().map_err(|_| bad())?;
    let (scheme, encoded) = value.trim().split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Denied::Unauthenticated(format!("unsupported authorization scheme {scheme}")));
    }
    let decoded =
        base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (user, password) = text.split_once(':').ok_or_else(bad)?;
    Ok(Some((user.to_string(), password.to_string())))
}

/// Hashes a password into an argon2id PHC string with the crate's default (OWASP) parameters.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
}

/// The largest `/join` body read to tell a learner's join from a voter's.
const JOIN_BODY_MAX: usize = 64 << 10;

/// Middleware: refuses requests whose caller lacks the permissions of the route (401/403),
/// logging the refusal, and logs administrative actions with their outcome.
pub async fn guard(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut needs = required(&method, &path);
    let mut req = req;
    if path == "/join" {
        // A learner's join is allowed with join-read-only too.
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, JOIN_BODY_MAX).await else {
            return error_response(StatusCode::BAD_REQUEST, "join request too large");
        };
        let learner = serde_json::from_slice::<serde_json::Value>(&bytes)
            .is_ok_and(|v| v.get("voter") == Some(&serde_json::Value::Bool(false)));
        if learner {
            needs = &[&[Perm::Join, Perm::JoinReadOnly]];
        }
        req = Request::from_parts(parts, axum::body::Body::from(bytes));
    }
    let login = auth.login_keys(&req, needs);
    if let Some((key, wait)) = auth.limiter.blocked(&login, Instant::now()) {
        return too_many_failures(&method, &path, &key, wait, auth.limiter.per_minute());
    }
    // Only a password hash to verify goes to a blocking thread; most requests decide here.
    let verdict = match auth.check_quick(req.headers(), needs) {
        Some(verdict) => Ok(verdict),
        None => {
            let (headers, checker) = (req.headers().clone(), auth.clone());
            tokio::task::spawn_blocking(move || checker.check(&headers, needs)).await
        }
    };
    let user = match verdict {
        Ok(Ok(user)) => user,
        Ok(Err(Denied::Unauthenticated(reason))) => {
            let addr = req.extensions().get::<crate::tls::Peer>().map(|p| p.addr.to_string());
            let addr = addr.unwrap_or_default();
            tracing::warn!(target: AUDIT, %method, %path, %addr, %reason, "authentication failed");
            auth.limiter.failed(&login, Instant::now());
            let mut r = error_response(StatusCode::UNAUTHORIZED, reason);
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"keel\""));
            return r;
        }
        Ok(Err(Denied::Forbidden(reason))) => {
            tracing::warn!(target: AUDIT, %method, %path, %reason, "permission denied");
            return error_response(StatusCode::FORBIDDEN, reason);
        }
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let administrative = needs.iter().flat_map(|any| any.iter()).any(|p| {
        matches!(
            p,
            Perm::Admin | Perm::LeaderOps | Perm::Remove | Perm::Join | Perm::Load | Perm::All
        )
    }) && method != Method::GET;
    let response = next.run(req).await;
    if administrative {
        tracing::info!(
            target: AUDIT,
            user = user.as_deref().unwrap_or("*"),
            %method,
            %path,
            status = response.status().as_u16(),
            "administrative request"
        );
    }
    response
}

impl Auth {
    /// What a failed login of `req` counts against: its user name and its client's address.
    /// Empty for a request without credentials, or one that `*` may make, which is no login.
    fn login_keys(&self, req: &Request, needs: Needs) -> Vec<limit::Key> {
        if grants(&self.users.read().unwrap_or_else(PoisonError::into_inner).anyone, needs) {
            return Vec::new();
        }
        let name = match basic_credentials(req.headers()) {
            Ok(Some((name, _))) => Some(name),
            // A malformed header counts against the address only.
            Err(_) => None,
            Ok(None) => return Vec::new(),
        };
        let addr = req.extensions().get::<crate::tls::Peer>().map(|peer| peer.addr.ip());
        name.map(limit::Key::User).into_iter().chain(addr.map(limit::Key::Addr)).collect()
    }
}

/// What a login refused by the limiter is told, and in how many whole seconds (at least 1) it
/// may try again.
fn too_many(key: &limit::Key, wait: Duration, per_minute: usize) -> (String, u64) {
    let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    let reason = format!(
        "too many failed logins for {key} ({per_minute} a minute are allowed); retry in {seconds} s"
    );
    (reason, seconds)
}

/// The answer to a login refused by the limiter: 429 with `Retry-After` (whole seconds, at
/// least 1), logged under the audit target.
fn too_many_failures(
    method: &Method,
    path: &str,
    key: &limit::Key,
    wait: Duration,
    per_minute: usize,
) -> Response {
    let (reason, seconds) = too_many(key, wait, per_minute);
    tracing::warn!(target: AUDIT, %method, %path, %key, seconds, "login refused: too many failures");
    let mut response = error_response(StatusCode::TOO_MANY_REQUESTS, reason);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// `POST /admin/auth/reload`.
pub fn router(auth: Arc<Auth>) -> Router {
    Router::new().route("/admin/auth/reload", post(reload)).with_state(auth)
}

/// Reads the credentials file again.
async fn reload(State(auth): State<Arc<Auth>>) -> Response {
    let result = tokio::task::spawn_blocking(move || auth.reload()).await;
    match result {
        Ok(Ok(users)) => {
            tracing::info!(target: AUDIT, users, "credentials reloaded");
            json_response(StatusCode::OK, &json!({ "users": users }), false)
        }
        Ok(Err(e)) => {
            tracing::error!(target: AUDIT, error = %format!("{e:#}"), "credentials reload refused");
            error_response(StatusCode::BAD_REQUEST, format!("{e:#}"))
        }
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Reads the credentials file again (on SIGHUP: [`crate::tls::reload::on_sighup`]) and logs
/// the outcome under the audit target.
pub async fn reload_logged(auth: Arc<Auth>, trigger: &str) {
    match tokio::task::spawn_blocking(move || auth.reload()).await {
        Ok(Ok(users)) => tracing::info!(target: AUDIT, users, %trigger, "credentials reloaded"),
        Ok(Err(e)) => tracing::error!(
            target: AUDIT,
            error = %format!("{e:#}"),
            %trigger,
            "credentials reload refused; the users in force stay"
        ),
        Err(e) => tracing::error!(error = %e, "credentials reload failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_with(text: &str) -> (tempfile::TempDir, Auth) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        std::fs::write(&path, text).unwrap();
        let auth = Auth::load(&path, 0).unwrap();
        (dir, auth)
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        h.insert(header::AUTHORIZATION, format!("Basic {token}").parse().unwrap());
        h
    }

    #[test]
    fn plain_argon2_and_bcrypt_passwords_and_the_order_of_checks() {
        let argon = hash_password("a-secret").unwrap();
        let bcrypt = bcrypt::hash("b-secret", 4).unwrap();
        let (_dir, auth) = auth_with(
            &json!([
                {"username": "plain", "password": "p-secret", "perms": ["query"]},
                {"username": "argon", "password": argon, "perms": ["execute", "query"]},
                {"username": "bcrypt", "password": bcrypt, "perms": ["all"]},
                {"username": "*", "perms": ["status"]}
            ])
            .to_string(),
        );
        let query: Needs = &[&[Perm::Query]];
        let execute: Needs = &[&[Perm::Execute]];
        let both: Needs = &[&[Perm::Query], &[Perm::Execute]];
        // `*` grants status to anyone, even with wrong credentials (rqlite's order).
        assert_eq!(auth.check(&HeaderMap::new(), &[&[Perm::Status]]), Ok(None));
        assert_eq!(auth.check(&basic("plain", "nope"), &[&[Perm::Status]]), Ok(None));
        assert!(matches!(auth.check(&HeaderMap::new(), query), Err(Denied::Unauthenticated(_))));
        assert_eq!(auth.check(&basic("plain", "p-secret"), query), Ok(Some("plain".into())));
        assert!(matches!(auth.check(&basic("plain", "p-secret"), both), Err(Denied::Forbidden(_))));
        assert!(matches!(
            auth.check(&basic("plain", "wrong"), query),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.check(&basic("nobody", "p-secret"), query),
            Err(Denied::Unauthenticated(_))
        ));
        // Hashed passwords and unknown users need a blocking verification; plain ones do not.
        assert_eq!(auth.check_quick(&basic("argon", "a-secret"), both), None);
        assert_eq!(auth.check_quick(&basic("nobody", "x"), both), None);
        assert_eq!(
            auth.check_quick(&basic("plain", "p-secret"), query),
            Some(Ok(Some("plain".into())))
        );
        for _ in 0..2 {
            // The second time comes from the cache.
            assert_eq!(auth.check(&basic("argon", "a-secret"), both), Ok(Some("argon".into())));
        }
        assert_eq!(
            auth.check_quick(&basic("argon", "a-secret"), both),
            Some(Ok(Some("argon".into())))
        );
        assert_eq!(auth.check_quick(&basic("argon", "wrong"), both), None);
        assert!(matches!(
            auth.check(&basic("argon", "b-secret"), both),
            Err(Denied::Unauthenticated(_))
        ));
        assert_eq!(auth.check(&basic("bcrypt", "b-secret"), execute), Ok(Some("bcrypt".into())));
        assert!(matches!(
            auth.check(&basic("bcrypt", "a-secret"), execute),
            Err(Denied::Unauthenticated(_))
        ));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer xyz".parse().unwrap());
        assert!(matches!(auth.check(&h, query), Err(Denied::Unauthenticated(_))));
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert!(matches!(auth.check(&h, query), Err(Denied::Unauthenticated(_))));
    }

    #[test]
    fn bad_files_are_refused_and_the_users_in_force_stay() {
        let (dir, auth) =
            auth_with(&json!([{"username": "u", "password": "p", "perms": ["query"]}]).to_string());
        let path = dir.path().join("users.json");
        for bad in [
            "not json".to_string(),
            json!([{"username": "u", "password": "p", "perms": ["fly"]}]).to_string(),
            json!([{"username": "u", "perms": ["query"]}]).to_string(),
            json!([{"username": "u", "password": "p"}, {"username": "u", "password": "q"}])
                .to_string(),
            json!([{"username": "u", "password": "$argon2id$garbage", "perms": []}]).to_string(),
            json!([{"username": "u", "password": "p", "perms": [], "extra": 1}]).to_string(),
        ] {
            std::fs::write(&path, &bad).unwrap();
            assert!(auth.reload().is_err(), "accepted {bad}");
            assert_eq!(auth.check(&basic("u", "p"), &[&[Perm::Query]]), Ok(Some("u".into())));
        }
    }

    #[test]
    fn every_route_needs_something() {
        for (method, path) in [
            (Method::POST, "/db/execute"),
            (Method::GET, "/db/query"),
            (Method::GET, "/status"),
            (Method::POST, "/admin/promote"),
            (Method::GET, "/console"),
            (Method::GET, "/no/such/route"),
        ] {
            assert!(!required(&method, path).is_empty(), "{method} {path}");
        }
        assert_eq!(required(&Method::GET, "/unknown"), &[&[Perm::All]]);
        // A queued write's outcome is for those who may queue writes.
        assert_eq!(required(&Method::GET, "/db/queue/1765050001000000003"), &[&[Perm::Execute]]);
        // So is a write's outcome by request id: stored results are no other client's business.
        assert_eq!(required(&Method::GET, "/db/requests/abc"), &[&[Perm::Execute]]);
    }
}
