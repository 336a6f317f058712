//! Translating domain limits into cgroup file writes, for v1 and v2.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{CgroupError, Cgroups, Controller, Version};

/// CFS period used for CPU hard limits (100 ms, the kernel default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Block I/O throttle for one device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoLimit {
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Read bytes per second.
    pub read_bps: Option<u64>,
    /// Write bytes per second.
    pub write_bps: Option<u64>,
    /// Read operations per second.
    pub read_iops: Option<u64>,
    /// Write operations per second.
    pub write_iops: Option<u64>,
}

/// The mechanism's view of a domain's quotas. `None` means unlimited / kernel default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU hard limit in millicores (1000 = one core).
    pub cpu_millicores: Option<u32>,
    /// CPU weight, 1..=10000, 100 is the default share.
    pub cpu_weight: Option<u32>,
    /// Memory hard limit in bytes.
    pub memory_max: Option<u64>,
    /// Memory soft limit in bytes (v1 soft_limit_in_bytes, v2 memory.low as runc maps it).
    pub memory_soft: Option<u64>,
    /// Swap allowed on top of memory, in bytes.
    pub swap_max: Option<u64>,
    /// Maximum number of tasks.
    pub pids_max: Option<u64>,
    /// Block I/O throttles.
    pub io: Vec<IoLimit>,
    /// CPUs the domain may run on, kernel list syntax.
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the domain may use.
    pub cpuset_mems: Option<String>,
}

fn or_max(v: Option<u64>) -> String {
    v.map_or_else(|| "max".to_string(), |v| v.to_string())
}

/// The writes that put `limits` on a domain's group, in an order the kernel accepts.
pub(super) fn plan(
    cg: &Cgroups,
    name: &str,
    limits: &Limits,
) -> Result<Vec<(PathBuf, String)>, CgroupError> {
    let mut w = Vec::new();
    let need = |c: Controller, what: &str| {
        cg.dir(c, name).ok_or_else(|| {
            CgroupError::Unsupported(format!(
                "{what} needs the cgroup v1 {:?} controller, which is not mounted",
                c.name()
            ))
        })
    };
    match cg.version {
        Version::V1 => {
            let cpu = need(Controller::Cpu, "a CPU limit")?;
            let quota = limits
                .cpu_millicores
                .map_or(-1, |m| (u64::from(m) * CPU_PERIOD_US / 1000) as i64);
            w.push((cpu.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string()));
            w.push((cpu.join("cpu.cfs_quota_us"), quota.to_string()));
            // v2 weight 100 is v1 shares 1024.
            let shares = limits
                .cpu_weight
                .map_or(1024, |wt| (u64::from(wt) * 1024 / 100).max(2));
            w.push((cpu.join("cpu.shares"), shares.to_string()));

            let mem = need(Controller::Memory, "a memory limit")?;
            let limit = limits.memory_max.map_or(-1, |v| v as i64);
            w.push((mem.join("memory.limit_in_bytes"), limit.to_string()));
            let soft = limits.memory_soft.map_or(-1, |v| v as i64);
            w.push((mem.join("memory.soft_limit_in_bytes"), soft.to_string()));
            if let Some(swap) = limits.swap_max {
                let memsw = mem.join("memory.memsw.limit_in_bytes");
                let Some(limit) = limits.memory_max else {
                    return Err(CgroupError::Unsupported(
                        "a swap limit on cgroup v1 needs a memory limit too (memsw = memory + swap)"
                            .into(),
                    ));
                };
                if !memsw.exists() {
                    return Err(CgroupError::Unsupported(
                        "swap limits need swap accounting (boot with swapaccount=1): memory.memsw.limit_in_bytes is missing".into(),
                    ));
                }
                w.push((memsw, (limit + swap).to_string()));
            }
            let pids = need(Controller::Pids, "a pids limit")?;
            w.push((pids.join("pids.max"), or_max(limits.pids_max)));
            if !limits.io.is_empty() {
                let blkio = need(Controller::Blkio, "an I/O limit")?;
                for io in &limits.io {
                    let dev = format!("{}:{}", io.major, io.minor);
                    for (file, v) in [
                        ("blkio.throttle.read_bps_device", io.read_bps),
                        ("blkio.throttle.write_bps_device", io.write_bps),
                        ("blkio.throttle.read_iops_device", io.read_iops),
                        ("blkio.throttle.write_iops_device", io.write_iops),
                    ] {
                        if let Some(v) = v {
                            w.push((blkio.join(file), format!("{dev} {v}")));
                        }
                    }
                }
            }
            if let Some(cpus) = &limits.cpuset_cpus {
                let cs = need(Controller::Cpuset, "a cpuset")?;
                w.push((cs.join("cpuset.cpus"), cpus.clone()));
            }
            if let Some(mems) = &limits.cpuset_mems {
                let cs = need(Controller::Cpuset, "a cpuset")?;
                w.push((cs.join("cpuset.mems"), mems.clone()));
            }
        }
        Version::V2 => {
            let d = cg.base.join(name);
            let enabled = super::read_string(&d.join("cgroup.controllers")).unwrap_or_default();
            let has = |c: &str| enabled.split_whitespace().any(|x| x == c);
            let need2 = |c: &str, what: &str| {
                if has(c) {
                    Ok(())
                } else {
                    Err(CgroupError::Unsupported(format!(
                        "{what} needs the cgroup v2 {c:?} controller, which is not enabled for {}",
                        d.display()
                    )))
                }
            };
            need2("cpu", "a CPU limit")?;
            let quota = limits.cpu_millicores.map_or_else(
                || "max".to_string(),
                |m| (u64::from(m) * CPU_PERIOD_US / 1000).to_string(),
            );
            w.push((d.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}")));
            w.push((
                d.join("cpu.weight"),
                limits.cpu_weight.unwrap_or(100).to_string(),
            ));
            need2("memory", "a memory limit")?;
            w.push((d.join("memory.max"), or_max(limits.memory_max)));
            w.push((
                d.join("memory.low"),
                limits.memory_soft.unwrap_or(0).to_string(),
            ));
            if d.join("memory.swap.max").exists() {
                w.push((d.join("memory.swap.max"), or_max(limits.swap_max)));
            } else if limits.swap_max.is_some() {
                return Err(CgroupError::Unsupported(
                    "swap limits need memory.swap.max, which this kernel lacks".into(),
                ));
            }
            need2("pids", "a pids limit")?;
            w.push((d.join("pids.max"), or_max(limits.pids_max)));
            if !limits.io.is_empty() {
                need2("io", "an I/O limit")?;
                for io in &limits.io {
                    w.push((
                        d.join("io.max"),
                        format!(
                            "{}:{} rbps={} wbps={} riops={} wiops={}",
                            io.major,
                            io.minor,
                            or_max(io.read_bps),
                            or_max(io.write_bps),
                            or_max(io.read_iops),
                            or_max(io.write_iops)
                        ),
                    ));
                }
            }
            if limits.cpuset_cpus.is_some() || limits.cpuset_mems.is_some() {
                need2("cpuset", "a cpuset")?;
            }
            if let Some(cpus) = &limits.cpuset_cpus {
                w.push((d.join("cpuset.cpus"), cpus.clone()));
            }
            if let Some(mems) = &limits.cpuset_mems {
                w.push((d.join("cpuset.mems"), mems.clone()));
            }
        }
    }
    Ok(w)
}
