//! Tests of loading, validation and resolution.

use super::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn parse(text: &str) -> Result<PolicySet, PolicyErrors> {
    PolicySet::parse_str(Path::new("t.toml"), text)
}

fn errors(text: &str) -> Vec<PolicyError> {
    match parse(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.0,
    }
}

/// Asserts the text has exactly one error, at `line:col`, on `field` with
/// `value`, whose message contains `msg`.
#[track_caller]
fn one(text: &str, line: usize, col: usize, field: &str, value: &str, msg: &str) {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{}", PolicyErrors(errs.clone()));
    let e = &errs[0];
    assert_eq!(
        (e.line, e.column, e.field.as_str(), e.value.as_str()),
        (line, col, field, value),
        "{e}"
    );
    assert!(e.message.contains(msg), "{e}\nwanted message with: {msg}");
    assert_eq!(e.file, Path::new("t.toml"));
}

/// A VO table with one setting line: the setting is on line 2.
fn vo_with(line: &str) -> String {
    format!("[vo.atlas]\n{line}\n")
}

fn fqan(s: &str) -> Fqan {
    s.parse().unwrap()
}

fn perms(list: &[Permission]) -> BTreeSet<Permission> {
    list.iter().copied().collect()
}

// ---------------------------------------------------------------- loading

#[test]
fn empty_file_is_empty_set() {
    let set = parse("").unwrap();
    assert!(set.vo_names().is_empty());
    assert_eq!(set.files(), [PathBuf::from("t.toml")]);
    let set = parse("# only a comment\n").unwrap();
    assert!(set.vo_names().is_empty());
}

#[test]
fn minimal_vo_gets_defaults() {
    let set = parse("[vo.atlas]\n").unwrap();
    let r = set.resolve("atlas", None).unwrap();
    assert_eq!(r, ResolvedRule::defaults("atlas", "t.toml".into()));
    assert_eq!(r.granularity, Granularity::User);
    assert_eq!(r.backend, BackendKind::Container);
    assert_eq!(r.priority, Priority::Normal);
    assert_eq!(r.owner_may, perms(&[Permission::Freeze, Permission::Thaw]));
    assert_eq!(r.idle, IdlePolicy::default());
    assert_eq!(r.matched_fqan, None);
    assert_eq!(r.group, None);
}

#[test]
fn full_vo_parses() {
    let text = r#"
[vo.atlas]
granularity = "job"
backend     = "libvirt"
template    = "el9-worker"
cpu         = { limit = "4", weight = 100 }
memory      = { limit = "8G", soft = "6G", swap = "512MiB" }
pids        = 2048
io          = [ { device = "8:0", read = "100M", write = "50M", read_iops = 1000, write_iops = 500 },
                { device = "/dev/sdb", write_iops = 10 } ]
cpuset      = { cpus = "0-1,3", mems = "0" }
priority    = "high"
owner_may   = ["freeze", "thaw", "exec", "attach", "destroy"]
idle        = { action = "save", after = "2h" }
"#;
    let set = parse(text).unwrap();
    let r = set.resolve("atlas", None).unwrap();
    assert_eq!(r.granularity, Granularity::Job);
    assert_eq!(r.backend, BackendKind::Libvirt);
    assert_eq!(r.template.as_deref(), Some("el9-worker"));
    assert_eq!(r.quotas.cpu.limit_millicores, Some(4000));
    assert_eq!(r.quotas.cpu.weight, Some(100));
    assert_eq!(r.quotas.memory.limit_bytes, Some(8 << 30));
    assert_eq!(r.quotas.memory.soft_bytes, Some(6 << 30));
    assert_eq!(r.quotas.memory.swap_bytes, Some(512 << 20));
    assert_eq!(r.quotas.pids, Some(2048));
    assert_eq!(
        r.quotas.io,
        vec![
            IoThrottle {
                device: "8:0".into(),
                read_bps: Some(100 << 20),
                write_bps: Some(50 << 20),
                read_iops: Some(1000),
                write_iops: Some(500),
            },
            IoThrottle {
                device: "/dev/sdb".into(),
                read_bps: None,
                write_bps: None,
                read_iops: None,
                write_iops: Some(10),
            },
        ]
    );
    assert_eq!(
        r.quotas.cpuset,
        Some(CpuSet {
            cpus: "0-1,3".into(),
            mems: Some("0".into())
        })
    );
    assert_eq!(r.priority, Priority::High);
    assert_eq!(r.owner_may.len(), 5);
    assert_eq!(
        r.idle,
        IdlePolicy {
            action: IdleAction::Save,
            after_secs: 7200
        }
    );
}

#[test]
fn numeric_forms() {
    let set = parse(
        "[vo.a]\ncpu = { limit = 2 }\nmemory = { limit = 8388608 }\nidle = { after = 90 }\n\
         [vo.b]\ncpu = { limit = 0.25 }\n[vo.c]\ncpu = { limit = \"250%\" }\n",
    )
    .unwrap();
    let a = set.resolve("a", None).unwrap();
    assert_eq!(a.quotas.cpu.limit_millicores, Some(2000));
    assert_eq!(a.quotas.memory.limit_bytes, Some(8 << 20));
    assert_eq!(a.idle.after_secs, 90);
    let b = set.resolve("b", None).unwrap();
    assert_eq!(b.quotas.cpu.limit_millicores, Some(250));
    let c = set.resolve("c", None).unwrap();
    assert_eq!(c.quotas.cpu.limit_millicores, Some(2500));
    assert_eq!(set.vo_names(), ["a", "b", "c"]);
}

#[test]
fn examples_load_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let set = PolicySet::load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.vo_names(), ["atlas", "cms", "dteam"]);
    assert_eq!(set.files().len(), 3);
    // The map example stays commented out: dmsd's default configuration has no
    // pools (see the_commented_map_example_parses).
    assert!(set.mappings().is_empty() && set.group_mappings().is_empty());

    let atlas = set.resolve("atlas", None).unwrap();
    assert!(atlas.source.ends_with("atlas.toml"));
    // atlas spells out the monitor defaults.
    assert_eq!(atlas.monitor, MonitorPolicy::default());
    let prod = set
        .resolve("atlas", Some(&fqan("/atlas/Role=production")))
        .unwrap();
    assert_eq!(prod.priority, Priority::High);
    assert_eq!(prod.quotas.memory.limit_bytes, Some(2 << 30));
    assert_eq!(
        prod.quotas.memory.soft_bytes,
        atlas.quotas.memory.soft_bytes
    );

    let cms = set.resolve("cms", None).unwrap();
    assert_eq!(cms.granularity, Granularity::Vo);
    assert_eq!(cms.quotas.cpu.limit_millicores, Some(1500));
    let pilot = set.resolve("cms", Some(&fqan("/cms/Role=pilot"))).unwrap();
    assert_eq!(pilot.granularity, Granularity::Job);
    assert_eq!(pilot.priority, Priority::Preemptible);
    assert_eq!(pilot.matched_fqan.as_deref(), Some("/cms/Role=pilot"));
    assert_eq!(pilot.quotas.memory, cms.quotas.memory);

    let dteam = set.resolve("dteam", None).unwrap();
    assert_eq!(dteam.quotas.cpu.limit_millicores, Some(500));
    assert_eq!(dteam.quotas.memory.limit_bytes, Some(256 << 20));
    assert_eq!(dteam.quotas.pids, Some(256));
    assert!(dteam.owner_may.contains(&Permission::Destroy));

    // Isolation: atlas shapes a NAT network, its production role raises
    // egress only; cms forwards ports for the shared domain but not for
    // pilots; dteam is loopback only.
    let net = &atlas.isolation.network;
    assert_eq!(net.mode, NetworkMode::Nat);
    assert_eq!(
        (net.egress, net.ingress, net.burst),
        (Some(200_000_000), Some(500_000_000), Some(256 << 10))
    );
    assert_eq!(atlas.isolation.paths.private, [PathBuf::from("/var/tmp")]);
    assert!(!atlas.isolation.userns);
    let prod_net = &prod.isolation.network;
    assert_eq!(prod_net.egress, Some(1_000_000_000));
    assert_eq!((prod_net.mode, prod_net.ingress), (net.mode, net.ingress));
    assert_eq!(
        cms.isolation.network.ports,
        [
            PortForward {
                host: 3128,
                domain: 3128,
                proto: Proto::Tcp
            },
            PortForward {
                host: 5353,
                domain: 53,
                proto: Proto::Udp
            }
        ]
    );
    assert!(!cms.isolation.network.isolated);
    assert_eq!(cms.isolation.paths.readonly, [PathBuf::from("/opt/cms")]);
    assert!(pilot.isolation.network.ports.is_empty());
    assert!(pilot.isolation.network.isolated);
    assert_eq!(pilot.isolation.network.egress, cms.isolation.network.egress);
    assert_eq!(pilot.isolation.paths, cms.isolation.paths);
    assert_eq!(dteam.isolation.network.mode, NetworkMode::None);

    // The examples respect the limits promised to the test machines.
    for vo in set.vo_names() {
        let r = set.resolve(vo, None).unwrap();
        assert!(r.quotas.cpu.limit_millicores.unwrap_or(0) <= 2000);
        assert!(r.quotas.memory.limit_bytes.unwrap_or(0) <= 2 << 30);
        assert!(r.quotas.io.is_empty());
    }
}

// ------------------------------------------------------- validation errors

#[test]
fn syntax_error_has_position() {
    let errs = errors("[vo.atlas]\npids = \n");
    assert_eq!(errs.len(), 1);
    let e = &errs[0];
    assert_eq!((e.line, e.field.as_str(), e.value.as_str()), (2, "", ""));
    assert!(e.to_string().starts_with("t.toml:2:"), "{e}");

    let errs = errors("[vo.atlas\n");
    assert_eq!((errs[0].line, errs[0].column), (1, 10));
}

#[test]
fn unknown_keys_are_errors() {
    let e = &errors("[vo.atlas]\npool = 3\n")[0];
    assert_eq!((e.line, e.column), (2, 1));
    assert!(e.message.contains("unknown field `pool`"), "{e}");
    let e = &errors("[vo.atlas]\nvolumes = \"x\"\n")[0];
    assert!(e.message.contains("unknown field `volumes`"), "{e}");
    // network and paths are tables with their own keys.
    let e = &errors("[vo.atlas]\nnetwork = \"x\"\n")[0];
    assert!(e.message.contains("a table like { mode"), "{e}");
    let e = &errors("[vo.atlas]\nnetwork = { bandwidth = \"1mbit\" }\n")[0];
    assert_eq!((e.line, e.column), (2, 13));
    assert!(e.message.contains("unknown field `bandwidth`"), "{e}");
    let e = &errors("[vo.atlas]\npaths = { scratch = [] }\n")[0];
    assert!(e.message.contains("unknown field `scratch`"), "{e}");
    let e = &errors("[vo.atlas]\npaths = { private = \"/scratch\" }\n")[0];
    assert_eq!(e.line, 2);
    let e = &errors("[vo.atlas]\ncpu = { limit = \"1\", shares = 3 }\n")[0];
    assert_eq!((e.line, e.column), (2, 22));
    assert!(e.message.contains("unknown field `shares`"), "{e}");
    let e = &errors("[vo.atlas]\n[[vo.atlas.role]]\nfqan = \"/atlas/Role=x\"\nrole = []\n")[0];
    assert_eq!(e.line, 4);
    assert!(e.message.contains("unknown field `role`"), "{e}");
    let e = &errors("[volume]\n")[0];
    assert!(e.message.contains("unknown field `volume`"), "{e}");
    // A table where a value belongs names what was expected.
    let e = &errors("[vo.atlas]\ncpu = 3\n")[0];
    assert_eq!((e.line, e.column), (2, 7));
    assert!(e.message.contains("a table like { limit"), "{e}");
}

