//! Key extractors: which client a request counts against.
//!
//! Every value that comes from a request goes through
//! [`KeyPart::client`](redlayer_core::KeyPart::client) (short plain values kept,
//! anything else SHA-256 hashed) or [`KeyPart::hashed`](redlayer_core::KeyPart::hashed)
//! (API keys: always hashed), so nothing unbounded reaches Redis.

use std::{
    fmt,
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    str::FromStr,
    sync::Arc,
};

use http::{HeaderName, request::Parts};
use redlayer_core::KeyPart;

/// A boxed future of a custom async key extractor.
pub type KeyFuture = Pin<Box<dyn Future<Output = Option<String>> + Send + 'static>>;

/// What an extractor produced for one request.
pub(crate) enum Extracted {
    Ready(Option<KeyPart>),
    Pending(Pin<Box<dyn Future<Output = Option<KeyPart>> + Send + 'static>>),
}

trait Extract: Send + Sync + 'static {
    fn extract(&self, parts: &Parts) -> Extracted;
}

/// Which client a request counts against. Cheap to clone.
///
/// ```
/// use redlayer_ratelimit::{ClientIp, Key};
/// let by_ip = Key::peer_ip();                                  // ConnectInfo / socket address
/// let behind_proxy = Key::from(ClientIp::x_forwarded_for().trusted_hops(1));
/// let by_api_key = Key::header("x-api-key");                   // hashed
/// let per_route = Key::peer_ip().per_route();                  // method + matched route
/// let everyone = Key::global();
/// # let _ = (by_ip, behind_proxy, by_api_key, per_route, everyone);
/// ```
#[derive(Clone)]
pub struct Key(Arc<dyn Extract>);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key")
    }
}

impl Default for Key {
    /// [`Key::peer_ip`].
    fn default() -> Self {
        Key::peer_ip()
    }
}

impl Key {
    /// The peer's IP address (IPv6 grouped by /64): see [`ClientIp::peer`].
    pub fn peer_ip() -> Self {
        ClientIp::peer().into()
    }

    /// A request header, e.g. an API key. The value is always SHA-256 hashed
    /// before it becomes part of a Redis key. No header (or an empty one): no key.
    ///
    /// # Panics
    ///
    /// When `name` is not a valid header name (a programming error).
    pub fn header(name: impl AsRef<str>) -> Self {
        let name = HeaderName::from_bytes(name.as_ref().as_bytes()).expect("Key::header: invalid header name");
        Key(Arc::new(HeaderKey(name)))
    }

    /// One key for every request (a global limit).
    pub fn global() -> Self {
        Key(Arc::new(Global))
    }

    /// A key computed by the application from the request head. Bounded/hashed
    /// like any client value; `None` means "no key" (see [`NoKey`]).
    pub fn custom<F>(f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        Key(Arc::new(Custom(f)))
    }

    /// A key computed asynchronously (e.g. a token looked up in a database).
    /// The closure gets the request head and returns a `'static` future: clone
    /// what the future needs out of the head first.
    pub fn custom_async<F>(f: F) -> Self
    where
        F: Fn(&Parts) -> KeyFuture + Send + Sync + 'static,
    {
        Key(Arc::new(CustomAsync(f)))
    }

    /// Scopes this key by method and route: each route gets its own counter.
    /// The route is axum's `MatchedPath` when present (feature `axum`, layer
    /// applied with `route_layer`), else the URI path, normalized so that
    /// other spellings of it (`/login/`, `//login`, `/%6Cogin`) share its
    /// counter (bounded/hashed).
    pub fn per_route(self) -> Self {
        Key(Arc::new(Scoped { inner: self, method: true, route: true }))
    }

    /// Scopes this key by HTTP method only.
    pub fn per_method(self) -> Self {
        Key(Arc::new(Scoped { inner: self, method: true, route: false }))
    }

    pub(crate) fn extract(&self, parts: &Parts) -> Extracted {
        self.0.extract(parts)
    }
}

/// What the layer does with a request for which a policy's key extractor
/// found no key (no peer address, no API-key header, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum NoKey {
    /// Count all keyless requests of that policy under one shared key
    /// (the default: they are limited together, never unlimited).
    #[default]
    Shared,
    /// Skip that policy for this request.
    Skip,
    /// Refuse the request: `400 Bad Request` (problem+json; gRPC `INVALID_ARGUMENT`).
    Reject,
}

