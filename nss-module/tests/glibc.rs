//! libnss_dms.so.2 through real glibc (`getent`, `id`), without installing anything.
//!
//! A temp dir holds the built module as `lib/libnss_dms.so.2`, an ld.so cache that lists it
//! (made by `ldconfig -C` from the host's configuration plus that dir, inside a mount namespace
//! with a tmpfs over /var/cache so the host's ldconfig aux-cache is not rewritten), an
//! nsswitch.conf with `files dms`, and the published files. Each command runs under
//! `unshare -m` with those bind-mounted over /etc/ld.so.cache, /etc/nsswitch.conf and the
//! module's directory, so the host's files are never touched (the mountpoint directory is
//! created if missing and left). Names use the prefix `dmsnss`, ids 40000..49999.
//!
//! Gated by `can_run()`, which prints why it skips; with DMS_REQUIRE_ROOT_TESTS=1 a skip is a
//! failure.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const PASSWD: &str = "\
dmsnss001:*:40001:40001:DMS test one:/home/dmsnss001:/bin/sh
dmsnss002:*:40002:40002:DMS test two:/home/dmsnss002:/bin/bash
root:*:40099:40099:shadowed by files:/nonexistent:/bin/false
";

const GROUP: &str = "\
dmsnss001:*:40001:
dmsnss002:*:40002:
dmsnssgrp:*:40100:dmsnss001,dmsnss002
dmsnssvo:*:40200:dmsnss002
";

