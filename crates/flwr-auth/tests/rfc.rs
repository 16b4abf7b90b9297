//! Published test vectors for the primitives: RFC 5869 (HKDF) and RFC 4231 (HMAC), loaded from
//! `testdata/rfc.json`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use flwr_auth::primitives;
use serde_json::Value;

fn load() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/rfc.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn hex_field(value: &Value, key: &str) -> Vec<u8> {
    hex::decode(value[key].as_str().unwrap()).unwrap()
}

#[test]
fn hkdf_sha256_matches_rfc_5869() {
    let vectors = load();
    let cases = vectors["hkdf_sha256"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let ikm = hex_field(case, "ikm");
        let salt = case["salt"].as_str().map(|s| hex::decode(s).unwrap());
        let info = hex_field(case, "info");
        let mut okm = vec![0u8; case["length"].as_u64().unwrap() as usize];
        primitives::hkdf_sha256(&ikm, salt.as_deref(), &info, &mut okm).unwrap();
        assert_eq!(okm, hex_field(case, "okm"), "{}", case["source"]);
        if salt.is_none() {
            // RFC 5869 §2.2: "not provided" and zero-length salts are the same (HashLen zeros).
            let mut with_empty_salt = vec![0u8; okm.len()];
            primitives::hkdf_sha256(&ikm, Some(&[]), &info, &mut with_empty_salt).unwrap();
            assert_eq!(with_empty_salt, okm);
        }
    }
}

#[test]
fn hkdf_rejects_overlong_output() {
    let mut okm = vec![0u8; 255 * 32 + 1];
    assert!(primitives::hkdf_sha256(b"ikm", None, &[], &mut okm).is_err());
}

#[test]
fn hmac_sha256_matches_rfc_4231() {
    let vectors = load();
    let cases = vectors["hmac_sha256"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let mac = primitives::hmac_sha256(&hex_field(case, "key"), &hex_field(case, "data"));
        assert_eq!(mac.to_vec(), hex_field(case, "mac"), "{}", case["source"]);
    }
}

#[test]
fn incremental_hmac_sha256_matches_rfc_4231() {
    let vectors = load();
    for case in vectors["hmac_sha256"].as_array().unwrap() {
        let (key, data, expected) = (
            hex_field(case, "key"),
            hex_field(case, "data"),
            hex_field(case, "mac"),
        );
        // Byte by byte, in uneven pieces, and in one piece.
        for chunk in [1, 7, data.len().max(1)] {
            let mut mac = primitives::hmac_sha256_mac(&key);
            for piece in data.chunks(chunk) {
                mac.update(piece);
            }
            assert_eq!(
                mac.finish().as_bytes().to_vec(),
                expected,
                "{}",
                case["source"]
            );
            let mut mac = primitives::hmac_sha256_mac(&key);
            for piece in data.chunks(chunk) {
                mac.update(piece);
            }
            // Some RFC 4231 cases are truncated tags; only full 32-byte tags verify.
            assert_eq!(
                mac.verify(&expected),
                expected.len() == 32,
                "{}",
                case["source"]
            );
        }
    }
}
