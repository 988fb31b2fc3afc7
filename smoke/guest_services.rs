//! Guest services through the executor daemon, root only: real
//! DHCP client and `dig` in VM namespaces, metadata/password over HTTP,
//! haproxy load balancing, UDP load balancing in nftables, shared networks,
//! shutdown/restore and executor restart. Every request goes through the harness's signed TLS client.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use netbridge_testbed::*;
use serde_json::{json, Value};

const DOMAIN: &str = "smoke.test";
const UPSTREAM_NAME: &str = "upstream.example.test";
const UPSTREAM_NAME_ADDR: &str = "198.51.100.77";

fn details(id: u32) -> Value {
    json!({"host": "h1", "namespace": format!("cs-net-{id}")})
}

fn net(id: u32) -> Value {
    network_payload(id, 100, "10.1.1.1", "10.1.1.0/24")
}

fn send(host: &Host, id: u32, command: &str, extra: Value) -> Response {
    let payload = merged(net(id), extra);
    host.client()
        .command(command, &envelope(host, details(id), payload))
}

#[track_caller]
fn ok(host: &Host, id: u32, command: &str, extra: Value) {
    let r = send(host, id, command, extra);
    assert_eq!(r.status, 200, "{command}: {}", r.body);
}

/// The executor's state dir must be reachable by the user dnsmasq drops
/// to; the harness's temp dir is 0700.
fn open_state_parent(host: &Host) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(host.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
}

fn guest_dir(host: &Host, id: u32) -> PathBuf {
    host.state_dir().join(format!("guest/cs-net-{id}"))
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The command line of a live process mentions `needle`.
fn runs(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle))
        .unwrap_or(false)
}

/// Kills (by PID, after checking the command line names our state dir) the
/// daemons an executor of this test left behind when the test fails.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(nets) = std::fs::read_dir(self.0.join("guest")) else {
            return;
        };
        let marker = self.0.display().to_string();
        for n in nets.flatten() {
            for f in ["dnsmasq/dnsmasq.pid", "haproxy/haproxy.pid"] {
                if let Some(pid) = read_pid(&n.path().join(f)) {
                    if runs(pid, &marker) {
                        // SAFETY: plain syscall on a PID verified above.
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    }
                }
            }
        }
    }
}

fn nic(mac: &str, ip: &str, hostname: &str, default_nic: bool) -> Value {
    json!({"mac": mac, "ip": ip, "hostname": hostname, "default_nic": default_nic.to_string(),
           "netmask": "255.255.255.0", "gateway": "10.1.1.1", "dns": UPSTREAM_ADDR, "domain": DOMAIN,
           "extension_ip": "10.1.1.1", "nic_id": format!("nic-{hostname}")})
}

fn vm_data(name: &str) -> Value {
    json!([
        {"dir": "userdata", "file": "user-data", "content": format!("#cloud-config {name}")},
        {"dir": "metadata", "file": "instance-id", "content": format!("i-{name}")},
        {"dir": "metadata", "file": "local-hostname", "content": name},
        {"dir": "metadata", "file": "public-keys", "content": format!("ssh-ed25519 AAAA {name}")}
    ])
}

fn md(ns: &Path, path: &str) -> (u16, String) {
    http_get(ns, "10.1.1.1:80".parse().unwrap(), path).unwrap_or((0, String::new()))
}

fn password(ns: &Path, server: &str, request: &str) -> String {
    let addr: SocketAddr = format!("{server}:8080").parse().unwrap();
    http_request(ns, addr, "GET", "/", &[("DomU_Request", request)])
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default()
}

fn dig1(ns: &Path, server: &str, name: &str) -> Vec<String> {
    eventually(Duration::from_secs(5), || {
        dig(ns, server, name, "A").ok().filter(|a| !a.is_empty())
    })
    .unwrap_or_default()
}

/// A real DHCP client (`dhclient`) run once in `ns`; the lease it wrote.
/// `-sf /bin/true`: the lease is recorded but nothing on the host (resolv.conf)
/// is touched; the test configures the address itself.
fn dhclient(ns: &Path, dir: &Path) -> String {
    let lease = dir.join("dhclient.leases");
    let pid = dir.join("dhclient.pid");
    let (l, p) = (lease.display().to_string(), pid.display().to_string());
    // In the foreground (`-d`) dhclient stays our child: its PID is known
    // from the start and it is stopped (dropped) by that PID once the lease
    // is written.
    let client = NsProcess::spawn(
        ns,
        &[
            "dhclient",
            "-d",
            "-4",
            "-sf",
            "/bin/true",
            "-lf",
            &l,
            "-pf",
            &p,
            "eth0",
        ],
    )
    .expect("start dhclient");
    let text = eventually(Duration::from_secs(60), || {
        std::fs::read_to_string(&lease)
            .ok()
            .filter(|t| t.contains("fixed-address") && t.trim_end().ends_with('}'))
    });
    drop(client);
    text.expect("no DHCP lease within 60 s")
}

/// A DNS server in the upstream namespace answering one name.
fn upstream_dns(up: &Path, dir: &Path) -> NsProcess {
    let pid = format!("--pid-file={}", dir.join("up-dnsmasq.pid").display());
    let rec = format!("--host-record={UPSTREAM_NAME},{UPSTREAM_NAME_ADDR}");
    let listen = format!("--listen-address={UPSTREAM_ADDR}");
    NsProcess::spawn(
        up,
        &[
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--port=53",
            &listen,
            &rec,
            &pid,
        ],
    )
    .unwrap()
}

