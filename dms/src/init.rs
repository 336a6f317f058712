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
use std::ffi::{CStr, CString};
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
const STEP_LINK: u8 = 14;
const STEP_VETH: u8 = 15;
const STEP_HOST_NETNS: u8 = 16;

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
/// started on demand, from its claim pipe when it was a spare): a user-namespace byte, the
/// length (u16, little endian) and bytes of the netlink requests that configure its `eth0`
/// (only for a spare that made one), then the hostname and each cgroup file it joins,
/// NUL-terminated.
fn claim_message(spec: &InitSpec, link: &[u8]) -> Result<Vec<u8>, String> {
    let mut hostname = spec.hostname.as_bytes();
    hostname = &hostname[..hostname.len().min(64)];
    if hostname.is_empty() || hostname.contains(&0) {
        return Err(format!(
            "hostname {:?}: empty or with a NUL byte",
            spec.hostname
        ));
    }
    let mut m = vec![u8::from(spec.userns)];
    let len = u16::try_from(link.len()).map_err(|_| "link requests too long".to_string())?;
    m.extend_from_slice(&len.to_le_bytes());
    m.extend_from_slice(link);
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
    /// The host end of its veth pair (whose other end is its `eth0`), if it made one.
    link: Option<String>,
}

/// How long a spare waits for a domain before it is replaced by a fresh one, so that a
/// domain's copy of the host's mounts is never much older than the domain.
const SPARE_MAX_AGE: Duration = Duration::from_secs(600);
/// After a spare failed, how long to wait before starting another.
const SPARE_RETRY: Duration = Duration::from_secs(5);

/// The zygote's spare inits (`spare_inits` in the configuration): `target` without a network
/// link, for domains with loopback only, and, once a NAT domain has asked for one, `target`
/// with a veth pair made, for NAT domains.
#[derive(Debug, Default)]
pub(crate) struct Spares {
    target: usize,
    resolv: Option<std::path::PathBuf>,
    ready: VecDeque<Spare>,
    linked: VecDeque<Spare>,
    links: Option<SpareLinks>,
    /// After a spare of a kind failed (index 1: linked), when to start another of that kind;
    /// each kind backs off alone, so a host that cannot make veth pairs still gets the others.
    retry_at: [Option<Instant>; 2],
}

/// How spares make their veth pair: the host end `<prefix>x<n>`, in the host's network
/// namespace, keeps its name when a domain takes it (a rename costs an RCU grace period).
#[derive(Debug)]
struct SpareLinks {
    prefix: String,
    /// The zygote's (the host's) network namespace, where the host ends go.
    host_netns: OwnedFd,
    next: u32,
    /// A NAT domain has asked for a spare: keep linked ones from now on.
    wanted: bool,
}

/// Temporary host-end names stay within the 15 bytes of an interface name: a prefix of at most
/// 8, `x`, and at most 6 digits.
const SPARE_LINK_NUMBERS: u32 = 1_000_000;

impl SpareLinks {
    fn next_name(&mut self) -> String {
        self.next = (self.next + 1) % SPARE_LINK_NUMBERS;
        format!("{}x{}", self.prefix, self.next)
    }
}

impl Spares {
    /// Keeps `target` spares whose `/etc/resolv.conf` is `resolv`, and whose veth pairs (for
    /// NAT domains) have host ends named after `link_prefix`. Spares that no longer fit are
    /// dropped: closing their claim pipe makes them exit, and the zygote reaps them.
    pub(crate) fn configure(
        &mut self,
        target: usize,
        resolv: Option<std::path::PathBuf>,
        link_prefix: Option<String>,
    ) {
        if resolv != self.resolv {
            self.ready.clear();
            self.linked.clear();
            self.resolv = resolv;
        }
        if link_prefix.as_deref() != self.links.as_ref().map(|l| l.prefix.as_str()) {
            self.linked.clear();
            let wanted = self.links.as_ref().is_some_and(|l| l.wanted);
            self.links = link_prefix.and_then(|prefix| {
                let host_netns = std::fs::File::open("/proc/self/ns/net").ok()?;
                Some(SpareLinks {
                    prefix,
                    host_netns: host_netns.into(),
                    next: std::process::id() % SPARE_LINK_NUMBERS,
                    wanted,
                })
            });
        }
        self.target = target;
        self.ready.truncate(target);
        self.linked.truncate(target);
        self.retry_at = [None; 2];
    }

