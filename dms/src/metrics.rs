//! Prometheus exposition (docs/metrics.md): the daemon's own counters, and a collector that
//! reads every domain at scrape time.
//!
//! prometheus-client writes OpenMetrics; [`to_prometheus_text`] turns that into the Prometheus
//! text format 0.0.4 for clients that did not ask for OpenMetrics (promtool, curl).

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::domain::DomainState;
use crate::service::Service;
use crate::usage::{Collection, DomainSample};

type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~13 s: API calls range from a listing to a freeze that waits its timeout.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 4.0, 9,
    ))
}

/// Counters the request path updates; cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct DaemonMetrics {
    api_latency: Family<Labels, Histogram, fn() -> Histogram>,
    api_errors: Family<Labels, Counter>,
    policy_reloads: Family<Labels, Counter>,
    reconcile_actions: Family<Labels, Counter>,
    scrape_duration: Gauge<f64, AtomicU64>,
    scrape_stale: Gauge,
}

impl Default for DaemonMetrics {
    fn default() -> Self {
        Self {
            api_latency: Family::new_with_constructor(latency_histogram),
            api_errors: Family::default(),
            policy_reloads: Family::default(),
            reconcile_actions: Family::default(),
            scrape_duration: Gauge::default(),
            scrape_stale: Gauge::default(),
        }
    }
}

impl DaemonMetrics {
    /// Records one API call.
    pub fn api_call(&self, method: &str, took: Duration, error_kind: Option<&str>) {
        self.api_latency
            .get_or_create(&vec![("method", method.to_string())])
            .observe(took.as_secs_f64());
        if let Some(kind) = error_kind {
            self.api_errors
                .get_or_create(&vec![
                    ("method", method.to_string()),
                    ("kind", kind.to_string()),
                ])
                .inc();
        }
    }

    /// Records a policy reload.
    pub fn policy_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.policy_reloads
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    /// Records reconcile work.
    pub fn reconcile_actions(&self, action: &str, n: usize) {
        self.reconcile_actions
            .get_or_create(&vec![("action", action.to_string())])
            .inc_by(n as u64);
    }

    fn scraped(&self, took: Duration, stale: usize) {
        self.scrape_duration.set(took.as_secs_f64());
        self.scrape_stale.set(stale as i64);
    }
}

/// The registry served on `/metrics`.
#[derive(Debug)]
pub struct Exporter {
    registry: Registry,
}

impl Exporter {
    /// Registers the daemon metrics and the domain collector of `svc`.
    pub fn new(svc: &Arc<Service>) -> Self {
        let m = svc.metrics().clone();
        let mut r = Registry::default();
        r.register(
            "dms_api_request_duration_seconds",
            "API call latency by method, over every adapter",
            m.api_latency.clone(),
        );
        r.register(
            "dms_api_errors",
            "API calls that failed, by method and error kind",
            m.api_errors.clone(),
        );
        r.register(
            "dms_policy_reloads",
            "Policy reloads by result",
            m.policy_reloads.clone(),
        );
        r.register(
            "dms_reconcile_actions",
            "Reconcile work by action",
            m.reconcile_actions.clone(),
        );
        r.register(
            "dms_scrape_duration_seconds",
            "Wall time of the previous collection",
            m.scrape_duration.clone(),
        );
        r.register(
            "dms_scrape_stale_domains",
            "Domains shown with stale values in the previous collection",
            m.scrape_stale.clone(),
        );
        r.register_collector(Box::new(DomainCollector {
            svc: Arc::downgrade(svc),
        }));
        r.register_collector(Box::new(ProcessCollector));
        Self { registry: r }
    }

    /// One exposition: OpenMetrics when `openmetrics`, else Prometheus text 0.0.4.
    pub fn render(&self, openmetrics: bool) -> String {
        let mut out = String::with_capacity(64 << 10);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            // Only a fmt::Write into a String, which does not fail; keep what was written.
            tracing::warn!("metrics encoding stopped early");
        }
        if openmetrics {
            out
        } else {
            to_prometheus_text(&out)
        }
    }
}

