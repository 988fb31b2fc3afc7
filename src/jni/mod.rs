//! Thin JNI exports: convert, call the core, map errors. Refer to the jni crate as `::jni`.
