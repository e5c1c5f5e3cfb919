//! What the layer keeps in the store: the scope hashed, the request's fingerprint, the
//! response encoded, and a token naming the request that holds a claim.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The stored form of a scope: SHA-256 hex (empty for the global scope), so that a
/// credential used as the scope is not kept in clear.
pub(crate) fn scope_id(scope: &[u8]) -> String {
    if scope.is_empty() {
        return String::new();
    }
    hex(&Sha256::digest(scope))
}

/// A token unique to one claim, across processes: this process's id and start time, and a
/// counter.
pub(crate) fn claim_owner() -> String {
    static STARTED: OnceLock<u128> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let started = STARTED.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    format!(
        "{:x}-{started:x}-{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// What identifies a request's payload: method, path and query, body.
pub(crate) fn fingerprint(parts: &http::request::Parts, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(parts.method.as_str().as_bytes());
    hash.update(b"\n");
    hash.update(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    hash.update(b"\n");
    hash.update(body);
    hex(&hash.finalize())
}

/// Stored response: status (2 bytes), header count (4), then each header's name and
/// value (each length-prefixed, 4 bytes), then the body.
pub(crate) fn encode(status: StatusCode, headers: &http::HeaderMap, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    out.extend_from_slice(&status.as_u16().to_be_bytes());
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        for part in [name.as_str().as_bytes(), value.as_bytes()] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out.extend_from_slice(body);
    out
}

/// The response [`encode`] stored; `None` when it does not read as one.
pub(crate) fn decode(stored: &[u8]) -> Option<Response<Bytes>> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if input.len() < n {
            return None;
        }
        let (head, rest) = input.split_at(n);
        *input = rest;
        Some(head)
    }
    fn length(input: &mut &[u8]) -> Option<usize> {
        Some(u32::from_be_bytes(take(input, 4)?.try_into().ok()?) as usize)
    }
    let mut input = stored;
    let status =
        StatusCode::from_u16(u16::from_be_bytes(take(&mut input, 2)?.try_into().ok()?)).ok()?;
    let count = length(&mut input)?;
    let mut response = Response::new(Bytes::new());
    for _ in 0..count {
        let n = length(&mut input)?;
        let name = HeaderName::from_bytes(take(&mut input, n)?).ok()?;
        let n = length(&mut input)?;
        let value = HeaderValue::from_bytes(take(&mut input, n)?).ok()?;
        response.headers_mut().append(name, value);
    }
    *response.body_mut() = Bytes::copy_from_slice(input);
    *response.status_mut() = status;
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_survives_encoding() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-order", HeaderValue::from_static("7"));
        let stored = encode(StatusCode::CREATED, &headers, b"made");
        let back = decode(&stored).unwrap();
        assert_eq!(back.status(), StatusCode::CREATED);
        assert_eq!(back.headers()["x-order"], "7");
        assert_eq!(back.body().as_ref(), b"made");
        assert!(decode(&stored[..5]).is_none());
    }

    #[test]
    fn scopes_are_hashed_and_claims_unique() {
        assert_eq!(scope_id(b""), "");
        let id = scope_id(b"Bearer secret");
        assert_eq!(id.len(), 64);
        assert!(!id.contains("secret"));
        assert_ne!(claim_owner(), claim_owner());
    }
}
