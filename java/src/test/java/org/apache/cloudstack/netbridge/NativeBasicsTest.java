package org.apache.cloudstack.netbridge;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Loading, the trivial call, error and panic mapping, bad arguments. */
class NativeBasicsTest {
    @TempDir
    Path dir;

    @Test
    void libraryComesFromTheJarWhenNotOnLibraryPath() {
        NativeBridge.ensureLoaded();
        assertEquals("jar:" + NativeLoader.RESOURCE, NativeLoader.source());
    }

    @Test
    void versionIsTheBuildIdentity() {
        String v = NetBridge.nativeVersion();
        assertTrue(v.matches("\\d+\\.\\d+\\.\\d+\\+\\S+"), v);
    }

    @Test
    void trivialCallRoundTrips() {
        assertEquals(42L, NativeBridge.echo(42L));
        assertEquals(Long.MIN_VALUE, NativeBridge.echo(Long.MIN_VALUE));
    }

    @Test
    void panicSurfacesAsExceptionAndTheLibraryStaysUsable() {
        NetBridgeException e = assertThrows(NetBridgeException.class, () -> NativeBridge.panicForTest("boom"));
        assertEquals(530, e.getCode());
        assertEquals("internal error: native panic: boom", e.getText());
        assertEquals("internal error: native panic: boom", e.getMessage());
        // same thread, again, then a normal call: nothing was poisoned
        assertThrows(NetBridgeException.class, () -> NativeBridge.panicForTest("again"));
        assertEquals(7L, NativeBridge.echo(7L));
    }

    @Test
    void unknownCommandMapsToCode432WithExactText() {
        try (NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir))) {
            NetBridgeException e = assertThrows(NetBridgeException.class, () -> b.api("noSuchCommand", Map.of()));
            assertEquals(432, e.getCode());
            assertEquals("Unsupported API command: noSuchCommand", e.getText());
            assertEquals(9999, e.getCsErrorCode());
            assertEquals(java.util.List.of(), e.getUuidList());
        }
    }

    @Test
    void apiErrorsCarryCloudStacksCodes() {
        try (NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir))) {
            b.api("createExtension", Map.of("name", "dup", "type", "Orchestrator"));
            NetBridgeException dup = assertThrows(NetBridgeException.class,
                    () -> b.api("createExtension", Map.of("name", "dup", "type", "Orchestrator")));
            assertEquals(530, dup.getCode());
            assertEquals(4250, dup.getCsErrorCode());
            assertEquals(NetBridgeException.Kind.INTERNAL, dup.getKind());
            assertEquals("Extension by name already exists", dup.getText());
            NetBridgeException missing = assertThrows(NetBridgeException.class,
                    () -> b.api("createExtension", Map.of("type", "Orchestrator")));
            assertEquals(431, missing.getCode());
            assertEquals(4350, missing.getCsErrorCode());
            assertEquals(NetBridgeException.Kind.API, missing.getKind());
        }
    }

    @Test
    void nullParameterValueIsAParameterError() {
        try (NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir))) {
            Map<String, String> p = new HashMap<>();
            p.put("name", null);
            NetBridgeException e = assertThrows(NetBridgeException.class, () -> b.api("listExtensions", p));
            assertEquals(431, e.getCode());
            assertEquals("parameter 'name' has a null value", e.getText());
            // null map means no parameters
            assertThrows(NetBridgeException.class, () -> b.api("noSuchCommand", null));
        }
    }

    @Test
    void executeRefusesBadArgumentsBeforeNativeCode() {
        try (NetBridge b = NetBridge.open(NetBridgeConfig.inDirectory(dir))) {
            assertThrows(IllegalArgumentException.class,
                    () -> b.execute("implement-network", "{}", Duration.ofSeconds(-1)));
            assertThrows(IllegalArgumentException.class,
                    () -> b.execute("implement-network", "{}", Duration.ZERO));
            assertThrows(NullPointerException.class, () -> b.execute(null, "{}", Duration.ofSeconds(1)));
        }
    }
}
