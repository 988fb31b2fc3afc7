package org.apache.cloudstack.netbridge.e2e;

import org.apache.cloudstack.netbridge.Json;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The scenario exactly as an unmodified CloudStack 4.23 runs it: {@code netbridge-entrypoint}
 * executed as a process per command with a payload file, against the two-host testbed (real
 * executors in namespaces, real packets). Root only.
 */
class EntrypointE2eTest {
    private static Testbed tb;

    @BeforeAll
    static void start() throws Exception {
        String reason = Testbed.unavailableReason();
        Assumptions.assumeTrue(reason == null, reason);
        // Per-host certificates: executor.fingerprint is a comma list here.
        tb = Testbed.start("nbt", "--per-host-certs");
    }

    @AfterAll
    static void stop() {
        if (tb != null) {
            tb.close();
        }
    }

    private static EntrypointTransport transport(Path dir) throws Exception {
        return new EntrypointTransport(Testbed.entrypoint(), tb.mgmtNetnsName(), dir);
    }

    @Test
    void isolatedNetworkLifecycleThroughTheEntryPoint(@TempDir Path dir) throws Exception {
        String key = tb.str("executor.key");
        CloudStackSim cs = new CloudStackSim(transport(dir), 5, CloudStackSim.physicalDetails(tb, key));
        Scenario s = new Scenario(tb, cs, System.out::println);
        s.implement();
        s.sourceNat();
        s.guestServices();
        s.staticNat();
        s.portForward();
        s.firewallClosed();
        s.loadBalancer();
        String newKey = "e2e-rotated-key-" + Long.toHexString(System.nanoTime()) + "-0123456789";
        try {
            s.rotateKey(newKey, () -> cs.setPhysicalDetails(CloudStackSim.physicalDetails(tb, newKey)));
        } finally {
            // Later tests of this class use the topology's key again.
            tb.rotateKey(key);
            cs.setPhysicalDetails(CloudStackSim.physicalDetails(tb, key));
        }
        s.destroy();
        assertEquals(List.of(), tb.namespaces(1));
        assertEquals(List.of(), tb.namespaces(2));
    }

    private static Map<String, Object> fakeDetails(String hostPort) {
        Map<String, Object> d = CloudStackSim.physicalDetails(tb, tb.str("executor.key"));
        d.put("hosts", hostPort);
        return d;
    }

    @Test
    void unknownCommandIsAUsageError(@TempDir Path dir) throws Exception {
        EntrypointTransport t = transport(dir);
        CloudStackSim cs = new CloudStackSim(t, 77, CloudStackSim.physicalDetails(tb, tb.str("executor.key")));
        Map.Entry<Integer, String> r = t.run("frobnicate-network", cs.envelope(cs.networkFields()), 10);
        assertEquals(1, r.getKey(), r.getValue());
        System.out.println("unknown command: exit 1, stderr: " + t.lastStderr);
        assertTrue(t.lastStderr.contains("frobnicate-network"), t.lastStderr);
        assertEquals(List.of(), tb.namespaces(1));
        assertEquals(List.of(), tb.namespaces(2));
    }

    @Test
    void hangingRefusingAndGarbageExecutorsFailCleanly(@TempDir Path dir) throws Exception {
        EntrypointTransport t = transport(dir);
        for (String which : List.of("hang", "closed", "garbage", "tls_garbage")) {
            String addr = tb.fake(which);
            CloudStackSim cs = new CloudStackSim(t, 78, fakeDetails(addr));
            cs.details().put("host", addr);
            cs.details().put("namespace", "cs-net-78");
            Map<String, Object> payload = cs.networkFields();
            payload.put("extension_ip", "10.1.1.1");
            Map.Entry<Integer, String> r = t.run("implement-network", cs.envelope(payload), 3);
            System.out.println(which + " executor: exit " + r.getKey() + " " + r.getValue());
            // Not reached (2), except the TLS fake that passes the pin and answers non-JSON (3).
            assertEquals(which.equals("tls_garbage") ? 3 : 2, r.getKey(), which + ": " + r.getValue());
            assertTrue(r.getValue().contains("\"status\":\"error\""), r.getValue());
            if (which.equals("hang")) {
                assertTrue(r.getValue().toLowerCase().contains("timed out")
                        || r.getValue().toLowerCase().contains("timeout"), r.getValue());
            }
            // Placement over unusable hosts finds none healthy.
            CloudStackSim placement = new CloudStackSim(t, 78, fakeDetails(addr));
            Map<String, Object> ep = placement.networkFields();
            ep.put("current_details", "{}");
            Map.Entry<Integer, String> p = t.run("ensure-network-device", placement.envelope(ep), 5);
            assertTrue(p.getKey() == 2 || p.getKey() == 3, which + " placement: " + p.getValue());
        }
        assertEquals(List.of(), tb.namespaces(1));
        assertEquals(List.of(), tb.namespaces(2));
    }

    @Test
    void badFieldsAreRefusedAndChangeNothing(@TempDir Path dir) throws Exception {
        EntrypointTransport t = transport(dir);
        CloudStackSim cs = new CloudStackSim(t, 79, CloudStackSim.physicalDetails(tb, tb.str("executor.key")));
        cs.command("implement-network", Json.obj("extension_ip", "10.1.1.1"));
        int host = tb.hostIndex(cs.host());
        try {
            String before = tb.nft(host, "cs-net-79");
            Map<String, Object> bad = Scenario.pf();
            bad.put("private_ip", "10.1.1.300; reboot");
            Transport.CommandFailure f = null;
            try {
                cs.command("add-port-forward", bad);
            } catch (Transport.CommandFailure e) {
                f = e;
            }
            assertTrue(f != null, "bad private_ip accepted");
            System.out.println("bad field: " + f);
            assertEquals(3, f.exitCode, f.toString());
            assertTrue(f.getMessage().contains("private_ip"), f.getMessage());
            assertEquals(before, tb.nft(host, "cs-net-79"));
            Map<String, Object> badVlan = Json.obj("vlan", "vlan://abc");
            Transport.CommandFailure g = null;
            try {
                cs.raw("implement-network", badVlan);
            } catch (Transport.CommandFailure e) {
                g = e;
            }
            assertTrue(g != null, "bad vlan accepted");
            assertEquals(before, tb.nft(host, "cs-net-79"));
        } finally {
            cs.command("destroy-network", Map.of());
        }
        assertEquals(List.of(), tb.namespaces(1));
        assertEquals(List.of(), tb.namespaces(2));
        assertTrue(Files.isDirectory(dir));
    }
}
