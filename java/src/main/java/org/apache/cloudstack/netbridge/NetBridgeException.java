package org.apache.cloudstack.netbridge;

/**
 * An error answered by the native core: a code, a {@link Kind} and a text.
 *
 * <p>API calls ({@link NetBridge#api}) use CloudStack's codes (431 parameter error, 432 unsupported
 * command, 530 internal error or a refusal of the extension manager, such as a duplicate name) with
 * the API's text byte for byte; their kind is {@link Kind#API} (4xx) or {@link Kind#INTERNAL} (530).
 * Like CloudStack's error response they also carry {@link #getCsErrorCode()} (CloudStack's exception
 * code: 4350 InvalidParameterValueException, 4250 CloudRuntimeException, 9999 ServerApiException)
 * and {@link #getUuidList()}.
 *
 * <p>Network commands ({@link NetBridge#execute}) tell the failure classes apart:
 *
 * <table>
 * <caption>execute failures</caption>
 * <tr><th>kind</th><th>code</th><th>meaning</th><th>script exit code</th></tr>
 * <tr><td>{@link Kind#CONFIGURATION}</td><td>431</td><td>bad command, envelope or registration
 * details (missing {@code hosts}, bad key, pin mismatch, ...); retrying will not help</td><td>1</td></tr>
 * <tr><td>{@link Kind#UNREACHABLE}</td><td>503</td><td>no executor could be reached</td><td>2</td></tr>
 * <tr><td>{@link Kind#TIMEOUT}</td><td>504</td><td>the timeout expired before the executor answered</td><td>2</td></tr>
 * <tr><td>{@link Kind#REMOTE}</td><td>502</td><td>the executor answered with a failure</td><td>3</td></tr>
 * </table>
 *
 * <p>{@link NetBridge#open} refused because a setting names something unusable (a key file that is
 * group/world accessible, not 32 bytes, not a regular file or unreadable; a database path that is a
 * directory or not a SQLite database; a dispatch namespace that cannot be opened) is kind
 * {@link Kind#CONFIGURATION}, code 431, with a text naming the setting, its path and the problem.
 *
 * <p>Native panics arrive as code 530, kind INTERNAL, text starting with
 * {@code "internal error: native panic: "}. Unchecked, like CloudStack's own
 * {@code ServerApiException}.
 */
public class NetBridgeException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** CloudStack's InvalidParameterValueException code; also execute CONFIGURATION failures. */
    public static final int PARAM_ERROR = 431;
    /** Unknown API command. */
    public static final int UNSUPPORTED = 432;
    /** Internal failure. */
    public static final int INTERNAL_ERROR = 530;
    /** execute: the executor answered with a failure. */
    public static final int REMOTE_ERROR = 502;
    /** execute: no executor could be reached. */
    public static final int UNREACHABLE = 503;
    /** execute: the timeout expired. */
    public static final int TIMEOUT = 504;

    /** Failure class. */
    public enum Kind {
        /** An API parameter or state error (codes 431, 432). */
        API,
        /** A native internal failure or panic (530). */
        INTERNAL,
        /** execute: bad command, envelope or registration details; open: an unusable setting. */
        CONFIGURATION,
        /** execute: no executor reachable. */
        UNREACHABLE,
        /** execute: the timeout expired before the executor answered. */
        TIMEOUT,
        /** execute: the executor reported a failure. */
        REMOTE
    }

    private final int code;
    private final String text;
    private final Kind kind;
    private final int csErrorCode;

    /** Called from native code (signature {@code (ILjava/lang/String;)V}); keep it. */
    public NetBridgeException(int code, String text) {
        this(code, text, code == INTERNAL_ERROR ? Kind.INTERNAL : Kind.API);
    }

    /**
     * Called from native code for execute failures (signature
     * {@code (ILjava/lang/String;Ljava/lang/String;)V}, kind by name); keep it.
     */
    public NetBridgeException(int code, String text, String kind) {
        this(code, text, parseKind(code, kind));
    }

    /**
     * Called from native code for API errors (signature {@code (ILjava/lang/String;I)V}, with
     * CloudStack's exception code); keep it.
     */
    public NetBridgeException(int code, String text, int csErrorCode) {
        this(code, text, code == INTERNAL_ERROR ? Kind.INTERNAL : Kind.API, csErrorCode);
    }

    public NetBridgeException(int code, String text, Kind kind) {
        this(code, text, kind, -1);
    }

    public NetBridgeException(int code, String text, Kind kind, int csErrorCode) {
        super(text);
        this.code = code;
        this.text = text;
        this.kind = kind;
        this.csErrorCode = csErrorCode;
    }

    private static Kind parseKind(int code, String kind) {
        if (kind != null) {
            try {
                return Kind.valueOf(kind);
            } catch (IllegalArgumentException e) {
                // fall through to the code
            }
        }
        return code == INTERNAL_ERROR ? Kind.INTERNAL : Kind.API;
    }

    /** The error code (see the class comment). */
    public int getCode() {
        return code;
    }

    /**
     * CloudStack's exception code ({@code cserrorcode}) of an API error, or -1 for failures that
     * are not API errors (execute, native internals).
     */
    public int getCsErrorCode() {
        return csErrorCode;
    }

    /** CloudStack's {@code uuidList} of the error: the ids it names (always empty here). */
    public java.util.List<String> getUuidList() {
        return java.util.List.of();
    }

    /** The failure class. */
    public Kind getKind() {
        return kind;
    }

    /** The error text, exactly as the core produced it. */
    public String getText() {
        return text;
    }

    @Override
    public String toString() {
        return "NetBridgeException[" + code + " " + kind + "]: " + text;
    }
}
