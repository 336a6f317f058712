//! The domain repository: per guest a directory with its copy-on-write overlay of the
//! template's base image, its contextualization ISO, the heartbeat socket, the console log and
//! saved state. Base images are only ever opened read-only (as the overlay's backing file).
//!
//! Layout: `<repository>/domains/<domain>/{disk.qcow2, context.iso, alive.sock, console.log,
//! state.save}`. Domain names are validated before they get here (no `/`, no `..`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::Template;

/// Runs a tool (qemu-img, xorriso) and returns its output, or its output as the error.
pub trait Tools {
    /// Runs `argv`.
    fn run(&self, argv: &[&str]) -> Result<String, String>;
}

impl Tools for crate::spawn::Spawner {
    fn run(&self, argv: &[&str]) -> Result<String, String> {
        // Overlay and ISO creation are small; a minute covers a slow disk.
        self.run_tool(argv, &[], None, std::time::Duration::from_secs(60))
    }
}

/// A repository failure; the message names the file and what was done.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RepoError(pub String);

/// What a guest's files are for its identity (passed to the guest on the ISO).
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// DMS domain name (also the guest's hostname).
    pub domain: String,
    /// Owner account.
    pub user: String,
    /// Owner uid.
    pub uid: u32,
    /// VO.
    pub vo: String,
    /// Job id, for per-job guests.
    pub job: Option<String>,
}

/// The files a prepared guest uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    /// Its overlay.
    pub overlay: Option<PathBuf>,
    /// Its contextualization ISO.
    pub context_iso: Option<PathBuf>,
}

/// The repository root.
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
}

impl Repository {
    /// A repository at `root` (created on first use, mode 0700).
    pub fn new(root: impl Into<PathBuf>) -> Repository {
        Repository { root: root.into() }
    }

    /// Its root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn domains(&self) -> PathBuf {
        self.root.join("domains")
    }

    /// A guest's directory.
    pub fn dir(&self, domain: &str) -> PathBuf {
        self.domains().join(domain)
    }
    /// A guest's overlay.
    pub fn overlay(&self, domain: &str) -> PathBuf {
        self.dir(domain).join("disk.qcow2")
    }
    /// A guest's contextualization ISO.
    pub fn context_iso(&self, domain: &str) -> PathBuf {
        self.dir(domain).join("context.iso")
    }
    /// The heartbeat socket.
    pub fn alive_socket(&self, domain: &str) -> PathBuf {
        self.dir(domain).join("alive.sock")
    }
    /// The serial console log.
    pub fn console_log(&self, domain: &str) -> PathBuf {
        self.dir(domain).join("console.log")
    }
    /// Saved state (libvirt save image).
    pub fn save_file(&self, domain: &str) -> PathBuf {
        self.dir(domain).join("state.save")
    }

    /// Creates a guest's directory, overlay and ISO. On failure nothing of it stays.
    pub fn prepare(
        &self,
        ctx: &Context,
        template_name: &str,
        t: &Template,
        tools: &dyn Tools,
    ) -> Result<Prepared, RepoError> {
        let dir = self.dir(&ctx.domain);
        let r = (|| {
            make_dir(&self.root)?;
            make_dir(&self.domains())?;
            // A directory left by a crash half-way is stale: this guest starts afresh.
            self.remove(&ctx.domain)?;
            make_dir(&dir)?;
            let mut p = Prepared::default();
            if let Some(k) = &t.kernel {
                check_readable(k, &format!("libvirt.templates.{template_name}.kernel"))?;
            }
            if let Some(i) = &t.initrd {
                check_readable(i, &format!("libvirt.templates.{template_name}.initrd"))?;
            }
            if let Some(base) = &t.image {
                let overlay = self.overlay(&ctx.domain);
                check_base(base, &t.image_format, template_name, tools)?;
                tools
                    .run(&[
                        "qemu-img",
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-b",
                        &base.to_string_lossy(),
                        "-F",
                        &t.image_format,
                        &overlay.to_string_lossy(),
                    ])
                    .map_err(|e| {
                        RepoError(format!("creating overlay {}: {e}", overlay.display()))
                    })?;
                p.overlay = Some(overlay);
            }
            if t.context && t.guest_type.is_vm() {
                p.context_iso = Some(self.make_iso(ctx, template_name, t, tools)?);
            }
            // The console log exists before QEMU opens it, so its owner is ours.
            if t.guest_type.is_vm() {
                std::fs::File::create(self.console_log(&ctx.domain)).map_err(|e| {
                    RepoError(format!(
                        "creating {}: {e}",
                        self.console_log(&ctx.domain).display()
                    ))
                })?;
            }
            Ok(p)
        })();
        if r.is_err() {
            let _ = self.remove(&ctx.domain);
        }
        r
    }

    fn make_iso(
        &self,
        ctx: &Context,
        template_name: &str,
        t: &Template,
        tools: &dyn Tools,
    ) -> Result<PathBuf, RepoError> {
        let dir = self.dir(&ctx.domain);
        let staging = dir.join("context");
        make_dir(&staging)?;
        let user_data = match &t.startup_script {
            Some(s) => std::fs::read(s).map_err(|e| {
                RepoError(format!(
                    "libvirt.templates.{template_name}.startup_script = {}: {e}",
                    s.display()
                ))
            })?,
            None => b"#cloud-config\n{}\n".to_vec(),
        };
        let meta = format!(
            "instance-id: {0}\nlocal-hostname: {1}\n",
            yaml_str(&ctx.domain),
            yaml_str(&hostname(&ctx.domain))
        );
        let mut env = format!(
            "DMS_DOMAIN={}\nDMS_USER={}\nDMS_UID={}\nDMS_VO={}\n",
            shell_word(&ctx.domain),
            shell_word(&ctx.user),
            ctx.uid,
            shell_word(&ctx.vo)
        );
        if let Some(j) = &ctx.job {
            env.push_str(&format!("DMS_JOB={}\n", shell_word(j)));
        }
        for (name, data) in [
            ("meta-data", meta.as_bytes()),
            ("user-data", &user_data[..]),
            ("dms.env", env.as_bytes()),
        ] {
            let p = staging.join(name);
            std::fs::File::create(&p)
                .and_then(|mut f| f.write_all(data))
                .map_err(|e| RepoError(format!("writing {}: {e}", p.display())))?;
        }
        let iso = self.context_iso(&ctx.domain);
        let r = tools.run(&[
            "xorriso",
            "-as",
            "mkisofs",
            "-quiet",
            "-V",
            "cidata",
            "-J",
            "-r",
            "-o",
            &iso.to_string_lossy(),
            &staging.to_string_lossy(),
        ]);
        let _ = std::fs::remove_dir_all(&staging);
        r.map_err(|e| {
            RepoError(format!(
                "creating contextualization ISO {}: {e}",
                iso.display()
            ))
        })?;
        Ok(iso)
    }

    /// Removes a guest's files (missing is fine).
    pub fn remove(&self, domain: &str) -> Result<(), RepoError> {
        let dir = self.dir(domain);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RepoError(format!("removing {}: {e}", dir.display()))),
        }
    }

    /// Domains that have a directory.
    pub fn list(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.domains()) else {
            return vec![];
        };
        rd.filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }
}

