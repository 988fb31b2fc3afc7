//! Policy-based routing for `custom-action` `pbr-*`: route and rule specs
//! are parsed into typed parts and re-emitted as `ip` argument vectors; no
//! string from the caller reaches a program unparsed, and nothing runs a
//! shell.
//!
//! Routing tables are private to the namespace: the name ↔ id registry
//! ([`PbrTables`]) lives in the executor's per-namespace state (the engine
//! persists it with the network); `/etc/iproute2/rt_tables` is never read or
//! written and `ip` only ever sees numeric table ids.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{valid_ifname, VpcError};

/// Longest accepted parameter value.
pub const MAX_PARAM_LEN: usize = 256;
/// Most tables one namespace may hold.
pub const MAX_TABLES: usize = 256;

/// Checks a raw parameter before it is tokenized: bounded length, printable
/// ASCII only, and none of the characters a shell would interpret.
pub fn check_param(param: &str, value: &str) -> Result<(), VpcError> {
    if value.len() > MAX_PARAM_LEN {
        return Err(VpcError::invalid(
            param,
            format!("longer than {MAX_PARAM_LEN} characters"),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | ':' | '/' | '_' | '-')))
    {
        return Err(VpcError::invalid(
            param,
            format!("forbidden character '{}'", c.escape_default()),
        ));
    }
    Ok(())
}

/// A table reference: a registered name or numeric id.
fn table_id_in_range(id: u32) -> bool {
    // 0 unspec, 253 default, 254 main, 255 local belong to the kernel.
    (1..=252).contains(&id) || (256..=0x7fff_ffff).contains(&id)
}

/// The namespace's private routing tables (name → id), and the routes and
/// rules added through `pbr-*`, kept so they can be replayed when the
/// namespace is rebuilt (restart, host reboot, failover).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PbrTables {
    pub tables: BTreeMap<String, u32>,
    #[serde(default)]
    pub routes: Vec<StoredSpec>,
    #[serde(default)]
    pub rules: Vec<StoredSpec>,
}

/// A route or rule spec as accepted (normalized spacing) and its table id.
/// Re-parsed and re-validated before every replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSpec {
    pub table: u32,
    pub spec: String,
}

