//! The cgroup mechanism: domain groups under the daemon's own subtree, on cgroup v1 (hybrid hosts
//! count as v1) or v2, detected once.
//!
//! Everything here takes an injectable root (normally `/sys/fs/cgroup`) so the file formats are
//! unit-tested against temp dirs. Nothing above this module touches `/sys` directly.

mod freeze;
mod limits;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dms_accounting::{UsageReader, V1Dirs};

pub use self::freeze::{FreezerState, StuckProcess};
pub use self::limits::{IoLimit, Limits};

/// A failed cgroup operation, with the path and the operation.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// An I/O error on a cgroup file or directory.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The domain's group already exists.
    #[error("cgroup for domain {0:?} already exists")]
    Exists(String),
    /// The domain's group does not exist.
    #[error("cgroup for domain {0:?} does not exist")]
    NotFound(String),
    /// Freezing did not complete in time; the group was thawed back.
    #[error("freezing {name:?} did not complete within {timeout:?}; thawed back; processes that did not stop: {}", format_stuck(.stuck))]
    FreezeTimeout {
        /// The domain.
        name: String,
        /// The bound that elapsed.
        timeout: Duration,
        /// The processes that were not frozen.
        stuck: Vec<StuckProcess>,
    },
    /// Members were still alive after the kill deadline.
    #[error("{name:?} still has {remaining} process(es) {timeout:?} after SIGKILL")]
    KillTimeout {
        /// The domain.
        name: String,
        /// The bound that elapsed.
        timeout: Duration,
        /// How many remain.
        remaining: usize,
    },
    /// The host lacks what a limit needs.
    #[error("{0}")]
    Unsupported(String),
    /// Nothing usable under the cgroup root.
    #[error("no usable cgroup hierarchy under {0}")]
    NoHierarchy(PathBuf),
}

fn format_stuck(stuck: &[StuckProcess]) -> String {
    if stuck.is_empty() {
        return "none identified".into();
    }
    stuck
        .iter()
        .map(|p| format!("{} ({}, state {})", p.pid, p.comm, p.state))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A cgroup v1 controller DMS uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Controller {
    /// CFS quota and shares.
    Cpu,
    /// CPU accounting.
    Cpuacct,
    /// CPU and memory-node pinning.
    Cpuset,
    /// Memory limits.
    Memory,
    /// Freezer.
    Freezer,
    /// Block I/O throttling.
    Blkio,
    /// Process count limit.
    Pids,
}

impl Controller {
    const ALL: [Controller; 7] = [
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Cpuset,
        Controller::Memory,
        Controller::Freezer,
        Controller::Blkio,
        Controller::Pids,
    ];

    /// The kernel's name of the controller.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Cpuset => "cpuset",
            Controller::Memory => "memory",
            Controller::Freezer => "freezer",
            Controller::Blkio => "blkio",
            Controller::Pids => "pids",
        }
    }
}

/// Which cgroup version the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Legacy or hybrid hierarchy.
    V1,
    /// Unified hierarchy.
    V2,
}

/// The host's cgroup layout and the daemon's subtree in it.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: Version,
    /// v1: controller → subtree directory (`<mount>/<subtree>`); v2: unused.
    v1_dirs: BTreeMap<Controller, PathBuf>,
    /// v2: `<root>/<subtree>`; v1: the freezer's subtree dir (the canonical one for listing).
    base: PathBuf,
    subtree: String,
}

impl Cgroups {
    /// Detects the layout under `root` (normally `/sys/fs/cgroup`) once. `subtree` is the
    /// daemon's own directory name (a relative path such as `dms`).
    pub fn detect(root: &Path, subtree: &str) -> Result<Self, CgroupError> {
        if root.join("cgroup.controllers").exists() {
            return Ok(Self {
                version: Version::V2,
                v1_dirs: BTreeMap::new(),
                base: root.join(subtree),
                subtree: subtree.to_string(),
            });
        }
        // v1 or hybrid: each controller is a mount below root named after its controllers
        // (possibly co-mounted, e.g. "cpu,cpuacct"); the unified mount of a hybrid host holds
        // no controllers we use. The root group of the freezer has no freezer.state, so
        // detection goes by name, as the kernel's mount conventions set it.
        let mut v1_dirs = BTreeMap::new();
        let entries = fs::read_dir(root).map_err(io_err("read", root))?;
        let mut mounts: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        mounts.sort();
        for mount in mounts {
            let Some(dir_name) = mount.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !mount.join("cgroup.procs").exists() {
                continue;
            }
            for c in Controller::ALL {
                if !v1_dirs.contains_key(&c) && dir_name.split(',').any(|n| n == c.name()) {
                    v1_dirs.insert(c, mount.join(subtree));
                }
            }
        }
        let Some(base) = v1_dirs.get(&Controller::Freezer).cloned() else {
            return Err(CgroupError::NoHierarchy(root.to_path_buf()));
        };
        for needed in [Controller::Cpu, Controller::Memory, Controller::Pids] {
            if !v1_dirs.contains_key(&needed) {
                return Err(CgroupError::Unsupported(format!(
                    "cgroup v1 controller {:?} is not mounted under {}",
                    needed.name(),
                    root.display()
                )));
            }
        }
        Ok(Self {
            version: Version::V1,
            v1_dirs,
            base,
            subtree: subtree.to_string(),
        })
    }