#[test]
fn bad_vo_name() {
    one(
        "[vo.\"a b\"]\n",
        1,
        5,
        "vo.\"a b\"",
        "\"a b\"",
        "character ' '",
    );
    one("[vo.-x]\n", 1, 5, "vo.-x", "-x", "must not start with '-'");
}

#[test]
fn enum_errors() {
    one(
        &vo_with("granularity = \"users\""),
        2,
        15,
        "vo.atlas.granularity",
        "\"users\"",
        "expected one of \"vo\", \"user\", \"job\"",
    );
    one(
        &vo_with("granularity = 1"),
        2,
        15,
        "vo.atlas.granularity",
        "1",
        "expected a string, one of \"vo\", \"user\", \"job\", found an integer",
    );
    one(
        &vo_with("backend = \"docker\""),
        2,
        11,
        "vo.atlas.backend",
        "\"docker\"",
        "expected one of \"container\", \"libvirt\"",
    );
    one(
        &vo_with("priority = \"urgent\""),
        2,
        12,
        "vo.atlas.priority",
        "\"urgent\"",
        "\"preemptible\"",
    );
    one(
        &vo_with("owner_may = [\"freeze\", \"kill\"]"),
        2,
        24,
        "vo.atlas.owner_may[1]",
        "\"kill\"",
        "expected one of \"freeze\"",
    );
    one(
        &vo_with("idle = { action = \"sleep\" }"),
        2,
        19,
        "vo.atlas.idle.action",
        "\"sleep\"",
        "\"keep\"",
    );
}

#[test]
fn cpu_errors() {
    let cases: &[(&str, &str)] = &[
        (
            "\"abc\"",
            "expected cores (\"4\", \"0.5\") or a percentage (\"250%\")",
        ),
        ("\"0\"", "must be greater than 0"),
        ("0", "must be greater than 0"),
        ("-1", "must be greater than 0"),
        ("0.0", "must be greater than 0"),
        ("\"0%\"", "must be greater than 0"),
        ("\"0.0001\"", "below 1 millicore"),
        ("0.0001", "below 1 millicore"),
        ("\"4097\"", "above the maximum of 4096 cores"),
        ("5000", "above the maximum of 4096 cores"),
        ("\"409700%\"", "above the maximum of 4096 cores"),
        ("true", "expected cores"),
        ("\"1.5 \"", "expected cores"),
    ];
    for (value, msg) in cases {
        one(
            &vo_with(&format!("cpu = {{ limit = {value} }}")),
            2,
            17,
            "vo.atlas.cpu.limit",
            value,
            msg,
        );
    }
    one(
        &vo_with("cpu = { weight = 0 }"),
        2,
        18,
        "vo.atlas.cpu.weight",
        "0",
        "must be between 1 and 10000",
    );
    one(
        &vo_with("cpu = { weight = 10001 }"),
        2,
        18,
        "vo.atlas.cpu.weight",
        "10001",
        "must be between 1 and 10000",
    );
    one(
        &vo_with("cpu = { weight = \"100\" }"),
        2,
        18,
        "vo.atlas.cpu.weight",
        "\"100\"",
        "expected an integer, found a string",
    );
}

#[test]
fn memory_errors() {
    one(
        &vo_with("memory = { limit = \"1M\" }"),
        2,
        20,
        "vo.atlas.memory.limit",
        "\"1M\"",
        "below the minimum of 4M",
    );
    one(
        &vo_with("memory = { limit = \"8X\" }"),
        2,
        20,
        "vo.atlas.memory.limit",
        "\"8X\"",
        "expected a size in bytes or with a K/M/G/T suffix",
    );
    one(
        &vo_with("memory = { limit = -5 }"),
        2,
        20,
        "vo.atlas.memory.limit",
        "-5",
        "must not be negative",
    );
    one(
        &vo_with("memory = { limit = 1.5 }"),
        2,
        20,
        "vo.atlas.memory.limit",
        "1.5",
        "found a float",
    );
    one(
        &vo_with("memory = { soft = \"1K\" }"),
        2,
        19,
        "vo.atlas.memory.soft",
        "\"1K\"",
        "below the minimum of 4M",
    );
    one(
        &vo_with("memory = { swap = \"1025T\" }"),
        2,
        19,
        "vo.atlas.memory.swap",
        "\"1025T\"",
        "above the maximum of 1024T (1 PiB)",
    );
    one(
        &vo_with("memory = { limit = \"8G\", soft = \"10G\" }"),
        2,
        33,
        "vo.atlas.memory.soft",
        "\"10G\"",
        "soft limit is above memory.limit (8G)",
    );
    // Exactly 1 PiB of swap and soft == limit are fine.
    parse(&vo_with(
        "memory = { limit = \"8G\", soft = \"8G\", swap = \"1024T\" }",
    ))
    .unwrap();
}

#[test]
fn merged_soft_above_limit_is_reported_at_the_rule() {
    // The role lowers the limit below the VO's soft limit.
    let text = "[vo.atlas]\nmemory = { limit = \"8G\", soft = \"6G\" }\n\
                [[vo.atlas.role]]\nfqan = \"/atlas/Role=prod\"\nmemory = { limit = \"4G\" }\n";
    one(
        text,
        5,
        20,
        "vo.atlas.role[0].memory.limit",
        "\"4G\"",
        "limit is below memory.soft (6G)",
    );
    // The group raises soft above the VO's limit.
    let text = "[vo.atlas]\nmemory = { limit = \"8G\" }\n\
                [[vo.atlas.group]]\nfqan = \"/atlas/higgs\"\nmemory = { soft = \"10G\" }\n";
    one(
        text,
        5,
        19,
        "vo.atlas.group[0].memory.soft",
        "\"10G\"",
        "soft limit is above memory.limit (8G)",
    );
    // A subgroup inherits its parent group's soft limit.
    let text = "[vo.atlas]\n\
                [[vo.atlas.group]]\nfqan = \"/atlas/higgs\"\nmemory = { soft = \"6G\" }\n\
                [[vo.atlas.group]]\nfqan = \"/atlas/higgs/susy\"\nmemory = { limit = \"5G\" }\n";
    one(
        text,
        7,
        20,
        "vo.atlas.group[1].memory.limit",
        "\"5G\"",
        "limit is below memory.soft (6G)",
    );
}

#[test]
fn pids_errors() {
    for value in ["0", "4194305", "-1"] {
        one(
            &vo_with(&format!("pids = {value}")),
            2,
            8,
            "vo.atlas.pids",
            value,
            "must be between 1 and 4194304",
        );
    }
    parse(&vo_with("pids = 4194304")).unwrap();
}

#[test]
fn io_errors() {
    one(
        &vo_with("io = [ { device = \"8:0\" } ]"),
        2,
        8,
        "vo.atlas.io[0]",
        "",
        "at least one of read, write, read_iops or write_iops is required",
    );
    one(
        &vo_with("io = [ { device = \"8:0\", read = 0 } ]"),
        2,
        33,
        "vo.atlas.io[0].read",
        "0",
        "must be greater than 0",
    );
    one(
        &vo_with("io = [ { device = \"8:0\", write = \"0M\" } ]"),
        2,
        34,
        "vo.atlas.io[0].write",
        "\"0M\"",
        "must be greater than 0",
    );
    one(
        &vo_with("io = [ { device = \"8:0\", write = \"fast\" } ]"),
        2,
        34,
        "vo.atlas.io[0].write",
        "\"fast\"",
        "expected a size",
    );
    one(
        &vo_with("io = [ { device = \"8:0\", read_iops = 0 } ]"),
        2,
        38,
        "vo.atlas.io[0].read_iops",
        "0",
        "must be between 1 and",
    );
    for dev in [
        "\"sda\"",
        "\"8:\"",
        "\"a:b\"",
        "\"/dev/../etc\"",
        "\"/dev/\"",
        "\"/tmp/x\"",
    ] {
        one(
            &vo_with(&format!("io = [ {{ device = {dev}, read = \"1M\" }} ]")),
            2,
            19,
            "vo.atlas.io[0].device",
            dev,
            "expected \"MAJ:MIN\" (e.g. \"8:0\") or an absolute /dev path",
        );
    }
    one(
        &vo_with("io = [ { read = \"1M\" } ]"),
        2,
        8,
        "vo.atlas.io[0]",
        "",
        "missing device",
    );
    one(
        &vo_with(
            "io = [ { device = \"8:0\", read = \"1M\" }, { device = \"8:0\", write = \"1M\" } ]",
        ),
        2,
        52,
        "vo.atlas.io[1].device",
        "\"8:0\"",
        "device listed twice",
    );
}

#[test]
fn cpuset_errors() {
    for (value, msg) in [
        ("\"3-1\"", "range \"3-1\" is backwards"),
        ("\"8192\"", "CPU 8192 is out of range"),
        ("\"a\"", "expected a CPU list like \"0-3,5\""),
        ("\"\"", "expected a CPU list"),
        ("0", "expected a string, found an integer"),
    ] {
        one(
            &vo_with(&format!("cpuset = {{ cpus = {value} }}")),
            2,
            19,
            "vo.atlas.cpuset.cpus",
            value,
            msg,
        );
    }
    one(
        &vo_with("cpuset = { cpus = \"0\", mems = \"1-0\" }"),
        2,
        31,
        "vo.atlas.cpuset.mems",
        "\"1-0\"",
        "backwards",
    );
    one(
        &vo_with("cpuset = { mems = \"0\" }"),
        2,
        10,
        "vo.atlas.cpuset",
        "",
        "missing cpus",
    );
}

#[test]
fn idle_errors() {
    one(
        &vo_with("idle = { after = \"366d\" }"),
        2,
        18,
        "vo.atlas.idle.after",
        "\"366d\"",
        "above the maximum of 365d",
    );
    one(
        &vo_with("idle = { after = \"10 min\" }"),
        2,
        18,
        "vo.atlas.idle.after",
        "\"10 min\"",
        "expected a duration in seconds or with an s/m/h/d suffix",
    );
    one(
        &vo_with("idle = { after = -1 }"),
        2,
        18,
        "vo.atlas.idle.after",
        "-1",
        "must not be negative",
    );
    parse(&vo_with("idle = { after = \"365d\" }")).unwrap();
}

