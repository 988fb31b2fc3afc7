//! Errors of the JNI layer and the policy that turns them (and panics) into
//! `NetBridgeException`s instead of letting anything unwind into the JVM.

use ::jni::errors::{Error as JniCrateError, ErrorPolicy};
use ::jni::objects::{JString, JThrowable, JValue};
use ::jni::{jni_sig, jni_str, Env};

use netbridge_control::api::{codes, ApiError};
use netbridge_control::dispatch::{DispatchError, ErrorKind};

/// `NetBridgeException` codes of `execute` failures (the Java class documents
/// them): configuration 431, remote 502, unreachable 503, timeout 504.
pub(crate) mod exec_codes {
    pub const CONFIGURATION: u16 = 431;
    pub const REMOTE: u16 = 502;
    pub const UNREACHABLE: u16 = 503;
    pub const TIMEOUT: u16 = 504;
}

/// One error enum for the JNI layer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BridgeError {
    /// An API error, passed through with its CloudStack code and text.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A failed network command (`execute`).
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// Opening the bridge failed.
    #[error(transparent)]
    Open(#[from] netbridge_control::bridge::BridgeOpenError),
    /// A failing JNI call (string conversion, array access, …).
    #[error("JNI failure: {0}")]
    Jni(#[from] JniCrateError),
    /// A bad argument from the Java side (null, mismatched arrays).
    #[error("{0}")]
    Argument(String),
    /// A zero handle: the Java side guards against this, so reaching it is a bug there.
    #[error("NetBridge handle is closed or invalid")]
    Handle,
    /// A feature that is declared in the Java API but not provided by this build.
    #[error("{0}")]
    Unavailable(String),
    /// The status report could not be made (registry unreadable).
    #[error(transparent)]
    Status(#[from] netbridge_control::status::StatusError),
}

impl BridgeError {
    pub(crate) fn code(&self) -> u16 {
        match self {
            BridgeError::Api(e) => e.code,
            BridgeError::Open(netbridge_control::bridge::BridgeOpenError::Api(e)) => e.code,
            BridgeError::Open(netbridge_control::bridge::BridgeOpenError::Dispatch(_)) => {
                codes::PARAM_ERROR
            }
            BridgeError::Dispatch(e) => match e.kind() {
                ErrorKind::Configuration => exec_codes::CONFIGURATION,
                ErrorKind::Remote => exec_codes::REMOTE,
                ErrorKind::Unreachable => exec_codes::UNREACHABLE,
                ErrorKind::Timeout => exec_codes::TIMEOUT,
            },
            BridgeError::Argument(_) => codes::PARAM_ERROR,
            BridgeError::Jni(_)
            | BridgeError::Handle
            | BridgeError::Unavailable(_)
            | BridgeError::Status(_) => codes::INTERNAL_ERROR,
        }
    }

    /// Name of the Java `NetBridgeException.Kind` for execute failures and
    /// for an `open` refused because of a setting (CONFIGURATION).
    pub(crate) fn kind(&self) -> Option<&'static str> {
        match self {
            BridgeError::Dispatch(e) => Some(match e.kind() {
                ErrorKind::Configuration => "CONFIGURATION",
                ErrorKind::Remote => "REMOTE",
                ErrorKind::Unreachable => "UNREACHABLE",
                ErrorKind::Timeout => "TIMEOUT",
            }),
            BridgeError::Open(e) if e.is_configuration() => Some("CONFIGURATION"),
            _ => None,
        }
    }

    /// CloudStack's exception code (`cserrorcode`) of API errors.
    pub(crate) fn cs_code(&self) -> Option<u32> {
        match self {
            BridgeError::Api(e) => Some(e.cs_code),
            BridgeError::Open(netbridge_control::bridge::BridgeOpenError::Api(e)) => {
                Some(e.cs_code)
            }
            _ => None,
        }
    }

    pub(crate) fn text(&self) -> String {
        match self {
            // The API text is the external contract: keep it byte for byte.
            BridgeError::Api(e)
            | BridgeError::Open(netbridge_control::bridge::BridgeOpenError::Api(e)) => {
                e.text.clone()
            }
            other => other.to_string(),
        }
    }
}

/// Error policy for every export: errors and panics become a pending
/// `NetBridgeException(code, text)` and the export returns a default value.
pub(crate) struct ThrowNetBridge;

impl<T: Default> ErrorPolicy<T, BridgeError> for ThrowNetBridge {
    type Captures<'unowned_env_local: 'native_method, 'native_method> = ();

    fn on_error<'unowned_env_local: 'native_method, 'native_method>(
        env: &mut Env<'unowned_env_local>,
        _cap: &mut Self::Captures<'unowned_env_local, 'native_method>,
        err: BridgeError,
    ) -> ::jni::errors::Result<T> {
        // A Java exception raised inside a JNI call (OOM, …) is already pending
        // and says more than our wrapper would.
        if !env.exception_check() {
            log::debug!(target: "netbridge::jni", "call failed with code {}", err.code());
            // A refused setting at open is a CONFIGURATION failure even though
            // the API layer reported it (431).
            match (err.kind(), err.cs_code()) {
                (None, Some(cs_code)) => throw_api(env, err.code(), &err.text(), cs_code)?,
                (kind, _) => throw_kind(env, err.code(), &err.text(), kind)?,
            }
        }
        Ok(T::default())
    }

    fn on_panic<'unowned_env_local: 'native_method, 'native_method>(
        env: &mut Env<'unowned_env_local>,
        _cap: &mut Self::Captures<'unowned_env_local, 'native_method>,
        payload: Box<dyn std::any::Any + Send + 'static>,
    ) -> ::jni::errors::Result<T> {
        let text = format!("internal error: native panic: {}", panic_text(payload));
        log::error!(target: "netbridge::jni", "{text}");
        if env.exception_check() {
            // The panic happened after an exception was raised; replace it so
            // the caller learns about the panic.
            env.exception_clear();
        }
        throw(env, codes::INTERNAL_ERROR, &text)?;
        Ok(T::default())
    }
}

