//! Thin JNI exports for `org.apache.cloudstack.netbridge.NativeBridge`:
//! convert arguments, call the core, map errors. Refer to the jni crate as
//! `::jni` (this module is named `jni`).
//!
//! Rules every export follows:
//! - the body runs inside `EnvUnowned::with_env`, which catches panics;
//!   [`error::ThrowNetBridge`] turns errors and panics into a pending
//!   `NetBridgeException(code, text)`, so nothing unwinds into the JVM;
//! - a handle is `Arc::into_raw` of a [`Bridge`] (API + shared dispatcher,
//!   see [`netbridge_control::bridge`]) held in a Java `long`. The
//!   Java side (`NetBridge`) guards it with a read-write lock: calls hold the
//!   read lock, `close` takes the write lock and zeroes the handle, so `close`
//!   never frees a bridge another thread is using and a second `close` is a
//!   no-op.
//! - `execute`/`executeRegistered` failures carry a kind (CONFIGURATION 431,
//!   REMOTE 502, UNREACHABLE 503, TIMEOUT 504; see [`error::exec_codes`]).

mod error;
mod logger;

use std::sync::{Arc, OnceLock};

use ::jni::objects::{JClass, JObjectArray, JString};
use ::jni::refs::Global;
use ::jni::sys::{jint, jlong};
use ::jni::{Env, EnvUnowned};

use error::{BridgeError, ThrowNetBridge};
use netbridge_control::api::{ApiConfig, Params};
use netbridge_control::bridge::{Bridge, BridgeConfig};
use netbridge_control::registry::StoreLocation;

/// Java classes the native side calls back into, pinned by global references
/// handed over by `NativeBridge.init` (so the right class loader is used even
/// on threads Java did not start).
pub(crate) struct JavaClasses {
    exception: Global<JClass<'static>>,
    log: Global<JClass<'static>>,
}

static CLASSES: OnceLock<JavaClasses> = OnceLock::new();

pub(crate) fn classes() -> Option<&'static JavaClasses> {
    CLASSES.get()
}

/// Borrows the bridge behind a handle.
///
/// Safety: `handle` is zero or a value returned by `open` that has not been
/// passed to `close` yet; the Java read-write lock guarantees the latter for
/// the duration of the call.
unsafe fn bridge<'a>(handle: jlong) -> Result<&'a Bridge, BridgeError> {
    if handle == 0 {
        return Err(BridgeError::Handle);
    }
    // SAFETY: see the function contract.
    Ok(unsafe { &*(handle as usize as *const Bridge) })
}

fn required_string(env: &Env<'_>, s: &JString<'_>, field: &str) -> Result<String, BridgeError> {
    if s.is_null() {
        return Err(BridgeError::Argument(format!("{field} must not be null")));
    }
    Ok(s.try_to_string(env)?)
}

/// Reads the parallel `keys`/`values` arrays into flat API parameters.
fn read_params(
    env: &mut Env<'_>,
    keys: &JObjectArray<'_, JString<'_>>,
    values: &JObjectArray<'_, JString<'_>>,
) -> Result<Params, BridgeError> {
    let mut params = Params::new();
    if keys.is_null() && values.is_null() {
        return Ok(params);
    }
    if keys.is_null() || values.is_null() {
        return Err(BridgeError::Argument(
            "parameter names and values must both be given".into(),
        ));
    }
    let n = keys.len(env)?;
    if values.len(env)? != n {
        return Err(BridgeError::Argument(
            "parameter names and values differ in length".into(),
        ));
    }
    for i in 0..n {
        // A frame per pair keeps the local reference count flat for big maps.
        env.with_local_frame(2, |env| -> Result<(), BridgeError> {
            let k: JString = keys.get_element(env, i)?;
            let v: JString = values.get_element(env, i)?;
            let key = required_string(env, &k, &format!("parameter name #{i}"))?;
            if v.is_null() {
                return Err(BridgeError::Argument(format!(
                    "parameter '{}' has a null value",
                    netbridge_control::protocol::sanitize_for_message(&key)
                )));
            }
            params.insert(key, v.try_to_string(env)?);
            Ok(())
        })?;
    }
    Ok(params)
}

/// `static native void init(Class<?> exceptionClass, Class<?> logClass)`
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_apache_cloudstack_netbridge_NativeBridge_init<'caller>(
    mut unowned_env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    exception_class: JClass<'caller>,
    log_class: JClass<'caller>,
) {
    unowned_env
        .with_env(|env| -> Result<(), BridgeError> {
            if exception_class.is_null() || log_class.is_null() {
                return Err(BridgeError::Argument(
                    "init classes must not be null".into(),
                ));
            }
            if CLASSES.get().is_none() {
                let classes = JavaClasses {
                    exception: env.new_global_ref(&exception_class)?,
                    log: env.new_global_ref(&log_class)?,
                };
                // A racing init stored equivalent references; ours are dropped.
                let _ = CLASSES.set(classes);
            }
            logger::install();
            Ok(())
        })
        .resolve::<ThrowNetBridge>()
}

