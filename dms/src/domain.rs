//! The domain model and the backend trait that container domains implement now and libvirt
//! guests will implement later.

use dms_accounting::Usage;
use dms_policies::{BackendKind, Granularity, Permission, Priority, Quotas};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::cgroup::{CgroupError, Cgroups, Limits, StuckProcess};
use crate::spawn::{Child, Enter, InitSpec, SpawnError, SpawnRequest, Spawner};
pub use dms_join::{JoinTarget, Namespace};

/// Lifecycle states of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainState {
    /// Being set up; not yet usable.
    Creating,
    /// Usable.
    Running,
    /// All processes stopped, resources kept.
    Frozen,
    /// Being torn down.
    Stopping,
    /// Broken: its resources vanished or setup failed; only destroy is allowed.
    Failed,
    /// A guest whose state was saved to the domain repository; restore resumes it.
    Saved,
}

impl DomainState {
    /// The lowercase name used in the API, the store and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainState::Creating => "creating",
            DomainState::Running => "running",
            DomainState::Frozen => "frozen",
            DomainState::Stopping => "stopping",
            DomainState::Failed => "failed",
            DomainState::Saved => "saved",
        }
    }
}

/// Who a domain belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Local account name.
    pub user: String,
    /// Local uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Home directory (working directory for commands).
    pub home: PathBuf,
}

/// One domain as the daemon knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// Unique name; also the cgroup directory name.
    pub name: String,
    /// The granularity key that `ensure` matches on (e.g. `user:atlas:alice`).
    pub key: String,
    /// The owner account.
    pub owner: Owner,
    /// The VO.
    pub vo: String,
    /// The FQAN group path of the identity, if one was given.
    pub group: Option<String>,
    /// The FQAN role, if any.
    pub role: Option<String>,
    /// The policy rule that applied (its FQAN), or None for VO defaults.
    pub rule: Option<String>,
    /// Job id for per-job domains.
    pub job: Option<String>,
    /// Who shares this domain.
    pub granularity: Granularity,
    /// How it is realized.
    pub backend: BackendKind,
    /// The libvirt template of a guest domain.
    #[serde(default)]
    pub template: Option<String>,
    /// The quotas from policy.
    pub quotas: Quotas,
    /// The mechanism limits derived from them.
    pub limits: Limits,
    /// Scheduling class.
    pub priority: Priority,
    /// What the owner may do beyond reading.
    pub owner_may: BTreeSet<Permission>,
    /// What happens when the domain's last session ends.
    #[serde(default)]
    pub idle: dms_policies::IdlePolicy,
    /// What the Domain Monitor does on each kind of limit event.
    #[serde(default)]
    pub monitor: dms_policies::MonitorPolicy,
    /// Lifecycle state.
    pub state: DomainState,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the last state change.
    pub updated_at: u64,
    /// Why the domain failed, if it did.
    pub reason: Option<String>,
    /// Namespaces, network and filesystem settings from policy.
    #[serde(default)]
    pub isolation: dms_policies::Isolation,
    /// Made by `run_once` for one command and destroyed when it exits; `ensure` of the same
    /// identity is refused meanwhile, as a session there would die with it.
    #[serde(default)]
    pub once: bool,
    /// What the backend created for it (init process, network), so that a restarted daemon
    /// can adopt or clean it.
    #[serde(default)]
    pub runtime: Runtime,
}

/// Backend resources of a live domain, kept in its record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    /// The container domain's init.
    #[serde(default)]
    pub init: Option<InitHandle>,
    /// Its network link, for mode "nat".
    #[serde(default)]
    pub net: Option<crate::net::NetAttachment>,
    /// The libvirt guest of a guest domain.
    #[serde(default)]
    pub guest: Option<GuestHandle>,
}

/// What identifies a libvirt guest of a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestHandle {
    /// The connection it lives on.
    pub uri: String,
    /// Its libvirt name.
    pub name: String,
    /// Its template.
    pub template: String,
    /// Its tap, when it has a network interface.
    #[serde(default)]
    pub tap: Option<String>,
    /// The ifb that shapes what it sends, when egress is limited.
    #[serde(default)]
    pub ifb: Option<String>,
}

