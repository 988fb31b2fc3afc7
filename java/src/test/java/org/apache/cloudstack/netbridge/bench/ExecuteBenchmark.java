package org.apache.cloudstack.netbridge.bench;

import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.atomic.AtomicLong;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import org.apache.cloudstack.netbridge.NetBridge;
import org.apache.cloudstack.netbridge.NetBridgeConfig;

/**
 * Network commands through JNI → signed, pinned HTTPS → a real {@code netbridge-executor} (not a
 * test: prints figures, asserts nothing).
 *
 * <p>Starts the executor binary with TLS on 127.0.0.1 (a fresh certificate and key; no root needed)
 * and measures the sticky {@code ensure-network-device}: the bridge parses the envelope, loads the
 * network's journal from the registry, probes the named host's health over HTTPS (signed request,
 * pinned certificate, pooled connection) and answers the device details. Both forms: details from
 * the envelope, and from the registry ({@code execute(extensionId, physicalNetworkId, ...)}: the
 * registration's details decrypted per call, binding kept). Then the throughput of 16 Java threads
 * over 100 networks.
 *
 * <pre>
 * cargo build --release --lib --bin netbridge-executor --bin netbridge-entrypoint
 * mvn -f java/pom.xml -q -Dnetbridge.release -Dnetbridge.cargo.skip=true -DskipTests test-compile exec:java \
 *     -Dexec.classpathScope=test -Dexec.mainClass=org.apache.cloudstack.netbridge.bench.ExecuteBenchmark
 * </pre>
 * System properties: {@code bench.executor} (path of netbridge-executor; default
 * {@code target/release/netbridge-executor} of the repository), {@code bench.entrypoint} (likewise; (b) the same
 * command as a process per command, skipped when absent), {@code bench.procRuns} (200),
 * {@code bench.iterations} (3000),
 * {@code bench.threads} (16), {@code bench.networks} (100), {@code bench.seconds} (5).
 */
public final class ExecuteBenchmark {
    private static final Duration TIMEOUT = Duration.ofSeconds(10);
    private static final String PN = "0b7c5a1e-2f3d-4e6a-9b8c-7d6e5f4a3b2c";

    private ExecuteBenchmark() {
    }

