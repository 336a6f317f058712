//! Quota and rule types produced by policy resolution.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::units::UnitError;

/// A string that is not one of an enum's names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} is not a valid {what}; expected one of {}",
    crate::identity::quote(value),
    expected_list(expected)
)]
pub struct UnknownVariant {
    /// What kind of value was expected, e.g. "granularity".
    pub what: &'static str,
    /// The rejected input.
    pub value: String,
    /// All accepted names.
    pub expected: &'static [&'static str],
}

fn expected_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Defines a unit-only enum with `as_str`, `FromStr`, `Display` and
/// lowercase serde names, keeping the names in one place.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal,
        { $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $(
                $(#[$vmeta])*
                $variant,
            )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            const NAMES: &'static [&'static str] = &[$($text),+];

            /// The name used in policy files and serialized output.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownVariant;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownVariant { what: $what, value: s.to_owned(), expected: Self::NAMES }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum! {
    /// How many domains a VO's users get.
    Granularity, "granularity", {
        /// One domain shared by the whole VO.
        Vo = "vo",
        /// One domain per user (the default).
        #[default]
        User = "user",
        /// One domain per job.
        Job = "job",
    }
}

named_enum! {
    /// What runs a domain.
    BackendKind, "backend", {
        /// A cgroup-confined container (the default).
        #[default]
        Container = "container",
        /// A libvirt virtual machine built from a template.
        Libvirt = "libvirt",
    }
}

named_enum! {
    /// Scheduling class of a domain.
    Priority, "priority", {
        /// Ordinary work (the default).
        #[default]
        Normal = "normal",
        /// Favoured work.
        High = "high",
        /// Work that may be stopped to make room.
        Preemptible = "preemptible",
    }
}

named_enum! {
    /// What a domain's owner may do to it.
    Permission, "permission", {
        /// Suspend all processes.
        #[default]
        Freeze = "freeze",
        /// Resume a frozen domain.
        Thaw = "thaw",
        /// Kill and remove the domain.
        Destroy = "destroy",
        /// Start new processes inside.
        Exec = "exec",
        /// Attach to the domain's console or processes.
        Attach = "attach",
    }
}

named_enum! {
    /// What happens to an idle domain.
    IdleAction, "idle action", {
        /// Leave it alone (the default).
        #[default]
        Keep = "keep",
        /// Freeze it.
        Freeze = "freeze",
        /// Save its state and stop it.
        Save = "save",
        /// Destroy it.
        Destroy = "destroy",
    }
}

/// The idle handling of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct IdlePolicy {
    /// What to do once idle long enough.
    pub action: IdleAction,
    /// How long the domain must be idle, in seconds.
    pub after_secs: u64,
}

named_enum! {
    /// What the monitor does when a domain hits one of its limits.
    LimitAction, "limit action", {
        /// Log, count and signal the event only (the default).
        #[default]
        Notify = "notify",
        /// Freeze the domain.
        Freeze = "freeze",
        /// Destroy the domain.
        Kill = "kill",
    }
}

/// A limit event the monitor watches for in a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// Memory usage hit the hard limit (`memory.limit`).
    MemoryLimit,
    /// The kernel's OOM killer killed a process of the domain.
    OomKill,
    /// A fork was refused by the `pids` limit.
    PidsLimit,
    /// More than `cpu_throttled_ratio` of the CFS periods of a monitor
    /// interval were throttled by `cpu.limit`.
    CpuThrottled,
    /// Packets of the domain were dropped (shaping or queue overflow).
    NetworkDrops,
}

impl LimitKind {
    /// Every kind, in declaration order.
    pub const ALL: [LimitKind; 5] = [
        LimitKind::MemoryLimit,
        LimitKind::OomKill,
        LimitKind::PidsLimit,
        LimitKind::CpuThrottled,
        LimitKind::NetworkDrops,
    ];
    const NAMES: &'static [&'static str] = &[
        "memory_limit",
        "oom_kill",
        "pids_limit",
        "cpu_throttled",
        "network_drops",
    ];

    /// The name used in policy files (the key in `monitor = { ... }`) and
    /// serialized output.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::MemoryLimit => "memory_limit",
            LimitKind::OomKill => "oom_kill",
            LimitKind::PidsLimit => "pids_limit",
            LimitKind::CpuThrottled => "cpu_throttled",
            LimitKind::NetworkDrops => "network_drops",
        }
    }
}

