//! The domain init: a minimal pid 1 that holds a container domain's namespaces and reaps
//! orphans. The zygote starts it with a raw `clone` (new pid, mount, uts and ipc namespaces,
//! and net); the child builds the filesystem view every domain gets (private /tmp and /dev/shm,
//! its own /proc, policy paths, resolv.conf, loopback up), then its domain's part: it joins the
//! domain's cgroups, unshares its cgroup namespace and sets the hostname. It reports success by
//! closing a pipe. Failures come back as `[step, index, errno]` through the same pipe and the
//! half-started init exits; its mounts die with its mount namespace, so nothing is left behind.
//!
//! Spares ([`Spares`], `spare_inits`): the zygote starts inits ahead of time that do the first
//! half (making their network namespace themselves, so the zygote does not wait for it) and then
//! block on a claim pipe. A domain without policy paths takes one by writing its part (the
//! claim) to that pipe. A spare exits when the pipe closes, so spares never outlive the zygote.
//!
//! With `userns`, the init unshares a user namespace as its last step and the zygote maps every
//! uid and gid onto itself ([`IDENTITY`]), so files, logins and `getuid() == 0` checks (sshd's)
//! work as on the host. The other namespaces stay owned by the host's user namespace: nothing
//! in the domain, root included, holds a capability over them (mounts, network, hostname) or
//! over the kernel. Joiners also set no_new_privs, so no setuid program raises privileges.

use std::collections::{HashSet, VecDeque};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use crate::spawn::InitSpec;

const STEP_CGROUP: u8 = 1;
const STEP_CGROUPNS: u8 = 2;
const STEP_PROPAGATION: u8 = 3;
const STEP_TMP: u8 = 4;
const STEP_SHM: u8 = 5;
const STEP_PROC: u8 = 6;
const STEP_PRIVATE: u8 = 7;
const STEP_READONLY: u8 = 8;
const STEP_RESOLV: u8 = 9;
const STEP_HOSTNAME: u8 = 10;
const STEP_LOOPBACK: u8 = 11;
const STEP_USERNS: u8 = 12;
const STEP_NETNS: u8 = 13;

/// The uid and gid map of a domain's user namespace: every id onto itself. Root must stay
/// root: sshd, for one, decides by `getuid() == 0` whether to switch to the user.
pub const IDENTITY: &str = "0 0 4294967295\n";

fn cstring(s: &std::ffi::OsStr, what: &str) -> Result<CString, String> {
    CString::new(s.as_encoded_bytes()).map_err(|_| format!("{what} {s:?} contains a NUL byte"))
}

struct Prepared {
    private: Vec<(CString, CString)>,
    readonly: Vec<CString>,
    resolv: Option<CString>,
}

fn prepare(spec: &InitSpec) -> Result<Prepared, String> {
    let mut private = Vec::new();
    for p in &spec.private_paths {
        let meta = std::fs::metadata(p)
            .map_err(|e| format!("paths.private = {:?}: {e}", p.display().to_string()))?;
        if !meta.is_dir() {
            return Err(format!(
                "paths.private = {:?}: not a directory",
                p.display().to_string()
            ));
        }
        let opts = format!(
            "mode={:o},uid={},gid={}",
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid()
        );
        private.push((
            cstring(p.as_os_str(), "path")?,
            CString::new(opts).map_err(|e| e.to_string())?,
        ));
    }
    let mut readonly = Vec::new();
    for p in &spec.readonly_paths {
        std::fs::symlink_metadata(p)
            .map_err(|e| format!("paths.readonly = {:?}: {e}", p.display().to_string()))?;
        readonly.push(cstring(p.as_os_str(), "path")?);
    }
    let resolv = match &spec.resolv_conf {
        Some(r) => Some(cstring(r.as_os_str(), "resolv.conf")?),
        None => None,
    };
    Ok(Prepared {
        private,
        readonly,
        resolv,
    })
}

/// The longest claim a spare reads in one go (writes up to PIPE_BUF are atomic).
const CLAIM_MAX: usize = libc::PIPE_BUF;

