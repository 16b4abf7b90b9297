//! [`Message`]: what a ServerApp sends to a ClientApp and gets back, and its mapping to the
//! wire (`flwr.proto.Message` over the AppIo APIs, `TaskIns`/`TaskRes` over ServerAppIo).

use std::time::{SystemTime, UNIX_EPOCH};

use flwr_core::message::{self as wire, error_code};
use flwr_proto as proto;

use crate::error::ConversionError;
use crate::record::RecordSet;

/// The `message_type` values Flower 1.14 uses.
pub mod message_type {
    /// Train the model (`FitIns` in the legacy layout).
    pub const TRAIN: &str = "train";
    /// Evaluate the model (`EvaluateIns`).
    pub const EVALUATE: &str = "evaluate";
    /// Free-form query.
    pub const QUERY: &str = "query";
    /// Legacy `get_parameters` (asked by the legacy server when a strategy has no initial
    /// parameters).
    pub const GET_PARAMETERS: &str = "get_parameters";
    /// Legacy `get_properties`.
    pub const GET_PROPERTIES: &str = "get_properties";
}

/// Time-to-live of ServerApp messages unless the app sets one (seconds).
pub const DEFAULT_TTL: f64 = wire::DEFAULT_TTL;

/// Routing and bookkeeping fields of a message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    /// The run the message belongs to.
    pub run_id: u64,
    /// Id assigned by the SuperLink (`TaskIns`/`TaskRes` id); empty until stored.
    pub message_id: String,
    /// Sender node; 0 for the ServerApp.
    pub src_node_id: u64,
    /// Receiver node; 0 for the ServerApp.
    pub dst_node_id: u64,
    /// For replies: the `message_id` of the instruction; empty otherwise.
    pub reply_to_message: String,
    /// Groups messages, e.g. the round number as text.
    pub group_id: String,
    /// Seconds after `created_at` at which the message expires.
    pub ttl: f64,
    /// What to do: see [`message_type`].
    pub message_type: String,
    /// Unix time of creation, in seconds.
    pub created_at: f64,
}

/// An error carried instead of content, e.g. a ClientApp that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageError {
    /// One of the `MessageError::*` codes.
    pub code: i64,
    /// Human-readable reason.
    pub reason: String,
}

impl MessageError {
    /// Unknown error.
    pub const UNKNOWN: i64 = error_code::UNKNOWN;
    /// The ClientApp could not be loaded.
    pub const LOAD_CLIENT_APP_EXCEPTION: i64 = error_code::LOAD_CLIENT_APP_EXCEPTION;
    /// The ClientApp failed while handling the message.
    pub const CLIENT_APP_RAISED_EXCEPTION: i64 = error_code::CLIENT_APP_RAISED_EXCEPTION;
    /// The instruction expired or is unknown.
    pub const MESSAGE_UNAVAILABLE: i64 = error_code::MESSAGE_UNAVAILABLE;
    /// The reply expired.
    pub const REPLY_MESSAGE_UNAVAILABLE: i64 = error_code::REPLY_MESSAGE_UNAVAILABLE;

    /// The reason text Flower's `flwr-clientapp` reports for a failed load.
    pub const LOAD_CLIENT_APP_REASON: &'static str = wire::LOAD_CLIENT_APP_REASON;
}

/// Either content or an error; a message always has exactly one.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// Records.
    Content(RecordSet),
    /// What went wrong.
    Error(MessageError),
}

/// A message between a ServerApp and a ClientApp.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Routing fields.
    pub metadata: Metadata,
    /// Content or error.
    pub payload: Payload,
}

impl Message {
    /// The content, unless this is an error message.
    pub fn content(&self) -> Option<&RecordSet> {
        match &self.payload {
            Payload::Content(content) => Some(content),
            Payload::Error(_) => None,
        }
    }

    /// The error, if this is an error message.
    pub fn error(&self) -> Option<&MessageError> {
        match &self.payload {
            Payload::Content(_) => None,
            Payload::Error(error) => Some(error),
        }
    }

