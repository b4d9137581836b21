//! Runtime values, formatting and JSON conversion.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::rc::Rc;

use crate::ast::FnDef;

pub type Map = BTreeMap<Rc<str>, Value>;
pub type Shared = Rc<RefCell<Value>>;

#[derive(Debug)]
pub struct FnPtr {
    pub name: Rc<str>,
    pub curry: Vec<Value>,
    /// Set for anonymous functions (closures): the definition and its captured cells.
    pub def: Option<Rc<FnDef>>,
    pub captures: Vec<Shared>,
}

#[derive(Debug)]
pub struct HostObj {
    pub name: Rc<str>,
    pub type_name: Rc<str>,
    pub properties: Vec<Rc<str>>,
    pub methods: Vec<Rc<str>>,
}

#[derive(Clone, Debug)]
pub enum Value {
    Unit,
    Bool(bool),
    Int(i64),
    Float(f64),
    Char(char),
    Str(Rc<str>),
    Array(Rc<Vec<Value>>),
    Map(Rc<Map>),
    Blob(Rc<Vec<u8>>),
    Range(i64, i64),
    RangeIncl(i64, i64),
    FnPtr(Rc<FnPtr>),
    Timestamp(f64),
    Host(Rc<HostObj>),
    /// Only ever stored in variable slots / closure captures, never seen by operations.
    Shared(Shared),
}

impl Default for Value {
    fn default() -> Self {
        Value::Unit
    }
}

pub fn str_val(s: &str) -> Value {
    Value::Str(Rc::from(s))
}

impl Value {
    pub fn type_name(&self) -> &str {
        match self {
            Value::Unit => "()",
            Value::Bool(_) => "bool",
            Value::Int(_) => "i64",
            Value::Float(_) => "f64",
            Value::Char(_) => "char",
            Value::Str(_) => "string",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
            Value::Blob(_) => "blob",
            Value::Range(..) => "range",
            Value::RangeIncl(..) => "range=",
            Value::FnPtr(p) if p.name.starts_with("range$") => "range",
            Value::FnPtr(_) => "Fn",
            Value::Timestamp(_) => "timestamp",
            Value::Host(h) => &h.type_name,
            Value::Shared(_) => "shared",
        }
    }

    pub fn flatten(self) -> Value {
        match self {
            Value::Shared(c) => c.borrow().clone(),
            v => v,
        }
    }

    pub fn is_unit(&self) -> bool {
        matches!(self, Value::Unit)
    }
}

/// Formatting with a size budget so that exponential structures cannot blow up memory.
pub struct Fmt {
    pub out: String,
    pub limit: usize,
    pub over: bool,
    pub depth: usize,
}

impl Fmt {
    pub fn new(limit: usize) -> Self {
        Fmt { out: String::new(), limit, over: false, depth: 0 }
    }
    fn push(&mut self, s: &str) -> bool {
        if self.over || self.out.len() + s.len() > self.limit {
            self.over = true;
            return false;
        }
        self.out.push_str(s);
        true
    }
}

/// `print`/`to_string` of a FLOAT: natural notation between 1e-13 and 1e13 (the bounds
/// are single-precision constants, as in Rhai), scientific outside, `.0` if integral.
pub fn fmt_float(f: f64) -> String {
    let abs = f.abs();
    let max = 10_000_000_000_000.0f32 as f64;
    let min = 0.000_000_000_000_1f32 as f64;
    if abs == 0.0 {
        "0.0".into()
    } else if abs > max || abs < min {
        format!("{:e}", f)
    } else {
        let mut s = format!("{}", f);
        if abs.fract() == 0.0 {
            s.push_str(".0");
        }
        s
    }
}

fn fmt_float_debug(f: f64) -> String {
    format!("{:?}", f)
}

fn debug_str(s: &str) -> String {
    format!("{:?}", s)
}

/// An element of an array or map: debug style, except that a char is shown bare
/// (`[1, "x", c]`), as Rhai shows it.
fn write_element(f: &mut Fmt, v: &Value) -> bool {
    match v {
        Value::Char(_) => write_value(f, v, false),
        _ => write_value(f, v, true),
    }
}