/// DHCP, DNS, metadata, passwords, restore and restart on one isolated network.
#[test]
fn dhcp_dns_metadata_passwords_restore_and_restart() {
    if skip_unless_root("dhcp_dns_metadata_passwords_restore_and_restart") {
        return;
    }
    const ID: u32 = 4401;
    let mut tb = Testbed::new(
        "nbg",
        TopologyOptions::default()
            .vm("vm1", "10.1.1.10/24", Some("10.1.1.1"))
            .vm("vm2", "10.1.1.11/24", Some("10.1.1.1"))
            .vm_dhcp("vm3", "02:00:00:00:00:33"),
    );
    let (vm1, vm2, vm3) = (
        tb.vm("vm1").path(),
        tb.vm("vm2").path(),
        tb.vm("vm3").path(),
    );
    let (mac1, mac2) = (
        tb.vm("vm1").mac().to_string(),
        tb.vm("vm2").mac().to_string(),
    );
    let up = tb.upstream.path();
    let work = tempfile::tempdir().unwrap();
    let _dns = upstream_dns(&up, work.path());
    let host = tb.host(0);
    open_state_parent(host);
    let _reaper = Reaper(host.state_dir());
    host.start_executor().unwrap();
    let host = &*host;

    let scope = json!({"extension_ip": "10.1.1.1", "dns": UPSTREAM_ADDR, "domain": DOMAIN});
    ok(host, ID, "implement-network", scope.clone());
    ok(
        host,
        ID,
        "assign-ip",
        json!({"public_ip": "203.0.113.10", "public_vlan": "vlan://200",
            "public_gateway": PUBLIC_GATEWAY, "public_cidr": PUBLIC_CIDR, "source_nat": "true"}),
    );
    // The reference's usual order; DNS must be up after it.
    ok(host, ID, "config-dhcp-subnet", scope.clone());
    ok(host, ID, "config-dns-subnet", scope.clone());
    ok(
        host,
        ID,
        "add-dns-entry",
        json!({"ip": "10.1.1.10", "hostname": "vm1"}),
    );
    ok(
        host,
        ID,
        "prepare-nic",
        nic(&mac1, "10.1.1.10", "vm1", true),
    );
    ok(
        host,
        ID,
        "prepare-nic",
        nic(&mac2, "10.1.1.11", "vm2", true),
    );
    ok(
        host,
        ID,
        "add-dhcp-entry",
        nic("02:00:00:00:00:33", "10.1.1.12", "vm3", true),
    );
    ok(
        host,
        ID,
        "add-dns-entry",
        json!({"ip": "10.1.1.12", "hostname": "vm3"}),
    );
    ok(
        host,
        ID,
        "add-dhcp-entry",
        nic("02:00:00:00:00:99", "10.1.1.99", "side", false),
    );
    for (ip, name) in [
        ("10.1.1.10", "vm1"),
        ("10.1.1.11", "vm2"),
        ("10.1.1.12", "vm3"),
    ] {
        ok(
            host,
            ID,
            "save-vm-data",
            json!({"ip": ip, "vm_data": vm_data(name)}),
        );
    }
    ok(
        host,
        ID,
        "save-password",
        json!({"ip": "10.1.1.10", "password": "Pw-vm1-secret"}),
    );

    // 1. A real DHCP client gets the reserved address, gateway, DNS, domain.
    let lease = dhclient(&vm3, work.path());
    assert!(lease.contains("fixed-address 10.1.1.12;"), "{lease}");
    assert!(lease.contains("option routers 10.1.1.1;"), "{lease}");
    assert!(
        lease.contains(&format!(
            "option domain-name-servers 10.1.1.1,{UPSTREAM_ADDR};"
        )),
        "{lease}"
    );
    assert!(
        lease.contains(&format!("option domain-name \"{DOMAIN}\";")),
        "{lease}"
    );
    run_in(
        &vm3,
        None,
        &["ip", "addr", "add", "10.1.1.12/24", "dev", "eth0"],
        COMMAND_TIMEOUT,
    )
    .unwrap();
    // A non-default NIC: its address, but no router option at all.
    let side = dhcp_discover(&vm2, "eth0", "02:00:00:00:00:99").unwrap();
    assert_eq!(side.address.to_string(), "10.1.1.99");
    assert!(side.routers.is_empty(), "{side:?}");
    assert!(!side.options.contains_key(&3), "{side:?}");
    // Per-NIC extra options (set-dhcp-options): vm1's own domain (option 15,
    // one the probe requests).
    ok(
        host,
        ID,
        "set-dhcp-options",
        json!({"nic_id": "nic-vm1", "options": "{\"15\":\"custom.test\"}"}),
    );
    let offer1 = eventually(Duration::from_secs(5), || {
        dhcp_discover(&vm1, "eth0", &mac1)
            .ok()
            .filter(|o| o.domain.as_deref() == Some("custom.test"))
    })
    .unwrap();
    let offer2 = dhcp_discover(&vm2, "eth0", &mac2).unwrap();
    assert_eq!(offer2.domain.as_deref(), Some(DOMAIN), "{offer2:?}");
    assert_eq!(offer1.address.to_string(), "10.1.1.10");
    assert_eq!(
        offer1.routers,
        vec!["10.1.1.1".parse::<std::net::Ipv4Addr>().unwrap()]
    );

    // 2. DNS: other VMs, data-server, and an upstream name.
    assert_eq!(dig1(&vm1, "10.1.1.1", "vm2"), vec!["10.1.1.11"]);
    assert_eq!(
        dig1(&vm2, "10.1.1.1", &format!("vm3.{DOMAIN}")),
        vec!["10.1.1.12"]
    );
    assert_eq!(dig1(&vm3, "10.1.1.1", "data-server"), vec!["10.1.1.1"]);
    assert_eq!(
        dig1(&vm1, "10.1.1.1", UPSTREAM_NAME),
        vec![UPSTREAM_NAME_ADDR]
    );

    // 3. Metadata by source address, passwords once.
    for (ns, name) in [(&vm1, "vm1"), (&vm2, "vm2"), (&vm3, "vm3")] {
        assert_eq!(
            md(ns, "/latest/user-data"),
            (200, format!("#cloud-config {name}"))
        );
        let (st, listing) = md(ns, "/latest/meta-data/");
        assert_eq!(st, 200);
        assert!(listing.lines().any(|l| l == "instance-id"), "{listing}");
        assert!(
            listing.lines().any(|l| l.starts_with("public-keys")),
            "{listing}"
        );
        assert_eq!(
            md(ns, "/latest/meta-data/instance-id"),
            (200, format!("i-{name}"))
        );
        assert_eq!(
            md(ns, "/latest/meta-data/local-hostname"),
            (200, name.to_string())
        );
        let (st, keys) = md(ns, "/latest/meta-data/public-keys");
        assert_eq!(st, 200);
        assert!(keys.contains(&format!("ssh-ed25519 AAAA {name}")), "{keys}");
    }
    // A real client: curl from vm1.
    let curl = run_in(
        &vm1,
        None,
        &[
            "curl",
            "-s",
            "--max-time",
            "3",
            "http://10.1.1.1/latest/meta-data/instance-id",
        ],
        COMMAND_TIMEOUT,
    )
    .unwrap();
    assert_eq!(curl.trim(), "i-vm1");
    // Another VM's data is out of reach: vm2 only ever sees its own.
    let (_, other) = md(&vm2, "/latest/user-data");
    assert!(!other.contains("vm1"), "{other}");
    assert_eq!(
        md(&vm2, "/latest/meta-data/../../10.1.1.10/user-data").0,
        404
    );
    assert_eq!(
        password(&vm2, "10.1.1.1", "send_my_password"),
        "saved_password"
    );
    assert_eq!(
        password(&vm1, "10.1.1.1", "send_my_password"),
        "Pw-vm1-secret"
    );
    assert_eq!(
        password(&vm1, "10.1.1.1", "saved_password"),
        "saved_password"
    );
    assert_eq!(
        password(&vm1, "10.1.1.1", "send_my_password"),
        "saved_password"
    );
    // Stored files are private.
    {
        use std::os::unix::fs::PermissionsExt;
        let f = guest_dir(host, ID).join("vmdata/10.1.1.10.vmdata");
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let raw = std::fs::read(&f).unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("cloud-config"));
    }

    // 6a. remove-* and release-nic remove exactly what they name.
    ok(host, ID, "remove-dns-entry", json!({"ip": "10.1.1.11"}));
    assert!(eventually(Duration::from_secs(5), || {
        dig(&vm1, "10.1.1.1", "vm2", "A")
            .ok()
            .filter(|a| a.is_empty())
    })
    .is_some());
    assert_eq!(dig1(&vm1, "10.1.1.1", "vm3"), vec!["10.1.1.12"]);
    ok(
        host,
        ID,
        "remove-dhcp-entry",
        json!({"mac": "02:00:00:00:00:99", "ip": "10.1.1.99"}),
    );
    assert!(dhcp_discover(&vm2, "eth0", "02:00:00:00:00:99").is_err());
    assert_eq!(
        dhcp_discover(&vm2, "eth0", &mac2)
            .unwrap()
            .address
            .to_string(),
        "10.1.1.11"
    );
    ok(
        host,
        ID,
        "release-nic",
        nic("02:00:00:00:00:33", "10.1.1.12", "vm3", true),
    );
    assert!(dhcp_discover(&vm3, "eth0", "02:00:00:00:00:33").is_err());
    assert!(eventually(Duration::from_secs(5), || {
        dig(&vm1, "10.1.1.1", "vm3", "A")
            .ok()
            .filter(|a| a.is_empty())
    })
    .is_some());
    assert_eq!(md(&vm3, "/latest/user-data").0, 404);
    assert_eq!(md(&vm1, "/latest/user-data").0, 200);
    ok(
        host,
        ID,
        "add-dns-entry",
        json!({"ip": "10.1.1.11", "hostname": "vm2"}),
    );
    ok(
        host,
        ID,
        "save-password",
        json!({"ip": "10.1.1.11", "password": "Pw-vm2-kept"}),
    );

    // 7. Executor restart (kill -9): same daemons adopted, same data served.
    let gdir = guest_dir(host, ID);
    let dns_pid = read_pid(&gdir.join("dnsmasq/dnsmasq.pid")).unwrap();
    let host = tb.host(0);
    host.restart().unwrap();
    let host = &*host;
    assert_eq!(read_pid(&gdir.join("dnsmasq/dnsmasq.pid")), Some(dns_pid));
    assert!(runs(dns_pid, "dnsmasq"));
    assert_eq!(dig1(&vm1, "10.1.1.1", "vm2"), vec!["10.1.1.11"]);
    let served = eventually(Duration::from_secs(5), || {
        Some(md(&vm1, "/latest/user-data")).filter(|r| r.0 == 200)
    });
    assert_eq!(served, Some((200, "#cloud-config vm1".to_string())));
    assert_eq!(
        dhcp_discover(&vm1, "eth0", &mac1)
            .unwrap()
            .address
            .to_string(),
        "10.1.1.10"
    );

    // 6b. shutdown, then implement + restore-network: everything is back and
    // the stored password is kept.
    ok(host, ID, "shutdown-network", json!({}));
    assert!(!runs(dns_pid, "dnsmasq"), "dnsmasq survived shutdown");
    assert!(!host.namespaces().contains(&format!("cs-net-{ID}")));
    ok(host, ID, "implement-network", scope.clone());
    ok(
        host,
        ID,
        "assign-ip",
        json!({"public_ip": "203.0.113.10", "public_vlan": "vlan://200",
            "public_gateway": PUBLIC_GATEWAY, "public_cidr": PUBLIC_CIDR, "source_nat": "true"}),
    );
    let restore = json!({"dhcp_enabled": "true", "dns_enabled": "true", "userdata_enabled": "true",
    "vms": [
        {"ip": "10.1.1.10", "mac": mac1, "hostname": "vm1", "default_nic": "true", "vm_data": vm_data("vm1")},
        {"ip": "10.1.1.11", "mac": mac2, "hostname": "vm2", "default_nic": "true", "vm_data": vm_data("vm2")}
    ]});
    ok(
        host,
        ID,
        "restore-network",
        json!({"restore_data": restore}),
    );
    assert_eq!(
        dhcp_discover(&vm1, "eth0", &mac1)
            .unwrap()
            .address
            .to_string(),
        "10.1.1.10"
    );
    assert_eq!(dig1(&vm1, "10.1.1.1", "vm2"), vec!["10.1.1.11"]);
    assert_eq!(dig1(&vm2, "10.1.1.1", "data-server"), vec!["10.1.1.1"]);
    let served = eventually(Duration::from_secs(5), || {
        Some(md(&vm2, "/latest/meta-data/instance-id")).filter(|r| r.0 == 200)
    });
    assert_eq!(served, Some((200, "i-vm2".to_string())));
    assert_eq!(
        password(&vm2, "10.1.1.1", "send_my_password"),
        "Pw-vm2-kept"
    );
    assert_eq!(
        password(&vm1, "10.1.1.1", "send_my_password"),
        "saved_password"
    );

    // Destroy: no daemon, no file, no server left.
    let dns_pid = read_pid(&gdir.join("dnsmasq/dnsmasq.pid")).unwrap();
    ok(host, ID, "destroy-network", json!({}));
    assert!(!runs(dns_pid, "dnsmasq"), "dnsmasq survived destroy");
    assert!(!gdir.exists(), "guest files left after destroy");
    assert!(http_get(&vm1, "10.1.1.1:80".parse().unwrap(), "/latest/user-data").is_err());
}

