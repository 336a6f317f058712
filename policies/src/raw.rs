//! The policy file as written: every value keeps its byte span so that
//! validation can report exact positions, and leaves are loosely typed
//! ([`Scalar`]) so that one wrong type does not hide the other errors.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_spanned::Spanned;

/// Any TOML leaf value; arrays and tables are kept only as their kind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    /// An array, table or datetime where a plain value was expected.
    Other(&'static str),
}

impl Scalar {
    /// "an integer", "a string"... for type mismatch messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Scalar::Int(_) => "an integer",
            Scalar::Float(_) => "a float",
            Scalar::Str(_) => "a string",
            Scalar::Bool(_) => "a boolean",
            Scalar::Other(kind) => kind,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        // TOML integers are i64, so this only happens for other formats.
        Ok(i64::try_from(v).map_or(Scalar::Other("a too large integer"), Scalar::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("a table or datetime"))
    }
}

/// An optional leaf with its span.
pub(crate) type Field = Option<Spanned<Scalar>>;

/// An optional array of leaves, each with its span.
pub(crate) type List = Option<Spanned<Vec<Spanned<Scalar>>>>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a policy file with [vo.NAME] tables")]
pub(crate) struct RawFile {
    #[serde(default)]
    pub vo: BTreeMap<Spanned<String>, Spanned<RawVo>>,
}

/// `cpu = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { limit = \"2\", weight = 100 }"
)]
pub(crate) struct RawCpu {
    #[serde(default)]
    pub limit: Field,
    #[serde(default)]
    pub weight: Field,
}

/// `memory = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { limit = \"2G\", soft = \"1G\", swap = \"0\" }"
)]
pub(crate) struct RawMemory {
    #[serde(default)]
    pub limit: Field,
    #[serde(default)]
    pub soft: Field,
    #[serde(default)]
    pub swap: Field,
}

/// One entry of `io = [ ... ]`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { device = \"8:0\", read = \"100M\" }"
)]
pub(crate) struct RawIo {
    #[serde(default)]
    pub device: Field,
    #[serde(default)]
    pub read: Field,
    #[serde(default)]
    pub write: Field,
    #[serde(default)]
    pub read_iops: Field,
    #[serde(default)]
    pub write_iops: Field,
}

/// `cpuset = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { cpus = \"0-1\", mems = \"0\" }"
)]
pub(crate) struct RawCpuSet {
    #[serde(default)]
    pub cpus: Field,
    #[serde(default)]
    pub mems: Field,
}

/// `idle = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { action = \"freeze\", after = \"10m\" }"
)]
pub(crate) struct RawIdle {
    #[serde(default)]
    pub action: Field,
    #[serde(default)]
    pub after: Field,
}

/// The keys of an inline table, in the order written, each with its span.
pub(crate) type Entries = Vec<(Spanned<String>, Spanned<Scalar>)>;

/// Reads a table key by key into [`Entries`]; `expecting` describes the table in type errors.
struct EntriesVisitor(&'static str);

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Entries;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
        let mut out = Vec::new();
        while let Some(entry) = map.next_entry::<Spanned<String>, Spanned<Scalar>>()? {
            out.push(entry);
        }
        Ok(out)
    }
}

/// Declares a table kept as written, key by key, so that an unknown key is
/// reported with its own field name and value (and does not stop the other
/// checks) instead of failing the whole file.
macro_rules! keyed_table {
    ($(#[$m:meta])* $name:ident, $expecting:literal) => {
        $(#[$m])*
        #[derive(Debug)]
        pub(crate) struct $name(pub Entries);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer
                    .deserialize_map(EntriesVisitor($expecting))
                    .map($name)
            }
        }
    };
}

keyed_table! {
    /// `monitor = { ... }`.
    RawMonitor,
    "a table like { oom_kill = \"kill\", cpu_throttled_ratio = 0.5 }"
}

keyed_table! {
    /// One entry of `map = [ ... ]`.
    RawMapEntry,
    "a table like { fqan = \"/vo/Role=pilot\", pool = \"vopil\" } or { dn = \"/DC=org/CN=Jane Doe\", account = \"jdoe\" }"
}

keyed_table! {
    /// One entry of `group_map = [ ... ]`.
    RawGroupMapEntry,
    "a table like { fqan = \"/vo/production\", group = \"voprd\" }"
}

