//! The HTTP door (`netbridge serve`): CloudStack's API wire format.
//!
//! `GET`/`POST` on `/client/api` (or `/`), parameters in the query string or
//! an `application/x-www-form-urlencoded` body, `command=…`, `response=json`,
//! `apiKey` and an HMAC-SHA1 `signature` checked the way CloudStack's
//! `ApiServer.verifyRequest` checks it, so unmodified CloudStack API clients
//! (CloudMonkey, the Python `cs` client) work against it. Admin key pairs live
//! in a local TOML keys file that must be private to its owner.
//!
//! Parameter handling follows CloudStack: the first value of a repeated name
//! wins, names are case-insensitive (the part before `[` of a map parameter is
//! lower-cased, the field after it is kept), values with ASCII control
//! characters are refused.

use std::fmt;
use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;

use super::{codes, Api, ApiError, Params};
use crate::registry::Registry;
use netbridge_protocol::sanitize_for_message;

/// Default listen address: CloudStack's integration API port, loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8096";
/// Default request body limit.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// File name of the keys file inside the state directory.
pub const KEYS_FILE_NAME: &str = "api-keys.toml";
/// CloudStack's text for every authentication failure (HTTP 401). One text
/// for all causes, so a caller learns nothing about which check failed.
pub const AUTH_ERROR_TEXT: &str = "unable to verify user credentials and/or request signature";
/// HTTP status and error code of an authentication failure.
pub const AUTH_ERROR_CODE: u16 = 401;

/// Largest keys file we read; a real one is a few hundred bytes per key.
const MAX_KEYS_FILE_BYTES: u64 = 1024 * 1024;

pub mod wire;

/// Parameters that steer the transport and never reach the dispatcher.
const TRANSPORT_PARAMS: &[&str] = &[
    "command",
    "response",
    "apikey",
    "signature",
    "signatureversion",
    "expires",
    "sessionkey",
    "_",
];

/// Setup errors of the HTTP door (keys file, listener). Problems with a single
/// request are answered as CloudStack API errors instead.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("keys file {path}: {reason}")]
    KeysFile { path: String, reason: String },
    #[error(
        "keys file {path} must not be accessible by group or others (mode {mode:04o}); run: chmod 600 {path}"
    )]
    KeysFileMode { path: String, mode: u32 },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot generate a key: {0}")]
    Random(String),
    #[error("invalid key name '{0}': use 1-64 characters from [A-Za-z0-9._-]")]
    KeyName(String),
    #[error("API keys in the store {location}: {reason}")]
    StoredKeys { location: String, reason: String },
}

