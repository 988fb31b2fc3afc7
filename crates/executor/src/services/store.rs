//! VM data of one network on disk: one file per guest IP (`<ip>.vmdata`),
//! mode 0600, replaced atomically (write temp file, fsync, rename), optionally
//! sealed with AES-256-GCM (the IP is the associated data, so a file moved to
//! another VM's name does not decrypt). The in-memory copy answers the
//! metadata server; every change goes to disk before it becomes visible.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use super::vmdata::{self, VmData, VmDataSet};
use super::ServicesError;

const EXT: &str = "vmdata";
const NONCE_LEN: usize = 12;

/// Persistent, shareable VM data of one network.
pub struct MetadataStore {
    dir: PathBuf,
    cipher: Option<Aes256Gcm>,
    data: RwLock<Arc<VmDataSet>>,
}

impl std::fmt::Debug for MetadataStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataStore")
            .field("dir", &self.dir)
            .field("encrypted", &self.cipher.is_some())
            .finish()
    }
}

impl MetadataStore {
    /// Opens (creating, mode 0700) `dir` and loads every stored VM. With `key`
    /// the files are encrypted; a file that does not decrypt or parse is an
    /// error (never silently dropped).
    pub fn open(dir: impl Into<PathBuf>, key: Option<[u8; 32]>) -> Result<Self, ServicesError> {
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| ServicesError::io(format!("create {}", dir.display()), e))?;
        let cipher = key.map(|k| Aes256Gcm::new(&k.into()));
        let store = MetadataStore {
            dir,
            cipher,
            data: RwLock::new(Arc::new(VmDataSet::new())),
        };
        let mut set = VmDataSet::new();
        let rd = fs::read_dir(&store.dir)
            .map_err(|e| ServicesError::io(format!("read {}", store.dir.display()), e))?;
        for entry in rd {
            let entry = entry.map_err(|e| ServicesError::io(store.dir.display().to_string(), e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(ip) = name
                .strip_suffix(".vmdata")
                .and_then(|s| s.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            set.insert(ip, store.read_file(ip, &entry.path())?);
        }
        *store.write_lock() = Arc::new(set);
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, Arc<VmDataSet>> {
        // A panic while holding the lock cannot leave the Arc half written.
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The current data (cheap: shared snapshot).
    pub fn snapshot(&self) -> Arc<VmDataSet> {
        self.data.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One VM's data.
    pub fn get(&self, ip: Ipv4Addr) -> Option<VmData> {
        self.snapshot().get(&ip).cloned()
    }

    /// Runs a pure update on a copy of the data, writes the files that
    /// changed, then publishes the copy. On any error nothing changes in
    /// memory (files already replaced hold valid newer data and are reloaded
    /// consistently on the next open; the caller reports the failure).
    pub fn update<T>(
        &self,
        f: impl FnOnce(&mut VmDataSet) -> Result<T, ServicesError>,
    ) -> Result<T, ServicesError> {
        let mut guard = self.write_lock();
        let mut next: VmDataSet = (**guard).clone();
        let out = f(&mut next)?;
        let mut writes = Vec::new();
        for (ip, d) in next.iter() {
            if guard.get(ip) != Some(d) {
                let plain =
                    serde_json::to_vec(d).map_err(|e| ServicesError::Process(e.to_string()))?;
                writes.push((self.path(*ip), self.seal(*ip, plain)?));
            }
        }
        write_atomic_many(&writes, 0o600)?;
        for ip in guard.keys() {
            if !next.contains_key(ip) {
                let p = self.path(*ip);
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(ServicesError::io(format!("remove {}", p.display()), e)),
                }
            }
        }
        *guard = Arc::new(next);
        Ok(out)
    }

    /// The password service's acknowledgement.
    pub fn forget_password(&self, ip: Ipv4Addr) -> Result<bool, ServicesError> {
        self.update(|set| Ok(vmdata::forget_password(set, ip)))
    }

    /// Removes every file of this store (destroy-network).
    pub fn destroy(&self) -> Result<(), ServicesError> {
        self.update(|set| {
            set.clear();
            Ok(())
        })?;
        match fs::remove_dir(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ServicesError::io(
                format!("remove {}", self.dir.display()),
                e,
            )),
        }
    }

    fn path(&self, ip: Ipv4Addr) -> PathBuf {
        self.dir.join(format!("{ip}.{EXT}"))
    }

    fn seal(&self, ip: Ipv4Addr, plain: Vec<u8>) -> Result<Vec<u8>, ServicesError> {
        let Some(c) = &self.cipher else {
            return Ok(plain);
        };
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| ServicesError::Process(format!("random: {e}")))?;
        let aad = ip.to_string();
        let ct = c
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| ServicesError::Process("encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn read_file(&self, ip: Ipv4Addr, path: &Path) -> Result<VmData, ServicesError> {
        let raw =
            fs::read(path).map_err(|e| ServicesError::io(format!("read {}", path.display()), e))?;
        let plain = match &self.cipher {
            None => raw,
            Some(c) => {
                if raw.len() < NONCE_LEN {
                    return Err(ServicesError::Process(format!(
                        "{}: truncated",
                        path.display()
                    )));
                }
                let (n, ct) = raw.split_at(NONCE_LEN);
                let aad = ip.to_string();
                c.decrypt(
                    Nonce::from_slice(n),
                    Payload {
                        msg: ct,
                        aad: aad.as_bytes(),
                    },
                )
                .map_err(|_| {
                    ServicesError::Process(format!("{}: does not decrypt", path.display()))
                })?
            }
        };
        serde_json::from_slice(&plain)
            .map_err(|e| ServicesError::Process(format!("{}: {e}", path.display())))
    }
}

/// Writes `bytes` to `path` atomically and durably with `mode`: temp file in
/// the same directory, fsync, rename over the target, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ServicesError> {
    write_atomic_many(&[(path.to_path_buf(), bytes.to_vec())], mode)
}

/// Several atomic, durable replacements with one flush: temp files are
/// written first, then made durable together (one `syncfs` when there are
/// many, so 1,000 files cost one journal commit instead of 1,000), then
/// renamed, then each directory is synced once.
pub fn write_atomic_many(files: &[(PathBuf, Vec<u8>)], mode: u32) -> Result<(), ServicesError> {
    const BATCH: usize = 4;
    let mut tmps = Vec::with_capacity(files.len());
    let mut last: Option<File> = None;
    for (path, bytes) in files {
        let (tmp, f) = write_temp(path, bytes, mode)?;
        if files.len() <= BATCH {
            f.sync_data()
                .map_err(|e| ServicesError::io(format!("sync {}", tmp.display()), e))?;
        }
        last = Some(f);
        tmps.push(tmp);
    }
    if files.len() > BATCH {
        if let Some(f) = &last {
            // SAFETY: syncfs on an open file descriptor.
            if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
                return Err(ServicesError::io("syncfs", std::io::Error::last_os_error()));
            }
        }
    }
    let mut dirs: Vec<&Path> = Vec::new();
    for (tmp, (path, _)) in tmps.iter().zip(files) {
        fs::rename(tmp, path)
            .map_err(|e| ServicesError::io(format!("rename to {}", path.display()), e))?;
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    for d in dirs {
        if let Ok(df) = File::open(d) {
            let _ = df.sync_all();
        }
    }
    Ok(())
}

/// Atomic but not flushed: for files derived from persisted state (daemon
/// configurations, PID files), which are rewritten after a crash anyway.
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ServicesError> {
    let (tmp, f) = write_temp(path, bytes, mode)?;
    drop(f);
    fs::rename(&tmp, path)
        .map_err(|e| ServicesError::io(format!("rename to {}", path.display()), e))
}

fn write_temp(path: &Path, bytes: &[u8], mode: u32) -> Result<(PathBuf, File), ServicesError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let ctx = |what: &str| format!("{what} {}", tmp.display());
    let mut f: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| ServicesError::io(ctx("create"), e))?;
    f.write_all(bytes)
        .map_err(|e| ServicesError::io(ctx("write"), e))?;
    Ok((tmp, f))
}
