//! Usage at scrape time, node status, limit events and usage records: the service side of
//! `/metrics`, `/status`, the Domain Monitor and `dmsctl usage`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use dms_accounting::records::{UsageFilter, UsageRecord};
use dms_accounting::Usage;
use dms_policies::{LimitAction, LimitKind};
use serde::{Deserialize, Serialize};

use crate::cgroup::Limits;
use crate::domain::{Domain, DomainState};
use crate::service::{err, now, ApiResult, Caller, ErrorKind, Service};

/// One domain as a scrape sees it.
#[derive(Debug, Clone)]
pub struct DomainSample {
    /// Name.
    pub name: String,
    /// "container" or "libvirt".
    pub backend: &'static str,
    /// VO.
    pub vo: String,
    /// FQAN group.
    pub group: Option<String>,
    /// FQAN role.
    pub role: Option<String>,
    /// Local account.
    pub account: String,
    /// Owner uid.
    pub uid: u32,
    /// Job id of a per-job domain.
    pub job: Option<String>,
    /// State.
    pub state: DomainState,
    /// Unix seconds of the last state change.
    pub state_since: u64,
    /// Unix seconds of creation.
    pub created_at: u64,
    /// Limits in force.
    pub limits: Limits,
    /// Egress limit, bits/s.
    pub egress_bps: Option<u64>,
    /// Ingress limit, bits/s.
    pub ingress_bps: Option<u64>,
    /// Usage now, or the last good reading when `stale`.
    pub usage: Option<Usage>,
    /// The usage could not be read in this collection.
    pub stale: bool,
    /// Limit events so far, by kind.
    pub events: Vec<(LimitKind, u64)>,
}

/// Node-wide values.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeSample {
    /// Host name.
    pub hostname: String,
    /// Online CPUs.
    pub cpus: usize,
    /// MemTotal in bytes.
    pub memory_bytes: u64,
    /// Sum of the CPU quotas of live domains, in cores.
    pub committed_cpu_cores: f64,
    /// Sum of the memory limits of live domains.
    pub committed_memory_bytes: u64,
    /// Open PAM sessions.
    pub sessions: usize,
    /// Account leases.
    pub leases: usize,
    /// "v1" or "v2".
    pub cgroup_version: String,
    /// Resident memory of libvirtd, when the libvirt backend runs.
    #[serde(default)]
    pub libvirtd_rss_bytes: Option<u64>,
}

/// One collection over all domains.
#[derive(Debug, Clone)]
pub struct Collection {
    /// Domains.
    pub domains: Vec<DomainSample>,
    /// Node.
    pub node: NodeSample,
    /// Wall time it took.
    pub took: Duration,
    /// Domains shown stale.
    pub stale: usize,
}

/// Per-domain state the collector and the monitor keep between runs.
#[derive(Debug, Default)]
pub(crate) struct UsageBook {
    /// Last good reading per domain, shown (marked stale) when a read fails.
    last: HashMap<String, Usage>,
    /// Limit events per domain and kind.
    events: HashMap<String, BTreeMap<LimitKind, u64>>,
}

impl UsageBook {
    /// The last good reading of a domain.
    pub(crate) fn last(&self, name: &str) -> Option<Usage> {
        self.last.get(name).cloned()
    }
}

/// `/status` and `dmsctl status`: the schema is documented in docs/status.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// Schema version of this document.
    pub schema: u32,
    /// Daemon version.
    pub version: String,
    /// Unix seconds when the report was made.
    pub time: u64,
    /// Node capacity and commitments.
    pub node: NodeSample,
    /// Domain counts by state.
    pub domains_by_state: BTreeMap<String, usize>,
    /// Every domain.
    pub domains: Vec<DomainStatus>,
}

