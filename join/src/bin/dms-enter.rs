//! dms-enter: run a command inside a running DMS container domain, using the same library call
//! as pam_dms.so. It is the single-threaded reference caller of `dms_join::join`.

use std::ffi::CString;
use std::process::ExitCode;

const USAGE: &str = "\
usage: dms-enter [--user USER] TARGET.json COMMAND [ARG...]

Enters the cgroups and namespaces of a running DMS container domain and runs COMMAND there
(as the calling user, with the caller's environment), then exits with its status.

--user USER  run COMMAND as USER (name or number) with USER's groups, switching after
             entering, as sshd and su do after pam_dms. In a domain with a user namespace
             (policy userns) no_new_privs is set: a command cannot switch users itself
             (setpriv, su) once it has exec'd, so switch here.

TARGET.json is what `dmsctl domain join-info DOMAIN` prints (\"-\" reads it from stdin):
the domain's init pid and start time, its cgroup.procs files and the namespaces to enter.
Needs root. For everyday use prefer `dmsctl exec DOMAIN -- COMMAND`, which also switches to the
domain's owner and cleans the environment.

exit status: COMMAND's status (128+N if killed by signal N); 125 if entering failed;
127 if COMMAND could not be executed.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let mut args = args;
    let mut user = None;
    if args.first().is_some_and(|a| a == "--user") {
        let Some(name) = args.get(1) else {
            eprintln!("dms-enter: --user needs a user name or uid");
            return ExitCode::from(2);
        };
        match resolve_user(name) {
            Ok(ids) => user = Some(ids),
            Err(e) => {
                eprintln!("dms-enter: --user {name:?}: {e}");
                return ExitCode::from(2);
            }
        }
        args.drain(..2);
    }
    if args.len() < 2 {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let text = if args[0] == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(&args[0])
    };
    let target: dms_join::JoinTarget = match text
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("dms-enter: {}: {e}", args[0]);
            return ExitCode::from(125);
        }
    };
    let argv: Vec<CString> = match args[1..]
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
    {
        Ok(v) => v,
        Err(_) => {
            eprintln!("dms-enter: an argument contains a NUL byte");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = dms_join::join(&target) {
        eprintln!("dms-enter: {e}");
        return ExitCode::from(125);
    }
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    // SAFETY: this process is single-threaded (join checked it), so the child may run anything.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        eprintln!("dms-enter: fork: {}", std::io::Error::last_os_error());
        return ExitCode::from(125);
    }
    if pid == 0 {
        if let Some(ids) = &user {
            // SAFETY: plain syscalls on a buffer owned by `ids`, in the single-threaded child.
            let switched = unsafe {
                libc::setgroups(ids.groups.len(), ids.groups.as_ptr()) == 0
                    && libc::setgid(ids.gid) == 0
                    && libc::setuid(ids.uid) == 0
            };
            if !switched {
                eprintln!(
                    "dms-enter: switching to uid {} gid {} groups {:?}: {}",
                    ids.uid,
                    ids.gid,
                    ids.groups,
                    std::io::Error::last_os_error()
                );
                // SAFETY: leaving the forked child without running the parent's destructors.
                unsafe { libc::_exit(125) }
            }
        }
        // SAFETY: argv_p is a NULL-terminated array of pointers into `argv`, alive here.
        unsafe {
            libc::execvp(argv_p[0], argv_p.as_ptr());
        }
        eprintln!(
            "dms-enter: {}: {}",
            args[1],
            std::io::Error::last_os_error()
        );
        // SAFETY: leaving the forked child without running the parent's destructors.
        unsafe { libc::_exit(127) }
    }
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            eprintln!("dms-enter: waitpid: {}", std::io::Error::last_os_error());
            return ExitCode::from(125);
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    ExitCode::from(u8::try_from(code).unwrap_or(255))
}

/// A user's ids, resolved through NSS before entering the domain.
struct Ids {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

fn resolve_user(name: &str) -> Result<Ids, String> {
    let cname = CString::new(name).map_err(|_| "contains a NUL byte".to_string())?;
    // SAFETY: getpwnam/getpwuid in a single-threaded process; the fields are copied out
    // before any other NSS call can reuse the static buffer.
    let (uid, gid, login) = unsafe {
        let mut pw = libc::getpwnam(cname.as_ptr());
        if pw.is_null() {
            if let Ok(uid) = name.parse::<libc::uid_t>() {
                pw = libc::getpwuid(uid);
            }
        }
        if pw.is_null() {
            return Err("no such user".into());
        }
        (
            (*pw).pw_uid,
            (*pw).pw_gid,
            std::ffi::CStr::from_ptr((*pw).pw_name).to_owned(),
        )
    };
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = libc::c_int::try_from(groups.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `groups` holds `n` entries; getgrouplist writes at most that many.
        let r = unsafe { libc::getgrouplist(login.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        let n = usize::try_from(n).unwrap_or(0);
        if r >= 0 {
            groups.truncate(n);
            break;
        }
        if n <= groups.len() || n > 65536 {
            return Err("cannot list its groups".into());
        }
        groups.resize(n, 0);
    }
    Ok(Ids { uid, gid, groups })
}
