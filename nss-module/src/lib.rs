//! `libnss_dms.so.2`: makes the pool accounts dmsd maps grid identities to resolvable through
//! glibc's Name Service Switch (`getpwnam`, `getpwuid`, `getgrnam`, `getgrgid`, `getgrouplist`,
//! `getent`, `id`, ...).
//!
//! # What it reads
//! dmsd publishes two files in [`NSS_DIR`] (`/var/lib/dms/nss` unless `DMS_NSS_DIR` was set when
//! this crate was built), each replaced atomically (temp file + rename):
//! - `passwd`: passwd(5) lines `name:*:uid:gid:gecos:home:shell`;
//! - `group`: group(5) lines `name:*:gid:member1,member2` (the member list may be empty).
//!
//! Every lookup reads the file afresh and scans it with byte searches, parsing only the lines
//! that contain the key, so a rewritten file is seen by the next call and nothing is cached. No
//! file descriptor stays open after a call; enumeration (`setpwent`/`getpwent`/`endpwent`)
//! keeps a copy of the file's contents in memory between calls. The module never talks to the
//! daemon: dbus-daemon itself resolves users through NSS. Ids must be plain decimal (`40001`,
//! not `040001`); malformed lines, comment lines (`#`) and lines longer than [`db::MAX_LINE`]
//! are skipped, never fatal. The first matching line wins.
//!
//! # Return codes
//! | situation | status | `*errnop` |
//! |---|---|---|
//! | entry found | `NSS_STATUS_SUCCESS` | unchanged |
//! | no such entry, end of enumeration | `NSS_STATUS_NOTFOUND` | `ENOENT` |
//! | file missing or unreadable | `NSS_STATUS_UNAVAIL` (glibc goes on to the next source) | `ENOENT` or the error |
//! | file over [`db::MAX_FILE`] | `NSS_STATUS_UNAVAIL` | `EFBIG` |
//! | caller's buffer too small | `NSS_STATUS_TRYAGAIN` (glibc retries with a bigger one) | `ERANGE` |
//! | null pointer argument | `NSS_STATUS_UNAVAIL` | `EINVAL` |
//! | out of memory growing the initgroups array | `NSS_STATUS_TRYAGAIN` | `ENOMEM` |
//! | a panic (a bug) | `NSS_STATUS_UNAVAIL` | unchanged |
//!
//! Every entry point catches panics, so a bug never unwinds into the host process (sshd, su,
//! every process that calls `getpwnam`); nothing blocks (no locks shared with other processes,
//! no sockets), and no threads are started.
//!
//! # Installing
//! ```text
//! cargo build --release -p nss-dms
//! install -m 644 target/release/libnss_dms.so /usr/lib/x86_64-linux-gnu/libnss_dms.so.2
//! # /etc/nsswitch.conf: add `dms` after `files`
//! passwd:  files dms
//! group:   files dms
//! ```
//! glibc loads the module by that name from the system library directory; `getent passwd
//! <mapped account>` then shows the account once dmsd has published it. Programs pick up a
//! changed nsswitch.conf on their next lookup (glibc >= 2.33); nscd, if running, caches answers.

use std::ffi::{c_char, c_int, c_long, CStr};
use std::mem::{align_of, size_of, MaybeUninit};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::ptr::null_mut;
use std::sync::{Mutex, MutexGuard};

use libc::{gid_t, group, passwd, size_t, uid_t};

pub mod db;

use db::{GrEntry, PwEntry};

/// The directory holding `passwd` and `group`, fixed at build time.
pub const NSS_DIR: &str = match option_env!("DMS_NSS_DIR") {
    Some(d) => d,
    None => "/var/lib/dms/nss",
};

/// glibc's `enum nss_status`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NssStatus {
    TryAgain = -2,
    Unavail = -1,
    NotFound = 0,
    Success = 1,
}

/// The caller's buffer is too small.
#[derive(Debug)]
struct Erange;

/// Hands out consecutive pieces of the caller's buffer.
struct Arena<'a> {
    rest: &'a mut [MaybeUninit<u8>],
}

