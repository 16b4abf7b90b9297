//! The `flower-superlink` command line ([`Args`], every flag of Flower 1.14.0) and the validated
//! [`Config`] it turns into before anything is bound or started.
//!
//! Validation follows CLI.md §1.2 in order: addresses, TLS files, executor, then what this
//! implementation does not support yet, the database and the node-auth flags. Each failure is
//! one [`ConfigError`] whose message names the flag (and file), keeping the reference's wording
//! where it has one.

use std::fs;
use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};
use flwr_core::{config, Address, AddressError};
use flwr_proto::scalar;
use flwr_runtime::home::flwr_home;
use flwr_runtime::listener::Limits;
pub use flwr_runtime::logging::LogFormat;

/// Default `--database`: one in-process, in-memory LinkState.
pub const IN_MEMORY_DATABASE: &str = ":flwr-in-memory-state:";
/// The executor the deployment runtime uses (the only one supported here).
pub const DEPLOYMENT_EXECUTOR: &str = "flwr.superexec.deployment:executor";
/// The simulation executor of the reference (not supported here yet).
pub const SIMULATION_EXECUTOR: &str = "flwr.superexec.simulation:executor";

/// Start a Flower SuperLink
#[derive(Debug, Clone, Parser)]
#[command(name = "flower-superlink", version)]
pub struct Args {
    /// Run the server without HTTPS, regardless of whether certificate paths are provided. By
    /// default, the server runs with HTTPS enabled. Use this flag only if you understand the
    /// risks.
    #[arg(long)]
    pub insecure: bool,

    /// The path containing installed Flower Apps (not used by the SuperLink; a warning is
    /// logged).
    #[arg(long, value_name = "FLWR_DIR")]
    pub flwr_dir: Option<PathBuf>,

    /// Fleet API server SSL certificate file (as a path str) to create a secure connection.
    #[arg(long, value_name = "SSL_CERTFILE")]
    pub ssl_certfile: Option<PathBuf>,

    /// Fleet API server SSL private key file (as a path str) to create a secure connection.
    #[arg(long, value_name = "SSL_KEYFILE")]
    pub ssl_keyfile: Option<PathBuf>,

    /// Fleet API server SSL CA certificate file (as a path str) to create a secure connection.
    #[arg(long, value_name = "SSL_CA_CERTFILE")]
    pub ssl_ca_certfile: Option<PathBuf>,

    /// Isolation mode when running a `ServerApp`. Use `subprocess` to configure SuperLink to run
    /// a `ServerApp` in a subprocess. Use `process` to indicate that a separate independent
    /// process gets created outside of SuperLink.
    #[arg(long, value_enum, default_value_t = Isolation::Subprocess)]
    pub isolation: Isolation,

    /// A string representing the path to the database file that will be opened. Note that
    /// passing ':memory:' will open a connection to a database that is in RAM, instead of on
    /// disk. If nothing is provided, Flower will just create a state in memory. A
    /// `postgresql://user:password@host:port/dbname` URL keeps the state in PostgreSQL, which
    /// several SuperLink replicas may share (the password may instead come from PGPASSWORD).
    #[arg(long, default_value = IN_MEMORY_DATABASE)]
    pub database: String,

    /// The base directory to store the objects for the Flower File System [default:
    /// superlink/ffs in the Flower home directory, which is $FLWR_HOME, else
    /// $XDG_DATA_HOME/.flwr, else $HOME/.flwr].
    #[arg(long, value_name = "STORAGE_DIR")]
    pub storage_dir: Option<PathBuf>,

    /// A CSV file (as a path str) containing a list of known public keys to enable
    /// authentication.
    #[arg(long, value_name = "AUTH_LIST_PUBLIC_KEYS")]
    pub auth_list_public_keys: Option<PathBuf>,

    /// The SuperLink's private key (as a path str) to enable authentication.
    #[arg(long, value_name = "AUTH_SUPERLINK_PRIVATE_KEY")]
    pub auth_superlink_private_key: Option<PathBuf>,

    /// The SuperLink's public key (as a path str) to enable authentication.
    #[arg(long, value_name = "AUTH_SUPERLINK_PUBLIC_KEY")]
    pub auth_superlink_public_key: Option<PathBuf>,

