//! The `flower-supernode` command line (CLI.md §2) and its validation into a [`Config`].
//!
//! Flag names, value names and defaults are the reference's; help texts say the same in our own
//! words. [`Args::into_config`] reads and checks everything (certificate file, key files,
//! `--node-config`, addresses) before any socket is opened; each failure names its flag.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgGroup, Parser, ValueEnum};
use flwr_core::Address;
use flwr_proto::Scalar;

pub use crate::fleet::Tls;
use crate::node::Operations;
use crate::node_config::{self, NodeConfigError};
use crate::timing::RetryPolicy;
pub use flwr_runtime::logging::LogFormat;

/// The reference's default for `--superlink` (and `--server`): literally `0.0.0.0:9092`.
pub const DEFAULT_SUPERLINK: &str = "0.0.0.0:9092";

/// Default ClientAppIo bind address.
pub const DEFAULT_CLIENTAPPIO: &str = "0.0.0.0:9094";

/// How ClientApps run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Isolation {
    /// An external, long-running `flwr-clientapp` connects to the ClientAppIo API and asks for
    /// work with `GetToken`.
    Process,
    /// The SuperNode starts `flwr-clientapp` (found on `PATH`) for every message.
    Subprocess,
}

/// How long a ClientApp process that the SuperNode starts (`--isolation subprocess`) lives.
/// Not a reference flag: Flower 1.14 always starts one process per message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ClientAppLifetime {
    /// One `flwr-clientapp --token T` per message, exited after its reply (the reference).
    PerMessage,
    /// One long-lived `flwr-clientapp` (no `--token`) serving message after message of a run;
    /// replaced when a message of another run arrives, restarted when it exits.
    #[default]
    Warm,
}

/// Which node-authentication tokens the SuperNode sends (`--node-auth-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum NodeAuthMode {
    /// Flower 1.14's tokens, which every 1.14 SuperLink accepts.
    #[default]
    Compatible,
    /// Tokens bound to the method, the clock and a counter; only our SuperLink with
    /// `--node-auth-mode hardened` accepts them.
    Hardened,
}

/// Start a Flower SuperNode (Rust implementation, wire-compatible with Flower 1.14).
#[derive(Debug, Parser)]
#[command(name = "flower-supernode", version)]
#[command(group(ArgGroup::new("transport").args(["grpc_rere", "grpc_adapter", "rest"])))]
pub struct Args {
    /// (REMOVED) The SuperNode takes its ClientApp from the SuperLink; passing an app directory
    /// is an error.
    #[arg(value_name = "APP", hide = true)]
    pub app: Option<String>,

    /// Use a plaintext (non-TLS) connection to the SuperLink. TLS is the default; only use this
    /// flag if you understand the risks.
    #[arg(long, conflicts_with = "root_certificates")]
    pub insecure: bool,

    /// Use gRPC request/response as transport to the SuperLink (the default).
    #[arg(long)]
    pub grpc_rere: bool,

    /// Use the gRPC adapter transport (not supported yet by this implementation).
    #[arg(long)]
    pub grpc_adapter: bool,

    /// Use the REST transport (not supported yet by this implementation).
    #[arg(long)]
    pub rest: bool,

    /// Path of the PEM-encoded root certificate(s) to verify the SuperLink's TLS certificate
    /// with. Without it (and without --insecure) the system's trust store is used.
    #[arg(long, value_name = "ROOT_CERT")]
    pub root_certificates: Option<PathBuf>,

    /// Deprecated alias of --superlink.
    #[arg(long, value_name = "SERVER", default_value = DEFAULT_SUPERLINK)]
    pub server: String,

    /// Address of the SuperLink's Fleet API (gRPC-rere): IPv4, IPv6 or a domain name, with port.
    #[arg(long, value_name = "SUPERLINK", default_value = DEFAULT_SUPERLINK)]
    pub superlink: String,

    /// How many times to retry a request while the SuperLink is unreachable before giving up
    /// (0 = a single attempt). Unlimited by default.
    #[arg(long, value_name = "MAX_RETRIES", allow_negative_numbers = true)]
    pub max_retries: Option<u32>,

    /// How many seconds to keep retrying a request while the SuperLink is unreachable before
    /// giving up. Unlimited by default.
    #[arg(long, value_name = "MAX_WAIT_TIME", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub max_wait_time: Option<Duration>,

