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
