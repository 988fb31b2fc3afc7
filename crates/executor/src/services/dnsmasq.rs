//! dnsmasq configuration for one network (pure rendering).
//!
//! Layout of the network's directory `dir`:
//! - `dnsmasq.conf`: the main configuration. Changing it needs a restart
//!   (dnsmasq reads it once).
//! - `hosts` (`addn-hosts`): the `data-server` name. `dhcp-hosts`
//!   (`dhcp-hostsfile`): static leases. dnsmasq re-reads these on SIGHUP,
//!   so adding or removing an ordinary VM never restarts it.
//! - `hosts.d/` (`hostsdir`): the DNS records, in shards of
//!   [`SHARD_SIZE`] consecutive addresses, one file per shard named by its
//!   first address. dnsmasq watches the directory (inotify): a new,
//!   replaced or deleted file takes effect without SIGHUP, and its old
//!   records are dropped. So a record change rewrites one small file,
//!   whatever the number of records. The file is renamed into place before
//!   the command returns; dnsmasq handles the queued inotify event before
//!   the DNS queries of the same poll round, so a query sent after the
//!   command returned sees the change.
//! - `leases`, `dnsmasq.pid`, `dnsmasq.log`: this network's own files.
//!
//! dnsmasq 2.86-2.90 crashes (SIGSEGV) on SIGHUP when a `dhcp-hostsfile`
//! line carries `set:<tag>` and a lease exists (tags are freed from the
//! wrong place on reload). So the reloadable files never carry tags: the
//! network's gateway is the untagged router option, and only NICs that
//! differ (non-default: no router at all; own gateway; extra options from
//! `set-dhcp-options`) get a per-MAC tag `m<mac-hex>` via `dhcp-mac` in the
//! main configuration. Changing such a NIC restarts dnsmasq.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::model::{GuestServices, Nic};
use super::ServicesError;

/// The name that resolves to `extension_ip` (CloudStack guests look it up).
pub const DATA_SERVER: &str = "data-server";

/// Files of one network's dnsmasq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsmasqPaths {
    pub dir: PathBuf,
}

impl DnsmasqPaths {
    /// `dir` ends up inside the configuration file: it must be absolute and
    /// free of whitespace and control characters.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, ServicesError> {
        let dir = dir.into();
        let ok = dir.is_absolute()
            && dir.to_str().is_some_and(|s| {
                !s.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '#')
            });
        if !ok {
            return Err(ServicesError::Process(format!(
                "dnsmasq directory {} must be an absolute path without spaces",
                dir.display()
            )));
        }
        Ok(DnsmasqPaths { dir })
    }
    pub fn conf(&self) -> PathBuf {
        self.dir.join("dnsmasq.conf")
    }
    pub fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }
    /// The DNS record shards (`hostsdir`).
    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.join("hosts.d")
    }
    pub fn dhcp_hosts(&self) -> PathBuf {
        self.dir.join("dhcp-hosts")
    }
    pub fn leases(&self) -> PathBuf {
        self.dir.join("leases")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("dnsmasq.pid")
    }
    /// Argument vector (after the program name) for the supervisor.
    pub fn argv(&self) -> Vec<OsString> {
        let mut conf = OsString::from("--conf-file=");
        conf.push(self.conf());
        vec!["--keep-in-foreground".into(), conf]
    }
}

/// Rendered contents of the three files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsmasqFiles {
    pub conf: String,
    pub hosts: String,
    pub dhcp_hosts: String,
}

impl DnsmasqFiles {
    /// (path, content) pairs, main configuration last so a reader never
    /// sees a new main file pointing at old hosts files.
    pub fn files<'a>(&'a self, paths: &DnsmasqPaths) -> [(PathBuf, &'a str); 3] {
        [
            (paths.hosts(), self.hosts.as_str()),
            (paths.dhcp_hosts(), self.dhcp_hosts.as_str()),
            (paths.conf(), self.conf.as_str()),
        ]
    }
}