/// `static native void setMaxLogLevel(int code)`: 0 off … 5 trace.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_apache_cloudstack_netbridge_NativeBridge_setMaxLogLevel<'caller>(
    mut unowned_env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    code: jint,
) {
    unowned_env
        .with_env(|_env| -> Result<(), BridgeError> {
            log::set_max_level(logger::level_filter(code));
            Ok(())
        })
        .resolve::<ThrowNetBridge>()
}

/// `static native long open(String database, String cloudstackDbProperties, String keyFile,
/// String dispatchNetns)`: `database` is a store location (a SQLite path,
/// `sqlite:///path` or `mysql://user@host:port/cloud`); when
/// `cloudstackDbProperties` (CloudStack's `db.properties`) is given, the
/// database it names is used instead. `dispatchNetns` may be null.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_apache_cloudstack_netbridge_NativeBridge_open<'caller>(
    mut unowned_env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    database: JString<'caller>,
    cloudstack_db_properties: JString<'caller>,
    key_file: JString<'caller>,
    dispatch_netns: JString<'caller>,
) -> jlong {
    unowned_env
        .with_env(|env| -> Result<jlong, BridgeError> {
            let database = required_string(env, &database, "database")?;
            let key_file = required_string(env, &key_file, "keyFile")?;
            let netns = if dispatch_netns.is_null() {
                None
            } else {
                Some(dispatch_netns.try_to_string(env)?)
            };
            let location = if cloudstack_db_properties.is_null() {
                StoreLocation::parse(&database)
            } else {
                let file = cloudstack_db_properties.try_to_string(env)?;
                StoreLocation::from_cloudstack_db_properties(std::path::Path::new(&file))
            }
            .map_err(|e| BridgeError::Argument(e.to_string()))?;
            let mut config = BridgeConfig::new(ApiConfig {
                database: location.clone(),
                key_file: key_file.into(),
            });
            config.dispatch_netns = netns.map(Into::into);
            let bridge = Bridge::open(config)?;
            log::info!(target: "netbridge::jni", "netbridge {} opened {location}", netbridge_control::build_id());
            let raw = Arc::into_raw(Arc::new(bridge));
            Ok(raw as usize as jlong)
        })
        .resolve::<ThrowNetBridge>()
}

/// `static native void close(long handle)`: releases the handle's reference.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_apache_cloudstack_netbridge_NativeBridge_close<'caller>(
    mut unowned_env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
) {
    unowned_env
        .with_env(|_env| -> Result<(), BridgeError> {
            if handle != 0 {
                // SAFETY: `handle` came from `open` and the Java side passes it
                // to `close` exactly once, under its write lock.
                drop(unsafe { Arc::from_raw(handle as usize as *const Bridge) });
                log::debug!(target: "netbridge::jni", "handle closed");
            }
            Ok(())
        })
        .resolve::<ThrowNetBridge>()
}

/// `static native String api(long handle, String command, String[] keys, String[] values)`
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_apache_cloudstack_netbridge_NativeBridge_api<'caller>(
    mut unowned_env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
    command: JString<'caller>,
    keys: JObjectArray<'caller, JString<'caller>>,
    values: JObjectArray<'caller, JString<'caller>>,
) -> JString<'caller> {
    unowned_env
        .with_env(|env| -> Result<JString<'caller>, BridgeError> {
            // SAFETY: the Java read lock keeps the handle alive for this call.
            let bridge = unsafe { bridge(handle)? };
            let command = required_string(env, &command, "command")?;
            let params = read_params(env, &keys, &values)?;
            let response = bridge.api().call(&command, &params)?;
            log::trace!(target: "netbridge::jni", "api {command} answered");
            Ok(JString::from_str(env, response.to_string())?)
        })
        .resolve::<ThrowNetBridge>()
}

fn timeout(millis: jlong) -> Result<std::time::Duration, BridgeError> {
    match u64::try_from(millis) {
        Ok(m) if m > 0 => Ok(std::time::Duration::from_millis(m)),
        _ => Err(BridgeError::Argument("timeout must be positive".into())),
    }
}

/// `static native String execute(long handle, String command, String envelope, long timeoutMillis)`:
/// the command's stdout-equivalent; failures throw with kind CONFIGURATION,
/// UNREACHABLE, TIMEOUT or REMOTE.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_apache_cloudstack_netbridge_NativeBridge_execute<'caller>(
    mut unowned_env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
    command: JString<'caller>,
    envelope: JString<'caller>,
    timeout_millis: jlong,
) -> JString<'caller> {
    unowned_env
        .with_env(|env| -> Result<JString<'caller>, BridgeError> {
            // SAFETY: the Java read lock keeps the handle alive for this call.
            let bridge = unsafe { bridge(handle)? };
            let command = required_string(env, &command, "command")?;
            let envelope = required_string(env, &envelope, "envelope")?;
            let timeout = timeout(timeout_millis)?;
            let out = bridge.execute(&command, envelope.as_bytes(), timeout)?;
            Ok(JString::from_str(env, out)?)
        })
        .resolve::<ThrowNetBridge>()
}

