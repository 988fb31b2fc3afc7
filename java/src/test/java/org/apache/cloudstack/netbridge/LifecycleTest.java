package org.apache.cloudstack.netbridge;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Open/close cycles, double close, use after close, close while other threads call. */
class LifecycleTest {
    @TempDir
    Path dir;

    @Test
    void hundredOpenCloseCyclesOnTheSameStore() {
        NetBridgeConfig config = NetBridgeConfig.inDirectory(dir);
        for (int i = 0; i < 100; i++) {
            NetBridge b = NetBridge.open(config);
            assertFalse(b.isClosed());
            // a real round trip through the handle each time
            assertEquals(432, assertThrows(NetBridgeException.class, () -> b.api("nope", Map.of())).getCode());
            b.close();
            assertTrue(b.isClosed());
        }
    }

    private Path key(String name, int length, String mode) throws IOException {
        Path p = dir.resolve(name);
        Files.write(p, new byte[length]);
        Files.setPosixFilePermissions(p, PosixFilePermissions.fromString(mode));
        return p;
    }

    private static NetBridgeException refusedOpen(Path database, Path keyFile) {
        NetBridgeConfig config = NetBridgeConfig.builder().database(database).keyFile(keyFile).build();
        return assertThrows(NetBridgeException.class, () -> NetBridge.open(config));
    }

    @Test
    void unusableSettingsAreConfigurationErrorsNamingTheSetting() throws IOException {
        Path loose = key("loose.key", 32, "rw-r--r--");
        Path shortKey = key("short.key", 16, "rw-------");
        Path good = key("good.key", 32, "rw-------");
        Path keyDir = Files.createDirectory(dir.resolve("key-is-a-dir"));
        Path dbDir = Files.createDirectory(dir.resolve("db-is-a-dir"));
        Map<NetBridgeException, String> cases = new java.util.LinkedHashMap<>();
        cases.put(refusedOpen(dir.resolve("a.db"), loose), "key file " + loose
                + " is accessible by group or others (mode 644); refusing to use it, chmod 600 it");
        cases.put(refusedOpen(dir.resolve("b.db"), shortKey), "key file " + shortKey + " must hold exactly 32 bytes");
        cases.put(refusedOpen(dir.resolve("c.db"), keyDir), "key file " + keyDir + " is not a regular file");
        cases.put(refusedOpen(dbDir, good), "database " + dbDir + " is a directory, not a SQLite database file");
        for (Map.Entry<NetBridgeException, String> c : cases.entrySet()) {
            NetBridgeException e = c.getKey();
            assertEquals(NetBridgeException.Kind.CONFIGURATION, e.getKind(), e.toString());
            assertEquals(431, e.getCode(), e.toString());
            assertEquals(c.getValue(), e.getText());
        }
        // Nothing was created by the refused opens.
        try (java.util.stream.Stream<Path> files = Files.list(dir)) {
            assertEquals(List.of("db-is-a-dir", "good.key", "key-is-a-dir", "loose.key", "short.key"),
                    files.map(p -> p.getFileName().toString()).sorted().toList());
        }
    }

    @Test
    void closeTwiceIsHarmless() {
        NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir));
        b.close();
        b.close();
        assertTrue(b.isClosed());
    }

    @Test
    void useAfterCloseIsAClearException() {
        NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir));
        b.close();
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> b.api("listExtensions", Map.of()));
        assertEquals("NetBridge is closed", e.getMessage());
        assertThrows(IllegalStateException.class,
                () -> b.updateRegisteredExtension().extensionId("x").call());
    }

    @Test
    void closeWhileOtherThreadsCallNeverCrashes() throws Exception {
        NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir));
        int threads = 8;
        CountDownLatch started = new CountDownLatch(threads);
        AtomicInteger answered = new AtomicInteger();
        AtomicInteger refused = new AtomicInteger();
        AtomicReference<Throwable> unexpected = new AtomicReference<>();
        List<Thread> workers = new ArrayList<>();
        for (int t = 0; t < threads; t++) {
            Thread w = new Thread(() -> {
                started.countDown();
                for (int i = 0; i < 2000; i++) {
                    try {
                        b.api("listExtensions", Map.of());
                        answered.incrementAndGet();
                    } catch (NetBridgeException e) {
                        answered.incrementAndGet(); // an API answer, still through a live handle
                    } catch (IllegalStateException e) {
                        refused.incrementAndGet();
                        return;
                    } catch (Throwable e) {
                        unexpected.set(e);
                        return;
                    }
                }
            });
            workers.add(w);
            w.start();
        }
        started.await();
        b.close();
        for (Thread w : workers) {
            w.join();
        }
        assertEquals(null, unexpected.get());
        assertTrue(b.isClosed());
        assertTrue(answered.get() + refused.get() > 0);
    }
}
