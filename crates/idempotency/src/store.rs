//! [`Store`]: where idempotency records and their in-flight leases live.

use std::{
    fmt,
    sync::{Arc, LazyLock},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use redlayer_core::{
    Error, KeyPart, Redis, Result,
    memory::{ExpiringMap, Update},
};
use redlayer_lock::Locks;

static BEGIN: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("scripts/begin.lua")));
static PEEK: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("scripts/peek.lua")));
static COMPLETE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("scripts/complete.lua")));
static ABANDON: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("scripts/abandon.lua")));

/// The key kind of idempotency records: `{prefix}:idem:{{digest}}`.
pub const KIND: &str = "idem";

/// The most header lines a stored response keeps: a response with more is
/// not stored (a retry runs the handler again), and a record holding more
/// (not one of ours) is a decode error, not a header map past http's limit.
pub(crate) const MAX_STORED_HEADERS: usize = 1024;

/// A stored response: what a retry gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The status code.
    pub status: StatusCode,
    /// The headers (hop-by-hop headers and `content-length` left out).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The whole body.
    pub body: Bytes,
}

impl StoredResponse {
    pub(crate) fn encode_headers(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in &self.headers {
            out.extend_from_slice(&(name.as_str().len() as u32).to_be_bytes());
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    fn decode(status: &[u8], headers: &[u8], body: Vec<u8>) -> Result<Self> {
        let bad = |what: &str| Error::Decode(format!("idempotency record: {what}"));
        let status = std::str::from_utf8(status)
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| bad("status"))?;
        let mut list = Vec::new();
        let mut rest = headers;
        let take = |rest: &mut &[u8]| -> Option<Vec<u8>> {
            let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let value = rest.get(4..4 + len)?.to_vec();
            *rest = &rest[4 + len..];
            Some(value)
        };
        while !rest.is_empty() {
            if list.len() == MAX_STORED_HEADERS {
                return Err(bad("too many headers"));
            }
            let name = take(&mut rest).and_then(|n| HeaderName::from_bytes(&n).ok()).ok_or_else(|| bad("header"))?;
            let value = take(&mut rest).and_then(|v| HeaderValue::from_bytes(&v).ok()).ok_or_else(|| bad("header"))?;
            list.push((name, value));
        }
        Ok(StoredResponse { status, headers: list, body: Bytes::from(body) })
    }
}

/// What the holder of the lease learns when it opens the record.
#[derive(Debug)]
pub(crate) enum Begin {
    Run,
    Replay(StoredResponse),
    Mismatch,
}

/// What a request learns when the lease is held by another.
#[derive(Debug)]
pub(crate) enum Peek {
    Busy,
    Replay(StoredResponse),
    Mismatch,
}

#[derive(Debug, Clone)]
struct MemRecord {
    fingerprint: String,
    fence: u64,
    done: Option<StoredResponse>,
}

pub use redlayer_core::memory::DEFAULT_MEMORY_BUDGET;

impl MemRecord {
    /// About the memory it holds (its key, a 43-byte digest, and map slots
    /// counted as a fixed 128), for the memory store's budget.
    fn weight(&self) -> usize {
        let stored = self.done.as_ref().map_or(0, |done| {
            let headers: usize = done.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum();
            headers + done.body.len()
        });
        128 + self.fingerprint.len() + stored
    }
}

#[derive(Clone)]
enum Records {
    Redis(Redis),
    Memory(Arc<ExpiringMap<String, MemRecord>>),
}

/// The idempotency store: records (Redis hashes, or memory) and their
/// in-flight leases ([`redlayer_lock`] locks on the same backend).
#[derive(Clone)]
pub struct Store {
    pub(crate) locks: Locks,
    records: Records,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("locks", &self.locks).finish_non_exhaustive()
    }
}

/// `[kind, a, b, c]` as returned by the scripts.
type Answer = Vec<Vec<u8>>;

