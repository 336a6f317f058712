//! The Account Mapping Service: grid identities to local accounts, with leased pool accounts
//! kept in the state database and published for `libnss_dms.so.2`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use dms_accounts::nssfile::{self, GroupEntry, PasswdEntry};
use dms_accounts::{validate_dn, validate_pools, GroupMapFile, MapFile, PoolConfig, Target};
use dms_policies::{validate_name, Fqan};

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
    /// The pool, or None for a static grid-mapfile account.
    pub pool: Option<String>,
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Certificate subject.
    pub dn: String,
    /// FQANs, primary first (canonical form).
    pub fqans: Vec<String>,
    /// Secondary local groups, from the group-mapfile.
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

/// Leases, mapfiles and pools.
#[derive(Debug)]
pub struct AccountBook {
    trust: Option<std::sync::Arc<dms_proxy::TrustStore>>,
    cfg: AccountsConfig,
    gridmap: MapFile,
    groupmap: GroupMapFile,
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

impl AccountBook {
    /// Reads the mapfiles; `leases` come from the store.
    pub fn new(cfg: AccountsConfig, leases: Vec<Lease>) -> Result<AccountBook, String> {
        let gridmap = MapFile::load(&cfg.grid_mapfile).map_err(|e| e.to_string())?;
        let groupmap = GroupMapFile::load(&cfg.group_mapfile).map_err(|e| e.to_string())?;
        Ok(AccountBook {
            trust: None,
            cfg,
            gridmap,
            groupmap,
            leases: leases.into_iter().map(|l| (l.account.clone(), l)).collect(),
        })
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

    /// The CA and VOMS trust store, read at first use and again after a reload.
    pub fn trust(&mut self) -> Result<std::sync::Arc<dms_proxy::TrustStore>, String> {
        if let Some(t) = &self.trust {
            return Ok(std::sync::Arc::clone(t));
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
        let t = std::sync::Arc::new(t);
        self.trust = Some(std::sync::Arc::clone(&t));
        Ok(t)
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
        let target = self
            .gridmap
            .lookup(dn, parsed.first())
            .cloned()
            .ok_or_else(|| {
                MapError::NotFound(format!(
                    "no mapping for dn {dn:?}{} in {}",
                    match canonical.first() {
                        Some(f) => format!(" or fqan {f:?}"),
                        None => String::new(),
                    },
                    self.cfg.grid_mapfile.display()
                ))
            })?;
        let groups = self.groupmap.groups(&parsed);
        let lease = match target {
            Target::Account(account) => {
                let (uid, gid) = static_user(&account)?;
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
                        "{} maps to pool .{pool_name} but dmsd's configuration has no [accounts.pools.{pool_name}]",
                        self.cfg.grid_mapfile.display()
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
                        tracing::warn!(group = g, "group-mapfile names a group that exists nowhere; membership not published");
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
