//! The command envelope (`physical-network-extension-details`,
//! `network-extension-details`, `payload`) and a typed field reader that
//! names the offending field in every error.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Map, Value};

use super::target::Target;
use super::{sanitize_for_message, validate, Command, ProtocolError};

/// Largest request body accepted (a 10,000-rule firewall document is ~3 MB).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A parsed envelope. Detail maps are kept as given; payload fields are read
/// through [`Fields`].
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// Registration details (hidden ones included): never log this map.
    pub physical: BTreeMap<String, String>,
    /// What `ensure-network-device` returned for this network (`{}` if none).
    pub network_details: Map<String, Value>,
    pub payload: Map<String, Value>,
}

/// The document as received, parsed once: the root object, kept whole for
/// forwarding and journaling, with typed accessors. The bridge (JNI, CLI)
/// and the entry point read commands through it; [`Envelope`] is its split
/// form for the executor.
#[derive(Debug, Clone, Default)]
pub struct RawEnvelope {
    pub root: Map<String, Value>,
}

impl RawEnvelope {
    /// Parses a body; bodies over [`MAX_BODY_BYTES`] are refused unread.
    pub fn parse(body: &[u8]) -> Result<RawEnvelope, ProtocolError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(ProtocolError::TooLarge {
                size: body.len(),
                limit: MAX_BODY_BYTES,
            });
        }
        let root: Value = serde_json::from_slice(body)
            .map_err(|e| ProtocolError::MalformedJson(sanitize_for_message(&e.to_string())))?;
        match root {
            Value::Object(root) => Ok(RawEnvelope { root }),
            _ => Err(ProtocolError::MalformedJson(
                "the envelope is not a JSON object".into(),
            )),
        }
    }

    /// The registration details as strings (hidden ones included: never
    /// log them); `null` values are left out.
    pub fn physical(&self) -> Result<BTreeMap<String, String>, ProtocolError> {
        physical_details(self.root.get(PHYSICAL_DETAILS))
    }

    /// What `ensure-network-device` returned for the network (`{}` if none).
    pub fn network_details(&self) -> Result<Map<String, Value>, ProtocolError> {
        network_details(self.root.get(NETWORK_DETAILS))
    }

    /// The command's fields: `payload`, or the root itself for the flat
    /// `custom-action`.
    pub fn fields_of(&self, command: Command) -> Result<&Map<String, Value>, ProtocolError> {
        if command == Command::CustomAction {
            return Ok(&self.root);
        }
        match self.root.get("payload") {
            Some(Value::Object(m)) => Ok(m),
            None | Some(Value::Null) => Err(ProtocolError::MissingField("payload".into())),
            Some(_) => Err(validate::invalid("payload", "not an object")),
        }
    }

    /// The router the command is about.
    pub fn target(&self, command: Command) -> Result<Target, ProtocolError> {
        Target::resolve(self.fields_of(command)?, &self.network_details()?)
    }
}

/// Registration details as strings; `null` values are left out.
fn physical_details(value: Option<&Value>) -> Result<BTreeMap<String, String>, ProtocolError> {
    match value {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                let field = format!("{PHYSICAL_DETAILS}.{k}");
                if let Some(s) = scalar_string(&field, v)? {
                    out.insert(k.clone(), s);
                }
            }
            Ok(out)
        }
        Some(_) => Err(validate::invalid(PHYSICAL_DETAILS, "not an object")),
    }
}

impl Envelope {
    /// Parses a body; bodies over [`MAX_BODY_BYTES`] are refused unread.
    pub fn parse(body: &[u8]) -> Result<Envelope, ProtocolError> {
        let raw = RawEnvelope::parse(body)?;
        let physical = raw.physical()?;
        let network_details = raw.network_details()?;
        let mut root = raw.root;
        let payload = match root.remove("payload") {
            Some(Value::Object(m)) => m,
            None | Some(Value::Null) => return Err(ProtocolError::MissingField("payload".into())),
            Some(_) => return Err(validate::invalid("payload", "not an object")),
        };
        Ok(Envelope {
            physical,
            network_details,
            payload,
        })
    }

