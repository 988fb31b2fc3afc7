//! Desired guest-service state of one network and the pure update per
//! command. [`apply`] validates everything first and changes nothing on error.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::validate::{self, invalid, opt_str, req_str, rule_str, Payload};
use super::vmdata::{self, ContentEncoding, VmDataSet};
use super::ServicesError;
use netbridge_protocol::Command;

/// One VM NIC with a static DHCP lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub mac: String,
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
    #[serde(default)]
    pub hostname: Option<String>,
    /// Default NICs get the router option; others none at all.
    pub default_nic: bool,
    #[serde(default)]
    pub nic_id: Option<String>,
    /// The NIC's own gateway when it differs from the network's.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
}

/// A DNS A (and optional AAAA) record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRecord {
    pub hostname: String,
    // Omitted when absent: thousands of records are saved per change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbProtocol {
    Tcp,
    /// TCP with the PROXY protocol header towards the backends.
    TcpProxy,
    /// UDP, balanced by nftables DNAT in the namespace (no haproxy).
    Udp,
}

impl LbProtocol {
    /// UDP rules are carried out by nftables, the others by haproxy.
    pub fn is_udp(self) -> bool {
        self == LbProtocol::Udp
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbAlgorithm {
    Roundrobin,
    Leastconn,
    Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// An active load-balancing rule; only non-revoked backends are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbRule {
    pub id: String,
    pub public_ip: Ipv4Addr,
    pub public_port: u16,
    pub protocol: LbProtocol,
    pub algorithm: LbAlgorithm,
    pub backends: Vec<Backend>,
}

mod net_serde {
    use ipnet::Ipv4Net;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Ipv4Net>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_str(&n.to_string()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Net>, D::Error> {
        let o: Option<String> = Option::deserialize(d)?;
        o.map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Guest services of one network (everything except VM data, which lives in a
/// [`VmDataSet`] owned by the metadata store because the password service
/// changes it too).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestServices {
    pub extension_ip: Option<Ipv4Addr>,
    pub gateway: Option<Ipv4Addr>,
    #[serde(default, with = "net_serde")]
    pub cidr: Option<Ipv4Net>,
    #[serde(default)]
    pub dns: Vec<IpAddr>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub dhcp_enabled: bool,
    #[serde(default)]
    pub dns_enabled: bool,
    /// NICs by MAC. Values are shared (`Arc`): the engine copies the
    /// network's state for each all-or-nothing update, and a copy then
    /// costs the map's nodes, not every record; unchanged records compare
    /// by pointer.
    #[serde(default)]
    pub nics: BTreeMap<String, Arc<Nic>>,
    #[serde(default)]
    pub dns_records: BTreeMap<Ipv4Addr, Arc<DnsRecord>>,
    /// Extra DHCP options by `nic_id`: option code → value.
    #[serde(default)]
    pub nic_options: BTreeMap<String, BTreeMap<u8, String>>,
    /// Active LB rules by rule id.
    #[serde(default)]
    pub lb_rules: BTreeMap<String, LbRule>,
}

impl GuestServices {
    /// The address dnsmasq and the metadata server listen on.
    pub fn listen_ip(&self) -> Option<Ipv4Addr> {
        self.extension_ip.or(self.gateway)
    }

    /// The UDP rules (nftables), by rule id.
    pub fn udp_lb_rules(&self) -> impl Iterator<Item = &LbRule> {
        self.lb_rules.values().filter(|r| r.protocol.is_udp())
    }

    /// The TCP and tcp-proxy rules (haproxy), by rule id.
    pub fn tcp_lb_rules(&self) -> impl Iterator<Item = &LbRule> {
        self.lb_rules.values().filter(|r| !r.protocol.is_udp())
    }

    /// Whether a dnsmasq must run for this network.
    pub fn needs_dnsmasq(&self) -> bool {
        (self.dhcp_enabled || self.dns_enabled) && self.listen_ip().is_some()
    }
}

/// Engine-chosen behaviour that the payload cannot tell. Nothing at
/// present: how VM data contents are encoded follows from the form of their
/// document (see [`ContentEncoding`]), not from a setting.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {}

/// Which parts of the data plane an update touched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effects {
    /// dnsmasq configuration or hosts files may have changed.
    pub dnsmasq: bool,
    /// VM data changed (store must be written).
    pub vm_data: bool,
    /// LB rules changed (haproxy must be re-rendered and reloaded).
    pub lb: bool,
}

/// Applies one guest-service command to the network's state. On error neither
/// `state` nor `vms` is changed. Commands that are not guest-service commands
/// return [`ServicesError::Unsupported`].
/// Whether `command` reads or changes VM data (the others leave the
/// [`VmDataSet`] alone, so a caller may skip loading and diffing it).
pub fn touches_vm_data(command: Command) -> bool {
    use Command as C;
    matches!(
        command,
        C::ReleaseNic
            | C::SaveVmData
            | C::SaveUserdata
            | C::SavePassword
            | C::SaveSshkey
            | C::SaveHypervisorHostname
            | C::RestoreNetwork
    )
}

pub fn apply(
    command: Command,
    payload: &Payload,
    state: &mut GuestServices,
    vms: &mut VmDataSet,
    opts: &Options,
) -> Result<Effects, ServicesError> {
    let mut s = state.clone();
    let mut v = vms.clone();
    let effects = apply_in_place(command, payload, &mut s, &mut v, opts)?;
    *state = s;
    *vms = v;
    Ok(effects)
}

const DHCP: Effects = Effects {
    dnsmasq: true,
    vm_data: false,
    lb: false,
};
const VMDATA: Effects = Effects {
    dnsmasq: false,
    vm_data: true,
    lb: false,
};

/// As [`apply`], on the caller's copies: after an error `state` and `vms`
/// may hold part of the change, so the caller must discard them (the
/// engine works on copies it drops on error; this saves [`apply`]'s own
/// copy of every record).
pub fn apply_in_place(
    command: Command,
    p: &Payload,
    s: &mut GuestServices,
    vms: &mut VmDataSet,
    _opts: &Options,
) -> Result<Effects, ServicesError> {
    use Command as C;
    match command {
        C::PrepareNic | C::AddDhcpEntry => {
            absorb_network(p, s, false)?;
            let nic = parse_nic(p)?;
            // NIC payloads may carry only `netmask`: derive the subnet.
            if s.cidr.is_none() {
                if let Some(m) = validate::opt_ipv4(p, "netmask")? {
                    let net = Ipv4Net::with_netmask(nic.ip, m)
                        .map_err(|_| invalid("netmask", format!("{m} is not a netmask")))?;
                    s.cidr = Some(net.trunc());
                }
            }
            if command == C::PrepareNic {
                if let Some(h) = &nic.hostname {
                    s.dns_records.insert(
                        nic.ip,
                        Arc::new(DnsRecord {
                            hostname: h.clone(),
                            ip6: nic.ip6,
                        }),
                    );
                }
            }
            // One address belongs to one MAC: drop a stale lease for it.
            s.nics.retain(|m, n| n.ip != nic.ip || *m == nic.mac);
            s.nics.insert(nic.mac.clone(), Arc::new(nic));
            s.dhcp_enabled = true;
            Ok(DHCP)
        }
        C::ReleaseNic => {
            let (mac, ip) = nic_key(p)?;
            let removed = remove_nic(s, mac.as_deref(), ip);
            let ip = ip.or(removed.as_ref().map(|n| n.ip));
            if let Some(n) = &removed {
                if let Some(id) = &n.nic_id {
                    s.nic_options.remove(id);
                }
            }
            if let Some(id) = opt_str(p, "nic_id")? {
                s.nic_options.remove(&id);
            }
            let mut eff = DHCP;
            if let Some(ip) = ip {
                s.dns_records.remove(&ip);
                eff.vm_data = vms.remove(&ip).is_some();
            }
            Ok(eff)
        }
        C::RemoveDhcpEntry => {
            let (mac, ip) = nic_key(p)?;
            remove_nic(s, mac.as_deref(), ip);
            Ok(DHCP)
        }
        C::ConfigDhcpSubnet => {
            absorb_network(p, s, true)?;
            s.dhcp_enabled = true;
            Ok(DHCP)
        }
        C::RemoveDhcpSubnet => {
            s.dhcp_enabled = false;
            Ok(DHCP)
        }
        C::SetDhcpOptions => {
            let nic_id = validate::ident("nic_id", &req_str(p, "nic_id")?)?;
            let opts = parse_dhcp_options(p.get("options"))?;
            if opts.is_empty() {
                s.nic_options.remove(&nic_id);
            } else {
                s.nic_options.insert(nic_id, opts);
            }
            Ok(DHCP)
        }
        C::AddDnsEntry => {
            absorb_network(p, s, false)?;
            let ip = validate::ipv4("ip", &req_str(p, "ip")?)?;
            let hostname = validate::hostname("hostname", &req_str(p, "hostname")?, false)?;
            let ip6 = validate::opt_ipv6(p, "ip6_address")?;
            s.dns_records
                .insert(ip, Arc::new(DnsRecord { hostname, ip6 }));
            s.dns_enabled = true;
            Ok(DHCP)
        }
        C::RemoveDnsEntry => {
            let ip = validate::ipv4("ip", &req_str(p, "ip")?)?;
            s.dns_records.remove(&ip);
            Ok(DHCP)
        }
        C::ConfigDnsSubnet => {
            absorb_network(p, s, true)?;
            s.dns_enabled = true;
            Ok(DHCP)
        }
        C::RemoveDnsSubnet => {
            s.dns_enabled = false;
            Ok(DHCP)
        }
        C::SaveVmData => {
            let ip = vm_ip(p)?;
            let doc = p
                .get("vm_data")
                .ok_or_else(|| validate::missing("vm_data"))?;
            vmdata::save_vm_data(vms, ip, doc, ContentEncoding::Plain)?;
            Ok(VMDATA)
        }
        C::SaveUserdata => {
            let ip = vm_ip(p)?;
            let u = opt_str(p, "userdata")?.unwrap_or_default();
            vmdata::save_userdata(vms, ip, &u)?;
            Ok(VMDATA)
        }
        C::SavePassword => {
            let ip = vm_ip(p)?;
            // Read raw: the value must never be echoed in an error.
            let pw = match p.get("password") {
                Some(Value::String(s)) => s.clone(),
                None => return Err(validate::missing("password")),
                Some(_) => return Err(invalid("password", "expected a string")),
            };
            vmdata::save_password(vms, ip, &pw)?;
            Ok(VMDATA)
        }
        C::SaveSshkey => {
            let ip = vm_ip(p)?;
            let k = req_str(p, "sshkey")?;
            vmdata::save_sshkey(vms, ip, &k)?;
            Ok(VMDATA)
        }
        C::SaveHypervisorHostname => {
            let ip = vm_ip(p)?;
            let h = req_str(p, "hypervisor_hostname")?;
            vmdata::save_hypervisor_hostname(vms, ip, &h)?;
            Ok(VMDATA)
        }
        C::ApplyLbRules => {
            let doc = p
                .get("lb_rules")
                .ok_or_else(|| validate::missing("lb_rules"))?;
            apply_lb_rules(s, doc)?;
            Ok(Effects {
                lb: true,
                ..Effects::default()
            })
        }
        C::RestoreNetwork => {
            absorb_network(p, s, false)?;
            let doc = p
                .get("restore_data")
                .ok_or_else(|| validate::missing("restore_data"))?;
            restore(s, vms, doc)?;
            Ok(Effects {
                dnsmasq: true,
                vm_data: true,
                lb: false,
            })
        }
        other => Err(ServicesError::Unsupported(format!(
            "{other} is not a guest-service command"
        ))),
    }
}

/// Network-level fields. Scope commands (`force`) overwrite; NIC commands
/// only fill in what is still unknown, because a NIC's `gateway` may be its
/// own subnet's.
fn absorb_network(p: &Payload, s: &mut GuestServices, force: bool) -> Result<(), ServicesError> {
    if let Some(ip) = validate::opt_ipv4(p, "extension_ip")? {
        s.extension_ip = Some(ip);
    }
    let gw = validate::opt_ipv4(p, "gateway")?;
    let cidr = opt_str(p, "cidr")?
        .map(|c| validate::cidr4("cidr", &c))
        .transpose()?;
    if let (Some(g), Some(c)) = (gw, cidr) {
        if !c.contains(&g) {
            return Err(invalid("gateway", format!("{g} is outside cidr {c}")));
        }
    }
    if force || s.gateway.is_none() {
        s.gateway = gw.or(s.gateway);
    }
    if force || s.cidr.is_none() {
        s.cidr = cidr.or(s.cidr);
    }
    if let Some(d) = opt_str(p, "dns")? {
        s.dns = validate::dns_list("dns", &d)?;
    }
    if let Some(d) = opt_str(p, "domain")? {
        s.domain = Some(validate::hostname("domain", &d, true)?);
    }
    Ok(())
}

fn parse_nic(p: &Payload) -> Result<Nic, ServicesError> {
    let mac = validate::mac("mac", &req_str(p, "mac")?)?;
    let ip = validate::ipv4("ip", &req_str(p, "ip")?)?;
    let ip6 = validate::opt_ipv6(p, "ip6_address")?;
    let hostname = opt_str(p, "hostname")?
        .map(|h| validate::hostname("hostname", &h, false))
        .transpose()?;
    let default_nic = validate::opt_bool(p, "default_nic")?.unwrap_or(true);
    let nic_id = opt_str(p, "nic_id")?
        .map(|i| validate::ident("nic_id", &i))
        .transpose()?;
    let gateway = validate::opt_ipv4(p, "gateway")?;
    Ok(Nic {
        mac,
        ip,
        ip6,
        hostname,
        default_nic,
        nic_id,
        gateway,
    })
}

fn nic_key(p: &Payload) -> Result<(Option<String>, Option<Ipv4Addr>), ServicesError> {
    let mac = opt_str(p, "mac")?
        .map(|m| validate::mac("mac", &m))
        .transpose()?;
    let ip = validate::opt_ipv4(p, "ip")?;
    if mac.is_none() && ip.is_none() {
        return Err(validate::missing("mac"));
    }
    Ok((mac, ip))
}

/// Removes the NIC named by MAC, else by IP. Exactly that one.
fn remove_nic(s: &mut GuestServices, mac: Option<&str>, ip: Option<Ipv4Addr>) -> Option<Arc<Nic>> {
    match (mac, ip) {
        (Some(m), _) => s.nics.remove(m),
        (None, Some(ip)) => {
            let key = s
                .nics
                .iter()
                .find(|(_, n)| n.ip == ip)
                .map(|(k, _)| k.clone())?;
            s.nics.remove(&key)
        }
        (None, None) => None,
    }
}

fn vm_ip(p: &Payload) -> Result<Ipv4Addr, ServicesError> {
    validate::ipv4("ip", &req_str(p, "ip")?)
}

/// Characters allowed in a DHCP option value: enough for names, addresses,
/// lists and URLs; nothing that ends a dnsmasq line or starts a comment.
fn option_value_ok(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 255
        && v.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'.' | b',' | b':' | b'-' | b'_' | b'/' | b'=' | b'+' | b'@'
                )
        })
}

/// `options`: a JSON string (or object) mapping option code → value.
fn parse_dhcp_options(v: Option<&Value>) -> Result<BTreeMap<u8, String>, ServicesError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(BTreeMap::new()),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
            .map_err(|_| invalid("options", "not a JSON object string"))?,
        Some(other) => other.clone(),
    };
    let map = obj
        .as_object()
        .ok_or_else(|| invalid("options", "expected a JSON object {\"code\":\"value\"}"))?;
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let field = format!("options.{}", netbridge_protocol::sanitize_for_message(k));
        let code: u8 = match k.trim().parse::<u8>() {
            Ok(c) if (1..=254).contains(&c) => c,
            _ => return Err(invalid(&field, "option code must be a number 1-254")),
        };
        let val = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(invalid(&field, "expected a string value")),
        };
        if !option_value_ok(&val) {
            return Err(invalid(
                &field,
                "value may hold only letters, digits and . , : - _ / = + @ (at most 255)",
            ));
        }
        out.insert(code, val);
    }
    Ok(out)
}

