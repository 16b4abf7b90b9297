//! Cross-implementation vectors produced by the Python reference (flwr 1.14.0):
//! `testdata/vectors/auth_vectors.json` at the repository root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::path::PathBuf;

use flwr_auth::{
    header, primitives, AllowList, AuthError, Base64Error, Curve, PrivateKey, PublicKey,
    SharedSecret, Token,
};
use serde_json::Value;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors")
}

fn load_vectors() -> Value {
    let text = std::fs::read_to_string(vectors_dir().join("auth_vectors.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn str_field<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("missing string field {key:?}"))
}

fn hex_field(value: &Value, key: &str) -> Vec<u8> {
    hex::decode(str_field(value, key)).unwrap()
}

fn curve_named(name: &str) -> Curve {
    match name {
        "secp256r1" => Curve::P256,
        "secp384r1" => Curve::P384,
        "secp521r1" => Curve::P521,
        other => panic!("unknown curve {other}"),
    }
}

/// The value of `name` in a `[[name, value], ...]` metadata list.
fn metadata<'a>(entry: &'a Value, name: &str) -> Option<&'a str> {
    entry["metadata"]
        .as_array()?
        .iter()
        .find(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().unwrap())
}

/// One side (`supernode` or `superlink`) of a case, parsed and checked field by field.
fn check_side(case_id: &str, side: &Value) -> (PrivateKey, PublicKey) {
    let context = format!("{case_id}/{}", str_field(side, "curve"));
    let curve = curve_named(str_field(side, "curve"));
    let private = PrivateKey::from_openssh(str_field(side, "openssh_private_key")).unwrap();
    let public = PublicKey::from_openssh(str_field(side, "openssh_public_key")).unwrap();
    assert_eq!(private.curve(), curve, "{context}");
    assert_eq!(public.curve(), curve, "{context}");
    assert!(private.matches(&public), "{context}");

    // The vector's scalar is Python's `hex(int)`, without leading zeros; ours is fixed length.
    let scalar = str_field(side, "private_scalar_hex");
    let expected_scalar = format!("{scalar:0>width$}", width = 2 * curve.field_len());
    assert_eq!(
        hex::encode(private.to_scalar_bytes()),
        expected_scalar,
        "{context}"
    );

    let pem = str_field(side, "spki_pem");
    assert_eq!(public.to_spki_pem(), pem.as_bytes(), "{context}");
    assert_eq!(
        public.to_spki_der(),
        hex_field(side, "spki_der_hex"),
        "{context}"
    );
    let header_value = str_field(side, "public_key_header_value");
    assert_eq!(public.header_value(), header_value, "{context}");
    assert_eq!(PublicKey::from_spki_pem(pem.as_bytes()).unwrap(), public);
    assert_eq!(PublicKey::from_header(header_value).unwrap(), public);

    // Writing the public key back gives the reference's `.pub` text.
    let line = str_field(side, "openssh_public_key");
    let comment = line.trim_end().splitn(3, ' ').nth(2).unwrap_or("");
    assert_eq!(public.to_openssh(comment).unwrap(), line, "{context}");
    (private, public)
}

#[test]
fn every_case_matches_the_reference() {
    let vectors = load_vectors();
    let cases = vectors["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let id = str_field(case, "id");
        let (node, node_public) = check_side(id, &case["supernode"]);
        let (link, link_public) = check_side(id, &case["superlink"]);

        // Each step of AUTH.md §5.1, from both ends.
        let x = hex_field(case, "ecdh_shared_x_hex");
        assert_eq!(
            primitives::ecdh_x_coordinate(&node, &link_public)
                .unwrap()
                .as_slice(),
            x,
            "{id}"
        );
        assert_eq!(
            primitives::ecdh_x_coordinate(&link, &node_public)
                .unwrap()
                .as_slice(),
            x,
            "{id}"
        );
        let mut okm = [0u8; 32];
        primitives::hkdf_sha256(&x, None, &[], &mut okm).unwrap();
        assert_eq!(
            okm.to_vec(),
            hex_field(case, "hkdf_sha256_output_hex"),
            "{id}"
        );

        let text = str_field(case, "shared_secret_as_returned_by_generate_shared_key");
        let key_bytes = hex_field(case, "hmac_key_bytes_hex");
        assert_eq!(text.as_bytes(), key_bytes, "{id}");
        let node_secret = SharedSecret::derive(&node, &link_public).unwrap();
        let link_secret = SharedSecret::derive(&link, &node_public).unwrap();
        assert_eq!(node_secret.hmac_key(), key_bytes, "{id}");
        assert_eq!(link_secret.hmac_key(), key_bytes, "{id}");
        assert_eq!(SharedSecret::from_hkdf_output(&okm).hmac_key(), key_bytes);

        check_requests(
            id,
            case,
            &node_public,
            &link_public,
            &node_secret,
            &link_secret,
            &okm,
        );
    }
}