    /// Needs node authentication (the three --auth-* flags). `compatible`: Flower 1.14 tokens,
    /// which Python SuperNodes send; a captured one can be replayed, also for another method.
    /// `hardened`: only tokens bound to the method, the SuperNode's clock and a counter, which
    /// refuses replays; only for our SuperNodes started with `--node-auth-mode hardened`.
    /// CreateNode is tokenless in both modes.
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        env = "FLWR_NODE_AUTH_MODE",
        default_value_t = NodeAuthMode::Compatible,
        help_heading = "Node authentication (flower-rs)"
    )]
    pub node_auth_mode: NodeAuthMode,

    /// With `--node-auth-mode hardened`: how many seconds a request's time may differ from the
    /// SuperLink's clock, 1 to 3600 [default: 30].
    #[arg(
        long,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=MAX_NODE_AUTH_CLOCK_SKEW),
        help_heading = "Node authentication (flower-rs)"
    )]
    pub node_auth_max_clock_skew: Option<u64>,

    /// ServerAppIo API (gRPC) server address (IPv4, IPv6, or a domain name). Always plaintext.
    #[arg(long, default_value = "0.0.0.0:9091")]
    pub serverappio_api_address: String,

    /// Start a gRPC-rere or REST (experimental) Fleet API server.
    #[arg(long, value_enum, default_value_t = FleetApiType::GrpcRere)]
    pub fleet_api_type: FleetApiType,

    /// Fleet API server address (IPv4, IPv6, or a domain name) [default: 0.0.0.0:9092 for
    /// grpc-rere and grpc-adapter, 0.0.0.0:9095 for rest].
    #[arg(long, value_name = "FLEET_API_ADDRESS")]
    pub fleet_api_address: Option<String>,

    /// Set the number of concurrent workers for the Fleet API server (only 1 is supported; other
    /// values log a warning).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub fleet_api_num_workers: i64,

    /// Exec API server address (IPv4, IPv6, or a domain name).
    #[arg(long, default_value = "0.0.0.0:9093")]
    pub exec_api_address: String,

    /// For example: `deployment:exec` or `project.package.module:wrapper.exec`. Only the
    /// deployment executor is supported.
    #[arg(long, default_value = DEPLOYMENT_EXECUTOR)]
    pub executor: String,

    /// The directory for the executor.
    #[arg(long, default_value = ".")]
    pub executor_dir: PathBuf,

    /// Key-value pairs for the executor config, separated by spaces. For example:
    /// `--executor-config 'verbose=true root-certificates="certificates/superlink-ca.crt"'`
    #[arg(long, value_name = "EXECUTOR_CONFIG")]
    pub executor_config: Option<String>,

    /// SimulationIo API (gRPC) server address (IPv4, IPv6, or a domain name) (simulation
    /// executor only).
    #[arg(long, default_value = "0.0.0.0:9096")]
    pub simulationio_api_address: String,

    /// Serve Prometheus metrics at http://HOST:PORT/metrics (plaintext; bind it to loopback or
    /// a monitoring network). Off by default.
    #[arg(
        long,
        value_name = "HOST:PORT",
        help_heading = "Operations (flower-rs)"
    )]
    pub metrics_address: Option<String>,

    /// Serve gRPC health checking (`grpc.health.v1.Health`) alone on a plaintext port, for
    /// probes that cannot speak TLS. Every API port answers health checks too.
    #[arg(
        long,
        value_name = "HOST:PORT",
        help_heading = "Operations (flower-rs)"
    )]
    pub health_server_address: Option<String>,

    /// Log lines as human-readable text or as one JSON object per line.
    #[arg(
        long,
        value_enum,
        default_value_t = LogFormat::Text,
        help_heading = "Operations (flower-rs)"
    )]
    pub log_format: LogFormat,

    /// Most connections held at once over all APIs; past it new connections are closed with a
    /// log line [default: the open-file limit, raised to its hard limit at start, less 128].
    #[arg(long, value_name = "N", help_heading = "Connections (flower-rs)")]
    pub max_connections: Option<usize>,

    /// Seconds a client has to complete its TLS handshake (or, without TLS, to send its first
    /// bytes) before the connection is dropped.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::DEFAULT.handshake_timeout.as_secs_f64(), help_heading = "Connections (flower-rs)")]
    pub handshake_timeout: f64,

    /// Seconds a client may stay completely silent (not even answering HTTP/2 keep-alive pings,
    /// sent after 210 s) before its connection is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::DEFAULT.idle_timeout.as_secs_f64(), help_heading = "Connections (flower-rs)")]
    pub idle_timeout: f64,

    /// Hold the PullTaskIns / PullTaskRes of clients that do not ask for it (the Python 1.14
    /// SuperNode and `flwr-serverapp`): an empty pull waits up to 2.5 s (at most half the
    /// client's own deadline) for a task or a result instead of being answered at once [the
    /// default]. Our SuperNodes and SDK ask by themselves.
    #[arg(
        long,
        overrides_with = "no_hold_pulls",
        help_heading = "Rounds (flower-rs)"
    )]
    pub hold_pulls: bool,

    /// Answer the pulls of clients that do not ask for a hold at once, as the reference does.
    #[arg(
        long,
        overrides_with = "hold_pulls",
        help_heading = "Rounds (flower-rs)"
    )]
    pub no_hold_pulls: bool,

    /// Largest gRPC message, in bytes, the SuperLink receives or sends on any API (the
    /// reference's fixed 512 MiB by default; at most 2 GiB − 1). Raise it for models above
    /// 512 MiB; every SuperNode and app of the federation needs the same limit.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = flwr_proto::MAX_MESSAGE_SIZE as u64,
        value_parser = clap::value_parser!(u64).range(
            flwr_proto::MIN_MESSAGE_SIZE as u64..=flwr_proto::MAX_MESSAGE_SIZE_CEILING as u64
        ),
        help_heading = "Large models (flower-rs)"
    )]
    pub grpc_max_message_length: u64,
}

