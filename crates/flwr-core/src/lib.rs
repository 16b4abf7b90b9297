//! Domain logic of the Flower 1.14 deployment runtime that the SuperLink, the SuperNode and the
//! app SDK share, written once so that the three agree byte for byte with the reference. Nothing
//! here touches the network or the file system: callers read files and resolve names.
//!
//! # Layout
//!
//! - [`address`]: `host:port` parsing the way the reference splits addresses
//!   (PROTOCOL.md §2.2): [`Address`], [`Host`], [`AddressError`].
//! - [`config`]: user configs (BEHAVIOR.md §11): the reference's `key=value` tokenizer
//!   ([`config::pairs`]), TOML typing, flattening nested tables into `a.b` keys
//!   ([`config::flatten`]) and fusing overrides into defaults ([`config::fuse`]).
//! - [`fab`]: Flower App Bundles (BEHAVIOR.md §10), the one place for their rules: the sha256
//!   hash ([`fab::hash`], [`fab::verify_hash`]), building the ZIP with its `.info/CONTENT` the
//!   way `flwr build` writes it ([`FabBuilder`], which the demo and the tests use), and
//!   `pyproject.toml` read and validated like the reference's `get_fab_config` ([`FabMetadata`]).
//! - [`hold`]: the metadata of held pulls, a flower-rs extension 1.14 peers ignore.
//! - [`message`]: `Message` ↔ `TaskIns`/`TaskRes` as the reference's `serde.py` maps them, the
//!   reply metadata of `create_reply` ([`message::reply_metadata`]) and Flower's error codes
//!   ([`message::error_code`]).
//! - [`run`]: run statuses ([`RunStatus`], [`SubStatus`]) and their wire strings.

pub mod address;
pub mod config;
pub mod fab;
pub mod hold;
pub mod message;
pub mod run;

pub use address::{Address, AddressError, Host};
pub use config::ConfigError;
pub use fab::{FabBuilder, FabError, FabMetadata};
pub use run::{RunStatus, SubStatus, UnknownRunStatus};
