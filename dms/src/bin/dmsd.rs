//! dmsd: the Domain Management Service daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use dms::cgroup::{Cgroups, Version};
use dms::config::{Config, SystemBus, DEFAULT_CONFIG};
use dms::dbus::{emit_signal, Api, PeerAuth, Subscription, BUS_NAME, OBJECT_PATH};
use dms::domain::{Backend, ContainerBackend};
use dms::net::Network;
use dms::service::{Caller, Service, ServiceOptions, Signal};
use dms::spawn::Spawner;
use dms::store::Store;
use tokio::net::UnixListener;
use tokio::sync::broadcast;

/// dmsd - Domain Management Service daemon.
///
/// Puts VO users' work into limited, freezable domains (cgroups) according to the VO policy
/// files, and serves the io.dms.Manager1 D-Bus API on a private socket (always) and on the
/// system bus (when one runs). Runs in the foreground; logs go to stderr.
///
/// Signals: SIGHUP reloads the policies (a failed reload keeps the previous ones); SIGTERM and
/// SIGINT stop the daemon and leave domains running (they are adopted at the next start).
#[derive(Debug, Parser)]
#[command(version = VERSION, verbatim_doc_comment)]
struct Args {
    /// Configuration file (TOML); keys not given keep their defaults (see --print-config).
    #[arg(short, long, env = "DMS_CONFIG")]
    config: Option<PathBuf>,
    /// Override `state_dir`.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Override `policy_dir`.
    #[arg(long)]
    policy_dir: Option<PathBuf>,
    /// Override `socket`.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Override `cgroup_subtree`.
    #[arg(long)]
    cgroup_subtree: Option<String>,
    /// Override `metrics.listen` (ADDRESS:PORT, or "" for no HTTP endpoint).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Override `system_bus` (auto, yes, no).
    #[arg(long)]
    system_bus: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// Print the default configuration and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dmsd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let args = Args::parse();
    if args.print_config {
        print!("{DEFAULT_CONFIG}");
        return Ok(());
    }
    let mut cfg = Config::load(args.config.as_deref())?;
    if let Some(v) = args.state_dir {
        cfg.state_dir = v;
    }
    if let Some(v) = args.policy_dir {
        cfg.policy_dir = v;
    }
    if let Some(v) = args.socket {
        cfg.socket = v;
    }
    if let Some(v) = args.cgroup_subtree {
        dms_policies::validate_name("cgroup_subtree", &v)?;
        cfg.cgroup_subtree = v;
    }
    if let Some(v) = args.metrics_listen {
        cfg.metrics.listen = v;
        cfg.metrics_addr()?;
    }
    if let Some(v) = args.system_bus {
        cfg.system_bus = match v.as_str() {
            "auto" => SystemBus::Auto,
            "yes" => SystemBus::Yes,
            "no" => SystemBus::No,
            other => bail!("--system-bus {other:?}: expected auto, yes or no"),
        };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("DMS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        sub.json().init();
    } else {
        sub.init();
    }
    // The zygote must be forked while this process is still single-threaded.
    let spawner = Spawner::start().context("starting the spawner")?;
    if let Err(e) = dms::domain::raise_open_files_limit() {
        tracing::warn!(error = %e, "could not raise the open files limit");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = rt.block_on(run(cfg, spawner));
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

async fn run(cfg: Config, spawner: Spawner) -> Result<()> {
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state_dir {}", cfg.state_dir.display()))?;
    let cgroups = Cgroups::detect(&cfg.cgroup_root, &cfg.cgroup_subtree)?;
    cgroups.init()?;
    let version = match cgroups.version() {
        Version::V1 => "v1",
        Version::V2 => "v2",
    };
    tracing::info!(version, subtree = %cfg.cgroup_subtree, "cgroups detected");
    let network = Network::new(&cfg.network, spawner.clone(), cfg.state_dir.clone())?;
    let resolv_conf = write_resolv_conf(&cfg)?;
    spawner
        .keep_spare_inits(
            cfg.spare_inits,
            resolv_conf.clone(),
            Some(cfg.network.link_prefix.clone()),
        )
        .context("configuring spare_inits")?;
    let backend = Arc::new(ContainerBackend::new(
        cgroups.clone(),
        spawner.clone(),
        cfg.freeze_timeout(),
        resolv_conf,
        network,
    )?);
    let guests = guest_backend(&cfg, &spawner)?;
    let store = Store::open(&cfg.state_dir)?;
    let admin_gid = nix::unistd::Group::from_name(&cfg.admin_group)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw());
    if admin_gid.is_none() {
        tracing::warn!(group = %cfg.admin_group, "admin group does not exist; only root is admin");
    }
    let (events, _) = broadcast::channel::<Signal>(1024);
    let tx = events.clone();
    let backend_for_shutdown = Arc::clone(&backend);
    let backend_handle: Arc<dyn Backend> = Arc::new(dms::backends::Backends::new(backend, guests));
    let svc = Service::new(
        Arc::clone(&backend_handle),
        store,
        ServiceOptions {
            policy_dir: cfg.policy_dir.clone(),
            admin_gid,
            lock_timeout: std::time::Duration::from_millis(cfg.lock_timeout_ms),
            cgroup_version: version.into(),
            accounts: cfg.accounts.clone(),
            usage_dir: Some(cfg.usage_dir()),
            usage_rotate: dms_accounting::records::RotateLimits {
                max_bytes: cfg.usage.max_bytes,
                keep: cfg.usage.keep,
                max_xml_files: cfg.usage.max_xml_files,
            },
            collect_budget: std::time::Duration::from_millis(cfg.metrics.collect_budget_ms),
        },
        Box::new(move |c| {
            let _ = tx.send(c);
        }),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let svc = Arc::new(svc);
    let weak = Arc::downgrade(&svc);
    backend_handle.on_init_exit(Box::new(move |name| {
        if let Some(svc) = weak.upgrade() {
            svc.init_exited(name);
        }
    }));
    let weak = Arc::downgrade(&svc);
    backend_handle.on_zombie(Box::new(move |name, why| {
        if let Some(svc) = weak.upgrade() {
            svc.reap_zombie(name, why);
        }
    }));
    let s = Arc::clone(&svc);
    let report = tokio::task::spawn_blocking(move || s.reconcile()).await??;
    tracing::info!(
        adopted = report.adopted.len(),
        failed = report.marked_failed.len(),
        orphans_removed = report.removed_orphans.len(),
        cleaned = report.cleaned.len(),
        "reconcile done"
    );

    // System bus (optional).
    let _bus = match cfg.system_bus {
        SystemBus::No => None,
        mode => {
            match tokio::time::timeout(std::time::Duration::from_secs(10), serve_bus(&svc, &events))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("system bus: no answer within 10 s")))
            {
                Ok(c) => Some(c),
                Err(e) if mode == SystemBus::Auto => {
                    tracing::info!("not on the system bus: {e:#}");
                    None
                }
                Err(e) => return Err(e),
            }
        }
    };

    // Private socket.
    let listener = bind_socket(&cfg.socket, cfg.socket_mode)?;
    tracing::info!(socket = %cfg.socket.display(), "serving");

    let s = Arc::clone(&svc);
    tokio::task::spawn_blocking(move || s.publish_accounts())
        .await?
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let pam_listener = bind_socket(&cfg.accounts.pam_socket, 0o600)?;
    tracing::info!(socket = %cfg.accounts.pam_socket.display(), "serving PAM sessions");
    spawn_pam_server(Arc::clone(&svc), pam_listener);
    spawn_ticker(Arc::clone(&svc));
    dms::monitor::spawn(
        &svc,
        std::time::Duration::from_millis(cfg.metrics.monitor_interval_ms),
    )
    .context("starting the Domain Monitor")?;
    if let Some(addr) = cfg.metrics_addr()? {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics.listen = {addr}: cannot listen"))?;
        tracing::info!(%addr, "serving /metrics, /status and /healthz");
        let exporter = Arc::new(dms::metrics::Exporter::new(&svc));
        tokio::spawn(dms::http::serve(listener, Arc::clone(&svc), exporter));
    }

    spawn_policy_watch(Arc::clone(&svc), cfg.policy_dir.clone());
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let guid = zbus::Guid::generate();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => { tracing::warn!("accept: {e}"); continue; }
                };
                let cred = match stream.peer_cred() {
                    Ok(c) => c,
                    Err(e) => { tracing::warn!("peer credentials: {e}"); continue; }
                };
                let caller = Caller::from_pid(cred.uid(), cred.gid(), cred.pid().map(|p| p as u32));
                let svc = Arc::clone(&svc);
                let subscription = Subscription::new(events.clone());
                let guid = guid.clone();
                tokio::spawn(async move {
                    let std_stream = match stream.into_std() {
                        Ok(s) => s,
                        Err(e) => { tracing::warn!("socket: {e}"); return; }
                    };
                    let api = Api::new(svc, PeerAuth::Fixed(caller), Some(subscription.clone()));
                    let conn = zbus::connection::Builder::unix_stream(std_stream)
                        .server(guid)
                        .p2p()
                        .serve_at(OBJECT_PATH, api)
                        .build()
                        .await;
                    let conn = match conn {
                        Ok(c) => c,
                        Err(e) => { tracing::debug!("client handshake failed: {e}"); return; }
                    };
                    tokio::select! {
                        () = subscription.forward(&conn) => {}
                        () = conn.closed() => {}
                    }
                });
            }
            _ = hup.recv() => {
                let s = Arc::clone(&svc);
                let _ = tokio::task::spawn_blocking(move || s.reload_policies()).await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping; domains keep running and are adopted at the next start");
    let s = Arc::clone(&svc);
    let _ = tokio::task::spawn_blocking(move || s.flush_usage_records()).await;
    std::fs::remove_file(&cfg.socket).ok();
    std::fs::remove_file(&cfg.accounts.pam_socket).ok();
    // Leave no empty subtree behind; with domains present the rmdir fails and that is fine.
    let _ = cgroups.remove_subtree();
    // Likewise the bridge and nftables tables, once no NAT domain is left.
    let b = Arc::clone(&backend_for_shutdown);
    let _ = tokio::task::spawn_blocking(move || b.network().teardown_if_unused()).await;
    Ok(())
}

