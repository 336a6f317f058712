//! Per-domain usage readers for cgroup v1 and v2.
//!
//! A [`UsageReader`] opens a domain's stat files once and re-reads them with `pread`, which is
//! about three times cheaper than open/read/close per scrape. The parsers are pure functions over
//! file contents so they are unit-tested against fixtures of both cgroup versions.
//!
//! A [`NetReader`] does the same for one network interface's `statistics/` counters in sysfs.

mod net;
pub mod records;
#[cfg(test)]
mod root_tests;

pub use net::{LinkSide, NetReader, NetUsage};

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A snapshot of one domain's resource usage. Fields a kernel does not provide are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Total CPU time in nanoseconds.
    pub cpu_usage_ns: u64,
    /// User CPU time in nanoseconds.
    pub cpu_user_ns: Option<u64>,
    /// System CPU time in nanoseconds.
    pub cpu_system_ns: Option<u64>,
    /// CFS periods that elapsed with a quota in force.
    pub cpu_periods: Option<u64>,
    /// CFS periods in which the group was throttled.
    pub cpu_throttled_periods: Option<u64>,
    /// Time spent throttled, in nanoseconds.
    pub cpu_throttled_ns: Option<u64>,
    /// Memory charged to the group now, in bytes.
    pub memory_usage_bytes: u64,
    /// Highest memory usage recorded, in bytes.
    pub memory_max_usage_bytes: Option<u64>,
    /// Inactive file cache, in bytes (working set = usage - inactive file).
    pub memory_inactive_file_bytes: Option<u64>,
    /// Times the memory limit was hit (v1 failcnt, v2 `max` event).
    pub memory_limit_hits: Option<u64>,
    /// Processes killed by the OOM killer inside the group.
    pub oom_kills: Option<u64>,
    /// Tasks in the group now.
    pub pids_current: u64,
    /// Forks refused because of pids.max.
    pub pids_limit_hits: Option<u64>,
    /// Bytes read from block devices.
    pub io_read_bytes: Option<u64>,
    /// Bytes written to block devices.
    pub io_write_bytes: Option<u64>,
    /// Anonymous memory, in bytes (v1 `total_rss`, v2 `anon`).
    #[serde(default)]
    pub memory_rss_bytes: Option<u64>,
    /// Page cache, in bytes (v1 `total_cache`, v2 `file`).
    #[serde(default)]
    pub memory_cache_bytes: Option<u64>,
    /// Swap used, in bytes (v1 `total_swap`, v2 `memory.swap.current`); `None` without swap
    /// accounting.
    #[serde(default)]
    pub memory_swap_bytes: Option<u64>,
    /// Read operations on block devices.
    #[serde(default)]
    pub io_read_ops: Option<u64>,
    /// Write operations on block devices.
    #[serde(default)]
    pub io_write_ops: Option<u64>,
    /// PSI: time some tasks waited for CPU, in microseconds (cgroup v2 only).
    #[serde(default)]
    pub psi_cpu_some_us: Option<u64>,
    /// PSI: time some tasks stalled on memory, in microseconds (cgroup v2 only).
    #[serde(default)]
    pub psi_memory_some_us: Option<u64>,
    /// PSI: time all tasks stalled on memory, in microseconds (cgroup v2 only).
    #[serde(default)]
    pub psi_memory_full_us: Option<u64>,
    /// PSI: time some tasks stalled on I/O, in microseconds (cgroup v2 only).
    #[serde(default)]
    pub psi_io_some_us: Option<u64>,
    /// PSI: time all tasks stalled on I/O, in microseconds (cgroup v2 only).
    #[serde(default)]
    pub psi_io_full_us: Option<u64>,
    /// Network counters from the domain's point of view; not read by [`UsageReader`], the
    /// caller fills it from a [`NetReader`]. `None` for domains without their own interface.
    #[serde(default)]
    pub network: Option<NetUsage>,
}

impl Usage {
    /// Memory working set as cAdvisor defines it: usage minus inactive file cache.
    pub fn memory_working_set_bytes(&self) -> u64 {
        self.memory_usage_bytes
            .saturating_sub(self.memory_inactive_file_bytes.unwrap_or(0))
    }
}

/// Reading a domain's usage failed.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// The group or interface is gone (removed between listing and reading): callers drop it, it
    /// is not a fault. The path is the file or directory that was found missing.
    #[error("{0} vanished")]
    Vanished(PathBuf),
    /// Any other I/O error, with the file and the operation.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Directories of one domain on a cgroup v1 (or hybrid) host, one per controller.
