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
        Some(normalized_path(request.uri().path()))
    }
}

fn normalized_path(raw: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::normalized_path;

    #[test]
    fn spellings_of_one_path_are_one_key() {
        for spelling in [
            "/accounts/42/withdraw",
            "/accounts/%34%32/withdraw",
            "//accounts/./42/withdraw/",
            "/x/../accounts/42/withdraw",
        ] {
            assert_eq!(normalized_path(spelling), "/accounts/42/withdraw", "{spelling}");
        }
        assert_eq!(normalized_path("/a/%zz/%4"), "/a/%zz/%4", "broken escapes stay as they are");
        assert_eq!(normalized_path("/../.."), "/");
        assert_ne!(normalized_path("/accounts/42"), normalized_path("/accounts/43"));
    }
}