/// The part of an init's setup that names its domain, as the init reads it (from memory when
/// started on demand, from its claim pipe when it was a spare): a user-namespace byte, then the
/// hostname and each `cgroup.procs` file, NUL-terminated.
fn claim_message(spec: &InitSpec) -> Result<Vec<u8>, String> {
    let mut hostname = spec.hostname.as_bytes();
    hostname = &hostname[..hostname.len().min(64)];
    if hostname.is_empty() || hostname.contains(&0) {
        return Err(format!(
            "hostname {:?}: empty or with a NUL byte",
            spec.hostname
        ));
    }
    let mut m = vec![u8::from(spec.userns)];
    m.extend_from_slice(hostname);
    m.push(0);
    for p in &spec.procs_files {
        let b = p.as_os_str().as_encoded_bytes();
        if b.is_empty() || b.contains(&0) {
            return Err(format!("cgroup file {p:?}: empty or with a NUL byte"));
        }
        m.extend_from_slice(b);
        m.push(0);
    }
    Ok(m)
}

/// A spare init: its namespaces and mounts are made; it waits for a claim on `claim`.
#[derive(Debug)]
pub(crate) struct Spare {
    pid: i32,
    claim: OwnedFd,
    report: OwnedFd,
    /// The daemon's end of its control socket.
    ctl: OwnedFd,
    born: Instant,
}

/// How long a spare waits for a domain before it is replaced by a fresh one, so that a
/// domain's copy of the host's mounts is never much older than the domain.
const SPARE_MAX_AGE: Duration = Duration::from_secs(600);
/// After a spare failed, how long to wait before starting another.
const SPARE_RETRY: Duration = Duration::from_secs(5);

/// The zygote's spare inits (`spare_inits` in the configuration).
#[derive(Debug, Default)]
pub(crate) struct Spares {
    target: usize,
    resolv: Option<std::path::PathBuf>,
    ready: VecDeque<Spare>,
    retry_at: Option<Instant>,
}

impl Spares {
    /// Keeps `target` spares whose `/etc/resolv.conf` is `resolv`. Spares that no longer fit
    /// are dropped: closing their claim pipe makes them exit, and the zygote reaps them.
    pub(crate) fn configure(&mut self, target: usize, resolv: Option<std::path::PathBuf>) {
        if resolv != self.resolv {
            self.ready.clear();
            self.resolv = resolv;
        }
        self.target = target;
        self.ready.truncate(target);
        self.retry_at = None;
    }

    /// The poll timeout (ms) until the zygote has spare work: 0 when a spare is due now, -1
    /// when none is.
    pub(crate) fn poll_timeout(&self) -> i32 {
        let now = Instant::now();
        let until = |t: Instant| {
            i32::try_from(
                t.saturating_duration_since(now)
                    .as_millis()
                    .saturating_add(1),
            )
            .unwrap_or(i32::MAX)
        };
        if self.ready.len() < self.target {
            return self
                .retry_at
                .map_or(0, |t| if t <= now { 0 } else { until(t) });
        }
        self.ready
            .front()
            .map_or(-1, |s| until(s.born + SPARE_MAX_AGE))
    }

    /// Replaces a spare past its age, or starts one more if fewer than wanted (one per call,
    /// so requests waiting on the socket come first).
    pub(crate) fn tend(&mut self, inits: &mut HashSet<i32>) {
        let now = Instant::now();
        if self
            .ready
            .front()
            .is_some_and(|s| s.born + SPARE_MAX_AGE <= now)
        {
            self.ready.pop_front();
        }
        if self.ready.len() >= self.target || self.retry_at.is_some_and(|t| t > now) {
            return;
        }
        match start_spare(self.resolv.as_deref()) {
            Ok(s) => {
                inits.insert(s.pid);
                self.ready.push_back(s);
                self.retry_at = None;
            }
            Err(_) => self.retry_at = Some(now + SPARE_RETRY),
        }
    }

    /// A reaped init: if it was a spare waiting for a claim, it failed; wait before the next.
    pub(crate) fn reaped(&mut self, pid: i32) {
        if let Some(i) = self.ready.iter().position(|s| s.pid == pid) {
            self.ready.remove(i);
            self.retry_at = Some(Instant::now() + SPARE_RETRY);
        }
    }

