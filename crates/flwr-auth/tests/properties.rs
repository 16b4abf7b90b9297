//! Property tests: token round trips, tamper detection, header coding, and no panics on input.

use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use flwr_auth::{header, AllowList, Base64Error, PrivateKey, PublicKey, SharedSecret, Token};
use proptest::prelude::*;

/// Feeds `message` to a fresh [`flwr_auth::TokenMac`] in pieces cut at `cuts`.
fn mac_in_pieces(secret: &SharedSecret, message: &[u8], cuts: &[usize]) -> flwr_auth::TokenMac {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (message.len() + 1)).collect();
    cuts.sort_unstable();
    let mut mac = secret.mac();
    let mut start = 0;
    for cut in cuts.into_iter().chain([message.len()]) {
        mac.update(&message[start..cut]);
        start = cut;
    }
    mac
}

proptest! {
    #[test]
    fn incremental_mac_equals_one_shot(
        okm in any::<[u8; 32]>(),
        message in prop::collection::vec(any::<u8>(), 0..512),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        bit in any::<prop::sample::Index>(),
    ) {
        let secret = SharedSecret::from_hkdf_output(&okm);
        let token = secret.sign(&message);
        let streamed = mac_in_pieces(&secret, &message, &cuts).finish();
        prop_assert_eq!(streamed.as_bytes(), token.as_bytes());
        prop_assert!(mac_in_pieces(&secret, &message, &cuts).verify(token.as_bytes()));
        // Tampered, truncated or extended tags are refused, as by `SharedSecret::verify`.
        let mut flipped = *token.as_bytes();
        let i = bit.index(flipped.len() * 8);
        flipped[i / 8] ^= 1 << (i % 8);
        prop_assert!(!mac_in_pieces(&secret, &message, &cuts).verify(&flipped));
        prop_assert!(!mac_in_pieces(&secret, &message, &cuts).verify(&token.as_bytes()[..31]));
        let longer = [token.as_bytes().as_slice(), &[0]].concat();
        prop_assert!(!mac_in_pieces(&secret, &message, &cuts).verify(&longer));
    }

    #[test]
    fn sign_then_verify_accepts(okm in any::<[u8; 32]>(), message in prop::collection::vec(any::<u8>(), 0..512)) {
        let secret = SharedSecret::from_hkdf_output(&okm);
        let token = secret.sign(&message);
        prop_assert!(secret.verify(&message, token.as_bytes()));
        // Through the header and back.
        let parsed = Token::from_header(&token.header_value()).unwrap();
        prop_assert_eq!(parsed.as_bytes(), token.as_bytes());
        prop_assert_eq!(token.header_value().len(), 44);
        // A clone is the same secret.
        prop_assert!(secret.clone().verify(&message, token.as_bytes()));
    }

    #[test]
    fn any_single_bit_flip_is_rejected(
        okm in any::<[u8; 32]>(),
        message in prop::collection::vec(any::<u8>(), 1..256),
        bit in any::<prop::sample::Index>(),
        flip_token in any::<bool>(),
    ) {
        let secret = SharedSecret::from_hkdf_output(&okm);
        let mut token = *secret.sign(&message).as_bytes();
        let mut message = message;
        if flip_token {
            let i = bit.index(token.len() * 8);
            token[i / 8] ^= 1 << (i % 8);
        } else {
            let i = bit.index(message.len() * 8);
            message[i / 8] ^= 1 << (i % 8);
        }
        prop_assert!(!secret.verify(&message, &token));
    }

    #[test]
    fn truncated_or_extended_tokens_are_rejected(okm in any::<[u8; 32]>(), message in prop::collection::vec(any::<u8>(), 0..64), cut in 0usize..32) {
        let secret = SharedSecret::from_hkdf_output(&okm);
        let token = *secret.sign(&message).as_bytes();
        prop_assert!(!secret.verify(&message, &token[..cut]));
        let mut longer = token.to_vec();
        longer.push(0);
        prop_assert!(!secret.verify(&message, &longer));
    }

    #[test]
    fn different_secrets_disagree(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), message in prop::collection::vec(any::<u8>(), 0..64)) {
        prop_assume!(a != b);
        let token = SharedSecret::from_hkdf_output(&a).sign(&message);
        prop_assert!(!SharedSecret::from_hkdf_output(&b).verify(&message, token.as_bytes()));
    }

    #[test]
    fn header_coding_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let encoded = header::encode(&bytes);
        prop_assert_eq!(&encoded, &URL_SAFE.encode(&bytes));
        prop_assert_eq!(header::decode(&encoded).unwrap(), bytes.clone());
        // The reference also takes the standard alphabet.
        prop_assert_eq!(header::decode(STANDARD.encode(&bytes)).unwrap(), bytes.clone());
        // Without padding it raises "Incorrect padding" whenever padding was needed.
        let unpadded = URL_SAFE_NO_PAD.encode(&bytes);
        if bytes.len() % 3 == 0 {
            prop_assert_eq!(header::decode(&unpadded).unwrap(), bytes);
        } else {
            prop_assert_eq!(header::decode(&unpadded), Err(Base64Error::IncorrectPadding));
        }
    }

    #[test]
    fn header_decoding_ignores_foreign_characters(bytes in prop::collection::vec(any::<u8>(), 0..100), noise in prop::collection::vec(prop::sample::select(vec![' ', '\n', '!', '.', '*']), 0..20)) {
        let mut encoded: Vec<char> = header::encode(&bytes).chars().collect();
        for (i, c) in noise.into_iter().enumerate() {
            let at = (i * 7) % (encoded.len() + 1);
            encoded.insert(at, c);
        }
        let noisy: String = encoded.into_iter().collect();
        prop_assert_eq!(header::decode(&noisy).unwrap(), bytes);
    }

    #[test]
    fn parsers_never_panic(data in prop::collection::vec(any::<u8>(), 0..400), text in ".{0,400}") {
        let _ = header::decode(&text);
        let _ = Token::from_header(&text);
        let _ = PublicKey::from_header(&text);
        let _ = PublicKey::from_openssh(&data);
        let _ = PublicKey::from_openssh(text.as_bytes());
        let _ = PublicKey::from_spki_pem(&data);
        let _ = PrivateKey::from_openssh(&data);
        let _ = AllowList::parse(&text);
    }

    #[test]
    fn key_prefixes_never_panic(cut in 0usize..700) {
        // Truncations of a real key exercise the deeper parsing paths.
        let text = include_str!("../testdata/keys/p384_key");
        let _ = PrivateKey::from_openssh(&text.as_bytes()[..cut.min(text.len())]);
        let public = include_str!("../testdata/keys/p384_key.pub");
        let _ = PublicKey::from_openssh(&public.as_bytes()[..cut.min(public.len())]);
    }
}
