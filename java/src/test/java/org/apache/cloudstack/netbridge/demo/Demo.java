package org.apache.cloudstack.netbridge.demo;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.stream.Stream;
import org.apache.cloudstack.netbridge.NetBridge;
import org.apache.cloudstack.netbridge.NetBridgeConfig;
import org.apache.cloudstack.netbridge.NetBridgeException;

/**
 * `make demo`: plays the management server for a minute of control-plane work through JNI on
 * a throw-away registry: create the reference NetworkOrchestrator extension, register it on a
 * physical network, rotate its executor details, generate offerings, show an error, clean up.
 * Pass a directory as first argument to keep the registry.
 */
public final class Demo {
    private static final String SERVICES = "Dhcp,Dns,UserData,SourceNat,StaticNat,PortForwarding,Firewall,Lb,NetworkACL,CustomAction";
    private static final String CAPABILITIES = "{\"SourceNat\":{\"SupportedSourceNatTypes\":\"peraccount\"},"
            + "\"Lb\":{\"SupportedLBAlgorithms\":\"roundrobin,leastconn,source\",\"SupportedProtocols\":\"tcp,udp\"}}";

    private Demo() {
    }

    public static void main(String[] args) throws IOException {
        boolean keep = args.length > 0;
        Path dir = keep ? Files.createDirectories(Path.of(args[0])) : Files.createTempDirectory("netbridge-demo-");
        System.out.println("netbridge " + NetBridge.nativeVersion() + ", registry in " + dir);
        boolean failed = false;
        try (NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir))) {
            String name = "netbridge-demo-" + UUID.randomUUID().toString().substring(0, 8);
            String pn = UUID.randomUUID().toString();

            Map<String, String> create = params("name", name, "type", "NetworkOrchestrator",
                    "description", "netbridge reference extension");
            NetBridge.putDetails(create, "details", params("network.services", SERVICES,
                    "network.service.capabilities", CAPABILITIES));
            String created = step(b, "createExtension", create);
            String id = idOf(created);

            Map<String, String> register = params("extensionid", id, "resourceid", pn,
                    "resourcetype", "PhysicalNetwork");
            NetBridge.putDetails(register, "details", params("hosts", "192.0.2.10,192.0.2.11",
                    "executor.key", "demo-shared-key-" + UUID.randomUUID()));
            step(b, "registerExtension", register);

            System.out.println("\n== updateRegisteredExtension (typed builder; executor.key stays hidden and kept)");
            System.out.println(b.updateRegisteredExtension()
                    .extensionId(id).resourceId(pn).resourceType("PhysicalNetwork")
                    .details(params("hosts", "192.0.2.10,192.0.2.11,192.0.2.12", "executor.port", "8443"))
                    .call());

            step(b, "listExtensions", params("id", id));
            step(b, "listNetworkServiceProviders", params("physicalnetworkid", pn));
            step(b, "generateNetworkOfferings", params("extensionid", id, "offeringtype", "isolated"));

            System.out.println("\n== deleteExtension while registered (an API error, as an exception)");
            try {
                b.api("deleteExtension", params("id", id));
            } catch (NetBridgeException e) {
                System.out.println(e);
            }

            step(b, "unregisterExtension", register);
            step(b, "deleteExtension", params("id", id));
        } catch (NetBridgeException e) {
            System.out.println("failed: " + e);
            failed = true;
        } finally {
            if (!keep) {
                deleteTree(dir);
            }
        }
        if (failed) {
            System.exit(1);
        }
    }

    private static String step(NetBridge b, String command, Map<String, String> p) {
        System.out.println("\n== " + command + " " + p.keySet().stream()
                .filter(k -> !k.startsWith("details")).map(k -> k + "=" + p.get(k)).reduce((x, y) -> x + " " + y)
                .orElse(""));
        String json = b.api(command, p);
        System.out.println(json);
        return json;
    }

    private static Map<String, String> params(String... kv) {
        Map<String, String> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) {
            m.put(kv[i], kv[i + 1]);
        }
        return m;
    }

    private static String idOf(String json) {
        int k = json.indexOf("\"id\"");
        int start = json.indexOf('"', json.indexOf(':', k) + 1) + 1;
        return json.substring(start, json.indexOf('"', start));
    }

    private static void deleteTree(Path dir) throws IOException {
        List<Path> paths = new ArrayList<>();
        try (Stream<Path> walk = Files.walk(dir)) {
            walk.forEach(paths::add);
        }
        paths.sort(Comparator.reverseOrder());
        for (Path p : paths) {
            Files.deleteIfExists(p);
        }
    }
}
