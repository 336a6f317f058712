//! The Account Mapping Service: grid identities to local accounts, with leased pool accounts
//! kept in the state database and published for `libnss_dms.so.2`.
//!
//! Two sources of rules: the grid-mapfile and group-mapfile of `[accounts]`, and the `map` and
//! `group_map` rules of the VO policy files ([`PolicyMaps`]). An identity (DN, FQANs with the
//! primary first) gets the target of the first of:
//! 1. the first grid-mapfile line matching the primary FQAN,
//! 2. the first grid-mapfile line matching the DN,
//! 3. the first policy `map` rule matching the primary FQAN,
//! 4. the first policy `map` rule matching the DN,
//!
//! where policy rules are in the order written (policy files in name order, rules by position
//! in their file). Its secondary groups are the group-mapfile's (per FQAN, in FQAN order, the
//! first matching line) followed by those the policy `group_map` rules add (the same way),
//! without duplicates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use dms_accounts::nssfile::{self, GroupEntry, PasswdEntry};
use dms_accounts::{
    validate_dn, validate_pools, GroupMapFile, MapFile, Pattern, PoolConfig, Target,
};
use dms_policies::{validate_name, Fqan, MapPattern, MapTarget, Origin, PolicyErrors, PolicySet};

/// Most FQANs one identity may carry.
pub const MAX_FQANS: usize = 64;

/// `[accounts]` of dmsd's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsConfig {
    /// grid-mapfile path.
    pub grid_mapfile: PathBuf,
    /// group-mapfile path.
    pub group_mapfile: PathBuf,
    /// Where passwd/group are published.
    pub nss_dir: PathBuf,
    /// Trusted CA certificates, for X.509 proxies.
    pub x509_cert_dir: PathBuf,
    /// VOMS server certificates (or .lsc files) by VO.
    pub vomsdir: PathBuf,
    /// The PAM session socket.
    pub pam_socket: PathBuf,
    /// VOs refused on this node.
    pub banned_vos: Vec<String>,
    /// When not empty, the only VOs allowed.
    pub reserved_for: Vec<String>,
    /// What PAM does with local users without a grid identity.
    pub unmanaged: Unmanaged,
    /// Groups DMS publishes.
    pub groups: BTreeMap<String, u32>,
    /// Pools by name.
    pub pools: BTreeMap<String, PoolConfig>,
}

/// Handling of users DMS does not manage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmanaged {
    /// Their sessions pass untouched.
    Allow,
    /// Their logins are refused.
    Deny,
}

impl AccountsConfig {
    /// Fills in pool names and checks everything.
    pub fn finish(&mut self) -> Result<(), String> {
        for (name, p) in &mut self.pools {
            p.name = name.clone();
        }
        if ["/tmp", "/dev/shm"]
            .iter()
            .any(|p| self.pam_socket.starts_with(p))
        {
            return Err(format!(
                "accounts.pam_socket: {} is hidden inside domains (their /tmp and /dev/shm are private), where pam_dms.so closes sessions; use a path under /run",
                self.pam_socket.display()
            ));
        }
        let pools: Vec<PoolConfig> = self.pools.values().cloned().collect();
        validate_pools(&pools).map_err(|e| e.to_string())?;
        for (field, list) in [
            ("accounts.banned_vos", &self.banned_vos),
            ("accounts.reserved_for", &self.reserved_for),
        ] {
            for vo in list {
                validate_name(field, vo).map_err(|e| e.to_string())?;
            }
        }
        for (name, gid) in &self.groups {
            validate_name("accounts.groups", name).map_err(|e| e.to_string())?;
            if *gid < dms_accounts::pool::MIN_POOL_ID {
                return Err(format!(
                    "accounts.groups.{name}: gid {gid} is below {}",
                    dms_accounts::pool::MIN_POOL_ID
                ));
            }
            if let Some(p) = pools.iter().find(|p| p.group() == name && p.gid != *gid) {
                return Err(format!(
                    "accounts.groups.{name}: gid {gid} differs from pool {:?}'s gid {}",
                    p.name, p.gid
                ));
            }
        }
        Ok(())
    }
}

/// A leased pool account, or the identity last mapped to a static account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Local account name.
    pub account: String,
    /// The pool, or None for a static account (of the grid-mapfile or a policy `map` rule).
    pub pool: Option<String>,
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Certificate subject.
    pub dn: String,
    /// FQANs, primary first (canonical form).
    pub fqans: Vec<String>,
    /// Secondary local groups, from the group-mapfile and the policies' `group_map` rules.
    pub groups: Vec<String>,
    /// Unix seconds when leased (or first mapped).
    pub leased_at: u64,
    /// Unix seconds of the last map or session.
    pub used_at: u64,
}

