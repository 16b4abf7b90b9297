//! A whole federation on loopback — one SuperLink, some SuperNodes, the NumPy app — where each
//! process is either the Python reference or ours, so every cross-implementation test runs the
//! same flow.
//!
//! ```no_run
//! use flwr_testkit::cluster::{Cluster, Side};
//!
//! # fn main() -> flwr_testkit::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let mut cluster = Cluster::new(dir.path())?;
//! cluster.start_superlink(Side::Rust, &[])?;
//! cluster.start_supernodes(&[Side::Python, Side::Rust], None)?;
//! let run = cluster.run_app_to("finished:completed")?;
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flwr_runtime::ChildError;

use crate::{
    free_ports, CommandLine, Federation, Flwr, NumpyApp, Pki, Proc, Result, RunId, RunInfo, Venv,
};

/// How long a process may take to come up.
pub const STARTUP: Duration = Duration::from_secs(60);
/// How long a 3-round NumPy run may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(240);
/// Federation name in the app's pyproject.toml.
pub const FEDERATION: &str = "cluster";

/// Whose implementation a process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The reference `flwr==1.14.0` from the virtualenv.
    Python,
    /// Ours, built in this workspace.
    Rust,
}

/// Node-auth key files for one SuperNode.
#[derive(Clone, Debug)]
pub struct NodeKeys {
    /// OpenSSH private key file.
    pub private: PathBuf,
    /// OpenSSH public key file.
    pub public: PathBuf,
}

/// Node-auth files for the SuperLink.
#[derive(Clone, Debug)]
pub struct SuperLinkKeys {
    /// The CSV allow-list (`--auth-list-public-keys`).
    pub allow_list: PathBuf,
    /// OpenSSH private key file.
    pub private: PathBuf,
    /// OpenSSH public key file.
    pub public: PathBuf,
}

/// Path of one of our binaries in the Cargo target directory this test runs from.
///
/// Test executables live in `target/<profile>/deps/` and examples in
/// `target/<profile>/examples/`; the binaries one level up.
pub fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .and_then(|deps| {
            if deps.ends_with("deps") || deps.ends_with("examples") {
                deps.parent()
            } else {
                Some(deps)
            }
        })
        .map(Path::to_path_buf)
        .unwrap_or_default();
    profile_dir.join(name)
}

/// One federation under test. Processes stop when it is dropped: SuperNodes first (they send
/// DeleteNode while the SuperLink still answers), then the SuperLink.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    venv: Venv,
    pki: Pki,
    fleet: u16,
    serverappio: u16,
    exec: u16,
    app: NumpyApp,
    flwr: Flwr,
    supernodes: Vec<Proc>,
    superlink: Option<Proc>,
}

impl Cluster {
    /// A cluster in `dir`: an openssl PKI, free ports and the NumPy app pointing at its Exec API.
    ///
    /// # Errors
    ///
    /// When the virtualenv is missing or a setup command fails.
    pub fn new(dir: &Path) -> Result<Self> {
        let venv = Venv::locate()?;
        let pki = Pki::generate_with_openssl(&dir.join("certs"))?;
        let [fleet, serverappio, exec] = free_ports::<3>()?;
        let federation = Federation::with_root_certificates(
            FEDERATION,
            format!("127.0.0.1:{exec}"),
            &pki.ca_cert,
        );
        let app = NumpyApp::create(&venv, dir, &federation)?;
        let flwr = Flwr::from_venv(&venv, dir);
        Ok(Self {
            dir: dir.to_owned(),
            venv,
            pki,
            fleet,
            serverappio,
            exec,
            app,
            flwr,
            supernodes: Vec::new(),
            superlink: None,
        })
    }

    /// The TLS material.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The virtualenv.
    pub fn venv(&self) -> &Venv {
        &self.venv
    }

    /// The app under test.
    pub fn app(&self) -> &NumpyApp {
        &self.app
    }

    /// The `flwr` CLI pointed at this cluster.
    pub fn flwr(&self) -> &Flwr {
        &self.flwr
    }

    /// `127.0.0.1:<fleet port>`.
    pub fn fleet_address(&self) -> String {
        format!("127.0.0.1:{}", self.fleet)
    }

    /// The Exec API address, `127.0.0.1:port` (TLS, with the cluster's CA).
    pub fn exec_address(&self) -> String {
        format!("127.0.0.1:{}", self.exec)
    }

    /// The SuperLink process, once started.
    pub fn superlink(&self) -> Option<&Proc> {
        self.superlink.as_ref()
    }

    /// The SuperNode processes in start order.
    pub fn supernodes(&mut self) -> &mut Vec<Proc> {
        &mut self.supernodes
    }

    /// The command line of a SuperLink of `side` with TLS and this cluster's ports, plus `extra`.
    pub fn superlink_command(&self, side: Side, extra: &[String]) -> CommandLine {
        let program = match side {
            Side::Python => self.venv.superlink(),
            Side::Rust => target_bin("flower-superlink"),
        };
        self.venv
            .command(program)
            .env("FLWR_HOME", self.dir.join("home-superlink"))
            .arg("--ssl-ca-certfile")
            .arg(&self.pki.ca_cert)
            .arg("--ssl-certfile")
            .arg(&self.pki.server_cert)
            .arg("--ssl-keyfile")
            .arg(&self.pki.server_key)
            .arg("--fleet-api-address")
            .arg(self.fleet_address())
            .arg("--serverappio-api-address")
            .arg(format!("127.0.0.1:{}", self.serverappio))
            .arg("--exec-api-address")
            .arg(format!("127.0.0.1:{}", self.exec))
            .args(extra)
    }