/// How ServerApps are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Isolation {
    /// An external `flwr-serverapp` connects to ServerAppIo; the SuperLink spawns nothing.
    Process,
    /// The SuperLink spawns `flwr-serverapp` for each pending run.
    Subprocess,
}

/// Which node-authentication tokens the Fleet API accepts (`--node-auth-mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum NodeAuthMode {
    /// Flower 1.14's tokens, byte-compatible with Python SuperNodes.
    #[default]
    Compatible,
    /// Tokens bound to the method, a time and a counter, with replays refused; our SuperNodes
    /// with `--node-auth-mode hardened` only.
    Hardened,
}

/// `--node-auth-max-clock-skew` when not given, in seconds.
pub const DEFAULT_NODE_AUTH_CLOCK_SKEW: u64 = 30;
/// The largest `--node-auth-max-clock-skew`: an hour, beyond which the time check would bound
/// replays to other replicas so loosely that it would mostly mask broken clocks.
pub const MAX_NODE_AUTH_CLOCK_SKEW: u64 = 3600;

/// The Fleet API transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FleetApiType {
    /// Fleet tunnelled through `flwr.proto.GrpcAdapter` (not supported yet).
    GrpcAdapter,
    /// gRPC request/response, `flwr.proto.Fleet`.
    GrpcRere,
    /// HTTP with protobuf bodies (not supported yet).
    Rest,
}

/// Where the LinkState lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// The default in-memory state (`:flwr-in-memory-state:`).
    InMemory,
    /// A SQLite database file, created if missing.
    Sqlite(PathBuf),
    /// SQLite's `:memory:` database (one shared connection, lost on exit).
    SqliteMemory,
    /// A PostgreSQL database (`postgresql://user:password@host:port/dbname`), which several
    /// SuperLink replicas may share.
    Postgres(DatabaseUrl),
}

/// A database URL whose password never appears in `Debug` or `Display` (it is shown as `***`),
/// so that logs and error lines can name the database.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL as given, password included: only for opening the connection.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_password(&self.0))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// `scheme://user:secret@host/...` → `scheme://user:***@host/...`; other text unchanged.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user info ends at the last `@` before the path (a password may contain `@`... but
    // not `/`, which must be percent-encoded there).
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// PEM contents for the Fleet and Exec TLS servers, read at validation time.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--ssl-ca-certfile` contents (loaded like the reference, but client certificates are not
    /// requested).
    pub ca_cert: Vec<u8>,
    /// `--ssl-certfile` contents.
    pub cert: Vec<u8>,
    /// `--ssl-keyfile` contents.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for TlsFiles {
    // The private key never goes to logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca_cert", &format_args!("{} bytes", self.ca_cert.len()))
            .field("cert", &format_args!("{} bytes", self.cert.len()))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The three node-authentication files (AUTH.md §1.1); their contents are checked when node
/// authentication is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAuthFiles {
    /// `--auth-list-public-keys`: CSV of allowed SuperNode public keys.
    pub public_keys_csv: PathBuf,
    /// `--auth-superlink-private-key`.
    pub superlink_private_key: PathBuf,
    /// `--auth-superlink-public-key`.
    pub superlink_public_key: PathBuf,
    /// `--node-auth-mode`.
    pub mode: NodeAuthMode,
    /// `--node-auth-max-clock-skew` (only used in hardened mode).
    pub max_clock_skew: std::time::Duration,
}

/// A validated SuperLink configuration: everything [`crate::serve`] needs, nothing bound yet.
#[derive(Debug, Clone)]
pub struct Config {
    /// ServerAppIo bind address (plaintext).
    pub serverappio_address: Address,
    /// Fleet API bind address.
    pub fleet_address: Address,
    /// Exec API bind address.
    pub exec_address: Address,
    /// `--metrics-address`: where `/metrics` is served, if anywhere.
    pub metrics_address: Option<Address>,
    /// `--health-server-address`: the plaintext health-only port, if any.
    pub health_address: Option<Address>,
    /// TLS for Fleet and Exec; `None` with `--insecure`.
    pub tls: Option<TlsFiles>,
    /// How ServerApps are run.
    pub isolation: Isolation,
    /// The LinkState backend.
    pub database: Database,
    /// Directory of the FAB store.
    pub storage_dir: PathBuf,
    /// Node authentication, when all three flags were given.
    pub node_auth: Option<NodeAuthFiles>,
    /// Warnings the reference logs for accepted-but-ignored flags; logged at startup.
    pub warnings: Vec<String>,
    /// `--max-connections`; `None` derives the cap from the open-file limit.
    pub max_connections: Option<usize>,
    /// `--handshake-timeout` and `--idle-timeout`.
    pub connection_limits: Limits,
    /// `--hold-pulls` / `--no-hold-pulls`: how long pulls that do not ask for a hold are held.
    pub unasked_hold: Option<std::time::Duration>,
    /// `--grpc-max-message-length`: the largest message received or sent, in bytes.
    pub max_message_size: usize,
}

