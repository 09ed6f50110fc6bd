//! The `Cache-Status` response header (RFC 9211).

use std::fmt::Write as _;

use http::{HeaderMap, HeaderValue};

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
            let _ = write!(s, "; fwd={fwd}");
        }
        if let Some(status) = self.fwd_status {
            let _ = write!(s, "; fwd-status={status}");
        }
        if self.stored {
            s.push_str("; stored");
        }
        if self.collapsed {
            s.push_str("; collapsed");
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(s, "; ttl={ttl}");
        }
        if let Some(detail) = self.detail {
            let _ = write!(s, "; detail={detail}");
        }
        let existing: Vec<&str> =
            headers.get_all("cache-status").iter().filter_map(|v| v.to_str().ok()).filter(|v| !v.is_empty()).collect();
        let value = if existing.is_empty() { s } else { format!("{}, {s}", existing.join(", ")) };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert("cache-status", v);
        }
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
    }
}
