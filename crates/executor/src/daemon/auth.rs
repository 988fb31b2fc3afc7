//! Request authentication: the shared HMAC key (reloaded when its file
//! changes, so rotation needs no restart) and the replay cache.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use netbridge_protocol::signing::{self, SignatureError, MAX_SKEW_SECS};

use super::DaemonError;

/// Shortest accepted key, so that a truncated file is noticed.
pub const MIN_KEY_LEN: usize = 16;
/// Most nonces remembered at once; beyond it requests are refused rather than
/// forgetting nonces that could still be replayed. A nonce lives ~31 s, so
/// this allows ~30,000 signed requests/s sustained; entries are 128-bit
/// keyed digests, not the strings (~90 MB when full, with table growth).
pub const NONCE_CACHE_CAPACITY: usize = 1_000_000;

/// Why a request was not authenticated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("executor key is unavailable")]
    KeyUnavailable,
    #[error("too many requests in the replay window")]
    CacheFull,
    /// The nonce cache does not survive a restart, so requests signed before
    /// this process started could be replays: the client must re-sign.
    #[error("request was signed before the executor started; sign it again")]
    BeforeStart,
}

impl AuthError {
    /// Label for the `reason` of the auth-failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Signature(SignatureError::Missing(_)) => "unsigned",
            AuthError::Signature(SignatureError::Malformed(_)) => "malformed",
            AuthError::Signature(SignatureError::Stale) => "stale",
            AuthError::Signature(SignatureError::BadSignature) => "bad_signature",
            AuthError::Signature(SignatureError::Replayed) => "replayed",
            AuthError::KeyUnavailable => "key_unavailable",
            AuthError::CacheFull => "replay_cache_full",
            AuthError::BeforeStart => "before_start",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::Signature(_) | AuthError::BeforeStart => 401,
            AuthError::KeyUnavailable | AuthError::CacheFull => 503,
        }
    }
}

/// The key is the file's bytes with trailing line breaks and spaces removed:
/// the same string as the registration detail `executor.key` (a hex string is
/// used as text, not decoded, exactly as the bridge signs with it).
pub fn parse_key(raw: &[u8]) -> Result<Vec<u8>, String> {
    let end = raw
        .iter()
        .rposition(|b| !matches!(b, b'\n' | b'\r' | b' ' | b'\t'))
        .map_or(0, |i| i + 1);
    let key = &raw[..end];
    if key.len() < MIN_KEY_LEN {
        return Err(format!("key is shorter than {MIN_KEY_LEN} bytes"));
    }
    Ok(key.to_vec())
}

/// Loads a key file, refusing files readable or writable by group/others.
pub fn load_key_file(path: &Path) -> Result<(Vec<u8>, FileStamp), DaemonError> {
    let fail = |reason: String| DaemonError::Key {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(fail(format!(
            "mode {:04o} is too open; use chmod 0600",
            meta.mode() & 0o7777
        )));
    }
    let raw = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let key = parse_key(&raw).map_err(fail)?;
    Ok((key, FileStamp::of(&meta)))
}

/// Writes a new random key (32 bytes as 64 hex characters) to `path`, mode
/// 0600. An existing file is never replaced: rotating a key means writing a
/// new file and renaming it over the old one on purpose.
pub fn generate_key_file(path: &Path) -> Result<(), DaemonError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |reason: String| DaemonError::Key {
        path: path.display().to_string(),
        reason,
    };
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| fail(format!("no randomness: {e}")))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                fail("exists; a key file is never overwritten".into())
            }
            _ => fail(e.to_string()),
        })?;
    file.write_all(format!("{}\n", hex::encode(bytes)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| fail(e.to_string()))
}

/// What identifies one version of the key file (a rename or a rewrite changes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    ino: u64,
    dev: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            ino: meta.ino(),
            dev: meta.dev(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }
}

struct LoadedKey {
    /// `None` when the current file version is unusable (fail closed).
    key: Option<Vec<u8>>,
    stamp: Option<FileStamp>,
}

/// The shared key, re-read whenever its file changes.
pub struct KeyStore {
    path: PathBuf,
    current: RwLock<LoadedKey>,
}