#[derive(Debug, Clone)]
pub struct V1Dirs {
    /// cpu controller directory (cpu.stat).
    pub cpu: Option<PathBuf>,
    /// cpuacct controller directory (cpuacct.usage, cpuacct.stat).
    pub cpuacct: Option<PathBuf>,
    /// memory controller directory.
    pub memory: Option<PathBuf>,
    /// pids controller directory.
    pub pids: Option<PathBuf>,
    /// blkio controller directory.
    pub blkio: Option<PathBuf>,
}

struct KeptFile {
    path: PathBuf,
    file: File,
}

impl KeptFile {
    fn open(path: PathBuf) -> Result<Self, UsageError> {
        match File::open(&path) {
            Ok(file) => Ok(Self { path, file }),
            Err(e) => Err(map_err("open", path, e)),
        }
    }

    /// Opens a file the kernel may not have (older kernels, missing controller).
    fn open_optional(path: PathBuf) -> Result<Option<Self>, UsageError> {
        match File::open(&path) {
            Ok(file) => Ok(Some(Self { path, file })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(map_err("open", path, e)),
        }
    }

    /// Reads the whole file from offset 0 into `buf`, returning the raw OS error.
    /// Reads the whole file into `buf` (grown as needed, never cleared: zeroing 4 KiB per file
    /// would cost more than the read) and returns its length. A read that does not fill the
    /// buffer is the whole file: cgroupfs and sysfs hand out everything in one read, so most
    /// files take a single pread.
    fn read_raw(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        if buf.len() < 4096 {
            buf.resize(4096, 0);
        }
        let mut filled = 0;
        loop {
            if filled == buf.len() {
                let grown = buf.len() * 2;
                buf.resize(grown, 0);
            }
            match self.file.read_at(&mut buf[filled..], filled as u64) {
                Ok(0) => return Ok(filled),
                Ok(n) => {
                    filled += n;
                    if filled < buf.len() {
                        return Ok(filled);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn text<'a>(&self, buf: &'a [u8]) -> Result<&'a str, UsageError> {
        std::str::from_utf8(buf).map_err(|_| UsageError::Io {
            op: "parse",
            path: self.path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"),
        })
    }

    fn read<'a>(&self, buf: &'a mut Vec<u8>) -> Result<&'a str, UsageError> {
        match self.read_raw(buf) {
            Ok(n) => self.text(&buf[..n]),
            Err(e) => Err(map_err("read", self.path.clone(), e)),
        }
    }

    /// Opens a pressure (PSI) file: absent (kernel without PSI, or hidden by `cgroup.pressure`)
    /// or EOPNOTSUPP (PSI disabled at boot on some kernels) is `None`.
    fn open_psi(path: PathBuf) -> Result<Option<Self>, UsageError> {
        match File::open(&path) {
            Ok(file) => Ok(Some(Self { path, file })),
            Err(e) if psi_unavailable(&e) => Ok(None),
            Err(e) => Err(map_err("open", path, e)),
        }
    }

    /// Reads a pressure file; `None` when the kernel says PSI is unavailable. ENODEV also counts
    /// as unavailable here: writing 0 to `cgroup.pressure` deactivates the file under an open
    /// fd. A removed group is still reported, by the required `cpu.stat` read before this one.
    fn read_psi<'a>(&self, buf: &'a mut Vec<u8>) -> Result<Option<&'a str>, UsageError> {
        match self.read_raw(buf) {
            Ok(n) => self.text(&buf[..n]).map(Some),
            Err(e) if psi_unavailable(&e) || e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(map_err("read", self.path.clone(), e)),
        }
    }
}

fn psi_unavailable(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

fn map_err(op: &'static str, path: PathBuf, e: io::Error) -> UsageError {
    // ENODEV is what a kept-open cgroup file returns once its group was removed.
    if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV) {
        UsageError::Vanished(path)
    } else {
        UsageError::Io {
            op,
            path,
            source: e,
        }
    }
}

enum Files {
    V1 {
        cpuacct_usage: Option<KeptFile>,
        cpuacct_stat: Option<KeptFile>,
        cpu_stat: Option<KeptFile>,
        mem_usage: Option<KeptFile>,
        mem_max_usage: Option<KeptFile>,
        mem_failcnt: Option<KeptFile>,
        mem_stat: Option<KeptFile>,
        mem_oom_control: Option<KeptFile>,
        pids_current: Option<KeptFile>,
        pids_events: Option<KeptFile>,
        blkio_bytes: Option<KeptFile>,
        blkio_ops: Option<KeptFile>,
    },
    V2 {
        cpu_stat: KeptFile,
        mem_current: Option<KeptFile>,
        mem_peak: Option<KeptFile>,
        mem_events: Option<KeptFile>,
        mem_stat: Option<KeptFile>,
        mem_swap_current: Option<KeptFile>,
        pids_current: Option<KeptFile>,
        pids_events: Option<KeptFile>,
        io_stat: Option<KeptFile>,
        cpu_pressure: Option<KeptFile>,
        mem_pressure: Option<KeptFile>,
        io_pressure: Option<KeptFile>,
    },
}

