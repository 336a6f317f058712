//! Freezing and thawing with verification: v1 polls `freezer.state` until FROZEN, v2 waits on
//! `cgroup.events` for `frozen 1`. Both are bounded; on timeout the group is thawed back and the
//! processes that did not stop are reported.

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};

use super::{io_err, read_string, write_file, CgroupError, Cgroups, Controller, Version};

/// The freezer's view of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FreezerState {
    /// Running.
    Thawed,
    /// Freezing requested, not complete.
    Freezing,
    /// Every task stopped.
    Frozen,
}

/// A process that did not stop when its domain was frozen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StuckProcess {
    /// Its pid.
    pub pid: i32,
    /// Its command name.
    pub comm: String,
    /// Its scheduler state letter from /proc/PID/stat (D = uninterruptible sleep).
    pub state: String,
}

impl Cgroups {
    /// The freezer state of a domain.
    pub fn freezer_state(&self, name: &str) -> Result<FreezerState, CgroupError> {
        match self.version {
            Version::V1 => {
                let f = self.freezer_file(name)?;
                Ok(parse_v1_state(&read_string(&f)?))
            }
            Version::V2 => {
                let d = self.base.join(name);
                let frozen = events_frozen(&read_string(&d.join("cgroup.events"))?);
                let requested = read_string(&d.join("cgroup.freeze"))?.trim() == "1";
                Ok(match (requested, frozen) {
                    (_, true) => FreezerState::Frozen,
                    (true, false) => FreezerState::Freezing,
                    (false, false) => FreezerState::Thawed,
                })
            }
        }
    }

    fn freezer_file(&self, name: &str) -> Result<std::path::PathBuf, CgroupError> {
        let d = self.dir(Controller::Freezer, name).ok_or_else(|| {
            CgroupError::Unsupported("the v1 freezer controller is not mounted".into())
        })?;
        if !d.is_dir() {
            return Err(CgroupError::NotFound(name.to_string()));
        }
        Ok(d.join("freezer.state"))
    }

    /// Freezes a domain and waits until every task is stopped, at most `timeout`.
    pub fn freeze(&self, name: &str, timeout: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + timeout;
        let done = match self.version {
            Version::V1 => {
                let f = self.freezer_file(name)?;
                write_file(&f, "FROZEN")?;
                let file = File::open(&f).map_err(io_err("open", &f))?;
                let mut buf = [0u8; 32];
                let mut pause = Duration::from_micros(20);
                loop {
                    let n = file.read_at(&mut buf, 0).map_err(io_err("read", &f))?;
                    let state = parse_v1_state(std::str::from_utf8(&buf[..n]).unwrap_or(""));
                    if state == FreezerState::Frozen {
                        break true;
                    }
                    if Instant::now() >= deadline {
                        break false;
                    }
                    // v1 retries freezing the stragglers on each read of FREEZING; back off
                    // from a short spin so a quick freeze is seen at once.
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
            }
            Version::V2 => {
                let d = self.base.join(name);
                if !d.is_dir() {
                    return Err(CgroupError::NotFound(name.to_string()));
                }
                write_file(&d.join("cgroup.freeze"), "1")?;
                wait_events_frozen(&d.join("cgroup.events"), deadline)?
            }
        };
        if done {
            return Ok(());
        }
        let stuck = self.stuck_processes(name);
        self.thaw(name)?;
        Err(CgroupError::FreezeTimeout {
            name: name.to_string(),
            timeout,
            stuck,
        })
    }

    /// Thaws a domain. Thawing a thawed domain is a no-op.
    pub fn thaw(&self, name: &str) -> Result<(), CgroupError> {
        match self.version {
            Version::V1 => write_file(&self.freezer_file(name)?, "THAWED"),
            Version::V2 => {
                let d = self.base.join(name);
                if !d.is_dir() {
                    return Err(CgroupError::NotFound(name.to_string()));
                }
                write_file(&d.join("cgroup.freeze"), "0")
            }
        }
    }

    /// Members that are not stopped by the freezer (running, or in uninterruptible sleep).
    fn stuck_processes(&self, name: &str) -> Vec<StuckProcess> {
        let pids = self.members(name).unwrap_or_default();
        pids.into_iter()
            .filter_map(|pid| {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let (comm, state) = parse_proc_stat(&stat)?;
                let wchan = fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
                let in_freezer = wchan.contains("refrigerator") || wchan.contains("freezer");
                (!in_freezer).then_some(StuckProcess { pid, comm, state })
            })
            .collect()
    }
}

fn parse_v1_state(s: &str) -> FreezerState {
    match s.trim() {
        "FROZEN" => FreezerState::Frozen,
        "FREEZING" => FreezerState::Freezing,
        _ => FreezerState::Thawed,
    }
}

fn events_frozen(s: &str) -> bool {
    dms_accounting::flat_key(s, "frozen") == Some(1)
}

/// Splits `/proc/PID/stat` into the command name and the state letter (comm may hold spaces).
fn parse_proc_stat(stat: &str) -> Option<(String, String)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let state = stat
        .get(close + 1..)?
        .split_whitespace()
        .next()?
        .to_string();
    Some((comm, state))
}

/// Waits on a v2 `cgroup.events` file (kernfs signals changes as POLLPRI) for `frozen 1`.
fn wait_events_frozen(events: &Path, deadline: Instant) -> Result<bool, CgroupError> {
    let file = File::open(events).map_err(io_err("open", events))?;
    let mut buf = [0u8; 128];
    loop {
        let n = file.read_at(&mut buf, 0).map_err(io_err("read", events))?;
        if events_frozen(std::str::from_utf8(&buf[..n]).unwrap_or("")) {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let ms = u16::try_from(left.as_millis().clamp(1, 1000)).unwrap_or(1000);
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLPRI)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                return Err(CgroupError::Io {
                    op: "poll",
                    path: events.to_path_buf(),
                    source: e.into(),
                })
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_with_spaces_in_comm() {
        let (comm, state) =
            parse_proc_stat("123 (my (odd) prog) D 1 123 123 0 -1 4194560").unwrap();
        assert_eq!(comm, "my (odd) prog");
        assert_eq!(state, "D");
    }

    #[test]
    fn states() {
        assert_eq!(parse_v1_state("FROZEN\n"), FreezerState::Frozen);
        assert_eq!(parse_v1_state("FREEZING\n"), FreezerState::Freezing);
        assert_eq!(parse_v1_state("THAWED\n"), FreezerState::Thawed);
        assert!(events_frozen("populated 1\nfrozen 1\n"));
        assert!(!events_frozen("populated 1\nfrozen 0\n"));
    }
}
