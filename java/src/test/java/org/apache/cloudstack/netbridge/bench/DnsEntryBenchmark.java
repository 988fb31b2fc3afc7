package org.apache.cloudstack.netbridge.bench;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.stream.Stream;
import org.apache.cloudstack.netbridge.NetBridge;
import org.apache.cloudstack.netbridge.NetBridgeConfig;
import org.apache.cloudstack.netbridge.e2e.CloudStackSim;
import org.apache.cloudstack.netbridge.e2e.ControlPlane;
import org.apache.cloudstack.netbridge.e2e.EntrypointTransport;
import org.apache.cloudstack.netbridge.e2e.JniTransport;
import org.apache.cloudstack.netbridge.Json;
import org.apache.cloudstack.netbridge.e2e.Scenario;
import org.apache.cloudstack.netbridge.e2e.Testbed;
import org.apache.cloudstack.netbridge.e2e.Transport;

/**
 * {@code add-dns-entry} end to end, including the executor's work (dnsmasq hosts file rewritten,
 * SIGHUP): JNI → signed, pinned HTTPS → the real {@code netbridge-executor} of the namespace
 * testbed, on an implemented isolated network whose DHCP and DNS scopes are configured and proven
 * (a DHCP offer and a DNS answer). Not a test: prints figures, asserts nothing. Needs root.
 *
 * <p>(a) {@code execute(extensionId, physicalNetworkId, "add-dns-entry", …)} (registration read
 * from the registry, as the management server calls it), distinct hostnames and IPs per call.
 * The bridge overhead is estimated by the sticky {@code ensure-network-device} through the same
 * path: JNI, envelope parsing, registry, one signed HTTPS round trip ({@code GET /v1/health}) with
 * almost no executor work. (b) the same command through {@code netbridge-entrypoint} as a process
 * per command ({@code ip netns exec <mgmt> netbridge-entrypoint …}, as the e2e tests run it; the
 * {@code ip netns exec} fork is part of (b)).
 *
 * <p>Every distinct IP adds a record on the executor (whose hosts file and state are rewritten
 * whole) and an entry in the bridge's failover journal (one row, written alone): hence (a0), the
 * same command re-pointing one IP at a fixed size, and the first/last 200 calls of (a).
 *
 * <pre>
 * cargo build --release --lib --bins &amp;&amp; cargo build --example testbed
 * mvn -f java/pom.xml -q -Dnetbridge.release -Dnetbridge.cargo.skip=true -DskipTests test-compile exec:java \
 *     -Dexec.classpathScope=test -Dexec.mainClass=org.apache.cloudstack.netbridge.bench.DnsEntryBenchmark \
 *     -Dnetbridge.executor.bin=$PWD/target/release/netbridge-executor
 * </pre>
 * System properties: {@code bench.iterations} (2000), {@code bench.warmup} (300),
 * {@code bench.procRuns} (200), {@code bench.prefix} (testbed namespace/link prefix, {@code nbq}),
 * {@code bench.entrypoint} (default
 * {@code target/release/netbridge-entrypoint}), {@code netbridge.executor.bin} (the testbed's
 * executor; default the debug build).
 */
public final class DnsEntryBenchmark {
    private static final Duration TIMEOUT = Duration.ofSeconds(10);

    private DnsEntryBenchmark() {
    }

