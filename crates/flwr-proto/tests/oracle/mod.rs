//! The first canonical transcoder, kept verbatim (bar instrumentation) as a test oracle.
//!
//! It copies every payload at every nesting level and deduplicates map keys with a `retain` per
//! inserted entry, so it is quadratic in map entries; the library's encoder replaced it. Tests
//! check that the new encoder produces the same bytes, and use [`work`] to show that the
//! linear-work test would catch the old behaviour.
//!
//! Known, deliberate differences of the new encoder (both agree whenever the new one accepts):
//! it parses each occurrence of a merged sub-message on its own, as upb does, so a sub-message
//! split in the middle of a field across two occurrences is refused; it validates UTF-8 in
//! `string` map keys and values; and it normalizes scalar map values (e.g. `uint32` truncation).

#![allow(dead_code, unreachable_pub)] // each test binary uses a different part of the oracle

use std::{cmp::Ordering, collections::HashMap, sync::OnceLock};

use flwr_proto::canonical::CanonicalError;
use prost::Message as _;
use prost_types::{
    field_descriptor_proto::{Label, Type},
    DescriptorProto, FileDescriptorSet,
};

/// upb's default recursion limit; deeper input is refused rather than risking the stack.
const MAX_DEPTH: usize = 100;

/// Re-encodes `wire`, any valid encoding of message `type_name` (e.g. `flwr.proto.PingRequest`),
/// canonically.
///
/// # Errors
///
/// When `wire` does not parse as that message the way the reference's parser would refuse it.
pub fn canonicalize(type_name: &str, wire: &[u8]) -> Result<Vec<u8>, CanonicalError> {
    let schema = schema()?;
    let key = format!(".{}", type_name.trim_start_matches('.'));
    let message = schema
        .messages
        .get(&key)
        .ok_or_else(|| CanonicalError::UnknownType(type_name.to_owned()))?;
    let mut out = Vec::with_capacity(wire.len());
    schema.transcode(message, wire, &mut out, 0)?;
    Ok(out)
}

thread_local! {
    static WORK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts one unit of work (a field parsed, a key compared).
fn tick() {
    WORK.with(|w| w.set(w.get() + 1));
}

/// The work counted on this thread since the last call, which resets it.
pub fn work() -> u64 {
    WORK.with(|w| w.replace(0))
}

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
        oneof: Option<i32>,
    },
    Repeated,
    Map {
        key: Kind,
        value: Kind,
        value_type: String,
    },
}

#[derive(Debug)]
struct Field {
    name: String,
    kind: Kind,
    /// Fully qualified message type name for message fields.
    type_name: String,
    shape: Shape,
}

#[derive(Debug)]
struct MessageSchema {
    name: String,
    /// Sorted by field number.
    fields: Vec<(u32, Field)>,
}

impl MessageSchema {
    fn field(&self, number: u32) -> Option<(usize, &Field)> {
        let index = self
            .fields
            .binary_search_by_key(&number, |(n, _)| *n)
            .ok()?;
        Some((index, &self.fields[index].1))
    }
}

#[derive(Debug)]
struct Schema {
    messages: HashMap<String, MessageSchema>,
}

fn schema() -> Result<&'static Schema, CanonicalError> {
    static SCHEMA: OnceLock<Result<Schema, String>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| Schema::load(flwr_proto::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| CanonicalError::Descriptor(e.clone()))
}

