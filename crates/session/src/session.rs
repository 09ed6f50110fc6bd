//! [`Session`]: the per-request handle that handlers use.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    SessionError,
    id::SessionId,
    layer::Shared,
    store::{CycleOutcome, LoadOutcome, Loaded, Moved, Renewal, SessionInfo, Store, WriteOp, WriteOutcome},
    transport::IdAction,
};

/// Longest user id accepted by [`Session::set_user`].
pub const MAX_USER_LEN: usize = 512;
/// Longest field name accepted.
pub const MAX_KEY_LEN: usize = 256;
/// Tries at a fresh id when one collides (never seen in practice: 384 random bits).
const ID_ATTEMPTS: usize = 3;
/// Renewal aliases followed in a row, at most (one, unless the session was
/// renewed again within the grace period).
const MAX_HOPS: usize = 4;

/// The session of one request, put in the request's extensions by
/// [`SessionLayer`](crate::SessionLayer) (and an axum extractor with the
/// `axum` feature). Cheap to clone; all clones are the same session.
///
/// - **Lazy**: nothing is sent to the store until a method needs it; a
///   handler that never calls one costs no store command.
/// - **Reads** ([`get`](Session::get), [`user`](Session::user)) load the whole
///   session once per request (one round trip, which also refreshes the idle
///   timeout, at most once per touch interval).
/// - **Writes** ([`insert`](Session::insert), [`remove`](Session::remove),
///   [`clear`](Session::clear), [`set_user`](Session::set_user)) are buffered
///   and written after the handler returns, as one atomic script that writes
///   *only the changed fields*: two concurrent requests changing different
///   keys both keep their writes. [`save`](Session::save) writes them now.
/// - [`increment`](Session::increment) is applied in the store at once, so
///   concurrent increments never lose one.
/// - A session is created (with a fresh id) on the first write; an id the
///   store does not know is never adopted.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    state: tokio::sync::Mutex<State>,
    /// Something must happen after the handler (a write, or an id to send or remove).
    needs_finish: AtomicBool,
    /// The handler used the session (any method): the response depends on the
    /// request's session id, so the layer adds `Vary` for it.
    accessed: AtomicBool,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// The client sent this id; the store has not been asked yet.
    Incoming,
    /// The session exists in the store (loaded, created or written in this request).
    Live,
    /// No session.
    Absent,
}

struct State {
    id: Option<SessionId>,
    status: Status,
    cache: Option<Loaded>,
    pending: Pending,
    send_id: bool,
    remove_id: bool,
    /// The loaded session's id is due for renewal (see `SessionLayer::renew_id`).
    renew_due: bool,
}

#[derive(Default, Clone)]
struct Pending {
    clear: bool,
    deletes: BTreeSet<String>,
    sets: BTreeMap<String, String>,
    user: Option<String>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.clear && self.deletes.is_empty() && self.sets.is_empty() && self.user.is_none()
    }

    fn apply_to(&self, loaded: &mut Loaded) {
        if self.clear {
            loaded.fields.clear();
        }
        for name in &self.deletes {
            loaded.fields.remove(name);
        }
        for (name, value) in &self.sets {
            loaded.fields.insert(name.clone(), value.clone());
        }
        if let Some(user) = &self.user {
            loaded.user = Some(user.clone());
        }
    }
}

/// What the layer does once the handler is done.
pub(crate) struct Finish {
    pub(crate) action: Option<IdAction>,
    pub(crate) error: Option<SessionError>,
}

fn check_key(key: &str) -> Result<(), SessionError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(SessionError::Store(redlayer_core::Error::InvalidInput(format!(
            "session keys are 1..={MAX_KEY_LEN} bytes"
        ))));
    }
    Ok(())
}

fn decode<T: DeserializeOwned>(key: &str, raw: &str) -> Result<T, SessionError> {
    serde_json::from_str(raw).map_err(|source| SessionError::Decode { key: key.to_owned(), source })
}

