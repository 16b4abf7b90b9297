//! The NumPy app that `flwr new` renders, pointed at a SuperLink.
//!
//! `flwr new numpyapp --framework NumPy --username test` (1.14.0, offline: it only renders a
//! template) writes:
//!
//! ```text
//! numpyapp/pyproject.toml         publisher "test", version "1.0.0"
//! numpyapp/numpyapp/server_app.py serverapp = "numpyapp.server_app:app" (FedAvg)
//! numpyapp/numpyapp/client_app.py clientapp = "numpyapp.client_app:app" (NumPyClient)
//! numpyapp/numpyapp/task.py       the model: np.ones((1, 1))
//! numpyapp/README.md, .gitignore, numpyapp/__init__.py
//! ```
//!
//! with `[tool.flwr.app.config] num-server-rounds = 3` and a single simulation federation
//! (`default = "local-simulation"`, `options.num-supernodes = 10`). [`NumpyApp`] replaces the
//! whole `[tool.flwr.federations]` section with one deployment federation (CLI.md §4.6) and can
//! change `num-server-rounds`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flwr_runtime::child::combined;
use flwr_runtime::ChildError;

use crate::{io_error, Error, Result, Venv};

/// Bound on `flwr new` (it takes well under a second).
const NEW_TIMEOUT: Duration = Duration::from_secs(60);

const FEDERATIONS: &str = "tool.flwr.federations";
const APP_CONFIG: &str = "tool.flwr.app.config";
const NUM_SERVER_ROUNDS: &str = "num-server-rounds";

/// How the `flwr` CLI reaches the Exec API of a federation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FederationTls {
    /// `insecure = true`: plaintext.
    Insecure,
    /// `root-certificates = "<path>"`: TLS trusting this CA file.
    RootCertificates(PathBuf),
}

/// One `[tool.flwr.federations.<name>]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Federation {
    /// Table name, passed as `FEDERATION` to `flwr run/ls/log/stop`; a bare TOML key.
    pub name: String,
    /// Exec API address, `host:port`.
    pub address: String,
    /// TLS settings.
    pub tls: FederationTls,
}

impl Federation {
    /// A plaintext federation (`insecure = true`).
    pub fn insecure(name: impl Into<String>, address: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            address: address.into(),
            tls: FederationTls::Insecure,
        }
    }

    /// A TLS federation trusting `ca_cert` (`root-certificates = "<ca_cert>"`).
    pub fn with_root_certificates(
        name: impl Into<String>,
        address: impl Into<String>,
        ca_cert: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            address: address.into(),
            tls: FederationTls::RootCertificates(ca_cert.into()),
        }
    }

    /// The TOML text of the federation section, with this federation as the default.
    fn to_toml(&self) -> String {
        let tls = match &self.tls {
            FederationTls::Insecure => "insecure = true".to_owned(),
            FederationTls::RootCertificates(path) => {
                format!(
                    "root-certificates = {}",
                    toml_string(&path.to_string_lossy())
                )
            }
        };
        format!(
            "[{FEDERATIONS}]\ndefault = {name}\n\n[{FEDERATIONS}.{name_key}]\naddress = {address}\n{tls}\n",
            name = toml_string(&self.name),
            name_key = self.name,
            address = toml_string(&self.address),
        )
    }
}

/// A Flower app directory created by `flwr new ... --framework NumPy`.
#[derive(Clone, Debug)]
pub struct NumpyApp {
    dir: PathBuf,
}

impl NumpyApp {
    /// App (and directory, and Python package) name.
    pub const NAME: &'static str = "numpyapp";
    /// Publisher given to `flwr new --username`; the FAB id is `test/numpyapp`.
    pub const PUBLISHER: &'static str = "test";
    /// Rounds configured by [`NumpyApp::create`].
    pub const DEFAULT_NUM_SERVER_ROUNDS: u32 = 3;

