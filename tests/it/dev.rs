//! `synchrod dev` and private clusters when run as root from a directory the `postgres` OS user
//! cannot enter (a `0700` home or temp directory): the cluster lives under that user's home.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use synchro::cluster::{ClusterOptions, LocalCluster};

use crate::capture::wait_for;
use crate::client::get;
use crate::harness::Kill;

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap()
}

/// A directory private to us (mode 0700) holding `proj/`, removed at the end of the test along
/// with the cluster that stood in for it.
struct Private {
    root: PathBuf,
    cluster_dir: Option<PathBuf>,
}

impl Private {
    fn new(name: &str) -> Private {
        let root = std::env::temp_dir().join(format!("synchro-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("proj")).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
        Private { root, cluster_dir: None }
    }

    fn proj(&self) -> PathBuf {
        self.root.join("proj")
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        if let Some(dir) = &self.cluster_dir {
            // The cluster's watchdog (or the test) stops it; wait for that before removing it.
            let deadline = Instant::now() + Duration::from_secs(30);
            while dir.join("data/postmaster.pid").exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[test]
fn a_cluster_the_postgres_user_cannot_reach_lives_under_its_home_and_is_reused() {
    let mut private = Private::new("unreachable");
    let requested = private.proj().join(".synchro");
    let mut opts = ClusterOptions::new(&requested);
    opts.fast_unsafe = true;
    let cluster = LocalCluster::start(&opts).unwrap_or_else(|e| panic!("{e}"));
    private.cluster_dir = Some(cluster.dir().to_path_buf());
    if is_root() {
        assert!(!cluster.dir().starts_with(&private.root), "{}", cluster.dir().display());
        let location = std::fs::read_to_string(requested.join("location")).unwrap();
        assert_eq!(Path::new(location.trim()), cluster.dir());
        assert!(cluster.dir().file_name().unwrap().to_string_lossy().starts_with("proj-"), "named after the project");
    } else {
        assert_eq!(cluster.dir(), requested.canonicalize().unwrap(), "no user switch: the requested directory");
    }
    cluster.psql("postgres", "CREATE TABLE kept (id int); INSERT INTO kept VALUES (7)").unwrap();
    cluster.stop().unwrap();
    // The next start finds the same cluster, data and port included.
    let again = LocalCluster::start(&opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((again.dir(), again.port()), (cluster.dir(), cluster.port()));
    assert_eq!(again.psql("postgres", "SELECT id FROM kept").unwrap(), "7");
    again.stop().unwrap();
}

#[test]
fn synchrod_dev_starts_from_a_directory_the_postgres_user_cannot_enter() {
    let mut private = Private::new("dev");
    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_synchrod"))
            .arg("dev")
            .current_dir(private.proj())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("LOG_LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let output = Arc::new(Mutex::new(Vec::<String>::new()));
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    let stderr = BufReader::new(child.0.stderr.take().unwrap());
    for reader in [Box::new(stdout) as Box<dyn BufRead + Send>, Box::new(stderr)] {
        let output = output.clone();
        std::thread::spawn(move || reader.lines().map_while(Result::ok).for_each(|l| output.lock().unwrap().push(l)));
    }
    let base = wait_for(90, "the dev banner", || {
        let lines = output.lock().unwrap();
        assert!(child.0.try_wait().unwrap().is_none(), "synchrod dev exited:\n{}", lines.join("\n"));
        lines.iter().find_map(|l| l.strip_prefix("synchro dev server: http://").map(str::to_string))
    });
    let location = private.proj().join(".synchro/location");
    if is_root() {
        private.cluster_dir = Some(PathBuf::from(std::fs::read_to_string(&location).unwrap().trim()));
    }
    let addr = base.parse().unwrap();
    wait_for(30, "/healthz 200", || (get(addr, "/healthz", "").status == 200).then_some(()));
    let tables = get(addr, "/sync/tables", "X-User-ID: alice\r\n");
    assert_eq!(tables.status, 200, "{}", tables.body);
    drop(child);
    let text = output.lock().unwrap().join("\n");
    assert!(!text.contains("could not change directory") && !text.contains("Permission denied"), "{text}");
    let data = private.cluster_dir.clone().unwrap_or_else(|| private.proj().join(".synchro"));
    assert!(text.contains(&format!("PostgreSQL data: {}", data.display())), "{text}");
}
