package org.apache.cloudstack.netbridge.demo;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.stream.Stream;
import org.apache.cloudstack.netbridge.NetBridge;
import org.apache.cloudstack.netbridge.NetBridgeConfig;
import org.apache.cloudstack.netbridge.NetBridgeException;
import org.apache.cloudstack.netbridge.e2e.CloudStackSim;
import org.apache.cloudstack.netbridge.e2e.ControlPlane;
import org.apache.cloudstack.netbridge.e2e.JniTransport;
import org.apache.cloudstack.netbridge.e2e.Scenario;
import org.apache.cloudstack.netbridge.e2e.Testbed;

/**
 * `make demo`: plays the management server through JNI on a throw-away SQLite registry.
 *
 * <p>As root (with {@code target/debug/examples/testbed} built), it drives a real isolated
 * network: two emulated KVM hosts run the executor in namespaces; the demo creates and registers
 * the extension, generates offerings, implements the network, assigns the source-NAT address,
 * enables static NAT, port forwarding, firewall, DHCP/DNS/metadata and load balancing, and proves
 * each step with a packet (the upstream server reports the address it saw; connections from
 * outside reach or are refused). Then updateRegisteredExtension rotates executor.key and moves
 * the registration's hosts, each taking effect on the very next command (proven with packets),
 * and everything is torn down. Pass {@code --failover} to also kill the network's host
 * and watch it move. Exits non-zero when a step or its proof fails.
 *
 * <p>Otherwise it shows the control plane only: create, register, rotate executor details,
 * generate offerings, an API error, clean up. Pass a directory as argument to keep the registry.
 */
public final class Demo {
    private static final String SERVICES = "Dhcp,Dns,UserData,SourceNat,StaticNat,PortForwarding,Firewall,Lb,NetworkACL,CustomAction";
    private static final String CAPABILITIES = "{\"SourceNat\":{\"SupportedSourceNatTypes\":\"peraccount\"},"
            + "\"Lb\":{\"SupportedLBAlgorithms\":\"roundrobin,leastconn,source\",\"SupportedProtocols\":\"tcp,udp\"}}";

    private Demo() {
    }

