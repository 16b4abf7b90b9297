//! TaskIns/TaskRes rules shared by every store (BEHAVIOR.md §6), sans-IO: validation, UUID
//! parsing, reply acceptance and the synthetic error replies.

use flwr_proto::{Error, Node, Task, TaskIns, TaskRes};
use uuid::Uuid;

use crate::StateError;

/// No task may claim to be older than 2024-03-27T00:00:00Z (unix seconds).
pub const MIN_TIMESTAMP: f64 = 1_711_497_600.0;

pub use flwr_core::message::error_code::{MESSAGE_UNAVAILABLE, REPLY_MESSAGE_UNAVAILABLE};
pub use flwr_core::message::{
    MESSAGE_UNAVAILABLE_REASON, REPLY_MESSAGE_UNAVAILABLE_REASON, REPLY_TTL_TOLERANCE,
};

/// Why a store refused a whole `PushTaskIns` batch; none of it was stored.
///
/// The texts are the reference's; the ServerAppIo handler sends them as
/// `Malformed PushTaskInsRequest: <text>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskInsRejection {
    /// The batch is empty.
    #[error("`task_ins_list` must not be empty")]
    Empty,
    /// A TaskIns fails validation (BEHAVIOR.md §6.1): its problems, in order.
    #[error("{}", .0.join(", "))]
    Invalid(Vec<String>),
    /// A TaskIns belongs to another run than the request.
    #[error("`task_ins` has mismatched `run_id`")]
    MismatchedRunId,
}

/// Why a store dropped one TaskIns of an accepted batch; the response carries an empty id for
/// it, as the reference's `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskInsDropped {
    /// The run is unknown, or the TaskIns is for a named node that is not registered (the
    /// reference's `Invalid run ID` and `Invalid destination node ID`).
    #[error("run {run_id} or destination node {node_id} not found")]
    NotFound {
        /// The TaskIns's run.
        run_id: u64,
        /// Its consumer's node id (0: anonymous).
        node_id: u64,
    },
}

/// Why [`LinkState::store_task_ins`](crate::LinkState::store_task_ins) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushTaskInsError {
    /// The batch was refused as a whole.
    #[error(transparent)]
    Rejected(#[from] TaskInsRejection),
    /// The store failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// The problems that make a TaskIns invalid (BEHAVIOR.md §6.1); empty means valid.
///
/// Checks `task.pushed_at` as given: the stores set it to `now` before validating. `now` is unix
/// seconds. [`TaskInsRejection::Invalid`] comma-joins the texts.
pub fn validate_task_ins(task_ins: &TaskIns, now: f64) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(task) = &task_ins.task else {
        return vec!["`task` is not set".to_owned()];
    };
    validate_common(&task_ins.task_id, task, now, &mut errors);
    match &task.producer {
        None => errors.push("`producer` is not set".to_owned()),
        Some(producer) => {
            if producer.node_id != 0 {
                errors.push("`producer.node_id` must be 0".to_owned());
            }
            if !producer.anonymous {
                errors.push("`producer` must be anonymous".to_owned());
            }
        }
    }
    if !task.ancestry.is_empty() {
        errors.push("`ancestry` must be empty".to_owned());
    }
    errors
}

/// The problems that make a TaskRes invalid (BEHAVIOR.md §6.1); empty means valid.
///
/// Like [`validate_task_ins`], `task.pushed_at` is checked as given.
pub fn validate_task_res(task_res: &TaskRes, now: f64) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(task) = &task_res.task else {
        return vec!["`task` is not set".to_owned()];
    };
    validate_common(&task_res.task_id, task, now, &mut errors);
    match &task.producer {
        None => errors.push("`producer` is not set".to_owned()),
        Some(producer) => check_node("producer", producer, &mut errors),
    }
    if task.ancestry.is_empty() {
        errors.push("`ancestry` must not be empty".to_owned());
    }
    errors
}

/// Checks shared by TaskIns and TaskRes.
fn validate_common(task_id: &str, task: &Task, now: f64, errors: &mut Vec<String>) {
    if !task_id.is_empty() {
        errors.push("`task_id` must be empty".to_owned());
    }
    if task.created_at < MIN_TIMESTAMP {
        errors.push("`created_at` is before 2024-03-27T00:00:00Z".to_owned());
    }
    if !task.delivered_at.is_empty() {
        errors.push("`delivered_at` must be empty".to_owned());
    }
    if task.ttl <= 0.0 {
        errors.push("`ttl` must be positive".to_owned());
    }
    if task.pushed_at < MIN_TIMESTAMP {
        errors.push("`pushed_at` is before 2024-03-27T00:00:00Z".to_owned());
    }
    if task.created_at + task.ttl <= now {
        errors.push("task has already expired".to_owned());
    }
    if task.task_type.is_empty() {
        errors.push("`task_type` must not be empty".to_owned());
    }
    match (&task.recordset, &task.error) {
        (Some(_), Some(_)) => errors.push("only one of `recordset` or `error` may be set".into()),
        (None, None) => errors.push("one of `recordset` or `error` must be set".to_owned()),
        _ => {}
    }
    match &task.consumer {
        None => errors.push("`consumer` is not set".to_owned()),
        Some(consumer) => check_node("consumer", consumer, errors),
    }
}

