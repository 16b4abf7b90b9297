//! Allow-list CSV files against the outcomes the reference's own loader produced
//! (`testdata/vectors/csv_examples/expected_results.json`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::collections::BTreeSet;
use std::path::PathBuf;

use flwr_auth::{AllowList, CsvError};
use serde_json::Value;

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors/csv_examples")
}

fn known_supernodes() -> AllowList {
    let path = examples_dir().join("../keys/known_supernodes.csv");
    AllowList::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Where our error points for each rejected file: (line, column), 1-based.
fn expected_position(file: &str) -> (usize, usize) {
    match file {
        "bad_space_after_comma.csv" | "bad_trailing_comma.csv" => (1, 2),
        "bad_whitespace_only_row.csv" | "bad_ed25519_key.csv" => (2, 1),
        "bad_comment_line.csv"
        | "bad_leading_space.csv"
        | "bad_pem_instead_of_openssh.csv"
        | "bad_rsa_key.csv" => (1, 1),
        other => panic!("no expected position for {other}; add one"),
    }
}

#[test]
fn every_example_has_the_reference_outcome() {
    let dir = examples_dir();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected_results.json")).unwrap())
            .unwrap();
    let expected = expected.as_object().unwrap();

    // The JSON covers exactly the files on disk.
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".csv"))
        .collect();
    assert_eq!(on_disk, expected.keys().cloned().collect::<BTreeSet<_>>());

    let known = known_supernodes();
    assert_eq!(known.len(), 2);
    for (file, outcome) in expected {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let result = AllowList::parse(&text);
        if outcome["accepted"].as_bool().unwrap() {
            let list = result.unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(
                list.len() as u64,
                outcome["num_keys"].as_u64().unwrap(),
                "{file}"
            );
            assert_eq!(list.iter().count(), list.len());
            if file.starts_with("valid_two_keys") || file.starts_with("valid_crlf") {
                assert_eq!(list, known, "{file}");
            }
            continue;
        }
        let error = match result {
            Ok(list) => panic!("{file}: accepted with {} keys", list.len()),
            Err(error) => error,
        };
        let message = error.to_string();
        let (line, column) = expected_position(file);
        assert!(
            message.starts_with(&format!("line {line}, column {column}: ")),
            "{file}: {message}"
        );
        // A clean exit in the reference means "valid key, not EC"; a traceback means the field
        // did not parse at all.
        let clean_exit = outcome["outcome"].as_str().unwrap().starts_with("sys.exit");
        match error {
            CsvError::NotEllipticCurve { algorithm, .. } => {
                assert!(clean_exit, "{file}: {message}");
                assert!(algorithm == "ssh-ed25519" || algorithm == "ssh-rsa");
            }
            CsvError::InvalidPublicKey { .. } => {
                assert!(!clean_exit, "{file}: {message}");
                assert!(message.contains(": invalid public key: "), "{message}");
            }
            other => panic!("{file}: unexpected {other:?}"),
        }
    }
}

#[test]
fn reasons_name_the_problem() {
    let dir = examples_dir();
    let reason = |file: &str| {
        AllowList::parse(&std::fs::read_to_string(dir.join(file)).unwrap())
            .unwrap_err()
            .to_string()
    };
    assert!(reason("bad_comment_line.csv").contains("unsupported key type: '#'"));
    assert!(reason("bad_pem_instead_of_openssh.csv").contains("unsupported key type: '-----BEGIN'"));
    assert!(reason("bad_leading_space.csv").contains("invalid line format"));
    assert_eq!(
        reason("bad_ed25519_key.csv"),
        "line 2, column 1: not an elliptic-curve key: ssh-ed25519"
    );
}

#[test]
fn membership_uses_canonical_pem_bytes() {
    let known = known_supernodes();
    let first = known.iter().next().unwrap().to_vec();
    assert!(known.contains(&first));
    let mut crlf = String::from_utf8(first.clone())
        .unwrap()
        .replace('\n', "\r\n");
    assert!(!known.contains(crlf.as_bytes()));
    crlf.clear();
    assert!(!known.contains(&first[..first.len() - 1]));
    assert!(AllowList::new().is_empty());
}
