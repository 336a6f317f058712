//! Networking of container domains (mechanism): a bridge owned by DMS, one veth pair per NAT
//! domain with an address from a pool, masquerade to the uplink, port forwards and isolation
//! between domains with nftables, and bandwidth shaping with tc.
//!
//! Links, addresses and routes go through rtnetlink (`dms-net`, no processes). nft and tc run
//! as tools through the zygote (never forked from the daemon's threads), only when a domain has
//! port forwards, talks to other domains or has rate limits, and once for the host set-up.
//! Everything per domain is derived from its [`NetAttachment`], which is kept in the domain's
//! record, so a restarted daemon can adopt it or clean it; [`Network::sweep`] removes links
//! and rules nobody owns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use dms_net::Rtnl;
use dms_policies::{NetworkPolicy, PortForward, Proto, Shaper};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::spawn::{Enter, Spawner};

/// Network settings of the daemon (the `[network]` config table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The bridge DMS creates and owns; NAT domains hang off it.
    pub bridge: String,
    /// IPv4 pool for domain addresses, CIDR; its first host address is the bridge's.
    pub pool: String,
    /// Name of the nftables tables (inet and bridge family) DMS owns.
    pub nft_table: String,
    /// Prefix of host-side veth names (`<prefix><n>`); links with it belong to DMS.
    pub link_prefix: String,
    /// DNS servers written to a resolv.conf that every domain sees; empty: the host's.
    pub dns: Vec<Ipv4Addr>,
}

/// A network failure.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Bad settings or a request that cannot be satisfied (pool full, port taken...).
    #[error("{0}")]
    Invalid(String),
    /// A conflict with something that exists (a port, a bridge that is not ours).
    #[error("{0}")]
    Conflict(String),
    /// The kernel or a tool failed.
    #[error("{0}")]
    Failed(String),
}

type NetResult<T> = Result<T, NetError>;

/// What one NAT domain got; stored in the domain's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetAttachment {
    /// Offset of its address in the pool; also names its host-side link.
    pub index: u32,
    /// Its address.
    pub address: Ipv4Addr,
    /// Pool prefix length.
    pub prefix: u8,
    /// The gateway (bridge address).
    pub gateway: Ipv4Addr,
    /// Host-side veth.
    pub host_if: String,
    /// Forwarded ports.
    pub ports: Vec<PortForward>,
    /// Whether it may talk to other non-isolated domains.
    pub open: bool,
    /// Rate limits applied, bits/s.
    pub egress: Option<u64>,
    /// Rate limits applied, bits/s.
    pub ingress: Option<u64>,
}

/// Parsed, validated settings.
#[derive(Debug, Clone)]
struct Settings {
    cfg: NetConfig,
    network: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    /// Highest usable index (broadcast excluded).
    last_index: u32,
}

impl NetConfig {
    /// Checks the settings; errors name the key and value.
    pub fn validate(&self) -> NetResult<()> {
        Settings::new(self).map(|_| ())
    }
}

impl Settings {
    fn new(cfg: &NetConfig) -> NetResult<Settings> {
        let bad =
            |k: &str, v: &str, why: &str| NetError::Invalid(format!("network.{k} = {v:?}: {why}"));
        dms_net::validate_ifname(&cfg.bridge)
            .map_err(|e| bad("bridge", &cfg.bridge, &e.to_string()))?;
        if cfg.link_prefix.is_empty()
            || cfg.link_prefix.len() > 8
            || !cfg.link_prefix.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(bad(
                "link_prefix",
                &cfg.link_prefix,
                "1 to 8 letters or digits expected",
            ));
        }
        if cfg.bridge.starts_with(&cfg.link_prefix) {
            return Err(bad(
                "bridge",
                &cfg.bridge,
                "must not start with network.link_prefix",
            ));
        }
        if cfg.nft_table.is_empty()
            || cfg.nft_table.len() > 32
            || !cfg
                .nft_table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(bad(
                "nft_table",
                &cfg.nft_table,
                "1 to 32 letters, digits or '_' expected",
            ));
        }
        let (addr, len) = cfg.pool.split_once('/').ok_or_else(|| {
            bad(
                "pool",
                &cfg.pool,
                "expected ADDRESS/PREFIX, e.g. 10.213.0.0/16",
            )
        })?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| bad("pool", &cfg.pool, "not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| (8..=29).contains(p))
            .ok_or_else(|| bad("pool", &cfg.pool, "prefix length must be 8 to 29"))?;
        let mask = u32::MAX << (32 - prefix);
        if u32::from(addr) & !mask != 0 {
            return Err(bad(
                "pool",
                &cfg.pool,
                &format!(
                    "host bits set; did you mean {}/{prefix}?",
                    Ipv4Addr::from(u32::from(addr) & mask)
                ),
            ));
        }
        let size = 1u32 << (32 - prefix);
        Ok(Settings {
            cfg: cfg.clone(),
            network: addr,
            prefix,
            gateway: Ipv4Addr::from(u32::from(addr) + 1),
            last_index: size - 2,
        })
    }

    fn address(&self, index: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + index)
    }

    fn alias(&self) -> String {
        format!("dms:{}", self.cfg.nft_table)
    }
}

