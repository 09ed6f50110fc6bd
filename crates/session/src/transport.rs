//! How the session id travels: a cookie (default) or a header / gRPC metadata key.

use std::{sync::Arc, time::Duration};

use cookie::{Cookie, CookieJar, Key, SameSite};
use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::id::{ID_LEN, SessionId};

/// Longest cookie value looked at (a signed id is 44 + 64 characters).
const MAX_VALUE_LEN: usize = 256;

/// Where the session id is read from and written to.
#[derive(Clone)]
pub(crate) enum Transport {
    Cookie(Arc<CookieConfig>),
    Header(HeaderName),
}

/// Cookie settings (see the `SessionLayer` builder methods).
#[derive(Clone)]
pub(crate) struct CookieConfig {
    pub(crate) name: String,
    pub(crate) host_prefix: bool,
    pub(crate) secure: bool,
    pub(crate) http_only: bool,
    pub(crate) same_site: SameSite,
    pub(crate) path: String,
    pub(crate) domain: Option<String>,
    /// `Some(max_age)`: a persistent cookie; `None`: a browser-session cookie.
    pub(crate) max_age: Option<Duration>,
    pub(crate) key: Option<Key>,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: "id".into(),
            host_prefix: false,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            path: "/".into(),
            domain: None,
            max_age: None,
            key: None,
        }
    }
}

impl CookieConfig {
    pub(crate) fn full_name(&self) -> String {
        if self.host_prefix { format!("__Host-{}", self.name) } else { self.name.clone() }
    }
}

/// What to tell the client about its id.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum IdAction {
    Set(String),
    Remove,
}

/// Reads the session id of a request. Nothing here allocates in proportion to
/// the input or touches the store: garbage, oversized, non-UTF-8 and (with a
/// signing key) forged ids are simply not there.
pub(crate) fn read_id(transport: &Transport, headers: &HeaderMap) -> Option<SessionId> {
    match transport {
        Transport::Header(name) => headers.get(name).and_then(|v| SessionId::parse(v.as_bytes())),
        Transport::Cookie(config) => {
            // `k == config.full_name()`, without building the name for every request.
            let is_ours = |k: &str| match config.host_prefix {
                true => k.strip_prefix("__Host-") == Some(config.name.as_str()),
                false => k == config.name,
            };
            for value in headers.get_all(header::COOKIE) {
                // Pair by pair on the bytes: another cookie's non-ASCII value
                // (set by some other script of the site) must not hide ours.
                for pair in value.as_bytes().split(|b| *b == b';') {
                    let Some(eq) = pair.iter().position(|b| *b == b'=') else { continue };
                    let Ok(name) = std::str::from_utf8(&pair[..eq]) else { continue };
                    let name = name.trim();
                    if !is_ours(name) {
                        continue;
                    }
                    let Ok(v) = std::str::from_utf8(&pair[eq + 1..]) else { continue };
                    let v = v.trim().trim_matches('"');
                    if v.len() > MAX_VALUE_LEN {
                        continue;
                    }
                    if let Some(id) = verify(config, name, v) {
                        return Some(id);
                    }
                }
            }
            None
        }
    }
}

fn verify(config: &CookieConfig, name: &str, value: &str) -> Option<SessionId> {
    match &config.key {
        None => SessionId::parse(value.as_bytes()),
        Some(key) => {
            if value.len() <= ID_LEN {
                return None;
            }
            let jar = CookieJar::new();
            let verified = jar.signed(key).verify(Cookie::new(name.to_owned(), value.to_owned()))?;
            SessionId::parse(verified.value().as_bytes())
        }
    }
}

