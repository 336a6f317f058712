//! Errors of policy loading and resolution.

use std::fmt;
use std::path::PathBuf;

use crate::identity::quote;

/// One problem in a policy file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file, as given to the loader.
    pub file: PathBuf,
    /// 1-based line; 0 when the problem has no position (unreadable file).
    pub line: usize,
    /// 1-based column, counted in characters; 0 when `line` is 0.
    pub column: usize,
    /// Dotted path of the offending key, e.g. `vo.atlas.role[0].memory.limit`;
    /// empty when not known (TOML syntax errors).
    pub field: String,
    /// The offending value as written in the file; may be empty.
    pub value: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file.display())?;
        if self.line > 0 {
            write!(f, "{}:{}:", self.line, self.column)?;
        }
        match (self.field.is_empty(), self.value.is_empty()) {
            (false, false) => write!(f, " {} = {}:", self.field, self.value)?,
            (false, true) => write!(f, " {}:", self.field)?,
            (true, false) => write!(f, " {}:", self.value)?,
            (true, true) => {}
        }
        write!(f, " {}", self.message)
    }
}

impl std::error::Error for PolicyError {}

/// Every problem found while loading policies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// Why [`PolicySet::resolve`](crate::PolicySet::resolve) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No policy file defines the VO.
    #[error("unknown VO {} ({})", quote(vo), known_list(known))]
    UnknownVo {
        /// The requested VO.
        vo: String,
        /// The VOs the policies define, sorted.
        known: Vec<String>,
    },
    /// The FQAN belongs to a different VO than the one asked for.
    #[error("FQAN {} does not belong to VO {}", quote(fqan), quote(vo))]
    FqanOfOtherVo {
        /// The requested VO.
        vo: String,
        /// The FQAN, canonical form.
        fqan: String,
    },
    /// Several rules matched and together give an inconsistent result that
    /// no single rule shows (load-time checks catch the rest).
    #[error(
        "VO {}, FQAN {}: the matching rules conflict: {message}",
        quote(vo),
        quote(fqan)
    )]
    Conflict {
        /// The VO.
        vo: String,
        /// The FQAN, canonical form.
        fqan: String,
        /// What conflicts.
        message: String,
    },
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "policies define no VOs".into()
    } else {
        format!("policies define: {}", known.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(line: usize, field: &str, value: &str) -> PolicyError {
        PolicyError {
            file: "p.toml".into(),
            line,
            column: if line > 0 { 7 } else { 0 },
            field: field.into(),
            value: value.into(),
            message: "bad".into(),
        }
    }

    #[test]
    fn display() {
        assert_eq!(
            e(3, "a.b", "\"x\"").to_string(),
            "p.toml:3:7: a.b = \"x\": bad"
        );
        assert_eq!(e(3, "a.b", "").to_string(), "p.toml:3:7: a.b: bad");
        assert_eq!(e(3, "", "").to_string(), "p.toml:3:7: bad");
        assert_eq!(e(0, "", "").to_string(), "p.toml: bad");
        let all = PolicyErrors(vec![e(1, "", ""), e(2, "", "")]);
        assert_eq!(all.to_string(), "p.toml:1:7: bad\np.toml:2:7: bad");
    }

    #[test]
    fn resolve_messages() {
        let err = ResolveError::UnknownVo {
            vo: "x".into(),
            known: vec!["atlas".into(), "cms".into()],
        };
        assert_eq!(
            err.to_string(),
            "unknown VO \"x\" (policies define: atlas, cms)"
        );
        let err = ResolveError::UnknownVo {
            vo: "x".into(),
            known: vec![],
        };
        assert_eq!(err.to_string(), "unknown VO \"x\" (policies define no VOs)");
    }
}
