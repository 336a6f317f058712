//! Grid identities: safe names, certificate DNs and VOMS FQANs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Longest accepted FQAN, in bytes.
pub const MAX_FQAN_LEN: usize = 255;

/// Longest accepted DN, in bytes.
pub const MAX_DN_LEN: usize = 1024;

/// Longest value quoted verbatim in an error message; longer ones are cut so
/// that hostile input cannot blow up logs.
const MAX_QUOTED: usize = 80;

/// Debug-escapes `value` for an error message, cutting it when very long.
pub fn quote(value: &str) -> String {
    if value.len() <= MAX_QUOTED {
        return format!("{value:?}");
    }
    let mut end = MAX_QUOTED;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}...", &value[..end])
}

/// Why a name was rejected by [`validate_name`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// The name is the empty string.
    Empty {
        /// What the name is for, e.g. "domain name".
        field: String,
    },
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    TooLong {
        /// What the name is for.
        field: String,
        /// The rejected name.
        value: String,
        /// Its length in bytes.
        len: usize,
        /// The maximum length in bytes.
        max: usize,
    },
    /// The name contains a character outside `[A-Za-z0-9._-]`.
    BadChar {
        /// What the name is for.
        field: String,
        /// The rejected name.
        value: String,
        /// The first offending character.
        ch: char,
    },
    /// The name is `.` or `..`.
    DotName {
        /// What the name is for.
        field: String,
        /// The rejected name.
        value: String,
    },
    /// The name starts with `.` or `-` (hidden files, command-line options).
    Leading {
        /// What the name is for.
        field: String,
        /// The rejected name.
        value: String,
        /// The offending first character.
        ch: char,
    },
}

impl NameError {
    /// What is wrong, without the field and value (for callers that show
    /// those themselves).
    pub fn reason(&self) -> String {
        match self {
            NameError::Empty { .. } => "must not be empty".into(),
            NameError::TooLong { len, max, .. } => {
                format!("too long ({len} bytes, at most {max})")
            }
            NameError::BadChar { ch, .. } => format!(
                "character {ch:?} is not allowed; only letters, digits, '.', '_' and '-' are allowed"
            ),
            NameError::DotName { .. } => "must not be '.' or '..'".into(),
            NameError::Leading { ch, .. } => format!("must not start with {ch:?}"),
        }
    }

    /// The rejected value.
    pub fn value(&self) -> &str {
        match self {
            NameError::Empty { .. } => "",
            NameError::TooLong { value, .. }
            | NameError::BadChar { value, .. }
            | NameError::DotName { value, .. }
            | NameError::Leading { value, .. } => value,
        }
    }

    /// What the name is for.
    pub fn field(&self) -> &str {
        match self {
            NameError::Empty { field }
            | NameError::TooLong { field, .. }
            | NameError::BadChar { field, .. }
            | NameError::DotName { field, .. }
            | NameError::Leading { field, .. } => field,
        }
    }
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.field(),
            quote(self.value()),
            self.reason()
        )
    }
}

impl std::error::Error for NameError {}

/// Checks a name that may become a path component or an identifier (domain,
/// VO, account, group and role names).
///
/// Accepted: 1 to 64 bytes of ASCII letters, digits, `.`, `_` and `-`, not
/// starting with `.` or `-`. `field` only appears in the error message.
pub fn validate_name(field: &str, value: &str) -> Result<(), NameError> {
    let field = field.to_owned();
    if value.is_empty() {
        return Err(NameError::Empty { field });
    }
    if value.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            field,
            value: value.to_owned(),
            len: value.len(),
            max: MAX_NAME_LEN,
        });
    }
    if let Some(ch) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadChar {
            field,
            value: value.to_owned(),
            ch,
        });
    }
    if value == "." || value == ".." {
        return Err(NameError::DotName {
            field,
            value: value.to_owned(),
        });
    }
    if let Some(ch @ ('.' | '-')) = value.chars().next() {
        return Err(NameError::Leading {
            field,
            value: value.to_owned(),
            ch,
        });
    }
    Ok(())
}

/// Why a DN is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid DN {}: {reason}", quote(value))]
pub struct DnError {
    /// The DN as given (quoted safely in the message).
    pub value: String,
    /// What is wrong.
    pub reason: String,
}

/// Checks a certificate subject in the OpenSSL "slash" form grid-mapfiles and policy files use,
/// such as `/DC=org/DC=example/CN=Jane Doe`: it starts with `/`, every component is
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

