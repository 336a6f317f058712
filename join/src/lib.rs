//! Entering a running DMS container domain from the calling process.
//!
//! A container domain is a set of cgroups plus the namespaces held by the domain's init process.
//! [`join`] moves the **calling process** into both: it writes itself into the domain's
//! `cgroup.procs` files (on cgroup v1 the `tasks` file beside each, which moves its one thread
//! without the kernel's global lock), then enters the init's namespaces with one
//! `setns(pidfd, flags)`.
//! This is what `pam_dms.so` does before the user's shell starts, and what `dms-enter` does
//! for scripts. [`join_cgroups`] moves the caller into the cgroups only, for multi-threaded
//! callers such as Slurm's `slurmstepd` (and `pam_dms.so join=cgroup`).
//!
//! # Preconditions
//!
//! - The caller is **single-threaded**: the kernel refuses to move a multi-threaded process into
//!   another mount namespace. [`join`] checks this first and changes nothing when it fails.
//! - The caller has `CAP_SYS_ADMIN` and `CAP_SYS_CHROOT` (in practice: runs as root), and may
//!   write the domain's `cgroup.procs` files.
//! - The **pid namespace applies to children** created after the call; the caller itself keeps
//!   its pid. Fork (and exec the user's program in the child) to run inside it.
//! - In a domain with a **user namespace** (policy `userns`), the caller enters it last: its
//!   ids stay the same (every id maps onto itself) but its capabilities hold only inside, so
//!   it can still switch users (as sshd, su and slurmstepd do after the PAM session opens) but
//!   no longer mount, configure the network or change the hostname. It also gets
//!   `no_new_privs`, inherited by everything it starts: setuid programs do not raise
//!   privileges in such a domain. The caller must not be chrooted.
//! - The working directory is restored by path after entering the mount namespace (the domain
//!   sees the host filesystem, except for its private paths); when that fails it is `/`.
//!
//! The only partial outcome: if `setns` fails after the cgroup move (which the checks before it
//! make unlikely), the process stays in the domain's cgroups — more limited, never less.
//!
//! The library has no threads, no runtime and no allocation after the checks, so it is safe to
//! call from PAM modules loaded into sshd or su.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A namespace a domain's init holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    /// Mount namespace (`mnt`).
    Mnt,
    /// Hostname.
    Uts,
    /// System V IPC and POSIX message queues.
    Ipc,
    /// Network.
    Net,
    /// cgroup namespace (rooted at the domain's cgroup).
    Cgroup,
    /// Pid namespace (takes effect for children).
    Pid,
    /// User namespace (only when the policy asks for one).
    User,
}

impl Namespace {
    /// Every namespace a container domain has, in the order `/proc/PID/ns` names them.
    pub const DOMAIN: [Namespace; 6] = [
        Namespace::Mnt,
        Namespace::Uts,
        Namespace::Ipc,
        Namespace::Net,
        Namespace::Cgroup,
        Namespace::Pid,
    ];

    /// The `CLONE_NEW*` flag.
    pub fn clone_flag(self) -> libc::c_int {
        match self {
            Namespace::Mnt => libc::CLONE_NEWNS,
            Namespace::Uts => libc::CLONE_NEWUTS,
            Namespace::Ipc => libc::CLONE_NEWIPC,
            Namespace::Net => libc::CLONE_NEWNET,
            Namespace::Cgroup => libc::CLONE_NEWCGROUP,
            Namespace::Pid => libc::CLONE_NEWPID,
            Namespace::User => libc::CLONE_NEWUSER,
        }
    }

    /// The file name under `/proc/PID/ns/`.
    pub fn proc_name(self) -> &'static str {
        match self {
            Namespace::Mnt => "mnt",
            Namespace::Uts => "uts",
            Namespace::Ipc => "ipc",
            Namespace::Net => "net",
            Namespace::Cgroup => "cgroup",
            Namespace::Pid => "pid",
            Namespace::User => "user",
        }
    }
}

