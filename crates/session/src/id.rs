//! Session ids: 384 bits from the OS CSPRNG, URL-safe, never stored in Redis.

use std::fmt;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use redlayer_core::{KeyBuilder, KeyPart};
use sha2::{Digest as _, Sha256};

use crate::SessionError;

/// Bytes of an id: a 128-bit *family* part, kept when the id is cycled so that
/// the old and new keys share a cluster slot (an atomic `RENAME`), and a 256-bit
/// secret part drawn afresh on every cycle.
const FAMILY_BYTES: usize = 16;
const ID_BYTES: usize = 48;
/// Length of an encoded id (base64url without padding).
pub(crate) const ID_LEN: usize = 64;

/// Length of an URL-safe base64 SHA-256 digest without padding.
const DIGEST_B64_LEN: usize = 43;

/// The redis key kind of session hashes.
pub(crate) const KIND: &str = "sess";
/// The redis key kind of per-user indexes.
pub(crate) const USER_KIND: &str = "sessu";

/// A session id. Its `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SessionId([u8; ID_BYTES]);

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(..)")
    }
}

fn random(buf: &mut [u8]) -> Result<(), SessionError> {
    getrandom::fill(buf).map_err(|e| SessionError::Rng(e.to_string()))
}

impl SessionId {
    /// A fresh id, all from the OS CSPRNG.
    pub(crate) fn generate() -> Result<Self, SessionError> {
        let mut bytes = [0u8; ID_BYTES];
        random(&mut bytes)?;
        Ok(SessionId(bytes))
    }

    /// The id that replaces this one on `cycle_id`: same family, new secret.
    pub(crate) fn cycled(&self) -> Result<Self, SessionError> {
        let mut bytes = self.0;
        random(&mut bytes[FAMILY_BYTES..])?;
        Ok(SessionId(bytes))
    }

    /// `next` (an id of the same family) sealed with this id, for the alias a
    /// renewal leaves under this id's key: the secret part of `next` XOR a
    /// SHA-256 pad derived from this whole id (in its own domain, so unlike the
    /// store key). Only a client holding this id can open it; the store holds
    /// no usable id.
    pub(crate) fn seal(&self, next: &SessionId) -> String {
        let pad = self.pad();
        let mut secret = [0u8; ID_BYTES - FAMILY_BYTES];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = next.0[FAMILY_BYTES + i] ^ pad[i];
        }
        B64.encode(secret)
    }

    /// Opens what [`SessionId::seal`] made with this id (`None` for garbage).
    pub(crate) fn unseal(&self, sealed: &[u8]) -> Option<SessionId> {
        let mut secret = [0u8; ID_BYTES - FAMILY_BYTES];
        if B64.decode_slice(sealed, &mut secret).ok()? != secret.len() {
            return None;
        }
        let pad = self.pad();
        let mut bytes = self.0;
        for (i, b) in secret.iter().enumerate() {
            bytes[FAMILY_BYTES + i] = b ^ pad[i];
        }
        Some(SessionId(bytes))
    }

    fn pad(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"redlayer-session-renewal\0");
        hasher.update(self.0);
        hasher.finalize().into()
    }

    /// Parses an id sent by a client; anything but exactly 64 base64url characters is refused.
    pub(crate) fn parse(raw: &[u8]) -> Option<Self> {
        if raw.len() != ID_LEN || !raw.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_') {
            return None;
        }
        let mut bytes = [0u8; ID_BYTES];
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(raw, &mut bytes) {
            Ok(ID_BYTES) => Some(SessionId(bytes)),
            _ => None,
        }
    }

    /// The id as sent to clients.
    pub(crate) fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The Redis key of this session: `{prefix}:sess:{#sha256(family)}:sha256(id)`.
    /// Neither part can be turned back into the id.
    ///
    /// That is `keys.key_with(KIND, &KeyPart::hashed(family), &digest_b64(id))`,
    /// written into one buffer (it is built on every request that uses a session).
    pub(crate) fn store_key(&self, keys: &KeyBuilder) -> String {
        let prefix = keys.prefix();
        let mut key = String::with_capacity(prefix.len() + KIND.len() + 2 * DIGEST_B64_LEN + 7);
        key.push_str(prefix);
        key.push(':');
        key.push_str(KIND);
        key.push_str(":{#");
        B64.encode_string(Sha256::digest(&self.0[..FAMILY_BYTES]), &mut key);
        key.push_str("}:");
        B64.encode_string(Sha256::digest(self.0), &mut key);
        key
    }
}

