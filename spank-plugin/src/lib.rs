//! `spank_dms.so`: a Slurm SPANK plugin that runs every task of a job step inside the job
//! user's DMS domain: its cgroups (quotas, accounting) **and** its namespaces (mount with the
//! private `/tmp`, `/dev/shm` and `/proc`, pid, uts, ipc, net, cgroup).
//!
//! `pam_dms.so` cannot do this for Slurm: slurmstepd opens the PAM session itself, and a
//! multi-threaded process can only join cgroups, not a mount namespace. SPANK's
//! `slurm_spank_task_init_privileged` runs, as root, in the task's own process, which
//! slurmstepd has just forked (so it is single-threaded) and which has not dropped its
//! privileges or exec'd the user's program yet; there the plugin:
//!
//! 1. asks dmsd on its session socket for a session of the job user (`open`, service
//!    `slurm-task`, the job id, this process's pid; `docs/pam-protocol.md`): dmsd finds or
//!    creates the domain per policy (per VO, user or job), thaws it, checks the VO is allowed,
//!    and answers with the join target. The session holds the domain in use until the task
//!    ends (dmsd ends it when the process is gone), so an idle action never hits a running task;
//! 2. moves the process into the domain's cgroups and namespaces (`dms_join::join`);
//! 3. forks, because entering a pid namespace applies to children only: the child returns to
//!    Slurm and becomes the task (pid namespace included, so `ps -e` lists the domain's
//!    processes and `/proc/self` works), the parent stays behind as its stand-in: the pid
//!    slurmstepd knows, waits for and signals. It keeps no fd, blocks the signals it can, and
//!    ends like the task (same exit code, or the same signal).
//!
//! Users without a grid identity (dmsd's `unmanaged = "allow"`) and guests (libvirt domains)
//! are left on the host, as with PAM.
//!
//! # Options (after the path in `plugstack.conf`)
//!
//! - `socket=PATH`: dmsd's session socket (default `/run/dms/pam.sock`).
//! - `timeout=SECONDS`: deadline of each call to dmsd, 0.1 to 300 (default 5).
//! - `on_error=deny|allow`: when dmsd cannot be asked, answers an error, or joining fails before
//!   the namespaces are entered: `deny` (default) fails the task, `allow` runs it where it is
//!   (on the host, or in the domain's cgroups only when `pam_dms.so` put slurmstepd there) and
//!   logs why. A policy refusal (`PermissionDenied`), a bad option and a failure after the
//!   namespaces were entered always fail the task.
//! - `debug`: log every request and answer, and how the task joined (slurmd's log).
//!
//! A failure fails the task only when the plugin is `required` in `plugstack.conf`: Slurm
//! ignores what an `optional` plugin returns.
//!
//! # Slurm
//!
//! Built for one Slurm release (major.minor; see [`version`] and `build.rs`): Slurm refuses a
//! SPANK plugin of another release. Only `slurm_spank_task_init_privileged` is defined, so
//! srun and sbatch load the plugin and never call it. The step's signals reach the task as
//! long as the process tracking plugin signals every process of the step
//! (`ProctrackType=proctrack/linuxproc`); `proctrack/pgid` would signal only the stand-in, and
//! `proctrack/cgroup` moves tasks into Slurm's own cgroups.
//!
//! # Inside slurmstepd
//!
//! The entry point catches panics (a panic fails the task, or lets it run with
//! `on_error=allow` when nothing was entered yet); no thread, no fd kept, every call to dmsd
//! ends within `timeout`; Slurm's functions are looked up at run time ([`slurm`]).

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_uint};
use std::panic::{catch_unwind, AssertUnwindSafe};

use dms_session_client::options::{c_arguments, OnError};

pub mod options;
pub mod slurm;
pub mod task;
pub mod version;

include!(concat!(env!("OUT_DIR"), "/slurm_version.rs"));

/// `plugin_name`: the plugin's name in Slurm's messages.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static plugin_name: [u8; 4] = *b"dms\0";

/// `plugin_type`: a SPANK plugin.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static plugin_type: [u8; 6] = *b"spank\0";

/// `plugin_version`: `SLURM_VERSION_NUMBER` of the Slurm the plugin is built for; Slurm
/// compares major and minor release with its own.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static plugin_version: c_uint = SLURM_VERSION_NUMBER;

/// `spank_plugin_version`: the plugin's own version (as `SPANK_PLUGIN(name, 1)` sets it).
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static spank_plugin_version: c_uint = 1;

/// `ESPANK_SUCCESS`.
const SUCCESS: c_int = 0;
/// Any other value fails the callback (and the task, for a `required` plugin).
const FAILURE: c_int = -1;

/// Runs the task in the job user's domain. Called by slurmstepd in each task's process, as
/// root, before it drops privileges and execs the task.
///
/// # Safety
///
/// Called by Slurm with its handle and the plugin arguments of the `plugstack.conf` line
/// (`ac` strings in `av`).
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_task_init_privileged(
    spank: slurm::Spank,
    ac: c_int,
    av: *mut *mut c_char,
) -> c_int {
    // Set while a panic may still let the task through (on_error=allow, nothing entered yet).
    let allow = Cell::new(false);
    // SAFETY: as this function's contract.
    let r = catch_unwind(AssertUnwindSafe(|| unsafe {
        task_init(spank, ac, av, &allow)
    }));
    match r {
        Ok(rc) => rc,
        Err(payload) => {
            let what = dms_session_client::panic_message(payload);
            let allowed = allow.get();
            let _ = catch_unwind(|| {
                slurm::log(
                    slurm::Level::Error,
                    &format!(
                        "internal error (panic: {what}); {}",
                        if allowed {
                            "the task runs outside its domain (on_error=allow)"
                        } else {
                            "failing the task"
                        }
                    ),
                )
            });
            if allowed {
                SUCCESS
            } else {
                FAILURE
            }
        }
    }
}

