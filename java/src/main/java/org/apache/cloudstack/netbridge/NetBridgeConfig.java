package org.apache.cloudstack.netbridge;

import java.nio.file.Path;
import java.util.Objects;
import java.util.logging.Level;

/**
 * How to open a {@link NetBridge}: the store (a SQLite database file, the default; or
 * CloudStack's own MySQL/MariaDB database, given as {@code mysql://user@host:port/cloud} or
 * through CloudStack's {@code db.properties}), the key file protecting secrets at rest (created
 * with mode 0600 on first use; the same file on every management server sharing a database),
 * and optionally the native log level.
 *
 * <p>The log level is process-wide (the native core has one logger): when set, it becomes the
 * level of the {@code java.util.logging} logger {@value NativeLog#LOGGER_NAME}; when not set,
 * that logger's configured level applies.
 */
public final class NetBridgeConfig {
    private final String database;
    private final Path cloudstackDbProperties;
    private final Path keyFile;
    private final Level logLevel;
    private final Path dispatchNetns;

    private NetBridgeConfig(Builder b) {
        if (b.database == null && b.cloudstackDbProperties == null) {
            throw new NullPointerException("database");
        }
        this.database = b.database == null ? "" : b.database;
        this.cloudstackDbProperties = b.cloudstackDbProperties;
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

    /** The store location: a SQLite path, {@code sqlite:///path} or {@code mysql://…}. */
    public String database() {
        return database;
    }

    /** CloudStack's {@code db.properties} naming the database to use, or {@code null}. */
    public Path cloudstackDbProperties() {
        return cloudstackDbProperties;
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
        return "NetBridgeConfig{database=" + redacted(database) + ", cloudstackDbProperties="
                + cloudstackDbProperties + ", keyFile=" + keyFile + ", logLevel=" + logLevel
                + ", dispatchNetns=" + dispatchNetns + "}";
    }

    /** The location without a password ({@code mysql://user:secret@…} → {@code mysql://user@…}). */
    private static String redacted(String location) {
        return location.replaceFirst("^([a-zA-Z]+://[^:/@]*):[^@/]*@", "$1@");
    }

    /** Builder for {@link NetBridgeConfig}. */
    public static final class Builder {
        private String database;
        private Path cloudstackDbProperties;
        private Path keyFile;
        private Level logLevel;
        private Path dispatchNetns;

        private Builder() {
        }

        /** The embedded SQLite store in this file. */
        public Builder database(Path database) {
            this.database = database == null ? null : database.toString();
            return this;
        }

        /**
         * The store as a location: a SQLite path, {@code sqlite:///path}, or CloudStack's
         * database {@code mysql://user@host:port/cloud} (the password from the environment
         * variable {@code NETBRIDGE_DB_PASSWORD} of the process; parameters such as
         * {@code ?root_cert_path=/etc/netbridge/db-ca.pem} turn on TLS).
         */
        public Builder database(String location) {
            this.database = location;
            return this;
        }

        /**
         * Uses the database that CloudStack's own {@code db.properties} names (host, port, user,
         * password, name of the {@code cloud} schema), so that nothing is configured twice. An
         * encrypted password ({@code ENC(…)}) cannot be read: {@link NetBridge#open} then fails
         * with a configuration error that says so.
         */
        public Builder cloudstackDbProperties(Path file) {
            this.cloudstackDbProperties = file;
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
