//! The reference's deterministic protobuf serialization, which node authentication signs.
//!
//! Python Flower (protobuf 4.25, upb backend) computes the `auth-token` HMAC over
//! `SerializeToString(deterministic=True)`. Those bytes differ from prost's encoding:
//!
//! 1. fields in ascending number order, unknown fields last in the order received;
//! 2. implicit-presence scalars omitted when default (floats compared bit-wise, so `-0.0` is
//!    written);
//! 3. oneof members and proto3 `optional` fields written whenever set, even when default;
//! 4. singular message fields written when present, even when empty;
//! 5. repeated numeric fields packed; repeated strings, bytes and messages one field each;
//! 6. map entries always carry both key (field 1) and value (field 2), even when default;
//! 7. map entries ordered the upb way: string keys by bytes, but a key that is a prefix of
//!    another sorts *after* it; integer keys in descending order.
//!
//! The encoder is a transcoder driven by the compiled descriptors: it parses any valid encoding
//! of a message (packed or not, explicit defaults, repeated singular fields, unknown fields)
//! with protobuf's merge semantics and re-emits it by the rules above. A receiver therefore gets
//! the same bytes as the sender from whatever the sender put on the wire, which is exactly what
//! the reference SuperLink does before it verifies a token.
//!
//! # Layout
//!
//! - [`canonicalize`] / [`encode`]: canonical bytes as a `Vec`;
//! - [`canonicalize_into`] and [`MessageType::canonicalize_into`]: canonical bytes streamed
//!   into a [`Sink`] (e.g. an HMAC), without materializing them;
//! - [`message_type`] / [`MessageType`]: a type name resolved once into the static schema, for
//!   the per-request path.
//!
//! # Cost
//!
//! The request body is network input checked *before* the token, so the encoder must cost
//! about what reading the input costs. It works in two passes over borrowed slices of the
//! input, copying no payload:
//!
//! 1. *build*: parse every message into its fields, resolve merges, oneofs and map keys, and
//!    append the output as a flat list of tokens in emission order. A sub-message is bracketed
//!    by an `Open` token whose length is patched once its body is built, so lengths are computed
//!    bottom-up exactly once. Map entries are deduplicated by sorting (`O(n log n)`), not by
//!    searching the entries seen so far. All validation happens here: on error the sink has
//!    seen nothing.
//! 2. *emit*: walk the tokens and hand the bytes to the sink. Tags, lengths and short values go
//!    through a small stack buffer; large `bytes`/`string` values and packed runs that are
//!    already canonical are passed as the borrowed input slice in one call.
//!
//! Repeated occurrences of a singular message field are parsed one after the other into the
//! same message, which is what merging means; like upb, each occurrence must be a complete
//! encoding on its own (a field split across two occurrences is refused).

use std::{cmp::Ordering, collections::HashMap, fmt, sync::OnceLock};

use prost::Message as _;
use prost_types::{
    field_descriptor_proto::{Label, Type},
    DescriptorProto, FileDescriptorSet,
};

/// Why bytes could not be canonicalized.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CanonicalError {
    /// The embedded descriptor set could not be decoded (a build problem, not an input one).
    #[error("embedded descriptor set is invalid: {0}")]
    Descriptor(String),
    /// The message type is not part of package `flwr.proto`.
    #[error("unknown message type {0}")]
    UnknownType(String),
    /// The input ended in the middle of a field.
    #[error("truncated input in {0}")]
    Truncated(String),
    /// A varint ran past ten bytes.
    #[error("malformed varint in {0}")]
    BadVarint(String),
    /// A tag used a field number of zero or a deprecated group wire type.
    #[error("invalid tag in {0}")]
    BadTag(String),
    /// A `string` field held bytes that are not UTF-8 (the reference refuses to parse these).
    #[error("invalid UTF-8 in field {field} of {message}")]
    InvalidUtf8 {
        /// Message type holding the field.
        message: String,
        /// Field name.
        field: String,
    },
    /// More field occurrences than [`MAX_FIELD_OCCURRENCES`]: the layout would need memory
    /// out of proportion to any real request.
    #[error("more than {MAX_FIELD_OCCURRENCES} fields")]
    TooManyFields,
    /// Messages nested deeper than the reference's parser accepts.
    #[error("message nesting exceeds {MAX_DEPTH} levels")]
    TooDeep,
}

/// Field occurrences one canonicalization lays out, at every nesting level together. Each costs
/// tens of bytes of working state, and the bytes are checked before the token is, so without a
/// bound a caller that knows a listed public key could make a 512 MiB body of two-byte fields
/// cost gigabytes. Real requests carry their bulk in a few `bytes` fields (arrays).
pub const MAX_FIELD_OCCURRENCES: u64 = 1 << 21;

/// upb's default recursion limit; deeper input is refused rather than risking the stack.
const MAX_DEPTH: usize = 100;

/// Canonical bytes of a prost message of package `flwr.proto`.
///
/// # Errors
///
/// Only if the message type is not part of the compiled schema.
pub fn encode<M: prost::Message + prost::Name>(message: &M) -> Result<Vec<u8>, CanonicalError> {
    canonicalize(&M::full_name(), &message.encode_to_vec())
}

/// Re-encodes `wire`, any valid encoding of message `type_name` (e.g. `flwr.proto.PingRequest`),
/// canonically.
///
/// # Errors
///
/// When `wire` does not parse as that message the way the reference's parser would refuse it.
pub fn canonicalize(type_name: &str, wire: &[u8]) -> Result<Vec<u8>, CanonicalError> {
    message_type(type_name)?.canonicalize(wire)
}

/// Streams the canonical encoding of `wire` (a message of type `type_name`) into `sink` and
/// returns the number of bytes emitted; see [`MessageType::canonicalize_into`].
///
/// # Errors
///
/// As [`canonicalize`]; the sink has then received nothing.
pub fn canonicalize_into<S: Sink + ?Sized>(
    type_name: &str,
    wire: &[u8],
    sink: &mut S,
) -> Result<u64, CanonicalError> {
    message_type(type_name)?.canonicalize_into(wire, sink)
}