    /// Path of the SuperNode's private key (OpenSSH EC format), to authenticate with the
    /// SuperLink. Requires --auth-supernode-public-key.
    #[arg(
        long,
        value_name = "AUTH_SUPERNODE_PRIVATE_KEY",
        requires = "auth_supernode_public_key"
    )]
    pub auth_supernode_private_key: Option<PathBuf>,

    /// Path of the SuperNode's public key (OpenSSH format), to authenticate with the SuperLink.
    /// Requires --auth-supernode-private-key.
    #[arg(
        long,
        value_name = "AUTH_SUPERNODE_PUBLIC_KEY",
        requires = "auth_supernode_private_key"
    )]
    pub auth_supernode_public_key: Option<PathBuf>,

    /// Needs the --auth-supernode-* keys. `compatible`: Flower 1.14 tokens, for any 1.14
    /// SuperLink; a captured one can be replayed, also for another method. `hardened`: tokens
    /// bound to the method, this machine's clock and a counter, which cannot be replayed; only
    /// our SuperLink started with `--node-auth-mode hardened` accepts them, and its clock must
    /// agree with ours. (Not a Flower 1.14 flag.)
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        env = "FLWR_NODE_AUTH_MODE",
        default_value_t = NodeAuthMode::Compatible
    )]
    pub node_auth_mode: NodeAuthMode,

    /// Space-separated `key=value` pairs (values typed as in TOML) configuring this node, or the
    /// path of a .toml file. Example: --node-config 'key1="value1" partition-id=0
    /// num-partitions=100'
    #[arg(long, value_name = "NODE_CONFIG")]
    pub node_config: Option<String>,

    /// Directory where Flower Apps (FABs) are installed. Defaults to `$FLWR_HOME/` if set, else
    /// `$XDG_DATA_HOME/.flwr/` if set, else `$HOME/.flwr/`.
    #[arg(long, value_name = "FLWR_DIR")]
    pub flwr_dir: Option<PathBuf>,

    /// How ClientApps run: `subprocess` (the default) starts `flwr-clientapp` for every message;
    /// `process` waits for a separately started `flwr-clientapp` to connect to the ClientAppIo
    /// API. (This Rust SuperNode cannot run a Python ClientApp in its own process, so there is
    /// no in-process mode.)
    #[arg(long, value_enum, default_value_t = Isolation::Subprocess)]
    pub isolation: Isolation,

    /// With --isolation subprocess: `warm` (the default) keeps one `flwr-clientapp` running and
    /// hands it message after message of a run, so the interpreter starts once per run, not once
    /// per message; `per-message` starts a new `flwr-clientapp --token ...` for every message,
    /// as Flower 1.14 does. (Not a Flower 1.14 flag.)
    #[arg(
        long,
        value_enum,
        value_name = "LIFETIME",
        env = "FLWR_CLIENTAPP_LIFETIME",
        default_value_t = ClientAppLifetime::Warm
    )]
    pub clientapp_lifetime: ClientAppLifetime,

    /// Address the ClientAppIo API (gRPC, plaintext) listens on: IPv4, IPv6 or a domain name,
    /// with port.
    #[arg(long, value_name = "CLIENTAPPIO_API_ADDRESS", default_value = DEFAULT_CLIENTAPPIO)]
    pub clientappio_api_address: String,

    /// Largest gRPC message, in bytes, exchanged with the SuperLink and the ClientApp (the
    /// reference's fixed 512 MiB by default; at most 2 GiB − 1; the SuperLink needs the same
    /// limit). Passed on to launched ClientApps as `FLWR_GRPC_MAX_MESSAGE_LENGTH`, which the
    /// Rust ClientApp runner reads. (Not a Flower 1.14 flag.)
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = flwr_proto::MAX_MESSAGE_SIZE as u64,
        value_parser = clap::value_parser!(u64).range(
            flwr_proto::MIN_MESSAGE_SIZE as u64..=flwr_proto::MAX_MESSAGE_SIZE_CEILING as u64
        )
    )]
    pub grpc_max_message_length: u64,

    /// Serve Prometheus metrics at http://HOST:PORT/metrics (plaintext; bind it to loopback or
    /// a monitoring network). Off by default. The ClientAppIo port answers gRPC health checks.
    #[arg(
        long,
        value_name = "HOST:PORT",
        help_heading = "Operations (flower-rs)"
    )]
    pub metrics_address: Option<String>,

    /// Log lines as human-readable text or as one JSON object per line.
    #[arg(
        long,
        value_enum,
        default_value_t = LogFormat::Text,
        help_heading = "Operations (flower-rs)"
    )]
    pub log_format: LogFormat,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if seconds.is_nan() || seconds < 0.0 {
        return Err(format!("{text:?} must be zero or more seconds"));
    }
    Ok(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
}

