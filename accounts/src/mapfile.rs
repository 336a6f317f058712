//! grid-mapfile and group-mapfile parsing and matching.
//!
//! One mapping per line: a quoted key, then a target. The key is a certificate DN
//! (`"/DC=org/CN=Jane Doe"`) or a VOMS FQAN pattern (`"/atlas/Role=production"`, or
//! `"/atlas/*"` for every group and role below `/atlas`). In a grid-mapfile the target is a
//! local account (`jdoe`; in a comma-separated list the first is used) or a pool (`.atlas`: the
//! next free account of pool `atlas`); in a group-mapfile it is a local group. `#` starts a
//! comment line. First match wins: the primary FQAN is tried first, then the DN.
//!
//! dmsd also builds a [`MapFile`] and a [`GroupMapFile`] from the `map` and `group_map` rules of
//! the VO policy files ([`MapFile::from_rules`]), so those match exactly like mapfile lines.

use std::path::{Path, PathBuf};

use dms_policies::identity::quote;
use dms_policies::{validate_name, Fqan};

use crate::dn::{looks_like_dn, validate_dn};

/// Longest accepted mapfile (bytes); real ones hold thousands of lines, far below this.
const MAX_FILE: u64 = 64 << 20;

/// A mapfile line that does not parse, or an unreadable file.
#[derive(Debug, thiserror::Error)]
pub enum MapFileError {
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// What a mapping line matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// A certificate subject, compared exactly.
    Dn(String),
    /// An FQAN, compared in canonical form (`Role=NULL` and `Capability=NULL` dropped).
    Fqan(Fqan),
    /// Every FQAN whose group path starts with these components (written `"/atlas/*"`).
    FqanPrefix(Vec<String>),
}

impl Pattern {
    fn parse(key: &str) -> Result<Pattern, String> {
        if looks_like_dn(key) {
            validate_dn(key).map_err(|e| e.to_string())?;
            return Ok(Pattern::Dn(key.to_owned()));
        }
        if let Some(prefix) = key.strip_suffix("/*") {
            let f: Fqan = prefix
                .parse()
                .map_err(|e: dms_policies::FqanError| e.to_string())?;
            if f.role.is_some() || f.capability.is_some() {
                return Err(format!(
                    "{}: a wildcard pattern may only follow groups",
                    quote(key)
                ));
            }
            return Ok(Pattern::FqanPrefix(
                f.group_path().into_iter().map(str::to_owned).collect(),
            ));
        }
        key.parse::<Fqan>()
            .map(Pattern::Fqan)
            .map_err(|e| e.to_string())
    }

    fn matches_fqan(&self, f: &Fqan) -> bool {
        match self {
            Pattern::Dn(_) => false,
            Pattern::Fqan(p) => p == f,
            Pattern::FqanPrefix(prefix) => {
                let path = f.group_path();
                path.len() >= prefix.len() && path.iter().zip(prefix).all(|(a, b)| *a == b)
            }
        }
    }
}

/// Where a grid-mapfile line sends an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A static local account.
    Account(String),
    /// The next free account of this pool.
    Pool(String),
}

/// One parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line<T> {
    pattern: Pattern,
    target: T,
}

impl<T> Line<T> {
    fn all(rules: impl IntoIterator<Item = (Pattern, T)>) -> Vec<Line<T>> {
        rules
            .into_iter()
            .map(|(pattern, target)| Line { pattern, target })
            .collect()
    }
}

/// A parsed grid-mapfile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapFile {
    lines: Vec<Line<Target>>,
}

/// A parsed group-mapfile (FQAN → local group).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupMapFile {
    lines: Vec<Line<String>>,
}

/// Splits `"key" rest` into the key and the first target token.
fn split_line(text: &str) -> Result<(&str, &str), String> {
    let Some(rest) = text.strip_prefix('"') else {
        return Err("expected a quoted DN or FQAN at the start of the line".into());
    };
    let Some(end) = rest.find('"') else {
        return Err("the quoted key has no closing '\"'".into());
    };
    let key = &rest[..end];
    let after = rest[end + 1..].trim();
    if after.is_empty() {
        return Err(format!("{}: no account or group after the key", quote(key)));
    }
    let first = after
        .split(|c: char| c == ',' || c.is_whitespace())
        .next()
        .unwrap_or("");
    Ok((key, first))
}

fn read(path: &Path) -> Result<Option<String>, MapFileError> {
    use std::io::Read;
    let io = |source| MapFileError::Io {
        path: path.to_owned(),
        source,
    };
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mut text = String::new();
    f.take(MAX_FILE).read_to_string(&mut text).map_err(io)?;
    Ok(Some(text))
}

