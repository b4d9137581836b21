//! Built-in function packages (math, strings, arrays, maps, blobs, misc).

use std::rc::Rc;

use crate::interp::*;
use crate::lexer::Pos;
use crate::value::*;

fn s(v: &str) -> Value {
    Value::Str(Rc::from(v))
}

fn f_of(v: &Value) -> Option<f64> {
    match v {
        Value::Float(f) => Some(*f),
        Value::Int(i) => Some(*i as f64),
        _ => None,
    }
}

fn to_fn(v: &Value) -> Option<Rc<FnPtr>> {
    match v {
        Value::FnPtr(p) => Some(p.clone()),
        _ => None,
    }
}

fn truthy(v: Value, pos: Pos) -> R<bool> {
    match v {
        Value::Bool(b) => Ok(b),
        other => rt_err(format!("Data type incorrect: {} (expecting bool)", other.type_name()), pos),
    }
}

fn is_ident(n: &str) -> bool {
    let mut c = n.chars();
    match c.next() {
        Some(f) if f == '_' || f.is_alphabetic() => c.all(|x| x == '_' || x.is_alphanumeric()),
        _ => false,
    }
}

fn range_bounds(start: i64, len: i64, n: usize) -> (usize, usize) {
    let n = n as i64;
    let start = if start < 0 { (n + start).max(0) } else { start.min(n) };
    let len = len.max(0).min(n - start);
    (start as usize, (start + len) as usize)
}

/// Characters named by `(start)` (to the end), `(start, len)` or `(range)`.
fn char_span(span: &[Value], n: usize) -> Option<(usize, usize)> {
    Some(match span {
        [Value::Int(st)] => range_bounds(*st, n as i64, n),
        [Value::Int(st), Value::Int(len)] => range_bounds(*st, *len, n),
        [r] => return range_span(r, n),
        _ => return None,
    })
}

fn span_start_len(r: &Value, n: usize) -> (i64, i64) {
    let (a, b) = range_span(r, n).unwrap_or((0, 0));
    (a as i64, (b - a) as i64)
}

/// Positions named by a range: from the beginning if the start is ≤ 0, to the end if past it.
fn range_span(r: &Value, n: usize) -> Option<(usize, usize)> {
    let (a, end) = match *r {
        Value::Range(a, b) => (a.max(0), b),
        Value::RangeIncl(a, b) => (a.max(0), b.saturating_add(1)),
        _ => return None,
    };
    Some(range_bounds(a, end.saturating_sub(a), n))
}

/// The bits named by `(start)`, `(start, len)` or `(range)`: a negative start counts
/// from the MSB, a length < 1 selects nothing, one past the MSB stops there.
fn bit_span(span: &[Value], pos: Pos) -> R<Option<(u32, u32)>> {
    let (start, len) = match span {
        [] => (0, 64),
        [r @ (Value::Range(..) | Value::RangeIncl(..))] => return bit_range(r, pos).map(Some),
        [Value::Int(st)] => (*st, 64),
        [Value::Int(st), Value::Int(len)] => (*st, *len),
        _ => return Ok(None),
    };
    let k = match norm_index(start, 64) {
        Some(k) => k as i64,
        None => return bit_bounds(start, pos),
    };
    let width = len.max(0).min(64 - k);
    Ok(Some((k as u32, width as u32)))
}

fn float_to_int(f: f64, pos: Pos) -> R<Value> {
    if f.is_nan() || f.trunc() > i64::MAX as f64 || f.trunc() < i64::MIN as f64 {
        return rt_err(format!("Integer overflow: to_int({})", fmt_float(f)), pos);
    }
    Ok(Value::Int(f.trunc() as i64))
}