    pub fn fields(&self) -> Fields<'_> {
        Fields::new("", &self.payload)
    }

    /// A registration detail by name (`guest.network.device`).
    pub fn detail(&self, name: &str) -> Option<&str> {
        self.physical
            .get(name)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
}

/// Envelope key of the registration details (hidden ones included).
pub const PHYSICAL_DETAILS: &str = "physical-network-extension-details";
/// Envelope key of what `ensure-network-device` returned for the network.
pub const NETWORK_DETAILS: &str = "network-extension-details";

/// The device details of a network as an envelope carries them: an object,
/// or the JSON text of one (some callers pass the stored details as a
/// string); absent, `null` or blank is `{}`.
pub fn network_details(value: Option<&Value>) -> Result<Map<String, Value>, ProtocolError> {
    match value {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(Map::new()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(validate::invalid(NETWORK_DETAILS, "not a JSON object")),
        },
        Some(_) => Err(validate::invalid(NETWORK_DETAILS, "not an object")),
    }
}

/// Converts a JSON scalar to its string form (the protocol sends strings, but
/// numbers and booleans are tolerated). `null` reads as absent.
pub fn scalar_string(field: &str, v: &Value) -> Result<Option<String>, ProtocolError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        _ => Err(validate::invalid(field, "expected a string")),
    }
}

/// Reads typed values out of a JSON object; `prefix` makes nested field names
/// such as `fw_rules.rules[3].portStart`.
#[derive(Clone, Copy)]
pub struct Fields<'a> {
    prefix: &'a str,
    map: &'a Map<String, Value>,
    /// Rule documents: a field that is present must carry a value (see
    /// [`Fields::strict`]).
    strict: bool,
}

/// Why a present field without a value is refused in a rule document.
const EMPTY_IN_RULE: &str = "empty; omit the field to use its default";
const NULL_IN_RULE: &str = "null; omit the field to use its default";