/// A backend that answers its name and holds the connection open until the
/// client closes it (leastconn counts open connections).
fn holding_backend(ns: &Path, bind: SocketAddr, name: &'static str) {
    let listener = in_netns(ns, move || TcpListener::bind(bind))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let _ = std::io::Write::write_all(&mut c, format!("{name}\n").as_bytes());
                let mut sink = [0u8; 64];
                while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
}

fn hold(ns: &Path, addr: SocketAddr) -> Option<(TcpStream, String)> {
    let s = in_netns(ns, move || TcpStream::connect_timeout(&addr, PROBE_TIMEOUT))
        .ok()?
        .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut buf = [0u8; 3];
    (&s).read_exact(&mut buf).ok()?;
    Some((s, String::from_utf8_lossy(&buf).into_owned()))
}

fn counts(ns: &Path, addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let who = hold(ns, addr)
            .map(|(_, n)| n)
            .unwrap_or_else(|| "<none>".into());
        *m.entry(who).or_insert(0) += 1;
    }
    m
}

fn lb(algorithm: &str, revoke_b3: bool, revoke_rule: bool) -> Value {
    json!({"lb_rules": [{"id": "7", "name": "web", "publicIp": "203.0.113.10", "publicPort": "80",
        "privatePort": "8080", "protocol": "tcp", "algorithm": algorithm, "revoke": revoke_rule,
        "backends": [
            {"ip": "10.1.1.10", "port": "8080", "revoked": false},
            {"ip": "10.1.1.11", "port": "8080", "revoked": false},
            {"ip": "10.1.1.12", "port": "8080", "revoked": revoke_b3}]}]})
}