    public static void main(String[] args) throws Exception {
        int iterations = Integer.getInteger("bench.iterations", 2000);
        int warmup = Integer.getInteger("bench.warmup", 300);
        int procRuns = Integer.getInteger("bench.procRuns", 200);
        Path entry = Path.of(System.getProperty("bench.entrypoint",
                Testbed.repoRoot().resolve("target/release/netbridge-entrypoint").toString()));
        if (!Testbed.isRoot() || Testbed.program() == null) {
            System.out.println("DnsEntryBenchmark needs root and the testbed program (cargo build --example testbed); skipped");
            return;
        }
        System.out.println("netbridge add-dns-entry benchmark: JNI -> pinned HTTPS -> netbridge-executor (namespace testbed)");
        System.out.println("  native   " + NetBridge.nativeVersion());
        System.out.println("  executor " + System.getProperty("netbridge.executor.bin", "target/debug/netbridge-executor"));
        System.out.println("  machine  " + Runtime.getRuntime().availableProcessors() + " cpus (" + cpuModel()
                + "), load " + loadAverage() + " (1/5/15 min; shared machine)");
        System.out.println("  java     " + System.getProperty("java.vm.name") + " " + System.getProperty("java.version"));

        String prefix = System.getProperty("bench.prefix", "nbq");
        Path dir = Files.createTempDirectory(prefix + "-dns-bench-");
        String physicalNetwork = java.util.UUID.randomUUID().toString();
        try (BenchStore store = BenchStore.open(dir.resolve("bridge.db"), List.of(physicalNetwork));
                Testbed tb = Testbed.start(prefix, "--executor-log-level", "warn");
                NetBridge b = NetBridge.open(NetBridgeConfig.builder().database(store.anyNamespaceLocation)
                        .keyFile(dir.resolve("bridge.key")).logLevel("off")
                        .dispatchNetns(Path.of(tb.str("mgmt_netns"))).build())) {
            System.out.println("  store    " + store.describe() + " (the bridge's registry and journal)");
            ControlPlane cp = new ControlPlane(b, s -> { }, physicalNetwork);
            cp.createExtension(prefix + "-dns-bench");
            String key = tb.str("executor.key");
            cp.register(ControlPlane.registrationDetails(tb, key));
            JniTransport jni = new JniTransport(b, cp.extensionId, cp.physicalNetworkId);
            CloudStackSim cs = new CloudStackSim(jni, 209, null);
            Scenario s = new Scenario(tb, cs, System.out::println);
            s.implement();
            if (!s.guestServices()) {
                System.out.println("guest services unsupported by this executor; nothing to measure");
                return;
            }
            cs.ensure();

            // warm-up: JIT, pooled connection, the network's lock and state
            for (int i = 0; i < warmup; i++) {
                cs.raw("add-dns-entry", entry(i));
                cs.raw("ensure-network-device", Json.obj("current_details", Json.write(cs.details())));
            }
            long[] ping = new long[iterations];
            for (int i = 0; i < iterations; i++) {
                long t0 = System.nanoTime();
                NetBridge.ping(i);
                ping[i] = System.nanoTime() - t0;
            }
            report("JNI round trip (ping)", ping);
            String current = Json.write(cs.details());
            long[] ensure = new long[iterations];
            for (int i = 0; i < iterations; i++) {
                long t0 = System.nanoTime();
                cs.raw("ensure-network-device", Json.obj("current_details", current));
                ensure[i] = System.nanoTime() - t0;
            }
            double overhead = report("bridge overhead: sticky ensure-network-device (JNI+HTTPS)", ensure);
            // Same IP, new hostname each time: the executor's records and the bridge's failover
            // journal keep their size (one slot per IP), so this is the cost at a fixed size.
            long[] same = new long[iterations / 4];
            for (int i = 0; i < same.length; i++) {
                Map<String, Object> e = Json.obj("ip", entry(0).get("ip"), "hostname", "same-" + i);
                long t0 = System.nanoTime();
                cs.raw("add-dns-entry", e);
                same[i] = System.nanoTime() - t0;
            }
            report("(a0) add-dns-entry, one IP re-pointed (" + warmup + " records held)", same);
            long[] a = new long[iterations];
            for (int i = 0; i < iterations; i++) {
                Map<String, Object> e = entry(warmup + i);
                long t0 = System.nanoTime();
                cs.raw("add-dns-entry", e);
                a[i] = System.nanoTime() - t0;
            }
            double p50a = report("(a) add-dns-entry via JNI, executor work included", a);
            // The records accumulate: does the executor's cost grow with the hosts file?
            int k = Math.min(200, iterations);
            report("    (a) first " + k + " (" + warmup + "+ records held)", Arrays.copyOfRange(a, 0, k));
            report("    (a) last " + k + " (" + (warmup + iterations - k) + "+ records held)",
                    Arrays.copyOfRange(a, iterations - k, iterations));
            // The records really reach dnsmasq: the last hostname resolves from a VM.
            Map<String, Object> last = entry(warmup + iterations - 1);
            Object answers = tb.request(Json.obj("op", "dig", "ns", "vm1",
                    "server", "10.1.1.1", "name", last.get("hostname") + "." + Scenario.DOMAIN, "type", "A"))
                    .get("answers");
            System.out.println("  check: " + last.get("hostname") + "." + Scenario.DOMAIN + " -> " + answers
                    + " (expected " + last.get("ip") + ")");

            double p50b = -1;
            if (Files.isExecutable(entry) && procRuns > 0) {
                EntrypointTransport ep = new EntrypointTransport(entry, tb.mgmtNetnsName(), dir.resolve("entry"));
                if (BenchStore.mariadb()) {
                    // The entry point's journal in the same shared rows as the bridge's.
                    ep.withEnvironment("NETBRIDGE_DATABASE", store.anyNamespaceLocation)
                            .withEnvironment("NETBRIDGE_KEY_FILE", dir.resolve("bridge.key").toString());
                }
                CloudStackSim viaProc = new CloudStackSim(ep, 209, CloudStackSim.physicalDetails(tb, key));
                viaProc.details().putAll(cs.details());
                long[] p = new long[procRuns];
                for (int i = -10; i < procRuns; i++) {
                    Map<String, Object> e = entry(warmup + iterations + 10 + i);
                    long t0 = System.nanoTime();
                    viaProc.raw("add-dns-entry", e);
                    long took = System.nanoTime() - t0;
                    if (i >= 0) {
                        p[i] = took;
                    }
                }
                p50b = report("(b) add-dns-entry via netbridge-entrypoint (process/command)", p);
                System.out.printf(Locale.ROOT, "ratio (b)/(a) p50: %.1f%n", p50b / p50a);
            } else {
                System.out.println("(b) skipped: no " + entry);
            }
            System.out.printf(Locale.ROOT, "goals: (a) p50 <= 1000 us (measured %.1f us); bridge overhead p50 <= 200 us"
                    + " (measured %.1f us; (a) minus it: %.1f us of command work, bridge journal + executor)%n", p50a, overhead, p50a - overhead);
            try {
                s.destroy();
            } catch (Exception | AssertionError e) {
                System.out.println("teardown: " + e);
            }
        } catch (Transport.CommandFailure e) {
            System.out.println("command failed: " + e);
            throw e;
        } finally {
            deleteTree(dir);
        }
    }