#[derive(Debug, Default)]
struct State {
    host_ready: bool,
    /// The bridge's interface index, as of `ensure_host` (re-read if the bridge was replaced).
    bridge_index: u32,
    /// Live attachments by domain.
    by_domain: BTreeMap<String, NetAttachment>,
    /// Indices reserved (also during a creation in progress).
    used: BTreeSet<u32>,
    /// Host ports forwarded, by (proto, port).
    ports: BTreeMap<(Proto, u16), String>,
    /// Where the next index search starts: indices rotate, so a link that the kernel is
    /// still tearing down (asynchronously, with its namespace) is not asked for again at once.
    next_index: u32,
}

/// The network mechanism for container domains.
#[derive(Debug)]
pub struct Network {
    settings: Settings,
    spawner: Spawner,
    state_dir: PathBuf,
    state: Mutex<State>,
    rtnl: Mutex<Option<Rtnl>>,
}

impl Network {
    /// Validates the settings; touches nothing until the first NAT domain (or [`sweep`]).
    pub fn new(cfg: &NetConfig, spawner: Spawner, state_dir: PathBuf) -> NetResult<Network> {
        Ok(Network {
            settings: Settings::new(cfg)?,
            spawner,
            state_dir,
            state: Mutex::new(State::default()),
            rtnl: Mutex::new(None),
        })
    }

    fn with_rtnl<T>(&self, f: impl FnOnce(&mut Rtnl) -> dms_net::Result<T>) -> NetResult<T> {
        let mut guard = self.rtnl.lock();
        if guard.is_none() {
            *guard = Some(Rtnl::open().map_err(|e| NetError::Failed(e.to_string()))?);
        }
        let r = guard.as_mut().map(f);
        match r {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(NetError::Failed(e.to_string())),
            None => Err(NetError::Failed("no netlink socket".into())),
        }
    }

