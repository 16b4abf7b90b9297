//! Held pulls: the request and reply metadata by which our processes ask a SuperLink to hold an
//! empty `PullTaskIns` / `PullTaskRes` until something arrives, and by which the SuperLink says
//! it did.
//!
//! The messages stay those of Flower 1.14; only gRPC metadata is added, which 1.14 peers neither
//! send nor read. A client that asks without getting [`REPLY_HEADER`] back is talking to a
//! SuperLink that does not hold (the Python one), and keeps the reference's polling.

use std::time::Duration;

/// Request metadata: the longest wait, in whole milliseconds, the caller accepts for an empty
/// pull.
pub const REQUEST_HEADER: &str = "flwr-hold-ms";

/// Reply metadata: the pull was held for up to this many milliseconds, so an empty answer means
/// nothing arrived meanwhile and the caller may pull again at once.
pub const REPLY_HEADER: &str = "flwr-held-ms";

/// The longest hold a SuperLink grants, whatever the caller asks: well inside every deadline
/// and keep-alive of the connection.
pub const MAX_HOLD: Duration = Duration::from_secs(30);

/// The hold a caller asks for in [`REQUEST_HEADER`]: ASCII digits, at most [`MAX_HOLD`]; `None`
/// for anything else (or zero), which means "do not hold".
pub fn parse_millis(value: &[u8]) -> Option<Duration> {
    // Ten digits already exceed MAX_HOLD; refusing longer values bounds the parse.
    if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let millis = value
        .iter()
        .fold(0_u64, |acc, digit| acc * 10 + u64::from(digit - b'0'));
    (millis > 0).then(|| Duration::from_millis(millis).min(MAX_HOLD))
}

/// The metadata value for `hold`, in whole milliseconds.
pub fn format_millis(hold: Duration) -> String {
    hold.as_millis().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_digits_and_caps_the_hold() {
        assert_eq!(parse_millis(b"250"), Some(Duration::from_millis(250)));
        assert_eq!(parse_millis(b"9999999999"), Some(MAX_HOLD));
        assert_eq!(
            parse_millis(&format_millis(MAX_HOLD).into_bytes()),
            Some(MAX_HOLD)
        );
    }

    #[test]
    fn refuses_what_is_not_a_positive_count_of_milliseconds() {
        for value in [
            &b""[..],
            b"0",
            b"-5",
            b"1.5",
            b" 5",
            b"12345678901",
            b"\xff",
        ] {
            assert_eq!(parse_millis(value), None, "{value:?}");
        }
    }
}
