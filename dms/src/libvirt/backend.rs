//! The libvirt backend: guests as domains.
//!
//! A guest is a persistent libvirt domain named `dms-<domain>` carrying DMS's metadata element
//! (the only thing that makes DMS touch a libvirt domain), with its files in the domain
//! repository. A watcher thread polls libvirt once a second for guests that died, reads the
//! heartbeat sockets, reaps zombies (spawn/alive time limits) and, once reconcile has run,
//! removes DMS guests that no domain record owns (left by a crash half-way).

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::io::Read as _;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dms_accounting::{NetUsage, Usage};
use dms_policies::{BackendKind, NetworkPolicy};
use parking_lot::Mutex;
use virt::domain::Domain as VDomain;

use super::conn::{Conn, Link, LvError};
use super::repo::{Context, Repository};
use super::xml::{self, GuestSpec, IoTune, METADATA_NS};
use super::{libvirt_name, link_names, GuestType, LibvirtConfig, Template};
use crate::domain::{
    Backend, BackendError, Domain, EventSource, ExecSpec, GuestHandle, InitExitHandler, JoinTarget,
    LiveDomain, Runtime, ZombieHandler,
};
use crate::spawn::{Child, ExitStatus, Spawner};

impl From<LvError> for BackendError {
    fn from(e: LvError) -> Self {
        BackendError::Guest(e.to_string())
    }
}

impl From<super::repo::RepoError> for BackendError {
    fn from(e: super::repo::RepoError) -> Self {
        BackendError::Guest(e.0)
    }
}

/// What the backend tracks of a live guest.
#[derive(Debug)]
struct Guest {
    handle: GuestHandle,
    guest_type: GuestType,
    heartbeat: bool,
    agent: bool,
    disk: Option<&'static str>,
    spawn_limit: Duration,
    alive_limit: Duration,
    /// When it (re)started running; the spawn limit counts from here.
    started: Instant,
    last_alive: Option<Instant>,
    alive_stream: Option<UnixStream>,
    paused: bool,
    saved: bool,
    /// Set once it was reported dead or a zombie, so that happens once.
    reported: bool,
    /// Rates to re-apply when the tap is re-created (restore).
    shaping: NetworkPolicy,
}

#[derive(Default)]
struct Handlers {
    init_exit: Option<InitExitHandler>,
    zombie: Option<ZombieHandler>,
}

struct Shared {
    cfg: LibvirtConfig,
    repo: Repository,
    spawner: Spawner,
    conns: Mutex<HashMap<String, Arc<Conn>>>,
    guests: Mutex<HashMap<String, Guest>>,
    /// Domains being created (not orphans even though no record is final yet).
    creating: Mutex<std::collections::HashSet<String>>,
    handlers: Mutex<Handlers>,
    reconciled: AtomicBool,
    incomplete: AtomicBool,
}

/// Guests through libvirt.
pub struct LibvirtBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LibvirtBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibvirtBackend")
            .field("repository", &self.shared.repo.root())
            .finish_non_exhaustive()
    }
}

fn guest_err(m: impl Into<String>) -> BackendError {
    BackendError::Guest(m.into())
}

