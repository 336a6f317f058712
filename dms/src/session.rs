//! PAM sessions, batch jobs and account administration, on top of the service core.
//!
//! `pam_dms.so` reaches these through the session socket ([`Service::pam`], protocol in
//! `docs/pam-protocol.md`); dmsctl through D-Bus. Lock order: the session book, then a
//! domain's lock; never the other way round.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use dms_policies::{validate_name, Fqan, Granularity, IdleAction};

use crate::accounts::{Lease, MapError, Unmanaged};
use crate::domain::{DomainState, JoinTarget};
use crate::service::{
    err, lookup_user, now, ApiError, ApiResult, Caller, EnsureRequest, ErrorKind, Service,
};
use crate::store::{Store, StoreError, Table};

/// Longest service, rhost or tty string accepted from PAM.
const MAX_PAM_FIELD: usize = 256;

/// One open PAM session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Session id (`s<number>`).
    pub id: String,
    /// The domain it runs in.
    pub domain: String,
    /// Local account.
    pub user: String,
    /// PAM service (sshd, su, slurm, ...).
    pub service: String,
    /// Remote host, when PAM knows it.
    pub rhost: Option<String>,
    /// Terminal, when PAM knows it.
    pub tty: Option<String>,
    /// The process that holds the session (the PAM caller).
    pub pid: i32,
    /// Its start time, so a recycled pid is not taken for it.
    pub pid_start: u64,
    /// Batch job id.
    pub job: Option<String>,
    /// Unix seconds.
    pub opened_at: u64,
}

/// A batch job announced by a prolog (`dmsctl job start`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Job id.
    pub id: String,
    /// Job user.
    pub user: String,
    /// CPUs allocated on this node, when known.
    pub cpus: Option<u32>,
    /// Unix seconds.
    pub started_at: u64,
}

/// How long a domain's idle action waits for the processes that closed its last sessions to
/// exit.
const CLOSING_GRACE_SECS: u64 = 10;

/// A process that closed a session (identified by pid and start time, as pids are reused).
#[derive(Debug, Clone, Copy)]
struct ClosingProcess {
    pid: i32,
    start: u64,
    give_up_at: u64,
}

/// Open sessions and idle actions waiting for their time.
#[derive(Debug, Default)]
pub struct SessionBook {
    sessions: BTreeMap<String, Session>,
    next: u64,
    /// Domain → unix second when its idle action is due.
    idle_due: BTreeMap<String, u64>,
    /// Domain → processes that closed its sessions and may still be exiting inside it. Its idle
    /// action waits for them (up to [`CLOSING_GRACE_SECS`]): a freeze would stop `su` or sshd
    /// before they return, a destroy would kill them and lose the command's exit status.
    closing: BTreeMap<String, Vec<ClosingProcess>>,
    last_lease_check: u64,
}

impl SessionBook {
    /// Open sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Open sessions from the store (their processes are checked by the next tick).
    pub fn load(store: &Store) -> Result<SessionBook, StoreError> {
        let all: Vec<Session> = store.all_records(Table::Sessions)?;
        let next = all
            .iter()
            .filter_map(|s| s.id.strip_prefix('s')?.parse::<u64>().ok())
            .max()
            .map_or(1, |n| n + 1);
        Ok(SessionBook {
            sessions: all.into_iter().map(|s| (s.id.clone(), s)).collect(),
            next,
            idle_due: BTreeMap::new(),
            closing: BTreeMap::new(),
            last_lease_check: 0,
        })
    }

    /// Forgets the closing processes that have exited or whose grace has run out.
    fn prune_closing(&mut self, t: u64) {
        self.closing.retain(|_, procs| {
            procs.retain(|p| t < p.give_up_at && dms_join::start_time(p.pid).ok() == Some(p.start));
            !procs.is_empty()
        });
    }

    fn count(&self, domain: &str) -> usize {
        self.sessions
            .values()
            .filter(|s| s.domain == domain)
            .count()
    }
}

/// A request on the session socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum PamRequest {
    /// May the user log in?
    Account {
        /// PAM_USER.
        user: String,
        /// PAM_SERVICE.
        service: String,
        /// PAM_RHOST.
        #[serde(default)]
        rhost: Option<String>,
    },
    /// A session opens.
    Open(OpenRequest),
    /// A session closes.
    Close {
        /// PAM_USER.
        user: String,
        /// PAM_SERVICE.
        service: String,
        /// The process that opened it.
        pid: i32,
    },
}

