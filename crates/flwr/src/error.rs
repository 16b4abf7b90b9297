//! Errors of the data model: proto conversion, the legacy record layout and app failures. The
//! `.npy` codec's own error, [`NpyError`], lives with the codec.

use crate::npy::NpyError;

/// A protobuf message received from a peer does not form a valid SDK value.
///
/// Conversions from `flwr_proto` types never panic; every malformed input ends up here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConversionError {
    /// A message has both `content` and `error`, or neither.
    #[error("a message must carry exactly one of content and error")]
    ContentAndError,
    /// A record value has no member of its oneof set.
    #[error("value of `{0}` is empty")]
    EmptyValue(String),
    /// A required sub-message is absent.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// An array shape has a negative dimension.
    #[error("array shape {0:?} has a negative dimension")]
    NegativeDimension(Vec<i32>),
    /// A ParametersRecord has different numbers of keys and arrays.
    #[error("parameters record has {keys} keys but {values} arrays")]
    ParametersLength {
        /// `data_keys` entries.
        keys: usize,
        /// `data_values` entries.
        values: usize,
    },
}

/// A RecordSet does not follow the layout of Flower's legacy `recordset_compat` module
/// (`fitins.parameters`, `fitres.num_examples`, ...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CompatError {
    /// An array's payload cannot be decoded.
    #[error("array `{key}`: {source}")]
    Array {
        /// Its key in the ParametersRecord.
        key: String,
        /// The decoding error.
        #[source]
        source: NpyError,
    },
    /// A required key is absent from a record.
    #[error("record `{record}` has no key `{key}`")]
    MissingKey {
        /// The record name.
        record: String,
        /// The key.
        key: String,
    },
    /// A record the layout requires is absent.
    #[error("missing record `{0}`")]
    MissingRecord(String),
    /// A value has a type the legacy layout does not allow there.
    #[error("`{record}.{key}`: {reason}")]
    WrongType {
        /// The record name.
        record: String,
        /// The key.
        key: String,
        /// What was wrong.
        reason: String,
    },
}

/// An app (ClientApp or ServerApp) failed.
///
/// The runner turns it into what the reference produces for a Python exception: an error reply
/// with reason `<class 'TYPE'>:<'MESSAGE'>` (ClientApp) or the run status
/// `finished:failed` with details `MESSAGE` (ServerApp).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppError {
    type_name: String,
    message: String,
    run_stopped: bool,
}

impl AppError {
    /// An error of type `AppError` with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self::with_type("AppError", message)
    }

    /// An error whose reported type is `type_name` (e.g. `"ValueError"`).
    pub fn with_type(type_name: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            type_name: type_name.into(),
            message: message.into(),
            run_stopped: false,
        }
    }

    /// The error a ServerApp returns when the SuperLink says the run is no longer running
    /// (`PERMISSION_DENIED`); the runner then leaves the run status alone, as the reference
    /// does for a stopped run.
    pub fn run_stopped(message: impl Into<String>) -> Self {
        Self {
            run_stopped: true,
            ..Self::with_type("RunNotRunningException", message)
        }
    }

    /// The message (Python's `str(exception)`).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether this reports a stopped run.
    pub fn is_run_stopped(&self) -> bool {
        self.run_stopped
    }

    /// The reason text of an error reply: `<class 'TYPE'>:<'MESSAGE'>`, the reference's pattern
    /// (`str(type(e)) + ":<'" + str(e) + "'>"`).
    pub fn reason(&self) -> String {
        format!("<class '{}'>:<'{}'>", self.type_name, self.message)
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.type_name, self.message)
    }
}

impl std::error::Error for AppError {}

impl From<CompatError> for AppError {
    fn from(error: CompatError) -> Self {
        Self::with_type("CompatError", error.to_string())
    }
}

impl From<NpyError> for AppError {
    fn from(error: NpyError) -> Self {
        Self::with_type("NpyError", error.to_string())
    }
}

impl From<String> for AppError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for AppError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}
