//! The request handler: the one path every adapter (D-Bus on the system bus, the private
//! socket, the CLI through them) goes through. Blocking; the daemon calls it from
//! `spawn_blocking`. Authorization happens here, from the caller's kernel credentials.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dms_accounting::Usage;
use dms_policies::{
    validate_name, Fqan, Granularity, Permission, PolicyErrors, PolicySet, Quotas, ResolvedRule,
};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::cgroup::{IoLimit, Limits};
use crate::domain::{Backend, BackendError, Domain, DomainState, ExecSpec, JoinTarget, Owner};
use crate::spawn::Child;
use crate::store::{Store, StoreError, Table};

/// Error classes; adapters map them to D-Bus error names and dmsctl exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// A bad argument: the message names the field and value.
    InvalidArgument,
    /// No such domain (or VO, user, pid).
    NotFound,
    /// The caller may not do this.
    PermissionDenied,
    /// The domain's state does not allow it (already frozen, not frozen, exists with another key).
    Conflict,
    /// The domain stayed busy past the lock timeout, or the kernel did not finish in time.
    Timeout,
    /// Anything else (kernel or store failure).
    Failed,
}

impl ErrorKind {
    /// The D-Bus error name suffix.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "InvalidArgument",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::PermissionDenied => "PermissionDenied",
            ErrorKind::Conflict => "Conflict",
            ErrorKind::Timeout => "Timeout",
            ErrorKind::Failed => "Failed",
        }
    }

    /// Parses the suffix back (client side).
    pub fn from_name(s: &str) -> ErrorKind {
        match s {
            "InvalidArgument" => ErrorKind::InvalidArgument,
            "NotFound" => ErrorKind::NotFound,
            "PermissionDenied" => ErrorKind::PermissionDenied,
            "Conflict" => ErrorKind::Conflict,
            "Timeout" => ErrorKind::Timeout,
            _ => ErrorKind::Failed,
        }
    }
}

/// A request failure for the caller.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct ApiError {
    /// The class.
    pub kind: ErrorKind,
    /// What went wrong, naming the field and value where there is one.
    pub message: String,
}

pub(crate) fn err(kind: ErrorKind, message: impl Into<String>) -> ApiError {
    ApiError {
        kind,
        message: message.into(),
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        err(ErrorKind::Failed, e.to_string())
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        use crate::cgroup::CgroupError as C;
        let kind = match &e {
            BackendError::Cgroup(C::FreezeTimeout { .. } | C::KillTimeout { .. }) => {
                ErrorKind::Timeout
            }
            BackendError::Cgroup(C::NotFound(_)) => ErrorKind::NotFound,
            BackendError::NotRunning(_) | BackendError::Net(crate::net::NetError::Conflict(_)) => {
                ErrorKind::Conflict
            }
            BackendError::Net(crate::net::NetError::Invalid(_)) => ErrorKind::InvalidArgument,
            BackendError::Cgroup(C::Unsupported(_)) | BackendError::Unsupported(_) => {
                ErrorKind::InvalidArgument
            }
            _ => ErrorKind::Failed,
        };
        err(kind, e.to_string())
    }
}

/// Result of a request.
pub type ApiResult<T> = Result<T, ApiError>;

/// Who is calling, from kernel credentials (SO_PEERCRED or the bus driver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Effective uid.
    pub uid: u32,
    /// Primary and supplementary gids.
    pub gids: Vec<u32>,
}

impl Caller {
    /// Credentials of a local process, reading its groups from /proc.
    pub fn from_pid(uid: u32, gid: u32, pid: Option<u32>) -> Caller {
        let mut gids = vec![gid];
        if let Some(pid) = pid {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(line) = status.lines().find(|l| l.starts_with("Groups:")) {
                    gids.extend(
                        line["Groups:".len()..]
                            .split_whitespace()
                            .filter_map(|g| g.parse::<u32>().ok()),
                    );
                }
            }
        }
        Caller { uid, gids }
    }
}

/// An identity to ensure a domain for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EnsureRequest {
    /// Local account.
    pub user: String,
    /// VO (may be left empty when `fqan` is given).
    pub vo: String,
    /// Primary FQAN, if any.
    pub fqan: Option<String>,
    /// Batch job id, for per-job domains.
    pub job: Option<String>,
}

impl EnsureRequest {
    /// From the API's four strings (an empty FQAN or job is none).
    pub fn of(user: String, vo: String, fqan: String, job: String) -> Self {
        Self {
            user,
            vo,
            fqan: Some(fqan),
            job: Some(job),
        }
    }
}

/// What `run_once` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OnceOutcome {
    /// The domain it made (and removed).
    pub name: String,
    /// The command's pid (in the host's pid namespace).
    pub pid: i32,
    /// Its exit code, or 128 + the signal that killed it.
    pub status: i32,
}

/// A command to run in a domain.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunRequest {
    /// The domain.
    pub name: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment on top of the clean one.
    pub env: Vec<(String, String)>,
    /// Working directory (default: the user's home, else /).
    pub cwd: Option<String>,
    /// Run as this account instead of the owner (admins only).
    pub user: Option<String>,
}

/// A domain with its live usage, as `get` returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainView {
    /// The record.
    #[serde(flatten)]
    pub domain: Domain,
    /// Live usage, when readable.
    pub usage: Option<Usage>,
    /// Number of processes.
    pub processes: Option<usize>,
}

/// What changed, for signals and logs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateChange {
    /// The domain.
    pub name: String,
    /// Previous state ("" when created).
    pub old: String,
    /// New state ("destroyed" when removed).
    pub new: String,
}

/// What the daemon signals to D-Bus clients.
#[derive(Debug, Clone)]
pub enum Signal {
    /// A domain changed state.
    State(StateChange),
    /// The Domain Monitor saw a limit event.
    Limit(crate::usage::LimitEvent),
}

