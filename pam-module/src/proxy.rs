//! The user's X.509 proxy (`X509_USER_PROXY`): read only when it is plainly the user's own.
//!
//! The module runs as root, and the path comes from the user's environment, so the file is
//! opened without following a final symlink and without blocking (a FIFO cannot stall the
//! login), then checked on the open fd: a regular file, owned by the user, not readable or
//! writable by group or others, at most [`MAX_PROXY`] bytes, UTF-8 text.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Largest proxy file read.
pub const MAX_PROXY: u64 = 64 * 1024;

/// A proxy file that is not used; the message names the path and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The file fails a check.
    #[error("proxy file {path} {why}")]
    Refused {
        /// The path from `X509_USER_PROXY`.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// The user cannot be looked up.
    #[error("cannot check proxy file {path}: user {user:?} {why}")]
    User {
        /// The path.
        path: String,
        /// The user.
        user: String,
        /// What the lookup said.
        why: String,
    },
}

/// The uid of `user` (`getpwnam_r`).
pub fn lookup_uid(user: &str) -> Result<u32, String> {
    let name = CString::new(user).map_err(|_| "contains a NUL byte".to_string())?;
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: passwd is plain data; all-zero is a valid value that getpwnam_r overwrites.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: getpwnam_r with a NUL-terminated name, a passwd to fill, a buffer with its
        // real length and a result pointer, all living on this frame.
        let r = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if r == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if r != 0 {
            return Err(format!(
                "cannot be looked up ({})",
                io::Error::from_raw_os_error(r)
            ));
        }
        if result.is_null() {
            return Err("does not exist".into());
        }
        return Ok(pwd.pw_uid);
    }
}

