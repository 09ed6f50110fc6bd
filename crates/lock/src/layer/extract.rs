//! [`ExtractKey`]: which lock a request needs.

use http::{HeaderName, Request};

/// Picks the lock key of a request (`None`: no lock, pass through). Any
/// `Fn(&Request<B>) -> Option<String>` is one. The key goes through
/// [`KeyPart::client`](redlayer_core::KeyPart::client), so it may be anything.
pub trait ExtractKey<B> {
    /// The key of this request.
    fn extract(&self, request: &Request<B>) -> Option<String>;
}

impl<B, F> ExtractKey<B> for F
where
    F: Fn(&Request<B>) -> Option<String>,
{
    fn extract(&self, request: &Request<B>) -> Option<String> {
        self(request)
    }
}

/// The request path: one request per resource at a time. The path is
/// normalized first (percent-escapes decoded, empty and `.` segments
/// dropped, `..` applied, no trailing slash), so that the spellings a router
/// sends to one handler (`/accounts/42`, `/accounts/%34%32`,
/// `//accounts/./42/`) take one lock. (Some paths that are different
/// resources may share a lock then, e.g. `/a%2Fb` and `/a/b`: that only makes
/// them wait for each other.)
#[derive(Debug, Clone, Copy, Default)]
pub struct PathKey;

impl<B> ExtractKey<B> for PathKey {
    fn extract(&self, request: &Request<B>) -> Option<String> {
        Some(redlayer_core::keys::normalized_path(request.uri().path()))
    }
}

/// A header's value (requests without it pass through).
#[derive(Debug, Clone)]
pub struct HeaderKey(HeaderName);

impl HeaderKey {
    /// The key is the value of `name`.
    pub fn new(name: HeaderName) -> Self {
        HeaderKey(name)
    }
}

impl<B> ExtractKey<B> for HeaderKey {
    fn extract(&self, request: &Request<B>) -> Option<String> {
        request.headers().get(&self.0).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}
