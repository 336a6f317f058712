//! Plugin options: the words after the plugin path in `plugstack.conf`.

use std::path::PathBuf;
use std::time::Duration;

use dms_session_client::options::{
    parse_on_error, parse_socket, parse_timeout, OnError, DEFAULT_SOCKET, DEFAULT_TIMEOUT,
};

/// Parsed plugin options.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// dmsd's session socket (`socket=`).
    pub socket: PathBuf,
    /// One overall deadline per call to dmsd (`timeout=`).
    pub timeout: Duration,
    /// `on_error=deny|allow`.
    pub on_error: OnError,
    /// `debug`: log every request and answer, and how the task joined.
    pub debug: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            socket: PathBuf::from(DEFAULT_SOCKET),
            timeout: DEFAULT_TIMEOUT,
            on_error: OnError::Deny,
            debug: false,
        }
    }
}

pub use dms_session_client::options::OptionError;

/// The options this module knows, for the error about an unknown one.
const KNOWN: &str = "socket=PATH, timeout=SECONDS, on_error=deny|allow, debug";

/// Parses the plugin arguments. Every word must be a known option; keys may appear once.
pub fn parse<'a, I>(args: I) -> Result<Options, OptionError>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut o = Options::default();
    let mut seen: Vec<&'static str> = Vec::new();
    for arg in args {
        let (key, value) = match arg.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (arg, None),
        };
        let key: &'static str = match (key, value) {
            ("debug", None) => "debug",
            ("socket", Some(_)) => "socket",
            ("timeout", Some(_)) => "timeout",
            ("on_error", Some(_)) => "on_error",
            _ => {
                return Err(OptionError::Unknown {
                    option: arg.to_string(),
                    known: KNOWN,
                })
            }
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
            "socket" => o.socket = parse_socket(v).map_err(bad)?,
            "timeout" => o.timeout = parse_timeout(v).map_err(bad)?,
            "on_error" => o.on_error = parse_on_error(v).map_err(bad)?,
            _ => o.debug = true,
        }
    }
    Ok(o)
}

/// Parses raw C arguments: each must be UTF-8.
pub fn parse_bytes(args: &[&[u8]]) -> Result<Options, OptionError> {
    let words = args
        .iter()
        .map(|a| {
            std::str::from_utf8(a)
                .map_err(|_| OptionError::NotUtf8(String::from_utf8_lossy(a).into_owned()))
        })
        .collect::<Result<Vec<&str>, _>>()?;
    parse(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(args: &[&str]) -> String {
        parse(args.iter().copied()).unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_every_key() {
        let o = parse([]).unwrap();
        assert_eq!(o, Options::default());
        assert_eq!(o.socket, PathBuf::from("/run/dms/pam.sock"));
        assert_eq!(o.timeout, Duration::from_secs(5));
        assert_eq!(o.on_error, OnError::Deny);
        assert!(!o.debug);
        let o = parse([
            "socket=/run/dms-test/pam.sock",
            "timeout=0.5",
            "on_error=allow",
            "debug",
        ])
        .unwrap();
        assert_eq!(o.socket, PathBuf::from("/run/dms-test/pam.sock"));
        assert_eq!(o.timeout, Duration::from_millis(500));
        assert_eq!(o.on_error, OnError::Allow);
        assert!(o.debug);
        assert_eq!(parse(["on_error=deny"]).unwrap().on_error, OnError::Deny);
    }

    #[test]
    fn bad_options_say_what_is_wrong() {
        assert_eq!(
            err(&["timeout=0"]),
            "option timeout=\"0\": expected seconds from 0.1 to 300, e.g. 5 or 0.5"
        );
        assert_eq!(
            err(&["on_error=ignore"]),
            "option on_error=\"ignore\": expected deny or allow"
        );
        assert_eq!(
            err(&["socket=pam.sock"]),
            "option socket=\"pam.sock\": expected an absolute path"
        );
        assert!(err(&["join=cgroup"]).starts_with("unknown option \"join=cgroup\"; known: "));
        assert!(err(&["debug=1"]).starts_with("unknown option \"debug=1\""));
        assert!(err(&["socket"]).starts_with("unknown option \"socket\""));
        assert_eq!(
            err(&["debug", "timeout=1", "timeout=2"]),
            "option timeout is given more than once"
        );
        assert_eq!(
            parse_bytes(&[b"debug", b"socket=/\xff"])
                .unwrap_err()
                .to_string(),
            "option \"socket=/\u{fffd}\" is not valid UTF-8"
        );
        assert!(parse_bytes(&[b"debug"]).unwrap().debug);
    }
}
