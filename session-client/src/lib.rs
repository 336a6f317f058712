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

/// The message of a panic caught at a module's C entry point. The payload is dropped here,
/// where a panic from its own `Drop` is contained too: nothing may unwind into the host
/// program (sshd, su, slurmstepd).
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(payload)))
        .map_err(std::mem::forget);
    what
}

#[cfg(test)]
mod tests {
    #[test]
    fn panic_messages_of_str_string_and_other_payloads() {
        let caught = |f: fn()| super::panic_message(std::panic::catch_unwind(f).unwrap_err());
        assert_eq!(caught(|| panic!("static")), "static");
        assert_eq!(caught(|| panic!("{}", 7)), "7");
        assert_eq!(caught(|| std::panic::panic_any(42_u8)), "no message");
    }
}
