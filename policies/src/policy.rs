//! Loading, validating and resolving VO policy files.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_spanned::Spanned;

use crate::error::{PolicyError, PolicyErrors, ResolveError};
use crate::identity::{looks_like_dn, validate_dn, validate_name, Fqan};
use crate::mapping::{GroupMapRule, MapPattern, MapRule, MapTarget, Origin};
use crate::model::{
    BackendKind, CpuSet, Granularity, IdleAction, IoThrottle, LimitAction, LimitKind, NetworkMode,
    Permission, PortForward, Priority, ResolvedRule, Shaper, UnknownVariant,
};
use crate::raw::{
    Common, Entries, RawFile, RawGroupMapEntry, RawIo, RawMapEntry, RawMonitor, RawNetwork,
    RawPaths, RawRule, RawVo, Scalar,
};
use crate::units::{self, format_size, UnitError};

/// Smallest accepted memory limit: below this a domain cannot even start.
const MIN_MEMORY: u64 = 4 << 20;
/// Largest accepted swap limit (1 PiB).
const MAX_SWAP: u64 = 1 << 50;
/// Largest accepted idle timeout (365 days).
const MAX_IDLE_SECS: u64 = 365 * 86_400;
/// Largest accepted `pids` (the kernel's `PID_MAX_LIMIT`).
const MAX_PIDS: u64 = 4_194_304;
/// Largest accepted network burst: the kernel keeps it in 32 bits.
const MAX_BURST: u64 = u32::MAX as u64;
/// Longest accepted path (`PATH_MAX`, with its NUL).
const MAX_PATH: usize = 4095;
/// Longest accepted path component (`NAME_MAX`).
const MAX_NAME: usize = 255;
/// Linux qdiscs other than htb and tbf, which this platform's kernel module
/// set does not ship (named in errors as `sch_<name>`).
const OTHER_QDISCS: &[&str] = &[
    "sfq", "fq", "fq_codel", "fq_pie", "cake", "netem", "codel", "pie", "red", "choke", "sfb",
    "gred", "hfsc", "cbq", "drr", "qfq", "ets", "prio", "multiq", "hhf", "skbprio", "cbs", "etf",
    "taprio", "plug",
];
/// The key of `monitor = { ... }` that is not an action.
const MONITOR_RATIO_KEY: &str = "cpu_throttled_ratio";
/// The keys of a `map` entry.
const MAP_KEYS: &[&str] = &["fqan", "dn", "pool", "account"];
/// The keys of a `group_map` entry.
const GROUP_MAP_KEYS: &[&str] = &["fqan", "group"];
/// Longest value quoted "as written" in an error.
const MAX_WRITTEN: usize = 80;

/// Where a setting was written, for errors found after merging.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Site {
    span: Range<usize>,
    field: String,
}

/// The settings of one section (VO defaults or one rule); `None` = not set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Layer {
    granularity: Option<Granularity>,
    backend: Option<BackendKind>,
    template: Option<String>,
    cpu_limit: Option<u32>,
    cpu_weight: Option<u32>,
    mem_limit: Option<u64>,
    mem_soft: Option<u64>,
    mem_swap: Option<u64>,
    pids: Option<u64>,
    io: Option<Vec<IoThrottle>>,
    cpuset: Option<CpuSet>,
    priority: Option<Priority>,
    owner_may: Option<BTreeSet<Permission>>,
    idle_action: Option<IdleAction>,
    idle_after: Option<u64>,
    /// The `monitor` actions this layer sets, in the order written.
    monitor_actions: Vec<(LimitKind, LimitAction)>,
    /// `monitor.cpu_throttled_ratio`, in thousandths.
    monitor_ratio: Option<u32>,
    net_mode: Option<NetworkMode>,
    egress: Option<u64>,
    ingress: Option<u64>,
    burst: Option<u64>,
    shaper: Option<Shaper>,
    ports: Option<Vec<PortForward>>,
    isolated: Option<bool>,
    private: Option<Vec<PathBuf>>,
    readonly: Option<Vec<PathBuf>>,
    userns: Option<bool>,
    backend_site: Option<Site>,
    template_site: Option<Site>,
    mem_limit_site: Option<Site>,
    mem_soft_site: Option<Site>,
    net_mode_site: Option<Site>,
    ports_site: Option<Site>,
    /// Every valid entry of `paths.private` with where it was written.
    private_sites: Vec<(PathBuf, Site)>,
    /// Every valid entry of `paths.readonly` with where it was written.
    readonly_sites: Vec<(PathBuf, Site)>,
}

impl Layer {
    /// Overrides every field this layer sets, leaving the others.
    fn apply(&self, r: &mut ResolvedRule) {
        fn set<T: Clone>(dst: &mut T, src: &Option<T>) {
            if let Some(v) = src {
                *dst = v.clone();
            }
        }
        fn set_opt<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
            if src.is_some() {
                dst.clone_from(src);
            }
        }
        set(&mut r.granularity, &self.granularity);
        set(&mut r.backend, &self.backend);
        set_opt(&mut r.template, &self.template);
        set_opt(&mut r.quotas.cpu.limit_millicores, &self.cpu_limit);
        set_opt(&mut r.quotas.cpu.weight, &self.cpu_weight);
        set_opt(&mut r.quotas.memory.limit_bytes, &self.mem_limit);
        set_opt(&mut r.quotas.memory.soft_bytes, &self.mem_soft);
        set_opt(&mut r.quotas.memory.swap_bytes, &self.mem_swap);
        set_opt(&mut r.quotas.pids, &self.pids);
        set(&mut r.quotas.io, &self.io);
        set_opt(&mut r.quotas.cpuset, &self.cpuset);
        set(&mut r.priority, &self.priority);
        set(&mut r.owner_may, &self.owner_may);
        set(&mut r.idle.action, &self.idle_action);
        set(&mut r.idle.after_secs, &self.idle_after);
        for &(kind, action) in &self.monitor_actions {
            r.monitor.set_action(kind, action);
        }
        set(&mut r.monitor.cpu_throttled_permille, &self.monitor_ratio);
        let net = &mut r.isolation.network;
        set(&mut net.mode, &self.net_mode);
        set_opt(&mut net.egress, &self.egress);
        set_opt(&mut net.ingress, &self.ingress);
        set_opt(&mut net.burst, &self.burst);
        set(&mut net.shaper, &self.shaper);
        set(&mut net.ports, &self.ports);
        set(&mut net.isolated, &self.isolated);
        set(&mut r.isolation.paths.private, &self.private);
        set(&mut r.isolation.paths.readonly, &self.readonly);
        set(&mut r.isolation.userns, &self.userns);
    }
}

/// A group or role rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    fqan: Fqan,
    canonical: String,
    layer: Layer,
    /// Span of the whole rule table, for errors no single key explains.
    span: Range<usize>,
    field: String,
}

/// One VO's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VoPolicy {
    name: String,
    source: PathBuf,
    line: usize,
    column: usize,
    defaults: Layer,
    rules: Vec<Rule>,
    /// `map` entries, in the order written (moved to the set once the VO is accepted).
    map: Vec<MapRule>,
    /// `group_map` entries, in the order written (likewise).
    group_map: Vec<GroupMapRule>,
}