    /// Creates the bridge (or checks that an existing one is ours), enables forwarding and
    /// loads the nftables rules. Idempotent.
    fn ensure_host(&self) -> NetResult<()> {
        if self.state.lock().host_ready {
            return Ok(());
        }
        let s = &self.settings;
        let bridge = s.cfg.bridge.clone();
        let alias = s.alias();
        let existing = self.with_rtnl(|r| r.link(&bridge))?;
        let index = match existing {
            Some(l) if l.alias.as_deref() == Some(alias.as_str()) && l.kind.as_deref() == Some("bridge") => l.index,
            Some(l) => {
                return Err(NetError::Conflict(format!(
                    "network.bridge = {bridge:?}: an interface of that name exists and is not DMS's (kind {}, alias {:?}); choose another name in the daemon config",
                    l.kind.as_deref().unwrap_or("unknown"),
                    l.alias.as_deref().unwrap_or("")
                )))
            }
            None => self.with_rtnl(|r| r.create_bridge(&bridge, &alias))?,
        };
        match self.with_rtnl(|r| r.add_address(index, s.gateway, s.prefix)) {
            Ok(()) => {}
            Err(e) if e.to_string().contains("File exists") => {}
            Err(e) => return Err(e),
        }
        self.with_rtnl(|r| r.set_up(index))?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| NetError::Failed(format!("enabling IPv4 forwarding: {e}")))?;
        // Port forwards reached on 127.0.0.1 leave through the bridge with a loopback source
        // (masqueraded to the gateway); the kernel routes such packets only with route_localnet
        // on the outgoing interface. The input chain drops new connections from the bridge to
        // 127.0.0.0/8 that this would otherwise let domains make to the host's loopback services.
        let localnet = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
        std::fs::write(&localnet, "1").map_err(|e| {
            NetError::Failed(format!(
                "enabling {localnet} (port forwards on 127.0.0.1): {e}"
            ))
        })?;
        self.load_rules()?;
        let mut st = self.state.lock();
        st.host_ready = true;
        st.bridge_index = index;
        drop(st);
        tracing::info!(bridge = %bridge, pool = %s.cfg.pool, "domain network ready");
        Ok(())
    }

    /// Writes the whole nftables ruleset for the current state and loads it atomically.
    fn load_rules(&self) -> NetResult<()> {
        let script = {
            let st = self.state.lock();
            Self::ruleset_for(&self.settings, &st)
        };
        let path = self.state_dir.join("nftables.rules");
        let tmp = self.state_dir.join("nftables.rules.tmp");
        std::fs::write(&tmp, &script)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| NetError::Failed(format!("writing {}: {e}", path.display())))?;
        self.tool(
            &["nft", "-f", &path.display().to_string()],
            None,
            "loading nftables rules",
        )
        .map(|_| ())
    }

    fn ruleset_for(s: &Settings, st: &State) -> String {
        let t = &s.cfg.nft_table;
        let br = &s.cfg.bridge;
        let mut fwd = BTreeMap::<Proto, Vec<String>>::new();
        for ((proto, port), dom) in &st.ports {
            if let Some(a) = st.by_domain.get(dom) {
                if let Some(p) = a
                    .ports
                    .iter()
                    .find(|p| p.proto == *proto && p.host == *port)
                {
                    fwd.entry(*proto)
                        .or_default()
                        .push(format!("{} : {} . {}", p.host, a.address, p.domain));
                }
            }
        }
        let open: Vec<&NetAttachment> = st.by_domain.values().filter(|a| a.open).collect();
        let elems = |v: Vec<String>| {
            if v.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }};", v.join(", "))
            }
        };
        let map = |p: Proto| elems(fwd.get(&p).cloned().unwrap_or_default());
        let open_addrs = elems(open.iter().map(|a| a.address.to_string()).collect());
        let open_ifs = elems(open.iter().map(|a| format!("\"{}\"", a.host_if)).collect());
        let prefix = &s.cfg.link_prefix;
        format!(
            r#"# Generated by dmsd; reloaded as a whole. Do not edit.
table inet {t}
delete table inet {t}
table inet {t} {{
  set open_addrs {{ type ipv4_addr;{open_addrs} }}
  map fwd_tcp {{ type inet_service : ipv4_addr . inet_service;{tcp} }}
  map fwd_udp {{ type inet_service : ipv4_addr . inet_service;{udp} }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local dnat ip to tcp dport map @fwd_tcp
    fib daddr type local dnat ip to udp dport map @fwd_udp
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    fib daddr type local dnat ip to tcp dport map @fwd_tcp
    fib daddr type local dnat ip to udp dport map @fwd_udp
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {pool} oifname != "{br}" masquerade
    ip saddr 127.0.0.0/8 oifname "{br}" masquerade
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{br}" ip daddr 127.0.0.0/8 ct state != {{ established, related }} drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{br}" oifname "{br}" ip saddr @open_addrs ip daddr @open_addrs accept
    iifname "{br}" oifname "{br}" drop
  }}
}}
table bridge {t}
delete table bridge {t}
table bridge {t} {{
  set open_ifs {{ type ifname;{open_ifs} }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname @open_ifs oifname @open_ifs accept
    iifname "{prefix}*" oifname "{prefix}*" drop
  }}
}}
"#,
            tcp = map(Proto::Tcp),
            udp = map(Proto::Udp),
            pool = s.cfg.pool,
        )
    }

    /// Reserves a domain's address (pool index) and host ports before its init starts, so
    /// that an init taken from the spares can configure its `eth0` itself. Give it to
    /// [`Self::attach`], or back with [`Self::unreserve`].
    pub fn reserve(&self, domain: &str, policy: &NetworkPolicy) -> NetResult<NetAttachment> {
        self.ensure_host()?;
        let s = &self.settings;
        // Reserve an index and the ports first, so concurrent creations cannot take them.
        let index = {
            let mut st = self.state.lock();
            let mut seen = BTreeSet::new();
            for p in &policy.ports {
                if !seen.insert((p.proto, p.host)) {
                    continue;
                }
                if let Some(owner) = st.ports.get(&(p.proto, p.host)) {
                    return Err(NetError::Conflict(format!(
                        "network.ports = \"{p}\": host port {}/{} is already forwarded to domain {owner:?}",
                        p.host,
                        p.proto.as_str()
                    )));
                }
            }
            for p in &policy.ports {
                port_free_on_host(p)?;
            }
            let start = st.next_index.clamp(2, s.last_index);
            let index = (start..=s.last_index)
                .chain(2..start)
                .find(|i| !st.used.contains(i))
                .ok_or_else(|| {
                    NetError::Conflict(format!(
                        "address pool {} is exhausted ({} domains have addresses); enlarge network.pool",
                        s.cfg.pool,
                        st.used.len()
                    ))
                })?;
            st.used.insert(index);
            st.next_index = if index >= s.last_index { 2 } else { index + 1 };
            for p in &policy.ports {
                st.ports.insert((p.proto, p.host), domain.to_string());
            }
            index
        };
        Ok(NetAttachment {
            index,
            address: s.address(index),
            prefix: s.prefix,
            gateway: s.gateway,
            host_if: format!("{}{index}", s.cfg.link_prefix),
            ports: policy.ports.clone(),
            open: !policy.isolated,
            egress: policy.egress,
            ingress: policy.ingress,
        })
    }

    /// Gives back a reservation that was never attached.
    pub fn unreserve(&self, domain: &str, att: &NetAttachment) {
        self.release(domain, att);
    }

    /// Gives a domain (whose init holds its network namespace) its reserved link to the bridge,
    /// address, default route, port forwards and rate limits. `spare_link` is the host end of
    /// a veth pair the init made ahead of time (its `eth0` is then configured already); else
    /// the pair is made now. On failure nothing of it stays, the reservation included.
    pub fn attach(
        &self,
        domain: &str,
        att: NetAttachment,
        init_pid: i32,
        init_start: u64,
        policy: &NetworkPolicy,
        spare_link: Option<&str>,
    ) -> NetResult<NetAttachment> {
        let mut att = att;
        let plumbed = match spare_link {
            Some(link) => {
                att.host_if = link.to_string();
                self.take_over(&att)
            }
            None => self.plumb(&att, init_pid, domain),
        }
        .and_then(|()| self.shape_both(&att, init_pid, init_start, domain, policy));
        match plumbed {
            Ok(()) => {
                self.state
                    .lock()
                    .by_domain
                    .insert(domain.to_string(), att.clone());
                if (!att.ports.is_empty() || att.open) && self.add_elements(&att).is_err() {
                    // Fall back to a full reload, which includes this domain.
                    if let Err(e) = self.load_rules() {
                        self.detach(domain, false);
                        return Err(e);
                    }
                }
                Ok(att)
            }
            Err(e) => {
                let _ = self.with_rtnl(|r| r.delete_link_by_name(&att.host_if));
                self.release(domain, &att);
                Err(e)
            }
        }
    }

    /// Makes the veth pair now: the host end up on the bridge, `eth0` configured inside.
    fn plumb(&self, att: &NetAttachment, init_pid: i32, domain: &str) -> NetResult<()> {
        let netns: OwnedFd = std::fs::File::open(format!("/proc/{init_pid}/ns/net"))
            .map_err(|e| {
                NetError::Failed(format!(
                    "opening the network namespace of init {init_pid}: {e}"
                ))
            })?
            .into();
        // One request: the pair, the host end up on the bridge, the peer in the domain.
        self.on_bridge(Some(&att.host_if), |r, bridge_index| {
            r.create_veth_on_bridge(&att.host_if, bridge_index, "eth0", netns.as_fd())
        })?;
        // Before `eth0` comes up below, the host end has no carrier and no IPv6 address yet.
        ipv4_only(&att.host_if);
        let mut inner =
            Rtnl::open_in_netns(netns.as_fd()).map_err(|e| NetError::Failed(e.to_string()))?;
        let fail =
            |e: dms_net::NetError| NetError::Failed(format!("inside domain {domain:?}: {e}"));
        let eth0 = inner.link("eth0").map_err(fail)?.ok_or_else(|| {
            NetError::Failed(format!("inside domain {domain:?}: eth0 is missing"))
        })?;
        inner.set_up(eth0.index).map_err(fail)?;
        inner
            .add_address(eth0.index, att.address, att.prefix)
            .map_err(fail)?;
        inner.add_default_route(att.gateway).map_err(fail)?;
        Ok(())
    }

    /// Puts a spare's veth host end (`att.host_if`, whose peer, the domain's `eth0`, is
    /// configured, and which the spare made IPv4-only) on the bridge, up. It keeps the name
    /// the spare gave it: a rename costs the kernel an RCU grace period.
    fn take_over(&self, att: &NetAttachment) -> NetResult<()> {
        self.on_bridge(None, |r, bridge_index| {
            r.attach_link(&att.host_if, bridge_index)
        })
    }

    /// Runs `op`, a request putting a link on the bridge, with the bridge's index, and once
    /// more after a failure: when it was `EEXIST` and `stale` names a link (from a crash)
    /// that could be deleted, or when the bridge has been replaced since its index was looked
    /// up (the new index is kept).
    fn on_bridge(
        &self,
        stale: Option<&str>,
        mut op: impl FnMut(&mut Rtnl, u32) -> dms_net::Result<()>,
    ) -> NetResult<()> {
        let bridge = self.settings.cfg.bridge.clone();
        let bridge_index = self.state.lock().bridge_index;
        let new_bridge_index = self.with_rtnl(|r| {
            let e = match op(r, bridge_index) {
                Ok(()) => return Ok(bridge_index),
                Err(e) => e,
            };
            if let Some(stale) = stale.filter(|_| e.raw_os_error() == Some(libc::EEXIST)) {
                if !r.delete_link_by_name(stale)? {
                    return Err(e);
                }
                return op(r, bridge_index).map(|()| bridge_index);
            }
            match r.link(&bridge)? {
                Some(l) if l.index != bridge_index => op(r, l.index).map(|()| l.index),
                Some(_) => Err(e),
                None => Err(dms_net::NetError::Protocol {
                    op: format!("looking up bridge {bridge}"),
                    detail: "it vanished".into(),
                }),
            }
        })?;
        self.state.lock().bridge_index = new_bridge_index;
        Ok(())
    }

    /// The domain's rate limits, each way.
    fn shape_both(
        &self,
        att: &NetAttachment,
        init_pid: i32,
        init_start: u64,
        domain: &str,
        policy: &NetworkPolicy,
    ) -> NetResult<()> {
        if let Some(rate) = policy.ingress {
            self.shape(&att.host_if, rate, policy, None, domain, "ingress")?;
        }
        if let Some(rate) = policy.egress {
            let enter = Enter {
                domain: domain.to_string(),
                init_pid,
                init_start,
                flags: libc::CLONE_NEWNET,
            };
            self.shape("eth0", rate, policy, Some(enter), domain, "egress")?;
        }
        Ok(())
    }

    /// Root qdisc limiting what leaves `dev` to `rate` bits/s.
    fn shape(
        &self,
        dev: &str,
        rate: u64,
        policy: &NetworkPolicy,
        enter: Option<Enter>,
        domain: &str,
        what: &str,
    ) -> NetResult<()> {
        let (batch, qdisc) = rate_limit_batch(dev, rate, policy);
        self.tool(
            &["tc", "-batch", "-"],
            Some((batch.as_bytes(), enter)),
            &format!("shaping {what} of domain {domain:?} to {rate} bit/s with {qdisc}"),
        )
        .map(|_| ())
        .map_err(|e| match e {
            NetError::Failed(m) => match missing_qdisc_hint(&m, qdisc) {
                Some(hint) => NetError::Invalid(format!("{m} ({hint})")),
                None => NetError::Failed(m),
            },
            other => other,
        })
    }

    /// nft commands adding (or deleting) a domain's port forwards and open-set entries; map
    /// elements are deleted by key.
    fn element_script(&self, a: &NetAttachment, add: bool) -> String {
        let t = &self.settings.cfg.nft_table;
        let verb = if add { "add" } else { "delete" };
        let mut script = String::new();
        for p in &a.ports {
            let value = if add {
                format!(" : {} . {}", a.address, p.domain)
            } else {
                String::new()
            };
            script.push_str(&format!(
                "{verb} element inet {t} fwd_{} {{ {}{value} }}\n",
                p.proto.as_str(),
                p.host
            ));
        }
        if a.open {
            script.push_str(&format!(
                "{verb} element inet {t} open_addrs {{ {} }}\n",
                a.address
            ));
            script.push_str(&format!(
                "{verb} element bridge {t} open_ifs {{ \"{}\" }}\n",
                a.host_if
            ));
        }
        script
    }

    fn add_elements(&self, a: &NetAttachment) -> NetResult<()> {
        let script = self.element_script(a, true);
        self.tool(
            &["nft", "-f", "-"],
            Some((script.as_bytes(), None)),
            "adding nftables elements",
        )
        .map(|_| ())
    }

    fn release(&self, domain: &str, a: &NetAttachment) {
        let mut st = self.state.lock();
        st.used.remove(&a.index);
        st.ports.retain(|_, d| d != domain);
        st.by_domain.remove(domain);
    }

    /// Removes a domain's forwards and frees its address. With `namespace_gone` (its init was
    /// killed) the veth pair is left to the kernel, which deletes it with the namespace, off
    /// the caller's path (a synchronous delete costs tens of milliseconds of RCU grace
    /// periods); otherwise the link is deleted here.
    pub fn detach(&self, domain: &str, namespace_gone: bool) {
        let Some(a) = self.state.lock().by_domain.get(domain).cloned() else {
            return;
        };
        if !namespace_gone {
            if let Err(e) = self.with_rtnl(|r| r.delete_link_by_name(&a.host_if)) {
                tracing::warn!(domain, link = %a.host_if, error = %e, "could not delete link");
            }
        }
        let had_rules = !a.ports.is_empty() || a.open;
        self.release(domain, &a);
        if had_rules {
            let script = self.element_script(&a, false);
            if self
                .tool(
                    &["nft", "-f", "-"],
                    Some((script.as_bytes(), None)),
                    "removing nftables elements",
                )
                .is_err()
            {
                if let Err(e) = self.load_rules() {
                    tracing::warn!(domain, error = %e, "could not reload nftables rules");
                }
            }
        }
    }

    /// Takes over a live domain's attachment after a restart.
    pub fn adopt(&self, domain: &str, a: &NetAttachment) {
        let mut st = self.state.lock();
        st.used.insert(a.index);
        for p in &a.ports {
            st.ports.insert((p.proto, p.host), domain.to_string());
        }
        st.by_domain.insert(domain.to_string(), a.clone());
    }

    /// After reconcile: deletes host links with our prefix that no domain owns and reloads
    /// the rules from the adopted domains. Returns the links removed.
    pub fn sweep(&self) -> NetResult<Vec<String>> {
        let prefix = self.settings.cfg.link_prefix.clone();
        let owned: BTreeSet<String> = self
            .state
            .lock()
            .by_domain
            .values()
            .map(|a| a.host_if.clone())
            .collect();
        let links = self.with_rtnl(|r| r.links())?;
        let mut removed = Vec::new();
        for l in links {
            let ours = l
                .name
                .strip_prefix(&prefix)
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            if ours && !owned.contains(&l.name) {
                // One the kernel is already tearing down may vanish under us: not an error.
                match self.with_rtnl(|r| r.delete_link(l.index)) {
                    Ok(()) => removed.push(l.name),
                    Err(e) => tracing::debug!(link = %l.name, error = %e, "stray link not deleted"),
                }
            }
        }
        let bridge_exists = self
            .with_rtnl(|r| r.link(&self.settings.cfg.bridge))?
            .is_some();
        if bridge_exists || !owned.is_empty() {
            self.ensure_host()?;
        }
        Ok(removed)
    }

    /// Removes the bridge and the rules (when the daemon stops with no NAT domain left).
    pub fn teardown_if_unused(&self) {
        if !self.state.lock().by_domain.is_empty() {
            return;
        }
        let t = self.settings.cfg.nft_table.clone();
        let _ = self.tool(&["nft", "-f", "-"], Some((format!("table inet {t}\ndelete table inet {t}\ntable bridge {t}\ndelete table bridge {t}\n").as_bytes(), None)), "removing nftables tables");
        let alias = self.settings.alias();
        let bridge = self.settings.cfg.bridge.clone();
        let _ = self.with_rtnl(|r| match r.link(&bridge)? {
            Some(l) if l.alias.as_deref() == Some(alias.as_str()) => r.delete_link(l.index),
            _ => Ok(()),
        });
        let _ = std::fs::remove_file(self.state_dir.join("nftables.rules"));
        self.state.lock().host_ready = false;
    }

    /// Runs a tool as root through the zygote (optionally inside a domain's network
    /// namespace), with `input` on stdin; returns stdout, or its stderr as the error. Bounded
    /// to 10 s.
    fn tool(
        &self,
        argv: &[&str],
        input: Option<(&[u8], Option<Enter>)>,
        what: &str,
    ) -> NetResult<String> {
        let (bytes, enter) = input.unwrap_or((&[], None));
        self.spawner
            .run_tool(argv, bytes, enter, Duration::from_secs(10))
            .map_err(|m| NetError::Failed(format!("{what}: {m}")))
    }
}

