//! YAML text → [`Bootstrap`], with the field path of any error.

use super::{Bootstrap, ConfigError, ConfigErrors};

/// Parses a YAML config. Syntax and type errors come back with the field
/// path (`listeners[0].address`); semantic checks are [`super::validate()`]'s.
pub fn parse_yaml(text: &str) -> Result<Bootstrap, ConfigErrors> {
    let de = serde_norway::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let reason = strip_path_prefix(&e.into_inner().to_string(), &path);
        ConfigErrors(vec![ConfigError::new(path, reason)])
    })
}

/// serde_norway starts its messages with its own idea of the path
/// (`listeners[0]: unknown field ...`), which is the path we report, or its
/// parent for an unknown field. Printed after ours it would say it twice.
fn strip_path_prefix(message: &str, path: &str) -> String {
    if let Some((head, rest)) = message.split_once(": ") {
        let is_our_path = !head.is_empty()
            && !head.contains(char::is_whitespace)
            && path
                .strip_prefix(head)
                .is_some_and(|tail| tail.is_empty() || tail.starts_with(['.', '[']));
        if is_our_path {
            return rest.to_string();
        }
    }
    message.to_string()
}

/// Reads, parses and validates a config file.
pub fn load_file(path: &std::path::Path) -> Result<Bootstrap, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            "",
            format!("cannot read {}: {e}", path.display()),
        )])
    })?;
    let boot = parse_yaml(&text)?;
    super::validate(&boot)?;
    Ok(boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one error of a config that must not parse.
    fn parse_err(yaml: &str) -> ConfigError {
        match parse_yaml(yaml) {
            Ok(b) => panic!("expected a parse error, got {b:?}"),
            Err(ConfigErrors(mut errs)) => {
                assert_eq!(errs.len(), 1, "{errs:?}");
                errs.remove(0)
            }
        }
    }

    const DEEP: &str = "\
routes:
- name: r
  virtual_hosts:
  - name: a
    domains: ['a.com']
  - name: b
    domains: ['*']
    routes:
    - match: {prefix: /a}
      direct_response: {status: 200}
    - match: {prefix: /b}
      direct_response: {status: 200}
    - match: {prefix: /c}
      direct_response: {status: 200}
    - match: {regex: [1]}
      direct_response: {status: 200}
";

    #[test]
    fn wrong_type_deep_in_the_tree_has_its_path() {
        let e = parse_err(DEEP);
        assert_eq!(e.path, "routes[0].virtual_hosts[1].routes[3].match.regex");
        assert!(e.reason.starts_with("invalid type: sequence"), "{e}");
        assert!(e.reason.contains("line 15"), "{e}");
    }

    #[test]
    fn unknown_field_is_named_in_the_path() {
        let e = parse_err("listeners:\n- name: a\n  address: 127.0.0.1:1\n  adress: x\n");
        assert_eq!(e.path, "listeners[0].adress");
        assert!(e.reason.starts_with("unknown field `adress`"), "{e}");
        // The message does not repeat the path.
        assert!(!e.reason.contains("listeners[0]"), "{e}");

        let e = parse_err("listener: []\n");
        assert_eq!(e.path, "listener");
        assert!(e.reason.contains("expected one of"), "{e}");
    }

    #[test]
    fn unknown_field_under_a_renamed_field() {
        let yaml = DEEP.replace("{regex: [1]}", "{prefix: /d, exact: x}");
        let e = parse_err(&yaml);
        assert_eq!(e.path, "routes[0].virtual_hosts[1].routes[3].match.exact");
    }

    #[test]
    fn missing_field_points_at_its_struct() {
        let e = parse_err("listeners:\n- name: a\n");
        assert_eq!(e.path, "listeners[0]");
        assert!(e.reason.starts_with("missing field `address`"), "{e}");
    }

    #[test]
    fn bad_values_have_their_path() {
        let e = parse_err("clusters:\n- name: c\n  type: bogus\n");
        assert_eq!(e.path, "clusters[0].type");
        assert!(e.reason.contains("unknown variant `bogus`"), "{e}");

        let e = parse_err("clusters:\n- name: c\n  endpoints: [{address: a, weight: -1}]\n");
        assert_eq!(e.path, "clusters[0].endpoints[0].weight");

        let e = parse_err("clusters:\n- name: c\n  connect_timeout: 5 fortnights\n");
        assert_eq!(e.path, "clusters[0].connect_timeout");
        assert!(e.reason.starts_with("invalid duration"), "{e}");
    }

    #[test]
    fn syntax_error_is_reported() {
        let e = parse_err("listeners: [\n");
        assert!(e.reason.contains("line 2"), "{e}");
    }

    #[test]
    fn empty_prefix_survives_parsing() {
        let b = parse_yaml(
            "routes:\n- name: r\n  virtual_hosts:\n  - name: v\n    domains: ['*']\n    \
             routes:\n    - match: {prefix: ''}\n      direct_response: {status: 200}\n",
        )
        .expect("parses");
        assert_eq!(
            b.routes[0].virtual_hosts[0].routes[0]
                .matcher
                .prefix
                .as_deref(),
            Some("")
        );
    }

    #[test]
    fn empty_file_is_an_empty_config() {
        assert_eq!(parse_yaml("").expect("parses"), Bootstrap::default());
    }

    #[test]
    fn path_prefix_is_stripped_only_when_it_is_ours() {
        assert_eq!(strip_path_prefix("a[0]: bad", "a[0].b"), "bad");
        assert_eq!(strip_path_prefix("a[0]: bad", "a[0]"), "bad");
        assert_eq!(strip_path_prefix("ab: bad", "abc"), "ab: bad");
        assert_eq!(
            strip_path_prefix("invalid type: string", "a"),
            "invalid type: string"
        );
    }

    #[test]
    fn load_file_reports_unreadable_file() {
        let errs =
            load_file(std::path::Path::new("/nonexistent/ferry.yaml")).expect_err("missing file");
        assert_eq!(errs.0.len(), 1);
        assert_eq!(errs.0[0].path, "");
        assert!(errs.0[0]
            .reason
            .starts_with("cannot read /nonexistent/ferry.yaml"));
    }
}
