package org.apache.cloudstack.netbridge;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Duration;
import java.util.Map;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Through JNI against the real {@code netbridge-executor} (TLS on 127.0.0.1, no root needed: only
 * {@code ensure-network-device} and {@code destroy-network} of a network that was never implemented):
 * registry details, key rotation by {@code updateRegisteredExtension} without a restart, and the
 * binding that makes {@code unregisterExtension} refuse while the network exists. Skipped when the
 * executor binary has not been built ({@code cargo build --bins}).
 */
class ExecutorJniTest {
    private static final String PN = "3d2c1b0a-9f8e-4d7c-8b6a-5f4e3d2c1b0a";
    private static final Duration T = Duration.ofSeconds(15);

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

    private static void writeKey(Path file, String key) throws IOException {
        Path tmp = file.resolveSibling(file.getFileName() + ".tmp");
        Files.deleteIfExists(tmp);
        Files.createFile(tmp, PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------")));
        Files.writeString(tmp, key);
        Files.move(tmp, file, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    }

    private static String ensureEnvelope(String host) {
        // the envelope's own details point nowhere: the registry's are used
        return "{\"physical-network-extension-details\":{\"hosts\":\"192.0.2.1\"},\"network-extension-details\":{},"
                + "\"payload\":{\"network_id\":\"42\",\"current_details\":\"{}\"}}";
    }

    private static String destroyEnvelope(String host) {
        return "{\"physical-network-extension-details\":{},\"network-extension-details\":{\"host\":\"" + host
                + "\",\"namespace\":\"cs-net-42\"},\"payload\":{\"network_id\":\"42\"}}";
    }

    @Test
    void keyRotationAndBindingsThroughJni() throws Exception {
        Path bin = executorBinary();
        assumeTrue(Files.isExecutable(bin), "no executor binary at " + bin);
        Process gen = new ProcessBuilder(bin.toString(), "gen-cert", "--out-dir", dir.toString(), "--name", "nbb-jni",
                "--san", "127.0.0.1").redirectError(ProcessBuilder.Redirect.DISCARD).start();
        String fingerprint = new String(gen.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
        assertEquals(0, gen.waitFor());
        Path keyFile = dir.resolve("executor.key");
        writeKey(keyFile, "nbb-key-one-0123456789abcdef");
        int port;
        try (ServerSocket s = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
            port = s.getLocalPort();
        }
        String host = "127.0.0.1:" + port;
        executor = new ProcessBuilder(bin.toString(), "--listen", host, "--state-dir", dir.resolve("exec").toString(),
                "--key-file", keyFile.toString(), "--tls-cert", dir.resolve("cert.pem").toString(), "--tls-key",
                dir.resolve("key.pem").toString(), "--host-name", "nbb-jni", "--log-level", "warn")
                .redirectErrorStream(true).redirectOutput(dir.resolve("executor.log").toFile()).start();
        waitForPort(port);

        try (NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir.resolve("bridge")))) {
            String extId = Api.createExtension(b, "nbb-jni-ext");
            Api.register(b, extId, PN, Map.of("hosts", host, "executor.key", "nbb-key-one-0123456789abcdef",
                    "executor.fingerprint", fingerprint));
            String expected = "{\"host\":\"" + host + "\",\"namespace\":\"cs-net-42\"}";
            assertEquals(expected, b.execute(extId, PN, "ensure-network-device", ensureEnvelope(host), T));

            // Unregister is refused while network 42 uses the provider.
            Map<String, String> unregister = Api.params("extensionid", extId, "resourceid", PN,
                    "resourcetype", "PhysicalNetwork");
            NetBridgeException refused = assertThrows(NetBridgeException.class,
                    () -> b.api("unregisterExtension", unregister));
            assertEquals("Cannot unregister extension 'nbb-jni-ext' from physical network " + PN
                    + ". Provider is used by 1 existing network service(s)", refused.getText());

            // The executor's key is rotated: the registry's old key is refused, a configuration
            // error that says so (not "unreachable": retrying cannot help)...
            writeKey(keyFile, "nbb-key-two-0123456789abcdef");
            NetBridgeException old = assertThrows(NetBridgeException.class,
                    () -> b.execute(extId, PN, "ensure-network-device", ensureEnvelope(host), T));
            assertEquals(NetBridgeException.Kind.CONFIGURATION, old.getKind(), old.toString());
            assertEquals(431, old.getCode());
            assertTrue(old.getText().contains("executor " + host + " refused the request signature (HTTP 401: "
                    + "authentication failed: signature does not match): check 'executor.key'"), old.getText());
            assertFalse(old.getText().contains("nbb-key-"), old.getText());
            // ...until updateRegisteredExtension rotates it: no restart.
            b.updateRegisteredExtension().extensionId(extId).resourceId(PN).resourceType("PhysicalNetwork")
                    .details(Map.of("hosts", host, "executor.key", "nbb-key-two-0123456789abcdef",
                            "executor.fingerprint", fingerprint))
                    .call();
            assertEquals(expected, b.execute(extId, PN, "ensure-network-device", ensureEnvelope(host), T));

            // destroy-network removes the binding; then unregister succeeds.
            b.execute(extId, PN, "destroy-network", destroyEnvelope(host), T);
            b.api("unregisterExtension", unregister);
        }
    }

    private void waitForPort(int port) throws IOException, InterruptedException {
        long end = System.nanoTime() + 20_000_000_000L;
        while (System.nanoTime() < end) {
            if (!executor.isAlive()) {
                throw new IOException("executor exited: " + Files.readString(dir.resolve("executor.log")));
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
}
