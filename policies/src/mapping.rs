//! Identity mapping rules written in policy files: `map` and `group_map` of a `[vo.NAME]`
//! table, the grid-mapfile and group-mapfile rules in policy syntax.
//!
//! This crate only parses and validates them ([`PolicySet::mappings`] and
//! [`PolicySet::group_mappings`] give them in the order written); dmsd matches them, after the
//! grid-mapfile's, and checks that the pools they name exist.
//!
//! [`PolicySet::mappings`]: crate::PolicySet::mappings
//! [`PolicySet::group_mappings`]: crate::PolicySet::group_mappings

use std::fmt;
use std::path::PathBuf;

use crate::error::PolicyError;
use crate::identity::Fqan;

/// What a mapping rule matches: the key of a grid-mapfile line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapPattern {
    /// A certificate subject (`dn = "/DC=org/CN=Jane Doe"`), compared exactly.
    Dn(String),
    /// An FQAN (`fqan = "/atlas/Role=pilot"`), compared in canonical form (`Role=NULL` and
    /// `Capability=NULL` dropped).
    Fqan(Fqan),
    /// Every FQAN whose group path starts with these components, whatever its role
    /// (`fqan = "/atlas/*"`).
    FqanPrefix(Vec<String>),
}

impl MapPattern {
    /// True when every identity this pattern matches is also matched by `earlier`, so that a
    /// rule with this pattern written after one with `earlier` never applies.
    pub fn shadowed_by(&self, earlier: &MapPattern) -> bool {
        match (earlier, self) {
            (MapPattern::Dn(a), MapPattern::Dn(b)) => a == b,
            (MapPattern::Fqan(a), MapPattern::Fqan(b)) => a == b,
            (MapPattern::FqanPrefix(p), MapPattern::Fqan(f)) => {
                let path = f.group_path();
                path.len() >= p.len() && path.iter().zip(p).all(|(a, b)| a == b)
            }
            (MapPattern::FqanPrefix(p), MapPattern::FqanPrefix(q)) => q.starts_with(p),
            _ => false,
        }
    }
}

impl fmt::Display for MapPattern {
    /// As it is written in a policy file or a mapfile: the DN, the canonical FQAN, or
    /// `/vo/group/*`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapPattern::Dn(dn) => f.write_str(dn),
            MapPattern::Fqan(fqan) => write!(f, "{fqan}"),
            MapPattern::FqanPrefix(path) => {
                for part in path {
                    write!(f, "/{part}")?;
                }
                f.write_str("/*")
            }
        }
    }
}

/// Where a `map` rule sends an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapTarget {
    /// A static local account (`account = "jdoe"`).
    Account(String),
    /// The next free account of this pool (`pool = "atlas"`, the grid-mapfile's `.atlas`).
    Pool(String),
}

impl fmt::Display for MapTarget {
    /// In grid-mapfile syntax: `jdoe` or `.atlas`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapTarget::Account(a) => f.write_str(a),
            MapTarget::Pool(p) => write!(f, ".{p}"),
        }
    }
}

/// Where something was written in a policy file, for messages about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file, as given to the loader.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// Dotted path of the key, e.g. `vo.atlas.map[0]` or `vo.atlas.map[0].pool`.
    pub field: String,
    /// The value as written (shortened to its first line).
    pub value: String,
}

impl Origin {
    /// A [`PolicyError`] at this place, naming its field and value.
    pub fn error(&self, message: impl Into<String>) -> PolicyError {
        PolicyError {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            field: self.field.clone(),
            value: self.value.clone(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Origin {
    /// `file:line:column: field`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.field
        )
    }
}

/// One entry of a VO's `map = [ ... ]`: a grid-mapfile line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRule {
    /// The VO whose table holds the rule (an FQAN pattern always belongs to it).
    pub vo: String,
    /// What the rule matches.
    pub pattern: MapPattern,
    /// Where it maps to.
    pub target: MapTarget,
    /// The entry (`vo.atlas.map[0]`).
    pub origin: Origin,
    /// Its `pool` or `account` key and value, for errors about the target.
    pub target_origin: Origin,
}

/// One entry of a VO's `group_map = [ ... ]`: a group-mapfile line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMapRule {
    /// The VO whose table holds the rule.
    pub vo: String,
    /// The FQAN pattern (never a DN).
    pub pattern: MapPattern,
    /// The local group.
    pub group: String,
    /// The entry (`vo.atlas.group_map[0]`).
    pub origin: Origin,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fqan(s: &str) -> MapPattern {
        MapPattern::Fqan(s.parse().unwrap())
    }

    fn prefix(path: &[&str]) -> MapPattern {
        MapPattern::FqanPrefix(path.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn display() {
        assert_eq!(prefix(&["atlas", "higgs"]).to_string(), "/atlas/higgs/*");
        assert_eq!(fqan("/atlas/Role=NULL").to_string(), "/atlas");
        assert_eq!(MapPattern::Dn("/CN=x".into()).to_string(), "/CN=x");
        assert_eq!(MapTarget::Pool("atlas".into()).to_string(), ".atlas");
        assert_eq!(MapTarget::Account("jdoe".into()).to_string(), "jdoe");
    }

    #[test]
    fn shadowing() {
        let all = prefix(&["atlas"]);
        assert!(fqan("/atlas/Role=pilot").shadowed_by(&all));
        assert!(fqan("/atlas/higgs").shadowed_by(&all));
        assert!(prefix(&["atlas", "higgs"]).shadowed_by(&all));
        assert!(all.shadowed_by(&all));
        assert!(!all.shadowed_by(&prefix(&["atlas", "higgs"])));
        assert!(!fqan("/atlas/higgs").shadowed_by(&prefix(&["atlas", "hig"])));
        assert!(!all.shadowed_by(&fqan("/atlas")));
        assert!(fqan("/atlas/Role=NULL").shadowed_by(&fqan("/atlas")));
        assert!(!fqan("/atlas/Role=x").shadowed_by(&fqan("/atlas")));
        let dn = MapPattern::Dn("/CN=x".into());
        assert!(dn.shadowed_by(&dn));
        assert!(!dn.shadowed_by(&all));
        assert!(!all.shadowed_by(&dn));
    }
}
