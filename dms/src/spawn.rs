//! The spawner: a single-threaded zygote process forked before the tokio runtime starts. It is
//! the only place that forks: children join a domain's cgroups, take the target credentials and
//! exec, with no runtime threads around (see ARCHITECTURE.md §3).
//!
//! Protocol: a SOCK_SEQPACKET socketpair; each request is one JSON datagram with up to three fds
//! (stdin, stdout, stderr) as SCM_RIGHTS; the zygote answers `Started`/`Failed` at once and sends
//! `Exited` when it reaps the child.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Read;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// A process to start: program, environment, directory and credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Program and arguments; a program without `/` is looked up in the clean PATH.
    pub argv: Vec<String>,
    /// Environment (the caller builds a clean one).
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Target uid.
    pub uid: u32,
    /// Target primary gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// What to run and where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnRequest {
    /// The process.
    pub process: ProcessSpec,
    /// Files the (single-threaded) child writes `0` to before exec, to join the domain's cgroups
    /// (see `Cgroups::self_join_files`).
    pub procs_files: Vec<PathBuf>,
    /// Namespaces of a domain init to enter before exec (after joining the cgroups).
    #[serde(default)]
    pub enter: Option<Enter>,
}

/// A domain init whose namespaces a child enters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enter {
    /// Domain name, for messages.
    pub domain: String,
    /// Host pid of the init.
    pub init_pid: i32,
    /// Its start time, to refuse a recycled pid.
    pub init_start: u64,
    /// `CLONE_NEW*` flags of the namespaces to enter.
    pub flags: i32,
}

/// A domain init to start: it holds new pid, mount, uts, ipc, net and cgroup namespaces, sets
/// up the domain's filesystem view and then only reaps orphans until it is killed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InitSpec {
    /// Hostname inside the domain (truncated to 64 bytes).
    pub hostname: String,
    /// Files the (single-threaded) init writes `0` to, to join the domain's cgroups before
    /// unsharing its cgroup namespace (see `Cgroups::self_join_files`).
    pub procs_files: Vec<PathBuf>,
    /// Directories that get an empty private tmpfs (same mode and owner as the original).
    pub private_paths: Vec<PathBuf>,
    /// Paths that become read-only (recursive bind mounts remounted read-only).
    pub readonly_paths: Vec<PathBuf>,
    /// A file bind-mounted over `/etc/resolv.conf`, if any.
    pub resolv_conf: Option<PathBuf>,
    /// Enter a user namespace of its own once everything else is set up (policy `userns`).
    #[serde(default)]
    pub userns: bool,
    /// The address of a NAT domain's `eth0`: a spare init that made a veth pair configures it
    /// when claimed (see [`StartedInit::spare_link`]).
    #[serde(default)]
    pub network: Option<InitNetwork>,
}

/// A NAT domain's address on its `eth0`, and its gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitNetwork {
    /// The domain's address.
    pub address: std::net::Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The default route's gateway (the bridge).
    pub gateway: std::net::Ipv4Addr,
}

/// A started domain init.
#[derive(Debug)]
pub struct StartedInit {
    /// Its host pid.
    pub pid: i32,
    /// The daemon's end of its control socket (for [`exec_via_init`]).
    pub ctl: OwnedFd,
    /// When a spare with a veth pair was taken: the pair's host end, still down, without a
    /// master and under a temporary name; the init's `eth0` is up with its address and route.
    /// None: the init has only loopback and the daemon makes the pair.
    pub spare_link: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Job {
    Spawn(SpawnRequest),
    Init(InitSpec),
    /// Keep this many spare inits whose `/etc/resolv.conf` is `resolv_conf`; spares for NAT
    /// domains name their veth's host end after `link_prefix`.
    Spares {
        count: usize,
        resolv_conf: Option<PathBuf>,
        #[serde(default)]
        link_prefix: Option<String>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    id: u64,
    job: Job,
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Started {
        id: u64,
        pid: i32,
        /// An init's veth host end, when a spare with one was taken.
        #[serde(default)]
        link: Option<String>,
    },
    Failed {
        id: u64,
        error: String,
    },
    Exited {
        pid: i32,
        status: ExitStatus,
    },
}

/// How a spawned process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// Normal exit with a code.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl ExitStatus {
    /// The shell convention: the code, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// Spawning failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The zygote refused or the child failed before exec.
    #[error("{0}")]
    Failed(String),
    /// The zygote is gone.
    #[error("the spawner process is not available: {0}")]
    Unavailable(String),
}

/// The daemon's handle on the zygote. Cheap to share; calls block the calling thread (callers
/// on tokio use spawn_blocking).
#[derive(Debug, Clone)]
pub struct Spawner {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sock: OwnedFd,
    next_id: Mutex<u64>,
    pending: Mutex<HashMap<u64, mpsc::Sender<Result<Started, String>>>>,
    waiters: Mutex<HashMap<i32, mpsc::Sender<ExitStatus>>>,
    /// Exits that arrived before anyone waited for them.
    early_exits: Mutex<HashMap<i32, ExitStatus>>,
}

/// What the zygote answers to a request: a pid, and an init's control socket and veth host end.
type Started = (i32, Option<OwnedFd>, Option<String>);

/// A started process; dropping it without waiting lets it run on (its parent, the zygote or
/// a domain init, still reaps it).
#[derive(Debug)]
pub struct Child {
    /// Its pid (host pid namespace; for a guest command, the guest's).
    pub pid: i32,
    exit: ExitSource,
}

/// Where a child's exit status comes from.
#[derive(Debug)]
enum ExitSource {
    /// The zygote's reader thread, or a guest agent poller.
    Channel(mpsc::Receiver<ExitStatus>),
    /// The domain init that forked it, on this command's own socket (see [`exec_via_init`]).
    Init(OwnedFd),
}

impl Child {
    /// A "process" whose exit status arrives on `exit` (a guest command run through its agent:
    /// `pid` is the guest's).
    pub fn from_receiver(pid: i32, exit: mpsc::Receiver<ExitStatus>) -> Child {
        Child {
            pid,
            exit: ExitSource::Channel(exit),
        }
    }

