//! Throwaway PostgreSQL clusters ([`TempPostgres`]): for the tests of the PostgreSQL store and
//! for the high-availability demo, whose replicas share one.
//!
//! A cluster lives in a private directory under the system temp dir: `initdb` with a random
//! password (user `flwr`, SCRAM authentication), then `postgres` on 127.0.0.1 at a free port
//! with its Unix socket inside that directory and durability switched off (`fsync=off`: a
//! test database is never worth a sync). Every test gets its own database
//! ([`TempPostgres::fresh_database`]), so tests share one cluster without seeing each other;
//! [`TempPostgres::shared`] starts one cluster per test binary, since starting one costs
//! 1–2 s.
//!
//! PostgreSQL refuses to run as root, so under root the cluster runs as the `postgres` system
//! user (Debian's `postgresql` package creates it; `nobody` otherwise) through `runuser`.
//!
//! A small watchdog (`sh`) is started beside each cluster and holds the read end of a pipe
//! whose write end only this process holds. When the [`TempPostgres`] drops, or the test
//! process ends in any way (the shared cluster lives in a static that is never dropped, and a
//! killed test binary drops nothing), the pipe closes and the watchdog stops the server
//! (`pg_ctl stop -m immediate`) and removes the directory. So no test or demo leaves a server
//! behind.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::child::{combined, io_error, tail, ChildError, CommandLine, Result};
use crate::ports::free_port;

/// The database user the cluster is initialised with.
pub const USER: &str = "flwr";

/// Where Debian installs each PostgreSQL major version (`<dir>/<version>/bin`).
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// How long `initdb` may take (it is ~2 s with `--no-sync`).
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);

/// How long `pg_ctl start` waits for the server to accept connections (its `-t`).
const START_WAIT_SECS: u32 = 60;

/// How long `createdb` may take.
const CREATEDB_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a dropped cluster's watchdog may take to stop the server and remove the directory.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Ports tried before giving up (another process may take a free port before the server binds).
const START_ATTEMPTS: usize = 3;

/// Settings appended to `postgresql.conf`: loopback only, no durability, enough connections
/// for parallel tests that each open a small pool (plus a listener per store).
const SETTINGS: &str = "
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
shared_buffers = 32MB
";

/// Databases handed out by this process, for unique names.
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// The binaries of one PostgreSQL installation.
#[derive(Clone, Debug)]
struct Binaries {
    dir: Option<PathBuf>,
}

impl Binaries {
    /// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`, else `PATH`.
    fn locate() -> Result<Self> {
        let newest = std::fs::read_dir(DEBIAN_ROOT)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version: u32 = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .max_by_key(|(version, _)| *version);
        if let Some((_, dir)) = newest {
            return Ok(Self { dir: Some(dir) });
        }
        let on_path = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join("initdb").is_file())
        });
        if on_path {
            return Ok(Self { dir: None });
        }
        Err(ChildError::Io {
            context: format!(
                "PostgreSQL binaries not found (looked in {DEBIAN_ROOT}/<version>/bin and on \
                 PATH): install Debian's postgresql package"
            ),
            source: io::Error::new(io::ErrorKind::NotFound, "no initdb"),
        })
    }

    /// The path of one program (a bare name, looked up on `PATH`, without a directory).
    fn program(&self, name: &str) -> PathBuf {
        match &self.dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }
}

/// Who runs the server: this process's user, or a system user when this process is root.
#[derive(Clone, Debug)]
struct RunAs {
    /// `Some((name, uid, gid))` when commands go through `runuser -u <name> --`.
    user: Option<(String, u32, u32)>,
}

impl RunAs {
    fn detect() -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(Self { user: None });
        }
        for name in ["postgres", "nobody"] {
            if let Ok(Some(user)) = nix::unistd::User::from_name(name) {
                return Ok(Self {
                    user: Some((name.to_owned(), user.uid.as_raw(), user.gid.as_raw())),
                });
            }
        }
        Err(ChildError::Io {
            context: "PostgreSQL refuses to run as root and neither the `postgres` nor the \
                      `nobody` user exists: install Debian's postgresql package"
                .to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no user to run PostgreSQL as"),
        })
    }

    /// `program args…`, run as the server's user.
    fn command(&self, program: PathBuf) -> CommandLine {
        match &self.user {
            Some((name, _, _)) => CommandLine::new("runuser")
                .args(["-u", name.as_str(), "--"])
                .arg(program),
            None => CommandLine::new(program),
        }
    }

    /// The argv prefix of [`command`](Self::command), for the watchdog script.
    fn argv(&self, program: PathBuf) -> Vec<OsString> {
        match &self.user {
            Some((name, _, _)) => vec![
                "runuser".into(),
                "-u".into(),
                name.into(),
                "--".into(),
                program.into(),
            ],
            None => vec![program.into()],
        }
    }

    /// Hands `path` to the server's user (only needed when running as root).
    fn own(&self, path: &Path) -> Result<()> {
        if let Some((_, uid, gid)) = &self.user {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .map_err(io_error(format!("chown {}", path.display())))?;
        }
        Ok(())
    }
}