/// Converts OpenMetrics text from prometheus-client into Prometheus text 0.0.4: no `# UNIT`
/// or `# EOF`, and counter families named with their `_total` suffix as their samples are.
pub fn to_prometheus_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<&str> = None;
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" if !name.ends_with("_total") => (format!("{name}_total"), kind),
                "info" | "stateset" | "gaugehistogram" | "unknown" => (name.to_string(), "untyped"),
                _ => (name.to_string(), kind),
            };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                let _ = writeln!(out, "# HELP {name} {text}");
            }
            let _ = writeln!(out, "# TYPE {name} {kind}");
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[derive(Debug)]
struct DomainCollector {
    svc: Weak<Service>,
}

impl Collector for DomainCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(svc) = self.svc.upgrade() else {
            return Ok(());
        };
        let c = svc.collect();
        svc.metrics().scraped(c.took, c.stale);
        encode_collection(&c, &mut encoder)
    }
}

fn one(domain: &str) -> [(&'static str, &str); 1] {
    [("domain", domain)]
}

/// Writes one family with a value per domain (skipping domains where `value` is None).
fn family<V: Copy>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    counter: bool,
    domains: &[DomainSample],
    value: impl Fn(&DomainSample) -> Option<V>,
) -> Result<(), std::fmt::Error>
where
    ConstCounter<V>: EncodeMetric,
    ConstGauge<V>: EncodeMetric,
{
    let kind = if counter {
        prometheus_client::metrics::MetricType::Counter
    } else {
        prometheus_client::metrics::MetricType::Gauge
    };
    let mut enc = enc.encode_descriptor(name, help, None, kind)?;
    for d in domains {
        let Some(v) = value(d) else { continue };
        let labels = one(&d.name);
        let fam = enc.encode_family(&labels)?;
        if counter {
            ConstCounter::new(v).encode(fam)?;
        } else {
            ConstGauge::new(v).encode(fam)?;
        }
    }
    Ok(())
}

fn u(d: &DomainSample) -> Option<&dms_accounting::Usage> {
    d.usage.as_ref()
}

