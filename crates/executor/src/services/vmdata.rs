//! VM data per guest IP: user data, EC2-style meta-data files, the one-time
//! password. Pure updates; persistence lives in [`super::store`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::validate::{self, invalid};
use super::ServicesError;
use netbridge_protocol::envelope::{decode_base64, DocumentForm};

/// All VM data of one network, by guest IPv4 address.
pub type VmDataSet = BTreeMap<Ipv4Addr, VmData>;

/// Largest accepted single item (user data is the big one).
pub const MAX_ITEM_BYTES: usize = 1 << 20;

/// How the `content` values of a `vm_data` document are encoded: plain text
/// in CloudStack 4.23, Base64 in older builds. No value carries a marker,
/// and a plain value may well be valid Base64 (`aS1hbHBoYQ==` is a possible
/// instance id), so contents are never guessed one by one. The document's
/// own form decides, as the two generations send it:
///
/// - 4.23 sends `vm_data` (and `restore_data`) as JSON values with plain
///   contents: a JSON array, or a string holding the JSON text, is
///   [`ContentEncoding::Plain`];
/// - older builds Base64-encode the whole document and, inside it, every
///   `content`: a `vm_data` that arrived as Base64, or one inside a
///   `restore_data` that arrived as Base64, is [`ContentEncoding::Base64`],
///   and a content that is not Base64 is refused.
///
/// The single-item fields (`save-userdata`'s `userdata`, `save-sshkey`'s
/// `sshkey`, `save-password`'s `password`) are plain text in the protocol
/// and in 4.23 and are stored verbatim: they have no document whose form
/// could tell an older encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContentEncoding {
    #[default]
    Plain,
    Base64,
}

impl ContentEncoding {
    /// The encoding of the contents of a document that arrived in `form`.
    pub fn of(form: DocumentForm) -> ContentEncoding {
        match form {
            DocumentForm::Json => ContentEncoding::Plain,
            DocumentForm::Base64 => ContentEncoding::Base64,
        }
    }

    /// A document nested in one sent as Base64 is legacy too, whatever its
    /// own form.
    fn or(self, outer: ContentEncoding) -> ContentEncoding {
        if outer == ContentEncoding::Base64 {
            outer
        } else {
            self
        }
    }
}

/// A secret value: never printed by `Debug`/`Display`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The clear value, for the one place that must hand it out (the
    /// password service).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// VM data of one guest IP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmData {
    /// Raw user data (may be binary after Base64 decoding).
    #[serde(default, with = "b64_opt", skip_serializing_if = "Option::is_none")]
    pub userdata: Option<Vec<u8>>,
    /// `meta-data/<file>` → content (`instance-id`, `public-keys`, …).
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Pending password, kept until the VM acknowledges it or it is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
}

