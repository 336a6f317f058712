//! The PAM entry points (`pam_sm_*`) and what they do.
//!
//! Written by hand rather than with `pam::pam_hooks!`: that macro turns a panic into
//! `PAM_ABORT`, while this module answers `PAM_SYSTEM_ERR` (or `PAM_SUCCESS` for sessions
//! with `on_error=allow`), and needs the module options to decide.

use std::cell::Cell;
use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use dms_join::JoinTarget;
use dms_session_client::options::c_arguments;
use pam::constants::{PamResultCode, PAM_ERROR_MSG, PAM_SILENT};
use pam::conv::Conv;
use pam::items::{RHost, Service, Tty, User};
use pam::module::PamHandle;

use crate::client::ask;
use crate::options::{self, JoinMode, OnError, Options};
use crate::protocol::{Answer, ErrorKind, Request};
use crate::syslog::{self, LOG_DEBUG, LOG_ERR, LOG_INFO, LOG_NOTICE, LOG_WARNING};
use crate::{job, proxy};

#[link(name = "pam")]
unsafe extern "C" {
    fn pam_getenv(pamh: *mut PamHandle, name: *const c_char) -> *const c_char;
}

/// Which PAM function runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Account,
    OpenSession,
    CloseSession,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Account => "account",
            Op::OpenSession => "open_session",
            Op::CloseSession => "close_session",
        }
    }

    /// What a failure that `on_error` does not excuse returns.
    fn failure(self) -> PamResultCode {
        match self {
            Op::Account => PamResultCode::PAM_PERM_DENIED,
            Op::OpenSession | Op::CloseSession => PamResultCode::PAM_SESSION_ERR,
        }
    }

    /// What bad module options return.
    fn config_error(self) -> PamResultCode {
        match self {
            Op::Account => PamResultCode::PAM_PERM_DENIED,
            Op::OpenSession | Op::CloseSession => PamResultCode::PAM_SERVICE_ERR,
        }
    }
}

/// Why a call did not succeed.
#[derive(Debug)]
enum Failure {
    /// dmsd's policy says no (`PermissionDenied`, or `NotFound` for `account`): always refused.
    Refused(String),
    /// The request cannot be made (no user, an unusable proxy file): always a failure.
    Invalid(String),
    /// dmsd cannot be asked, or answered an error, or joining failed: `on_error` decides.
    Error(String),
}

/// The context of one call: the handle, and who the messages are about.
struct Call<'a> {
    pamh: &'a mut PamHandle,
    op: Op,
    silent: bool,
    debug: bool,
    service: String,
    user: Option<String>,
}

