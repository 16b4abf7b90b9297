//! `Message` ↔ `TaskIns`/`TaskRes`, the reply rule and Flower's error codes, written once for
//! the app SDK, the SuperNode and the SuperLink's store (BEHAVIOR.md §9, PROTOCOL.md §4.5).
//!
//! The mapping is the reference's `flwr/common/serde.py` (`message_to_taskins`,
//! `message_from_taskins`, `message_to_taskres`, `message_from_taskres`); the reply metadata is
//! its `Message.create_reply`/`create_error_reply` with the TTL cut of `_limit_task_res_ttl`.
//! Everything is pure: the current time is an argument.

use flwr_proto::{Error, Message, Metadata, Node, RecordSet, Task, TaskIns, TaskRes};

/// Time-to-live of a ServerApp message unless the app sets one (seconds; `DEFAULT_TTL`).
pub const DEFAULT_TTL: f64 = 3600.0;

/// How far (seconds) a reply may outlive its instruction before its TTL is cut, or before the
/// SuperLink refuses it (`MESSAGE_TTL_TOLERANCE`).
pub const REPLY_TTL_TOLERANCE: f64 = 0.1;

/// `Error.code` values (the reference's `ErrorCode`).
pub mod error_code {
    /// Unknown error.
    pub const UNKNOWN: i64 = 0;
    /// The ClientApp could not be loaded.
    pub const LOAD_CLIENT_APP_EXCEPTION: i64 = 1;
    /// The ClientApp (or running it) raised.
    pub const CLIENT_APP_RAISED_EXCEPTION: i64 = 2;
    /// The instruction is unknown or expired (the SuperLink's synthetic reply).
    pub const MESSAGE_UNAVAILABLE: i64 = 3;
    /// The reply expired (the SuperLink's synthetic reply).
    pub const REPLY_MESSAGE_UNAVAILABLE: i64 = 4;
}

/// `Error.reason` the reference uses with [`error_code::LOAD_CLIENT_APP_EXCEPTION`].
pub const LOAD_CLIENT_APP_REASON: &str =
    "An exception was raised when attempting to load `ClientApp`";

/// `Error.reason` of the SuperLink's reply for an unknown or expired instruction.
pub const MESSAGE_UNAVAILABLE_REASON: &str = "Error: Message Unavailable - The requested message \
     could not be found in the database. It may have expired due to its TTL or never existed.";

/// `Error.reason` of the SuperLink's reply that replaces an expired reply.
pub const REPLY_MESSAGE_UNAVAILABLE_REASON: &str =
    "Error: Reply Message Unavailable - The reply message has expired.";

/// The reference's error reason for an exception: `str(type(e)) + ":<'" + str(e) + "'>"`, e.g.
/// `exception_reason("RuntimeError", "boom")` is `<class 'RuntimeError'>:<'boom'>`.
pub fn exception_reason(class: &str, text: &str) -> String {
    format!("<class '{class}'>:<'{text}'>")
}

/// A `TaskIns`/`TaskRes` without its `task`, which carries everything but the ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`task` is not set")]
pub struct MissingTask;

/// A message taken apart, with metadata that is always there: what a task carries.
///
/// `flwr.proto.Message` has optional metadata; this type is what remains once that is settled.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parts {
    /// Routing fields.
    pub metadata: Metadata,
    /// Records; `None` for an error message.
    pub content: Option<RecordSet>,
    /// What went wrong; `None` for a message with content.
    pub error: Option<Error>,
}

impl From<Parts> for Message {
    fn from(parts: Parts) -> Self {
        Self {
            metadata: Some(parts.metadata),
            content: parts.content,
            error: parts.error,
        }
    }
}

/// The `TaskIns` a ServerApp pushes for a message (`message_to_taskins`): no task id, producer
/// `{0, anonymous}`, consumer `{dst_node_id, not anonymous}`; `message_id` and `src_node_id`
/// are not carried.
pub fn task_ins(parts: Parts) -> TaskIns {
    let consumer = named(parts.metadata.dst_node_id);
    let (group_id, run_id, task) = task_of(parts, anonymous_server(), consumer);
    TaskIns {
        task_id: String::new(),
        group_id,
        run_id,
        task: Some(task),
    }
}