impl VoPolicy {
    /// Merges the VO defaults with every rule matching `fqan`, least
    /// specific first. Returns the result and the rules applied.
    fn merge(&self, fqan: Option<&Fqan>) -> (ResolvedRule, Vec<&Rule>) {
        let mut r = ResolvedRule::defaults(&self.name, self.source.clone());
        self.defaults.apply(&mut r);
        let Some(fqan) = fqan else {
            return (r, Vec::new());
        };
        let path = fqan.group_path();
        let mut matching: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|rule| {
                let p = rule.fqan.group_path();
                path.starts_with(&p) && (rule.fqan.role.is_none() || rule.fqan.role == fqan.role)
            })
            .collect();
        // Keys are unique among matches: equal length means equal path, and
        // duplicates are rejected at load time.
        matching.sort_by_key(|rule| (rule.fqan.groups.len(), rule.fqan.role.is_some()));
        for rule in &matching {
            rule.layer.apply(&mut r);
        }
        r.matched_fqan = matching.last().map(|rule| rule.canonical.clone());
        r.group = Some(fqan.group());
        r.role.clone_from(&fqan.role);
        (r, matching)
    }
}

/// Inconsistencies only visible once layers are merged.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Conflict {
    SoftAboveLimit {
        soft: u64,
        limit: u64,
    },
    LibvirtWithoutTemplate,
    TemplateWithoutLibvirt,
    /// Ports are forwarded but the network mode is not NAT.
    PortsWithoutNat {
        mode: NetworkMode,
    },
    /// A directory is both private and read-only.
    PrivateAndReadonly {
        path: PathBuf,
    },
}

impl Conflict {
    fn find(r: &ResolvedRule) -> Vec<Conflict> {
        let mut out = Vec::new();
        if let (Some(soft), Some(limit)) = (r.quotas.memory.soft_bytes, r.quotas.memory.limit_bytes)
        {
            if soft > limit {
                out.push(Conflict::SoftAboveLimit { soft, limit });
            }
        }
        match (r.backend, &r.template) {
            (BackendKind::Libvirt, None) => out.push(Conflict::LibvirtWithoutTemplate),
            (BackendKind::Container, Some(_)) => out.push(Conflict::TemplateWithoutLibvirt),
            _ => {}
        }
        let net = &r.isolation.network;
        if net.mode != NetworkMode::Nat && !net.ports.is_empty() {
            out.push(Conflict::PortsWithoutNat { mode: net.mode });
        }
        let paths = &r.isolation.paths;
        for path in &paths.readonly {
            if paths.private.contains(path) {
                out.push(Conflict::PrivateAndReadonly { path: path.clone() });
            }
        }
        out
    }

    fn describe(&self) -> String {
        match *self {
            Conflict::SoftAboveLimit { soft, limit } => format!(
                "memory.soft ({}) is above memory.limit ({})",
                format_size(soft),
                format_size(limit)
            ),
            Conflict::LibvirtWithoutTemplate => "backend \"libvirt\" without a template".into(),
            Conflict::TemplateWithoutLibvirt => "a template with backend \"container\"".into(),
            Conflict::PortsWithoutNat { mode } => format!(
                "network.ports forwards ports, but network.mode is \"{mode}\" (ports need \"nat\")"
            ),
            Conflict::PrivateAndReadonly { ref path } => format!(
                "{:?} is in both paths.private and paths.readonly",
                path.display().to_string()
            ),
        }
    }

    /// The site and message to report, if `layer` wrote one of the
    /// conflicting settings (otherwise a less specific section is to blame
    /// and reports it).
    fn locate<'a>(&self, layer: &'a Layer, r: &ResolvedRule) -> Option<(&'a Site, String)> {
        match *self {
            Conflict::SoftAboveLimit { soft, limit } => {
                if let Some(site) = &layer.mem_soft_site {
                    Some((
                        site,
                        format!("soft limit is above memory.limit ({})", format_size(limit)),
                    ))
                } else {
                    layer.mem_limit_site.as_ref().map(|site| {
                        (
                            site,
                            format!("limit is below memory.soft ({})", format_size(soft)),
                        )
                    })
                }
            }
            // A template was written but is invalid: that error suffices.
            Conflict::LibvirtWithoutTemplate if layer.template_site.is_some() => None,
            Conflict::LibvirtWithoutTemplate => layer.backend_site.as_ref().map(|site| {
                (
                    site,
                    "backend \"libvirt\" requires template = \"<libvirt template name>\"".into(),
                )
            }),
            Conflict::TemplateWithoutLibvirt => {
                if let Some(site) = &layer.template_site {
                    Some((
                        site,
                        "a template is only used with backend = \"libvirt\"".into(),
                    ))
                } else {
                    layer.backend_site.as_ref().map(|site| {
                        let template = r.template.as_deref().unwrap_or_default();
                        (
                            site,
                            format!(
                                "backend \"container\" does not use a template, but template = {template:?} is inherited"
                            ),
                        )
                    })
                }
            }
            // The ports written here are invalid: that error suffices.
            Conflict::PortsWithoutNat { .. }
                if layer.ports_site.is_some() && layer.ports.is_none() =>
            {
                None
            }
            Conflict::PortsWithoutNat { mode } => {
                if let Some(site) = &layer.ports_site {
                    Some((
                        site,
                        format!(
                            "port forwarding requires network.mode = \"nat\", but the mode is \"{mode}\""
                        ),
                    ))
                } else {
                    layer.net_mode_site.as_ref().map(|site| {
                        let ports: Vec<String> = r
                            .isolation
                            .network
                            .ports
                            .iter()
                            .map(|p| format!("\"{p}\""))
                            .collect();
                        (
                            site,
                            format!(
                                "mode \"{mode}\" cannot forward ports, but ports = [{}] is inherited; add ports = [] here",
                                ports.join(", ")
                            ),
                        )
                    })
                }
            }
            Conflict::PrivateAndReadonly { ref path } => {
                let find = |sites: &'a [(PathBuf, Site)]| {
                    sites.iter().find(|(p, _)| p == path).map(|(_, site)| site)
                };
                if let Some(site) = find(&layer.readonly_sites) {
                    Some((
                        site,
                        "also listed in paths.private; a directory is either private or read-only"
                            .into(),
                    ))
                } else {
                    find(&layer.private_sites).map(|site| {
                        (
                            site,
                            "also listed in paths.readonly (inherited); a directory is either private or read-only"
                                .into(),
                        )
                    })
                }
            }
        }
    }
}

/// A validated set of VO policies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySet {
    vos: BTreeMap<String, VoPolicy>,
    files: Vec<PathBuf>,
    mappings: Vec<MapRule>,
    group_mappings: Vec<GroupMapRule>,
}

impl PolicySet {
    /// Parses one policy file's text; `file` is only used in messages and as
    /// the VOs' `source`.
    pub fn parse_str(file: &Path, text: &str) -> Result<PolicySet, PolicyErrors> {
        let mut set = PolicySet::default();
        let mut errors = Vec::new();
        set.add_file(file, text, &mut errors);
        finish(set, errors)
    }

    /// Loads every file, reporting all errors of all files. An unreadable
    /// file is an error naming its path.
    pub fn load_files(files: &[PathBuf]) -> Result<PolicySet, PolicyErrors> {
        let mut set = PolicySet::default();
        let mut errors = Vec::new();
        for file in files {
            match std::fs::read_to_string(file) {
                Ok(text) => set.add_file(file, &text, &mut errors),
                Err(e) => errors.push(unpositioned(file, format!("cannot read file: {e}"))),
            }
        }
        finish(set, errors)
    }

