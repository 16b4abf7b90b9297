//! The demo's processes: one `flower-superlink`, the listed `flower-supernode`s and the rogue
//! one, each in its own process group with its log in `<work dir>/logs/` (through
//! [`flwr_runtime::Proc`], which also kills and reaps them on drop).
//!
//! Apps run in subprocess isolation: the SuperLink starts `flwr-serverapp` and the SuperNodes
//! start `flwr-clientapp`, both looked up on `PATH`. A private directory first on their `PATH`
//! holds those two names as symlinks to the Rust example binaries (`flwr-rs-serverapp`,
//! `flwr-rs-clientapp`); see the `flwr` crate docs, "Running a Rust app".

use std::ffi::OsString;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use flwr_runtime::{CommandLine, Proc};

use crate::credentials::{Credentials, NodeKeys};
use crate::error::{io_error, DemoError};
use crate::Cancel;

/// How long a process may take to listen or register.
pub(crate) const STARTUP: Duration = Duration::from_secs(30);
/// How long the rogue SuperNode may take to be refused and exit.
const ROGUE_EXIT: Duration = Duration::from_secs(20);
/// Grace between SIGTERM and SIGKILL when stopping.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(15);
/// Grace when processes are dropped on a failure path: enough for the SuperLink to stop a
/// running ServerApp (which has a process group of its own, so only the SuperLink can reach
/// it) and for a SuperNode to stop its ClientApp.
pub(crate) const DROP_GRACE: Duration = Duration::from_secs(10);
/// How often waits look again.
pub(crate) const POLL: Duration = Duration::from_millis(50);
/// What a SuperNode logs once the SuperLink accepted it.
pub(crate) const REGISTERED: &str = "Registered with the SuperLink as node";

/// The four programs the demo needs.
#[derive(Clone, Debug)]
pub(crate) struct Binaries {
    superlink: PathBuf,
    supernode: PathBuf,
    serverapp: PathBuf,
    clientapp: PathBuf,
}

impl Binaries {
    /// The binaries in `dir`.
    ///
    /// # Errors
    ///
    /// [`DemoError::BinaryMissing`] for the first one that is not there.
    pub(crate) fn locate(dir: &Path) -> Result<Self, DemoError> {
        let find = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                // Absolute, so the symlinks in the private bin directory resolve anywhere.
                Ok(std::path::absolute(&path).unwrap_or(path))
            } else {
                Err(DemoError::BinaryMissing(path))
            }
        };
        Ok(Self {
            superlink: find("flower-superlink")?,
            supernode: find("flower-supernode")?,
            serverapp: find("flwr-rs-serverapp")?,
            clientapp: find("flwr-rs-clientapp")?,
        })
    }

    /// Creates `bin_dir` with `flwr-serverapp` and `flwr-clientapp` pointing at the Rust apps.
    pub(crate) fn link_apps(&self, bin_dir: &Path) -> Result<(), DemoError> {
        std::fs::create_dir_all(bin_dir)
            .map_err(io_error(format!("creating {}", bin_dir.display())))?;
        for (name, target) in [
            ("flwr-serverapp", &self.serverapp),
            ("flwr-clientapp", &self.clientapp),
        ] {
            let link = bin_dir.join(name);
            // A kept --work-dir may hold links from an earlier build location.
            if link.symlink_metadata().is_ok() {
                std::fs::remove_file(&link)
                    .map_err(io_error(format!("replacing {}", link.display())))?;
            }
            std::os::unix::fs::symlink(target, &link).map_err(io_error(format!(
                "linking {} to {}",
                link.display(),
                target.display()
            )))?;
        }
        Ok(())
    }

    /// Like [`Binaries::link_apps`], but `flwr-clientapp` is a script that sleeps `delay`
    /// before it runs the Rust ClientApp. With one ClientApp process per message this paces
    /// every fit and evaluate, so a run on this tiny data set lasts long enough to watch (and
    /// to break) from outside.
    pub(crate) fn link_apps_paced(&self, bin_dir: &Path, delay: Duration) -> Result<(), DemoError> {
        use std::os::unix::ffi::OsStrExt as _;
        use std::os::unix::fs::PermissionsExt as _;

        self.link_apps(bin_dir)?;
        let script_path = bin_dir.join("flwr-clientapp");
        std::fs::remove_file(&script_path)
            .map_err(io_error(format!("replacing {}", script_path.display())))?;
        // Single-quoted for sh: a `'` inside becomes `'\''`.
        let mut quoted = b"'".to_vec();
        for &byte in self.clientapp.as_os_str().as_bytes() {
            if byte == b'\'' {
                quoted.extend_from_slice(b"'\\''");
            } else {
                quoted.push(byte);
            }
        }
        quoted.push(b'\'');
        let mut script = format!(
            "#!/bin/sh\n# Paces each ClientApp message (see flwr-demo's federation.rs).\nsleep {}.{:03}\nexec ",
            delay.as_secs(),
            delay.subsec_millis()
        )
        .into_bytes();
        script.extend_from_slice(&quoted);
        script.extend_from_slice(b" \"$@\"\n");
        std::fs::write(&script_path, script)
            .map_err(io_error(format!("writing {}", script_path.display())))?;
        std::fs::set_permissions(&script_path, std::fs::Permissions::from_mode(0o755)).map_err(
            io_error(format!("making {} executable", script_path.display())),
        )?;
        Ok(())
    }
}