/// The `TaskRes` a SuperNode pushes for a reply (`message_to_taskres`): no task id, producer
/// `{src_node_id, not anonymous}`, consumer the anonymous ServerApp `{0, anonymous}`.
pub fn task_res(parts: Parts) -> TaskRes {
    let producer = named(parts.metadata.src_node_id);
    let (group_id, run_id, task) = task_of(parts, producer, anonymous_server());
    TaskRes {
        task_id: String::new(),
        group_id,
        run_id,
        task: Some(task),
    }
}

/// The group id, run id and `Task` both directions share; only who sends and who receives
/// differ.
fn task_of(parts: Parts, producer: Node, consumer: Node) -> (String, u64, Task) {
    let metadata = parts.metadata;
    let task = Task {
        producer: Some(producer),
        consumer: Some(consumer),
        created_at: metadata.created_at,
        delivered_at: String::new(),
        pushed_at: 0.0,
        ttl: metadata.ttl,
        ancestry: ancestry(metadata.reply_to_message),
        task_type: metadata.message_type,
        recordset: parts.content,
        error: parts.error,
    };
    (metadata.group_id, metadata.run_id, task)
}

/// A SuperNode as a task names it.
fn named(node_id: u64) -> Node {
    Node {
        node_id,
        anonymous: false,
    }
}

/// The ServerApp as a task names it: `{0, anonymous}`.
fn anonymous_server() -> Node {
    Node {
        node_id: 0,
        anonymous: true,
    }
}

/// The message a ClientApp sees for a pulled `TaskIns` (`message_from_taskins`);
/// `delivered_at` and `pushed_at` are dropped.
///
/// # Errors
///
/// [`MissingTask`] when the `TaskIns` has no `task`.
pub fn from_task_ins(task_ins: TaskIns) -> Result<Parts, MissingTask> {
    let task = task_ins.task.ok_or(MissingTask)?;
    Ok(from_task(
        task_ins.task_id,
        task_ins.group_id,
        task_ins.run_id,
        task,
    ))
}

/// The message a ServerApp reads from a pulled `TaskRes` (`message_from_taskres`).
///
/// # Errors
///
/// [`MissingTask`] when the `TaskRes` has no `task`.
pub fn from_task_res(task_res: TaskRes) -> Result<Parts, MissingTask> {
    let task = task_res.task.ok_or(MissingTask)?;
    Ok(from_task(
        task_res.task_id,
        task_res.group_id,
        task_res.run_id,
        task,
    ))
}

/// Metadata of a reply to `incoming` created at `created_at` (unix seconds), as the
/// reference's `create_reply`/`create_error_reply` without an explicit TTL: same run, group and
/// type; source and destination swapped; `reply_to_message` the instruction's id; an empty id;
/// and the TTL left of the instruction's, so that the reply expires with it (BEHAVIOR.md §9.3).
pub fn reply_metadata(incoming: &Metadata, created_at: f64) -> Metadata {
    let mut ttl = incoming.ttl - (created_at - incoming.created_at);
    // `_limit_task_res_ttl`: with the TTL computed above this only differs by rounding, but it
    // is kept so that the float result is the reference's.
    let max_allowed = incoming.created_at + incoming.ttl - created_at;
    if ttl - max_allowed > REPLY_TTL_TOLERANCE {
        ttl = max_allowed;
    }
    Metadata {
        run_id: incoming.run_id,
        message_id: String::new(),
        src_node_id: incoming.dst_node_id,
        dst_node_id: incoming.src_node_id,
        reply_to_message: incoming.message_id.clone(),
        group_id: incoming.group_id.clone(),
        ttl,
        message_type: incoming.message_type.clone(),
        created_at,
    }
}

/// An error reply to `incoming` created at `created_at` (`create_error_reply`).
pub fn error_reply(incoming: &Metadata, code: i64, reason: String, created_at: f64) -> Parts {
    Parts {
        metadata: reply_metadata(incoming, created_at),
        content: None,
        error: Some(Error { code, reason }),
    }
}

/// Seconds until the instruction expires, seen at `now` (negative once expired).
pub fn remaining_ttl(incoming: &Metadata, now: f64) -> f64 {
    incoming.created_at + incoming.ttl - now
}