/// One domain in `/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainStatus {
    /// Name.
    pub name: String,
    /// State.
    pub state: String,
    /// Unix seconds of the last state change.
    pub state_since: u64,
    /// Unix seconds of creation.
    pub created_at: u64,
    /// Backend.
    pub backend: String,
    /// Owner account.
    pub account: String,
    /// Owner uid.
    pub uid: u32,
    /// VO.
    pub vo: String,
    /// FQAN group.
    pub group: Option<String>,
    /// FQAN role.
    pub role: Option<String>,
    /// Job id of a per-job domain.
    pub job: Option<String>,
    /// Quotas in force.
    pub quotas: QuotaStatus,
    /// Usage now (null when never read).
    pub usage: Option<UsageStatus>,
    /// Usage could not be read now; values are the last good ones.
    pub stale: bool,
    /// Limit events so far, by kind.
    pub limit_events: BTreeMap<String, u64>,
}

/// Quotas in `/status` (null = unlimited).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuotaStatus {
    /// CPU cores.
    pub cpu_cores: Option<f64>,
    /// Memory bytes.
    pub memory_bytes: Option<u64>,
    /// Swap bytes on top of memory.
    pub swap_bytes: Option<u64>,
    /// Tasks.
    pub pids: Option<u64>,
    /// Egress bits/s.
    pub egress_bps: Option<u64>,
    /// Ingress bits/s.
    pub ingress_bps: Option<u64>,
}

/// Usage in `/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageStatus {
    /// CPU seconds so far.
    pub cpu_seconds: f64,
    /// Memory charged now.
    pub memory_bytes: u64,
    /// Working set now.
    pub memory_working_set_bytes: u64,
    /// Tasks now.
    pub processes: u64,
    /// Block bytes read.
    pub io_read_bytes: Option<u64>,
    /// Block bytes written.
    pub io_write_bytes: Option<u64>,
    /// Network bytes received.
    pub network_receive_bytes: Option<u64>,
    /// Network bytes sent.
    pub network_transmit_bytes: Option<u64>,
}

/// A Domain Monitor event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitEvent {
    /// The domain.
    pub domain: String,
    /// Which limit.
    pub kind: LimitKind,
    /// How many occurrences since the previous check.
    pub count: u64,
    /// What the policy asked for.
    pub action: LimitAction,
    /// Human-readable detail.
    pub detail: String,
}

/// Why a domain ended, for its usage record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// Destroyed by an API call.
    Destroyed,
    /// Its last session ended and the idle action destroyed it.
    Idle,
    /// Its job finished.
    JobFinished,
    /// The Domain Monitor killed it.
    Killed(LimitKind),
    /// A guest missed its spawn or alive time limit and was reaped.
    Zombie,
}

impl EndCause {
    fn label(self, failed: bool) -> String {
        match self {
            EndCause::Destroyed if failed => "failed".into(),
            EndCause::Destroyed => "destroyed".into(),
            EndCause::Idle => "idle".into(),
            EndCause::JobFinished => "job-finished".into(),
            EndCause::Zombie => "zombie".into(),
            EndCause::Killed(LimitKind::OomKill) => "oom-killed".into(),
            EndCause::Killed(k) => format!("killed-{}", k.as_str().replace('_', "-")),
        }
    }
}

impl Service {
    fn sample_of(d: &Domain) -> DomainSample {
        let net = &d.isolation.network;
        DomainSample {
            name: d.name.clone(),
            backend: d.backend.as_str(),
            vo: d.vo.clone(),
            group: d.group.clone(),
            role: d.role.clone(),
            account: d.owner.user.clone(),
            uid: d.owner.uid,
            job: d.job.clone(),
            state: d.state,
            state_since: d.updated_at,
            created_at: d.created_at,
            limits: d.limits.clone(),
            egress_bps: net.egress,
            ingress_bps: net.ingress,
            usage: None,
            stale: false,
            events: Vec::new(),
        }
    }

