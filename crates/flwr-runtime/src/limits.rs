//! The open-file limit, which bounds how many connections a server can hold.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The open-file limit before and after [`raise_open_file_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit (the most an unprivileged process can raise to).
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Distributions start processes at 1 024
/// descriptors, which would cap a SuperLink at about a thousand SuperNodes.
///
/// # Errors
///
/// The limit cannot be read or set.
pub fn raise_open_file_limit() -> std::io::Result<OpenFileLimit> {
    let (before, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if before < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(OpenFileLimit { before, soft, hard })
}

/// The soft open-file limit now in force.
///
/// # Errors
///
/// The limit cannot be read.
pub fn open_file_limit() -> std::io::Result<u64> {
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}
