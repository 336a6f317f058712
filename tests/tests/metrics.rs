//! /metrics, /status, the Domain Monitor and usage records, against a real dmsd, real cgroups,
//! promtool and a real Prometheus server on loopback. Root only.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dms_integration::*;
use serde_json::Value;

/// Root tests that also need promtool and prometheus (scripts/deps.sh test installs them).
fn can_monitor() -> bool {
    if !can_run() {
        return false;
    }
    for prog in ["promtool", "prometheus"] {
        if !which(prog) {
            return skipped(&format!("{prog} not installed (run scripts/deps.sh test)"));
        }
    }
    true
}

fn metrics_daemon(tag: &str) -> Daemon {
    let mut d = Daemon::prepare(tag, |_| {});
    let port = d.metrics_port();
    d.args
        .extend(["--metrics-listen".into(), format!("127.0.0.1:{port}")]);
    d.spawn();
    d
}

/// The value of one series in a text exposition.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

fn cgroup_file(d: &Daemon, controller: &str, domain: &str, file: &str) -> u64 {
    let p = cgroup_dir(&d.subtree, controller).join(domain).join(file);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.trim().parse().unwrap()
}

#[test]
fn scrape_passes_promtool_and_matches_the_cgroup_files() {
    if !can_monitor() {
        return;
    }
    let d = metrics_daemon("scrape");
    let port = d.metrics_port();
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    d.ok(&["domain", "create", "--user", "daemon", "--vo", "dmsexec"]);
    d.ok(&[
        "domain",
        "run",
        "dmstest.nobody",
        "--no-wait",
        "--",
        "sleep",
        "600",
    ]);

    let (code, text) = http_get(port, "/metrics", None);
    assert_eq!(code, 200);
    // promtool's parser and linter: exit 0 and not a single lint problem.
    let dir = d.dir.join("scrape.txt");
    std::fs::write(&dir, &text).unwrap();
    let o = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&dir).unwrap())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );

    // Values agree with the kernel's files (v1 names here; the v2 guest has no promtool).
    let s = |series: &str| {
        sample(&text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    };
    assert_eq!(
        s(r#"dms_domain_spec_memory_limit_bytes{domain="dmstest.nobody"}"#),
        (64u64 << 20) as f64
    );
    assert_eq!(
        s(r#"dms_domain_spec_cpu_cores{domain="dmstest.nobody"}"#),
        0.5
    );
    assert_eq!(
        s(r#"dms_domain_spec_pids_limit{domain="dmstest.nobody"}"#),
        32.0
    );
    assert_eq!(
        s(r#"dms_domain_state{domain="dmstest.nobody",state="running"}"#),
        1.0
    );
    assert_eq!(
        s(
            r#"dms_domain_info{domain="dmstest.nobody",backend="container",vo="dmstest",group="",role="",account="nobody"}"#
        ),
        1.0
    );
    if cgroup_dir(&d.subtree, "memory").exists() {
        let usage = s(r#"dms_domain_memory_usage_bytes{domain="dmstest.nobody"}"#);
        let file = cgroup_file(&d, "memory", "dmstest.nobody", "memory.usage_in_bytes") as f64;
        // The kernel charges memory to a cgroup ahead, in per-CPU batches of 64 pages, and
        // hands a batch back when that CPU next charges another cgroup (promtool, above), so
        // two reads moments apart differ by up to 64 pages per CPU (a CI run saw 65 pages).
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let batch = 64.0 * 4096.0 * cpus;
        assert!(
            (usage - file).abs() <= file * 0.1 + batch + 65536.0,
            "memory usage {usage} vs memory.usage_in_bytes {file}"
        );
        let peak = s(r#"dms_domain_memory_max_usage_bytes{domain="dmstest.nobody"}"#);
        assert!(peak >= usage, "peak {peak} below usage {usage}");
    }
    let procs = s(r#"dms_domain_processes{domain="dmstest.nobody"}"#);
    assert_eq!(
        procs,
        cgroup_procs(&d.subtree, "dmstest.nobody").len() as f64
    );
    assert_eq!(s(r#"dms_domains{state="running"}"#), 2.0);
    assert_eq!(s("dms_node_committed_memory_bytes"), (64u64 << 20) as f64);
    // Identity labels stay on dms_domain_info: a usage series carries only the domain.
    assert!(text
        .lines()
        .filter(|l| l.starts_with("dms_domain_cpu_usage_seconds_total{"))
        .all(|l| l.matches('=').count() == 1));

    // OpenMetrics when asked for.
    let (_, om) = http_get(
        port,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    assert!(om.contains("# TYPE dms_domain_cpu_usage_seconds counter"));

    // /status: the documented schema, with quotas and usage.
    let (code, status) = http_get(port, "/status", None);
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["schema"], 1);
    assert!(v["node"]["cpus"].as_u64().unwrap() >= 1);
    let dom = v["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "dmstest.nobody")
        .unwrap()
        .clone();
    assert_eq!(dom["quotas"]["memory_bytes"], 64u64 << 20);
    assert_eq!(dom["account"], "nobody");
    assert!(dom["usage"]["processes"].as_u64().unwrap() >= 1);
    // dmsctl status reads the same document; an unprivileged owner sees only their domain.
    let mine = d.ctl_as(Some(65534), &["--json", "status"]);
    let mine: Value = serde_json::from_slice(&mine.stdout).unwrap();
    let names: Vec<&str> = mine["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dmstest.nobody"]);
    let table = d.ok(&["status"]);
    assert!(
        table.contains("dmstest.nobody") && table.contains("64M"),
        "{table}"
    );

    // Bad requests get answers, not hangs; the daemon keeps serving.
    assert_eq!(http_get(port, "/nope", None).0, 404);
    assert_eq!(http_get(port, "/healthz", None), (200, "ok\n".into()));

    // A domain destroyed between scrapes is simply gone.
    d.ok(&["domain", "destroy", "dmsexec.daemon"]);
    let (_, text) = http_get(port, "/metrics", None);
    assert!(!text.contains("dmsexec.daemon"));
}

/// A Prometheus server on loopback with its own data directory; stopped and removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Prometheus {
    fn start(base: &Path, target_port: u16, port: u16) -> Prometheus {
        let dir = base.join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
                 scrape_configs:\n  - job_name: dms\n    static_configs: [ {{ targets: ['127.0.0.1:{target_port}'] }} ]\n"
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        let p = Prometheus { child, dir, port };
        wait_until("prometheus ready", Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http_get(port, "/-/ready", None).0 == 200
        });
        p
    }

    /// One instant query; the first result's value.
    fn query(&self, promql: &str) -> Option<f64> {
        let enc: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) = http_get(self.port, &format!("/api/v1/query?query={enc}"), None);
        assert_eq!(code, 200, "query {promql}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
    }

    /// Polls a query until `ok` holds (the first samples take seconds to appear).
    fn wait_for(&self, promql: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.query(promql);
            if last.is_some_and(&ok) {
                return last.unwrap();
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        panic!(
            "{promql}: last value {last:?} within {timeout:?}; prometheus log tail:\n{}",
            tail(&log)
        );
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn prometheus_sees_the_cpu_limit_and_oom_kills() {
    if !can_monitor() {
        return;
    }
    let d = metrics_daemon("prom");
    let prom = Prometheus::start(&d.dir, d.metrics_port(), 19300 + d.net as u16);
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    // Two busy loops against a 50% CPU limit.
    for _ in 0..2 {
        d.ok(&[
            "domain",
            "run",
            "dmstest.nobody",
            "--no-wait",
            "--",
            "sh",
            "-c",
            "while :; do :; done",
        ]);
    }
    prom.wait_for(r#"up{job="dms"}"#, Duration::from_secs(60), |v| v == 1.0);
    let rate = prom.wait_for(
        r#"rate(dms_domain_cpu_usage_seconds_total{domain="dmstest.nobody"}[5s])"#,
        Duration::from_secs(60),
        |v| (0.4..=0.6).contains(&v),
    );
    eprintln!("PromQL CPU rate of a domain limited to 0.5 cores: {rate:.3}");
    // The limit and the usage meet in one query, as a dashboard would ask.
    let ratio = prom.wait_for(
        r#"rate(dms_domain_cpu_usage_seconds_total{domain="dmstest.nobody"}[5s]) / on(domain) dms_domain_spec_cpu_cores"#,
        Duration::from_secs(30),
        |v| (0.8..=1.2).contains(&v),
    );
    eprintln!("usage / limit: {ratio:.3}");
    // Throttling is seen by the Domain Monitor (two loops on a half core).
    prom.wait_for(
        r#"dms_domain_limit_events_total{domain="dmstest.nobody",kind="cpu_throttled"}"#,
        Duration::from_secs(30),
        |v| v >= 1.0,
    );

    // An OOM kill: the monitor counts it, logs it, and Prometheus sees the counter rise.
    let before = prom
        .query(r#"dms_domain_limit_events_total{domain="dmstest.nobody",kind="oom_kill"}"#)
        .unwrap_or(0.0);
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
    let after = prom.wait_for(
        r#"dms_domain_limit_events_total{domain="dmstest.nobody",kind="oom_kill"}"#,
        Duration::from_secs(30),
        |v| v >= before + 1.0,
    );
    eprintln!("oom_kill events: {before} -> {after}");
    prom.wait_for(
        r#"dms_domain_oom_events_total{domain="dmstest.nobody"}"#,
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("domain limit event") && l.contains("oom_kill")),
        "no limit event logged:\n{log}"
    );
    // The domain is still running (the default action only notifies).
    assert_eq!(
        d.json(&["domain", "show", "dmstest.nobody"])["state"],
        "running"
    );
}

#[test]
fn monitor_actions_freeze_or_kill_a_domain_on_oom_and_signal_it() {
    if !can_monitor() {
        return;
    }
    let d = Daemon::start_extra(
        "monfreeze",
        "[vo.dmsmon]\nnetwork = { mode = \"none\" }\nmemory = { limit = \"32M\" }\n\
         monitor = { oom_kill = \"freeze\" }\n\
         [vo.dmskill]\nnetwork = { mode = \"none\" }\nmemory = { limit = \"32M\" }\n\
         monitor = { oom_kill = \"kill\" }\n",
    );
    // Subscribe to signals before the event.
    let mut mon = Command::new(bin("dmsctl"))
        .args(["--socket", &d.sock(), "--json", "monitor"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = {
        use std::io::BufRead;
        let out = mon.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        rx
    };
    assert!(lines
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .contains("monitoring"));
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmsmon"]);
    d.ok(&[
        "domain",
        "run",
        "dmsmon.nobody",
        "--no-wait",
        "--",
        "sh",
        "-c",
        "x=$(head -c 100000000 /dev/zero | tr '\\0' a)",
    ]);
    let shown = || d.json(&["domain", "show", "dmsmon.nobody"]);
    wait_until_or(
        "domain frozen by the monitor",
        Duration::from_secs(20),
        || shown()["state"] == "frozen",
        || format!("{}\ndmsd log:\n{}", shown(), d.log()),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(l) = lines.recv_timeout(Duration::from_millis(200)) {
            seen.push(l.clone());
            if l.contains("\"oom_kill\"") && l.contains("\"freeze\"") {
                break;
            }
        }
    }
    let _ = mon.kill();
    let _ = mon.wait();
    assert!(
        seen.iter()
            .any(|l| l.contains("\"oom_kill\"") && l.contains("\"freeze\"")),
        "no LimitEvent signal: {seen:?}"
    );

    // "kill": the domain is destroyed, and its usage record says why.
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmskill"]);
    d.ok(&[
        "domain",
        "run",
        "dmskill.nobody",
        "--no-wait",
        "--",
        "sh",
        "-c",
        "x=$(head -c 100000000 /dev/zero | tr '\\0' a)",
    ]);
    wait_until_or(
        "domain destroyed by the monitor",
        Duration::from_secs(20),
        || !d.ok(&["domain", "list"]).contains("dmskill.nobody"),
        || format!("dmsd log:\n{}", d.log()),
    );
    let recs = d.json(&["usage", "--domain", "dmskill.nobody"]);
    assert_eq!(recs[0]["exit_cause"], "oom-killed", "{recs}");
}

#[test]
fn usage_record_of_a_cpu_burn_has_its_cpu_seconds() {
    if !can_run() {
        return;
    }
    let d = Daemon::start("usage");
    d.ok(&["domain", "create", "--user", "nobody", "--vo", "dmstest"]);
    // Burns 2 s of CPU by its own clock (perl is in every Debian), against a 50% limit:
    // about 4 s of wall time.
    d.ok(&[
        "domain",
        "run",
        "dmstest.nobody",
        "--",
        "perl",
        "-e",
        "for (;;) { for (1 .. 100000) {} my @t = times; last if $t[0] + $t[1] >= 2 }",
    ]);
    let show = d.json(&["domain", "show", "dmstest.nobody"]);
    let cgroup_cpu = show["usage"]["cpu_usage_ns"].as_u64().unwrap() as f64 / 1e9;
    d.ok(&["domain", "destroy", "dmstest.nobody"]);
    let recs = d.json(&["usage", "--domain", "dmstest.nobody"]);
    let recs = recs.as_array().unwrap();
    assert_eq!(recs.len(), 1, "{recs:?}");
    let r = &recs[0];
    let cpu = r["cpu_seconds"].as_f64().unwrap();
    eprintln!("usage record: {cpu:.3} CPU s (burn 2.0 s; cgroup said {cgroup_cpu:.3})");
    assert!(
        (cpu - 2.0).abs() <= 0.1,
        "record has {cpu} CPU seconds for a 2 s burn"
    );
    let user = r["cpu_user_seconds"].as_f64().unwrap();
    assert!(user >= 1.8, "user CPU {user}");
    assert_eq!(r["exit_cause"], "destroyed");
    assert_eq!(r["vo"], "dmstest");
    assert_eq!(r["account"], "nobody");
    assert!(r["wall_seconds"].as_u64().unwrap() >= 3, "{r}");
    assert!(r["memory_max_bytes"].as_u64().unwrap() > 0);
    // The OGF Usage Record carries the same numbers.
    let ur = d.dir.join("state/usage/ur");
    let files: Vec<_> = std::fs::read_dir(&ur).unwrap().flatten().collect();
    assert_eq!(files.len(), 1);
    let xml = std::fs::read_to_string(files[0].path()).unwrap();
    assert!(
        xml.contains("urf:JobUsageRecord")
            && xml.contains("<urf:LocalUserId>nobody</urf:LocalUserId>"),
        "{xml}"
    );
    assert!(xml.contains("urf:usageType=\"user\""), "{xml}");
    // Sums by VO; a user sees only their own records.
    let sums = d.json(&["usage", "--sum", "vo"]);
    assert_eq!(sums[0]["key"], "dmstest");
    assert_eq!(sums[0]["records"], 1);
    let other = d.ctl_as(Some(1), &["--json", "usage"]);
    let other: Value = serde_json::from_slice(&other.stdout).unwrap();
    assert_eq!(other.as_array().unwrap().len(), 0);
}
