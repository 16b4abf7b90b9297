//! Run statuses (BEHAVIOR.md §5): the reference's `Status` and `SubStatus` values, their wire
//! strings and the `status:sub_status` form `flwr ls` prints.
//!
//! The store keeps `flwr_proto::RunStatus` as sent, because the reference accepts some
//! sub-statuses it never defines; [`RunStatus`] is for the edges that compare statuses.

use std::fmt;
use std::str::FromStr;

/// `RunStatus.status` of a run that waits for a ServerApp process.
pub const PENDING: &str = "pending";
/// `RunStatus.status` of a run whose inputs a ServerApp process has pulled.
pub const STARTING: &str = "starting";
/// `RunStatus.status` of a run whose ServerApp is executing.
pub const RUNNING: &str = "running";
/// `RunStatus.status` of a run that ended (see the sub-statuses).
pub const FINISHED: &str = "finished";
/// `RunStatus.sub_status` of a run that finished normally.
pub const COMPLETED: &str = "completed";
/// `RunStatus.sub_status` of a run that finished with an error.
pub const FAILED: &str = "failed";
/// `RunStatus.sub_status` of a run stopped by `flwr stop` (Exec `StopRun`).
pub const STOPPED: &str = "stopped";

/// How a finished run ended (the reference's `SubStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubStatus {
    /// The ServerApp returned normally.
    Completed,
    /// The ServerApp failed, or its process died.
    Failed,
    /// `flwr stop` stopped the run.
    Stopped,
}

impl SubStatus {
    /// The wire string: `completed`, `failed` or `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => COMPLETED,
            Self::Failed => FAILED,
            Self::Stopped => STOPPED,
        }
    }

    /// The sub-status `text` names, if any.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            COMPLETED => Some(Self::Completed),
            FAILED => Some(Self::Failed),
            STOPPED => Some(Self::Stopped),
            _ => None,
        }
    }
}

/// A run's status with its sub-status, as Flower 1.14 defines them.
///
/// `Display` and `FromStr` use the form `flwr ls` prints: the status alone, or
/// `finished:<sub-status>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// Ended, with how.
    Finished(SubStatus),
    /// Waiting for a ServerApp process.
    Pending,
    /// Its ServerApp is executing.
    Running,
    /// A ServerApp process has pulled its inputs.
    Starting,
}

/// A status string that is not one of Flower 1.14's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown run status {0:?}")]
pub struct UnknownRunStatus(pub String);

impl RunStatus {
    /// The status from the two wire fields (`RunStatus.status`, `RunStatus.sub_status`).
    ///
    /// # Errors
    ///
    /// [`UnknownRunStatus`] for a status or sub-status Flower does not define, or a
    /// sub-status on a run that has not finished.
    pub fn from_fields(status: &str, sub_status: &str) -> Result<Self, UnknownRunStatus> {
        let parsed = match (status, sub_status) {
            (PENDING, "") => Some(Self::Pending),
            (STARTING, "") => Some(Self::Starting),
            (RUNNING, "") => Some(Self::Running),
            (FINISHED, sub) => SubStatus::parse(sub).map(Self::Finished),
            _ => None,
        };
        parsed.ok_or_else(|| UnknownRunStatus(format!("{status}:{sub_status}")))
    }

    /// The status of a wire `RunStatus`; its details are not part of it.
    ///
    /// # Errors
    ///
    /// As [`RunStatus::from_fields`].
    pub fn from_proto(status: &flwr_proto::RunStatus) -> Result<Self, UnknownRunStatus> {
        Self::from_fields(&status.status, &status.sub_status)
    }

    /// `RunStatus.status`: `pending`, `starting`, `running` or `finished`.
    pub fn status(self) -> &'static str {
        match self {
            Self::Finished(_) => FINISHED,
            Self::Pending => PENDING,
            Self::Running => RUNNING,
            Self::Starting => STARTING,
        }
    }

    /// `RunStatus.sub_status`: empty unless finished.
    pub fn sub_status(self) -> &'static str {
        match self {
            Self::Finished(sub) => sub.as_str(),
            Self::Pending | Self::Running | Self::Starting => "",
        }
    }

    /// Whether the run has ended.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Finished(_))
    }

    /// The wire `RunStatus` with `details`.
    pub fn to_proto(self, details: impl Into<String>) -> flwr_proto::RunStatus {
        flwr_proto::RunStatus {
            status: self.status().to_owned(),
            sub_status: self.sub_status().to_owned(),
            details: details.into(),
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Finished(sub) => write!(f, "{FINISHED}:{}", sub.as_str()),
            other => f.write_str(other.status()),
        }
    }
}

impl FromStr for RunStatus {
    type Err = UnknownRunStatus;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (status, sub_status) = text.split_once(':').unwrap_or((text, ""));
        Self::from_fields(status, sub_status).map_err(|_| UnknownRunStatus(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [RunStatus; 6] = [
        RunStatus::Pending,
        RunStatus::Starting,
        RunStatus::Running,
        RunStatus::Finished(SubStatus::Completed),
        RunStatus::Finished(SubStatus::Failed),
        RunStatus::Finished(SubStatus::Stopped),
    ];

    #[test]
    fn strings_are_flowers() {
        let shown: Vec<String> = ALL.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "pending",
                "starting",
                "running",
                "finished:completed",
                "finished:failed",
                "finished:stopped"
            ]
        );
        for status in ALL {
            assert_eq!(status.to_string().parse(), Ok(status));
            let wire = status.to_proto("why");
            assert_eq!(RunStatus::from_proto(&wire), Ok(status));
            assert_eq!(wire.details, "why");
        }
    }

    #[test]
    fn unknown_strings_are_refused() {
        for text in [
            "",
            "finished",
            "finished:",
            "running:completed",
            "done",
            "FINISHED:failed",
        ] {
            assert!(text.parse::<RunStatus>().is_err(), "{text:?}");
        }
        assert!(RunStatus::from_fields("starting", "weird").is_err());
    }
}
