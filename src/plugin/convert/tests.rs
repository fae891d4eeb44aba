//! Unit tests of the conversions and of the validation of guest output.

use std::net::SocketAddr;

use super::*;

#[test]
fn socket_addresses_print_as_display_does() {
    for addr in [
        "127.0.0.1:9",
        "0.0.0.0:0",
        "255.255.255.255:65535",
        "10.20.30.40:8080",
        "[::1]:443",
        "[2001:db8::7]:65535",
    ] {
        let a: SocketAddr = addr.parse().unwrap();
        assert_eq!(socket_addr_text(a), a.to_string());
    }
}

fn v() -> Validate<'static> {
    static NAME: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    Validate {
        plugin: NAME.get_or_init(|| Arc::from("p")),
        max_body: 1 << 20,
    }
}

fn header(name: &str, value: &[u8]) -> wit::Header {
    wit::Header {
        name: name.into(),
        value: value.to_vec(),
    }
}

#[test]
fn repeated_and_non_utf8_headers_survive_the_round_trip() {
    let mut map = HeaderMap::new();
    map.append("x-a", HeaderValue::from_static("1"));
    map.append("x-a", HeaderValue::from_static("2"));
    map.append("x-b", HeaderValue::from_bytes(b"caf\xe9").unwrap());
    let wit = headers_to_wit_owned(&map);
    assert_eq!(wit.len(), 3);
    let resp = v()
        .response(wit::Response {
            status: 200,
            headers: wit,
            body: None,
        })
        .unwrap();
    assert_eq!(resp.headers, map);
    assert_eq!(resp.body.as_deref(), Some(&b""[..]));
}

#[test]
fn invalid_guest_output_is_rejected_not_panicked_on() {
    let bad = |edits: wit::RequestEdits| v().action(wit::RequestAction::Continue(edits));
    let base = || wit::RequestEdits {
        headers: vec![],
        path: None,
        query: None,
        upstream: None,
        body: None,
        response_headers: vec![],
    };
    let cases = [
        wit::RequestEdits {
            headers: vec![wit::HeaderOp::Set(header("bad name", b"v"))],
            ..base()
        },
        wit::RequestEdits {
            headers: vec![wit::HeaderOp::Append(header("x", b"a\nb"))],
            ..base()
        },
        wit::RequestEdits {
            headers: vec![wit::HeaderOp::Remove(String::new())],
            ..base()
        },
        wit::RequestEdits {
            path: Some("no-slash".into()),
            ..base()
        },
        wit::RequestEdits {
            path: Some("/a?b".into()),
            ..base()
        },
        wit::RequestEdits {
            query: Some("a b".into()),
            ..base()
        },
        wit::RequestEdits {
            response_headers: vec![wit::HeaderOp::Set(header("x", b"a\rb"))],
            ..base()
        },
    ];
    for edits in cases {
        let debug = format!("{edits:?}");
        assert!(
            matches!(bad(edits), Err(PluginError::InvalidOutput { .. })),
            "{debug}"
        );
    }
    for status in [0, 99, 101, 600, 1000] {
        let r = v().response_edits(wit::ResponseEdits {
            status: Some(status),
            headers: vec![],
            body: None,
        });
        assert!(
            matches!(r, Err(PluginError::InvalidOutput { what: "status", .. })),
            "{status}"
        );
    }
}

fn arb_op() -> impl proptest::strategy::Strategy<Value = wit::HeaderOp> {
    use proptest::prelude::*;
    let name = prop_oneof![
        Just("x-a".to_owned()),
        Just("X-B".to_owned()),
        Just("bad name".to_owned()),
        Just(String::new()),
        "[a-z-]{1,12}",
    ];
    let value = prop::collection::vec(any::<u8>(), 0..40);
    (0..3u8, name, value).prop_map(|(kind, name, value)| match kind {
        0 => wit::HeaderOp::Set(wit::Header { name, value }),
        1 => wit::HeaderOp::Append(wit::Header { name, value }),
        _ => wit::HeaderOp::Remove(name),
    })
}

