//! Root/kernel integration tests: a real dmsd on the host's cgroups (v1 here, v2 when run
//! inside the guest by `tests/vm/run-v2.sh`), driven through dmsctl.
//!
//! Gated by a predicate that prints why it skipped; with DMS_REQUIRE_ROOT_TESTS=1 (set by the
//! project's test command and CI) a skip is a failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use dms_integration::*;

#[test]
fn cpu_limit_freeze_and_thaw() {
    if !can_run() {
        return;
    }
    let d = Daemon::start("cpu");
    let dom = d.json(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    let name = dom["name"].as_str().unwrap().to_string();
    assert_eq!(name, "dmstest.nobody");
    assert_eq!(dom["limits"]["cpu_millicores"], 500);
    // Two busy loops: the limit, not one core, is what holds them.
    for _ in 0..2 {
        d.ok(&[
            "domain",
            "run",
            &name,
            "--no-wait",
            "--",
            "sh",
            "-c",
            "while :; do :; done",
        ]);
    }
    std::thread::sleep(Duration::from_millis(500));
    // No window may exceed the limit; the best of up to five must reach it. A VM whose host
    // steals CPU time gives less than the limit, which says nothing about the limit; so does an
    // emulated guest (TCG) whose hrtimers fire late and stretch the kernel's 100 ms enforcement
    // periods. The kernel counts those periods (cpu.stat nr_periods), so the share per elapsed
    // period is the limit as the kernel enforced it, and counts as reaching it.
    let mut best = 0.0f64;
    for window in 1..=5 {
        let (u0, t0) = (d.usage(&name), Instant::now());
        std::thread::sleep(Duration::from_secs(4));
        let u1 = d.usage(&name);
        let wall_ns = t0.elapsed().as_nanos() as f64;
        let used_ns =
            (u1["cpu_usage_ns"].as_u64().unwrap() - u0["cpu_usage_ns"].as_u64().unwrap()) as f64;
        let periods = u1["cpu_periods"].as_u64().unwrap() - u0["cpu_periods"].as_u64().unwrap();
        let share = used_ns / wall_ns;
        let period_share = used_ns / (periods.max(1) as f64 * 100e6);
        eprintln!(
            "cpu share under a 50% limit, window {window}: {share:.3} of wall time, \
             {period_share:.3} per period over {periods} periods ({:.0} expected from wall time)",
            wall_ns / 100e6
        );
        assert!(share <= 0.55, "cpu share {share:.3} above 50% +5%");
        assert!(
            period_share <= 0.55,
            "cpu share per period {period_share:.3} above 50% +5%"
        );
        best = best.max(share).max(period_share);
        if best >= 0.45 {
            break;
        }
    }
    assert!(best >= 0.45, "cpu share {best:.3} not 50% ±5%");

    d.ok(&["domain", "freeze", &name]);
    let frozen_state = d.json(&["domain", "show", &name]);
    assert_eq!(frozen_state["state"], "frozen");
    let c1 = d.cpu_ns(&name);
    std::thread::sleep(Duration::from_secs(1));
    let used = d.cpu_ns(&name) - c1;
    assert!(used < 1_000_000, "frozen domain used {used} ns of CPU");
    // Already frozen: a clear conflict, exit status 5.
    let o = d.ctl(&["domain", "freeze", &name]);
    assert_eq!(o.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already frozen"));

    d.ok(&["domain", "thaw", &name]);
    let c2 = d.cpu_ns(&name);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        d.cpu_ns(&name) - c2 > 300_000_000,
        "thawed domain did not resume"
    );
    d.ok(&["domain", "destroy", &name]);
    assert!(
        d.ok(&["domain", "list"]).lines().count() == 1,
        "domain still listed"
    );
}

#[test]
fn memory_hog_is_oom_killed_inside_the_domain() {
    if !can_run() {
        return;
    }
    let d = Daemon::start("mem");
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    // 200 MB in a shell variable against a 64M limit.
    let o = d.ctl(&[
        "domain",
        "run",
        "dmstest.nobody",
        "--",
        "sh",
        "-c",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
    ]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("survived"));
    assert_ne!(o.status.code(), Some(0));
    let v = d.json(&["domain", "show", "dmstest.nobody"]);
    assert!(
        v["usage"]["oom_kills"].as_u64().unwrap_or(0) >= 1,
        "no OOM kill reported: {v}"
    );
    // The daemon and the domain are still fine.
    assert_eq!(v["state"], "running");
    d.ok(&["domain", "run", "dmstest.nobody", "--", "true"]);
}

#[test]
fn fork_loop_stops_at_pids_max() {
    if !can_run() {
        return;
    }
    let d = Daemon::start("pids");
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    d.ok(&[
        "domain",
        "run",
        "dmstest.nobody",
        "--no-wait",
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 200 ]; do sleep 60 & i=$((i+1)); done; wait",
    ]);
    wait_until("pids.max hits", Duration::from_secs(20), || {
        d.json(&["domain", "show", "dmstest.nobody"])["usage"]["pids_limit_hits"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    let v = d.json(&["domain", "show", "dmstest.nobody"]);
    let n = v["usage"]["pids_current"].as_u64().unwrap();
    assert!(n <= 32, "{n} tasks in a domain with pids = 32");
    // The Domain Monitor noticed (inotify on pids.events, on v1 and v2 alike).
    wait_until("a pids_limit event", Duration::from_secs(10), || {
        let st = d.json(&["status"]);
        st["domains"][0]["limit_events"]["pids_limit"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    d.ok(&["domain", "destroy", "dmstest.nobody"]);
}

#[test]
fn usage_readers_report_every_source_the_kernel_has() {
    if !can_run() {
        return;
    }
    let d = Daemon::start("readers");
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    // Some CPU, anonymous memory, page cache and a file write, then stay alive.
    d.ok(&[
        "domain",
        "run",
        "dmstest.nobody",
        "--no-wait",
        "--",
        "sh",
        "-c",
        "x=$(head -c 4000000 /dev/zero | tr '\\0' a); head -c 8000000 /dev/zero > /tmp/f; sync; sleep 60",
    ]);
    wait_until("usage of the work", Duration::from_secs(20), || {
        let u = &d.json(&["domain", "show", "dmstest.nobody"])["usage"];
        u["cpu_usage_ns"].as_u64().unwrap_or(0) > 0
            && u["memory_cache_bytes"].as_u64().unwrap_or(0) > 1_000_000
    });
    let u = d.json(&["domain", "show", "dmstest.nobody"])["usage"].clone();
    eprintln!("usage: {u}");
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    assert!(u["memory_usage_bytes"].as_u64().unwrap() > 1_000_000, "{u}");
    assert!(u["memory_rss_bytes"].is_u64(), "{u}");
    assert!(
        u["memory_max_usage_bytes"].as_u64().unwrap() >= u["memory_usage_bytes"].as_u64().unwrap()
            || v2,
        "{u}"
    );
    assert!(u["pids_current"].as_u64().unwrap() >= 1, "{u}");
    assert!(
        u["cpu_periods"].is_u64() && u["cpu_throttled_periods"].is_u64(),
        "{u}"
    );
    assert!(
        u["oom_kills"].is_u64() && u["pids_limit_hits"].is_u64(),
        "{u}"
    );
    assert!(
        u["io_read_bytes"].is_u64() && u["io_write_ops"].is_u64(),
        "{u}"
    );
    // PSI exists only on v2, where the kernel has it.
    let psi = v2 && Path::new("/proc/pressure/cpu").exists();
    assert_eq!(u["psi_cpu_some_us"].is_u64(), psi, "{u}");
    // A domain without a network has no link counters.
    assert!(u["network"].is_null(), "{u}");
    // The same numbers through /status.
    let st = d.json(&["status"]);
    let dom = &st["domains"][0];
    assert_eq!(dom["name"], "dmstest.nobody");
    assert!(dom["usage"]["memory_bytes"].as_u64().unwrap() > 1_000_000);
    d.ok(&["domain", "destroy", "dmstest.nobody"]);
    // Its usage record is written.
    let recs = d.json(&["usage"]);
    assert_eq!(recs[0]["domain"], "dmstest.nobody");
}

#[test]
fn kill9_and_restart_adopts_domains() {
    if !can_run() {
        return;
    }
    let mut d = Daemon::start("adopt");
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    d.ok(&[
        "domain",
        "create",
        "--user",
        "nobody",
        "--fqan",
        "/dmstest/Role=big",
        "--vo",
        "dmstest",
    ]);
    let pid: i32 = d
        .ok(&[
            "domain",
            "run",
            "dmstest.nobody",
            "--no-wait",
            "--",
            "sleep",
            "300",
        ])
        .trim()
        .parse()
        .unwrap();
    d.ok(&["domain", "freeze", "dmstest.nobody"]);
    d.ok(&["domain", "create", "--user", "daemon", "--vo", "dmstest"]);
    let daemon_init = d.json(&["domain", "join-info", "dmstest.daemon"])["init_pid"]
        .as_i64()
        .unwrap();
    d.kill9();
    // While it is down: one domain's init dies and its (now empty) group is removed by hand,
    // and an orphan group appears under the subtree.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon_init as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(
        "init of dmstest.daemon gone",
        Duration::from_secs(5),
        || cgroup_procs(&d.subtree, "dmstest.daemon").is_empty(),
    );
    for c in [
        "cpu", "cpuacct", "memory", "freezer", "pids", "blkio", "cpuset",
    ] {
        let _ = std::fs::remove_dir(cgroup_dir(&d.subtree, c).join("dmstest.daemon"));
    }
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let orphan_roots: Vec<PathBuf> = if v2 {
        vec![PathBuf::from("/sys/fs/cgroup").join(&d.subtree)]
    } else {
        [
            "cpu", "cpuacct", "memory", "freezer", "pids", "blkio", "cpuset",
        ]
        .iter()
        .map(|c| Path::new("/sys/fs/cgroup").join(c).join(&d.subtree))
        .collect()
    };
    for r in &orphan_roots {
        std::fs::create_dir(r.join("stray")).unwrap();
    }
    d.spawn();
    let list = d.json(&["domain", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"dmstest.nobody"), "{names:?}");
    let v = d.json(&["domain", "show", "dmstest.nobody"]);
    assert_eq!(v["state"], "frozen", "frozen state not adopted: {v}");
    // The domain's init and the sleeper.
    assert_eq!(v["processes"], 2);
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "process lost");
    for r in &orphan_roots {
        assert!(
            !r.join("stray").exists(),
            "orphan {} not removed",
            r.display()
        );
    }
    assert!(d.log().contains("removed_orphans"));
    let gone = d.json(&["domain", "show", "dmstest.daemon"]);
    assert_eq!(gone["state"], "failed", "{gone}");
    assert!(
        gone["reason"].as_str().unwrap().contains("vanished"),
        "{gone}"
    );
    // A failed domain can still be destroyed.
    d.ok(&["domain", "destroy", "dmstest.daemon"]);
    d.ok(&["domain", "thaw", "dmstest.nobody"]);
    // The adopted domain is still enterable: same namespaces as the sleeper.
    let inside = d.ok(&[
        "exec",
        "dmstest.nobody",
        "--",
        "readlink",
        "/proc/self/ns/net",
    ]);
    let sleeper_ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_eq!(inside.trim(), sleeper_ns.display().to_string());
    d.ok(&["domain", "destroy", "dmstest.nobody"]);
    wait_until("process killed", Duration::from_secs(5), || !alive(pid));
}

#[test]
fn authorization_from_caller_credentials() {
    if !can_run() {
        return;
    }
    let d = Daemon::start("auth");
    // A domain owned by "daemon" (uid 1); nobody is neither owner nor admin.
    d.ok(&["domain", "create", "--user", "daemon", "--vo", "dmstest"]);
    for op in ["freeze", "destroy"] {
        let o = d.ctl_as(Some(NOBODY), &["domain", op, "dmstest.daemon"]);
        assert_eq!(o.status.code(), Some(4), "{op} by nobody: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("permission denied") && err.contains("uid 65534"),
            "{err}"
        );
    }
    let o = d.ctl_as(
        Some(NOBODY),
        &["domain", "create", "--user", "nobody", "--vo", "dmstest"],
    );
    assert_eq!(o.status.code(), Some(4));
    // The owner may freeze and thaw (policy owner_may) but not destroy.
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    assert!(d
        .ctl_as(Some(NOBODY), &["domain", "freeze", "dmstest.nobody"])
        .status
        .success());
    assert!(d
        .ctl_as(Some(NOBODY), &["domain", "thaw", "dmstest.nobody"])
        .status
        .success());
    assert_eq!(
        d.ctl_as(Some(NOBODY), &["domain", "destroy", "dmstest.nobody"])
            .status
            .code(),
        Some(4)
    );
    // Non-admins see only their own domains.
    let o = d.ctl_as(Some(NOBODY), &["--json", "domain", "list"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
}

#[test]
fn bad_input_gets_clear_errors_and_leaves_nothing() {
    if !can_run() {
        return;
    }
    let d = Daemon::start("bad");
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["domain", "create", "--user", "nobody", "--vo", "nosuchvo"],
            3,
            "unknown VO",
        ),
        (
            &["domain", "create", "--user", "no/body", "--vo", "dmstest"],
            2,
            "'/'",
        ),
        (
            &["domain", "create", "--user", "..", "--vo", "dmstest"],
            2,
            "user",
        ),
        (
            &["domain", "create", "--user", "nobody\nx", "--vo", "dmstest"],
            2,
            "\\n",
        ),
        (
            &[
                "domain",
                "create",
                "--user",
                &"a".repeat(65),
                "--vo",
                "dmstest",
            ],
            2,
            "64",
        ),
        (
            &[
                "domain",
                "create",
                "--user",
                "nosuchuser",
                "--vo",
                "dmstest",
            ],
            3,
            "no such account",
        ),
        (
            &[
                "domain",
                "create",
                "--user",
                "nobody",
                "--fqan",
                "/dmstest//x",
            ],
            2,
            "invalid FQAN",
        ),
        (
            &[
                "domain",
                "create",
                "--user",
                "nobody",
                "--fqan",
                "/other/Role=x",
                "--vo",
                "dmstest",
            ],
            2,
            "not in vo",
        ),
        (&["domain", "freeze", "nosuchdomain"], 3, "no domain"),
        (&["domain", "freeze", "../etc"], 2, "domain name"),
    ];
    for (args, code, text) in cases {
        let o = d.ctl(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {err}");
        assert!(err.contains(text), "{args:?}: {err:?} lacks {text:?}");
    }
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    let o = d.ctl(&["domain", "attach", "dmstest.nobody", "999999999"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    // A broken policy is refused by check and by reload; the old one stays in force.
    std::fs::write(
        d.dir.join("policies/broken.toml"),
        "[vo.x]\ncpu = { limit = \"lots\" }\n",
    )
    .unwrap();
    let o = d.ctl(&[
        "policy",
        "check",
        &d.dir.join("policies").display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("broken.toml:2:"),
        "{o:?}"
    );
    let o = d.ctl(&["policy", "reload"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("previous policies stay in force"));
    std::fs::remove_file(d.dir.join("policies/broken.toml")).unwrap();
    d.ok(&["domain", "create", "--user", "daemon", "--vo", "dmstest"]);
    // Only the two good domains exist, in the store and as cgroups.
    let list = d.json(&["domain", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let base = cgroup_dir(&d.subtree, "freezer");
    let groups = std::fs::read_dir(base)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .count();
    assert_eq!(groups, 2);
}

/// Reads lines from a child's stdout on a thread, so the test can wait with a deadline.
fn line_reader(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Removes a test directory when the test ends, passed or failed.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn state_change_signals_reach_subscribers() {
    if !can_run() {
        return;
    }
    let d = Daemon::start("sig");
    let mut mon = Command::new(bin("dmsctl"));
    mon.args(["--socket", &d.sock(), "--json", "monitor"])
        .stdout(Stdio::piped());
    let mut mon = KillOnDrop(mon.spawn().unwrap());
    let rx = line_reader(mon.0.stdout.take().unwrap());
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(first.contains("monitoring"), "{first}");
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    d.ok(&["domain", "freeze", "dmstest.nobody"]);
    d.ok(&["domain", "thaw", "dmstest.nobody"]);
    d.ok(&["domain", "destroy", "dmstest.nobody"]);
    let mut got = Vec::new();
    while got.len() < 5 {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("signal not received");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["domain"], "dmstest.nobody");
        got.push(format!(
            "{}>{}",
            v["old"].as_str().unwrap(),
            v["new"].as_str().unwrap()
        ));
    }
    assert_eq!(
        got,
        [
            "creating>running",
            "running>frozen",
            "frozen>running",
            "running>stopping",
            "stopping>destroyed"
        ]
    );
}

#[test]
fn system_bus_api_authorizes_by_bus_credentials() {
    if !can_run() {
        return;
    }
    if Command::new("dbus-daemon")
        .arg("--version")
        .output()
        .is_err()
    {
        skipped("dbus-daemon not installed (Debian package dbus)");
        return;
    }
    let base = std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into());
    let busdir = PathBuf::from(base).join(format!("dms-test-dbus-{}", std::process::id()));
    std::fs::create_dir_all(&busdir).unwrap();
    let _cleanup = RemoveOnDrop(busdir.clone());
    // World-traversable so nobody can reach the bus socket.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&busdir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/io.dms.Manager1.conf");
    let sock = busdir.join("system_bus_socket");
    std::fs::write(
        busdir.join("bus.conf"),
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/><allow receive_type="method_return"/>
    <allow receive_type="error"/><allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"#,
            sock = sock.display(),
            policy = policy.canonicalize().unwrap().display()
        ),
    )
    .unwrap();
    let bus = Command::new("dbus-daemon")
        .arg(format!(
            "--config-file={}",
            busdir.join("bus.conf").display()
        ))
        .arg("--nofork")
        .spawn()
        .unwrap();
    let _bus = KillOnDrop(bus);
    wait_until("bus socket", Duration::from_secs(10), || sock.exists());
    let addr = format!("unix:path={}", sock.display());
    let env = vec![("DBUS_SYSTEM_BUS_ADDRESS".to_string(), addr)];
    let d = Daemon::start_with("bus", env, vec!["--system-bus".into(), "yes".into()]);
    assert!(d.log().contains("serving on the system bus"), "{}", d.log());
    let bus_ok = |uid: Option<u32>, args: &[&str]| {
        let mut a = vec!["--system-bus"];
        a.extend_from_slice(args);
        d.ctl_as(uid, &a)
    };
    let o = bus_ok(
        None,
        &["domain", "create", "--user", "daemon", "--vo", "dmstest"],
    );
    assert!(o.status.success(), "{o:?}");
    let o = bus_ok(Some(NOBODY), &["domain", "freeze", "dmstest.daemon"]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("uid 65534"),
        "{o:?}"
    );
    let o = bus_ok(Some(NOBODY), &["--json", "domain", "list"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        0,
        "nobody sees others' domains"
    );
    assert!(bus_ok(None, &["domain", "freeze", "dmstest.daemon"])
        .status
        .success());
    assert!(bus_ok(None, &["domain", "destroy", "dmstest.daemon"])
        .status
        .success());
}

#[test]
fn attach_moves_a_running_process() {
    if !can_run() {
        return;
    }
    let d = Daemon::start("attach");
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    let sleeper = KillOnDrop(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = sleeper.0.id().to_string();
    d.ok(&["domain", "attach", "dmstest.nobody", &pid]);
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cg.contains(&format!("/{}/dmstest.nobody", d.subtree)),
        "{cg}"
    );
    let v = d.json(&["domain", "show", "dmstest.nobody"]);
    // The domain's init and the sleeper.
    assert_eq!(v["processes"], 2);
    // The owner's policy does not grant attach: denied even for the owner's own domain.
    let o = d.ctl_as(Some(NOBODY), &["domain", "attach", "dmstest.nobody", &pid]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
}

#[test]
fn policy_changes_reload_and_reapply_limits() {
    if !can_run() {
        return;
    }
    let d = Daemon::start("reload");
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    let pids_max = || d.json(&["domain", "show", "dmstest.nobody"])["limits"]["pids_max"].clone();
    assert_eq!(pids_max(), 32);
    // A changed file is picked up by itself and applied to the live domain.
    let policy = d.dir.join("policies/dmstest.toml");
    std::fs::write(&policy, POLICY.replace("pids = 32", "pids = 48")).unwrap();
    wait_until(
        "reload after a file change",
        Duration::from_secs(30),
        || pids_max() == 48,
    );
    // SIGHUP reloads too.
    let pid = d.child.as_ref().unwrap().id() as i32;
    std::fs::write(&policy, POLICY.replace("pids = 32", "pids = 40")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_until("reload after SIGHUP", Duration::from_secs(30), || {
        pids_max() == 40
    });
    let base = cgroup_dir(&d.subtree, "pids");
    let kernel = std::fs::read_to_string(base.join("dmstest.nobody/pids.max")).unwrap();
    assert_eq!(kernel.trim(), "40", "kernel limit not updated");
}

#[test]
fn failed_creation_is_rolled_back_completely() {
    if !can_run() {
        return;
    }
    let d = Daemon::start("rollback");
    let o = d.ctl(&["domain", "create", "--user", "nobody", "--vo", "dmsbadcpu"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cpuset.cpus") && err.contains("\"7\""),
        "{err}"
    );
    assert_eq!(d.json(&["domain", "list"]).as_array().unwrap().len(), 0);
    for c in ["cpu", "memory", "freezer", "pids", "cpuset"] {
        let dir = cgroup_dir(&d.subtree, c).join("dmsbadcpu.nobody");
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    // The daemon keeps serving.
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
}

#[test]
fn concurrent_ensures_of_one_identity_make_one_domain() {
    if !can_run() {
        return;
    }
    let d = Daemon::start("race");
    let children: Vec<Child> = (0..8)
        .map(|_| {
            Command::new(bin("dmsctl"))
                .args([
                    "--socket",
                    &d.sock(),
                    "domain",
                    "create",
                    "--user",
                    "nobody",
                ])
                .args(["--vo", "dmstest"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let list = d.json(&["domain", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let name = list[0]["name"].as_str().unwrap().to_string();

    // Creations racing destroys of the same domain: each either finds the live domain or
    // makes a new one, never hands back the one being destroyed.
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Stops the destroy loop however the create loop ends, a failed assertion included
    /// (else the scope would wait for it forever).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ = d.ctl(&["domain", "destroy", &name]);
            }
        });
        let _stop = StopOnDrop(&stop);
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < until {
            let dom = d.json(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
            assert_eq!(
                dom["state"], "running",
                "create returned a domain that is not running: {dom}"
            );
        }
    });
}

#[test]
fn domains_are_isolated_from_each_other_and_the_host() {
    if !can_run() {
        return;
    }
    let d = Daemon::start("iso");
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    d.ok(&["domain", "create", "--user", "daemon", "--vo", "dmstest"]);
    let sleeper: i32 = d
        .ok(&["exec", "dmstest.nobody", "--no-wait", "--", "sleep", "60"])
        .trim()
        .parse()
        .unwrap();
    // ps -e shows the domain's init, the sleeper and ps itself: nothing of the host or the
    // other domain.
    let ps = d.ok(&[
        "exec",
        "dmstest.nobody",
        "--",
        "ps",
        "-e",
        "-o",
        "pid=,comm=",
    ]);
    let procs: Vec<(i32, String)> = ps
        .lines()
        .map(|l| {
            let (pid, comm) = l.trim().split_once(' ').unwrap();
            (pid.parse().unwrap(), comm.trim().to_string())
        })
        .collect();
    let comms: Vec<&str> = procs.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(comms, ["dms-init", "sleep", "ps"], "{ps}");
    assert_eq!(procs[0].0, 1, "{ps}");
    let other = d.ok(&["exec", "dmstest.daemon", "--", "ps", "-e", "-o", "comm="]);
    assert!(!other.contains("sleep"), "{other}");
    // Hostname, private /tmp and /dev/shm that live as long as the domain.
    assert_eq!(
        d.ok(&["exec", "dmstest.nobody", "--", "hostname"]).trim(),
        "dmstest.nobody"
    );
    let marker = format!("dms-marker-{}", std::process::id());
    for dir in ["/tmp", "/dev/shm"] {
        d.ok(&[
            "exec",
            "dmstest.nobody",
            "--",
            "touch",
            &format!("{dir}/{marker}"),
        ]);
        assert!(
            !Path::new(&format!("{dir}/{marker}")).exists(),
            "{dir} is shared with the host"
        );
        let o = d.ctl(&[
            "exec",
            "dmstest.daemon",
            "--",
            "test",
            "-e",
            &format!("{dir}/{marker}"),
        ]);
        assert_eq!(o.status.code(), Some(1), "{dir} shared between domains");
        d.ok(&[
            "exec",
            "dmstest.nobody",
            "--",
            "test",
            "-e",
            &format!("{dir}/{marker}"),
        ]);
    }
    // The cgroup namespace hides the host's cgroup paths.
    let cg = d.ok(&["exec", "dmstest.nobody", "--", "cat", "/proc/self/cgroup"]);
    assert!(cg.lines().all(|l| l.ends_with(":/")), "{cg}");
    // Namespaces differ between the domains and from the host.
    let a = ns_links(&sleeper.to_string());
    let host = ns_links("self");
    for ((n, x), (_, y)) in a.iter().zip(&host) {
        assert_ne!(x, y, "{n} namespace shared with the host");
    }
    let net_b = d.ok(&[
        "exec",
        "dmstest.daemon",
        "--",
        "readlink",
        "/proc/self/ns/net",
    ]);
    assert_ne!(net_b.trim(), a[3].1);
    // Only loopback, and it is up.
    let links = d.ok(&["exec", "dmstest.nobody", "--", "cat", "/proc/net/dev"]);
    let ifs: Vec<&str> = links
        .lines()
        .skip(2)
        .map(|l| l.split(':').next().unwrap().trim())
        .collect();
    assert_eq!(ifs, ["lo"], "{links}");
    // (As root: ping's file capability does not survive the v2 guest's 9p root.)
    d.ok(&[
        "exec",
        "--user",
        "root",
        "dmstest.nobody",
        "--",
        "ping",
        "-c1",
        "-W1",
        "127.0.0.1",
    ]);
    // Destroy removes the private /tmp: a new domain of the same name starts empty.
    d.ok(&["domain", "destroy", "dmstest.nobody"]);
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    let o = d.ctl(&[
        "exec",
        "dmstest.nobody",
        "--",
        "test",
        "-e",
        &format!("/tmp/{marker}"),
    ]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn exec_passes_status_and_refuses_frozen_dead_and_foreign_callers() {
    if !can_run() {
        return;
    }
    let d = Daemon::start("exec");
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    // Exit status, clean environment, owner's uid.
    let o = d.ctl(&["exec", "dmstest.nobody", "--", "sh", "-c", "exit 42"]);
    assert_eq!(o.status.code(), Some(42));
    // A signal comes back as 128 + its number.
    let o = d.ctl(&["exec", "dmstest.nobody", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(o.status.code(), Some(143), "{o:?}");
    // The domain's init forks the command (nothing is joined): its parent is pid 1.
    assert_eq!(
        d.ok(&["exec", "dmstest.nobody", "--", "sh", "-c", "echo $PPID"])
            .trim(),
        "1"
    );
    // A detached command's pid is its pid on the host, even when it has ended before the
    // daemon answers.
    let pid = d.ok(&[
        "domain",
        "run",
        "dmstest.nobody",
        "--no-wait",
        "--",
        "sleep",
        "30",
    ]);
    let pid = pid.trim();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "sleep",
        "pid {pid}"
    );
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap()
            .contains("/dmstest.nobody"),
        "pid {pid} is not in the domain's cgroups"
    );
    for _ in 0..5 {
        let quick = d.ok(&["domain", "run", "dmstest.nobody", "--no-wait", "--", "true"]);
        assert!(quick.trim().parse::<i32>().unwrap() > 0, "pid {quick:?}");
    }
    // A burst of concurrent commands: each one runs and gets its own status back. (Eight:
    // the emulated cgroup v2 guest starts about one command per two seconds.)
    let codes: Vec<Option<i32>> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..8)
            .map(|i| {
                let d = &d;
                s.spawn(move || {
                    let code = format!("exit {i}");
                    d.ctl(&["exec", "dmstest.nobody", "--", "sh", "-c", &code])
                        .status
                        .code()
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(codes, (0..8).map(Some).collect::<Vec<_>>());
    // A program that cannot be started: a clear error, and the domain serves on.
    let o = d.ctl(&["exec", "dmstest.nobody", "--", "/no/such/program"]);
    assert!(!o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("executing \"/no/such/program\"") && err.contains("No such file"),
        "{err}"
    );
    let env = d.ok(&["exec", "dmstest.nobody", "--", "env"]);
    assert!(
        env.contains("USER=nobody") && env.contains("DMS_DOMAIN=dmstest.nobody"),
        "{env}"
    );
    assert!(
        !env.contains("CARGO"),
        "environment leaked into the domain: {env}"
    );
    assert_eq!(
        d.ok(&["exec", "dmstest.nobody", "--", "id", "-u"]).trim(),
        NOBODY.to_string()
    );
    // Admins may pick the user.
    assert_eq!(
        d.ok(&["exec", "--user", "root", "dmstest.nobody", "--", "id", "-u"])
            .trim(),
        "0"
    );
    // The owner may exec in its own domain; another user may not.
    d.ok(&["domain", "create", "--user", "daemon", "--vo", "dmstest"]);
    let o = d.ctl_as(Some(NOBODY), &["exec", "dmstest.daemon", "--", "true"]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    let o = d.ctl_as(Some(NOBODY), &["exec", "dmstest.nobody", "--", "id", "-u"]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("owner only: freeze, thaw"),
        "{o:?}"
    );
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmsexec"]);
    let o = d.ctl_as(Some(NOBODY), &["exec", "dmsexec.nobody", "--", "id", "-u"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        NOBODY.to_string()
    );
    // Frozen: refused with a hint.
    d.ok(&["domain", "freeze", "dmstest.nobody"]);
    let o = d.ctl(&["exec", "dmstest.nobody", "--", "true"]);
    assert_eq!(o.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("frozen; thaw it first"),
        "{o:?}"
    );
    d.ok(&["domain", "thaw", "dmstest.nobody"]);
    // Dead init: the daemon notices, marks the domain failed and refuses exec.
    let init = d.json(&["domain", "join-info", "dmstest.nobody"])["init_pid"]
        .as_i64()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("domain marked failed", Duration::from_secs(5), || {
        d.json(&["domain", "show", "dmstest.nobody"])["state"] == "failed"
    });
    let v = d.json(&["domain", "show", "dmstest.nobody"]);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("init process exited"),
        "{v}"
    );
    let o = d.ctl(&["exec", "dmstest.nobody", "--", "true"]);
    assert_eq!(o.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("has failed"),
        "{o:?}"
    );
    d.ok(&["domain", "destroy", "dmstest.nobody"]);
    assert!(cgroup_procs(&d.subtree, "dmstest.nobody").is_empty());
    // Unknown domain.
    let o = d.ctl(&["exec", "nosuch.domain", "--", "true"]);
    assert_eq!(o.status.code(), Some(3));
}

#[test]
fn run_once_makes_a_domain_for_one_command_and_removes_it() {
    if !can_run() {
        return;
    }
    let d = Daemon::start("once");
    let gone = |d: &Daemon| {
        assert_eq!(d.json(&["domain", "list"]).as_array().unwrap().len(), 0);
        for c in ["cpu", "memory", "freezer", "pids"] {
            let dir = cgroup_dir(&d.subtree, c).join("dmstest.nobody");
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    };
    let once = ["run-once", "--user", "nobody", "--vo", "dmstest"];
    let with = |cmd: &[&'static str]| [&once[..], &["--"], cmd].concat();
    // The command runs in the new domain (its hostname, under its init, as the owner) and its
    // status comes back once the domain is gone.
    let o = d.ctl(&with(&["sh", "-c", "hostname; echo $PPID; id -u; exit 3"]));
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "dmstest.nobody\n1\n65534\n"
    );
    gone(&d);
    let recs = d.json(&["usage", "--domain", "dmstest.nobody"]);
    assert_eq!(recs.as_array().unwrap().len(), 1, "{recs}");
    // A command that cannot start: a clear error, and the domain is removed all the same.
    let o = d.ctl(&with(&["/nonexistent/dms-cmd"]));
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nonexistent/dms-cmd"), "{err}");
    gone(&d);
    // Bad input is refused before anything is made.
    let unknown_vo = [
        "run-once",
        "--user",
        "nobody",
        "--vo",
        "dmsnosuchvo",
        "--",
        "true",
    ];
    for (args, code, word) in [
        (
            [&once[..], &["--as", "dms-no-such-user", "--", "true"]].concat(),
            3,
            "dms-no-such-user",
        ),
        (
            [&once[..], &["--env", "=x", "--", "true"]].concat(),
            2,
            "env",
        ),
        (unknown_vo.to_vec(), 3, "dmsnosuchvo"),
    ] {
        let o = d.ctl(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(word), "{args:?}: {err}");
        gone(&d);
    }
    // Not for callers who may not create domains, and nothing is made.
    let o = d.ctl_as(Some(65534), &with(&["true"]));
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    gone(&d);
    // An existing domain of the identity is not this command's to destroy: refused, kept.
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    let o = d.ctl(&with(&["true"]));
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    let v = d.json(&["domain", "show", "dmstest.nobody"]);
    assert_eq!(v["state"], "running");
    d.ok(&["domain", "destroy", "dmstest.nobody"]);
    // While the command runs, the identity's domain is not handed to anyone else (a login
    // there would end with the command).
    std::thread::scope(|s| {
        let run = s.spawn(|| d.ctl(&with(&["sleep", "2"])));
        wait_until("the run-once domain", Duration::from_secs(10), || {
            d.json(&["domain", "list"]).as_array().unwrap().len() == 1
        });
        let o = d.ctl(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
        assert_eq!(o.status.code(), Some(5), "{o:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("run-once"));
        let o = run.join().unwrap();
        assert_eq!(o.status.code(), Some(0), "{o:?}");
    });
    gone(&d);
    // After a crash of dmsd nobody waits to destroy it: the restarted daemon adopts it as an
    // ordinary domain (logins may use it, its command keeps running), not as a run-once one.
    let mut d = d;
    std::thread::scope(|s| {
        // Its output is not the test's pipe, which would stay open for as long as it runs.
        const QUIET: &str = "exec sleep 300 </dev/null >/dev/null 2>&1";
        let run = s.spawn(|| d.ctl(&with(&["sh", "-c", QUIET])));
        wait_until("the run-once domain", Duration::from_secs(10), || {
            cgroup_procs(&d.subtree, "dmstest.nobody").len() >= 2
        });
        let dmsd = d.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill")
            .args(["-9", &dmsd])
            .status()
            .unwrap()
            .success());
        let o = run.join().unwrap();
        assert_ne!(o.status.code(), Some(0), "{o:?}");
    });
    d.kill9(); // reaps it
    d.spawn();
    let v = d.json(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    assert_eq!(v["name"], "dmstest.nobody");
    assert_eq!(
        cgroup_procs(&d.subtree, "dmstest.nobody").len(),
        2,
        "init and sleep"
    );
    d.ok(&["domain", "destroy", "dmstest.nobody"]);
    gone(&d);
}

#[test]
fn join_moves_the_caller_into_cgroups_and_namespaces() {
    if !can_run() {
        return;
    }
    let d = Daemon::start("join");
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    let target = d.ok(&["domain", "join-info", "dmstest.nobody"]);
    let tfile = d.dir.join("target.json");
    std::fs::write(&tfile, &target).unwrap();
    let init = serde_json::from_str::<Value>(&target).unwrap()["init_pid"]
        .as_i64()
        .unwrap();
    // dms-enter calls dms_join::join, then forks the command; while the command sleeps, the
    // joined process itself is checked from outside.
    let enter = KillOnDrop(
        Command::new(bin("dms-enter"))
            .arg(&tfile)
            .args(["sh", "-c", "echo $$; cat /proc/self/cgroup; sleep 30"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let joined = enter.0.id().to_string();
    wait_until(
        "dms-enter in the domain's cgroup",
        Duration::from_secs(5),
        || cgroup_procs(&d.subtree, "dmstest.nobody").contains(&(enter.0.id() as i32)),
    );
    let init_ns = ns_links(&init.to_string());
    let mine = ns_links(&joined);
    for ((n, a), (_, b)) in init_ns.iter().zip(&mine) {
        if n != "pid" {
            assert_eq!(a, b, "joined process is not in the domain's {n} namespace");
        }
    }
    // The pid namespace applies to its children.
    let pfc = std::fs::read_link(format!("/proc/{joined}/ns/pid_for_children")).unwrap();
    assert_eq!(pfc.display().to_string(), init_ns[5].1);
    let ps = d.ok(&["exec", "dmstest.nobody", "--", "ps", "-e", "-o", "comm="]);
    assert!(ps.contains("sleep") && !ps.contains("dms-enter"), "{ps}");
    drop(enter);
    // A dead or recycled init is refused with a clear error and changes nothing.
    let mut bad: Value = serde_json::from_str(&target).unwrap();
    bad["init_start"] = Value::from(bad["init_start"].as_u64().unwrap() + 1);
    std::fs::write(&tfile, bad.to_string()).unwrap();
    let o = Command::new(bin("dms-enter"))
        .arg(&tfile)
        .arg("true")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("was replaced"),
        "{o:?}"
    );
}

const USERNS_POLICY: &str = r#"
[vo.dmsuserns]
userns = true
network = { mode = "none" }
[vo.dmsplain]
network = { mode = "none" }
"#;

/// A setuid-root copy of `id` in a directory every domain sees and that allows setuid (the
/// domains' /tmp is private and nosuid); removed on drop.
struct SetuidId(PathBuf);

impl SetuidId {
    fn new() -> SetuidId {
        use std::os::unix::fs::PermissionsExt;
        let dir = ["/var/tmp", "/run"]
            .into_iter()
            .find(|d| {
                nix::sys::statvfs::statvfs(*d).is_ok_and(|v| {
                    !v.flags().contains(nix::sys::statvfs::FsFlags::ST_NOSUID)
                        && !v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY)
                })
            })
            .expect("a writable directory without nosuid (/var/tmp or /run)");
        let path = PathBuf::from(format!("{dir}/dmstest-suid-id-{}", std::process::id()));
        std::fs::copy("/usr/bin/id", &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o4755)).unwrap();
        SetuidId(path)
    }
}

impl Drop for SetuidId {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn user_namespace_domains_confine_root_and_setuid() {
    if !can_run() {
        return;
    }
    let d = Daemon::start_extra("userns", USERNS_POLICY);
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmsuserns"]);
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmsplain"]);
    let (us, plain) = ("dmsuserns.nobody", "dmsplain.nobody");
    let run = |domain: &str, user: &str, script: &str| {
        d.ctl(&["exec", "--user", user, domain, "--", "sh", "-c", script])
    };
    let out = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).trim().to_string();
    // Every id maps onto itself: the owner is who it is outside, root is root.
    let map = out(&run(
        us,
        "nobody",
        "cat /proc/self/uid_map /proc/self/gid_map",
    ));
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "4294967295", "0", "0", "4294967295"],
        "{map}"
    );
    assert_eq!(out(&run(us, "nobody", "id -u")), NOBODY.to_string());
    assert_eq!(out(&run(us, "root", "id -u")), "0");
    // The domain's other namespaces are those of the init, as without a user namespace.
    let init = d.json(&["domain", "join-info", us])["init_pid"]
        .as_i64()
        .unwrap();
    let init_ns = ns_links(&init.to_string());
    let user_ns = |pid: &str| {
        std::fs::read_link(format!("/proc/{pid}/ns/user"))
            .unwrap()
            .display()
            .to_string()
    };
    assert_ne!(user_ns(&init.to_string()), user_ns("self"));
    let seen = out(&run(
        us,
        "nobody",
        "readlink /proc/self/ns/uts /proc/self/ns/user; hostname",
    ));
    let uts = init_ns.iter().find(|(n, _)| n == "uts").unwrap().1.clone();
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        [uts.as_str(), user_ns(&init.to_string()).as_str(), us]
    );
    // A setuid-root program raises privileges in a plain domain, not in a userns domain.
    let suid = SetuidId::new();
    let prog = suid.0.display().to_string();
    let o = run(plain, "nobody", &prog);
    assert!(
        out(&o).contains("euid=0"),
        "setuid works in a plain domain: {o:?}"
    );
    let o = run(
        us,
        "nobody",
        &format!("{prog}; grep NoNewPrivs /proc/self/status"),
    );
    assert!(o.status.success(), "{o:?}");
    assert!(
        out(&o).starts_with(&format!("uid={NOBODY}"))
            && !out(&o).contains("euid=")
            && out(&o).ends_with("NoNewPrivs:\t1"),
        "setuid-root raised privileges in a userns domain: {o:?}"
    );
    // An admin's command as root keeps root's files, but no capability over the domain's
    // namespaces (network, hostname, mounts); in a plain domain it has them.
    let files = "touch /tmp/f && chown 1 /tmp/f && echo files";
    assert_eq!(out(&run(us, "root", files)), "files");
    let privileged = "ip link set lo down && hostname renamed && echo done";
    let o = run(plain, "root", privileged);
    assert_eq!(out(&o), "done", "{o:?}");
    let o = run(us, "root", privileged);
    assert!(!o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Operation not permitted"),
        "{o:?}"
    );
    let o = run(us, "root", "mount -t tmpfs none /mnt");
    assert!(!o.status.success(), "{o:?}");
    assert_eq!(out(&run(us, "nobody", "hostname")), us);
    // The join library (pam_dms, dms-enter) enters the user namespace too, last; the
    // caller then switches users as sshd or su would.
    let tfile = d.dir.join("target.json");
    std::fs::write(&tfile, d.ok(&["domain", "join-info", us])).unwrap();
    let o = Command::new(bin("dms-enter"))
        .args(["--user", "nobody"])
        .arg(&tfile)
        .args(["sh", "-c", "readlink /proc/self/ns/user; id -u; hostname"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        out(&o).lines().collect::<Vec<_>>(),
        [user_ns(&init.to_string()).as_str(), "65534", us]
    );
    // Destroying it leaves nothing behind, as for any domain.
    d.ok(&["domain", "destroy", us]);
    assert!(cgroup_procs(&d.subtree, us).is_empty());
    let o = d.ctl(&["exec", us, "--", "true"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
}

/// A network namespace outside DMS, linked to the host by a veth pair on 198.18.<200+n>.0/30
/// (host .1, peer .2); removed on drop.
struct PeerNs {
    name: String,
    host_if: String,
    host_ip: String,
    peer_ip: String,
}

impl PeerNs {
    fn new(n: u32) -> PeerNs {
        let p = PeerNs {
            name: format!("dmst-peer-{n}-{}", std::process::id()),
            host_if: format!("dmst{n}peer"),
            host_ip: format!("198.18.{}.1", 200 + n),
            peer_ip: format!("198.18.{}.2", 200 + n),
        };
        let sh = |args: &[&str]| {
            let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
            assert!(
                o.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        sh(&["ip", "netns", "add", &p.name]);
        sh(&[
            "ip", "link", "add", &p.host_if, "type", "veth", "peer", "name", "eth0", "netns",
            &p.name,
        ]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", p.host_ip),
            "dev",
            &p.host_if,
        ]);
        sh(&["ip", "link", "set", &p.host_if, "up"]);
        sh(&[
            "ip",
            "-n",
            &p.name,
            "addr",
            "add",
            &format!("{}/30", p.peer_ip),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &p.name, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &p.name, "link", "set", "lo", "up"]);
        p
    }

    fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }
}

impl Drop for PeerNs {
    fn drop(&mut self) {
        // Kills iperf3 servers left in it too.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// Host links whose name starts with `prefix`.
fn links_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Whether `name` is the host end of a spare init's veth pair: `<prefix>x<n>`, down and on no
/// bridge (a NAT domain that takes the spare puts it on the bridge, up).
fn is_spare_link(prefix: &str, name: &str) -> bool {
    let numbered = name
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('x'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let sys = Path::new("/sys/class/net").join(name);
    numbered
        && !sys.join("master").exists()
        && std::fs::read_to_string(sys.join("operstate")).is_ok_and(|s| s.trim() == "down")
}

/// Host links of domains (not of spare inits) whose name starts with `prefix`.
fn domain_links(prefix: &str) -> Vec<String> {
    links_with_prefix(prefix)
        .into_iter()
        .filter(|l| !is_spare_link(prefix, l))
        .collect()
}

/// The kernel deletes a domain's veth pair with its network namespace, asynchronously. Spare
/// inits' links stay, at most the default spare_inits (2) of them.
fn wait_links_gone(prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !domain_links(prefix).is_empty() {
        assert!(
            Instant::now() < deadline,
            "links left: {:?}",
            links_with_prefix(prefix)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let spares = links_with_prefix(prefix);
    assert!(spares.len() <= 2, "more links than spares: {spares:?}");
}

fn nft_table(fam: &str, table: &str) -> String {
    let o = Command::new("nft")
        .args(["list", "table", fam, table])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const NET_POLICY: &str = r#"
[vo.dmsnet]
network = { mode = "nat", ports = ["PORT:8080"] }
[vo.dmsiso]
network = { mode = "nat" }
[vo.dmsopen]
network = { mode = "nat", isolated = false }
[vo.dmsnone]
network = { mode = "none" }
[vo.dmsbusy]
network = { mode = "nat", ports = ["BUSY:80"] }
[vo.dmsmissing]
paths = { private = ["/nonexistent-dms-test"] }
[vo.dmspaths]
network = { mode = "none" }
paths = { private = ["/var/tmp"], readonly = ["/etc"] }
"#;

#[test]
fn nat_network_isolation_and_port_forwards() {
    if !can_run() {
        return;
    }
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let fwd_port = {
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let policy = NET_POLICY
        .replace("PORT", &fwd_port.to_string())
        .replace("BUSY", &busy_port.to_string());
    let d = Daemon::start_extra("nat", &policy);
    let n = d.net;
    let peer = PeerNs::new(n);
    for (user, vo) in [
        ("nobody", "dmsnet"),
        ("nobody", "dmsiso"),
        ("nobody", "dmsopen"),
        ("daemon", "dmsopen"),
        ("nobody", "dmsnone"),
    ] {
        d.ok(&["domain", "create", "--user", user, "--vo", vo]);
    }
    let addr = |name: &str| {
        d.json(&["domain", "show", name])["runtime"]["net"]["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ping = |name: &str, ip: &str| {
        d.ctl(&["exec", name, "--", "ping", "-c1", "-W2", ip])
            .status
            .success()
    };
    // Where a path must work, a first packet lost to neighbour resolution is not a failure.
    let reach = |name: &str, ip: &str| (0..3).any(|_| ping(name, ip));
    let gw = format!("198.19.{n}.1");
    // The first NAT domain got its pair made on demand (no linked spare yet): IPv4 only too.
    let v6 = d.ok(&[
        "exec",
        "dmsnet.nobody",
        "--",
        "cat",
        "/proc/sys/net/ipv6/conf/eth0/disable_ipv6",
    ]);
    assert_eq!(v6.trim(), "1", "IPv6 on the on-demand eth0");
    // Out through NAT to a namespace the test made, on its allowed path.
    assert!(reach("dmsnet.nobody", &gw));
    assert!(
        reach("dmsnet.nobody", &peer.peer_ip),
        "NAT to the peer namespace failed"
    );
    // Isolated domains cannot reach each other; open ones can reach each other only.
    assert!(
        !ping("dmsnet.nobody", &addr("dmsiso.nobody")),
        "isolated domains reached each other"
    );
    assert!(!ping("dmsiso.nobody", &addr("dmsnet.nobody")));
    assert!(
        reach("dmsopen.nobody", &addr("dmsopen.daemon")),
        "open domains cannot talk"
    );
    assert!(!ping("dmsopen.nobody", &addr("dmsiso.nobody")));
    // Mode none: loopback only.
    assert!(!ping("dmsnone.nobody", &gw));
    let v = d.json(&["domain", "show", "dmsnone.nobody"]);
    assert!(v["runtime"]["net"].is_null(), "{v}");
    // A forwarded port reaches a one-shot iperf3 server in the domain: `client` runs iperf3
    // against the host side of the forward.
    let forwarded = |client: &dyn Fn() -> Command| {
        let server = d.ok(&[
            "exec",
            "dmsnet.nobody",
            "--no-wait",
            "--",
            "iperf3",
            "-s",
            "-1",
            "-p",
            "8080",
        ]);
        assert!(!server.trim().is_empty());
        (0..50).any(|_| {
            let ok = client().output().unwrap().status.success();
            if !ok {
                std::thread::sleep(Duration::from_millis(100));
            }
            ok
        })
    };
    let port = fwd_port.to_string();
    // From the peer, through the host's address.
    assert!(
        forwarded(&|| peer.exec(&["iperf3", "-c", &peer.host_ip, "-p", &port, "-t", "1"])),
        "port forward {fwd_port} -> dmsnet.nobody:8080 did not work"
    );
    // From the host itself, on 127.0.0.1.
    assert!(
        forwarded(&|| {
            let mut c = Command::new("iperf3");
            c.args(["-c", "127.0.0.1", "-p", &port, "-t", "1"]);
            c
        }),
        "port forward 127.0.0.1:{fwd_port} -> dmsnet.nobody:8080 did not work"
    );
    // Bad input: port already forwarded, port in use on the host, missing policy path,
    // bridge name clash. Each leaves nothing behind.
    let links_before = domain_links(&format!("dmst{n}v"));
    let o = d.ctl(&["domain", "create", "--user", "daemon", "--vo", "dmsnet"]);
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("already forwarded to domain \"dmsnet.nobody\""),
        "{o:?}"
    );
    let o = d.ctl(&["domain", "create", "--user", "nobody", "--vo", "dmsbusy"]);
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in use on the host"),
        "{o:?}"
    );
    drop(busy);
    let o = d.ctl(&["domain", "create", "--user", "nobody", "--vo", "dmsmissing"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("paths.private = \"/nonexistent-dms-test\""),
        "{o:?}"
    );
    for name in ["dmsnet.daemon", "dmsbusy.nobody", "dmsmissing.nobody"] {
        assert_eq!(
            d.ctl(&["domain", "show", name]).status.code(),
            Some(3),
            "{name} left behind"
        );
        assert!(
            !cgroup_dir(&d.subtree, "pids").join(name).exists(),
            "{name} cgroup left"
        );
    }
    assert_eq!(domain_links(&format!("dmst{n}v")), links_before);
    // Destroy removes links, forwards and open-set entries.
    for name in [
        "dmsnet.nobody",
        "dmsiso.nobody",
        "dmsopen.nobody",
        "dmsopen.daemon",
        "dmsnone.nobody",
    ] {
        d.ok(&["domain", "destroy", name]);
    }
    wait_links_gone(&format!("dmst{n}v"));
    let rules = nft_table("inet", &format!("dmstest{n}"));
    assert!(!rules.contains("elements"), "{rules}");
}

#[test]
fn private_and_readonly_policy_paths() {
    if !can_run() {
        return;
    }
    let d = Daemon::start_extra(
        "paths",
        &NET_POLICY.replace("PORT", "1").replace("BUSY", "2"),
    );
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmspaths"]);
    let marker = format!("/var/tmp/dms-marker-{}", std::process::id());
    d.ok(&[
        "exec",
        "--user",
        "root",
        "dmspaths.nobody",
        "--",
        "touch",
        &marker,
    ]);
    assert!(!Path::new(&marker).exists(), "/var/tmp is not private");
    let o = d.ctl(&[
        "exec",
        "--user",
        "root",
        "dmspaths.nobody",
        "--",
        "touch",
        "/etc/dms-test-ro",
    ]);
    assert!(!o.status.success(), "/etc is writable in the domain");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Read-only file system"),
        "{o:?}"
    );
    assert!(!Path::new("/etc/dms-test-ro").exists());
}

#[test]
fn bridge_name_clash_and_pool_exhaustion_are_clear_errors() {
    if !can_run() {
        return;
    }
    // A pool of /29: addresses .2 to .6 for five domains.
    let d = Daemon::start_prepared(
        "pool",
        Vec::new(),
        vec!["--system-bus".into(), "no".into()],
        |dir| {
            let cfg = std::fs::read_to_string(dir.join("dmsd.toml")).unwrap();
            let cfg = cfg.replace(".0/24", ".0/29");
            std::fs::write(dir.join("dmsd.toml"), cfg).unwrap();
            std::fs::write(
                dir.join("policies/extra.toml"),
                "[vo.dmsiso]\ngranularity = \"user\"\n",
            )
            .unwrap();
        },
    );
    let n = d.net;
    let users = ["nobody", "daemon", "bin", "sys", "sync"];
    for u in users {
        d.ok(&["domain", "create", "--user", u, "--vo", "dmsiso"]);
    }
    let o = d.ctl(&["domain", "create", "--user", "games", "--vo", "dmsiso"]);
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains(&format!("address pool 198.19.{n}.0/29 is exhausted")),
        "{o:?}"
    );
    assert_eq!(
        d.ctl(&["domain", "show", "dmsiso.games"]).status.code(),
        Some(3)
    );
    for u in users {
        d.ok(&["domain", "destroy", &format!("dmsiso.{u}")]);
    }
    drop(d);
    // The daemon removed its bridge and tables when it stopped.
    assert!(links_with_prefix(&format!("dmst{n}br")).is_empty());
    assert!(nft_table("inet", &format!("dmstest{n}")).is_empty());
    // Someone else's interface under the bridge name: refused, never reused.
    let d = Daemon::start_extra("clash", "[vo.dmsiso]\n");
    let n = d.net;
    let br = format!("dmst{n}br");
    // (This kernel has no dummy links; a veth pair serves.)
    let peer_end = format!("dmst{n}bx");
    let made = Command::new("ip")
        .args([
            "link", "add", &br, "type", "veth", "peer", "name", &peer_end,
        ])
        .status()
        .unwrap();
    assert!(made.success());
    let o = d.ctl(&["domain", "create", "--user", "nobody", "--vo", "dmsiso"]);
    let _ = Command::new("ip").args(["link", "del", &br]).status();
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is not DMS's"),
        "{o:?}"
    );
    assert!(!cgroup_dir(&d.subtree, "pids")
        .join("dmsiso.nobody")
        .exists());
}

/// What one iperf3 run between a domain and the peer namespace measured.
struct Goodput {
    /// Over the whole run, as the receiver counted it, bit/s.
    mean: f64,
    /// The median of the run's half-second intervals, bit/s: what the shaper lets through
    /// while sender and receiver get the CPU. A shared VM's host can stop both for hundreds of
    /// milliseconds (steal), which lowers the mean but not the rate the shaper allows.
    median_interval: f64,
    /// The share of the machine's CPU time the hypervisor stole during the run.
    steal: f64,
}

/// One iperf3 run from `domain` to the peer namespace (`reverse`: from the peer to the domain).
fn iperf(d: &Daemon, domain: &str, peer: &PeerNs, reverse: bool) -> Goodput {
    let mut args = vec![
        "exec",
        domain,
        "--",
        "iperf3",
        "-c",
        &peer.peer_ip,
        "-t",
        "5",
        "-O",
        "1",
        "-i",
        "0.5",
        "-J",
    ];
    // The receiver counts: with -R the client itself, else the server, whose report it fetches.
    args.push(if reverse { "-R" } else { "--get-server-output" });
    let before = CpuTimes::now();
    let out = d.ok(&args);
    let (_, steal) = CpuTimes::now().shares_since(&before);
    let v: Value = serde_json::from_str(&out).unwrap();
    // The server runs with -J, so its report is JSON too.
    let receiver = if reverse {
        &v
    } else {
        &v["server_output_json"]
    };
    let mut intervals: Vec<f64> = receiver["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| !i["sum"]["omitted"].as_bool().unwrap_or(false))
        .filter_map(|i| i["sum"]["bits_per_second"].as_f64())
        .collect();
    assert!(
        !intervals.is_empty(),
        "iperf3 reported no receiver intervals: {out}"
    );
    intervals.sort_by(f64::total_cmp);
    Goodput {
        mean: v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap(),
        median_interval: intervals[intervals.len() / 2],
        steal,
    }
}

#[test]
fn bandwidth_limits_hold_in_both_directions() {
    if !can_run() {
        return;
    }
    let _quiet = quiet_machine();
    let d = Daemon::start_extra(
        "bw",
        r#"
[vo.dmsbwa]
network = { mode = "nat", egress = "20mbit", ingress = "100mbit" }
[vo.dmsbwb]
network = { mode = "nat", egress = "100mbit", ingress = "20mbit", shaper = "tbf" }
"#,
    );
    let peer = PeerNs::new(d.net);
    let _server = KillOnDrop(
        peer.exec(&["iperf3", "-s", "-J", "-B", &peer.peer_ip])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmsbwa"]);
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmsbwb"]);
    wait_until("iperf3 server", Duration::from_secs(5), || {
        d.ctl(&[
            "exec",
            "dmsbwa.nobody",
            "--",
            "ping",
            "-c1",
            "-W1",
            &peer.peer_ip,
        ])
        .status
        .success()
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut report = Vec::new();
    for (domain, reverse, limit) in [
        ("dmsbwa.nobody", false, 20e6),
        ("dmsbwa.nobody", true, 100e6),
        ("dmsbwb.nobody", false, 100e6),
        ("dmsbwb.nobody", true, 20e6),
    ] {
        let dir = if reverse { "ingress" } else { "egress" };
        // The shaper must never let more than the limit through, on any run. Reaching the
        // limit needs a sender that gets the CPU: a shared VM can stall it for seconds (a
        // rehearsal saw 60 % steal), so the rate is the median of half-second intervals, and
        // up to five runs, of which the best must come within 10 %.
        let mut best: f64 = 0.0;
        for attempt in 1..=5 {
            let got = iperf(&d, domain, &peer, reverse);
            eprintln!(
                "{domain} {dir}: limit {:.0} Mbit/s, run {attempt}: goodput {:.2} Mbit/s, \
                 median of half-second intervals {:.2} Mbit/s, CPU steal {:.0}%",
                limit / 1e6,
                got.mean / 1e6,
                got.median_interval / 1e6,
                got.steal * 100.0
            );
            assert!(
                got.mean / limit <= 1.1,
                "{domain} {dir}: {:.2} Mbit/s exceeds the {:.0} Mbit/s limit by more than 10%",
                got.mean / 1e6,
                limit / 1e6
            );
            best = best.max(got.median_interval);
            if best / limit >= 0.9 {
                break;
            }
        }
        report.push((domain, dir, limit, best));
    }
    for (domain, dir, limit, got) in report {
        assert!(
            got / limit >= 0.9,
            "{domain} {dir}: the best of five runs, {:.2} Mbit/s, is not within 10% of {:.0} Mbit/s",
            got / 1e6,
            limit / 1e6
        );
    }
}

#[test]
fn no_leftovers_after_many_networked_domains_and_a_crash() {
    if !can_run() {
        return;
    }
    let mut d = Daemon::start_extra(
        "leak",
        "[vo.dmsleak]\ngranularity = \"job\"\nnetwork = { mode = \"nat\", egress = \"50mbit\", ingress = \"50mbit\" }\n",
    );
    let n = d.net;
    let prefix = format!("dmst{n}v");
    let sock = d.sock();
    let ctl = bin("dmsctl");
    for i in 0..200 {
        let job = i.to_string();
        d.ok(&[
            "domain", "create", "--user", "nobody", "--vo", "dmsleak", "--job", &job,
        ]);
        d.ok(&["domain", "destroy", &format!("dmsleak.nobody.job{i}")]);
    }
    wait_links_gone(&prefix);
    // Now a crash in the middle of a burst of creations, once some have been made (a fixed
    // delay saw none on a VM whose host stole 60 % of its CPU).
    let created = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let made = std::sync::Arc::clone(&created);
    let creator = std::thread::spawn(move || {
        for i in 1000..1040 {
            let o = Command::new(&ctl)
                .args([
                    "--socket",
                    &sock,
                    "domain",
                    "create",
                    "--user",
                    "nobody",
                    "--vo",
                    "dmsleak",
                    "--job",
                    &i.to_string(),
                ])
                .output();
            if o.is_ok_and(|o| o.status.success()) {
                made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    wait_until("two domains created", Duration::from_secs(30), || {
        created.load(std::sync::atomic::Ordering::SeqCst) >= 2
    });
    d.kill9();
    creator.join().unwrap();
    d.spawn();
    let list = d.json(&["domain", "list"]);
    let names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !names.is_empty(),
        "nothing was created before the crash; log:\n{}",
        d.log()
    );
    // The survivors are intact and usable; then all go.
    for name in &names {
        let v = d.json(&["domain", "show", name]);
        assert_eq!(v["state"], "running", "{v}");
        assert!(links_with_prefix(&prefix)
            .contains(&v["runtime"]["net"]["host_if"].as_str().unwrap().to_string()));
        d.ok(&["domain", "destroy", name]);
    }
    wait_links_gone(&prefix);
    // The spares with links died with the crashed daemon's zygote, and no NAT domain was
    // created since: nothing with the prefix is left at all.
    assert_eq!(links_with_prefix(&prefix), Vec::<String>::new());
    let rules = nft_table("inet", &format!("dmstest{n}"));
    assert!(!rules.contains("elements"), "{rules}");
    let sub = cgroup_dir(&d.subtree, "pids");
    let groups: Vec<_> = std::fs::read_dir(&sub)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(groups.is_empty(), "cgroups left: {groups:?}");
    // No domain init survives (their pid namespaces and network namespaces die with them).
    let subtree = d.subtree.clone();
    let inits_left = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("cgroup")).is_ok_and(|c| c.contains(&subtree))
        })
        .count();
    assert_eq!(inits_left, 0);
    drop(d);
    assert!(
        links_with_prefix(&format!("dmst{n}br")).is_empty(),
        "bridge left"
    );
    assert!(
        nft_table("bridge", &format!("dmstest{n}")).is_empty(),
        "nft table left"
    );
}

/// NAT domains take spare inits that made their veth pair ahead of time: kept only once a NAT
/// domain asked, configured by the init at the claim, put on the bridge by the daemon, and gone
/// with the zygote after `kill -9`.
#[test]
fn nat_network_spares_have_their_veth_pair_made_ahead() {
    if !can_run() {
        return;
    }
    let mut d = Daemon::start_extra(
        "sparenat",
        "[vo.dmssparenat]\nnetwork = { mode = \"nat\" }\n",
    );
    let dmsd = d.child.as_ref().unwrap().id() as i32;
    let zygote = children_named(dmsd, "dmsd")[0];
    let prefix = format!("dmst{}v", d.net);
    wait_until("2 spare inits", Duration::from_secs(60), || {
        children_named(zygote, "dms-spare").len() == 2
    });
    // No spare has a veth pair until a NAT domain asks for one.
    assert_eq!(links_with_prefix(&prefix), Vec::<String>::new());
    d.ok(&[
        "domain",
        "create",
        "--user",
        "nobody",
        "--vo",
        "dmssparenat",
    ]);
    let mut linked = Vec::new();
    wait_until("2 more spares, with links", Duration::from_secs(60), || {
        linked = links_with_prefix(&prefix)
            .into_iter()
            .filter(|l| is_spare_link(&prefix, l))
            .collect();
        linked.len() == 2 && children_named(zygote, "dms-spare").len() == 4
    });
    d.ok(&[
        "domain",
        "create",
        "--user",
        "daemon",
        "--vo",
        "dmssparenat",
    ]);
    let v = d.json(&["domain", "show", "dmssparenat.daemon"]);
    let host_if = v["runtime"]["net"]["host_if"].as_str().unwrap().to_string();
    assert!(
        linked.contains(&host_if),
        "{host_if} is not one of {linked:?}"
    );
    assert!(
        !is_spare_link(&prefix, &host_if),
        "{host_if} is still down or unbridged"
    );
    let bridge = format!("dmst{}br", d.net);
    assert!(
        std::fs::read_link(format!("/sys/class/net/{host_if}/master"))
            .unwrap()
            .ends_with(&bridge),
        "{host_if} is not on {bridge}"
    );
    let address = v["runtime"]["net"]["address"].as_str().unwrap();
    let inside = d.ok(&[
        "exec",
        "dmssparenat.daemon",
        "--",
        "ip",
        "-4",
        "-o",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(inside.contains(&format!("inet {address}/")), "{inside}");
    // IPv4 only on both ends (no IPv6 addrconf work per domain); lo keeps ::1.
    let v6 = d.ok(&[
        "exec",
        "dmssparenat.daemon",
        "--",
        "cat",
        "/proc/sys/net/ipv6/conf/eth0/disable_ipv6",
        "/proc/sys/net/ipv6/conf/lo/disable_ipv6",
    ]);
    assert_eq!(
        v6.split_whitespace().collect::<Vec<_>>(),
        ["1", "0"],
        "{v6}"
    );
    let host_v6 =
        std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6")).unwrap();
    assert_eq!(host_v6.trim(), "1", "IPv6 on {host_if}");
    let routes = d.ok(&["exec", "dmssparenat.daemon", "--", "ip", "route"]);
    let gateway = v["runtime"]["net"]["gateway"].as_str().unwrap();
    assert!(
        routes.starts_with(&format!("default via {gateway} dev eth0")),
        "{routes}"
    );
    // Reachable: the domain answers from its address on the bridge (ICMP to 198.19.0.0/16).
    let ping = Command::new("ping")
        .args(["-c", "1", "-W", "5", address])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{ping:?}");
    // kill -9 of the daemon: the spares go with the zygote, and their links with their network
    // namespaces; the domains stay and the restarted daemon adopts them.
    let spares = children_named(zygote, "dms-spare");
    d.kill9();
    wait_until("spares gone", Duration::from_secs(10), || {
        spares.iter().all(|p| !alive(*p))
    });
    wait_until("spare links gone", Duration::from_secs(10), || {
        links_with_prefix(&prefix)
            .iter()
            .all(|l| !is_spare_link(&prefix, l))
    });
    d.spawn();
    for name in ["dmssparenat.nobody", "dmssparenat.daemon"] {
        assert_eq!(d.json(&["domain", "show", name])["state"], "running");
        d.ok(&["domain", "destroy", name]);
    }
    wait_links_gone(&prefix);
    assert_eq!(links_with_prefix(&prefix), Vec::<String>::new());
}

/// Processes whose parent is `ppid` and whose name is `comm`.
fn children_named(ppid: i32, comm: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may hold spaces, so split at the last ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, n)| n);
        let parent = tail.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if name == comm && parent == Some(ppid) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

#[test]
fn spare_inits_become_domain_inits_and_die_with_the_daemon() {
    if !can_run() {
        return;
    }
    let mut d = Daemon::start_extra(
        "spare",
        "[vo.dmsspare]\nnetwork = { mode = \"none\" }\n\
         [vo.dmssparepaths]\nnetwork = { mode = \"none\" }\npaths = { private = [\"/var/tmp\"] }\n",
    );
    let dmsd = d.child.as_ref().unwrap().id() as i32;
    let zygote = children_named(dmsd, "dmsd");
    assert_eq!(
        zygote.len(),
        1,
        "the zygote is dmsd's only child named dmsd"
    );
    let zygote = zygote[0];
    // The default spare_inits = 2, started while the zygote has nothing else to do.
    let mut spares = Vec::new();
    wait_until("2 spare inits", Duration::from_secs(60), || {
        spares = children_named(zygote, "dms-spare");
        spares.len() == 2
    });
    // A spare holds namespaces of its own, but no cgroup namespace yet (it has no domain).
    for ((ns, ours), (_, its)) in ns_links("self")
        .iter()
        .zip(ns_links(&spares[0].to_string()))
    {
        if ns == "cgroup" {
            assert_eq!(ours, &its, "{ns}");
        } else {
            assert_ne!(ours, &its, "{ns}");
        }
    }
    // A domain without policy paths takes one: it is then the domain's init, named so, with the
    // domain's hostname and cgroups, and a new spare replaces it.
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmsspare"]);
    let init = d.json(&["domain", "join-info", "dmsspare.nobody"])["init_pid"]
        .as_i64()
        .unwrap() as i32;
    assert!(
        spares.contains(&init),
        "init {init} was not one of the spares {spares:?}"
    );
    assert_eq!(children_named(zygote, "dms-init"), [init]);
    assert_eq!(
        d.ok(&["exec", "dmsspare.nobody", "--", "hostname"]).trim(),
        "dmsspare.nobody"
    );
    assert_eq!(
        d.ok(&[
            "exec",
            "dmsspare.nobody",
            "--",
            "ps",
            "-e",
            "-o",
            "pid=,comm="
        ])
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>(),
        ["1", "dms-init"]
    );
    assert_eq!(cgroup_procs(&d.subtree, "dmsspare.nobody"), [init]);
    assert_eq!(
        d.ok(&["exec", "dmsspare.nobody", "--", "cat", "/proc/self/cgroup"])
            .lines()
            .filter(|l| !l.ends_with(":/"))
            .collect::<Vec<_>>(),
        Vec::<&str>::new(),
        "the cgroup namespace is rooted at the domain's groups"
    );
    let mut refilled = Vec::new();
    wait_until("a new spare", Duration::from_secs(60), || {
        refilled = children_named(zygote, "dms-spare");
        refilled.len() == 2
    });
    assert!(!refilled.contains(&init));
    // A domain with private paths gets an init made for it; the spares stay.
    d.ok(&[
        "domain",
        "create",
        "--user",
        "nobody",
        "--vo",
        "dmssparepaths",
    ]);
    let init2 = d.json(&["domain", "join-info", "dmssparepaths.nobody"])["init_pid"]
        .as_i64()
        .unwrap() as i32;
    assert!(!refilled.contains(&init2));
    assert_eq!(children_named(zygote, "dms-spare"), refilled);
    // kill -9 of the daemon: the spares go with the zygote, the domains' inits stay and the
    // restarted daemon adopts them.
    d.kill9();
    wait_until("spares gone", Duration::from_secs(10), || {
        refilled.iter().all(|p| !alive(*p))
    });
    assert!(alive(init) && alive(init2));
    d.spawn();
    let v = d.json(&["domain", "show", "dmsspare.nobody"]);
    assert_eq!(v["state"], "running", "{v}");
    d.ok(&["domain", "destroy", "dmsspare.nobody"]);
    d.ok(&["domain", "destroy", "dmssparepaths.nobody"]);
    assert!(!alive(init) && !alive(init2));
    drop(d);

    // spare_inits = 0: none.
    let d = Daemon::start_prepared(
        "nospare",
        Vec::new(),
        vec!["--system-bus".into(), "no".into()],
        |dir| {
            let conf = dir.join("dmsd.toml");
            let text = std::fs::read_to_string(&conf).unwrap();
            std::fs::write(&conf, format!("spare_inits = 0\n{text}")).unwrap();
        },
    );
    let dmsd = d.child.as_ref().unwrap().id() as i32;
    let zygote = children_named(dmsd, "dmsd")[0];
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmsexec"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(children_named(zygote, "dms-spare"), Vec::<i32>::new());
    assert_eq!(children_named(zygote, "dms-init").len(), 1);
}
