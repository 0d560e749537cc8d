//! Our own replication connection: a plain socket speaking the frontend/backend protocol with
//! `replication=database`, authentication (trust, cleartext, MD5, SCRAM-SHA-256), simple
//! queries, and the CopyBoth stream of `START_REPLICATION`.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::auth::{self, Scram, ScramError};
use crate::pg::tls::{TlsError, TlsSettings};
use crate::pg::url::{ConnParams, Host};
use crate::pg::wire::backend::{self, Authentication, BackendMessage, PgErrorFields, DEFAULT_MAX_FRAME};
use crate::pg::wire::{frontend, DecodeError};
use crate::types::Lsn;

/// A replication connection failure, with context.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReplError {
    /// The socket failed.
    Io {
        /// What we were doing.
        context: String,
        /// Why.
        source: io::Error,
    },
    /// The server answered with an ErrorResponse.
    Server {
        /// What we were doing.
        context: String,
        /// Its fields (SQLSTATE in `code`).
        fields: Box<PgErrorFields>,
    },
    /// The server sent bytes that are not valid protocol.
    Decode {
        /// What we were doing.
        context: String,
        /// Where and what.
        source: DecodeError,
    },
    /// A valid message we did not expect at this point.
    Protocol(String),
    /// Authentication needs something we do not have or support.
    Auth(String),
    /// SCRAM failed.
    Scram(ScramError),
    /// A connection pooler (PgBouncer and similar) seems to sit in front of the server.
    Pooler(String),
    /// TLS settings, certificates or the handshake.
    Tls(TlsError),
}

impl ReplError {
    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplError::Server { fields, .. } => Some(&fields.code),
            _ => None,
        }
    }

    /// True for failures that a reconnect may cure (network trouble, server restarts).
    pub fn is_transient(&self) -> bool {
        match self {
            ReplError::Io { .. } => true,
            ReplError::Server { fields, .. } => {
                fields.code.starts_with("08")
                    || matches!(fields.code.as_str(), "57P01" | "57P02" | "57P03" | "53300" | "55006")
            }
            _ => false,
        }
    }
}

impl fmt::Display for ReplError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplError::Io { context, source } => write!(f, "{context}: {source}"),
            ReplError::Server { context, fields } => {
                write!(f, "{context}: {} {} (SQLSTATE {})", fields.severity, fields.message, fields.code)?;
                if let Some(d) = &fields.detail {
                    write!(f, "; {d}")?;
                }
                Ok(())
            }
            ReplError::Decode { context, source } => write!(f, "{context}: {source}"),
            ReplError::Protocol(m) | ReplError::Auth(m) | ReplError::Pooler(m) => f.write_str(m),
            ReplError::Scram(e) => write!(f, "SCRAM authentication: {e}"),
            ReplError::Tls(e) => write!(f, "REPLICATION_URL: {e}"),
        }
    }
}

impl std::error::Error for ReplError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReplError::Io { source, .. } => Some(source),
            ReplError::Decode { source, .. } => Some(source),
            ReplError::Scram(e) => Some(e),
            ReplError::Tls(e) => Some(e),
            ReplError::Server { .. } | ReplError::Protocol(_) | ReplError::Auth(_) | ReplError::Pooler(_) => None,
        }
    }
}

impl From<ScramError> for ReplError {
    fn from(e: ScramError) -> Self {
        ReplError::Scram(e)
    }
}

#[cfg(feature = "tls")]
type TlsStream = Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    #[cfg(feature = "tls")]
    Tls(TlsStream),
}