/// A domain init process, identified by pid and start time (a pid alone can be recycled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitHandle {
    /// Host pid.
    pub pid: i32,
    /// Start time in clock ticks since boot.
    pub start: u64,
}

/// A backend failure.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The kernel mechanism failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Spawning failed.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// Reading usage failed.
    #[error(transparent)]
    Usage(#[from] dms_accounting::UsageError),
    /// The operation does not apply to this backend.
    #[error("{0}")]
    Unsupported(String),
    /// The domain cannot do this in its current condition.
    #[error("{0}")]
    NotRunning(String),
    /// Networking failed.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// A guest operation (libvirt, the domain repository) failed.
    #[error("{0}")]
    Guest(String),
}

impl BackendError {
    /// The domain's resources are gone (removed under us): not a fault when reading usage.
    pub fn is_vanished(&self) -> bool {
        matches!(
            self,
            BackendError::Usage(dms_accounting::UsageError::Vanished(_))
        )
    }

    /// Processes that blocked a freeze, when that is what failed.
    pub fn stuck(&self) -> Option<&[StuckProcess]> {
        match self {
            BackendError::Cgroup(CgroupError::FreezeTimeout { stuck, .. }) => Some(stuck),
            _ => None,
        }
    }
}

/// What a backend needs to run a command in a domain.
pub type ExecSpec = crate::spawn::ProcessSpec;

/// What the reconciler learns about a backend's live domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveDomain {
    /// Its name.
    pub name: String,
    /// Whether it is frozen now.
    pub frozen: bool,
    /// Whether it is a guest saved to the repository (defined, not running).
    pub saved: bool,
}

/// Something the Domain Monitor can wait on instead of polling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSource {
    /// A cgroup v1 memory directory: register an eventfd on its `memory.oom_control`.
    OomControl(PathBuf),
    /// A file the kernel marks modified (inotify IN_MODIFY) when its counters change, such as
    /// v2 `memory.events` or `pids.events`.
    Modified(PathBuf),
}

/// Called with a domain's name when its init process dies.
pub type InitExitHandler = Box<dyn Fn(&str) + Send + Sync>;

/// Called with a domain's name and the reason when a guest stopped reporting alive.
pub type ZombieHandler = Box<dyn Fn(&str, &str) + Send + Sync>;

