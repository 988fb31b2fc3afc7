//! Service/capability vocabulary of `NetworkOrchestrator` extensions, validation
//! of the `network.services` / `network.service.capabilities` details, and the
//! generation and validation of network/VPC offerings.
//!
//! Pure logic: no I/O. Names are matched case-insensitively and stored in
//! CloudStack's canonical case. Unlike upstream (which silently drops unknown
//! names), every unknown service, capability or value is an error naming the
//! detail key and listing what is accepted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Detail key holding the comma list of services.
pub const SERVICES_KEY: &str = "network.services";
/// Detail key holding the capabilities JSON object.
pub const CAPABILITIES_KEY: &str = "network.service.capabilities";

/// Errors of this layer; texts are user-facing (API code 431).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferingError {
    #[error("{0}")]
    Invalid(String),
}

fn invalid(text: impl Into<String>) -> OfferingError {
    OfferingError::Invalid(text.into())
}

/// Quotes a user-supplied value for an error text (escaped, bounded).
fn q(value: &str) -> String {
    netbridge_protocol::sanitize_for_message(value)
}

macro_rules! services {
    ($($variant:ident),+ $(,)?) => {
        /// A CloudStack network service.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Service { $($variant),+ }
        impl Service {
            /// Every service, in CloudStack's usual order.
            pub const ALL: &'static [Service] = &[$(Service::$variant),+];
            /// Canonical name.
            pub fn as_str(self) -> &'static str {
                match self { $(Service::$variant => stringify!($variant)),+ }
            }
        }
    };
}

services!(
    Dhcp,
    Dns,
    UserData,
    SourceNat,
    StaticNat,
    PortForwarding,
    Firewall,
    Lb,
    NetworkACL,
    Gateway,
    CustomAction,
    Vpn,
    SecurityGroup,
);

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Service {
    /// Case-insensitive lookup.
    pub fn parse(name: &str) -> Option<Service> {
        let name = name.trim();
        Service::ALL
            .iter()
            .copied()
            .find(|s| s.as_str().eq_ignore_ascii_case(name))
    }

    /// Comma list of every accepted service name.
    pub fn accepted_list() -> String {
        Service::ALL
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Services that need a public IP, hence SourceNat or Gateway.
    pub fn needs_public_ip(self) -> bool {
        matches!(
            self,
            Service::StaticNat | Service::PortForwarding | Service::Lb | Service::Firewall
        )
    }

    /// Capabilities CloudStack knows for this service.
    pub fn capabilities(self) -> &'static [CapabilitySpec] {
        use ValueForm::*;
        // Struct literals (not fn calls) so the slices are promoted to statics.
        macro_rules! cap {
            ($name:expr, $form:expr $(,)?) => {
                CapabilitySpec {
                    name: $name,
                    form: $form,
                }
            };
        }
        const PROTO_FW: &[&str] = &["tcp", "udp", "icmp", "all"];
        use netbridge_protocol::capabilities::{LB_ALGORITHMS, LB_PROTOCOLS};
        match self {
            Service::SourceNat => &[
                cap!("SupportedSourceNatTypes", List(&["peraccount", "perzone"])),
                cap!("RedundantRouter", Bool),
            ],
            Service::StaticNat => &[
                cap!("Supported", Bool),
                cap!("ElasticIp", Bool),
                cap!("AssociatePublicIP", Bool),
            ],
            Service::PortForwarding => &[cap!("SupportedProtocols", List(&["tcp", "udp"]))],
            Service::Firewall => &[
                cap!("TrafficStatistics", Text),
                cap!("SupportedProtocols", List(PROTO_FW)),
                cap!("SupportedEgressProtocols", List(PROTO_FW)),
                cap!("SupportedTrafficDirection", List(&["ingress", "egress"])),
                cap!("MultipleIps", Bool),
            ],
            // Protocols and algorithms: exactly what the executor carries
            // out (one list, in the executor's services module), so no
            // extension can declare to CloudStack what netbridge cannot do.
            Service::Lb => &[
                cap!("SupportedLBAlgorithms", List(LB_ALGORITHMS)),
                cap!("SupportedLBIsolation", List(&["dedicated", "shared"])),
                cap!("SupportedProtocols", List(LB_PROTOCOLS)),
                // Never carried to the executor (the protocol has no
                // stickiness field): CloudStack's method names plus the
                // reference extension's `appsession`, any case.
                cap!(
                    "SupportedStickinessMethods",
                    List(&["LbCookie", "AppCookie", "SourceBased", "AppSession"]),
                ),
                cap!("LbSchemes", List(&["Public", "Internal"])),
                cap!("SslTermination", Bool),
                cap!("VmAutoScaling", Bool),
                cap!("HealthCheckPolicy", Bool),
                cap!("ElasticLb", Bool),
                cap!("InlineMode", Bool),
            ],
            Service::Dhcp => &[cap!("DhcpAccrossMultipleSubnets", Bool)],
            Service::Dns => &[
                cap!("AllowDnsSuffixModification", Bool),
                cap!("ExternalDns", Bool),
            ],
            Service::Gateway => &[cap!("RedundantRouter", Bool)],
            Service::NetworkACL => &[cap!("SupportedProtocols", List(PROTO_FW))],
            Service::UserData | Service::CustomAction => &[cap!("Supported", Bool)],
            Service::Vpn | Service::SecurityGroup => &[],
        }
    }

    /// Case-insensitive capability lookup for this service.
    pub fn capability(self, name: &str) -> Option<&'static CapabilitySpec> {
        self.capabilities()
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name.trim()))
    }

    fn accepted_capabilities(self) -> String {
        let names: Vec<&str> = self.capabilities().iter().map(|c| c.name).collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }
}

