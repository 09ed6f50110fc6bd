//! The key schema: every Redis key redlayer writes is built here.
//!
//! ```text
//! {prefix}:{kind}:{{id}}[:{suffix}]
//! ```
//!
//! - `prefix` is configurable per [`Redis`](crate::Redis) handle (default `redlayer`),
//!   so several applications can share one Redis.
//! - `kind` names the crate and structure (`rl`, `sess`, `lock`, `cache`, ...);
//!   each crate documents its kinds in `docs/KEYS.md` at the repository root.
//! - `{id}` is a Redis Cluster *hash tag*: every key of one operation carries the
//!   same tag, so all of them live in one slot and a multi-key script can never
//!   fail with `CROSSSLOT`.
//! - Anything that came from a client goes through [`KeyPart`]: short, plain
//!   values stay readable, everything else (long, binary, glob or brace
//!   characters) is replaced by a SHA-256 digest, so no client input reaches
//!   Redis unbounded or can break out of the hash tag.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::{fmt, sync::Arc};

use crate::{Error, Result};

/// Longest client value kept verbatim in a key; longer ones are hashed.
pub const MAX_VERBATIM_LEN: usize = 64;
/// Longest prefix accepted.
pub const MAX_PREFIX_LEN: usize = 64;

/// One identifying part of a key, safe to embed in a hash tag.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KeyPart(String);

impl KeyPart {
    /// A value from a client (IP, API key, path, ...): kept verbatim when it is at
    /// most [`MAX_VERBATIM_LEN`] bytes of plain characters, hashed otherwise.
    /// A verbatim value and a hashed one can never collide (hashes start with `#`,
    /// which is not a plain character).
    pub fn client(raw: impl AsRef<[u8]>) -> Self {
        let raw = raw.as_ref();
        if !raw.is_empty() && raw.len() <= MAX_VERBATIM_LEN && raw.iter().all(|b| is_plain(*b)) {
            // Plain bytes are ASCII, so this cannot fail.
            KeyPart(String::from_utf8_lossy(raw).into_owned())
        } else {
            Self::hashed(raw)
        }
    }

    /// A secret (session id, API key, idempotency key): always stored as its
    /// SHA-256 digest, so a dump of Redis holds no usable token.
    pub fn hashed(raw: impl AsRef<[u8]>) -> Self {
        // `#` and the 43 characters of the digest, in one allocation.
        let mut part = String::with_capacity(44);
        part.push('#');
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(Sha256::digest(raw.as_ref()), &mut part);
        KeyPart(part)
    }

    /// A value chosen by the application (a policy name, a constant). It goes
    /// through the same check as [`KeyPart::client`].
    pub fn fixed(name: &str) -> Self {
        Self::client(name)
    }

    /// The text placed in the key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// URL-safe base64 of SHA-256, without padding (43 characters).
pub fn digest_b64(raw: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(raw))
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'@' | b'/' | b'=' | b'+' | b'%')
}

/// Builds keys under one prefix. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBuilder {
    prefix: Arc<str>,
}

impl fmt::Debug for KeyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyBuilder").field(&self.prefix).finish()
    }
}

impl Default for KeyBuilder {
    fn default() -> Self {
        KeyBuilder { prefix: Arc::from("redlayer") }
    }
}