/// Load balancing: haproxy with three backends from the public side.
/// Three VMs (10.1.1.10–12) behind gateway 10.1.1.1: the load-balancing
/// backends.
fn three_vm_testbed(prefix: &str) -> Testbed {
    Testbed::new(
        prefix,
        TopologyOptions::default()
            .vm("vm1", "10.1.1.10/24", Some("10.1.1.1"))
            .vm("vm2", "10.1.1.11/24", Some("10.1.1.1"))
            .vm("vm3", "10.1.1.12/24", Some("10.1.1.1")),
    )
}

/// `implement-network` plus the source-NAT public IP 203.0.113.10.
fn implement_with_public_ip(host: &Host, id: u32) {
    ok(
        host,
        id,
        "implement-network",
        json!({"extension_ip": "10.1.1.1"}),
    );
    ok(
        host,
        id,
        "assign-ip",
        json!({"public_ip": "203.0.113.10", "public_vlan": "vlan://200",
            "public_gateway": PUBLIC_GATEWAY, "public_cidr": PUBLIC_CIDR, "source_nat": "true"}),
    );
}

#[test]
fn load_balancing_roundrobin_source_leastconn_and_revoke() {
    if skip_unless_root("load_balancing_roundrobin_source_leastconn_and_revoke") {
        return;
    }
    const ID: u32 = 4402;
    let mut tb = three_vm_testbed("nbg");
    for (vm, name) in [("vm1", "b01"), ("vm2", "b02"), ("vm3", "b03")] {
        let ip = tb.vm(vm).ip().to_string();
        holding_backend(
            &tb.vm(vm).path(),
            format!("{ip}:8080").parse().unwrap(),
            name,
        );
    }
    let up = tb.upstream.path();
    let host = tb.host(0);
    open_state_parent(host);
    let _reaper = Reaper(host.state_dir());
    host.start_executor().unwrap();
    let host = &*host;
    implement_with_public_ip(host, ID);
    let fw = json!({"default_egress_allow": true, "cidr": "10.1.1.0/24", "rules": [
        {"id": "1", "type": "ingress", "protocol": "tcp", "portStart": "80", "portEnd": "80",
         "publicIp": "203.0.113.10", "sourceCidrs": ["0.0.0.0/0"]}]});
    ok(host, ID, "apply-fw-rules", json!({"fw_rules": fw}));
    let vip: SocketAddr = "203.0.113.10:80".parse().unwrap();

    // UDP with leastconn is refused with a clear error and changes nothing.
    let mut udp = lb("leastconn", false, false);
    udp["lb_rules"][0]["protocol"] = json!("udp");
    let r = send(host, ID, "apply-lb-rules", udp);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.message(),
        "unsupported: lb_rules[0].algorithm: leastconn is not supported for udp rules (UDP load balancing supports roundrobin, source)",
        "{}",
        r.body
    );

    ok(host, ID, "apply-lb-rules", lb("roundrobin", false, false));
    let hpid_file = guest_dir(host, ID).join("haproxy/haproxy.pid");
    let rr = eventually(Duration::from_secs(5), || {
        Some(counts(&up, vip, 30)).filter(|m| !m.contains_key("<none>"))
    })
    .unwrap();
    assert_eq!(
        rr,
        BTreeMap::from([("b01".into(), 10), ("b02".into(), 10), ("b03".into(), 10)])
    );

    ok(host, ID, "apply-lb-rules", lb("source", false, false));
    let src = eventually(Duration::from_secs(5), || {
        Some(counts(&up, vip, 10)).filter(|m| m.len() == 1 && !m.contains_key("<none>"))
    });
    assert!(src.is_some(), "source affinity did not keep one backend");

    ok(host, ID, "apply-lb-rules", lb("leastconn", false, false));
    // Wait until the reloaded process serves (old one drained).
    std::thread::sleep(Duration::from_millis(300));
    let (c1, n1) = hold(&up, vip).unwrap();
    let (c2, n2) = hold(&up, vip).unwrap();
    assert_ne!(n1, n2);
    let idle = ["b01", "b02", "b03"]
        .into_iter()
        .find(|b| *b != n1 && *b != n2)
        .unwrap();
    assert_eq!(hold(&up, vip).map(|(_, n)| n).as_deref(), Some(idle));
    drop((c1, c2));

    // Revoking one backend removes it from the pool.
    ok(host, ID, "apply-lb-rules", lb("roundrobin", true, false));
    std::thread::sleep(Duration::from_millis(300));
    let two = counts(&up, vip, 20);
    assert_eq!(
        two,
        BTreeMap::from([("b01".into(), 10), ("b02".into(), 10)])
    );

    // Executor restart keeps the same haproxy.
    let hpid = read_pid(&hpid_file).unwrap();
    let host = tb.host(0);
    host.restart().unwrap();
    let host = &*host;
    assert_eq!(read_pid(&hpid_file), Some(hpid));
    assert!(runs(hpid, "haproxy"));

    // Revoking the rule closes the port and stops haproxy.
    ok(host, ID, "apply-lb-rules", lb("roundrobin", true, true));
    assert!(matches!(
        tcp_probe(&up, vip),
        Err(ProbeError::Refused) | Err(ProbeError::Timeout)
    ));
    assert!(!runs(hpid, "haproxy"), "haproxy left running without rules");
    assert!(!hpid_file.exists());
    ok(host, ID, "destroy-network", json!({}));
}