/// The family part of a session key (`{#sha256(family)}`): every id that
/// [`SessionId::cycled`] made from one session shares it, so it names the
/// session (one browser's) across renewals and logins.
pub(crate) fn family_of(key: &str) -> Option<&str> {
    let start = key.rfind(":{#")? + 1;
    let len = key[start..].find('}')? + 1;
    Some(&key[start..start + len])
}

/// The Redis key of a user's index.
pub(crate) fn user_key(keys: &KeyBuilder, user: &str) -> String {
    keys.key(USER_KIND, &KeyPart::client(user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_garbage_is_refused() {
        let id = SessionId::generate().unwrap();
        let text = id.encode();
        assert_eq!(text.len(), ID_LEN);
        assert_eq!(SessionId::parse(text.as_bytes()), Some(id.clone()));
        assert_ne!(SessionId::generate().unwrap(), id);
        for bad in [&b""[..], b"abc", &[0xff; 64], &[b'a'; 65], &[b'='; 64], &[b'.'; 64]] {
            assert_eq!(SessionId::parse(bad), None);
        }
    }

    #[test]
    fn store_keys_hold_no_id_and_cycled_ids_share_a_slot() {
        let keys = KeyBuilder::default();
        let id = SessionId::generate().unwrap();
        let next = id.cycled().unwrap();
        assert_ne!(id.encode(), next.encode());
        assert_ne!(id.store_key(&keys), next.store_key(&keys));
        assert!(!id.store_key(&keys).contains(&id.encode()));
        assert!(!id.store_key(&keys).contains(&id.encode()[..22]));
        assert_eq!(
            redlayer_core::keys::cluster_slot(&id.store_key(&keys)),
            redlayer_core::keys::cluster_slot(&next.store_key(&keys))
        );
        // The key is the one `KeyBuilder` builds from the two digests.
        let family = KeyPart::hashed(&id.0[..FAMILY_BYTES]);
        let expected = keys.key_with(KIND, &family, &redlayer_core::keys::digest_b64(&id.0));
        assert_eq!(id.store_key(&keys), expected);
        let prefixed = KeyBuilder::new("app-1").unwrap();
        let expected = prefixed.key_with(KIND, &family, &redlayer_core::keys::digest_b64(&id.0));
        assert_eq!(id.store_key(&prefixed), expected);
        // The secret part is fresh: 256 new bits.
        assert_ne!(id.0[FAMILY_BYTES..], next.0[FAMILY_BYTES..]);
        // One family across cycles, another for a new session.
        for keys in [keys, prefixed] {
            let key = id.store_key(&keys);
            let family = family_of(&key).unwrap();
            assert!(family.starts_with("{#") && family.ends_with('}'), "{family}");
            assert_eq!(Some(family), family_of(&next.store_key(&keys)));
            assert_ne!(Some(family), family_of(&SessionId::generate().unwrap().store_key(&keys)));
        }
    }

    #[test]
    fn a_sealed_id_opens_only_with_the_id_that_sealed_it() {
        let id = SessionId::generate().unwrap();
        let next = id.cycled().unwrap();
        let sealed = id.seal(&next);
        assert_eq!(id.unseal(sealed.as_bytes()), Some(next.clone()));
        assert!(!sealed.contains(&next.encode()[22..]), "the secret is not stored as it is");
        let other = id.cycled().unwrap();
        assert_ne!(other.unseal(sealed.as_bytes()), Some(next));
        assert_eq!(id.unseal(b"garbage"), None);
        assert_eq!(id.unseal(&[b'A'; 40]), None);
    }
}
