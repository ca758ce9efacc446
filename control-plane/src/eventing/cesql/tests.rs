use super::*;

fn event() -> Event {
    let mut e = Event::new("id1", "/sources/a", "com.example.order.created");
    e.set("subject", "Francesco Guardiani");
    e.set("firstname", "Francesco");
    e.set("lastname", "Guardiani");
    e.set("sequence", "10");
    e.set("hop", AttrValue::Integer(3));
    e.set("ttl", AttrValue::Integer(5));
    e.set("flag", AttrValue::Boolean(true));
    e
}

fn eval_str(src: &str) -> Result<Value, String> {
    Expression::parse(src)
        .map_err(|e| format!("parse: {e}"))?
        .evaluate(&event())
}

#[test]
fn literals_and_case_insensitive_keywords() {
    assert_eq!(eval_str("TRUE"), Ok(Value::Bool(true)));
    assert_eq!(eval_str("tRuE"), Ok(Value::Bool(true)));
    assert_eq!(eval_str("'aBcD'"), Ok(Value::Str("aBcD".into())));
    assert_eq!(eval_str("\"it\\\"s\""), Ok(Value::Str("it\"s".into())));
    assert_eq!(eval_str("'it''s'"), Ok(Value::Str("it's".into())));
    assert_eq!(eval_str("-2147483648"), Ok(Value::Int(i32::MIN)));
    assert!(eval_str("2147483648").is_err());
}

#[test]
fn spec_examples() {
    let e = event();
    for (src, want) in [
        ("EXISTS subject", true),
        ("EXISTS nope", false),
        ("firstname = 'Francesco'", true),
        ("firstname = 'Francesco' OR subject = 'Francesco'", true),
        ("(firstname = 'Francesco' AND lastname = 'Guardiani') OR subject = 'Francesco Guardiani'", true),
        // Fail fast: the missing attribute is an error, so no match.
        ("(firstname = 'Francesco' AND nolastname = 'x') OR subject = 'Francesco Guardiani'", false),
        ("sequence = 10", true),
        ("hop < ttl", true),
        ("hop < ttl and hop < 1000", true),
        ("INT(hop) < INT(ttl) AND INT(hop) < 1000", true),
        ("type LIKE 'com.example.%'", true),
        ("type LIKE 'com.example._rder%'", true),
        ("type NOT LIKE '%.deleted'", true),
        ("'abc%' LIKE 'abc\\%'", true),
        ("'abcd' LIKE 'abc\\%'", false),
        ("'ab' LIKE '_b%'", true),
        ("'aBc' LIKE '_b%'", false),
        ("source IN ('/sources/a', '/sources/b')", true),
        ("hop NOT IN (1, 2)", true),
        ("hop IN ('3')", true),
        ("TRUE XOR FALSE", true),
        ("TRUE XOR TRUE", false),
        ("NOT flag", false),
        ("LENGTH(firstname) = 9", true),
        ("CONCAT(firstname, ' ', 'G') = 'Francesco G'", true),
        ("CONCAT_WS('-', 'a', 'b', 'c') = 'a-b-c'", true),
        ("LOWER('ABC') = 'abc' AND UPPER('abc') = 'ABC'", true),
        ("TRIM('  x  ') = 'x'", true),
        ("SUBSTRING('hello', 2) = 'ello'", true),
        ("SUBSTRING('hello', -3, 2) = 'll'", true),
        ("SUBSTRING('hello', 0) = ''", true),
        ("LEFT('hello', 2) = 'he' AND RIGHT('hello', 10) = 'hello'", true),
        ("ABS(-5) = 5", true),
        ("7 / 2 = 3 AND -7 / 2 = -3 AND -7 % 3 = -1", true),
        ("1 + 2 * 3 = 7", true),
        ("(1 + 2) * 3 = 9", true),
        ("TRUE = 'true' AND FALSE = 'false'", true),
        ("TRUE = 'TRUE' OR FALSE = 'FALSE'", false),
        ("hop + 1 > ttl - 2", true),
        ("lower(firstname) = 'francesco'", true),
    ] {
        let x = Expression::parse(src).unwrap_or_else(|err| panic!("{src}: {err}"));
        assert_eq!(x.matches(&e), want, "{src}: {:?}", x.evaluate(&e));
    }
}

#[test]
fn errors_fail_the_filter() {
    let e = event();
    for src in [
        "missing = ''",
        "true AND (missing = '')",
        "1 / 0 = 0",
        "firstname = 10",
        "2147483647 + 1 > 0",
        "SUBSTRING('abc', 10) = ''",
        "'abc'",
        "5",
    ] {
        let x = Expression::parse(src).unwrap_or_else(|err| panic!("{src}: {err}"));
        assert!(
            !x.matches(&e),
            "{src} should not pass: {:?}",
            x.evaluate(&e)
        );
    }
    // Short-circuit: the right side's error is never reached.
    assert!(Expression::parse("FALSE AND missing = 1")
        .expect("parse")
        .evaluate(&e)
        .is_ok());
    assert!(Expression::parse("TRUE OR missing = 1")
        .expect("parse")
        .matches(&e));
}

#[test]
fn parse_errors_have_positions() {
    for (src, pos) in [
        ("ABC(", 4),
        ("a = ", 4),
        ("a = 'x", 4),
        ("NOSUCH(1)", 0),
        ("LENGTH(1, 2)", 0),
        ("a LIKE b", 7),
        ("Subject = 'x'", 0),
        ("a = 1 b", 6),
        ("a ! b", 2),
        ("a IN ()", 6),
        ("EXISTS 'x'", 7),
        ("(a = 1", 6),
    ] {
        let err = Expression::parse(src).expect_err(src);
        assert_eq!(err.position, pos, "{src}: {err}");
    }
}

#[test]
fn like_never_backtracks_exponentially() {
    let s: Vec<char> = "a".repeat(5000).chars().collect();
    let p = like_pattern(&"%a".repeat(50).to_string());
    let mut p2 = p.clone();
    p2.push(LikeTok::Char('b'));
    assert!(like_match(&s, &p));
    assert!(!like_match(&s, &p2));
}