/// What a capability value looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueForm {
    /// `true` or `false`.
    Bool,
    /// Comma list, each item one of these (canonical case).
    List(&'static [&'static str]),
    /// Short free text of safe characters.
    Text,
}

/// One capability name and its value form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapabilitySpec {
    pub name: &'static str,
    pub form: ValueForm,
}

impl CapabilitySpec {
    fn accepted_values(&self) -> String {
        match self.form {
            ValueForm::Bool => "true, false".to_string(),
            ValueForm::List(items) => format!("comma list of {}", items.join(", ")),
            ValueForm::Text => {
                "text of letters, digits, spaces and , . _ - (at most 128 characters)".to_string()
            }
        }
    }

    /// Canonical form of `value`, or `None` when it has the wrong form.
    pub fn canonical_value(&self, value: &str) -> Option<String> {
        let value = value.trim();
        match self.form {
            ValueForm::Bool => {
                if value.eq_ignore_ascii_case("true") {
                    Some("true".into())
                } else if value.eq_ignore_ascii_case("false") {
                    Some("false".into())
                } else {
                    None
                }
            }
            ValueForm::List(items) => {
                let mut out: Vec<&str> = Vec::new();
                for part in value.split(',') {
                    let item = items.iter().find(|i| i.eq_ignore_ascii_case(part.trim()))?;
                    if !out.contains(item) {
                        out.push(item);
                    }
                }
                Some(out.join(","))
            }
            ValueForm::Text => {
                let ok = !value.is_empty()
                    && value.len() <= 128
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || " ,._-".contains(c));
                ok.then(|| value.to_string())
            }
        }
    }

    /// The individual values a declared (canonical) value allows.
    fn allowed_items(&self, declared: &str) -> Vec<String> {
        match self.form {
            ValueForm::List(_) => declared.split(',').map(str::to_string).collect(),
            _ => vec![declared.to_string()],
        }
    }
}

/// Declared capabilities: service → capability name → canonical value.
pub type Capabilities = BTreeMap<Service, BTreeMap<&'static str, String>>;

/// Parses and validates `network.services`; returns the services in the order
/// given, with duplicates refused.
pub fn parse_services(value: &str) -> Result<Vec<Service>, OfferingError> {
    let mut out = Vec::new();
    if value.trim().is_empty() {
        return Ok(out);
    }
    for item in value.split(',') {
        let item = item.trim();
        let service = Service::parse(item).ok_or_else(|| {
            invalid(format!(
                "Invalid service '{}' in detail {SERVICES_KEY}; accepted services: {}",
                q(item),
                Service::accepted_list()
            ))
        })?;
        if out.contains(&service) {
            return Err(invalid(format!(
                "Duplicate service '{service}' in detail {SERVICES_KEY}"
            )));
        }
        out.push(service);
    }
    Ok(out)
}

