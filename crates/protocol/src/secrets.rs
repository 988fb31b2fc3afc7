//! Which detail and field names hold secret material: one rule for the
//! registry (hidden details, encrypted at rest, never returned) and the
//! executor (values redacted from `dump-config` answers and logs).

/// Whether `key` names a secret: `password`, `sshkey`, `executor.key`,
/// `vm_password`, or any name ending in `.key`, `.secret` or `.password`
/// (ASCII case-insensitive, surrounding blanks ignored).
pub fn is_secret_key(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    matches!(
        key.as_str(),
        "password" | "sshkey" | "executor.key" | "vm_password"
    ) || key.ends_with(".key")
        || key.ends_with(".secret")
        || key.ends_with(".password")
}

#[cfg(test)]
mod tests {
    use super::is_secret_key;

    #[test]
    fn secret_names() {
        for k in [
            "password",
            "SSHKEY",
            " executor.key ",
            "vm_password",
            "api.Secret",
            "x.password",
            "tls.key",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in ["hosts", "executor.port", "keyring", "passwords", "key"] {
            assert!(!is_secret_key(k), "{k}");
        }
    }
}