impl KeyStore {
    /// Opens the key file; an unusable file at start is a configuration error.
    pub fn open(path: &Path) -> Result<KeyStore, DaemonError> {
        let (key, stamp) = load_key_file(path)?;
        Ok(KeyStore {
            path: path.to_path_buf(),
            current: RwLock::new(LoadedKey {
                key: Some(key),
                stamp: Some(stamp),
            }),
        })
    }

    /// The key in force now; re-reads the file when its stamp changed. A
    /// replaced file that is unusable (bad mode, too short) refuses every
    /// request until fixed instead of silently keeping the old key.
    pub fn key(&self) -> Option<Vec<u8>> {
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .map(|m| FileStamp::of(&m));
        if let Ok(guard) = self.current.read() {
            if guard.stamp == stamp && stamp.is_some() {
                return guard.key.clone();
            }
        }
        self.reload()
    }

    /// Forces a re-read (SIGHUP).
    pub fn reload(&self) -> Option<Vec<u8>> {
        let loaded = match load_key_file(&self.path) {
            Ok((key, stamp)) => {
                log::info!("loaded executor key from {}", self.path.display());
                LoadedKey {
                    key: Some(key),
                    stamp: Some(stamp),
                }
            }
            Err(e) => {
                log::error!("{e}; refusing requests until the key file is fixed");
                LoadedKey {
                    key: None,
                    stamp: std::fs::metadata(&self.path)
                        .ok()
                        .map(|m| FileStamp::of(&m)),
                }
            }
        };
        let key = loaded.key.clone();
        match self.current.write() {
            Ok(mut guard) => *guard = loaded,
            Err(poisoned) => *poisoned.into_inner() = loaded,
        }
        key
    }
}

/// Nonces seen within the replay window.
pub struct NonceCache {
    inner: Mutex<NonceInner>,
    capacity: usize,
    keys: (
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    ),
}

/// Nonces are kept as 128-bit digests under two per-process random SipHash
/// keys: compact, and only authenticated requests reach the cache, so a
/// (vanishingly unlikely) collision could only refuse a request as replayed.
#[derive(Default)]
struct NonceInner {
    seen: HashMap<u128, u64>,
    /// (expiry, nonce digest) in insertion order; expiries are nearly
    /// monotonic, so pruning from the front is enough.
    order: VecDeque<(u64, u128)>,
}

impl NonceCache {
    pub fn new(capacity: usize) -> NonceCache {
        NonceCache {
            inner: Mutex::new(NonceInner::default()),
            capacity,
            keys: (
                std::collections::hash_map::RandomState::new(),
                std::collections::hash_map::RandomState::new(),
            ),
        }
    }

    fn digest(&self, nonce: &str) -> u128 {
        use std::hash::BuildHasher;
        let high = self.keys.0.hash_one(nonce);
        let low = self.keys.1.hash_one(nonce);
        (u128::from(high) << 64) | u128::from(low)
    }

    /// Records a nonce; `Replayed` when it is already known. `timestamp` is the
    /// request's; the nonce is kept until that request could no longer pass
    /// the time window.
    pub fn check_and_insert(&self, nonce: &str, timestamp: u64, now: u64) -> Result<(), AuthError> {
        let digest = self.digest(nonce);
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        while let Some((expiry, _)) = inner.order.front() {
            if *expiry >= now {
                break;
            }
            if let Some((_, old)) = inner.order.pop_front() {
                if inner.seen.get(&old).is_some_and(|e| *e < now) {
                    inner.seen.remove(&old);
                }
            }
        }
        if inner.seen.contains_key(&digest) {
            return Err(SignatureError::Replayed.into());
        }
        if inner.seen.len() >= self.capacity {
            return Err(AuthError::CacheFull);
        }
        let expiry = timestamp.max(now) + MAX_SKEW_SECS + 1;
        inner.seen.insert(digest, expiry);
        inner.order.push_back((expiry, digest));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.seen.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The signed-request check: key, MAC, window, then replay.
pub struct Authenticator {
    keys: KeyStore,
    nonces: NonceCache,
    /// Unix seconds of the process start; older signatures are refused.
    not_before: u64,
}

/// Header values of a request, as received.
pub struct SignedParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub timestamp: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub body: &'a [u8],
}

impl Authenticator {
    /// `started` is the process start (unix seconds): signatures made
    /// before it are refused, closing the replay window a restart would
    /// otherwise open (the nonce cache lives in memory).
    pub fn new(keys: KeyStore, started: u64) -> Authenticator {
        Authenticator {
            keys,
            nonces: NonceCache::new(NONCE_CACHE_CAPACITY),
            not_before: started,
        }
    }

    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// What can be refused before the body is read: absent, malformed or
    /// stale signature headers, a signature older than this process, or an
    /// unusable key. [`Authenticator::check`] still does the whole check.
    pub fn precheck(&self, parts: &SignedParts<'_>, now: u64) -> Result<(), AuthError> {
        let timestamp = signing::check_headers(now, parts.timestamp, parts.nonce, parts.signature)?;
        if timestamp < self.not_before {
            return Err(AuthError::BeforeStart);
        }
        self.keys.key().ok_or(AuthError::KeyUnavailable)?;
        Ok(())
    }

