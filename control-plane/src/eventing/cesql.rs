//! CloudEvents SQL (CESQL v1): a parser and an evaluator for trigger
//! filters.
//!
//! Supported: integer, string and boolean literals; attribute references;
//! `NOT`, unary `-`; `* / % + -`; `= != <> < <= > >=`; `AND OR XOR`
//! (short-circuit); `[NOT] LIKE` with `%`, `_` and `\` escapes; `EXISTS`;
//! `[NOT] IN (…)`; the functions `LENGTH CONCAT CONCAT_WS LOWER UPPER TRIM
//! LEFT RIGHT SUBSTRING ABS INT BOOL STRING IS_INT IS_BOOL`; the implicit
//! casts of spec §3.7.
//!
//! Precedence follows the spec's grammar (highest first): function calls,
//! unary `NOT`/`-`, `LIKE`/`IN`, `* / %`, `+ -`, comparisons, `AND OR XOR`;
//! equal precedence associates left to right.
//!
//! Errors: syntax errors, unknown functions and wrong arities are found
//! when the trigger is loaded, each with its byte position. At evaluation
//! the engine runs in the spec's "fail fast" mode — a missing attribute,
//! a failed cast, a division by zero or an overflow ends the evaluation —
//! and, as the spec requires for filters, an error or a non-boolean result
//! means the event does not pass.

use std::fmt;

use super::event::{AttrValue, Event};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the expression.
    pub position: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at position {}: {}", self.position, self.message)
    }
}