/// `value` with single spaces between tokens.
pub fn normalize_spec(value: &str) -> String {
    value
        .split(' ')
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl PbrTables {
    /// Registers a table. Re-creating the same name with the same id is a
    /// no-op (idempotent); clashing names or ids are refused.
    pub fn create(&mut self, id_param: &str, name_param: &str) -> Result<(u32, String), VpcError> {
        check_param("table-id", id_param)?;
        check_param("table-name", name_param)?;
        let id: u32 = id_param
            .trim()
            .parse()
            .ok()
            .filter(|id| table_id_in_range(*id))
            .ok_or_else(|| {
                VpcError::invalid(
                    "table-id",
                    "expected 1-252 or 256-2147483647 (253-255 and 0 are reserved)",
                )
            })?;
        let name = name_param.trim();
        if name.is_empty()
            || name.len() > 32
            || name.bytes().all(|b| b.is_ascii_digit())
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            || matches!(name, "main" | "local" | "default" | "unspec" | "all")
        {
            return Err(VpcError::invalid(
                "table-name",
                "expected 1-32 of [A-Za-z0-9._-], not all digits, not a reserved name",
            ));
        }
        if let Some(existing) = self.tables.get(name) {
            if *existing == id {
                return Ok((id, name.to_string()));
            }
            return Err(VpcError::invalid(
                "table-name",
                format!("table '{name}' already exists with id {existing}"),
            ));
        }
        if let Some((other, _)) = self.tables.iter().find(|(_, v)| **v == id) {
            return Err(VpcError::invalid(
                "table-id",
                format!("id {id} already used by table '{other}'"),
            ));
        }
        if self.tables.len() >= MAX_TABLES {
            return Err(VpcError::invalid("table-name", "too many tables"));
        }
        self.tables.insert(name.to_string(), id);
        Ok((id, name.to_string()))
    }

    /// Resolves a `table` parameter (name or id) to a registered table.
    pub fn resolve(&self, param: &str, value: &str) -> Result<(u32, String), VpcError> {
        check_param(param, value)?;
        let v = value.trim();
        if let Some(id) = self.tables.get(v) {
            return Ok((*id, v.to_string()));
        }
        if let Ok(id) = v.parse::<u32>() {
            if let Some((name, _)) = self.tables.iter().find(|(_, i)| **i == id) {
                return Ok((id, name.clone()));
            }
        }
        Err(VpcError::invalid(
            param,
            format!("no table '{v}' (create it with pbr-create-table)"),
        ))
    }

    /// Forgets a table; returns its id.
    pub fn remove(&mut self, name: &str) -> Option<u32> {
        let id = self.tables.remove(name)?;
        self.routes.retain(|r| r.table != id);
        self.rules.retain(|r| r.table != id);
        Some(id)
    }

    /// Records an added route (same canonical form = same route).
    pub fn record_route(&mut self, table: u32, spec: &str) {
        let canon = route_key(table, spec);
        if canon.is_some()
            && !self
                .routes
                .iter()
                .any(|r| route_key(r.table, &r.spec) == canon)
        {
            self.routes.push(StoredSpec {
                table,
                spec: normalize_spec(spec),
            });
        }
    }

    /// Forgets a deleted route.
    pub fn forget_route(&mut self, table: u32, spec: &str) {
        let canon = route_key(table, spec);
        self.routes.retain(|r| route_key(r.table, &r.spec) != canon);
    }

    /// Records an added rule.
    pub fn record_rule(&mut self, table: u32, spec: &str) {
        let canon = rule_key(table, spec);
        if canon.is_some()
            && !self
                .rules
                .iter()
                .any(|r| rule_key(r.table, &r.spec) == canon)
        {
            self.rules.push(StoredSpec {
                table,
                spec: normalize_spec(spec),
            });
        }
    }

    /// Forgets a deleted rule.
    pub fn forget_rule(&mut self, table: u32, spec: &str) {
        let canon = rule_key(table, spec);
        self.rules.retain(|r| rule_key(r.table, &r.spec) != canon);
    }

    /// The `ip` argument vectors (after `ip -n <ns>`) that re-add every
    /// recorded route and rule; entries that no longer parse are skipped.
    pub fn replay_args(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for r in &self.routes {
            if let Ok(spec) = RouteSpec::parse("route", &r.spec) {
                let mut a = vec![
                    spec.family_flag().to_string(),
                    "route".into(),
                    "replace".into(),
                ];
                a.extend(spec.to_args(r.table));
                out.push(a);
            }
        }
        for r in &self.rules {
            if let Ok(spec) = RuleSpec::parse("rule", &r.spec) {
                let mut a = vec![spec.family_flag().to_string(), "rule".into(), "add".into()];
                a.extend(spec.to_args(r.table));
                out.push(a);
            }
        }
        out
    }

    /// Name of a registered id.
    pub fn name_of(&self, id: u32) -> Option<&str> {
        self.tables
            .iter()
            .find(|(_, i)| **i == id)
            .map(|(n, _)| n.as_str())
    }
}

fn route_key(table: u32, spec: &str) -> Option<Vec<String>> {
    RouteSpec::parse("route", spec)
        .ok()
        .map(|r| r.to_args(table))
}

fn rule_key(table: u32, spec: &str) -> Option<Vec<String>> {
    RuleSpec::parse("rule", spec).ok().map(|r| r.to_args(table))
}

/// Route types other than unicast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteType {
    Unicast,
    Blackhole,
    Unreachable,
    Prohibit,
    Throw,
}

impl RouteType {
    fn as_str(self) -> &'static str {
        match self {
            RouteType::Unicast => "unicast",
            RouteType::Blackhole => "blackhole",
            RouteType::Unreachable => "unreachable",
            RouteType::Prohibit => "prohibit",
            RouteType::Throw => "throw",
        }
    }
}

/// A route destination: `default` (of a family) or a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    Default,
    Prefix(IpNet),
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dest::Default => f.write_str("default"),
            Dest::Prefix(p) => write!(f, "{p}"),
        }
    }
}

/// A parsed route spec (`pbr-add-route` / `pbr-delete-route` `route`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub kind: RouteType,
    pub dest: Dest,
    pub via: Option<IpAddr>,
    pub dev: Option<String>,
    pub src: Option<IpAddr>,
    pub metric: Option<u32>,
    pub mtu: Option<u32>,
    pub onlink: bool,
    /// Tables given inside the spec must agree with the `table` parameter.
    pub table: Option<String>,
    /// The spec as given, spacing normalized (kept for replay).
    pub source: String,
}

fn parse_prefix(param: &str, tok: &str) -> Result<IpNet, VpcError> {
    if let Ok(net) = tok.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(VpcError::invalid(
                param,
                format!("'{tok}' has host bits set"),
            ));
        }
        return Ok(net);
    }
    tok.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| VpcError::invalid(param, format!("'{tok}' is not an address or prefix")))
}

