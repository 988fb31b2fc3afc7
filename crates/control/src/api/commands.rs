//! The API commands: the command table (parameters, response fields,
//! sync/async), parameter validation, registry calls, CloudStack JSON.
//!
//! [`COMMANDS`] is the one source of truth: the dispatcher looks commands up
//! there and checks every request against it (required parameters, string
//! lengths, UUIDs) before the handler runs, and `listApis` publishes it.
//! Maps (`details`, …) come as `details[0].key=k&details[0].value=v` or
//! `details[0].k=v`. Parameter and command names are case-insensitive.
//! Parameter problems are code 431 naming the parameter; the extension
//! manager's refusals and internal failures 530; unknown commands 432.
//! Empty lists are `{}` and empty fields are omitted, as in CloudStack.

use serde_json::{json, Map, Value};

use super::params::{check_text, Req};
use super::spec::{self, param, required, FieldSpec, ParamSpec, ParamType};
use super::{codes, ApiError, Params};
use crate::offerings::{
    self, CapabilityItem, Declaration, OfferingKind, OfferingRequest, ProviderItem, Service,
};
use crate::registry::{
    DetailsUpdate, Extension, ExtensionFilter, ExtensionType, ExtensionUpdate, Include,
    NewExtension, Provider, ProviderFilter, Registry, ResourceType, State, StoredOffering,
};
use netbridge_protocol::sanitize_for_message as q;

/// Longest extension name (CloudStack's default parameter length).
pub const MAX_NAME_LEN: usize = spec::DEFAULT_LENGTH;
/// Longest description (CloudStack's default parameter length).
pub const MAX_DESCRIPTION_LEN: usize = spec::DEFAULT_LENGTH;
/// Longest entry-point path.
pub const MAX_PATH_LEN: usize = spec::DEFAULT_LENGTH;
/// CloudStack's default extensions directory on the management server;
/// `path` is answered absolute under it.
pub const DEFAULT_EXTENSIONS_DIR: &str = "/usr/share/cloudstack-management/extensions";

const RESOURCE_TYPE_ERROR: &str =
    "Currently only [Cluster, PhysicalNetwork] can be used to register an extension";

type Res = Result<Value, ApiError>;

/// What a handler sees besides its request.
pub struct Ctx<'a> {
    pub registry: &'a Registry,
    /// Directory the relative entry-point paths live under.
    pub extensions_dir: &'a str,
}

type Handler = fn(&Ctx<'_>, &Req<'_>) -> Res;

/// One API command: what `listApis` publishes and what the dispatcher runs.
pub struct CommandSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// CloudStack version that added the command; `None` for netbridge's own.
    pub since: Option<&'static str>,
    /// Answered with a `jobid` at once and run as an asynchronous job.
    pub is_async: bool,
    pub params: &'static [ParamSpec],
    /// Object name of the response (`extension`, `networkserviceprovider`, …).
    pub response_object: &'static str,
    pub response: &'static [FieldSpec],
    /// CloudStack's command class, as async jobs report it in `cmd`.
    pub class: &'static str,
    handler: Handler,
}

impl CommandSpec {
    pub fn param(&self, name: &str) -> Option<&'static ParamSpec> {
        self.params
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// The `listApis` entry.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("name".into(), json!(self.name));
        o.insert("description".into(), json!(self.description));
        if let Some(since) = self.since {
            o.insert("since".into(), json!(since));
        }
        o.insert("isasync".into(), json!(self.is_async));
        let related = related_commands(self);
        if !related.is_empty() {
            o.insert("related".into(), json!(related));
        }
        o.insert(
            "params".into(),
            Value::Array(self.params.iter().map(ParamSpec::to_json).collect()),
        );
        o.insert(
            "response".into(),
            Value::Array(self.response.iter().map(FieldSpec::to_json).collect()),
        );
        Value::Object(o)
    }
}

