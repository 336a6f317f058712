//! Globus signing policies (`<hash>.signing_policy` in the CA directory, EACL format): which
//! subjects a CA may sign.
//!
//! ```text
//! # comment
//! access_id_CA   X509   '/C=US/O=Globus/CN=Globus Certification Authority'
//! pos_rights     globus CA:sign
//! cond_subjects  globus '"/C=us/O=Globus/*"  "/C=US/O=Globus/*"'
//! ```
//!
//! Every non-comment line has three fields: a keyword, a defining authority and a value. A field
//! in single quotes (`'...'`) or double quotes (`"..."`) may contain blanks. A file holds one or
//! more blocks, each an `access_id_CA X509 '<CA DN>'` line followed by `pos_rights globus
//! CA:sign` and one or more `cond_subjects globus '<patterns>'` lines. The patterns are the
//! double-quoted strings of the value (or the whole value when it has no double quote); `*`
//! matches any run of characters, `?` one character, everything else itself, case-sensitively.
//!
//! Anything else (`neg_rights`, other `access_id_*` or `cond_*` types, other rights, a block
//! without rights or subjects) makes the file unusable, so that a policy this crate does not
//! understand restricts rather than widens what a CA may sign.

use std::fmt;

use crate::name;

/// Most `access_id_CA` blocks in one file.
const MAX_BLOCKS: usize = 256;
/// Most subject patterns in one file.
const MAX_PATTERNS: usize = 1024;
/// Longest CA DN or subject pattern, in bytes.
const MAX_PATTERN_LEN: usize = 2048;

/// One `access_id_CA` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Block {
    /// The CA DN, in slash form with attribute names normalised ([`name::normalize_slash_dn`]).
    pub ca: String,
    /// The subject patterns the CA may sign (normalised likewise).
    pub subjects: Vec<String>,
}

/// Why a signing policy file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Error {
    /// The line, 1-based; 0 for the file as a whole.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
    /// The CA DNs (normalised) the file's `access_id_CA` lines name, as far as they could be
    /// read: the CAs the broken file is about.
    pub named: Vec<String>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.reason)
        } else {
            write!(f, "line {}: {}", self.line, self.reason)
        }
    }
}

/// The block being read.
struct Open {
    block: Block,
    /// Line of its `access_id_CA`.
    line: usize,
    rights: bool,
}

/// Parses a signing policy file.
pub(crate) fn parse(data: &[u8]) -> Result<Vec<Block>, Error> {
    let mut blocks: Vec<Block> = Vec::new();
    let mut open: Option<Open> = None;
    let mut patterns = 0usize;
    let mut failed: Option<(usize, String)> = None;
    let mut named: Vec<String> = Vec::new();
    for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
        let no = i + 1;
        let line = match std::str::from_utf8(raw) {
            Ok(line) => line.trim(),
            Err(_) => {
                if failed.is_none() {
                    failed = Some((no, "not UTF-8 text".into()));
                }
                continue;
            }
        };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // Which CAs the file is about, for a report if it turns out to be broken.
        if let Ok(Some(dn)) = fields(line).map(|f| access_id_ca(&f)) {
            named.push(dn);
        }
        if failed.is_some() {
            continue;
        }
        if let Err(e) = parse_line(line, no, &mut open, &mut blocks, &mut patterns) {
            failed = Some(e);
        }
    }
    if failed.is_none() {
        if let Some(o) = open.take() {
            if let Err(reason) = close(o, &mut blocks) {
                failed = Some(reason);
            }
        }
    }
    if failed.is_none() && blocks.is_empty() {
        failed = Some((0, "no access_id_CA entry in the file".into()));
    }
    match failed {
        None => Ok(blocks),
        Some((line, reason)) => {
            named.sort();
            named.dedup();
            Err(Error {
                line,
                reason,
                named,
            })
        }
    }
}

/// Parses one line (not blank, not a comment); the error has the line number.
fn parse_line(
    line: &str,
    no: usize,
    open: &mut Option<Open>,
    blocks: &mut Vec<Block>,
    patterns: &mut usize,
) -> Result<(), (usize, String)> {
    if let Some(keyword) = line.strip_prefix("access_id_CA") {
        if keyword.starts_with([' ', '\t']) {
            // A new block: the previous one is complete.
            if let Some(o) = open.take() {
                close(o, blocks)?;
            }
        }
    }
    line_content(line, no, open, blocks.len(), patterns).map_err(|reason| (no, reason))
}

