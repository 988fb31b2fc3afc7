package org.apache.cloudstack.netbridge;

import java.nio.file.Path;
import java.util.Objects;
import java.util.logging.Level;

/**
 * How to open a {@link NetBridge}: the SQLite database file, the key file protecting secrets at
 * rest (created with mode 0600 on first use), and optionally the native log level.
 *
 * <p>The log level is process-wide (the native core has one logger): when set, it becomes the
 * level of the {@code java.util.logging} logger {@value NativeLog#LOGGER_NAME}; when not set,
 * that logger's configured level applies.
 */
public final class NetBridgeConfig {
    private final Path database;
    private final Path keyFile;
    private final Level logLevel;
    private final Path dispatchNetns;

    private NetBridgeConfig(Builder b) {
        this.database = Objects.requireNonNull(b.database, "database");
        this.keyFile = Objects.requireNonNull(b.keyFile, "keyFile");
        this.logLevel = b.logLevel;
        this.dispatchNetns = b.dispatchNetns;
    }

    /** {@code <dir>/netbridge.db} and {@code <dir>/secret.key}, the layout of the native default. */
    public static NetBridgeConfig inDirectory(Path dir) {
        return builder().database(dir.resolve("netbridge.db")).keyFile(dir.resolve("secret.key")).build();
    }

    public static Builder builder() {
        return new Builder();
    }

    public Path database() {
        return database;
    }

    public Path keyFile() {
        return keyFile;
    }

    /** The requested native log level, or {@code null} to keep the Java logger's configuration. */
    public Level logLevel() {
        return logLevel;
    }

    /**
     * The network namespace (e.g. {@code /run/netns/mgmt}) in which the bridge's executor traffic
     * runs, or {@code null} for the caller's namespace. See {@link Builder#dispatchNetns(Path)}.
     */
    public Path dispatchNetns() {
        return dispatchNetns;
    }

    @Override
    public String toString() {
        return "NetBridgeConfig{database=" + database + ", keyFile=" + keyFile + ", logLevel=" + logLevel
                + ", dispatchNetns=" + dispatchNetns + "}";
    }

    /** Builder for {@link NetBridgeConfig}. */
    public static final class Builder {
        private Path database;
        private Path keyFile;
        private Level logLevel;
        private Path dispatchNetns;

        private Builder() {
        }

        public Builder database(Path database) {
            this.database = database;
            return this;
        }

        public Builder keyFile(Path keyFile) {
            this.keyFile = keyFile;
            return this;
        }

        public Builder logLevel(Level level) {
            this.logLevel = level;
            return this;
        }

        /** Rust names ({@code off, error, warn, info, debug, trace}) or java.util.logging names. */
        public Builder logLevel(String level) {
            this.logLevel = level == null ? null : NativeLog.parseLevel(level);
            return this;
        }

        /**
         * Runs every connection to executors (commands and health probes) inside this network
         * namespace (a file such as {@code /run/netns/mgmt}, as {@code ip netns add} creates), while
         * the JVM stays where it is: for management networks in a VRF/namespace. The native
         * dispatch threads enter it when they start (needs CAP_SYS_ADMIN); {@link NetBridge#open}
         * fails with a NetBridgeException when it cannot be entered.
         */
        public Builder dispatchNetns(Path netns) {
            this.dispatchNetns = netns;
            return this;
        }

        public NetBridgeConfig build() {
            return new NetBridgeConfig(this);
        }
    }
}
