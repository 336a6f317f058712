//! Parsing of the human-friendly quantities used in policy files: sizes,
//! durations, network rates, CPU amounts and kernel CPU lists.

/// A quantity that could not be parsed or is out of range; the message says
/// what was expected (the caller adds the field and value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, UnitError> {
    Err(UnitError(msg.into()))
}

/// The largest network rate, in bits per second (100gbit).
pub const MAX_RATE_BITS: u64 = 100_000_000_000;

/// The largest CPU limit, in millicores (4096 cores).
pub const MAX_MILLICORES: u64 = 4096 * 1000;

/// CPUs and memory nodes are numbered below this.
pub const MAX_CPU_INDEX: u32 = 8192;

const SIZE_EXPECTED: &str =
    "expected a size in bytes or with a K/M/G/T suffix (\"512M\", \"8G\", \"1GiB\")";
const DURATION_EXPECTED: &str =
    "expected a duration in seconds or with an s/m/h/d suffix (\"30s\", \"10m\", \"2h\", \"7d\")";
const RATE_EXPECTED: &str = "expected a rate in bits per second: a number with the decimal unit \"bit\", \"kbit\", \"mbit\" or \"gbit\" (\"200mbit\", \"1.5gbit\")";
const RATE_BYTES: &str = "byte units are not accepted (tc reads \"mbps\" as megabytes per second); write bits per second with \"bit\", \"kbit\", \"mbit\" or \"gbit\" (\"200mbit\")";
const CPU_EXPECTED: &str = "expected cores (\"4\", \"0.5\") or a percentage (\"250%\")";

/// Splits `s` into its leading ASCII digits and the rest.
fn split_digits(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

/// Parses a size string: digits with an optional binary (1024-based) K, M, G
/// or T suffix, optionally followed by `B` or `iB` (`"512MiB"`, `"8G"`,
/// `"100"`, `"4KB"`). Returns bytes.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let (digits, suffix) = split_digits(s);
    if digits.is_empty() {
        return err(SIZE_EXPECTED);
    }
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return err(SIZE_EXPECTED),
    };
    let too_big = || UnitError("too large (at most 16 EiB)".into());
    let n: u64 = digits.parse().map_err(|_| too_big())?;
    n.checked_mul(1u64 << shift).ok_or_else(too_big)
}

/// Parses a duration string: digits with an optional `s`, `m`, `h` or `d`
/// suffix (no suffix means seconds). Returns seconds.
pub fn parse_duration(s: &str) -> Result<u64, UnitError> {
    let (digits, suffix) = split_digits(s);
    if digits.is_empty() {
        return err(DURATION_EXPECTED);
    }
    let unit = match suffix {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return err(DURATION_EXPECTED),
    };
    let too_big = || UnitError("too large".into());
    let n: u64 = digits.parse().map_err(|_| too_big())?;
    n.checked_mul(unit).ok_or_else(too_big)
}

