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
//! WAL ──► replication::conn ──► wire (frames, pgoutput) ──► decode ──► channel ──► writer ──► store
//!          (socket, auth)        (pure, no I/O)              (relation   (bounded)   (buckets,
//!                                                             cache)                  changelog, LSN)
//!
//! HTTP ──► http (I/O thread ─► workers) ──► http::auth ──► service ──► engine ──► store
//! ```
//!
//! The only value that flows back up the WAL path is the committed LSN, which the replication
//! thread reports to the server as its flush position.
//!
//! # Codemap
//!
//! | Module | Concern |
//! |---|---|
//! | [`config`] | every environment variable declared once (name, help, default, parser): `Config` and `--help` |
//! | [`logging`] | log lines with fields through the `log` facade, request ids, the JSON-lines logger `synchrod` installs |
//! | [`types`] | `Lsn`, `Oid`, `Seq`, `BucketId`, `UserId`, `Op` |
//! | [`wire`] | protocol codec: frames, backend messages, pgoutput (no I/O) |
//! | [`replication`] | our replication connection (SCRAM/MD5, TLS), sessions, supervisor, leader election |
//! | [`tls`], [`pgurl`] | connection strings; `sslmode`/`sslrootcert` with rustls (feature `tls`) |
//! | [`decode`] | pgoutput -> row changes, relation cache |
//! | [`change`] | the events between the replication thread and the writer |
//! | [`buckets`] | bucket assignment through foreign-key chains, pluggable |
//! | [`rules`] | `BUCKET_RULES`: shared buckets from membership tables, parsed and checked (resolved onto the registry by `store::introspect`) |
//! | [`writer`] | the changelog writer thread, edge backfill |
//! | [`registry`], [`schema`] | synced tables as introspected; the served schema and its hash |
//! | [`store`] | all SQL: migrations, introspection, clients, changelog, the pull probe, publication, pool (sessions with prepared hot statements), read replicas |
//! | [`engine`] | register, pull, push, snapshot, rebuild, debug, schema, tables: typed in, typed out (library API, no HTTP, no JSON); scope decisions in `engine::scope` |
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
//! * The confirmed LSN is stored in the same transaction as the changelog rows it covers:
//!   nothing at or below it is written twice, nothing above it is confirmed to the server.
//! * Memory is bounded on every path: frames are capped, counts are checked before allocation,
//!   the event channel and the HTTP queue are bounded, large transactions stream in chunks, and
//!   every byte the HTTP edge holds (request heads and bodies, unread responses) is reserved
//!   against one budget before it is read or kept.
//! * No client can hold a worker: sockets are read and written by the HTTP I/O thread, workers
//!   only run handlers (and hand what the socket does not take back to the I/O thread).
//! * SQL identifiers come only from the introspected registry, always quoted; values are
//!   always bound parameters.
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
//!   aborts the process, the capture supervisor restarts failed sessions with capped backoff
//!   and logs every attempt.
//!
//! Deliberately absent: an async runtime (the `postgres` crate keeps its own inside each
//! connection; the HTTP edge polls readiness with `mio` on one thread of its own), an HTTP
//! server crate, globals other than the `log` facade's logger and level, and `unsafe` code
//! except the one audited `getrlimit`/`setrlimit` call in [`http::fd_limit`].
// One audited exception: `http::fd_limit` (no safe wrapper for setrlimit is in the tree).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod capture;
pub mod changelog_session;
pub mod check;
pub mod checksum;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod edge_session;
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
pub mod session_thread;
pub mod store;
pub mod time;
pub mod types;
pub mod version;