/// An anonymous node must have id 0, a named one must not.
fn check_node(role: &str, node: &Node, errors: &mut Vec<String>) {
    if node.anonymous && node.node_id != 0 {
        errors.push(format!("anonymous `{role}` must have `node_id` 0"));
    }
    if !node.anonymous && node.node_id == 0 {
        errors.push(format!(
            "non-anonymous `{role}` must have a non-zero `node_id`"
        ));
    }
}

/// Stores a `PushTaskIns` batch for `run_id` the way the reference's handler and store do
/// together: stamps every `pushed_at` with `now` (BEHAVIOR.md §6.1), refuses the whole batch if
/// it is empty or any TaskIns is invalid or of another run, then hands each TaskIns to `insert`
/// in order. `insert` checks the run and the consumer and returns the new id, or `None` when
/// either is unknown.
///
/// # Errors
///
/// [`PushTaskInsError::Rejected`] before anything is stored; [`PushTaskInsError::State`] when
/// `insert` fails (the TaskIns before it stay stored).
pub(crate) fn store_task_ins_batch(
    run_id: u64,
    mut task_ins_list: Vec<TaskIns>,
    now: f64,
    mut insert: impl FnMut(TaskIns) -> Result<Option<String>, StateError>,
) -> Result<Vec<Result<String, TaskInsDropped>>, PushTaskInsError> {
    for task_ins in &mut task_ins_list {
        if let Some(task) = task_ins.task.as_mut() {
            task.pushed_at = now;
        }
    }
    if task_ins_list.is_empty() {
        return Err(TaskInsRejection::Empty.into());
    }
    for task_ins in &task_ins_list {
        let errors = validate_task_ins(task_ins, now);
        if !errors.is_empty() {
            return Err(TaskInsRejection::Invalid(errors).into());
        }
        if task_ins.run_id != run_id {
            return Err(TaskInsRejection::MismatchedRunId.into());
        }
    }
    let mut outcomes = Vec::with_capacity(task_ins_list.len());
    for task_ins in task_ins_list {
        let dropped = TaskInsDropped::NotFound {
            run_id: task_ins.run_id,
            node_id: task_ins
                .task
                .as_ref()
                .and_then(|task| task.consumer)
                .map_or(0, |node| node.node_id),
        };
        outcomes.push(insert(task_ins)?.ok_or(dropped));
    }
    Ok(outcomes)
}

/// Stamps `pushed_at = now`, validates (BEHAVIOR.md §6.2 step 1) and parses the instruction id
/// in `ancestry[0]` (step 2); `None` when validation rejects the TaskRes.
///
/// # Errors
///
/// [`StateError::InvalidUuid`] for a malformed ancestry id, as the reference raises there.
pub fn accept_task_res(task_res: &mut TaskRes, now: f64) -> Result<Option<Uuid>, StateError> {
    if let Some(task) = task_res.task.as_mut() {
        task.pushed_at = now;
    }
    if !validate_task_res(task_res, now).is_empty() {
        return Ok(None);
    }
    let ancestor = task_res
        .task
        .as_ref()
        .and_then(|task| task.ancestry.first());
    parse_task_id(ancestor.map_or("", String::as_str)).map(Some)
}

/// Parses a task id the way Python's `uuid.UUID(text)` does: `urn:`/`uuid:` prefixes, braces
/// and hyphens are ignored, and 32 hex digits must remain.
///
/// # Errors
///
/// [`StateError::InvalidUuid`] carrying `text`.
pub fn parse_task_id(text: &str) -> Result<Uuid, StateError> {
    let stripped = text.replace("urn:", "").replace("uuid:", "");
    let digits = stripped.trim_matches(['{', '}']).replace('-', "");
    if digits.len() != 32 || !digits.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(StateError::InvalidUuid(text.to_owned()));
    }
    u128::from_str_radix(&digits, 16)
        .map(Uuid::from_u128)
        .map_err(|_| StateError::InvalidUuid(text.to_owned()))
}