fn n(d: &DomainSample) -> Option<&dms_accounting::NetUsage> {
    d.usage.as_ref().and_then(|u| u.network.as_ref())
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn us_secs(us: u64) -> f64 {
    us as f64 / 1e6
}

const STATES: [DomainState; 5] = [
    DomainState::Creating,
    DomainState::Running,
    DomainState::Frozen,
    DomainState::Stopping,
    DomainState::Failed,
];

/// Writes every per-domain and node family of one collection.
pub fn encode_collection(
    c: &Collection,
    enc: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::metrics::MetricType;
    let ds = &c.domains[..];

    {
        let mut e = enc.encode_descriptor(
            "dms_domain_info",
            "Identity of a domain (value 1); join on(job, instance, domain) for vo, account, group, role",
            None,
            MetricType::Gauge,
        )?;
        for d in ds {
            let labels = [
                ("domain", d.name.as_str()),
                ("backend", d.backend),
                ("vo", d.vo.as_str()),
                ("group", d.group.as_deref().unwrap_or("")),
                ("role", d.role.as_deref().unwrap_or("")),
                ("account", d.account.as_str()),
            ];
            ConstGauge::new(1i64).encode(e.encode_family(&labels)?)?;
        }
    }
    {
        let mut e = enc.encode_descriptor(
            "dms_domain_state",
            "Domain lifecycle state: 1 for the current state, 0 for the others",
            None,
            MetricType::Gauge,
        )?;
        for d in ds {
            for s in STATES {
                let labels = [("domain", d.name.as_str()), ("state", s.as_str())];
                ConstGauge::new(i64::from(d.state == s)).encode(e.encode_family(&labels)?)?;
            }
        }
    }
    family(
        enc,
        "dms_domain_state_since_seconds",
        "Unix time of the domain's last state change",
        false,
        ds,
        |d| Some(d.state_since),
    )?;
    family(
        enc,
        "dms_domain_start_time_seconds",
        "Unix time the domain was created",
        false,
        ds,
        |d| Some(d.created_at),
    )?;
    family(
        enc,
        "dms_domain_stale",
        "1 when the domain could not be read in this scrape and the last good values are shown",
        false,
        ds,
        |d| Some(u64::from(d.stale)),
    )?;

    family(
        enc,
        "dms_domain_cpu_usage_seconds",
        "CPU time consumed",
        true,
        ds,
        |d| u(d).map(|u| secs(u.cpu_usage_ns)),
    )?;
    family(
        enc,
        "dms_domain_cpu_user_seconds",
        "User CPU time",
        true,
        ds,
        |d| u(d).and_then(|u| u.cpu_user_ns).map(secs),
    )?;
    family(
        enc,
        "dms_domain_cpu_system_seconds",
        "System CPU time",
        true,
        ds,
        |d| u(d).and_then(|u| u.cpu_system_ns).map(secs),
    )?;
    family(
        enc,
        "dms_domain_cpu_cfs_periods",
        "CFS enforcement periods elapsed",
        true,
        ds,
        |d| u(d).and_then(|u| u.cpu_periods),
    )?;
    family(
        enc,
        "dms_domain_cpu_cfs_throttled_periods",
        "CFS periods in which the domain was throttled",
        true,
        ds,
        |d| u(d).and_then(|u| u.cpu_throttled_periods),
    )?;
    family(
        enc,
        "dms_domain_cpu_cfs_throttled_seconds",
        "Time the domain was throttled",
        true,
        ds,
        |d| u(d).and_then(|u| u.cpu_throttled_ns).map(secs),
    )?;
    family(
        enc,
        "dms_domain_memory_usage_bytes",
        "Memory charged to the domain",
        false,
        ds,
        |d| u(d).map(|u| u.memory_usage_bytes),
    )?;
    family(
        enc,
        "dms_domain_memory_working_set_bytes",
        "Memory usage minus inactive file cache",
        false,
        ds,
        |d| u(d).map(|u| u.memory_working_set_bytes()),
    )?;
    family(
        enc,
        "dms_domain_memory_rss_bytes",
        "Anonymous memory",
        false,
        ds,
        |d| u(d).and_then(|u| u.memory_rss_bytes),
    )?;
    family(
        enc,
        "dms_domain_memory_cache_bytes",
        "Page cache",
        false,
        ds,
        |d| u(d).and_then(|u| u.memory_cache_bytes),
    )?;
    family(
        enc,
        "dms_domain_memory_swap_bytes",
        "Swap used",
        false,
        ds,
        |d| u(d).and_then(|u| u.memory_swap_bytes),
    )?;
    family(
        enc,
        "dms_domain_memory_max_usage_bytes",
        "Peak memory usage",
        false,
        ds,
        |d| u(d).and_then(|u| u.memory_max_usage_bytes),
    )?;
    family(
        enc,
        "dms_domain_memory_limit_hits",
        "Times memory usage hit the limit",
        true,
        ds,
        |d| u(d).and_then(|u| u.memory_limit_hits),
    )?;
    family(
        enc,
        "dms_domain_oom_events",
        "Processes OOM-killed in the domain",
        true,
        ds,
        |d| u(d).and_then(|u| u.oom_kills),
    )?;
    family(
        enc,
        "dms_domain_processes",
        "Tasks in the domain",
        false,
        ds,
        |d| u(d).map(|u| u.pids_current),
    )?;
    family(
        enc,
        "dms_domain_pids_limit_hits",
        "Forks refused by the pids limit",
        true,
        ds,
        |d| u(d).and_then(|u| u.pids_limit_hits),
    )?;
    family(
        enc,
        "dms_domain_fs_reads_bytes",
        "Block bytes read",
        true,
        ds,
        |d| u(d).and_then(|u| u.io_read_bytes),
    )?;
    family(
        enc,
        "dms_domain_fs_writes_bytes",
        "Block bytes written",
        true,
        ds,
        |d| u(d).and_then(|u| u.io_write_bytes),
    )?;
    family(
        enc,
        "dms_domain_fs_reads",
        "Block read operations",
        true,
        ds,
        |d| u(d).and_then(|u| u.io_read_ops),
    )?;
    family(
        enc,
        "dms_domain_fs_writes",
        "Block write operations",
        true,
        ds,
        |d| u(d).and_then(|u| u.io_write_ops),
    )?;
    family(
        enc,
        "dms_domain_network_receive_bytes",
        "Bytes received by the domain",
        true,
        ds,
        |d| n(d).map(|n| n.receive_bytes),
    )?;
    family(
        enc,
        "dms_domain_network_transmit_bytes",
        "Bytes sent by the domain",
        true,
        ds,
        |d| n(d).map(|n| n.transmit_bytes),
    )?;
    family(
        enc,
        "dms_domain_network_receive_packets",
        "Packets received",
        true,
        ds,
        |d| n(d).map(|n| n.receive_packets),
    )?;
    family(
        enc,
        "dms_domain_network_transmit_packets",
        "Packets sent",
        true,
        ds,
        |d| n(d).map(|n| n.transmit_packets),
    )?;
    family(
        enc,
        "dms_domain_network_receive_packets_dropped",
        "Received packets dropped",
        true,
        ds,
        |d| n(d).map(|n| n.receive_dropped),
    )?;
    family(
        enc,
        "dms_domain_network_transmit_packets_dropped",
        "Sent packets dropped",
        true,
        ds,
        |d| n(d).map(|n| n.transmit_dropped),
    )?;
    family(
        enc,
        "dms_domain_pressure_cpu_waiting_seconds",
        "PSI cpu some",
        true,
        ds,
        |d| u(d).and_then(|u| u.psi_cpu_some_us).map(us_secs),
    )?;
    family(
        enc,
        "dms_domain_pressure_memory_waiting_seconds",
        "PSI memory some",
        true,
        ds,
        |d| u(d).and_then(|u| u.psi_memory_some_us).map(us_secs),
    )?;
    family(
        enc,
        "dms_domain_pressure_memory_stalled_seconds",
        "PSI memory full",
        true,
        ds,
        |d| u(d).and_then(|u| u.psi_memory_full_us).map(us_secs),
    )?;
    family(
        enc,
        "dms_domain_pressure_io_waiting_seconds",
        "PSI io some",
        true,
        ds,
        |d| u(d).and_then(|u| u.psi_io_some_us).map(us_secs),
    )?;
    family(
        enc,
        "dms_domain_pressure_io_stalled_seconds",
        "PSI io full",
        true,
        ds,
        |d| u(d).and_then(|u| u.psi_io_full_us).map(us_secs),
    )?;
    {
        let mut e = enc.encode_descriptor(
            "dms_domain_limit_events",
            "Domain Monitor limit events by kind",
            None,
            MetricType::Counter,
        )?;
        for d in ds {
            for (kind, count) in &d.events {
                let labels = [("domain", d.name.as_str()), ("kind", kind.as_str())];
                ConstCounter::new(*count).encode(e.encode_family(&labels)?)?;
            }
        }
    }
    family(
        enc,
        "dms_domain_spec_cpu_cores",
        "CPU quota in cores",
        false,
        ds,
        |d| d.limits.cpu_millicores.map(|m| f64::from(m) / 1000.0),
    )?;
    family(
        enc,
        "dms_domain_spec_cpu_shares",
        "CPU weight as v1 shares",
        false,
        ds,
        |d| Some(u64::from(d.limits.cpu_weight.unwrap_or(100)) * 1024 / 100),
    )?;
    family(
        enc,
        "dms_domain_spec_memory_limit_bytes",
        "Memory limit",
        false,
        ds,
        |d| d.limits.memory_max,
    )?;
    family(
        enc,
        "dms_domain_spec_memory_swap_limit_bytes",
        "Memory plus swap limit",
        false,
        ds,
        |d| {
            d.limits
                .memory_max
                .map(|m| m + d.limits.swap_max.unwrap_or(0))
        },
    )?;
    family(
        enc,
        "dms_domain_spec_pids_limit",
        "Tasks limit",
        false,
        ds,
        |d| d.limits.pids_max,
    )?;
    family(
        enc,
        "dms_domain_spec_network_transmit_bytes_per_second",
        "Egress rate limit",
        false,
        ds,
        |d| d.egress_bps.map(|b| b / 8),
    )?;
    family(
        enc,
        "dms_domain_spec_network_receive_bytes_per_second",
        "Ingress rate limit",
        false,
        ds,
        |d| d.ingress_bps.map(|b| b / 8),
    )?;

    let node = &c.node;
    let scalar = |enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64| {
        let e = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(v).encode(e)
    };
    scalar(enc, "dms_node_cpus", "Online CPUs", node.cpus as f64)?;
    scalar(
        enc,
        "dms_node_memory_bytes",
        "Memory of the node",
        node.memory_bytes as f64,
    )?;
    scalar(
        enc,
        "dms_node_committed_cpu_cores",
        "Sum of the CPU quotas of live domains",
        node.committed_cpu_cores,
    )?;
    scalar(
        enc,
        "dms_node_committed_memory_bytes",
        "Sum of the memory limits of live domains",
        node.committed_memory_bytes as f64,
    )?;
    scalar(
        enc,
        "dms_sessions",
        "Open PAM sessions",
        node.sessions as f64,
    )?;
    scalar(
        enc,
        "dms_account_leases",
        "Pool-account leases held",
        node.leases as f64,
    )?;
    {
        let mut e =
            enc.encode_descriptor("dms_domains", "Domains by state", None, MetricType::Gauge)?;
        for s in STATES {
            let count = ds.iter().filter(|d| d.state == s).count() as i64;
            ConstGauge::new(count).encode(e.encode_family(&[("state", s.as_str())])?)?;
        }
    }
    {
        let e = enc.encode_descriptor(
            "dms_build_info",
            "Build and cgroup version (value 1)",
            None,
            MetricType::Gauge,
        )?;
        let labels = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("cgroup", node.cgroup_version.as_str()),
        ];
        let mut e = e;
        ConstGauge::new(1i64).encode(e.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The conventional `process_*` metrics of dmsd itself, from /proc/self.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType;
        let Some(p) = read_self_stat() else {
            return Ok(());
        };
        let e = enc.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time of dmsd",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(p.cpu_seconds).encode(e)?;
        let e = enc.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory of dmsd",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(p.rss_bytes as f64).encode(e)?;
        let e = enc.encode_descriptor(
            "process_open_fds",
            "Open file descriptors of dmsd",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(p.open_fds as f64).encode(e)?;
        let e = enc.encode_descriptor(
            "process_start_time_seconds",
            "Start time of dmsd, Unix seconds",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(p.start_time).encode(e)?;
        Ok(())
    }
}

struct SelfStat {
    cpu_seconds: f64,
    rss_bytes: u64,
    open_fds: usize,
    start_time: f64,
}

fn read_self_stat() -> Option<SelfStat> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may contain spaces and ends at the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let starttime: f64 = f.get(19)?.parse().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    let btime: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    Some(SelfStat {
        cpu_seconds: (utime + stime) / tick,
        rss_bytes: rss_pages * page,
        open_fds,
        start_time: btime + starttime / tick,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_to_text_format() {
        let om = "# HELP dms_x_seconds Time.\n# TYPE dms_x_seconds counter\n# UNIT dms_x_seconds seconds\ndms_x_seconds_total{domain=\"a\"} 1.5\n# HELP dms_g A gauge.\n# TYPE dms_g gauge\ndms_g 3\n# EOF\n";
        let t = to_prometheus_text(om);
        assert_eq!(
            t,
            "# HELP dms_x_seconds_total Time.\n# TYPE dms_x_seconds_total counter\ndms_x_seconds_total{domain=\"a\"} 1.5\n# HELP dms_g A gauge.\n# TYPE dms_g gauge\ndms_g 3\n"
        );
    }
}
