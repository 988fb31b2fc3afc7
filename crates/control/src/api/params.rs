//! Request parameter access with CloudStack's conventions: names are
//! case-insensitive, map parameters come as `name[i].key=k&name[i].value=v`
//! or `name[i].k=v`, and every bad value is a 431 error naming the parameter.

use std::collections::BTreeMap;

use super::{ApiError, Params};
use netbridge_protocol::sanitize_for_message as q;

/// Longest accepted value of any parameter.
pub const MAX_VALUE_LEN: usize = 65_536;
/// Longest accepted detail value.
pub const MAX_DETAIL_VALUE_LEN: usize = 8_192;
/// Longest accepted detail key.
pub const MAX_DETAIL_KEY_LEN: usize = 255;
/// Most entries in one map parameter.
pub const MAX_MAP_ENTRIES: usize = 256;

/// One request: lower-cased names → (name as sent, value).
pub struct Req<'a> {
    command: String,
    map: BTreeMap<String, (&'a str, &'a str)>,
}

/// One `name[i]` group of a map parameter: (sub-key as sent, value).
pub type Group<'a> = Vec<(&'a str, &'a str)>;

impl<'a> Req<'a> {
    pub fn new(command: &str, params: &'a Params) -> Result<Req<'a>, ApiError> {
        let mut map = BTreeMap::new();
        for (name, value) in params {
            if value.len() > MAX_VALUE_LEN {
                return Err(ApiError::param(format!(
                    "Value of parameter {} is too long (at most {MAX_VALUE_LEN} bytes)",
                    q(name)
                )));
            }
            if map
                .insert(name.to_ascii_lowercase(), (name.as_str(), value.as_str()))
                .is_some()
            {
                return Err(ApiError::param(format!(
                    "Parameter {} is given more than once",
                    q(name)
                )));
            }
        }
        Ok(Req {
            command: command.to_ascii_lowercase(),
            map,
        })
    }

    /// Raw value (empty values count as given).
    pub fn raw(&self, name: &str) -> Option<&'a str> {
        self.map.get(name).map(|(_, v)| *v)
    }

    /// Value, with empty treated as absent (as CloudStack does).
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.raw(name).filter(|v| !v.trim().is_empty())
    }

    pub fn missing(&self, name: &str) -> ApiError {
        ApiError::param(format!(
            "Unable to execute API command {} due to missing parameter {name}",
            self.command
        ))
    }

    pub fn required(&self, name: &str) -> Result<&'a str, ApiError> {
        self.get(name).ok_or_else(|| self.missing(name))
    }

    /// A UUID parameter, lower-cased.
    pub fn uuid(&self, name: &str) -> Result<Option<String>, ApiError> {
        self.get(name).map(|v| parse_uuid(name, v)).transpose()
    }

    pub fn required_uuid(&self, name: &str) -> Result<String, ApiError> {
        parse_uuid(name, self.required(name)?)
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if v.trim().eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.trim().eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::param(format!(
                "Invalid value '{}' for parameter {name}: expected true or false",
                q(v)
            ))),
        }
    }

    /// A positive integer parameter (`page`, `pagesize`).
    pub fn positive(&self, name: &str, max: usize) -> Result<Option<usize>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n >= 1 && n <= max => Ok(Some(n)),
                _ => Err(ApiError::param(format!(
                    "Invalid value '{}' for parameter {name}: expected an integer from 1 to {max}",
                    q(v)
                ))),
            },
        }
    }

    /// Bounded text without control characters.
    pub fn text(
        &self,
        name: &str,
        max: usize,
        multiline: bool,
    ) -> Result<Option<&'a str>, ApiError> {
        let Some(v) = self.raw(name) else {
            return Ok(None);
        };
        check_text(name, v, max, multiline)?;
        Ok(Some(v))
    }

    /// Groups of a map parameter `prefix[i].sub`, by index. `None` when no
    /// such parameter was sent.
    pub fn indexed(&self, prefix: &str) -> Result<Option<BTreeMap<u32, Group<'a>>>, ApiError> {
        let head = format!("{prefix}[");
        let mut out: BTreeMap<u32, Group<'a>> = BTreeMap::new();
        let mut seen = false;
        for (lower, (orig, value)) in self.map.range(head.clone()..) {
            if !lower.starts_with(&head) {
                break;
            }
            seen = true;
            let rest = &lower[head.len()..];
            let bad = || {
                ApiError::param(format!(
                    "Invalid parameter {}: expected {prefix}[<index>].<key>",
                    q(orig)
                ))
            };
            let close = rest.find(']').ok_or_else(bad)?;
            let index_text = &rest[..close];
            if index_text.is_empty()
                || index_text.len() > 4
                || !index_text.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(bad());
            }
            let index: u32 = index_text.parse().map_err(|_| bad())?;
            let after = &rest[close + 1..];
            let sub_start = head.len() + close + 2;
            if !after.starts_with('.') || after.len() < 2 {
                return Err(bad());
            }
            // Sub-key as sent (case preserved), from the original name.
            let sub = orig.get(sub_start..).ok_or_else(bad)?;
            out.entry(index).or_default().push((sub, value));
            if out.len() > MAX_MAP_ENTRIES {
                return Err(ApiError::param(format!(
                    "Too many entries in parameter {prefix} (at most {MAX_MAP_ENTRIES})"
                )));
            }
        }
        // A bare `details=...` is not the map form.
        if !seen {
            return Ok(None);
        }
        Ok(Some(out))
    }

    /// The `details` map, validated: `None` when not sent.
    pub fn details(&self) -> Result<Option<Vec<(String, String)>>, ApiError> {
        let Some(groups) = self.indexed("details")? else {
            return Ok(None);
        };
        let mut out: Vec<(String, String)> = Vec::new();
        for (index, group) in groups {
            let at = format!("details[{index}]");
            let mut key = None;
            let mut value = None;
            let mut pairs: Vec<(&str, &str)> = Vec::new();
            for (sub, v) in group {
                if sub.eq_ignore_ascii_case("key") {
                    key = Some(v);
                } else if sub.eq_ignore_ascii_case("value") {
                    value = Some(v);
                } else {
                    pairs.push((sub, v));
                }
            }
            match (key, value) {
                (Some(k), Some(v)) => pairs.push((k, v)),
                (None, None) => {}
                (Some(_), None) => {
                    return Err(ApiError::param(format!(
                        "Invalid parameter {at}: {at}.value is missing"
                    )))
                }
                (None, Some(_)) => {
                    return Err(ApiError::param(format!(
                        "Invalid parameter {at}: {at}.key is missing"
                    )))
                }
            }
            for (k, v) in pairs {
                let k = k.trim();
                check_detail_key(&at, k)?;
                check_detail_value(&at, k, v)?;
                if out.iter().any(|(have, _)| have == k) {
                    return Err(ApiError::param(format!(
                        "Duplicate detail key '{}' in parameter details",
                        q(k)
                    )));
                }
                out.push((k.to_string(), v.to_string()));
            }
        }
        Ok(Some(out))
    }
}

