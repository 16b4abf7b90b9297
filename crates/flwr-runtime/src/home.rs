//! The Flower home directory, where installed apps and the SuperLink's file store live.

use std::path::{Path, PathBuf};

/// The Flower home the reference uses (CLI.md §5): `flwr_dir` (a `--flwr-dir` flag) if given,
/// else `$FLWR_HOME`, else `$XDG_DATA_HOME/.flwr`, else `$HOME/.flwr`.
pub fn flwr_home(flwr_dir: Option<&Path>) -> PathBuf {
    if let Some(dir) = flwr_dir {
        return dir.to_path_buf();
    }
    if let Some(home) = std::env::var_os("FLWR_HOME") {
        return PathBuf::from(home);
    }
    // The reference joins `.flwr` onto `$XDG_DATA_HOME` too (not `flwr`), quirk kept.
    let base = std::env::var_os("XDG_DATA_HOME")
        .or_else(|| std::env::var_os("HOME"))
        .unwrap_or_default();
    PathBuf::from(base).join(".flwr")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_directory_wins() {
        assert_eq!(
            flwr_home(Some(Path::new("/srv/flower"))),
            PathBuf::from("/srv/flower")
        );
    }

    #[test]
    fn the_default_ends_in_dot_flwr_unless_flwr_home_is_set() {
        // Only read the environment: tests in one binary share it, so none may change it.
        let home = flwr_home(None);
        match std::env::var_os("FLWR_HOME") {
            Some(set) => assert_eq!(home, PathBuf::from(set)),
            None => assert!(home.ends_with(".flwr"), "{}", home.display()),
        }
    }
}
