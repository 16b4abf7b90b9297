//! `TaskIns` → `Message` → `TaskRes`, the way the reference SuperNode maps them
//! (BEHAVIOR.md §9, PROTOCOL.md §4.5), plus reply validation and error replies (§2.6, §9.3).
//!
//! All functions are pure; the current time is an argument.

use flwr_proto::{Error, Message, Metadata, Node, Task, TaskIns, TaskRes};

/// `Error.code` when loading the ClientApp failed.
pub const LOAD_CLIENT_APP_EXCEPTION: i64 = 1;

/// `Error.code` when the ClientApp (or running it) raised.
pub const CLIENT_APP_RAISED_EXCEPTION: i64 = 2;

/// `Error.reason` the reference uses for [`LOAD_CLIENT_APP_EXCEPTION`].
pub const LOAD_CLIENT_APP_REASON: &str =
    "An exception was raised when attempting to load `ClientApp`";

/// Message type of the legacy reconnect control message, which nothing in 1.14 sends.
pub const RECONNECT_MESSAGE_TYPE: &str = "reconnect";

/// Whether a pulled `TaskIns` is for this node and carries content; the reference silently drops
/// any other (error-only instructions, or ones addressed elsewhere).
pub fn is_usable(ins: &TaskIns, own_node_id: u64) -> bool {
    let Some(task) = &ins.task else {
        return false;
    };
    let consumer = task.consumer.as_ref().map_or(0, |node| node.node_id);
    consumer == own_node_id && task.recordset.is_some()
}

/// The `Message` a ClientApp sees for `ins` (§9.1). `delivered_at` and `pushed_at` are dropped.
pub fn message_from_task_ins(ins: &TaskIns) -> Message {
    let task = ins.task.clone().unwrap_or_default();
    let node_id = |node: &Option<Node>| node.as_ref().map_or(0, |n| n.node_id);
    Message {
        metadata: Some(Metadata {
            run_id: ins.run_id,
            message_id: ins.task_id.clone(),
            src_node_id: node_id(&task.producer),
            dst_node_id: node_id(&task.consumer),
            reply_to_message: task.ancestry.first().cloned().unwrap_or_default(),
            group_id: ins.group_id.clone(),
            ttl: task.ttl,
            message_type: task.task_type,
            created_at: task.created_at,
        }),
        content: task.recordset,
        error: task.error,
    }
}

/// The `TaskRes` carrying `reply` (§9.2): producer is the replying node, consumer the anonymous
/// driver (node 0), ancestry the instruction's id, and the reply's own `created_at` and `ttl`.
pub fn task_res_from_message(reply: &Message) -> TaskRes {
    let metadata = reply.metadata.clone().unwrap_or_default();
    let ancestry = if metadata.reply_to_message.is_empty() {
        Vec::new()
    } else {
        vec![metadata.reply_to_message]
    };
    TaskRes {
        task_id: String::new(),
        group_id: metadata.group_id,
        run_id: metadata.run_id,
        task: Some(Task {
            producer: Some(Node {
                node_id: metadata.src_node_id,
                anonymous: false,
            }),
            consumer: Some(Node {
                node_id: 0,
                anonymous: true,
            }),
            created_at: metadata.created_at,
            delivered_at: String::new(),
            pushed_at: 0.0,
            ttl: metadata.ttl,
            ancestry,
            task_type: metadata.message_type,
            recordset: reply.content.clone(),
            error: reply.error.clone(),
        }),
    }
}

/// Metadata of a reply to `incoming` created at `now` (unix seconds): ids swapped, `ttl` what is
/// left of the instruction's, so the reply expires with it.
pub fn reply_metadata(incoming: &Metadata, now: f64) -> Metadata {
    Metadata {
        run_id: incoming.run_id,
        message_id: String::new(),
        src_node_id: incoming.dst_node_id,
        dst_node_id: incoming.src_node_id,
        reply_to_message: incoming.message_id.clone(),
        group_id: incoming.group_id.clone(),
        ttl: incoming.ttl - (now - incoming.created_at),
        message_type: incoming.message_type.clone(),
        created_at: now,
    }
}

