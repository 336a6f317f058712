//! The built `pam_dms.so` through real libpam, driven by `pamtester`, against a fake dmsd
//! served from a thread of this test.
//!
//! pamtester runs in a private mount namespace where a temp dir is bind-mounted over
//! `/etc/pam.d`; the host's `/etc/pam.d` is never touched. The module is named by absolute
//! path (the cdylib cargo built next to this test binary). Gated by `can_run()`: root,
//! `pamtester` and `unshare` installed; with DMS_REQUIRE_ROOT_TESTS=1 a skip is a failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{FakeDmsd, Reply};

const SERVICE: &str = "dms-test-pam";

/// Whether these tests can run here; prints why not.
fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not root".to_string())
    } else if let Some(tool) = ["pamtester", "unshare"].into_iter().find(|t| !on_path(t)) {
        Some(format!("{tool} is not installed"))
    } else if module().is_none() {
        Some("the built libpam_dms.so was not found next to the test binary".to_string())
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
            eprintln!("SKIPPED: {w}");
            false
        }
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// The cdylib: the test binary is `<target>/<profile>/deps/pamtester-<hash>`, the module
/// `<target>/<profile>/deps/libpam_dms.so` (and a copy one level up).
fn module() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    [
        deps.join("libpam_dms.so"),
        deps.parent()?.join("libpam_dms.so"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// A temp dir with `pam.d/` and the socket path.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("dms-test-pam.")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("pam.d")).unwrap();
        Setup { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn socket(&self) -> PathBuf {
        self.path("pam.sock")
    }

    /// Writes the service file: pam_dms as the only session module, with `options`.
    fn service(&self, options: &str) {
        let module = module().unwrap();
        let socket = self.socket();
        for p in [&module, &socket] {
            assert!(
                !p.display().to_string().contains(char::is_whitespace),
                "{p:?}"
            );
        }
        std::fs::write(
            self.path("pam.d").join(SERVICE),
            format!(
                "auth     required pam_permit.so\n\
                 account  required pam_permit.so\n\
                 session  required {} socket={} timeout=3 debug {options}\n",
                module.display(),
                socket.display()
            ),
        )
        .unwrap();
    }

    /// Runs `pamtester SERVICE root open_session close_session` with this dir's pam.d;
    /// returns whether it succeeded and its output (stdout and stderr).
    fn pamtester(&self) -> (bool, String) {
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount --bind \"$1\" /etc/pam.d && exec pamtester {SERVICE} root open_session close_session"
            ))
            .arg("sh")
            .arg(self.path("pam.d"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(out) => out.unwrap(),
            Err(_) => {
                // SAFETY: kill(2) of the child this test started (not yet reaped: the waiter
                // thread still waits for it).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                let _ = waiter.join();
                panic!("pamtester did not finish within 30 s");
            }
        };
        let _ = waiter.join();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

fn server(setup: &Setup, replies: Vec<Reply>) -> FakeDmsd {
    FakeDmsd::start(&setup.socket(), replies, Duration::from_secs(30))
}

fn target_json(init_pid: u32, init_start: u64, procs: &Path) -> String {
    format!(
        r#"{{"ok":true,"session":"s1","domain":"dms-test.root","target":{{"domain":"dms-test.root","init_pid":{init_pid},"init_start":{init_start},"procs_files":[{:?}],"namespaces":["mnt","uts","ipc","net","cgroup","pid"]}}}}"#,
        procs.display().to_string()
    )
}

fn field(request: &str, key: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(request).unwrap();
    v[key].clone()
}

#[test]
fn a_refusal_fails_the_session_and_reaches_the_user() {
    if !can_run() {
        return;
    }
    let s = Setup::new();
    s.service("");
    let dmsd = server(
        &s,
        vec![Reply::Line(
            r#"{"ok":false,"kind":"PermissionDenied","error":"VO \"cms\" is banned on this node"}"#
                .into(),
        )],
    );
    let (ok, out) = s.pamtester();
    assert!(!ok, "{out}");
    assert!(
        out.contains("dms: VO \"cms\" is banned on this node"),
        "{out}"
    );
    let requests = dmsd.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(field(&requests[0], "op"), "open");
    assert_eq!(field(&requests[0], "user"), "root");
    assert_eq!(field(&requests[0], "service"), SERVICE);
}

#[test]
fn a_refusal_is_a_refusal_even_with_on_error_allow() {
    if !can_run() {
        return;
    }
    let s = Setup::new();
    s.service("on_error=allow");
    let dmsd = server(
        &s,
        vec![Reply::Line(
            r#"{"ok":false,"kind":"PermissionDenied","error":"node reserved"}"#.into(),
        )],
    );
    let (ok, out) = s.pamtester();
    assert!(!ok, "{out}");
    assert!(out.contains("dms: node reserved"), "{out}");
    assert_eq!(dmsd.requests().len(), 1);
}

#[test]
fn without_dmsd_on_error_decides() {
    if !can_run() {
        return;
    }
    let s = Setup::new();
    s.service("on_error=allow");
    let (ok, out) = s.pamtester();
    assert!(ok, "{out}");
    assert!(out.contains("successfully opened a session"), "{out}");

    s.service("");
    let (ok, out) = s.pamtester();
    assert!(!ok, "{out}");
    assert!(
        out.contains("dms: dmsd is not running (cannot connect to "),
        "{out}"
    );
}

#[test]
fn a_bad_option_fails_whatever_on_error_says() {
    if !can_run() {
        return;
    }
    let s = Setup::new();
    s.service("on_error=allow sokcet=/x");
    let (ok, out) = s.pamtester();
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "dms: bad module options in the PAM configuration: unknown option \"sokcet=/x\""
        ),
        "{out}"
    );
}

#[test]
fn a_failed_join_closes_the_session_in_dmsd() {
    if !can_run() {
        return;
    }
    let s = Setup::new();
    s.service("");
    let procs = s.path("cgroup.procs");
    std::fs::write(&procs, "").unwrap();
    // This test process as the "init", with a start time it does not have.
    let dmsd = server(
        &s,
        vec![
            Reply::Line(target_json(std::process::id(), 1, &procs)),
            Reply::Line(r#"{"ok":true}"#.into()),
        ],
    );
    let (ok, out) = s.pamtester();
    assert!(!ok, "{out}");
    assert!(out.contains("was replaced (start time"), "{out}");
    let requests = dmsd.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(field(&requests[0], "op"), "open");
    assert_eq!(field(&requests[1], "op"), "close");
    assert_eq!(field(&requests[0], "pid"), field(&requests[1], "pid"));
    assert_eq!(
        std::fs::read_to_string(&procs).unwrap(),
        "",
        "nothing joined"
    );
}

/// A valid target: this test process as the domain's init (its namespaces are the host's), a
/// regular file as the `cgroup.procs` file (it receives the "0" the module writes).
fn valid_target(s: &Setup) -> (PathBuf, String) {
    let procs = s.path("cgroup.procs");
    std::fs::write(&procs, "").unwrap();
    let me = std::process::id();
    let start = dms_join::start_time(me as i32).unwrap();
    (procs.clone(), target_json(me, start, &procs))
}

#[test]
fn a_session_joins_the_cgroups_and_closes() {
    if !can_run() {
        return;
    }
    let s = Setup::new();
    s.service("join=cgroup");
    let (procs, answer) = valid_target(&s);
    let dmsd = server(
        &s,
        vec![Reply::Line(answer), Reply::Line(r#"{"ok":true}"#.into())],
    );
    let (ok, out) = s.pamtester();
    assert!(ok, "{out}");
    assert!(
        out.contains("session has successfully been closed"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&procs).unwrap(), "0");
    let requests = dmsd.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(field(&requests[0], "op"), "open");
    assert_eq!(field(&requests[1], "op"), "close");
    assert_eq!(field(&requests[0], "pid"), field(&requests[1], "pid"));
}

#[test]
fn a_session_joins_cgroups_and_namespaces() {
    if !can_run() {
        return;
    }
    let s = Setup::new();
    s.service("");
    let (procs, answer) = valid_target(&s);
    let dmsd = server(
        &s,
        vec![Reply::Line(answer), Reply::Line(r#"{"ok":true}"#.into())],
    );
    let (ok, out) = s.pamtester();
    assert!(ok, "{out}");
    assert_eq!(std::fs::read_to_string(&procs).unwrap(), "0");
    assert_eq!(dmsd.requests().len(), 2);
}