    /// Reads every domain now. Never waits for a busy domain (its stored record is used), and
    /// stops reading once `collect_budget` is spent: the rest show their last good values,
    /// marked stale, so a scrape answers in time whatever a backend does.
    pub fn collect(&self) -> Collection {
        let started = Instant::now();
        let entries: Vec<_> = self
            .domains
            .read()
            .iter()
            .map(|(n, e)| (n.clone(), std::sync::Arc::clone(e)))
            .collect();
        let mut domains = Vec::with_capacity(entries.len());
        for (name, e) in &entries {
            match e.try_lock() {
                Some(d) => domains.push((Self::sample_of(&d), d.runtime.clone())),
                // Its operation holds the lock; the stored record is the last committed state.
                None => {
                    if let Ok(Some(d)) = self.store.lock().get(name) {
                        domains.push((Self::sample_of(&d), d.runtime.clone()));
                    }
                }
            }
        }
        let mut stale = 0;
        let mut book = self.usage_book.lock();
        let mut out = Vec::with_capacity(domains.len());
        for (mut s, runtime) in domains {
            let live = matches!(s.state, DomainState::Running | DomainState::Frozen);
            if live && started.elapsed() < self.collect_budget {
                match self.backend.stats(&s.name, &runtime) {
                    Ok(u) => {
                        book.last.insert(s.name.clone(), u.clone());
                        s.usage = Some(u);
                    }
                    // Destroyed during the scrape: dropped, not an error.
                    Err(e) if e.is_vanished() && !self.domains.read().contains_key(&s.name) => {
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(domain = %s.name, error = %e, "usage unreadable; showing last values");
                        s.usage = book.last.get(&s.name).cloned();
                        s.stale = true;
                    }
                }
            } else {
                s.usage = book.last.get(&s.name).cloned();
                s.stale = live;
            }
            if s.stale {
                stale += 1;
            }
            if let Some(ev) = book.events.get(&s.name) {
                s.events = ev.iter().map(|(k, v)| (*k, *v)).collect();
            }
            out.push(s);
        }
        // Forget what belongs to domains that are gone.
        if book.last.len() > out.len() {
            let names: std::collections::HashSet<&str> =
                out.iter().map(|d| d.name.as_str()).collect();
            book.last.retain(|k, _| names.contains(k.as_str()));
            book.events.retain(|k, _| names.contains(k.as_str()));
        }
        drop(book);
        let node = self.node_sample(&out);
        Collection {
            domains: out,
            node,
            took: started.elapsed(),
            stale,
        }
    }

    fn node_sample(&self, domains: &[DomainSample]) -> NodeSample {
        let live = domains
            .iter()
            .filter(|d| matches!(d.state, DomainState::Running | DomainState::Frozen));
        let (mut cpu, mut mem) = (0.0, 0u64);
        for d in live {
            cpu += d
                .limits
                .cpu_millicores
                .map_or(0.0, |m| f64::from(m) / 1000.0);
            mem = mem.saturating_add(d.limits.memory_max.unwrap_or(0));
        }
        // Not through status(): that waits for busy domains, and a scrape never does.
        NodeSample {
            hostname: self.hostname.clone(),
            cpus: crate::service::online_cpus(),
            memory_bytes: crate::service::mem_total(),
            committed_cpu_cores: cpu,
            committed_memory_bytes: mem,
            sessions: self.sessions.lock().len(),
            leases: self.accounts.lock().leases().count(),
            cgroup_version: self.cgroup_version.clone(),
            libvirtd_rss_bytes: self.backend.hypervisor_memory(),
        }
    }

