//! `translate_rds_encoded` against `translate_rds` on the decoded message:
//! the same translation, with the unchanged virtual hosts taken over.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::Message;

use super::fixtures::*;
use crate::config;
use crate::xds::{translate_rds, translate_rds_encoded, RdsHashes};

fn mesh(first_catch_all: &str) -> RouteConfiguration {
    let mut rc = mesh_routes("mesh", 30, 5, first_catch_all);
    rc.request_headers_to_add = vec![HeaderValueOption {
        header: Some(HeaderValue {
            key: "x-mesh".into(),
            value: "1".into(),
            ..Default::default()
        }),
        ..Default::default()
    }];
    rc.response_headers_to_remove = vec!["server".into()];
    rc
}

fn full(rc: &RouteConfiguration) -> config::RouteConfig {
    match translate_rds(rc) {
        Ok(t) => t,
        Err(e) => panic!("translate: {e}"),
    }
}

fn encoded(
    rc: &RouteConfiguration,
    prev: Option<&(config::RouteConfig, RdsHashes)>,
) -> (config::RouteConfig, RdsHashes) {
    match translate_rds_encoded(&rc.encode_to_vec(), prev.map(|(c, h)| (c, h))) {
        Ok(t) => t,
        Err(e) => panic!("translate: {e}"),
    }
}

fn kept(a: &config::RouteConfig, b: &config::RouteConfig) -> Vec<bool> {
    a.virtual_hosts
        .iter()
        .zip(&b.virtual_hosts)
        .map(|(x, y)| Arc::ptr_eq(x, y))
        .collect()
}

#[test]
fn the_encoded_form_translates_as_the_decoded_one() {
    let rc = mesh("svc-0");
    let first = encoded(&rc, None);
    assert_eq!(first.0, full(&rc));
    assert_eq!(first.0.virtual_hosts.len(), 30);
}

#[test]
fn a_changed_virtual_host_is_the_only_one_translated_again() {
    let before = encoded(&mesh("svc-0"), None);
    let after_rc = mesh("svc-1");
    let after = encoded(&after_rc, Some(&before));
    assert_eq!(after.0, full(&after_rc));
    let mut expected = vec![true; 30];
    expected[0] = false;
    assert_eq!(kept(&before.0, &after.0), expected);

    // Unchanged bytes: everything is taken over.
    let again = encoded(&after_rc, Some(&after));
    assert!(kept(&after.0, &again.0).iter().all(|k| *k));
}

#[test]
fn a_change_of_the_configuration_wide_fields_translates_everything() {
    let before = encoded(&mesh("svc-0"), None);
    let mut rc = mesh("svc-0");
    rc.response_headers_to_remove.push("x-powered-by".into());
    let after = encoded(&rc, Some(&before));
    assert_eq!(after.0, full(&rc));
    assert!(kept(&before.0, &after.0).iter().all(|k| !k));
    assert!(after.0.virtual_hosts[7]
        .response_headers_to_remove
        .contains(&"x-powered-by".to_string()));
}

#[test]
fn rejections_read_as_those_of_the_decoded_form() {
    let before = encoded(&mesh("svc-0"), None);
    let mut rc = mesh("svc-0");
    rc.virtual_hosts[3].routes[1].r#match = None;
    let expected = translate_rds(&rc).err();
    assert!(expected.is_some());
    let got = translate_rds_encoded(&rc.encode_to_vec(), Some((&before.0, &before.1))).err();
    assert_eq!(got, expected);

    // Bytes that are not a RouteConfiguration at all.
    let garbage = translate_rds_encoded(&[0x12, 0xff, 0x01, 0x00], None).err();
    assert!(
        garbage
            .as_deref()
            .is_some_and(|e| e.contains("cannot decode")),
        "{garbage:?}"
    );
}
