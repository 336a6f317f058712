//! Certificate subject names in the OpenSSL "slash" form grid-mapfiles use.

use dms_policies::identity::quote;

/// Longest accepted DN, in bytes.
pub const MAX_DN_LEN: usize = 1024;

/// Why a DN is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid DN {}: {reason}", quote(value))]
pub struct DnError {
    /// The DN as given (quoted safely in the message).
    pub value: String,
    /// What is wrong.
    pub reason: String,
}

/// Checks a DN such as `/DC=org/DC=example/CN=Jane Doe`: it starts with `/`, every component is
/// `KEY=value`, and it holds no quote, control character (newline, NUL, ...) or backslash that
/// would change its meaning in a mapfile or a log line.
pub fn validate_dn(dn: &str) -> Result<(), DnError> {
    let fail = |reason: String| {
        Err(DnError {
            value: dn.to_owned(),
            reason,
        })
    };
    if dn.is_empty() {
        return fail("must not be empty".into());
    }
    if dn.len() > MAX_DN_LEN {
        return fail(format!(
            "too long ({} bytes, at most {MAX_DN_LEN})",
            dn.len()
        ));
    }
    if let Some(c) = dn.chars().find(|c| c.is_control()) {
        return fail(format!("control character {c:?} is not allowed"));
    }
    if let Some(c) = dn.chars().find(|c| matches!(c, '"' | '\\')) {
        return fail(format!("character {c:?} is not allowed"));
    }
    let Some(rest) = dn.strip_prefix('/') else {
        return fail("must start with '/'".into());
    };
    // A component may itself hold '/' (e.g. `CN=host/name`), so only the first one must
    // look like KEY=value; later pieces without '=' belong to the previous value.
    let first = rest.split('/').next().unwrap_or("");
    match first.split_once('=') {
        Some((k, _)) if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric()) => Ok(()),
        _ => fail(format!(
            "the first component {} is not KEY=value",
            quote(first)
        )),
    }
}

/// True when `s` looks like a DN rather than an FQAN: its first component holds `=`.
pub fn looks_like_dn(s: &str) -> bool {
    s.strip_prefix('/')
        .and_then(|r| r.split('/').next())
        .is_some_and(|c| c.contains('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_grid_dns() {
        for dn in [
            "/DC=ch/DC=cern/OU=Organic Units/OU=Users/CN=jdoe/CN=123456/CN=John Doe",
            "/C=DE/O=GermanGrid/OU=KIT/CN=host/node1.example.org",
            "/O=Grid/CN=Jane O'Neil",
        ] {
            validate_dn(dn).unwrap();
            assert!(looks_like_dn(dn));
        }
        assert!(!looks_like_dn("/atlas/Role=pilot"));
    }

    #[test]
    fn refuses_quotes_newlines_nul() {
        let cases = [
            ("", "must not be empty"),
            ("CN=x", "must start with '/'"),
            ("/CN=a\"b", "'\"'"),
            ("/CN=a\nb", "control character '\\n'"),
            ("/CN=a\0b", "control character '\\0'"),
            ("/CN=a\\b", "'\\\\'"),
            ("/atlas/Role=x", "not KEY=value"),
        ];
        for (dn, want) in cases {
            let e = validate_dn(dn).unwrap_err().to_string();
            assert!(e.contains(want), "{dn:?}: {e}");
            assert!(!e.contains('\n') && !e.contains('\0'), "{e:?}");
        }
        let long = format!("/CN={}", "x".repeat(MAX_DN_LEN));
        assert!(validate_dn(&long)
            .unwrap_err()
            .to_string()
            .contains("too long"));
    }
}