/// A UDP backend answering every datagram with its name, on a thread that
/// lives as long as the test process.
fn udp_backend(ns: &Path, bind: SocketAddr, name: &'static str) {
    let sock = in_netns(ns, move || UdpSocket::bind(bind))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(name.as_bytes(), peer);
        }
    });
}

/// A client socket in `ns` on `bind_ip` and a source port never used before
/// in this run: one new conntrack flow. (A kernel-chosen ephemeral port may
/// repeat one whose conntrack entry, and so its backend, is still alive from
/// an earlier step, which would blur the counts.)
fn udp_client(ns: &Path, bind_ip: &str) -> UdpSocket {
    static NEXT_PORT: AtomicU16 = AtomicU16::new(41000);
    let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
    let addr: SocketAddr = format!("{bind_ip}:{port}").parse().unwrap();
    let s = in_netns(ns, move || UdpSocket::bind(addr))
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    s
}

/// One question on the socket's flow (resent on the same flow once); the
/// answering backend's name. The answer must come from the public address
/// (un-DNAT by conntrack).
fn ask(s: &UdpSocket, vip: SocketAddr) -> Option<String> {
    let mut buf = [0u8; 64];
    for _ in 0..2 {
        s.send_to(b"who", vip).ok()?;
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            assert_eq!(from, vip, "reply not translated back to the public address");
            return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    None
}

/// `n` flows, each from its own source port of `bind_ip`: who answered.
fn udp_counts(ns: &Path, bind_ip: &str, vip: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let who = ask(&udp_client(ns, bind_ip), vip).unwrap_or_else(|| "<none>".into());
        *m.entry(who).or_insert(0) += 1;
    }
    m
}

fn udp_lb(algorithm: &str, revoke_b3: bool, revoke_rule: bool) -> Value {
    json!({"lb_rules": [{"id": "21", "name": "dns", "publicIp": "203.0.113.10", "publicPort": "53",
        "privatePort": "5353", "protocol": "udp", "algorithm": algorithm, "revoke": revoke_rule,
        "backends": [
            {"ip": "10.1.1.10", "port": "5353", "revoked": false},
            {"ip": "10.1.1.11", "port": "5353", "revoked": false},
            {"ip": "10.1.1.12", "port": "5353", "revoked": revoke_b3}]}]})
}