/// The `open` request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OpenRequest {
    /// PAM_USER.
    pub user: String,
    /// PAM_SERVICE.
    pub service: String,
    /// PAM_RHOST.
    #[serde(default)]
    pub rhost: Option<String>,
    /// PAM_TTY.
    #[serde(default)]
    pub tty: Option<String>,
    /// The process to move into the domain.
    pub pid: i32,
    /// Batch job id.
    #[serde(default)]
    pub job: Option<String>,
    /// The user's X.509 proxy (PEM).
    #[serde(default)]
    pub proxy_pem: Option<String>,
}

/// A lease with what uses it, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountView {
    /// The lease.
    #[serde(flatten)]
    pub lease: Lease,
    /// Open sessions of the account.
    pub sessions: usize,
    /// Domains it owns.
    pub domains: Vec<String>,
}

/// Open sessions and owned domains, by account.
#[derive(Debug, Default)]
struct AccountUse {
    sessions: BTreeMap<String, usize>,
    domains: BTreeMap<String, Vec<String>>,
}

impl AccountUse {
    fn view(&self, lease: Lease) -> AccountView {
        AccountView {
            sessions: self.sessions.get(&lease.account).copied().unwrap_or(0),
            domains: self
                .domains
                .get(&lease.account)
                .cloned()
                .unwrap_or_default(),
            lease,
        }
    }

    fn in_use(&self, account: &str) -> bool {
        self.sessions.contains_key(account) || self.domains.contains_key(account)
    }
}

/// What a session open resolved to.
#[derive(Debug, Clone)]
pub enum Opened {
    /// The session runs in a domain.
    Domain {
        /// The session.
        session: Box<Session>,
        /// How to enter the domain.
        target: JoinTarget,
    },
    /// The user's domain is a libvirt guest: the session is recorded (it keeps the guest in
    /// use) but stays on the host.
    Guest {
        /// The session.
        session: Box<Session>,
    },
    /// The user is not managed by DMS; the session is left alone.
    Unmanaged(String),
}

fn admin() -> Caller {
    Caller {
        uid: 0,
        gids: vec![0],
    }
}

fn invalid(m: impl Into<String>) -> ApiError {
    err(ErrorKind::InvalidArgument, m)
}

fn from_map(e: MapError) -> ApiError {
    match e {
        MapError::Invalid(m) => invalid(m),
        MapError::NotFound(m) => err(ErrorKind::NotFound, m),
        MapError::Full(m) => err(ErrorKind::Conflict, m),
        MapError::Failed(m) => err(ErrorKind::Failed, m),
    }
}

fn pam_field(field: &str, v: &str) -> ApiResult<()> {
    if v.len() > MAX_PAM_FIELD || v.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{field}: {} is longer than {MAX_PAM_FIELD} bytes or holds control characters",
            dms_policies::identity::quote(v)
        )));
    }
    Ok(())
}

fn static_user(name: &str) -> Result<(u32, u32), MapError> {
    match lookup_user(name) {
        Ok(o) => Ok((o.uid, o.gid)),
        Err(e) if e.kind == ErrorKind::NotFound => Err(MapError::NotFound(format!(
            "account {name:?} does not exist on this node"
        ))),
        Err(e) => Err(MapError::Failed(e.message)),
    }
}

fn host_gid(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// Creates a pool account's home directory (owner-only), if missing.
fn create_home(path: &std::path::Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Renames a released pool account's home aside, so that the next identity leased the account
/// starts empty (the account's home path is free at once, however long the removal takes).
/// Only a real directory owned by the account is touched: a symlink or someone else's
/// directory at that path is left and logged. Returns where it went.
fn move_home_aside(home: &std::path::Path, uid: u32) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let not_removed = |e: &dyn std::fmt::Display| {
        tracing::warn!(home = %home.display(), error = %e, "released account's home not removed");
    };
    let meta = match std::fs::symlink_metadata(home) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            not_removed(&e);
            return None;
        }
    };
    if !meta.is_dir() || meta.uid() != uid {
        not_removed(&format_args!(
            "not a directory owned by the account (uid {uid}; found owner {})",
            meta.uid()
        ));
        return None;
    }
    let name = home.file_name()?.to_str()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let aside = home.with_file_name(format!(".dms-released.{name}.{nanos}"));
    match std::fs::rename(home, &aside) {
        Ok(()) => Some(aside),
        Err(e) => {
            not_removed(&e);
            None
        }
    }
}

