//! Unit tests of the C-facing layer against temp dirs (no root needed).
#![allow(clippy::unwrap_used)]

use std::ffi::{c_char, c_int, c_long, CStr, CString};
use std::mem::MaybeUninit;
use std::path::Path;
use std::ptr::{null, null_mut};

use libc::{gid_t, group, passwd};
use tempfile::TempDir;

use super::*;

const PASSWD: &str = "\
dmsnss001:*:40001:40001:DMS test one:/home/dmsnss001:/bin/sh
dmsnss002:*:40002:40100::/home/dmsnss002:/bin/bash
dmsnss003:*:40003:40003:::
";

const GROUP: &str = "\
dmsnss001:*:40001:
dmsnssgrp:*:40100:dmsnss001,dmsnss002
dmsnssvo:*:40200:dmsnss002,,dmsnss001,
dmsnssother:*:40300:dmsnss0010,xdmsnss001
";

fn dir_with(passwd: &str, group: &str) -> TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("passwd"), passwd).unwrap();
    std::fs::write(d.path().join("group"), group).unwrap();
    d
}

/// Writes `dir/file` the way dmsd does: a temp file renamed over the old one.
fn replace(dir: &Path, file: &str, contents: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

#[derive(Debug, PartialEq, Eq)]
struct Pw {
    name: String,
    passwd: String,
    uid: u32,
    gid: u32,
    gecos: String,
    dir: String,
    shell: String,
}

#[derive(Debug, PartialEq, Eq)]
struct Gr {
    name: String,
    passwd: String,
    gid: u32,
    members: Vec<String>,
}

/// A caller's buffer of `len` bytes starting `offset` bytes into an 8-aligned allocation.
struct Buf {
    mem: Vec<u64>,
    offset: usize,
    len: usize,
}

impl Buf {
    fn new(len: usize, offset: usize) -> Buf {
        Buf {
            mem: vec![0xa5a5_a5a5_a5a5_a5a5; (len + offset) / 8 + 1],
            offset,
            len,
        }
    }

    fn ptr(&mut self) -> *mut c_char {
        // SAFETY: `offset` is within the allocation (it has `len + offset` bytes or more).
        unsafe { self.mem.as_mut_ptr().cast::<c_char>().add(self.offset) }
    }

    /// Whether `p` points into the caller's `len` bytes.
    fn holds<T>(&mut self, p: *const T) -> bool {
        let start = self.ptr() as usize;
        (start..start + self.len).contains(&(p as usize))
    }
}

/// Copies a C string the module stored in `buf`.
fn string(buf: &mut Buf, p: *const c_char) -> String {
    assert!(buf.holds(p), "string outside the caller's buffer");
    // SAFETY: the module stored a NUL-terminated string there.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned()
}

fn to_pw(buf: &mut Buf, p: &passwd) -> Pw {
    Pw {
        name: string(buf, p.pw_name),
        passwd: string(buf, p.pw_passwd),
        uid: p.pw_uid,
        gid: p.pw_gid,
        gecos: string(buf, p.pw_gecos),
        dir: string(buf, p.pw_dir),
        shell: string(buf, p.pw_shell),
    }
}

fn to_gr(buf: &mut Buf, g: &group) -> Gr {
    assert!(
        buf.holds(g.gr_mem),
        "member array outside the caller's buffer"
    );
    assert_eq!(g.gr_mem as usize % std::mem::align_of::<*mut c_char>(), 0);
    let mut members = Vec::new();
    for i in 0.. {
        // SAFETY: the module stored a NULL-terminated pointer array there.
        let m = unsafe { *g.gr_mem.add(i) };
        if m.is_null() {
            break;
        }
        members.push(string(buf, m));
    }
    Gr {
        name: string(buf, g.gr_name),
        passwd: string(buf, g.gr_passwd),
        gid: g.gr_gid,
        members,
    }
}

fn pw(name: &str, uid: u32, gid: u32, gecos: &str, dir: &str, shell: &str) -> Pw {
    Pw {
        name: name.into(),
        passwd: "*".into(),
        uid,
        gid,
        gecos: gecos.into(),
        dir: dir.into(),
        shell: shell.into(),
    }
}

fn gr(name: &str, gid: u32, members: &[&str]) -> Gr {
    Gr {
        name: name.into(),
        passwd: "*".into(),
        gid,
        members: members.iter().map(|m| m.to_string()).collect(),
    }
}

/// A passwd lookup: by name (`Ok`) or uid (`Err`), with a `buflen`-byte buffer.
fn lookup_pw(dir: &Path, key: Result<&str, u32>, buflen: usize) -> (NssStatus, c_int, Option<Pw>) {
    let mut buf = Buf::new(buflen, 0);
    let mut p = MaybeUninit::<passwd>::zeroed();
    let mut errno = 0;
    let st = match key {
        Ok(name) => {
            let name = CString::new(name).unwrap();
            // SAFETY: valid pointers to locals, `buf` has `buflen` bytes.
            unsafe {
                getpwnam_in(
                    dir,
                    name.as_ptr(),
                    p.as_mut_ptr(),
                    buf.ptr(),
                    buflen,
                    &mut errno,
                )
            }
        }
        // SAFETY: as above.
        Err(uid) => unsafe { getpwuid_in(dir, uid, p.as_mut_ptr(), buf.ptr(), buflen, &mut errno) },
    };
    // SAFETY: zero-initialized, and only ever written with a complete passwd.
    let p = unsafe { p.assume_init() };
    let found = (st == NssStatus::Success).then(|| to_pw(&mut buf, &p));
    (st, errno, found)
}

/// A group lookup by name (`Ok`) or gid (`Err`), the buffer starting `offset` bytes off
/// alignment.
fn lookup_gr(
    dir: &Path,
    key: Result<&str, u32>,
    buflen: usize,
    offset: usize,
) -> (NssStatus, c_int, Option<Gr>) {
    let mut buf = Buf::new(buflen, offset);
    let mut g = MaybeUninit::<group>::zeroed();
    let mut errno = 0;
    let st = match key {
        Ok(name) => {
            let name = CString::new(name).unwrap();
            // SAFETY: valid pointers to locals, `buf` has `buflen` bytes.
            unsafe {
                getgrnam_in(
                    dir,
                    name.as_ptr(),
                    g.as_mut_ptr(),
                    buf.ptr(),
                    buflen,
                    &mut errno,
                )
            }
        }
        // SAFETY: as above.
        Err(gid) => unsafe { getgrgid_in(dir, gid, g.as_mut_ptr(), buf.ptr(), buflen, &mut errno) },
    };
    // SAFETY: zero-initialized, and only ever written with a complete group.
    let g = unsafe { g.assume_init() };
    let found = (st == NssStatus::Success).then(|| to_gr(&mut buf, &g));
    (st, errno, found)
}

fn found_pw(dir: &Path, key: Result<&str, u32>) -> Pw {
    let (st, errno, p) = lookup_pw(dir, key, 1024);
    assert_eq!(st, NssStatus::Success, "{key:?}: errno {errno}");
    p.unwrap()
}

fn found_gr(dir: &Path, key: Result<&str, u32>) -> Gr {
    let (st, errno, g) = lookup_gr(dir, key, 1024, 0);
    assert_eq!(st, NssStatus::Success, "{key:?}: errno {errno}");
    g.unwrap()
}

#[test]
fn passwd_by_name_and_uid() {
    let d = dir_with(PASSWD, GROUP);
    let one = pw(
        "dmsnss001",
        40001,
        40001,
        "DMS test one",
        "/home/dmsnss001",
        "/bin/sh",
    );
    assert_eq!(found_pw(d.path(), Ok("dmsnss001")), one);
    assert_eq!(found_pw(d.path(), Err(40001)), one);
    let two = pw(
        "dmsnss002",
        40002,
        40100,
        "",
        "/home/dmsnss002",
        "/bin/bash",
    );
    assert_eq!(found_pw(d.path(), Ok("dmsnss002")), two);
    assert_eq!(found_pw(d.path(), Err(40002)), two);
    assert_eq!(
        found_pw(d.path(), Ok("dmsnss003")),
        pw("dmsnss003", 40003, 40003, "", "", "")
    );
    // A gid equal to the uid asked for is not a match.
    assert_eq!(lookup_pw(d.path(), Err(40100), 1024).0, NssStatus::NotFound);
}

#[test]
fn passwd_not_found() {
    let d = dir_with(PASSWD, GROUP);
    for name in [
        "dmsnss",
        "dmsnss0011",
        "msnss001",
        "",
        "dmsnss001:*",
        "a\nb",
        "dmsnss001,x",
    ] {
        let (st, errno, _) = lookup_pw(d.path(), Ok(name), 1024);
        assert_eq!((st, errno), (NssStatus::NotFound, libc::ENOENT), "{name:?}");
    }
    for uid in [0, 4000, 40000, 400011, u32::MAX] {
        let (st, errno, _) = lookup_pw(d.path(), Err(uid), 1024);
        assert_eq!((st, errno), (NssStatus::NotFound, libc::ENOENT), "{uid}");
    }
}

#[test]
fn group_by_name_and_gid_with_members() {
    let d = dir_with(PASSWD, GROUP);
    assert_eq!(
        found_gr(d.path(), Ok("dmsnss001")),
        gr("dmsnss001", 40001, &[])
    );
    assert_eq!(found_gr(d.path(), Err(40001)), gr("dmsnss001", 40001, &[]));
    let grp = gr("dmsnssgrp", 40100, &["dmsnss001", "dmsnss002"]);
    assert_eq!(found_gr(d.path(), Ok("dmsnssgrp")), grp);
    assert_eq!(found_gr(d.path(), Err(40100)), grp);
    // Empty items in the member list are dropped.
    let vo = gr("dmsnssvo", 40200, &["dmsnss002", "dmsnss001"]);
    assert_eq!(found_gr(d.path(), Err(40200)), vo);
    assert_eq!(
        lookup_gr(d.path(), Ok("dmsnssnone"), 1024, 0).0,
        NssStatus::NotFound
    );
    assert_eq!(
        lookup_gr(d.path(), Err(40002), 1024, 0).0,
        NssStatus::NotFound
    );
}

#[test]
fn small_buffer_is_erange_then_a_big_one_works() {
    let d = dir_with(PASSWD, GROUP);
    // name, passwd, gecos, dir, shell plus their NULs.
    let need = "dmsnss001*DMS test one/home/dmsnss001/bin/sh".len() + 5;
    for len in [0, 1, 10, need - 1] {
        for key in [Ok("dmsnss001"), Err(40001)] {
            let (st, errno, _) = lookup_pw(d.path(), key, len);
            assert_eq!(
                (st, errno),
                (NssStatus::TryAgain, libc::ERANGE),
                "{len} {key:?}"
            );
        }
    }
    let (st, _, p) = lookup_pw(d.path(), Ok("dmsnss001"), need);
    assert_eq!(st, NssStatus::Success);
    assert_eq!(p.unwrap().gecos, "DMS test one");

    // Group: three pointers (8-aligned) plus "dmsnss001\0dmsnss002\0dmsnssgrp\0*\0".
    let need = 3 * 8 + 10 + 10 + 10 + 2;
    for offset in [0, 1, 3, 7] {
        for len in [0, 8, need - 1] {
            let (st, errno, _) = lookup_gr(d.path(), Ok("dmsnssgrp"), len, offset);
            assert_eq!(
                (st, errno),
                (NssStatus::TryAgain, libc::ERANGE),
                "{len}+{offset}"
            );
        }
        // Off alignment the buffer needs the padding too.
        let pad = (8 - offset) % 8;
        let (st, errno, _) = lookup_gr(d.path(), Err(40100), need + pad, offset);
        assert_eq!(st, NssStatus::Success, "{offset}: errno {errno}");
        let (st, _, g) = lookup_gr(d.path(), Err(40100), 4096, offset);
        assert_eq!(st, NssStatus::Success);
        assert_eq!(g.unwrap().members, ["dmsnss001", "dmsnss002"]);
    }
}

#[test]
fn missing_file_is_unavail_enoent() {
    let d = tempfile::tempdir().unwrap();
    let nowhere = d.path().join("nowhere");
    for dir in [d.path(), nowhere.as_path()] {
        assert_eq!(lookup_pw(dir, Ok("dmsnss001"), 1024).0, NssStatus::Unavail);
        let (st, errno, _) = lookup_pw(dir, Err(40001), 1024);
        assert_eq!((st, errno), (NssStatus::Unavail, libc::ENOENT));
        let (st, errno, _) = lookup_gr(dir, Ok("dmsnssgrp"), 1024, 0);
        assert_eq!((st, errno), (NssStatus::Unavail, libc::ENOENT));
        assert_eq!(lookup_gr(dir, Err(40100), 1024, 0).0, NssStatus::Unavail);
    }
    // A directory where the file should be is unreadable, not a crash.
    std::fs::create_dir(d.path().join("passwd")).unwrap();
    assert_eq!(
        lookup_pw(d.path(), Ok("dmsnss001"), 1024).0,
        NssStatus::Unavail
    );
}

#[test]
fn malformed_lines_are_skipped() {
    let long_gecos = "g".repeat(db::MAX_LINE);
    let bad = [
        "dmsnss001:*:40001:40001:too:many:fields:x".to_owned(),
        "dmsnss001:*:40001:40001:too few".into(),
        "dmsnss001:*:040001:40001::/h:/s".into(),
        "dmsnss001:*:+40001:40001::/h:/s".into(),
        "dmsnss001:*:40001:-1::/h:/s".into(),
        "dmsnss001:*:40001:4294967296::/h:/s".into(),
        "dmsnss001:*::40001::/h:/s".into(),
        "dmsnss001:*:4x0001:40001::/h:/s".into(),
        ":*:40001:40001::/h:/s".into(),
        "dmsnss001:*:40001:40001:nul\0inside:/h:/s".into(),
        "#dmsnss001:*:40001:40001::/h:/s".into(),
        format!("dmsnss001:*:40001:40001:{long_gecos}:/h:/s"),
        String::new(),
        "garbage".into(),
        ":::::::".into(),
    ];
    let good = "dmsnss001:*:40001:40001:good:/home/dmsnss001:/bin/sh";
    let passwd = format!(
        "{}\n{good}\ndmsnss001:*:40009:40009:second:/x:/y\n",
        bad.join("\n")
    );
    let group = "dmsnssgrp:*:40100:a:b\ndmsnssgrp:*:x:a\ndmsnssgrp:*:40100:dmsnss001\n";
    let d = dir_with(&passwd, group);
    for key in [Ok("dmsnss001"), Err(40001)] {
        let p = found_pw(d.path(), key);
        assert_eq!((p.uid, p.gecos.as_str()), (40001, "good"), "{key:?}");
    }
    // The first valid line wins; later duplicates are not seen by name.
    assert_eq!(found_pw(d.path(), Err(40009)).gecos, "second");
    assert_eq!(found_gr(d.path(), Ok("dmsnssgrp")).members, ["dmsnss001"]);

    // Enumeration skips them too.
    let mut en = Enumeration::new();
    let names: Vec<_> = enumerate_pw(&mut en, d.path(), 1024)
        .into_iter()
        .map(|p| p.gecos)
        .collect();
    assert_eq!(names, ["good", "second"]);
}

#[test]
fn a_replaced_file_is_seen() {
    let d = dir_with(PASSWD, GROUP);
    assert_eq!(found_pw(d.path(), Ok("dmsnss001")).uid, 40001);
    replace(
        d.path(),
        "passwd",
        "dmsnss001:*:40011:40011::/home/dmsnss001:/bin/sh\n",
    );
    assert_eq!(found_pw(d.path(), Ok("dmsnss001")).uid, 40011);
    assert_eq!(lookup_pw(d.path(), Err(40001), 1024).0, NssStatus::NotFound);
    replace(d.path(), "group", "dmsnssgrp:*:40100:dmsnss003\n");
    assert_eq!(found_gr(d.path(), Err(40100)).members, ["dmsnss003"]);
    std::fs::remove_file(d.path().join("passwd")).unwrap();
    assert_eq!(
        lookup_pw(d.path(), Ok("dmsnss001"), 1024).0,
        NssStatus::Unavail
    );
}

fn enumerate_pw(en: &mut Enumeration, dir: &Path, buflen: usize) -> Vec<Pw> {
    let mut all = Vec::new();
    loop {
        let mut buf = Buf::new(buflen, 0);
        let mut p = MaybeUninit::<passwd>::zeroed();
        let mut errno = 0;
        // SAFETY: valid pointers to locals, `buf` has `buflen` bytes.
        let st = unsafe { getpwent_in(en, dir, p.as_mut_ptr(), buf.ptr(), buflen, &mut errno) };
        match st {
            NssStatus::Success => {
                // SAFETY: a complete passwd was written.
                all.push(to_pw(&mut buf, unsafe { p.assume_init_ref() }));
            }
            NssStatus::NotFound => {
                assert_eq!(errno, libc::ENOENT);
                return all;
            }
            other => panic!("getpwent: {other:?} errno {errno}"),
        }
    }
}

#[test]
fn enumeration() {
    let d = dir_with(PASSWD, GROUP);
    let mut en = Enumeration::new();
    en.set(d.path(), "passwd").unwrap();
    let names: Vec<_> = enumerate_pw(&mut en, d.path(), 1024)
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["dmsnss001", "dmsnss002", "dmsnss003"]);
    // At the end it stays at the end; set starts over.
    assert!(enumerate_pw(&mut en, d.path(), 1024).is_empty());
    en.set(d.path(), "passwd").unwrap();
    assert_eq!(enumerate_pw(&mut en, d.path(), 1024).len(), 3);
    en.end();
    // Without set, the first get reads the file.
    assert_eq!(enumerate_pw(&mut en, d.path(), 1024).len(), 3);

    // ERANGE does not skip the entry: the retry with a bigger buffer returns it.
    en.set(d.path(), "passwd").unwrap();
    let mut errno = 0;
    let mut small = Buf::new(8, 0);
    let mut p = MaybeUninit::<passwd>::zeroed();
    // SAFETY: valid pointers to locals, `small` has 8 bytes.
    let st = unsafe {
        getpwent_in(
            &mut en,
            d.path(),
            p.as_mut_ptr(),
            small.ptr(),
            8,
            &mut errno,
        )
    };
    assert_eq!((st, errno), (NssStatus::TryAgain, libc::ERANGE));
    assert_eq!(enumerate_pw(&mut en, d.path(), 1024)[0].name, "dmsnss001");

    // The contents were read at set: a replacement shows at the next set.
    en.set(d.path(), "passwd").unwrap();
    replace(d.path(), "passwd", "");
    assert_eq!(enumerate_pw(&mut en, d.path(), 1024).len(), 3);
    en.set(d.path(), "passwd").unwrap();
    assert!(enumerate_pw(&mut en, d.path(), 1024).is_empty());

    // Groups.
    en.set(d.path(), "group").unwrap();
    let mut groups = Vec::new();
    loop {
        let mut buf = Buf::new(1024, 3);
        let mut g = MaybeUninit::<group>::zeroed();
        // SAFETY: valid pointers to locals, `buf` has 1024 bytes.
        let st = unsafe {
            getgrent_in(
                &mut en,
                d.path(),
                g.as_mut_ptr(),
                buf.ptr(),
                1024,
                &mut errno,
            )
        };
        if st != NssStatus::Success {
            assert_eq!(st, NssStatus::NotFound);
            break;
        }
        // SAFETY: a complete group was written.
        groups.push(to_gr(&mut buf, unsafe { g.assume_init_ref() }));
    }
    assert_eq!(groups.len(), 4);
    assert_eq!(
        groups[2],
        gr("dmsnssvo", 40200, &["dmsnss002", "dmsnss001"])
    );

    // A missing file is UNAVAIL at set and at get.
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(en.set(empty.path(), "passwd"), Err(libc::ENOENT));
    en.end();
    let mut buf = Buf::new(64, 0);
    // SAFETY: valid pointers to locals, `buf` has 64 bytes.
    let st = unsafe {
        getpwent_in(
            &mut en,
            empty.path(),
            p.as_mut_ptr(),
            buf.ptr(),
            64,
            &mut errno,
        )
    };
    assert_eq!((st, errno), (NssStatus::Unavail, libc::ENOENT));
}

