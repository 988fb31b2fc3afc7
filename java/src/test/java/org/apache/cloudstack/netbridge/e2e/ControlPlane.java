package org.apache.cloudstack.netbridge.e2e;

import org.apache.cloudstack.netbridge.Json;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.function.Consumer;
import org.apache.cloudstack.netbridge.NetBridge;

/** The management server's API calls around a network: extension, registration, offerings. */
public final class ControlPlane {
    public static final String SERVICES =
            "Dhcp,Dns,UserData,SourceNat,StaticNat,PortForwarding,Firewall,Lb,NetworkACL,CustomAction";
    public static final String CAPABILITIES = "{\"SourceNat\":{\"SupportedSourceNatTypes\":\"peraccount\"},"
            + "\"Lb\":{\"SupportedLBAlgorithms\":\"roundrobin,leastconn,source\",\"SupportedProtocols\":\"tcp,udp\"}}";

    private final NetBridge bridge;
    private final Consumer<String> log;
    /** The physical network registered with. */
    public final String physicalNetworkId;
    public String extensionId;

    public ControlPlane(NetBridge bridge, Consumer<String> log) {
        this(bridge, log, UUID.randomUUID().toString());
    }

    /** On a given physical network (one that CloudStack's database knows). */
    public ControlPlane(NetBridge bridge, Consumer<String> log, String physicalNetworkId) {
        this.bridge = bridge;
        this.log = log;
        this.physicalNetworkId = physicalNetworkId;
    }

    public static Map<String, String> params(String... kv) {
        Map<String, String> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) {
            m.put(kv[i], kv[i + 1]);
        }
        return m;
    }

    /** Registration details as strings (the API's map form). */
    public static Map<String, String> registrationDetails(Testbed tb, String key) {
        Map<String, String> d = new LinkedHashMap<>();
        CloudStackSim.physicalDetails(tb, key).forEach((k, v) -> d.put(k, v.toString()));
        return d;
    }

    private String call(String command, Map<String, String> p) {
        String out = bridge.api(command, p);
        log.accept("   " + command + " -> " + (out.length() > 200 ? out.substring(0, 200) + "…" : out));
        return out;
    }

    /** createExtension (NetworkOrchestrator, reference services and capabilities). */
    public String createExtension(String name) {
        Map<String, String> create = params("name", name, "type", "NetworkOrchestrator",
                "description", "netbridge end-to-end");
        NetBridge.putDetails(create, "details", params("network.services", SERVICES,
                "network.service.capabilities", CAPABILITIES));
        String out = call("createExtension", create);
        Object ext = Json.at(Json.parse(out), "createextensionresponse", "extension");
        extensionId = Json.str(ext instanceof List ? ((List<?>) ext).get(0) : ext, "id");
        return out;
    }

    public String register(Map<String, String> details) {
        Map<String, String> p = registration();
        NetBridge.putDetails(p, "details", details);
        return call("registerExtension", p);
    }

    public Map<String, String> registration() {
        return params("extensionid", extensionId, "resourceid", physicalNetworkId, "resourcetype", "PhysicalNetwork");
    }

    /** generateNetworkOfferings for isolated networks; returns the offering names. */
    public List<Object> offerings() {
        String out = call("generateNetworkOfferings", params("extensionid", extensionId, "offeringtype", "isolated"));
        return List.of(out);
    }

    public String updateDetails(Map<String, String> details) {
        String out = bridge.updateRegisteredExtension().extensionId(extensionId).resourceId(physicalNetworkId)
                .resourceType("PhysicalNetwork").details(details).call();
        log.accept("   updateRegisteredExtension -> (details updated; hidden values not shown)");
        return out;
    }

    public String unregister() {
        return call("unregisterExtension", registration());
    }

    public String delete() {
        return call("deleteExtension", params("id", extensionId));
    }
}