    /** The i-th DNS entry: distinct hostname and IPv4 address (10.100.0.0/16 and up). */
    private static Map<String, Object> entry(int i) {
        String ip = "10." + (100 + i / 65536) + "." + ((i / 256) % 256) + "." + (i % 256);
        return Json.obj("ip", ip, "hostname", "bench-" + i);
    }

    private static double report(String name, long[] ns) {
        long[] s = ns.clone();
        Arrays.sort(s);
        double p50 = s[s.length / 2] / 1000.0;
        double p99 = s[(int) Math.min(s.length - 1, Math.round(s.length * 0.99))] / 1000.0;
        System.out.printf(Locale.ROOT, "%-62s n=%-5d p50=%9.1f us  p99=%9.1f us%n", name, s.length, p50, p99);
        return p50;
    }

    private static String cpuModel() {
        try (Stream<String> lines = Files.lines(Path.of("/proc/cpuinfo"))) {
            return lines.filter(l -> l.startsWith("model name")).map(l -> l.substring(l.indexOf(':') + 1).trim())
                    .findFirst().orElse("unknown");
        } catch (IOException e) {
            return "unknown";
        }
    }

    private static String loadAverage() {
        try {
            return String.join(" ", Arrays.copyOf(Files.readString(Path.of("/proc/loadavg")).split(" "), 3));
        } catch (IOException e) {
            return "unknown";
        }
    }

    private static void deleteTree(Path dir) throws IOException {
        try (Stream<Path> s = Files.walk(dir)) {
            s.sorted((x, y) -> y.compareTo(x)).forEach(p -> p.toFile().delete());
        }
    }
}