    /// Starts the SuperLink and waits until its Fleet port accepts connections.
    ///
    /// # Errors
    ///
    /// When it exits or does not listen within [`STARTUP`].
    pub fn start_superlink(&mut self, side: Side, extra: &[String]) -> Result<()> {
        let command = self.superlink_command(side, extra);
        let mut superlink = Proc::spawn("superlink", &command, &self.dir)?;
        // The Python SuperLink ignores SIGTERM with subprocess isolation (CLI.md §1.3).
        superlink.set_drop_grace(Duration::from_secs(if side == Side::Python {
            2
        } else {
            10
        }));
        wait_listening(&superlink, self.fleet)?;
        self.superlink = Some(superlink);
        Ok(())
    }

    /// Stops the SuperLink (SIGTERM, then SIGKILL after `grace`).
    ///
    /// # Errors
    ///
    /// When no SuperLink runs or signalling fails.
    pub fn stop_superlink(&mut self, grace: Duration) -> Result<std::process::ExitStatus> {
        let mut superlink = self.superlink.take().ok_or_else(|| ChildError::Timeout {
            waiting_for: "a SuperLink to stop".into(),
            after: Duration::ZERO,
            details: "no SuperLink was started".into(),
        })?;
        Ok(superlink.terminate(grace)?)
    }

    /// The command line of SuperNode number `index` of `of` (partition `index`), with TLS.
    pub fn supernode_command(
        &self,
        side: Side,
        index: usize,
        of: usize,
        keys: Option<&NodeKeys>,
    ) -> Result<CommandLine> {
        let program = match side {
            Side::Python => self.venv.supernode(),
            Side::Rust => target_bin("flower-supernode"),
        };
        let [clientappio] = free_ports::<1>()?;
        let mut command = self
            .venv
            .command(program)
            .env(
                "FLWR_HOME",
                self.dir.join(format!("home-supernode-{index}")),
            )
            .arg("--root-certificates")
            .arg(&self.pki.ca_cert)
            .arg("--superlink")
            .arg(self.fleet_address())
            .arg("--node-config")
            .arg(format!("partition-id={index} num-partitions={of}"))
            .arg("--clientappio-api-address")
            .arg(format!("127.0.0.1:{clientappio}"));
        if let Some(keys) = keys {
            command = command
                .arg("--auth-supernode-private-key")
                .arg(&keys.private)
                .arg("--auth-supernode-public-key")
                .arg(&keys.public);
        }
        Ok(command)
    }

    /// Starts one SuperNode per entry of `sides` (partition = position), with the matching
    /// entry of `keys` when given, and waits until the SuperLink has registered them all.
    ///
    /// # Errors
    ///
    /// When a process exits or registration does not happen within [`STARTUP`].
    pub fn start_supernodes(&mut self, sides: &[Side], keys: Option<&[NodeKeys]>) -> Result<()> {
        let before = self.supernodes.len();
        for (index, side) in sides.iter().enumerate() {
            let command = self.supernode_command(
                *side,
                before + index,
                sides.len(),
                keys.and_then(|k| k.get(index)),
            )?;
            let supernode = Proc::spawn(
                &format!("supernode-{}", before + index),
                &command,
                &self.dir,
            )?;
            self.supernodes.push(supernode);
        }
        self.wait_for_nodes(before + sides.len())
    }

    /// Waits until the SuperLink log shows `count` registrations in total.
    ///
    /// # Errors
    ///
    /// On timeout, or when a SuperNode exits meanwhile.
    pub fn wait_for_nodes(&self, count: usize) -> Result<()> {
        let Some(superlink) = &self.superlink else {
            return Ok(());
        };
        // Both SuperLinks log this once per registration (ours on purpose, for operators used
        // to the reference's log).
        let pattern = "Created node_id";
        let started = Instant::now();
        for _ in 0..600 {
            if let Some(dead) = self.supernodes.iter().find(|n| !n.is_running()) {
                return Err(ChildError::Timeout {
                    waiting_for: format!("{count} registered SuperNodes"),
                    after: started.elapsed(),
                    details: format!(
                        "{} exited:\n{}",
                        dead.name(),
                        dead.log_text().unwrap_or_default()
                    ),
                }
                .into());
            }
            let seen = superlink.log_text()?.matches(pattern).count();
            if seen >= count {
                return Ok(());
            }
            if started.elapsed() > STARTUP {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(ChildError::Timeout {
            waiting_for: format!("{count} registered SuperNodes"),
            after: started.elapsed(),
            details: superlink.log_text().unwrap_or_default(),
        }
        .into())
    }

    /// `flwr run` of the app, then waits for `expected` (e.g. `finished:completed`).
    ///
    /// # Errors
    ///
    /// When the run cannot be started or ends otherwise.
    pub fn run_app_to(&self, expected: &str) -> Result<(RunId, RunInfo)> {
        let run_id = self.flwr.run(self.app.dir(), FEDERATION)?;
        let run =
            self.flwr
                .wait_for_status(run_id, self.app.dir(), FEDERATION, expected, RUN_TIMEOUT)?;
        Ok((run_id, run))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.supernodes {
            let _ = node.terminate(Duration::from_secs(10));
        }
        if let Some(superlink) = &mut self.superlink {
            let _ = superlink.terminate(Duration::from_secs(5));
        }
    }
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`, or the process exits.
fn wait_listening(process: &Proc, port: u16) -> Result<()> {
    let started = Instant::now();
    for _ in 0..600 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if !process.is_running() || started.elapsed() > STARTUP {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(ChildError::Timeout {
        waiting_for: format!("{} to listen on port {port}", process.name()),
        after: started.elapsed(),
        details: process.log_text().unwrap_or_default(),
    }
    .into())
}