    pub fn check(&self, parts: &SignedParts<'_>, now: u64) -> Result<(), AuthError> {
        // Missing headers are reported as such even when the key is broken.
        if parts.timestamp.is_none() || parts.nonce.is_none() || parts.signature.is_none() {
            let missing = if parts.timestamp.is_none() {
                signing::HEADER_TIMESTAMP
            } else if parts.nonce.is_none() {
                signing::HEADER_NONCE
            } else {
                signing::HEADER_SIGNATURE
            };
            return Err(SignatureError::Missing(missing).into());
        }
        let key = self.keys.key().ok_or(AuthError::KeyUnavailable)?;
        let sig = signing::verify(
            &key,
            parts.method,
            parts.path,
            now,
            parts.timestamp,
            parts.nonce,
            parts.signature,
            parts.body,
        )?;
        if sig.timestamp < self.not_before {
            return Err(AuthError::BeforeStart);
        }
        // Only authentic requests reach the cache, so it cannot be flooded
        // by strangers.
        self.nonces.check_and_insert(&sig.nonce, sig.timestamp, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_is_private_loadable_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("executor.hmac");
        generate_key_file(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (key, _) = load_key_file(&path).unwrap();
        assert_eq!(key.len(), 64);
        assert!(key.iter().all(u8::is_ascii_hexdigit));
        let err = generate_key_file(&path).unwrap_err().to_string();
        assert!(err.contains("never overwritten"), "{err}");
        assert_eq!(load_key_file(&path).unwrap().0, key);
    }
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn write_key(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn parts<'a>(s: &'a signing::Signature, ts: &'a str, body: &'a [u8]) -> SignedParts<'a> {
        SignedParts {
            method: "POST",
            path: "/v1/commands/assign-ip",
            timestamp: Some(ts),
            nonce: Some(&s.nonce),
            signature: Some(&s.signature),
            body,
        }
    }

    #[test]
    fn key_text_is_trimmed_and_short_keys_refused() {
        assert_eq!(
            parse_key(b"0123456789abcdef0123\n").unwrap(),
            b"0123456789abcdef0123"
        );
        assert!(parse_key(b"short\n")
            .unwrap_err()
            .contains("shorter than 16"));
    }

    #[test]
    fn open_key_file_mode_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_key(dir.path(), "k", "0123456789abcdef0123", 0o644);
        let err = KeyStore::open(&path).err().unwrap();
        assert!(err.to_string().contains("0644"), "{err}");
    }

    #[test]
    fn signed_request_passes_once_and_replay_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_key(dir.path(), "k", "0123456789abcdef0123\n", 0o600);
        let auth = Authenticator::new(KeyStore::open(&path).unwrap(), 1000);
        let s = signing::sign(
            b"0123456789abcdef0123",
            "POST",
            "/v1/commands/assign-ip",
            1000,
            b"{}",
        );
        assert_eq!(auth.check(&parts(&s, "1000", b"{}"), 1005), Ok(()));
        assert_eq!(
            auth.check(&parts(&s, "1000", b"{}"), 1006),
            Err(AuthError::Signature(SignatureError::Replayed))
        );
        let wrong = signing::sign(
            b"another-key-entirely",
            "POST",
            "/v1/commands/assign-ip",
            1000,
            b"{}",
        );
        let err = auth.check(&parts(&wrong, "1000", b"{}"), 1005).unwrap_err();
        assert_eq!(err.reason(), "bad_signature");
        assert_eq!(err.http_status(), 401);
    }

