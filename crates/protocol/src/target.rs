//! Which router a command is about, decided once for the bridge, the entry
//! point and the executor: a standalone network, a VPC, or a tier of a VPC.
//!
//! - [`NetworkId`] and [`VpcId`] follow one rule: a plain decimal id
//!   ([`validate::id`]); they end up in namespace, file and journal names.
//! - [`Namespace`] is the router namespace name, `cs-net-<network_id>` or
//!   `cs-vpc-<vpc_id>`, formatted and parsed here only (other software, the
//!   CloudStack KVM agent and operators' tooling, relies on these names).
//! - [`Target`] is the decision: `vpc_id` in the payload, else a `cs-vpc-`
//!   namespace in the device details, makes a VPC command (with a
//!   `network_id`, a tier's); a `network_id` alone makes a network's. A
//!   namespace named in the device details must be the target's.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::envelope::Fields;
use super::{sanitize_for_message, validate, ProtocolError};

/// Prefix of a network's router namespace.
pub const NETWORK_PREFIX: &str = "cs-net-";
/// Prefix of a VPC's router namespace (shared by its tiers).
pub const VPC_PREFIX: &str = "cs-vpc-";

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u64);

        impl $name {
            /// Wire name of the field that carries this id.
            pub const FIELD: &'static str = $field;

            pub fn new(id: u64) -> $name {
                $name(id)
            }

            /// Validates `value` as the id carried in `field`.
            pub fn parse(field: &str, value: &str) -> Result<$name, ProtocolError> {
                validate::id(field, value).map($name)
            }

            pub fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = ProtocolError;
            fn from_str(s: &str) -> Result<$name, ProtocolError> {
                $name::parse($field, s)
            }
        }

        /// Persisted as its decimal string (the form the wire carries).
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        /// Read from a decimal string or a JSON number.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                match Value::deserialize(d)? {
                    Value::Number(n) => n
                        .as_u64()
                        .map($name)
                        .ok_or_else(|| serde::de::Error::custom("not a decimal id")),
                    Value::String(s) => s.parse().map_err(serde::de::Error::custom),
                    _ => Err(serde::de::Error::custom("not a decimal id")),
                }
            }
        }
    };
}

id_type!(
    /// A CloudStack network id (a standalone network or a VPC tier).
    NetworkId,
    "network_id"
);
id_type!(
    /// A CloudStack VPC id.
    VpcId,
    "vpc_id"
);

/// A router namespace: `cs-net-<network_id>` or `cs-vpc-<vpc_id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    Network(NetworkId),
    Vpc(VpcId),
}

impl Namespace {
    /// Parses a namespace name given in `field`.
    pub fn parse(field: &str, value: &str) -> Result<Namespace, ProtocolError> {
        let bad = || {
            validate::invalid(
                field,
                format!(
                    "'{}' is not a router namespace (cs-net-<id> or cs-vpc-<id>)",
                    sanitize_for_message(value)
                ),
            )
        };
        if let Some(id) = value.strip_prefix(NETWORK_PREFIX) {
            return NetworkId::parse(field, id)
                .map(Namespace::Network)
                .map_err(|_| bad());
        }
        if let Some(id) = value.strip_prefix(VPC_PREFIX) {
            return VpcId::parse(field, id)
                .map(Namespace::Vpc)
                .map_err(|_| bad());
        }
        Err(bad())
    }

    /// The name (`cs-net-42`).
    pub fn name(self) -> String {
        self.to_string()
    }

    pub fn is_vpc(self) -> bool {
        matches!(self, Namespace::Vpc(_))
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Namespace::Network(id) => write!(f, "{NETWORK_PREFIX}{id}"),
            Namespace::Vpc(id) => write!(f, "{VPC_PREFIX}{id}"),
        }
    }
}

impl FromStr for Namespace {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Namespace, ProtocolError> {
        Namespace::parse("namespace", s)
    }
}

/// What a command is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// A standalone (isolated, shared or L2) network: its own router.
    Network(NetworkId),
    /// A VPC as a whole (`implement-vpc`, `shutdown-vpc`, …).
    Vpc(VpcId),
    /// A tier of a VPC: the VPC's router, the tier's guest leg.
    Tier { vpc: VpcId, network: NetworkId },
}

impl Target {
    /// The router namespace: the VPC's for a VPC and its tiers.
    pub fn namespace(self) -> Namespace {
        match self {
            Target::Network(n) => Namespace::Network(n),
            Target::Vpc(vpc) | Target::Tier { vpc, .. } => Namespace::Vpc(vpc),
        }
    }

    /// The key the bridge places by: the decimal VPC id for a VPC and its
    /// tiers (one router, one host), else the network id.
    pub fn placement_key(self) -> String {
        match self {
            Target::Network(n) => n.to_string(),
            Target::Vpc(vpc) | Target::Tier { vpc, .. } => vpc.to_string(),
        }
    }

    /// The network (standalone or tier), if the command names one.
    pub fn network_id(self) -> Option<NetworkId> {
        match self {
            Target::Network(n) | Target::Tier { network: n, .. } => Some(n),
            Target::Vpc(_) => None,
        }
    }

