//! The API commands: parameter validation, registry calls, CloudStack JSON.
//!
//! | command | parameters (\* required) | response object |
//! |---|---|---|
//! | `createExtension` | `name`\*, `type`\* (`Orchestrator`/`NetworkOrchestrator`), `description`, `path`, `state`, `details` | `extension` |
//! | `updateExtension` | `id`\*, `description`, `state`, `details`, `cleanupdetails` | `extension` |
//! | `deleteExtension` | `id`\* | `success` |
//! | `listExtensions` | `id`, `name`, `keyword`, `type`, `details` (`all`/`resource`/`external`/`min`), `page`, `pagesize` | `count`, `extension[]` |
//! | `registerExtension` | `extensionid`\*, `resourceid`\*, `resourcetype`\* (`Cluster`/`PhysicalNetwork`), `details` | `extension` |
//! | `unregisterExtension` | `extensionid`\*, `resourceid`\*, `resourcetype`\* | `extension` |
//! | `updateRegisteredExtension` | `extensionid`\*, `resourceid`\*, `resourcetype`\*, `details`, `cleanupdetails` | `extension` |
//! | `listNetworkServiceProviders` | `id`, `name`, `physicalnetworkid`, `state` | `count`, `networkserviceprovider[]` |
//! | `updateNetworkServiceProvider` | `id`\*, `state` (`Enabled`/`Disabled`), `servicelist` | `networkserviceprovider` |
//! | `generateNetworkOfferings` | `extensionid`\*, `offeringtype`\* (`isolated`/`shared`/`vpctier`/`vpc`/`all`), `name` (prefix) | `count`, `offering[]` (`command`, `params`, `enable`) |
//! | `validateNetworkOffering` | `extensionid`\*, `supportedservices`\*, `serviceProviderList[i].service/provider`, `serviceCapabilityList[i].service/capabilitytype/capabilityvalue` | `success`, `services` |
//!
//! Maps (`details`, …) come as `details[0].key=k&details[0].value=v` or
//! `details[0].k=v`. Parameter and command names are case-insensitive. Every
//! parameter problem is code 431 naming the parameter; unknown commands 432;
//! internal failures 530. Empty lists are `{}` as in CloudStack.

use serde_json::{json, Map, Value};

use super::params::{check_text, Req};
use super::{codes, ApiError, Params};
use crate::offerings::{
    self, CapabilityItem, Declaration, OfferingKind, OfferingRequest, ProviderItem, Service,
};
use crate::protocol::sanitize_for_message as q;
use crate::registry::{
    DetailsUpdate, Extension, ExtensionFilter, ExtensionType, ExtensionUpdate, Include,
    NewExtension, Provider, ProviderFilter, Registry, ResourceType, State, StoredOffering,
};

/// Longest extension name.
pub const MAX_NAME_LEN: usize = 255;
/// Longest description.
pub const MAX_DESCRIPTION_LEN: usize = 4_096;
/// Longest entry-point path.
pub const MAX_PATH_LEN: usize = 255;

const RESOURCE_TYPE_ERROR: &str =
    "Currently only [Cluster, PhysicalNetwork] can be used to register an extension";

type Res = Result<Value, ApiError>;

/// Every command this dispatcher answers.
pub const COMMANDS: &[&str] = &[
    "createExtension",
    "updateExtension",
    "deleteExtension",
    "listExtensions",
    "registerExtension",
    "unregisterExtension",
    "updateRegisteredExtension",
    "listNetworkServiceProviders",
    "updateNetworkServiceProvider",
    "generateNetworkOfferings",
    "validateNetworkOffering",
];

