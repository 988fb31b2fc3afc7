//! The bridge in one process: the control-plane [`Api`] plus one shared
//! [`Dispatcher`] whose journal lives in the registry.
//!
//! Two ways to run a network command:
//! - [`Bridge::execute`]: the registration details come from the envelope's
//!   `physical-network-extension-details`, exactly as CloudStack sends them
//!   (what the script form does).
//! - [`Bridge::execute_registered`]: the caller names the extension and the
//!   physical network; the registration's details are read from the registry
//!   at each call (hidden ones decrypted in memory only) and replace the
//!   envelope's in the body sent. So an `updateRegisteredExtension` that
//!   rotates `executor.key` or changes `hosts` applies to the next command,
//!   without a restart. This form also keeps the registry's bindings: a
//!   successful `ensure-network-device` binds the network (or, with a
//!   `vpc_id`, the VPC) to the extension's provider on that physical
//!   network, with the returned device details; a successful
//!   `destroy-network`/`shutdown-network` (of a network outside a VPC) or
//!   `shutdown-vpc` removes the binding. That is what makes
//!   `unregisterExtension` refuse while a network uses the provider.
//!
//! Errors are [`DispatchError`]s; registry lookups that fail are
//! Configuration errors (unknown extension, not registered there).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::api::{Api, ApiConfig, ApiError};
use crate::dispatch::{CommandJournal, DispatchError, Dispatcher, ProgressSink, Settings};
use crate::registry::{BindingTarget, RegistryError, RegistryJournal, ResourceType};
use netbridge_protocol::{sanitize_for_message, Command};

/// How to open a [`Bridge`].
#[derive(Clone)]
pub struct BridgeConfig {
    pub api: ApiConfig,
    /// Network namespace for executor traffic (`/run/netns/NAME`); `None`:
    /// the process's own.
    pub dispatch_netns: Option<PathBuf>,
    /// Dispatcher tunables (timeouts, retries); defaults suit production.
    pub settings: Settings,
    /// Stages of long commands (journal replay on a move), for a terminal.
    pub progress: Option<ProgressSink>,
}

impl std::fmt::Debug for BridgeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeConfig")
            .field("api", &self.api)
            .field("dispatch_netns", &self.dispatch_netns)
            .field("settings", &self.settings)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl BridgeConfig {
    pub fn new(api: ApiConfig) -> BridgeConfig {
        BridgeConfig {
            api,
            dispatch_netns: None,
            settings: Settings::default(),
            progress: None,
        }
    }
}

/// Errors opening a bridge.
#[derive(Debug, thiserror::Error)]
pub enum BridgeOpenError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
}

impl BridgeOpenError {
    /// A setting names something unusable (database, key file, dispatch
    /// namespace): the operator's to fix, retrying will not help.
    pub fn is_configuration(&self) -> bool {
        match self {
            BridgeOpenError::Api(e) => e.code == crate::api::codes::PARAM_ERROR,
            BridgeOpenError::Dispatch(_) => true,
        }
    }
}

/// API + dispatcher; `Send + Sync`, one per process.
pub struct Bridge {
    api: Api,
    dispatcher: Arc<Dispatcher>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("dispatcher", &self.dispatcher)
            .finish()
    }
}

impl Bridge {
    pub fn open(config: BridgeConfig) -> Result<Bridge, BridgeOpenError> {
        let api = Api::open(config.api)?;
        let journal: Arc<dyn CommandJournal> =
            Arc::new(RegistryJournal::new(api.registry_handle()));
        let mut dispatcher = Dispatcher::new_in_netns(journal, config.dispatch_netns.as_deref())?
            .with_settings(config.settings);
        if let Some(progress) = config.progress {
            dispatcher = dispatcher.with_progress(progress);
        }
        Ok(Bridge {
            api,
            dispatcher: Arc::new(dispatcher),
        })
    }

    pub fn api(&self) -> &Api {
        &self.api
    }

    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// Runs `command` with the details of the envelope. Blocking. Hidden
    /// details that CloudStack passes as netbridge sealed them in its
    /// database are decrypted first (in memory only).
    pub fn execute(
        &self,
        command: &str,
        envelope: &[u8],
        timeout: Duration,
    ) -> Result<String, DispatchError> {
        let revealed = self
            .api
            .registry()
            .reveal_envelope(envelope)
            .map_err(|e| DispatchError::Configuration(format!("registration details: {e}")))?;
        self.dispatcher.execute_shared(
            command,
            revealed.as_deref().unwrap_or(envelope),
            None,
            timeout,
        )
    }

    /// Runs `command` with the details of extension `extension_id`'s
    /// registration on `physical_network_id`, and keeps the bindings.
    pub fn execute_registered(
        &self,
        extension_id: &str,
        physical_network_id: &str,
        command: &str,
        envelope: &[u8],
        timeout: Duration,
    ) -> Result<String, DispatchError> {
        let parsed: Command = command
            .parse()
            .map_err(|e: netbridge_protocol::ProtocolError| {
                DispatchError::Configuration(e.to_string())
            })?;
        let details = self
            .api
            .registry()
            .registration_details_full(
                extension_id,
                ResourceType::PhysicalNetwork,
                physical_network_id,
            )
            .map_err(|e| lookup_error(e, extension_id, physical_network_id))?
            .merged();
        self.remember_physical_network_name(physical_network_id, envelope);
        let out = self
            .dispatcher
            .execute_shared(command, envelope, Some(&details), timeout)?;
        self.keep_binding(parsed, extension_id, physical_network_id, envelope, &out)?;
        Ok(out)
    }