/// What to do with the running dnsmasq after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsmasqAction {
    Nothing,
    Start,
    Stop,
    /// Main configuration changed: stop and start (SIGHUP would not re-read it).
    Restart,
    /// Only hosts/options files changed: SIGHUP.
    Hup,
}

/// Decides between nothing, start, stop, restart and SIGHUP.
pub fn plan_change(old: Option<&DnsmasqFiles>, new: Option<&DnsmasqFiles>) -> DnsmasqAction {
    match (old, new) {
        (None, None) => DnsmasqAction::Nothing,
        (None, Some(_)) => DnsmasqAction::Start,
        (Some(_), None) => DnsmasqAction::Stop,
        (Some(o), Some(n)) if o.conf != n.conf => DnsmasqAction::Restart,
        (Some(o), Some(n)) if o != n => DnsmasqAction::Hup,
        _ => DnsmasqAction::Nothing,
    }
}

/// Tag of a NIC that needs its own options: `m` + the MAC's 12 hex digits.
pub fn nic_tag(nic: &Nic) -> String {
    let mut t = String::with_capacity(13);
    t.push('m');
    t.extend(nic.mac.chars().filter(|c| *c != ':'));
    t
}

/// Renders the network's dnsmasq files; `None` when no dnsmasq should run
/// (neither DHCP nor DNS enabled, or no listen address known).
pub fn render(s: &GuestServices, paths: &DnsmasqPaths) -> Option<DnsmasqFiles> {
    if !s.needs_dnsmasq() {
        return None;
    }
    let ext = s.listen_ip()?;
    let dir = paths.dir.to_string_lossy();
    let mut c = String::with_capacity(1024);
    c.push_str("# generated by netbridge for this network only; do not edit\n");
    // Only this network's address, never the host's resolv.conf or /etc/hosts.
    let _ = writeln!(c, "listen-address={ext}");
    // Log to stderr (the supervisor's log file), without a line per lease.
    c.push_str("bind-interfaces\nno-hosts\nno-resolv\nlog-facility=-\nquiet-dhcp\n");
    // No pid file of its own (dnsmasq would write it 0644 under its own
    // umask): the supervisor records the PID, 0600.
    c.push_str("pid-file=\n");
    let _ = writeln!(c, "dhcp-leasefile={dir}/leases");
    let _ = writeln!(c, "addn-hosts={dir}/hosts");
    let _ = writeln!(c, "dhcp-hostsfile={dir}/dhcp-hosts");
    let _ = writeln!(c, "hostsdir={dir}/hosts.d");
    if s.dns_enabled {
        c.push_str("port=53\n");
        for d in &s.dns {
            let _ = writeln!(c, "server={d}");
        }
        if let Some(dom) = &s.domain {
            // Names of this domain are answered here, never forwarded.
            let _ = writeln!(c, "local=/{dom}/");
        }
    } else {
        c.push_str("port=0\n");
    }
    if let Some(dom) = &s.domain {
        let _ = writeln!(c, "domain={dom}");
    }
    if s.dhcp_enabled {
        if let Some(net) = s.cidr {
            let _ = writeln!(
                c,
                "dhcp-range={},static,{},infinite",
                net.network(),
                net.netmask()
            );
        }
        c.push_str("dhcp-authoritative\n");
        // Without an explicit (possibly empty) router option dnsmasq would
        // announce itself as the router.
        match s.gateway {
            Some(gw) => {
                let _ = writeln!(c, "dhcp-option=option:router,{gw}");
            }
            None => c.push_str("dhcp-option=option:router\n"),
        }
        let mut servers: Vec<String> = Vec::new();
        if s.dns_enabled {
            servers.push(ext.to_string());
        }
        servers.extend(s.dns.iter().filter(|d| d.is_ipv4()).map(|d| d.to_string()));
        if servers.is_empty() {
            c.push_str("dhcp-option=option:dns-server\n");
        } else {
            let _ = writeln!(c, "dhcp-option=option:dns-server,{}", servers.join(","));
        }
        if let Some(dom) = &s.domain {
            let _ = writeln!(c, "dhcp-option=option:domain-name,{dom}");
            let _ = writeln!(c, "dhcp-option=option:domain-search,{dom}");
        }
        // NICs that differ from the network default (see module docs).
        for nic in s.nics.values() {
            let extra = nic.nic_id.as_ref().and_then(|id| s.nic_options.get(id));
            let own_gw = nic.gateway.filter(|g| Some(*g) != s.gateway);
            if nic.default_nic && own_gw.is_none() && extra.is_none() {
                continue;
            }
            let tag = nic_tag(nic);
            let _ = writeln!(c, "dhcp-mac=set:{tag},{}", nic.mac);
            if !nic.default_nic {
                let _ = writeln!(c, "dhcp-option=tag:{tag},option:router");
            } else if let Some(gw) = own_gw {
                let _ = writeln!(c, "dhcp-option=tag:{tag},option:router,{gw}");
            }
            for (code, val) in extra.into_iter().flatten() {
                let _ = writeln!(c, "dhcp-option=tag:{tag},{code},{val}");
            }
        }
    }

    // The records live in `hosts.d` (see [`render_shard`]).
    let mut hosts = String::with_capacity(64);
    let _ = write!(hosts, "{ext} ");
    push_names(&mut hosts, DATA_SERVER, s.domain.as_deref());

    let mut dh = String::with_capacity(s.nics.len() * 48);
    for nic in s.nics.values() {
        match &nic.hostname {
            Some(h) => {
                let _ = writeln!(dh, "{},{},{h},infinite", nic.mac, nic.ip);
            }
            None => {
                let _ = writeln!(dh, "{},{},infinite", nic.mac, nic.ip);
            }
        }
    }
    Some(DnsmasqFiles {
        conf: c,
        hosts,
        dhcp_hosts: dh,
    })
}

