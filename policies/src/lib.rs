//! VO policy files and grid identities for DMS.
//!
//! Site admins describe, per VO, how members' work is confined: domain
//! granularity, backend, cgroup quotas, priority, owner permissions, idle
//! handling, what to do when a domain hits a limit ([`MonitorPolicy`]) and the
//! isolation of container domains (network, directories, user namespace),
//! with group and role rules (matched on VOMS FQANs) overriding the VO
//! defaults. A VO table may also map identities to local accounts and groups
//! (`map`, `group_map`: the grid-mapfile and group-mapfile rules, see
//! [`mapping`]).
//! [`PolicySet`] loads and validates those TOML files, reporting every
//! problem with its file, line and column, and [`PolicySet::resolve`] gives
//! the effective [`ResolvedRule`] for an identity.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod error;
pub mod identity;
pub mod mapping;
pub mod model;
mod policy;
mod raw;
pub mod units;

pub use error::{PolicyError, PolicyErrors, ResolveError};
pub use identity::{validate_dn, validate_name, DnError, Fqan, FqanError, NameError};
pub use mapping::{GroupMapRule, MapPattern, MapRule, MapTarget, Origin};
pub use model::{
    BackendKind, CpuQuota, CpuSet, Granularity, IdleAction, IdlePolicy, IoThrottle, Isolation,
    LimitAction, LimitKind, MemoryQuota, MonitorPolicy, NetworkMode, NetworkPolicy, PathPolicy,
    Permission, PortForward, Priority, Proto, Quotas, ResolvedRule, Shaper, UnknownVariant,
};
pub use policy::PolicySet;

#[cfg(test)]
mod tests;
