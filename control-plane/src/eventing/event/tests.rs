use super::*;

fn hdrs(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_bytes(v.as_bytes()).expect("value"),
        );
    }
    h
}

fn binary_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ce-specversion", "1.0"),
        ("ce-id", "abc"),
        ("ce-source", "/my/source"),
        ("ce-type", "com.example.thing"),
    ]
}

#[test]
fn binary_mode_round_trips_byte_exact() {
    let mut h = binary_headers();
    h.push(("ce-subject", "caf%C3%A9%20%22quoted%22%25"));
    h.push(("ce-myext", "42"));
    h.push(("content-type", "application/octet-stream"));
    let body = Bytes::from_static(&[0, 159, 146, 150, 255, 0]);
    let ev = from_binary(&hdrs(&h), body.clone()).expect("valid");
    assert_eq!(ev.get_str("subject").as_deref(), Some("café \"quoted\"%"));
    assert_eq!(
        ev.get_str("datacontenttype").as_deref(),
        Some("application/octet-stream")
    );
    let decoded = Event::decode(&ev.encode()).expect("decode");
    assert_eq!(decoded, ev);
    let (out_h, out_b) = decoded.to_binary();
    assert_eq!(out_b, body);
    assert_eq!(
        out_h.get("ce-subject").map(HeaderValue::as_bytes),
        Some(&b"caf%C3%A9%20%22quoted%22%25"[..])
    );
    assert_eq!(
        out_h.get("content-type").map(HeaderValue::as_bytes),
        Some(&b"application/octet-stream"[..])
    );
    assert!(out_h.get("ce-datacontenttype").is_none());
    // And back again: identical event.
    assert_eq!(from_binary(&out_h, out_b).expect("again"), ev);
}

#[test]
fn structured_json_data_keeps_its_exact_text() {
    let body = br#"{"specversion":"1.0","id":"1","source":"urn:x","type":"t",
        "datacontenttype":"application/json","data":{"b": 1.50, "a":[1, 2]},"n":7,"flag":true}"#;
    let ev = from_structured(body).expect("valid");
    assert_eq!(ev.data.as_deref(), Some(&br#"{"b": 1.50, "a":[1, 2]}"#[..]));
    assert_eq!(ev.get("n"), Some(&AttrValue::Integer(7)));
    assert_eq!(ev.get("flag"), Some(&AttrValue::Boolean(true)));
    let (h, b) = ev.to_binary();
    assert_eq!(b.as_ref(), br#"{"b": 1.50, "a":[1, 2]}"#);
    assert_eq!(h.get("ce-n").map(HeaderValue::as_bytes), Some(&b"7"[..]));
    assert_eq!(Event::decode(&ev.encode()).expect("decode"), ev);
}

#[test]
fn structured_json_without_content_type_is_delivered_as_json() {
    let ev =
        from_structured(br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":[1]}"#)
            .expect("valid");
    assert!(ev.json_data);
    let (h, b) = ev.to_binary();
    assert_eq!(
        h.get("content-type").map(HeaderValue::as_bytes),
        Some(&b"application/json"[..])
    );
    assert_eq!(b.as_ref(), b"[1]");
}

#[test]
fn structured_text_data_and_base64() {
    let ev = from_structured(
        br#"{"specversion":"1.0","id":"1","source":"s","type":"t","datacontenttype":"text/plain","data":"hi \"there\""}"#,
    )
    .expect("valid");
    assert_eq!(ev.data.as_deref(), Some(&b"hi \"there\""[..]));
    assert!(!ev.json_data);
    let ev = from_structured(
        br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"AAEC/w=="}"#,
    )
    .expect("valid");
    assert_eq!(ev.data.as_deref(), Some(&[0u8, 1, 2, 255][..]));
    let json = ev.to_structured_json();
    assert_eq!(json["data_base64"], "AAEC/w==");
    let err = from_structured(
        br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":1,"data_base64":"AA=="}"#,
    )
    .expect_err("both");
    assert_eq!(err.attribute, "data");
}

#[test]
fn batch_mode() {
    let body = br#"[{"specversion":"1.0","id":"1","source":"s","type":"t"},
                    {"specversion":"1.0","id":"2","source":"s","type":"t","data":"x"}]"#;
    let h = hdrs(&[("content-type", "application/cloudevents-batch+json")]);
    let evs = from_http(&h, Bytes::from_static(body)).expect("valid");
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[1].id(), "2");
    let bad = br#"[{"specversion":"1.0","id":"1","source":"s","type":"t"},{"specversion":"1.0","source":"s","type":"t"}]"#;
    let err = from_http(&h, Bytes::from_static(bad)).expect_err("missing id");
    assert_eq!(err.attribute, "id");
    assert!(err.reason.contains("event 1"), "{}", err.reason);
}