/// The operations every domain backend provides. Calls block; the daemon runs them off its
/// async threads. Each is idempotent where that makes sense (destroy of a missing domain is Ok).
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Which kind this is.
    fn kind(&self) -> BackendKind;
    /// Creates the domain's resources with its limits and records them in `domain.runtime`;
    /// on failure nothing is left behind.
    fn create(&self, domain: &mut Domain) -> Result<(), BackendError>;
    /// Takes over a live domain after a daemon restart (checks and watches its init).
    fn adopt(&self, domain: &Domain) -> Result<(), BackendError>;
    /// Re-applies limits to a live domain (after a policy reload).
    fn update(&self, domain: &Domain) -> Result<(), BackendError>;
    /// Kills everything in the domain and removes its resources.
    fn destroy(&self, name: &str) -> Result<(), BackendError>;
    /// Stops every process of the domain, verified.
    fn freeze(&self, name: &str) -> Result<(), BackendError>;
    /// Resumes a frozen domain.
    fn thaw(&self, name: &str) -> Result<(), BackendError>;
    /// Moves an existing process into the domain.
    fn attach(&self, name: &str, pid: i32) -> Result<(), BackendError>;
    /// Starts a command inside the domain; `stdio` fds become its stdin/stdout/stderr.
    fn exec(&self, domain: &Domain, spec: &ExecSpec, stdio: &[i32]) -> Result<Child, BackendError>;
    /// What a single-threaded process needs to enter the domain itself.
    fn join_target(&self, domain: &Domain) -> Result<JoinTarget, BackendError>;
    /// Registers the function called when a domain's init dies.
    fn on_init_exit(&self, handler: InitExitHandler);
    /// Current usage; `runtime` names the links whose counters belong to the domain.
    fn stats(&self, name: &str, runtime: &Runtime) -> Result<Usage, BackendError>;
    /// The counters limit events come from (CFS throttling, memory limit hits, OOM kills, pids
    /// limit hits, link drops); cheaper than [`Backend::stats`] where the backend can tell.
    fn limit_counters(&self, name: &str, runtime: &Runtime) -> Result<Usage, BackendError> {
        self.stats(name, runtime)
    }
    /// Files whose change signals a limit event (for the Domain Monitor).
    fn event_sources(&self, name: &str) -> Vec<EventSource>;
    /// Pids in the domain.
    fn members(&self, name: &str) -> Result<Vec<i32>, BackendError>;
    /// The domains this backend has on the host (for reconcile).
    fn list(&self) -> Result<Vec<LiveDomain>, BackendError>;
    /// After reconcile: removes resources no domain owns (links, rules); returns them.
    fn sweep(&self) -> Result<Vec<String>, BackendError>;
    /// Whether domains of `kind` can be created here.
    fn supports(&self, kind: BackendKind) -> bool {
        kind == self.kind()
    }
    /// Whether the last [`Backend::list`] could not see domains of `kind` (their manager was
    /// unreachable): reconcile then leaves those records alone instead of failing them.
    fn list_incomplete(&self, _kind: BackendKind) -> bool {
        false
    }
    /// Saves a running domain's state to the repository and stops it.
    fn save(&self, name: &str) -> Result<(), BackendError> {
        Err(BackendError::Unsupported(format!(
            "domain {name:?}: save and restore are for libvirt guests; container domains can be frozen"
        )))
    }
    /// Starts a saved domain from its saved state.
    fn restore(&self, domain: &Domain) -> Result<(), BackendError> {
        Err(BackendError::Unsupported(format!(
            "domain {:?}: save and restore are for libvirt guests",
            domain.name
        )))
    }
    /// Registers the function called when a guest misses its spawn or alive time limit.
    fn on_zombie(&self, _handler: ZombieHandler) {}
    /// Resident memory of the hypervisor daemon (libvirtd), when this backend has one.
    fn hypervisor_memory(&self) -> Option<u64> {
        None
    }
}

/// Where network interfaces' counters are.
const SYS_CLASS_NET: &str = "/sys/class/net";

/// The domains' kept-open stat files.
#[derive(Debug, Default)]
struct Readers {
    open: std::collections::HashMap<String, DomainReaders>,
    /// How many domains may keep their files open (see [`kept_readers_limit`]); the others'
    /// files are opened for each reading.
    limit: usize,
    /// Domains created and not destroyed since whose files the opening thread is yet to
    /// open, each with the ticket of its request: the thread opens only these and keeps what
    /// it opened only if the ticket is still there, so it never keeps a destroyed (or since
    /// re-created) domain's files.
    ahead: std::collections::HashMap<String, u64>,
    /// The next request's ticket.
    next_ticket: u64,
}

impl Readers {
    /// Forgets `name`'s files (its domain is going).
    fn forget(&mut self, name: &str) {
        self.open.remove(name);
        self.ahead.remove(name);
    }

    /// Notes that the opening thread is to open `name`'s files; the request's ticket.
    fn ask_ahead(&mut self, name: &str) -> u64 {
        self.next_ticket += 1;
        self.ahead.insert(name.to_string(), self.next_ticket);
        self.next_ticket
    }

    /// Whether files opened for request `ticket` of `name` are still wanted: the domain was
    /// not destroyed (nor re-created) since, its files are not open already, and there is
    /// room.
    fn wants(&self, name: &str, ticket: u64) -> bool {
        self.ahead.get(name) == Some(&ticket)
            && !self.open.contains_key(name)
            && self.open.len() < self.limit
    }

    /// Ends request `ticket` of `name` (kept or not): its entry goes, unless a newer request
    /// replaced it.
    fn end_request(&mut self, name: &str, ticket: u64) {
        if self.ahead.get(name) == Some(&ticket) {
            self.ahead.remove(name);
        }
    }
}