/// Turns IPv6 off on a domain's host end. The domain is NATed over IPv4 (its `eth0` has IPv6
/// off from birth, see `init`), so IPv6 on the bridge port only costs the kernel address
/// configuration, DAD and MLD work per domain; set before the link has carrier, none of it
/// starts. Best effort: a host booted without IPv6 has no such file.
fn ipv4_only(host_if: &str) {
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6"),
        "1",
    );
}

/// The tc batch that puts a root qdisc on `dev` limiting what leaves it to `rate` bits/s with
/// the policy's shaper and burst, and that qdisc's name (container veths and guest taps alike;
/// `replace`, because a tap starts with a default root qdisc where a fresh veth has none).
pub(crate) fn rate_limit_batch(
    dev: &str,
    rate: u64,
    policy: &NetworkPolicy,
) -> (String, &'static str) {
    let burst = policy.burst.unwrap_or_else(|| default_burst(rate));
    match policy.shaper {
        Shaper::Htb => (
            format!(
                "qdisc replace dev {dev} root handle 1: htb default 1\nclass replace dev {dev} parent 1: classid 1:1 htb rate {rate}bit ceil {rate}bit burst {burst}b cburst {burst}b\n"
            ),
            "htb",
        ),
        Shaper::Tbf => (
            format!("qdisc replace dev {dev} root tbf rate {rate}bit burst {burst}b latency 50ms\n"),
            "tbf",
        ),
    }
}