impl<'a> Arena<'a> {
    fn take(&mut self, n: usize) -> Result<&'a mut [MaybeUninit<u8>], Erange> {
        if n > self.rest.len() {
            return Err(Erange);
        }
        let (head, tail) = std::mem::take(&mut self.rest).split_at_mut(n);
        self.rest = tail;
        Ok(head)
    }

    /// Copies `s` plus a terminating NUL into the buffer.
    fn str(&mut self, s: &[u8]) -> Result<*mut c_char, Erange> {
        let dst = self.take(s.len().checked_add(1).ok_or(Erange)?)?;
        let (last, body) = dst.split_last_mut().ok_or(Erange)?;
        for (d, &b) in body.iter_mut().zip(s) {
            d.write(b);
        }
        last.write(0);
        Ok(dst.as_mut_ptr().cast())
    }

    /// An aligned array of `n` string pointers.
    fn ptrs(&mut self, n: usize) -> Result<&'a mut [MaybeUninit<*mut c_char>], Erange> {
        const ALIGN: usize = align_of::<*mut c_char>();
        let pad = (self.rest.as_ptr() as usize).wrapping_neg() & (ALIGN - 1);
        self.take(pad)?;
        let bytes = self.take(n.checked_mul(size_of::<*mut c_char>()).ok_or(Erange)?)?;
        // SAFETY: `bytes` is exclusively borrowed for 'a, aligned for pointers (padded above) and
        // exactly `n` pointers long; MaybeUninit needs no initialized contents.
        Ok(unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast(), n) })
    }
}

/// Fills `pwd` with `e`, its strings stored in `buf`.
fn fill_pw(
    e: &PwEntry<'_>,
    pwd: &mut MaybeUninit<passwd>,
    buf: &mut [MaybeUninit<u8>],
) -> Result<(), Erange> {
    let mut a = Arena { rest: buf };
    let filled = passwd {
        pw_name: a.str(e.name)?,
        pw_passwd: a.str(e.passwd)?,
        pw_uid: e.uid,
        pw_gid: e.gid,
        pw_gecos: a.str(e.gecos)?,
        pw_dir: a.str(e.dir)?,
        pw_shell: a.str(e.shell)?,
    };
    pwd.write(filled);
    Ok(())
}

/// Fills `grp` with `e`: the NULL-terminated member array and all strings stored in `buf`.
fn fill_gr(
    e: &GrEntry<'_>,
    grp: &mut MaybeUninit<group>,
    buf: &mut [MaybeUninit<u8>],
) -> Result<(), Erange> {
    let mut a = Arena { rest: buf };
    let n = e.members().count();
    let mem = a.ptrs(n.checked_add(1).ok_or(Erange)?)?;
    for (slot, m) in mem.iter_mut().zip(e.members()) {
        slot.write(a.str(m)?);
    }
    mem[n].write(null_mut());
    let filled = group {
        gr_name: a.str(e.name)?,
        gr_passwd: a.str(e.passwd)?,
        gr_gid: e.gid,
        gr_mem: mem.as_mut_ptr().cast(),
    };
    grp.write(filled);
    Ok(())
}

/// The caller's pointer arguments, checked for null.
struct Out<'a, T> {
    result: &'a mut MaybeUninit<T>,
    buf: &'a mut [MaybeUninit<u8>],
    errno: &'a mut c_int,
}

/// Checks and converts the `(result, buffer, buflen, errnop)` arguments every `_r` call takes.
///
/// # Safety
/// Each non-null pointer must be valid as glibc guarantees: `result` for writes of a `T`,
/// `buffer` for writes of `buflen` bytes, `errnop` for an int, none aliasing another, all for
/// the duration of the call.
unsafe fn out_args<'a, T>(
    result: *mut T,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> Result<Out<'a, T>, NssStatus> {
    // SAFETY: the caller guarantees a non-null errnop is valid and unaliased.
    let errno = unsafe { errnop.as_mut() }.ok_or(NssStatus::Unavail)?;
    if result.is_null() || buffer.is_null() || isize::try_from(buflen).is_err() {
        *errno = libc::EINVAL;
        return Err(NssStatus::Unavail);
    }
    // SAFETY: non-null, and the caller guarantees validity and exclusivity for the call; it may
    // be uninitialized, hence MaybeUninit.
    let result = unsafe { &mut *result.cast::<MaybeUninit<T>>() };
    // SAFETY: non-null, valid for `buflen` (<= isize::MAX) bytes and exclusive for the call
    // (caller's contract); MaybeUninit<u8> accepts uninitialized memory.
    let buf = unsafe { std::slice::from_raw_parts_mut(buffer.cast(), buflen) };
    Ok(Out { result, buf, errno })
}

