package org.apache.cloudstack.netbridge.e2e;

/** How the simulated management server hands a command to the bridge. */
public interface Transport {
    /**
     * Runs one command; returns its stdout-equivalent or throws {@link CommandFailure}.
     *
     * @param timeoutSeconds the script contract's timeout argument
     */
    String execute(String command, String envelopeJson, int timeoutSeconds) throws CommandFailure;

    /** A failed command: the script exit code (1 configuration, 2 unreachable/timeout, 3 remote) and message. */
    final class CommandFailure extends Exception {
        private static final long serialVersionUID = 1L;
        public final int exitCode;

        public CommandFailure(int exitCode, String message) {
            super(message);
            this.exitCode = exitCode;
        }

        @Override
        public String toString() {
            return "exit " + exitCode + ": " + getMessage();
        }
    }
}