impl std::error::Error for ParseError {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Bool(bool),
    Int(i32),
    Str(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    Bool,
    Int,
    Str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BinOp {
    And,
    Or,
    Xor,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Func {
    Length,
    Concat,
    ConcatWs,
    Lower,
    Upper,
    Trim,
    Left,
    Right,
    Substring,
    Abs,
    Int,
    Bool,
    String,
    IsInt,
    IsBool,
}

impl Func {
    fn lookup(name: &str, arity: usize) -> Result<Func, String> {
        let (f, ok) = match name {
            "LENGTH" => (Func::Length, arity == 1),
            "CONCAT" => (Func::Concat, true),
            "CONCAT_WS" => (Func::ConcatWs, arity >= 1),
            "LOWER" => (Func::Lower, arity == 1),
            "UPPER" => (Func::Upper, arity == 1),
            "TRIM" => (Func::Trim, arity == 1),
            "LEFT" => (Func::Left, arity == 2),
            "RIGHT" => (Func::Right, arity == 2),
            "SUBSTRING" => (Func::Substring, arity == 2 || arity == 3),
            "ABS" => (Func::Abs, arity == 1),
            "INT" => (Func::Int, arity == 1),
            "BOOL" => (Func::Bool, arity == 1),
            "STRING" => (Func::String, arity == 1),
            "IS_INT" => (Func::IsInt, arity == 1),
            "IS_BOOL" => (Func::IsBool, arity == 1),
            _ => return Err(format!("unknown function {name}")),
        };
        if ok {
            Ok(f)
        } else {
            Err(format!("function {name} does not take {arity} argument(s)"))
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Expr {
    Lit(Value),
    Attr(String),
    Exists(String),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    Like {
        value: Box<Expr>,
        pattern: Vec<LikeTok>,
        negated: bool,
    },
    In {
        value: Box<Expr>,
        set: Vec<Expr>,
        negated: bool,
    },
    Call(Func, Vec<Expr>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum LikeTok {
    Char(char),
    Any,
    Many,
}

/// A compiled expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expression {
    source: String,
    root: Expr,
}

impl Expression {
    pub fn parse(src: &str) -> Result<Expression, ParseError> {
        let toks = lex(src)?;
        let mut p = Parser {
            toks,
            i: 0,
            len: src.len(),
        };
        let root = p.logic()?;
        if let Some(t) = p.toks.get(p.i) {
            return Err(ParseError {
                position: t.pos,
                message: format!("unexpected {}", t.kind.describe()),
            });
        }
        Ok(Expression {
            source: src.to_owned(),
            root,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates in fail-fast mode.
    pub fn evaluate(&self, ev: &Event) -> Result<Value, String> {
        eval(&self.root, ev)
    }

    /// The filter verdict: true only for a boolean `true` without errors.
    pub fn matches(&self, ev: &Event) -> bool {
        matches!(self.evaluate(ev), Ok(Value::Bool(true)))
    }
}

// ---- lexer ------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    LParen,
    RParen,
    Comma,
    Op(&'static str),
    Int(i64),
    Str(String),
    /// A word: keyword, attribute name or function name.
    Word(String),
}

impl Kind {
    fn describe(&self) -> String {
        match self {
            Kind::LParen => "'('".into(),
            Kind::RParen => "')'".into(),
            Kind::Comma => "','".into(),
            Kind::Op(o) => format!("'{o}'"),
            Kind::Int(i) => format!("integer {i}"),
            Kind::Str(s) => format!("string {s:?}"),
            Kind::Word(w) => format!("{w:?}"),
        }
    }
}

#[derive(Clone, Debug)]
struct Tok {
    kind: Kind,
    pos: usize,
}

fn lex(src: &str) -> Result<Vec<Tok>, ParseError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |pos, m: String| ParseError {
        position: pos,
        message: m,
    };
    while i < b.len() {
        let c = b[i];
        let pos = i;
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'(' => out.push(Tok {
                kind: Kind::LParen,
                pos,
            }),
            b')' => out.push(Tok {
                kind: Kind::RParen,
                pos,
            }),
            b',' => out.push(Tok {
                kind: Kind::Comma,
                pos,
            }),
            b'*' | b'/' | b'%' | b'+' | b'-' | b'=' => {
                let op = match c {
                    b'*' => "*",
                    b'/' => "/",
                    b'%' => "%",
                    b'+' => "+",
                    b'-' => "-",
                    _ => "=",
                };
                out.push(Tok {
                    kind: Kind::Op(op),
                    pos,
                });
            }
            b'!' => {
                if b.get(i + 1) == Some(&b'=') {
                    out.push(Tok {
                        kind: Kind::Op("!="),
                        pos,
                    });
                    i += 1;
                } else {
                    return Err(err(pos, "'!' must be followed by '='".into()));
                }
            }
            b'<' | b'>' => {
                let next = b.get(i + 1).copied();
                let op = match (c, next) {
                    (b'<', Some(b'=')) => "<=",
                    (b'<', Some(b'>')) => "<>",
                    (b'>', Some(b'=')) => ">=",
                    (b'<', _) => "<",
                    _ => ">",
                };
                i += op.len() - 1;
                out.push(Tok {
                    kind: Kind::Op(op),
                    pos,
                });
            }
            b'\'' | b'"' => {
                let q = c;
                let mut s = String::new();
                let mut j = i + 1;
                let mut closed = false;
                // Walk by chars so multi-byte UTF-8 survives.
                let rest = &src[j..];
                let mut it = rest.char_indices().peekable();
                while let Some((k, ch)) = it.next() {
                    if ch == '\\' {
                        match it.next() {
                            // An escaped quote is the quote; other escapes
                            // stay as written so LIKE still sees `\%`.
                            Some((_, e)) if e == char::from(q) => s.push(e),
                            Some((_, e)) => {
                                s.push('\\');
                                s.push(e);
                            }
                            None => break,
                        }
                    } else if ch == char::from(q) {
                        if it.peek().map(|x| x.1) == Some(char::from(q)) {
                            it.next();
                            s.push(ch);
                        } else {
                            j += k + 1;
                            closed = true;
                            break;
                        }
                    } else {
                        s.push(ch);
                    }
                }
                if !closed {
                    return Err(err(pos, "unterminated string literal".into()));
                }
                out.push(Tok {
                    kind: Kind::Str(s),
                    pos,
                });
                i = j;
                continue;
            }
            b'0'..=b'9' => {
                let mut j = i;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                if j < b.len() && (b[j].is_ascii_alphabetic() || b[j] == b'_') {
                    return Err(err(
                        pos,
                        "identifiers cannot start with a digit here".into(),
                    ));
                }
                let v: i64 = src[i..j]
                    .parse()
                    .map_err(|_| err(pos, "integer literal out of range".into()))?;
                if v > i64::from(i32::MAX) + 1 {
                    return Err(err(pos, "integer literal is not a 32-bit integer".into()));
                }
                out.push(Tok {
                    kind: Kind::Int(v),
                    pos,
                });
                i = j;
                continue;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                out.push(Tok {
                    kind: Kind::Word(src[i..j].to_owned()),
                    pos,
                });
                i = j;
                continue;
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(err(pos, format!("unexpected character {ch:?}")));
            }
        }
        i += 1;
    }
    Ok(out)
}

// ---- parser -----------------------------------------------------------------

struct Parser {
    toks: Vec<Tok>,
    i: usize,
    len: usize,
}

fn is_keyword(w: &str, kw: &str) -> bool {
    w.eq_ignore_ascii_case(kw)
}

const KEYWORDS: [&str; 9] = [
    "AND", "OR", "XOR", "NOT", "LIKE", "EXISTS", "IN", "TRUE", "FALSE",
];

impl Parser {
    fn peek(&self) -> Option<&Kind> {
        self.toks.get(self.i).map(|t| &t.kind)
    }

    fn pos(&self) -> usize {
        self.toks.get(self.i).map_or(self.len, |t| t.pos)
    }

    fn err<T>(&self, m: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            position: self.pos(),
            message: m.into(),
        })
    }

    fn peek_word(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Kind::Word(w)) if is_keyword(w, kw))
    }

    fn peek_op(&self, op: &str) -> bool {
        matches!(self.peek(), Some(Kind::Op(o)) if *o == op)
    }

    fn expect(&mut self, k: &Kind) -> Result<(), ParseError> {
        if self.peek() == Some(k) {
            self.i += 1;
            Ok(())
        } else {
            let found = self.peek().map_or("end of input".into(), Kind::describe);
            self.err(format!("expected {}, found {found}", k.describe()))
        }
    }

    fn logic(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.comparison()?;
        loop {
            let op = if self.peek_word("AND") {
                BinOp::And
            } else if self.peek_word("OR") {
                BinOp::Or
            } else if self.peek_word("XOR") {
                BinOp::Xor
            } else {
                return Ok(left);
            };
            self.i += 1;
            let right = self.comparison()?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn comparison(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.additive()?;
        loop {
            let op = match self.peek() {
                Some(Kind::Op("=")) => BinOp::Eq,
                Some(Kind::Op("!=" | "<>")) => BinOp::Ne,
                Some(Kind::Op("<")) => BinOp::Lt,
                Some(Kind::Op("<=")) => BinOp::Le,
                Some(Kind::Op(">")) => BinOp::Gt,
                Some(Kind::Op(">=")) => BinOp::Ge,
                _ => return Ok(left),
            };
            self.i += 1;
            let right = self.additive()?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn additive(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.multiplicative()?;
        loop {
            let op = if self.peek_op("+") {
                BinOp::Add
            } else if self.peek_op("-") {
                BinOp::Sub
            } else {
                return Ok(left);
            };
            self.i += 1;
            let right = self.multiplicative()?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.postfix()?;
        loop {
            let op = if self.peek_op("*") {
                BinOp::Mul
            } else if self.peek_op("/") {
                BinOp::Div
            } else if self.peek_op("%") {
                BinOp::Mod
            } else {
                return Ok(left);
            };
            self.i += 1;
            let right = self.postfix()?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
    }

    /// `x [NOT] LIKE 'p'` and `x [NOT] IN (…)`.
    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let mut value = self.unary()?;
        loop {
            let negated = self.peek_word("NOT")
                && matches!(self.toks.get(self.i + 1).map(|t| &t.kind),
                    Some(Kind::Word(w)) if is_keyword(w, "LIKE") || is_keyword(w, "IN"));
            let at = self.i + usize::from(negated);
            let Some(Kind::Word(w)) = self.toks.get(at).map(|t| &t.kind) else {
                return Ok(value);
            };
            if is_keyword(w, "LIKE") {
                self.i = at + 1;
                let Some(Kind::Str(p)) = self.peek().cloned() else {
                    return self.err("LIKE needs a string literal pattern");
                };
                self.i += 1;
                value = Expr::Like {
                    value: Box::new(value),
                    pattern: like_pattern(&p),
                    negated,
                };
            } else if is_keyword(w, "IN") {
                self.i = at + 1;
                self.expect(&Kind::LParen)?;
                let mut set = vec![self.logic()?];
                while self.peek() == Some(&Kind::Comma) {
                    self.i += 1;
                    set.push(self.logic()?);
                }
                self.expect(&Kind::RParen)?;
                value = Expr::In {
                    value: Box::new(value),
                    set,
                    negated,
                };
            } else {
                return Ok(value);
            }
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.peek_word("NOT") {
            self.i += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.peek_op("-") {
            self.i += 1;
            // Fold `-<integer>` so that -2147483648 is a valid literal.
            if let Some(Kind::Int(v)) = self.peek().cloned() {
                self.i += 1;
                return Ok(Expr::Lit(Value::Int(i32::try_from(-v).map_err(|_| {
                    ParseError {
                        position: self.toks[self.i - 1].pos,
                        message: "integer literal is not a 32-bit integer".into(),
                    }
                })?)));
            }
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        if self.peek_op("+") {
            if let Some(Kind::Int(_)) = self.toks.get(self.i + 1).map(|t| &t.kind) {
                self.i += 1;
            }
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let pos = self.pos();
        let Some(kind) = self.peek().cloned() else {
            return self.err("unexpected end of expression");
        };
        self.i += 1;
        match kind {
            Kind::LParen => {
                let e = self.logic()?;
                self.expect(&Kind::RParen)?;
                Ok(e)
            }
            Kind::Int(v) => i32::try_from(v)
                .map(|v| Expr::Lit(Value::Int(v)))
                .map_err(|_| ParseError {
                    position: pos,
                    message: "integer literal is not a 32-bit integer".into(),
                }),
            Kind::Str(s) => Ok(Expr::Lit(Value::Str(s))),
            Kind::Word(w) => {
                if self.peek() == Some(&Kind::LParen) {
                    return self.call(&w, pos);
                }
                if is_keyword(&w, "TRUE") {
                    return Ok(Expr::Lit(Value::Bool(true)));
                }
                if is_keyword(&w, "FALSE") {
                    return Ok(Expr::Lit(Value::Bool(false)));
                }
                if is_keyword(&w, "EXISTS") {
                    let ipos = self.pos();
                    let Some(Kind::Word(name)) = self.peek().cloned() else {
                        return self.err("EXISTS needs an attribute name");
                    };
                    self.i += 1;
                    check_identifier(&name, ipos)?;
                    return Ok(Expr::Exists(name));
                }
                check_identifier(&w, pos)?;
                Ok(Expr::Attr(w))
            }
            other => Err(ParseError {
                position: pos,
                message: format!("unexpected {}", other.describe()),
            }),
        }
    }

    fn call(&mut self, name: &str, pos: usize) -> Result<Expr, ParseError> {
        self.expect(&Kind::LParen)?;
        let mut args = Vec::new();
        if self.peek() != Some(&Kind::RParen) {
            args.push(self.logic()?);
            while self.peek() == Some(&Kind::Comma) {
                self.i += 1;
                args.push(self.logic()?);
            }
        }
        self.expect(&Kind::RParen)?;
        let f = Func::lookup(&name.to_ascii_uppercase(), args.len()).map_err(|m| ParseError {
            position: pos,
            message: m,
        })?;
        Ok(Expr::Call(f, args))
    }
}

fn check_identifier(w: &str, pos: usize) -> Result<(), ParseError> {
    if KEYWORDS.iter().any(|k| is_keyword(w, k)) {
        return Err(ParseError {
            position: pos,
            message: format!("unexpected keyword {w}"),
        });
    }
    if !w
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(ParseError {
            position: pos,
            message: format!(
                "attribute name {w:?} must be lowercase letters and digits (keywords and functions are case-insensitive, attributes are not)"
            ),
        });
    }
    Ok(())
}

fn like_pattern(p: &str) -> Vec<LikeTok> {
    let mut out = Vec::new();
    let mut it = p.chars();
    while let Some(c) = it.next() {
        match c {
            '\\' => match it.next() {
                Some(e) => out.push(LikeTok::Char(e)),
                None => out.push(LikeTok::Char('\\')),
            },
            '%' => out.push(LikeTok::Many),
            '_' => out.push(LikeTok::Any),
            c => out.push(LikeTok::Char(c)),
        }
    }
    out
}

/// Iterative wildcard match (greedy with one backtrack point), linear in
/// practice and never exponential.
fn like_match(s: &[char], p: &[LikeTok]) -> bool {
    let (mut si, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(LikeTok::Many) => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(LikeTok::Any) => {
                si += 1;
                pi += 1;
            }
            Some(LikeTok::Char(c)) if *c == s[si] => {
                si += 1;
                pi += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|t| *t == LikeTok::Many)
}

// ---- evaluation -------------------------------------------------------------

fn type_of(v: &Value) -> Ty {
    match v {
        Value::Bool(_) => Ty::Bool,
        Value::Int(_) => Ty::Int,
        Value::Str(_) => Ty::Str,
    }
}

fn cast(v: Value, to: Ty) -> Result<Value, String> {
    Ok(match (v, to) {
        (v @ Value::Bool(_), Ty::Bool)
        | (v @ Value::Int(_), Ty::Int)
        | (v @ Value::Str(_), Ty::Str) => v,
        (Value::Int(i), Ty::Str) => Value::Str(i.to_string()),
        (Value::Int(i), Ty::Bool) => Value::Bool(i != 0),
        (Value::Bool(b), Ty::Int) => Value::Int(i32::from(b)),
        (Value::Bool(b), Ty::Str) => Value::Str(if b { "true" } else { "false" }.into()),
        (Value::Str(s), Ty::Int) => Value::Int(
            s.parse::<i32>()
                .map_err(|_| format!("cast error: {s:?} is not an integer"))?,
        ),
        (Value::Str(s), Ty::Bool) => match s.to_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(format!("cast error: {s:?} is not a boolean")),
        },
    })
}

fn as_bool(v: Value) -> Result<bool, String> {
    match cast(v, Ty::Bool)? {
        Value::Bool(b) => Ok(b),
        _ => Err("cast error".into()),
    }
}

fn as_int(v: Value) -> Result<i32, String> {
    match cast(v, Ty::Int)? {
        Value::Int(i) => Ok(i),
        _ => Err("cast error".into()),
    }
}

fn as_str(v: Value) -> Result<String, String> {
    match cast(v, Ty::Str)? {
        Value::Str(s) => Ok(s),
        _ => Err("cast error".into()),
    }
}

fn attr_value(ev: &Event, name: &str) -> Option<Value> {
    ev.get(name).map(|v| match v {
        AttrValue::String(s) => Value::Str(s.clone()),
        AttrValue::Integer(i) => Value::Int(*i),
        AttrValue::Boolean(b) => Value::Bool(*b),
    })
}

fn math(r: Option<i32>, what: &str) -> Result<Value, String> {
    r.map(Value::Int)
        .ok_or_else(|| format!("math error: {what}"))
}

fn eval(e: &Expr, ev: &Event) -> Result<Value, String> {
    match e {
        Expr::Lit(v) => Ok(v.clone()),
        Expr::Attr(n) => attr_value(ev, n).ok_or_else(|| format!("missing attribute {n}")),
        Expr::Exists(n) => Ok(Value::Bool(ev.get(n).is_some())),
        Expr::Not(x) => Ok(Value::Bool(!as_bool(eval(x, ev)?)?)),
        Expr::Neg(x) => math(as_int(eval(x, ev)?)?.checked_neg(), "overflow"),
        Expr::Bin(op, l, r) => match op {
            BinOp::And => {
                if !as_bool(eval(l, ev)?)? {
                    return Ok(Value::Bool(false));
                }
                Ok(Value::Bool(as_bool(eval(r, ev)?)?))
            }
            BinOp::Or => {
                if as_bool(eval(l, ev)?)? {
                    return Ok(Value::Bool(true));
                }
                Ok(Value::Bool(as_bool(eval(r, ev)?)?))
            }
            BinOp::Xor => {
                let a = as_bool(eval(l, ev)?)?;
                Ok(Value::Bool(a ^ as_bool(eval(r, ev)?)?))
            }
            BinOp::Eq | BinOp::Ne => {
                let (a, b) = (eval(l, ev)?, eval(r, ev)?);
                // `=` is ambiguous: the right operand's type picks the
                // overload and the left is cast to it (spec §3.7).
                let a = cast(a, type_of(&b))?;
                let eq = a == b;
                Ok(Value::Bool(if *op == BinOp::Eq { eq } else { !eq }))
            }
            _ => {
                let a = as_int(eval(l, ev)?)?;
                let b = as_int(eval(r, ev)?)?;
                match op {
                    BinOp::Lt => Ok(Value::Bool(a < b)),
                    BinOp::Le => Ok(Value::Bool(a <= b)),
                    BinOp::Gt => Ok(Value::Bool(a > b)),
                    BinOp::Ge => Ok(Value::Bool(a >= b)),
                    BinOp::Add => math(a.checked_add(b), "overflow"),
                    BinOp::Sub => math(a.checked_sub(b), "overflow"),
                    BinOp::Mul => math(a.checked_mul(b), "overflow"),
                    // Rust's `/` truncates toward zero and `%` takes the
                    // dividend's sign, as the spec defines them.
                    BinOp::Div => math(a.checked_div(b), "division by zero"),
                    _ => math(a.checked_rem(b), "division by zero"),
                }
            }
        },
        Expr::Like {
            value,
            pattern,
            negated,
        } => {
            let s: Vec<char> = as_str(eval(value, ev)?)?.chars().collect();
            Ok(Value::Bool(like_match(&s, pattern) != *negated))
        }
        Expr::In {
            value,
            set,
            negated,
        } => {
            let v = eval(value, ev)?;
            let ty = type_of(&v);
            let mut found = false;
            for item in set {
                if cast(eval(item, ev)?, ty)? == v {
                    found = true;
                    break;
                }
            }
            Ok(Value::Bool(found != *negated))
        }
        Expr::Call(f, args) => call(*f, args, ev),
    }
}

fn call(f: Func, args: &[Expr], ev: &Event) -> Result<Value, String> {
    let arg = |i: usize| -> Result<Value, String> {
        args.get(i)
            .map(|a| eval(a, ev))
            .unwrap_or_else(|| Err("missing argument".into()))
    };
    let strs = |from: usize| -> Result<Vec<String>, String> {
        args[from.min(args.len())..]
            .iter()
            .map(|a| eval(a, ev).and_then(as_str))
            .collect()
    };
    let len_i32 = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    Ok(match f {
        Func::Length => Value::Int(len_i32(as_str(arg(0)?)?.chars().count())),
        Func::Concat => Value::Str(strs(0)?.concat()),
        Func::ConcatWs => {
            let sep = as_str(arg(0)?)?;
            Value::Str(strs(1)?.join(&sep))
        }
        Func::Lower => Value::Str(as_str(arg(0)?)?.to_lowercase()),
        Func::Upper => Value::Str(as_str(arg(0)?)?.to_uppercase()),
        Func::Trim => Value::Str(as_str(arg(0)?)?.trim().to_owned()),
        Func::Left | Func::Right => {
            let s: Vec<char> = as_str(arg(0)?)?.chars().collect();
            let n = as_int(arg(1)?)?;
            let n = usize::try_from(n).map_err(|_| "function error: negative length".to_owned())?;
            let n = n.min(s.len());
            let part = if f == Func::Left {
                &s[..n]
            } else {
                &s[s.len() - n..]
            };
            Value::Str(part.iter().collect())
        }
        Func::Substring => {
            let s: Vec<char> = as_str(arg(0)?)?.chars().collect();
            let pos = as_int(arg(1)?)?;
            let len = if args.len() == 3 {
                Some(as_int(arg(2)?)?)
            } else {
                None
            };
            let n = len_i32(s.len());
            if pos > n || pos < -n {
                return Err("function error: SUBSTRING position out of range".into());
            }
            if len.is_some_and(|l| l < 0) {
                return Err("function error: SUBSTRING length is negative".into());
            }
            if pos == 0 {
                return Ok(Value::Str(String::new()));
            }
            // 1-based from the start, or counted back from the end.
            let start = if pos > 0 {
                (pos - 1) as usize
            } else {
                (n + pos) as usize
            };
            let end = match len {
                Some(l) => start.saturating_add(l as usize).min(s.len()),
                None => s.len(),
            };
            Value::Str(s[start..end].iter().collect())
        }
        Func::Abs => math(as_int(arg(0)?)?.checked_abs(), "ABS overflow")?,
        Func::Int => Value::Int(as_int(arg(0)?)?),
        Func::Bool => Value::Bool(as_bool(arg(0)?)?),
        Func::String => Value::Str(as_str(arg(0)?)?),
        Func::IsInt => Value::Bool(cast(arg(0)?, Ty::Int).is_ok()),
        Func::IsBool => Value::Bool(cast(arg(0)?, Ty::Bool).is_ok()),
    })
}

#[cfg(test)]
mod tests;
