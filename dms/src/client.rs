//! The client side of the D-Bus API, shared by dmsctl and the benchmarks.

use std::path::Path;

/// Proxy for `io.dms.Manager1` (see [`crate::dbus::Api`] for the semantics).
#[zbus::proxy(
    interface = "io.dms.Manager1",
    default_service = "io.dms.Manager1",
    default_path = "/io/dms/Manager1"
)]
pub trait Manager {
    fn ensure_domain(&self, user: &str, vo: &str, fqan: &str, job: &str) -> zbus::Result<String>;
    fn get_domain(&self, name: &str) -> zbus::Result<String>;
    fn list_domains(&self) -> zbus::Result<String>;
    fn destroy_domain(&self, name: &str) -> zbus::Result<()>;
    fn freeze_domain(&self, name: &str) -> zbus::Result<()>;
    fn thaw_domain(&self, name: &str) -> zbus::Result<()>;
    fn save_domain(&self, name: &str) -> zbus::Result<()>;
    fn restore_domain(&self, name: &str) -> zbus::Result<()>;
    fn attach_pid(&self, name: &str, pid: i32) -> zbus::Result<()>;
    fn join_info(&self, name: &str) -> zbus::Result<String>;
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        name: &str,
        argv: &[String],
        env: &[(String, String)],
        cwd: &str,
        user: &str,
        stdio: Vec<zbus::Fd<'_>>,
        wait: bool,
    ) -> zbus::Result<(i32, i32)>;
    #[allow(clippy::too_many_arguments)]
    fn run_once(
        &self,
        user: &str,
        vo: &str,
        fqan: &str,
        job: &str,
        argv: &[String],
        env: &[(String, String)],
        cwd: &str,
        run_as: &str,
        stdio: Vec<zbus::Fd<'_>>,
    ) -> zbus::Result<(String, i32, i32)>;
    fn reload_policies(&self) -> zbus::Result<Vec<String>>;
    fn status(&self) -> zbus::Result<String>;
    fn subscribe(&self) -> zbus::Result<()>;
    fn node_status(&self) -> zbus::Result<String>;
    fn usage_records(&self, filter: &str) -> zbus::Result<String>;
    fn map_identity(&self, dn: &str, fqans: &[String]) -> zbus::Result<String>;
    fn list_accounts(&self) -> zbus::Result<String>;
    fn get_account(&self, name: &str) -> zbus::Result<String>;
    fn release_account(&self, name: &str) -> zbus::Result<()>;
    fn list_sessions(&self) -> zbus::Result<String>;
    fn job_start(&self, id: &str, user: &str, cpus: u32) -> zbus::Result<String>;
    fn job_finish(&self, id: &str) -> zbus::Result<Vec<String>>;
    /// Emitted on every domain state change; `new` is "destroyed" when a domain is removed.
    #[zbus(signal)]
    fn state_changed(&self, name: String, old: String, new: String) -> zbus::Result<()>;
    /// Emitted by the Domain Monitor for each limit event.
    #[zbus(signal)]
    fn limit_event(
        &self,
        domain: String,
        kind: String,
        count: u64,
        action: String,
        detail: String,
    ) -> zbus::Result<()>;
}

/// Where to reach dmsd.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// The private socket (peer-to-peer D-Bus).
    Socket(std::path::PathBuf),
    /// The system bus (`DBUS_SYSTEM_BUS_ADDRESS` or the standard socket), name io.dms.Manager1.
    SystemBus,
}

/// Connects to dmsd. The error says what to check.
pub async fn connect(endpoint: &Endpoint) -> Result<ManagerProxy<'static>, String> {
    let conn = match endpoint {
        Endpoint::Socket(socket) => {
            let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
                format!(
                    "cannot reach dmsd at {}: {e} (is dmsd running? see --socket)",
                    socket.display()
                )
            })?;
            zbus::connection::Builder::unix_stream(stream)
                .p2p()
                .build()
                .await
                .map_err(|e| format!("handshake with dmsd at {}: {e}", socket.display()))?
        }
        Endpoint::SystemBus => zbus::Connection::system()
            .await
            .map_err(|e| format!("cannot reach the system bus: {e}"))?,
    };
    ManagerProxy::new(&conn).await.map_err(|e| e.to_string())
}

/// Convenience for the private socket.
pub async fn connect_socket(socket: &Path) -> Result<ManagerProxy<'static>, String> {
    connect(&Endpoint::Socket(socket.to_path_buf())).await
}