fn line_content(
    line: &str,
    no: usize,
    open: &mut Option<Open>,
    closed_blocks: usize,
    patterns: &mut usize,
) -> Result<(), String> {
    let f = fields(line)?;
    let [keyword, authority, value] = f.as_slice() else {
        let found = if f.len() > 3 {
            "more".to_owned()
        } else {
            f.len().to_string()
        };
        return Err(format!(
            "expected 3 fields (keyword, authority, value), found {found}"
        ));
    };
    let keyword = *keyword;
    if keyword == "access_id_CA" {
        // parse_line closed the previous block.
        if *authority != "X509" {
            return Err(format!(
                "access_id_CA: the authority must be X509, found \"{}\"",
                name::escape(authority)
            ));
        }
        let ca = dn(value, "access_id_CA")?;
        if closed_blocks == MAX_BLOCKS {
            return Err(format!("more than {MAX_BLOCKS} access_id_CA entries"));
        }
        *open = Some(Open {
            block: Block {
                ca,
                subjects: Vec::new(),
            },
            line: no,
            rights: false,
        });
        return Ok(());
    }
    if keyword.starts_with("access_id_") {
        return Err(format!(
            "{}: only access_id_CA is supported",
            name::escape(keyword)
        ));
    }
    let Some(o) = open.as_mut() else {
        return Err(format!(
            "{} before the first access_id_CA",
            name::escape(keyword)
        ));
    };
    match keyword {
        "pos_rights" => {
            if *authority != "globus" || *value != "CA:sign" {
                return Err(format!(
                    "pos_rights: only \"globus CA:sign\" is supported, found \"{} {}\"",
                    name::escape(authority),
                    name::escape(value)
                ));
            }
            o.rights = true;
        }
        "neg_rights" => return Err("neg_rights is not supported".into()),
        "cond_subjects" => {
            if !o.rights {
                return Err("cond_subjects before pos_rights".into());
            }
            if *authority != "globus" {
                return Err(format!(
                    "cond_subjects: the authority must be globus, found \"{}\"",
                    name::escape(authority)
                ));
            }
            let list = subject_patterns(value)?;
            *patterns += list.len();
            if *patterns > MAX_PATTERNS {
                return Err(format!("more than {MAX_PATTERNS} subject patterns"));
            }
            o.block.subjects.extend(list);
        }
        other if other.starts_with("cond_") => {
            return Err(format!(
                "{}: only cond_subjects is supported",
                name::escape(other)
            ))
        }
        other => return Err(format!("unknown keyword \"{}\"", name::escape(other))),
    }
    Ok(())
}

/// Ends a block: it must grant CA:sign for some subjects.
fn close(o: Open, blocks: &mut Vec<Block>) -> Result<(), (usize, String)> {
    if !o.rights {
        return Err((
            o.line,
            format!(
                "the access_id_CA entry for \"{}\" has no pos_rights line",
                name::escape(&o.block.ca)
            ),
        ));
    }
    if o.block.subjects.is_empty() {
        return Err((
            o.line,
            format!(
                "the access_id_CA entry for \"{}\" has no cond_subjects line",
                name::escape(&o.block.ca)
            ),
        ));
    }
    blocks.push(o.block);
    Ok(())
}

/// The CA DN of an `access_id_CA X509 <dn>` line, if the line is one (for error reports).
fn access_id_ca(f: &[&str]) -> Option<String> {
    match f {
        ["access_id_CA", "X509", value] => dn(value, "access_id_CA").ok(),
        _ => None,
    }
}

/// A DN in slash form, normalised.
fn dn(value: &str, what: &str) -> Result<String, String> {
    if !value.starts_with('/') {
        return Err(format!(
            "{what}: \"{}\" is not a DN in /KEY=value form",
            name::escape(value)
        ));
    }
    if value.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "{what}: the DN is longer than {MAX_PATTERN_LEN} bytes"
        ));
    }
    Ok(name::normalize_slash_dn(value))
}

/// The patterns of a `cond_subjects` value: its double-quoted strings, or the whole value when
/// it has no double quote.
fn subject_patterns(value: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    if !value.contains('"') {
        out.push(pattern(value.trim())?);
        return Ok(out);
    }
    let mut rest = value.trim_start();
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix('"') else {
            return Err(format!(
                "cond_subjects: unexpected text \"{}\" outside double quotes",
                name::escape(rest)
            ));
        };
        let Some((p, after)) = inner.split_once('"') else {
            return Err("cond_subjects: unterminated double quote".into());
        };
        out.push(pattern(p)?);
        if !after.is_empty() && !after.starts_with([' ', '\t']) {
            return Err("cond_subjects: patterns must be separated by blanks".into());
        }
        rest = after.trim_start();
    }
    Ok(out)
}

