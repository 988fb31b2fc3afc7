package org.apache.cloudstack.netbridge;

/** Run in a child JVM by {@link NativeLoaderTest}: prints where the library came from. */
public final class LoaderProbe {
    private LoaderProbe() {
    }

    public static void main(String[] args) {
        long echoed = NetBridge.ping(12345L);
        System.out.println("source=" + NativeLoader.source() + " ping=" + echoed);
    }
}
