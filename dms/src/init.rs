//! The domain init: a minimal pid 1 that holds a container domain's namespaces and reaps
//! orphans. The zygote starts it with a raw `clone` (new pid, mount, uts, ipc and net
//! namespaces); the child joins the domain's cgroups, unshares its cgroup namespace, builds the
//! domain's filesystem view (private /tmp and /dev/shm, its own /proc, policy paths), sets the
//! hostname, brings up loopback and reports success by closing a pipe. Failures come back as
//! `[step, index, errno]` through the same pipe and the half-started init exits; its mounts
//! die with its mount namespace, so nothing is left behind.
//!
//! With `userns`, the init unshares a user namespace as its last step and the zygote maps every
//! uid and gid onto itself ([`IDENTITY`]), so files, logins and `getuid() == 0` checks (sshd's)
//! work as on the host. The other namespaces stay owned by the host's user namespace: nothing
//! in the domain, root included, holds a capability over them (mounts, network, hostname) or
//! over the kernel. Joiners also set no_new_privs, so no setuid program raises privileges.

use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;

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

/// The uid and gid map of a domain's user namespace: every id onto itself. Root must stay
/// root: sshd, for one, decides by `getuid() == 0` whether to switch to the user.
pub const IDENTITY: &str = "0 0 4294967295\n";

fn cstring(s: &std::ffi::OsStr, what: &str) -> Result<CString, String> {
    CString::new(s.as_encoded_bytes()).map_err(|_| format!("{what} {s:?} contains a NUL byte"))
}

struct Prepared {
    procs: Vec<CString>,
    private: Vec<(CString, CString)>,
    readonly: Vec<CString>,
    resolv: Option<CString>,
    hostname: Vec<u8>,
    userns: bool,
}

fn prepare(spec: &InitSpec) -> Result<Prepared, String> {
    let procs = spec
        .procs_files
        .iter()
        .map(|p| cstring(p.as_os_str(), "cgroup file"))
        .collect::<Result<_, _>>()?;
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
    let mut hostname = spec.hostname.as_bytes().to_vec();
    hostname.truncate(64);
    Ok(Prepared {
        procs,
        private,
        readonly,
        resolv,
        hostname,
        userns: spec.userns,
    })
}

/// Starts an init for `spec`; returns its host pid once its setup has succeeded. Called in
/// the single-threaded zygote only.
pub(crate) fn start(spec: &InitSpec) -> Result<i32, String> {
    let prep = prepare(spec)?;
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let flags = libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET
        | libc::SIGCHLD;
    // SAFETY: a fork-like clone (no new stack, no shared memory) from the single-threaded
    // zygote; the child only makes syscalls on data prepared above and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(format!(
            "creating the domain's namespaces: {}",
            std::io::Error::last_os_error()
        ));
    }
    if pid == 0 {
        drop(rd);
        // SAFETY: see above; `child` never returns.
        unsafe { child(&prep, wr.as_raw_fd(), devnull.as_raw_fd()) }
    }
    let pid = pid as i32;
    drop(wr);
    let mut msg = [0u8; 4];
    if crate::spawn::read_report(&rd, &mut msg) == 0 {
        if !spec.userns {
            return Ok(pid);
        }
        // The maps are written from here, with CAP_SETUID/CAP_SETGID in the parent namespace:
        // the init itself could map only its own id, and setgroups(2) stays allowed inside.
        return match write_id_maps(pid) {
            Ok(()) => Ok(pid),
            Err(e) => {
                // SAFETY: kill and wait on our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
                Err(format!("domain init: mapping its user namespace: {e}"))
            }
        };
    }
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
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

/// The init's body.
///
/// # Safety
/// Only in the child of the raw clone in [`start`].
unsafe fn child(prep: &Prepared, pipe: RawFd, devnull: RawFd) -> ! {
    // SAFETY: plain syscalls on NUL-terminated strings owned by `prep` and on our own fds.
    unsafe {
        for i in 0..3 {
            libc::dup2(devnull, i);
        }
        // `ps` inside the domain shows pid 1 as what it is.
        libc::prctl(libc::PR_SET_NAME, c"dms-init".as_ptr());
        for (i, p) in prep.procs.iter().enumerate() {
            let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail(pipe, STEP_CGROUP, i);
            }
            libc::close(fd);
        }
        // Now that we are in the domain's cgroups, they become the namespace's root.
        if libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
            fail(pipe, STEP_CGROUPNS, 0);
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
        if libc::sethostname(prep.hostname.as_ptr().cast(), prep.hostname.len()) != 0 {
            fail(pipe, STEP_HOSTNAME, 0);
        }
        if !loopback_up() {
            fail(pipe, STEP_LOOPBACK, 0);
        }
        // Last: everything above needed the host's privileges.
        if prep.userns && libc::unshare(libc::CLONE_NEWUSER) != 0 {
            fail(pipe, STEP_USERNS, 0);
        }
        libc::setsid();
        libc::chdir(c"/".as_ptr());
        // Success: the zygote sees EOF. Then drop every inherited fd (the zygote's socket...).
        libc::close(pipe);
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        reap_forever()
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

/// pid 1's loop: reap every child; exit on SIGTERM/SIGINT (which ends the pid namespace).
unsafe fn reap_forever() -> ! {
    // SAFETY: signal mask and wait calls on local, initialised sigset_t values.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        let mut wanted: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut wanted);
        for s in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut wanted, s);
        }
        loop {
            let sig = libc::sigwaitinfo(&wanted, std::ptr::null_mut());
            if sig == libc::SIGTERM || sig == libc::SIGINT {
                libc::_exit(0);
            }
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
        }
    }
}
