//! Property tests: hostile input never panics, valid names and FQANs
//! round-trip.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use dms_policies::{validate_name, Fqan, PolicySet};
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
        Just("\"user\"".to_owned()),
        Just("\"libvirt\"".to_owned()),
        Just("\"freeze\"".to_owned()),
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
        "pool",
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
}