impl<'a> Fields<'a> {
    /// Envelope payload fields: `null` and `""` read as absent (CloudStack
    /// sends e.g. an empty `vlan` for untagged networks).
    pub fn new(prefix: &'a str, map: &'a Map<String, Value>) -> Fields<'a> {
        Fields {
            prefix,
            map,
            strict: false,
        }
    }

    /// Rule documents (firewall rules, ACL items): only an absent field takes
    /// its default. A present field that is `null`, empty, blank or an empty
    /// list entry is refused with its name, because reading it as absent
    /// would widen the rule (`"protocol": ""` would mean every protocol).
    pub fn strict(prefix: &'a str, map: &'a Map<String, Value>) -> Fields<'a> {
        Fields {
            prefix,
            map,
            strict: true,
        }
    }

    /// The full (dotted) name of a field, used in errors.
    pub fn name(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// The value of a present field; `null` is absent, except in strict mode
    /// where it is refused.
    pub fn present(&self, key: &str) -> Result<Option<&'a Value>, ProtocolError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Null) if self.strict => {
                Err(validate::invalid(&self.name(key), NULL_IN_RULE))
            }
            Some(Value::Null) => Ok(None),
            Some(v) => Ok(Some(v)),
        }
    }

    /// Optional string; empty strings read as absent (refused in strict mode,
    /// blank ones too).
    pub fn opt_str(&self, key: &str) -> Result<Option<String>, ProtocolError> {
        let Some(v) = self.present(key)? else {
            return Ok(None);
        };
        let s = scalar_string(&self.name(key), v)?;
        if self.strict {
            match s {
                Some(s) if !s.trim().is_empty() => Ok(Some(s)),
                _ => Err(validate::invalid(&self.name(key), EMPTY_IN_RULE)),
            }
        } else {
            Ok(s.filter(|s| !s.is_empty()))
        }
    }

    pub fn req_str(&self, key: &str) -> Result<String, ProtocolError> {
        self.opt_str(key)?
            .ok_or_else(|| ProtocolError::MissingField(self.name(key)))
    }

    /// Optional value passed through a validator.
    pub fn opt<T>(
        &self,
        key: &str,
        check: impl Fn(&str, &str) -> Result<T, ProtocolError>,
    ) -> Result<Option<T>, ProtocolError> {
        match self.opt_str(key)? {
            None => Ok(None),
            Some(s) => check(&self.name(key), &s).map(Some),
        }
    }

    /// Required value passed through a validator.
    pub fn req<T>(
        &self,
        key: &str,
        check: impl Fn(&str, &str) -> Result<T, ProtocolError>,
    ) -> Result<T, ProtocolError> {
        let s = self.req_str(key)?;
        check(&self.name(key), &s)
    }

    /// First present key among aliases (`vpc_cidr`, then `cidr`).
    pub fn opt_alias<T>(
        &self,
        keys: &[&str],
        check: impl Fn(&str, &str) -> Result<T, ProtocolError> + Copy,
    ) -> Result<Option<T>, ProtocolError> {
        for k in keys {
            if let Some(v) = self.opt(k, check)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Optional integer (JSON number or decimal string, sign allowed).
    pub fn opt_int(&self, key: &str) -> Result<Option<i64>, ProtocolError> {
        match self.opt_str(key)? {
            None => Ok(None),
            Some(s) => {
                let ok = s.len() <= 20
                    && s.strip_prefix('-')
                        .unwrap_or(&s)
                        .bytes()
                        .all(|b| b.is_ascii_digit());
                s.parse::<i64>()
                    .ok()
                    .filter(|_| ok)
                    .map(Some)
                    .ok_or_else(|| {
                        validate::invalid(
                            &self.name(key),
                            format!("'{}' is not an integer", sanitize_for_message(&s)),
                        )
                    })
            }
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, ProtocolError> {
        self.opt(key, validate::boolean)
    }

    /// A list of strings (JSON array, or a comma-separated string). An empty
    /// array is an empty list. In strict mode an empty string, a `null`
    /// entry or an empty entry (`["10.0.0.0/8", ""]`, `"a,,b"`) is refused
    /// with its name: it must not read as "no restriction".
    pub fn str_list(&self, key: &str) -> Result<Vec<String>, ProtocolError> {
        let name = self.name(key);
        match self.present(key)? {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, v) in items.iter().enumerate() {
                    match scalar_string("", v) {
                        Ok(Some(s)) => self.split_into(&mut out, &s, || format!("{name}[{i}]"))?,
                        Ok(None) if !self.strict => {}
                        Ok(None) => {
                            return Err(validate::invalid(&format!("{name}[{i}]"), NULL_IN_RULE))
                        }
                        Err(_) => {
                            return Err(validate::invalid(
                                &format!("{name}[{i}]"),
                                "expected a string",
                            ))
                        }
                    }
                }
                Ok(out)
            }
            Some(v) => {
                let mut out = Vec::new();
                if let Some(s) = scalar_string(&name, v)? {
                    self.split_into(&mut out, &s, || name.clone())?;
                }
                Ok(out)
            }
        }
    }

    /// Appends the comma-separated entries of `s`; the name is built only
    /// for an error.
    fn split_into(
        &self,
        out: &mut Vec<String>,
        s: &str,
        name: impl Fn() -> String,
    ) -> Result<(), ProtocolError> {
        for entry in s.split(',').map(str::trim) {
            if !entry.is_empty() {
                out.push(entry.to_string());
            } else if self.strict {
                return Err(validate::invalid(&name(), EMPTY_IN_RULE));
            }
        }
        Ok(())
    }
}

/// How a rule document arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentForm {
    /// A JSON value (CloudStack 4.23), or a string holding the JSON text.
    Json,
    /// A string holding Base64 of the JSON (older builds). Those builds also
    /// Base64-encode every `content` of the `vm_data` inside such a
    /// document, so the form of the document says how to read its contents.
    Base64,
}