    /// A reply carrying `content`, shaped as Flower's `Message.create_reply`.
    pub fn create_reply(&self, content: RecordSet) -> Self {
        self.reply_at(Payload::Content(content), now())
    }

    /// A reply carrying `error`, shaped as Flower's `Message.create_error_reply`.
    pub fn create_error_reply(&self, error: MessageError) -> Self {
        self.reply_at(Payload::Error(error), now())
    }

    /// The reply created at `created_at`, with the metadata of
    /// [`flwr_core::message::reply_metadata`]: the reply expires together with this message
    /// (BEHAVIOR.md §9.3).
    pub fn reply_at(&self, payload: Payload, created_at: f64) -> Self {
        let incoming = proto::Metadata::from(self.metadata.clone());
        Self {
            metadata: wire::reply_metadata(&incoming, created_at).into(),
            payload,
        }
    }

    /// The `TaskIns` a ServerApp pushes for this message (BEHAVIOR.md §9.2), mapped by
    /// [`flwr_core::message::task_ins`].
    pub fn into_task_ins(self) -> proto::TaskIns {
        let (content, error) = payload_to_proto(self.payload);
        wire::task_ins(wire::Parts {
            metadata: self.metadata.into(),
            content,
            error,
        })
    }

    /// The message a ServerApp reads from a pulled `TaskRes`, mapped by
    /// [`flwr_core::message::from_task_res`].
    ///
    /// # Errors
    ///
    /// [`ConversionError`] if the task is missing or carries neither or both of recordset and
    /// error, or a record is malformed.
    pub fn try_from_task_res(task_res: proto::TaskRes) -> Result<Self, ConversionError> {
        let parts =
            wire::from_task_res(task_res).map_err(|_| ConversionError::MissingField("task"))?;
        Ok(Self {
            metadata: parts.metadata.into(),
            payload: payload_from_proto(parts.content, parts.error)?,
        })
    }
}

/// Seconds since the Unix epoch, as Python's `time.time()`.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn payload_to_proto(payload: Payload) -> (Option<proto::RecordSet>, Option<proto::Error>) {
    match payload {
        Payload::Content(content) => (Some(content.into()), None),
        Payload::Error(error) => (None, Some(error.into())),
    }
}

fn payload_from_proto(
    content: Option<proto::RecordSet>,
    error: Option<proto::Error>,
) -> Result<Payload, ConversionError> {
    match (content, error) {
        (Some(content), None) => Ok(Payload::Content(content.try_into()?)),
        (None, Some(error)) => Ok(Payload::Error(error.into())),
        _ => Err(ConversionError::ContentAndError),
    }
}

impl From<MessageError> for proto::Error {
    fn from(error: MessageError) -> Self {
        Self {
            code: error.code,
            reason: error.reason,
        }
    }
}

impl From<proto::Error> for MessageError {
    fn from(error: proto::Error) -> Self {
        Self {
            code: error.code,
            reason: error.reason,
        }
    }
}

impl From<Metadata> for proto::Metadata {
    fn from(m: Metadata) -> Self {
        Self {
            run_id: m.run_id,
            message_id: m.message_id,
            src_node_id: m.src_node_id,
            dst_node_id: m.dst_node_id,
            reply_to_message: m.reply_to_message,
            group_id: m.group_id,
            ttl: m.ttl,
            message_type: m.message_type,
            created_at: m.created_at,
        }
    }
}

impl From<proto::Metadata> for Metadata {
    fn from(m: proto::Metadata) -> Self {
        Self {
            run_id: m.run_id,
            message_id: m.message_id,
            src_node_id: m.src_node_id,
            dst_node_id: m.dst_node_id,
            reply_to_message: m.reply_to_message,
            group_id: m.group_id,
            ttl: m.ttl,
            message_type: m.message_type,
            created_at: m.created_at,
        }
    }
}

impl From<Message> for proto::Message {
    fn from(message: Message) -> Self {
        let (content, error) = payload_to_proto(message.payload);
        Self {
            metadata: Some(message.metadata.into()),
            content,
            error,
        }
    }
}

impl TryFrom<proto::Message> for Message {
    type Error = ConversionError;