#[test]
fn backend_template_errors() {
    one(
        &vo_with("backend = \"libvirt\""),
        2,
        11,
        "vo.atlas.backend",
        "\"libvirt\"",
        "backend \"libvirt\" requires template",
    );
    one(
        &vo_with("template = \"el9\""),
        2,
        12,
        "vo.atlas.template",
        "\"el9\"",
        "a template is only used with backend = \"libvirt\"",
    );
    one(
        "[vo.atlas]\nbackend = \"libvirt\"\ntemplate = \"../x\"\n",
        3,
        12,
        "vo.atlas.template",
        "\"../x\"",
        "character '/'",
    );
    // A role switching to libvirt must name a template.
    let text = "[vo.atlas]\n[[vo.atlas.role]]\nfqan = \"/atlas/Role=vm\"\nbackend = \"libvirt\"\n";
    one(
        text,
        4,
        11,
        "vo.atlas.role[0].backend",
        "\"libvirt\"",
        "requires template",
    );
    // ...and then it is fine, as is a role going back to containers.
    let text = "[vo.atlas]\n[[vo.atlas.role]]\nfqan = \"/atlas/Role=vm\"\n\
                backend = \"libvirt\"\ntemplate = \"el9\"\n";
    let set = parse(text).unwrap();
    let vm = set.resolve("atlas", Some(&fqan("/atlas/Role=vm"))).unwrap();
    assert_eq!(vm.backend, BackendKind::Libvirt);
    assert_eq!(vm.template.as_deref(), Some("el9"));
    // A rule going back to containers under a libvirt VO inherits a template.
    let text = "[vo.atlas]\nbackend = \"libvirt\"\ntemplate = \"el9\"\n\
                [[vo.atlas.group]]\nfqan = \"/atlas/c\"\nbackend = \"container\"\n";
    one(
        text,
        6,
        11,
        "vo.atlas.group[0].backend",
        "\"container\"",
        "template = \"el9\" is inherited",
    );
}

#[test]
fn rule_fqan_errors() {
    let rule = |kind: &str, f: &str| format!("[vo.atlas]\n[[vo.atlas.{kind}]]\nfqan = {f}\n");
    one(
        &rule("group", "\"/cms/higgs\""),
        3,
        8,
        "vo.atlas.group[0].fqan",
        "\"/cms/higgs\"",
        "the FQAN belongs to VO \"cms\", not \"atlas\"",
    );
    one(
        &rule("group", "\"/atlas/Role=prod\""),
        3,
        8,
        "vo.atlas.group[0].fqan",
        "\"/atlas/Role=prod\"",
        "a group rule must not have a Role; put role rules in [[vo.atlas.role]]",
    );
    one(
        &rule("role", "\"/atlas/higgs\""),
        3,
        8,
        "vo.atlas.role[0].fqan",
        "\"/atlas/higgs\"",
        "a role rule needs a Role",
    );
    one(
        &rule("role", "\"/atlas/Role=NULL\""),
        3,
        8,
        "vo.atlas.role[0].fqan",
        "\"/atlas/Role=NULL\"",
        "a role rule needs a Role",
    );
    one(
        &rule("group", "\"/atlas//x\""),
        3,
        8,
        "vo.atlas.group[0].fqan",
        "\"/atlas//x\"",
        "empty component",
    );
    one(
        &rule("group", "\"/atlas/Capability=x\""),
        3,
        8,
        "vo.atlas.group[0].fqan",
        "\"/atlas/Capability=x\"",
        "Capability is not supported",
    );
    one(
        &rule("group", "7"),
        3,
        8,
        "vo.atlas.group[0].fqan",
        "7",
        "expected a string, found an integer",
    );
    one(
        "[vo.atlas]\n[[vo.atlas.group]]\npids = 5\n",
        2,
        1,
        "vo.atlas.group[0]",
        "",
        "missing fqan",
    );
    // Duplicates, also when written differently.
    let text = "[vo.atlas]\n[[vo.atlas.group]]\nfqan = \"/atlas/higgs\"\n\
                [[vo.atlas.group]]\nfqan = \"/atlas/higgs/Role=NULL\"\n";
    one(
        text,
        5,
        8,
        "vo.atlas.group[1].fqan",
        "\"/atlas/higgs/Role=NULL\"",
        "duplicate rule for /atlas/higgs: already defined by vo.atlas.group[0] (line 2)",
    );
}

#[test]
fn all_errors_are_collected_in_order() {
    let text = r#"[vo.atlas]
cpu = { limit = "abc", weight = 0 }
pids = 0
[[vo.atlas.role]]
fqan = "/atlas/higgs"
memory = { limit = "1" }
[vo.cms]
idle = { after = "1y" }
"#;
    let errs = errors(text);
    let got: Vec<(usize, usize, &str)> = errs
        .iter()
        .map(|e| (e.line, e.column, e.field.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (2, 17, "vo.atlas.cpu.limit"),
            (2, 33, "vo.atlas.cpu.weight"),
            (3, 8, "vo.atlas.pids"),
            (5, 8, "vo.atlas.role[0].fqan"),
            (6, 20, "vo.atlas.role[0].memory.limit"),
            (8, 18, "vo.cms.idle.after"),
        ]
    );
    let shown = PolicyErrors(errs).to_string();
    assert_eq!(shown.lines().count(), 6);
    assert!(shown.starts_with(
        "t.toml:2:17: vo.atlas.cpu.limit = \"abc\": expected cores (\"4\", \"0.5\") or a percentage (\"250%\")\n"
    ));
}

#[test]
fn columns_count_characters() {
    // "é" is two bytes but one column.
    one(
        "[vo.atlas]\n# é\npids = 0 # é\n",
        3,
        8,
        "vo.atlas.pids",
        "0",
        "between",
    );
    one(
        "[vo.atlas]\nidle = { action = \"é\" }\n",
        2,
        19,
        "vo.atlas.idle.action",
        "\"é\"",
        "expected one of",
    );
}

// ---------------------------------------------------------- merge semantics

const MERGE: &str = r#"
[vo.atlas]
granularity = "user"
cpu      = { limit = "2", weight = 100 }
memory   = { limit = "8G", soft = "6G", swap = "0" }
pids     = 100
io       = [ { device = "8:0", read = "10M" }, { device = "8:16", write = "5M" } ]
cpuset   = { cpus = "0-1", mems = "0" }
idle     = { action = "freeze", after = "10m" }

[[vo.atlas.role]]
fqan   = "/atlas/Role=production"
memory = { limit = "16G" }
cpu    = { weight = 500 }
io     = [ { device = "8:32", read_iops = 10 } ]
cpuset = { cpus = "1" }
idle   = { after = "1h" }
owner_may = []
"#;

#[test]
fn rules_override_leaf_by_leaf() {
    let set = parse(MERGE).unwrap();
    let base = set.resolve("atlas", None).unwrap();
    let r = set
        .resolve("atlas", Some(&fqan("/atlas/Role=production")))
        .unwrap();
    assert_eq!(r.matched_fqan.as_deref(), Some("/atlas/Role=production"));
    assert_eq!(r.group.as_deref(), Some("/atlas"));
    assert_eq!(r.role.as_deref(), Some("production"));
    // memory: limit replaced, soft and swap kept.
    assert_eq!(
        r.quotas.memory,
        MemoryQuota {
            limit_bytes: Some(16 << 30),
            soft_bytes: Some(6 << 30),
            swap_bytes: Some(0),
        }
    );
    // cpu: weight replaced, limit kept.
    assert_eq!(
        r.quotas.cpu,
        CpuQuota {
            limit_millicores: Some(2000),
            weight: Some(500)
        }
    );
    // io and cpuset are replaced whole.
    assert_eq!(r.quotas.io.len(), 1);
    assert_eq!(r.quotas.io[0].device, "8:32");
    assert_eq!(
        r.quotas.cpuset,
        Some(CpuSet {
            cpus: "1".into(),
            mems: None
        })
    );
    // idle: after replaced, action kept.
    assert_eq!(r.idle.action, IdleAction::Freeze);
    assert_eq!(r.idle.after_secs, 3600);
    // owner_may = [] means nothing, unlike leaving it out.
    assert!(r.owner_may.is_empty());
    assert_eq!(
        base.owner_may,
        perms(&[Permission::Freeze, Permission::Thaw])
    );
    // Untouched settings come from the VO.
    assert_eq!(r.quotas.pids, Some(100));
    assert_eq!(r.granularity, Granularity::User);
    assert_eq!(base.quotas.io.len(), 2);
}

// --------------------------------------------------------------- resolution

const SPECIFIC: &str = r#"
[vo.atlas]
pids = 1
[[vo.atlas.group]]
fqan = "/atlas"
pids = 2
priority = "high"
[[vo.atlas.group]]
fqan = "/atlas/higgs"
pids = 4
[[vo.atlas.group]]
fqan = "/atlas/higgs/susy"
pids = 6
[[vo.atlas.role]]
fqan = "/atlas/Role=prod"
pids = 3
granularity = "job"
[[vo.atlas.role]]
fqan = "/atlas/higgs/Role=prod"
pids = 5
cpu = { limit = "1" }
"#;

#[test]
fn most_specific_rule_wins_field_by_field() {
    let set = parse(SPECIFIC).unwrap();
    let r = |f: Option<&str>| {
        let f = f.map(fqan);
        set.resolve("atlas", f.as_ref()).unwrap()
    };

    let none = r(None);
    assert_eq!(
        (none.quotas.pids, none.matched_fqan.clone()),
        (Some(1), None)
    );
    assert_eq!(none.group, None);

    let top = r(Some("/atlas"));
    assert_eq!(top.quotas.pids, Some(2));
    assert_eq!(top.matched_fqan.as_deref(), Some("/atlas"));
    assert_eq!(top.group.as_deref(), Some("/atlas"));
    assert_eq!(top.role, None);

    // All five rules match; the susy group is the most specific.
    let all = r(Some("/atlas/higgs/susy/Role=prod"));
    assert_eq!(all.quotas.pids, Some(6));
    assert_eq!(all.matched_fqan.as_deref(), Some("/atlas/higgs/susy"));
    assert_eq!(all.priority, Priority::High); // from /atlas
    assert_eq!(all.granularity, Granularity::Job); // from /atlas/Role=prod
    assert_eq!(all.quotas.cpu.limit_millicores, Some(1000)); // from /atlas/higgs/Role=prod
    assert_eq!(all.group.as_deref(), Some("/atlas/higgs/susy"));
    assert_eq!(all.role.as_deref(), Some("prod"));

    // A role rule beats a group rule of the same path.
    let hp = r(Some("/atlas/higgs/Role=prod"));
    assert_eq!(hp.quotas.pids, Some(5));
    assert_eq!(hp.matched_fqan.as_deref(), Some("/atlas/higgs/Role=prod"));

    // A longer group path beats a role on a shorter one.
    let h = r(Some("/atlas/higgs/Role=other"));
    assert_eq!(h.quotas.pids, Some(4));
    assert_eq!(h.granularity, Granularity::User);
    assert_eq!(h.role.as_deref(), Some("other"));

    let p = r(Some("/atlas/Role=prod"));
    assert_eq!(p.quotas.pids, Some(3));

    // Prefixes are matched component by component.
    let hx = r(Some("/atlas/higgsx"));
    assert_eq!(hx.quotas.pids, Some(2));
    assert_eq!(hx.matched_fqan.as_deref(), Some("/atlas"));
}

#[test]
fn vo_defaults_only_when_no_rule_matches() {
    let set =
        parse("[vo.cms]\npids = 9\n[[vo.cms.group]]\nfqan = \"/cms/top\"\npids = 1\n").unwrap();
    let r = set
        .resolve("cms", Some(&fqan("/cms/other/Role=x")))
        .unwrap();
    assert_eq!(r.quotas.pids, Some(9));
    assert_eq!(r.matched_fqan, None);
    assert_eq!(r.group.as_deref(), Some("/cms/other"));
    assert_eq!(r.role.as_deref(), Some("x"));
    // Capabilities do not affect matching.
    let r = set
        .resolve("cms", Some(&fqan("/cms/top/Capability=c")))
        .unwrap();
    assert_eq!(r.quotas.pids, Some(1));
}