impl Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.sock.set_read_timeout(t),
        }
    }

    /// Whether the session is encrypted.
    fn is_tls(&self) -> bool {
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => false,
            #[cfg(feature = "tls")]
            Stream::Tls(_) => true,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Asks for TLS with an SSLRequest and, when the server agrees, completes the handshake.
/// `prefer` falls back to plaintext when the server declines; stricter modes fail.
fn negotiate_tls(mut tcp: TcpStream, host: &str, settings: &TlsSettings) -> Result<Stream, ReplError> {
    if !settings.attempts_tls() {
        return Ok(Stream::Tcp(tcp));
    }
    let mut request = Vec::with_capacity(8);
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).map_err(io_ctx("sending SSLRequest"))?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).map_err(io_ctx("reading the answer to SSLRequest"))?;
    match answer[0] {
        b'S' => start_tls(tcp, host, settings),
        b'N' if settings.mode.requires_tls() => Err(ReplError::Tls(TlsError::NotOffered)),
        b'N' => Ok(Stream::Tcp(tcp)),
        other => Err(ReplError::Protocol(format!(
            "unexpected answer {:?} to SSLRequest (is this a PostgreSQL server?)",
            char::from(other)
        ))),
    }
}

#[cfg(feature = "tls")]
fn start_tls(tcp: TcpStream, host: &str, settings: &TlsSettings) -> Result<Stream, ReplError> {
    use rustls::pki_types::ServerName;
    let config = crate::pg::tls::client_config(settings).map_err(ReplError::Tls)?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| ReplError::Tls(TlsError::Config(format!("TLS server name {host:?}: {e}"))))?;
    let session =
        rustls::ClientConnection::new(config, name).map_err(|e| ReplError::Tls(TlsError::Handshake(e.to_string())))?;
    let mut stream = rustls::StreamOwned::new(session, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).map_err(|e| {
            // rustls reports a refused certificate as an InvalidData I/O error carrying its own error.
            ReplError::Tls(TlsError::Handshake(e.to_string()))
        })?;
    }
    Ok(Stream::Tls(Box::new(stream)))
}

#[cfg(not(feature = "tls"))]
fn start_tls(_tcp: TcpStream, _host: &str, _settings: &TlsSettings) -> Result<Stream, ReplError> {
    Err(ReplError::Tls(TlsError::Config("this synchrod was built without the `tls` feature".into())))
}

/// One frame, owned: tag and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedFrame {
    /// Message type.
    pub tag: u8,
    /// Body.
    pub body: Vec<u8>,
}

/// The result row of `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's system identifier (changes on restore from another cluster's backup).
    pub system_id: String,
    /// Current timeline.
    pub timeline: i64,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
    /// Database of this connection.
    pub dbname: Option<String>,
}

/// A replication connection.
pub struct ReplicationConn {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    out: Vec<u8>,
}

fn io_ctx(context: &str) -> impl FnOnce(io::Error) -> ReplError + '_ {
    move |source| ReplError::Io { context: context.to_string(), source }
}

impl ReplicationConn {
    /// Connects and authenticates with `replication=database`.
    pub fn connect(params: &ConnParams, connect_timeout: Duration) -> Result<ReplicationConn, ReplError> {
        let tls = TlsSettings::from_params(params).map_err(ReplError::Tls)?;
        let stream = match &params.host {
            Host::UnixDir(dir) => {
                let path = format!("{dir}/.s.PGSQL.{}", params.port);
                Stream::Unix(UnixStream::connect(&path).map_err(io_ctx(&format!("connecting to {path}")))?)
            }
            Host::Tcp(host) => {
                let what = format!("connecting to {host}:{}", params.port);
                let addrs: Vec<_> = (host.as_str(), params.port).to_socket_addrs().map_err(io_ctx(&what))?.collect();
                let mut last = None;
                let mut connected = None;
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, connect_timeout) {
                        Ok(s) => {
                            connected = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = connected.ok_or_else(|| ReplError::Io {
                    context: what.clone(),
                    source: last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")),
                })?;
                let _ = s.set_nodelay(true);
                s.set_read_timeout(Some(connect_timeout)).map_err(io_ctx("setting a socket timeout"))?;
                negotiate_tls(s, host, &tls)?
            }
        };
        stream.set_read_timeout(Some(connect_timeout)).map_err(io_ctx("setting a socket timeout"))?;
        let mut conn =
            ReplicationConn { stream, buf: Vec::with_capacity(64 * 1024), start: 0, out: Vec::with_capacity(256) };
        let mut startup = vec![
            ("user", params.user.as_str()),
            ("database", params.dbname.as_str()),
            ("replication", "database"),
            ("application_name", "synchrod"),
        ];
        // Values arrive rendered with the session's settings: pin the ones every pooled session
        // uses (UTC, ISO dates, interval and bytea formats), so text renders alike in both.
        startup.push(("options", super::SESSION_OPTIONS));
        frontend::startup(&mut conn.out, &startup);
        conn.flush_out("sending the startup message")?;
        conn.authenticate(params)?;
        conn.wait_ready("starting the session")?;
        Ok(conn)
    }

    /// Whether the session runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    fn flush_out(&mut self, context: &str) -> Result<(), ReplError> {
        let out = std::mem::take(&mut self.out);
        let r = self.stream.write_all(&out).and_then(|_| self.stream.flush());
        self.out = out;
        self.out.clear();
        r.map_err(io_ctx(context))
    }

