package org.apache.cloudstack.netbridge.e2e;

import org.apache.cloudstack.netbridge.Json;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/**
 * Client of the testbed program ({@code target/debug/examples/testbed}): starts it (argument
 * vector, no shell), reads the topology line, then sends one JSON request per line and reads one
 * answer per line. {@link #close()} closes its stdin, which tears the topology down.
 */
public final class Testbed implements AutoCloseable {
    private final Process process;
    private final BufferedReader out;
    private final OutputStream in;
    private final Map<String, Object> topology;
    private final Path repoRoot;
    private final Thread stderrPump;
    private long nextId = 1;

    private Testbed(Process process, Path repoRoot) throws IOException {
        this.process = process;
        this.repoRoot = repoRoot;
        this.out = new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8));
        this.in = process.getOutputStream();
        // The program's stderr (teardown notes) goes to ours, without blocking it.
        this.stderrPump = new Thread(() -> {
            try (BufferedReader err = new BufferedReader(
                    new InputStreamReader(process.getErrorStream(), StandardCharsets.UTF_8))) {
                String line;
                while ((line = err.readLine()) != null) {
                    System.err.println("[testbed] " + line);
                }
            } catch (IOException ignored) {
                // the process is gone
            }
        }, "testbed-stderr");
        stderrPump.setDaemon(true);
        stderrPump.start();
        String first = out.readLine();
        if (first == null) {
            throw new IOException("testbed exited before describing the topology (exit "
                    + waitExit() + ")");
        }
        this.topology = Json.map(Json.parse(first));
        if (!Boolean.TRUE.equals(topology.get("ready"))) {
            throw new IOException("testbed not ready: " + topology.get("error"));
        }
    }

    /** The repository root: {@code -Dnetbridge.repo.root}, else the parent of {@code java/}. */
    public static Path repoRoot() {
        String prop = System.getProperty("netbridge.repo.root");
        if (prop != null && !prop.isEmpty()) {
            return Path.of(prop).toAbsolutePath().normalize();
        }
        Path here = Path.of("").toAbsolutePath();
        return Files.isDirectory(here.resolve("java")) ? here : here.getParent();
    }

    /** The testbed program, or null when it has not been built. */
    public static Path program() {
        Path p = repoRoot().resolve("target/debug/examples/testbed");
        return Files.isExecutable(p) ? p : null;
    }

    /** {@code target/debug/netbridge-entrypoint}. */
    public static Path entrypoint() {
        return repoRoot().resolve("target/debug/netbridge-entrypoint");
    }

    /** True when running as root (namespaces need it). */
    public static boolean isRoot() {
        try {
            Process p = new ProcessBuilder("id", "-u").redirectErrorStream(true).start();
            String uid = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
            p.waitFor(10, TimeUnit.SECONDS);
            return "0".equals(uid);
        } catch (IOException e) {
            return false;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return false;
        }
    }

    /** Why the end-to-end tests cannot run here, or null when they can. */
    public static String unavailableReason() {
        if (!isRoot()) {
            return "end-to-end tests need root (network namespaces); skipped";
        }
        if (program() == null) {
            return "testbed program not built (cargo build --bins --example testbed); skipped";
        }
        if (!Files.isExecutable(entrypoint())) {
            return "netbridge-entrypoint not built (cargo build --bins); skipped";
        }
        return null;
    }

    /** Starts the testbed with a namespace prefix base (at most 4 lower-case letters). */
    public static Testbed start(String prefix, String... extraArgs) throws IOException {
        Path prog = program();
        if (prog == null) {
            throw new IOException("testbed program not built");
        }
        List<String> argv = new ArrayList<>(List.of(prog.toString(), "--prefix", prefix,
                "--max-requests", "5000", "--max-seconds", "1500"));
        argv.addAll(List.of(extraArgs));
        ProcessBuilder pb = new ProcessBuilder(argv);
        // -Dnetbridge.executor.bin runs another build's executor (e.g. a branch under test).
        String exe = System.getProperty("netbridge.executor.bin",
                repoRoot().resolve("target/debug/netbridge-executor").toString());
        pb.environment().put("NETBRIDGE_EXECUTOR_BIN", exe);
        return new Testbed(pb.start(), repoRoot());
    }

    public Map<String, Object> topology() {
        return topology;
    }

    public String str(String key) {
        return Json.str(topology, key);
    }

    /** Executor address of host n (1-based). */
    public String hostAddr(int n) {
        return (String) Json.list(topology, "host_list").get(n - 1);
    }

    /** 1-based index of an executor address in {@code hosts}, or 0. */
    public int hostIndex(String addr) {
        List<Object> l = Json.list(topology, "host_list");
        for (int k = 0; k < l.size(); k++) {
            if (addr.equals(l.get(k)) || addr.startsWith(l.get(k) + ":")) {
                return k + 1;
            }
        }
        return 0;
    }

    /** The management namespace's name (for {@code ip netns exec}). */
    public String mgmtNetnsName() {
        return Path.of(str("mgmt_netns")).getFileName().toString();
    }

    public String fake(String which) {
        return Json.str(topology, "fakes", which);
    }

    public Path repo() {
        return repoRoot;
    }

    /** Sends one request and returns the answer; a request-level error throws. */
    public synchronized Map<String, Object> request(Map<String, Object> req) throws IOException {
        long id = nextId++;
        req.put("id", id);
        in.write((Json.write(req) + "\n").getBytes(StandardCharsets.UTF_8));
        in.flush();
        String line = out.readLine();
        if (line == null) {
            throw new IOException("testbed closed its output (exit " + waitExit() + ")");
        }
        Map<String, Object> answer = Json.map(Json.parse(line));
        if (!Boolean.TRUE.equals(answer.get("ok")) && answer.containsKey("error")) {
            throw new IOException("testbed: " + answer.get("error") + " for " + Json.write(req));
        }
        return answer;
    }

    /** TCP connect from a namespace; the answer ({@code reached}, {@code name}, {@code peer}, {@code failure}). */
    public Probe tcp(String ns, String addr) throws IOException {
        return new Probe(request(Json.obj("op", "tcp", "ns", ns, "addr", addr)));
    }

    public Probe udp(String ns, String addr) throws IOException {
        return new Probe(request(Json.obj("op", "udp", "ns", ns, "addr", addr)));
    }

    public Probe http(String ns, String addr, String path) throws IOException {
        return new Probe(request(Json.obj("op", "http", "ns", ns, "addr", addr, "path", path)));
    }

    public boolean ping(String ns, String addr) throws IOException {
        return Boolean.TRUE.equals(request(Json.obj("op", "ping", "ns", ns, "addr", addr)).get("reached"));
    }

    /** Router namespaces on host n. */
    public List<Object> namespaces(int host) throws IOException {
        return Json.list(request(Json.obj("op", "namespaces", "host", host)), "namespaces");
    }

    /** Host death: kill the executor of host n and delete its namespaces. */
    public Map<String, Object> killHost(int host) throws IOException {
        return request(Json.obj("op", "kill_host", "host", host));
    }

    public void rotateKey(String key) throws IOException {
        request(Json.obj("op", "rotate_key", "key", key));
    }

    public String nft(int host, String netns) throws IOException {
        return Json.str(request(Json.obj("op", "nft", "host", host, "netns", netns)), "ruleset");
    }

    /** {@code GET /v1/networks} of host n's executor. */
    public Map<String, Object> networks(int host) throws IOException {
        return request(Json.obj("op", "networks", "host", host));
    }

    public String log(int host) throws IOException {
        return Json.str(request(Json.obj("op", "log", "host", host)), "log");
    }

    /** Result of a probe. */
    public static final class Probe {
        public final boolean reached;
        public final String name;
        public final String peer;
        public final String failure;
        public final Map<String, Object> raw;

        Probe(Map<String, Object> a) {
            raw = a;
            reached = Boolean.TRUE.equals(a.get("reached"));
            name = a.get("name") instanceof String ? (String) a.get("name") : null;
            peer = a.get("peer") instanceof String ? (String) a.get("peer") : null;
            failure = a.get("failure") instanceof String ? (String) a.get("failure") : null;
        }

        @Override
        public String toString() {
            return reached ? "answer '" + raw.get("answer") + raw.getOrDefault("body", "") + "'" : "no answer (" + failure + ")";
        }
    }

    private int waitExit() {
        try {
            if (process.waitFor(30, TimeUnit.SECONDS)) {
                return process.exitValue();
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        return -1;
    }

    /** Closes stdin (the program tears everything down) and waits, bounded. */
    @Override
    public void close() {
        try {
            in.close();
        } catch (IOException ignored) {
            // already gone
        }
        try {
            if (!process.waitFor(120, TimeUnit.SECONDS)) {
                // SIGTERM also triggers its teardown; only our own child, by handle.
                process.destroy();
                if (!process.waitFor(60, TimeUnit.SECONDS)) {
                    process.destroyForcibly();
                }
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            process.destroy();
        }
    }
}
