//! Shared harness of the root integration tests: a real dmsd per test with its own state,
//! policies, sockets and cgroup subtree, driven through dmsctl.
#![allow(clippy::unwrap_used, missing_debug_implementations)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("DMS_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/debug")
        .join(name)
}

/// Whether these tests can run here; prints why not.
pub fn can_run() -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("not root".to_string())
    } else if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        && !Path::new("/sys/fs/cgroup/freezer").exists()
    {
        Some("no cgroup freezer (v1) or cgroup v2 hierarchy".into())
    } else if !bin("dmsd").exists() {
        Some(format!(
            "{} not built (run cargo build first)",
            bin("dmsd").display()
        ))
    } else {
        None
    };
    match why {
        None => true,
        Some(w) => skipped(&w),
    }
}

/// Reports why a test cannot run here and returns false; with DMS_REQUIRE_ROOT_TESTS set
/// (as in CI) a skip is a failure instead.
pub fn skipped(why: &str) -> bool {
    assert!(
        std::env::var("DMS_REQUIRE_ROOT_TESTS").is_err(),
        "root tests required but cannot run: {why}"
    );
    eprintln!("SKIPPED: {why}");
    false
}

pub const POLICY: &str = r#"
# Loopback only: these VOs test cgroups and namespaces, also in the cgroup v2 guest, whose
# kernel has no veth/bridge/nftables modules loaded. NAT is tested by the network tests.
[vo.dmstest]
granularity = "user"
network = { mode = "none" }
cpu = { limit = "50%" }
memory = { limit = "64M" }
pids = 32
owner_may = ["freeze", "thaw"]

[[vo.dmstest.role]]
fqan = "/dmstest/Role=big"
cpu = { limit = "1" }
pids = 64

# Owners may run commands in their domains.
[vo.dmsexec]
owner_may = ["exec", "freeze", "thaw"]
network = { mode = "none" }

# Valid as policy, refused by the kernel on this 2-CPU test machine: exercises rollback.
[vo.dmsbadcpu]
cpuset = { cpus = "7" }
"#;

/// A dmsd with its own state, policies, socket and cgroup subtree; torn down on drop, also
/// when the test fails.
/// Tests run two at a time; the bandwidth test needs the CPUs to itself (a starved iperf3
/// measures the CPU, not the shaper). Every daemon holds this shared; that test exclusively.
pub static QUIET: std::sync::RwLock<()> = std::sync::RwLock::new(());

thread_local! {
    /// Set on the thread that holds QUIET exclusively (its own daemon must not wait for it).
    static HOLDS_QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Waits until no other test runs a daemon, and keeps them out until dropped; then waits (up
/// to 30 s) for the CPUs to settle, as the kernel tears down earlier tests' namespaces and
/// cgroups in the background after their daemons are gone.
pub fn quiet_machine() -> std::sync::RwLockWriteGuard<'static, ()> {
    let g = QUIET.write().unwrap_or_else(|e| e.into_inner());
    HOLDS_QUIET.with(|h| h.set(true));
    let started = std::time::Instant::now();
    let mut idle = 0.0;
    while started.elapsed() < Duration::from_secs(30) {
        idle = cpu_idle_share(Duration::from_millis(500));
        if idle >= 0.75 {
            break;
        }
    }
    eprintln!(
        "quiet_machine: CPUs {:.0}% idle after {:.1} s",
        idle * 100.0,
        started.elapsed().as_secs_f64()
    );
    g
}

/// The share of CPU time spent idle over `window` (from /proc/stat; steal counts as busy).
fn cpu_idle_share(window: Duration) -> f64 {
    let before = CpuTimes::now();
    std::thread::sleep(window);
    let (idle, _) = CpuTimes::now().shares_since(&before);
    idle
}

/// The machine's CPU time so far, from the first line of /proc/stat (jiffies).
#[derive(Debug, Clone, Copy)]
pub struct CpuTimes {
    idle: u64,
    steal: u64,
    total: u64,
}

impl CpuTimes {
    pub fn now() -> CpuTimes {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|f| f.parse().ok())
            .collect();
        let at = |i: usize| fields.get(i).copied().unwrap_or(0);
        CpuTimes {
            idle: at(3) + at(4),
            steal: at(7),
            total: fields.iter().sum(),
        }
    }

    /// The shares of CPU time spent idle and stolen by the hypervisor since `before`
    /// (1.0 and 0.0 when no time passed).
    pub fn shares_since(&self, before: &CpuTimes) -> (f64, f64) {
        let total = self.total.saturating_sub(before.total);
        if total == 0 {
            return (1.0, 0.0);
        }
        let share = |now: u64, then: u64| now.saturating_sub(then) as f64 / total as f64;
        (
            share(self.idle, before.idle),
            share(self.steal, before.steal),
        )
    }
}

