package org.apache.cloudstack.netbridge.e2e;

import org.apache.cloudstack.netbridge.Json;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.function.Consumer;

/**
 * The isolated-network walk-through shared by the end-to-end tests and {@code make demo}: each
 * step sends the commands CloudStack would send and proves the result with packets through the
 * testbed. A failed proof throws {@link AssertionError} naming what was expected and seen.
 */
public final class Scenario {
    public static final String SNAT_IP = "203.0.113.10";
    public static final String STATIC_IP = "203.0.113.11";
    public static final String VM1 = "10.1.1.10";
    public static final String VM2 = "10.1.1.11";

    private final Testbed tb;
    private final CloudStackSim cs;
    private final Consumer<String> log;
    private final String upstream;
    /** True once guest services (DHCP, DNS, metadata) were configured and proven. */
    private boolean guest;
    /** True once the load balancer was configured and proven. */
    private boolean lb;
    /** The firewall rules last applied (apply-fw-rules always sends the full set). */
    private List<Map<String, Object>> rules = List.of();

    public Scenario(Testbed tb, CloudStackSim cs, Consumer<String> log) {
        this.tb = tb;
        this.cs = cs;
        this.log = log;
        this.upstream = Json.str(tb.topology(), "upstream", "addr") + ":"
                + Json.at(tb.topology(), "upstream", "tcp_port");
    }

    public CloudStackSim cs() {
        return cs;
    }

    private String nsName() {
        return "cs-net-" + cs.networkId();
    }

    /** 1-based index of the host the network is on. */
    public int placedHost() {
        return tb.hostIndex(cs.host());
    }

