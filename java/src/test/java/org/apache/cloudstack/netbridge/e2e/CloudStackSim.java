package org.apache.cloudstack.netbridge.e2e;

import org.apache.cloudstack.netbridge.Json;

import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The management server's side of one isolated network, as CloudStack 4.23 drives an
 * extension: before every command it runs {@code ensure-network-device} with the stored
 * {@code extension.details} and keeps what it prints; each command's envelope carries the
 * registration details, those network details and the payload (all scalars as strings).
 */
public final class CloudStackSim {
    public static final int TIMEOUT_SECONDS = 60;

    private final Transport transport;
    private final int networkId;
    /** Registration details as CloudStack sends them (null: the bridge reads its registry). */
    private Map<String, Object> physicalDetails;
    private Map<String, Object> details = new LinkedHashMap<>();

    public CloudStackSim(Transport transport, int networkId, Map<String, Object> physicalDetails) {
        this.transport = transport;
        this.networkId = networkId;
        this.physicalDetails = physicalDetails;
    }

    /** The registration details of the testbed (both executors, key, pinned fingerprints). */
    public static Map<String, Object> physicalDetails(Testbed tb, String key) {
        Map<String, Object> d = new LinkedHashMap<>();
        d.put("hosts", tb.str("hosts"));
        d.put("executor.port", tb.str("executor.port"));
        d.put("executor.key", key);
        d.put("executor.fingerprint", tb.str("executor.fingerprint"));
        d.put("guest.network.device", Json.str(tb.topology(), "guest", "device"));
        d.put("public.network.device", Json.str(tb.topology(), "public", "device"));
        d.put("physicalnetworkname", "e2e-phys");
        return d;
    }

    public int networkId() {
        return networkId;
    }

    public Transport transport() {
        return transport;
    }

    public void setPhysicalDetails(Map<String, Object> d) {
        this.physicalDetails = d;
    }

    public Map<String, Object> physicalDetails() {
        return physicalDetails;
    }

    /** The network's stored {@code extension.details}. */
    public Map<String, Object> details() {
        return details;
    }

    /** Executor address the network is placed on (from the stored details). */
    public String host() {
        Object h = details.get("host");
        return h == null ? "" : h.toString();
    }

    public Map<String, Object> networkFields() {
        return Json.obj("network_id", Integer.toString(networkId), "vlan", "vlan://100", "zone_id", "1",
                "guest_type", "isolated", "network_state", "implemented", "gateway", "10.1.1.1",
                "cidr", "10.1.1.0/24");
    }

    public String envelope(Map<String, Object> payload) {
        Map<String, Object> env = new LinkedHashMap<>();
        env.put("physical-network-extension-details", physicalDetails == null ? Map.of() : physicalDetails);
        env.put("network-extension-details", details);
        env.put("payload", payload);
        return Json.write(env);
    }

    /** {@code ensure-network-device}; stores and returns the printed details. */
    public Map<String, Object> ensure() throws Transport.CommandFailure {
        Map<String, Object> payload = networkFields();
        payload.put("current_details", Json.write(details));
        String out = transport.execute("ensure-network-device", envelope(payload), TIMEOUT_SECONDS);
        details = Json.map(Json.parse(out));
        return details;
    }

    /** ensure-network-device, then the command with the network fields plus {@code extra}. */
    public String command(String command, Map<String, Object> extra) throws Transport.CommandFailure {
        ensure();
        return raw(command, extra);
    }

    /** The command alone (no ensure first). */
    public String raw(String command, Map<String, Object> extra) throws Transport.CommandFailure {
        Map<String, Object> payload = networkFields();
        payload.putAll(extra);
        return transport.execute(command, envelope(payload), TIMEOUT_SECONDS);
    }
}