/// Resolves a message type name of package `flwr.proto` (`flwr.proto.PingRequest`, a leading
/// `.` is accepted) into a handle that skips the name lookup on every later call.
///
/// # Errors
///
/// [`CanonicalError::UnknownType`] if the schema has no such message.
pub fn message_type(type_name: &str) -> Result<MessageType, CanonicalError> {
    let schema = schema()?;
    let index = schema
        .index
        .get(type_name.trim_start_matches('.'))
        .ok_or_else(|| CanonicalError::UnknownType(type_name.to_owned()))?;
    Ok(MessageType {
        schema,
        index: *index,
    })
}

/// Receives canonical bytes piece by piece.
///
/// Implemented for `Vec<u8>` (appends) and for any `FnMut(&[u8])`, e.g.
/// `&mut |bytes: &[u8]| mac.update(bytes)`.
pub trait Sink {
    /// Takes the next piece of the encoding.
    fn write(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn write(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl<F: FnMut(&[u8])> Sink for F {
    fn write(&mut self, bytes: &[u8]) {
        self(bytes);
    }
}

/// A message type of the compiled schema: a cheap, `Copy` handle for the per-request path.
#[derive(Clone, Copy)]
pub struct MessageType {
    schema: &'static Schema,
    /// Index into `schema.messages`; always valid, as only [`message_type`] creates handles.
    index: usize,
}

impl MessageType {
    /// The handle of prost message type `M`.
    ///
    /// # Errors
    ///
    /// If `M` is not part of the compiled schema.
    pub fn of<M: prost::Name>() -> Result<Self, CanonicalError> {
        message_type(&M::full_name())
    }

    /// The fully qualified name, e.g. `flwr.proto.PingRequest`.
    pub fn name(self) -> &'static str {
        &self.schema.messages[self.index].name
    }

    /// Re-encodes `wire` canonically into a new `Vec`, sized exactly.
    ///
    /// # Errors
    ///
    /// When `wire` does not parse as this message the way the reference's parser would refuse
    /// it.
    pub fn canonicalize(self, wire: &[u8]) -> Result<Vec<u8>, CanonicalError> {
        let tree = Tree::build(self, wire)?;
        // A capacity hint only: a length beyond the address space cannot be reached anyway.
        let mut out = Vec::with_capacity(usize::try_from(tree.len).unwrap_or(0));
        tree.emit(&mut out);
        Ok(out)
    }

    /// Streams the canonical encoding of `wire` into `sink` and returns how many bytes it
    /// emitted.
    ///
    /// Large `bytes`/`string` values (e.g. `Array.data`) reach the sink as one call with the
    /// borrowed slice of `wire`; tags, lengths and small values arrive batched. The whole input
    /// is validated before the first byte is emitted, so on error the sink has received
    /// nothing.
    ///
    /// # Errors
    ///
    /// As [`MessageType::canonicalize`].
    pub fn canonicalize_into<S: Sink + ?Sized>(
        self,
        wire: &[u8],
        sink: &mut S,
    ) -> Result<u64, CanonicalError> {
        Ok(Tree::build(self, wire)?.emit(sink).bytes)
    }
}

impl fmt::Debug for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MessageType").field(&self.name()).finish()
    }
}

/// Work done by one canonicalization, for tests that check complexity without timing.
#[doc(hidden)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkStats {
    /// Fields (and packed values) parsed, including map entry fields.
    pub fields: u64,
    /// Key comparisons made to sort and deduplicate map entries.
    pub comparisons: u64,
    /// Output tokens built.
    pub tokens: u64,
    /// Bytes emitted.
    pub bytes: u64,
    /// Calls made to the sink.
    pub sink_calls: u64,
}

impl WorkStats {
    /// Everything counted that grows with the input: fields, comparisons and tokens.
    pub fn work(&self) -> u64 {
        self.fields + self.comparisons + self.tokens
    }
}

/// [`canonicalize`] that also reports the work it did.
///
/// # Errors
///
/// As [`canonicalize`].
#[doc(hidden)]
pub fn canonicalize_counting(
    type_name: &str,
    wire: &[u8],
) -> Result<(Vec<u8>, WorkStats), CanonicalError> {
    let tree = Tree::build(message_type(type_name)?, wire)?;
    let mut out = Vec::with_capacity(usize::try_from(tree.len).unwrap_or(0));
    let emitted = tree.emit(&mut out);
    let stats = WorkStats {
        bytes: emitted.bytes,
        sink_calls: emitted.sink_calls,
        ..tree.stats
    };
    Ok((out, stats))
}

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

/// Value kinds as far as the wire is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Bytes,
    /// int32 and enums: 32-bit, sign-extended to ten bytes when negative.
    Int32,
    /// int64, uint64, sint64: the varint is kept as is.
    Int64,
    /// sint32 and uint32: truncated to 32 bits.
    Uint32,
    Fixed32,
    Fixed64,
    Message,
    String,
}

impl Kind {
    fn of(ty: Type) -> Result<Self, CanonicalError> {
        Ok(match ty {
            Type::Bool => Self::Bool,
            Type::Bytes => Self::Bytes,
            Type::Int32 | Type::Enum => Self::Int32,
            Type::Int64 | Type::Uint64 | Type::Sint64 => Self::Int64,
            Type::Uint32 | Type::Sint32 => Self::Uint32,
            Type::Fixed32 | Type::Sfixed32 | Type::Float => Self::Fixed32,
            Type::Fixed64 | Type::Sfixed64 | Type::Double => Self::Fixed64,
            Type::Message => Self::Message,
            Type::String => Self::String,
            Type::Group => {
                return Err(CanonicalError::Descriptor(
                    "groups are not supported".into(),
                ))
            }
        })
    }

    fn wire_type(self) -> u8 {
        match self {
            Self::Bool | Self::Int32 | Self::Int64 | Self::Uint32 => WIRE_VARINT,
            Self::Fixed64 => WIRE_I64,
            Self::Fixed32 => WIRE_I32,
            Self::Bytes | Self::Message | Self::String => WIRE_LEN,
        }
    }

    fn is_numeric(self) -> bool {
        !matches!(self, Self::Bytes | Self::Message | Self::String)
    }
}

const WIRE_VARINT: u8 = 0;
const WIRE_I64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_I32: u8 = 5;