/// The node-authentication key pair of `--auth-supernode-private-key` and
/// `--auth-supernode-public-key` (AUTH.md §1.2).
#[derive(Clone, Debug)]
pub struct AuthKeys {
    /// The node's private key.
    pub private: flwr_auth::PrivateKey,
    /// The node's public key, as sent in the `public-key` header.
    pub public: flwr_auth::PublicKey,
    /// `--node-auth-mode`.
    pub mode: NodeAuthMode,
}

/// A validated SuperNode configuration; nothing has been bound or dialled yet.
#[derive(Clone, Debug)]
pub struct Config {
    /// The SuperLink's Fleet API.
    pub superlink: Address,
    /// How the Fleet channel is secured.
    pub tls: Tls,
    /// Retry limits per Fleet call.
    pub retry: RetryPolicy,
    /// `--node-config`, parsed.
    pub node_config: HashMap<String, Scalar>,
    /// ClientApp isolation mode.
    pub isolation: Isolation,
    /// With subprocess isolation: one warm ClientApp process, or one per message.
    pub clientapp_lifetime: ClientAppLifetime,
    /// Where the ClientAppIo API listens.
    pub clientappio_address: Address,
    /// `--flwr-dir`, if given.
    pub flwr_dir: Option<PathBuf>,
    /// Node-authentication keys, if given.
    pub auth: Option<AuthKeys>,
    /// The `flwr-clientapp` program (name looked up on `PATH`, or a path).
    pub clientapp_program: PathBuf,
    /// `--grpc-max-message-length`: the largest message received or sent, in bytes.
    pub max_message_size: usize,
}

/// A command line that cannot be run. Every message names the flag at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The removed positional `app` argument was given.
    #[error("the APP argument was removed: the SuperNode runs the ClientApp delivered by the SuperLink; remove {0:?} from the command line")]
    AppArgument(String),
    /// `--grpc-adapter` or `--rest`.
    #[error("{0} is not supported yet by this SuperNode; use --grpc-rere (the default)")]
    UnsupportedTransport(&'static str),
    /// An address flag does not parse.
    #[error("{flag}: server address ({value}) cannot be parsed (expected host:port)")]
    Address {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
    },
    /// `--root-certificates` is not a readable file.
    #[error("--root-certificates: path {} does not point to a readable file", .0.display())]
    RootCertificates(PathBuf),
    /// A key file cannot be read.
    #[error("{flag}: cannot read {}: {source}", path.display())]
    KeyFile {
        /// The flag.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// A key file does not hold an elliptic-curve key in OpenSSH format.
    #[error("{flag}: unable to parse {} (node authentication requires an elliptic-curve key pair in OpenSSH format): {source}", path.display())]
    Key {
        /// The flag.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// Why parsing failed.
        #[source]
        source: flwr_auth::AuthError,
    },
    /// `--node-auth-mode hardened` without the node's key pair.
    #[error(
        "--node-auth-mode hardened (or FLWR_NODE_AUTH_MODE=hardened) needs node \
         authentication: provide '--auth-supernode-private-key' and \
         '--auth-supernode-public-key', or drop the mode"
    )]
    HardenedWithoutKeys,
    /// `--node-config` does not parse.
    #[error("--node-config: {0}")]
    NodeConfig(#[from] NodeConfigError),
}

impl Args {
    /// The operator-facing flags (`--metrics-address`), validated.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Address`] for an unparsable address.
    pub fn operations(&self) -> Result<Operations, ConfigError> {
        let metrics_address = self
            .metrics_address
            .as_deref()
            .map(|text| parse_address("--metrics-address", text))
            .transpose()?;
        Ok(Operations { metrics_address })
    }

