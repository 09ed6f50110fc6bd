//! URI references (`Location`, `Content-Location`) resolved against a
//! request URI as RFC 3986 5.2 says, on the strings as they are: nothing is
//! re-encoded, so a result keys the way the same URI requested by a client
//! does (the cache key decodes only `%XX` of unreserved characters).

/// A URI reference resolved against a request URI.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// An absolute URI (it had a scheme, or was scheme-relative).
    Absolute(String),
    /// A path and query on the request's own origin.
    Path(String),
}

/// Resolves `target` against the request's `base` path and query as RFC 3986
/// 5.2 says (`../list`, `?page=2`, `//host/x`, dot segments removed from the
/// merged path), on the strings as they are: nothing is re-encoded, so the
/// result keys the way the same URI requested by a client does.
pub(crate) fn resolve(scheme: &str, base: &str, target: &str) -> Resolved {
    let target = target.split('#').next().unwrap_or_default();
    let scheme_end = target.find([':', '/', '?']);
    if let Some(i) = scheme_end
        && target.as_bytes()[i] == b':'
        && i > 0
    {
        return Resolved::Absolute(absolute_without_dots(target));
    }
    if target.starts_with("//") {
        return Resolved::Absolute(absolute_without_dots(&format!("{scheme}:{target}")));
    }
    let (base_path, base_query) = match base.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (base, None),
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let (path, query) = if path.is_empty() {
        (base_path.to_owned(), query.or(base_query))
    } else if path.starts_with('/') {
        (remove_dot_segments(path), query)
    } else {
        let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
        let merged = if dir.is_empty() { format!("/{path}") } else { format!("{dir}{path}") };
        (remove_dot_segments(&merged), query)
    };
    Resolved::Path(match query {
        Some(query) => format!("{path}?{query}"),
        None => path,
    })
}

/// An absolute URI with the dot segments of its path removed (RFC 3986
/// 5.2.2 does it for references with a scheme or an authority too).
fn absolute_without_dots(uri: &str) -> String {
    let Some(after_scheme) = uri.find("//").map(|i| i + 2) else { return uri.to_owned() };
    let path_start = uri[after_scheme..].find(['/', '?']).map_or(uri.len(), |i| after_scheme + i);
    let (head, rest) = uri.split_at(path_start);
    match rest.split_once('?') {
        Some((path, query)) if path.starts_with('/') => format!("{head}{}?{query}", remove_dot_segments(path)),
        None if rest.starts_with('/') => format!("{head}{}", remove_dot_segments(rest)),
        _ => uri.to_owned(),
    }
}

/// RFC 3986 5.2.4 on an absolute path: `.` and `..` segments resolved,
/// percent-encoded dots (`%2e`) counted as dots, as the cache keys decode them.
fn remove_dot_segments(path: &str) -> String {
    let dots = |segment: &str| -> Option<usize> {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        match decoded.as_str() {
            "." => Some(1),
            ".." => Some(2),
            _ => None,
        }
    };
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let dot = if segment.len() <= 6 { dots(segment) } else { None };
        match dot {
            Some(1) => {}
            Some(_) => {
                out.pop();
            }
            None => out.push(segment),
        }
        if last && dot.is_some() {
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_as_rfc_3986_says_without_reencoding() {
        let path = |s: &str| Resolved::Path(s.to_owned());
        let base = "/shop/items/new?x=1";
        for (target, resolved) in [
            ("../list", path("/shop/list")),
            ("./a", path("/shop/items/a")),
            ("a/../b", path("/shop/items/b")),
            ("?page=2", path("/shop/items/new?page=2")),
            ("", path("/shop/items/new?x=1")),
            ("#frag", path("/shop/items/new?x=1")),
            ("/abs/./p/../q?y", path("/abs/q?y")),
            ("/a/b/..", path("/a/")),
            ("../../../../up", path("/up")),
            ("/o'brien?name=O'Brien\"", path("/o'brien?name=O'Brien\"")),
            ("caf\u{e9}", path("/shop/items/caf\u{e9}")),
            ("//other.test/x", Resolved::Absolute("http://other.test/x".into())),
            ("HTTPS://Example.test/x#f", Resolved::Absolute("HTTPS://Example.test/x".into())),
            ("mailto:a@b", Resolved::Absolute("mailto:a@b".into())),
            ("http://h.test/a/../b?q=/../x", Resolved::Absolute("http://h.test/b?q=/../x".into())),
            ("//h.test/a/./b", Resolved::Absolute("http://h.test/a/b".into())),
            ("http://h.test", Resolved::Absolute("http://h.test".into())),
            ("a/%2e%2E/b/%2E", path("/shop/items/b/")),
            ("..%2f", path("/shop/items/..%2f")),
        ] {
            assert_eq!(resolve("http", base, target), resolved, "{target}");
        }
        assert_eq!(resolve("http", "/", "x"), path("/x"));
    }
}
