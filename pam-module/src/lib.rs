//! `pam_dms.so`: puts PAM sessions into DMS domains.
//!
//! Loaded into sshd, su, runuser or slurmstepd, the module asks dmsd over its session socket
//! (`docs/pam-protocol.md`: one JSON line per request, one connection per request) whether a
//! user may log in (`account`), and when a session opens (`session`) for the user's domain,
//! then moves the calling process into it before the user's shell or job starts: the domain's
//! cgroups (limits, accounting) and, for single-threaded callers, its namespaces. Children
//! started afterwards (the shell) inherit both; the domain's pid namespace applies to them.
//!
//! | PAM function | What it does | Result |
//! |---|---|---|
//! | `pam_sm_acct_mgmt` | `account` request | `PAM_SUCCESS`; `PAM_PERM_DENIED` when dmsd says `PermissionDenied` or `NotFound` (always), or on any other error (unless `on_error=allow`) |
//! | `pam_sm_open_session` | `open` request, then join the domain | `PAM_SUCCESS`; `PAM_PERM_DENIED` for `PermissionDenied` (always); `PAM_SESSION_ERR` on errors (unless `on_error=allow`) |
//! | `pam_sm_close_session` | `close` request | `PAM_SUCCESS`; `PAM_SESSION_ERR` on errors (unless `on_error=allow`) |
//! | `pam_sm_authenticate`, `pam_sm_setcred`, `pam_sm_chauthtok` | nothing | `PAM_IGNORE` |
//!
//! # Options
//!
//! Words after the module path in the pam.d line:
//!
//! - `socket=PATH`: dmsd's session socket, an absolute path (default `/run/dms/pam.sock`).
//! - `timeout=SECONDS`: one deadline for each call to dmsd, connect included; decimals allowed,
//!   0.1 to 300 (default 5).
//! - `on_error=deny|allow`: what happens when dmsd cannot be asked (not running, timeout), answers
//!   an error other than a refusal, or the session cannot join its domain. `deny` (the default)
//!   fails closed: the login is refused. `allow` lets the login through outside any domain and
//!   logs why. A refusal by policy (`PermissionDenied`) is always a refusal.
//! - `join=all|cgroup`: `all` (default) enters the domain's cgroups and namespaces; `cgroup`
//!   only its cgroups (limits and accounting; the session sees the host's filesystem, network
//!   and processes). A multi-threaded caller always gets `cgroup`: the kernel does not let a
//!   multi-threaded process enter another mount namespace.
//! - `debug`: log every request and answer (the proxy text never), and how the session joined.
//!
//! An unknown or malformed option is logged and fails the call (`PAM_SERVICE_ERR` for
//! sessions, `PAM_PERM_DENIED` for account), whatever `on_error` says: a broken configuration
//! must not silently open the node.
//!
//! # What a session sends
//!
//! `open` carries PAM_USER (required), PAM_SERVICE, PAM_RHOST, PAM_TTY and the caller's pid.
//! The batch job id is `SLURM_JOB_ID` from the PAM environment, or, in slurmstepd (process title
//! `slurmstepd: [JOBID.STEP]`), the digits after `[`. When the PAM environment has
//! `X509_USER_PROXY`, that file must be a regular file owned by the user, not readable or
//! writable by group or others, at most 64 KiB, and not a symlink; its text goes to dmsd. A proxy
//! file that fails a check fails the session, with a message naming the file and the reason.
//! When joining fails after dmsd opened the session, the module sends `close` for it.
//!
//! # Messages
//!
//! Errors go to syslog (facility authpriv, ident `pam_dms`, prefixed by service and user) and,
//! when the application has a conversation and did not pass `PAM_SILENT`, to the user as
//! `dms: <message>` (e.g. `dms: VO "cms" is banned on this node`).
//!
//! # Install
//!
//! ```sh
//! cargo build --release -p pam-dms
//! install -m 0644 target/release/libpam_dms.so /usr/lib/x86_64-linux-gnu/security/pam_dms.so
//! ```
//!
//! or name the built file by absolute path in a pam.d line
//! (`session required /opt/dms/lib/pam_dms.so`).
//!
//! # Examples
//!
//! sshd (`/etc/pam.d/sshd`, after `@include common-account` and before
//! `@include common-session`, so the shell starts inside the domain):
//!
//! ```text
//! account  required  pam_dms.so
//! session  required  pam_dms.so
//! ```
//!
//! su and runuser (`/etc/pam.d/su`, `/etc/pam.d/runuser-l`); the module runs in the shell's
//! direct parent, which stays in the domain until the shell exits:
//!
//! ```text
//! session  required  pam_dms.so timeout=2
//! ```
//!
//! Slurm (`/etc/pam.d/slurm`, with `UsePAM=1` in `slurm.conf`): slurmstepd is multi-threaded, so
//! it cannot enter a domain's namespaces; the job step joins the domain's cgroups only (limits
//! and accounting apply, the job sees the host's filesystem and network). The Slurm SPANK plugin
//! `spank_dms.so` (crate `spank-plugin`) puts the tasks into the namespaces too; with it, this
//! module needs only its `account` line. The job id comes from slurmstepd's process title:
//!
//! ```text
//! session  required  pam_dms.so join=cgroup
//! ```
//!
//! On hosts where the module may be missing (a shared pam.d on nodes without DMS), prefix the
//! line with `-` and PAM skips it silently when the file does not exist (it still applies when
//! the module is installed):
//!
//! ```text
//! -session required  pam_dms.so
//! ```
//!
//! # Inside the host process
//!
//! Every entry point catches panics (a panic becomes `PAM_SYSTEM_ERR`, or `PAM_SUCCESS` for
//! sessions with `on_error=allow`); there is no thread, no runtime, and no fd or memory left
//! behind after a call: the socket is closed before returning, syslog is closed after each
//! message, and every call to dmsd ends within `timeout` (an `open` whose join fails makes a
//! second call, the `close`, with its own `timeout`).

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod hooks;
pub mod job;
pub mod options;
pub mod proxy;
pub mod syslog;

// The session socket client, shared with the Slurm SPANK plugin; re-exported under the names
// this crate always had.
pub use dms_session_client::{client, protocol, transport};

pub use hooks::{
    pam_sm_acct_mgmt, pam_sm_authenticate, pam_sm_chauthtok, pam_sm_close_session,
    pam_sm_open_session, pam_sm_setcred,
};
