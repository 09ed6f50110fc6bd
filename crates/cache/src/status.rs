//! The `Cache-Status` response header (RFC 9211).

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// What this cache did with one request, written as one `Cache-Status` member.
#[derive(Debug, Clone, Default)]
pub(crate) struct CacheStatus {
    pub hit: bool,
    pub fwd: Option<&'static str>,
    pub fwd_status: Option<u16>,
    pub stored: bool,
    pub ttl: Option<i64>,
    pub collapsed: bool,
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    pub fn hit(ttl: i64) -> Self {
        CacheStatus { hit: true, ttl: Some(ttl), ..Default::default() }
    }

    pub fn fwd(fwd: &'static str) -> Self {
        CacheStatus { fwd: Some(fwd), ..Default::default() }
    }

    pub fn detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Appends this member to the response's `Cache-Status` (after the
    /// members of caches closer to the origin, as RFC 9211 orders them).
    pub fn write(&self, name: &str, headers: &mut HeaderMap) {
        let mut s = String::with_capacity(64);
        s.push_str(name);
        if self.hit {
            s.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            s.push_str("; fwd=");
            s.push_str(fwd);
        }
        if let Some(status) = self.fwd_status {
            s.push_str("; fwd-status=");
            push_int(&mut s, i64::from(status));
        }
        if self.stored {
            s.push_str("; stored");
        }
        if self.collapsed {
            s.push_str("; collapsed");
        }
        if let Some(ttl) = self.ttl {
            s.push_str("; ttl=");
            push_int(&mut s, ttl);
        }
        if let Some(detail) = self.detail {
            s.push_str("; detail=");
            s.push_str(detail);
        }
        let value = if headers.contains_key(&CACHE_STATUS) {
            let existing: Vec<&str> = headers
                .get_all(&CACHE_STATUS)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .collect();
            if existing.is_empty() { s } else { format!("{}, {s}", existing.join(", ")) }
        } else {
            s
        };
        // No copy: the header value takes the string's buffer.
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
            headers.insert(CACHE_STATUS, v);
        }
    }
}

/// A cache name as a `Cache-Status` member: an sf-token as it is, anything
/// else as an sf-string (printable ASCII only, `"` and `\` escaped).
pub(crate) fn member_name(name: &str) -> String {
    let token = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '*')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b));
    if token {
        return name.to_owned();
    }
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// The `Cache-Status` header name.
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Appends the decimal form of `n` (as `Display` writes it).
fn push_int(s: &mut String, n: i64) {
    if n < 0 {
        s.push('-');
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        s.push(d as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_appended() {
        let mut h = HeaderMap::new();
        h.insert("cache-status", HeaderValue::from_static("origin-cdn; hit"));
        let mut s = CacheStatus::fwd("uri-miss");
        s.stored = true;
        s.fwd_status = Some(200);
        s.write("redlayer", &mut h);
        assert_eq!(h["cache-status"], "origin-cdn; hit, redlayer; fwd=uri-miss; fwd-status=200; stored");
        let mut h = HeaderMap::new();
        CacheStatus::hit(7).write("redlayer", &mut h);
        assert_eq!(h["cache-status"], "redlayer; hit; ttl=7");
        // Names that are not sf-tokens are quoted: the field stays a valid sf-list.
        for (name, member) in [
            ("redlayer", "redlayer"),
            ("edge-1.example", "edge-1.example"),
            ("Example CDN", "\"Example CDN\""),
            ("say \"hi\" \\o/", "\"say \\\"hi\\\" \\\\o/\""),
            ("1st", "\"1st\""),
            ("caf\u{e9}\n", "\"caf\""),
        ] {
            let quoted = member_name(name);
            assert_eq!(quoted, member, "{name}");
            let mut h = HeaderMap::new();
            CacheStatus::hit(7).write(&quoted, &mut h);
            let list = sfv::Parser::new(h["cache-status"].as_bytes()).parse::<sfv::List>().unwrap();
            assert_eq!(list.len(), 1, "{name}");
        }
        for n in [0, 7, -7, 10, -120, i64::MAX, i64::MIN] {
            let mut s = String::new();
            push_int(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }
}