    #[test]
    fn replaced_key_file_takes_effect_without_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_key(dir.path(), "k", "old-key-0123456789", 0o600);
        let auth = Authenticator::new(KeyStore::open(&path).unwrap(), 0);
        let tmp = write_key(dir.path(), "k.new", "new-key-0123456789", 0o600);
        std::fs::rename(&tmp, &path).unwrap();
        let old = signing::sign(
            b"old-key-0123456789",
            "POST",
            "/v1/commands/assign-ip",
            50,
            b"",
        );
        assert_eq!(
            auth.check(&parts(&old, "50", b""), 50),
            Err(AuthError::Signature(SignatureError::BadSignature))
        );
        let new = signing::sign(
            b"new-key-0123456789",
            "POST",
            "/v1/commands/assign-ip",
            50,
            b"",
        );
        assert_eq!(auth.check(&parts(&new, "50", b""), 50), Ok(()));
        // A replacement with a too-open mode fails closed.
        let tmp = write_key(dir.path(), "k.bad", "bad-key-0123456789", 0o644);
        std::fs::rename(&tmp, &path).unwrap();
        let s = signing::sign(
            b"bad-key-0123456789",
            "POST",
            "/v1/commands/assign-ip",
            50,
            b"",
        );
        assert_eq!(
            auth.check(&parts(&s, "50", b""), 50),
            Err(AuthError::KeyUnavailable)
        );
    }

    #[test]
    fn precheck_refuses_without_the_body_and_passes_what_check_then_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_key(dir.path(), "k", "0123456789abcdef0123", 0o600);
        let auth = Authenticator::new(KeyStore::open(&path).unwrap(), 1000);
        let s = signing::sign(
            b"0123456789abcdef0123",
            "POST",
            "/v1/commands/assign-ip",
            1000,
            b"{}",
        );
        let headers_only = |ts: &'static str| SignedParts {
            body: b"",
            ..parts(&s, ts, b"")
        };
        assert_eq!(auth.precheck(&headers_only("1000"), 1005), Ok(()));
        assert_eq!(
            auth.precheck(&headers_only("1000"), 1100),
            Err(AuthError::Signature(SignatureError::Stale))
        );
        let unsigned = SignedParts {
            timestamp: None,
            ..headers_only("1000")
        };
        assert_eq!(
            auth.precheck(&unsigned, 1005).unwrap_err().reason(),
            "unsigned"
        );
        // The precheck does not consume the nonce: the full check passes.
        assert_eq!(auth.check(&parts(&s, "1000", b"{}"), 1005), Ok(()));
    }

    #[test]
    fn signatures_older_than_the_process_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_key(dir.path(), "k", "0123456789abcdef0123", 0o600);
        let auth = Authenticator::new(KeyStore::open(&path).unwrap(), 1000);
        let s = signing::sign(
            b"0123456789abcdef0123",
            "POST",
            "/v1/commands/assign-ip",
            999,
            b"",
        );
        assert_eq!(
            auth.check(&parts(&s, "999", b""), 1001),
            Err(AuthError::BeforeStart)
        );
    }

    #[test]
    fn nonce_cache_forgets_expired_and_is_bounded() {
        let cache = NonceCache::new(2);
        cache
            .check_and_insert("aaaaaaaaaaaaaaaa", 100, 100)
            .unwrap();
        cache
            .check_and_insert("bbbbbbbbbbbbbbbb", 100, 100)
            .unwrap();
        assert_eq!(
            cache.check_and_insert("cccccccccccccccc", 100, 100),
            Err(AuthError::CacheFull)
        );
        // After the window the old nonces are gone (and could not pass the
        // time check any more anyway).
        cache
            .check_and_insert("cccccccccccccccc", 200, 200)
            .unwrap();
        assert_eq!(cache.len(), 1);
    }
}
