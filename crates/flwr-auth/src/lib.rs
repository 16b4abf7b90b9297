//! SuperNode authentication of Flower 1.14.0 ("node auth"), byte-compatible with the Python
//! reference: key files, the canonical public key bytes, the shared secret, the `auth-token`
//! HMAC and the allow-list CSV. The exact scheme is `spec/AUTH.md`; section numbers below refer
//! to it.
//!
//! The crate is pure: bytes in, bytes out. It does no I/O, has no gRPC or async code and uses
//! one crypto backend (RustCrypto). Callers read files, attach headers and produce the
//! canonical protobuf bytes (§6) that the token signs.
//!
//! # Layout
//!
//! * [`Curve`]: P-256, P-384 (the recommended default) and P-521.
//! * [`PrivateKey`], [`PublicKey`], [`generate_keypair`]: OpenSSH key files (read as the
//!   reference reads them, written so that `ssh-keygen` reads them), the canonical PEM
//!   SubjectPublicKeyInfo bytes that are sent and compared ([`PublicKey::to_spki_pem`]), and
//!   fingerprints for logs.
//! * [`SharedSecret`], [`Token`]: ECDH, then HKDF-SHA256, then the HMAC-SHA256 `auth-token`,
//!   verified in constant time; [`TokenMac`] computes it over a message fed in pieces.
//!   [`primitives`] exposes the individual steps for test vectors.
//! * [`header`]: the `public-key` / `auth-token` header names and their base64url coding,
//!   with the reference decoder's exact leniency.
//! * [`hardened`]: the opt-in hardened mode between our SuperNodes and SuperLink (not Flower
//!   1.14): tokens bound to the method, a time and a counter ([`SharedSecret::bound_mac`]), and
//!   the per-key anti-replay window ([`hardened::ReplayWindow`]). Its docs hold the threat model
//!   of both modes.
//! * [`AllowList`], [`CsvError`]: the `--auth-list-public-keys` CSV file.
//! * [`AuthError`]: the crate's error type.
//!
//! # The scheme in brief
//!
//! ```text
//! public-key header = base64url_padded(PEM SPKI of the node key)           (every Fleet call)
//! z                 = ECDH(node, superlink).x                               (fixed length)
//! secret            = base64url_padded(HKDF-SHA256(z, salt = none, info = "", L = 32))
//! auth-token header = base64url_padded(HMAC-SHA256(key = secret text, canonical request))
//! ```
//!
//! ```
//! use flwr_auth::{generate_keypair, Curve, SharedSecret};
//!
//! let (node, node_public) = generate_keypair(Curve::P384);
//! let (link, link_public) = generate_keypair(Curve::P384);
//! let request = b"\x0a\x0b\x08\xc6\xaf\xa3\xcf\x8f\xb4\xac\xe1\xd3\x01"; // canonical bytes
//!
//! // SuperNode: sign with the secret of its key and the SuperLink's key.
//! let token = SharedSecret::derive(&node, &link_public)?.sign(request);
//! let header = token.header_value();
//!
//! // SuperLink: the same secret from the other side; verify the decoded header.
//! let secret = SharedSecret::derive(&link, &node_public)?;
//! let mac = flwr_auth::header::decode(&header)?;
//! assert!(secret.verify(request, &mac));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Threat model
//!
//! The scheme authenticates SuperNodes to the SuperLink with static-static ECDH; the SuperLink
//! itself is authenticated only by TLS, which the reference requires whenever auth is on (§1.1).
//! What it does **not** protect against, by design of the reference (§10), and what callers must
//! keep in mind:
//!
//! * **Replay.** A token is a pure function of the key pair and the request bytes: no nonce,
//!   timestamp or method binding. A captured `PullTaskIns` token is valid forever, and also for
//!   `DeleteNode` with the same body. Only TLS keeps tokens secret, so tokens are never printed
//!   ([`Token`]'s `Debug` is redacted). The opt-in [`hardened`] mode closes this between our
//!   own peers.
//! * **CreateNode without proof of possession.** Knowing an allow-listed *public* key is enough
//!   to register as that node; the token is only checked on later calls.
//! * **Per-request ECDH.** The reference derives the secret for every request from an
//!   attacker-chosen (but allow-listed) key. Cache [`SharedSecret`] per public key instead; it is
//!   cheap to clone.
//! * **Key compromise.** The secret never rotates; either private key exposes all tokens of the
//!   pair, past and future.
//!
//! Within that model this crate: compares MACs in constant time ([`SharedSecret::verify`]);
//! zeroizes private scalars and shared secrets on drop and never prints them; compares public
//! keys by their canonical PEM bytes exactly as the reference does, so it cannot be more
//! permissive; and turns every malformed input into an error rather than a panic.
//!
//! Deliberate differences from the reference: an unparseable allow-list field or key file is a
//! clean [`CsvError`] / [`AuthError`] instead of a traceback; a private key file whose public
//! point does not belong to its scalar is rejected; OpenSSH certificates are rejected.

mod allow_list;
mod curve;
mod error;
pub mod hardened;
pub mod header;
mod keys;
mod openssh;
mod secret;

pub use allow_list::{AllowList, CsvError, Iter};
pub use curve::Curve;
pub use error::AuthError;
pub use header::Base64Error;
pub use keys::{generate_keypair, PrivateKey, PublicKey};
pub use secret::{primitives, SharedSecret, Token, TokenMac};
