package org.apache.cloudstack.netbridge;

import static org.apache.cloudstack.netbridge.Api.params;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Each API command through JNI, with assertions on the JSON it returns. */
class ApiFlowTest {
    @TempDir
    Path dir;
    NetBridge b;

    @BeforeEach
    void open() {
        b = NetBridge.open(NetBridgeConfig.inDirectory(dir));
        Api.assumeRealApi(b);
    }

    @AfterEach
    void close() {
        b.close();
    }

    @Test
    void createRegisterUpdateListUnregisterDelete() {
        String pn = UUID.randomUUID().toString();

        // createExtension
        String created = b.api("createExtension", withDetails(params("name", "flow-ext",
                "type", "NetworkOrchestrator", "description", "flow"),
                Map.of("network.services", Api.SERVICES, "network.service.capabilities", Api.CAPABILITIES)));
        assertTrue(Json.map(Json.parse(created)).containsKey("createextensionresponse"), created);
        Map<String, Object> ext = Api.extension(created);
        String id = Api.str(ext, "id");
        assertEquals("flow-ext", Api.str(ext, "name"));
        assertEquals("NetworkOrchestrator", Api.str(ext, "type"));
        assertEquals("Enabled", Api.str(ext, "state"));
        assertEquals(Api.SERVICES, Json.str(ext, "details", "network.services"));

        // registerExtension with one visible and one hidden detail
        String registered = Api.register(b, id, pn, Map.of("hosts", "192.0.2.10", "executor.key", "s3cr3t-key"));
        assertFalse(registered.contains("s3cr3t"), registered);
        assertEquals(Map.of("hosts", "192.0.2.10"), Api.registrationDetails(Api.extension(registered), pn));

        // updateRegisteredExtension (typed builder): visible keys replaced, hidden kept
        String updated = b.updateRegisteredExtension()
                .extensionId(id).resourceId(pn).resourceType("PhysicalNetwork")
                .details(Map.of("hosts", "192.0.2.11,192.0.2.12", "executor.port", "9443"))
                .call();
        assertTrue(Json.map(Json.parse(updated)).containsKey("updateregisteredextensionresponse"), updated);
        assertFalse(updated.contains("s3cr3t"), updated);
        Map<String, Object> afterUpdate = Api.extension(updated);
        assertEquals(id, Api.str(afterUpdate, "id"));
        assertEquals(Map.of("hosts", "192.0.2.11,192.0.2.12", "executor.port", "9443"),
                Api.registrationDetails(afterUpdate, pn));

        // listExtensions id=…
        String listed = b.api("listExtensions", params("id", id));
        List<Map<String, Object>> exts = Api.extensions(listed);
        assertEquals(1, exts.size(), listed);
        assertEquals(id, Api.str(exts.get(0), "id"));
        assertEquals(Map.of("hosts", "192.0.2.11,192.0.2.12", "executor.port", "9443"),
                Api.registrationDetails(exts.get(0), pn));
        assertFalse(listed.contains("s3cr3t"), listed);

        // delete refused while registered
        NetBridgeException refused = assertThrows(NetBridgeException.class,
                () -> b.api("deleteExtension", params("id", id)));
        // The extension manager's refusal: CloudRuntimeException, 530.
        assertEquals(530, refused.getCode());
        assertEquals(4250, refused.getCsErrorCode());
        assertEquals("Extension has associated resources, unregister them to delete the extension", refused.getText());

        // cleanupdetails wipes visible and hidden
        String cleaned = b.updateRegisteredExtension()
                .extensionId(id).resourceId(pn).resourceType("PhysicalNetwork")
                .details(Map.of("ignored", "yes"))
                .cleanupDetails(true)
                .call();
        assertEquals(Map.of(), Api.registrationDetails(Api.extension(cleaned), pn));

        // unregisterExtension
        b.api("unregisterExtension", params("extensionid", id, "resourceid", pn, "resourcetype", "PhysicalNetwork"));
        Map<String, Object> afterUnregister = Api.extensions(b.api("listExtensions", params("id", id))).get(0);
        Object resources = afterUnregister.get("resources");
        assertTrue(resources == null || Json.list(afterUnregister, "resources").isEmpty(), afterUnregister.toString());

        // updateRegisteredExtension on a resource it is no longer registered with
        NetBridgeException notRegistered = assertThrows(NetBridgeException.class, () -> b.updateRegisteredExtension()
                .extensionId(id).resourceId(pn).resourceType("PhysicalNetwork")
                .details(Map.of("hosts", "192.0.2.1")).call());
        assertEquals(431, notRegistered.getCode());
        assertEquals("Extension 'flow-ext' is not registered with resource " + pn + " (PhysicalNetwork)",
                notRegistered.getText());

        // deleteExtension
        b.api("deleteExtension", params("id", id));
        assertEquals(List.of(), Api.extensions(b.api("listExtensions", params("id", id))));
    }