fn make_dir(p: &Path) -> Result<(), RepoError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o711).create(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => Ok(()),
        Err(e) => Err(RepoError(format!("creating {}: {e}", p.display()))),
    }
}

fn check_readable(p: &Path, key: &str) -> Result<(), RepoError> {
    let f =
        std::fs::File::open(p).map_err(|e| RepoError(format!("{key} = {}: {e}", p.display())))?;
    let md = f
        .metadata()
        .map_err(|e| RepoError(format!("{key} = {}: {e}", p.display())))?;
    if !md.is_file() {
        return Err(RepoError(format!(
            "{key} = {}: not a regular file",
            p.display()
        )));
    }
    Ok(())
}

/// The base image must exist, be readable, and be an image of the declared format (a
/// corrupt qcow2 fails `qemu-img info`).
fn check_base(
    base: &Path,
    format: &str,
    template_name: &str,
    tools: &dyn Tools,
) -> Result<(), RepoError> {
    let key = format!("libvirt.templates.{template_name}.image");
    check_readable(base, &key)?;
    let out = tools
        .run(&[
            "qemu-img",
            "info",
            "-U",
            "--output=json",
            "-f",
            format,
            &base.to_string_lossy(),
        ])
        .map_err(|e| {
            RepoError(format!(
                "{key} = {}: not a usable {format} image: {e}",
                base.display()
            ))
        })?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| {
        RepoError(format!(
            "{key} = {}: qemu-img info said {out:?}: {e}",
            base.display()
        ))
    })?;
    if v.get("format").and_then(|f| f.as_str()) != Some(format) {
        return Err(RepoError(format!(
            "{key} = {}: qemu-img reads it as {}, the template says image_format = {format:?}",
            base.display(),
            v.get("format").map_or("unknown".into(), |f| f.to_string())
        )));
    }
    Ok(())
}

/// A hostname from a domain name (dots are separators in hostnames: keep the first label's
/// characters readable).
fn hostname(domain: &str) -> String {
    domain
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect()
}