/// Parses a network rate: a decimal number (`"200"`, `"1.5"`) followed by
/// `bit`, `kbit`, `mbit` or `gbit`, case-insensitive, with decimal SI
/// prefixes (`1mbit` = 1 000 000 bit/s). Returns bits per second, which must
/// be a whole number, at least 1 and at most [`MAX_RATE_BITS`]. Byte units
/// (`"mbps"`, `"MB/s"`) are refused with a hint, since tc reads `mbps` as
/// megabytes per second.
pub fn parse_rate(s: &str) -> Result<u64, UnitError> {
    let (int, rest) = split_digits(s);
    let (frac, unit) = match rest.strip_prefix('.') {
        Some(after) => {
            let (frac, unit) = split_digits(after);
            if frac.is_empty() {
                return err(RATE_EXPECTED);
            }
            (frac, unit)
        }
        None => ("", rest),
    };
    if int.is_empty() {
        return err(RATE_EXPECTED);
    }
    let unit = unit.to_ascii_lowercase();
    let per_unit: u128 = match unit.as_str() {
        "bit" => 1,
        "kbit" => 1_000,
        "mbit" => 1_000_000,
        "gbit" => 1_000_000_000,
        u if is_byte_rate_unit(u) => return err(RATE_BYTES),
        _ => return err(RATE_EXPECTED),
    };
    // As in parse_cpu: zeros that carry no value are dropped so that the
    // arithmetic stays in range.
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    if int.len() > 12 {
        return err("above the maximum of 100gbit");
    }
    // A unit is at most 10^9 bits, so a longer fraction cannot be whole.
    if frac.len() > 9 {
        return err("more precise than 1 bit/s");
    }
    let digits = |d: &str| -> Result<u128, UnitError> {
        if d.is_empty() {
            Ok(0)
        } else {
            d.parse().map_err(|_| UnitError(RATE_EXPECTED.into()))
        }
    };
    let denom = 10u128.pow(frac.len() as u32);
    let scaled = (digits(int)? * denom + digits(frac)?) * per_unit;
    if scaled == 0 {
        return err("must be greater than 0");
    }
    let bits = scaled / denom;
    if bits == 0 {
        return err("below 1 bit/s");
    }
    if scaled % denom != 0 {
        return err("more precise than 1 bit/s");
    }
    match u64::try_from(bits) {
        Ok(bits) if bits <= MAX_RATE_BITS => Ok(bits),
        _ => err("above the maximum of 100gbit"),
    }
}

/// Whether a lowercase unit names bytes per second (`"mbps"`, `"mb/s"`,
/// `"kib/s"`, `"mb"`, ...) rather than bits.
fn is_byte_rate_unit(unit: &str) -> bool {
    let core = unit
        .strip_suffix("/s")
        .or_else(|| unit.strip_suffix("ps"))
        .unwrap_or(unit);
    matches!(
        core,
        "b" | "kb" | "mb" | "gb" | "tb" | "kib" | "mib" | "gib" | "tib" | "byte" | "bytes"
    )
}

/// Formats bits per second with the largest decimal unit that divides them
/// exactly (`200mbit`, `1500mbit`, `64bit`), in the syntax [`parse_rate`]
/// accepts and tc understands.
pub fn format_rate(bits: u64) -> String {
    for (unit, suffix) in [
        (1_000_000_000, "gbit"),
        (1_000_000, "mbit"),
        (1_000, "kbit"),
    ] {
        if bits != 0 && bits % unit == 0 {
            return format!("{}{suffix}", bits / unit);
        }
    }
    format!("{bits}bit")
}

/// Checks an exact millicore amount against the accepted range.
fn check_millicores(millicores: u128) -> Result<u32, UnitError> {
    if millicores > u128::from(MAX_MILLICORES) {
        return err("above the maximum of 4096 cores");
    }
    u32::try_from(millicores).map_err(|_| UnitError("above the maximum of 4096 cores".into()))
}

/// Parses a CPU amount written as cores (`"4"`, `"0.5"`) or as a percentage
/// of one core (`"250%"`). Returns millicores, which must be at least 1 and
/// at most 4096 cores.
pub fn parse_cpu(s: &str) -> Result<u32, UnitError> {
    // Millicores per unit written: a core is 1000, one percent is 10.
    let (number, per_unit) = match s.strip_suffix('%') {
        Some(n) => (n, 10u128),
        None => (s, 1000u128),
    };
    let (int, rest) = split_digits(number);
    let frac = match rest.strip_prefix('.') {
        Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => f,
        None if rest.is_empty() => "",
        _ => return err(CPU_EXPECTED),
    };
    if int.is_empty() {
        return err(CPU_EXPECTED);
    }
    // Leading zeros and trailing fraction zeros carry no value; dropping them
    // keeps the arithmetic below in range for long but harmless inputs.
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    if int.len() > 12 || frac.len() > 12 {
        return if int.len() > 12 {
            err("above the maximum of 4096 cores")
        } else {
            err("more precise than 1 millicore (0.001 cores)")
        };
    }
    let int_v: u128 = if int.is_empty() { 0 } else { parse_u128(int)? };
    let frac_v: u128 = if frac.is_empty() {
        0
    } else {
        parse_u128(frac)?
    };
    let denom = 10u128.pow(frac.len() as u32);
    let scaled = (int_v * denom + frac_v) * per_unit;
    if scaled == 0 {
        return err("must be greater than 0");
    }
    let millicores = scaled / denom;
    if millicores == 0 {
        return err("below 1 millicore (0.001 cores)");
    }
    if scaled % denom != 0 {
        return err("more precise than 1 millicore (0.001 cores)");
    }
    check_millicores(millicores)
}

