//! The client side of dmsd's session socket (`docs/pam-protocol.md`): one JSON request line,
//! one JSON answer line, one connection per request, every call within one deadline.
//!
//! Shared by the modules DMS loads into other programs: `pam_dms.so` (sshd, su, runuser,
//! slurmstepd) and the Slurm SPANK plugin `spank_dms.so` (slurmstepd's task processes). Like
//! them it has no thread, no runtime and keeps no fd after a call.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod client;
pub mod options;
pub mod protocol;
pub mod transport;