/// Canonical text of a service list (`Dhcp,Dns,…`).
pub fn services_to_string(services: &[Service]) -> String {
    services
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses and validates `network.service.capabilities`.
pub fn parse_capabilities(value: &str) -> Result<Capabilities, OfferingError> {
    let json: serde_json::Value = serde_json::from_str(value).map_err(|e| {
        invalid(format!(
            "Invalid JSON in detail {CAPABILITIES_KEY}: {}",
            q(&e.to_string())
        ))
    })?;
    let object = json.as_object().ok_or_else(|| {
        invalid(format!(
            "Detail {CAPABILITIES_KEY} must be a JSON object of service to {{capability: value}}"
        ))
    })?;
    let mut out = Capabilities::new();
    for (service_name, caps) in object {
        let service = Service::parse(service_name).ok_or_else(|| {
            invalid(format!(
                "Invalid service '{}' in detail {CAPABILITIES_KEY}; accepted services: {}",
                q(service_name),
                Service::accepted_list()
            ))
        })?;
        if out.contains_key(&service) {
            return Err(invalid(format!(
                "Duplicate service '{service}' in detail {CAPABILITIES_KEY}"
            )));
        }
        let caps = caps.as_object().ok_or_else(|| {
            invalid(format!(
                "Invalid value for service {service} in detail {CAPABILITIES_KEY}: expected a JSON object of capability to string value"
            ))
        })?;
        let mut map = BTreeMap::new();
        for (cap_name, cap_value) in caps {
            let spec = service.capability(cap_name).ok_or_else(|| {
                invalid(format!(
                    "Invalid capability '{}' for service {service} in detail {CAPABILITIES_KEY}; accepted capabilities: {}",
                    q(cap_name),
                    service.accepted_capabilities()
                ))
            })?;
            let text = cap_value.as_str().ok_or_else(|| {
                invalid(format!(
                    "Invalid value for capability {service}.{} in detail {CAPABILITIES_KEY}: expected a string; accepted values: {}",
                    spec.name,
                    spec.accepted_values()
                ))
            })?;
            let canonical = spec.canonical_value(text).ok_or_else(|| {
                invalid(format!(
                    "Invalid value '{}' for capability {service}.{} in detail {CAPABILITIES_KEY}; accepted values: {}",
                    q(text),
                    spec.name,
                    spec.accepted_values()
                ))
            })?;
            if map.insert(spec.name, canonical).is_some() {
                return Err(invalid(format!(
                    "Duplicate capability {service}.{} in detail {CAPABILITIES_KEY}",
                    spec.name
                )));
            }
        }
        out.insert(service, map);
    }
    Ok(out)
}

/// Canonical JSON text of parsed capabilities.
pub fn capabilities_to_string(caps: &Capabilities) -> String {
    let mut object = serde_json::Map::new();
    for (service, map) in caps {
        let inner: serde_json::Map<String, serde_json::Value> = map
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
            .collect();
        object.insert(service.to_string(), serde_json::Value::Object(inner));
    }
    serde_json::Value::Object(object).to_string()
}

/// The shapes of offering the bridge generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OfferingKind {
    Isolated,
    Shared,
    VpcTier,
    Vpc,
}

impl OfferingKind {
    pub const ALL: &'static [OfferingKind] = &[
        OfferingKind::Isolated,
        OfferingKind::Shared,
        OfferingKind::VpcTier,
        OfferingKind::Vpc,
    ];

    /// The `offeringtype` value.
    pub fn as_str(self) -> &'static str {
        match self {
            OfferingKind::Isolated => "isolated",
            OfferingKind::Shared => "shared",
            OfferingKind::VpcTier => "vpctier",
            OfferingKind::Vpc => "vpc",
        }
    }

    pub fn parse(value: &str) -> Option<OfferingKind> {
        OfferingKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str().eq_ignore_ascii_case(value.trim()))
    }

    /// CloudStack command creating this offering.
    pub fn command(self) -> &'static str {
        match self {
            OfferingKind::Vpc => "createVPCOffering",
            _ => "createNetworkOffering",
        }
    }
}

