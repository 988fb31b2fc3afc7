package org.apache.cloudstack.netbridge;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.apache.cloudstack.netbridge.e2e.Testbed;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A JVM through JNI beside {@code netbridge} CLI processes, all "management servers" of one
 * CloudStack database (a private MariaDB server started by {@code target/debug/examples/mariadb},
 * stopped when its standard input closes): concurrent {@code updateRegisteredExtension} on one
 * registration never loses or mixes an update, and concurrent {@code createExtension} with one
 * name has exactly one winner.
 */
class SharedStoreTest {
    private static final int ROUNDS = 5;

    @TempDir
    Path dir;

    private Process mariadb;
    private String url;
    private String physicalNetwork;

    @BeforeEach
    void startDatabase() throws IOException {
        Path program = Testbed.repoRoot().resolve("target/debug/examples/mariadb");
        if (!Files.isExecutable(program)) {
            fail(program + " is not built: cargo build --example mariadb (make java-test does)");
        }
        mariadb = new ProcessBuilder(program.toString(), "--physical-networks", "1")
                .redirectError(ProcessBuilder.Redirect.INHERIT).start();
        BufferedReader out = new BufferedReader(
                new InputStreamReader(mariadb.getInputStream(), StandardCharsets.UTF_8));
        String line = out.readLine();
        if (line == null) {
            fail("the MariaDB helper ended without starting a server (is mariadb-server installed?)");
        }
        Object info = Json.parse(line);
        url = Json.str(info, "url");
        physicalNetwork = (String) Json.list(info, "physical_networks").get(0);
    }

    @AfterEach
    void stopDatabase() throws Exception {
        if (mariadb != null) {
            mariadb.getOutputStream().close();
            if (!mariadb.waitFor(2, TimeUnit.MINUTES)) {
                mariadb.destroyForcibly();
            }
        }
    }

    private NetBridge open() {
        return NetBridge.open(NetBridgeConfig.builder().database(url).keyFile(dir.resolve("secret.key"))
                .logLevel("warn").build());
    }

    /** {@code netbridge --database … api <command> k=v …} as another management server. */
    private ProcessResult cli(String command, List<String> args) throws Exception {
        List<String> argv = new ArrayList<>(List.of(Testbed.repoRoot().resolve("target/debug/netbridge").toString(),
                "--database", url, "--key-file", dir.resolve("secret.key").toString(),
                "--state-dir", dir.toString(), "api", command));
        argv.addAll(args);
        Process p = new ProcessBuilder(argv).redirectErrorStream(true).start();
        String text = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(2, TimeUnit.MINUTES), "netbridge api " + command + " did not end");
        return new ProcessResult(p.exitValue(), text);
    }

    private record ProcessResult(int code, String output) {
    }

    private static Map<String, String> visible(NetBridge b, String ext) {
        Object r = Json.parse(b.api("listExtensions", Map.of("id", ext)));
        Map<String, Object> details = Json.map(r, "listextensionsresponse", "extension", 0, "resources", 0,
                "details");
        Map<String, String> out = new LinkedHashMap<>();
        details.forEach((k, v) -> out.put(k, (String) v));
        return out;
    }

    @Test
    void jvmAndCliServersNeverLoseOrMixAnUpdate() throws Exception {
        try (NetBridge b = open()) {
            Map<String, String> create = new LinkedHashMap<>();
            create.put("name", "shared");
            create.put("type", "NetworkOrchestrator");
            String ext = Json.str(Json.parse(b.api("createExtension", create)), "createextensionresponse",
                    "extension", "id");
            Map<String, String> reg = new LinkedHashMap<>();
            reg.put("extensionid", ext);
            reg.put("resourceid", physicalNetwork);
            reg.put("resourcetype", "PhysicalNetwork");
            NetBridge.putDetails(reg, "details", Map.of("executor.key", "jvm-secret", "hosts", "192.0.2.1"));
            b.api("registerExtension", reg);

            // Two JVM threads and two CLI "servers", each sending whole tagged sets.
            int servers = 4;
            CyclicBarrier start = new CyclicBarrier(servers);
            ExecutorService pool = Executors.newFixedThreadPool(servers);
            List<Future<List<String>>> sent = new ArrayList<>();
            for (int s = 0; s < servers; s++) {
                final int server = s;
                sent.add(pool.submit(() -> {
                    start.await();
                    List<String> tags = new ArrayList<>();
                    for (int round = 0; round < ROUNDS; round++) {
                        String tag = "s" + server + "-r" + round;
                        String hosts = "192.0.2." + (10 + server * 10 + round);
                        if (server < 2) {
                            Map<String, String> d = new LinkedHashMap<>();
                            d.put("hosts", hosts);
                            d.put("set", tag);
                            d.put("set.copy", tag);
                            b.updateRegisteredExtension().extensionId(ext).resourceId(physicalNetwork)
                                    .resourceType("PhysicalNetwork").details(d).call();
                        } else {
                            ProcessResult r = cli("updateRegisteredExtension", List.of("extensionid=" + ext,
                                    "resourceid=" + physicalNetwork, "resourcetype=PhysicalNetwork",
                                    "details[0].hosts=" + hosts, "details[1].set=" + tag,
                                    "details[2].set.copy=" + tag));
                            assertEquals(0, r.code(), r.output());
                        }
                        Map<String, String> now = visible(b, ext);
                        assertEquals(now.get("set"), now.get("set.copy"), "never a mix: " + now);
                        tags.add(tag);
                    }
                    return tags;
                }));
            }
            List<String> all = new ArrayList<>();
            for (Future<List<String>> f : sent) {
                all.addAll(f.get(5, TimeUnit.MINUTES));
            }
            pool.shutdown();
            Map<String, String> last = visible(b, ext);
            assertEquals(3, last.size(), last.toString());
            assertTrue(all.contains(last.get("set")), last.toString());
            assertEquals(last.get("set"), last.get("set.copy"));
        }
    }

    @Test
    void jvmAndCliCreatesOfOneNameHaveOneWinner() throws Exception {
        try (NetBridge b = open()) {
            int servers = 4;
            CyclicBarrier start = new CyclicBarrier(servers);
            ExecutorService pool = Executors.newFixedThreadPool(servers);
            List<Future<Boolean>> outcomes = new ArrayList<>();
            for (int s = 0; s < servers; s++) {
                final int server = s;
                outcomes.add(pool.submit(() -> {
                    start.await();
                    if (server < 2) {
                        try {
                            b.api("createExtension", Map.of("name", "one-name", "type", "Orchestrator"));
                            return true;
                        } catch (NetBridgeException e) {
                            assertTrue(e.getText().contains("Extension by name already exists"), e.getText());
                            return false;
                        }
                    }
                    ProcessResult r = cli("createExtension", List.of("name=one-name", "type=Orchestrator"));
                    assertTrue(r.code() == 0 || r.output().contains("Extension by name already exists"),
                            r.output());
                    return r.code() == 0;
                }));
            }
            int winners = 0;
            for (Future<Boolean> f : outcomes) {
                winners += f.get(5, TimeUnit.MINUTES) ? 1 : 0;
            }
            pool.shutdown();
            assertEquals(1, winners);
            Object listed = Json.parse(b.api("listExtensions", Map.of("name", "one-name")));
            assertEquals(1, Json.list(listed, "listextensionsresponse", "extension").size());
        }
    }
}