/// What reconcile found and did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReconcileReport {
    /// Domains with live resources, adopted.
    pub adopted: Vec<String>,
    /// Records whose resources vanished, marked failed.
    pub marked_failed: Vec<String>,
    /// Groups under the subtree without a record, removed.
    pub removed_orphans: Vec<String>,
    /// Records of half-created or half-destroyed domains, finished off.
    pub cleaned: Vec<String>,
}

/// Node and daemon status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Daemon version.
    pub version: String,
    /// cgroup version in use.
    pub cgroup_version: String,
    /// Online CPUs.
    pub cpus: usize,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Domain count by state.
    pub domains: BTreeMap<String, usize>,
    /// VOs with a policy.
    pub vos: Vec<String>,
    /// Policy files in force.
    pub policy_files: Vec<PathBuf>,
    /// Unix seconds of the last successful policy load.
    pub policy_loaded_at: u64,
}

pub(crate) type Entry = Arc<Mutex<Domain>>;

/// The daemon core.
pub struct Service {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) store: Mutex<Store>,
    policy_dir: PathBuf,
    pub(crate) policies: RwLock<(Arc<PolicySet>, u64)>,
    pub(crate) domains: RwLock<BTreeMap<String, Entry>>,
    admin_gid: Option<u32>,
    lock_timeout: Duration,
    pub(crate) cgroup_version: String,
    pub(crate) on_change: Box<dyn Fn(Signal) + Send + Sync>,
    /// Leases and mapfiles.
    pub(crate) accounts: Mutex<crate::accounts::AccountBook>,
    /// Open PAM sessions and pending idle actions.
    pub(crate) sessions: Mutex<crate::session::SessionBook>,
    /// Batch jobs announced by prologs.
    pub(crate) jobs: Mutex<BTreeMap<String, crate::session::Job>>,
    /// Request-path counters for /metrics.
    metrics: crate::metrics::DaemonMetrics,
    /// Last usage readings and limit events.
    pub(crate) usage_book: Mutex<crate::usage::UsageBook>,
    /// Where usage records go (None: not written).
    pub(crate) records: Option<crate::usage::RecordWriter>,
    /// This node's name, for usage records and status.
    pub(crate) hostname: String,
    /// How long one collection may read before the rest is shown stale.
    pub(crate) collect_budget: Duration,
    /// Bumped on every state change, so the Domain Monitor re-reads the domain list only
    /// when it changed.
    pub(crate) generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("policy_dir", &self.policy_dir)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Settings the service needs from the daemon's config.
#[derive(Debug)]
pub struct ServiceOptions {
    /// Policy directory.
    pub policy_dir: PathBuf,
    /// Admin group gid.
    pub admin_gid: Option<u32>,
    /// Per-domain lock bound.
    pub lock_timeout: Duration,
    /// "v1" or "v2", for status.
    pub cgroup_version: String,
    /// Account mapping configuration.
    pub accounts: crate::accounts::AccountsConfig,
    /// Directory of usage records (None: not written).
    pub usage_dir: Option<PathBuf>,
    /// Rotation of the usage records.
    pub usage_rotate: dms_accounting::records::RotateLimits,
    /// Read budget of one collection.
    pub collect_budget: Duration,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The policies do not load.
    #[error("loading policies from {dir}:\n{errors}")]
    Policies {
        /// The policy directory.
        dir: PathBuf,
        /// What is wrong.
        errors: PolicyErrors,
    },
    /// Mapfiles or the state database.
    #[error("{0}")]
    Accounts(String),
}

