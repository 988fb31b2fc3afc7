//! TLS: server configuration from PEM files, self-signed certificate
//! generation and the SHA-256 fingerprint the bridge pins.
//!
//! Equivalent openssl commands:
//! `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes
//!  -days 3650 -subj /CN=host1 -addext subjectAltName=DNS:host1,IP:192.0.2.10
//!  -keyout key.pem -out cert.pem` and
//! `openssl x509 -in cert.pem -outform DER | sha256sum` for the fingerprint.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::DaemonError;

fn tls_err(path: &Path, reason: impl std::fmt::Display) -> DaemonError {
    DaemonError::Tls(format!("{}: {reason}", path.display()))
}

/// Lower-case hex SHA-256 of a DER certificate (no separators).
pub fn fingerprint_der(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Reads the first (leaf) certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, DaemonError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(path, e))?;
    if certs.is_empty() {
        return Err(tls_err(path, "no certificate found"));
    }
    Ok(certs)
}

/// Fingerprint of the leaf certificate in a PEM file.
pub fn fingerprint_file(path: &Path) -> Result<String, DaemonError> {
    let certs = load_certs(path)?;
    Ok(fingerprint_der(certs[0].as_ref()))
}

/// Builds the rustls server configuration (TLS 1.2 and 1.3, ring provider).
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, DaemonError> {
    let certs = load_certs(cert)?;
    let meta = std::fs::metadata(key).map_err(|e| tls_err(key, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        log::warn!(
            "TLS key {} is readable by group/others (mode {:04o}); use chmod 0600",
            key.display(),
            meta.permissions().mode() & 0o7777
        );
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DaemonError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| DaemonError::Tls(format!("certificate/key mismatch or unusable: {e}")))
}

/// Result of [`generate_cert`].
pub struct GeneratedCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub fingerprint: String,
}

/// Writes a self-signed certificate (`cert.pem`, 0644) and its key
/// (`key.pem`, 0600) into `out_dir`. `sans` are DNS names or IP addresses;
/// `name` becomes the common name and is always a SAN.
pub fn generate_cert(
    out_dir: &Path,
    name: &str,
    sans: &[String],
) -> Result<GeneratedCert, DaemonError> {
    for value in std::iter::once(name).chain(sans.iter().map(String::as_str)) {
        let is_ip = value.parse::<std::net::IpAddr>().is_ok();
        let is_dns = !value.is_empty()
            && value.len() <= 253
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'*');
        if !is_ip && !is_dns {
            return Err(DaemonError::Tls(format!(
                "invalid name or SAN '{}': expected a DNS name or an IP address",
                netbridge_protocol::sanitize_for_message(value)
            )));
        }
    }
    let mut all = vec![name.to_string()];
    for san in sans {
        if !all.contains(san) {
            all.push(san.clone());
        }
    }
    let mut params = rcgen::CertificateParams::new(all)
        .map_err(|e| DaemonError::Tls(format!("invalid name or SAN: {e}")))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().map_err(|e| DaemonError::Tls(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| DaemonError::Tls(e.to_string()))?;
    std::fs::create_dir_all(out_dir).map_err(|e| tls_err(out_dir, e))?;
    let cert_path = out_dir.join("cert.pem");
    let key_path = out_dir.join("key.pem");
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(GeneratedCert {
        cert_path,
        key_path,
        fingerprint: fingerprint_der(cert.der().as_ref()),
    })
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), DaemonError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| tls_err(path, e))?;
    // An existing file keeps its old mode on open: set it explicitly.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| tls_err(path, e))?;
    f.write_all(data).map_err(|e| tls_err(path, e))?;
    f.sync_all().map_err(|e| tls_err(path, e))
}

/// The client address of a connection (request extension, for logs).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_cert_loads_and_fingerprint_matches_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = generate_cert(dir.path(), "host1", &["192.0.2.10".to_string()]).unwrap();
        assert_eq!(out.fingerprint.len(), 64);
        assert_eq!(fingerprint_file(&out.cert_path).unwrap(), out.fingerprint);
        let mode = std::fs::metadata(&out.key_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        server_config(&out.cert_path, &out.key_path).unwrap();
    }

    #[test]
    fn invalid_san_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = generate_cert(dir.path(), "host1", &["bad name;rm".to_string()]).err();
        assert!(err.is_some());
    }
}