/// The ports one SuperLink serves, all on 127.0.0.1.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SuperLinkPorts {
    /// Fleet API port.
    pub(crate) fleet: u16,
    /// ServerAppIo API port (its launched ServerApps connect here).
    pub(crate) serverappio: u16,
    /// Exec API port.
    pub(crate) exec: u16,
    /// Prometheus `/metrics` port.
    pub(crate) metrics: u16,
}

impl SuperLinkPorts {
    /// Four ports in the order fleet, ServerAppIo, Exec, metrics; `None` if fewer are given.
    pub(crate) fn from_slice(ports: &[u16]) -> Option<Self> {
        match *ports {
            [fleet, serverappio, exec, metrics, ..] => Some(Self {
                fleet,
                serverappio,
                exec,
                metrics,
            }),
            _ => None,
        }
    }
}

/// Where processes keep their files and which ports they use.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// Per-process logs.
    pub(crate) logs: PathBuf,
    /// The directory holding the `flwr-serverapp`/`flwr-clientapp` links.
    pub(crate) bin: PathBuf,
    /// Parent of each process's `FLWR_HOME`.
    pub(crate) homes: PathBuf,
    /// The (first) SuperLink's ports.
    pub(crate) superlink: SuperLinkPorts,
    /// One ClientAppIo port per SuperNode; the last is the rogue's.
    pub(crate) clientappio: Vec<u16>,
}

impl Layout {
    /// `127.0.0.1:<port>`.
    pub(crate) fn address(port: u16) -> String {
        format!("127.0.0.1:{port}")
    }

    /// A command line for `program` with `PATH` starting at the private bin directory, its
    /// own `FLWR_HOME` and info logging (the run's progress is read from the ServerApp log).
    pub(crate) fn command(&self, program: &Path, home: &str) -> CommandLine {
        let mut path = OsString::from(self.bin.as_os_str());
        if let Some(inherited) = std::env::var_os("PATH") {
            path.push(":");
            path.push(inherited);
        }
        CommandLine::new(program)
            .env("PATH", path)
            .env("FLWR_HOME", self.homes.join(home))
            .env("RUST_LOG", "info")
    }