    /// Loads every `*.toml` file directly in `dir`, in name order; other
    /// files, dotfiles and subdirectories are ignored. A missing directory is
    /// an error, an empty one gives an empty set.
    pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyErrors> {
        let unreadable = |e: std::io::Error| {
            PolicyErrors(vec![unpositioned(
                dir,
                format!("cannot read policy directory: {e}"),
            )])
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(unreadable)? {
            let path = entry.map_err(unreadable)?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            // Dotfiles are editor and package-manager leftovers.
            if name.starts_with('.') || path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            // Follows symlinks, so linked policy files count.
            if path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        Self::load_files(&files)
    }

    /// The VO names, sorted.
    pub fn vo_names(&self) -> Vec<&str> {
        self.vos.keys().map(String::as_str).collect()
    }

    /// The files loaded, in load order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Every `map` rule of every VO, in the order written: files in load order
    /// (name order for [`PolicySet::load_dir`]), then by position in the file.
    /// Rules match like grid-mapfile lines: the first rule matching the primary
    /// FQAN, else the first matching the DN. Load rejects a rule that an earlier
    /// one makes unreachable (same DN or FQAN, or an FQAN below an earlier
    /// `/vo/*`). Pools are not checked here: dmsd knows its pools.
    pub fn mappings(&self) -> &[MapRule] {
        &self.mappings
    }

    /// Every `group_map` rule of every VO, in the same order as
    /// [`PolicySet::mappings`]; per FQAN, the first matching rule gives a group.
    pub fn group_mappings(&self) -> &[GroupMapRule] {
        &self.group_mappings
    }

    /// The effective rule for a member of `vo` holding `fqan` (if any): the
    /// VO defaults overridden, field by field, by every matching group and
    /// role rule, most specific last.
    pub fn resolve(&self, vo: &str, fqan: Option<&Fqan>) -> Result<ResolvedRule, ResolveError> {
        let Some(policy) = self.vos.get(vo) else {
            return Err(ResolveError::UnknownVo {
                vo: vo.to_owned(),
                known: self.vos.keys().cloned().collect(),
            });
        };
        if let Some(f) = fqan {
            if f.vo != vo {
                return Err(ResolveError::FqanOfOtherVo {
                    vo: vo.to_owned(),
                    fqan: f.to_string(),
                });
            }
        }
        let (rule, _) = policy.merge(fqan);
        // Load-time checks cover each rule's own chain; only combinations
        // of sibling rules (a group and a role) can still clash here.
        if let Some(conflict) = Conflict::find(&rule).first() {
            return Err(ResolveError::Conflict {
                vo: vo.to_owned(),
                fqan: fqan.map(ToString::to_string).unwrap_or_default(),
                message: conflict.describe(),
            });
        }
        Ok(rule)
    }

    /// Parses and validates one file, adding its VOs and errors.
    fn add_file(&mut self, file: &Path, text: &str, errors: &mut Vec<PolicyError>) {
        self.files.push(file.to_owned());
        let mut cx = Cx::new(file, text);
        let vos = parse_file(&mut cx);
        let mut maps = Vec::new();
        let mut group_maps = Vec::new();
        for mut vo in vos {
            if let Some(first) = self.vos.get(&vo.name) {
                let msg = format!(
                    "VO {:?} is already defined in {}:{}:{}",
                    vo.name,
                    first.source.display(),
                    first.line,
                    first.column
                );
                cx.errors.push(PolicyError {
                    file: file.to_owned(),
                    line: vo.line,
                    column: vo.column,
                    field: format!("vo.{}", key(&vo.name)),
                    value: String::new(),
                    message: msg,
                });
            } else {
                maps.append(&mut vo.map);
                group_maps.append(&mut vo.group_map);
                self.vos.insert(vo.name.clone(), vo);
            }
        }
        add_rules(&mut self.mappings, maps, &mut cx.errors);
        add_rules(&mut self.group_mappings, group_maps, &mut cx.errors);
        let mut found = cx.errors;
        found.sort_by_key(|e| (e.line, e.column));
        errors.extend(found);
    }
}

/// A `map` or `group_map` rule, for the checks both get.
trait Mapping {
    fn pattern(&self) -> &MapPattern;
    fn origin(&self) -> &Origin;
}

impl Mapping for MapRule {
    fn pattern(&self) -> &MapPattern {
        &self.pattern
    }
    fn origin(&self) -> &Origin {
        &self.origin
    }
}

impl Mapping for GroupMapRule {
    fn pattern(&self) -> &MapPattern {
        &self.pattern
    }
    fn origin(&self) -> &Origin {
        &self.origin
    }
}

/// Appends one file's `rules` to `set` in the order written (VO tables are read
/// in name order), each unless an earlier rule makes it unreachable, which is
/// an error.
fn add_rules<T: Mapping>(set: &mut Vec<T>, mut rules: Vec<T>, errors: &mut Vec<PolicyError>) {
    rules.sort_by_key(|r| (r.origin().line, r.origin().column));
    for rule in rules {
        match unreachable(set, &rule) {
            Some(msg) => errors.push(rule.origin().error(msg)),
            None => set.push(rule),
        }
    }
}

/// Why `rule` would never apply after the `earlier` rules; None if it can.
fn unreachable<T: Mapping>(earlier: &[T], rule: &T) -> Option<String> {
    let (pattern, at) = (rule.pattern(), rule.origin());
    let (first, origin) = earlier
        .iter()
        .map(|r| (r.pattern(), r.origin()))
        .find(|(p, _)| pattern.shadowed_by(p))?;
    let place = if origin.file == at.file {
        format!("line {}", origin.line)
    } else {
        format!("{}:{}", origin.file.display(), origin.line)
    };
    Some(if first == pattern {
        format!(
            "duplicate rule for {pattern}: already mapped by {} ({place})",
            origin.field
        )
    } else {
        format!(
            "never applies: {} ({place}) comes first and matches {first}, which includes {pattern}; put the more specific rule first",
            origin.field
        )
    })
}

fn finish(set: PolicySet, errors: Vec<PolicyError>) -> Result<PolicySet, PolicyErrors> {
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(PolicyErrors(errors))
    }
}

fn unpositioned(file: &Path, message: String) -> PolicyError {
    PolicyError {
        file: file.to_owned(),
        line: 0,
        column: 0,
        field: String::new(),
        value: String::new(),
        message,
    }
}

/// A TOML key as it would be written: bare when possible, else quoted.
fn key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

/// Validation context of one file: positions and collected errors.
struct Cx<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<PolicyError>,
}

impl<'a> Cx<'a> {
    fn new(file: &'a Path, text: &'a str) -> Self {
        Cx {
            file,
            text,
            errors: Vec::new(),
        }
    }

    /// 1-based line and character column of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    /// The text of a span, shortened to its first line and a sane length.
    fn written(&self, span: &Range<usize>) -> String {
        let Some(text) = self.text.get(span.clone()) else {
            return String::new();
        };
        let text = text.trim();
        let first = text.lines().next().unwrap_or_default();
        let mut out: String = first.chars().take(MAX_WRITTEN).collect();
        if out.len() < text.len() {
            out.push_str(" ...");
        }
        out
    }

