//! The error type of every [`LinkState`](crate::LinkState) method.

/// Why a [`LinkState`](crate::LinkState) call failed.
///
/// Rejections that the reference reports as a plain `None`/`False` (an invalid TaskRes, an
/// invalid run status transition) are *not* errors: they are `Ok(None)` / `Ok(false)`. A
/// refused TaskIns batch has its own error, [`PushTaskInsError`](crate::task::PushTaskInsError).
/// Messages are lowercase; the gRPC layer builds the reference's wording itself (for example
/// `Node <id> not found` for [`StateError::NodeNotFound`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A stored protobuf blob (SQLite store) could not be decoded.
    #[error("stored record is corrupt")]
    CorruptRecord(#[from] prost::DecodeError),
    /// No free random id was found after many attempts (practically unreachable).
    #[error("could not allocate a fresh random id")]
    IdSpaceExhausted,
    /// A task id or `ancestry[0]` is not a UUID. The text is the reference's Python message,
    /// which the gRPC layer sends as `Exception calling application: <message>`.
    #[error("badly formed hexadecimal UUID string")]
    InvalidUuid(String),
    /// The node id is not registered.
    #[error("node {0} not found")]
    NodeNotFound(u64),
    /// `create_node` was given a public key that is already bound to this node id.
    #[error("public key is already bound to node {0}")]
    PublicKeyInUse(u64),
    /// The run id is unknown.
    #[error("run {0} not found")]
    RunNotFound(u64),
    /// The PostgreSQL database failed (the text never holds the connection's password).
    #[error("postgresql storage error: {0}")]
    Postgres(String),
    /// The SQLite database failed.
    #[error("sqlite storage error")]
    Storage(#[from] rusqlite::Error),
    /// The SQLite database was written by a newer schema version than this build knows.
    #[error("database schema version {0} is newer than this build supports")]
    UnsupportedSchema(i64),
}
