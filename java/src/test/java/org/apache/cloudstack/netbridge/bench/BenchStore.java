package org.apache.cloudstack.netbridge.bench;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.apache.cloudstack.netbridge.Json;
import org.apache.cloudstack.netbridge.e2e.Testbed;

/**
 * The store a benchmark runs on: {@code -Dbench.store=sqlite} (default: a file in the benchmark's
 * directory) or {@code -Dbench.store=mariadb} (CloudStack's tables in a private MariaDB server
 * from {@code target/debug/examples/mariadb}, over loopback TCP, or through its Unix socket when
 * the bridge runs parts of itself in another network namespace), stopped by {@link #close}.
 */
final class BenchStore implements AutoCloseable {
    final String location;
    /** A location reachable from any network namespace (the Unix socket for MariaDB). */
    final String anyNamespaceLocation;
    final List<String> physicalNetworks;
    private final Process server;

    private BenchStore(String location, String anyNamespaceLocation, List<String> physicalNetworks, Process server) {
        this.location = location;
        this.anyNamespaceLocation = anyNamespaceLocation;
        this.physicalNetworks = physicalNetworks;
        this.server = server;
    }

    static boolean mariadb() {
        return "mariadb".equals(System.getProperty("bench.store", "sqlite"));
    }

    /** {@code sqliteFile} for SQLite; for MariaDB a database knowing {@code physicalNetworks}. */
    static BenchStore open(Path sqliteFile, List<String> physicalNetworks) throws IOException {
        if (!mariadb()) {
            return new BenchStore(sqliteFile.toString(), sqliteFile.toString(), physicalNetworks, null);
        }
        Path program = Testbed.repoRoot().resolve("target/debug/examples/mariadb");
        if (!Files.isExecutable(program)) {
            throw new IOException(program + " is not built: cargo build --example mariadb");
        }
        List<String> argv = new ArrayList<>(List.of(program.toString(), "--physical-networks", "0"));
        for (String pn : physicalNetworks) {
            argv.add("--physical-network");
            argv.add(pn);
        }
        Process p = new ProcessBuilder(argv).redirectError(ProcessBuilder.Redirect.INHERIT).start();
        String line = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8)).readLine();
        if (line == null) {
            throw new IOException("the MariaDB helper ended without starting a server");
        }
        Object info = Json.parse(line);
        return new BenchStore(Json.str(info, "url"), Json.str(info, "socket_url"), physicalNetworks, p);
    }

    String describe() {
        return mariadb() ? "MariaDB (private server, CloudStack tables, loopback)" : "SQLite file";
    }

    @Override
    public void close() throws Exception {
        if (server != null) {
            server.getOutputStream().close();
            if (!server.waitFor(2, TimeUnit.MINUTES)) {
                server.destroyForcibly();
            }
        }
    }
}