/// initgroups_dyn on a malloc'd array of `size` slots holding `initial`.
fn initgroups(
    dir: &Path,
    user: &str,
    skip: gid_t,
    initial: &[gid_t],
    size: c_long,
    limit: c_long,
) -> (NssStatus, Vec<gid_t>, c_long) {
    let user = CString::new(user).unwrap();
    let size_bytes = usize::try_from(size).unwrap().max(1) * std::mem::size_of::<gid_t>();
    // SAFETY: plain allocation, freed below with free().
    let mut groups = unsafe { libc::malloc(size_bytes) }.cast::<gid_t>();
    assert!(!groups.is_null());
    for (i, &g) in initial.iter().enumerate() {
        // SAFETY: `initial` fits in `size` slots (asserted by the callers' choices).
        unsafe { groups.add(i).write(g) };
    }
    let mut start = initial.len() as c_long;
    let mut size = size;
    let mut errno = 0;
    // SAFETY: valid pointers to locals; `groups` is a malloc'd array of `size` gids.
    let st = unsafe {
        initgroups_in(
            dir,
            user.as_ptr(),
            skip,
            &mut start,
            &mut size,
            &mut groups,
            limit,
            &mut errno,
        )
    };
    assert!(start <= size);
    // SAFETY: the first `start` slots are initialized.
    let got = unsafe { std::slice::from_raw_parts(groups, start as usize) }.to_vec();
    // SAFETY: malloc'd above or realloc'd by the module; freed once.
    unsafe { libc::free(groups.cast()) };
    (st, got, size)
}

