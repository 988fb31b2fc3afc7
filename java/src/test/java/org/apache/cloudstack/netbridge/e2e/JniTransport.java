package org.apache.cloudstack.netbridge.e2e;

import java.time.Duration;
import org.apache.cloudstack.netbridge.NetBridge;
import org.apache.cloudstack.netbridge.NetBridgeException;

/**
 * In-process: {@link NetBridge#execute(String, String, String, String, Duration)} with the
 * registration read from the registry (or, without an extension, the envelope's details).
 * Failures map to the script contract's exit codes so both transports share one scenario.
 */
public final class JniTransport implements Transport {
    private final NetBridge bridge;
    private final String extensionId;
    private final String physicalNetworkId;

    /** {@code extensionId == null}: the envelope's own details ({@code execute(command, …)}). */
    public JniTransport(NetBridge bridge, String extensionId, String physicalNetworkId) {
        this.bridge = bridge;
        this.extensionId = extensionId;
        this.physicalNetworkId = physicalNetworkId;
    }

    @Override
    public String execute(String command, String envelopeJson, int timeoutSeconds) throws CommandFailure {
        try {
            Duration t = Duration.ofSeconds(timeoutSeconds);
            return extensionId == null ? bridge.execute(command, envelopeJson, t)
                    : bridge.execute(extensionId, physicalNetworkId, command, envelopeJson, t);
        } catch (NetBridgeException e) {
            throw new CommandFailure(exitCode(e), e.getKind() + " " + e.getCode() + ": " + e.getText());
        }
    }

    /** The script form's exit code for a failure kind. */
    public static int exitCode(NetBridgeException e) {
        switch (e.getKind()) {
            case CONFIGURATION:
                return 1;
            case UNREACHABLE:
            case TIMEOUT:
                return 2;
            case REMOTE:
                return 3;
            default:
                return -1;
        }
    }

    @Override
    public String toString() {
        return "NetBridge.execute through JNI";
    }
}
