//! Module options from the pam.d line (`key=value` words after the module path).

use std::path::PathBuf;
use std::time::Duration;

use dms_session_client::options::{parse_options, utf8_words};
pub use dms_session_client::options::{
    CommonOptions, OnError, DEFAULT_SOCKET, DEFAULT_TIMEOUT, TIMEOUT_RANGE,
};

/// What an opened session enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinMode {
    /// The domain's cgroups and namespaces (cgroups only when the caller is multi-threaded).
    All,
    /// Only the domain's cgroups (limits and accounting, host namespaces).
    Cgroup,
}

/// Parsed module options.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// dmsd's session socket (`socket=`).
    pub socket: PathBuf,
    /// One overall deadline per call to dmsd (`timeout=`).
    pub timeout: Duration,
    /// `on_error=deny|allow`.
    pub on_error: OnError,
    /// `join=all|cgroup`.
    pub join: JoinMode,
    /// `debug`: log every request and answer (never the proxy text).
    pub debug: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options::with(CommonOptions::default(), JoinMode::All)
    }
}

impl Options {
    fn with(c: CommonOptions, join: JoinMode) -> Options {
        Options {
            socket: c.socket,
            timeout: c.timeout,
            on_error: c.on_error,
            join,
            debug: c.debug,
        }
    }
}

pub use dms_session_client::options::OptionError;

/// The options this module knows, for the error about an unknown one.
const KNOWN: &str = "socket=PATH, timeout=SECONDS, on_error=deny|allow, join=all|cgroup, debug";

/// Parses the module arguments. Every word must be a known option; keys may appear once.
pub fn parse<'a, I>(args: I) -> Result<Options, OptionError>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut join = JoinMode::All;
    let common = parse_options(args, KNOWN, &["join"], |_, v| {
        join = match v {
            "all" => JoinMode::All,
            "cgroup" => JoinMode::Cgroup,
            _ => return Err("expected all or cgroup".into()),
        };
        Ok(())
    })?;
    Ok(Options::with(common, join))
}

/// Parses raw C arguments: each must be UTF-8.
pub fn parse_bytes(args: &[&[u8]]) -> Result<Options, OptionError> {
    parse(utf8_words(args)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let o = parse([]).unwrap();
        assert_eq!(o.socket, PathBuf::from("/run/dms/pam.sock"));
        assert_eq!(o.timeout, Duration::from_secs(5));
        assert_eq!(o.on_error, OnError::Deny);
        assert_eq!(o.join, JoinMode::All);
        assert!(!o.debug);
        assert_eq!(o, Options::default());
    }

    #[test]
    fn every_key() {
        let o = parse([
            "socket=/tmp/x/pam.sock",
            "timeout=0.5",
            "on_error=allow",
            "join=cgroup",
            "debug",
        ])
        .unwrap();
        assert_eq!(o.socket, PathBuf::from("/tmp/x/pam.sock"));
        assert_eq!(o.timeout, Duration::from_millis(500));
        assert_eq!(o.on_error, OnError::Allow);
        assert_eq!(o.join, JoinMode::Cgroup);
        assert!(o.debug);
        let o = parse(["on_error=deny", "join=all", "timeout=300"]).unwrap();
        assert_eq!(o.on_error, OnError::Deny);
        assert_eq!(o.join, JoinMode::All);
        assert_eq!(o.timeout, Duration::from_secs(300));
        assert_eq!(
            parse(["timeout=0.1"]).unwrap().timeout,
            Duration::from_millis(100)
        );
        assert_eq!(
            parse(["timeout=12"]).unwrap().timeout,
            Duration::from_secs(12)
        );
    }

    fn err(args: &[&str]) -> String {
        parse(args.iter().copied()).unwrap_err().to_string()
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        assert_eq!(
            err(&["timeout=0.05"]),
            "option timeout=\"0.05\": expected seconds from 0.1 to 300, e.g. 5 or 0.5"
        );
        for t in [
            "301", "0", "-1", "5s", "", "inf", "NaN", "1e2", "1.2.3", ".",
        ] {
            let e = err(&[&format!("timeout={t}")]);
            assert!(e.contains("expected seconds from 0.1 to 300"), "{t}: {e}");
        }
        assert_eq!(
            err(&["on_error=maybe"]),
            "option on_error=\"maybe\": expected deny or allow"
        );
        assert_eq!(
            err(&["join=ns"]),
            "option join=\"ns\": expected all or cgroup"
        );
        assert_eq!(
            err(&["socket=run/pam.sock"]),
            "option socket=\"run/pam.sock\": expected an absolute path"
        );
        assert_eq!(
            err(&["socket="]),
            "option socket=\"\": expected an absolute path"
        );
        let long = format!("socket=/{}", "a".repeat(107));
        assert!(err(&[&long]).contains("at most 107 bytes, this one has 108"));
        assert!(parse([format!("socket=/{}", "a".repeat(106)).as_str()]).is_ok());
    }

    #[test]
    fn unknown_malformed_and_repeated_options_are_refused() {
        let e = err(&["debug", "sokcet=/x"]);
        assert!(
            e.starts_with("unknown option \"sokcet=/x\"; known: socket=PATH"),
            "{e}"
        );
        assert!(err(&["debug=1"]).starts_with("unknown option \"debug=1\""));
        assert!(err(&["socket"]).starts_with("unknown option \"socket\""));
        assert!(err(&["on_error"]).starts_with("unknown option \"on_error\""));
        assert!(err(&[""]).starts_with("unknown option \"\""));
        assert_eq!(
            err(&["timeout=1", "timeout=2"]),
            "option timeout is given more than once"
        );
        assert_eq!(
            err(&["debug", "debug"]),
            "option debug is given more than once"
        );
        assert_eq!(
            parse_bytes(&[b"debug", b"join=\xff"])
                .unwrap_err()
                .to_string(),
            "option \"join=\u{fffd}\" is not valid UTF-8"
        );
        assert!(parse_bytes(&[b"debug", b"join=cgroup"]).unwrap().debug);
    }
}