fn parse_u128(digits: &str) -> Result<u128, UnitError> {
    digits.parse().map_err(|_| UnitError(CPU_EXPECTED.into()))
}

/// Converts a TOML integer number of cores to millicores.
pub fn cpu_from_int(cores: i64) -> Result<u32, UnitError> {
    if cores <= 0 {
        return err("must be greater than 0");
    }
    check_millicores(u128::from(cores.unsigned_abs()) * 1000)
}

/// Converts a TOML float number of cores to millicores, rounding to the
/// nearest millicore (floats cannot say 0.1 exactly anyway).
pub fn cpu_from_float(cores: f64) -> Result<u32, UnitError> {
    if cores.is_nan() {
        return err(CPU_EXPECTED);
    }
    if cores <= 0.0 {
        return err("must be greater than 0");
    }
    let millicores = cores * 1000.0;
    if millicores < 1.0 {
        return err("below 1 millicore (0.001 cores)");
    }
    if millicores > MAX_MILLICORES as f64 {
        return err("above the maximum of 4096 cores");
    }
    // In range 1..=4_096_000 here, so the cast cannot truncate.
    Ok(millicores.round() as u32)
}

/// Checks a kernel list such as `"0-3,5"`: comma-separated numbers or
/// ascending ranges, every number below [`MAX_CPU_INDEX`]. `what` names the
/// listed things ("CPU", "memory node") in messages.
pub fn validate_cpu_list(s: &str, what: &str) -> Result<(), UnitError> {
    let expected = || UnitError(format!("expected a {what} list like \"0-3,5\""));
    if s.is_empty() {
        return Err(expected());
    }
    for item in s.split(',') {
        let (lo, hi) = match item.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (item, item),
        };
        let number = |n: &str| -> Result<u32, UnitError> {
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(expected());
            }
            match n.parse::<u32>() {
                Ok(v) if v < MAX_CPU_INDEX => Ok(v),
                _ => Err(UnitError(format!(
                    "{what} {n} is out of range ({what}s are numbered below {MAX_CPU_INDEX})"
                ))),
            }
        };
        let (lo, hi) = (number(lo)?, number(hi)?);
        if lo > hi {
            return err(format!("range \"{item}\" is backwards"));
        }
    }
    Ok(())
}