/// Burst (bytes) when the policy names none: 10 ms of data at `rate` bits/s, at least 32 KiB.
/// tc's own htb default is one timer tick (1 ms at 1000 Hz), so a sender woken a few ms late
/// on a busy node can never catch up and TCP falls well short of the rate.
pub(crate) fn default_burst(rate: u64) -> u64 {
    (rate / 8 / 100).max(32 * 1024)
}

/// Advice for tc's error when the kernel lacks `qdisc`.
pub(crate) fn missing_qdisc_hint(tc_error: &str, qdisc: &str) -> Option<String> {
    (tc_error.contains("nknown qdisc") || tc_error.contains("qdisc kind is unknown")).then(|| {
        format!("this kernel has no sch_{qdisc}; choose network.shaper = \"htb\" or \"tbf\", whichever the kernel has")
    })
}

/// Refuses a host port that some process already listens on.
fn port_free_on_host(p: &PortForward) -> NetResult<()> {
    let addr = std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, p.host);
    let r = match p.proto {
        Proto::Tcp => std::net::TcpListener::bind(addr).map(drop),
        Proto::Udp => std::net::UdpSocket::bind(addr).map(drop),
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(NetError::Conflict(format!(
            "network.ports = \"{p}\": host port {}/{} is in use on the host",
            p.host,
            p.proto.as_str()
        ))),
        Err(e) => Err(NetError::Failed(format!(
            "checking host port {}/{}: {e}",
            p.host,
            p.proto.as_str()
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg(pool: &str) -> NetConfig {
        NetConfig {
            bridge: "dms0".into(),
            pool: pool.into(),
            nft_table: "dms".into(),
            link_prefix: "dmsv".into(),
            dns: vec![],
        }
    }

    #[test]
    fn default_burst_is_ten_ms_of_data_and_at_least_32_kib() {
        assert_eq!(default_burst(100_000_000), 125_000);
        assert_eq!(default_burst(1_000_000), 32 * 1024);
        let policy = NetworkPolicy::default();
        let (batch, qdisc) = rate_limit_batch("dmsv1", 100_000_000, &policy);
        assert_eq!(qdisc, "htb");
        assert!(batch.contains("burst 125000b cburst 125000b"), "{batch}");
    }

    #[test]
    fn settings_are_validated_with_the_key_and_value() {
        let s = Settings::new(&cfg("198.18.4.0/22")).unwrap();
        assert_eq!(s.gateway, Ipv4Addr::new(198, 18, 4, 1));
        assert_eq!(s.address(2), Ipv4Addr::new(198, 18, 4, 2));
        assert_eq!(s.last_index, 1022);
        for (pool, want) in [
            ("198.18.4.1/22", "did you mean 198.18.4.0/22"),
            ("198.18.4.0", "expected ADDRESS/PREFIX"),
            ("198.18.4.0/31", "prefix length"),
            ("nonsense/24", "not an IPv4 address"),
        ] {
            let e = Settings::new(&cfg(pool)).unwrap_err().to_string();
            assert!(
                e.contains("network.pool") && e.contains(want),
                "{pool}: {e}"
            );
        }
        let mut c = cfg("10.0.0.0/24");
        c.bridge = "a-bridge-name-too-long".into();
        assert!(Settings::new(&c)
            .unwrap_err()
            .to_string()
            .contains("network.bridge"));
        let mut c = cfg("10.0.0.0/24");
        c.nft_table = "x y".into();
        assert!(Settings::new(&c)
            .unwrap_err()
            .to_string()
            .contains("network.nft_table"));
        let mut c = cfg("10.0.0.0/24");
        c.bridge = "dmsv0".into();
        assert!(Settings::new(&c)
            .unwrap_err()
            .to_string()
            .contains("link_prefix"));
    }

    #[test]
    fn ruleset_lists_forwards_and_open_domains() {
        let s = Settings::new(&cfg("198.18.4.0/24")).unwrap();
        let mut st = State::default();
        let a = NetAttachment {
            index: 2,
            address: s.address(2),
            prefix: 24,
            gateway: s.gateway,
            host_if: "dmsv2".into(),
            ports: vec!["8080:80".parse().unwrap(), "5353:53/udp".parse().unwrap()],
            open: true,
            egress: None,
            ingress: None,
        };
        for p in &a.ports {
            st.ports.insert((p.proto, p.host), "d".into());
        }
        st.by_domain.insert("d".into(), a);
        let text = Network::ruleset_for(&s, &st);
        assert!(text.contains("8080 : 198.18.4.2 . 80"), "{text}");
        assert!(text.contains("5353 : 198.18.4.2 . 53"), "{text}");
        assert!(text.contains("elements = { 198.18.4.2 }"), "{text}");
        assert!(text.contains("elements = { \"dmsv2\" }"), "{text}");
        assert!(
            text.contains("ip saddr 198.18.4.0/24 oifname != \"dms0\" masquerade"),
            "{text}"
        );
        assert!(
            text.contains("iifname \"dmsv*\" oifname \"dmsv*\" drop"),
            "{text}"
        );
        // Forwards reached on 127.0.0.1, without opening the host's loopback to domains.
        assert!(
            text.contains("ip saddr 127.0.0.0/8 oifname \"dms0\" masquerade"),
            "{text}"
        );
        assert!(
            text.contains(
                "iifname \"dms0\" ip daddr 127.0.0.0/8 ct state != { established, related } drop"
            ),
            "{text}"
        );
        let empty = Network::ruleset_for(&s, &State::default());
        assert!(!empty.contains("elements"), "{empty}");
    }
}