/// A running throwaway PostgreSQL cluster; dropping it stops the server and removes its files.
#[derive(Debug)]
pub struct TempPostgres {
    dir: PathBuf,
    port: u16,
    password: String,
    binaries: Binaries,
    /// Closing it (drop) tells the watchdog to stop the server and remove `dir`.
    watchdog_pipe: Option<ChildStdin>,
    watchdog: Child,
}

impl TempPostgres {
    /// Initialises and starts a fresh cluster and waits until it accepts connections.
    ///
    /// # Errors
    ///
    /// [`ChildError::Io`] if the PostgreSQL binaries are missing ("install Debian's postgresql
    /// package") or files cannot be written; [`ChildError::Command`] or [`ChildError::Timeout`] if
    /// `initdb` or the server fail (with their output).
    pub fn start() -> Result<Self> {
        let binaries = Binaries::locate()?;
        let run_as = RunAs::detect()?;
        let password = random_hex(16)?;
        let dir = private_dir()?;
        // From here on the watchdog owns the cleanup, whatever fails next.
        let data = dir.join("data");
        let mut stop = run_as.argv(binaries.program("pg_ctl"));
        stop.extend(["stop", "-D"].map(OsString::from));
        stop.push(data.clone().into());
        stop.extend(["-m", "immediate", "-w", "-t", "20"].map(OsString::from));
        let (watchdog, watchdog_pipe) = spawn_watchdog(&dir, &stop)?;
        let mut cluster = Self {
            dir,
            port: 0,
            password,
            binaries,
            watchdog_pipe: Some(watchdog_pipe),
            watchdog,
        };
        cluster.init(&run_as, &data)?;
        cluster.launch(&run_as, &data)?;
        Ok(cluster)
    }

