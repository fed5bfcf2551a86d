//! A private PostgreSQL cluster run from the PostgreSQL binaries installed on the
//! machine: `vantage up` keeps one under `./.vantage/` between runs, and every
//! database test starts throwaway ones. Nothing here knows about Vantage's schema.
//!
//! The server listens on 127.0.0.1 only, with `trust` authentication (loopback, one
//! user's machine), and a Unix socket inside its data directory. As root it runs as
//! the `postgres` user, because PostgreSQL refuses to run as root.
//!
//! A small watchdog process (`sh`) is started next to every cluster. It holds the read
//! end of a pipe whose write end only this process has: when this process exits for
//! any reason (including SIGKILL or a panic) or drops the [`EmbeddedPostgres`], the
//! pipe closes and the watchdog stops the server — and, for a temporary cluster,
//! deletes its directory. So an aborted test run leaves no server behind.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Where to get PostgreSQL when none is found.
const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not \
    found: install them (Debian/Ubuntu: `apt-get install postgresql`; macOS: `brew install \
    postgresql@15`), set VANTAGE_PG_BINDIR to their directory, or run `docker compose up` \
    instead";

/// Why a private cluster could not be found, created, started or stopped. Each
/// message says what was being done; a wrapped start failure carries the end of the
/// server log, where the reason is.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedPostgresError {
    #[error("{INSTALL_HINT}")]
    NotInstalled,
    #[error("VANTAGE_PG_BINDIR={0} does not contain initdb, pg_ctl and postgres")]
    IncompleteBinDir(String),
    #[error(
        "running as root, but PostgreSQL refuses to run as root and there is no `postgres` \
         user to run it as: create one (`useradd --system postgres`) or run as a normal user"
    )]
    NoPostgresUser,
    /// A file-system or socket operation, named.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {what} ({program})")]
    CannotRun {
        what: &'static str,
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed; its status and output.
    #[error("{what} failed ({status}): {output}")]
    Failed {
        what: &'static str,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error(
        "cannot create a PostgreSQL cluster in {dir} (as root, the `postgres` user must be \
         able to enter every parent directory)"
    )]
    Initdb {
        dir: String,
        #[source]
        source: Box<EmbeddedPostgresError>,
    },
    #[error("PostgreSQL did not start on port {port} (data directory {dir}); server log:\n{log}")]
    NotStarted {
        port: u16,
        dir: String,
        log: String,
        #[source]
        source: Box<EmbeddedPostgresError>,
    },
    #[error("cannot start the PostgreSQL watchdog (/bin/sh)")]
    Watchdog(#[source] std::io::Error),
    #[error("blocking task failed")]
    Blocking(#[source] tokio::task::JoinError),
}

type Result<T, E = EmbeddedPostgresError> = std::result::Result<T, E>;

/// Names an I/O failure: `.map_err(io(format!("cannot create {}", ...)))`.
fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedPostgresError {
    move |source| EmbeddedPostgresError::Io {
        what: what.into(),
        source,
    }
}

/// A PostgreSQL server this process started (or adopted, for a persistent cluster that
/// was still running) and controls.
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    port: u16,
    /// uid/gid to run the server as (the `postgres` user when we are root).
    run_as: Option<(u32, u32)>,
    /// For a temporary cluster: the directory removed when it is dropped.
    temporary_root: Option<PathBuf>,
    /// The watchdog's stdin: dropping it makes the watchdog stop the server.
    watchdog: Mutex<Option<Child>>,
}

impl std::fmt::Debug for EmbeddedPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedPostgres")
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .finish()
    }
}

