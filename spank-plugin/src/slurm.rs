//! The part of Slurm's plugin API the plugin calls (`slurm/spank.h`), looked up in the
//! process that loaded it (slurmstepd, srun) with `dlsym(RTLD_DEFAULT, ...)`.
//!
//! Looking the functions up at run time rather than linking against libslurm keeps the plugin
//! free of a link-time dependency on one Slurm library name (`libslurm.so.N`,
//! `libslurmfull.so`) and lets its tests link; a missing function is an error message, not a
//! failed `dlopen`.

use std::ffi::{c_char, c_int, c_void, CStr, CString};

/// `spank_t`: Slurm's opaque handle.
pub type Spank = *mut c_void;

/// `spank_item_t` values used here. The first items of the enum have kept their values since
/// SPANK began (checked from Slurm 17.11 to 25.x).
#[derive(Debug, Clone, Copy)]
#[repr(i32)]
pub enum Item {
    /// `S_JOB_UID` (`uid_t *`).
    JobUid = 0,
    /// `S_JOB_ID` (`uint32_t *`).
    JobId = 2,
    /// `S_TASK_ID` (`int *`).
    TaskId = 11,
}

type GetItem = unsafe extern "C" fn(Spank, c_int, ...) -> c_int;
type LogFn = unsafe extern "C" fn(*const c_char, ...);

/// The address of a symbol of the process, if it has one.
fn symbol(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with the RTLD_DEFAULT pseudo-handle and a NUL-terminated name.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// Calls `spank_get_item(spank, item, out)` for an item with one pointer argument of type `T`.
///
/// # Safety
///
/// `spank` is the handle Slurm passed to the running callback, and `T` is the type the item's
/// pointer argument points to (`spank.h`).
unsafe fn get_item<T: Default>(spank: Spank, item: Item) -> Result<T, String> {
    let f = symbol(c"spank_get_item")
        .ok_or("this process has no spank_get_item (not loaded by Slurm?)")?;
    // SAFETY: spank_get_item has this signature in every Slurm with SPANK.
    let f: GetItem = unsafe { std::mem::transmute::<*mut c_void, GetItem>(f) };
    let mut v = T::default();
    // SAFETY: the caller's contract; `v` lives across the call.
    let rc = unsafe { f(spank, item as c_int, std::ptr::from_mut(&mut v)) };
    if rc != 0 {
        return Err(format!("spank_get_item({item:?}) failed (error {rc})"));
    }
    Ok(v)
}

/// The job's uid.
///
/// # Safety
///
/// `spank` is the handle of the running callback.
pub unsafe fn job_uid(spank: Spank) -> Result<u32, String> {
    // SAFETY: S_JOB_UID takes a `uid_t *`.
    unsafe { get_item::<libc::uid_t>(spank, Item::JobUid) }
}

/// The job id.
///
/// # Safety
///
/// `spank` is the handle of the running callback.
pub unsafe fn job_id(spank: Spank) -> Result<u32, String> {
    // SAFETY: S_JOB_ID takes a `uint32_t *`.
    unsafe { get_item::<u32>(spank, Item::JobId) }
}

/// The task's local id.
///
/// # Safety
///
/// `spank` is the handle of the running callback.
pub unsafe fn task_id(spank: Spank) -> Result<c_int, String> {
    // SAFETY: S_TASK_ID takes an `int *`.
    unsafe { get_item::<c_int>(spank, Item::TaskId) }
}

/// How important a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `slurm_error`: in slurmd's log and copied to the job's stderr (srun).
    Error,
    /// `slurm_info`: in slurmd's log.
    Info,
}

/// Logs `dms: <msg>` through Slurm's log (stderr when the process has no Slurm log).
pub fn log(level: Level, msg: &str) {
    let text = format!("dms: {msg}");
    let name = match level {
        Level::Error => c"slurm_error",
        Level::Info => c"slurm_info",
    };
    let Some(f) = symbol(name) else {
        eprintln!("{text}");
        return;
    };
    // SAFETY: slurm_error and slurm_info are printf-like: `void f(const char *fmt, ...)`.
    let f: LogFn = unsafe { std::mem::transmute::<*mut c_void, LogFn>(f) };
    let c = CString::new(text.replace('\0', "\\0")).unwrap_or_default();
    // SAFETY: a "%s" format with one NUL-terminated string that outlives the call.
    unsafe { f(c"%s".as_ptr(), c.as_ptr()) };
}
