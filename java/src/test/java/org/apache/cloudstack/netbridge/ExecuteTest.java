package org.apache.cloudstack.netbridge;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * execute through JNI: the failure classes arrive as distinct exception kinds and codes, the
 * timeout is enforced, and the registry form reads the registration's details.
 */
class ExecuteTest {
    private static final String PN = "6a1c4e2f-8b3d-4c5e-9f70-1a2b3c4d5e6f";

    @TempDir
    Path dir;

    private static String envelope(String hosts, String network) {
        return "{\"physical-network-extension-details\": {\"hosts\": \"" + hosts + "\", \"executor.key\": \"k\","
                + " \"executor.insecure\": \"true\"}, \"network-extension-details\": {\"host\": \"" + hosts
                + "\", \"namespace\": \"cs-net-" + network + "\"}, \"payload\": {\"network_id\": \"" + network + "\"}}";
    }

    private static int closedPort() throws IOException {
        try (ServerSocket s = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
            return s.getLocalPort();
        }
    }

    @Test
    void missingHostsIsAConfigurationFailure() {
        try (NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir))) {
            String env = "{\"physical-network-extension-details\": {\"executor.key\": \"k\"},"
                    + " \"network-extension-details\": {}, \"payload\": {\"network_id\": \"42\"}}";
            NetBridgeException e = assertThrows(NetBridgeException.class,
                    () -> b.execute("implement-network", env, Duration.ofSeconds(5)));
            assertEquals(NetBridgeException.Kind.CONFIGURATION, e.getKind());
            assertEquals(431, e.getCode());
            assertTrue(e.getText().contains("hosts"), e.getText());
            NetBridgeException u = assertThrows(NetBridgeException.class,
                    () -> b.execute("no-such-command", env, Duration.ofSeconds(5)));
            assertEquals(NetBridgeException.Kind.CONFIGURATION, u.getKind());
            NetBridgeException m = assertThrows(NetBridgeException.class,
                    () -> b.execute("implement-network", "not json", Duration.ofSeconds(5)));
            assertEquals(NetBridgeException.Kind.CONFIGURATION, m.getKind());
            assertTrue(m.getText().startsWith("malformed JSON"), m.getText());
        }
    }

    @Test
    void closedPortIsUnreachable() throws IOException {
        String host = "127.0.0.1:" + closedPort();
        try (NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir))) {
            NetBridgeException e = assertThrows(NetBridgeException.class,
                    () -> b.execute("implement-network", envelope(host, "42"), Duration.ofSeconds(20)));
            assertEquals(NetBridgeException.Kind.UNREACHABLE, e.getKind(), e.toString());
            assertEquals(503, e.getCode());
            assertTrue(e.getText().contains(host), e.getText());
        }
    }

    @Test
    void hangingExecutorTimesOut() throws Exception {
        List<Socket> held = new ArrayList<>();
        try (ServerSocket server = new ServerSocket(0, 50, InetAddress.getLoopbackAddress())) {
            Thread acceptor = new Thread(() -> {
                try {
                    while (true) {
                        Socket s = server.accept(); // accept, never answer
                        synchronized (held) {
                            held.add(s);
                        }
                    }
                } catch (IOException closed) {
                    // server closed
                }
            });
            acceptor.setDaemon(true);
            acceptor.start();
            String host = "127.0.0.1:" + server.getLocalPort();
            try (NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir))) {
                long start = System.nanoTime();
                NetBridgeException e = assertThrows(NetBridgeException.class,
                        () -> b.execute("implement-network", envelope(host, "42"), Duration.ofMillis(700)));
                long tookMs = (System.nanoTime() - start) / 1_000_000;
                assertEquals(NetBridgeException.Kind.TIMEOUT, e.getKind(), e.toString());
                assertEquals(504, e.getCode());
                assertTrue(e.getText().startsWith("implement-network timed out after 0.700 s"), e.getText());
                // the call returned because of the timeout, not a socket default (generous bound)
                assertTrue(tookMs < 30_000, "took " + tookMs + " ms");
            }
        } finally {
            synchronized (held) {
                for (Socket s : held) {
                    s.close();
                }
            }
        }
    }

    @Test
    void executorFailureIsRemoteAndSuccessReturnsTheOutput() throws IOException {
        HttpServer server = HttpServer.create(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0), 0);
        server.createContext("/v1/commands/", ex -> {
            String path = ex.getRequestURI().getPath();
            byte[] body = (path.endsWith("/implement-network")
                    ? "{\"status\":\"error\",\"message\":\"bridge nbb0 busy\"}"
                    : "{\"status\":\"success\",\"message\":\"ok\"}").getBytes(StandardCharsets.UTF_8);
            ex.getResponseHeaders().add("content-type", "application/json");
            ex.sendResponseHeaders(200, body.length);
            try (OutputStream o = ex.getResponseBody()) {
                o.write(body);
            }
        });
        server.start();
        String host = "127.0.0.1:" + server.getAddress().getPort();
        try (NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir))) {
            NetBridgeException e = assertThrows(NetBridgeException.class,
                    () -> b.execute("implement-network", envelope(host, "42"), Duration.ofSeconds(10)));
            assertEquals(NetBridgeException.Kind.REMOTE, e.getKind(), e.toString());
            assertEquals(502, e.getCode());
            assertTrue(e.getText().contains("bridge nbb0 busy"), e.getText());
            String out = b.execute("add-dns-entry", envelope(host, "42"), Duration.ofSeconds(10));
            assertTrue(out.contains("\"status\":\"success\""), out);
        } finally {
            server.stop(0);
        }
    }

    @Test
    void registryFormReadsTheRegistrationAndRefusesUnknownOnes() throws IOException {
        String host = "127.0.0.1:" + closedPort();
        try (NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir))) {
            NetBridgeException unknown = assertThrows(NetBridgeException.class, () -> b.execute("no-such-ext", PN,
                    "implement-network", envelope("x", "42"), Duration.ofSeconds(5)));
            assertEquals(NetBridgeException.Kind.CONFIGURATION, unknown.getKind());
            assertEquals("extension no-such-ext is not registered with physical network " + PN, unknown.getText());

            String extId = Api.createExtension(b, "nbb-ext");
            Api.register(b, extId, PN, Map.of("hosts", host, "executor.key", "secret-1",
                    "executor.insecure", "true"));
            // the envelope names no usable host; the registry's details are used
            NetBridgeException e = assertThrows(NetBridgeException.class, () -> b.execute(extId, PN,
                    "implement-network", envelope("nowhere.invalid", "42"), Duration.ofSeconds(20)));
            assertEquals(NetBridgeException.Kind.UNREACHABLE, e.getKind(), e.toString());
            assertTrue(e.getText().contains(host), e.getText());
            assertTrue(!e.getText().contains("secret-1"), e.getText());
        }
    }

    @Test
    void dispatchNetnsThatCannotBeOpenedFailsOpen() {
        NetBridgeConfig config = NetBridgeConfig.builder().database(dir.resolve("nb.db")).keyFile(dir.resolve("k"))
                .dispatchNetns(Path.of("/run/netns/nbb-missing-ns")).build();
        NetBridgeException e = assertThrows(NetBridgeException.class, () -> NetBridge.open(config));
        assertEquals(431, e.getCode());
        assertEquals(NetBridgeException.Kind.CONFIGURATION, e.getKind(), e.toString());
        assertTrue(e.getText().startsWith("cannot open network namespace '/run/netns/nbb-missing-ns': "), e.getText());
    }
}