    pub fn vpc_id(self) -> Option<VpcId> {
        match self {
            Target::Vpc(v) | Target::Tier { vpc: v, .. } => Some(v),
            Target::Network(_) => None,
        }
    }

    /// The decision, from the command's fields (`vpc_id`, `network_id`:
    /// the payload, or the flat `custom-action` object) and the device
    /// details of the network (`network-extension-details`, `{}` if none).
    pub fn resolve(
        fields: &Map<String, Value>,
        network_details: &Map<String, Value>,
    ) -> Result<Target, ProtocolError> {
        let f = Fields::new("", fields);
        let network = f.opt(NetworkId::FIELD, NetworkId::parse)?;
        let given = match network_details.get("namespace") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.as_str()),
            _ => None,
        };
        const GIVEN: &str = "network-extension-details.namespace";
        let vpc = match f.opt(VpcId::FIELD, VpcId::parse)? {
            Some(v) => Some(v),
            // A tier command may name its VPC only through the namespace
            // `ensure-network-device` returned.
            None => match given.map(|g| Namespace::parse(GIVEN, g)).transpose()? {
                Some(Namespace::Vpc(v)) => Some(v),
                _ => None,
            },
        };
        let target = match (vpc, network) {
            (Some(vpc), Some(network)) => Target::Tier { vpc, network },
            (Some(vpc), None) => Target::Vpc(vpc),
            (None, Some(network)) => Target::Network(network),
            (None, None) => return Err(ProtocolError::MissingTarget),
        };
        if let Some(given) = given {
            let ns = target.namespace().to_string();
            if given != ns {
                return Err(validate::invalid(
                    GIVEN,
                    format!("'{}' is not {ns}", sanitize_for_message(given)),
                ));
            }
        }
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resolve(fields: Value, details: Value) -> Result<Target, ProtocolError> {
        Target::resolve(fields.as_object().unwrap(), details.as_object().unwrap())
    }

    #[test]
    fn namespaces_format_and_parse() {
        let net = Namespace::Network(NetworkId::new(42));
        let vpc = Namespace::Vpc(VpcId::new(5));
        assert_eq!(net.to_string(), "cs-net-42");
        assert_eq!(vpc.to_string(), "cs-vpc-5");
        assert_eq!("cs-net-42".parse::<Namespace>(), Ok(net));
        assert_eq!("cs-vpc-5".parse::<Namespace>(), Ok(vpc));
        for bad in [
            "cs-net-",
            "cs-vpc-5;x",
            "cs-net-x",
            "net-4",
            "cs-vpc--1",
            "",
        ] {
            assert!(bad.parse::<Namespace>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_have_one_rule_and_persist_as_strings() {
        assert_eq!("42".parse::<NetworkId>(), Ok(NetworkId::new(42)));
        for bad in ["", "x", "4 2", "-1", "42;reboot", "net-a"] {
            assert!(bad.parse::<NetworkId>().is_err(), "{bad}");
            assert!(bad.parse::<VpcId>().is_err(), "{bad}");
        }
        assert_eq!(serde_json::to_value(VpcId::new(5)).unwrap(), json!("5"));
        assert_eq!(
            serde_json::from_value::<VpcId>(json!(5)).unwrap(),
            VpcId::new(5)
        );
        assert_eq!(
            serde_json::from_value::<VpcId>(json!("5")).unwrap(),
            VpcId::new(5)
        );
        assert!(serde_json::from_value::<VpcId>(json!("5x")).is_err());
    }

    #[test]
    fn the_target_decision() {
        let (n, v) = (NetworkId::new(11), VpcId::new(5));
        assert_eq!(
            resolve(json!({"network_id": "11"}), json!({})),
            Ok(Target::Network(n))
        );
        assert_eq!(resolve(json!({"vpc_id": 5}), json!({})), Ok(Target::Vpc(v)));
        let tier = Target::Tier { vpc: v, network: n };
        assert_eq!(
            resolve(json!({"network_id": "11", "vpc_id": "5"}), json!({})),
            Ok(tier)
        );
        // The VPC named only by the device details.
        assert_eq!(
            resolve(
                json!({"network_id": "11"}),
                json!({"namespace": "cs-vpc-5"})
            ),
            Ok(tier)
        );
        assert_eq!(tier.namespace().to_string(), "cs-vpc-5");
        assert_eq!(tier.placement_key(), "5");
        assert_eq!(Target::Network(n).placement_key(), "11");
        assert_eq!(Target::Network(n).namespace().to_string(), "cs-net-11");
        assert_eq!(
            resolve(json!({}), json!({})).unwrap_err().to_string(),
            "missing required field 'network_id' (or 'vpc_id')"
        );
        assert_eq!(
            resolve(json!({"network_id": "11;x"}), json!({}))
                .unwrap_err()
                .to_string(),
            "invalid value for 'network_id': '11;x' is not a decimal id"
        );
        assert_eq!(
            resolve(
                json!({"network_id": "11", "vpc_id": "5"}),
                json!({"namespace": "cs-net-11"})
            )
            .unwrap_err()
            .to_string(),
            "invalid value for 'network-extension-details.namespace': 'cs-net-11' is not cs-vpc-5"
        );
        assert!(resolve(json!({"network_id": "11"}), json!({"namespace": "x;y"})).is_err());
    }
}