/// File descriptors a domain's kept-open readers take at most (v1: up to 18 cgroup files
/// and 6 link counters).
const FDS_PER_READER: u64 = 24;

/// How many domains may keep their stat files open: half of this process's open files limit,
/// leaving the rest to sockets, pidfds and control sockets.
fn kept_readers_limit() -> usize {
    let soft = open_files_limit().map_or(1024, |l| l.rlim_cur);
    usize::try_from(soft / 2 / FDS_PER_READER).unwrap_or(usize::MAX)
}

/// This process's limit on open files.
fn open_files_limit() -> std::io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid resource and a pointer to a local rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lim)
}

/// Raises this process's soft limit on open files to its hard limit: dmsd keeps each domain's
/// stat files open (about 20 per domain), and the usual soft limit, 1024, would stop it at ~50
/// domains. dmsd calls it after forking the zygote, so that domains keep the soft limit dmsd
/// was started with, as programs using select(2) expect.
pub fn raise_open_files_limit() -> std::io::Result<()> {
    let mut lim = open_files_limit()?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit with a valid resource and a pointer to a local rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Opens a domain's stat files (its cgroup's, and its link's if it has one).
fn open_readers(
    cgroups: &Cgroups,
    name: &str,
    host_if: Option<&str>,
) -> Result<DomainReaders, BackendError> {
    let cgroup = cgroups.usage_reader(name)?;
    let net = match host_if {
        Some(link) => Some(dms_accounting::NetReader::open(
            Path::new(SYS_CLASS_NET),
            link,
            dms_accounting::LinkSide::HostPeer,
        )?),
        None => None,
    };
    Ok(DomainReaders {
        cgroup,
        net,
        host_if: host_if.map(String::from),
    })
}

/// The thread that opens new domains' stat files, off the create path: a domain's first
/// reading (at the latest its final one, on the destroy path) then only re-reads them.
fn open_ahead_thread(
    cgroups: Cgroups,
    readers: std::sync::Arc<parking_lot::Mutex<Readers>>,
) -> std::io::Result<std::sync::mpsc::Sender<(String, Option<String>, u64)>> {
    let (tx, rx) = std::sync::mpsc::channel::<(String, Option<String>, u64)>();
    std::thread::Builder::new()
        .name("usage-open".into())
        .spawn(move || {
            // It holds the readers' lock only to check and to keep, not while it opens.
            for (name, host_if, ticket) in rx {
                {
                    let mut r = readers.lock();
                    if !r.wants(&name, ticket) {
                        r.end_request(&name, ticket);
                        continue;
                    }
                }
                // A failure is left to the first reading, which reports it.
                let opened = open_readers(&cgroups, &name, host_if.as_deref());
                // Kept only if the domain was not destroyed (or read) meanwhile.
                let mut r = readers.lock();
                let keep = r.wants(&name, ticket);
                r.end_request(&name, ticket);
                if let (true, Ok(opened)) = (keep, opened) {
                    r.open.insert(name, opened);
                }
            }
        })?;
    Ok(tx)
}

/// A domain's kept-open stat files.
struct DomainReaders {
    cgroup: dms_accounting::UsageReader,
    net: Option<dms_accounting::NetReader>,
    /// The link `net` reads, to notice a re-created link.
    host_if: Option<String>,
}

impl std::fmt::Debug for DomainReaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainReaders")
            .field("host_if", &self.host_if)
            .finish_non_exhaustive()
    }
}

/// Container domains: cgroups plus namespaces held by a per-domain init.
#[derive(Debug)]
pub struct ContainerBackend {
    cgroups: Cgroups,
    spawner: Spawner,
    freeze_timeout: std::time::Duration,
    /// Stat files opened once per domain and re-read with pread.
    readers: std::sync::Arc<parking_lot::Mutex<Readers>>,
    /// To the thread that opens a new domain's stat files ahead of its first reading.
    open_ahead: std::sync::mpsc::Sender<(String, Option<String>, u64)>,
    inits: InitWatcher,
    /// Control sockets of the inits this daemon started (not of those adopted after a
    /// restart): commands are forked by the init itself.
    controls: parking_lot::Mutex<std::collections::HashMap<String, std::sync::Arc<OwnedFd>>>,
    resolv_conf: Option<PathBuf>,
    network: crate::net::Network,
}