    private void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
        log.accept("   proof: " + what);
    }

    private String cmd(String command, Map<String, Object> extra) throws Transport.CommandFailure {
        String out = cs.command(command, extra);
        log.accept("   " + command + " -> " + (out.length() > 160 ? out.substring(0, 160) + "…" : out)
                + "  [on " + cs.host() + "]");
        return out;
    }

    /** Polls a probe until it matches, bounded (ARP and conntrack settle within a few seconds). */
    private Testbed.Probe until(ProbeCall call, java.util.function.Predicate<Testbed.Probe> ok, int tries)
            throws IOException {
        Testbed.Probe p = call.run();
        for (int k = 1; k < tries && !ok.test(p); k++) {
            try {
                Thread.sleep(250);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                break;
            }
            p = call.run();
        }
        return p;
    }

    interface ProbeCall {
        Testbed.Probe run() throws IOException;
    }

    private Testbed.Probe tcpUntil(String ns, String addr, boolean reached) throws IOException {
        return until(() -> tb.tcp(ns, addr), p -> p.reached == reached, reached ? 20 : 4);
    }

    public void implement() throws Exception {
        log.accept("== implement isolated network " + cs.networkId() + " (ensure-network-device + implement-network)");
        Map<String, Object> d = cs.ensure();
        log.accept("   ensure-network-device -> " + Json.write(d));
        check(placedHost() > 0, "placed on executor " + cs.host() + " (host " + placedHost() + ")");
        cmd("implement-network", Json.obj("extension_ip", "10.1.1.1"));
        List<Object> names = tb.namespaces(placedHost());
        check(names.contains(nsName()), "router namespace " + nsName() + " exists on host " + placedHost() + ": " + names);
        check(tb.ping("vm1", "10.1.1.1"), "vm1 pings its gateway 10.1.1.1 across the guest segment");
    }

    public void sourceNat() throws Exception {
        log.accept("== source NAT: assign-ip " + SNAT_IP + " (source_nat=true)");
        cmd("assign-ip", publicIp(SNAT_IP, true));
        Testbed.Probe p = until(() -> tb.tcp("vm1", upstream), x -> SNAT_IP.equals(x.peer), 20);
        check(SNAT_IP.equals(p.peer), "vm1 -> upstream " + upstream + ": server saw " + p.peer + " (" + p + ")");
        Testbed.Probe q = until(() -> tb.tcp("vm2", upstream), x -> SNAT_IP.equals(x.peer), 20);
        check(SNAT_IP.equals(q.peer), "vm2 (other host's segment) -> upstream: server saw " + q.peer);
    }

    public static final String DOMAIN = "e2e.test";

    private Map<String, Object> nic(String mac, String ip, String name) {
        return Json.obj("mac", mac, "ip", ip, "hostname", name, "default_nic", "true", "netmask", "255.255.255.0",
                "gateway", "10.1.1.1", "dns", "10.1.1.1", "domain", DOMAIN, "extension_ip", "10.1.1.1",
                "nic_id", "nic-" + name);
    }

    private String vmMac(String name) {
        for (Object o : Json.list(tb.topology(), "vms")) {
            if (name.equals(Json.str(o, "name"))) {
                return Json.str(o, "mac");
            }
        }
        throw new AssertionError("no vm " + name);
    }

    /**
     * Guest services: DHCP and DNS scopes, both VM NICs prepared, vm1's metadata; proven by a
     * DHCP offer, a DNS answer and the metadata server. Returns false (and logs why) when the
     * engine of this build does not serve guest services yet.
     */
    public boolean guestServices() throws Exception {
        log.accept("== guest services: config-dhcp-subnet, config-dns-subnet, prepare-nic vm1 + vm2, save-vm-data vm1");
        Map<String, Object> scope = Json.obj("extension_ip", "10.1.1.1", "dns", "10.1.1.1", "domain", DOMAIN);
        try {
            cmd("config-dhcp-subnet", scope);
        } catch (Transport.CommandFailure e) {
            if (e.getMessage().contains("unsupported")) {
                log.accept("   skipped: the executor of this build does not serve guest services yet (" + e.getMessage() + ")");
                return false;
            }
            throw e;
        }
        cmd("config-dns-subnet", scope);
        cmd("prepare-nic", nic(vmMac("vm1"), VM1, "vm1"));
        cmd("prepare-nic", nic(vmMac("vm2"), VM2, "vm2"));
        cmd("save-vm-data", Json.obj("ip", VM1, "vm_data", List.of(
                Json.obj("dir", "userdata", "file", "user-data", "content", "#cloud-config vm1"),
                Json.obj("dir", "metadata", "file", "instance-id", "content", "i-vm1"))));
        guest = true;
        proveGuest(20);
        return true;
    }

    private void proveGuest(int tries) throws Exception {
        Map<String, Object> offer = tb.request(Json.obj("op", "dhcp", "vm", "vm1"));
        for (int k = 1; k < tries && !Boolean.TRUE.equals(offer.get("reached")); k++) {
            Thread.sleep(250);
            offer = tb.request(Json.obj("op", "dhcp", "vm", "vm1"));
        }
        check(VM1.equals(offer.get("address")) && List.of("10.1.1.1").equals(offer.get("routers")),
                "DHCP offer to vm1's MAC: " + offer.get("address") + ", routers " + offer.get("routers"));
        Map<String, Object> dns = tb.request(Json.obj("op", "dig", "ns", "vm1", "server", "10.1.1.1", "name",
                "vm2." + DOMAIN, "type", "A"));
        for (int k = 1; k < tries && !List.of(VM2).equals(dns.get("answers")); k++) {
            Thread.sleep(250);
            dns = tb.request(Json.obj("op", "dig", "ns", "vm1", "server", "10.1.1.1", "name", "vm2." + DOMAIN,
                    "type", "A"));
        }
        check(List.of(VM2).equals(dns.get("answers")), "DNS: vm2." + DOMAIN + " -> " + dns.get("answers"));
        Testbed.Probe md = until(() -> tb.http("vm1", "10.1.1.1:80", "/latest/user-data"),
                p -> p.reached && "#cloud-config vm1".equals(String.valueOf(p.raw.get("body")).trim()), tries);
        check(md.reached && "#cloud-config vm1".equals(String.valueOf(md.raw.get("body")).trim()),
                "metadata: vm1 GET /latest/user-data -> " + md.raw.get("status") + " '" + md.raw.get("body") + "'");
    }

    public void staticNat() throws Exception {
        log.accept("== static NAT: assign-ip " + STATIC_IP + ", add-static-nat -> vm2 " + VM2);
        cmd("assign-ip", publicIp(STATIC_IP, false));
        cmd("add-static-nat", Json.obj("public_ip", STATIC_IP, "private_ip", VM2));
        Testbed.Probe closed = tcpUntil("upstream", STATIC_IP + ":22", false);
        check(!closed.reached, "upstream -> " + STATIC_IP + ":22 before a firewall rule: " + closed);
        firewall(List.of(rule("1", STATIC_IP, 22)));
        Testbed.Probe in = tcpUntil("upstream", STATIC_IP + ":22", true);
        check(in.reached && "vm2".equals(in.name), "upstream -> " + STATIC_IP + ":22 reaches vm2: " + in);
        Testbed.Probe out = until(() -> tb.tcp("vm2", upstream), x -> STATIC_IP.equals(x.peer), 20);
        check(STATIC_IP.equals(out.peer), "vm2 -> upstream leaves as " + out.peer);
    }

    public void portForward() throws Exception {
        log.accept("== port forwarding " + SNAT_IP + ":2222 -> vm1 " + VM1 + ":22");
        cmd("add-port-forward", pf());
        Testbed.Probe closed = tcpUntil("upstream", SNAT_IP + ":2222", false);
        check(!closed.reached, "closed until a firewall rule allows it: " + closed);
        firewall(List.of(rule("1", STATIC_IP, 22), rule("2", SNAT_IP, 2222)));
        Testbed.Probe in = tcpUntil("upstream", SNAT_IP + ":2222", true);
        check(in.reached && "vm1".equals(in.name), "upstream -> " + SNAT_IP + ":2222 reaches vm1: " + in);
        cmd("delete-port-forward", pf());
        Testbed.Probe gone = tcpUntil("upstream", SNAT_IP + ":2222", false);
        check(!gone.reached, "after delete-port-forward: " + gone);
    }

    public void firewallClosed() throws Exception {
        log.accept("== firewall: only " + STATIC_IP + ":22 allowed; port 80 of the same VM stays closed");
        firewall(List.of(rule("1", STATIC_IP, 22)));
        Testbed.Probe http = tcpUntil("upstream", STATIC_IP + ":80", false);
        check(!http.reached, "upstream -> " + STATIC_IP + ":80 without a rule: " + http);
        Testbed.Probe ssh = tcpUntil("upstream", STATIC_IP + ":22", true);
        check(ssh.reached, "upstream -> " + STATIC_IP + ":22 with its rule: " + ssh);
    }

    private Map<String, Object> lbRules(boolean revoke) {
        return Json.obj("lb_rules", List.of(Json.obj("id", "7", "name", "web", "publicIp", SNAT_IP, "publicPort", "80",
                "privatePort", "22", "protocol", "tcp", "algorithm", "roundrobin", "revoke", revoke, "backends", List.of(
                        Json.obj("ip", VM1, "port", "22", "revoked", false),
                        Json.obj("ip", VM2, "port", "22", "revoked", false)))));
    }

    /**
     * Load balancing: {@code SNAT_IP:80} round robin over vm1 and vm2 (their port 22 servers),
     * proven by both names answering connections from upstream. Only with guest services.
     */
    public boolean loadBalancer() throws Exception {
        if (!guest) {
            log.accept("== load balancing: skipped (needs the guest services of the executor)");
            return false;
        }
        log.accept("== load balancing: " + SNAT_IP + ":80 round robin -> vm1:22, vm2:22");
        List<Map<String, Object>> withLb = new ArrayList<>(rules);
        withLb.add(rule("3", SNAT_IP, 80));
        firewall(withLb);
        cmd("apply-lb-rules", lbRules(false));
        lb = true;
        proveLb(20);
        return true;
    }

    private void proveLb(int tries) throws Exception {
        java.util.Set<String> names = new java.util.TreeSet<>();
        for (int k = 0; k < tries * 2 && names.size() < 2; k++) {
            Testbed.Probe p = tb.tcp("upstream", SNAT_IP + ":80");
            if (p.reached && p.name != null) {
                names.add(p.name);
            } else {
                Thread.sleep(250);
            }
        }
        check(names.equals(new java.util.TreeSet<>(List.of("vm1", "vm2"))),
                "upstream -> " + SNAT_IP + ":80 answered by " + names);
    }

    /** Connectivity that must survive a failover (egress SNAT and static NAT ingress). */
    public void connectivity(int tries) throws Exception {
        long t0 = System.nanoTime();
        Testbed.Probe p = until(() -> tb.tcp("vm1", upstream), x -> SNAT_IP.equals(x.peer), tries);
        log.accept(String.format("   (vm1 egress answered after %.2f s)", (System.nanoTime() - t0) / 1e9));
        check(SNAT_IP.equals(p.peer), "vm1 -> upstream leaves as " + p.peer + " (" + p + ")");
        Testbed.Probe in = until(() -> tb.tcp("upstream", STATIC_IP + ":22"), x -> "vm2".equals(x.name), tries);
        check("vm2".equals(in.name), "upstream -> " + STATIC_IP + ":22 reaches vm2: " + in);
        if (guest) {
            proveGuest(tries);
        }
        if (lb) {
            proveLb(tries);
        }
    }

    /**
     * Host death and failover: host's executor killed and namespaces deleted; the next command
     * (ensure-network-device) moves the network with its state. Returns seconds from that first
     * command until both proofs pass again.
     */
    public double failover() throws Exception {
        int from = placedHost();
        log.accept("== failover: host " + from + " dies (executor killed, its namespaces deleted)");
        if (Boolean.getBoolean("netbridge.e2e.debug")) {
            log.accept("   old router: " + tb.request(Json.obj("op", "neigh", "ns", "h" + from + ":" + nsName())));
        }
        Map<String, Object> killed = tb.killHost(from);
        check(Boolean.TRUE.equals(killed.get("ok")), "host " + from + " is gone: deleted " + killed.get("deleted")
                + String.format(", its router links left the segments within %.2f s", ((Number) killed.get("links_gone_secs")).doubleValue()));
        Testbed.Probe dead = tb.tcp("vm1", upstream);
        check(!dead.reached, "vm1 has no way out while nothing serves the network: " + dead);
        long t0 = System.nanoTime();
        Map<String, Object> d = cs.ensure();
        log.accept(String.format("   ensure-network-device -> %s (%.2f s: health probes, move, state replay)",
                Json.write(d), (System.nanoTime() - t0) / 1e9));
        check(placedHost() > 0 && placedHost() != from, "network moved to host " + placedHost());
        if (Boolean.getBoolean("netbridge.e2e.debug")) {
            log.accept("   vm1 neigh: " + tb.request(Json.obj("op", "neigh", "ns", "vm1")).get("neigh"));
            log.accept("   upstream neigh: " + tb.request(Json.obj("op", "neigh", "ns", "upstream")).get("neigh"));
        }
        if (Boolean.getBoolean("netbridge.e2e.debug")) {
            log.accept("   router: " + tb.request(Json.obj("op", "neigh", "ns", "h" + placedHost() + ":" + nsName())));
        }
        connectivity(120);
        if (Boolean.getBoolean("netbridge.e2e.debug")) {
            log.accept("   vm1 neigh: " + tb.request(Json.obj("op", "neigh", "ns", "vm1")).get("neigh"));
            log.accept("   upstream neigh: " + tb.request(Json.obj("op", "neigh", "ns", "upstream")).get("neigh"));
            log.accept("   router: " + tb.request(Json.obj("op", "neigh", "ns", "h" + placedHost() + ":" + nsName())));
        }
        double secs = (System.nanoTime() - t0) / 1e9;
        List<Object> names = tb.namespaces(placedHost());
        check(names.contains(nsName()), "router namespace on host " + placedHost() + ": " + names);
        log.accept(String.format("   failover: connectivity back %.2f s after the first command following the failure", secs));
        return secs;
    }

    /**
     * Key rotation: executors switch to {@code newKey}; a command with the old key is refused;
     * after {@code updateRegistration} (updateRegisteredExtension) commands succeed again.
     */
    public void rotateKey(String newKey, ThrowingRunnable updateRegistration) throws Exception {
        log.accept("== key rotation: executors' key files replaced");
        tb.rotateKey(newKey);
        try {
            cs.raw("apply-fw-rules", Json.obj("fw_rules", fwRules(List.of(rule("1", STATIC_IP, 22)))));
            throw new AssertionError("a command signed with the old key was accepted");
        } catch (Transport.CommandFailure e) {
            check(e.getMessage().contains("refused") && e.getMessage().contains("401"),
                    "old key refused: " + e);
        }
        updateRegistration.run();
        log.accept("   registration updated with the new executor.key");
        firewall(rules);
        connectivity(20);
    }

    /**
     * The operator moves the network by changing the registration's {@code hosts}: the very next
     * command places it on the remaining host, replays its state there, removes it from the old
     * one, and traffic flows through the new router.
     */
    public void moveHosts(ThrowingRunnable updateRegistration) throws Exception {
        int from = placedHost();
        updateRegistration.run();
        long t0 = System.nanoTime();
        Map<String, Object> d = cs.ensure();
        log.accept(String.format("   next command: ensure-network-device -> %s (%.2f s: move and state replay)",
                Json.write(d), (System.nanoTime() - t0) / 1e9));
        check(placedHost() > 0 && placedHost() != from, "network placed on host " + placedHost() + ", no longer on host " + from);
        check(tb.namespaces(placedHost()).contains(nsName()), "router namespace " + nsName() + " now on host " + placedHost());
        check(!tb.namespaces(from).contains(nsName()), "host " + from + " no longer holds " + nsName());
        connectivity(60);
    }

    /** destroy-network; nothing is left on either host. */
    public void destroy() throws Exception {
        log.accept("== destroy-network");
        cmd("destroy-network", Map.of());
        for (int h = 1; h <= Json.list(tb.topology(), "host_list").size(); h++) {
            List<Object> left = tb.namespaces(h);
            check(!left.contains(nsName()), "host " + h + " has no " + nsName() + ": " + left);
        }
        Testbed.Probe p = tb.tcp("vm1", upstream);
        check(!p.reached, "vm1 has no way out any more: " + p);
    }

    public void firewall(List<Map<String, Object>> rules) throws Exception {
        this.rules = rules;
        cmd("apply-fw-rules", Json.obj("fw_rules", fwRules(rules)));
    }

    public static Map<String, Object> fwRules(List<Map<String, Object>> rules) {
        return Json.obj("default_egress_allow", true, "cidr", "10.1.1.0/24", "rules", new ArrayList<Object>(rules));
    }

    public static Map<String, Object> rule(String id, String publicIp, int port) {
        return Json.obj("id", id, "type", "ingress", "protocol", "tcp", "portStart", Integer.toString(port),
                "portEnd", Integer.toString(port), "publicIp", publicIp, "sourceCidrs", List.of("0.0.0.0/0"));
    }

    public static Map<String, Object> publicIp(String ip, boolean sourceNat) {
        return Json.obj("public_ip", ip, "public_vlan", "vlan://200", "public_gateway", "203.0.113.1",
                "public_cidr", "203.0.113.0/24", "source_nat", Boolean.toString(sourceNat));
    }

    public static Map<String, Object> pf() {
        return Json.obj("public_ip", SNAT_IP, "public_port", "2222", "private_ip", VM1, "private_port", "22",
                "protocol", "tcp");
    }

    /** A step that may throw. */
    public interface ThrowingRunnable {
        void run() throws Exception;
    }
}
