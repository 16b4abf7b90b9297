//! The canonical encoder against the bytes the reference produced (testdata/vectors).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::path::PathBuf;

use flwr_proto::canonical;
use prost::Message as _;
use serde_json::Value;

fn vectors() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors/auth_vectors.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("auth_vectors.json parses")
}

fn hex_field(value: &Value, key: &str) -> Vec<u8> {
    let text = value[key]
        .as_str()
        .unwrap_or_else(|| panic!("missing {key}"));
    hex::decode(text).expect("valid hex")
}

/// Decodes with prost and re-encodes canonically: the path our SuperLink takes.
fn via_prost(type_name: &str, wire: &[u8]) -> Vec<u8> {
    fn go<M: prost::Message + prost::Name + Default>(wire: &[u8]) -> Vec<u8> {
        let message = M::decode(wire).expect("prost decodes the reference's bytes");
        canonical::encode(&message).expect("canonical encoding")
    }
    match type_name {
        "CreateNodeRequest" => go::<flwr_proto::CreateNodeRequest>(wire),
        "DeleteNodeRequest" => go::<flwr_proto::DeleteNodeRequest>(wire),
        "PingRequest" => go::<flwr_proto::PingRequest>(wire),
        "PullTaskInsRequest" => go::<flwr_proto::PullTaskInsRequest>(wire),
        "PushTaskResRequest" => go::<flwr_proto::PushTaskResRequest>(wire),
        "GetRunRequest" => go::<flwr_proto::GetRunRequest>(wire),
        "GetFabRequest" => go::<flwr_proto::GetFabRequest>(wire),
        "MetricsRecord" => go::<flwr_proto::MetricsRecord>(wire),
        "Array" => go::<flwr_proto::Array>(wire),
        other => panic!("no prost mapping for {other}"),
    }
}

#[test]
fn every_request_case_encodes_like_the_reference() {
    let vectors = vectors();
    let mut checked = 0;
    for case in vectors["cases"].as_array().expect("cases") {
        let id = case["id"].as_str().unwrap_or("?");
        for (name, request) in case["requests"].as_object().expect("requests") {
            let type_name = name.split('_').next().expect("type name");
            let full = format!("flwr.proto.{type_name}");
            let deterministic = hex_field(request, "deterministic_hex");
            let default = hex_field(request, "default_serialization_hex");

            let from_default = canonical::canonicalize(&full, &default).expect("canonicalize");
            assert_eq!(
                hex::encode(&from_default),
                hex::encode(&deterministic),
                "{id}/{name}: raw"
            );
            assert_eq!(
                hex::encode(via_prost(type_name, &default)),
                hex::encode(&deterministic),
                "{id}/{name}: via prost"
            );
            let again = canonical::canonicalize(&full, &deterministic).expect("canonicalize");
            assert_eq!(again, deterministic, "{id}/{name}: idempotent");
            if let Some(pure) = request.get("pure_python_backend_deterministic_hex") {
                let flag = &request["pure_python_backend_differs"];
                let differs = flag.as_bool().unwrap_or(flag.as_str() == Some("True"));
                let pure = hex::decode(pure.as_str().expect("hex")).expect("hex");
                assert_eq!(
                    pure != deterministic,
                    differs,
                    "{id}/{name}: plain order differs"
                );
            }
            checked += 1;
        }
    }
    // Four key cases, eight requests each.
    assert_eq!(checked, 32);
}

