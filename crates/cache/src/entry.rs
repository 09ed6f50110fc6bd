//! The stored form of a response: a compact, versioned binary encoding.
//!
//! ```text
//! magic 0xC7 | version u8 | response_time_ms u64 | fetch_ms u32 | status u16
//! | has_freshness u8 | (opts: flags u8, heuristic f32 bits u32, immutable_min_ttl secs u64 + nanos u32,
//!                      age secs u64, lifetime secs u64 + nanos u32)?
//! | n_req u16 | (name_len u16, name, value_len u32, value)*  (the Vary'd request headers and Host)
//! | n_res u16 | (name_len u16, name, value_len u32, value)*  (the response headers as stored)
//! | body (the rest)
//! ```
//!
//! An entry written by another version (or garbage) decodes to `None`: a
//! miss, never a wrong answer. Bodies are kept as one [`Bytes`] slice of the
//! stored value (no copy, no per-byte decoding on a hit).
//!
//! Version 2 added the [`Freshness`] summary: what `http-cache-semantics`
//! computes from the stored response alone (its `Age` and its freshness
//! lifetime), so that a fresh hit does not rebuild a `CachePolicy`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_cache_semantics::CacheOptions;

const MAGIC: u8 = 0xC7;
/// The encoding version written by this build.
pub const VERSION: u8 = 2;

/// What `http-cache-semantics` derives from a stored response alone, computed
/// once when the entry is stored: with it a plain fresh hit (no request
/// `Cache-Control` / `Pragma`, no `Vary`) is decided without a `CachePolicy`.
/// Only valid for the [`CacheOptions`] it was computed with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Freshness {
    /// The options of the policy it was computed with.
    pub opts: OptsKey,
    /// The response's age when it was received (`CachePolicy::age` at `response_time`).
    pub age: Duration,
    /// How long it stays fresh, counted like `Age` (`CachePolicy` `max_age`
    /// when it exceeds `age`; else `age`: stale from the start).
    pub lifetime: Duration,
}

/// The [`CacheOptions`] fields that freshness depends on, comparable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptsKey {
    flags: u8,
    heuristic: u32,
    immutable_min_ttl: Duration,
}

impl OptsKey {
    /// The key of a set of options.
    pub fn of(opts: &CacheOptions) -> Self {
        OptsKey {
            flags: u8::from(opts.shared) | (u8::from(opts.ignore_cargo_cult) << 1),
            heuristic: opts.cache_heuristic.to_bits(),
            immutable_min_ttl: opts.immutable_min_time_to_live,
        }
    }
}

impl Freshness {
    /// The age of the response at `now` (as `CachePolicy::age`).
    pub fn age_at(&self, response_time: SystemTime, now: SystemTime) -> Duration {
        match now.duration_since(response_time) {
            Ok(resident) => self.age.saturating_add(resident),
            Err(_) => self.age,
        }
    }
}

/// A stored response.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When the response was received (the cache's clock).
    pub response_time: SystemTime,
    /// How long the origin took to produce it (XFetch's delta).
    pub fetch_time: Duration,
    /// The response status.
    pub status: StatusCode,
    /// The request headers the response varies on (and `Host`).
    pub req_headers: HeaderMap,
    /// The response headers, as they will be served (minus `Age`, recomputed).
    pub headers: HeaderMap,
    /// The complete body.
    pub body: Bytes,
    /// The precomputed freshness of the stored response (`None`: decide
    /// with a `CachePolicy`).
    pub freshness: Option<Freshness>,
}

fn put_duration(buf: &mut BytesMut, d: Duration) {
    buf.put_u64(d.as_secs());
    buf.put_u32(d.subsec_nanos());
}

fn get_duration(buf: &mut Bytes) -> Option<Duration> {
    if buf.remaining() < 12 {
        return None;
    }
    let secs = buf.get_u64();
    let nanos = buf.get_u32();
    (nanos < 1_000_000_000).then(|| Duration::new(secs, nanos))
}

fn get_freshness(buf: &mut Bytes) -> Option<Option<Freshness>> {
    if buf.remaining() < 1 {
        return None;
    }
    match buf.get_u8() {
        0 => Some(None),
        1 => {
            if buf.remaining() < 5 {
                return None;
            }
            let flags = buf.get_u8();
            let heuristic = buf.get_u32();
            let immutable_min_ttl = get_duration(buf)?;
            if buf.remaining() < 8 {
                return None;
            }
            // Stored capped at 2^31 s (RFC 9111 1.2.2); a larger value is not ours.
            let age = buf.get_u64();
            if age > crate::policy::MAX_DELTA_SECONDS {
                return None;
            }
            let age = Duration::from_secs(age);
            let lifetime = get_duration(buf)?;
            let opts = OptsKey { flags, heuristic, immutable_min_ttl };
            Some(Some(Freshness { opts, age, lifetime }))
        }
        _ => None,
    }
}

fn put_headers(buf: &mut BytesMut, headers: &HeaderMap) {
    let n = headers.len().min(u16::MAX as usize);
    buf.put_u16(n as u16);
    for (name, value) in headers.iter().take(n) {
        buf.put_u16(name.as_str().len() as u16);
        buf.put_slice(name.as_str().as_bytes());
        buf.put_u32(value.len() as u32);
        buf.put_slice(value.as_bytes());
    }
}

fn get_headers(buf: &mut Bytes) -> Option<HeaderMap> {
    if buf.remaining() < 2 {
        return None;
    }
    let n = buf.get_u16() as usize;
    // The count comes from the store: a foreign value must not size the map
    // (a map past http's limit panics); past that limit it is not ours.
    let mut headers = HeaderMap::with_capacity(n.min(128));
    for _ in 0..n {
        if buf.remaining() < 2 {
            return None;
        }
        let len = buf.get_u16() as usize;
        if buf.remaining() < len + 4 {
            return None;
        }
        let name = HeaderName::from_bytes(&buf.split_to(len)).ok()?;
        let len = buf.get_u32() as usize;
        if buf.remaining() < len {
            return None;
        }
        let value = HeaderValue::from_maybe_shared(buf.split_to(len)).ok()?;
        headers.try_append(name, value).ok()?;
    }
    Some(headers)
}