/// Removes a home moved aside by [`move_home_aside`] (remove_dir_all does not follow symlinks).
fn remove_home_aside(home: &std::path::Path, aside: &std::path::Path) {
    match std::fs::remove_dir_all(aside) {
        Ok(()) => tracing::info!(home = %home.display(), "released account's home removed"),
        Err(e) => tracing::warn!(
            home = %home.display(),
            left = %aside.display(),
            error = %e,
            "released account's home only partly removed; remove what is left by hand"
        ),
    }
}

impl Service {
    fn publish_locked(&self, book: &crate::accounts::AccountBook) -> ApiResult<()> {
        book.publish(host_gid).map_err(|e| {
            tracing::error!(error = %e, "publishing NSS files failed");
            err(ErrorKind::Failed, format!("publishing accounts: {e}"))
        })
    }

    /// Writes the NSS files from the current leases (at start).
    pub fn publish_accounts(&self) -> ApiResult<()> {
        let book = self.accounts.lock();
        self.publish_locked(&book)
    }

    /// Maps a grid identity to a local account, leasing a pool account when the mapfile says
    /// so. Admins only (the lease table holds DNs).
    pub fn map_identity(&self, caller: &Caller, dn: &str, fqans: &[String]) -> ApiResult<Lease> {
        self.require_admin(caller, "map identities")?;
        self.map_inner(dn, fqans)
    }

    fn map_inner(&self, dn: &str, fqans: &[String]) -> ApiResult<Lease> {
        let mut book = self.accounts.lock();
        let (lease, previous) = book.map(dn, fqans, now(), static_user).map_err(from_map)?;
        let new = previous.is_none();
        let undo = |book: &mut crate::accounts::AccountBook| match &previous {
            Some(p) => book.restore(p.clone()),
            None => {
                book.release(&lease.account);
            }
        };
        if new {
            if let Some(home) = book.home_to_create(&lease) {
                if let Err(e) = create_home(&home, lease.uid, lease.gid) {
                    undo(&mut book);
                    return Err(err(
                        ErrorKind::Failed,
                        format!(
                            "creating home {} for {}: {e}",
                            home.display(),
                            lease.account
                        ),
                    ));
                }
            }
        }
        if let Err(e) = self
            .store
            .lock()
            .put_record(Table::Leases, &lease.account, &lease)
        {
            undo(&mut book);
            return Err(e.into());
        }
        if previous.as_ref().is_none_or(|p| p.groups != lease.groups) {
            self.publish_locked(&book)?;
            tracing::info!(account = %lease.account, pool = ?lease.pool, dn = %lease.dn, "account leased");
        }
        Ok(lease)
    }

    /// Open sessions and owned domains by account, counted once for any number of leases.
    /// A domain busy beyond the lock bound is an error rather than skipped, so a release or an
    /// expiry never misses a domain in use.
    fn account_use(&self) -> ApiResult<AccountUse> {
        let mut sessions: BTreeMap<String, usize> = BTreeMap::new();
        for s in self.sessions.lock().sessions.values() {
            *sessions.entry(s.user.clone()).or_default() += 1;
        }
        let mut domains: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let entries: Vec<_> = self.domains.read().values().cloned().collect();
        for e in &entries {
            let d = self.lock(e)?;
            domains
                .entry(d.owner.user.clone())
                .or_default()
                .push(d.name.clone());
        }
        Ok(AccountUse { sessions, domains })
    }

    /// Every lease and static mapping. Admins only.
    pub fn accounts(&self, caller: &Caller) -> ApiResult<Vec<AccountView>> {
        self.require_admin(caller, "list accounts")?;
        let leases: Vec<Lease> = self.accounts.lock().leases().cloned().collect();
        let used = self.account_use()?;
        Ok(leases.into_iter().map(|l| used.view(l)).collect())
    }

    /// One lease: admins, or the account itself.
    pub fn account(&self, caller: &Caller, name: &str) -> ApiResult<AccountView> {
        validate_name("account", name).map_err(|e| invalid(e.to_string()))?;
        let lease = self.accounts.lock().lease(name).cloned();
        let lease = lease.ok_or_else(|| {
            err(
                ErrorKind::NotFound,
                format!("account {name:?} is not leased or mapped"),
            )
        })?;
        if !self.is_admin(caller) && caller.uid != lease.uid {
            return Err(err(
                ErrorKind::PermissionDenied,
                format!(
                    "permission denied: uid {} may not see account {name:?}",
                    caller.uid
                ),
            ));
        }
        Ok(self.account_use()?.view(lease))
    }