#[test]
fn resolve_errors() {
    let set = parse("[vo.atlas]\n[vo.cms]\n").unwrap();
    let err = set.resolve("lhcb", None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown VO \"lhcb\" (policies define: atlas, cms)"
    );
    assert!(matches!(err, ResolveError::UnknownVo { ref vo, .. } if vo == "lhcb"));
    let err = set.resolve("atlas", Some(&fqan("/cms/x"))).unwrap_err();
    assert_eq!(
        err,
        ResolveError::FqanOfOtherVo {
            vo: "atlas".into(),
            fqan: "/cms/x".into()
        }
    );
    let empty = parse("").unwrap();
    assert_eq!(
        empty.resolve("atlas", None).unwrap_err().to_string(),
        "unknown VO \"atlas\" (policies define no VOs)"
    );
}

#[test]
fn sibling_rules_that_conflict_fail_at_resolution() {
    // Each rule is fine alone; together soft (1536M) ends up above limit (1G).
    let text = "[vo.atlas]\nmemory = { limit = \"2G\" }\n\
                [[vo.atlas.group]]\nfqan = \"/atlas/higgs\"\nmemory = { soft = \"1536M\" }\n\
                [[vo.atlas.role]]\nfqan = \"/atlas/Role=prod\"\nmemory = { limit = \"1G\" }\n";
    let set = parse(text).unwrap();
    let err = set
        .resolve("atlas", Some(&fqan("/atlas/higgs/Role=prod")))
        .unwrap_err();
    assert!(matches!(err, ResolveError::Conflict { .. }));
    assert!(
        err.to_string()
            .contains("memory.soft (1536M) is above memory.limit (1G)"),
        "{err}"
    );
    set.resolve("atlas", Some(&fqan("/atlas/higgs"))).unwrap();
    set.resolve("atlas", Some(&fqan("/atlas/Role=prod")))
        .unwrap();
}

// ------------------------------------------------------- files and dirs

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn same_vo_in_two_files_names_both() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.toml", "[vo.atlas]\npids = 1\n");
    let b = write(dir.path(), "b.toml", "\n[vo.cms]\n[vo.atlas]\npids = 2\n");
    let errs = PolicySet::load_files(&[a.clone(), b.clone()])
        .unwrap_err()
        .0;
    assert_eq!(errs.len(), 1, "{}", PolicyErrors(errs.clone()));
    let e = &errs[0];
    assert_eq!(e.file, b);
    assert_eq!((e.line, e.column, e.field.as_str()), (3, 5, "vo.atlas"));
    assert_eq!(
        e.message,
        format!("VO \"atlas\" is already defined in {}:1:5", a.display())
    );
    assert!(e.to_string().contains(&a.display().to_string()));
    assert!(e.to_string().contains(&b.display().to_string()));
}

#[test]
fn load_files_reports_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.toml", "[vo.atlas]\npids = 0\n");
    let missing = dir.path().join("missing.toml");
    let c = write(dir.path(), "c.toml", "[vo.cms]\npids = -1\n");
    let errs = PolicySet::load_files(&[a.clone(), missing.clone(), c.clone()])
        .unwrap_err()
        .0;
    assert_eq!(errs.len(), 3, "{}", PolicyErrors(errs.clone()));
    assert_eq!(errs[0].file, a);
    assert_eq!(errs[1].file, missing);
    assert_eq!(errs[1].line, 0);
    assert!(
        errs[1].message.starts_with("cannot read file: "),
        "{}",
        errs[1]
    );
    assert!(errs[1]
        .to_string()
        .starts_with(&format!("{}: cannot read", missing.display())));
    assert_eq!(errs[2].file, c);

    let ok = PolicySet::load_files(std::slice::from_ref(&a));
    assert!(ok.is_err());
    let good = write(dir.path(), "good.toml", "[vo.atlas]\n");
    let set = PolicySet::load_files(std::slice::from_ref(&good)).unwrap();
    assert_eq!(set.files(), [good]);
}

#[test]
fn load_dir_reads_toml_files_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "b.toml", "[vo.cms]\n");
    write(dir.path(), "a.toml", "[vo.atlas]\n");
    write(dir.path(), "z.toml", "");
    // Ignored: dotfiles, other extensions, directories.
    write(dir.path(), ".hidden.toml", "not toml at all [");
    write(dir.path(), "notes.txt", "not toml at all [");
    write(dir.path(), "a.toml.bak", "not toml at all [");
    write(dir.path(), "toml", "not toml at all [");
    std::fs::create_dir(dir.path().join("sub.toml")).unwrap();
    let set = PolicySet::load_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<_> = set
        .files()
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(names, ["a.toml", "b.toml", "z.toml"]);
    assert_eq!(set.vo_names(), ["atlas", "cms"]);
    let atlas = set.resolve("atlas", None).unwrap();
    assert_eq!(atlas.source, dir.path().join("a.toml"));
}

#[test]
fn load_dir_edge_cases() {
    let dir = tempfile::tempdir().unwrap();
    let set = PolicySet::load_dir(dir.path()).unwrap();
    assert!(set.vo_names().is_empty());
    assert!(set.files().is_empty());

    let missing = dir.path().join("nope");
    let errs = PolicySet::load_dir(&missing).unwrap_err().0;
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].file, missing);
    assert!(
        errs[0]
            .message
            .starts_with("cannot read policy directory: "),
        "{}",
        errs[0]
    );

    write(dir.path(), "bad.toml", "[vo.atlas]\npids = 0\n");
    let errs = PolicySet::load_dir(dir.path()).unwrap_err().0;
    assert_eq!(errs[0].file, dir.path().join("bad.toml"));
}

#[test]
fn resolved_rule_serializes() {
    let set = parse(MERGE).unwrap();
    let r = set
        .resolve("atlas", Some(&fqan("/atlas/Role=production")))
        .unwrap();
    let text = toml::to_string(&r).unwrap();
    assert!(text.contains("granularity = \"user\""), "{text}");
    let back: ResolvedRule = toml::from_str(&text).unwrap();
    assert_eq!(back, r);
}

// ---------------------------------------------------------------- isolation

#[test]
fn isolation_defaults() {
    let r = parse("[vo.atlas]\n")
        .unwrap()
        .resolve("atlas", None)
        .unwrap();
    assert_eq!(r.isolation, Isolation::default());
    assert_eq!(r.isolation.network.mode, NetworkMode::Nat);
    assert_eq!(r.isolation.network.shaper, Shaper::Htb);
    assert!(r.isolation.network.isolated);
    assert!(!r.isolation.userns);
    // Setting one key of a table leaves the others at their defaults.
    let r = parse(&vo_with("network = { isolated = false }"))
        .unwrap()
        .resolve("atlas", None)
        .unwrap();
    assert_eq!(
        r.isolation.network,
        NetworkPolicy {
            isolated: false,
            ..NetworkPolicy::default()
        }
    );
}

#[test]
fn full_isolation_parses() {
    let text = r#"
[vo.atlas]
network = { mode = "nat", egress = "200Mbit", ingress = "500mbit", burst = "256k", shaper = "htb", ports = ["8080:80", "5353:53/udp"], isolated = true }
paths   = { private = ["/var/tmp", "/scratch"], readonly = ["/opt/experiment"] }
userns  = true
"#;
    let r = parse(text).unwrap().resolve("atlas", None).unwrap();
    assert_eq!(
        r.isolation,
        Isolation {
            network: NetworkPolicy {
                mode: NetworkMode::Nat,
                egress: Some(200_000_000),
                ingress: Some(500_000_000),
                burst: Some(256 << 10),
                shaper: Shaper::Htb,
                ports: vec![
                    PortForward {
                        host: 8080,
                        domain: 80,
                        proto: Proto::Tcp
                    },
                    PortForward {
                        host: 5353,
                        domain: 53,
                        proto: Proto::Udp
                    },
                ],
                isolated: true,
            },
            paths: PathPolicy {
                private: vec!["/var/tmp".into(), "/scratch".into()],
                readonly: vec!["/opt/experiment".into()],
            },
            userns: true,
        }
    );
    // The same keys as sub-tables, with the other accepted forms.
    let text = r#"
[vo.dteam.network]
mode = "none"
egress = "1.5gbit"
burst = 65536
shaper = "tbf"
isolated = false
[vo.dteam.paths]
readonly = ["/", ]
"#;
    // "/" is refused; everything else in this table is fine.
    one(
        text,
        9,
        13,
        "vo.dteam.paths.readonly[0]",
        "\"/\"",
        "root directory",
    );
    let r = parse(&text.replace("readonly = [\"/\", ]", "readonly = []"))
        .unwrap()
        .resolve("dteam", None)
        .unwrap();
    let net = &r.isolation.network;
    assert_eq!(net.mode, NetworkMode::None);
    assert_eq!(net.egress, Some(1_500_000_000));
    assert_eq!(net.burst, Some(65536));
    assert_eq!(net.shaper, Shaper::Tbf);
    assert!(!net.isolated);
    assert!(r.isolation.paths.readonly.is_empty());
}

#[test]
fn network_mode_errors() {
    let text = vo_with("network = { mode = \"bridge\" }");
    one(
        &text,
        2,
        20,
        "vo.atlas.network.mode",
        "\"bridge\"",
        "expected \"nat\" or \"none\"",
    );
    assert_eq!(
        errors(&text)[0].to_string(),
        "t.toml:2:20: vo.atlas.network.mode = \"bridge\": expected \"nat\" or \"none\""
    );
    one(
        &vo_with("network = { mode = \"NAT\" }"),
        2,
        20,
        "vo.atlas.network.mode",
        "\"NAT\"",
        "expected \"nat\" or \"none\"",
    );
    one(
        &vo_with("network = { mode = false }"),
        2,
        20,
        "vo.atlas.network.mode",
        "false",
        "expected a string, one of \"nat\", \"none\", found a boolean",
    );
}

#[test]
fn rate_errors() {
    let cases: &[(&str, &str)] = &[
        ("\"200Mbps\"", "tc reads \"mbps\" as megabytes per second"),
        ("\"25MB/s\"", "byte units are not accepted"),
        ("\"200\"", "expected a rate in bits per second"),
        ("\"200 mbit\"", "expected a rate in bits per second"),
        ("\"0mbit\"", "must be greater than 0"),
        ("\"101gbit\"", "above the maximum of 100gbit"),
        ("\"0.5bit\"", "below 1 bit/s"),
        (
            "200000000",
            "expected a rate string like \"200mbit\", found an integer",
        ),
        ("1.5", "found a float"),
    ];
    for (value, msg) in cases {
        for key in ["egress", "ingress"] {
            let text = vo_with(&format!("network = {{ {key} = {value} }}"));
            let col = "network = { ".len() + key.len() + " = ".len() + 1;
            one(
                &text,
                2,
                col,
                &format!("vo.atlas.network.{key}"),
                value,
                msg,
            );
        }
    }
    let ok = parse(&vo_with(
        "network = { egress = \"100gbit\", ingress = \"1bit\" }",
    ))
    .unwrap()
    .resolve("atlas", None)
    .unwrap();
    assert_eq!(ok.isolation.network.egress, Some(100_000_000_000));
    assert_eq!(ok.isolation.network.ingress, Some(1));
}

