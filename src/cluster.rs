//! A private PostgreSQL cluster started from the installed server binaries.
//!
//! `synchrod dev` uses it as the embedded default (a cluster under `./.synchro/`), and the test
//! harness starts one per test binary. The cluster always listens on loopback only, on a port we
//! choose, with `wal_level = logical`; it never touches a service that may already run on 5432.
//!
//! PostgreSQL refuses to run as root, so when we are root every server binary runs as the
//! `postgres` OS user (through `runuser`, from `/` rather than our working directory, which that
//! user may not be allowed to enter) and the data directory is handed to that user. When that
//! user cannot reach the requested directory (a `0700` home or temp directory on its path), the
//! cluster lives under the `postgres` user's home instead, in a directory named after the
//! requested one, and the requested directory records where (see [`LocalCluster::start`]).
//!
//! A cluster outlives nothing: [`LocalCluster::stop_when_process_exits`] starts a small watchdog
//! (its own session, so a terminal's Ctrl-C does not reach it first) that stops the cluster once
//! the owning process is gone, however it ended.

use std::fmt;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Why a local cluster could not be found, created, started or stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClusterError {
    /// No PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`) were found.
    BinariesNotFound {
        /// The places that were searched.
        searched: Vec<PathBuf>,
    },
    /// A server binary exited unsuccessfully.
    CommandFailed {
        /// What was run.
        command: String,
        /// Its exit status and standard error.
        detail: String,
    },
    /// A file-system or process error, with what we were doing.
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The `postgres` OS user cannot use the cluster's directory, nor one under its own home.
    Unreachable {
        /// The directory that was requested.
        dir: PathBuf,
    },
    /// The server did not accept connections in time.
    StartTimeout {
        /// The port it should have listened on.
        port: u16,
        /// The tail of the server log.
        log_tail: String,
    },
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::BinariesNotFound { searched } => {
                write!(
                    f,
                    "no PostgreSQL server binaries found (looked for initdb in {}); install them, e.g. \
                     `apt-get install -y postgresql` on Debian/Ubuntu or `brew install postgresql@15` on macOS, \
                     or set PG_BIN_DIR to the directory that holds initdb, pg_ctl and postgres",
                    searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                )
            }
            ClusterError::CommandFailed { command, detail } => write!(f, "`{command}` failed: {detail}"),
            ClusterError::Unreachable { dir } => write!(
                f,
                "PostgreSQL runs as the postgres OS user, which cannot enter {} (nor a directory under its own \
                 home): run from a directory that user can reach, such as one under /tmp, or as a non-root user",
                dir.display()
            ),
            ClusterError::Io { context, source } => write!(f, "{context}: {source}"),
            ClusterError::StartTimeout { port, log_tail } => {
                write!(f, "PostgreSQL did not accept connections on 127.0.0.1:{port} in time; server log:\n{log_tail}")
            }
        }
    }
}

impl std::error::Error for ClusterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClusterError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

/// How to create and start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The directory that holds everything: `data/` (PGDATA), the socket and the log.
    pub dir: PathBuf,
    /// The TCP port on 127.0.0.1; `None` picks a free one (or reuses the one recorded in `dir`).
    pub port: Option<u16>,
    /// Extra `postgresql.conf` lines, appended on every start (later lines win).
    pub extra_conf: Vec<String>,
    /// Favour speed over durability against OS crashes (`fsync=off`): committed data still
    /// survives a killed server process. For tests, never for data you keep.
    pub fast_unsafe: bool,
}

impl ClusterOptions {
    /// Options for a cluster under `dir` on a free port.
    pub fn new(dir: impl Into<PathBuf>) -> ClusterOptions {
        ClusterOptions { dir: dir.into(), port: None, extra_conf: Vec::new(), fast_unsafe: false }
    }
}

/// A PostgreSQL cluster on 127.0.0.1 run from the installed server binaries.
#[derive(Debug)]
pub struct LocalCluster {
    bin_dir: PathBuf,
    dir: PathBuf,
    port: u16,
    run_as_postgres: bool,
}

/// The superuser every local cluster is initialised with (trust authentication on loopback).
pub const SUPERUSER: &str = "postgres";