/// Adds the request field that carries the id (`Cookie`, or the configured
/// header) to the response's `Vary`, as Django does for a session that was
/// accessed: a shared cache must never serve one user's personalised answer
/// to another. Joined to an existing `Vary` (one field line), never duplicated;
/// `Vary: *` is left alone.
pub(crate) fn add_vary(transport: &Transport, headers: &mut HeaderMap) {
    let name = match transport {
        Transport::Header(name) => name.as_str(),
        Transport::Cookie(_) => "Cookie",
    };
    let mut lines = 0;
    for value in headers.get_all(header::VARY) {
        lines += 1;
        let listed = value
            .as_bytes()
            .split(|b| *b == b',')
            .map(|t| t.trim_ascii())
            .any(|t| t == b"*" || t.eq_ignore_ascii_case(name.as_bytes()));
        if listed {
            return;
        }
    }
    let joined = match headers.get(header::VARY) {
        Some(existing) if lines == 1 && !existing.as_bytes().trim_ascii().is_empty() => {
            let mut bytes = existing.as_bytes().trim_ascii().to_vec();
            bytes.extend_from_slice(b", ");
            bytes.extend_from_slice(name.as_bytes());
            HeaderValue::from_bytes(&bytes).ok()
        }
        _ => None,
    };
    match joined {
        Some(value) => {
            headers.insert(header::VARY, value);
        }
        None => {
            if lines == 1 {
                headers.remove(header::VARY);
            }
            let value = match transport {
                Transport::Cookie(_) => HeaderValue::from_static("Cookie"),
                Transport::Header(_) => HeaderValue::from_str(name).unwrap_or(HeaderValue::from_static("Cookie")),
            };
            headers.append(header::VARY, value);
        }
    }
}