fn pattern(p: &str) -> Result<String, String> {
    if p.is_empty() {
        return Err("cond_subjects: empty subject pattern".into());
    }
    if p.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "cond_subjects: a subject pattern is longer than {MAX_PATTERN_LEN} bytes"
        ));
    }
    if let Some(c) = p.chars().find(|c| c.is_control()) {
        return Err(format!(
            "cond_subjects: the subject pattern \"{}\" contains the character {c:?}",
            name::escape(p)
        ));
    }
    Ok(name::normalize_slash_dn(p))
}

/// Splits a line into fields: blank-separated words, or quoted strings (`'...'`, `"..."`, the
/// quotes removed) that may contain blanks.
fn fields(line: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = line.trim_start_matches([' ', '\t']);
    while !rest.is_empty() {
        let (field, after) = match rest.chars().next() {
            Some(q @ ('\'' | '"')) => {
                let inner = rest.get(1..).unwrap_or_default();
                let Some((field, after)) = inner.split_once(q) else {
                    return Err(format!("unterminated {q} quote"));
                };
                if !after.is_empty() && !after.starts_with([' ', '\t']) {
                    return Err(format!("text right after a closing {q} quote"));
                }
                (field, after)
            }
            _ => {
                let end = rest.find([' ', '\t']).unwrap_or(rest.len());
                let (field, after) = rest.split_at(end);
                if field.contains(['\'', '"']) {
                    return Err(format!(
                        "a quote inside the word \"{}\"",
                        name::escape(field)
                    ));
                }
                (field, after)
            }
        };
        out.push(field);
        if out.len() > 3 {
            break;
        }
        rest = after.trim_start_matches([' ', '\t']);
    }
    Ok(out)
}

