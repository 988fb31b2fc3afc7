package org.apache.cloudstack.netbridge;

import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** Helpers for tests that drive the real API through JNI. */
final class Api {
    /** Reference NetworkOrchestrator services and capabilities (docs/control-plane.md). */
    static final String SERVICES = "Dhcp,Dns,UserData,SourceNat,StaticNat,PortForwarding,Firewall,Lb,NetworkACL,CustomAction";
    static final String CAPABILITIES = "{\"SourceNat\":{\"SupportedSourceNatTypes\":\"peraccount\"},"
            + "\"Lb\":{\"SupportedLBAlgorithms\":\"roundrobin,leastconn,source\",\"SupportedProtocols\":\"tcp,udp\"}}";

    private Api() {
    }

    /** Skips the calling test while the core answers every command "unsupported" (API stub). */
    static void assumeRealApi(NetBridge b) {
        boolean stub;
        try {
            b.api("listExtensions", Map.of());
            stub = false;
        } catch (NetBridgeException e) {
            stub = e.getCode() == NetBridgeException.UNSUPPORTED;
        }
        assumeTrue(!stub, "the native API is the stub (control plane not merged yet)");
    }

    static Map<String, String> params(String... kv) {
        Map<String, String> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) {
            m.put(kv[i], kv[i + 1]);
        }
        return m;
    }

    /** createExtension of a NetworkOrchestrator with the reference services; returns its id. */
    static String createExtension(NetBridge b, String name) {
        Map<String, String> p = params("name", name, "type", "NetworkOrchestrator", "description", "test " + name);
        NetBridge.putDetails(p, "details", params("network.services", SERVICES,
                "network.service.capabilities", CAPABILITIES));
        return str(extension(b.api("createExtension", p)), "id");
    }

    static String register(NetBridge b, String extId, String pnId, Map<String, String> details) {
        Map<String, String> p = params("extensionid", extId, "resourceid", pnId, "resourcetype", "PhysicalNetwork");
        if (details != null) {
            NetBridge.putDetails(p, "details", details);
        }
        return b.api("registerExtension", p);
    }

    /** The (single) extension of a response: `{"xresponse":{"extension":{…}|[{…}]}}`. */
    static Map<String, Object> extension(String json) {
        Map<String, Object> body = body(json);
        Object ext = body.get("extension");
        if (ext instanceof List) {
            List<?> l = (List<?>) ext;
            if (l.size() != 1) {
                throw new AssertionError("expected one extension in " + json);
            }
            ext = l.get(0);
        }
        if (!(ext instanceof Map)) {
            throw new AssertionError("no extension in " + json);
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> m = (Map<String, Object>) ext;
        return m;
    }

    /** Extensions of a list response (empty when the response has none). */
    @SuppressWarnings("unchecked")
    static List<Map<String, Object>> extensions(String json) {
        Map<String, Object> body = body(json);
        Object ext = body.get("extension");
        if (ext == null) {
            return List.of();
        }
        return (List<Map<String, Object>>) ext;
    }

    /** The object under the single `<command>response` key. */
    static Map<String, Object> body(String json) {
        Map<String, Object> top = Json.map(Json.parse(json));
        if (top.size() != 1) {
            throw new AssertionError("expected one response key in " + json);
        }
        String key = top.keySet().iterator().next();
        if (!key.endsWith("response")) {
            throw new AssertionError("not a CloudStack response: " + json);
        }
        return Json.map(top.get(key));
    }

    static String str(Map<String, Object> m, String key) {
        return Json.str(m, key);
    }

    /** Details of the registration on `resourceId` inside an extension object. */
    static Map<String, Object> registrationDetails(Map<String, Object> ext, String resourceId) {
        for (Object r : Json.list(ext, "resources")) {
            Map<String, Object> res = Json.map(r);
            if (resourceId.equals(res.get("id"))) {
                Object d = res.get("details");
                return d == null ? Map.of() : Json.map(d);
            }
        }
        throw new AssertionError("no registration on " + resourceId + " in " + ext);
    }
}
