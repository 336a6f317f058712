//! Reading the published files and finding entries in them, without any C types.
//!
//! The files are read whole on every call (dmsd replaces them by rename, so each read sees one
//! complete version) and scanned with byte searches; only lines that contain the key are parsed.

use std::ffi::c_int;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Lines longer than this are skipped (a group with thousands of members still fits).
pub const MAX_LINE: usize = 1 << 20;
/// Files larger than this are refused (UNAVAIL, EFBIG) rather than read into the caller.
pub const MAX_FILE: u64 = 64 << 20;

/// One valid passwd(5) line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PwEntry<'a> {
    pub name: &'a [u8],
    pub passwd: &'a [u8],
    pub uid: u32,
    pub gid: u32,
    pub gecos: &'a [u8],
    pub dir: &'a [u8],
    pub shell: &'a [u8],
}

/// One valid group(5) line; `members` is the raw comma-separated field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrEntry<'a> {
    pub name: &'a [u8],
    pub passwd: &'a [u8],
    pub gid: u32,
    members: &'a [u8],
}

impl<'a> GrEntry<'a> {
    /// The member names, empty items (`a,,b`, a trailing comma) left out.
    pub fn members(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.members.split(|&b| b == b',').filter(|m| !m.is_empty())
    }
}

/// Reads `dir/file` whole. Errors are errno values (ENOENT when it does not exist).
pub fn read_db(dir: &Path, file: &str) -> Result<Vec<u8>, c_int> {
    let errno = |e: io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    let mut f = File::open(dir.join(file)).map_err(errno)?;
    let len = f.metadata().map_err(errno)?.len();
    if len > MAX_FILE {
        return Err(libc::EFBIG);
    }
    let mut data = Vec::new();
    // One spare byte lets the read that finds EOF happen without growing the buffer.
    let want = usize::try_from(len).map_err(|_| libc::EFBIG)? + 1;
    data.try_reserve_exact(want).map_err(|_| libc::ENOMEM)?;
    f.by_ref()
        .take(MAX_FILE + 1)
        .read_to_end(&mut data)
        .map_err(errno)?;
    if data.len() as u64 > MAX_FILE {
        return Err(libc::EFBIG);
    }
    Ok(data)
}

/// Whether `name` can be a key at all (non-empty, no separator, no newline, no NUL).
pub fn valid_key(name: &[u8]) -> bool {
    !name.is_empty() && !name.iter().any(|&b| matches!(b, b':' | b'\n' | b',' | 0))
}

/// A decimal id as dmsd writes it: digits only, no sign, no leading zero, fits in 32 bits.
fn parse_id(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || (s.len() > 1 && s[0] == b'0') {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(b - b'0');
    }
    u32::try_from(v).ok()
}

/// Whether a line may be parsed at all: bounded, no NUL (it would cut the C strings), not a
/// comment.
fn usable(line: &[u8]) -> bool {
    line.len() <= MAX_LINE && line.first() != Some(&b'#') && memchr(0, line).is_none()
}

/// Parses `name:passwd:uid:gid:gecos:dir:shell`; `None` for anything else.
pub fn parse_pw(line: &[u8]) -> Option<PwEntry<'_>> {
    if !usable(line) {
        return None;
    }
    let mut f = line.split(|&b| b == b':');
    let e = PwEntry {
        name: f.next()?,
        passwd: f.next()?,
        uid: parse_id(f.next()?)?,
        gid: parse_id(f.next()?)?,
        gecos: f.next()?,
        dir: f.next()?,
        shell: f.next()?,
    };
    (f.next().is_none() && valid_key(e.name)).then_some(e)
}

/// Parses `name:passwd:gid:member,member`; `None` for anything else.
pub fn parse_gr(line: &[u8]) -> Option<GrEntry<'_>> {
    if !usable(line) {
        return None;
    }
    let mut f = line.split(|&b| b == b':');
    let e = GrEntry {
        name: f.next()?,
        passwd: f.next()?,
        gid: parse_id(f.next()?)?,
        members: f.next()?,
    };
    (f.next().is_none() && valid_key(e.name)).then_some(e)
}

