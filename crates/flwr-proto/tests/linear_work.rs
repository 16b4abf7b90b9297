//! The canonical encoder runs before the token is checked, on network input: its work must grow
//! linearly with the input (up to the `log n` of sorting map keys). Counted, not timed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

mod oracle;

use std::collections::HashMap;

use flwr_proto::{
    canonical, configs_record_value, ConfigsRecord, ConfigsRecordValue, PushTaskResRequest,
    RecordSet,
};
use prost::Message as _;

const PUSH: &str = "flwr.proto.PushTaskResRequest";

fn put_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn len_field(number: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(u64::from(number) << 3 | 2, &mut out);
    put_varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

fn sint64(value: i64) -> ConfigsRecordValue {
    ConfigsRecordValue {
        value: Some(configs_record_value::Value::Sint64(value)),
    }
}

/// A `ConfigsRecord` of the given entries, in exactly this wire order (duplicates allowed).
fn configs_record(entries: &[(String, i64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in entries {
        let entry = [
            len_field(1, key.as_bytes()),
            len_field(2, &sint64(*value).encode_to_vec()),
        ]
        .concat();
        out.extend(len_field(1, &entry));
    }
    out
}

/// `k` distinct keys in a scrambled but fixed order, values 0..k.
fn scrambled(k: usize) -> Vec<(String, i64)> {
    // 7919 is prime and larger than any k used, so i -> i * 7919 mod k is a permutation when
    // gcd(7919, k) = 1, which holds for powers of two.
    (0..k)
        .map(|i| (format!("key{:06}", (i * 7919) % k), i as i64))
        .collect()
}

/// PushTaskResRequest { task_res_list: [TaskRes { task: Task { recordset: RecordSet {
/// configs: {"cfg": <record>} } } }] }.
fn push_request(record: &[u8]) -> Vec<u8> {
    let configs_entry = [len_field(1, b"cfg"), len_field(2, record)].concat();
    let record_set = len_field(3, &configs_entry);
    let task = len_field(9, &record_set);
    let task_res = len_field(4, &task);
    len_field(2, &task_res)
}

fn work(k: usize) -> u64 {
    let wire = push_request(&configs_record(&scrambled(k)));
    let (bytes, stats) = canonical::canonicalize_counting(PUSH, &wire).expect("canonical");
    assert_eq!(stats.bytes, bytes.len() as u64);
    // Every entry is there once.
    let request = PushTaskResRequest::decode(bytes.as_slice()).expect("decodes");
    let record_set = request.task_res_list[0]
        .task
        .as_ref()
        .and_then(|t| t.recordset.as_ref())
        .expect("record set");
    assert_eq!(record_set.configs["cfg"].data.len(), k);
    stats.work()
}

/// Allowed growth of the work when the entries double: 2x, times the growth of `log2 n` from
/// sorting, with 10 % slack.
fn doubling_bound(k: usize) -> f64 {
    let log = |n: usize| (n as f64).log2();
    2.0 * log(2 * k) / log(k) * 1.1
}

#[test]
fn work_grows_linearly_with_map_entries() {
    let sizes: Vec<usize> = (0..6).map(|i| 1024 << i).collect();
    let works: Vec<u64> = sizes.iter().map(|&k| work(k)).collect();
    eprintln!("work for {sizes:?} entries: {works:?}");
    for (pair, sizes) in works.windows(2).zip(sizes.windows(2)) {
        let ratio = pair[1] as f64 / pair[0] as f64;
        assert!(
            ratio <= doubling_bound(sizes[0]),
            "work {} -> {} entries grew {ratio:.2}x: {works:?}",
            sizes[0],
            sizes[1],
        );
    }
    // 32k entries against 1k: 32x, times log2(32k) / log2(1k) = 1.5 for the sort.
    let ratio = works[5] as f64 / works[0] as f64;
    assert!(
        ratio <= 32.0 * 1.5 * 1.1,
        "32x entries cost {ratio:.1}x work"
    );
}

#[test]
fn the_old_transcoder_fails_the_same_bound() {
    // Guards the test above: the quadratic `retain` per inserted key must not pass it.
    let mut works = Vec::new();
    for k in [512, 1024] {
        let wire = push_request(&configs_record(&scrambled(k)));
        oracle::work();
        oracle::canonicalize(PUSH, &wire).expect("oracle");
        works.push(oracle::work());
    }
    let ratio = works[1] as f64 / works[0] as f64;
    assert!(ratio > doubling_bound(512), "oracle grew only {ratio:.2}x");
}

#[test]
fn duplicate_keys_keep_the_last_value() {
    let entries: Vec<(String, i64)> = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    let got = canonical::canonicalize("flwr.proto.ConfigsRecord", &configs_record(&entries))
        .expect("canonical");
    let expected = canonical::encode(&ConfigsRecord {
        data: HashMap::from([
            ("a".to_owned(), sint64(3)),
            ("b".to_owned(), sint64(5)),
            ("c".to_owned(), sint64(4)),
        ]),
    })
    .expect("canonical");
    assert_eq!(got, expected);

    // A repeated key replaces the whole value; the two records are not merged.
    let first = configs_record(&[("x".to_owned(), 1)]);
    let second = configs_record(&[("y".to_owned(), 2)]);
    let record_set = [
        len_field(3, &[len_field(1, b"cfg"), len_field(2, &first)].concat()),
        len_field(3, &[len_field(1, b"cfg"), len_field(2, &second)].concat()),
    ]
    .concat();
    let got = canonical::canonicalize("flwr.proto.RecordSet", &record_set).expect("canonical");
    let decoded = RecordSet::decode(got.as_slice()).expect("decodes");
    assert_eq!(decoded.configs.len(), 1);
    assert_eq!(
        decoded.configs["cfg"].data.keys().collect::<Vec<_>>(),
        vec!["y"]
    );
}

#[test]
fn many_duplicates_stay_linear_and_keep_the_last_value() {
    let k = 8192;
    // Every key twice: first with value -1, then with its own value.
    let mut entries: Vec<(String, i64)> =
        scrambled(k).into_iter().map(|(key, _)| (key, -1)).collect();
    entries.extend(scrambled(k));
    let (bytes, stats) =
        canonical::canonicalize_counting(PUSH, &push_request(&configs_record(&entries)))
            .expect("canonical");
    let request = PushTaskResRequest::decode(bytes.as_slice()).expect("decodes");
    let data = &request.task_res_list[0]
        .task
        .as_ref()
        .and_then(|t| t.recordset.as_ref())
        .expect("record set")
        .configs["cfg"]
        .data;
    assert_eq!(data.len(), k);
    assert!(data.values().all(|v| *v != sint64(-1)));
    // Twice the entries of the 8k case of the linear test, so about the 16k figure.
    assert!(stats.work() as f64 <= work(2 * k) as f64 * 1.1, "{stats:?}");
}

#[test]
fn a_flood_of_tiny_fields_is_refused_before_it_is_laid_out() {
    // Unknown two-byte fields (tag 15, varint 0) of a PingRequest: cheap on the wire, one
    // layout entry each.
    let limit = usize::try_from(canonical::MAX_FIELD_OCCURRENCES).expect("fits");
    let flood: Vec<u8> = std::iter::repeat_n([0x78u8, 0x00], limit + 1)
        .flatten()
        .collect();
    let refused = canonical::canonicalize("flwr.proto.PingRequest", &flood);
    assert!(
        matches!(refused, Err(canonical::CanonicalError::TooManyFields)),
        "{refused:?}"
    );
    // Up to the limit, the same fields are fine (and kept verbatim, as unknown fields are).
    let fine = &flood[..2 * limit];
    let kept = canonical::canonicalize("flwr.proto.PingRequest", fine).expect("accepted");
    assert_eq!(kept.len(), fine.len());
}