/// `print` style (to_string) when `debug` is false; `debug` style otherwise.
pub fn write_value(f: &mut Fmt, v: &Value, debug: bool) -> bool {
    if f.over {
        return false;
    }
    match v {
        Value::Unit => f.push(if debug { "()" } else { "" }),
        Value::Bool(b) => f.push(if *b { "true" } else { "false" }),
        Value::Int(i) => f.push(&i.to_string()),
        Value::Float(x) => {
            if debug {
                f.push(&fmt_float_debug(*x))
            } else {
                f.push(&fmt_float(*x))
            }
        }
        Value::Char(c) => {
            if debug {
                f.push(&format!("{:?}", c))
            } else {
                let mut b = [0u8; 4];
                f.push(c.encode_utf8(&mut b))
            }
        }
        Value::Str(s) => {
            if debug {
                f.push(&debug_str(s))
            } else {
                f.push(s)
            }
        }
        Value::Array(a) => {
            if f.depth > 1000 {
                f.over = true;
                return false;
            }
            f.depth += 1;
            f.push("[");
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    f.push(", ");
                }
                if !write_element(f, x) {
                    return false;
                }
            }
            f.depth -= 1;
            f.push("]")
        }
        Value::Map(m) => {
            if f.depth > 1000 {
                f.over = true;
                return false;
            }
            f.depth += 1;
            f.push("#{");
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    f.push(", ");
                }
                f.push(&debug_str(k));
                f.push(": ");
                if !write_element(f, x) {
                    return false;
                }
            }
            f.depth -= 1;
            f.push("}")
        }
        Value::Blob(b) => {
            let mut s = String::from("[");
            for (i, x) in b.iter().enumerate() {
                if s.len() > f.limit {
                    break;
                }
                if i > 0 && i % 8 == 0 {
                    s.push(' ');
                }
                let _ = write!(s, "{:02x}", x);
            }
            s.push(']');
            f.push(&s)
        }
        Value::Range(a, b) => f.push(&format!("{}..{}", a, b)),
        Value::RangeIncl(a, b) => f.push(&format!("{}..={}", a, b)),
        Value::FnPtr(p) => {
            if p.curry.is_empty() {
                f.push(&format!("Fn({})", p.name))
            } else {
                f.push(&format!("Fn({})", p.name));
                f.push("(");
                f.push("curried)")
            }
        }
        Value::Timestamp(_) => f.push("<timestamp>"),
        Value::Host(h) => f.push(&format!("<{} {}>", h.type_name, h.name)),
        Value::Shared(c) => {
            let inner = c.borrow().clone();
            write_value(f, &inner, debug)
        }
    }
}

// ---------------------------------------------------------------- JSON

#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64, Option<i64>),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(v) => v.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Json::Num(_, Some(i)) => Some(*i),
            Json::Num(f, None) if f.fract() == 0.0 => Some(*f as i64),
            _ => None,
        }
    }
}

pub fn parse_json(s: &str) -> Result<Json, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let v = parse_j(b, &mut i, 0)?;
    skip_jws(b, &mut i);
    if i != b.len() {
        return Err("trailing characters in JSON".into());
    }
    Ok(v)
}

fn skip_jws(b: &[u8], i: &mut usize) {
    while *i < b.len() && matches!(b[*i], b' ' | b'\t' | b'\n' | b'\r') {
        *i += 1;
    }
}

fn parse_j(b: &[u8], i: &mut usize, depth: usize) -> Result<Json, String> {
    if depth > 200 {
        return Err("JSON nested too deeply".into());
    }
    skip_jws(b, i);
    if *i >= b.len() {
        return Err("unexpected end of JSON".into());
    }
    match b[*i] {
        b'n' if b[*i..].starts_with(b"null") => {
            *i += 4;
            Ok(Json::Null)
        }
        b't' if b[*i..].starts_with(b"true") => {
            *i += 4;
            Ok(Json::Bool(true))
        }
        b'f' if b[*i..].starts_with(b"false") => {
            *i += 5;
            Ok(Json::Bool(false))
        }
        b'"' => parse_jstr(b, i).map(Json::Str),
        b'[' => {
            *i += 1;
            let mut v = Vec::new();
            skip_jws(b, i);
            if *i < b.len() && b[*i] == b']' {
                *i += 1;
                return Ok(Json::Arr(v));
            }
            loop {
                v.push(parse_j(b, i, depth + 1)?);
                skip_jws(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b']') => {
                        *i += 1;
                        return Ok(Json::Arr(v));
                    }
                    _ => return Err("bad JSON array".into()),
                }
            }
        }
        b'{' => {
            *i += 1;
            let mut v = Vec::new();
            skip_jws(b, i);
            if *i < b.len() && b[*i] == b'}' {
                *i += 1;
                return Ok(Json::Obj(v));
            }
            loop {
                skip_jws(b, i);
                let k = parse_jstr(b, i)?;
                skip_jws(b, i);
                if b.get(*i) != Some(&b':') {
                    return Err("bad JSON object".into());
                }
                *i += 1;
                let val = parse_j(b, i, depth + 1)?;
                v.push((k, val));
                skip_jws(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b'}') => {
                        *i += 1;
                        return Ok(Json::Obj(v));
                    }
                    _ => return Err("bad JSON object".into()),
                }
            }
        }
        _ => {
            let start = *i;
            while *i < b.len() && matches!(b[*i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                *i += 1;
            }
            let t = std::str::from_utf8(&b[start..*i]).map_err(|e| e.to_string())?;
            if t.is_empty() {
                return Err("bad JSON value".into());
            }
            let f: f64 = t.parse().map_err(|_| format!("bad JSON number {}", t))?;
            let int = if t.contains(|c| c == '.' || c == 'e' || c == 'E') {
                None
            } else {
                t.parse::<i64>().ok()
            };
            Ok(Json::Num(f, int))
        }
    }
}