/// Extracts the message of a panic payload without risking a second panic
/// while dropping an exotic payload.
fn panic_text(payload: Box<dyn std::any::Any + Send + 'static>) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        return (*s).to_string();
    }
    if let Some(s) = payload.downcast_ref::<String>() {
        return s.clone();
    }
    if let Err(inner) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(payload))) {
        std::mem::forget(inner);
    }
    "non-string panic payload".to_string()
}

/// Raises `NetBridgeException(code, text)` in the calling Java thread,
/// falling back to a `RuntimeException` if that cannot be built (e.g. no
/// memory), so a failed call never returns to Java without an exception.
pub(crate) fn throw(env: &mut Env<'_>, code: u16, text: &str) -> ::jni::errors::Result<()> {
    throw_kind(env, code, text, None)
}

/// As [`throw`], with the exception's `Kind` named (execute failures).
pub(crate) fn throw_kind(
    env: &mut Env<'_>,
    code: u16,
    text: &str,
    kind: Option<&str>,
) -> ::jni::errors::Result<()> {
    let thrown = throw_netbridge(env, code, text, kind);
    if thrown.is_ok() || env.exception_check() {
        return thrown;
    }
    let msg = ::jni::strings::JNIString::from(format!("{text} (code {code})"));
    swallow_thrown(env.throw_new(jni_str!("java/lang/RuntimeException"), msg))
}

/// Raises `NetBridgeException(code, text, cserrorcode)` for an API error,
/// with the same fallback as [`throw_kind`].
pub(crate) fn throw_api(
    env: &mut Env<'_>,
    code: u16,
    text: &str,
    cs_code: u32,
) -> ::jni::errors::Result<()> {
    let thrown = (|| {
        let Some(classes) = super::classes() else {
            return Err(JniCrateError::NullPtr("NetBridgeException class"));
        };
        let jtext = JString::from_str(env, text)?;
        let obj = env.new_object(
            &classes.exception,
            jni_sig!("(ILjava/lang/String;I)V"),
            &[
                JValue::Int(i32::from(code)),
                JValue::Object(&jtext),
                JValue::Int(i32::try_from(cs_code).unwrap_or(-1)),
            ],
        )?;
        let throwable = env.cast_local::<JThrowable>(obj)?;
        swallow_thrown(env.throw(throwable))
    })();
    if thrown.is_ok() || env.exception_check() {
        return thrown;
    }
    throw_kind(env, code, text, None)
}

