package org.apache.cloudstack.netbridge.e2e;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.cloudstack.netbridge.Json;
import org.apache.cloudstack.netbridge.NetBridge;
import org.apache.cloudstack.netbridge.NetBridgeConfig;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Three management servers sharing CloudStack's database (a private MariaDB from
 * {@code target/debug/examples/mariadb}, reached through its Unix socket from the management
 * namespace): two bridges in this JVM (separate handles, each with its own connection pool) and
 * {@code netbridge-entrypoint} processes, taking the commands of one network round-robin. Host 1
 * then dies; the new host gets every rule, DHCP/DNS entry, metadata and load balancer from the
 * shared journal, proven with packets as in the single-server failover test.
 */
class SharedStoreE2eTest {
    private static Testbed tb;
    private static Process mariadb;
    private static String socketUrl;
    private static final String PHYSICAL_NETWORK = UUID.randomUUID().toString();

    @TempDir
    static Path dir;

    @BeforeAll
    static void start() throws Exception {
        String reason = Testbed.unavailableReason();
        Assumptions.assumeTrue(reason == null, reason);
        Path program = Testbed.repoRoot().resolve("target/debug/examples/mariadb");
        if (!Files.isExecutable(program)) {
            fail(program + " is not built: cargo build --example mariadb (make java-test does)");
        }
        mariadb = new ProcessBuilder(program.toString(), "--physical-networks", "0", "--physical-network",
                PHYSICAL_NETWORK).redirectError(ProcessBuilder.Redirect.INHERIT).start();
        String line = new BufferedReader(new InputStreamReader(mariadb.getInputStream(), StandardCharsets.UTF_8))
                .readLine();
        if (line == null) {
            fail("the MariaDB helper ended without starting a server (is mariadb-server installed?)");
        }
        socketUrl = Json.str(Json.parse(line), "socket_url");
        tb = Testbed.start("nbs");
    }

    @AfterAll
    static void stop() throws Exception {
        if (tb != null) {
            tb.close();
        }
        if (mariadb != null) {
            mariadb.getOutputStream().close();
            if (!mariadb.waitFor(2, TimeUnit.MINUTES)) {
                mariadb.destroyForcibly();
            }
        }
    }

    private static NetBridge open() {
        return NetBridge.open(NetBridgeConfig.builder().database(socketUrl).keyFile(dir.resolve("secret.key"))
                .dispatchNetns(Path.of(tb.str("mgmt_netns"))).build());
    }

    /** Hands each command to the next server in turn. */
    private static final class RoundRobin implements Transport {
        private final List<Transport> servers;
        private final AtomicInteger next = new AtomicInteger();
        private volatile int pinned = -1;
        final int[] used;

        RoundRobin(List<Transport> servers) {
            this.servers = servers;
            this.used = new int[servers.size()];
        }

        @Override
        public String execute(String command, String envelopeJson, int timeoutSeconds) throws CommandFailure {
            int i = pinned >= 0 ? pinned : Math.floorMod(next.getAndIncrement(), servers.size());
            used[i]++;
            return servers.get(i).execute(command, envelopeJson, timeoutSeconds);
        }

        /** From now on, every command through server {@code i}. */
        void pin(int i) {
            pinned = i;
        }
    }

    @Test
    void aNetworkSpreadOverThreeServersFailsOverWithAllItsState() throws Exception {
        try (NetBridge first = open(); NetBridge second = open()) {
            ControlPlane cp = new ControlPlane(first, System.out::println, PHYSICAL_NETWORK);
            cp.createExtension("e2e-shared");
            String key = tb.str("executor.key");
            cp.register(ControlPlane.registrationDetails(tb, key));
            EntrypointTransport entry = new EntrypointTransport(Testbed.entrypoint(), tb.mgmtNetnsName(), dir)
                    .withEnvironment("NETBRIDGE_DATABASE", socketUrl)
                    .withEnvironment("NETBRIDGE_KEY_FILE", dir.resolve("secret.key").toString());
            RoundRobin servers = new RoundRobin(List.of(
                    new JniTransport(first, cp.extensionId, cp.physicalNetworkId),
                    new JniTransport(second, cp.extensionId, cp.physicalNetworkId),
                    entry));
            CloudStackSim cs = new CloudStackSim(servers, 209, CloudStackSim.physicalDetails(tb, key));
            Scenario s = new Scenario(tb, cs, System.out::println);
            s.implement();
            assertEquals(1, s.placedHost());
            s.sourceNat();
            assertTrue(s.guestServices(), "guest services");
            s.staticNat();
            s.portForward();
            s.firewallClosed();
            s.loadBalancer();
            for (int u : servers.used) {
                assertTrue(u >= 4, "every server took commands: " + java.util.Arrays.toString(servers.used));
            }
            // The entry point kept no local journal: the state is in the shared rows.
            try (var files = Files.list(dir.resolve("bridge-state"))) {
                assertEquals(List.of(), files.toList());
            }

            double secs = s.failover();
            System.out.printf("SHARED-STORE FAILOVER: connectivity back %.2f s after the first command following host 1's death%n", secs);
            assertEquals(2, s.placedHost());
            // The teardown through a bridge, which keeps the registry's bindings (the entry
            // point leaves them to CloudStack), so that unregistering is allowed afterwards.
            servers.pin(0);
            s.destroy();
            cp.unregister();
            cp.delete();
            assertEquals(List.of(), tb.namespaces(2));
        }
    }
}