impl ContainerBackend {
    /// A backend over the detected cgroups, spawning through the zygote. `resolv_conf`, when
    /// set, is bind-mounted over every domain's `/etc/resolv.conf`.
    pub fn new(
        cgroups: Cgroups,
        spawner: Spawner,
        freeze_timeout: std::time::Duration,
        resolv_conf: Option<PathBuf>,
        network: crate::net::Network,
    ) -> Result<Self, BackendError> {
        let readers = std::sync::Arc::new(parking_lot::Mutex::new(Readers {
            limit: kept_readers_limit(),
            ..Readers::default()
        }));
        let open_ahead = open_ahead_thread(cgroups.clone(), std::sync::Arc::clone(&readers))
            .map_err(|e| BackendError::Unsupported(format!("usage reader thread: {e}")))?;
        Ok(Self {
            cgroups,
            spawner,
            freeze_timeout,
            readers,
            open_ahead,
            inits: InitWatcher::start()
                .map_err(|e| BackendError::Unsupported(format!("watching domain inits: {e}")))?,
            controls: parking_lot::Mutex::new(std::collections::HashMap::new()),
            resolv_conf,
            network,
        })
    }

    /// The network mechanism (for status output and shutdown).
    pub fn network(&self) -> &crate::net::Network {
        &self.network
    }

    /// The cgroup layer (for status output).
    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }

    /// Reads a domain's kept-open files (opened on first use): everything, or with
    /// `counters_only` just what the Domain Monitor needs.
    fn read_usage(
        &self,
        name: &str,
        runtime: &Runtime,
        counters_only: bool,
    ) -> Result<Usage, BackendError> {
        let mut guard = self.readers.lock();
        let host_if = runtime.net.as_ref().map(|n| n.host_if.as_str());
        let kept = guard.open.get(name);
        let relink = kept.is_some_and(|r| r.host_if.as_deref() != host_if);
        // Over the limit, a new domain's files are opened for this reading only.
        let mut once = None;
        if relink || kept.is_none() {
            let opened = open_readers(&self.cgroups, name, host_if)?;
            if relink || guard.open.len() < guard.limit {
                guard.open.insert(name.to_string(), opened);
            } else {
                once = Some(opened);
            }
        }
        let Some(r) = once.as_mut().or_else(|| guard.open.get_mut(name)) else {
            return Err(BackendError::Unsupported(format!(
                "no usage reader for {name:?}"
            )));
        };
        let read = if counters_only {
            r.cgroup.read_counters()
        } else {
            r.cgroup.read()
        };
        let result = read.and_then(|mut u| {
            if let Some(net) = &mut r.net {
                u.network = Some(net.read()?);
            }
            Ok(u)
        });
        if result.is_err() {
            // A vanished or broken group: forget the open files, report the error.
            guard.forget(name);
        }
        Ok(result?)
    }

    /// Has the opening thread open `domain`'s stat files.
    fn read_ahead(&self, domain: &Domain) {
        let ticket = self.readers.lock().ask_ahead(&domain.name);
        let host_if = domain.runtime.net.as_ref().map(|n| n.host_if.clone());
        let _ = self.open_ahead.send((domain.name.clone(), host_if, ticket));
    }

    fn init_of(domain: &Domain) -> Result<InitHandle, BackendError> {
        domain.runtime.init.ok_or_else(|| {
            BackendError::NotRunning(format!("domain {:?} has no init process", domain.name))
        })
    }

    /// Starts the domain's init; `net` is its reserved NAT address, which an init taken from
    /// the spares configures itself. Returns also the host end of the init's veth pair, if it
    /// made one.
    fn start_init(
        &self,
        domain: &Domain,
        net: Option<&crate::net::NetAttachment>,
    ) -> Result<(InitHandle, OwnedFd, Option<String>), BackendError> {
        let spec = InitSpec {
            hostname: domain.name.clone(),
            procs_files: self.cgroups.self_join_files(&domain.name),
            private_paths: domain.isolation.paths.private.clone(),
            readonly_paths: domain.isolation.paths.readonly.clone(),
            resolv_conf: self.resolv_conf.clone(),
            userns: domain.isolation.userns,
            network: net.map(|a| crate::spawn::InitNetwork {
                address: a.address,
                prefix: a.prefix,
                gateway: a.gateway,
            }),
        };
        let started = self.spawner.start_init(&spec)?;
        let pid = started.pid;
        let start = dms_join::start_time(pid).map_err(|e| {
            BackendError::NotRunning(format!("domain init {pid} exited during setup: {e}"))
        })?;
        Ok((InitHandle { pid, start }, started.ctl, started.spare_link))
    }
}