#[test]
fn edge_encodings_match_the_reference() {
    let vectors = vectors();
    let edges = &vectors["edge_encodings"];

    // -0.0 is not the default bit pattern, so the reference writes it. prost's encoder compares
    // floats numerically and drops it, which is why received requests are canonicalized from
    // their wire bytes rather than from the decoded struct.
    let zero = hex_field(
        &edges["PingRequest_negative_zero_interval"],
        "deterministic_hex",
    );
    let ping = flwr_proto::PingRequest::decode(zero.as_slice()).expect("decode");
    assert!(ping.ping_interval.is_sign_negative());
    assert_eq!(
        canonical::canonicalize("flwr.proto.PingRequest", &zero).expect("raw"),
        zero
    );
    let reordered = [&zero[4..], &zero[..4]].concat();
    assert_eq!(
        canonical::canonicalize("flwr.proto.PingRequest", &reordered).expect("raw"),
        zero
    );

    let empty = hex_field(
        &edges["PullTaskInsRequest_empty_node_submessage"],
        "deterministic_hex",
    );
    let pull = flwr_proto::PullTaskInsRequest {
        node: Some(Default::default()),
        task_ids: vec![],
    };
    assert_eq!(canonical::encode(&pull).expect("encode"), empty);
    let none = hex_field(&edges["PullTaskInsRequest_no_node"], "deterministic_hex");
    assert_eq!(
        canonical::encode(&flwr_proto::PullTaskInsRequest::default()).expect("encode"),
        none
    );

    let unknown = &edges["unknown_field_is_moved_to_end_on_reserialization"];
    let moved = canonical::canonicalize("flwr.proto.PingRequest", &hex_field(unknown, "wire_hex"))
        .expect("canonicalize");
    assert_eq!(moved, hex_field(unknown, "deterministic_hex_after_parse"));

    let examples = &edges["explicit_default_and_unpacked_inputs_are_canonicalised"]["examples"];
    for example in examples.as_array().expect("examples") {
        let label = example["message"].as_str().expect("message");
        let type_name = label.split_whitespace().next().expect("type");
        let short = type_name.trim_start_matches("flwr.proto.");
        let wire = hex_field(example, "wire_hex");
        let expected = hex_field(example, "deterministic_hex_after_parse");
        assert_eq!(
            canonical::canonicalize(type_name, &wire).expect("canonicalize"),
            expected,
            "{label}"
        );
        assert_eq!(via_prost(short, &wire), expected, "{label} via prost");
    }

    let orders = edges["string_map_emission_order"]
        .as_object()
        .expect("orders");
    assert!(!orders.is_empty());
    for (keys, order) in orders {
        let expected = hex_field(order, "deterministic_hex");
        // Through a HashMap, so the input order is arbitrary and only the encoder orders it.
        assert_eq!(
            via_prost("MetricsRecord", &expected),
            expected,
            "map order for {keys}"
        );
        let record = flwr_proto::MetricsRecord::decode(expected.as_slice()).expect("decode");
        let emitted: Vec<&str> = order["emitted_order"]
            .as_array()
            .expect("emitted_order")
            .iter()
            .map(|k| k.as_str().expect("key"))
            .collect();
        assert_eq!(record.data.len(), emitted.len());
    }
}

#[test]
fn refuses_what_the_reference_refuses() {
    // A string field with invalid UTF-8 (GetFabRequest.hash_str = 0xff).
    let bad = [0x12, 0x01, 0xff];
    assert!(matches!(
        canonical::canonicalize("flwr.proto.GetFabRequest", &bad),
        Err(canonical::CanonicalError::InvalidUtf8 { .. })
    ));
    // Truncated length-delimited field.
    assert!(canonical::canonicalize("flwr.proto.PingRequest", &[0x0a, 0x05, 0x08]).is_err());
    // Unterminated varint.
    assert!(canonical::canonicalize("flwr.proto.PingRequest", &[0x08, 0xff]).is_err());
    // Field number zero.
    assert!(canonical::canonicalize("flwr.proto.PingRequest", &[0x00, 0x01]).is_err());
    assert!(canonical::canonicalize("flwr.proto.NoSuchMessage", &[]).is_err());
}

#[test]
fn oneof_keeps_only_the_last_member_and_messages_merge() {
    // Scalar{double: 0.0} then Scalar{sint64: 0}: only the sint64 survives, written though default.
    let wire = [0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x00];
    assert_eq!(
        canonical::canonicalize("flwr.proto.Scalar", &wire).expect("ok"),
        vec![0x40, 0x00]
    );
    // Node sent in two pieces merges into one.
    let wire = [0x0a, 0x02, 0x08, 0x05, 0x0a, 0x02, 0x10, 0x01];
    assert_eq!(
        canonical::canonicalize("flwr.proto.PingRequest", &wire).expect("ok"),
        vec![0x0a, 0x04, 0x08, 0x05, 0x10, 0x01]
    );
}

#[test]
fn integer_map_keys_come_out_descending() {
    // AUTH.md §6 rule 7: upb emits integer keys in descending order.
    let mut dict = std::collections::HashMap::new();
    for id in [1u64, u64::MAX, 7, 0, 1 << 63] {
        dict.insert(
            id,
            flwr_proto::RunStatus {
                status: "running".into(),
                ..Default::default()
            },
        );
    }
    let bytes = canonical::encode(&flwr_proto::GetRunStatusResponse {
        run_status_dict: dict,
    })
    .expect("encode");
    let keys: Vec<u64> = decode_entries(&bytes);
    assert_eq!(keys, vec![u64::MAX, 1 << 63, 7, 1, 0]);
    // Both key and value are written even when default: key 0 -> `08 00`.
    assert!(bytes.windows(2).any(|w| w == [0x08, 0x00]));
}

/// Reads the keys of the map entries of field 1, in wire order.
fn decode_entries(bytes: &[u8]) -> Vec<u64> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Entry {
        #[prost(uint64, tag = "1")]
        key: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Entries {
        #[prost(message, repeated, tag = "1")]
        entries: Vec<Entry>,
    }
    Entries::decode(bytes)
        .expect("decode")
        .entries
        .into_iter()
        .map(|e| e.key)
        .collect()
}