/// Addresses per record shard file (a power of two).
pub const SHARD_SIZE: u32 = 16;

/// The shard (its first address) holding the record of `ip`.
pub fn shard_of(ip: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip) & !(SHARD_SIZE - 1))
}

/// `name` and, with a domain, `name.domain`, then a newline.
fn push_names(out: &mut String, name: &str, domain: Option<&str>) {
    out.push_str(name);
    if let Some(d) = domain {
        out.push(' ');
        out.push_str(name);
        out.push('.');
        out.push_str(d);
    }
    out.push('\n');
}

/// The hosts lines of the records in `shard` (empty: no file).
pub fn render_shard(s: &GuestServices, shard: Ipv4Addr) -> String {
    let first = shard_of(shard);
    let last = Ipv4Addr::from(u32::from(first) | (SHARD_SIZE - 1));
    let domain = s.domain.as_deref();
    let mut out = String::new();
    for (ip, r) in s.dns_records.range(first..=last) {
        push_ipv4(&mut out, *ip);
        out.push(' ');
        push_names(&mut out, &r.hostname, domain);
        if let Some(v6) = r.ip6 {
            let _ = write!(out, "{v6} ");
            push_names(&mut out, &r.hostname, domain);
        }
    }
    out
}

/// Every non-empty shard of the network.
pub fn all_shards(s: &GuestServices) -> BTreeSet<Ipv4Addr> {
    s.dns_records.keys().map(|ip| shard_of(*ip)).collect()
}

/// Every shard rendered (a full rewrite; also what a reader of the
/// directory should find).
pub fn render_records(s: &GuestServices) -> BTreeMap<Ipv4Addr, String> {
    all_shards(s)
        .into_iter()
        .map(|sh| (sh, render_shard(s, sh)))
        .collect()
}

