//! `netbridge store migrate`: copies one store into another (typically the
//! embedded SQLite registry of a single management server into CloudStack's
//! database), through the stores' own operations, so secrets are decrypted
//! with the source's key and sealed again with the destination's.
//!
//! - Nothing is lost: extensions (same uuid, name, state, path, `created`,
//!   every detail), registrations with their details, provider state and
//!   services, device bindings, generated offerings and every network's
//!   journal.
//! - Idempotent: what the destination already holds identically is left as
//!   it is and counted as unchanged; running it again changes nothing.
//! - Conflicts are refused before anything is written: an extension whose
//!   uuid or name exists in the destination with other content, a
//!   registration with other details, a binding, offering or journal that
//!   differs. The error names the object and what differs.

use std::collections::BTreeMap;

use super::{
    Binding, Extension, ExtensionFilter, FullDetails, Include, Provider, ProviderFilter, Registry,
    RegistryError, ResourceType, StoredOffering,
};
use crate::dispatch::JournalState;
use crate::offerings::{GeneratedOffering, OfferingKind, Service};

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// What a migration did, per kind of object: created or already there.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub created: Counts,
    pub unchanged: Counts,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub extensions: usize,
    pub registrations: usize,
    pub bindings: usize,
    pub offerings: usize,
    pub journals: usize,
    pub api_keys: usize,
}

/// Everything a store holds, hidden details decrypted (in memory only).
struct Snapshot {
    extensions: Vec<(Extension, FullDetails)>,
    registrations: Vec<Registration>,
    providers: Vec<Provider>,
    bindings: Vec<Binding>,
    offerings: Vec<StoredOffering>,
    journals: Vec<(String, JournalState)>,
    api_keys: Vec<super::StoredApiKey>,
}

struct Registration {
    created: String,
    extension_id: String,
    extension_name: String,
    resource_type: ResourceType,
    resource_id: String,
    details: FullDetails,
}

fn snapshot(from: &Registry) -> Result<Snapshot> {
    let (_, extensions) = from.list_extensions(&ExtensionFilter::default(), Include::ALL, None)?;
    let mut out = Snapshot {
        extensions: Vec::new(),
        registrations: Vec::new(),
        providers: from.list_providers(&ProviderFilter::default())?,
        bindings: from.store().list_bindings()?,
        offerings: Vec::new(),
        journals: Vec::new(),
        api_keys: from.api_keys()?,
    };
    for ext in extensions {
        let details = from.extension_details_full(&ext.id)?;
        for r in &ext.resources {
            out.registrations.push(Registration {
                created: r.created.clone(),
                extension_id: ext.id.clone(),
                extension_name: ext.name.clone(),
                resource_type: r.resource_type,
                resource_id: r.id.clone(),
                details: from.registration_details_full(&ext.id, r.resource_type, &r.id)?,
            });
        }
        out.offerings.extend(from.list_offerings(&ext.id)?);
        out.extensions.push((ext, details));
    }
    for key in from.store().journal_keys()? {
        let state = from.store().journal_load(&key)?;
        out.journals.push((key, state));
    }
    Ok(out)
}

fn conflict(what: String) -> RegistryError {
    RegistryError::Conflict(format!(
        "{what}; nothing was migrated (resolve it in the destination, then run again)"
    ))
}

/// The fields of an extension that must agree (not `created`, which a
/// store may round to seconds, nor the registrations, checked apart).
fn same_extension(a: &Extension, b: &Extension) -> Option<&'static str> {
    if a.name != b.name {
        Some("name")
    } else if a.ext_type != b.ext_type {
        Some("type")
    } else if a.state != b.state {
        Some("state")
    } else if a.path != b.path {
        Some("path")
    } else if a.description != b.description {
        Some("description")
    } else {
        None
    }
}

fn offering_of(stored: &StoredOffering) -> Result<GeneratedOffering> {
    let kind = OfferingKind::parse(&stored.kind).ok_or_else(|| {
        RegistryError::Io(format!(
            "offering '{}' has an unknown kind '{}'",
            stored.name, stored.kind
        ))
    })?;
    Ok(GeneratedOffering {
        kind,
        name: stored.name.clone(),
        command: kind.command(),
        services: stored
            .services
            .iter()
            .filter_map(|s| Service::parse(s))
            .collect(),
        params: stored.params.clone(),
    })
}

