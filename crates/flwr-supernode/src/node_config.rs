//! `--node-config` parsing (BEHAVIOR.md §11.1): a `.toml` file, or `key=value` pairs typed and
//! flattened by [`flwr_core::config`] as the reference's `parse_config_args` does.

use std::collections::HashMap;
use std::path::PathBuf;

use flwr_core::config::{self, ConfigError};
use flwr_proto::Scalar;

/// Why a `--node-config` value was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeConfigError {
    /// The pairs (or the file) are not valid TOML, or hold a value user configs cannot hold.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The argument named a `.toml` file that could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file named by the argument.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
}

/// Parses a `--node-config` argument into a flat user config.
///
/// # Errors
///
/// When the argument ends in `.toml` and the file cannot be read, when the pairs do not form
/// valid TOML (bare words, `True`, duplicate keys, ...), or when a value is not an integer,
/// float, boolean or string.
pub fn parse(argument: &str) -> Result<HashMap<String, Scalar>, NodeConfigError> {
    if !argument.ends_with(".toml") {
        return Ok(config::parse_pairs(argument)?);
    }
    let path = PathBuf::from(argument);
    let text =
        std::fs::read_to_string(&path).map_err(|source| NodeConfigError::Read { path, source })?;
    let table = config::parse_toml(&text)?;
    Ok(config::flatten(&table).map_err(ConfigError::from)?)
}

#[cfg(test)]
mod tests {
    use flwr_proto::scalar;

    use super::*;

    fn scalar(value: scalar::Scalar) -> Scalar {
        Scalar {
            scalar: Some(value),
        }
    }

    #[test]
    fn pairs_and_toml_files() {
        assert_eq!(
            parse("partition-id=0").unwrap(),
            HashMap::from([("partition-id".to_owned(), scalar(scalar::Scalar::Sint64(0)))])
        );
        assert!(matches!(
            parse("name=abc"),
            Err(NodeConfigError::Config(ConfigError::Toml(_)))
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "partition-id = 1\n[data]\npath = \"/x\"\n").unwrap();
        let parsed = parse(path.to_str().unwrap()).unwrap();
        assert_eq!(
            parsed,
            HashMap::from([
                ("partition-id".to_owned(), scalar(scalar::Scalar::Sint64(1))),
                (
                    "data.path".to_owned(),
                    scalar(scalar::Scalar::String("/x".to_owned()))
                ),
            ])
        );
        std::fs::write(&path, "list = [1]\n").unwrap();
        assert!(matches!(
            parse(path.to_str().unwrap()),
            Err(NodeConfigError::Config(ConfigError::Unsupported(_)))
        ));
        assert!(matches!(
            parse(dir.path().join("missing.toml").to_str().unwrap()),
            Err(NodeConfigError::Read { .. })
        ));
    }
}