impl<'a> Call<'a> {
    fn new(pamh: &'a mut PamHandle, op: Op, flags: c_int) -> Call<'a> {
        let service = item_string::<Service>(pamh).unwrap_or_else(|| "?".into());
        let user = pamh
            .get_item::<User>()
            .ok()
            .flatten()
            .map(|u| u.0.to_string_lossy().into_owned());
        Call {
            pamh,
            op,
            silent: (flags as u32) & PAM_SILENT != 0,
            debug: false,
            service,
            user,
        }
    }

    fn log(&self, priority: c_int, msg: &str) {
        syslog::log(
            priority,
            &format!(
                "service={} user={} op={}: {msg}",
                self.service,
                self.user.as_deref().unwrap_or("?"),
                self.op.name()
            ),
        );
    }

    fn debug(&self, msg: &str) {
        if self.debug {
            self.log(LOG_DEBUG, msg);
        }
    }

    /// Logs the message and shows it to the user (`dms: ...`) when the application has a
    /// conversation and did not ask for silence.
    fn tell(&self, priority: c_int, msg: &str) {
        self.log(priority, msg);
        if self.silent {
            return;
        }
        if let Ok(Some(conv)) = self.pamh.get_item::<Conv>() {
            // A failing conversation changes nothing: the log has the message.
            let _ = conv.send(PAM_ERROR_MSG, &format!("dms: {msg}"));
        }
    }

    /// PAM_USER, required.
    fn user(&self) -> Result<String, Failure> {
        let user = self
            .pamh
            .get_item::<User>()
            .ok()
            .flatten()
            .ok_or_else(|| Failure::Invalid("PAM_USER is not set".into()))?;
        let user = user
            .0
            .to_str()
            .map_err(|_| Failure::Invalid(format!("PAM_USER {:?} is not valid UTF-8", user.0)))?;
        if user.is_empty() {
            return Err(Failure::Invalid("PAM_USER is empty".into()));
        }
        Ok(user.to_string())
    }

    /// A variable of the PAM environment (`pam_getenv`).
    fn getenv(&mut self, name: &CStr) -> Option<String> {
        let pamh: *mut PamHandle = &mut *self.pamh;
        // SAFETY: a live handle that PAM gave this call and a NUL-terminated name; the result
        // is NULL or a NUL-terminated string owned by PAM, copied before any other PAM call.
        unsafe {
            let p = pam_getenv(pamh, name.as_ptr());
            (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
        }
    }

    fn ask(&self, opts: &Options, req: &Request<'_>) -> Result<Answer, String> {
        let debug = |m: String| self.debug(&m);
        let debug: Option<&dyn Fn(String)> = if self.debug { Some(&debug) } else { None };
        ask(&opts.socket, opts.timeout, req, debug).map_err(|e| e.to_string())
    }
}

/// A string item, lossily decoded.
fn item_string<'a, T>(pamh: &'a PamHandle) -> Option<String>
where
    T: pam::items::Item<'a> + std::ops::Deref<Target = &'a CStr>,
{
    let v = pamh.get_item::<T>().ok().flatten()?;
    Some(v.to_string_lossy().into_owned())
}

/// Runs one entry point: never unwinds into the caller.
///
/// # Safety
///
/// `pamh` is NULL or the handle PAM passed to the entry point; when `argc > 0`, `argv` points
/// to `argc` NUL-terminated strings; both stay valid during the call.
unsafe fn entry(
    op: Op,
    pamh: *mut PamHandle,
    flags: c_int,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    guarded(op, |allow| {
        // SAFETY: PAM passes a valid handle (or NULL, refused here) for the call's duration.
        let Some(pamh) = (unsafe { pamh.as_mut() }) else {
            syslog::log(
                LOG_ERR,
                &format!("{}: called without a PAM handle", op.name()),
            );
            return PamResultCode::PAM_SYSTEM_ERR;
        };
        // SAFETY: argc/argv as PAM passes them (the caller's contract).
        let args = unsafe { c_arguments(argc, argv) };
        run(op, pamh, flags, args, allow)
    })
}

/// Runs `f` under `catch_unwind`. A panic becomes `PAM_SYSTEM_ERR`, or `PAM_SUCCESS` for
/// sessions when `f` had set `allow` (the options said `on_error=allow`), with a log line.
fn guarded(op: Op, f: impl FnOnce(&Cell<bool>) -> PamResultCode) -> c_int {
    let allow = Cell::new(false);
    let result = catch_unwind(AssertUnwindSafe(|| f(&allow)));
    match result {
        Ok(code) => code as c_int,
        Err(payload) => {
            let allowed = allow.get() && op != Op::Account;
            let what = dms_session_client::panic_message(payload);
            let _ = catch_unwind(|| {
                syslog::log(
                    LOG_ERR,
                    &format!(
                        "{}: internal error (panic: {what}); {}",
                        op.name(),
                        if allowed {
                            "letting the session through (on_error=allow)"
                        } else {
                            "failing"
                        }
                    ),
                )
            });
            if allowed {
                PamResultCode::PAM_SUCCESS as c_int
            } else {
                PamResultCode::PAM_SYSTEM_ERR as c_int
            }
        }
    }
}

fn run(
    op: Op,
    pamh: &mut PamHandle,
    flags: c_int,
    args: Option<Vec<&[u8]>>,
    allow: &Cell<bool>,
) -> PamResultCode {
    let mut call = Call::new(pamh, op, flags);
    let opts = match args {
        None => Err("PAM passed a NULL module argument".to_string()),
        Some(a) => options::parse_bytes(&a).map_err(|e| e.to_string()),
    };
    let opts = match opts {
        Ok(o) => o,
        Err(e) => {
            call.tell(
                LOG_ERR,
                &format!("bad module options in the PAM configuration: {e}"),
            );
            return op.config_error();
        }
    };
    allow.set(opts.on_error == OnError::Allow);
    call.debug = opts.debug;
    let outcome = match op {
        Op::Account => account(&call, &opts),
        Op::OpenSession => open_session(&mut call, &opts),
        Op::CloseSession => close_session(&call, &opts),
    };
    match outcome {
        Ok(()) => PamResultCode::PAM_SUCCESS,
        Err(Failure::Refused(m)) => {
            call.tell(LOG_NOTICE, &m);
            PamResultCode::PAM_PERM_DENIED
        }
        Err(Failure::Invalid(m)) => {
            call.tell(LOG_ERR, &m);
            op.failure()
        }
        Err(Failure::Error(m)) => match opts.on_error {
            OnError::Allow => {
                call.log(
                    LOG_WARNING,
                    &format!("{m}; letting it through (on_error=allow)"),
                );
                PamResultCode::PAM_SUCCESS
            }
            OnError::Deny => {
                call.tell(LOG_ERR, &m);
                op.failure()
            }
        },
    }
}

fn account(call: &Call<'_>, opts: &Options) -> Result<(), Failure> {
    let user = call.user()?;
    let rhost = item_string::<RHost>(call.pamh);
    let req = Request::Account {
        user: &user,
        service: &call.service,
        rhost: rhost.as_deref(),
    };
    match call.ask(opts, &req).map_err(Failure::Error)? {
        Answer::Ok { .. } => Ok(()),
        Answer::Err {
            kind: ErrorKind::PermissionDenied | ErrorKind::NotFound,
            error,
        } => Err(Failure::Refused(error)),
        Answer::Err { kind, error } => Err(Failure::Error(format!(
            "dmsd could not check the account: {error} ({kind})"
        ))),
    }
}

fn open_session(call: &mut Call<'_>, opts: &Options) -> Result<(), Failure> {
    let user = call.user()?;
    let rhost = item_string::<RHost>(call.pamh);
    let tty = item_string::<Tty>(call.pamh);
    let pid = std::process::id();
    let job = job::job_id(call.getenv(c"SLURM_JOB_ID"));
    let proxy = match call.getenv(c"X509_USER_PROXY") {
        Some(path) if !path.is_empty() => {
            let uid = proxy::lookup_uid(&user).map_err(|why| {
                Failure::Invalid(
                    proxy::ProxyError::User {
                        path: path.clone(),
                        user: user.clone(),
                        why,
                    }
                    .to_string(),
                )
            })?;
            let pem = proxy::read_proxy(&path, &user, uid)
                .map_err(|e| Failure::Invalid(e.to_string()))?;
            call.debug(&format!("read proxy file {path} ({} bytes)", pem.len()));
            Some(pem)
        }
        _ => None,
    };
    let req = Request::Open {
        user: &user,
        service: &call.service,
        rhost: rhost.as_deref(),
        tty: tty.as_deref(),
        pid,
        job: job.as_deref(),
        proxy_pem: proxy.as_deref(),
    };
    let (session, domain, target) = match call.ask(opts, &req).map_err(Failure::Error)? {
        Answer::Ok {
            unmanaged: Some(why),
            target: None,
            ..
        } => {
            call.log(LOG_INFO, &format!("session left alone: {why}"));
            return Ok(());
        }
        Answer::Ok {
            guest: true,
            session,
            domain,
            ..
        } => {
            call.log(
                LOG_INFO,
                &format!(
                    "session {} recorded for guest domain {} (the session stays on the host)",
                    session.unwrap_or_default(),
                    domain.unwrap_or_default()
                ),
            );
            return Ok(());
        }
        Answer::Ok {
            session,
            domain,
            target,
            ..
        } => (session, domain, target),
        Answer::Err {
            kind: ErrorKind::PermissionDenied,
            error,
        } => return Err(Failure::Refused(error)),
        Answer::Err { kind, error } => {
            return Err(Failure::Error(format!(
                "dmsd could not open a session: {error} ({kind})"
            )))
        }
    };
    let session = session.unwrap_or_else(|| "?".into());
    let joined = match &target {
        None => Err(format!(
            "dmsd opened session {session} but sent no join target"
        )),
        Some(t) => enter(call, opts, t).map_err(|e| e.to_string()),
    };
    if let Err(e) = joined {
        // dmsd recorded a session that does not exist: take it back.
        let close = Request::Close {
            user: &user,
            service: &call.service,
            pid,
        };
        let msg = match call.ask(opts, &close) {
            Ok(Answer::Ok { .. }) => e,
            Ok(Answer::Err { kind, error }) => {
                format!("{e}; closing the session in dmsd failed too: {error} ({kind})")
            }
            Err(c) => format!("{e}; closing the session in dmsd failed too: {c}"),
        };
        return Err(Failure::Error(msg));
    }
    call.log(
        LOG_INFO,
        &format!(
            "session {session} opened in domain {} for pid {pid}{}",
            domain
                .or_else(|| target.map(|t| t.domain))
                .unwrap_or_default(),
            job.map(|j| format!(", job {j}")).unwrap_or_default()
        ),
    );
    Ok(())
}

/// Moves this process into the domain: cgroups and namespaces, or only the cgroups when
/// `join=cgroup`, when the process has more than one thread (slurmstepd), or when the target
/// has no namespaces.
fn enter(call: &Call<'_>, opts: &Options, t: &JoinTarget) -> Result<(), dms_join::JoinError> {
    let why_not_namespaces = cgroups_only(opts.join, t, || dms_join::thread_count().ok());
    match why_not_namespaces {
        Some(why) => {
            call.debug(&format!(
                "entering only the cgroups of domain {}; namespaces skipped: {why}",
                t.domain
            ));
            dms_join::join_cgroups(t)
        }
        None => {
            call.debug(&format!(
                "entering the cgroups and namespaces of domain {}",
                t.domain
            ));
            dms_join::join(t)
        }
    }
}

/// Why the session enters only the domain's cgroups, or `None` to enter its namespaces too.
fn cgroups_only(
    mode: JoinMode,
    t: &JoinTarget,
    threads: impl FnOnce() -> Option<usize>,
) -> Option<String> {
    if mode == JoinMode::Cgroup {
        return Some("join=cgroup".into());
    }
    if t.namespaces.is_empty() {
        return Some("the domain has no namespaces".into());
    }
    match threads() {
        Some(n) if n > 1 => Some(format!(
            "this process has {n} threads (e.g. slurmstepd), and a multi-threaded process \
             cannot enter a mount namespace"
        )),
        // One thread, or unknown: dms_join::join checks again and says what is wrong.
        _ => None,
    }
}

fn close_session(call: &Call<'_>, opts: &Options) -> Result<(), Failure> {
    let user = call.user()?;
    let pid = std::process::id();
    let req = Request::Close {
        user: &user,
        service: &call.service,
        pid,
    };
    match call.ask(opts, &req).map_err(Failure::Error)? {
        Answer::Ok { .. } => {
            call.log(LOG_INFO, &format!("session of pid {pid} closed"));
            Ok(())
        }
        Answer::Err { kind, error } => Err(Failure::Error(format!(
            "dmsd could not close the session: {error} ({kind})"
        ))),
    }
}

macro_rules! entry_point {
    ($(#[$doc:meta])* $name:ident => $op:expr) => {
        $(#[$doc])*
        ///
        /// # Safety
        ///
        /// Called by libpam with its handle and the module arguments of the pam.d line.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            pamh: *mut PamHandle,
            flags: c_int,
            argc: c_int,
            argv: *const *const c_char,
        ) -> c_int {
            // SAFETY: the arguments come from libpam as documented for pam_sm_* functions.
            unsafe { entry($op, pamh, flags, argc, argv) }
        }
    };
}

entry_point!(
    /// Account management: may the user log in now (`account` request)?
    pam_sm_acct_mgmt => Op::Account
);
entry_point!(
    /// Opens a session: asks dmsd for the user's domain and moves this process into it.
    pam_sm_open_session => Op::OpenSession
);
entry_point!(
    /// Closes a session (`close` request).
    pam_sm_close_session => Op::CloseSession
);

macro_rules! ignored {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[no_mangle]
        pub extern "C" fn $name(
            _pamh: *mut PamHandle,
            _flags: c_int,
            _argc: c_int,
            _argv: *const *const c_char,
        ) -> c_int {
            // Nothing here can panic; the guard keeps the rule "no unwinding into the host"
            // visible for every entry point.
            catch_unwind(|| PamResultCode::PAM_IGNORE).unwrap_or(PamResultCode::PAM_SYSTEM_ERR)
                as c_int
        }
    };
}

ignored!(
    /// Authentication is not this module's job: `PAM_IGNORE`.
    pam_sm_authenticate
);
ignored!(
    /// No credentials to set: `PAM_IGNORE`.
    pam_sm_setcred
);
ignored!(
    /// No tokens to change: `PAM_IGNORE`.
    pam_sm_chauthtok
);

#[cfg(test)]
mod tests {
    use super::*;

