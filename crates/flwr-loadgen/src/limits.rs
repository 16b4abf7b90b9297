//! The open-file limit: one descriptor per HTTP/2 connection, so tens of thousands of
//! simulated nodes need the soft `RLIMIT_NOFILE` raised to the hard one.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors kept for everything that is not a Fleet connection (runtime, files, stdio).
pub const RESERVED_FILES: u64 = 64;

/// The open-file limit cannot hold the connections asked for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// The hard limit is below what the test needs.
    #[error(
        "{connections} connections need {needed} open files but this process may open at most \
         {hard} (hard RLIMIT_NOFILE); use --nodes-per-connection {suggested} or more, fewer \
         --nodes, or raise the hard limit (ulimit -Hn) as root"
    )]
    TooLow {
        /// Connections requested.
        connections: usize,
        /// Descriptors needed.
        needed: u64,
        /// The hard limit.
        hard: u64,
        /// The smallest `--nodes-per-connection` that fits.
        suggested: usize,
    },
    /// Reading or setting the limit failed.
    #[error("cannot raise the open-file limit: {0}")]
    System(#[from] nix::Error),
}

/// Raises the soft open-file limit to the hard one if `connections` need more than the soft
/// limit allows, and returns the limit now in force.
///
/// # Errors
///
/// [`LimitError::TooLow`] when even the hard limit is too low for `connections` of `nodes`.
pub fn raise_open_files(connections: usize, nodes: usize) -> Result<u64, LimitError> {
    let needed = connections as u64 + RESERVED_FILES;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if needed <= soft {
        return Ok(soft);
    }
    if needed > hard {
        let usable = hard.saturating_sub(RESERVED_FILES).max(1) as usize;
        return Err(LimitError::TooLow {
            connections,
            needed,
            hard,
            suggested: nodes.div_ceil(usable),
        });
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_needs_fit_and_huge_needs_name_a_sharing_factor() {
        assert!(raise_open_files(10, 10).unwrap() >= 10 + RESERVED_FILES);
        let error = raise_open_files(usize::MAX / 4, usize::MAX / 4).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("--nodes-per-connection"), "{message}");
    }
}