    /// `flower-superlink` with TLS, node authentication and subprocess isolation on `ports`,
    /// with `home` as its `FLWR_HOME` (which also holds its FAB storage).
    pub(crate) fn superlink_command(
        &self,
        binaries: &Binaries,
        credentials: &Credentials,
        home: &str,
        ports: &SuperLinkPorts,
    ) -> CommandLine {
        self.command(&binaries.superlink, home)
            .arg("--ssl-ca-certfile")
            .arg(&credentials.ca_cert)
            .arg("--ssl-certfile")
            .arg(&credentials.server_cert)
            .arg("--ssl-keyfile")
            .arg(&credentials.server_key)
            .arg("--auth-list-public-keys")
            .arg(&credentials.allow_list)
            .arg("--auth-superlink-private-key")
            .arg(&credentials.superlink_private)
            .arg("--auth-superlink-public-key")
            .arg(&credentials.superlink_public)
            .arg("--isolation")
            .arg("subprocess")
            .arg("--fleet-api-address")
            .arg(Self::address(ports.fleet))
            .arg("--serverappio-api-address")
            .arg(Self::address(ports.serverappio))
            .arg("--exec-api-address")
            .arg(Self::address(ports.exec))
            .arg("--metrics-address")
            .arg(Self::address(ports.metrics))
    }

    /// `flower-supernode` with TLS and node authentication as `node` describes it.
    pub(crate) fn supernode_command(
        &self,
        binaries: &Binaries,
        credentials: &Credentials,
        node: &SuperNodeSpec<'_>,
    ) -> CommandLine {
        self.command(&binaries.supernode, node.name)
            .arg("--root-certificates")
            .arg(&credentials.ca_cert)
            .arg("--superlink")
            .arg(node.superlink)
            .arg("--node-config")
            .arg(format!(
                "partition-id={} num-partitions={}",
                node.partition, node.partitions
            ))
            .arg("--clientappio-api-address")
            .arg(Self::address(node.clientappio))
            .arg("--auth-supernode-private-key")
            .arg(&node.keys.private)
            .arg("--auth-supernode-public-key")
            .arg(&node.keys.public)
    }
}

/// One SuperNode's settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SuperNodeSpec<'a> {
    /// Process name, log file stem and `FLWR_HOME` directory name.
    pub(crate) name: &'a str,
    /// The Fleet API address it connects to.
    pub(crate) superlink: &'a str,
    /// Its data partition.
    pub(crate) partition: usize,
    /// How many partitions the data is split into.
    pub(crate) partitions: usize,
    /// Its ClientAppIo API port.
    pub(crate) clientappio: u16,
    /// Its node-authentication key pair.
    pub(crate) keys: &'a NodeKeys,
}

/// How the rogue SuperNode fared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RogueOutcome {
    /// Its exit code (`None` if a signal ended it).
    pub(crate) exit_code: Option<i32>,
    /// The last error line in its log.
    pub(crate) reason: Option<String>,
}

/// The running federation. Dropping it kills every process, SuperNodes first.
#[derive(Debug)]
pub(crate) struct Federation {
    // Field order is drop order: SuperNodes go before the SuperLink.
    supernodes: Vec<Proc>,
    superlink: Proc,
}

impl Federation {
    /// Starts the SuperLink with TLS and node authentication and waits until its Fleet and
    /// Exec APIs accept connections.
    pub(crate) fn start_superlink(
        layout: &Layout,
        binaries: &Binaries,
        credentials: &Credentials,
        cancel: &Cancel,
    ) -> Result<Self, DemoError> {
        let command =
            layout.superlink_command(binaries, credentials, "superlink", &layout.superlink);
        let superlink = spawn_superlink("superlink", &command, layout, &layout.superlink, cancel)?;
        Ok(Self {
            supernodes: Vec::new(),
            superlink,
        })
    }