fn yaml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn shell_word(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Runs tools directly (tests are allowed to fork).
    struct Direct;
    impl Tools for Direct {
        fn run(&self, argv: &[&str]) -> Result<String, String> {
            let out = std::process::Command::new(argv[0])
                .args(&argv[1..])
                .output()
                .map_err(|e| format!("{}: {e}", argv[0]))?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                Ok(text)
            } else {
                Err(text)
            }
        }
    }

    fn have(tool: &str) -> bool {
        let ok = std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok();
        if !ok {
            eprintln!("skipped: {tool} is not installed (scripts/deps.sh test installs it)");
        }
        ok
    }

    fn ctx() -> Context {
        Context {
            domain: "atlas.alice".into(),
            user: "alice".into(),
            uid: 20001,
            vo: "at'las".into(),
            job: Some("42".into()),
        }
    }

    #[test]
    fn overlay_and_iso_leave_the_base_untouched() {
        if !have("qemu-img") || !have("xorriso") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base.qcow2");
        Direct
            .run(&[
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                base.to_str().unwrap(),
                "64M",
            ])
            .unwrap();
        let before = std::fs::read(&base).unwrap();
        let script = tmp.path().join("start.sh");
        std::fs::write(&script, "#!/bin/sh\necho hello\n").unwrap();
        let t: Template = toml::from_str(&format!(
            "type='qemu'\nimage='{}'\nstartup_script='{}'",
            base.display(),
            script.display()
        ))
        .unwrap();
        let repo = Repository::new(tmp.path().join("repo"));
        let p = repo.prepare(&ctx(), "t", &t, &Direct).unwrap();
        let overlay = p.overlay.unwrap();
        let info = Direct
            .run(&[
                "qemu-img",
                "info",
                "-U",
                "--output=json",
                overlay.to_str().unwrap(),
            ])
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(v["format"], "qcow2");
        assert_eq!(v["backing-filename"], base.to_str().unwrap());
        assert_eq!(v["backing-filename-format"], "qcow2");
        assert_eq!(v["virtual-size"], 64 << 20);
        let iso = p.context_iso.unwrap();
        let listing = Direct
            .run(&[
                "xorriso",
                "-indev",
                iso.to_str().unwrap(),
                "-ls",
                "/",
                "-pvd_info",
            ])
            .unwrap();
        for f in ["meta-data", "user-data", "dms.env", "cidata"] {
            assert!(listing.contains(f), "{f} missing in {listing}");
        }
        let env = Direct
            .run(&[
                "xorriso",
                "-indev",
                iso.to_str().unwrap(),
                "-osirrox",
                "on",
                "-extract",
                "/dms.env",
                tmp.path().join("env").to_str().unwrap(),
            ])
            .map(|_| std::fs::read_to_string(tmp.path().join("env")).unwrap())
            .unwrap();
        assert!(env.contains("DMS_VO='at'\\''las'\nDMS_JOB='42'"), "{env}");
        assert!(repo.console_log("atlas.alice").exists());
        assert_eq!(repo.list(), vec!["atlas.alice".to_string()]);
        assert_eq!(std::fs::read(&base).unwrap(), before, "base image changed");
        repo.remove("atlas.alice").unwrap();
        assert!(!repo.dir("atlas.alice").exists());
        repo.remove("atlas.alice").unwrap();
    }

    #[test]
    fn bad_images_fail_cleanly() {
        if !have("qemu-img") || !have("xorriso") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::new(tmp.path().join("repo"));
        let corrupt = tmp.path().join("corrupt.qcow2");
        std::fs::write(&corrupt, b"QFI\xfbthis is not a qcow2 image").unwrap();
        let raw = tmp.path().join("disk.raw");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        for (image, format, want) in [
            (tmp.path().join("missing.qcow2"), "qcow2", "No such file"),
            (corrupt.clone(), "qcow2", "not a usable qcow2 image"),
            (raw.clone(), "qcow2", "not a usable qcow2 image"),
            (tmp.path().to_path_buf(), "raw", "not a regular file"),
        ] {
            let t: Template = toml::from_str(&format!(
                "type='qemu'\nimage='{}'\nimage_format='{format}'",
                image.display()
            ))
            .unwrap();
            let e = repo.prepare(&ctx(), "t", &t, &Direct).unwrap_err().0;
            assert!(e.contains(want), "{e}");
            assert!(e.contains("libvirt.templates.t.image"), "{e}");
            assert!(!repo.dir("atlas.alice").exists(), "left {e}");
        }
        let t: Template = toml::from_str("type='qemu'\nkernel='/nonexistent/vmlinux'").unwrap();
        let e = repo.prepare(&ctx(), "t", &t, &Direct).unwrap_err().0;
        assert!(
            e.contains("libvirt.templates.t.kernel = /nonexistent/vmlinux"),
            "{e}"
        );
        assert!(repo.list().is_empty());
    }

    #[test]
    fn names_for_the_guest() {
        assert_eq!(hostname("atlas.alice.job7"), "atlas-alice-job7");
        assert_eq!(yaml_str("a\"b"), "\"a\\\"b\"");
    }
}