/// How long `--hold-pulls` holds the pulls of 1.14 clients: they sleep 3 s after an empty pull
/// and set no deadline, so a hold below that hands them a task or result as soon as it exists
/// and is never slower than their own polling.
pub const UNASKED_HOLD: std::time::Duration = std::time::Duration::from_millis(2_500);

/// A flag combination or file that cannot be used. Every message names the flag.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An address flag does not parse.
    #[error("--{flag}: {source}")]
    Address {
        /// The flag without dashes.
        flag: &'static str,
        /// The reference's message, quoting the address.
        source: AddressError,
    },
    /// Node auth flags partly given (AUTH.md §1.1 step 2).
    #[error(
        "Authentication requires providing file paths for '--auth-list-public-keys', \
         '--auth-superlink-private-key' and '--auth-superlink-public-key'. Provide all three to \
         enable authentication."
    )]
    AuthIncomplete,
    /// Node auth without TLS (AUTH.md §1.1 step 3).
    #[error(
        "Authentication requires secure connections. Please provide certificate paths to \
         `--ssl-certfile`, `--ssl-keyfile`, and `--ssl-ca-certfile` and try again."
    )]
    AuthRequiresTls,
    /// `--node-auth-mode hardened` without node authentication.
    #[error(
        "--node-auth-mode hardened (or FLWR_NODE_AUTH_MODE=hardened) needs node authentication: \
         provide '--auth-list-public-keys', '--auth-superlink-private-key' and \
         '--auth-superlink-public-key', or drop the mode"
    )]
    HardenedWithoutAuth,
    /// `--node-auth-max-clock-skew` without `--node-auth-mode hardened`.
    #[error(
        "--node-auth-max-clock-skew only applies with --node-auth-mode hardened (and node \
         authentication)"
    )]
    ClockSkewWithoutHardened,
    /// The CSV of known public keys does not exist (AUTH.md §1.1 step 4).
    #[error(
        "--auth-list-public-keys: The provided path to the known public keys CSV file does not \
         exist: {}. Please provide the CSV file path containing known public keys to \
         '--auth-list-public-keys'.", .0.display()
    )]
    AuthCsvMissing(PathBuf),
    /// `--executor-config` does not parse.
    #[error("--executor-config: {0}")]
    ExecutorConfig(String),
    /// `--executor` names something other than the deployment executor.
    #[error("--executor: cannot load executor `{0}`: only `{DEPLOYMENT_EXECUTOR}` is available")]
    ExecutorUnknown(String),
    /// A file flag points to something that is not a readable file.
    #[error("Path argument `--{flag}` does not point to a file: {}", .path.display())]
    NotAFile {
        /// The flag without dashes.
        flag: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("--{flag}: {}: {reason}", .path.display())]
    Pem {
        /// The flag without dashes.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No certificates and no `--insecure`.
    #[error(
        "Certificates are required unless running in insecure mode. Please provide certificate \
         paths to `--ssl-certfile`, `--ssl-keyfile`, and `--ssl-ca-certfile` or run the server \
         in insecure mode using '--insecure' if you understand the risks."
    )]
    TlsRequired,
    /// Only some of the three TLS files given.
    #[error(
        "You need to provide valid file paths to `--ssl-certfile`, `--ssl-keyfile`, and \
         `--ssl-ca-certfile` to create a secure connection in Fleet API server (gRPC-rere)."
    )]
    TlsIncomplete,
    /// A duration flag that is not a positive, finite number of seconds.
    #[error("--{flag} {value}: expected a positive number of seconds")]
    Seconds {
        /// The flag without dashes.
        flag: &'static str,
        /// The refused value.
        value: f64,
    },
    /// A flag value the reference accepts but this implementation does not support yet.
    #[error("{flag} {value}: not supported yet")]
    Unsupported {
        /// The flag with dashes.
        flag: &'static str,
        /// The refused value.
        value: String,
    },
}

impl Config {
    /// Validates parsed flags (CLI.md §1.2 order). Reads the TLS files, touches nothing else.
    ///
    /// # Errors
    ///
    /// The first problem found, as a [`ConfigError`].
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let mut warnings = Vec::new();
        if args.flwr_dir.is_some() {
            warnings.push(
                "The `--flwr-dir` option is currently not in use and will be ignored.".to_owned(),
            );
        }

        // 1. addresses
        let serverappio_address =
            address("serverappio-api-address", &args.serverappio_api_address)?;
        let exec_address = address("exec-api-address", &args.exec_api_address)?;
        address("simulationio-api-address", &args.simulationio_api_address)?;
        let fleet_default = match args.fleet_api_type {
            FleetApiType::GrpcAdapter | FleetApiType::GrpcRere => "0.0.0.0:9092",
            FleetApiType::Rest => "0.0.0.0:9095",
        };
        let fleet_address = address(
            "fleet-api-address",
            args.fleet_api_address.as_deref().unwrap_or(fleet_default),
        )?;
        let metrics_address = args
            .metrics_address
            .as_deref()
            .map(|text| address("metrics-address", text))
            .transpose()?;
        let health_address = args
            .health_server_address
            .as_deref()
            .map(|text| address("health-server-address", text))
            .transpose()?;