    @Test
    void errorsMapToExceptionsWithExactCodeAndText() {
        Api.createExtension(b, "dup");
        NetBridgeException dup = assertThrows(NetBridgeException.class, () -> Api.createExtension(b, "dup"));
        assertEquals(530, dup.getCode());
        assertEquals("Extension by name already exists", dup.getText());

        NetBridgeException type = assertThrows(NetBridgeException.class,
                () -> b.api("createExtension", params("name", "t", "type", "Bogus")));
        assertEquals(530, type.getCode());
        assertEquals("Invalid type specified - Bogus", type.getText());

        NetBridgeException rtype = assertThrows(NetBridgeException.class, () -> b.api("registerExtension",
                params("extensionid", UUID.randomUUID().toString(), "resourceid", UUID.randomUUID().toString(),
                        "resourcetype", "Host")));
        assertEquals(431, rtype.getCode());
        assertEquals("Currently only [Cluster, PhysicalNetwork] can be used to register an extension", rtype.getText());

        NetBridgeException unknown = assertThrows(NetBridgeException.class, () -> b.api("frobnicate", Map.of()));
        assertEquals(432, unknown.getCode());
    }

    @Test
    void otherCommandsAreReachable() {
        String id = Api.createExtension(b, "others");
        String pn = UUID.randomUUID().toString();
        Api.register(b, id, pn, Map.of("hosts", "192.0.2.20"));

        String upd = b.api("updateExtension", params("id", id, "description", "changed"));
        assertEquals("changed", Api.str(Api.extension(upd), "description"));

        String nsps = b.api("listNetworkServiceProviders", params("physicalnetworkid", pn));
        assertTrue(nsps.contains("\"others\""), nsps);
        assertTrue(Json.map(Json.parse(nsps)).containsKey("listnetworkserviceprovidersresponse"), nsps);

        String nspId = Json.str(Api.body(nsps), "networkserviceprovider", 0, "id");
        // Asynchronous, as in CloudStack: a jobid at once, the result from
        // queryAsyncJobResult once the job is done (bounded wait).
        String queued = b.api("updateNetworkServiceProvider", params("id", nspId, "state", "Disabled"));
        String jobId = Json.str(Api.body(queued), "jobid");
        long deadline = System.nanoTime() + 60_000_000_000L;
        String job = b.api("queryAsyncJobResult", params("jobid", jobId));
        while (job.contains("\"jobstatus\":0") && System.nanoTime() < deadline) {
            Thread.onSpinWait();
            job = b.api("queryAsyncJobResult", params("jobid", jobId));
        }
        assertTrue(job.contains("\"jobstatus\":1"), job);
        assertEquals("Disabled", Json.str(Api.body(job), "jobresult", "networkserviceprovider", "state"));

        Map<String, String> offering = params("extensionid", id, "supportedservices", "Dhcp,Dns,SourceNat",
                "serviceProviderList[0].service", "Dhcp", "serviceProviderList[0].provider", "others",
                "serviceProviderList[1].service", "Dns", "serviceProviderList[1].provider", "others",
                "serviceProviderList[2].service", "SourceNat", "serviceProviderList[2].provider", "others",
                "serviceCapabilityList[0].service", "SourceNat",
                "serviceCapabilityList[0].capabilitytype", "SupportedSourceNatTypes",
                "serviceCapabilityList[0].capabilityvalue", "peraccount");
        String valid = b.api("validateNetworkOffering", offering);
        assertEquals(Boolean.TRUE, Json.at(Api.body(valid), "success"), valid);
        offering.put("serviceCapabilityList[0].capabilityvalue", "perzone");
        NetBridgeException perzone = assertThrows(NetBridgeException.class,
                () -> b.api("validateNetworkOffering", offering));
        assertEquals(431, perzone.getCode());
        assertTrue(perzone.getText().contains("perzone"), perzone.getText());

        String gen = b.api("generateNetworkOfferings", params("extensionid", id, "offeringtype", "isolated"));
        assertTrue(Json.map(Json.parse(gen)).containsKey("generatenetworkofferingsresponse"), gen);
        assertTrue(gen.contains("createNetworkOffering"), gen);
    }

    private static Map<String, String> withDetails(Map<String, String> p, Map<String, String> details) {
        NetBridge.putDetails(p, "details", details);
        return p;
    }
}