#[test]
fn initgroups_dyn() {
    let d = dir_with(PASSWD, GROUP);
    let (st, got, _) = initgroups(d.path(), "dmsnss001", 40001, &[40001], 1, 0);
    assert_eq!(st, NssStatus::Success);
    assert_eq!(got, [40001, 40100, 40200]);
    // The primary group is skipped even when the user is listed in it.
    let (_, got, _) = initgroups(d.path(), "dmsnss002", 40100, &[40100], 1, 0);
    assert_eq!(got, [40100, 40200]);
    // Already present gids are not repeated.
    let (_, got, _) = initgroups(d.path(), "dmsnss001", 40001, &[40001, 40200], 4, 0);
    assert_eq!(got, [40001, 40200, 40100]);
    // The limit caps the array.
    let (st, got, size) = initgroups(d.path(), "dmsnss001", 40001, &[40001], 1, 2);
    assert_eq!(
        (st, got.as_slice(), size),
        (NssStatus::Success, &[40001, 40100][..], 2)
    );
    // An empty array to start with.
    let (_, got, _) = initgroups(d.path(), "dmsnss001", 0, &[], 0, 0);
    assert_eq!(got, [40100, 40200]);
    // No groups: success with nothing added; prefixes and suffixes of names do not match.
    for user in ["dmsnss003", "dmsnss00", "msnss001", "dmsnssnone"] {
        let (st, got, _) = initgroups(d.path(), user, 1, &[1], 1, 0);
        assert_eq!(
            (st, got.as_slice()),
            (NssStatus::Success, &[1][..]),
            "{user}"
        );
    }
    // Missing file.
    let empty = tempfile::tempdir().unwrap();
    let (st, got, _) = initgroups(empty.path(), "dmsnss001", 1, &[1], 1, 0);
    assert_eq!((st, got.as_slice()), (NssStatus::Unavail, &[1][..]));
}