#[derive(Debug)]
enum Shape {
    Singular {
        explicit_presence: bool,
    },
    Repeated,
    Map {
        key: Kind,
        value: Kind,
        /// Index of the value's message type, for message values.
        value_message: Option<usize>,
    },
}

#[derive(Debug)]
struct Field {
    number: u32,
    name: String,
    kind: Kind,
    /// Index of the message type, for message fields.
    message: Option<usize>,
    /// Fully qualified type name, kept for error messages.
    type_name: String,
    /// Index of the oneof (real or proto3-`optional` synthetic) the field belongs to.
    oneof: Option<usize>,
    shape: Shape,
}

impl Field {
    /// Whether an occurrence with `wire_type` is this field; otherwise, like upb, it is kept as
    /// an unknown field.
    fn accepts(&self, wire_type: u8) -> bool {
        match self.shape {
            Shape::Repeated => {
                wire_type == self.kind.wire_type()
                    || (wire_type == WIRE_LEN && self.kind.is_numeric())
            }
            Shape::Map { .. } => wire_type == WIRE_LEN,
            Shape::Singular { .. } => wire_type == self.kind.wire_type(),
        }
    }

    fn sub_message(&self) -> Result<usize, CanonicalError> {
        self.message
            .ok_or_else(|| CanonicalError::UnknownType(self.type_name.clone()))
    }
}

#[derive(Debug)]
struct MessageSchema {
    /// Fully qualified, without the leading dot.
    name: String,
    /// Sorted by field number.
    fields: Vec<Field>,
    oneofs: usize,
}

impl MessageSchema {
    fn field(&self, number: u32) -> Option<(usize, &Field)> {
        let index = self
            .fields
            .binary_search_by_key(&number, |f| f.number)
            .ok()?;
        Some((index, self.fields.get(index)?))
    }
}

#[derive(Debug)]
struct Schema {
    messages: Vec<MessageSchema>,
    /// Name without the leading dot to index into `messages`.
    index: HashMap<String, usize>,
}

fn schema() -> Result<&'static Schema, CanonicalError> {
    static SCHEMA: OnceLock<Result<Schema, String>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| Schema::load(crate::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| CanonicalError::Descriptor(e.clone()))
}

impl Schema {
    fn load(bytes: &[u8]) -> Result<Self, CanonicalError> {
        let set = FileDescriptorSet::decode(bytes)
            .map_err(|e| CanonicalError::Descriptor(e.to_string()))?;
        let mut raw = Vec::new();
        for file in &set.file {
            let prefix = match file.package() {
                "" => String::new(),
                package => format!(".{package}"),
            };
            for message in &file.message_type {
                collect(&prefix, message, &mut raw);
            }
        }
        // Descriptors name types with a leading dot (`.flwr.proto.Node`).
        let by_name: HashMap<&str, usize> = raw
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.as_str(), i))
            .collect();
        let mut messages = Vec::with_capacity(raw.len());
        for (name, descriptor) in &raw {
            let mut fields = Vec::new();
            for field in &descriptor.field {
                let number = u32::try_from(field.number())
                    .map_err(|_| CanonicalError::Descriptor(format!("{name}: bad number")))?;
                let kind = Kind::of(field.r#type())?;
                let target = by_name.get(field.type_name()).copied();
                let entry = target
                    .and_then(|i| raw.get(i))
                    .map(|(_, d)| d)
                    .filter(|d| d.options.as_ref().is_some_and(|o| o.map_entry()));
                let shape = match (field.label(), entry) {
                    (Label::Repeated, Some(entry)) => map_shape(entry, &by_name)?,
                    (Label::Repeated, None) => Shape::Repeated,
                    _ => Shape::Singular {
                        explicit_presence: field.proto3_optional() || field.oneof_index.is_some(),
                    },
                };
                fields.push(Field {
                    number,
                    name: field.name().to_owned(),
                    kind,
                    message: target.filter(|_| kind == Kind::Message),
                    type_name: field.type_name().to_owned(),
                    oneof: field.oneof_index.and_then(|i| usize::try_from(i).ok()),
                    shape,
                });
            }
            fields.sort_by_key(|f| f.number);
            messages.push(MessageSchema {
                name: name.trim_start_matches('.').to_owned(),
                fields,
                oneofs: descriptor.oneof_decl.len(),
            });
        }
        let index = messages
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), i))
            .collect();
        Ok(Self { messages, index })
    }
}

fn collect(prefix: &str, message: &DescriptorProto, out: &mut Vec<(String, DescriptorProto)>) {
    let name = format!("{prefix}.{}", message.name());
    for nested in &message.nested_type {
        collect(&name, nested, out);
    }
    out.push((name, message.clone()));
}

fn map_shape(
    entry: &DescriptorProto,
    by_name: &HashMap<&str, usize>,
) -> Result<Shape, CanonicalError> {
    let part = |number: i32| {
        entry
            .field
            .iter()
            .find(|f| f.number() == number)
            .ok_or_else(|| {
                CanonicalError::Descriptor(format!(
                    "map entry {} lacks field {number}",
                    entry.name()
                ))
            })
    };
    let key = part(1)?;
    let value = part(2)?;
    let value_kind = Kind::of(value.r#type())?;
    Ok(Shape::Map {
        key: Kind::of(key.r#type())?,
        value: value_kind,
        value_message: by_name
            .get(value.type_name())
            .copied()
            .filter(|_| value_kind == Kind::Message),
    })
}

// ---------------------------------------------------------------------------------------------
// Build: parse into borrowed views and lay out the output as tokens
// ---------------------------------------------------------------------------------------------

/// One field value as read from the wire, borrowing the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

impl<'a> Raw<'a> {
    fn bytes(self) -> &'a [u8] {
        match self {
            Self::Len(bytes) => bytes,
            _ => &[],
        }
    }

    fn is_default(self) -> bool {
        match self {
            Self::Varint(v) | Self::Fixed64(v) => v == 0,
            Self::Fixed32(v) => v == 0,
            Self::Len(bytes) => bytes.is_empty(),
        }
    }

    fn wire_type(self) -> u8 {
        match self {
            Self::Varint(_) => WIRE_VARINT,
            Self::Fixed64(_) => WIRE_I64,
            Self::Fixed32(_) => WIRE_I32,
            Self::Len(_) => WIRE_LEN,
        }
    }

    /// Encoded size without the tag.
    fn encoded_len(self) -> u64 {
        match self {
            Self::Varint(v) => varint_len(v),
            Self::Fixed64(_) => 8,
            Self::Fixed32(_) => 4,
            Self::Len(bytes) => varint_len(bytes.len() as u64) + bytes.len() as u64,
        }
    }

    fn default_of(kind: Kind) -> Self {
        match kind.wire_type() {
            WIRE_I64 => Self::Fixed64(0),
            WIRE_I32 => Self::Fixed32(0),
            WIRE_LEN => Self::Len(&[]),
            _ => Self::Varint(0),
        }
    }
}

/// Field index of an event kept verbatim after all known fields.
const UNKNOWN: u32 = u32::MAX;
/// Field index of an event that a later oneof member cleared.
const DROPPED: u32 = u32::MAX - 1;

/// One field occurrence of the message being built.
#[derive(Debug, Clone, Copy)]
struct Event<'a> {
    /// Index into `MessageSchema::fields`, or [`UNKNOWN`] / [`DROPPED`].
    field: u32,
    /// The value; for a packed run, the run; for an unknown field, the whole field.
    value: Raw<'a>,
}

