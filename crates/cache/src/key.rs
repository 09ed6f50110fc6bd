//! Cache keys: method + normalized URI (+ namespace), and variant ids from `Vary`.

use std::{borrow::Cow, sync::Arc};

use http::{HeaderMap, request::Parts};
use redlayer_core::keys::digest_b64;

/// A custom key function: the primary key text for a request, or `None` to
/// bypass the cache for it. The default is [`default_key`].
pub type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// A namespace (tenant) hook: its answer is put in front of every key, so
/// tenants never share entries. `None`: no namespace.
pub type NamespaceFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// The normalized effective URI of a request: lowercase scheme and host,
/// default port dropped, percent-encodings of unreserved characters decoded
/// and hex digits uppercased, empty path as `/`. The host comes from the URI
/// or the `Host` header.
pub fn normalized_uri(parts: &Parts) -> String {
    let mut out = String::new();
    push_normalized_uri(&mut out, parts);
    out
}

/// Appends the [`normalized_uri`] of a request to `out`.
fn push_normalized_uri(out: &mut String, parts: &Parts) {
    let uri = &parts.uri;
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or_default();
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    out.reserve(scheme.len() + host.len() + pq.len() + 4);
    let start = out.len();
    out.push_str(scheme);
    out[start..].make_ascii_lowercase();
    let https = &out[start..] == "https";
    push_normalized(out, https, host, pq);
}

/// Normalizes `scheme://host` + `path_and_query` (see [`normalized_uri`]).
pub fn normalize(scheme: &str, host: &str, path_and_query: &str) -> String {
    let mut out = String::with_capacity(scheme.len() + host.len() + path_and_query.len() + 4);
    out.push_str(scheme);
    push_normalized(&mut out, scheme == "https", host, path_and_query);
    out
}

/// Appends `://host` + `path_and_query`, normalized, after a scheme.
fn push_normalized(out: &mut String, https: bool, host: &str, path_and_query: &str) {
    let host = host.rsplit('@').next().unwrap_or("");
    // Lowercasing ASCII letters does not change a `:443` / `:80` suffix.
    let default_port = if https { ":443" } else { ":80" };
    let host = host.strip_suffix(default_port).unwrap_or(host);
    out.push_str("://");
    let start = out.len();
    out.push_str(host);
    out[start..].make_ascii_lowercase();
    let pq = if path_and_query.is_empty() { "/" } else { path_and_query };
    if !pq.starts_with('/') && !pq.starts_with('*') {
        out.push('/');
    }
    let bytes = pq.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c as char);
                } else {
                    out.push('%');
                    out.push(bytes[i + 1].to_ascii_uppercase() as char);
                    out.push(bytes[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
                continue;
            }
        }
        out.push(b as char);
        i += 1;
    }
}

/// The authority a request is for, as its key has it (lowercase, without
/// userinfo or default port): the URI's (HTTP/2, absolute-form), else the
/// `Host` header's. `None` when both are there and disagree: the key names
/// one site while the handler may read the other, so such a request is
/// neither answered from nor stored in the cache.
pub(crate) fn request_authority(parts: &Parts) -> Option<Cow<'_, str>> {
    let https = parts.uri.scheme_str().is_some_and(|s| s.eq_ignore_ascii_case("https"));
    let host = parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok());
    match parts.uri.authority() {
        Some(uri) => {
            let uri = normalize_authority(uri.as_str(), https);
            match host {
                Some(host) if normalize_authority(host, https) != uri => None,
                _ => Some(uri),
            }
        }
        None => Some(normalize_authority(host.unwrap_or_default(), https)),
    }
}

fn normalize_authority(raw: &str, https: bool) -> Cow<'_, str> {
    let host = raw.rsplit('@').next().unwrap_or("");
    let host = host.strip_suffix(if https { ":443" } else { ":80" }).unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// The default primary key: `GET <normalized uri>`. HEAD requests use the GET
/// key (a stored GET answers HEAD).
pub fn default_key(parts: &Parts) -> Option<String> {
    let mut key = String::with_capacity(64);
    key.push_str("GET ");
    push_normalized_uri(&mut key, parts);
    Some(key)
}