#[test]
fn null_pointers_are_unavail_einval() {
    let d = dir_with(PASSWD, GROUP);
    let name = CString::new("dmsnss001").unwrap();
    let mut buf = Buf::new(1024, 0);
    let mut p = MaybeUninit::<passwd>::zeroed();
    let mut g = MaybeUninit::<group>::zeroed();
    let mut errno = 0;
    let dir = d.path();
    // SAFETY: every pointer is null or valid; the module must check for null.
    unsafe {
        let st = getpwnam_in(dir, null(), p.as_mut_ptr(), buf.ptr(), 1024, &mut errno);
        assert_eq!((st, errno), (NssStatus::Unavail, libc::EINVAL));
        errno = 0;
        let st = getpwnam_in(dir, name.as_ptr(), null_mut(), buf.ptr(), 1024, &mut errno);
        assert_eq!((st, errno), (NssStatus::Unavail, libc::EINVAL));
        errno = 0;
        let st = getpwuid_in(dir, 40001, p.as_mut_ptr(), null_mut(), 1024, &mut errno);
        assert_eq!((st, errno), (NssStatus::Unavail, libc::EINVAL));
        let st = getpwuid_in(dir, 40001, p.as_mut_ptr(), buf.ptr(), 1024, null_mut());
        assert_eq!(st, NssStatus::Unavail);
        errno = 0;
        let st = getgrnam_in(dir, null(), g.as_mut_ptr(), buf.ptr(), 1024, &mut errno);
        assert_eq!((st, errno), (NssStatus::Unavail, libc::EINVAL));
        let st = getgrgid_in(dir, 40100, null_mut(), buf.ptr(), 1024, null_mut());
        assert_eq!(st, NssStatus::Unavail);
        let mut en = Enumeration::new();
        errno = 0;
        let st = getpwent_in(&mut en, dir, null_mut(), buf.ptr(), 1024, &mut errno);
        assert_eq!((st, errno), (NssStatus::Unavail, libc::EINVAL));
        errno = 0;
        let st = getgrent_in(&mut en, dir, g.as_mut_ptr(), null_mut(), 1024, &mut errno);
        assert_eq!((st, errno), (NssStatus::Unavail, libc::EINVAL));

        let (mut start, mut size) = (0 as c_long, 0 as c_long);
        let mut groups: *mut gid_t = null_mut();
        errno = 0;
        let st = initgroups_in(
            dir,
            null(),
            0,
            &mut start,
            &mut size,
            &mut groups,
            0,
            &mut errno,
        );
        assert_eq!((st, errno), (NssStatus::Unavail, libc::EINVAL));
        errno = 0;
        let st = initgroups_in(
            dir,
            name.as_ptr(),
            0,
            null_mut(),
            &mut size,
            &mut groups,
            0,
            &mut errno,
        );
        assert_eq!((st, errno), (NssStatus::Unavail, libc::EINVAL));
        let st = initgroups_in(
            dir,
            name.as_ptr(),
            0,
            &mut start,
            &mut size,
            null_mut(),
            0,
            &mut errno,
        );
        assert_eq!(st, NssStatus::Unavail);
        let st = initgroups_in(
            dir,
            name.as_ptr(),
            0,
            &mut start,
            &mut size,
            &mut groups,
            0,
            null_mut(),
        );
        assert_eq!(st, NssStatus::Unavail);
        // start beyond size is refused rather than written past.
        start = 5;
        errno = 0;
        let st = initgroups_in(
            dir,
            name.as_ptr(),
            0,
            &mut start,
            &mut size,
            &mut groups,
            0,
            &mut errno,
        );
        assert_eq!((st, errno), (NssStatus::Unavail, libc::EINVAL));
        assert!(groups.is_null());

        // The exported entry points check before touching the (build-time) directory.
        errno = 0;
        let st = _nss_dms_getpwnam_r(null(), p.as_mut_ptr(), buf.ptr(), 1024, &mut errno);
        assert_eq!((st, errno), (NssStatus::Unavail, libc::EINVAL));
        let st = _nss_dms_getgrgid_r(40100, null_mut(), null_mut(), 0, null_mut());
        assert_eq!(st, NssStatus::Unavail);
        let st =
            _nss_dms_initgroups_dyn(null(), 0, null_mut(), null_mut(), null_mut(), 0, null_mut());
        assert_eq!(st, NssStatus::Unavail);
    }
}

