//! Usage records: one per finished domain or batch job.
//!
//! The daemon builds a [`UsageRecord`] when a domain is destroyed (or a batch job inside it ends)
//! and hands it to a [`RecordLog`], which keeps two forms of it in a directory:
//!
//! * `usage.jsonl`: one JSON object per line, the canonical log that `dmsctl usage` reads back with
//!   [`RecordLog::read_all`], filters with [`UsageFilter`] and aggregates with [`summarize`]. It is
//!   rotated by size to `usage.jsonl.1` … `usage.jsonl.<keep>`.
//! * `ur/<record id>.xml`: the same record as an OGF Usage Record 1.0 document (GFD.98) with the
//!   SGAS VO extension, ready for an APEL/SGAS-style publisher to pick up. The directory is capped
//!   at a number of files, oldest removed first.
//!
//! No date library is used: [`format_rfc3339`] and [`format_duration`] render the `xsd:dateTime`
//! and `xsd:duration` values.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize, Serializer};

/// Namespace of the OGF Usage Record 1.0 format (GFD.98), bound to the prefix `urf`.
pub const URF_NAMESPACE: &str = "http://schema.ogf.org/urf/2003/09/urf";
/// Namespace of the SGAS VO extension that APEL/SGAS records use, bound to the prefix `vo`.
pub const SGAS_VO_NAMESPACE: &str = "http://www.sgas.se/namespaces/2009/05/ur/vo";
/// File name of the current JSON-lines log inside a [`RecordLog`] directory.
pub const JSONL_NAME: &str = "usage.jsonl";
/// Sub-directory of a [`RecordLog`] holding one OGF XML file per record.
pub const XML_DIR: &str = "ur";
/// Lock file serialising writers (and rotation against readers) of a [`RecordLog`] directory.
const LOCK_NAME: &str = ".lock";
/// Prefix of the temporary files an XML document is written to before it is renamed into place.
const TMP_PREFIX: &str = ".tmp-";
/// Temporary XML files older than this are left-overs of a crash and removed when `ur/` is scanned.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);
/// Longest XML file name stem; longer (escaped) record ids are truncated and suffixed with a hash.
const MAX_STEM_BYTES: usize = 200;
/// Permissions of the files written: records carry DNs and FQANs, which are personal data.
const FILE_MODE: u32 = 0o640;
/// Permissions of the directories created.
const DIR_MODE: u32 = 0o750;

/// Values of [`UsageRecord::exit_cause`] the daemon writes.
pub mod exit_cause {
    /// The domain was destroyed on request (API call or `dmsctl destroy`).
    pub const DESTROYED: &str = "destroyed";
    /// The domain was reaped after staying idle too long.
    pub const IDLE: &str = "idle";
    /// The batch job the domain served finished.
    pub const JOB_FINISHED: &str = "job-finished";
    /// The domain's init process died.
    pub const INIT_DIED: &str = "init-died";
    /// The domain was torn down after the OOM killer hit it.
    pub const OOM_KILLED: &str = "oom-killed";
    /// The domain's lease ran out without renewal.
    pub const LEASE_EXPIRED: &str = "lease-expired";
    /// Setting up or running the domain failed.
    pub const FAILED: &str = "failed";
}

/// Accounting record of one domain lifetime or one batch job, as the daemon writes it when the
/// domain or job ends.
///
/// The serde field names are the Rust field names and are part of the on-disk format of
/// `usage.jsonl`: do not rename them. Optional fields are written as `null` and may be missing
/// when reading (older or newer writers); unknown fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Unique id of the record, by convention `<host>/<domain>/<end unix seconds>`
    /// (see [`UsageRecord::record_id_for`]).
    pub record_id: String,
    /// Host name of the worker node.
    pub host: String,
    /// Name of the domain.
    pub domain: String,
    /// Backend that ran the domain, e.g. `"container"`.
    pub backend: String,
    /// Virtual organisation the usage is charged to.
    pub vo: String,
    /// VOMS group of the primary FQAN, if any.
    #[serde(default)]
    pub group: Option<String>,
    /// VOMS role of the primary FQAN, if any.
    #[serde(default)]
    pub role: Option<String>,
    /// Local account the domain ran as.
    pub account: String,
    /// Numeric uid of [`UsageRecord::account`].
    pub uid: u32,
    /// Grid certificate subject DN of the owner, if known.
    #[serde(default)]
    pub dn: Option<String>,
    /// All VOMS FQANs of the owner's proxy, primary first.
    #[serde(default)]
    pub fqans: Vec<String>,
    /// Batch system job id, when the domain served a batch job.
    #[serde(default)]
    pub job_id: Option<String>,
    /// Start, in unix seconds.
    pub start: u64,
    /// End, in unix seconds.
    pub end: u64,
    /// Wall-clock duration in seconds.
    pub wall_seconds: u64,
    /// User CPU time in seconds.
    #[serde(serialize_with = "serialize_finite")]
    pub cpu_user_seconds: f64,
    /// System CPU time in seconds.
    #[serde(serialize_with = "serialize_finite")]
    pub cpu_system_seconds: f64,
    /// Total CPU time in seconds (user + system, or the kernel's total when it has no split).
    #[serde(serialize_with = "serialize_finite")]
    pub cpu_seconds: f64,
    /// Peak memory usage in bytes, if the kernel reports it.
    #[serde(default)]
    pub memory_max_bytes: Option<u64>,
    /// Bytes read from block devices, if known.
    #[serde(default)]
    pub io_read_bytes: Option<u64>,
    /// Bytes written to block devices, if known.
    #[serde(default)]
    pub io_write_bytes: Option<u64>,
    /// Bytes received over the domain's network interface, if known.
    #[serde(default)]
    pub network_receive_bytes: Option<u64>,
    /// Bytes transmitted over the domain's network interface, if known.
    #[serde(default)]
    pub network_transmit_bytes: Option<u64>,
    /// CPU quota in cores (e.g. `2.5`), if the domain had one.
    #[serde(default, serialize_with = "serialize_finite_opt")]
    pub processors: Option<f64>,
    /// Why the domain or job ended; one of the [`exit_cause`] constants.
    pub exit_cause: String,
}

/// Writes non-finite floats (which JSON cannot carry) as 0 so that every line reads back.
fn serialize_finite<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(finite_or_zero(*value))
}

/// Writes a non-finite optional float as `null`.
fn serialize_finite_opt<S: Serializer>(
    value: &Option<f64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) if v.is_finite() => serializer.serialize_some(v),
        _ => serializer.serialize_none(),
    }
}

fn finite_or_zero(value: f64) -> f64 {
    if value.is_finite() {
        value
    } else {
        0.0
    }
}

impl UsageRecord {
    /// The conventional record id `<host>/<domain>/<end>`.
    pub fn record_id_for(host: &str, domain: &str, end: u64) -> String {
        format!("{host}/{domain}/{end}")
    }