/// The lines of `data` that contain `needle`, in file order, each at most once. A needle
/// starting with a newline finds lines that start with the rest of it (not the first line).
fn candidate_lines<'a, 'n>(
    data: &'a [u8],
    needle: &'n [u8],
) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
    let mut from = 0;
    let skip = usize::from(needle.first() == Some(&b'\n'));
    std::iter::from_fn(move || {
        let hit = from + memmem(data.get(from..)?, needle)? + skip;
        let start = memrchr(b'\n', &data[..hit]).map_or(0, |i| i + 1);
        let end = memchr(b'\n', &data[hit..]).map_or(data.len(), |i| hit + i);
        // The newline ending this line may start the next match.
        from = end;
        Some(&data[start..end])
    })
}

/// The first line containing `needle` that parses into an entry `want` accepts.
fn first<'a, E>(
    data: &'a [u8],
    needle: &[u8],
    parse: fn(&'a [u8]) -> Option<E>,
    want: impl Fn(&E) -> bool,
) -> Option<E> {
    for line in candidate_lines(data, needle) {
        if let Some(e) = parse(line).filter(&want) {
            return Some(e);
        }
    }
    None
}

/// The first entry named `name`: the first line, else a line starting with `name:`, found as
/// `\nname:` (which memmem also finds ~1.5x faster than `name:` among similar names).
fn by_name<'a, E>(
    data: &'a [u8],
    name: &[u8],
    parse: fn(&'a [u8]) -> Option<E>,
    name_of: fn(&E) -> &[u8],
) -> Option<E> {
    if !valid_key(name) {
        return None;
    }
    let line0 = next_line(data, 0).map_or(&data[..0], |(l, _)| l);
    if let Some(e) = parse(line0).filter(|e| name_of(e) == name) {
        return Some(e);
    }
    let needle = [b"\n", name, b":"].concat();
    first(data, &needle, parse, |e| name_of(e) == name)
}

/// The first passwd entry named `name`.
pub fn pw_by_name<'a>(data: &'a [u8], name: &[u8]) -> Option<PwEntry<'a>> {
    by_name(data, name, parse_pw, |e| e.name)
}

/// The first passwd entry with uid `uid`.
pub fn pw_by_uid(data: &[u8], uid: u32) -> Option<PwEntry<'_>> {
    let needle = format!(":{uid}:").into_bytes();
    first(data, &needle, parse_pw, |e| e.uid == uid)
}

/// The first group entry named `name`.
pub fn gr_by_name<'a>(data: &'a [u8], name: &[u8]) -> Option<GrEntry<'a>> {
    by_name(data, name, parse_gr, |e| e.name)
}

/// The first group entry with gid `gid`.
pub fn gr_by_gid(data: &[u8], gid: u32) -> Option<GrEntry<'_>> {
    let needle = format!(":{gid}:").into_bytes();
    first(data, &needle, parse_gr, |e| e.gid == gid)
}

/// The gids of the groups that list `user` as a member, in file order, without `skip` and
/// without repeats.
pub fn groups_of(data: &[u8], user: &[u8], skip: u32) -> Vec<u32> {
    let mut gids = Vec::new();
    if !valid_key(user) {
        return gids;
    }
    for g in candidate_lines(data, user).filter_map(parse_gr) {
        if g.gid != skip && !gids.contains(&g.gid) && g.members().any(|m| m == user) {
            gids.push(g.gid);
        }
    }
    gids
}

/// The line starting at `pos` and the position after it, or `None` at the end of `data`.
pub fn next_line(data: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = data.get(pos..).filter(|r| !r.is_empty())?;
    Some(match memchr(b'\n', rest) {
        Some(i) => (&rest[..i], pos + i + 1),
        None => (rest, data.len()),
    })
}

/// Offset of the first `b` in `s` (libc's vectorized memchr).
fn memchr(b: u8, s: &[u8]) -> Option<usize> {
    // SAFETY: `s` is valid for reads of `s.len()` bytes; memchr reads no further.
    let p = unsafe { libc::memchr(s.as_ptr().cast(), c_int::from(b), s.len()) };
    (!p.is_null()).then(|| p as usize - s.as_ptr() as usize)
}