    public static void main(String[] args) throws IOException {
        Path log = logToFile();
        System.out.println("(library log records: " + log + ")");
        boolean failover = List.of(args).contains("--failover");
        args = Stream.of(args).filter(a -> !a.startsWith("--")).toArray(String[]::new);
        String reason = Testbed.unavailableReason();
        if (reason == null) {
            System.exit(network(args.length > 0 ? Path.of(args[0]) : null, failover) ? 0 : 1);
        }
        System.out.println("(" + reason.replace("; skipped", "") + ": control-plane walk-through only)");
        boolean keep = args.length > 0;
        Path dir = keep ? Files.createDirectories(Path.of(args[0])) : Files.createTempDirectory("netbridge-demo-");
        System.out.println("netbridge " + NetBridge.nativeVersion() + ", registry in " + dir);
        boolean failed = false;
        try (NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir))) {
            String name = "netbridge-demo-" + UUID.randomUUID().toString().substring(0, 8);
            String pn = UUID.randomUUID().toString();

            Map<String, String> create = params("name", name, "type", "NetworkOrchestrator",
                    "description", "netbridge reference extension");
            NetBridge.putDetails(create, "details", params("network.services", SERVICES,
                    "network.service.capabilities", CAPABILITIES));
            String created = step(b, "createExtension", create);
            String id = idOf(created);

            Map<String, String> register = params("extensionid", id, "resourceid", pn,
                    "resourcetype", "PhysicalNetwork");
            NetBridge.putDetails(register, "details", params("hosts", "192.0.2.10,192.0.2.11",
                    "executor.key", "demo-shared-key-" + UUID.randomUUID()));
            step(b, "registerExtension", register);

            System.out.println("\n== updateRegisteredExtension (typed builder; executor.key stays hidden and kept)");
            System.out.println(b.updateRegisteredExtension()
                    .extensionId(id).resourceId(pn).resourceType("PhysicalNetwork")
                    .details(params("hosts", "192.0.2.10,192.0.2.11,192.0.2.12", "executor.port", "8443"))
                    .call());

            step(b, "listExtensions", params("id", id));
            step(b, "listNetworkServiceProviders", params("physicalnetworkid", pn));
            step(b, "generateNetworkOfferings", params("extensionid", id, "offeringtype", "isolated"));

            System.out.println("\n== deleteExtension while registered (an API error, as an exception)");
            try {
                b.api("deleteExtension", params("id", id));
            } catch (NetBridgeException e) {
                System.out.println(e);
            }

            step(b, "unregisterExtension", register);
            step(b, "deleteExtension", params("id", id));
        } catch (NetBridgeException e) {
            System.out.println("failed: " + e);
            failed = true;
        } finally {
            if (!keep) {
                deleteTree(dir);
            }
        }
        if (failed) {
            System.exit(1);
        }
    }

    /** The real network lifecycle against executors in namespaces; true on success. */
    private static boolean network(Path keepDir, boolean failover) throws IOException {
        Path dir = keepDir != null ? Files.createDirectories(keepDir) : Files.createTempDirectory("netbridge-demo-");
        System.out.println("netbridge " + NetBridge.nativeVersion() + ", registry (SQLite) in " + dir);
        System.out.println("\n== starting the testbed: 2 KVM hosts with executors (TLS, pinned, HMAC), "
                + "guest and public segments, upstream, vm1 and vm2, management namespace");
        long t0 = System.nanoTime();
        try (Testbed tb = Testbed.start("nbdm")) {
            System.out.printf("   ready in %.1f s: executors %s, mgmt netns %s, VMs %s%n", (System.nanoTime() - t0) / 1e9,
                    tb.str("hosts"), tb.str("mgmt_netns"), tb.topology().get("vms"));
            NetBridgeConfig config = NetBridgeConfig.builder().database(dir.resolve("netbridge.db"))
                    .keyFile(dir.resolve("secret.key")).dispatchNetns(Path.of(tb.str("mgmt_netns"))).build();
            try (NetBridge b = NetBridge.open(config)) {
                ControlPlane cp = new ControlPlane(b, System.out::println);
                System.out.println("\n== createExtension (NetworkOrchestrator, reference services)");
                cp.createExtension("netbridge-demo-" + UUID.randomUUID().toString().substring(0, 8));
                System.out.println("\n== registerExtension on physical network " + cp.physicalNetworkId
                        + " (hosts = both executors, executor.key hidden, pinned fingerprint)");
                String registered = cp.register(ControlPlane.registrationDetails(tb, tb.str("executor.key")));
                if (registered.contains(tb.str("executor.key"))) {
                    throw new AssertionError("the hidden executor.key was returned");
                }
                System.out.println("   proof: executor.key is not in the answer");
                System.out.println("\n== generateNetworkOfferings (isolated)");
                cp.offerings();

                CloudStackSim cs = new CloudStackSim(new JniTransport(b, cp.extensionId, cp.physicalNetworkId), 209, null);
                Scenario s = new Scenario(tb, cs, System.out::println);
                System.out.println();
                s.implement();
                s.sourceNat();
                s.guestServices();
                s.staticNat();
                s.portForward();
                s.firewallClosed();
                s.loadBalancer();
                if (failover) {
                    s.failover();
                }

                String newKey = "demo-rotated-key-" + UUID.randomUUID();
                System.out.println("\n== updateRegisteredExtension rotates executor.key (no restart anywhere)");
                s.rotateKey(newKey, () -> {
                    String json = cp.updateDetails(ControlPlane.registrationDetails(tb, newKey));
                    System.out.println("   updateRegisteredExtension ->");
                    System.out.println(json);
                    if (json.contains(newKey)) {
                        throw new AssertionError("the hidden executor.key was returned");
                    }
                    System.out.println("   proof: the new executor.key is stored (hidden: not in the answer)");
                });

                int from = s.placedHost();
                int to = from == 1 ? 2 : 1;
                System.out.println("\n== updateRegisteredExtension moves hosts: only host " + to + " (" + tb.hostAddr(to)
                        + ") serves the physical network from now on; executor.key not re-sent, kept because hidden");
                s.moveHosts(() -> {
                    String json = b.updateRegisteredExtension().extensionId(cp.extensionId)
                            .resourceId(cp.physicalNetworkId).resourceType("PhysicalNetwork")
                            .details(moved(ControlPlane.registrationDetails(tb, newKey), tb.hostAddr(to))).call();
                    System.out.println("   updateRegisteredExtension ->");
                    System.out.println(json);
                });
                System.out.println("\n== unregisterExtension while the network exists");
                try {
                    cp.unregister();
                    throw new AssertionError("unregister was allowed while a network uses the provider");
                } catch (NetBridgeException e) {
                    System.out.println("   proof: refused: " + e.getText());
                }
                System.out.println();
                s.destroy();
                System.out.println("\n== unregisterExtension, deleteExtension");
                cp.unregister();
                cp.delete();
                List<Object> left1 = tb.namespaces(1);
                List<Object> left2 = tb.namespaces(2);
                if (!left1.isEmpty() || !left2.isEmpty()) {
                    throw new AssertionError("namespaces left: host1 " + left1 + ", host2 " + left2);
                }
                System.out.println("   proof: no router namespace left on either host");
            }
            System.out.printf("%nDEMO OK: every step proven with packets (%.1f s)%n", (System.nanoTime() - t0) / 1e9);
            return true;
        } catch (AssertionError | NetBridgeException | org.apache.cloudstack.netbridge.e2e.Transport.CommandFailure e) {
            System.out.println("\nDEMO FAILED: " + e);
            return false;
        } catch (Exception e) {
            System.out.println("\nDEMO FAILED: " + e);
            return false;
        } finally {
            if (keepDir == null) {
                deleteTree(dir);
            }
        }
    }

    /** Registration details without the hidden key (kept by the store) and with one host. */
    private static Map<String, String> moved(Map<String, String> details, String host) {
        Map<String, String> d = new LinkedHashMap<>(details);
        d.remove("executor.key");
        d.put("hosts", host);
        return d;
    }

    /**
     * The library's log records go to a file so that the demo's output reads as steps and
     * proofs.
     */
    private static Path logToFile() throws IOException {
        Path file = Testbed.repoRoot().resolve("target").resolve("netbridge-demo.log");
        Files.createDirectories(file.getParent());
        java.util.logging.FileHandler handler = new java.util.logging.FileHandler(file.toString(), false);
        handler.setFormatter(new java.util.logging.SimpleFormatter());
        java.util.logging.Logger root = java.util.logging.Logger.getLogger("");
        for (java.util.logging.Handler h : root.getHandlers()) {
            root.removeHandler(h);
        }
        root.addHandler(handler);
        return file;
    }

    private static String step(NetBridge b, String command, Map<String, String> p) {
        System.out.println("\n== " + command + " " + p.keySet().stream()
                .filter(k -> !k.startsWith("details")).map(k -> k + "=" + p.get(k)).reduce((x, y) -> x + " " + y)
                .orElse(""));
        String json = b.api(command, p);
        System.out.println(json);
        return json;
    }

    private static Map<String, String> params(String... kv) {
        Map<String, String> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) {
            m.put(kv[i], kv[i + 1]);
        }
        return m;
    }

    private static String idOf(String json) {
        int k = json.indexOf("\"id\"");
        int start = json.indexOf('"', json.indexOf(':', k) + 1) + 1;
        return json.substring(start, json.indexOf('"', start));
    }

    private static void deleteTree(Path dir) throws IOException {
        List<Path> paths = new ArrayList<>();
        try (Stream<Path> walk = Files.walk(dir)) {
            walk.forEach(paths::add);
        }
        paths.sort(Comparator.reverseOrder());
        for (Path p : paths) {
            Files.deleteIfExists(p);
        }
    }
}