pub struct Daemon {
    /// Shared hold on QUIET (None on the thread that holds it exclusively).
    pub _load: Option<std::sync::RwLockReadGuard<'static, ()>>,
    pub dir: PathBuf,
    pub subtree: String,
    /// Number of this daemon's network settings (bridge dmst<n>br, pool 198.19.<n>.0/24,
    /// nft tables dmstest<n>, links dmst<n>v*).
    pub net: u32,
    pub child: Option<Child>,
    /// Extra environment and flags for dmsd (system bus tests).
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// Command prefix for dmsd (e.g. nsenter into a test's mount namespace).
    pub wrap: Vec<String>,
}

impl Daemon {
    pub fn start(tag: &str) -> Daemon {
        Self::start_with(tag, Vec::new(), vec!["--system-bus".into(), "no".into()])
    }

    /// A daemon with one more policy file.
    pub fn start_extra(tag: &str, policy: &str) -> Daemon {
        Self::start_prepared(
            tag,
            Vec::new(),
            vec!["--system-bus".into(), "no".into()],
            |dir| {
                std::fs::write(dir.join("policies/extra.toml"), policy).unwrap();
            },
        )
    }

    pub fn start_with(tag: &str, env: Vec<(String, String)>, args: Vec<String>) -> Daemon {
        Self::start_prepared(tag, env, args, |_| {})
    }

    pub fn start_prepared(
        tag: &str,
        env: Vec<(String, String)>,
        args: Vec<String>,
        prepare: impl FnOnce(&Path),
    ) -> Daemon {
        let mut d = Self::start_prepared_inner(tag, env, args, prepare);
        d.spawn();
        d
    }