    /// Records an error at `span`, quoting the value written there.
    fn error(&mut self, span: &Range<usize>, field: &str, message: impl Into<String>) {
        let value = self.written(span);
        self.push(span, field, value, message.into());
    }

    /// Records an error at `span` without quoting a value (whole tables).
    fn error_here(&mut self, span: &Range<usize>, field: &str, message: impl Into<String>) {
        self.push(span, field, String::new(), message.into());
    }

    fn push(&mut self, span: &Range<usize>, field: &str, value: String, message: String) {
        let (line, column) = self.position(span.start);
        self.errors.push(PolicyError {
            file: self.file.to_owned(),
            line,
            column,
            field: field.to_owned(),
            value,
            message,
        });
    }

    fn type_error(&mut self, v: &Spanned<Scalar>, field: &str, expected: &str) {
        let msg = format!("expected {expected}, found {}", v.get_ref().kind());
        self.error(&v.span(), field, msg);
    }

    fn unit<T>(&mut self, v: &Spanned<Scalar>, field: &str, r: Result<T, UnitError>) -> Option<T> {
        r.map_err(|e| self.error(&v.span(), field, e.0)).ok()
    }

    fn string(&mut self, v: &Spanned<Scalar>, field: &str) -> Option<String> {
        match v.get_ref() {
            Scalar::Str(s) => Some(s.clone()),
            _ => {
                self.type_error(v, field, "a string");
                None
            }
        }
    }

    fn enumeration<T: FromStr<Err = UnknownVariant>>(
        &mut self,
        v: &Spanned<Scalar>,
        field: &str,
    ) -> Option<T> {
        self.enumeration_or(v, field, |e| {
            format!("expected one of {}", quoted_list(e.expected))
        })
    }

    /// Like [`Cx::enumeration`], with the message for an unknown name made
    /// by `unknown`.
    fn enumeration_or<T: FromStr<Err = UnknownVariant>>(
        &mut self,
        v: &Spanned<Scalar>,
        field: &str,
        unknown: impl FnOnce(&UnknownVariant) -> String,
    ) -> Option<T> {
        let Scalar::Str(s) = v.get_ref() else {
            let expected = match "".parse::<T>() {
                Err(e) => format!("a string, one of {}", quoted_list(e.expected)),
                Ok(_) => "a string".into(),
            };
            self.type_error(v, field, &expected);
            return None;
        };
        match s.parse() {
            Ok(t) => Some(t),
            Err(e) => {
                let msg = unknown(&e);
                self.error(&v.span(), field, msg);
                None
            }
        }
    }

    fn boolean(&mut self, v: &Spanned<Scalar>, field: &str) -> Option<bool> {
        match v.get_ref() {
            Scalar::Bool(b) => Some(*b),
            _ => {
                self.type_error(v, field, "a boolean (true or false)");
                None
            }
        }
    }

    /// A network rate string, in bits per second.
    fn rate(&mut self, v: &Spanned<Scalar>, field: &str) -> Option<u64> {
        match v.get_ref() {
            Scalar::Str(s) => self.unit(v, field, units::parse_rate(s)),
            _ => {
                self.type_error(v, field, "a rate string like \"200mbit\"");
                None
            }
        }
    }

    /// An integer within `min..=max`.
    fn integer(&mut self, v: &Spanned<Scalar>, field: &str, min: u64, max: u64) -> Option<u64> {
        let Scalar::Int(n) = v.get_ref() else {
            self.type_error(v, field, "an integer");
            return None;
        };
        match u64::try_from(*n) {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.error(&v.span(), field, format!("must be between {min} and {max}"));
                None
            }
        }
    }

    fn size(&mut self, v: &Spanned<Scalar>, field: &str) -> Option<u64> {
        self.int_or_unit(
            v,
            field,
            units::parse_size,
            "a size (bytes, or a string like \"8G\")",
        )
    }

    fn duration(&mut self, v: &Spanned<Scalar>, field: &str) -> Option<u64> {
        self.int_or_unit(
            v,
            field,
            units::parse_duration,
            "a duration (seconds, or a string like \"10m\")",
        )
    }

    /// A non-negative integer as written, or a string in the unit syntax `parse` reads.
    fn int_or_unit(
        &mut self,
        v: &Spanned<Scalar>,
        field: &str,
        parse: fn(&str) -> Result<u64, units::UnitError>,
        expected: &str,
    ) -> Option<u64> {
        match v.get_ref() {
            Scalar::Int(n) => match u64::try_from(*n) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.error(&v.span(), field, "must not be negative");
                    None
                }
            },
            Scalar::Str(s) => self.unit(v, field, parse(s)),
            _ => {
                self.type_error(v, field, expected);
                None
            }
        }
    }

    /// A ratio in (0, 1] with at most three decimals, in thousandths.
    fn permille(&mut self, v: &Spanned<Scalar>, field: &str) -> Option<u32> {
        let ratio = match *v.get_ref() {
            Scalar::Float(r) => r,
            // `1` is as good as `1.0`; `0` and the rest fail the range check.
            Scalar::Int(n) => n as f64,
            _ => {
                self.type_error(v, field, "a number greater than 0 and at most 1 (e.g. 0.5)");
                return None;
            }
        };
        if !(ratio > 0.0 && ratio <= 1.0) {
            self.error(&v.span(), field, "must be greater than 0 and at most 1");
            return None;
        }
        let scaled = ratio * 1000.0;
        let rounded = scaled.round();
        if (scaled - rounded).abs() > 1e-6 || rounded < 1.0 {
            self.error(
                &v.span(),
                field,
                "at most 3 decimals are supported (thousandths, e.g. 0.125 or 0.001)",
            );
            return None;
        }
        // In 1..=1000 by the checks above.
        Some(rounded as u32)
    }

    fn cpu(&mut self, v: &Spanned<Scalar>, field: &str) -> Option<u32> {
        let r = match v.get_ref() {
            Scalar::Int(n) => units::cpu_from_int(*n),
            Scalar::Float(f) => units::cpu_from_float(*f),
            Scalar::Str(s) => units::parse_cpu(s),
            _ => Err(UnitError(
                "expected cores (\"4\", \"0.5\") or a percentage (\"250%\")".into(),
            )),
        };
        self.unit(v, field, r)
    }

    fn cpu_list(&mut self, v: &Spanned<Scalar>, field: &str, what: &str) -> Option<String> {
        let s = self.string(v, field)?;
        self.unit(v, field, units::validate_cpu_list(&s, what))?;
        Some(s)
    }

    /// Where `span` is, for messages given after loading.
    fn origin(&self, span: &Range<usize>, field: String) -> Origin {
        let (line, column) = self.position(span.start);
        Origin {
            file: self.file.to_owned(),
            line,
            column,
            field,
            value: self.written(span),
        }
    }

    fn site(v: &Spanned<Scalar>, field: String) -> Site {
        Site {
            span: v.span(),
            field,
        }
    }
}

fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `"a" or "b"`, `"a", "b" or "c"`.
fn either_list(names: &[&str]) -> String {
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => {
            format!("{} or \"{last}\"", quoted_list(rest))
        }
        _ => quoted_list(names),
    }
}