    /// A spare for `spec`, if one fits: the policy paths are mounted before the claim, so
    /// only a domain without them (and with the spares' resolv.conf) can take one.
    fn take(&mut self, spec: &InitSpec) -> Option<Spare> {
        if spec.private_paths.is_empty()
            && spec.readonly_paths.is_empty()
            && spec.resolv_conf == self.resolv
        {
            self.ready.pop_front()
        } else {
            None
        }
    }
}

/// The namespaces an init is cloned with; a spare makes its network namespace itself, so the
/// zygote does not wait for it.
const CLONE_NS: libc::c_int =
    libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;

/// A raw fork-like clone into new namespaces. Returns the child's pid in the parent and 0 in
/// the child.
fn clone_init(flags: libc::c_int) -> std::io::Result<i32> {
    // SAFETY: a fork-like clone (no new stack, no shared memory) from the single-threaded
    // zygote; the child only makes syscalls on data prepared before and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(pid as i32)
}

fn namespaces_failed(e: std::io::Error) -> String {
    format!("creating the domain's namespaces: {e}")
}

fn open_devnull() -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

/// An init's control socket: the daemon's end and the init's.
fn control_socket() -> Result<(OwnedFd, OwnedFd), String> {
    crate::spawn::seqpacket_pair()
}

/// Starts a spare init: new namespaces and the filesystem view every domain gets, no domain
/// yet. Until it is claimed it exits when the zygote closes its claim pipe or dies.
fn start_spare(resolv: Option<&std::path::Path>) -> Result<Spare, String> {
    let prep = prepare(&InitSpec {
        resolv_conf: resolv.map(std::path::Path::to_path_buf),
        ..InitSpec::default()
    })?;
    let devnull = open_devnull()?;
    let (report_rd, report_wr) = cloexec_pipe()?;
    let (claim_rd, claim_wr) = cloexec_pipe()?;
    let (ctl, ctl_init) = control_socket()?;
    let pid = clone_init(CLONE_NS).map_err(namespaces_failed)?;
    if pid == 0 {
        drop(report_rd);
        drop(claim_wr);
        let claim = Claim::FromPipe {
            fd: claim_rd.as_raw_fd(),
        };
        let fds = Fds {
            report: report_wr.as_raw_fd(),
            devnull: devnull.as_raw_fd(),
            ctl: ctl_init.as_raw_fd(),
        };
        // SAFETY: see clone_init; `child` never returns.
        unsafe { child(&prep, &claim, &fds) }
    }
    Ok(Spare {
        pid,
        claim: claim_wr,
        report: report_rd,
        ctl,
        born: Instant::now(),
    })
}

/// Starts an init for `spec`; returns its host pid and the daemon's end of its control
/// socket once its setup has succeeded. Takes a spare when one fits, else makes everything
/// now. Called in the single-threaded zygote only; `inits` is the zygote's set of init pids
/// (reaped silently).
pub(crate) fn start(
    spec: &InitSpec,
    spares: &mut Spares,
    inits: &mut HashSet<i32>,
) -> Result<(i32, OwnedFd), String> {
    let claim = claim_message(spec)?;
    if claim.len() <= CLAIM_MAX {
        if let Some(spare) = spares.take(spec) {
            let pid = spare.pid;
            match claim_spare(spare, &claim, spec) {
                Ok(ctl) => return Ok((pid, ctl)),
                Err(_) => {
                    // A broken spare: start this domain's init on demand, which reports what
                    // fails, if anything; no new spare for a while.
                    inits.remove(&pid);
                    spares.retry_at = Some(Instant::now() + SPARE_RETRY);
                }
            }
        }
    }
    let (pid, ctl) = start_now(spec, &claim)?;
    inits.insert(pid);
    Ok((pid, ctl))
}