    /// Sets how long a read may block (the stream loop wakes up at least this often).
    pub fn set_read_timeout(&self, t: Duration) -> Result<(), ReplError> {
        self.stream.set_read_timeout(Some(t)).map_err(io_ctx("setting the read timeout"))
    }

    /// Reads the next frame. `Ok(None)` when the read timed out with no complete frame.
    pub fn read_frame(&mut self, context: &str) -> Result<Option<OwnedFrame>, ReplError> {
        loop {
            match backend::next_frame(&self.buf[self.start..], DEFAULT_MAX_FRAME)
                .map_err(|source| ReplError::Decode { context: context.to_string(), source })?
            {
                Some((frame, used)) => {
                    let owned = OwnedFrame { tag: frame.tag, body: frame.body.to_vec() };
                    self.start += used;
                    if self.start == self.buf.len() {
                        self.buf.clear();
                        self.start = 0;
                    }
                    return Ok(Some(owned));
                }
                None => {
                    if self.start > 0 && self.start * 2 > self.buf.len() {
                        self.buf.drain(..self.start);
                        self.start = 0;
                    }
                    let len = self.buf.len();
                    self.buf.resize(len + 64 * 1024, 0);
                    match self.stream.read(&mut self.buf[len..]) {
                        Ok(0) => {
                            self.buf.truncate(len);
                            return Err(ReplError::Io {
                                context: context.to_string(),
                                source: io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"),
                            });
                        }
                        Ok(n) => self.buf.truncate(len + n),
                        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                            self.buf.truncate(len);
                            return Ok(None);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => self.buf.truncate(len),
                        Err(source) => {
                            self.buf.truncate(len);
                            return Err(ReplError::Io { context: context.to_string(), source });
                        }
                    }
                }
            }
        }
    }

    fn expect_frame(&mut self, context: &str) -> Result<OwnedFrame, ReplError> {
        self.read_frame(context)?.ok_or_else(|| ReplError::Io {
            context: context.to_string(),
            source: io::Error::new(io::ErrorKind::TimedOut, "no answer from the server"),
        })
    }

