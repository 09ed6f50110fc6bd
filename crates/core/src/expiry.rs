//! [`expiry_ms`]: a `Duration` as the milliseconds of a Redis expiry.

use std::time::Duration;

/// The longest expiry sent to Redis: 100 years, "forever" in practice.
/// Redis refuses an expiry whose absolute time overflows (`PEXPIRE key
/// 18446744073709551615` is an error), so a longer one, up to
/// `Duration::MAX`, is sent as this.
pub const MAX_EXPIRY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `d` in whole milliseconds for `PX` / `PEXPIRE`, at most [`MAX_EXPIRY`].
///
/// ```
/// use std::time::Duration;
/// use redlayer_core::expiry::{MAX_EXPIRY, expiry_ms};
///
/// assert_eq!(expiry_ms(Duration::from_secs(2)), 2000);
/// assert_eq!(expiry_ms(Duration::MAX), MAX_EXPIRY.as_millis() as u64);
/// ```
pub fn expiry_ms(d: Duration) -> u64 {
    d.min(MAX_EXPIRY).as_millis() as u64
}
