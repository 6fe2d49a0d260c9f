//! Reads over PostgreSQL's wire protocol (`keel serve --pg-addr`), beside the HTTP API.
//!
//! `psql`, `pgbench` and PostgreSQL drivers connect to any node and read its copy of the
//! database, through the same read path as `GET /db/query` ([`node::Node::read`]): the read
//! pool, the statement limits and the consistency levels. The protocol is
//! [pgwire](https://docs.rs/pgwire)'s; this module maps it onto Keel:
//!
//! * **Queries.** The simple protocol (`Query`) and the extended one (`Parse`, `Bind`,
//!   `Describe`, `Execute`, `Sync`), with parameters as `$1`, `$2`, … (SQLite reads `$1` as a
//!   named parameter, numbered in order of first use; each gets the client's parameter its
//!   number names) or `?`. A simple query holding several statements (split at semicolons
//!   outside quotes and comments) answers each in turn, as PostgreSQL does, and stops at the
//!   first error; a prepared statement must hold one.
//! * **Reads only.** A statement that would write is refused with SQLSTATE `25006`
//!   (read-only transaction) and a message pointing to the HTTP API, which takes writes.
//! * **Consistency.** `SET keel.read_consistency = 'none' | 'weak' | 'linearizable' |
//!   'strong' | 'auto'` (rqlite's levels), for the rest of the session; `none` by default, a read
//!   of this node's copy. `weak` and `strong` are served by the leader only: elsewhere they fail
//!   naming it. `SHOW keel.read_consistency` answers the level in force.
//! * **What drivers send around queries.** Other `SET`s are accepted and ignored; `BEGIN`,
//!   `START TRANSACTION`, `COMMIT`, `END` and `ROLLBACK` are accepted, and each statement inside
//!   still reads its own snapshot (PostgreSQL's default isolation, read committed, behaves the
//!   same for reads).
//! * **Types.** A column's type comes from its declared type, by SQLite's affinity rules:
//!   `int8` for INTEGER affinity, `float8` for REAL, `bytea` for BLOB or no declared type with
//!   a BLOB value, `text` otherwise (numeric columns, expressions). Text results are what
//!   PostgreSQL would print; binary results are given for those four types.
//! * **Credentials.** With `--auth`, the client sends a password (cleartext password
//!   authentication, so use TLS), checked as the HTTP API checks basic auth: the user needs the
//!   `query` permission, and failed logins count against the same per-user and per-address
//!   limit. If `*` has `query`, no password is asked.
//! * **TLS.** With the client API's certificate (`--tls-cert`/`--tls-key`), the endpoint
//!   accepts `SSLRequest` and serves the same certificate (reloaded with it); a client that
//!   asks for `sslmode=require` gets TLS. Client certificates are required as for the HTTP API
//!   (`--tls-client-ca`).
//! * **Limits.** At most `--max-connections` connections are served at once; more wait to be
//!   accepted. Each statement runs under `--max-statement-time` and the result limits.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use futures::Sink;
use pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireServerHandlers, PidSecretKeyGenerator as _,
    RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::auth::{Auth, Login, Perm};

/// What a login to this endpoint needs: reading, as `GET /db/query`.
const NEEDS: crate::auth::Needs = &[&[Perm::Query]];

/// The session setting that chooses the read consistency.
const LEVEL_SETTING: &str = "keel.read_consistency";

