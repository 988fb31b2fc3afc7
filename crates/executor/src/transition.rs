//! The pure transition of a standalone network's desired state: what the
//! engine computes from the held state and a command before it plans,
//! applies or persists anything. No namespaces, files or processes: the
//! engine wraps these steps with its I/O, and tests replay command
//! sequences through them (a compacted journal and the full sequence must
//! give the same state).

use netbridge_protocol::envelope::Envelope;
use netbridge_protocol::payload::{Devices, NetworkCommand, NetworkFields, NetworkRequest};
use netbridge_protocol::Command;

use crate::engine::ExecError;
use crate::services::{self, VmDataSet};
use crate::state::{NetworkState, Transition};

/// Host defaults the payload may leave out.
#[derive(Debug, Clone, Copy)]
pub struct Defaults<'a> {
    /// Host device of guest bridges (`guest.network.device`).
    pub guest_device: &'a str,
    /// Host device of public bridges (`public.network.device`).
    pub public_device: &'a str,
}

/// A network command (`implement-network`, `assign-ip`, …): the next state
/// and what the engine must do with it.
pub fn network_command(
    held: Option<&NetworkState>,
    req: &NetworkRequest,
    envelope: &Envelope,
    defaults: Defaults<'_>,
) -> Result<(NetworkState, Transition), ExecError> {
    let mut next = held
        .cloned()
        .unwrap_or_else(|| NetworkState::new(req, defaults.guest_device));
    let transition = next.transition(req, defaults.public_device)?;
    seed(&mut next, envelope)?;
    Ok((next, transition))
}

/// The state a guest command starts from when the network is not held yet
/// (guest data may arrive before `implement-network`).
pub fn unheld(envelope: &Envelope, guest_device: &str) -> Result<NetworkState, ExecError> {
    let req = NetworkRequest {
        network: NetworkFields::parse(&envelope.fields())?,
        devices: Devices::parse(envelope)?,
        command: NetworkCommand::Shutdown,
    };
    Ok(NetworkState::new(&req, guest_device))
}

/// A guest-service command (DHCP, DNS, VM data, LB): the next state; `vms`
/// is the network's VM data, changed in place (unchanged on error).
pub fn guest_command(
    held: Option<&NetworkState>,
    vms: &mut VmDataSet,
    command: Command,
    envelope: &Envelope,
    defaults: Defaults<'_>,
) -> Result<NetworkState, ExecError> {
    let mut next = match held {
        Some(s) => s.clone(),
        None => unheld(envelope, defaults.guest_device)?,
    };
    seed_addresses(&mut next);
    services::model::apply(
        command,
        &envelope.payload,
        &mut next.guest,
        vms,
        &services::Options::default(),
    )?;
    Ok(next)
}

/// Guest-service facts a network command carries (addresses, CIDR, DNS
/// servers, domain).
pub fn seed(next: &mut NetworkState, envelope: &Envelope) -> Result<(), ExecError> {
    seed_addresses(next);
    let g = &mut next.guest;
    if let Some(c) = next.cidr {
        g.cidr = c.to_string().parse().ok().or(g.cidr);
    }
    let p = &envelope.payload;
    if let Some(d) = services::validate::opt_str(p, "dns").map_err(ExecError::from)? {
        g.dns = services::validate::dns_list("dns", &d)?;
    }
    if let Some(d) = services::validate::opt_str(p, "domain").map_err(ExecError::from)? {
        g.domain = Some(services::validate::hostname("domain", &d, true)?);
    }
    Ok(())
}

/// The guest services listen on the network's extension address and
/// gateway.
pub fn seed_addresses(next: &mut NetworkState) {
    if next.extension_ip.is_some() {
        next.guest.extension_ip = next.extension_ip;
    }
    if next.gateway.is_some() {
        next.guest.gateway = next.gateway;
    }
}
