package org.apache.cloudstack.netbridge.e2e;

import org.apache.cloudstack.netbridge.Json;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import org.apache.cloudstack.netbridge.NetBridge;
import org.apache.cloudstack.netbridge.NetBridgeConfig;
import org.apache.cloudstack.netbridge.NetBridgeException;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The management server through JNI: extension, registration, offerings, an isolated network
 * with source NAT, static NAT, port forwarding and firewall proven with packets, failover to the
 * second host, key rotation, teardown with unregister rules; then faults. The JVM stays in the
 * root namespace; the bridge's executor traffic runs in the testbed's management namespace.
 */
class JniE2eTest {
    private static Testbed tb;

    @TempDir
    static Path dir;

    @BeforeAll
    static void start() throws Exception {
        String reason = Testbed.unavailableReason();
        Assumptions.assumeTrue(reason == null, reason);
        tb = Testbed.start("nbt");
    }

    @AfterAll
    static void stop() {
        if (tb != null) {
            tb.close();
        }
    }

    private static NetBridge open(String name) {
        return NetBridge.open(NetBridgeConfig.builder().database(dir.resolve(name + ".db"))
                .keyFile(dir.resolve(name + ".key")).dispatchNetns(Path.of(tb.str("mgmt_netns"))).build());
    }

    @Test
    void isolatedNetworkLifecycleWithFailoverAndKeyRotation() throws Exception {
        try (NetBridge b = open("lifecycle")) {
            ControlPlane cp = new ControlPlane(b, System.out::println);
            cp.createExtension("e2e-jni");
            String key = tb.str("executor.key");
            String registered = cp.register(ControlPlane.registrationDetails(tb, key));
            assertTrue(!registered.contains(key), "hidden key returned: " + registered);
            String offerings = cp.offerings().get(0).toString();
            assertTrue(offerings.contains("SourceNat") || offerings.contains("networkoffering"), offerings);

            // Network 209: cksum("209") is even, so placement starts at host 1 (failover target: host 2).
            CloudStackSim cs = new CloudStackSim(new JniTransport(b, cp.extensionId, cp.physicalNetworkId), 209, null);
            Scenario s = new Scenario(tb, cs, System.out::println);
            s.implement();
            assertEquals(1, s.placedHost());
            s.sourceNat();
            s.guestServices();
            s.staticNat();
            s.portForward();
            s.firewallClosed();
            s.loadBalancer();

            double secs = s.failover();
            System.out.printf("FAILOVER: connectivity back %.2f s after the first command following host 1's death%n", secs);
            assertEquals(2, s.placedHost());

            String newKey = "jni-rotated-key-" + Long.toHexString(System.nanoTime()) + "-abcdef";
            s.rotateKey(newKey, () -> cp.updateDetails(ControlPlane.registrationDetails(tb, newKey)));

            // Unregister is refused while the network exists.
            NetBridgeException refused = assertThrows(NetBridgeException.class, cp::unregister);
            System.out.println("unregister while the network exists: " + refused.getCode() + " " + refused.getText());
            s.destroy();
            cp.unregister();
            cp.delete();
            assertEquals(List.of(), tb.namespaces(1));
            assertEquals(List.of(), tb.namespaces(2));
            assertEquals(Map.of("networks", List.of()), Json.map(tb.networks(2), "body"));
        }
    }

    @Test
    void faultsNeitherCrashTheJvmNorLeaveState() throws Exception {
        try (NetBridge b = open("faults")) {
            JniTransport direct = new JniTransport(b, null, null);
            for (String which : List.of("hang", "closed", "garbage", "tls_garbage")) {
                Map<String, Object> d = CloudStackSim.physicalDetails(tb, tb.str("executor.key"));
                d.put("hosts", tb.fake(which));
                CloudStackSim cs = new CloudStackSim(direct, 88, d);
                cs.details().put("host", tb.fake(which));
                cs.details().put("namespace", "cs-net-88");
                Map<String, Object> payload = cs.networkFields();
                payload.put("extension_ip", "10.1.1.1");
                NetBridgeException e = assertThrows(NetBridgeException.class,
                        () -> b.execute("implement-network", cs.envelope(payload), Duration.ofSeconds(3)));
                System.out.println(which + ": " + e.getKind() + " " + e.getCode() + " " + e.getText());
                NetBridgeException.Kind expected = which.equals("hang") ? NetBridgeException.Kind.TIMEOUT
                        : which.equals("tls_garbage") ? NetBridgeException.Kind.REMOTE : NetBridgeException.Kind.UNREACHABLE;
                assertEquals(expected, e.getKind(), e.getText());
                assertTrue(e.getText().contains(tb.fake(which)), e.getText());
            }
            // Unknown command and bad fields.
            CloudStackSim cs = new CloudStackSim(direct, 89, CloudStackSim.physicalDetails(tb, tb.str("executor.key")));
            NetBridgeException unknown = assertThrows(NetBridgeException.class,
                    () -> b.execute("frobnicate-network", cs.envelope(cs.networkFields()), Duration.ofSeconds(5)));
            assertEquals(NetBridgeException.Kind.CONFIGURATION, unknown.getKind());
            assertTrue(unknown.getText().contains("frobnicate-network"), unknown.getText());
            NetBridgeException notJson = assertThrows(NetBridgeException.class,
                    () -> b.execute("implement-network", "{not json", Duration.ofSeconds(5)));
            assertEquals(NetBridgeException.Kind.CONFIGURATION, notJson.getKind(), notJson.getText());

            cs.command("implement-network", Json.obj("extension_ip", "10.1.1.1"));
            int host = tb.hostIndex(cs.host());
            try {
                String before = tb.nft(host, "cs-net-89");
                Map<String, Object> bad = Scenario.pf();
                bad.put("public_port", "70000");
                Transport.CommandFailure f = assertThrows(Transport.CommandFailure.class,
                        () -> cs.command("add-port-forward", bad));
                System.out.println("bad field: " + f);
                assertEquals(3, f.exitCode, f.toString());
                assertTrue(f.getMessage().contains("public_port"), f.getMessage());
                assertEquals(before, tb.nft(host, "cs-net-89"));
            } finally {
                cs.command("destroy-network", Map.of());
            }
            assertEquals(List.of(), tb.namespaces(1));
            assertEquals(List.of(), tb.namespaces(2));
            // The handle still works after all of it.
            assertTrue(b.api("listExtensions", Map.of()).contains("listextensionsresponse"));
        }
    }
}