/// Reads one domain's usage from files opened once.
pub struct UsageReader {
    files: Files,
    buf: Vec<u8>,
}

impl std::fmt::Debug for UsageReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.files {
            Files::V1 { .. } => "v1",
            Files::V2 { .. } => "v2",
        };
        f.debug_struct("UsageReader").field("kind", &kind).finish()
    }
}

/// Opens `dir/name` if the kernel has it. A missing file in an existing directory is `None`; a
/// missing directory means the group is gone, which is [`UsageError::Vanished`] (without this a
/// v1 group removed before opening would read as all zeros).
fn opt(dir: &Option<PathBuf>, name: &str) -> Result<Option<KeptFile>, UsageError> {
    let Some(d) = dir else {
        return Ok(None);
    };
    match KeptFile::open_optional(d.join(name))? {
        Some(f) => Ok(Some(f)),
        None => match std::fs::metadata(d) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(UsageError::Vanished(d.clone())),
            _ => Ok(None),
        },
    }
}

impl UsageReader {
    /// Opens the stat files of a cgroup v1 domain.
    pub fn open_v1(dirs: &V1Dirs) -> Result<Self, UsageError> {
        Ok(Self {
            files: Files::V1 {
                cpuacct_usage: opt(&dirs.cpuacct, "cpuacct.usage")?,
                cpuacct_stat: opt(&dirs.cpuacct, "cpuacct.stat")?,
                cpu_stat: opt(&dirs.cpu, "cpu.stat")?,
                mem_usage: opt(&dirs.memory, "memory.usage_in_bytes")?,
                mem_max_usage: opt(&dirs.memory, "memory.max_usage_in_bytes")?,
                mem_failcnt: opt(&dirs.memory, "memory.failcnt")?,
                mem_stat: opt(&dirs.memory, "memory.stat")?,
                mem_oom_control: opt(&dirs.memory, "memory.oom_control")?,
                pids_current: opt(&dirs.pids, "pids.current")?,
                pids_events: opt(&dirs.pids, "pids.events")?,
                blkio_bytes: opt(&dirs.blkio, "blkio.throttle.io_service_bytes_recursive")?,
                blkio_ops: opt(&dirs.blkio, "blkio.throttle.io_serviced_recursive")?,
            },
            buf: Vec::with_capacity(4096),
        })
    }

    /// Opens the stat files of a cgroup v2 domain.
    pub fn open_v2(dir: &Path) -> Result<Self, UsageError> {
        let d = Some(dir.to_path_buf());
        Ok(Self {
            files: Files::V2 {
                cpu_stat: KeptFile::open(dir.join("cpu.stat"))?,
                mem_current: opt(&d, "memory.current")?,
                mem_peak: opt(&d, "memory.peak")?,
                mem_events: opt(&d, "memory.events")?,
                mem_stat: opt(&d, "memory.stat")?,
                mem_swap_current: opt(&d, "memory.swap.current")?,
                pids_current: opt(&d, "pids.current")?,
                pids_events: opt(&d, "pids.events")?,
                io_stat: opt(&d, "io.stat")?,
                cpu_pressure: KeptFile::open_psi(dir.join("cpu.pressure"))?,
                mem_pressure: KeptFile::open_psi(dir.join("memory.pressure"))?,
                io_pressure: KeptFile::open_psi(dir.join("io.pressure"))?,
            },
            buf: Vec::with_capacity(4096),
        })
    }

