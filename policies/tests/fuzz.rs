//! Property tests: hostile input never panics, valid names, FQANs, rates
//! and port forwards round-trip.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use dms_policies::units::{format_rate, parse_rate, MAX_RATE_BITS};
use dms_policies::{
    validate_dn, validate_name, Fqan, MapPattern, MapTarget, PolicySet, PortForward, Proto,
};
use proptest::prelude::*;

/// A valid name: allowed first character, then allowed characters.
fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_][A-Za-z0-9._-]{0,63}"
}

/// A valid FQAN: short components so the 255-byte limit is not hit.
fn fqan() -> impl Strategy<Value = (String, Vec<String>, Option<String>, Option<String>)> {
    let short = "[A-Za-z0-9_][A-Za-z0-9._-]{0,15}";
    (
        short,
        prop::collection::vec(short, 0..5),
        prop::option::of(short),
        prop::option::of(short),
    )
        .prop_filter("NULL means absent", |(_, _, r, c)| {
            r.as_deref() != Some("NULL") && c.as_deref() != Some("NULL")
        })
}

/// A value that might appear in a policy file.
fn toml_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("\"4\"".to_owned()),
        Just("\"0.5\"".to_owned()),
        Just("\"250%\"".to_owned()),
        Just("\"8G\"".to_owned()),
        Just("\"512MiB\"".to_owned()),
        Just("\"10m\"".to_owned()),
        Just("\"0-1\"".to_owned()),
        Just("\"8:0\"".to_owned()),
        Just("\"/atlas/Role=prod\"".to_owned()),
        Just("\"/atlas/*\"".to_owned()),
        Just("\"/DC=org/CN=Jane Doe\"".to_owned()),
        Just("\".atlas\"".to_owned()),
        Just("\"user\"".to_owned()),
        Just("\"libvirt\"".to_owned()),
        Just("\"freeze\"".to_owned()),
        Just("\"nat\"".to_owned()),
        Just("\"none\"".to_owned()),
        Just("\"tbf\"".to_owned()),
        Just("\"200mbit\"".to_owned()),
        Just("\"1.5gbit\"".to_owned()),
        Just("\"200Mbps\"".to_owned()),
        Just("\"256k\"".to_owned()),
        Just("\"8080:80\"".to_owned()),
        Just("\"53:53/udp\"".to_owned()),
        Just("\"/scratch\"".to_owned()),
        Just("\"/tmp\"".to_owned()),
        Just("\"/a/../b\"".to_owned()),
        Just("false".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        "\"[ -~]{0,12}\"",
        Just("true".to_owned()),
        Just("[]".to_owned()),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((key(), inner), 0..4).prop_map(|kv| {
                let items: Vec<String> =
                    kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", items.join(", "))
            }),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "granularity",
        "backend",
        "template",
        "cpu",
        "memory",
        "pids",
        "io",
        "cpuset",
        "priority",
        "owner_may",
        "idle",
        "monitor",
        "oom_kill",
        "memory_limit",
        "cpu_throttled_ratio",
        "limit",
        "weight",
        "soft",
        "swap",
        "device",
        "read",
        "write",
        "read_iops",
        "write_iops",
        "cpus",
        "mems",
        "action",
        "after",
        "fqan",
        "network",
        "mode",
        "egress",
        "ingress",
        "burst",
        "shaper",
        "ports",
        "isolated",
        "paths",
        "private",
        "readonly",
        "userns",
        "pool",
        "map",
        "group_map",
        "dn",
        "account",
        "group",
    ])
    .prop_map(str::to_owned)
}