impl Backend for ContainerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Container
    }

    fn create(&self, domain: &mut Domain) -> Result<(), BackendError> {
        self.cgroups.create(&domain.name, &domain.limits)?;
        // Reserved before the init starts, which then may configure its eth0 itself.
        let mut reserved = None;
        let made = (|| {
            if domain.isolation.network.mode == dms_policies::NetworkMode::Nat {
                reserved = Some(
                    self.network
                        .reserve(&domain.name, &domain.isolation.network)?,
                );
            }
            let (init, ctl, spare_link) = self.start_init(domain, reserved.as_ref())?;
            domain.runtime.init = Some(init);
            self.inits.watch(&domain.name, init)?;
            self.controls
                .lock()
                .insert(domain.name.clone(), std::sync::Arc::new(ctl));
            if let Some(att) = reserved.take() {
                let att = self.network.attach(
                    &domain.name,
                    att,
                    init.pid,
                    init.start,
                    &domain.isolation.network,
                    spare_link.as_deref(),
                )?;
                domain.runtime.net = Some(att);
            }
            Ok(())
        })();
        if let Err(e) = made {
            if let Some(att) = reserved {
                self.network.unreserve(&domain.name, &att);
            }
            let _ = self.destroy(&domain.name);
            domain.runtime = Runtime::default();
            return Err(e);
        }
        self.read_ahead(domain);
        Ok(())
    }

    fn adopt(&self, domain: &Domain) -> Result<(), BackendError> {
        let init = Self::init_of(domain)?;
        self.inits.watch(&domain.name, init)?;
        if let Some(net) = &domain.runtime.net {
            self.network.adopt(&domain.name, net);
        }
        self.read_ahead(domain);
        Ok(())
    }

    fn update(&self, domain: &Domain) -> Result<(), BackendError> {
        Ok(self.cgroups.apply(&domain.name, &domain.limits)?)
    }

    fn destroy(&self, name: &str) -> Result<(), BackendError> {
        self.readers.lock().forget(name);
        self.controls.lock().remove(name);
        // Killing the init ends its pid namespace; that is expected, not a failure to report.
        if let Some(init) = self.inits.unwatch(name) {
            // The init's death takes every process of its pid namespace with it, and its pidfd
            // says when; usually nothing is left for the slower cgroup-wide kill (on v1 a
            // freeze, signals, a thaw and polling) but processes attached from outside.
            kill_and_wait(&init, std::time::Duration::from_secs(2));
        }
        let killed = self.cgroups.exists(name);
        if killed {
            self.cgroups
                .kill_all(name, std::time::Duration::from_secs(5))?;
            self.cgroups.remove(name)?;
        }
        // With its init killed the network namespace goes, and the kernel removes the veth
        // pair with it; this frees the address and the rules.
        self.network.detach(name, killed);
        Ok(())
    }

    fn freeze(&self, name: &str) -> Result<(), BackendError> {
        Ok(self.cgroups.freeze(name, self.freeze_timeout)?)
    }

    fn thaw(&self, name: &str) -> Result<(), BackendError> {
        Ok(self.cgroups.thaw(name)?)
    }

    fn attach(&self, name: &str, pid: i32) -> Result<(), BackendError> {
        Ok(self.cgroups.add_pid(name, pid)?)
    }

    fn exec(&self, domain: &Domain, spec: &ExecSpec, stdio: &[i32]) -> Result<Child, BackendError> {
        if !self.cgroups.exists(&domain.name) {
            return Err(CgroupError::NotFound(domain.name.clone()).into());
        }
        let ctl = self.controls.lock().get(&domain.name).cloned();
        if let Some(ctl) = ctl {
            return Ok(crate::spawn::exec_via_init(
                &ctl,
                &domain.name,
                spec,
                stdio,
            )?);
        }
        let target = self.join_target(domain)?;
        let req = SpawnRequest {
            process: spec.clone(),
            enter: Some(Enter {
                domain: target.domain.clone(),
                init_pid: target.init_pid,
                init_start: target.init_start,
                flags: target.clone_flags(),
            }),
            procs_files: self.cgroups.self_join_files(&domain.name),
        };
        Ok(self.spawner.spawn(&req, stdio)?)
    }

    fn join_target(&self, domain: &Domain) -> Result<JoinTarget, BackendError> {
        let init = Self::init_of(domain)?;
        Ok(JoinTarget {
            domain: domain.name.clone(),
            init_pid: init.pid,
            init_start: init.start,
            procs_files: self.cgroups.procs_files(&domain.name),
            namespaces: dms_join::namespaces_of(init.pid),
        })
    }

    fn on_init_exit(&self, handler: InitExitHandler) {
        self.inits.set_handler(handler);
    }

    fn stats(&self, name: &str, runtime: &Runtime) -> Result<Usage, BackendError> {
        self.read_usage(name, runtime, false)
    }

    fn limit_counters(&self, name: &str, runtime: &Runtime) -> Result<Usage, BackendError> {
        self.read_usage(name, runtime, true)
    }

    fn event_sources(&self, name: &str) -> Vec<EventSource> {
        self.cgroups.event_sources(name)
    }

    fn members(&self, name: &str) -> Result<Vec<i32>, BackendError> {
        Ok(self.cgroups.members(name)?)
    }

    fn list(&self) -> Result<Vec<LiveDomain>, BackendError> {
        let mut out = Vec::new();
        for name in self.cgroups.list()? {
            let frozen =
                self.cgroups.freezer_state(&name).ok() == Some(crate::cgroup::FreezerState::Frozen);
            out.push(LiveDomain {
                name,
                frozen,
                saved: false,
            });
        }
        Ok(out)
    }

    fn sweep(&self) -> Result<Vec<String>, BackendError> {
        Ok(self.network.sweep()?)
    }
}

