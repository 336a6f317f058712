//! File-format tests of the cgroup layer against temp-dir fixtures of both versions.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use super::limits::plan;
use super::*;

fn touch(p: &Path) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, "").unwrap();
}

/// A hybrid v1 host like the build machine: separate cpu and cpuacct, a unified mount without
/// controllers, a named systemd hierarchy.
fn v1_root() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for c in Controller::ALL {
        touch(&t.path().join(c.name()).join("cgroup.procs"));
    }
    touch(&t.path().join("unified/cgroup.procs"));
    touch(&t.path().join("systemd/cgroup.procs"));
    fs::create_dir_all(t.path().join("memory/dms/d1")).unwrap();
    touch(&t.path().join("memory/dms/d1/memory.memsw.limit_in_bytes"));
    t
}

fn v2_root(controllers: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("cgroup.controllers"), controllers).unwrap();
    fs::create_dir_all(t.path().join("dms/d1")).unwrap();
    fs::write(t.path().join("dms/d1/cgroup.controllers"), controllers).unwrap();
    t
}

fn full_limits() -> Limits {
    Limits {
        cpu_millicores: Some(500),
        cpu_weight: Some(200),
        memory_max: Some(256 << 20),
        memory_soft: Some(128 << 20),
        swap_max: Some(0),
        pids_max: Some(64),
        io: vec![IoLimit {
            major: 8,
            minor: 0,
            read_bps: Some(1_000_000),
            write_bps: None,
            read_iops: None,
            write_iops: Some(100),
        }],
        cpuset_cpus: Some("0".into()),
        cpuset_mems: Some("0".into()),
    }
}

fn rel(root: &Path, writes: Vec<(std::path::PathBuf, String)>) -> Vec<(String, String)> {
    writes
        .into_iter()
        .map(|(p, v)| (p.strip_prefix(root).unwrap().display().to_string(), v))
        .collect()
}

#[test]
fn detects_hybrid_v1() {
    let t = v1_root();
    let cg = Cgroups::detect(t.path(), "dms").unwrap();
    assert_eq!(cg.version(), Version::V1);
    assert_eq!(cg.controllers().len(), 7);
    assert_eq!(
        cg.procs_files("d1")[0],
        t.path().join("cpu/dms/d1/cgroup.procs")
    );
    // A process joining itself writes v1's tasks files (no global lock), one per hierarchy.
    let own = cg.self_join_files("d1");
    assert_eq!(own[0], t.path().join("cpu/dms/d1/tasks"));
    assert_eq!(own.len(), cg.procs_files("d1").len());
}

#[test]
fn detects_comounted_cpu_cpuacct_once() {
    let t = tempfile::tempdir().unwrap();
    touch(&t.path().join("cpu,cpuacct/cgroup.procs"));
    for c in ["memory", "pids", "freezer"] {
        let c = Controller::ALL.into_iter().find(|x| x.name() == c).unwrap();
        touch(&t.path().join(c.name()).join("cgroup.procs"));
    }
    let cg = Cgroups::detect(t.path(), "dms").unwrap();
    // One procs file per distinct mount: the co-mounted pair is joined once.
    assert_eq!(cg.procs_files("x").len(), 4);
}

#[test]
fn v1_without_freezer_is_refused() {
    let t = tempfile::tempdir().unwrap();
    touch(&t.path().join("cpu/cgroup.procs"));
    let e = Cgroups::detect(t.path(), "dms").unwrap_err();
    assert!(matches!(e, CgroupError::NoHierarchy(_)), "{e}");
}

#[test]
fn v1_plan_writes_every_quota() {
    let t = v1_root();
    let cg = Cgroups::detect(t.path(), "dms").unwrap();
    let w = rel(t.path(), plan(&cg, "d1", &full_limits()).unwrap());
    let expect = |f: &str, v: &str| {
        assert!(
            w.contains(&(f.to_string(), v.to_string())),
            "missing {f} = {v} in {w:#?}"
        )
    };
    expect("cpu/dms/d1/cpu.cfs_period_us", "100000");
    expect("cpu/dms/d1/cpu.cfs_quota_us", "50000");
    expect("cpu/dms/d1/cpu.shares", "2048");
    expect("memory/dms/d1/memory.limit_in_bytes", "268435456");
    expect("memory/dms/d1/memory.soft_limit_in_bytes", "134217728");
    expect("memory/dms/d1/memory.memsw.limit_in_bytes", "268435456");
    expect("pids/dms/d1/pids.max", "64");
    expect("blkio/dms/d1/blkio.throttle.read_bps_device", "8:0 1000000");
    expect("blkio/dms/d1/blkio.throttle.write_iops_device", "8:0 100");
    expect("cpuset/dms/d1/cpuset.cpus", "0");
    // memory.limit must be written before memsw, which may not be below it.
    let pos = |f: &str| w.iter().position(|(p, _)| p.ends_with(f)).unwrap();
    assert!(pos("memory.limit_in_bytes") < pos("memory.memsw.limit_in_bytes"));
}