/// Deserializes and validates a whole file.
fn parse_file(cx: &mut Cx<'_>) -> Vec<VoPolicy> {
    let raw: RawFile = match toml::from_str(cx.text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            cx.error_here(&span, "", e.message().trim());
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (name, vo) in &raw.vo {
        let field = format!("vo.{}", key(name.get_ref()));
        if let Err(e) = validate_name("VO name", name.get_ref()) {
            cx.error(&name.span(), &field, e.reason());
            continue;
        }
        out.push(parse_vo(cx, name, vo.get_ref(), &field));
    }
    out
}

fn parse_vo(cx: &mut Cx<'_>, name: &Spanned<String>, raw: &RawVo, field: &str) -> VoPolicy {
    let (line, column) = cx.position(name.span().start);
    let defaults = parse_layer(cx, field, raw.common());
    let mut vo = VoPolicy {
        name: name.get_ref().clone(),
        source: cx.file.to_owned(),
        line,
        column,
        defaults,
        rules: Vec::new(),
        map: Vec::new(),
        group_map: Vec::new(),
    };
    let base = vo.merge(None).0;
    let vo_ok = Conflict::find(&base).is_empty();
    for conflict in Conflict::find(&base) {
        if let Some((site, msg)) = conflict.locate(&vo.defaults, &base) {
            let site = site.clone();
            cx.error(&site.span, &site.field, msg);
        }
    }

    for (kind, list) in [("group", &raw.group), ("role", &raw.role)] {
        for (i, rule) in list.iter().enumerate() {
            let rule_field = format!("{field}.{kind}[{i}]");
            if let Some(rule) = parse_rule(cx, &vo, kind == "role", rule, rule_field) {
                vo.rules.push(rule);
            }
        }
    }

    if let Some(list) = &raw.map {
        for (i, entry) in list.get_ref().iter().enumerate() {
            let entry_field = format!("{field}.map[{i}]");
            if let Some(rule) = parse_map_entry(cx, &vo.name, entry, entry_field) {
                vo.map.push(rule);
            }
        }
    }
    if let Some(list) = &raw.group_map {
        for (i, entry) in list.get_ref().iter().enumerate() {
            let entry_field = format!("{field}.group_map[{i}]");
            if let Some(rule) = parse_group_map_entry(cx, &vo.name, entry, entry_field) {
                vo.group_map.push(rule);
            }
        }
    }

    // Check each rule merged with everything less specific that applies to
    // its own FQAN, reporting only where the rule itself wrote a setting.
    if vo_ok {
        for rule in &vo.rules {
            let merged = vo.merge(Some(&rule.fqan)).0;
            for conflict in Conflict::find(&merged) {
                if let Some((site, msg)) = conflict.locate(&rule.layer, &merged) {
                    cx.error(&site.span, &site.field, msg);
                }
            }
        }
    }
    vo
}

fn parse_rule(
    cx: &mut Cx<'_>,
    vo: &VoPolicy,
    is_role: bool,
    raw: &Spanned<RawRule>,
    field: String,
) -> Option<Rule> {
    let span = raw.span();
    let raw = raw.get_ref();
    // Parse the settings even when the FQAN is bad, to report their errors too.
    let layer = parse_layer(cx, &field, raw.common());
    let fqan_field = format!("{field}.fqan");
    let Some(fqan_v) = &raw.fqan else {
        cx.error_here(&span, &field, "missing fqan");
        return None;
    };
    let text = cx.string(fqan_v, &fqan_field)?;
    let fqan: Fqan = match text.parse() {
        Ok(f) => f,
        Err(e) => {
            let e: crate::identity::FqanError = e;
            cx.error(&fqan_v.span(), &fqan_field, e.reason);
            return None;
        }
    };
    let bad = |cx: &mut Cx<'_>, msg: String| {
        cx.error(&fqan_v.span(), &fqan_field, msg);
        None
    };
    if fqan.vo != vo.name {
        return bad(
            cx,
            format!("the FQAN belongs to VO {:?}, not {:?}", fqan.vo, vo.name),
        );
    }
    if fqan.capability.is_some() {
        return bad(cx, "Capability is not supported in policy rules".into());
    }
    let vo_key = key(&vo.name);
    if is_role && fqan.role.is_none() {
        return bad(
            cx,
            format!(
                "a role rule needs a Role (e.g. \"/{}/Role=production\"); put group rules in [[vo.{vo_key}.group]]",
                vo.name
            ),
        );
    }
    if !is_role && fqan.role.is_some() {
        return bad(
            cx,
            format!("a group rule must not have a Role; put role rules in [[vo.{vo_key}.role]]"),
        );
    }
    let canonical = fqan.to_string();
    if let Some(first) = vo.rules.iter().find(|r| r.canonical == canonical) {
        let (line, _) = cx.position(first.span.start);
        let first_field = first.field.clone();
        return bad(
            cx,
            format!(
                "duplicate rule for {canonical}: already defined by {first_field} (line {line})"
            ),
        );
    }
    Some(Rule {
        fqan,
        canonical,
        layer,
        span,
        field,
    })
}

/// The known keys of a `map` or `group_map` entry, by name; every other key is
/// reported with the message `unknown` gives for it.
fn entry_keys<'e>(
    cx: &mut Cx<'_>,
    field: &str,
    entries: &'e Entries,
    known: &[&str],
    unknown: impl Fn(&str) -> String,
) -> BTreeMap<&'e str, &'e Spanned<Scalar>> {
    let mut out = BTreeMap::new();
    for (name, v) in entries {
        let name_str = name.get_ref().as_str();
        if known.contains(&name_str) {
            // TOML refuses a key written twice in one table.
            out.insert(name_str, v);
        } else {
            let key_field = format!("{field}.{}", key(name_str));
            let value = cx.written(&v.span());
            cx.push(&name.span(), &key_field, value, unknown(name_str));
        }
    }
    out
}

/// The one key given of two alternatives (`fqan`/`dn`, `pool`/`account`), or
/// None after reporting that neither or both are; `what` says what the pair is for.
fn one_of<'e>(
    cx: &mut Cx<'_>,
    keys: &BTreeMap<&str, &'e Spanned<Scalar>>,
    entry: &Range<usize>,
    field: &str,
    names: [&'static str; 2],
    what: &str,
) -> Option<(&'static str, &'e Spanned<Scalar>)> {
    let [a, b] = names;
    match (keys.get(a), keys.get(b)) {
        (Some(v), None) => Some((a, v)),
        (None, Some(v)) => Some((b, v)),
        (None, None) => {
            cx.error_here(entry, field, format!("missing {a} or {b} ({what})"));
            None
        }
        (Some(va), Some(vb)) => {
            // Reported at the one written second.
            let (name, v) = if vb.span().start > va.span().start {
                (b, vb)
            } else {
                (a, va)
            };
            cx.error(
                &v.span(),
                &format!("{field}.{name}"),
                format!("give either {a} or {b}, not both ({what})"),
            );
            None
        }
    }
}

