//! A throw-away PostgreSQL for tests (feature `pg-harness`): a primary and, on request,
//! a streaming replica, started from the PostgreSQL binaries (`initdb`, `pg_ctl`,
//! `pg_basebackup -R`) on free loopback ports in a temporary directory, removed
//! afterwards. No Docker.
//!
//! Running as root (CI, the dev containers), the binaries run as the `postgres` user
//! through `runuser`, since PostgreSQL refuses to run as root.
//!
//! One shared cluster serves a whole test binary ([`shared_database`] makes a fresh
//! database in it for each test); tests that stop and start servers take a
//! [`PgCluster`] of their own. A cluster is stopped and its directory removed when it
//! is dropped, and, for the shared one (a static, never dropped) or after a panic that
//! aborts, by a small watchdog process that waits for the test process to exit.
//!
//! Without PostgreSQL binaries the tests are skipped with a loud message, unless the
//! `CI` environment variable is set: then they fail.

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use tempfile::TempDir;

/// Settings of every server the harness starts. `fsync` stays on: acknowledged means
/// durable, in tests too.
const SERVER_SETTINGS: &str = "
listen_addresses = '127.0.0.1'
fsync = on
synchronous_commit = on
wal_level = replica
max_wal_senders = 10
wal_keep_size = '256MB'
hot_standby = on
hot_standby_feedback = on
max_connections = 400
shared_buffers = '64MB'
logging_collector = off
log_min_messages = warning
";

/// Names a directory holding the PostgreSQL binaries, instead of looking for them.
pub const BIN_DIR_VARIABLE: &str = "CAIRN_TEST_PG_BIN";

/// Where the PostgreSQL binaries are: `$CAIRN_TEST_PG_BIN` if set; else the directory of
/// `initdb` on `PATH` if `pg_ctl` and `pg_basebackup` stand beside it; else the newest
/// `/usr/lib/postgresql/*/bin` that has all three.
pub fn find_binaries() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "pg_basebackup", "postgres"]
            .iter()
            .all(|tool| dir.join(tool).is_file())
    };
    if let Some(dir) = std::env::var_os(BIN_DIR_VARIABLE) {
        let dir = PathBuf::from(dir);
        return complete(&dir).then_some(dir);
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("initdb"))
            .filter(|initdb| initdb.is_file())
            .filter_map(|initdb| std::fs::canonicalize(initdb).ok())
            .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
            .find(|dir| complete(dir))
    });
    if on_path.is_some() {
        return on_path;
    }
    let mut installed: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| complete(bin))
        .collect();
    installed.sort();
    installed.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "0" && value != "false")
}

/// Says loudly that the PostgreSQL tests cannot run here; under CI that is a failure.
/// Written straight to stderr so that the test harness does not swallow it.
fn unavailable(reason: &str) {
    if in_ci() {
        panic!("PostgreSQL tests cannot run and CI is set: {reason}");
    }
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = writeln!(
            std::io::stderr(),
            "\n\
             ************************************************************************\n\
             *  SKIPPING the PostgreSQL tests: {reason}\n\
             *  Install PostgreSQL (Debian: apt-get install postgresql) to run them;\n\
             *  with CI set they fail instead of being skipped.\n\
             ************************************************************************\n"
        );
    });
}

/// One server of a cluster.
struct Node {
    data: PathBuf,
    log: PathBuf,
    port: u16,
}

/// A throw-away primary, and a streaming replica if asked for.
pub struct PgCluster {
    bin: PathBuf,
    as_postgres: bool,
    primary: Node,
    replica: Option<Node>,
    watchdog: Mutex<Option<Child>>,
    databases: AtomicUsize,
    // Last: removed after the servers stopped.
    root: TempDir,
}

impl PgCluster {
    /// Starts a cluster, or `None` (after saying why) when PostgreSQL is not installed
    /// here. Panics when it is installed but does not start, or when `CI` is set and
    /// it is not installed.
    pub fn start(with_replica: bool) -> Option<Self> {
        let Some(bin) = find_binaries() else {
            unavailable(&format!(
                "no initdb/pg_ctl/pg_basebackup in ${BIN_DIR_VARIABLE}, on PATH or in \
                 /usr/lib/postgresql/*/bin"
            ));
            return None;
        };
        let as_postgres = running_as_root();
        if as_postgres
            && !Command::new("runuser")
                .args(["-u", "postgres", "--", "true"])
                .status()
                .is_ok_and(|status| status.success())
        {
            unavailable("running as root, and `runuser -u postgres` does not work here");
            return None;
        }
        match Self::try_start(bin, as_postgres, with_replica) {
            Ok(cluster) => Some(cluster),
            Err(error) => panic!("could not start a throw-away PostgreSQL: {error}"),
        }
    }