#[test]
fn v1_unlimited_resets_to_kernel_defaults() {
    let t = v1_root();
    let cg = Cgroups::detect(t.path(), "dms").unwrap();
    let w = rel(t.path(), plan(&cg, "d1", &Limits::default()).unwrap());
    assert!(w.contains(&("cpu/dms/d1/cpu.cfs_quota_us".into(), "-1".into())));
    assert!(w.contains(&("memory/dms/d1/memory.limit_in_bytes".into(), "-1".into())));
    assert!(w.contains(&("pids/dms/d1/pids.max".into(), "max".into())));
}

#[test]
fn v1_swap_without_accounting_is_a_clear_error() {
    let t = v1_root();
    fs::remove_file(t.path().join("memory/dms/d1/memory.memsw.limit_in_bytes")).unwrap();
    let cg = Cgroups::detect(t.path(), "dms").unwrap();
    let e = plan(&cg, "d1", &full_limits()).unwrap_err().to_string();
    assert!(e.contains("swapaccount=1"), "{e}");
}

#[test]
fn v2_plan_writes_every_quota() {
    let t = v2_root("cpuset cpu io memory pids");
    fs::write(t.path().join("dms/d1/memory.swap.max"), "").unwrap();
    let cg = Cgroups::detect(t.path(), "dms").unwrap();
    assert_eq!(cg.version(), Version::V2);
    let w = rel(t.path(), plan(&cg, "d1", &full_limits()).unwrap());
    for (f, v) in [
        ("dms/d1/cpu.max", "50000 100000"),
        ("dms/d1/cpu.weight", "200"),
        ("dms/d1/memory.max", "268435456"),
        ("dms/d1/memory.low", "134217728"),
        ("dms/d1/memory.swap.max", "0"),
        ("dms/d1/pids.max", "64"),
        (
            "dms/d1/io.max",
            "8:0 rbps=1000000 wbps=max riops=max wiops=100",
        ),
        ("dms/d1/cpuset.cpus", "0"),
    ] {
        assert!(
            w.contains(&(f.into(), v.into())),
            "missing {f} = {v} in {w:#?}"
        );
    }
    assert_eq!(
        cg.procs_files("d1"),
        vec![t.path().join("dms/d1/cgroup.procs")]
    );
    // v2 has no tasks file.
    assert_eq!(cg.self_join_files("d1"), cg.procs_files("d1"));
}

#[test]
fn v2_missing_controller_is_named() {
    let t = v2_root("cpu memory pids");
    let cg = Cgroups::detect(t.path(), "dms").unwrap();
    let limits = Limits {
        swap_max: None,
        ..full_limits()
    };
    let e = plan(&cg, "d1", &limits).unwrap_err().to_string();
    assert!(e.contains("\"io\" controller"), "{e}");
}

#[test]
fn list_and_members_read_the_tree() {
    let t = v2_root("cpu memory pids");
    fs::create_dir_all(t.path().join("dms/d2")).unwrap();
    fs::write(t.path().join("dms/d1/cgroup.procs"), "12\n34\n").unwrap();
    fs::write(t.path().join("dms/notadir"), "").unwrap();
    let cg = Cgroups::detect(t.path(), "dms").unwrap();
    assert_eq!(cg.list().unwrap(), vec!["d1", "d2"]);
    assert_eq!(cg.members("d1").unwrap(), vec![12, 34]);
    assert!(matches!(cg.members("zz"), Err(CgroupError::NotFound(_))));
}

#[test]
fn v2_freezer_state_from_events() {
    let t = v2_root("cpu memory pids");
    let d = t.path().join("dms/d1");
    fs::write(d.join("cgroup.freeze"), "1\n").unwrap();
    fs::write(d.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
    let cg = Cgroups::detect(t.path(), "dms").unwrap();
    assert_eq!(cg.freezer_state("d1").unwrap(), FreezerState::Freezing);
    fs::write(d.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
    assert_eq!(cg.freezer_state("d1").unwrap(), FreezerState::Frozen);
}

/// A freeze that never completes (a fault the kernel rarely produces on demand: tasks stuck in
/// uninterruptible sleep) is bounded, thawed back and reported.
#[test]
fn v2_freeze_timeout_thaws_back() {
    let t = v2_root("cpu memory pids");
    let d = t.path().join("dms/d1");
    fs::write(d.join("cgroup.freeze"), "0\n").unwrap();
    fs::write(d.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
    fs::write(d.join("cgroup.procs"), "").unwrap();
    let cg = Cgroups::detect(t.path(), "dms").unwrap();
    let started = std::time::Instant::now();
    let e = cg
        .freeze("d1", std::time::Duration::from_millis(150))
        .unwrap_err();
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    assert!(matches!(e, CgroupError::FreezeTimeout { .. }), "{e}");
    assert!(e.to_string().contains("thawed back"), "{e}");
    assert!(fs::read_to_string(d.join("cgroup.freeze"))
        .unwrap()
        .starts_with('0'));
}

#[test]
fn freeze_of_missing_domain_is_not_found() {
    let t = v2_root("cpu memory pids");
    let cg = Cgroups::detect(t.path(), "dms").unwrap();
    let e = cg
        .freeze("nope", std::time::Duration::from_millis(10))
        .unwrap_err();
    assert!(matches!(e, CgroupError::NotFound(_)), "{e}");
}