struct HeaderKey(HeaderName);
impl Extract for HeaderKey {
    fn extract(&self, parts: &Parts) -> Extracted {
        Extracted::Ready(
            parts.headers.get(&self.0).map(|v| v.as_bytes()).filter(|v| !v.is_empty()).map(KeyPart::hashed),
        )
    }
}

struct Global;
impl Extract for Global {
    fn extract(&self, _: &Parts) -> Extracted {
        Extracted::Ready(Some(KeyPart::fixed("global")))
    }
}

struct Custom<F>(F);
impl<F: Fn(&Parts) -> Option<String> + Send + Sync + 'static> Extract for Custom<F> {
    fn extract(&self, parts: &Parts) -> Extracted {
        Extracted::Ready((self.0)(parts).map(KeyPart::client))
    }
}

struct CustomAsync<F>(F);
impl<F: Fn(&Parts) -> KeyFuture + Send + Sync + 'static> Extract for CustomAsync<F> {
    fn extract(&self, parts: &Parts) -> Extracted {
        let fut = (self.0)(parts);
        Extracted::Pending(Box::pin(async move { fut.await.map(KeyPart::client) }))
    }
}

struct Scoped {
    inner: Key,
    method: bool,
    route: bool,
}
impl Extract for Scoped {
    fn extract(&self, parts: &Parts) -> Extracted {
        let mut scope = String::new();
        if self.method {
            scope.push_str(parts.method.as_str());
        }
        if self.route {
            scope.push(':');
            scope.push_str(&route_of(parts));
        }
        let scope = KeyPart::client(scope);
        // The scope's length first: paths and keys may hold ':', and
        // ("/a", "u:1") must not meet ("/a:u", "1").
        let join = move |part: Option<KeyPart>| {
            part.map(|p| KeyPart::client(format!("{}:{}:{}", scope.as_str().len(), scope.as_str(), p.as_str())))
        };
        match self.inner.extract(parts) {
            Extracted::Ready(part) => Extracted::Ready(join(part)),
            Extracted::Pending(fut) => Extracted::Pending(Box::pin(async move { join(fut.await) })),
        }
    }
}

/// The matched route, or the request's path made one per resource
/// ([`normalized_path`](redlayer_core::keys::normalized_path)): `/login/`,
/// `//login` and `/%6Cogin` count against `/login`'s quota.
fn route_of(parts: &Parts) -> std::borrow::Cow<'_, str> {
    #[cfg(feature = "axum")]
    if let Some(path) = parts.extensions.get::<axum::extract::MatchedPath>() {
        return std::borrow::Cow::Borrowed(path.as_str());
    }
    std::borrow::Cow::Owned(redlayer_core::keys::normalized_path(parts.uri.path()))
}

/// The peer address of a connection, as a request extension. Insert it when
/// your server does not use axum's `ConnectInfo` (the layer reads both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The peer's socket address: axum `ConnectInfo<SocketAddr>` (feature `axum`),
/// a [`PeerAddr`] or a bare `SocketAddr` extension.
pub fn peer_addr(parts: &Parts) -> Option<SocketAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = parts.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0);
    }
    if let Some(PeerAddr(addr)) = parts.extensions.get::<PeerAddr>() {
        return Some(*addr);
    }
    parts.extensions.get::<SocketAddr>().copied()
}

/// A CIDR block (`10.0.0.0/8`, `2001:db8::/32`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// True when `ip` is inside this block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_v4(ip, self.prefix) == mask_v4(net, self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_v6(ip, self.prefix) == mask_v6(net, self.prefix),
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = canonical(addr.trim().parse::<IpAddr>().map_err(|e| format!("{s:?}: {e}"))?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{s:?}: bad prefix"))?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(ip);
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix.min(32)) };
    Ipv4Addr::from(bits & mask)
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(ip);
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix.min(128)) };
    Ipv6Addr::from(bits & mask)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Peer,
    XForwardedFor,
    Forwarded,
}

#[derive(Debug, Clone)]
enum Trust {
    None,
    Hops(usize),
    Proxies(Arc<[IpNet]>),
}

