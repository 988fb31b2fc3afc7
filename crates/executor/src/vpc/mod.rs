//! Building blocks of VPCs (VPCs, network ACLs, custom actions, IPv6) for
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
//! Rules and chains are contributed to the engine's table as data
//! ([`crate::nft`], table `inet nb`).
//!
//! # Wiring into the engine
//!
//! Implemented in `executor/vpc_engine.rs` (called first by `Engine::execute`).
//!
//! - **One state per VPC namespace.** All tiers of a VPC share `cs-vpc-<id>`
//!   and therefore one nft table: the engine keeps one [`model::VpcState`]
//!   per VPC namespace (serde-ready) next to its per-tier network states,
//!   and plans the namespace with [`model::VpcState::plan`] (the engine's
//!   `planner::Plan`: one guest leg per tier from the tiers' `NetworkState`s,
//!   shared public legs `nbx<vpc_id>-<vlan>`, default route, and
//!   [`model::VpcState::ruleset`]), passing each tier's
//!   DNAT/static-NAT rules in [`model::VpcRulesetParts`]; the engine's
//!   applier installs it unchanged (see `smoke/vpc.rs`). Planning one
//!   tier's `NetworkState` alone would replace the table and drop the other
//!   tiers' rules.
//! - Set [`model::vpc_sysctls`] in the namespace before addresses are added:
//!   without `promote_secondaries`, removing a link's first address (the old
//!   source-NAT IP, or any released IP) silently removes every other address
//!   of that subnet on the link. The same holds for isolated networks.
//! - `implement-vpc`: [`model::parse_vpc_payload`] (the closure maps a VLAN to
//!   the public leg name, e.g. `planner::public_inner_name`), then
//!   [`model::VpcState::new`] + [`model::VpcState::implement`].
//! - `implement-network` with `vpc_id`: [`model::VpcState::add_tier`] with
//!   the tier's guest leg (`planner::guest_inner_name(network_id)`), gateway
//!   and CIDR; a re-sent tier keeps its ACL.
//! - `shutdown-network`/`destroy-network` of a tier:
//!   [`model::VpcState::remove_tier`] says exactly which leg, chains,
//!   addresses and public links to remove (only those nothing else uses).
//! - `assign-ip`/static NAT/port forwarding/LB on a tier:
//!   [`model::VpcState::acquire`] with `Owner::Tier(id)`; their removal
//!   [`model::VpcState::release`]; `release-ip`
//!   [`model::VpcState::release_address`]. Links and the default route come
//!   from [`model::VpcState::links`] / [`model::VpcState::default_route`].
//! - `update-vpc-source-nat-ip`: [`model::VpcState::update_source_nat`]; only
//!   the SNAT line changes in the re-rendered ruleset.
//! - `apply-network-acl`: `protocol::rules::AclRule::parse_list` +
//!   [`acl::from_protocol`] (or [`acl::parse_acl_rules`], which also takes
//!   IPv6 CIDRs and protocol numbers), then [`model::VpcState::set_acl`] with
//!   [`acl::TierAcl::Applied`].
//! - `custom-action`: [`actions::execute_custom_action`] with an
//!   [`actions::ActionRunner`] (`hooks_dir` from the executor config, 60 s
//!   timeout) and an [`actions::PbrStore`] under the state directory, inside
//!   the namespace's lock; it hands `reboot-device` (re-apply the desired
//!   state) and `dump-config` (return it, secrets redacted) back as
//!   [`actions::ActionOutcome::Engine`]. `destroy-network`/`shutdown-vpc`
//!   call [`actions::PbrStore::remove`]; after (re)building a namespace
//!   (reconcile, restart, failover) the engine calls
//!   [`actions::ActionRunner::replay_pbr`] with the stored tables so pbr
//!   routes and rules come back.
//! - IPv6 (`network_ip6_gateway`/`network_ip6_cidr`):
//!   [`ipv6::Ipv6Network::from_payload`]; address
//!   [`ipv6::Ipv6Network::gateway_with_prefix`] on the guest leg,
//!   [`ipv6::ipv6_sysctls`], radvd with [`ipv6::render_radvd_conf`] (one
//!   process per network, `radvd -n -C <conf> -p <pid>` in the namespace,
//!   tracked by PID), and [`ipv6::forward_rules`] placed in `forward` right
//!   after its fixed rules, before the firewall or ACL jumps.

pub mod acl;
pub mod actions;
pub mod ipv6;
pub mod model;
pub mod pbr;

use netbridge_protocol::ProtocolError;

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

impl From<VpcError> for crate::ExecError {
    fn from(e: VpcError) -> Self {
        use crate::ExecError;
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
pub(crate) use netbridge_protocol::vpc::scalar_str;

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