impl FromStr for LimitKind {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LimitKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownVariant {
                what: "limit kind",
                value: s.to_owned(),
                expected: Self::NAMES,
            })
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the monitor does about each kind of limit event of a domain.
///
/// The CPU throttling threshold is kept in thousandths
/// (`cpu_throttled_permille`) rather than as an `f64`, so that this type and
/// [`ResolvedRule`] keep `Eq` and `Hash`; policy files write it as the ratio
/// `cpu_throttled_ratio = 0.5`, and [`MonitorPolicy::cpu_throttled_ratio`]
/// gives it back as a fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct MonitorPolicy {
    /// Memory usage reached the hard limit.
    pub memory_limit: LimitAction,
    /// The OOM killer killed a process.
    pub oom_kill: LimitAction,
    /// A fork was refused by the pids limit.
    pub pids_limit: LimitAction,
    /// CPU throttling above the threshold.
    pub cpu_throttled: LimitAction,
    /// Dropped network packets.
    pub network_drops: LimitAction,
    /// Throttled fraction of the CFS periods within one monitor interval,
    /// in thousandths (1..=1000), above which a
    /// [`LimitKind::CpuThrottled`] event is raised. Default 500 (0.5).
    pub cpu_throttled_permille: u32,
}

impl MonitorPolicy {
    /// The default `cpu_throttled_permille`: half of the periods.
    pub const DEFAULT_CPU_THROTTLED_PERMILLE: u32 = 500;

    /// The action for one kind of event.
    pub fn action(&self, kind: LimitKind) -> LimitAction {
        match kind {
            LimitKind::MemoryLimit => self.memory_limit,
            LimitKind::OomKill => self.oom_kill,
            LimitKind::PidsLimit => self.pids_limit,
            LimitKind::CpuThrottled => self.cpu_throttled,
            LimitKind::NetworkDrops => self.network_drops,
        }
    }

    /// Sets the action for one kind of event.
    pub fn set_action(&mut self, kind: LimitKind, action: LimitAction) {
        let slot = match kind {
            LimitKind::MemoryLimit => &mut self.memory_limit,
            LimitKind::OomKill => &mut self.oom_kill,
            LimitKind::PidsLimit => &mut self.pids_limit,
            LimitKind::CpuThrottled => &mut self.cpu_throttled,
            LimitKind::NetworkDrops => &mut self.network_drops,
        };
        *slot = action;
    }

    /// The CPU throttling threshold as a fraction in (0, 1], as written in
    /// the policy (`cpu_throttled_ratio`).
    pub fn cpu_throttled_ratio(&self) -> f64 {
        f64::from(self.cpu_throttled_permille) / 1000.0
    }

    /// Whether `throttled` throttled periods out of `periods` CFS periods
    /// (the deltas of `cpu.stat` `nr_throttled` and `nr_periods` over one
    /// monitor interval) are above the threshold. Exact integer arithmetic;
    /// false when no period elapsed.
    pub fn cpu_throttled_exceeded(&self, throttled: u64, periods: u64) -> bool {
        periods > 0
            && u128::from(throttled) * 1000
                > u128::from(self.cpu_throttled_permille) * u128::from(periods)
    }
}

impl Default for MonitorPolicy {
    fn default() -> Self {
        MonitorPolicy {
            memory_limit: LimitAction::default(),
            oom_kill: LimitAction::default(),
            pids_limit: LimitAction::default(),
            cpu_throttled: LimitAction::default(),
            network_drops: LimitAction::default(),
            cpu_throttled_permille: Self::DEFAULT_CPU_THROTTLED_PERMILLE,
        }
    }
}