impl LocalCluster {
    /// Finds the directory holding `initdb`, `pg_ctl` and `postgres`: `PG_BIN_DIR`, then
    /// `pg_config --bindir`, then the newest `/usr/lib/postgresql/<version>/bin`, then `PATH`.
    pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
        let mut searched = Vec::new();
        let has_initdb = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
        if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
            let dir = PathBuf::from(dir);
            if has_initdb(&dir) {
                return Ok(dir);
            }
            searched.push(dir);
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            if out.status.success() {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if has_initdb(&dir) {
                    return Ok(dir);
                }
                searched.push(dir);
            }
        }
        let base = Path::new("/usr/lib/postgresql");
        if let Ok(entries) = fs::read_dir(base) {
            let mut versions: Vec<(u32, PathBuf)> = entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    Some((v, e.path().join("bin")))
                })
                .collect();
            versions.sort();
            for (_, dir) in versions.into_iter().rev() {
                if has_initdb(&dir) {
                    return Ok(dir);
                }
                searched.push(dir);
            }
        } else {
            searched.push(base.to_path_buf());
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                if has_initdb(&dir) {
                    return Ok(dir);
                }
            }
            searched.push(PathBuf::from("$PATH"));
        }
        Err(ClusterError::BinariesNotFound { searched })
    }

    /// Creates the cluster if `opts.dir` holds none yet, then starts it and waits until it
    /// accepts connections. An already running cluster in `opts.dir` is reused.
    ///
    /// Run as root, the server binaries run as the `postgres` OS user. When that user cannot
    /// reach `opts.dir`, the cluster lives in `~postgres/synchro-dev/<name>-<hash of the path>`
    /// instead (the same directory on every start, so it is reused) and `opts.dir/location`
    /// names it; [`LocalCluster::dir`] is where it is.
    pub fn start(opts: &ClusterOptions) -> Result<LocalCluster, ClusterError> {
        let bin_dir = Self::find_bin_dir()?;
        let run_as_postgres = is_root();
        let dir = prepare_dir(&opts.dir, run_as_postgres)?;
        let port_file = dir.join("port");
        let port = match opts.port {
            Some(p) => p,
            None => match fs::read_to_string(&port_file).ok().and_then(|s| s.trim().parse::<u16>().ok()) {
                Some(p) if port_is_free(p) || is_running(&bin_dir, &dir.join("data"), run_as_postgres) => p,
                _ => free_port()?,
            },
        };
        fs::write(&port_file, port.to_string()).map_err(io_err("recording the cluster port"))?;
        let cluster = LocalCluster { bin_dir, dir, port, run_as_postgres };
        if run_as_postgres {
            cluster.chown_to_postgres(&cluster.dir)?;
        }
        if !cluster.data_dir().join("PG_VERSION").is_file() {
            cluster.initdb()?;
        }
        cluster.write_conf(opts)?;
        if !cluster.is_running() {
            cluster.start_server()?;
        }
        cluster.wait_ready(Duration::from_secs(60))?;
        Ok(cluster)
    }

    /// Builds a streaming replica of this (running) cluster under `opts.dir` with
    /// `pg_basebackup -R -X stream` over loopback as the superuser, then starts it on its own
    /// port (`opts.port` or a free one) and waits until it accepts read-only connections.
    ///
    /// The replica is a [`LocalCluster`] like any other: stop it, pause its replay through SQL,
    /// and give it its own watchdog with [`LocalCluster::stop_when_process_exits`]. The primary's
    /// `pg_hba.conf` must allow replication connections for the superuser from 127.0.0.1, which
    /// the default one written by `initdb --auth=trust` (and [`LocalCluster::set_hba`]) does.
    pub fn start_replica(&self, opts: &ClusterOptions) -> Result<LocalCluster, ClusterError> {
        let dir = prepare_dir(&opts.dir, self.run_as_postgres)?;
        let port = match opts.port {
            Some(p) => p,
            None => free_port()?,
        };
        fs::write(dir.join("port"), port.to_string()).map_err(io_err("recording the replica port"))?;
        let replica = LocalCluster { bin_dir: self.bin_dir.clone(), dir, port, run_as_postgres: self.run_as_postgres };
        if replica.run_as_postgres {
            replica.chown_to_postgres(&replica.dir)?;
        }
        if !replica.data_dir().join("PG_VERSION").is_file() {
            let mut cmd = replica.command("pg_basebackup");
            cmd.arg("-D").arg(replica.data_dir()).args([
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
            ]);
            replica.run(cmd, "pg_basebackup")?;
        }
        // The copied synchro.conf names the primary's port and socket directory: rewrite it.
        replica.write_conf(opts)?;
        if !replica.is_running() {
            replica.start_server()?;
        }
        replica.wait_ready(Duration::from_secs(60))?;
        Ok(replica)
    }

    /// The directory given in the options (canonicalised).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// PGDATA.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The directory of the Unix-domain socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// A connection URL for `dbname` as the superuser over TCP loopback.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{dbname}", self.port)
    }

    /// The server log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn command(&self, program: &str) -> Command {
        server_command(&self.bin_dir.join(program), self.run_as_postgres)
    }

    fn run(&self, mut cmd: Command, what: &str) -> Result<Output, ClusterError> {
        cmd.stdin(Stdio::null());
        let out = cmd.output().map_err(io_err(format!("running {what}")))?;
        if out.status.success() {
            Ok(out)
        } else {
            // The error is on stderr; stdout holds progress chatter (initdb's), shown only when
            // stderr is empty.
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let said = if stderr.is_empty() { String::from_utf8_lossy(&out.stdout).trim().to_string() } else { stderr };
            Err(ClusterError::CommandFailed { command: what.to_string(), detail: format!("{}; {said}", out.status) })
        }
    }

    fn chown_to_postgres(&self, path: &Path) -> Result<(), ClusterError> {
        chown_to_postgres(path)
    }

    fn initdb(&self) -> Result<(), ClusterError> {
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(self.data_dir()).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        self.run(cmd, "initdb")?;
        Ok(())
    }

    fn write_conf(&self, opts: &ClusterOptions) -> Result<(), ClusterError> {
        // Our settings live in their own file, included from postgresql.conf, so restarts with
        // other options rewrite them instead of piling up.
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("port = {}", self.port),
            format!("unix_socket_directories = '{}'", self.dir.display()),
            "wal_level = logical".to_string(),
            "max_replication_slots = 64".to_string(),
            "max_wal_senders = 64".to_string(),
            "max_connections = 200".to_string(),
            "shared_buffers = 64MB".to_string(),
            "timezone = 'UTC'".to_string(),
            "log_min_messages = warning".to_string(),
        ];
        if opts.fast_unsafe {
            conf.extend(["fsync = off", "full_page_writes = off"].map(String::from));
        }
        conf.extend(opts.extra_conf.iter().cloned());
        let synchro_conf = self.data_dir().join("synchro.conf");
        fs::write(&synchro_conf, conf.join("\n") + "\n").map_err(io_err("writing synchro.conf"))?;
        let main_conf = self.data_dir().join("postgresql.conf");
        let text = fs::read_to_string(&main_conf).map_err(io_err("reading postgresql.conf"))?;
        if !text.contains("include_if_exists = 'synchro.conf'") {
            fs::write(&main_conf, text + "\ninclude_if_exists = 'synchro.conf'\n")
                .map_err(io_err("writing postgresql.conf"))?;
        }
        if self.run_as_postgres {
            self.chown_to_postgres(&self.data_dir())?;
        }
        Ok(())
    }

    /// Replaces `pg_hba.conf` with `lines` followed by trust for the superuser on loopback and
    /// the socket, then reloads the configuration. Tests use it for password and SCRAM setups.
    pub fn set_hba(&self, lines: &[&str]) -> Result<(), ClusterError> {
        let mut text = lines.join("\n");
        text.push_str(&format!(
            "\nlocal all {SUPERUSER} trust\nlocal replication {SUPERUSER} trust\n\
             host all {SUPERUSER} 127.0.0.1/32 trust\nhost replication {SUPERUSER} 127.0.0.1/32 trust\n"
        ));
        fs::write(self.data_dir().join("pg_hba.conf"), text).map_err(io_err("writing pg_hba.conf"))?;
        self.reload()
    }

    /// Re-reads the configuration files (`pg_ctl reload`).
    pub fn reload(&self) -> Result<(), ClusterError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(self.data_dir()).args(["reload", "-s"]);
        self.run(cmd, "pg_ctl reload")?;
        Ok(())
    }

    fn start_server(&self) -> Result<(), ClusterError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(self.data_dir()).arg("-l").arg(self.log_file()).args(["-w", "-t", "60", "-s", "start"]);
        // pg_ctl keeps the server's stdout/stderr on the log file, but a captured pipe would
        // stay open as long as the server runs: let it inherit nothing.
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        self.run(cmd, "pg_ctl start").map_err(|e| match e {
            ClusterError::CommandFailed { command, detail } => {
                ClusterError::CommandFailed { command, detail: format!("{detail}\nserver log:\n{}", self.log_tail()) }
            }
            other => other,
        })?;
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut cmd = self.command("pg_isready");
            cmd.args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", SUPERUSER]);
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            if cmd.status().map(|s| s.success()).unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ClusterError::StartTimeout { port: self.port, log_tail: self.log_tail() });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True when a postmaster runs on this data directory.
    pub fn is_running(&self) -> bool {
        is_running(&self.bin_dir, &self.data_dir(), self.run_as_postgres)
    }

    /// Stops the server with a fast shutdown (active sessions are disconnected).
    pub fn stop(&self) -> Result<(), ClusterError> {
        self.stop_with("fast")
    }

    /// Stops the server the way a crash would (`immediate`: no checkpoint, recovery on start).
    pub fn kill(&self) -> Result<(), ClusterError> {
        self.stop_with("immediate")
    }

    fn stop_with(&self, mode: &str) -> Result<(), ClusterError> {
        if !self.is_running() {
            return Ok(());
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(self.data_dir()).args(["-m", mode, "-w", "-s", "stop"]);
        self.run(cmd, "pg_ctl stop")?;
        Ok(())
    }

    /// Starts a stopped server again on the same port and waits until it accepts connections.
    pub fn start_again(&self) -> Result<(), ClusterError> {
        if !self.is_running() {
            self.start_server()?;
        }
        self.wait_ready(Duration::from_secs(60))
    }

    /// Runs SQL through `psql` as the superuser and returns its unaligned, tuples-only output.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, ClusterError> {
        let mut cmd = self.command("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"]).args([
            "-p",
            &self.port.to_string(),
            "-U",
            SUPERUSER,
            "-d",
            dbname,
            "-c",
            sql,
        ]);
        let out = self.run(cmd, "psql")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// Starts a watchdog that stops this cluster (fast shutdown) once process `owner` has exited.
    /// With `remove_dir`, the cluster's directory is deleted afterwards (throwaway test clusters).
    pub fn stop_when_process_exits(&self, owner: u32, remove_dir: bool) -> Result<(), ClusterError> {
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let prefix = if self.run_as_postgres { "runuser -u postgres -- " } else { "" };
        let data = shell_quote(&self.data_dir().display().to_string());
        let mut script = format!(
            "cd /; while kill -0 {owner} 2>/dev/null; do sleep 0.5; done; \
             {prefix}{pg} -D {data} -m fast -w -s stop >/dev/null 2>&1",
            pg = shell_quote(&pg_ctl.display().to_string()),
        );
        if remove_dir {
            script.push_str(&format!("; rm -rf {}", shell_quote(&self.dir.display().to_string())));
        }
        let mut cmd = if Path::new("/usr/bin/setsid").exists() || Path::new("/bin/setsid").exists() {
            let mut c = Command::new("setsid");
            c.args(["sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        };
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        cmd.spawn().map_err(io_err("starting the cluster watchdog"))?;
        Ok(())
    }
}

/// A server binary, run as the `postgres` OS user when we are root. It starts in `/`: that user
/// may not be allowed to enter our working directory, and PostgreSQL's binaries complain
/// ("could not change directory to ...") when they cannot. Every path we pass is absolute.
fn server_command(program: &Path, run_as_postgres: bool) -> Command {
    let mut cmd = if run_as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.current_dir("/");
    cmd
}

fn run_quietly(mut cmd: Command, what: &str) -> Result<(), ClusterError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(io_err(format!("running {what}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ClusterError::CommandFailed {
            command: what.to_string(),
            detail: format!("{}; {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        })
    }
}

fn chown_to_postgres(path: &Path) -> Result<(), ClusterError> {
    let mut cmd = Command::new("chown");
    cmd.args(["-R", "postgres:postgres"]).arg(path);
    run_quietly(cmd, "chown -R postgres:postgres")
}

/// Whether the `postgres` OS user can list, create files in and enter `dir`: it needs search
/// permission on every directory on the way too, which only a check made as that user sees.
fn postgres_can_use(dir: &Path) -> bool {
    let mut cmd = server_command(Path::new("test"), true);
    cmd.arg("-r").arg(dir).arg("-a").arg("-w").arg(dir).arg("-a").arg("-x").arg(dir);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    cmd.status().is_ok_and(|s| s.success())
}

/// The `postgres` OS user's home directory, from the user database.
fn postgres_home() -> Option<PathBuf> {
    let from_getent = Command::new("getent")
        .args(["passwd", "postgres"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let passwd = from_getent.or_else(|| fs::read_to_string("/etc/passwd").ok())?;
    let entry = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let home = entry.split(':').nth(5).filter(|h| h.starts_with('/'))?;
    Some(PathBuf::from(home))
}

/// The directory under the `postgres` user's home that stands in for `requested`: named after
/// it for people (shortened: the socket lives there, and socket paths are limited to about 100
/// bytes) and unique by a hash of its whole path, so every start finds the same one.
fn stand_in_dir(home: &Path, requested: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let named = |p: &Path| p.file_name().map(|n| n.to_string_lossy().trim_start_matches('.').to_string());
    let name: String = named(requested)
        .filter(|n| !n.is_empty() && n != "synchro")
        .or_else(|| requested.parent().and_then(named))
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(24)
        .collect();
    let hash = Sha256::digest(requested.as_os_str().as_encoded_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    home.join("synchro-dev").join(if name.is_empty() { hex } else { format!("{name}-{hex}") })
}

/// Creates `requested` and returns the canonical directory the cluster lives in: `requested`
/// itself, or, when the server binaries run as `postgres` and that user cannot reach it, its
/// stand-in under that user's home (recorded in `requested/location`).
fn prepare_dir(requested: &Path, run_as_postgres: bool) -> Result<PathBuf, ClusterError> {
    fs::create_dir_all(requested).map_err(io_err(format!("creating {}", requested.display())))?;
    let requested = requested.canonicalize().map_err(io_err(format!("resolving {}", requested.display())))?;
    if !run_as_postgres {
        return Ok(requested);
    }
    chown_to_postgres(&requested)?;
    if postgres_can_use(&requested) {
        return Ok(requested);
    }
    let unreachable = || ClusterError::Unreachable { dir: requested.clone() };
    let home = postgres_home().ok_or_else(unreachable)?;
    let dir = stand_in_dir(&home, &requested);
    fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    chown_to_postgres(dir.parent().unwrap_or(&dir))?;
    if !postgres_can_use(&dir) {
        return Err(unreachable());
    }
    let note = format!("{}\n", dir.display());
    fs::write(requested.join("location"), note).map_err(io_err("recording the cluster's location"))?;
    crate::info!(
        "the postgres OS user cannot enter the cluster directory: the cluster lives under its home instead",
        requested = requested.display().to_string(),
        dir = dir.display().to_string()
    );
    Ok(dir)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn is_running(bin_dir: &Path, data: &Path, run_as_postgres: bool) -> bool {
    if !data.join("postmaster.pid").is_file() {
        return false;
    }
    let mut cmd = server_command(&bin_dir.join("pg_ctl"), run_as_postgres);
    cmd.arg("-D").arg(data).arg("status");
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    cmd.status().map(|s| s.success()).unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        && TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_millis(100)).is_err()
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err("finding a free port"))?;
    let port = listener.local_addr().map_err(io_err("finding a free port"))?.port();
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_in_directories_are_named_after_the_project_and_unique_per_path() {
        let home = Path::new("/var/lib/postgresql");
        let a = stand_in_dir(home, Path::new("/root/shop/.synchro"));
        assert!(a.to_string_lossy().starts_with("/var/lib/postgresql/synchro-dev/shop-"), "{}", a.display());
        assert_eq!(a, stand_in_dir(home, Path::new("/root/shop/.synchro")), "the same path, the same place");
        assert_ne!(a, stand_in_dir(home, Path::new("/home/x/shop/.synchro")), "another project of the same name");
        let odd = stand_in_dir(home, Path::new("/root/a very long project name with spaces/cluster"));
        let name = odd.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(name.len(), "cluster".len() + 1 + 16, "{name}");
        let spaced = stand_in_dir(home, Path::new("/root/my project/.synchro"));
        assert!(spaced.file_name().unwrap().to_string_lossy().starts_with("my_project-"), "{}", spaced.display());
        // A socket path inside stays well under the ~107-byte limit.
        let long = stand_in_dir(home, Path::new("/root/an-extremely-long-project-directory-name-indeed/.synchro"));
        assert!(long.join(".s.PGSQL.65535").as_os_str().len() < 100, "{}", long.display());
    }

    #[test]
    fn the_unreachable_error_is_one_sentence_naming_the_fix() {
        let text = ClusterError::Unreachable { dir: PathBuf::from("/root/p/.synchro") }.to_string();
        assert!(text.contains("/root/p/.synchro") && text.contains("run from a directory that user can reach"));
        assert!(!text.contains('\n') && text.matches(". ").count() == 0, "{text}");
    }
}