/// The distinct task ids of a `PullTaskRes`, in request order (duplicates count once), in
/// time linear in their number.
///
/// # Errors
///
/// [`StateError::InvalidUuid`] for the first id that is not a UUID.
pub fn distinct_task_ids(task_ids: &[String]) -> Result<Vec<Uuid>, StateError> {
    let mut seen = std::collections::HashSet::with_capacity(task_ids.len());
    let mut ids = Vec::with_capacity(task_ids.len());
    for text in task_ids {
        let id = parse_task_id(text)?;
        if seen.insert(id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// A fresh task id: UUID4 in canonical hyphenated lowercase form.
pub fn new_task_id() -> String {
    Uuid::new_v4().hyphenated().to_string()
}

/// Whether a TaskIns may no longer be delivered to a node: `created_at + ttl <= now`.
pub fn expired_for_delivery(task: &Task, now: f64) -> bool {
    task.created_at + task.ttl <= now
}

/// Whether a stored task counts as expired when results are pulled (BEHAVIOR.md §6.3):
/// `created_at + ttl < now`.
pub fn expired_for_results(task: &Task, now: f64) -> bool {
    task.created_at + task.ttl < now
}

/// Steps 3–5 of storing a TaskRes (BEHAVIOR.md §6.2), given the TaskIns it answers: the
/// producer matches the instruction's consumer (unless either side is anonymous), the
/// instruction has not expired, and the reply does not outlive it by more than
/// [`REPLY_TTL_TOLERANCE`]. Assumes both passed validation.
pub fn reply_fits_instruction(task_ins: &TaskIns, task_res: &TaskRes, now: f64) -> bool {
    let (Some(ins), Some(res)) = (&task_ins.task, &task_res.task) else {
        return false;
    };
    let (Some(consumer), Some(producer)) = (&ins.consumer, &res.producer) else {
        return false;
    };
    if !consumer.anonymous && !producer.anonymous && consumer.node_id != producer.node_id {
        return false;
    }
    if ins.created_at + ins.ttl <= now {
        return false;
    }
    let overshoot = res.ttl - (ins.created_at + ins.ttl - res.created_at);
    overshoot <= REPLY_TTL_TOLERANCE
}

/// The synthetic reply for a TaskIns that is unknown or expired (BEHAVIOR.md §6.3): run id 0,
/// producer and consumer `{0, false}`, TTL 0, error code [`MESSAGE_UNAVAILABLE`].
pub fn message_unavailable_reply(task_ins_id: &str, now: f64) -> TaskRes {
    let named_zero = Node {
        node_id: 0,
        anonymous: false,
    };
    TaskRes {
        task_id: new_task_id(),
        group_id: String::new(),
        run_id: 0,
        task: Some(Task {
            producer: Some(named_zero),
            consumer: Some(named_zero),
            created_at: now,
            ttl: 0.0,
            ancestry: vec![task_ins_id.to_owned()],
            error: Some(Error {
                code: MESSAGE_UNAVAILABLE,
                reason: MESSAGE_UNAVAILABLE_REASON.to_owned(),
            }),
            ..Task::default()
        }),
    }
}

/// The synthetic reply that replaces an expired TaskRes (BEHAVIOR.md §6.3): the instruction's
/// group, run and task type, its remaining TTL (at least 0), sent from its consumer to its
/// producer, error code [`REPLY_MESSAGE_UNAVAILABLE`].
pub fn reply_unavailable_reply(task_ins: &TaskIns, now: f64) -> TaskRes {
    let ins = task_ins.task.clone().unwrap_or_default();
    let node_of = |node: Option<Node>| Node {
        node_id: node.map_or(0, |node| node.node_id),
        anonymous: false,
    };
    TaskRes {
        task_id: new_task_id(),
        group_id: task_ins.group_id.clone(),
        run_id: task_ins.run_id,
        task: Some(Task {
            producer: Some(node_of(ins.consumer)),
            consumer: Some(node_of(ins.producer)),
            created_at: now,
            ttl: (ins.ttl - (now - ins.created_at)).max(0.0),
            ancestry: vec![task_ins.task_id.clone()],
            task_type: ins.task_type,
            error: Some(Error {
                code: REPLY_MESSAGE_UNAVAILABLE,
                reason: REPLY_MESSAGE_UNAVAILABLE_REASON.to_owned(),
            }),
            ..Task::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uuids_like_python() {
        let canonical = "6f1c6a9e-3b1f-4d2c-9a51-0f3c2b1d4e5f";
        let want = Uuid::parse_str(canonical).unwrap();
        for text in [
            canonical,
            "6F1C6A9E3B1F4D2C9A510F3C2B1D4E5F",
            "{6f1c6a9e-3b1f-4d2c-9a51-0f3c2b1d4e5f}",
            "urn:uuid:6f1c6a9e-3b1f-4d2c-9a51-0f3c2b1d4e5f",
        ] {
            assert_eq!(parse_task_id(text).unwrap(), want, "{text}");
        }
        for text in [
            "",
            "nope",
            "6f1c6a9e-3b1f-4d2c-9a51-0f3c2b1d4e5",
            "+f1c6a9e3b1f4d2c9a510f3c2b1d4e5f",
        ] {
            let err = parse_task_id(text).unwrap_err();
            assert_eq!(err.to_string(), "badly formed hexadecimal UUID string");
        }
    }

    #[test]
    fn new_ids_are_canonical_v4() {
        let id = new_task_id();
        let parsed = Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(parsed.hyphenated().to_string(), id);
    }
}
