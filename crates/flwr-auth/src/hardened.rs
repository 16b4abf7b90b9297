//! Hardened node authentication: tokens bound to the RPC, a time and a counter, with a per-key
//! anti-replay window. Not part of Flower 1.14; only our SuperNodes and SuperLink speak it, and
//! only when both run with `--node-auth-mode hardened`.
//!
//! # Why
//!
//! A Flower 1.14 token (the crate docs, AUTH.md §5) is `HMAC(secret, canonical request)`: a pure
//! function of the key pair and the request bytes. Whoever sees one token may send it again, as
//! often and as late as they like, and for any method whose request encodes to the same bytes: a
//! `PullTaskIns` token of a node is also a valid `DeleteNode` token of that node. TLS is what
//! keeps tokens from being seen, so this matters once TLS is broken, terminated at a proxy that
//! logs headers, or a token leaks from a debug log or a packet capture.
//!
//! # The hardened token
//!
//! The SuperNode sends two more metadata entries, [`TIME_HEADER`] (its wall clock in unix
//! milliseconds) and [`COUNTER_HEADER`] (a per-process counter, strictly increasing, started at
//! the wall clock in microseconds so that it keeps increasing across restarts), both as plain
//! decimal numbers, and signs:
//!
//! ```text
//! auth-token = HMAC-SHA256(secret, "flwr-hardened-node-auth-v1\0" ‖ method path ‖ "\0"
//!                                   ‖ time ‖ "\0" ‖ counter ‖ "\0" ‖ canonical request)
//! method path = "/flwr.proto.Fleet/PullTaskIns" etc. (the gRPC path)
//! ```
//!
//! with the same secret and the same canonical request bytes as Flower 1.14
//! ([`SharedSecret::bound_mac`] feeds the prefix, the caller streams the request after it). The
//! fields cannot contain NUL, so the prefix parses one way only. The prefix starts with `f`
//! (`0x66`), which no protobuf message can start with (field 12, wire type 6 does not exist), so
//! no hardened message is ever a 1.14 message and no token of one mode is valid in the other.
//!
//! The SuperLink, for every call but `CreateNode`:
//!
//! 1. refuses a request without the two headers (a 1.14 token) or with malformed ones;
//! 2. refuses a time more than the allowed clock skew away from its own clock, when the headers
//!    arrive (before the body is read, so a slow upload of a large body is not refused for it);
//! 3. verifies the MAC in constant time, exactly as in 1.14 but over the bound message;
//! 4. only then admits the counter into the key's [`ReplayWindow`]; a counter seen before, or
//!    too far behind the highest one, is refused.
//!
//! # What the hardened mode stops
//!
//! * **Replay** of a captured request to the same SuperLink process: its counter is refused,
//!   forever (the window remembers the last [`REPLAY_WINDOW`] counters and refuses anything
//!   older).
//! * **Cross-method reuse**: the method is in the MAC, so a `PullTaskIns` token is not a
//!   `DeleteNode` or `Ping` token.
//! * **Late use** of a captured request anywhere: outside the clock skew (default ±30 s) its
//!   time is refused even by a SuperLink that has never seen its counter (a restarted SuperLink,
//!   another replica).
//!
//! # What it does not stop
//!
//! * **Replay to another replica, or after a SuperLink restart, within the skew.** The window
//!   lives in the memory of one SuperLink process. Several replicas sharing one database each
//!   keep their own windows, so a request captured on its way to one replica can be replayed
//!   once to each other replica until its time is older than the skew; the same holds for the
//!   first seconds after a restart, and for a key removed from and re-added to the allow-list
//!   (its window goes with it).
//! * **`CreateNode`**, which stays tokenless in both modes: the SuperNode learns the SuperLink's
//!   key from the `CreateNode` response, so it has no secret to sign with before. Knowing an
//!   allow-listed public key is enough to register a node for it, as in 1.14.
//! * **Secrecy of the traffic.** The MAC authenticates; TLS is what keeps tokens, tasks and
//!   results from being read, and what authenticates the SuperLink to the SuperNode.
//! * **Key compromise**: the secret is the static ECDH secret of 1.14; whoever holds either
//!   private key can sign anything.
//! * **Two SuperNode processes sharing a key pair**: each has its own counter, and the one
//!   whose counters are lower is refused as replaying. Hardened mode needs one process per key.
//!
//! # Clocks
//!
//! The SuperNode's and SuperLink's clocks must agree within the skew (NTP is ample). A SuperNode
//! whose clock stepped back across a restart starts its counter below the one the SuperLink
//! remembers and is refused until its requests are more than twice the skew newer than the last
//! one admitted; then the window starts over from its counter ([`Admission::Resynchronized`]),
//! which is safe because every request the window forgets is, by then, refused by its time.
//! Refusing until then is what keeps a replay that was already in flight from slipping through
//! the restart; the proof is at [`ReplayWindow::admit`].