#[test]
fn burst_errors() {
    let cases: &[(&str, &str)] = &[
        ("0", "must be greater than 0"),
        ("\"0k\"", "must be greater than 0"),
        ("-1", "must not be negative"),
        ("\"4G\"", "above the maximum of 4294967295 bytes"),
        ("\"256kbit\"", "expected a size"),
        ("true", "expected a size"),
    ];
    for (value, msg) in cases {
        one(
            &vo_with(&format!("network = {{ burst = {value} }}")),
            2,
            21,
            "vo.atlas.network.burst",
            value,
            msg,
        );
    }
    let r = parse(&vo_with("network = { burst = 4294967295 }"))
        .unwrap()
        .resolve("atlas", None)
        .unwrap();
    assert_eq!(r.isolation.network.burst, Some(u64::from(u32::MAX)));
}

#[test]
fn shaper_errors() {
    for qdisc in ["sfq", "fq_codel", "cake", "netem"] {
        let errs = errors(&vo_with(&format!("network = {{ shaper = \"{qdisc}\" }}")));
        assert_eq!(errs.len(), 1);
        let e = &errs[0];
        assert_eq!(
            (e.line, e.column, e.field.as_str()),
            (2, 22, "vo.atlas.network.shaper")
        );
        assert_eq!(
            e.message,
            format!(
                "only \"htb\" and \"tbf\" are supported: the kernel module set of this platform lacks sch_{qdisc} and the other qdiscs"
            )
        );
    }
    one(
        &vo_with("network = { shaper = \"fancy\" }"),
        2,
        22,
        "vo.atlas.network.shaper",
        "\"fancy\"",
        "expected \"htb\" or \"tbf\", the only shapers the kernel module set of this platform provides",
    );
    one(
        &vo_with("network = { shaper = 1 }"),
        2,
        22,
        "vo.atlas.network.shaper",
        "1",
        "expected a string, one of \"htb\", \"tbf\"",
    );
}

#[test]
fn boolean_errors() {
    one(
        &vo_with("network = { isolated = \"yes\" }"),
        2,
        24,
        "vo.atlas.network.isolated",
        "\"yes\"",
        "expected a boolean (true or false), found a string",
    );
    one(
        &vo_with("userns = 1"),
        2,
        10,
        "vo.atlas.userns",
        "1",
        "expected a boolean (true or false), found an integer",
    );
}

#[test]
fn port_errors() {
    let col = "network = { ports = [".len() + 1;
    let cases: &[(&str, &str)] = &[
        ("\"8080\"", "expected \"HOST:DOMAIN\""),
        ("\"8080:\"", "expected \"HOST:DOMAIN\""),
        ("\"0:80\"", "host port 0 is out of range (1-65535)"),
        (
            "\"80:65536\"",
            "domain port 65536 is out of range (1-65535)",
        ),
        (
            "\"80:80/sctp\"",
            "unknown protocol \"sctp\"; expected \"tcp\" or \"udp\"",
        ),
        ("8080", "expected a string, found an integer"),
    ];
    for (value, msg) in cases {
        one(
            &vo_with(&format!("network = {{ ports = [{value}] }}")),
            2,
            col,
            "vo.atlas.network.ports[0]",
            value,
            msg,
        );
    }
    // The same host port and protocol twice; the same port over another
    // protocol is fine.
    let text = vo_with(
        "network = { ports = [\"8080:80\", \"8080:80/udp\", \"53:53/udp\", \"8080:81/tcp\"] }",
    );
    one(
        &text,
        2,
        61,
        "vo.atlas.network.ports[3]",
        "\"8080:81/tcp\"",
        "host port 8080/tcp is already forwarded by ports[0]",
    );
    let text = vo_with("network = { ports = [\"x\", \"53:53/udp\", \"53:54/udp\"] }");
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{}", PolicyErrors(errs.clone()));
    assert!(errs[1].message.contains("already forwarded by ports[1]"));
    let r = parse(&vo_with(
        "network = { ports = [\"8080:80\", \"8080:80/udp\", \"9090:80\"] }",
    ))
    .unwrap()
    .resolve("atlas", None)
    .unwrap();
    assert_eq!(r.isolation.network.ports.len(), 3);
    // A list must be a list.
    let e = &errors(&vo_with("network = { ports = \"8080:80\" }"))[0];
    assert_eq!(e.line, 2);
}

#[test]
fn ports_need_nat() {
    // In one table: reported at the ports, naming the field.
    let text = vo_with("network = { mode = \"none\", ports = [\"8080:80\"] }");
    one(
        &text,
        2,
        36,
        "vo.atlas.network.ports",
        "[\"8080:80\"]",
        "port forwarding requires network.mode = \"nat\", but the mode is \"none\"",
    );
    // Empty ports are fine with "none".
    parse(&vo_with("network = { mode = \"none\", ports = [] }")).unwrap();
    // Invalid ports are reported once.
    one(
        &vo_with("network = { mode = \"none\", ports = [\"x\"] }"),
        2,
        37,
        "vo.atlas.network.ports[0]",
        "\"x\"",
        "HOST:DOMAIN",
    );

    // VO mode "none", rule forwards ports: the rule is to blame.
    let text = r#"[vo.atlas]
network = { mode = "none" }
[[vo.atlas.role]]
fqan = "/atlas/Role=web"
network = { ports = ["8080:80"] }
"#;
    one(
        text,
        5,
        21,
        "vo.atlas.role[0].network.ports",
        "[\"8080:80\"]",
        "requires network.mode = \"nat\", but the mode is \"none\"",
    );

    // VO forwards ports, a rule switches to "none" without clearing them.
    let text = r#"[vo.atlas]
network = { ports = ["8080:80", "53:53/udp"] }
[[vo.atlas.group]]
fqan = "/atlas/offline"
network = { mode = "none" }
"#;
    one(
        text,
        5,
        20,
        "vo.atlas.group[0].network.mode",
        "\"none\"",
        "mode \"none\" cannot forward ports, but ports = [\"8080:80/tcp\", \"53:53/udp\"] is inherited; add ports = [] here",
    );
    let fixed = text.replace("mode = \"none\"", "mode = \"none\", ports = []");
    let set = parse(&fixed).unwrap();
    let r = set
        .resolve("atlas", Some(&fqan("/atlas/offline/x")))
        .unwrap();
    assert_eq!(r.isolation.network.mode, NetworkMode::None);
    assert!(r.isolation.network.ports.is_empty());
    assert_eq!(
        set.resolve("atlas", None)
            .unwrap()
            .isolation
            .network
            .ports
            .len(),
        2
    );

    // A group and a role rule that only clash together fail at resolution.
    let text = r#"[vo.atlas]
[[vo.atlas.group]]
fqan = "/atlas/offline"
network = { mode = "none" }
[[vo.atlas.role]]
fqan = "/atlas/Role=web"
network = { ports = ["8080:80"] }
"#;
    let set = parse(text).unwrap();
    let err = set
        .resolve("atlas", Some(&fqan("/atlas/offline/Role=web")))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "VO \"atlas\", FQAN \"/atlas/offline/Role=web\": the matching rules conflict: \
         network.ports forwards ports, but network.mode is \"none\" (ports need \"nat\")"
    );
    set.resolve("atlas", Some(&fqan("/atlas/Role=web")))
        .unwrap();
}

#[test]
fn path_errors() {
    let col = "paths = { private = [".len() + 1;
    let cases: &[(&str, &str)] = &[
        ("\"scratch\"", "must be an absolute path"),
        ("\"\"", "must be an absolute path"),
        ("\"/scratch/../etc\"", "must not contain \"..\" components"),
        ("\"/..\"", "must not contain \"..\" components"),
        ("\"/scratch/./x\"", "must be normalized (no \".\" or empty components, no trailing \"/\"); write \"/scratch/x\""),
        ("\"/scratch/\"", "write \"/scratch\""),
        ("\"//scratch\"", "write \"/scratch\""),
        ("\"/scratch\\u0000\"", "must not contain control characters"),
        ("\"/scr\\natch\"", "must not contain control characters"),
        ("\"/\"", "the root directory cannot be private or read-only"),
        ("\"/proc\"", "/proc is a kernel file system"),
        ("\"/proc/sys\"", "/proc is a kernel file system"),
        ("\"/sys\"", "/sys is a kernel file system"),
        ("\"/dev\"", "/dev is a kernel file system"),
        ("\"/tmp\"", "/tmp is already private to every domain"),
        ("\"/tmp/x\"", "/tmp is already private to every domain"),
        ("\"/dev/shm\"", "/dev/shm is already private to every domain"),
        ("42", "expected a string, found an integer"),
    ];
    for (value, msg) in cases {
        for list in ["private", "readonly"] {
            let text = format!("[vo.atlas]\npaths = {{ {list} = [{value}] }}\n");
            let col = col - "private".len() + list.len();
            one(
                &text,
                2,
                col,
                &format!("vo.atlas.paths.{list}[0]"),
                value,
                msg,
            );
        }
    }
    let long = format!("\"/{}\"", "a".repeat(256));
    let e = &errors(&vo_with(&format!("paths = {{ readonly = [{long}] }}")))[0];
    assert_eq!((e.line, e.column), (2, 23));
    assert!(e.value.ends_with("a ..."), "{e}");
    assert!(e.message.contains("component longer than 255 bytes"), "{e}");
    let longer = format!("\"/{}\"", ["a"; 2100].join("/"));
    let e = &errors(&vo_with(&format!("paths = {{ readonly = [{longer}] }}")))[0];
    assert!(e.message.contains("longer than 4095 bytes"), "{e}");
    // Only whole components count: /procfs and /tmpdata are ordinary.
    let r = parse(&vo_with(
        "paths = { private = [\"/procfs\", \"/tmpdata\", \"/devices\"], readonly = [\"/system\"] }",
    ))
    .unwrap()
    .resolve("atlas", None)
    .unwrap();
    assert_eq!(r.isolation.paths.private.len(), 3);
    // Existence is the daemon's business.
    parse(&vo_with("paths = { readonly = [\"/does/not/exist\"] }")).unwrap();
}

#[test]
fn path_duplicates() {
    one(
        &vo_with("paths = { private = [\"/scratch\", \"/a\", \"/scratch\"] }"),
        2,
        40,
        "vo.atlas.paths.private[2]",
        "\"/scratch\"",
        "listed twice; already vo.atlas.paths.private[0]",
    );
    // Private and read-only at once, in one table.
    one(
        &vo_with("paths = { private = [\"/scratch\"], readonly = [\"/opt\", \"/scratch\"] }"),
        2,
        55,
        "vo.atlas.paths.readonly[1]",
        "\"/scratch\"",
        "also listed in paths.private; a directory is either private or read-only",
    );
    // ... or across the VO and a rule: the rule is to blame.
    let text = r#"[vo.atlas]
paths = { readonly = ["/opt/sw", "/scratch"] }
[[vo.atlas.group]]
fqan = "/atlas/higgs"
paths = { private = ["/scratch"] }
"#;
    one(
        text,
        5,
        22,
        "vo.atlas.group[0].paths.private[0]",
        "\"/scratch\"",
        "also listed in paths.readonly (inherited)",
    );
    // A rule that replaces readonly too resolves the clash.
    let fixed = text.replace(
        "private = [\"/scratch\"]",
        "private = [\"/scratch\"], readonly = [\"/opt/sw\"]",
    );
    let r = parse(&fixed)
        .unwrap()
        .resolve("atlas", Some(&fqan("/atlas/higgs")))
        .unwrap();
    assert_eq!(r.isolation.paths.private, [PathBuf::from("/scratch")]);
    assert_eq!(r.isolation.paths.readonly, [PathBuf::from("/opt/sw")]);
}