    /// Waits for the process to end.
    pub fn wait(self) -> Result<ExitStatus, SpawnError> {
        match self.exit {
            ExitSource::Channel(rx) => rx
                .recv()
                .map_err(|_| SpawnError::Unavailable("spawner exited".into())),
            ExitSource::Init(sock) => {
                let mut buf = [0u8; 16];
                loop {
                    match nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                        Err(nix::errno::Errno::EINTR) => continue,
                        // Anything but an exit report means the init is gone, and with it its
                        // pid namespace: the kernel killed the command.
                        Ok(n) => {
                            return Ok(parse_exited(&buf[..n])
                                .unwrap_or(ExitStatus::Signal(libc::SIGKILL)))
                        }
                        Err(_) => return Ok(ExitStatus::Signal(libc::SIGKILL)),
                    }
                }
            }
        }
    }
}

/// Messages a domain init sends on a command's socket (see [`exec_via_init`]): started (with
/// the command's pidfd), failed (then a text), exited (then a kind byte, 0 for a code and 1 for
/// a signal, and the value as i32 little-endian).
pub(crate) const INIT_STARTED: u8 = b'S';
pub(crate) const INIT_FAILED: u8 = b'F';
const INIT_EXITED: u8 = b'X';
/// Sent on the same socket by the command itself, before its exec and so before the init's
/// answer, so that the kernel attaches its pid as the daemon sees it (the init knows only its
/// pid in the domain's pid namespace).
pub(crate) const COMMAND_HELLO: u8 = b'P';

/// The exit report a domain init sends for `status`.
pub(crate) fn exited_message(status: ExitStatus) -> [u8; 6] {
    let (kind, value) = match status {
        ExitStatus::Code(c) => (0, c),
        ExitStatus::Signal(s) => (1, s),
    };
    let mut msg = [INIT_EXITED, kind, 0, 0, 0, 0];
    msg[2..].copy_from_slice(&value.to_le_bytes());
    msg
}

/// The status in an exit report, if `msg` is one.
fn parse_exited(msg: &[u8]) -> Option<ExitStatus> {
    match *msg {
        [INIT_EXITED, kind, a, b, c, d] => {
            let value = i32::from_le_bytes([a, b, c, d]);
            Some(if kind == 0 {
                ExitStatus::Code(value)
            } else {
                ExitStatus::Signal(value)
            })
        }
        _ => None,
    }
}

/// How long a domain init has to take a command and answer whether it started.
const INIT_ANSWER_LIMIT: Duration = Duration::from_secs(30);