    /// The record as one line of JSON, without the trailing newline. The line never contains a
    /// raw newline: JSON escapes control characters inside strings.
    pub fn to_json_line(&self) -> String {
        // Serialising this struct cannot fail: it has only string keys and the floats are made
        // finite by their serialisers. The empty fallback would be skipped by readers.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The record as an OGF Usage Record 1.0 document, with the creation time set to now.
    ///
    /// See [`UsageRecord::to_ogf_xml_at`] for the layout.
    pub fn to_ogf_xml(&self) -> String {
        self.to_ogf_xml_at(unix_now())
    }

    /// The record as an OGF Usage Record 1.0 document (GFD.98) with the given creation time
    /// (unix seconds).
    ///
    /// Layout, all elements in the `urf` namespace unless noted:
    ///
    /// * `RecordIdentity` with `urf:recordId` and `urf:createTime`.
    /// * `JobIdentity/LocalJobId`: the job id, or the domain name when there is no job;
    ///   `JobName` carries the domain name when there is a job id.
    /// * `UserIdentity`: `LocalUserId` (account), `GlobalUserName` (DN, when known) and a
    ///   `vo:VO vo:type="voms"` element of the SGAS VO extension with `vo:Name` and one
    ///   `vo:Attribute` per FQAN, split as SGAS and ARC do into `vo:Group`, `vo:Role` and
    ///   `vo:Capability` (a `NULL` role or capability is left out). Without FQANs, one attribute
    ///   is built from [`UsageRecord::group`] and [`UsageRecord::role`] when either is set. No
    ///   `vo:Issuer` is written: the record does not carry the VOMS server.
    /// * `Status`: the exit cause.
    /// * `WallDuration`, `CpuDuration` (total, without `urf:usageType`) and one `CpuDuration`
    ///   each with `urf:usageType="user"` and `"system"`, as `xsd:duration` (`PT12.5S`).
    /// * `StartTime`, `EndTime` as UTC `xsd:dateTime`; `MachineName` and `Host`
    ///   (`urf:primary="true"`): the host name.
    /// * `Processors` when the quota is known: GFD.98 types it as a positive integer, so the
    ///   quota is rounded up to whole cores (the exact value stays in the JSON record).
    /// * `Memory urf:storageUnit="KB" urf:metric="max" urf:type="physical"`: peak memory in KiB,
    ///   rounded up. GFD.98 puts min/max/average in `urf:metric`; `urf:type` names the memory.
    /// * `Network urf:storageUnit="B" urf:metric="total"`: one element per direction, told
    ///   apart by `urf:description="receive"` / `"transmit"`.
    /// * `Disk urf:storageUnit="B" urf:metric="total"`: block I/O, one element per direction
    ///   with `urf:description="read"` / `"write"`.
    ///
    /// Every text and attribute value is escaped, and control characters other than tab and
    /// newline are dropped (DNs and FQANs come from users); tab and newline inside attribute
    /// values are written as character references so that parsers keep them.
    pub fn to_ogf_xml_at(&self, create_time: u64) -> String {
        let mut x = XmlWriter::default();
        x.out
            .push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        x.open(
            0,
            "urf:JobUsageRecord",
            &[
                ("xmlns:urf", URF_NAMESPACE),
                ("xmlns:vo", SGAS_VO_NAMESPACE),
            ],
        );
        x.empty(
            1,
            "urf:RecordIdentity",
            &[
                ("urf:recordId", &self.record_id),
                ("urf:createTime", &format_rfc3339(create_time)),
            ],
        );
        x.open(1, "urf:JobIdentity", &[]);
        x.leaf(
            2,
            "urf:LocalJobId",
            &[],
            self.job_id.as_deref().unwrap_or(&self.domain),
        );
        x.close(1, "urf:JobIdentity");
        self.write_user_identity(&mut x);
        if self.job_id.is_some() {
            x.leaf(1, "urf:JobName", &[], &self.domain);
        }
        x.leaf(1, "urf:Status", &[], &self.exit_cause);
        x.leaf(
            1,
            "urf:WallDuration",
            &[],
            &format!("PT{}S", self.wall_seconds),
        );
        x.leaf(
            1,
            "urf:CpuDuration",
            &[],
            &format_duration(self.cpu_seconds),
        );
        x.leaf(
            1,
            "urf:CpuDuration",
            &[("urf:usageType", "user")],
            &format_duration(self.cpu_user_seconds),
        );
        x.leaf(
            1,
            "urf:CpuDuration",
            &[("urf:usageType", "system")],
            &format_duration(self.cpu_system_seconds),
        );
        x.leaf(1, "urf:StartTime", &[], &format_rfc3339(self.start));
        x.leaf(1, "urf:EndTime", &[], &format_rfc3339(self.end));
        x.leaf(1, "urf:MachineName", &[], &self.host);
        x.leaf(1, "urf:Host", &[("urf:primary", "true")], &self.host);
        if let Some(cores) = self.processors.filter(|c| c.is_finite() && *c > 0.0) {
            // `as` saturates; a quota above u64::MAX cores is not a real case.
            let whole = (cores.ceil() as u64).max(1);
            x.leaf(1, "urf:Processors", &[], &whole.to_string());
        }
        if let Some(bytes) = self.memory_max_bytes {
            x.leaf(
                1,
                "urf:Memory",
                &[
                    ("urf:storageUnit", "KB"),
                    ("urf:metric", "max"),
                    ("urf:type", "physical"),
                ],
                &bytes.div_ceil(1024).to_string(),
            );
        }
        let volumes = [
            ("urf:Network", "receive", self.network_receive_bytes),
            ("urf:Network", "transmit", self.network_transmit_bytes),
            ("urf:Disk", "read", self.io_read_bytes),
            ("urf:Disk", "write", self.io_write_bytes),
        ];
        for (element, description, value) in volumes {
            if let Some(bytes) = value {
                x.leaf(
                    1,
                    element,
                    &[
                        ("urf:storageUnit", "B"),
                        ("urf:metric", "total"),
                        ("urf:description", description),
                    ],
                    &bytes.to_string(),
                );
            }
        }
        x.close(0, "urf:JobUsageRecord");
        x.out
    }

    fn write_user_identity(&self, x: &mut XmlWriter) {
        x.open(1, "urf:UserIdentity", &[]);
        x.leaf(2, "urf:LocalUserId", &[], &self.account);
        if let Some(dn) = &self.dn {
            x.leaf(2, "urf:GlobalUserName", &[], dn);
        }
        if !self.vo.is_empty() {
            x.open(2, "vo:VO", &[("vo:type", "voms")]);
            x.leaf(3, "vo:Name", &[], &self.vo);
            let mut attributes: Vec<FqanParts> = self.fqans.iter().map(|f| split_fqan(f)).collect();
            if attributes.is_empty() && (self.group.is_some() || self.role.is_some()) {
                attributes.push(FqanParts {
                    group: self
                        .group
                        .clone()
                        .unwrap_or_else(|| format!("/{}", self.vo)),
                    role: self.role.clone().filter(|r| r != "NULL"),
                    capability: None,
                });
            }
            for a in attributes {
                x.open(3, "vo:Attribute", &[]);
                x.leaf(4, "vo:Group", &[], &a.group);
                if let Some(role) = &a.role {
                    x.leaf(4, "vo:Role", &[], role);
                }
                if let Some(capability) = &a.capability {
                    x.leaf(4, "vo:Capability", &[], capability);
                }
                x.close(3, "vo:Attribute");
            }
            x.close(2, "vo:VO");
        }
        x.close(1, "urf:UserIdentity");
    }
}

/// The parts of a VOMS FQAN such as `/atlas/lcg1/Role=production/Capability=NULL`.
struct FqanParts {
    group: String,
    role: Option<String>,
    capability: Option<String>,
}

/// Splits an FQAN into group path, role and capability; `NULL` values count as absent. An FQAN
/// without group components keeps its whole text as the group so that nothing is lost.
fn split_fqan(fqan: &str) -> FqanParts {
    let mut group = String::new();
    let mut role = None;
    let mut capability = None;
    for part in fqan.split('/').filter(|p| !p.is_empty()) {
        if let Some(r) = part.strip_prefix("Role=") {
            role = Some(r.to_owned()).filter(|r| r != "NULL" && !r.is_empty());
        } else if let Some(c) = part.strip_prefix("Capability=") {
            capability = Some(c.to_owned()).filter(|c| c != "NULL" && !c.is_empty());
        } else {
            group.push('/');
            group.push_str(part);
        }
    }
    if group.is_empty() {
        group = fqan.to_owned();
    }
    FqanParts {
        group,
        role,
        capability,
    }
}

/// Minimal indenting XML writer; every value goes through [`push_xml_escaped`].
#[derive(Default)]
struct XmlWriter {
    out: String,
}

impl XmlWriter {
    fn start_tag(&mut self, depth: usize, name: &str, attrs: &[(&str, &str)]) {
        for _ in 0..depth {
            self.out.push_str("  ");
        }
        self.out.push('<');
        self.out.push_str(name);
        for (key, value) in attrs {
            self.out.push(' ');
            self.out.push_str(key);
            self.out.push_str("=\"");
            push_xml_escaped(&mut self.out, value, true);
            self.out.push('"');
        }
    }

    fn open(&mut self, depth: usize, name: &str, attrs: &[(&str, &str)]) {
        self.start_tag(depth, name, attrs);
        self.out.push_str(">\n");
    }

    fn empty(&mut self, depth: usize, name: &str, attrs: &[(&str, &str)]) {
        self.start_tag(depth, name, attrs);
        self.out.push_str("/>\n");
    }

    fn leaf(&mut self, depth: usize, name: &str, attrs: &[(&str, &str)], text: &str) {
        self.start_tag(depth, name, attrs);
        self.out.push('>');
        push_xml_escaped(&mut self.out, text, false);
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push_str(">\n");
    }

    fn close(&mut self, depth: usize, name: &str) {
        for _ in 0..depth {
            self.out.push_str("  ");
        }
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push_str(">\n");
    }
}

/// Whether a character may appear in the XML output: tab and newline, and anything that is not
/// a control character or one of the two non-characters XML 1.0 forbids.
fn xml_char_allowed(c: char) -> bool {
    c == '\t' || c == '\n' || !(c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}')
}

/// Appends `value` escaped for XML text (`attribute == false`) or a double-quoted attribute value.
fn push_xml_escaped(out: &mut String, value: &str, attribute: bool) {
    for c in value.chars().filter(|c| xml_char_allowed(*c)) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' if attribute => out.push_str("&#9;"),
            '\n' if attribute => out.push_str("&#10;"),
            c => out.push(c),
        }
    }
}

/// Escapes `value` for use as XML text or attribute content: `& < > " '` become entity
/// references and control characters other than tab and newline are removed.
pub fn xml_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    push_xml_escaped(&mut out, value, false);
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Formats unix seconds as an RFC 3339 / `xsd:dateTime` UTC timestamp,
/// e.g. `2026-11-21T10:00:00Z`.
pub fn format_rfc3339(unix: u64) -> String {
    let (year, month, day) = civil_from_days(unix / 86_400);
    let secs = unix % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day), after Howard