impl Entry {
    /// Encodes the entry.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.body.len() + 64 + self.headers.len() * 48);
        buf.put_u8(MAGIC);
        buf.put_u8(VERSION);
        let ms = self.response_time.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        buf.put_u64(ms);
        buf.put_u32(self.fetch_time.as_millis().min(u32::MAX as u128) as u32);
        buf.put_u16(self.status.as_u16());
        match &self.freshness {
            Some(f) => {
                buf.put_u8(1);
                buf.put_u8(f.opts.flags);
                buf.put_u32(f.opts.heuristic);
                put_duration(&mut buf, f.opts.immutable_min_ttl);
                buf.put_u64(f.age.as_secs());
                put_duration(&mut buf, f.lifetime);
            }
            None => buf.put_u8(0),
        }
        put_headers(&mut buf, &self.req_headers);
        put_headers(&mut buf, &self.headers);
        buf.put_slice(&self.body);
        buf.freeze()
    }

    /// Decodes an entry; `None` for another version or a corrupt value.
    pub fn decode(mut buf: Bytes) -> Option<Entry> {
        if buf.remaining() < 16 || buf.get_u8() != MAGIC || buf.get_u8() != VERSION {
            return None;
        }
        let response_time = UNIX_EPOCH.checked_add(Duration::from_millis(buf.get_u64()))?;
        let fetch_time = Duration::from_millis(buf.get_u32() as u64);
        let status = StatusCode::from_u16(buf.get_u16()).ok()?;
        let freshness = get_freshness(&mut buf)?;
        let req_headers = get_headers(&mut buf)?;
        let headers = get_headers(&mut buf)?;
        Some(Entry { response_time, fetch_time, status, req_headers, headers, body: buf, freshness })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_other_versions_are_misses() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let entry = Entry {
            response_time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            fetch_time: Duration::from_millis(42),
            status: StatusCode::OK,
            req_headers: HeaderMap::new(),
            headers,
            body: Bytes::from_static(b"hello"),
            freshness: Some(Freshness {
                opts: OptsKey::of(&CacheOptions::default()),
                age: Duration::from_secs(3),
                lifetime: Duration::new(60, 5),
            }),
        };
        let bytes = entry.encode();
        let back = Entry::decode(bytes.clone()).unwrap();
        assert_eq!(back.body, "hello");
        assert_eq!(back.headers.get_all("x-multi").iter().count(), 2);
        assert_eq!(back.response_time, entry.response_time);
        assert_eq!(back.fetch_time, entry.fetch_time);
        assert_eq!(back.freshness, entry.freshness);
        let none = Entry { freshness: None, ..entry.clone() };
        assert_eq!(Entry::decode(none.encode()).unwrap().freshness, None);
        let mut other = bytes.to_vec();
        other[1] = VERSION + 1;
        assert!(Entry::decode(Bytes::from(other)).is_none());
        for cut in 0..bytes.len() {
            let _ = Entry::decode(bytes.slice(..cut));
        }
        assert!(Entry::decode(Bytes::from_static(b"garbage garbage garbage")).is_none());
    }

    /// A 200 without headers or body, stored at a fixed time.
    fn bare_entry(freshness: Option<Freshness>) -> Entry {
        Entry {
            response_time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            fetch_time: Duration::ZERO,
            status: StatusCode::OK,
            req_headers: HeaderMap::new(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            freshness,
        }
    }

    /// A foreign value's header count must not panic the map (http's
    /// `HeaderMap` panics past 24,576 names): such a value is a miss.
    #[test]
    fn a_foreign_header_count_is_a_miss_not_a_panic() {
        let bytes = bare_entry(None).encode();
        let head = &bytes[..bytes.len() - 2];
        let mut claimed = head.to_vec();
        claimed.extend_from_slice(&[0xFF, 0xFF]);
        assert!(Entry::decode(Bytes::from(claimed)).is_none(), "65,535 headers claimed, none there");
        let mut many = BytesMut::from(head);
        many.put_u16(30_000);
        for i in 0..30_000 {
            let name = format!("x{i}");
            many.put_u16(name.len() as u16);
            many.put_slice(name.as_bytes());
            many.put_u32(0);
        }
        assert!(Entry::decode(many.freeze()).is_none(), "more names than a header map holds");
    }

    #[test]
    fn corrupt_ages_and_times_are_misses_not_panics() {
        let entry = bare_entry(Some(Freshness {
            opts: OptsKey::of(&CacheOptions::default()),
            age: Duration::from_secs(u64::MAX),
            lifetime: Duration::from_secs(60),
        }));
        assert!(Entry::decode(entry.encode()).is_none(), "an age past 2^31 s");
        let capped = Entry {
            freshness: entry.freshness.map(|f| Freshness { age: Duration::from_secs(1 << 31), ..f }),
            ..entry.clone()
        };
        let back = Entry::decode(capped.encode()).expect("2^31 s is a stored age");
        let far = back.response_time + Duration::from_secs(u64::MAX / 4);
        let age = back.freshness.unwrap().age_at(back.response_time, far);
        assert_eq!(age, Duration::from_secs((1 << 31) + u64::MAX / 4));
        let mut bytes = entry.encode().to_vec();
        bytes[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
        let _ = Entry::decode(Bytes::from(bytes)); // a response time past SystemTime's range: no panic
    }
}