/// UDP load balancing: nftables DNAT in the namespace, gated by
/// the firewall, three backends answering with their names.
#[test]
fn udp_load_balancing_in_nftables_firewall_revoke_and_restart() {
    if skip_unless_root("udp_load_balancing_in_nftables_firewall_revoke_and_restart") {
        return;
    }
    const ID: u32 = 4410;
    const CLIENT: &str = "203.0.113.1";
    const CLIENT2: &str = UPSTREAM_ADDR;
    let mut tb = three_vm_testbed("nbu");
    for (vm, name) in [("vm1", "b01"), ("vm2", "b02"), ("vm3", "b03")] {
        let ip = tb.vm(vm).ip().to_string();
        udp_backend(
            &tb.vm(vm).path(),
            format!("{ip}:5353").parse().unwrap(),
            name,
        );
    }
    let up = tb.upstream.path();
    let host = tb.host(0);
    open_state_parent(host);
    let _reaper = Reaper(host.state_dir());
    host.start_executor().unwrap();
    let host = &*host;
    implement_with_public_ip(host, ID);
    let vip: SocketAddr = "203.0.113.10:53".parse().unwrap();
    let ns = format!("cs-net-{ID}");
    let lb_chain = |host: &Host| {
        host.exec(&["ip", "netns", "exec", &ns, "nft", "list", "ruleset"])
            .unwrap()
    };

    // Rule in place, firewall closed (no ingress rule for the port): silent.
    ok(
        host,
        ID,
        "apply-lb-rules",
        udp_lb("roundrobin", false, false),
    );
    let rules = lb_chain(host);
    assert!(rules.contains("jump lb_udp"), "{rules}");
    assert!(rules.contains("udp dport 53 dnat ip to numgen inc mod 3 map { 0 : 10.1.1.10 . 5353, 1 : 10.1.1.11 . 5353, 2 : 10.1.1.12 . 5353 }"), "{rules}");
    assert_eq!(
        udp_counts(&up, CLIENT, vip, 3),
        BTreeMap::from([("<none>".into(), 3)])
    );
    // Only UDP rules: no haproxy.
    let hpid_file = guest_dir(host, ID).join("haproxy/haproxy.pid");
    assert!(!hpid_file.exists(), "haproxy runs for UDP rules only");

    // Firewall open for udp/53: round robin over new flows, 10 each.
    let fw = json!({"default_egress_allow": true, "cidr": "10.1.1.0/24", "rules": [
        {"id": "1", "type": "ingress", "protocol": "udp", "portStart": "53", "portEnd": "53",
         "publicIp": "203.0.113.10", "sourceCidrs": ["0.0.0.0/0"]}]});
    ok(host, ID, "apply-fw-rules", json!({"fw_rules": fw}));
    let rr = eventually(Duration::from_secs(10), || {
        Some(udp_counts(&up, CLIENT, vip, 30)).filter(|m| !m.contains_key("<none>"))
    })
    .unwrap();
    assert_eq!(
        rr,
        BTreeMap::from([("b01".into(), 10), ("b02".into(), 10), ("b03".into(), 10)])
    );

    // source: one client address, one backend, whatever its source port.
    ok(host, ID, "apply-lb-rules", udp_lb("source", false, false));
    for client in [CLIENT, CLIENT2] {
        let m = udp_counts(&up, client, vip, 15);
        assert_eq!(m.len(), 1, "{client}: {m:?}");
        assert!(!m.contains_key("<none>"), "{client}: {m:?}");
    }

    // Revoking a backend removes it from the pool, also for a flow that
    // was already going to it (its conntrack entry is dropped).
    ok(
        host,
        ID,
        "apply-lb-rules",
        udp_lb("roundrobin", false, false),
    );
    let flows: Vec<UdpSocket> = (0..3).map(|_| udp_client(&up, CLIENT)).collect();
    let on_b03 = flows
        .iter()
        .find(|s| ask(s, vip).as_deref() == Some("b03"))
        .expect("one of three round-robin flows goes to b03");
    ok(
        host,
        ID,
        "apply-lb-rules",
        udp_lb("roundrobin", true, false),
    );
    let moved = ask(on_b03, vip);
    assert!(
        matches!(moved.as_deref(), Some("b01") | Some("b02")),
        "{moved:?}"
    );
    let two = udp_counts(&up, CLIENT, vip, 30);
    assert_eq!(
        two,
        BTreeMap::from([("b01".into(), 15), ("b02".into(), 15)])
    );

    // Executor restart: the rules are re-created from the persisted state.
    let host = tb.host(0);
    host.restart().unwrap();
    let host = &*host;
    assert!(lb_chain(host).contains("numgen inc mod 2"));
    assert_eq!(
        udp_counts(&up, CLIENT, vip, 4),
        BTreeMap::from([("b01".into(), 2), ("b02".into(), 2)])
    );
    // Reboot: namespace gone, rebuilt by reconcile with the UDP rule.
    let host = tb.host(0);
    host.kill9();
    host.reboot().unwrap();
    let host = &*host;
    let back = eventually(Duration::from_secs(10), || {
        Some(udp_counts(&up, CLIENT, vip, 4)).filter(|m| !m.contains_key("<none>"))
    })
    .unwrap();
    assert_eq!(back, BTreeMap::from([("b01".into(), 2), ("b02".into(), 2)]));
    assert!(!hpid_file.exists());

    // Revoking the rule makes the port silent, also for a live flow.
    let live = udp_client(&up, CLIENT);
    assert!(ask(&live, vip).is_some());
    ok(host, ID, "apply-lb-rules", udp_lb("roundrobin", true, true));
    assert_eq!(ask(&live, vip), None);
    assert_eq!(
        udp_counts(&up, CLIENT, vip, 3),
        BTreeMap::from([("<none>".into(), 3)])
    );
    assert!(!lb_chain(host).contains("lb_udp"));
    ok(host, ID, "destroy-network", json!({}));
}

