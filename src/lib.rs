//! synchro: an offline-first sync server for PostgreSQL.
//!
//! Mobile and desktop apps keep a local SQLite copy of their user's rows; synchro applies their
//! writes to PostgreSQL and streams everyone's changes back, reading PostgreSQL's logical
//! replication stream itself so it sees every change however it was made. It speaks the wire
//! protocol of the published Swift, Kotlin and React Native SDKs.
//!
//! # Two data flows
//!
//! ```text
//! WAL ──► pg::conn ──► pg::wire ──► capture::stream ──► channel ──► capture::writer ──► store
//!         (socket,     (frames,     (decode: relation   (bounded)   (read ─► plan ─► write,
//!          TLS, auth)   pgoutput;    cache, events)                  one transaction per batch)
//!                       no I/O)
//!
//! HTTP ──► http (I/O thread ─► workers) ──► http::auth ──► service ──► engine ──► store
//! ```
//!
//! The only value that flows back up the WAL path is the committed LSN, which the replication
//! thread reports to the server as its flush position. Modules depend only downwards: `pg`
//! knows nothing of capture or the store, `store` nothing of capture or the engine.
//!
//! # Codemap
//!
//! | Module | Concern |
//! |---|---|
//! | [`config`] | every environment variable declared once (name, help, default, parser): `Config` and `--help` |
//! | [`logging`] | log lines with fields through the `log` facade, request ids, the JSON-lines logger `synchrod` installs |
//! | [`types`] | `Lsn`, `Oid`, `Seq`, `BucketId`, `UserId`, `Op` |
//! | [`pg`] | our PostgreSQL client: connection strings ([`pg::url`]), TLS ([`pg::tls`], feature `tls`), SCRAM-SHA-256/MD5 ([`pg::auth`]), the wire codec ([`pg::wire`]: frames, backend messages, pgoutput; no I/O) and the replication connection ([`pg::conn`]) |
//! | [`capture`] | change capture, WAL to committed batch: supervisor and slot handling ([`capture::supervisor`]), leader election ([`capture::leader`]), the stream and its decoder ([`capture::stream`], [`capture::decode`], [`capture::events`]), bucket assignment ([`capture::buckets`]), row rendering ([`capture::row_json`]), the writer ([`capture::writer`]) with its reads ([`capture::source`]) and pure planner ([`capture::plan`]), the edge backfill ([`capture::backfill`]) |
//! | [`rules`] | `BUCKET_RULES`: shared buckets from membership tables, parsed and checked (resolved onto the registry by `store::introspect`) |
//! | [`registry`], [`schema`] | synced tables as introspected; the served schema and its hash |
//! | [`store`] | all SQL on synchro's own tables: migrations, introspection, the writer's session and batch ([`store::writer_session`]), changelog, edges, WAL position, visibility, clients, rule-bucket subscriptions and departures ([`store::subscriptions`]), the pull probe, publication, pool (sessions with prepared hot statements and statements built at run time), read replicas |
//! | [`engine`] | register, pull, push (set-based runs, `engine::push`), snapshot, rebuild, debug, schema, tables: typed in, typed out (library API, no HTTP, no JSON); scope decisions in `engine::scope`; bucket-rule subscriptions and their cache in `engine::subscriptions`, leaving a rule bucket in `engine::departures`, per-bucket changelog bounds for empty pulls in `engine::heads` |
//! | [`protocol`] | request/response messages and the served schema's wire form: the contract's field names live here only; the one check of client-supplied strings |
//! | [`http`], [`service`] | the HTTP edge (our own HTTP/1.1 server: one I/O thread, fixed workers, every limit before a worker sees a request); `service` turns JSON into `protocol` structs and back around the engine |
//! | [`jwt`], [`version`] | bearer tokens (decoding, claim rules, HMAC), the minimum-version gate |
//! | `jwks`, `http_get` | `JWKS_URL` mode (feature `jwks`): key sets, RS*/ES* with ring, cache and refresher; our blocking HTTP GET client |
//! | [`checksum`], [`json_text`], [`time`] | record checksums, canonical JSON, timestamps |
//! | [`cluster`], [`dev`] | private PostgreSQL clusters for `synchrod dev` and the tests |
//! | [`server`] | the composition root |
//!
//! # Invariants
//!
//! * Exactly one writer appends to `sync_changelog`, in commit order: a lower `seq` is never
//!   visible after a higher one. Across instances, the capture leader lock and the writer's
//!   compare-and-set on the stored position keep it one.
//! * A batch's changelog rows, its bucket edge changes and the WAL position that covers them
//!   commit in one transaction: nothing at or below the stored position is written twice,
//!   nothing above it is confirmed to the server, and edges never disagree with the changelog
//!   a pull reads next to them.
//! * A changelog row commits only after the replicated transaction behind it is visible to
//!   other sessions, so a pull never hydrates the version before the change it announces.
//! * Memory is bounded on every path: frames are capped, counts are checked before allocation,
//!   the event channel and the HTTP queue are bounded, large transactions stream in chunks, and
//!   every byte the HTTP edge holds (request heads and bodies, unread responses) is reserved
//!   against one budget before it is read or kept.
//! * No client can hold a worker: sockets are read and written by the HTTP I/O thread, workers
//!   only run handlers (and hand what the socket does not take back to the I/O thread); a
//!   streamed body's next piece is rendered only once the client has read the last.
//! * SQL identifiers come only from the introspected registry, always quoted; values are
//!   always bound parameters. SQL on synchro's own tables (`sync_*`, `synchro_*`) lives in
//!   [`store`] only; the engine and capture read the application's tables (hydration, owners,
//!   current rows) themselves.
//! * A row reaches a client only if it is in the client's scope on the version read, decided by
//!   `engine::scope` in the statement that reads it (never from what the changelog said); a
//!   write applies only if its written version is in the writer's scope. Checkpoints exist only
//!   for subscribed buckets. Excluded columns never leave the server, not even in a checksum.
//! * Every client-supplied string passes `protocol::check_text` before it is stored, compared
//!   in SQL or logged.
//! * A read replica serves a page only after replaying past the primary's WAL insert position
//!   taken after the page's primary reads: no client ever gets a row older than the change that
//!   announced it, whichever server read it.
//! * No thread dies silently: workers survive handler panics, a panic on the HTTP I/O thread
//!   aborts the process, the capture supervisor restarts failed sessions (a writer panic
//!   included) with capped backoff and logs every attempt with the error's whole chain and
//!   whether an operator must act.
//!
//! Deliberately absent: an async runtime (the `postgres` crate keeps its own inside each
//! connection; the HTTP edge polls readiness with `mio` on one thread of its own), an HTTP
//! server crate, globals other than the `log` facade's logger and level, import cycles between
//! modules, and `unsafe` code except the one audited `getrlimit`/`setrlimit` call in
//! [`http::fd_limit`].
// One audited exception: `http::fd_limit` (no safe wrapper for setrlimit is in the tree).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod capture;
pub mod check;
pub mod checksum;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod engine;
pub mod fuzzing;
pub mod http;
#[cfg(feature = "jwks")]
pub mod http_get;
pub mod json_text;
#[cfg(feature = "jwks")]
pub mod jwks;
pub mod jwt;
pub mod logging;
pub mod metrics;
pub mod pg;
pub mod protocol;
pub mod registry;
pub mod rls;
pub mod rules;
pub mod schema;
pub mod server;
pub mod service;
pub mod store;
pub mod time;
pub mod types;
pub mod version;
