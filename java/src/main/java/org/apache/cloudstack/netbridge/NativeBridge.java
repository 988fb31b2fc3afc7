package org.apache.cloudstack.netbridge;

/**
 * The native methods, exported by {@code src/jni/mod.rs}. Package-private: callers use
 * {@link NetBridge}. Errors arrive as {@link NetBridgeException}; natives never crash the JVM.
 */
final class NativeBridge {
    static {
        NativeLoader.load();
        init(NetBridgeException.class, NativeLog.class);
        NativeLog.applyLevel();
    }

    private NativeBridge() {
    }

    /** Forces class initialisation (library load). */
    static void ensureLoaded() {
        // the static initializer did the work
    }

    private static native void init(Class<?> exceptionClass, Class<?> logClass);

    static native void setMaxLogLevel(int code);

    /**
     * {@code database}: a store location (SQLite path, {@code sqlite:///path} or
     * {@code mysql://user@host:port/cloud}); {@code cloudstackDbProperties}, when not null,
     * names CloudStack's {@code db.properties} whose database is used instead.
     * {@code dispatchNetns} may be null (the caller's namespace).
     */
    static native long open(String database, String cloudstackDbProperties, String keyFile,
            String dispatchNetns);

    static native void close(long handle);

    static native String api(long handle, String command, String[] keys, String[] values);

    static native String execute(long handle, String command, String envelope, long timeoutMillis);

    static native String executeRegistered(long handle, String extensionId, String physicalNetworkId,
            String command, String envelope, long timeoutMillis);

    /** The executor status report as JSON; each host's probe is bounded by {@code timeoutMillis}. */
    static native String status(long handle, long timeoutMillis);

    static native String version();

    /** The trivial call: round trip through the same error/panic machinery as every native. */
    static native long echo(long value);

    /** Test hook: panics inside native code. */
    static native void panicForTest(String message);

    /** Test hook: emits one native log record (level code 1..5), optionally from a non-Java thread. */
    static native void logForTest(int level, String message, boolean fromNativeThread);
}
