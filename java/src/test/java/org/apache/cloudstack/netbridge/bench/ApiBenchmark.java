package org.apache.cloudstack.netbridge.bench;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.UUID;
import java.util.stream.Stream;
import org.apache.cloudstack.netbridge.NetBridge;
import org.apache.cloudstack.netbridge.NetBridgeConfig;

/**
 * Control-plane latency through JNI (not a test: prints figures, asserts nothing).
 *
 * <p>Fills a fresh registry with {@code extensions} × {@code registrations} (PhysicalNetwork
 * resource ids), then measures p50/p99 of {@code updateRegisteredExtension} and
 * {@code listExtensions id=…} on random pairs, and the JNI round trip of {@link NetBridge#ping}.
 *
 * <p>Run with a release build of the library (see README / java/README):
 * <pre>
 * mvn -f java/pom.xml -q -Dnetbridge.release -DskipTests test-compile exec:java \
 *     -Dexec.classpathScope=test -Dexec.mainClass=org.apache.cloudstack.netbridge.bench.ApiBenchmark
 * </pre>
 * System properties: {@code bench.extensions} (1000), {@code bench.registrations} (10),
 * {@code bench.iterations} (5000), {@code bench.pings} (5000000), {@code bench.store}
 * ({@code sqlite} or {@code mariadb}, see {@link BenchStore}).
 */
public final class ApiBenchmark {
    private static final String SERVICES = "Dhcp,Dns,UserData,SourceNat,StaticNat,PortForwarding,Firewall,Lb,NetworkACL,CustomAction";
    private static final String CAPABILITIES = "{\"SourceNat\":{\"SupportedSourceNatTypes\":\"peraccount\"},"
            + "\"Lb\":{\"SupportedLBAlgorithms\":\"roundrobin,leastconn,source\",\"SupportedProtocols\":\"tcp,udp\"}}";

    /** The physical networks registered with (CloudStack's database knows them). */
    private static List<String> physicalNetworks;

    private ApiBenchmark() {
    }

    public static void main(String[] args) throws IOException {
        int extensions = Integer.getInteger("bench.extensions", 1000);
        int registrations = Integer.getInteger("bench.registrations", 10);
        int iterations = Integer.getInteger("bench.iterations", 5000);
        int pings = Integer.getInteger("bench.pings", 5_000_000);

        System.out.println("netbridge control-plane benchmark through JNI");
        System.out.println("  native   " + NetBridge.nativeVersion());
        System.out.println("  machine  " + Runtime.getRuntime().availableProcessors() + " cpus, " + cpuModel());
        System.out.println("  load     " + loadAverage() + " (1/5/15 min; the machine is shared)");
        System.out.println("  java     " + System.getProperty("java.vm.name") + " " + System.getProperty("java.version"));

        Path dir = Files.createTempDirectory("netbridge-bench-");
        List<String> networks = new ArrayList<>();
        for (int r = 0; r < registrations; r++) {
            networks.add(UUID.randomUUID().toString());
        }
        try (BenchStore store = BenchStore.open(dir.resolve("netbridge.db"), networks);
                NetBridge b = NetBridge.open(NetBridgeConfig.builder()
                .database(store.location).keyFile(dir.resolve("secret.key")).logLevel("off").build())) {
            System.out.println("  store    " + store.describe());
            physicalNetworks = networks;
            boolean stub = false;
            try {
                b.api("listExtensions", Map.of());
            } catch (org.apache.cloudstack.netbridge.NetBridgeException e) {
                stub = e.getCode() == org.apache.cloudstack.netbridge.NetBridgeException.UNSUPPORTED;
            }
            if (stub) {
                System.out.println("  (the native API is the stub: API figures skipped)");
            } else {
                apiFigures(b, extensions, registrations, iterations);
            }
            pingFigures(pings);
            System.out.println("  goals: p50 < 100 us for both API calls, < 1 us for the trivial call");
        } catch (Exception e) {
            throw new IOException(e);
        } finally {
            deleteTree(dir);
        }
    }