fn parse_jstr(b: &[u8], i: &mut usize) -> Result<String, String> {
    if b.get(*i) != Some(&b'"') {
        return Err("expected JSON string".into());
    }
    *i += 1;
    let mut out: Vec<u8> = Vec::new();
    loop {
        let c = *b.get(*i).ok_or("unterminated JSON string")?;
        *i += 1;
        match c {
            b'"' => break,
            b'\\' => {
                let e = *b.get(*i).ok_or("bad escape")?;
                *i += 1;
                match e {
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'r' => out.push(b'\r'),
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'/' => out.push(b'/'),
                    b'\\' => out.push(b'\\'),
                    b'"' => out.push(b'"'),
                    b'u' => {
                        let hex = |i: &mut usize| -> Result<u32, String> {
                            let h = b.get(*i..*i + 4).ok_or("bad \\u escape")?;
                            *i += 4;
                            u32::from_str_radix(std::str::from_utf8(h).map_err(|e| e.to_string())?, 16)
                                .map_err(|e| e.to_string())
                        };
                        let mut cp = hex(i)?;
                        if (0xD800..0xDC00).contains(&cp) && b.get(*i) == Some(&b'\\') {
                            *i += 2;
                            let lo = hex(i)?;
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF);
                        }
                        let ch = char::from_u32(cp).unwrap_or('\u{FFFD}');
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    }
                    _ => return Err("bad escape".into()),
                }
            }
            _ => out.push(c),
        }
    }
    String::from_utf8(out).map_err(|e| e.to_string())
}

pub fn json_escape(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

pub fn write_json(out: &mut String, j: &Json) {
    match j {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Num(f, Some(i)) => {
            let _ = f;
            let _ = write!(out, "{}", i);
        }
        Json::Num(f, None) => {
            if f.is_finite() {
                let s = format!("{:?}", f);
                out.push_str(&s);
            } else {
                out.push_str("null");
            }
        }
        Json::Str(s) => json_escape(out, s),
        Json::Arr(v) => {
            out.push('[');
            for (i, x) in v.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, x);
            }
            out.push(']');
        }
        Json::Obj(v) => {
            out.push('{');
            for (i, (k, x)) in v.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_escape(out, k);
                out.push(':');
                write_json(out, x);
            }
            out.push('}');
        }
    }
}

pub fn json_to_value(j: &Json) -> Value {
    match j {
        Json::Null => Value::Unit,
        Json::Bool(b) => Value::Bool(*b),
        Json::Num(_, Some(i)) => Value::Int(*i),
        Json::Num(f, None) => {
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                Value::Int(*f as i64)
            } else {
                Value::Float(*f)
            }
        }
        Json::Str(s) => str_val(s),
        Json::Arr(v) => Value::Array(Rc::new(v.iter().map(json_to_value).collect())),
        Json::Obj(v) => {
            let mut m = Map::new();
            for (k, x) in v {
                m.insert(Rc::from(k.as_str()), json_to_value(x));
            }
            Value::Map(Rc::new(m))
        }
    }
}

/// Convert a value to JSON text with a size budget (returns false when over budget).
pub fn value_to_json(out: &mut String, v: &Value, limit: usize, depth: usize) -> bool {
    json_of(out, v, limit, depth, false)
}

/// The script's `to_json`: as `value_to_json`, but a function pointer becomes its name.
pub fn script_to_json(out: &mut String, v: &Value, limit: usize) -> bool {
    json_of(out, v, limit, 0, true)
}

fn json_of(out: &mut String, v: &Value, limit: usize, depth: usize, fn_names: bool) -> bool {
    if out.len() > limit || depth > 256 {
        return false;
    }
    match v {
        Value::Unit => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{}", i);
        }
        Value::Float(f) => write_json(out, &Json::Num(*f, None)),
        Value::Char(c) => json_escape(out, &c.to_string()),
        Value::Str(s) => json_escape(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if !json_of(out, x, limit, depth + 1, fn_names) {
                    return false;
                }
            }
            out.push(']');
        }
        Value::Map(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_escape(out, k);
                out.push(':');
                if !json_of(out, x, limit, depth + 1, fn_names) {
                    return false;
                }
            }
            out.push('}');
        }
        Value::Shared(c) => {
            let inner = c.borrow().clone();
            return json_of(out, &inner, limit, depth, fn_names);
        }
        Value::FnPtr(p) if fn_names && !p.name.starts_with("range$") => json_escape(out, &p.name),
        other => {
            let mut f = Fmt::new(limit);
            write_value(&mut f, other, false);
            json_escape(out, &f.out);
        }
    }
    out.len() <= limit
}