/// Reads the proxy at `path` for `user` (uid `uid`), or says why not.
pub fn read_proxy(path: &str, user: &str, uid: u32) -> Result<String, ProxyError> {
    let refuse = |why: String| ProxyError::Refused {
        path: path.to_string(),
        why,
    };
    if path.is_empty() {
        return Err(refuse(
            "is an empty path (X509_USER_PROXY is set but empty)".into(),
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(Path::new(path))
        .map_err(|e| {
            refuse(match e.raw_os_error() {
                Some(libc::ELOOP) => "is a symbolic link".into(),
                Some(libc::ENOENT) => "does not exist".into(),
                _ => format!("cannot be opened: {e}"),
            })
        })?;
    let meta = file
        .metadata()
        .map_err(|e| refuse(format!("cannot be examined: {e}")))?;
    if !meta.file_type().is_file() {
        return Err(refuse(format!(
            "is not a regular file (it is {})",
            kind(&meta)
        )));
    }
    if meta.uid() != uid {
        return Err(refuse(format!(
            "is not owned by {user} (uid {uid}) but by uid {}",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o066 != 0 {
        return Err(refuse(format!(
            "is readable or writable by group or others (mode {mode:04o}; it must be 0600 or 0400)"
        )));
    }
    if meta.len() > MAX_PROXY {
        return Err(refuse(format!(
            "is larger than {} KiB ({} bytes)",
            MAX_PROXY / 1024,
            meta.len()
        )));
    }
    read_limited(file).map_err(refuse)
}

fn read_limited(file: File) -> Result<String, String> {
    let mut bytes = Vec::new();
    // One byte more than allowed tells a file that grew after fstat.
    file.take(MAX_PROXY + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot be read: {e}"))?;
    if bytes.len() as u64 > MAX_PROXY {
        return Err(format!("is larger than {} KiB", MAX_PROXY / 1024));
    }
    if bytes.is_empty() {
        return Err("is empty".into());
    }
    String::from_utf8(bytes).map_err(|_| "is not text (not UTF-8)".into())
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn euid() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    fn file(dir: &Path, name: &str, text: &[u8], mode: u32) -> String {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p.to_str().unwrap().to_string()
    }

    fn refused(path: &str, uid: u32) -> String {
        match read_proxy(path, "atlas001", uid) {
            Err(e @ ProxyError::Refused { .. }) => e.to_string(),
            other => panic!("{other:?}"),
        }
    }

    const PEM: &[u8] = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_private_file_of_the_user_is_read() {
        let d = tempfile::tempdir().unwrap();
        let p = file(d.path(), "x509up_u1000", PEM, 0o600);
        assert_eq!(read_proxy(&p, "me", euid()).unwrap().as_bytes(), PEM);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_proxy(&p, "me", euid()).unwrap().as_bytes(), PEM);
        let exactly = file(d.path(), "max", &vec![b'a'; MAX_PROXY as usize], 0o600);
        assert_eq!(read_proxy(&exactly, "me", euid()).unwrap().len(), 64 * 1024);
    }

    #[test]
    fn a_file_of_someone_else_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = file(d.path(), "x509up_u1000", PEM, 0o600);
        let e = refused(&p, 1000);
        assert_eq!(
            e,
            format!(
                "proxy file {p} is not owned by atlas001 (uid 1000) but by uid {}",
                euid()
            )
        );
        if euid() == 0 {
            // As root: a file owned by nobody (65534) is refused for root and read for 65534.
            let f = File::open(&p).unwrap();
            // SAFETY: fchown on an fd owned by `f`.
            assert_eq!(unsafe { libc::fchown(f.as_raw_fd(), 65534, 65534) }, 0);
            assert!(refused(&p, 0).contains("but by uid 65534"));
            assert_eq!(read_proxy(&p, "nobody", 65534).unwrap().as_bytes(), PEM);
        }
    }

    #[test]
    fn group_or_world_access_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = file(d.path(), "p", PEM, 0o644);
        assert_eq!(
            refused(&p, euid()),
            format!("proxy file {p} is readable or writable by group or others (mode 0644; it must be 0600 or 0400)")
        );
        for mode in [0o640, 0o620, 0o604, 0o602, 0o666] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(refused(&p, euid()).contains(&format!("mode {mode:04o}")));
        }
    }

    #[test]
    fn symlinks_directories_fifos_big_and_missing_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let target = file(d.path(), "real", PEM, 0o600);
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let link = link.to_str().unwrap();
        assert_eq!(
            refused(link, euid()),
            format!("proxy file {link} is a symbolic link")
        );

        let dir = d.path().join("dir");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let dir = dir.to_str().unwrap();
        assert_eq!(
            refused(dir, euid()),
            format!("proxy file {dir} is not a regular file (it is a directory)")
        );

        let fifo = d.path().join("fifo");
        let c = CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Opening must not block although no writer exists.
        assert!(refused(fifo.to_str().unwrap(), euid()).ends_with("(it is a FIFO)"));

        let big = file(d.path(), "big", &vec![b'a'; 64 * 1024 + 1], 0o600);
        assert_eq!(
            refused(&big, euid()),
            format!("proxy file {big} is larger than 64 KiB (65537 bytes)")
        );

        let missing = d.path().join("missing");
        let missing = missing.to_str().unwrap();
        assert_eq!(
            refused(missing, euid()),
            format!("proxy file {missing} does not exist")
        );

        let empty = file(d.path(), "empty", b"", 0o600);
        assert!(refused(&empty, euid()).ends_with("is empty"));
        let binary = file(d.path(), "bin", b"\xff\xfe", 0o600);
        assert!(refused(&binary, euid()).ends_with("is not text (not UTF-8)"));
        assert!(refused("", euid()).contains("X509_USER_PROXY is set but empty"));
    }

    #[test]
    fn users_are_looked_up() {
        assert_eq!(lookup_uid("root"), Ok(0));
        assert_eq!(
            lookup_uid("dms-test-no-such-user"),
            Err("does not exist".to_string())
        );
        assert!(lookup_uid("a\0b").is_err());
    }
}
