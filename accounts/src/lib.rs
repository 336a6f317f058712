//! Mapping grid identities (certificate DNs and VOMS FQANs) to local accounts.
//!
//! Mechanism only: parsing grid-mapfiles and group-mapfiles (the LCMAPS / gridmapdir
//! conventions), naming pool accounts, and writing the passwd/group files that
//! `libnss_dms.so.2` reads. The lease store and the decisions live in dmsd.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod dn;
pub mod mapfile;
pub mod nssfile;
pub mod pool;

pub use dn::{validate_dn, DnError};
pub use mapfile::{GroupMapFile, MapFile, MapFileError, Pattern, Target};
pub use nssfile::{GroupEntry, NssFileError, PasswdEntry};
pub use pool::{validate_pools, PoolConfig, PoolError};
