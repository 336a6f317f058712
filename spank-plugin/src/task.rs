//! What the plugin does in a task: ask dmsd for the job user's domain, enter it, and start the
//! task inside the domain's pid namespace.

use std::ffi::{c_int, CStr};
use std::io;

use dms_join::{JoinTarget, Namespace};
use dms_session_client::client::ask;
use dms_session_client::protocol::{Answer, ErrorKind, Request};

use crate::options::Options;
use crate::slurm::{self, Level, Spank};

/// The PAM-like service name the plugin's sessions carry in dmsd (`dmsctl session list`).
pub const SERVICE: &str = "slurm-task";

/// Why the task did not enter its domain.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// dmsd's policy says no (`PermissionDenied`): always a failure.
    Refused(String),
    /// The request cannot be made (no job user, bad options): always a failure.
    Invalid(String),
    /// dmsd cannot be asked, answered an error, or joining failed before anything changed:
    /// `on_error` decides.
    Error(String),
    /// The task entered the domain's namespaces but could not be started in its pid
    /// namespace: always a failure (the task cannot go back).
    Fatal(String),
}

/// What happened to the task.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The task runs in the domain.
    Joined {
        /// The domain.
        domain: String,
        /// dmsd's session id.
        session: String,
    },
    /// dmsd does not manage the user; the task is left alone. Why.
    Unmanaged(String),
    /// The user's domain is a libvirt guest; the task stays on the host.
    Guest(String),
}

/// The job, as far as the plugin needs it.
#[derive(Debug)]
pub struct Job {
    /// The job user's name.
    pub user: String,
    /// Job id.
    pub id: u32,
    /// Local task id (for messages).
    pub task: c_int,
}

impl Job {
    /// Reads the job of the running callback from Slurm.
    ///
    /// # Safety
    ///
    /// `spank` is the handle of the running callback.
    pub unsafe fn from_slurm(spank: Spank) -> Result<Job, Failure> {
        // SAFETY: the caller's contract.
        let (uid, id, task) = unsafe {
            (
                slurm::job_uid(spank),
                slurm::job_id(spank),
                slurm::task_id(spank).unwrap_or(-1),
            )
        };
        let uid = uid.map_err(Failure::Invalid)?;
        let id = id.map_err(Failure::Invalid)?;
        let user = user_name(uid).map_err(|e| {
            Failure::Invalid(format!("job {id}: cannot find the name of uid {uid}: {e}"))
        })?;
        Ok(Job { user, id, task })
    }
}

/// The name of a uid (`getpwuid_r`).
pub fn user_name(uid: u32) -> io::Result<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: passwd is plain data; all-zero is a valid value.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: getpwuid_r writes into `pwd` and the buffer whose length is passed; `found`
        // is NULL or points to `pwd`.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if found.is_null() || pwd.pw_name.is_null() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such user"));
        }
        // SAFETY: pw_name points into `buf`, NUL-terminated, alive here.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        return Ok(name.to_string_lossy().into_owned());
    }
}

/// The calls of one task, with its options and job for messages.
#[derive(Debug)]
pub struct Task<'a> {
    /// The plugin options.
    pub opts: &'a Options,
    /// The job.
    pub job: &'a Job,
}

impl Task<'_> {
    fn debug(&self, msg: &str) {
        if self.opts.debug {
            slurm::log(Level::Info, &self.about(msg));
        }
    }

    /// `job J task T user U: msg`.
    pub fn about(&self, msg: &str) -> String {
        format!(
            "job {} task {} user {}: {msg}",
            self.job.id, self.job.task, self.job.user
        )
    }

    fn ask(&self, req: &Request<'_>) -> Result<Answer, String> {
        let debug = |m: String| self.debug(&m);
        let debug: Option<&dyn Fn(String)> = if self.opts.debug { Some(&debug) } else { None };
        ask(&self.opts.socket, self.opts.timeout, req, debug).map_err(|e| e.to_string())
    }

    /// Closes the session dmsd opened for `pid` when the task cannot use it, and says so in
    /// the message `e` (why it cannot).
    fn take_back(&self, pid: u32, e: String) -> String {
        let close = Request::Close {
            user: &self.job.user,
            service: SERVICE,
            pid,
        };
        match self.ask(&close) {
            Ok(Answer::Ok { .. }) => e,
            Ok(Answer::Err { kind, error }) => {
                format!("{e}; closing the session in dmsd failed too: {error} ({kind})")
            }
            Err(c) => format!("{e}; closing the session in dmsd failed too: {c}"),
        }
    }

    /// Opens a session for this task's process in dmsd, enters the domain, and, when the
    /// domain has a pid namespace, forks: the child returns and becomes the task inside it,
    /// this process stays behind as its stand-in (see [`stand_in`]) and never returns.
    /// `entered` is called once the namespaces are entered (no way back from there).
    pub fn run(&self, entered: impl FnOnce()) -> Result<Outcome, Failure> {
        let pid = std::process::id();
        let job = self.job.id.to_string();
        let req = Request::Open {
            user: &self.job.user,
            service: SERVICE,
            rhost: None,
            tty: None,
            pid,
            job: Some(&job),
            proxy_pem: None,
        };
        let (session, target) = match self.ask(&req).map_err(Failure::Error)? {
            Answer::Ok {
                unmanaged: Some(why),
                target: None,
                ..
            } => return Ok(Outcome::Unmanaged(why)),
            Answer::Ok {
                guest: true,
                domain,
                ..
            } => return Ok(Outcome::Guest(domain.unwrap_or_default())),
            Answer::Ok {
                session, target, ..
            } => (session.unwrap_or_else(|| "?".into()), target),
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
        let Some(target) = target else {
            let e = format!("dmsd opened session {session} but sent no join target");
            return Err(Failure::Error(self.take_back(pid, e)));
        };
        self.debug(&format!(
            "entering the cgroups and namespaces {:?} of domain {}",
            target.namespaces, target.domain
        ));
        if let Err(e) = dms_join::join(&target) {
            return Err(Failure::Error(self.take_back(pid, e.to_string())));
        }
        entered();
        if target.namespaces.contains(&Namespace::Pid) {
            start_in_pid_namespace(&target)?;
        }
        Ok(Outcome::Joined {
            domain: target.domain,
            session,
        })
    }
}