    fn authenticate(&mut self, params: &ConnParams) -> Result<(), ReplError> {
        let mut scram: Option<Scram> = None;
        loop {
            let frame = self.expect_frame("authenticating")?;
            let msg = backend::decode(backend::Frame { tag: frame.tag, body: &frame.body })
                .map_err(|source| ReplError::Decode { context: "authenticating".into(), source })?;
            let password = || {
                params.password.clone().ok_or_else(|| {
                    ReplError::Auth("the server asks for a password but REPLICATION_URL has none".into())
                })
            };
            match msg {
                BackendMessage::Authentication(Authentication::Ok) => return Ok(()),
                BackendMessage::Authentication(Authentication::CleartextPassword) => {
                    frontend::password(&mut self.out, &password()?);
                    self.flush_out("sending the password")?;
                }
                BackendMessage::Authentication(Authentication::Md5Password(salt)) => {
                    frontend::password(&mut self.out, &auth::md5_response(&params.user, &password()?, salt));
                    self.flush_out("sending the MD5 password")?;
                }
                BackendMessage::Authentication(Authentication::Sasl(mechs)) => {
                    if !mechs.contains(&Scram::MECHANISM) {
                        return Err(ReplError::Auth(format!(
                            "the server offers only {mechs:?}; SCRAM-SHA-256 is supported"
                        )));
                    }
                    let client = Scram::start(&password()?);
                    frontend::sasl_initial_response(&mut self.out, Scram::MECHANISM, client.client_first()?);
                    self.flush_out("sending SCRAM client-first")?;
                    scram = Some(client);
                }
                BackendMessage::Authentication(Authentication::SaslContinue(data)) => {
                    let client =
                        scram.as_mut().ok_or_else(|| ReplError::Protocol("SASL continue without SASL".into()))?;
                    frontend::sasl_response(&mut self.out, client.client_final(data)?);
                    self.flush_out("sending SCRAM client-final")?;
                }
                BackendMessage::Authentication(Authentication::SaslFinal(data)) => {
                    let client = scram.as_mut().ok_or_else(|| ReplError::Protocol("SASL final without SASL".into()))?;
                    client.verify(data)?;
                }
                BackendMessage::Authentication(Authentication::Unsupported(code)) => {
                    return Err(ReplError::Auth(format!(
                        "authentication method {code} is not supported (use scram-sha-256, md5, password or trust)"
                    )))
                }
                BackendMessage::Error(fields) => return Err(server_error("authenticating", fields)),
                BackendMessage::Notice(_) | BackendMessage::NegotiateProtocolVersion { .. } => {}
                other => return Err(ReplError::Protocol(format!("unexpected {other:?} while authenticating"))),
            }
        }
    }

    fn wait_ready(&mut self, context: &str) -> Result<(), ReplError> {
        loop {
            let frame = self.expect_frame(context)?;
            match backend::decode(backend::Frame { tag: frame.tag, body: &frame.body })
                .map_err(|source| ReplError::Decode { context: context.to_string(), source })?
            {
                BackendMessage::ReadyForQuery { .. } => return Ok(()),
                BackendMessage::Error(fields) => return Err(server_error(context, fields)),
                _ => {}
            }
        }
    }