    /// Starts one SuperNode per key pair (partition = position) and the rogue with `rogue`,
    /// waits until the listed ones have registered, then until the rogue has exited.
    ///
    /// # Errors
    ///
    /// When a listed SuperNode exits or does not register, or the rogue is let in or keeps
    /// running ([`DemoError::RogueAccepted`]).
    pub(crate) fn start_supernodes(
        &mut self,
        layout: &Layout,
        binaries: &Binaries,
        credentials: &Credentials,
        cancel: &Cancel,
    ) -> Result<RogueOutcome, DemoError> {
        let listed = &credentials.supernodes;
        let superlink = Layout::address(layout.superlink.fleet);
        let spawn = |name: &str, index: usize, keys: &NodeKeys| -> Result<Proc, DemoError> {
            let node = SuperNodeSpec {
                name,
                superlink: &superlink,
                // The rogue claims partition 0: it must not get any data either way.
                partition: index % listed.len(),
                partitions: listed.len(),
                clientappio: layout.clientappio.get(index).copied().unwrap_or_default(),
                keys,
            };
            let command = layout.supernode_command(binaries, credentials, &node);
            spawn_logged(name, &command, &layout.logs)
        };
        for (index, keys) in listed.iter().enumerate() {
            let process = spawn(&format!("supernode-{index}"), index, keys)?;
            self.supernodes.push(process);
        }
        let mut rogue = spawn("rogue-supernode", listed.len(), &credentials.rogue)?;
        for supernode in &mut self.supernodes {
            wait_registered(supernode, cancel)?;
        }
        rogue_outcome(&mut rogue, cancel)
    }

    /// Fails when the SuperLink or a SuperNode has exited.
    pub(crate) fn check_alive(&mut self) -> Result<(), DemoError> {
        self.supernodes
            .iter_mut()
            .chain(std::iter::once(&mut self.superlink))
            .try_for_each(check_running)
    }

    /// Stops the SuperNodes (SIGTERM, all at once, so each sends DeleteNode while the
    /// SuperLink still answers), then the SuperLink; calls `stopped` with each name and exit
    /// code.
    ///
    /// # Errors
    ///
    /// [`DemoError::ProcessStop`] for the first process that did not exit with status 0
    /// (every process is stopped regardless).
    pub(crate) fn stop(
        mut self,
        mut stopped: impl FnMut(&str, Option<i32>),
    ) -> Result<(), DemoError> {
        let supernodes = stop_all(&mut self.supernodes, &mut stopped);
        let superlink = stop_all(std::slice::from_mut(&mut self.superlink), &mut stopped);
        supernodes.and(superlink)
    }
}

/// Spawns a process logging to `<logs>/<name>.log` with the demo's drop grace.
pub(crate) fn spawn_logged(
    name: &str,
    command: &CommandLine,
    logs: &Path,
) -> Result<Proc, DemoError> {
    let mut process = Proc::spawn(name, command, logs)?;
    process.set_drop_grace(DROP_GRACE);
    Ok(process)
}

/// Spawns a SuperLink and waits until its Fleet and Exec APIs accept connections.
pub(crate) fn spawn_superlink(
    name: &str,
    command: &CommandLine,
    layout: &Layout,
    ports: &SuperLinkPorts,
    cancel: &Cancel,
) -> Result<Proc, DemoError> {
    let mut superlink = spawn_logged(name, command, &layout.logs)?;
    for port in [ports.fleet, ports.exec] {
        wait_listening(&mut superlink, port, cancel)?;
    }
    Ok(superlink)
}

/// Waits until `127.0.0.1:port` accepts connections while `process` runs.
pub(crate) fn wait_listening(
    process: &mut Proc,
    port: u16,
    cancel: &Cancel,
) -> Result<(), DemoError> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(process, &format!("listening on {address}"), cancel, |_| {
        TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
    })
}

/// Waits until a SuperNode has logged its registration.
pub(crate) fn wait_registered(supernode: &mut Proc, cancel: &Cancel) -> Result<(), DemoError> {
    wait_until(supernode, "registration", cancel, |process| {
        process.log_text().is_ok_and(|log| log.contains(REGISTERED))
    })
}

/// [`DemoError::ProcessDied`] when `process` has exited.
pub(crate) fn check_running(process: &mut Proc) -> Result<(), DemoError> {
    if process.is_running() {
        return Ok(());
    }
    let status = process.wait_for_exit(Duration::ZERO)?;
    Err(DemoError::ProcessDied {
        name: process.name().to_owned(),
        status: status.to_string(),
        log: process.log_path().to_owned(),
    })
}