    /// Reads only the counters limit events are derived from (CFS periods and throttling,
    /// memory limit hits, OOM kills, pids limit hits), skipping memory.stat and the I/O files:
    /// what the Domain Monitor polls. Other fields stay at their defaults.
    pub fn read_counters(&mut self) -> Result<Usage, UsageError> {
        let buf = &mut self.buf;
        let mut u = Usage::default();
        match &self.files {
            Files::V1 {
                cpu_stat,
                mem_failcnt,
                mem_oom_control,
                pids_events,
                ..
            } => {
                if let Some(f) = cpu_stat {
                    let s = f.read(buf)?;
                    u.cpu_periods = flat_key(s, "nr_periods");
                    u.cpu_throttled_periods = flat_key(s, "nr_throttled");
                }
                if let Some(f) = mem_failcnt {
                    u.memory_limit_hits = parse_single(f.read(buf)?);
                }
                if let Some(f) = mem_oom_control {
                    u.oom_kills = flat_key(f.read(buf)?, "oom_kill");
                }
                if let Some(f) = pids_events {
                    u.pids_limit_hits = flat_key(f.read(buf)?, "max");
                }
            }
            Files::V2 {
                cpu_stat,
                mem_events,
                pids_events,
                ..
            } => {
                let s = cpu_stat.read(buf)?;
                u.cpu_periods = flat_key(s, "nr_periods");
                u.cpu_throttled_periods = flat_key(s, "nr_throttled");
                if let Some(f) = mem_events {
                    let s = f.read(buf)?;
                    u.memory_limit_hits = flat_key(s, "max");
                    u.oom_kills = flat_key(s, "oom_kill");
                }
                if let Some(f) = pids_events {
                    u.pids_limit_hits = flat_key(f.read(buf)?, "max");
                }
            }
        }
        Ok(u)
    }

    /// Reads a fresh snapshot.
    pub fn read(&mut self) -> Result<Usage, UsageError> {
        let buf = &mut self.buf;
        let mut u = Usage::default();
        match &self.files {
            Files::V1 {
                cpuacct_usage,
                cpuacct_stat,
                cpu_stat,
                mem_usage,
                mem_max_usage,
                mem_failcnt,
                mem_stat,
                mem_oom_control,
                pids_current,
                pids_events,
                blkio_bytes,
                blkio_ops,
            } => {
                if let Some(f) = cpuacct_usage {
                    u.cpu_usage_ns = parse_single(f.read(buf)?).unwrap_or(0);
                }
                if let Some(f) = cpuacct_stat {
                    let s = f.read(buf)?;
                    let tick_ns = 1_000_000_000 / clock_ticks();
                    u.cpu_user_ns = flat_key(s, "user").map(|t| t * tick_ns);
                    u.cpu_system_ns = flat_key(s, "system").map(|t| t * tick_ns);
                }
                if let Some(f) = cpu_stat {
                    let s = f.read(buf)?;
                    u.cpu_periods = flat_key(s, "nr_periods");
                    u.cpu_throttled_periods = flat_key(s, "nr_throttled");
                    u.cpu_throttled_ns = flat_key(s, "throttled_time");
                }
                if let Some(f) = mem_usage {
                    u.memory_usage_bytes = parse_single(f.read(buf)?).unwrap_or(0);
                }
                if let Some(f) = mem_max_usage {
                    u.memory_max_usage_bytes = parse_single(f.read(buf)?);
                }
                if let Some(f) = mem_failcnt {
                    u.memory_limit_hits = parse_single(f.read(buf)?);
                }
                if let Some(f) = mem_stat {
                    let s = f.read(buf)?;
                    // total_* include descendants; plain keys are this group alone and count
                    // only where no total_ key is given. One pass: this file is the longest.
                    let (mut own, mut total) = ([None; 4], [None; 4]);
                    for line in s.lines() {
                        let Some((k, v)) = line.split_once(' ') else {
                            continue;
                        };
                        let (slot, k) = match k.strip_prefix("total_") {
                            Some(k) => (&mut total, k),
                            None => (&mut own, k),
                        };
                        let i = match k {
                            "inactive_file" => 0,
                            "rss" => 1,
                            "cache" => 2,
                            "swap" => 3,
                            _ => continue,
                        };
                        slot[i] = v.trim().parse().ok();
                    }
                    let pick = |i: usize| total[i].or(own[i]);
                    u.memory_inactive_file_bytes = pick(0);
                    u.memory_rss_bytes = pick(1);
                    u.memory_cache_bytes = pick(2);
                    u.memory_swap_bytes = pick(3);
                }
                if let Some(f) = mem_oom_control {
                    u.oom_kills = flat_key(f.read(buf)?, "oom_kill");
                }
                if let Some(f) = pids_current {
                    u.pids_current = parse_single(f.read(buf)?).unwrap_or(0);
                }
                if let Some(f) = pids_events {
                    u.pids_limit_hits = flat_key(f.read(buf)?, "max");
                }
                if let Some(f) = blkio_bytes {
                    let (r, w) = parse_blkio_v1(f.read(buf)?);
                    u.io_read_bytes = Some(r);
                    u.io_write_bytes = Some(w);
                }
                if let Some(f) = blkio_ops {
                    let (r, w) = parse_blkio_v1(f.read(buf)?);
                    u.io_read_ops = Some(r);
                    u.io_write_ops = Some(w);
                }
            }
            Files::V2 {
                cpu_stat,
                mem_current,
                mem_peak,
                mem_events,
                mem_stat,
                mem_swap_current,
                pids_current,
                pids_events,
                io_stat,
                cpu_pressure,
                mem_pressure,
                io_pressure,
            } => {
                let s = cpu_stat.read(buf)?;
                u.cpu_usage_ns = flat_key(s, "usage_usec").unwrap_or(0) * 1000;
                u.cpu_user_ns = flat_key(s, "user_usec").map(|v| v * 1000);
                u.cpu_system_ns = flat_key(s, "system_usec").map(|v| v * 1000);
                u.cpu_periods = flat_key(s, "nr_periods");
                u.cpu_throttled_periods = flat_key(s, "nr_throttled");
                u.cpu_throttled_ns = flat_key(s, "throttled_usec").map(|v| v * 1000);
                if let Some(f) = mem_current {
                    u.memory_usage_bytes = parse_single(f.read(buf)?).unwrap_or(0);
                }
                if let Some(f) = mem_peak {
                    u.memory_max_usage_bytes = parse_single(f.read(buf)?);
                }
                if let Some(f) = mem_events {
                    let s = f.read(buf)?;
                    u.memory_limit_hits = flat_key(s, "max");
                    u.oom_kills = flat_key(s, "oom_kill");
                }
                if let Some(f) = mem_stat {
                    let s = f.read(buf)?;
                    u.memory_inactive_file_bytes = flat_key(s, "inactive_file");
                    u.memory_rss_bytes = flat_key(s, "anon");
                    u.memory_cache_bytes = flat_key(s, "file");
                }
                if let Some(f) = mem_swap_current {
                    u.memory_swap_bytes = parse_single(f.read(buf)?);
                }
                if let Some(f) = pids_current {
                    u.pids_current = parse_single(f.read(buf)?).unwrap_or(0);
                }
                if let Some(f) = pids_events {
                    u.pids_limit_hits = flat_key(f.read(buf)?, "max");
                }
                if let Some(f) = io_stat {
                    let s = f.read(buf)?;
                    let (r, w) = parse_io_stat_v2(s);
                    u.io_read_bytes = Some(r);
                    u.io_write_bytes = Some(w);
                    let (r, w) = parse_io_stat_v2_ops(s);
                    u.io_read_ops = Some(r);
                    u.io_write_ops = Some(w);
                }
                if let Some(s) = read_psi(cpu_pressure, buf)? {
                    u.psi_cpu_some_us = psi_total(s, "some");
                }
                if let Some(s) = read_psi(mem_pressure, buf)? {
                    u.psi_memory_some_us = psi_total(s, "some");
                    u.psi_memory_full_us = psi_total(s, "full");
                }
                if let Some(s) = read_psi(io_pressure, buf)? {
                    u.psi_io_some_us = psi_total(s, "some");
                    u.psi_io_full_us = psi_total(s, "full");
                }
            }
        }
        Ok(u)
    }
}