impl Service {
    /// Loads the policies (a failure here is fatal to the daemon: it says why) and opens state.
    pub fn new(
        backend: Arc<dyn Backend>,
        store: Store,
        opts: ServiceOptions,
        on_change: Box<dyn Fn(Signal) + Send + Sync>,
    ) -> Result<Service, StartError> {
        let set = PolicySet::load_dir(&opts.policy_dir).map_err(|errors| StartError::Policies {
            dir: opts.policy_dir.clone(),
            errors,
        })?;
        let leases = store
            .all_records(Table::Leases)
            .map_err(|e| StartError::Accounts(e.to_string()))?;
        let mut accounts = crate::accounts::AccountBook::new(opts.accounts, leases)
            .map_err(StartError::Accounts)?;
        // The policies' map rules need the configured pools.
        accounts
            .set_policies(&set)
            .map_err(|errors| StartError::Policies {
                dir: opts.policy_dir.clone(),
                errors,
            })?;
        let sessions = crate::session::SessionBook::load(&store)
            .map_err(|e| StartError::Accounts(e.to_string()))?;
        let jobs = store
            .all_records::<crate::session::Job>(Table::Jobs)
            .map_err(|e| StartError::Accounts(e.to_string()))?
            .into_iter()
            .map(|j| (j.id.clone(), j))
            .collect();
        Ok(Service {
            backend,
            store: Mutex::new(store),
            policy_dir: opts.policy_dir,
            policies: RwLock::new((Arc::new(set), now())),
            domains: RwLock::new(BTreeMap::new()),
            admin_gid: opts.admin_gid,
            lock_timeout: opts.lock_timeout,
            cgroup_version: opts.cgroup_version,
            on_change,
            accounts: Mutex::new(accounts),
            sessions: Mutex::new(sessions),
            jobs: Mutex::new(jobs),
            metrics: crate::metrics::DaemonMetrics::default(),
            usage_book: Mutex::new(crate::usage::UsageBook::default()),
            records: opts.usage_dir.map(|d| {
                crate::usage::RecordWriter::new(dms_accounting::records::RecordLog::new(
                    &d,
                    opts.usage_rotate,
                ))
            }),
            hostname: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into()),
            collect_budget: opts.collect_budget,
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The request-path counters.
    pub fn metrics(&self) -> &crate::metrics::DaemonMetrics {
        &self.metrics
    }

    /// Runs one API call, recording its latency and error kind for /metrics.
    pub fn timed<T>(&self, method: &str, f: impl FnOnce(&Self) -> ApiResult<T>) -> ApiResult<T> {
        let t = std::time::Instant::now();
        let r = f(self);
        self.metrics
            .api_call(method, t.elapsed(), r.as_ref().err().map(|e| e.kind.name()));
        r
    }

    /// Live domains for the Domain Monitor, with their creation time, and whether every domain
    /// could be looked at (a busy one is skipped, and picked up on a later pass).
    pub(crate) fn monitored_domains(&self) -> (Vec<(String, u64)>, bool) {
        let entries: Vec<Entry> = self.domains.read().values().cloned().collect();
        let mut complete = true;
        let live = entries
            .iter()
            .filter_map(|e| {
                let Some(d) = e.try_lock() else {
                    complete = false;
                    return None;
                };
                matches!(d.state, DomainState::Running | DomainState::Frozen)
                    .then(|| (d.name.clone(), d.created_at))
            })
            .collect();
        (live, complete)
    }

    /// A live domain's usage, state and monitor policy; None when gone, busy or unreadable.
    pub(crate) fn monitor_usage(
        &self,
        name: &str,
    ) -> Option<(Usage, (DomainState, dms_policies::MonitorPolicy))> {
        let e = self.domains.read().get(name).cloned()?;
        let (state, policy, runtime) = {
            let d = e.try_lock()?;
            (d.state, d.monitor, d.runtime.clone())
        };
        if !matches!(state, DomainState::Running | DomainState::Frozen) {
            return None;
        }
        let u = self.backend.limit_counters(name, &runtime).ok()?;
        Some((u, (state, policy)))
    }

    /// What the monitor can wait on for a domain.
    pub(crate) fn backend_event_sources(&self, name: &str) -> Vec<crate::domain::EventSource> {
        self.backend.event_sources(name)
    }

    pub(crate) fn is_admin(&self, c: &Caller) -> bool {
        c.uid == 0 || self.admin_gid.is_some_and(|g| c.gids.contains(&g))
    }

    pub(crate) fn require_admin(&self, c: &Caller, what: &str) -> ApiResult<()> {
        if self.is_admin(c) {
            Ok(())
        } else {
            Err(err(
                ErrorKind::PermissionDenied,
                format!(
                    "permission denied: uid {} may not {what} (root or the admin group only)",
                    c.uid
                ),
            ))
        }
    }

    fn authorize(&self, c: &Caller, d: &Domain, perm: Permission) -> ApiResult<()> {
        if self.is_admin(c) || (c.uid == d.owner.uid && d.owner_may.contains(&perm)) {
            return Ok(());
        }
        let why = if c.uid == d.owner.uid {
            let may: Vec<&str> = d.owner_may.iter().map(|p| p.as_str()).collect();
            format!(
                "the policy lets the owner only: {}",
                if may.is_empty() {
                    "nothing".into()
                } else {
                    may.join(", ")
                }
            )
        } else {
            format!("it belongs to {} (uid {})", d.owner.user, d.owner.uid)
        };
        Err(err(
            ErrorKind::PermissionDenied,
            format!(
                "permission denied: uid {} may not {} domain {:?}: {why}",
                c.uid,
                perm.as_str(),
                d.name
            ),
        ))
    }

    pub(crate) fn emit(&self, name: &str, old: &str, new: &str) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(domain = name, old, new, "state change");
        (self.on_change)(Signal::State(StateChange {
            name: name.into(),
            old: old.into(),
            new: new.into(),
        }));
    }

    pub(crate) fn entry(&self, name: &str) -> ApiResult<Entry> {
        validate_name("domain name", name)
            .map_err(|e| err(ErrorKind::InvalidArgument, e.to_string()))?;
        self.domains
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| err(ErrorKind::NotFound, format!("no domain named {name:?}")))
    }