/// One map entry, read but not yet emitted.
#[derive(Debug, Clone, Copy)]
struct Entry<'a> {
    /// Normalized key.
    key: Raw<'a>,
    /// Last field-2 occurrence with the value's wire type (default when there is none).
    value: Raw<'a>,
    /// How many such occurrences there were; more than one message value means a merge.
    values: u32,
    /// The whole entry, re-read only to merge repeated message values.
    body: &'a [u8],
}

/// What map entries are sorted by: 32 bytes instead of the entry itself, and for most pairs of
/// keys one integer comparison instead of a byte-string one (which would also have to fetch
/// the entry and the key from wherever they sit in memory).
#[derive(Debug, Clone, Copy)]
struct SortKey {
    /// Consistent with upb's key order wherever two prefixes differ; see [`sort_prefix`].
    prefix: u128,
    /// Index into `Builder::entries`, which holds a field's entries in wire order.
    index: usize,
}

/// The most events reserved ahead of a build.
const MAX_RESERVED_EVENTS: usize = 1 << 17;

/// The output, in emission order.
#[derive(Debug, Clone, Copy)]
enum Token<'a> {
    /// Tag and length of a length-delimited field whose body is the tokens that follow.
    Open { number: u32, len: u64 },
    /// A complete field: tag and value.
    Field { number: u32, value: Raw<'a> },
    /// A bare element of a packed field.
    Value(Raw<'a>),
    /// A packed run that needs re-encoding (non-minimal varints, or values to normalize).
    Run { kind: Kind, bytes: &'a [u8] },
    /// Bytes emitted as they are: unknown fields and packed runs that are already canonical.
    Verbatim(&'a [u8]),
}

/// An `Open` token waiting for its length.
#[must_use]
struct Opened {
    at: usize,
    /// Output length before the body.
    before: u64,
}

#[derive(Debug, Clone, Copy)]
struct OneofState {
    /// The member that was set last: the only one that survives.
    winner: Option<u32>,
    /// Whether another member was seen after (reading backwards: before) some winner event;
    /// earlier winner events were cleared by that member.
    cut: bool,
}

/// Sub-message occurrences to merge, in wire order; almost always exactly one.
#[derive(Debug, Default)]
enum Chunks<'a> {
    #[default]
    Empty,
    One([&'a [u8]; 1]),
    Many(Vec<&'a [u8]>),
}

impl<'a> Chunks<'a> {
    fn push(&mut self, chunk: &'a [u8]) {
        *self = match std::mem::take(self) {
            Self::Empty => Self::One([chunk]),
            Self::One([first]) => Self::Many(vec![first, chunk]),
            Self::Many(mut all) => {
                all.push(chunk);
                Self::Many(all)
            }
        };
    }

    fn as_slice(&self) -> &[&'a [u8]] {
        match self {
            Self::Empty => &[],
            Self::One(one) => one,
            Self::Many(all) => all,
        }
    }
}

/// A message laid out for emission.
struct Tree<'a> {
    tokens: Vec<Token<'a>>,
    /// Total output length.
    len: u64,
    stats: WorkStats,
}

impl<'a> Tree<'a> {
    fn build(ty: MessageType, wire: &'a [u8]) -> Result<Self, CanonicalError> {
        let mut builder = Builder {
            schema: ty.schema,
            events: Vec::new(),
            entries: Vec::new(),
            order: Vec::new(),
            oneofs: Vec::new(),
            tokens: Vec::new(),
            len: 0,
            occurrences: 0,
            stats: WorkStats::default(),
        };
        // Every field takes at least two bytes (tag and value), so a quarter of the length is a
        // field count the event stack rarely exceeds: reserved once instead of grown by copying,
        // up to a bound (4 MiB of events) that a large payload's few fields never need.
        builder
            .events
            .reserve((wire.len() / 4).min(MAX_RESERVED_EVENTS));
        builder.message(ty.index, &[wire], 0)?;
        Ok(Self {
            tokens: builder.tokens,
            len: builder.len,
            stats: builder.stats,
        })
    }

    fn emit<S: Sink + ?Sized>(&self, sink: &mut S) -> Emitted {
        let mut out = Buffered {
            sink,
            buf: [0; BUFFER],
            used: 0,
            emitted: Emitted::default(),
        };
        for token in &self.tokens {
            match *token {
                Token::Open { number, len } => {
                    out.varint(tag(number, WIRE_LEN));
                    out.varint(len);
                }
                Token::Field { number, value } => {
                    out.varint(tag(number, value.wire_type()));
                    out.value(value);
                }
                Token::Value(value) => out.value(value),
                Token::Run { kind, bytes } => {
                    // Validated while building, so the run reads to its end.
                    let mut reader = Reader::new(bytes, "");
                    while !reader.done() {
                        let Ok(value) = reader.varint() else { break };
                        out.varint(normalize_varint(kind, value));
                    }
                }
                Token::Verbatim(bytes) => out.bytes(bytes),
            }
        }
        out.flush();
        debug_assert_eq!(out.emitted.bytes, self.len);
        out.emitted
    }
}

/// Scratch state of one build. `events` and `entries` are stacks: a message pushes its own,
/// its sub-messages push theirs above and pop them before it continues.
struct Builder<'a> {
    schema: &'static Schema,
    events: Vec<Event<'a>>,
    entries: Vec<Entry<'a>>,
    order: Vec<SortKey>,
    oneofs: Vec<OneofState>,
    tokens: Vec<Token<'a>>,
    /// Output length of the tokens so far (an `Open` counts once closed).
    len: u64,
    /// Field occurrences scanned so far, bounded by [`MAX_FIELD_OCCURRENCES`].
    occurrences: u64,
    stats: WorkStats,
}

impl<'a> Builder<'a> {
    /// Lays out message `index` merged from `chunks` (each a complete encoding).
    fn message(
        &mut self,
        index: usize,
        chunks: &[&'a [u8]],
        depth: usize,
    ) -> Result<(), CanonicalError> {
        if depth > MAX_DEPTH {
            return Err(CanonicalError::TooDeep);
        }
        let schema = self.schema;
        let message = schema
            .messages
            .get(index)
            .ok_or_else(|| CanonicalError::UnknownType(format!("#{index}")))?;
        let start = self.events.len();
        for chunk in chunks {
            self.scan(message, chunk)?;
        }
        let end = self.events.len();
        if message.oneofs > 0 {
            self.resolve_oneofs(message, start, end);
        }
        // Encoders nearly always write fields in number order; a stable sort (which keeps the
        // wire order within a field) is needed only otherwise.
        let events = &mut self.events[start..end];
        if !events.is_sorted_by_key(|e| e.field) {
            events.sort_by_key(|e| e.field);
        }
        let mut i = start;
        while i < end {
            let field = self.events[i].field;
            let mut j = i + 1;
            while j < end && self.events[j].field == field {
                j += 1;
            }
            match field {
                DROPPED => {}
                UNKNOWN => {
                    for k in i..j {
                        let bytes = self.events[k].value.bytes();
                        self.push(Token::Verbatim(bytes));
                    }
                }
                _ => self.field(message, field as usize, i, j, depth)?,
            }
            i = j;
        }
        self.events.truncate(start);
        Ok(())
    }

    /// Reads the fields of one encoding of `message` onto the event stack.
    fn scan(
        &mut self,
        message: &'static MessageSchema,
        wire: &'a [u8],
    ) -> Result<(), CanonicalError> {
        let mut reader = Reader::new(wire, &message.name);
        while !reader.done() {
            let start = reader.pos;
            let tag = reader.varint()?;
            let wire_type = (tag & 7) as u8;
            let number = u32::try_from(tag >> 3).map_err(|_| reader.bad_tag())?;
            if number == 0 {
                return Err(reader.bad_tag());
            }
            let value = reader.value(wire_type)?;
            self.stats.fields += 1;
            self.occurrences += 1;
            if self.occurrences > MAX_FIELD_OCCURRENCES {
                return Err(CanonicalError::TooManyFields);
            }
            let event = match message.field(number) {
                Some((index, field)) if field.accepts(wire_type) => Event {
                    field: index as u32,
                    value,
                },
                _ => Event {
                    field: UNKNOWN,
                    value: Raw::Len(reader.since(start)),
                },
            };
            self.events.push(event);
        }
        Ok(())
    }

    /// Drops what later oneof members cleared: only the member set last survives, and of a
    /// message member only the occurrences after the last time another member was set.
    fn resolve_oneofs(&mut self, message: &MessageSchema, start: usize, end: usize) {
        self.oneofs.clear();
        self.oneofs.resize(
            message.oneofs,
            OneofState {
                winner: None,
                cut: false,
            },
        );
        for event in self.events[start..end].iter_mut().rev() {
            let Some(group) = message
                .fields
                .get(event.field as usize)
                .and_then(|f| f.oneof)
            else {
                continue;
            };
            let Some(state) = self.oneofs.get_mut(group) else {
                continue;
            };
            match state.winner {
                None => state.winner = Some(event.field),
                Some(winner) if state.cut || winner != event.field => {
                    state.cut = true;
                    event.field = DROPPED;
                }
                Some(_) => {}
            }
        }
    }

    /// Lays out field `index` of `message` from its occurrences `events[i..j]`.
    fn field(
        &mut self,
        message: &'static MessageSchema,
        index: usize,
        i: usize,
        j: usize,
        depth: usize,
    ) -> Result<(), CanonicalError> {
        let Some(field) = message.fields.get(index) else {
            return Ok(());
        };
        let number = field.number;
        match field.shape {
            Shape::Singular { .. } if field.kind == Kind::Message => {
                let sub = field.sub_message()?;
                let mut chunks = Chunks::default();
                for event in &self.events[i..j] {
                    chunks.push(event.value.bytes());
                }
                let open = self.open(number);
                self.message(sub, chunks.as_slice(), depth + 1)?;
                self.close(open);
            }
            Shape::Singular { explicit_presence } => {
                // The last occurrence wins.
                let value = normalize(field.kind, self.events[j - 1].value);
                if explicit_presence || !value.is_default() {
                    check_utf8(message, field, value)?;
                    self.push(Token::Field { number, value });
                }
            }
            Shape::Repeated if field.kind.is_numeric() => {
                // Empty packed runs contribute nothing, and a field without values is omitted.
                if self.events[i..j].iter().all(|e| e.value == Raw::Len(&[])) {
                    return Ok(());
                }
                let open = self.open(number);
                for k in i..j {
                    match self.events[k].value {
                        Raw::Len(run) => self.packed_run(message, field.kind, run)?,
                        value => self.push(Token::Value(normalize(field.kind, value))),
                    }
                }
                self.close(open);
            }
            Shape::Repeated if field.kind == Kind::Message => {
                let sub = field.sub_message()?;
                for k in i..j {
                    let bytes = self.events[k].value.bytes();
                    let open = self.open(number);
                    self.message(sub, &[bytes], depth + 1)?;
                    self.close(open);
                }
            }
            Shape::Repeated => {
                for k in i..j {
                    let value = self.events[k].value;
                    check_utf8(message, field, value)?;
                    self.push(Token::Field { number, value });
                }
            }
            Shape::Map {
                key,
                value,
                value_message,
            } => self.map(message, field, (key, value, value_message), i, j, depth)?,
        }
        Ok(())
    }

    /// Lays out the entries of map `field` from its occurrences `events[i..j]`: deduplicated
    /// (the last occurrence of a key replaces earlier ones, as inserting into a map does) and
    /// in upb's order.
    fn map(
        &mut self,
        message: &'static MessageSchema,
        field: &'static Field,
        (key_kind, value_kind, value_message): (Kind, Kind, Option<usize>),
        i: usize,
        j: usize,
        depth: usize,
    ) -> Result<(), CanonicalError> {
        let start = self.entries.len();
        let order_start = self.order.len();
        // Each entry takes at least three tokens (entry, key, value), five with a message value
        // (entry, key, value, its field, and usually one more); growing the lists from small
        // would copy them a dozen times.
        let per_entry = if value_kind == Kind::Message { 5 } else { 3 };
        self.tokens.reserve(per_entry * (j - i));
        self.entries.reserve(j - i);
        self.order.reserve(j - i);
        for k in i..j {
            let body = self.events[k].value.bytes();
            let entry = self.entry(&message.name, body, key_kind, value_kind)?;
            self.order.push(SortKey {
                prefix: sort_prefix(entry.key),
                index: self.entries.len(),
            });
            self.entries.push(entry);
        }
        // Equal keys end up adjacent with the latest occurrence (highest index) first.
        let (entries, stats) = (&self.entries, &mut self.stats);
        self.order[order_start..].sort_unstable_by(|a, b| {
            stats.comparisons += 1;
            a.prefix
                .cmp(&b.prefix)
                .then_with(|| match (entries.get(a.index), entries.get(b.index)) {
                    (Some(x), Some(y)) => upb_key_order(x.key, y.key),
                    _ => Ordering::Equal,
                })
                .then_with(|| b.index.cmp(&a.index))
        });
        let order_end = self.order.len();
        let mut previous: Option<Raw<'a>> = None;
        for k in order_start..order_end {
            let Some(&entry) = self.entries.get(self.order[k].index) else {
                continue;
            };
            self.stats.comparisons += 1;
            if previous == Some(entry.key) {
                continue;
            }
            previous = Some(entry.key);
            let open = self.open(field.number);
            // upb validates map keys and values like any other `string` field.
            check_utf8_as(message, field, key_kind, entry.key)?;
            self.push(Token::Field {
                number: 1,
                value: entry.key,
            });
            if value_kind == Kind::Message {
                let sub = field_value_message(field, value_message)?;
                let chunks = if entry.values > 1 {
                    entry_values(&message.name, entry.body)?
                } else if entry.values == 1 {
                    Chunks::One([entry.value.bytes()])
                } else {
                    Chunks::Empty
                };
                let value_open = self.open(2);
                self.message(sub, chunks.as_slice(), depth + 1)?;
                self.close(value_open);
            } else {
                let value = normalize(value_kind, entry.value);
                check_utf8_as(message, field, value_kind, value)?;
                self.push(Token::Field { number: 2, value });
            }
            self.close(open);
        }
        self.entries.truncate(start);
        self.order.truncate(order_start);
        Ok(())
    }

    /// Reads one map entry. Fields other than key and value, and key or value occurrences with
    /// another wire type, are ignored, as the reference's parser does.
    fn entry(
        &mut self,
        context: &str,
        body: &'a [u8],
        key_kind: Kind,
        value_kind: Kind,
    ) -> Result<Entry<'a>, CanonicalError> {
        let mut entry = Entry {
            key: Raw::default_of(key_kind),
            value: Raw::default_of(value_kind),
            values: 0,
            body,
        };
        let mut reader = Reader::new(body, context);
        while !reader.done() {
            let tag = reader.varint()?;
            let wire_type = (tag & 7) as u8;
            let raw = reader.value(wire_type)?;
            self.stats.fields += 1;
            match tag >> 3 {
                1 if wire_type == key_kind.wire_type() => entry.key = normalize(key_kind, raw),
                2 if wire_type == value_kind.wire_type() => {
                    entry.value = raw;
                    entry.values = entry.values.saturating_add(1);
                }
                _ => {}
            }
        }
        Ok(entry)
    }

    /// Lays out a packed run of `kind` values, validating it.
    fn packed_run(
        &mut self,
        message: &MessageSchema,
        kind: Kind,
        run: &'a [u8],
    ) -> Result<(), CanonicalError> {
        let width = match kind.wire_type() {
            WIRE_I64 => 8,
            WIRE_I32 => 4,
            _ => 0,
        };
        if width > 0 {
            // Fixed-width values need no normalization: the run is canonical if it is whole.
            if !run.len().is_multiple_of(width) {
                return Err(CanonicalError::Truncated(message.name.clone()));
            }
            self.stats.fields += (run.len() / width) as u64;
            self.push(Token::Verbatim(run));
            return Ok(());
        }
        let mut reader = Reader::new(run, &message.name);
        let mut len = 0;
        let mut canonical = true;
        while !reader.done() {
            let before = reader.pos;
            let value = reader.varint()?;
            let normalized = normalize_varint(kind, value);
            let size = varint_len(normalized);
            canonical &= normalized == value && size == (reader.pos - before) as u64;
            len += size;
            self.stats.fields += 1;
        }
        let token = if canonical {
            Token::Verbatim(run)
        } else {
            Token::Run { kind, bytes: run }
        };
        self.tokens.push(token);
        self.stats.tokens += 1;
        self.len += len;
        Ok(())
    }

    fn push(&mut self, token: Token<'a>) {
        self.len += match token {
            Token::Field { number, value } => {
                varint_len(tag(number, value.wire_type())) + value.encoded_len()
            }
            Token::Value(value) => value.encoded_len(),
            Token::Verbatim(bytes) => bytes.len() as u64,
            // Not pushed through here: see `open`, `close` and `packed_run`.
            Token::Open { .. } | Token::Run { .. } => 0,
        };
        self.tokens.push(token);
        self.stats.tokens += 1;
    }

    fn open(&mut self, number: u32) -> Opened {
        let at = self.tokens.len();
        self.tokens.push(Token::Open { number, len: 0 });
        self.stats.tokens += 1;
        Opened {
            at,
            before: self.len,
        }
    }

    /// Patches the length of an `Open` token now that its body is laid out.
    fn close(&mut self, opened: Opened) {
        let body = self.len - opened.before;
        if let Some(Token::Open { number, len }) = self.tokens.get_mut(opened.at) {
            *len = body;
            self.len += varint_len(tag(*number, WIRE_LEN)) + varint_len(body);
        }
    }
}

fn field_value_message(
    field: &Field,
    value_message: Option<usize>,
) -> Result<usize, CanonicalError> {
    value_message.ok_or_else(|| CanonicalError::UnknownType(field.type_name.clone()))
}

/// The message values of a map entry that carries several, to be merged.
fn entry_values<'a>(context: &str, body: &'a [u8]) -> Result<Chunks<'a>, CanonicalError> {
    let mut chunks = Chunks::default();
    let mut reader = Reader::new(body, context);
    while !reader.done() {
        let tag = reader.varint()?;
        let wire_type = (tag & 7) as u8;
        let raw = reader.value(wire_type)?;
        if tag >> 3 == 2 && wire_type == WIRE_LEN {
            chunks.push(raw.bytes());
        }
    }
    Ok(chunks)
}

/// Brings a scalar to the value the reference's parser would hold for its declared type.
fn normalize(kind: Kind, raw: Raw<'_>) -> Raw<'_> {
    match raw {
        Raw::Varint(v) => Raw::Varint(normalize_varint(kind, v)),
        raw => raw,
    }
}

fn normalize_varint(kind: Kind, v: u64) -> u64 {
    match kind {
        Kind::Bool => u64::from(v != 0),
        // Truncate to 32 bits, then sign-extend: negative int32s go out as ten-byte varints.
        Kind::Int32 => i64::from(v as u32 as i32) as u64,
        Kind::Uint32 => u64::from(v as u32),
        _ => v,
    }
}

/// A key's first sixteen bytes, padded with `0xff`, read big-endian; an integer key inverted.
///
/// Where two prefixes differ they order the keys as [`upb_key_order`] does: at the first
/// differing byte either both keys have real bytes, or the shorter key ended there (padding
/// `0xff` is at least any real byte, and upb puts the longer key first). Equal prefixes need
/// the full comparison.
fn sort_prefix(key: Raw<'_>) -> u128 {
    match key {
        Raw::Len(bytes) => {
            let mut prefix = [0xff; 16];
            for (dst, src) in prefix.iter_mut().zip(bytes) {
                *dst = *src;
            }
            u128::from_be_bytes(prefix)
        }
        // Descending order of the value.
        Raw::Varint(v) | Raw::Fixed64(v) => u128::from(!v),
        Raw::Fixed32(v) => u128::from(!u64::from(v)),
    }
}

/// upb's deterministic map order (AUTH.md §6 rule 7).
fn upb_key_order(a: Raw<'_>, b: Raw<'_>) -> Ordering {
    match (a, b) {
        (Raw::Len(a), Raw::Len(b)) => {
            let common = a.len().min(b.len());
            // Bytes ascending; when one key is a prefix of the other the longer one goes first.
            a[..common]
                .cmp(&b[..common])
                .then_with(|| b.len().cmp(&a.len()))
        }
        // Integer (and bool) keys come out in descending order.
        (Raw::Varint(a), Raw::Varint(b)) => b.cmp(&a),
        (Raw::Fixed64(a), Raw::Fixed64(b)) => b.cmp(&a),
        (Raw::Fixed32(a), Raw::Fixed32(b)) => b.cmp(&a),
        _ => Ordering::Equal,
    }
}

fn check_utf8(message: &MessageSchema, field: &Field, raw: Raw<'_>) -> Result<(), CanonicalError> {
    check_utf8_as(message, field, field.kind, raw)
}

fn check_utf8_as(
    message: &MessageSchema,
    field: &Field,
    kind: Kind,
    raw: Raw<'_>,
) -> Result<(), CanonicalError> {
    if let (Kind::String, Raw::Len(bytes)) = (kind, raw) {
        if std::str::from_utf8(bytes).is_err() {
            return Err(CanonicalError::InvalidUtf8 {
                message: message.name.clone(),
                field: field.name.clone(),
            });
        }
    }
    Ok(())
}

fn tag(number: u32, wire_type: u8) -> u64 {
    (u64::from(number) << 3) | u64::from(wire_type)
}

fn varint_len(value: u64) -> u64 {
    // Seven bits per byte; zero still takes one byte.
    u64::from((64 - (value | 1).leading_zeros()).div_ceil(7))
}

// ---------------------------------------------------------------------------------------------
// Emit
// ---------------------------------------------------------------------------------------------

/// Size of the stack buffer that batches small pieces for the sink.
const BUFFER: usize = 4096;
/// Values at least this long bypass the buffer and reach the sink as the input slice.
const PASS_THROUGH: usize = 256;

#[derive(Debug, Default, Clone, Copy)]
struct Emitted {
    bytes: u64,
    sink_calls: u64,
}

struct Buffered<'s, S: Sink + ?Sized> {
    sink: &'s mut S,
    buf: [u8; BUFFER],
    used: usize,
    emitted: Emitted,
}

impl<S: Sink + ?Sized> Buffered<'_, S> {
    fn flush(&mut self) {
        if self.used > 0 {
            self.sink.write(&self.buf[..self.used]);
            self.emitted.sink_calls += 1;
            self.emitted.bytes += self.used as u64;
            self.used = 0;
        }
    }

    fn varint(&mut self, mut value: u64) {
        // A varint takes at most ten bytes.
        if BUFFER - self.used < 10 {
            self.flush();
        }
        while value >= 0x80 {
            self.buf[self.used] = (value as u8) | 0x80;
            self.used += 1;
            value >>= 7;
        }
        self.buf[self.used] = value as u8;
        self.used += 1;
    }

    fn value(&mut self, value: Raw<'_>) {
        match value {
            Raw::Varint(v) => self.varint(v),
            Raw::Fixed64(v) => self.bytes(&v.to_le_bytes()),
            Raw::Fixed32(v) => self.bytes(&v.to_le_bytes()),
            Raw::Len(bytes) => {
                self.varint(bytes.len() as u64);
                self.bytes(bytes);
            }
        }
    }

    fn bytes(&mut self, bytes: &[u8]) {
        if bytes.len() >= PASS_THROUGH {
            self.flush();
            self.sink.write(bytes);
            self.emitted.sink_calls += 1;
            self.emitted.bytes += bytes.len() as u64;
            return;
        }
        if BUFFER - self.used < bytes.len() {
            self.flush();
        }
        self.buf[self.used..self.used + bytes.len()].copy_from_slice(bytes);
        self.used += bytes.len();
    }
}

