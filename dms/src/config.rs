//! Daemon configuration: an embedded default, overridden by a TOML file, overridden by flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The default configuration, documented; `dmsd --print-config` shows the effective one.
pub const DEFAULT_CONFIG: &str = r#"# dmsd configuration (all keys optional; these are the defaults)

# Where the state database lives.
state_dir = "/var/lib/dms"
# Directory of VO policy files (*.toml), loaded as a whole.
policy_dir = "/etc/dms/policies"
# The private D-Bus (peer-to-peer) API socket; dmsctl talks to it.
socket = "/run/dms/dms.sock"
# Mode of that socket: everyone may connect; authorization is per call from SO_PEERCRED.
socket_mode = 0o666
# Mount point of the cgroup hierarchies.
cgroup_root = "/sys/fs/cgroup"
# The daemon's own subtree below each hierarchy; domains are created only under it.
cgroup_subtree = "dms"
# Members of this group (and root) may do everything.
admin_group = "dmsadmin"
# Also serve on the D-Bus system bus: "auto" (when a bus is running), "yes", "no".
system_bus = "auto"
# How long freezing may take before it is undone and reported.
freeze_timeout_ms = 5000
# How long a request waits for a busy domain before giving up.
lock_timeout_ms = 10000
# Container domain inits kept started ahead of time, each holding fresh namespaces (pid, mount,
# uts, ipc, net) and mounts that no domain has used; a new domain without policy paths takes
# one instead of waiting for them to be made (about 2 ms less per creation). Once a NAT domain
# has been created, as many more are kept with their veth pair made (host end
# <link_prefix>x<n>, down until a NAT domain takes it). 0 = start every init on demand. At
# most 64.
spare_inits = 2

# Networking of container domains with network mode "nat" (set per VO in the policies).
[network]
# The bridge DMS creates and owns (recognised by its alias "dms:<nft_table>"). An existing
# interface of that name that is not DMS's is an error, never reused.
bridge = "dms0"
# Address pool; the first address is the bridge's (the domains' gateway), the others go to
# domains. Traffic from it to anywhere but the bridge is masqueraded.
pool = "10.213.0.0/16"
# nftables tables (inet and bridge family) DMS owns and rewrites.
nft_table = "dms"
# Host-side veth names are <link_prefix><n>, or <link_prefix>x<n> when made by a spare init;
# stray <link_prefix><n> links are removed.
link_prefix = "dmsv"
# DNS servers for domains; when set, every domain sees a resolv.conf with them. When empty the
# host's /etc/resolv.conf is used (a loopback resolver such as 127.0.0.53 is not reachable
# from a domain: set servers here then).
dns = []

# Monitoring: Prometheus /metrics, /status (JSON) and /healthz over HTTP, and the Domain Monitor.
[metrics]
# Address to serve on; "" turns the HTTP endpoint off. /status shows every domain and has no
# authentication: keep it on loopback or a trusted management network.
listen = "127.0.0.1:9477"
# One collection reads domains for at most this long; the rest are shown with their last
# values and dms_domain_stale = 1, so a scrape answers within its timeout.
collect_budget_ms = 2000
# The Domain Monitor checks every domain's counters this often (OOM kills and pids limit hits
# are also noticed at once through kernel notifications).
monitor_interval_ms = 10000

# Usage records, written when a domain ends: usage.jsonl (JSON lines) and ur/*.xml (OGF Usage
# Record 1.0), in <state_dir>/usage unless dir is set.
[usage]
dir = ""
# Rotate usage.jsonl beyond this size, keeping this many old files.
max_bytes = 67108864
keep = 5
# Keep at most this many XML records (the oldest are removed).
max_xml_files = 100000

# Full-guest domains through libvirt (dmsd built with the cargo feature "libvirt"). A policy
# selects them with backend = "libvirt" and template = "<name of a template below>".
[libvirt]
# Connections by template type (a template may set its own uri).
uri = "qemu:///system"
lxc_uri = "lxc:///system"
xen_uri = "xen:///system"
# The domain repository: per-guest copy-on-write overlays, contextualization ISOs, heartbeat
# sockets, console logs and saved state. Base images are never written.
repository = "/var/lib/dms/repository"
# A libvirt call not answered within this fails (a hung libvirtd never blocks the daemon).
call_timeout_ms = 30000
# Guests of templates with heartbeat = true must report alive within spawn_time_limit_secs of
# starting and then at least every alive_time_limit_secs, or they are destroyed as zombies.
spawn_time_limit_secs = 300
alive_time_limit_secs = 60
# For dms_libvirtd_resident_memory_bytes (libvirtd has been seen to leak per guest).
libvirtd_pidfile = "/run/libvirtd.pid"
# Guest templates, one table each, for example:
# [libvirt.templates.sl7]
# type = "kvm"                  # kvm | qemu | xen | lxc
# image = "/srv/dms/images/sl7.qcow2"   # base image (never written); guests get qcow2 overlays
# image_format = "qcow2"        # or "raw"
# kernel = "/srv/dms/vmlinux"   # direct kernel boot instead of (or with) an image
# initrd = "/srv/dms/initrd.img"
# cmdline = "console=ttyS0"
# memory_mib = 2048             # used when the policy sets no memory limit
# vcpus = 2
# heartbeat = true              # the guest writes "alive" lines to virtio port org.dms.alive.0
# agent = true                  # qemu-guest-agent in the guest: dmsctl exec works
# context = true                # attach a NoCloud (label cidata) ISO: meta-data, user-data, dms.env
# startup_script = "/etc/dms/guest-start.sh"   # becomes the ISO's user-data
# network = true                # a tap, shaped with htb/ifb from the policy's network rates
# bridge = "br0"                # attach the tap to this host bridge
# [libvirt.templates.box]
# type = "lxc"
# init = "/bin/sh"
# init_args = ["-c", "exec sleep infinity"]
[libvirt.templates]