/// The extension's declaration, as needed to build and check offerings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Declaration {
    pub services: Vec<Service>,
    pub capabilities: Capabilities,
}

impl Declaration {
    /// Parses the two detail values (absent → empty).
    pub fn from_details(
        services: Option<&str>,
        capabilities: Option<&str>,
    ) -> Result<Declaration, OfferingError> {
        Ok(Declaration {
            services: services
                .map(parse_services)
                .transpose()?
                .unwrap_or_default(),
            capabilities: capabilities
                .map(parse_capabilities)
                .transpose()?
                .unwrap_or_default(),
        })
    }

    fn declared_value(&self, service: Service, cap: &str) -> Option<&str> {
        self.capabilities
            .get(&service)
            .and_then(|m| m.get(cap))
            .map(String::as_str)
    }
}

/// A generated offering: the CloudStack command plus its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedOffering {
    pub kind: OfferingKind,
    pub name: String,
    pub command: &'static str,
    pub services: Vec<Service>,
    /// Parameters in submission order.
    pub params: Vec<(String, String)>,
}

/// Services of `kind` implied by `declared`, applying the public-IP dependency
/// rule (StaticNat, PortForwarding, Lb, Firewall need SourceNat or Gateway).
pub fn services_for(kind: OfferingKind, declared: &[Service]) -> Vec<Service> {
    let mut services: Vec<Service> = declared
        .iter()
        .copied()
        .filter(|s| match kind {
            OfferingKind::Shared => matches!(s, Service::Dhcp | Service::Dns | Service::UserData),
            // CloudStack only offers security groups on shared networks.
            _ if *s == Service::SecurityGroup => false,
            OfferingKind::Isolated => *s != Service::NetworkACL,
            OfferingKind::VpcTier | OfferingKind::Vpc => *s != Service::Firewall,
        })
        .collect();
    let has_public = services
        .iter()
        .any(|s| matches!(s, Service::SourceNat | Service::Gateway));
    if !has_public {
        services.retain(|s| !s.needs_public_ip());
    }
    // Stable, CloudStack-like order regardless of declaration order.
    services.sort();
    services
}

/// Builds the offering of `kind` for extension `extension_name`.
pub fn generate(
    extension_name: &str,
    declaration: &Declaration,
    kind: OfferingKind,
    name_prefix: &str,
) -> Result<GeneratedOffering, OfferingError> {
    let services = services_for(kind, &declaration.services);
    if services.is_empty() {
        return Err(invalid(format!(
            "Extension '{extension_name}' declares no service usable in a {} offering",
            kind.as_str()
        )));
    }
    let name = format!("{name_prefix}-{}", kind.as_str());
    let mut params: Vec<(String, String)> = vec![
        ("name".into(), name.clone()),
        (
            "displaytext".into(),
            format!(
                "{} offering for extension {extension_name} (generated by netbridge)",
                kind.as_str()
            ),
        ),
    ];
    match kind {
        OfferingKind::Isolated | OfferingKind::VpcTier => {
            params.push(("guestiptype".into(), "Isolated".into()));
            params.push(("traffictype".into(), "GUEST".into()));
        }
        OfferingKind::Shared => {
            params.push(("guestiptype".into(), "Shared".into()));
            params.push(("traffictype".into(), "GUEST".into()));
            params.push(("specifyIpRanges".into(), "true".into()));
            params.push(("specifyVlan".into(), "true".into()));
        }
        OfferingKind::Vpc => {}
    }
    if kind == OfferingKind::VpcTier {
        // `forvpc` is the API parameter; `useVpc=on` is what the UI form sends.
        params.push(("forvpc".into(), "true".into()));
        params.push(("useVpc".into(), "on".into()));
    }
    params.push(("supportedservices".into(), services_to_string(&services)));
    for (i, service) in services.iter().enumerate() {
        params.push((
            format!("serviceProviderList[{i}].service"),
            service.to_string(),
        ));
        params.push((
            format!("serviceProviderList[{i}].provider"),
            extension_name.to_string(),
        ));
    }
    let mut caps: Vec<(Service, &str, String)> = Vec::new();
    if matches!(kind, OfferingKind::Isolated) && services.contains(&Service::SourceNat) {
        if let Some(types) =
            declaration.declared_value(Service::SourceNat, "SupportedSourceNatTypes")
        {
            let pick = if types.split(',').any(|t| t == "peraccount") {
                "peraccount"
            } else {
                types.split(',').next().unwrap_or("peraccount")
            };
            caps.push((Service::SourceNat, "SupportedSourceNatTypes", pick.into()));
        }
    }
    if matches!(kind, OfferingKind::Isolated | OfferingKind::VpcTier)
        && services.contains(&Service::Lb)
    {
        if let Some(iso) = declaration.declared_value(Service::Lb, "SupportedLBIsolation") {
            let pick = if iso.split(',').any(|t| t == "dedicated") {
                "dedicated"
            } else {
                iso.split(',').next().unwrap_or("dedicated")
            };
            caps.push((Service::Lb, "SupportedLBIsolation", pick.into()));
        }
    }
    for (i, (service, cap, value)) in caps.into_iter().enumerate() {
        params.push((
            format!("serviceCapabilityList[{i}].service"),
            service.to_string(),
        ));
        params.push((
            format!("serviceCapabilityList[{i}].capabilitytype"),
            cap.to_string(),
        ));
        params.push((format!("serviceCapabilityList[{i}].capabilityvalue"), value));
    }
    Ok(GeneratedOffering {
        kind,
        name,
        command: kind.command(),
        services,
        params,
    })
}

