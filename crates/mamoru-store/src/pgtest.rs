//! A throwaway PostgreSQL cluster for tests: `initdb` in a temporary
//! directory, a server on a free loopback port, gone when dropped.
//!
//! Compiled for this crate's tests and, behind the `pgtest` feature, for
//! other crates' tests. Every failure panics with the reason (and the
//! server's log): this is test equipment, not part of the store.
//!
//! - The binaries are those of `pg_config --bindir`, else of the highest
//!   version in `/usr/lib/postgresql/*/bin` (Debian's `postgresql`
//!   package, see scripts/install-test-deps).
//! - initdb and postgres refuse to run as root. When the tests run as root
//!   (as on CI), the cluster runs as the unprivileged `mamoru` system user
//!   that scripts/install-test-deps creates, in a temporary directory
//!   handed over to it; otherwise as the tests' own user.
//! - Authentication is `trust`, which is safe only because nothing but the
//!   machine itself can connect: the server listens on 127.0.0.1 alone and
//!   its Unix socket lives in the temporary directory. The superuser is
//!   `mamoru`.
//! - `fsync` stays on, so a committed transaction survives
//!   [`PgCluster::restart`], which stops the server the way a crash would.
//!   The recovery after it flushes with one `syncfs` (PostgreSQL 14 or
//!   later) rather than an fsync per file, which took seconds on a busy
//!   disk.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

/// The cluster's superuser; also the system user the cluster runs as when
/// the tests run as root.
pub const USER: &str = "mamoru";
/// The database [`PgCluster::start`] creates, which [`PgCluster::url`] names.
pub const DEFAULT_DB: &str = "mamoru";
/// How long a start may take before the cluster is given up on.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Free ports tried before giving up, in case another process takes the
/// one picked between its probe and the server's bind.
const PORT_ATTEMPTS: usize = 5;
/// Environment that would point the PostgreSQL tools elsewhere.
const PG_ENV: &[&str] = &["PGDATA", "PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGOPTIONS", "PGSERVICE"];

/// A running PostgreSQL cluster of its own, in a temporary directory.
pub struct PgCluster {
    bindir: PathBuf,
    dir: Option<tempfile::TempDir>,
    /// The system user the server runs as, when not the current one.
    run_as: Option<String>,
    port: u16,
    running: bool,
}

impl PgCluster {
    /// Creates a cluster with initdb, starts it on a free loopback port,
    /// waits until it accepts connections and creates [`DEFAULT_DB`].
    /// Panics, with the server's log, when any of it fails.
    pub fn start() -> PgCluster {
        let began = Instant::now();
        let bindir = bindir();
        let run_as = is_root().then(|| USER.to_owned());
        let dir = tempfile::Builder::new()
            .prefix("mamoru-pg-")
            .tempdir()
            .unwrap_or_else(|e| panic!("pgtest: cannot create a temporary directory: {e}"));
        if let Some(user) = &run_as {
            hand_over(dir.path(), user);
        }
        let mut cluster = PgCluster { bindir, dir: Some(dir), run_as, port: 0, running: false };
        cluster.initdb();
        cluster.start_on_free_port();
        cluster.create_db(DEFAULT_DB);
        eprintln!(
            "pgtest: PostgreSQL on 127.0.0.1:{} in {} ready in {:.2} s",
            cluster.port,
            cluster.root().display(),
            began.elapsed().as_secs_f64()
        );
        cluster
    }

    /// The URL of [`DEFAULT_DB`], as tokio-postgres parses it.
    pub fn url(&self) -> String {
        self.db_url(DEFAULT_DB)
    }

