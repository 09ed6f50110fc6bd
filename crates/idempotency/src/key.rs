//! The `Idempotency-Key` header, the client scope and the request fingerprint.

use std::{fmt, sync::Arc};

use http::{HeaderMap, HeaderName, Method, request::Parts};
use sha2::{Digest, Sha256};

/// What the `Idempotency-Key` header of a request holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeyHeader {
    Missing,
    Invalid(&'static str),
    Key(String),
}

/// Reads the key: one header field holding an RFC 8941 sf-string of
/// 1..=`max_len` characters. Nothing unbounded is parsed.
pub(crate) fn parse_key(headers: &HeaderMap, name: &HeaderName, max_len: usize) -> KeyHeader {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else { return KeyHeader::Missing };
    if values.next().is_some() {
        return KeyHeader::Invalid("more than one Idempotency-Key field");
    }
    // Quotes, escapes and parameters take room too, but never more than this.
    if value.len() > max_len.saturating_mul(2).saturating_add(64) {
        return KeyHeader::Invalid("Idempotency-Key is too long");
    }
    let item = match sfv::Parser::new(value.as_bytes()).parse::<sfv::Item>() {
        Ok(item) => item,
        Err(_) => return KeyHeader::Invalid("Idempotency-Key must be a structured-field string, e.g. \"8e03978e\""),
    };
    let Some(key) = item.bare_item.as_string() else {
        return KeyHeader::Invalid("Idempotency-Key must be a structured-field string, e.g. \"8e03978e\"");
    };
    let key = key.as_str();
    if key.is_empty() {
        return KeyHeader::Invalid("Idempotency-Key is empty");
    }
    if key.len() > max_len {
        return KeyHeader::Invalid("Idempotency-Key is too long");
    }
    KeyHeader::Key(key.to_owned())
}

/// Whose keys these are: keys of different scopes never meet, so one client
/// cannot replay (or block) another's request by guessing its key.
#[derive(Clone)]
pub struct Scope(Arc<ScopeFn>);

type ScopeFn = dyn Fn(&Parts) -> Option<Vec<u8>> + Send + Sync;

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scope(..)")
    }
}

impl Scope {
    /// One scope for everyone (only when keys are unguessable and clients trusted).
    pub fn global() -> Self {
        Scope(Arc::new(|_| Some(Vec::new())))
    }

    /// The value of a request header (an API key, a tenant id, a user id set
    /// by an authentication layer placed before this one).
    pub fn header(name: HeaderName) -> Self {
        Scope(Arc::new(move |parts| parts.headers.get(&name).map(|v| v.as_bytes().to_vec())))
    }

    /// Any function of the request head: `None` means "anonymous", and all
    /// anonymous requests share one scope. With axum, the peer address is
    /// `parts.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>()`.
    pub fn from_fn(f: impl Fn(&Parts) -> Option<Vec<u8>> + Send + Sync + 'static) -> Self {
        Scope(Arc::new(f))
    }

    pub(crate) fn of(&self, parts: &Parts) -> Option<Vec<u8>> {
        (self.0)(parts)
    }
}

/// The record id: a digest of scope and key, so neither reaches Redis in clear.
pub(crate) fn record_id(scope: Option<&[u8]>, key: &str) -> String {
    let mut raw = Vec::with_capacity(key.len() + 64);
    match scope {
        Some(scope) => {
            raw.push(1);
            raw.extend_from_slice(&(scope.len() as u64).to_be_bytes());
            raw.extend_from_slice(scope);
        }
        None => raw.push(0),
    }
    raw.extend_from_slice(key.as_bytes());
    redlayer_core::keys::digest_b64(&raw)
}

/// The request fingerprint: method, path and query, body digest.
pub(crate) fn fingerprint(method: &Method, path_and_query: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(method.as_str().as_bytes());
    hasher.update(b"\n");
    hasher.update(path_and_query.as_bytes());
    hasher.update(b"\n");
    hasher.update(body);
    format!("{:x}", hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parse(values: &[&[u8]]) -> KeyHeader {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("idempotency-key", HeaderValue::from_bytes(v).unwrap());
        }
        parse_key(&headers, &HeaderName::from_static("idempotency-key"), 255)
    }

    #[test]
    fn keys_are_sf_strings_of_bounded_length() {
        assert_eq!(parse(&[]), KeyHeader::Missing);
        assert_eq!(parse(&[b"\"8e03978e-40d5\""]), KeyHeader::Key("8e03978e-40d5".into()));
        assert_eq!(parse(&[b"\"a\\\"b\""]), KeyHeader::Key("a\"b".into()));
        for bad in [&b"8e03978e"[..], b"\"\"", b"\"unterminated", b"1", b"\"a\" \"b\"", b"\xff\xfe"] {
            assert!(matches!(parse(&[bad]), KeyHeader::Invalid(_)), "{bad:?}");
        }
        let long = format!("\"{}\"", "k".repeat(256));
        assert!(matches!(parse(&[long.as_bytes()]), KeyHeader::Invalid(_)));
        let huge = format!("\"{}\"", "k".repeat(100_000));
        assert!(matches!(parse(&[huge.as_bytes()]), KeyHeader::Invalid(_)));
        assert!(matches!(parse(&[b"\"a\"", b"\"a\""]), KeyHeader::Invalid(_)), "two fields");
    }

    #[test]
    fn scopes_separate_keys() {
        assert_ne!(record_id(Some(b"alice"), "k"), record_id(Some(b"bob"), "k"));
        assert_ne!(record_id(None, "k"), record_id(Some(b""), "k"));
        assert_ne!(record_id(Some(b"a"), "bk"), record_id(Some(b"ab"), "k"));
        assert_eq!(record_id(Some(b"a"), "k").len(), 43);
    }
}