/// Decodes Base64 as CloudStack's older builds write it (standard alphabet;
/// padding optional, line breaks and blanks ignored). `None` if it is not
/// Base64.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    STANDARD
        .decode(&compact)
        .or_else(|_| STANDARD_NO_PAD.decode(&compact))
        .ok()
}

/// A rule document (`fw_rules`, `acl_rules`, `lb_rules`, `vm_data`,
/// `restore_data`) as CloudStack sends it: a JSON value (4.23) or a string
/// holding Base64 of the JSON (older builds); a string holding the JSON text
/// is accepted too. The two string forms never overlap: JSON documents start
/// with `{` or `[`, which are not Base64 characters. Returns `None` only
/// when the field is absent; `null`, an empty or blank string is refused.
pub fn decode_document<'a>(
    field: &str,
    value: Option<&'a Value>,
) -> Result<Option<(Cow<'a, Value>, DocumentForm)>, ProtocolError> {
    match value {
        None => Ok(None),
        Some(Value::Null) => Err(validate::invalid(field, "null is not a document")),
        Some(Value::String(s)) => {
            let t = s.trim();
            if t.is_empty() {
                return Err(validate::invalid(field, "empty document"));
            }
            if t.starts_with('{') || t.starts_with('[') {
                return serde_json::from_str(t)
                    .map(|v| Some((Cow::Owned(v), DocumentForm::Json)))
                    .map_err(|_| validate::invalid(field, "not valid JSON"));
            }
            let bytes = decode_base64(t)
                .ok_or_else(|| validate::invalid(field, "neither JSON nor Base64 of JSON"))?;
            serde_json::from_slice(&bytes)
                .map(|v| Some((Cow::Owned(v), DocumentForm::Base64)))
                .map_err(|_| validate::invalid(field, "Base64 content is not valid JSON"))
        }
        // A JSON value is read in place (a 10,000-rule document is not copied).
        Some(v) => Ok(Some((Cow::Borrowed(v), DocumentForm::Json))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_parts() {
        let body =
            br#"{"physical-network-extension-details":{"hosts":"10.0.0.1","executor.port":8443},
            "network-extension-details":{"host":"h1","namespace":"cs-net-42"},
            "payload":{"network_id":"42"}}"#;
        let env = Envelope::parse(body).unwrap();
        assert_eq!(env.detail("hosts"), Some("10.0.0.1"));
        assert_eq!(env.detail("executor.port"), Some("8443"));
        assert_eq!(env.network_details["namespace"], "cs-net-42");
        assert_eq!(env.fields().req("network_id", validate::id), Ok(42));
    }

    #[test]
    fn rejects_malformed_missing_and_oversized() {
        assert!(matches!(
            Envelope::parse(b"{"),
            Err(ProtocolError::MalformedJson(_))
        ));
        assert!(matches!(
            Envelope::parse(b"[]"),
            Err(ProtocolError::MalformedJson(_))
        ));
        assert_eq!(
            Envelope::parse(b"{}").unwrap_err().to_string(),
            "missing required field 'payload'"
        );
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert!(matches!(
            Envelope::parse(&big),
            Err(ProtocolError::TooLarge { .. })
        ));
    }

    #[test]
    fn missing_and_nested_fields_are_named() {
        let map: Map<String, Value> =
            serde_json::from_str(r#"{"portStart":"x","empty":""}"#).unwrap();
        let f = Fields::new("fw_rules.rules[3]", &map);
        assert_eq!(
            f.opt_int("portStart").unwrap_err().to_string(),
            "invalid value for 'fw_rules.rules[3].portStart': 'x' is not an integer"
        );
        assert_eq!(f.opt_str("empty"), Ok(None));
        assert_eq!(
            f.req_str("absent").unwrap_err().to_string(),
            "missing required field 'fw_rules.rules[3].absent'"
        );
    }

    #[test]
    fn documents_as_json_or_base64() {
        let json = serde_json::json!({"rules": []});
        let b64 = base64::engine::general_purpose::STANDARD.encode(json.to_string());
        let owned = |r: Result<Option<(Cow<'_, Value>, DocumentForm)>, ProtocolError>| {
            r.map(|o| o.map(|(v, form)| (v.into_owned(), form)))
        };
        assert_eq!(
            owned(decode_document("fw_rules", Some(&json))),
            Ok(Some((json.clone(), DocumentForm::Json)))
        );
        let b64 = Value::String(b64);
        assert_eq!(
            owned(decode_document("fw_rules", Some(&b64))),
            Ok(Some((json.clone(), DocumentForm::Base64)))
        );
        // Unpadded and wrapped Base64 (MIME line breaks) read the same.
        let wrapped = {
            let s = b64.as_str().unwrap().trim_end_matches('=');
            Value::String(format!("{}\n{}", &s[..8], &s[8..]))
        };
        assert_eq!(
            owned(decode_document("fw_rules", Some(&wrapped))),
            Ok(Some((json.clone(), DocumentForm::Base64)))
        );
        let text = Value::String(json.to_string());
        assert_eq!(
            owned(decode_document("fw_rules", Some(&text))),
            Ok(Some((json, DocumentForm::Json)))
        );
        assert_eq!(owned(decode_document("fw_rules", None)), Ok(None));
        for (bad, reason) in [
            (
                Value::String("%%%".into()),
                "neither JSON nor Base64 of JSON",
            ),
            (Value::String("  ".into()), "empty document"),
            (Value::Null, "null is not a document"),
            (Value::String("[1,".into()), "not valid JSON"),
            (
                Value::String("aGk=".into()),
                "Base64 content is not valid JSON",
            ),
        ] {
            assert_eq!(
                owned(decode_document("fw_rules", Some(&bad))),
                Err(validate::invalid("fw_rules", reason)),
                "{bad}"
            );
        }
    }

    #[test]
    fn strict_fields_refuse_present_values_without_content() {
        let map: Map<String, Value> = serde_json::from_str(
            r#"{"empty":"","blank":" ","null":null,"list":["10.0.0.0/8",""],
                "nulls":["10.0.0.0/8",null],"commas":"10.0.0.0/8,,10.1.0.0/16",
                "none":[],"obj":[{}],"ok":"tcp"}"#,
        )
        .unwrap();
        let strict = Fields::strict("r[2]", &map);
        let lax = Fields::new("r[2]", &map);
        for key in ["empty", "blank", "null"] {
            assert_eq!(
                strict.opt_str(key).unwrap_err(),
                validate::invalid(
                    &format!("r[2].{key}"),
                    if key == "null" {
                        NULL_IN_RULE
                    } else {
                        EMPTY_IN_RULE
                    }
                )
            );
            assert!(strict.req_str(key).is_err());
        }
        assert_eq!(lax.opt_str("empty"), Ok(None));
        assert_eq!(lax.opt_str("null"), Ok(None));
        assert_eq!(strict.opt_str("absent"), Ok(None));
        assert_eq!(strict.opt_str("ok"), Ok(Some("tcp".into())));
        let named = |key: &str| match strict.str_list(key).unwrap_err() {
            ProtocolError::InvalidField { field, .. } => field,
            other => panic!("{other}"),
        };
        assert_eq!(named("list"), "r[2].list[1]");
        assert_eq!(named("nulls"), "r[2].nulls[1]");
        assert_eq!(named("commas"), "r[2].commas");
        assert_eq!(named("empty"), "r[2].empty");
        assert_eq!(named("null"), "r[2].null");
        assert_eq!(named("obj"), "r[2].obj[0]");
        assert_eq!(strict.str_list("none"), Ok(vec![]));
        assert_eq!(strict.str_list("absent"), Ok(vec![]));
        assert_eq!(lax.str_list("list"), Ok(vec!["10.0.0.0/8".to_string()]));
        assert_eq!(lax.str_list("commas").unwrap().len(), 2);
    }
}
