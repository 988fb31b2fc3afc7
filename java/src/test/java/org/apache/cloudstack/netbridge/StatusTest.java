package org.apache.cloudstack.netbridge;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@link NetBridge#status(Duration)} through JNI against the real {@code netbridge-executor} (TLS on
 * 127.0.0.1, no root needed): a healthy pinned executor and a host nobody listens on, then the
 * registration repaired by {@code updateRegisteredExtension}. Skipped when the executor binary has not
 * been built ({@code cargo build --bins}).
 */
class StatusTest {
    private static final String PN = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d";
    private static final String KEY = "nbs-status-key-0123456789abcdef";
    private static final String DEAD = "127.0.0.1:1";

    @TempDir
    Path dir;

    private Process executor;

    @AfterEach
    void stopExecutor() throws InterruptedException {
        if (executor != null) {
            executor.destroy();
            executor.waitFor();
        }
    }

    private static Path executorBinary() {
        return Path.of(System.getProperty("netbridge.executor.bin", "../target/debug/netbridge-executor"))
                .toAbsolutePath().normalize();
    }

    /** Starts the executor on port 0 and reads the port it bound from its log. */
    private int startExecutor(Path bin) throws Exception {
        Path keyFile = dir.resolve("executor.key");
        Files.createFile(keyFile, PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------")));
        Files.writeString(keyFile, KEY);
        executor = new ProcessBuilder(bin.toString(), "--listen", "127.0.0.1:0", "--state-dir",
                dir.resolve("exec").toString(), "--key-file", keyFile.toString(), "--tls-cert",
                dir.resolve("cert.pem").toString(), "--tls-key", dir.resolve("key.pem").toString(), "--host-name",
                "nbs-java", "--log-level", "info").redirectErrorStream(true).start();
        CompletableFuture<Integer> port = new CompletableFuture<>();
        Thread drain = new Thread(() -> {
            try (BufferedReader r = new BufferedReader(
                    new InputStreamReader(executor.getInputStream(), StandardCharsets.UTF_8))) {
                String line;
                while ((line = r.readLine()) != null) {
                    int at = line.indexOf("listening on 127.0.0.1:");
                    if (at >= 0 && !port.isDone()) {
                        String rest = line.substring(at + "listening on 127.0.0.1:".length());
                        port.complete(Integer.parseInt(rest.split("\\s")[0]));
                    }
                }
            } catch (IOException | RuntimeException e) {
                port.completeExceptionally(e);
            }
            port.completeExceptionally(new IOException("executor exited before listening"));
        }, "executor-log");
        drain.setDaemon(true);
        drain.start();
        return port.get(60, TimeUnit.SECONDS);
    }

    @Test
    void statusShowsHealthyAndUnreachableExecutorsThroughJni() throws Exception {
        Path bin = executorBinary();
        assumeTrue(Files.isExecutable(bin), "no executor binary at " + bin);
        Process gen = new ProcessBuilder(bin.toString(), "gen-cert", "--out-dir", dir.toString(), "--name", "nbs-java",
                "--san", "127.0.0.1").redirectError(ProcessBuilder.Redirect.DISCARD).start();
        String fingerprint = new String(gen.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
        assertEquals(0, gen.waitFor());
        String host = "127.0.0.1:" + startExecutor(bin);

        try (NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir.resolve("bridge")))) {
            String extId = Api.createExtension(b, "nbs-status-ext");
            Api.register(b, extId, PN, Map.of("hosts", host + "," + DEAD, "executor.key", KEY,
                    "executor.fingerprint", fingerprint));

            Object report = Json.parse(b.status(Duration.ofSeconds(10)));
            assertEquals(false, Json.at(report, "ok"));
            assertEquals(1L, Json.at(report, "problems"));
            assertEquals(NetBridge.nativeVersion(), Json.str(report, "bridge_version"));
            List<Object> executors = Json.list(report, "extensions", 0, "registrations", 0, "executors");
            assertEquals(2, executors.size());
            Map<String, Object> good = Json.map(executors.get(0));
            assertEquals(host, good.get("host"));
            assertEquals("ok", good.get("state"));
            assertEquals(true, good.get("pin_match"));
            assertEquals(fingerprint, good.get("fingerprint"));
            assertEquals("nbs-java", good.get("executor_host"));
            assertEquals(NetBridge.nativeVersion(), good.get("version"));
            assertEquals(false, good.get("build_skew"));
            assertEquals(0L, good.get("networks"));
            Map<String, Object> dead = Json.map(executors.get(1));
            assertEquals(DEAD, dead.get("host"));
            assertEquals("unreachable", dead.get("state"));
            assertTrue(((String) dead.get("error")).contains("cannot connect"), dead.toString());
            assertTrue(!Json.write(report).contains(KEY), "the key never shows");

            b.updateRegisteredExtension().extensionId(extId).resourceId(PN).resourceType("PhysicalNetwork")
                    .details(Map.of("hosts", host, "executor.fingerprint", fingerprint)).call();
            Object repaired = Json.parse(b.status(Duration.ofSeconds(10)));
            assertEquals(true, Json.at(repaired, "ok"));
            assertEquals(0L, Json.at(repaired, "problems"));

            assertThrows(IllegalArgumentException.class, () -> b.status(Duration.ZERO));
        }
    }
}