    /// The `/status` document (admins see every domain; others their own).
    pub fn status_report(&self, caller: &Caller) -> StatusReport {
        let c = self.collect();
        let admin = self.is_admin(caller);
        let mut by_state = BTreeMap::new();
        for d in &c.domains {
            *by_state.entry(d.state.as_str().to_string()).or_insert(0) += 1;
        }
        let domains = c
            .domains
            .iter()
            .filter(|d| admin || d.uid == caller.uid)
            .map(|d| DomainStatus {
                name: d.name.clone(),
                state: d.state.as_str().into(),
                state_since: d.state_since,
                created_at: d.created_at,
                backend: d.backend.into(),
                account: d.account.clone(),
                uid: d.uid,
                vo: d.vo.clone(),
                group: d.group.clone(),
                role: d.role.clone(),
                job: d.job.clone(),
                quotas: QuotaStatus {
                    cpu_cores: d.limits.cpu_millicores.map(|m| f64::from(m) / 1000.0),
                    memory_bytes: d.limits.memory_max,
                    swap_bytes: d.limits.swap_max,
                    pids: d.limits.pids_max,
                    egress_bps: d.egress_bps,
                    ingress_bps: d.ingress_bps,
                },
                usage: d.usage.as_ref().map(|u| UsageStatus {
                    cpu_seconds: u.cpu_usage_ns as f64 / 1e9,
                    memory_bytes: u.memory_usage_bytes,
                    memory_working_set_bytes: u.memory_working_set_bytes(),
                    processes: u.pids_current,
                    io_read_bytes: u.io_read_bytes,
                    io_write_bytes: u.io_write_bytes,
                    network_receive_bytes: u.network.as_ref().map(|n| n.receive_bytes),
                    network_transmit_bytes: u.network.as_ref().map(|n| n.transmit_bytes),
                }),
                stale: d.stale,
                limit_events: d
                    .events
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), *v))
                    .collect(),
            })
            .collect();
        StatusReport {
            schema: 1,
            version: env!("CARGO_PKG_VERSION").into(),
            time: now(),
            node: c.node,
            domains_by_state: by_state,
            domains,
        }
    }

    /// Counts a limit event, logs it, signals it and applies the policy's action. False when
    /// the action failed (the monitor tries it again later).
    pub fn limit_event(&self, ev: LimitEvent) -> bool {
        {
            let mut book = self.usage_book.lock();
            *book
                .events
                .entry(ev.domain.clone())
                .or_default()
                .entry(ev.kind)
                .or_insert(0) += ev.count;
        }
        tracing::warn!(
            domain = %ev.domain,
            kind = ev.kind.as_str(),
            count = ev.count,
            action = ev.action.as_str(),
            detail = %ev.detail,
            "domain limit event"
        );
        (self.on_change)(crate::service::Signal::Limit(ev.clone()));
        self.limit_action(&ev.domain, ev.kind, ev.action)
    }

    /// Applies a limit event's action to a domain; false (and logged) when it failed.
    pub fn limit_action(&self, domain: &str, kind: LimitKind, action: LimitAction) -> bool {
        let admin = Caller {
            uid: 0,
            gids: vec![0],
        };
        let done = match action {
            LimitAction::Notify => return true,
            LimitAction::Freeze => self.freeze(&admin, domain),
            LimitAction::Kill => self.destroy_because(&admin, domain, EndCause::Killed(kind)),
        };
        match done {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(domain = %domain, action = action.as_str(), error = %e.message, "limit action failed; trying again at the next check");
                false
            }
        }
    }

    /// Appends the usage record of a domain that ended. Failures are logged, never fatal.
    pub(crate) fn record_end(&self, d: &Domain, usage: Option<&Usage>, cause: EndCause) {
        let Some(log) = &self.records else { return };
        let end = now();
        let lease = self.accounts.lock().lease(&d.owner.user).cloned();
        let u = usage.cloned().unwrap_or_default();
        let cpu_total = u.cpu_usage_ns as f64 / 1e9;
        let rec = UsageRecord {
            record_id: format!("{}/{}/{}", self.hostname, d.name, end),
            host: self.hostname.clone(),
            domain: d.name.clone(),
            backend: d.backend.as_str().into(),
            vo: d.vo.clone(),
            group: d.group.clone(),
            role: d.role.clone(),
            account: d.owner.user.clone(),
            uid: d.owner.uid,
            dn: lease.as_ref().map(|l| l.dn.clone()),
            fqans: lease.map(|l| l.fqans).unwrap_or_default(),
            job_id: d.job.clone(),
            start: d.created_at,
            end,
            wall_seconds: end.saturating_sub(d.created_at),
            cpu_user_seconds: u.cpu_user_ns.map_or(0.0, |n| n as f64 / 1e9),
            cpu_system_seconds: u.cpu_system_ns.map_or(0.0, |n| n as f64 / 1e9),
            cpu_seconds: cpu_total,
            memory_max_bytes: u.memory_max_usage_bytes,
            io_read_bytes: u.io_read_bytes,
            io_write_bytes: u.io_write_bytes,
            network_receive_bytes: u.network.as_ref().map(|n| n.receive_bytes),
            network_transmit_bytes: u.network.as_ref().map(|n| n.transmit_bytes),
            processors: d.limits.cpu_millicores.map(|m| f64::from(m) / 1000.0),
            exit_cause: cause.label(d.state == DomainState::Failed || d.reason.is_some()),
        };
        log.append(rec);
    }

    /// Waits until the usage records of domains that ended are written (at shutdown).
    pub fn flush_usage_records(&self) {
        if let Some(r) = &self.records {
            r.flush();
        }
    }

    /// Usage records matching a filter (admins see all; others their own account's).
    pub fn usage_records(
        &self,
        caller: &Caller,
        filter: &UsageFilter,
    ) -> ApiResult<Vec<UsageRecord>> {
        let Some(log) = &self.records else {
            return Ok(Vec::new());
        };
        let all = log
            .read_all()
            .map_err(|e| err(ErrorKind::Failed, format!("reading usage records: {e}")))?;
        let admin = self.is_admin(caller);
        Ok(all
            .into_iter()
            .filter(|r| admin || r.uid == caller.uid)
            .filter(|r| filter.matches(r))
            .collect())
    }
}

