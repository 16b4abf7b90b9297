//! Key files: what is accepted and rejected, and that generated keys round-trip through the
//! OpenSSH formats and are readable by `ssh-keygen`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use flwr_auth::{generate_keypair, AuthError, Curve, PrivateKey, PublicKey};
use rand::rngs::StdRng;
use rand::SeedableRng as _;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/keys")
        .join(name);
    std::fs::read(path).unwrap()
}

fn fixture_text(name: &str) -> String {
    String::from_utf8(fixture(name)).unwrap()
}

/// Builds a public key line from a raw blob.
fn line_with_blob(key_type: &str, blob: &[u8]) -> String {
    format!("{key_type} {} test", STANDARD.encode(blob))
}

/// SSH `string` encoding.
fn ssh_string(data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

#[test]
fn ssh_keygen_fixtures_load_on_every_curve() {
    for (name, curve) in [
        ("p256_key", Curve::P256),
        ("p384_key", Curve::P384),
        ("p521_key", Curve::P521),
    ] {
        let private = PrivateKey::from_openssh(fixture(name)).unwrap();
        let pub_text = fixture_text(&format!("{name}.pub"));
        let public = PublicKey::from_openssh(&pub_text).unwrap();
        assert_eq!(private.curve(), curve);
        assert!(private.matches(&public), "{name}");
        let comment = format!("fixture-{}", &name[..4]);
        assert_eq!(public.to_openssh(&comment).unwrap(), pub_text);
    }
}

#[test]
fn minimal_mpint_scalars_from_ssh_keygen_load() {
    // ssh-keygen dropped the scalar's leading zero bytes: the mpint is shorter than 66 bytes.
    let private = PrivateKey::from_openssh(fixture("p521_short_mpint_key")).unwrap();
    let public = PublicKey::from_openssh(fixture("p521_short_mpint_key.pub")).unwrap();
    assert!(private.matches(&public));
    assert_eq!(private.to_scalar_bytes()[0], 0);
    assert_eq!(private.to_scalar_bytes().len(), 66);
}

#[test]
fn private_key_rejections_are_typed() {
    let err = |name: &str| PrivateKey::from_openssh(fixture(name)).unwrap_err();
    assert!(
        matches!(err("ed25519_key"), AuthError::NotEllipticCurve { algorithm } if algorithm == "ssh-ed25519")
    );
    assert!(
        matches!(err("rsa_key"), AuthError::NotEllipticCurve { algorithm } if algorithm == "ssh-rsa")
    );
    assert!(matches!(
        err("encrypted_p384_key"),
        AuthError::EncryptedPrivateKey
    ));
    assert!(
        matches!(err("pem_p384_key"), AuthError::UnsupportedPrivateKeyFormat { label } if label == "EC PRIVATE KEY")
    );
    assert!(
        matches!(err("pkcs8_p384_key"), AuthError::UnsupportedPrivateKeyFormat { label } if label == "PRIVATE KEY")
    );
    // A public key is not a private key.
    assert!(matches!(
        err("p384_key.pub"),
        AuthError::InvalidPrivateKey(_)
    ));
    assert!(matches!(
        PrivateKey::from_openssh(b""),
        Err(AuthError::InvalidPrivateKey(_))
    ));
}

#[test]
fn private_key_armour_is_read_leniently_like_the_reference() {
    let text = fixture_text("p384_key");
    let expected = PrivateKey::from_openssh(&text).unwrap().public_key();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    let rewrapped: Vec<String> = body
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let variants = [
        text.replace('\n', "\r\n"),
        format!("leading junk\n{text}trailing junk"),
        format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
            rewrapped.join("\n")
        ),
    ];
    for variant in variants {
        assert_eq!(
            PrivateKey::from_openssh(variant).unwrap().public_key(),
            expected
        );
    }
    // Cut in the middle: the base64 no longer has a complete final group or the data is short.
    let truncated = format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
        &body[..body.len() / 2]
    );
    assert!(matches!(
        PrivateKey::from_openssh(truncated),
        Err(AuthError::InvalidPrivateKey(_))
    ));
}