/// CPU bandwidth and share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct CpuQuota {
    /// Hard limit in thousandths of a core (`cpu.max`).
    pub limit_millicores: Option<u32>,
    /// Relative share, 1..=10000 (`cpu.weight`).
    pub weight: Option<u32>,
}

/// Memory limits, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct MemoryQuota {
    /// Hard limit (`memory.max`).
    pub limit_bytes: Option<u64>,
    /// Reclaim threshold (`memory.high`).
    pub soft_bytes: Option<u64>,
    /// Swap limit (`memory.swap.max`).
    pub swap_bytes: Option<u64>,
}

/// I/O throttling for one block device (`io.max`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IoThrottle {
    /// `"MAJ:MIN"` or an absolute `/dev/...` path, as written in the policy.
    pub device: String,
    /// Read bandwidth, bytes per second.
    pub read_bps: Option<u64>,
    /// Write bandwidth, bytes per second.
    pub write_bps: Option<u64>,
    /// Read operations per second.
    pub read_iops: Option<u64>,
    /// Write operations per second.
    pub write_iops: Option<u64>,
}

/// CPU and memory-node pinning (`cpuset.cpus`, `cpuset.mems`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CpuSet {
    /// CPU list in kernel syntax, e.g. `"0-3,5"` (validated).
    pub cpus: String,
    /// Memory-node list in the same syntax.
    pub mems: Option<String>,
}

/// All resource limits of a domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Quotas {
    /// CPU limits.
    pub cpu: CpuQuota,
    /// Memory limits.
    pub memory: MemoryQuota,
    /// Maximum number of tasks (`pids.max`).
    pub pids: Option<u64>,
    /// Per-device I/O throttles.
    pub io: Vec<IoThrottle>,
    /// CPU pinning.
    pub cpuset: Option<CpuSet>,
}

named_enum! {
    /// The network of a container domain.
    NetworkMode, "network mode", {
        /// Its own network namespace, reaching out through NAT (the default).
        #[default]
        Nat = "nat",
        /// Its own network namespace with only the loopback interface.
        None = "none",
    }
}

named_enum! {
    /// The traffic-control qdisc that enforces a domain's rates.
    Shaper, "shaper", {
        /// Hierarchical token bucket (the default).
        #[default]
        Htb = "htb",
        /// Token bucket filter.
        Tbf = "tbf",
    }
}

named_enum! {
    /// The transport protocol of a port forward.
    Proto, "protocol", {
        /// TCP (the default).
        #[default]
        Tcp = "tcp",
        /// UDP.
        Udp = "udp",
    }
}

/// One forwarded port: connections to `host` on the node reach `domain`
/// inside the domain's network namespace. Written `"HOST:DOMAIN[/PROTO]"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortForward {
    /// Port on the node, 1..=65535.
    pub host: u16,
    /// Port inside the domain, 1..=65535.
    pub domain: u16,
    /// Protocol; TCP unless the policy says `/udp`.
    #[serde(default)]
    pub proto: Proto,
}

impl FromStr for PortForward {
    type Err = UnitError;

    /// Parses `"HOST:DOMAIN"`, `"HOST:DOMAIN/tcp"` or `"HOST:DOMAIN/udp"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str =
            "expected \"HOST:DOMAIN\" with an optional \"/tcp\" or \"/udp\" (\"8080:80\", \"5353:53/udp\")";
        let (ports, proto) = match s.split_once('/') {
            None => (s, Proto::Tcp),
            Some((ports, proto)) => match proto.parse() {
                Ok(p) => (ports, p),
                Err(_) => {
                    return Err(UnitError(format!(
                        "unknown protocol {}; expected \"tcp\" or \"udp\"",
                        crate::identity::quote(proto)
                    )))
                }
            },
        };
        let Some((host, domain)) = ports.split_once(':') else {
            return Err(UnitError(EXPECTED.into()));
        };
        let port = |p: &str, what: &str| -> Result<u16, UnitError> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(UnitError(EXPECTED.into()));
            }
            match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(UnitError(format!(
                    "{what} port {p} is out of range (1-65535)"
                ))),
            }
        };
        Ok(PortForward {
            host: port(host, "host")?,
            domain: port(domain, "domain")?,
            proto,
        })
    }
}