/// Parses `{ fqan | dn = "...", pool | account = "..." }` of a VO's `map`.
fn parse_map_entry(
    cx: &mut Cx<'_>,
    vo: &str,
    raw: &Spanned<RawMapEntry>,
    field: String,
) -> Option<MapRule> {
    let span = raw.span();
    let keys = entry_keys(cx, &field, &raw.get_ref().0, MAP_KEYS, |_| {
        format!("unknown key; expected {}", either_list(MAP_KEYS))
    });
    let matched = one_of(
        cx,
        &keys,
        &span,
        &field,
        ["fqan", "dn"],
        "what the rule matches",
    );
    let target = one_of(
        cx,
        &keys,
        &span,
        &field,
        ["pool", "account"],
        "where the rule maps to",
    );
    // Both halves are checked, so that every error is reported.
    let pattern = matched.and_then(|(name, v)| {
        let key_field = format!("{field}.{name}");
        let text = cx.string(v, &key_field)?;
        let parsed = if name == "dn" {
            dn_pattern(&text)
        } else {
            fqan_pattern(vo, &text)
        };
        parsed
            .map_err(|msg| cx.error(&v.span(), &key_field, msg))
            .ok()
    });
    let target = target.and_then(|(name, v)| {
        let key_field = format!("{field}.{name}");
        let text = cx.string(v, &key_field)?;
        let parsed = if name == "pool" {
            pool_target(&text)
        } else {
            validate_name("account", &text)
                .map(|()| MapTarget::Account(text))
                .map_err(|e| e.reason())
        };
        match parsed {
            Ok(t) => Some((t, cx.origin(&v.span(), key_field))),
            Err(msg) => {
                cx.error(&v.span(), &key_field, msg);
                None
            }
        }
    });
    let (pattern, (target, target_origin)) = (pattern?, target?);
    Some(MapRule {
        vo: vo.to_owned(),
        pattern,
        target,
        origin: cx.origin(&span, field),
        target_origin,
    })
}

/// Parses `{ fqan = "...", group = "..." }` of a VO's `group_map`.
fn parse_group_map_entry(
    cx: &mut Cx<'_>,
    vo: &str,
    raw: &Spanned<RawGroupMapEntry>,
    field: String,
) -> Option<GroupMapRule> {
    let span = raw.span();
    let keys = entry_keys(cx, &field, &raw.get_ref().0, GROUP_MAP_KEYS, |name| {
        if name == "dn" {
            "group_map maps FQANs to groups, not DNs (like the group-mapfile)".into()
        } else {
            format!("unknown key; expected {}", either_list(GROUP_MAP_KEYS))
        }
    });
    let gave_dn = raw.get_ref().0.iter().any(|(k, _)| k.get_ref() == "dn");
    let pattern = match keys.get("fqan") {
        Some(v) => {
            let key_field = format!("{field}.fqan");
            cx.string(v, &key_field).and_then(|text| {
                fqan_pattern(vo, &text)
                    .map_err(|msg| cx.error(&v.span(), &key_field, msg))
                    .ok()
            })
        }
        None => {
            // A dn instead of the fqan is reported once, above.
            if !gave_dn {
                cx.error_here(&span, &field, "missing fqan (what the rule matches)");
            }
            None
        }
    };
    let group = match keys.get("group") {
        Some(v) => {
            let key_field = format!("{field}.group");
            cx.string(v, &key_field)
                .and_then(|text| match validate_name("group", &text) {
                    Ok(()) => Some(text),
                    Err(e) => {
                        cx.error(&v.span(), &key_field, e.reason());
                        None
                    }
                })
        }
        None => {
            cx.error_here(&span, &field, "missing group (the local group to add)");
            None
        }
    };
    let (pattern, group) = (pattern?, group?);
    Some(GroupMapRule {
        vo: vo.to_owned(),
        pattern,
        group,
        origin: cx.origin(&span, field),
    })
}

/// A `dn` key: a certificate subject, checked like a grid-mapfile's.
fn dn_pattern(text: &str) -> Result<MapPattern, String> {
    match validate_dn(text) {
        Ok(()) => Ok(MapPattern::Dn(text.to_owned())),
        Err(e) => {
            let body = text.strip_suffix("/*").unwrap_or(text);
            if body.parse::<Fqan>().is_ok() {
                Err(format!(
                    "{}; this is an FQAN, write fqan = {text:?}",
                    e.reason
                ))
            } else {
                Err(e.reason)
            }
        }
    }
}

/// An `fqan` key of a rule under `[vo.VO]`: an FQAN of that VO, or
/// `/VO/group/*` for every group and role below, as in a grid-mapfile.
fn fqan_pattern(vo: &str, text: &str) -> Result<MapPattern, String> {
    let (body, wildcard) = match text.strip_suffix("/*") {
        Some(body) => (body, true),
        None => (text, false),
    };
    let fqan: Fqan = match body.parse() {
        Ok(f) => f,
        Err(e) => {
            let e: crate::identity::FqanError = e;
            let attribute = text.starts_with("/Role=") || text.starts_with("/Capability=");
            if !attribute && looks_like_dn(text) && validate_dn(text).is_ok() {
                return Err(format!(
                    "this is a certificate DN, not an FQAN; write dn = {text:?}"
                ));
            }
            return Err(e.reason);
        }
    };
    if fqan.vo != vo {
        return Err(format!(
            "the FQAN belongs to VO {:?}, not {vo:?}; map it under [vo.{}]",
            fqan.vo,
            key(&fqan.vo)
        ));
    }
    if !wildcard {
        return Ok(MapPattern::Fqan(fqan));
    }
    if fqan.role.is_some() || fqan.capability.is_some() {
        return Err(format!(
            "a wildcard pattern may only follow groups (e.g. \"/{vo}/*\" or \"/{vo}/group/*\")"
        ));
    }
    Ok(MapPattern::FqanPrefix(
        fqan.group_path().into_iter().map(str::to_owned).collect(),
    ))
}

/// A `pool` key: a pool name as `[accounts.pools.NAME]` of dmsd's
/// configuration names it (whether it exists is dmsd's check).
fn pool_target(text: &str) -> Result<MapTarget, String> {
    if let Some(bare) = text.strip_prefix('.') {
        if validate_name("pool", bare).is_ok() {
            return Err(format!(
                "a pool is named without the grid-mapfile's leading '.'; write pool = {bare:?}"
            ));
        }
    }
    validate_name("pool", text)
        .map(|()| MapTarget::Pool(text.to_owned()))
        .map_err(|e| e.reason())
}