    /// Runs a simple query and returns its rows as text.
    pub fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ReplError> {
        frontend::query(&mut self.out, sql);
        self.flush_out("sending a query")?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self.expect_frame("reading a query result")?;
            match backend::decode(backend::Frame { tag: frame.tag, body: &frame.body })
                .map_err(|source| ReplError::Decode { context: format!("reading the result of {sql}"), source })?
            {
                BackendMessage::DataRow(values) => {
                    rows.push(values.into_iter().map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned())).collect())
                }
                BackendMessage::Error(fields) => error = Some(server_error(sql, fields)),
                BackendMessage::ReadyForQuery { .. } => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                _ => {}
            }
        }
    }

    /// `IDENTIFY_SYSTEM`. A syntax error here means the server did not enter replication mode:
    /// almost always a connection pooler that ignored `replication=database`.
    pub fn identify_system(&mut self) -> Result<SystemInfo, ReplError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").map_err(|e| match e.sqlstate() {
            Some("42601") => ReplError::Pooler(
                "IDENTIFY_SYSTEM was rejected as a syntax error: this is not a replication connection. \
                 Is a connection pooler (PgBouncer, pgcat, a managed-service proxy) in front of REPLICATION_URL? \
                 Point REPLICATION_URL directly at the PostgreSQL server."
                    .into(),
            ),
            _ => e,
        })?;
        let row = rows.first().ok_or_else(|| ReplError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
        let col = |i: usize| row.get(i).cloned().flatten();
        Ok(SystemInfo {
            system_id: col(0).unwrap_or_default(),
            timeline: col(1).and_then(|t| t.parse().ok()).unwrap_or(0),
            xlogpos: col(2).and_then(|l| l.parse().ok()).unwrap_or(Lsn::ZERO),
            dbname: col(3),
        })
    }

    /// Creates a permanent logical slot with `pgoutput`; returns its consistent point.
    pub fn create_slot(&mut self, slot: &str) -> Result<Lsn, ReplError> {
        let rows =
            self.simple_query(&format!("CREATE_REPLICATION_SLOT \"{slot}\" LOGICAL pgoutput NOEXPORT_SNAPSHOT"))?;
        Ok(rows.first().and_then(|r| r.get(1).cloned().flatten()).and_then(|l| l.parse().ok()).unwrap_or(Lsn::ZERO))
    }

    /// `START_REPLICATION` and entry into CopyBoth mode.
    pub fn start_replication(&mut self, slot: &str, from: Lsn, publication: &str) -> Result<(), ReplError> {
        let sql = format!(
            "START_REPLICATION SLOT \"{slot}\" LOGICAL {from} (proto_version '1', publication_names '\"{publication}\"')"
        );
        frontend::query(&mut self.out, &sql);
        self.flush_out("starting replication")?;
        loop {
            let frame = self.expect_frame("starting replication")?;
            match backend::decode(backend::Frame { tag: frame.tag, body: &frame.body })
                .map_err(|source| ReplError::Decode { context: "starting replication".into(), source })?
            {
                BackendMessage::CopyBothResponse => return Ok(()),
                BackendMessage::Error(fields) => {
                    let err = server_error("starting replication", fields);
                    // The session is unusable for more commands after an error here: drain to Ready.
                    let _ = self.wait_ready("after a failed START_REPLICATION");
                    return Err(err);
                }
                BackendMessage::Notice(_) => {}
                other => return Err(ReplError::Protocol(format!("unexpected {other:?} after START_REPLICATION"))),
            }
        }
    }

    /// Sends a standby status update.
    pub fn send_status(&mut self, write: Lsn, flush: Lsn, apply: Lsn, reply: bool) -> Result<(), ReplError> {
        frontend::standby_status(
            &mut self.out,
            write,
            flush,
            apply,
            frontend::pg_clock(std::time::SystemTime::now()),
            reply,
        );
        self.flush_out("sending a standby status update")
    }

    /// Leaves copy mode (streaming): CopyDone, then what the server still sends is read until it
    /// is ready for queries again (at most [`CLOSE_DRAIN`]). Closing the socket with unread
    /// data in it resets the connection, and the server could lose with it what we sent just
    /// before: the final standby status update of a graceful shutdown.
    pub fn end_copy(&mut self) {
        frontend::copy_done(&mut self.out);
        if self.flush_out("ending the replication stream").is_err() {
            return;
        }
        let deadline = Instant::now() + CLOSE_DRAIN;
        while Instant::now() < deadline {
            match self.read_frame("ending the replication stream") {
                Ok(Some(frame)) if frame.tag == b'Z' => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    /// Ends the stream and the session politely (CopyDone, then Terminate).
    pub fn close(mut self) {
        frontend::copy_done(&mut self.out);
        frontend::terminate(&mut self.out);
        let _ = self.flush_out("closing the replication connection");
    }
}

/// How long [`ReplicationConn::end_copy`] waits for the server to leave copy mode.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);

fn server_error(context: &str, fields: PgErrorFields) -> ReplError {
    if fields.message.contains("unsupported startup parameter")
        || fields.message.contains("replication") && fields.code == "08P01"
    {
        return ReplError::Pooler(format!(
            "the server refused the replication connection ({}): a connection pooler such as PgBouncer does not \
             support replication; point REPLICATION_URL directly at PostgreSQL",
            fields.message
        ));
    }
    ReplError::Server { context: context.to_string(), fields: Box::new(fields) }
}