/// The namespaces of a domain whose init is `pid`: [`Namespace::DOMAIN`], plus
/// [`Namespace::User`] when the init's user namespace is not the caller's (policy `userns`).
/// When `/proc` cannot tell, the user namespace is included, so that entering fails rather
/// than leaving the caller with more privileges than the domain's processes.
pub fn namespaces_of(pid: i32) -> Vec<Namespace> {
    let mut all = Namespace::DOMAIN.to_vec();
    let ns = |p: String| {
        std::fs::metadata(p).map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        })
    };
    match (
        ns(format!("/proc/{pid}/ns/user")),
        ns("/proc/self/ns/user".into()),
    ) {
        (Ok(theirs), Ok(ours)) if theirs == ours => {}
        _ => all.push(Namespace::User),
    }
    all
}

/// Everything needed to enter a domain; `dmsd` hands it out (`dmsctl domain join-info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTarget {
    /// The domain's name (for messages).
    pub domain: String,
    /// Host pid of the domain's init.
    pub init_pid: i32,
    /// The init's start time (field 22 of `/proc/PID/stat`), to detect a recycled pid.
    pub init_start: u64,
    /// `cgroup.procs` files of the domain, one per hierarchy.
    pub procs_files: Vec<PathBuf>,
    /// Namespaces to enter.
    pub namespaces: Vec<Namespace>,
}

impl JoinTarget {
    /// The `CLONE_NEW*` flags of all namespaces.
    pub fn clone_flags(&self) -> libc::c_int {
        self.namespaces.iter().fold(0, |f, n| f | n.clone_flag())
    }

    /// [`clone_flags`](Self::clone_flags) split in two `setns` calls: every namespace but the
    /// user namespace, then `CLONE_NEWUSER` (or 0). A domain's other namespaces belong to the
    /// host's user namespace; entered in one call, the kernel would check them against the
    /// domain's user namespace, where the caller has no rights over them.
    pub fn clone_flags_user_last(&self) -> (libc::c_int, libc::c_int) {
        split_user_last(self.clone_flags())
    }
}

/// `(flags without CLONE_NEWUSER, CLONE_NEWUSER or 0)`; see
/// [`JoinTarget::clone_flags_user_last`].
pub fn split_user_last(flags: libc::c_int) -> (libc::c_int, libc::c_int) {
    (flags & !libc::CLONE_NEWUSER, flags & libc::CLONE_NEWUSER)
}

/// The step of [`enter_namespaces`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnterStep {
    /// `setns` into every namespace but the user namespace.
    Namespaces,
    /// `setns` into the user namespace.
    UserNamespace,
    /// `prctl(PR_SET_NO_NEW_PRIVS)` after it.
    NoNewPrivs,
}

/// Enters the namespaces `flags` names of the process behind `pidfd`: all but the user
/// namespace in one `setns`, then the user namespace, then `no_new_privs`, so that nothing in
/// a userns domain gains privileges by exec (see the crate documentation). Plain syscalls
/// without allocation: also safe in a forked child.
pub fn enter_namespaces(
    pidfd: BorrowedFd<'_>,
    flags: libc::c_int,
) -> Result<(), (EnterStep, io::Error)> {
    let (others, user) = split_user_last(flags);
    // SAFETY: setns on a valid pidfd with CLONE_NEW* flags; the kernel enters all or none.
    if others != 0 && unsafe { libc::setns(pidfd.as_raw_fd(), others) } != 0 {
        return Err((EnterStep::Namespaces, io::Error::last_os_error()));
    }
    if user == 0 {
        return Ok(());
    }
    // SAFETY: as above, for the user namespace alone.
    if unsafe { libc::setns(pidfd.as_raw_fd(), user) } != 0 {
        return Err((EnterStep::UserNamespace, io::Error::last_os_error()));
    }
    // SAFETY: a prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err((EnterStep::NoNewPrivs, io::Error::last_os_error()));
    }
    Ok(())
}

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The caller has more than one thread.
    #[error("cannot enter domain {domain:?}: the calling process has {threads} threads; joining needs a single-threaded process")]
    NotSingleThreaded {
        /// Domain name.
        domain: String,
        /// Threads seen.
        threads: usize,
    },
    /// The caller lacks privileges.
    #[error(
        "cannot enter domain {domain:?}: entering namespaces needs root (effective uid is {euid})"
    )]
    NotRoot {
        /// Domain name.
        domain: String,
        /// The caller's euid.
        euid: u32,
    },
    /// The init process is gone or was replaced.
    #[error("domain {domain:?} is not running: its init process {pid} {why}")]
    InitGone {
        /// Domain name.
        domain: String,
        /// Init pid.
        pid: i32,
        /// What was found.
        why: String,
    },
    /// A system call failed.
    #[error("cannot enter domain {domain:?}: {op}: {source}")]
    Sys {
        /// Domain name.
        domain: String,
        /// The step, with its object.
        op: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// `pidfd_open(2)`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Start time of a process in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub fn start_time(pid: i32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: no start time"),
        )
    })
}