/// A requested service → provider mapping (`serviceProviderList[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderItem {
    pub index: String,
    pub service: String,
    pub provider: String,
}

/// A requested capability (`serviceCapabilityList[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityItem {
    pub index: String,
    pub service: String,
    pub capabilitytype: String,
    pub capabilityvalue: String,
}

/// A `createNetworkOffering` request to check against a declaration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OfferingRequest {
    /// `supportedservices`, split.
    pub supported_services: Vec<String>,
    pub providers: Vec<ProviderItem>,
    pub capabilities: Vec<CapabilityItem>,
}

/// Checks a `createNetworkOffering` request: the services mapped to the
/// extension must be declared, capability values must be among the declared
/// ones. Returns the services the extension would provide.
pub fn validate_offering(
    extension_name: &str,
    declaration: &Declaration,
    request: &OfferingRequest,
) -> Result<Vec<Service>, OfferingError> {
    let mut supported = BTreeSet::new();
    for name in &request.supported_services {
        let service = Service::parse(name).ok_or_else(|| {
            invalid(format!(
                "Invalid service '{}' in supportedservices; accepted services: {}",
                q(name),
                Service::accepted_list()
            ))
        })?;
        supported.insert(service);
    }
    // Without an explicit provider list, every supported service is the extension's.
    let mut ours: BTreeSet<Service> = if request.providers.is_empty() {
        supported.clone()
    } else {
        BTreeSet::new()
    };
    for item in &request.providers {
        let service = Service::parse(&item.service).ok_or_else(|| {
            invalid(format!(
                "Invalid service '{}' in serviceProviderList[{}]; accepted services: {}",
                q(&item.service),
                item.index,
                Service::accepted_list()
            ))
        })?;
        if !supported.contains(&service) {
            return Err(invalid(format!(
                "Service {service} in serviceProviderList[{}] is not listed in supportedservices",
                item.index
            )));
        }
        if item.provider.trim().eq_ignore_ascii_case(extension_name) {
            ours.insert(service);
        }
    }
    for service in &ours {
        if !declaration.services.contains(service) {
            return Err(invalid(format!(
                "Service {service} is not declared by extension '{extension_name}' (declared: {})",
                services_to_string(&declaration.services)
            )));
        }
    }
    if !supported
        .iter()
        .any(|s| matches!(s, Service::SourceNat | Service::Gateway))
    {
        if let Some(s) = supported.iter().find(|s| s.needs_public_ip()) {
            return Err(invalid(format!(
                "Service {s} requires SourceNat or Gateway in the offering"
            )));
        }
    }
    for item in &request.capabilities {
        let at = format!("serviceCapabilityList[{}]", item.index);
        let service = Service::parse(&item.service).ok_or_else(|| {
            invalid(format!(
                "Invalid service '{}' in {at}; accepted services: {}",
                q(&item.service),
                Service::accepted_list()
            ))
        })?;
        if !supported.contains(&service) {
            return Err(invalid(format!(
                "Service {service} in {at} is not listed in supportedservices"
            )));
        }
        if !ours.contains(&service) {
            continue;
        }
        let spec = service.capability(&item.capabilitytype).ok_or_else(|| {
            invalid(format!(
                "Invalid capability '{}' for service {service} in {at}; accepted capabilities: {}",
                q(&item.capabilitytype),
                service.accepted_capabilities()
            ))
        })?;
        let declared = declaration
            .declared_value(service, spec.name)
            .ok_or_else(|| {
                invalid(format!(
                "Capability {service}.{} in {at} is not declared by extension '{extension_name}'",
                spec.name
            ))
            })?;
        let requested = spec.canonical_value(&item.capabilityvalue).ok_or_else(|| {
            invalid(format!(
                "Invalid value '{}' for capability {service}.{} in {at}; accepted values: {}",
                q(&item.capabilityvalue),
                spec.name,
                spec.accepted_values()
            ))
        })?;
        let allowed = spec.allowed_items(declared);
        let ok = match spec.form {
            // Turning a feature off is always within what the provider offers.
            ValueForm::Bool => requested == "false" || requested == declared,
            ValueForm::List(_) => requested.split(',').all(|r| allowed.iter().any(|a| a == r)),
            ValueForm::Text => requested == declared,
        };
        if !ok {
            return Err(invalid(format!(
                "Value '{}' of capability {service}.{} in {at} is not declared by extension '{extension_name}' (declared: {declared})",
                q(&item.capabilityvalue),
                spec.name
            )));
        }
    }
    Ok(ours.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE_SERVICES: &str =
        "Dhcp,Dns,UserData,SourceNat,StaticNat,PortForwarding,Firewall,Lb,NetworkACL,CustomAction";

    fn reference() -> Declaration {
        Declaration::from_details(
            Some(REFERENCE_SERVICES),
            Some(
                r#"{"SourceNat":{"SupportedSourceNatTypes":"peraccount","RedundantRouter":"false"},
                    "Lb":{"SupportedLBAlgorithms":"roundrobin,leastconn","SupportedLBIsolation":"dedicated"}}"#,
            ),
        )
        .unwrap()
    }

    fn param<'a>(o: &'a GeneratedOffering, key: &str) -> Option<&'a str> {
        o.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn services_parse_case_insensitively_to_canonical() {
        let s = parse_services(" dhcp, DNS ,networkacl").unwrap();
        assert_eq!(services_to_string(&s), "Dhcp,Dns,NetworkACL");
    }

    #[test]
    fn unknown_service_is_named_with_accepted_list() {
        let err = parse_services("Dhcp,Teleport").unwrap_err().to_string();
        assert!(err.starts_with("Invalid service 'Teleport' in detail network.services; accepted services: Dhcp, Dns"), "{err}");
        assert!(parse_services("Dhcp,,Dns").is_err());
        assert_eq!(
            parse_services("Dhcp,dhcp").unwrap_err().to_string(),
            "Duplicate service 'Dhcp' in detail network.services"
        );
    }

    #[test]
    fn capabilities_are_validated_and_canonicalized() {
        let caps = parse_capabilities(r#"{"sourcenat":{"supportedsourcenattypes":"PerAccount"}}"#)
            .unwrap();
        assert_eq!(
            capabilities_to_string(&caps),
            r#"{"SourceNat":{"SupportedSourceNatTypes":"peraccount"}}"#
        );
        let e = parse_capabilities("{not json").unwrap_err().to_string();
        assert!(
            e.starts_with("Invalid JSON in detail network.service.capabilities"),
            "{e}"
        );
        let e = parse_capabilities(r#"["x"]"#).unwrap_err().to_string();
        assert!(e.contains("must be a JSON object"), "{e}");
        let e = parse_capabilities(r#"{"Lb":{"Speed":"fast"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("Invalid capability 'Speed' for service Lb in detail network.service.capabilities; accepted capabilities: SupportedLBAlgorithms"), "{e}");
        let e = parse_capabilities(r#"{"Lb":{"SupportedLBAlgorithms":"random"}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Invalid value 'random' for capability Lb.SupportedLBAlgorithms"),
            "{e}"
        );
        assert!(e.contains("roundrobin, leastconn, source"), "{e}");
        // Lb protocols and algorithms: what the executor carries out.
        let e = parse_capabilities(r#"{"Lb":{"SupportedProtocols":"tcp,sctp"}}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "Invalid value 'tcp,sctp' for capability Lb.SupportedProtocols in detail network.service.capabilities; accepted values: comma list of tcp, udp, tcp-proxy");
        let lb = parse_capabilities(
            r#"{"Lb":{"SupportedProtocols":"TCP,udp,tcp-proxy","SupportedLBAlgorithms":"roundrobin,leastconn,source"}}"#,
        )
        .unwrap();
        assert_eq!(lb[&Service::Lb]["SupportedProtocols"], "tcp,udp,tcp-proxy");
        let spec = |name| Service::Lb.capability(name).unwrap().form;
        assert_eq!(
            spec("SupportedProtocols"),
            ValueForm::List(netbridge_protocol::capabilities::LB_PROTOCOLS)
        );
        assert_eq!(
            spec("SupportedLBAlgorithms"),
            ValueForm::List(netbridge_protocol::capabilities::LB_ALGORITHMS)
        );
        let e = parse_capabilities(r#"{"Lb":{"ElasticLb":true}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a string"), "{e}");
        let e = parse_capabilities(r#"{"Lb":"x"}"#).unwrap_err().to_string();
        assert!(e.contains("Invalid value for service Lb"), "{e}");
        let e = parse_capabilities(r#"{"Vpn":{"Supported":"true"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("accepted capabilities: none"), "{e}");
    }

    #[test]
    fn isolated_offering_for_reference_extension() {
        let o = generate("ref", &reference(), OfferingKind::Isolated, "ref").unwrap();
        assert_eq!(o.command, "createNetworkOffering");
        assert_eq!(param(&o, "name"), Some("ref-isolated"));
        assert_eq!(param(&o, "guestiptype"), Some("Isolated"));
        assert_eq!(param(&o, "traffictype"), Some("GUEST"));
        assert_eq!(
            param(&o, "supportedservices"),
            Some("Dhcp,Dns,UserData,SourceNat,StaticNat,PortForwarding,Firewall,Lb,CustomAction")
        );
        assert_eq!(param(&o, "serviceProviderList[0].service"), Some("Dhcp"));
        assert_eq!(param(&o, "serviceProviderList[0].provider"), Some("ref"));
        assert_eq!(
            param(&o, "serviceCapabilityList[0].service"),
            Some("SourceNat")
        );
        assert_eq!(
            param(&o, "serviceCapabilityList[0].capabilitytype"),
            Some("SupportedSourceNatTypes")
        );
        assert_eq!(
            param(&o, "serviceCapabilityList[0].capabilityvalue"),
            Some("peraccount")
        );
        assert_eq!(
            param(&o, "serviceCapabilityList[1].capabilitytype"),
            Some("SupportedLBIsolation")
        );
    }

    #[test]
    fn other_shapes_for_reference_extension() {
        let d = reference();
        let s = generate("ref", &d, OfferingKind::Shared, "p").unwrap();
        assert_eq!(param(&s, "supportedservices"), Some("Dhcp,Dns,UserData"));
        assert_eq!(param(&s, "guestiptype"), Some("Shared"));
        assert_eq!(param(&s, "specifyIpRanges"), Some("true"));
        assert_eq!(param(&s, "specifyVlan"), Some("true"));
        let t = generate("ref", &d, OfferingKind::VpcTier, "p").unwrap();
        assert_eq!(
            param(&t, "supportedservices"),
            Some("Dhcp,Dns,UserData,SourceNat,StaticNat,PortForwarding,Lb,NetworkACL,CustomAction")
        );
        assert_eq!(param(&t, "forvpc"), Some("true"));
        assert_eq!(param(&t, "useVpc"), Some("on"));
        let v = generate("ref", &d, OfferingKind::Vpc, "p").unwrap();
        assert_eq!(v.command, "createVPCOffering");
        assert_eq!(param(&v, "guestiptype"), None);
        assert!(!v.services.contains(&Service::Firewall));
    }

    #[test]
    fn public_ip_services_need_source_nat_or_gateway() {
        let d = Declaration::from_details(Some("Dhcp,StaticNat,Lb,Firewall,PortForwarding"), None)
            .unwrap();
        let o = generate("x", &d, OfferingKind::Isolated, "x").unwrap();
        assert_eq!(o.services, vec![Service::Dhcp]);
        let d = Declaration::from_details(Some("Gateway,StaticNat"), None).unwrap();
        let o = generate("x", &d, OfferingKind::Vpc, "x").unwrap();
        assert_eq!(o.services, vec![Service::StaticNat, Service::Gateway]);
        let d = Declaration::from_details(Some("Dhcp,SecurityGroup"), None).unwrap();
        let o = generate("x", &d, OfferingKind::Isolated, "x").unwrap();
        assert_eq!(o.services, vec![Service::Dhcp]);
        let d = Declaration::from_details(Some("NetworkACL"), None).unwrap();
        let e = generate("x", &d, OfferingKind::Shared, "x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Extension 'x' declares no service usable in a shared offering"
        );
    }

    fn request(services: &str, caps: &[(&str, &str, &str)]) -> OfferingRequest {
        OfferingRequest {
            supported_services: services.split(',').map(str::to_string).collect(),
            providers: vec![],
            capabilities: caps
                .iter()
                .enumerate()
                .map(|(i, (s, t, v))| CapabilityItem {
                    index: i.to_string(),
                    service: s.to_string(),
                    capabilitytype: t.to_string(),
                    capabilityvalue: v.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn validation_accepts_declared_and_refuses_the_rest() {
        let d = reference();
        let ok = validate_offering(
            "ref",
            &d,
            &request(
                "Dhcp,SourceNat,Lb",
                &[
                    ("SourceNat", "SupportedSourceNatTypes", "peraccount"),
                    ("Lb", "SupportedLBAlgorithms", "leastconn"),
                ],
            ),
        )
        .unwrap();
        assert_eq!(ok, vec![Service::Dhcp, Service::SourceNat, Service::Lb]);
        let e = validate_offering(
            "ref",
            &d,
            &request(
                "Dhcp,SourceNat",
                &[("SourceNat", "SupportedSourceNatTypes", "perzone")],
            ),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "Value 'perzone' of capability SourceNat.SupportedSourceNatTypes in serviceCapabilityList[0] is not declared by extension 'ref' (declared: peraccount)");
        let e = validate_offering(
            "ref",
            &d,
            &request("SourceNat,Lb", &[("Lb", "SupportedLBAlgorithms", "source")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("Value 'source' of capability Lb.SupportedLBAlgorithms"),
            "{e}"
        );
        let e = validate_offering("ref", &d, &request("Dhcp,Gateway", &[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("Service Gateway is not declared by extension 'ref'"),
            "{e}"
        );
        let e = validate_offering("ref", &d, &request("Dhcp,Lb", &[]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "Service Lb requires SourceNat or Gateway in the offering"
        );
    }

    #[test]
    fn services_of_other_providers_are_not_checked() {
        let d = reference();
        let mut r = request("Dhcp,Gateway,SourceNat", &[]);
        r.providers = vec![
            ProviderItem {
                index: "0".into(),
                service: "Gateway".into(),
                provider: "VpcVirtualRouter".into(),
            },
            ProviderItem {
                index: "1".into(),
                service: "dhcp".into(),
                provider: "REF".into(),
            },
        ];
        assert_eq!(
            validate_offering("ref", &d, &r).unwrap(),
            vec![Service::Dhcp]
        );
    }
}
