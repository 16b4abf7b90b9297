//! The `flower-loadgen` flags ([`Args`], clap) and the validated [`Config`] they become before
//! any key is read or any socket is opened.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use flwr_core::Address;

/// The largest payload a PushTaskRes may carry: the 512 MiB message limit of every Flower
/// channel, less room for the envelope around the array.
pub const MAX_PAYLOAD_BYTES: usize = flwr_proto::MAX_MESSAGE_SIZE - 64 * 1024;

/// The longest measurement window accepted; the generator is a bounded tool, not a soak daemon.
pub const MAX_SECONDS: f64 = 24.0 * 3600.0;

/// The highest `--rate` accepted: far above what one ServerAppIo connection carries.
pub const MAX_RATE: f64 = 100_000.0;

/// The hold a dispatch node asks for when `--hold` is not given.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(20);

/// Act as N Flower 1.14 SuperNodes against a SuperLink's Fleet API and measure it.
///
/// Every simulated node registers with CreateNode (ping_interval 30, as the reference
/// SuperNode), then either behaves as an idle SuperNode (--mode cadence: Ping every 17.5–22.5 s,
/// PullTaskIns every 3 s), takes part in a closed loop of C requests in flight
/// (--mode closed-loop), or waits for TaskIns that the generator pushes as a ServerApp through
/// the ServerAppIo API and measures how long each takes to arrive (--mode dispatch). With node
/// authentication (the default) every request carries the reference's public-key and
/// auth-token headers.
#[derive(Debug, Parser)]
#[command(name = "flower-loadgen", version)]
pub struct Args {
    /// Fleet API address of the SuperLink.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9092")]
    pub superlink: String,
    /// PEM file with the CA certificate(s) that signed the SuperLink's TLS certificate
    /// [default: the system trust store].
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub root_certificates: Option<PathBuf>,
    /// Plaintext gRPC instead of TLS.
    #[arg(long)]
    pub insecure: bool,
    /// Send no node-authentication headers (for a SuperLink started without --auth-* flags).
    #[arg(long, conflicts_with_all = ["keys", "generate_keys"])]
    pub no_auth: bool,
    /// Number of simulated SuperNodes.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub nodes: usize,
    /// A `flower-keygen` directory: client_credentials_1..N(.pub) are the nodes' keys,
    /// server_credentials.pub the SuperLink's.
    #[arg(long, value_name = "DIR", conflicts_with = "generate_keys")]
    pub keys: Option<PathBuf>,
    /// Write N node key pairs, a SuperLink key pair and client_public_keys.csv into DIR
    /// (flower-keygen's layout), then use them.
    #[arg(long, value_name = "DIR")]
    pub generate_keys: Option<PathBuf>,
    /// With --generate-keys: write the keys and exit without contacting a SuperLink.
    #[arg(long, requires = "generate_keys")]
    pub generate_only: bool,
    /// Simulated nodes that share one HTTP/2 connection.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub nodes_per_connection: usize,
    /// cadence: every node idles like a reference SuperNode; closed-loop: C requests in flight;
    /// dispatch: TaskIns pushed through ServerAppIo, time until their node has them.
    #[arg(long, value_enum, default_value_t = Mode::ClosedLoop)]
    pub mode: Mode,
    /// The RPC a closed loop sends [default: ping].
    #[arg(long, value_enum)]
    pub rpc: Option<Rpc>,
    /// Requests in flight in a closed loop [default: 64].
    #[arg(long, value_name = "C")]
    pub concurrency: Option<usize>,
    /// Bytes of array data in each PushTaskRes (--rpc push), or of the model and each reply
    /// (--mode round).
    #[arg(long, value_name = "S")]
    pub payload_bytes: Option<usize>,
    /// Length of the measurement window, after registration.
    #[arg(
        long,
        value_name = "S",
        default_value_t = 10.0,
        allow_negative_numbers = true
    )]
    pub seconds: f64,
    /// Seconds a node sleeps after an empty PullTaskIns in --mode cadence, and in --mode
    /// dispatch after an empty one the SuperLink did not hold, or after any empty one with
    /// --hold 0 (the reference's 3 s).
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    pub pull_interval: Option<f64>,
    /// --mode dispatch: TaskIns pushed per second, each to one node chosen at random
    /// [default: 100].
    #[arg(long, value_name = "R", allow_negative_numbers = true)]
    pub rate: Option<f64>,
    /// --mode dispatch: the hold each PullTaskIns asks for (flwr-hold-ms metadata), in seconds;
    /// 0 asks for none, as a 1.14 SuperNode [default: 20].
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    pub hold: Option<f64>,
    /// Process id of the SuperLink, to report its CPU time per request and memory from /proc.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Print one JSON object per test on one line instead of the table.
    #[arg(long)]
    pub json: bool,
    /// CreateNode calls in flight while registering, so that many nodes do not stampede.
    #[arg(long, value_name = "R", default_value_t = 64)]
    pub register_concurrency: usize,
    /// Closed-loop mode: retry a call that failed with UNAVAILABLE, DEADLINE_EXCEEDED or
    /// CANCELLED (a connection lost, e.g. a SuperLink replica killed behind a load balancer) up
    /// to this many times, 100 ms apart; retried calls are counted, and only a call whose
    /// retries all failed is an error.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,
    /// Give up registering nodes after this many seconds and measure with those registered.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 300.0,
        allow_negative_numbers = true
    )]
    pub registration_timeout: f64,
    /// --rpc push needs a running run: create one through this ServerAppIo API (plaintext).
    /// --mode dispatch pushes its TaskIns there (and creates its run there unless --run-id).
    #[arg(long, value_name = "HOST:PORT")]
    pub serverappio_api_address: Option<String>,
    /// --rpc push or --mode dispatch: the id of a run that is already running.
    #[arg(long, value_name = "ID")]
    pub run_id: Option<u64>,
    /// --mode round: rounds to play [default: 3].
    #[arg(long, value_name = "N")]
    pub rounds: Option<usize>,
}