fn cmp_values(it: &mut Interp, a: &Value, b: &Value, pos: Pos) -> R<std::cmp::Ordering> {
    use std::cmp::Ordering;
    let r = match (a, b) {
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Str(x), Value::Str(y)) => x.cmp(y),
        (Value::Char(x), Value::Char(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Unit, Value::Unit) => Ordering::Equal,
        _ => match (f_of(a), f_of(b)) {
            (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
            _ => {
                let _ = it;
                return rt_err(
                    format!("Cannot compare {} with {} when sorting", a.type_name(), b.type_name()),
                    pos,
                );
            }
        },
    };
    Ok(r)
}

/// Predicate over array element `x` at index `i`.
fn elem_bool(it: &mut Interp, f: &Rc<FnPtr>, x: &Value, i: usize, pos: Pos) -> R<bool> {
    let (v, _) = it.call_elem(f, vec![x.clone(), Value::Int(i as i64)], 0, pos)?;
    truthy(v, pos)
}

fn elem_value(it: &mut Interp, f: &Rc<FnPtr>, x: &Value, i: usize, pos: Pos) -> R<Value> {
    it.call_elem(f, vec![x.clone(), Value::Int(i as i64)], 0, pos).map(|(v, _)| v)
}

fn cb_bool(it: &mut Interp, f: &Rc<FnPtr>, args: Vec<Value>, pos: Pos) -> R<bool> {
    let v = it.call_cb(f, args, pos)?;
    truthy(v, pos)
}

/// Merge sort with a fallible comparator.
fn sort_by(it: &mut Interp, v: Vec<Value>, cmp: &mut dyn FnMut(&mut Interp, &Value, &Value) -> R<bool>) -> R<Vec<Value>> {
    if v.len() <= 1 {
        return Ok(v);
    }
    let mid = v.len() / 2;
    let mut v = v;
    let right = v.split_off(mid);
    let left = sort_by(it, v, cmp)?;
    let right = sort_by(it, right, cmp)?;
    let mut out = Vec::with_capacity(left.len() + right.len());
    let mut l = left.into_iter().peekable();
    let mut r = right.into_iter().peekable();
    while l.peek().is_some() && r.peek().is_some() {
        // take right only if right < left (stable)
        if cmp(it, r.peek().unwrap(), l.peek().unwrap())? {
            out.push(r.next().unwrap());
        } else {
            out.push(l.next().unwrap());
        }
    }
    out.extend(l);
    out.extend(r);
    Ok(out)
}

pub fn call_builtin(it: &mut Interp, name: &str, args: &mut Vec<Value>, pos: Pos) -> R<Option<Value>> {
    let n = args.len();
    // ---------------------------------------------------------------- generic
    match (name, n) {
        ("print", 1) | ("debug", 1) => {
            let debug = name == "debug";
            let text = match &args[0] {
                Value::Str(x) if !debug => x.to_string(),
                v => it.to_str(v, debug, pos)?,
            };
            it.output(if debug { 1 } else { 0 }, &text, pos)?;
            return Ok(Some(Value::Unit));
        }
        ("print", 0) => {
            it.output(0, "", pos)?;
            return Ok(Some(Value::Unit));
        }
        ("type_of", 1) => return Ok(Some(s(args[0].type_name()))),
        ("to_string", 1) => {
            return Ok(Some(match &args[0] {
                Value::Str(_) => args[0].clone(),
                v => s(&it.to_str(v, false, pos)?),
            }))
        }
        ("to_debug", 1) => return Ok(Some(s(&it.to_str(&args[0], true, pos)?))),
        ("timestamp", 0) => return Ok(Some(Value::Timestamp(it.host.clock_ms()))),
        ("Fn", 1) => {
            return match &args[0] {
                Value::Str(x) if is_ident(x) => Ok(Some(Value::FnPtr(Rc::new(FnPtr {
                    name: x.clone(),
                    curry: Vec::new(),
                    def: None,
                    captures: Vec::new(),
                })))),
                Value::Str(x) => rt_err(format!("Invalid function name: '{}'", x), pos),
                _ => Ok(None),
            }
        }
        ("call", _) if n >= 1 => {
            if let Some(fp) = to_fn(&args[0]) {
                let rest: Vec<Value> = args.drain(1..).collect();
                return it.call_fnptr(&fp, rest, None, pos).map(|(v, _)| Some(v));
            }
        }
        ("curry", _) if n >= 1 => {
            if let Some(fp) = to_fn(&args[0]) {
                let mut curry = fp.curry.clone();
                curry.extend(args.drain(1..));
                return Ok(Some(Value::FnPtr(Rc::new(FnPtr {
                    name: fp.name.clone(),
                    curry,
                    def: fp.def.clone(),
                    captures: fp.captures.clone(),
                }))));
            }
        }
        ("name", 1) => {
            if let Value::FnPtr(fp) = &args[0] {
                return Ok(Some(Value::Str(fp.name.clone())));
            }
        }
        ("is_anonymous", 1) => {
            if let Value::FnPtr(fp) = &args[0] {
                return Ok(Some(Value::Bool(fp.def.is_some())));
            }
        }
        ("is_def_fn", 2) => {
            if let (Value::Str(f), Value::Int(a)) = (&args[0], &args[1]) {
                return Ok(Some(Value::Bool(*a >= 0 && it.find_fn(f, *a as usize).is_some())));
            }
        }
        ("is_shared", 1) => return Ok(Some(Value::Bool(false))),
        ("range", 3) if args.iter().any(|a| matches!(a, Value::Float(_))) && args.iter().all(|a| f_of(a).is_some()) => {
            let (a, b, st) = (f_of(&args[0]).unwrap(), f_of(&args[1]).unwrap(), f_of(&args[2]).unwrap());
            if st == 0.0 || !st.is_finite() {
                return rt_err("Step value cannot be zero", pos);
            }
            return Ok(Some(Value::FnPtr(Rc::new(FnPtr {
                name: Rc::from("range$fstep"),
                curry: vec![Value::Float(a), Value::Float(b), Value::Float(st)],
                def: None,
                captures: Vec::new(),
            }))));
        }
        ("range", 2) | ("range", 3) => {
            let step = if n == 3 { args[2].clone() } else { Value::Int(1) };
            if let (Value::Int(a), Value::Int(b), Value::Int(st)) = (&args[0], &args[1], &step) {
                if *st == 0 {
                    return rt_err("Step value cannot be zero", pos);
                }
                if n == 2 {
                    return Ok(Some(Value::Range(*a, *b)));
                }
                return Ok(Some(Value::FnPtr(Rc::new(FnPtr {
                    name: Rc::from("range$step"),
                    curry: vec![Value::Int(*a), Value::Int(*b), Value::Int(*st)],
                    def: None,
                    captures: Vec::new(),
                }))));
            }
        }
        ("PI", 0) => return Ok(Some(Value::Float(std::f64::consts::PI))),
        ("E", 0) => return Ok(Some(Value::Float(std::f64::consts::E))),
        ("parse_int", 1) | ("parse_int", 2) => {
            if let Value::Str(x) = &args[0] {
                let radix = match args.get(1) {
                    Some(Value::Int(r)) if (2..=36).contains(r) => *r as u32,
                    Some(Value::Int(r)) => return rt_err(format!("Invalid radix: '{}'", r), pos),
                    Some(_) => return Ok(None),
                    None => 10,
                };
                return match i64::from_str_radix(x.trim(), radix) {
                    Ok(v) => Ok(Some(Value::Int(v))),
                    Err(e) => rt_err(format!("Error parsing integer number '{}': {}", x, e), pos),
                };
            }
        }
        ("parse_float", 1) => {
            if let Value::Str(x) = &args[0] {
                return match x.trim().parse::<f64>() {
                    Ok(v) => Ok(Some(Value::Float(v))),
                    Err(e) => rt_err(format!("Error parsing floating-point number '{}': {}", x, e), pos),
                };
            }
        }
        ("parse_json", 1) => {
            if let Value::Str(x) = &args[0] {
                return match parse_json(x) {
                    Ok(j) => Ok(Some(json_to_value(&j))),
                    Err(e) => rt_err(format!("Error parsing JSON: {}", e), pos),
                };
            }
        }
        ("to_json", 1) if matches!(args[0], Value::Map(_)) => {
            let mut out = String::new();
            if !script_to_json(&mut out, &args[0], it.limits.max_string_size) {
                return limit_err("max_string_size", format!("Length of string too large (limit max_string_size = {})", it.limits.max_string_size), pos);
            }
            return Ok(Some(s(&out)));
        }
        ("blob", 0) => return Ok(Some(Value::Blob(Rc::new(Vec::new())))),
        ("blob", 1) | ("blob", 2) => {
            if let Value::Int(len) = args[0] {
                let fill = match args.get(1) {
                    Some(Value::Int(v)) => *v as u8,
                    Some(_) => return Ok(None),
                    None => 0,
                };
                if len as u64 > it.limits.max_array_size as u64 && len > 0 {
                    it.check_len("array", usize::MAX, pos)?;
                }
                let len = len.max(0) as usize;
                it.check_len("array", len, pos)?;
                return Ok(Some(Value::Blob(Rc::new(vec![fill; len]))));
            }
        }
        ("elapsed", 1) => {
            if let Value::Timestamp(t) = args[0] {
                let now = it.host.clock_ms();
                return Ok(Some(Value::Float((now - t) / 1000.0)));
            }
        }
        _ => {}
    }
    if n == 0 {
        return Ok(None);
    }
    // dispatch on the type of the first argument
    let first = std::mem::take(&mut args[0]);
    let r = match first {
        Value::Int(_) | Value::Float(_) => {
            args[0] = first;
            number_fn(it, name, args, pos)
        }
        Value::Str(x) => {
            let mut sv = x.to_string();
            let orig_len = sv.len();
            let r = string_fn(it, name, &mut sv, &args[1..], pos);
            let changed = matches!(r, Ok(Some(_))) && string_mutates(name);
            args[0] = if changed && (sv.len() != orig_len || *sv != *x) { Value::Str(Rc::from(sv.as_str())) } else { Value::Str(x) };
            r
        }
        Value::Char(c) => {
            args[0] = Value::Char(c);
            char_fn(name, c, &args[1..])
        }
        Value::Array(mut a) => {
            let rest: Vec<Value> = args.drain(1..).collect();
            let r = array_fn(it, name, &mut a, rest, pos);
            args[0] = Value::Array(a);
            r
        }
        Value::Map(mut m) => {
            let rest: Vec<Value> = args.drain(1..).collect();
            let r = map_fn(it, name, &mut m, rest, pos);
            args[0] = Value::Map(m);
            r
        }
        Value::Blob(mut b) => {
            let r = blob_fn(it, name, &mut b, &args[1..], pos);
            args[0] = Value::Blob(b);
            r
        }
        Value::Range(a, b) | Value::RangeIncl(a, b) => {
            let incl = matches!(first, Value::RangeIncl(..));
            args[0] = first;
            let end_ex = if incl { b.saturating_add(1) } else { b };
            match (name, &args[1..]) {
                ("start", []) => Ok(Some(Value::Int(a))),
                ("end", []) => Ok(Some(Value::Int(b))),
                ("is_inclusive", []) => Ok(Some(Value::Bool(incl))),
                ("is_exclusive", []) => Ok(Some(Value::Bool(!incl))),
                ("is_empty", []) => Ok(Some(Value::Bool(end_ex <= a))),
                ("len", []) => Ok(Some(Value::Int((end_ex - a).max(0)))),
                ("contains", [Value::Int(x)]) => Ok(Some(Value::Bool(*x >= a && *x < end_ex))),
                _ => Ok(None),
            }
        }
        other => {
            args[0] = other;
            Ok(None)
        }
    };
    r
}

fn string_mutates(name: &str) -> bool {
    matches!(
        name,
        "trim" | "replace" | "pad" | "truncate" | "crop" | "clear" | "make_upper" | "make_lower" | "remove"
            | "append" | "push" | "trim_start" | "trim_end" | "set" | "pop"
    )
}

fn number_fn(it: &mut Interp, name: &str, args: &mut Vec<Value>, pos: Pos) -> R<Option<Value>> {
    let a0 = args[0].clone();
    if let Value::Int(x) = a0 {
        match (name, &args[1..]) {
            ("abs", []) => {
                return match x.checked_abs() {
                    Some(v) => Ok(Some(Value::Int(v))),
                    None => rt_err(format!("Negation overflow: abs({})", x), pos),
                }
            }
            ("sign", []) => return Ok(Some(Value::Int(x.signum()))),
            ("is_odd", []) => return Ok(Some(Value::Bool(x % 2 != 0))),
            ("is_even", []) => return Ok(Some(Value::Bool(x % 2 == 0))),
            ("is_zero", []) => return Ok(Some(Value::Bool(x == 0))),
            ("to_int", []) => return Ok(Some(Value::Int(x))),
            ("to_float", []) => return Ok(Some(Value::Float(x as f64))),
            ("to_hex", []) => return Ok(Some(s(&format!("{:x}", x)))),
            ("to_octal", []) => return Ok(Some(s(&format!("{:o}", x)))),
            ("to_binary", []) => return Ok(Some(s(&format!("{:b}", x)))),
            ("min", [Value::Int(y)]) => return Ok(Some(Value::Int(x.min(*y)))),
            ("max", [Value::Int(y)]) => return Ok(Some(Value::Int(x.max(*y)))),
            ("get_bit", [Value::Int(b)]) => {
                return it.get_index(&Value::Int(x), &Value::Int(*b), pos).map(Some);
            }
            ("set_bit", [Value::Int(b), Value::Bool(v)]) => {
                let k = match norm_index(*b, 64) {
                    Some(k) => k,
                    None => return bit_bounds(*b, pos),
                };
                args[0] = Value::Int(if *v { x | (1 << k) } else { x & !(1 << k) });
                return Ok(Some(Value::Unit));
            }
            ("get_bits", span @ ([_] | [_, _])) => {
                if let Some((start, width)) = bit_span(span, pos)? {
                    return Ok(Some(Value::Int(get_bits(x, start, width))));
                }
            }
            ("set_bits", [span @ .., Value::Int(v)]) if matches!(span.len(), 1 | 2) => {
                if let Some((start, width)) = bit_span(span, pos)? {
                    args[0] = Value::Int(set_bits(x, start, width, *v));
                    return Ok(Some(Value::Unit));
                }
            }
            ("bits", span) if span.len() <= 2 => {
                if let Some((start, width)) = bit_span(span, pos)? {
                    let v = (start..start + width).map(|k| Value::Bool(x & (1 << k) != 0)).collect();
                    return Ok(Some(Value::Array(Rc::new(v))));
                }
            }
            _ => {}
        }
    }
    let xf = f_of(&a0).unwrap();
    let rest: Vec<Option<f64>> = args[1..].iter().map(f_of).collect();
    let r = match (name, rest.as_slice()) {
        ("abs", []) => Value::Float(xf.abs()),
        ("sign", []) => Value::Int(if xf > 0.0 { 1 } else if xf < 0.0 { -1 } else { 0 }),
        ("is_zero", []) => Value::Bool(xf == 0.0),
        ("sqrt", []) => Value::Float(xf.sqrt()),
        ("exp", []) => Value::Float(xf.exp()),
        ("ln", []) => Value::Float(xf.ln()),
        ("log", []) => Value::Float(xf.log10()),
        ("log", [Some(b)]) => Value::Float(xf.log(*b)),
        ("floor", []) => Value::Float(xf.floor()),
        ("ceiling", []) => Value::Float(xf.ceil()),
        ("round", []) => Value::Float(xf.round()),
        ("round", [Some(d)]) => {
            let p = 10f64.powi(*d as i32);
            Value::Float((xf * p).round() / p)
        }
        ("int", []) => Value::Float(xf.trunc()),
        ("fraction", []) => Value::Float(xf.fract()),
        ("sin", []) => Value::Float(xf.sin()),
        ("cos", []) => Value::Float(xf.cos()),
        ("tan", []) => Value::Float(xf.tan()),
        ("asin", []) => Value::Float(xf.asin()),
        ("acos", []) => Value::Float(xf.acos()),
        ("atan", []) => Value::Float(xf.atan()),
        ("atan", [Some(y)]) => Value::Float(xf.atan2(*y)),
        ("sinh", []) => Value::Float(xf.sinh()),
        ("cosh", []) => Value::Float(xf.cosh()),
        ("tanh", []) => Value::Float(xf.tanh()),
        ("asinh", []) => Value::Float(xf.asinh()),
        ("acosh", []) => Value::Float(xf.acosh()),
        ("atanh", []) => Value::Float(xf.atanh()),
        ("hypot", [Some(y)]) => Value::Float(xf.hypot(*y)),
        ("to_degrees", []) => Value::Float(xf.to_degrees()),
        ("to_radians", []) => Value::Float(xf.to_radians()),
        ("is_nan", []) => Value::Bool(xf.is_nan()),
        ("is_finite", []) => Value::Bool(xf.is_finite()),
        ("is_infinite", []) => Value::Bool(xf.is_infinite()),
        ("to_float", []) => Value::Float(xf),
        ("to_int", []) => return float_to_int(xf, pos).map(Some),
        ("min", [Some(y)]) => Value::Float(xf.min(*y)),
        ("max", [Some(y)]) => Value::Float(xf.max(*y)),
        _ => return Ok(None),
    };
    Ok(Some(r))
}

fn char_fn(name: &str, c: char, rest: &[Value]) -> R<Option<Value>> {
    Ok(Some(match (name, rest) {
        ("to_upper", []) => Value::Char(c.to_uppercase().next().unwrap_or(c)),
        ("to_lower", []) => Value::Char(c.to_lowercase().next().unwrap_or(c)),
        ("to_int", []) => Value::Int(c as i64),
        ("is_alphabetic", []) => Value::Bool(c.is_alphabetic()),
        ("is_numeric", []) | ("is_digit", []) => Value::Bool(c.is_numeric()),
        ("is_whitespace", []) => Value::Bool(c.is_whitespace()),
        ("is_uppercase", []) => Value::Bool(c.is_uppercase()),
        ("is_lowercase", []) => Value::Bool(c.is_lowercase()),
        ("to_string", []) => s(&c.to_string()),
        _ => return Ok(None),
    }))
}

fn char_index_to_byte(sv: &str, ci: usize) -> usize {
    sv.char_indices().nth(ci).map(|(b, _)| b).unwrap_or(sv.len())
}

fn string_fn(it: &mut Interp, name: &str, sv: &mut String, rest: &[Value], pos: Pos) -> R<Option<Value>> {
    let nchars = || sv.chars().count();
    let r = match (name, rest) {
        ("len", []) => Value::Int(nchars() as i64),
        ("bytes", []) => Value::Int(sv.len() as i64),
        ("is_empty", []) => Value::Bool(sv.is_empty()),
        ("contains", [Value::Str(x)]) => Value::Bool(sv.contains(&**x)),
        ("contains", [Value::Char(c)]) => Value::Bool(sv.contains(*c)),
        ("starts_with", [Value::Str(x)]) => Value::Bool(sv.starts_with(&**x)),
        ("ends_with", [Value::Str(x)]) => Value::Bool(sv.ends_with(&**x)),
        ("index_of", [x]) | ("index_of", [x, _]) => {
            let start = match rest.get(1) {
                Some(Value::Int(i)) => {
                    let n = nchars() as i64;
                    let i = if *i < 0 { (n + i).max(0) } else { *i };
                    if i >= n {
                        return Ok(Some(Value::Int(-1)));
                    }
                    i as usize
                }
                Some(_) => return Ok(None),
                None => 0,
            };
            let bstart = char_index_to_byte(sv, start);
            let found = match x {
                Value::Str(p) => sv[bstart..].find(&**p),
                Value::Char(c) => sv[bstart..].find(*c),
                _ => return Ok(None),
            };
            match found {
                Some(b) => Value::Int((start + sv[bstart..bstart + b].chars().count()) as i64),
                None => Value::Int(-1),
            }
        }
        ("sub_string", span) if char_span(span, nchars()).is_some() => {
            let (a, b) = char_span(span, nchars()).unwrap();
            s(&sv.chars().skip(a).take(b - a).collect::<String>())
        }
        ("get", [Value::Int(i)]) => {
            let n = nchars();
            match norm_index(*i, n) {
                Some(k) => Value::Char(sv.chars().nth(k).unwrap()),
                None => Value::Unit,
            }
        }
        ("split", []) => Value::Array(Rc::new(sv.split_whitespace().map(s).collect())),
        ("split", [Value::Str(sep)]) => Value::Array(Rc::new(sv.split(&**sep).map(s).collect())),
        ("split", [Value::Char(sep)]) => Value::Array(Rc::new(sv.split(*sep).map(s).collect())),
        ("split", [Value::Str(sep), Value::Int(k)]) => {
            Value::Array(Rc::new(sv.splitn((*k).max(1) as usize, &**sep).map(s).collect()))
        }
        ("split", [Value::Char(sep), Value::Int(k)]) => {
            Value::Array(Rc::new(sv.splitn((*k).max(1) as usize, *sep).map(s).collect()))
        }
        ("split", [Value::Int(i)]) => {
            let n = nchars();
            let k = if *i < 0 { (n as i64 + i).max(0) as usize } else { (*i as usize).min(n) };
            let b = char_index_to_byte(sv, k);
            Value::Array(Rc::new(vec![s(&sv[..b]), s(&sv[b..])]))
        }
        ("split_rev", [Value::Str(sep)]) => Value::Array(Rc::new(sv.rsplit(&**sep).map(s).collect())),
        ("split_rev", [Value::Char(sep)]) => Value::Array(Rc::new(sv.rsplit(*sep).map(s).collect())),
        ("split_rev", [Value::Str(sep), Value::Int(k)]) => {
            Value::Array(Rc::new(sv.rsplitn((*k).max(1) as usize, &**sep).map(s).collect()))
        }
        ("split_rev", [Value::Char(sep), Value::Int(k)]) => {
            Value::Array(Rc::new(sv.rsplitn((*k).max(1) as usize, *sep).map(s).collect()))
        }
        ("trim", []) => {
            *sv = sv.trim().to_string();
            Value::Unit
        }
        ("trim_start", []) => {
            *sv = sv.trim_start().to_string();
            Value::Unit
        }
        ("trim_end", []) => {
            *sv = sv.trim_end().to_string();
            Value::Unit
        }
        ("to_upper", []) => s(&sv.to_uppercase()),
        ("to_lower", []) => s(&sv.to_lowercase()),
        ("make_upper", []) => {
            *sv = sv.to_uppercase();
            Value::Unit
        }
        ("make_lower", []) => {
            *sv = sv.to_lowercase();
            Value::Unit
        }
        ("replace", [a, b]) => {
            let from = match a {
                Value::Str(x) => x.to_string(),
                Value::Char(c) => c.to_string(),
                _ => return Ok(None),
            };
            let to = match b {
                Value::Str(x) => x.to_string(),
                Value::Char(c) => c.to_string(),
                _ => return Ok(None),
            };
            if !from.is_empty() {
                let count = sv.matches(from.as_str()).count();
                let new_len = sv.len() + count * to.len();
                it.check_len("string", new_len.saturating_sub(count * from.len()), pos)?;
                *sv = sv.replace(from.as_str(), &to);
            }
            Value::Unit
        }
        ("remove", [Value::Str(x)]) => {
            *sv = sv.replace(&**x, "");
            Value::Unit
        }
        ("remove", [Value::Char(c)]) => {
            *sv = sv.replace(*c, "");
            Value::Unit
        }
        ("pad", [Value::Int(len), p]) => {
            let pad = match p {
                Value::Str(x) => x.to_string(),
                Value::Char(c) => c.to_string(),
                _ => return Ok(None),
            };
            let cur = nchars() as i64;
            if *len > cur && !pad.is_empty() {
                if *len as u64 > it.limits.max_string_size as u64 {
                    it.check_len("string", usize::MAX, pos)?;
                }
                it.check_len("string", sv.len() + (*len - cur) as usize * pad.len().max(1) / pad.chars().count().max(1), pos)?;
                let mut out = sv.clone();
                let mut count = cur;
                'outer: while count < *len {
                    for c in pad.chars() {
                        if count >= *len {
                            break 'outer;
                        }
                        out.push(c);
                        count += 1;
                    }
                }
                *sv = out;
            }
            Value::Unit
        }
        ("truncate", [Value::Int(len)]) => {
            let k = (*len).max(0) as usize;
            let b = char_index_to_byte(sv, k);
            sv.truncate(b);
            Value::Unit
        }
        ("crop", span) if char_span(span, nchars()).is_some() => {
            let (a, b) = char_span(span, nchars()).unwrap();
            *sv = sv.chars().skip(a).take(b - a).collect();
            Value::Unit
        }
        ("clear", []) => {
            sv.clear();
            Value::Unit
        }
        ("append", [x]) | ("push", [x]) => {
            let t = match x {
                Value::Str(t) => t.to_string(),
                v => it.to_str(v, false, pos)?,
            };
            it.check_len("string", sv.len() + t.len(), pos)?;
            sv.push_str(&t);
            Value::Unit
        }
        ("set", [Value::Int(i), Value::Char(c)]) => {
            let mut chars: Vec<char> = sv.chars().collect();
            if let Some(k) = norm_index(*i, chars.len()) {
                chars[k] = *c;
                *sv = chars.into_iter().collect();
            }
            Value::Unit
        }
        ("pop", []) => match sv.pop() {
            Some(c) => Value::Char(c),
            None => Value::Unit,
        },
        ("pop", [Value::Int(n)]) => {
            let total = nchars();
            let k = if *n <= 0 { 0 } else { (*n as u64).min(total as u64) as usize };
            let b = char_index_to_byte(sv, total - k);
            let tail = sv[b..].to_string();
            sv.truncate(b);
            s(&tail)
        }
        ("chars", span) if char_span(span, nchars()).is_some() || span.is_empty() => {
            let (a, b) = char_span(span, nchars()).unwrap_or((0, nchars()));
            Value::Array(Rc::new(sv.chars().skip(a).take(b - a).map(Value::Char).collect()))
        }
        ("to_chars", []) => Value::Array(Rc::new(sv.chars().map(Value::Char).collect())),
        ("to_blob", []) => Value::Blob(Rc::new(sv.as_bytes().to_vec())),
        ("reverse", []) => s(&sv.chars().rev().collect::<String>()),
        ("to_int", []) => match sv.trim().parse::<i64>() {
            Ok(v) => Value::Int(v),
            Err(e) => return rt_err(format!("Error parsing integer number '{}': {}", sv, e), pos),
        },
        ("to_float", []) => match sv.trim().parse::<f64>() {
            Ok(v) => Value::Float(v),
            Err(e) => return rt_err(format!("Error parsing floating-point number '{}': {}", sv, e), pos),
        },
        _ => return Ok(None),
    };
    Ok(Some(r))
}