fn check_requests(
    id: &str,
    case: &Value,
    node_public: &PublicKey,
    link_public: &PublicKey,
    node_secret: &SharedSecret,
    link_secret: &SharedSecret,
    okm: &[u8; 32],
) {
    let requests = case["requests"].as_object().unwrap();
    let mut signed = 0;
    for (name, request) in requests {
        let context = format!("{id}/{name}");
        assert_eq!(
            metadata(request, header::PUBLIC_KEY_HEADER),
            Some(node_public.header_value().as_str()),
            "{context}"
        );
        let message = hex_field(request, "deterministic_hex");
        let Some(expected_token) = request["auth_token_header_value"].as_str() else {
            // CreateNode: no token; the SuperLink answers with its own key.
            assert_eq!(name, "CreateNodeRequest");
            assert_eq!(metadata(request, header::AUTH_TOKEN_HEADER), None);
            let reply = &request["expected_response_initial_metadata"][0];
            assert_eq!(reply[0], header::PUBLIC_KEY_HEADER);
            assert_eq!(reply[1], link_public.header_value().as_str());
            continue;
        };
        signed += 1;
        let token = node_secret.sign(&message);
        assert_eq!(
            token.as_bytes().to_vec(),
            hex_field(request, "hmac_sha256_hex"),
            "{context}"
        );
        assert_eq!(token.header_value(), expected_token, "{context}");
        assert_eq!(token.header_value().len(), 44);
        assert_eq!(
            metadata(request, header::AUTH_TOKEN_HEADER),
            Some(expected_token)
        );

        // The SuperLink side accepts it, both through the raw header bytes and `Token`.
        let mac = header::decode(expected_token).unwrap();
        assert!(link_secret.verify(&message, &mac), "{context}");
        let parsed = Token::from_header(expected_token).unwrap();
        assert!(link_secret.verify(&message, parsed.as_bytes()), "{context}");
        // And incrementally, as the SuperLink streams the canonical bytes into the MAC.
        let mut streamed = link_secret.mac();
        for piece in message.chunks(5) {
            streamed.update(piece);
        }
        assert!(streamed.verify(&mac), "{context}");
        let mut streamed = node_secret.mac();
        streamed.update(&message);
        assert_eq!(
            streamed.finish().header_value(),
            expected_token,
            "{context}"
        );

        // A token made with the raw HKDF bytes as key is wrong (AUTH.md §5.2 quirk).
        let raw_key_mac = primitives::hmac_sha256(okm, &message);
        assert!(!link_secret.verify(&message, &raw_key_mac), "{context}");

        // Tokens over other encodings of the same request: we reproduce them from their bytes,
        // and the SuperLink must reject them for the canonical bytes.
        for (wrong_field, bytes_field) in [
            (
                "token_over_default_serialization_WRONG",
                "default_serialization_hex",
            ),
            (
                "token_over_pure_python_bytes_WRONG",
                "pure_python_backend_deterministic_hex",
            ),
        ] {
            let Some(wrong) = request[wrong_field].as_str() else {
                continue;
            };
            let other_bytes = hex_field(request, bytes_field);
            assert_eq!(
                node_secret.sign(&other_bytes).header_value(),
                wrong,
                "{context}"
            );
            let wrong_mac = header::decode(wrong).unwrap();
            assert!(
                !link_secret.verify(&message, &wrong_mac),
                "{context} {wrong_field}"
            );
        }
    }
    assert_eq!(
        signed, 7,
        "{id}: every request except CreateNode carries a token"
    );
}