/// Hands `claim` to a spare and waits for its report; kills and reaps it on failure.
fn claim_spare(spare: Spare, claim: &[u8], spec: &InitSpec) -> Result<OwnedFd, String> {
    let Spare {
        pid,
        claim: wr,
        report,
        ctl,
        ..
    } = spare;
    let written = nix::unistd::write(&wr, claim);
    drop(wr);
    let outcome = match written {
        Ok(n) if n == claim.len() => finish(pid, &report, spec),
        Ok(_) => Err("short write of the claim".to_string()),
        Err(e) => Err(format!("writing the claim: {e}")),
    };
    if outcome.is_err() {
        // SAFETY: kill and wait on our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    }
    outcome.map(|()| ctl)
}

/// Starts an init and does its whole setup now.
fn start_now(spec: &InitSpec, claim: &[u8]) -> Result<(i32, OwnedFd), String> {
    let prep = prepare(spec)?;
    let devnull = open_devnull()?;
    let (rd, wr) = cloexec_pipe()?;
    let (ctl, ctl_init) = control_socket()?;
    let pid = clone_init(CLONE_NS | libc::CLONE_NEWNET).map_err(namespaces_failed)?;
    if pid == 0 {
        drop(rd);
        let fds = Fds {
            report: wr.as_raw_fd(),
            devnull: devnull.as_raw_fd(),
            ctl: ctl_init.as_raw_fd(),
        };
        // SAFETY: see clone_init; `child` never returns.
        unsafe { child(&prep, &Claim::Given(claim), &fds) }
    }
    drop(wr);
    match finish(pid, &rd, spec) {
        Ok(()) => Ok((pid, ctl)),
        Err(e) => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            Err(e)
        }
    }
}

/// Reads an init's report: EOF is success (then its user namespace gets its maps), else the
/// failed step, turned into a message. Does not reap the init.
fn finish(pid: i32, report: &OwnedFd, spec: &InitSpec) -> Result<(), String> {
    let mut msg = [0u8; 4];
    if crate::spawn::read_report(report, &mut msg) == 0 {
        if !spec.userns {
            return Ok(());
        }
        // The maps are written from here, with CAP_SETUID/CAP_SETGID in the parent namespace:
        // the init itself could map only its own id, and setgroups(2) stays allowed inside.
        return write_id_maps(pid).map_err(|e| {
            // SAFETY: kill our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            format!("domain init: mapping its user namespace: {e}")
        });
    }
    let errno = nix::errno::Errno::from_raw(i32::from(msg[2]) | (i32::from(msg[3]) << 8));
    let idx = usize::from(msg[1]);
    let path = |v: &[std::path::PathBuf]| {
        v.get(idx)
            .map_or_else(String::new, |p| p.display().to_string())
    };
    let step = match msg[0] {
        STEP_CGROUP => format!("joining {}", path(&spec.procs_files)),
        STEP_CGROUPNS => "creating the cgroup namespace".into(),
        STEP_PROPAGATION => "making the root mount a slave".into(),
        STEP_TMP => "mounting a private /tmp".into(),
        STEP_SHM => "mounting a private /dev/shm".into(),
        STEP_PROC => "mounting /proc".into(),
        STEP_PRIVATE => format!(
            "paths.private = {:?}: mounting a tmpfs",
            path(&spec.private_paths)
        ),
        STEP_READONLY => format!(
            "paths.readonly = {:?}: making it read-only",
            path(&spec.readonly_paths)
        ),
        STEP_RESOLV => "mounting resolv.conf".into(),
        STEP_HOSTNAME => "setting the hostname".into(),
        STEP_LOOPBACK => "bringing up loopback".into(),
        STEP_USERNS => "creating the user namespace".into(),
        STEP_NETNS => "creating the network namespace".into(),
        s => format!("step {s}"),
    };
    Err(format!("domain init: {step}: {}", errno.desc()))
}

/// Writes [`IDENTITY`] to the uid and gid maps of `pid`'s user namespace.
fn write_id_maps(pid: i32) -> Result<(), String> {
    for file in ["uid_map", "gid_map"] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, IDENTITY).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