fn from_answer(mut answer: Answer) -> Result<Option<std::result::Result<StoredResponse, bool>>> {
    // None: run/busy; Some(Ok): replay; Some(Err(_)): mismatch
    match answer.first().map(Vec::as_slice) {
        Some(b"run") | Some(b"busy") => Ok(None),
        Some(b"mismatch") => Ok(Some(Err(true))),
        Some(b"done") if answer.len() == 4 => {
            let body = answer.pop().unwrap_or_default();
            Ok(Some(Ok(StoredResponse::decode(&answer[1], &answer[2], body)?)))
        }
        _ => Err(Error::Decode("unexpected idempotency script answer".into())),
    }
}

impl Store {
    /// Records and leases in Redis (standalone or cluster), shared by every instance.
    pub fn redis(redis: Redis) -> Self {
        Store { locks: Locks::redis(redis.clone()), records: Records::Redis(redis) }
    }

    /// Records and leases in this process only, with the same semantics,
    /// holding at most [`DEFAULT_MEMORY_BUDGET`] bytes of records.
    pub fn memory() -> Self {
        Self::memory_with_budget(DEFAULT_MEMORY_BUDGET)
    }

    /// Records in this process's memory, about `max_bytes` of them (stored
    /// responses, fingerprints, keys). Past it, expired records are dropped
    /// first, then those closest to expiry, as Redis does under `maxmemory`
    /// with `volatile-ttl`: a retry whose record was dropped runs the handler
    /// again, so size the budget for the retention you promise. A response
    /// larger than a sixteenth of the budget is not kept for replay (a
    /// warning says so): its record stays, so the key still refuses another
    /// request (422), and a retry runs the handler again.
    pub fn memory_with_budget(max_bytes: usize) -> Self {
        let records = ExpiringMap::new().weighed(max_bytes, MemRecord::weight);
        Store { locks: Locks::memory(), records: Records::Memory(Arc::new(records)) }
    }

    /// About the memory the memory store's records hold, in bytes (`None` for
    /// Redis, whose `INFO memory` tells).
    pub fn memory_used(&self) -> Option<usize> {
        match &self.records {
            Records::Memory(map) => Some(map.weight()),
            Records::Redis(_) => None,
        }
    }

    /// The record key of a digest.
    fn key(&self, id: &str) -> String {
        match &self.records {
            Records::Redis(redis) => redis.keys().key(KIND, &KeyPart::client(id)),
            Records::Memory(_) => id.to_owned(),
        }
    }

    pub(crate) async fn begin(&self, id: &str, fingerprint: &str, fence: u64, retention: Duration) -> Result<Begin> {
        let key = self.key(id);
        match &self.records {
            Records::Redis(redis) => {
                let mut conn = redis.connection().await?;
                let answer: Answer = BEGIN
                    .key(&key)
                    .arg(fingerprint)
                    .arg(fence)
                    .arg(redlayer_core::expiry::expiry_ms(retention))
                    .invoke_async(&mut conn)
                    .await?;
                Ok(match from_answer(answer)? {
                    None => Begin::Run,
                    Some(Ok(stored)) => Begin::Replay(stored),
                    Some(Err(_)) => Begin::Mismatch,
                })
            }
            Records::Memory(map) => Ok(map.update(key, |rec, _| match rec {
                Some(rec) if rec.fingerprint != fingerprint => (Update::Keep, Begin::Mismatch),
                Some(MemRecord { done: Some(stored), .. }) => (Update::Keep, Begin::Replay(stored.clone())),
                _ => {
                    let rec = MemRecord { fingerprint: fingerprint.to_owned(), fence, done: None };
                    (Update::Set(rec, Some(retention)), Begin::Run)
                }
            })),
        }
    }

