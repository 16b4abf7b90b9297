//! Flower 1.14 wire types and gRPC services, plus the canonical encoding that node
//! authentication signs.
//!
//! # Layout
//!
//! - the crate root re-exports every message and service of package `flwr.proto`, generated at
//!   build time from `proto/flwr/proto/*.proto` (prost types, tonic clients and servers, e.g.
//!   [`fleet_client::FleetClient`], [`fleet_server::FleetServer`]);
//! - [`canonical`]: the reference's *deterministic* serialization (protobuf upb backend), which
//!   differs from prost's encoding in map entry layout and order;
//! - [`MAX_MESSAGE_SIZE`]: the message size limit every Flower server and channel uses.

#![warn(missing_docs)]

pub mod canonical;

/// Generated prost and tonic code for package `flwr.proto`.
#[rustfmt::skip]
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)] // generated code
mod generated {
    include!(concat!(env!("OUT_DIR"), "/flwr.proto.rs"));
}

pub use generated::*;

/// 512 MiB: the send and receive limit on every gRPC server and channel of the reference.
pub const MAX_MESSAGE_SIZE: usize = 536_870_912;

/// The compiled descriptor set of every `.proto` file, as encoded `FileDescriptorSet` bytes.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flwr_descriptor.bin"));