/// The client's IP address, from the connection or, behind proxies you
/// trust, from `Forwarded` / `X-Forwarded-For`.
///
/// Forwarded headers are **never trusted by default**: without
/// [`trusted_hops`](ClientIp::trusted_hops) or
/// [`trusted_proxies`](ClientIp::trusted_proxies) they are ignored and the peer
/// address is used, so a client cannot pick its own key. IPv6 addresses are
/// grouped by their /64 (one customer usually owns a whole /64); IPv4 by /32.
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientIp {
    source: Source,
    trust: Trust,
    v4_prefix: u8,
    v6_prefix: u8,
}

impl ClientIp {
    /// The peer address of the connection.
    pub fn peer() -> Self {
        ClientIp { source: Source::Peer, trust: Trust::None, v4_prefix: 32, v6_prefix: 64 }
    }

    /// `X-Forwarded-For`, read from the right through trusted hops only.
    pub fn x_forwarded_for() -> Self {
        ClientIp { source: Source::XForwardedFor, ..Self::peer() }
    }

    /// RFC 7239 `Forwarded` (`for=` parameters), read from the right through trusted hops only.
    pub fn forwarded() -> Self {
        ClientIp { source: Source::Forwarded, ..Self::peer() }
    }

    /// Exactly `n` proxies you run stand in front of the app (the peer is the
    /// last of them): the client is the `n`-th address from the right of the
    /// header. With fewer entries than that, the peer address is used.
    pub fn trusted_hops(mut self, n: usize) -> Self {
        self.trust = if n == 0 { Trust::None } else { Trust::Hops(n) };
        self
    }

    /// The proxies you trust, as CIDR blocks: starting from the peer, each
    /// trusted address hands over to the one on its left; the first untrusted
    /// address is the client. Unparsable entries are ignored (with an error
    /// event); use [`ClientIp::try_trusted_proxies`] to fail instead.
    pub fn trusted_proxies<I, S>(self, cidrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nets: Vec<IpNet> = cidrs
            .into_iter()
            .filter_map(|c| match c.as_ref().parse() {
                Ok(net) => Some(net),
                Err(e) => {
                    tracing::error!(target: "redlayer", error = %e, "ignoring unparsable trusted proxy");
                    None
                }
            })
            .collect();
        self.with_proxies(nets)
    }

    /// Like [`ClientIp::trusted_proxies`], but fails on an unparsable block.
    pub fn try_trusted_proxies<I, S>(self, cidrs: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nets = cidrs.into_iter().map(|c| c.as_ref().parse()).collect::<Result<Vec<IpNet>, _>>()?;
        Ok(self.with_proxies(nets))
    }

    fn with_proxies(mut self, nets: Vec<IpNet>) -> Self {
        self.trust = Trust::Proxies(nets.into());
        self
    }