use std::fmt;

use crate::error::AuthError;
use crate::secret::{SharedSecret, Token, TokenMac};

/// Metadata header carrying the SuperNode's wall clock when it signed, in unix milliseconds.
pub const TIME_HEADER: &str = "flwr-auth-time";

/// Metadata header carrying the SuperNode's request counter.
pub const COUNTER_HEADER: &str = "flwr-auth-counter";

/// Domain separation: what every hardened MAC input starts with. Versioned, so that a later
/// construction can never be confused with this one.
pub const DOMAIN: &[u8] = b"flwr-hardened-node-auth-v1\0";

/// Number of 64-bit words in the window's bitmap.
const WORDS: usize = 16;

/// How far behind the highest admitted counter a counter may be and still be admitted once:
/// the bitmap's 1024 bits less the word being filled (the ring is cleared a word at a time, as
/// in RFC 6479). Requests of one SuperNode that overtake each other by fewer than this many
/// requests all pass.
pub const REPLAY_WINDOW: u64 = (WORDS as u64 - 1) * 64;

/// What a hardened token covers besides the request bytes: the method, the time and the
/// counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding<'a> {
    method: &'a str,
    time_ms: u64,
    counter: u64,
}

impl<'a> Binding<'a> {
    /// A binding to the gRPC method path `method` (e.g. `/flwr.proto.Fleet/PullTaskIns`), the
    /// signer's clock `time_ms` (unix milliseconds) and its `counter`.
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidMethodPath`] if `method` contains NUL, the prefix's separator.
    pub fn new(method: &'a str, time_ms: u64, counter: u64) -> Result<Self, AuthError> {
        if method.as_bytes().contains(&0) {
            return Err(AuthError::InvalidMethodPath);
        }
        Ok(Self {
            method,
            time_ms,
            counter,
        })
    }

    /// The gRPC method path.
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The signer's clock, unix milliseconds.
    pub fn time_ms(&self) -> u64 {
        self.time_ms
    }

    /// The signer's counter.
    pub fn counter(&self) -> u64 {
        self.counter
    }
}

impl SharedSecret {
    /// Starts a hardened token: the MAC state with `DOMAIN ‖ method ‖ 0 ‖ time ‖ 0 ‖ counter ‖ 0`
    /// already fed. Feed the canonical request bytes next, in as many pieces as convenient, then
    /// [`TokenMac::verify`] or [`TokenMac::finish`].
    pub fn bound_mac(&self, binding: &Binding<'_>) -> TokenMac {
        let mut mac = self.mac();
        mac.update(DOMAIN);
        mac.update(binding.method.as_bytes());
        mac.update(b"\0");
        let mut digits = Decimal::new(binding.time_ms);
        mac.update(digits.as_bytes());
        mac.update(b"\0");
        digits = Decimal::new(binding.counter);
        mac.update(digits.as_bytes());
        mac.update(b"\0");
        mac
    }

    /// The hardened token over `message` (the canonical request bytes) under `binding`.
    pub fn sign_bound(&self, binding: &Binding<'_>, message: &[u8]) -> Token {
        let mut mac = self.bound_mac(binding);
        mac.update(message);
        mac.finish()
    }
}

/// A `u64` as decimal ASCII, on the stack (the verifying side runs this per request).
struct Decimal {
    buffer: [u8; 20],
    start: usize,
}

impl Decimal {
    fn new(mut value: u64) -> Self {
        let mut buffer = [b'0'; 20];
        let mut start = buffer.len();
        loop {
            start -= 1;
            // `value % 10` is a single digit, so the cast cannot truncate.
            buffer[start] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        Self { buffer, start }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buffer[self.start..]
    }
}

/// Parses a time or counter header: ASCII decimal digits only, no sign, no leading zero (except
/// `0` itself), at most `u64::MAX`. Strict, so that every number has one spelling and the text
/// the SuperNode signed is the text the SuperLink re-creates from the number.
pub fn parse_decimal(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    match bytes {
        [] => return None,
        [b'0', _, ..] => return None,
        _ => {}
    }
    if bytes.len() > 20 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Only digits remain, so the only possible failure is overflow.
    text.parse().ok()
}

/// Why a request's time is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClockError {
    /// The request's time is ahead of the SuperLink's clock by more than the skew.
    #[error("request time is {by_ms} ms ahead of the SuperLink's clock")]
    Ahead {
        /// How far ahead, in milliseconds.
        by_ms: u64,
    },
    /// The request's time is behind the SuperLink's clock by more than the skew.
    #[error("request time is {by_ms} ms behind the SuperLink's clock")]
    Behind {
        /// How far behind, in milliseconds.
        by_ms: u64,
    },
}

/// Checks that `time_ms` (the request's) is within `max_skew_ms` of `now_ms` (the verifier's
/// clock when the request arrived), inclusive.
///
/// # Errors
///
/// [`ClockError`] saying in which direction and by how much it is off.
pub fn check_time(time_ms: u64, now_ms: u64, max_skew_ms: u64) -> Result<(), ClockError> {
    if time_ms > now_ms {
        let by_ms = time_ms - now_ms;
        if by_ms > max_skew_ms {
            return Err(ClockError::Ahead { by_ms });
        }
    } else {
        let by_ms = now_ms - time_ms;
        if by_ms > max_skew_ms {
            return Err(ClockError::Behind { by_ms });
        }
    }
    Ok(())
}

/// How a request passed the [`ReplayWindow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The counter is the highest so far (or the first one).
    Ahead,
    /// The counter is below the highest but within the window and not seen before: a request
    /// that was overtaken by a later one of the same SuperNode.
    Late,
    /// The counter went back (a SuperNode restarted with its clock behind), and every request
    /// the window remembered is now refused by its time: the window starts over from this
    /// counter. Worth a log line.
    Resynchronized {
        /// The highest counter before.
        previous_highest: u64,
    },
}

