//! Every request the SuperLink and the SuperNode decode from the network, fed arbitrary bytes:
//! prost decoding and the canonical encoder (which runs before the token is checked) never
//! panic, and the encoder's work stays linear in the input. Counted, not timed.

use flwr_proto::canonical;
use proptest::prelude::*;

/// Decodes `bytes` as `T`, ignoring the outcome: only a panic fails.
fn decode<T: prost::Message + Default>(bytes: &[u8]) {
    let _ = T::decode(bytes);
}

/// The request types of the Fleet, ServerAppIo, Exec and ClientAppIo APIs.
const REQUESTS: &[&str] = &[
    "flwr.proto.CreateNodeRequest",
    "flwr.proto.DeleteNodeRequest",
    "flwr.proto.PingRequest",
    "flwr.proto.PullTaskInsRequest",
    "flwr.proto.PushTaskResRequest",
    "flwr.proto.GetRunRequest",
    "flwr.proto.GetFabRequest",
    "flwr.proto.PushTaskInsRequest",
    "flwr.proto.PullTaskResRequest",
    "flwr.proto.CreateRunRequest",
    "flwr.proto.GetNodesRequest",
    "flwr.proto.UpdateRunStatusRequest",
    "flwr.proto.PushServerAppOutputsRequest",
    "flwr.proto.PushLogsRequest",
    "flwr.proto.StartRunRequest",
    "flwr.proto.StopRunRequest",
    "flwr.proto.StreamLogsRequest",
    "flwr.proto.ListRunsRequest",
    "flwr.proto.PullClientAppInputsRequest",
    "flwr.proto.PushClientAppOutputsRequest",
];

/// Bytes that look like protobuf more often than uniform noise does: tags, varints and length
/// prefixes mixed with anything.
fn wire() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            any::<u8>(),
            prop::sample::select(vec![
                0x0a_u8, 0x12, 0x1a, 0x22, 0x08, 0x10, 0x80, 0xff, 0x01, 0x00
            ]),
        ],
        0..2048,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_request_decoder_survives_arbitrary_bytes(bytes in wire()) {
        decode::<flwr_proto::CreateNodeRequest>(&bytes);
        decode::<flwr_proto::DeleteNodeRequest>(&bytes);
        decode::<flwr_proto::PingRequest>(&bytes);
        decode::<flwr_proto::PullTaskInsRequest>(&bytes);
        decode::<flwr_proto::PushTaskResRequest>(&bytes);
        decode::<flwr_proto::GetRunRequest>(&bytes);
        decode::<flwr_proto::GetFabRequest>(&bytes);
        decode::<flwr_proto::PushTaskInsRequest>(&bytes);
        decode::<flwr_proto::PullTaskResRequest>(&bytes);
        decode::<flwr_proto::CreateRunRequest>(&bytes);
        decode::<flwr_proto::GetNodesRequest>(&bytes);
        decode::<flwr_proto::UpdateRunStatusRequest>(&bytes);
        decode::<flwr_proto::PushServerAppOutputsRequest>(&bytes);
        decode::<flwr_proto::PushLogsRequest>(&bytes);
        decode::<flwr_proto::StartRunRequest>(&bytes);
        decode::<flwr_proto::StopRunRequest>(&bytes);
        decode::<flwr_proto::StreamLogsRequest>(&bytes);
        decode::<flwr_proto::ListRunsRequest>(&bytes);
        decode::<flwr_proto::PullClientAppInputsRequest>(&bytes);
        decode::<flwr_proto::PushClientAppOutputsRequest>(&bytes);
    }

    #[test]
    fn the_canonical_encoder_does_linear_work_on_arbitrary_bytes(bytes in wire()) {
        for name in REQUESTS {
            if let Ok((_, stats)) = canonical::canonicalize_counting(name, &bytes) {
                let n = bytes.len() as u64 + 1;
                // Every parsed field consumes at least one input byte; sorting map keys adds
                // the n log n of comparisons.
                prop_assert!(stats.fields <= n, "{name}: {stats:?} for {n} bytes");
                prop_assert!(stats.comparisons <= n * 12, "{name}: {stats:?} for {n} bytes");
                prop_assert!(stats.tokens <= 4 * n, "{name}: {stats:?} for {n} bytes");
            }
        }
    }
}

#[test]
fn every_listed_request_type_is_known_to_the_canonical_encoder() {
    for name in REQUESTS {
        assert!(canonical::message_type(name).is_ok(), "{name}");
        assert!(
            canonical::canonicalize(name, &[]).is_ok(),
            "{name}: the empty message"
        );
    }
}
