//! Certificate subject names in the OpenSSL "slash" form grid-mapfiles use.
//!
//! The validator lives in `dms_policies::identity` (policy files map DNs too, and that crate
//! cannot depend on this one); it is re-exported here so both parsers use the same check.

pub use dms_policies::identity::{looks_like_dn, validate_dn, DnError, MAX_DN_LEN};