impl Schema {
    fn load(bytes: &[u8]) -> Result<Self, CanonicalError> {
        let set = FileDescriptorSet::decode(bytes)
            .map_err(|e| CanonicalError::Descriptor(e.to_string()))?;
        let mut raw = HashMap::new();
        for file in &set.file {
            let prefix = match file.package() {
                "" => String::new(),
                package => format!(".{package}"),
            };
            for message in &file.message_type {
                collect(&prefix, message, &mut raw);
            }
        }
        let mut messages = HashMap::new();
        for (name, descriptor) in &raw {
            let mut fields = Vec::new();
            for field in &descriptor.field {
                let number = u32::try_from(field.number())
                    .map_err(|_| CanonicalError::Descriptor(format!("{name}: bad number")))?;
                let kind = Kind::of(field.r#type())?;
                let entry = raw
                    .get(field.type_name())
                    .filter(|d| d.options.as_ref().is_some_and(|o| o.map_entry()));
                let shape = match (field.label(), entry) {
                    (Label::Repeated, Some(entry)) => map_shape(entry)?,
                    (Label::Repeated, None) => Shape::Repeated,
                    _ => Shape::Singular {
                        explicit_presence: field.proto3_optional() || field.oneof_index.is_some(),
                        oneof: field.oneof_index,
                    },
                };
                let field = Field {
                    name: field.name().to_owned(),
                    kind,
                    type_name: field.type_name().to_owned(),
                    shape,
                };
                fields.push((number, field));
            }
            fields.sort_by_key(|(n, _)| *n);
            messages.insert(
                name.clone(),
                MessageSchema {
                    name: name.clone(),
                    fields,
                },
            );
        }
        Ok(Self { messages })
    }

    fn message(&self, name: &str) -> Result<&MessageSchema, CanonicalError> {
        self.messages
            .get(name)
            .ok_or_else(|| CanonicalError::UnknownType(name.to_owned()))
    }

    /// Parses `wire` as `message` and appends its canonical encoding to `out`.
    fn transcode(
        &self,
        message: &MessageSchema,
        wire: &[u8],
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<(), CanonicalError> {
        if depth > MAX_DEPTH {
            return Err(CanonicalError::TooDeep);
        }
        let parsed = parse(message, wire)?;
        for (index, (number, field)) in message.fields.iter().enumerate() {
            let Some(value) = &parsed.values[index] else {
                continue;
            };
            self.emit(message, *number, field, value, out, depth)?;
        }
        out.extend_from_slice(&parsed.unknown);
        Ok(())
    }

    fn emit(
        &self,
        message: &MessageSchema,
        number: u32,
        field: &Field,
        value: &Parsed,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<(), CanonicalError> {
        match (value, &field.shape) {
            (
                Parsed::Single(raw),
                Shape::Singular {
                    explicit_presence, ..
                },
            ) => {
                if field.kind == Kind::Message {
                    // `raw` holds every occurrence concatenated: parsing it merges them.
                    let sub = self.message(&field.type_name)?;
                    let mut body = Vec::new();
                    self.transcode(sub, raw.bytes(), &mut body, depth + 1)?;
                    put_len_field(number, &body, out);
                    return Ok(());
                }
                let value = normalize(field.kind, raw);
                if *explicit_presence || !value.is_default() {
                    check_utf8(message, field, &value)?;
                    put_field(number, field.kind, &value, out);
                }
            }
            (Parsed::List(items), _) if field.kind.is_numeric() => {
                if items.is_empty() {
                    return Ok(());
                }
                let mut body = Vec::new();
                for item in items {
                    put_value(field.kind, &normalize(field.kind, item), &mut body);
                }
                put_len_field(number, &body, out);
            }
            (Parsed::List(items), _) if field.kind == Kind::Message => {
                let sub = self.message(&field.type_name)?;
                for item in items {
                    let mut body = Vec::new();
                    self.transcode(sub, item.bytes(), &mut body, depth + 1)?;
                    put_len_field(number, &body, out);
                }
            }
            (Parsed::List(items), _) => {
                for item in items {
                    check_utf8(message, field, item)?;
                    put_field(number, field.kind, item, out);
                }
            }
            (
                Parsed::Map(entries),
                Shape::Map {
                    key,
                    value,
                    value_type,
                },
            ) => {
                let mut sorted: Vec<(&Raw, &Raw)> = entries.iter().map(|(k, v)| (k, v)).collect();
                sorted.sort_by(|a, b| {
                    tick();
                    upb_key_order(*key, a.0, b.0)
                });
                for (k, v) in sorted {
                    let mut body = Vec::new();
                    put_field(1, *key, k, &mut body);
                    if *value == Kind::Message {
                        let sub = self.message(value_type)?;
                        let mut inner = Vec::new();
                        self.transcode(sub, v.bytes(), &mut inner, depth + 1)?;
                        put_len_field(2, &inner, &mut body);
                    } else {
                        check_utf8(message, field, v)?;
                        put_field(2, *value, v, &mut body);
                    }
                    put_len_field(number, &body, out);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn collect(prefix: &str, message: &DescriptorProto, out: &mut HashMap<String, DescriptorProto>) {
    let name = format!("{prefix}.{}", message.name());
    for nested in &message.nested_type {
        collect(&name, nested, out);
    }
    out.insert(name, message.clone());
}

fn map_shape(entry: &DescriptorProto) -> Result<Shape, CanonicalError> {
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
    Ok(Shape::Map {
        key: Kind::of(key.r#type())?,
        value: Kind::of(value.r#type())?,
        value_type: value.type_name().to_owned(),
    })
}

/// One field value as read from the wire.
#[derive(Debug, Clone)]
enum Raw {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(Vec<u8>),
}

impl Raw {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Len(bytes) => bytes,
            _ => &[],
        }
    }

    fn is_default(&self) -> bool {
        match self {
            Self::Varint(v) | Self::Fixed64(v) => *v == 0,
            Self::Fixed32(v) => *v == 0,
            Self::Len(bytes) => bytes.is_empty(),
        }
    }
}

#[derive(Debug)]
enum Parsed {
    Single(Raw),
    List(Vec<Raw>),
    Map(Vec<(Raw, Raw)>),
}

struct ParsedMessage {
    /// Indexed like `MessageSchema::fields`.
    values: Vec<Option<Parsed>>,
    unknown: Vec<u8>,
}

fn parse(message: &MessageSchema, wire: &[u8]) -> Result<ParsedMessage, CanonicalError> {
    let mut values: Vec<Option<Parsed>> = message.fields.iter().map(|_| None).collect();
    let mut unknown = Vec::new();
    let mut oneof_member: HashMap<i32, usize> = HashMap::new();
    let mut reader = Reader {
        wire,
        pos: 0,
        context: &message.name,
    };
    while !reader.done() {
        let start = reader.pos;
        let tag = reader.varint()?;
        let wire_type = (tag & 7) as u8;
        let number = u32::try_from(tag >> 3).map_err(|_| reader.bad_tag())?;
        if number == 0 {
            return Err(reader.bad_tag());
        }
        let raw = reader.value(wire_type)?;
        tick();
        let known = message.field(number).filter(|(_, field)| {
            let packed = wire_type == WIRE_LEN && field.kind.is_numeric();
            match field.shape {
                Shape::Repeated => wire_type == field.kind.wire_type() || packed,
                Shape::Map { .. } => wire_type == WIRE_LEN,
                Shape::Singular { .. } => wire_type == field.kind.wire_type(),
            }
        });
        // Like upb, a known number with an unexpected wire type is kept as an unknown field.
        let Some((index, field)) = known else {
            unknown.extend_from_slice(&wire[start..reader.pos]);
            continue;
        };
        match &field.shape {
            Shape::Singular { oneof, .. } => {
                if let Some(group) = oneof {
                    // Setting one member of a oneof clears whichever member was set before.
                    if let Some(previous) = oneof_member.insert(*group, index) {
                        if previous != index {
                            values[previous] = None;
                        }
                    }
                }
                let slot = &mut values[index];
                // Repeated occurrences of a singular message merge, i.e. concatenate.
                if let (Some(Parsed::Single(Raw::Len(prev))), Raw::Len(more), Kind::Message) =
                    (slot.as_mut(), &raw, field.kind)
                {
                    prev.extend_from_slice(more);
                } else {
                    *slot = Some(Parsed::Single(raw));
                }
            }
            Shape::Repeated => {
                let Parsed::List(list) =
                    values[index].get_or_insert_with(|| Parsed::List(Vec::new()))
                else {
                    continue;
                };
                match raw {
                    Raw::Len(bytes) if field.kind.is_numeric() => {
                        let mut packed = Reader {
                            wire: &bytes,
                            pos: 0,
                            context: &message.name,
                        };
                        while !packed.done() {
                            list.push(packed.value(field.kind.wire_type())?);
                        }
                    }
                    raw => list.push(raw),
                }
            }
            Shape::Map { key, value, .. } => {
                let entry = parse_entry(&message.name, raw.bytes(), *key, *value)?;
                let Parsed::Map(entries) =
                    values[index].get_or_insert_with(|| Parsed::Map(Vec::new()))
                else {
                    continue;
                };
                let key_value = normalize(*key, &entry.0);
                // A repeated key replaces the earlier entry, as inserting into a map does.
                entries.retain(|(k, _)| {
                    tick();
                    !same_raw(&normalize(*key, k), &key_value)
                });
                entries.push(entry);
            }
        }
    }
    Ok(ParsedMessage { values, unknown })
}

fn parse_entry(
    context: &str,
    bytes: &[u8],
    key: Kind,
    value: Kind,
) -> Result<(Raw, Raw), CanonicalError> {
    let default = |kind: Kind| match kind.wire_type() {
        WIRE_I64 => Raw::Fixed64(0),
        WIRE_I32 => Raw::Fixed32(0),
        WIRE_LEN => Raw::Len(Vec::new()),
        _ => Raw::Varint(0),
    };
    let mut k = default(key);
    let mut v = default(value);
    let mut reader = Reader {
        wire: bytes,
        pos: 0,
        context,
    };
    while !reader.done() {
        let tag = reader.varint()?;
        let wire_type = (tag & 7) as u8;
        let raw = reader.value(wire_type)?;
        match (tag >> 3, raw) {
            (1, raw) if wire_type == key.wire_type() => k = raw,
            (2, Raw::Len(more)) if value == Kind::Message => {
                if let Raw::Len(prev) = &mut v {
                    prev.extend_from_slice(&more);
                }
            }
            (2, raw) if wire_type == value.wire_type() => v = raw,
            _ => {}
        }
    }
    Ok((k, v))
}

fn same_raw(a: &Raw, b: &Raw) -> bool {
    match (a, b) {
        (Raw::Varint(x), Raw::Varint(y)) | (Raw::Fixed64(x), Raw::Fixed64(y)) => x == y,
        (Raw::Fixed32(x), Raw::Fixed32(y)) => x == y,
        (Raw::Len(x), Raw::Len(y)) => x == y,
        _ => false,
    }
}

/// Brings a scalar to the value the reference's parser would hold for its declared type.
fn normalize(kind: Kind, raw: &Raw) -> Raw {
    match (kind, raw) {
        (Kind::Bool, Raw::Varint(v)) => Raw::Varint(u64::from(*v != 0)),
        // Truncate to 32 bits, then sign-extend: negative int32s go out as ten-byte varints.
        (Kind::Int32, Raw::Varint(v)) => Raw::Varint(i64::from(*v as u32 as i32) as u64),
        (Kind::Uint32, Raw::Varint(v)) => Raw::Varint(u64::from(*v as u32)),
        (_, raw) => raw.clone(),
    }
}

/// upb's deterministic map order (AUTH.md §6 rule 7).
fn upb_key_order(kind: Kind, a: &Raw, b: &Raw) -> Ordering {
    match (normalize(kind, a), normalize(kind, b)) {
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

fn check_utf8(message: &MessageSchema, field: &Field, raw: &Raw) -> Result<(), CanonicalError> {
    if let (Kind::String, Raw::Len(bytes)) = (field.kind, raw) {
        if std::str::from_utf8(bytes).is_err() {
            return Err(CanonicalError::InvalidUtf8 {
                message: message.name.trim_start_matches('.').to_owned(),
                field: field.name.clone(),
            });
        }
    }
    Ok(())
}

fn put_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_tag(number: u32, wire_type: u8, out: &mut Vec<u8>) {
    put_varint((u64::from(number) << 3) | u64::from(wire_type), out);
}

fn put_len_field(number: u32, body: &[u8], out: &mut Vec<u8>) {
    put_tag(number, WIRE_LEN, out);
    put_varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

fn put_value(kind: Kind, raw: &Raw, out: &mut Vec<u8>) {
    match raw {
        Raw::Varint(v) => put_varint(*v, out),
        Raw::Fixed64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Raw::Fixed32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Raw::Len(bytes) => {
            debug_assert!(!kind.is_numeric());
            put_varint(bytes.len() as u64, out);
            out.extend_from_slice(bytes);
        }
    }
}

fn put_field(number: u32, kind: Kind, raw: &Raw, out: &mut Vec<u8>) {
    put_tag(number, kind.wire_type(), out);
    put_value(kind, raw, out);
}

struct Reader<'a> {
    wire: &'a [u8],
    pos: usize,
    context: &'a str,
}

impl Reader<'_> {
    fn done(&self) -> bool {
        self.pos >= self.wire.len()
    }

    fn truncated(&self) -> CanonicalError {
        CanonicalError::Truncated(self.context.trim_start_matches('.').to_owned())
    }

    fn bad_tag(&self) -> CanonicalError {
        CanonicalError::BadTag(self.context.trim_start_matches('.').to_owned())
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
        Err(CanonicalError::BadVarint(
            self.context.trim_start_matches('.').to_owned(),
        ))
    }

    fn take(&mut self, n: usize) -> Result<&[u8], CanonicalError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.wire.len());
        let end = end.ok_or_else(|| self.truncated())?;
        let bytes = &self.wire[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn value(&mut self, wire_type: u8) -> Result<Raw, CanonicalError> {
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
                Raw::Len(self.take(len)?.to_vec())
            }
            _ => return Err(self.bad_tag()),
        })
    }
}