    fn try_start(bin: PathBuf, as_postgres: bool, with_replica: bool) -> Result<Self, String> {
        let root = tempfile::Builder::new()
            .prefix("cairn-pg-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let sockets = root.path().join("run");
        std::fs::create_dir(&sockets).map_err(|e| format!("socket dir: {e}"))?;
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(root.path()))?;
        }
        let primary = Node {
            data: root.path().join("primary"),
            log: root.path().join("primary.log"),
            port: free_port()?,
        };
        let mut cluster = Self {
            bin,
            as_postgres,
            primary,
            replica: None,
            watchdog: Mutex::new(None),
            databases: AtomicUsize::new(0),
            root,
        };
        cluster.spawn_watchdog();
        run(cluster
            .tool("initdb")
            .arg("-D")
            .arg(&cluster.primary.data)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]))?;
        append(
            &cluster.primary.data.join("postgresql.conf"),
            &format!(
                "{SERVER_SETTINGS}port = {}\nunix_socket_directories = '{}'\n",
                cluster.primary.port,
                sockets.display()
            ),
        )?;
        cluster.start_node(&cluster.primary)?;
        if with_replica {
            let replica = Node {
                data: cluster.root.path().join("replica"),
                log: cluster.root.path().join("replica.log"),
                port: free_port()?,
            };
            run(cluster
                .tool("pg_basebackup")
                .arg("-D")
                .arg(&replica.data)
                .args(["-h", "127.0.0.1", "-U", "postgres", "-R", "-X", "stream"])
                .args(["--checkpoint=fast", "--no-sync"])
                .arg("-p")
                .arg(cluster.primary.port.to_string()))?;
            append(
                &replica.data.join("postgresql.conf"),
                &format!("port = {}\n", replica.port),
            )?;
            cluster.start_node(&replica)?;
            cluster.replica = Some(replica);
        }
        Ok(cluster)
    }

    /// A command running one of the PostgreSQL tools, as `postgres` when we are root.
    fn tool(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn start_node(&self, node: &Node) -> Result<(), String> {
        run(self
            .tool("pg_ctl")
            .arg("-D")
            .arg(&node.data)
            .arg("-l")
            .arg(&node.log)
            .args(["-w", "-t", "60", "start"]))
        .map_err(|error| {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            format!("{error}\nserver log:\n{log}")
        })
    }

    fn stop_node(&self, node: &Node) -> Result<(), String> {
        run(self.tool("pg_ctl").arg("-D").arg(&node.data).args([
            "-m",
            "immediate",
            "-w",
            "-t",
            "60",
            "stop",
        ]))
    }

    /// Starts a process that stops the servers and removes the directory once this
    /// process is gone, however it ends.
    fn spawn_watchdog(&self) {
        let stop = |data: &Path| {
            let prefix = if self.as_postgres {
                "runuser -u postgres -- "
            } else {
                ""
            };
            format!(
                "{prefix}'{}' -D '{}' -m immediate -w stop >/dev/null 2>&1;",
                self.bin.join("pg_ctl").display(),
                data.display()
            )
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {} {} rm -rf '{}'",
            stop(&self.root.path().join("replica")),
            stop(&self.primary.data),
            self.root.path().display(),
            pid = std::process::id(),
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C of the tests does not stop the cleanup.
            .process_group(0)
            .spawn();
        if let (Ok(child), Ok(mut slot)) = (child, self.watchdog.lock()) {
            *slot = Some(child);
        }
    }

    pub fn primary_port(&self) -> u16 {
        self.primary.port
    }

    pub fn replica_port(&self) -> Option<u16> {
        self.replica.as_ref().map(|node| node.port)
    }

    /// A URL for `database` on the primary.
    pub fn primary_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.primary.port
        )
    }

    /// A URL for `database` on the replica, if there is one.
    pub fn replica_url(&self, database: &str) -> Option<String> {
        self.replica
            .as_ref()
            .map(|node| format!("postgres://postgres@127.0.0.1:{}/{database}", node.port))
    }

    /// Stops the primary at once (`pg_ctl stop -m immediate`: like a crash).
    pub fn stop_primary(&self) {
        self.stop_node(&self.primary)
            .unwrap_or_else(|error| panic!("stopping the primary: {error}"));
    }

    pub fn start_primary(&self) {
        self.start_node(&self.primary)
            .unwrap_or_else(|error| panic!("starting the primary: {error}"));
    }

    pub fn stop_replica(&self) {
        let node = self.replica.as_ref().expect("a cluster with a replica");
        self.stop_node(node)
            .unwrap_or_else(|error| panic!("stopping the replica: {error}"));
    }

    pub fn start_replica(&self) {
        let node = self.replica.as_ref().expect("a cluster with a replica");
        self.start_node(node)
            .unwrap_or_else(|error| panic!("starting the replica: {error}"));
    }

    /// A new, empty database (on the replica too, once it has replayed its creation).
    pub async fn create_database(&self) -> TestDatabase {
        let name = format!(
            "cairn_{}_{}",
            std::process::id(),
            self.databases.fetch_add(1, Ordering::Relaxed)
        );
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                self.primary.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap_or_else(|error| panic!("connecting to the test primary: {error}"));
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|error| panic!("creating database {name}: {error}"));
        drop(client);
        let _ = driver.await;
        TestDatabase {
            primary_url: self.primary_url(&name),
            replica_url: self.replica_url(&name),
            name,
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(replica) = &self.replica {
            let _ = self.stop_node(replica);
        }
        let _ = self.stop_node(&self.primary);
        if let Ok(mut slot) = self.watchdog.lock()
            && let Some(mut watchdog) = slot.take()
        {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        // `root` is removed when it drops, after this.
    }
}

/// A fresh database of a test cluster.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub name: String,
    pub primary_url: String,
    pub replica_url: Option<String>,
}

/// The cluster shared by the tests of this process (a primary, no replica: tests that
/// need one, or stop servers, start their own), started on first use. `None` when
/// PostgreSQL is not installed (see [`PgCluster::start`]).
pub fn shared_cluster() -> Option<&'static PgCluster> {
    static SHARED: OnceLock<Option<PgCluster>> = OnceLock::new();
    SHARED.get_or_init(|| PgCluster::start(false)).as_ref()
}

/// A fresh database in the shared cluster, or `None` when the PostgreSQL tests are
/// skipped here.
pub async fn shared_database() -> Option<TestDatabase> {
    let cluster = shared_cluster()?;
    Some(cluster.create_database().await)
}

/// The lines of a plan as PostgreSQL prints them: `statement` is the whole `EXPLAIN …`.
pub async fn explain(
    client: &tokio_postgres::Client,
    statement: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client.query(statement, &[]).await?;
    rows.iter().map(|row| row.try_get(0)).collect()
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