fn parse_addr(param: &str, key: &str, tok: Option<&str>) -> Result<IpAddr, VpcError> {
    let tok = tok.ok_or_else(|| VpcError::invalid(param, format!("'{key}' needs a value")))?;
    tok.parse::<IpAddr>()
        .map_err(|_| VpcError::invalid(param, format!("'{key} {tok}': not an address")))
}

fn parse_u32(param: &str, key: &str, tok: Option<&str>) -> Result<u32, VpcError> {
    let tok = tok.ok_or_else(|| VpcError::invalid(param, format!("'{key}' needs a value")))?;
    tok.parse::<u32>()
        .map_err(|_| VpcError::invalid(param, format!("'{key} {tok}': not a number")))
}

fn parse_dev(param: &str, key: &str, tok: Option<&str>) -> Result<String, VpcError> {
    let tok = tok.ok_or_else(|| VpcError::invalid(param, format!("'{key}' needs a value")))?;
    if !valid_ifname(tok) {
        return Err(VpcError::invalid(
            param,
            format!("'{key} {tok}': not an interface name"),
        ));
    }
    Ok(tok.to_string())
}

fn tokens<'a>(param: &str, value: &'a str) -> Result<Vec<&'a str>, VpcError> {
    check_param(param, value)?;
    let toks: Vec<&str> = value.split(' ').filter(|t| !t.is_empty()).collect();
    if toks.is_empty() {
        return Err(VpcError::Missing(param.to_string()));
    }
    Ok(toks)
}

impl RouteSpec {
    /// Parses `[blackhole|unreachable|prohibit|throw|unicast] <prefix|default>
    /// [via A] [dev IF] [src A] [metric N] [mtu N] [onlink] [table T]`.
    pub fn parse(param: &str, value: &str) -> Result<RouteSpec, VpcError> {
        let toks = tokens(param, value)?;
        let mut it = toks.into_iter().peekable();
        let mut kind = RouteType::Unicast;
        if let Some(first) = it.peek() {
            kind = match *first {
                "blackhole" => RouteType::Blackhole,
                "unreachable" => RouteType::Unreachable,
                "prohibit" => RouteType::Prohibit,
                "throw" => RouteType::Throw,
                "unicast" => RouteType::Unicast,
                _ => {
                    // No type keyword: the destination comes first.
                    RouteType::Unicast
                }
            };
            if matches!(
                *first,
                "blackhole" | "unreachable" | "prohibit" | "throw" | "unicast"
            ) {
                it.next();
            }
        }
        let dest_tok = it
            .next()
            .ok_or_else(|| VpcError::invalid(param, "no destination"))?;
        let dest = match dest_tok {
            "default" | "0.0.0.0/0" => Dest::Default,
            t => Dest::Prefix(parse_prefix(param, t)?),
        };
        let mut spec = RouteSpec {
            kind,
            dest,
            via: None,
            dev: None,
            src: None,
            metric: None,
            mtu: None,
            onlink: false,
            table: None,
            source: normalize_spec(value),
        };
        while let Some(key) = it.next() {
            let dup = |set: bool| {
                if set {
                    Err(VpcError::invalid(param, format!("'{key}' given twice")))
                } else {
                    Ok(())
                }
            };
            match key {
                "via" => {
                    dup(spec.via.is_some())?;
                    spec.via = Some(parse_addr(param, key, it.next())?);
                }
                "dev" | "oif" => {
                    dup(spec.dev.is_some())?;
                    spec.dev = Some(parse_dev(param, key, it.next())?);
                }
                "src" => {
                    dup(spec.src.is_some())?;
                    spec.src = Some(parse_addr(param, key, it.next())?);
                }
                "metric" | "preference" | "priority" => {
                    dup(spec.metric.is_some())?;
                    spec.metric = Some(parse_u32(param, key, it.next())?);
                }
                "mtu" => {
                    dup(spec.mtu.is_some())?;
                    let m = parse_u32(param, key, it.next())?;
                    if !(68..=65535).contains(&m) {
                        return Err(VpcError::invalid(param, "'mtu' must be 68-65535"));
                    }
                    spec.mtu = Some(m);
                }
                "onlink" => spec.onlink = true,
                "table" => {
                    dup(spec.table.is_some())?;
                    let t = it
                        .next()
                        .ok_or_else(|| VpcError::invalid(param, "'table' needs a value"))?;
                    spec.table = Some(t.to_string());
                }
                other => return Err(VpcError::invalid(param, format!("unknown token '{other}'"))),
            }
        }
        spec.check(param)?;
        Ok(spec)
    }