impl EmbeddedPostgres {
    /// Starts the cluster in `data_dir`, creating it (`initdb`) when the directory is
    /// missing or empty. The port is remembered in the data directory, so the cluster
    /// comes back on the same port next time when it is still free. A server that is
    /// already running there (left by an earlier run) is reused.
    pub async fn start_persistent(data_dir: &Path) -> Result<Self> {
        let data_dir = data_dir.to_path_buf();
        blocking(move || {
            let bin_dir = find_bin_dir()?;
            let run_as = server_user()?;
            fs::create_dir_all(&data_dir)
                .map_err(io(format!("cannot create {}", data_dir.display())))?;
            let data_dir = data_dir
                .canonicalize()
                .map_err(io(format!("cannot resolve {}", data_dir.display())))?;
            let mut pg = EmbeddedPostgres {
                bin_dir,
                data_dir,
                port: 0,
                run_as,
                temporary_root: None,
                watchdog: Mutex::new(None),
            };
            if !pg.data_dir.join("PG_VERSION").exists() {
                pg.initdb(false)?;
            }
            let remembered = fs::read_to_string(pg.data_dir.join("vantage.port"))
                .ok()
                .and_then(|s| s.trim().parse::<u16>().ok());
            if let (Some(port), true) = (remembered, pg.is_running()) {
                pg.port = port;
                tracing::info!(port, data_dir = %pg.data_dir.display(), "reusing the running PostgreSQL");
            } else {
                pg.port = match remembered {
                    Some(port) if port_is_free(port) => port,
                    _ => free_port()?,
                };
                pg.write_config(false)?;
                pg.pg_ctl_start()?;
            }
            let port_file = pg.data_dir.join("vantage.port");
            fs::write(&port_file, pg.port.to_string())
                .map_err(io(format!("cannot write {}", port_file.display())))?;
            pg.spawn_watchdog()?;
            Ok(pg)
        })
        .await
    }

    /// Starts a throwaway cluster in a new temporary directory, tuned for tests
    /// (no fsync). The directory is removed when the value is dropped or this process
    /// exits.
    pub async fn start_temporary() -> Result<Self> {
        blocking(|| {
            let bin_dir = find_bin_dir()?;
            let run_as = server_user()?;
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let root = std::env::temp_dir().join(format!(
                "vantage-pg-{}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed),
                chrono::Utc::now().timestamp_micros() % 1_000_000_000
            ));
            fs::create_dir(&root).map_err(io(format!("cannot create {}", root.display())))?;
            fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
                .map_err(io(format!("cannot restrict {}", root.display())))?;
            chown(&root, run_as)?;
            let mut pg = EmbeddedPostgres {
                bin_dir,
                data_dir: root.join("data"),
                port: 0,
                run_as,
                temporary_root: Some(root),
                watchdog: Mutex::new(None),
            };
            // The watchdog first, so even a failed start is cleaned up.
            pg.spawn_watchdog()?;
            pg.initdb(true)?;
            // Another process may take the free port between our check and the
            // server's bind: try a few.
            let mut attempts = 1;
            loop {
                pg.port = free_port()?;
                pg.write_config(true)?;
                match pg.pg_ctl_start() {
                    Ok(()) => return Ok(pg),
                    Err(_) if attempts < 5 => attempts += 1,
                    Err(err) => return Err(err),
                }
            }
        })
        .await
    }

    /// `postgres://postgres@127.0.0.1:PORT/<database>` (trust authentication).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, database)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the server (fast shutdown: open sessions are disconnected). The cluster
    /// can be started again with [`EmbeddedPostgres::start`].
    pub async fn stop(&self) -> Result<()> {
        let cmd = self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"]);
        blocking(move || run(cmd, "pg_ctl stop")).await
    }

    /// Starts the server again after [`EmbeddedPostgres::stop`], on the same port.
    pub async fn start(&self) -> Result<()> {
        let cmd = self.pg_ctl_start_command();
        blocking(move || run(cmd, "pg_ctl start"))
            .await
            .map_err(|err| self.with_log(err))
    }

    fn is_running(&self) -> bool {
        let mut cmd = self.pg_ctl(&["status"]);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd.status().map(|s| s.success()).unwrap_or(false)
    }

    fn initdb(&self, temporary: bool) -> Result<()> {
        let dir = self.data_dir.display();
        fs::create_dir_all(&self.data_dir).map_err(io(format!("cannot create {dir}")))?;
        fs::set_permissions(&self.data_dir, fs::Permissions::from_mode(0o700))
            .map_err(io(format!("cannot restrict {dir}")))?;
        chown(&self.data_dir, self.run_as)?;
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(&self.data_dir).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        if temporary {
            cmd.arg("--no-sync");
        }
        run(cmd, "initdb").map_err(|err| EmbeddedPostgresError::Initdb {
            dir: dir.to_string(),
            source: Box::new(err),
        })?;
        let conf_path = self.data_dir.join("postgresql.conf");
        fs::OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .and_then(|mut conf| {
                writeln!(
                    conf,
                    "\n# Written by Vantage on every start.\ninclude_if_exists = 'vantage.conf'"
                )
            })
            .map_err(io(format!("cannot append to {}", conf_path.display())))
    }

