//! The SuperLink's LinkState: runs, nodes, tasks, ServerApp contexts and logs, plus FAB
//! storage (BEHAVIOR.md §4–§8, AUTH.md §7–§8).
//!
//! # Layout
//!
//! - [`LinkState`]: the synchronous store trait the SuperLink services program against
//!   (from `spawn_blocking` when [`LinkState::blocks`]); [`StateError`] is its error type;
//!   [`TaskCounts`] and [`NodeCounts`] are its cheap size reports.
//! - [`InMemoryLinkState`]: the default store, in process memory.
//! - [`SqliteLinkState`]: a persistent store in one SQLite database (`--database <path>`
//!   or `:memory:`), schema in `migrations/`.
//! - [`PostgresLinkState`]: a store in PostgreSQL that several SuperLink replicas share, schema
//!   in `migrations/postgres/`.
//! - [`lifecycle`]: the sans-IO run status machine: allowed transitions, run guards and their
//!   `PERMISSION_DENIED` texts, status string constants.
//! - [`task`]: sans-IO TaskIns/TaskRes rules: validation texts, typed refusals of a TaskIns
//!   batch ([`TaskInsRejection`], [`TaskInsDropped`]), Python-compatible UUID parsing, reply
//!   acceptance and the synthetic "message unavailable" replies.
//! - [`Ffs`]: FAB storage, content-addressed by SHA-256, refusing non-hash names.
//! - [`Clock`], [`SystemClock`], [`ManualClock`]: injected time; [`isoformat`] formats it
//!   like Python's `datetime.isoformat()`.
//!
//! Both stores implement the intended (reference in-memory) semantics, without the
//! reference's bugs listed in BEHAVIOR.md §8.3.

mod clock;
mod content;
mod error;
pub mod ffs;
pub mod lifecycle;
mod link_state;
mod memory;
pub mod postgres;
mod sqlite;
pub mod task;

pub use clock::{isoformat, Clock, ManualClock, SystemClock};
pub use error::StateError;
pub use ffs::{Ffs, FfsError};
pub use lifecycle::{guard_denial, transition_allowed, Guard};
pub use link_state::{
    Change, ChangeSink, FabStore, LinkState, NodeCounts, TaskCounts, LOG_TIMESTAMP_EPSILON,
};
pub use memory::InMemoryLinkState;
pub use postgres::PostgresLinkState;
pub use sqlite::SqliteLinkState;
pub use task::{
    message_unavailable_reply, parse_task_id, reply_unavailable_reply, validate_task_ins,
    validate_task_res, PushTaskInsError, TaskInsDropped, TaskInsRejection,
};

/// Attempts at drawing an unused random id before giving up.
const ID_ATTEMPTS: usize = 64;

/// A random non-zero u64 for which `taken` is false (0 means "anonymous" on the wire).
fn fresh_id(mut taken: impl FnMut(u64) -> Result<bool, StateError>) -> Result<u64, StateError> {
    for _ in 0..ID_ATTEMPTS {
        let id: u64 = rand::random();
        if id != 0 && !taken(id)? {
            return Ok(id);
        }
    }
    Err(StateError::IdSpaceExhausted)
}