impl KeyBuilder {
    /// A builder under `prefix`: 1 to 64 plain characters (letters, digits,
    /// `.-_:@/=+%`), no braces or glob characters.
    pub fn new(prefix: &str) -> Result<Self> {
        if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN || !prefix.bytes().all(is_plain) {
            return Err(Error::InvalidInput(format!(
                "key prefix must be 1..={MAX_PREFIX_LEN} characters of [A-Za-z0-9._:@/=+%-], got {prefix:?}"
            )));
        }
        Ok(KeyBuilder { prefix: Arc::from(prefix) })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}:{kind}:{{id}}`.
    pub fn key(&self, kind: &str, id: &KeyPart) -> String {
        self.join(kind, id, None)
    }

    /// `{prefix}:{kind}:{{id}}:{suffix}`: a further key in the same slot as
    /// [`KeyBuilder::key`] with the same `id`.
    pub fn key_with(&self, kind: &str, id: &KeyPart, suffix: &str) -> String {
        self.join(kind, id, Some(suffix))
    }

    /// Keys are made on every request: one allocation of the right size.
    fn join(&self, kind: &str, id: &KeyPart, suffix: Option<&str>) -> String {
        let len = self.prefix.len() + kind.len() + id.0.len() + 4 + suffix.map_or(0, |s| s.len() + 1);
        let mut key = String::with_capacity(len);
        key.push_str(&self.prefix);
        key.push(':');
        key.push_str(kind);
        key.push_str(":{");
        key.push_str(&id.0);
        key.push('}');
        if let Some(suffix) = suffix {
            key.push(':');
            key.push_str(suffix);
        }
        key
    }

    /// A SCAN `MATCH` pattern for every key of `kind` (no client input in it).
    pub fn pattern(&self, kind: &str) -> String {
        format!("{}:{}:*", self.prefix, kind)
    }
}

/// The Redis Cluster slot of a key (CRC16 of its hash tag, mod 16384), as
/// Redis computes it. Useful to check that keys share a slot.
pub fn cluster_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = match bytes.iter().position(|&b| b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16_xmodem(tagged) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// A URI path with the spellings one resource has made one: percent-escapes
/// decoded (broken ones kept as they are), empty and `.` segments dropped,
/// `..` applied, no trailing slash. `/accounts/42`, `/accounts/%34%32` and
/// `//accounts/./42/` give `/accounts/42`. Used where a path scopes a key
/// (the lock layer's `PathKey`, the rate limiter's `per_route` without a
/// matched route), so that a client cannot get a new key by spelling a path
/// differently.
pub fn normalized_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                decoded.push((high * 16 + low) as u8);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8_lossy(&decoded);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    format!("/{}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_stay_readable_and_hostile_ones_are_hashed() {
        assert_eq!(KeyPart::client("203.0.113.7").as_str(), "203.0.113.7");
        for hostile in ["a}b", "{x}", "a b", "*", "", "é", "a\nb"] {
            let part = KeyPart::client(hostile);
            assert!(part.as_str().starts_with('#'), "{hostile:?} -> {part:?}");
            assert_eq!(part.as_str().len(), 44);
        }
        let long = "a".repeat(10_000);
        assert_eq!(KeyPart::client(&long).as_str().len(), 44);
        assert_ne!(KeyPart::client(&long), KeyPart::client("a".repeat(10_001)));
    }

    #[test]
    fn secrets_are_always_hashed() {
        let part = KeyPart::hashed("session-id");
        assert!(!part.as_str().contains("session-id"));
    }

    #[test]
    fn keys_of_one_id_share_a_slot() {
        let keys = KeyBuilder::new("app").unwrap();
        let id = KeyPart::client("user-1");
        let a = keys.key("sess", &id);
        let b = keys.key_with("sess", &id, "idx");
        assert_eq!(a, "app:sess:{user-1}");
        assert_eq!(cluster_slot(&a), cluster_slot(&b));
        // Known values from the Redis Cluster specification.
        assert_eq!(cluster_slot("123456789"), 0x31C3);
        assert_eq!(cluster_slot("foo"), 12182);
        assert_eq!(cluster_slot("{user1000}.following"), cluster_slot("user1000"));
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in ["", "a{b", "a*", "a b", &"p".repeat(65)] {
            assert!(KeyBuilder::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn spellings_of_one_path_are_one_key() {
        for spelling in [
            "/accounts/42/withdraw",
            "/accounts/%34%32/withdraw",
            "//accounts/./42/withdraw/",
            "/x/../accounts/42/withdraw",
        ] {
            assert_eq!(super::normalized_path(spelling), "/accounts/42/withdraw", "{spelling}");
        }
        assert_eq!(super::normalized_path("/a/%zz/%4"), "/a/%zz/%4", "broken escapes stay as they are");
        assert_eq!(super::normalized_path("/../.."), "/");
        assert_ne!(super::normalized_path("/accounts/42"), super::normalized_path("/accounts/43"));
    }
}
