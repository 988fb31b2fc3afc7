package org.apache.cloudstack.netbridge;

import java.util.concurrent.atomic.AtomicLong;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;

/**
 * Receives the native core's {@code log} records into {@code java.util.logging}, logger
 * {@value #LOGGER_NAME}. The native side only formats and forwards records up to the level
 * last pushed with {@link #applyLevel()}, so a disabled level costs nothing.
 *
 * <p>Level codes shared with Rust: 0 off, 1 error (SEVERE), 2 warn (WARNING), 3 info (INFO),
 * 4 debug (FINE), 5 trace (FINEST).
 */
final class NativeLog {
    static final String LOGGER_NAME = "org.apache.cloudstack.netbridge.native";
    static final Logger LOGGER = Logger.getLogger(LOGGER_NAME);

    private static final Level[] LEVELS = {Level.OFF, Level.SEVERE, Level.WARNING, Level.INFO, Level.FINE,
        Level.FINEST};

    /** Records the native side handed over (tests prove disabled levels never cross JNI). */
    static final AtomicLong FORWARDED = new AtomicLong();

    private NativeLog() {
    }

    /** The most verbose native level the Java logger currently accepts. */
    static int currentCode() {
        for (int code = LEVELS.length - 1; code >= 1; code--) {
            if (LOGGER.isLoggable(LEVELS[code])) {
                return code;
            }
        }
        return 0;
    }

    /** Pushes the Java logger's effective level to the native side. */
    static void applyLevel() {
        NativeBridge.setMaxLogLevel(currentCode());
    }

    /** Parses Rust names (off, error, warn, info, debug, trace) or java.util.logging names. */
    static Level parseLevel(String name) {
        switch (name.trim().toLowerCase(java.util.Locale.ROOT)) {
            case "off": return Level.OFF;
            case "error": return Level.SEVERE;
            case "warn": return Level.WARNING;
            case "info": return Level.INFO;
            case "debug": return Level.FINE;
            case "trace": return Level.FINEST;
            default: return Level.parse(name.trim().toUpperCase(java.util.Locale.ROOT));
        }
    }

    /** Called from native code (signature {@code (ILjava/lang/String;Ljava/lang/String;)V}). */
    static void log(int code, String target, String message) {
        FORWARDED.incrementAndGet();
        try {
            Level level = LEVELS[Math.max(1, Math.min(code, LEVELS.length - 1))];
            if (!LOGGER.isLoggable(level)) {
                return;
            }
            LogRecord record = new LogRecord(level, message);
            record.setLoggerName(LOGGER_NAME);
            record.setSourceClassName(target);
            record.setSourceMethodName(null);
            LOGGER.log(record);
        } catch (RuntimeException e) {
            // A failing handler must not turn a log line into a native error.
        }
    }
}