pub fn dispatch(registry: &Registry, command: &str, params: &Params) -> Res {
    let Some(canonical) = COMMANDS
        .iter()
        .copied()
        .find(|c| c.eq_ignore_ascii_case(command))
    else {
        return Err(ApiError {
            code: codes::UNSUPPORTED,
            text: format!("Unsupported API command: {}", q(command)),
        });
    };
    let req = Req::new(canonical, params)?;
    let body = match canonical {
        "createExtension" => create_extension(registry, &req)?,
        "updateExtension" => update_extension(registry, &req)?,
        "deleteExtension" => delete_extension(registry, &req)?,
        "listExtensions" => list_extensions(registry, &req)?,
        "registerExtension" => register_extension(registry, &req)?,
        "unregisterExtension" => unregister_extension(registry, &req)?,
        "updateRegisteredExtension" => update_registered_extension(registry, &req)?,
        "listNetworkServiceProviders" => list_providers(registry, &req)?,
        "updateNetworkServiceProvider" => update_provider(registry, &req)?,
        "generateNetworkOfferings" => generate_offerings(registry, &req)?,
        "validateNetworkOffering" => validate_offering(registry, &req)?,
        _ => return Err(ApiError::internal("command table out of sync")),
    };
    let mut out = Map::with_capacity(1);
    out.insert(format!("{}response", canonical.to_ascii_lowercase()), body);
    Ok(Value::Object(out))
}

// ---- rendering ---------------------------------------------------------------

/// CloudStack's `ExtensionResponse`.
pub fn extension_json(e: &Extension, include: Include) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!(e.id));
    o.insert("name".into(), json!(e.name));
    o.insert("description".into(), json!(e.description));
    o.insert("type".into(), json!(e.ext_type.as_str()));
    o.insert("path".into(), json!(e.path));
    // No script has to reach the management servers: the bridge is native.
    o.insert("pathready".into(), json!(true));
    o.insert("isuserdefined".into(), json!(true));
    o.insert("state".into(), json!(e.state.as_str()));
    if include.details {
        o.insert("details".into(), json!(e.details));
    }
    if include.resources {
        let resources: Vec<Value> = e
            .resources
            .iter()
            .map(|r| {
                json!({
                    "id": r.id,
                    "name": r.id,
                    "type": r.resource_type.as_str(),
                    "created": r.created,
                    "details": r.details,
                })
            })
            .collect();
        o.insert("resources".into(), Value::Array(resources));
    }
    o.insert("created".into(), json!(e.created));
    Value::Object(o)
}

fn one_extension(e: &Extension) -> Value {
    json!({ "extension": extension_json(e, Include::ALL) })
}

/// CloudStack's `ProviderResponse`.
pub fn provider_json(p: &Provider) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "physicalnetworkid": p.physical_network_id,
        "destinationphysicalnetworkid": "0",
        "state": p.state.as_str(),
        "servicelist": p.services,
        "canenableindividualservice": true,
    })
}

fn offering_json(o: &StoredOffering) -> Value {
    let params: Map<String, Value> = o
        .params
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    // CloudStack creates offerings Disabled; this is the follow-up call, with
    // `id` to be set to the created offering's id.
    let enable = if o.command == "createVPCOffering" {
        "updateVPCOffering"
    } else {
        "updateNetworkOffering"
    };
    json!({
        "id": o.id,
        "name": o.name,
        "offeringtype": o.kind,
        "extensionid": o.extension_id,
        "command": o.command,
        "params": params,
        "enable": {"command": enable, "params": {"state": "Enabled"}},
        "services": o.services,
        "created": o.created,
    })
}

/// CloudStack's list shape: empty lists are `{}`.
fn list(object: &str, items: Vec<Value>, count: usize) -> Value {
    if items.is_empty() && count == 0 {
        return json!({});
    }
    let mut o = Map::new();
    o.insert("count".into(), json!(count));
    o.insert(object.into(), Value::Array(items));
    Value::Object(o)
}

// ---- shared validation -------------------------------------------------------

fn validate_name(req: &Req<'_>) -> Result<String, ApiError> {
    let name = req.required("name")?.trim();
    check_text("name", name, MAX_NAME_LEN, false)?;
    Ok(name.to_string())
}

fn validate_description(req: &Req<'_>) -> Result<Option<String>, ApiError> {
    Ok(req
        .text("description", MAX_DESCRIPTION_LEN, true)?
        .map(str::to_string))
}

fn parse_state(req: &Req<'_>) -> Result<Option<State>, ApiError> {
    req.get("state")
        .map(|s| State::parse(s.trim()).ok_or_else(|| ApiError::param("Invalid state specified")))
        .transpose()
}