/// A shared network, services on a dedicated
/// `extension_ip`, default route via the gateway, no NAT.
#[test]
fn shared_network_services_on_dedicated_extension_ip() {
    if skip_unless_root("shared_network_services_on_dedicated_extension_ip") {
        return;
    }
    const ID: u32 = 4403;
    let mut tb = Testbed::new(
        "nbg",
        TopologyOptions::default().vm("vm1", "10.1.1.10/24", Some("10.1.1.1")),
    );
    let vm1 = tb.vm("vm1").path();
    let mac1 = tb.vm("vm1").mac().to_string();
    let host = tb.host(0);
    open_state_parent(host);
    let _reaper = Reaper(host.state_dir());
    host.start_executor().unwrap();
    let host = &*host;
    let shared = |extra: Value| {
        merged(
            json!({"guest_type": "shared", "extension_ip": "10.1.1.2", "domain": DOMAIN}),
            extra,
        )
    };
    ok(host, ID, "implement-network", shared(json!({})));
    ok(host, ID, "config-dhcp-subnet", shared(json!({})));
    ok(host, ID, "config-dns-subnet", shared(json!({})));
    let mut n = nic(&mac1, "10.1.1.10", "vm1", true);
    n["extension_ip"] = json!("10.1.1.2");
    ok(host, ID, "prepare-nic", shared(n));
    ok(
        host,
        ID,
        "save-vm-data",
        shared(json!({"ip": "10.1.1.10", "vm_data": vm_data("vm1")})),
    );

    let offer = dhcp_discover(&vm1, "eth0", &mac1).unwrap();
    assert_eq!(offer.address.to_string(), "10.1.1.10");
    assert_eq!(
        offer.server.map(|a| a.to_string()).as_deref(),
        Some("10.1.1.2")
    );
    assert_eq!(
        offer.routers,
        vec!["10.1.1.1".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(
        offer.dns.first().map(|a| a.to_string()).as_deref(),
        Some("10.1.1.2")
    );
    assert_eq!(dig1(&vm1, "10.1.1.2", "data-server"), vec!["10.1.1.2"]);
    assert_eq!(dig1(&vm1, "10.1.1.2", "vm1"), vec!["10.1.1.10"]);
    let served = eventually(Duration::from_secs(5), || {
        http_get(
            &vm1,
            "10.1.1.2:80".parse().unwrap(),
            "/latest/meta-data/instance-id",
        )
        .ok()
        .filter(|r| r.0 == 200)
    });
    assert_eq!(served, Some((200, "i-vm1".to_string())));
    // Nothing listens on the gateway address (it is not ours).
    assert!(http_get(&vm1, "10.1.1.1:80".parse().unwrap(), "/latest/user-data").is_err());

    let ns = format!("cs-net-{ID}");
    let routes = host
        .exec(&["ip", "netns", "exec", &ns, "ip", "route"])
        .unwrap();
    assert!(routes.contains("default via 10.1.1.1"), "{routes}");
    let rules = host
        .exec(&["ip", "netns", "exec", &ns, "nft", "list", "ruleset"])
        .unwrap();
    for nat in ["snat to", "dnat to", "masquerade"] {
        assert!(!rules.contains(nat), "{nat} in a shared network:\n{rules}");
    }

    // Reboot: every process and namespace gone, state kept (the emulation
    // does not kill the daemons, so the test does, by PID, like a reboot).
    // Reconcile rebuilds the namespace and the services serve again.
    let old_pid = read_pid(&guest_dir(host, ID).join("dnsmasq/dnsmasq.pid")).unwrap();
    let host = tb.host(0);
    host.kill9();
    assert!(runs(old_pid, "dnsmasq"));
    // SAFETY: plain syscall on the dnsmasq PID verified above.
    unsafe { libc::kill(old_pid as libc::pid_t, libc::SIGKILL) };
    assert!(
        eventually(Duration::from_secs(5), || (!runs(old_pid, "dnsmasq"))
            .then_some(()))
        .is_some()
    );
    host.reboot().unwrap();
    let host = &*host;
    assert_eq!(dig1(&vm1, "10.1.1.2", "data-server"), vec!["10.1.1.2"]);
    let offer = eventually(Duration::from_secs(5), || {
        dhcp_discover(&vm1, "eth0", &mac1).ok()
    });
    assert_eq!(
        offer.map(|o| o.address.to_string()).as_deref(),
        Some("10.1.1.10")
    );
    let served = eventually(Duration::from_secs(5), || {
        http_get(
            &vm1,
            "10.1.1.2:80".parse().unwrap(),
            "/latest/meta-data/instance-id",
        )
        .ok()
        .filter(|r| r.0 == 200)
    });
    assert_eq!(served, Some((200, "i-vm1".to_string())));
    let new_pid = read_pid(&guest_dir(host, ID).join("dnsmasq/dnsmasq.pid")).unwrap();
    if new_pid != old_pid {
        assert!(
            !runs(old_pid, "dnsmasq"),
            "dnsmasq of the old namespace left running"
        );
    }

    ok(host, ID, "destroy-network", json!({}));
    assert!(!guest_dir(host, ID).exists());
    assert!(!runs(new_pid, "dnsmasq"), "dnsmasq survived destroy");
}

/// Modes under the executor's state directory that are not private, by
/// path relative to it: only what dnsmasq reads after it dropped root to
/// its unprivileged user (hosts files on SIGHUP, `hostsdir` by inotify).
/// The directories on the way there are traversable, never listable.
fn dnsmasq_read_path(rel: &Path, is_dir: bool) -> Option<u32> {
    let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
    match (parts.as_slice(), is_dir) {
        ([], true) | (["guest"], true) | (["guest", _], true) | (["guest", _, "dnsmasq"], true) => {
            Some(0o711)
        }
        (["guest", _, "dnsmasq", "hosts.d"], true) => Some(0o755),
        (["guest", _, "dnsmasq", "hosts" | "dhcp-hosts"], false) => Some(0o644),
        (["guest", _, "dnsmasq", "hosts.d", _], false) => Some(0o644),
        _ => None,
    }
}

/// Every path under `root` whose mode gives group or others any access,
/// except exactly the dnsmasq read path above: (path, mode) pairs.
fn non_private_paths(root: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(p) = pending.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
        let mode = meta.permissions().mode() & 0o7777;
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let allowed = dnsmasq_read_path(&rel, meta.is_dir());
        if mode & 0o077 != 0 && allowed != Some(mode) {
            out.push((rel, mode));
        }
    }
    out.sort();
    out
}

/// After a workload covering every kind of file the executor keeps (network
/// state and its record log, VM data and its key, dnsmasq and haproxy,
/// policy-routing tables), nothing in the state directory is open to group
/// or others except what dnsmasq must read as its unprivileged user, and
/// dnsmasq still reads it (a lease added by SIGHUP and a record added by
/// inotify are served).
#[test]
fn state_directory_is_private_after_guest_services_and_pbr() {
    if skip_unless_root("state_directory_is_private_after_guest_services_and_pbr") {
        return;
    }
    const ID: u32 = 4404;
    let mut tb = Testbed::new(
        "nbg",
        TopologyOptions::default()
            .vm("vm1", "10.1.1.10/24", Some("10.1.1.1"))
            .vm_dhcp("vm2", "02:00:00:00:00:44"),
    );
    let (vm1, vm2) = (tb.vm("vm1").path(), tb.vm("vm2").path());
    let mac1 = tb.vm("vm1").mac().to_string();
    let host = tb.host(0);
    open_state_parent(host);
    let _reaper = Reaper(host.state_dir());
    host.start_executor().unwrap();
    let host = &*host;

    // IPv6 too: radvd and its files.
    ok(
        host,
        ID,
        "implement-network",
        json!({"extension_ip": "10.1.1.1", "network_ip6_gateway": "fd00:44::1",
            "network_ip6_cidr": "fd00:44::/64"}),
    );
    ok(
        host,
        ID,
        "assign-ip",
        json!({"public_ip": "203.0.113.10", "public_vlan": "vlan://200",
            "public_gateway": PUBLIC_GATEWAY, "public_cidr": PUBLIC_CIDR, "source_nat": "true"}),
    );
    let scope = json!({"extension_ip": "10.1.1.1", "domain": DOMAIN});
    ok(host, ID, "config-dhcp-subnet", scope.clone());
    ok(host, ID, "config-dns-subnet", scope);
    ok(
        host,
        ID,
        "prepare-nic",
        nic(&mac1, "10.1.1.10", "vm1", true),
    );
    ok(
        host,
        ID,
        "save-vm-data",
        json!({"ip": "10.1.1.10", "vm_data": vm_data("vm1")}),
    );
    ok(
        host,
        ID,
        "save-password",
        json!({"ip": "10.1.1.10", "password": "Pw-private-1"}),
    );
    ok(host, ID, "apply-lb-rules", lb("roundrobin", false, false));
    ok(host, ID, "apply-lb-rules", udp_lb("source", false, false));
    let action = |name: &str, params: Value| {
        let mut body = merged(
            net(ID),
            json!({"action": name, "action-params": params,
                "physical-network-extension-details": physical_details(host),
                "network-extension-details": details(ID)}),
        );
        body["network_id"] = json!(ID.to_string());
        let r = host.client().command("custom-action", &body);
        assert_eq!(r.status, 200, "{name}: {}", r.body);
    };
    action(
        "pbr-create-table",
        json!({"table-id": "100", "table-name": "isp2"}),
    );
    action(
        "pbr-add-route",
        json!({"table": "isp2", "route": "blackhole 10.9.0.0/16"}),
    );
    action(
        "pbr-add-rule",
        json!({"table": "isp2", "rule": "from 10.1.1.0/24 priority 50"}),
    );
    // A record change after the state file exists: the record log.
    ok(
        host,
        ID,
        "add-dns-entry",
        json!({"ip": "10.1.1.20", "hostname": "late"}),
    );
    // A static lease added to the running dnsmasq (SIGHUP).
    ok(
        host,
        ID,
        "add-dhcp-entry",
        nic("02:00:00:00:00:44", "10.1.1.44", "vm2", true),
    );

    let state = host.state_dir();
    for expected in [
        "networks/cs-net-4404.json",
        "networks/cs-net-4404.log",
        "pbr/cs-net-4404.json",
        "guest/vmdata.key",
        "guest/cs-net-4404/vmdata/10.1.1.10.vmdata",
        "guest/cs-net-4404/dnsmasq/dnsmasq.conf",
        "guest/cs-net-4404/dnsmasq/leases",
        "guest/cs-net-4404/haproxy/haproxy.cfg",
        "radvd/cs-net-4404-4404.conf",
    ] {
        assert!(state.join(expected).exists(), "{expected} missing");
    }
    assert_eq!(non_private_paths(&state), Vec::new());

    // dnsmasq, as its unprivileged user, still reads what it must, and
    // records the lease in the private lease file it opened as root.
    let work = tempfile::tempdir().unwrap();
    let lease = dhclient(&vm2, work.path());
    assert!(lease.contains("fixed-address 10.1.1.44;"), "{lease}");
    let leases = guest_dir(host, ID).join("dnsmasq/leases");
    let recorded = eventually(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&leases).ok()?;
        text.contains("02:00:00:00:00:44 10.1.1.44").then_some(text)
    });
    assert!(
        recorded.is_some(),
        "lease not recorded in {}",
        leases.display()
    );
    assert_eq!(non_private_paths(&state), Vec::new());
    assert_eq!(dig1(&vm1, "10.1.1.1", "late"), vec!["10.1.1.20"]);
    assert_eq!(dig1(&vm1, "10.1.1.1", "vm1"), vec!["10.1.1.10"]);

    ok(host, ID, "destroy-network", json!({}));
    assert!(!guest_dir(host, ID).exists());
    assert!(!state.join("pbr/cs-net-4404.json").exists());
}

