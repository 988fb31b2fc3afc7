//! HMAC-SHA256 request signing between the bridge and the executors.
//!
//! Canonical string (lines joined by `\n`):
//! `METHOD`, `PATH` (with query, as sent), `TIMESTAMP` (unix seconds),
//! `NONCE` (16-64 chars of `[A-Za-z0-9_-]`), lowercase hex SHA-256 of the body.
//! The signature is lowercase hex HMAC-SHA256 of that string with the shared
//! key from the registration detail `executor.key`, sent in the headers below.
//! Executors refuse requests older/newer than [`MAX_SKEW_SECS`] and replayed nonces.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const HEADER_TIMESTAMP: &str = "x-netbridge-timestamp";
pub const HEADER_NONCE: &str = "x-netbridge-nonce";
pub const HEADER_SIGNATURE: &str = "x-netbridge-signature";
/// Largest accepted clock difference between signer and verifier.
pub const MAX_SKEW_SECS: u64 = 30;

type HmacSha256 = Hmac<Sha256>;

/// Why a signed request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("request is not signed (missing header '{0}')")]
    Missing(&'static str),
    #[error("malformed signature header '{0}'")]
    Malformed(&'static str),
    #[error("request timestamp outside the accepted window of {MAX_SKEW_SECS} s")]
    Stale,
    #[error("signature does not match")]
    BadSignature,
    #[error("nonce was already used")]
    Replayed,
}

/// The three header values of a signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub timestamp: u64,
    pub nonce: String,
    pub signature: String,
}

fn canonical(method: &str, path: &str, timestamp: u64, nonce: &str, body: &[u8]) -> String {
    let body_hash = hex::encode(Sha256::digest(body));
    format!("{method}\n{path}\n{timestamp}\n{nonce}\n{body_hash}")
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// Signs a request with a fresh random nonce and the given timestamp.
pub fn sign(key: &[u8], method: &str, path: &str, timestamp: u64, body: &[u8]) -> Signature {
    let mut raw = [0u8; 16];
    // A failing OS random source is unrecoverable for a signer.
    getrandom::fill(&mut raw).unwrap_or_else(|e| panic!("OS random source failed: {e}"));
    let nonce = hex::encode(raw);
    sign_with_nonce(key, method, path, timestamp, &nonce, body)
}

/// Signs with a caller-chosen nonce (tests and replay checks).
pub fn sign_with_nonce(
    key: &[u8],
    method: &str,
    path: &str,
    timestamp: u64,
    nonce: &str,
    body: &[u8],
) -> Signature {
    let mut m = mac(key);
    m.update(canonical(method, path, timestamp, nonce, body).as_bytes());
    Signature {
        timestamp,
        nonce: nonce.to_string(),
        signature: hex::encode(m.finalize().into_bytes()),
    }
}

/// Length of a signature header: hex of an HMAC-SHA256.
pub const SIGNATURE_HEX_LEN: usize = 64;

/// Checks what can be checked without the body: the three headers are
/// present and well formed and the timestamp is inside the window. Returns
/// the timestamp. A verifier calls this before reading a body, so an
/// unsigned or stale request costs no body read.
pub fn check_headers(
    now: u64,
    timestamp: Option<&str>,
    nonce: Option<&str>,
    signature: Option<&str>,
) -> Result<u64, SignatureError> {
    let timestamp = timestamp.ok_or(SignatureError::Missing(HEADER_TIMESTAMP))?;
    let nonce = nonce.ok_or(SignatureError::Missing(HEADER_NONCE))?;
    let signature = signature.ok_or(SignatureError::Missing(HEADER_SIGNATURE))?;
    let timestamp: u64 = timestamp
        .parse()
        .map_err(|_| SignatureError::Malformed(HEADER_TIMESTAMP))?;
    if !(16..=64).contains(&nonce.len())
        || !nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(SignatureError::Malformed(HEADER_NONCE));
    }
    if signature.len() != SIGNATURE_HEX_LEN || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SignatureError::Malformed(HEADER_SIGNATURE));
    }
    if now.abs_diff(timestamp) > MAX_SKEW_SECS {
        return Err(SignatureError::Stale);
    }
    Ok(timestamp)
}