    /// Validates the flags and reads the files they name.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first flag at fault.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        if let Some(app) = self.app {
            return Err(ConfigError::AppArgument(app));
        }
        if self.grpc_adapter {
            return Err(ConfigError::UnsupportedTransport("--grpc-adapter"));
        }
        if self.rest {
            return Err(ConfigError::UnsupportedTransport("--rest"));
        }
        // `--server` is used only when `--superlink` was left at its default (the reference).
        let superlink_text = if self.server != DEFAULT_SUPERLINK {
            tracing::warn!("--server is deprecated; use --superlink instead");
            if self.superlink == DEFAULT_SUPERLINK {
                self.server.clone()
            } else {
                tracing::warn!(
                    "Both --server and --superlink were given; ignoring --server, connecting to {}",
                    self.superlink
                );
                self.superlink.clone()
            }
        } else {
            self.superlink.clone()
        };
        let superlink = parse_address("--superlink", &superlink_text)?;
        let clientappio_address =
            parse_address("--clientappio-api-address", &self.clientappio_api_address)?;
        let tls = if self.insecure {
            Tls::Insecure
        } else if let Some(path) = &self.root_certificates {
            if !path.is_file() {
                return Err(ConfigError::RootCertificates(path.clone()));
            }
            let pem =
                std::fs::read(path).map_err(|_| ConfigError::RootCertificates(path.clone()))?;
            Tls::RootCertificates(pem)
        } else {
            Tls::SystemRoots
        };
        let auth = match (
            self.auth_supernode_private_key,
            self.auth_supernode_public_key,
        ) {
            (Some(private), Some(public)) => {
                let flag = "--auth-supernode-private-key";
                let bytes = read_key(flag, &private)?;
                let private = flwr_auth::PrivateKey::from_openssh(&bytes).map_err(|source| {
                    ConfigError::Key {
                        flag,
                        path: private,
                        source,
                    }
                })?;
                let flag = "--auth-supernode-public-key";
                let bytes = read_key(flag, &public)?;
                let public = flwr_auth::PublicKey::from_openssh(&bytes).map_err(|source| {
                    ConfigError::Key {
                        flag,
                        path: public,
                        source,
                    }
                })?;
                Some(AuthKeys {
                    private,
                    public,
                    mode: self.node_auth_mode,
                })
            }
            // clap's `requires` refuses a lone key flag before we get here.
            _ => None,
        };
        if auth.is_none() && self.node_auth_mode == NodeAuthMode::Hardened {
            return Err(ConfigError::HardenedWithoutKeys);
        }
        let node_config = match self.node_config.as_deref() {
            Some(text) => node_config::parse(text)?,
            None => HashMap::new(),
        };
        Ok(Config {
            superlink,
            tls,
            retry: RetryPolicy {
                max_retries: self.max_retries,
                max_wait: self.max_wait_time,
            },
            node_config,
            isolation: self.isolation,
            clientapp_lifetime: self.clientapp_lifetime,
            clientappio_address,
            flwr_dir: self.flwr_dir,
            auth,
            clientapp_program: PathBuf::from(crate::launcher::CLIENTAPP_PROGRAM),
            // The parser bounded it to 2 GiB − 1, which fits any usize of a 64-bit target.
            max_message_size: usize::try_from(self.grpc_max_message_length)
                .unwrap_or(flwr_proto::MAX_MESSAGE_SIZE_CEILING),
        })
    }
}

fn parse_address(flag: &'static str, value: &str) -> Result<Address, ConfigError> {
    value.parse().map_err(|_| ConfigError::Address {
        flag,
        value: value.to_owned(),
    })
}