fn keys_error(path: &Path, reason: impl Into<String>) -> HttpError {
    HttpError::KeysFile {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------
// Keys file
// ---------------------------------------------------------------------------

/// One admin key pair. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Free label shown in logs instead of the key itself.
    pub name: String,
    pub apikey: String,
    secretkey: String,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("apikey", &self.apikey)
            .field("secretkey", &"<hidden>")
            .finish()
    }
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysDoc {
    #[serde(default, rename = "key")]
    keys: Vec<ApiKey>,
}

/// The admin keys accepted by the server.
#[derive(Debug, Default, Clone)]
pub struct KeyStore {
    keys: Vec<ApiKey>,
}

/// A freshly created key pair; the secret is shown to the operator once.
#[derive(Clone, Serialize)]
pub struct NewKey {
    pub name: String,
    pub apikey: String,
    pub secretkey: String,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("name", &self.name)
            .field("apikey", &self.apikey)
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// Builds a store from key pairs (tests, embedding).
    pub fn from_pairs(pairs: &[(&str, &str, &str)]) -> KeyStore {
        KeyStore {
            keys: pairs
                .iter()
                .map(|(name, apikey, secretkey)| ApiKey {
                    name: name.to_string(),
                    apikey: apikey.to_string(),
                    secretkey: secretkey.to_string(),
                })
                .collect(),
        }
    }

    /// Loads the keys file; refuses a missing, unreadable, empty or
    /// group/world-accessible one.
    pub fn load(path: &Path) -> Result<KeyStore, HttpError> {
        match read_keys_doc(path)? {
            None => Err(keys_error(
                path,
                "not found; create a key with `netbridge keys create`",
            )),
            Some(doc) if doc.keys.is_empty() => Err(keys_error(
                path,
                "contains no keys; create one with `netbridge keys create`",
            )),
            Some(doc) => Ok(KeyStore { keys: doc.keys }),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Names and api keys (never secrets), for listing.
    pub fn public_view(&self) -> Vec<(String, String)> {
        self.keys
            .iter()
            .map(|k| (k.name.clone(), k.apikey.clone()))
            .collect()
    }

    fn find(&self, apikey: &str) -> Option<&ApiKey> {
        self.keys.iter().find(|k| k.apikey == apikey)
    }
}

impl KeyStore {
    /// The keys held by the store (shared by every management server on
    /// it); refuses a store without keys.
    pub fn from_registry(registry: &Registry) -> Result<KeyStore, HttpError> {
        let stored_error = |reason: String| HttpError::StoredKeys {
            location: registry.location().to_string(),
            reason,
        };
        let keys = registry
            .api_keys()
            .map_err(|e| stored_error(e.to_string()))?;
        if keys.is_empty() {
            return Err(stored_error(
                "none; create one with `netbridge keys create`".into(),
            ));
        }
        Ok(KeyStore {
            keys: keys
                .into_iter()
                .map(|k| ApiKey {
                    name: k.name,
                    apikey: k.apikey,
                    secretkey: k.secretkey.expose().to_string(),
                })
                .collect(),
        })
    }
}

/// Generates a new admin key pair into the store.
pub fn create_stored_key(registry: &Registry, name: &str) -> Result<NewKey, HttpError> {
    if !valid_key_name(name) {
        return Err(HttpError::KeyName(sanitize_for_message(name)));
    }
    let new = NewKey {
        name: name.to_string(),
        apikey: random_token()?,
        secretkey: random_token()?,
    };
    registry
        .add_api_key(&new.name, &new.apikey, &new.secretkey)
        .map_err(|e| HttpError::StoredKeys {
            location: registry.location().to_string(),
            reason: e.to_string(),
        })?;
    Ok(new)
}

/// Reads and validates the keys file; `None` when it does not exist.
fn read_keys_doc(path: &Path) -> Result<Option<KeysDoc>, HttpError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(keys_error(path, e.to_string())),
    };
    // Check the opened file itself, so a swap between check and read is moot.
    let meta = file
        .metadata()
        .map_err(|e| keys_error(path, e.to_string()))?;
    if !meta.is_file() {
        return Err(keys_error(path, "not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(HttpError::KeysFileMode {
            path: path.display().to_string(),
            mode,
        });
    }
    if meta.len() > MAX_KEYS_FILE_BYTES {
        return Err(keys_error(path, "larger than 1 MiB"));
    }
    let mut text = String::new();
    file.take(MAX_KEYS_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| keys_error(path, e.to_string()))?;
    let doc: KeysDoc = toml::from_str(&text).map_err(|e| {
        // toml's message quotes the offending line, which may hold a secret.
        let span = e
            .span()
            .map(|s| format!(" at byte {}", s.start))
            .unwrap_or_default();
        keys_error(
            path,
            format!("invalid TOML{span}: expected [[key]] tables with name, apikey and secretkey"),
        )
    })?;
    let mut seen = std::collections::HashSet::new();
    for (i, key) in doc.keys.iter().enumerate() {
        if key.apikey.is_empty() || key.secretkey.is_empty() {
            return Err(keys_error(
                path,
                format!("key #{} has an empty apikey or secretkey", i + 1),
            ));
        }
        if !seen.insert(key.apikey.as_str()) {
            return Err(keys_error(
                path,
                format!("key #{} repeats an apikey", i + 1),
            ));
        }
    }
    Ok(Some(doc))
}

fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn random_token() -> Result<String, HttpError> {
    let mut buf = [0u8; 64];
    getrandom::fill(&mut buf).map_err(|e| HttpError::Random(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

/// Generates a new admin key pair and appends it to the keys file (created
/// with mode 0600, its directory with 0700, written atomically).
pub fn create_key(path: &Path, name: &str) -> Result<NewKey, HttpError> {
    if !valid_key_name(name) {
        return Err(HttpError::KeyName(sanitize_for_message(name)));
    }
    let mut doc = read_keys_doc(path)?.unwrap_or_default();
    if doc.keys.iter().any(|k| k.name == name) {
        return Err(keys_error(
            path,
            format!("a key named '{name}' already exists"),
        ));
    }
    let new = NewKey {
        name: name.to_string(),
        apikey: random_token()?,
        secretkey: random_token()?,
    };
    doc.keys.push(ApiKey {
        name: new.name.clone(),
        apikey: new.apikey.clone(),
        secretkey: new.secretkey.clone(),
    });
    let text = toml::to_string(&doc).map_err(|e| keys_error(path, e.to_string()))?;
    write_private_atomically(path, text.as_bytes())?;
    Ok(new)
}

fn write_private_atomically(path: &Path, bytes: &[u8]) -> Result<(), HttpError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| keys_error(path, format!("cannot create directory: {e}")))?;
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| keys_error(path, "not a file path"))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(keys_error(path, format!("cannot write: {e}")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Wire format: decoding, signing, verification
// ---------------------------------------------------------------------------

/// Decodes `application/x-www-form-urlencoded` text (also query strings) into
/// name/value pairs in order. `+` is a space; invalid UTF-8 is refused.
pub fn parse_form(input: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for piece in input.split(|b| *b == b'&') {
        if piece.is_empty() {
            continue;
        }
        let (name, value) = match piece.iter().position(|b| *b == b'=') {
            Some(i) => (&piece[..i], &piece[i + 1..]),
            None => (piece, &piece[piece.len()..]),
        };
        let name = form_decode(name).map_err(|raw| {
            ApiError::param(format!(
                "Parameter name {} is not valid UTF-8",
                sanitize_for_message(&raw)
            ))
        })?;
        let value = form_decode(value).map_err(|_| {
            ApiError::param(format!(
                "Value of parameter {} is not valid UTF-8",
                sanitize_for_message(&name)
            ))
        })?;
        out.push((name, value));
    }
    Ok(out)
}

/// Decodes one form component; on invalid UTF-8 returns a lossy copy as error.
fn form_decode(raw: &[u8]) -> Result<String, String> {
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    let bytes: Vec<u8> = percent_encoding::percent_decode(&plus_as_space).collect();
    String::from_utf8(bytes).map_err(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `java.net.URLEncoder.encode(value, UTF-8)` with `+` turned into `%20`,
/// which is how CloudStack encodes values before signing.
fn java_url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b".-*_".contains(&b) {
            out.push(char::from(b));
        } else if b == b' ' {
            out.push_str("%20");
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The servlet view of the request: the first value of every distinct name,
/// names sorted like Java sorts strings (UTF-16 code units).
fn sorted_first_values(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    let mut first: Vec<(&str, &str)> = Vec::with_capacity(pairs.len());
    let mut seen = std::collections::HashSet::new();
    for (name, value) in pairs {
        if seen.insert(name.as_str()) {
            first.push((name.as_str(), value.as_str()));
        }
    }
    first.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    first
}

/// The string CloudStack signs: sorted `name=encoded-value` pairs without
/// `signature`, joined with `&`, lower-cased as a whole.
pub fn string_to_sign(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (name, value) in sorted_first_values(pairs) {
        if name.eq_ignore_ascii_case("signature") {
            continue;
        }
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(&java_url_encode(value));
    }
    out.to_lowercase()
}

/// Base64 HMAC-SHA1 of [`string_to_sign`] under `secret`.
pub fn sign(secret: &str, pairs: &[(String, String)]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(string_to_sign(pairs).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a request was refused; all of them answer 401 with one text, the
/// reason only goes to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    MissingSignature,
    MissingApiKey,
    MissingExpires,
    BadExpires,
    Expired,
    UnknownApiKey,
    BadSignature,
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthFailure::MissingSignature => "no signature",
            AuthFailure::MissingApiKey => "no apiKey",
            AuthFailure::MissingExpires => "signatureVersion 3 without expires",
            AuthFailure::BadExpires => "unparsable expires",
            AuthFailure::Expired => "request expired",
            AuthFailure::UnknownApiKey => "unknown apiKey",
            AuthFailure::BadSignature => "signature mismatch",
        })
    }
}

/// Verifies a request the way CloudStack does; returns the matching key's
/// name. `now_ms` is the current time in Unix milliseconds.
pub fn verify(
    keys: &KeyStore,
    pairs: &[(String, String)],
    now_ms: i64,
) -> Result<String, AuthFailure> {
    let mut signature = None;
    let mut apikey = None;
    let mut version = None;
    let mut expires = None;
    // Like CloudStack, the last match in sorted order wins for case variants.
    for (name, value) in sorted_first_values(pairs) {
        if name.eq_ignore_ascii_case("signature") {
            signature = Some(value);
        } else if name.eq_ignore_ascii_case("apikey") {
            apikey = Some(value);
        } else if name.eq_ignore_ascii_case("signatureversion") {
            version = Some(value);
        } else if name.eq_ignore_ascii_case("expires") {
            expires = Some(value);
        }
    }
    let signature = signature.ok_or(AuthFailure::MissingSignature)?;
    let apikey = apikey.ok_or(AuthFailure::MissingApiKey)?;
    if version == Some("3") {
        let expires = expires.ok_or(AuthFailure::MissingExpires)?;
        let at = parse_expires(expires).ok_or(AuthFailure::BadExpires)?;
        if at < now_ms {
            return Err(AuthFailure::Expired);
        }
    }
    let key = keys.find(apikey).ok_or(AuthFailure::UnknownApiKey)?;
    let expected = sign(&key.secretkey, pairs);
    if constant_time_eq(signature.as_bytes(), expected.as_bytes()) {
        Ok(key.name.clone())
    } else {
        Err(AuthFailure::BadSignature)
    }
}

/// Parses `expires` in the forms CloudStack accepts (`2026-11-27T21:30:00+0000`,
/// `…+00:00`, `…Z`, optional fraction, legacy `…Z+0000`) into Unix ms.
pub fn parse_expires(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let sep = |at: usize, c: u8| b.get(at) == Some(&c);
    let year = digits(0, 4)?;
    let month = digits(5, 2)?;
    let day = digits(8, 2)?;
    let hour = digits(11, 2)?;
    let minute = digits(14, 2)?;
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':')) {
        return None;
    }
    let mut i = 16;
    let mut second = 0;
    let mut millis = 0;
    if sep(i, b':') {
        second = digits(i + 1, 2)?;
        i += 3;
        if sep(i, b'.') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            let frac = &text[start..i];
            if frac.is_empty() || frac.len() > 9 {
                return None;
            }
            let first3: String = frac.chars().chain("000".chars()).take(3).collect();
            millis = first3.parse::<i64>().ok()?;
        }
    }
    let mut rest = &text[i..];
    if rest == "Z" {
        rest = "+00:00";
    } else if let Some(tail) = rest.strip_prefix('Z') {
        // Legacy `'Z'Z` pattern: a literal Z followed by a numeric offset.
        rest = tail;
    }
    let offset_secs = parse_offset(rest)?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1000 + millis)
}

/// `+HH:MM`, `+HHMM` or `+HH` (or `-`), in seconds east of UTC.
fn parse_offset(text: &str) -> Option<i64> {
    let (sign, body) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let compact: String = match body.len() {
        2 | 4 => body.to_string(),
        5 if body.as_bytes()[2] == b':' => body.replacen(':', "", 1),
        _ => return None,
    };
    if !compact.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let hours: i64 = compact.get(0..2)?.parse().ok()?;
    let minutes: i64 = compact
        .get(2..)
        .filter(|m| !m.is_empty())
        .map_or(Some(0), |m| m.parse().ok())?;
    if hours > 18 || minutes > 59 {
        return None;
    }
    Some(sign * (hours * 3600 + minutes * 60))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Parameters as the dispatcher sees them
// ---------------------------------------------------------------------------

/// CloudStack's parameter-name folding: a plain name is lower-cased; for a
/// map parameter `name[i].field` only `name` is, the field keeps its case
/// (it may be a detail key, as in `details[0].MyKey=v`).
pub fn normalize_param_name(name: &str) -> String {
    match name.find('[') {
        Some(i) => {
            let mut out = name[..i].to_lowercase();
            out.push_str(&name[i..]);
            out
        }
        None => name.to_lowercase(),
    }
}

/// What to do when two parameters fold to the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicates {
    /// CloudStack over HTTP: the first value wins.
    FirstWins,
    /// The CLI: a repeated parameter is a mistake worth reporting.
    Reject,
}

/// Turns raw request pairs into dispatcher parameters: names folded, transport
/// parameters (`command`, `apiKey`, `signature`, …) dropped, values with ASCII
/// control characters (other than CR/LF, as in CloudStack) refused.
pub fn to_api_params(
    pairs: &[(String, String)],
    duplicates: Duplicates,
) -> Result<Params, ApiError> {
    let mut params = Params::new();
    for (raw_name, value) in pairs {
        let name = normalize_param_name(raw_name);
        if name.is_empty() {
            return Err(ApiError::param("Empty parameter name"));
        }
        if TRANSPORT_PARAMS.contains(&name.as_str()) {
            continue;
        }
        if value
            .chars()
            .any(|c| (c.is_ascii_control() && c != '\n' && c != '\r') || c == '\u{7f}')
        {
            return Err(ApiError::param(format!(
                "Received value containing illegal ASCII non-printable characters for parameter {}",
                sanitize_for_message(&name)
            )));
        }
        if params.contains_key(&name) {
            match duplicates {
                Duplicates::FirstWins => continue,
                Duplicates::Reject => {
                    return Err(ApiError::param(format!(
                        "Parameter {} given more than once",
                        sanitize_for_message(&name)
                    )))
                }
            }
        }
        params.insert(name, value.clone());
    }
    Ok(params)
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// Options of `netbridge serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub max_body_bytes: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// The keys a running server accepts; replaceable (e.g. on SIGHUP) without
/// a restart, so `netbridge keys create` takes effect on a live server.
#[derive(Clone, Default)]
pub struct KeyRing {
    inner: Arc<std::sync::RwLock<Arc<KeyStore>>>,
}

impl KeyRing {
    pub fn new(store: KeyStore) -> KeyRing {
        KeyRing {
            inner: Arc::new(std::sync::RwLock::new(Arc::new(store))),
        }
    }

    /// Swaps in a new set of keys for every later request.
    pub fn replace(&self, store: KeyStore) {
        let store = Arc::new(store);
        match self.inner.write() {
            Ok(mut guard) => *guard = store,
            // A poisoned lock only means a panic elsewhere; the value is whole.
            Err(poisoned) => *poisoned.into_inner() = store,
        }
    }

    fn current(&self) -> Arc<KeyStore> {
        match self.inner.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

struct ServerState {
    api: Arc<Api>,
    keys: KeyRing,
    options: ServeOptions,
}

/// How an answer is written: CloudStack answers XML unless `response=json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    /// From the request's `response` parameter (first value, any case).
    pub fn of(pairs: &[(String, String)]) -> Format {
        match pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("response"))
        {
            Some((_, v)) if v.trim().eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Xml,
        }
    }
}

/// One answer: the HTTP status equals the CloudStack error code for errors,
/// whose text also goes into the `X-Description` header.
struct Answer {
    status: u16,
    body: serde_json::Value,
    format: Format,
    description: Option<String>,
}

impl Answer {
    fn ok(body: serde_json::Value, format: Format) -> Answer {
        Answer {
            status: 200,
            body,
            format,
            description: None,
        }
    }

    /// An error of `command` (if it is a known one; else `errorresponse`).
    fn error(error: &ApiError, command: Option<&str>, format: Format) -> Answer {
        Answer {
            status: error.code,
            body: error.to_response(command),
            format,
            description: Some(error.text.clone()),
        }
    }
}

/// Header-safe copy of an error text (control characters become spaces).
fn header_text(text: &str) -> HeaderValue {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("error"))
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (body, content_type) = match self.format {
            Format::Json => (
                serde_json::to_vec(&self.body).unwrap_or_else(|_| b"{}".to_vec()),
                JSON_CONTENT_TYPE,
            ),
            Format::Xml => (
                super::xml::to_xml(&self.body).into_bytes(),
                super::xml::CONTENT_TYPE,
            ),
        };
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(text) = &self.description {
            headers.insert(DESCRIPTION_HEADER, header_text(text));
        }
        response
    }
}