/// An error reply to `incoming` created at `now` (the reference's `create_error_reply`).
pub fn error_reply(incoming: &Metadata, code: i64, reason: String, now: f64) -> Message {
    Message {
        metadata: Some(reply_metadata(incoming, now)),
        content: None,
        error: Some(Error { code, reason }),
    }
}

/// The reference's error reason for an exception: `str(type(e)) + ":<'" + str(e) + "'>"`, e.g.
/// `exception_reason("RuntimeError", "boom")` is `<class 'RuntimeError'>:<'boom'>`.
pub fn exception_reason(class: &str, text: &str) -> String {
    format!("<class '{class}'>:<'{text}'>")
}

/// Why a reply may not be sent for an instruction (§9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidReply {
    /// The reply has no metadata at all.
    #[error("reply has no metadata")]
    MissingMetadata,
    /// Content and error are both set, or neither is.
    #[error("reply must carry exactly one of content and error")]
    ContentAndError,
    /// `run_id` differs.
    #[error("reply run_id differs")]
    RunId,
    /// `message_id` is not empty (the SuperLink assigns it).
    #[error("reply message_id is not empty")]
    MessageId,
    /// Source and destination are not the instruction's, swapped.
    #[error("reply src/dst node ids are not the instruction's swapped")]
    Nodes,
    /// `reply_to_message` is not the instruction's id.
    #[error("reply_to_message is not the instruction's id")]
    ReplyTo,
    /// `group_id` differs.
    #[error("reply group_id differs")]
    GroupId,
    /// `message_type` differs.
    #[error("reply message_type differs")]
    MessageType,
    /// The reply was not created after the instruction.
    #[error("reply created_at is not after the instruction's")]
    CreatedAt,
}

/// Checks a ClientApp's reply against the instruction's metadata, as the reference does before
/// sending; an invalid reply is dropped (logged as `Invalid out message`).
///
/// # Errors
///
/// The first rule of §9.3 the reply breaks.
pub fn validate_reply(reply: &Message, incoming: &Metadata) -> Result<(), InvalidReply> {
    let out = reply
        .metadata
        .as_ref()
        .ok_or(InvalidReply::MissingMetadata)?;
    if reply.content.is_some() == reply.error.is_some() {
        return Err(InvalidReply::ContentAndError);
    }
    let checks = [
        (out.run_id == incoming.run_id, InvalidReply::RunId),
        (out.message_id.is_empty(), InvalidReply::MessageId),
        (
            out.src_node_id == incoming.dst_node_id && out.dst_node_id == incoming.src_node_id,
            InvalidReply::Nodes,
        ),
        (
            out.reply_to_message == incoming.message_id,
            InvalidReply::ReplyTo,
        ),
        (out.group_id == incoming.group_id, InvalidReply::GroupId),
        (
            out.message_type == incoming.message_type,
            InvalidReply::MessageType,
        ),
        (
            out.created_at > incoming.created_at,
            InvalidReply::CreatedAt,
        ),
    ];
    match checks.into_iter().find(|(ok, _)| !ok) {
        Some((_, error)) => Err(error),
        None => Ok(()),
    }
}

/// Seconds until the instruction expires, seen at `now` (negative once expired).
pub fn remaining_ttl(incoming: &Metadata, now: f64) -> f64 {
    incoming.created_at + incoming.ttl - now
}

