//! The stored form of a response: a compact, versioned binary encoding.
//!
//! ```text
//! magic 0xC7 | version u8 | response_time_ms u64 | fetch_ms u32 | status u16
//! | n_req u16 | (name_len u16, name, value_len u32, value)*  (the Vary'd request headers and Host)
//! | n_res u16 | (name_len u16, name, value_len u32, value)*  (the response headers as stored)
//! | body (the rest)
//! ```
//!
//! An entry written by another version (or garbage) decodes to `None`: a
//! miss, never a wrong answer. Bodies are kept as one [`Bytes`] slice of the
//! stored value (no copy, no per-byte decoding on a hit).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

const MAGIC: u8 = 0xC7;
/// The encoding version written by this build.
pub const VERSION: u8 = 1;

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
    let mut headers = HeaderMap::with_capacity(n);
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
        headers.append(name, value);
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
        let response_time = UNIX_EPOCH + Duration::from_millis(buf.get_u64());
        let fetch_time = Duration::from_millis(buf.get_u32() as u64);
        let status = StatusCode::from_u16(buf.get_u16()).ok()?;
        let req_headers = get_headers(&mut buf)?;
        let headers = get_headers(&mut buf)?;
        Some(Entry { response_time, fetch_time, status, req_headers, headers, body: buf })
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
        };
        let bytes = entry.encode();
        let back = Entry::decode(bytes.clone()).unwrap();
        assert_eq!(back.body, "hello");
        assert_eq!(back.headers.get_all("x-multi").iter().count(), 2);
        assert_eq!(back.response_time, entry.response_time);
        assert_eq!(back.fetch_time, entry.fetch_time);
        let mut other = bytes.to_vec();
        other[1] = VERSION + 1;
        assert!(Entry::decode(Bytes::from(other)).is_none());
        for cut in 0..bytes.len().min(60) {
            let _ = Entry::decode(bytes.slice(..cut));
        }
        assert!(Entry::decode(Bytes::from_static(b"garbage garbage garbage")).is_none());
    }
}