impl fmt::Display for PortForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.host, self.domain, self.proto)
    }
}

/// The network of a container domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkPolicy {
    /// NAT or loopback only.
    pub mode: NetworkMode,
    /// Outgoing rate limit, bits per second.
    pub egress: Option<u64>,
    /// Incoming rate limit, bits per second.
    pub ingress: Option<u64>,
    /// Burst allowance of the shaper, bytes.
    pub burst: Option<u64>,
    /// The qdisc enforcing `egress` and `ingress`.
    pub shaper: Shaper,
    /// Forwarded ports (only with [`NetworkMode::Nat`]); no two share a
    /// host port and protocol.
    pub ports: Vec<PortForward>,
    /// When false, the domain may reach other non-isolated domains.
    pub isolated: bool,
}

impl Default for NetworkPolicy {
    fn default() -> Self {
        NetworkPolicy {
            mode: NetworkMode::default(),
            egress: None,
            ingress: None,
            burst: None,
            shaper: Shaper::default(),
            ports: Vec::new(),
            isolated: true,
        }
    }
}

/// Directories a container domain sees differently from the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PathPolicy {
    /// Replaced by an empty directory private to the domain.
    pub private: Vec<PathBuf>,
    /// Mounted read-only in the domain.
    pub readonly: Vec<PathBuf>,
}

/// The isolation of a container domain beyond its cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Isolation {
    /// Network namespace, shaping and port forwards.
    pub network: NetworkPolicy,
    /// Private and read-only directories.
    pub paths: PathPolicy,
    /// Run the domain in its own user namespace.
    pub userns: bool,
}

/// The owner permissions used when a policy does not say: freeze and thaw.
pub fn default_owner_may() -> BTreeSet<Permission> {
    [Permission::Freeze, Permission::Thaw].into_iter().collect()
}

/// The effective policy for one identity, after merging VO defaults with
/// every matching group and role rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedRule {
    /// The VO.
    pub vo: String,
    /// Canonical FQAN of the most specific rule that applied; `None` when
    /// only the VO defaults applied.
    pub matched_fqan: Option<String>,
    /// Group path of the identity's FQAN, e.g. `/atlas/higgs`.
    pub group: Option<String>,
    /// Role of the identity's FQAN.
    pub role: Option<String>,
    /// How many domains the identity's work is split into.
    pub granularity: Granularity,
    /// What runs the domain.
    pub backend: BackendKind,
    /// libvirt template name (set exactly when `backend` is libvirt).
    pub template: Option<String>,
    /// Resource limits.
    pub quotas: Quotas,
    /// Scheduling class.
    pub priority: Priority,
    /// What the domain's owner may do.
    pub owner_may: BTreeSet<Permission>,
    /// Idle handling.
    pub idle: IdlePolicy,
    /// What to do about limit events (OOM kills, throttling, ...).
    #[serde(default)]
    pub monitor: MonitorPolicy,
    /// Network, file-system and user-namespace isolation (container domains).
    #[serde(default)]
    pub isolation: Isolation,
    /// The policy file that defines the VO.
    pub source: PathBuf,
}