/// Commands answering the same object (CloudStack's `related`).
fn related_commands(command: &CommandSpec) -> String {
    COMMANDS
        .iter()
        .filter(|c| c.name != command.name && c.response_object == command.response_object)
        .filter(|c| c.name.starts_with("list"))
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(",")
}

const DETAILS_TEXT: &str = "Details in key/value pairs using format details[i].keyname=keyvalue. Example: details[0].endpoint.url=urlvalue";
const KEYWORD: ParamSpec = param("keyword", ParamType::String, "List by keyword");
const PAGE: ParamSpec = param("page", ParamType::Integer, "");
const PAGESIZE: ParamSpec = param("pagesize", ParamType::Integer, "");

/// Every command this dispatcher answers.
pub static COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "createExtension",
        description: "Create an extension",
        since: Some("4.21.0"),
        is_async: false,
        params: &[
            required("name", ParamType::String, "Name of the extension"),
            param("description", ParamType::String, "Description of the extension"),
            required("type", ParamType::String, "Type of the extension"),
            param("path", ParamType::String, "Relative path for the extension"),
            param(
                "orchestratorrequirespreparevm",
                ParamType::Boolean,
                "Only honored when type is Orchestrator. Whether prepare VM is needed or not",
            ),
            param("state", ParamType::String, "State of the extension"),
            param("details", ParamType::Map, DETAILS_TEXT),
        ],
        response_object: "extension",
        response: spec::EXTENSION_FIELDS,
        class: "org.apache.cloudstack.framework.extensions.api.CreateExtensionCmd",
        handler: create_extension,
    },
    CommandSpec {
        name: "updateExtension",
        description: "Update the extension",
        since: Some("4.21.0"),
        is_async: false,
        params: &[
            required("id", ParamType::Uuid, "The ID of the extension"),
            param("description", ParamType::String, "Description of the extension"),
            param(
                "orchestratorrequirespreparevm",
                ParamType::Boolean,
                "Only honored when type is Orchestrator. Whether prepare VM is needed or not",
            ),
            param("state", ParamType::String, "State of the extension"),
            param("details", ParamType::Map, DETAILS_TEXT),
            param(
                "cleanupdetails",
                ParamType::Boolean,
                "Optional boolean field, which indicates if details should be cleaned up or not (If set to true, details removed for this extension, details field ignored; if false or not set, no action)",
            ),
        ],
        response_object: "extension",
        response: spec::EXTENSION_FIELDS,
        class: "org.apache.cloudstack.framework.extensions.api.UpdateExtensionCmd",
        handler: update_extension,
    },
    CommandSpec {
        name: "deleteExtension",
        description: "Delete the extensions",
        since: Some("4.21.0"),
        is_async: false,
        params: &[
            // Not required in CloudStack's annotation; a missing id is still
            // refused (431 naming it) before anything changes.
            param("id", ParamType::Uuid, "ID of the extension"),
            param(
                "cleanup",
                ParamType::Boolean,
                "Whether to cleanup files for the extension. If true, the extension files will be deleted from all the management servers.",
            ),
        ],
        response_object: "success",
        response: spec::SUCCESS_FIELDS,
        class: "org.apache.cloudstack.framework.extensions.api.DeleteExtensionCmd",
        handler: delete_extension,
    },
    CommandSpec {
        name: "listExtensions",
        description: "Lists extensions",
        since: Some("4.21.0"),
        is_async: false,
        params: &[
            param("name", ParamType::String, "Name of the extension"),
            param("id", ParamType::Uuid, "uuid of the extension"),
            param(
                "details",
                ParamType::List,
                "comma separated list of extension details requested, value can be a list of [all, resources, external, min]. When no parameters are passed, all the details are returned.",
            ),
            param("type", ParamType::String, "Type of the extension").since("4.23.0"),
            param(
                "resourceid",
                ParamType::String,
                "ID of the resource the extension is registered with",
            )
            .since("4.23.0"),
            param(
                "resourcetype",
                ParamType::String,
                "Type of the resource the extension is registered with",
            )
            .since("4.23.0"),
            KEYWORD,
            PAGE,
            PAGESIZE,
        ],
        response_object: "extension",
        response: spec::EXTENSION_FIELDS,
        class: "org.apache.cloudstack.framework.extensions.api.ListExtensionsCmd",
        handler: list_extensions,
    },
    CommandSpec {
        name: "registerExtension",
        description: "Register an extension with a resource",
        since: Some("4.21.0"),
        is_async: false,
        params: &[
            required("extensionid", ParamType::Uuid, "ID of the extension"),
            required(
                "resourceid",
                ParamType::String,
                "ID of the resource to register the extension with",
            ),
            required("resourcetype", ParamType::String, "Type of the resource"),
            param("details", ParamType::Map, DETAILS_TEXT),
        ],
        response_object: "extension",
        response: spec::EXTENSION_FIELDS,
        class: "org.apache.cloudstack.framework.extensions.api.RegisterExtensionCmd",
        handler: register_extension,
    },
    CommandSpec {
        name: "unregisterExtension",
        description: "Unregister an extension with a resource",
        since: Some("4.21.0"),
        is_async: false,
        params: &[
            required("extensionid", ParamType::Uuid, "ID of the extension"),
            required(
                "resourceid",
                ParamType::String,
                "ID of the resource to unregister the extension with",
            ),
            required("resourcetype", ParamType::String, "Type of the resource"),
        ],
        response_object: "extension",
        response: spec::EXTENSION_FIELDS,
        class: "org.apache.cloudstack.framework.extensions.api.UnregisterExtensionCmd",
        handler: unregister_extension,
    },
    CommandSpec {
        name: "updateRegisteredExtension",
        description: "Update details for an extension registered with a resource",
        since: Some("4.23.0"),
        is_async: false,
        params: &[
            required("extensionid", ParamType::Uuid, "ID of the extension"),
            required(
                "resourceid",
                ParamType::String,
                "ID of the resource where the extension is registered",
            ),
            required("resourcetype", ParamType::String, "Type of the resource"),
            param("details", ParamType::Map, DETAILS_TEXT),
            param(
                "cleanupdetails",
                ParamType::Boolean,
                "Optional boolean field, which indicates if details should be cleaned up or not (If set to true, details removed for this registration, details field ignored; if false or not set, details can be updated through details map)",
            ),
        ],
        response_object: "extension",
        response: spec::EXTENSION_FIELDS,
        class: "org.apache.cloudstack.framework.extensions.api.UpdateRegisteredExtensionCmd",
        handler: update_registered_extension,
    },
    CommandSpec {
        name: "listNetworkServiceProviders",
        description: "Lists network serviceproviders for a given physical network.",
        since: Some("3.0.0"),
        is_async: false,
        params: &[
            param("name", ParamType::String, "list providers by name"),
            param(
                "physicalnetworkid",
                ParamType::Uuid,
                "the Physical Network ID",
            ),
            param("state", ParamType::String, "list providers by state"),
            // netbridge's own: the provider by its id.
            param("id", ParamType::Uuid, "the provider ID"),
            KEYWORD,
            PAGE,
            PAGESIZE,
        ],
        response_object: "networkserviceprovider",
        response: spec::PROVIDER_FIELDS,
        class: "org.apache.cloudstack.api.command.admin.network.ListNetworkServiceProvidersCmd",
        handler: list_providers,
    },
    CommandSpec {
        name: "updateNetworkServiceProvider",
        description: "Updates a network serviceProvider of a physical network",
        since: Some("3.0.0"),
        is_async: true,
        params: &[
            param(
                "state",
                ParamType::String,
                "Enabled/Disabled/Shutdown the physical network service provider",
            ),
            required("id", ParamType::Uuid, "Network service provider ID"),
            param(
                "servicelist",
                ParamType::List,
                "The list of services to be enabled for this physical network service provider",
            ),
        ],
        response_object: "networkserviceprovider",
        response: spec::PROVIDER_FIELDS,
        class: "org.apache.cloudstack.api.command.admin.network.UpdateNetworkServiceProviderCmd",
        handler: update_provider,
    },
    CommandSpec {
        name: "queryAsyncJobResult",
        description: "Retrieves the current status of asynchronous job.",
        since: None,
        is_async: false,
        params: &[required("jobid", ParamType::Uuid, "the ID of the asynchronous job")],
        response_object: "asyncjobs",
        response: spec::ASYNC_JOB_FIELDS,
        class: "org.apache.cloudstack.api.command.user.job.QueryAsyncJobResultCmd",
        handler: super::jobs::query_async_job_result,
    },
    CommandSpec {
        name: "listAsyncJobs",
        description: "Lists all pending asynchronous jobs for the account.",
        since: None,
        is_async: false,
        params: &[
            param(
                "startdate",
                ParamType::Date,
                "The start date of the async job (use format \"yyyy-MM-dd'T'HH:mm:ss'+'SSSS\")",
            ),
            KEYWORD,
            PAGE,
            PAGESIZE,
        ],
        response_object: "asyncjobs",
        response: spec::ASYNC_JOB_FIELDS,
        class: "org.apache.cloudstack.api.command.user.job.ListAsyncJobsCmd",
        handler: super::jobs::list_async_jobs,
    },
    CommandSpec {
        name: "listApis",
        description: "lists all available apis on the server, provided by the Api Discovery plugin",
        since: Some("4.1.0"),
        is_async: false,
        params: &[param("name", ParamType::String, "API name")],
        response_object: "api",
        response: spec::API_FIELDS,
        class: "org.apache.cloudstack.api.command.user.discovery.ListApisCmd",
        handler: list_apis,
    },
    CommandSpec {
        name: "generateNetworkOfferings",
        description: "netbridge: the createNetworkOffering/createVPCOffering calls that match an extension's declared services and capabilities",
        since: None,
        is_async: false,
        params: &[
            required("extensionid", ParamType::Uuid, "ID of the extension"),
            required(
                "offeringtype",
                ParamType::String,
                "isolated, shared, vpctier, vpc or all",
            ),
            param("name", ParamType::String, "prefix of the offering names")
                .length(MAX_NAME_LEN - 10),
        ],
        response_object: "offering",
        response: spec::OFFERING_FIELDS,
        class: "netbridge.GenerateNetworkOfferings",
        handler: generate_offerings,
    },
    CommandSpec {
        name: "validateNetworkOffering",
        description: "netbridge: checks a createNetworkOffering request against an extension's declared services and capabilities",
        since: None,
        is_async: false,
        params: &[
            required("extensionid", ParamType::Uuid, "ID of the extension"),
            required(
                "supportedservices",
                ParamType::List,
                "services of the offering",
            ),
            param(
                "serviceproviderlist",
                ParamType::Map,
                "provider of each service: serviceProviderList[i].service, .provider",
            ),
            param(
                "servicecapabilitylist",
                ParamType::Map,
                "capabilities: serviceCapabilityList[i].service, .capabilitytype, .capabilityvalue",
            ),
        ],
        response_object: "validation",
        response: spec::VALIDATION_FIELDS,
        class: "netbridge.ValidateNetworkOffering",
        handler: validate_offering,
    },
];

