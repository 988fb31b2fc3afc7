package org.apache.cloudstack.netbridge;

import static org.apache.cloudstack.netbridge.Api.params;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** One handle, 16 threads × 500 mixed calls; each thread verifies its own state at the end. */
class ConcurrencyTest {
    private static final int THREADS = 16;
    private static final int CALLS = 500;

    @TempDir
    Path dir;

    @Test
    void sixteenThreadsMixedCallsStayConsistent() throws Exception {
        try (NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir))) {
            Api.assumeRealApi(b);
            ExecutorService pool = Executors.newFixedThreadPool(THREADS);
            List<Future<Integer>> results = new ArrayList<>();
            for (int t = 0; t < THREADS; t++) {
                final int thread = t;
                results.add(pool.submit(() -> work(b, thread)));
            }
            int total = 0;
            for (Future<Integer> f : results) {
                total += f.get(5, TimeUnit.MINUTES);
            }
            pool.shutdown();
            assertEquals(THREADS * CALLS, total);
            // all extensions are there, each exactly once
            assertEquals(THREADS, Api.extensions(b.api("listExtensions", Map.of())).size());
        }
    }

    @Test
    void sixteenThreadsGetTheirOwnAnswersAndErrors() throws Exception {
        // Independent of the registry: every thread's errors must carry its own command name.
        try (NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir))) {
            ExecutorService pool = Executors.newFixedThreadPool(THREADS);
            List<Future<Integer>> results = new ArrayList<>();
            for (int t = 0; t < THREADS; t++) {
                final int thread = t;
                results.add(pool.submit(() -> {
                    int n = 0;
                    for (int i = 0; i < CALLS; i++) {
                        String cmd = "noSuchCommand" + thread + "x" + i;
                        try {
                            b.api(cmd, params("k" + i, "v" + thread));
                            throw new AssertionError(cmd + " succeeded");
                        } catch (NetBridgeException e) {
                            check(432, e.getCode(), cmd);
                            check("Unsupported API command: " + cmd, e.getText(), cmd);
                        }
                        check((long) (thread * 100_000 + i), NetBridge.ping(thread * 100_000 + i), cmd);
                        n++;
                    }
                    return n;
                }));
            }
            int total = 0;
            for (Future<Integer> f : results) {
                total += f.get(5, TimeUnit.MINUTES);
            }
            pool.shutdown();
            assertEquals(THREADS * CALLS, total);
        }
    }

    /** Returns the number of calls made; throws on any inconsistency. */
    private static Integer work(NetBridge b, int thread) {
        String name = "conc-" + thread;
        String pn = UUID.randomUUID().toString();
        String other = UUID.randomUUID().toString();
        String id = Api.createExtension(b, name);
        Api.register(b, id, pn, Map.of("hosts", "192.0.2." + thread));
        int calls = 2;
        String lastCounter = null;
        for (int i = calls; i < CALLS; i++) {
            switch (i % 5) {
                case 0: {
                    lastCounter = Integer.toString(i);
                    Map<String, Object> ext = Api.extension(b.updateRegisteredExtension()
                            .extensionId(id).resourceId(pn).resourceType("PhysicalNetwork")
                            .details(Map.of("counter", lastCounter, "thread", Integer.toString(thread)))
                            .call());
                    check(Map.of("counter", lastCounter, "thread", Integer.toString(thread)),
                            Api.registrationDetails(ext, pn), name);
                    break;
                }
                case 1: {
                    List<Map<String, Object>> l = Api.extensions(b.api("listExtensions", params("id", id)));
                    check(1, l.size(), name);
                    check(id, l.get(0).get("id"), name);
                    break;
                }
                case 2: {
                    List<Map<String, Object>> l = Api.extensions(b.api("listExtensions", params("name", name)));
                    check(1, l.size(), name);
                    check(name, l.get(0).get("name"), name);
                    break;
                }
                case 3: {
                    try {
                        b.updateRegisteredExtension().extensionId(id).resourceId(other)
                                .resourceType("PhysicalNetwork").details(Map.of("a", "b")).call();
                        throw new AssertionError(name + ": update of an unregistered resource succeeded");
                    } catch (NetBridgeException e) {
                        check(431, e.getCode(), name);
                        check("Extension '" + name + "' is not registered with resource " + other
                                + " (PhysicalNetwork)", e.getText(), name);
                    }
                    break;
                }
                default:
                    check((long) i, NetBridge.ping(i), name);
                    break;
            }
            calls++;
        }
        Map<String, Object> mine = Api.extensions(b.api("listExtensions", params("id", id))).get(0);
        Map<String, String> expected = lastCounter == null
                ? Map.of("hosts", "192.0.2." + thread)
                : Map.of("counter", lastCounter, "thread", Integer.toString(thread));
        check(expected, Api.registrationDetails(mine, pn), name);
        return calls;
    }

    private static void check(Object expected, Object actual, String who) {
        if (!expected.equals(actual)) {
            throw new AssertionError(who + ": expected " + expected + " but got " + actual);
        }
    }
}