impl ResolvedRule {
    /// The rule that applies when a VO's policy sets nothing.
    pub fn defaults(vo: &str, source: PathBuf) -> Self {
        ResolvedRule {
            vo: vo.to_owned(),
            matched_fqan: None,
            group: None,
            role: None,
            granularity: Granularity::default(),
            backend: BackendKind::default(),
            template: None,
            quotas: Quotas::default(),
            priority: Priority::default(),
            owner_may: default_owner_may(),
            idle: IdlePolicy::default(),
            monitor: MonitorPolicy::default(),
            isolation: Isolation::default(),
            source,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_round_trip() {
        for g in Granularity::ALL {
            assert_eq!(g.as_str().parse::<Granularity>().unwrap(), *g);
            assert_eq!(g.to_string(), g.as_str());
        }
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>().unwrap(), *p);
        }
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse::<Priority>().unwrap(), *p);
        }
        for b in BackendKind::ALL {
            assert_eq!(b.as_str().parse::<BackendKind>().unwrap(), *b);
        }
        for a in IdleAction::ALL {
            assert_eq!(a.as_str().parse::<IdleAction>().unwrap(), *a);
        }
        for m in NetworkMode::ALL {
            assert_eq!(m.as_str().parse::<NetworkMode>().unwrap(), *m);
        }
        for s in Shaper::ALL {
            assert_eq!(s.as_str().parse::<Shaper>().unwrap(), *s);
        }
        for p in Proto::ALL {
            assert_eq!(p.as_str().parse::<Proto>().unwrap(), *p);
        }
        assert_eq!(NetworkMode::None.as_str(), "none");
        assert_eq!(Proto::Udp.as_str(), "udp");
        let err = "VO".parse::<Granularity>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#""VO" is not a valid granularity; expected one of "vo", "user", "job""#
        );
    }

    #[test]
    fn defaults() {
        assert_eq!(Granularity::default(), Granularity::User);
        assert_eq!(BackendKind::default(), BackendKind::Container);
        assert_eq!(Priority::default(), Priority::Normal);
        assert_eq!(IdleAction::default(), IdleAction::Keep);
        let r = ResolvedRule::defaults("atlas", "x.toml".into());
        assert_eq!(
            r.owner_may,
            [Permission::Freeze, Permission::Thaw].into_iter().collect()
        );
        assert_eq!(r.idle.after_secs, 0);
        let net = &r.isolation.network;
        assert_eq!(net.mode, NetworkMode::Nat);
        assert_eq!(net.shaper, Shaper::Htb);
        assert!(net.isolated);
        assert_eq!((net.egress, net.ingress, net.burst), (None, None, None));
        assert!(net.ports.is_empty());
        assert_eq!(r.isolation.paths, PathPolicy::default());
        assert!(!r.isolation.userns);
        assert_eq!(Proto::default(), Proto::Tcp);
    }

    #[test]
    fn monitor_names_and_actions() {
        for a in LimitAction::ALL {
            assert_eq!(a.as_str().parse::<LimitAction>().unwrap(), *a);
        }
        assert_eq!(LimitAction::default(), LimitAction::Notify);
        let names: Vec<&str> = LimitKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "memory_limit",
                "oom_kill",
                "pids_limit",
                "cpu_throttled",
                "network_drops"
            ]
        );
        let mut m = MonitorPolicy::default();
        for k in LimitKind::ALL {
            assert_eq!(k.as_str().parse::<LimitKind>().unwrap(), k);
            assert_eq!(k.to_string(), k.as_str());
            assert_eq!(m.action(k), LimitAction::Notify);
            m.set_action(k, LimitAction::Kill);
            assert_eq!(m.action(k), LimitAction::Kill);
        }
        assert_eq!(
            "oom".parse::<LimitKind>().unwrap_err().to_string(),
            r#""oom" is not a valid limit kind; expected one of "memory_limit", "oom_kill", "pids_limit", "cpu_throttled", "network_drops""#
        );
        // serde names match as_str.
        #[derive(Serialize, Deserialize)]
        struct W {
            k: LimitKind,
            a: LimitAction,
        }
        let text = toml::to_string(&W {
            k: LimitKind::CpuThrottled,
            a: LimitAction::Freeze,
        })
        .unwrap();
        assert_eq!(text, "k = \"cpu_throttled\"\na = \"freeze\"\n");
    }

    #[test]
    fn cpu_throttled_threshold() {
        let m = MonitorPolicy::default();
        assert_eq!(m.cpu_throttled_permille, 500);
        assert!((m.cpu_throttled_ratio() - 0.5).abs() < 1e-12);
        // Strictly above the ratio.
        assert!(!m.cpu_throttled_exceeded(50, 100));
        assert!(m.cpu_throttled_exceeded(51, 100));
        assert!(!m.cpu_throttled_exceeded(0, 0));
        assert!(m.cpu_throttled_exceeded(u64::MAX, u64::MAX));
        let all = MonitorPolicy {
            cpu_throttled_permille: 1000,
            ..m
        };
        assert!(!all.cpu_throttled_exceeded(100, 100));
        let tiny = MonitorPolicy {
            cpu_throttled_permille: 1,
            ..m
        };
        assert!(tiny.cpu_throttled_exceeded(1, 999));
        assert!(!tiny.cpu_throttled_exceeded(1, 1000));
    }

    #[test]
    fn port_forwards() {
        let p: PortForward = "8080:80".parse().unwrap();
        assert_eq!(
            p,
            PortForward {
                host: 8080,
                domain: 80,
                proto: Proto::Tcp
            }
        );
        assert_eq!(p.to_string(), "8080:80/tcp");
        let p: PortForward = "5353:53/udp".parse().unwrap();
        assert_eq!((p.host, p.domain, p.proto), (5353, 53, Proto::Udp));
        assert_eq!(p.to_string().parse::<PortForward>().unwrap(), p);
        assert_eq!("1:65535/tcp".parse::<PortForward>().unwrap().domain, 65535);
        for bad in [
            "", "8080", ":80", "80:", "a:80", "80:b", "+80:80", "80:80:80", " 80:80", "80 :80",
        ] {
            assert!(
                bad.parse::<PortForward>()
                    .unwrap_err()
                    .0
                    .contains("HOST:DOMAIN"),
                "{bad:?}"
            );
        }
        assert_eq!(
            "0:80".parse::<PortForward>().unwrap_err().0,
            "host port 0 is out of range (1-65535)"
        );
        assert_eq!(
            "80:65536".parse::<PortForward>().unwrap_err().0,
            "domain port 65536 is out of range (1-65535)"
        );
        assert!("80:99999999999999999999".parse::<PortForward>().is_err());
        for proto in ["80:80/sctp", "80:80/TCP", "80:80/", "80:80/tcp/udp"] {
            assert!(
                proto
                    .parse::<PortForward>()
                    .unwrap_err()
                    .0
                    .contains("unknown protocol"),
                "{proto:?}"
            );
        }
    }

    #[test]
    fn isolation_fields_default_when_absent() {
        // A record written before isolation existed.
        #[derive(Deserialize)]
        struct Old {
            #[serde(default)]
            isolation: Isolation,
        }
        let old: Old = toml::from_str("").unwrap();
        assert_eq!(old.isolation, Isolation::default());
        // Partial tables fill in the rest from the defaults.
        let iso: Isolation = toml::from_str("[network]\negress = 1000\n").unwrap();
        assert_eq!(iso.network.egress, Some(1000));
        assert!(iso.network.isolated);
        assert_eq!(iso.network.mode, NetworkMode::Nat);
        let iso: Isolation =
            toml::from_str("[[network.ports]]\nhost = 80\ndomain = 8080\n").unwrap();
        assert_eq!(iso.network.ports[0].proto, Proto::Tcp);
        let text = toml::to_string(&Isolation {
            network: NetworkPolicy {
                mode: NetworkMode::None,
                ..NetworkPolicy::default()
            },
            ..Isolation::default()
        })
        .unwrap();
        assert!(text.contains("mode = \"none\""), "{text}");
    }

    #[test]
    fn serde_names_are_lowercase() {
        #[derive(Serialize, Deserialize)]
        struct W {
            g: Granularity,
            p: Priority,
            b: BackendKind,
        }
        let text = toml::to_string(&W {
            g: Granularity::Vo,
            p: Priority::Preemptible,
            b: BackendKind::Libvirt,
        })
        .unwrap();
        assert!(text.contains("g = \"vo\""), "{text}");
        assert!(text.contains("p = \"preemptible\""), "{text}");
        assert!(text.contains("b = \"libvirt\""), "{text}");
    }
}