fn parse_lines<T>(
    path: &Path,
    text: &str,
    target: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<Line<T>>, MapFileError> {
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let fail = |reason: String| MapFileError::Line {
            path: path.to_owned(),
            line: i + 1,
            reason,
        };
        let (key, tgt) = split_line(t).map_err(fail)?;
        let pattern = Pattern::parse(key).map_err(fail)?;
        lines.push(Line {
            pattern,
            target: target(tgt).map_err(fail)?,
        });
    }
    Ok(lines)
}

impl MapFile {
    /// Parses grid-mapfile text; `path` names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<MapFile, MapFileError> {
        let lines = parse_lines(path, text, |t| {
            let (target, name) = match t.strip_prefix('.') {
                Some(pool) => (Target::Pool(pool.to_owned()), pool),
                None => (Target::Account(t.to_owned()), t),
            };
            validate_name("account", name).map_err(|e| e.to_string())?;
            Ok(target)
        })?;
        Ok(MapFile { lines })
    }

    /// Reads a grid-mapfile; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<MapFile, MapFileError> {
        match read(path)? {
            Some(text) => Self::parse(path, &text),
            None => Ok(MapFile::default()),
        }
    }

    /// A map of rules from elsewhere (the `map` rules of policy files), already validated, in
    /// the order they are tried; it matches exactly like a parsed grid-mapfile.
    pub fn from_rules(rules: impl IntoIterator<Item = (Pattern, Target)>) -> MapFile {
        MapFile {
            lines: Line::all(rules),
        }
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The target for an identity: the first line matching the primary FQAN, else the first
    /// line matching the DN.
    pub fn lookup(&self, dn: &str, primary: Option<&Fqan>) -> Option<&Target> {
        self.find(dn, primary).map(|(_, target)| target)
    }

    /// Like [`MapFile::lookup`], with the 0-based index of the mapping used (counting mappings
    /// only, not comments or blank lines), to say which rule applied.
    pub fn find(&self, dn: &str, primary: Option<&Fqan>) -> Option<(usize, &Target)> {
        let found = primary
            .and_then(|f| self.lines.iter().position(|l| l.pattern.matches_fqan(f)))
            .or_else(|| {
                self.lines
                    .iter()
                    .position(|l| matches!(&l.pattern, Pattern::Dn(d) if d == dn))
            })?;
        Some((found, &self.lines[found].target))
    }

    /// Every DN statically mapped to `account` (for the identity of a local login).
    pub fn dns_of<'a>(&'a self, account: &'a str) -> impl Iterator<Item = &'a str> {
        self.lines
            .iter()
            .filter_map(move |l| match (&l.pattern, &l.target) {
                (Pattern::Dn(dn), Target::Account(a)) if a == account => Some(dn.as_str()),
                _ => None,
            })
    }
}

impl GroupMapFile {
    /// Parses group-mapfile text.
    pub fn parse(path: &Path, text: &str) -> Result<GroupMapFile, MapFileError> {
        let lines = parse_lines(path, text, |t| {
            validate_name("group", t).map_err(|e| e.to_string())?;
            Ok(t.to_owned())
        })?;
        if let Some((i, _)) = lines
            .iter()
            .enumerate()
            .find(|(_, l)| matches!(l.pattern, Pattern::Dn(_)))
        {
            return Err(MapFileError::Line {
                path: path.to_owned(),
                line: i + 1,
                reason: "a group-mapfile maps FQANs, not DNs".into(),
            });
        }
        Ok(GroupMapFile { lines })
    }

    /// A group map of rules from elsewhere (the `group_map` rules of policy files), already
    /// validated (FQAN patterns only), in the order they are tried.
    pub fn from_rules(rules: impl IntoIterator<Item = (Pattern, String)>) -> GroupMapFile {
        GroupMapFile {
            lines: Line::all(rules),
        }
    }