proptest::proptest! {
    /// Whatever edit list a guest returns, validation answers without
    /// panicking, and what it accepts is within the caps and applies to
    /// a message without reaching `HeaderMap`'s panicking limit.
    #[test]
    fn any_guest_edit_list_is_refused_or_applies_within_the_caps(
        ops in proptest::collection::vec(arb_op(), 0..1_200),
        repeat in 1usize..30,
    ) {
        let edits = wit::RequestEdits {
            headers: ops.clone(),
            path: None,
            query: None,
            upstream: None,
            body: None,
            response_headers: ops.clone(),
        };
        let response = wit::Response {
            status: 200,
            headers: ops
                .iter()
                .filter_map(|op| match op {
                    wit::HeaderOp::Set(h) | wit::HeaderOp::Append(h) => Some(h.clone()),
                    wit::HeaderOp::Remove(_) => None,
                })
                .collect(),
            body: None,
        };
        if let Ok(r) = v().action(wit::RequestAction::Respond(response)) {
            let RequestAction::Respond(r) = r else { unreachable!() };
            proptest::prop_assert!(r.headers.len() <= MAX_HEADER_ENTRIES);
        }
        match v().action(wit::RequestAction::Continue(edits)) {
            Ok(RequestAction::Continue(e)) => {
                proptest::prop_assert!(e.headers.len() <= MAX_HEADER_ENTRIES);
                // The same accepted list applied again and again (as by
                // many plugins) stops at the message cap, never panics.
                let mut map = HeaderMap::new();
                for _ in 0..repeat {
                    if HeaderOp::fit(&map, &e.headers).is_err() {
                        break;
                    }
                    for op in &e.headers {
                        op.apply(&mut map).unwrap();
                    }
                }
                proptest::prop_assert!(map.len() <= crate::pipeline::MAX_MESSAGE_HEADERS);
            }
            Ok(RequestAction::Respond(_)) => proptest::prop_assert!(false),
            Err(e) => {
                let invalid = matches!(e, PluginError::InvalidOutput { .. });
                proptest::prop_assert!(invalid);
            }
        }
    }
}

#[test]
fn output_past_the_caps_is_the_plugins_failure() {
    let many = |n: usize| {
        (0..n)
            .map(|i| wit::HeaderOp::Append(header(&format!("x-{i}"), b"v")))
            .collect::<Vec<_>>()
    };
    let edits = |headers| wit::RequestEdits {
        headers,
        path: None,
        query: None,
        upstream: None,
        body: None,
        response_headers: vec![],
    };
    assert!(
        v().action(wit::RequestAction::Continue(edits(many(
            MAX_HEADER_ENTRIES
        ))))
        .is_ok()
    );
    // 100,000 entries, the attack that panicked the host before.
    for n in [MAX_HEADER_ENTRIES + 1, 100_000] {
        assert!(matches!(
            v().action(wit::RequestAction::Continue(edits(many(n)))),
            Err(PluginError::InvalidOutput {
                what: "header edits",
                ..
            })
        ));
        let resp = wit::Response {
            status: 200,
            headers: (0..n).map(|i| header(&format!("x-{i}"), b"v")).collect(),
            body: None,
        };
        assert!(matches!(
            v().action(wit::RequestAction::Respond(resp)),
            Err(PluginError::InvalidOutput {
                what: "response headers",
                ..
            })
        ));
    }
    let big = vec![wit::HeaderOp::Set(header(
        "x-big",
        &vec![b'a'; MAX_HEADER_BYTES + 1],
    ))];
    assert!(
        v().action(wit::RequestAction::Continue(edits(big)))
            .is_err()
    );
    let body = wit::Response {
        status: 200,
        headers: vec![],
        body: Some(vec![0; (1 << 20) + 1]),
    };
    assert!(matches!(
        v().action(wit::RequestAction::Respond(body)),
        Err(PluginError::InvalidOutput { what: "body", .. })
    ));
    let long_path = wit::RequestEdits {
        path: Some(format!("/{}", "a".repeat(MAX_PATH_BYTES))),
        ..edits(vec![])
    };
    assert!(v().action(wit::RequestAction::Continue(long_path)).is_err());
}

#[test]
fn fixed_edits_are_validated_like_any_edits() {
    let needs = |request: Vec<wit::HeaderOp>, response: Vec<wit::HeaderOp>| wit::Needs {
        request_phase: false,
        request_body: false,
        response_phase: false,
        response_body: false,
        fixed_request_headers: request,
        fixed_response_headers: response,
    };
    let (n, fixed) = v()
        .configured(needs(
            vec![wit::HeaderOp::Set(header("x-a", b"1"))],
            vec![
                wit::HeaderOp::Remove("server".into()),
                wit::HeaderOp::Append(header("x-b", b"caf\xe9")),
            ],
        ))
        .unwrap();
    assert!(!n.request_phase && !n.response_phase);
    assert_eq!(
        fixed.request,
        [HeaderOp::Set(
            HeaderName::from_static("x-a"),
            HeaderValue::from_static("1")
        )]
    );
    assert_eq!(fixed.response.len(), 2);
    for bad in [
        needs(vec![wit::HeaderOp::Set(header("bad name", b"v"))], vec![]),
        needs(vec![], vec![wit::HeaderOp::Append(header("x", b"a\nb"))]),
    ] {
        assert!(matches!(
            v().configured(bad),
            Err(PluginError::InvalidOutput { .. })
        ));
    }
}