/// Starts `spec` as a child of a domain's init, which is already in the domain's cgroups and
/// namespaces, so nothing is joined: the request goes over the init's control socket `ctl`
/// with a socket of its own (and `stdio`, if any) attached; the init answers and later
/// reports the exit on that socket.
pub fn exec_via_init(
    ctl: &OwnedFd,
    domain: &str,
    spec: &ProcessSpec,
    stdio: &[RawFd],
) -> Result<Child, SpawnError> {
    let gone = |e: String| SpawnError::Failed(format!("domain {domain:?}: its init: {e}"));
    let (ours, theirs) = seqpacket_pair().map_err(SpawnError::Unavailable)?;
    // Credentials on what arrives: the command's hello then says its pid in our namespace.
    nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::PassCred, &true)
        .map_err(|e| SpawnError::Unavailable(format!("SO_PASSCRED: {e}")))?;
    let msg = serde_json::to_vec(spec).map_err(|e| SpawnError::Failed(e.to_string()))?;
    if msg.len() > INIT_REQUEST_MAX {
        return Err(SpawnError::Failed(format!(
            "the command and its environment take {} bytes; at most {INIT_REQUEST_MAX} are allowed",
            msg.len()
        )));
    }
    let mut fds = vec![theirs.as_raw_fd()];
    fds.extend_from_slice(stdio);
    // Never blocks on an init that does not read (frozen, or its queue full of a burst of
    // commands): waits for room until the deadline instead.
    let deadline = Instant::now() + INIT_ANSWER_LIMIT;
    let late = |what: &str| {
        gone(format!(
            "{what} within {} s (is the domain frozen?)",
            INIT_ANSWER_LIMIT.as_secs()
        ))
    };
    loop {
        match sendmsg::<()>(
            ctl.as_raw_fd(),
            &[IoSlice::new(&msg)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(_) => break,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {
                if !wait_ready(ctl, libc::POLLOUT, deadline) {
                    return Err(late("takes no command"));
                }
            }
            Err(e) => return Err(gone(format!("sending the command: {e}"))),
        }
    }
    drop(theirs);
    let mut buf = vec![0u8; 4096];
    // First, normally, the command's hello (COMMAND_HELLO) with its pid as we see it.
    let mut pid = None;
    loop {
        if !wait_ready(&ours, libc::POLLIN, deadline) {
            return Err(late("no answer"));
        }
        let mut cmsg_buf = nix::cmsg_space!([RawFd; 1], nix::sys::socket::UnixCredentials);
        let (n, sender, fds) = recv_with_fds(ours.as_raw_fd(), &mut buf, &mut cmsg_buf)
            .map_err(|e| gone(format!("reading its answer: {e}")))?;
        let pidfd = fds.into_iter().next();
        let first = buf.first().copied().filter(|_| n > 0);
        if first == Some(COMMAND_HELLO) && n == 1 {
            pid = sender;
            continue;
        }
        return match (first, pidfd) {
            (Some(INIT_STARTED), Some(pidfd)) if n == 1 => Ok(Child {
                // Without the hello (it could not be sent), from the pidfd: 0 when the command
                // has already ended and been reaped (the kernel then says -1).
                pid: pid
                    .or_else(|| pid_of_pidfd(&pidfd).filter(|p| *p > 0))
                    .unwrap_or(0),
                exit: ExitSource::Init(ours),
            }),
            (Some(INIT_FAILED), _) if n > 1 => Err(SpawnError::Failed(
                String::from_utf8_lossy(&buf[1..n]).into_owned(),
            )),
            _ => Err(gone("exited".into())),
        };
    }
}

/// Receives one message on `sock` into `buf`: its length, the sender's pid (when `cmsg_buf`
/// has room for credentials and the socket passes them) and the fds it carried
/// (close-on-exec).
fn recv_with_fds(
    sock: RawFd,
    buf: &mut [u8],
    cmsg_buf: &mut [u8],
) -> nix::Result<(usize, Option<i32>, Vec<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let m = recvmsg::<()>(sock, &mut iov, Some(cmsg_buf), MsgFlags::MSG_CMSG_CLOEXEC)?;
    Ok((m.bytes, sender_pid(&m), received_fds(&m)))
}

/// The pid in the credentials the kernel attached to a message (SO_PASSCRED).
fn sender_pid(m: &nix::sys::socket::RecvMsg<'_, '_, ()>) -> Option<i32> {
    m.cmsgs().ok()?.find_map(|c| match c {
        nix::sys::socket::ControlMessageOwned::ScmCredentials(cred) if cred.pid() > 0 => {
            Some(cred.pid())
        }
        _ => None,
    })
}

/// Waits until `fd` has `events` (or an error or hangup, which the next call reports); false
/// when `deadline` passes first.
fn wait_ready(fd: &OwnedFd, events: libc::c_short, deadline: Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: one valid pollfd for the duration of the call.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            0 => return false,
            n if n > 0 => return true,
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => return true,
        }
    }
}

/// A connected pair of CLOEXEC SOCK_SEQPACKET sockets (message boundaries kept, fds passed).
pub(crate) fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), String> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| format!("socketpair: {e}"))
}

/// The largest command request a domain init takes.
pub(crate) const INIT_REQUEST_MAX: usize = 60_000;

/// The fds a received message carries, owned.
pub(crate) fn received_fds(m: &nix::sys::socket::RecvMsg<'_, '_, ()>) -> Vec<OwnedFd> {
    let mut got = Vec::new();
    if let Ok(cmsgs) = m.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the kernel just installed these fds for us.
                got.extend(
                    fds.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
    }
    got
}

/// The pid (in our pid namespace) of the process a pidfd refers to.
fn pid_of_pidfd(fd: &OwnedFd) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
}