/// Usage records written by a thread of their own, off the request path: a destroy does not
/// wait for the XML file, the JSON line and their fsync. Readers first wait until what was
/// queued before them is written, so a record is there once its destroy has returned.
#[derive(Debug)]
pub(crate) struct RecordWriter {
    log: std::sync::Arc<dms_accounting::records::RecordLog>,
    queue: std::sync::mpsc::Sender<UsageRecord>,
    /// Records queued and not yet written.
    pending: std::sync::Arc<(parking_lot::Mutex<u64>, parking_lot::Condvar)>,
}

/// Appends one record to the log; a failure is logged, never fatal.
fn write_record(log: &dms_accounting::records::RecordLog, rec: &UsageRecord) {
    if let Err(e) = log.append(rec) {
        tracing::warn!(domain = %rec.domain, error = %e, "could not write the usage record");
    }
}

/// How long a reader (or shutdown) waits for queued records to be written.
const RECORD_FLUSH_LIMIT: Duration = Duration::from_secs(10);

impl RecordWriter {
    pub(crate) fn new(log: dms_accounting::records::RecordLog) -> RecordWriter {
        let log = std::sync::Arc::new(log);
        let pending =
            std::sync::Arc::new((parking_lot::Mutex::new(0u64), parking_lot::Condvar::new()));
        let (queue, rx) = std::sync::mpsc::channel::<UsageRecord>();
        let (l, p) = (std::sync::Arc::clone(&log), std::sync::Arc::clone(&pending));
        let spawned = std::thread::Builder::new()
            .name("usage-records".into())
            .spawn(move || {
                for rec in rx {
                    write_record(&l, &rec);
                    let mut n = p.0.lock();
                    *n = n.saturating_sub(1);
                    p.1.notify_all();
                }
            });
        if let Err(e) = spawned {
            // Then sends fail and records are written on the caller's thread.
            tracing::warn!(error = %e, "no thread for usage records; writing them inline");
        }
        RecordWriter {
            log,
            queue,
            pending,
        }
    }

    /// Queues `rec`; failures are logged, never fatal.
    pub(crate) fn append(&self, rec: UsageRecord) {
        *self.pending.0.lock() += 1;
        if let Err(std::sync::mpsc::SendError(rec)) = self.queue.send(rec) {
            *self.pending.0.lock() -= 1;
            write_record(&self.log, &rec);
        }
    }

    /// Waits (bounded) until every queued record is written.
    pub(crate) fn flush(&self) {
        let deadline = Instant::now() + RECORD_FLUSH_LIMIT;
        let mut n = self.pending.0.lock();
        while *n > 0 {
            if self.pending.1.wait_until(&mut n, deadline).timed_out() {
                tracing::warn!(queued = *n, "usage records still being written");
                return;
            }
        }
    }