/// Why a request was refused by the [`ReplayWindow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The request arrived before the window started over; it may be a replay of a request the
    /// window no longer remembers.
    #[error("request arrived before the counter window started over")]
    BeforeResync,
    /// The counter was admitted before: a replay (or a retry that was not signed afresh).
    #[error("counter already used")]
    Duplicate,
    /// The counter is further behind the highest than the window remembers.
    #[error("counter is {behind} behind the highest one, beyond the window of {REPLAY_WINDOW}")]
    TooOld {
        /// The distance to the highest counter.
        behind: u64,
    },
}

/// The anti-replay state of one key, as in IPsec (RFC 4303 §3.4.3, RFC 6479): the highest
/// counter admitted and a bitmap of which of the [`REPLAY_WINDOW`] counters below it were
/// admitted. 160 bytes; sans-IO (the caller passes its clock).
///
/// Call [`ReplayWindow::admit`] only for requests whose MAC verified and whose time passed
/// [`check_time`], with the same `now_ms`; otherwise anyone could burn a node's counters.
#[derive(Clone)]
pub struct ReplayWindow {
    /// The highest admitted counter, `None` before the first.
    highest: Option<u64>,
    /// Bit `c % 64` of word `(c / 64) % WORDS` is set when counter `c` was admitted.
    bits: [u64; WORDS],
    /// The newest request time admitted since the window (re)started, unix ms.
    newest_time_ms: u64,
    /// When the window last started over (the verifier's clock), unix ms; 0 before.
    resynced_at_ms: u64,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest)
            .field("newest_time_ms", &self.newest_time_ms)
            .field("resynced_at_ms", &self.resynced_at_ms)
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// An empty window: the first counter is admitted whatever it is.
    pub fn new() -> Self {
        Self {
            highest: None,
            bits: [0; WORDS],
            newest_time_ms: 0,
            resynced_at_ms: 0,
        }
    }

    /// The highest counter admitted so far.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// Admits the request with `counter` and `time_ms` (both from its verified headers), which
    /// arrived at `now_ms` and passed [`check_time`] for `now_ms` and `max_skew_ms`; records it
    /// when admitted.
    ///
    /// The rules, in order:
    ///
    /// 1. A request that arrived before the window last started over is refused
    ///    ([`ReplayError::BeforeResync`]).
    /// 2. A counter above the highest, or below it within the window and not seen, is admitted.
    /// 3. Otherwise, if `time_ms` is more than `2 × max_skew_ms` newer than every request
    ///    admitted since the window (re)started, the window starts over from this request.
    /// 4. Otherwise it is refused ([`ReplayError::Duplicate`], [`ReplayError::TooOld`]).
    ///
    /// Why no request is admitted twice: within one start of the window, an admitted counter
    /// stays set or falls below the window (refused by 2), and its time is at most the newest
    /// time (refused by 3). For a request R admitted before the window started over at
    /// request Z: `time(R) ≤ newest < time(Z) − 2·skew` (rule 3), R's replay passed the time
    /// check so `arrival(replay) ≤ time(R) + skew`, and Z did so `arrival(Z) ≥ time(Z) − skew`;
    /// together `arrival(replay) < arrival(Z)`, which rule 1 refuses, even for a replay whose
    /// slow body made it reach the window after Z.
    ///
    /// # Errors
    ///
    /// A [`ReplayError`] when refused; the window is then unchanged.
    pub fn admit(
        &mut self,
        counter: u64,
        time_ms: u64,
        now_ms: u64,
        max_skew_ms: u64,
    ) -> Result<Admission, ReplayError> {
        if now_ms < self.resynced_at_ms {
            return Err(ReplayError::BeforeResync);
        }
        let verdict = self.check(counter);
        let admission = match (verdict, self.highest) {
            (Ok(admission), _) => admission,
            (Err(_), Some(previous_highest))
                if time_ms
                    > self
                        .newest_time_ms
                        .saturating_add(max_skew_ms.saturating_mul(2)) =>
            {
                *self = Self {
                    resynced_at_ms: now_ms,
                    ..Self::new()
                };
                Admission::Resynchronized { previous_highest }
            }
            (Err(error), _) => return Err(error),
        };
        self.record(counter);
        self.newest_time_ms = self.newest_time_ms.max(time_ms);
        Ok(admission)
    }

    /// Whether `counter` would be admitted by the window alone (rule 2).
    fn check(&self, counter: u64) -> Result<Admission, ReplayError> {
        let Some(highest) = self.highest else {
            return Ok(Admission::Ahead);
        };
        if counter > highest {
            return Ok(Admission::Ahead);
        }
        let behind = highest - counter;
        if behind >= REPLAY_WINDOW {
            return Err(ReplayError::TooOld { behind });
        }
        let (word, mask) = slot(counter);
        if self.bits[word] & mask != 0 {
            return Err(ReplayError::Duplicate);
        }
        Ok(Admission::Late)
    }

    /// Marks `counter` as admitted, moving the window forward if it is the highest.
    fn record(&mut self, counter: u64) {
        match self.highest {
            Some(highest) if counter <= highest => {}
            Some(highest) => {
                // Clear the words the highest counter moves into: they still hold bits of
                // counters `WORDS` words back, which are now below the window.
                let (from, to) = (highest / 64, counter / 64);
                if to - from >= WORDS as u64 {
                    self.bits = [0; WORDS];
                } else {
                    for word in from + 1..=to {
                        self.bits[word_index(word)] = 0;
                    }
                }
                self.highest = Some(counter);
            }
            None => {
                self.bits = [0; WORDS];
                self.highest = Some(counter);
            }
        }
        let (word, mask) = slot(counter);
        self.bits[word] |= mask;
    }
}