const ISOLATION_MERGE: &str = r#"
[vo.atlas]
network = { mode = "nat", egress = "200mbit", ingress = "500mbit", burst = "256k", ports = ["8080:80"], isolated = false }
paths   = { private = ["/scratch"], readonly = ["/opt/experiment"] }

[[vo.atlas.group]]
fqan    = "/atlas/higgs"
network = { egress = "1gbit", shaper = "tbf" }
paths   = { readonly = ["/opt/higgs", "/opt/experiment"] }
userns  = true

[[vo.atlas.role]]
fqan    = "/atlas/Role=production"
network = { ports = ["9090:90/udp"], isolated = true }

[[vo.atlas.group]]
fqan    = "/atlas/higgs/susy"
network = { mode = "none", ports = [] }
userns  = false
"#;

#[test]
fn isolation_merges_key_by_key() {
    let set = parse(ISOLATION_MERGE).unwrap();
    let r = |f: Option<&str>| {
        let f = f.map(fqan);
        set.resolve("atlas", f.as_ref()).unwrap().isolation
    };
    let base = r(None);
    assert_eq!(base.network.egress, Some(200_000_000));
    assert_eq!(base.network.shaper, Shaper::Htb);
    assert!(!base.network.isolated);
    assert!(!base.userns);

    // egress and shaper replaced; mode, ingress, burst, ports, isolated kept.
    let higgs = r(Some("/atlas/higgs"));
    assert_eq!(
        higgs.network,
        NetworkPolicy {
            mode: NetworkMode::Nat,
            egress: Some(1_000_000_000),
            ingress: Some(500_000_000),
            burst: Some(256 << 10),
            shaper: Shaper::Tbf,
            ports: base.network.ports.clone(),
            isolated: false,
        }
    );
    // readonly replaced whole, private kept.
    assert_eq!(
        higgs.paths,
        PathPolicy {
            private: vec!["/scratch".into()],
            readonly: vec!["/opt/higgs".into(), "/opt/experiment".into()],
        }
    );
    assert!(higgs.userns);

    // The role's ports replace the VO's list; the group's keys still apply.
    let prod = r(Some("/atlas/higgs/Role=production"));
    assert_eq!(
        prod.network.ports,
        [PortForward {
            host: 9090,
            domain: 90,
            proto: Proto::Udp
        }]
    );
    assert!(prod.network.isolated);
    assert_eq!(prod.network.egress, Some(1_000_000_000));
    assert_eq!(prod.network.shaper, Shaper::Tbf);
    assert!(prod.userns);

    // The most specific rule goes loopback-only and clears the ports.
    let susy = r(Some("/atlas/higgs/susy/Role=production"));
    assert_eq!(susy.network.mode, NetworkMode::None);
    assert!(susy.network.ports.is_empty());
    assert_eq!(susy.network.egress, Some(1_000_000_000));
    assert!(!susy.userns);
    assert_eq!(susy.paths, higgs.paths);
}

#[test]
fn isolation_serializes_and_old_records_load() {
    let set = parse(ISOLATION_MERGE).unwrap();
    let r = set
        .resolve("atlas", Some(&fqan("/atlas/higgs/Role=production")))
        .unwrap();
    let text = toml::to_string(&r).unwrap();
    let back: ResolvedRule = toml::from_str(&text).unwrap();
    assert_eq!(back, r);
    // A record from before isolation existed gets the defaults.
    let plain = ResolvedRule::defaults("atlas", "t.toml".into());
    let text = toml::to_string(&plain).unwrap();
    let mut skip = false;
    let old: String = text
        .lines()
        .filter(|line| {
            if line.starts_with('[') {
                skip = line.starts_with("[isolation");
            }
            !skip
        })
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(
        !old.contains("isolation") && old.contains("[idle]"),
        "{old}"
    );
    let back: ResolvedRule = toml::from_str(&old).unwrap_or_else(|e| panic!("{e}\n{old}"));
    assert_eq!(back, plain);
}

// ------------------------------------------------------------------ monitor

#[test]
fn monitor_defaults() {
    let r = parse("[vo.atlas]\n")
        .unwrap()
        .resolve("atlas", None)
        .unwrap();
    assert_eq!(r.monitor, MonitorPolicy::default());
    for kind in LimitKind::ALL {
        assert_eq!(r.monitor.action(kind), LimitAction::Notify, "{kind}");
    }
    assert_eq!(r.monitor.cpu_throttled_permille, 500);
    assert!((r.monitor.cpu_throttled_ratio() - 0.5).abs() < 1e-12);
    // An empty table sets nothing.
    let r = parse(&vo_with("monitor = {}"))
        .unwrap()
        .resolve("atlas", None)
        .unwrap();
    assert_eq!(r.monitor, MonitorPolicy::default());
}

#[test]
fn monitor_at_vo_level() {
    let text = vo_with(
        "monitor = { oom_kill = \"kill\", memory_limit = \"freeze\", pids_limit = \"notify\", \
         cpu_throttled = \"freeze\", network_drops = \"kill\", cpu_throttled_ratio = 0.125 }",
    );
    let r = parse(&text).unwrap().resolve("atlas", None).unwrap();
    assert_eq!(
        r.monitor,
        MonitorPolicy {
            memory_limit: LimitAction::Freeze,
            oom_kill: LimitAction::Kill,
            pids_limit: LimitAction::Notify,
            cpu_throttled: LimitAction::Freeze,
            network_drops: LimitAction::Kill,
            cpu_throttled_permille: 125,
        }
    );
    assert_eq!(r.monitor.action(LimitKind::OomKill), LimitAction::Kill);
    assert_eq!(r.monitor.action(LimitKind::NetworkDrops), LimitAction::Kill);
    // Ratio bounds: 1 (integer or float) and 0.001 are accepted.
    for (ratio, permille) in [("1", 1000), ("1.0", 1000), ("0.001", 1), ("0.5", 500)] {
        let r = parse(&vo_with(&format!(
            "monitor = {{ cpu_throttled_ratio = {ratio} }}"
        )))
        .unwrap()
        .resolve("atlas", None)
        .unwrap();
        assert_eq!(r.monitor.cpu_throttled_permille, permille, "{ratio}");
    }
}

const MONITOR_MERGE: &str = r#"
[vo.atlas]
monitor = { oom_kill = "kill", cpu_throttled = "freeze", cpu_throttled_ratio = 0.8 }

[[vo.atlas.group]]
fqan    = "/atlas/higgs"
monitor = { oom_kill = "notify", memory_limit = "freeze" }

[[vo.atlas.role]]
fqan    = "/atlas/higgs/Role=production"
monitor = { cpu_throttled_ratio = 0.25 }

[[vo.atlas.role]]
fqan = "/atlas/Role=pilot"
idle = { action = "destroy" }
"#;

#[test]
fn monitor_rules_override_key_by_key() {
    let set = parse(MONITOR_MERGE).unwrap();
    let r = |f: Option<&str>| {
        let f = f.map(fqan);
        set.resolve("atlas", f.as_ref()).unwrap().monitor
    };
    let base = r(None);
    assert_eq!(
        base,
        MonitorPolicy {
            oom_kill: LimitAction::Kill,
            cpu_throttled: LimitAction::Freeze,
            cpu_throttled_permille: 800,
            ..MonitorPolicy::default()
        }
    );
    // The group rule overrides two actions, inheriting the rest.
    let higgs = r(Some("/atlas/higgs"));
    assert_eq!(
        higgs,
        MonitorPolicy {
            oom_kill: LimitAction::Notify,
            memory_limit: LimitAction::Freeze,
            ..base
        }
    );
    // The role rule changes only the ratio, on top of the group rule.
    let prod = r(Some("/atlas/higgs/Role=production"));
    assert_eq!(
        prod,
        MonitorPolicy {
            cpu_throttled_permille: 250,
            ..higgs
        }
    );
    // A rule without monitor inherits the VO's whole.
    assert_eq!(r(Some("/atlas/Role=pilot")), base);
    assert_eq!(r(Some("/atlas/other")), base);
}

#[test]
fn monitor_errors() {
    // Bad action names and types.
    one(
        &vo_with("monitor = { oom_kill = \"stop\" }"),
        2,
        24,
        "vo.atlas.monitor.oom_kill",
        "\"stop\"",
        "expected one of \"notify\", \"freeze\", \"kill\"",
    );
    one(
        &vo_with("monitor = { memory_limit = \"Kill\" }"),
        2,
        28,
        "vo.atlas.monitor.memory_limit",
        "\"Kill\"",
        "expected one of \"notify\", \"freeze\", \"kill\"",
    );
    one(
        &vo_with("monitor = { pids_limit = true }"),
        2,
        26,
        "vo.atlas.monitor.pids_limit",
        "true",
        "expected a string, one of \"notify\", \"freeze\", \"kill\", found a boolean",
    );
    one(
        &vo_with("monitor = { network_drops = 1 }"),
        2,
        29,
        "vo.atlas.monitor.network_drops",
        "1",
        "found an integer",
    );
    one(
        &vo_with("monitor = { cpu_throttled = [\"kill\"] }"),
        2,
        29,
        "vo.atlas.monitor.cpu_throttled",
        "[\"kill\"]",
        "found an array",
    );
    // Unknown keys name the key and value, and list the valid keys.
    one(
        &vo_with("monitor = { oom = \"kill\" }"),
        2,
        13,
        "vo.atlas.monitor.oom",
        "\"kill\"",
        "unknown monitor key; expected \"memory_limit\", \"oom_kill\", \"pids_limit\", \
         \"cpu_throttled\", \"network_drops\" or \"cpu_throttled_ratio\"",
    );
    one(
        &vo_with("monitor = { \"cpu throttled\" = \"kill\" }"),
        2,
        13,
        "vo.atlas.monitor.\"cpu throttled\"",
        "\"kill\"",
        "unknown monitor key",
    );
    // The ratio: range, precision and type.
    for (ratio, msg) in [
        ("0", "must be greater than 0 and at most 1"),
        ("0.0", "must be greater than 0 and at most 1"),
        ("-0.5", "must be greater than 0 and at most 1"),
        ("1.5", "must be greater than 0 and at most 1"),
        ("2", "must be greater than 0 and at most 1"),
        ("nan", "must be greater than 0 and at most 1"),
        ("inf", "must be greater than 0 and at most 1"),
        ("0.1234", "at most 3 decimals"),
        ("0.0004", "at most 3 decimals"),
        ("1e-12", "at most 3 decimals"),
        (
            "\"0.5\"",
            "expected a number greater than 0 and at most 1 (e.g. 0.5), found a string",
        ),
        ("\"50%\"", "found a string"),
        ("false", "found a boolean"),
    ] {
        one(
            &vo_with(&format!("monitor = {{ cpu_throttled_ratio = {ratio} }}")),
            2,
            35,
            "vo.atlas.monitor.cpu_throttled_ratio",
            ratio,
            msg,
        );
    }
    // Not a table.
    let e = &errors(&vo_with("monitor = \"kill\""))[0];
    assert_eq!((e.line, e.column), (2, 11));
    assert!(
        e.message.contains("a table like { oom_kill = \"kill\""),
        "{e}"
    );
    // In a rule, the field names the rule.
    one(
        "[vo.atlas]\n[[vo.atlas.role]]\nfqan = \"/atlas/Role=x\"\nmonitor = { oom_kill = \"die\" }\n",
        4,
        24,
        "vo.atlas.role[0].monitor.oom_kill",
        "\"die\"",
        "expected one of",
    );
    // Every problem of the table is reported, in order, and none stops the
    // rest of the file from being checked.
    let errs = errors(
        "[vo.atlas]\nmonitor = { oom_kill = \"x\", bogus = 1, cpu_throttled_ratio = 3 }\npids = 0\n",
    );
    let got: Vec<(usize, usize, &str)> = errs
        .iter()
        .map(|e| (e.line, e.column, e.field.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (2, 24, "vo.atlas.monitor.oom_kill"),
            (2, 29, "vo.atlas.monitor.bogus"),
            (2, 62, "vo.atlas.monitor.cpu_throttled_ratio"),
            (3, 8, "vo.atlas.pids"),
        ]
    );
    // The display form names file, line, field and value.
    assert_eq!(
        errs[0].to_string(),
        "t.toml:2:24: vo.atlas.monitor.oom_kill = \"x\": expected one of \"notify\", \"freeze\", \"kill\""
    );
}

