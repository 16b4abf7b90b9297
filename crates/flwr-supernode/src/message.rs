//! What the SuperNode adds to the shared mapping of `flwr_core::message` (BEHAVIOR.md §9,
//! PROTOCOL.md §4.5): which pulled instructions it serves, and the checks a ClientApp's reply
//! must pass before it is sent (§9.3).
//!
//! All functions are pure; the current time is an argument.

use flwr_core::message::{from_task_ins, Parts};
use flwr_proto::{Message, Metadata, TaskIns};

// `launcher` names the reference's exception text through this module.
pub use flwr_core::message::exception_reason;

/// Message type of the legacy reconnect control message, which nothing in 1.14 sends.
pub const RECONNECT_MESSAGE_TYPE: &str = "reconnect";

/// The message of a pulled `TaskIns` if it is for this node and carries content; the reference
/// silently drops any other (error-only instructions, or ones addressed elsewhere).
pub fn usable_message(ins: TaskIns, own_node_id: u64) -> Option<Parts> {
    let parts = from_task_ins(ins).ok()?;
    (parts.metadata.dst_node_id == own_node_id && parts.content.is_some()).then_some(parts)
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
/// sending, and returns it ready for [`flwr_core::message::task_res`]; an invalid reply is
/// dropped (logged as `Invalid out message`).
///
/// # Errors
///
/// The first rule of §9.3 the reply breaks.
pub fn validate_reply(reply: Message, incoming: &Metadata) -> Result<Parts, InvalidReply> {
    let Some(out) = reply.metadata else {
        return Err(InvalidReply::MissingMetadata);
    };
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
    if let Some((_, error)) = checks.into_iter().find(|(ok, _)| !ok) {
        return Err(error);
    }
    Ok(Parts {
        metadata: out,
        content: reply.content,
        error: reply.error,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use flwr_proto::{configs_record_value, ConfigsRecord, ConfigsRecordValue, RecordSet};
    use proptest::prelude::*;

    use flwr_core::message::{
        error_code::CLIENT_APP_RAISED_EXCEPTION, error_reply, reply_metadata, task_res,
    };
    use flwr_proto::{Error, Node, Task};

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

    /// The message a ClientApp gets for `ins`.
    fn incoming_message(ins: &TaskIns) -> Message {
        Message::from(flwr_core::message::from_task_ins(ins.clone()).unwrap())
    }

    #[test]
    fn instruction_to_message() {
        let ins = task_ins(42, 1_730_000_000.25, 3600.0);
        let message = incoming_message(&ins);
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
        let incoming = incoming_message(&ins).metadata.unwrap();
        let now = 1_730_000_010.0;
        let reply = Message {
            metadata: Some(reply_metadata(&incoming, now)),
            content: Some(recordset("metrics")),
            error: None,
        };
        let res = task_res(validate_reply(reply, &incoming).unwrap());
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
        let incoming = incoming_message(&ins).metadata.unwrap();
        let reply = error_reply(
            &incoming,
            CLIENT_APP_RAISED_EXCEPTION,
            exception_reason("RuntimeError", "boom"),
            1_730_000_001.0,
        );
        let task = task_res(validate_reply(Message::from(reply), &incoming).unwrap())
            .task
            .unwrap();
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
        let incoming = incoming_message(&ins).metadata.unwrap();
        let good = Message {
            metadata: Some(reply_metadata(&incoming, 1_730_000_001.0)),
            content: Some(RecordSet::default()),
            error: None,
        };
        let mutate = |f: &dyn Fn(&mut Message)| {
            let mut m = good.clone();
            f(&mut m);
            validate_reply(m, &incoming).map(|_| ())
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
        assert!(usable_message(ins.clone(), 42).is_some());
        assert!(usable_message(ins.clone(), 43).is_none());
        let mut error_only = ins.clone();
        if let Some(task) = error_only.task.as_mut() {
            task.recordset = None;
            task.error = Some(Error::default());
        }
        assert!(usable_message(error_only, 42).is_none());
        assert!(usable_message(TaskIns { task: None, ..ins }, 42).is_none());
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
            prop_assert!(usable_message(ins.clone(), node_id).is_some());
            let incoming = incoming_message(&ins).metadata.unwrap();
            let now = created_at + delay;
            let reply = error_reply(&incoming, 2, "x".into(), now);
            let valid = validate_reply(Message::from(reply.clone()), &incoming);
            prop_assert_eq!(&valid, &Ok(reply));
            let res = task_res(valid.unwrap());
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