mod b64_opt {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let o: Option<String> = Option::deserialize(d)?;
        o.map(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

fn decode(field: &str, s: &str, enc: ContentEncoding) -> Result<Vec<u8>, ServicesError> {
    let bytes = match enc {
        ContentEncoding::Plain => s.as_bytes().to_vec(),
        // The value is not echoed: it may be a password.
        ContentEncoding::Base64 => decode_base64(s).ok_or_else(|| {
            invalid(
                field,
                "not valid Base64 (the vm_data document arrived Base64-encoded, so its contents must be too)",
            )
        })?,
    };
    if bytes.len() > MAX_ITEM_BYTES {
        return Err(invalid(
            field,
            format!("larger than {MAX_ITEM_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

fn decode_text(field: &str, s: &str, enc: ContentEncoding) -> Result<String, ServicesError> {
    String::from_utf8(decode(field, s, enc)?).map_err(|_| invalid(field, "not UTF-8 text"))
}

fn password_value(field: &str, s: &str) -> Result<Secret, ServicesError> {
    // Never echo the value: it is a secret.
    if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
        return Err(invalid(
            field,
            "must be 1-256 characters without control characters",
        ));
    }
    Ok(Secret::new(s))
}

/// Meta-data file names become URL path segments and map keys.
fn meta_file(field: &str, s: &str) -> Result<String, ServicesError> {
    validate::ident(field, s)
}

/// `save-vm-data`: replaces the whole data set of `ip` (user data and
/// meta-data files). A password in the set replaces the pending one; without
/// one the pending password is kept. Validates everything before changing.
/// Contents are decoded per [`ContentEncoding`]: from the form `vm_data`
/// arrived in, or `outer` when the document sits in a `restore_data` that
/// arrived Base64-encoded.
pub fn save_vm_data(
    set: &mut VmDataSet,
    ip: Ipv4Addr,
    vm_data: &Value,
    outer: ContentEncoding,
) -> Result<(), ServicesError> {
    let (doc, form) = validate::document("vm_data", vm_data)?;
    let enc = ContentEncoding::of(form).or(outer);
    let entries = doc
        .as_array()
        .ok_or_else(|| invalid("vm_data", "expected an array of {dir, file, content}"))?;
    let mut next = VmData {
        password: set.get(&ip).and_then(|d| d.password.clone()),
        ..VmData::default()
    };
    for (i, e) in entries.iter().enumerate() {
        let f = |name: &str| format!("vm_data[{i}].{name}");
        let obj = e
            .as_object()
            .ok_or_else(|| invalid(&format!("vm_data[{i}]"), "expected an object"))?;
        let dir = validate::req_str(obj, "dir").map_err(|_| validate::missing(&f("dir")))?;
        let file = validate::req_str(obj, "file").map_err(|_| validate::missing(&f("file")))?;
        let content = validate::opt_str(obj, "content")
            .map_err(|_| invalid(&f("content"), "expected a string"))?
            .unwrap_or_default();
        match dir.as_str() {
            "userdata" | "user-data" | "user_data" => {
                if file != "user-data" && file != "user_data" && file != "userdata" {
                    return Err(invalid(&f("file"), "userdata holds only 'user-data'"));
                }
                let b = decode(&f("content"), &content, enc)?;
                next.userdata = (!b.is_empty()).then_some(b);
            }
            "metadata" | "meta-data" | "meta_data" => {
                let name = meta_file(&f("file"), &file)?;
                let text = decode_text(&f("content"), &content, enc)?;
                next.meta.insert(name, text);
            }
            "password" => match file.as_str() {
                "vm_password" | "vm-password" => {
                    let text = decode_text(&f("content"), &content, enc)?;
                    // An empty password entry means "none sent", not "clear".
                    if !text.is_empty() {
                        next.password = Some(password_value(&f("content"), &text)?);
                    }
                }
                // The checksum only lets the VR skip rewrites; nothing serves it.
                "vm-password-md5checksum" | "vm_password_md5checksum" => {}
                _ => return Err(invalid(&f("file"), "unknown password file")),
            },
            _ => {
                return Err(invalid(
                    &f("dir"),
                    "expected userdata, metadata (meta-data) or password",
                ))
            }
        }
    }
    set.insert(ip, next);
    Ok(())
}

/// `save-userdata`: the plain text, verbatim (see [`ContentEncoding`]).
pub fn save_userdata(
    set: &mut VmDataSet,
    ip: Ipv4Addr,
    userdata: &str,
) -> Result<(), ServicesError> {
    let b = decode("userdata", userdata, ContentEncoding::Plain)?;
    set.entry(ip).or_default().userdata = (!b.is_empty()).then_some(b);
    Ok(())
}

/// `save-password`: replaces the pending password.
pub fn save_password(
    set: &mut VmDataSet,
    ip: Ipv4Addr,
    password: &str,
) -> Result<(), ServicesError> {
    let pw = password_value("password", password)?;
    set.entry(ip).or_default().password = Some(pw);
    Ok(())
}

/// `save-sshkey`: the `public-keys` meta-data file.
pub fn save_sshkey(set: &mut VmDataSet, ip: Ipv4Addr, key: &str) -> Result<(), ServicesError> {
    if key.len() > 64 * 1024
        || key
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\r')
    {
        return Err(invalid("sshkey", "must be text of at most 64 KiB"));
    }
    set.entry(ip)
        .or_default()
        .meta
        .insert("public-keys".into(), key.to_string());
    Ok(())
}

/// `save-hypervisor-hostname`: the `hypervisor-host-name` meta-data file.
pub fn save_hypervisor_hostname(
    set: &mut VmDataSet,
    ip: Ipv4Addr,
    name: &str,
) -> Result<(), ServicesError> {
    let name = validate::hostname("hypervisor_hostname", name, true)?;
    set.entry(ip)
        .or_default()
        .meta
        .insert("hypervisor-host-name".into(), name);
    Ok(())
}

/// The password service's acknowledgement: forget the pending password.
/// Returns whether there was one.
pub fn forget_password(set: &mut VmDataSet, ip: Ipv4Addr) -> bool {
    set.get_mut(&ip)
        .map(|d| d.password.take().is_some())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use serde_json::json;

    const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);

    #[test]
    fn save_vm_data_plain_and_meta_data_dir_alias() {
        let mut set = VmDataSet::new();
        let doc = json!([
            {"dir":"userdata","file":"user-data","content":"#cloud-config\n"},
            {"dir":"meta-data","file":"instance-id","content":"i-2-10-VM"},
            {"dir":"metadata","file":"public-keys","content":"ssh-ed25519 AAAA x"},
            {"dir":"password","file":"vm_password","content":"s3cret"},
            {"dir":"password","file":"vm-password-md5checksum","content":"abc"}
        ]);
        save_vm_data(&mut set, IP, &doc, ContentEncoding::Plain).unwrap();
        let d = &set[&IP];
        assert_eq!(d.userdata.as_deref(), Some(&b"#cloud-config\n"[..]));
        assert_eq!(d.meta["instance-id"], "i-2-10-VM");
        assert_eq!(d.meta["public-keys"], "ssh-ed25519 AAAA x");
        assert_eq!(d.password.as_ref().map(Secret::expose), Some("s3cret"));
        assert!(!format!("{d:?}").contains("s3cret"));
    }

    #[test]
    fn save_vm_data_base64_content_and_base64_document() {
        let mut set = VmDataSet::new();
        let inner = json!([{"dir":"metadata","file":"local-hostname","content":"dm0x"}]);
        let doc =
            Value::String(base64::engine::general_purpose::STANDARD.encode(inner.to_string()));
        // The Base64 form of the document is what marks the contents.
        save_vm_data(&mut set, IP, &doc, ContentEncoding::Plain).unwrap();
        assert_eq!(set[&IP].meta["local-hostname"], "vm1");
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    /// What older builds send: the document Base64-encoded, each content too
    /// (user data as raw bytes, possibly binary).
    fn legacy_doc() -> Value {
        let inner = json!([
            {"dir":"userdata","file":"user-data","content": base64::engine::general_purpose::STANDARD.encode([0x1f, 0x8b, 0x00, 0xff])},
            {"dir":"meta-data","file":"instance-id","content": b64("i-alpha")},
            {"dir":"metadata","file":"local-hostname","content": b64("vm-1")},
            {"dir":"metadata","file":"public-keys","content": b64("ssh-ed25519 AAAA k\n")},
            {"dir":"password","file":"vm_password","content": b64("Pw-1 secret")},
            {"dir":"password","file":"vm-password-md5checksum","content": b64("0cc175b9c0f1b6a8")}
        ]);
        Value::String(b64(&inner.to_string()))
    }

    #[test]
    fn legacy_document_contents_are_decoded_exactly() {
        let mut set = VmDataSet::new();
        save_vm_data(&mut set, IP, &legacy_doc(), ContentEncoding::Plain).unwrap();
        let d = &set[&IP];
        assert_eq!(d.userdata.as_deref(), Some(&[0x1f, 0x8b, 0x00, 0xff][..]));
        assert_eq!(d.meta["instance-id"], "i-alpha");
        assert_eq!(d.meta["local-hostname"], "vm-1");
        assert_eq!(d.meta["public-keys"], "ssh-ed25519 AAAA k\n");
        assert_eq!(d.password.as_ref().map(Secret::expose), Some("Pw-1 secret"));
        // The same data as a 4.23 document (plain contents) stores the same.
        let mut plain = VmDataSet::new();
        let doc = json!([
            {"dir":"meta-data","file":"instance-id","content":"i-alpha"},
            {"dir":"metadata","file":"local-hostname","content":"vm-1"},
            {"dir":"metadata","file":"public-keys","content":"ssh-ed25519 AAAA k\n"},
            {"dir":"password","file":"vm_password","content":"Pw-1 secret"}
        ]);
        save_vm_data(&mut plain, IP, &doc, ContentEncoding::Plain).unwrap();
        assert_eq!(plain[&IP].meta, d.meta);
        assert_eq!(plain[&IP].password, d.password);
    }

    #[test]
    fn plain_contents_that_look_like_base64_are_kept_verbatim() {
        // `aS1hbHBoYQ==` is Base64 of `i-alpha`, and also a valid plain
        // instance id: a 4.23 document (JSON value or JSON text) keeps it.
        let doc = json!([
            {"dir":"meta-data","file":"instance-id","content":"aS1hbHBoYQ=="},
            {"dir":"password","file":"vm_password","content":"c2VjcmV0"}
        ]);
        for form in [doc.clone(), Value::String(doc.to_string())] {
            let mut set = VmDataSet::new();
            save_vm_data(&mut set, IP, &form, ContentEncoding::Plain).unwrap();
            assert_eq!(set[&IP].meta["instance-id"], "aS1hbHBoYQ==");
            assert_eq!(set[&IP].password.as_ref().unwrap().expose(), "c2VjcmV0");
        }
        // Single items are plain text too.
        let mut set = VmDataSet::new();
        save_userdata(&mut set, IP, "aGk=").unwrap();
        assert_eq!(set[&IP].userdata.as_deref(), Some(&b"aGk="[..]));
        // Inside a restore_data that arrived Base64-encoded, a vm_data
        // array holds Base64 contents (older builds encode both levels).
        let mut set = VmDataSet::new();
        save_vm_data(&mut set, IP, &doc, ContentEncoding::Base64).unwrap();
        assert_eq!(set[&IP].meta["instance-id"], "i-alpha");
        assert_eq!(set[&IP].password.as_ref().unwrap().expose(), "secret");
    }

    #[test]
    fn legacy_content_that_is_not_base64_is_refused_unechoed() {
        let mut set = VmDataSet::new();
        save_password(&mut set, IP, "pw1").unwrap();
        let before = set.clone();
        let inner = json!([
            {"dir":"metadata","file":"instance-id","content": b64("i-alpha")},
            {"dir":"password","file":"vm_password","content":"plain secret!"}
        ]);
        let doc = Value::String(b64(&inner.to_string()));
        let e = save_vm_data(&mut set, IP, &doc, ContentEncoding::Plain)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'vm_data[1].content'") && e.contains("Base64"),
            "{e}"
        );
        assert!(!e.contains("plain secret"), "{e}");
        assert_eq!(set, before);
    }

    #[test]
    fn save_vm_data_keeps_pending_password_and_replaces_rest() {
        let mut set = VmDataSet::new();
        save_password(&mut set, IP, "pw1").unwrap();
        set.entry(IP)
            .or_default()
            .meta
            .insert("old".into(), "x".into());
        let doc = json!([{"dir":"metadata","file":"instance-id","content":"i-1"}]);
        save_vm_data(&mut set, IP, &doc, ContentEncoding::Plain).unwrap();
        assert!(!set[&IP].meta.contains_key("old"));
        assert_eq!(set[&IP].password.as_ref().unwrap().expose(), "pw1");
        assert!(forget_password(&mut set, IP));
        assert!(!forget_password(&mut set, IP));
    }

    #[test]
    fn bad_vm_data_names_field_and_changes_nothing() {
        let mut set = VmDataSet::new();
        save_password(&mut set, IP, "pw1").unwrap();
        let before = set.clone();
        let cases = [
            (
                json!([{"dir":"etc","file":"x","content":""}]),
                "vm_data[0].dir",
            ),
            (
                json!([{"dir":"metadata","file":"instance-id","content":"a"},
                     {"dir":"metadata","file":"../../etc/passwd","content":""}]),
                "vm_data[1].file",
            ),
            (
                json!([{"dir":"password","file":"vm_password","content":"a\nb"}]),
                "vm_data[0].content",
            ),
            (json!({"dir":"metadata"}), "vm_data"),
        ];
        for (doc, field) in cases {
            let e = save_vm_data(&mut set, IP, &doc, ContentEncoding::Plain).unwrap_err();
            assert!(e.to_string().contains(&format!("'{field}'")), "{e}");
            assert_eq!(set, before);
        }
        let e = save_password(&mut set, IP, "a\rb").unwrap_err().to_string();
        assert!(e.contains("'password'") && !e.contains("a\rb"), "{e}");
    }

    #[test]
    fn single_item_updates() {
        let mut set = VmDataSet::new();
        save_userdata(&mut set, IP, "hi").unwrap();
        save_sshkey(&mut set, IP, "ssh-rsa AAA k").unwrap();
        save_hypervisor_hostname(&mut set, IP, "kvm1.example").unwrap();
        assert!(save_hypervisor_hostname(&mut set, IP, "kvm 1").is_err());
        let d = &set[&IP];
        assert_eq!(d.userdata.as_deref(), Some(&b"hi"[..]));
        assert_eq!(d.meta["public-keys"], "ssh-rsa AAA k");
        assert_eq!(d.meta["hypervisor-host-name"], "kvm1.example");
        let json = serde_json::to_string(d).unwrap();
        let back: VmData = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, d);
    }
}