#[test]
fn monitor_serializes_and_old_records_load() {
    let set = parse(MONITOR_MERGE).unwrap();
    let r = set
        .resolve("atlas", Some(&fqan("/atlas/higgs/Role=production")))
        .unwrap();
    let text = toml::to_string(&r).unwrap();
    assert!(text.contains("[monitor]"), "{text}");
    assert!(text.contains("oom_kill = \"notify\""), "{text}");
    assert!(text.contains("memory_limit = \"freeze\""), "{text}");
    assert!(text.contains("cpu_throttled_permille = 250"), "{text}");
    let back: ResolvedRule = toml::from_str(&text).unwrap();
    assert_eq!(back, r);
    // A record from before monitor existed gets the defaults.
    let plain = ResolvedRule::defaults("atlas", "t.toml".into());
    let text = toml::to_string(&plain).unwrap();
    let mut skip = false;
    let old: String = text
        .lines()
        .filter(|line| {
            if line.starts_with('[') {
                skip = line.starts_with("[monitor");
            }
            !skip
        })
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(!old.contains("monitor") && old.contains("[idle]"), "{old}");
    let back: ResolvedRule = toml::from_str(&old).unwrap_or_else(|e| panic!("{e}\n{old}"));
    assert_eq!(back, plain);
    // A partial record fills in the rest.
    let m: MonitorPolicy = toml::from_str("oom_kill = \"kill\"\n").unwrap();
    assert_eq!(
        m,
        MonitorPolicy {
            oom_kill: LimitAction::Kill,
            ..MonitorPolicy::default()
        }
    );
}

// ------------------------------------------------------- identity mapping

/// 1-based character column of `needle` in `line` (for error positions).
fn col(line: &str, needle: &str) -> usize {
    let at = line
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {line:?}"));
    line[..at].chars().count() + 1
}

/// One `map` entry on line 2 of an atlas table; returns the text and the line.
fn map_entry(entry: &str) -> (String, String) {
    let line = format!("map = [ {entry} ]");
    (vo_with(&line), line)
}

const MAPPING: &str = r#"[vo.atlas]
map = [
  { fqan = "/atlas/Role=pilot", pool = "atlaspil" },
  { fqan = "/atlas/Role=NULL/Capability=NULL", account = "atlasadm" },
  { fqan = "/atlas/*", pool = "atlas" },
  { dn = "/DC=org/DC=example/CN=Jane Doe", account = "jdoe" },
]
group_map = [ { fqan = "/atlas/production", group = "atlasprd" }, { fqan = "/atlas/higgs/*", group = "higgs" } ]
"#;