/// `--version`: the version and the optional backends built in.
const VERSION: &str = if cfg!(feature = "libvirt") {
    concat!(env!("CARGO_PKG_VERSION"), " (backends: container, libvirt)")
} else {
    concat!(env!("CARGO_PKG_VERSION"), " (backends: container)")
};

/// The libvirt backend, when this build has it and templates are configured.
#[cfg(feature = "libvirt")]
fn guest_backend(cfg: &Config, spawner: &Spawner) -> Result<Option<Arc<dyn Backend>>> {
    if cfg.libvirt.templates.is_empty() {
        return Ok(None);
    }
    let b = dms::libvirt::LibvirtBackend::new(cfg.libvirt.clone(), spawner.clone())
        .map_err(|e| anyhow::anyhow!("libvirt backend: {e}"))?;
    tracing::info!(
        templates = cfg.libvirt.templates.len(),
        repository = %cfg.libvirt.repository.display(),
        "libvirt backend ready"
    );
    Ok(Some(Arc::new(b)))
}

/// This build has no libvirt backend; templates in the config are an error, not ignored.
#[cfg(not(feature = "libvirt"))]
fn guest_backend(cfg: &Config, _spawner: &Spawner) -> Result<Option<Arc<dyn Backend>>> {
    if !cfg.libvirt.templates.is_empty() {
        anyhow::bail!(
            "config: [libvirt.templates] are set but this dmsd was built without the cargo feature \"libvirt\" (cargo build --release --features libvirt)"
        );
    }
    Ok(None)
}

