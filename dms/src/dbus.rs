//! The D-Bus adapter: a thin layer over [`Service`]. Served on the private peer-to-peer socket
//! (caller from SO_PEERCRED) and on the system bus (caller from the bus driver). Structured
//! values travel as JSON strings (documented in README "API").

use std::os::fd::AsRawFd;
use std::sync::Arc;

use zbus::message::Header;
use zbus::{interface, Connection};

use crate::service::{ApiError, Caller, EnsureRequest, ErrorKind, RunRequest, Service, Signal};

/// Well-known bus name.
pub const BUS_NAME: &str = "io.dms.Manager1";
/// Object path.
pub const OBJECT_PATH: &str = "/io/dms/Manager1";
/// Interface name.
pub const INTERFACE: &str = "io.dms.Manager1";

/// D-Bus errors: `io.dms.Error.<Kind>`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "io.dms.Error")]
pub enum DmsError {
    /// Transport error.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// See [`ErrorKind::InvalidArgument`].
    InvalidArgument(String),
    /// See [`ErrorKind::NotFound`].
    NotFound(String),
    /// See [`ErrorKind::PermissionDenied`].
    PermissionDenied(String),
    /// See [`ErrorKind::Conflict`].
    Conflict(String),
    /// See [`ErrorKind::Timeout`].
    Timeout(String),
    /// See [`ErrorKind::Failed`].
    Failed(String),
}

impl From<ApiError> for DmsError {
    fn from(e: ApiError) -> Self {
        match e.kind {
            ErrorKind::InvalidArgument => DmsError::InvalidArgument(e.message),
            ErrorKind::NotFound => DmsError::NotFound(e.message),
            ErrorKind::PermissionDenied => DmsError::PermissionDenied(e.message),
            ErrorKind::Conflict => DmsError::Conflict(e.message),
            ErrorKind::Timeout => DmsError::Timeout(e.message),
            ErrorKind::Failed => DmsError::Failed(e.message),
        }
    }
}

/// How the caller of a connection is identified.
#[derive(Debug, Clone)]
pub enum PeerAuth {
    /// A peer-to-peer connection: one peer, credentials taken at accept time.
    Fixed(Caller),
    /// A bus connection: ask the bus driver about each sender.
    Bus,
}

/// A peer-to-peer connection's subscription to the daemon's signals. The peer gets none
/// until it calls `Subscribe`: on a bus the broker sends signals only to clients with a
/// matching rule, and without this every socket client (PAM, Slurm, each `dmsctl`) would
/// receive and decode every state change of the node.
#[derive(Debug, Clone)]
pub struct Subscription {
    events: tokio::sync::broadcast::Sender<Signal>,
    state: Arc<parking_lot::Mutex<SubscriptionState>>,
    started: Arc<tokio::sync::Notify>,
}

#[derive(Debug)]
enum SubscriptionState {
    NotStarted,
    /// Started; the receiver waits for [`Subscription::forward`] to take it.
    Started(tokio::sync::broadcast::Receiver<Signal>),
    /// Being forwarded.
    Forwarding,
}

impl Subscription {
    /// A subscription to `events`, not started.
    pub fn new(events: tokio::sync::broadcast::Sender<Signal>) -> Self {
        Self {
            events,
            state: Arc::new(parking_lot::Mutex::new(SubscriptionState::NotStarted)),
            started: Arc::default(),
        }
    }

    /// Starts it; once started, further calls change nothing. Every signal sent after the
    /// first call returns is forwarded.
    pub fn start(&self) {
        let mut state = self.state.lock();
        if matches!(*state, SubscriptionState::NotStarted) {
            *state = SubscriptionState::Started(self.events.subscribe());
            self.started.notify_one();
        }
    }

