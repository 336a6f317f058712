//! The built `pam_dms.so` loaded by real libpam into this (multi-threaded) test process, with
//! `pam_start_confdir` reading a service file from a temp dir, against a fake dmsd thread.
//!
//! The test harness runs tests on threads, so this process is multi-threaded, like slurmstepd:
//! the module must enter only the domain's cgroups even with `join=all`. The "domain init" is
//! this process and the `cgroup.procs` file a regular temp file, so nothing here needs root.
#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::{open_fds, FakeDmsd, Reply};

const SERVICE: &str = "dms-test-libpam";
const PAM_SUCCESS: c_int = 0;
const PAM_SESSION_ERR: c_int = 14;
const PAM_ERROR_MSG: c_int = 3;
const PAM_TTY: c_int = 3;
const PAM_RHOST: c_int = 4;

#[repr(C)]
struct PamMessage {
    msg_style: c_int,
    msg: *const c_char,
}

#[repr(C)]
struct PamResponse {
    resp: *mut c_char,
    resp_retcode: c_int,
}

type ConvFn =
    extern "C" fn(c_int, *mut *const PamMessage, *mut *mut PamResponse, *mut c_void) -> c_int;

#[repr(C)]
struct PamConv {
    conv: ConvFn,
    appdata: *mut c_void,
}

#[repr(C)]
struct PamHandleT {
    _private: [u8; 0],
}

#[link(name = "pam")]
extern "C" {
    fn pam_start_confdir(
        service: *const c_char,
        user: *const c_char,
        conv: *const PamConv,
        confdir: *const c_char,
        pamh: *mut *mut PamHandleT,
    ) -> c_int;
    fn pam_open_session(pamh: *mut PamHandleT, flags: c_int) -> c_int;
    fn pam_close_session(pamh: *mut PamHandleT, flags: c_int) -> c_int;
    fn pam_end(pamh: *mut PamHandleT, status: c_int) -> c_int;
    fn pam_putenv(pamh: *mut PamHandleT, name_value: *const c_char) -> c_int;
    fn pam_set_item(pamh: *mut PamHandleT, item: c_int, value: *const c_void) -> c_int;
}

/// Collects PAM_ERROR_MSG texts into the `Mutex<Vec<String>>` behind `appdata`.
extern "C" fn collect(
    n: c_int,
    msgs: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    appdata: *mut c_void,
) -> c_int {
    // SAFETY: libpam passes n messages and a place for the response array; appdata is the
    // Mutex this test put into the conversation and keeps alive during the PAM calls.
    unsafe {
        let sink = &*(appdata as *const Mutex<Vec<String>>);
        for i in 0..n as usize {
            let m = &**msgs.add(i);
            if m.msg_style == PAM_ERROR_MSG {
                let text = CStr::from_ptr(m.msg).to_string_lossy().into_owned();
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(text);
            }
        }
        // The module frees the array (and NULL answers) with free().
        *resp = libc::calloc(n as usize, std::mem::size_of::<PamResponse>()).cast();
    }
    PAM_SUCCESS
}

static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn module() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [
        deps.join("libpam_dms.so"),
        deps.parent().unwrap().join("libpam_dms.so"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .expect("the built libpam_dms.so next to the test binary")
}

/// The name of the user this process runs as.
fn me() -> String {
    // SAFETY: getpwuid of our own euid; the result is copied before any other passwd call
    // (tests hold LOCK).
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        assert!(!pw.is_null());
        CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned()
    }
}

/// One PAM transaction through libpam.
struct Pam {
    h: *mut PamHandleT,
    _conv: Box<PamConv>,
    messages: Box<Mutex<Vec<String>>>,
}

impl Pam {
    fn start(confdir: &Path, user: &str) -> Pam {
        let messages = Box::new(Mutex::new(Vec::new()));
        let conv = Box::new(PamConv {
            conv: collect,
            appdata: std::ptr::from_ref(&*messages).cast_mut().cast(),
        });
        let service = CString::new(SERVICE).unwrap();
        let user = CString::new(user).unwrap();
        let dir = CString::new(confdir.to_str().unwrap()).unwrap();
        let mut h = std::ptr::null_mut();
        // SAFETY: NUL-terminated strings, a conversation that outlives the handle (both in
        // the returned Pam), and a place for the handle.
        let r = unsafe {
            pam_start_confdir(
                service.as_ptr(),
                user.as_ptr(),
                &*conv,
                dir.as_ptr(),
                &mut h,
            )
        };
        assert_eq!(r, PAM_SUCCESS);
        Pam {
            h,
            _conv: conv,
            messages,
        }
    }

    fn putenv(&self, kv: &str) {
        let kv = CString::new(kv).unwrap();
        // SAFETY: a live handle and a NUL-terminated string (libpam copies it).
        assert_eq!(unsafe { pam_putenv(self.h, kv.as_ptr()) }, PAM_SUCCESS);
    }

    fn set_item(&self, item: c_int, value: &str) {
        let v = CString::new(value).unwrap();
        // SAFETY: a live handle and a NUL-terminated string item (libpam copies it).
        let r = unsafe { pam_set_item(self.h, item, v.as_ptr().cast()) };
        assert_eq!(r, PAM_SUCCESS);
    }

    fn open(&self) -> c_int {
        // SAFETY: a live handle.
        unsafe { pam_open_session(self.h, 0) }
    }