# Grid identities to local accounts, and PAM sessions.
[accounts]
# "DN" account, "DN" .pool, "/vo/group/Role=r" .pool, "/vo/*" .pool (a missing file is empty).
# The policy files' map rules are tried after it, and their group_map rules add groups.
grid_mapfile = "/etc/grid-security/grid-mapfile"
# "/vo/group/Role=r" localgroup: secondary groups from the FQANs.
group_mapfile = "/etc/grid-security/groupmapfile"
# Where the passwd and group files for libnss_dms.so.2 are published. The module reads
# /var/lib/dms/nss (fixed when it is built), so change this only together with the module.
nss_dir = "/var/lib/dms/nss"
# Trusted CAs and VOMS servers, for the X.509 proxy a login may present (X509_USER_PROXY).
x509_cert_dir = "/etc/grid-security/certificates"
vomsdir = "/etc/grid-security/vomsdir"
# The socket pam_dms.so talks to (root only). Not under /tmp or /dev/shm: a session calls it
# again from inside its domain, where those are private.
pam_socket = "/run/dms/pam.sock"
# VOs whose users may not log in here.
banned_vos = []
# When not empty, only these VOs may log in (node reserved).
reserved_for = []
# Local users without a grid identity (no lease, no mapping, and no VO named by their primary
# group), such as admins: "allow" lets PAM sessions through untouched, "deny" refuses them.
unmanaged = "allow"
# Local groups DMS publishes (name = gid), for secondary groups named in the group-mapfile.
[accounts.groups]
# Pools of leased accounts, one table each, for example:
# [accounts.pools.atlas]
# size = 100            # atlas001 ... atlas100
# uid_min = 20001       # uid of atlas001
# gid = 20000           # primary group "atlas" (group = "..." to rename)
# vo = "atlas"          # VO of identities without FQAN (default: the pool name)
# home = "/home/{account}"
# shell = "/bin/bash"
# create_home = true
# clean_home = true     # remove the home when the lease ends (only a created, per-account home)
# lease_idle_secs = 2592000   # released after 30 days unused; 0 = never
[accounts.pools]
"#;

/// The most spare inits a daemon keeps.
pub const MAX_SPARE_INITS: usize = 64;

/// Effective configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// State directory.
    pub state_dir: PathBuf,
    /// Policy directory.
    pub policy_dir: PathBuf,
    /// Private API socket path.
    pub socket: PathBuf,
    /// Socket permission bits.
    pub socket_mode: u32,
    /// cgroup mount root.
    pub cgroup_root: PathBuf,
    /// The daemon's subtree name.
    pub cgroup_subtree: String,
    /// Admin group name.
    pub admin_group: String,
    /// System bus mode.
    pub system_bus: SystemBus,
    /// Freeze bound.
    pub freeze_timeout_ms: u64,
    /// Per-domain lock bound.
    pub lock_timeout_ms: u64,
    /// Domain inits started ahead of time.
    pub spare_inits: usize,
    /// Domain networking.
    pub network: crate::net::NetConfig,
    /// Account mapping and PAM sessions.
    pub accounts: crate::accounts::AccountsConfig,
    /// HTTP endpoint and Domain Monitor.
    pub metrics: MetricsConfig,
    /// Usage records.
    pub usage: UsageConfig,
    /// Full-guest domains.
    pub libvirt: crate::libvirt::LibvirtConfig,
}

/// `[metrics]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// HTTP address, or "" for none.
    pub listen: String,
    /// Read budget of one collection.
    pub collect_budget_ms: u64,
    /// Domain Monitor period.
    pub monitor_interval_ms: u64,
}

/// `[usage]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageConfig {
    /// Directory, or "" for `<state_dir>/usage`.
    pub dir: PathBuf,
    /// Rotation size of usage.jsonl.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: usize,
    /// XML records kept.
    pub max_xml_files: usize,
}

impl Config {
    /// Where usage records go.
    pub fn usage_dir(&self) -> PathBuf {
        if self.usage.dir.as_os_str().is_empty() {
            self.state_dir.join("usage")
        } else {
            self.usage.dir.clone()
        }
    }