fn read_psi<'a>(f: &Option<KeptFile>, buf: &'a mut Vec<u8>) -> Result<Option<&'a str>, UsageError> {
    match f {
        Some(f) => f.read_psi(buf),
        None => Ok(None),
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Parses a file holding one integer (`max` reads as `None`).
pub fn parse_single(s: &str) -> Option<u64> {
    s.trim().parse().ok()
}

/// Looks up `key` in a flat-keyed file (`key value` per line), as cpu.stat and memory.stat are.
pub fn flat_key(s: &str, key: &str) -> Option<u64> {
    s.lines().find_map(|line| {
        let mut it = line.split_ascii_whitespace();
        (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
    })
}

/// Sums the `Read` and `Write` lines over devices in v1 `blkio.throttle.io_service_bytes*`
/// (bytes) or `blkio.throttle.io_serviced*` (operations), which share one format.
pub fn parse_blkio_v1(s: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for line in s.lines() {
        let mut it = line.split_ascii_whitespace();
        let (Some(_dev), Some(op), Some(v)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let v: u64 = v.parse().unwrap_or(0);
        match op {
            "Read" => r = r.saturating_add(v),
            "Write" => w = w.saturating_add(v),
            _ => {}
        }
    }
    (r, w)
}

/// Sums `rbytes=` and `wbytes=` over devices in v2 `io.stat`.
pub fn parse_io_stat_v2(s: &str) -> (u64, u64) {
    sum_io_stat_v2(s, "rbytes=", "wbytes=")
}

/// Sums `rios=` and `wios=` (read and write operations) over devices in v2 `io.stat`.
pub fn parse_io_stat_v2_ops(s: &str) -> (u64, u64) {
    sum_io_stat_v2(s, "rios=", "wios=")
}

fn sum_io_stat_v2(s: &str, read: &str, write: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for field in s.split_ascii_whitespace() {
        if let Some(v) = field.strip_prefix(read) {
            r = r.saturating_add(v.parse().unwrap_or(0));
        } else if let Some(v) = field.strip_prefix(write) {
            w = w.saturating_add(v.parse().unwrap_or(0));
        }
    }
    (r, w)
}

/// The `total=` value (microseconds) of the `some` or `full` line of a PSI pressure file
/// (`some avg10=0.00 avg60=0.00 avg300=0.00 total=12345`).
pub fn psi_total(s: &str, kind: &str) -> Option<u64> {
    s.lines().find_map(|line| {
        let mut it = line.split_ascii_whitespace();
        if it.next() != Some(kind) {
            return None;
        }
        it.find_map(|f| f.strip_prefix("total="))?.parse().ok()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::fs;

    use super::*;

    fn write(dir: &Path, name: &str, content: &str) {
        fs::write(dir.join(name), content).unwrap();
    }

    #[test]
    fn flat_keys_and_singles() {
        let s = "nr_periods 10\nnr_throttled 4\nthrottled_time 123456\n";
        assert_eq!(flat_key(s, "nr_throttled"), Some(4));
        assert_eq!(flat_key(s, "nr"), None);
        assert_eq!(parse_single("42\n"), Some(42));
        assert_eq!(parse_single("max\n"), None);
    }

    /// The monitor's cheap read agrees with the full read on the counters it reads, and reads
    /// nothing else.
    fn assert_counters_agree(r: &mut UsageReader, u: &Usage) {
        let c = r.read_counters().unwrap();
        let counters = |x: &Usage| {
            (
                x.cpu_periods,
                x.cpu_throttled_periods,
                x.memory_limit_hits,
                x.oom_kills,
                x.pids_limit_hits,
            )
        };
        assert_eq!(counters(&c), counters(u));
        assert_eq!(c.memory_usage_bytes, 0);
    }

    #[test]
    fn v1_fixture() {
        let t = tempfile::tempdir().unwrap();
        for c in ["cpu", "cpuacct", "memory", "pids", "blkio"] {
            fs::create_dir(t.path().join(c)).unwrap();
        }
        let p = |c: &str| Some(t.path().join(c));
        write(&t.path().join("cpuacct"), "cpuacct.usage", "5000000000\n");
        write(
            &t.path().join("cpuacct"),
            "cpuacct.stat",
            "user 300\nsystem 100\n",
        );
        write(
            &t.path().join("cpu"),
            "cpu.stat",
            "nr_periods 20\nnr_throttled 5\nthrottled_time 777\n",
        );
        let m = t.path().join("memory");
        write(&m, "memory.usage_in_bytes", "104857600\n");
        write(&m, "memory.max_usage_in_bytes", "209715200\n");
        write(&m, "memory.failcnt", "7\n");
        write(
            &m,
            "memory.stat",
            "cache 10\nrss 20\nswap 30\ninactive_file 99\ntotal_cache 1000\ntotal_rss 2000\n\
             total_swap 3000\ntotal_inactive_file 4857600\n",
        );
        write(
            &m,
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        write(&t.path().join("pids"), "pids.current", "12\n");
        write(&t.path().join("pids"), "pids.events", "max 3\n");
        write(
            &t.path().join("blkio"),
            "blkio.throttle.io_service_bytes_recursive",
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:16 Read 4096\nTotal 16384\n",
        );
        write(
            &t.path().join("blkio"),
            "blkio.throttle.io_serviced_recursive",
            "8:0 Read 3\n8:0 Write 5\n8:0 Sync 8\n8:0 Async 0\n8:0 Discard 0\n8:0 Total 8\n\
             8:16 Read 1\n8:16 Write 0\nTotal 9\n",
        );
        let dirs = V1Dirs {
            cpu: p("cpu"),
            cpuacct: p("cpuacct"),
            memory: p("memory"),
            pids: p("pids"),
            blkio: p("blkio"),
        };
        let mut r = UsageReader::open_v1(&dirs).unwrap();
        let u = r.read().unwrap();
        assert_counters_agree(&mut r, &u);
        assert_eq!(u.cpu_usage_ns, 5_000_000_000);
        let tick = 1_000_000_000 / clock_ticks();
        assert_eq!(u.cpu_user_ns, Some(300 * tick));
        assert_eq!(u.cpu_throttled_periods, Some(5));
        assert_eq!(u.cpu_throttled_ns, Some(777));
        assert_eq!(u.memory_usage_bytes, 104_857_600);
        assert_eq!(u.memory_working_set_bytes(), 100_000_000);
        assert_eq!(u.memory_max_usage_bytes, Some(209_715_200));
        assert_eq!(u.memory_limit_hits, Some(7));
        assert_eq!(u.oom_kills, Some(2));
        assert_eq!(u.pids_current, 12);
        assert_eq!(u.pids_limit_hits, Some(3));
        assert_eq!(u.io_read_bytes, Some(8192));
        assert_eq!(u.io_write_bytes, Some(8192));
        assert_eq!(u.memory_rss_bytes, Some(2000));
        assert_eq!(u.memory_cache_bytes, Some(1000));
        assert_eq!(u.memory_swap_bytes, Some(3000));
        assert_eq!(u.io_read_ops, Some(4));
        assert_eq!(u.io_write_ops, Some(5));
        assert_eq!(u.cpu_periods, Some(20));
        assert_eq!(u.cpu_system_ns, Some(100 * tick));
        // No PSI on v1, and the network is the caller's.
        assert_eq!(
            (
                u.psi_cpu_some_us,
                u.psi_memory_some_us,
                u.psi_memory_full_us,
                u.psi_io_some_us,
                u.psi_io_full_us
            ),
            (None, None, None, None, None)
        );
        assert_eq!(u.network, None);
        // Without total_* keys (no hierarchy) the group's own values are used.
        write(
            &m,
            "memory.stat",
            "cache 10\nrss 20\nswap 30\ninactive_file 99\n",
        );
        let u = r.read().unwrap();
        assert_eq!(
            (
                u.memory_rss_bytes,
                u.memory_cache_bytes,
                u.memory_swap_bytes
            ),
            (Some(20), Some(10), Some(30))
        );
        assert_eq!(u.memory_inactive_file_bytes, Some(99));
        // Without swap accounting there is no swap key.
        write(&m, "memory.stat", "cache 10\nrss 20\n");
        assert_eq!(r.read().unwrap().memory_swap_bytes, None);
        // Kept-open files see new contents on the next read.
        write(&t.path().join("pids"), "pids.current", "13\n");
        assert_eq!(r.read().unwrap().pids_current, 13);
    }

    #[test]
    fn v2_fixture() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        write(
            d,
            "cpu.stat",
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 50\nnr_throttled 25\nthrottled_usec 1000\n",
        );
        write(d, "memory.current", "65536\n");
        write(
            d,
            "memory.events",
            "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n",
        );
        write(
            d,
            "memory.stat",
            "anon 4096\nfile 8192\nkernel 100\ninactive_file 4096\nanon_thp 0\nfile_mapped 5\n",
        );
        write(d, "memory.swap.current", "12288\n");
        write(d, "pids.current", "3\n");
        write(d, "pids.events", "max 0\n");
        write(
            d,
            "io.stat",
            "8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n8:16 rbytes=1 wbytes=2 rios=1 wios=1\n",
        );
        write(
            d,
            "cpu.pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=111\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        );
        write(
            d,
            "memory.pressure",
            "some avg10=1.50 avg60=0.20 avg300=0.05 total=222\nfull avg10=0.50 avg60=0.10 avg300=0.01 total=333\n",
        );
        write(
            d,
            "io.pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=444\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=555\n",
        );
        let mut r = UsageReader::open_v2(d).unwrap();
        let u = r.read().unwrap();
        assert_counters_agree(&mut r, &u);
        assert_eq!(u.cpu_usage_ns, 2_500_000_000);
        assert_eq!(u.cpu_user_ns, Some(2_000_000_000));
        assert_eq!(u.cpu_periods, Some(50));
        assert_eq!(u.cpu_throttled_periods, Some(25));
        assert_eq!(u.memory_rss_bytes, Some(4096));
        assert_eq!(u.memory_cache_bytes, Some(8192));
        assert_eq!(u.memory_swap_bytes, Some(12288));
        assert_eq!(u.pids_limit_hits, Some(0));
        assert_eq!(u.io_read_ops, Some(2));
        assert_eq!(u.io_write_ops, Some(3));
        assert_eq!(u.psi_cpu_some_us, Some(111));
        assert_eq!(u.psi_memory_some_us, Some(222));
        assert_eq!(u.psi_memory_full_us, Some(333));
        assert_eq!(u.psi_io_some_us, Some(444));
        assert_eq!(u.psi_io_full_us, Some(555));
        assert_eq!(u.network, None);
        assert_eq!(u.cpu_system_ns, Some(500_000_000));
        assert_eq!(u.cpu_throttled_ns, Some(1_000_000));
        assert_eq!(u.memory_usage_bytes, 65536);
        assert_eq!(
            u.memory_max_usage_bytes, None,
            "no memory.peak on this kernel"
        );
        assert_eq!(u.memory_working_set_bytes(), 61440);
        assert_eq!(u.memory_limit_hits, Some(9));
        assert_eq!(u.oom_kills, Some(1));
        assert_eq!(u.pids_current, 3);
        assert_eq!(u.io_read_bytes, Some(101));
        assert_eq!(u.io_write_bytes, Some(202));
    }

    #[test]
    fn v2_without_psi_swap_or_memory_peak() {
        // A kernel without PSI (or without swap) has no such files: those fields are None.
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        write(d, "cpu.stat", "usage_usec 10\nuser_usec 6\nsystem_usec 4\n");
        write(d, "memory.current", "100\n");
        write(d, "memory.peak", "200\n");
        write(d, "memory.stat", "anon 1\nfile 2\n");
        let mut r = UsageReader::open_v2(d).unwrap();
        let u = r.read().unwrap();
        assert_eq!(u.cpu_usage_ns, 10_000);
        assert_eq!(
            u.cpu_periods, None,
            "cpu controller not enabled: no CFS keys"
        );
        assert_eq!(u.memory_max_usage_bytes, Some(200));
        assert_eq!(u.memory_swap_bytes, None);
        assert_eq!((u.io_read_ops, u.io_write_ops), (None, None));
        assert_eq!(
            (
                u.psi_cpu_some_us,
                u.psi_memory_some_us,
                u.psi_memory_full_us,
                u.psi_io_some_us,
                u.psi_io_full_us
            ),
            (None, None, None, None, None)
        );
        // A pre-5.13 cpu.pressure has only a `some` line.
        write(
            d,
            "cpu.pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
        );
        let u = UsageReader::open_v2(d).unwrap().read().unwrap();
        assert_eq!(u.psi_cpu_some_us, Some(7));
        assert_eq!(u.psi_memory_some_us, None);
    }

    #[test]
    fn psi_and_io_parsers() {
        let s = "some avg10=0.00 avg60=0.00 avg300=0.00 total=12345\n\
                 full avg10=0.00 avg60=0.00 avg300=0.00 total=678\n";
        assert_eq!(psi_total(s, "some"), Some(12345));
        assert_eq!(psi_total(s, "full"), Some(678));
        assert_eq!(psi_total("some avg10=0.00\n", "some"), None);
        assert_eq!(psi_total("", "some"), None);
        assert_eq!(
            parse_io_stat_v2_ops("8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=9\n"),
            (3, 4)
        );
        assert_eq!(parse_io_stat_v2_ops(""), (0, 0));
    }

    #[test]
    fn old_json_still_parses() {
        let old = r#"{"cpu_usage_ns":1,"cpu_user_ns":null,"cpu_system_ns":null,"cpu_periods":null,
            "cpu_throttled_periods":null,"cpu_throttled_ns":null,"memory_usage_bytes":2,
            "memory_max_usage_bytes":null,"memory_inactive_file_bytes":null,
            "memory_limit_hits":null,"oom_kills":null,"pids_current":3,"pids_limit_hits":null,
            "io_read_bytes":null,"io_write_bytes":null}"#;
        let u: Usage = serde_json::from_str(old).unwrap();
        assert_eq!(u.pids_current, 3);
        assert_eq!(u.memory_rss_bytes, None);
        assert_eq!(u.network, None);
        let mut u2 = u.clone();
        u2.network = Some(NetUsage {
            receive_bytes: 5,
            ..NetUsage::default()
        });
        let back: Usage = serde_json::from_str(&serde_json::to_string(&u2).unwrap()).unwrap();
        assert_eq!(back, u2);
    }

    #[test]
    fn v1_group_removed_before_open_is_vanished() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("memory")).unwrap();
        let dirs = V1Dirs {
            cpu: None,
            cpuacct: None,
            memory: Some(t.path().join("memory")),
            pids: Some(t.path().join("pids/gone")),
            blkio: None,
        };
        match UsageReader::open_v1(&dirs) {
            Err(UsageError::Vanished(p)) => assert!(p.ends_with("pids/gone")),
            other => panic!("expected Vanished, got {other:?}"),
        }
    }

    #[test]
    fn vanished_group_is_not_a_fault() {
        let t = tempfile::tempdir().unwrap();
        match UsageReader::open_v2(&t.path().join("gone")) {
            Err(UsageError::Vanished(p)) => assert!(p.ends_with("gone/cpu.stat")),
            other => panic!("expected Vanished, got {other:?}"),
        }
    }
}