/// A TOML-ish document from a small grammar of headers and key/values.
fn toml_doc() -> impl Strategy<Value = String> {
    let header = prop::sample::select(vec![
        "[vo.atlas]",
        "[vo.cms]",
        "[[vo.atlas.group]]",
        "[[vo.atlas.role]]",
        "[vo.\"a b\"]",
        "[vo]",
        "[",
    ]);
    let line = prop_oneof![
        header.prop_map(str::to_owned),
        (key(), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        "[ -~]{0,20}",
    ];
    prop::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>()) {
        let _ = PolicySet::parse_str(Path::new("f.toml"), &s);
        let _ = s.parse::<Fqan>();
        let _ = validate_name("name", &s);
        let _ = validate_dn(&s);
    }

    #[test]
    fn fqan_like_strings_never_panic(s in "(/|Role=|Capability=|NULL|[a-z.]{1,3}|\0|\n|=){0,10}") {
        if let Ok(f) = s.parse::<Fqan>() {
            // Whatever parses re-parses to the same value from its canonical form.
            prop_assert_eq!(f.to_string().parse::<Fqan>().unwrap(), f);
        }
    }

    #[test]
    fn toml_ish_documents_never_panic(doc in toml_doc()) {
        match PolicySet::parse_str(Path::new("f.toml"), &doc) {
            Ok(set) => {
                for vo in set.vo_names() {
                    set.resolve(vo, None).unwrap();
                }
                // Accepted mapping rules hold only what the mapfile parser accepts.
                for r in set.mappings() {
                    match &r.pattern {
                        MapPattern::Dn(dn) => validate_dn(dn).unwrap(),
                        MapPattern::Fqan(f) => prop_assert_eq!(&f.vo, &r.vo),
                        MapPattern::FqanPrefix(p) => prop_assert_eq!(&p[0], &r.vo),
                    }
                    let (MapTarget::Pool(n) | MapTarget::Account(n)) = &r.target;
                    validate_name("name", n).unwrap();
                }
            }
            Err(errs) => {
                prop_assert!(!errs.0.is_empty());
                for e in &errs.0 {
                    prop_assert!(e.line >= 1 && e.column >= 1, "{}", e);
                    prop_assert!(!e.message.is_empty());
                }
            }
        }
    }

    #[test]
    fn valid_names_are_accepted(n in name()) {
        prop_assume!(n != "." && n != "..");
        prop_assert!(validate_name("name", &n).is_ok(), "{:?}", n);
    }

    #[test]
    fn names_with_a_bad_character_are_rejected(
        n in name(),
        at in any::<prop::sample::Index>(),
        bad in "[^A-Za-z0-9._-]",
    ) {
        let mut chars: Vec<char> = n.chars().collect();
        chars.insert(at.index(chars.len() + 1), bad.chars().next().unwrap());
        let s: String = chars.into_iter().collect();
        prop_assert!(validate_name("name", &s).is_err());
    }

    #[test]
    fn valid_fqans_round_trip((vo, groups, role, cap) in fqan()) {
        let mut text = format!("/{vo}");
        for g in &groups {
            text.push('/');
            text.push_str(g);
        }
        if let Some(r) = &role {
            text.push_str("/Role=");
            text.push_str(r);
        }
        if let Some(c) = &cap {
            text.push_str("/Capability=");
            text.push_str(c);
        }
        let parsed: Fqan = text.parse().unwrap();
        prop_assert_eq!(&parsed.vo, &vo);
        prop_assert_eq!(&parsed.groups, &groups);
        prop_assert_eq!(&parsed.role, &role);
        prop_assert_eq!(&parsed.capability, &cap);
        prop_assert_eq!(parsed.to_string(), text.clone());
        prop_assert_eq!(parsed.to_string().parse::<Fqan>().unwrap(), parsed);
    }

    #[test]
    fn rates_round_trip(bits in 1..=MAX_RATE_BITS) {
        let text = format_rate(bits);
        prop_assert_eq!(parse_rate(&text).unwrap(), bits, "{}", text);
        // Units are case-insensitive.
        prop_assert_eq!(parse_rate(&text.to_uppercase()).unwrap(), bits);
    }

    #[test]
    fn decimal_rates_are_exact(int in 0u64..100, frac in 0u64..1000, unit in 0usize..4) {
        let (name, per_unit) = [("bit", 1u64), ("kbit", 1_000), ("mbit", 1_000_000), ("gbit", 1_000_000_000)][unit];
        let text = format!("{int}.{frac:03}{name}");
        // int.frac units, in thousandths of a unit.
        let milli = int * 1000 + frac;
        let expected = (milli * per_unit % 1000 == 0).then_some(milli * per_unit / 1000);
        match (parse_rate(&text), expected) {
            (Ok(bits), Some(want)) if want > 0 => prop_assert_eq!(bits, want, "{}", text),
            (Err(_), Some(0) | None) => {}
            (got, want) => prop_assert!(false, "{}: got {:?}, expected {:?}", text, got, want),
        }
    }

    #[test]
    fn rate_like_strings_never_panic(s in "[0-9.]{0,25}[a-zA-Z/]{0,6}") {
        if let Ok(bits) = parse_rate(&s) {
            prop_assert!((1..=MAX_RATE_BITS).contains(&bits), "{}", s);
            prop_assert_eq!(parse_rate(&format_rate(bits)).unwrap(), bits);
        }
    }

    #[test]
    fn port_forwards_round_trip(host in 1u16.., domain in 1u16.., udp in any::<bool>()) {
        let proto = if udp { Proto::Udp } else { Proto::Tcp };
        let p = PortForward { host, domain, proto };
        prop_assert_eq!(p.to_string().parse::<PortForward>().unwrap(), p);
        if !udp {
            prop_assert_eq!(format!("{host}:{domain}").parse::<PortForward>().unwrap(), p);
        }
    }

    #[test]
    fn path_lists_never_panic(p in "(/|\\.|\\.\\.|[a-z]{1,3}|proc|tmp|dev|shm|\n|\u{0}){0,8}") {
        let doc = format!("[vo.atlas]\npaths = {{ private = [{p:?}] }}\n");
        match PolicySet::parse_str(Path::new("f.toml"), &doc) {
            Ok(set) => {
                let r = set.resolve("atlas", None).unwrap();
                let dir = &r.isolation.paths.private[0];
                prop_assert!(dir.is_absolute());
                prop_assert!(dir.components().all(|c| matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )));
                prop_assert_eq!(dir.to_str().unwrap(), p.as_str());
            }
            Err(errs) => prop_assert!(errs.0.iter().all(|e| e.line == 2)),
        }
    }
}