/// Formats bytes with the largest binary suffix that divides them exactly
/// (`8G`, `512M`, `1000`), in the syntax [`parse_size`] accepts.
pub fn format_size(bytes: u64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        let unit = 1u64 << shift;
        if bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("100B").unwrap(), 100);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("4KB").unwrap(), 4096);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("8G").unwrap(), 8 << 30);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
        for bad in ["", "G", "8 G", "8X", "-1", "1.5G", "8GG", "8iB", " 8"] {
            assert_eq!(parse_size(bad).unwrap_err().0, SIZE_EXPECTED, "{bad:?}");
        }
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .0
            .contains("too large"));
        assert!(parse_size("999999999999999999999999").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), 30);
        assert_eq!(parse_duration("30s").unwrap(), 30);
        assert_eq!(parse_duration("10m").unwrap(), 600);
        assert_eq!(parse_duration("2h").unwrap(), 7200);
        assert_eq!(parse_duration("7d").unwrap(), 7 * 86400);
        for bad in ["", "m", "10M", "1w", "1h30m", "-5s", "5 s"] {
            assert_eq!(
                parse_duration(bad).unwrap_err().0,
                DURATION_EXPECTED,
                "{bad:?}"
            );
        }
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn cpu() {
        assert_eq!(parse_cpu("4").unwrap(), 4000);
        assert_eq!(parse_cpu("0.5").unwrap(), 500);
        assert_eq!(parse_cpu("0.001").unwrap(), 1);
        assert_eq!(parse_cpu("1.250").unwrap(), 1250);
        assert_eq!(parse_cpu("250%").unwrap(), 2500);
        assert_eq!(parse_cpu("12.5%").unwrap(), 125);
        assert_eq!(parse_cpu("4096").unwrap(), 4_096_000);
        assert_eq!(parse_cpu("0004").unwrap(), 4000);
        for bad in ["abc", "", "%", ".5", "5.", "1,5", "-1", "4 ", "1e3", "50 %"] {
            assert_eq!(parse_cpu(bad).unwrap_err().0, CPU_EXPECTED, "{bad:?}");
        }
        assert_eq!(parse_cpu("0").unwrap_err().0, "must be greater than 0");
        assert_eq!(parse_cpu("0%").unwrap_err().0, "must be greater than 0");
        assert_eq!(
            parse_cpu("0.0001").unwrap_err().0,
            "below 1 millicore (0.001 cores)"
        );
        assert_eq!(
            parse_cpu("0.05%").unwrap_err().0,
            "below 1 millicore (0.001 cores)"
        );
        assert_eq!(
            parse_cpu("1.0005").unwrap_err().0,
            "more precise than 1 millicore (0.001 cores)"
        );
        assert_eq!(
            parse_cpu("4097").unwrap_err().0,
            "above the maximum of 4096 cores"
        );
        assert!(parse_cpu("409600.1%").is_err());
        assert!(parse_cpu(&"9".repeat(40)).is_err());
        assert!(parse_cpu(&format!("1.{}", "1".repeat(40))).is_err());
    }

    #[test]
    fn cpu_numbers() {
        assert_eq!(cpu_from_int(2).unwrap(), 2000);
        assert!(cpu_from_int(0).is_err());
        assert!(cpu_from_int(-3).is_err());
        assert!(cpu_from_int(4097).is_err());
        assert!(cpu_from_int(i64::MAX).is_err());
        assert_eq!(cpu_from_float(0.5).unwrap(), 500);
        assert_eq!(cpu_from_float(0.57).unwrap(), 570);
        assert!(cpu_from_float(0.0001).is_err());
        assert!(cpu_from_float(f64::NAN).is_err());
        assert!(cpu_from_float(f64::INFINITY).is_err());
        assert!(cpu_from_float(-1.0).is_err());
    }

    #[test]
    fn cpu_lists() {
        for good in ["0", "0-1", "0-3,5", "1,2,3", "8191", "3-3"] {
            validate_cpu_list(good, "CPU").unwrap();
        }
        for bad in ["", ",", "0,", "a", "1-", "-1", "0-1-2", " 0", "0 ", "+1"] {
            assert_eq!(
                validate_cpu_list(bad, "CPU").unwrap_err().0,
                "expected a CPU list like \"0-3,5\"",
                "{bad:?}"
            );
        }
        assert_eq!(
            validate_cpu_list("3-1", "CPU").unwrap_err().0,
            "range \"3-1\" is backwards"
        );
        assert_eq!(
            validate_cpu_list("8192", "CPU").unwrap_err().0,
            "CPU 8192 is out of range (CPUs are numbered below 8192)"
        );
        assert!(validate_cpu_list("99999999999999", "CPU").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1bit").unwrap(), 1);
        assert_eq!(parse_rate("200mbit").unwrap(), 200_000_000);
        assert_eq!(parse_rate("200Mbit").unwrap(), 200_000_000);
        assert_eq!(parse_rate("200MBIT").unwrap(), 200_000_000);
        assert_eq!(parse_rate("500kbit").unwrap(), 500_000);
        assert_eq!(parse_rate("1mbit").unwrap(), 1_000_000);
        assert_eq!(parse_rate("1.5gbit").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("0.5kbit").unwrap(), 500);
        assert_eq!(parse_rate("1.000gbit").unwrap(), 1_000_000_000);
        assert_eq!(parse_rate("0001kbit").unwrap(), 1000);
        assert_eq!(parse_rate("0.000000001gbit").unwrap(), 1);
        assert_eq!(parse_rate("100gbit").unwrap(), MAX_RATE_BITS);
        assert_eq!(parse_rate("100000mbit").unwrap(), MAX_RATE_BITS);
        for bad in [
            "",
            "mbit",
            "200",
            "200m",
            "200 mbit",
            " 200mbit",
            "200mbit ",
            ".5gbit",
            "5.gbit",
            "-1mbit",
            "+1mbit",
            "1e3mbit",
            "200mibit",
            "200mbit/s",
            "200mbits",
            "1,5gbit",
            "200tbit",
            "1.2.3mbit",
        ] {
            assert_eq!(parse_rate(bad).unwrap_err().0, RATE_EXPECTED, "{bad:?}");
        }
        for bytes in [
            "200mbps", "200Mbps", "200MBps", "200MB/s", "200mb/s", "10kbps", "1gbps", "100bps",
            "100B/s", "100MiB/s", "100MB", "1GiB", "5bytes",
        ] {
            assert_eq!(parse_rate(bytes).unwrap_err().0, RATE_BYTES, "{bytes:?}");
        }
        assert!(RATE_BYTES.contains("megabytes"));
        assert_eq!(parse_rate("0mbit").unwrap_err().0, "must be greater than 0");
        assert_eq!(
            parse_rate("0.0gbit").unwrap_err().0,
            "must be greater than 0"
        );
        assert_eq!(parse_rate("0.5bit").unwrap_err().0, "below 1 bit/s");
        assert_eq!(
            parse_rate("1.0005kbit").unwrap_err().0,
            "more precise than 1 bit/s"
        );
        assert_eq!(
            parse_rate("1.0000000001gbit").unwrap_err().0,
            "more precise than 1 bit/s"
        );
        assert_eq!(
            parse_rate("100000000001bit").unwrap_err().0,
            "above the maximum of 100gbit"
        );
        assert_eq!(
            parse_rate("100.000000001gbit").unwrap_err().0,
            "above the maximum of 100gbit"
        );
        assert_eq!(
            parse_rate("101gbit").unwrap_err().0,
            "above the maximum of 100gbit"
        );
        assert!(parse_rate(&format!("{}gbit", "9".repeat(40))).is_err());
        assert!(parse_rate(&format!("1.{}gbit", "1".repeat(40))).is_err());
    }

    #[test]
    fn rate_formatting() {
        assert_eq!(format_rate(0), "0bit");
        assert_eq!(format_rate(1), "1bit");
        assert_eq!(format_rate(1500), "1500bit");
        assert_eq!(format_rate(200_000_000), "200mbit");
        assert_eq!(format_rate(1_500_000_000), "1500mbit");
        assert_eq!(format_rate(3_000), "3kbit");
        assert_eq!(format_rate(MAX_RATE_BITS), "100gbit");
        for n in [1, 999, 1000, 1001, 123_456_789, MAX_RATE_BITS] {
            assert_eq!(parse_rate(&format_rate(n)).unwrap(), n);
        }
    }

    #[test]
    fn size_formatting() {
        assert_eq!(format_size(0), "0");
        assert_eq!(format_size(8 << 30), "8G");
        assert_eq!(format_size(512 << 20), "512M");
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(3 << 40), "3T");
        for n in [0, 1, 1023, 1024, 5 << 30, u64::MAX] {
            assert_eq!(parse_size(&format_size(n)).unwrap(), n);
        }
    }
}