/// Field 22 of a `/proc/PID/stat` line; the command name (field 2) may contain spaces and
/// parentheses, so fields are counted after the last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")" come field 3 (state) onwards; start time is field 22, the 20th of those.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A pidfd for `pid`, checked to be the process that started at `start` and still alive.
pub fn open_process(domain: &str, pid: i32, start: u64) -> Result<OwnedFd, JoinError> {
    let gone = |why: String| JoinError::InitGone {
        domain: domain.to_string(),
        pid,
        why,
    };
    let fd = pidfd_open(pid).map_err(|e| gone(format!("cannot be opened ({e})")))?;
    match start_time(pid) {
        Ok(t) if t == start => {}
        Ok(t) => {
            return Err(gone(format!(
                "was replaced (start time {t}, expected {start})"
            )))
        }
        Err(e) => return Err(gone(format!("has exited ({e})"))),
    }
    // The pidfd pins the process we checked; a zero signal tells whether it is still alive.
    if let Err(e) = pidfd_send_signal(fd.as_fd(), 0) {
        return Err(gone(format!("has exited ({e})")));
    }
    Ok(fd)
}

/// Sends `signal` (0: only check that the process lives) to the process behind `pidfd`.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a valid fd, no siginfo and no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Threads of the calling process.
pub fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "/proc/self/status: no Threads"))
}

/// Moves the calling process into the domain's cgroups and namespaces. See the crate
/// documentation for the preconditions.
pub fn join(target: &JoinTarget) -> Result<(), JoinError> {
    let domain = target.domain.as_str();
    let sys = |op: String, source: io::Error| JoinError::Sys {
        domain: domain.to_string(),
        op,
        source,
    };
    let threads = thread_count().map_err(|e| sys("counting threads".into(), e))?;
    if threads != 1 {
        return Err(JoinError::NotSingleThreaded {
            domain: domain.to_string(),
            threads,
        });
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(JoinError::NotRoot {
            domain: domain.to_string(),
            euid,
        });
    }
    let pidfd = open_process(domain, target.init_pid, target.init_start)?;
    let cwd = std::env::current_dir().ok();

    // cgroups first: on cgroup v2 a process inside a cgroup namespace may not move itself
    // from a cgroup outside that namespace.
    write_procs_files(target, Threads::One)?;
    enter_namespaces(pidfd.as_fd(), target.clone_flags()).map_err(|(step, e)| {
        let what = match step {
            EnterStep::Namespaces => "entering namespaces",
            EnterStep::UserNamespace => "entering the user namespace",
            EnterStep::NoNewPrivs => "setting no_new_privs after entering the user namespace",
        };
        sys(format!("{what} of init {}", target.init_pid), e)
    })?;
    let back_to = cwd
        .as_deref()
        .and_then(|p| CString::new(p.as_os_str().as_encoded_bytes()).ok());
    // SAFETY: chdir on NUL-terminated strings owned by this frame.
    unsafe {
        if back_to.is_none_or(|c| libc::chdir(c.as_ptr()) != 0) {
            libc::chdir(c"/".as_ptr());
        }
    }
    Ok(())
}