        // 2. TLS
        let tls = tls_files(&args, &mut warnings)?;

        // 3. executor
        if args.executor == SIMULATION_EXECUTOR {
            return Err(ConfigError::Unsupported {
                flag: "--executor",
                value: args.executor,
            });
        }
        if args.executor != DEPLOYMENT_EXECUTOR {
            return Err(ConfigError::ExecutorUnknown(args.executor));
        }
        if let Some(text) = &args.executor_config {
            check_executor_config(text)?;
        }

        // 4. what is not implemented (yet)
        match args.fleet_api_type {
            FleetApiType::GrpcRere => {}
            FleetApiType::GrpcAdapter => {
                return Err(ConfigError::Unsupported {
                    flag: "--fleet-api-type",
                    value: "grpc-adapter".to_owned(),
                })
            }
            FleetApiType::Rest => {
                return Err(ConfigError::Unsupported {
                    flag: "--fleet-api-type",
                    value: "rest".to_owned(),
                })
            }
        }
        if args.fleet_api_num_workers != 1 {
            warnings.push(format!(
                "The Fleet API currently supports only 1 worker. You have specified {} workers. \
                 Support for multiple workers will be added in future releases. Proceeding with \
                 a single worker.",
                args.fleet_api_num_workers
            ));
        }

        // 5. storage
        let database = match args.database.as_str() {
            IN_MEMORY_DATABASE => Database::InMemory,
            ":memory:" => Database::SqliteMemory,
            url if flwr_state::postgres::is_postgres_url(url) => {
                Database::Postgres(DatabaseUrl(url.to_owned()))
            }
            path => Database::Sqlite(PathBuf::from(path)),
        };
        // 6. node auth (AUTH.md §1.1 steps 1-4; key contents are checked when auth is set up)
        let node_auth = node_auth_files(&args, tls.is_some())?;

        let storage_dir = match args.storage_dir {
            Some(dir) => dir,
            None => flwr_home(None).join("superlink").join("ffs"),
        };

        if args.max_connections == Some(0) {
            return Err(ConfigError::Unsupported {
                flag: "--max-connections",
                value: "0".to_owned(),
            });
        }
        let connection_limits = Limits {
            handshake_timeout: seconds("handshake-timeout", args.handshake_timeout)?,
            idle_timeout: seconds("idle-timeout", args.idle_timeout)?,
        };

        Ok(Self {
            serverappio_address,
            fleet_address,
            exec_address,
            metrics_address,
            health_address,
            tls,
            isolation: args.isolation,
            database,
            storage_dir,
            node_auth,
            warnings,
            max_connections: args.max_connections,
            connection_limits,
            unasked_hold: (!args.no_hold_pulls).then_some(UNASKED_HOLD),
            // The parser bounded it to 2 GiB − 1, which fits any usize of a 64-bit target.
            max_message_size: usize::try_from(args.grpc_max_message_length)
                .unwrap_or(flwr_proto::MAX_MESSAGE_SIZE_CEILING),
        })
    }
}

/// A positive, finite duration flag (at most a day, which is longer than any bound needs).
fn seconds(flag: &'static str, value: f64) -> Result<std::time::Duration, ConfigError> {
    if !(value > 0.0 && value <= 86_400.0) {
        return Err(ConfigError::Seconds { flag, value });
    }
    Ok(std::time::Duration::from_secs_f64(value))
}

fn address(flag: &'static str, text: &str) -> Result<Address, ConfigError> {
    text.parse()
        .map_err(|source| ConfigError::Address { flag, source })
}

/// CLI.md §1.2 step 2 for `grpc-rere`: all three files or none; each must be a file (checked
/// CA, cert, key) and hold PEM of the right kind.
fn tls_files(args: &Args, warnings: &mut Vec<String>) -> Result<Option<TlsFiles>, ConfigError> {
    if args.insecure {
        warnings.push("Option `--insecure` was set. Starting insecure HTTP server.".to_owned());
        return Ok(None);
    }
    let (Some(ca), Some(cert), Some(key)) = (
        args.ssl_ca_certfile.as_deref(),
        args.ssl_certfile.as_deref(),
        args.ssl_keyfile.as_deref(),
    ) else {
        if args.ssl_ca_certfile.is_some()
            || args.ssl_certfile.is_some()
            || args.ssl_keyfile.is_some()
        {
            return Err(ConfigError::TlsIncomplete);
        }
        return Err(ConfigError::TlsRequired);
    };
    for (flag, path) in [
        ("ssl-ca-certfile", ca),
        ("ssl-certfile", cert),
        ("ssl-keyfile", key),
    ] {
        if !path.is_file() {
            return Err(ConfigError::NotAFile {
                flag,
                path: path.to_owned(),
            });
        }
    }
    let files = TlsFiles {
        ca_cert: read_certificates("ssl-ca-certfile", ca)?,
        cert: read_certificates("ssl-certfile", cert)?,
        key: read_private_key("ssl-keyfile", key)?,
    };
    Ok(Some(files))
}

