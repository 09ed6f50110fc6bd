//! [`SessionLayer`]: configuration and the tower `Layer`.

use std::{sync::Arc, time::Duration};

use cookie::{Key, SameSite};
use http::HeaderName;
use tower_layer::Layer;

use crate::{
    SessionService, Store,
    store::millis,
    transport::{CookieConfig, Transport},
};

/// Default idle timeout: a session unused for this long ends.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(2 * 60 * 60);
/// Default absolute lifetime: a session ends this long after it was created, used or not.
pub const DEFAULT_ABSOLUTE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// What every service of one layer shares.
pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) transport: Transport,
    pub(crate) timeouts: Timeouts,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) idle_ms: u64,
    pub(crate) absolute_ms: u64,
    pub(crate) touch_ms: u64,
    pub(crate) renew: Option<Renew>,
}

/// Periodic id renewal (see [`SessionLayer::renew_id`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Renew {
    pub(crate) every_ms: u64,
    pub(crate) grace_ms: u64,
}

/// A tower layer that gives every request a lazy [`Session`](crate::Session).
///
/// Defaults (all safe): cookie `id` with `HttpOnly`, `Secure`, `SameSite=Lax`,
/// `Path=/`, a browser-session cookie; idle timeout 2 h, absolute lifetime
/// 24 h; the idle timeout refreshed at most once a minute per session.
///
/// A response whose handler used the session (any [`Session`](crate::Session)
/// method) gets `Vary: Cookie` (or the id header's name with
/// [`header`](SessionLayer::header) transport), joined to any `Vary` already
/// there, as Django does: a shared cache in front can then never serve one
/// user's personalised page to another. Responses of handlers that never
/// touched the session are left as they are.
///
/// ```
/// use std::time::Duration;
/// use redlayer_session::{SessionLayer, Store};
///
/// let layer = SessionLayer::new(Store::memory())
///     .idle_timeout(Duration::from_secs(30 * 60))
///     .absolute_timeout(Duration::from_secs(8 * 60 * 60))
///     .host_prefix(true);
/// # let _ = layer;
/// ```
#[derive(Clone)]
#[must_use]
pub struct SessionLayer {
    store: Store,
    cookie: CookieConfig,
    header: Option<HeaderName>,
    idle: Duration,
    absolute: Duration,
    touch: Option<Duration>,
    renew: Option<(Duration, Duration)>,
}

impl std::fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLayer")
            .field("store", &self.store)
            .field("idle", &self.idle)
            .field("absolute", &self.absolute)
            .finish_non_exhaustive()
    }
}

impl SessionLayer {
    /// A layer on this store (`Store::redis(handle)`, `Store::memory()`, or a
    /// [`Redis`](redlayer_core::Redis) handle directly).
    pub fn new(store: impl Into<Store>) -> Self {
        SessionLayer {
            store: store.into(),
            cookie: CookieConfig::default(),
            header: None,
            idle: DEFAULT_IDLE_TIMEOUT,
            absolute: DEFAULT_ABSOLUTE_TIMEOUT,
            touch: None,
            renew: None,
        }
    }