/// `apply-lb-rules`. Only an absent optional field takes its default
/// (`protocol` tcp, `algorithm` roundrobin, `revoke`/`revoked` false, a
/// backend's `port` = `privatePort`, no backends); a present field that is
/// `null`, empty, blank or malformed is refused with its path, in revoked
/// rules too, and nothing changes.
fn apply_lb_rules(s: &mut GuestServices, doc: &Value) -> Result<(), ServicesError> {
    let (doc, _) = validate::document("lb_rules", doc)?;
    let rules = doc
        .as_array()
        .ok_or_else(|| invalid("lb_rules", "expected an array of rules"))?;
    for (i, r) in rules.iter().enumerate() {
        let f = |n: &str| format!("lb_rules[{i}].{n}");
        let obj = r
            .as_object()
            .ok_or_else(|| invalid(&format!("lb_rules[{i}]"), "expected an object"))?;
        let get = |n: &str| rule_str(obj, n, &f(n));
        let req = |n: &str| get(n)?.ok_or_else(|| validate::missing(&f(n)));
        let id = validate::ident(&f("id"), &req("id")?)?;
        // The name is not used, but a present one must be a value.
        get("name")?;
        let revoke = get("revoke")?
            .map(|b| validate::boolean(&f("revoke"), &b))
            .transpose()?
            .unwrap_or(false);
        let public_ip = get("publicIp")?
            .map(|x| validate::ipv4(&f("publicIp"), &x))
            .transpose()?;
        let public_port = get("publicPort")?
            .map(|x| validate::port(&f("publicPort"), &x))
            .transpose()?;
        let private_port = get("privatePort")?
            .map(|x| validate::port(&f("privatePort"), &x))
            .transpose()?;
        let protocol = match get("protocol")?
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("tcp") => LbProtocol::Tcp,
            Some("tcp-proxy") => LbProtocol::TcpProxy,
            Some("udp") => LbProtocol::Udp,
            Some(_) => return Err(invalid(&f("protocol"), "expected tcp, tcp-proxy or udp")),
        };
        let algorithm = match get("algorithm")?
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("roundrobin") => LbAlgorithm::Roundrobin,
            Some("leastconn") => LbAlgorithm::Leastconn,
            Some("source") => LbAlgorithm::Source,
            Some(_) => {
                return Err(invalid(
                    &f("algorithm"),
                    "expected roundrobin, leastconn or source",
                ))
            }
        };
        let list = match obj.get("backends") {
            None => &[][..],
            Some(Value::Array(a)) => a.as_slice(),
            Some(Value::Null) => {
                return Err(invalid(
                    &f("backends"),
                    "null; omit the field to use its default",
                ))
            }
            Some(_) => return Err(invalid(&f("backends"), "expected an array")),
        };
        let mut backends = Vec::new();
        for (j, b) in list.iter().enumerate() {
            let bf = |n: &str| format!("lb_rules[{i}].backends[{j}].{n}");
            let bo = b.as_object().ok_or_else(|| {
                invalid(
                    &format!("lb_rules[{i}].backends[{j}]"),
                    "expected an object",
                )
            })?;
            let bget = |n: &str| rule_str(bo, n, &bf(n));
            let ip = validate::ipv4(
                &bf("ip"),
                &bget("ip")?.ok_or_else(|| validate::missing(&bf("ip")))?,
            )?;
            let port = match bget("port")? {
                Some(x) => Some(validate::port(&bf("port"), &x)?),
                None => private_port,
            };
            let revoked = bget("revoked")?
                .map(|x| validate::boolean(&bf("revoked"), &x))
                .transpose()?
                .unwrap_or(false);
            if revoke {
                continue;
            }
            let port = port.ok_or_else(|| validate::missing(&bf("port")))?;
            let be = Backend { ip, port };
            if !revoked && !backends.contains(&be) {
                backends.push(be);
            }
        }
        if revoke {
            s.lb_rules.remove(&id);
            continue;
        }
        let public_ip = public_ip.ok_or_else(|| validate::missing(&f("publicIp")))?;
        let public_port = public_port.ok_or_else(|| validate::missing(&f("publicPort")))?;
        if protocol.is_udp() && algorithm == LbAlgorithm::Leastconn {
            // nftables picks a backend per new flow; it keeps no count of
            // open UDP "connections" to pick the least loaded one from.
            return Err(ServicesError::Unsupported(format!(
                "{}: leastconn is not supported for udp rules (UDP load balancing supports {})",
                f("algorithm"),
                super::LB_UDP_ALGORITHMS.join(", ")
            )));
        }
        if let Some(other) = s.lb_rules.values().find(|o| {
            // A UDP and a TCP rule may share an address and port.
            o.id != id
                && o.public_ip == public_ip
                && o.public_port == public_port
                && o.protocol.is_udp() == protocol.is_udp()
        }) {
            return Err(invalid(
                &f("publicPort"),
                format!(
                    "{public_ip}:{public_port} is already used by rule {}",
                    other.id
                ),
            ));
        }
        s.lb_rules.insert(
            id.clone(),
            LbRule {
                id,
                public_ip,
                public_port,
                protocol,
                algorithm,
                backends,
            },
        );
    }
    Ok(())
}