    /// Sends `conn` the signals once the subscription is started, until sending fails (the
    /// caller also stops it when the connection closes).
    pub async fn forward(&self, conn: &Connection) {
        use tokio::sync::broadcast::error::RecvError;
        let mut rx = loop {
            let taken = {
                let mut state = self.state.lock();
                match std::mem::replace(&mut *state, SubscriptionState::Forwarding) {
                    SubscriptionState::Started(rx) => Some(rx),
                    other => {
                        *state = other;
                        None
                    }
                }
            };
            match taken {
                Some(rx) => break rx,
                None => self.started.notified().await,
            }
        };
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    if emit_signal(conn, &ev).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            }
        }
    }
}

/// The exported object.
#[derive(Debug)]
pub struct Api {
    svc: Arc<Service>,
    auth: PeerAuth,
    subscription: Option<Subscription>,
}

impl Api {
    /// An object for one connection; `subscription` is a peer-to-peer connection's (see
    /// [`Subscription`]), `None` on the bus.
    pub fn new(svc: Arc<Service>, auth: PeerAuth, subscription: Option<Subscription>) -> Self {
        Self {
            svc,
            auth,
            subscription,
        }
    }

    async fn caller(&self, hdr: &Header<'_>, conn: &Connection) -> Result<Caller, DmsError> {
        match &self.auth {
            PeerAuth::Fixed(c) => Ok(c.clone()),
            PeerAuth::Bus => {
                let sender = hdr
                    .sender()
                    .ok_or_else(|| DmsError::PermissionDenied("message without sender".into()))?;
                let proxy = zbus::fdo::DBusProxy::new(conn).await?;
                let creds = proxy
                    .get_connection_credentials(sender.clone().into())
                    .await
                    .map_err(|e| DmsError::Failed(format!("credentials of {sender}: {e}")))?;
                let uid = creds
                    .unix_user_id()
                    .ok_or_else(|| DmsError::PermissionDenied("caller uid unknown".into()))?;
                let mut gids = creds.unix_group_ids().cloned().unwrap_or_default();
                if gids.is_empty() {
                    gids = Caller::from_pid(uid, u32::MAX, creds.process_id()).gids;
                }
                Ok(Caller { uid, gids })
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        method: &'static str,
        f: impl FnOnce(&Service) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, DmsError> {
        let svc = Arc::clone(&self.svc);
        // On the multi-threaded runtime (dmsd's) the call runs on this worker thread, which
        // then sends the reply itself: handing the result back from a blocking-pool thread
        // costs a wakeup, and on a busy node the woken worker can wait a scheduler tick or
        // more behind a CPU that is in a long kernel operation (a namespace being made).
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            return tokio::task::block_in_place(move || svc.timed(method, f))
                .map_err(DmsError::from);
        }
        tokio::task::spawn_blocking(move || svc.timed(method, f))
            .await
            .map_err(|e| DmsError::Failed(format!("internal error: {e}")))?
            .map_err(DmsError::from)
    }
}

/// A command's stdio: none (/dev/null) or stdin, stdout and stderr.
fn check_stdio(stdio: &[zbus::OwnedFd]) -> Result<(), DmsError> {
    if stdio.is_empty() || stdio.len() == 3 {
        return Ok(());
    }
    Err(DmsError::InvalidArgument(format!(
        "stdio: {} fds given, expected 0 or 3",
        stdio.len()
    )))
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, DmsError> {
    serde_json::to_string(v).map_err(|e| DmsError::Failed(e.to_string()))
}

#[interface(name = "io.dms.Manager1")]
impl Api {
    /// Creates the domain for an identity per policy, or returns the existing one (JSON).
    async fn ensure_domain(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        user: String,
        vo: String,
        fqan: String,
        job: String,
    ) -> Result<String, DmsError> {
        let c = self.caller(&hdr, conn).await?;
        let req = EnsureRequest::of(user, vo, fqan, job);
        let d = self
            .blocking("ensure_domain", move |s| s.ensure(&c, &req))
            .await?;
        json(&d)
    }

    /// One domain with live usage (JSON).
    async fn get_domain(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: String,
    ) -> Result<String, DmsError> {
        let c = self.caller(&hdr, conn).await?;
        let v = self
            .blocking("get_domain", move |s| s.get(&c, &name))
            .await?;
        json(&v)
    }

    /// Domains visible to the caller (JSON array).
    async fn list_domains(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, DmsError> {
        let c = self.caller(&hdr, conn).await?;
        let v = self
            .blocking("list_domains", move |s| Ok(s.list(&c)))
            .await?;
        json(&v)
    }

    /// Kills a domain's processes and removes it.
    async fn destroy_domain(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: String,
    ) -> Result<(), DmsError> {
        let c = self.caller(&hdr, conn).await?;
        self.blocking("destroy_domain", move |s| s.destroy(&c, &name))
            .await
    }

    /// Freezes a domain; returns when every process is stopped.
    async fn freeze_domain(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: String,
    ) -> Result<(), DmsError> {
        let c = self.caller(&hdr, conn).await?;
        self.blocking("freeze_domain", move |s| s.freeze(&c, &name))
            .await
    }

    /// Thaws a frozen domain.
    async fn thaw_domain(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: String,
    ) -> Result<(), DmsError> {
        let c = self.caller(&hdr, conn).await?;
        self.blocking("thaw_domain", move |s| s.thaw(&c, &name))
            .await
    }

    /// Saves a running libvirt guest to the domain repository and stops it.
    async fn save_domain(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: String,
    ) -> Result<(), DmsError> {
        let c = self.caller(&hdr, conn).await?;
        self.blocking("save_domain", move |s| s.save(&c, &name))
            .await
    }

    /// Starts a saved guest from its saved state.
    async fn restore_domain(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: String,
    ) -> Result<(), DmsError> {
        let c = self.caller(&hdr, conn).await?;
        self.blocking("restore_domain", move |s| s.restore(&c, &name))
            .await
    }

    /// What a single-threaded root process needs to enter a running container domain itself
    /// (init pid and start time, cgroup.procs files, namespaces), as JSON.
    async fn join_info(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: String,
    ) -> Result<String, DmsError> {
        let c = self.caller(&hdr, conn).await?;
        let t = self
            .blocking("join_info", move |s| s.join_info(&c, &name))
            .await?;
        json(&t)
    }

    /// Moves a process into a domain.
    async fn attach_pid(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: String,
        pid: i32,
    ) -> Result<(), DmsError> {
        let c = self.caller(&hdr, conn).await?;
        self.blocking("attach_pid", move |s| s.attach(&c, &name, pid))
            .await
    }

    /// Runs a command in a domain. `stdio` holds 0 or 3 fds (stdin, stdout, stderr); with
    /// `wait`, returns (pid, exit code or 128+signal), else (pid, -1) at once.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: String,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: String,
        user: String,
        stdio: Vec<zbus::OwnedFd>,
        wait: bool,
    ) -> Result<(i32, i32), DmsError> {
        let c = self.caller(&hdr, conn).await?;
        check_stdio(&stdio)?;
        let req = RunRequest {
            name,
            argv,
            env,
            cwd: Some(cwd),
            user: Some(user),
        };
        let result = self
            .blocking("run", move |s| {
                let raw: Vec<i32> = stdio.iter().map(|f| f.as_raw_fd()).collect();
                let child = s.run(&c, &req, &raw)?;
                drop(stdio);
                let pid = child.pid;
                if !wait {
                    return Ok((pid, -1));
                }
                let status = child.wait().map_err(|e| ApiError {
                    kind: ErrorKind::Failed,
                    message: e.to_string(),
                })?;
                Ok((pid, status.shell_code()))
            })
            .await?;
        Ok(result)
    }

    /// Creates a new domain for an identity, runs a command in it, waits, and destroys the
    /// domain (admins): returns (domain name, pid, exit status). The identity's domain must not
    /// exist yet. stdio: 0 or 3 fds, as for Run.
    #[allow(clippy::too_many_arguments)]
    async fn run_once(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        user: String,
        vo: String,
        fqan: String,
        job: String,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: String,
        run_as: String,
        stdio: Vec<zbus::OwnedFd>,
    ) -> Result<(String, i32, i32), DmsError> {
        let c = self.caller(&hdr, conn).await?;
        check_stdio(&stdio)?;
        let ensure = EnsureRequest::of(user, vo, fqan, job);
        let run = RunRequest {
            name: String::new(),
            argv,
            env,
            cwd: Some(cwd),
            user: Some(run_as),
        };
        let o = self
            .blocking("run_once", move |s| s.run_once(&c, &ensure, &run, stdio))
            .await?;
        Ok((o.name, o.pid, o.status))
    }

    /// Starts sending this connection the `StateChanged` and `LimitEvent` signals. On the
    /// private socket a client gets none until it calls this; on the system bus its match
    /// rules select them and this does nothing.
    async fn subscribe(&self) {
        if let Some(s) = &self.subscription {
            s.start();
        }
    }

    /// Reloads the policy directory; on failure the previous policies stay in force.
    async fn reload_policies(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>, DmsError> {
        let c = self.caller(&hdr, conn).await?;
        self.blocking("reload_policies", move |s| s.reload(&c))
            .await
    }

    /// Maps a grid identity (DN, FQANs primary first) to a local account, leasing a pool
    /// account when the grid-mapfile says so (JSON lease). Admins only.
    async fn map_identity(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        dn: String,
        fqans: Vec<String>,
    ) -> Result<String, DmsError> {
        let c = self.caller(&hdr, conn).await?;
        let v = self
            .blocking("map_identity", move |s| s.map_identity(&c, &dn, &fqans))
            .await?;
        json(&v)
    }

    /// Leases and static mappings with their use (JSON array). Admins only.
    async fn list_accounts(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, DmsError> {
        let c = self.caller(&hdr, conn).await?;
        let v = self
            .blocking("list_accounts", move |s| s.accounts(&c))
            .await?;
        json(&v)
    }

    /// One lease (JSON): admins, or the account itself.
    async fn get_account(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: String,
    ) -> Result<String, DmsError> {
        let c = self.caller(&hdr, conn).await?;
        let v = self
            .blocking("get_account", move |s| s.account(&c, &name))
            .await?;
        json(&v)
    }

    /// Releases a lease (refused while the account has sessions or domains). Admins only.
    async fn release_account(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: String,
    ) -> Result<(), DmsError> {
        let c = self.caller(&hdr, conn).await?;
        self.blocking("release_account", move |s| s.release_account(&c, &name))
            .await
    }

    /// Open PAM sessions (JSON array): all for admins, the caller's own otherwise.
    async fn list_sessions(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, DmsError> {
        let c = self.caller(&hdr, conn).await?;
        let v = self
            .blocking("list_sessions", move |s| Ok(s.sessions(&c)))
            .await?;
        json(&v)
    }

    /// A batch prolog announces a job (cpus 0 = unknown). Admins only.
    async fn job_start(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        id: String,
        user: String,
        cpus: u32,
    ) -> Result<String, DmsError> {
        let c = self.caller(&hdr, conn).await?;
        let cpus = (cpus > 0).then_some(cpus);
        let v = self
            .blocking("job_start", move |s| s.job_start(&c, &id, &user, cpus))
            .await?;
        json(&v)
    }

    /// A batch epilog ends a job; returns the per-job domains destroyed. Admins only.
    async fn job_finish(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        id: String,
    ) -> Result<Vec<String>, DmsError> {
        let c = self.caller(&hdr, conn).await?;
        self.blocking("job_finish", move |s| s.job_finish(&c, &id))
            .await
    }

    /// Node status with every visible domain's quotas and usage (JSON, docs/status.md).
    async fn node_status(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, DmsError> {
        let c = self.caller(&hdr, conn).await?;
        let v = self
            .blocking("node_status", move |s| Ok(s.status_report(&c)))
            .await?;
        json(&v)
    }

    /// Usage records matching a JSON filter (`{"vo":..,"account":..,"domain":..,"job":..,
    /// "since":..,"until":..}`, all optional), as a JSON array.
    async fn usage_records(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        filter: String,
    ) -> Result<String, DmsError> {
        let c = self.caller(&hdr, conn).await?;
        let f: dms_accounting::records::UsageFilter = if filter.is_empty() {
            Default::default()
        } else {
            serde_json::from_str(&filter)
                .map_err(|e| DmsError::InvalidArgument(format!("usage filter: {e}")))?
        };
        let v = self
            .blocking("usage_records", move |s| s.usage_records(&c, &f))
            .await?;
        json(&v)
    }

    async fn status(&self) -> Result<String, DmsError> {
        let v = self.blocking("status", |s| Ok(s.status())).await?;
        json(&v)
    }
}

/// Emits `StateChanged(name, old, new)` or `LimitEvent(domain, kind, count, action, detail)`
/// on a connection.
pub async fn emit_signal(conn: &Connection, signal: &Signal) -> zbus::Result<()> {
    match signal {
        Signal::State(change) => {
            conn.emit_signal(
                None::<&str>,
                OBJECT_PATH,
                INTERFACE,
                "StateChanged",
                &(
                    change.name.as_str(),
                    change.old.as_str(),
                    change.new.as_str(),
                ),
            )
            .await
        }
        Signal::Limit(ev) => {
            conn.emit_signal(
                None::<&str>,
                OBJECT_PATH,
                INTERFACE,
                "LimitEvent",
                &(
                    ev.domain.as_str(),
                    ev.kind.as_str(),
                    ev.count,
                    ev.action.as_str(),
                    ev.detail.as_str(),
                ),
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::StateChange;
    use futures_util::StreamExt;
    use std::time::Duration;

    fn change(name: &str) -> Signal {
        Signal::State(StateChange {
            name: name.into(),
            old: "running".into(),
            new: "destroyed".into(),
        })
    }

    /// The name of the next signal `stream` yields within `limit`, if any.
    async fn next_signal(stream: &mut zbus::MessageStream, limit: Duration) -> Option<String> {
        let msg = tokio::time::timeout(limit, stream.next())
            .await
            .ok()??
            .ok()?;
        let (name, _, _): (String, String, String) = msg.body().deserialize().ok()?;
        Some(name)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_gets_signals_only_after_it_subscribed() {
        let (server_end, client_end) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let guid = zbus::Guid::generate();
        let server = zbus::connection::Builder::unix_stream(server_end)
            .server(guid)
            .p2p()
            .build();
        let client = zbus::connection::Builder::unix_stream(client_end)
            .p2p()
            .build();
        let (server, client) = tokio::try_join!(server, client).expect("p2p handshake");
        let mut stream = zbus::MessageStream::from(&client);
        let (events, _) = tokio::sync::broadcast::channel(16);
        let sub = Subscription::new(events.clone());
        let forwarding = tokio::spawn({
            let sub = sub.clone();
            async move { sub.forward(&server).await }
        });

        // Nobody receives it: the peer has not subscribed.
        assert!(events.send(change("before")).is_err());
        assert_eq!(
            next_signal(&mut stream, Duration::from_millis(300)).await,
            None
        );

        sub.start();
        events
            .send(change("after"))
            .expect("the started subscription receives");
        assert_eq!(
            next_signal(&mut stream, Duration::from_secs(5))
                .await
                .as_deref(),
            Some("after")
        );
        // A second Subscribe leaves one receiver, the forwarded one: no second copy of
        // each signal, and none left unread in the channel.
        sub.start();
        assert_eq!(events.receiver_count(), 1);
        forwarding.abort();
    }
}
