package org.apache.cloudstack.netbridge;

/**
 * An error answered by the native core: a CloudStack API error code (431 parameter error,
 * 432 unsupported command, 530 internal error, ...) and its text, byte for byte as the API
 * defines it. Native panics arrive as code 530 with a text starting with
 * {@code "internal error: native panic: "}.
 *
 * <p>Unchecked, like CloudStack's own {@code ServerApiException}, so callers decide where to
 * handle it.
 */
public class NetBridgeException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** CloudStack's InvalidParameterValueException code. */
    public static final int PARAM_ERROR = 431;
    /** Unknown API command. */
    public static final int UNSUPPORTED = 432;
    /** Internal failure. */
    public static final int INTERNAL_ERROR = 530;

    private final int code;
    private final String text;

    /** Called from native code (signature {@code (ILjava/lang/String;)V}); keep it. */
    public NetBridgeException(int code, String text) {
        super(text);
        this.code = code;
        this.text = text;
    }

    /** The CloudStack error code. */
    public int getCode() {
        return code;
    }

    /** The error text, exactly as the API produced it. */
    public String getText() {
        return text;
    }

    @Override
    public String toString() {
        return "NetBridgeException[" + code + "]: " + text;
    }
}