    /// Group IPv6 clients by this prefix length (default 64; 128 = one address).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.v6_prefix = bits.min(128);
        self
    }

    /// Group IPv4 clients by this prefix length (default 32 = one address).
    pub fn ipv4_prefix(mut self, bits: u8) -> Self {
        self.v4_prefix = bits.min(32);
        self
    }

    /// The client address of a request (before grouping), if any.
    pub fn client_ip(&self, parts: &Parts) -> Option<IpAddr> {
        let peer = peer_addr(parts).map(|a| canonical(a.ip()));
        if self.source == Source::Peer || matches!(self.trust, Trust::None) {
            return peer;
        }
        let peer = peer?;
        // The chain, newest first (the peer excluded), read from the right and
        // never further than MAX_CHAIN entries: a client's long header costs
        // nothing beyond them.
        let mut chain: Vec<Option<IpAddr>> = Vec::new();
        let name = if self.source == Source::XForwardedFor { "x-forwarded-for" } else { "forwarded" };
        'lines: for line in parts.headers.get_all(name).iter().rev() {
            // Bytes, split from the right: only the elements read are checked,
            // so the header's length does not matter.
            for element in line.as_bytes().rsplit(|&b| b == b',') {
                if chain.len() == MAX_CHAIN {
                    break 'lines;
                }
                let readable = element.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
                let Some(element) = std::str::from_utf8(element).ok().filter(|_| readable) else {
                    // An unreadable element is one unknown hop: nothing left of it is believed.
                    chain.push(None);
                    break 'lines;
                };
                chain.push(match self.source {
                    Source::XForwardedFor => parse_node(element.trim()),
                    _ => element
                        .split(';')
                        .filter_map(|pair| pair.split_once('='))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                        .and_then(|(_, v)| parse_node(v.trim())),
                });
            }
        }
        match &self.trust {
            Trust::None => Some(peer),
            // The peer is hop 1; the client is the n-th entry from the right.
            Trust::Hops(n) => chain.get(n - 1).copied().flatten().or(Some(peer)),
            Trust::Proxies(nets) => {
                let trusted = |ip: IpAddr| nets.iter().any(|n| n.contains(ip));
                if !trusted(peer) {
                    return Some(peer);
                }
                let mut client = peer;
                for node in &chain {
                    match node {
                        Some(ip) => {
                            client = *ip;
                            if !trusted(*ip) {
                                return Some(*ip);
                            }
                        }
                        None => return Some(client),
                    }
                }
                Some(client)
            }
        }
    }

    /// `KeyPart::client(self.group(ip))`, formatted on the stack (one allocation fewer per request).
    fn group_key(&self, ip: IpAddr) -> KeyPart {
        use std::io::Write as _;
        let mut buf = [0u8; 64];
        let mut out = &mut buf[..];
        let written = match canonical(ip) {
            IpAddr::V4(v4) if self.v4_prefix >= 32 => write!(out, "{v4}"),
            IpAddr::V4(v4) => write!(out, "{}/{}", mask_v4(v4, self.v4_prefix), self.v4_prefix),
            IpAddr::V6(v6) if self.v6_prefix >= 128 => write!(out, "{v6}"),
            IpAddr::V6(v6) => write!(out, "{}/{}", mask_v6(v6, self.v6_prefix), self.v6_prefix),
        };
        let len = 64 - out.len();
        match written {
            Ok(()) => KeyPart::client(&buf[..len]),
            Err(_) => KeyPart::client(self.group(ip)),
        }
    }

    fn group(&self, ip: IpAddr) -> String {
        match canonical(ip) {
            IpAddr::V4(v4) if self.v4_prefix >= 32 => v4.to_string(),
            IpAddr::V4(v4) => format!("{}/{}", mask_v4(v4, self.v4_prefix), self.v4_prefix),
            IpAddr::V6(v6) if self.v6_prefix >= 128 => v6.to_string(),
            IpAddr::V6(v6) => format!("{}/{}", mask_v6(v6, self.v6_prefix), self.v6_prefix),
        }
    }
}

/// The most forwarded-chain entries looked at (from the right).
const MAX_CHAIN: usize = 64;

/// One node of a forwarded chain: `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]:80`,
/// `"[2001:db8::1]"`, `2001:db8::1`. `unknown` and obfuscated names: `None`.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse::<Ipv6Addr>().ok().map(|v6| canonical(IpAddr::V6(v6)));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(canonical(addr.ip()));
    }
    // An IPv4 address with an obfuscated port (RFC 7239 6.3: `1.2.3.4:_abc`).
    let (host, port) = s.split_once(':')?;
    port.starts_with('_').then(|| host.parse::<std::net::Ipv4Addr>().ok()).flatten().map(|v4| canonical(IpAddr::V4(v4)))
}

impl Extract for ClientIp {
    fn extract(&self, parts: &Parts) -> Extracted {
        Extracted::Ready(self.client_ip(parts).map(|ip| self.group_key(ip)))
    }
}