/// Whether a VM's `vm_data` in `restore_data` is empty (`[]`, or its
/// JSON/Base64 string form). CloudStack 4.23 sends that for a VM whose data
/// it did not generate (the extension does not provide UserData, or
/// generating failed and was logged); a VM with data always gets its
/// meta-data files. So it never means "no data": the stored set is kept.
/// Any other value is left to `save_vm_data`, which names what is wrong.
fn no_vm_data(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.is_empty(),
        Value::String(_) => validate::document("vm_data", v)
            .is_ok_and(|(d, _)| d.as_array().is_some_and(Vec::is_empty)),
        _ => false,
    }
}

fn restore(s: &mut GuestServices, vms: &mut VmDataSet, doc: &Value) -> Result<(), ServicesError> {
    let (doc, form) = validate::document("restore_data", doc)?;
    // Older builds Base64-encode restore_data and every vm_data content
    // inside it.
    let outer = ContentEncoding::of(form);
    let obj = doc
        .as_object()
        .ok_or_else(|| invalid("restore_data", "expected an object"))?;
    let flag = |n: &str| -> Result<Option<bool>, ServicesError> {
        opt_str(obj, n)
            .map_err(|_| invalid(&format!("restore_data.{n}"), "expected a boolean"))?
            .map(|b| validate::boolean(&format!("restore_data.{n}"), &b))
            .transpose()
    };
    let dhcp = flag("dhcp_enabled")?;
    let dns = flag("dns_enabled")?;
    let userdata = flag("userdata_enabled")?.unwrap_or(true);
    let list = match obj.get("vms") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(invalid("restore_data.vms", "expected an array")),
    };
    let mut nics = BTreeMap::new();
    let mut records = BTreeMap::new();
    let mut next_vms = VmDataSet::new();
    for (i, vm) in list.iter().enumerate() {
        let pre = format!("restore_data.vms[{i}]");
        let o = vm
            .as_object()
            .ok_or_else(|| invalid(&pre, "expected an object"))?;
        let f = |n: &str| format!("{pre}.{n}");
        let ip = validate::ipv4(
            &f("ip"),
            &req_str(o, "ip").map_err(|_| validate::missing(&f("ip")))?,
        )?;
        let hostname = opt_str(o, "hostname")?
            .map(|h| validate::hostname(&f("hostname"), &h, false))
            .transpose()?;
        let ip6 = opt_str(o, "ip6_address")?
            .map(|x| validate::ipv6(&f("ip6_address"), &x))
            .transpose()?;
        if let Some(m) = opt_str(o, "mac")? {
            let mac = validate::mac(&f("mac"), &m)?;
            let default_nic = opt_str(o, "default_nic")?
                .map(|b| validate::boolean(&f("default_nic"), &b))
                .transpose()?
                .unwrap_or(true);
            // Keep what restore_data does not carry (nic_id, own gateway).
            let old = s.nics.get(&mac);
            let nic = Nic {
                mac: mac.clone(),
                ip,
                ip6,
                hostname: hostname.clone(),
                default_nic,
                nic_id: old.and_then(|n| n.nic_id.clone()),
                gateway: old.and_then(|n| n.gateway),
            };
            nics.insert(mac, Arc::new(nic));
        }
        if let Some(h) = hostname {
            records.insert(ip, Arc::new(DnsRecord { hostname: h, ip6 }));
        }
        // Start from the stored data so the pending password survives.
        let mut one = VmDataSet::new();
        if let Some(old) = vms.get(&ip) {
            one.insert(ip, old.clone());
        }
        if userdata {
            if let Some(d) = o.get("vm_data").filter(|d| !no_vm_data(d)) {
                vmdata::save_vm_data(&mut one, ip, d, outer).map_err(|e| match e {
                    ServicesError::Invalid(netbridge_protocol::ProtocolError::InvalidField {
                        field,
                        reason,
                    }) => invalid(&format!("{pre}.{field}"), reason),
                    other => other,
                })?;
            }
        }
        if let Some(d) = one.remove(&ip) {
            next_vms.insert(ip, d);
        }
    }
    s.nics = nics;
    s.dns_records = records;
    if let Some(d) = dhcp {
        s.dhcp_enabled = d;
    }
    if let Some(d) = dns {
        s.dns_enabled = d;
    }
    *vms = next_vms;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netbridge_protocol::ProtocolError;
    use serde_json::json;

    fn lb(rules: Value) -> Payload {
        json!({"network_id": "42", "lb_rules": rules})
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    fn rule() -> Value {
        json!({"id": "7", "name": "web", "publicIp": "203.0.113.10", "publicPort": "80",
               "privatePort": "8080", "protocol": "tcp", "algorithm": "source", "revoke": "false",
               "backends": [{"ip": "10.1.1.10", "port": "8080", "revoked": "false"},
                            {"ip": "10.1.1.11", "revoked": false}]})
    }

    fn run(state: &mut GuestServices, rules: Value) -> Result<Effects, ServicesError> {
        apply(
            Command::ApplyLbRules,
            &lb(rules),
            state,
            &mut VmDataSet::new(),
            &Options::default(),
        )
    }

    fn refused_field(e: ServicesError) -> String {
        match e {
            ServicesError::Invalid(ProtocolError::InvalidField { field, .. })
            | ServicesError::Invalid(ProtocolError::MissingField(field)) => field,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn every_lb_field_present_without_a_value_is_refused_and_changes_nothing() {
        let mut state = GuestServices::default();
        run(&mut state, json!([rule()])).unwrap();
        assert_eq!(state.lb_rules["7"].backends.len(), 2);
        assert_eq!(state.lb_rules["7"].backends[1].port, 8080);
        let before = state.clone();
        let second = |key: &str, bad: Value| {
            let mut r = rule();
            r["id"] = json!("8");
            r["publicPort"] = json!("81");
            if key != "id" {
                r[key] = bad;
            } else {
                r["id"] = bad;
            }
            json!([rule(), r])
        };
        let blank = [json!(""), json!("  "), Value::Null, json!({}), json!([1])];
        for (key, malformed) in [
            ("id", json!("../x")),
            ("name", json!("")),
            ("publicIp", json!("203.0.113")),
            ("publicPort", json!("0")),
            ("privatePort", json!("65536")),
            ("protocol", json!("sctp")),
            ("algorithm", json!("random")),
            ("revoke", json!("yes")),
        ] {
            for bad in blank.iter().cloned().chain([malformed]) {
                let e = run(&mut state, second(key, bad.clone())).unwrap_err();
                assert_eq!(
                    refused_field(e),
                    format!("lb_rules[1].{key}"),
                    "{key} = {bad}"
                );
                assert_eq!(state, before, "{key} = {bad}");
            }
        }
        for bad in [Value::Null, json!(""), json!({})] {
            let e = run(&mut state, second("backends", bad.clone())).unwrap_err();
            assert_eq!(refused_field(e), "lb_rules[1].backends", "backends = {bad}");
        }
        for (key, malformed) in [
            ("ip", json!("10.1.1")),
            ("port", json!("http")),
            ("revoked", json!("maybe")),
        ] {
            for bad in blank.iter().cloned().chain([malformed]) {
                let mut r = rule();
                r["backends"][1][key] = bad.clone();
                let e = run(&mut state, json!([r])).unwrap_err();
                assert_eq!(
                    refused_field(e),
                    format!("lb_rules[0].backends[1].{key}"),
                    "{key} = {bad}"
                );
                assert_eq!(state, before);
            }
        }
        // A revoke with a malformed field is refused too: the rule stays.
        let e = run(
            &mut state,
            json!([{"id": "7", "revoke": "true", "publicIp": ""}]),
        )
        .unwrap_err();
        assert_eq!(refused_field(e), "lb_rules[0].publicIp");
        assert_eq!(state, before);
        run(&mut state, json!([{"id": "7", "revoke": true}])).unwrap();
        assert!(state.lb_rules.is_empty());
    }

    #[test]
    fn absent_lb_fields_take_their_documented_defaults() {
        let mut state = GuestServices::default();
        run(
            &mut state,
            json!([{"id": "9", "publicIp": "203.0.113.10", "publicPort": 80, "privatePort": 8080,
                    "backends": [{"ip": "10.1.1.10"}]}]),
        )
        .unwrap();
        let r = &state.lb_rules["9"];
        assert_eq!(
            (r.protocol, r.algorithm),
            (LbProtocol::Tcp, LbAlgorithm::Roundrobin)
        );
        assert_eq!(
            r.backends,
            vec![Backend {
                ip: Ipv4Addr::new(10, 1, 1, 10),
                port: 8080
            }]
        );
        // A backend without its own port needs the rule's privatePort.
        let e = run(
            &mut state,
            json!([{"id": "10", "publicIp": "203.0.113.10", "publicPort": 81,
                    "backends": [{"ip": "10.1.1.10"}]}]),
        )
        .unwrap_err();
        assert_eq!(refused_field(e), "lb_rules[0].backends[0].port");
    }
}