/// Reports a failed step through the pipe and exits.
unsafe fn fail(pipe: RawFd, step: u8, index: usize) -> ! {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let msg = [
        step,
        u8::try_from(index).unwrap_or(u8::MAX),
        (errno & 0xff) as u8,
        ((errno >> 8) & 0xff) as u8,
    ];
    // SAFETY: writing a local buffer to our pipe, then leaving without destructors.
    unsafe {
        libc::write(pipe, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// Where an init finds its domain's part of the setup.
enum Claim<'a> {
    /// Started on demand: given.
    Given(&'a [u8]),
    /// A spare: read from this pipe, written by the zygote when a domain takes it.
    FromPipe { fd: RawFd },
}

/// The fds an init starts with.
struct Fds {
    /// Its setup report pipe (closed on success).
    report: RawFd,
    /// /dev/null, its stdio.
    devnull: RawFd,
    /// Its end of the control socket.
    ctl: RawFd,
}

/// Closes every fd from 3 up except those in `keep`.
unsafe fn close_all_but(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.to_vec();
    keep.sort_unstable();
    let mut from: libc::c_uint = 3;
    for k in keep {
        let Ok(k) = libc::c_uint::try_from(k) else {
            continue;
        };
        if k < from {
            continue;
        }
        if k > from {
            // SAFETY: closing fds of this process; close_range has no memory arguments.
            unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0 as libc::c_uint) };
        }
        from = k + 1;
    }
    // SAFETY: as above.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            from,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
}

/// The init's body: the filesystem view every domain gets, then its domain's part (cgroups,
/// cgroup namespace, hostname, user namespace), then reaping.
///
/// # Safety
/// Only in the child of the raw clone in [`start_now`] or [`start_spare`], a fork of the
/// single-threaded zygote.
unsafe fn child(prep: &Prepared, claim: &Claim<'_>, fds: &Fds) -> ! {
    let pipe = fds.report;
    // SAFETY: plain syscalls on NUL-terminated strings owned by `prep`, `claim` or this frame
    // and on our own fds.
    unsafe {
        for i in 0..3 {
            libc::dup2(fds.devnull, i);
        }
        match claim {
            Claim::Given(_) => close_all_but(&[pipe, fds.ctl]),
            Claim::FromPipe { fd } => {
                close_all_but(&[pipe, fds.ctl, *fd]);
                libc::prctl(libc::PR_SET_NAME, c"dms-spare".as_ptr());
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    fail(pipe, STEP_NETNS, 0);
                }
            }
        }
        let none = std::ptr::null::<libc::c_char>();
        // Host mounts keep propagating in; nothing done here leaks out.
        if libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            fail(pipe, STEP_PROPAGATION, 0);
        }
        let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
        let tmp_opts = c"mode=1777";
        if libc::mount(
            c"tmpfs".as_ptr(),
            c"/tmp".as_ptr(),
            c"tmpfs".as_ptr(),
            nosuid_nodev,
            tmp_opts.as_ptr().cast(),
        ) != 0
        {
            fail(pipe, STEP_TMP, 0);
        }
        if libc::mount(
            c"tmpfs".as_ptr(),
            c"/dev/shm".as_ptr(),
            c"tmpfs".as_ptr(),
            nosuid_nodev,
            tmp_opts.as_ptr().cast(),
        ) != 0
        {
            fail(pipe, STEP_SHM, 0);
        }
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            nosuid_nodev | libc::MS_NOEXEC,
            std::ptr::null(),
        ) != 0
        {
            fail(pipe, STEP_PROC, 0);
        }
        for (i, (path, opts)) in prep.private.iter().enumerate() {
            if libc::mount(
                c"tmpfs".as_ptr(),
                path.as_ptr(),
                c"tmpfs".as_ptr(),
                nosuid_nodev,
                opts.as_ptr().cast(),
            ) != 0
            {
                fail(pipe, STEP_PRIVATE, i);
            }
        }
        for (i, path) in prep.readonly.iter().enumerate() {
            if libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) != 0
                || libc::mount(
                    none,
                    path.as_ptr(),
                    none,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                ) != 0
            {
                fail(pipe, STEP_READONLY, i);
            }
        }
        if let Some(r) = &prep.resolv {
            if libc::mount(
                r.as_ptr(),
                c"/etc/resolv.conf".as_ptr(),
                none,
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                fail(pipe, STEP_RESOLV, 0);
            }
        }
        if !loopback_up() {
            fail(pipe, STEP_LOOPBACK, 0);
        }
        let mut buf = [0u8; CLAIM_MAX];
        let msg: &[u8] = match claim {
            Claim::Given(m) => m,
            Claim::FromPipe { fd, .. } => {
                let n = loop {
                    let n = libc::read(*fd, buf.as_mut_ptr().cast(), buf.len());
                    if n >= 0 || *libc::__errno_location() != libc::EINTR {
                        break n;
                    }
                };
                // EOF: the zygote no longer wants this spare, or it died (it holds the only
                // write end).
                if n <= 0 {
                    libc::_exit(0);
                }
                libc::close(*fd);
                &buf[..n as usize]
            }
        };
        // [userns] hostname \0 (procs file \0)*
        let Some((&userns, rest)) = msg.split_first() else {
            libc::_exit(0)
        };
        let mut fields = rest.split(|b| *b == 0);
        let hostname = fields.next().unwrap_or_default();
        for (i, p) in fields.take_while(|f| !f.is_empty()).enumerate() {
            // Every field is followed by its NUL in `msg`.
            let fd = libc::open(p.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail(pipe, STEP_CGROUP, i);
            }
            libc::close(fd);
        }
        // Now that we are in the domain's cgroups, they become the namespace's root.
        if libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
            fail(pipe, STEP_CGROUPNS, 0);
        }
        if libc::sethostname(hostname.as_ptr().cast(), hostname.len()) != 0 {
            fail(pipe, STEP_HOSTNAME, 0);
        }
        // Last: everything above needed the host's privileges.
        if userns != 0 && libc::unshare(libc::CLONE_NEWUSER) != 0 {
            fail(pipe, STEP_USERNS, 0);
        }
        // `ps` inside the domain shows pid 1 as what it is.
        libc::prctl(libc::PR_SET_NAME, c"dms-init".as_ptr());
        libc::setsid();
        libc::chdir(c"/".as_ptr());
        // Success: the zygote sees EOF.
        libc::close(pipe);
        serve(fds.ctl, userns != 0)
    }
}