fn read_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    fs::read(path).map_err(|e| ConfigError::Pem {
        flag,
        path: path.to_owned(),
        reason: format!("cannot be read: {e}"),
    })
}

/// Reads a PEM file that must hold at least one certificate.
fn read_certificates(flag: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = read_file(flag, path)?;
    let pem_error = |reason: String| ConfigError::Pem {
        flag,
        path: path.to_owned(),
        reason,
    };
    let certificates = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(format!("malformed PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(pem_error("no PEM certificate found".to_owned()));
    }
    Ok(pem)
}

/// Reads a PEM file that must hold a private key (PKCS#1, PKCS#8 or SEC1, as openssl writes).
fn read_private_key(flag: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = read_file(flag, path)?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(_)) => Ok(pem),
        Ok(None) => Err(ConfigError::Pem {
            flag,
            path: path.to_owned(),
            reason: "no PEM private key found".to_owned(),
        }),
        Err(e) => Err(ConfigError::Pem {
            flag,
            path: path.to_owned(),
            reason: format!("malformed PEM: {e}"),
        }),
    }
}

fn node_auth_files(args: &Args, tls: bool) -> Result<Option<NodeAuthFiles>, ConfigError> {
    let (csv, private, public) = (
        args.auth_list_public_keys.as_ref(),
        args.auth_superlink_private_key.as_ref(),
        args.auth_superlink_public_key.as_ref(),
    );
    let hardened = args.node_auth_mode == NodeAuthMode::Hardened;
    if args.node_auth_max_clock_skew.is_some() && !hardened {
        return Err(ConfigError::ClockSkewWithoutHardened);
    }
    if csv.is_none() && private.is_none() && public.is_none() {
        if hardened {
            return Err(ConfigError::HardenedWithoutAuth);
        }
        return Ok(None);
    }
    let (Some(csv), Some(private), Some(public)) = (csv, private, public) else {
        return Err(ConfigError::AuthIncomplete);
    };
    if !tls {
        return Err(ConfigError::AuthRequiresTls);
    }
    if !csv.exists() {
        return Err(ConfigError::AuthCsvMissing(csv.clone()));
    }
    Ok(Some(NodeAuthFiles {
        public_keys_csv: csv.clone(),
        superlink_private_key: private.clone(),
        superlink_public_key: public.clone(),
        mode: args.node_auth_mode,
        max_clock_skew: std::time::Duration::from_secs(
            args.node_auth_max_clock_skew
                .unwrap_or(DEFAULT_NODE_AUTH_CLOCK_SKEW),
        ),
    }))
}

