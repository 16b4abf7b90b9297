//! Generators of arbitrary Flower messages, shared by the property tests.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use flwr_proto::{
    configs_record_value, metrics_record_value, Array, ConfigsRecord, ConfigsRecordValue,
    DoubleList, Error, MetricsRecord, MetricsRecordValue, Node, ParametersRecord,
    PushTaskResRequest, RecordSet, SintList, StringList, Task, TaskRes, UintList,
};
use proptest::prelude::*;

pub fn key() -> impl Strategy<Value = String> {
    // Short keys over a tiny alphabet, so prefixes of one another are common.
    "[ab_]{0,4}"
}

pub fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("NaN never equals itself", |v| !v.is_nan()),
        Just(-0.0)
    ]
}

pub fn configs_value() -> impl Strategy<Value = ConfigsRecordValue> {
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

pub fn metrics_value() -> impl Strategy<Value = MetricsRecordValue> {
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

pub fn array() -> impl Strategy<Value = Array> {
    (
        "[a-z0-9]{0,8}",
        prop::collection::vec(any::<i32>(), 0..4),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(dtype, shape, data)| Array {
            dtype,
            shape,
            stype: "numpy.ndarray".into(),
            data: data.into(),
        })
}

pub fn record_set() -> impl Strategy<Value = RecordSet> {
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

pub fn request() -> impl Strategy<Value = PushTaskResRequest> {
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