fn read_key(flag: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::KeyFile {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli =
            Args::try_parse_from(std::iter::once("flower-supernode").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        cli.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.superlink.to_string(), "0.0.0.0:9092");
        assert_eq!(config.clientappio_address.to_string(), "0.0.0.0:9094");
        assert_eq!(config.tls, Tls::SystemRoots);
        assert_eq!(config.retry, RetryPolicy::default());
        assert_eq!(config.isolation, Isolation::Subprocess);
        assert_eq!(config.clientapp_lifetime, ClientAppLifetime::Warm);
        assert!(config.node_config.is_empty() && config.auth.is_none());
    }

    #[test]
    fn flags() {
        let config = parse(&[
            "--insecure",
            "--superlink",
            "[::1]:9999",
            "--max-retries",
            "2",
            "--max-wait-time",
            "4.5",
            "--node-config",
            "partition-id=0 num-partitions=2",
            "--isolation",
            "process",
            "--clientapp-lifetime",
            "per-message",
        ])
        .unwrap();
        assert_eq!(config.superlink.to_string(), "[::1]:9999");
        assert_eq!(config.tls, Tls::Insecure);
        assert_eq!(config.retry.max_retries, Some(2));
        assert_eq!(config.retry.max_wait, Some(Duration::from_millis(4500)));
        assert_eq!(config.node_config.len(), 2);
        assert_eq!(config.isolation, Isolation::Process);
        assert_eq!(config.clientapp_lifetime, ClientAppLifetime::PerMessage);
        // --server is honoured only while --superlink keeps its default.
        let config = parse(&["--insecure", "--server", "10.0.0.1:1"]).unwrap();
        assert_eq!(config.superlink.to_string(), "10.0.0.1:1");
        let config = parse(&[
            "--insecure",
            "--server",
            "10.0.0.1:1",
            "--superlink",
            "10.0.0.2:2",
        ])
        .unwrap();
        assert_eq!(config.superlink.to_string(), "10.0.0.2:2");
    }

    #[test]
    fn auth_keys_are_parsed() {
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/vectors/keys");
        let private = format!("{keys}/supernode_p384_sshkeygen");
        let public = format!("{keys}/supernode_p384_sshkeygen.pub");
        let config = parse(&[
            "--auth-supernode-private-key",
            &private,
            "--auth-supernode-public-key",
            &public,
        ])
        .unwrap();
        assert_eq!(config.auth.expect("keys").mode, NodeAuthMode::Compatible);
        let config = parse(&[
            "--auth-supernode-private-key",
            &private,
            "--auth-supernode-public-key",
            &public,
            "--node-auth-mode",
            "hardened",
        ])
        .unwrap();
        assert_eq!(config.auth.expect("keys").mode, NodeAuthMode::Hardened);
        // A public key where the private one belongs, and vice versa.
        let error = parse(&[
            "--auth-supernode-private-key",
            &public,
            "--auth-supernode-public-key",
            &public,
        ])
        .unwrap_err();
        assert!(
            error.starts_with("--auth-supernode-private-key: unable to parse"),
            "{error}"
        );
        let error = parse(&[
            "--auth-supernode-private-key",
            &private,
            "--auth-supernode-public-key",
            &private,
        ])
        .unwrap_err();
        assert!(
            error.starts_with("--auth-supernode-public-key: unable to parse"),
            "{error}"
        );
    }

    #[test]
    fn refusals_name_their_flag() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--insecure", "--root-certificates", "x.pem"],
                "--insecure",
            ),
            (&["--grpc-rere", "--rest"], "--rest"),
            (&["--rest"], "--rest"),
            (&["--grpc-adapter"], "--grpc-adapter"),
            (&["--superlink", "nope"], "--superlink"),
            (
                &["--clientappio-api-address", "x:0"],
                "--clientappio-api-address",
            ),
            (
                &["--root-certificates", "/nonexistent.pem"],
                "--root-certificates",
            ),
            (&["--max-retries", "-1"], "--max-retries"),
            (&["--max-wait-time", "soon"], "--max-wait-time"),
            (&["--max-wait-time", "-1"], "--max-wait-time"),
            (&["--isolation", "thread"], "--isolation"),
            (&["--clientapp-lifetime", "forever"], "--clientapp-lifetime"),
            (&["--node-config", "name=abc"], "--node-config"),
            (
                &["--auth-supernode-private-key", "k"],
                "--auth-supernode-public-key",
            ),
            (
                &[
                    "--auth-supernode-private-key",
                    "/no/k",
                    "--auth-supernode-public-key",
                    "/no/k.pub",
                ],
                "--auth-supernode-private-key",
            ),
            (&["some/app"], "APP"),
            (&["--node-auth-mode", "strict"], "--node-auth-mode"),
            (
                &["--node-auth-mode", "hardened"],
                "--node-auth-mode hardened",
            ),
            (
                &["--node-auth-mode", "hardened", "--insecure"],
                "--auth-supernode-private-key",
            ),
        ];
        for (args, flag) in cases {
            let error = parse(args).expect_err(&format!("{args:?} should fail"));
            assert!(
                error.contains(flag),
                "{args:?}: {error:?} does not name {flag}"
            );
        }
    }
}