/// Checks header syntax, the time window and the MAC (constant time).
/// Replay protection (remembering nonces) is the verifier's job.
#[allow(clippy::too_many_arguments)] // mirrors the signed parts one to one
pub fn verify(
    key: &[u8],
    method: &str,
    path: &str,
    now: u64,
    timestamp: Option<&str>,
    nonce: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> Result<Signature, SignatureError> {
    let timestamp = check_headers(now, timestamp, nonce, signature)?;
    // check_headers refused absent headers.
    let (nonce, signature) = (nonce.unwrap_or_default(), signature.unwrap_or_default());
    let given = hex::decode(signature).map_err(|_| SignatureError::Malformed(HEADER_SIGNATURE))?;
    let mut m = mac(key);
    m.update(canonical(method, path, timestamp, nonce, body).as_bytes());
    m.verify_slice(&given)
        .map_err(|_| SignatureError::BadSignature)?;
    Ok(Signature {
        timestamp,
        nonce: nonce.to_string(),
        signature: signature.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_request_verifies_and_tampering_is_caught() {
        let s = sign(b"k1", "POST", "/v1/commands/assign-ip", 1000, b"{}");
        let ok = verify(
            b"k1",
            "POST",
            "/v1/commands/assign-ip",
            1010,
            Some("1000"),
            Some(&s.nonce),
            Some(&s.signature),
            b"{}",
        );
        assert!(ok.is_ok());
        let bad_body = verify(
            b"k1",
            "POST",
            "/v1/commands/assign-ip",
            1010,
            Some("1000"),
            Some(&s.nonce),
            Some(&s.signature),
            b"{ }",
        );
        assert_eq!(bad_body, Err(SignatureError::BadSignature));
        let bad_key = verify(
            b"k2",
            "POST",
            "/v1/commands/assign-ip",
            1010,
            Some("1000"),
            Some(&s.nonce),
            Some(&s.signature),
            b"{}",
        );
        assert_eq!(bad_key, Err(SignatureError::BadSignature));
        let stale = verify(
            b"k1",
            "POST",
            "/v1/commands/assign-ip",
            1031,
            Some("1000"),
            Some(&s.nonce),
            Some(&s.signature),
            b"{}",
        );
        assert_eq!(stale, Err(SignatureError::Stale));
        let unsigned = verify(b"k1", "POST", "/", 1000, None, None, None, b"");
        assert_eq!(unsigned, Err(SignatureError::Missing(HEADER_TIMESTAMP)));
    }

    #[test]
    fn headers_are_checked_without_the_body() {
        let s = sign(b"k1", "POST", "/v1/commands/assign-ip", 1000, b"{}");
        let check = |ts: &str, nonce: &str, sig: &str| {
            check_headers(1010, Some(ts), Some(nonce), Some(sig))
        };
        assert_eq!(check("1000", &s.nonce, &s.signature), Ok(1000));
        assert_eq!(
            check_headers(1010, Some("1000"), None, Some(&s.signature)),
            Err(SignatureError::Missing(HEADER_NONCE))
        );
        assert_eq!(
            check("10x0", &s.nonce, &s.signature),
            Err(SignatureError::Malformed(HEADER_TIMESTAMP))
        );
        assert_eq!(
            check("1000", "short", &s.signature),
            Err(SignatureError::Malformed(HEADER_NONCE))
        );
        // A signature must be the 64 hex digits of an HMAC-SHA256.
        assert_eq!(
            check("1000", &s.nonce, &s.signature[..62]),
            Err(SignatureError::Malformed(HEADER_SIGNATURE))
        );
        assert_eq!(
            check("1000", &s.nonce, &"g".repeat(64)),
            Err(SignatureError::Malformed(HEADER_SIGNATURE))
        );
        assert_eq!(
            check("900", &s.nonce, &s.signature),
            Err(SignatureError::Stale)
        );
    }
}