/// `<safe-name>/<safe-name>.sh`.
pub fn default_path(name: &str) -> String {
    let safe: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}/{safe}.sh")
}

fn validate_path(path: &str) -> Result<String, ApiError> {
    let path = path.trim();
    let ok = !path.is_empty()
        && path.len() <= MAX_PATH_LEN
        && !path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(path.to_string())
    } else {
        Err(ApiError::param(format!(
            "Invalid parameter path: expected a relative path of at most {MAX_PATH_LEN} letters, digits and . _ - / without '.' or '..' components"
        )))
    }
}

/// Validates and canonicalises extension details (`network.*` keys).
fn canonical_extension_details(
    details: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, ApiError> {
    let out: Vec<(String, String)> = details
        .into_iter()
        .map(|(k, v)| {
            let lower = k.to_ascii_lowercase();
            let v = if lower == offerings::SERVICES_KEY {
                offerings::services_to_string(&offerings::parse_services(&v)?)
            } else if lower == offerings::CAPABILITIES_KEY {
                offerings::capabilities_to_string(&offerings::parse_capabilities(&v)?)
            } else if lower == "network.allocate.extension.ip" {
                bool_detail(&k, &v)?
            } else if lower == "network.isolation.method" {
                if v.trim().is_empty()
                    || v.len() > 64
                    || !v.trim().bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err(ApiError::param(format!(
                        "Invalid value for detail {k}: expected a method name such as NetworkExtension"
                    )));
                }
                v.trim().to_string()
            } else {
                v
            };
            // Canonical lower-case key for the keys we interpret.
            let k = if lower.starts_with("network.") { lower } else { k };
            Ok((k, v))
        })
        .collect::<Result<_, ApiError>>()?;
    for (i, (k, _)) in out.iter().enumerate() {
        if out[..i].iter().any(|(other, _)| other == k) {
            return Err(ApiError::param(format!(
                "Duplicate detail key '{}' in parameter details",
                q(k)
            )));
        }
    }
    Ok(out)
}

fn bool_detail(key: &str, value: &str) -> Result<String, ApiError> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false") {
        Ok(v.to_ascii_lowercase())
    } else {
        Err(ApiError::param(format!(
            "Invalid value for detail {key}: expected true or false"
        )))
    }
}