/// Watches domain inits through pidfds on one epoll thread and calls the handler when one
/// exits (works for inits adopted after a restart too, which are not our children).
struct InitWatcher {
    epoll: std::sync::Arc<std::os::fd::OwnedFd>,
    state: std::sync::Arc<parking_lot::Mutex<WatchState>>,
}

#[derive(Default)]
struct WatchState {
    next: u64,
    by_token: std::collections::HashMap<u64, (String, std::os::fd::OwnedFd)>,
    by_name: std::collections::HashMap<String, u64>,
    handler: Option<std::sync::Arc<InitExitHandler>>,
}

impl std::fmt::Debug for InitWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitWatcher")
            .field("watched", &self.state.lock().by_name.len())
            .finish()
    }
}

impl InitWatcher {
    fn start() -> std::io::Result<InitWatcher> {
        use std::os::fd::FromRawFd;
        // SAFETY: epoll_create1 with a valid flag; the fd is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new fd nobody else owns.
        let epoll = std::sync::Arc::new(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        let state = std::sync::Arc::new(parking_lot::Mutex::new(WatchState::default()));
        let (ep, st) = (std::sync::Arc::clone(&epoll), std::sync::Arc::clone(&state));
        std::thread::Builder::new()
            .name("init-watch".into())
            .spawn(move || watch_loop(&ep, &st))?;
        Ok(InitWatcher { epoll, state })
    }

    fn set_handler(&self, handler: InitExitHandler) {
        self.state.lock().handler = Some(std::sync::Arc::new(handler));
    }

    fn watch(&self, name: &str, init: InitHandle) -> Result<(), BackendError> {
        use std::os::fd::AsRawFd;
        let fd = dms_join::open_process(name, init.pid, init.start)
            .map_err(|e| BackendError::NotRunning(e.to_string()))?;
        self.unwatch(name);
        let mut st = self.state.lock();
        st.next += 1;
        let token = st.next;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: valid epoll fd, pidfd and event struct.
        if unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        } != 0
        {
            return Err(BackendError::Unsupported(format!(
                "watching init {} of {name:?}: {}",
                init.pid,
                std::io::Error::last_os_error()
            )));
        }
        st.by_token.insert(token, (name.to_string(), fd));
        st.by_name.insert(name.to_string(), token);
        Ok(())
    }

