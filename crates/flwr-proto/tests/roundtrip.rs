//! Property tests: the canonical encoding is a faithful, order-independent encoding.

use std::collections::HashMap;

use flwr_proto::{
    canonical, configs_record_value, metrics_record_value, scalar, Array, ConfigsRecord,
    ConfigsRecordValue, DoubleList, Error, MetricsRecord, MetricsRecordValue, Node,
    ParametersRecord, PushTaskResRequest, RecordSet, Scalar, SintList, StringList, Task, TaskRes,
    UintList,
};
use proptest::prelude::*;
use prost::Message as _;

fn key() -> impl Strategy<Value = String> {
    // Short keys over a tiny alphabet, so prefixes of one another are common.
    "[ab_]{0,4}"
}

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("NaN never equals itself", |v| !v.is_nan()),
        Just(-0.0)
    ]
}

fn configs_value() -> impl Strategy<Value = ConfigsRecordValue> {
    use configs_record_value::Value as V;
    prop_oneof![
        finite().prop_map(V::Double),
        any::<i64>().prop_map(V::Sint64),
        any::<u64>().prop_map(V::Uint64),
        any::<bool>().prop_map(V::Bool),
        ".{0,6}".prop_map(V::String),
        prop::collection::vec(any::<u8>(), 0..6).prop_map(V::Bytes),
        prop::collection::vec(any::<i64>(), 0..4).prop_map(|vals| V::SintList(SintList { vals })),
        prop::collection::vec(".{0,3}", 0..3).prop_map(|vals| V::StringList(StringList { vals })),
    ]
    .prop_map(|value| ConfigsRecordValue { value: Some(value) })
}

fn metrics_value() -> impl Strategy<Value = MetricsRecordValue> {
    use metrics_record_value::Value as V;
    prop_oneof![
        finite().prop_map(V::Double),
        any::<i64>().prop_map(V::Sint64),
        any::<u64>().prop_map(V::Uint64),
        prop::collection::vec(finite(), 0..4).prop_map(|vals| V::DoubleList(DoubleList { vals })),
        prop::collection::vec(any::<u64>(), 0..4).prop_map(|vals| V::UintList(UintList { vals })),
    ]
    .prop_map(|value| MetricsRecordValue { value: Some(value) })
}

fn array() -> impl Strategy<Value = Array> {
    (
        "[a-z0-9]{0,8}",
        prop::collection::vec(any::<i32>(), 0..4),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(dtype, shape, data)| Array {
            dtype,
            shape,
            stype: "numpy.ndarray".into(),
            data,
        })
}

fn record_set() -> impl Strategy<Value = RecordSet> {
    let parameters = prop::collection::hash_map(
        key(),
        prop::collection::vec((key(), array()), 0..3).prop_map(|pairs| {
            let (data_keys, data_values) = pairs.into_iter().unzip();
            ParametersRecord {
                data_keys,
                data_values,
            }
        }),
        0..3,
    );
    let metrics = prop::collection::hash_map(
        key(),
        prop::collection::hash_map(key(), metrics_value(), 0..5)
            .prop_map(|data| MetricsRecord { data }),
        0..3,
    );
    let configs = prop::collection::hash_map(
        key(),
        prop::collection::hash_map(key(), configs_value(), 0..5)
            .prop_map(|data| ConfigsRecord { data }),
        0..3,
    );
    (parameters, metrics, configs).prop_map(|(parameters, metrics, configs)| RecordSet {
        parameters,
        metrics,
        configs,
    })
}

fn request() -> impl Strategy<Value = PushTaskResRequest> {
    (any::<u64>(), record_set(), any::<bool>(), finite()).prop_map(
        |(node_id, recordset, failed, ttl)| {
            let (recordset, error) = if failed {
                (
                    None,
                    Some(Error {
                        code: 2,
                        reason: "boom".into(),
                    }),
                )
            } else {
                (Some(recordset), None)
            };
            PushTaskResRequest {
                node: Some(Node {
                    node_id,
                    anonymous: false,
                }),
                task_res_list: vec![TaskRes {
                    task_id: String::new(),
                    group_id: "1".into(),
                    run_id: node_id / 3,
                    task: Some(Task {
                        producer: Some(Node {
                            node_id,
                            anonymous: false,
                        }),
                        consumer: Some(Node {
                            node_id: 0,
                            anonymous: true,
                        }),
                        ttl,
                        ancestry: vec!["x".into()],
                        task_type: "train".into(),
                        recordset,
                        error,
                        ..Default::default()
                    }),
                }],
            }
        },
    )
}

/// Rebuilds every map with a different insertion history.
fn reshuffled(record: &RecordSet) -> RecordSet {
    fn rev<V: Clone>(map: &HashMap<String, V>) -> HashMap<String, V> {
        let mut entries: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        entries.reverse();
        let mut out = HashMap::with_capacity(entries.len() * 4);
        out.extend(entries);
        out
    }
    RecordSet {
        parameters: rev(&record.parameters),
        metrics: rev(&record.metrics)
            .into_iter()
            .map(|(k, v)| (k, MetricsRecord { data: rev(&v.data) }))
            .collect(),
        configs: rev(&record.configs)
            .into_iter()
            .map(|(k, v)| (k, ConfigsRecord { data: rev(&v.data) }))
            .collect(),
    }
}

proptest! {
    #[test]
    fn canonical_bytes_decode_to_the_same_message(request in request()) {
        let bytes = canonical::encode(&request).expect("encode");
        let decoded = PushTaskResRequest::decode(bytes.as_slice()).expect("decode");
        prop_assert_eq!(&decoded, &request);
        // Idempotent: canonical input comes back unchanged.
        let again = canonical::canonicalize("flwr.proto.PushTaskResRequest", &bytes).expect("again");
        prop_assert_eq!(again, bytes);
    }

    #[test]
    fn map_insertion_order_does_not_matter(record in record_set()) {
        let shuffled = reshuffled(&record);
        prop_assert_eq!(canonical::encode(&record).expect("a"), canonical::encode(&shuffled).expect("b"));
    }

    #[test]
    fn scalars_round_trip(value in prop_oneof![
        finite().prop_map(scalar::Scalar::Double),
        any::<u64>().prop_map(scalar::Scalar::Uint64),
        any::<i64>().prop_map(scalar::Scalar::Sint64),
        any::<bool>().prop_map(scalar::Scalar::Bool),
        ".{0,5}".prop_map(scalar::Scalar::String),
    ]) {
        let message = Scalar { scalar: Some(value) };
        let bytes = canonical::encode(&message).expect("encode");
        prop_assert!(!bytes.is_empty(), "a set oneof member is always written");
        prop_assert_eq!(Scalar::decode(bytes.as_slice()).expect("decode"), message);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = canonical::canonicalize("flwr.proto.PushTaskResRequest", &bytes);
    }
}
