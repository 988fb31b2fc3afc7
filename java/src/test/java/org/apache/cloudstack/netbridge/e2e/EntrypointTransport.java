package org.apache.cloudstack.netbridge.e2e;

import org.apache.cloudstack.netbridge.Json;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/**
 * CloudStack 4.23's way: the extension script ({@code netbridge-entrypoint}) executed as a process
 * per command with a payload file, {@code <command> <payload-file> <timeout>}. It runs inside the
 * testbed's management namespace ({@code ip netns exec <name> …}, argument vector) where the
 * executors are reachable; its failover journal lives in {@code stateDir}.
 */
public final class EntrypointTransport implements Transport {
    private final Path entrypoint;
    private final String netns;
    private final Path stateDir;
    private final Path payloadDir;

    public EntrypointTransport(Path entrypoint, String netns, Path workDir) throws IOException {
        this.entrypoint = entrypoint;
        this.netns = netns;
        this.stateDir = Files.createDirectories(workDir.resolve("bridge-state"));
        this.payloadDir = Files.createDirectories(workDir.resolve("payloads"));
    }

    /** Extra environment of every run (e.g. {@code NETBRIDGE_DATABASE} for the shared journal). */
    private final java.util.Map<String, String> environment = new java.util.concurrent.ConcurrentHashMap<>();

    /** Adds {@code name=value} to the environment of every later run. */
    public EntrypointTransport withEnvironment(String name, String value) {
        environment.put(name, value);
        return this;
    }

    /** Standard error of the last {@link #run} (the entry point's diagnostics). */
    public volatile String lastStderr = "";

    /** Runs the entry point; returns exit code and stdout. */
    public Map.Entry<Integer, String> run(String command, String envelopeJson, int timeoutSeconds)
            throws IOException, InterruptedException {
        Path payload = Files.createTempFile(payloadDir, command.replaceAll("[^a-z-]", "_"), ".json");
        Path err = Files.createTempFile(payloadDir, "stderr", ".txt");
        try {
            Files.writeString(payload, envelopeJson, StandardCharsets.UTF_8);
            ProcessBuilder pb = new ProcessBuilder(List.of("ip", "netns", "exec", netns, entrypoint.toString(),
                    command, payload.toString(), Integer.toString(timeoutSeconds)));
            pb.environment().put("NETBRIDGE_STATE_DIR", stateDir.toString());
            pb.environment().putAll(environment);
            pb.redirectError(err.toFile());
            Process p = pb.start();
            byte[] out = p.getInputStream().readAllBytes();
            if (!p.waitFor(timeoutSeconds + 30L, TimeUnit.SECONDS)) {
                p.destroyForcibly();
                throw new IOException("entrypoint did not finish");
            }
            lastStderr = Files.readString(err, StandardCharsets.UTF_8).trim();
            return Map.entry(p.exitValue(), new String(out, StandardCharsets.UTF_8).trim());
        } finally {
            Files.deleteIfExists(payload);
            Files.deleteIfExists(err);
        }
    }

    @Override
    public String execute(String command, String envelopeJson, int timeoutSeconds) throws CommandFailure {
        Map.Entry<Integer, String> r;
        try {
            r = run(command, envelopeJson, timeoutSeconds);
        } catch (IOException e) {
            throw new CommandFailure(-1, e.toString());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new CommandFailure(-1, "interrupted");
        }
        String out = r.getValue();
        if (r.getKey() != 0) {
            throw new CommandFailure(r.getKey(), out);
        }
        // docs/protocol.md: a JSON object whose status is not success is a failure even with exit 0.
        if (out.startsWith("{")) {
            Object status = Json.map(Json.parse(out)).get("status");
            if (status instanceof String && !"success".equalsIgnoreCase((String) status)) {
                throw new CommandFailure(0, out);
            }
        }
        return out;
    }

    @Override
    public String toString() {
        return "netbridge-entrypoint (process per command)";
    }
}