    /// Stops watching `name`'s init; returns its pidfd, out of the epoll set: a caller that
    /// keeps it to wait for the init's death must not wake the watcher, which would find the
    /// readiness of an fd it no longer knows again on every wait until the fd is closed.
    fn unwatch(&self, name: &str) -> Option<std::os::fd::OwnedFd> {
        use std::os::fd::AsRawFd;
        let mut st = self.state.lock();
        let token = st.by_name.remove(name)?;
        let (_, fd) = st.by_token.remove(&token)?;
        // SAFETY: valid epoll fd and pidfd; DEL takes no event.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd.as_raw_fd(),
                std::ptr::null_mut(),
            )
        };
        Some(fd)
    }
}

/// Sends SIGKILL through `pidfd` and waits up to `timeout` for the process to exit. For a
/// domain init, the kernel first kills the rest of its pid namespace and waits for them.
fn kill_and_wait(pidfd: &std::os::fd::OwnedFd, timeout: std::time::Duration) {
    use std::os::fd::{AsFd, AsRawFd};
    if dms_join::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL).is_err() {
        return; // Already gone (ESRCH): nothing to wait for.
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut fds = [libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        // Exited, timed out or poll failed: the cgroup-wide kill that follows handles the rest.
        return;
    }
}

fn watch_loop(epoll: &std::os::fd::OwnedFd, state: &parking_lot::Mutex<WatchState>) {
    use std::os::fd::AsRawFd;
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 16];
    loop {
        // SAFETY: valid epoll fd and a buffer of 16 events.
        let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), 16, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        for ev in &events[..n as usize] {
            let token = ev.u64;
            let (name, handler) = {
                let mut st = state.lock();
                let Some((name, _fd)) = st.by_token.remove(&token) else {
                    continue;
                };
                st.by_name.remove(&name);
                (name, st.handler.clone())
            };
            tracing::warn!(domain = %name, "domain init exited");
            if let Some(h) = handler {
                h(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Readers;

    #[test]
    fn files_opened_ahead_are_kept_only_for_the_request_still_pending() {
        let mut r = Readers {
            limit: 10,
            ..Readers::default()
        };
        let first = r.ask_ahead("d1");
        assert!(r.wants("d1", first));
        // Destroyed while the thread was opening: nothing is kept.
        r.forget("d1");
        assert!(!r.wants("d1", first));
        // Re-created under the same name: only the new request's files are kept.
        let second = r.ask_ahead("d1");
        assert_ne!(first, second);
        assert!(!r.wants("d1", first));
        assert!(r.wants("d1", second));
        assert!(!r.wants("d2", second));
        // A stale request's end leaves the newer one; its own end removes it.
        r.end_request("d1", first);
        assert!(r.wants("d1", second));
        r.end_request("d1", second);
        assert!(r.ahead.is_empty());
        // No room left: nothing is kept.
        let third = r.ask_ahead("d1");
        r.limit = 0;
        assert!(!r.wants("d1", third));
    }
}
