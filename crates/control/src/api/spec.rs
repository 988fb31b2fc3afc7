//! What each API command accepts and answers: the command table's types and
//! the response field lists that `listApis` publishes. The dispatcher checks
//! requests against the same table (required parameters, string lengths,
//! UUIDs), so discovery and behaviour cannot drift apart.

use serde_json::{json, Value};

/// CloudStack's default `@Parameter(length)`.
pub const DEFAULT_LENGTH: usize = 255;

/// A parameter's type, as `listApis` names it (CloudStack's `CommandType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    String,
    Uuid,
    Boolean,
    Integer,
    Long,
    Date,
    Map,
    List,
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Uuid => "uuid",
            ParamType::Boolean => "boolean",
            ParamType::Integer => "integer",
            ParamType::Long => "long",
            ParamType::Date => "date",
            ParamType::Map => "map",
            ParamType::List => "list",
        }
    }
}

/// One request parameter.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    pub kind: ParamType,
    pub required: bool,
    /// Longest value (characters) for `string` parameters.
    pub length: usize,
    /// Version that added the parameter, when later than the command.
    pub since: Option<&'static str>,
    pub description: &'static str,
}

/// An optional parameter of CloudStack's default length.
pub const fn param(name: &'static str, kind: ParamType, description: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        kind,
        required: false,
        length: DEFAULT_LENGTH,
        since: None,
        description,
    }
}

/// A required parameter of CloudStack's default length.
pub const fn required(name: &'static str, kind: ParamType, description: &'static str) -> ParamSpec {
    ParamSpec {
        required: true,
        ..param(name, kind, description)
    }
}

impl ParamSpec {
    pub const fn since(self, version: &'static str) -> ParamSpec {
        ParamSpec {
            since: Some(version),
            ..self
        }
    }

    pub const fn length(self, length: usize) -> ParamSpec {
        ParamSpec { length, ..self }
    }

    pub fn to_json(&self) -> Value {
        let mut o = json!({
            "name": self.name,
            "description": self.description,
            "type": self.kind.as_str(),
            "length": self.length,
            "required": self.required,
        });
        if let (Some(since), Some(map)) = (self.since, o.as_object_mut()) {
            map.insert("since".into(), json!(since));
        }
        o
    }
}

/// One response field; objects and lists of objects name their own fields.
#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    pub name: &'static str,
    /// `string`, `boolean`, `integer`, `date`, `map`, `list`, `object`.
    pub kind: &'static str,
    pub description: &'static str,
    pub fields: &'static [FieldSpec],
}

const fn field(name: &'static str, kind: &'static str, description: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        kind,
        description,
        fields: &[],
    }
}

const fn nested(
    name: &'static str,
    kind: &'static str,
    description: &'static str,
    fields: &'static [FieldSpec],
) -> FieldSpec {
    FieldSpec {
        name,
        kind,
        description,
        fields,
    }
}

impl FieldSpec {
    pub fn to_json(&self) -> Value {
        let mut o = json!({
            "name": self.name,
            "description": self.description,
            "type": self.kind,
        });
        if !self.fields.is_empty() {
            if let Some(map) = o.as_object_mut() {
                map.insert(
                    "response".into(),
                    Value::Array(self.fields.iter().map(FieldSpec::to_json).collect()),
                );
            }
        }
        o
    }
}

/// `ExtensionResourceResponse`.
pub const RESOURCE_FIELDS: &[FieldSpec] = &[
    field(
        "id",
        "string",
        "ID of the resource associated with the extension",
    ),
    field(
        "name",
        "string",
        "Name of the resource associated with this mapping",
    ),
    field("type", "string", "Type of the resource"),
    field("details", "map", "the details of the resource map"),
    field("created", "date", "Creation timestamp of the mapping"),
];

/// `ExtensionResponse`.
pub const EXTENSION_FIELDS: &[FieldSpec] = &[
    field("id", "string", "ID of the extension"),
    field("name", "string", "Name of the extension"),
    field("description", "string", "Description of the extension"),
    field("type", "string", "Type of the extension"),
    field(
        "path",
        "string",
        "The path of the entry point of the extension",
    ),
    field(
        "pathready",
        "boolean",
        "True if the extension entry point is in sync across management servers",
    ),
    field(
        "isuserdefined",
        "boolean",
        "True if the extension is added by admin",
    ),
    field(
        "orchestratorrequirespreparevm",
        "boolean",
        "Only for Orchestrator extensions: whether the VM is prepared before deployment",
    ),
    field("state", "string", "The state of the extension"),
    field("details", "map", "The details of the extension"),
    nested(
        "resources",
        "list",
        "List of resources to which extension is registered to",
        RESOURCE_FIELDS,
    ),
    field("created", "date", "Creation timestamp of the extension"),
    field(
        "removed",
        "date",
        "Removal timestamp of the extension, if applicable",
    ),
];