#[test]
fn private_key_with_foreign_public_point_is_rejected() {
    // Swap the public blob of one key into the container of another.
    let decode = |name: &str| {
        let text = fixture_text(name);
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        STANDARD.decode(body).unwrap()
    };
    let ours = decode("p384_key");
    let theirs_public = PrivateKey::from_openssh(fixture("p384_key"))
        .unwrap()
        .public_key();
    let other = generate_keypair(Curve::P384).1.to_sec1_bytes();
    let ours_point = theirs_public.to_sec1_bytes();
    // Replace every occurrence of our point (public blob and private section) with another one.
    let mut patched = ours.clone();
    let mut i = 0;
    while let Some(pos) = patched[i..]
        .windows(ours_point.len())
        .position(|w| w == ours_point)
    {
        patched[i + pos..i + pos + ours_point.len()].copy_from_slice(&other);
        i += pos + 1;
    }
    assert_ne!(patched, ours);
    let text = format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
        STANDARD.encode(&patched)
    );
    let err = PrivateKey::from_openssh(text).unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
}

#[test]
fn public_key_line_rules() {
    let good = fixture_text("p384_key.pub");
    let (key_type, rest) = good.split_once(' ').unwrap();
    let body = rest.split_whitespace().next().unwrap();
    let expected = PublicKey::from_openssh(&good).unwrap();

    // Accepted: tab separator, several blanks, no comment, no newline, trailing junk.
    for ok in [
        format!("{key_type}\t{body}"),
        format!("{key_type} \t  {body}\n"),
        format!("{key_type} {body} comment with spaces\nsecond line"),
    ] {
        assert_eq!(PublicKey::from_openssh(&ok).unwrap(), expected, "{ok:?}");
    }
    // Rejected as unparseable.
    let invalid = [
        format!(" {good}"),
        format!("{key_type}\n{body}"),
        format!("{key_type} "),
        String::new(),
        format!("ecdsa-sha2-nistp256 {body}"),
        format!("{key_type} {}", &body[..body.len() - 2]),
        format!("{key_type}-cert-v01@openssh.com {body}"),
        format!("ssh-ed25519 {body}"),
        "ssh-ed25519 garbage".to_owned(),
    ];
    for bad in invalid {
        assert!(
            matches!(
                PublicKey::from_openssh(&bad),
                Err(AuthError::InvalidPublicKey(_))
            ),
            "{bad:?}"
        );
    }
    // Non-EC keys are a distinct error.
    for (name, algorithm) in [
        ("ed25519_key.pub", "ssh-ed25519"),
        ("rsa_key.pub", "ssh-rsa"),
    ] {
        match PublicKey::from_openssh(fixture(name)) {
            Err(AuthError::NotEllipticCurve { algorithm: found }) => assert_eq!(found, algorithm),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn public_key_blob_rules() {
    let public = generate_keypair(Curve::P256).1;
    let point = public.to_sec1_bytes();
    let blob = |key_type: &[u8], curve: &[u8], point: &[u8], extra: &[u8]| {
        let mut out = ssh_string(key_type);
        out.extend(ssh_string(curve));
        out.extend(ssh_string(point));
        out.extend_from_slice(extra);
        out
    };
    let line = |b: Vec<u8>| line_with_blob("ecdsa-sha2-nistp256", &b);
    let ok = line(blob(b"ecdsa-sha2-nistp256", b"nistp256", &point, b""));
    assert_eq!(PublicKey::from_openssh(ok).unwrap(), public);

    let mut off_curve = point.clone();
    off_curve[64] ^= 1;
    let mut compressed = vec![0x02 | (point[64] & 1)];
    compressed.extend_from_slice(&point[1..33]);
    for bad in [
        blob(b"ecdsa-sha2-nistp256", b"nistp256", &point, b"\0"),
        blob(b"ecdsa-sha2-nistp256", b"nistp384", &point, b""),
        blob(b"ecdsa-sha2-nistp384", b"nistp256", &point, b""),
        blob(b"ecdsa-sha2-nistp256", b"nistp256", &off_curve, b""),
        blob(b"ecdsa-sha2-nistp256", b"nistp256", &compressed, b""),
        blob(b"ecdsa-sha2-nistp256", b"nistp256", &point[..40], b""),
        ssh_string(b"ecdsa-sha2-nistp256"),
    ] {
        assert!(matches!(
            PublicKey::from_openssh(line(bad)),
            Err(AuthError::InvalidPublicKey(_))
        ));
    }
}

#[test]
fn spki_pem_is_strict() {
    let public = generate_keypair(Curve::P384).1;
    let pem = public.to_spki_pem();
    assert_eq!(pem.len(), 215);
    assert_eq!(public.header_value().len(), 288);
    assert_eq!(PublicKey::from_spki_pem(&pem).unwrap(), public);
    let text = String::from_utf8(pem.clone()).unwrap();
    let no_newline = text.trim_end();
    let one_line = text
        .replacen('\n', "", 2)
        .replacen("-----MH", "-----\nMH", 1);
    for bad in [
        text.replace('\n', "\r\n"),
        no_newline.to_owned(),
        format!("{text}\n"),
        one_line,
        text.replace("PUBLIC KEY", "EC PUBLIC KEY"),
    ] {
        assert!(PublicKey::from_spki_pem(bad.as_bytes()).is_err(), "{bad:?}");
    }
    assert!(PublicKey::from_spki_pem(&public.to_spki_der()).is_err());
    for curve in Curve::ALL {
        let (pem_len, header_len) = match curve {
            Curve::P256 => (178, 240),
            Curve::P384 => (215, 288),
            Curve::P521 => (268, 360),
        };
        let public = generate_keypair(curve).1;
        assert_eq!(public.to_spki_pem().len(), pem_len);
        assert_eq!(public.header_value().len(), header_len);
        assert_eq!(
            PublicKey::from_header(&public.header_value()).unwrap(),
            public
        );
    }
}

#[test]
fn comments_with_line_breaks_are_refused() {
    let (private, public) = generate_keypair(Curve::P256);
    assert!(matches!(
        public.to_openssh("a\nb"),
        Err(AuthError::InvalidComment)
    ));
    assert!(matches!(
        private.to_openssh("a\rb"),
        Err(AuthError::InvalidComment)
    ));
}

/// Generates keys whose scalar starts with a zero byte as well as ordinary ones, so that the
/// minimal-`mpint` case is exercised on every run.
fn interesting_keys(curve: Curve) -> Vec<PrivateKey> {
    let mut rng = StdRng::seed_from_u64(0x666c_7772);
    let mut keys = vec![PrivateKey::generate(curve, &mut rng)];
    // P-521 scalars start with 0x00 half of the time, the others 1 in 256.
    for _ in 0..5000 {
        let key = PrivateKey::generate(curve, &mut rng);
        if key.to_scalar_bytes()[0] == 0 {
            keys.push(key);
            break;
        }
    }
    assert_eq!(keys.len(), 2, "{curve}: no leading-zero scalar found");
    keys
}

#[test]
fn generated_keys_round_trip_through_openssh_files() {
    for curve in Curve::ALL {
        for private in interesting_keys(curve) {
            let public = private.public_key();
            let private_text = private.to_openssh("round-trip").unwrap();
            assert!(private_text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
            let reread = PrivateKey::from_openssh(private_text.as_bytes()).unwrap();
            assert_eq!(*reread.to_scalar_bytes(), *private.to_scalar_bytes());
            assert!(reread.matches(&public));

            let public_text = public.to_openssh("round-trip").unwrap();
            assert_eq!(PublicKey::from_openssh(&public_text).unwrap(), public);
            assert!(!private.matches(&generate_keypair(curve).1));
        }
    }
}

fn ssh_keygen_available() -> bool {
    let found = Command::new("which")
        .arg("ssh-keygen")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        eprintln!("ssh-keygen not installed; skipping the ssh-keygen checks");
    }
    found
}

fn ssh_keygen(args: &[&str], file: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn ssh_keygen_reads_what_we_write() {
    if !ssh_keygen_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for curve in Curve::ALL {
        for (i, private) in interesting_keys(curve).into_iter().enumerate() {
            let public = private.public_key();
            let base = dir.path().join(format!("{curve}-{i}"));
            let pub_path = base.with_extension("pub");
            std::fs::write(&pub_path, public.to_openssh("flwr-test").unwrap()).unwrap();
            std::fs::write(&base, private.to_openssh("flwr-test").unwrap().as_bytes()).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o600)).unwrap();
            }

            // `-l` prints "<bits> SHA256:<fingerprint> <comment> (ECDSA)".
            let listing = ssh_keygen(&["-l", "-f"], &pub_path);
            let expected = format!("{} flwr-test (ECDSA)", public.fingerprint());
            assert!(
                listing.contains(&expected),
                "{curve}: {listing} vs {expected}"
            );

            // `-y` derives the public key from our private key file.
            let derived = ssh_keygen(&["-y", "-f"], &base);
            let derived_key = PublicKey::from_openssh(&derived).unwrap();
            assert_eq!(derived_key, public, "{curve}");
        }
    }
}

#[test]
fn fingerprints_match_ssh_keygen_for_fixtures() {
    if !ssh_keygen_available() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/keys");
    for name in ["p256_key.pub", "p384_key.pub", "p521_key.pub"] {
        let public = PublicKey::from_openssh(fixture(name)).unwrap();
        let listing = ssh_keygen(&["-l", "-f"], &dir.join(name));
        assert!(listing.contains(&public.fingerprint()), "{name}: {listing}");
    }
}