/// Moves the calling process into the domain's cgroups only; its namespaces stay as they are.
///
/// This is for callers that cannot enter namespaces: a **multi-threaded** process (the kernel
/// refuses `setns` into a mount namespace for those, e.g. Slurm's `slurmstepd`), or a site that
/// wants only the domain's limits (`pam_dms.so join=cgroup`). Writing `0` to a `cgroup.procs`
/// file moves the whole process, all its threads, and children it creates afterwards inherit
/// the cgroups; they see the host's filesystem, network and processes.
///
/// Like [`join`], it first checks that the domain's init is still the process that started at
/// `init_start` ([`open_process`]), so a stale target (a domain destroyed and its pid reused)
/// fails with [`JoinError::InitGone`] and changes nothing. The caller needs write access to the
/// `cgroup.procs` files (in practice: root). When a later file fails, the process stays in the
/// cgroups written before it.
pub fn join_cgroups(target: &JoinTarget) -> Result<(), JoinError> {
    let _pidfd = open_process(&target.domain, target.init_pid, target.init_start)?;
    write_procs_files(target, Threads::Any)
}

/// How many threads the calling process has, for [`write_procs_files`].
#[derive(Clone, Copy, PartialEq)]
enum Threads {
    /// Checked to be one.
    One,
    /// Unknown, maybe several.
    Any,
}

/// Writes the calling process into every `cgroup.procs` file of the target, in order. A
/// process known to have one thread writes the v1 `tasks` file beside it instead, where there
/// is one: that moves the same (its only) thread without the kernel's global threadgroup
/// lock, whose first writer after an idle moment waits for an RCU grace period (~10 ms).
fn write_procs_files(target: &JoinTarget, threads: Threads) -> Result<(), JoinError> {
    for f in &target.procs_files {
        let tasks = f
            .file_name()
            .filter(|n| *n == "cgroup.procs" && threads == Threads::One)
            .map(|_| f.with_file_name("tasks"));
        let (written, file) = match tasks {
            Some(t) => match write_self(&t) {
                // cgroup v2: no such file.
                Err(e) if e.kind() == io::ErrorKind::NotFound => (write_self(f), f.clone()),
                done => (done, t),
            },
            None => (write_self(f), f.clone()),
        };
        written.map_err(|e| JoinError::Sys {
            domain: target.domain.clone(),
            op: format!("joining {}", file.display()),
            source: e,
        })?;
    }
    Ok(())
}