/// Parses `--executor-config` like the reference's `parse_config_args` (BEHAVIOR.md §11.1),
/// flattening included. The deployment executor's keys have no effect in 1.14.0, but
/// `root-certificates` is read at startup, so a missing file is refused here.
fn check_executor_config(text: &str) -> Result<(), ConfigError> {
    let table: toml::Table = if text.ends_with(".toml") {
        let content = fs::read_to_string(text)
            .map_err(|e| ConfigError::ExecutorConfig(format!("{text}: {e}")))?;
        content
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::ExecutorConfig(format!("{text}: {e}")))?
    } else {
        config::pairs_to_toml(text).map_err(|error| match error {
            config::ConfigError::Toml(message) => ConfigError::ExecutorConfig(message),
            other => ConfigError::ExecutorConfig(other.to_string()),
        })?
    };
    let flat = config::flatten(&table).map_err(|e| ConfigError::ExecutorConfig(e.to_string()))?;
    if let Some(value) = flat.get("root-certificates") {
        let Some(scalar::Scalar::String(path)) = &value.scalar else {
            return Err(ConfigError::ExecutorConfig(
                "The `root-certificates` value should be of type `str`.".to_owned(),
            ));
        };
        if !path.is_empty() && !Path::new(path).is_file() {
            return Err(ConfigError::ExecutorConfig(format!(
                "root-certificates: {path} does not point to a file"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["flower-superlink"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).expect("flags parse")
    }

    #[test]
    fn defaults_match_the_reference() {
        let args = args(&[]);
        assert!(!args.insecure);
        assert_eq!(args.isolation, Isolation::Subprocess);
        assert_eq!(args.database, ":flwr-in-memory-state:");
        assert_eq!(args.serverappio_api_address, "0.0.0.0:9091");
        assert_eq!(args.fleet_api_type, FleetApiType::GrpcRere);
        assert_eq!(args.fleet_api_address, None);
        assert_eq!(args.fleet_api_num_workers, 1);
        assert_eq!(args.exec_api_address, "0.0.0.0:9093");
        assert_eq!(args.executor, "flwr.superexec.deployment:executor");
        assert_eq!(args.executor_dir, PathBuf::from("."));
        assert_eq!(args.simulationio_api_address, "0.0.0.0:9096");
    }

    #[test]
    fn unasked_pulls_are_held_unless_no_hold_pulls_comes_last() {
        let hold = |extra: &[&str]| {
            let mut flags = vec!["--insecure"];
            flags.extend_from_slice(extra);
            Config::from_args(args(&flags)).expect("valid").unasked_hold
        };
        assert_eq!(hold(&[]), Some(UNASKED_HOLD));
        assert_eq!(hold(&["--hold-pulls"]), Some(UNASKED_HOLD));
        assert_eq!(hold(&["--no-hold-pulls"]), None);
        assert_eq!(
            hold(&["--no-hold-pulls", "--hold-pulls"]),
            Some(UNASKED_HOLD)
        );
        assert_eq!(hold(&["--hold-pulls", "--no-hold-pulls"]), None);
    }

    #[test]
    fn the_message_size_limit_defaults_to_the_references_and_is_bounded() {
        let limit = |extra: &[&str]| {
            let mut argv = vec!["flower-superlink", "--insecure"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv)
                .map(|args| Config::from_args(args).expect("valid").max_message_size)
        };
        assert_eq!(limit(&[]).ok(), Some(flwr_proto::MAX_MESSAGE_SIZE));
        let raised = ["--grpc-max-message-length", "2147483647"];
        assert_eq!(limit(&raised).ok(), Some((1 << 31) - 1));
        for refused in ["2147483648", "1024", "-1", "lots"] {
            let flag = format!("--grpc-max-message-length={refused}");
            let error = limit(&[flag.as_str()]).expect_err(refused);
            assert!(
                error.to_string().contains("--grpc-max-message-length"),
                "{error}"
            );
        }
    }

    #[test]
    fn insecure_defaults_validate() {
        let config = Config::from_args(args(&["--insecure"])).expect("valid");
        assert_eq!(config.fleet_address.to_string(), "0.0.0.0:9092");
        assert_eq!(config.serverappio_address.to_string(), "0.0.0.0:9091");
        assert_eq!(config.exec_address.to_string(), "0.0.0.0:9093");
        assert_eq!(config.tls, None);
        assert_eq!(config.database, Database::InMemory);
        assert!(config.storage_dir.ends_with("superlink/ffs"));
        assert_eq!(
            config.warnings,
            ["Option `--insecure` was set. Starting insecure HTTP server."]
        );
    }

    #[test]
    fn addresses_are_checked_in_reference_order() {
        let error = Config::from_args(args(&[
            "--insecure",
            "--exec-api-address",
            "bad",
            "--serverappio-api-address",
            "alsobad",
        ]))
        .expect_err("bad address");
        assert_eq!(
            error.to_string(),
            "--serverappio-api-address: Address (alsobad) cannot be parsed (expected: URL or \
             IPv4 or IPv6)."
        );
        let error = Config::from_args(args(&["--insecure", "--fleet-api-address", "x:0"]))
            .expect_err("bad address");
        assert!(error
            .to_string()
            .starts_with("--fleet-api-address: Address (x:0)"));
    }

    #[test]
    fn tls_is_required_unless_insecure() {
        let error = Config::from_args(args(&[])).expect_err("no TLS");
        assert!(matches!(error, ConfigError::TlsRequired));
        let error = Config::from_args(args(&["--ssl-certfile", "a.pem"])).expect_err("partial");
        assert!(matches!(error, ConfigError::TlsIncomplete));
    }

    #[test]
    fn insecure_ignores_tls_flags() {
        let config = Config::from_args(args(&["--insecure", "--ssl-certfile", "/nonexistent"]))
            .expect("insecure wins");
        assert_eq!(config.tls, None);
    }

    #[test]
    fn tls_files_are_checked_ca_cert_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let missing = missing.to_str().expect("utf-8");
        let error = Config::from_args(args(&[
            "--ssl-certfile",
            missing,
            "--ssl-keyfile",
            missing,
            "--ssl-ca-certfile",
            missing,
        ]))
        .expect_err("missing files");
        assert_eq!(
            error.to_string(),
            format!("Path argument `--ssl-ca-certfile` does not point to a file: {missing}")
        );
    }

    #[test]
    fn unsupported_modes_are_refused_in_one_line() {
        for (flags, expected) in [
            (
                &["--insecure", "--fleet-api-type", "rest"][..],
                "--fleet-api-type rest: not supported yet",
            ),
            (
                &["--insecure", "--fleet-api-type", "grpc-adapter"][..],
                "--fleet-api-type grpc-adapter: not supported yet",
            ),
            (
                &[
                    "--insecure",
                    "--executor",
                    "flwr.superexec.simulation:executor",
                ][..],
                "--executor flwr.superexec.simulation:executor: not supported yet",
            ),
        ] {
            let error = Config::from_args(args(flags)).expect_err("unsupported");
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn database_values() {
        let database = |value: &str| {
            Config::from_args(args(&["--insecure", "--database", value]))
                .expect("valid")
                .database
        };
        assert_eq!(database(":flwr-in-memory-state:"), Database::InMemory);
        assert_eq!(database(":memory:"), Database::SqliteMemory);
        assert_eq!(
            database("state/link.db"),
            Database::Sqlite(PathBuf::from("state/link.db"))
        );
        let Database::Postgres(url) = database("postgresql://flwr:s3cr@t@db.example:5432/link")
        else {
            panic!("a postgresql:// URL is a PostgreSQL database");
        };
        assert_eq!(
            url.expose(),
            "postgresql://flwr:s3cr@t@db.example:5432/link"
        );
        assert_eq!(
            url.to_string(),
            "postgresql://flwr:***@db.example:5432/link"
        );
        assert!(!format!("{url:?}").contains("s3cr"));
        let Database::Postgres(url) = database("postgres://flwr@localhost/link") else {
            panic!("postgres:// too");
        };
        assert_eq!(url.to_string(), "postgres://flwr@localhost/link");
    }

    #[test]
    fn node_auth_flags_all_or_none_and_need_tls() {
        let error = Config::from_args(args(&["--insecure", "--auth-list-public-keys", "k.csv"]))
            .expect_err("partial auth");
        assert!(matches!(error, ConfigError::AuthIncomplete));
        let error = Config::from_args(args(&[
            "--insecure",
            "--auth-list-public-keys",
            "k.csv",
            "--auth-superlink-private-key",
            "k",
            "--auth-superlink-public-key",
            "k.pub",
        ]))
        .expect_err("auth without TLS");
        assert!(matches!(error, ConfigError::AuthRequiresTls));
    }

    #[test]
    fn node_auth_mode_flags_need_node_auth_and_a_bounded_skew() {
        let csv = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/vectors/keys/known_supernodes.csv"
        );
        let auth = ["--auth-list-public-keys", csv];
        let keys = [
            "--auth-superlink-private-key",
            "k",
            "--auth-superlink-public-key",
            "k.pub",
        ];
        let files = |extra: &[&str]| {
            let mut argv = vec!["flower-superlink"];
            argv.extend_from_slice(&auth);
            argv.extend_from_slice(&keys);
            argv.extend_from_slice(extra);
            node_auth_files(&Args::try_parse_from(argv).expect("flags"), true)
        };
        let default = files(&[]).expect("valid").expect("auth");
        assert_eq!(default.mode, NodeAuthMode::Compatible);
        let hardened = files(&["--node-auth-mode", "hardened"])
            .expect("valid")
            .expect("auth");
        assert_eq!(hardened.mode, NodeAuthMode::Hardened);
        assert_eq!(
            hardened.max_clock_skew.as_secs(),
            DEFAULT_NODE_AUTH_CLOCK_SKEW
        );
        let skew = [
            "--node-auth-mode",
            "hardened",
            "--node-auth-max-clock-skew",
            "3600",
        ];
        let hardened = files(&skew).expect("valid").expect("auth");
        assert_eq!(hardened.max_clock_skew.as_secs(), 3600);
        assert!(matches!(
            files(&["--node-auth-max-clock-skew", "5"]),
            Err(ConfigError::ClockSkewWithoutHardened)
        ));
        for refused in ["0", "3601", "-1", "soon"] {
            let flag = format!("--node-auth-max-clock-skew={refused}");
            let error =
                Args::try_parse_from(["flower-superlink", flag.as_str()]).expect_err(refused);
            assert!(
                error.to_string().contains("--node-auth-max-clock-skew"),
                "{error}"
            );
        }
        let error = Args::try_parse_from(["flower-superlink", "--node-auth-mode", "strict"])
            .expect_err("unknown mode");
        assert!(error.to_string().contains("--node-auth-mode"), "{error}");
        // Without node auth the mode has nothing to harden: refused, naming the flags.
        let error = Config::from_args(args(&["--insecure", "--node-auth-mode", "hardened"]))
            .expect_err("hardened without auth");
        assert!(matches!(error, ConfigError::HardenedWithoutAuth));
        assert!(
            error.to_string().starts_with("--node-auth-mode hardened"),
            "{error}"
        );
        assert!(
            error.to_string().contains("--auth-list-public-keys"),
            "{error}"
        );
        let config = Config::from_args(args(&["--insecure", "--node-auth-mode", "compatible"]))
            .expect("the default mode is fine without auth");
        assert!(config.node_auth.is_none());
    }

    #[test]
    fn ignored_flags_produce_the_reference_warnings() {
        let config = Config::from_args(args(&[
            "--insecure",
            "--flwr-dir",
            "/tmp",
            "--fleet-api-num-workers",
            "4",
        ]))
        .expect("valid");
        assert!(config.warnings[0].contains("`--flwr-dir` option is currently not in use"));
        assert!(config.warnings[2].contains("You have specified 4 workers"));
    }

    #[test]
    fn executor_config_is_parsed_and_root_certificates_checked() {
        assert!(check_executor_config("verbose=true").is_ok());
        assert!(check_executor_config("name=abc").is_err());
        // `flatten_dict` refuses arrays, so the reference fails at startup.
        assert!(check_executor_config("list=[1]").is_err());
        let error = check_executor_config("root-certificates=\"/nonexistent/ca.crt\"")
            .expect_err("missing file");
        assert!(error.to_string().contains("/nonexistent/ca.crt"));
    }
}