impl Spawner {
    /// Forks the zygote. Must be called while the process is still single-threaded.
    pub fn start() -> Result<Spawner, SpawnError> {
        let (ours, theirs) = seqpacket_pair().map_err(SpawnError::Unavailable)?;
        // SAFETY: documented precondition: the process is single-threaded here (called from
        // main before any runtime or thread starts), so the child may run arbitrary code.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                drop(ours);
                zygote_main(theirs)
            }
            Ok(ForkResult::Parent { .. }) => {
                drop(theirs);
                let inner = Arc::new(Inner {
                    sock: ours,
                    next_id: Mutex::new(1),
                    pending: Mutex::new(HashMap::new()),
                    waiters: Mutex::new(HashMap::new()),
                    early_exits: Mutex::new(HashMap::new()),
                });
                let reader = Arc::clone(&inner);
                std::thread::Builder::new()
                    .name("spawner-reader".into())
                    .spawn(move || reader_loop(&reader))
                    .map_err(|e| SpawnError::Unavailable(format!("thread: {e}")))?;
                Ok(Spawner { inner })
            }
            Err(e) => Err(SpawnError::Unavailable(format!("fork: {e}"))),
        }
    }

    /// Starts a domain init and returns its host pid and its control socket (for
    /// [`exec_via_init`]). The zygote reaps it when it dies but reports nothing: the daemon
    /// watches inits through pidfds, which also works after a restart, when they are no longer
    /// the zygote's children.
    pub fn start_init(&self, spec: &InitSpec) -> Result<StartedInit, SpawnError> {
        match self.request_answered_apart(Job::Init(spec.clone()))? {
            (pid, Some(ctl), spare_link) => Ok(StartedInit {
                pid,
                ctl,
                spare_link,
            }),
            (pid, None, _) => Err(SpawnError::Failed(format!(
                "domain init {pid} came without its control socket"
            ))),
        }
    }

    /// Makes the zygote keep `count` spare domain inits (see `spare_inits` in the
    /// configuration) for domains whose `/etc/resolv.conf` is `resolv_conf`. It starts them
    /// when it has no request to serve; [`Self::start_init`] takes one when the spec fits.
    pub fn keep_spare_inits(
        &self,
        count: usize,
        resolv_conf: Option<PathBuf>,
        link_prefix: Option<String>,
    ) -> Result<(), SpawnError> {
        self.request(
            Job::Spares {
                count,
                resolv_conf,
                link_prefix,
            },
            &[],
        )
        .map(|_| ())
    }

    /// Starts a process; `stdio` fds (if any) become its stdin, stdout, stderr.
    pub fn spawn(&self, req: &SpawnRequest, stdio: &[RawFd]) -> Result<Child, SpawnError> {
        let (pid, _, _) = self.request(Job::Spawn(req.clone()), stdio)?;
        let (etx, erx) = mpsc::channel();
        // Same lock order as the reader (waiters, then early_exits), so an exit that races
        // with this registration lands in exactly one of the two maps.
        let mut waiters = self.inner.waiters.lock();
        if let Some(status) = self.inner.early_exits.lock().remove(&pid) {
            let _ = etx.send(status);
        } else {
            waiters.insert(pid, etx);
        }
        drop(waiters);
        Ok(Child::from_receiver(pid, erx))
    }

    /// Runs a root tool (tc, nft, qemu-img, ...) through the zygote with `input` on its stdin
    /// (entering `enter`'s namespaces first, if given) and returns its combined output; an
    /// exit other than 0 is an error carrying that output. A tool still running after
    /// `limit` is killed.
    pub fn run_tool(
        &self,
        argv: &[&str],
        input: &[u8],
        enter: Option<Enter>,
        limit: Duration,
    ) -> Result<String, String> {
        use nix::fcntl::OFlag;
        let (out_r, out_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let (in_r, in_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        if input.len() > 60_000 {
            return Err("input too large for a pipe".into());
        }
        nix::unistd::write(&in_w, input).map_err(|e| format!("write: {e}"))?;
        drop(in_w);
        let req = SpawnRequest {
            process: ProcessSpec {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                env: vec![("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into())],
                cwd: "/".into(),
                uid: 0,
                gid: 0,
                groups: vec![],
            },
            procs_files: vec![],
            enter,
        };
        let child = self
            .spawn(
                &req,
                &[in_r.as_raw_fd(), out_w.as_raw_fd(), out_w.as_raw_fd()],
            )
            .map_err(|e| e.to_string())?;
        drop((in_r, out_w));
        let pid = child.pid;
        let output = match read_bounded(out_r, limit) {
            Ok(o) => o,
            Err(e) => {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = child.wait();
                return Err(e);
            }
        };
        match child.wait() {
            Ok(ExitStatus::Code(0)) => Ok(output),
            Ok(st) => Err(format!(
                "{} exited with {}: {}",
                argv[0],
                st.shell_code(),
                output.trim()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Sends `job` with a socket of its own on which the zygote answers, and waits for that
    /// answer in this thread: the answer does not pass through the reader thread, a wakeup
    /// that a busy node can delay by a scheduler tick. Only for jobs whose process the zygote
    /// reports no exit of (inits): an exit, on the shared socket, could otherwise overtake
    /// the answer, and the stale-exit bookkeeping in [`reader_loop`] relies on their order.
    fn request_answered_apart(&self, job: Job) -> Result<Started, SpawnError> {
        let (ours, theirs) = seqpacket_pair().map_err(SpawnError::Unavailable)?;
        self.send(0, job, &[theirs.as_raw_fd()])?;
        drop(theirs);
        if !wait_ready(
            &ours,
            libc::POLLIN,
            Instant::now() + Duration::from_secs(10),
        ) {
            return Err(SpawnError::Unavailable("no answer within 10 s".into()));
        }
        // As large as the reader's: a failure's message can be long.
        let mut buf = vec![0u8; 65536];
        let mut cmsg_buf = nix::cmsg_space!([RawFd; 1]);
        let (n, _, fds) = recv_with_fds(ours.as_raw_fd(), &mut buf, &mut cmsg_buf)
            .map_err(|e| SpawnError::Unavailable(format!("receive: {e}")))?;
        let fd = fds.into_iter().next();
        match serde_json::from_slice::<Reply>(&buf[..n]) {
            Ok(Reply::Started { pid, link, .. }) => Ok((pid, fd, link)),
            Ok(Reply::Failed { error, .. }) => Err(SpawnError::Failed(error)),
            Ok(Reply::Exited { .. }) | Err(_) if n > 0 => Err(SpawnError::Unavailable(
                "unexpected answer from the zygote".into(),
            )),
            _ => Err(SpawnError::Unavailable(
                "the zygote closed the request's socket without an answer".into(),
            )),
        }
    }

    /// Sends `job` as request `id` to the zygote, with `fds` (if any) attached.
    fn send(&self, id: u64, job: Job, fds: &[RawFd]) -> Result<(), SpawnError> {
        let msg = serde_json::to_vec(&Envelope { id, job })
            .map_err(|e| SpawnError::Failed(e.to_string()))?;
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        sendmsg::<()>(
            self.inner.sock.as_raw_fd(),
            &[IoSlice::new(&msg)],
            cmsgs,
            MsgFlags::empty(),
            None,
        )
        .map(|_| ())
        .map_err(|e| SpawnError::Unavailable(format!("send: {e}")))
    }

    fn request(&self, job: Job, stdio: &[RawFd]) -> Result<Started, SpawnError> {
        let id = {
            let mut n = self.inner.next_id.lock();
            *n += 1;
            *n
        };
        let (tx, rx) = mpsc::channel();
        self.inner.pending.lock().insert(id, tx);
        if let Err(e) = self.send(id, job, stdio) {
            self.inner.pending.lock().remove(&id);
            return Err(e);
        }
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(started)) => Ok(started),
            Ok(Err(e)) => Err(SpawnError::Failed(e)),
            Err(_) => {
                self.inner.pending.lock().remove(&id);
                Err(SpawnError::Unavailable("no answer within 10 s".into()))
            }
        }
    }
}

fn reader_loop(inner: &Inner) {
    let mut buf = vec![0u8; 65536];
    loop {
        let mut cmsg_buf = nix::cmsg_space!([RawFd; 1]);
        let (n, fd) = match recv_with_fds(inner.sock.as_raw_fd(), &mut buf, &mut cmsg_buf) {
            Ok((0, ..)) => break,
            Ok((n, _, fds)) => (n, fds.into_iter().next()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        };
        let Ok(reply) = serde_json::from_slice::<Reply>(&buf[..n]) else {
            continue;
        };
        match reply {
            Reply::Started { id, pid, link } => {
                // An exit recorded earlier under this pid belongs to a process that is gone.
                inner.early_exits.lock().remove(&pid);
                if let Some(tx) = inner.pending.lock().remove(&id) {
                    let _ = tx.send(Ok((pid, fd, link)));
                }
            }
            Reply::Failed { id, error } => {
                if let Some(tx) = inner.pending.lock().remove(&id) {
                    let _ = tx.send(Err(error));
                }
            }
            Reply::Exited { pid, status } => {
                let mut waiters = inner.waiters.lock();
                match waiters.remove(&pid) {
                    Some(tx) => {
                        let _ = tx.send(status);
                    }
                    None => {
                        let mut early = inner.early_exits.lock();
                        // Bound the map: exits nobody will wait for (detached runs) are dropped.
                        if early.len() > 4096 {
                            early.clear();
                        }
                        early.insert(pid, status);
                    }
                }
            }
        }
    }
    // Zygote gone: fail everyone waiting.
    inner.pending.lock().clear();
    inner.waiters.lock().clear();
}

/// The zygote's own state.
struct Zygote {
    /// Our pid namespace, to return to after forking a child into a domain's.
    own_pidns: Option<OwnedFd>,
    /// Domain inits: reaped silently.
    inits: std::collections::HashSet<i32>,
    /// Inits started ahead of time.
    spares: crate::init::Spares,
}

fn zygote_main(sock: OwnedFd) -> ! {
    // Die with the daemon.
    // SAFETY: prctl(PR_SET_PDEATHSIG) with a valid signal number.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let _ = nix::unistd::setsid();
    let mut zygote = Zygote {
        own_pidns: std::fs::File::open("/proc/self/ns/pid")
            .ok()
            .map(OwnedFd::from),
        inits: std::collections::HashSet::new(),
        spares: crate::init::Spares::default(),
    };
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    let _ = mask.thread_block();
    let Ok(sfd) = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
    else {
        std::process::exit(1)
    };
    let mut buf = vec![0u8; 65536];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = zygote.spares.poll_timeout();
        // SAFETY: fds is a valid array of two pollfd for the duration of the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if r < 0 {
            continue;
        }
        if r == 0 {
            // Nothing to serve: spare work.
            zygote.spares.tend(&mut zygote.inits);
            continue;
        }
        if fds[1].revents != 0 {
            while let Ok(Some(_)) = sfd.read_signal() {}
            reap(&sock, &mut zygote);
        }
        if fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0
            && fds[0].revents & libc::POLLIN == 0
        {
            std::process::exit(0);
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let mut cmsg_buf = nix::cmsg_space!([RawFd; 3]);
            let (n, fds_in) = match recv_with_fds(sock.as_raw_fd(), &mut buf, &mut cmsg_buf) {
                Ok((n, _, fds)) => (n, fds),
                Err(_) => continue,
            };
            if n == 0 {
                std::process::exit(0);
            }
            // An init's control socket goes to the daemon with the reply.
            let mut ctl = None;
            let mut link = None;
            let mut answer_apart = false;
            let reply = match serde_json::from_slice::<Envelope>(&buf[..n]) {
                Ok(env) => {
                    let started = match &env.job {
                        Job::Spawn(req) => spawn_child(req, &fds_in, &zygote),
                        Job::Init(spec) => {
                            answer_apart = true;
                            crate::init::start(spec, &mut zygote.spares, &mut zygote.inits).map(
                                |(pid, fd, spare_link)| {
                                    ctl = Some(fd);
                                    link = spare_link;
                                    pid
                                },
                            )
                        }
                        Job::Spares {
                            count,
                            resolv_conf,
                            link_prefix,
                        } => {
                            zygote.spares.configure(
                                *count,
                                resolv_conf.clone(),
                                link_prefix.clone(),
                            );
                            Ok(0)
                        }
                    };
                    match started {
                        Ok(pid) => Reply::Started {
                            id: env.id,
                            pid,
                            link,
                        },
                        Err(error) => Reply::Failed { id: env.id, error },
                    }
                }
                Err(e) => Reply::Failed {
                    id: 0,
                    error: format!("bad request: {e}"),
                },
            };
            // An init's request brings the socket to answer on (see request_answered_apart).
            let answer_on = if answer_apart {
                fds_in.into_iter().next()
            } else {
                drop(fds_in);
                None
            };
            send_reply(answer_on.as_ref().unwrap_or(&sock), &reply, ctl.as_ref());
        }
    }
}

/// Sends `reply` to the daemon, with `fd` attached if given (an init's control socket).
fn send_reply(sock: &OwnedFd, reply: &Reply, fd: Option<&OwnedFd>) {
    if let Ok(b) = serde_json::to_vec(reply) {
        let fds = fd.map(|f| [f.as_raw_fd()]);
        let cmsg = fds.as_ref().map(|f| ControlMessage::ScmRights(f));
        let _ = sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&b)],
            cmsg.as_slice(),
            MsgFlags::empty(),
            None,
        );
    }
}

fn reap(sock: &OwnedFd, zygote: &mut Zygote) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _))
                if zygote.inits.remove(&pid.as_raw()) =>
            {
                zygote.spares.reaped(pid.as_raw());
            }
            Ok(WaitStatus::Exited(pid, code)) => send_reply(
                sock,
                &Reply::Exited {
                    pid: pid.as_raw(),
                    status: ExitStatus::Code(code),
                },
                None,
            ),
            Ok(WaitStatus::Signaled(pid, sig, _)) => send_reply(
                sock,
                &Reply::Exited {
                    pid: pid.as_raw(),
                    status: ExitStatus::Signal(sig as i32),
                },
                None,
            ),
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Reads a forked child's failure report from its CLOEXEC pipe: 0 bytes (EOF) means the child
/// got past the point of failing (exec, or the init's set-up); otherwise `buf` holds
/// `[step, ..., errno]`.
pub(crate) fn read_report(rd: &OwnedFd, buf: &mut [u8]) -> usize {
    loop {
        match nix::unistd::read(rd, buf) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.unwrap_or(0),
        }
    }
}