    pub(crate) fn lock<'a>(&self, e: &'a Entry) -> ApiResult<parking_lot::MutexGuard<'a, Domain>> {
        e.try_lock_for(self.lock_timeout).ok_or_else(|| {
            err(
                ErrorKind::Timeout,
                format!(
                    "domain busy: another operation held it for {:?}",
                    self.lock_timeout
                ),
            )
        })
    }

    pub(crate) fn set_state(
        &self,
        d: &mut Domain,
        s: DomainState,
        reason: Option<String>,
    ) -> ApiResult<()> {
        let old = d.state;
        d.state = s;
        d.reason = reason;
        d.updated_at = now();
        self.store.lock().put(d)?;
        self.emit(&d.name, old.as_str(), s.as_str());
        Ok(())
    }

    /// Creates the identity's domain per policy, or returns the existing one.
    pub fn ensure(&self, caller: &Caller, req: &EnsureRequest) -> ApiResult<Domain> {
        self.ensure_as(caller, req, false)
    }

    /// `ensure`; with `once`, only a new domain will do, and it is marked as `run_once`'s.
    fn ensure_as(&self, caller: &Caller, req: &EnsureRequest, once: bool) -> ApiResult<Domain> {
        self.require_admin(caller, "create domains")?;
        let invalid = |e: String| err(ErrorKind::InvalidArgument, e);
        validate_name("user", &req.user).map_err(|e| invalid(e.to_string()))?;
        let fqan = match &req.fqan {
            Some(f) if !f.is_empty() => {
                Some(f.parse::<Fqan>().map_err(|e| invalid(e.to_string()))?)
            }
            _ => None,
        };
        let vo = match (&fqan, req.vo.as_str()) {
            (Some(f), "") => f.vo.clone(),
            (Some(f), vo) if f.vo != vo => {
                return Err(invalid(format!(
                    "fqan {:?} is not in vo {vo:?}",
                    f.to_string()
                )))
            }
            (_, "") => return Err(invalid("vo: missing (give a VO or an FQAN)".into())),
            (_, vo) => vo.to_string(),
        };
        validate_name("vo", &vo).map_err(|e| invalid(e.to_string()))?;
        let job = match &req.job {
            Some(j) if !j.is_empty() => {
                validate_name("job", j).map_err(|e| invalid(e.to_string()))?;
                Some(j.clone())
            }
            _ => None,
        };
        let rule = {
            let p = self.policies.read().0.clone();
            p.resolve(&vo, fqan.as_ref())
                .map_err(|e| err(ErrorKind::NotFound, e.to_string()))?
        };
        let owner = lookup_user(&req.user)?;
        let (name, key) = match rule.granularity {
            Granularity::Vo => (vo.clone(), format!("vo:{vo}")),
            Granularity::User => (
                format!("{vo}.{}", req.user),
                format!("user:{vo}:{}", req.user),
            ),
            Granularity::Job => {
                let job = job.clone().ok_or_else(|| {
                    invalid(format!(
                        "job: missing; the policy for {} gives per-job domains",
                        rule.matched_fqan.as_deref().unwrap_or(&vo)
                    ))
                })?;
                (
                    format!("{vo}.{}.job{job}", req.user),
                    format!("job:{vo}:{}:{job}", req.user),
                )
            }
        };
        validate_name("domain name", &name).map_err(|e| invalid(e.to_string()))?;
        if !self.backend.supports(rule.backend) {
            return Err(invalid(format!(
                "backend = {:?} (from {}): {}",
                rule.backend.as_str(),
                rule.source.display(),
                if cfg!(feature = "libvirt") {
                    "this dmsd has no libvirt backend configured"
                } else {
                    "this dmsd was built without the cargo feature \"libvirt\""
                }
            )));
        }
        let limits = limits_from_quotas(&rule.quotas).map_err(invalid)?;
        check_paths(&rule.isolation.paths, &rule.source).map_err(invalid)?;

        // Find or insert the entry; a new one is locked before it becomes visible so concurrent
        // ensures of the same identity wait for the creation instead of racing it.
        let entry: Entry;
        let mut guard;
        loop {
            let mut map = self.domains.write();
            if let Some(e) = map.get(&name).cloned() {
                drop(map);
                let d = self.lock(&e)?;
                // Destroyed while this waited for its lock: make a new one.
                let current = self
                    .domains
                    .read()
                    .get(&name)
                    .is_some_and(|now| Arc::ptr_eq(now, &e));
                if !current {
                    continue;
                }
                if d.key != key {
                    return Err(err(
                        ErrorKind::Conflict,
                        format!("domain name {name:?} is already used by {}", d.key),
                    ));
                }
                if d.state == DomainState::Failed {
                    return Err(err(
                        ErrorKind::Conflict,
                        format!(
                            "domain {name:?} has failed ({}); destroy it first",
                            d.reason.as_deref().unwrap_or("no reason recorded")
                        ),
                    ));
                }
                if d.once {
                    return Err(err(
                        ErrorKind::Conflict,
                        format!(
                            "domain {name:?} runs a single command (run-once) and is destroyed \
                             when it exits; try again then"
                        ),
                    ));
                }
                if once {
                    return Err(err(
                        ErrorKind::Conflict,
                        format!(
                            "domain {name:?} already exists; run-once makes a new domain and \
                             destroys it afterwards (run in this one with exec, or give \
                             another job id)"
                        ),
                    ));
                }
                return Ok(d.clone());
            }
            let t = now();
            let d = Domain {
                name: name.clone(),
                key,
                owner,
                vo: vo.clone(),
                group: rule.group.clone(),
                role: rule.role.clone(),
                rule: rule.matched_fqan.clone(),
                job,
                granularity: rule.granularity,
                backend: rule.backend,
                template: rule.template.clone(),
                quotas: rule.quotas.clone(),
                limits,
                priority: rule.priority,
                owner_may: rule.owner_may.clone(),
                idle: rule.idle,
                monitor: rule.monitor,
                state: DomainState::Creating,
                created_at: t,
                updated_at: t,
                reason: None,
                isolation: rule.isolation.clone(),
                once,
                runtime: Default::default(),
            };
            entry = Arc::new(Mutex::new(d));
            guard = entry.lock_arc();
            map.insert(name.clone(), Arc::clone(&entry));
            break;
        }
        let result = (|| {
            self.store.lock().put(&guard)?;
            self.backend.create(&mut guard)?;
            self.set_state(&mut guard, DomainState::Running, None)
        })();
        if let Err(e) = result {
            // Nothing half-created stays: no group (create rolls itself back), no row, no entry.
            let _ = self.backend.destroy(&name);
            let _ = self.store.lock().delete(&name);
            self.domains.write().remove(&name);
            tracing::warn!(domain = %name, error = %e.message, "domain creation failed, rolled back");
            return Err(e);
        }
        tracing::info!(domain = %name, vo = %guard.vo, user = %guard.owner.user, "domain created");
        Ok(guard.clone())
    }

    /// One domain with its usage. Owners and admins only.
    pub fn get(&self, caller: &Caller, name: &str) -> ApiResult<DomainView> {
        let e = self.entry(name)?;
        let d = self.lock(&e)?.clone();
        if !self.is_admin(caller) && caller.uid != d.owner.uid {
            return Err(err(
                ErrorKind::PermissionDenied,
                format!(
                    "permission denied: uid {} may not see domain {name:?}",
                    caller.uid
                ),
            ));
        }
        let usage = self.backend.stats(name, &d.runtime).ok();
        let processes = self.backend.members(name).ok().map(|m| m.len());
        Ok(DomainView {
            domain: d,
            usage,
            processes,
        })
    }

    /// Domains the caller may see (all for admins, their own otherwise).
    pub fn list(&self, caller: &Caller) -> Vec<Domain> {
        let entries: Vec<(String, Entry)> = self
            .domains
            .read()
            .iter()
            .map(|(n, e)| (n.clone(), Arc::clone(e)))
            .collect();
        let admin = self.is_admin(caller);
        // A domain held by a long operation (a freeze waits up to its timeout) is listed from
        // its last stored record instead of blocking the listing.
        entries
            .iter()
            .filter_map(
                |(name, e)| match e.try_lock_for(Duration::from_millis(200)) {
                    Some(d) => Some(d.clone()),
                    None => self.store.lock().get(name).ok().flatten(),
                },
            )
            .filter(|d| admin || d.owner.uid == caller.uid)
            .collect()
    }

    /// Kills the domain's processes and removes it.
    pub fn destroy(&self, caller: &Caller, name: &str) -> ApiResult<()> {
        self.destroy_because(caller, name, crate::usage::EndCause::Destroyed)
    }

    /// Destroys a domain and writes its usage record with `cause`.
    pub(crate) fn destroy_because(
        &self,
        caller: &Caller,
        name: &str,
        cause: crate::usage::EndCause,
    ) -> ApiResult<()> {
        let e = self.entry(name)?;
        let mut d = self.lock(&e)?;
        self.authorize(caller, &d, Permission::Destroy)?;
        if d.state == DomainState::Frozen {
            // Thaw so SIGKILL is delivered; destroy kills anyway.
            let _ = self.backend.thaw(name);
        }
        // The last reading before the processes die is the domain's total use.
        let usage = self
            .backend
            .stats(name, &d.runtime)
            .ok()
            .or_else(|| self.usage_book.lock().last(name));
        let failed = d.state == DomainState::Failed;
        self.set_state(&mut d, DomainState::Stopping, None)?;
        if let Err(be) = self.backend.destroy(name) {
            let msg = be.to_string();
            self.set_state(
                &mut d,
                DomainState::Failed,
                Some(format!("destroy failed: {msg}")),
            )?;
            return Err(be.into());
        }
        self.store.lock().delete(name)?;
        self.domains.write().remove(name);
        self.emit(name, "stopping", "destroyed");
        if failed {
            d.state = DomainState::Failed;
        }
        self.record_end(&d, usage.as_ref(), cause);
        Ok(())
    }

    /// Freezes a running domain (verified).
    pub fn freeze(&self, caller: &Caller, name: &str) -> ApiResult<()> {
        let e = self.entry(name)?;
        let mut d = self.lock(&e)?;
        self.authorize(caller, &d, Permission::Freeze)?;
        match d.state {
            DomainState::Running => {}
            DomainState::Frozen => {
                return Err(err(
                    ErrorKind::Conflict,
                    format!("domain {name:?} is already frozen"),
                ))
            }
            s => {
                return Err(err(
                    ErrorKind::Conflict,
                    format!("domain {name:?} is {} and cannot be frozen", s.as_str()),
                ))
            }
        }
        self.backend.freeze(name)?;
        self.set_state(&mut d, DomainState::Frozen, None)
    }

    /// Saves a running guest's state to the domain repository and stops it (owners need the
    /// freeze permission).
    pub fn save(&self, caller: &Caller, name: &str) -> ApiResult<()> {
        let e = self.entry(name)?;
        let mut d = self.lock(&e)?;
        self.authorize(caller, &d, Permission::Freeze)?;
        if d.backend != dms_policies::BackendKind::Libvirt {
            return Err(err(
                ErrorKind::Conflict,
                format!("domain {name:?} is a container domain: only libvirt guests can be saved (freeze it instead)"),
            ));
        }
        if d.state == DomainState::Frozen {
            self.backend.thaw(name)?;
        } else if d.state != DomainState::Running {
            return Err(err(
                ErrorKind::Conflict,
                format!(
                    "domain {name:?} is {} and cannot be saved",
                    d.state.as_str()
                ),
            ));
        }
        self.backend.save(name)?;
        self.set_state(&mut d, DomainState::Saved, None)
    }

    /// Starts a saved guest again from its saved state (owners need the thaw permission).
    pub fn restore(&self, caller: &Caller, name: &str) -> ApiResult<()> {
        let e = self.entry(name)?;
        let mut d = self.lock(&e)?;
        self.authorize(caller, &d, Permission::Thaw)?;
        if d.state != DomainState::Saved {
            return Err(err(
                ErrorKind::Conflict,
                format!("domain {name:?} is {}, not saved", d.state.as_str()),
            ));
        }
        self.backend.restore(&d)?;
        self.set_state(&mut d, DomainState::Running, None)
    }

    /// A guest missed its spawn or alive time limit: destroy it, with a usage record.
    pub fn reap_zombie(&self, name: &str, why: &str) {
        tracing::warn!(domain = %name, reason = %why, "reaping zombie guest");
        if let Err(e) = self.destroy_because(
            &Caller {
                uid: 0,
                gids: vec![0],
            },
            name,
            crate::usage::EndCause::Zombie,
        ) {
            tracing::warn!(domain = %name, error = %e.message, "could not reap zombie guest");
        }
    }

    /// Thaws a frozen domain.
    pub fn thaw(&self, caller: &Caller, name: &str) -> ApiResult<()> {
        let e = self.entry(name)?;
        let mut d = self.lock(&e)?;
        self.authorize(caller, &d, Permission::Thaw)?;
        if d.state != DomainState::Frozen {
            return Err(err(
                ErrorKind::Conflict,
                format!("domain {name:?} is {}, not frozen", d.state.as_str()),
            ));
        }
        self.backend.thaw(name)?;
        self.set_state(&mut d, DomainState::Running, None)
    }

    /// Moves a process into a domain. Non-admin owners may only move their own processes.
    pub fn attach(&self, caller: &Caller, name: &str, pid: i32) -> ApiResult<()> {
        if pid <= 0 {
            return Err(err(
                ErrorKind::InvalidArgument,
                format!("pid = {pid}: must be positive"),
            ));
        }
        let e = self.entry(name)?;
        let d = self.lock(&e)?;
        self.authorize(caller, &d, Permission::Attach)?;
        let meta = std::fs::metadata(format!("/proc/{pid}"))
            .map_err(|_| err(ErrorKind::NotFound, format!("pid = {pid}: no such process")))?;
        if !self.is_admin(caller) && meta.uid() != caller.uid {
            return Err(err(
                ErrorKind::PermissionDenied,
                format!(
                    "permission denied: pid {pid} belongs to uid {}, not to the caller",
                    meta.uid()
                ),
            ));
        }
        if !matches!(d.state, DomainState::Running | DomainState::Frozen) {
            return Err(err(
                ErrorKind::Conflict,
                format!("domain {name:?} is {}", d.state.as_str()),
            ));
        }
        self.backend.attach(name, pid).map_err(|e| match e {
            BackendError::Cgroup(crate::cgroup::CgroupError::Io { source, .. })
                if source.raw_os_error() == Some(libc::ESRCH) =>
            {
                err(ErrorKind::NotFound, format!("pid = {pid}: no such process"))
            }
            e => e.into(),
        })
    }

    /// Starts a command in a running domain as its owner (or as `user`, for admins).
    pub fn run(&self, caller: &Caller, req: &RunRequest, stdio: &[i32]) -> ApiResult<Child> {
        let e = self.entry(&req.name)?;
        // A copy: the domain is not held while the command starts, so concurrent commands (and
        // other operations) do not queue behind each other's fork and exec. A destroy racing
        // with the start kills the command with the domain.
        let d = self.lock(&e)?.clone();
        self.authorize(caller, &d, Permission::Exec)?;
        Self::require_running(&d)?;
        check_command(req)?;
        let who = match &req.user {
            Some(u) if !u.is_empty() => {
                self.require_admin(caller, "run commands as another user")?;
                validate_name("user", u)
                    .map_err(|e| err(ErrorKind::InvalidArgument, e.to_string()))?;
                lookup_user(u)?
            }
            _ => d.owner.clone(),
        };
        let mut env = vec![
            (
                "PATH".to_string(),
                "/usr/local/bin:/usr/bin:/bin".to_string(),
            ),
            ("HOME".to_string(), who.home.display().to_string()),
            ("USER".to_string(), who.user.clone()),
            ("LOGNAME".to_string(), who.user.clone()),
            ("DMS_DOMAIN".to_string(), d.name.clone()),
        ];
        env.extend(req.env.iter().cloned());
        let cwd = match &req.cwd {
            Some(c) if !c.is_empty() => PathBuf::from(c),
            _ if who.home.is_dir() => who.home.clone(),
            _ => PathBuf::from("/"),
        };
        let groups = nix::unistd::getgrouplist(
            &std::ffi::CString::new(who.user.clone())
                .map_err(|_| err(ErrorKind::InvalidArgument, "user: NUL"))?,
            nix::unistd::Gid::from_raw(who.gid),
        )
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![who.gid]);
        let spec = ExecSpec {
            argv: req.argv.clone(),
            env,
            cwd,
            uid: who.uid,
            gid: who.gid,
            groups,
        };
        let child = self.backend.exec(&d, &spec, stdio)?;
        tracing::info!(domain = %d.name, pid = child.pid, argv = ?req.argv, uid = who.uid, "command started");
        Ok(child)
    }

    /// Creates a new domain for an identity (as `ensure`, admins only), runs one command in it
    /// (as `run`), waits for it and destroys the domain, as `crun run` does a container. The
    /// identity's domain must not exist yet: an existing one is not this call's to destroy. While
    /// the command runs, `ensure` of the same identity is refused, as a session there would die
    /// with it. `stdio` is closed here once the command has its copies, so that the caller's
    /// pipes see the end of its output.
    pub fn run_once(
        &self,
        caller: &Caller,
        ensure: &EnsureRequest,
        run: &RunRequest,
        stdio: Vec<impl AsFd>,
    ) -> ApiResult<OnceOutcome> {
        // Bad input is refused before a domain is made for it.
        self.require_admin(caller, "create domains")?;
        check_command(run)?;
        if let Some(u) = run.user.as_deref().filter(|u| !u.is_empty()) {
            validate_name("user", u).map_err(|e| err(ErrorKind::InvalidArgument, e.to_string()))?;
            lookup_user(u)?;
        }
        let d = self.ensure_as(caller, ensure, true)?;
        let req = RunRequest {
            name: d.name.clone(),
            ..run.clone()
        };
        let raw: Vec<i32> = stdio.iter().map(|f| f.as_fd().as_raw_fd()).collect();
        let started = self.run(caller, &req, &raw);
        drop(stdio);
        let waited = started.and_then(|child| {
            let pid = child.pid;
            let status = child
                .wait()
                .map_err(|e| err(ErrorKind::Failed, e.to_string()))?;
            Ok((pid, status.shell_code()))
        });
        let destroyed = self.destroy(caller, &d.name);
        match (waited, destroyed) {
            (Ok((pid, status)), Ok(())) => Ok(OnceOutcome {
                name: d.name,
                pid,
                status,
            }),
            (Ok((_, status)), Err(e)) => Err(err(
                e.kind,
                format!(
                    "the command exited with status {status}, but destroying domain {:?} \
                     failed: {}",
                    d.name, e.message
                ),
            )),
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(de)) => Err(err(
                e.kind,
                format!(
                    "{}; destroying domain {:?} failed too: {}",
                    e.message, d.name, de.message
                ),
            )),
        }
    }

    /// What a single-threaded process (pam_dms.so, dms-enter) needs to enter a running domain
    /// itself. Same permission as running a command in it.
    pub fn join_info(&self, caller: &Caller, name: &str) -> ApiResult<JoinTarget> {
        let e = self.entry(name)?;
        let d = self.lock(&e)?;
        self.authorize(caller, &d, Permission::Exec)?;
        Self::require_running(&d)?;
        Ok(self.backend.join_target(&d)?)
    }

    fn require_running(d: &Domain) -> ApiResult<()> {
        match d.state {
            DomainState::Running => Ok(()),
            DomainState::Frozen => Err(err(
                ErrorKind::Conflict,
                format!(
                    "domain {:?} is frozen; thaw it first (dmsctl domain thaw {})",
                    d.name, d.name
                ),
            )),
            DomainState::Failed => Err(err(
                ErrorKind::Conflict,
                format!(
                    "domain {:?} has failed ({}); destroy it and create it again",
                    d.name,
                    d.reason.as_deref().unwrap_or("no reason recorded")
                ),
            )),
            s => Err(err(
                ErrorKind::Conflict,
                format!(
                    "domain {:?} is {}; commands run only in running domains",
                    d.name,
                    s.as_str()
                ),
            )),
        }
    }

    /// Called (on the watcher thread) when a domain's init exits: unless the domain is being
    /// destroyed, it is marked failed, since its namespaces and processes are gone.
    pub fn init_exited(&self, name: &str) {
        let Ok(e) = self.entry(name) else { return };
        let Ok(mut d) = self.lock(&e) else {
            tracing::warn!(domain = %name, "init exited while the domain was busy; not marked");
            return;
        };
        if matches!(d.state, DomainState::Running | DomainState::Frozen) {
            let why =
                "its init process exited (all its processes in the pid namespace were killed)";
            if let Err(e) = self.set_state(&mut d, DomainState::Failed, Some(why.into())) {
                tracing::warn!(domain = %name, error = %e.message, "could not record init exit");
            }
        }
    }

    /// Reloads the policy directory. On failure the previous policies stay in force. On
    /// success, live domains get their re-resolved limits.
    pub fn reload(&self, caller: &Caller) -> ApiResult<Vec<String>> {
        self.require_admin(caller, "reload policies")?;
        self.reload_policies()
    }

    /// The reload itself (also used on SIGHUP and on file changes).
    pub fn reload_policies(&self) -> ApiResult<Vec<String>> {
        let r = self.reload_policies_now();
        self.metrics.policy_reload(r.is_ok());
        r
    }

    fn reload_policies_now(&self) -> ApiResult<Vec<String>> {
        if let Err(e) = self.accounts.lock().reload() {
            tracing::error!(error = %e, "mapfile reload failed; the previous mapfiles stay in force");
            return Err(err(
                ErrorKind::InvalidArgument,
                format!("mapfile reload failed; the previous mapfiles stay in force: {e}"),
            ));
        }
        let failed = |e: PolicyErrors| {
            tracing::error!(dir = %self.policy_dir.display(), errors = %e, "policy reload failed; previous policies stay in force");
            err(
                ErrorKind::InvalidArgument,
                format!("policy reload failed; the previous policies stay in force:\n{e}"),
            )
        };
        let set = Arc::new(PolicySet::load_dir(&self.policy_dir).map_err(failed)?);
        // The map rules go first: a rule naming a pool dmsd does not have fails the whole
        // reload, and neither the old rules nor the old policies are replaced.
        let map_rules = {
            let mut book = self.accounts.lock();
            book.set_policies(&set).map_err(failed)?;
            book.policy_maps().len()
        };
        *self.policies.write() = (Arc::clone(&set), now());
        let mut notes = Vec::new();
        let entries: Vec<Entry> = self.domains.read().values().cloned().collect();
        for e in entries {
            let Some(mut d) = e.try_lock_for(self.lock_timeout) else {
                continue;
            };
            let fqan = d.group.as_ref().map(|g| match &d.role {
                Some(r) => format!("{g}/Role={r}"),
                None => g.clone(),
            });
            let fqan = fqan.and_then(|f| f.parse::<Fqan>().ok());
            let rule: ResolvedRule = match set.resolve(&d.vo, fqan.as_ref()) {
                Ok(r) => r,
                Err(e) => {
                    notes.push(format!("{}: kept its limits: {e}", d.name));
                    continue;
                }
            };
            let Ok(limits) = limits_from_quotas(&rule.quotas) else {
                continue;
            };
            if rule.monitor != d.monitor || rule.idle != d.idle {
                d.monitor = rule.monitor;
                d.idle = rule.idle;
                self.store.lock().put(&d)?;
            }
            if limits != d.limits || rule.owner_may != d.owner_may || rule.priority != d.priority {
                let mut updated = d.clone();
                updated.limits = limits;
                updated.quotas = rule.quotas;
                updated.owner_may = rule.owner_may;
                updated.priority = rule.priority;
                match self.backend.update(&updated) {
                    Ok(()) => {
                        *d = updated;
                        self.store.lock().put(&d)?;
                        notes.push(format!("{}: limits updated", d.name));
                    }
                    Err(e) => notes.push(format!("{}: kept its limits: {e}", d.name)),
                }
            }
        }
        tracing::info!(vos = ?set.vo_names(), map_rules, updates = ?notes, "policies reloaded");
        Ok(notes)
    }

    /// Node and daemon status.
    pub fn status(&self) -> Status {
        let mut domains = BTreeMap::new();
        let entries: Vec<Entry> = self.domains.read().values().cloned().collect();
        for e in entries {
            let state = e
                .try_lock_for(Duration::from_millis(200))
                .map_or("busy", |d| d.state.as_str());
            *domains.entry(state.to_string()).or_insert(0) += 1;
        }
        let (set, loaded) = self.policies.read().clone();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            cgroup_version: self.cgroup_version.clone(),
            cpus: online_cpus(),
            memory_bytes: mem_total(),
            domains,
            vos: set.vo_names().into_iter().map(String::from).collect(),
            policy_files: set.files().to_vec(),
            policy_loaded_at: loaded,
        }
    }

    /// Brings the store in line with the kernel after a start (or crash): adopt live domains,
    /// mark vanished ones failed, remove orphan groups, finish half-done operations.
    pub fn reconcile(&self) -> ApiResult<ReconcileReport> {
        let mut report = ReconcileReport::default();
        let live: BTreeMap<String, DomainState> = self
            .backend
            .list()?
            .into_iter()
            .map(|l| {
                let state = if l.saved {
                    DomainState::Saved
                } else if l.frozen {
                    DomainState::Frozen
                } else {
                    DomainState::Running
                };
                (l.name, state)
            })
            .collect();
        let records = self.store.lock().all()?;
        let mut known = BTreeMap::new();
        for mut d in records {
            let alive = live.get(&d.name).copied();
            match (d.state, alive) {
                (DomainState::Creating | DomainState::Stopping, _) => {
                    // Interrupted half-way: finish it off rather than guess what was done.
                    let _ = self.backend.adopt(&d);
                    let _ = self.backend.destroy(&d.name);
                    self.store.lock().delete(&d.name)?;
                    report.cleaned.push(d.name.clone());
                    continue;
                }
                (_, None) if self.backend.list_incomplete(d.backend) => {
                    // Its manager (libvirtd) could not be asked: keep the record as it is.
                    tracing::warn!(domain = %d.name, "backend unreachable; domain record kept unchecked");
                    let _ = self.backend.adopt(&d);
                }
                (DomainState::Running | DomainState::Frozen | DomainState::Saved, Some(_))
                    if self.backend.adopt(&d).is_err() =>
                {
                    let why = "its init process exited while the daemon was down";
                    self.set_state(&mut d, DomainState::Failed, Some(why.into()))?;
                    report.marked_failed.push(d.name.clone());
                }
                (_, Some(want)) => {
                    if d.state != want && d.state != DomainState::Failed {
                        self.set_state(&mut d, want, None)?;
                    }
                    report.adopted.push(d.name.clone());
                }
                (DomainState::Failed, None) => {}
                (_, None) => {
                    let why = if d.backend == dms_policies::BackendKind::Libvirt {
                        "its libvirt guest vanished while the daemon was down"
                    } else {
                        "its cgroup vanished while the daemon was down"
                    };
                    self.set_state(&mut d, DomainState::Failed, Some(why.into()))?;
                    report.marked_failed.push(d.name.clone());
                }
            }
            if d.once && d.state != DomainState::Failed {
                // Its run-once caller went with the old daemon, so nobody waits to destroy it:
                // from now on it is an ordinary domain.
                d.once = false;
                self.store.lock().put(&d)?;
            }
            known.insert(d.name.clone(), Arc::new(Mutex::new(d)));
        }
        for name in live.keys() {
            if !known.contains_key(name) && !report.cleaned.contains(name) {
                match self.backend.destroy(name) {
                    Ok(()) => report.removed_orphans.push(name.clone()),
                    Err(e) => {
                        tracing::warn!(group = %name, error = %e, "could not remove orphan group")
                    }
                }
            }
        }
        *self.domains.write() = known;
        match self.backend.sweep() {
            Ok(links) => report.removed_orphans.extend(links),
            Err(e) => tracing::warn!(error = %e, "could not sweep stray network resources"),
        }
        tracing::info!(?report, "reconciled");
        for (action, n) in [
            ("adopted", report.adopted.len()),
            ("marked_failed", report.marked_failed.len()),
            ("removed_orphans", report.removed_orphans.len()),
            ("cleaned", report.cleaned.len()),
        ] {
            self.metrics.reconcile_actions(action, n);
        }
        Ok(report)
    }
}