/// How the simulated nodes behave during the measurement window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Every node idles as a 1.14 SuperNode: Ping about every 20 s, PullTaskIns every 3 s.
    Cadence,
    /// A fixed number of requests in flight, spread round-robin over the nodes.
    ClosedLoop,
    /// Every node keeps one (held) PullTaskIns outstanding and Pings as a 1.14 SuperNode; the
    /// generator pushes TaskIns at `--rate` and times each until its node has it.
    Dispatch,
    /// `--rounds` federated rounds: the generator, as the ServerApp, sends every node a model of
    /// `--payload-bytes` and pulls a reply of that size from each; reports round times and the
    /// SuperLink's memory (peak, and after the rounds).
    Round,
}

impl Mode {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cadence => "cadence",
            Self::ClosedLoop => "closed-loop",
            Self::Dispatch => "dispatch",
            Self::Round => "round",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Fleet RPC the generator sends repeatedly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub enum Rpc {
    /// `Ping` with ping_interval 30.
    Ping,
    /// `PullTaskIns`.
    Pull,
    /// `PushTaskRes` with one TaskRes carrying the payload.
    Push,
}

impl Rpc {
    /// Every RPC, in the order reports list them.
    pub const ALL: [Self; 3] = [Self::Ping, Self::Pull, Self::Push];

    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Pull => "pull",
            Self::Push => "push",
        }
    }
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the Fleet connections are secured.
pub use flwr_runtime::channel::Tls;

/// Where the node keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// Generate them into this directory first (`--generate-keys`).
    Generate(PathBuf),
    /// No node authentication (`--no-auth`).
    None,
    /// Read them from this `flower-keygen` directory (`--keys`).
    Read(PathBuf),
}

/// The run that PushTaskRes requests name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushRun {
    /// Create a run and set it running through this ServerAppIo API.
    Create(Address),
    /// A run that is already running.
    Existing(u64),
}

/// What `--mode dispatch` pushes, and where.
#[derive(Clone, Debug, PartialEq)]
pub struct Dispatch {
    /// The ServerAppIo API the TaskIns are pushed through (plaintext).
    pub serverappio: Address,
    /// A running run to push into; `None` creates one.
    pub run_id: Option<u64>,
    /// TaskIns per second.
    pub rate: f64,
    /// The hold each PullTaskIns asks for; `None` asks for none.
    pub hold: Option<Duration>,
}

/// What `--mode round` plays, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundPlan {
    /// The ServerAppIo API the ServerApp's calls go to (plaintext).
    pub serverappio: Address,
    /// Rounds to play.
    pub rounds: usize,
}