/// A VOMS Fully Qualified Attribute Name, e.g. `/atlas/higgs/Role=production`.
///
/// `Role=NULL` and `Capability=NULL` parse as `None` and are omitted when
/// displayed, so [`Display`](fmt::Display) gives the canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fqan {
    /// The VO, i.e. the first path component.
    pub vo: String,
    /// Sub-groups below the VO, outermost first.
    pub groups: Vec<String>,
    /// The role, if any (not `NULL`).
    pub role: Option<String>,
    /// The capability, if any (not `NULL`).
    pub capability: Option<String>,
}

/// Why a string is not a valid [`Fqan`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid FQAN {}: {reason}", quote(value))]
pub struct FqanError {
    /// The rejected input.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Fqan {
    /// The group path: the VO followed by the sub-groups.
    pub fn group_path(&self) -> Vec<&str> {
        std::iter::once(self.vo.as_str())
            .chain(self.groups.iter().map(String::as_str))
            .collect()
    }

    /// The group path as `/vo/g1/g2`, without role or capability.
    pub fn group(&self) -> String {
        let mut out = String::new();
        for part in self.group_path() {
            out.push('/');
            out.push_str(part);
        }
        out
    }
}

impl FromStr for Fqan {
    type Err = FqanError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| FqanError {
            value: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(fail("must not be empty".into()));
        }
        if s.len() > MAX_FQAN_LEN {
            return Err(fail(format!(
                "too long ({} bytes, at most {MAX_FQAN_LEN})",
                s.len()
            )));
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Err(fail(format!("control character {c:?} is not allowed")));
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(fail("must start with '/'".into()));
        };
        let mut vo: Option<String> = None;
        let mut groups = Vec::new();
        let mut role: Option<Option<String>> = None;
        let mut capability: Option<Option<String>> = None;
        for part in rest.split('/') {
            if part.is_empty() {
                return Err(fail("empty component (\"//\" or a trailing '/')".into()));
            }
            if capability.is_some() {
                return Err(fail(format!(
                    "{} after Capability: Capability must be the last component",
                    quote(part)
                )));
            }
            if let Some(value) = part.strip_prefix("Role=") {
                if vo.is_none() {
                    return Err(fail(
                        "the first component must be the VO, not a Role".into(),
                    ));
                }
                if role.is_some() {
                    return Err(fail("more than one Role".into()));
                }
                role = Some(attribute("role", value).map_err(fail)?);
            } else if let Some(value) = part.strip_prefix("Capability=") {
                if vo.is_none() {
                    return Err(fail(
                        "the first component must be the VO, not a Capability".into(),
                    ));
                }
                capability = Some(attribute("capability", value).map_err(fail)?);
            } else if role.is_some() {
                return Err(fail(format!(
                    "group {} after Role: Role must come after all groups",
                    quote(part)
                )));
            } else if vo.is_none() {
                validate_name("VO name", part).map_err(|e| fail(e.to_string()))?;
                vo = Some(part.to_owned());
            } else {
                validate_name("group name", part).map_err(|e| fail(e.to_string()))?;
                groups.push(part.to_owned());
            }
        }
        let Some(vo) = vo else {
            return Err(fail("missing the VO component".into()));
        };
        Ok(Fqan {
            vo,
            groups,
            role: role.flatten(),
            capability: capability.flatten(),
        })
    }
}

/// Parses the value of `Role=` or `Capability=`; `NULL` means absent.
fn attribute(what: &str, value: &str) -> Result<Option<String>, String> {
    if value == "NULL" {
        return Ok(None);
    }
    validate_name(&format!("{what} name"), value).map_err(|e| e.to_string())?;
    Ok(Some(value.to_owned()))
}

impl fmt::Display for Fqan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.group())?;
        if let Some(role) = &self.role {
            write!(f, "/Role={role}")?;
        }
        if let Some(cap) = &self.capability {
            write!(f, "/Capability={cap}")?;
        }
        Ok(())
    }
}

impl Serialize for Fqan {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fqan {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn name_err(v: &str) -> String {
        validate_name("domain name", v).unwrap_err().to_string()
    }

    #[test]
    fn good_names() {
        for n in ["a", "atlas", "A.b_c-d", "x1", "0", "a..b", &"x".repeat(64)] {
            validate_name("name", n).unwrap();
        }
    }