    fn try_from(message: proto::Message) -> Result<Self, Self::Error> {
        let metadata = message
            .metadata
            .ok_or(ConversionError::MissingField("metadata"))?;
        Ok(Self {
            metadata: metadata.into(),
            payload: payload_from_proto(message.content, message.error)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instruction() -> Message {
        Message {
            metadata: Metadata {
                run_id: 7,
                message_id: "ins-1".into(),
                src_node_id: 0,
                dst_node_id: 42,
                reply_to_message: String::new(),
                group_id: "3".into(),
                ttl: DEFAULT_TTL,
                message_type: message_type::TRAIN.into(),
                created_at: 1_730_000_000.0,
            },
            payload: Payload::Content(RecordSet::new()),
        }
    }

    #[test]
    fn reply_is_shaped_like_create_reply() {
        let reply = instruction().reply_at(Payload::Content(RecordSet::new()), 1_730_000_010.5);
        let m = &reply.metadata;
        assert_eq!(m.run_id, 7);
        assert_eq!(m.message_id, "");
        assert_eq!((m.src_node_id, m.dst_node_id), (42, 0));
        assert_eq!(m.reply_to_message, "ins-1");
        assert_eq!(m.group_id, "3");
        assert_eq!(m.message_type, "train");
        assert_eq!(m.created_at, 1_730_000_010.5);
        assert!((m.ttl - (DEFAULT_TTL - 10.5)).abs() < 1e-9);
    }

    #[test]
    fn task_ins_is_shaped_like_the_reference_driver() {
        let mut message = instruction();
        message.metadata.message_id = String::new();
        let ins = message.into_task_ins();
        assert_eq!(ins.task_id, "");
        assert_eq!(ins.group_id, "3");
        assert_eq!(ins.run_id, 7);
        let task = ins.task.expect("task");
        assert_eq!(
            task.producer,
            Some(proto::Node {
                node_id: 0,
                anonymous: true
            })
        );
        assert_eq!(
            task.consumer,
            Some(proto::Node {
                node_id: 42,
                anonymous: false
            })
        );
        assert!(task.ancestry.is_empty());
        assert_eq!(task.ttl, DEFAULT_TTL);
        assert_eq!(task.task_type, "train");
        assert!(task.recordset.is_some() && task.error.is_none());
    }

    #[test]
    fn task_res_becomes_a_message() {
        let res = proto::TaskRes {
            task_id: "res-1".into(),
            group_id: "3".into(),
            run_id: 7,
            task: Some(proto::Task {
                producer: Some(proto::Node {
                    node_id: 42,
                    anonymous: false,
                }),
                consumer: Some(proto::Node {
                    node_id: 0,
                    anonymous: true,
                }),
                created_at: 1.0,
                ttl: 5.0,
                ancestry: vec!["ins-1".into()],
                task_type: "train".into(),
                error: Some(proto::Error {
                    code: 2,
                    reason: "boom".into(),
                }),
                ..Default::default()
            }),
        };
        let message = Message::try_from_task_res(res.clone()).expect("converts");
        assert_eq!(message.metadata.reply_to_message, "ins-1");
        assert_eq!(message.metadata.src_node_id, 42);
        assert_eq!(message.error().map(|e| e.code), Some(2));

        let mut both = res.clone();
        if let Some(task) = both.task.as_mut() {
            task.recordset = Some(proto::RecordSet::default());
        }
        assert_eq!(
            Message::try_from_task_res(both),
            Err(ConversionError::ContentAndError)
        );
        let mut none = res;
        none.task = None;
        assert!(Message::try_from_task_res(none).is_err());
    }

    #[test]
    fn proto_message_round_trip_and_errors() {
        let message = instruction();
        let wire = proto::Message::from(message.clone());
        assert_eq!(Message::try_from(wire.clone()), Ok(message));
        let mut neither = wire.clone();
        neither.content = None;
        assert_eq!(
            Message::try_from(neither),
            Err(ConversionError::ContentAndError)
        );
        let mut headless = wire;
        headless.metadata = None;
        assert_eq!(
            Message::try_from(headless),
            Err(ConversionError::MissingField("metadata"))
        );
    }
}
