//! Pure tests of the guest-service model and the dnsmasq/haproxy renderers.

use std::net::Ipv4Addr;

use netbridge_executor::services::dnsmasq::{self, DnsmasqAction, DnsmasqPaths};
use netbridge_executor::services::model::{apply, GuestServices, LbAlgorithm, Options};
use netbridge_executor::services::{haproxy, nftlb};
use netbridge_executor::services::{ServicesError, VmDataSet};
use netbridge_protocol::Command;
use serde_json::{json, Value};

fn payload(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn run(
    cmd: Command,
    v: Value,
    s: &mut GuestServices,
    vms: &mut VmDataSet,
) -> Result<(), ServicesError> {
    apply(cmd, &payload(v), s, vms, &Options::default()).map(|_| ())
}

fn paths() -> DnsmasqPaths {
    DnsmasqPaths::new("/var/lib/netbridge/net-42/dnsmasq").unwrap()
}

/// The usual sequence: scope, DNS scope, two NICs (one non-default).
fn network() -> (GuestServices, VmDataSet) {
    let mut s = GuestServices::default();
    let mut v = VmDataSet::new();
    run(
        Command::ConfigDhcpSubnet,
        json!({"network_id":"42","gateway":"10.1.1.1","cidr":"10.1.1.0/24",
        "dns":"198.51.100.53","domain":"cs42.example","extension_ip":"10.1.1.1"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    run(
        Command::ConfigDnsSubnet,
        json!({"gateway":"10.1.1.1","cidr":"10.1.1.0/24","dns":"198.51.100.53",
        "domain":"cs42.example"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    run(
        Command::PrepareNic,
        json!({"mac":"52:54:00:00:00:0A","ip":"10.1.1.10","hostname":"vm1",
        "default_nic":"true","nic_id":"7","gateway":"10.1.1.1"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    run(
        Command::AddDhcpEntry,
        json!({"mac":"52:54:00:00:00:0b","ip":"10.1.1.11","hostname":"vm2",
        "default_nic":"false","nic_id":"8"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    run(
        Command::AddDnsEntry,
        json!({"ip":"10.1.1.11","hostname":"vm2","ip6_address":"2001:db8::11"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    (s, v)
}

#[test]
fn dnsmasq_main_config_binds_extension_ip_static_only() {
    let (s, _) = network();
    let f = dnsmasq::render(&s, &paths()).unwrap();
    let lines: Vec<&str> = f.conf.lines().collect();
    for want in [
        "listen-address=10.1.1.1",
        "bind-interfaces",
        "no-hosts",
        "no-resolv",
        "server=198.51.100.53",
        "port=53",
        "domain=cs42.example",
        "local=/cs42.example/",
        "dhcp-range=10.1.1.0,static,255.255.255.0,infinite",
        "dhcp-option=option:router,10.1.1.1",
        "dhcp-mac=set:m52540000000b,52:54:00:00:00:0b",
        "dhcp-option=tag:m52540000000b,option:router",
        "dhcp-option=option:dns-server,10.1.1.1,198.51.100.53",
        "dhcp-option=option:domain-search,cs42.example",
        "pid-file=",
        "dhcp-leasefile=/var/lib/netbridge/net-42/dnsmasq/leases",
        "dhcp-hostsfile=/var/lib/netbridge/net-42/dnsmasq/dhcp-hosts",
        "addn-hosts=/var/lib/netbridge/net-42/dnsmasq/hosts",
        "hostsdir=/var/lib/netbridge/net-42/dnsmasq/hosts.d",
    ] {
        assert!(lines.contains(&want), "missing {want:?} in\n{}", f.conf);
    }
    assert!(!f.conf.contains("resolv-file"));
    // The default NIC needs no tag of its own.
    assert!(!f.conf.contains("m52540000000a"));
}

#[test]
fn router_only_for_default_nics_and_hosts_files() {
    let (s, _) = network();
    let f = dnsmasq::render(&s, &paths()).unwrap();
    assert_eq!(
        f.dhcp_hosts,
        "52:54:00:00:00:0a,10.1.1.10,vm1,infinite\n\
         52:54:00:00:00:0b,10.1.1.11,vm2,infinite\n"
    );
    // No tags in the reloadable file (dnsmasq crashes on SIGHUP otherwise).
    assert!(!f.dhcp_hosts.contains("set:"));
    assert_eq!(f.hosts, "10.1.1.1 data-server data-server.cs42.example\n");
    // The records: one shard file per 16 addresses in `hostsdir`.
    let shards = dnsmasq::render_records(&s);
    assert_eq!(
        shards.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
        ["10.1.1.0"]
    );
    assert_eq!(
        shards[&Ipv4Addr::new(10, 1, 1, 0)],
        "10.1.1.10 vm1 vm1.cs42.example\n\
         10.1.1.11 vm2 vm2.cs42.example\n\
         2001:db8::11 vm2 vm2.cs42.example\n"
    );
    assert_eq!(
        paths().argv(),
        vec![
            std::ffi::OsString::from("--keep-in-foreground"),
            "--conf-file=/var/lib/netbridge/net-42/dnsmasq/dnsmasq.conf".into()
        ]
    );
}

#[test]
fn dns_off_means_port_zero_and_no_self_as_resolver() {
    let (mut s, mut v) = network();
    run(Command::RemoveDnsSubnet, json!({}), &mut s, &mut v).unwrap();
    let f = dnsmasq::render(&s, &paths()).unwrap();
    assert!(f.conf.lines().any(|l| l == "port=0"));
    assert!(f
        .conf
        .lines()
        .any(|l| l == "dhcp-option=option:dns-server,198.51.100.53"));
    run(Command::RemoveDhcpSubnet, json!({}), &mut s, &mut v).unwrap();
    assert!(dnsmasq::render(&s, &paths()).is_none());
}

#[test]
fn set_dhcp_options_rendered_per_nic_and_validated() {
    let (mut s, mut v) = network();
    run(
        Command::SetDhcpOptions,
        json!({"nic_id":"8","options":"{\"15\":\"x.example\",\"42\":\"10.0.0.5,10.0.0.6\"}"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    let f = dnsmasq::render(&s, &paths()).unwrap();
    assert!(f
        .conf
        .contains("\ndhcp-option=tag:m52540000000b,15,x.example\n"));
    assert!(f
        .conf
        .contains("\ndhcp-option=tag:m52540000000b,42,10.0.0.5,10.0.0.6\n"));
    let before = s.clone();
    for (opts, field) in [
        ("{\"15\":\"x\\ndhcp-script=/tmp/x\"}", "options.15"),
        ("{\"15\":\"a b\"}", "options.15"),
        ("{\"300\":\"x\"}", "options.300"),
        ("{\"abc\":\"x\"}", "options.abc"),
        ("[1]", "options"),
        ("not json", "options"),
    ] {
        let e = run(
            Command::SetDhcpOptions,
            json!({"nic_id":"8","options":opts}),
            &mut s,
            &mut v,
        )
        .unwrap_err();
        assert!(e.to_string().contains(&format!("'{field}'")), "{opts}: {e}");
        assert_eq!(s, before);
    }
    run(
        Command::SetDhcpOptions,
        json!({"nic_id":"8","options":"{}"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    assert!(!dnsmasq::render(&s, &paths()).unwrap().conf.contains(",15,"));
}

#[test]
fn injection_in_nic_fields_is_refused_and_changes_nothing() {
    let (mut s, mut v) = network();
    let before = (s.clone(), v.clone());
    let cases = [
        (
            Command::AddDhcpEntry,
            json!({"mac":"52:54:00:00:00:0c","ip":"10.1.1.12","hostname":"x\ndhcp-script=/bin/sh"}),
            "hostname",
        ),
        (
            Command::AddDhcpEntry,
            json!({"mac":"52:54:00:00:00:0c,set:x","ip":"10.1.1.12"}),
            "mac",
        ),
        (
            Command::AddDhcpEntry,
            json!({"mac":"52:54:00:00:00:0c","ip":"10.1.1.12,10.1.1.13"}),
            "ip",
        ),
        (
            Command::AddDnsEntry,
            json!({"ip":"10.1.1.12","hostname":"a b"}),
            "hostname",
        ),
        (
            Command::ConfigDhcpSubnet,
            json!({"gateway":"10.1.1.1","cidr":"10.1.1.0/24","domain":"x\nserver=1.2.3.4"}),
            "domain",
        ),
        (
            Command::ConfigDhcpSubnet,
            json!({"gateway":"10.1.1.1","cidr":"10.1.1.0/24","dns":"8.8.8.8\nx"}),
            "dns",
        ),
        (
            Command::ConfigDhcpSubnet,
            json!({"gateway":"10.9.1.1","cidr":"10.1.1.0/24"}),
            "gateway",
        ),
        (
            Command::PrepareNic,
            json!({"mac":"52:54:00:00:00:0c","ip":"10.1.1.12","default_nic":"maybe"}),
            "default_nic",
        ),
        (Command::AddDhcpEntry, json!({"ip":"10.1.1.12"}), "mac"),
    ];
    for (cmd, p, field) in cases {
        let e = run(cmd, p, &mut s, &mut v).unwrap_err();
        assert!(e.to_string().contains(&format!("'{field}'")), "{cmd}: {e}");
        assert_eq!((s.clone(), v.clone()), before);
    }
}

#[test]
fn remove_and_release_remove_exactly_what_they_name() {
    let (mut s, mut v) = network();
    run(
        Command::SaveVmData,
        json!({"ip":"10.1.1.10","vm_data":[{"dir":"metadata","file":"instance-id","content":"i-1"}]}),
        &mut s,
        &mut v,
    )
    .unwrap();
    run(
        Command::SaveVmData,
        json!({"ip":"10.1.1.11","vm_data":[{"dir":"metadata","file":"instance-id","content":"i-2"}]}),
        &mut s,
        &mut v,
    )
    .unwrap();
    // remove-dhcp-entry: only the lease.
    run(
        Command::RemoveDhcpEntry,
        json!({"mac":"52:54:00:00:00:0b","ip":"10.1.1.11"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    assert!(!s.nics.contains_key("52:54:00:00:00:0b"));
    assert!(s.dns_records.contains_key(&Ipv4Addr::new(10, 1, 1, 11)));
    assert!(v.contains_key(&Ipv4Addr::new(10, 1, 1, 11)));
    // remove-dns-entry 10.1.1.1 must not touch 10.1.1.10/11 (no prefix match).
    run(
        Command::RemoveDnsEntry,
        json!({"ip":"10.1.1.1"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    assert_eq!(s.dns_records.len(), 2);
    // release-nic: lease, record and VM data of that NIC only.
    run(
        Command::ReleaseNic,
        json!({"mac":"52:54:00:00:00:0a","ip":"10.1.1.10","nic_id":"7"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    assert!(s.nics.is_empty());
    assert_eq!(
        s.dns_records.keys().copied().collect::<Vec<_>>(),
        vec![Ipv4Addr::new(10, 1, 1, 11)]
    );
    assert_eq!(
        v.keys().copied().collect::<Vec<_>>(),
        vec![Ipv4Addr::new(10, 1, 1, 11)]
    );
}

#[test]
fn hosts_change_hups_main_change_restarts() {
    let (mut s, mut v) = network();
    let p = paths();
    let a = dnsmasq::render(&s, &p);
    run(
        Command::AddDhcpEntry,
        json!({"mac":"52:54:00:00:00:0c","ip":"10.1.1.12","hostname":"vm3"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    let b = dnsmasq::render(&s, &p);
    assert_eq!(
        dnsmasq::plan_change(a.as_ref(), b.as_ref()),
        DnsmasqAction::Hup
    );
    assert_eq!(
        dnsmasq::plan_change(b.as_ref(), b.as_ref()),
        DnsmasqAction::Nothing
    );
    run(
        Command::ConfigDnsSubnet,
        json!({"gateway":"10.1.1.1","cidr":"10.1.1.0/24","dns":"198.51.100.54"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    let c = dnsmasq::render(&s, &p);
    assert_eq!(
        dnsmasq::plan_change(b.as_ref(), c.as_ref()),
        DnsmasqAction::Restart
    );
    let mut s2 = s.clone();
    run(
        Command::AddDhcpEntry,
        json!({"mac":"52:54:00:00:00:0d","ip":"10.1.1.13","default_nic":"false"}),
        &mut s2,
        &mut v,
    )
    .unwrap();
    assert_eq!(
        dnsmasq::plan_change(c.as_ref(), dnsmasq::render(&s2, &p).as_ref()),
        DnsmasqAction::Restart,
        "a non-default NIC needs its tag in the main configuration"
    );
    assert_eq!(dnsmasq::plan_change(None, c.as_ref()), DnsmasqAction::Start);
    assert_eq!(dnsmasq::plan_change(c.as_ref(), None), DnsmasqAction::Stop);
}

#[test]
fn dnsmasq_dir_with_spaces_refused() {
    assert!(DnsmasqPaths::new("/tmp/a b").is_err());
    assert!(DnsmasqPaths::new("relative").is_err());
    assert!(DnsmasqPaths::new("/tmp/a\nb").is_err());
}

fn lb(rules: Value) -> Value {
    json!({"network_id":"42","lb_rules":rules})
}

#[test]
fn lb_rules_accumulate_revoke_and_render() {
    let mut s = GuestServices::default();
    let mut v = VmDataSet::new();
    assert!(haproxy::render(&s).is_none());
    run(
        Command::ApplyLbRules,
        lb(json!([{"id":"5","name":"web","publicIp":"203.0.113.10","publicPort":"80",
        "privatePort":"8080","protocol":"tcp","algorithm":"roundrobin","revoke":false,
        "backends":[{"ip":"10.1.1.10","port":"8080","revoked":false},{"ip":"10.1.1.11","port":"8080","revoked":false},
                    {"ip":"10.1.1.12","port":"8080","revoked":true}]}])),
        &mut s,
        &mut v,
    )
    .unwrap();
    // Base64 form of the rule document, tcp-proxy, source.
    use base64::Engine as _;
    let doc = json!([{"id":"6","publicIp":"203.0.113.10","publicPort":"443","privatePort":"443","protocol":"tcp-proxy",
        "algorithm":"source","revoke":"false","backends":[{"ip":"10.1.1.10","port":"443"}]}]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(doc.to_string());
    run(Command::ApplyLbRules, lb(json!(b64)), &mut s, &mut v).unwrap();
    assert_eq!(s.lb_rules.len(), 2);
    assert_eq!(s.lb_rules["6"].algorithm, LbAlgorithm::Source);
    let cfg = haproxy::render(&s).unwrap();
    assert!(cfg.contains("\nlisten lb_5\n    bind 203.0.113.10:80\n    balance roundrobin\n    server s_10.1.1.10_8080 10.1.1.10:8080 id 85718\n    server s_10.1.1.11_8080 10.1.1.11:8080 id 217728\n"), "{cfg}");
    assert!(!cfg.contains("10.1.1.12"));
    assert!(cfg.contains("\nlisten lb_6\n    bind 203.0.113.10:443\n    balance source\n    hash-type consistent\n    server s_10.1.1.10_443 10.1.1.10:443 id 377211 send-proxy\n"), "{cfg}");
    assert!(cfg.contains("mode tcp"));
    // Revoking one backend: it leaves the pool.
    run(
        Command::ApplyLbRules,
        lb(
            json!([{"id":"5","publicIp":"203.0.113.10","publicPort":"80","privatePort":"8080",
        "algorithm":"leastconn","backends":[{"ip":"10.1.1.10","port":"8080","revoked":true},{"ip":"10.1.1.11","port":"8080"}]}]),
        ),
        &mut s,
        &mut v,
    )
    .unwrap();
    let cfg = haproxy::render(&s).unwrap();
    assert!(
        cfg.contains("balance leastconn\n    server s_10.1.1.11_8080 10.1.1.11:8080 id 217728\n\n"),
        "{cfg}"
    );
    // Revoking the rules: no haproxy.
    run(
        Command::ApplyLbRules,
        lb(json!([{"id":"5","revoke":true},{"id":"6","revoke":"true"}])),
        &mut s,
        &mut v,
    )
    .unwrap();
    assert!(haproxy::render(&s).is_none());
}

#[test]
fn lb_errors_name_the_field_udp_leastconn_refused() {
    let mut s = GuestServices::default();
    let mut v = VmDataSet::new();
    run(
        Command::ApplyLbRules,
        lb(json!([{"id":"1","publicIp":"203.0.113.10","publicPort":"80","privatePort":"80","backends":[]}])),
        &mut s,
        &mut v,
    )
    .unwrap();
    let before = s.clone();
    let cases = [
        (json!([{"id":"2","publicIp":"203.0.113.10","publicPort":"80","privatePort":"80"}]), "invalid value for 'lb_rules[0].publicPort'"),
        (json!([{"id":"2","publicIp":"203.0.113.10","publicPort":"8o","privatePort":"80"}]), "invalid value for 'lb_rules[0].publicPort'"),
        (json!([{"id":"2","publicIp":"203.0.113.300","publicPort":"81"}]), "invalid value for 'lb_rules[0].publicIp'"),
        (json!([{"id":"2 x","publicIp":"203.0.113.10","publicPort":"81"}]), "invalid value for 'lb_rules[0].id'"),
        (json!([{"id":"2","publicIp":"203.0.113.10","publicPort":"81","algorithm":"random"}]), "invalid value for 'lb_rules[0].algorithm'"),
        (json!([{"id":"2","publicIp":"203.0.113.10","publicPort":"81","backends":[{"ip":"10.0.0.1"}]}]), "missing required field 'lb_rules[0].backends[0].port'"),
        (json!([{"id":"3","revoke":true},{"id":"2","publicIp":"203.0.113.10","publicPort":"53","protocol":"udp","algorithm":"leastconn"}]),
            "unsupported: lb_rules[1].algorithm: leastconn is not supported for udp rules (UDP load balancing supports roundrobin, source)"),
        (json!([{"id":"2","publicIp":"203.0.113.10","publicPort":"80","protocol":"sctp"}]), "invalid value for 'lb_rules[0].protocol'"),
    ];
    for (doc, want) in cases {
        let e = run(Command::ApplyLbRules, lb(doc), &mut s, &mut v)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(want), "{e}");
        assert_eq!(s, before);
    }
}

/// UDP rules: kept beside the TCP ones (same address and port allowed),
/// rendered by nftables only, revoked backends and rules leave.
#[test]
fn udp_lb_rules_go_to_nftables_not_haproxy() {
    let mut s = GuestServices::default();
    let mut v = VmDataSet::new();
    let udp = |algorithm: &str, revoke_b3: bool, revoke: bool| {
        lb(
            json!([{"id":"9","name":"dns","publicIp":"203.0.113.10","publicPort":"53","privatePort":"5353",
            "protocol":"udp","algorithm":algorithm,"revoke":revoke,"backends":[
            {"ip":"10.1.1.10","port":"5353","revoked":false},{"ip":"10.1.1.11","port":"5353","revoked":false},
            {"ip":"10.1.1.12","port":"5353","revoked":revoke_b3}]}]),
        )
    };
    run(
        Command::ApplyLbRules,
        udp("roundrobin", false, false),
        &mut s,
        &mut v,
    )
    .unwrap();
    assert!(haproxy::render(&s).is_none(), "only UDP rules: no haproxy");
    assert_eq!(
        nftlb::dnat_rules(&s),
        ["ip daddr 203.0.113.10 udp dport 53 dnat ip to numgen inc mod 3 map { 0 : 10.1.1.10 . 5353, 1 : 10.1.1.11 . 5353, 2 : 10.1.1.12 . 5353 }"]
    );
    // A TCP rule on the same address and port accumulates beside it.
    run(
        Command::ApplyLbRules,
        lb(
            json!([{"id":"5","publicIp":"203.0.113.10","publicPort":"53","privatePort":"53",
            "protocol":"tcp","backends":[{"ip":"10.1.1.10","port":"53"}]}]),
        ),
        &mut s,
        &mut v,
    )
    .unwrap();
    let cfg = haproxy::render(&s).unwrap();
    assert!(
        cfg.contains(
            "listen lb_5
"
        ),
        "{cfg}"
    );
    assert!(!cfg.contains("lb_9"), "{cfg}");
    assert_eq!(nftlb::dnat_rules(&s).len(), 1);
    // source affinity, one backend revoked.
    run(
        Command::ApplyLbRules,
        udp("source", true, false),
        &mut s,
        &mut v,
    )
    .unwrap();
    assert_eq!(
        nftlb::dnat_rules(&s),
        ["ip daddr 203.0.113.10 udp dport 53 dnat ip to jhash ip saddr mod 2 seed 0x6e627564 map { 0 : 10.1.1.10 . 5353, 1 : 10.1.1.11 . 5353 }"]
    );
    // leastconn for UDP changes nothing.
    let before = s.clone();
    let e = run(
        Command::ApplyLbRules,
        udp("leastconn", false, false),
        &mut s,
        &mut v,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(e, "unsupported: lb_rules[0].algorithm: leastconn is not supported for udp rules (UDP load balancing supports roundrobin, source)");
    assert_eq!(s, before);
    // A second UDP rule on the same address and port is a conflict.
    let e = run(
        Command::ApplyLbRules,
        lb(
            json!([{"id":"10","publicIp":"203.0.113.10","publicPort":"53","protocol":"udp",
            "backends":[{"ip":"10.1.1.12","port":"53"}]}]),
        ),
        &mut s,
        &mut v,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "invalid value for 'lb_rules[0].publicPort': 203.0.113.10:53 is already used by rule 9"
    );
    // Revoking the rule: no UDP rule left; the TCP one stays with haproxy.
    run(
        Command::ApplyLbRules,
        udp("source", false, true),
        &mut s,
        &mut v,
    )
    .unwrap();
    assert!(nftlb::dnat_rules(&s).is_empty());
    assert!(haproxy::render(&s).is_some());
}

#[test]
fn restore_network_rebuilds_and_keeps_passwords() {
    let (mut s, mut v) = network();
    run(
        Command::SavePassword,
        json!({"ip":"10.1.1.10","password":"pw-10"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    run(
        Command::SaveVmData,
        json!({"ip":"10.1.1.99","vm_data":[{"dir":"metadata","file":"instance-id","content":"gone"}]}),
        &mut s,
        &mut v,
    )
    .unwrap();
    run(
        Command::RestoreNetwork,
        json!({"network_id":"42","restore_data":{"dhcp_enabled":"true","dns_enabled":"true",
        "userdata_enabled":"true","vms":[
          {"ip":"10.1.1.10","mac":"52:54:00:00:00:0a","hostname":"vm1","default_nic":"true","nic_uuid":"u1",
           "vm_data":[{"dir":"metadata","file":"instance-id","content":"i-1"},{"dir":"userdata","file":"user-data","content":"ud1"}]},
          {"ip":"10.1.1.20","mac":"52:54:00:00:00:14","hostname":"vm20","default_nic":"false",
           "vm_data":[{"dir":"metadata","file":"instance-id","content":"i-20"}]}]}}),
        &mut s,
        &mut v,
    )
    .unwrap();
    assert_eq!(s.nics.len(), 2);
    assert_eq!(s.nics["52:54:00:00:00:0a"].nic_id.as_deref(), Some("7"));
    assert!(!s.nics["52:54:00:00:00:14"].default_nic);
    assert_eq!(v.len(), 2, "unlisted VM data removed");
    let d = &v[&Ipv4Addr::new(10, 1, 1, 10)];
    assert_eq!(d.password.as_ref().unwrap().expose(), "pw-10");
    assert_eq!(d.meta["instance-id"], "i-1");
    assert_eq!(d.userdata.as_deref(), Some(&b"ud1"[..]));
    assert!(dnsmasq::render_shard(&s, Ipv4Addr::new(10, 1, 1, 20))
        .contains("10.1.1.20 vm20 vm20.cs42.example\n"));
    // A bad VM deep in the list names itself and changes nothing.
    let before = (s.clone(), v.clone());
    let e = run(
        Command::RestoreNetwork,
        json!({"restore_data":{"vms":[{"ip":"10.1.1.10"},
        {"ip":"10.1.1.11","vm_data":[{"dir":"x","file":"y","content":""}]}]}}),
        &mut s,
        &mut v,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("'restore_data.vms[1].vm_data[0].dir'"),
        "{e}"
    );
    assert_eq!((s, v), before);
}

/// CloudStack 4.23 sends `"vm_data": []` for a VM whose data it did not
/// generate (the extension does not provide UserData, or generating the
/// VM's data failed); with data, the set always holds the meta-data files.
/// So an empty `vm_data` keeps what is stored for the VM (user data,
/// meta-data files, password), in the JSON or Base64 form, like an absent
/// one and like `userdata_enabled: false`; a non-empty one replaces the set
/// (the password is kept); an unlisted VM is forgotten.
#[test]
fn restore_network_keeps_stored_vm_data_when_vm_data_is_empty() {
    let (mut s, mut v) = network();
    let full = |name: &str| {
        json!([{"dir":"userdata","file":"user-data","content":format!("ud-{name}")},
               {"dir":"metadata","file":"instance-id","content":format!("i-{name}")},
               {"dir":"metadata","file":"local-hostname","content":name}])
    };
    for (ip, name) in [
        ("10.1.1.10", "vm1"),
        ("10.1.1.11", "vm2"),
        ("10.1.1.12", "vm3"),
        ("10.1.1.13", "vm4"),
        ("10.1.1.14", "vm5"),
    ] {
        run(
            Command::SaveVmData,
            json!({"ip": ip, "vm_data": full(name)}),
            &mut s,
            &mut v,
        )
        .unwrap();
        run(
            Command::SavePassword,
            json!({"ip": ip, "password": format!("pw-{name}")}),
            &mut s,
            &mut v,
        )
        .unwrap();
    }
    let before = v.clone();
    let vm = |ip: &str, mac: &str, name: &str, vm_data: Option<Value>| {
        let mut o = json!({"ip": ip, "mac": mac, "hostname": name, "default_nic": "true"});
        if let Some(d) = vm_data {
            o["vm_data"] = d;
        }
        o
    };
    run(
        Command::RestoreNetwork,
        json!({"network_id":"42","restore_data":{"dhcp_enabled":"true","dns_enabled":"true",
        "userdata_enabled":"true","vms":[
            vm("10.1.1.10", "52:54:00:00:00:0a", "vm1", Some(json!([]))),
            vm("10.1.1.11", "52:54:00:00:00:0b", "vm2", Some(json!("W10="))),
            vm("10.1.1.12", "52:54:00:00:00:0c", "vm3", None),
            vm("10.1.1.13", "52:54:00:00:00:0d", "vm4", Some(json!([
                {"dir":"metadata","file":"instance-id","content":"i-vm4-new"}]))),
        ]}}),
        &mut s,
        &mut v,
    )
    .unwrap();
    for ip in ["10.1.1.10", "10.1.1.11", "10.1.1.12"] {
        let ip: Ipv4Addr = ip.parse().unwrap();
        assert_eq!(v.get(&ip), before.get(&ip), "{ip}: stored data kept");
    }
    let vm4 = &v[&Ipv4Addr::new(10, 1, 1, 13)];
    assert_eq!(
        vm4.meta.get("instance-id").map(String::as_str),
        Some("i-vm4-new")
    );
    assert!(
        vm4.userdata.is_none(),
        "a non-empty set replaces the old one"
    );
    assert!(!vm4.meta.contains_key("local-hostname"));
    assert_eq!(vm4.password.as_ref().map(|p| p.expose()), Some("pw-vm4"));
    assert!(
        !v.contains_key(&Ipv4Addr::new(10, 1, 1, 14)),
        "unlisted VM forgotten"
    );
    assert_eq!(s.nics.len(), 4);

    // Without the UserData service every vm_data is empty: nothing changes.
    let kept = v.clone();
    run(
        Command::RestoreNetwork,
        json!({"network_id":"42","restore_data":{"dhcp_enabled":"true","dns_enabled":"true",
        "userdata_enabled":"false","vms":[
            vm("10.1.1.10", "52:54:00:00:00:0a", "vm1", Some(json!([]))),
            vm("10.1.1.11", "52:54:00:00:00:0b", "vm2", Some(json!([]))),
            vm("10.1.1.12", "52:54:00:00:00:0c", "vm3", Some(json!([]))),
            vm("10.1.1.13", "52:54:00:00:00:0d", "vm4", Some(json!([]))),
        ]}}),
        &mut s,
        &mut v,
    )
    .unwrap();
    assert_eq!(v, kept);
}

#[test]
fn save_password_error_never_echoes_secret() {
    let mut s = GuestServices::default();
    let mut v = VmDataSet::new();
    let e = run(
        Command::SavePassword,
        json!({"ip":"10.1.1.10","password":"top\u{1}secret"}),
        &mut s,
        &mut v,
    )
    .unwrap_err();
    assert!(!e.to_string().contains("secret"), "{e}");
    let e = run(
        Command::SaveUserdata,
        json!({"ip":"10.1.1.x","userdata":"u"}),
        &mut s,
        &mut v,
    )
    .unwrap_err();
    assert!(e.to_string().contains("'ip'"));
    let e = run(Command::AssignIp, json!({}), &mut s, &mut v).unwrap_err();
    assert!(matches!(e, ServicesError::Unsupported(_)));
}

#[test]
fn shared_network_listens_on_dedicated_extension_ip() {
    let mut s = GuestServices::default();
    let mut v = VmDataSet::new();
    run(
        Command::ConfigDhcpSubnet,
        json!({"guest_type":"shared","gateway":"10.2.0.1","cidr":"10.2.0.0/24","extension_ip":"10.2.0.2",
            "dns":"198.51.100.53"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    run(
        Command::ConfigDnsSubnet,
        json!({"gateway":"10.2.0.1","cidr":"10.2.0.0/24"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    run(
        Command::AddDhcpEntry,
        json!({"mac":"52:54:00:00:01:01","ip":"10.2.0.10","hostname":"s1"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    assert_eq!(s.listen_ip(), Some(Ipv4Addr::new(10, 2, 0, 2)));
    let f = dnsmasq::render(&s, &paths()).unwrap();
    let lines: Vec<&str> = f.conf.lines().collect();
    assert!(lines.contains(&"listen-address=10.2.0.2"));
    assert!(lines.contains(&"dhcp-option=option:router,10.2.0.1"));
    assert!(lines.contains(&"dhcp-option=option:dns-server,10.2.0.2,198.51.100.53"));
    assert!(f.hosts.starts_with("10.2.0.2 data-server\n"));
}

#[test]
fn prepare_nic_reassigning_an_ip_drops_the_stale_lease() {
    let (mut s, mut v) = network();
    run(
        Command::PrepareNic,
        json!({"mac":"52:54:00:00:00:ff","ip":"10.1.1.10","hostname":"vm9"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    assert!(!s.nics.contains_key("52:54:00:00:00:0a"));
    let f = dnsmasq::render(&s, &paths()).unwrap();
    assert_eq!(f.dhcp_hosts.matches("10.1.1.10,").count(), 1);
    assert!(dnsmasq::render_shard(&s, Ipv4Addr::new(10, 1, 1, 10))
        .contains("10.1.1.10 vm9 vm9.cs42.example\n"));
}

#[test]
fn nic_netmask_gives_the_dhcp_range_when_no_cidr_was_sent() {
    let mut s = GuestServices::default();
    let mut v = VmDataSet::new();
    run(
        Command::PrepareNic,
        json!({"mac":"52:54:00:00:02:01","ip":"10.3.0.10","netmask":"255.255.255.0","gateway":"10.3.0.1",
            "extension_ip":"10.3.0.1"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    let f = dnsmasq::render(&s, &paths()).unwrap();
    assert!(f
        .conf
        .contains("\ndhcp-range=10.3.0.0,static,255.255.255.0,infinite\n"));
    let e = run(
        Command::PrepareNic,
        json!({"mac":"52:54:00:00:02:02","ip":"10.4.0.10","netmask":"255.0.255.0"}),
        &mut GuestServices::default(),
        &mut v,
    )
    .unwrap_err();
    assert!(e.to_string().contains("'netmask'"), "{e}");
}

#[test]
fn a_dns_record_alone_changes_one_shard_and_signals_nothing() {
    let (mut s, mut v) = network();
    let p = paths();
    let before = s.clone();
    let a = dnsmasq::render(&s, &p);
    run(
        Command::AddDnsEntry,
        json!({"ip":"10.1.1.40","hostname":"web"}),
        &mut s,
        &mut v,
    )
    .unwrap();
    let b = dnsmasq::render(&s, &p);
    // hostsdir picks the new shard file up (inotify): no SIGHUP.
    assert_eq!(
        dnsmasq::plan_change(a.as_ref(), b.as_ref()),
        DnsmasqAction::Nothing
    );
    let changed = dnsmasq::changed_shards(&before, &s).unwrap();
    assert_eq!(
        changed.into_iter().collect::<Vec<_>>(),
        [Ipv4Addr::new(10, 1, 1, 32)]
    );
    assert_eq!(
        dnsmasq::render_shard(&s, Ipv4Addr::new(10, 1, 1, 32)),
        "10.1.1.40 web web.cs42.example\n"
    );
}
