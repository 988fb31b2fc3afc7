//! Building blocks of issue 6 (VPCs, network ACLs, custom actions, IPv6) for
//! the executor engine. Everything here is pure (parsing, validation,
//! rendering) except [`actions::ActionRunner`], which runs `ip`, `nft` and
//! operator hooks with argument vectors.
//!
//! - [`acl`]: `acl_rules` of `apply-network-acl` → per-tier nft chains.
//! - [`model`]: VPC desired state, reference-counted public addresses and
//!   links, VPC source NAT and the inter-tier forward rules.
//! - [`pbr`]: policy-routing route/rule specs parsed into typed parts and the
//!   namespace-private routing-table registry.
//! - [`actions`]: the flat `custom-action` envelope, built-in actions and the
//!   hooks runner.
//! - [`ipv6`]: radvd configuration and the IPv6 firewall rules of a network.
//!
//! nft text is written for an `inet` table owned by the engine: chain
//! definitions go inside `table inet <name> { … }`, rule lines into the
//! engine's base chains.

pub mod acl;
pub mod actions;
pub mod ipv6;
pub mod model;
pub mod pbr;

use crate::protocol::ProtocolError;

/// Errors of the VPC layer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VpcError {
    /// Bad input; `field` names the offending field (or rule), nothing changed.
    #[error("invalid value for '{field}': {reason}")]
    Invalid { field: String, reason: String },
    /// A required field is absent.
    #[error("missing required field '{0}'")]
    Missing(String),
    /// Running a program (ip, nft, a hook) failed.
    #[error("{0}")]
    Exec(String),
    /// The action is not known (neither built in nor a hook).
    #[error("unknown custom action '{0}'")]
    UnknownAction(String),
}

impl VpcError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> VpcError {
        VpcError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<VpcError> for crate::executor::ExecError {
    fn from(e: VpcError) -> Self {
        use crate::executor::ExecError;
        match e {
            VpcError::Invalid { field, reason } => {
                ExecError::Invalid(ProtocolError::InvalidField { field, reason })
            }
            VpcError::Missing(f) => ExecError::Invalid(ProtocolError::MissingField(f)),
            VpcError::Exec(m) => ExecError::Apply(m),
            VpcError::UnknownAction(a) => {
                ExecError::Unsupported(format!("unknown custom action '{a}'"))
            }
        }
    }
}

/// Reads a scalar that CloudStack may send as a JSON string or number.
/// Empty strings and null count as absent.
pub(crate) fn scalar_str(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) if s.trim().is_empty() => None,
        serde_json::Value::String(s) => Some(s.trim().to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A Linux interface name: 1–15 characters of `[A-Za-z0-9._-]`, not `.`/`..`.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Serde through `Display`/`FromStr` (ipnet is built without its serde
/// feature): `#[serde(with = "super::as_string")]`.
pub(crate) mod as_string {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T: FromStr, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| D::Error::custom(format!("bad value '{s}'")))
    }
}

/// Like [`as_string`] for a list.
pub(crate) mod as_string_vec {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| x.to_string()))
    }

    pub fn deserialize<'de, T: FromStr, D: Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| {
                s.parse()
                    .map_err(|_| D::Error::custom(format!("bad value '{s}'")))
            })
            .collect()
    }
}