/// The bytes of a C string argument, or `None` when null.
///
/// # Safety
/// A non-null `s` must point to a NUL-terminated string valid for the call.
unsafe fn c_bytes<'a>(s: *const c_char) -> Option<&'a [u8]> {
    // SAFETY: non-null checked; NUL-terminated and valid per the caller's contract.
    (!s.is_null()).then(|| unsafe { CStr::from_ptr(s) }.to_bytes())
}

/// Reads `file` in `dir`, finds an entry with `find` and stores it with `fill`; `data` holds the
/// contents the entry borrows from.
fn lookup<'d, E, T>(
    dir: &Path,
    file: &str,
    out: Out<'_, T>,
    find: impl FnOnce(&'d [u8]) -> Option<E>,
    fill: impl FnOnce(&E, &mut MaybeUninit<T>, &mut [MaybeUninit<u8>]) -> Result<(), Erange>,
    data: &'d mut Option<Vec<u8>>,
) -> NssStatus {
    let data: &'d [u8] = match db::read_db(dir, file) {
        Ok(d) => data.insert(d),
        Err(e) => {
            *out.errno = e;
            return NssStatus::Unavail;
        }
    };
    match find(data) {
        None => {
            *out.errno = libc::ENOENT;
            NssStatus::NotFound
        }
        Some(e) => match fill(&e, out.result, out.buf) {
            Ok(()) => NssStatus::Success,
            Err(Erange) => {
                *out.errno = libc::ERANGE;
                NssStatus::TryAgain
            }
        },
    }
}