/// Stops `processes` with SIGTERM, all at once, and calls `stopped` with each name and exit
/// code, in order.
///
/// # Errors
///
/// [`DemoError::ProcessStop`] for the first process that did not exit with status 0 (every
/// process is stopped regardless).
pub(crate) fn stop_all(
    processes: &mut [Proc],
    mut stopped: impl FnMut(&str, Option<i32>),
) -> Result<(), DemoError> {
    let results: Vec<_> = thread::scope(|scope| {
        let handles: Vec<_> = processes
            .iter_mut()
            .map(|process| scope.spawn(move || process.terminate(STOP_GRACE)))
            .collect();
        handles
            .into_iter()
            .map(thread::ScopedJoinHandle::join)
            .collect()
    });
    let mut first_error = None;
    let outcomes = results
        .into_iter()
        .map(|joined| joined.unwrap_or_else(|_| Ok(failed_status())));
    for (process, outcome) in processes.iter().zip(outcomes) {
        let error = match outcome {
            Ok(status) => {
                stopped(process.name(), status.code());
                (!status.success()).then(|| DemoError::ProcessStop {
                    name: process.name().to_owned(),
                    status: status.to_string(),
                    log: process.log_path().to_owned(),
                })
            }
            Err(error) => Some(error.into()),
        };
        if first_error.is_none() {
            first_error = error;
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Waits for the rogue to exit (non-zero: refused) and reads why from its log.
fn rogue_outcome(rogue: &mut Proc, cancel: &Cancel) -> Result<RogueOutcome, DemoError> {
    let started = Instant::now();
    while rogue.is_running() && started.elapsed() < ROGUE_EXIT {
        cancel.check()?;
        thread::sleep(POLL);
    }
    let exited = rogue.wait_for_exit(Duration::ZERO);
    let log = rogue.log_text().unwrap_or_default();
    let reason = log
        .lines()
        .rev()
        .find(|line| line.contains("error") || line.contains("ERROR"))
        .map(|line| line.trim().to_owned());
    let Ok(status) = exited else {
        // Still running after ROGUE_EXIT: stop it and report what it did.
        let _ = rogue.terminate(DROP_GRACE);
        let what = if log.contains(REGISTERED) {
            "it registered with the SuperLink"
        } else {
            "it kept running"
        };
        return Err(DemoError::RogueAccepted(format!(
            "{what}; see {}",
            rogue.log_path().display()
        )));
    };
    if status.success() || log.contains(REGISTERED) {
        return Err(DemoError::RogueAccepted(format!(
            "it exited with {status}; see {}",
            rogue.log_path().display()
        )));
    }
    Ok(RogueOutcome {
        exit_code: status.code(),
        reason,
    })
}

/// Polls `ready` until it holds; fails when `process` exits, `cancel` fires or [`STARTUP`]
/// passes.
pub(crate) fn wait_until(
    process: &mut Proc,
    what: &str,
    cancel: &Cancel,
    mut ready: impl FnMut(&Proc) -> bool,
) -> Result<(), DemoError> {
    let started = Instant::now();
    while started.elapsed() < STARTUP {
        if ready(process) {
            return Ok(());
        }
        if !process.is_running() {
            let status = process.wait_for_exit(Duration::ZERO)?;
            return Err(DemoError::ProcessDied {
                name: process.name().to_owned(),
                status: status.to_string(),
                log: process.log_path().to_owned(),
            });
        }
        cancel.check()?;
        thread::sleep(POLL);
    }
    Err(DemoError::Timeout {
        waiting_for: format!("{} {what}", process.name()),
        after: STARTUP,
    })
}

/// Stand-in status for a stop thread that panicked.
fn failed_status() -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt as _;
    std::process::ExitStatus::from_raw(1 << 8)
}