/// `ip link set lo up` with two ioctls.
unsafe fn loopback_up() -> bool {
    // SAFETY: a local ifreq and a socket we own and close.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return false;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, c) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *c as libc::c_char;
        }
        let ok = libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req) == 0 && {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS, &req) == 0
        };
        libc::close(s);
        ok
    }
}

/// pid 1's loop once set up: starts the commands the daemon sends on `ctl` as its children
/// (see `spawn::exec_via_init`; they inherit the domain's cgroups and namespaces, so nothing is
/// joined), reports their exits, reaps every other child, and exits on SIGTERM/SIGINT (which
/// ends the pid namespace). When the daemon goes (a restart), `ctl` closes and the init only
/// reaps; the daemon then starts commands by joining. Commands in a domain with a user
/// namespace get no_new_privs, as processes that join it do.
unsafe fn serve(ctl: RawFd, no_new_privs: bool) -> ! {
    // SAFETY: signal mask, signalfd, poll, read and close on local values and our own fds.
    unsafe {
        let wanted = block_signals();
        let sfd = libc::signalfd(-1, &wanted, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if sfd < 0 {
            libc::close(ctl);
            reap_forever()
        }
        let mut ctl = Some(ctl);
        let mut running: Vec<(libc::pid_t, OwnedFd)> = Vec::new();
        let mut buf = vec![0u8; crate::spawn::INIT_REQUEST_MAX];
        loop {
            let mut pfds = [
                libc::pollfd {
                    fd: sfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: ctl.unwrap_or(-1),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if libc::poll(pfds.as_mut_ptr(), 2, -1) < 0 {
                continue;
            }
            if pfds[0].revents != 0 {
                let mut info: libc::signalfd_siginfo = std::mem::zeroed();
                let size = std::mem::size_of::<libc::signalfd_siginfo>();
                while libc::read(sfd, (&raw mut info).cast(), size) == size as isize {
                    if info.ssi_signo == libc::SIGTERM as u32
                        || info.ssi_signo == libc::SIGINT as u32
                    {
                        libc::_exit(0);
                    }
                }
                reap_commands(&mut running);
            }
            if let Some(fd) = ctl {
                if pfds[1].revents != 0 && !take_command(fd, &mut buf, no_new_privs, &mut running) {
                    libc::close(fd);
                    ctl = None;
                }
            }
        }
    }
}

/// Reaps every exited child; tells the daemon of those that were its commands.
fn reap_commands(running: &mut Vec<(libc::pid_t, OwnedFd)>) {
    use crate::spawn::ExitStatus;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a local status word.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        if let Some(i) = running.iter().position(|(p, _)| *p == pid) {
            let (_, sock) = running.swap_remove(i);
            let status = if libc::WIFSIGNALED(status) {
                ExitStatus::Signal(libc::WTERMSIG(status))
            } else {
                ExitStatus::Code(libc::WEXITSTATUS(status))
            };
            // Nobody waiting (a detached run) is fine.
            let _ = nix::sys::socket::send(
                sock.as_raw_fd(),
                &crate::spawn::exited_message(status),
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            );
        }
    }
}

/// Takes one command request from `ctl`: its own socket and stdio come as fds. Returns false
/// when `ctl` is closed.
fn take_command(
    ctl: RawFd,
    buf: &mut [u8],
    no_new_privs: bool,
    running: &mut Vec<(libc::pid_t, OwnedFd)>,
) -> bool {
    use crate::spawn::{INIT_FAILED, INIT_STARTED};
    use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, MsgFlags};
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let (n, truncated, fds) = match recvmsg::<()>(
        ctl,
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    ) {
        Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => return true,
        Err(_) => return false,
        Ok(m) if m.bytes == 0 => return false,
        Ok(m) => (
            m.bytes,
            m.flags.contains(MsgFlags::MSG_TRUNC),
            crate::spawn::received_fds(&m),
        ),
    };
    let mut fds = fds.into_iter();
    let Some(reply) = fds.next() else {
        return true;
    };
    let stdio: Vec<OwnedFd> = fds.collect();
    let started = if truncated {
        Err("the command request is too large".to_string())
    } else {
        start_command(&buf[..n], &stdio, reply.as_raw_fd(), no_new_privs)
    };
    let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
    match started {
        Ok((pid, pidfd)) => {
            let pidfds = [pidfd.as_raw_fd()];
            let _ = sendmsg::<()>(
                reply.as_raw_fd(),
                &[std::io::IoSlice::new(&[INIT_STARTED])],
                &[ControlMessage::ScmRights(&pidfds)],
                flags,
                None,
            );
            running.push((pid, reply));
        }
        Err(e) => {
            let mut msg = vec![INIT_FAILED];
            msg.extend_from_slice(e.as_bytes());
            let _ = nix::sys::socket::send(reply.as_raw_fd(), &msg, flags);
        }
    }
    true
}

/// Forks and execs a command request (a JSON `ProcessSpec`); returns its pid and a pidfd on
/// it once it has exec'd, or what failed.
fn start_command(
    request: &[u8],
    stdio: &[OwnedFd],
    reply: RawFd,
    no_new_privs: bool,
) -> Result<(libc::pid_t, OwnedFd), String> {
    use crate::spawn::{child_stdio, fail_child, PreparedExec, STEP_NO_NEW_PRIVS};
    let spec: crate::spawn::ProcessSpec =
        serde_json::from_slice(request).map_err(|e| format!("bad command request: {e}"))?;
    let exec = PreparedExec::new(&spec)?;
    let stdio: Vec<RawFd> = stdio.iter().map(AsRawFd::as_raw_fd).collect();
    let (rd, wr) = cloexec_pipe()?;
    // A raw fork-like clone: the init itself came from one, so glibc's fork bookkeeping is
    // no better informed than this.
    let pid = clone_init(0).map_err(|e| format!("fork: {e}"))?;
    if pid == 0 {
        let report = wr.as_raw_fd();
        // SAFETY: a child of the single-threaded init, making only syscalls before exec.
        unsafe {
            // Its pid as the daemon sees it comes with this (see COMMAND_HELLO); best effort.
            libc::send(
                reply,
                [crate::spawn::COMMAND_HELLO].as_ptr().cast(),
                1,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            );
            // Without fds of its own the command keeps the init's /dev/null.
            child_stdio(&stdio, report);
            if no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                fail_child(report, STEP_NO_NEW_PRIVS);
            }
            exec.exec(report)
        }
    }
    drop(wr);
    let mut msg = [0u8; 3];
    if crate::spawn::read_report(&rd, &mut msg) != 0 {
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return Err(crate::spawn::failure_message(msg, &spec));
    }
    // Not reaped before this (only the loop reaps), so the pid is still this process.
    let pidfd = dms_join::pidfd_open(pid).map_err(|e| format!("pidfd_open: {e}"))?;
    Ok((pid, pidfd))
}