// ---------------------------------------------------------------------------------------------
// Wire reader
// ---------------------------------------------------------------------------------------------

struct Reader<'a, 'c> {
    wire: &'a [u8],
    pos: usize,
    /// Message name for error messages.
    context: &'c str,
}

impl<'a, 'c> Reader<'a, 'c> {
    fn new(wire: &'a [u8], context: &'c str) -> Self {
        Self {
            wire,
            pos: 0,
            context,
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.wire.len()
    }

    fn truncated(&self) -> CanonicalError {
        CanonicalError::Truncated(self.context.to_owned())
    }

    fn bad_tag(&self) -> CanonicalError {
        CanonicalError::BadTag(self.context.to_owned())
    }

    /// The input from `start` to the current position.
    fn since(&self, start: usize) -> &'a [u8] {
        self.wire.get(start..self.pos).unwrap_or_default()
    }

    fn varint(&mut self) -> Result<u64, CanonicalError> {
        let mut value = 0u64;
        for shift in 0..10 {
            let byte = *self.wire.get(self.pos).ok_or_else(|| self.truncated())?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * shift);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CanonicalError::BadVarint(self.context.to_owned()))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CanonicalError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.wire.len());
        let end = end.ok_or_else(|| self.truncated())?;
        let bytes = self
            .wire
            .get(self.pos..end)
            .ok_or_else(|| self.truncated())?;
        self.pos = end;
        Ok(bytes)
    }

    fn value(&mut self, wire_type: u8) -> Result<Raw<'a>, CanonicalError> {
        Ok(match wire_type {
            WIRE_VARINT => Raw::Varint(self.varint()?),
            WIRE_I64 => {
                let bytes: [u8; 8] = self.take(8)?.try_into().map_err(|_| self.truncated())?;
                Raw::Fixed64(u64::from_le_bytes(bytes))
            }
            WIRE_I32 => {
                let bytes: [u8; 4] = self.take(4)?.try_into().map_err(|_| self.truncated())?;
                Raw::Fixed32(u32::from_le_bytes(bytes))
            }
            WIRE_LEN => {
                let len = usize::try_from(self.varint()?).map_err(|_| self.truncated())?;
                Raw::Len(self.take(len)?)
            }
            _ => return Err(self.bad_tag()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths() {
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(u64::MAX), 10);
    }

    #[test]
    fn large_bytes_reach_the_sink_as_the_input_slice() {
        // GetFabRequest.hash_str (field 2) is a string; 4 KiB of ASCII.
        let mut wire = vec![0x12, 0x80, 0x20];
        wire.extend(std::iter::repeat_n(b'a', 4096));
        let payload = &wire[3..];
        let mut calls = Vec::new();
        let emitted = canonicalize_into("flwr.proto.GetFabRequest", &wire, &mut |b: &[u8]| {
            calls.push((b.as_ptr(), b.len()));
        })
        .expect("canonical");
        assert_eq!(emitted, wire.len() as u64);
        // Tag and length from the buffer, then the payload itself: borrowed, not copied.
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].1, 3);
        assert_eq!(calls[1], (payload.as_ptr(), 4096));
    }

    #[test]
    fn the_sink_sees_nothing_when_the_input_is_refused() {
        // A valid node, then a truncated field.
        let wire = [0x0a, 0x02, 0x08, 0x05, 0x10];
        let mut called = false;
        let result = canonicalize_into("flwr.proto.PingRequest", &wire, &mut |_: &[u8]| {
            called = true;
        });
        assert!(result.is_err());
        assert!(!called);
    }

    #[test]
    fn sort_prefixes_agree_with_upb_order_wherever_they_differ() {
        let keys: Vec<&[u8]> = vec![
            b"",
            b"a",
            b"ab",
            b"abcdefghijklmnop",
            b"abcdefghijklmnopq",
            b"abcdefghijklmnoo\xff",
            b"abcdefghijklmno",
            b"abcdefghijklmno\xff",
            b"abcdefghijklmno\xff\xff",
            b"\xff",
            &[0xff; 16],
            &[0xff; 15],
            &[0xff; 17],
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x00",
            b"b",
        ];
        for a in &keys {
            for b in &keys {
                let (a, b) = (Raw::Len(a), Raw::Len(b));
                let by_prefix = sort_prefix(a).cmp(&sort_prefix(b));
                if by_prefix != Ordering::Equal {
                    assert_eq!(by_prefix, upb_key_order(a, b), "{a:?} {b:?}");
                }
            }
        }
        for (x, y) in [(0u64, 1u64), (7, u64::MAX), (1 << 63, 5)] {
            let by_prefix = sort_prefix(Raw::Varint(x)).cmp(&sort_prefix(Raw::Varint(y)));
            assert_eq!(by_prefix, upb_key_order(Raw::Varint(x), Raw::Varint(y)));
        }
    }

    #[test]
    fn a_handle_names_its_type() {
        let ty = message_type(".flwr.proto.PingRequest").expect("known");
        assert_eq!(ty.name(), "flwr.proto.PingRequest");
        assert_eq!(format!("{ty:?}"), "MessageType(\"flwr.proto.PingRequest\")");
        assert!(matches!(
            message_type("flwr.proto.Nope"),
            Err(CanonicalError::UnknownType(_))
        ));
    }
}