    /// The URL of database `name` of this cluster (which need not exist).
    pub fn db_url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates an empty database and returns its URL, so tests can share a
    /// cluster and still have a database each. `name`: ASCII lowercase
    /// letters, digits and `_`.
    pub fn create_db(&self, name: &str) -> String {
        let valid = !name.is_empty()
            && name.len() < 64
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        assert!(valid, "pgtest: database name {name:?} is not [a-z0-9_]{{1,63}}");
        // A client: runs as the current user, over TCP like the tests.
        let mut cmd = Command::new(self.bindir.join("createdb"));
        clear_pg_env(&mut cmd);
        cmd.args(["--no-password", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER, name]);
        let out = run(&mut cmd);
        if !out.status.success() {
            panic!("pgtest: createdb {name} failed: {}\n{}", output_text(&out), self.log_tail());
        }
        self.db_url(name)
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server's Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.root().join("sock")
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`: no
    /// checkpoint, every connection cut) and starts it again on the same
    /// port and data directory, where it recovers from its WAL. Returns once
    /// it accepts connections again.
    pub fn restart(&mut self) {
        assert!(self.dir.is_some(), "pgtest: restart of a stopped cluster");
        if self.running {
            if let Err(e) = self.halt() {
                panic!("pgtest: {e}\n{}", self.log_tail());
            }
        }
        if let Err(e) = self.start_server() {
            panic!("pgtest: restart on port {} failed: {e}", self.port);
        }
    }

    /// Turns TLS on with `cert` and `key` (PEM) and allows TCP connections
    /// over TLS only (`hostssl` in pg_hba.conf), then restarts the server.
    pub fn require_tls(&mut self, cert: &Path, key: &Path) {
        let data = self.data_dir();
        for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
            let to = data.join(name);
            fs::copy(from, &to).unwrap_or_else(|e| panic!("pgtest: cannot copy {}: {e}", from.display()));
            fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap_or_else(|e| panic!("pgtest: cannot chmod {}: {e}", to.display()));
            if let Some(user) = &self.run_as {
                hand_over(&to, user);
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).unwrap_or_else(|e| panic!("pgtest: cannot read {}: {e}", conf.display()));
        text.push_str("\n# pgtest: TLS\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        fs::write(&conf, text).unwrap_or_else(|e| panic!("pgtest: cannot write {}: {e}", conf.display()));
        let hba = data.join("pg_hba.conf");
        let text = fs::read_to_string(&hba).unwrap_or_else(|e| panic!("pgtest: cannot read {}: {e}", hba.display()));
        let text: String = text
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        fs::write(&hba, text).unwrap_or_else(|e| panic!("pgtest: cannot write {}: {e}", hba.display()));
        self.restart();
    }

    /// Stops the server as a crash would and leaves it down, until
    /// [`PgCluster::restart`].
    pub fn crash(&mut self) {
        if self.running {
            if let Err(e) = self.halt() {
                panic!("pgtest: {e}\n{}", self.log_tail());
            }
        }
    }

    /// Stops the server (`-m immediate`) and removes the cluster's
    /// directory. Dropping the cluster does the same.
    pub fn stop(&mut self) {
        if self.running {
            if let Err(e) = self.halt() {
                panic!("pgtest: {e}\n{}", self.log_tail());
            }
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            dir.close().unwrap_or_else(|e| panic!("pgtest: cannot remove {}: {e}", path.display()));
        }
    }

    fn root(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).unwrap_or_else(|| panic!("pgtest: the cluster was stopped"))
    }

    fn data_dir(&self) -> PathBuf {
        self.root().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.root().join("server.log")
    }

    /// The last lines of the server's log, for a panic message.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!("--- server log ({}) ---\n{tail}\n--- end of server log ---", self.log_path().display())
    }

    /// A command of the server's binaries, run as the cluster's user.
    fn server_command(&self, program: &str) -> Command {
        let exe = self.bindir.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new(runuser());
                cmd.args(["-u", user, "--"]).arg(exe);
                cmd
            }
            None => Command::new(exe),
        };
        // The current directory may be one the cluster's user cannot enter.
        cmd.current_dir(self.root());
        clear_pg_env(&mut cmd);
        cmd
    }

    fn initdb(&self) {
        let data = self.data_dir();
        let mut cmd = self.server_command("initdb");
        cmd.arg("-D").arg(&data).args([
            "-U",
            USER,
            "-A",
            "trust",
            "--encoding=UTF8",
            "--locale=C",
            // No flush of the new files (seconds on a busy disk): the
            // server keeps fsync on, and its first crash recovery flushes
            // them (see recovery_init_sync_method below).
            "--no-sync",
        ]);
        let out = run(&mut cmd);
        if !out.status.success() {
            panic!("pgtest: initdb failed: {}", output_text(&out));
        }
        let sock = self.socket_dir();
        fs::create_dir(&sock).unwrap_or_else(|e| panic!("pgtest: cannot create {}: {e}", sock.display()));
        if let Some(user) = &self.run_as {
            hand_over(&sock, user);
        }
        let settings = format!(
            "\n# pgtest: a throwaway cluster, reachable from this machine only\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             fsync = on\n\
             synchronous_commit = on\n\
             # crash recovery flushes the file system once, not each file\n\
             recovery_init_sync_method = syncfs\n\
             shared_buffers = 16MB\n",
            sock.display().to_string().replace('\'', "''"),
        );
        let conf = data.join("postgresql.conf");
        let mut text =
            fs::read_to_string(&conf).unwrap_or_else(|e| panic!("pgtest: cannot read {}: {e}", conf.display()));
        text.push_str(&settings);
        fs::write(&conf, text).unwrap_or_else(|e| panic!("pgtest: cannot write {}: {e}", conf.display()));
    }

    fn start_on_free_port(&mut self) {
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port();
            match self.start_server() {
                Ok(()) => return,
                // Taken between the probe and the bind: try another.
                Err(e) if e.contains("could not bind") || e.contains("already in use") => failures.push(e),
                Err(e) => panic!("pgtest: start on port {} failed: {e}", self.port),
            }
        }
        panic!("pgtest: no free port after {PORT_ATTEMPTS} attempts:\n{}", failures.join("\n"));
    }

    /// Starts the server on `self.port` and waits until it accepts
    /// connections over TCP. The error holds the server's log.
    fn start_server(&mut self) -> Result<(), String> {
        let began = Instant::now();
        let timeout = START_TIMEOUT.as_secs().to_string();
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("start").arg("-D").arg(self.data_dir()).arg("-l").arg(self.log_path()).args([
            "-w",
            "-t",
            &timeout,
            "-o",
            &format!("-p {}", self.port),
        ]);
        let out = run(&mut cmd);
        if !out.status.success() {
            // pg_ctl may give up while the server still runs: make sure.
            let _ = self.halt();
            return Err(format!("pg_ctl start: {}\n{}", output_text(&out), self.log_tail()));
        }
        self.running = true;
        // pg_ctl waits for the server to say it is ready; check that it
        // answers where the tests connect.
        loop {
            let mut cmd = Command::new(self.bindir.join("pg_isready"));
            clear_pg_env(&mut cmd);
            cmd.args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER, "-d", "postgres", "-t", "1"]);
            if run(&mut cmd).status.success() {
                return Ok(());
            }
            if began.elapsed() > START_TIMEOUT {
                let _ = self.halt();
                return Err(format!(
                    "no connection on 127.0.0.1:{} after {} s\n{}",
                    self.port,
                    START_TIMEOUT.as_secs(),
                    self.log_tail()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `pg_ctl stop -m immediate`, waiting until the server is gone.
    fn halt(&mut self) -> Result<(), String> {
        let timeout = START_TIMEOUT.as_secs().to_string();
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("stop").arg("-D").arg(self.data_dir()).args(["-m", "immediate", "-w", "-t", &timeout]);
        let out = run(&mut cmd);
        // Not running (any more) counts as stopped: pg_ctl says so with
        // "PID file ... does not exist".
        if out.status.success() || !self.data_dir().join("postmaster.pid").exists() {
            self.running = false;
            Ok(())
        } else {
            Err(format!("pg_ctl stop failed: {}", output_text(&out)))
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.dir.is_none() {
            return;
        }
        if self.running {
            if let Err(e) = self.halt() {
                // Never leave a server behind: the postmaster's pid is the
                // first line of postmaster.pid.
                eprintln!("pgtest: {e}; killing the server");
                let pid = fs::read_to_string(self.data_dir().join("postmaster.pid"))
                    .ok()
                    .and_then(|s| s.lines().next().map(str::to_owned));
                if let Some(pid) = pid {
                    let _ = Command::new("kill").args(["-KILL", &pid]).status();
                }
            }
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            if let Err(e) = dir.close() {
                eprintln!("pgtest: cannot remove {}: {e}", path.display());
            }
        }
    }
}

/// The directory of initdb, pg_ctl and friends.
fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        // pg_config may come with a client library of another version than
        // the server.
        if out.status.success() && dir.join("initdb").is_file() {
            return dir;
        }
    }
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in fs::read_dir("/usr/lib/postgresql").into_iter().flatten().flatten() {
        let Some(version) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let bin = entry.path().join("bin");
        if bin.join("initdb").is_file() && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    match best {
        Some((_, bin)) => bin,
        None => panic!(
            "pgtest: no PostgreSQL server binaries (neither `pg_config --bindir` nor /usr/lib/postgresql/*/bin \
             has initdb); install them with scripts/install-test-deps"
        ),
    }
}

fn is_root() -> bool {
    let out = run(Command::new("id").arg("-u"));
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

fn runuser() -> &'static str {
    if Path::new("/usr/sbin/runuser").is_file() { "/usr/sbin/runuser" } else { "runuser" }
}

/// Gives `path` to `user`, who must be able to reach it.
fn hand_over(path: &Path, user: &str) {
    let id = |flag: &str| -> u32 {
        let out = run(Command::new("id").args([flag, user]));
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| {
            panic!(
                "pgtest: running as root, the cluster runs as the system user `{user}`, which does not exist; \
                 create it with scripts/install-test-deps"
            )
        })
    };
    let (uid, gid) = (id("-u"), id("-g"));
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("pgtest: cannot give {} to {user}: {e}", path.display()));
    let out = run(Command::new(runuser()).args(["-u", user, "--", "test", "-w"]).arg(path));
    if !out.status.success() {
        panic!(
            "pgtest: the system user `{user}` cannot write to {} (is a parent directory closed to it? \
             set TMPDIR to one it can reach): {}",
            path.display(),
            output_text(&out)
        );
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("pgtest: cannot bind 127.0.0.1:0: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("pgtest: no local address: {e}")).port()
}

fn clear_pg_env(cmd: &mut Command) {
    for var in PG_ENV {
        cmd.env_remove(var);
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("pgtest: cannot run {:?}: {e}", cmd.get_program()))
}

fn output_text(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    format!("{}\n{}\n{}", out.status, stdout.trim_end(), stderr.trim_end())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::TcpStream;
    use std::time::Duration;

    use tokio_postgres::error::SqlState;
    use tokio_postgres::{Client, NoTls};

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// A client whose connection runs on `rt` (while `rt` blocks on something).
    fn connect(rt: &tokio::runtime::Runtime, url: &str) -> Client {
        rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
            tokio::spawn(async move {
                let _ = connection.await;
            });
            client
        })
    }

    #[test]
    fn cluster_serves_survives_a_crash_restart_and_goes_away() {
        let began = Instant::now();
        let mut cluster = PgCluster::start();
        eprintln!("started in {:?}", began.elapsed());
        let rt = runtime();
        let url = cluster.url();
        assert_eq!(url, format!("postgres://mamoru@127.0.0.1:{}/mamoru", cluster.port()));

        let first = connect(&rt, &url);
        rt.block_on(async {
            let one: i32 = first.query_one("SELECT 1", &[]).await.unwrap().get(0);
            assert_eq!(one, 1);
            for (setting, want) in [("listen_addresses", "127.0.0.1"), ("fsync", "on"), ("server_encoding", "UTF8")] {
                let got: String = first.query_one(format!("SHOW {setting}").as_str(), &[]).await.unwrap().get(0);
                assert_eq!(got, want, "{setting}");
            }
            let db: String = first.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
            assert_eq!(db, DEFAULT_DB);
            first.batch_execute("CREATE TABLE t (x BIGINT); INSERT INTO t VALUES (7)").await.unwrap();
        });
        // The Unix socket is where the cluster says.
        assert!(cluster.socket_dir().join(format!(".s.PGSQL.{}", cluster.port())).exists());

        // Databases of one cluster are separate.
        let other = connect(&rt, &cluster.create_db("other_db"));
        rt.block_on(async {
            let db: String = other.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
            assert_eq!(db, "other_db");
            let err = other.query_one("SELECT x FROM t", &[]).await.unwrap_err();
            assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE), "{err:?}");
        });

        let began = Instant::now();
        cluster.restart();
        eprintln!("restarted in {:?}", began.elapsed());
        // The old connection was cut; a new one finds the committed row.
        rt.block_on(async {
            assert!(first.query_one("SELECT 1", &[]).await.is_err());
            assert!(first.is_closed());
        });
        let second = connect(&rt, &url);
        rt.block_on(async {
            let x: i64 = second.query_one("SELECT x FROM t", &[]).await.unwrap().get(0);
            assert_eq!(x, 7);
        });
        assert!(cluster.log().contains("database system was interrupted"), "{}", cluster.log());

        let root = cluster.root().to_owned();
        let port = cluster.port();
        cluster.stop();
        assert!(!root.exists());
        let refused = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1));
        assert!(refused.is_err(), "the server still listens on {port}");
        rt.block_on(async { assert!(second.query_one("SELECT 1", &[]).await.is_err()) });
    }

    #[test]
    fn dropping_the_cluster_stops_it_and_removes_it() {
        let cluster = PgCluster::start();
        let (root, port) = (cluster.root().to_owned(), cluster.port());
        assert!(root.join("data/postmaster.pid").exists());
        drop(cluster);
        assert!(!root.exists());
        assert!(TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).is_err());
    }

    // The PostgreSQL schema against the SQLite one it translates.

    /// Every PostgreSQL migration, in order: the schema the store reaches.
    fn pg_schema_now() -> String {
        crate::pg::MIGRATIONS.iter().map(|(_, sql)| *sql).collect::<Vec<_>>().join("\n")
    }

    /// Rowid aliases that are always inserted with a value, so no identity
    /// in PostgreSQL.
    const GIVEN_IDS: &[(&str, &str)] = &[("bounces", "outbox_id")];

    /// What both dialects must agree on, per table.
    #[derive(Debug, PartialEq)]
    struct Table {
        columns: Vec<Column>,
        /// Sorted. Indexes behind a PRIMARY KEY or UNIQUE constraint are
        /// nameless (their names differ between the dialects).
        indexes: Vec<Index>,
        /// (column, table, column, ON DELETE), sorted.
        foreign_keys: Vec<(String, String, String, String)>,
        checks: usize,
    }

    #[derive(Debug, PartialEq)]
    struct Column {
        name: String,
        /// PostgreSQL's name of the type.
        ty: String,
        not_null: bool,
        default: Option<String>,
    }

    #[derive(Debug, PartialEq, PartialOrd, Eq, Ord)]
    struct Index {
        name: Option<String>,
        /// "column" or "column DESC".
        columns: Vec<String>,
        unique: bool,
        partial: bool,
    }

    /// A default as comparable text: casts dropped, numbers unquoted,
    /// blobs in PostgreSQL's hex form.
    fn normal_default(d: &str) -> String {
        let mut d = d.trim().to_owned();
        while let Some(i) = d.rfind("::") {
            if d[i + 2..].bytes().all(|b| b.is_ascii_lowercase() || b == b' ') {
                d.truncate(i);
            } else {
                break;
            }
        }
        if let Some(hex) = d.strip_prefix("X'").or_else(|| d.strip_prefix("x'")) {
            d = format!("'\\x{}", hex.to_ascii_lowercase());
        }
        if let Some(inner) = d.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
            if inner.parse::<f64>().is_ok() {
                return inner.to_owned();
            }
        }
        d
    }

    fn count_checks(sql: &str) -> usize {
        let upper = sql.to_ascii_uppercase();
        upper.match_indices("CHECK").filter(|(i, _)| upper[i + 5..].trim_start().starts_with('(')).count()
    }

    /// Tables of a SQLite database, and its rowid aliases that need an
    /// identity in PostgreSQL.
    fn sqlite_tables(c: &rusqlite::Connection) -> (BTreeMap<String, Table>, Vec<(String, String)>) {
        let mut tables = BTreeMap::new();
        let mut identities = Vec::new();
        let list: Vec<(String, String)> = c
            .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (table, sql) in list {
            let rowid = !sql.to_ascii_uppercase().contains("WITHOUT ROWID");
            let raw: Vec<(String, String, bool, Option<String>, i64)> = c
                .prepare("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1) ORDER BY cid")
                .unwrap()
                .query_map([&table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let pk: Vec<&(String, String, bool, Option<String>, i64)> = raw.iter().filter(|c| c.4 > 0).collect();
            let mut indexes = Vec::new();
            if rowid && pk.len() == 1 && pk[0].1 == "INTEGER" {
                // The rowid itself: a primary key without an index of its own.
                let column = pk[0].0.clone();
                indexes.push(Index { name: None, columns: vec![column.clone()], unique: true, partial: false });
                if !GIVEN_IDS.contains(&(table.as_str(), column.as_str())) {
                    identities.push((table.clone(), column));
                }
            }
            let columns = raw
                .iter()
                .map(|(name, ty, not_null, default, pk)| Column {
                    name: name.clone(),
                    ty: match ty.as_str() {
                        "INTEGER" => "bigint",
                        "BLOB" => "bytea",
                        "TEXT" => "text",
                        "REAL" => "double precision",
                        other => panic!("{table}.{name}: type {other}"),
                    }
                    .to_owned(),
                    not_null: *not_null || *pk > 0,
                    default: default.as_deref().map(normal_default),
                })
                .collect();
            let list: Vec<(String, bool, String, bool)> = c
                .prepare("SELECT name, \"unique\", origin, partial FROM pragma_index_list(?1)")
                .unwrap()
                .query_map([&table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            for (name, unique, origin, partial) in list {
                let columns = c
                    .prepare("SELECT name, \"desc\" FROM pragma_index_xinfo(?1) WHERE key = 1 ORDER BY seqno")
                    .unwrap()
                    .query_map([&name], |r| {
                        let (column, desc): (String, bool) = (r.get(0)?, r.get(1)?);
                        Ok(if desc { format!("{column} DESC") } else { column })
                    })
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                let name = (origin == "c").then_some(name);
                indexes.push(Index { name, columns, unique, partial });
            }
            indexes.sort();
            let mut foreign_keys: Vec<(String, String, String, String)> = c
                .prepare("SELECT \"from\", \"table\", \"to\", on_delete FROM pragma_foreign_key_list(?1)")
                .unwrap()
                .query_map([&table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            foreign_keys.sort();
            let checks = count_checks(&sql);
            tables.insert(table, Table { columns, indexes, foreign_keys, checks });
        }
        identities.sort();
        (tables, identities)
    }

    async fn pg_tables(c: &Client) -> (BTreeMap<String, Table>, Vec<(String, String)>) {
        let mut tables = BTreeMap::new();
        let names = c
            .query(
                "SELECT table_name::text FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
                &[],
            )
            .await
            .unwrap();
        for row in names {
            let table: String = row.get(0);
            let columns = c
                .query(
                    "SELECT column_name::text, data_type::text, is_nullable::text, column_default::text
                     FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
                    &[&table],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| Column {
                    name: r.get(0),
                    ty: r.get(1),
                    not_null: r.get::<_, String>(2) == "NO",
                    default: r.get::<_, Option<String>>(3).as_deref().map(normal_default),
                })
                .collect();
            let mut indexes: Vec<Index> = c
                .query(
                    "SELECT ic.relname::text,
                            EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.contype IN ('p', 'u')),
                            i.indisunique, i.indpred IS NOT NULL,
                            ARRAY(SELECT pg_get_indexdef(i.indexrelid, k + 1, true)
                                         || CASE WHEN i.indoption[k] & 1 = 1 THEN ' DESC' ELSE '' END
                                  FROM generate_series(0, i.indnkeyatts - 1) AS k ORDER BY k)
                     FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                     WHERE i.indrelid = $1::text::regclass",
                    &[&table],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| Index {
                    name: if r.get::<_, bool>(1) { None } else { Some(r.get(0)) },
                    unique: r.get(2),
                    partial: r.get(3),
                    columns: r.get(4),
                })
                .collect();
            indexes.sort();
            let mut foreign_keys: Vec<(String, String, String, String)> = c
                .query(
                    "SELECT a.attname::text, f.relname::text, fa.attname::text, k.confdeltype::text
                     FROM pg_constraint k
                     JOIN pg_class f ON f.oid = k.confrelid
                     JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
                     JOIN pg_attribute fa ON fa.attrelid = k.confrelid AND fa.attnum = k.confkey[1]
                     WHERE k.contype = 'f' AND k.conrelid = $1::text::regclass AND cardinality(k.conkey) = 1",
                    &[&table],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    let action = match r.get::<_, String>(3).as_str() {
                        "a" => "NO ACTION",
                        "r" => "RESTRICT",
                        "c" => "CASCADE",
                        "n" => "SET NULL",
                        "d" => "SET DEFAULT",
                        other => panic!("ON DELETE {other}"),
                    };
                    (r.get(0), r.get(1), r.get(2), action.to_owned())
                })
                .collect();
            foreign_keys.sort();
            let all_keys: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = $1::text::regclass",
                    &[&table],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(all_keys as usize, foreign_keys.len(), "{table}: a foreign key of several columns");
            let checks: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_constraint WHERE contype = 'c' AND conrelid = $1::text::regclass",
                    &[&table],
                )
                .await
                .unwrap()
                .get(0);
            tables.insert(table, Table { columns, indexes, foreign_keys, checks: checks as usize });
        }
        let mut identities: Vec<(String, String)> = c
            .query(
                "SELECT table_name::text, column_name::text FROM information_schema.columns
                 WHERE table_schema = current_schema() AND is_identity = 'YES'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        identities.sort();
        (tables, identities)
    }

    #[test]
    fn pg_schema_is_the_sqlite_schema() {
        // SQLite, migrated by the store itself.
        let dir = tempfile::tempdir().unwrap();
        let keys = crate::keys::load_or_create(dir.path()).unwrap();
        let store = crate::Store::open(dir.path(), &keys, Duration::from_millis(200)).unwrap();
        let sqlite = rusqlite::Connection::open(store.path()).unwrap();
        let version: i64 = sqlite.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(
            Some(version),
            crate::pg::MIGRATIONS.last().map(|m| m.0),
            "a new SQLite migration needs its PostgreSQL twin"
        );
        let (lite, lite_identities) = sqlite_tables(&sqlite);

        let cluster = PgCluster::start();
        let rt = runtime();
        let client = connect(&rt, &cluster.create_db("schema"));
        let (pg, pg_identities) = rt.block_on(async {
            client.batch_execute(&pg_schema_now()).await.unwrap();
            pg_tables(&client).await
        });

        // The comparison sees what it should.
        assert!(lite.len() >= 18, "{:?}", lite.keys());
        let outbox = &lite["outbox"];
        assert!(outbox.indexes.iter().any(|i| i.name.as_deref() == Some("outbox_pool_due")
            && i.columns == ["domain", "priority DESC", "id", "created_at"] && i.partial));
        assert!(lite["alerts"].indexes.iter().any(|i| i.partial && i.unique));
        assert_eq!(lite["subscriber_districts"].foreign_keys[0].3, "CASCADE");
        assert!(lite["subscribers"].columns.iter().any(|c| c.default.as_deref() == Some("'\\x0000000000000000'")));
        assert_eq!(lite["counters"].checks, 1);

        assert_eq!(lite.keys().collect::<Vec<_>>(), pg.keys().collect::<Vec<_>>(), "tables");
        for (name, table) in &lite {
            assert_eq!(table, &pg[name], "table {name}: SQLite (left) and PostgreSQL (right)");
        }
        assert_eq!(lite_identities, pg_identities, "identity columns");
    }

    #[test]
    fn pg_schema_defaults_and_identities_work() {
        let cluster = PgCluster::start();
        let rt = runtime();
        let client = connect(&rt, &cluster.url());
        rt.block_on(async {
            client.batch_execute(&pg_schema_now()).await.unwrap();
            // Inserted without an id, as the application does; defaults filled.
            let row = client
                .query_one(
                    "INSERT INTO subscribers (addr_index, addr_sealed, domain, status, created_at, updated_at)
                     VALUES ($1, $2, 'x.example', 'pending', $3, $3)
                     RETURNING id, link_nonce, quiet_start, confirmed_at",
                    &[&vec![1u8; 32], &Vec::<u8>::new(), &1_800_000_000i64],
                )
                .await
                .unwrap();
            let (id, nonce, quiet, confirmed): (i64, Vec<u8>, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
            assert_eq!((id, nonce, quiet, confirmed), (1, vec![0u8; 8], -1, 0));
            // CHECK and the partial unique index hold.
            let err = client
                .execute(
                    "INSERT INTO subscribers (addr_index, addr_sealed, domain, status, created_at, updated_at)
                     VALUES ('\\x02', '\\x', 'x.example', 'gone', 0, 0)",
                    &[],
                )
                .await
                .unwrap_err();
            assert_eq!(err.code(), Some(&SqlState::CHECK_VIOLATION), "{err:?}");
            client
                .batch_execute(
                    "INSERT INTO admins (login, email_index, email_sealed, password_hash, created_at, updated_at)
                     VALUES ('root', '\\x', '\\x', '', 0, 0);
                     INSERT INTO alerts (admin_id, source, title, text, districts, created_at) VALUES (1, 'cli', 't', 't', '1', 0);
                     INSERT INTO alerts (admin_id, source, title, text, districts, created_at) VALUES (1, 'cli', 't', 't', '1', 0);",
                )
                .await
                .unwrap();
            let inserted = client
                .execute(
                    "INSERT INTO alerts (admin_id, source, source_key, title, text, districts, state, created_at)
                     VALUES (1, 'mail', 'k', '', '', '', 'rejected', 0), (1, 'mail', 'k', '', '', '', 'rejected', 0)
                     ON CONFLICT (source_key) WHERE source_key <> '' DO NOTHING",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(inserted, 1);
            // A subscriber's districts go with it.
            client.batch_execute("INSERT INTO subscriber_districts VALUES (1, 13); DELETE FROM subscribers").await.unwrap();
            let left: i64 = client.query_one("SELECT count(*) FROM subscriber_districts", &[]).await.unwrap().get(0);
            assert_eq!(left, 0);
        });
    }
}