    /// CloudStack names the physical network in every envelope
    /// (`physicalnetworkname`); the registry keeps it for
    /// `listExtensions`' `resources[].name`.
    fn remember_physical_network_name(&self, physical_network_id: &str, envelope: &[u8]) {
        let Some(name) = physical_network_name(envelope) else {
            return;
        };
        if let Err(e) = self.api.registry().remember_resource_name(
            ResourceType::PhysicalNetwork,
            physical_network_id,
            &name,
        ) {
            log::warn!("cannot record the name of physical network {physical_network_id}: {e}");
        }
    }

    fn keep_binding(
        &self,
        command: Command,
        extension_id: &str,
        physical_network_id: &str,
        envelope: &[u8],
        out: &str,
    ) -> Result<(), DispatchError> {
        let target = match command {
            Command::EnsureNetworkDevice
            | Command::DestroyNetwork
            | Command::ShutdownNetwork
            | Command::ShutdownVpc => binding_target(command, envelope),
            _ => None,
        };
        let Some(target) = target else {
            return Ok(());
        };
        let registry = self.api.registry();
        let failed = |e: RegistryError| {
            DispatchError::Configuration(format!(
                "{command} succeeded but the registry binding could not be updated: {e}"
            ))
        };
        if command == Command::EnsureNetworkDevice {
            // A sticky answer repeats the binding: a read instead of a write.
            let current = registry.get_binding(&target).map_err(failed)?;
            let same = current.is_some_and(|b| {
                b.extension_id == extension_id
                    && b.physical_network_id == physical_network_id
                    && b.details == out
            });
            if !same {
                registry
                    .bind(&target, extension_id, physical_network_id, out)
                    .map_err(failed)?;
            }
        } else {
            registry.unbind(&target).map_err(failed)?;
        }
        Ok(())
    }
}

/// The object a command binds or unbinds: the VPC for `ensure-network-device`
/// of a VPC or tier and for `shutdown-vpc`; the network for a network outside
/// a VPC. `None` when nothing is (un)bound (a VPC tier's destroy).
fn binding_target(command: Command, envelope: &[u8]) -> Option<BindingTarget> {
    let root: Value = serde_json::from_slice(envelope).ok()?;
    let payload = root.get("payload")?;
    let id = |k: &str| match payload.get(k) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let (vpc, net) = (id("vpc_id"), id("network_id"));
    match command {
        Command::EnsureNetworkDevice => vpc
            .map(BindingTarget::Vpc)
            .or(net.map(BindingTarget::Network)),
        Command::ShutdownVpc => vpc.map(BindingTarget::Vpc),
        Command::DestroyNetwork | Command::ShutdownNetwork if vpc.is_none() => {
            net.map(BindingTarget::Network)
        }
        _ => None,
    }
}

/// `physical-network-extension-details.physicalnetworkname`, when it is a
/// plausible name.
fn physical_network_name(envelope: &[u8]) -> Option<String> {
    let root: Value = serde_json::from_slice(envelope).ok()?;
    let name = root
        .get("physical-network-extension-details")?
        .get("physicalnetworkname")?
        .as_str()?
        .trim();
    let plausible = !name.is_empty()
        && name.chars().count() <= crate::api::commands::MAX_NAME_LEN
        && !name.chars().any(char::is_control);
    plausible.then(|| name.to_string())
}

fn lookup_error(e: RegistryError, extension_id: &str, physical_network_id: &str) -> DispatchError {
    match e {
        RegistryError::NotFound(_) | RegistryError::Invalid(_) => {
            DispatchError::Configuration(format!(
                "extension {} is not registered with physical network {}",
                sanitize_for_message(extension_id),
                sanitize_for_message(physical_network_id)
            ))
        }
        other => {
            DispatchError::Configuration(format!("cannot read the registration details: {other}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_targets() {
        let env = |p: &str| format!(r#"{{"payload": {p}}}"#).into_bytes();
        use Command::*;
        assert_eq!(
            binding_target(EnsureNetworkDevice, &env(r#"{"network_id": "42"}"#)),
            Some(BindingTarget::Network("42".into()))
        );
        assert_eq!(
            binding_target(
                EnsureNetworkDevice,
                &env(r#"{"network_id": "42", "vpc_id": "7"}"#)
            ),
            Some(BindingTarget::Vpc("7".into()))
        );
        assert_eq!(
            binding_target(DestroyNetwork, &env(r#"{"network_id": 42}"#)),
            Some(BindingTarget::Network("42".into()))
        );
        assert_eq!(
            binding_target(
                ShutdownNetwork,
                &env(r#"{"network_id": "42", "vpc_id": "7"}"#)
            ),
            None
        );
        assert_eq!(
            binding_target(ShutdownVpc, &env(r#"{"vpc_id": "7"}"#)),
            Some(BindingTarget::Vpc("7".into()))
        );
        assert_eq!(binding_target(DestroyNetwork, b"not json"), None);
    }
}