impl From<ClientIp> for Key {
    fn from(ip: ClientIp) -> Self {
        Key(Arc::new(ip))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stack_formatted_ip_keys_are_the_string_ones() {
        let ips: [IpAddr; 4] = [
            "198.51.100.7".parse().unwrap(),
            "2001:db8:1234:5678:9abc:def0:1234:5678".parse().unwrap(),
            "::ffff:192.0.2.1".parse().unwrap(),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
        ];
        for client in
            [ClientIp::peer(), ClientIp::peer().ipv4_prefix(24).ipv6_prefix(128), ClientIp::peer().ipv6_prefix(48)]
        {
            for ip in ips {
                assert_eq!(client.group_key(ip), KeyPart::client(client.group(ip)), "{ip}");
            }
        }
    }

    use super::*;

    fn parts(peer: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::builder();
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (mut parts, ()) = req.body(()).unwrap().into_parts();
        parts.extensions.insert(PeerAddr(peer.parse().unwrap()));
        parts
    }

    fn key(k: &Key, p: &Parts) -> Option<String> {
        match k.extract(p) {
            Extracted::Ready(v) => v.map(|p| p.as_str().to_owned()),
            Extracted::Pending(_) => panic!("sync"),
        }
    }

    /// Paths and keys may hold ':': a route scope and a key never run into each other.
    #[test]
    fn route_scopes_and_keys_do_not_blur() {
        let client = Key::custom(|parts: &Parts| parts.headers.get("x-k").map(|v| v.to_str().unwrap().to_owned()));
        let scoped = client.per_route();
        let with = |path: &str, k: &str| {
            let (mut parts, ()) = http::Request::get(path).header("x-k", k).body(()).unwrap().into_parts();
            parts.extensions.insert(PeerAddr("192.0.2.1:1".parse().unwrap()));
            key(&scoped, &parts).unwrap()
        };
        assert_ne!(with("/a", "u:1"), with("/a:u", "1"));
        assert_eq!(with("/a", "u:1"), with("/a", "u:1"));
        // Without a matched route, other spellings of a path share its counter.
        for spelling in ["/login/", "//login", "/%6Cogin", "/x/../login"] {
            assert_eq!(with(spelling, "u"), with("/login", "u"), "{spelling}");
        }
        assert_ne!(with("/logout", "u"), with("/login", "u"));
    }

    #[test]
    fn forwarded_headers_are_ignored_without_trusted_proxies() {
        let spoofed = parts("198.51.100.9:5000", &[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")]);
        assert_eq!(key(&ClientIp::x_forwarded_for().into(), &spoofed).as_deref(), Some("198.51.100.9"));
        assert_eq!(key(&ClientIp::forwarded().into(), &spoofed).as_deref(), Some("198.51.100.9"));
        assert_eq!(key(&Key::peer_ip(), &spoofed).as_deref(), Some("198.51.100.9"));
    }

    #[test]
    fn trusted_hops_pick_the_address_the_proxy_saw() {
        let k: Key = ClientIp::x_forwarded_for().trusted_hops(1).into();
        // The client prepended a fake entry; the proxy appended the real one.
        let p = parts("10.0.0.2:1", &[("x-forwarded-for", "6.6.6.6, 203.0.113.5")]);
        assert_eq!(key(&k, &p).as_deref(), Some("203.0.113.5"));
        let two: Key = ClientIp::x_forwarded_for().trusted_hops(2).into();
        let p = parts("10.0.0.2:1", &[("x-forwarded-for", "6.6.6.6, 203.0.113.5, 10.0.0.1")]);
        assert_eq!(key(&two, &p).as_deref(), Some("203.0.113.5"));
        // No header (request did not come through the proxies): the peer.
        let p = parts("10.0.0.2:1", &[]);
        assert_eq!(key(&two, &p).as_deref(), Some("10.0.0.2"));
    }

    #[test]
    fn trusted_cidrs_walk_from_the_right() {
        let k: Key = ClientIp::forwarded().trusted_proxies(["10.0.0.0/8", "2001:db8::/32"]).into();
        let p = parts(
            "10.1.1.1:1",
            &[("forwarded", "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.2.2.2")],
        );
        assert_eq!(key(&k, &p).as_deref(), Some("6.6.6.6"));
        let p = parts("10.1.1.1:1", &[("forwarded", "for=7.7.7.7;proto=http, for=10.2.2.2")]);
        assert_eq!(key(&k, &p).as_deref(), Some("7.7.7.7"));
        // An untrusted peer: its headers are not believed.
        let p = parts("192.0.2.1:1", &[("forwarded", "for=7.7.7.7")]);
        assert_eq!(key(&k, &p).as_deref(), Some("192.0.2.1"));
        // Garbage and huge headers never panic and never become the key.
        let huge = "x".repeat(100_000);
        let p = parts("10.1.1.1:1", &[("forwarded", huge.as_str())]);
        assert_eq!(key(&k, &p).as_deref(), Some("10.1.1.1"));
    }

    /// The chain is read from the right and only as far as the trust goes:
    /// a client's megabyte of forwarded entries costs nothing (it used to be
    /// parsed and collected whole on every request, then cut to 64).
    #[test]
    fn huge_forwarded_chains_cost_no_more_than_the_trusted_hops() {
        let huge = "6.6.6.6, ".repeat(110_000) + "203.0.113.5";
        let hops: Key = ClientIp::x_forwarded_for().trusted_hops(1).into();
        let cidrs: Key = ClientIp::x_forwarded_for().trusted_proxies(["10.0.0.0/8"]).into();
        let p = parts("10.0.0.2:1", &[("x-forwarded-for", huge.as_str())]);
        let started = std::time::Instant::now();
        for _ in 0..20 {
            assert_eq!(key(&hops, &p).as_deref(), Some("203.0.113.5"));
            assert_eq!(key(&cidrs, &p).as_deref(), Some("203.0.113.5"));
        }
        assert!(started.elapsed() < std::time::Duration::from_millis(500), "{:?}", started.elapsed());
        // Beyond 64 entries nothing more is trusted: the 65th from the right is not reached.
        let all_trusted = "10.0.0.1, ".repeat(100) + "10.0.0.1";
        let p = parts("10.0.0.2:1", &[("x-forwarded-for", all_trusted.as_str())]);
        assert_eq!(key(&cidrs, &p).as_deref(), Some("10.0.0.1"));
        // Several header lines form one chain, oldest line first.
        let p = parts("10.0.0.2:1", &[("x-forwarded-for", "6.6.6.6, 7.7.7.7"), ("x-forwarded-for", "10.0.0.9")]);
        assert_eq!(key(&cidrs, &p).as_deref(), Some("7.7.7.7"));
        let two: Key = ClientIp::x_forwarded_for().trusted_hops(2).into();
        assert_eq!(key(&two, &p).as_deref(), Some("7.7.7.7"));
        // An unreadable element is an unknown hop: what is right of it is read,
        // nothing left of it is believed.
        let line = http::HeaderValue::from_bytes(b"6.6.6.6, \xff\xfe, 7.7.7.7").unwrap();
        let mut p = parts("10.0.0.2:1", &[]);
        p.headers.insert("x-forwarded-for", line);
        assert_eq!(key(&cidrs, &p).as_deref(), Some("7.7.7.7"));
        let three: Key = ClientIp::x_forwarded_for().trusted_hops(3).into();
        assert_eq!(key(&three, &p).as_deref(), Some("10.0.0.2"), "the unknown hop is not a client");
    }

    #[test]
    fn ipv6_is_grouped_by_64_and_api_keys_are_hashed() {
        let a = parts("[2001:db8:1:2:aaaa::1]:1", &[("x-api-key", "secret-token")]);
        let b = parts("[2001:db8:1:2:bbbb::9]:1", &[]);
        assert_eq!(key(&Key::peer_ip(), &a), key(&Key::peer_ip(), &b));
        assert_eq!(key(&Key::peer_ip(), &a).as_deref(), Some("2001:db8:1:2::/64"));
        let exact: Key = ClientIp::peer().ipv6_prefix(128).into();
        assert_ne!(key(&exact, &a), key(&exact, &b));
        let api = key(&Key::header("x-api-key"), &a).unwrap();
        assert!(!api.contains("secret"), "{api}");
        assert_eq!(key(&Key::header("x-api-key"), &b), None);
    }

    #[test]
    fn forwarded_nodes_with_ports_obfuscated_or_not() {
        let v4: IpAddr = "192.0.2.43".parse().unwrap();
        for node in ["192.0.2.43", "192.0.2.43:80", "\"192.0.2.43:_abc\"", "192.0.2.43:_hidden"] {
            assert_eq!(parse_node(node), Some(v4), "{node}");
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        for node in ["\"[2001:db8::1]:_x\"", "[2001:db8::1]:443", "2001:db8::1"] {
            assert_eq!(parse_node(node), Some(v6), "{node}");
        }
        for node in ["unknown", "_hidden", "192.0.2.43:80:80", "192.0.2.43:x"] {
            assert_eq!(parse_node(node), None, "{node}");
        }
    }

    #[test]
    fn cidr_parsing() {
        let net: IpNet = "192.168.0.0/16".parse().unwrap();
        assert!(net.contains("192.168.44.1".parse().unwrap()));
        assert!(net.contains("::ffff:192.168.1.1".parse().unwrap()));
        assert!(!net.contains("192.169.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nonsense".parse::<IpNet>().is_err());
    }
}