impl Lease {
    /// The VO and primary FQAN of the identity, if it carries one.
    pub fn primary(&self) -> Option<Fqan> {
        self.fqans.first().and_then(|f| f.parse().ok())
    }
}

/// Why mapping failed; the service turns these into API errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapError {
    /// Bad DN or FQAN.
    Invalid(String),
    /// No mapping applies, or no such account.
    NotFound(String),
    /// The pool is full.
    Full(String),
    /// Configuration or system failure.
    Failed(String),
}

/// The `map` and `group_map` rules of the policy files in force, as mapfiles, tried after the
/// grid-mapfile and group-mapfile.
#[derive(Debug, Clone, Default)]
pub struct PolicyMaps {
    map: MapFile,
    /// Where each `map` rule was written, by its index in `map`.
    origins: Vec<Origin>,
    groups: GroupMapFile,
}

fn pattern(p: &MapPattern) -> Pattern {
    match p {
        MapPattern::Dn(dn) => Pattern::Dn(dn.clone()),
        MapPattern::Fqan(f) => Pattern::Fqan(f.clone()),
        MapPattern::FqanPrefix(path) => Pattern::FqanPrefix(path.clone()),
    }
}

impl PolicyMaps {
    /// Takes the rules of a loaded policy set. Every pool a `map` rule names must be one of
    /// `pools` (`[accounts.pools]`); each one missing is an error at the rule's `pool` key.
    pub fn new(
        set: &PolicySet,
        pools: &BTreeMap<String, PoolConfig>,
    ) -> Result<PolicyMaps, PolicyErrors> {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        let mut origins = Vec::new();
        for rule in set.mappings() {
            let target = match &rule.target {
                MapTarget::Account(a) => Target::Account(a.clone()),
                MapTarget::Pool(p) if pools.contains_key(p) => Target::Pool(p.clone()),
                MapTarget::Pool(p) => {
                    let known = if pools.is_empty() {
                        "no pools are configured".to_string()
                    } else {
                        let names: Vec<&str> = pools.keys().map(String::as_str).collect();
                        format!("configured: {}", names.join(", "))
                    };
                    errors.push(rule.target_origin.error(format!(
                        "no pool {p:?} in dmsd's configuration; add [accounts.pools.{p}] or name a configured pool ({known})"
                    )));
                    continue;
                }
            };
            rules.push((pattern(&rule.pattern), target));
            origins.push(rule.origin.clone());
        }
        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }
        let groups = set
            .group_mappings()
            .iter()
            .map(|g| (pattern(&g.pattern), g.group.clone()));
        Ok(PolicyMaps {
            map: MapFile::from_rules(rules),
            origins,
            groups: GroupMapFile::from_rules(groups),
        })
    }

    /// Number of `map` rules.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when the policies map nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Leases, mapfiles, policy mapping rules and pools.
#[derive(Debug)]
pub struct AccountBook {
    trust: Option<LoadedTrust>,
    cfg: AccountsConfig,
    gridmap: MapFile,
    groupmap: GroupMapFile,
    policy: PolicyMaps,
    leases: BTreeMap<String, Lease>,
}

/// Parses an identity's DN and FQANs.
pub fn parse_identity(dn: &str, fqans: &[String]) -> Result<Vec<Fqan>, MapError> {
    validate_dn(dn).map_err(|e| MapError::Invalid(format!("dn: {e}")))?;
    if fqans.len() > MAX_FQANS {
        return Err(MapError::Invalid(format!(
            "fqan: {} given, at most {MAX_FQANS}",
            fqans.len()
        )));
    }
    fqans
        .iter()
        .map(|f| {
            f.parse::<Fqan>()
                .map_err(|e| MapError::Invalid(format!("fqan: {e}")))
        })
        .collect()
}

/// Longest a loaded trust store is used without reading the directories again.
pub const TRUST_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(300);

/// A loaded trust store and what tells whether it is still current.
#[derive(Debug)]
struct LoadedTrust {
    store: std::sync::Arc<dms_proxy::TrustStore>,
    stamp: TrustStamp,
    fresh_until: std::time::SystemTime,
}

/// The modification times of the CA directory and the vomsdir (None: unreadable or missing).
type TrustStamp = [Option<std::time::SystemTime>; 2];

fn trust_stamp(ca_dir: &Path, vomsdir: &Path) -> TrustStamp {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    [mtime(ca_dir), mtime(vomsdir)]
}