/// # Safety
///
/// As [`slurm_spank_task_init_privileged`].
unsafe fn task_init(
    spank: slurm::Spank,
    ac: c_int,
    av: *mut *mut c_char,
    allow: &Cell<bool>,
) -> c_int {
    use slurm::Level::{Error, Info};
    use task::{Failure, Outcome};

    // SAFETY: ac/av as Slurm passes them.
    let opts = match unsafe { c_arguments(ac, av.cast_const().cast()) } {
        None => Err("Slurm passed a NULL plugin argument".to_string()),
        Some(a) => options::parse_bytes(&a).map_err(|e| e.to_string()),
    };
    let opts = match opts {
        Ok(o) => o,
        Err(e) => {
            slurm::log(Error, &format!("bad options in plugstack.conf: {e}"));
            return FAILURE;
        }
    };
    allow.set(opts.on_error == OnError::Allow);
    // SAFETY: the handle of this callback.
    let job = match unsafe { task::Job::from_slurm(spank) } {
        Ok(j) => j,
        Err(Failure::Invalid(m) | Failure::Refused(m) | Failure::Error(m) | Failure::Fatal(m)) => {
            slurm::log(Error, &m);
            return FAILURE;
        }
    };
    let t = task::Task {
        opts: &opts,
        job: &job,
    };
    match t.run(|| allow.set(false)) {
        Ok(Outcome::Joined { domain, session }) => {
            if opts.debug {
                slurm::log(
                    Info,
                    &t.about(&format!("runs in domain {domain} (session {session})")),
                );
            }
            SUCCESS
        }
        Ok(Outcome::Unmanaged(why)) => {
            slurm::log(Info, &t.about(&format!("task left alone: {why}")));
            SUCCESS
        }
        Ok(Outcome::Guest(domain)) => {
            slurm::log(
                Info,
                &t.about(&format!(
                    "domain {domain} is a guest; the task stays on the host"
                )),
            );
            SUCCESS
        }
        Err(Failure::Error(m)) if opts.on_error == OnError::Allow => {
            slurm::log(
                Error,
                &t.about(&format!(
                    "{m}; the task runs outside its domain (on_error=allow)"
                )),
            );
            SUCCESS
        }
        Err(Failure::Invalid(m) | Failure::Refused(m) | Failure::Error(m) | Failure::Fatal(m)) => {
            slurm::log(Error, &t.about(&m));
            FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_symbols_slurm_reads() {
        assert_eq!(
            std::ffi::CStr::from_bytes_with_nul(&plugin_name).unwrap(),
            c"dms"
        );
        assert_eq!(
            std::ffi::CStr::from_bytes_with_nul(&plugin_type).unwrap(),
            c"spank"
        );
        assert_eq!(plugin_version, SLURM_VERSION_NUMBER);
        if let Ok(h) = std::fs::read_to_string("/usr/include/slurm/slurm_version.h") {
            if std::env::var_os("DMS_SLURM_VERSION").is_none() {
                assert_eq!(Some(plugin_version), version::from_header(&h));
            }
        }
    }

    #[test]
    fn bad_options_fail_before_anything_else() {
        let argv = [c"on_error=maybe".as_ptr().cast_mut()];
        // SAFETY: one valid argument; the handle is never used (options fail first).
        let rc = unsafe {
            slurm_spank_task_init_privileged(std::ptr::null_mut(), 1, argv.as_ptr().cast_mut())
        };
        assert_eq!(rc, FAILURE);
    }

    #[test]
    fn outside_slurm_the_job_cannot_be_read() {
        // No spank_get_item in a test binary: an error, not a crash; even with on_error=allow.
        let argv = [c"on_error=allow".as_ptr().cast_mut()];
        // SAFETY: one valid argument; spank_get_item is missing, so the handle is not used.
        let rc = unsafe {
            slurm_spank_task_init_privileged(std::ptr::null_mut(), 1, argv.as_ptr().cast_mut())
        };
        assert_eq!(rc, FAILURE);
    }

    #[test]
    fn versions_parse() {
        use version::*;
        assert_eq!(number(22, 5, 8), Some(0x160508));
        assert_eq!(number(256, 0, 0), None);
        assert_eq!(display(0x160508), "22.05.8");
        let h = "#ifndef _SLURM_VERSION_H_\n#define SLURM_VERSION_NUMBER 0x160508\n#define SLURM_VERSION_NUM(a,b,c) (((a) << 16) + ((b) << 8) + (c))\n";
        assert_eq!(from_header(h), Some(0x160508));
        assert_eq!(from_header("#define SLURM_VERSION_NUMBER 22"), None);
        assert_eq!(from_header(""), None);
        assert_eq!(from_release("22.05"), Some(0x160500));
        assert_eq!(from_release("22.05.8"), Some(0x160508));
        assert_eq!(from_release("0x170b04"), Some(0x170b04));
        assert_eq!(from_release("slurm-wlm 22.05.8\n"), Some(0x160508));
        assert_eq!(from_release("slurm 23.02.7-1"), Some(0x170207));
        assert_eq!(from_release("22.05.8-4+deb12u3"), Some(0x160508));
        for bad in [
            "",
            "22",
            "22.x",
            "slurm-wlm",
            "1000.1",
            "22.05.x",
            "0x1000000",
            "v22.05",
        ] {
            assert_eq!(from_release(bad), None, "{bad}");
        }
    }
}