/// Validates the registration keys the bridge itself reads.
fn check_registration_details(details: &[(String, String)]) -> Result<(), ApiError> {
    for (k, v) in details {
        match k.to_ascii_lowercase().as_str() {
            "executor.port" => {
                let ok = matches!(v.trim().parse::<u16>(), Ok(p) if p > 0);
                if !ok {
                    return Err(ApiError::param(format!(
                        "Invalid value for detail {k}: expected a port number from 1 to 65535"
                    )));
                }
            }
            "hosts" | "host" => {
                let ok = !v.trim().is_empty()
                    && v.split(',').all(|h| {
                        let h = h.trim();
                        !h.is_empty()
                            && h.len() <= 255
                            && h.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b".:-[]".contains(&b))
                            && !h.starts_with('-')
                    });
                if !ok {
                    return Err(ApiError::param(format!(
                        "Invalid value for detail {k}: expected a comma list of addr or addr:port"
                    )));
                }
            }
            "executor.fingerprint" => {
                // A comma list pins per-host certificates, or the old and the
                // new one during a certificate rotation (as dispatch reads it).
                let mut entries = v.split(',').map(str::trim).filter(|e| !e.is_empty());
                let one_ok = |entry: &str| {
                    let hex: String = entry.chars().filter(|c| *c != ':').collect();
                    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
                };
                let ok = entries.clone().next().is_some() && entries.all(one_ok);
                if !ok {
                    return Err(ApiError::param(format!(
                        "Invalid value for detail {k}: expected the hex SHA-256 of the executor certificate"
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn details_update(req: &Req<'_>) -> Result<DetailsUpdate, ApiError> {
    let cleanup = req.bool("cleanupdetails")?.unwrap_or(false);
    // Parse details even when cleanup ignores them, so malformed input is
    // still reported rather than silently dropped.
    let details = req.details()?;
    Ok(match (cleanup, details) {
        (true, _) => DetailsUpdate::Cleanup,
        (false, Some(d)) => DetailsUpdate::Replace(d),
        (false, None) => DetailsUpdate::Keep,
    })
}

struct Target {
    extension: String,
    resource_id: String,
    resource_type: ResourceType,
}

fn registration_target(req: &Req<'_>) -> Result<Target, ApiError> {
    let extension = req.required("extensionid")?;
    let resource_id = req.required("resourceid")?;
    let resource_type = req.required("resourcetype")?;
    let resource_type = ResourceType::parse(resource_type.trim())
        .ok_or_else(|| ApiError::param(RESOURCE_TYPE_ERROR))?;
    Ok(Target {
        extension: super::params::parse_uuid("extensionid", extension)?,
        resource_id: super::params::parse_uuid("resourceid", resource_id)?,
        resource_type,
    })
}

fn extension_declaration(ext: &Extension) -> Result<Declaration, ApiError> {
    Ok(Declaration::from_details(
        ext.details.get(offerings::SERVICES_KEY).map(String::as_str),
        ext.details
            .get(offerings::CAPABILITIES_KEY)
            .map(String::as_str),
    )?)
}

fn lookup_extension(registry: &Registry, req: &Req<'_>) -> Result<Extension, ApiError> {
    let id = req.required_uuid("extensionid")?;
    registry
        .get_extension(
            &id,
            Include {
                details: true,
                resources: false,
            },
        )?
        .ok_or_else(|| ApiError::param("Invalid extension specified"))
}

// ---- commands ----------------------------------------------------------------

fn create_extension(registry: &Registry, req: &Req<'_>) -> Res {
    let name = validate_name(req)?;
    let ext_type = req.required("type")?;
    let ext_type = ExtensionType::parse(ext_type)
        .ok_or_else(|| ApiError::param(format!("Invalid type specified - {}", q(ext_type))))?;
    let description = validate_description(req)?.unwrap_or_default();
    let state = parse_state(req)?.unwrap_or(State::Enabled);
    let path = match req.get("path") {
        Some(p) => validate_path(p)?,
        None => default_path(&name),
    };
    let details = canonical_extension_details(req.details()?.unwrap_or_default())?;
    let ext = registry.create_extension(&NewExtension {
        name,
        description,
        ext_type,
        state,
        path,
        details,
    })?;
    log::info!("created extension '{}' ({})", ext.name, ext.id);
    Ok(one_extension(&ext))
}

fn update_extension(registry: &Registry, req: &Req<'_>) -> Res {
    let id = req.required_uuid("id")?;
    let description = validate_description(req)?;
    let state = parse_state(req)?;
    let details = details_update(req)?;
    let details = match details {
        DetailsUpdate::Replace(d) => DetailsUpdate::Replace(canonical_extension_details(d)?),
        other => other,
    };
    let ext = registry.update_extension(
        &id,
        &ExtensionUpdate {
            description,
            state,
            details,
        },
    )?;
    Ok(one_extension(&ext))
}

fn delete_extension(registry: &Registry, req: &Req<'_>) -> Res {
    let id = req.required_uuid("id")?;
    registry.delete_extension(&id)?;
    log::info!("deleted extension {id}");
    Ok(json!({"success": true}))
}

fn list_extensions(registry: &Registry, req: &Req<'_>) -> Res {
    let id = req.uuid("id")?;
    let name = req
        .text("name", MAX_NAME_LEN, false)?
        .filter(|n| !n.trim().is_empty());
    let keyword = req
        .text("keyword", MAX_NAME_LEN, false)?
        .filter(|k| !k.trim().is_empty());
    let ext_type = req
        .get("type")
        .map(|t| {
            ExtensionType::parse(t)
                .ok_or_else(|| ApiError::param(format!("Invalid type specified - {}", q(t))))
        })
        .transpose()?;
    let include = match req.get("details") {
        None => Include::ALL,
        Some(v) => {
            let mut inc = Include {
                details: false,
                resources: false,
            };
            for item in v.split(',') {
                match item.trim().to_ascii_lowercase().as_str() {
                    "all" => inc = Include::ALL,
                    "resource" => inc.resources = true,
                    "external" => inc.details = true,
                    "min" => {}
                    _ => {
                        return Err(ApiError::param(format!(
                            "Invalid value '{}' for parameter details; accepted values: all, resource, external, min",
                            q(item)
                        )))
                    }
                }
            }
            inc
        }
    };
    let page = req.positive("page", 1_000_000)?;
    let pagesize = req.positive("pagesize", 10_000)?;
    let paging = match (page, pagesize) {
        (None, None) => None,
        (p, s) => Some((p.unwrap_or(1), s.unwrap_or(500))),
    };
    let (count, items) = registry.list_extensions(
        &ExtensionFilter {
            id,
            name: name.map(|n| n.trim().to_string()),
            keyword: keyword.map(|k| k.trim().to_string()),
            ext_type,
        },
        include,
        paging,
    )?;
    let items = items.iter().map(|e| extension_json(e, include)).collect();
    Ok(list("extension", items, count))
}

fn register_extension(registry: &Registry, req: &Req<'_>) -> Res {
    let t = registration_target(req)?;
    let details = req.details()?.unwrap_or_default();
    check_registration_details(&details)?;
    let ext = registry.register(&t.extension, t.resource_type, &t.resource_id, &details)?;
    Ok(one_extension(&ext))
}

fn unregister_extension(registry: &Registry, req: &Req<'_>) -> Res {
    let t = registration_target(req)?;
    let ext = registry.unregister(&t.extension, t.resource_type, &t.resource_id)?;
    Ok(one_extension(&ext))
}

fn update_registered_extension(registry: &Registry, req: &Req<'_>) -> Res {
    let t = registration_target(req)?;
    let update = details_update(req)?;
    if let DetailsUpdate::Replace(d) = &update {
        check_registration_details(d)?;
    }
    let ext = registry.update_registration_details(
        &t.extension,
        t.resource_type,
        &t.resource_id,
        &update,
    )?;
    Ok(one_extension(&ext))
}

fn list_providers(registry: &Registry, req: &Req<'_>) -> Res {
    let filter = ProviderFilter {
        id: req.uuid("id")?,
        name: req
            .text("name", MAX_NAME_LEN, false)?
            .filter(|n| !n.trim().is_empty())
            .map(|n| n.trim().to_string()),
        physical_network_id: req.uuid("physicalnetworkid")?,
        state: parse_state(req)?,
    };
    let providers = registry.list_providers(&filter)?;
    let count = providers.len();
    Ok(list(
        "networkserviceprovider",
        providers.iter().map(provider_json).collect(),
        count,
    ))
}

fn update_provider(registry: &Registry, req: &Req<'_>) -> Res {
    let id = req.required_uuid("id")?;
    let state = match req.get("state") {
        None => None,
        Some(s) => Some(State::parse(s.trim()).ok_or_else(|| {
            ApiError::param(format!(
                "Invalid value '{}' for parameter state; accepted values: Enabled, Disabled",
                q(s)
            ))
        })?),
    };
    let services = match req.get("servicelist") {
        None => None,
        Some(list) => {
            let current = registry
                .list_providers(&ProviderFilter {
                    id: Some(id.clone()),
                    ..Default::default()
                })?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    ApiError::param(format!(
                        "Unable to find network service provider with id {id}"
                    ))
                })?;
            let declared = registry
                .get_extension(
                    &current.extension_id,
                    Include {
                        details: true,
                        resources: false,
                    },
                )?
                .and_then(|e| {
                    e.details
                        .get(offerings::SERVICES_KEY)
                        .and_then(|v| offerings::parse_services(v).ok())
                })
                .unwrap_or_default();
            let mut services = Vec::new();
            for item in list.split(',') {
                let s = Service::parse(item).ok_or_else(|| {
                    ApiError::param(format!(
                        "Invalid service '{}' in parameter servicelist; accepted services: {}",
                        q(item),
                        Service::accepted_list()
                    ))
                })?;
                if !declared.contains(&s) {
                    return Err(ApiError::param(format!(
                        "Service {s} in parameter servicelist is not declared by extension '{}'",
                        current.name
                    )));
                }
                if !services.contains(&s) {
                    services.push(s);
                }
            }
            services.sort();
            Some(services)
        }
    };
    let provider = registry.update_provider(&id, state, services.as_deref())?;
    Ok(json!({ "networkserviceprovider": provider_json(&provider) }))
}

fn generate_offerings(registry: &Registry, req: &Req<'_>) -> Res {
    let ext = lookup_extension(registry, req)?;
    let kind_text = req.required("offeringtype")?;
    let kinds: Vec<OfferingKind> = if kind_text.trim().eq_ignore_ascii_case("all") {
        OfferingKind::ALL.to_vec()
    } else {
        vec![OfferingKind::parse(kind_text).ok_or_else(|| {
            ApiError::param(format!(
                "Invalid value '{}' for parameter offeringtype; accepted values: isolated, shared, vpctier, vpc, all",
                q(kind_text)
            ))
        })?]
    };
    let prefix = match req.text("name", MAX_NAME_LEN - 10, false)? {
        Some(n) if !n.trim().is_empty() => n.trim().to_string(),
        _ => ext.name.clone(),
    };
    if ext.ext_type != ExtensionType::NetworkOrchestrator {
        return Err(ApiError::param(format!(
            "Extension '{}' is of type {}; offerings can only be generated for NetworkOrchestrator extensions",
            ext.name,
            ext.ext_type.as_str()
        )));
    }
    let declaration = extension_declaration(&ext)?;
    let mut generated = Vec::new();
    for kind in &kinds {
        match offerings::generate(&ext.name, &declaration, *kind, &prefix) {
            Ok(o) => generated.push(o),
            // With `all`, shapes the extension cannot serve are skipped.
            Err(e) if kinds.len() > 1 => log::debug!("skipping {} offering: {e}", kind.as_str()),
            Err(e) => return Err(e.into()),
        }
    }
    if generated.is_empty() {
        return Err(ApiError::param(format!(
            "Extension '{}' declares no service usable in any offering",
            ext.name
        )));
    }
    let stored = registry.store_offerings(&ext.id, &generated)?;
    let count = stored.len();
    Ok(list(
        "offering",
        stored.iter().map(offering_json).collect(),
        count,
    ))
}

fn validate_offering(registry: &Registry, req: &Req<'_>) -> Res {
    let ext = lookup_extension(registry, req)?;
    let declaration = extension_declaration(&ext)?;
    let supported = req.required("supportedservices")?;
    let mut request = OfferingRequest {
        supported_services: supported.split(',').map(|s| s.trim().to_string()).collect(),
        ..Default::default()
    };
    let field = |group: &[(&str, &str)], at: &str, name: &str| -> Result<String, ApiError> {
        group
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                ApiError::param(format!("Invalid parameter {at}: {at}.{name} is missing"))
            })
    };
    for (index, group) in req.indexed("serviceproviderlist")?.unwrap_or_default() {
        let at = format!("serviceProviderList[{index}]");
        request.providers.push(ProviderItem {
            index: index.to_string(),
            service: field(&group, &at, "service")?,
            provider: field(&group, &at, "provider")?,
        });
    }
    for (index, group) in req.indexed("servicecapabilitylist")?.unwrap_or_default() {
        let at = format!("serviceCapabilityList[{index}]");
        request.capabilities.push(CapabilityItem {
            index: index.to_string(),
            service: field(&group, &at, "service")?,
            capabilitytype: field(&group, &at, "capabilitytype")?,
            capabilityvalue: field(&group, &at, "capabilityvalue")?,
        });
    }
    let services = offerings::validate_offering(&ext.name, &declaration, &request)?;
    Ok(json!({
        "success": true,
        "extensionid": ext.id,
        "services": services.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_path_uses_safe_name() {
        assert_eq!(default_path("My Ext/1"), "my_ext_1/my_ext_1.sh");
        assert_eq!(default_path("net-ext.v2"), "net-ext.v2/net-ext.v2.sh");
    }

    #[test]
    fn path_validation() {
        assert!(validate_path("a/b.sh").is_ok());
        for bad in ["/etc/passwd", "../x", "a/../b", "a b", "a;rm", "a//b"] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
    }
}