    /// The detected version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The daemon's subtree name.
    pub fn subtree(&self) -> &str {
        &self.subtree
    }

    /// The v1 controllers found (empty on v2).
    pub fn controllers(&self) -> Vec<Controller> {
        self.v1_dirs.keys().copied().collect()
    }

    /// Creates the daemon's subtree (idempotent) and prepares it so domain groups inherit what
    /// they need: v1 cpuset values and clone_children, v2 controllers enabled for children.
    pub fn init(&self) -> Result<(), CgroupError> {
        match self.version {
            Version::V1 => {
                for (c, dir) in &self.v1_dirs {
                    mkdir_p(dir)?;
                    if *c == Controller::Cpuset {
                        // A fresh v1 cpuset group has empty cpus/mems and refuses tasks; copy the
                        // parent's and make children inherit them.
                        for f in ["cpuset.cpus", "cpuset.mems"] {
                            let parent = dir.parent().unwrap_or(dir).join(f);
                            let value = read_string(&parent)?;
                            if read_string(&dir.join(f))?.trim().is_empty() {
                                write_file(&dir.join(f), value.trim())?;
                            }
                        }
                        write_file(&dir.join("cgroup.clone_children"), "1")?;
                    }
                }
            }
            Version::V2 => {
                mkdir_p(&self.base)?;
                let root = self.base.parent().unwrap_or(&self.base).to_path_buf();
                let available = read_string(&root.join("cgroup.subtree_control"))?;
                let wanted: Vec<String> = available
                    .split_whitespace()
                    .filter(|c| ["cpu", "memory", "pids", "io", "cpuset"].contains(c))
                    .map(|c| format!("+{c}"))
                    .collect();
                if !wanted.is_empty() {
                    write_file(&self.base.join("cgroup.subtree_control"), &wanted.join(" "))?;
                }
            }
        }
        Ok(())
    }