fn throw_netbridge(
    env: &mut Env<'_>,
    code: u16,
    text: &str,
    kind: Option<&str>,
) -> ::jni::errors::Result<()> {
    let Some(classes) = super::classes() else {
        // init() has not run: cannot happen through NativeBridge's static initializer.
        return Err(JniCrateError::NullPtr("NetBridgeException class"));
    };
    let jtext = JString::from_str(env, text)?;
    let obj = match kind {
        None => env.new_object(
            &classes.exception,
            jni_sig!("(ILjava/lang/String;)V"),
            &[JValue::Int(i32::from(code)), JValue::Object(&jtext)],
        )?,
        Some(kind) => {
            let jkind = JString::from_str(env, kind)?;
            env.new_object(
                &classes.exception,
                jni_sig!("(ILjava/lang/String;Ljava/lang/String;)V"),
                &[
                    JValue::Int(i32::from(code)),
                    JValue::Object(&jtext),
                    JValue::Object(&jkind),
                ],
            )?
        }
    };
    let throwable = env.cast_local::<JThrowable>(obj)?;
    swallow_thrown(env.throw(throwable))
}

/// `throw*` report success as `Err(JavaException)`; the exception is meant to
/// propagate to Java, so that outcome is the success case here.
fn swallow_thrown(r: ::jni::errors::Result<()>) -> ::jni::errors::Result<()> {
    match r {
        Err(JniCrateError::JavaException) | Ok(()) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_keep_code_and_exact_text() {
        let e = BridgeError::from(ApiError::param("Extension by name already exists"));
        assert_eq!(e.code(), 431);
        assert_eq!(e.cs_code(), Some(4350));
        assert_eq!(e.text(), "Extension by name already exists");
        assert_eq!(BridgeError::Handle.cs_code(), None);
    }

    #[test]
    fn local_errors_map_to_cloudstack_codes() {
        assert_eq!(BridgeError::Argument("x".into()).code(), 431);
        assert_eq!(BridgeError::Handle.code(), 530);
        assert_eq!(
            BridgeError::Handle.text(),
            "NetBridge handle is closed or invalid"
        );
    }

    #[test]
    fn dispatch_errors_keep_their_kind() {
        let cases = [
            (
                DispatchError::Configuration("c".into()),
                431,
                "CONFIGURATION",
            ),
            (DispatchError::Unreachable("u".into()), 503, "UNREACHABLE"),
            (DispatchError::Timeout("t".into()), 504, "TIMEOUT"),
            (DispatchError::Remote("r".into()), 502, "REMOTE"),
        ];
        for (e, code, kind) in cases {
            let text = e.to_string();
            let b = BridgeError::from(e);
            assert_eq!((b.code(), b.kind(), b.text()), (code, Some(kind), text));
        }
        assert_eq!(BridgeError::Argument("x".into()).kind(), None);
    }

    #[test]
    fn open_refused_for_a_setting_is_a_configuration_error() {
        use netbridge_control::bridge::BridgeOpenError;
        let setting = BridgeError::from(BridgeOpenError::Api(ApiError::param(
            "key file /k is accessible by group or others (mode 644); refusing to use it, chmod 600 it",
        )));
        assert_eq!(
            (setting.code(), setting.kind(), setting.text().as_str()),
            (
                431,
                Some("CONFIGURATION"),
                "key file /k is accessible by group or others (mode 644); refusing to use it, chmod 600 it"
            )
        );
        let netns = BridgeError::from(BridgeOpenError::Dispatch(DispatchError::Configuration(
            "cannot open network namespace '/run/netns/x'".into(),
        )));
        assert_eq!((netns.code(), netns.kind()), (431, Some("CONFIGURATION")));
        let internal = BridgeError::from(BridgeOpenError::Api(ApiError::internal(
            "Cannot open the registry: registry database error: disk I/O error",
        )));
        assert_eq!((internal.code(), internal.kind()), (530, None));
    }

    #[test]
    fn panic_payloads_become_text() {
        assert_eq!(panic_text(Box::new("boom")), "boom");
        assert_eq!(panic_text(Box::new(String::from("bang"))), "bang");
        assert_eq!(panic_text(Box::new(42u8)), "non-string panic payload");
    }
}