/// Binds a Unix socket, refusing to take over one a live daemon serves.
fn bind_socket(path: &std::path::Path, mode: u32) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "socket {} is in use: is another dmsd running?",
                path.display()
            );
        }
        std::fs::remove_file(path).ok();
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Longest request on the session socket.
const MAX_PAM_REQUEST: u64 = 256 << 10;

/// The session socket for pam_dms.so: one JSON line in, one out (docs/pam-protocol.md).
fn spawn_pam_server(svc: Arc<Service>, listener: UnixListener) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("session socket accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let svc = Arc::clone(&svc);
            tokio::spawn(async move {
                let uid = match stream.peer_cred() {
                    Ok(c) => c.uid(),
                    Err(e) => {
                        tracing::warn!("session socket peer credentials: {e}");
                        return;
                    }
                };
                let (rd, mut wr) = stream.into_split();
                let mut line = String::new();
                let mut rd = tokio::io::BufReader::new(rd.take(MAX_PAM_REQUEST));
                let read = tokio::time::timeout(
                    std::time::Duration::from_secs(30),
                    rd.read_line(&mut line),
                )
                .await;
                let answer = match read {
                    Ok(Ok(_)) if line.ends_with('\n') => {
                        match tokio::task::spawn_blocking(move || svc.pam(uid, line.trim_end())).await {
                            Ok(a) => a,
                            Err(e) => serde_json::json!({"ok": false, "kind": "Failed", "error": format!("internal error: {e}")}).to_string(),
                        }
                    }
                    Ok(Ok(_)) => serde_json::json!({"ok": false, "kind": "InvalidArgument", "error": format!("request not terminated by a newline within {MAX_PAM_REQUEST} bytes")}).to_string(),
                    Ok(Err(e)) => {
                        tracing::debug!("session socket read: {e}");
                        return;
                    }
                    Err(_) => serde_json::json!({"ok": false, "kind": "Timeout", "error": "no request within 30 s"}).to_string(),
                };
                let _ = wr.write_all(format!("{answer}\n").as_bytes()).await;
                let _ = wr.shutdown().await;
            });
        }
    });
}