/// `SuccessResponse`.
pub const SUCCESS_FIELDS: &[FieldSpec] = &[
    field(
        "success",
        "boolean",
        "true if operation is executed successfully",
    ),
    field(
        "displaytext",
        "string",
        "any text associated with the success or failure",
    ),
];

/// `ProviderResponse`.
pub const PROVIDER_FIELDS: &[FieldSpec] = &[
    field("id", "string", "uuid of the network provider"),
    field("name", "string", "the provider name"),
    field(
        "physicalnetworkid",
        "string",
        "the physical network this belongs to",
    ),
    field(
        "destinationphysicalnetworkid",
        "string",
        "the destination physical network",
    ),
    field("state", "string", "state of the network provider"),
    field("servicelist", "list", "services for this provider"),
    field(
        "canenableindividualservice",
        "boolean",
        "true if individual services can be enabled/disabled",
    ),
];

/// `AsyncJobResponse` (with `jobid` and `jobstatus` of every response).
pub const ASYNC_JOB_FIELDS: &[FieldSpec] = &[
    field("jobid", "string", "the ID of the async job"),
    field(
        "jobstatus",
        "integer",
        "the current status of the job: 0 pending, 1 succeeded, 2 failed",
    ),
    field(
        "accountid",
        "string",
        "The Account id that executed the async command",
    ),
    field(
        "account",
        "string",
        "The Account that executed the async command",
    ),
    field(
        "userid",
        "string",
        "The User that executed the async command",
    ),
    field("cmd", "string", "The async command executed"),
    field(
        "jobprocstatus",
        "integer",
        "The progress information of the PENDING job",
    ),
    field("jobresultcode", "integer", "The result code for the job"),
    field("jobresulttype", "string", "The result type"),
    field("jobresult", "object", "The result reason"),
    field(
        "jobinstancetype",
        "string",
        "The Instance/entity object related to the job",
    ),
    field(
        "jobinstanceid",
        "string",
        "The unique ID of the Instance/entity object related to the job",
    ),
    field("created", "date", "The created date of the job"),
    field("completed", "date", "The completed date of the job"),
];

/// `ApiParameterResponse`.
pub const API_PARAM_FIELDS: &[FieldSpec] = &[
    field("name", "string", "the name of the api parameter"),
    field("description", "string", "description of the api parameter"),
    field("type", "string", "parameter type"),
    field("length", "integer", "length of the parameter"),
    field(
        "required",
        "boolean",
        "true if this parameter is required for the api request",
    ),
    field(
        "since",
        "string",
        "version of CloudStack the api was introduced in",
    ),
    field(
        "related",
        "string",
        "comma separated related apis to get the parameter",
    ),
];

/// `ApiResponseResponse`.
pub const API_RESPONSE_FIELDS: &[FieldSpec] = &[
    field("name", "string", "The name of the API response field"),
    field(
        "description",
        "string",
        "Description of the API response field",
    ),
    field("type", "string", "Response field type"),
    field("response", "list", "API response fields"),
];

/// `ApiDiscoveryResponse`.
pub const API_FIELDS: &[FieldSpec] = &[
    field("name", "string", "the name of the api command"),
    field("description", "string", "description of the api"),
    field(
        "since",
        "string",
        "version of CloudStack the api was introduced in",
    ),
    field("isasync", "boolean", "true if api is asynchronous"),
    field("related", "string", "comma separated related apis"),
    nested(
        "params",
        "list",
        "the list params the api accepts",
        API_PARAM_FIELDS,
    ),
    nested(
        "response",
        "list",
        "api response fields",
        API_RESPONSE_FIELDS,
    ),
    field("type", "string", "response field type"),
];

/// netbridge's generated offering (no CloudStack counterpart).
pub const OFFERING_FIELDS: &[FieldSpec] = &[
    field("id", "string", "ID of the generated offering"),
    field("name", "string", "name of the offering to create"),
    field("offeringtype", "string", "isolated, shared, vpctier or vpc"),
    field(
        "extensionid",
        "string",
        "the extension providing the services",
    ),
    field(
        "command",
        "string",
        "the CloudStack command that creates the offering",
    ),
    field("params", "map", "the parameters of that command"),
    field(
        "enable",
        "object",
        "the follow-up call that enables the offering",
    ),
    field("services", "list", "the services of the offering"),
    field("created", "date", "when the offering was generated"),
];

/// netbridge's offering check (no CloudStack counterpart).
pub const VALIDATION_FIELDS: &[FieldSpec] = &[
    field(
        "success",
        "boolean",
        "true when the offering request is valid",
    ),
    field("extensionid", "string", "the extension checked"),
    field("services", "list", "the services the offering would use"),
];