/// libnftables watches its netlink socket with `select(2)`, and glibc aborts
/// the process on a descriptor of 1024 or more: the descriptors each network
/// holds for its life (metadata and password listeners) must not use up the
/// low numbers, or an executor aborts on a ruleset change after about 500
/// networks.
#[test]
fn network_listeners_leave_the_low_descriptors_free() {
    if skip_unless_root("network_listeners_leave_the_low_descriptors_free") {
        return;
    }
    let mut tb = Testbed::new("nbfd", TopologyOptions::default());
    let host = tb.host(0);
    host.start_executor().unwrap();
    let host = &*host;
    let implement = |id: u32| {
        let (a, b) = (id / 250, id % 250);
        let payload = merged(
            network_payload(
                id,
                1000 + id,
                &format!("10.{a}.{b}.1"),
                &format!("10.{a}.{b}.0/24"),
            ),
            json!({"extension_ip": format!("10.{a}.{b}.1")}),
        );
        let r = host
            .client()
            .command("implement-network", &envelope(host, details(id), payload));
        assert_eq!(r.status, 200, "implement-network {id}: {}", r.body);
    };
    for id in 1..=2 {
        implement(id);
    }
    let pid = host.executor_pid().unwrap();
    let (total_before, low_before) = descriptor_counts(pid);
    for id in 3..=22 {
        implement(id);
    }
    let (total_after, low_after) = descriptor_counts(pid);
    assert!(
        total_after >= total_before + 40,
        "each network holds its two listeners: {total_before} → {total_after} descriptors"
    );
    // Without the move they would take 40 (two per network); a few low
    // numbers come and go with connections and runtime threads.
    assert!(
        low_after < low_before + 20,
        "20 more networks took {} descriptors below 1024 ({low_before} → {low_after})",
        low_after.saturating_sub(low_before)
    );
    // A ruleset change still goes through with the listeners held.
    let r = host.client().command(
        "apply-fw-rules",
        &envelope(
            host,
            details(22),
            merged(
                network_payload(22, 1022, "10.0.22.1", "10.0.22.0/24"),
                json!({"fw_rules": {"default_egress_allow": true, "cidr": "10.0.22.0/24", "rules": []}}),
            ),
        ),
    );
    assert_eq!(r.status, 200, "apply-fw-rules: {}", r.body);
}