/// Content type of JSON answers.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=UTF-8";
/// The header CloudStack's clients and UI show for a failed call.
pub const DESCRIPTION_HEADER: &str = "x-description";

/// The router: `/client/api` and `/`, GET and POST.
pub fn router(api: Arc<Api>, keys: KeyRing, options: ServeOptions) -> Router {
    let state = Arc::new(ServerState { api, keys, options });
    Router::new()
        .route("/client/api", get(handle).post(handle))
        .route("/client/api/", get(handle).post(handle))
        .route("/", get(handle).post(handle))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Arc<Api>,
    keys: KeyRing,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    let app = router(api, keys, options);
    axum::serve(
        wire::ErrorBodyListener::new(listener),
        app.into_make_service_with_connect_info::<wire::Peer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(HttpError::Serve)
}

async fn handle(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(wire::Peer(peer)): ConnectInfo<wire::Peer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut command_for_log = String::from("-");
    let mut key_for_log = String::from("-");
    let answer = process(
        &state,
        &uri,
        &headers,
        body,
        &mut command_for_log,
        &mut key_for_log,
    )
    .await;
    // Path only: the query string carries the signature and parameter values.
    log::info!(
        "{peer} {method} {} command={command_for_log} key={key_for_log} -> {}",
        uri.path(),
        answer.status
    );
    answer.into_response()
}

async fn process(
    state: &ServerState,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    command_for_log: &mut String,
    key_for_log: &mut String,
) -> Answer {
    let limit = state.options.max_body_bytes;
    let query = uri.query().unwrap_or("");
    // Until the body is read, the query string alone says how to answer.
    let early_pairs = parse_form(query.as_bytes()).unwrap_or_default();
    let early_format = Format::of(&early_pairs);
    let early_command = early_pairs
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("command"))
        .map(|(_, v)| v.clone());
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            let inner = e.into_inner();
            let error = if inner
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::server(413, format!("Request body larger than {limit} bytes"))
            } else {
                ApiError::server(400, "Cannot read the request body")
            };
            return Answer::error(&error, early_command.as_deref(), early_format);
        }
    };
    let mut pairs = match parse_form(query.as_bytes()) {
        Ok(p) => p,
        Err(e) => return Answer::error(&e, early_command.as_deref(), early_format),
    };
    if !bytes.is_empty() {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
        {
            let error = ApiError::server(
                415,
                format!(
                    "Unsupported request body type '{}'; send parameters as application/x-www-form-urlencoded",
                    sanitize_for_message(content_type)
                ),
            );
            return Answer::error(&error, early_command.as_deref(), early_format);
        }
        match parse_form(&bytes) {
            Ok(more) => pairs.extend(more),
            Err(e) => return Answer::error(&e, early_command.as_deref(), early_format),
        }
    }
    let format = Format::of(&pairs);
    let command = pairs
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("command"))
        .map(|(_, v)| v.clone())
        .filter(|c| !c.is_empty());
    if let Some(c) = &command {
        *command_for_log = sanitize_for_message(c);
    }

    match verify(&state.keys.current(), &pairs, now_ms()) {
        Ok(name) => *key_for_log = name,
        Err(reason) => {
            log::info!("refused request: {reason}");
            let error = ApiError::server(AUTH_ERROR_CODE, AUTH_ERROR_TEXT);
            return Answer::error(&error, command.as_deref(), format);
        }
    }
    let Some(command) = command else {
        let error = ApiError::server(codes::UNSUPPORTED, "Invalid request, no command sent");
        return Answer::error(&error, None, format);
    };
    if super::commands::find(&command).is_none() {
        // With API-key authentication CloudStack checks that the command is
        // available to the key's user as part of verifying the request, so
        // an unknown command is an authentication failure.
        log::info!("refused request: unknown command");
        let error = ApiError::server(AUTH_ERROR_CODE, AUTH_ERROR_TEXT);
        return Answer::error(&error, None, format);
    }
    prepare_and_call(state, &command, &pairs, format).await
}