fn cstr(s: &str, what: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} {s:?} contains a NUL byte"))
}

/// A process's exec, prepared before fork so that the forked child only makes syscalls.
pub(crate) struct PreparedExec {
    /// Own the strings that `argv_p` and `envp_p` point into (their heap buffers do not move
    /// with the struct).
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    /// NULL-terminated argument and environment pointers for execve.
    argv_p: Vec<*const libc::c_char>,
    envp_p: Vec<*const libc::c_char>,
    /// Where the program may be: itself when it has a `/`, else each clean-PATH directory.
    candidates: Vec<CString>,
    cwd: CString,
    groups: Vec<libc::gid_t>,
    uid: u32,
    gid: u32,
}

/// Steps a forked child reports failing, as the first byte of its 3-byte report.
const STEP_STDIO: u8 = 1;
const STEP_CGROUPS: u8 = 2;
const STEP_CREDENTIALS: u8 = 3;
const STEP_CWD: u8 = 4;
const STEP_EXEC: u8 = 5;
const STEP_NAMESPACES: u8 = 6;
const STEP_USERNS: u8 = 7;
pub(crate) const STEP_NO_NEW_PRIVS: u8 = 8;

impl PreparedExec {
    pub(crate) fn new(spec: &ProcessSpec) -> Result<PreparedExec, String> {
        if spec.argv.is_empty() {
            return Err("argv is empty".into());
        }
        let argv: Vec<CString> = spec
            .argv
            .iter()
            .map(|a| cstr(a, "argument"))
            .collect::<Result<_, _>>()?;
        let envp: Vec<CString> = spec
            .env
            .iter()
            .map(|(k, v)| cstr(&format!("{k}={v}"), "environment entry"))
            .collect::<Result<_, _>>()?;
        let pointers = |v: &[CString]| {
            v.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        let (argv_p, envp_p) = (pointers(&argv), pointers(&envp));
        let prog = &spec.argv[0];
        let candidates = if prog.contains('/') {
            vec![cstr(prog, "program")?]
        } else {
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .iter()
            .map(|d| cstr(&format!("{d}/{prog}"), "program"))
            .collect::<Result<_, _>>()?
        };
        Ok(PreparedExec {
            _argv: argv,
            _envp: envp,
            argv_p,
            envp_p,
            candidates,
            cwd: cstr(&spec.cwd.to_string_lossy(), "working directory")?,
            groups: spec.groups.clone(),
            uid: spec.uid,
            gid: spec.gid,
        })
    }

    /// In a forked child, after its stdio and domain are set up: takes the credentials, changes
    /// directory and execs; a failure goes to `report` as `[step, errno]` and the child exits.
    ///
    /// # Safety
    /// Only in a child forked from a single-threaded process, before exec.
    pub(crate) unsafe fn exec(&self, report: RawFd) -> ! {
        // SAFETY: plain syscalls on pointers into `self`, which outlives the call.
        unsafe {
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0
                || libc::setgid(self.gid) != 0
                || libc::setuid(self.uid) != 0
            {
                fail_child(report, STEP_CREDENTIALS);
            }
            if libc::chdir(self.cwd.as_ptr()) != 0 {
                fail_child(report, STEP_CWD);
            }
            for c in &self.candidates {
                libc::execve(c.as_ptr(), self.argv_p.as_ptr(), self.envp_p.as_ptr());
            }
            fail_child(report, STEP_EXEC)
        }
    }
}

/// In a forked child: reports `step` and errno on the CLOEXEC pipe `report` and exits 127.
///
/// # Safety
/// Only in a forked child.
pub(crate) unsafe fn fail_child(report: RawFd, step: u8) -> ! {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let msg = [step, (errno & 0xff) as u8, ((errno >> 8) & 0xff) as u8];
    // SAFETY: writing a local buffer to our own pipe fd, then exiting.
    unsafe {
        libc::write(report, msg.as_ptr().cast(), 3);
        libc::_exit(127)
    }
}

/// Turns a child's 3-byte failure report into a message.
pub(crate) fn failure_message(msg: [u8; 3], spec: &ProcessSpec) -> String {
    let errno = nix::errno::Errno::from_raw(i32::from(msg[1]) | (i32::from(msg[2]) << 8));
    let step = match msg[0] {
        STEP_STDIO => "setting up stdin/stdout/stderr".to_string(),
        STEP_CGROUPS => "joining the domain's cgroups".to_string(),
        STEP_CREDENTIALS => format!("switching to uid {} gid {}", spec.uid, spec.gid),
        STEP_CWD => format!("changing to directory {}", spec.cwd.display()),
        STEP_NAMESPACES => "entering the domain's namespaces".to_string(),
        STEP_USERNS => "entering the domain's user namespace".to_string(),
        STEP_NO_NEW_PRIVS => "setting no_new_privs".to_string(),
        _ => format!(
            "executing {:?}",
            spec.argv.first().map_or("", |a| a.as_str())
        ),
    };
    format!("{step}: {}", errno.desc())
}

/// In a forked child: makes `stdio` (if given) its stdin, stdout and stderr and clears the
/// signal mask.
///
/// # Safety
/// Only in a forked child.
pub(crate) unsafe fn child_stdio(stdio: &[RawFd], report: RawFd) {
    // SAFETY: plain syscalls on our own fds and a local sigset.
    unsafe {
        let empty = SigSet::empty();
        libc::sigprocmask(libc::SIG_SETMASK, empty.as_ref(), std::ptr::null_mut());
        for (i, fd) in stdio.iter().enumerate().take(3) {
            if libc::dup2(*fd, i as i32) < 0 {
                fail_child(report, STEP_STDIO);
            }
        }
    }
}

/// Forks one child. Everything the child needs is prepared before fork so the child only makes
/// syscalls; its pre-exec failure comes back through a CLOEXEC pipe.
fn spawn_child(req: &SpawnRequest, stdio: &[OwnedFd], zygote: &Zygote) -> Result<i32, String> {
    // The domain's init, pinned by a pidfd and checked against its start time.
    let enter = match &req.enter {
        Some(e) => Some((
            dms_join::open_process(&e.domain, e.init_pid, e.init_start)
                .map_err(|err| err.to_string())?,
            e.flags,
        )),
        None => None,
    };
    let exec = PreparedExec::new(&req.process)?;
    let procs: Vec<CString> = req
        .procs_files
        .iter()
        .map(|p| cstr(&p.to_string_lossy(), "cgroup file"))
        .collect::<Result<_, _>>()?;
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // Without fds from the caller the child gets /dev/null, never the daemon's own stdio.
    let devnull;
    let stdio_raw: Vec<RawFd> = if stdio.is_empty() {
        devnull = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| format!("/dev/null: {e}"))?;
        vec![devnull.as_raw_fd(); 3]
    } else {
        stdio.iter().map(|f| f.as_raw_fd()).collect()
    };

