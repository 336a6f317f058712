//! The option values both modules take (`socket=`, `timeout=`, `on_error=`), each checked the
//! same way; every module parses its own option line with these.

use std::path::PathBuf;
use std::time::Duration;

/// Where dmsd listens unless `socket=` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/dms/pam.sock";
/// How long one call to dmsd may take unless `timeout=` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds of `timeout=`, in seconds.
pub const TIMEOUT_RANGE: (f64, f64) = (0.1, 300.0);

/// An option that cannot be used; the call fails whatever `on_error` says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// A word that is no known option.
    #[error("unknown option {option:?}; known: {known}")]
    Unknown {
        /// The word as written.
        option: String,
        /// The options the module knows, for the message.
        known: &'static str,
    },
    /// A known key with a value that does not fit.
    #[error("option {key}={value:?}: {why}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The same key twice (which one would count is a guess).
    #[error("option {0} is given more than once")]
    Duplicate(&'static str),
    /// An argument that is not UTF-8.
    #[error("option {0:?} is not valid UTF-8")]
    NotUtf8(String),
}

/// A C `argc`/`argv` option list (as PAM and Slurm pass a module's words) as byte strings, or
/// `None` when it holds a NULL.
///
/// # Safety
///
/// When `argc > 0`, `argv` is NULL or points to `argc` pointers, each NULL or a NUL-terminated
/// string, valid for `'a`.
pub unsafe fn c_arguments<'a>(
    argc: std::ffi::c_int,
    argv: *const *const std::ffi::c_char,
) -> Option<Vec<&'a [u8]>> {
    if argc <= 0 {
        return Some(Vec::new());
    }
    if argv.is_null() {
        return None;
    }
    // SAFETY: argv points to argc pointers (the caller's contract).
    let ptrs = unsafe { std::slice::from_raw_parts(argv, argc as usize) };
    ptrs.iter()
        .map(|&p| {
            // SAFETY: each non-NULL entry is a NUL-terminated string valid for 'a.
            (!p.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes())
        })
        .collect()
}

/// The options of every module that talks to the session socket.
#[derive(Debug, Clone, PartialEq)]
pub struct CommonOptions {
    /// dmsd's session socket (`socket=`).
    pub socket: PathBuf,
    /// One overall deadline per call to dmsd (`timeout=`).
    pub timeout: Duration,
    /// `on_error=deny|allow`.
    pub on_error: OnError,
    /// `debug`: log every request and answer.
    pub debug: bool,
}

impl Default for CommonOptions {
    fn default() -> Self {
        CommonOptions {
            socket: PathBuf::from(DEFAULT_SOCKET),
            timeout: DEFAULT_TIMEOUT,
            on_error: OnError::Deny,
            debug: false,
        }
    }
}

/// Parses a module's option words, in order: `socket=`, `timeout=`, `on_error=`, `debug`, and
/// the module's own `extra_keys` (each `key=value`), whose values go to `extra`, which says why
/// a value does not fit. Every word must be a known option, and each key may appear once;
/// `known` lists the module's options for the error about an unknown word.
pub fn parse_options<'a, I>(
    args: I,
    known: &'static str,
    extra_keys: &[&'static str],
    mut extra: impl FnMut(&'static str, &'a str) -> Result<(), String>,
) -> Result<CommonOptions, OptionError>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut o = CommonOptions::default();
    let mut seen: Vec<&'static str> = Vec::new();
    for arg in args {
        let (key, value) = match arg.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (arg, None),
        };
        let unknown = || OptionError::Unknown {
            option: arg.to_string(),
            known,
        };
        let key: &'static str = match (key, value) {
            ("debug", None) => "debug",
            ("socket", Some(_)) => "socket",
            ("timeout", Some(_)) => "timeout",
            ("on_error", Some(_)) => "on_error",
            (k, Some(_)) => extra_keys
                .iter()
                .copied()
                .find(|&e| e == k)
                .ok_or_else(unknown)?,
            (_, None) => return Err(unknown()),
        };
        if seen.contains(&key) {
            return Err(OptionError::Duplicate(key));
        }
        seen.push(key);
        let v = value.unwrap_or_default();
        let bad = |why: String| OptionError::BadValue {
            key,
            value: v.to_string(),
            why,
        };
        match key {
            "debug" => o.debug = true,
            "socket" => o.socket = parse_socket(v).map_err(bad)?,
            "timeout" => o.timeout = parse_timeout(v).map_err(bad)?,
            "on_error" => o.on_error = parse_on_error(v).map_err(bad)?,
            _ => extra(key, v).map_err(bad)?,
        }
    }
    Ok(o)
}