/// A validated load test.
#[derive(Clone, Debug)]
pub struct Config {
    /// Fleet API address.
    pub superlink: Address,
    /// Transport security.
    pub tls: Tls,
    /// Node keys, or none without authentication.
    pub keys: KeySource,
    /// Simulated nodes.
    pub nodes: usize,
    /// Nodes per HTTP/2 connection.
    pub nodes_per_connection: usize,
    /// Behaviour during the window.
    pub mode: Mode,
    /// The RPC of a closed loop (`Ping` in cadence mode, which sends Ping and PullTaskIns).
    pub rpc: Rpc,
    /// Requests in flight in a closed loop.
    pub concurrency: usize,
    /// Array bytes per PushTaskRes.
    pub payload_bytes: usize,
    /// Measurement window.
    pub window: Duration,
    /// Time between PullTaskIns calls of one node in cadence mode.
    pub pull_interval: Duration,
    /// The SuperLink process to observe.
    pub server_pid: Option<u32>,
    /// CreateNode calls in flight during registration.
    pub register_concurrency: usize,
    /// Retries of a call lost with its connection (closed-loop mode).
    pub retries: u32,
    /// Upper bound on the registration phase.
    pub registration_timeout: Duration,
    /// The run PushTaskRes names (`Some` exactly for `--rpc push`).
    pub push_run: Option<PushRun>,
    /// What to push and how to pull (`Some` exactly for `--mode dispatch`).
    pub dispatch: Option<Dispatch>,
    /// The rounds to play (`Some` exactly for `--mode round`).
    pub round: Option<RoundPlan>,
    /// Only write the generated keys.
    pub generate_only: bool,
}

