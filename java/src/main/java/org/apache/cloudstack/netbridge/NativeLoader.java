package org.apache.cloudstack.netbridge;

import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;

/**
 * Loads {@code libnetbridge.so} once per JVM.
 *
 * <p>Order: the file named by system property {@code netbridge.library} if set; else
 * {@code System.loadLibrary("netbridge")} when a directory of {@code java.library.path} holds
 * the library; else the copy packed in the jar at {@value #RESOURCE}, extracted to a private
 * temporary directory (mode 0700) and loaded from there. The extracted file is deleted right
 * after loading: the mapping stays valid, and nothing is left behind.
 */
final class NativeLoader {
    static final String LIBRARY = "netbridge";
    static final String RESOURCE = "/native/linux-x86_64/libnetbridge.so";

    private static boolean loaded;
    private static String source;

    private NativeLoader() {
    }

    static synchronized void load() {
        if (loaded) {
            return;
        }
        String explicit = System.getProperty("netbridge.library");
        if (explicit != null && !explicit.isBlank()) {
            String path = Path.of(explicit).toAbsolutePath().toString();
            System.load(path);
            source = path;
        } else if (onLibraryPath()) {
            System.loadLibrary(LIBRARY);
            source = "java.library.path";
        } else {
            source = extractAndLoad();
        }
        loaded = true;
    }

    /** Where the library came from (a path, or {@code java.library.path}); for diagnostics. */
    static synchronized String source() {
        return source;
    }

    private static boolean onLibraryPath() {
        String path = System.getProperty("java.library.path", "");
        String file = System.mapLibraryName(LIBRARY);
        for (String dir : path.split(File.pathSeparator)) {
            if (!dir.isEmpty() && Files.isRegularFile(Path.of(dir, file))) {
                return true;
            }
        }
        return false;
    }

    private static String extractAndLoad() {
        String os = System.getProperty("os.name", "").toLowerCase(java.util.Locale.ROOT);
        String arch = System.getProperty("os.arch", "");
        if (!os.contains("linux") || !(arch.equals("amd64") || arch.equals("x86_64"))) {
            throw new UnsatisfiedLinkError("netbridge ships a native library for linux-x86_64 only, not "
                    + os + "-" + arch);
        }
        try (InputStream in = NativeLoader.class.getResourceAsStream(RESOURCE)) {
            if (in == null) {
                throw new UnsatisfiedLinkError("libnetbridge.so is neither on java.library.path nor in the jar ("
                        + RESOURCE + "); build it with `cargo build --lib`");
            }
            Path dir = Files.createTempDirectory("netbridge-");
            Path lib = dir.resolve(System.mapLibraryName(LIBRARY));
            try {
                Files.copy(in, lib, StandardCopyOption.REPLACE_EXISTING);
                System.load(lib.toString());
                return "jar:" + RESOURCE;
            } finally {
                Files.deleteIfExists(lib);
                Files.deleteIfExists(dir);
            }
        } catch (IOException e) {
            UnsatisfiedLinkError error = new UnsatisfiedLinkError("cannot extract " + RESOURCE + ": " + e.getMessage());
            error.initCause(e);
            throw error;
        }
    }
}