/// The current time as unix seconds, the unit of `created_at`.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use flwr_proto::{configs_record_value, ConfigsRecord, ConfigsRecordValue, RecordSet};
    use proptest::prelude::*;

    use super::*;

    fn recordset(key: &str) -> RecordSet {
        RecordSet {
            configs: HashMap::from([(
                key.to_owned(),
                ConfigsRecord {
                    data: HashMap::from([(
                        "round".to_owned(),
                        ConfigsRecordValue {
                            value: Some(configs_record_value::Value::Sint64(1)),
                        },
                    )]),
                },
            )]),
            ..RecordSet::default()
        }
    }

    fn task_ins(node_id: u64, created_at: f64, ttl: f64) -> TaskIns {
        TaskIns {
            task_id: "7d8b0c2e-0000-4000-8000-000000000001".into(),
            group_id: "3".into(),
            run_id: 0xdead_beef_0000_0001,
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
                recordset: Some(recordset("config")),
                error: None,
            }),
        }
    }

    #[test]
    fn instruction_to_message() {
        let ins = task_ins(42, 1_730_000_000.25, 3600.0);
        let message = message_from_task_ins(&ins);
        let metadata = message.metadata.unwrap();
        assert_eq!(metadata.run_id, ins.run_id);
        assert_eq!(metadata.message_id, ins.task_id);
        assert_eq!(metadata.src_node_id, 0);
        assert_eq!(metadata.dst_node_id, 42);
        assert_eq!(metadata.reply_to_message, "");
        assert_eq!(metadata.group_id, "3");
        assert_eq!(metadata.ttl, 3600.0);
        assert_eq!(metadata.message_type, "train");
        assert_eq!(metadata.created_at, 1_730_000_000.25);
        assert_eq!(message.content, Some(recordset("config")));
        assert_eq!(message.error, None);
    }

    #[test]
    fn reply_to_task_res_shape() {
        let ins = task_ins(42, 1_730_000_000.0, 3600.0);
        let incoming = message_from_task_ins(&ins).metadata.unwrap();
        let now = 1_730_000_010.0;
        let reply = Message {
            metadata: Some(reply_metadata(&incoming, now)),
            content: Some(recordset("metrics")),
            error: None,
        };
        validate_reply(&reply, &incoming).unwrap();
        let res = task_res_from_message(&reply);
        assert_eq!(res.task_id, "");
        assert_eq!(res.group_id, "3");
        assert_eq!(res.run_id, ins.run_id);
        let task = res.task.unwrap();
        assert_eq!(
            task.producer,
            Some(Node {
                node_id: 42,
                anonymous: false
            })
        );
        assert_eq!(
            task.consumer,
            Some(Node {
                node_id: 0,
                anonymous: true
            })
        );
        assert_eq!(task.ancestry, vec![ins.task_id.clone()]);
        assert_eq!(task.created_at, now);
        assert_eq!(task.ttl, 3590.0);
        assert_eq!(task.task_type, "train");
        assert_eq!(task.delivered_at, "");
        assert_eq!(task.pushed_at, 0.0);
        assert_eq!(task.recordset, Some(recordset("metrics")));
        assert_eq!(task.error, None);
    }

    #[test]
    fn error_reply_shape() {
        let ins = task_ins(42, 1_730_000_000.0, 3600.0);
        let incoming = message_from_task_ins(&ins).metadata.unwrap();
        let reply = error_reply(
            &incoming,
            CLIENT_APP_RAISED_EXCEPTION,
            exception_reason("RuntimeError", "boom"),
            1_730_000_001.0,
        );
        validate_reply(&reply, &incoming).unwrap();
        let task = task_res_from_message(&reply).task.unwrap();
        assert_eq!(task.recordset, None);
        assert_eq!(
            task.error,
            Some(Error {
                code: 2,
                reason: "<class 'RuntimeError'>:<'boom'>".into()
            })
        );
    }

    #[test]
    fn invalid_replies_are_caught() {
        let ins = task_ins(42, 1_730_000_000.0, 3600.0);
        let incoming = message_from_task_ins(&ins).metadata.unwrap();
        let good = Message {
            metadata: Some(reply_metadata(&incoming, 1_730_000_001.0)),
            content: Some(RecordSet::default()),
            error: None,
        };
        let mutate = |f: &dyn Fn(&mut Message)| {
            let mut m = good.clone();
            f(&mut m);
            validate_reply(&m, &incoming)
        };
        assert_eq!(
            mutate(&|m| m.metadata = None),
            Err(InvalidReply::MissingMetadata)
        );
        assert_eq!(
            mutate(&|m| m.content = None),
            Err(InvalidReply::ContentAndError)
        );
        let meta = |f: fn(&mut Metadata)| {
            move |m: &mut Message| {
                if let Some(md) = m.metadata.as_mut() {
                    f(md);
                }
            }
        };
        assert_eq!(mutate(&meta(|md| md.run_id += 1)), Err(InvalidReply::RunId));
        assert_eq!(
            mutate(&meta(|md| md.message_id = "x".into())),
            Err(InvalidReply::MessageId)
        );
        assert_eq!(
            mutate(&meta(|md| md.src_node_id = 1)),
            Err(InvalidReply::Nodes)
        );
        assert_eq!(
            mutate(&meta(|md| md.reply_to_message = String::new())),
            Err(InvalidReply::ReplyTo)
        );
        assert_eq!(
            mutate(&meta(|md| md.group_id = "4".into())),
            Err(InvalidReply::GroupId)
        );
        assert_eq!(
            mutate(&meta(|md| md.message_type = "evaluate".into())),
            Err(InvalidReply::MessageType)
        );
        assert_eq!(
            mutate(&meta(|md| md.created_at = 1_730_000_000.0)),
            Err(InvalidReply::CreatedAt)
        );
    }

    #[test]
    fn usable_instructions() {
        let ins = task_ins(42, 1.0, 1.0);
        assert!(is_usable(&ins, 42));
        assert!(!is_usable(&ins, 43));
        let mut error_only = ins.clone();
        if let Some(task) = error_only.task.as_mut() {
            task.recordset = None;
            task.error = Some(Error::default());
        }
        assert!(!is_usable(&error_only, 42));
        assert!(!is_usable(&TaskIns { task: None, ..ins }, 42));
    }

    proptest! {
        // TaskIns → Message → reply → TaskRes keeps every id and the TTL budget, whatever the
        // ids, times and types are.
        #[test]
        fn mapping_roundtrip(
            node_id in any::<u64>(),
            run_id in any::<u64>(),
            task_id in "[0-9a-f-]{0,36}",
            group_id in "[0-9]{0,3}",
            task_type in "(train|evaluate|query)",
            created_at in 1.7e9_f64..1.8e9,
            ttl in 1.0_f64..1e5,
            delay in 0.001_f64..1e3,
        ) {
            let mut ins = task_ins(node_id, created_at, ttl);
            ins.run_id = run_id;
            ins.task_id = task_id.clone();
            ins.group_id = group_id.clone();
            if let Some(task) = ins.task.as_mut() {
                task.task_type = task_type.clone();
            }
            prop_assert!(is_usable(&ins, node_id));
            let incoming = message_from_task_ins(&ins).metadata.unwrap();
            let now = created_at + delay;
            let reply = error_reply(&incoming, 2, "x".into(), now);
            prop_assert_eq!(validate_reply(&reply, &incoming), Ok(()));
            let res = task_res_from_message(&reply);
            prop_assert_eq!(res.run_id, run_id);
            prop_assert_eq!(&res.group_id, &group_id);
            let task = res.task.unwrap();
            prop_assert_eq!(task.producer.map(|n| (n.node_id, n.anonymous)), Some((node_id, false)));
            prop_assert_eq!(task.consumer.map(|n| (n.node_id, n.anonymous)), Some((0, true)));
            let expected_ancestry = if task_id.is_empty() { vec![] } else { vec![task_id] };
            prop_assert_eq!(task.ancestry, expected_ancestry);
            prop_assert_eq!(task.task_type, task_type);
            // The reply expires when the instruction does.
            let expiry_gap = (task.created_at + task.ttl) - (created_at + ttl);
            prop_assert!(expiry_gap.abs() < 1e-6, "gap {}", expiry_gap);
        }
    }
}
