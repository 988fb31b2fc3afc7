package org.apache.cloudstack.netbridge;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import java.util.stream.Collectors;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Native log records reach java.util.logging at the enabled level, and nothing crosses when off. */
class LoggingTest {
    private static final int ERROR = 1;
    private static final int INFO = 3;
    private static final int DEBUG = 4;
    private static final int TRACE = 5;

    @TempDir
    Path dir;

    private final List<LogRecord> records = new CopyOnWriteArrayList<>();
    private final Handler capture = new Handler() {
        @Override
        public void publish(LogRecord r) {
            records.add(r);
        }

        @Override
        public void flush() {
        }

        @Override
        public void close() {
        }
    };
    private Logger logger;
    private Level saved;

    @BeforeEach
    void attach() {
        NativeBridge.ensureLoaded();
        logger = Logger.getLogger(NetBridge.nativeLoggerName());
        saved = logger.getLevel();
        capture.setLevel(Level.ALL);
        logger.addHandler(capture);
    }

    @AfterEach
    void detach() {
        logger.removeHandler(capture);
        NetBridge.setLogLevel(saved);
    }

    private List<String> messages() {
        return records.stream().map(LogRecord::getMessage).collect(Collectors.toList());
    }

    @Test
    void recordsAtOrAboveTheEnabledLevelArrive() {
        NetBridge.setLogLevel(Level.INFO);
        NativeBridge.logForTest(ERROR, "e1", false);
        NativeBridge.logForTest(INFO, "i1", false);
        NativeBridge.logForTest(DEBUG, "d1", false);
        NativeBridge.logForTest(TRACE, "t1", false);
        assertEquals(List.of("e1", "i1"), messages());
        assertEquals(Level.SEVERE, records.get(0).getLevel());
        assertEquals(Level.INFO, records.get(1).getLevel());
        assertEquals("netbridge::test", records.get(1).getSourceClassName());

        records.clear();
        NetBridge.setLogLevel(Level.FINE);
        NativeBridge.logForTest(DEBUG, "d2", false);
        NativeBridge.logForTest(TRACE, "t2", false);
        assertEquals(List.of("d2"), messages());
        assertEquals(Level.FINE, records.get(0).getLevel());

        records.clear();
        NetBridge.setLogLevel(Level.ALL);
        NativeBridge.logForTest(TRACE, "t3", false);
        assertEquals(List.of("t3"), messages());
        assertEquals(Level.FINEST, records.get(0).getLevel());
    }

    @Test
    void nothingCrossesJniWhenOff() {
        NetBridge.setLogLevel(Level.OFF);
        long before = NativeLog.FORWARDED.get();
        NativeBridge.logForTest(ERROR, "e", false);
        NativeBridge.logForTest(INFO, "i", true);
        try (NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir))) {
            try {
                b.api("listExtensions", java.util.Map.of());
            } catch (NetBridgeException ignored) {
                // the stub answers 432; either way no record may cross
            }
        }
        assertEquals(before, NativeLog.FORWARDED.get());
        assertEquals(List.of(), messages());
    }

    @Test
    void recordsFromThreadsTheJvmDoesNotKnowArrive() {
        NetBridge.setLogLevel(Level.INFO);
        NativeBridge.logForTest(INFO, "from a native thread", true);
        assertEquals(List.of("from a native thread"), messages());
    }

    @Test
    void openTakesTheConfiguredLevelAndReportsItself() {
        NetBridgeConfig config = NetBridgeConfig.builder()
                .database(dir.resolve("db.sqlite"))
                .keyFile(dir.resolve("secret.key"))
                .logLevel("info")
                .build();
        try (NetBridge b = NetBridge.open(config)) {
            assertEquals(config, b.config());
            assertEquals(Level.INFO, logger.getLevel());
            assertTrue(messages().stream().anyMatch(m -> m.startsWith("netbridge ") && m.contains(" opened ")),
                    messages().toString());
        }
        records.clear();
        NetBridgeConfig quiet = NetBridgeConfig.builder()
                .database(dir.resolve("db.sqlite"))
                .keyFile(dir.resolve("secret.key"))
                .logLevel("off")
                .build();
        try (NetBridge b = NetBridge.open(quiet)) {
            assertEquals(quiet, b.config());
            assertEquals(Level.OFF, logger.getLevel());
        }
        assertEquals(List.of(), messages());
    }

    @Test
    void levelNamesParse() {
        assertEquals(Level.SEVERE, NativeLog.parseLevel("error"));
        assertEquals(Level.WARNING, NativeLog.parseLevel("WARN"));
        assertEquals(Level.FINE, NativeLog.parseLevel("debug"));
        assertEquals(Level.FINEST, NativeLog.parseLevel("trace"));
        assertEquals(Level.CONFIG, NativeLog.parseLevel("config"));
    }
}