/// Whether these tests can run here; prints why not.
fn can_run() -> bool {
    let why = if euid() != 0 {
        Some("needs root (mount namespaces)")
    } else if !Path::new("/proc/self/ns/mnt").exists() {
        Some("no mount namespace support (/proc/self/ns/mnt missing)")
    } else if ["unshare", "ldconfig", "getent", "id"]
        .iter()
        .any(|t| which(t).is_none())
    {
        Some("unshare, ldconfig, getent or id missing")
    } else {
        None
    };
    match why {
        None => true,
        Some(w) => {
            assert!(
                std::env::var("DMS_REQUIRE_ROOT_TESTS").is_err(),
                "root tests required but cannot run: {w}"
            );
            eprintln!("skipped: {w}");
            false
        }
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn which(tool: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

/// The cdylib cargo built next to this test binary (`target/<profile>/deps/<test>`).
fn built_module() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let candidates = [
        deps.parent().unwrap().join("libnss_dms.so"),
        deps.join("libnss_dms.so"),
    ];
    candidates
        .iter()
        .filter_map(|p| Some((fs::metadata(p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p.clone())
        .unwrap_or_else(|| panic!("libnss_dms.so not found at {candidates:?}"))
}

/// Runs `cmd` with `args`, killed after a deadline; returns (exit code, stdout, stderr).
fn run(cmd: &str, args: &[&str], dir: &Path) -> (i32, String, String) {
    let (out, err) = (dir.join("out"), dir.join("err"));
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{cmd} {args:?}: still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read = |p: &Path| fs::read_to_string(p).unwrap();
    (status.code().unwrap_or(-1), read(&out), read(&err))
}

/// A private world: module, ld.so cache, nsswitch.conf and published files in a temp dir.
struct World {
    dir: TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::Builder::new().prefix("dmsnss").tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("lib")).unwrap();
        fs::copy(built_module(), d.join("lib/libnss_dms.so.2")).unwrap();
        fs::write(
            d.join("ld.so.conf"),
            format!(
                "include /etc/ld.so.conf.d/*.conf\n{}\n",
                d.join("lib").display()
            ),
        )
        .unwrap();
        fs::write(
            d.join("nsswitch.conf"),
            "passwd: files dms\ngroup: files dms\n",
        )
        .unwrap();
        fs::create_dir(d.join("nss")).unwrap();
        fs::write(d.join("nss/passwd"), PASSWD).unwrap();
        fs::write(d.join("nss/group"), GROUP).unwrap();
        fs::create_dir(d.join("empty")).unwrap();
        // ldconfig always rewrites its aux-cache under /var/cache: give it a private tmpfs.
        let script = "mount -t tmpfs -o size=16m,mode=755 dmsnss /var/cache && \
                      exec ldconfig -X -i -C \"$1\" -f \"$2\"";
        let cache = d.join("ld.so.cache");
        let conf = d.join("ld.so.conf");
        let args = ["-m", "--propagation", "private", "sh", "-c", script, "sh"];
        let mut args = args.to_vec();
        args.extend([cache.to_str().unwrap(), conf.to_str().unwrap()]);
        let (code, _, err) = run("unshare", &args, d);
        assert_eq!(code, 0, "ldconfig: {err}");
        World { dir }
    }

    /// Runs `cmd` in a mount namespace where glibc sees this world, the module's directory
    /// being `nss` (a subdirectory of the world).
    fn sh(&self, nss: &str, cmd: &str) -> (i32, String, String) {
        let d = self.dir.path();
        let mountpoint = Path::new(nss_dms::NSS_DIR);
        if !mountpoint.is_dir() {
            fs::create_dir_all(mountpoint).unwrap();
        }
        let script = "mount --bind \"$1\" /etc/ld.so.cache && \
                      mount --bind \"$2\" /etc/nsswitch.conf && \
                      mount --bind \"$3\" \"$4\" && exec sh -c \"$5\"";
        let paths = [d.join("ld.so.cache"), d.join("nsswitch.conf"), d.join(nss)];
        let mut args = vec!["-m", "--propagation", "private", "sh", "-c", script, "sh"];
        args.extend(paths.iter().map(|p| p.to_str().unwrap()));
        args.extend([nss_dms::NSS_DIR, cmd]);
        run("unshare", &args, d)
    }

    /// Like `sh`, requiring success; returns stdout.
    fn ok(&self, cmd: &str) -> String {
        let (code, out, err) = self.sh("nss", cmd);
        assert_eq!(
            code, 0,
            "{cmd}: exit {code}, stdout {out:?}, stderr {err:?}"
        );
        out
    }
}

#[test]
fn lookups_through_glibc() {
    if !can_run() {
        return;
    }
    let w = World::new();
    let one = "dmsnss001:*:40001:40001:DMS test one:/home/dmsnss001:/bin/sh\n";
    assert_eq!(w.ok("getent passwd dmsnss001"), one);
    assert_eq!(w.ok("getent passwd 40001"), one);
    // Answered by dms itself, not by some other source.
    assert_eq!(w.ok("getent -s dms passwd dmsnss001"), one);
    assert_eq!(
        w.ok("id dmsnss001"),
        "uid=40001(dmsnss001) gid=40001(dmsnss001) groups=40001(dmsnss001),40100(dmsnssgrp)\n"
    );
    assert_eq!(
        w.ok("id dmsnss002"),
        "uid=40002(dmsnss002) gid=40002(dmsnss002) \
         groups=40002(dmsnss002),40100(dmsnssgrp),40200(dmsnssvo)\n"
    );
    let grp = "dmsnssgrp:*:40100:dmsnss001,dmsnss002\n";
    assert_eq!(w.ok("getent group dmsnssgrp"), grp);
    assert_eq!(w.ok("getent group 40100"), grp);
    assert_eq!(w.ok("getent group dmsnss001"), "dmsnss001:*:40001:\n");
    let init = w.ok("getent -s dms initgroups dmsnss002");
    assert_eq!(
        init.split_whitespace().collect::<Vec<_>>(),
        ["dmsnss002", "40100", "40200"]
    );

    // files comes first: the host's root wins over the dms line of the same name.
    assert!(w.ok("getent passwd root").starts_with("root:x:0:0:"));
    assert_eq!(w.sh("nss", "getent -s dms passwd 0").0, 2);

    // Enumeration lists files first, then dms.
    let all = w.ok("getent passwd");
    let root_at = all.find("root:x:0:0:").unwrap();
    let one_at = all.find(one).unwrap();
    assert!(root_at < one_at, "{all}");
    assert!(all.contains("dmsnss002:*:40002:"), "{all}");
    let groups = w.ok("getent group");
    assert!(groups.ends_with("dmsnssgrp:*:40100:dmsnss001,dmsnss002\ndmsnssvo:*:40200:dmsnss002\n"));

    // Unknown names and ids: exit 2 (not found).
    for cmd in [
        "getent passwd dmsnssnone",
        "getent passwd 49999",
        "getent group dmsnssnone",
    ] {
        let (code, out, _) = w.sh("nss", cmd);
        assert_eq!((code, out.as_str()), (2, ""), "{cmd}");
    }
}

#[test]
fn a_missing_file_falls_through() {
    if !can_run() {
        return;
    }
    let w = World::new();
    // The module's directory is empty: UNAVAIL, so glibc carries on and nothing hangs.
    let (code, out, err) = w.sh("empty", "getent passwd root");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("root:x:0:0:"), "{out}");
    for cmd in [
        "getent passwd dmsnss001",
        "getent passwd 40001",
        "getent group dmsnssgrp",
        "getent -s dms passwd dmsnss001",
    ] {
        let (code, out, _) = w.sh("empty", cmd);
        assert_eq!((code, out.as_str()), (2, ""), "{cmd}");
    }
    let (code, _, _) = w.sh("empty", "id dmsnss001");
    assert_eq!(code, 1);
    // Enumeration still lists the host's accounts.
    let (code, out, _) = w.sh("empty", "getent passwd");
    assert_eq!(code, 0);
    assert!(
        out.contains("root:x:0:0:") && !out.contains("dmsnss"),
        "{out}"
    );
}