/// Parses and range-checks the shared settings of a VO or rule section.
fn parse_layer(cx: &mut Cx<'_>, path: &str, c: Common<'_>) -> Layer {
    let mut l = Layer::default();
    let f = |name: &str| format!("{path}.{name}");

    if let Some(v) = c.granularity {
        l.granularity = cx.enumeration(v, &f("granularity"));
    }
    if let Some(v) = c.backend {
        l.backend = cx.enumeration(v, &f("backend"));
        l.backend_site = Some(Cx::site(v, f("backend")));
    }
    if let Some(v) = c.template {
        let field = f("template");
        if let Some(name) = cx.string(v, &field) {
            match validate_name("template", &name) {
                Ok(()) => l.template = Some(name),
                Err(e) => cx.error(&v.span(), &field, e.reason()),
            }
        }
        l.template_site = Some(Cx::site(v, field));
    }
    if let Some(cpu) = c.cpu {
        let cpu = cpu.get_ref();
        if let Some(v) = &cpu.limit {
            l.cpu_limit = cx.cpu(v, &f("cpu.limit"));
        }
        if let Some(v) = &cpu.weight {
            l.cpu_weight = cx
                .integer(v, &f("cpu.weight"), 1, 10_000)
                .and_then(|w| u32::try_from(w).ok());
        }
    }
    if let Some(mem) = c.memory {
        let mem = mem.get_ref();
        if let Some(v) = &mem.limit {
            let field = f("memory.limit");
            l.mem_limit = cx.size(v, &field).filter(|&n| {
                let ok = n >= MIN_MEMORY;
                if !ok {
                    cx.error(&v.span(), &field, "below the minimum of 4M");
                }
                ok
            });
            l.mem_limit_site = Some(Cx::site(v, field));
        }
        if let Some(v) = &mem.soft {
            let field = f("memory.soft");
            l.mem_soft = cx.size(v, &field).filter(|&n| {
                let ok = n >= MIN_MEMORY;
                if !ok {
                    cx.error(&v.span(), &field, "below the minimum of 4M");
                }
                ok
            });
            l.mem_soft_site = Some(Cx::site(v, field));
        }
        if let Some(v) = &mem.swap {
            let field = f("memory.swap");
            l.mem_swap = cx.size(v, &field).filter(|&n| {
                let ok = n <= MAX_SWAP;
                if !ok {
                    cx.error(&v.span(), &field, "above the maximum of 1024T (1 PiB)");
                }
                ok
            });
        }
    }
    if let Some(v) = c.pids {
        l.pids = cx.integer(v, &f("pids"), 1, MAX_PIDS);
    }
    if let Some(io) = c.io {
        l.io = parse_io(cx, &f("io"), io.get_ref());
    }
    if let Some(set) = c.cpuset {
        let field = f("cpuset");
        let raw = set.get_ref();
        let cpus = match &raw.cpus {
            Some(v) => cx.cpu_list(v, &f("cpuset.cpus"), "CPU"),
            None => {
                cx.error_here(&set.span(), &field, "missing cpus");
                None
            }
        };
        let mems = match &raw.mems {
            Some(v) => cx.cpu_list(v, &f("cpuset.mems"), "memory node").map(Some),
            None => Some(None),
        };
        if let (Some(cpus), Some(mems)) = (cpus, mems) {
            l.cpuset = Some(CpuSet { cpus, mems });
        }
    }
    if let Some(v) = c.priority {
        l.priority = cx.enumeration(v, &f("priority"));
    }
    if let Some(list) = c.owner_may {
        let mut perms = BTreeSet::new();
        let mut ok = true;
        for (i, v) in list.get_ref().iter().enumerate() {
            match cx.enumeration::<Permission>(v, &format!("{path}.owner_may[{i}]")) {
                Some(p) => {
                    perms.insert(p);
                }
                None => ok = false,
            }
        }
        if ok {
            l.owner_may = Some(perms);
        }
    }
    if let Some(idle) = c.idle {
        let idle = idle.get_ref();
        if let Some(v) = &idle.action {
            l.idle_action = cx.enumeration(v, &f("idle.action"));
        }
        if let Some(v) = &idle.after {
            let field = f("idle.after");
            l.idle_after = cx.duration(v, &field).filter(|&s| {
                let ok = s <= MAX_IDLE_SECS;
                if !ok {
                    cx.error(&v.span(), &field, "above the maximum of 365d");
                }
                ok
            });
        }
    }
    if let Some(monitor) = c.monitor {
        parse_monitor(cx, &f("monitor"), monitor.get_ref(), &mut l);
    }
    if let Some(net) = c.network {
        parse_network(cx, &f("network"), net.get_ref(), &mut l);
    }
    if let Some(paths) = c.paths {
        parse_paths(cx, &f("paths"), paths.get_ref(), &mut l);
    }
    if let Some(v) = c.userns {
        l.userns = cx.boolean(v, &f("userns"));
    }
    l
}

/// Parses `monitor = { ... }` into `l`: one action per [`LimitKind`] key,
/// plus `cpu_throttled_ratio`.
fn parse_monitor(cx: &mut Cx<'_>, path: &str, raw: &RawMonitor, l: &mut Layer) {
    for (name, v) in &raw.0 {
        let field = format!("{path}.{}", key(name.get_ref()));
        if name.get_ref() == MONITOR_RATIO_KEY {
            l.monitor_ratio = cx.permille(v, &field);
        } else if let Ok(kind) = name.get_ref().parse::<LimitKind>() {
            if let Some(action) = cx.enumeration::<LimitAction>(v, &field) {
                l.monitor_actions.push((kind, action));
            }
        } else {
            let keys: Vec<&str> = LimitKind::ALL
                .iter()
                .map(|k| k.as_str())
                .chain([MONITOR_RATIO_KEY])
                .collect();
            let value = cx.written(&v.span());
            let msg = format!("unknown monitor key; expected {}", either_list(&keys));
            cx.push(&name.span(), &field, value, msg);
        }
    }
}

/// Parses `network = { ... }` into `l`.
fn parse_network(cx: &mut Cx<'_>, path: &str, raw: &RawNetwork, l: &mut Layer) {
    let f = |name: &str| format!("{path}.{name}");
    if let Some(v) = &raw.mode {
        let field = f("mode");
        l.net_mode = cx.enumeration_or(v, &field, |e| {
            format!("expected {}", either_list(e.expected))
        });
        l.net_mode_site = Some(Cx::site(v, field));
    }
    if let Some(v) = &raw.egress {
        l.egress = cx.rate(v, &f("egress"));
    }
    if let Some(v) = &raw.ingress {
        l.ingress = cx.rate(v, &f("ingress"));
    }
    if let Some(v) = &raw.burst {
        let field = f("burst");
        l.burst = cx.size(v, &field).filter(|&n| {
            let msg = match n {
                0 => "must be greater than 0",
                n if n > MAX_BURST => {
                    "above the maximum of 4294967295 bytes (the kernel keeps bursts in 32 bits)"
                }
                _ => return true,
            };
            cx.error(&v.span(), &field, msg);
            false
        });
    }
    if let Some(v) = &raw.shaper {
        l.shaper = cx.enumeration_or(v, &f("shaper"), |e| shaper_message(&e.value));
    }
    if let Some(list) = &raw.ports {
        let field = f("ports");
        l.ports = parse_ports(cx, &field, list.get_ref());
        l.ports_site = Some(Site {
            span: list.span(),
            field,
        });
    }
    if let Some(v) = &raw.isolated {
        l.isolated = cx.boolean(v, &f("isolated"));
    }
}

/// Why a shaper other than htb and tbf is refused.
fn shaper_message(value: &str) -> String {
    if OTHER_QDISCS.contains(&value) {
        format!(
            "only \"htb\" and \"tbf\" are supported: the kernel module set of this platform lacks sch_{value} and the other qdiscs"
        )
    } else {
        "expected \"htb\" or \"tbf\", the only shapers the kernel module set of this platform provides"
            .into()
    }
}

