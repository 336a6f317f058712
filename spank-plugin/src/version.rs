//! The Slurm release a plugin is built for, as `SLURM_VERSION_NUMBER` (`0xMMmmuu`).
//!
//! Slurm loads a SPANK plugin only when the major and minor release of its `plugin_version`
//! symbol equal its own (`src/common/plugin.c`: the mask is `0xffff00` for type `spank`), so
//! the number is fixed when the plugin is built. `build.rs` takes it from, in order: the
//! environment variable `DMS_SLURM_VERSION` (`22.05`, `22.05.8` or `0x160508`), the
//! `SLURM_VERSION_NUMBER` line of `slurm/slurm_version.h` (package libslurm-dev), and the output
//! of `slurmd -V` (`slurm-wlm 22.05.8`). This file is compiled into both the build script and
//! the library (for its tests).

/// `SLURM_VERSION_NUM(major, minor, micro)`; each part is one byte.
pub fn number(major: u32, minor: u32, micro: u32) -> Option<u32> {
    if major > 0xff || minor > 0xff || micro > 0xff {
        return None;
    }
    Some((major << 16) | (minor << 8) | micro)
}

/// `major.minor.micro` of a version number.
pub fn display(v: u32) -> String {
    format!("{}.{:02}.{}", (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff)
}

/// The value of `#define SLURM_VERSION_NUMBER 0x160508` in the text of `slurm_version.h`.
pub fn from_header(text: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        if w.next()? != "#define" || w.next()? != "SLURM_VERSION_NUMBER" {
            return None;
        }
        parse_hex(w.next()?)
    })
}

/// A release as a person or a program writes it: `22.05`, `22.05.8`, `0x160508`, or a line
/// holding one (`slurm-wlm 22.05.8`, `slurm 23.02.7-1`). The micro part may carry a package
/// suffix and may be missing (then 0).
pub fn from_release(text: &str) -> Option<u32> {
    text.split_whitespace().find_map(|word| {
        if word.starts_with("0x") {
            return parse_hex(word);
        }
        let mut parts = word.splitn(3, '.');
        let major = digits(parts.next()?, false)?;
        let minor = digits(parts.next()?, false)?;
        let micro = match parts.next() {
            None => 0,
            Some(m) => digits(m, true)?,
        };
        number(major, minor, micro)
    })
}

fn parse_hex(w: &str) -> Option<u32> {
    let v = u32::from_str_radix(w.strip_prefix("0x")?, 16).ok()?;
    (v <= 0xff_ffff).then_some(v)
}

/// A decimal number of 1 to 3 digits; with `prefix`, the digits a word starts with.
fn digits(w: &str, prefix: bool) -> Option<u32> {
    let n = w.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 || n > 3 || (!prefix && n != w.len()) {
        return None;
    }
    w[..n].parse().ok()
}