/// Policy paths must exist when a domain is created (private ones must be directories).
fn check_paths(p: &dms_policies::PathPolicy, source: &std::path::Path) -> Result<(), String> {
    for (key, list, dir) in [
        ("private", &p.private, true),
        ("readonly", &p.readonly, false),
    ] {
        for path in list {
            let shown = path.display().to_string();
            match std::fs::metadata(path) {
                Ok(m) if dir && !m.is_dir() => {
                    return Err(format!(
                        "paths.{key} = {shown:?} (from {}): not a directory",
                        source.display()
                    ))
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(format!(
                        "paths.{key} = {shown:?} (from {}): {e}",
                        source.display()
                    ))
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub(crate) fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| dms_accounting::flat_key(&s.replace(':', ""), "MemTotal"))
        .map_or(0, |kb| kb * 1024)
}

pub(crate) fn lookup_user(name: &str) -> ApiResult<Owner> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(Owner {
            user: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
        }),
        Ok(None) => Err(err(
            ErrorKind::NotFound,
            format!("user = {name:?}: no such account"),
        )),
        Err(e) => Err(err(
            ErrorKind::Failed,
            format!("user = {name:?}: lookup failed: {e}"),
        )),
    }
}

/// Policy quotas to mechanism limits; resolves device paths to major:minor.
/// A command's argv and extra environment names, before anything runs.
fn check_command(req: &RunRequest) -> ApiResult<()> {
    if req.argv.is_empty() || req.argv[0].is_empty() {
        return Err(err(ErrorKind::InvalidArgument, "argv: empty command"));
    }
    for (k, _) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(err(
                ErrorKind::InvalidArgument,
                format!("env: bad variable name {k:?}"),
            ));
        }
    }
    Ok(())
}

