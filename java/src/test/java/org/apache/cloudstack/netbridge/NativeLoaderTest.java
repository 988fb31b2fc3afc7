package org.apache.cloudstack.netbridge;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

/** The three ways NativeLoader finds the library, each in a fresh JVM. */
class NativeLoaderTest {
    private static Path location(Class<?> c) throws Exception {
        return Path.of(c.getProtectionDomain().getCodeSource().getLocation().toURI());
    }

    private static String probe(String... props) throws Exception {
        String classpath = location(NativeLoader.class) + File.pathSeparator + location(LoaderProbe.class);
        List<String> cmd = new ArrayList<>();
        cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        cmd.addAll(List.of(props));
        cmd.add("-cp");
        cmd.add(classpath);
        cmd.add(LoaderProbe.class.getName());
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
        assertTrue(p.waitFor(60, TimeUnit.SECONDS), "probe JVM hung");
        assertEquals(0, p.exitValue(), out);
        return out;
    }

    private static Path packedLibraryDir() throws Exception {
        Path dir = location(NativeLoader.class).resolve("native/linux-x86_64");
        assertTrue(Files.isRegularFile(dir.resolve("libnetbridge.so")), "the build packs " + dir);
        return dir;
    }

    @Test
    void extractsFromTheJarResourceByDefault() throws Exception {
        assertEquals("source=jar:/native/linux-x86_64/libnetbridge.so ping=12345", probe());
    }

    @Test
    void prefersJavaLibraryPath() throws Exception {
        assertEquals("source=java.library.path ping=12345",
                probe("-Djava.library.path=/nonexistent" + File.pathSeparator + packedLibraryDir()));
    }

    @Test
    void explicitFileWins() throws Exception {
        Path lib = packedLibraryDir().resolve("libnetbridge.so");
        assertEquals("source=" + lib + " ping=12345",
                probe("-Dnetbridge.library=" + lib, "-Djava.library.path=/nonexistent"));
    }
}