/// Parses `network.ports = [...]`; `None` if any entry is invalid.
fn parse_ports(cx: &mut Cx<'_>, path: &str, list: &[Spanned<Scalar>]) -> Option<Vec<PortForward>> {
    let mut out = Vec::new();
    let mut seen: Vec<(PortForward, usize)> = Vec::new();
    let mut ok = true;
    for (i, v) in list.iter().enumerate() {
        let field = format!("{path}[{i}]");
        let Some(text) = cx.string(v, &field) else {
            ok = false;
            continue;
        };
        let Some(port) = cx.unit(v, &field, text.parse::<PortForward>()) else {
            ok = false;
            continue;
        };
        if let Some((_, j)) = seen
            .iter()
            .find(|(p, _)| p.host == port.host && p.proto == port.proto)
        {
            let msg = format!(
                "host port {}/{} is already forwarded by ports[{j}]",
                port.host, port.proto
            );
            cx.error(&v.span(), &field, msg);
            ok = false;
            continue;
        }
        seen.push((port, i));
        out.push(port);
    }
    ok.then_some(out)
}

/// Parses `paths = { ... }` into `l`.
fn parse_paths(cx: &mut Cx<'_>, path: &str, raw: &RawPaths, l: &mut Layer) {
    if let Some(list) = &raw.private {
        l.private = parse_path_list(
            cx,
            &format!("{path}.private"),
            list.get_ref(),
            &mut l.private_sites,
        );
    }
    if let Some(list) = &raw.readonly {
        l.readonly = parse_path_list(
            cx,
            &format!("{path}.readonly"),
            list.get_ref(),
            &mut l.readonly_sites,
        );
    }
}

/// Parses a list of directories, recording each valid one in `sites`;
/// `None` if any entry is invalid.
fn parse_path_list(
    cx: &mut Cx<'_>,
    path: &str,
    list: &[Spanned<Scalar>],
    sites: &mut Vec<(PathBuf, Site)>,
) -> Option<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut ok = true;
    for (i, v) in list.iter().enumerate() {
        let field = format!("{path}[{i}]");
        let Some(text) = cx.string(v, &field) else {
            ok = false;
            continue;
        };
        if let Err(msg) = check_domain_path(&text) {
            cx.error(&v.span(), &field, msg);
            ok = false;
            continue;
        }
        let dir = PathBuf::from(text);
        if let Some((_, first)) = sites.iter().find(|(p, _)| *p == dir) {
            let msg = format!("listed twice; already {}", first.field);
            cx.error(&v.span(), &field, msg);
            ok = false;
            continue;
        }
        sites.push((dir.clone(), Cx::site(v, field)));
        out.push(dir);
    }
    ok.then_some(out)
}

/// Checks a directory of `paths.private` or `paths.readonly`: absolute,
/// normalized, printable, and not one the daemon manages itself.
fn check_domain_path(p: &str) -> Result<(), String> {
    if p.chars().any(char::is_control) {
        return Err("must not contain control characters (NUL, newline, ...)".into());
    }
    if !p.starts_with('/') {
        return Err("must be an absolute path (starting with \"/\")".into());
    }
    if p.len() > MAX_PATH {
        return Err(format!("longer than {MAX_PATH} bytes"));
    }
    if p != "/" {
        let components: Vec<&str> = p[1..].split('/').collect();
        if components.contains(&"..") {
            return Err("must not contain \"..\" components".into());
        }
        if components.iter().any(|c| c.is_empty() || *c == ".") {
            let normal: Vec<&str> = components
                .into_iter()
                .filter(|c| !c.is_empty() && *c != ".")
                .collect();
            return Err(format!(
                "must be normalized (no \".\" or empty components, no trailing \"/\"); write \"/{}\"",
                normal.join("/")
            ));
        }
        if components.iter().any(|c| c.len() > MAX_NAME) {
            return Err(format!("has a component longer than {MAX_NAME} bytes"));
        }
    }
    let under = |base: &str| {
        p.strip_prefix(base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if p == "/" {
        return Err(
            "the root directory cannot be private or read-only as a whole; list directories below it"
                .into(),
        );
    }
    for base in ["/tmp", "/dev/shm"] {
        if under(base) {
            return Err(format!(
                "{base} is already private to every domain (a fresh tmpfs)"
            ));
        }
    }
    for base in ["/proc", "/dev", "/sys"] {
        if under(base) {
            return Err(format!(
                "{base} is a kernel file system that the daemon sets up for every domain"
            ));
        }
    }
    Ok(())
}

/// Parses `io = [...]`; `None` if any entry is invalid.
fn parse_io(cx: &mut Cx<'_>, path: &str, list: &[Spanned<RawIo>]) -> Option<Vec<IoThrottle>> {
    let mut out = Vec::new();
    let mut ok = true;
    let mut seen: Vec<String> = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let field = format!("{path}[{i}]");
        let raw = entry.get_ref();
        let f = |name: &str| format!("{field}.{name}");
        let device = match &raw.device {
            Some(v) => {
                let dfield = f("device");
                cx.string(v, &dfield).and_then(|d| {
                    if !valid_device(&d) {
                        cx.error(
                            &v.span(),
                            &dfield,
                            "expected \"MAJ:MIN\" (e.g. \"8:0\") or an absolute /dev path",
                        );
                        None
                    } else if seen.contains(&d) {
                        cx.error(&v.span(), &dfield, "device listed twice in io");
                        None
                    } else {
                        seen.push(d.clone());
                        Some(d)
                    }
                })
            }
            None => {
                cx.error_here(&entry.span(), &field, "missing device");
                None
            }
        };
        let mut bps = |v: &Option<Spanned<Scalar>>, name: &str| -> Result<Option<u64>, ()> {
            let Some(v) = v else { return Ok(None) };
            let field = f(name);
            match cx.size(v, &field) {
                Some(0) => {
                    cx.error(&v.span(), &field, "must be greater than 0");
                    Err(())
                }
                Some(n) => Ok(Some(n)),
                None => Err(()),
            }
        };
        let read_bps = bps(&raw.read, "read");
        let write_bps = bps(&raw.write, "write");
        let mut iops = |v: &Option<Spanned<Scalar>>, name: &str| -> Result<Option<u64>, ()> {
            let Some(v) = v else { return Ok(None) };
            cx.integer(v, &f(name), 1, u64::MAX).map(Some).ok_or(())
        };
        let read_iops = iops(&raw.read_iops, "read_iops");
        let write_iops = iops(&raw.write_iops, "write_iops");
        if raw.read.is_none()
            && raw.write.is_none()
            && raw.read_iops.is_none()
            && raw.write_iops.is_none()
        {
            cx.error_here(
                &entry.span(),
                &field,
                "at least one of read, write, read_iops or write_iops is required",
            );
            ok = false;
            continue;
        }
        match (device, read_bps, write_bps, read_iops, write_iops) {
            (Some(device), Ok(read_bps), Ok(write_bps), Ok(read_iops), Ok(write_iops)) => {
                out.push(IoThrottle {
                    device,
                    read_bps,
                    write_bps,
                    read_iops,
                    write_iops,
                });
            }
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

/// `"MAJ:MIN"` with decimal numbers, or an absolute path below `/dev/`
/// without `..` or odd characters.
fn valid_device(d: &str) -> bool {
    if let Some((maj, min)) = d.split_once(':') {
        let num = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
        return num(maj) && num(min) && maj.parse::<u32>().is_ok() && min.parse::<u32>().is_ok();
    }
    let Some(rest) = d.strip_prefix("/dev/") else {
        return false;
    };
    !rest.is_empty()
        && d.len() <= 4096
        && rest
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
        && d.chars().all(|c| !c.is_control() && !c.is_whitespace())
}