/// The table entry of a command, by case-insensitive name.
pub fn find(command: &str) -> Option<&'static CommandSpec> {
    COMMANDS
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(command.trim()))
}

/// The canonical spelling of a known command.
pub fn canonical_name(command: &str) -> Option<&'static str> {
    find(command).map(|c| c.name)
}

/// The error of a command this dispatcher does not know.
pub fn unsupported(command: &str) -> ApiError {
    ApiError::server(
        codes::UNSUPPORTED,
        format!("Unsupported API command: {}", q(command)),
    )
}

/// Checks a request against the command's table entry: required
/// parameters present, `string` values within their length, `uuid` values
/// well formed, `boolean` values true/false.
pub fn check_request(command: &CommandSpec, req: &Req<'_>) -> Result<(), ApiError> {
    for p in command.params {
        if p.required && req.get(p.name).is_none() {
            return Err(req.missing(p.name));
        }
        let Some(value) = req.get(p.name) else {
            continue;
        };
        match p.kind {
            // Java counts UTF-16 units.
            ParamType::String if value.encode_utf16().count() > p.length => {
                return Err(ApiError::param(format!(
                    "Value greater than max allowed length {} for param: {}",
                    p.length, p.name
                )));
            }
            ParamType::Uuid => {
                super::params::parse_uuid(p.name, value)?;
            }
            ParamType::Boolean => {
                req.bool(p.name)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs a command's handler after [`check_request`]; the answer is
/// `{"<command lower-case>response": {…}}` with empty fields omitted.
pub fn run(ctx: &Ctx<'_>, command: &CommandSpec, params: &Params) -> Res {
    let req = Req::new(command.name, params)?;
    check_request(command, &req)?;
    let mut body = (command.handler)(ctx, &req)?;
    prune_empty(&mut body);
    let mut out = Map::with_capacity(1);
    out.insert(
        format!("{}response", command.name.to_ascii_lowercase()),
        body,
    );
    Ok(Value::Object(out))
}

/// The request of an async command, checked as CloudStack checks it before
/// queueing the job (so parameter errors still answer at once).
pub fn precheck(command: &CommandSpec, params: &Params) -> Result<(), ApiError> {
    let req = Req::new(command.name, params)?;
    check_request(command, &req)
}

/// CloudStack leaves out null fields and empty collections; string maps
/// (`details`, `params`) keep their entries as they are.
fn prune_empty(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|key, v| {
                if !matches!(key.as_str(), "details" | "params") {
                    prune_empty(v);
                }
                !is_empty_value(v)
            });
        }
        Value::Array(items) => items.iter_mut().for_each(prune_empty),
        _ => {}
    }
}

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn list_apis(_ctx: &Ctx<'_>, req: &Req<'_>) -> Res {
    let wanted = req.get("name").map(str::trim);
    let apis: Vec<Value> = COMMANDS
        .iter()
        .filter(|c| wanted.is_none_or(|w| c.name.eq_ignore_ascii_case(w)))
        .map(CommandSpec::to_json)
        .collect();
    if let (Some(name), true) = (wanted, apis.is_empty()) {
        return Err(ApiError::param(format!(
            "Api Discovery plugin was unable to find an api by that name or process any apis: {}",
            q(name)
        )));
    }
    let count = apis.len();
    Ok(list("api", apis, count))
}

// ---- rendering ---------------------------------------------------------------

/// CloudStack's `ExtensionResponse`; `path` absolute under `extensions_dir`.
pub fn extension_json(e: &Extension, include: Include, extensions_dir: &str) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!(e.id));
    o.insert("name".into(), json!(e.name));
    o.insert("description".into(), json!(e.description));
    o.insert("type".into(), json!(e.ext_type.as_str()));
    o.insert(
        "path".into(),
        json!(format!(
            "{}/{}",
            extensions_dir.trim_end_matches('/'),
            e.path
        )),
    );
    // No script has to reach the management servers: the bridge is native.
    o.insert("pathready".into(), json!(true));
    o.insert("isuserdefined".into(), json!(true));
    if let Some(prepare) = e.orchestrator_requires_prepare_vm {
        o.insert("orchestratorrequirespreparevm".into(), json!(prepare));
    }
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
                    // The cluster's or physical network's name when the
                    // store learnt it (envelopes carry it), else its id.
                    "name": r.name.as_deref().unwrap_or(&r.id),
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

