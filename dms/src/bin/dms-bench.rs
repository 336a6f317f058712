//! dms-bench: measures dmsd through its API (used by scripts/bench.sh, which prints the peers
//! beside it). Prints `<name>\t<median_ms>\t<p90_ms>\t<n>` lines like bench/peers, plus
//! `# key value` lines for the 1000-domain figures.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;

/// dms-bench - benchmark dmsd's API against a running daemon (root).
#[derive(Debug, Parser)]
struct Args {
    /// dmsd's socket.
    #[arg(long)]
    socket: PathBuf,
    /// dmsd's pid (for its resident memory).
    #[arg(long)]
    dmsd_pid: u32,
    /// VO whose policy gives per-job domains with cpu, memory and pids limits and a NAT network.
    #[arg(long, default_value = "bench")]
    vo: String,
    /// The same without a network (loopback only).
    #[arg(long, default_value = "benchnonet")]
    vo_nonet: String,
    /// Iterations for start and freeze.
    #[arg(long, default_value_t = 200)]
    n: usize,
    /// Domains for the scale test.
    #[arg(long, default_value_t = 1000)]
    domains: usize,
    /// Starts on an idle machine (each after an unmeasured pause; 0: none), as a lone login
    /// or job on a quiet node meets it.
    #[arg(long, default_value_t = 0)]
    idle_n: usize,
    /// The pause before each of those starts, in milliseconds.
    #[arg(long, default_value_t = 50)]
    idle_pause_ms: u64,
}

fn stats(name: &str, v: Vec<f64>) {
    println!("{}", stats_line(name, v));
}

/// `<name>\t<median_ms>\t<p90_ms>\t<n>`; a fifth column, the machine's busy CPU per
/// iteration, follows for starts.
fn stats_line(name: &str, mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    let med = v[v.len() / 2];
    let p90 = v[v.len() * 9 / 10];
    format!("{name}\t{med:.3}\t{p90:.3}\t{}", v.len())
}

