//! Messages to syslog (facility authpriv, ident `pam_dms`).

use std::ffi::CString;

pub use libc::{LOG_DEBUG, LOG_ERR, LOG_INFO, LOG_NOTICE, LOG_WARNING};

/// Logs one message. The connection to `/dev/log` is closed again right away, so no fd stays
/// open in the host process (as OpenSSH does for its own messages).
pub fn log(priority: libc::c_int, msg: &str) {
    let text = CString::new(one_line(msg)).unwrap_or_default();
    // SAFETY: the ident is a static NUL-terminated string (openlog keeps the pointer until
    // closelog); the format is "%s" with one NUL-terminated argument that outlives the call.
    unsafe {
        libc::openlog(c"pam_dms".as_ptr(), libc::LOG_PID, libc::LOG_AUTHPRIV);
        libc::syslog(libc::LOG_AUTHPRIV | priority, c"%s".as_ptr(), text.as_ptr());
        libc::closelog();
    }
}

/// The message with control characters escaped: user names and paths come from users, and a
/// newline must not forge a second log line (a NUL would cut the message).
fn one_line(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for c in msg.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(one_line("a\nb\r\0c\u{1b}"), "a\\nb\\r\\u{0}c\\u{1b}");
        assert_eq!(one_line("ünïcode \"q\" ok"), "ünïcode \"q\" ok");
    }
}