fn one_extension(ctx: &Ctx<'_>, e: &Extension) -> Value {
    json!({ "extension": extension_json(e, Include::ALL, ctx.extensions_dir) })
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
pub(super) fn list(object: &str, items: Vec<Value>, count: usize) -> Value {
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

/// `orchestratorrequirespreparevm`: only for `Orchestrator` extensions.
fn prepare_vm_flag(req: &Req<'_>, ext_type: ExtensionType) -> Result<Option<bool>, ApiError> {
    let flag = req.bool("orchestratorrequirespreparevm")?;
    if flag.is_some() && ext_type != ExtensionType::Orchestrator {
        return Err(ApiError::param(format!(
            "Invalid parameter orchestratorrequirespreparevm: it can only be used with extensions of type {}, not {}",
            ExtensionType::Orchestrator.as_str(),
            ext_type.as_str()
        )));
    }
    Ok(flag)
}

// ---- commands ----------------------------------------------------------------

fn create_extension(ctx: &Ctx<'_>, req: &Req<'_>) -> Res {
    let name = validate_name(req)?;
    let ext_type = req.required("type")?;
    // The manager's refusal in CloudStack (CloudRuntimeException): 530.
    let ext_type = ExtensionType::parse(ext_type)
        .ok_or_else(|| ApiError::internal(format!("Invalid type specified - {}", q(ext_type))))?;
    let orchestrator_requires_prepare_vm = prepare_vm_flag(req, ext_type)?;
    let description = validate_description(req)?.unwrap_or_default();
    let state = parse_state(req)?.unwrap_or(State::Enabled);
    let path = match req.get("path") {
        Some(p) => validate_path(p)?,
        None => default_path(&name),
    };
    let details = canonical_extension_details(req.details()?.unwrap_or_default())?;
    let ext = ctx.registry.create_extension(&NewExtension {
        name,
        description,
        ext_type,
        state,
        path,
        orchestrator_requires_prepare_vm,
        details,
    })?;
    log::info!("created extension '{}' ({})", ext.name, ext.id);
    Ok(one_extension(ctx, &ext))
}

fn update_extension(ctx: &Ctx<'_>, req: &Req<'_>) -> Res {
    let id = req.required_uuid("id")?;
    let description = validate_description(req)?;
    let state = parse_state(req)?;
    let details = details_update(req)?;
    let details = match details {
        DetailsUpdate::Replace(d) => DetailsUpdate::Replace(canonical_extension_details(d)?),
        other => other,
    };
    let orchestrator_requires_prepare_vm = match req.get("orchestratorrequirespreparevm") {
        None => None,
        Some(_) => {
            let current = ctx
                .registry
                .get_extension(
                    &id,
                    Include {
                        details: false,
                        resources: false,
                    },
                )?
                .ok_or_else(|| ApiError::param(format!("Unable to find extension with id {id}")))?;
            prepare_vm_flag(req, current.ext_type)?
        }
    };
    let ext = ctx.registry.update_extension(
        &id,
        &ExtensionUpdate {
            description,
            state,
            orchestrator_requires_prepare_vm,
            details,
        },
    )?;
    Ok(one_extension(ctx, &ext))
}

fn delete_extension(ctx: &Ctx<'_>, req: &Req<'_>) -> Res {
    let id = req.required_uuid("id")?;
    // `cleanup` removes the extension's files from the management servers in
    // CloudStack; the bridge is native and keeps no files for an extension,
    // so after validation (true/false) there is nothing more to remove.
    let cleanup = req.bool("cleanup")?.unwrap_or(false);
    ctx.registry.delete_extension(&id)?;
    log::info!("deleted extension {id} (cleanup={cleanup})");
    Ok(json!({"success": true}))
}

fn list_extensions(ctx: &Ctx<'_>, req: &Req<'_>) -> Res {
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
            ExtensionType::parse(t.trim())
                .ok_or_else(|| ApiError::internal(format!("Invalid type specified - {}", q(t))))
        })
        .transpose()?;
    let resource_type = req
        .get("resourcetype")
        .map(|t| ResourceType::parse(t.trim()).ok_or_else(|| ApiError::param(RESOURCE_TYPE_ERROR)))
        .transpose()?;
    let resource_id = req.uuid("resourceid")?;
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
                    "resource" | "resources" => inc.resources = true,
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
    let paging = paging(req)?;
    let (count, items) = ctx.registry.list_extensions(
        &ExtensionFilter {
            id,
            name: name.map(|n| n.trim().to_string()),
            keyword: keyword.map(|k| k.trim().to_string()),
            ext_type,
            resource_id,
            resource_type,
        },
        include,
        paging,
    )?;
    let items = items
        .iter()
        .map(|e| extension_json(e, include, ctx.extensions_dir))
        .collect();
    Ok(list("extension", items, count))
}