/// The shards whose content differs between `old` and `new`, or `None`
/// when every shard must be rewritten (the domain, part of every line,
/// changed). One walk over both record maps, comparing only.
pub fn changed_shards(old: &GuestServices, new: &GuestServices) -> Option<BTreeSet<Ipv4Addr>> {
    if old.domain != new.domain {
        return None;
    }
    let mut out = BTreeSet::new();
    let mut o = old.dns_records.iter().peekable();
    let mut n = new.dns_records.iter().peekable();
    loop {
        let ip = match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some((oi, _)), None) => {
                let ip = **oi;
                o.next();
                ip
            }
            (None, Some((ni, _))) => {
                let ip = **ni;
                n.next();
                ip
            }
            (Some((oi, ov)), Some((ni, nv))) => {
                let (oi, ni) = (**oi, **ni);
                if oi < ni {
                    o.next();
                    oi
                } else if ni < oi {
                    n.next();
                    ni
                } else {
                    let same = ov == nv;
                    o.next();
                    n.next();
                    if same {
                        continue;
                    }
                    oi
                }
            }
        };
        out.insert(shard_of(ip));
    }
    Some(out)
}

/// Dotted quad, as `Display` writes it, without the formatting machinery.
fn push_ipv4(out: &mut String, ip: std::net::Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + (octet / 10) % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

/// Convenience for callers that keep only the directory.
pub fn paths_in(dir: &Path) -> Result<DnsmasqPaths, ServicesError> {
    DnsmasqPaths::new(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_written_as_display_does() {
        for ip in [
            "0.0.0.0",
            "10.1.1.5",
            "255.255.255.255",
            "192.0.2.100",
            "9.99.100.209",
        ] {
            let ip: Ipv4Addr = ip.parse().unwrap();
            let mut s = String::new();
            push_ipv4(&mut s, ip);
            assert_eq!(s, ip.to_string());
        }
    }

    fn records(pairs: &[(&str, &str)]) -> GuestServices {
        let mut g = GuestServices {
            domain: Some("cs.test".into()),
            ..Default::default()
        };
        for (ip, name) in pairs {
            g.dns_records.insert(
                ip.parse().unwrap(),
                std::sync::Arc::new(super::super::model::DnsRecord {
                    hostname: (*name).into(),
                    ip6: None,
                }),
            );
        }
        g
    }

    #[test]
    fn shards_hold_sixteen_consecutive_addresses() {
        let g = records(&[("10.1.1.15", "a"), ("10.1.1.16", "b"), ("10.1.1.31", "c")]);
        let shards: Vec<String> = all_shards(&g).iter().map(|s| s.to_string()).collect();
        assert_eq!(shards, ["10.1.1.0", "10.1.1.16"]);
        assert_eq!(
            render_shard(&g, "10.1.1.0".parse().unwrap()),
            "10.1.1.15 a a.cs.test\n"
        );
        assert_eq!(
            render_shard(&g, "10.1.1.20".parse().unwrap()),
            "10.1.1.16 b b.cs.test\n10.1.1.31 c c.cs.test\n"
        );
        assert_eq!(render_shard(&g, "10.1.2.0".parse().unwrap()), "");
        assert_eq!(render_records(&g).len(), 2);
    }

    #[test]
    fn changed_shards_name_only_what_differs() {
        let old = records(&[("10.1.1.15", "a"), ("10.1.1.16", "b"), ("10.1.1.40", "d")]);
        assert_eq!(changed_shards(&old, &old), Some(BTreeSet::new()));
        let new = records(&[("10.1.1.15", "a"), ("10.1.1.17", "b2"), ("10.1.1.40", "e")]);
        let got: Vec<String> = changed_shards(&old, &new)
            .unwrap()
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(got, ["10.1.1.16", "10.1.1.32"]);
        let mut other = old.clone();
        other.domain = None;
        assert_eq!(changed_shards(&old, &other), None);
    }

    #[test]
    fn hosts_file_holds_only_the_data_server_and_conf_names_the_dir() {
        let mut g = records(&[("10.1.1.15", "a")]);
        g.dns_enabled = true;
        g.extension_ip = Some("10.1.1.2".parse().unwrap());
        let f = render(&g, &paths_in(Path::new("/x/dnsmasq")).unwrap()).unwrap();
        assert_eq!(f.hosts, "10.1.1.2 data-server data-server.cs.test\n");
        assert!(f.conf.contains("\nhostsdir=/x/dnsmasq/hosts.d\n"));
    }
}