    pub(crate) async fn peek(&self, id: &str, fingerprint: &str) -> Result<Peek> {
        let key = self.key(id);
        match &self.records {
            Records::Redis(redis) => {
                let mut conn = redis.connection().await?;
                let answer: Answer = PEEK.key(&key).arg(fingerprint).invoke_async(&mut conn).await?;
                Ok(match from_answer(answer)? {
                    None => Peek::Busy,
                    Some(Ok(stored)) => Peek::Replay(stored),
                    Some(Err(_)) => Peek::Mismatch,
                })
            }
            Records::Memory(map) => Ok(match map.get(&key) {
                None => Peek::Busy,
                Some(rec) if rec.fingerprint != fingerprint => Peek::Mismatch,
                Some(MemRecord { done: Some(stored), .. }) => Peek::Replay(stored),
                Some(_) => Peek::Busy,
            }),
        }
    }

    pub(crate) async fn complete(
        &self,
        id: &str,
        fence: u64,
        stored: &StoredResponse,
        retention: Duration,
    ) -> Result<bool> {
        let key = self.key(id);
        match &self.records {
            Records::Redis(redis) => {
                let mut conn = redis.connection().await?;
                let n: i64 = COMPLETE
                    .key(&key)
                    .arg(fence)
                    .arg(stored.status.as_u16())
                    .arg(stored.encode_headers())
                    .arg(stored.body.as_ref())
                    .arg(redlayer_core::expiry::expiry_ms(retention))
                    .invoke_async(&mut conn)
                    .await?;
                Ok(n == 1)
            }
            Records::Memory(map) => {
                let limit = map.max_entry_weight().unwrap_or(usize::MAX);
                map.update(key, |rec, _| match rec {
                    Some(rec) if rec.fence == fence => {
                        let running = rec.done.replace(stored.clone());
                        if MemRecord::weight(rec) > limit {
                            // The map would drop the record whole: it stays running
                            // (a retry runs the handler again), and the caller is told.
                            rec.done = running;
                            return (
                                Update::Keep,
                                Err(redlayer_core::Error::InvalidInput(
                                    "the response is larger than the memory store keeps of one record \
                                     (see Store::memory_with_budget)"
                                        .into(),
                                )),
                            );
                        }
                        (Update::KeepWithTtl(Some(retention)), Ok(true))
                    }
                    _ => (Update::Keep, Ok(false)),
                })
            }
        }
    }

    pub(crate) async fn abandon(&self, id: &str, fence: u64) -> Result<bool> {
        let key = self.key(id);
        match &self.records {
            Records::Redis(redis) => {
                let mut conn = redis.connection().await?;
                let n: i64 = ABANDON.key(&key).arg(fence).invoke_async(&mut conn).await?;
                Ok(n == 1)
            }
            Records::Memory(map) => Ok(map.update(key, |rec, _| match rec {
                Some(rec) if rec.fence == fence && rec.done.is_none() => (Update::Remove, true),
                _ => (Update::Keep, false),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_responses_round_trip() {
        let stored = StoredResponse {
            status: StatusCode::CREATED,
            headers: vec![
                (HeaderName::from_static("content-type"), HeaderValue::from_static("application/json")),
                (HeaderName::from_static("x-bin"), HeaderValue::from_bytes(b"\xff\tabc").unwrap()),
            ],
            body: Bytes::from_static(b"{\"id\":1}"),
        };
        let decoded = StoredResponse::decode(b"201", &stored.encode_headers(), stored.body.to_vec()).unwrap();
        assert_eq!(decoded, stored);
        assert!(StoredResponse::decode(b"201", b"\x00\x00\x00\x09abc", vec![]).is_err(), "truncated");
        assert!(StoredResponse::decode(b"xyz", b"", vec![]).is_err());
        // A record with more header lines than a header map holds (not one
        // of ours) is a decode error: replaying it would panic in http.
        let many = StoredResponse {
            headers: (0..30_000)
                .map(|i| (HeaderName::try_from(format!("x-h{i}")).unwrap(), HeaderValue::from_static("v")))
                .collect(),
            ..stored
        };
        assert!(StoredResponse::decode(b"201", &many.encode_headers(), vec![]).is_err());
    }
}