    /// The store, for per-user operations outside requests.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Idle timeout (rolling): a session not loaded or written for this long
    /// ends. Enforced by the store (key expiry), at least 1 s.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle.max(Duration::from_secs(1));
        self
    }

    /// Absolute lifetime: a session ends this long after creation however
    /// active it is (a cycled id keeps its creation time). At least 1 s.
    pub fn absolute_timeout(mut self, absolute: Duration) -> Self {
        self.absolute = absolute.max(Duration::from_secs(1));
        self
    }

    /// Minimum time between two refreshes of one session's idle timeout
    /// (default: a tenth of the idle timeout, at most 60 s). Reads within it
    /// cost no write, and writes leave the expiry (and the last-seen time
    /// of [`Store::sessions_of`](crate::Store::sessions_of)) as they are. The effective idle timeout lies between
    /// `idle - touch_interval` and `idle`.
    pub fn touch_interval(mut self, touch: Duration) -> Self {
        self.touch = Some(touch);
        self
    }

    /// Periodic id renewal (off by default), as OWASP's session cheat sheet
    /// advises: the first request that uses a session whose id is older than
    /// `every` (counted from its creation, [`Session::cycle_id`](crate::Session::cycle_id)
    /// or last renewal) gives it a new id, sent back like a cycled one. The data
    /// and timeouts stay. Unlike `cycle_id`, the old id keeps working for
    /// `grace` (at least 1 s): requests already on their way with it (a page's
    /// parallel requests, a second tab) still find the session, and are
    /// answered with the new id too. Only a holder of the old id can learn the
    /// new one (the store keeps it sealed with the old id). Two requests that
    /// renew at once end with one new id. A client that never reads the new id
    /// (a header-transport API client that ignores the response header) loses
    /// the session after `grace`. `every` is at least 1 s; `grace` at most
    /// `every` (so an old id leads to the session in at most one step).
    ///
    /// A renewal racing a login ([`Session::cycle_id`](crate::Session::cycle_id))
    /// in another request can answer with the renewed id after the login's
    /// answer; that id is dead (the login kills it, as it kills the id it
    /// replaces), so the browser is then logged out: a safe failure, made
    /// rare by a long `every`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redlayer_session::{SessionLayer, Store};
    ///
    /// let layer = SessionLayer::new(Store::memory())
    ///     .renew_id(Duration::from_secs(15 * 60), Duration::from_secs(30));
    /// # let _ = layer;
    /// ```
    pub fn renew_id(mut self, every: Duration, grace: Duration) -> Self {
        let every = every.max(Duration::from_secs(1));
        self.renew = Some((every, grace.max(Duration::from_secs(1)).min(every)));
        self
    }

    /// The cookie's name (default `id`; a generic name reveals nothing).
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie.name = name.into();
        self
    }

    /// Prefix the cookie name with `__Host-` (forces `Secure`, `Path=/`, no
    /// `Domain`, so no subdomain can set or shadow it).
    pub fn host_prefix(mut self, on: bool) -> Self {
        self.cookie.host_prefix = on;
        self
    }

    /// The `Secure` attribute (default on; turn off only for plain-HTTP
    /// development). Always on with `SameSite=None` or the `__Host-` prefix.
    pub fn secure(mut self, on: bool) -> Self {
        self.cookie.secure = on;
        self
    }

    /// The `SameSite` attribute (default `Lax`).
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.cookie.same_site = same_site;
        self
    }

    /// The cookie's `Path` (default `/`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.cookie.path = path.into();
        self
    }

    /// The cookie's `Domain` (default none: this host only).
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.cookie.domain = Some(domain.into());
        self
    }

    /// A persistent cookie (`Max-Age` = the absolute lifetime) instead of a
    /// browser-session cookie. Expiry is enforced by the store either way.
    pub fn persistent(mut self, on: bool) -> Self {
        self.cookie.max_age = on.then_some(self.absolute);
        self
    }

    /// Sign the cookie with this key (the `cookie` crate's HMAC-SHA256): a
    /// cookie that was not signed with it is ignored before any store call.
    pub fn signed(mut self, key: Key) -> Self {
        self.cookie.key = Some(key);
        self
    }

    /// Carry the id in this header (requests and responses) instead of a
    /// cookie: for API clients and gRPC (metadata key, e.g. `x-session-id`).
    /// A new id comes back in the same response header; an ended session as
    /// an empty value.
    ///
    /// # Panics
    ///
    /// On a name ending in `-bin`: gRPC treats such metadata as binary and
    /// base64-encodes it on the wire, so the id would never read back.
    pub fn header(mut self, name: HeaderName) -> Self {
        assert!(
            !name.as_str().ends_with("-bin"),
            "session header {name}: a `-bin` gRPC metadata key is binary (base64 on the wire); use a text key such as x-session-id"
        );
        self.header = Some(name);
        self
    }

    fn shared(&self) -> Arc<Shared> {
        let idle_ms = millis(self.idle);
        let touch = self.touch.unwrap_or_else(|| (self.idle / 10).min(Duration::from_secs(60)));
        let mut cookie = self.cookie.clone();
        if cookie.max_age.is_some() {
            cookie.max_age = Some(self.absolute);
        }
        Arc::new(Shared {
            store: self.store.clone(),
            transport: match &self.header {
                Some(name) => Transport::Header(name.clone()),
                None => Transport::Cookie(Arc::new(cookie)),
            },
            timeouts: Timeouts {
                idle_ms,
                absolute_ms: millis(self.absolute),
                touch_ms: millis(touch).min(idle_ms),
                renew: self.renew.map(|(every, grace)| Renew { every_ms: millis(every), grace_ms: millis(grace) }),
            },
        })
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService::new(inner, self.shared())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "-bin")]
    fn a_binary_grpc_metadata_key_is_refused_at_configuration() {
        let _ = SessionLayer::new(Store::memory()).header(HeaderName::from_static("x-session-bin"));
    }
}