/// `network = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { mode = \"nat\", egress = \"200mbit\", ports = [\"8080:80\"] }"
)]
pub(crate) struct RawNetwork {
    #[serde(default)]
    pub mode: Field,
    #[serde(default)]
    pub egress: Field,
    #[serde(default)]
    pub ingress: Field,
    #[serde(default)]
    pub burst: Field,
    #[serde(default)]
    pub shaper: Field,
    #[serde(default)]
    pub ports: List,
    #[serde(default)]
    pub isolated: Field,
}

/// `paths = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { private = [\"/scratch\"], readonly = [\"/opt/sw\"] }"
)]
pub(crate) struct RawPaths {
    #[serde(default)]
    pub private: List,
    #[serde(default)]
    pub readonly: List,
}

/// The settings shared by VO sections and rules, borrowed from either.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Common<'a> {
    pub granularity: Option<&'a Spanned<Scalar>>,
    pub backend: Option<&'a Spanned<Scalar>>,
    pub template: Option<&'a Spanned<Scalar>>,
    pub cpu: Option<&'a Spanned<RawCpu>>,
    pub memory: Option<&'a Spanned<RawMemory>>,
    pub pids: Option<&'a Spanned<Scalar>>,
    pub io: Option<&'a Spanned<Vec<Spanned<RawIo>>>>,
    pub cpuset: Option<&'a Spanned<RawCpuSet>>,
    pub priority: Option<&'a Spanned<Scalar>>,
    pub owner_may: Option<&'a Spanned<Vec<Spanned<Scalar>>>>,
    pub idle: Option<&'a Spanned<RawIdle>>,
    pub monitor: Option<&'a Spanned<RawMonitor>>,
    pub network: Option<&'a Spanned<RawNetwork>>,
    pub paths: Option<&'a Spanned<RawPaths>>,
    pub userns: Option<&'a Spanned<Scalar>>,
}

/// Declares a section struct holding the shared settings plus `extra`
/// fields; serde's `flatten` would be shorter but disables
/// `deny_unknown_fields`.
macro_rules! section {
    ($(#[$m:meta])* $name:ident { $($extra:ident : $ety:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields, expecting = "a table of policy settings")]
        pub(crate) struct $name {
            $(#[serde(default)] pub $extra: $ety,)*
            #[serde(default)] pub granularity: Field,
            #[serde(default)] pub backend: Field,
            #[serde(default)] pub template: Field,
            #[serde(default)] pub cpu: Option<Spanned<RawCpu>>,
            #[serde(default)] pub memory: Option<Spanned<RawMemory>>,
            #[serde(default)] pub pids: Field,
            #[serde(default)] pub io: Option<Spanned<Vec<Spanned<RawIo>>>>,
            #[serde(default)] pub cpuset: Option<Spanned<RawCpuSet>>,
            #[serde(default)] pub priority: Field,
            #[serde(default)] pub owner_may: List,
            #[serde(default)] pub idle: Option<Spanned<RawIdle>>,
            #[serde(default)] pub monitor: Option<Spanned<RawMonitor>>,
            #[serde(default)] pub network: Option<Spanned<RawNetwork>>,
            #[serde(default)] pub paths: Option<Spanned<RawPaths>>,
            #[serde(default)] pub userns: Field,
        }

        impl $name {
            pub(crate) fn common(&self) -> Common<'_> {
                Common {
                    granularity: self.granularity.as_ref(),
                    backend: self.backend.as_ref(),
                    template: self.template.as_ref(),
                    cpu: self.cpu.as_ref(),
                    memory: self.memory.as_ref(),
                    pids: self.pids.as_ref(),
                    io: self.io.as_ref(),
                    cpuset: self.cpuset.as_ref(),
                    priority: self.priority.as_ref(),
                    owner_may: self.owner_may.as_ref(),
                    idle: self.idle.as_ref(),
                    monitor: self.monitor.as_ref(),
                    network: self.network.as_ref(),
                    paths: self.paths.as_ref(),
                    userns: self.userns.as_ref(),
                }
            }
        }
    };
}

section! {
    /// `[vo.NAME]`: VO defaults and its rules.
    RawVo {
        group: Vec<Spanned<RawRule>>,
        role: Vec<Spanned<RawRule>>,
        map: Option<Spanned<Vec<Spanned<RawMapEntry>>>>,
        group_map: Option<Spanned<Vec<Spanned<RawGroupMapEntry>>>>,
    }
}

section! {
    /// `[[vo.NAME.group]]` or `[[vo.NAME.role]]`.
    RawRule {
        fqan: Field,
    }
}