    private static void apiFigures(NetBridge b, int extensions, int registrations, int iterations) {
        {
            long t0 = System.nanoTime();
            String[] ids = new String[extensions];
            String[][] pns = new String[extensions][registrations];
            for (int e = 0; e < extensions; e++) {
                Map<String, String> p = new LinkedHashMap<>();
                p.put("name", "bench-" + e);
                p.put("type", "NetworkOrchestrator");
                NetBridge.putDetails(p, "details", Map.of("network.services", SERVICES,
                        "network.service.capabilities", CAPABILITIES));
                ids[e] = extractId(b.api("createExtension", p));
                for (int r = 0; r < registrations; r++) {
                    pns[e][r] = physicalNetworks.get(r);
                    Map<String, String> q = new LinkedHashMap<>();
                    q.put("extensionid", ids[e]);
                    q.put("resourceid", pns[e][r]);
                    q.put("resourcetype", "PhysicalNetwork");
                    NetBridge.putDetails(q, "details", Map.of("hosts", "192.0.2.1,192.0.2.2",
                            "executor.key", "bench-secret-" + e + "-" + r));
                    b.api("registerExtension", q);
                }
            }
            double fillSecs = (System.nanoTime() - t0) / 1e9;
            System.out.printf(Locale.ROOT, "  filled   %d extensions x %d registrations in %.1f s (%.0f calls/s)%n",
                    extensions, registrations, fillSecs, extensions * (registrations + 1) / fillSecs);

            SplittableRandom rnd = new SplittableRandom(42);
            int warmup = Math.max(500, iterations / 5);

            long[] update = new long[iterations];
            for (int i = -warmup; i < iterations; i++) {
                int e = rnd.nextInt(extensions);
                int r = rnd.nextInt(registrations);
                Map<String, String> details = new LinkedHashMap<>();
                details.put("hosts", "192.0.2." + (i & 127) + ",192.0.2.200");
                details.put("executor.port", "8443");
                long s = System.nanoTime();
                b.updateRegisteredExtension().extensionId(ids[e]).resourceId(pns[e][r])
                        .resourceType("PhysicalNetwork").details(details).call();
                long d = System.nanoTime() - s;
                if (i >= 0) {
                    update[i] = d;
                }
            }
            report("updateRegisteredExtension", update);

            long[] list = new long[iterations];
            for (int i = -warmup; i < iterations; i++) {
                Map<String, String> p = Map.of("id", ids[rnd.nextInt(extensions)]);
                long s = System.nanoTime();
                b.api("listExtensions", p);
                long d = System.nanoTime() - s;
                if (i >= 0) {
                    list[i] = d;
                }
            }
            report("listExtensions id=…", list);

            // The JNI layer alone: same parameter shape, rejected by the dispatcher at once
            // (unknown command), so what remains is conversion, the native call and the exception.
            long[] overhead = new long[iterations];
            for (int i = -warmup; i < iterations; i++) {
                Map<String, String> p = Map.of("id", ids[rnd.nextInt(extensions)]);
                long s = System.nanoTime();
                try {
                    b.api("benchNoSuchCommand", p);
                } catch (org.apache.cloudstack.netbridge.NetBridgeException expected) {
                    // the answer we want
                }
                long d = System.nanoTime() - s;
                if (i >= 0) {
                    overhead[i] = d;
                }
            }
            report("JNI api() + error, no work", overhead);
        }
    }

    private static void pingFigures(int pings) {
        {

            // Trivial call: per-call timing (includes ~20-30 ns of nanoTime) and a batch mean.
            long sink = 0;
            for (int i = 0; i < 200_000; i++) {
                sink += NetBridge.ping(i);
            }
            int samples = Math.min(pings, 1_000_000);
            long[] ping = new long[samples];
            for (int i = 0; i < samples; i++) {
                long s = System.nanoTime();
                sink += NetBridge.ping(i);
                ping[i] = System.nanoTime() - s;
            }
            report("JNI round trip (ping)", ping);
            long s = System.nanoTime();
            for (int i = 0; i < pings; i++) {
                sink += NetBridge.ping(i);
            }
            double mean = (System.nanoTime() - s) / (double) pings;
            System.out.printf(Locale.ROOT, "  %-28s mean %.1f ns over %d calls (batch)%n", "JNI round trip (ping)", mean,
                    pings);
            if (sink == 42) {
                System.out.println();
            }
        }
    }

    private static void report(String what, long[] nanos) {
        long[] sorted = nanos.clone();
        Arrays.sort(sorted);
        System.out.printf(Locale.ROOT, "  %-28s p50 %9s  p99 %9s  max %9s  (n=%d)%n", what,
                fmt(pct(sorted, 0.50)), fmt(pct(sorted, 0.99)), fmt(sorted[sorted.length - 1]), sorted.length);
    }

    private static long pct(long[] sorted, double p) {
        int i = (int) Math.ceil(p * sorted.length) - 1;
        return sorted[Math.max(0, Math.min(sorted.length - 1, i))];
    }

    private static String fmt(long nanos) {
        if (nanos < 10_000) {
            return nanos + " ns";
        }
        return String.format(Locale.ROOT, "%.1f us", nanos / 1000.0);
    }

    /** The id of the extension in a createExtension response (no JSON library needed here). */
    private static String extractId(String json) {
        int k = json.indexOf("\"id\"");
        if (k < 0) {
            throw new IllegalStateException("no id in " + json);
        }
        int start = json.indexOf('"', json.indexOf(':', k) + 1) + 1;
        return json.substring(start, json.indexOf('"', start));
    }

    private static String loadAverage() {
        try {
            String[] f = Files.readString(Path.of("/proc/loadavg")).trim().split("\\s+");
            return f[0] + " " + f[1] + " " + f[2];
        } catch (IOException | RuntimeException e) {
            return "unknown";
        }
    }

    private static String cpuModel() {
        try (Stream<String> lines = Files.lines(Path.of("/proc/cpuinfo"))) {
            return lines.filter(l -> l.startsWith("model name")).findFirst()
                    .map(l -> l.substring(l.indexOf(':') + 1).trim()).orElse("unknown CPU");
        } catch (IOException e) {
            return "unknown CPU";
        }
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