    fn check(&self, param: &str) -> Result<(), VpcError> {
        let fam = self.family();
        let mixed = |a: &Option<IpAddr>| a.map(|a| Some(a.is_ipv6()) != fam && fam.is_some());
        if mixed(&self.via) == Some(true) || mixed(&self.src) == Some(true) {
            return Err(VpcError::invalid(param, "mixes IPv4 and IPv6 addresses"));
        }
        if let (Some(v), Some(s)) = (self.via, self.src) {
            if v.is_ipv6() != s.is_ipv6() {
                return Err(VpcError::invalid(param, "mixes IPv4 and IPv6 addresses"));
            }
        }
        match self.kind {
            RouteType::Unicast => {
                if self.via.is_none() && self.dev.is_none() {
                    return Err(VpcError::invalid(
                        param,
                        "a unicast route needs 'via' or 'dev'",
                    ));
                }
            }
            _ => {
                if self.via.is_some() || self.dev.is_some() || self.onlink {
                    return Err(VpcError::invalid(
                        param,
                        format!(
                            "a {} route takes no 'via'/'dev'/'onlink'",
                            self.kind.as_str()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `Some(true)` for IPv6, `Some(false)` for IPv4, `None` when only
    /// `default` without addresses says nothing (treated as IPv4).
    pub fn family(&self) -> Option<bool> {
        match self.dest {
            Dest::Prefix(p) => Some(matches!(p, IpNet::V6(_))),
            Dest::Default => self.via.or(self.src).map(|a| a.is_ipv6()),
        }
    }

    /// `ip` arguments after `route add|del` (family flag handled by caller
    /// through [`RouteSpec::family_flag`]).
    pub fn to_args(&self, table_id: u32) -> Vec<String> {
        let mut a = Vec::new();
        if self.kind != RouteType::Unicast {
            a.push(self.kind.as_str().to_string());
        }
        a.push(self.dest.to_string());
        if let Some(v) = self.via {
            a.extend(["via".into(), v.to_string()]);
        }
        if let Some(d) = &self.dev {
            a.extend(["dev".into(), d.clone()]);
        }
        if let Some(s) = self.src {
            a.extend(["src".into(), s.to_string()]);
        }
        if let Some(m) = self.metric {
            a.extend(["metric".into(), m.to_string()]);
        }
        if let Some(m) = self.mtu {
            a.extend(["mtu".into(), m.to_string()]);
        }
        if self.onlink {
            a.push("onlink".into());
        }
        a.extend(["table".into(), table_id.to_string()]);
        a
    }

    /// `-6` or `-4`, so `default` routes land in the right family.
    pub fn family_flag(&self) -> &'static str {
        if self.family() == Some(true) {
            "-6"
        } else {
            "-4"
        }
    }
}

/// A selector address of a rule: `all` or a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    All,
    Prefix(IpNet),
}

/// A parsed rule spec (`pbr-add-rule` / `pbr-delete-rule` `rule`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleSpec {
    pub not: bool,
    pub from: Option<Selector>,
    pub to: Option<Selector>,
    pub fwmark: Option<(u32, Option<u32>)>,
    pub iif: Option<String>,
    pub oif: Option<String>,
    pub tos: Option<u8>,
    pub priority: Option<u32>,
    pub ipproto: Option<String>,
    pub sport: Option<(u16, u16)>,
    pub dport: Option<(u16, u16)>,
    /// Table named inside the spec (`table`/`lookup`); must agree with the
    /// `table` parameter.
    pub table: Option<String>,
    /// The spec as given, spacing normalized (kept for replay).
    pub source: String,
}

fn parse_num_u32(param: &str, key: &str, tok: &str) -> Result<u32, VpcError> {
    let parsed = if let Some(hex) = tok.strip_prefix("0x").or_else(|| tok.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else {
        tok.parse::<u32>().ok()
    };
    parsed.ok_or_else(|| VpcError::invalid(param, format!("'{key} {tok}': not a number")))
}

fn parse_port_range(param: &str, key: &str, tok: Option<&str>) -> Result<(u16, u16), VpcError> {
    let tok = tok.ok_or_else(|| VpcError::invalid(param, format!("'{key}' needs a value")))?;
    let bad = || VpcError::invalid(param, format!("'{key} {tok}': not a port or range"));
    let (a, b) = match tok.split_once('-') {
        Some((a, b)) => (a, b),
        None => (tok, tok),
    };
    let a: u16 = a.parse().map_err(|_| bad())?;
    let b: u16 = b.parse().map_err(|_| bad())?;
    if b < a {
        return Err(bad());
    }
    Ok((a, b))
}

impl RuleSpec {
    /// Parses `[not] [from P|all] [to P|all] [fwmark N[/M]] [iif IF] [oif IF]
    /// [tos N] [priority N] [ipproto tcp|udp|icmp|N] [sport N[-M]]
    /// [dport N[-M]] [table|lookup T]`.
    pub fn parse(param: &str, value: &str) -> Result<RuleSpec, VpcError> {
        let toks = tokens(param, value)?;
        let mut it = toks.into_iter();
        let mut r = RuleSpec {
            source: normalize_spec(value),
            ..RuleSpec::default()
        };
        while let Some(key) = it.next() {
            let dup = |set: bool| {
                if set {
                    Err(VpcError::invalid(param, format!("'{key}' given twice")))
                } else {
                    Ok(())
                }
            };
            let mut val = || {
                it.next()
                    .ok_or_else(|| VpcError::invalid(param, format!("'{key}' needs a value")))
            };
            match key {
                "not" => r.not = true,
                "from" | "to" => {
                    let v = val()?;
                    let sel = if v == "all" {
                        Selector::All
                    } else {
                        Selector::Prefix(parse_prefix(param, v)?)
                    };
                    let slot = if key == "from" {
                        &mut r.from
                    } else {
                        &mut r.to
                    };
                    dup(slot.is_some())?;
                    *slot = Some(sel);
                }
                "fwmark" => {
                    dup(r.fwmark.is_some())?;
                    let v = val()?;
                    let (m, mask) = match v.split_once('/') {
                        Some((m, mask)) => (m, Some(parse_num_u32(param, key, mask)?)),
                        None => (v, None),
                    };
                    r.fwmark = Some((parse_num_u32(param, key, m)?, mask));
                }
                "iif" | "dev" => {
                    dup(r.iif.is_some())?;
                    r.iif = Some(parse_dev(param, key, Some(val()?))?);
                }
                "oif" => {
                    dup(r.oif.is_some())?;
                    r.oif = Some(parse_dev(param, key, Some(val()?))?);
                }
                "tos" | "dsfield" => {
                    dup(r.tos.is_some())?;
                    let v = parse_num_u32(param, key, val()?)?;
                    r.tos = Some(
                        u8::try_from(v)
                            .map_err(|_| VpcError::invalid(param, "'tos' must be 0-255"))?,
                    );
                }
                "priority" | "pref" | "preference" | "order" => {
                    dup(r.priority.is_some())?;
                    let p = parse_num_u32(param, key, val()?)?;
                    // 0 and 32766/32767 hold the kernel's local/main/default rules.
                    if p == 0 || p >= 32766 {
                        return Err(VpcError::invalid(param, "'priority' must be 1-32765"));
                    }
                    r.priority = Some(p);
                }
                "ipproto" => {
                    dup(r.ipproto.is_some())?;
                    let v = val()?;
                    let ok = matches!(v, "tcp" | "udp" | "icmp" | "ipv6-icmp")
                        || v.parse::<u8>().is_ok();
                    if !ok {
                        return Err(VpcError::invalid(
                            param,
                            format!("'ipproto {v}': expected tcp, udp, icmp or a number"),
                        ));
                    }
                    r.ipproto = Some(v.to_string());
                }
                "sport" => {
                    dup(r.sport.is_some())?;
                    r.sport = Some(parse_port_range(param, key, Some(val()?))?);
                }
                "dport" => {
                    dup(r.dport.is_some())?;
                    r.dport = Some(parse_port_range(param, key, Some(val()?))?);
                }
                "table" | "lookup" => {
                    dup(r.table.is_some())?;
                    r.table = Some(val()?.to_string());
                }
                other => return Err(VpcError::invalid(param, format!("unknown token '{other}'"))),
            }
        }
        if (r.sport.is_some() || r.dport.is_some())
            && !matches!(r.ipproto.as_deref(), Some("tcp" | "udp"))
        {
            return Err(VpcError::invalid(
                param,
                "'sport'/'dport' need 'ipproto tcp' or 'ipproto udp'",
            ));
        }
        let fam = r.family_opt();
        if fam == Some(None) {
            return Err(VpcError::invalid(param, "mixes IPv4 and IPv6 prefixes"));
        }
        Ok(r)
    }

    /// Some(Some(v6)) when prefixes agree, Some(None) on a mix, None without prefixes.
    fn family_opt(&self) -> Option<Option<bool>> {
        let fams: Vec<bool> = [self.from, self.to]
            .into_iter()
            .flatten()
            .filter_map(|s| match s {
                Selector::Prefix(p) => Some(matches!(p, IpNet::V6(_))),
                Selector::All => None,
            })
            .collect();
        match fams.as_slice() {
            [] => None,
            [a] => Some(Some(*a)),
            [a, b] if a == b => Some(Some(*a)),
            _ => Some(None),
        }
    }

    /// `-6` when the rule's prefixes are IPv6, else `-4`.
    pub fn family_flag(&self) -> &'static str {
        if self.family_opt() == Some(Some(true)) {
            "-6"
        } else {
            "-4"
        }
    }

    /// `ip` arguments after `rule add|del`.
    pub fn to_args(&self, table_id: u32) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        if self.not {
            a.push("not".into());
        }
        for (key, sel) in [("from", self.from), ("to", self.to)] {
            match sel {
                Some(Selector::All) => a.extend([key.into(), "all".into()]),
                Some(Selector::Prefix(p)) => a.extend([key.into(), p.to_string()]),
                None => {}
            }
        }
        if let Some((m, mask)) = self.fwmark {
            a.push("fwmark".into());
            a.push(match mask {
                Some(mask) => format!("{m:#x}/{mask:#x}"),
                None => format!("{m:#x}"),
            });
        }
        if let Some(i) = &self.iif {
            a.extend(["iif".into(), i.clone()]);
        }
        if let Some(o) = &self.oif {
            a.extend(["oif".into(), o.clone()]);
        }
        if let Some(t) = self.tos {
            a.extend(["tos".into(), format!("{t:#x}")]);
        }
        if let Some(p) = &self.ipproto {
            a.extend(["ipproto".into(), p.clone()]);
        }
        for (key, range) in [("sport", self.sport), ("dport", self.dport)] {
            match range {
                Some((s, e)) if s == e => a.extend([key.into(), s.to_string()]),
                Some((s, e)) => a.extend([key.into(), format!("{s}-{e}")]),
                None => {}
            }
        }
        if let Some(p) = self.priority {
            a.extend(["priority".into(), p.to_string()]);
        }
        a.extend(["table".into(), table_id.to_string()]);
        a
    }
}

/// Resolves the table of a route/rule: the `table` parameter and the spec's
/// own `table` must name the same registered table when both are given.
pub fn resolve_table(
    tables: &PbrTables,
    param_table: Option<&str>,
    spec_table: Option<&str>,
    spec_param: &str,
) -> Result<(u32, String), VpcError> {
    match (param_table, spec_table) {
        (None, None) => Err(VpcError::Missing("table".into())),
        (Some(p), None) => tables.resolve("table", p),
        (None, Some(s)) => tables.resolve(spec_param, s),
        (Some(p), Some(s)) => {
            let a = tables.resolve("table", p)?;
            let b = tables.resolve(spec_param, s)?;
            if a.0 != b.0 {
                return Err(VpcError::invalid(
                    spec_param,
                    format!("names table '{}' but 'table' is '{}'", b.1, a.1),
                ));
            }
            Ok(a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> PbrTables {
        let mut t = PbrTables::default();
        t.create("100", "isp2").unwrap();
        t
    }

    #[test]
    fn route_specs_are_parsed_and_re_emitted() {
        let cases: &[(&str, &[&str], &str)] = &[
            (
                "blackhole 10.8.0.0/16",
                &["blackhole", "10.8.0.0/16", "table", "100"],
                "-4",
            ),
            (
                "default via 198.51.100.1 dev eth1 metric 10",
                &[
                    "default",
                    "via",
                    "198.51.100.1",
                    "dev",
                    "eth1",
                    "metric",
                    "10",
                    "table",
                    "100",
                ],
                "-4",
            ),
            (
                "  10.1.0.0/24   dev  vpc-l1 src 10.1.0.1 mtu 1400 onlink ",
                &[
                    "10.1.0.0/24",
                    "dev",
                    "vpc-l1",
                    "src",
                    "10.1.0.1",
                    "mtu",
                    "1400",
                    "onlink",
                    "table",
                    "100",
                ],
                "-4",
            ),
            (
                "unreachable 192.0.2.7",
                &["unreachable", "192.0.2.7/32", "table", "100"],
                "-4",
            ),
            (
                "prohibit 2001:db8::/48",
                &["prohibit", "2001:db8::/48", "table", "100"],
                "-6",
            ),
            (
                "default via fe80::1 dev eth0",
                &["default", "via", "fe80::1", "dev", "eth0", "table", "100"],
                "-6",
            ),
            (
                "throw 10.0.0.0/8 table isp2",
                &["throw", "10.0.0.0/8", "table", "100"],
                "-4",
            ),
        ];
        for (spec, args, fam) in cases {
            let r = RouteSpec::parse("route", spec).unwrap();
            assert_eq!(
                r.to_args(100),
                args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{spec}"
            );
            assert_eq!(r.family_flag(), *fam, "{spec}");
        }
    }

    #[test]
    fn rule_specs_are_parsed_and_re_emitted() {
        let cases: &[(&str, &[&str], &str)] = &[
            (
                "from 10.1.0.0/24",
                &["from", "10.1.0.0/24", "table", "100"],
                "-4",
            ),
            (
                "from all to 192.0.2.0/24 iif vpc-l1 priority 100",
                &[
                    "from",
                    "all",
                    "to",
                    "192.0.2.0/24",
                    "iif",
                    "vpc-l1",
                    "priority",
                    "100",
                    "table",
                    "100",
                ],
                "-4",
            ),
            (
                "fwmark 0x10/0xff lookup isp2",
                &["fwmark", "0x10/0xff", "table", "100"],
                "-4",
            ),
            ("fwmark 16", &["fwmark", "0x10", "table", "100"], "-4"),
            (
                "not from 2001:db8::/64 oif eth1 tos 0x10",
                &[
                    "not",
                    "from",
                    "2001:db8::/64",
                    "oif",
                    "eth1",
                    "tos",
                    "0x10",
                    "table",
                    "100",
                ],
                "-6",
            ),
            (
                "ipproto tcp dport 80-90 sport 1024 pref 7",
                &[
                    "ipproto", "tcp", "sport", "1024", "dport", "80-90", "priority", "7", "table",
                    "100",
                ],
                "-4",
            ),
        ];
        for (spec, args, fam) in cases {
            let r = RuleSpec::parse("rule", spec).unwrap();
            assert_eq!(
                r.to_args(100),
                args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{spec}"
            );
            assert_eq!(r.family_flag(), *fam, "{spec}");
        }
    }

    #[test]
    fn injection_and_garbage_are_refused_naming_the_parameter() {
        let long = format!("10.0.0.0/8 dev {}", "a".repeat(300));
        let cases: Vec<(&str, String)> = vec![
            (
                "blackhole 10.0.0.0/8; reboot",
                "invalid value for 'route': forbidden character ';'".into(),
            ),
            (
                "blackhole $(reboot)",
                "invalid value for 'route': forbidden character '$'".into(),
            ),
            (
                "blackhole `id`",
                "invalid value for 'route': forbidden character '`'".into(),
            ),
            (
                "blackhole 10.0.0.0/8\nreboot",
                "invalid value for 'route': forbidden character '\\n'".into(),
            ),
            (
                "blackhole 10.0.0.0/8 | nc",
                "invalid value for 'route': forbidden character '|'".into(),
            ),
            (
                "blackhole 10.0.0.0/8 && x",
                "invalid value for 'route': forbidden character '&'".into(),
            ),
            (
                long.as_str(),
                "invalid value for 'route': longer than 256 characters".into(),
            ),
            (
                "10.0.0.0/8 via 1.2.3.4 frobnicate",
                "invalid value for 'route': unknown token 'frobnicate'".into(),
            ),
            (
                "10.0.0.0/8",
                "invalid value for 'route': a unicast route needs 'via' or 'dev'".into(),
            ),
            (
                "blackhole 10.0.0.0/8 via 1.2.3.4",
                "invalid value for 'route': a blackhole route takes no 'via'/'dev'/'onlink'".into(),
            ),
            (
                "10.0.0.1/8 dev eth0",
                "invalid value for 'route': '10.0.0.1/8' has host bits set".into(),
            ),
            (
                "10.0.0.0/8 via fe80::1",
                "invalid value for 'route': mixes IPv4 and IPv6 addresses".into(),
            ),
            (
                "10.0.0.0/8 dev -..-verylongname0",
                "invalid value for 'route': 'dev -..-verylongname0': not an interface name".into(),
            ),
            (
                "10.0.0.0/8 dev ..",
                "invalid value for 'route': 'dev ..': not an interface name".into(),
            ),
            (
                "10.0.0.0/8 via",
                "invalid value for 'route': 'via' needs a value".into(),
            ),
            (
                "10.0.0.0/8 metric x dev e",
                "invalid value for 'route': 'metric x': not a number".into(),
            ),
            ("", "missing required field 'route'".into()),
        ];
        for (spec, want) in cases {
            assert_eq!(
                RouteSpec::parse("route", spec).unwrap_err().to_string(),
                want,
                "{spec:?}"
            );
        }
        let rule_cases = [
            (
                "from 10.0.0.0/8 ; ip link del eth0",
                "invalid value for 'rule': forbidden character ';'",
            ),
            (
                "from $(x)",
                "invalid value for 'rule': forbidden character '$'",
            ),
            (
                "from 10.0.0.0/8 goto 5",
                "invalid value for 'rule': unknown token 'goto'",
            ),
            (
                "priority 0",
                "invalid value for 'rule': 'priority' must be 1-32765",
            ),
            (
                "priority 32766",
                "invalid value for 'rule': 'priority' must be 1-32765",
            ),
            (
                "dport 80",
                "invalid value for 'rule': 'sport'/'dport' need 'ipproto tcp' or 'ipproto udp'",
            ),
            (
                "from 10.0.0.0/8 to 2001:db8::/32",
                "invalid value for 'rule': mixes IPv4 and IPv6 prefixes",
            ),
            (
                "from 10.0.0.0/8 from 10.1.0.0/16",
                "invalid value for 'rule': 'from' given twice",
            ),
            (
                "iif ../../x",
                "invalid value for 'rule': 'iif ../../x': not an interface name",
            ),
        ];
        for (spec, want) in rule_cases {
            assert_eq!(
                RuleSpec::parse("rule", spec).unwrap_err().to_string(),
                want,
                "{spec:?}"
            );
        }
    }

    #[test]
    fn tables_are_validated_and_resolved() {
        let mut t = tables();
        assert_eq!(t.create("100", "isp2").unwrap(), (100, "isp2".into()));
        assert_eq!(
            t.create("101", "isp2").unwrap_err().to_string(),
            "invalid value for 'table-name': table 'isp2' already exists with id 100"
        );
        assert_eq!(
            t.create("100", "other").unwrap_err().to_string(),
            "invalid value for 'table-id': id 100 already used by table 'isp2'"
        );
        for bad in ["0", "253", "254", "255", "-1", "abc", "4294967295"] {
            assert!(t.create(bad, "x").is_err(), "{bad}");
        }
        for bad in ["main", "123", "a b", "x;y", ""] {
            assert!(t.create("7", bad).is_err(), "{bad}");
        }
        assert_eq!(t.resolve("table", "isp2").unwrap(), (100, "isp2".into()));
        assert_eq!(t.resolve("table", "100").unwrap(), (100, "isp2".into()));
        assert_eq!(
            t.resolve("table", "nope").unwrap_err().to_string(),
            "invalid value for 'table': no table 'nope' (create it with pbr-create-table)"
        );
        assert_eq!(
            resolve_table(&t, Some("isp2"), Some("100"), "rule").unwrap(),
            (100, "isp2".into())
        );
        t.create("7", "other").unwrap();
        assert_eq!(
            resolve_table(&t, Some("isp2"), Some("other"), "rule")
                .unwrap_err()
                .to_string(),
            "invalid value for 'rule': names table 'other' but 'table' is 'isp2'"
        );
        assert_eq!(t.remove("other"), Some(7));
        assert_eq!(t.name_of(100), Some("isp2"));
    }

    #[test]
    fn routes_and_rules_are_recorded_for_replay_and_forgotten() {
        let mut t = tables();
        t.record_route(100, "blackhole   10.8.0.0/16");
        t.record_route(100, "blackhole 10.8.0.0/16 table isp2");
        t.record_rule(100, "from 10.1.0.0/24 priority 5");
        assert_eq!(
            t.routes,
            vec![StoredSpec {
                table: 100,
                spec: "blackhole 10.8.0.0/16".into()
            }]
        );
        assert_eq!(
            t.replay_args(),
            vec![
                vec![
                    "-4",
                    "route",
                    "replace",
                    "blackhole",
                    "10.8.0.0/16",
                    "table",
                    "100"
                ],
                vec![
                    "-4",
                    "rule",
                    "add",
                    "from",
                    "10.1.0.0/24",
                    "priority",
                    "5",
                    "table",
                    "100"
                ],
            ]
        );
        t.forget_route(100, "blackhole 10.8.0.0/16");
        assert!(t.routes.is_empty());
        t.record_route(100, "unreachable 10.9.0.0/16");
        assert_eq!(t.remove("isp2"), Some(100));
        assert!(t.routes.is_empty() && t.rules.is_empty());
        // Older state files without routes/rules still load.
        let old: PbrTables = serde_json::from_str(r#"{"tables":{"a":7}}"#).unwrap();
        assert_eq!(old.tables["a"], 7);
    }
}
