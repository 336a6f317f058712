//! Interface name validation.

use crate::NetError;

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const MAX_IFNAME_LEN: usize = 15;

/// Checks that `name` is a valid Linux interface name: 1 to 15 bytes, not `.` or `..`, and
/// without `/`, `:`, whitespace or NUL (the rules of the kernel's `dev_valid_name`).
///
/// The error names the rejected value: `interface name "a/b": character '/' is not allowed`.
pub fn validate_ifname(name: &str) -> Result<(), NetError> {
    let invalid = |reason: String| {
        Err(NetError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("must not be empty".into());
    }
    if name.len() > MAX_IFNAME_LEN {
        return invalid(format!(
            "is {} bytes long, at most {MAX_IFNAME_LEN} are allowed",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return invalid("\".\" and \"..\" are not allowed".into());
    }
    if let Some(c) = name
        .chars()
        .find(|&c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return invalid(format!("character {c:?} is not allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(name: &str) -> String {
        match validate_ifname(name) {
            Err(e) => e.to_string(),
            Ok(()) => panic!("{name:?} was accepted"),
        }
    }

    #[test]
    fn accepts_ordinary_names() {
        for name in [
            "eth0",
            "dmsh7",
            "a",
            "dms-br0",
            "x.y",
            "abcdefghijklmno",
            "vé",
        ] {
            assert!(validate_ifname(name).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn rejects_bad_names_with_the_value() {
        assert_eq!(reason(""), "interface name \"\": must not be empty");
        assert_eq!(
            reason("abcdefghijklmnop"),
            "interface name \"abcdefghijklmnop\": is 16 bytes long, at most 15 are allowed"
        );
        // 14 characters, but 16 bytes.
        assert!(reason("éééééééé").contains("16 bytes"));
        assert_eq!(
            reason("a/b"),
            "interface name \"a/b\": character '/' is not allowed"
        );
        assert_eq!(
            reason("a b"),
            "interface name \"a b\": character ' ' is not allowed"
        );
        assert!(reason("a\tb").contains("'\\t'"));
        assert!(reason("a\0b").contains("'\\0'"));
        assert!(reason("a:1").contains("':'"));
        assert!(reason(".").contains("not allowed"));
        assert!(reason("..").contains("not allowed"));
    }
}