    /// Releases a lease. Refused while the account has sessions or domains.
    pub fn release_account(&self, caller: &Caller, name: &str) -> ApiResult<()> {
        self.require_admin(caller, "release accounts")?;
        let view = self.account(caller, name)?;
        if view.sessions > 0 || !view.domains.is_empty() {
            return Err(err(
                ErrorKind::Conflict,
                format!(
                    "account {name:?} is in use: {} open session(s), domains [{}]; end them first (dmsctl domain destroy)",
                    view.sessions,
                    view.domains.join(", ")
                ),
            ));
        }
        self.drop_lease(name)
    }

    fn drop_lease(&self, name: &str) -> ApiResult<()> {
        let mut book = self.accounts.lock();
        let Some(old) = book.release(name) else {
            return Ok(());
        };
        if let Err(e) = self.store.lock().delete_record(Table::Leases, name) {
            book.restore(old);
            return Err(e.into());
        }
        self.publish_locked(&book)?;
        // Moved aside under the lock: a new lease of the account must not find the old home.
        let aside = book
            .home_to_clean(&old)
            .and_then(|home| move_home_aside(&home, old.uid).map(|a| (home, a)));
        drop(book);
        tracing::info!(account = name, dn = %old.dn, "account released");
        if let Some((home, aside)) = aside {
            remove_home_aside(&home, &aside);
        }
        Ok(())
    }

    /// The VO and primary FQAN a local user works under, or None when DMS does not manage them.
    fn identity_of(&self, user: &str, gid: u32) -> Option<(String, Option<Fqan>)> {
        let book = self.accounts.lock();
        if let Some(l) = book.lease(user) {
            if let Some(f) = l.primary() {
                return Some((f.vo.clone(), Some(f)));
            }
            if let Some(p) = l.pool.as_deref().and_then(|p| book.config().pools.get(p)) {
                return Some((p.vo().to_owned(), None));
            }
        } else if let Some(p) = book.pool_of(user) {
            // A pool account name without a lease (released while logged in elsewhere).
            return Some((p.vo().to_owned(), None));
        }
        drop(book);
        let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
            .ok()
            .flatten()?;
        let set = self.policies.read().0.clone();
        set.vo_names()
            .contains(&group.name.as_str())
            .then_some((group.name, None))
    }

    fn vo_allowed(&self, vo: &str) -> ApiResult<()> {
        let book = self.accounts.lock();
        let cfg = book.config();
        if cfg.banned_vos.iter().any(|v| v == vo) {
            return Err(err(
                ErrorKind::PermissionDenied,
                format!("VO {vo:?} is banned on this node (accounts.banned_vos)"),
            ));
        }
        if !cfg.reserved_for.is_empty() && !cfg.reserved_for.iter().any(|v| v == vo) {
            return Err(err(
                ErrorKind::PermissionDenied,
                format!(
                    "this node is reserved for VOs {} (accounts.reserved_for); VO {vo:?} may not log in",
                    cfg.reserved_for.join(", ")
                ),
            ));
        }
        drop(book);
        if !self.policies.read().0.vo_names().contains(&vo) {
            return Err(err(
                ErrorKind::PermissionDenied,
                format!("VO {vo:?} has no policy on this node"),
            ));
        }
        Ok(())
    }

    /// The identity in an X.509 proxy, verified against the trust store; it must map to
    /// `user` (its lease or static account).
    fn proxy_identity(&self, user: &str, gid: u32, pem: &str) -> ApiResult<(String, Option<Fqan>)> {
        let trust = self
            .accounts
            .lock()
            .trust()
            .map_err(|e| err(ErrorKind::Failed, format!("cannot verify proxies: {e}")))?;
        let id = dms_proxy::read_proxy(pem.as_bytes(), &trust, std::time::SystemTime::now())
            .map_err(|e| {
                err(
                    ErrorKind::PermissionDenied,
                    format!("the X.509 proxy presented for {user:?} is not acceptable: {e}"),
                )
            })?;
        let refuse = |why: String| {
            err(
                ErrorKind::PermissionDenied,
                format!(
                    "the X.509 proxy presented for {user:?} is of {:?}, {why}",
                    id.dn
                ),
            )
        };
        // Where the identity maps, tried in the book and undone under the same lock: a refused
        // login must not lease a pool account (nor make its home) for another identity, and an
        // identity that maps nowhere is a policy refusal, not an error that on_error=allow
        // lets through unplaced.
        {
            let mut book = self.accounts.lock();
            let trial = book.map(&id.dn, &id.fqans, now(), static_user);
            let (trial, previous) = trial.map_err(|e| match e {
                MapError::Failed(m) => err(ErrorKind::Failed, m),
                MapError::Invalid(m) | MapError::NotFound(m) | MapError::Full(m) => {
                    refuse(format!("which maps to no account: {m}"))
                }
            })?;
            match previous {
                Some(p) => book.restore(p),
                None => {
                    book.release(&trial.account);
                }
            }
            if trial.account != user {
                return Err(refuse(format!("which maps to account {:?}", trial.account)));
            }
        }
        let lease = self.map_inner(&id.dn, &id.fqans)?;
        if lease.account != user {
            return Err(refuse(format!("which maps to account {:?}", lease.account)));
        }
        match lease.primary() {
            Some(f) => Ok((f.vo.clone(), Some(f))),
            None => {
                let book = self.accounts.lock();
                let vo = lease
                    .pool
                    .as_deref()
                    .and_then(|p| book.config().pools.get(p))
                    .map(|p| p.vo().to_owned());
                drop(book);
                vo.or_else(|| self.identity_of(user, gid).map(|(v, _)| v))
                    .map(|v| (v, None))
                    .ok_or_else(|| {
                        err(
                            ErrorKind::PermissionDenied,
                            format!("the X.509 proxy of {:?} carries no VOMS attributes and {user:?} has no VO", id.dn),
                        )
                    })
            }
        }
    }