fn write_self(procs: &Path) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(procs)?;
    // "0" means the writing process (in `tasks`: thread).
    f.write_all(b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_namespace_is_entered_on_its_own_and_last() {
        let t = JoinTarget {
            domain: "d".into(),
            init_pid: 1,
            init_start: 1,
            procs_files: vec![],
            namespaces: vec![Namespace::User, Namespace::Mnt, Namespace::Pid],
        };
        assert_eq!(
            t.clone_flags_user_last(),
            (libc::CLONE_NEWNS | libc::CLONE_NEWPID, libc::CLONE_NEWUSER)
        );
        assert_eq!(split_user_last(libc::CLONE_NEWNET), (libc::CLONE_NEWNET, 0));
    }

    #[test]
    fn a_process_in_our_user_namespace_needs_no_user_namespace_join() {
        assert_eq!(namespaces_of(std::process::id() as i32), Namespace::DOMAIN);
        // No such process: /proc cannot tell, so the user namespace is included (fail closed).
        assert!(namespaces_of(i32::MAX).contains(&Namespace::User));
    }

    #[test]
    fn start_time_skips_odd_command_names() {
        let line =
            "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_start_time(line), Some(987654));
        assert_eq!(parse_start_time("12 (x) S 1"), None);
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn own_start_time_is_stable() {
        let me = std::process::id() as i32;
        let a = start_time(me).unwrap_or_default();
        assert!(a > 0);
        assert_eq!(start_time(me).ok(), Some(a));
    }

    #[test]
    fn recycled_pid_is_refused() {
        let me = std::process::id() as i32;
        let t = start_time(me).unwrap_or_default();
        match open_process("d", me, t + 1) {
            Err(JoinError::InitGone { why, .. }) => assert!(why.contains("replaced"), "{why}"),
            other => panic!("expected InitGone, got {other:?}"),
        }
        assert!(open_process("d", me, t).is_ok());
    }

    #[test]
    fn multithreaded_caller_is_refused_before_anything_changes() {
        // A second thread that stays alive during the call makes this process multi-threaded.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || rx.recv());
        let target = JoinTarget {
            domain: "d".into(),
            init_pid: 1,
            init_start: 0,
            procs_files: vec!["/nonexistent/cgroup.procs".into()],
            namespaces: Namespace::DOMAIN.to_vec(),
        };
        match join(&target) {
            Err(JoinError::NotSingleThreaded { threads, .. }) => assert!(threads > 1),
            other => panic!("expected NotSingleThreaded, got {other:?}"),
        }
        drop(tx);
        let _ = helper.join();
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_single_thread_joins_through_v1_tasks_files_and_others_through_cgroup_procs() {
        let dir = tempfile::tempdir().unwrap();
        let (v1, v2) = (dir.path().join("v1"), dir.path().join("v2"));
        for d in [&v1, &v2] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("cgroup.procs"), "").unwrap();
        }
        std::fs::write(v1.join("tasks"), "").unwrap();
        let target = JoinTarget {
            domain: "d".into(),
            init_pid: 1,
            init_start: 0,
            procs_files: vec![v1.join("cgroup.procs"), v2.join("cgroup.procs")],
            namespaces: vec![],
        };
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        write_procs_files(&target, Threads::One).unwrap();
        assert_eq!(read(&v1.join("tasks")), "0");
        assert_eq!(read(&v1.join("cgroup.procs")), "");
        assert_eq!(read(&v2.join("cgroup.procs")), "0");
        std::fs::write(v1.join("tasks"), "").unwrap();
        write_procs_files(&target, Threads::Any).unwrap();
        assert_eq!(read(&v1.join("tasks")), "");
        assert_eq!(read(&v1.join("cgroup.procs")), "0");
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn join_cgroups_checks_the_init_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let procs = dir.path().join("cgroup.procs");
        std::fs::write(&procs, "").unwrap();
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap_or_default();
        let mut target = JoinTarget {
            domain: "d".into(),
            init_pid: me,
            init_start: start + 1,
            procs_files: vec![procs.clone()],
            namespaces: Namespace::DOMAIN.to_vec(),
        };
        match join_cgroups(&target) {
            Err(JoinError::InitGone { why, .. }) => assert!(why.contains("replaced"), "{why}"),
            other => panic!("expected InitGone, got {other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&procs).unwrap(), "");
        target.init_start = start;
        join_cgroups(&target).unwrap();
        assert_eq!(std::fs::read_to_string(&procs).unwrap(), "0");
        target.procs_files = vec![dir.path().join("missing/cgroup.procs")];
        match join_cgroups(&target) {
            Err(e @ JoinError::Sys { .. }) => assert!(e.to_string().contains("missing"), "{e}"),
            other => panic!("expected Sys, got {other:?}"),
        }
    }

    #[test]
    fn flags_cover_all_domain_namespaces() {
        let t = JoinTarget {
            domain: "d".into(),
            init_pid: 1,
            init_start: 0,
            procs_files: vec![],
            namespaces: Namespace::DOMAIN.to_vec(),
        };
        let want = libc::CLONE_NEWNS
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWCGROUP
            | libc::CLONE_NEWPID;
        assert_eq!(t.clone_flags(), want);
        let json = serde_json::to_string(&t).unwrap_or_default();
        assert!(json.contains("\"mnt\""), "{json}");
    }
}