impl LibvirtBackend {
    /// A backend with `cfg`; starts its watcher thread. Connections open on first use.
    pub fn new(cfg: LibvirtConfig, spawner: Spawner) -> Result<LibvirtBackend, BackendError> {
        cfg.validate().map_err(guest_err)?;
        // libvirt prints every error to stderr by default; ours are returned and logged.
        virt::error::clear_error_callback();
        let repo = Repository::new(cfg.repository.clone());
        let shared = Arc::new(Shared {
            cfg,
            repo,
            spawner,
            conns: Mutex::new(HashMap::new()),
            guests: Mutex::new(HashMap::new()),
            creating: Mutex::new(Default::default()),
            handlers: Mutex::new(Handlers::default()),
            reconciled: AtomicBool::new(false),
            incomplete: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("libvirt-watch".into())
            .spawn(move || watch_loop(&weak))
            .map_err(|e| guest_err(format!("starting the libvirt watcher: {e}")))?;
        Ok(LibvirtBackend { shared })
    }
}

impl Shared {
    /// Suspends (`pause`) or resumes a guest.
    fn set_paused(&self, name: &str, pause: bool) -> Result<(), BackendError> {
        let h = self.handle(name)?;
        let lv = h.name.clone();
        let what = if pause { "suspending" } else { "resuming" };
        self.conn(&h.uri)
            .call(&format!("{what} the guest"), move |l| {
                let d = lookup(l, &lv)?;
                let done = if pause { d.suspend() } else { d.resume() };
                done.map_err(|e| l.err(format!("{what} {lv}"), e))?;
                Ok(())
            })?;
        Ok(())
    }

    fn conn(&self, uri: &str) -> Arc<Conn> {
        let mut m = self.conns.lock();
        Arc::clone(m.entry(uri.to_string()).or_insert_with(|| {
            Arc::new(Conn::new(
                uri,
                Duration::from_millis(self.cfg.call_timeout_ms),
            ))
        }))
    }

    /// Calls that legitimately take long: define/start (the first QEMU capability probe takes
    /// up to a minute), save, restore.
    fn long(&self) -> Duration {
        Duration::from_millis(self.cfg.call_timeout_ms.saturating_mul(4))
    }

    /// Every URI guests may live on: the templates' and those of known guests.
    fn uris(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .cfg
            .templates
            .values()
            .map(|t| t.uri(&self.cfg).to_string())
            .collect();
        v.extend(self.guests.lock().values().map(|g| g.handle.uri.clone()));
        v.sort();
        v.dedup();
        v
    }

    fn handle(&self, name: &str) -> Result<GuestHandle, BackendError> {
        self.guests
            .lock()
            .get(name)
            .map(|g| g.handle.clone())
            .ok_or_else(|| {
                guest_err(format!(
                    "domain {name:?} has no libvirt guest known to this daemon"
                ))
            })
    }

    fn tool(&self, argv: &[&str], input: &str) -> Result<String, String> {
        self.spawner
            .run_tool(argv, input.as_bytes(), None, Duration::from_secs(10))
    }

    /// The policy's shaper on the tap for what the guest receives, and on an ifb for what it
    /// sends (the tap's ingress is redirected there: this works without the police action).
    fn shape(
        &self,
        domain: &str,
        h: &GuestHandle,
        policy: &NetworkPolicy,
    ) -> Result<(), BackendError> {
        let Some(tap) = &h.tap else { return Ok(()) };
        let fail = |what: &str, e: String, qdisc: &str| {
            let hint = crate::net::missing_qdisc_hint(&e, qdisc)
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            guest_err(format!(
                "shaping {what} of guest {domain:?} on {tap}: {e}{hint}"
            ))
        };
        if let Some(rate) = policy.ingress {
            let (batch, qdisc) = crate::net::rate_limit_batch(tap, rate, policy);
            self.tool(&["tc", "-batch", "-"], &batch)
                .map_err(|e| fail("ingress", e, qdisc))?;
        }
        if let (Some(rate), Some(ifb)) = (policy.egress, &h.ifb) {
            delete_link(ifb);
            self.tool(&["ip", "link", "add", ifb, "type", "ifb"], "")
                .map_err(|e| fail("egress", e, "ifb"))?;
            self.tool(&["ip", "link", "set", ifb, "up"], "")
                .map_err(|e| fail("egress", e, "ifb"))?;
            let (limit, qdisc) = crate::net::rate_limit_batch(ifb, rate, policy);
            let batch = format!(
                "qdisc add dev {tap} handle ffff: ingress\nfilter add dev {tap} parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev {ifb}\n{limit}"
            );
            self.tool(&["tc", "-batch", "-"], &batch)
                .map_err(|e| fail("egress", e, qdisc))?;
        }
        Ok(())
    }

    /// Stops and undefines a DMS guest and removes its files. Missing is fine; a libvirt
    /// domain without DMS metadata is never touched.
    fn teardown(&self, domain: &str, uri: &str) -> Result<(), BackendError> {
        let lv = libvirt_name(domain);
        let conn = self.conn(uri);
        let r = conn.call_within("destroying the guest", self.long(), move |l| {
            let d = match VDomain::lookup_by_name(l.conn(), &lv) {
                Ok(d) => d,
                Err(e) if matches!(e.code(), virt::error::ErrorNumber::NoDomain) => return Ok(()),
                Err(e) => return Err(l.err(format!("looking up {lv}"), e)),
            };
            if !is_ours(&d) {
                return Err(LvError::Call {
                    uri: String::new(),
                    what: format!("destroying {lv}"),
                    message: "it has no DMS metadata: not created by DMS, not touched".into(),
                });
            }
            if d.is_active().unwrap_or(false) {
                if let Err(e) = d.destroy() {
                    if d.is_active().unwrap_or(true) {
                        return Err(l.err(format!("destroying {lv}"), e));
                    }
                }
            }
            let flags =
                virt::sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM;
            // The LXC driver takes no undefine flags (it has no managed save or NVRAM).
            match d.undefine_flags(flags).or_else(|_| d.undefine()) {
                Ok(()) => Ok(()),
                Err(e) if matches!(e.code(), virt::error::ErrorNumber::NoDomain) => Ok(()),
                Err(e) => Err(l.err(format!("undefining {lv}"), e)),
            }
        });
        delete_link(&link_names(domain).1);
        // Files go even when libvirt is unreachable: the orphan sweep removes the libvirt
        // definition once it is back.
        let files = self.repo.remove(domain);
        if let Err(e) = &r {
            if e.to_string().contains("state change lock") {
                // A libvirtd restarted in the middle of this guest's start can keep that start's
                // job forever; killing the guest's QEMU ends the job, and the next sweep or
                // destroy completes.
                kill_qemu_of(&libvirt_name(domain));
            }
        }
        r?;
        files?;
        Ok(())
    }

    fn zombie(&self, name: &str, why: String) {
        tracing::warn!(domain = name, reason = %why, "guest is a zombie; destroying it");
        let h = self.handlers.lock();
        if let Some(f) = &h.zombie {
            f(name, &why);
        }
    }

    fn died(&self, name: &str) {
        let h = self.handlers.lock();
        if let Some(f) = &h.init_exit {
            f(name);
        }
    }
}

/// Deletes a network link if it exists (through rtnetlink; no process).
fn delete_link(name: &str) {
    if let Ok(mut r) = dms_net::Rtnl::open() {
        let _ = r.delete_link_by_name(name);
    }
}

/// SIGKILLs the QEMU process running libvirt domain `lv` (its `-name guest=<lv>,...`).
fn kill_qemu_of(lv: &str) {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    let want = format!("guest={lv},");
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0);
        let is_qemu = args
            .next()
            .is_some_and(|a| String::from_utf8_lossy(a).contains("qemu-system"));
        let named = args.any(|a| a.starts_with(want.as_bytes()));
        if is_qemu && named {
            tracing::warn!(
                pid,
                guest = lv,
                "killing the QEMU of a guest libvirt holds a stale job for"
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The libvirt domain `lv` (an error naming it when it is missing).
fn lookup(l: &Link<'_>, lv: &str) -> Result<VDomain, LvError> {
    VDomain::lookup_by_name(l.conn(), lv).map_err(|e| l.err(format!("looking up {lv}"), e))
}

fn is_ours(d: &VDomain) -> bool {
    d.get_metadata(
        virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
        Some(METADATA_NS),
        0,
    )
    .is_ok()
}

/// The DMS guests on one connection: (DMS domain name, libvirt state).
fn list_ours(l: &Link<'_>) -> Result<Vec<(String, u32)>, LvError> {
    let all = l
        .conn()
        .list_all_domains(0)
        .map_err(|e| l.err("listing domains", e))?;
    let mut out = Vec::new();
    for d in all {
        let Ok(name) = d.get_name() else { continue };
        let Some(domain) = super::domain_name(&name) else {
            continue;
        };
        if !is_ours(&d) {
            continue;
        }
        let state = d.get_state().map(|(s, _)| s).unwrap_or(0);
        out.push((domain.to_string(), state));
    }
    Ok(out)
}

/// The guest memory, CPU and disk limits from a domain's mechanism limits.
fn sizing(d: &Domain, t: &Template) -> (u64, IoTune) {
    let memory_kib = d
        .limits
        .memory_max
        .map_or(t.memory_mib * 1024, |b| (b / 1024).max(16 * 1024));
    let mut io = IoTune::default();
    let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    for l in &d.quotas.io {
        io.read_bps = min(io.read_bps, l.read_bps);
        io.write_bps = min(io.write_bps, l.write_bps);
        io.read_iops = min(io.read_iops, l.read_iops);
        io.write_iops = min(io.write_iops, l.write_iops);
    }
    (memory_kib, io)
}

impl Backend for LibvirtBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Libvirt
    }

    fn create(&self, d: &mut Domain) -> Result<(), BackendError> {
        let s = &self.shared;
        let tname = d.template.clone().ok_or_else(|| {
            guest_err(format!(
                "domain {:?}: backend \"libvirt\" without a template",
                d.name
            ))
        })?;
        let t = s.cfg.template(&tname).map_err(guest_err)?.clone();
        let uri = t.uri(&s.cfg).to_string();
        let (tap, ifb) = link_names(&d.name);
        let sh = d.isolation.network.clone();
        let handle = GuestHandle {
            uri: uri.clone(),
            name: libvirt_name(&d.name),
            template: tname.clone(),
            tap: t.network.then(|| tap.clone()),
            ifb: (t.network && sh.egress.is_some()).then(|| ifb.clone()),
        };
        if !t.network && (sh.ingress.is_some() || sh.egress.is_some()) {
            return Err(guest_err(format!(
                "domain {:?}: the policy limits network rates but template {tname:?} has no network interface (network = true)",
                d.name
            )));
        }
        s.creating.lock().insert(d.name.clone());
        let r = (|| {
            let conn = s.conn(&uri);
            // Never take over a libvirt domain DMS did not create.
            let lv = handle.name.clone();
            let clash = conn.call("checking the name", move |l| match VDomain::lookup_by_name(
                l.conn(),
                &lv,
            ) {
                Ok(d) => Ok(Some(is_ours(&d))),
                Err(e) if matches!(e.code(), virt::error::ErrorNumber::NoDomain) => Ok(None),
                Err(e) => Err(l.err(format!("looking up {lv}"), e)),
            })?;
            match clash {
                Some(false) => {
                    return Err(guest_err(format!(
                        "a libvirt domain named {:?} exists on {uri} and was not created by DMS; it is left alone (rename or remove it)",
                        handle.name
                    )))
                }
                // A stale guest of ours (a crash half-way): remove it first.
                Some(true) => s.teardown(&d.name, &uri)?,
                None => {}
            }
            let ctx = Context {
                domain: d.name.clone(),
                user: d.owner.user.clone(),
                uid: d.owner.uid,
                vo: d.vo.clone(),
                job: d.job.clone(),
            };
            let prepared = s.repo.prepare(&ctx, &tname, &t, &s.spawner)?;
            let alive = t.heartbeat.then(|| s.repo.alive_socket(&d.name));
            if let Some(p) = &alive {
                super::check_socket_path(p).map_err(guest_err)?;
            }
            let (memory_kib, io) = sizing(d, &t);
            let spec = GuestSpec {
                domain: &d.name,
                owner: &d.owner.user,
                vo: &d.vo,
                template_name: &tname,
                template: &t,
                memory_kib,
                memory_soft_kib: d.limits.memory_soft.map(|b| b / 1024),
                cpu_millicores: d.limits.cpu_millicores,
                cpu_weight: d.limits.cpu_weight,
                io,
                overlay: prepared.overlay.clone(),
                context_iso: prepared.context_iso.clone(),
                alive_socket: alive,
                console_log: t.guest_type.is_vm().then(|| s.repo.console_log(&d.name)),
                tap: handle.tap.clone(),
            };
            let xml = xml::domain_xml(&spec);
            let lv = handle.name.clone();
            let is_xen = t.guest_type == GuestType::Xen;
            let cap = d.limits.cpu_millicores;
            conn.call_within("defining and starting the guest", s.long(), move |l| {
                let dom = VDomain::define_xml(l.conn(), &xml)
                    .map_err(|e| l.err(format!("defining {lv} (template rejected?)"), e))?;
                dom.create()
                    .map_err(|e| l.err(format!("starting {lv}"), e))?;
                if let (true, Some(m)) = (is_xen, cap) {
                    // Xen's credit scheduler: cap in percent of one CPU.
                    let mut si = dom
                        .get_scheduler_parameters()
                        .map_err(|e| l.err("reading Xen scheduler parameters", e))?;
                    si.cap = Some(m.div_ceil(10));
                    dom.set_scheduler_parameters(&si)
                        .map_err(|e| l.err("setting the Xen cpu cap", e))?;
                }
                Ok(())
            })?;
            s.shape(&d.name, &handle, &sh)?;
            Ok(())
        })();
        if let Err(e) = r {
            let _ = s.teardown(&d.name, &uri);
            s.creating.lock().remove(&d.name);
            return Err(e);
        }
        let limits = (
            Duration::from_secs(
                t.spawn_time_limit_secs
                    .unwrap_or(s.cfg.spawn_time_limit_secs),
            ),
            Duration::from_secs(
                t.alive_time_limit_secs
                    .unwrap_or(s.cfg.alive_time_limit_secs),
            ),
        );
        s.guests
            .lock()
            .insert(d.name.clone(), new_guest(handle.clone(), &t, limits, sh));
        s.creating.lock().remove(&d.name);
        d.runtime.guest = Some(handle);
        Ok(())
    }

    fn adopt(&self, d: &Domain) -> Result<(), BackendError> {
        let s = &self.shared;
        let h = d
            .runtime
            .guest
            .clone()
            .ok_or_else(|| guest_err(format!("domain {:?} has no guest recorded", d.name)))?;
        let t = s.cfg.template(&h.template).map_err(guest_err)?.clone();
        let limits = (
            Duration::from_secs(
                t.spawn_time_limit_secs
                    .unwrap_or(s.cfg.spawn_time_limit_secs),
            ),
            Duration::from_secs(
                t.alive_time_limit_secs
                    .unwrap_or(s.cfg.alive_time_limit_secs),
            ),
        );
        let mut g = new_guest(h, &t, limits, d.isolation.network.clone());
        g.saved = d.state == crate::domain::DomainState::Saved;
        g.paused = d.state == crate::domain::DomainState::Frozen;
        // A live guest that was alive before the restart gets a full alive interval.
        g.last_alive = Some(Instant::now());
        s.guests.lock().insert(d.name.clone(), g);
        Ok(())
    }

    fn update(&self, d: &Domain) -> Result<(), BackendError> {
        let s = &self.shared;
        let h = s.handle(&d.name)?;
        let t = s.cfg.template(&h.template).map_err(guest_err)?.clone();
        let (memory_kib, _) = sizing(d, &t);
        let cpu = d.limits.cpu_millicores;
        let weight = d.limits.cpu_weight;
        let lv = h.name.clone();
        let ty = t.guest_type;
        s.conn(&h.uri)
            .call("updating the guest's limits", move |l| {
                let dom = lookup(l, &lv)?;
                if !dom.is_active().unwrap_or(false) {
                    return Ok(());
                }
                let mut si = dom
                    .get_scheduler_parameters()
                    .map_err(|e| l.err("reading scheduler parameters", e))?;
                match ty {
                    GuestType::Xen => si.cap = cpu.map(|m| m.div_ceil(10)).or(Some(0)),
                    _ => {
                        let (period, quota) = cpu.map_or((100_000, -1), xml::cpu_quota_us);
                        if ty == GuestType::Lxc {
                            si.vcpu_bw.period = Some(period);
                            si.vcpu_bw.quota = Some(quota);
                        } else {
                            si.global_bw.period = Some(period);
                            si.global_bw.quota = Some(quota);
                        }
                    }
                }
                if let Some(w) = weight {
                    si.cpu_shares = Some(xml::shares(w));
                }
                dom.set_scheduler_parameters(&si)
                    .map_err(|e| l.err("setting scheduler parameters", e))?;
                // The balloon can shrink a VM to its new limit but not grow it past its maximum.
                let max = dom.get_max_memory().unwrap_or(memory_kib);
                dom.set_memory(memory_kib.min(max))
                    .map_err(|e| l.err("setting the guest's memory", e))?;
                Ok(())
            })?;
        Ok(())
    }

    fn destroy(&self, name: &str) -> Result<(), BackendError> {
        let s = &self.shared;
        let known = s.guests.lock().get(name).map(|g| g.handle.uri.clone());
        let uri = match known {
            Some(uri) => uri,
            None => {
                // Unknown here (an orphan listed by reconcile, or never created): look on
                // every connection.
                for uri in s.uris() {
                    s.teardown(name, &uri)?;
                }
                return Ok(());
            }
        };
        s.teardown(name, &uri)?;
        s.guests.lock().remove(name);
        Ok(())
    }

    fn freeze(&self, name: &str) -> Result<(), BackendError> {
        self.shared.set_paused(name, true)?;
        if let Some(g) = self.shared.guests.lock().get_mut(name) {
            g.paused = true;
        }
        Ok(())
    }

    fn thaw(&self, name: &str) -> Result<(), BackendError> {
        let s = &self.shared;
        s.set_paused(name, false)?;
        if let Some(g) = s.guests.lock().get_mut(name) {
            g.paused = false;
            if g.last_alive.is_some() {
                g.last_alive = Some(Instant::now());
            } else {
                g.started = Instant::now();
            }
        }
        Ok(())
    }

    fn save(&self, name: &str) -> Result<(), BackendError> {
        let s = &self.shared;
        let h = s.handle(name)?;
        let lv = h.name.clone();
        let file = s.repo.save_file(name);
        let path = CString::new(file.to_string_lossy().as_bytes())
            .map_err(|_| guest_err("save path contains a NUL"))?;
        s.conn(&h.uri)
            .call_within("saving the guest", s.long(), move |l| {
                let d = lookup(l, &lv)?;
                // SAFETY: `d` holds a valid domain pointer for the call and `path` is a
                // NUL-terminated string that outlives it.
                let r = unsafe { virt::sys::virDomainSave(d.as_ptr(), path.as_ptr()) };
                if r < 0 {
                    return Err(l.err(format!("saving {lv}"), virt::error::Error::last_error()));
                }
                Ok(())
            })?;
        if let Some(g) = s.guests.lock().get_mut(name) {
            g.saved = true;
            g.paused = false;
            g.alive_stream = None;
        }
        if let Some(ifb) = &h.ifb {
            delete_link(ifb);
        }
        Ok(())
    }

    fn restore(&self, d: &Domain) -> Result<(), BackendError> {
        let s = &self.shared;
        let h = s.handle(&d.name)?;
        let file = s.repo.save_file(&d.name);
        if !file.exists() {
            return Err(guest_err(format!(
                "domain {:?}: no saved state at {}",
                d.name,
                file.display()
            )));
        }
        let path = CString::new(file.to_string_lossy().as_bytes())
            .map_err(|_| guest_err("save path contains a NUL"))?;
        let lv = h.name.clone();
        s.conn(&h.uri)
            .call_within("restoring the guest", s.long(), move |l| {
                // SAFETY: the connection pointer is valid for the call; `path` is NUL-terminated
                // and outlives it.
                let r = unsafe { virt::sys::virDomainRestore(l.conn().as_ptr(), path.as_ptr()) };
                if r < 0 {
                    return Err(l.err(format!("restoring {lv}"), virt::error::Error::last_error()));
                }
                Ok(())
            })?;
        let _ = std::fs::remove_file(&file);
        let mut sh = d.isolation.network.clone();
        if let Some(g) = s.guests.lock().get_mut(&d.name) {
            g.saved = false;
            g.reported = false;
            g.last_alive = Some(Instant::now());
            sh = g.shaping.clone();
        }
        // QEMU re-created the tap: shape it again.
        s.shape(&d.name, &h, &sh)?;
        Ok(())
    }

    fn attach(&self, name: &str, _pid: i32) -> Result<(), BackendError> {
        Err(BackendError::Unsupported(format!(
            "domain {name:?} is a libvirt guest: a host process cannot be moved into it (log in to the guest, or use dmsctl exec)"
        )))
    }

    fn exec(&self, d: &Domain, spec: &ExecSpec, stdio: &[i32]) -> Result<Child, BackendError> {
        let s = &self.shared;
        let (h, agent, state) = {
            let g = s.guests.lock();
            let g = g
                .get(&d.name)
                .ok_or_else(|| guest_err(format!("domain {:?} has no guest", d.name)))?;
            (g.handle.clone(), g.agent, (g.paused, g.saved))
        };
        if !agent {
            return Err(BackendError::Unsupported(format!(
                "domain {:?}: template {:?} has no guest agent (agent = true and qemu-guest-agent in the guest are needed for exec)",
                d.name, h.template
            )));
        }
        if state.0 || state.1 {
            return Err(BackendError::NotRunning(format!(
                "domain {:?} is {}; exec needs a running guest",
                d.name,
                if state.0 { "frozen" } else { "saved" }
            )));
        }
        let args = serde_json::json!({
            "execute": "guest-exec",
            "arguments": {
                "path": spec.argv.first().cloned().unwrap_or_default(),
                "arg": spec.argv.iter().skip(1).collect::<Vec<_>>(),
                "env": spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
                "capture-output": true,
            }
        })
        .to_string();
        let lv = h.name.clone();
        let conn = s.conn(&h.uri);
        let pid: i64 = conn.call("starting a command through the guest agent", move |l| {
            let dom = lookup(l, &lv)?;
            let out = dom
                .qemu_agent_command(&args, 10, 0)
                .map_err(|e| l.err("guest-exec (is qemu-guest-agent running in the guest?)", e))?;
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            v["return"]["pid"].as_i64().ok_or_else(|| LvError::Call {
                uri: String::new(),
                what: "guest-exec".into(),
                message: format!("unexpected answer {out}"),
            })
        })?;
        // The output goes to the caller's fds; keep our own duplicates while the thread runs.
        let dup = |i: usize| {
            stdio
                .get(i)
                .and_then(|fd| nix::unistd::dup(unsafe_borrow(*fd)).ok())
        };
        let (out, err) = (dup(1), dup(2));
        let (tx, rx) = std::sync::mpsc::channel();
        let lv = h.name.clone();
        let name = d.name.clone();
        std::thread::Builder::new()
            .name("guest-exec".into())
            .spawn(move || {
                let status = follow_guest_exec(&conn, &lv, pid, out, err);
                if let Err(e) = &status {
                    tracing::warn!(domain = %name, error = %e, "guest exec");
                }
                let _ = tx.send(status.unwrap_or(ExitStatus::Code(255)));
            })
            .map_err(|e| guest_err(format!("exec thread: {e}")))?;
        Ok(Child::from_receiver(i32::try_from(pid).unwrap_or(0), rx))
    }

    fn join_target(&self, d: &Domain) -> Result<JoinTarget, BackendError> {
        Err(BackendError::Unsupported(format!(
            "domain {:?} is a libvirt guest: a session cannot join it from the host",
            d.name
        )))
    }

    fn on_init_exit(&self, handler: InitExitHandler) {
        self.shared.handlers.lock().init_exit = Some(handler);
    }

    fn on_zombie(&self, handler: ZombieHandler) {
        self.shared.handlers.lock().zombie = Some(handler);
    }

    fn stats(&self, name: &str, _runtime: &Runtime) -> Result<Usage, BackendError> {
        let s = &self.shared;
        let (h, disk, vm) = {
            let g = s.guests.lock();
            let g = g
                .get(name)
                .ok_or_else(|| guest_err(format!("domain {name:?} has no guest")))?;
            (g.handle.clone(), g.disk, g.guest_type.is_vm())
        };
        let lv = h.name.clone();
        let tap = h.tap.clone();
        let u = s.conn(&h.uri).call("reading guest statistics", move |l| {
            let dom = lookup(l, &lv)?;
            let info = dom
                .get_info()
                .map_err(|e| l.err("reading domain info", e))?;
            let mut u = Usage {
                cpu_usage_ns: info.cpu_time,
                memory_usage_bytes: info.memory * 1024,
                ..Usage::default()
            };
            if vm && info.state == virt::sys::VIR_DOMAIN_RUNNING {
                if let Ok(stats) = dom.memory_stats(0) {
                    let get = |tag: u32| stats.iter().find(|m| m.tag == tag).map(|m| m.val * 1024);
                    let actual = get(virt::sys::VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON);
                    let unused = get(virt::sys::VIR_DOMAIN_MEMORY_STAT_UNUSED);
                    let available = get(virt::sys::VIR_DOMAIN_MEMORY_STAT_AVAILABLE);
                    u.memory_rss_bytes = get(virt::sys::VIR_DOMAIN_MEMORY_STAT_RSS);
                    u.memory_usage_bytes = match (available, unused) {
                        (Some(a), Some(f)) => a.saturating_sub(f),
                        _ => actual.unwrap_or(u.memory_usage_bytes),
                    };
                    u.memory_cache_bytes = get(virt::sys::VIR_DOMAIN_MEMORY_STAT_DISK_CACHES);
                    u.memory_swap_bytes = get(virt::sys::VIR_DOMAIN_MEMORY_STAT_SWAP_OUT);
                }
                if let Some(disk) = disk {
                    if let Ok(b) = dom.get_block_stats(disk) {
                        let p = |v: i64| u64::try_from(v).ok();
                        u.io_read_bytes = p(b.rd_bytes);
                        u.io_write_bytes = p(b.wr_bytes);
                        u.io_read_ops = p(b.rd_req);
                        u.io_write_ops = p(b.wr_req);
                    }
                }
                if let Some(tap) = &tap {
                    if let Ok(n) = dom.interface_stats(tap) {
                        let p = |v: i64| u64::try_from(v).unwrap_or(0);
                        u.network = Some(NetUsage {
                            receive_bytes: p(n.rx_bytes),
                            transmit_bytes: p(n.tx_bytes),
                            receive_packets: p(n.rx_packets),
                            transmit_packets: p(n.tx_packets),
                            receive_dropped: p(n.rx_drop),
                            transmit_dropped: p(n.tx_drop),
                        });
                    }
                }
            }
            Ok(u)
        })?;
        Ok(u)
    }

    fn event_sources(&self, _name: &str) -> Vec<EventSource> {
        vec![]
    }

    fn members(&self, name: &str) -> Result<Vec<i32>, BackendError> {
        // A guest's processes are inside it; on the host it is its QEMU (or LXC) process.
        let _ = self.shared.handle(name)?;
        Ok(vec![])
    }

    fn list(&self) -> Result<Vec<LiveDomain>, BackendError> {
        let s = &self.shared;
        let mut out = Vec::new();
        let mut incomplete = false;
        for uri in s.uris() {
            match s.conn(&uri).call("listing guests", list_ours) {
                Ok(v) => {
                    for (name, state) in v {
                        let saved = s.repo.save_file(&name).exists()
                            && state == virt::sys::VIR_DOMAIN_SHUTOFF;
                        if state == virt::sys::VIR_DOMAIN_SHUTOFF && !saved {
                            // Defined but stopped and not saved: nothing alive to adopt.
                            continue;
                        }
                        out.push(LiveDomain {
                            name,
                            frozen: state == virt::sys::VIR_DOMAIN_PAUSED,
                            saved,
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(uri = %uri, error = %e, "cannot list guests; their records are left as they are");
                    incomplete = true;
                }
            }
        }
        s.incomplete.store(incomplete, Ordering::Relaxed);
        Ok(out)
    }

    fn list_incomplete(&self, kind: BackendKind) -> bool {
        kind == BackendKind::Libvirt && self.shared.incomplete.load(Ordering::Relaxed)
    }

    fn sweep(&self) -> Result<Vec<String>, BackendError> {
        let s = &self.shared;
        let known: std::collections::HashSet<String> = s.guests.lock().keys().cloned().collect();
        let mut removed = Vec::new();
        for name in s.repo.list() {
            if !known.contains(&name)
                && !s.creating.lock().contains(&name)
                && s.repo.remove(&name).is_ok()
            {
                removed.push(format!("repository:{name}"));
            }
        }
        s.reconciled.store(true, Ordering::Relaxed);
        Ok(removed)
    }

    fn hypervisor_memory(&self) -> Option<u64> {
        let pid = std::fs::read_to_string(&self.shared.cfg.libvirtd_pidfile).ok()?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    }
}

fn new_guest(
    handle: GuestHandle,
    t: &Template,
    limits: (Duration, Duration),
    shaping: NetworkPolicy,
) -> Guest {
    Guest {
        handle,
        guest_type: t.guest_type,
        heartbeat: t.heartbeat,
        agent: t.agent,
        disk: t.image.as_ref().map(|_| {
            if t.guest_type == GuestType::Xen {
                "xvda"
            } else {
                "vda"
            }
        }),
        spawn_limit: limits.0,
        alive_limit: limits.1,
        started: Instant::now(),
        last_alive: None,
        alive_stream: None,
        paused: false,
        saved: false,
        reported: false,
        shaping,
    }
}

/// Borrows a raw fd the caller keeps open for the duration of the call.
fn unsafe_borrow(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: the exec caller keeps its stdio fds open until `exec` returns, and the borrow is
    // only used for an immediate dup.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Polls guest-exec-status until the command ends, copying its output to `out`/`err`.
fn follow_guest_exec(
    conn: &Conn,
    lv: &str,
    pid: i64,
    out: Option<std::os::fd::OwnedFd>,
    err: Option<std::os::fd::OwnedFd>,
) -> Result<ExitStatus, String> {
    use std::io::Write as _;
    let mut out = out.map(std::fs::File::from);
    let mut err = err.map(std::fs::File::from);
    let mut delay = Duration::from_millis(5);
    loop {
        let lv2 = lv.to_string();
        let cmd = serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": pid}})
            .to_string();
        let v: serde_json::Value = conn
            .call("guest-exec-status", move |l| {
                let dom = lookup(l, &lv2)?;
                let s = dom
                    .qemu_agent_command(&cmd, 10, 0)
                    .map_err(|e| l.err("guest-exec-status", e))?;
                Ok(serde_json::from_str(&s).unwrap_or_default())
            })
            .map_err(|e| e.to_string())?;
        let r = &v["return"];
        if r["exited"].as_bool() == Some(true) {
            let decode = |k: &str| {
                r[k].as_str()
                    .and_then(|b| data_encoding::BASE64.decode(b.as_bytes()).ok())
                    .unwrap_or_default()
            };
            if let Some(f) = out.as_mut() {
                let _ = f.write_all(&decode("out-data"));
            }
            if let Some(f) = err.as_mut() {
                let _ = f.write_all(&decode("err-data"));
            }
            if let Some(sig) = r["signal"].as_i64() {
                return Ok(ExitStatus::Signal(i32::try_from(sig).unwrap_or(9)));
            }
            return Ok(ExitStatus::Code(
                r["exitcode"]
                    .as_i64()
                    .and_then(|c| i32::try_from(c).ok())
                    .unwrap_or(0),
            ));
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// The watcher: once a second, per connection, the DMS guests' states; heartbeats; zombies;
/// orphans (every 10 s, after reconcile).
fn watch_loop(weak: &std::sync::Weak<Shared>) {
    let mut tick: u64 = 0;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(s) = weak.upgrade() else { return };
        tick += 1;
        read_heartbeats(&s);
        let mut by_uri: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, g) in s.guests.lock().iter() {
            by_uri
                .entry(g.handle.uri.clone())
                .or_default()
                .push(name.clone());
        }
        let sweep_orphans = tick.is_multiple_of(10) && s.reconciled.load(Ordering::Relaxed);
        let uris: Vec<String> = if sweep_orphans {
            s.uris()
        } else {
            by_uri.keys().cloned().collect()
        };
        for uri in uris {
            let Ok(live) = s.conn(&uri).call("listing guests", list_ours) else {
                continue;
            };
            let live: HashMap<String, u32> = live.into_iter().collect();
            let mut dead = Vec::new();
            let mut zombies = Vec::new();
            {
                let mut guests = s.guests.lock();
                for name in by_uri.get(&uri).into_iter().flatten() {
                    let Some(g) = guests.get_mut(name) else {
                        continue;
                    };
                    if g.reported || s.creating.lock().contains(name) {
                        continue;
                    }
                    let state = live.get(name).copied();
                    let running = state == Some(virt::sys::VIR_DOMAIN_RUNNING);
                    let paused = state == Some(virt::sys::VIR_DOMAIN_PAUSED);
                    if !running && !paused && !g.saved {
                        g.reported = true;
                        dead.push(name.clone());
                        continue;
                    }
                    if !running || g.paused || g.saved || !g.heartbeat {
                        continue;
                    }
                    let why = match g.last_alive {
                        None if g.started.elapsed() > g.spawn_limit => Some(format!(
                            "it did not report alive within its spawn time limit of {} s",
                            g.spawn_limit.as_secs()
                        )),
                        Some(t) if t.elapsed() > g.alive_limit => Some(format!(
                            "it last reported alive {} s ago; its alive time limit is {} s",
                            t.elapsed().as_secs(),
                            g.alive_limit.as_secs()
                        )),
                        _ => None,
                    };
                    if let Some(why) = why {
                        g.reported = true;
                        zombies.push((name.clone(), why));
                    }
                }
            }
            for name in dead {
                tracing::warn!(domain = %name, "guest is no longer running");
                s.died(&name);
            }
            for (name, why) in zombies {
                // Off the watcher thread: destroying goes through the service and libvirt.
                let s2 = Arc::clone(&s);
                let _ = std::thread::Builder::new()
                    .name("guest-reap".into())
                    .spawn(move || s2.zombie(&name, why));
            }
            if sweep_orphans {
                let known: std::collections::HashSet<String> =
                    s.guests.lock().keys().cloned().collect();
                for name in live.keys() {
                    if known.contains(name) || s.creating.lock().contains(name) {
                        continue;
                    }
                    tracing::warn!(domain = %name, uri = %uri, "removing a DMS guest no domain owns");
                    if let Err(e) = s.teardown(name, &uri) {
                        tracing::warn!(domain = %name, error = %e, "could not remove orphan guest");
                    }
                }
            }
        }
    }
}

/// Reads whatever the guests wrote to their heartbeat sockets ("alive ..." lines).
fn read_heartbeats(s: &Shared) {
    let mut guests = s.guests.lock();
    for (name, g) in guests.iter_mut() {
        if !g.heartbeat || g.saved || g.reported {
            continue;
        }
        if g.alive_stream.is_none() {
            let p = s.repo.alive_socket(name);
            if let Ok(st) = UnixStream::connect(&p) {
                let _ = st.set_nonblocking(true);
                g.alive_stream = Some(st);
            }
        }
        let Some(st) = g.alive_stream.as_mut() else {
            continue;
        };
        let mut buf = [0u8; 4096];
        loop {
            match st.read(&mut buf) {
                Ok(0) => {
                    // QEMU closed it (guest stopped or restarted): reconnect next time.
                    g.alive_stream = None;
                    break;
                }
                Ok(n) => {
                    if buf[..n].windows(5).any(|w| w == b"alive") {
                        g.last_alive = Some(Instant::now());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    g.alive_stream = None;
                    break;
                }
            }
        }
    }
}