/// `static native String executeRegistered(long handle, String extensionId,
/// String physicalNetworkId, String command, String envelope, long timeoutMillis)`:
/// as `execute`, with the registration details from the registry.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_org_apache_cloudstack_netbridge_NativeBridge_executeRegistered<
    'caller,
>(
    mut unowned_env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
    extension_id: JString<'caller>,
    physical_network_id: JString<'caller>,
    command: JString<'caller>,
    envelope: JString<'caller>,
    timeout_millis: jlong,
) -> JString<'caller> {
    unowned_env
        .with_env(|env| -> Result<JString<'caller>, BridgeError> {
            // SAFETY: the Java read lock keeps the handle alive for this call.
            let bridge = unsafe { bridge(handle)? };
            let extension_id = required_string(env, &extension_id, "extensionId")?;
            let physical_network_id =
                required_string(env, &physical_network_id, "physicalNetworkId")?;
            let command = required_string(env, &command, "command")?;
            let envelope = required_string(env, &envelope, "envelope")?;
            let timeout = timeout(timeout_millis)?;
            let out = bridge.execute_registered(
                &extension_id,
                &physical_network_id,
                &command,
                envelope.as_bytes(),
                timeout,
            )?;
            Ok(JString::from_str(env, out)?)
        })
        .resolve::<ThrowNetBridge>()
}

/// `static native String status(long handle, long timeoutMillis)`: the
/// `netbridge status` report as JSON (see [`netbridge_control::status`]).
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_apache_cloudstack_netbridge_NativeBridge_status<'caller>(
    mut unowned_env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
    timeout_millis: jlong,
) -> JString<'caller> {
    unowned_env
        .with_env(|env| -> Result<JString<'caller>, BridgeError> {
            // SAFETY: the Java read lock keeps the handle alive for this call.
            let bridge = unsafe { bridge(handle)? };
            let options = netbridge_control::status::StatusOptions {
                timeout: timeout(timeout_millis)?,
            };
            let report = netbridge_control::status::collect(bridge, &options)?;
            let text = serde_json::to_string(&report)
                .map_err(|e| BridgeError::Unavailable(format!("cannot render the report: {e}")))?;
            Ok(JString::from_str(env, text)?)
        })
        .resolve::<ThrowNetBridge>()
}

/// `static native String version()`: the build identity.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_apache_cloudstack_netbridge_NativeBridge_version<'caller>(
    mut unowned_env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
) -> JString<'caller> {
    unowned_env
        .with_env(|env| -> Result<JString<'caller>, BridgeError> {
            Ok(JString::from_str(env, netbridge_control::build_id())?)
        })
        .resolve::<ThrowNetBridge>()
}

/// `static native long echo(long value)`: the trivial call whose round trip
/// the benchmark measures; goes through the same panic/error machinery as
/// every export.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_apache_cloudstack_netbridge_NativeBridge_echo<'caller>(
    mut unowned_env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    value: jlong,
) -> jlong {
    unowned_env
        .with_env(|_env| -> Result<jlong, BridgeError> { Ok(value) })
        .resolve::<ThrowNetBridge>()
}

/// `static native void panicForTest(String message)`: test hook proving a
/// panic surfaces as a `NetBridgeException` instead of aborting the JVM.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_apache_cloudstack_netbridge_NativeBridge_panicForTest<'caller>(
    mut unowned_env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    message: JString<'caller>,
) {
    unowned_env
        .with_env(|env| -> Result<(), BridgeError> {
            let message = required_string(env, &message, "message")?;
            panic!("{message}");
        })
        .resolve::<ThrowNetBridge>()
}

/// `static native void logForTest(int level, String message, boolean fromNativeThread)`:
/// test hook emitting one record, optionally from a thread the JVM does not know.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_apache_cloudstack_netbridge_NativeBridge_logForTest<'caller>(
    mut unowned_env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    level: jint,
    message: JString<'caller>,
    from_native_thread: ::jni::sys::jboolean,
) {
    unowned_env
        .with_env(|env| -> Result<(), BridgeError> {
            let message = required_string(env, &message, "message")?;
            let Some(level) = logger::level_filter(level).to_level() else {
                return Err(BridgeError::Argument("level must be 1..5".into()));
            };
            if from_native_thread {
                std::thread::spawn(
                    move || log::log!(target: "netbridge::test", level, "{message}"),
                )
                .join()
                .map_err(|_| BridgeError::Unavailable("log thread panicked".into()))?;
            } else {
                log::log!(target: "netbridge::test", level, "{message}");
            }
            Ok(())
        })
        .resolve::<ThrowNetBridge>()
}