    /// Resolves who is logging in: (owner uid, VO and FQAN), or None when unmanaged.
    fn login_identity(
        &self,
        user: &str,
        proxy_pem: Option<&str>,
    ) -> ApiResult<Option<(String, Option<Fqan>)>> {
        validate_name("user", user).map_err(|e| invalid(e.to_string()))?;
        let owner = lookup_user(user).map_err(|_| {
            err(
                ErrorKind::NotFound,
                format!("unknown user {user:?}: no such account on this node"),
            )
        })?;
        if let Some(pem) = proxy_pem {
            return self.proxy_identity(user, owner.gid, pem).map(Some);
        }
        match self.identity_of(user, owner.gid) {
            Some(id) => Ok(Some(id)),
            None => match self.accounts.lock().config().unmanaged {
                Unmanaged::Allow => Ok(None),
                Unmanaged::Deny => Err(err(
                    ErrorKind::PermissionDenied,
                    format!(
                        "user {user:?} has no grid identity (no lease or mapping, and no VO policy named after their primary group) and accounts.unmanaged = \"deny\""
                    ),
                )),
            },
        }
    }

    /// The `account` PAM request: may this user log in now?
    pub fn pam_account(&self, user: &str, service: &str, rhost: Option<&str>) -> ApiResult<()> {
        pam_field("service", service)?;
        if let Some(r) = rhost {
            pam_field("rhost", r)?;
        }
        match self.login_identity(user, None)? {
            Some((vo, _)) => self.vo_allowed(&vo),
            None => Ok(()),
        }
    }