fn from_task(message_id: String, group_id: String, run_id: u64, task: Task) -> Parts {
    let node_id = |node: Option<Node>| node.map_or(0, |node| node.node_id);
    Parts {
        metadata: Metadata {
            run_id,
            message_id,
            src_node_id: node_id(task.producer),
            dst_node_id: node_id(task.consumer),
            reply_to_message: task.ancestry.into_iter().next().unwrap_or_default(),
            group_id,
            ttl: task.ttl,
            message_type: task.task_type,
            created_at: task.created_at,
        },
        content: task.recordset,
        error: task.error,
    }
}

/// `[reply_to_message]`, or nothing for an instruction.
fn ancestry(reply_to_message: String) -> Vec<String> {
    if reply_to_message.is_empty() {
        Vec::new()
    } else {
        vec![reply_to_message]
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn instruction(node_id: u64, created_at: f64, ttl: f64) -> TaskIns {
        TaskIns {
            task_id: "7d8b0c2e-0000-4000-8000-000000000001".into(),
            group_id: "3".into(),
            run_id: 7,
            task: Some(Task {
                producer: Some(Node {
                    node_id: 0,
                    anonymous: true,
                }),
                consumer: Some(Node {
                    node_id,
                    anonymous: false,
                }),
                created_at,
                delivered_at: "2024-10-01T00:00:00+00:00".into(),
                pushed_at: created_at + 0.5,
                ttl,
                ancestry: Vec::new(),
                task_type: "train".into(),
                recordset: Some(RecordSet::default()),
                error: None,
            }),
        }
    }

    #[test]
    fn task_ins_round_trips_through_a_message() {
        let ins = instruction(42, 1_730_000_000.25, DEFAULT_TTL);
        let parts = from_task_ins(ins.clone()).unwrap();
        assert_eq!(parts.metadata.message_id, ins.task_id);
        assert_eq!(parts.metadata.dst_node_id, 42);
        assert_eq!(parts.metadata.reply_to_message, "");
        let again = task_ins(parts);
        let (Some(sent), Some(original)) = (again.task, ins.task) else {
            panic!("tasks");
        };
        assert_eq!(again.task_id, "");
        assert_eq!(sent.delivered_at, "");
        assert_eq!(sent.pushed_at, 0.0);
        assert_eq!(
            Task {
                delivered_at: original.delivered_at.clone(),
                pushed_at: original.pushed_at,
                ..sent
            },
            original
        );
        assert_eq!(
            from_task_ins(TaskIns::default()),
            Err(MissingTask),
            "a TaskIns without a task"
        );
    }

    #[test]
    fn reply_becomes_a_task_res() {
        let incoming = from_task_ins(instruction(42, 1_730_000_000.0, 3600.0))
            .unwrap()
            .metadata;
        let reply = error_reply(
            &incoming,
            error_code::CLIENT_APP_RAISED_EXCEPTION,
            exception_reason("RuntimeError", "boom"),
            1_730_000_010.0,
        );
        assert_eq!(reply.metadata.ttl, 3590.0);
        let res = task_res(reply.clone());
        let task = res.task.clone().unwrap();
        assert_eq!(
            (task.producer, task.consumer),
            (
                Some(Node {
                    node_id: 42,
                    anonymous: false
                }),
                Some(Node {
                    node_id: 0,
                    anonymous: true
                })
            )
        );
        assert_eq!(task.ancestry, vec![incoming.message_id.clone()]);
        assert_eq!(
            task.error.map(|e| e.reason),
            Some("<class 'RuntimeError'>:<'boom'>".to_owned())
        );
        assert_eq!(from_task_res(res), Ok(reply));
    }

    proptest! {
        // A reply expires together with its instruction, whenever it is created.
        #[test]
        fn reply_expires_with_its_instruction(
            created_at in 1.7e9_f64..1.8e9,
            ttl in 1.0_f64..1e5,
            delay in 0.0_f64..2e5,
        ) {
            let incoming = from_task_ins(instruction(1, created_at, ttl)).unwrap().metadata;
            let reply = reply_metadata(&incoming, created_at + delay);
            let gap = (reply.created_at + reply.ttl) - (created_at + ttl);
            prop_assert!(gap.abs() < 1e-6, "gap {}", gap);
            prop_assert_eq!(reply.src_node_id, 1);
            prop_assert_eq!(reply.dst_node_id, 0);
        }
    }
}