/// The ring position of the word holding counter bits `64 × word ..`.
fn word_index(word: u64) -> usize {
    // The remainder is below WORDS (16), so the cast cannot truncate.
    (word % WORDS as u64) as usize
}

/// The word and bit of `counter` in the ring.
fn slot(counter: u64) -> (usize, u64) {
    (word_index(counter / 64), 1 << (counter % 64))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    /// A clock and skew under which rule 3 never applies: the same time for every request.
    fn admit(window: &mut ReplayWindow, counter: u64) -> Result<Admission, ReplayError> {
        window.admit(counter, 1_000, 1_000, 30_000)
    }

    #[test]
    fn in_order_counters_are_admitted_and_never_again() {
        let mut window = ReplayWindow::new();
        for counter in 100..3_000 {
            assert_eq!(admit(&mut window, counter), Ok(Admission::Ahead));
        }
        assert_eq!(admit(&mut window, 2_999), Err(ReplayError::Duplicate));
        assert_eq!(
            admit(&mut window, 2_999 - (REPLAY_WINDOW - 1)),
            Err(ReplayError::Duplicate)
        );
        assert_eq!(
            admit(&mut window, 2_999 - REPLAY_WINDOW),
            Err(ReplayError::TooOld {
                behind: REPLAY_WINDOW
            })
        );
        assert_eq!(window.highest(), Some(2_999));
    }

    #[test]
    fn overtaken_counters_within_the_window_pass_once() {
        let mut window = ReplayWindow::new();
        assert_eq!(admit(&mut window, 1_000), Ok(Admission::Ahead));
        assert_eq!(admit(&mut window, 1_005), Ok(Admission::Ahead));
        for counter in [1_003, 1_001, 1_004, 1_002] {
            assert_eq!(admit(&mut window, counter), Ok(Admission::Late));
        }
        for counter in 1_000..=1_005 {
            assert_eq!(admit(&mut window, counter), Err(ReplayError::Duplicate));
        }
        // Below the first counter, but within the window: never seen, so admitted.
        assert_eq!(admit(&mut window, 999), Ok(Admission::Late));
        // The oldest counter the window still covers, after a jump.
        assert_eq!(admit(&mut window, 5_000), Ok(Admission::Ahead));
        assert_eq!(
            admit(&mut window, 5_000 - REPLAY_WINDOW + 1),
            Ok(Admission::Late)
        );
        assert_eq!(
            admit(&mut window, 5_000 - REPLAY_WINDOW),
            Err(ReplayError::TooOld {
                behind: REPLAY_WINDOW
            })
        );
    }

    #[test]
    fn jumps_clear_what_falls_out_of_the_window() {
        for jump in [1, 63, 64, 5 * 64 + 3, 15 * 64, 16 * 64, 1 << 40] {
            let mut window = ReplayWindow::new();
            // Every slot of the ring holds admitted counters.
            let filled = 0..64 * WORDS as u64;
            for counter in filled.clone() {
                assert_eq!(admit(&mut window, counter), Ok(Admission::Ahead));
            }
            let highest = filled.end - 1 + jump;
            assert_eq!(admit(&mut window, highest), Ok(Admission::Ahead));
            // Below the new highest, within the window: admitted before exactly when filled.
            for counter in highest - (REPLAY_WINDOW - 1)..highest {
                let expected = if filled.contains(&counter) {
                    Err(ReplayError::Duplicate)
                } else {
                    Ok(Admission::Late)
                };
                assert_eq!(
                    admit(&mut window, counter),
                    expected,
                    "jump {jump}, {counter}"
                );
            }
            assert_eq!(
                admit(&mut window, highest - REPLAY_WINDOW),
                Err(ReplayError::TooOld {
                    behind: REPLAY_WINDOW
                })
            );
        }
    }

    #[test]
    fn the_u64_edges_work() {
        let mut window = ReplayWindow::new();
        assert_eq!(admit(&mut window, 0), Ok(Admission::Ahead));
        assert_eq!(admit(&mut window, 0), Err(ReplayError::Duplicate));
        assert_eq!(admit(&mut window, u64::MAX), Ok(Admission::Ahead));
        assert_eq!(admit(&mut window, u64::MAX), Err(ReplayError::Duplicate));
        assert_eq!(admit(&mut window, u64::MAX - 1), Ok(Admission::Late));
        assert_eq!(
            admit(&mut window, 0),
            Err(ReplayError::TooOld { behind: u64::MAX })
        );
        let mut window = ReplayWindow::new();
        assert_eq!(admit(&mut window, u64::MAX), Ok(Admission::Ahead));
        assert_eq!(
            admit(&mut window, u64::MAX - REPLAY_WINDOW + 1),
            Ok(Admission::Late)
        );
        // Skew and time at their limits do not overflow.
        let mut window = ReplayWindow::new();
        assert!(window.admit(5, u64::MAX, u64::MAX, u64::MAX).is_ok());
        assert_eq!(
            window.admit(5, u64::MAX, u64::MAX, u64::MAX),
            Err(ReplayError::Duplicate)
        );
    }

    #[test]
    fn a_counter_that_went_back_is_admitted_once_the_old_requests_expired() {
        let skew = 30_000;
        let mut window = ReplayWindow::new();
        let start = 1_700_000_000_000;
        assert_eq!(
            window.admit(900_000, start, start, skew),
            Ok(Admission::Ahead)
        );
        // The SuperNode restarts with a counter far behind: refused while the old requests
        // could still pass the time check somewhere.
        let later = start + 2 * skew;
        assert!(matches!(
            window.admit(10, later, later, skew),
            Err(ReplayError::TooOld { .. })
        ));
        let later = later + 1;
        assert_eq!(
            window.admit(10, later, later, skew),
            Ok(Admission::Resynchronized {
                previous_highest: 900_000
            })
        );
        assert_eq!(window.highest(), Some(10));
        assert_eq!(
            window.admit(11, later, later + 5, skew),
            Ok(Admission::Ahead)
        );
        // A request that arrived before the window started over is refused, whatever it is.
        assert_eq!(
            window.admit(12, later, later - 1, skew),
            Err(ReplayError::BeforeResync)
        );
        assert_eq!(
            window.admit(10, later, later, skew),
            Err(ReplayError::Duplicate)
        );
    }

    #[test]
    fn decimals_have_one_spelling() {
        for (text, expected) in [
            ("0", Some(0)),
            ("7", Some(7)),
            ("1700000000000", Some(1_700_000_000_000)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("99999999999999999999", None),
            ("000000000000000000001", None),
            ("", None),
            ("01", None),
            ("00", None),
            ("+1", None),
            ("-1", None),
            (" 1", None),
            ("1 ", None),
            ("1e3", None),
            ("١", None),
        ] {
            assert_eq!(parse_decimal(text), expected, "{text:?}");
        }
        for value in [0, 9, 10, 1_234_567_890, u64::MAX] {
            let text = Decimal::new(value);
            assert_eq!(text.as_bytes(), value.to_string().as_bytes());
        }
    }

    #[test]
    fn the_time_check_is_inclusive_both_ways() {
        assert_eq!(check_time(1_000, 1_000, 0), Ok(()));
        assert_eq!(check_time(1_030, 1_000, 30), Ok(()));
        assert_eq!(check_time(970, 1_000, 30), Ok(()));
        assert_eq!(
            check_time(1_031, 1_000, 30),
            Err(ClockError::Ahead { by_ms: 31 })
        );
        assert_eq!(
            check_time(969, 1_000, 30),
            Err(ClockError::Behind { by_ms: 31 })
        );
        assert_eq!(
            check_time(0, u64::MAX, 30),
            Err(ClockError::Behind { by_ms: u64::MAX })
        );
        assert_eq!(
            check_time(u64::MAX, 0, 30),
            Err(ClockError::Ahead { by_ms: u64::MAX })
        );
    }

    #[test]
    fn a_method_with_nul_is_refused() {
        assert!(matches!(
            Binding::new("/a\0b", 1, 2),
            Err(AuthError::InvalidMethodPath)
        ));
    }

    #[test]
    fn the_mac_input_is_the_documented_byte_string() {
        let secret = SharedSecret::from_hkdf_output(&[3; 32]);
        let binding = Binding::new("/flwr.proto.Fleet/Ping", 1_700_000_000_123, 42).unwrap();
        let expected = secret.sign(
            b"flwr-hardened-node-auth-v1\0/flwr.proto.Fleet/Ping\x001700000000123\x0042\0body",
        );
        assert_eq!(
            secret.sign_bound(&binding, b"body").as_bytes(),
            expected.as_bytes()
        );
    }

    /// A model of the window: every counter ever admitted, and the highest.
    #[derive(Default)]
    struct Model {
        seen: HashSet<u64>,
        highest: Option<u64>,
    }

    impl Model {
        fn admit(&mut self, counter: u64) -> bool {
            let fresh = match self.highest {
                None => true,
                Some(highest) => {
                    counter > highest
                        || (highest - counter < REPLAY_WINDOW && !self.seen.contains(&counter))
                }
            };
            if fresh {
                self.seen.insert(counter);
                self.highest = self.highest.max(Some(counter));
            }
            fresh
        }
    }

    /// Counters as a SuperNode makes them (a start, then small steps, sometimes reordered)
    /// mixed with arbitrary values, including the u64 edges.
    fn counters() -> impl Strategy<Value = Vec<u64>> {
        let near = (0u64..4_000).prop_map(|offset| (1u64 << 50) + offset);
        let edge = prop_oneof![
            Just(0u64),
            Just(1),
            Just(u64::MAX),
            Just(u64::MAX - 1),
            Just(u64::MAX - REPLAY_WINDOW),
            (0u64..2_000).prop_map(|offset| u64::MAX - offset),
        ];
        prop::collection::vec(prop_oneof![6 => near, 1 => edge, 1 => any::<u64>()], 0..600)
    }

    /// `mac` after `body`.
    fn over(mut mac: TokenMac, body: &[u8]) -> TokenMac {
        mac.update(body);
        mac
    }

    const METHODS: [&str; 6] = [
        "/flwr.proto.Fleet/DeleteNode",
        "/flwr.proto.Fleet/GetFab",
        "/flwr.proto.Fleet/GetRun",
        "/flwr.proto.Fleet/Ping",
        "/flwr.proto.Fleet/PullTaskIns",
        "/flwr.proto.Fleet/PushTaskRes",
    ];

    proptest! {
        #[test]
        fn every_bound_field_changes_the_token(
            okm in any::<[u8; 32]>(),
            body in prop::collection::vec(any::<u8>(), 0..256),
            method in 0..METHODS.len(),
            other_method in 0..METHODS.len(),
            time in any::<u64>(),
            counter in any::<u64>(),
            delta in 1..u64::MAX,
        ) {
            let secret = SharedSecret::from_hkdf_output(&okm);
            let binding = Binding::new(METHODS[method], time, counter).unwrap();
            let token = secret.sign_bound(&binding, &body);
            prop_assert!(over(secret.bound_mac(&binding), &body).verify(token.as_bytes()));
            let changed = [
                (other_method != method)
                    .then(|| Binding::new(METHODS[other_method], time, counter).unwrap()),
                Some(Binding::new(METHODS[method], time.wrapping_add(delta), counter).unwrap()),
                Some(Binding::new(METHODS[method], time, counter.wrapping_add(delta)).unwrap()),
            ];
            for other in changed.into_iter().flatten() {
                prop_assert!(
                    !over(secret.bound_mac(&other), &body).verify(token.as_bytes()),
                    "{:?} verified a token of {:?}", other, binding
                );
            }
            // Neither is it the 1.14 token of the body, nor the other way round.
            prop_assert!(!secret.verify(&body, token.as_bytes()));
            prop_assert!(
                !over(secret.bound_mac(&binding), &body).verify(secret.sign(&body).as_bytes())
            );
        }

        #[test]
        fn the_window_admits_exactly_what_the_model_admits(counters in counters()) {
            let mut window = ReplayWindow::new();
            let mut model = Model::default();
            for counter in counters {
                let admitted = admit(&mut window, counter).is_ok();
                prop_assert_eq!(admitted, model.admit(counter), "counter {}", counter);
                prop_assert_eq!(window.highest(), model.highest);
            }
        }

        #[test]
        fn requests_overtaking_each_other_within_the_window_all_pass(
            start in any::<u64>(),
            swaps in prop::collection::vec((0usize..300, 0usize..300), 0..100),
        ) {
            let start = start.min(u64::MAX - 300);
            let mut counters: Vec<u64> = (start..start + 300).collect();
            for (a, b) in swaps {
                counters.swap(a, b);
            }
            let mut window = ReplayWindow::new();
            // The first one sets the base; everything within 300 < REPLAY_WINDOW of it passes.
            for counter in &counters {
                prop_assert!(admit(&mut window, *counter).is_ok(), "counter {}", counter);
            }
            for counter in &counters {
                prop_assert_eq!(admit(&mut window, *counter), Err(ReplayError::Duplicate));
            }
        }

        /// The property the window exists for, with resynchronisation in play: whatever the
        /// arrival times, clocks and counters, a request that passes the time check is never
        /// admitted twice. Requests reach the window in any order relative to their arrival
        /// (a slow body), so arrival times are not sorted.
        #[test]
        fn no_request_is_admitted_twice(
            skew in 0u64..50,
            requests in prop::collection::vec(
                // Counters close together (duplicates, overtaking) and far apart (too old).
                (0u64..400, 0u64..400, prop_oneof![0u64..40, 0..4 * REPLAY_WINDOW]),
                0..300,
            ),
            replays in prop::collection::vec((any::<prop::sample::Index>(), 0u64..400), 0..100),
        ) {
            // Originals (time, counter) at some arrival, then replays of earlier ones at other
            // arrivals, interleaved at the end.
            let mut events: Vec<(u64, u64, u64)> = requests
                .iter()
                .map(|&(arrival, time, counter)| (arrival, time, counter))
                .collect();
            if !requests.is_empty() {
                for (index, arrival) in replays {
                    let (_, time, counter) = requests[index.index(requests.len())];
                    let at = index.index(events.len() + 1);
                    events.insert(at, (arrival, time, counter));
                }
            }
            let mut window = ReplayWindow::new();
            let mut admitted = HashSet::new();
            for (arrival, time, counter) in events {
                if check_time(time, arrival, skew).is_err() {
                    continue;
                }
                if window.admit(counter, time, arrival, skew).is_ok() {
                    prop_assert!(
                        admitted.insert((time, counter)),
                        "({}, {}) admitted twice", time, counter
                    );
                }
            }
        }
    }
}