/// Offset of the last `b` in `s`.
fn memrchr(b: u8, s: &[u8]) -> Option<usize> {
    // SAFETY: `s` is valid for reads of `s.len()` bytes; memrchr reads no further.
    let p = unsafe { libc::memrchr(s.as_ptr().cast(), c_int::from(b), s.len()) };
    (!p.is_null()).then(|| p as usize - s.as_ptr() as usize)
}

/// Offset of the first occurrence of `needle` in `hay` (libc's memmem; `needle` non-empty).
fn memmem(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    // SAFETY: both slices are valid for reads of their lengths; memmem reads no further.
    let p = unsafe {
        libc::memmem(
            hay.as_ptr().cast(),
            hay.len(),
            needle.as_ptr().cast(),
            needle.len(),
        )
    };
    (!p.is_null()).then(|| p as usize - hay.as_ptr() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_canonical_decimal() {
        assert_eq!(parse_id(b"0"), Some(0));
        assert_eq!(parse_id(b"40001"), Some(40001));
        assert_eq!(parse_id(b"4294967295"), Some(u32::MAX));
        for bad in [
            &b""[..],
            b"040001",
            b"+1",
            b"-1",
            b"4294967296",
            b"12a",
            b" 1",
            b"99999999999",
        ] {
            assert_eq!(parse_id(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn memmem_agrees_with_a_naive_search() {
        let naive = |h: &[u8], n: &[u8]| h.windows(n.len()).position(|w| w == n);
        let mut x: u32 = 12345;
        let mut rnd = |m: u32| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) % m
        };
        for round in 0..3000 {
            let alphabet: &[u8] = if round % 2 == 0 {
                b"ab:"
            } else {
                b"ab:\n0123456789"
            };
            let len = rnd(120) as usize;
            let hay: Vec<u8> = (0..len)
                .map(|_| alphabet[rnd(alphabet.len() as u32) as usize])
                .collect();
            let nlen = 1 + rnd(6) as usize;
            let needle: Vec<u8> = if len > nlen && rnd(2) == 0 {
                let at = rnd((len - nlen) as u32) as usize;
                hay[at..at + nlen].to_vec()
            } else {
                (0..nlen)
                    .map(|_| alphabet[rnd(alphabet.len() as u32) as usize])
                    .collect()
            };
            for from in [0, 1, 3] {
                let h = hay.get(from..).unwrap_or_default();
                assert_eq!(memmem(h, &needle), naive(h, &needle), "{h:?} {needle:?}");
            }
        }
        let big: Vec<u8> = (0..100_000u32)
            .flat_map(|i| format!("x{i}:").into_bytes())
            .collect();
        assert_eq!(memmem(&big, b"x99999:"), naive(&big, b"x99999:"));
        assert_eq!(memmem(&big, b"x100000:"), None);
    }

    #[test]
    fn candidate_lines_each_once_in_order() {
        let data = b"a:1:x:1\nb:2:1:\n:1:\nc";
        let got: Vec<_> = candidate_lines(data, b":1:").collect();
        assert_eq!(got, [&b"a:1:x:1"[..], b"b:2:1:", b":1:"]);
        assert_eq!(candidate_lines(data, b"c").count(), 1);
        assert_eq!(candidate_lines(b"", b"c").count(), 0);
        let data = b"k:1\nk:2\nk:3\nxk:4\nk:5";
        let got: Vec<_> = candidate_lines(data, b"\nk:").collect();
        assert_eq!(got, [&b"k:2"[..], b"k:3", b"k:5"]);
    }

    #[test]
    fn next_line_walks_all_lines() {
        let data = b"a\n\nb";
        let mut pos = 0;
        let mut lines = Vec::new();
        while let Some((l, p)) = next_line(data, pos) {
            lines.push(l);
            pos = p;
        }
        assert_eq!(lines, [&b"a"[..], b"", b"b"]);
    }
}
