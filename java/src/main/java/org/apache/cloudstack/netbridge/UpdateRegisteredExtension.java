package org.apache.cloudstack.netbridge;

import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;

/**
 * Typed {@code updateRegisteredExtension} call (CloudStack 4.23): replaces the details of an
 * extension's registration on a {@code Cluster} or {@code PhysicalNetwork}.
 *
 * <ul>
 *   <li>{@link #details(Map)}: the new set is the sent keys plus every existing hidden key not
 *       re-sent; visible keys not re-sent are removed.</li>
 *   <li>{@link #cleanupDetails(boolean) cleanupDetails(true)}: removes every detail, visible and
 *       hidden; details are then ignored.</li>
 * </ul>
 *
 * <pre>{@code
 * String json = bridge.updateRegisteredExtension()
 *         .extensionId(extId).resourceId(pnId).resourceType("PhysicalNetwork")
 *         .details(Map.of("hosts", "10.0.0.1,10.0.0.2"))
 *         .call();
 * }</pre>
 */
public final class UpdateRegisteredExtension {
    public static final String COMMAND = "updateRegisteredExtension";

    private final NetBridge bridge;
    private String extensionId;
    private String resourceId;
    private String resourceType;
    private Map<String, String> details;
    private Boolean cleanupDetails;

    UpdateRegisteredExtension(NetBridge bridge) {
        this.bridge = bridge;
    }

    public UpdateRegisteredExtension extensionId(String id) {
        this.extensionId = id;
        return this;
    }

    public UpdateRegisteredExtension resourceId(String id) {
        this.resourceId = id;
        return this;
    }

    /** {@code Cluster} or {@code PhysicalNetwork}. */
    public UpdateRegisteredExtension resourceType(String type) {
        this.resourceType = type;
        return this;
    }

    /** The details to set (iteration order is kept in the request). */
    public UpdateRegisteredExtension details(Map<String, String> details) {
        this.details = details == null ? null : new LinkedHashMap<>(details);
        return this;
    }

    public UpdateRegisteredExtension cleanupDetails(boolean cleanup) {
        this.cleanupDetails = cleanup;
        return this;
    }

    /** The flat CloudStack parameters this call sends. */
    public Map<String, String> toParams() {
        Map<String, String> p = new LinkedHashMap<>();
        putIfSet(p, "extensionid", extensionId);
        putIfSet(p, "resourceid", resourceId);
        putIfSet(p, "resourcetype", resourceType);
        if (details != null) {
            NetBridge.putDetails(p, "details", details);
        }
        if (cleanupDetails != null) {
            p.put("cleanupdetails", cleanupDetails.toString());
        }
        return p;
    }

    /** Sends the call; returns the CloudStack JSON response (the extension with its details). */
    public String call() {
        return bridge.api(COMMAND, toParams());
    }

    private static void putIfSet(Map<String, String> p, String key, String value) {
        if (value != null) {
            p.put(key, Objects.toString(value));
        }
    }
}