    /// Settings that change per start (the port) or per kind of cluster.
    fn write_config(&self, temporary: bool) -> Result<()> {
        let socket_dir = self.data_dir.to_string_lossy().replace('\'', "''");
        // Unix socket paths are limited to ~107 bytes; skip the socket for deep paths.
        let socket_dir = if socket_dir.len() < 90 {
            socket_dir
        } else {
            String::new()
        };
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             max_connections = 100\nlogging_collector = off\n",
            self.port, socket_dir
        );
        if temporary {
            // Tests run many clusters at once: small, and durability does not matter.
            conf.push_str(
                "shared_buffers = 16MB\nfsync = off\nsynchronous_commit = off\n\
                 full_page_writes = off\nautovacuum = off\nmax_wal_size = 256MB\n",
            );
        }
        let path = self.data_dir.join("vantage.conf");
        fs::write(&path, conf).map_err(io(format!("cannot write {}", path.display())))?;
        chown(&path, self.run_as)?;
        Ok(())
    }

    fn pg_ctl_start_command(&self) -> Command {
        let log = self.data_dir.join("server.log");
        let mut cmd = self.pg_ctl(&["start", "-w", "-t", "60", "-l"]);
        cmd.arg(log);
        cmd
    }

    fn pg_ctl_start(&self) -> Result<()> {
        run(self.pg_ctl_start_command(), "pg_ctl start").map_err(|err| self.with_log(err))
    }

    /// Adds the end of the server log to a start failure: that is where the reason is.
    fn with_log(&self, err: EmbeddedPostgresError) -> EmbeddedPostgresError {
        let log = fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        EmbeddedPostgresError::NotStarted {
            port: self.port,
            dir: self.data_dir.display().to_string(),
            log: tail.join("\n"),
            source: Box::new(err),
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir).args(args);
        cmd
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.stdin(Stdio::null()).env("LC_ALL", "C");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn spawn_watchdog(&self) -> Result<()> {
        // `cat` returns when the pipe closes; signals from the terminal are ignored so
        // that Ctrl-C on a test run still ends in a clean stop.
        const SCRIPT: &str = r#"trap '' INT HUP TERM
cat >/dev/null
"$1" -D "$2" -m immediate -w stop >/dev/null 2>&1
if [ -n "$3" ]; then rm -rf "$3"; fi"#;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("vantage-pg-watchdog")
            .arg(self.bin_dir.join("pg_ctl"))
            .arg(&self.data_dir)
            .arg(self.temporary_root.as_deref().unwrap_or(Path::new("")))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().map_err(EmbeddedPostgresError::Watchdog)?;
        *self.watchdog.lock().unwrap() = Some(child);
        Ok(())
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        // Closing the watchdog's stdin makes it stop the server (and remove a temporary
        // cluster's directory) without blocking this thread.
        if let Some(mut child) = self.watchdog.lock().unwrap().take() {
            drop(child.stdin.take());
            // Reap it in the background so it does not linger as a zombie.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(EmbeddedPostgresError::Blocking)?
}

fn run(mut cmd: Command, what: &'static str) -> Result<()> {
    let output = cmd
        .output()
        .map_err(|source| EmbeddedPostgresError::CannotRun {
            what,
            program: format!("{:?}", cmd.get_program()),
            source,
        })?;
    if !output.status.success() {
        return Err(EmbeddedPostgresError::Failed {
            what,
            status: output.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stderr).trim(),
                String::from_utf8_lossy(&output.stdout).trim()
            ),
        });
    }
    Ok(())
}

/// The directory holding initdb, pg_ctl and postgres: `VANTAGE_PG_BINDIR`,
/// `pg_config --bindir`, `initdb` on PATH, or the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> Result<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(dir) = std::env::var_os("VANTAGE_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if complete(&dir) {
            return Ok(dir);
        }
        return Err(EmbeddedPostgresError::IncompleteBinDir(
            dir.display().to_string(),
        ));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && complete(&dir) {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            // Follow symlinks such as /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin.
            if let Ok(initdb) = dir.join("initdb").canonicalize() {
                if let Some(real) = initdb.parent().filter(|d| complete(d)) {
                    return Ok(real.to_path_buf());
                }
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| complete(dir))
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, dir)| dir)
        .ok_or(EmbeddedPostgresError::NotInstalled)
}

/// PostgreSQL refuses to run as root: then run it as `postgres`.
fn server_user() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = c"postgres";
    // SAFETY: getpwnam returns NULL or a pointer to a static record we copy at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(EmbeddedPostgresError::NoPostgresUser);
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

fn chown(path: &Path, run_as: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(io(format!("cannot chown {}", path.display())))?;
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(io("cannot find a free port on 127.0.0.1"))
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}