/// Array functions whose first argument may name the callback as a string (`a.filter("is_odd")`).
const CALLBACK_FNS: &[&str] = &[
    "map", "filter", "some", "all", "find", "find_map", "for_each", "retain", "drain", "dedup", "sort", "reduce",
    "reduce_rev",
];

fn array_fn(it: &mut Interp, name: &str, a: &mut Rc<Vec<Value>>, mut rest: Vec<Value>, pos: Pos) -> R<Option<Value>> {
    let n = a.len();
    if let Some(Value::Str(f)) = rest.first() {
        if CALLBACK_FNS.contains(&name) && is_ident(f) {
            rest[0] = Value::FnPtr(Rc::new(FnPtr { name: f.clone(), curry: Vec::new(), def: None, captures: Vec::new() }));
        }
    }
    // `find(f, start)` / `find_map(f, start)`: the search begins at `start` (from the end if < 0)
    let mut skip = 0;
    if (name == "find" || name == "find_map") && rest.len() == 2 {
        if let Value::Int(i) = rest[1] {
            skip = if i < 0 { (n as i64).saturating_add(i).max(0) as usize } else { i as usize };
            rest.pop();
        }
    }
    let r = match (name, rest.len()) {
        ("len", 0) => Value::Int(n as i64),
        ("is_empty", 0) => Value::Bool(n == 0),
        ("push", 1) | ("append", 1) if name == "push" || !matches!(rest[0], Value::Array(_)) => {
            it.check_len("array", n + 1, pos)?;
            Rc::make_mut(a).push(rest.pop().unwrap());
            Value::Unit
        }
        ("append", 1) => {
            if let Some(Value::Array(b)) = rest.pop() {
                it.check_len("array", n + b.len(), pos)?;
                Rc::make_mut(a).extend(b.iter().cloned());
            }
            Value::Unit
        }
        ("pop", 0) => Rc::make_mut(a).pop().unwrap_or(Value::Unit),
        ("shift", 0) => {
            if n == 0 {
                Value::Unit
            } else {
                Rc::make_mut(a).remove(0)
            }
        }
        ("clear", 0) => {
            Rc::make_mut(a).clear();
            Value::Unit
        }
        ("insert", 2) => {
            let i = match rest[0] {
                Value::Int(i) => i,
                _ => return Ok(None),
            };
            it.check_len("array", n + 1, pos)?;
            let k = if i < 0 { (n as i64 + i).max(0) as usize } else { (i as usize).min(n) };
            let v = rest.pop().unwrap();
            Rc::make_mut(a).insert(k, v);
            Value::Unit
        }
        ("remove", 1) => match rest[0] {
            Value::Int(i) => match norm_index(i, n) {
                Some(k) => Rc::make_mut(a).remove(k),
                None => Value::Unit,
            },
            _ => return Ok(None),
        },
        ("get", 1) => match rest[0] {
            Value::Int(i) => match norm_index(i, n) {
                Some(k) => a[k].clone(),
                None => Value::Unit,
            },
            _ => return Ok(None),
        },
        ("set", 2) => match rest[0] {
            Value::Int(i) => {
                if let Some(k) = norm_index(i, n) {
                    Rc::make_mut(a)[k] = rest.pop().unwrap();
                }
                Value::Unit
            }
            _ => return Ok(None),
        },
        ("truncate", 1) => match rest[0] {
            Value::Int(l) => {
                Rc::make_mut(a).truncate(l.max(0) as usize);
                Value::Unit
            }
            _ => return Ok(None),
        },
        ("chop", 1) => match rest[0] {
            Value::Int(l) => {
                let l = (l.max(0) as usize).min(n);
                Rc::make_mut(a).drain(0..n - l);
                Value::Unit
            }
            _ => return Ok(None),
        },
        ("pad", 2) => match rest[0] {
            Value::Int(l) => {
                if l > n as i64 {
                    if l as u64 > it.limits.max_array_size as u64 {
                        it.check_len("array", usize::MAX, pos)?;
                    }
                    it.check_len("array", l as usize, pos)?;
                    let v = rest.pop().unwrap();
                    Rc::make_mut(a).resize(l as usize, v);
                }
                Value::Unit
            }
            _ => return Ok(None),
        },
        ("reverse", 0) => {
            Rc::make_mut(a).reverse();
            Value::Unit
        }
        ("contains", 1) => Value::Bool(a.iter().any(|x| values_eq(x, &rest[0]))),
        ("index_of", 1) | ("index_of", 2) => {
            let start = match rest.get(1) {
                Some(Value::Int(i)) => {
                    if *i < 0 {
                        (n as i64 + i).max(0) as usize
                    } else {
                        *i as usize
                    }
                }
                Some(_) => return Ok(None),
                None => 0,
            };
            let arr = a.clone();
            let mut found = -1;
            if let Some(f) = to_fn(&rest[0]) {
                for (i, x) in arr.iter().enumerate().skip(start) {
                    if elem_bool(it, &f, x, i, pos)? {
                        found = i as i64;
                        break;
                    }
                }
            } else {
                for (i, x) in arr.iter().enumerate().skip(start) {
                    if values_eq(x, &rest[0]) {
                        found = i as i64;
                        break;
                    }
                }
            }
            Value::Int(found)
        }
        ("map", 1) | ("filter", 1) | ("some", 1) | ("all", 1) | ("find", 1) | ("find_map", 1) | ("for_each", 1)
        | ("retain", 1) | ("drain", 1) | ("dedup", 1) | ("sort", 1) | ("reduce", 1) | ("reduce", 2) | ("reduce_rev", 1)
        | ("reduce_rev", 2)
            if to_fn(&rest[0]).is_some() =>
        {
            let f = to_fn(&rest[0]).unwrap();
            let arr = a.clone();
            match name {
                "map" => {
                    let mut out = Vec::with_capacity(n);
                    for (i, x) in arr.iter().enumerate() {
                        out.push(elem_value(it, &f, x, i, pos)?);
                    }
                    Value::Array(Rc::new(out))
                }
                "for_each" => {
                    // each element is `this` (changes stick); the optional parameter is the index
                    let mut out = (*arr).clone();
                    for (i, x) in out.iter_mut().enumerate() {
                        let args = if it.fnptr_arity(&f) == Some(0) { vec![] } else { vec![Value::Int(i as i64)] };
                        let (_, this) = it.call_fnptr(&f, args, Some(std::mem::take(x)), pos)?;
                        *x = this.unwrap_or_default();
                    }
                    *a = Rc::new(out);
                    Value::Unit
                }
                "filter" => {
                    let mut out = Vec::new();
                    for (i, x) in arr.iter().enumerate() {
                        if elem_bool(it, &f, x, i, pos)? {
                            out.push(x.clone());
                        }
                    }
                    Value::Array(Rc::new(out))
                }
                "some" | "all" => {
                    let want = name == "some";
                    let mut res = !want;
                    for (i, x) in arr.iter().enumerate() {
                        if elem_bool(it, &f, x, i, pos)? == want {
                            res = want;
                            break;
                        }
                    }
                    Value::Bool(res)
                }
                "find" => {
                    let mut res = Value::Unit;
                    for (i, x) in arr.iter().enumerate().skip(skip) {
                        if elem_bool(it, &f, x, i, pos)? {
                            res = x.clone();
                            break;
                        }
                    }
                    res
                }
                "find_map" => {
                    let mut res = Value::Unit;
                    for (i, x) in arr.iter().enumerate().skip(skip) {
                        let v = elem_value(it, &f, x, i, pos)?;
                        if !v.is_unit() {
                            res = v;
                            break;
                        }
                    }
                    res
                }
                "retain" | "drain" => {
                    let mut keep = Vec::new();
                    let mut removed = Vec::new();
                    for (i, x) in arr.iter().enumerate() {
                        if elem_bool(it, &f, x, i, pos)? == (name == "retain") {
                            keep.push(x.clone());
                        } else {
                            removed.push(x.clone());
                        }
                    }
                    *a = Rc::new(keep);
                    Value::Array(Rc::new(removed))
                }
                "dedup" => {
                    let mut out: Vec<Value> = Vec::new();
                    for x in arr.iter() {
                        let dup = match out.last() {
                            Some(l) => cb_bool(it, &f, vec![l.clone(), x.clone()], pos)?,
                            None => false,
                        };
                        if !dup {
                            out.push(x.clone());
                        }
                    }
                    *a = Rc::new(out);
                    Value::Unit
                }
                "sort" => {
                    let v = (*arr).clone();
                    let sorted = sort_by(it, v, &mut |it, x, y| {
                        let r = it.call_cb(&f, vec![x.clone(), y.clone()], pos)?;
                        match r {
                            Value::Int(i) => Ok(i < 0),
                            Value::Bool(b) => Ok(b),
                            other => rt_err(
                                format!("Data type incorrect: {} (expecting i64)", other.type_name()),
                                pos,
                            ),
                        }
                    })?;
                    *a = Rc::new(sorted);
                    Value::Unit
                }
                _ => {
                    // reduce / reduce_rev
                    let mut acc = if rest.len() == 2 { rest[1].clone() } else { Value::Unit };
                    let idx: Vec<usize> = if name == "reduce" { (0..n).collect() } else { (0..n).rev().collect() };
                    for i in idx {
                        acc = it.call_elem(&f, vec![acc, arr[i].clone(), Value::Int(i as i64)], 1, pos)?.0;
                    }
                    acc
                }
            }
        }
        ("sort", 0) => {
            let v = (**a).clone();
            let sorted = sort_by(it, v, &mut |it, x, y| Ok(cmp_values(it, x, y, pos)? == std::cmp::Ordering::Less))?;
            *a = Rc::new(sorted);
            Value::Unit
        }
        ("dedup", 0) => {
            Rc::make_mut(a).dedup_by(|x, y| values_eq(x, y));
            Value::Unit
        }
        ("splice", 3) | ("splice", 2) => {
            let (st, len) = match (&rest[0], rest.get(1)) {
                (Value::Int(s), Some(Value::Int(l))) if rest.len() == 3 => (*s, *l),
                (r @ (Value::Range(..) | Value::RangeIncl(..)), _) if rest.len() == 2 => span_start_len(r, n),
                _ => return Ok(None),
            };
            let repl = match rest.pop() {
                Some(Value::Array(r)) => (*r).clone(),
                Some(v) => vec![v],
                None => vec![],
            };
            let (x, y) = range_bounds(st, len, n);
            it.check_len("array", n - (y - x) + repl.len(), pos)?;
            Rc::make_mut(a).splice(x..y, repl);
            Value::Unit
        }
        ("extract", 1) | ("extract", 2) | ("drain", 2) | ("retain", 2) | ("drain", 1) | ("retain", 1) => {
            let (st, len) = match (&rest[0], rest.get(1)) {
                (Value::Int(s), Some(Value::Int(l))) => (*s, *l),
                (Value::Int(s), None) => (*s, n as i64),
                (r @ (Value::Range(..) | Value::RangeIncl(..)), None) => span_start_len(r, n),
                _ => return Ok(None),
            };
            let (x, y) = range_bounds(st, len, n);
            match name {
                "extract" => Value::Array(Rc::new(a[x..y].to_vec())),
                "drain" => Value::Array(Rc::new(Rc::make_mut(a).drain(x..y).collect())),
                _ => {
                    let v = Rc::make_mut(a);
                    let kept: Vec<Value> = v[x..y].to_vec();
                    let mut removed: Vec<Value> = v[..x].to_vec();
                    removed.extend(v[y..].iter().cloned());
                    *v = kept;
                    Value::Array(Rc::new(removed))
                }
            }
        }
        ("split", 1) => match rest[0] {
            Value::Int(i) => {
                let k = if i < 0 { (n as i64 + i).max(0) as usize } else { (i as usize).min(n) };
                Value::Array(Rc::new(Rc::make_mut(a).split_off(k)))
            }
            _ => return Ok(None),
        },
        ("zip", 2) => {
            let (b, f) = match (&rest[0], to_fn(&rest[1])) {
                (Value::Array(b), Some(f)) => (b.clone(), f),
                _ => return Ok(None),
            };
            let mut out = Vec::new();
            for (i, (x, y)) in a.clone().iter().zip(b.iter()).enumerate() {
                out.push(it.call_cb(&f, vec![x.clone(), y.clone(), Value::Int(i as i64)], pos)?);
            }
            Value::Array(Rc::new(out))
        }
        _ => return Ok(None),
    };
    Ok(Some(r))
}

