//! The passwd and group files dmsd publishes for `libnss_dms.so.2`.
//!
//! Exactly passwd(5) and group(5) lines, password field `*` (an NSS account with `x` and no
//! shadow entry makes pam_unix refuse it). Each file is replaced atomically (temporary file,
//! fsync, rename), so a reader sees the old or the new file, never a mix.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A passwd line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Comment.
    pub gecos: String,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
}

/// A group line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Secondary members.
    pub members: Vec<String>,
}

/// Publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum NssFileError {
    /// A field would break the line format.
    #[error("cannot publish {what} {name:?}: field {field} holds ':', ',' or a control character")]
    BadField {
        /// "account" or "group".
        what: &'static str,
        /// The entry.
        name: String,
        /// The field.
        field: &'static str,
    },
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn clean(s: &str, comma_ok: bool) -> bool {
    !s.chars()
        .any(|c| c == ':' || c.is_control() || (!comma_ok && c == ','))
}

impl PasswdEntry {
    fn line(&self, out: &mut String) -> Result<(), NssFileError> {
        for (field, v, comma) in [
            ("name", &self.name, false),
            ("gecos", &self.gecos, true),
            ("home", &self.home, true),
            ("shell", &self.shell, true),
        ] {
            if !clean(v, comma) {
                return Err(NssFileError::BadField {
                    what: "account",
                    name: self.name.clone(),
                    field,
                });
            }
        }
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "{}:*:{}:{}:{}:{}:{}",
            self.name, self.uid, self.gid, self.gecos, self.home, self.shell
        );
        Ok(())
    }
}

impl GroupEntry {
    fn line(&self, out: &mut String) -> Result<(), NssFileError> {
        let bad = |field| NssFileError::BadField {
            what: "group",
            name: self.name.clone(),
            field,
        };
        if !clean(&self.name, false) {
            return Err(bad("name"));
        }
        if self
            .members
            .iter()
            .any(|m| !clean(m, false) || m.is_empty())
        {
            return Err(bad("members"));
        }
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "{}:*:{}:{}",
            self.name,
            self.gid,
            self.members.join(",")
        );
        Ok(())
    }
}

fn replace(dir: &Path, name: &str, text: &str) -> Result<(), NssFileError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| NssFileError::Io { path: p, source }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    // Readable by everyone: these are public account records, like /etc/passwd.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

/// Replaces `dir/passwd` and `dir/group` (creating `dir` if needed). Entries are written in
/// the order given.
pub fn publish(
    dir: &Path,
    users: &[PasswdEntry],
    groups: &[GroupEntry],
) -> Result<(), NssFileError> {
    let mut p = String::with_capacity(users.len() * 64);
    for u in users {
        u.line(&mut p)?;
    }
    let mut g = String::with_capacity(groups.len() * 32);
    for gr in groups {
        gr.line(&mut g)?;
    }
    std::fs::create_dir_all(dir).map_err(|source| NssFileError::Io {
        path: dir.to_owned(),
        source,
    })?;
    replace(dir, "passwd", &p)?;
    replace(dir, "group", &g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_passwd_and_group_lines() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("nss");
        let users = [PasswdEntry {
            name: "atlas001".into(),
            uid: 20001,
            gid: 20000,
            gecos: "DMS pool atlas".into(),
            home: "/home/atlas001".into(),
            shell: "/bin/bash".into(),
        }];
        let groups = [
            GroupEntry {
                name: "atlas".into(),
                gid: 20000,
                members: vec![],
            },
            GroupEntry {
                name: "atlasprd".into(),
                gid: 21000,
                members: vec!["atlas001".into(), "atlas002".into()],
            },
        ];
        publish(&dir, &users, &groups).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("passwd")).unwrap(),
            "atlas001:*:20001:20000:DMS pool atlas:/home/atlas001:/bin/bash\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("group")).unwrap(),
            "atlas:*:20000:\natlasprd:*:21000:atlas001,atlas002\n"
        );
        // Replaced, not appended; no temporary file left.
        publish(&dir, &[], &[]).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("passwd")).unwrap(), "");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn refuses_fields_that_break_the_format() {
        let d = tempfile::tempdir().unwrap();
        let u = PasswdEntry {
            name: "a".into(),
            uid: 1,
            gid: 1,
            gecos: "x:y".into(),
            home: "/".into(),
            shell: "/bin/sh".into(),
        };
        let e = publish(d.path(), &[u], &[]).unwrap_err().to_string();
        assert!(e.contains("field gecos"), "{e}");
        let g = GroupEntry {
            name: "g".into(),
            gid: 1,
            members: vec!["a\nb".into()],
        };
        let e = publish(d.path(), &[], &[g]).unwrap_err().to_string();
        assert!(e.contains("field members"), "{e}");
        assert!(!d.path().join("passwd").exists());
    }
}
