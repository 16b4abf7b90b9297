//! The run status machine (BEHAVIOR.md §5), sans-IO: which transitions are allowed and which
//! RPCs a run's status refuses.

use flwr_core::run::RunStatus as Status;
use flwr_proto::RunStatus;

// The status strings are Flower's, defined once in `flwr_core::run`; re-exported so that the
// store's callers keep one import.
pub use flwr_core::run::{COMPLETED, FAILED, FINISHED, PENDING, RUNNING, STARTING, STOPPED};

/// Which run statuses a guarded RPC accepts (BEHAVIOR.md §5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Guard {
    /// Refuse only finished runs: ServerAppIo/SimulationIo `UpdateRunStatus`.
    RejectFinished,
    /// Accept only running runs: Fleet `PushTaskRes`/`GetRun`/`GetFab`, ServerAppIo
    /// `GetNodes`/`PushTaskIns`/`PullTaskRes`/`PushServerAppOutputs`, SimulationIo
    /// `PushSimulationOutputs`.
    RequireRunning,
}

/// The status a new run starts with: `pending`, no sub-status, no details.
pub fn pending_status() -> RunStatus {
    RunStatus {
        status: PENDING.to_owned(),
        sub_status: String::new(),
        details: String::new(),
    }
}

/// The `PERMISSION_DENIED` details for a run in `status` under `guard`, or `None` if the RPC
/// may proceed.
///
/// The text is the reference's: `Run is pending.`, `Run is starting.`, `Run is finished.`,
/// with ` Stopped by user.` appended when the sub-status is `stopped`.
pub fn guard_denial(status: &RunStatus, guard: Guard) -> Option<String> {
    let denied = match guard {
        Guard::RejectFinished => status.status == FINISHED,
        Guard::RequireRunning => status.status != RUNNING,
    };
    if !denied {
        return None;
    }
    let mut details = format!("Run is {}.", status.status);
    if status.sub_status == STOPPED {
        details.push_str(" Stopped by user.");
    }
    Some(details)
}

/// Whether a run in `current` may move to `new` (BEHAVIOR.md §5.2).
///
/// Allowed: pending → starting, starting → running, running → finished (any sub-status), and
/// pending/starting → finished unless the new sub-status is `completed`. Everything else,
/// including same → same and finished → anything, is refused. As in the reference the *new*
/// sub-status is not validated, but the *current* one must be consistent with its status
/// (`""` while not finished), so a run that accepted e.g. `starting`/`weird` is stuck.
pub fn transition_allowed(current: &RunStatus, new: &RunStatus) -> bool {
    // A current status that is not one of Flower's (e.g. `starting`/`weird`) allows nothing.
    let Ok(current) = Status::from_proto(current) else {
        return false;
    };
    match (current, new.status.as_str()) {
        (Status::Pending, STARTING) | (Status::Starting, RUNNING) | (Status::Running, FINISHED) => {
            true
        }
        (Status::Pending | Status::Starting, FINISHED) => new.sub_status != COMPLETED,
        _ => false,
    }
}

/// Which `Run` timestamp an accepted transition to `status` stamps (`starting_at`,
/// `running_at` or `finished_at`), or `None` for any other status string.
pub fn stamped_timestamp(status: &str) -> Option<Timestamp> {
    match status {
        STARTING => Some(Timestamp::StartingAt),
        RUNNING => Some(Timestamp::RunningAt),
        FINISHED => Some(Timestamp::FinishedAt),
        _ => None,
    }
}

/// One of the timestamps a [`flwr_proto::Run`] carries after its creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timestamp {
    /// `Run.finished_at`.
    FinishedAt,
    /// `Run.running_at`.
    RunningAt,
    /// `Run.starting_at`.
    StartingAt,
}

/// Moves `run` to `new` if [`transition_allowed`]: replaces its status (details included) and
/// stamps the matching timestamp with `now_iso`. Returns whether it moved; every backend's
/// `update_run_status` is this on the run it read, then a write of the result.
pub fn transition(run: &mut flwr_proto::Run, new: RunStatus, now_iso: &str) -> bool {
    let current = run.status.clone().unwrap_or_default();
    if !transition_allowed(&current, &new) {
        return false;
    }
    apply_transition(run, new, now_iso);
    true
}