#[test]
fn a_panic_is_unavail() {
    assert_eq!(
        guarded(|| panic!("test panic, expected")),
        NssStatus::Unavail
    );
    assert_eq!(guarded(|| NssStatus::NotFound), NssStatus::NotFound);
}

#[test]
fn every_entry_of_a_big_file_is_found() {
    // Names sharing prefixes, uids equal to earlier lines' gids; the last line has no newline.
    let passwd: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                "dmsnss{i}:*:{}:{}:g{i}:/home/dmsnss{i}:/bin/sh",
                40000 + i,
                40999 - i
            )
        })
        .collect();
    let group: Vec<String> = (0..1000)
        .map(|i| format!("dmsnssg{i}:*:{}:dmsnss{i},dmsnss{}", 40000 + i, i + 1))
        .collect();
    let d = dir_with(&passwd.join("\n"), &group.join("\n"));
    for i in 0..1000u32 {
        let name = format!("dmsnss{i}");
        let p = found_pw(d.path(), Ok(&name));
        assert_eq!((p.uid, p.gid), (40000 + i, 40999 - i), "{name}");
        assert_eq!(found_pw(d.path(), Err(40000 + i)).name, name);
        let g = found_gr(d.path(), Err(40000 + i));
        assert_eq!(g.name, format!("dmsnssg{i}"));
        assert_eq!(found_gr(d.path(), Ok(&g.name)).gid, 40000 + i);
    }
    let (_, got, _) = initgroups(d.path(), "dmsnss7", 0, &[], 0, 0);
    assert_eq!(got, [40006, 40007]);
    assert_eq!(
        lookup_pw(d.path(), Ok("dmsnss1000"), 1024).0,
        NssStatus::NotFound
    );
    assert_eq!(lookup_pw(d.path(), Err(41000), 1024).0, NssStatus::NotFound);
}