/// A flag value that cannot make a load test. The message names the flag.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A flag's value is out of range or malformed.
    #[error("{flag}: {reason}")]
    Invalid {
        /// The flag, e.g. `--nodes`.
        flag: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Two flags do not go together, or one needs another.
    #[error("{0}")]
    Combination(String),
    /// A file named by a flag cannot be read.
    #[error("{flag} {}: {source}", path.display())]
    File {
        /// The flag.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
}

impl Config {
    /// Validates the flags.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first flag (or flag combination) that is wrong, or the file
    /// that cannot be read.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let invalid = |flag, reason: &str| ConfigError::Invalid {
            flag,
            reason: reason.to_owned(),
        };
        let superlink: Address = args
            .superlink
            .parse()
            .map_err(|error: flwr_core::AddressError| invalid("--superlink", &error.to_string()))?;
        let tls = match (&args.root_certificates, args.insecure) {
            (_, true) => Tls::Insecure,
            (Some(path), false) => Tls::RootCertificates(read_certificates(path)?),
            (None, false) => Tls::SystemRoots,
        };
        let keys = match (args.no_auth, args.keys, args.generate_keys) {
            (true, _, _) => KeySource::None,
            (false, Some(dir), _) => KeySource::Read(dir),
            (false, None, Some(dir)) => KeySource::Generate(dir),
            (false, None, None) => {
                return Err(ConfigError::Combination(
                    "node authentication needs --keys DIR or --generate-keys DIR \
                     (or --no-auth for a SuperLink without it)"
                        .to_owned(),
                ))
            }
        };
        if args.nodes == 0 || args.nodes > 1_000_000 {
            return Err(invalid("--nodes", "must be between 1 and 1000000"));
        }
        if args.nodes_per_connection == 0 || args.nodes_per_connection > args.nodes {
            return Err(invalid(
                "--nodes-per-connection",
                "must be between 1 and --nodes",
            ));
        }
        let window = seconds("--seconds", args.seconds, MAX_SECONDS)?;
        let registration_timeout = seconds(
            "--registration-timeout",
            args.registration_timeout,
            MAX_SECONDS,
        )?;
        if args.retries > 100 {
            return Err(invalid("--retries", "must be between 0 and 100"));
        }
        if args.register_concurrency == 0 || args.register_concurrency > 10_000 {
            return Err(invalid(
                "--register-concurrency",
                "must be between 1 and 10000",
            ));
        }
        if let Some(pid) = args.server_pid {
            check_process(pid)?;
        }
        if args.mode != Mode::Dispatch && (args.rate.is_some() || args.hold.is_some()) {
            return Err(ConfigError::Combination(
                "--rate and --hold apply to --mode dispatch".to_owned(),
            ));
        }
        if args.mode != Mode::Round && args.rounds.is_some() {
            return Err(ConfigError::Combination(
                "--rounds applies to --mode round".to_owned(),
            ));
        }
        let (rpc, concurrency, pull_interval) = match args.mode {
            Mode::Round => {
                if args.rpc.is_some() || args.concurrency.is_some() || args.pull_interval.is_some()
                {
                    return Err(ConfigError::Combination(
                        "--rpc, --concurrency and --pull-interval do not apply to --mode round"
                            .to_owned(),
                    ));
                }
                (Rpc::Push, args.nodes, Duration::from_secs(3))
            }
            Mode::Cadence | Mode::Dispatch => {
                if args.rpc.is_some() || args.concurrency.is_some() {
                    return Err(ConfigError::Combination(format!(
                        "--rpc and --concurrency apply to --mode closed-loop; \
                         in --mode {} every node sends Ping and PullTaskIns",
                        args.mode
                    )));
                }
                let interval = args.pull_interval.unwrap_or(3.0);
                (
                    Rpc::Ping,
                    args.nodes,
                    seconds("--pull-interval", interval, 3600.0)?,
                )
            }
            Mode::ClosedLoop => {
                if args.pull_interval.is_some() {
                    return Err(ConfigError::Combination(
                        "--pull-interval applies to --mode cadence and --mode dispatch".to_owned(),
                    ));
                }
                let concurrency = args.concurrency.unwrap_or(64);
                if concurrency == 0 || concurrency > 100_000 {
                    return Err(invalid("--concurrency", "must be between 1 and 100000"));
                }
                (
                    args.rpc.unwrap_or(Rpc::Ping),
                    concurrency,
                    Duration::from_secs(3),
                )
            }
        };
        let serverappio = args
            .serverappio_api_address
            .map(|address| {
                address
                    .parse::<Address>()
                    .map_err(|error| invalid("--serverappio-api-address", &error.to_string()))
            })
            .transpose()?;
        let mut round = None;
        let (push_run, dispatch) = match (args.mode, rpc) {
            (Mode::Round, _) => {
                let Some(serverappio) = serverappio else {
                    return Err(ConfigError::Combination(
                        "--mode round plays the ServerApp: pass --serverappio-api-address HOST:PORT"
                            .to_owned(),
                    ));
                };
                if args.run_id.is_some() {
                    return Err(ConfigError::Combination(
                        "--mode round creates its own run: --run-id does not apply".to_owned(),
                    ));
                }
                let rounds = args.rounds.unwrap_or(3);
                if rounds == 0 || rounds > 1000 {
                    return Err(invalid("--rounds", "must be between 1 and 1000"));
                }
                round = Some(RoundPlan {
                    serverappio,
                    rounds,
                });
                (None, None)
            }
            (Mode::Dispatch, _) => {
                let Some(serverappio) = serverappio else {
                    return Err(ConfigError::Combination(
                        "--mode dispatch pushes TaskIns as a ServerApp: pass \
                         --serverappio-api-address HOST:PORT"
                            .to_owned(),
                    ));
                };
                let rate = args.rate.unwrap_or(100.0);
                if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE) {
                    return Err(invalid(
                        "--rate",
                        &format!(
                            "must be a number of TaskIns per second above 0 and at most {MAX_RATE}"
                        ),
                    ));
                }
                let hold = match args.hold {
                    None => Some(DEFAULT_HOLD),
                    // Zero is the 1.14 SuperNode: no hold asked for.
                    Some(0.0) => None,
                    Some(value) => Some(seconds(
                        "--hold",
                        value,
                        flwr_core::hold::MAX_HOLD.as_secs_f64(),
                    )?),
                };
                let dispatch = Dispatch {
                    serverappio,
                    run_id: args.run_id,
                    rate,
                    hold,
                };
                (None, Some(dispatch))
            }
            (_, Rpc::Push) => match (serverappio, args.run_id) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::Combination(
                        "--rpc push takes --serverappio-api-address or --run-id, not both"
                            .to_owned(),
                    ))
                }
                (Some(address), None) => (Some(PushRun::Create(address)), None),
                (None, Some(run_id)) => (Some(PushRun::Existing(run_id)), None),
                (None, None) => {
                    return Err(ConfigError::Combination(
                        "--rpc push needs a running run: pass --serverappio-api-address \
                         HOST:PORT (a run is created there) or --run-id ID"
                            .to_owned(),
                    ))
                }
            },
            _ => {
                if serverappio.is_some() || args.run_id.is_some() {
                    return Err(ConfigError::Combination(
                        "--serverappio-api-address and --run-id apply to --rpc push and \
                         --mode dispatch"
                            .to_owned(),
                    ));
                }
                (None, None)
            }
        };
        let payload_bytes = match (rpc == Rpc::Push, args.payload_bytes) {
            (true, None) if args.mode == Mode::Round => {
                return Err(ConfigError::Combination(
                    "--mode round needs --payload-bytes (the model's size)".to_owned(),
                ))
            }
            (true, bytes) => bytes.unwrap_or(0),
            (false, None) => 0,
            (false, Some(_)) => {
                return Err(ConfigError::Combination(
                    "--payload-bytes applies to --rpc push".to_owned(),
                ))
            }
        };
        if payload_bytes > MAX_PAYLOAD_BYTES {
            return Err(invalid(
                "--payload-bytes",
                &format!("must be at most {MAX_PAYLOAD_BYTES} (the 512 MiB message limit)"),
            ));
        }
        Ok(Self {
            superlink,
            tls,
            keys,
            nodes: args.nodes,
            nodes_per_connection: args.nodes_per_connection,
            mode: args.mode,
            rpc,
            concurrency,
            payload_bytes,
            window,
            pull_interval,
            server_pid: args.server_pid,
            register_concurrency: args.register_concurrency,
            retries: args.retries,
            registration_timeout,
            push_run,
            dispatch,
            round,
            generate_only: args.generate_only,
        })
    }

    /// HTTP/2 connections the test opens.
    pub fn connections(&self) -> usize {
        self.nodes.div_ceil(self.nodes_per_connection)
    }

    /// Whether requests carry node-authentication headers.
    pub fn auth(&self) -> bool {
        self.keys != KeySource::None
    }

    /// Whether the connections use TLS.
    pub fn tls(&self) -> bool {
        self.tls != Tls::Insecure
    }
}

