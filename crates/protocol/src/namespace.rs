//! Router namespace names, which other software (the CloudStack KVM agent,
//! operators' tooling) relies on: `cs-net-<network_id>` for an isolated or
//! shared network, `cs-vpc-<vpc_id>` for a VPC and all its tiers. Formatted
//! here only, for the bridge, the entry point and the executor alike.

use std::fmt::Display;

/// Prefix of a network's router namespace.
pub const NETWORK_PREFIX: &str = "cs-net-";
/// Prefix of a VPC's router namespace (shared by its tiers).
pub const VPC_PREFIX: &str = "cs-vpc-";

/// `cs-net-<network_id>`.
pub fn network(network_id: impl Display) -> String {
    format!("{NETWORK_PREFIX}{network_id}")
}

/// `cs-vpc-<vpc_id>`.
pub fn vpc(vpc_id: impl Display) -> String {
    format!("{VPC_PREFIX}{vpc_id}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert_eq!(super::network(42), "cs-net-42");
        assert_eq!(super::vpc("5"), "cs-vpc-5");
    }
}