fn map_fn(it: &mut Interp, name: &str, m: &mut Rc<Map>, mut rest: Vec<Value>, pos: Pos) -> R<Option<Value>> {
    let key = |v: &Value| -> Option<Rc<str>> {
        match v {
            Value::Str(k) => Some(k.clone()),
            Value::Char(c) => Some(Rc::from(c.to_string().as_str())),
            _ => None,
        }
    };
    let r = match (name, rest.len()) {
        ("len", 0) => Value::Int(m.len() as i64),
        ("is_empty", 0) => Value::Bool(m.is_empty()),
        ("keys", 0) => Value::Array(Rc::new(m.keys().map(|k| Value::Str(k.clone())).collect())),
        ("values", 0) => Value::Array(Rc::new(m.values().cloned().collect())),
        ("clear", 0) => {
            Rc::make_mut(m).clear();
            Value::Unit
        }
        ("contains", 1) => match key(&rest[0]) {
            Some(k) => Value::Bool(m.contains_key(&k)),
            None => return Ok(None),
        },
        ("get", 1) => match key(&rest[0]) {
            Some(k) => m.get(&k).cloned().unwrap_or(Value::Unit),
            None => return Ok(None),
        },
        ("remove", 1) => match key(&rest[0]) {
            Some(k) => Rc::make_mut(m).remove(&k).unwrap_or(Value::Unit),
            None => return Ok(None),
        },
        ("set", 2) => match key(&rest[0]) {
            Some(k) => {
                if !m.contains_key(&k) {
                    it.check_len("map", m.len() + 1, pos)?;
                }
                Rc::make_mut(m).insert(k, rest.pop().unwrap());
                Value::Unit
            }
            None => return Ok(None),
        },
        ("mixin", 1) | ("fill_with", 1) => match &rest[0] {
            Value::Map(o) => {
                let o = o.clone();
                let mm = Rc::make_mut(m);
                for (k, v) in o.iter() {
                    if name == "mixin" || !mm.contains_key(k) {
                        mm.insert(k.clone(), v.clone());
                    }
                }
                it.check_len("map", mm.len(), pos)?;
                Value::Unit
            }
            _ => return Ok(None),
        },
        ("filter", 1) | ("drain", 1) | ("retain", 1) | ("map_values", 1) if to_fn(&rest[0]).is_some() => {
            let f = to_fn(&rest[0]).unwrap();
            let snapshot = m.clone();
            let mut keep = Map::new();
            let mut other = Map::new();
            for (k, v) in snapshot.iter() {
                if name == "map_values" {
                    let nv = it.call_cb(&f, vec![Value::Str(k.clone()), v.clone()], pos)?;
                    keep.insert(k.clone(), nv);
                    continue;
                }
                let b = cb_bool(it, &f, vec![Value::Str(k.clone()), v.clone()], pos)?;
                if b == (name != "drain") {
                    keep.insert(k.clone(), v.clone());
                } else {
                    other.insert(k.clone(), v.clone());
                }
            }
            match name {
                "filter" | "map_values" => Value::Map(Rc::new(keep)),
                "drain" => {
                    *m = Rc::new(keep);
                    Value::Map(Rc::new(other))
                }
                _ => {
                    *m = Rc::new(keep);
                    Value::Map(Rc::new(other))
                }
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(r))
}

/// A byte span given as `(range)` or `(start, len)` (or `(start)` to the end when
/// `open_len`), then the remaining arguments.
fn blob_span(rest: &[Value], n: usize, open_len: bool) -> Option<((usize, usize), &[Value])> {
    match rest {
        [r @ (Value::Range(..) | Value::RangeIncl(..)), tail @ ..] => Some((range_span(r, n)?, tail)),
        [Value::Int(st), Value::Int(len), tail @ ..] => Some((range_bounds(*st, *len, n), tail)),
        [Value::Int(st)] if open_len => Some((range_bounds(*st, n as i64, n), &[])),
        _ => None,
    }
}

fn blob_val(v: Vec<u8>) -> Value {
    Value::Blob(Rc::new(v))
}

/// Up to eight bytes as the first bytes of an 8-byte word, zero-padded.
fn word(bytes: &[u8]) -> [u8; 8] {
    let mut w = [0u8; 8];
    let k = bytes.len().min(8);
    w[..k].copy_from_slice(&bytes[..k]);
    w
}

fn parse_blob(name: &str, bytes: &[u8]) -> Value {
    let w = word(bytes);
    match name {
        "parse_le_int" => Value::Int(i64::from_le_bytes(w)),
        "parse_be_int" => Value::Int(i64::from_be_bytes(w)),
        "parse_le_float" => Value::Float(f64::from_le_bytes(w)),
        _ => Value::Float(f64::from_be_bytes(w)),
    }
}

fn value_bytes(name: &str, v: &Value) -> Option<[u8; 8]> {
    let le = name == "write_le";
    Some(match v {
        Value::Int(i) if le => i.to_le_bytes(),
        Value::Int(i) => i.to_be_bytes(),
        Value::Float(f) if le => f.to_le_bytes(),
        Value::Float(f) => f.to_be_bytes(),
        _ => return None,
    })
}

fn text_bytes(name: &str, v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Str(t) if name == "write_ascii" => Some(t.chars().filter(char::is_ascii).map(|c| c as u8).collect()),
        Value::Str(t) => Some(t.as_bytes().to_vec()),
        _ => None,
    }
}

fn blob_fn(it: &mut Interp, name: &str, b: &mut Rc<Vec<u8>>, rest: &[Value], pos: Pos) -> R<Option<Value>> {
    let n = b.len();
    if let Some(v) = blob_span_fn(it, name, b, rest, pos)? {
        return Ok(Some(v));
    }
    let clamp = |i: i64| if i < 0 { (n as i64 + i).max(0) as usize } else { (i as usize).min(n) };
    let r = match (name, rest) {
        ("len", []) => Value::Int(n as i64),
        ("is_empty", []) => Value::Bool(n == 0),
        ("push", [Value::Int(x)]) | ("append", [Value::Int(x)]) => {
            it.check_len("array", n + 1, pos)?;
            Rc::make_mut(b).push(*x as u8);
            Value::Unit
        }
        ("append", [Value::Blob(o)]) => {
            it.check_len("array", n + o.len(), pos)?;
            Rc::make_mut(b).extend(o.iter());
            Value::Unit
        }
        ("insert", [Value::Int(i), Value::Int(x)]) => {
            it.check_len("array", n + 1, pos)?;
            Rc::make_mut(b).insert(clamp(*i), *x as u8);
            Value::Unit
        }
        ("pop", []) => Value::Int(Rc::make_mut(b).pop().unwrap_or(0) as i64),
        ("shift", []) if n == 0 => Value::Int(0),
        ("shift", []) => Value::Int(Rc::make_mut(b).remove(0) as i64),
        ("remove", [Value::Int(i)]) => match norm_index(*i, n) {
            Some(k) => Value::Int(Rc::make_mut(b).remove(k) as i64),
            None => Value::Int(0),
        },
        ("get", [Value::Int(i)]) => norm_index(*i, n).map(|k| Value::Int(b[k] as i64)).unwrap_or(Value::Unit),
        ("contains", [Value::Int(x)]) => Value::Bool(b.iter().any(|y| *y as i64 == *x)),
        ("clear", []) => {
            Rc::make_mut(b).clear();
            Value::Unit
        }
        ("pad", [Value::Int(len), Value::Int(x)]) => {
            if *len > n as i64 {
                it.check_len("array", (*len).min(usize::MAX as i64) as usize, pos)?;
                Rc::make_mut(b).resize(*len as usize, *x as u8);
            }
            Value::Unit
        }
        ("truncate", [Value::Int(len)]) => {
            Rc::make_mut(b).truncate((*len).max(0) as usize);
            Value::Unit
        }
        ("chop", [Value::Int(len)]) => {
            let keep = ((*len).max(0) as usize).min(n);
            Rc::make_mut(b).drain(..n - keep);
            Value::Unit
        }
        ("split", [Value::Int(i)]) => blob_val(Rc::make_mut(b).split_off(clamp(*i))),
        ("to_array", []) => Value::Array(Rc::new(b.iter().map(|x| Value::Int(*x as i64)).collect())),
        ("as_string", []) => s(&String::from_utf8_lossy(b)),
        ("reverse", []) => {
            Rc::make_mut(b).reverse();
            Value::Unit
        }
        _ => return Ok(None),
    };
    Ok(Some(r))
}

/// BLOB functions over a span of bytes (`(start, len)` or a range).
fn blob_span_fn(it: &mut Interp, name: &str, b: &mut Rc<Vec<u8>>, rest: &[Value], pos: Pos) -> R<Option<Value>> {
    let open_len = name == "extract";
    let ((x, y), tail) = match blob_span(rest, b.len(), open_len) {
        Some(span) => span,
        None => return Ok(None),
    };
    let r = match (name, tail) {
        ("extract", []) => blob_val(b[x..y].to_vec()),
        ("drain", []) => blob_val(Rc::make_mut(b).drain(x..y).collect()),
        ("retain", []) => {
            let v = Rc::make_mut(b);
            let kept = v[x..y].to_vec();
            let mut removed: Vec<u8> = v.drain(..x).collect();
            removed.extend(v.drain(y - x..));
            *v = kept;
            blob_val(removed)
        }
        ("splice", [Value::Blob(o)]) => {
            it.check_len("array", b.len() - (y - x) + o.len(), pos)?;
            Rc::make_mut(b).splice(x..y, o.iter().copied());
            Value::Unit
        }
        ("parse_le_int" | "parse_be_int" | "parse_le_float" | "parse_be_float", []) => parse_blob(name, &b[x..y]),
        ("write_le" | "write_be", [v]) => match value_bytes(name, v) {
            Some(bytes) => {
                let k = (y - x).min(8);
                Rc::make_mut(b)[x..x + k].copy_from_slice(&bytes[..k]);
                Value::Unit
            }
            None => return Ok(None),
        },
        ("write_utf8" | "write_ascii", [v]) => match text_bytes(name, v) {
            Some(bytes) => {
                let k = (y - x).min(bytes.len());
                Rc::make_mut(b)[x..x + k].copy_from_slice(&bytes[..k]);
                Value::Unit
            }
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    Ok(Some(r))
}