#[test]
fn modes_are_told_apart() {
    assert_eq!(mode_of(&hdrs(&[])), Mode::Binary);
    assert_eq!(
        mode_of(&hdrs(&[(
            "content-type",
            "application/cloudevents+json; charset=utf-8"
        )])),
        Mode::Structured
    );
    assert_eq!(
        mode_of(&hdrs(&[("content-type", "application/json")])),
        Mode::Binary
    );
    let err = from_http(
        &hdrs(&[("content-type", "application/cloudevents+avro")]),
        Bytes::new(),
    )
    .expect_err("avro");
    assert_eq!(err.attribute, "datacontenttype");
}

fn binary_error(extra: &[(&str, &str)], drop: &str) -> EventError {
    let mut h: Vec<(&str, &str)> = binary_headers()
        .into_iter()
        .filter(|(k, _)| *k != drop)
        .collect();
    h.extend_from_slice(extra);
    from_binary(&hdrs(&h), Bytes::new()).expect_err("invalid")
}

#[test]
fn validation_names_the_attribute() {
    for required in ["ce-specversion", "ce-id", "ce-source", "ce-type"] {
        let e = binary_error(&[], required);
        assert_eq!(e.attribute, &required[3..]);
    }
    assert_eq!(
        binary_error(&[("ce-specversion", "0.3")], "ce-specversion").attribute,
        "specversion"
    );
    assert_eq!(binary_error(&[("ce-id", "")], "ce-id").attribute, "id");
    assert_eq!(
        binary_error(&[("ce-source", "a b")], "ce-source").attribute,
        "source"
    );
    assert_eq!(
        binary_error(&[("ce-source", "1x:y")], "ce-source").attribute,
        "source"
    );
    assert_eq!(
        binary_error(&[("ce-time", "2024-02-30T00:00:00Z")], "").attribute,
        "time"
    );
    assert_eq!(
        binary_error(&[("ce-dataschema", "/relative")], "").attribute,
        "dataschema"
    );
    assert_eq!(binary_error(&[("ce-subject", "")], "").attribute, "subject");
    assert_eq!(binary_error(&[("ce-my_ext", "x")], "").attribute, "my_ext");
    assert_eq!(
        binary_error(&[("content-type", "nonsense")], "").attribute,
        "datacontenttype"
    );
    assert_eq!(binary_error(&[("ce-x", "%ff")], "").attribute, "x");
    assert_eq!(
        binary_error(&[("ce-x", "1"), ("ce-x", "2")], "").attribute,
        "x"
    );
    // SHOULD-level rules do not reject: a 21-character name is valid.
    let mut h = binary_headers();
    h.push(("ce-abcdefghijklmnopqrstu", "v"));
    assert!(from_binary(&hdrs(&h), Bytes::new()).is_ok());
    // Structured: types.
    let e = from_structured(br#"{"specversion":"1.0","id":5,"source":"s","type":"t"}"#)
        .expect_err("id");
    assert_eq!(e.attribute, "id");
    let e = from_structured(br#"{"specversion":"1.0","id":"1","source":"s","type":"t","x":1.5}"#)
        .expect_err("float");
    assert_eq!(e.attribute, "x");
    let e = from_structured(br#"{"specversion":"1.0","id":"1","source":"s","type":"t","Up":"a"}"#)
        .expect_err("upper");
    assert_eq!(e.attribute, "Up");
}

#[test]
fn rfc3339() {
    for ok in [
        "2018-04-05T17:31:00Z",
        "2018-04-05t17:31:00.123456789z",
        "2020-02-29T23:59:60+01:00",
        "1985-04-12T23:20:50.52-08:00",
    ] {
        assert!(check_rfc3339(ok).is_ok(), "{ok}");
    }
    for bad in [
        "2018-04-05",
        "2018-04-05 17:31:00Z",
        "2019-02-29T00:00:00Z",
        "2018-13-01T00:00:00Z",
        "2018-04-05T24:00:00Z",
        "2018-04-05T17:31:00",
        "2018-04-05T17:31:00.Z",
        "2018-04-05T17:31:00+0100",
    ] {
        assert!(check_rfc3339(bad).is_err(), "{bad}");
    }
}

#[test]
fn uris_and_media_types() {
    assert!(check_uri_reference("https://example.com/a?b=c#d").is_ok());
    assert!(check_uri_reference("/relative/path%20x").is_ok());
    assert!(check_uri_reference("urn:uuid:6e8bc430").is_ok());
    assert!(check_uri_reference("bad%zz").is_err());
    assert!(check_uri_reference("a#b#c").is_err());
    assert!(check_uri("http://x/schema").is_ok());
    assert!(check_uri("x/schema").is_err());
    assert!(check_media_type("text/plain; charset=utf-8").is_ok());
    assert!(check_media_type("application/vnd.foo+json").is_ok());
    assert!(check_media_type("text/plain; charset=\"utf-8\"").is_ok());
    assert!(check_media_type("text").is_err());
    assert!(check_media_type("text/plain; charset").is_err());
}

#[test]
fn decode_rejects_garbage() {
    assert!(Event::decode(&Bytes::from_static(b"")).is_err());
    assert!(Event::decode(&Bytes::from_static(&[2, 0, 0, 0])).is_err());
    assert!(Event::decode(&Bytes::from_static(&[1, 0, 1, 0, 5, b'a'])).is_err());
}