/// The header names listed by `Vary`, lowercased, sorted, joined by `,`;
/// `None` for `Vary: *`.
pub fn vary_spec(headers: &HeaderMap) -> Option<String> {
    let mut names: Vec<String> = Vec::new();
    for value in headers.get_all(http::header::VARY) {
        let Ok(value) = value.to_str() else { return None };
        for name in value.split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name == "*" {
                return None;
            }
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names.sort();
    Some(names.join(","))
}

/// The values of a request header as one normalized value: every field
/// line joined, split on commas, each member trimmed (`a,b`, ` a, b ` and two
/// lines `a` / `b` are the same selection); `Accept-Language` members also
/// lowercased, without inner whitespace, and sorted. `None` when absent.
pub fn normalized_value(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let mut members: Vec<Vec<u8>> = Vec::new();
    let languages = name.eq_ignore_ascii_case("accept-language");
    for value in values {
        for member in value.as_bytes().split(|b| *b == b',') {
            let member = member.trim_ascii();
            if member.is_empty() {
                continue;
            }
            members.push(if languages {
                // Language ranges are case-insensitive; `de;q=1` is `de; q=1`.
                member.iter().filter(|b| !b.is_ascii_whitespace()).map(u8::to_ascii_lowercase).collect()
            } else {
                member.to_vec()
            });
        }
    }
    if languages {
        // The same ranges in another order select the same representations.
        members.sort();
    }
    Some(members.join(&b", "[..]))
}

/// The variant id of a request under a Vary spec: empty when nothing varies,
/// else a digest of the named request headers' normalized values.
pub fn variant_id(spec: &str, headers: &HeaderMap) -> String {
    if spec.is_empty() {
        return String::new();
    }
    let mut raw = Vec::new();
    for name in spec.split(',') {
        raw.extend_from_slice(name.as_bytes());
        match normalized_value(headers, name) {
            Some(v) => {
                raw.push(1);
                raw.extend_from_slice(&v);
            }
            None => raw.push(0),
        }
        raw.push(2);
    }
    digest_b64(&raw)
}

/// Longest normalized value of a selecting header kept as it is; a longer
/// one is kept as its digest (see [`normalize_selecting`]).
pub const MAX_SELECTING_VALUE: usize = 256;

/// Request fields that carry credentials: selected by `Vary`, they are kept
/// as digests, never in clear.
const CREDENTIALS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// The request headers with each header named by the Vary `spec` replaced by
/// its normalized value (what is stored, and what matching compares). A
/// value longer than [`MAX_SELECTING_VALUE`], or of a field that carries
/// credentials (`Cookie`, `Authorization`, `Proxy-Authorization`: a session
/// id must not reach the store in clear), is replaced by its digest
/// (`sha256:` and the SHA-256 in base64). The stored request and every request
/// matched against it go through this function, so equal values still
/// match, and what a client sends is stored in bounded size.
pub fn normalize_selecting(spec: &str, headers: &mut HeaderMap) {
    if spec.is_empty() {
        return;
    }
    for name in spec.split(',') {
        let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else { continue };
        let Some(mut v) = normalized_value(headers, name) else { continue };
        if v.len() > MAX_SELECTING_VALUE || CREDENTIALS.contains(&name) {
            v = format!("sha256:{}", digest_b64(&v)).into_bytes();
        }
        if let Ok(v) = http::HeaderValue::from_bytes(&v) {
            headers.insert(header, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_normalized() {
        assert_eq!(normalize("http", "Example.COM:80", "/a%7eb%2fc?x=%41"), "http://example.com/a~b%2Fc?x=A");
        assert_eq!(normalize("https", "h:443", ""), "https://h/");
        assert_eq!(normalize("http", "h:8080", "/%"), "http://h:8080/%");
        assert_eq!(normalize("http", "h", "/%4"), "http://h/%4");
    }

    #[test]
    fn vary_specs_and_variants() {
        let mut h = HeaderMap::new();
        h.insert("vary", "Accept-Encoding, accept".parse().unwrap());
        assert_eq!(vary_spec(&h).unwrap(), "accept,accept-encoding");
        h.insert("vary", "*".parse().unwrap());
        assert!(vary_spec(&h).is_none());
        let mut a = HeaderMap::new();
        a.insert("accept", "text/html".parse().unwrap());
        let b = HeaderMap::new();
        assert_ne!(variant_id("accept", &a), variant_id("accept", &b));
        assert_eq!(variant_id("", &a), "");
        let mut one = HeaderMap::new();
        one.insert("foo", "1,2".parse().unwrap());
        let mut two = HeaderMap::new();
        two.append("foo", " 1 ".parse().unwrap());
        two.append("foo", "2".parse().unwrap());
        assert_eq!(variant_id("foo", &one), variant_id("foo", &two));
        assert_ne!(variant_id("foo", &one), variant_id("foo", &HeaderMap::new()));
        let lang = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("accept-language", v.parse().unwrap());
            variant_id("accept-language", &h)
        };
        assert_eq!(lang("en, de;q=0.5"), lang("DE; q=0.5,en"));
        assert_ne!(lang("en"), lang("de"));
    }

    /// What is stored of a selecting header is bounded, and credentials are
    /// never kept in clear; equal values still compare equal.
    #[test]
    fn long_or_secret_selecting_values_are_kept_as_digests() {
        let normalized = |name: &str, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
            normalize_selecting(name, &mut h);
            h[name].to_str().unwrap().to_owned()
        };
        assert_eq!(normalized("accept-encoding", "gzip,  br"), "gzip, br");
        let long = format!("gzip, {}", "a".repeat(100_000));
        let kept = normalized("accept-encoding", &long);
        assert!(kept.starts_with("sha256:") && kept.len() < 64, "{kept}");
        assert_eq!(kept, normalized("accept-encoding", &long));
        assert_ne!(kept, normalized("accept-encoding", &format!("{long}b")));
        let cookie = normalized("cookie", "id=s3cr3t-session-id");
        assert!(cookie.starts_with("sha256:") && !cookie.contains("s3cr3t"), "{cookie}");
        assert_ne!(cookie, normalized("cookie", "id=another-session-id"));
    }
}