/// CloudStack's text for an id that is not a UUID.
pub fn parse_uuid(name: &str, value: &str) -> Result<String, ApiError> {
    let v = value.trim();
    if v.len() == 36 && uuid::Uuid::try_parse(v).is_ok() {
        Ok(v.to_ascii_lowercase())
    } else {
        Err(unknown_entity(name, value))
    }
}

/// CloudStack's text for an id parameter naming nothing (it resolves ids
/// before the command runs, with the same text as for a malformed one).
pub fn unknown_entity(name: &str, value: &str) -> ApiError {
    ApiError::param(format!(
        "Invalid parameter {name} value={} due to incorrect long value format, or entity does not exist or due to incorrect parameter annotation for the field in api cmd class.",
        q(value)
    ))
}

/// Bounded text without control characters (newline/tab only if multiline).
pub fn check_text(name: &str, value: &str, max: usize, multiline: bool) -> Result<(), ApiError> {
    if value.chars().count() > max {
        return Err(ApiError::param(format!(
            "Invalid parameter {name}: longer than {max} characters"
        )));
    }
    let bad = value
        .chars()
        .any(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')));
    if bad {
        return Err(ApiError::param(format!(
            "Invalid parameter {name}: control characters are not allowed"
        )));
    }
    Ok(())
}

fn check_detail_key(at: &str, key: &str) -> Result<(), ApiError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_DETAIL_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::param(format!(
            "Invalid detail key '{}' in parameter {at}: keys are 1-{MAX_DETAIL_KEY_LEN} letters, digits and . _ - :",
            q(key)
        )))
    }
}

/// Never echoes the value: it may be a secret.
fn check_detail_value(at: &str, key: &str, value: &str) -> Result<(), ApiError> {
    if value.len() > MAX_DETAIL_VALUE_LEN {
        return Err(ApiError::param(format!(
            "Invalid value of detail '{key}' in parameter {at}: longer than {MAX_DETAIL_VALUE_LEN} bytes"
        )));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ApiError::param(format!(
            "Invalid value of detail '{key}' in parameter {at}: control characters are not allowed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn both_detail_forms_and_case_insensitive_names() {
        let params = p(&[
            ("Details[0].Key", "hosts"),
            ("details[0].value", "10.0.0.1"),
            ("DETAILS[1].Executor.Port", "8443"),
        ]);
        let req = Req::new("x", &params).unwrap();
        assert_eq!(
            req.details().unwrap().unwrap(),
            vec![
                ("hosts".to_string(), "10.0.0.1".to_string()),
                ("Executor.Port".to_string(), "8443".to_string())
            ]
        );
    }

    #[test]
    fn malformed_map_parameters_are_named() {
        for bad in [
            "details[x].key",
            "details[0]key",
            "details[].a",
            "details[12345].a",
        ] {
            let params = p(&[(bad, "v")]);
            let e = Req::new("x", &params).unwrap().details().unwrap_err();
            assert_eq!(e.code, 431);
            assert!(e.text.contains(bad), "{e:?}");
        }
        let params = p(&[("details[0].key", "a")]);
        let e = Req::new("x", &params).unwrap().details().unwrap_err();
        assert_eq!(
            e.text,
            "Invalid parameter details[0]: details[0].value is missing"
        );
        let params = p(&[("details[0].a;rm", "v")]);
        assert!(Req::new("x", &params).unwrap().details().is_err());
    }

    #[test]
    fn uuid_and_bool_errors() {
        let e = parse_uuid("id", "1 OR 1=1").unwrap_err();
        assert!(e
            .text
            .starts_with("Invalid parameter id value=1 OR 1=1 due to incorrect long value format"));
        let params = p(&[("cleanupdetails", "yes")]);
        let e = Req::new("x", &params)
            .unwrap()
            .bool("cleanupdetails")
            .unwrap_err();
        assert_eq!(
            e.text,
            "Invalid value 'yes' for parameter cleanupdetails: expected true or false"
        );
    }
}