/// Writes the id (or its removal) into a response.
pub(crate) fn write_id(transport: &Transport, headers: &mut HeaderMap, action: &IdAction) {
    {
        // A response that hands out a session id is a credential of one
        // client: no cache may store it, whatever the handler said (a shared
        // cache serving it to the next visitor would share the session). One
        // that removes it neither (served to others, it would log them out).
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.remove("cdn-cache-control");
        headers.remove("surrogate-control");
    }
    match transport {
        Transport::Header(name) => {
            let value = match action {
                IdAction::Set(id) => HeaderValue::from_str(id).ok(),
                IdAction::Remove => Some(HeaderValue::from_static("")),
            };
            if let Some(value) = value {
                headers.insert(name.clone(), value);
            }
        }
        Transport::Cookie(config) => {
            let value = match action {
                IdAction::Set(id) => id.clone(),
                IdAction::Remove => String::new(),
            };
            let mut cookie = Cookie::build((config.full_name(), value))
                .path(if config.host_prefix { "/".to_owned() } else { config.path.clone() })
                // Browsers refuse `SameSite=None` without `Secure`.
                .secure(config.secure || config.host_prefix || config.same_site == SameSite::None)
                .http_only(config.http_only)
                .same_site(config.same_site)
                .build();
            if let (Some(domain), false) = (&config.domain, config.host_prefix) {
                cookie.set_domain(domain.clone());
            }
            match action {
                IdAction::Remove => cookie.make_removal(),
                IdAction::Set(_) => {
                    if let Some(max_age) = config.max_age {
                        cookie.set_max_age(cookie::time::Duration::seconds(
                            max_age.as_secs().min(i64::MAX as u64) as i64
                        ));
                    }
                    if let Some(key) = &config.key {
                        let mut jar = CookieJar::new();
                        jar.signed_mut(key).add(cookie.clone());
                        if let Some(signed) = jar.get(cookie.name()) {
                            cookie = signed.clone();
                        }
                    }
                }
            }
            if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
                headers.append(header::SET_COOKIE, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie_transport(key: Option<Key>) -> Transport {
        Transport::Cookie(Arc::new(CookieConfig { key, ..CookieConfig::default() }))
    }

    fn set_cookie_of(transport: &Transport, id: &SessionId) -> String {
        let mut headers = HeaderMap::new();
        write_id(transport, &mut headers, &IdAction::Set(id.encode()));
        headers[header::SET_COOKIE].to_str().unwrap().to_owned()
    }

    fn request_with(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        headers
    }

    #[test]
    fn another_cookies_non_ascii_value_does_not_hide_the_id() {
        let transport = cookie_transport(None);
        let id = SessionId::generate().unwrap();
        let mut headers = HeaderMap::new();
        let line = format!("x=\u{e9}t\u{e9}; id={}", id.encode());
        headers.insert(header::COOKIE, HeaderValue::from_bytes(line.as_bytes()).unwrap());
        assert_eq!(read_id(&transport, &headers), Some(id));
    }

    #[test]
    fn removing_the_id_is_not_cacheable_either() {
        for transport in [cookie_transport(None), Transport::Header(HeaderName::from_static("x-session"))] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
            write_id(&transport, &mut headers, &IdAction::Remove);
            assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        }
    }

    #[test]
    fn cookies_have_safe_defaults_and_round_trip() {
        let transport = cookie_transport(None);
        let id = SessionId::generate().unwrap();
        let set = set_cookie_of(&transport, &id);
        for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
            assert!(set.contains(attr), "{set}");
        }
        assert!(!set.contains("Max-Age"), "browser-session cookie by default: {set}");
        let pair = set.split(';').next().unwrap();
        assert_eq!(read_id(&transport, &request_with(&format!("a=b; {pair}; c=d"))), Some(id));
    }

    #[test]
    fn signed_cookies_refuse_forged_and_unsigned_ids() {
        let key = Key::generate();
        let transport = cookie_transport(Some(key));
        let id = SessionId::generate().unwrap();
        let set = set_cookie_of(&transport, &id);
        let pair = set.split(';').next().unwrap();
        assert_eq!(read_id(&transport, &request_with(pair)), Some(id.clone()));
        // The bare id, or the id signed with another key, is not accepted.
        assert_eq!(read_id(&transport, &request_with(&format!("id={}", id.encode()))), None);
        let other = set_cookie_of(&cookie_transport(Some(Key::generate())), &id);
        assert_eq!(read_id(&transport, &request_with(other.split(';').next().unwrap())), None);
        // A signature of one id does not carry over to another.
        let forged = format!("{}{}", &pair[..pair.len() - ID_LEN], SessionId::generate().unwrap().encode());
        assert_eq!(read_id(&transport, &request_with(&forged)), None);
    }

    #[test]
    fn hostile_cookies_are_ignored() {
        let transport = cookie_transport(None);
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_bytes(b"id=\xff\xfe").unwrap());
        headers.append(header::COOKIE, HeaderValue::from_str(&format!("id={}", "A".repeat(100_000))).unwrap());
        headers.append(header::COOKIE, HeaderValue::from_static("id=; id==; ==; ;;; id=../../etc"));
        assert_eq!(read_id(&transport, &headers), None);
    }

    #[test]
    fn persistent_cookies_carry_max_age_and_removal_expires() {
        let transport = Transport::Cookie(Arc::new(CookieConfig {
            max_age: Some(Duration::from_secs(3600)),
            ..CookieConfig::default()
        }));
        let set = set_cookie_of(&transport, &SessionId::generate().unwrap());
        assert!(set.contains("Max-Age=3600"), "{set}");
        let mut headers = HeaderMap::new();
        write_id(&transport, &mut headers, &IdAction::Remove);
        let removal = headers[header::SET_COOKIE].to_str().unwrap();
        assert!(removal.starts_with("id=;") && removal.contains("Max-Age=0"), "{removal}");
    }

    /// Whatever the handler said, no cache stores a response that hands out
    /// an id (a shared cache would give the next visitor the same session).
    #[test]
    fn responses_handing_out_an_id_are_never_stored() {
        let header = Transport::Header(HeaderName::from_static("x-session-id"));
        for transport in [cookie_transport(None), header] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
            headers.insert("cdn-cache-control", HeaderValue::from_static("max-age=600"));
            write_id(&transport, &mut headers, &IdAction::Set(SessionId::generate().unwrap().encode()));
            assert_eq!(headers.get_all(header::CACHE_CONTROL).iter().collect::<Vec<_>>(), ["no-store"]);
            assert!(headers.get("cdn-cache-control").is_none());
        }
    }

    #[test]
    fn same_site_none_is_always_secure() {
        let transport = Transport::Cookie(Arc::new(CookieConfig {
            secure: false,
            same_site: SameSite::None,
            ..CookieConfig::default()
        }));
        let set = set_cookie_of(&transport, &SessionId::generate().unwrap());
        assert!(set.contains("SameSite=None") && set.contains("Secure"), "{set}");
    }

    #[test]
    fn host_prefix_forces_secure_root_path_and_no_domain() {
        let transport = Transport::Cookie(Arc::new(CookieConfig {
            host_prefix: true,
            secure: false,
            path: "/app".into(),
            domain: Some("example.com".into()),
            ..CookieConfig::default()
        }));
        let set = set_cookie_of(&transport, &SessionId::generate().unwrap());
        assert!(set.starts_with("__Host-id="), "{set}");
        assert!(set.contains("Secure") && set.contains("Path=/") && !set.contains("Domain"), "{set}");
    }
}