/// Hinnant's `civil_from_days`. Unsigned input keeps every step non-negative.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st, [0, 365]
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Formats seconds as an `xsd:duration` such as `PT12.5S` (millisecond precision, trailing
/// zeros dropped). Negative and non-finite values become `PT0S`.
pub fn format_duration(seconds: f64) -> String {
    let seconds = if seconds.is_finite() && seconds > 0.0 {
        seconds
    } else {
        0.0
    };
    let mut number = format!("{seconds:.3}");
    if number.contains('.') {
        let trimmed = number.trim_end_matches('0').trim_end_matches('.').len();
        number.truncate(trimmed);
    }
    format!("PT{number}S")
}

/// File name (`<escaped id>.xml`) the XML form of a record is stored under in `ur/`.
///
/// Bytes other than ASCII letters, digits, `-`, `_` and `.` are percent-encoded, as is a leading
/// `.`, so the name never contains `/`, is never `.` or `..`, is never hidden, and different ids
/// give different names. Ids whose escaped form exceeds 200 bytes are truncated and suffixed
/// with a hash of the full id.
pub fn xml_file_name(record_id: &str) -> String {
    let mut stem = String::with_capacity(record_id.len());
    for (i, byte) in record_id.bytes().enumerate() {
        let plain = byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' || byte == b'.';
        if plain && !(i == 0 && byte == b'.') {
            stem.push(char::from(byte));
        } else {
            stem.push_str(&format!("%{byte:02X}"));
        }
    }
    if stem.is_empty() {
        // Escapes are always `%XX`, so a lone `%` cannot come from any other id.
        stem.push('%');
    }
    if stem.len() > MAX_STEM_BYTES {
        // The stem is ASCII, so any byte index is a char boundary.
        stem.truncate(MAX_STEM_BYTES - 17);
        stem.push_str(&format!("~{:016x}", fnv1a(record_id.as_bytes())));
    }
    stem.push_str(".xml");
    stem
}

/// 64-bit FNV-1a, to keep truncated file names distinct.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A record log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// An I/O error, with the operation and the path.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done, e.g. `"append to"` or `"rename"`.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A record could not be serialised to JSON.
    #[error("serialize usage record {record_id}: {source}")]
    Serialize {
        /// Id of the record.
        record_id: String,
        /// The serde error.
        source: serde_json::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RecordError + 'a {
    move |source| RecordError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Size and count limits of a [`RecordLog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotateLimits {
    /// Rotate `usage.jsonl` before an append would take it over this many bytes (default
    /// 64 MiB). 0 disables rotation.
    pub max_bytes: u64,
    /// Rotated files kept, `usage.jsonl.1` (newest) to `usage.jsonl.<keep>` (default 5). 0 means
    /// a full log is deleted instead of rotated.
    pub keep: usize,
    /// Most XML files kept in `ur/` (default 100 000). When a new file would exceed it, the
    /// oldest files (by modification time, then name) are removed down to 90 % of the limit so
    /// that the directory is not rescanned on every append. 0 disables the XML files.
    pub max_xml_files: usize,
}

impl Default for RotateLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            keep: 5,
            max_xml_files: 100_000,
        }
    }
}

/// Records read back from a [`RecordLog`], with the number of lines that did not parse.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadReport {
    /// Parsed records, oldest file first, in file order.
    pub records: Vec<UsageRecord>,
    /// Non-empty lines skipped because they were not a valid record (torn writes, corruption).
    pub skipped_lines: usize,
}

/// The usage record store of one node: `usage.jsonl` (+ rotated files) and `ur/*.xml` in a
/// directory.
///
/// Appends take an exclusive `flock` on `<dir>/.lock`, so threads and processes sharing the
/// directory do not interleave rotation; readers take a shared lock when they can open the lock
/// file. The count of XML files is cached in memory after the first scan; writers in other
/// processes make it drift until the next pruning scan corrects it.
#[derive(Debug)]
pub struct RecordLog {
    root: PathBuf,
    limits: RotateLimits,
    fsync: bool,
    xml_count: Mutex<Option<usize>>,
}

/// Disambiguates temporary file names within one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl RecordLog {
    /// A log in `dir` (created with its `ur/` sub-directory on the first append). Appends do not
    /// fsync; see [`RecordLog::with_fsync`].
    pub fn new(dir: &Path, limits: RotateLimits) -> Self {
        Self {
            root: dir.to_path_buf(),
            limits,
            fsync: false,
            xml_count: Mutex::new(None),
        }
    }

    /// Whether appends fsync the JSON log and the XML file (and its directory) before returning.
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The limits in force.
    pub fn limits(&self) -> RotateLimits {
        self.limits
    }

    /// Path of the current JSON-lines file.
    pub fn jsonl_path(&self) -> PathBuf {
        self.root.join(JSONL_NAME)
    }

    /// Path of the `ur/` directory of XML records.
    pub fn xml_dir(&self) -> PathBuf {
        self.root.join(XML_DIR)
    }

    /// Path the XML form of the record with this id is (or would be) stored at.
    pub fn xml_path(&self, record_id: &str) -> PathBuf {
        self.xml_dir().join(xml_file_name(record_id))
    }

    fn rotated_path(&self, index: u32) -> PathBuf {
        self.root.join(format!("{JSONL_NAME}.{index}"))
    }

    /// Appends a record: writes `ur/<id>.xml` atomically (temp file + rename; an existing file of
    /// the same id is replaced), then appends the JSON line to `usage.jsonl` with a single write
    /// on an `O_APPEND` descriptor.
    ///
    /// Rotation of `usage.jsonl` and pruning of `ur/` happen first, so an error leaves no partial
    /// record behind and the call can be retried; an error after the XML file was written can
    /// only have replaced that file, which a retry writes again.
    pub fn append(&self, record: &UsageRecord) -> Result<(), RecordError> {
        let mut line = serde_json::to_string(record).map_err(|source| RecordError::Serialize {
            record_id: record.record_id.clone(),
            source,
        })?;
        line.push('\n');
        self.create_dirs()?;
        let _lock = self.lock(libc::LOCK_EX)?;
        self.rotate_if_needed(line.len() as u64)?;
        if self.limits.max_xml_files > 0 {
            self.write_xml(record)?;
        }
        let path = self.jsonl_path();
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(io_err("open", &path))?;
        file.write_all(line.as_bytes())
            .map_err(io_err("append to", &path))?;
        if self.fsync {
            file.sync_data().map_err(io_err("fsync", &path))?;
        }
        Ok(())
    }

    /// Reads every record: the rotated files oldest first, then `usage.jsonl`. Lines that do not
    /// parse are skipped; [`RecordLog::read_all_counted`] also counts them. A missing directory
    /// reads as empty.
    pub fn read_all(&self) -> Result<Vec<UsageRecord>, RecordError> {
        self.read_all_counted().map(|report| report.records)
    }

    /// Like [`RecordLog::read_all`], also returning how many non-empty lines were skipped.
    pub fn read_all_counted(&self) -> Result<ReadReport, RecordError> {
        // A reader without write access cannot create the lock file; it reads unlocked then.
        let _lock = match File::open(self.root.join(LOCK_NAME)) {
            Ok(file) => {
                flock(&file, libc::LOCK_SH, &self.root.join(LOCK_NAME))?;
                Some(file)
            }
            Err(_) => None,
        };
        let mut paths: Vec<PathBuf> = self
            .rotated_files()?
            .into_iter()
            .rev()
            .map(|(_, path)| path)
            .collect();
        paths.push(self.jsonl_path());
        let mut report = ReadReport::default();
        for path in paths {
            read_jsonl(&path, &mut report)?;
        }
        Ok(report)
    }

    fn create_dirs(&self) -> Result<(), RecordError> {
        let mut builder = DirBuilder::new();
        builder.recursive(true).mode(DIR_MODE);
        builder
            .create(&self.root)
            .map_err(io_err("create directory", &self.root))?;
        if self.limits.max_xml_files > 0 {
            let xml_dir = self.xml_dir();
            builder
                .create(&xml_dir)
                .map_err(io_err("create directory", &xml_dir))?;
        }
        Ok(())
    }

    fn lock(&self, operation: libc::c_int) -> Result<File, RecordError> {
        let path = self.root.join(LOCK_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(io_err("open", &path))?;
        flock(&file, operation, &path)?;
        Ok(file)
    }

    /// Rotated files present, as (index, path), ascending by index.
    fn rotated_files(&self) -> Result<Vec<(u32, PathBuf)>, RecordError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &self.root)(e)),
        };
        let prefix = format!("{JSONL_NAME}.");
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.root))?;
            let name = entry.file_name();
            let Some(suffix) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            // Only canonical decimal indices, so that `.01` and `.1` cannot both claim 1.
            if suffix.is_empty()
                || suffix.starts_with('0')
                || !suffix.bytes().all(|b| b.is_ascii_digit())
            {
                continue;
            }
            if let Ok(index) = suffix.parse::<u32>() {
                files.push((index, entry.path()));
            }
        }
        files.sort();
        Ok(files)
    }

    fn rotate_if_needed(&self, incoming: u64) -> Result<(), RecordError> {
        if self.limits.max_bytes == 0 {
            return Ok(());
        }
        let current = self.jsonl_path();
        let size = match fs::metadata(&current) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("stat", &current)(e)),
        };
        if size == 0 || size.saturating_add(incoming) <= self.limits.max_bytes {
            return Ok(());
        }
        // Highest index first, so every rename target is free.
        for (index, path) in self.rotated_files()?.into_iter().rev() {
            if index as usize >= self.limits.keep {
                remove_if_exists(&path)?;
            } else {
                let target = self.rotated_path(index + 1);
                fs::rename(&path, &target).map_err(io_err("rename", &path))?;
            }
        }
        if self.limits.keep == 0 {
            remove_if_exists(&current)
        } else {
            fs::rename(&current, self.rotated_path(1)).map_err(io_err("rename", &current))
        }
    }

    fn write_xml(&self, record: &UsageRecord) -> Result<(), RecordError> {
        let dir = self.xml_dir();
        let target = dir.join(xml_file_name(&record.record_id));
        let is_new = match fs::symlink_metadata(&target) {
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(io_err("stat", &target)(e)),
        };
        let mut count = self
            .xml_count
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut present = match *count {
            Some(n) => n,
            None => self.scan_xml()?.len(),
        };
        if is_new && present >= self.limits.max_xml_files {
            let target_count = self.limits.max_xml_files - self.limits.max_xml_files / 10;
            present = self.prune_xml(target_count.saturating_sub(1))?;
        }
        *count = Some(present);

        let tmp = dir.join(format!(
            "{TMP_PREFIX}{}-{}-{}",
            std::process::id(),
            unix_now(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = write_new_file(&tmp, record.to_ogf_xml().as_bytes(), self.fsync)
            .and_then(|()| fs::rename(&tmp, &target).map_err(io_err("rename", &tmp)));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if self.fsync {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("fsync", &dir))?;
        }
        if is_new {
            *count = Some(present + 1);
        }
        Ok(())
    }

    /// XML record files in `ur/` as (mtime, name); removes stale temporary files on the way.
    fn scan_xml(&self) -> Result<Vec<(SystemTime, String)>, RecordError> {
        let dir = self.xml_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        let now = SystemTime::now();
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list", &dir))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let mtime = match entry.metadata() {
                Ok(meta) => meta.modified().unwrap_or(UNIX_EPOCH),
                // Removed concurrently.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("stat", &entry.path())(e)),
            };
            if name.starts_with(TMP_PREFIX) {
                let age = now.duration_since(mtime).unwrap_or_default();
                if age > STALE_TMP_AGE {
                    remove_if_exists(&entry.path())?;
                }
            } else if name.ends_with(".xml") && !name.starts_with('.') {
                files.push((mtime, name));
            }
        }
        Ok(files)
    }

    /// Removes the oldest XML files until at most `keep` remain; returns how many remain.
    fn prune_xml(&self, keep: usize) -> Result<usize, RecordError> {
        let mut files = self.scan_xml()?;
        if files.len() <= keep {
            return Ok(files.len());
        }
        files.sort();
        let dir = self.xml_dir();
        let excess = files.len() - keep;
        for (_, name) in &files[..excess] {
            remove_if_exists(&dir.join(name))?;
        }
        Ok(keep)
    }
}

fn flock(file: &File, operation: libc::c_int, path: &Path) -> Result<(), RecordError> {
    loop {
        // SAFETY: the descriptor belongs to `file`, which outlives the call; flock(2) only acts
        // on the open file description and touches no memory of ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(io_err("lock", path)(e));
        }
    }
}

fn remove_if_exists(path: &Path) -> Result<(), RecordError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

fn write_new_file(path: &Path, contents: &[u8], fsync: bool) -> Result<(), RecordError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io_err("create", path))?;
    file.write_all(contents).map_err(io_err("write", path))?;
    if fsync {
        file.sync_all().map_err(io_err("fsync", path))?;
    }
    Ok(())
}

/// Reads one JSON-lines file into `report`; a missing file adds nothing.
fn read_jsonl(path: &Path, report: &mut ReadReport) -> Result<(), RecordError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(io_err("read", path))?;
        if n == 0 {
            return Ok(());
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<UsageRecord>(&line) {
            Ok(record) => report.records.push(record),
            Err(_) => report.skipped_lines += 1,
        }
    }
}

/// Selects records; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageFilter {
    /// Only records of this VO.
    pub vo: Option<String>,
    /// Only records of this local account.
    pub account: Option<String>,
    /// Only records of this domain.
    pub domain: Option<String>,
    /// Only records of this batch job id.
    pub job: Option<String>,
    /// Only records that ended at or after this time (unix seconds).
    pub since: Option<u64>,
    /// Only records that ended before this time (unix seconds, exclusive), so consecutive
    /// windows never count a record twice.
    pub until: Option<u64>,
}

impl UsageFilter {
    /// Whether the record passes the filter.
    pub fn matches(&self, record: &UsageRecord) -> bool {
        self.vo.as_ref().is_none_or(|vo| *vo == record.vo)
            && self.account.as_ref().is_none_or(|a| *a == record.account)
            && self.domain.as_ref().is_none_or(|d| *d == record.domain)
            && self
                .job
                .as_ref()
                .is_none_or(|j| record.job_id.as_deref() == Some(j.as_str()))
            && self.since.is_none_or(|since| record.end >= since)
            && self.until.is_none_or(|until| record.end < until)
    }

    /// The records that pass the filter, in their order.
    pub fn apply<'a>(&self, records: &'a [UsageRecord]) -> Vec<&'a UsageRecord> {
        records.iter().filter(|r| self.matches(r)).collect()
    }
}

/// How [`summarize`] groups records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// One summary per VO.
    Vo,
    /// One summary per local account.
    Account,
    /// One summary per domain.
    Domain,
    /// A single summary with the key `"all"`.
    #[default]
    None,
}

impl GroupBy {
    /// The grouping key of a record.
    pub fn key<'a>(&self, record: &'a UsageRecord) -> &'a str {
        match self {
            GroupBy::Vo => &record.vo,
            GroupBy::Account => &record.account,
            GroupBy::Domain => &record.domain,
            GroupBy::None => "all",
        }
    }
}

/// A grouping name other than `vo`, `account`, `domain` or `none`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown grouping {0:?}: expected vo, account, domain or none")]
pub struct ParseGroupByError(pub String);

impl FromStr for GroupBy {
    type Err = ParseGroupByError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "vo" => Ok(GroupBy::Vo),
            "account" | "user" => Ok(GroupBy::Account),
            "domain" => Ok(GroupBy::Domain),
            "none" | "all" | "" => Ok(GroupBy::None),
            _ => Err(ParseGroupByError(s.to_owned())),
        }
    }
}

/// Usage totals of one group of records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageSummary {
    /// The group's key (VO, account or domain name; `"all"` without grouping).
    pub key: String,
    /// Number of records.
    pub records: u64,
    /// Sum of wall-clock seconds.
    pub wall_seconds: u64,
    /// Sum of user CPU seconds.
    pub cpu_user_seconds: f64,
    /// Sum of system CPU seconds.
    pub cpu_system_seconds: f64,
    /// Sum of total CPU seconds.
    pub cpu_seconds: f64,
    /// Highest peak memory of any record, if any record had one.
    pub memory_max_bytes: Option<u64>,
    /// Sum of block bytes read over the records that report it (`None` if none does).
    pub io_read_bytes: Option<u64>,
    /// Sum of block bytes written over the records that report it.
    pub io_write_bytes: Option<u64>,
    /// Sum of network bytes received over the records that report it.
    pub network_receive_bytes: Option<u64>,
    /// Sum of network bytes transmitted over the records that report it.
    pub network_transmit_bytes: Option<u64>,
    /// Earliest start of the group's records.
    pub first_start: Option<u64>,
    /// Latest end of the group's records.
    pub last_end: Option<u64>,
}

impl UsageSummary {
    fn add(&mut self, r: &UsageRecord) {
        fn sum(total: &mut Option<u64>, value: Option<u64>) {
            if let Some(v) = value {
                *total = Some(total.unwrap_or(0).saturating_add(v));
            }
        }
        self.records += 1;
        self.wall_seconds = self.wall_seconds.saturating_add(r.wall_seconds);
        self.cpu_user_seconds += finite_or_zero(r.cpu_user_seconds);
        self.cpu_system_seconds += finite_or_zero(r.cpu_system_seconds);
        self.cpu_seconds += finite_or_zero(r.cpu_seconds);
        self.memory_max_bytes = self.memory_max_bytes.max(r.memory_max_bytes);
        sum(&mut self.io_read_bytes, r.io_read_bytes);
        sum(&mut self.io_write_bytes, r.io_write_bytes);
        sum(&mut self.network_receive_bytes, r.network_receive_bytes);
        sum(&mut self.network_transmit_bytes, r.network_transmit_bytes);
        self.first_start = Some(self.first_start.map_or(r.start, |s| s.min(r.start)));
        self.last_end = Some(self.last_end.map_or(r.end, |e| e.max(r.end)));
    }
}

/// Aggregates records into one [`UsageSummary`] per group, sorted by key. No records give no
/// summaries, also with [`GroupBy::None`].
pub fn summarize<'a, I>(records: I, group_by: GroupBy) -> Vec<UsageSummary>
where
    I: IntoIterator<Item = &'a UsageRecord>,
{
    let mut groups: BTreeMap<&str, UsageSummary> = BTreeMap::new();
    for record in records {
        let key = group_by.key(record);
        groups
            .entry(key)
            .or_insert_with(|| UsageSummary {
                key: key.to_owned(),
                ..UsageSummary::default()
            })
            .add(record);
    }
    groups.into_values().collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(host: &str, domain: &str, end: u64) -> UsageRecord {
        UsageRecord {
            record_id: UsageRecord::record_id_for(host, domain, end),
            host: host.to_owned(),
            domain: domain.to_owned(),
            backend: "container".to_owned(),
            vo: "atlas".to_owned(),
            group: Some("/atlas".to_owned()),
            role: Some("production".to_owned()),
            account: "atlasprd001".to_owned(),
            uid: 41001,
            dn: Some("/DC=ch/DC=cern/OU=Users/CN=Jane Doe".to_owned()),
            fqans: vec!["/atlas/Role=production/Capability=NULL".to_owned()],
            job_id: Some("1234.batch".to_owned()),
            start: end.saturating_sub(100),
            end,
            wall_seconds: 100,
            cpu_user_seconds: 40.25,
            cpu_system_seconds: 9.75,
            cpu_seconds: 50.0,
            memory_max_bytes: Some(2048 * 1024 + 1),
            io_read_bytes: Some(1000),
            io_write_bytes: Some(2000),
            network_receive_bytes: Some(300),
            network_transmit_bytes: Some(400),
            processors: Some(2.5),
            exit_cause: exit_cause::JOB_FINISHED.to_owned(),
        }
    }

    // ---- time formatting ----

    /// Independent inverse (days_from_civil) to cross-check `civil_from_days`.
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(86_399), "1970-01-01T23:59:59Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(951_868_800), "2000-03-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_234_567_890), "2009-02-13T23:31:30Z");
        assert_eq!(format_rfc3339(1_709_164_800), "2024-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(format_rfc3339(1_795_255_200), "2026-11-21T10:00:00Z");
        assert_eq!(format_rfc3339(4_102_444_800), "2100-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(4_107_456_000), "2100-02-28T00:00:00Z");
        assert_eq!(format_rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(format_rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        // Does not overflow at the top of the range.
        assert!(format_rfc3339(u64::MAX).ends_with('Z'));
    }

    #[test]
    fn civil_from_days_round_trips() {
        let mut previous = (1969, 12, 31);
        for days in 0..200_000u64 {
            let (y, m, d) = civil_from_days(days);
            assert!((1..=12).contains(&m) && (1..=31).contains(&d));
            assert_eq!(
                days_from_civil(y as i64, m as i64, d as i64),
                days as i64,
                "{y}-{m}-{d}"
            );
            assert!((y, m, d) > previous, "dates increase");
            previous = (y, m, d);
        }
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(12.5), "PT12.5S");
        assert_eq!(format_duration(0.0), "PT0S");
        assert_eq!(format_duration(3600.0), "PT3600S");
        assert_eq!(format_duration(1.23456), "PT1.235S");
        assert_eq!(format_duration(0.0004), "PT0S");
        assert_eq!(format_duration(-5.0), "PT0S");
        assert_eq!(format_duration(f64::NAN), "PT0S");
        assert_eq!(format_duration(f64::INFINITY), "PT0S");
    }

    // ---- JSON ----

    #[test]
    fn json_line_round_trips_and_is_one_line() {
        let mut r = record("wn1.example.org", "d1", 1_700_000_000);
        r.dn = Some("/CN=evil\nname\r\u{2028}".to_owned());
        r.fqans.push("/atlas/x\n{\"".to_owned());
        let line = r.to_json_line();
        assert!(!line.contains('\n') && !line.contains('\r'));
        let back: UsageRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn json_field_names_are_stable() {
        let value: serde_json::Value =
            serde_json::from_str(&record("h", "d", 1000).to_json_line()).unwrap();
        let mut keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "account",
                "backend",
                "cpu_seconds",
                "cpu_system_seconds",
                "cpu_user_seconds",
                "dn",
                "domain",
                "end",
                "exit_cause",
                "fqans",
                "group",
                "host",
                "io_read_bytes",
                "io_write_bytes",
                "job_id",
                "memory_max_bytes",
                "network_receive_bytes",
                "network_transmit_bytes",
                "processors",
                "record_id",
                "role",
                "start",
                "uid",
                "vo",
                "wall_seconds"
            ]
        );
    }

    #[test]
    fn json_non_finite_floats_still_read_back() {
        let mut r = record("h", "d", 1000);
        r.cpu_seconds = f64::NAN;
        r.cpu_user_seconds = f64::INFINITY;
        r.processors = Some(f64::NAN);
        let back: UsageRecord = serde_json::from_str(&r.to_json_line()).unwrap();
        assert_eq!(back.cpu_seconds, 0.0);
        assert_eq!(back.cpu_user_seconds, 0.0);
        assert_eq!(back.processors, None);
    }

    #[test]
    fn json_optional_fields_may_be_missing() {
        let line = r#"{"record_id":"h/d/5","host":"h","domain":"d","backend":"container",
            "vo":"cms","account":"cms001","uid":5,"start":1,"end":5,"wall_seconds":4,
            "cpu_user_seconds":1,"cpu_system_seconds":0.5,"cpu_seconds":1.5,
            "exit_cause":"idle","future_field":true}"#;
        let r: UsageRecord = serde_json::from_str(line).unwrap();
        assert_eq!(r.dn, None);
        assert!(r.fqans.is_empty());
        assert_eq!(r.processors, None);
        assert_eq!(r.cpu_seconds, 1.5);
    }

    // ---- XML ----

    /// One element of a parsed document: name, attributes (unescaped), direct text (unescaped).
    #[derive(Debug)]
    struct Element {
        name: String,
        attrs: Vec<(String, String)>,
        text: String,
    }

    fn unescape(s: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(pos) = rest.find('&') {
            out.push_str(&rest[..pos]);
            let end = rest[pos..]
                .find(';')
                .ok_or_else(|| format!("unterminated reference in {s:?}"))?;
            let entity = &rest[pos + 1..pos + end];
            match entity {
                "amp" => out.push('&'),
                "lt" => out.push('<'),
                "gt" => out.push('>'),
                "quot" => out.push('"'),
                "apos" => out.push('\''),
                _ => {
                    let code = entity
                        .strip_prefix('#')
                        .and_then(|n| n.parse::<u32>().ok())
                        .and_then(char::from_u32)
                        .ok_or_else(|| format!("bad reference &{entity};"))?;
                    out.push(code);
                }
            }
            rest = &rest[pos + end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
    }

    /// A small well-formedness checker: XML declaration, a single root, balanced and properly
    /// nested tags, quoted unique attributes, no raw `<` or `&` outside markup and references,
    /// no forbidden characters, and every `prefix:` bound by an `xmlns:prefix` on the root.
    fn parse_xml(doc: &str) -> Result<Vec<Element>, String> {
        for c in doc.chars() {
            if !xml_char_allowed(c) {
                return Err(format!("forbidden character {c:?}"));
            }
        }
        let mut rest = doc
            .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")
            .ok_or("missing XML declaration")?;
        let mut stack: Vec<String> = Vec::new();
        let mut elements: Vec<Element> = Vec::new();
        let mut open_indices: Vec<usize> = Vec::new();
        let mut roots = 0;
        let mut prefixes: Vec<String> = vec!["xmlns".to_owned()];
        loop {
            let lt = rest.find('<');
            let text = &rest[..lt.unwrap_or(rest.len())];
            if text.contains('>') && !text.is_empty() {
                // '>' is legal in text but we always escape it.
                return Err(format!("unescaped > in {text:?}"));
            }
            let text = unescape(text)?;
            match open_indices.last() {
                Some(&i) => elements[i].text.push_str(&text),
                None if !text.trim().is_empty() => return Err("text outside root".into()),
                None => {}
            }
            let Some(lt) = lt else { break };
            rest = &rest[lt + 1..];
            let gt = rest.find('>').ok_or("unterminated tag")?;
            let tag = &rest[..gt];
            rest = &rest[gt + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().ok_or("close without open")?;
                if open != name {
                    return Err(format!("</{name}> closes <{open}>"));
                }
                open_indices.pop();
                continue;
            }
            let (tag, self_closing) = match tag.strip_suffix('/') {
                Some(t) => (t, true),
                None => (tag, false),
            };
            let name_end = tag.find(char::is_whitespace).unwrap_or(tag.len());
            let name = &tag[..name_end];
            if !is_name(name) {
                return Err(format!("bad element name {name:?}"));
            }
            if stack.is_empty() {
                roots += 1;
                if roots > 1 {
                    return Err("more than one root".into());
                }
            }
            let mut attrs: Vec<(String, String)> = Vec::new();
            let mut a = tag[name_end..].trim_start();
            while !a.is_empty() {
                let eq = a.find('=').ok_or("attribute without =")?;
                let key = &a[..eq];
                if !is_name(key) {
                    return Err(format!("bad attribute name {key:?}"));
                }
                let value_rest = a[eq + 1..].strip_prefix('"').ok_or("unquoted attribute")?;
                let close = value_rest.find('"').ok_or("unterminated attribute")?;
                let raw = &value_rest[..close];
                if raw.contains('<') {
                    return Err("< in attribute".into());
                }
                if attrs.iter().any(|(k, _)| k == key) {
                    return Err(format!("duplicate attribute {key}"));
                }
                if let Some(prefix) = key.strip_prefix("xmlns:") {
                    prefixes.push(prefix.to_owned());
                }
                attrs.push((key.to_owned(), unescape(raw)?));
                let after = &value_rest[close + 1..];
                if !after.is_empty() && !after.starts_with(char::is_whitespace) {
                    return Err("attributes not separated".into());
                }
                a = after.trim_start();
            }
            for qname in std::iter::once(name).chain(attrs.iter().map(|(k, _)| k.as_str())) {
                if let Some((prefix, _)) = qname.split_once(':') {
                    if !prefixes.iter().any(|p| p == prefix) {
                        return Err(format!("unbound prefix in {qname}"));
                    }
                }
            }
            elements.push(Element {
                name: name.to_owned(),
                attrs,
                text: String::new(),
            });
            if !self_closing {
                stack.push(name.to_owned());
                open_indices.push(elements.len() - 1);
            }
        }
        if !stack.is_empty() {
            return Err(format!("unclosed {stack:?}"));
        }
        if roots != 1 {
            return Err("no root".into());
        }
        Ok(elements)
    }

    fn find<'a>(elements: &'a [Element], name: &str) -> Vec<&'a Element> {
        elements.iter().filter(|e| e.name == name).collect()
    }

    fn attr<'a>(e: &'a Element, key: &str) -> Option<&'a str> {
        e.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn xml_matches_expected_document() {
        let r = record("wn1.example.org", "d1", 1_795_255_200);
        let expected = r#"<?xml version="1.0" encoding="UTF-8"?>
<urf:JobUsageRecord xmlns:urf="http://schema.ogf.org/urf/2003/09/urf" xmlns:vo="http://www.sgas.se/namespaces/2009/05/ur/vo">
  <urf:RecordIdentity urf:recordId="wn1.example.org/d1/1795255200" urf:createTime="2026-11-21T10:00:05Z"/>
  <urf:JobIdentity>
    <urf:LocalJobId>1234.batch</urf:LocalJobId>
  </urf:JobIdentity>
  <urf:UserIdentity>
    <urf:LocalUserId>atlasprd001</urf:LocalUserId>
    <urf:GlobalUserName>/DC=ch/DC=cern/OU=Users/CN=Jane Doe</urf:GlobalUserName>
    <vo:VO vo:type="voms">
      <vo:Name>atlas</vo:Name>
      <vo:Attribute>
        <vo:Group>/atlas</vo:Group>
        <vo:Role>production</vo:Role>
      </vo:Attribute>
    </vo:VO>
  </urf:UserIdentity>
  <urf:JobName>d1</urf:JobName>
  <urf:Status>job-finished</urf:Status>
  <urf:WallDuration>PT100S</urf:WallDuration>
  <urf:CpuDuration>PT50S</urf:CpuDuration>
  <urf:CpuDuration urf:usageType="user">PT40.25S</urf:CpuDuration>
  <urf:CpuDuration urf:usageType="system">PT9.75S</urf:CpuDuration>
  <urf:StartTime>2026-11-21T09:58:20Z</urf:StartTime>
  <urf:EndTime>2026-11-21T10:00:00Z</urf:EndTime>
  <urf:MachineName>wn1.example.org</urf:MachineName>
  <urf:Host urf:primary="true">wn1.example.org</urf:Host>
  <urf:Processors>3</urf:Processors>
  <urf:Memory urf:storageUnit="KB" urf:metric="max" urf:type="physical">2049</urf:Memory>
  <urf:Network urf:storageUnit="B" urf:metric="total" urf:description="receive">300</urf:Network>
  <urf:Network urf:storageUnit="B" urf:metric="total" urf:description="transmit">400</urf:Network>
  <urf:Disk urf:storageUnit="B" urf:metric="total" urf:description="read">1000</urf:Disk>
  <urf:Disk urf:storageUnit="B" urf:metric="total" urf:description="write">2000</urf:Disk>
</urf:JobUsageRecord>
"#;
        let xml = r.to_ogf_xml_at(1_795_255_205);
        assert_eq!(xml, expected);
        parse_xml(&xml).unwrap();
    }

    #[test]
    fn xml_minimal_record_without_job_dn_or_vo() {
        let r = UsageRecord {
            record_id: "h/d/10".into(),
            host: "h".into(),
            domain: "d".into(),
            account: "alice".into(),
            exit_cause: "idle".into(),
            end: 10,
            ..UsageRecord::default()
        };
        let xml = r.to_ogf_xml_at(10);
        let elements = parse_xml(&xml).unwrap();
        assert_eq!(find(&elements, "urf:LocalJobId")[0].text, "d");
        for absent in [
            "urf:JobName",
            "urf:GlobalUserName",
            "vo:VO",
            "urf:Memory",
            "urf:Network",
            "urf:Disk",
            "urf:Processors",
        ] {
            assert!(find(&elements, absent).is_empty(), "{absent}");
        }
    }

    #[test]
    fn xml_fqans_split_into_group_role_capability() {
        let mut r = record("h", "d", 1000);
        r.fqans = vec![
            "/atlas/lcg1/Role=pilot/Capability=NULL".into(),
            "/atlas/Role=NULL/Capability=cap1".into(),
            "/atlas".into(),
            "Role=odd".into(),
        ];
        let elements = parse_xml(&r.to_ogf_xml_at(0)).unwrap();
        let groups: Vec<&str> = find(&elements, "vo:Group")
            .iter()
            .map(|e| e.text.as_str())
            .collect();
        assert_eq!(groups, ["/atlas/lcg1", "/atlas", "/atlas", "Role=odd"]);
        let roles: Vec<&str> = find(&elements, "vo:Role")
            .iter()
            .map(|e| e.text.as_str())
            .collect();
        assert_eq!(roles, ["pilot", "odd"]);
        let caps: Vec<&str> = find(&elements, "vo:Capability")
            .iter()
            .map(|e| e.text.as_str())
            .collect();
        assert_eq!(caps, ["cap1"]);

        // Without FQANs, group and role build the attribute.
        r.fqans.clear();
        let elements = parse_xml(&r.to_ogf_xml_at(0)).unwrap();
        assert_eq!(find(&elements, "vo:Group")[0].text, "/atlas");
        assert_eq!(find(&elements, "vo:Role")[0].text, "production");
    }

    #[test]
    fn xml_escapes_hostile_values() {
        let hostile = "a&b<c>d\"e'f\u{0}g\u{1b}[31mh\r\u{7f}i\u{85}j\u{FFFE}k\tl\nm]]>n&amp;o";
        // What survives: escaping is reversible, forbidden characters are gone.
        let kept = "a&b<c>d\"e'fg[31mhijk\tl\nm]]>n&amp;o";
        let mut r = record(hostile, hostile, 1000);
        r.record_id = hostile.to_owned();
        r.dn = Some(format!("/CN={hostile}</urf:GlobalUserName><urf:Injected/>"));
        r.vo = hostile.to_owned();
        r.account = hostile.to_owned();
        r.job_id = Some(hostile.to_owned());
        r.exit_cause = hostile.to_owned();
        r.fqans = vec![format!("/{hostile}/Role={hostile}")];
        let xml = r.to_ogf_xml_at(0);
        let elements = parse_xml(&xml).unwrap();
        assert!(find(&elements, "urf:Injected").is_empty());
        let identity = find(&elements, "urf:RecordIdentity")[0];
        assert_eq!(attr(identity, "urf:recordId"), Some(kept));
        for name in [
            "urf:LocalJobId",
            "urf:LocalUserId",
            "urf:Status",
            "urf:MachineName",
            "urf:Host",
            "urf:JobName",
            "vo:Name",
            "vo:Role",
        ] {
            assert_eq!(find(&elements, name)[0].text, kept, "{name}");
        }
        assert_eq!(
            find(&elements, "urf:GlobalUserName")[0].text,
            format!("/CN={kept}</urf:GlobalUserName><urf:Injected/>")
        );
        // Tab and newline survive in attributes as character references.
        assert!(xml.contains("k&#9;l&#10;m"));
        assert_eq!(
            xml_escape("<&>\"'\u{7}x"),
            "&lt;&amp;&gt;&quot;&apos;x".to_owned()
        );
    }

    #[test]
    fn well_formedness_checker_rejects_broken_documents() {
        let head = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>";
        for bad in [
            "<a><b></a></b>",
            "<a>x & y</a>",
            "<a b=\"1\" b=\"2\"/>",
            "<a b=1/>",
            "<a/><b/>",
            "<a>",
            "<p:a/>",
            "<a>\u{1}</a>",
            "<a x=\"<\"/>",
        ] {
            assert!(parse_xml(&format!("{head}{bad}")).is_err(), "{bad}");
        }
        assert!(parse_xml(&format!("{head}<a x=\"&lt;\">t<b/></a>")).is_ok());
    }

    // ---- file names ----

    #[test]
    fn xml_file_names_cannot_escape() {
        for id in [
            "../../etc/passwd",
            "..",
            ".",
            "",
            "/abs/path",
            "a/b/../c",
            ".hidden",
            "x\0y",
            "wn1/d%2F/1",
        ] {
            let name = xml_file_name(id);
            assert!(!name.contains('/') && !name.contains('\0'), "{name}");
            assert!(!name.starts_with('.'), "{name}");
            assert!(name.ends_with(".xml"));
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.%~".contains(&b)));
        }
        assert_eq!(xml_file_name("../x"), "%2E.%2Fx.xml");
        assert_eq!(xml_file_name("wn1/d1/1700"), "wn1%2Fd1%2F1700.xml");
        // Injective: escaping '%' keeps "a/b" and "a%2Fb" apart.
        assert_ne!(xml_file_name("a/b"), xml_file_name("a%2Fb"));
        assert_ne!(xml_file_name("a/b"), xml_file_name("a_b"));
        // Long ids stay within NAME_MAX and distinct.
        let long_a = "é".repeat(300);
        let long_b = format!("{}x", "é".repeat(300));
        assert!(xml_file_name(&long_a).len() <= 255);
        assert_ne!(xml_file_name(&long_a), xml_file_name(&long_b));
    }

    #[test]
    fn append_keeps_xml_inside_ur_dir() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("log");
        let log = RecordLog::new(&root, RotateLimits::default());
        let mut r = record("h", "d", 1000);
        r.record_id = "../../escape/../x".to_owned();
        log.append(&r).unwrap();
        r.record_id = "/etc/passwd".to_owned();
        log.append(&r).unwrap();
        let names: Vec<String> = fs::read_dir(log.xml_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(log.xml_path("../../escape/../x").is_file());
        assert!(log.xml_path("/etc/passwd").is_file());
        // Nothing was created next to the log directory.
        let outside: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(outside.len(), 1);
        assert!(!dir.path().join("escape").exists());
    }

    // ---- the log ----

    #[test]
    fn append_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::new(dir.path(), RotateLimits::default()).with_fsync(true);
        assert!(
            log.read_all().unwrap().is_empty(),
            "missing files read as empty"
        );
        let records: Vec<UsageRecord> = (0..3)
            .map(|i| record("wn1", &format!("d{i}"), 1000 + i))
            .collect();
        for r in &records {
            log.append(r).unwrap();
        }
        assert_eq!(log.read_all().unwrap(), records);
        let text = fs::read_to_string(log.jsonl_path()).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with('\n'));
        let xml = fs::read_to_string(log.xml_path(&records[1].record_id)).unwrap();
        let elements = parse_xml(&xml).unwrap();
        assert_eq!(find(&elements, "urf:JobName")[0].text, "d1");
        // No temporary files left behind.
        assert_eq!(fs::read_dir(log.xml_dir()).unwrap().count(), 3);
        // Missing directory reads as empty too.
        let absent = RecordLog::new(&dir.path().join("nope"), RotateLimits::default());
        assert_eq!(absent.read_all_counted().unwrap(), ReadReport::default());
    }

    #[test]
    fn appending_same_id_replaces_xml() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::new(dir.path(), RotateLimits::default());
        let mut r = record("h", "d", 1000);
        log.append(&r).unwrap();
        r.exit_cause = exit_cause::OOM_KILLED.to_owned();
        log.append(&r).unwrap();
        let xml = fs::read_to_string(log.xml_path(&r.record_id)).unwrap();
        assert!(xml.contains("<urf:Status>oom-killed</urf:Status>"));
        assert_eq!(fs::read_dir(log.xml_dir()).unwrap().count(), 1);
    }

    #[test]
    fn corrupt_lines_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::new(dir.path(), RotateLimits::default());
        log.append(&record("h", "a", 1000)).unwrap();
        {
            let mut f = OpenOptions::new()
                .append(true)
                .open(log.jsonl_path())
                .unwrap();
            f.write_all(b"not json at all\n\n   \n{\"record_id\":\"x\"}\n\xff\xfe\n")
                .unwrap();
        }
        log.append(&record("h", "b", 1001)).unwrap();
        {
            // A torn final line, as after a crash mid-write.
            let mut f = OpenOptions::new()
                .append(true)
                .open(log.jsonl_path())
                .unwrap();
            let line = record("h", "c", 1002).to_json_line();
            f.write_all(&line.as_bytes()[..line.len() / 2]).unwrap();
        }
        let report = log.read_all_counted().unwrap();
        let domains: Vec<&str> = report.records.iter().map(|r| r.domain.as_str()).collect();
        assert_eq!(domains, ["a", "b"]);
        assert_eq!(report.skipped_lines, 4);
        assert_eq!(log.read_all().unwrap().len(), 2);
    }

    #[test]
    fn rotation_keeps_limited_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let line_len = record("h", "d00", 1000).to_json_line().len() as u64 + 1;
        let limits = RotateLimits {
            // Three lines per file.
            max_bytes: line_len * 3,
            keep: 2,
            max_xml_files: 0,
        };
        let log = RecordLog::new(dir.path(), limits);
        for i in 0..20u64 {
            log.append(&record("h", &format!("d{i:02}"), 1000 + i))
                .unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [".lock", "usage.jsonl", "usage.jsonl.1", "usage.jsonl.2"]
        );
        for name in ["usage.jsonl", "usage.jsonl.1", "usage.jsonl.2"] {
            assert!(fs::metadata(dir.path().join(name)).unwrap().len() <= limits.max_bytes);
        }
        // 20 lines: files hold 18..19 (current), 15..17 (.1), 12..14 (.2); older ones dropped.
        let ends: Vec<u64> = log.read_all().unwrap().iter().map(|r| r.end).collect();
        assert_eq!(ends, (1012..1020).collect::<Vec<_>>());
        assert!(!log.xml_dir().exists(), "XML disabled");
    }

    #[test]
    fn rotation_with_keep_zero_and_lowered_keep() {
        let dir = tempfile::tempdir().unwrap();
        let line_len = record("h", "d00", 1000).to_json_line().len() as u64 + 1;
        let mut limits = RotateLimits {
            max_bytes: line_len,
            keep: 4,
            max_xml_files: 0,
        };
        let log = RecordLog::new(dir.path(), limits);
        for i in 0..6u64 {
            log.append(&record("h", &format!("d{i:02}"), 1000 + i))
                .unwrap();
        }
        assert!(dir.path().join("usage.jsonl.4").exists());
        // A lower keep removes the surplus files at the next rotation.
        limits.keep = 1;
        let log = RecordLog::new(dir.path(), limits);
        log.append(&record("h", "d06", 1006)).unwrap();
        assert!(!dir.path().join("usage.jsonl.2").exists());
        let ends: Vec<u64> = log.read_all().unwrap().iter().map(|r| r.end).collect();
        assert_eq!(ends, [1005, 1006]);
        // keep = 0: a full log is dropped.
        limits.keep = 0;
        let log = RecordLog::new(dir.path(), limits);
        log.append(&record("h", "d07", 1007)).unwrap();
        let ends: Vec<u64> = log.read_all().unwrap().iter().map(|r| r.end).collect();
        assert_eq!(ends, [1007]);
    }

    #[test]
    fn rotated_file_names_are_parsed_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::new(dir.path(), RotateLimits::default());
        for name in [
            "usage.jsonl.01",
            "usage.jsonl.x",
            "usage.jsonl.",
            "usage.jsonl.1.tmp",
        ] {
            fs::write(dir.path().join(name), record("h", name, 1).to_json_line()).unwrap();
        }
        fs::write(
            dir.path().join("usage.jsonl.10"),
            record("h", "ten", 1).to_json_line() + "\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("usage.jsonl.2"),
            record("h", "two", 2).to_json_line() + "\n",
        )
        .unwrap();
        let domains: Vec<String> = log
            .read_all()
            .unwrap()
            .into_iter()
            .map(|r| r.domain)
            .collect();
        assert_eq!(domains, ["ten", "two"]);
    }

    #[test]
    fn xml_directory_is_pruned_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let limits = RotateLimits {
            max_xml_files: 10,
            ..RotateLimits::default()
        };
        let log = RecordLog::new(dir.path(), limits);
        // A stale temporary file from a crash.
        fs::create_dir_all(log.xml_dir()).unwrap();
        let stale = log.xml_dir().join(".tmp-1-2-3");
        let file = File::create(&stale).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
        drop(file);
        for i in 0..25u64 {
            let r = record("h", "d", 1000 + i);
            log.append(&r).unwrap();
            // Distinct mtimes even on coarse-grained file systems.
            File::options()
                .write(true)
                .open(log.xml_path(&r.record_id))
                .unwrap()
                .set_modified(UNIX_EPOCH + Duration::from_secs(1_000_000 + i))
                .unwrap();
            let count = fs::read_dir(log.xml_dir()).unwrap().count();
            assert!(count <= 10, "{count} files after {i}");
        }
        assert!(!stale.exists());
        assert!(log.xml_path("h/d/1024").exists());
        assert!(!log.xml_path("h/d/1000").exists());
        let remaining = fs::read_dir(log.xml_dir()).unwrap().count();
        let oldest_kept = (1000..1025u64)
            .find(|end| log.xml_path(&format!("h/d/{end}")).exists())
            .unwrap();
        // Everything from the oldest kept onwards is present.
        assert_eq!(remaining as u64, 1025 - oldest_kept);
        // The JSON log is never pruned.
        assert_eq!(log.read_all().unwrap().len(), 25);
    }

    #[test]
    fn concurrent_appends_do_not_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let line_len = record("h", "t0-00", 1000).to_json_line().len() as u64 + 1;
        let limits = RotateLimits {
            max_bytes: line_len * 7,
            keep: 100,
            max_xml_files: 1000,
        };
        std::thread::scope(|s| {
            for t in 0..4 {
                let root = dir.path().to_path_buf();
                s.spawn(move || {
                    let log = RecordLog::new(&root, limits);
                    for i in 0..25u64 {
                        log.append(&record("h", &format!("t{t}-{i:02}"), 1000 + i))
                            .unwrap();
                    }
                });
            }
        });
        let report = RecordLog::new(dir.path(), limits)
            .read_all_counted()
            .unwrap();
        assert_eq!(report.skipped_lines, 0);
        assert_eq!(report.records.len(), 100);
        // Each thread's records appear in its own order.
        for t in 0..4 {
            let mine: Vec<u64> = report
                .records
                .iter()
                .filter(|r| r.domain.starts_with(&format!("t{t}-")))
                .map(|r| r.end)
                .collect();
            assert_eq!(mine, (1000..1025).collect::<Vec<_>>());
        }
    }

    #[test]
    fn error_names_path_and_operation() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        fs::write(&file, b"x").unwrap();
        let log = RecordLog::new(&file.join("sub"), RotateLimits::default());
        let err = log.append(&record("h", "d", 1000)).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("create directory "), "{text}");
        assert!(text.contains("plain-file"), "{text}");
    }

    // ---- filter and summary ----

    fn sample() -> Vec<UsageRecord> {
        let mut a = record("h", "d1", 1000);
        a.vo = "atlas".into();
        a.account = "atl1".into();
        a.memory_max_bytes = Some(100);
        let mut b = record("h", "d2", 2000);
        b.vo = "atlas".into();
        b.account = "atl2".into();
        b.job_id = None;
        b.memory_max_bytes = Some(300);
        b.io_read_bytes = None;
        b.network_receive_bytes = None;
        let mut c = record("h", "d3", 3000);
        c.vo = "cms".into();
        c.account = "cms1".into();
        c.job_id = Some("77".into());
        c.memory_max_bytes = None;
        c.io_read_bytes = None;
        c.io_write_bytes = None;
        c.network_receive_bytes = None;
        c.network_transmit_bytes = None;
        c.cpu_seconds = f64::NAN;
        vec![a, b, c]
    }

    fn domains(records: &[&UsageRecord]) -> Vec<String> {
        records.iter().map(|r| r.domain.clone()).collect()
    }

    #[test]
    fn filter_fields() {
        let records = sample();
        let all = UsageFilter::default();
        assert_eq!(all.apply(&records).len(), 3);
        let f = UsageFilter {
            vo: Some("atlas".into()),
            ..UsageFilter::default()
        };
        assert_eq!(domains(&f.apply(&records)), ["d1", "d2"]);
        let f = UsageFilter {
            account: Some("cms1".into()),
            ..UsageFilter::default()
        };
        assert_eq!(domains(&f.apply(&records)), ["d3"]);
        let f = UsageFilter {
            domain: Some("d2".into()),
            ..UsageFilter::default()
        };
        assert_eq!(domains(&f.apply(&records)), ["d2"]);
        let f = UsageFilter {
            job: Some("77".into()),
            ..UsageFilter::default()
        };
        assert_eq!(domains(&f.apply(&records)), ["d3"]);
        let f = UsageFilter {
            since: Some(2000),
            until: Some(3000),
            ..UsageFilter::default()
        };
        assert_eq!(
            domains(&f.apply(&records)),
            ["d2"],
            "since inclusive, until exclusive"
        );
        let f = UsageFilter {
            vo: Some("atlas".into()),
            since: Some(1500),
            ..UsageFilter::default()
        };
        assert_eq!(domains(&f.apply(&records)), ["d2"]);
        let f = UsageFilter {
            vo: Some("lhcb".into()),
            ..UsageFilter::default()
        };
        assert!(f.apply(&records).is_empty());
    }

    #[test]
    fn summarize_by_vo() {
        let records = sample();
        let s = summarize(&records, GroupBy::Vo);
        assert_eq!(s.len(), 2);
        let atlas = &s[0];
        assert_eq!(atlas.key, "atlas");
        assert_eq!(atlas.records, 2);
        assert_eq!(atlas.wall_seconds, 200);
        assert_eq!(atlas.cpu_user_seconds, 80.5);
        assert_eq!(atlas.cpu_system_seconds, 19.5);
        assert_eq!(atlas.cpu_seconds, 100.0);
        assert_eq!(atlas.memory_max_bytes, Some(300));
        assert_eq!(
            atlas.io_read_bytes,
            Some(1000),
            "only records that report it"
        );
        assert_eq!(atlas.io_write_bytes, Some(4000));
        assert_eq!(atlas.network_receive_bytes, Some(300));
        assert_eq!(atlas.network_transmit_bytes, Some(800));
        assert_eq!(atlas.first_start, Some(900));
        assert_eq!(atlas.last_end, Some(2000));
        let cms = &s[1];
        assert_eq!(cms.key, "cms");
        assert_eq!(cms.records, 1);
        assert_eq!(cms.cpu_seconds, 0.0, "NaN counts as 0");
        assert_eq!(cms.memory_max_bytes, None);
        assert_eq!(cms.io_read_bytes, None);
        assert_eq!(cms.network_transmit_bytes, None);
    }

    #[test]
    fn summarize_other_groupings() {
        let records = sample();
        let keys =
            |g| -> Vec<String> { summarize(&records, g).into_iter().map(|s| s.key).collect() };
        assert_eq!(keys(GroupBy::Account), ["atl1", "atl2", "cms1"]);
        assert_eq!(keys(GroupBy::Domain), ["d1", "d2", "d3"]);
        let total = summarize(&records, GroupBy::None);
        assert_eq!(total.len(), 1);
        assert_eq!(total[0].key, "all");
        assert_eq!(total[0].records, 3);
        assert_eq!(total[0].wall_seconds, 300);
        assert!(summarize(&[], GroupBy::None).is_empty());
        // Works on filtered references too.
        let f = UsageFilter {
            vo: Some("cms".into()),
            ..UsageFilter::default()
        };
        let s = summarize(f.apply(&records), GroupBy::Account);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].key, "cms1");
    }

    #[test]
    fn group_by_parses() {
        assert_eq!("vo".parse::<GroupBy>().unwrap(), GroupBy::Vo);
        assert_eq!("Account".parse::<GroupBy>().unwrap(), GroupBy::Account);
        assert_eq!("domain".parse::<GroupBy>().unwrap(), GroupBy::Domain);
        assert_eq!("none".parse::<GroupBy>().unwrap(), GroupBy::None);
        assert!("host".parse::<GroupBy>().is_err());
        assert_eq!(
            serde_json::to_string(&GroupBy::Account).unwrap(),
            "\"account\""
        );
    }
}