pub fn limits_from_quotas(q: &Quotas) -> Result<Limits, String> {
    let mut io = Vec::new();
    for t in &q.io {
        let (major, minor) = device_numbers(&t.device)?;
        io.push(IoLimit {
            major,
            minor,
            read_bps: t.read_bps,
            write_bps: t.write_bps,
            read_iops: t.read_iops,
            write_iops: t.write_iops,
        });
    }
    Ok(Limits {
        cpu_millicores: q.cpu.limit_millicores,
        cpu_weight: q.cpu.weight,
        memory_max: q.memory.limit_bytes,
        memory_soft: q.memory.soft_bytes,
        swap_max: q.memory.swap_bytes,
        pids_max: q.pids,
        io,
        cpuset_cpus: q.cpuset.as_ref().map(|c| c.cpus.clone()),
        cpuset_mems: q.cpuset.as_ref().and_then(|c| c.mems.clone()),
    })
}

fn device_numbers(dev: &str) -> Result<(u32, u32), String> {
    if let Some((a, b)) = dev.split_once(':') {
        if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
            return Ok((a, b));
        }
    }
    let meta =
        std::fs::metadata(Path::new(dev)).map_err(|e| format!("io.device = {dev:?}: {e}"))?;
    if !meta.file_type().is_block_device() {
        return Err(format!("io.device = {dev:?}: not a block device"));
    }
    let rdev = meta.rdev();
    Ok((libc::major(rdev), libc::minor(rdev)))
}