/// Copies `from` into `to` (see the module docs).
pub fn migrate(from: &Registry, to: &Registry) -> Result<Report> {
    let source = snapshot(from)?;
    let mut report = Report::default();

    // 1. Check everything first: a conflict writes nothing.
    let mut new_extensions = Vec::new();
    for (ext, details) in &source.extensions {
        match to.get_extension(&ext.id, Include::ALL)? {
            Some(existing) => {
                if let Some(field) = same_extension(ext, &existing) {
                    return Err(conflict(format!(
                        "extension '{}' ({}) differs in the destination: {field}",
                        ext.name, ext.id
                    )));
                }
                if to.extension_details_full(&ext.id)? != *details {
                    return Err(conflict(format!(
                        "extension '{}' ({}) has other details in the destination",
                        ext.name, ext.id
                    )));
                }
                report.unchanged.extensions += 1;
            }
            None => {
                if let Some(other) = to.find_extension_by_name(
                    &ext.name,
                    Include {
                        details: false,
                        resources: false,
                    },
                )? {
                    return Err(conflict(format!(
                        "an extension named '{}' already exists in the destination with another id ({} instead of {})",
                        ext.name, other.id, ext.id
                    )));
                }
                new_extensions.push((ext, details));
            }
        }
    }
    let mut new_registrations = Vec::new();
    for r in &source.registrations {
        match to.registration_details_full(&r.extension_id, r.resource_type, &r.resource_id) {
            Ok(existing) if existing == r.details => report.unchanged.registrations += 1,
            Ok(_) => {
                return Err(conflict(format!(
                    "the registration of '{}' with {} {} has other details in the destination",
                    r.extension_name,
                    r.resource_type.as_str(),
                    r.resource_id
                )))
            }
            Err(RegistryError::NotFound(_)) => {
                if !to
                    .store()
                    .resource_exists(r.resource_type, &r.resource_id)?
                {
                    return Err(conflict(format!(
                        "the destination has no {} {} for the registration of '{}' (CloudStack must know the resource)",
                        r.resource_type.as_str(),
                        r.resource_id,
                        r.extension_name
                    )));
                }
                new_registrations.push(r)
            }
            Err(e) => return Err(e),
        }
    }
    let mut new_bindings = Vec::new();
    for b in &source.bindings {
        match to.get_binding(&b.target)? {
            Some(existing)
                if existing.extension_id == b.extension_id
                    && existing.physical_network_id == b.physical_network_id
                    && existing.details == b.details =>
            {
                report.unchanged.bindings += 1
            }
            Some(_) => {
                return Err(conflict(format!(
                    "the binding of {:?} differs in the destination",
                    b.target
                )))
            }
            None => new_bindings.push(b),
        }
    }
    let mut new_offerings: BTreeMap<String, Vec<GeneratedOffering>> = BTreeMap::new();
    for o in &source.offerings {
        let existing = if new_extensions.iter().any(|(e, _)| e.id == o.extension_id) {
            Vec::new()
        } else {
            to.list_offerings(&o.extension_id)?
        };
        match existing.iter().find(|e| e.name == o.name) {
            Some(e) if e.params == o.params && e.services == o.services && e.kind == o.kind => {
                report.unchanged.offerings += 1
            }
            Some(_) => {
                return Err(conflict(format!(
                    "offering '{}' differs in the destination",
                    o.name
                )))
            }
            None => new_offerings
                .entry(o.extension_id.clone())
                .or_default()
                .push(offering_of(o)?),
        }
    }
    let mut new_journals = Vec::new();
    for (key, state) in &source.journals {
        let existing = to.store().journal_load(key)?;
        if existing == *state {
            report.unchanged.journals += 1;
        } else if existing == JournalState::default() {
            new_journals.push((key, state));
        } else {
            return Err(conflict(format!(
                "the journal of {key} differs in the destination"
            )));
        }
    }

    let existing_keys = to.api_keys()?;
    let mut new_keys = Vec::new();
    for k in &source.api_keys {
        let same_name = existing_keys.iter().find(|e| e.name == k.name);
        let same_apikey = existing_keys.iter().find(|e| e.apikey == k.apikey);
        match (same_name, same_apikey) {
            (Some(e), _)
                if e.apikey == k.apikey && e.secretkey.expose() == k.secretkey.expose() =>
            {
                report.unchanged.api_keys += 1
            }
            (None, None) => new_keys.push(k),
            _ => {
                return Err(conflict(format!(
                    "API key '{}' differs in the destination",
                    k.name
                )))
            }
        }
    }

    // 2. Write.
    for (ext, details) in new_extensions {
        to.store().import_extension(ext, details)?;
        report.created.extensions += 1;
    }
    for r in new_registrations {
        to.register(
            &r.extension_id,
            r.resource_type,
            &r.resource_id,
            &r.details.merged().into_iter().collect::<Vec<_>>(),
        )?;
        to.store().set_registration_created(
            &r.extension_id,
            r.resource_type,
            &r.resource_id,
            &r.created,
        )?;
        report.created.registrations += 1;
    }
    // Provider state and services as they were (registration created them
    // Enabled with the extension's services).
    for p in &source.providers {
        let current = to.list_providers(&ProviderFilter {
            name: Some(p.name.clone()),
            physical_network_id: Some(p.physical_network_id.clone()),
            ..ProviderFilter::default()
        })?;
        if let Some(c) = current.first() {
            if c.state != p.state || c.services != p.services {
                let services: Vec<Service> = p
                    .services
                    .iter()
                    .filter_map(|s| Service::parse(s))
                    .collect();
                to.update_provider(
                    &c.id,
                    (c.state != p.state).then_some(p.state),
                    (c.services != p.services).then_some(services.as_slice()),
                )?;
            }
        }
    }
    for b in new_bindings {
        to.bind(
            &b.target,
            &b.extension_id,
            &b.physical_network_id,
            &b.details,
        )?;
        report.created.bindings += 1;
    }
    for (ext, offerings) in new_offerings {
        report.created.offerings += offerings.len();
        to.store_offerings(&ext, &offerings)?;
    }
    for (key, state) in new_journals {
        to.store().journal_replace(key, state)?;
        report.created.journals += 1;
    }
    for k in new_keys {
        to.add_api_key(&k.name, &k.apikey, k.secretkey.expose())?;
        report.created.api_keys += 1;
    }
    Ok(report)
}