    fn code(c: PamResultCode) -> c_int {
        c as c_int
    }

    #[test]
    fn panics_do_not_unwind_into_the_host() {
        for op in [Op::Account, Op::OpenSession, Op::CloseSession] {
            let r = guarded(op, |_| panic!("boom"));
            assert_eq!(r, code(PamResultCode::PAM_SYSTEM_ERR));
            let r = guarded(op, |allow| {
                allow.set(true);
                std::panic::panic_any(42_u8)
            });
            let want = if op == Op::Account {
                PamResultCode::PAM_SYSTEM_ERR
            } else {
                PamResultCode::PAM_SUCCESS
            };
            assert_eq!(r, code(want), "{op:?}");
        }
        assert_eq!(
            guarded(Op::OpenSession, |_| PamResultCode::PAM_PERM_DENIED),
            code(PamResultCode::PAM_PERM_DENIED)
        );
    }

    #[test]
    fn multi_threaded_callers_and_join_cgroup_enter_only_cgroups() {
        let mut t = JoinTarget {
            domain: "d".into(),
            init_pid: 1,
            init_start: 1,
            procs_files: vec![],
            namespaces: dms_join::Namespace::DOMAIN.to_vec(),
        };
        assert_eq!(cgroups_only(JoinMode::All, &t, || Some(1)), None);
        assert_eq!(cgroups_only(JoinMode::All, &t, || None), None);
        let why = cgroups_only(JoinMode::All, &t, || Some(4)).unwrap_or_default();
        assert!(why.starts_with("this process has 4 threads"), "{why}");
        assert_eq!(
            cgroups_only(JoinMode::Cgroup, &t, || Some(1)).as_deref(),
            Some("join=cgroup")
        );
        t.namespaces.clear();
        assert_eq!(
            cgroups_only(JoinMode::All, &t, || Some(1)).as_deref(),
            Some("the domain has no namespaces")
        );
    }

    #[test]
    fn a_null_handle_is_refused() {
        // SAFETY: a NULL handle and no arguments: refused before anything is read.
        unsafe {
            assert_eq!(
                pam_sm_open_session(std::ptr::null_mut(), 0, 0, std::ptr::null()),
                code(PamResultCode::PAM_SYSTEM_ERR)
            );
            assert_eq!(
                pam_sm_acct_mgmt(std::ptr::null_mut(), 0, 0, std::ptr::null()),
                code(PamResultCode::PAM_SYSTEM_ERR)
            );
        }
        assert_eq!(
            pam_sm_authenticate(std::ptr::null_mut(), 0, 0, std::ptr::null()),
            code(PamResultCode::PAM_IGNORE)
        );
        assert_eq!(
            pam_sm_setcred(std::ptr::null_mut(), 0, 0, std::ptr::null()),
            code(PamResultCode::PAM_IGNORE)
        );
        assert_eq!(
            pam_sm_chauthtok(std::ptr::null_mut(), 0, 0, std::ptr::null()),
            code(PamResultCode::PAM_IGNORE)
        );
    }
}
