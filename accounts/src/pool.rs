//! Pools of leased accounts (`atlas001` … `atlas100`), as the site configures them.

use serde::{Deserialize, Serialize};

use dms_policies::validate_name;

/// Lowest uid a pool may use: below are system accounts.
pub const MIN_POOL_ID: u32 = 1000;
/// Largest pool.
pub const MAX_POOL_SIZE: u32 = 1_000_000;

/// One pool, from the `[accounts.pools.NAME]` table of dmsd's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The pool's name (the table key; mapfiles say `.NAME`).
    #[serde(skip)]
    pub name: String,
    /// Account name prefix (default: the pool name).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Number of accounts.
    pub size: u32,
    /// uid of the first account; account `i` (1-based) gets `uid_min + i - 1`.
    pub uid_min: u32,
    /// gid of the pool's primary group.
    pub gid: u32,
    /// Name of the pool's primary group (default: the pool name).
    #[serde(default)]
    pub group: Option<String>,
    /// VO of the pool's accounts when the identity carries no FQAN (default: the pool name).
    #[serde(default)]
    pub vo: Option<String>,
    /// Home directory; `{account}` is replaced by the account name.
    #[serde(default = "default_home")]
    pub home: String,
    /// Login shell.
    #[serde(default = "default_shell")]
    pub shell: String,
    /// Create the home directory (owner-only) when an account is leased.
    #[serde(default = "yes")]
    pub create_home: bool,
    /// Remove the home directory when the lease ends (released or expired), so that the next
    /// identity given the account does not inherit the previous one's files. Only applies to
    /// homes DMS creates (`create_home`) whose path names the account (`{account}`).
    #[serde(default = "yes")]
    pub clean_home: bool,
    /// A lease unused for this long (no session, no domain, no map) is released; 0 = never.
    #[serde(default = "default_idle")]
    pub lease_idle_secs: u64,
}

fn default_home() -> String {
    "/home/{account}".into()
}
fn default_shell() -> String {
    "/bin/bash".into()
}
fn yes() -> bool {
    true
}
fn default_idle() -> u64 {
    30 * 86_400
}

/// A pool definition is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("accounts.pools.{pool}.{field}: {reason}")]
pub struct PoolError {
    /// The pool.
    pub pool: String,
    /// The key.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl PoolConfig {
    /// The account name prefix.
    pub fn prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or(&self.name)
    }

    /// The primary group's name.
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or(&self.name)
    }

    /// The VO for identities without an FQAN.
    pub fn vo(&self) -> &str {
        self.vo.as_deref().unwrap_or(&self.name)
    }

    fn width(&self) -> usize {
        self.size.to_string().len().max(3)
    }

    /// Name of account `index` (1-based): prefix + zero-padded number.
    pub fn account(&self, index: u32) -> String {
        format!("{}{:0w$}", self.prefix(), index, w = self.width())
    }

    /// uid of account `index`.
    pub fn uid(&self, index: u32) -> u32 {
        self.uid_min + index - 1
    }

    /// The index of an account name of this pool.
    pub fn index_of(&self, account: &str) -> Option<u32> {
        let digits = account.strip_prefix(self.prefix())?;
        if digits.len() != self.width() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().filter(|i| (1..=self.size).contains(i))
    }

    /// The home directory of an account.
    pub fn home_of(&self, account: &str) -> String {
        self.home.replace("{account}", account)
    }

    /// Whether an account's home is removed when its lease ends: only a home DMS creates and
    /// that is the account's own (a `home` without `{account}` is shared by the whole pool).
    pub fn cleans_home(&self) -> bool {
        self.clean_home && self.create_home && self.home.contains("{account}")
    }

    /// Checks one pool on its own.
    pub fn validate(&self) -> Result<(), PoolError> {
        let fail = |field, reason: String| {
            Err(PoolError {
                pool: self.name.clone(),
                field,
                reason,
            })
        };
        if let Err(e) = validate_name("pool name", &self.name) {
            return fail("name", e.to_string());
        }
        if let Err(e) = validate_name("prefix", self.prefix()) {
            return fail("prefix", e.to_string());
        }
        if let Err(e) = validate_name("group", self.group()) {
            return fail("group", e.to_string());
        }
        if let Err(e) = validate_name("vo", self.vo()) {
            return fail("vo", e.to_string());
        }
        if self.size == 0 || self.size > MAX_POOL_SIZE {
            return fail(
                "size",
                format!("{} is not in 1..={MAX_POOL_SIZE}", self.size),
            );
        }
        if self.uid_min < MIN_POOL_ID {
            return fail(
                "uid_min",
                format!("{} is below {MIN_POOL_ID} (system accounts)", self.uid_min),
            );
        }
        if self
            .uid_min
            .checked_add(self.size)
            .is_none_or(|end| end > u32::MAX - 2)
        {
            return fail("uid_min", format!("{} + size overflows", self.uid_min));
        }
        if self.gid < MIN_POOL_ID {
            return fail("gid", format!("{} is below {MIN_POOL_ID}", self.gid));
        }
        if self.prefix().len() + self.width() > 32 {
            return fail("prefix", "account names would exceed 32 characters".into());
        }
        for (field, v) in [("home", &self.home), ("shell", &self.shell)] {
            if !v.starts_with('/') || v.chars().any(|c| c == ':' || c.is_control()) {
                return fail(
                    field,
                    format!("{v:?} must be an absolute path without ':' or control characters"),
                );
            }
        }
        Ok(())
    }
}

