//! What the demo tells its user while it runs: the library never prints, it hands each
//! [`Event`] to a [`Reporter`] (the `flower-demo` binary prints them and drives a progress
//! bar; tests use [`Silent`]).

use std::path::Path;

/// Receives the demo's progress.
pub trait Reporter {
    /// Called once per event, in order, from the thread that called [`crate::run_with`].
    fn report(&mut self, event: Event<'_>);
}

/// Ignores every event.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Reporter for Silent {
    fn report(&mut self, _event: Event<'_>) {}
}

/// One step of the demo. They occur in this order: `WorkDirReady`, `CredentialsWritten`,
/// `SuperLinkStarted`, `SuperNodesRegistered`, `RogueRefused`, `FabBuilt`, `RunStarted`,
/// `RoundStarted`/`RoundCompleted` per round, `RunFinished`, `CentralTrained`, `Stopped` per
/// process (SuperNodes, then `superlink`), `OutputsWritten`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The central baseline is trained.
    CentralTrained {
        /// Its accuracy on the pooled evaluation data.
        accuracy: f64,
    },
    /// Certificates and keys are written.
    CredentialsWritten {
        /// SuperNode key pairs on the allow-list.
        listed: usize,
        /// The CSV allow-list.
        allow_list: &'a Path,
    },
    /// The app bundle is packaged.
    FabBuilt {
        /// sha256 hex of the FAB.
        hash: &'a str,
        /// Its size.
        bytes: usize,
    },
    /// `summary.json` and `learning_curve.svg` are written.
    OutputsWritten {
        /// The summary.
        summary: &'a Path,
        /// The learning curve.
        svg: &'a Path,
    },
    /// The rogue SuperNode exited after the SuperLink refused it.
    RogueRefused {
        /// Its exit code (`None` if killed by a signal).
        exit_code: Option<i32>,
        /// The error line it logged last, if any.
        reason: Option<&'a str>,
    },
    /// The ServerApp finished a round's training and evaluation.
    RoundCompleted {
        /// The round (1-based).
        round: u64,
        /// Rounds requested.
        rounds: u64,
    },
    /// The ServerApp began a round.
    RoundStarted {
        /// The round (1-based).
        round: u64,
        /// Rounds requested.
        rounds: u64,
    },
    /// The run reached a final status.
    RunFinished {
        /// `status:sub_status`, e.g. `finished:completed`.
        status: &'a str,
    },
    /// `StartRun` succeeded.
    RunStarted {
        /// The run.
        run_id: u64,
        /// Rounds requested.
        rounds: u64,
    },
    /// A process exited after SIGTERM.
    Stopped {
        /// Which process.
        name: &'a str,
        /// Its exit code (`None` if killed by a signal).
        exit_code: Option<i32>,
    },
    /// The SuperLink accepts connections.
    SuperLinkStarted {
        /// Fleet API address.
        fleet: &'a str,
        /// Exec API address.
        exec: &'a str,
        /// Where the SuperLink's Prometheus metrics are served.
        metrics: &'a str,
    },
    /// Every listed SuperNode has registered with the SuperLink.
    SuperNodesRegistered {
        /// How many.
        count: usize,
    },
    /// The work directory is ready (logs go to its `logs/` subdirectory).
    WorkDirReady {
        /// The directory.
        dir: &'a Path,
        /// Whether it is removed at the end (a temporary directory after a successful run).
        temporary: bool,
    },
}
