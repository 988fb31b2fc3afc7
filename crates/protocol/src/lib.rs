//! The CloudStack network-extension protocol: command names, envelopes,
//! payloads and rule documents (pure types and validation), plus the request
//! signing shared by the bridge and the executors, the capability values the
//! executor carries out, and the build identity both sides compare.

pub mod capabilities;
pub mod envelope;
pub mod identity;
pub mod payload;
pub mod rules;
pub mod secrets;
pub mod signing;
pub mod target;
pub mod validate;
pub mod vpc;

use std::fmt;
use std::str::FromStr;

/// Package version, compared by bridge and executors in the health handshake.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Git revision the binaries were built from ("unknown" outside a checkout).
pub const GIT_REVISION: &str = env!("NETBRIDGE_GIT_REV");

/// `"<version>+<revision>"`, the build identity reported by `/v1/health`.
pub fn build_id() -> String {
    format!("{VERSION}+{GIT_REVISION}")
}

/// Errors of the protocol layer. Every variant names the offending field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("unknown command '{0}'")]
    UnknownCommand(String),
    #[error("invalid value for '{field}': {reason}")]
    InvalidField { field: String, reason: String },
    #[error("missing required field '{0}'")]
    MissingField(String),
    /// Neither `network_id` nor `vpc_id`: the command names no router.
    #[error("missing required field 'network_id' (or 'vpc_id')")]
    MissingTarget,
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("payload too large: {size} bytes (limit {limit})")]
    TooLarge { size: usize, limit: usize },
}

macro_rules! commands {
    ($( $variant:ident => $name:literal ),+ $(,)?) => {
        /// Every command of the protocol, by its wire name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Command { $( $variant ),+ }

        impl Command {
            /// All commands, in declaration order.
            pub const ALL: &'static [Command] = &[ $( Command::$variant ),+ ];

            /// The wire name (`implement-network`, …).
            pub fn as_str(self) -> &'static str {
                match self { $( Command::$variant => $name ),+ }
            }
        }

        impl FromStr for Command {
            type Err = ProtocolError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $name => Ok(Command::$variant), )+
                    other => Err(ProtocolError::UnknownCommand(sanitize_for_message(other))),
                }
            }
        }
    };
}

commands! {
    EnsureNetworkDevice => "ensure-network-device",
    ImplementNetwork => "implement-network",
    ShutdownNetwork => "shutdown-network",
    DestroyNetwork => "destroy-network",
    ImplementVpc => "implement-vpc",
    ShutdownVpc => "shutdown-vpc",
    UpdateVpcSourceNatIp => "update-vpc-source-nat-ip",
    AssignIp => "assign-ip",
    ReleaseIp => "release-ip",
    AddStaticNat => "add-static-nat",
    DeleteStaticNat => "delete-static-nat",
    AddPortForward => "add-port-forward",
    DeletePortForward => "delete-port-forward",
    ApplyFwRules => "apply-fw-rules",
    ApplyNetworkAcl => "apply-network-acl",
    PrepareNic => "prepare-nic",
    ReleaseNic => "release-nic",
    AddDhcpEntry => "add-dhcp-entry",
    RemoveDhcpEntry => "remove-dhcp-entry",
    ConfigDhcpSubnet => "config-dhcp-subnet",
    RemoveDhcpSubnet => "remove-dhcp-subnet",
    SetDhcpOptions => "set-dhcp-options",
    AddDnsEntry => "add-dns-entry",
    RemoveDnsEntry => "remove-dns-entry",
    ConfigDnsSubnet => "config-dns-subnet",
    RemoveDnsSubnet => "remove-dns-subnet",
    SaveVmData => "save-vm-data",
    SaveUserdata => "save-userdata",
    SavePassword => "save-password",
    SaveSshkey => "save-sshkey",
    SaveHypervisorHostname => "save-hypervisor-hostname",
    ApplyLbRules => "apply-lb-rules",
    RestoreNetwork => "restore-network",
    CustomAction => "custom-action",
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Command {
    /// Commands whose repetition changes nothing, so a client may retry them
    /// after a transport failure. Every executor command is written to be
    /// idempotent, but `custom-action` runs operator code and is never retried.
    pub fn is_idempotent(self) -> bool {
        !matches!(self, Command::CustomAction)
    }
}

/// Makes an untrusted value safe to echo in an error message: at most 64
/// characters, control characters escaped.
pub fn sanitize_for_message(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(64)
        .flat_map(char::escape_default)
        .collect();
    if value.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_round_trips_through_its_wire_name() {
        for command in Command::ALL {
            assert_eq!(command.as_str().parse::<Command>(), Ok(*command));
        }
        assert_eq!(Command::ALL.len(), 34);
    }

    #[test]
    fn unknown_command_is_named_and_sanitized() {
        let err = "rm -rf /;\n".parse::<Command>().unwrap_err();
        assert_eq!(err.to_string(), "unknown command 'rm -rf /;\\n'");
    }
}
