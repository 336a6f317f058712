//! Plugin options: the words after the plugin path in `plugstack.conf`.

pub use dms_session_client::options::OptionError;
use dms_session_client::options::{parse_options, utf8_words};

/// Parsed plugin options (`debug` also logs how the task joined).
pub type Options = dms_session_client::options::CommonOptions;

/// The options this module knows, for the error about an unknown one.
const KNOWN: &str = "socket=PATH, timeout=SECONDS, on_error=deny|allow, debug";

/// Parses the plugin arguments. Every word must be a known option; keys may appear once.
pub fn parse<'a, I>(args: I) -> Result<Options, OptionError>
where
    I: IntoIterator<Item = &'a str>,
{
    parse_options(args, KNOWN, &[], |_, _| Ok(()))
}

/// Parses raw C arguments: each must be UTF-8.
pub fn parse_bytes(args: &[&[u8]]) -> Result<Options, OptionError> {
    parse(utf8_words(args)?)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use dms_session_client::options::OnError;

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