/// Largest page.
const MAX_PAGE_SIZE: usize = 10_000;

/// `page`/`pagesize` as CloudStack reads them: `pagesize=-1` is every item;
/// a page without a size uses 500 (CloudStack's `default.page.size`).
pub(super) fn paging(req: &Req<'_>) -> Result<Option<(usize, usize)>, ApiError> {
    let page = req.positive("page", 1_000_000)?;
    let unlimited = req.get("pagesize").is_some_and(|v| v.trim() == "-1");
    let pagesize = if unlimited {
        None
    } else {
        req.positive("pagesize", MAX_PAGE_SIZE)?
    };
    Ok(match (page, pagesize, unlimited) {
        (_, _, true) | (None, None, false) => None,
        (p, s, false) => Some((p.unwrap_or(1), s.unwrap_or(500))),
    })
}

fn register_extension(ctx: &Ctx<'_>, req: &Req<'_>) -> Res {
    let t = registration_target(req)?;
    let details = req.details()?.unwrap_or_default();
    check_registration_details(&details)?;
    let ext = ctx
        .registry
        .register(&t.extension, t.resource_type, &t.resource_id, &details)?;
    Ok(one_extension(ctx, &ext))
}

fn unregister_extension(ctx: &Ctx<'_>, req: &Req<'_>) -> Res {
    let t = registration_target(req)?;
    let ext = ctx
        .registry
        .unregister(&t.extension, t.resource_type, &t.resource_id)?;
    Ok(one_extension(ctx, &ext))
}