    /// One cluster for the whole test binary, started on first use. Hand each test its own
    /// database with [`fresh_database`](Self::fresh_database).
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start); a failed start is remembered and reported to every caller.
    pub fn shared() -> Result<&'static Self> {
        static SHARED: OnceLock<Result<TempPostgres, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Self::start().map_err(|err| err.to_string()))
            .as_ref()
            .map_err(|message| ChildError::Io {
                context: "starting the shared PostgreSQL cluster".to_owned(),
                source: io::Error::other(message.clone()),
            })
    }

    /// The URL of the `postgres` database: `postgresql://flwr:<password>@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The URL of database `name` on this cluster.
    pub fn database_url(&self, name: &str) -> String {
        format!(
            "postgresql://{USER}:{}@127.0.0.1:{}/{name}",
            self.password, self.port
        )
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates database `name` (letters, digits and `_` only) and returns its URL.
    ///
    /// # Errors
    ///
    /// [`ChildError::Command`] for an unusable name or if `createdb` fails.
    pub fn create_database(&self, name: &str) -> Result<String> {
        let createdb = CommandLine::new(self.binaries.program("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .arg(name)
            // The password travels in the environment, which error messages never show.
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "10");
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_');
        if !valid {
            return Err(ChildError::Command {
                command: createdb.to_string(),
                reason: "was not run: database names are letters, digits and `_`".to_owned(),
                output: String::new(),
            });
        }
        check(&createdb, &createdb.output(CREATEDB_TIMEOUT)?)?;
        Ok(self.database_url(name))
    }

    /// Creates a database with a name no other call in this process got; returns its URL.
    ///
    /// # Errors
    ///
    /// As [`create_database`](Self::create_database).
    pub fn fresh_database(&self) -> Result<String> {
        let n = DATABASES.fetch_add(1, Ordering::Relaxed);
        self.create_database(&format!("flwr_test_{n}"))
    }

    /// `initdb` with the generated password.
    fn init(&self, run_as: &RunAs, data: &Path) -> Result<()> {
        run_as.own(&self.dir)?;
        let pwfile = self.dir.join("pwfile");
        write_private(&pwfile, self.password.as_bytes())?;
        run_as.own(&pwfile)?;
        let initdb = run_as
            .command(self.binaries.program("initdb"))
            .arg("-D")
            .arg(data)
            .args(["-U", USER, "--auth=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--no-sync", "-E", "UTF8", "--locale=C", "--no-instructions"]);
        check(&initdb, &initdb.output(INITDB_TIMEOUT)?)?;
        std::fs::remove_file(&pwfile).map_err(io_error("removing the password file"))?;
        let mut settings = SETTINGS.to_owned();
        settings.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            self.dir.display()
        ));
        let conf = data.join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&conf).map_err(io_error("reading postgresql.conf"))?;
        text.push_str(&settings);
        std::fs::write(&conf, text).map_err(io_error("writing postgresql.conf"))
    }

    /// Starts the server on a free port (another on a bind failure) and waits until it is ready.
    fn launch(&mut self, run_as: &RunAs, data: &Path) -> Result<()> {
        let log = self.dir.join("postgres.log");
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            // The server puts itself in its own session, so the process-group kill that ends
            // `output` does not reach it.
            let start = run_as
                .command(self.binaries.program("pg_ctl"))
                .arg("start")
                .arg("-D")
                .arg(data)
                .arg("-l")
                .arg(&log)
                .args(["-o", &format!("-p {port}")])
                .args(["-w", "-t", &START_WAIT_SECS.to_string()]);
            let timeout = Duration::from_secs(u64::from(START_WAIT_SECS) + 30);
            let output = start.output(timeout)?;
            if output.status.success() {
                self.port = port;
                return Ok(());
            }
            let server_log = std::fs::read_to_string(&log).unwrap_or_default();
            last = Some(ChildError::Command {
                command: start.to_string(),
                reason: format!("exited with {}", output.status),
                output: format!(
                    "{}\n--- postgres.log ---\n{}",
                    combined(&output),
                    tail(&server_log, 40)
                ),
            });
            if !server_log.contains("could not bind") {
                break;
            }
        }
        Err(last.unwrap_or_else(|| ChildError::Timeout {
            waiting_for: "PostgreSQL to start".to_owned(),
            after: Duration::ZERO,
            details: String::new(),
        }))
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        // EOF on the pipe: the watchdog stops the server and removes the directory.
        drop(self.watchdog_pipe.take());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match self.watchdog.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => thread::sleep(Duration::from_millis(50)),
            }
        }
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// Starts the watchdog: it waits for EOF on its stdin, then runs `stop` and removes `dir`.
fn spawn_watchdog(dir: &Path, stop: &[OsString]) -> Result<(Child, ChildStdin)> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"cat >/dev/null 2>&1; "$@" >/dev/null 2>&1; rm -rf -- "$FLWR_PG_DIR""#)
        .arg("flwr-postgres-watchdog")
        .args(stop)
        .env("FLWR_PG_DIR", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C aimed at the test must not kill it before it cleans up.
        .process_group(0)
        .spawn()
        .map_err(io_error("starting the PostgreSQL watchdog (sh)"))?;
    let pipe = child.stdin.take().ok_or_else(|| ChildError::Io {
        context: "starting the PostgreSQL watchdog (sh)".to_owned(),
        source: io::Error::other("no stdin pipe"),
    })?;
    Ok((child, pipe))
}

/// A fresh mode-0700 directory under the system temp dir.
fn private_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for _ in 0..16 {
        let dir = base.join(format!("flwr-pg-{}-{}", std::process::id(), random_hex(6)?));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(io_error(format!("creating {}", dir.display()))(err)),
        }
    }
    Err(ChildError::Io {
        context: format!("creating a directory under {}", base.display()),
        source: io::Error::other("every name tried exists"),
    })
}

/// Writes `bytes` to a new file only its owner may read.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(format!("creating {}", path.display())))?;
    file.write_all(bytes)
        .map_err(io_error(format!("writing {}", path.display())))
}

/// `bytes` random bytes from the kernel, as lowercase hex.
fn random_hex(bytes: usize) -> Result<String> {
    let mut buffer = vec![0_u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut buffer))
        .map_err(io_error("reading /dev/urandom"))?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// An error unless the command exited successfully.
fn check(command: &CommandLine, output: &std::process::Output) -> Result<()> {
    if output.status.success() {
        return Ok(());
    }
    Err(ChildError::Command {
        command: command.to_string(),
        reason: format!("exited with {}", output.status),
        output: combined(output),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts a cluster, creates two databases and checks that dropping it cleans up.
    #[test]
    fn a_cluster_starts_serves_databases_and_cleans_up() {
        let cluster = TempPostgres::start().unwrap();
        let dir = cluster.dir.clone();
        assert!(dir.join("data").is_dir());
        let url = cluster.fresh_database().unwrap();
        assert!(url.starts_with(&format!("postgresql://{USER}:")), "{url}");
        assert!(url.contains(&format!("@127.0.0.1:{}/flwr_test_", cluster.port())));
        assert!(cluster.create_database("bad name").is_err());
        // Connecting proves the server listens on the port.
        std::net::TcpStream::connect(("127.0.0.1", cluster.port())).unwrap();
        let port = cluster.port();
        drop(cluster);
        assert!(!dir.exists(), "{} was left behind", dir.display());
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