    /// The `open` PAM request: finds or creates the user's domain and records the session.
    pub fn pam_open(&self, req: &OpenRequest) -> ApiResult<Opened> {
        pam_field("service", &req.service)?;
        for (f, v) in [("rhost", &req.rhost), ("tty", &req.tty)] {
            if let Some(v) = v {
                pam_field(f, v)?;
            }
        }
        if req.pid <= 0 {
            return Err(invalid(format!("pid: {} is not a process id", req.pid)));
        }
        let pid_start =
            dms_join::start_time(req.pid).map_err(|e| invalid(format!("pid {}: {e}", req.pid)))?;
        let Some((vo, fqan)) = self.login_identity(&req.user, req.proxy_pem.as_deref())? else {
            return Ok(Opened::Unmanaged(format!(
                "user {:?} is not managed by DMS (no grid identity)",
                req.user
            )));
        };
        self.vo_allowed(&vo)?;
        let job = match &req.job {
            Some(j) if !j.is_empty() => Some(j.clone()),
            _ => {
                let jobs = self.jobs.lock();
                let mine: Vec<&Job> = jobs.values().filter(|j| j.user == req.user).collect();
                (mine.len() == 1).then(|| mine[0].id.clone())
            }
        };
        let ensure = EnsureRequest {
            user: req.user.clone(),
            vo,
            fqan: fqan.map(|f| f.to_string()),
            job,
        };
        // A domain destroyed, frozen or saved by its idle action between ensure and recording
        // the session is created, thawed or restored again (up to twice).
        const ATTEMPTS: usize = 3;
        for attempt in 0..ATTEMPTS {
            let retry = attempt + 1 < ATTEMPTS;
            let d = self.ensure(&admin(), &ensure)?;
            if d.state == DomainState::Saved {
                match self.restore(&admin(), &d.name) {
                    Ok(()) => {
                        tracing::info!(domain = %d.name, user = %req.user, "restored for a login")
                    }
                    Err(e) if e.kind == ErrorKind::Conflict => {}
                    Err(e) if e.kind == ErrorKind::NotFound && retry => continue,
                    Err(e) => return Err(e),
                }
            }
            if d.state == DomainState::Frozen {
                match self.thaw(&admin(), &d.name) {
                    Ok(()) => {
                        tracing::info!(domain = %d.name, user = %req.user, "thawed for a login")
                    }
                    Err(e) if e.kind == ErrorKind::Conflict => {}
                    Err(e) if e.kind == ErrorKind::NotFound && retry => continue,
                    Err(e) => return Err(e),
                }
            }
            // A guest runs its own kernel: the host session cannot enter it, it only keeps
            // the guest in use (and restores it on the next login after an idle save).
            let target = if d.backend == dms_policies::BackendKind::Libvirt {
                None
            } else {
                match self.join_info(&admin(), &d.name) {
                    Ok(t) => Some(t),
                    // Destroyed or frozen by its idle action since ensure: again from ensure.
                    Err(e)
                        if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Conflict) && retry =>
                    {
                        continue
                    }
                    Err(e) => return Err(e),
                }
            };
            let mut book = self.sessions.lock();
            // The idle action runs under the sessions lock: checked here, the domain cannot be
            // frozen, saved or destroyed by it before the session is recorded.
            let usable = match self.entry(&d.name) {
                Ok(e) => self.lock(&e).map_or(true, |dom| {
                    !matches!(dom.state, DomainState::Frozen | DomainState::Saved)
                }),
                Err(_) => false,
            };
            if !usable {
                drop(book);
                if retry {
                    continue;
                }
                return Err(err(
                    ErrorKind::Conflict,
                    format!(
                        "domain {:?} went away or was frozen by its idle action while the session opened",
                        d.name
                    ),
                ));
            }
            let session = Session {
                id: format!("s{}", book.next),
                domain: d.name.clone(),
                user: req.user.clone(),
                service: req.service.clone(),
                rhost: req.rhost.clone(),
                tty: req.tty.clone(),
                pid: req.pid,
                pid_start,
                job: d.job.clone(),
                opened_at: now(),
            };
            self.store
                .lock()
                .put_record(Table::Sessions, &session.id, &session)?;
            book.next += 1;
            book.idle_due.remove(&d.name);
            book.closing.remove(&d.name);
            book.sessions.insert(session.id.clone(), session.clone());
            drop(book);
            // Lease expiry counts in days: persisting the last use once a minute is plenty, and
            // keeps a write off most logins.
            let t = now();
            let mut book = self.accounts.lock();
            let stale = book
                .lease(&req.user)
                .is_some_and(|l| t.saturating_sub(l.used_at) >= 60);
            if stale {
                if let Some(l) = book.touch(&req.user, t).cloned() {
                    let _ = self.store.lock().put_record(Table::Leases, &l.account, &l);
                }
            }
            drop(book);
            tracing::info!(
                session = %session.id, domain = %session.domain, user = %session.user,
                service = %session.service, rhost = ?session.rhost, pid = session.pid,
                "session opened"
            );
            return Ok(match target {
                Some(target) => Opened::Domain {
                    session: Box::new(session),
                    target,
                },
                None => Opened::Guest {
                    session: Box::new(session),
                },
            });
        }
        Err(err(ErrorKind::Failed, "session open did not settle"))
    }

    /// The `close` PAM request. Returns the closed session, if there was one.
    pub fn pam_close(&self, user: &str, pid: i32) -> ApiResult<Option<Session>> {
        validate_name("user", user).map_err(|e| invalid(e.to_string()))?;
        let mut book = self.sessions.lock();
        let id = book
            .sessions
            .values()
            .filter(|s| s.pid == pid && s.user == user)
            .map(|s| s.id.clone())
            .next_back();
        let Some(id) = id else {
            return Ok(None);
        };
        let s = self.end_session(&mut book, &id, "closed")?;
        book.closing
            .entry(s.domain.clone())
            .or_default()
            .push(ClosingProcess {
                pid: s.pid,
                start: s.pid_start,
                give_up_at: now() + CLOSING_GRACE_SECS,
            });
        Ok(Some(s))
    }

    /// Removes a session from the book and the store.
    fn forget_session(&self, book: &mut SessionBook, id: &str, how: &str) -> ApiResult<Session> {
        self.store.lock().delete_record(Table::Sessions, id)?;
        let s = book
            .sessions
            .remove(id)
            .ok_or_else(|| err(ErrorKind::NotFound, format!("no session {id}")))?;
        tracing::info!(session = %s.id, domain = %s.domain, user = %s.user, how, "session ended");
        Ok(s)
    }

    /// Ends a session; on its domain's last, schedules the domain's idle action.
    fn end_session(&self, book: &mut SessionBook, id: &str, how: &str) -> ApiResult<Session> {
        let s = self.forget_session(book, id, how)?;
        if book.count(&s.domain) == 0 {
            if let Ok(e) = self.entry(&s.domain) {
                if let Ok(d) = self.lock(&e) {
                    if d.idle.action != IdleAction::Keep {
                        let due = now() + d.idle.after_secs;
                        book.idle_due.insert(s.domain.clone(), due);
                        tracing::info!(domain = %s.domain, action = %d.idle.action, after_secs = d.idle.after_secs, "last session ended; idle action scheduled");
                    }
                }
            }
        }
        Ok(s)
    }

    /// Periodic work (about once a second): ends sessions whose process died without closing,
    /// runs due idle actions, and expires unused leases.
    pub fn tick(&self) {
        let t = now();
        let mut book = self.sessions.lock();
        let dead: Vec<String> = book
            .sessions
            .values()
            .filter(|s| dms_join::start_time(s.pid).ok() != Some(s.pid_start))
            .map(|s| s.id.clone())
            .collect();
        for id in dead {
            if let Err(e) = self.end_session(&mut book, &id, "process gone without close") {
                tracing::warn!(session = %id, error = %e.message, "ending a dead session");
            }
        }
        let due: Vec<String> = book
            .idle_due
            .iter()
            .filter(|(_, at)| **at <= t)
            .map(|(d, _)| d.clone())
            .collect();
        book.prune_closing(t);
        for name in due {
            if book.closing.contains_key(&name) {
                continue;
            }
            book.idle_due.remove(&name);
            if book.count(&name) > 0 {
                continue;
            }
            self.idle_action(&name);
        }
        let check_leases = t >= book.last_lease_check + 60;
        if check_leases {
            book.last_lease_check = t;
        }
        drop(book);
        if check_leases {
            let expired = self.accounts.lock().expired(t);
            if expired.is_empty() {
                return;
            }
            let used = match self.account_use() {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e.message, "lease expiry postponed");
                    return;
                }
            };
            for account in expired {
                if used.in_use(&account) {
                    continue;
                }
                match self.drop_lease(&account) {
                    Ok(()) => tracing::info!(account, "lease expired"),
                    Err(e) => tracing::warn!(account, error = %e.message, "lease expiry failed"),
                }
            }
        }
    }

    fn idle_action(&self, name: &str) {
        let Ok(e) = self.entry(name) else { return };
        let (action, state, guest) = match self.lock(&e) {
            Ok(d) => (
                d.idle.action,
                d.state,
                d.backend == dms_policies::BackendKind::Libvirt,
            ),
            Err(_) => return,
        };
        let result = match (action, state) {
            (IdleAction::Keep, _) => return,
            (IdleAction::Destroy, _) => {
                self.destroy_because(&admin(), name, crate::usage::EndCause::Idle)
            }
            (IdleAction::Save, DomainState::Running | DomainState::Frozen) if guest => {
                self.save(&admin(), name)
            }
            (IdleAction::Freeze | IdleAction::Save, DomainState::Running) => {
                if action == IdleAction::Save {
                    tracing::info!(domain = name, "idle action \"save\" freezes container domains (save/restore is for libvirt guests)");
                }
                self.freeze(&admin(), name)
            }
            _ => return,
        };
        match result {
            Ok(()) => tracing::info!(domain = name, action = %action, "idle action done"),
            Err(e) => {
                tracing::warn!(domain = name, action = %action, error = %e.message, "idle action failed")
            }
        }
    }

    /// Open sessions (admins see all, others their own).
    pub fn sessions(&self, caller: &Caller) -> Vec<Session> {
        let admin = self.is_admin(caller);
        let me = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(caller.uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        self.sessions
            .lock()
            .sessions
            .values()
            .filter(|s| admin || me.as_deref() == Some(&s.user))
            .cloned()
            .collect()
    }

    /// A prolog announces a job.
    pub fn job_start(
        &self,
        caller: &Caller,
        id: &str,
        user: &str,
        cpus: Option<u32>,
    ) -> ApiResult<Job> {
        self.require_admin(caller, "announce jobs")?;
        validate_name("job", id).map_err(|e| invalid(e.to_string()))?;
        validate_name("user", user).map_err(|e| invalid(e.to_string()))?;
        lookup_user(user)?;
        let job = Job {
            id: id.to_owned(),
            user: user.to_owned(),
            cpus,
            started_at: now(),
        };
        let mut jobs = self.jobs.lock();
        if let Some(j) = jobs.get(id) {
            if j.user != user {
                return Err(err(
                    ErrorKind::Conflict,
                    format!("job {id:?} is already running for user {:?}", j.user),
                ));
            }
            return Ok(j.clone());
        }
        self.store.lock().put_record(Table::Jobs, id, &job)?;
        jobs.insert(id.to_owned(), job.clone());
        tracing::info!(job = id, user, cpus = ?cpus, "job started");
        Ok(job)
    }

    /// An epilog ends a job: its per-job domains are destroyed. Returns them.
    pub fn job_finish(&self, caller: &Caller, id: &str) -> ApiResult<Vec<String>> {
        self.require_admin(caller, "end jobs")?;
        validate_name("job", id).map_err(|e| invalid(e.to_string()))?;
        let entries: Vec<_> = self.domains.read().values().cloned().collect();
        let mut doomed = Vec::new();
        for e in &entries {
            let d = self.lock(e)?;
            if d.granularity == Granularity::Job && d.job.as_deref() == Some(id) {
                doomed.push(d.name.clone());
            }
        }
        let job = self.jobs.lock().remove(id);
        if job.is_none() {
            return Err(err(
                ErrorKind::NotFound,
                format!("no job {id:?} was started"),
            ));
        }
        self.store.lock().delete_record(Table::Jobs, id)?;
        let mut done = Vec::new();
        for name in doomed {
            let mut book = self.sessions.lock();
            let ids: Vec<String> = book
                .sessions
                .values()
                .filter(|s| s.domain == name)
                .map(|s| s.id.clone())
                .collect();
            for sid in ids {
                if let Err(e) = self.forget_session(&mut book, &sid, "job finished") {
                    tracing::warn!(session = %sid, error = %e.message, "forgetting a finished job's session");
                }
            }
            book.idle_due.remove(&name);
            book.closing.remove(&name);
            drop(book);
            match self.destroy_because(&admin(), &name, crate::usage::EndCause::JobFinished) {
                Ok(()) => done.push(name),
                Err(e) => {
                    tracing::warn!(domain = %name, error = %e.message, "destroying a finished job's domain")
                }
            }
        }
        tracing::info!(job = id, domains = ?done, "job finished");
        Ok(done)
    }

    /// Serves one line of the session socket; `peer_uid` is from SO_PEERCRED.
    pub fn pam(&self, peer_uid: u32, line: &str) -> String {
        let answer = if peer_uid != 0 {
            Err(err(
                ErrorKind::PermissionDenied,
                format!(
                    "permission denied: uid {peer_uid} may not use the session socket (root only)"
                ),
            ))
        } else {
            match serde_json::from_str::<PamRequest>(line) {
                Err(e) => Err(invalid(format!("bad request: {e}"))),
                Ok(PamRequest::Account {
                    user,
                    service,
                    rhost,
                }) => self
                    .timed("pam_account", |s| {
                        s.pam_account(&user, &service, rhost.as_deref())
                    })
                    .map(|()| serde_json::json!({"ok": true})),
                Ok(PamRequest::Open(req)) => {
                    self.timed("pam_open", |s| s.pam_open(&req))
                        .map(|o| match o {
                            Opened::Domain { session, target } => serde_json::json!({
                                "ok": true, "session": session.id, "domain": session.domain,
                                "target": target,
                            }),
                            Opened::Guest { session } => serde_json::json!({
                                "ok": true, "session": session.id, "domain": session.domain,
                                "guest": true,
                            }),
                            Opened::Unmanaged(why) => {
                                serde_json::json!({"ok": true, "unmanaged": why})
                            }
                        })
                }
                Ok(PamRequest::Close { user, service, pid }) => pam_field("service", &service)
                    .and_then(|()| {
                        self.timed("pam_close", |s| s.pam_close(&user, pid))
                            .map(|s| match s {
                                Some(s) => serde_json::json!({"ok": true, "session": s.id}),
                                None => serde_json::json!({"ok": true}),
                            })
                    }),
            }
        };
        let v = answer.unwrap_or_else(|e| {
            tracing::warn!(error = %e.message, "session request refused");
            serde_json::json!({"ok": false, "kind": e.kind.name(), "error": e.message})
        });
        v.to_string()
    }
}