#[test]
fn map_parses_in_the_order_written() {
    let set = parse(MAPPING).unwrap();
    let got: Vec<(String, String, String)> = set
        .mappings()
        .iter()
        .map(|r| (r.vo.clone(), r.pattern.to_string(), r.target.to_string()))
        .collect();
    let want = [
        ("atlas", "/atlas/Role=pilot", ".atlaspil"),
        ("atlas", "/atlas", "atlasadm"),
        ("atlas", "/atlas/*", ".atlas"),
        ("atlas", "/DC=org/DC=example/CN=Jane Doe", "jdoe"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(got, want);
    let m = &set.mappings()[0];
    assert_eq!(m.pattern, MapPattern::Fqan(fqan("/atlas/Role=pilot")));
    assert_eq!(m.target, MapTarget::Pool("atlaspil".into()));
    assert_eq!(
        (m.origin.line, m.origin.column, m.origin.field.as_str()),
        (3, 3, "vo.atlas.map[0]")
    );
    assert_eq!(m.origin.file, Path::new("t.toml"));
    assert_eq!(
        m.origin.value,
        "{ fqan = \"/atlas/Role=pilot\", pool = \"atlaspil\" }"
    );
    assert_eq!(m.origin.to_string(), "t.toml:3:3: vo.atlas.map[0]");
    let t = &m.target_origin;
    assert_eq!(
        (t.line, t.column, t.field.as_str(), t.value.as_str()),
        (3, 40, "vo.atlas.map[0].pool", "\"atlaspil\"")
    );
    assert_eq!(
        t.error("no such pool").to_string(),
        "t.toml:3:40: vo.atlas.map[0].pool = \"atlaspil\": no such pool"
    );
    assert_eq!(set.mappings()[1].pattern, MapPattern::Fqan(fqan("/atlas")));
    assert_eq!(
        set.mappings()[2].pattern,
        MapPattern::FqanPrefix(vec!["atlas".into()])
    );
    assert_eq!(
        set.mappings()[3].pattern,
        MapPattern::Dn("/DC=org/DC=example/CN=Jane Doe".into())
    );
    assert_eq!(set.mappings()[3].target, MapTarget::Account("jdoe".into()));

    let groups: Vec<(String, &str, usize)> = set
        .group_mappings()
        .iter()
        .map(|g| (g.pattern.to_string(), g.group.as_str(), g.origin.line))
        .collect();
    assert_eq!(
        groups,
        [
            ("/atlas/production".to_string(), "atlasprd", 8),
            ("/atlas/higgs/*".to_string(), "higgs", 8),
        ]
    );
    assert_eq!(
        set.group_mappings()[1].origin.field,
        "vo.atlas.group_map[1]"
    );
    // Mapping rules do not change what the policy resolves to.
    let r = set.resolve("atlas", None).unwrap();
    assert_eq!(r, ResolvedRule::defaults("atlas", "t.toml".into()));
    // A set without rules has none.
    assert!(parse("[vo.atlas]\nmap = []\n")
        .unwrap()
        .mappings()
        .is_empty());
}

#[test]
fn map_order_is_files_then_position() {
    // VO tables are read in name order, but rules keep the order written.
    let text = "[vo.cms]\nmap = [ { dn = \"/CN=b\", account = \"b\" } ]\n\
                [vo.atlas]\nmap = [ { dn = \"/CN=a\", account = \"a\" } ]\n";
    let set = parse(text).unwrap();
    let vos: Vec<&str> = set.mappings().iter().map(|r| r.vo.as_str()).collect();
    assert_eq!(vos, ["cms", "atlas"]);
    let dir = tempfile::tempdir().unwrap();
    let a = write(
        dir.path(),
        "a.toml",
        "[vo.zz]\nmap = [ { dn = \"/CN=z\", pool = \"zz\" } ]\n",
    );
    let b = write(dir.path(), "b.toml", text);
    let set = PolicySet::load_dir(dir.path()).unwrap();
    let got: Vec<(&Path, &str)> = set
        .mappings()
        .iter()
        .map(|r| (r.origin.file.as_path(), r.vo.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (a.as_path(), "zz"),
            (b.as_path(), "cms"),
            (b.as_path(), "atlas")
        ]
    );
}

#[test]
fn map_pattern_errors() {
    let cases = [
        (
            r#"{ fqan = "/cms/Role=pilot", pool = "cmspil" }"#,
            "fqan",
            r#""/cms/Role=pilot""#,
            "the FQAN belongs to VO \"cms\", not \"atlas\"; map it under [vo.cms]",
        ),
        (
            r#"{ fqan = "/cms/*", pool = "cms" }"#,
            "fqan",
            r#""/cms/*""#,
            "the FQAN belongs to VO \"cms\"",
        ),
        (
            r#"{ fqan = "/atlas/Role=pilot/*", pool = "p" }"#,
            "fqan",
            r#""/atlas/Role=pilot/*""#,
            "a wildcard pattern may only follow groups (e.g. \"/atlas/*\" or \"/atlas/group/*\")",
        ),
        (
            r#"{ fqan = "/atlas//x", pool = "p" }"#,
            "fqan",
            r#""/atlas//x""#,
            "empty component",
        ),
        (
            r#"{ fqan = "/atlas/*/x", pool = "p" }"#,
            "fqan",
            r#""/atlas/*/x""#,
            "character '*' is not allowed",
        ),
        (
            r#"{ fqan = "atlas", pool = "p" }"#,
            "fqan",
            r#""atlas""#,
            "must start with '/'",
        ),
        (
            r#"{ fqan = "/DC=org/CN=Jane", account = "jdoe" }"#,
            "fqan",
            r#""/DC=org/CN=Jane""#,
            "this is a certificate DN, not an FQAN; write dn = \"/DC=org/CN=Jane\"",
        ),
        (
            r#"{ fqan = "/Role=x", pool = "p" }"#,
            "fqan",
            r#""/Role=x""#,
            "the first component must be the VO, not a Role",
        ),
        (
            r#"{ fqan = 7, pool = "p" }"#,
            "fqan",
            "7",
            "expected a string, found an integer",
        ),
        (
            r#"{ dn = "/atlas/Role=pilot", pool = "p" }"#,
            "dn",
            r#""/atlas/Role=pilot""#,
            "the first component \"atlas\" is not KEY=value; this is an FQAN, write fqan = \"/atlas/Role=pilot\"",
        ),
        (
            r#"{ dn = "CN=x", pool = "p" }"#,
            "dn",
            r#""CN=x""#,
            "must start with '/'",
        ),
        (
            r#"{ dn = "/CN=a\\b", pool = "p" }"#,
            "dn",
            r#""/CN=a\\b""#,
            "character '\\\\' is not allowed",
        ),
        (
            r#"{ dn = "/CN=a\tb", pool = "p" }"#,
            "dn",
            r#""/CN=a\tb""#,
            "control character '\\t' is not allowed",
        ),
        (
            r#"{ dn = "", pool = "p" }"#,
            "dn",
            r#""""#,
            "must not be empty",
        ),
        (
            r#"{ dn = ["/CN=x"], pool = "p" }"#,
            "dn",
            r#"["/CN=x"]"#,
            "expected a string, found an array",
        ),
    ];
    for (entry, key, value, msg) in cases {
        let (text, line) = map_entry(entry);
        let at = col(&line, &format!("{key} = ")) + key.len() + 3;
        one(&text, 2, at, &format!("vo.atlas.map[0].{key}"), value, msg);
    }
    // The DN validator is the grid-mapfile's: it accepts what real DNs hold.
    let (text, _) = map_entry(
        r#"{ dn = "/C=DE/O=GermanGrid/OU=KIT/CN=host/node1.example.org", account = "h" }"#,
    );
    parse(&text).unwrap();
    let long = format!(r#"{{ dn = "/CN={}", pool = "p" }}"#, "x".repeat(1100));
    let errs = errors(&map_entry(&long).0);
    assert!(
        errs[0]
            .message
            .contains("too long (1104 bytes, at most 1024)"),
        "{}",
        errs[0]
    );
}

#[test]
fn map_target_errors() {
    let cases = [
        (
            r#"{ fqan = "/atlas", pool = ".atlas" }"#,
            "pool",
            r#"".atlas""#,
            "a pool is named without the grid-mapfile's leading '.'; write pool = \"atlas\"",
        ),
        (
            r#"{ fqan = "/atlas", pool = "at las" }"#,
            "pool",
            r#""at las""#,
            "character ' ' is not allowed",
        ),
        (
            r#"{ fqan = "/atlas", pool = "" }"#,
            "pool",
            r#""""#,
            "must not be empty",
        ),
        (
            r#"{ fqan = "/atlas", pool = "-x" }"#,
            "pool",
            r#""-x""#,
            "must not start with '-'",
        ),
        (
            r#"{ fqan = "/atlas", pool = "..." }"#,
            "pool",
            r#""...""#,
            "must not start with '.'",
        ),
        (
            r#"{ fqan = "/atlas", pool = 3 }"#,
            "pool",
            "3",
            "expected a string, found an integer",
        ),
        (
            r#"{ dn = "/CN=x", account = "../root" }"#,
            "account",
            r#""../root""#,
            "character '/' is not allowed",
        ),
        (
            r#"{ dn = "/CN=x", account = "x,y" }"#,
            "account",
            r#""x,y""#,
            "character ',' is not allowed",
        ),
    ];
    for (entry, key, value, msg) in cases {
        let (text, line) = map_entry(entry);
        let at = col(&line, &format!("{key} = ")) + key.len() + 3;
        one(&text, 2, at, &format!("vo.atlas.map[0].{key}"), value, msg);
    }
    let long = format!(r#"{{ dn = "/CN=x", pool = "{}" }}"#, "p".repeat(65));
    let errs = errors(&map_entry(&long).0);
    assert!(
        errs[0].message.contains("too long (65 bytes, at most 64)"),
        "{}",
        errs[0]
    );
}

#[test]
fn map_entry_shape_errors() {
    // Neither or both of a pair.
    let (text, _) = map_entry(r#"{ pool = "p" }"#);
    one(
        &text,
        2,
        9,
        "vo.atlas.map[0]",
        "",
        "missing fqan or dn (what the rule matches)",
    );
    let (text, _) = map_entry(r#"{ dn = "/CN=x" }"#);
    one(
        &text,
        2,
        9,
        "vo.atlas.map[0]",
        "",
        "missing pool or account (where the rule maps to)",
    );
    let (text, line) = map_entry(r#"{ fqan = "/atlas", dn = "/CN=x", pool = "p" }"#);
    one(
        &text,
        2,
        col(&line, "\"/CN=x\""),
        "vo.atlas.map[0].dn",
        "\"/CN=x\"",
        "give either fqan or dn, not both",
    );
    let (text, line) = map_entry(r#"{ dn = "/CN=x", account = "a", pool = "p" }"#);
    one(
        &text,
        2,
        col(&line, "\"p\""),
        "vo.atlas.map[0].pool",
        "\"p\"",
        "give either pool or account, not both",
    );
    // Unknown keys name the field and value, and list the keys.
    let (text, line) = map_entry(r#"{ dn = "/CN=x", acount = "a", pool = "p" }"#);
    one(
        &text,
        2,
        col(&line, "acount"),
        "vo.atlas.map[0].acount",
        "\"a\"",
        "unknown key; expected \"fqan\", \"dn\", \"pool\" or \"account\"",
    );
    let (text, line) = map_entry(r#"{ dn = "/CN=x", pool = "p", "the group" = 1 }"#);
    one(
        &text,
        2,
        col(&line, "\"the group\""),
        "vo.atlas.map[0].\"the group\"",
        "1",
        "unknown key",
    );
    // Every problem is reported, in order, with the entry's index.
    let text = "[vo.atlas]\nmap = [\n  { dn = \"/CN=ok\", pool = \"ok\" },\n  \
                { fqan = \"/cms\", account = \"a b\" },\n  { x = 1 },\n]\npids = 0\n";
    let got: Vec<(usize, String)> = errors(text)
        .iter()
        .map(|e| (e.line, e.field.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (4, "vo.atlas.map[1].fqan".to_string()),
            (4, "vo.atlas.map[1].account".to_string()),
            (5, "vo.atlas.map[2]".to_string()),
            (5, "vo.atlas.map[2]".to_string()),
            (5, "vo.atlas.map[2].x".to_string()),
            (7, "vo.atlas.pids".to_string()),
        ]
    );
    // Not a table, not a list; map is a VO key, not a rule key.
    let e = &errors(&vo_with("map = [ \"/atlas .atlas\" ]"))[0];
    assert_eq!((e.line, e.column), (2, 9));
    assert!(e.message.contains("a table like { fqan = "), "{e}");
    let e = &errors(&vo_with("map = { fqan = \"/atlas\", pool = \"atlas\" }"))[0];
    assert_eq!(e.line, 2);
    assert!(e.message.contains("expected a sequence"), "{e}");
    let e = &errors("[vo.atlas]\n[[vo.atlas.role]]\nfqan = \"/atlas/Role=x\"\nmap = []\n")[0];
    assert_eq!(e.line, 4);
    assert!(e.message.contains("unknown field `map`"), "{e}");
}

#[test]
fn group_map_errors() {
    let entry = |e: &str| {
        let line = format!("group_map = [ {e} ]");
        (vo_with(&line), line)
    };
    let (text, line) = entry(r#"{ fqan = "/cms/x", group = "g" }"#);
    one(
        &text,
        2,
        col(&line, "\"/cms/x\""),
        "vo.atlas.group_map[0].fqan",
        "\"/cms/x\"",
        "the FQAN belongs to VO \"cms\", not \"atlas\"",
    );
    let (text, line) = entry(r#"{ dn = "/CN=x", group = "g" }"#);
    one(
        &text,
        2,
        col(&line, "dn"),
        "vo.atlas.group_map[0].dn",
        "\"/CN=x\"",
        "group_map maps FQANs to groups, not DNs",
    );
    let (text, line) = entry(r#"{ fqan = "/atlas", group = "a:b" }"#);
    one(
        &text,
        2,
        col(&line, "\"a:b\""),
        "vo.atlas.group_map[0].group",
        "\"a:b\"",
        "character ':' is not allowed",
    );
    let (text, line) = entry(r#"{ fqan = "/atlas", group = "g", pool = "p" }"#);
    one(
        &text,
        2,
        col(&line, "pool"),
        "vo.atlas.group_map[0].pool",
        "\"p\"",
        "unknown key; expected \"fqan\" or \"group\"",
    );
    let (text, _) = entry(r#"{ fqan = "/atlas" }"#);
    one(&text, 2, 15, "vo.atlas.group_map[0]", "", "missing group");
    let (text, _) = entry(r#"{ group = "g" }"#);
    one(&text, 2, 15, "vo.atlas.group_map[0]", "", "missing fqan");
    let (text, line) = entry(r#"{ fqan = "/atlas/Role=x/*", group = "g" }"#);
    one(
        &text,
        2,
        col(&line, "\"/atlas/Role"),
        "vo.atlas.group_map[0].fqan",
        "\"/atlas/Role=x/*\"",
        "a wildcard pattern may only follow groups",
    );
    let e = &errors(&vo_with("group_map = [ 3 ]"))[0];
    assert!(
        e.message
            .contains("a table like { fqan = \"/vo/production\""),
        "{e}"
    );
}

#[test]
fn unreachable_map_rules_are_errors() {
    // A specific rule after a wildcard that covers it never applies.
    let text = "[vo.atlas]\nmap = [\n  { fqan = \"/atlas/*\", pool = \"atlas\" },\n  \
                { fqan = \"/atlas/higgs/Role=pilot\", pool = \"atlaspil\" },\n]\n";
    one(
        text,
        4,
        3,
        "vo.atlas.map[1]",
        "{ fqan = \"/atlas/higgs/Role=pilot\", pool = \"atlaspil\" }",
        "never applies: vo.atlas.map[0] (line 3) comes first and matches /atlas/*, which includes /atlas/higgs/Role=pilot; put the more specific rule first",
    );
    // The other order is the way to write it.
    let text = "[vo.atlas]\nmap = [\n  { fqan = \"/atlas/higgs/Role=pilot\", pool = \"atlaspil\" },\n  \
                { fqan = \"/atlas/higgs/*\", pool = \"higgs\" },\n  { fqan = \"/atlas/*\", pool = \"atlas\" },\n]\n";
    assert_eq!(parse(text).unwrap().mappings().len(), 3);
    // Duplicates, also when written differently.
    let text = "[vo.atlas]\nmap = [\n  { fqan = \"/atlas/x\", pool = \"a\" },\n  \
                { fqan = \"/atlas/x/Role=NULL\", account = \"b\" },\n]\n";
    one(
        text,
        4,
        3,
        "vo.atlas.map[1]",
        "{ fqan = \"/atlas/x/Role=NULL\", account = \"b\" }",
        "duplicate rule for /atlas/x: already mapped by vo.atlas.map[0] (line 3)",
    );
    // The same DN under two VOs, in two files: the second file's rule is named.
    let dir = tempfile::tempdir().unwrap();
    let a = write(
        dir.path(),
        "a.toml",
        "[vo.atlas]\nmap = [ { dn = \"/CN=x\", account = \"x\" } ]\n",
    );
    let b = write(
        dir.path(),
        "b.toml",
        "[vo.cms]\n\nmap = [ { dn = \"/CN=x\", account = \"y\" } ]\n",
    );
    let errs = PolicySet::load_dir(dir.path()).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{}", PolicyErrors(errs.clone()));
    assert_eq!(errs[0].file, b);
    assert_eq!(errs[0].line, 3);
    assert_eq!(
        errs[0].message,
        format!(
            "duplicate rule for /CN=x: already mapped by vo.atlas.map[0] ({}:2)",
            a.display()
        )
    );
    // group_map follows the same rule.
    let text = "[vo.atlas]\ngroup_map = [ { fqan = \"/atlas/*\", group = \"a\" }, \
                { fqan = \"/atlas/b\", group = \"b\" } ]\n";
    let e = &errors(text)[0];
    assert_eq!(e.field, "vo.atlas.group_map[1]");
    assert!(
        e.message
            .starts_with("never applies: vo.atlas.group_map[0]"),
        "{e}"
    );
}

#[test]
fn the_commented_map_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/atlas.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| *l == "# map = [").unwrap();
    let end = start
        + lines[start..]
            .iter()
            .position(|l| l.starts_with("# group_map = "))
            .unwrap();
    let mut example = String::from("[vo.atlas]\n");
    for line in &lines[start..=end] {
        example.push_str(line.strip_prefix("# ").unwrap());
        example.push('\n');
    }
    let set = parse(&example).unwrap_or_else(|e| panic!("{e}\n{example}"));
    let got: Vec<String> = set
        .mappings()
        .iter()
        .map(|r| format!("{} {}", r.pattern, r.target))
        .collect();
    assert_eq!(
        got,
        [
            "/atlas/Role=pilot .atlaspil",
            "/atlas/* .atlas",
            "/DC=org/DC=example/CN=Jane Doe jdoe"
        ]
    );
    assert_eq!(set.group_mappings().len(), 1);
}