#[test]
fn negative_cases_are_rejected_at_this_layer() {
    let vectors = load_vectors();
    let cases = vectors["cases"].as_array().unwrap();
    let case = &cases[0];
    let side = |case: &Value, name: &str| {
        let side = &case[name];
        (
            PrivateKey::from_openssh(str_field(side, "openssh_private_key")).unwrap(),
            PublicKey::from_openssh(str_field(side, "openssh_public_key")).unwrap(),
        )
    };
    let (node, node_public) = side(case, "supernode");
    let (link, _) = side(case, "superlink");
    let link_secret = SharedSecret::derive(&link, &node_public).unwrap();
    let ping = hex_field(&case["requests"]["PingRequest"], "deterministic_hex");
    let allowed = AllowList::parse(
        &std::fs::read_to_string(vectors_dir().join("keys/known_supernodes.csv")).unwrap(),
    )
    .unwrap();
    assert!(allowed.contains(&node_public.to_spki_pem()));

    let negatives = vectors["negative_cases"].as_array().unwrap();
    assert_eq!(negatives.len(), 12);
    for negative in negatives {
        let name = str_field(negative, "name");
        let public_key_header = metadata(negative, header::PUBLIC_KEY_HEADER);
        let token_header = metadata(negative, header::AUTH_TOKEN_HEADER);
        let request_bytes = || {
            let request = str_field(negative, "request");
            hex_field(&case["requests"][request], "deterministic_hex")
        };
        match name {
            "token_made_with_wrong_superlink_public_key" => {
                // Made with the P-384 "derived" SuperLink key instead of the real one.
                let (_, other_link_public) = side(&cases[1], "superlink");
                let wrong = SharedSecret::derive(&node, &other_link_public)
                    .unwrap()
                    .sign(&ping);
                assert_eq!(Some(wrong.header_value().as_str()), token_header);
                assert!(!link_secret.verify(&ping, wrong.as_bytes()));
            }
            "hmac_key_is_raw_hkdf_bytes_instead_of_base64url_text"
            | "push_task_res_token_over_default_not_deterministic_bytes"
            | "push_task_res_token_over_plain_ascending_map_order" => {
                let mac = header::decode(token_header.unwrap()).unwrap();
                assert!(!link_secret.verify(&request_bytes(), &mac), "{name}");
            }
            "unknown_public_key_on_create_node" => {
                let pem = header::decode(public_key_header.unwrap()).unwrap();
                // A valid key, just not a listed one.
                PublicKey::from_spki_pem(&pem).unwrap();
                assert!(!allowed.contains(&pem));
            }
            "missing_auth_token" => {
                assert_eq!(token_header, None);
                // The reference treats a missing header as "" (empty bytes).
                let mac = header::decode("").unwrap();
                assert!(!link_secret.verify(&ping, &mac));
            }
            "auth_token_without_base64_padding" => {
                let value = token_header.unwrap();
                assert_eq!(header::decode(value), Err(Base64Error::IncorrectPadding));
                assert!(matches!(
                    Token::from_header(value),
                    Err(AuthError::InvalidBase64(Base64Error::IncorrectPadding))
                ));
            }
            "public_key_header_without_base64_padding" => {
                let value = public_key_header.unwrap();
                assert_eq!(header::decode(value), Err(Base64Error::IncorrectPadding));
                assert!(matches!(
                    PublicKey::from_header(value),
                    Err(AuthError::InvalidBase64(Base64Error::IncorrectPadding))
                ));
            }
            "public_key_pem_without_trailing_newline" => {
                let pem = header::decode(public_key_header.unwrap()).unwrap();
                assert!(!allowed.contains(&pem));
                assert!(matches!(
                    PublicKey::from_spki_pem(&pem),
                    Err(AuthError::InvalidPublicKey(_))
                ));
            }
            "ping_for_node_id_not_bound_to_this_key" => {
                // The MAC is valid; the node-id binding check (not this crate) rejects it.
                let bytes = hex_field(negative, "request_deterministic_hex");
                let mac = header::decode(token_header.unwrap()).unwrap();
                assert!(link_secret.verify(&bytes, &mac));
            }
            "WEAKNESS_cross_rpc_replay_pull_token_valid_for_delete_node" => {
                // Documents the weakness: the PullTaskIns token verifies for DeleteNode.
                let mac = header::decode(token_header.unwrap()).unwrap();
                assert!(link_secret.verify(&request_bytes(), &mac));
            }
            "curve_mismatch_p256_node_vs_p384_superlink" => {
                let (p256_node, _) = side(&cases[2], "supernode");
                let (_, p384_link_public) = side(&cases[1], "superlink");
                assert!(matches!(
                    SharedSecret::derive(&p256_node, &p384_link_public),
                    Err(AuthError::CurveMismatch {
                        private: Curve::P256,
                        public: Curve::P384
                    })
                ));
            }
            other => panic!("negative case {other:?} has no check; add one"),
        }
    }
}

#[test]
fn key_files_match_the_json() {
    let vectors = load_vectors();
    let case = &vectors["cases"][0];
    let dir = vectors_dir().join("keys");
    for (file, side) in [
        ("supernode_p384_sshkeygen", "supernode"),
        ("superlink_p384_sshkeygen", "superlink"),
    ] {
        let private = PrivateKey::from_openssh(std::fs::read(dir.join(file)).unwrap()).unwrap();
        let public =
            PublicKey::from_openssh(std::fs::read(dir.join(format!("{file}.pub"))).unwrap())
                .unwrap();
        assert!(private.matches(&public));
        assert_eq!(
            public.header_value(),
            str_field(&case[side], "public_key_header_value")
        );
    }
}
