package org.apache.cloudstack.netbridge;

import java.time.Duration;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.locks.ReentrantReadWriteLock;
import java.util.logging.Level;

/**
 * The netbridge native core, in process through JNI.
 *
 * <pre>{@code
 * try (NetBridge bridge = NetBridge.open(NetBridgeConfig.inDirectory(stateDir))) {
 *     String json = bridge.api("listExtensions", Map.of("name", "netbridge"));
 * }
 * }</pre>
 *
 * <p>Thread safety: one instance serves any number of threads at once. Calls hold a read lock
 * on the native handle and {@link #close()} takes the write lock, so closing waits for running
 * calls, never frees memory another thread is using, and a second close does nothing. Calls
 * after close throw {@link IllegalStateException}.
 *
 * <p>Errors: API errors throw {@link NetBridgeException} with CloudStack's code and text.
 */
public final class NetBridge implements AutoCloseable {
    private final ReentrantReadWriteLock lock = new ReentrantReadWriteLock();
    private final NetBridgeConfig config;
    private long handle; // guarded by lock; 0 once closed

    private NetBridge(NetBridgeConfig config, long handle) {
        this.config = config;
        this.handle = handle;
    }

    /**
     * Opens (creating and migrating if needed) the registry described by {@code config}.
     *
     * @throws NetBridgeException kind CONFIGURATION (431) when a setting names something unusable
     *     (the text names it); nothing is created then
     */
    public static NetBridge open(NetBridgeConfig config) {
        Objects.requireNonNull(config, "config");
        NativeBridge.ensureLoaded();
        if (config.logLevel() != null) {
            NativeLog.LOGGER.setLevel(config.logLevel());
        }
        NativeLog.applyLevel();
        long h = NativeBridge.open(config.database(),
                config.cloudstackDbProperties() == null ? null : config.cloudstackDbProperties().toString(),
                config.keyFile().toString(),
                config.dispatchNetns() == null ? null : config.dispatchNetns().toString());
        return new NetBridge(config, h);
    }

    public NetBridgeConfig config() {
        return config;
    }

    /**
     * Runs one CloudStack-style API command ({@code createExtension}, {@code listExtensions},
     * ...) with flat parameters ({@code details[0].key=...}) and returns the JSON response
     * ({@code {"<command lower-case>response": {...}}}).
     *
     * @throws NetBridgeException the API error (code and text)
     * @throws IllegalStateException after {@link #close()}
     */
    public String api(String command, Map<String, String> params) {
        Objects.requireNonNull(command, "command");
        String[] keys;
        String[] values;
        if (params == null || params.isEmpty()) {
            keys = new String[0];
            values = keys;
        } else {
            keys = new String[params.size()];
            values = new String[params.size()];
            int i = 0;
            for (Map.Entry<String, String> e : params.entrySet()) {
                keys[i] = e.getKey();
                values[i] = e.getValue();
                i++;
            }
        }
        ReentrantReadWriteLock.ReadLock read = lock.readLock();
        read.lock();
        try {
            return answered(NativeBridge.api(liveHandle(), command, keys, values));
        } finally {
            read.unlock();
        }
    }

    /** Starts a typed {@code updateRegisteredExtension} call. */
    public UpdateRegisteredExtension updateRegisteredExtension() {
        return new UpdateRegisteredExtension(this);
    }

    /**
     * Runs a network command on the executor chosen for it and returns the command's output
     * (what the extension script would print on stdout; for {@code ensure-network-device} the
     * one-line {@code extension.details} JSON). The executor endpoints and credentials come from
     * the envelope's {@code physical-network-extension-details}, as CloudStack sends them.
     *
     * @param command      the command name, e.g. {@code implement-network}
     * @param envelopeJson the payload envelope as CloudStack writes it
     * @param timeout      the command's time budget (enforced; must be positive)
     * @throws NetBridgeException {@link NetBridgeException.Kind CONFIGURATION} (431),
     *     UNREACHABLE (503), TIMEOUT (504) or REMOTE (502)
     */
    public String execute(String command, String envelopeJson, Duration timeout) {
        Objects.requireNonNull(command, "command");
        Objects.requireNonNull(envelopeJson, "envelopeJson");
        long millis = timeoutMillis(timeout);
        ReentrantReadWriteLock.ReadLock read = lock.readLock();
        read.lock();
        try {
            return answered(NativeBridge.execute(liveHandle(), command, envelopeJson, millis));
        } finally {
            read.unlock();
        }
    }