/// Blocks every signal; returns the set pid 1 waits for (SIGCHLD, SIGTERM, SIGINT).
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on local, initialised values.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        let mut wanted: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut wanted);
        for s in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut wanted, s);
        }
        wanted
    }
}

/// pid 1's loop: reap every child; exit on SIGTERM/SIGINT (which ends the pid namespace).
unsafe fn reap_forever() -> ! {
    // SAFETY: signal mask and wait calls on local, initialised sigset_t values.
    unsafe {
        let wanted = block_signals();
        loop {
            let sig = libc::sigwaitinfo(&wanted, std::ptr::null_mut());
            if sig == libc::SIGTERM || sig == libc::SIGINT {
                libc::_exit(0);
            }
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn claim_message_is_userns_hostname_and_procs_files_nul_terminated() {
        let spec = InitSpec {
            hostname: "atlas.alice".into(),
            procs_files: vec!["/a/cgroup.procs".into(), "/b/cgroup.procs".into()],
            userns: true,
            ..InitSpec::default()
        };
        assert_eq!(
            claim_message(&spec).unwrap(),
            b"\x01atlas.alice\0/a/cgroup.procs\0/b/cgroup.procs\0"
        );
        let long = InitSpec {
            hostname: "h".repeat(100),
            ..InitSpec::default()
        };
        let m = claim_message(&long).unwrap();
        assert_eq!(m, [&[0u8][..], "h".repeat(64).as_bytes(), b"\0"].concat());
        let nul = InitSpec {
            procs_files: vec!["/a\0b".into()],
            hostname: "x".into(),
            ..InitSpec::default()
        };
        assert!(claim_message(&nul).unwrap_err().contains("NUL"));
        let empty = InitSpec::default();
        assert!(claim_message(&empty).unwrap_err().contains("hostname"));
    }

    #[test]
    fn spares_are_due_only_when_missing_and_not_backing_off() {
        let mut s = Spares::default();
        assert_eq!(s.poll_timeout(), -1, "none wanted");
        s.configure(2, None);
        assert_eq!(s.poll_timeout(), 0, "two missing");
        s.retry_at = Some(Instant::now() + Duration::from_secs(5));
        let t = s.poll_timeout();
        assert!((4000..=5001).contains(&t), "{t}");
        s.configure(0, None);
        assert_eq!(s.poll_timeout(), -1);
    }

    #[test]
    fn only_specs_without_policy_paths_and_with_the_spares_resolv_take_a_spare() {
        let mut s = Spares::default();
        s.configure(1, Some("/run/dms/resolv.conf".into()));
        let plain = InitSpec {
            resolv_conf: Some("/run/dms/resolv.conf".into()),
            ..InitSpec::default()
        };
        // Nothing ready: nothing taken, whatever the spec.
        assert!(s.take(&plain).is_none());
        let with_paths = InitSpec {
            private_paths: vec!["/var/tmp".into()],
            ..plain.clone()
        };
        let other_resolv = InitSpec {
            resolv_conf: None,
            ..plain.clone()
        };
        let (rd, wr) = cloexec_pipe().unwrap();
        let (ctl, _) = control_socket().unwrap();
        s.ready.push_back(Spare {
            pid: 0,
            claim: wr,
            report: rd,
            ctl,
            born: Instant::now(),
        });
        assert!(s.take(&with_paths).is_none());
        assert!(s.take(&other_resolv).is_none());
        assert!(s.take(&plain).is_some());
    }
}