impl AccountBook {
    /// Reads the mapfiles; `leases` come from the store. No policy rules until
    /// [`AccountBook::set_policies`].
    pub fn new(cfg: AccountsConfig, leases: Vec<Lease>) -> Result<AccountBook, String> {
        let gridmap = MapFile::load(&cfg.grid_mapfile).map_err(|e| e.to_string())?;
        let groupmap = GroupMapFile::load(&cfg.group_mapfile).map_err(|e| e.to_string())?;
        Ok(AccountBook {
            trust: None,
            cfg,
            gridmap,
            groupmap,
            policy: PolicyMaps::default(),
            leases: leases.into_iter().map(|l| (l.account.clone(), l)).collect(),
        })
    }

    /// Puts the `map` and `group_map` rules of a policy set in force (at start and on every
    /// policy reload). On error (a rule names a pool missing from `[accounts.pools]`) the
    /// previous rules stay, and the caller keeps the previous policies.
    pub fn set_policies(&mut self, set: &PolicySet) -> Result<(), PolicyErrors> {
        self.policy = PolicyMaps::new(set, &self.cfg.pools)?;
        Ok(())
    }

    /// The policy rules in force.
    pub fn policy_maps(&self) -> &PolicyMaps {
        &self.policy
    }

    /// Re-reads the mapfiles; on error the old ones stay.
    pub fn reload(&mut self) -> Result<(), String> {
        let gridmap = MapFile::load(&self.cfg.grid_mapfile).map_err(|e| e.to_string())?;
        let groupmap = GroupMapFile::load(&self.cfg.group_mapfile).map_err(|e| e.to_string())?;
        self.gridmap = gridmap;
        self.groupmap = groupmap;
        self.trust = None;
        Ok(())
    }

    /// The CA and VOMS trust store, read at first use and again when it may be stale: after a
    /// reload, when the CA directory or vomsdir changed (fetch-crl renames new CRLs into
    /// place), when a CRL reaches its nextUpdate, and at least every [`TRUST_MAX_AGE`] (for
    /// files rewritten in place).
    pub fn trust(&mut self) -> Result<std::sync::Arc<dms_proxy::TrustStore>, String> {
        let stamp = trust_stamp(&self.cfg.x509_cert_dir, &self.cfg.vomsdir);
        let now = std::time::SystemTime::now();
        if let Some(t) = &self.trust {
            if t.stamp == stamp && now < t.fresh_until {
                return Ok(std::sync::Arc::clone(&t.store));
            }
        }
        let vomsdir = self
            .cfg
            .vomsdir
            .exists()
            .then_some(self.cfg.vomsdir.as_path());
        let t = dms_proxy::TrustStore::load(&self.cfg.x509_cert_dir, vomsdir).map_err(|e| {
            format!(
                "accounts.x509_cert_dir {}: {e}",
                self.cfg.x509_cert_dir.display()
            )
        })?;
        for s in t.skipped() {
            tracing::warn!(skipped = ?s, "trust store: file skipped");
        }
        tracing::info!(
            cas = t.ca_count(),
            crls = t.crl_count(),
            signing_policies = t.signing_policy_count(),
            "trust store loaded"
        );
        let mut fresh_until = now + TRUST_MAX_AGE;
        if let Some(next) = t.crl_next_update() {
            // Just after: a CRL is valid up to and including its nextUpdate.
            fresh_until = fresh_until.min(next + std::time::Duration::from_secs(1));
        }
        let store = std::sync::Arc::new(t);
        self.trust = Some(LoadedTrust {
            store: std::sync::Arc::clone(&store),
            stamp,
            fresh_until,
        });
        Ok(store)
    }

    /// The configuration.
    pub fn config(&self) -> &AccountsConfig {
        &self.cfg
    }

    /// All leases, by account.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// One lease.
    pub fn lease(&self, account: &str) -> Option<&Lease> {
        self.leases.get(account)
    }

    fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.cfg.pools.get(name)
    }

    /// The pool an account name belongs to, leased or not.
    pub fn pool_of(&self, account: &str) -> Option<&PoolConfig> {
        self.cfg
            .pools
            .values()
            .find(|p| p.index_of(account).is_some())
    }

    /// Maps an identity: returns the new or renewed lease, and the record it replaced (None for
    /// a new lease), so that the caller can undo the change if it cannot be stored.
    /// `static_user` resolves a static account to (uid, gid). The caller persists and publishes.
    pub fn map(
        &mut self,
        dn: &str,
        fqans: &[String],
        now: u64,
        static_user: impl Fn(&str) -> Result<(u32, u32), MapError>,
    ) -> Result<(Lease, Option<Lease>), MapError> {
        let parsed = parse_identity(dn, fqans)?;
        let canonical: Vec<String> = parsed.iter().map(|f| f.to_string()).collect();
        let primary = parsed.first();
        // The grid-mapfile (FQAN, then DN), then the policy rules (FQAN, then DN).
        let (target, via) = if let Some(t) = self.gridmap.lookup(dn, primary) {
            let via = format!("the grid-mapfile {}", self.cfg.grid_mapfile.display());
            (t.clone(), via)
        } else if let Some((i, t)) = self.policy.map.find(dn, primary) {
            let via = match self.policy.origins.get(i) {
                Some(o) => format!("policy rule {o}"),
                None => "a policy rule".to_string(),
            };
            (t.clone(), via)
        } else {
            return Err(MapError::NotFound(format!(
                "no mapping for dn {dn:?}{} in {} or the policy files' map rules",
                match canonical.first() {
                    Some(f) => format!(" or fqan {f:?}"),
                    None => String::new(),
                },
                self.cfg.grid_mapfile.display()
            )));
        };
        tracing::debug!(dn, fqan = ?canonical.first(), target = ?target, via = %via, "identity mapped");
        let mut groups = self.groupmap.groups(&parsed);
        for g in self.policy.groups.groups(&parsed) {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        let lease = match target {
            Target::Account(account) => {
                let (uid, gid) = static_user(&account).map_err(|e| match e {
                    MapError::NotFound(m) => MapError::NotFound(format!("{m} (mapped by {via})")),
                    other => other,
                })?;
                let leased_at = self.leases.get(&account).map_or(now, |l| l.leased_at);
                Lease {
                    account,
                    pool: None,
                    uid,
                    gid,
                    dn: dn.to_owned(),
                    fqans: canonical,
                    groups,
                    leased_at,
                    used_at: now,
                }
            }
            Target::Pool(pool_name) => {
                let pool = self.pool(&pool_name).ok_or_else(|| {
                    MapError::Failed(format!(
                        "{via} maps to pool .{pool_name} but dmsd's configuration has no [accounts.pools.{pool_name}]"
                    ))
                })?;
                let held = self
                    .leases
                    .values()
                    .find(|l| l.pool.as_deref() == Some(&pool_name) && l.dn == dn);
                match held {
                    Some(l) => Lease {
                        fqans: canonical,
                        groups,
                        used_at: now,
                        ..l.clone()
                    },
                    None => {
                        let index = (1..=pool.size)
                            .find(|i| !self.leases.contains_key(&pool.account(*i)))
                            .ok_or_else(|| {
                                MapError::Full(format!(
                                    "pool {pool_name:?} is full: all {} accounts are leased (release one with `dmsctl account release`, or enlarge accounts.pools.{pool_name}.size)",
                                    pool.size
                                ))
                            })?;
                        Lease {
                            account: pool.account(index),
                            uid: pool.uid(index),
                            gid: pool.gid,
                            pool: Some(pool_name),
                            dn: dn.to_owned(),
                            fqans: canonical,
                            groups,
                            leased_at: now,
                            used_at: now,
                        }
                    }
                }
            }
        };
        let previous = self.leases.insert(lease.account.clone(), lease.clone());
        Ok((lease, previous))
    }

    /// Puts a lease back as it was (undoing a change that could not be stored).
    pub fn restore(&mut self, lease: Lease) {
        self.leases.insert(lease.account.clone(), lease);
    }

    /// Forgets a lease (after the caller checked it is unused).
    pub fn release(&mut self, account: &str) -> Option<Lease> {
        self.leases.remove(account)
    }

    /// Marks a lease used now.
    pub fn touch(&mut self, account: &str, now: u64) -> Option<&Lease> {
        let l = self.leases.get_mut(account)?;
        l.used_at = now;
        Some(l)
    }

    /// Pool leases unused for longer than their pool's `lease_idle_secs`.
    pub fn expired(&self, now: u64) -> Vec<String> {
        self.leases
            .values()
            .filter_map(|l| {
                let p = self.pool(l.pool.as_deref()?)?;
                (p.lease_idle_secs > 0 && now.saturating_sub(l.used_at) > p.lease_idle_secs)
                    .then(|| l.account.clone())
            })
            .collect()
    }

    /// The home directory of a pool account, to create at lease time (None: not wanted).
    pub fn home_to_create(&self, lease: &Lease) -> Option<PathBuf> {
        let p = self.pool(lease.pool.as_deref()?)?;
        p.create_home
            .then(|| PathBuf::from(p.home_of(&lease.account)))
    }

    /// The home directory to remove when `lease` ends (None: kept).
    pub fn home_to_clean(&self, lease: &Lease) -> Option<PathBuf> {
        let p = self.pool(lease.pool.as_deref()?)?;
        p.cleans_home()
            .then(|| PathBuf::from(p.home_of(&lease.account)))
    }

    /// The passwd and group entries to publish. `host_gid` resolves a group not configured in
    /// `[accounts.groups]` (a host group) for secondary membership.
    pub fn entries(
        &self,
        host_gid: impl Fn(&str) -> Option<u32>,
    ) -> (Vec<PasswdEntry>, Vec<GroupEntry>) {
        let mut users: Vec<PasswdEntry> = self
            .leases
            .values()
            .filter_map(|l| {
                let p = self.pool(l.pool.as_deref()?)?;
                Some(PasswdEntry {
                    name: l.account.clone(),
                    uid: l.uid,
                    gid: l.gid,
                    gecos: format!("DMS pool {}", p.name),
                    home: p.home_of(&l.account),
                    shell: p.shell.clone(),
                })
            })
            .collect();
        users.sort_by_key(|u| u.uid);
        let mut members: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for l in self.leases.values() {
            for g in &l.groups {
                members.entry(g).or_default().insert(&l.account);
            }
        }
        let mut groups: BTreeMap<String, GroupEntry> = BTreeMap::new();
        for p in self.cfg.pools.values() {
            groups.insert(
                p.group().to_owned(),
                GroupEntry {
                    name: p.group().to_owned(),
                    gid: p.gid,
                    members: vec![],
                },
            );
        }
        for (name, gid) in &self.cfg.groups {
            groups.insert(
                name.clone(),
                GroupEntry {
                    name: name.clone(),
                    gid: *gid,
                    members: vec![],
                },
            );
        }
        for (g, who) in members {
            let gid = match groups.get(g) {
                Some(e) => e.gid,
                None => match host_gid(g) {
                    Some(gid) => gid,
                    None => {
                        tracing::warn!(group = g, "the group-mapfile or a policy group_map rule names a group that exists nowhere; membership not published");
                        continue;
                    }
                },
            };
            let e = groups.entry(g.to_owned()).or_insert_with(|| GroupEntry {
                name: g.to_owned(),
                gid,
                members: vec![],
            });
            e.members = who.into_iter().map(str::to_owned).collect();
        }
        let mut groups: Vec<GroupEntry> = groups.into_values().collect();
        groups.sort_by_key(|g| g.gid);
        (users, groups)
    }

    /// Writes the NSS files.
    pub fn publish(&self, host_gid: impl Fn(&str) -> Option<u32>) -> Result<(), String> {
        let (users, groups) = self.entries(host_gid);
        nssfile::publish(&self.cfg.nss_dir, &users, &groups).map_err(|e| e.to_string())
    }

    /// The NSS directory.
    pub fn nss_dir(&self) -> &Path {
        &self.cfg.nss_dir
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> AccountsConfig {
        let text = format!(
            r#"
grid_mapfile = "{d}/grid-mapfile"
group_mapfile = "{d}/groupmapfile"
nss_dir = "{d}/nss"
x509_cert_dir = "{d}/certificates"
vomsdir = "{d}/vomsdir"
pam_socket = "/run/dms-unit-test.sock"
banned_vos = []
reserved_for = []
unmanaged = "allow"
[groups]
atlasprd = 21000
[pools.atlas]
size = 2
uid_min = 20001
gid = 20000
home = "{d}/home/{{account}}"
lease_idle_secs = 100
[pools.cms]
size = 3
uid_min = 30001
gid = 30000
"#,
            d = dir.display()
        );
        let mut c: AccountsConfig = toml::from_str(&text).unwrap();
        c.finish().unwrap();
        c
    }

    const GRID: &str =
        "\"/atlas/Role=production\" .atlas\n\"/cms/*\" .cms\n\"/DC=org/CN=Static\" root\n";

    fn book(d: &Path) -> AccountBook {
        std::fs::write(d.join("grid-mapfile"), GRID).unwrap();
        std::fs::write(
            d.join("groupmapfile"),
            "\"/atlas/Role=production\" atlasprd\n",
        )
        .unwrap();
        AccountBook::new(config(d), vec![]).unwrap()
    }

    fn root_user(name: &str) -> Result<(u32, u32), MapError> {
        if name == "root" {
            Ok((0, 0))
        } else {
            Err(MapError::NotFound(name.into()))
        }
    }

    #[test]
    fn pool_leases_are_sticky_and_bounded() {
        let d = tempfile::tempdir().unwrap();
        let mut b = book(d.path());
        let prod = vec!["/atlas/Role=production".to_string()];
        let (a, previous) = b.map("/DC=org/CN=A", &prod, 10, root_user).unwrap();
        assert!(previous.is_none());
        assert_eq!(
            (a.account.as_str(), a.uid, a.gid),
            ("atlas001", 20001, 20000)
        );
        assert_eq!(a.groups, vec!["atlasprd"]);
        // Same identity, same account.
        let (again, previous) = b.map("/DC=org/CN=A", &prod, 20, root_user).unwrap();
        assert_eq!(previous.map(|p| p.used_at), Some(10));
        assert_eq!(again.account, "atlas001");
        assert_eq!(again.used_at, 20);
        let (bb, _) = b.map("/DC=org/CN=B", &prod, 30, root_user).unwrap();
        assert_eq!(bb.account, "atlas002");
        let e = b.map("/DC=org/CN=C", &prod, 40, root_user).unwrap_err();
        assert!(
            matches!(&e, MapError::Full(m) if m.contains("pool \"atlas\" is full: all 2")),
            "{e:?}"
        );
        // Release frees the lowest index again.
        b.release("atlas001").unwrap();
        let (c, _) = b.map("/DC=org/CN=C", &prod, 50, root_user).unwrap();
        assert_eq!(c.account, "atlas001");
        // Expiry: atlas002 used at 30, idle limit 100.
        assert!(b.expired(120).is_empty());
        assert_eq!(b.expired(131), vec!["atlas002"]);
    }

    #[test]
    fn static_and_unmapped() {
        let d = tempfile::tempdir().unwrap();
        let mut b = book(d.path());
        let (s, _) = b.map("/DC=org/CN=Static", &[], 1, root_user).unwrap();
        assert_eq!(
            (s.account.as_str(), s.pool.as_deref(), s.uid),
            ("root", None, 0)
        );
        let e = b
            .map("/DC=org/CN=Nobody", &["/lhcb".into()], 1, root_user)
            .unwrap_err();
        assert!(
            matches!(&e, MapError::NotFound(m) if m.contains("or fqan \"/lhcb\"")),
            "{e:?}"
        );
        let e = b.map("/DC=org/CN=a\"b", &[], 1, root_user).unwrap_err();
        assert!(
            matches!(&e, MapError::Invalid(m) if m.starts_with("dn: invalid DN")),
            "{e:?}"
        );
        let e = b
            .map("/DC=org/CN=x", &["atlas".into()], 1, root_user)
            .unwrap_err();
        assert!(
            matches!(&e, MapError::Invalid(m) if m.starts_with("fqan: invalid FQAN")),
            "{e:?}"
        );
    }

    #[test]
    fn publishes_nss_files() {
        let d = tempfile::tempdir().unwrap();
        let mut b = book(d.path());
        b.map(
            "/DC=org/CN=A",
            &["/atlas/Role=production".into()],
            1,
            root_user,
        )
        .unwrap();
        b.map("/DC=org/CN=B", &["/cms/higgs".into()], 1, root_user)
            .unwrap();
        b.publish(|_| None).unwrap();
        let passwd = std::fs::read_to_string(d.path().join("nss/passwd")).unwrap();
        assert_eq!(
            passwd,
            format!(
                "atlas001:*:20001:20000:DMS pool atlas:{}/home/atlas001:/bin/bash\ncms001:*:30001:30000:DMS pool cms:/home/cms001:/bin/bash\n",
                d.path().display()
            )
        );
        let group = std::fs::read_to_string(d.path().join("nss/group")).unwrap();
        assert_eq!(
            group,
            "atlas:*:20000:\natlasprd:*:21000:atlas001\ncms:*:30000:\n"
        );
    }

    /// Policy rules beside [`GRID`]: pools `atlas` and `cms` exist, `atlasprd` is a group.
    const POLICY: &str = r#"[vo.atlas]
map = [
  { fqan = "/atlas/Role=production", pool = "cms" },
  { fqan = "/atlas/Role=pilot", pool = "cms" },
  { dn = "/DC=org/CN=Policy", account = "root" },
  { dn = "/DC=org/CN=Gone", account = "gone" },
]
group_map = [
  { fqan = "/atlas/Role=pilot", group = "pilots" },
  { fqan = "/atlas/Role=production", group = "prod2" },
]
[vo.lhcb]
map = [ { fqan = "/lhcb/*", pool = "atlas" } ]
"#;

    fn policies(text: &str) -> PolicySet {
        PolicySet::parse_str(Path::new("p.toml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn book_with_policies(d: &Path) -> AccountBook {
        let mut b = book(d);
        b.set_policies(&policies(POLICY)).unwrap();
        assert_eq!(b.policy_maps().len(), 5);
        b
    }

    fn account(
        b: &mut AccountBook,
        dn: &str,
        fqans: &[&str],
    ) -> Result<(String, Vec<String>), MapError> {
        let fqans: Vec<String> = fqans.iter().map(|f| f.to_string()).collect();
        let (l, _) = b.map(dn, &fqans, 1, root_user)?;
        Ok((l.account, l.groups))
    }

    #[test]
    fn policy_rules_map_what_the_grid_mapfile_does_not() {
        let d = tempfile::tempdir().unwrap();
        // Without policy rules, neither identity maps.
        let mut plain = book(d.path());
        let e = account(&mut plain, "/DC=org/CN=P", &["/atlas/Role=pilot"]).unwrap_err();
        assert!(
            matches!(&e, MapError::NotFound(m) if m.contains("or the policy files' map rules")),
            "{e:?}"
        );
        assert!(account(&mut plain, "/DC=org/CN=Policy", &[]).is_err());

        let mut b = book_with_policies(d.path());
        // A pool by FQAN, with the policy's group.
        assert_eq!(
            account(&mut b, "/DC=org/CN=P", &["/atlas/Role=pilot"]).unwrap(),
            ("cms001".into(), vec!["pilots".into()])
        );
        // A static account by DN.
        assert_eq!(
            account(&mut b, "/DC=org/CN=Policy", &[]).unwrap(),
            ("root".into(), vec![])
        );
        // A /lhcb/* prefix rule.
        assert_eq!(
            account(&mut b, "/DC=org/CN=L", &["/lhcb/x/Role=y"])
                .unwrap()
                .0,
            "atlas001"
        );
        // Group rules add to the group-mapfile's: its atlasprd first, then the
        // policy's, per FQAN, without duplicates.
        assert_eq!(
            account(
                &mut b,
                "/DC=org/CN=G",
                &[
                    "/atlas/Role=production",
                    "/atlas/Role=pilot",
                    "/atlas/Role=pilot"
                ]
            )
            .unwrap()
            .1,
            vec!["atlasprd", "prod2", "pilots"]
        );
        // A static account that does not exist names the rule that mapped it.
        let e = account(&mut b, "/DC=org/CN=Gone", &[]).unwrap_err();
        assert!(
            matches!(&e, MapError::NotFound(m) if m == "gone (mapped by policy rule p.toml:6:3: vo.atlas.map[3])"),
            "{e:?}"
        );
    }

    #[test]
    fn the_grid_mapfile_wins_when_both_match() {
        let d = tempfile::tempdir().unwrap();
        let mut b = book_with_policies(d.path());
        // Both map /atlas/Role=production: the grid-mapfile's .atlas, not the policy's cms.
        assert_eq!(
            account(&mut b, "/DC=org/CN=A", &["/atlas/Role=production"])
                .unwrap()
                .0,
            "atlas001"
        );
        // Even the grid-mapfile's DN line comes before a policy FQAN rule.
        assert_eq!(
            account(&mut b, "/DC=org/CN=Static", &["/atlas/Role=pilot"])
                .unwrap()
                .0,
            "root"
        );
        // Where the grid-mapfile has nothing for the FQAN or the DN, the policy applies.
        assert_eq!(
            account(&mut b, "/DC=org/CN=B", &["/atlas/Role=pilot"])
                .unwrap()
                .0,
            "cms001"
        );
    }

    #[test]
    fn policy_rules_try_the_primary_fqan_before_the_dn() {
        let d = tempfile::tempdir().unwrap();
        let mut b = book_with_policies(d.path());
        let dn = "/DC=org/CN=Policy";
        // The DN has a static rule, but the primary FQAN matches a pool rule.
        assert_eq!(account(&mut b, dn, &["/lhcb"]).unwrap().0, "atlas001");
        // A primary FQAN no rule matches falls back to the DN.
        assert_eq!(account(&mut b, dn, &["/dteam"]).unwrap().0, "root");
        // Only the primary FQAN is tried, not the others.
        assert_eq!(account(&mut b, dn, &["/dteam", "/lhcb"]).unwrap().0, "root");
        assert!(account(&mut b, "/DC=org/CN=X", &["/dteam", "/lhcb"]).is_err());
    }

    #[test]
    fn a_rule_naming_a_missing_pool_is_rejected() {
        let d = tempfile::tempdir().unwrap();
        let mut b = book_with_policies(d.path());
        let bad = "[vo.atlas]\nmap = [\n  { fqan = \"/atlas/*\", pool = \"atlasx\" },\n  \
                   { dn = \"/CN=x\", pool = \"cms\" },\n  { dn = \"/CN=y\", pool = \"nope\" },\n]\n";
        let e = b.set_policies(&policies(bad)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.toml:3:31: vo.atlas.map[0].pool = \"atlasx\": no pool \"atlasx\" in dmsd's configuration; add [accounts.pools.atlasx] or name a configured pool (configured: atlas, cms)\n\
             p.toml:5:26: vo.atlas.map[2].pool = \"nope\": no pool \"nope\" in dmsd's configuration; add [accounts.pools.nope] or name a configured pool (configured: atlas, cms)"
        );
        // The previous rules stay in force.
        assert_eq!(b.policy_maps().len(), 5);
        assert_eq!(
            account(&mut b, "/DC=org/CN=P", &["/atlas/Role=pilot"])
                .unwrap()
                .0,
            "cms001"
        );
        // Static accounts are not checked at load: they are resolved when mapped.
        b.set_policies(&policies(
            "[vo.atlas]\nmap = [ { dn = \"/CN=x\", account = \"nobody-here\" } ]\n",
        ))
        .unwrap();
        assert_eq!(b.policy_maps().len(), 1);
    }

    #[test]
    fn dmsd_refuses_policies_naming_a_missing_pool() {
        use std::sync::Arc;
        use std::time::Duration;

        use crate::service::StartError;
        use crate::usage::tests::{start, FakeBackend};

        let d = tempfile::tempdir().unwrap();
        let fake = || Arc::new(FakeBackend::default());
        let good = "[vo.atlas]\nmemory = { limit = \"64M\" }\nmap = [ { fqan = \"/atlas/*\", pool = \"atlas\" } ]\n";
        let bad = "[vo.atlas]\nmemory = { limit = \"128M\" }\nmap = [ { fqan = \"/atlas/*\", pool = \"atlass\" } ]\n";
        // At start: the daemon does not start, and says why.
        let state = d.path().join("s1");
        let e = start(
            &state,
            fake(),
            Duration::from_secs(1),
            bad,
            config(d.path()),
        )
        .unwrap_err();
        assert!(matches!(&e, StartError::Policies { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("t.toml:3:37: vo.atlas.map[0].pool = \"atlass\": no pool \"atlass\""),
            "{e}"
        );
        // On reload: an error, and the previous policies and rules stay in force.
        let state = d.path().join("s2");
        let svc = start(
            &state,
            fake(),
            Duration::from_secs(1),
            good,
            config(d.path()),
        )
        .unwrap();
        std::fs::write(state.join("policies/t.toml"), bad).unwrap();
        let e = svc.reload_policies().unwrap_err();
        assert!(
            e.message
                .starts_with("policy reload failed; the previous policies stay in force:\n")
                && e.message
                    .contains("no pool \"atlass\" in dmsd's configuration"),
            "{}",
            e.message
        );
        let memory = |svc: &crate::service::Service| {
            let set = svc.policies.read().0.clone();
            set.resolve("atlas", None)
                .unwrap()
                .quotas
                .memory
                .limit_bytes
        };
        assert_eq!(memory(&svc), Some(64 << 20));
        assert_eq!(svc.accounts.lock().policy_maps().len(), 1);
        // Fixed, the reload goes through.
        std::fs::write(state.join("policies/t.toml"), bad.replace("atlass", "cms")).unwrap();
        svc.reload_policies().unwrap();
        assert_eq!(memory(&svc), Some(128 << 20));
    }

    #[test]
    fn config_errors_name_the_key() {
        let d = tempfile::tempdir().unwrap();
        let mut c = config(d.path());
        c.banned_vos = vec!["bad/vo".into()];
        assert!(c.finish().unwrap_err().contains("accounts.banned_vos"));
        let mut c = config(d.path());
        c.groups.insert("atlas".into(), 20001);
        let e = c.finish().unwrap_err();
        assert!(e.contains("differs from pool \"atlas\""), "{e}");
    }
}