    /// Runs `flwr new numpyapp --framework NumPy --username test` in `parent` and points the
    /// app at `federation` with [`Self::DEFAULT_NUM_SERVER_ROUNDS`] rounds.
    ///
    /// # Errors
    ///
    /// [`ChildError::Io`] if `parent/numpyapp` already exists (`flwr new` would prompt) or files
    /// cannot be read or written, [`ChildError::Command`] if `flwr new` fails,
    /// [`Error::Pyproject`] if its pyproject.toml is not what this harness expects.
    pub fn create(venv: &Venv, parent: &Path, federation: &Federation) -> Result<Self> {
        let dir = parent.join(Self::NAME);
        if dir.exists() {
            return Err(ChildError::Io {
                context: format!("creating the app in {}", parent.display()),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} already exists", dir.display()),
                ),
            }
            .into());
        }
        fs::create_dir_all(parent).map_err(io_error(format!("creating {}", parent.display())))?;
        let command = venv
            .command(venv.flwr())
            .args(["new", Self::NAME, "--framework", "NumPy", "--username"])
            .arg(Self::PUBLISHER)
            .current_dir(parent);
        let output = command.output(NEW_TIMEOUT)?;
        let app = Self { dir };
        if !output.status.success() || !app.pyproject().is_file() {
            return Err(ChildError::Command {
                command: command.to_string(),
                reason: format!(
                    "exited with {} and left {} {}",
                    output.status,
                    app.pyproject().display(),
                    if app.pyproject().is_file() {
                        "behind"
                    } else {
                        "missing"
                    }
                ),
                output: combined(&output),
            }
            .into());
        }
        app.set_federation(federation)?;
        app.set_num_server_rounds(Self::DEFAULT_NUM_SERVER_ROUNDS)?;
        Ok(app)
    }

    /// The app directory, the `APP` argument of `flwr run`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its pyproject.toml.
    pub fn pyproject(&self) -> PathBuf {
        self.dir.join("pyproject.toml")
    }

    /// Replaces `[tool.flwr.federations]` (and all its sub-tables) with `federation` alone,
    /// made the default.
    ///
    /// # Errors
    ///
    /// [`Error::Pyproject`] if the federation name is not a bare TOML key or the result does
    /// not parse back; [`ChildError::Io`] on file errors.
    pub fn set_federation(&self, federation: &Federation) -> Result<()> {
        self.edit(|text| with_federation(text, federation))
    }

    /// Sets `[tool.flwr.app.config] num-server-rounds`.
    ///
    /// # Errors
    ///
    /// [`Error::Pyproject`] if the key is not there; [`ChildError::Io`] on file errors.
    pub fn set_num_server_rounds(&self, rounds: u32) -> Result<()> {
        self.edit(|text| with_num_server_rounds(text, rounds))
    }

    fn edit(&self, change: impl FnOnce(&str) -> Result<String, String>) -> Result<()> {
        let path = self.pyproject();
        let text =
            fs::read_to_string(&path).map_err(io_error(format!("reading {}", path.display())))?;
        let changed = change(&text).map_err(|reason| Error::Pyproject {
            path: path.clone(),
            reason,
        })?;
        fs::write(&path, changed).map_err(io_error(format!("writing {}", path.display())))
    }
}

/// `text` with its federations section replaced by `federation`.
fn with_federation(text: &str, federation: &Federation) -> Result<String, String> {
    let bare_key = !federation.name.is_empty()
        && federation
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !bare_key {
        return Err(format!(
            "federation name {:?} must be a bare TOML key ([A-Za-z0-9_-]+)",
            federation.name
        ));
    }
    // Keep every line outside the federations tables; put the new section where the old one
    // started (at the end if there was none).
    let mut kept: Vec<&str> = Vec::new();
    let mut insert_at = None;
    let mut in_federations = false;
    for line in text.lines() {
        if let Some(table) = table_header(line) {
            in_federations = table == FEDERATIONS || table.starts_with("tool.flwr.federations.");
            if in_federations && insert_at.is_none() {
                insert_at = Some(kept.len());
            }
        }
        if !in_federations {
            kept.push(line);
        }
    }
    let section = federation.to_toml();
    let mut lines: Vec<&str> = kept;
    let at = insert_at.unwrap_or(lines.len());
    if at == lines.len() && lines.last().is_some_and(|line| !line.trim().is_empty()) {
        lines.push("");
    }
    lines.splice(at..at, section.lines().chain([""]));
    let changed = join_lines(&lines);

    let parsed = parse(&changed)?;
    let table = lookup(&parsed, &format!("{FEDERATIONS}.{}", federation.name))
        .ok_or_else(|| "the federation table did not parse back".to_owned())?;
    if table.get("address").and_then(toml::Value::as_str) != Some(federation.address.as_str()) {
        return Err("the federation address did not parse back".to_owned());
    }
    Ok(changed)
}

/// `text` with `[tool.flwr.app.config] num-server-rounds = <rounds>`.
fn with_num_server_rounds(text: &str, rounds: u32) -> Result<String, String> {
    let mut in_config = false;
    let mut replaced = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if let Some(table) = table_header(line) {
                in_config = table == APP_CONFIG;
            } else if in_config && key_of(line) == Some(NUM_SERVER_ROUNDS) {
                replaced = true;
                return format!("{NUM_SERVER_ROUNDS} = {rounds}");
            }
            line.to_owned()
        })
        .collect();
    if !replaced {
        return Err(format!("no `{NUM_SERVER_ROUNDS}` in [{APP_CONFIG}]"));
    }
    let changed = join_lines(&lines);
    let parsed = parse(&changed)?;
    let value = lookup(&parsed, APP_CONFIG)
        .and_then(|config| config.get(NUM_SERVER_ROUNDS))
        .and_then(toml::Value::as_integer);
    if value != Some(i64::from(rounds)) {
        return Err(format!(
            "`{NUM_SERVER_ROUNDS}` did not parse back as {rounds}"
        ));
    }
    Ok(changed)
}

/// The table name of a `[table]` header line (array-of-tables headers are not tables here).
fn table_header(line: &str) -> Option<&str> {
    let line = line.trim();
    let name = line.strip_prefix('[')?;
    if name.starts_with('[') {
        return None;
    }
    let (name, _comment) = name.split_once(']')?;
    Some(name.trim())
}