    fn close(&self) -> c_int {
        // SAFETY: a live handle.
        unsafe { pam_close_session(self.h, 0) }
    }

    fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }
}

impl Drop for Pam {
    fn drop(&mut self) {
        // SAFETY: the handle from pam_start, ended once.
        unsafe { pam_end(self.h, PAM_SUCCESS) };
    }
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(options: &str) -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("dms-test-libpam.")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("pam.d")).unwrap();
        std::fs::write(
            dir.path().join("pam.d").join(SERVICE),
            format!(
                "session required {} socket={} timeout=3 debug {options}\n",
                module().display(),
                dir.path().join("pam.sock").display()
            ),
        )
        .unwrap();
        Setup { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap()
}

#[test]
fn a_multi_threaded_caller_joins_only_the_cgroups() {
    let _g = lock();
    let s = Setup::new("join=all");
    let procs = s.path("cgroup.procs");
    std::fs::write(&procs, "").unwrap();
    let proxy = s.path("x509up");
    std::fs::write(&proxy, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
    std::fs::set_permissions(&proxy, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pid = std::process::id();
    let start = dms_join::start_time(pid as i32).unwrap();
    let answer = format!(
        r#"{{"ok":true,"session":"s7","domain":"dms-test.d","target":{{"domain":"dms-test.d","init_pid":{pid},"init_start":{start},"procs_files":[{:?}],"namespaces":["mnt","uts","ipc","net","cgroup","pid"]}}}}"#,
        procs.display().to_string()
    );
    let user = me();

    let before = open_fds();
    {
        let dmsd = FakeDmsd::start(
            &s.path("pam.sock"),
            vec![Reply::Line(answer), Reply::Line(r#"{"ok":true}"#.into())],
            Duration::from_secs(20),
        );
        let pam = Pam::start(&s.path("pam.d"), &user);
        pam.putenv("SLURM_JOB_ID=77");
        pam.putenv(&format!("X509_USER_PROXY={}", proxy.display()));
        pam.set_item(PAM_RHOST, "198.18.0.1");
        pam.set_item(PAM_TTY, "/dev/pts/9");
        assert_eq!(pam.open(), PAM_SUCCESS, "{:?}", pam.messages());
        assert_eq!(std::fs::read_to_string(&procs).unwrap(), "0");
        assert_eq!(pam.close(), PAM_SUCCESS, "{:?}", pam.messages());
        assert!(pam.messages().is_empty(), "{:?}", pam.messages());
        drop(pam);

        let requests = dmsd.requests();
        assert_eq!(requests.len(), 2, "{requests:?}");
        let open = json(&requests[0]);
        assert_eq!(open["op"], "open");
        assert_eq!(open["user"], user.as_str());
        assert_eq!(open["service"], SERVICE);
        assert_eq!(open["rhost"], "198.18.0.1");
        assert_eq!(open["tty"], "/dev/pts/9");
        assert_eq!(open["pid"], pid);
        assert_eq!(open["job"], "77");
        assert_eq!(open["proxy_pem"], "-----BEGIN CERTIFICATE-----\nMIIB\n");
        let close = json(&requests[1]);
        assert_eq!(
            close,
            serde_json::json!({"op":"close","user":user,"service":SERVICE,"pid":pid})
        );
    }
    assert_eq!(open_fds(), before, "fds leaked");
}

#[test]
fn an_unusable_proxy_fails_the_session_before_asking_dmsd() {
    let _g = lock();
    let s = Setup::new("on_error=allow");
    let proxy = s.path("x509up");
    std::fs::write(&proxy, "pem").unwrap();
    std::fs::set_permissions(&proxy, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A server for no connection: a connect would find a socket file nobody listens on.
    let dmsd = FakeDmsd::start(&s.path("pam.sock"), vec![], Duration::from_secs(1));
    let pam = Pam::start(&s.path("pam.d"), &me());
    pam.putenv(&format!("X509_USER_PROXY={}", proxy.display()));
    assert_eq!(pam.open(), PAM_SESSION_ERR);
    assert_eq!(
        pam.messages(),
        vec![format!(
            "dms: proxy file {} is readable or writable by group or others (mode 0644; it must be 0600 or 0400)",
            proxy.display()
        )]
    );
    assert!(dmsd.requests().is_empty());
}

#[test]
fn an_error_answer_fails_the_session_or_is_let_through() {
    let _g = lock();
    for (options, want) in [("", PAM_SESSION_ERR), ("on_error=allow", PAM_SUCCESS)] {
        let s = Setup::new(options);
        let dmsd = FakeDmsd::start(
            &s.path("pam.sock"),
            vec![Reply::Line(
                r#"{"ok":false,"kind":"Failed","error":"cgroup mkdir failed"}"#.into(),
            )],
            Duration::from_secs(20),
        );
        let pam = Pam::start(&s.path("pam.d"), &me());
        assert_eq!(pam.open(), want, "{options}");
        let shown = pam.messages();
        if want == PAM_SUCCESS {
            assert!(shown.is_empty(), "{shown:?}");
        } else {
            assert_eq!(
                shown,
                vec!["dms: dmsd could not open a session: cgroup mkdir failed (Failed)"]
            );
        }
        assert_eq!(dmsd.requests().len(), 1);
    }
}