    // A pid namespace is entered by the parent: the next child it forks is created inside
    // it (as a child of the zygote, which can then reap it and report its status).
    let into_pidns = enter.as_ref().filter(|(_, f)| f & libc::CLONE_NEWPID != 0);
    if let Some((pidfd, _)) = into_pidns {
        if zygote.own_pidns.is_none() {
            return Err("cannot return to the zygote's pid namespace".into());
        }
        // SAFETY: setns on a valid pidfd.
        if unsafe { libc::setns(pidfd.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
            return Err(format!(
                "entering the domain's pid namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    // SAFETY: the zygote is single-threaded, so the child may run any code; it still only
    // makes direct syscalls before exec.
    let forked = unsafe { fork() };
    if let (Some(ns), Some(_)) = (&zygote.own_pidns, into_pidns) {
        if let Ok(ForkResult::Parent { .. }) | Err(_) = forked {
            // SAFETY: setns back to our own pid namespace (always allowed: it is our active one).
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWPID) };
        }
    }
    let other_ns = enter
        .as_ref()
        .map(|(fd, f)| (fd.as_raw_fd(), f & !libc::CLONE_NEWPID))
        .filter(|(_, f)| *f != 0);
    match forked {
        Err(e) => Err(format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            drop(rd);
            let report = wr.as_raw_fd();
            // SAFETY: every call below is a plain syscall wrapper on valid pointers owned by
            // this frame (CStrings built before fork), in a single-threaded child.
            unsafe {
                child_stdio(&stdio_raw, report);
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        fail_child(report, STEP_CGROUPS);
                    }
                    libc::close(fd);
                }
                if let Some((pidfd, flags)) = other_ns {
                    let pidfd = std::os::fd::BorrowedFd::borrow_raw(pidfd);
                    match dms_join::enter_namespaces(pidfd, flags) {
                        Ok(()) => {}
                        Err((dms_join::EnterStep::Namespaces, _)) => {
                            fail_child(report, STEP_NAMESPACES)
                        }
                        Err(_) => fail_child(report, STEP_USERNS),
                    }
                }
                exec.exec(report)
            }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(wr);
            let mut msg = [0u8; 3];
            if read_report(&rd, &mut msg) == 0 {
                return Ok(child.as_raw());
            }
            // The child already exited; reaping happens via SIGCHLD, but it must not be
            // reported as an exit of a started process: reap it here.
            let _ = waitpid(child, None);
            Err(failure_message(msg, &req.process))
        }
    }
}

/// Reads a pipe to EOF within `limit`.
fn read_bounded(fd: OwnedFd, limit: Duration) -> Result<String, String> {
    let deadline = Instant::now() + limit;
    let mut file = std::fs::File::from(fd);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no result within {limit:?}"));
        }
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe {
            libc::poll(
                &mut pfd,
                1,
                i32::try_from(left.as_millis()).unwrap_or(i32::MAX),
            )
        };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(format!("poll: {}", std::io::Error::last_os_error()));
        }
        if r == 0 {
            continue;
        }
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}