/// The (bare) key of a `key = value` line.
fn key_of(line: &str) -> Option<&str> {
    let (key, _value) = line.split_once('=')?;
    Some(key.trim())
}

fn join_lines<S: AsRef<str>>(lines: &[S]) -> String {
    let mut text = lines
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    text
}

fn parse(text: &str) -> Result<toml::Table, String> {
    text.parse::<toml::Table>()
        .map_err(|error| format!("the rewritten file is not valid TOML: {error}"))
}

/// The table at a dotted path of bare keys.
fn lookup<'a>(table: &'a toml::Table, dotted: &str) -> Option<&'a toml::Table> {
    dotted
        .split('.')
        .try_fold(table, |table, key| table.get(key)?.as_table())
}

/// A TOML basic string, escaped.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `flwr new numpyapp --framework NumPy --username test` writes (flwr 1.14.0).
    const GENERATED: &str = r#"[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "numpyapp"
version = "1.0.0"
description = ""
license = "Apache-2.0"
dependencies = [
    "flwr[simulation]>=1.13.1",
    "numpy>=1.21.0",
]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "test"

[tool.flwr.app.components]
serverapp = "numpyapp.server_app:app"
clientapp = "numpyapp.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 3

[tool.flwr.federations]
default = "local-simulation"

[tool.flwr.federations.local-simulation]
options.num-supernodes = 10
"#;

    fn federations(text: &str) -> toml::Table {
        let parsed = parse(text).expect("valid TOML");
        lookup(&parsed, FEDERATIONS).expect("federations").clone()
    }

    #[test]
    fn tls_federation_replaces_the_simulation_one() {
        let federation =
            Federation::with_root_certificates("link", "127.0.0.1:9093", "/tmp/a \"b\"/ca.crt");
        let text = with_federation(GENERATED, &federation).expect("rewrites");
        let federations = federations(&text);
        assert_eq!(federations.len(), 2, "{text}");
        assert_eq!(federations["default"].as_str(), Some("link"));
        let link = federations["link"].as_table().expect("table");
        assert_eq!(link["address"].as_str(), Some("127.0.0.1:9093"));
        assert_eq!(
            link["root-certificates"].as_str(),
            Some("/tmp/a \"b\"/ca.crt")
        );
        assert!(!link.contains_key("insecure"));
        // Everything before the section is untouched.
        let head = &GENERATED[..GENERATED.find("[tool.flwr.federations]").expect("section")];
        assert!(text.starts_with(head), "{text}");
    }

    #[test]
    fn insecure_federation_and_idempotent_rewrite() {
        let first = Federation::insecure("plain", "127.0.0.1:1");
        let second = Federation::insecure("plain", "127.0.0.1:2");
        let once = with_federation(GENERATED, &first).expect("rewrites");
        let twice = with_federation(&once, &second).expect("rewrites again");
        let federations = federations(&twice);
        assert_eq!(federations.len(), 2, "{twice}");
        let plain = federations["plain"].as_table().expect("table");
        assert_eq!(plain["insecure"].as_bool(), Some(true));
        assert_eq!(plain["address"].as_str(), Some("127.0.0.1:2"));
    }

    #[test]
    fn federation_section_is_appended_when_missing_and_later_tables_are_kept() {
        let text = "[project]\nname = \"x\"\n[tool.flwr.federations.old]\naddress = \"a\"\n\
                    [tool.other]\nkeep = 1\n";
        let changed = with_federation(text, &Federation::insecure("new", "b:1")).expect("ok");
        let parsed = parse(&changed).expect("valid");
        assert_eq!(
            lookup(&parsed, "tool.other").expect("kept")["keep"].as_integer(),
            Some(1)
        );
        assert!(
            lookup(&parsed, "tool.flwr.federations.old").is_none(),
            "{changed}"
        );

        let bare = with_federation(
            "[project]\nname = \"x\"\n",
            &Federation::insecure("n", "b:1"),
        )
        .expect("ok");
        assert!(lookup(&parse(&bare).expect("valid"), "tool.flwr.federations.n").is_some());
    }

    #[test]
    fn federation_name_must_be_a_bare_key() {
        let error = with_federation(GENERATED, &Federation::insecure("a.b", "x:1"))
            .expect_err("dotted name");
        assert!(error.contains("bare TOML key"), "{error}");
    }

    #[test]
    fn num_server_rounds_is_rewritten_in_the_config_table_only() {
        let text = with_num_server_rounds(GENERATED, 7).expect("rewrites");
        let parsed = parse(&text).expect("valid");
        let config = lookup(&parsed, APP_CONFIG).expect("config");
        assert_eq!(config[NUM_SERVER_ROUNDS].as_integer(), Some(7));
        assert_eq!(text.len(), GENERATED.len(), "only the digit changed");

        let error = with_num_server_rounds("[project]\nnum-server-rounds = 1\n", 2)
            .expect_err("not in the config table");
        assert!(error.contains("no `num-server-rounds`"), "{error}");
    }
}
