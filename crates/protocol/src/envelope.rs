//! The command envelope (`physical-network-extension-details`,
//! `network-extension-details`, `payload`) and a typed field reader that
//! names the offending field in every error.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Map, Value};

use super::{sanitize_for_message, validate, ProtocolError};

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

impl Envelope {
    /// Parses a body; bodies over [`MAX_BODY_BYTES`] are refused unread.
    pub fn parse(body: &[u8]) -> Result<Envelope, ProtocolError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(ProtocolError::TooLarge {
                size: body.len(),
                limit: MAX_BODY_BYTES,
            });
        }
        let root: Value = serde_json::from_slice(body)
            .map_err(|e| ProtocolError::MalformedJson(sanitize_for_message(&e.to_string())))?;
        let Value::Object(mut root) = root else {
            return Err(ProtocolError::MalformedJson(
                "the envelope is not a JSON object".into(),
            ));
        };
        let physical = match root.remove("physical-network-extension-details") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(m)) => {
                let mut out = BTreeMap::new();
                for (k, v) in m {
                    let field = format!("physical-network-extension-details.{k}");
                    if let Some(s) = scalar_string(&field, &v)? {
                        out.insert(k, s);
                    }
                }
                out
            }
            Some(_) => {
                return Err(validate::invalid(
                    "physical-network-extension-details",
                    "not an object",
                ))
            }
        };
        let network_details = match root.remove("network-extension-details") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            // Some callers pass the stored details as a JSON string.
            Some(Value::String(s)) if s.trim().is_empty() => Map::new(),
            Some(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
                Ok(Value::Object(m)) => m,
                _ => {
                    return Err(validate::invalid(
                        "network-extension-details",
                        "not a JSON object",
                    ))
                }
            },
            Some(_) => {
                return Err(validate::invalid(
                    "network-extension-details",
                    "not an object",
                ))
            }
        };
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
}

impl<'a> Fields<'a> {
    pub fn new(prefix: &'a str, map: &'a Map<String, Value>) -> Fields<'a> {
        Fields { prefix, map }
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

    /// Optional string; empty strings read as absent.
    pub fn opt_str(&self, key: &str) -> Result<Option<String>, ProtocolError> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => Ok(scalar_string(&self.name(key), v)?.filter(|s| !s.is_empty())),
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

    /// A list of strings (JSON array, or a comma-separated string).
    pub fn str_list(&self, key: &str) -> Result<Vec<String>, ProtocolError> {
        let name = self.name(key);
        match self.raw(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, v) in items.iter().enumerate() {
                    if let Some(s) = scalar_string(&format!("{name}[{i}]"), v)? {
                        out.extend(split_list(&s));
                    }
                }
                Ok(out)
            }
            Some(v) => Ok(scalar_string(&name, v)?
                .map(|s| split_list(&s))
                .unwrap_or_default()),
        }
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// A rule document as CloudStack sends it: a JSON value (4.23) or a string
/// holding Base64 of the JSON (older builds). A string that is itself JSON is
/// accepted too. Returns `None` when absent or empty.
pub fn decode_document<'a>(
    field: &str,
    value: Option<&'a Value>,
) -> Result<Option<Cow<'a, Value>>, ProtocolError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let t = s.trim();
            if t.is_empty() {
                return Ok(None);
            }
            if t.starts_with('{') || t.starts_with('[') {
                return serde_json::from_str(t)
                    .map(|v| Some(Cow::Owned(v)))
                    .map_err(|_| validate::invalid(field, "not valid JSON"));
            }
            let compact: String = t.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact.as_bytes())
                .or_else(|_| {
                    base64::engine::general_purpose::STANDARD_NO_PAD.decode(compact.as_bytes())
                })
                .map_err(|_| validate::invalid(field, "neither JSON nor Base64 of JSON"))?;
            serde_json::from_slice(&bytes)
                .map(|v| Some(Cow::Owned(v)))
                .map_err(|_| validate::invalid(field, "Base64 content is not valid JSON"))
        }
        // A JSON value is read in place (a 10,000-rule document is not copied).
        Some(v) => Ok(Some(Cow::Borrowed(v))),
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
        let owned =
            |r: Result<Option<Cow<'_, Value>>, ProtocolError>| r.map(|o| o.map(Cow::into_owned));
        assert_eq!(
            owned(decode_document("fw_rules", Some(&json))),
            Ok(Some(json.clone()))
        );
        let b64 = Value::String(b64);
        assert_eq!(
            owned(decode_document("fw_rules", Some(&b64))),
            Ok(Some(json.clone()))
        );
        let text = Value::String(json.to_string());
        assert_eq!(
            owned(decode_document("fw_rules", Some(&text))),
            Ok(Some(json))
        );
        assert!(decode_document("fw_rules", Some(&Value::String("%%%".into()))).is_err());
        let empty = Value::String(String::new());
        assert_eq!(owned(decode_document("fw_rules", Some(&empty))), Ok(None));
    }
}