fn meminfo(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Machine-wide busy CPU time in ms (user, nice, system, irq, softirq; not idle, iowait or the
/// hypervisor's steal), from /proc/stat, as bench/peers/stats.h reads it. Per start it is
/// steadier than wall time on a VM whose neighbours come and go, it includes the kernel work
/// a start leaves to workers, and it is what bounds a back-to-back loop.
fn cpu_ms() -> f64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let get = |i: usize| f.get(i).copied().unwrap_or(0.0) * 1e3 / hz;
    get(0) + get(1) + get(2) + get(5) + get(6)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One start as the benchmark measures it: a domain of `vo` for job `job` is created, runs
/// `/bin/true` (reaped) and is destroyed. Returns the three calls' times.
async fn start_once(
    p: &dms::client::ManagerProxy<'static>,
    vo: &str,
    job: &str,
) -> Result<[Duration; 3]> {
    let t = Instant::now();
    let d: serde_json::Value =
        serde_json::from_str(&p.ensure_domain("nobody", vo, "", job).await?)?;
    let name = d["name"].as_str().context("name")?.to_string();
    let t1 = Instant::now();
    let argv = ["/bin/true".to_string()];
    let (_, code) = p.run(&name, &argv, &[], "/", "", Vec::new(), true).await?;
    let t2 = Instant::now();
    p.destroy_domain(&name).await?;
    anyhow::ensure!(code == 0, "/bin/true exited {code}");
    Ok([t1 - t, t2 - t1, t2.elapsed()])
}

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = Args::parse();
    let p = dms::client::connect_socket(&a.socket)
        .await
        .map_err(anyhow::Error::msg)?;
    let no_env: Vec<(String, String)> = Vec::new();
    let t_argv = vec!["/bin/true".to_string()];

    // 0. The cost of one API round trip (Status), for reading the figures below.
    let mut v = Vec::with_capacity(a.n);
    for _ in 0..a.n {
        let t = Instant::now();
        p.status().await?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    stats("dms-api-roundtrip", v);

    // 1. A /bin/true in a new limited domain (all namespaces; NAT network or loopback only),
    //    reaped, domain removed: create + run + destroy.
    for (label, vo) in [("dms-start", &a.vo), ("dms-start-nonet", &a.vo_nonet)] {
        let mut v = Vec::with_capacity(a.n);
        let (mut ve, mut vr, mut vd) = (Vec::new(), Vec::new(), Vec::new());
        let mut cpu0 = 0.0;
        for i in 0..a.n + 5 {
            if i == 5 {
                cpu0 = cpu_ms();
            }
            let phases = start_once(&p, vo, &format!("s{i}")).await?;
            if i >= 5 {
                v.push(ms(phases.iter().sum()));
                ve.push(ms(phases[0]));
                vr.push(ms(phases[1]));
                vd.push(ms(phases[2]));
            }
        }
        let cpu = (cpu_ms() - cpu0) / a.n as f64;
        println!("{}\t{cpu:.2}", stats_line(label, v));
        // The three API calls it is made of, for profiling.
        stats(&format!("{label}:create"), ve);
        stats(&format!("{label}:run"), vr);
        stats(&format!("{label}:destroy"), vd);
    }

    // 1'. The same start as one RunOnce call (create, run, wait, destroy in dmsd), the
    //     counterpart of one `crun run`.
    for (label, vo) in [("dms-run-once", &a.vo), ("dms-run-once-nonet", &a.vo_nonet)] {
        let mut v = Vec::with_capacity(a.n);
        let mut cpu0 = 0.0;
        for i in 0..a.n + 5 {
            if i == 5 {
                cpu0 = cpu_ms();
            }
            let t = Instant::now();
            let (_, _, code) = p
                .run_once(
                    "nobody",
                    vo,
                    "",
                    &format!("o{i}"),
                    &t_argv,
                    &no_env,
                    "/",
                    "",
                    Vec::new(),
                )
                .await?;
            anyhow::ensure!(code == 0, "/bin/true exited {code}");
            if i >= 5 {
                v.push(ms(t.elapsed()));
            }
        }
        let cpu = (cpu_ms() - cpu0) / a.n as f64;
        println!("{}\t{cpu:.2}", stats_line(label, v));
    }

    // 1a. The NAT start of step 1, each after a pause in which the machine goes idle, and
    //     with it the kernel's lazily kept state (such as its RCU-synchronised fast paths).
    let mut v = Vec::with_capacity(a.idle_n);
    for i in 0..a.idle_n {
        tokio::time::sleep(Duration::from_millis(a.idle_pause_ms)).await;
        let phases = start_once(&p, &a.vo, &format!("i{i}")).await?;
        v.push(ms(phases.iter().sum()));
    }
    if a.idle_n > 0 {
        stats("dms-start-idle", v);
    }

    // 1b. /bin/true run inside a running domain (cgroups + all namespaces), reaped.
    let d: serde_json::Value =
        serde_json::from_str(&p.ensure_domain("nobody", &a.vo, "", "exec").await?)?;
    let name = d["name"].as_str().context("name")?.to_string();
    let mut v = Vec::with_capacity(a.n);
    for i in 0..a.n + 5 {
        let t = Instant::now();
        let (_, code) = p
            .run(&name, &t_argv, &no_env, "/", "", Vec::new(), true)
            .await?;
        anyhow::ensure!(code == 0, "/bin/true exited {code}");
        if i >= 5 {
            v.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    stats("dms-exec", v);
    p.destroy_domain(&name).await?;

    // 2. Freeze + thaw a domain of 100 processes.
    let d: serde_json::Value =
        serde_json::from_str(&p.ensure_domain("nobody", &a.vo, "", "freeze").await?)?;
    let name = d["name"].as_str().context("name")?.to_string();
    let sh = vec![
        "sh".to_string(),
        "-c".to_string(),
        "i=1; while [ $i -lt 100 ]; do sleep 1000 & i=$((i+1)); done; wait".to_string(),
    ];
    p.run(&name, &sh, &no_env, "/", "", Vec::new(), false)
        .await?;
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let v: serde_json::Value = serde_json::from_str(&p.get_domain(&name).await?)?;
        if v["processes"].as_u64() == Some(100) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut v = Vec::with_capacity(a.n);
    for _ in 0..a.n {
        let t = Instant::now();
        p.freeze_domain(&name).await?;
        p.thaw_domain(&name).await?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    stats("dms-freeze-thaw", v);
    p.destroy_domain(&name).await?;

    // 3. 1000 domains.
    let rss0 = rss_kb(a.dmsd_pid);
    let kern0 = meminfo("Slab:") + meminfo("Percpu:");
    let t = Instant::now();
    let mut names = Vec::with_capacity(a.domains);
    for i in 0..a.domains {
        let d: serde_json::Value = serde_json::from_str(
            &p.ensure_domain("nobody", &a.vo, "", &format!("m{i}"))
                .await?,
        )?;
        names.push(d["name"].as_str().context("name")?.to_string());
    }
    let create_s = t.elapsed().as_secs_f64();
    let rss1 = rss_kb(a.dmsd_pid);
    let kern1 = meminfo("Slab:") + meminfo("Percpu:");
    let t = Instant::now();
    for n in &names {
        p.destroy_domain(n).await?;
    }
    let destroy_s = t.elapsed().as_secs_f64();
    println!("# domains {}", a.domains);
    println!("# create_all_s {create_s:.2}");
    println!("# destroy_all_s {destroy_s:.2}");
    println!("# dmsd_rss_mb_before {:.1}", rss0 as f64 / 1024.0);
    println!("# dmsd_rss_mb_with_domains {:.1}", rss1 as f64 / 1024.0);
    println!(
        "# kernel_kb_per_domain {:.1}",
        kern1.saturating_sub(kern0) as f64 / a.domains as f64
    );
    Ok(())
}