    /**
     * As {@link #execute(String, String, Duration)}, with the registration details read from the
     * registry (the extension's registration on that physical network, hidden details decrypted
     * in memory only) and merged into the envelope sent, so that {@code updateRegisteredExtension}
     * (a rotated {@code executor.key}, changed {@code hosts}) applies to the next command. Also
     * keeps the registry's network bindings: a successful {@code ensure-network-device} binds the
     * network (or VPC) to the extension's provider on that physical network, {@code
     * destroy-network} / {@code shutdown-network} / {@code shutdown-vpc} remove the binding.
     *
     * @param extensionId       the extension's id (UUID)
     * @param physicalNetworkId the physical network it is registered with
     * @throws NetBridgeException as {@link #execute(String, String, Duration)}; an unknown
     *     extension or missing registration is a CONFIGURATION failure
     */
    public String execute(String extensionId, String physicalNetworkId, String command, String envelopeJson,
            Duration timeout) {
        Objects.requireNonNull(extensionId, "extensionId");
        Objects.requireNonNull(physicalNetworkId, "physicalNetworkId");
        Objects.requireNonNull(command, "command");
        Objects.requireNonNull(envelopeJson, "envelopeJson");
        long millis = timeoutMillis(timeout);
        ReentrantReadWriteLock.ReadLock read = lock.readLock();
        read.lock();
        try {
            return answered(NativeBridge.executeRegistered(liveHandle(), extensionId, physicalNetworkId, command,
                    envelopeJson, millis));
        } finally {
            read.unlock();
        }
    }

    /**
     * The health of every executor of every extension, as {@code netbridge status --output json}
     * prints it: per extension and registration, each executor host with {@code state} ({@code ok},
     * {@code unreachable}, {@code pin_mismatch}, {@code auth_refused}, {@code unhealthy}),
     * {@code reachable}, the presented certificate's {@code fingerprint} and {@code pin_match},
     * {@code healthy} (signed health), {@code version} and {@code build_skew} against {@link
     * #nativeVersion()}, {@code networks} held, {@code error} and the executor's {@code last_error};
     * {@code ok} and {@code problems} at the top. Read-only; the hosts are probed concurrently.
     *
     * @param timeout bound of each host's probe (must be positive)
     * @throws NetBridgeException 530 when the registry cannot be read
     */
    public String status(Duration timeout) {
        long millis = timeoutMillis(timeout);
        ReentrantReadWriteLock.ReadLock read = lock.readLock();
        read.lock();
        try {
            return answered(NativeBridge.status(liveHandle(), millis));
        } finally {
            read.unlock();
        }
    }

    private static long timeoutMillis(Duration timeout) {
        Objects.requireNonNull(timeout, "timeout");
        if (timeout.isNegative() || timeout.isZero()) {
            throw new IllegalArgumentException("timeout must be positive");
        }
        try {
            return Math.max(1L, timeout.toMillis());
        } catch (ArithmeticException e) {
            return Long.MAX_VALUE;
        }
    }

    /** True once {@link #close()} ran. */
    public boolean isClosed() {
        ReentrantReadWriteLock.ReadLock read = lock.readLock();
        read.lock();
        try {
            return handle == 0;
        } finally {
            read.unlock();
        }
    }

    /** Releases the native handle; waits for running calls; harmless when repeated. */
    @Override
    public void close() {
        if (lock.getReadHoldCount() > 0) {
            // The read lock cannot be upgraded: closing from inside a call would deadlock.
            throw new IllegalStateException("NetBridge.close() called from inside a call on the same thread");
        }
        ReentrantReadWriteLock.WriteLock write = lock.writeLock();
        write.lock();
        try {
            long h = handle;
            if (h != 0) {
                handle = 0;
                NativeBridge.close(h);
            }
        } finally {
            write.unlock();
        }
    }

    /** The native library's build identity ({@code <version>+<git revision>}). */
    public static String nativeVersion() {
        return NativeBridge.version();
    }

    /**
     * The trivial native call: returns {@code value} after a full JNI round trip through the
     * same error and panic handling as every call. For health checks and the round-trip
     * benchmark.
     */
    public static long ping(long value) {
        return NativeBridge.echo(value);
    }

    /** Sets the native log level (process-wide) and the Java logger it reports to. */
    public static void setLogLevel(Level level) {
        NativeBridge.ensureLoaded();
        NativeLog.LOGGER.setLevel(level);
        NativeLog.applyLevel();
    }

    /** Re-reads the Java logger's level after it was changed by other means. */
    public static void refreshLogLevel() {
        NativeBridge.ensureLoaded();
        NativeLog.applyLevel();
    }

    /** The java.util.logging logger native records go to. */
    public static String nativeLoggerName() {
        return NativeLog.LOGGER_NAME;
    }

    /** Adds a map as CloudStack map parameters: {@code <name>[i].key} / {@code <name>[i].value}. */
    public static void putDetails(Map<String, String> params, String name, Map<String, String> details) {
        int i = 0;
        for (Map.Entry<String, String> e : details.entrySet()) {
            params.put(name + "[" + i + "].key", e.getKey());
            params.put(name + "[" + i + "].value", e.getValue());
            i++;
        }
    }

    /** Natives always answer or throw; a null is a broken invariant, not an empty answer. */
    private static String answered(String result) {
        if (result == null) {
            throw new NetBridgeException(NetBridgeException.INTERNAL_ERROR, "native call returned no result");
        }
        return result;
    }

    private long liveHandle() {
        long h = handle;
        if (h == 0) {
            throw new IllegalStateException("NetBridge is closed");
        }
        return h;
    }
}