    /// Every record, once those queued are written (see [`dms_accounting::records::RecordLog::read_all`]).
    pub(crate) fn read_all(
        &self,
    ) -> Result<Vec<UsageRecord>, dms_accounting::records::RecordError> {
        self.flush();
        self.log.read_all()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    //! Collection faults that cannot be produced for real as root (an unreadable stat file, a
    //! backend that hangs), through a backend that fakes only its stats. The fake and
    //! [`start`] also serve other modules' service tests.
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use dms_accounting::{Usage, UsageError};
    use dms_policies::BackendKind;
    use parking_lot::Mutex;

    use crate::domain::{
        Backend, BackendError, Domain, EventSource, ExecSpec, InitExitHandler, JoinTarget,
        LiveDomain, Runtime,
    };
    use crate::service::{Caller, EnsureRequest, Service, ServiceOptions, StartError};
    use crate::spawn::Child;

    /// How the fake answers `stats` for a domain.
    #[derive(Debug, Clone, Copy)]
    enum Reads {
        Ok(u64),
        Unreadable,
        Slow(Duration),
    }

    #[derive(Debug, Default)]
    pub(crate) struct FakeBackend {
        reads: Mutex<HashMap<String, Reads>>,
    }

    fn unsupported<T>() -> Result<T, BackendError> {
        Err(BackendError::Unsupported("fake".into()))
    }

    impl Backend for FakeBackend {
        fn kind(&self) -> BackendKind {
            BackendKind::Container
        }
        fn create(&self, _: &mut Domain) -> Result<(), BackendError> {
            Ok(())
        }
        fn adopt(&self, _: &Domain) -> Result<(), BackendError> {
            Ok(())
        }
        fn update(&self, _: &Domain) -> Result<(), BackendError> {
            Ok(())
        }
        fn destroy(&self, _: &str) -> Result<(), BackendError> {
            Ok(())
        }
        fn freeze(&self, _: &str) -> Result<(), BackendError> {
            Ok(())
        }
        fn thaw(&self, _: &str) -> Result<(), BackendError> {
            Ok(())
        }
        fn attach(&self, _: &str, _: i32) -> Result<(), BackendError> {
            unsupported()
        }
        fn exec(&self, _: &Domain, _: &ExecSpec, _: &[i32]) -> Result<Child, BackendError> {
            unsupported()
        }
        fn join_target(&self, _: &Domain) -> Result<JoinTarget, BackendError> {
            unsupported()
        }
        fn on_init_exit(&self, _: InitExitHandler) {}
        fn stats(&self, name: &str, _: &Runtime) -> Result<Usage, BackendError> {
            let how = self.reads.lock().get(name).copied().unwrap_or(Reads::Ok(1));
            match how {
                Reads::Ok(mem) => Ok(Usage {
                    memory_usage_bytes: mem,
                    ..Usage::default()
                }),
                Reads::Unreadable => Err(UsageError::Io {
                    op: "read",
                    path: format!("/fake/{name}/memory.stat").into(),
                    source: std::io::Error::from_raw_os_error(libc::EIO),
                }
                .into()),
                Reads::Slow(d) => {
                    std::thread::sleep(d);
                    Ok(Usage::default())
                }
            }
        }
        fn event_sources(&self, _: &str) -> Vec<EventSource> {
            Vec::new()
        }
        fn members(&self, _: &str) -> Result<Vec<i32>, BackendError> {
            Ok(Vec::new())
        }
        fn list(&self) -> Result<Vec<LiveDomain>, BackendError> {
            Ok(Vec::new())
        }
        fn sweep(&self) -> Result<Vec<String>, BackendError> {
            Ok(Vec::new())
        }
    }

    /// A service over the fake backend, with state in `dir` and one policy file,
    /// `dir/policies/t.toml`, holding `policy`.
    pub(crate) fn start(
        dir: &std::path::Path,
        backend: Arc<FakeBackend>,
        budget: Duration,
        policy: &str,
        accounts: crate::accounts::AccountsConfig,
    ) -> Result<Service, StartError> {
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(policies.join("t.toml"), policy).unwrap();
        Service::new(
            backend,
            crate::store::Store::open(dir).unwrap(),
            ServiceOptions {
                policy_dir: policies,
                admin_gid: None,
                lock_timeout: Duration::from_secs(1),
                cgroup_version: "v1".into(),
                accounts,
                usage_dir: Some(dir.join("usage")),
                usage_rotate: Default::default(),
                collect_budget: budget,
            },
            Box::new(|_| {}),
        )
    }

    fn service(dir: &std::path::Path, budget: Duration) -> (Arc<Service>, Arc<FakeBackend>) {
        let backend = Arc::new(FakeBackend::default());
        let svc = start(
            dir,
            backend.clone(),
            budget,
            "[vo.t]\ngranularity = \"job\"\nnetwork = { mode = \"none\" }\nmemory = { limit = \"64M\" }\n",
            crate::config::Config::load(None).unwrap().accounts,
        )
        .unwrap();
        (Arc::new(svc), backend)
    }

    fn root() -> Caller {
        Caller {
            uid: 0,
            gids: vec![0],
        }
    }

    fn make(svc: &Service, job: &str) -> String {
        let req = EnsureRequest {
            user: "root".into(),
            vo: "t".into(),
            fqan: None,
            job: Some(job.into()),
        };
        svc.ensure(&root(), &req).unwrap().name
    }

    #[test]
    fn unreadable_domain_shows_its_last_values_marked_stale() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, fake) = service(dir.path(), Duration::from_secs(5));
        let a = make(&svc, "1");
        let b = make(&svc, "2");
        fake.reads.lock().insert(a.clone(), Reads::Ok(4096));
        let c = svc.collect();
        assert_eq!(c.stale, 0);
        fake.reads.lock().insert(a.clone(), Reads::Unreadable);
        let c = svc.collect();
        assert_eq!(c.stale, 1);
        let sa = c.domains.iter().find(|d| d.name == a).unwrap();
        assert!(sa.stale);
        assert_eq!(sa.usage.as_ref().unwrap().memory_usage_bytes, 4096);
        let sb = c.domains.iter().find(|d| d.name == b).unwrap();
        assert!(!sb.stale);
        // The exposition says so and still parses as one document.
        let exp = crate::metrics::Exporter::new(&svc).render(false);
        assert!(
            exp.contains(&format!("dms_domain_stale{{domain=\"{a}\"}} 1")),
            "{exp}"
        );
        assert!(exp.contains(&format!(
            "dms_domain_memory_usage_bytes{{domain=\"{a}\"}} 4096"
        )));
    }

    #[test]
    fn a_slow_backend_cannot_hold_a_scrape_or_the_api() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, fake) = service(dir.path(), Duration::from_millis(300));
        let names: Vec<String> = (0..6).map(|i| make(&svc, &i.to_string())).collect();
        for n in &names {
            fake.reads
                .lock()
                .insert(n.clone(), Reads::Slow(Duration::from_millis(200)));
        }
        let s = Arc::clone(&svc);
        let scrape = std::thread::spawn(move || {
            let t = Instant::now();
            let c = s.collect();
            (t.elapsed(), c)
        });
        // API calls are served while the scrape reads.
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        assert_eq!(svc.list(&root()).len(), 6);
        let extra = make(&svc, "late");
        assert!(
            t.elapsed() < Duration::from_millis(150),
            "API waited {:?}",
            t.elapsed()
        );
        let (took, c) = scrape.join().unwrap();
        // Stops after the budget (plus the read in progress), the rest shown stale.
        assert!(
            took < Duration::from_millis(700),
            "collection took {took:?}"
        );
        assert!(c.stale >= 3, "{} stale of {}", c.stale, c.domains.len());
        assert!(c.domains.len() >= 6);
        svc.destroy(&root(), &extra).unwrap();
    }

    #[test]
    fn a_destroyed_domain_leaves_the_collection_and_gets_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, fake) = service(dir.path(), Duration::from_secs(5));
        let a = make(&svc, "1");
        fake.reads.lock().insert(a.clone(), Reads::Ok(1 << 20));
        assert_eq!(svc.collect().domains.len(), 1);
        svc.destroy(&root(), &a).unwrap();
        assert!(svc.collect().domains.is_empty());
        let recs = svc.usage_records(&root(), &Default::default()).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].domain, a);
        assert_eq!(recs[0].exit_cause, "destroyed");
        // Another user sees none of root's records.
        let other = Caller {
            uid: 4242,
            gids: vec![4242],
        };
        assert!(svc
            .usage_records(&other, &Default::default())
            .unwrap()
            .is_empty());
    }
}
