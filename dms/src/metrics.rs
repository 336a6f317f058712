//! Prometheus exposition (docs/metrics.md): the daemon's own counters, and a collector that
//! reads every domain at scrape time.
//!
//! prometheus-client writes OpenMetrics; [`to_prometheus_text`] turns that into the Prometheus
//! text format 0.0.4 for clients that did not ask for OpenMetrics (promtool, curl).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// The registry served on `/metrics`, plus the domains read at each scrape.
#[derive(Debug)]
pub struct Exporter {
    registry: Registry,
    svc: Weak<Service>,
    /// Size of the previous exposition, to allocate the next one at once.
    last_len: AtomicUsize,
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
            "Wall time of this scrape's collection (reading every domain)",
            m.scrape_duration.clone(),
        );
        r.register(
            "dms_scrape_stale_domains",
            "Domains shown with stale values in this scrape",
            m.scrape_stale.clone(),
        );
        r.register_collector(Box::new(ProcessCollector));
        Self {
            registry: r,
            svc: Arc::downgrade(svc),
            last_len: AtomicUsize::new(0),
        }
    }

    /// One exposition: OpenMetrics when `openmetrics`, else Prometheus text 0.0.4. Reads every
    /// domain now (see [`Service::collect`]).
    pub fn render(&self, openmetrics: bool) -> String {
        let collection = self.svc.upgrade().map(|svc| {
            let c = svc.collect();
            svc.metrics().scraped(c.took, c.stale);
            c
        });
        let mut daemon = String::with_capacity(16 << 10);
        if prometheus_client::encoding::text::encode_registry(&mut daemon, &self.registry).is_err()
        {
            // Only a fmt::Write into a String, which does not fail; keep what was written.
            tracing::warn!("metrics encoding stopped early");
        }
        let mut out = String::with_capacity(self.last_len.load(Ordering::Relaxed) + 4096);
        if openmetrics {
            out.push_str(&daemon);
        } else {
            out.push_str(&to_prometheus_text(&daemon));
        }
        if let Some(c) = &collection {
            encode_collection(c, &mut out, openmetrics);
        }
        if openmetrics {
            out.push_str("# EOF\n");
        }
        self.last_len.store(out.len(), Ordering::Relaxed);
        out
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

/// Escapes a label value (backslash, double quote, newline), as both formats require.
fn escape_label(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes the per-domain and node families straight into the exposition.
///
/// These are ~34 series per domain, tens of thousands per scrape on a busy node; going through
/// prometheus-client's generic per-sample encoder cost more than reading the kernel's files.
/// This writer emits the same text (names, `_total`, escaping) with each domain's label set
/// built once per scrape; prometheus-client still encodes the daemon's own metrics and frames
/// the document.
struct Writer<'a> {
    out: &'a mut String,
    openmetrics: bool,
}

impl Writer<'_> {
    fn header(&mut self, name: &str, help: &str, counter: bool) {
        let kind = if counter { "counter" } else { "gauge" };
        let suffix = if counter && !self.openmetrics {
            "_total"
        } else {
            ""
        };
        let _ = write!(
            self.out,
            "# HELP {name}{suffix} {help}\n# TYPE {name}{suffix} {kind}\n"
        );
    }

    fn value(&mut self, v: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{v}");
    }

    /// One family with a value per domain; `labels[i]` is domain i's `{domain="..."} `.
    fn family<V: std::fmt::Display>(
        &mut self,
        name: &str,
        help: &str,
        counter: bool,
        ds: &[DomainSample],
        labels: &[String],
        value: impl Fn(&DomainSample) -> Option<V>,
    ) {
        self.header(name, help, counter);
        let total = if counter { "_total" } else { "" };
        for (d, l) in ds.iter().zip(labels) {
            let Some(v) = value(d) else { continue };
            self.out.push_str(name);
            self.out.push_str(total);
            self.out.push_str(l);
            self.value(v);
        }
    }

    fn scalar(&mut self, name: &str, help: &str, v: impl std::fmt::Display) {
        self.header(name, help, false);
        self.out.push_str(name);
        self.out.push(' ');
        self.value(v);
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn us_secs(us: u64) -> f64 {
    us as f64 / 1e6
}

fn u(d: &DomainSample) -> Option<&dms_accounting::Usage> {
    d.usage.as_ref()
}

fn n(d: &DomainSample) -> Option<&dms_accounting::NetUsage> {
    d.usage.as_ref().and_then(|u| u.network.as_ref())
}

const STATES: [DomainState; 6] = [
    DomainState::Creating,
    DomainState::Running,
    DomainState::Frozen,
    DomainState::Stopping,
    DomainState::Failed,
    DomainState::Saved,
];

/// Writes every per-domain and node family of one collection.
pub fn encode_collection(c: &Collection, out: &mut String, openmetrics: bool) {
    let ds = &c.domains[..];
    let mut names = Vec::with_capacity(ds.len());
    let mut labels = Vec::with_capacity(ds.len());
    for d in ds {
        let mut esc = String::with_capacity(d.name.len());
        escape_label(&d.name, &mut esc);
        labels.push(format!("{{domain=\"{esc}\"}} "));
        names.push(esc);
    }
    let mut w = Writer { out, openmetrics };

    w.header(
        "dms_domain_info",
        "Identity of a domain (value 1); join on(job, instance, domain) for vo, account, group, role",
        false,
    );
    for (d, name) in ds.iter().zip(&names) {
        let _ = write!(
            w.out,
            "dms_domain_info{{domain=\"{name}\",backend=\"{}\",vo=\"",
            d.backend
        );
        escape_label(&d.vo, w.out);
        w.out.push_str("\",group=\"");
        escape_label(d.group.as_deref().unwrap_or(""), w.out);
        w.out.push_str("\",role=\"");
        escape_label(d.role.as_deref().unwrap_or(""), w.out);
        w.out.push_str("\",account=\"");
        escape_label(&d.account, w.out);
        w.out.push_str("\"} 1\n");
    }
    w.header(
        "dms_domain_state",
        "Domain lifecycle state: 1 for the current state, 0 for the others",
        false,
    );
    for (d, name) in ds.iter().zip(&names) {
        for st in STATES {
            let _ = writeln!(
                w.out,
                "dms_domain_state{{domain=\"{name}\",state=\"{}\"}} {}",
                st.as_str(),
                u8::from(d.state == st)
            );
        }
    }
    let l = &labels[..];
    w.family(
        "dms_domain_state_since_seconds",
        "Unix time of the domain's last state change",
        false,
        ds,
        l,
        |d| Some(d.state_since),
    );
    w.family(
        "dms_domain_start_time_seconds",
        "Unix time the domain was created",
        false,
        ds,
        l,
        |d| Some(d.created_at),
    );
    w.family(
        "dms_domain_stale",
        "1 when the domain could not be read in this scrape and the last good values are shown",
        false,
        ds,
        l,
        |d| Some(u8::from(d.stale)),
    );
    w.family(
        "dms_domain_cpu_usage_seconds",
        "CPU time consumed",
        true,
        ds,
        l,
        |d| u(d).map(|u| secs(u.cpu_usage_ns)),
    );
    w.family(
        "dms_domain_cpu_user_seconds",
        "User CPU time",
        true,
        ds,
        l,
        |d| u(d).and_then(|u| u.cpu_user_ns).map(secs),
    );
    w.family(
        "dms_domain_cpu_system_seconds",
        "System CPU time",
        true,
        ds,
        l,
        |d| u(d).and_then(|u| u.cpu_system_ns).map(secs),
    );
    w.family(
        "dms_domain_cpu_cfs_periods",
        "CFS enforcement periods elapsed",
        true,
        ds,
        l,
        |d| u(d).and_then(|u| u.cpu_periods),
    );
    w.family(
        "dms_domain_cpu_cfs_throttled_periods",
        "CFS periods in which the domain was throttled",
        true,
        ds,
        l,
        |d| u(d).and_then(|u| u.cpu_throttled_periods),
    );
    w.family(
        "dms_domain_cpu_cfs_throttled_seconds",
        "Time the domain was throttled",
        true,
        ds,
        l,
        |d| u(d).and_then(|u| u.cpu_throttled_ns).map(secs),
    );
    w.family(
        "dms_domain_memory_usage_bytes",
        "Memory charged to the domain",
        false,
        ds,
        l,
        |d| u(d).map(|u| u.memory_usage_bytes),
    );
    w.family(
        "dms_domain_memory_working_set_bytes",
        "Memory usage minus inactive file cache",
        false,
        ds,
        l,
        |d| u(d).map(|u| u.memory_working_set_bytes()),
    );
    w.family(
        "dms_domain_memory_rss_bytes",
        "Anonymous memory",
        false,
        ds,
        l,
        |d| u(d).and_then(|u| u.memory_rss_bytes),
    );
    w.family(
        "dms_domain_memory_cache_bytes",
        "Page cache",
        false,
        ds,
        l,
        |d| u(d).and_then(|u| u.memory_cache_bytes),
    );
    w.family(
        "dms_domain_memory_swap_bytes",
        "Swap used",
        false,
        ds,
        l,
        |d| u(d).and_then(|u| u.memory_swap_bytes),
    );
    w.family(
        "dms_domain_memory_max_usage_bytes",
        "Peak memory usage",
        false,
        ds,
        l,
        |d| u(d).and_then(|u| u.memory_max_usage_bytes),
    );
    w.family(
        "dms_domain_memory_limit_hits",
        "Times memory usage hit the limit",
        true,
        ds,
        l,
        |d| u(d).and_then(|u| u.memory_limit_hits),
    );
    w.family(
        "dms_domain_oom_events",
        "Processes OOM-killed in the domain",
        true,
        ds,
        l,
        |d| u(d).and_then(|u| u.oom_kills),
    );
    w.family(
        "dms_domain_processes",
        "Tasks in the domain",
        false,
        ds,
        l,
        |d| u(d).map(|u| u.pids_current),
    );
    w.family(
        "dms_domain_pids_limit_hits",
        "Forks refused by the pids limit",
        true,
        ds,
        l,
        |d| u(d).and_then(|u| u.pids_limit_hits),
    );
    w.family(
        "dms_domain_fs_reads_bytes",
        "Block bytes read",
        true,
        ds,
        l,
        |d| u(d).and_then(|u| u.io_read_bytes),
    );
    w.family(
        "dms_domain_fs_writes_bytes",
        "Block bytes written",
        true,
        ds,
        l,
        |d| u(d).and_then(|u| u.io_write_bytes),
    );
    w.family(
        "dms_domain_fs_reads",
        "Block read operations",
        true,
        ds,
        l,
        |d| u(d).and_then(|u| u.io_read_ops),
    );
    w.family(
        "dms_domain_fs_writes",
        "Block write operations",
        true,
        ds,
        l,
        |d| u(d).and_then(|u| u.io_write_ops),
    );
    w.family(
        "dms_domain_network_receive_bytes",
        "Bytes received by the domain",
        true,
        ds,
        l,
        |d| n(d).map(|n| n.receive_bytes),
    );
    w.family(
        "dms_domain_network_transmit_bytes",
        "Bytes sent by the domain",
        true,
        ds,
        l,
        |d| n(d).map(|n| n.transmit_bytes),
    );
    w.family(
        "dms_domain_network_receive_packets",
        "Packets received",
        true,
        ds,
        l,
        |d| n(d).map(|n| n.receive_packets),
    );
    w.family(
        "dms_domain_network_transmit_packets",
        "Packets sent",
        true,
        ds,
        l,
        |d| n(d).map(|n| n.transmit_packets),
    );
    w.family(
        "dms_domain_network_receive_packets_dropped",
        "Received packets dropped",
        true,
        ds,
        l,
        |d| n(d).map(|n| n.receive_dropped),
    );
    w.family(
        "dms_domain_network_transmit_packets_dropped",
        "Sent packets dropped",
        true,
        ds,
        l,
        |d| n(d).map(|n| n.transmit_dropped),
    );
    w.family(
        "dms_domain_pressure_cpu_waiting_seconds",
        "PSI cpu some",
        true,
        ds,
        l,
        |d| u(d).and_then(|u| u.psi_cpu_some_us).map(us_secs),
    );
    w.family(
        "dms_domain_pressure_memory_waiting_seconds",
        "PSI memory some",
        true,
        ds,
        l,
        |d| u(d).and_then(|u| u.psi_memory_some_us).map(us_secs),
    );
    w.family(
        "dms_domain_pressure_memory_stalled_seconds",
        "PSI memory full",
        true,
        ds,
        l,
        |d| u(d).and_then(|u| u.psi_memory_full_us).map(us_secs),
    );
    w.family(
        "dms_domain_pressure_io_waiting_seconds",
        "PSI io some",
        true,
        ds,
        l,
        |d| u(d).and_then(|u| u.psi_io_some_us).map(us_secs),
    );
    w.family(
        "dms_domain_pressure_io_stalled_seconds",
        "PSI io full",
        true,
        ds,
        l,
        |d| u(d).and_then(|u| u.psi_io_full_us).map(us_secs),
    );
    w.header(
        "dms_domain_limit_events",
        "Domain Monitor limit events by kind",
        true,
    );
    for (d, name) in ds.iter().zip(&names) {
        for (kind, count) in &d.events {
            let _ = writeln!(
                w.out,
                "dms_domain_limit_events_total{{domain=\"{name}\",kind=\"{}\"}} {count}",
                kind.as_str()
            );
        }
    }
    w.family(
        "dms_domain_spec_cpu_cores",
        "CPU quota in cores",
        false,
        ds,
        l,
        |d| d.limits.cpu_millicores.map(|m| f64::from(m) / 1000.0),
    );
    w.family(
        "dms_domain_spec_cpu_shares",
        "CPU weight as v1 shares",
        false,
        ds,
        l,
        |d| Some(u64::from(d.limits.cpu_weight.unwrap_or(100)) * 1024 / 100),
    );
    w.family(
        "dms_domain_spec_memory_limit_bytes",
        "Memory limit",
        false,
        ds,
        l,
        |d| d.limits.memory_max,
    );
    w.family(
        "dms_domain_spec_memory_swap_limit_bytes",
        "Memory plus swap limit",
        false,
        ds,
        l,
        |d| {
            d.limits
                .memory_max
                .map(|m| m + d.limits.swap_max.unwrap_or(0))
        },
    );
    w.family(
        "dms_domain_spec_pids_limit",
        "Tasks limit",
        false,
        ds,
        l,
        |d| d.limits.pids_max,
    );
    w.family(
        "dms_domain_spec_network_transmit_bytes_per_second",
        "Egress rate limit",
        false,
        ds,
        l,
        |d| d.egress_bps.map(|b| b / 8),
    );
    w.family(
        "dms_domain_spec_network_receive_bytes_per_second",
        "Ingress rate limit",
        false,
        ds,
        l,
        |d| d.ingress_bps.map(|b| b / 8),
    );

    let node = &c.node;
    w.scalar("dms_node_cpus", "Online CPUs", node.cpus);
    w.scalar(
        "dms_node_memory_bytes",
        "Memory of the node",
        node.memory_bytes,
    );
    w.scalar(
        "dms_node_committed_cpu_cores",
        "Sum of the CPU quotas of live domains",
        node.committed_cpu_cores,
    );
    w.scalar(
        "dms_node_committed_memory_bytes",
        "Sum of the memory limits of live domains",
        node.committed_memory_bytes,
    );
    w.scalar("dms_sessions", "Open PAM sessions", node.sessions);
    if let Some(rss) = node.libvirtd_rss_bytes {
        w.scalar(
            "dms_libvirtd_resident_memory_bytes",
            "Resident memory of libvirtd (it has been seen to leak per guest)",
            rss,
        );
    }
    w.scalar(
        "dms_account_leases",
        "Pool-account leases held",
        node.leases,
    );
    w.header("dms_domains", "Domains by state", false);
    for st in STATES {
        let count = ds.iter().filter(|d| d.state == st).count();
        let _ = writeln!(w.out, "dms_domains{{state=\"{}\"}} {count}", st.as_str());
    }
    w.header(
        "dms_build_info",
        "Build and cgroup version (value 1)",
        false,
    );
    let _ = writeln!(
        w.out,
        "dms_build_info{{version=\"{}\",cgroup=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        node.cgroup_version
    );
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

/// Open fds of dmsd. Listing /proc/self/fd makes the kernel build a dentry per fd, and dmsd
/// keeps ~13 stat files open per domain: with 1000 domains that listing cost a fifth of a
/// scrape, so the count is refreshed at most once a minute.
fn open_fds() -> usize {
    static CACHE: parking_lot::Mutex<Option<(std::time::Instant, usize)>> =
        parking_lot::Mutex::new(None);
    let mut c = CACHE.lock();
    match *c {
        Some((at, n)) if at.elapsed() < Duration::from_secs(60) => n,
        _ => {
            let n = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
            *c = Some((std::time::Instant::now(), n));
            n
        }
    }
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
    let open_fds = open_fds();
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