/// Forks so that the task runs inside the domain's pid namespace (`setns` put only this
/// process's future children there). Returns in the child; the parent becomes the child's
/// stand-in and never returns.
fn start_in_pid_namespace(t: &JoinTarget) -> Result<(), Failure> {
    fork_with_stand_in().map_err(|e| {
        Failure::Fatal(format!(
            "cannot start the task in the pid namespace of domain {:?}: fork: {e}",
            t.domain
        ))
    })
}

/// Forks; returns `Ok` in the child, which goes on as the task. The calling process becomes
/// the child's [`stand_in`] and never returns. The caller must be single-threaded (a forked
/// task of slurmstepd, or a process forked for a test).
pub fn fork_with_stand_in() -> io::Result<()> {
    // SAFETY: fork in a single-threaded process (the caller's contract); the child continues
    // with the caller's code, as the process it was forked from would have.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(io::Error::last_os_error());
    }
    if child == 0 {
        return Ok(());
    }
    // Whatever happens in the stand-in, it never returns into the caller's code.
    let _ = std::panic::catch_unwind(|| stand_in(child));
    // SAFETY: _exit ends the process at once, without running anything of slurmstepd's.
    unsafe { libc::_exit(1) }
}

/// How a waited-for child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(c_int),
    /// It was killed by this signal.
    Signal(c_int),
}

/// How a `waitpid` status ended the child, or `None` when it did not end (stopped, continued).
pub fn decode(status: c_int) -> Option<Exit> {
    if libc::WIFEXITED(status) {
        Some(Exit::Code(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(Exit::Signal(libc::WTERMSIG(status)))
    } else {
        None
    }
}

/// The process Slurm started as the task, once the real task runs as its child in the
/// domain's pid namespace: slurmstepd knows, signals and waits for this pid.
///
/// It keeps no fd (so the task's pipes and sockets see their ends when the task closes them)
/// and blocks every signal it can: the step's signals reach the task directly, as Slurm sends
/// them to every process of the step (proctrack/linuxproc: the whole process tree; the stand-in
/// must outlive the task so that the task stays in that tree). It waits for the task and ends
/// the same way: the same exit code, or killed by the same signal, so slurmstepd and srun report
/// the task's own status. Only async-signal-safe calls: the process is a fork of slurmstepd.
fn stand_in(child: libc::pid_t) -> ! {
    // SAFETY: plain system calls on this process's own state; `set` and `status` live on this
    // stack frame; nothing here allocates or touches slurmstepd's data.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) != 0 {
            let mut lim: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur.min(1 << 20) as c_int
            } else {
                1024
            };
            for fd in 0..max {
                libc::close(fd);
            }
        }
        let mut status: c_int = 0;
        let exit = loop {
            let r = libc::waitpid(child, &mut status, 0);
            if r == child {
                if let Some(e) = decode(status) {
                    break e;
                }
            } else if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                libc::_exit(1);
            }
        };
        match exit {
            Exit::Code(c) => libc::_exit(c),
            Exit::Signal(sig) => {
                // Die of the same signal, without a core file of the stand-in.
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                libc::signal(sig, libc::SIG_DFL);
                let mut one: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut one);
                libc::sigaddset(&mut one, sig);
                libc::kill(libc::getpid(), sig);
                libc::sigprocmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
                libc::_exit(128 + sig)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_decode() {
        assert_eq!(decode(0), Some(Exit::Code(0)));
        assert_eq!(decode(3 << 8), Some(Exit::Code(3)));
        assert_eq!(decode(255 << 8), Some(Exit::Code(255)));
        assert_eq!(decode(libc::SIGKILL), Some(Exit::Signal(libc::SIGKILL)));
        // Killed with a core dump (0x80).
        assert_eq!(
            decode(libc::SIGSEGV | 0x80),
            Some(Exit::Signal(libc::SIGSEGV))
        );
        // Stopped by SIGSTOP, continued: not an end.
        assert_eq!(decode((libc::SIGSTOP << 8) | 0x7f), None);
        assert_eq!(decode(0xffff), None);
    }

    #[test]
    fn user_names_resolve() {
        assert_eq!(user_name(0).unwrap(), "root");
        assert!(user_name(4_000_000_000).is_err());
    }
}
