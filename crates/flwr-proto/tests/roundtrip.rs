//! Property tests: the canonical encoding is a faithful, order-independent encoding.

mod common;

use std::collections::HashMap;

use common::{finite, record_set, request};
use flwr_proto::{
    canonical, scalar, ConfigsRecord, MetricsRecord, PushTaskResRequest, RecordSet, Scalar,
};
use proptest::prelude::*;
use prost::Message as _;

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
