//! The case file's format and the `[plugin]` section's mapping.

use std::{collections::BTreeMap, path::Path, time::Duration};

use super::{
    plugin_def,
    spec::{Action, CaseFile, IdentitySpec, OneOrMany, PluginSection, RequestSpec, request},
};
use crate::config::Isolation;

#[test]
fn the_template_cases_parse() {
    let file: CaseFile =
        toml::from_str(include_str!("../../../templates/plugin/common/cases.toml")).unwrap();
    assert_eq!(file.cases.len(), 5);
    assert_eq!(file.cases[3].expect.action, Action::RejectConfig);
}

#[test]
fn the_clock_is_fixed_per_file_or_per_case() {
    let text = "[plugin]\nnow-ms = 1000\n[[case]]\nname = \"a\"\nexpect = { action = \"continue\" }\n\
                [[case]]\nname = \"b\"\nnow_ms = 2000\nexpect = { action = \"continue\" }\n";
    let file: CaseFile = toml::from_str(text).unwrap();
    assert_eq!(file.plugin.now_ms, Some(1000));
    assert_eq!(file.cases[0].now_ms, None);
    assert_eq!(file.cases[1].now_ms, Some(2000));
}

#[test]
fn unknown_keys_in_a_case_are_refused() {
    let text = "[[case]]\nname = \"x\"\nexpect = { action = \"continue\", header = {} }\n";
    assert!(toml::from_str::<CaseFile>(text).is_err());
    let text = "[[case]]\nname = \"x\"\nexpect = { action = \"maybe\" }\n";
    assert!(toml::from_str::<CaseFile>(text).is_err());
}

#[test]
fn plugin_section_maps_to_grants_and_limits() {
    let section = PluginSection {
        isolation: Some("fresh".into()),
        capabilities: vec!["kv".into(), "http".into()],
        http_upstreams: vec!["users".into()],
        deadline: Some("250ms".into()),
        memory: Some("16MiB".into()),
        now_ms: None,
    };
    let def = plugin_def("p", Path::new("p.wasm"), &section, Path::new("c.toml")).unwrap();
    assert_eq!(def.isolation, Isolation::Fresh);
    assert!(def.grants.kv && !def.grants.log);
    assert_eq!(def.grants.http_upstreams, vec!["users".to_owned()]);
    assert_eq!(def.deadline, Duration::from_millis(250));
    assert_eq!(def.memory_limit_bytes, 16 << 20);
    let bad = PluginSection {
        capabilities: vec!["fs".into()],
        ..Default::default()
    };
    assert!(plugin_def("p", Path::new("p.wasm"), &bad, Path::new("c.toml")).is_err());
}

#[test]
fn a_malformed_request_is_a_case_failure_not_a_panic() {
    for spec in [
        RequestSpec {
            path: "no-slash".into(),
            ..Default::default()
        },
        RequestSpec {
            method: "G ET".into(),
            ..Default::default()
        },
        RequestSpec {
            client: "nowhere".into(),
            ..Default::default()
        },
        RequestSpec {
            headers: BTreeMap::from([("bad name".into(), OneOrMany::One("v".into()))]),
            ..Default::default()
        },
        RequestSpec {
            headers: BTreeMap::from([("x".into(), OneOrMany::One("a\nb".into()))]),
            ..Default::default()
        },
        RequestSpec {
            https: Some(false),
            client_identity: Some(identity("")),
            ..Default::default()
        },
        RequestSpec {
            client_identity: Some(identity("sha256 = \"AB\"")),
            ..Default::default()
        },
        RequestSpec {
            client_identity: Some(identity(&format!("sha256 = \"{}\"", "A".repeat(64)))),
            ..Default::default()
        },
    ] {
        assert!(request(&spec).is_err(), "{spec:?}");
    }
}

/// An identity for CN=x with `extra` (TOML key = value lines) on top.
fn identity(extra: &str) -> IdentitySpec {
    toml::from_str(&format!("subject = \"CN=x\"\n{extra}")).unwrap()
}

#[test]
fn a_client_identity_reaches_the_request_field_for_field_and_means_https() {
    let text = r#"
[[case]]
name = "mtls"
request = { client-identity = { subject = "CN=alice,O=Acme", dns-names = ["a.test", "b.test"],
            uris = ["spiffe://acme/alice"], not-after = 2208988800,
            sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" } }
expect = { action = "continue" }

[[case]]
name = "defaults"
request = { client-identity = { subject = "" } }
expect = { action = "continue" }

[[case]]
name = "plain"
expect = { action = "continue" }
"#;
    let file: CaseFile = toml::from_str(text).unwrap();
    let req = request(&file.cases[0].request).unwrap();
    let id = req.client_identity.as_deref().unwrap();
    assert_eq!(req.scheme, "https");
    assert_eq!(id.subject, "CN=alice,O=Acme");
    assert_eq!(id.dns_names, ["a.test", "b.test"]);
    assert_eq!(id.uris, ["spiffe://acme/alice"]);
    assert_eq!(&id.sha256[..16], "0123456789abcdef");
    assert_eq!(id.not_after, 2_208_988_800);

    let req = request(&file.cases[1].request).unwrap();
    let id = req.client_identity.as_deref().unwrap();
    assert_eq!((id.subject.as_str(), req.scheme), ("", "https"));
    assert!(id.dns_names.is_empty() && id.uris.is_empty());
    assert_eq!(id.sha256, "0".repeat(64));
    assert_eq!(id.not_after, 4_102_444_800);

    let req = request(&file.cases[2].request).unwrap();
    assert!(req.client_identity.is_none());
    assert_eq!(req.scheme, "http");

    // The record's names, not the Rust ones; nothing else in it.
    for bad in [
        "request = { client-identity = { subject = \"CN=x\", dns_names = [] } }",
        "request = { client-identity = { subject = \"CN=x\", issuer = \"CN=ca\" } }",
        "request = { client-identity = { dns-names = [\"a\"] } }",
    ] {
        let text = format!("[[case]]\nname = \"x\"\n{bad}\nexpect = {{ action = \"continue\" }}\n");
        assert!(toml::from_str::<CaseFile>(&text).is_err(), "{bad}");
    }
}