    /// Removes the daemon's subtree if it holds no domains (used on clean shutdown and by tests).
    pub fn remove_subtree(&self) -> Result<(), CgroupError> {
        for dir in self.all_dirs_of(None) {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("rmdir", &dir)(e)),
            }
        }
        Ok(())
    }

    /// Every directory that makes up a domain (or the subtree itself for `None`).
    fn all_dirs_of(&self, name: Option<&str>) -> Vec<PathBuf> {
        let join = |d: &Path| match name {
            Some(n) => d.join(n),
            None => d.to_path_buf(),
        };
        match self.version {
            Version::V1 => {
                let mut dirs: Vec<PathBuf> = self.v1_dirs.values().map(|d| join(d)).collect();
                dirs.dedup();
                dirs
            }
            Version::V2 => vec![join(&self.base)],
        }
    }

    fn dir(&self, c: Controller, name: &str) -> Option<PathBuf> {
        match self.version {
            Version::V1 => self.v1_dirs.get(&c).map(|d| d.join(name)),
            Version::V2 => Some(self.base.join(name)),
        }
    }

    /// What the Domain Monitor can wait on for this domain: the v1 OOM notifier, and the
    /// event files the kernel marks modified when a limit is hit.
    pub fn event_sources(&self, name: &str) -> Vec<crate::domain::EventSource> {
        use crate::domain::EventSource;
        let mut out = Vec::new();
        match self.version {
            Version::V1 => {
                if let Some(m) = self.dir(Controller::Memory, name) {
                    out.push(EventSource::OomControl(m));
                }
                if let Some(p) = self.dir(Controller::Pids, name) {
                    out.push(EventSource::Modified(p.join("pids.events")));
                }
            }
            Version::V2 => {
                let d = self.base.join(name);
                out.push(EventSource::Modified(d.join("memory.events")));
                out.push(EventSource::Modified(d.join("pids.events")));
            }
        }
        out
    }

    /// The `cgroup.procs` files a process must be written to in order to join the domain.
    pub fn procs_files(&self, name: &str) -> Vec<PathBuf> {
        self.in_every_dir(name, "cgroup.procs")
    }

    /// `file` in each of the domain's group directories (one per hierarchy).
    fn in_every_dir(&self, name: &str, file: &str) -> Vec<PathBuf> {
        self.all_dirs_of(Some(name))
            .into_iter()
            .map(|d| d.join(file))
            .collect()
    }

    /// The files a **single-threaded** process writes `0` to, to move itself into the domain:
    /// on v1 each hierarchy's `tasks`, on v2 `cgroup.procs`. A v1 `tasks` write moves only the
    /// writing thread (for such a process, all of it) and, unlike `cgroup.procs`, does not take
    /// the kernel's global threadgroup lock, whose first writer after an idle moment waits for
    /// an RCU grace period (about 10 ms here). For domain inits and spawned children.
    pub fn self_join_files(&self, name: &str) -> Vec<PathBuf> {
        let file = match self.version {
            Version::V1 => "tasks",
            Version::V2 => "cgroup.procs",
        };
        self.in_every_dir(name, file)
    }

    /// Whether the domain's group exists.
    pub fn exists(&self, name: &str) -> bool {
        self.base.join(name).is_dir()
    }

    /// Names of the domain groups under the subtree.
    pub fn list(&self) -> Result<Vec<String>, CgroupError> {
        let entries = match fs::read_dir(&self.base) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", &self.base)(e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| {
                let e = e.ok()?;
                e.file_type()
                    .ok()?
                    .is_dir()
                    .then(|| e.file_name().into_string().ok())?
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Creates a domain group with its limits. On any failure the partly made group is removed.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<(), CgroupError> {
        if self.exists(name) {
            return Err(CgroupError::Exists(name.to_string()));
        }
        let dirs = self.all_dirs_of(Some(name));
        let result = (|| {
            for d in &dirs {
                fs::create_dir(d).map_err(io_err("mkdir", d))?;
            }
            self.apply(name, limits)
        })();
        if result.is_err() {
            for d in dirs.iter().rev() {
                let _ = fs::remove_dir(d);
            }
        }
        result
    }

    /// Writes every limit to the domain's group; fields left `None` are reset to unlimited.
    pub fn apply(&self, name: &str, limits: &Limits) -> Result<(), CgroupError> {
        for (path, value) in limits::plan(self, name, limits)? {
            write_file(&path, &value)?;
        }
        Ok(())
    }

    /// Moves a process (all its threads) into the domain.
    pub fn add_pid(&self, name: &str, pid: i32) -> Result<(), CgroupError> {
        if !self.exists(name) {
            return Err(CgroupError::NotFound(name.to_string()));
        }
        for f in self.procs_files(name) {
            write_file(&f, &pid.to_string())?;
        }
        Ok(())
    }

    /// Pids of the processes in the domain.
    pub fn members(&self, name: &str) -> Result<Vec<i32>, CgroupError> {
        let f = self.base.join(name).join("cgroup.procs");
        let s = match fs::read_to_string(&f) {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(CgroupError::NotFound(name.to_string()))
            }
            Err(e) => return Err(io_err("read", &f)(e)),
        };
        Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Kills every process of the domain and waits until the group is empty.
    pub fn kill_all(&self, name: &str, timeout: Duration) -> Result<(), CgroupError> {
        // The common case of an empty domain needs no freeze/kill round.
        if self.members(name)?.is_empty() {
            return Ok(());
        }
        let kill_file = self.base.join(name).join("cgroup.kill");
        if self.version == Version::V2 && kill_file.exists() {
            write_file(&kill_file, "1")?;
        } else {
            // Freeze first so nothing forks between reading the list and the signals; SIGKILL
            // is delivered to frozen tasks once they are thawed.
            let frozen = self.freeze(name, Duration::from_secs(2)).is_ok();
            for pid in self.members(name)? {
                // SAFETY: kill(2) with a valid signal has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if frozen {
                self.thaw(name)?;
            }
        }
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(50);
        loop {
            let left = self.members(name)?;
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::KillTimeout {
                    name: name.to_string(),
                    timeout,
                    remaining: left.len(),
                });
            }
            // Late forks of a racing parent: kill again.
            for pid in left {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// Removes an empty domain group from every hierarchy. Retries briefly on EBUSY, which the
    /// kernel returns while exited tasks are still being detached.
    pub fn remove(&self, name: &str) -> Result<(), CgroupError> {
        let deadline = Instant::now() + Duration::from_secs(2);
        for d in self.all_dirs_of(Some(name)).iter().rev() {
            loop {
                match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => return Err(io_err("rmdir", d)(e)),
                }
            }
        }
        Ok(())
    }

    /// Opens a usage reader on the domain's stat files.
    pub fn usage_reader(&self, name: &str) -> Result<UsageReader, dms_accounting::UsageError> {
        match self.version {
            Version::V1 => UsageReader::open_v1(&V1Dirs {
                cpu: self.dir(Controller::Cpu, name),
                cpuacct: self.dir(Controller::Cpuacct, name),
                memory: self.dir(Controller::Memory, name),
                pids: self.dir(Controller::Pids, name),
                blkio: self.dir(Controller::Blkio, name),
            }),
            Version::V2 => UsageReader::open_v2(&self.base.join(name)),
        }
    }
}

fn mkdir_p(dir: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(dir).map_err(io_err("mkdir", dir))
}

pub(crate) fn read_string(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(io_err("read", path))
}

/// Writes a value to a cgroup file in one write(2), as the kernel expects.
pub(crate) fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(io_err("open", path))?;
    f.write_all(value.as_bytes())
        .map_err(|source| CgroupError::Io {
            op: "write",
            path: path.to_path_buf(),
            source: io::Error::new(source.kind(), format!("value {value:?}: {source}")),
        })
}

#[cfg(test)]
mod tests;