fn update_registered_extension(ctx: &Ctx<'_>, req: &Req<'_>) -> Res {
    let t = registration_target(req)?;
    let update = details_update(req)?;
    if let DetailsUpdate::Replace(d) = &update {
        check_registration_details(d)?;
    }
    let ext = ctx.registry.update_registration_details(
        &t.extension,
        t.resource_type,
        &t.resource_id,
        &update,
    )?;
    Ok(one_extension(ctx, &ext))
}

fn list_providers(ctx: &Ctx<'_>, req: &Req<'_>) -> Res {
    let filter = ProviderFilter {
        id: req.uuid("id")?,
        name: req
            .text("name", MAX_NAME_LEN, false)?
            .filter(|n| !n.trim().is_empty())
            .map(|n| n.trim().to_string()),
        physical_network_id: req.uuid("physicalnetworkid")?,
        state: parse_state(req)?,
    };
    let keyword = req.get("keyword").map(|k| k.trim().to_lowercase());
    let providers: Vec<Provider> = ctx
        .registry
        .list_providers(&filter)?
        .into_iter()
        .filter(|p| {
            keyword
                .as_ref()
                .is_none_or(|k| p.name.to_lowercase().contains(k))
        })
        .collect();
    let count = providers.len();
    let page: Vec<Value> = match paging(req)? {
        Some((page, size)) => providers
            .iter()
            .skip(page.saturating_sub(1).saturating_mul(size))
            .take(size)
            .map(provider_json)
            .collect(),
        None => providers.iter().map(provider_json).collect(),
    };
    Ok(list("networkserviceprovider", page, count))
}

fn update_provider(ctx: &Ctx<'_>, req: &Req<'_>) -> Res {
    let registry = ctx.registry;
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

fn generate_offerings(ctx: &Ctx<'_>, req: &Req<'_>) -> Res {
    let registry = ctx.registry;
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

fn validate_offering(ctx: &Ctx<'_>, req: &Req<'_>) -> Res {
    let registry = ctx.registry;
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