/// Applies an accepted transition to `run` (see [`transition`]), without checking it.
fn apply_transition(run: &mut flwr_proto::Run, new: RunStatus, now_iso: &str) {
    match stamped_timestamp(&new.status) {
        Some(Timestamp::StartingAt) => now_iso.clone_into(&mut run.starting_at),
        Some(Timestamp::RunningAt) => now_iso.clone_into(&mut run.running_at),
        Some(Timestamp::FinishedAt) => now_iso.clone_into(&mut run.finished_at),
        None => {}
    }
    run.status = Some(new);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: &str, sub_status: &str) -> RunStatus {
        RunStatus {
            status: status.to_owned(),
            sub_status: sub_status.to_owned(),
            details: String::new(),
        }
    }

    #[test]
    fn transition_table() {
        let allowed = [
            (status(PENDING, ""), status(STARTING, "")),
            (status(STARTING, ""), status(RUNNING, "")),
            (status(RUNNING, ""), status(FINISHED, COMPLETED)),
            (status(RUNNING, ""), status(FINISHED, FAILED)),
            (status(RUNNING, ""), status(FINISHED, STOPPED)),
            (status(PENDING, ""), status(FINISHED, STOPPED)),
            (status(STARTING, ""), status(FINISHED, FAILED)),
            // The new sub-status is not validated.
            (status(PENDING, ""), status(STARTING, "weird")),
            (status(RUNNING, ""), status(FINISHED, "bogus")),
        ];
        for (from, to) in &allowed {
            assert!(transition_allowed(from, to), "{from:?} -> {to:?}");
        }
        let refused = [
            (status(PENDING, ""), status(PENDING, "")),
            (status(PENDING, ""), status(RUNNING, "")),
            (status(PENDING, ""), status(FINISHED, COMPLETED)),
            (status(STARTING, ""), status(FINISHED, COMPLETED)),
            (status(STARTING, ""), status(STARTING, "")),
            (status(RUNNING, ""), status(STARTING, "")),
            (status(RUNNING, ""), status(RUNNING, "")),
            (status(FINISHED, COMPLETED), status(RUNNING, "")),
            (status(FINISHED, STOPPED), status(FINISHED, FAILED)),
            (status(STARTING, "weird"), status(RUNNING, "")),
            (status(PENDING, ""), status("bogus", "")),
        ];
        for (from, to) in &refused {
            assert!(!transition_allowed(from, to), "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn guard_texts() {
        let require = Guard::RequireRunning;
        assert_eq!(guard_denial(&status(RUNNING, ""), require), None);
        assert_eq!(
            guard_denial(&status(PENDING, ""), require).as_deref(),
            Some("Run is pending.")
        );
        assert_eq!(
            guard_denial(&status(STARTING, ""), require).as_deref(),
            Some("Run is starting.")
        );
        assert_eq!(
            guard_denial(&status(FINISHED, COMPLETED), require).as_deref(),
            Some("Run is finished.")
        );
        assert_eq!(
            guard_denial(&status(FINISHED, STOPPED), require).as_deref(),
            Some("Run is finished. Stopped by user.")
        );
        let reject = Guard::RejectFinished;
        assert_eq!(guard_denial(&status(PENDING, ""), reject), None);
        assert_eq!(guard_denial(&status(STARTING, ""), reject), None);
        assert_eq!(guard_denial(&status(RUNNING, ""), reject), None);
        assert_eq!(
            guard_denial(&status(FINISHED, STOPPED), reject).as_deref(),
            Some("Run is finished. Stopped by user.")
        );
    }

    #[test]
    fn apply_stamps_matching_timestamp() {
        let mut run = flwr_proto::Run::default();
        apply_transition(&mut run, status(STARTING, ""), "t1");
        apply_transition(&mut run, status(RUNNING, ""), "t2");
        apply_transition(&mut run, status(FINISHED, FAILED), "t3");
        assert_eq!(
            (&*run.starting_at, &*run.running_at, &*run.finished_at),
            ("t1", "t2", "t3")
        );
        assert_eq!(run.status, Some(status(FINISHED, FAILED)));
    }
}