    public static void main(String[] args) throws Exception {
        int iterations = Integer.getInteger("bench.iterations", 3000);
        int threads = Integer.getInteger("bench.threads", 16);
        int networks = Integer.getInteger("bench.networks", 100);
        int seconds = Integer.getInteger("bench.seconds", 5);
        int procRuns = Integer.getInteger("bench.procRuns", 200);
        // Defaults resolve against the repository, whether Maven runs from it or from java/.
        Path release = org.apache.cloudstack.netbridge.e2e.Testbed.repoRoot().resolve("target/release");
        Path entry = Path.of(System.getProperty("bench.entrypoint",
                release.resolve("netbridge-entrypoint").toString())).toAbsolutePath().normalize();
        Path executor = Path.of(System.getProperty("bench.executor",
                release.resolve("netbridge-executor").toString())).toAbsolutePath().normalize();

        System.out.println("netbridge execute benchmark: JNI -> HTTPS -> netbridge-executor");
        System.out.println("  native   " + NetBridge.nativeVersion());
        System.out.println("  executor " + executor);
        System.out.println("  machine  " + Runtime.getRuntime().availableProcessors() + " cpus, load "
                + loadAverage() + " (1/5/15 min; shared)");
        System.out.println("  java     " + System.getProperty("java.vm.name") + " " + System.getProperty("java.version"));

        Path dir = Files.createTempDirectory("nbb-exec-bench-");
        Process exec = null;
        try {
            String fingerprint = run(executor.toString(), "gen-cert", "--out-dir", dir.toString(),
                    "--name", "nbb-bench", "--san", "127.0.0.1").trim();
            String key = UUID.randomUUID().toString() + UUID.randomUUID();
            Path keyFile = dir.resolve("executor.key");
            Files.createFile(keyFile, PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------")));
            Files.writeString(keyFile, key);
            int port = freePort();
            String host = "127.0.0.1:" + port;
            exec = new ProcessBuilder(executor.toString(), "--listen", host, "--state-dir",
                    dir.resolve("exec-state").toString(), "--key-file", keyFile.toString(),
                    "--tls-cert", dir.resolve("cert.pem").toString(), "--tls-key", dir.resolve("key.pem").toString(),
                    "--host-name", "nbb-bench", "--log-level", "warn")
                    .redirectErrorStream(true).redirectOutput(dir.resolve("executor.log").toFile()).start();
            waitForPort(port, exec);

            Path state = dir.resolve("bridge");
            try (NetBridge b = NetBridge.open(NetBridgeConfig.builder().database(state.resolve("netbridge.db"))
                    .keyFile(state.resolve("secret.key")).logLevel("off").build())) {
                String details = "{\"hosts\":\"" + host + "\",\"executor.key\":\"" + key
                        + "\",\"executor.fingerprint\":\"" + fingerprint + "\"}";
                String[] envs = new String[networks];
                for (int n = 0; n < networks; n++) {
                    envs[n] = ensureEnvelope(details, host, 1000 + n);
                }
                String extId = register(b, host, key, fingerprint);
                // warm-up: JIT, pooled connection, journal rows, bindings
                for (int i = 0; i < 500; i++) {
                    b.execute("ensure-network-device", envs[i % networks], TIMEOUT);
                    b.execute(extId, PN, "ensure-network-device", envs[i % networks], TIMEOUT);
                }
                long[] pingNs = new long[iterations];
                for (int i = 0; i < iterations; i++) {
                    long t0 = System.nanoTime();
                    NetBridge.ping(i);
                    pingNs[i] = System.nanoTime() - t0;
                }
                report("JNI round trip (ping)", pingNs);
                long[] a = new long[iterations];
                for (int i = 0; i < iterations; i++) {
                    String env = envs[i % networks];
                    long t0 = System.nanoTime();
                    b.execute("ensure-network-device", env, TIMEOUT);
                    a[i] = System.nanoTime() - t0;
                }
                double p50a = report("(a) sticky ensure-network-device, envelope details", a);
                long[] r = new long[iterations];
                for (int i = 0; i < iterations; i++) {
                    String env = envs[i % networks];
                    long t0 = System.nanoTime();
                    b.execute(extId, PN, "ensure-network-device", env, TIMEOUT);
                    r[i] = System.nanoTime() - t0;
                }
                report("(a) sticky ensure-network-device, registry details", r);
                double p50b = entrypoint(entry, dir, envs[0], procRuns);
                if (p50b > 0) {
                    System.out.printf(Locale.ROOT, "ratio (b)/(a) p50: %.1f%n", p50b / p50a);
                }
                throughput(threads, networks, seconds, "(c) envelope details", i -> b.execute("ensure-network-device",
                        envs[i % networks], TIMEOUT));
                throughput(threads, networks, seconds, "(c) registry details", i -> b.execute(extId, PN,
                        "ensure-network-device", envs[i % networks], TIMEOUT));
                System.out.printf(Locale.ROOT, "goals: (a) p50 <= 1000 us (measured %.1f us), (c) >= 500 commands/s%n",
                        p50a);
            }
        } finally {
            if (exec != null) {
                exec.destroy();
                exec.waitFor();
            }
            deleteTree(dir);
        }
    }

    /** (b): the same command through netbridge-entrypoint as a process per command. */
    private static double entrypoint(Path entry, Path dir, String envelope, int runs)
            throws IOException, InterruptedException {
        if (!Files.isExecutable(entry) || runs <= 0) {
            System.out.println("(b) skipped: no " + entry);
            return -1;
        }
        Path payload = dir.resolve("payload.json");
        Files.writeString(payload, envelope);
        Path state = dir.resolve("entry-state");
        long[] ns = new long[runs];
        for (int i = -10; i < runs; i++) {
            ProcessBuilder pb = new ProcessBuilder(entry.toString(), "ensure-network-device", payload.toString(), "10")
                    .redirectError(ProcessBuilder.Redirect.DISCARD);
            pb.environment().put("NETBRIDGE_STATE_DIR", state.toString());
            long t0 = System.nanoTime();
            Process p = pb.start();
            p.getInputStream().readAllBytes();
            int rc = p.waitFor();
            long took = System.nanoTime() - t0;
            if (rc != 0) {
                throw new IOException("netbridge-entrypoint exited " + rc);
            }
            if (i >= 0) {
                ns[i] = took;
            }
        }
        return report("(b) same through netbridge-entrypoint (process/command)", ns);
    }

    interface Call {
        void run(int i);
    }

    private static void throughput(int threads, int networks, int seconds, String name, Call call)
            throws InterruptedException {
        AtomicLong done = new AtomicLong();
        AtomicLong failed = new AtomicLong();
        long end = System.nanoTime() + seconds * 1_000_000_000L;
        List<Thread> ts = new ArrayList<>();
        for (int t = 0; t < threads; t++) {
            int offset = t * 7;
            Thread th = new Thread(() -> {
                int i = offset;
                while (System.nanoTime() < end) {
                    try {
                        call.run(i++);
                        done.incrementAndGet();
                    } catch (RuntimeException e) {
                        if (failed.getAndIncrement() == 0) {
                            System.out.println("  first failure: " + e);
                        }
                    }
                }
            });
            ts.add(th);
        }
        long t0 = System.nanoTime();
        ts.forEach(Thread::start);
        for (Thread th : ts) {
            th.join();
        }
        double secs = (System.nanoTime() - t0) / 1e9;
        System.out.printf(Locale.ROOT, "%-58s %d threads x %d networks: %.0f commands/s (%d ok, %d failed)%n",
                name, threads, networks, done.get() / secs, done.get(), failed.get());
    }

    private static String ensureEnvelope(String details, String host, int network) {
        String current = "{\\\"host\\\":\\\"" + host + "\\\",\\\"namespace\\\":\\\"cs-net-" + network + "\\\"}";
        return "{\"physical-network-extension-details\":" + details + ",\"network-extension-details\":{},"
                + "\"payload\":{\"network_id\":\"" + network + "\",\"current_details\":\"" + current + "\"}}";
    }

    private static String register(NetBridge b, String host, String key, String fingerprint) {
        Map<String, String> p = new HashMap<>();
        p.put("name", "nbb-bench");
        p.put("type", "NetworkOrchestrator");
        String created = b.api("createExtension", p);
        Matcher m = Pattern.compile("\"id\":\"([0-9a-f-]{36})\"").matcher(created);
        if (!m.find()) {
            throw new IllegalStateException("no id in " + created);
        }
        String extId = m.group(1);
        Map<String, String> r = new HashMap<>();
        r.put("extensionid", extId);
        r.put("resourceid", PN);
        r.put("resourcetype", "PhysicalNetwork");
        NetBridge.putDetails(r, "details", Map.of("hosts", host, "executor.key", key,
                "executor.fingerprint", fingerprint));
        b.api("registerExtension", r);
        return extId;
    }

    private static double report(String name, long[] ns) {
        long[] s = ns.clone();
        Arrays.sort(s);
        double p50 = s[s.length / 2] / 1000.0;
        double p99 = s[(int) Math.min(s.length - 1, Math.round(s.length * 0.99))] / 1000.0;
        System.out.printf(Locale.ROOT, "%-58s n=%-5d p50=%9.1f us  p99=%9.1f us%n", name, s.length, p50, p99);
        return p50;
    }

    private static String run(String... argv) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(argv).redirectError(ProcessBuilder.Redirect.DISCARD).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        if (p.waitFor() != 0) {
            throw new IOException(Arrays.toString(argv) + " failed");
        }
        return out;
    }

    private static int freePort() throws IOException {
        try (ServerSocket s = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
            return s.getLocalPort();
        }
    }

    private static void waitForPort(int port, Process p) throws IOException, InterruptedException {
        long end = System.nanoTime() + 20_000_000_000L;
        while (System.nanoTime() < end) {
            if (!p.isAlive()) {
                throw new IOException("executor exited with " + p.exitValue());
            }
            try (Socket s = new Socket()) {
                s.connect(new InetSocketAddress(InetAddress.getLoopbackAddress(), port), 200);
                return;
            } catch (IOException notYet) {
                Thread.sleep(50);
            }
        }
        throw new IOException("executor did not listen on port " + port);
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