    fn start_prepared_inner(
        tag: &str,
        env: Vec<(String, String)>,
        args: Vec<String>,
        prepare: impl FnOnce(&Path),
    ) -> Daemon {
        let base = std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into());
        let dir = PathBuf::from(base).join(format!("dms-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        std::fs::write(dir.join("policies/dmstest.toml"), POLICY).unwrap();
        static NEXT_NET: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let net = NEXT_NET.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::fs::write(
            dir.join("dmsd.toml"),
            format!(
                "[network]\nbridge = \"dmst{net}br\"\npool = \"198.19.{net}.0/24\"\n\
                 nft_table = \"dmstest{net}\"\nlink_prefix = \"dmst{net}v\"\n\
                 [accounts]\ngrid_mapfile = \"{d}/grid-mapfile\"\n\
                 group_mapfile = \"{d}/groupmapfile\"\nnss_dir = \"{d}/nss\"\n\
                 pam_socket = \"{p}\"\n\
                 [metrics]\nlisten = \"\"\nmonitor_interval_ms = 1000\n",
                d = dir.display(),
                p = pam_socket(&format!("dms-test-{tag}-{}", std::process::id())).display()
            ),
        )
        .unwrap();
        prepare(&dir);
        let load = if HOLDS_QUIET.with(|h| h.get()) {
            None
        } else {
            Some(QUIET.read().unwrap_or_else(|e| e.into_inner()))
        };
        let d = Daemon {
            _load: load,
            subtree: format!("dms-test-{tag}-{}", std::process::id()),
            net,
            dir,
            child: None,
            env,
            args,
            wrap: Vec::new(),
        };
        d
    }

    /// A daemon that is not started yet (set `wrap`, then call `spawn`).
    pub fn prepare(tag: &str, prepare: impl FnOnce(&Path)) -> Daemon {
        Self::start_prepared_inner(
            tag,
            Vec::new(),
            vec!["--system-bus".into(), "no".into()],
            prepare,
        )
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dmsd.log"))
            .unwrap();
        let mut cmd = match self.wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin("dmsd"));
                c
            }
            None => Command::new(bin("dmsd")),
        };
        let child = cmd
            .args([
                "--config",
                &self.dir.join("dmsd.toml").display().to_string(),
            ])
            .args(["--state-dir", &self.dir.join("state").display().to_string()])
            .args([
                "--policy-dir",
                &self.dir.join("policies").display().to_string(),
            ])
            .args(["--socket", &self.sock()])
            .args(["--cgroup-subtree", &self.subtree])
            .args(&self.args)
            .envs(self.env.iter().cloned())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Generous: under software emulation (the v2 guest) a start takes seconds.
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if self.ctl(&["status"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("dmsd did not come up; log:\n{}", self.log());
    }

    /// A loopback port for this daemon's HTTP endpoint (pass `--metrics-listen` with it).
    pub fn metrics_port(&self) -> u16 {
        19400 + self.net as u16
    }

    /// The session socket pam_dms.so talks to.
    pub fn pam_sock(&self) -> PathBuf {
        pam_socket(&self.subtree)
    }

    pub fn sock(&self) -> String {
        self.dir.join("dms.sock").display().to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dmsd.log")).unwrap_or_default()
    }

    pub fn ctl_as(&self, uid: Option<u32>, args: &[&str]) -> Output {
        let mut c = Command::new(bin("dmsctl"));
        c.arg("--socket")
            .arg(self.sock())
            .args(args)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null());
        if let Some(uid) = uid {
            use std::os::unix::process::CommandExt;
            c.uid(uid).gid(uid);
        }
        c.output().unwrap()
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_as(None, args)
    }

    /// Runs dmsctl, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.ctl(args);
        assert!(
            o.status.success(),
            "dmsctl {args:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// The `usage` object of `domain show NAME`.
    pub fn usage(&self, name: &str) -> Value {
        self.json(&["domain", "show", name])["usage"].clone()
    }

    pub fn cpu_ns(&self, name: &str) -> u64 {
        self.usage(name)["cpu_usage_ns"].as_u64().unwrap()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Destroy every domain through the API, stop the daemon, remove the subtree.
        if self.child.is_some() {
            let list = self.ctl(&["--json", "domain", "list"]);
            if let Ok(v) = serde_json::from_slice::<Value>(&list.stdout) {
                for d in v.as_array().into_iter().flatten() {
                    let _ = self.ctl(&["domain", "destroy", d["name"].as_str().unwrap_or("")]);
                }
            }
            if let Some(mut c) = self.child.take() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let _ = c.wait();
            }
        }
        for root in [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/cpu",
            "/sys/fs/cgroup/cpuacct",
            "/sys/fs/cgroup/cpuset",
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/freezer",
            "/sys/fs/cgroup/blkio",
            "/sys/fs/cgroup/pids",
        ] {
            let sub = Path::new(root).join(&self.subtree);
            if let Ok(entries) = std::fs::read_dir(&sub) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&sub);
        }
        // dmsd removes its bridge and tables when it stops with no NAT domain; this is for a
        // daemon that crashed.
        let n = self.net;
        let _ = Command::new("ip")
            .args(["link", "del", &format!("dmst{n}br")])
            .stderr(Stdio::null())
            .status();
        for fam in ["inet", "bridge"] {
            let _ = Command::new("nft")
                .args(["delete", "table", fam, &format!("dmstest{n}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.pam_sock());
    }
}

/// Whether a program is on PATH.
pub fn which(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One HTTP GET on loopback: (status code, body).
pub fn http_get(port: u16, path: &str, accept: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{accept}\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// A daemon's session socket: under /run, since a session's process calls it again from
/// inside its domain, where /tmp is private.
pub fn pam_socket(subtree: &str) -> PathBuf {
    PathBuf::from(format!("/run/{subtree}-pam.sock"))
}

/// The directory of the daemon's subtree (or a domain in it) for a controller: on v2 the one
/// unified directory, on v1 that controller's hierarchy.
pub fn cgroup_dir(subtree: &str, controller: &str) -> PathBuf {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        PathBuf::from("/sys/fs/cgroup").join(subtree)
    } else {
        Path::new("/sys/fs/cgroup").join(controller).join(subtree)
    }
}

pub fn wait_until(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    wait_until_or(what, timeout, f, String::new);
}

/// [`wait_until`], adding `context()` (e.g. the daemon's log) to the panic message.
pub fn wait_until_or(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
    context: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}\n{}", context());
}

pub const NOBODY: u32 = 65534;

/// Pids in a domain's cgroup (pids controller on v1).
pub fn cgroup_procs(subtree: &str, domain: &str) -> Vec<i32> {
    std::fs::read_to_string(
        cgroup_dir(subtree, "pids")
            .join(domain)
            .join("cgroup.procs"),
    )
    .unwrap_or_default()
    .lines()
    .filter_map(|l| l.trim().parse().ok())
    .collect()
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
}

/// The namespace links of a process, by name.
pub fn ns_links(pid: &str) -> Vec<(String, String)> {
    ["mnt", "uts", "ipc", "net", "cgroup", "pid"]
        .iter()
        .map(|n| {
            let l = std::fs::read_link(format!("/proc/{pid}/ns/{n}")).unwrap();
            (n.to_string(), l.display().to_string())
        })
        .collect()
}