    /// The kinds (linked: true) of which fewer spares are ready than wanted, plain first.
    fn missing(&self) -> impl Iterator<Item = bool> + '_ {
        let plain = self.ready.len() < self.target;
        let linked =
            self.links.as_ref().is_some_and(|l| l.wanted) && self.linked.len() < self.target;
        [(false, plain), (true, linked)]
            .into_iter()
            .filter_map(|(kind, short)| short.then_some(kind))
    }

    /// The first missing kind not backing off at `now`.
    fn due(&self, now: Instant) -> Option<bool> {
        self.missing()
            .find(|k| self.retry_at[usize::from(*k)].is_none_or(|t| t <= now))
    }

    /// The spare that has waited longest, of either kind.
    fn oldest(&self) -> Option<Instant> {
        let born = |q: &VecDeque<Spare>| q.front().map(|s| s.born);
        match (born(&self.ready), born(&self.linked)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
        if self.due(now).is_some() {
            return 0;
        }
        let retry = self
            .missing()
            .filter_map(|k| self.retry_at[usize::from(k)])
            .min();
        match (retry, self.oldest()) {
            (Some(t), Some(born)) => until(t.min(born + SPARE_MAX_AGE)),
            (Some(t), None) => until(t),
            (None, Some(born)) => until(born + SPARE_MAX_AGE),
            (None, None) => -1,
        }
    }

    /// Replaces a spare past its age, or starts one more if fewer than wanted (one per call,
    /// so requests waiting on the socket come first).
    pub(crate) fn tend(&mut self, inits: &mut HashSet<i32>) {
        let now = Instant::now();
        for q in [&mut self.ready, &mut self.linked] {
            if q.front().is_some_and(|s| s.born + SPARE_MAX_AGE <= now) {
                q.pop_front();
            }
        }
        let Some(linked) = self.due(now) else {
            return;
        };
        let link = match (&mut self.links, linked) {
            (Some(l), true) => Some((l.next_name(), l.host_netns.as_raw_fd())),
            _ => None,
        };
        let link = link.as_ref().map(|(name, fd)| (name.as_str(), *fd));
        match start_spare(self.resolv.as_deref(), link) {
            Ok(s) => {
                inits.insert(s.pid);
                if linked {
                    self.linked.push_back(s);
                } else {
                    self.ready.push_back(s);
                }
                self.retry_at[usize::from(linked)] = None;
            }
            Err(_) => self.retry_at[usize::from(linked)] = Some(now + SPARE_RETRY),
        }
    }

    /// A reaped init: if it was a spare waiting for a claim, it failed; wait before the next.
    pub(crate) fn reaped(&mut self, pid: i32) {
        for (kind, q) in [&mut self.ready, &mut self.linked].into_iter().enumerate() {
            if let Some(i) = q.iter().position(|s| s.pid == pid) {
                q.remove(i);
                self.retry_at[kind] = Some(Instant::now() + SPARE_RETRY);
            }
        }
    }

    /// A spare for `spec`, if one fits: the policy paths are mounted before the claim, so
    /// only a domain without them (and with the spares' resolv.conf) can take one; a NAT
    /// domain takes one with a veth pair, any other one without.
    fn take(&mut self, spec: &InitSpec) -> Option<Spare> {
        if !(spec.private_paths.is_empty()
            && spec.readonly_paths.is_empty()
            && spec.resolv_conf == self.resolv)
        {
            return None;
        }
        if spec.network.is_none() {
            return self.ready.pop_front();
        }
        if let Some(l) = &mut self.links {
            l.wanted = true;
        }
        self.linked.pop_front()
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
/// yet; with `link` (a host-end name and the host's network namespace), a veth pair whose
/// other end is its `eth0`. Until it is claimed it exits when the zygote closes its claim pipe
/// or dies, and its network namespace, with the pair, goes with it.
fn start_spare(
    resolv: Option<&std::path::Path>,
    link: Option<(&str, RawFd)>,
) -> Result<Spare, String> {
    let prep = prepare(&InitSpec {
        resolv_conf: resolv.map(std::path::Path::to_path_buf),
        ..InitSpec::default()
    })?;
    let link_request = match link {
        Some((name, netns)) => Some((
            dms_net::spare_link_request(name, netns.unsigned_abs()).map_err(|e| e.to_string())?,
            netns,
            cstring(
                format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6").as_ref(),
                "host end sysctl",
            )?,
        )),
        None => None,
    };
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
            link: link_request
                .as_ref()
                .map(|(request, netns, host_ipv6)| SpareLink {
                    request,
                    netns: *netns,
                    host_ipv6,
                }),
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
        link: link.map(|(name, _)| name.to_string()),
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
) -> Result<(i32, OwnedFd, Option<String>), String> {
    let claim = claim_message(spec, &[])?;
    // Only a spare with a veth pair gets its eth0 configured; on demand, the daemon does it.
    let link = match &spec.network {
        Some(n) => dms_net::domain_link_requests(n.address, n.prefix, n.gateway)
            .map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    if claim.len() + link.len() <= CLAIM_MAX {
        if let Some(spare) = spares.take(spec) {
            let pid = spare.pid;
            let host_link = spare.link.clone();
            let kind = usize::from(host_link.is_some());
            let linked_claim;
            let claim = if host_link.is_some() {
                linked_claim = claim_message(spec, &link)?;
                &linked_claim
            } else {
                &claim
            };
            match claim_spare(spare, claim, spec) {
                Ok(ctl) => return Ok((pid, ctl, host_link)),
                Err(_) => {
                    // A broken spare: start this domain's init on demand, which reports what
                    // fails, if anything; no new spare for a while.
                    inits.remove(&pid);
                    spares.retry_at[kind] = Some(Instant::now() + SPARE_RETRY);
                }
            }
        }
    }
    let (pid, ctl) = start_now(spec, &claim)?;
    inits.insert(pid);
    Ok((pid, ctl, None))
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
        STEP_LINK => "configuring eth0 (up, address, default route)".into(),
        STEP_VETH => "creating its veth pair".into(),
        STEP_HOST_NETNS => "returning from the host's network namespace to its own".into(),
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
    /// A spare: read from this pipe, written by the zygote when a domain takes it. With
    /// `link`, it first makes its veth pair.
    FromPipe {
        fd: RawFd,
        link: Option<SpareLink<'a>>,
    },
}

/// How a spare makes its veth pair.
struct SpareLink<'a> {
    /// The prepared request, whose peer (the host end) goes to `netns`.
    request: &'a [u8],
    /// The host's network namespace.
    netns: RawFd,
    /// The host end's `disable_ipv6` sysctl, written from `netns`: off the create path, where
    /// the write costs the kernel an address teardown and can spin waiting for the RTNL lock
    /// that namespace teardowns hold.
    host_ipv6: &'a CStr,
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
            Claim::Given(_) => {
                close_all_but(&[pipe, fds.ctl]);
                ipv6_off_for_new_links();
            }
            Claim::FromPipe { fd, link } => {
                let host_netns = link.as_ref().map_or(-1, |l| l.netns);
                close_all_but(&[pipe, fds.ctl, *fd, host_netns]);
                libc::prctl(libc::PR_SET_NAME, c"dms-spare".as_ptr());
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    fail(pipe, STEP_NETNS, 0);
                }
                ipv6_off_for_new_links();
                if let Some(link) = link {
                    if !netlink_apply(link.request) {
                        fail(pipe, STEP_VETH, 0);
                    }
                    if !host_end_ipv4_only(link) {
                        fail(pipe, STEP_HOST_NETNS, 0);
                    }
                    libc::close(link.netns);
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
        // [userns] [link length u16 le] [link requests] hostname \0 (procs file \0)*
        let Some((&userns, rest)) = msg.split_first() else {
            libc::_exit(0)
        };
        let Some((len, rest)) = rest.split_first_chunk::<2>() else {
            libc::_exit(0)
        };
        let Some((link, rest)) = rest.split_at_checked(usize::from(u16::from_le_bytes(*len)))
        else {
            libc::_exit(0)
        };
        let mut fields = rest.split(|b| *b == 0);
        let hostname = fields.next().unwrap_or_default();
        for (i, p) in fields.take_while(|f| !f.is_empty()).enumerate() {
            // Every field is followed by its NUL in `msg`.
            if !write_byte(p.as_ptr().cast(), b'0') {
                fail(pipe, STEP_CGROUP, i);
            }
        }
        // Now that we are in the domain's cgroups, they become the namespace's root.
        if libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
            fail(pipe, STEP_CGROUPNS, 0);
        }
        if libc::sethostname(hostname.as_ptr().cast(), hostname.len()) != 0 {
            fail(pipe, STEP_HOSTNAME, 0);
        }
        if !link.is_empty() && !netlink_apply(link) {
            fail(pipe, STEP_LINK, 0);
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

/// Makes links created later in this (new) network namespace IPv4-only: the domain's `eth0`
/// is NATed over IPv4, and IPv6 on it would only cost the kernel addrconf, DAD and MLD work
/// per domain. `lo`, which exists already, keeps `::1`. Best effort: a host booted without
/// IPv6 has no such file, and a domain works the same either way.
unsafe fn ipv6_off_for_new_links() {
    // SAFETY: a NUL-terminated literal path.
    unsafe {
        write_byte(
            c"/proc/sys/net/ipv6/conf/default/disable_ipv6".as_ptr(),
            b'1',
        )
    };
}

/// Opens `path` and writes `byte` to it; whether it was written (errno says why not). Raw
/// syscalls only, for the init's child side.
///
/// # Safety
/// `path` must be a NUL-terminated string.
unsafe fn write_byte(path: *const libc::c_char, byte: u8) -> bool {
    // SAFETY: the caller's NUL-terminated path, a local byte, and an fd we own and close.
    unsafe {
        let fd = libc::open(path, libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let written = libc::write(fd, std::ptr::from_ref(&byte).cast(), 1) == 1;
        libc::close(fd);
        written
    }
}

/// Writes the host end's `disable_ipv6` (best effort, as [`ipv6_off_for_new_links`]) from the
/// host's network namespace, then returns to the spare's own; false if it could not return.
///
/// # Safety
/// Only in a single-threaded spare, before anything else uses its network namespace.
unsafe fn host_end_ipv4_only(link: &SpareLink<'_>) -> bool {
    // SAFETY: fds we own and close, NUL-terminated paths.
    unsafe {
        let own = libc::open(
            c"/proc/self/ns/net".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if own < 0 {
            return false;
        }
        // /proc/sys/net shows the opener's network namespace.
        if libc::setns(link.netns, libc::CLONE_NEWNET) == 0 {
            write_byte(link.host_ipv6.as_ptr(), b'1');
            if libc::setns(own, libc::CLONE_NEWNET) != 0 {
                return false;
            }
        }
        libc::close(own);
        true
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

/// Sends prepared rtnetlink requests (see `dms_net::domain_link_requests`) in one datagram
/// and checks the kernel's acks; false, with errno set, when one failed. The kernel handles
/// route requests while sending, so the acks are there when `send` returns: nothing waits.
fn netlink_apply(requests: &[u8]) -> bool {
    let wanted = dms_net::count_requests(requests);
    // SAFETY: a socket we own and close, local buffers, and errno of this thread.
    unsafe {
        let s = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if s < 0 {
            return false;
        }
        let mut ok =
            libc::send(s, requests.as_ptr().cast(), requests.len(), 0) == requests.len() as isize;
        let mut buf = [0u8; 4096];
        let mut acks = 0;
        while ok && acks < wanted {
            let n = libc::recv(s, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT);
            if n <= 0 {
                ok = false;
                break;
            }
            let (got, error) = dms_net::scan_acks(&buf[..n as usize]);
            if let Some(e) = error {
                *libc::__errno_location() = e;
                ok = false;
            }
            acks += got;
        }
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
    use crate::spawn::PreparedExec;
    let spec: crate::spawn::ProcessSpec =
        serde_json::from_slice(request).map_err(|e| format!("bad command request: {e}"))?;
    let exec = PreparedExec::new(&spec)?;
    let stdio: Vec<RawFd> = stdio.iter().map(AsRawFd::as_raw_fd).collect();
    let (rd, wr) = cloexec_pipe()?;
    let child = CommandChild {
        exec: &exec,
        stdio: &stdio,
        reply,
        report: wr.as_raw_fd(),
        no_new_privs,
    };
    let pid = vfork_command(&child).map_err(|e| format!("fork: {e}"))?;
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

/// What a command's child needs between its clone and its exec; borrowed from the init,
/// which is suspended meanwhile (CLONE_VFORK).
struct CommandChild<'a> {
    exec: &'a crate::spawn::PreparedExec,
    stdio: &'a [RawFd],
    reply: RawFd,
    report: RawFd,
    no_new_privs: bool,
}

/// The stack a command's child runs on until its exec. One per init: the init is single
/// threaded and suspended until the child has exec'd or exited, so it is never used twice at
/// once. Below it, an inaccessible guard page.
const COMMAND_STACK_SIZE: usize = 256 * 1024;

/// Starts a command's child sharing the init's memory and suspends the init until the child
/// has exec'd or exited (CLONE_VM | CLONE_VFORK, as posix_spawn does): no page tables are
/// copied and none torn down at exec, which a fork of the init would cost on every command.
/// Returns the child's pid.
fn vfork_command(child: &CommandChild<'_>) -> std::io::Result<i32> {
    static STACK: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let page = 4096;
    let base = match STACK.get() {
        Some(b) => *b,
        None => {
            // SAFETY: a fresh anonymous private mapping; its lowest page becomes the guard.
            let b = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    COMMAND_STACK_SIZE + page,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                    -1,
                    0,
                )
            };
            if b == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: the first page of the mapping just made.
            unsafe { libc::mprotect(b, page, libc::PROT_NONE) };
            *STACK.get_or_init(|| b as usize)
        }
    };
    let top = (base + page + COMMAND_STACK_SIZE) as *mut libc::c_void;
    // SAFETY: the child runs `command_child` on its own stack (`top` is the mapping's end,
    // page aligned) with a pointer to `child`, which outlives it: CLONE_VFORK keeps this
    // thread, the only one, suspended until the child has exec'd or exited. The child only
    // makes syscalls; what it writes to shared memory (errno) nobody reads in between.
    let pid = unsafe {
        libc::clone(
            command_child,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::from_ref(child).cast_mut().cast(),
        )
    };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(pid)
}

/// The child of [`vfork_command`]: says hello on the command's socket, takes its stdio and
/// credentials and execs; a failure goes to the report pipe.
extern "C" fn command_child(arg: *mut libc::c_void) -> libc::c_int {
    use crate::spawn::{child_stdio, fail_child, STEP_NO_NEW_PRIVS};
    // SAFETY: `arg` is the `CommandChild` the suspended parent passed to clone; this child
    // only makes syscalls and never returns (exec or _exit).
    unsafe {
        let c = &*arg.cast::<CommandChild<'_>>();
        // Its pid as the daemon sees it comes with this (see COMMAND_HELLO); best effort.
        libc::send(
            c.reply,
            [crate::spawn::COMMAND_HELLO].as_ptr().cast(),
            1,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        );
        // Without fds of its own the command keeps the init's /dev/null.
        child_stdio(c.stdio, c.report);
        if c.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail_child(c.report, STEP_NO_NEW_PRIVS);
        }
        c.exec.exec(c.report)
    }
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
    fn claim_message_is_userns_link_hostname_and_procs_files_nul_terminated() {
        let spec = InitSpec {
            hostname: "atlas.alice".into(),
            procs_files: vec!["/a/cgroup.procs".into(), "/b/cgroup.procs".into()],
            userns: true,
            ..InitSpec::default()
        };
        assert_eq!(
            claim_message(&spec, &[]).unwrap(),
            b"\x01\0\0atlas.alice\0/a/cgroup.procs\0/b/cgroup.procs\0"
        );
        assert_eq!(
            claim_message(&spec, b"abc").unwrap(),
            b"\x01\x03\0abcatlas.alice\0/a/cgroup.procs\0/b/cgroup.procs\0"
        );
        let long = InitSpec {
            hostname: "h".repeat(100),
            ..InitSpec::default()
        };
        let m = claim_message(&long, &[]).unwrap();
        assert_eq!(
            m,
            [&[0u8, 0, 0][..], "h".repeat(64).as_bytes(), b"\0"].concat()
        );
        let nul = InitSpec {
            procs_files: vec!["/a\0b".into()],
            hostname: "x".into(),
            ..InitSpec::default()
        };
        assert!(claim_message(&nul, &[]).unwrap_err().contains("NUL"));
        let empty = InitSpec::default();
        assert!(claim_message(&empty, &[]).unwrap_err().contains("hostname"));
    }

    #[test]
    fn spares_are_due_only_when_missing_and_not_backing_off() {
        let mut s = Spares::default();
        assert_eq!(s.poll_timeout(), -1, "none wanted");
        s.configure(2, None, None);
        assert_eq!(s.poll_timeout(), 0, "two missing");
        s.retry_at[0] = Some(Instant::now() + Duration::from_secs(5));
        let t = s.poll_timeout();
        assert!((4000..=5001).contains(&t), "{t}");
        s.configure(0, None, None);
        assert_eq!(s.poll_timeout(), -1);
    }

    #[test]
    fn spare_link_names_fit_an_interface_name_and_wrap() {
        let mut s = Spares::default();
        s.configure(1, None, Some("abcdefgh".into()));
        let l = s.links.as_mut().unwrap();
        l.next = SPARE_LINK_NUMBERS - 2;
        let longest = l.next_name();
        assert_eq!(longest, "abcdefghx999999");
        dms_net::validate_ifname(&longest).unwrap();
        assert_eq!(l.next_name(), "abcdefghx0");
    }

    /// A spare without a link, for the bookkeeping (no process behind it).
    fn unlinked_spare() -> Spare {
        let (rd, wr) = cloexec_pipe().unwrap();
        let (ctl, _) = control_socket().unwrap();
        Spare {
            pid: 0,
            claim: wr,
            report: rd,
            ctl,
            born: Instant::now(),
            link: None,
        }
    }

    #[test]
    fn linked_spares_are_kept_once_a_nat_domain_asked_for_one() {
        let mut s = Spares::default();
        s.configure(1, None, Some("dmsv".into()));
        s.ready.push_back(unlinked_spare());
        assert_eq!(s.missing().count(), 0, "plain ones only, until asked");
        let nat = InitSpec {
            network: Some(crate::spawn::InitNetwork {
                address: "10.1.0.2".parse().unwrap(),
                prefix: 16,
                gateway: "10.1.0.1".parse().unwrap(),
            }),
            ..InitSpec::default()
        };
        assert!(
            s.take(&nat).is_none(),
            "a NAT domain never takes a spare without a link"
        );
        assert_eq!(s.missing().collect::<Vec<_>>(), [true]);
        // A linked spare that failed delays only more linked ones.
        s.retry_at[1] = Some(Instant::now() + Duration::from_secs(5));
        assert_eq!(s.due(Instant::now()), None);
        assert!(s.poll_timeout() > 4000);
        assert!(s.take(&InitSpec::default()).is_some());
        assert_eq!(
            s.due(Instant::now()),
            Some(false),
            "plain ones are not held back"
        );
        assert_eq!(s.poll_timeout(), 0);
    }

    #[test]
    fn only_specs_without_policy_paths_and_with_the_spares_resolv_take_a_spare() {
        let mut s = Spares::default();
        s.configure(1, Some("/run/dms/resolv.conf".into()), None);
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
        s.ready.push_back(unlinked_spare());
        assert!(s.take(&with_paths).is_none());
        assert!(s.take(&other_resolv).is_none());
        assert!(s.take(&plain).is_some());
    }
}
