//! The domain model and the backend trait that container domains implement now and libvirt
//! guests will implement later.

use dms_accounting::Usage;
use dms_policies::{BackendKind, Granularity, Permission, Priority, Quotas};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::cgroup::{CgroupError, Cgroups, Limits, StuckProcess};
use crate::spawn::{Child, SpawnError, SpawnRequest, Spawner};

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
    /// The quotas from policy.
    pub quotas: Quotas,
    /// The mechanism limits derived from them.
    pub limits: Limits,
    /// Scheduling class.
    pub priority: Priority,
    /// What the owner may do beyond reading.
    pub owner_may: BTreeSet<Permission>,
    /// Lifecycle state.
    pub state: DomainState,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the last state change.
    pub updated_at: u64,
    /// Why the domain failed, if it did.
    pub reason: Option<String>,
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
}

impl BackendError {
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
}

/// The operations every domain backend provides. Calls block; the daemon runs them off its
/// async threads. Each is idempotent where that makes sense (destroy of a missing domain is Ok).
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Which kind this is.
    fn kind(&self) -> BackendKind;
    /// Creates the domain's resources with its limits; on failure nothing is left behind.
    fn create(&self, domain: &Domain) -> Result<(), BackendError>;
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
    /// Starts a command in the domain; `stdio` fds become its stdin/stdout/stderr.
    fn exec(&self, name: &str, spec: &ExecSpec, stdio: &[i32]) -> Result<Child, BackendError>;
    /// Current usage.
    fn stats(&self, name: &str) -> Result<Usage, BackendError>;
    /// Pids in the domain.
    fn members(&self, name: &str) -> Result<Vec<i32>, BackendError>;
    /// The domains this backend has on the host (for reconcile).
    fn list(&self) -> Result<Vec<LiveDomain>, BackendError>;
}

/// Container domains on cgroups (namespaces come with the isolation issue).
#[derive(Debug)]
pub struct ContainerBackend {
    cgroups: Cgroups,
    spawner: Spawner,
    freeze_timeout: std::time::Duration,
    /// Stat files opened once per domain and re-read with pread.
    readers: parking_lot::Mutex<std::collections::HashMap<String, dms_accounting::UsageReader>>,
}

impl ContainerBackend {
    /// A backend over the detected cgroups, spawning through the zygote.
    pub fn new(cgroups: Cgroups, spawner: Spawner, freeze_timeout: std::time::Duration) -> Self {
        Self {
            cgroups,
            spawner,
            freeze_timeout,
            readers: parking_lot::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The cgroup layer (for status output).
    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }
}

impl Backend for ContainerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Container
    }

    fn create(&self, domain: &Domain) -> Result<(), BackendError> {
        Ok(self.cgroups.create(&domain.name, &domain.limits)?)
    }

    fn update(&self, domain: &Domain) -> Result<(), BackendError> {
        Ok(self.cgroups.apply(&domain.name, &domain.limits)?)
    }

    fn destroy(&self, name: &str) -> Result<(), BackendError> {
        self.readers.lock().remove(name);
        if !self.cgroups.exists(name) {
            return Ok(());
        }
        self.cgroups
            .kill_all(name, std::time::Duration::from_secs(5))?;
        Ok(self.cgroups.remove(name)?)
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

    fn exec(&self, name: &str, spec: &ExecSpec, stdio: &[i32]) -> Result<Child, BackendError> {
        if !self.cgroups.exists(name) {
            return Err(CgroupError::NotFound(name.to_string()).into());
        }
        let req = SpawnRequest {
            process: spec.clone(),
            procs_files: self.cgroups.procs_files(name),
        };
        Ok(self.spawner.spawn(&req, stdio)?)
    }

    fn stats(&self, name: &str) -> Result<Usage, BackendError> {
        let mut readers = self.readers.lock();
        if !readers.contains_key(name) {
            readers.insert(name.to_string(), self.cgroups.usage_reader(name)?);
        }
        let result = readers.get_mut(name).map(|r| r.read());
        match result {
            Some(Ok(u)) => Ok(u),
            Some(Err(e)) => {
                // A vanished or broken group: forget the open files, report the error.
                readers.remove(name);
                Err(e.into())
            }
            None => Err(BackendError::Unsupported(format!(
                "no usage reader for {name:?}"
            ))),
        }
    }

    fn members(&self, name: &str) -> Result<Vec<i32>, BackendError> {
        Ok(self.cgroups.members(name)?)
    }

    fn list(&self) -> Result<Vec<LiveDomain>, BackendError> {
        let mut out = Vec::new();
        for name in self.cgroups.list()? {
            let frozen =
                self.cgroups.freezer_state(&name).ok() == Some(crate::cgroup::FreezerState::Frozen);
            out.push(LiveDomain { name, frozen });
        }
        Ok(out)
    }
}
