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
//! - [`FleetRpc`]: the Fleet methods by name and gRPC path (hardened tokens cover the path);
//! - [`shared`]: prost's encoding in chunks that share large payloads instead of copying them
//!   (responses carrying a model);
//! - [`MAX_MESSAGE_SIZE`]: the message size limit every Flower server and channel uses, and the
//!   bounds of [`MESSAGE_SIZE_FLAG`] that raises or lowers it.

pub mod canonical;
mod fleet_rpc;
pub mod shared;

/// Generated prost and tonic code for package `flwr.proto`.
#[rustfmt::skip]
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)] // generated code
mod generated {
    include!(concat!(env!("OUT_DIR"), "/flwr.proto.rs"));
}

pub use fleet_rpc::FleetRpc;
pub use generated::*;

/// 512 MiB: the send and receive limit on every gRPC server and channel of the reference, and
/// the default of [`MESSAGE_SIZE_FLAG`].
pub const MAX_MESSAGE_SIZE: usize = 536_870_912;

/// The flag of `flower-superlink` and `flower-supernode` that sets their message-size limit
/// (named after Flower's `grpc_max_message_length` parameter).
pub const MESSAGE_SIZE_FLAG: &str = "--grpc-max-message-length";

/// The environment variable through which a SuperLink or SuperNode tells the apps it launches
/// its [`MESSAGE_SIZE_FLAG`] when that is not the reference's 512 MiB (our Rust app runners
/// read it; Python's `flwr-serverapp` and `flwr-clientapp` keep 512 MiB).
pub const MESSAGE_SIZE_ENV: &str = "FLWR_GRPC_MAX_MESSAGE_LENGTH";

/// The smallest limit [`MESSAGE_SIZE_FLAG`] accepts: gRPC's own default, below which FABs and
/// models of ordinary apps no longer fit.
pub const MIN_MESSAGE_SIZE: usize = 4 << 20;

/// The largest limit [`MESSAGE_SIZE_FLAG`] accepts, 2 GiB − 1: protobuf messages cannot be
/// larger.
pub const MAX_MESSAGE_SIZE_CEILING: usize = (1 << 31) - 1;

/// A status for a message over a size limit as gRPC reports it, with a hint at the flag.
///
/// tonic refuses a message over its limit with `OUT_OF_RANGE` ("… message length too large …"),
/// where gRPC, and so the reference, says `RESOURCE_EXHAUSTED`. Such a status comes back with
/// the reference's code and [`MESSAGE_SIZE_FLAG`] named; any other status is returned as is.
pub fn size_limit_status(status: tonic::Status) -> tonic::Status {
    if status.code() == tonic::Code::OutOfRange && status.message().contains("length too large") {
        return tonic::Status::resource_exhausted(format!(
            "{} (raise the limit on both sides with {MESSAGE_SIZE_FLAG})",
            status.message()
        ));
    }
    status
}

/// A client-side status as gRPC-core would report it: failures in the transport rather than
/// at the server (connection refused or reset, TLS, a stream closed mid-call — tonic says
/// `UNKNOWN`/`INTERNAL`/`CANCELLED` with an error source) become `UNAVAILABLE`, which callers
/// retry; a status the server sent has no source and is kept, as are other codes.
pub fn transport_status(status: tonic::Status) -> tonic::Status {
    let status = size_limit_status(status);
    let from_transport = std::error::Error::source(&status).is_some();
    match status.code() {
        tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled if from_transport => {
            tonic::Status::unavailable(status.message().to_owned())
        }
        _ => status,
    }
}

/// The compiled descriptor set of every `.proto` file, as encoded `FileDescriptorSet` bytes.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flwr_descriptor.bin"));