/// Serves the endpoint on `listener` until the process ends: `auth` checks logins if given,
/// `tls` is the client API's server configuration if it has one, and at most
/// `max_connections` connections are served at once.
pub async fn serve(
    listener: TcpListener,
    node: Arc<node::Node>,
    auth: Option<Arc<Auth>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_connections: usize,
) {
    let acceptor = tls.map(|config| {
        // The same certificate resolver (reloads included), with PostgreSQL's ALPN name.
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        pgwire::tokio::TlsAcceptor::from(Arc::new(config))
    });
    let handlers = Arc::new(Handlers::new(node, auth));
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(error) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!(%error, "PostgreSQL endpoint: accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (handlers, acceptor) = (handlers.clone(), acceptor.clone());
        tokio::spawn(async move {
            if let Err(error) = connection(socket, acceptor, handlers).await {
                tracing::debug!(%error, "PostgreSQL connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// How long a client has to finish its startup (TLS, login) before it is dropped.
const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves one connection: pgwire's message loop (`pgwire::tokio::process_socket`), over a
/// [`Corked`] socket that sends what the handlers wrote only when every message the client
/// sent has been handled, as PostgreSQL does. pgwire flushes after most messages it answers
/// (`BindComplete`, `RowDescription`, `CommandComplete`, `ReadyForQuery`), so a prepared
/// query (`Bind`, `Describe`, `Execute`, `Sync`, sent together) would cost four `sendto`s,
/// each a wake-up of the client on loopback, where one does.
async fn connection(
    tcp: tokio::net::TcpStream,
    acceptor: Option<pgwire::tokio::TlsAcceptor>,
    handlers: Arc<Handlers>,
) -> std::io::Result<()> {
    use futures::{SinkExt as _, StreamExt as _};
    use pgwire::api::PgWireConnectionState as State;
    let startup = tokio::time::sleep(STARTUP_TIMEOUT);
    tokio::pin!(startup);
    let negotiated = tokio::select! {
        _ = &mut startup => return Ok(()),
        socket = pgwire::tokio::server::negotiate_tls::<Kind>(tcp, acceptor) => socket?,
    };
    // None: a direct TLS handshake without TLS configured.
    let Some(socket) = negotiated else { return Ok(()) };
    let parts = socket.into_parts();
    let mut corked = tokio_util::codec::FramedParts::new(Corked::new(parts.io), parts.codec);
    corked.read_buf = parts.read_buf;
    corked.write_buf = parts.write_buf;
    let mut socket = tokio_util::codec::Framed::from_parts(corked);
    let (startup_handler, simple, extended) =
        (handlers.startup.clone(), handlers.queries.clone(), handlers.queries.clone());
    let (copy, cancel) = (Arc::new(pgwire::api::NoopHandler), Arc::new(pgwire::api::NoopHandler));
    loop {
        if socket.read_buffer().is_empty() {
            // About to wait for the client: send what it is owed.
            socket.get_mut().corked = false;
            socket.flush().await?;
            socket.get_mut().corked = true;
        }
        let message =
            if matches!(socket.state(), State::AwaitingStartup | State::AuthenticationInProgress) {
                tokio::select! {
                    _ = &mut startup => None,
                    message = socket.next() => message,
                }
            } else {
                socket.next().await
            };
        let Some(Ok(message)) = message else { break };
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            break;
        }
        let cancel_request = matches!(message, PgWireFrontendMessage::CancelRequest(_));
        let in_extended = message.is_extended_query();
        if let Err(error) = pgwire::tokio::server::process_message(
            message,
            &mut socket,
            startup_handler.clone(),
            simple.clone(),
            extended.clone(),
            copy.clone(),
            cancel.clone(),
        )
        .await
        {
            let fatal = error.is_fatal();
            pgwire::tokio::server::process_error(&mut socket, error, in_extended).await?;
            if fatal {
                break;
            }
        }
        if cancel_request {
            break;
        }
    }
    socket.get_mut().corked = false;
    socket.flush().await
}

/// A socket that keeps what is written in memory while `corked`, up to [`Corked::HOLD`] bytes,
/// and writes it out on the first flush after it is uncorked (see [`connection`]).
struct Corked<S> {
    /// The socket.
    inner: S,
    /// Bytes written and not yet sent.
    held: Vec<u8>,
    /// Whether flushes are held back.
    corked: bool,
}

impl<S> Corked<S> {
    /// More than this is sent even while corked (a large result streams).
    const HOLD: usize = 64 << 10;

    fn new(inner: S) -> Corked<S> {
        Corked { inner, held: Vec::new(), corked: false }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> Corked<S> {
    /// Writes out everything held.
    fn poll_drain(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        while !self.held.is_empty() {
            let n =
                std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if n == 0 {
                return std::task::Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        std::task::Poll::Ready(Ok(()))
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Corked<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Corked<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.held.len() >= Self::HOLD {
            std::task::ready!(self.poll_drain(cx))?;
        }
        self.held.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.corked {
            return std::task::Poll::Ready(Ok(()));
        }
        std::task::ready!(self.poll_drain(cx))?;
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The handlers of every connection.
struct Handlers {
    /// Queries, simple and extended.
    queries: Arc<Queries>,
    /// Logins.
    startup: Arc<Startup>,
}

impl Handlers {
    fn new(node: Arc<node::Node>, auth: Option<Arc<Auth>>) -> Handlers {
        let parser = Arc::new(Parser { node: node.clone() });
        let queries = Arc::new(Queries { node, parser });
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = format!("16.6 (Keel {})", env!("CARGO_PKG_VERSION"));
        parameters.default_transaction_read_only = true;
        parameters.is_superuser = false;
        let parameters = Arc::new(parameters);
        let password = auth.clone().map(|auth| {
            CleartextPasswordAuthStartupHandler::new(Credentials { auth }, parameters.clone())
        });
        Handlers { queries, startup: Arc::new(Startup { auth, password, parameters }) }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// Logins: a password when `--auth` asks for one, else none.
struct Startup {
    /// The credentials in force.
    auth: Option<Arc<Auth>>,
    /// The password exchange, with `--auth`.
    password: Option<
        CleartextPasswordAuthStartupHandler<Credentials, Arc<DefaultServerParameterProvider>>,
    >,
    /// What the server tells a client about itself.
    parameters: Arc<DefaultServerParameterProvider>,
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let open = self.auth.as_ref().is_none_or(|auth| auth.anyone_may(NEEDS));
        match (&self.password, open) {
            (Some(password), false) => password.on_startup(client, message).await,
            _ => {
                let PgWireFrontendMessage::Startup(startup) = &message else { return Ok(()) };
                pgwire::api::auth::protocol_negotiation(client, startup).await?;
                pgwire::api::auth::save_startup_parameters_to_metadata(client, startup);
                let (pid, secret) = RandomPidSecretKeyGenerator::default().generate(client);
                client.set_pid_and_secret_key(pid, secret);
                pgwire::api::auth::finish_authentication(client, self.parameters.as_ref()).await
            }
        }
    }
}

/// Checks passwords against `--auth`'s users.
#[derive(Debug)]
struct Credentials {
    /// The credentials in force.
    auth: Arc<Auth>,
}

#[async_trait]
impl AuthSource for Credentials {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        // Passwords are stored hashed: verify_password checks them instead.
        Err(error("28000", "password authentication failed"))
    }

    async fn verify_password(
        &self,
        login: &LoginInfo,
        presented: &[u8],
    ) -> PgWireResult<Option<()>> {
        let user = login.user().unwrap_or_default().to_string();
        let password = String::from_utf8_lossy(presented).into_owned();
        let addr = login
            .host()
            .parse::<std::net::IpAddr>()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let auth = self.auth.clone();
        let verdict = tokio::task::spawn_blocking(move || {
            auth.login(&user, &password, addr, NEEDS, "postgres")
        })
        .await
        .map_err(|e| error("XX000", &format!("checking the password failed: {e}")))?;
        match verdict {
            Ok(_) => Ok(Some(())),
            Err(Login::Denied(crate::auth::Denied::Unauthenticated(reason))) => {
                Err(error("28P01", &format!("password authentication failed: {reason}")))
            }
            Err(Login::Denied(crate::auth::Denied::Forbidden(reason))) => {
                Err(error("42501", &reason))
            }
            Err(Login::TooMany { reason }) => Err(error("53400", &reason)),
        }
    }
}

/// An error for the client: SQLSTATE `code` and `message`.
fn error(code: &str, message: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), message.into())))
}

/// What a statement text is, as far as this endpoint cares.
#[derive(Clone, Debug)]
enum Kind {
    /// A read, with what it returns.
    Read(Arc<Described>),
    /// `SET name = value` (or `TO`): the level when the name is [`LEVEL_SETTING`].
    Set { name: String, value: String },
    /// `SHOW name`.
    Show(String),
    /// `BEGIN`, `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `END`, `ROLLBACK`, `ABORT`.
    End(&'static str),
}

/// A read statement, described on a read connection when prepared.
#[derive(Debug)]
struct Described {
    /// The SQL text.
    sql: String,
    /// Where each parameter's value comes from, by SQLite's parameter index: `$k` takes the
    /// client's parameter k, any other placeholder the one at its own index.
    params: Vec<usize>,
    /// Its result columns, text format (shared by every execution that asks for text).
    fields: Arc<Vec<FieldInfo>>,
}

/// The kind of `sql` if it is one of the session statements (`SET`, `SHOW`, transactions);
/// `None` for anything else, which is run as a read.
fn session_statement(sql: &str) -> Option<Kind> {
    let text = sql.trim().trim_end_matches(';').trim();
    let mut words = text.split_whitespace();
    let first = words.next()?.to_ascii_uppercase();
    match first.as_str() {
        "BEGIN" | "START" => Some(Kind::Begin),
        "COMMIT" | "END" => Some(Kind::End("COMMIT")),
        "ROLLBACK" | "ABORT" => Some(Kind::End("ROLLBACK")),
        "SET" => {
            let rest = text[3..].trim();
            let rest = strip_word(rest, "SESSION").or_else(|| strip_word(rest, "LOCAL"));
            let rest = rest.unwrap_or_else(|| text[3..].trim());
            let (name, value) = match rest.split_once('=') {
                Some((name, value)) => (name.trim(), value.trim()),
                None => {
                    let (name, value) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                    let value = value.trim();
                    (name, strip_word(value, "TO").unwrap_or(value))
                }
            };
            let value = value.trim().trim_matches('\'').trim_matches('"').to_string();
            Some(Kind::Set { name: name.to_ascii_lowercase(), value })
        }
        "SHOW" => Some(Kind::Show(words.collect::<Vec<_>>().join(" ").to_ascii_lowercase())),
        _ => None,
    }
}

/// The statements of a simple query, split at the semicolons outside quotes and comments;
/// empty ones are left out.
fn split_statements(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let (mut out, mut start, mut i) = (Vec::new(), 0, 0);
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"' | b'`') => {
                // To the closing quote; a doubled quote inside is the quote itself.
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
            }
            b'[' => {
                while i < bytes.len() && bytes[i] != b']' {
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b';' => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&sql[start.min(sql.len())..]);
    out.retain(|s| !s.trim().is_empty());
    out
}

/// `text` after a leading `word` (any case) and the space after it.
fn strip_word<'a>(text: &'a str, word: &str) -> Option<&'a str> {
    let head = text.get(..word.len())?;
    let rest = &text[word.len()..];
    (head.eq_ignore_ascii_case(word) && rest.starts_with(char::is_whitespace))
        .then(|| rest.trim_start())
}

/// The read consistency level of a session.
fn level_of<C: ClientInfo>(client: &C) -> node::read::Level {
    client
        .metadata()
        .get(LEVEL_SETTING)
        .map_or(node::read::Level::None, |name| node::read::Level::parse(Some(name)))
}

/// The PostgreSQL type of a column: from its lower-cased declared type by SQLite's affinity
/// rules, else (an expression) from the kind of its first value.
fn column_type(declared: Option<&str>, first: Option<&Value>) -> Type {
    match declared {
        Some(t) if t.contains("int") => Type::INT8,
        Some(t) if t.contains("char") || t.contains("clob") || t.contains("text") => Type::TEXT,
        Some(t) if t.contains("blob") => Type::BYTEA,
        Some(t) if t.contains("real") || t.contains("floa") || t.contains("doub") => Type::FLOAT8,
        Some(t) if !t.is_empty() => Type::TEXT,
        _ => match first {
            Some(Value::Number(n)) if n.is_i64() => Type::INT8,
            Some(Value::Number(_)) => Type::FLOAT8,
            Some(Value::Array(_)) => Type::BYTEA,
            _ => Type::TEXT,
        },
    }
}

/// Appends one field of a data row: `value` as `ty` in `format`.
fn encode(out: &mut BytesMut, value: &Value, ty: &Type, format: FieldFormat) -> PgWireResult<()> {
    use bytes::BufMut as _;
    let start = out.len();
    out.put_i32(0);
    // The binary forms of int8, float8 and bytea; text's binary form is its text.
    let binary = format == FieldFormat::Binary && *ty != Type::TEXT;
    match value {
        Value::Null => {
            out.truncate(start);
            out.put_i32(-1);
            return Ok(());
        }
        Value::Number(n) if binary && *ty == Type::INT8 && n.is_i64() => {
            out.put_i64(n.as_i64().unwrap_or_default())
        }
        Value::Number(n) if binary && *ty == Type::FLOAT8 => out.put_f64(n.as_f64().unwrap_or(0.0)),
        Value::Array(bytes) if binary && *ty == Type::BYTEA => {
            out.extend(bytes.iter().map(|b| b.as_u64().unwrap_or(0) as u8))
        }
        Value::String(s) if binary && *ty == Type::BYTEA => out.extend_from_slice(s.as_bytes()),
        _ if binary => {
            return Err(error(
                "22P03",
                &format!(
                    "a value of this column does not have its type {} (SQLite columns may hold \
                     any type): ask for text results",
                    ty.name()
                ),
            ));
        }
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => out.extend_from_slice(s.as_bytes()),
        Value::Array(bytes) => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\x");
            for b in bytes {
                let b = b.as_u64().unwrap_or(0) as u8;
                out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
        }
        Value::Bool(b) => out.extend_from_slice(if *b { b"t" } else { b"f" }),
        Value::Object(_) => out.extend_from_slice(value.to_string().as_bytes()),
    }
    let len = i32::try_from(out.len() - start - 4)
        .map_err(|_| error("54000", "a value is larger than PostgreSQL's protocol allows"))?;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// A rows result as a query response with `fields` (name, type, format per column).
fn rows_response(fields: Arc<Vec<FieldInfo>>, values: Vec<Vec<Value>>) -> PgWireResult<Response> {
    let mut rows = Vec::with_capacity(values.len());
    for row in values {
        let mut data = BytesMut::with_capacity(16 * row.len() + 8);
        for (value, field) in row.iter().zip(fields.iter()) {
            encode(&mut data, value, field.datatype(), field.format())?;
        }
        rows.push(Ok(DataRow::new(data, row.len() as i16)));
    }
    Ok(Response::Query(QueryResponse::new(fields, futures::stream::iter(rows))))
}

/// A statement's error as PostgreSQL would class it.
fn statement_error(message: &str) -> PgWireError {
    if message == sql::QUERY_WRITE_ERROR {
        return error(
            "25006",
            "Keel's PostgreSQL endpoint serves reads only: send writes to the HTTP API \
             (POST /db/execute)",
        );
    }
    let code = if message.contains("syntax error") || message.contains("incomplete input") {
        "42601"
    } else if message.contains("no such table") {
        "42P01"
    } else if message.contains("no such column") {
        "42703"
    } else if message.contains("no such function") {
        "42883"
    } else if message.contains("interrupted") || message.contains("time limit") {
        "57014"
    } else if message.contains(sql::error::DAMAGED) {
        "XX001"
    } else if message.contains("too many rows") || message.contains("too large") {
        "54000"
    } else {
        "XX000"
    };
    error(code, message)
}

/// A node's refusal of a read (not the leader, stale, not applied in time) for the client.
fn read_error(e: node::Error) -> PgWireError {
    let code = match &e {
        node::Error::NotLeader { .. } => "25006",
        node::Error::InvalidInput(_) => "22023",
        node::Error::Stale(_) | node::Error::NotApplied { .. } => "40001",
        node::Error::Unavailable(_) => "57P03",
        _ => "XX000",
    };
    let message = match &e {
        node::Error::NotLeader { leader } => format!(
            "this node does not lead: reads at this consistency are served by the leader, node \
             {} (HTTP {}); connect there, or SET {LEVEL_SETTING} = 'none' or 'linearizable'",
            leader.id, leader.node.http_addr
        ),
        e => e.to_string(),
    };
    error(code, &message)
}

/// Queries of both protocols.
struct Queries {
    /// The node read from.
    node: Arc<node::Node>,
    /// Prepares extended-protocol statements.
    parser: Arc<Parser>,
}

impl Queries {
    /// Answers a session statement.
    fn session<C: ClientInfo>(&self, client: &mut C, kind: &Kind) -> PgWireResult<Response> {
        match kind {
            Kind::Set { name, value } if name == LEVEL_SETTING => {
                let known = ["none", "weak", "linearizable", "strong", "auto"];
                if !known.iter().any(|k| k.eq_ignore_ascii_case(value)) {
                    return Err(error(
                        "22023",
                        &format!(
                            "invalid value for {LEVEL_SETTING}: {value:?} (one of {})",
                            known.join(", ")
                        ),
                    ));
                }
                client.metadata_mut().insert(LEVEL_SETTING.into(), value.to_ascii_lowercase());
                Ok(Response::Execution(Tag::new("SET")))
            }
            Kind::Set { .. } => Ok(Response::Execution(Tag::new("SET"))),
            Kind::Show(name) if name == LEVEL_SETTING => {
                let value = client.metadata().get(LEVEL_SETTING).cloned();
                let value = Value::String(value.unwrap_or_else(|| "none".into()));
                let field = FieldInfo::new(name.clone(), None, None, Type::TEXT, FieldFormat::Text);
                let mut response = rows_response(Arc::new(vec![field]), vec![vec![value]])?;
                if let Response::Query(q) = &mut response {
                    q.set_command_tag("SHOW");
                }
                Ok(response)
            }
            Kind::Show(name) => {
                Err(error("42704", &format!("unrecognized configuration parameter \"{name}\"")))
            }
            Kind::Begin => Ok(Response::TransactionStart(Tag::new("BEGIN"))),
            Kind::End(tag) => Ok(Response::TransactionEnd(Tag::new(tag))),
            Kind::Read(_) => unreachable!("reads are not session statements"),
        }
    }

    /// Runs one read and answers its rows: with `fields` when the statement was described
    /// (extended protocol), else with fields made from the result (simple protocol).
    async fn read<C: ClientInfo>(
        &self,
        client: &C,
        statement: sql::Statement,
        fields: Option<Arc<Vec<FieldInfo>>>,
    ) -> PgWireResult<Response> {
        let call = node::read::ReadCall {
            statements: vec![statement],
            transaction: false,
            level: level_of(client),
            freshness: None,
            freshness_strict: false,
            min_lsn: None,
            timeout: None,
            linearizable_timeout: None,
            db_timeout: None,
            qualify_columns: false,
        };
        let outcome = self.node.read(call).await.map_err(read_error)?;
        let Some(result) = outcome.results.into_iter().next() else {
            return Ok(Response::EmptyQuery);
        };
        match result {
            sql::StatementResult::Rows { columns, types, values, .. } => {
                let fields = match fields {
                    Some(fields) => fields,
                    None => Arc::new(
                        columns
                            .into_iter()
                            .enumerate()
                            .map(|(i, name)| {
                                let declared = types.get(i).map(String::as_str);
                                let first = values.first().and_then(|row| row.get(i));
                                let ty = column_type(declared.filter(|d| !d.is_empty()), first);
                                FieldInfo::new(name, None, None, ty, FieldFormat::Text)
                            })
                            .collect(),
                    ),
                };
                rows_response(fields, values)
            }
            sql::StatementResult::Exec { .. } => Ok(Response::Execution(Tag::new("SELECT"))),
            sql::StatementResult::Error(message) => Err(statement_error(&message)),
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Each statement answers in turn; an error ends the query (the rest is not run), not
        // the session.
        let mut responses = Vec::new();
        for statement in split_statements(query) {
            let response = match session_statement(statement) {
                Some(kind) => self.session(client, &kind),
                None => self.read(client, sql::Statement::new(statement), None).await,
            };
            match response {
                Ok(response) => responses.push(response),
                Err(PgWireError::UserError(info)) => {
                    responses.push(Response::Error(info));
                    break;
                }
                Err(other) => {
                    let info = ErrorInfo::new("ERROR".into(), "XX000".into(), other.to_string());
                    responses.push(Response::Error(Box::new(info)));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = Kind;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Kind>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Kind>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let described = match &portal.statement.statement {
            Kind::Read(described) => described.clone(),
            kind => return self.session(client, kind),
        };
        let params = parameters(portal, &described.params)?;
        let fields = with_formats(&described.fields, &portal.result_column_format);
        let statement = sql::Statement { sql: described.sql.clone(), params };
        self.read(client, statement, Some(fields)).await
    }
}

/// `fields` with the result formats a portal asked for.
fn with_formats(fields: &Arc<Vec<FieldInfo>>, format: &Format) -> Arc<Vec<FieldInfo>> {
    if matches!(format, Format::UnifiedText) {
        // The described fields are text already: no copy per execution.
        return fields.clone();
    }
    Arc::new(
        fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let format = if matches!(format, Format::Individual(v) if i >= v.len()) {
                    FieldFormat::Text
                } else {
                    format.format_for(i)
                };
                FieldInfo::new(f.name().to_string(), None, None, f.datatype().clone(), format)
            })
            .collect(),
    )
}

/// A portal's parameters, in the order of the statement's parameter indexes (`sources[i]` is
/// the client's parameter that SQLite's parameter `i + 1` takes).
fn parameters(portal: &Portal<Kind>, sources: &[usize]) -> PgWireResult<sql::Params> {
    let given = portal.parameters.len();
    let expected = sources.iter().copied().max().unwrap_or(0);
    if given != expected {
        return Err(error(
            "08P01",
            &format!("the statement takes {expected} parameters and {given} were given"),
        ));
    }
    let mut values = Vec::with_capacity(given);
    for (i, raw) in portal.parameters.iter().enumerate() {
        let ty =
            portal.statement.parameter_types.get(i).cloned().flatten().unwrap_or(Type::UNKNOWN);
        let binary = match &portal.parameter_format {
            Format::UnifiedText => false,
            Format::UnifiedBinary => true,
            Format::Individual(v) => v.get(i) == Some(&1),
        };
        values.push(match raw {
            None => sql::Value::Null,
            Some(bytes) if binary => binary_parameter(bytes, &ty, i)?,
            Some(bytes) => text_parameter(bytes, &ty, i)?,
        });
    }
    let bound: Vec<sql::Value> = sources.iter().map(|k| values[k - 1].clone()).collect();
    Ok(if bound.is_empty() { sql::Params::None } else { sql::Params::Positional(bound) })
}

/// A parameter sent as text, read as its declared type (untyped ones stay text: SQLite's
/// affinity converts them where a column needs a number).
fn text_parameter(bytes: &[u8], ty: &Type, i: usize) -> PgWireResult<sql::Value> {
    let bad = || error("22P02", &format!("parameter ${}: not a valid {}", i + 1, ty.name()));
    let text = std::str::from_utf8(bytes).map_err(|_| bad())?;
    Ok(match *ty {
        Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => {
            sql::Value::Integer(text.trim().parse().map_err(|_| bad())?)
        }
        Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => {
            sql::Value::Real(text.trim().parse().map_err(|_| bad())?)
        }
        Type::BOOL => match text.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "1" | "yes" | "on" => sql::Value::Integer(1),
            "f" | "false" | "0" | "no" | "off" => sql::Value::Integer(0),
            _ => return Err(bad()),
        },
        Type::BYTEA => match text.strip_prefix("\\x") {
            Some(hex) => sql::Value::Blob(decode_hex(hex).ok_or_else(bad)?),
            None => sql::Value::Blob(bytes.to_vec()),
        },
        _ => sql::Value::Text(text.to_string()),
    })
}

/// A parameter sent in binary, for the types whose binary form is plain.
fn binary_parameter(bytes: &[u8], ty: &Type, i: usize) -> PgWireResult<sql::Value> {
    let bad = || error("22P03", &format!("parameter ${}: not a valid binary {}", i + 1, ty.name()));
    Ok(match (ty.clone(), bytes.len()) {
        (Type::INT2, 2) => sql::Value::Integer(i16::from_be_bytes([bytes[0], bytes[1]]).into()),
        (Type::INT4, 4) => {
            sql::Value::Integer(i32::from_be_bytes(bytes.try_into().map_err(|_| bad())?).into())
        }
        (Type::INT8, 8) => {
            sql::Value::Integer(i64::from_be_bytes(bytes.try_into().map_err(|_| bad())?))
        }
        (Type::FLOAT4, 4) => {
            sql::Value::Real(f32::from_be_bytes(bytes.try_into().map_err(|_| bad())?).into())
        }
        (Type::FLOAT8, 8) => {
            sql::Value::Real(f64::from_be_bytes(bytes.try_into().map_err(|_| bad())?))
        }
        (Type::BOOL, 1) => sql::Value::Integer(i64::from(bytes[0] != 0)),
        (Type::BYTEA, _) => sql::Value::Blob(bytes.to_vec()),
        (Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN, _) => {
            sql::Value::Text(String::from_utf8(bytes.to_vec()).map_err(|_| bad())?)
        }
        _ => return Err(bad()),
    })
}

/// Bytes from hex digits, `None` if they are not.
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

/// Prepares extended-protocol statements: session statements by their words, reads by
/// describing them on a read connection.
struct Parser {
    /// The node whose read pool describes statements.
    node: Arc<node::Node>,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Kind;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Kind>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        if let Some(kind) = session_statement(sql) {
            return Ok(Some(kind));
        }
        let readers = self.node.readers();
        let text = sql.to_string();
        let description = tokio::task::spawn_blocking(move || readers.describe(&text))
            .await
            .map_err(|e| error("XX000", &format!("describing the statement failed: {e}")))?
            .map_err(|message| statement_error(&message))?;
        if description.statements > 1 {
            return Err(error(
                "42601",
                "cannot insert multiple commands into a prepared statement",
            ));
        }
        let fields = description
            .columns
            .into_iter()
            .map(|(name, declared)| {
                let ty = column_type(declared.as_deref(), None);
                FieldInfo::new(name, None, None, ty, FieldFormat::Text)
            })
            .collect::<Vec<_>>()
            .into();
        let params = description
            .params
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let numbered = name.as_deref().and_then(|n| n.strip_prefix('$'));
                numbered.and_then(|k| k.parse::<usize>().ok()).filter(|k| *k > 0).unwrap_or(i + 1)
            })
            .collect();
        Ok(Some(Kind::Read(Arc::new(Described { sql: sql.to_string(), params, fields }))))
    }

    fn get_parameter_types(&self, statement: &Kind) -> PgWireResult<Vec<Type>> {
        Ok(match statement {
            Kind::Read(d) => vec![Type::UNKNOWN; d.params.iter().copied().max().unwrap_or(0)],
            _ => Vec::new(),
        })
    }

    fn get_result_schema(
        &self,
        statement: &Kind,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(match statement {
            Kind::Read(d) => {
                with_formats(&d.fields, format.unwrap_or(&Format::UnifiedText)).to_vec()
            }
            Kind::Show(name) => {
                vec![FieldInfo::new(name.clone(), None, None, Type::TEXT, FieldFormat::Text)]
            }
            _ => Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_statements_are_told_from_reads() {
        let set = |sql| match session_statement(sql) {
            Some(Kind::Set { name, value }) => (name, value),
            other => panic!("{sql}: {other:?}"),
        };
        assert_eq!(
            set("SET keel.read_consistency = 'linearizable'"),
            (LEVEL_SETTING.into(), "linearizable".into())
        );
        assert_eq!(
            set("set Keel.Read_Consistency to none;"),
            (LEVEL_SETTING.into(), "none".into())
        );
        assert_eq!(
            set("SET SESSION extra_float_digits = 3"),
            ("extra_float_digits".into(), "3".into())
        );
        assert_eq!(
            set("SET application_name TO 'psql'"),
            ("application_name".into(), "psql".into())
        );
        assert!(matches!(session_statement("BEGIN"), Some(Kind::Begin)));
        assert!(matches!(session_statement("start transaction read only"), Some(Kind::Begin)));
        assert!(matches!(session_statement("commit;"), Some(Kind::End("COMMIT"))));
        assert!(matches!(session_statement("ROLLBACK"), Some(Kind::End("ROLLBACK"))));
        assert!(
            matches!(session_statement("SHOW keel.read_consistency"), Some(Kind::Show(n)) if n == LEVEL_SETTING)
        );
        for read in
            ["SELECT 1", "  select * from t", "WITH x AS (SELECT 1) SELECT * FROM x", "settings"]
        {
            assert!(session_statement(read).is_none(), "{read}");
        }
    }

    #[test]
    fn simple_queries_split_at_semicolons_outside_quotes_and_comments() {
        assert_eq!(split_statements("SELECT 1; SELECT 2;"), ["SELECT 1", " SELECT 2"]);
        assert_eq!(split_statements("SELECT ';', \"a;b\" FROM t"), ["SELECT ';', \"a;b\" FROM t"]);
        assert_eq!(split_statements("SELECT 'it''s; fine'"), ["SELECT 'it''s; fine'"]);
        assert_eq!(
            split_statements("SELECT 1 -- a; comment\n; SELECT [x;y]"),
            ["SELECT 1 -- a; comment\n", " SELECT [x;y]"]
        );
        assert_eq!(split_statements("/* ; */ SELECT 1"), ["/* ; */ SELECT 1"]);
        assert!(split_statements(" ; ;").is_empty());
        assert_eq!(split_statements("SELECT 'unterminated;"), ["SELECT 'unterminated;"]);
    }

    #[test]
    fn columns_take_types_by_affinity() {
        assert_eq!(column_type(Some("integer"), None), Type::INT8);
        assert_eq!(column_type(Some("bigint"), None), Type::INT8);
        assert_eq!(column_type(Some("varchar(10)"), None), Type::TEXT);
        assert_eq!(column_type(Some("blob"), None), Type::BYTEA);
        assert_eq!(column_type(Some("double precision"), None), Type::FLOAT8);
        assert_eq!(column_type(Some("numeric"), None), Type::TEXT);
        assert_eq!(column_type(None, Some(&serde_json::json!(3))), Type::INT8);
        assert_eq!(column_type(None, Some(&serde_json::json!(0.5))), Type::FLOAT8);
        assert_eq!(column_type(None, Some(&serde_json::json!([1, 2]))), Type::BYTEA);
        assert_eq!(column_type(None, None), Type::TEXT);
    }

    #[test]
    fn values_encode_as_postgresql_prints_them() {
        let field = |v: Value, ty: Type, format| {
            let mut out = BytesMut::new();
            encode(&mut out, &v, &ty, format).map(|()| out.to_vec())
        };
        let text = FieldFormat::Text;
        let binary = FieldFormat::Binary;
        assert_eq!(field(Value::Null, Type::TEXT, text).unwrap(), (-1i32).to_be_bytes());
        assert_eq!(field(serde_json::json!(42), Type::INT8, text).unwrap(), b"\0\0\0\x0242");
        assert_eq!(field(serde_json::json!("hi"), Type::TEXT, text).unwrap(), b"\0\0\0\x02hi");
        assert_eq!(
            field(serde_json::json!([1, 171]), Type::BYTEA, text).unwrap(),
            b"\0\0\0\x06\\x01ab"
        );
        let mut int8 = vec![0, 0, 0, 8];
        int8.extend(7i64.to_be_bytes());
        assert_eq!(field(serde_json::json!(7), Type::INT8, binary).unwrap(), int8);
        // A column declared INTEGER holding text (SQLite allows it) has no binary form; text's
        // binary form is its text, whatever the value.
        assert!(field(serde_json::json!("seven"), Type::INT8, binary).is_err());
        assert_eq!(field(serde_json::json!(3), Type::TEXT, binary).unwrap(), b"\0\0\0\x013");
    }

    #[test]
    fn parameters_are_read_as_their_types() {
        assert_eq!(text_parameter(b"42", &Type::INT4, 0).unwrap(), sql::Value::Integer(42));
        assert_eq!(
            text_parameter(b"42", &Type::UNKNOWN, 0).unwrap(),
            sql::Value::Text("42".into())
        );
        assert_eq!(
            text_parameter(b"\\x0aff", &Type::BYTEA, 0).unwrap(),
            sql::Value::Blob(vec![10, 255])
        );
        assert_eq!(text_parameter(b"t", &Type::BOOL, 0).unwrap(), sql::Value::Integer(1));
        assert!(text_parameter(b"x", &Type::INT8, 0).is_err());
        assert_eq!(
            binary_parameter(&5i32.to_be_bytes(), &Type::INT4, 0).unwrap(),
            sql::Value::Integer(5)
        );
        assert_eq!(
            binary_parameter(&1.5f64.to_be_bytes(), &Type::FLOAT8, 0).unwrap(),
            sql::Value::Real(1.5)
        );
        assert!(binary_parameter(&[1, 2, 3], &Type::INT4, 0).is_err());
    }
}