/// Raw C option words as text: each must be UTF-8.
pub fn utf8_words<'a>(args: &[&'a [u8]]) -> Result<Vec<&'a str>, OptionError> {
    args.iter()
        .map(|a| {
            std::str::from_utf8(a)
                .map_err(|_| OptionError::NotUtf8(String::from_utf8_lossy(a).into_owned()))
        })
        .collect()
}

/// What to do when dmsd cannot be asked (not running, timeout, an internal error) or joining
/// the domain fails. Policy answers (`PermissionDenied`) are never subject to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Refuse (fail closed). The default.
    Deny,
    /// Let it through outside any domain, with a log line.
    Allow,
}

/// `on_error=deny|allow`.
pub fn parse_on_error(v: &str) -> Result<OnError, String> {
    match v {
        "deny" => Ok(OnError::Deny),
        "allow" => Ok(OnError::Allow),
        _ => Err("expected deny or allow".into()),
    }
}

/// `socket=PATH`: an absolute path that fits a `sockaddr_un`.
pub fn parse_socket(v: &str) -> Result<PathBuf, String> {
    if !v.starts_with('/') {
        return Err("expected an absolute path".into());
    }
    // sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
    if v.len() > 107 {
        return Err(format!(
            "a Unix socket path has at most 107 bytes, this one has {}",
            v.len()
        ));
    }
    Ok(PathBuf::from(v))
}

/// `timeout=SECONDS`: a plain decimal number within [`TIMEOUT_RANGE`].
pub fn parse_timeout(v: &str) -> Result<Duration, String> {
    let (lo, hi) = TIMEOUT_RANGE;
    let why = || format!("expected seconds from {lo} to {hi}, e.g. 5 or 0.5");
    // Plain decimal numbers only: no "inf", "NaN", exponents or units.
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(why());
    }
    let secs: f64 = v.parse().map_err(|_| why())?;
    if !(lo..=hi).contains(&secs) {
        return Err(why());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_arguments_are_read_as_given() {
        let argv = [c"debug".as_ptr(), c"join=cgroup".as_ptr()];
        // SAFETY: two valid NUL-terminated strings.
        let args = unsafe { c_arguments(2, argv.as_ptr()) }.unwrap();
        assert_eq!(args, vec![&b"debug"[..], &b"join=cgroup"[..]]);
        // SAFETY: argc 0: argv is not read.
        assert_eq!(unsafe { c_arguments(0, std::ptr::null()) }, Some(vec![]));
        // SAFETY: argc 1 with a NULL argv is detected before reading.
        assert_eq!(unsafe { c_arguments(1, std::ptr::null()) }, None);
        let with_null = [c"debug".as_ptr(), std::ptr::null()];
        // SAFETY: two pointers, one NULL (refused).
        assert_eq!(unsafe { c_arguments(2, with_null.as_ptr()) }, None);
    }

    #[test]
    fn values() {
        assert_eq!(parse_on_error("deny"), Ok(OnError::Deny));
        assert_eq!(parse_on_error("allow"), Ok(OnError::Allow));
        assert_eq!(
            parse_on_error("Allow").unwrap_err(),
            "expected deny or allow"
        );
        assert_eq!(
            parse_socket("/run/x.sock").unwrap(),
            PathBuf::from("/run/x.sock")
        );
        assert!(parse_socket("x.sock").is_err());
        assert!(parse_socket(&format!("/{}", "a".repeat(107))).is_err());
        assert_eq!(parse_timeout("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_timeout("300").unwrap(), Duration::from_secs(300));
        for bad in ["", "0", "301", "1e2", "inf", "-1", "5s", "."] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }
}
