//! Hidden details and their encryption at rest.
//!
//! # Which details are hidden
//!
//! A detail is *hidden* when its key, compared case-insensitively, is
//! `password`, `sshkey` or `executor.key`, or ends in `.key`, `.secret` or
//! `.password`. The rule depends on the key only, so a key is hidden or visible
//! wherever it appears (extension or registration details).
//!
//! Hidden details are never returned by the API, never logged and never put in
//! an error text. They are stored encrypted with AES-256-GCM: a fresh random
//! 96-bit nonce per value, and associated data naming the owning row and the
//! key, so a ciphertext copied onto another row or key fails to decrypt.
//!
//! # Key file
//!
//! 32 random bytes, created with mode 0600 on first use. A key file that group
//! or others may access is refused rather than silently used.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};

use super::RegistryError;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// Whether a detail key names secret material: the protocol's one rule.
pub fn is_hidden_key(key: &str) -> bool {
    netbridge_protocol::secrets::is_secret_key(key)
}

/// A decrypted secret value. `Debug`/`Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The plain value, for internal use (e.g. signing executor requests).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// AES-256-GCM sealing of detail values.
pub struct Cipher {
    aead: Aes256Gcm,
}

impl Cipher {
    /// Loads the key file, creating it (mode 0600, 32 random bytes) if absent.
    pub fn load_or_create(path: &Path) -> Result<Cipher, RegistryError> {
        let shown = path.display();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                RegistryError::KeyFile(format!("cannot create directory for key file {shown}: {e}"))
            })?;
        }
        if !path.exists() {
            if let Some(cipher) = create_key_file(path)? {
                return Ok(cipher);
            }
        }
        let mut file = OpenOptions::new()
            .read(true)
            .open(path)
            .map_err(|e| RegistryError::KeyFile(format!("cannot open key file {shown}: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| RegistryError::KeyFile(format!("cannot stat key file {shown}: {e}")))?;
        if !meta.is_file() {
            return Err(RegistryError::KeyFile(format!(
                "key file {shown} is not a regular file"
            )));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(RegistryError::KeyFile(format!(
                "key file {shown} is accessible by group or others (mode {:o}); refusing to use it, chmod 600 it",
                meta.permissions().mode() & 0o777
            )));
        }
        let mut key = Vec::with_capacity(KEY_LEN + 1);
        (&mut file)
            .take(KEY_LEN as u64 + 1)
            .read_to_end(&mut key)
            .map_err(|e| RegistryError::KeyFile(format!("cannot read key file {shown}: {e}")))?;
        if key.len() != KEY_LEN {
            return Err(RegistryError::KeyFile(format!(
                "key file {shown} must hold exactly {KEY_LEN} bytes"
            )));
        }
        Ok(Cipher::from_key(&key))
    }

    /// Loads an existing key file (never creates one): for processes that
    /// only decrypt what a management server sealed.
    pub fn load_existing(path: &Path) -> Result<Cipher, RegistryError> {
        if !path.exists() {
            return Err(RegistryError::KeyFile(format!(
                "key file {} does not exist; copy it from a management server of this database",
                path.display()
            )));
        }
        Cipher::load_or_create(path)
    }

    fn from_key(key: &[u8]) -> Cipher {
        Cipher {
            aead: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)),
        }
    }

    /// `nonce || ciphertext+tag`, bound to `aad`.
    pub fn seal(&self, aad: &str, plaintext: &str) -> Result<Vec<u8>, RegistryError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|e| RegistryError::Secret(format!("no randomness for nonce: {e}")))?;
        let sealed = self
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| RegistryError::Secret("encryption failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Reverses [`Cipher::seal`]; fails when the blob or its binding was altered.
    pub fn open(&self, aad: &str, blob: &[u8]) -> Result<Secret, RegistryError> {
        if blob.len() < NONCE_LEN + 16 {
            return Err(RegistryError::Secret("stored secret is truncated".into()));
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let plain = self
            .aead
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| {
                RegistryError::Secret(
                    "stored secret failed authentication (wrong key file or altered data)".into(),
                )
            })?;
        String::from_utf8(plain)
            .map(Secret)
            .map_err(|_| RegistryError::Secret("stored secret is not UTF-8".into()))
    }
}

/// Writes a fresh key to a private temporary file and links it into place,
/// so a concurrent opener sees either no key file or a complete one.
/// `None` when another process created it first.
fn create_key_file(path: &Path) -> Result<Option<Cipher>, RegistryError> {
    let shown = path.display();
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key)
        .map_err(|e| RegistryError::Secret(format!("no randomness for key file {shown}: {e}")))?;
    let mut salt = [0u8; 8];
    getrandom::fill(&mut salt)
        .map_err(|e| RegistryError::Secret(format!("no randomness for key file {shown}: {e}")))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}", hex::encode(salt)));
    let tmp = std::path::PathBuf::from(tmp_name);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| file.write_all(&key).and_then(|()| file.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(RegistryError::KeyFile(format!(
            "cannot write key file {shown}: {e}"
        )));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            log::info!("created secret key file {shown}");
            Ok(Some(Cipher::from_key(&key)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(RegistryError::KeyFile(format!(
            "cannot create key file {shown}: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_key_rule() {
        for k in [
            "password",
            "PASSWORD",
            "sshkey",
            "executor.key",
            "Executor.Key",
            "api.key",
            "db.secret",
            "admin.password",
        ] {
            assert!(is_hidden_key(k), "{k}");
        }
        for k in [
            "hosts",
            "executor.port",
            "keyring",
            "key",
            "secretary",
            "executor.fingerprint",
        ] {
            assert!(!is_hidden_key(k), "{k}");
        }
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/k");
        let c = Cipher::load_or_create(&path).unwrap();
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let blob = c.seal("ext:a:password", "hunter2").unwrap();
        assert!(!blob.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(c.open("ext:a:password", &blob).unwrap().expose(), "hunter2");
        assert!(c.open("ext:b:password", &blob).is_err());
        // Same key reloaded decrypts; nonces differ per value.
        let c2 = Cipher::load_or_create(&path).unwrap();
        assert_eq!(
            c2.open("ext:a:password", &blob).unwrap().expose(),
            "hunter2"
        );
        assert_ne!(c.seal("x", "v").unwrap(), c.seal("x", "v").unwrap());
        assert_eq!(
            format!("{:?}", Secret::new("hunter2")),
            "Secret(<redacted>)"
        );
    }

    #[test]
    fn concurrent_first_use_agrees_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let ciphers: Vec<Cipher> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| Cipher::load_or_create(&path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let blob = ciphers[0].seal("a", "v").unwrap();
        for c in &ciphers {
            assert_eq!(c.open("a", &blob).unwrap().expose(), "v");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn loose_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        Cipher::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = Cipher::load_or_create(&path).err().unwrap().to_string();
        assert!(err.contains("accessible by group or others"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        assert!(Cipher::load_or_create(&path).is_err());
    }
}