    /// The HTTP address, if any.
    pub fn metrics_addr(&self) -> anyhow::Result<Option<std::net::SocketAddr>> {
        if self.metrics.listen.is_empty() {
            return Ok(None);
        }
        self.metrics.listen.parse().map(Some).map_err(|e| {
            anyhow::anyhow!(
                "config: metrics.listen = {:?}: {e} (expected ADDRESS:PORT, e.g. \"127.0.0.1:9477\", or \"\" for none)",
                self.metrics.listen
            )
        })
    }
}

/// Whether to serve on the system bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SystemBus {
    /// When a system bus is reachable.
    Auto,
    /// Always; failing to connect is fatal.
    Yes,
    /// Never.
    No,
}

impl Config {
    /// Loads the defaults overlaid with `path` (if given).
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        use anyhow::Context;
        let mut table: toml::Table = toml::from_str(DEFAULT_CONFIG).context("embedded default")?;
        if let Some(p) = path {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config {}", p.display()))?;
            let over: toml::Table =
                toml::from_str(&text).with_context(|| format!("parsing config {}", p.display()))?;
            for (k, v) in over {
                // Tables merge key by key, so a file may set only network.pool.
                match (table.get_mut(&k), v) {
                    (Some(toml::Value::Table(base)), toml::Value::Table(t)) => base.extend(t),
                    (_, v) => {
                        table.insert(k, v);
                    }
                }
            }
        }
        let cfg: Config = table.try_into().with_context(|| {
            format!(
                "config {}",
                path.map_or("(default)".into(), |p| p.display().to_string())
            )
        })?;
        dms_policies::identity::validate_name("cgroup_subtree", &cfg.cgroup_subtree)
            .map_err(|e| anyhow::anyhow!("config: {e}"))?;
        cfg.network
            .validate()
            .map_err(|e| anyhow::anyhow!("config: {e}"))?;
        cfg.metrics_addr()?;
        if cfg.spare_inits > MAX_SPARE_INITS {
            anyhow::bail!(
                "config: spare_inits = {}: at most {MAX_SPARE_INITS}",
                cfg.spare_inits
            );
        }
        if cfg.metrics.monitor_interval_ms < 100 {
            anyhow::bail!(
                "config: metrics.monitor_interval_ms = {}: must be at least 100",
                cfg.metrics.monitor_interval_ms
            );
        }
        if cfg.usage.keep == 0 || cfg.usage.max_bytes < 4096 {
            anyhow::bail!(
                "config: usage.keep = {} and usage.max_bytes = {}: keep must be at least 1 and max_bytes at least 4096",
                cfg.usage.keep,
                cfg.usage.max_bytes
            );
        }
        cfg.libvirt
            .validate()
            .map_err(|e| anyhow::anyhow!("config: {e}"))?;
        let mut cfg = cfg;
        cfg.accounts
            .finish()
            .map_err(|e| anyhow::anyhow!("config: {e}"))?;
        Ok(cfg)
    }

    /// The freeze bound.
    pub fn freeze_timeout(&self) -> Duration {
        Duration::from_millis(self.freeze_timeout_ms)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_file_overrides() {
        let d = Config::load(None).unwrap();
        assert_eq!(d.cgroup_subtree, "dms");
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            t.path(),
            "cgroup_subtree = \"dms-x\"\nsystem_bus = \"no\"\n",
        )
        .unwrap();
        let c = Config::load(Some(t.path())).unwrap();
        assert_eq!(c.cgroup_subtree, "dms-x");
        assert_eq!(c.system_bus, SystemBus::No);
        std::fs::write(t.path(), "cgroup_subtree = \"../x\"\n").unwrap();
        let e = format!("{:#}", Config::load(Some(t.path())).unwrap_err());
        assert!(e.contains("cgroup_subtree"), "{e}");
        std::fs::write(t.path(), "[network]\npool = \"198.18.0.0/24\"\n").unwrap();
        let c = Config::load(Some(t.path())).unwrap();
        assert_eq!(c.network.pool, "198.18.0.0/24");
        assert_eq!(c.network.bridge, "dms0");
        std::fs::write(t.path(), "[network]\npool = \"198.18.0.1/24\"\n").unwrap();
        let e = format!("{:#}", Config::load(Some(t.path())).unwrap_err());
        assert!(e.contains("network.pool"), "{e}");
        std::fs::write(t.path(), "[metrics]\nlisten = \"localhost\"\n").unwrap();
        let e = format!("{:#}", Config::load(Some(t.path())).unwrap_err());
        assert!(
            e.contains("metrics.listen") && e.contains("localhost"),
            "{e}"
        );
        std::fs::write(t.path(), "[metrics]\nlisten = \"\"\n").unwrap();
        assert!(Config::load(Some(t.path()))
            .unwrap()
            .metrics_addr()
            .unwrap()
            .is_none());
        assert_eq!(d.spare_inits, 2);
        std::fs::write(t.path(), "spare_inits = 65\n").unwrap();
        let e = format!("{:#}", Config::load(Some(t.path())).unwrap_err());
        assert!(e.contains("spare_inits = 65"), "{e}");
        std::fs::write(t.path(), "sockett = \"/x\"\n").unwrap();
        let e = format!("{:#}", Config::load(Some(t.path())).unwrap_err());
        assert!(e.contains("sockett"), "{e}");
    }
}