    /// Reads a group-mapfile; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<GroupMapFile, MapFileError> {
        match read(path)? {
            Some(text) => Self::parse(path, &text),
            None => Ok(GroupMapFile::default()),
        }
    }

    /// Local groups for a list of FQANs: for each FQAN the first matching line, in FQAN order,
    /// without duplicates.
    pub fn groups(&self, fqans: &[Fqan]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for f in fqans {
            if let Some(l) = self.lines.iter().find(|l| l.pattern.matches_fqan(f)) {
                if !out.contains(&l.target) {
                    out.push(l.target.clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRID: &str = r#"
# static users
"/DC=org/DC=example/CN=Jane Doe" jdoe
"/DC=org/DC=example/CN=Multi" first,second
# pools by role, then by VO
"/atlas/Role=production" .atlasprd
"/atlas/*" .atlas
"/DC=org/DC=example/CN=Pooled" .dteam
"#;

    fn f(s: &str) -> Fqan {
        s.parse().unwrap()
    }

    #[test]
    fn fqan_first_then_dn() {
        let m = MapFile::parse(Path::new("gm"), GRID).unwrap();
        assert_eq!(m.len(), 5);
        let jane = "/DC=org/DC=example/CN=Jane Doe";
        assert_eq!(m.lookup(jane, None), Some(&Target::Account("jdoe".into())));
        // A primary FQAN that maps wins over the DN.
        assert_eq!(
            m.lookup(jane, Some(&f("/atlas/Role=production/Capability=NULL"))),
            Some(&Target::Pool("atlasprd".into()))
        );
        assert_eq!(
            m.lookup("/CN=other", Some(&f("/atlas/higgs"))),
            Some(&Target::Pool("atlas".into()))
        );
        // An FQAN that maps nowhere falls back to the DN.
        assert_eq!(
            m.lookup(jane, Some(&f("/cms"))),
            Some(&Target::Account("jdoe".into()))
        );
        assert_eq!(
            m.lookup("/DC=org/DC=example/CN=Multi", None),
            Some(&Target::Account("first".into()))
        );
        assert_eq!(m.lookup("/CN=nobody", Some(&f("/cms"))), None);
        assert_eq!(
            m.find(jane, Some(&f("/atlas/Role=production"))),
            Some((2, &Target::Pool("atlasprd".into())))
        );
        assert_eq!(
            m.find(jane, Some(&f("/cms"))),
            Some((0, &Target::Account("jdoe".into())))
        );
        assert_eq!(m.find("/CN=nobody", None), None);
        assert_eq!(m.dns_of("jdoe").collect::<Vec<_>>(), vec![jane]);
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let cases = [
            ("/DC=x/CN=y jdoe", "2: expected a quoted"),
            ("\"/DC=x/CN=y jdoe", "2: the quoted key has no closing"),
            ("\"/DC=x/CN=y\"", "2: \"/DC=x/CN=y\": no account"),
            ("\"/DC=x/CN=y\" ../root", "2: account"),
            ("\"/atlas/Role=a/Capability=b/x\" .p", "2: invalid FQAN"),
            (
                "\"/atlas/Role=a/*\" .p",
                "wildcard pattern may only follow groups",
            ),
            ("\"/DC=x/CN=a\tb\" u", "control character"),
        ];
        for (line, want) in cases {
            let text = format!("# header\n{line}\n");
            let e = MapFile::parse(Path::new("/etc/gm"), &text)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("/etc/gm:"), "{e}");
            assert!(e.contains(want), "{line:?}: {e}");
        }
    }

    #[test]
    fn group_mapfile() {
        let text = "\"/atlas/Role=production\" atlasprd\n\"/atlas/*\" atlas\n\"/cms\" cms\n";
        let g = GroupMapFile::parse(Path::new("g"), text).unwrap();
        let fq = [
            f("/atlas/Role=production"),
            f("/atlas/higgs"),
            f("/atlas"),
            f("/lhcb"),
        ];
        assert_eq!(g.groups(&fq), vec!["atlasprd", "atlas"]);
        let e = GroupMapFile::parse(Path::new("g"), "\"/DC=x/CN=y\" g\n").unwrap_err();
        assert!(e.to_string().contains("maps FQANs, not DNs"), "{e}");
    }

    #[test]
    fn from_rules_matches_like_a_parsed_file() {
        let parsed = MapFile::parse(Path::new("gm"), GRID).unwrap();
        let built = MapFile::from_rules(
            parsed
                .lines
                .iter()
                .map(|l| (l.pattern.clone(), l.target.clone())),
        );
        assert_eq!(built, parsed);
        let g = GroupMapFile::from_rules([
            (
                Pattern::FqanPrefix(vec!["atlas".into()]),
                "atlas".to_string(),
            ),
            (Pattern::Fqan(f("/cms")), "cms".to_string()),
        ]);
        assert_eq!(g.groups(&[f("/cms"), f("/atlas/x")]), vec!["cms", "atlas"]);
    }

    #[test]
    fn missing_file_is_empty() {
        let d = tempfile::tempdir().unwrap();
        assert!(MapFile::load(&d.path().join("none")).unwrap().is_empty());
        let p = d.path().join("gm");
        std::fs::write(&p, GRID).unwrap();
        assert_eq!(MapFile::load(&p).unwrap().len(), 5);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,200}") {
            let _ = MapFile::parse(Path::new("x"), &text);
            let _ = GroupMapFile::parse(Path::new("x"), &text);
        }
    }
}