/// Checks a set of pools: each alone, then that uid ranges and prefixes do not overlap.
pub fn validate_pools(pools: &[PoolConfig]) -> Result<(), PoolError> {
    for p in pools {
        p.validate()?;
    }
    for (i, a) in pools.iter().enumerate() {
        for b in &pools[i + 1..] {
            let (a0, a1) = (a.uid_min, a.uid_min + a.size);
            let (b0, b1) = (b.uid_min, b.uid_min + b.size);
            if a0 < b1 && b0 < a1 {
                return Err(PoolError {
                    pool: b.name.clone(),
                    field: "uid_min",
                    reason: format!("uids {b0}..{b1} overlap pool {:?} ({a0}..{a1})", a.name),
                });
            }
            if a.prefix() == b.prefix() {
                return Err(PoolError {
                    pool: b.name.clone(),
                    field: "prefix",
                    reason: format!("{:?} is also the prefix of pool {:?}", b.prefix(), a.name),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, size: u32, uid_min: u32) -> PoolConfig {
        PoolConfig {
            name: name.into(),
            prefix: None,
            size,
            uid_min,
            gid: 20000,
            group: None,
            vo: None,
            home: default_home(),
            shell: default_shell(),
            create_home: true,
            clean_home: true,
            lease_idle_secs: 0,
        }
    }

    #[test]
    fn only_an_accounts_own_created_home_is_cleaned() {
        let mut p = pool("atlas", 5, 20001);
        assert!(p.cleans_home());
        p.home = "/home/shared".into();
        assert!(
            !p.cleans_home(),
            "a home shared by the pool is never removed"
        );
        p.home = default_home();
        p.create_home = false;
        assert!(!p.cleans_home(), "a home DMS did not create is the site's");
        p.create_home = true;
        p.clean_home = false;
        assert!(!p.cleans_home());
    }

    #[test]
    fn names_and_uids() {
        let p = pool("atlas", 50, 20001);
        assert_eq!(p.account(1), "atlas001");
        assert_eq!(p.account(50), "atlas050");
        assert_eq!(p.uid(1), 20001);
        assert_eq!(p.index_of("atlas007"), Some(7));
        assert_eq!(p.index_of("atlas051"), None);
        assert_eq!(p.index_of("atlas07"), None);
        assert_eq!(p.index_of("cms001"), None);
        assert_eq!(p.home_of("atlas001"), "/home/atlas001");
        let big = pool("cms", 10_000, 30000);
        assert_eq!(big.account(7), "cms00007");
        assert_eq!(big.index_of("cms10000"), Some(10_000));
    }

    #[test]
    fn validation() {
        validate_pools(&[pool("atlas", 50, 20001), pool("cms", 50, 20051)]).unwrap();
        let e = validate_pools(&[pool("atlas", 50, 20001), pool("cms", 50, 20050)]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("accounts.pools.cms.uid_min: uids"),
            "{e}"
        );
        let e = pool("x", 0, 20000).validate().unwrap_err();
        assert_eq!(e.field, "size");
        let e = pool("x", 5, 500).validate().unwrap_err();
        assert!(e.to_string().contains("below 1000"), "{e}");
        let mut p = pool("x", 5, 20000);
        p.home = "relative".into();
        assert_eq!(p.validate().unwrap_err().field, "home");
    }
}