/// Once a second: dead sessions, idle actions, lease expiry.
fn spawn_ticker(svc: Arc<Service>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let s = Arc::clone(&svc);
            let _ = tokio::task::spawn_blocking(move || s.tick()).await;
        }
    });
}

async fn serve_bus(
    svc: &Arc<Service>,
    events: &broadcast::Sender<Signal>,
) -> Result<zbus::Connection> {
    let conn = zbus::connection::Builder::system()
        .serve_at(OBJECT_PATH, Api::new(Arc::clone(svc), PeerAuth::Bus, None))
        .name(BUS_NAME)
        .build()
        .await
        .context("system bus")?;
    tracing::info!(name = BUS_NAME, "serving on the system bus");
    let c = conn.clone();
    let mut rx = events.subscribe();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    let _ = emit_signal(&c, &ev).await;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
    });
    Ok(conn)
}

/// Reloads policies when files in the directory change (debounced), from a plain thread.
fn spawn_policy_watch(svc: Arc<Service>, dir: PathBuf) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    // Non-blocking, so the events of one burst of edits can be drained after the quiet
    // period and cause a single reload.
    let Ok(ino) = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK) else {
        return;
    };
    let flags = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_CREATE;
    if let Err(e) = ino.add_watch(&dir, flags) {
        tracing::warn!(dir = %dir.display(), "not watching policy directory: {e}");
        return;
    }
    let _ = std::thread::Builder::new()
        .name("policy-watch".into())
        .spawn(move || loop {
            use std::os::fd::AsFd;
            let mut fds = [nix::poll::PollFd::new(
                ino.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
            // Editors write in several steps: wait for quiet, drain, then reload once.
            std::thread::sleep(std::time::Duration::from_millis(300));
            loop {
                match ino.read_events() {
                    Ok(events) if !events.is_empty() => {}
                    Ok(_) | Err(nix::errno::Errno::EAGAIN) => break,
                    Err(_) => return,
                }
            }
            tracing::info!(dir = %dir.display(), "policy files changed; reloading");
            let _ = svc.reload_policies();
        });
}

/// With `network.dns` set, the resolv.conf every domain sees; otherwise a warning when the
/// host's resolver is on loopback (unreachable from a domain's network namespace).
fn write_resolv_conf(cfg: &Config) -> Result<Option<PathBuf>> {
    if cfg.network.dns.is_empty() {
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let servers: Vec<&str> = host
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .map(str::trim)
            .collect();
        if !servers.is_empty() && servers.iter().all(|s| s.starts_with("127.") || *s == "::1") {
            tracing::warn!(
                ?servers,
                "the host resolver is on loopback, which domains with network mode nat cannot reach; set network.dns in the config"
            );
        }
        return Ok(None);
    }
    let path = cfg.state_dir.join("resolv.conf");
    let text: String = cfg
        .network
        .dns
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect();
    std::fs::write(&path, format!("# written by dmsd from network.dns\n{text}"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(path))
}
