//! Request paths normalised before routing: dot segments removed (RFC 3986 §5.2.4), so
//! `/payment/../admin` is routed, and forwarded, as `/admin`. A segment that is a dot
//! segment once percent-decoded (`%2e%2e`) counts as one (`%2E` is an unreserved
//! character, the same as `.`, §6.2.2.2). Encoded slashes (`%2F`) are kept as they are:
//! they do not separate segments, for routing or for the upstream.

/// The URI with a normalised path, or `None` when it is already normal (the common case:
/// nothing is allocated).
pub(crate) fn normalise(uri: &http::Uri) -> Option<Result<http::Uri, &'static str>> {
    let path = uri.path();
    if !path.starts_with('/') || !has_dot_segment(path) {
        return None;
    }
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match dots(segment) {
            Some(1) => {}
            Some(2) => {
                kept.pop();
            }
            _ => {
                kept.push(segment);
                continue;
            }
        }
        // A dot segment at the end leaves a directory: `/a/b/..` is `/a/`.
        if i == last {
            kept.push("");
        }
    }
    let mut normal = String::with_capacity(path.len());
    for segment in &kept {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    if let Some(query) = uri.query() {
        normal.push('?');
        normal.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(match http::uri::PathAndQuery::try_from(normal) {
        Ok(p) => p,
        Err(_) => return Some(Err("malformed request path")),
    });
    Some(http::Uri::from_parts(parts).map_err(|_| "malformed request path"))
}

/// 1 for `.`, 2 for `..` (either possibly percent-encoded), else `None`.
fn dots(segment: &str) -> Option<usize> {
    let mut count = 0;
    let mut rest = segment.as_bytes();
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3
            && rest[0] == b'%'
            && rest[1] == b'2'
            && rest[2].eq_ignore_ascii_case(&b'e')
        {
            rest = &rest[3..];
        } else {
            return None;
        }
        count += 1;
    }
    (1..=2).contains(&count).then_some(count)
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/')
        .skip(1)
        .any(|segment| dots(segment).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(path: &str) -> String {
        let uri: http::Uri = path.parse().unwrap();
        match normalise(&uri) {
            None => uri.to_string(),
            Some(result) => result.unwrap().to_string(),
        }
    }

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_says() {
        for (given, expected) in [
            ("/payment/../admin", "/admin"),
            ("/payment/%2e%2e/admin", "/admin"),
            ("/payment/%2E./admin?x=1", "/admin?x=1"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/..", "/"),
            ("/a/...", "/a/..."),
            ("/a/.b/c", "/a/.b/c"),
            ("/a%2F..%2Fb", "/a%2F..%2Fb"),
            ("/plain/path", "/plain/path"),
        ] {
            assert_eq!(normal(given), expected, "{given}");
        }
    }

    #[test]
    fn a_normal_path_is_left_alone_without_allocating() {
        let uri: http::Uri = "/payment/orders/42?full=1".parse().unwrap();
        assert!(normalise(&uri).is_none());
    }
}