/// Whether `text` matches the Globus wildcard `pattern` (`*`: any run of characters, `?`: one
/// character), case-sensitively.
pub(crate) fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    // The last `*` seen and the text position it currently matches up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match (p.get(pi), t.get(ti)) {
            (Some('*'), _) => {
                star = Some((pi, ti));
                pi += 1;
            }
            (Some(&pc), Some(&tc)) if pc == '?' || pc == tc => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GLOBUS: &str = "# comment\n\
        access_id_CA   X509   '/C=US/O=Globus/CN=Globus Certification Authority'\n\
        pos_rights     globus CA:sign\n\
        cond_subjects  globus '\"/C=us/O=Globus/*\"  \"/C=US/O=Globus/*\"'\n";

    #[test]
    fn parses_the_globus_example() {
        let blocks = parse(GLOBUS.as_bytes()).unwrap();
        assert_eq!(
            blocks,
            vec![Block {
                ca: "/C=US/O=Globus/CN=Globus Certification Authority".into(),
                subjects: vec!["/C=us/O=Globus/*".into(), "/C=US/O=Globus/*".into()],
            }]
        );
    }

    #[test]
    fn several_blocks_quotes_and_normalisation() {
        let text = "access_id_CA X509 '/DC=org/CN=CA one/Email=ca@example.org'\r\n\
            \tpos_rights globus CA:sign\n\
            cond_subjects globus '\"/DC=org/OU=a b/*\"'\n\
            cond_subjects globus \"/DC=org/CN=host?/E=*\"\n\
            \n   # indented comment\n\
            access_id_CA X509 /DC=org/CN=CA2\n\
            pos_rights globus CA:sign\n\
            cond_subjects globus '/DC=org/CN=CA2 users/*'\n";
        let blocks = parse(text.as_bytes()).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(
            blocks[0].ca,
            "/DC=org/CN=CA one/emailAddress=ca@example.org"
        );
        assert_eq!(
            blocks[0].subjects,
            ["/DC=org/OU=a b/*", "/DC=org/CN=host?/emailAddress=*"]
        );
        assert_eq!(blocks[1].ca, "/DC=org/CN=CA2");
        assert_eq!(blocks[1].subjects, ["/DC=org/CN=CA2 users/*"]);
    }

    #[test]
    fn errors_name_the_line_and_the_cas() {
        for (text, line, want) in [
            ("", 0, "no access_id_CA"),
            ("# only comments\n", 0, "no access_id_CA"),
            (
                "pos_rights globus CA:sign\n",
                1,
                "before the first access_id_CA",
            ),
            ("access_id_CA X509\n", 1, "expected 3 fields"),
            ("access_id_CA X509 '/CN=a\n", 1, "unterminated ' quote"),
            ("access_id_CA X509 'CN=a'\n", 1, "not a DN"),
            ("access_id_CA X500 '/CN=a'\n", 1, "must be X509"),
            ("access_id_HOST X509 '/CN=a'\n", 1, "only access_id_CA"),
            (
                "access_id_CA X509 '/CN=a'\npos_rights globus CA:other\n",
                2,
                "only \"globus CA:sign\"",
            ),
            (
                "access_id_CA X509 '/CN=a'\nneg_rights globus CA:sign\n",
                2,
                "neg_rights",
            ),
            (
                "access_id_CA X509 '/CN=a'\ncond_subjects globus '\"/*\"'\n",
                2,
                "before pos_rights",
            ),
            (
                "access_id_CA X509 '/CN=a'\npos_rights globus CA:sign\ncond_x globus a\n",
                3,
                "only cond_subjects",
            ),
            (
                "access_id_CA X509 '/CN=a'\npos_rights globus CA:sign\n",
                1,
                "no cond_subjects",
            ),
            (
                "access_id_CA X509 '/CN=a'\ncond_subjects globus '\"/*\"'x\n",
                2,
                "right after a closing",
            ),
            (
                "access_id_CA X509 '/CN=a'\npos_rights globus CA:sign\n\
                 cond_subjects globus '\"/a\" junk'\n",
                3,
                "outside double quotes",
            ),
            (
                "access_id_CA X509 '/CN=a'\npos_rights globus CA:sign\n\
                 cond_subjects globus '\"/a'\n",
                3,
                "unterminated double quote",
            ),
            (
                "access_id_CA X509 '/CN=a'\npos_rights globus CA:sign\n\
                 cond_subjects globus '\"\"'\n",
                3,
                "empty subject pattern",
            ),
            (
                "access_id_CA X509 '/CN=a'\npos_rights globus CA:sign\n\
                 cond_subjects globus '\"/a\" \"/b\"' extra\n",
                3,
                "expected 3 fields",
            ),
            (
                "access_id_CA X509 '/CN=a'\nfoo bar baz\n",
                2,
                "unknown keyword",
            ),
            ("access_id_CA X509 /CN=a'b\n", 1, "a quote inside"),
            (
                "access_id_CA X509 '/CN=a'\npos_rights globus CA:sign\n\
                 access_id_CA X509 '/CN=b'\n",
                1,
                "no cond_subjects",
            ),
        ] {
            let e = parse(text.as_bytes()).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.to_string().contains(want), "{text:?}: {e}");
        }
        let e = parse(b"access_id_CA X509 '/CN=a'\n\xff\n").unwrap_err();
        assert_eq!(e.to_string(), "line 2: not UTF-8 text");
        // The CAs named before and after the error.
        let text = "access_id_CA X509 '/CN=a'\npos_rights globus CA:sign\n\
                    cond_subjects globus broken 'quote\n\
                    access_id_CA X509 '/CN=b/Email=x'\nwhatever\n";
        let e = parse(text.as_bytes()).unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.named, ["/CN=a", "/CN=b/emailAddress=x"]);
    }

    #[test]
    fn hostile_text_is_escaped() {
        let e = parse(b"access_id_CA X509 'CN=\x1b[31mred'\n").unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains('\x1b'), "{msg:?}");
        assert!(msg.contains("\\x1b"), "{msg:?}");
    }

    #[test]
    fn wildcards() {
        for (p, t, want) in [
            ("/C=US/O=Globus/*", "/C=US/O=Globus/CN=x", true),
            ("/C=US/O=Globus/*", "/C=US/O=Globus/", true),
            ("/C=US/O=Globus/*", "/C=us/O=Globus/CN=x", false),
            ("/C=US/O=Globus/*", "/C=US/O=Globus", false),
            ("/CN=host?", "/CN=host1", true),
            ("/CN=host?", "/CN=host", false),
            ("/CN=host?", "/CN=host12", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("/a*b*c", "/aXbYbZc", true),
            ("/a*b*c", "/aXbYbZ", false),
            ("**?", "x", true),
            ("*ö*", "/CN=Jörg", true),
            ("/CN=J?rg", "/CN=Jörg", true),
            ("/DC=ch/DC=cern/*", "/DC=ch/DC=cern/OU=Users/CN=x", true),
            ("/DC=ch/DC=cern/*", "/DC=ch/DC=cernX/CN=x", false),
        ] {
            assert_eq!(matches(p, t), want, "{p:?} {t:?}");
        }
        let long = "a".repeat(2000);
        assert!(!matches(&"*a".repeat(50), &format!("{long}b")));
    }
}