/// A positive, finite number of seconds of at most `max`.
fn seconds(flag: &'static str, value: f64, max: f64) -> Result<Duration, ConfigError> {
    if !(value.is_finite() && value > 0.0 && value <= max) {
        return Err(ConfigError::Invalid {
            flag,
            reason: format!("must be a number of seconds above 0 and at most {max}"),
        });
    }
    Ok(Duration::from_secs_f64(value))
}

/// The PEM file's bytes, refused when it holds no certificate (tonic would only fail at the
/// first handshake, once per connection).
fn read_certificates(path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path).map_err(|source| ConfigError::File {
        flag: "--root-certificates",
        path: path.to_owned(),
        source,
    })?;
    let has_certificate = pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|window| window == b"-----BEGIN CERTIFICATE-----");
    if !has_certificate {
        return Err(ConfigError::File {
            flag: "--root-certificates",
            path: path.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
            ),
        });
    }
    Ok(pem)
}

/// Refuses a `--server-pid` whose `/proc` entry cannot be read.
fn check_process(pid: u32) -> Result<(), ConfigError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    std::fs::metadata(&path)
        .map(|_| ())
        .map_err(|_| ConfigError::Invalid {
            flag: "--server-pid",
            reason: format!("no process {pid} (nothing at {})", path.display()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Config, ConfigError> {
        let args =
            Args::try_parse_from(std::iter::once("flower-loadgen").chain(argv.iter().copied()))
                .expect("clap accepts the flags");
        Config::from_args(args)
    }

    #[test]
    fn defaults_make_an_authenticated_closed_loop_ping() {
        let config = parse(&["--keys", "k"]).unwrap();
        assert_eq!(config.mode, Mode::ClosedLoop);
        assert_eq!(config.rpc, Rpc::Ping);
        assert_eq!(config.concurrency, 64);
        assert_eq!(config.tls, Tls::SystemRoots);
        assert_eq!(config.superlink.to_string(), "127.0.0.1:9092");
        assert!(config.auth() && config.tls());
        assert_eq!(config.connections(), 100);
    }

    #[test]
    fn auth_needs_keys() {
        let error = parse(&["--insecure"]).unwrap_err().to_string();
        assert!(error.contains("--keys DIR"), "{error}");
        assert!(parse(&["--insecure", "--no-auth"]).is_ok());
    }

    #[test]
    fn push_needs_a_run_and_payload_needs_push() {
        let error = parse(&["--no-auth", "--rpc", "push"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--serverappio-api-address"), "{error}");
        let config = parse(&[
            "--no-auth",
            "--rpc",
            "push",
            "--run-id",
            "7",
            "--payload-bytes",
            "10",
        ])
        .unwrap();
        assert_eq!(config.push_run, Some(PushRun::Existing(7)));
        assert_eq!(config.payload_bytes, 10);
        let error = parse(&["--no-auth", "--payload-bytes", "10"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--payload-bytes"), "{error}");
    }

    #[test]
    fn round_needs_a_serverapp_address_and_a_model_size() {
        let base = ["--no-auth", "--mode", "round"];
        let error = parse(&base).unwrap_err().to_string();
        assert!(error.contains("--serverappio-api-address"), "{error}");
        let with_address = [&base[..], &["--serverappio-api-address", "127.0.0.1:9091"]].concat();
        let error = parse(&with_address).unwrap_err().to_string();
        assert!(error.contains("--payload-bytes"), "{error}");
        let config = parse(
            &[
                &with_address[..],
                &["--payload-bytes", "64", "--rounds", "2"],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(config.payload_bytes, 64);
        assert_eq!(config.round.map(|plan| plan.rounds), Some(2));
        let error = parse(
            &[
                &with_address[..],
                &["--payload-bytes", "64", "--rounds", "0"],
            ]
            .concat(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("--rounds"), "{error}");
        let error = parse(&["--no-auth", "--rounds", "2"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--mode round"), "{error}");
    }

    #[test]
    fn cadence_refuses_closed_loop_flags() {
        let error = parse(&["--no-auth", "--mode", "cadence", "--rpc", "pull"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--rpc"), "{error}");
        let config = parse(&["--no-auth", "--mode", "cadence", "--pull-interval", "0.5"]).unwrap();
        assert_eq!(config.pull_interval, Duration::from_millis(500));
    }

    #[test]
    fn dispatch_needs_serverappio_and_takes_rate_and_hold() {
        let error = parse(&["--no-auth", "--mode", "dispatch"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--serverappio-api-address"), "{error}");
        let config = parse(&[
            "--no-auth",
            "--mode",
            "dispatch",
            "--serverappio-api-address",
            "127.0.0.1:9091",
        ])
        .unwrap();
        let dispatch = config.dispatch.unwrap();
        assert_eq!(dispatch.rate, 100.0);
        assert_eq!(dispatch.hold, Some(DEFAULT_HOLD));
        assert_eq!(dispatch.run_id, None);
        assert_eq!(config.pull_interval, Duration::from_secs(3));
        assert_eq!(config.push_run, None);
        let config = parse(&[
            "--no-auth",
            "--mode",
            "dispatch",
            "--serverappio-api-address",
            "127.0.0.1:9091",
            "--run-id",
            "4",
            "--rate",
            "2.5",
            "--hold",
            "0",
        ])
        .unwrap();
        let dispatch = config.dispatch.unwrap();
        assert_eq!((dispatch.rate, dispatch.hold), (2.5, None));
        assert_eq!(dispatch.run_id, Some(4));
        for (argv, flag) in [
            (&["--rate", "0"][..], "--rate"),
            (&["--hold", "31"][..], "--hold"),
            (&["--hold", "-1"][..], "--hold"),
        ] {
            let mut all = vec![
                "--no-auth",
                "--mode",
                "dispatch",
                "--serverappio-api-address",
                "127.0.0.1:9091",
            ];
            all.extend_from_slice(argv);
            let error = parse(&all).unwrap_err().to_string();
            assert!(error.starts_with(flag), "{argv:?}: {error}");
        }
        let error = parse(&["--no-auth", "--rate", "5"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--mode dispatch"), "{error}");
    }

    #[test]
    fn ranges_name_their_flag() {
        for (argv, flag) in [
            (&["--no-auth", "--nodes", "0"][..], "--nodes"),
            (&["--no-auth", "--seconds", "-1"][..], "--seconds"),
            (&["--no-auth", "--seconds", "NaN"][..], "--seconds"),
            (
                &["--no-auth", "--nodes", "2", "--nodes-per-connection", "3"][..],
                "--nodes-per-connection",
            ),
            (&["--no-auth", "--concurrency", "0"][..], "--concurrency"),
            (&["--no-auth", "--retries", "101"][..], "--retries"),
            (&["--no-auth", "--superlink", "nope"][..], "--superlink"),
            (
                &["--no-auth", "--server-pid", "4000000000"][..],
                "--server-pid",
            ),
        ] {
            let error = parse(argv).unwrap_err().to_string();
            assert!(error.starts_with(flag), "{argv:?}: {error}");
        }
    }

    #[test]
    fn root_certificates_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.crt");
        std::fs::write(&file, "not a certificate").unwrap();
        let error = parse(&["--no-auth", "--root-certificates", file.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("ca.crt") && error.contains("no PEM"),
            "{error}"
        );
        let missing = dir.path().join("missing.crt");
        let error = parse(&[
            "--no-auth",
            "--root-certificates",
            missing.to_str().unwrap(),
        ])
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("--root-certificates"), "{error}");
    }
}