/// `getpwnam_r` against `dir`.
///
/// # Safety
/// Pointer arguments as glibc passes them (see [`out_args`]); `name` a C string or null.
pub unsafe fn getpwnam_in(
    dir: &Path,
    name: *const c_char,
    pwd: *mut passwd,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> NssStatus {
    // SAFETY: forwarded caller's contract.
    let out = match unsafe { out_args(pwd, buffer, buflen, errnop) } {
        Ok(o) => o,
        Err(s) => return s,
    };
    // SAFETY: forwarded caller's contract.
    let Some(name) = (unsafe { c_bytes(name) }) else {
        *out.errno = libc::EINVAL;
        return NssStatus::Unavail;
    };
    let mut data = None;
    lookup(
        dir,
        "passwd",
        out,
        |d| db::pw_by_name(d, name),
        fill_pw,
        &mut data,
    )
}

/// `getpwuid_r` against `dir`.
///
/// # Safety
/// Pointer arguments as glibc passes them (see [`out_args`]).
pub unsafe fn getpwuid_in(
    dir: &Path,
    uid: uid_t,
    pwd: *mut passwd,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> NssStatus {
    // SAFETY: forwarded caller's contract.
    let out = match unsafe { out_args(pwd, buffer, buflen, errnop) } {
        Ok(o) => o,
        Err(s) => return s,
    };
    let mut data = None;
    lookup(
        dir,
        "passwd",
        out,
        |d| db::pw_by_uid(d, uid),
        fill_pw,
        &mut data,
    )
}

/// `getgrnam_r` against `dir`.
///
/// # Safety
/// Pointer arguments as glibc passes them (see [`out_args`]); `name` a C string or null.
pub unsafe fn getgrnam_in(
    dir: &Path,
    name: *const c_char,
    grp: *mut group,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> NssStatus {
    // SAFETY: forwarded caller's contract.
    let out = match unsafe { out_args(grp, buffer, buflen, errnop) } {
        Ok(o) => o,
        Err(s) => return s,
    };
    // SAFETY: forwarded caller's contract.
    let Some(name) = (unsafe { c_bytes(name) }) else {
        *out.errno = libc::EINVAL;
        return NssStatus::Unavail;
    };
    let mut data = None;
    lookup(
        dir,
        "group",
        out,
        |d| db::gr_by_name(d, name),
        fill_gr,
        &mut data,
    )
}

/// `getgrgid_r` against `dir`.
///
/// # Safety
/// Pointer arguments as glibc passes them (see [`out_args`]).
pub unsafe fn getgrgid_in(
    dir: &Path,
    gid: gid_t,
    grp: *mut group,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> NssStatus {
    // SAFETY: forwarded caller's contract.
    let out = match unsafe { out_args(grp, buffer, buflen, errnop) } {
        Ok(o) => o,
        Err(s) => return s,
    };
    let mut data = None;
    lookup(
        dir,
        "group",
        out,
        |d| db::gr_by_gid(d, gid),
        fill_gr,
        &mut data,
    )
}

/// `initgroups_dyn` against `dir`: appends to `*groupsp[*start..]` the gids of the groups that
/// list `user`, except `skip`, growing the array with `realloc` (doubling, capped by `limit`
/// when it is positive) and stopping once `limit` entries are used.
///
/// # Safety
/// Pointer arguments as glibc passes them: `user` a C string, `start`, `size`, `groupsp` and
/// `errnop` valid and unaliased, `*groupsp` a malloc'd array of `*size` gids (or null with
/// `*size == 0`).
#[allow(clippy::too_many_arguments)]
pub unsafe fn initgroups_in(
    dir: &Path,
    user: *const c_char,
    skip: gid_t,
    start: *mut c_long,
    size: *mut c_long,
    groupsp: *mut *mut gid_t,
    limit: c_long,
    errnop: *mut c_int,
) -> NssStatus {
    // SAFETY: the caller guarantees these non-null pointers are valid and unaliased.
    let (errno, start, size, groupsp) = unsafe {
        match (
            errnop.as_mut(),
            start.as_mut(),
            size.as_mut(),
            groupsp.as_mut(),
        ) {
            (Some(e), Some(st), Some(sz), Some(g)) => (e, st, sz, g),
            (Some(e), ..) => {
                *e = libc::EINVAL;
                return NssStatus::Unavail;
            }
            (None, ..) => return NssStatus::Unavail,
        }
    };
    // SAFETY: forwarded caller's contract.
    let user = match unsafe { c_bytes(user) } {
        Some(u) if *start >= 0 && *start <= *size => u,
        _ => {
            *errno = libc::EINVAL;
            return NssStatus::Unavail;
        }
    };
    let data = match db::read_db(dir, "group") {
        Ok(d) => d,
        Err(e) => {
            *errno = e;
            return NssStatus::Unavail;
        }
    };
    for gid in db::groups_of(&data, user, skip) {
        if limit > 0 && *start >= limit {
            break;
        }
        if *start == *size {
            let mut new = size.saturating_mul(2).max(16);
            if limit > 0 {
                new = new.min(limit);
            }
            let bytes = usize::try_from(new)
                .ok()
                .and_then(|n| n.checked_mul(size_of::<gid_t>()));
            let Some(bytes) = bytes else {
                *errno = libc::ENOMEM;
                return NssStatus::TryAgain;
            };
            // SAFETY: `*groupsp` is a malloc'd array (or null) owned by the caller, who frees it
            // with free(); on failure it stays valid and unchanged.
            let grown = unsafe { libc::realloc((*groupsp).cast(), bytes) };
            if grown.is_null() {
                *errno = libc::ENOMEM;
                return NssStatus::TryAgain;
            }
            *groupsp = grown.cast();
            *size = new;
        }
        // `*start` is below `*size` (checked above or just grown), both non-negative longs.
        let at = *start as usize;
        // SAFETY: the array holds `*size` gids and `at < *size`.
        let seen = unsafe { std::slice::from_raw_parts(*groupsp, at) }.contains(&gid);
        if !seen {
            // SAFETY: as above, `at` is in bounds of the `*size`-gid array.
            unsafe { (*groupsp).add(at).write(gid) };
            *start += 1;
        }
    }
    NssStatus::Success
}

/// The state of one enumeration (`set*ent`, `get*ent_r`..., `end*ent`): the file's contents as
/// read by `set*ent` (or the first `get*ent_r`) and the offset of the next line.
#[derive(Debug, Default)]
pub struct Enumeration {
    data: Option<Vec<u8>>,
    pos: usize,
}

impl Enumeration {
    pub const fn new() -> Enumeration {
        Enumeration { data: None, pos: 0 }
    }

    /// (Re)starts at the beginning of a fresh read of `dir/file`.
    pub fn set(&mut self, dir: &Path, file: &str) -> Result<(), c_int> {
        self.end();
        self.data = Some(db::read_db(dir, file)?);
        Ok(())
    }

    /// Forgets the contents.
    pub fn end(&mut self) {
        *self = Enumeration::new();
    }

    /// Stores the next valid entry with `fill`; on ERANGE the same entry is tried next time.
    fn next<'d, E, T>(
        &'d mut self,
        dir: &Path,
        file: &str,
        out: Out<'_, T>,
        parse: impl Fn(&'d [u8]) -> Option<E>,
        fill: impl FnOnce(&E, &mut MaybeUninit<T>, &mut [MaybeUninit<u8>]) -> Result<(), Erange>,
    ) -> NssStatus {
        if self.data.is_none() {
            if let Err(e) = self.set(dir, file) {
                *out.errno = e;
                return NssStatus::Unavail;
            }
        }
        let Enumeration { data, pos: at } = self;
        let data: &'d [u8] = data.as_deref().unwrap_or_default();
        let mut pos = *at;
        while let Some((line, next)) = db::next_line(data, pos) {
            if let Some(e) = parse(line) {
                return match fill(&e, out.result, out.buf) {
                    Ok(()) => {
                        *at = next;
                        NssStatus::Success
                    }
                    Err(Erange) => {
                        *at = pos;
                        *out.errno = libc::ERANGE;
                        NssStatus::TryAgain
                    }
                };
            }
            pos = next;
        }
        *at = pos;
        *out.errno = libc::ENOENT;
        NssStatus::NotFound
    }
}

/// `getpwent_r` for enumeration `en` of `dir`.
///
/// # Safety
/// Pointer arguments as glibc passes them (see [`out_args`]).
pub unsafe fn getpwent_in(
    en: &mut Enumeration,
    dir: &Path,
    pwd: *mut passwd,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> NssStatus {
    // SAFETY: forwarded caller's contract.
    match unsafe { out_args(pwd, buffer, buflen, errnop) } {
        Ok(out) => en.next(dir, "passwd", out, db::parse_pw, fill_pw),
        Err(s) => s,
    }
}

/// `getgrent_r` for enumeration `en` of `dir`.
///
/// # Safety
/// Pointer arguments as glibc passes them (see [`out_args`]).
pub unsafe fn getgrent_in(
    en: &mut Enumeration,
    dir: &Path,
    grp: *mut group,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> NssStatus {
    // SAFETY: forwarded caller's contract.
    match unsafe { out_args(grp, buffer, buflen, errnop) } {
        Ok(out) => en.next(dir, "group", out, db::parse_gr, fill_gr),
        Err(s) => s,
    }
}

// ---- The glibc entry points -------------------------------------------------------------------

static PW_ENUM: Mutex<Enumeration> = Mutex::new(Enumeration::new());
static GR_ENUM: Mutex<Enumeration> = Mutex::new(Enumeration::new());

/// Locks an enumeration, ignoring poisoning (the state is valid at every step).
fn lock(m: &Mutex<Enumeration>) -> MutexGuard<'_, Enumeration> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs an entry point's body, turning a panic into NSS_STATUS_UNAVAIL.
fn guarded(body: impl FnOnce() -> NssStatus) -> NssStatus {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(NssStatus::Unavail)
}

fn nss_dir() -> &'static Path {
    Path::new(NSS_DIR)
}

/// # Safety
/// Called by glibc with valid arguments (see [`getpwnam_in`]).
#[no_mangle]
pub unsafe extern "C" fn _nss_dms_getpwnam_r(
    name: *const c_char,
    pwd: *mut passwd,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> NssStatus {
    // SAFETY: glibc's arguments, forwarded unchanged.
    guarded(|| unsafe { getpwnam_in(nss_dir(), name, pwd, buffer, buflen, errnop) })
}

/// # Safety
/// Called by glibc with valid arguments (see [`getpwuid_in`]).
#[no_mangle]
pub unsafe extern "C" fn _nss_dms_getpwuid_r(
    uid: uid_t,
    pwd: *mut passwd,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> NssStatus {
    // SAFETY: glibc's arguments, forwarded unchanged.
    guarded(|| unsafe { getpwuid_in(nss_dir(), uid, pwd, buffer, buflen, errnop) })
}

#[no_mangle]
pub extern "C" fn _nss_dms_setpwent() -> NssStatus {
    guarded(|| match lock(&PW_ENUM).set(nss_dir(), "passwd") {
        Ok(()) => NssStatus::Success,
        Err(_) => NssStatus::Unavail,
    })
}

/// # Safety
/// Called by glibc with valid arguments (see [`getpwent_in`]).
#[no_mangle]
pub unsafe extern "C" fn _nss_dms_getpwent_r(
    pwd: *mut passwd,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> NssStatus {
    guarded(|| {
        let mut en = lock(&PW_ENUM);
        // SAFETY: glibc's arguments, forwarded unchanged.
        unsafe { getpwent_in(&mut en, nss_dir(), pwd, buffer, buflen, errnop) }
    })
}

#[no_mangle]
pub extern "C" fn _nss_dms_endpwent() -> NssStatus {
    guarded(|| {
        lock(&PW_ENUM).end();
        NssStatus::Success
    })
}

/// # Safety
/// Called by glibc with valid arguments (see [`getgrnam_in`]).
#[no_mangle]
pub unsafe extern "C" fn _nss_dms_getgrnam_r(
    name: *const c_char,
    grp: *mut group,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> NssStatus {
    // SAFETY: glibc's arguments, forwarded unchanged.
    guarded(|| unsafe { getgrnam_in(nss_dir(), name, grp, buffer, buflen, errnop) })
}

/// # Safety
/// Called by glibc with valid arguments (see [`getgrgid_in`]).
#[no_mangle]
pub unsafe extern "C" fn _nss_dms_getgrgid_r(
    gid: gid_t,
    grp: *mut group,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> NssStatus {
    // SAFETY: glibc's arguments, forwarded unchanged.
    guarded(|| unsafe { getgrgid_in(nss_dir(), gid, grp, buffer, buflen, errnop) })
}

#[no_mangle]
pub extern "C" fn _nss_dms_setgrent() -> NssStatus {
    guarded(|| match lock(&GR_ENUM).set(nss_dir(), "group") {
        Ok(()) => NssStatus::Success,
        Err(_) => NssStatus::Unavail,
    })
}

/// # Safety
/// Called by glibc with valid arguments (see [`getgrent_in`]).
#[no_mangle]
pub unsafe extern "C" fn _nss_dms_getgrent_r(
    grp: *mut group,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> NssStatus {
    guarded(|| {
        let mut en = lock(&GR_ENUM);
        // SAFETY: glibc's arguments, forwarded unchanged.
        unsafe { getgrent_in(&mut en, nss_dir(), grp, buffer, buflen, errnop) }
    })
}

#[no_mangle]
pub extern "C" fn _nss_dms_endgrent() -> NssStatus {
    guarded(|| {
        lock(&GR_ENUM).end();
        NssStatus::Success
    })
}

/// # Safety
/// Called by glibc with valid arguments (see [`initgroups_in`]).
#[no_mangle]
pub unsafe extern "C" fn _nss_dms_initgroups_dyn(
    user: *const c_char,
    group: gid_t,
    start: *mut c_long,
    size: *mut c_long,
    groupsp: *mut *mut gid_t,
    limit: c_long,
    errnop: *mut c_int,
) -> NssStatus {
    // SAFETY: glibc's arguments, forwarded unchanged.
    guarded(|| unsafe {
        initgroups_in(nss_dir(), user, group, start, size, groupsp, limit, errnop)
    })
}

#[cfg(test)]
mod tests;