impl Session {
    pub(crate) fn new(shared: Arc<Shared>, id: Option<SessionId>) -> Self {
        let status = if id.is_some() { Status::Incoming } else { Status::Absent };
        Session {
            inner: Arc::new(Inner {
                shared,
                state: tokio::sync::Mutex::new(State {
                    id,
                    status,
                    cache: None,
                    pending: Pending::default(),
                    send_id: false,
                    remove_id: false,
                    renew_due: false,
                }),
                needs_finish: AtomicBool::new(false),
                accessed: AtomicBool::new(false),
            }),
        }
    }

    fn store(&self) -> &Store {
        &self.inner.shared.store
    }

    fn mark(&self) {
        self.inner.needs_finish.store(true, Ordering::Relaxed);
    }

    pub(crate) fn needs_finish(&self) -> bool {
        self.inner.needs_finish.load(Ordering::Relaxed)
    }

    /// True once a handler called any method of this session: its response
    /// may depend on who sent it (see the layer's `Vary`).
    pub fn is_accessed(&self) -> bool {
        self.inner.accessed.load(Ordering::Relaxed)
    }

    /// The state, for a handler's call: marks the session as accessed.
    async fn state(&self) -> tokio::sync::MutexGuard<'_, State> {
        self.inner.accessed.store(true, Ordering::Relaxed);
        self.inner.state.lock().await
    }

    async fn ensure_loaded(&self, st: &mut State) -> Result<(), SessionError> {
        if st.cache.is_some() {
            return Ok(());
        }
        let cfg = self.inner.shared.timeouts;
        let mut hops = 0;
        while let (Status::Incoming | Status::Live, Some(id)) = (st.status, &st.id) {
            let key = self.store().session_key(id);
            match self.store().load(&key, cfg.idle_ms, cfg.touch_ms).await? {
                LoadOutcome::Found(loaded) => {
                    st.status = Status::Live;
                    if cfg.renew.is_some_and(|r| loaded.id_age_ms >= r.every_ms as i64) {
                        st.renew_due = true;
                        self.mark();
                    }
                    st.cache = Some(loaded);
                    return Ok(());
                }
                LoadOutcome::Moved(moved) if hops < MAX_HOPS && self.follow(st, &moved) => hops += 1,
                LoadOutcome::Moved(_) | LoadOutcome::Missing => {
                    let was_live = st.status == Status::Live;
                    self.forget(st);
                    if was_live {
                        // Ended during this request: its changes die with it.
                        st.pending = Pending::default();
                        return Err(SessionError::Expired);
                    }
                    return Ok(());
                }
            }
        }
        st.cache = Some(Loaded::default());
        Ok(())
    }

    /// Follows the alias a renewal left under this session's id (see
    /// [`SessionLayer::renew_id`](crate::SessionLayer::renew_id)): the new id,
    /// opened with the old one and checked against the new key, replaces it
    /// and is sent to the client. False when the alias does not open.
    fn follow(&self, st: &mut State, moved: &Moved) -> bool {
        let Some(old) = &st.id else { return false };
        match old.unseal(moved.sealed.as_bytes()) {
            Some(new) if self.store().session_key(&new) == moved.key => {
                st.id = Some(new);
                st.send_id = true;
                st.remove_id = false;
                self.mark();
                true
            }
            _ => false,
        }
    }

    /// Renames the loaded session at `old_key` to `new_key` (see
    /// [`Store::cycle`]) so that its user's index never misses it: the new key
    /// is indexed before the rename and the old one dropped after, so a
    /// failure in between leaves at most an entry for a key that does not
    /// exist (dropped when the index is listed), never a live session that
    /// "log out everywhere" cannot find.
    async fn cycle_indexed(
        &self,
        st: &State,
        old_key: &str,
        new_key: &str,
        renewal: Option<&Renewal>,
    ) -> Result<CycleOutcome, SessionError> {
        let timeouts = &self.inner.shared.timeouts;
        let absolute_ms = timeouts.absolute_ms;
        let known = st.cache.as_ref().and_then(|c| Some((c.user.clone()?, c.created_ms)));
        if let Some((user, created_ms)) = &known {
            self.store().index_add(user, new_key, *created_ms, absolute_ms).await?;
        }
        let outcome = self.store().cycle(old_key, new_key, timeouts.idle_ms, renewal).await?;
        let known_user = known.as_ref().map(|(user, _)| user.as_str());
        match &outcome {
            CycleOutcome::Done { user: Some(user), created_ms } => {
                // Again after the rename, with the stored creation time: a
                // prune of the index (or a listing) in between drops an entry
                // whose key did not exist yet.
                self.store().index_add(user, new_key, *created_ms, absolute_ms).await?;
                self.store().index_remove(user, old_key).await?;
                if let Some(known) = known_user.filter(|k| *k != user) {
                    self.store().index_remove(known, new_key).await?;
                }
            }
            // Not renamed (or no user any more): the entry made in advance goes.
            _ => {
                if let Some(known) = known_user {
                    self.store().index_remove(known, new_key).await?;
                }
            }
        }
        Ok(outcome)
    }

    /// No session any more (nothing pending survives).
    ///
    /// The client's id is *not* removed here: a request that still carries
    /// an id from before a concurrent login (`cycle_id`) would otherwise
    /// answer with a removal cookie that can arrive after, and erase, the
    /// new id. An unknown id costs a lookup and is never adopted; only
    /// [`Session::destroy`] removes the id from the client.
    fn forget(&self, st: &mut State) {
        st.id = None;
        st.status = Status::Absent;
        st.cache = Some(Loaded::default());
        st.send_id = false;
    }

    /// The value under `key`, decoded from JSON; `None` when absent (or no session).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let mut st = self.state().await;
        if let Some(raw) = st.pending.sets.get(key) {
            return decode(key, raw).map(Some);
        }
        if st.pending.clear || st.pending.deletes.contains(key) {
            return Ok(None);
        }
        self.ensure_loaded(&mut st).await?;
        match st.cache.as_ref().and_then(|c| c.fields.get(key)) {
            Some(raw) => decode(key, raw).map(Some),
            None => Ok(None),
        }
    }

    /// Sets `key` to `value` (as JSON). Written after the handler, with the other changes.
    pub async fn insert<T: Serialize>(&self, key: &str, value: T) -> Result<(), SessionError> {
        check_key(key)?;
        let json = serde_json::to_string(&value).map_err(SessionError::Encode)?;
        let mut st = self.state().await;
        st.pending.deletes.remove(key);
        st.pending.sets.insert(key.to_owned(), json);
        self.mark();
        Ok(())
    }

    /// Removes `key`. Written after the handler, with the other changes.
    pub async fn remove(&self, key: &str) {
        if check_key(key).is_err() {
            return; // `insert` refuses such keys: there is nothing to remove.
        }
        let mut st = self.state().await;
        st.pending.sets.remove(key);
        st.pending.deletes.insert(key.to_owned());
        self.mark();
    }

    /// Removes every value (the session, its id and its user stay). Atomic in the store.
    pub async fn clear(&self) {
        let mut st = self.state().await;
        let user = st.pending.user.take();
        st.pending = Pending { clear: true, user, ..Pending::default() };
        self.mark();
    }

    /// Adds `by` to the integer under `key` (absent counts as 0) in the store,
    /// atomically, and returns the new value. Changes buffered so far are
    /// written in the same script. Creates the session if there is none.
    pub async fn increment(&self, key: &str, by: i64) -> Result<i64, SessionError> {
        check_key(key)?;
        let mut st = self.state().await;
        let results = self.write_locked(&mut st, vec![(key.to_owned(), by)]).await?;
        results.first().copied().ok_or_else(|| SessionError::NotAnInteger(key.to_owned()))
    }

    /// Writes the buffered changes now (the layer does it after the handler
    /// otherwise). Use it to learn about a failure before answering, e.g.
    /// [`SessionError::Expired`] when the session ended during the request.
    pub async fn save(&self) -> Result<(), SessionError> {
        let mut st = self.state().await;
        if st.pending.is_empty() {
            return Ok(());
        }
        self.write_locked(&mut st, Vec::new()).await.map(drop)
    }

    /// The user attached to this session, if any.
    pub async fn user(&self) -> Result<Option<String>, SessionError> {
        let mut st = self.state().await;
        if let Some(user) = &st.pending.user {
            return Ok(Some(user.clone()));
        }
        self.ensure_loaded(&mut st).await?;
        Ok(st.cache.as_ref().and_then(|c| c.user.clone()))
    }

    /// Attaches a user to this session and adds the session to the user's
    /// index (see [`Session::sessions`], [`Store::revoke_all`]). Written after
    /// the handler. Call [`Session::cycle_id`] on login as well.
    pub async fn set_user(&self, user: &str) -> Result<(), SessionError> {
        if user.is_empty() || user.len() > MAX_USER_LEN {
            return Err(SessionError::Store(redlayer_core::Error::InvalidInput(format!(
                "user ids are 1..={MAX_USER_LEN} bytes"
            ))));
        }
        let mut st = self.state().await;
        st.pending.user = Some(user.to_owned());
        self.mark();
        Ok(())
    }

    /// Gives the session a new id, at once and atomically: the data stays,
    /// the old id stops working immediately (defence against session
    /// fixation: call it on login and on any privilege change). Without a
    /// stored session it does nothing (the first write issues a fresh id anyway).
    pub async fn cycle_id(&self) -> Result<(), SessionError> {
        let mut st = self.state().await;
        // Its user, to keep the index right (see `cycle_indexed`).
        self.ensure_loaded(&mut st).await?;
        for _ in 0..ID_ATTEMPTS + MAX_HOPS {
            let (Some(old), Status::Incoming | Status::Live) = (st.id.clone(), st.status) else { return Ok(()) };
            let old_key = self.store().session_key(&old);
            let new = old.cycled()?;
            let new_key = self.store().session_key(&new);
            match self.cycle_indexed(&st, &old_key, &new_key, None).await? {
                CycleOutcome::Done { .. } => {
                    st.id = Some(new);
                    st.status = Status::Live;
                    st.send_id = true;
                    st.remove_id = false;
                    // A fresh id: no renewal due for it.
                    st.renew_due = false;
                    self.mark();
                    return Ok(());
                }
                // Renewed meanwhile: cycle the new id.
                CycleOutcome::Moved(moved) if self.follow(&mut st, &moved) => {}
                CycleOutcome::Gone | CycleOutcome::Moved(_) => {
                    let was_live = st.status == Status::Live;
                    self.forget(&mut st);
                    if was_live {
                        st.pending = Pending::default();
                        return Err(SessionError::Expired);
                    }
                    return Ok(());
                }
                CycleOutcome::Collision | CycleOutcome::NotDue => {}
            }
        }
        Err(SessionError::Rng("no free session id after several attempts (id collisions, or renewals in a row)".into()))
    }

    /// Renews the id of a session loaded with an id past the renewal
    /// interval: the old id stays an alias for the grace period. A
    /// concurrent request that renewed it first wins, and its id is taken.
    async fn renew(&self, st: &mut State) -> Result<(), SessionError> {
        let Some(renew) = self.inner.shared.timeouts.renew else { return Ok(()) };
        // Its user, to keep the index right (see `cycle_indexed`); a renewal
        // due after a write without a read costs this one load.
        self.ensure_loaded(st).await?;
        for _ in 0..ID_ATTEMPTS {
            let (Some(old), Status::Live) = (st.id.clone(), st.status) else { return Ok(()) };
            let new = old.cycled()?;
            let renewal = Renewal { grace_ms: renew.grace_ms, sealed: old.seal(&new), min_age_ms: renew.every_ms };
            let (old_key, new_key) = (self.store().session_key(&old), self.store().session_key(&new));
            match self.cycle_indexed(st, &old_key, &new_key, Some(&renewal)).await? {
                CycleOutcome::Done { .. } => {
                    st.id = Some(new);
                    st.send_id = true;
                    st.remove_id = false;
                    return Ok(());
                }
                CycleOutcome::Moved(moved) => {
                    self.follow(st, &moved);
                    return Ok(());
                }
                CycleOutcome::Gone | CycleOutcome::NotDue => return Ok(()),
                CycleOutcome::Collision => {}
            }
        }
        Ok(())
    }

    /// Ends the session now: deleted from the store and from its user's
    /// index, the client's id removed. Later writes in this request start a new session.
    pub async fn destroy(&self) -> Result<(), SessionError> {
        let mut st = self.state().await;
        if let (Some(id), Status::Incoming | Status::Live) = (&st.id, st.status) {
            // Through the aliases of renewals too: a logout with an old id ends the session.
            let ended = self.store().destroy(&self.store().session_key(id)).await?;
            if let Some(user) = ended.user {
                self.store().index_remove(&user, &ended.key).await?;
            }
        }
        let had_id = st.id.is_some() || st.send_id;
        st.pending = Pending::default();
        self.forget(&mut st);
        st.remove_id = had_id;
        self.mark();
        Ok(())
    }

    /// The live sessions of this session's user (empty without a user), this one marked `current`.
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>, SessionError> {
        let (user, current) = self.user_and_key().await?;
        let Some(user) = user else { return Ok(Vec::new()) };
        let mut list = self.store().sessions_of(&user).await?;
        for info in &mut list {
            info.current = current.as_deref() == Some(info.session.as_str());
        }
        Ok(list)
    }

    /// Ends every other session of this session's user; returns how many were live.
    pub async fn revoke_others(&self) -> Result<usize, SessionError> {
        let (user, current) = self.user_and_key().await?;
        let Some(user) = user else { return Ok(0) };
        self.store().revoke_all_except(&user, current.as_deref()).await
    }

    /// "Log out everywhere": ends every session of this session's user, this
    /// one included. Returns how many sessions ended.
    pub async fn log_out_everywhere(&self) -> Result<usize, SessionError> {
        let (user, _) = self.user_and_key().await?;
        let ended = match user {
            Some(user) => self.store().revoke_all(&user).await?,
            None => 0,
        };
        self.destroy().await?;
        Ok(ended)
    }

    async fn user_and_key(&self) -> Result<(Option<String>, Option<String>), SessionError> {
        let mut st = self.state().await;
        self.ensure_loaded(&mut st).await?;
        let user = st.pending.user.clone().or_else(|| st.cache.as_ref().and_then(|c| c.user.clone()));
        let key = match (&st.id, st.status) {
            (Some(id), Status::Live) => Some(self.store().session_key(id)),
            _ => None,
        };
        Ok((user, key))
    }

    /// Writes the pending changes and `increments` in one script.
    async fn write_locked(&self, st: &mut State, increments: Vec<(String, i64)>) -> Result<Vec<i64>, SessionError> {
        // A copy: the changes stay pending until they are written, so that a
        // call dropped midway (a handler's timeout around `save`) loses none,
        // and `finish` writes them. (If the dropped call had created the
        // session already, `finish` creates another: the first, unknown to
        // the client, ends at its idle timeout.)
        let pending = st.pending.clone();
        let timeouts = &self.inner.shared.timeouts;
        let mut op = WriteOp {
            create: false,
            idle_ms: timeouts.idle_ms,
            absolute_ms: timeouts.absolute_ms,
            touch_ms: timeouts.touch_ms,
            clear: pending.clear,
            user: pending.user.clone(),
            deletes: pending.deletes.iter().cloned().collect(),
            sets: pending.sets.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            increments,
        };
        for _ in 0..ID_ATTEMPTS + MAX_HOPS {
            let (id, create) = match (&st.id, st.status) {
                (Some(id), Status::Incoming | Status::Live) => (id.clone(), false),
                _ => match SessionId::generate() {
                    Ok(id) => (id, true),
                    Err(e) => return Err(e),
                },
            };
            op.create = create;
            let key = self.store().session_key(&id);
            // A new user is indexed before the write that records it, so that
            // no failure (or dropped request) in between leaves a logged-in
            // session that "log out everywhere" cannot find. Dropped again
            // when the write does not happen.
            let newly_indexed = match &op.user {
                Some(user) if st.cache.as_ref().and_then(|c| c.user.as_ref()) != Some(user) => {
                    let created_ms = st.cache.as_ref().map_or(0, |c| c.created_ms);
                    self.store().index_add(user, &key, created_ms, timeouts.absolute_ms).await?;
                    Some(user)
                }
                _ => None,
            };
            let written = self.store().write(&key, &op).await;
            if let Some(user) = newly_indexed
                && !matches!(written, Ok(WriteOutcome::Done { .. }))
            {
                let _ = self.store().index_remove(user, &key).await;
            }
            let outcome = written?;
            match outcome {
                WriteOutcome::Done { created_ms, id_age_ms, increments } => {
                    // The session changed hands (another user logged in on
                    // it): the previous user's index lets go of it, or that
                    // user could list it and end it.
                    let previous_user = newly_indexed.and(st.cache.as_ref().and_then(|c| c.user.clone()));
                    st.pending = Pending::default();
                    if timeouts.renew.is_some_and(|r| id_age_ms >= r.every_ms as i64) {
                        st.renew_due = true;
                        self.mark();
                    }
                    if create {
                        st.id = Some(id);
                        st.send_id = true;
                        st.remove_id = false;
                        self.mark();
                        if st.cache.is_none() {
                            st.cache = Some(Loaded::default());
                        }
                    }
                    st.status = Status::Live;
                    if let Some(cache) = st.cache.as_mut() {
                        pending.apply_to(cache);
                        for ((name, _), value) in op.increments.iter().zip(&increments) {
                            cache.fields.insert(name.clone(), value.to_string());
                        }
                    }
                    if let Some(user) = &op.user {
                        // Again with the stored creation time (and in case a
                        // prune dropped the early entry of a key not yet written).
                        self.reindex(user, &key, created_ms, timeouts.absolute_ms).await;
                    }
                    if let Some(previous) = previous_user
                        && let Err(error) = self.store().index_remove(&previous, &key).await
                    {
                        tracing::warn!(target: "redlayer", layer = "session", %error, "session's previous user index not updated");
                    }
                    return Ok(increments);
                }
                WriteOutcome::Collision => {}
                // Renewed by a concurrent request: write under the new id.
                WriteOutcome::Moved(moved) if self.follow(st, &moved) => {}
                // An id the store does not know (or an alias that does not
                // open: no session of this client's) is never adopted: start
                // a new session.
                WriteOutcome::Gone | WriteOutcome::Moved(_) if st.status == Status::Incoming => {
                    st.id = None;
                    st.status = Status::Absent;
                }
                WriteOutcome::Gone | WriteOutcome::Moved(_) => {
                    // Ended while this request ran: not recreated, reported.
                    st.pending = Pending::default();
                    self.forget(st);
                    return Err(SessionError::Expired);
                }
                WriteOutcome::NotInteger(name) => return Err(SessionError::NotAnInteger(name)),
            }
        }
        Err(SessionError::Rng("no free session id after several attempts (id collisions, or renewals in a row)".into()))
    }

    /// Indexes a written session again under its user. The write is done,
    /// so a failure is not reported as a lost write (the client would retry
    /// what already happened): it is logged and tried once more a second
    /// later, in the background. The index named the session before the
    /// write; this only repairs a prune that raced it.
    async fn reindex(&self, user: &str, key: &str, created_ms: i64, absolute_ms: u64) {
        let Err(error) = self.store().index_add(user, key, created_ms, absolute_ms).await else { return };
        tracing::warn!(target: "redlayer", layer = "session", %error, "session saved; its user index not updated, retrying");
        let (store, user, key) = (self.store().clone(), user.to_owned(), key.to_owned());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                if let Err(error) = store.index_add(&user, &key, created_ms, absolute_ms).await {
                    tracing::warn!(target: "redlayer", layer = "session", %error, "session user index not updated");
                }
            });
        }
    }

    /// Runs after the handler: writes what is pending, and says what to tell the client.
    pub(crate) async fn finish(&self) -> Finish {
        let mut st = self.inner.state.lock().await;
        let error = if st.pending.is_empty() { None } else { self.write_locked(&mut st, Vec::new()).await.err() };
        if std::mem::take(&mut st.renew_due)
            && error.is_none()
            && let Err(error) = self.renew(&mut st).await
        {
            // The session goes on under its current id; the next request tries again.
            tracing::warn!(target: "redlayer", layer = "session", %error, "session id renewal failed");
        }
        let action = match (&st.id, st.send_id, st.remove_id) {
            (Some(id), true, _) => Some(IdAction::Set(id.encode())),
            (_, _, true) => Some(IdAction::Remove),
            _ => None,
        };
        Finish { action, error }
    }
}