async fn prepare_and_call(
    state: &ServerState,
    command: &str,
    pairs: &[(String, String)],
    format: Format,
) -> Answer {
    let params = match to_api_params(pairs, Duplicates::FirstWins) {
        Ok(p) => p,
        Err(e) => return Answer::error(&e, Some(command), format),
    };
    let api = Arc::clone(&state.api);
    let name = command.to_string();
    // The dispatcher does blocking SQLite work: keep it off the reactor.
    let outcome = tokio::task::spawn_blocking(move || api.call(&name, &params)).await;
    match outcome {
        Ok(Ok(value)) => Answer::ok(value, format),
        Ok(Err(e)) => Answer::error(&e, Some(command), format),
        Err(_) => Answer::error(
            &ApiError::internal("Internal error executing the command"),
            Some(command),
            format,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn string_to_sign_sorts_encodes_and_lowercases_like_cloudstack() {
        let p = pairs(&[
            ("command", "listExtensions"),
            ("response", "json"),
            ("apiKey", "AbC"),
            ("name", "a b*c~d/é"),
            ("signature", "ignored"),
        ]);
        // Java's URLEncoder keeps `*`, encodes `~`, `/` and UTF-8 bytes, and
        // the space becomes %20 (never `+`).
        assert_eq!(
            string_to_sign(&p),
            "apikey=abc&command=listextensions&name=a%20b*c%7ed%2f%c3%a9&response=json"
        );
    }

    #[test]
    fn names_sort_case_sensitively_before_lowercasing() {
        // Java sorts the names as received: `Zeta` (Z = 0x5a) before `alpha`.
        let p = pairs(&[("alpha", "1"), ("Zeta", "2")]);
        assert_eq!(string_to_sign(&p), "zeta=2&alpha=1");
    }

    #[test]
    fn first_value_of_a_repeated_name_is_signed() {
        let p = pairs(&[("b", "1"), ("a", "2"), ("b", "3")]);
        assert_eq!(string_to_sign(&p), "a=2&b=1");
    }

    #[test]
    fn known_signature_vector() {
        // HMAC-SHA1("secret", "apikey=key&command=listzones&response=json"),
        // computed independently with Python's hmac module.
        let p = pairs(&[
            ("command", "listZones"),
            ("apiKey", "key"),
            ("response", "json"),
        ]);
        assert_eq!(
            string_to_sign(&p),
            "apikey=key&command=listzones&response=json"
        );
        assert_eq!(sign("secret", &p), EXPECTED_VECTOR);
    }
    const EXPECTED_VECTOR: &str = "CB2VceYQ2lFqNkAe+39yeUIsH5w=";

    fn signed(keys_secret: &str, mut p: Vec<(String, String)>) -> Vec<(String, String)> {
        let s = sign(keys_secret, &p);
        p.push(("signature".into(), s));
        p
    }

    #[test]
    fn verify_accepts_good_and_refuses_each_bad_case() {
        let keys = KeyStore::from_pairs(&[("admin", "K1", "S1")]);
        let base = pairs(&[
            ("command", "listExtensions"),
            ("apiKey", "K1"),
            ("response", "json"),
        ]);
        let good = signed("S1", base.clone());
        assert_eq!(verify(&keys, &good, 0), Ok("admin".to_string()));

        assert_eq!(verify(&keys, &base, 0), Err(AuthFailure::MissingSignature));
        let wrong = signed("S2", base.clone());
        assert_eq!(verify(&keys, &wrong, 0), Err(AuthFailure::BadSignature));
        let mut tampered = good.clone();
        tampered.push(("name".into(), "x".into()));
        assert_eq!(verify(&keys, &tampered, 0), Err(AuthFailure::BadSignature));
        let unknown = signed(
            "S1",
            pairs(&[("command", "listExtensions"), ("apiKey", "K9")]),
        );
        assert_eq!(verify(&keys, &unknown, 0), Err(AuthFailure::UnknownApiKey));
        let no_key = signed("S1", pairs(&[("command", "listExtensions")]));
        assert_eq!(verify(&keys, &no_key, 0), Err(AuthFailure::MissingApiKey));
    }

    #[test]
    fn signature_version_3_checks_expires() {
        let keys = KeyStore::from_pairs(&[("admin", "K1", "S1")]);
        let now = parse_expires("2026-11-27T21:00:00+0000").unwrap_or(0);
        let with = |exp: Option<&str>| {
            let mut p = pairs(&[
                ("command", "x"),
                ("apiKey", "K1"),
                ("signatureVersion", "3"),
            ]);
            if let Some(e) = exp {
                p.push(("expires".into(), e.into()));
            }
            signed("S1", p)
        };
        assert!(verify(&keys, &with(Some("2026-11-27T21:10:00+0000")), now).is_ok());
        assert_eq!(
            verify(&keys, &with(Some("2026-11-27T20:59:59+0000")), now),
            Err(AuthFailure::Expired)
        );
        assert_eq!(
            verify(&keys, &with(None), now),
            Err(AuthFailure::MissingExpires)
        );
        assert_eq!(
            verify(&keys, &with(Some("tomorrow")), now),
            Err(AuthFailure::BadExpires)
        );
    }

    #[test]
    fn expires_formats() {
        let base = parse_expires("2026-11-27T21:30:00+0000");
        assert_eq!(base, Some(1_795_815_000_000));
        for same in [
            "2026-11-27T21:30:00Z",
            "2026-11-27T21:30:00+00:00",
            "2026-11-27T22:30:00+01:00",
            "2026-11-27T20:30:00-0100",
            "2026-11-27T21:30:00Z+0000",
            "2026-11-27T21:30Z",
        ] {
            assert_eq!(parse_expires(same), base, "{same}");
        }
        assert_eq!(
            parse_expires("2026-11-27T21:30:00.250000Z"),
            base.map(|b| b + 250)
        );
        for bad in [
            "",
            "2026-11-27",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-27T24:00:00Z",
            "2026-11-27T21:30:00",
            "2026-11-27T21:30:00+2500",
            "2026-11-27T21:30:00+00:0x",
            "２０26-11-27T21:30:00Z",
        ] {
            assert_eq!(parse_expires(bad), None, "{bad}");
        }
        assert!(parse_expires("2024-02-29T00:00:00Z").is_some());
    }

    #[test]
    fn expires_parser_survives_truncation_and_multibyte_input() {
        let valid = "2026-11-27T21:30:00.123456+01:00";
        for end in 0..=valid.len() {
            let prefix = &valid[..end];
            let _ = parse_expires(prefix);
            for at in 0..=prefix.len() {
                let mut odd = prefix.to_string();
                odd.insert(at, 'é');
                assert_eq!(parse_expires(&odd), None, "{odd}");
            }
        }
    }

    #[test]
    fn form_decoding() {
        let p =
            parse_form(b"command=listExtensions&name=a+b%2Bc&empty=&flag&&details%5B0%5D.key=k")
                .unwrap_or_default();
        assert_eq!(
            p,
            pairs(&[
                ("command", "listExtensions"),
                ("name", "a b+c"),
                ("empty", ""),
                ("flag", ""),
                ("details[0].key", "k"),
            ])
        );
        let err = parse_form(b"name=%ff").err();
        assert_eq!(
            err.map(|e| (e.code, e.text)),
            Some((
                431,
                "Value of parameter name is not valid UTF-8".to_string()
            ))
        );
    }

    #[test]
    fn api_params_fold_names_and_drop_transport() {
        let p = pairs(&[
            ("command", "createExtension"),
            ("apiKey", "K"),
            ("signature", "S"),
            ("signatureVersion", "3"),
            ("expires", "x"),
            ("response", "json"),
            ("Name", "first"),
            ("NAME", "second"),
            ("Details[0].MyKey", "v"),
        ]);
        let params = to_api_params(&p, Duplicates::FirstWins).unwrap_or_default();
        let expected: Params = [("name", "first"), ("details[0].MyKey", "v")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(params, expected);
        let err = to_api_params(&p, Duplicates::Reject).err();
        assert_eq!(
            err.map(|e| e.text),
            Some("Parameter name given more than once".to_string())
        );
        let ctl = to_api_params(&pairs(&[("description", "a\u{1}b")]), Duplicates::Reject).err();
        assert_eq!(
            ctl.map(|e| e.text),
            Some(
                "Received value containing illegal ASCII non-printable characters for parameter description"
                    .to_string()
            )
        );
        assert!(
            to_api_params(&pairs(&[("description", "line\nnext")]), Duplicates::Reject).is_ok()
        );
    }

    #[test]
    fn keys_file_create_load_and_mode_check() {
        let dir = tempfile::tempdir().ok();
        let Some(dir) = dir else { return };
        let path = dir.path().join("sub").join(KEYS_FILE_NAME);
        assert!(matches!(
            KeyStore::load(&path),
            Err(HttpError::KeysFile { .. })
        ));
        let new = create_key(&path, "admin");
        let Ok(new) = new else {
            panic!("create_key failed: {new:?}");
        };
        assert_eq!(new.apikey.len(), 86);
        assert_ne!(new.apikey, new.secretkey);
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .ok();
        assert_eq!(mode, Some(0o600));
        assert!(matches!(
            create_key(&path, "admin"),
            Err(HttpError::KeysFile { ref reason, .. }) if reason == "a key named 'admin' already exists"
        ));
        assert!(matches!(
            create_key(&path, "bad name"),
            Err(HttpError::KeyName(_))
        ));
        assert!(create_key(&path, "second").is_ok());
        let store = KeyStore::load(&path).unwrap_or_default();
        assert_eq!(store.len(), 2);
        let p = signed(
            &new.secretkey,
            pairs(&[("command", "x"), ("apiKey", &new.apikey)]),
        );
        assert_eq!(verify(&store, &p, 0), Ok("admin".to_string()));
        assert!(!format!("{store:?}").contains(&new.secretkey));

        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640));
        let err = KeyStore::load(&path).err().map(|e| e.to_string());
        assert_eq!(
            err,
            Some(format!(
                "keys file {p} must not be accessible by group or others (mode 0640); run: chmod 600 {p}",
                p = path.display()
            ))
        );
    }

    #[test]
    fn malformed_keys_file_error_does_not_echo_content() {
        let Ok(dir) = tempfile::tempdir() else { return };
        let path = dir.path().join(KEYS_FILE_NAME);
        let _ = std::fs::write(
            &path,
            "[[key]]\nname = \"a\"\napikey = \"k\"\nsecretkey = TOPSECRET\n",
        );
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        let err = KeyStore::load(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("invalid TOML"), "{err}");
        assert!(!err.contains("TOPSECRET"), "{err}");
    }
}