    #[test]
    fn bad_names() {
        assert_eq!(name_err(""), "domain name \"\": must not be empty");
        assert_eq!(
            name_err("a/b"),
            "domain name \"a/b\": character '/' is not allowed; only letters, digits, '.', '_' and '-' are allowed"
        );
        assert_eq!(
            name_err("a\0b"),
            "domain name \"a\\0b\": character '\\0' is not allowed; only letters, digits, '.', '_' and '-' are allowed"
        );
        assert!(name_err("a\nb").contains(r"'\n'"), "{}", name_err("a\nb"));
        assert!(name_err("a\nb").starts_with(r#"domain name "a\nb""#));
        assert_eq!(name_err("."), "domain name \".\": must not be '.' or '..'");
        assert_eq!(
            name_err(".."),
            "domain name \"..\": must not be '.' or '..'"
        );
        assert_eq!(
            name_err(".x"),
            "domain name \".x\": must not start with '.'"
        );
        assert_eq!(
            name_err("-x"),
            "domain name \"-x\": must not start with '-'"
        );
        let long = "x".repeat(65);
        assert_eq!(
            name_err(&long),
            format!("domain name \"{long}\": too long (65 bytes, at most 64)")
        );
        assert!(name_err("é").contains("'é'"));
        assert!(name_err("a b").contains("' '"));
        assert!(matches!(
            validate_name("f", "/"),
            Err(NameError::BadChar { ch: '/', .. })
        ));
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = "y".repeat(10_000);
        let msg = name_err(&long);
        assert!(msg.len() < 200, "{msg}");
        assert!(msg.contains("10000 bytes"));
    }

    #[test]
    fn fqan_parse_and_display() {
        let f: Fqan = "/atlas/higgs/susy/Role=production".parse().unwrap();
        assert_eq!(f.vo, "atlas");
        assert_eq!(f.groups, ["higgs", "susy"]);
        assert_eq!(f.role.as_deref(), Some("production"));
        assert_eq!(f.capability, None);
        assert_eq!(f.group_path(), ["atlas", "higgs", "susy"]);
        assert_eq!(f.group(), "/atlas/higgs/susy");
        assert_eq!(f.to_string(), "/atlas/higgs/susy/Role=production");

        let f: Fqan = "/cms/Role=NULL/Capability=NULL".parse().unwrap();
        assert_eq!(f.role, None);
        assert_eq!(f.capability, None);
        assert_eq!(f.to_string(), "/cms");

        let f: Fqan = "/cms/Capability=x".parse().unwrap();
        assert_eq!(f.capability.as_deref(), Some("x"));
        assert_eq!(f.to_string(), "/cms/Capability=x");
        let f: Fqan = "/cms/Role=r/Capability=c".parse().unwrap();
        assert_eq!(f.to_string(), "/cms/Role=r/Capability=c");
        assert_eq!(f.to_string().parse::<Fqan>().unwrap(), f);
    }

    #[test]
    fn fqan_bad() {
        let cases: &[(&str, &str)] = &[
            ("", "must not be empty"),
            ("/", "empty component"),
            ("atlas", "must start with '/'"),
            ("//atlas", "empty component"),
            ("/atlas//higgs", "empty component"),
            ("/atlas/", "empty component"),
            ("/..", "must not be '.' or '..'"),
            ("/atlas/..", "must not be '.' or '..'"),
            ("/atlas/a\0b", "control character '\\0'"),
            ("/atlas\n", "control character '\\n'"),
            ("/atlas/Role=r/higgs", "Role must come after all groups"),
            ("/atlas/Role=a/Role=b", "more than one Role"),
            ("/atlas/Capability=c/Role=r", "Capability must be the last"),
            (
                "/atlas/Capability=c/Capability=d",
                "Capability must be the last",
            ),
            ("/Role=r", "first component must be the VO"),
            ("/atlas/Role=", "must not be empty"),
            ("/atlas/role=x", "character '='"),
            ("/atl as", "character ' '"),
        ];
        for (input, want) in cases {
            let err = input.parse::<Fqan>().unwrap_err();
            assert_eq!(err.value, *input);
            let msg = err.to_string();
            assert!(msg.contains(want), "{input:?}: {msg}");
            assert!(msg.starts_with("invalid FQAN "), "{msg}");
        }
        let long = format!("/{}", "a".repeat(300));
        assert!(long
            .parse::<Fqan>()
            .unwrap_err()
            .to_string()
            .contains("too long (301 bytes, at most 255)"));
        let long_group = format!("/atlas/{}", "g".repeat(65));
        assert!(long_group
            .parse::<Fqan>()
            .unwrap_err()
            .to_string()
            .contains("too long (65 bytes, at most 64)"));
    }

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
    fn refuses_bad_dns() {
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

    #[test]
    fn fqan_serde_as_string() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct W {
            f: Fqan,
        }
        let w = W {
            f: "/atlas/Role=prod".parse().unwrap(),
        };
        let text = toml::to_string(&w).unwrap();
        assert_eq!(text.trim(), "f = \"/atlas/Role=prod\"");
        assert_eq!(toml::from_str::<W>(&text).unwrap(), w);
        assert!(toml::from_str::<W>("f = \"nope\"").is_err());
    }
}
