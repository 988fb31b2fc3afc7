//! Forwards Rust `log` records to `java.util.logging` through
//! `NativeLog.log(int, String, String)`.
//!
//! Cost when a level is off: the `log` macros compare against
//! `log::max_level()`, which the Java side sets from its logger's level, so a
//! disabled record never formats its arguments nor touches JNI.

use std::cell::Cell;

use ::jni::objects::{JString, JValue};
use ::jni::vm::JavaVM;
use ::jni::{jni_sig, jni_str};
use log::{Level, LevelFilter, Log, Metadata, Record};

/// The one process-wide logger (`log` allows exactly one).
struct JavaLogger;

static LOGGER: JavaLogger = JavaLogger;

thread_local! {
    // Set while a record is being forwarded: anything logged underneath (the
    // jni crate logs its own failures) is dropped instead of recursing.
    static FORWARDING: Cell<bool> = const { Cell::new(false) };
}

/// Installs the Java logger unless another logger already owns `log` (then
/// records go there; only the level control applies).
pub(crate) fn install() {
    if log::set_logger(&LOGGER).is_err() {
        // Not an error: e.g. a host process embedding the library set its own.
    }
}

/// Level codes shared with `NativeLog.java`: 0 off, 1 error, 2 warn, 3 info,
/// 4 debug, 5 trace.
pub(crate) fn level_filter(code: i32) -> LevelFilter {
    match code {
        i32::MIN..=0 => LevelFilter::Off,
        1 => LevelFilter::Error,
        2 => LevelFilter::Warn,
        3 => LevelFilter::Info,
        4 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

fn level_code(level: Level) -> i32 {
    match level {
        Level::Error => 1,
        Level::Warn => 2,
        Level::Info => 3,
        Level::Debug => 4,
        Level::Trace => 5,
    }
}

impl Log for JavaLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) || FORWARDING.with(Cell::get) {
            return;
        }
        let Some(classes) = super::classes() else {
            return;
        };
        let Ok(vm) = JavaVM::singleton() else {
            return;
        };
        FORWARDING.with(|f| f.set(true));
        let message = record.args().to_string();
        // Java threads are already attached (no-op); a Rust-spawned thread is
        // attached only for this record so it never holds up JVM shutdown.
        let _ = vm.attach_current_thread_for_scope(|env| -> ::jni::errors::Result<()> {
            let target = JString::from_str(env, record.target())?;
            let text = JString::from_str(env, &message)?;
            env.call_static_method(
                &classes.log,
                jni_str!("log"),
                jni_sig!("(ILjava/lang/String;Ljava/lang/String;)V"),
                &[
                    JValue::Int(level_code(record.level())),
                    JValue::Object(&target),
                    JValue::Object(&text),
                ],
            )?;
            Ok(())
        });
        FORWARDING.with(|f| f.set(false));
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_codes_round_trip() {
        assert_eq!(level_filter(0), LevelFilter::Off);
        assert_eq!(level_filter(-3), LevelFilter::Off);
        assert_eq!(level_filter(1), LevelFilter::Error);
        assert_eq!(level_filter(3), LevelFilter::Info);
        assert_eq!(level_filter(9), LevelFilter::Trace);
        for level in [
            Level::Error,
            Level::Warn,
            Level::Info,
            Level::Debug,
            Level::Trace,
        ] {
            assert_eq!(level_filter(level_code(level)), level.to_level_filter());
        }
    }
}
