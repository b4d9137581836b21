//! Tree-walking evaluator over the resolved tree.

use std::cell::{Cell, RefCell};
use std::collections::HashMap as StdHashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;

/// Deterministic hasher: no WASI random_get needed.
pub type HashMap<K, V> = StdHashMap<K, V, BuildHasherDefault<DefaultHasher>>;
use std::rc::Rc;

use crate::ast::*;
use crate::lexer::Pos;
use crate::parser::{Parser, Program};
use crate::value::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrKind {
    Syntax,
    Runtime,
    Limit,
}

#[derive(Debug)]
pub struct RhaiError {
    pub kind: ErrKind,
    pub msg: String,
    pub pos: Pos,
    /// Thrown value for `throw`, used by `catch (e)`.
    pub thrown: Option<Value>,
    pub limit: Option<&'static str>,
}

#[derive(Debug)]
pub enum Flow {
    Err(Box<RhaiError>),
    Break(Value),
    Continue,
    Return(Value),
}

pub type R<T> = Result<T, Flow>;

pub fn rt_err<T>(msg: impl Into<String>, pos: Pos) -> R<T> {
    Err(Flow::Err(Box::new(RhaiError {
        kind: ErrKind::Runtime,
        msg: msg.into(),
        pos,
        thrown: None,
        limit: None,
    })))
}

pub fn limit_err<T>(limit: &'static str, msg: String, pos: Pos) -> R<T> {
    Err(Flow::Err(Box::new(RhaiError { kind: ErrKind::Limit, msg, pos, thrown: None, limit: Some(limit) })))
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_operations: u64,
    pub max_call_depth: usize,
    pub max_expr_depth: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 50_000_000,
            max_call_depth: 64,
            max_expr_depth: 64,
            max_string_size: 1 << 20,
            max_array_size: 100_000,
            max_map_size: 100_000,
            max_output_bytes: 1 << 20,
        }
    }
}

/// Host side: output, clock and generic calls.
pub trait Host {
    fn emit(&mut self, kind: u32, text: &str);
    fn clock_ms(&mut self) -> f64;
    /// Returns the response JSON text, `{"ok": value}` or `{"error": "..."}`.
    fn call(&mut self, request: &str) -> String;
}

pub struct Frame {
    pub base: usize,
    pub this: Option<Value>,
    pub captures: Vec<Shared>,
    pub dyn_vars: Vec<(Rc<str>, Value)>,
    pub caller: Option<(ScopeNames, usize)>,
}

pub enum Key {
    Idx(Value, Pos),
    Prop(Rc<str>, Pos),
}

pub struct Interp {
    pub stack: Vec<Value>,
    pub base: usize,
    pub frames: Vec<Frame>,
    pub fns: Vec<Rc<FnDef>>,
    /// Script functions by name: (arity, index into `fns`).
    pub fn_index: HashMap<Rc<str>, Vec<(usize, u32)>>,
    pub limits: Limits,
    pub ops: u64,
    pub depth: usize,
    pub output_bytes: usize,
    pub host: Box<dyn Host>,
    pub globals: HashMap<Rc<str>, Value>,
    pub global_consts: Vec<(Rc<str>, u32)>,
    pub host_objects: Rc<Vec<Rc<str>>>,
    pub host_fns: Vec<Rc<str>>,
    pub anon: Rc<Cell<u32>>,
    /// Values being handled by enclosing `catch` blocks (for `throw;` re-throw).
    pub caught: Vec<Value>,
    /// Nesting of blocks being executed (guards the native wasm stack).
    pub nest: u32,
}

/// Blocks nested deeper than this (across calls) stop the script before the
/// native wasm stack can overflow.
pub const MAX_NEST: u32 = 1024;

const NOT_SCRIPT: u32 = u32::MAX - 1;
const UNRESOLVED: u32 = u32::MAX;

impl Interp {
    pub fn new(host: Box<dyn Host>, limits: Limits) -> Self {
        Interp {
            stack: Vec::with_capacity(1024),
            base: 0,
            frames: Vec::new(),
            fns: Vec::new(),
            fn_index: HashMap::default(),
            limits,
            ops: 0,
            depth: 0,
            output_bytes: 0,
            host,
            globals: HashMap::default(),
            global_consts: Vec::new(),
            host_objects: Rc::new(Vec::new()),
            host_fns: Vec::new(),
            anon: Rc::new(Cell::new(0)),
            caught: Vec::new(),
            nest: 0,
        }
    }

    pub fn parse(&self, code: &str, predefined: &[(Rc<str>, u32, bool)], first: u32, fns: bool) -> Result<Program, crate::parser::ParseError> {
        let mut p = Parser::new(code, self.host_objects.clone(), self.limits.max_expr_depth, self.anon.clone())?;
        p.max_string = self.limits.max_string_size;
        p.parse_program(predefined, first, fns)
    }

    /// Run a whole program whose slot 0.. are pre-filled by `initial`.
    pub fn run_program(&mut self, prog: &Program, initial: Vec<Value>) -> R<Value> {
        for f in &prog.fns {
            let idx = self.fns.len() as u32;
            self.fns.push(f.clone());
            self.fn_index.entry(f.name.clone()).or_default().push((f.params.len(), idx));
        }
        self.global_consts = prog.global_consts.clone();
        self.stack.clear();
        self.stack.extend(initial);
        self.stack.resize(prog.num_slots as usize, Value::Unit);
        self.base = 0;
        self.frames.push(Frame { base: 0, this: None, captures: Vec::new(), dyn_vars: Vec::new(), caller: None });
        self.exec_block(&prog.main)
    }

    #[inline]
    pub fn tick(&mut self, pos: Pos) -> R<()> {
        self.ops += 1;
        if self.ops > self.limits.max_operations {
            return limit_err(
                "max_operations",
                format!("Too many operations (limit max_operations = {})", self.limits.max_operations),
                pos,
            );
        }
        Ok(())
    }

    pub fn check_size(&self, v: &Value, pos: Pos) -> R<()> {
        match v {
            Value::Str(s) if s.len() > self.limits.max_string_size => limit_err(
                "max_string_size",
                format!("Length of string too large (limit max_string_size = {})", self.limits.max_string_size),
                pos,
            ),
            Value::Array(a) if a.len() > self.limits.max_array_size => limit_err(
                "max_array_size",
                format!("Size of array too large (limit max_array_size = {})", self.limits.max_array_size),
                pos,
            ),
            Value::Blob(a) if a.len() > self.limits.max_array_size => limit_err(
                "max_array_size",
                format!("Size of blob too large (limit max_array_size = {})", self.limits.max_array_size),
                pos,
            ),
            Value::Map(m) if m.len() > self.limits.max_map_size => limit_err(
                "max_map_size",
                format!("Size of object map too large (limit max_map_size = {})", self.limits.max_map_size),
                pos,
            ),
            _ => Ok(()),
        }
    }

    pub fn check_len(&self, kind: &str, n: usize, pos: Pos) -> R<()> {
        match kind {
            "string" => self.check_size(&Value::Str(Rc::from("")), pos).and_then(|_| {
                if n > self.limits.max_string_size {
                    limit_err(
                        "max_string_size",
                        format!("Length of string too large (limit max_string_size = {})", self.limits.max_string_size),
                        pos,
                    )
                } else {
                    Ok(())
                }
            }),
            "map" if n > self.limits.max_map_size => limit_err(
                "max_map_size",
                format!("Size of object map too large (limit max_map_size = {})", self.limits.max_map_size),
                pos,
            ),
            _ if kind != "map" && n > self.limits.max_array_size => limit_err(
                "max_array_size",
                format!("Size of array too large (limit max_array_size = {})", self.limits.max_array_size),
                pos,
            ),
            _ => Ok(()),
        }
    }

    pub fn to_str(&self, v: &Value, debug: bool, pos: Pos) -> R<String> {
        let mut f = Fmt::new(self.limits.max_string_size);
        write_value(&mut f, v, debug);
        if f.over {
            return limit_err(
                "max_string_size",
                format!("Length of string too large (limit max_string_size = {})", self.limits.max_string_size),
                pos,
            );
        }
        Ok(f.out)
    }

    pub fn output(&mut self, kind: u32, text: &str, pos: Pos) -> R<()> {
        self.output_bytes += text.len() + 1;
        if self.output_bytes > self.limits.max_output_bytes {
            return limit_err(
                "max_output_bytes",
                format!("Too much output (limit max_output_bytes = {})", self.limits.max_output_bytes),
                pos,
            );
        }
        self.host.emit(kind, text);
        Ok(())
    }

    // ------------------------------------------------------------ variables
    #[inline]
    fn local(&self, slot: u32) -> Value {
        match &self.stack[self.base + slot as usize] {
            Value::Shared(c) => c.borrow().clone(),
            v => v.clone(),
        }
    }

    fn frame(&self) -> &Frame {
        self.frames.last().unwrap()
    }

    fn dyn_lookup(&self, name: &str) -> Option<Value> {
        let f = self.frame();
        if let Some((_, v)) = f.dyn_vars.iter().rev().find(|(n, _)| &**n == name) {
            return Some(v.clone().flatten());
        }
        if let Some((names, base)) = &f.caller {
            if let Some((_, s)) = names.iter().find(|(n, _)| &**n == name) {
                return Some(self.stack[base + *s as usize].clone().flatten());
            }
        }
        None
    }

    fn global_lookup(&self, name: &str) -> Option<Value> {
        if let Some(v) = self.globals.get(name) {
            return Some(v.clone());
        }
        if let Some((_, s)) = self.global_consts.iter().rev().find(|(n, _)| &**n == name) {
            return self.stack.get(*s as usize).map(|v| v.clone().flatten());
        }
        None
    }

    // ------------------------------------------------------------ blocks
    pub fn exec_block(&mut self, b: &Block) -> R<Value> {
        self.nest += 1;
        if self.nest > MAX_NEST {
            self.nest -= 1;
            return limit_err(
                "max_call_depth",
                format!(
                    "Stack overflow: blocks and calls nested too deeply (more than {} levels; limit max_call_depth = {})",
                    MAX_NEST, self.limits.max_call_depth
                ),
                b.stmts.first().map(stmt_pos).unwrap_or(Pos::NONE),
            );
        }
        let mut last = Value::Unit;
        for s in &b.stmts {
            self.ops += 1;
            if self.ops > self.limits.max_operations {
                if let Err(e) = self.tick(stmt_pos(s)) {
                    self.nest -= 1;
                    return Err(e);
                }
            }
            match self.eval(s) {
                Ok(v) => last = v,
                Err(e) => {
                    self.nest -= 1;
                    return Err(e);
                }
            }
        }
        self.nest -= 1;
        Ok(last)
    }

    #[inline]
    fn cond(&mut self, e: &Expr, pos: Pos) -> R<bool> {
        if let Expr::Bin(op, a, b, _) = e {
            if let (Some(x), Some(y)) = (self.int_operand(a), self.int_operand(b)) {
                match op {
                    BinOp::Lt => return Ok(x < y),
                    BinOp::Le => return Ok(x <= y),
                    BinOp::Gt => return Ok(x > y),
                    BinOp::Ge => return Ok(x >= y),
                    BinOp::Eq => return Ok(x == y),
                    BinOp::Ne => return Ok(x != y),
                    _ => {}
                }
            }
        }
        match self.eval(e)? {
            Value::Bool(b) => Ok(b),
            v => rt_err(format!("Data type incorrect: {} (expecting bool)", v.type_name()), pos),
        }
    }

    #[inline]
    fn int_operand(&self, e: &Expr) -> Option<i64> {
        match e {
            Expr::Const(Value::Int(i)) => Some(*i),
            Expr::Local(s, _) => match &self.stack[self.base + *s as usize] {
                Value::Int(i) => Some(*i),
                _ => None,
            },
            _ => None,
        }
    }

    /// Hot path: small frame, common nodes only.
    pub fn eval(&mut self, e: &Expr) -> R<Value> {
        match e {
            Expr::Const(v) => Ok(v.clone()),
            Expr::Local(s, _) => Ok(self.local(*s)),
            Expr::Bin(op, a, b, pos) => {
                if let (Some(x), Some(y)) = (self.int_operand(a), self.int_operand(b)) {
                    let r = match op {
                        BinOp::Add => x.checked_add(y).map(Value::Int),
                        BinOp::Sub => x.checked_sub(y).map(Value::Int),
                        BinOp::Mul => x.checked_mul(y).map(Value::Int),
                        BinOp::Lt => Some(Value::Bool(x < y)),
                        BinOp::Le => Some(Value::Bool(x <= y)),
                        BinOp::Gt => Some(Value::Bool(x > y)),
                        BinOp::Ge => Some(Value::Bool(x >= y)),
                        BinOp::Eq => Some(Value::Bool(x == y)),
                        BinOp::Ne => Some(Value::Bool(x != y)),
                        _ => None,
                    };
                    if let Some(r) = r {
                        return Ok(r);
                    }
                }
                let x = self.eval(a)?;
                let y = self.eval(b)?;
                self.binop(*op, x, y, *pos)
            }
            Expr::Assign(lhs, rhs, Some(op), _) => {
                if let (Expr::Local(s, _), Some(y)) = (&**lhs, self.int_operand(rhs)) {
                    if let Value::Int(a) = &mut self.stack[self.base + *s as usize] {
                        let r = match op {
                            BinOp::Add => a.checked_add(y),
                            BinOp::Sub => a.checked_sub(y),
                            _ => None,
                        };
                        if let Some(r) = r {
                            *a = r;
                            return Ok(Value::Unit);
                        }
                    }
                }
                self.eval_slow(e)
            }
            Expr::Call(c) => self.call(c),
            _ => self.eval_slow(e),
        }
    }

    #[inline(never)]
    fn eval_slow(&mut self, e: &Expr) -> R<Value> {
        match e {
            Expr::Const(v) => Ok(v.clone()),
            Expr::Local(s, _) => Ok(self.local(*s)),
            Expr::Captured(i, _) => Ok(self.frame().captures[*i as usize].borrow().clone()),
            Expr::DynVar(n, pos) => match self.dyn_lookup(n) {
                Some(v) => Ok(v),
                None => rt_err(format!("Variable not found: {}", n), *pos),
            },
            Expr::GlobalConst(n, pos) => match self.global_lookup(n) {
                Some(v) => Ok(v),
                None => rt_err(format!("Variable not found: global::{}", n), *pos),
            },
            Expr::This(pos) => match &self.frame().this {
                Some(v) => Ok(v.clone()),
                None => rt_err("'this' not bound", *pos),
            },
            Expr::Interp(parts, pos) => {
                let mut s = String::new();
                for p in parts {
                    let v = self.eval(p)?;
                    match &v {
                        Value::Str(x) => s.push_str(x),
                        // an interpolated BLOB is UTF-8 text (the book's String Interpolation)
                        Value::Blob(b) => s.push_str(&String::from_utf8_lossy(b)),
                        other => s.push_str(&self.to_str(other, false, *pos)?),
                    }
                    self.check_len("string", s.len(), *pos)?;
                }
                Ok(Value::Str(Rc::from(s.as_str())))
            }
            Expr::Array(items, pos) => {
                let mut v = Vec::with_capacity(items.len());
                for x in items {
                    v.push(self.eval(x)?);
                }
                let v = Value::Array(Rc::new(v));
                self.check_size(&v, *pos)?;
                Ok(v)
            }
            Expr::MapLit(items, pos) => {
                let mut m = Map::new();
                for (k, x) in items {
                    let v = self.eval(x)?;
                    m.insert(k.clone(), v);
                }
                let v = Value::Map(Rc::new(m));
                self.check_size(&v, *pos)?;
                Ok(v)
            }
            Expr::Unary(op, x, pos) => {
                let v = self.eval(x)?;
                match (op, v) {
                    (UnOp::Neg, Value::Int(i)) => match i.checked_neg() {
                        Some(r) => Ok(Value::Int(r)),
                        None => rt_err(format!("Negation overflow: -{}", i), *pos),
                    },
                    (UnOp::Neg, Value::Float(f)) => Ok(Value::Float(-f)),
                    (UnOp::Plus, v @ Value::Int(_)) | (UnOp::Plus, v @ Value::Float(_)) => Ok(v),
                    (UnOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
                    (op, v) => {
                        let s = match op {
                            UnOp::Neg => "-",
                            UnOp::Plus => "+",
                            UnOp::Not => "!",
                        };
                        rt_err(format!("Function not found: {} ({})", s, v.type_name()), *pos)
                    }
                }
            }
            Expr::Bin(op, a, b, pos) => {
                let x = self.eval(a)?;
                let y = self.eval(b)?;
                self.binop(*op, x, y, *pos)
            }
            Expr::And(a, b, pos) => {
                if !self.cond(a, *pos)? {
                    return Ok(Value::Bool(false));
                }
                Ok(Value::Bool(self.cond(b, *pos)?))
            }
            Expr::Or(a, b, pos) => {
                if self.cond(a, *pos)? {
                    return Ok(Value::Bool(true));
                }
                Ok(Value::Bool(self.cond(b, *pos)?))
            }
            Expr::Coalesce(a, b) => {
                let v = self.eval(a)?;
                if v.is_unit() {
                    self.eval(b)
                } else {
                    Ok(v)
                }
            }
            Expr::Index(t, i, safe, pos) => {
                let tv = self.eval(t)?;
                if *safe && tv.is_unit() {
                    return Ok(Value::Unit);
                }
                let iv = self.eval(i)?;
                self.get_index(&tv, &iv, *pos)
            }
            Expr::Prop(t, name, safe, pos) => {
                let tv = self.eval(t)?;
                if *safe && tv.is_unit() {
                    return Ok(Value::Unit);
                }
                self.get_prop(tv, name, *pos)
            }
            Expr::Call(c) => self.call(c),
            Expr::Method(m) => self.method(m),
            Expr::Assign(lhs, rhs, op, pos) => {
                self.assign(lhs, rhs, *op, *pos)?;
                Ok(Value::Unit)
            }
            Expr::Let(slot, v) => {
                let v = self.eval(v)?;
                self.stack[self.base + *slot as usize] = v;
                Ok(Value::Unit)
            }
            Expr::Block(b) => self.exec_block(b),
            Expr::If(c, t, e, pos) => {
                if self.cond(c, *pos)? {
                    self.exec_block(t)
                } else if let Some(e) = e {
                    self.eval(e)
                } else {
                    Ok(Value::Unit)
                }
            }
            Expr::Switch(s) => self.switch(s),
            Expr::While(c, body, pos) => {
                loop {
                    self.tick(*pos)?;
                    if !self.cond(c, *pos)? {
                        return Ok(Value::Unit);
                    }
                    match self.exec_block(body) {
                        Ok(_) | Err(Flow::Continue) => {}
                        Err(Flow::Break(v)) => return Ok(v),
                        Err(e) => return Err(e),
                    }
                }
            }
            Expr::Loop(body) => loop {
                self.tick(body.stmts.first().map(stmt_pos).unwrap_or(Pos::NONE))?;
                match self.exec_block(body) {
                    Ok(_) | Err(Flow::Continue) => {}
                    Err(Flow::Break(v)) => return Ok(v),
                    Err(e) => return Err(e),
                }
            },
            Expr::Do(body, c, until, pos) => loop {
                self.tick(*pos)?;
                match self.exec_block(body) {
                    Ok(_) | Err(Flow::Continue) => {}
                    Err(Flow::Break(v)) => return Ok(v),
                    Err(e) => return Err(e),
                }
                if self.cond(c, *pos)? == *until {
                    return Ok(Value::Unit);
                }
            },
            Expr::For(f) => self.for_loop(f),
            Expr::Closure(def, caps) => {
                let mut cells = Vec::with_capacity(caps.len());
                for c in caps {
                    match c {
                        CapSrc::Local(s) => {
                            let slot = &mut self.stack[self.base + *s as usize];
                            if let Value::Shared(cell) = slot {
                                cells.push(cell.clone());
                            } else {
                                let v = std::mem::take(slot);
                                let cell = Rc::new(RefCell::new(v));
                                *slot = Value::Shared(cell.clone());
                                cells.push(cell);
                            }
                        }
                        CapSrc::Captured(i) => cells.push(self.frame().captures[*i as usize].clone()),
                    }
                }
                Ok(Value::FnPtr(Rc::new(FnPtr {
                    name: def.name.clone(),
                    curry: Vec::new(),
                    def: Some(def.clone()),
                    captures: cells,
                })))
            }
            Expr::Break(v, _) => {
                let v = match v {
                    Some(x) => self.eval(x)?,
                    None => Value::Unit,
                };
                Err(Flow::Break(v))
            }
            Expr::Continue(_) => Err(Flow::Continue),
            Expr::Return(v, _) => {
                let v = match v {
                    Some(x) => self.eval(x)?,
                    None => Value::Unit,
                };
                Err(Flow::Return(v))
            }
            Expr::Throw(v, pos) => {
                let v = match v {
                    Some(x) => self.eval(x)?,
                    None => self.caught.last().cloned().unwrap_or(Value::Unit),
                };
                let msg = if v.is_unit() {
                    "Runtime error".to_string()
                } else {
                    format!("Runtime error: {}", self.to_str(&v, false, *pos)?)
                };
                Err(Flow::Err(Box::new(RhaiError {
                    kind: ErrKind::Runtime,
                    msg,
                    pos: *pos,
                    thrown: Some(v),
                    limit: None,
                })))
            }
            Expr::Try(body, var, catch, _) => {
                let depth = self.depth;
                let frames = self.frames.len();
                let stack_len = self.stack.len();
                let base = self.base;
                let nest = self.nest;
                match self.exec_block(body) {
                    Err(Flow::Err(err)) if err.kind != ErrKind::Limit => {
                        self.depth = depth;
                        self.frames.truncate(frames);
                        self.stack.truncate(stack_len);
                        self.base = base;
                        self.nest = nest;
                        if let Some(slot) = var {
                            let v = match err.thrown {
                                Some(v) => v,
                                None => {
                                    let mut m = Map::new();
                                    m.insert(Rc::from("message"), str_val(&err.msg));
                                    m.insert(Rc::from("error"), str_val(error_kind(&err.msg)));
                                    if !err.pos.is_none() {
                                        m.insert(Rc::from("line"), Value::Int(err.pos.line as i64));
                                        m.insert(Rc::from("position"), Value::Int(err.pos.col as i64));
                                    }
                                    Value::Map(Rc::new(m))
                                }
                            };
                            self.stack[self.base + *slot as usize] = v.clone();
                            self.caught.push(v);
                        } else {
                            self.caught.push(err.thrown.unwrap_or(Value::Unit));
                        }
                        let r = self.exec_block(catch);
                        self.caught.pop();
                        r.map(|_| Value::Unit)
                    }
                    // `try … catch` is a statement: its value is ()
                    other => other.map(|_| Value::Unit),
                }
            }
            Expr::Eval(code, names, _, pos) => self.eval_code(code, names, *pos),
            Expr::IsDefVar(name, names, pos) => {
                let n = match self.eval(name)? {
                    Value::Str(s) => s,
                    v => return rt_err(format!("Function not found: is_def_var ({})", v.type_name()), *pos),
                };
                Ok(Value::Bool(
                    names.iter().any(|(x, _)| *x == n) || self.dyn_lookup(&n).is_some(),
                ))
            }
            Expr::Import(name, pos) => rt_err(format!("Module not found: {}", name), *pos),
            Expr::IsShared(var) => Ok(Value::Bool(match **var {
                Expr::Local(s, _) => matches!(self.stack[self.base + s as usize], Value::Shared(_)),
                _ => true,
            })),
            Expr::Nop => Ok(Value::Unit),
        }
    }

    fn eval_code(&mut self, code: &Expr, names: &ScopeNames, pos: Pos) -> R<Value> {
        let code = match self.eval(code)? {
            Value::Str(s) => s,
            v => return rt_err(format!("Function not found: eval ({})", v.type_name()), pos),
        };
        let preds: Vec<(Rc<str>, u32, bool)> = names.iter().map(|(n, s)| (n.clone(), *s, false)).collect();
        let first = (self.stack.len() - self.base) as u32;
        let prog = match self.parse(&code, &preds, first, false) {
            Ok(p) => p,
            Err(e) => {
                if let Some(l) = e.limit {
                    return limit_err(l, e.msg, pos);
                }
                return rt_err(
                    format!("Syntax error in eval: {} (line {}, position {})", e.msg, e.pos.line, e.pos.col),
                    pos,
                );
            }
        };
        let saved_len = self.stack.len();
        self.stack.resize(self.base + prog.num_slots.max(first) as usize, Value::Unit);
        let r = self.exec_block(&prog.main);
        // new top-level variables persist as dynamic variables of this frame
        for (n, s) in &prog.top_names {
            if *s >= first {
                let v = std::mem::take(&mut self.stack[self.base + *s as usize]);
                self.frames.last_mut().unwrap().dyn_vars.push((n.clone(), v));
            }
        }
        self.stack.truncate(saved_len);
        r
    }

    fn switch(&mut self, s: &Switch) -> R<Value> {
        let v = self.eval(&s.expr)?;
        for case in &s.cases {
            let hit = match &case.pat {
                None => true,
                Some(Pat::Val(Value::Range(a, b))) => matches!(v, Value::Int(i) if i >= *a && i < *b),
                Some(Pat::Val(Value::RangeIncl(a, b))) => matches!(v, Value::Int(i) if i >= *a && i <= *b),
                Some(Pat::Range(a, b, incl)) => {
                    matches!(v, Value::Int(i) if i >= *a && (if *incl { i <= *b } else { i < *b }))
                }
                Some(Pat::Val(p)) => values_eq(p, &v) && p.type_name() == v.type_name(),
            };
            if hit {
                if let Some(c) = &case.cond {
                    if !self.cond(c, s.pos)? {
                        continue;
                    }
                }
                return self.eval(&case.body);
            }
        }
        Ok(Value::Unit)
    }

    fn for_loop(&mut self, f: &ForLoop) -> R<Value> {
        let it = self.eval(&f.iter)?;
        let var = self.base + f.var as usize;
        macro_rules! body {
            ($val:expr, $i:expr) => {{
                self.tick(f.pos)?;
                self.stack[self.base + f.var as usize] = $val;
                if let Some(ix) = f.idx {
                    self.stack[self.base + ix as usize] = Value::Int($i as i64);
                }
                match self.exec_block(&f.body) {
                    Ok(_) | Err(Flow::Continue) => {}
                    Err(Flow::Break(v)) => return Ok(v),
                    Err(e) => return Err(e),
                }
            }};
        }
        let _ = var;
        match it {
            Value::Range(a, b) => {
                let mut i = a;
                let mut n = 0;
                while i < b {
                    body!(Value::Int(i), n);
                    i += 1;
                    n += 1;
                }
            }
            Value::RangeIncl(a, b) => {
                let mut i = a;
                let mut n = 0;
                while i <= b {
                    body!(Value::Int(i), n);
                    if i == i64::MAX {
                        break;
                    }
                    i += 1;
                    n += 1;
                }
            }
            Value::Array(arr) => {
                for (n, x) in arr.iter().enumerate() {
                    body!(x.clone(), n);
                }
            }
            Value::Blob(b) => {
                for (n, x) in b.iter().enumerate() {
                    body!(Value::Int(*x as i64), n);
                }
            }
            Value::Str(s) => {
                for (n, c) in s.chars().enumerate() {
                    body!(Value::Char(c), n);
                }
            }
            Value::FnPtr(p) if &*p.name == "range$step" => {
                let (a, b, step) = match (p.curry.get(0), p.curry.get(1), p.curry.get(2)) {
                    (Some(Value::Int(a)), Some(Value::Int(b)), Some(Value::Int(s))) => (*a, *b, *s),
                    _ => return rt_err("Invalid range", f.pos),
                };
                let mut i = a;
                let mut n = 0;
                while (step > 0 && i < b) || (step < 0 && i > b) {
                    body!(Value::Int(i), n);
                    i = match i.checked_add(step) {
                        Some(x) => x,
                        None => break,
                    };
                    n += 1;
                }
            }
            Value::FnPtr(p) if &*p.name == "range$fstep" => {
                let (a, b, step) = match (p.curry.get(0), p.curry.get(1), p.curry.get(2)) {
                    (Some(Value::Float(a)), Some(Value::Float(b)), Some(Value::Float(s))) => (*a, *b, *s),
                    _ => return rt_err("Invalid range", f.pos),
                };
                let mut n: u64 = 0;
                loop {
                    let x = a + step * n as f64;
                    if !((step > 0.0 && x < b) || (step < 0.0 && x > b)) {
                        break;
                    }
                    body!(Value::Float(x), n);
                    n += 1;
                }
            }
            v => return rt_err(format!("For loop expects iterable type (not {})", v.type_name()), f.pos),
        }
        Ok(Value::Unit)
    }

    // ------------------------------------------------------------ operators
    #[inline(never)]
    pub fn binop(&mut self, op: BinOp, x: Value, y: Value, pos: Pos) -> R<Value> {
        use BinOp::*;
        use Value::*;
        match (op, &x, &y) {
            (Add, Int(a), Int(b)) => match a.checked_add(*b) {
                Some(r) => Ok(Int(r)),
                None => rt_err(format!("Addition overflow: {} + {}", a, b), pos),
            },
            (Sub, Int(a), Int(b)) => match a.checked_sub(*b) {
                Some(r) => Ok(Int(r)),
                None => rt_err(format!("Subtraction overflow: {} - {}", a, b), pos),
            },
            (Mul, Int(a), Int(b)) => match a.checked_mul(*b) {
                Some(r) => Ok(Int(r)),
                None => rt_err(format!("Multiplication overflow: {} * {}", a, b), pos),
            },
            (Div, Int(a), Int(b)) => {
                if *b == 0 {
                    rt_err(format!("Division by zero: {} / {}", a, b), pos)
                } else {
                    match a.checked_div(*b) {
                        Some(r) => Ok(Int(r)),
                        None => rt_err(format!("Division overflow: {} / {}", a, b), pos),
                    }
                }
            }
            (Rem, Int(a), Int(b)) => {
                if *b == 0 {
                    rt_err(format!("Modulo division by zero: {} % {}", a, b), pos)
                } else {
                    match a.checked_rem(*b) {
                        Some(r) => Ok(Int(r)),
                        None => rt_err(format!("Modulo division overflow: {} % {}", a, b), pos),
                    }
                }
            }
            (Pow, Int(a), Int(b)) => {
                if *b < 0 {
                    rt_err(format!("Integer raised to a negative power: {} ** {}", a, b), pos)
                } else if *b > u32::MAX as i64 {
                    rt_err(format!("Exponential overflow: {} ** {}", a, b), pos)
                } else {
                    match a.checked_pow(*b as u32) {
                        Some(r) => Ok(Int(r)),
                        None => rt_err(format!("Exponential overflow: {} ** {}", a, b), pos),
                    }
                }
            }
            (Shl, Int(a), Int(b)) => {
                if *b < 0 {
                    return self.binop(Shr, x.clone(), Int(-b), pos);
                }
                if *b >= 64 {
                    return rt_err(format!("Left-shift overflow: {} << {}", a, b), pos);
                }
                Ok(Int(a << b))
            }
            (Shr, Int(a), Int(b)) => {
                if *b < 0 {
                    return self.binop(Shl, x.clone(), Int(-b), pos);
                }
                if *b >= 64 {
                    return rt_err(format!("Right-shift overflow: {} >> {}", a, b), pos);
                }
                Ok(Int(a >> b))
            }
            (BitAnd, Int(a), Int(b)) => Ok(Int(a & b)),
            (BitOr, Int(a), Int(b)) => Ok(Int(a | b)),
            (BitXor, Int(a), Int(b)) => Ok(Int(a ^ b)),
            (BitAnd, Bool(a), Bool(b)) => Ok(Bool(*a & *b)),
            (BitOr, Bool(a), Bool(b)) => Ok(Bool(*a | *b)),
            (BitXor, Bool(a), Bool(b)) => Ok(Bool(*a ^ *b)),
            (Lt, Int(a), Int(b)) => Ok(Bool(a < b)),
            (Le, Int(a), Int(b)) => Ok(Bool(a <= b)),
            (Gt, Int(a), Int(b)) => Ok(Bool(a > b)),
            (Ge, Int(a), Int(b)) => Ok(Bool(a >= b)),
            (Eq, _, _) => Ok(Bool(values_eq(&x, &y))),
            (Ne, _, _) => Ok(Bool(!values_eq(&x, &y))),
            (BinOp::Range, Int(a), Int(b)) => Ok(Value::Range(*a, *b)),
            (BinOp::RangeIncl, Int(a), Int(b)) => Ok(Value::RangeIncl(*a, *b)),
            (In, _, _) => self.contains(&y, &x, pos).map(Bool),
            (NotIn, _, _) => self.contains(&y, &x, pos).map(|b| Bool(!b)),
            // floats (and INT/FLOAT mixing)
            (_, Float(_), Float(_)) | (_, Int(_), Float(_)) | (_, Float(_), Int(_)) => {
                let a = match x {
                    Float(f) => f,
                    Int(i) => i as f64,
                    _ => unreachable!(),
                };
                let b = match y {
                    Float(f) => f,
                    Int(i) => i as f64,
                    _ => unreachable!(),
                };
                match op {
                    Add => Ok(Float(a + b)),
                    Sub => Ok(Float(a - b)),
                    Mul => Ok(Float(a * b)),
                    Div => Ok(Float(a / b)),
                    Rem => Ok(Float(a % b)),
                    Pow => Ok(Float(a.powf(b))),
                    Lt | Le | Gt | Ge => Ok(Bool(float_cmp(op, a, b))),
                    _ => self.op_not_found(op, &x, &y, pos),
                }
            }
            (Add, Str(a), Str(b)) => {
                self.check_len("string", a.len() + b.len(), pos)?;
                let mut s = String::with_capacity(a.len() + b.len());
                s.push_str(a);
                s.push_str(b);
                Ok(Str(Rc::from(s.as_str())))
            }
            (Add, Str(a), Char(c)) => {
                let mut s = a.to_string();
                s.push(*c);
                self.check_len("string", s.len(), pos)?;
                Ok(Str(Rc::from(s.as_str())))
            }
            (Add, Char(c), Str(a)) => {
                let mut s = c.to_string();
                s.push_str(a);
                self.check_len("string", s.len(), pos)?;
                Ok(Str(Rc::from(s.as_str())))
            }
            (Add, Char(a), Char(b)) => {
                let mut s = a.to_string();
                s.push(*b);
                Ok(Str(Rc::from(s.as_str())))
            }
            (Add, Str(a), Blob(b)) => self.concat(a, &String::from_utf8_lossy(b), pos),
            (Add, Blob(a), Str(b)) => self.concat(&String::from_utf8_lossy(a), b, pos),
            (Add, Str(a), _) if !matches!(y, Array(_) | Blob(_)) => {
                let b = self.to_str(&y, false, pos)?;
                self.check_len("string", a.len() + b.len(), pos)?;
                Ok(Str(Rc::from(format!("{}{}", a, b).as_str())))
            }
            (Add, _, Str(b)) if !matches!(x, Array(_) | Blob(_)) => {
                let a = self.to_str(&x, false, pos)?;
                self.check_len("string", a.len() + b.len(), pos)?;
                Ok(Str(Rc::from(format!("{}{}", a, b).as_str())))
            }
            (Sub, Str(a), Str(b)) => Ok(Str(Rc::from(a.replace(&**b, "").as_str()))),
            (Sub, Str(a), Char(c)) => Ok(Str(Rc::from(a.replace(*c, "").as_str()))),
            (Add, Array(a), Array(b)) => {
                self.check_len("array", a.len() + b.len(), pos)?;
                let mut v = a.to_vec();
                v.extend(b.iter().cloned());
                Ok(Array(Rc::new(v)))
            }
            (Add, Blob(a), Blob(b)) => {
                self.check_len("array", a.len() + b.len(), pos)?;
                let mut v = a.to_vec();
                v.extend(b.iter().cloned());
                Ok(Blob(Rc::new(v)))
            }
            (Add, Map(a), Map(b)) => {
                let mut m = (**a).clone();
                for (k, v) in b.iter() {
                    m.insert(k.clone(), v.clone());
                }
                let v = Map(Rc::new(m));
                self.check_size(&v, pos)?;
                Ok(v)
            }
            (Sub, Timestamp(a), Timestamp(b)) => Ok(Float((a - b) / 1000.0)),
            (Add, Timestamp(a), Int(b)) => Ok(Timestamp(a + *b as f64 * 1000.0)),
            (Add, Timestamp(a), Float(b)) => Ok(Timestamp(a + b * 1000.0)),
            (Sub, Timestamp(a), Int(b)) => Ok(Timestamp(a - *b as f64 * 1000.0)),
            (Sub, Timestamp(a), Float(b)) => Ok(Timestamp(a - b * 1000.0)),
            (Lt, Timestamp(a), Timestamp(b)) => Ok(Bool(a < b)),
            (Gt, Timestamp(a), Timestamp(b)) => Ok(Bool(a > b)),
            (Le, Timestamp(a), Timestamp(b)) => Ok(Bool(a <= b)),
            (Ge, Timestamp(a), Timestamp(b)) => Ok(Bool(a >= b)),
            (Lt | Le | Gt | Ge, Str(_) | Char(_), Str(_) | Char(_)) => Ok(Bool(ordered(op, text_of(&x).cmp(&text_of(&y))))),
            (Lt | Le | Gt | Ge, Bool(a), Bool(b)) => Ok(Bool(ordered(op, a.cmp(b)))),
            // values of different types compare as false (the book's Logic Operators page)
            (Lt | Le | Gt | Ge, _, _) => Ok(Bool(false)),
            _ => self.op_not_found(op, &x, &y, pos),
        }
    }

    fn concat(&self, a: &str, b: &str, pos: Pos) -> R<Value> {
        self.check_len("string", a.len() + b.len(), pos)?;
        Ok(Value::Str(Rc::from(format!("{}{}", a, b).as_str())))
    }

    fn op_not_found(&self, op: BinOp, x: &Value, y: &Value, pos: Pos) -> R<Value> {
        rt_err(
            format!("Function not found: {} ({}, {})", op.symbol(), x.type_name(), y.type_name()),
            pos,
        )
    }

    pub fn contains(&mut self, container: &Value, item: &Value, pos: Pos) -> R<bool> {
        match (container, item) {
            (Value::Array(a), _) => Ok(a.iter().any(|x| values_eq(x, item))),
            (Value::Str(s), Value::Str(sub)) => Ok(s.contains(&**sub)),
            (Value::Str(s), Value::Char(c)) => Ok(s.contains(*c)),
            (Value::Map(m), Value::Str(k)) => Ok(m.contains_key(k)),
            (Value::Map(m), Value::Char(c)) => Ok(m.contains_key(c.to_string().as_str())),
            (Value::Range(a, b), Value::Int(i)) => Ok(i >= a && i < b),
            (Value::RangeIncl(a, b), Value::Int(i)) => Ok(i >= a && i <= b),
            (Value::Blob(b), Value::Int(i)) => Ok(b.iter().any(|x| *x as i64 == *i)),
            _ => rt_err(
                format!("Function not found: contains ({}, {})", container.type_name(), item.type_name()),
                pos,
            ),
        }
    }

    // ------------------------------------------------------------ indexing
    pub fn get_index(&mut self, t: &Value, i: &Value, pos: Pos) -> R<Value> {
        match (t, i) {
            (Value::Array(a), Value::Int(i)) => match norm_index(*i, a.len()) {
                Some(k) => Ok(a[k].clone()),
                None => arr_bounds(a.len(), *i, pos),
            },
            (Value::Blob(a), Value::Int(i)) => match norm_index(*i, a.len()) {
                Some(k) => Ok(Value::Int(a[k] as i64)),
                None => arr_bounds(a.len(), *i, pos),
            },
            (Value::Map(m), Value::Str(k)) => Ok(m.get(k).cloned().unwrap_or(Value::Unit)),
            (Value::Map(m), Value::Char(c)) => Ok(m.get(c.to_string().as_str()).cloned().unwrap_or(Value::Unit)),
            (Value::Str(s), Value::Int(i)) => {
                let n = s.chars().count();
                match norm_index(*i, n) {
                    Some(k) => Ok(Value::Char(s.chars().nth(k).unwrap())),
                    None => str_bounds(n, *i, pos),
                }
            }
            (Value::Str(s), Value::Range(..) | Value::RangeIncl(..)) => {
                let (start, end) = str_range(i, s.chars().count());
                let sub: String = s.chars().skip(start).take(end - start).collect();
                Ok(Value::Str(Rc::from(sub.as_str())))
            }
            (Value::Array(_) | Value::Blob(_), Value::Range(..) | Value::RangeIncl(..)) => {
                rt_err(format!("Data type incorrect: {} (expecting i64)", i.type_name()), pos)
            }
            (Value::Int(x), Value::Int(b)) => match norm_index(*b, 64) {
                Some(k) => Ok(Value::Bool(x & (1i64 << k) != 0)),
                None => bit_bounds(*b, pos),
            },
            (Value::Int(x), Value::Range(..) | Value::RangeIncl(..)) => {
                let (start, width) = bit_range(i, pos)?;
                Ok(Value::Int(get_bits(*x, start, width)))
            }
            (Value::Host(h), Value::Str(k)) => {
                let req = format!("{{\"object\":{},\"property\":{}}}", jstr(&h.name), jstr(k));
                self.host_request(req, pos)
            }
            _ => rt_err(format!("Indexer unavailable: {} [{}]", t.type_name(), i.type_name()), pos),
        }
    }

    pub fn get_prop(&mut self, t: Value, name: &Rc<str>, pos: Pos) -> R<Value> {
        match &t {
            Value::Map(m) => Ok(m.get(name).cloned().unwrap_or(Value::Unit)),
            Value::Host(h) => {
                if !h.properties.iter().any(|p| p == name) {
                    return rt_err(format!("Property not found: {} (for {})", name, h.type_name), pos);
                }
                let req = format!("{{\"object\":{},\"property\":{}}}", jstr(&h.name), jstr(name));
                self.host_request(req, pos)
            }
            _ => {
                let mut args = vec![t];
                match crate::builtins::call_builtin(self, name, &mut args, pos)? {
                    Some(v) => Ok(v),
                    None => rt_err(
                        format!("Property not found: {} (for {})", name, args[0].type_name()),
                        pos,
                    ),
                }
            }
        }
    }

    // ------------------------------------------------------------ places
    fn place_chain<'e>(&mut self, e: &'e Expr, keys: &mut Vec<Key>) -> R<&'e Expr> {
        match e {
            Expr::Index(t, i, _, pos) => {
                let root = self.place_chain(t, keys)?;
                let iv = self.eval(i)?;
                keys.push(Key::Idx(iv, *pos));
                Ok(root)
            }
            Expr::Prop(t, n, _, pos) => {
                let root = self.place_chain(t, keys)?;
                keys.push(Key::Prop(n.clone(), *pos));
                Ok(root)
            }
            other => Ok(other),
        }
    }

    fn is_place(e: &Expr) -> bool {
        match e {
            Expr::Index(t, _, false, _) | Expr::Prop(t, _, false, _) => {
                matches!(**t, Expr::GlobalConst(..)) || Self::is_place(t)
            }
            Expr::Local(..) | Expr::Captured(..) | Expr::This(_) | Expr::DynVar(..) => true,
            _ => false,
        }
    }

    /// Take the root value out of its place.
    fn take_root(&mut self, root: &Expr) -> R<Value> {
        match root {
            Expr::Local(s, _) => {
                let slot = &mut self.stack[self.base + *s as usize];
                Ok(match slot {
                    Value::Shared(c) => std::mem::take(&mut *c.borrow_mut()),
                    v => std::mem::take(v),
                })
            }
            Expr::Captured(i, _) => Ok(std::mem::take(&mut *self.frame().captures[*i as usize].borrow_mut())),
            Expr::GlobalConst(n, pos) => match self.global_lookup(n) {
                Some(v) => Ok(v),
                None => rt_err(format!("Variable not found: global::{}", n), *pos),
            },
            Expr::This(pos) => match self.frames.last_mut().unwrap().this.take() {
                Some(v) => Ok(v),
                None => rt_err("'this' not bound", *pos),
            },
            Expr::DynVar(n, pos) => {
                let fi = self.frames.len() - 1;
                if let Some(k) = self.frames[fi].dyn_vars.iter().rposition(|(x, _)| x == n) {
                    return Ok(std::mem::take(&mut self.frames[fi].dyn_vars[k].1).flatten());
                }
                if let Some((names, base)) = self.frames[fi].caller.clone() {
                    if let Some((_, s)) = names.iter().find(|(x, _)| x == n) {
                        let slot = &mut self.stack[base + *s as usize];
                        return Ok(match slot {
                            Value::Shared(c) => std::mem::take(&mut *c.borrow_mut()),
                            v => std::mem::take(v),
                        });
                    }
                }
                rt_err(format!("Variable not found: {}", n), *pos)
            }
            _ => rt_err("Cannot assign to this expression", Pos::NONE),
        }
    }

    fn put_root(&mut self, root: &Expr, v: Value) {
        match root {
            Expr::Local(s, _) => {
                let slot = &mut self.stack[self.base + *s as usize];
                match slot {
                    Value::Shared(c) => *c.borrow_mut() = v,
                    x => *x = v,
                }
            }
            Expr::Captured(i, _) => *self.frame().captures[*i as usize].borrow_mut() = v,
            Expr::This(_) => self.frames.last_mut().unwrap().this = Some(v),
            Expr::DynVar(n, _) => {
                let fi = self.frames.len() - 1;
                if let Some(k) = self.frames[fi].dyn_vars.iter().rposition(|(x, _)| x == n) {
                    self.frames[fi].dyn_vars[k].1 = v;
                    return;
                }
                if let Some((names, base)) = self.frames[fi].caller.clone() {
                    if let Some((_, s)) = names.iter().find(|(x, _)| x == n) {
                        let slot = &mut self.stack[base + *s as usize];
                        match slot {
                            Value::Shared(c) => *c.borrow_mut() = v,
                            x => *x = v,
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn assign(&mut self, lhs: &Expr, rhs: &Expr, op: Option<BinOp>, pos: Pos) -> R<()> {
        // Fast path: local integer arithmetic.
        if let Expr::Local(s, _) = lhs {
            let rv = self.eval(rhs)?;
            let idx = self.base + *s as usize;
            match op {
                None => {
                    match &mut self.stack[idx] {
                        Value::Shared(c) => *c.borrow_mut() = rv,
                        slot => *slot = rv,
                    }
                    return Ok(());
                }
                Some(op) => {
                    if let (Value::Int(a), Value::Int(b)) = (&mut self.stack[idx], &rv) {
                        let r = match op {
                            BinOp::Add => a.checked_add(*b),
                            BinOp::Sub => a.checked_sub(*b),
                            BinOp::Mul => a.checked_mul(*b),
                            _ => None,
                        };
                        if let Some(r) = r {
                            *a = r;
                            return Ok(());
                        }
                    }
                    let mut cur = self.take_root(lhs)?;
                    let r = self.apply_op(&mut cur, op, rv, pos);
                    self.put_root(lhs, cur);
                    return r;
                }
            }
        }
        let rv = self.eval(rhs)?;
        if !Self::is_place(lhs) {
            return rt_err("Cannot assign to this expression", pos);
        }
        let mut keys = Vec::new();
        let root = self.place_chain(lhs, &mut keys)?;
        let mut cur = self.take_root(root)?;
        let r = self.set_path(&mut cur, &keys, rv, op, pos);
        self.put_root(root, cur);
        r
    }

    fn apply_op(&mut self, cur: &mut Value, op: BinOp, rv: Value, pos: Pos) -> R<()> {
        if op == BinOp::Add {
            if let Value::Array(a) = cur {
                match rv {
                    Value::Array(b) => {
                        self.check_len("array", a.len() + b.len(), pos)?;
                        Rc::make_mut(a).extend(b.iter().cloned());
                    }
                    other => {
                        self.check_len("array", a.len() + 1, pos)?;
                        Rc::make_mut(a).push(other);
                    }
                }
                return Ok(());
            }
            if let Value::Blob(a) = cur {
                if let Value::Blob(b) = &rv {
                    self.check_len("array", a.len() + b.len(), pos)?;
                    Rc::make_mut(a).extend(b.iter().cloned());
                    return Ok(());
                }
            }
        }
        let old = cur.clone();
        let new = self.binop(op, old, rv, pos)?;
        *cur = new;
        Ok(())
    }

    fn set_path(&mut self, cur: &mut Value, keys: &[Key], rv: Value, op: Option<BinOp>, pos: Pos) -> R<()> {
        if keys.is_empty() {
            match op {
                None => {
                    *cur = rv;
                    return Ok(());
                }
                Some(op) => return self.apply_op(cur, op, rv, pos),
            }
        }
        let last = keys.len() == 1;
        match (&keys[0], &mut *cur) {
            (Key::Prop(n, p), Value::Map(m)) => {
                let m = Rc::make_mut(m);
                if !m.contains_key(n) {
                    if !last || op.is_some() {
                        return rt_err(format!("Property not found: {}", n), *p);
                    }
                    self.check_len("map", m.len() + 1, *p)?;
                    m.insert(n.clone(), rv);
                    return Ok(());
                }
                let slot = m.get_mut(n).unwrap();
                self.set_path(slot, &keys[1..], rv, op, pos)
            }
            (Key::Idx(Value::Str(n), p), Value::Map(m)) => {
                let m = Rc::make_mut(m);
                if !m.contains_key(n) {
                    if !last || op.is_some() {
                        return rt_err(format!("Property not found: {}", n), *p);
                    }
                    self.check_len("map", m.len() + 1, *p)?;
                    m.insert(n.clone(), rv);
                    return Ok(());
                }
                let slot = m.get_mut(n).unwrap();
                self.set_path(slot, &keys[1..], rv, op, pos)
            }
            (Key::Idx(Value::Int(i), p), Value::Array(a)) => {
                let n = a.len();
                match norm_index(*i, n) {
                    Some(k) => {
                        let slot = &mut Rc::make_mut(a)[k];
                        self.set_path(slot, &keys[1..], rv, op, pos)
                    }
                    None => arr_bounds(n, *i, *p),
                }
            }
            (Key::Idx(Value::Int(i), p), Value::Blob(a)) if last => {
                let n = a.len();
                let k = match norm_index(*i, n) {
                    Some(k) => k,
                    None => return arr_bounds(n, *i, *p),
                };
                let mut v = Value::Int(a[k] as i64);
                self.set_path(&mut v, &[], rv, op, pos)?;
                match v {
                    Value::Int(x) => Rc::make_mut(a)[k] = x as u8,
                    other => return rt_err(format!("Data type incorrect: {} (expecting i64)", other.type_name()), *p),
                }
                Ok(())
            }
            (Key::Idx(Value::Int(i), p), Value::Str(s)) if last => {
                let chars: Vec<char> = s.chars().collect();
                let k = match norm_index(*i, chars.len()) {
                    Some(k) => k,
                    None => return str_bounds(chars.len(), *i, *p),
                };
                let mut v = Value::Char(chars[k]);
                self.set_path(&mut v, &[], rv, op, pos)?;
                let c = match v {
                    Value::Char(c) => c,
                    other => return rt_err(format!("Data type incorrect: {} (expecting char)", other.type_name()), *p),
                };
                let mut out: String = chars[..k].iter().collect();
                out.push(c);
                out.extend(chars[k + 1..].iter());
                *s = Rc::from(out.as_str());
                Ok(())
            }
            (Key::Idx(r @ (Value::Range(..) | Value::RangeIncl(..)), p), Value::Str(s)) if last => {
                let chars: Vec<char> = s.chars().collect();
                let (start, end) = str_range(r, chars.len());
                let mut v = Value::Str(Rc::from(chars[start..end].iter().collect::<String>().as_str()));
                self.set_path(&mut v, &[], rv, op, pos)?;
                let mut out: String = chars[..start].iter().collect();
                match v {
                    Value::Str(t) => out.push_str(&t),
                    Value::Char(c) => out.push(c),
                    other => return rt_err(format!("Data type incorrect: {} (expecting string)", other.type_name()), *p),
                }
                out.extend(chars[end..].iter());
                self.check_len("string", out.len(), *p)?;
                *s = Rc::from(out.as_str());
                Ok(())
            }
            (Key::Idx(Value::Int(b), p), Value::Int(x)) if last => {
                let k = match norm_index(*b, 64) {
                    Some(k) => k,
                    None => return bit_bounds(*b, *p),
                };
                let mut v = Value::Bool(*x & (1i64 << k) != 0);
                self.set_path(&mut v, &[], rv, op, pos)?;
                match v {
                    Value::Bool(true) => *x |= 1i64 << k,
                    Value::Bool(false) => *x &= !(1i64 << k),
                    other => return rt_err(format!("Data type incorrect: {} (expecting bool)", other.type_name()), *p),
                }
                Ok(())
            }
            (Key::Idx(r @ (Value::Range(..) | Value::RangeIncl(..)), p), Value::Int(x)) if last => {
                let (start, width) = bit_range(r, *p)?;
                let mut v = Value::Int(get_bits(*x, start, width));
                self.set_path(&mut v, &[], rv, op, pos)?;
                match v {
                    Value::Int(bits) => *x = set_bits(*x, start, width, bits),
                    other => return rt_err(format!("Data type incorrect: {} (expecting i64)", other.type_name()), *p),
                }
                Ok(())
            }
            (Key::Prop(n, p), Value::Host(h)) if last && op.is_none() && h.properties.iter().any(|x| x == n) => {
                let mut req = format!("{{\"object\":{},\"property\":{},\"value\":", jstr(&h.name), jstr(n));
                value_to_json(&mut req, &rv, self.limits.max_string_size, 0);
                req.push('}');
                self.host_request(req, *p).map(|_| ())
            }
            (Key::Idx(r @ (Value::Range(..) | Value::RangeIncl(..)), p), Value::Array(_) | Value::Blob(_)) => {
                rt_err(format!("Data type incorrect: {} (expecting i64)", r.type_name()), *p)
            }
            (Key::Prop(n, p), other) => rt_err(format!("Cannot set property {} of {}", n, other.type_name()), *p),
            (Key::Idx(i, p), other) => {
                rt_err(format!("Indexer unavailable: {} [{}]", other.type_name(), i.type_name()), *p)
            }
        }
    }

    /// Navigate mutably to a nested place (for method calls); None if not addressable.
    fn nav_mut<'v>(cur: &'v mut Value, keys: &[Key]) -> Option<&'v mut Value> {
        if keys.is_empty() {
            return Some(cur);
        }
        match (&keys[0], cur) {
            (Key::Prop(n, _), Value::Map(m)) | (Key::Idx(Value::Str(n), _), Value::Map(m)) => {
                let m = Rc::make_mut(m);
                Self::nav_mut(m.get_mut(n)?, &keys[1..])
            }
            (Key::Idx(Value::Int(i), _), Value::Array(a)) => {
                let k = norm_index(*i, a.len())?;
                Self::nav_mut(&mut Rc::make_mut(a)[k], &keys[1..])
            }
            _ => None,
        }
    }

    // ------------------------------------------------------------ calls
    pub fn host_request(&mut self, req: String, pos: Pos) -> R<Value> {
        self.tick(pos)?;
        let resp = self.host.call(&req);
        let j = match parse_json(&resp) {
            Ok(j) => j,
            Err(e) => return rt_err(format!("Invalid host response: {}", e), pos),
        };
        if let Some(e) = j.get("error") {
            let msg = e.as_str().map(|s| s.to_string()).unwrap_or_else(|| {
                let mut s = String::new();
                write_json(&mut s, e);
                s
            });
            return rt_err(msg, pos);
        }
        let v = j.get("ok").map(json_to_value).unwrap_or(Value::Unit);
        self.check_size(&v, pos)?;
        Ok(v)
    }

    fn host_args_json(&self, args: &[Value]) -> String {
        let mut s = String::from("[");
        for (i, a) in args.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            value_to_json(&mut s, a, self.limits.max_string_size, 0);
        }
        s.push(']');
        s
    }

    fn fn_slot(&self, name: &str, arity: usize) -> Option<u32> {
        self.fn_index.get(name)?.iter().find(|(a, _)| *a == arity).map(|(_, i)| *i)
    }

    pub fn find_fn(&self, name: &str, arity: usize) -> Option<Rc<FnDef>> {
        self.fn_slot(name, arity).map(|i| self.fns[i as usize].clone())
    }

    #[inline(never)]
    fn call(&mut self, c: &Call) -> R<Value> {
        if let Some(ns) = &c.namespace {
            let root = ns.split("::").next().unwrap_or_default();
            return rt_err(format!("Module not found: {}", root), c.pos);
        }
        let mut cached = c.cache.get();
        if cached == UNRESOLVED {
            cached = self.fn_slot(&c.name, c.args.len()).unwrap_or(NOT_SCRIPT);
            c.cache.set(cached);
        }
        if cached != NOT_SCRIPT {
            let def = self.fns[cached as usize].clone();
            // push args directly
            let new_base = self.stack.len();
            for a in &c.args {
                let v = self.eval(a)?;
                self.stack.push(v);
            }
            let caller = c.bang.as_ref().map(|n| (n.clone(), self.base));
            return self.invoke(&def, new_base, None, Vec::new(), caller, c.pos).map(|(v, _)| v);
        }
        let mut args = Vec::with_capacity(c.args.len());
        for a in &c.args {
            args.push(self.eval(a)?);
        }
        if self.host_fns.iter().any(|f| *f == c.name) {
            let req = format!("{{\"function\":{},\"args\":{}}}", jstr(&c.name), self.host_args_json(&args));
            return self.host_request(req, c.pos);
        }
        let r = if c.first_mutable {
            // drop the variable's own reference first, so a change needs no copy
            self.take_root(&c.args[0])?;
            let r = crate::builtins::call_builtin(self, &c.name, &mut args, c.pos);
            self.put_root(&c.args[0], args[0].clone());
            r?
        } else {
            crate::builtins::call_builtin(self, &c.name, &mut args, c.pos)?
        };
        match r {
            Some(v) => {
                self.check_size(&v, c.pos)?;
                Ok(v)
            }
            None => self.fn_not_found(&c.name, &args, c.pos),
        }
    }

    pub fn fn_not_found<T>(&self, name: &str, args: &[Value], pos: Pos) -> R<T> {
        let types: Vec<&str> = args.iter().map(|a| a.type_name()).collect();
        rt_err(format!("Function not found: {} ({})", name, types.join(", ")), pos)
    }

    /// Call a script function whose arguments are already on the stack at `new_base`.
    pub fn invoke(
        &mut self,
        def: &Rc<FnDef>,
        new_base: usize,
        this: Option<Value>,
        captures: Vec<Shared>,
        caller: Option<(ScopeNames, usize)>,
        pos: Pos,
    ) -> R<(Value, Option<Value>)> {
        if self.depth >= self.limits.max_call_depth {
            self.stack.truncate(new_base);
            return limit_err(
                "max_call_depth",
                format!("Stack overflow: too many nested function calls (limit max_call_depth = {})", self.limits.max_call_depth),
                pos,
            );
        }
        self.tick(pos)?;
        self.depth += 1;
        self.stack.resize(new_base + def.num_slots as usize, Value::Unit);
        let saved_base = self.base;
        self.base = new_base;
        self.frames.push(Frame { base: new_base, this, captures, dyn_vars: Vec::new(), caller });
        let r = self.exec_block(&def.body);
        let frame = self.frames.pop().unwrap();
        self.base = saved_base;
        self.stack.truncate(new_base);
        self.depth -= 1;
        let v = match r {
            Ok(v) => v,
            Err(Flow::Return(v)) => v,
            Err(Flow::Err(mut e)) => {
                if e.pos.is_none() {
                    e.pos = pos;
                }
                return Err(Flow::Err(e));
            }
            Err(Flow::Break(_)) | Err(Flow::Continue) => return rt_err("break/continue outside a loop", pos),
        };
        Ok((v, frame.this))
    }

    pub fn call_script_fn(&mut self, def: &Rc<FnDef>, args: Vec<Value>, this: Option<Value>, captures: Vec<Shared>, pos: Pos) -> R<(Value, Option<Value>)> {
        let new_base = self.stack.len();
        self.stack.extend(args);
        self.invoke(def, new_base, this, captures, None, pos)
    }

    /// Call a function pointer with arguments (curried values are prepended).
    pub fn call_fnptr(&mut self, fp: &Rc<FnPtr>, args: Vec<Value>, this: Option<Value>, pos: Pos) -> R<(Value, Option<Value>)> {
        let mut all = fp.curry.clone();
        all.extend(args);
        if let Some(def) = &fp.def {
            if def.params.len() != all.len() {
                return rt_err(
                    format!("Function not found: {} with {} parameters (got {})", fp.name, def.params.len(), all.len()),
                    pos,
                );
            }
            return self.call_script_fn(def, all, this, fp.captures.clone(), pos);
        }
        if let Some(def) = self.find_fn(&fp.name, all.len()) {
            return self.call_script_fn(&def, all, this, Vec::new(), pos);
        }
        if let Some(mut t) = this {
            let mut v = vec![t];
            v.extend(all);
            let name = fp.name.clone();
            return match crate::builtins::call_builtin(self, &name, &mut v, pos)? {
                Some(r) => {
                    t = std::mem::take(&mut v[0]);
                    Ok((r, Some(t)))
                }
                None => self.fn_not_found(&name, &v, pos),
            };
        }
        if self.host_fns.iter().any(|f| *f == fp.name) {
            let req = format!("{{\"function\":{},\"args\":{}}}", jstr(&fp.name), self.host_args_json(&all));
            return self.host_request(req, pos).map(|v| (v, None));
        }
        let name = fp.name.clone();
        match crate::builtins::call_builtin(self, &name, &mut all, pos)? {
            Some(v) => Ok((v, None)),
            None => self.fn_not_found(&name, &all, pos),
        }
    }

    /// Arity of what a function pointer will call, if known (for callbacks taking optional index).
    pub fn fnptr_arity(&self, fp: &FnPtr) -> Option<usize> {
        if let Some(def) = &fp.def {
            return Some(def.params.len().saturating_sub(fp.curry.len()));
        }
        for n in 0..4 {
            if self.find_fn(&fp.name, fp.curry.len() + n).is_some() {
                return Some(n);
            }
        }
        None
    }

    /// Callback helper used by array functions: passes (item) or (item, index).
    pub fn call_cb(&mut self, fp: &Rc<FnPtr>, mut args: Vec<Value>, pos: Pos) -> R<Value> {
        if let Some(n) = self.fnptr_arity(fp) {
            if n < args.len() {
                args.truncate(n);
            }
        } else if args.len() > 1 {
            args.truncate(1);
        }
        self.call_fnptr(fp, args, None, pos).map(|(v, _)| v)
    }

    /// Callback for an array element: `args[at]` is the element. A function that takes
    /// no parameter for it sees the element as `this` instead (the book's array API).
    /// Returns the result and the element as the callback left it.
    pub fn call_elem(&mut self, fp: &Rc<FnPtr>, mut args: Vec<Value>, at: usize, pos: Pos) -> R<(Value, Value)> {
        if self.fnptr_arity(fp) == Some(at) {
            let elem = args.remove(at);
            args.truncate(at);
            let (v, this) = self.call_fnptr(fp, args, Some(elem), pos)?;
            return Ok((v, this.unwrap_or_default()));
        }
        let elem = args[at].clone();
        self.call_cb(fp, args, pos).map(|v| (v, elem))
    }

    fn method(&mut self, m: &MethodCall) -> R<Value> {
        let mut args = Vec::with_capacity(m.args.len());
        for a in &m.args {
            args.push(self.eval(a)?);
        }
        if let Some(name) = &m.constant {
            let before = self.eval(&m.target)?;
            if m.safe && before.is_unit() {
                return Ok(Value::Unit);
            }
            let mut t = before.clone();
            let r = self.call_method(&m.name, &mut t, args, m.pos)?;
            if !values_eq(&t, &before) || t.type_name() != before.type_name() {
                return rt_err(
                    format!("Non-pure method '{}' cannot be called on constant {}", m.name, name),
                    m.pos,
                );
            }
            return Ok(r);
        }
        if Self::is_place(&m.target) {
            let mut keys = Vec::new();
            let root = self.place_chain(&m.target, &mut keys)?;
            let mut rv = self.take_root(root)?;
            if m.safe && keys.is_empty() && rv.is_unit() {
                self.put_root(root, rv);
                return Ok(Value::Unit);
            }
            let r = match Self::nav_mut(&mut rv, &keys) {
                Some(target) => {
                    if m.safe && target.is_unit() {
                        Ok(Value::Unit)
                    } else {
                        let mut t = std::mem::take(target);
                        let r = self.call_method(&m.name, &mut t, args, m.pos);
                        // navigation is repeatable because keys are values
                        if let Some(target) = Self::nav_mut(&mut rv, &keys) {
                            *target = t;
                        }
                        r
                    }
                }
                None => {
                    // not addressable (e.g. host property): evaluate by value
                    let mut v = rv.clone();
                    let mut err = None;
                    for k in &keys {
                        let r = match k {
                            Key::Prop(n, p) => self.get_prop(v, n, *p),
                            Key::Idx(i, p) => {
                                let t = v;
                                self.get_index(&t, i, *p)
                            }
                        };
                        match r {
                            Ok(x) => v = x,
                            Err(e) => {
                                err = Some(e);
                                v = Value::Unit;
                                break;
                            }
                        }
                    }
                    match err {
                        Some(e) => Err(e),
                        None if m.safe && v.is_unit() => Ok(Value::Unit),
                        None => self.call_method(&m.name, &mut v, args, m.pos),
                    }
                }
            };
            self.put_root(root, rv);
            return r;
        }
        let mut t = self.eval(&m.target)?;
        if m.safe && t.is_unit() {
            return Ok(Value::Unit);
        }
        self.call_method(&m.name, &mut t, args, m.pos)
    }

    pub fn call_method(&mut self, name: &Rc<str>, this: &mut Value, args: Vec<Value>, pos: Pos) -> R<Value> {
        match this {
            Value::Host(h) if !h.methods.iter().any(|m| m == name) => {
                if &**name == "type_of" && args.is_empty() {
                    return Ok(str_val(&h.type_name));
                }
                let mut all = vec![this.clone()];
                all.extend(args);
                return self.fn_not_found(name, &all, pos);
            }
            Value::Host(h) => {
                let req = format!(
                    "{{\"object\":{},\"method\":{},\"args\":{}}}",
                    jstr(&h.name),
                    jstr(name),
                    self.host_args_json(&args)
                );
                return self.host_request(req, pos);
            }
            Value::FnPtr(fp) if &**name == "call" => {
                let fp = fp.clone();
                return self.call_fnptr(&fp, args, None, pos).map(|(v, _)| v);
            }
            Value::Map(m) => {
                if let Some(Value::FnPtr(fp)) = m.get(name) {
                    let fp = fp.clone();
                    let t = std::mem::take(this);
                    let (v, t) = self.call_fnptr(&fp, args, Some(t), pos)?;
                    if let Some(t) = t {
                        *this = t;
                    }
                    return Ok(v);
                }
            }
            _ => {}
        }
        if let Some(def) = self.find_fn(name, args.len()) {
            let t = std::mem::take(this);
            let r = self.call_script_fn(&def, args, Some(t), Vec::new(), pos);
            return match r {
                Ok((v, t)) => {
                    if let Some(t) = t {
                        *this = t;
                    }
                    Ok(v)
                }
                Err(e) => Err(e),
            };
        }
        if let Some(def) = self.find_fn(name, args.len() + 1) {
            let mut all = vec![this.clone()];
            all.extend(args);
            return self.call_script_fn(&def, all, None, Vec::new(), pos).map(|(v, _)| v);
        }
        if self.host_fns.iter().any(|f| f == name) {
            let mut all = vec![this.clone()];
            all.extend(args);
            let req = format!("{{\"function\":{},\"args\":{}}}", jstr(name), self.host_args_json(&all));
            return self.host_request(req, pos);
        }
        let mut all = Vec::with_capacity(args.len() + 1);
        all.push(std::mem::take(this));
        all.extend(args);
        let r = crate::builtins::call_builtin(self, name, &mut all, pos);
        *this = std::mem::take(&mut all[0]);
        match r? {
            Some(v) => {
                self.check_size(this, pos)?;
                self.check_size(&v, pos)?;
                Ok(v)
            }
            None => {
                if let Value::FnPtr(fp) = &all.get(1).cloned().unwrap_or_default() {
                    // x.call(fp, args) binds `this`
                    if &**name == "call" {
                        let rest: Vec<Value> = all.drain(2..).collect();
                        let t = std::mem::take(this);
                        let (v, t) = self.call_fnptr(fp, rest, Some(t), pos)?;
                        if let Some(t) = t {
                            *this = t;
                        }
                        return Ok(v);
                    }
                }
                all[0] = this.clone();
                self.fn_not_found(name, &all, pos)
            }
        }
    }
}

/// Name of the error kind (as upstream Rhai's `EvalAltResult` variants) for catch maps.
pub fn error_kind(msg: &str) -> &'static str {
    const KINDS: &[(&str, &str)] = &[
        ("Variable not found", "ErrorVariableNotFound"),
        ("Function not found", "ErrorFunctionNotFound"),
        ("Module not found", "ErrorModuleNotFound"),
        ("Property not found", "ErrorPropertyNotFound"),
        ("Array index", "ErrorArrayBounds"),
        ("String index", "ErrorStringBounds"),
        ("Bit-field", "ErrorBitFieldBounds"),
        ("Indexer unavailable", "ErrorIndexingType"),
        ("Data type incorrect", "ErrorMismatchDataType"),
        ("For loop expects", "ErrorFor"),
        ("'this' not bound", "ErrorUnboundThis"),
        ("Non-pure method", "ErrorNonPureMethodCallOnConstant"),
        ("Cannot modify", "ErrorAssignmentToConstant"),
        ("Syntax error", "ErrorParsing"),
    ];
    for (prefix, kind) in KINDS {
        if msg.starts_with(prefix) {
            return kind;
        }
    }
    if msg.contains("overflow") || msg.contains("by zero") || msg.contains("negative power") {
        return "ErrorArithmetic";
    }
    "ErrorRuntime"
}

pub fn jstr(s: &str) -> String {
    let mut o = String::new();
    json_escape(&mut o, s);
    o
}

/// The characters `s[range]` names, as `start..end` positions clamped to `0..n`: a negative
/// start or end counts from the end (`s[1..-1]` drops the first and last characters).
fn str_range(r: &Value, n: usize) -> (usize, usize) {
    let n = n as i64;
    let from_end = |x: i64| if x < 0 { n.saturating_add(x) } else { x };
    let (a, end) = match *r {
        Value::Range(a, b) => (from_end(a), from_end(b)),
        Value::RangeIncl(a, b) => (from_end(a), from_end(b).saturating_add(1)),
        _ => (0, 0),
    };
    let start = a.clamp(0, n);
    (start as usize, end.clamp(start, n) as usize)
}

pub fn norm_index(i: i64, len: usize) -> Option<usize> {
    if i >= 0 {
        if (i as u64) < len as u64 {
            Some(i as usize)
        } else {
            None
        }
    } else {
        let k = len as i64 + i;
        if k >= 0 {
            Some(k as usize)
        } else {
            None
        }
    }
}

fn arr_bounds<T>(len: usize, i: i64, pos: Pos) -> R<T> {
    match len {
        0 => rt_err(format!("Array index {} out of bounds: array is empty", i), pos),
        1 => rt_err(format!("Array index {} out of bounds: only 1 element in array", i), pos),
        _ => rt_err(format!("Array index {} out of bounds: only {} elements in array", i, len), pos),
    }
}

pub fn str_bounds<T>(len: usize, i: i64, pos: Pos) -> R<T> {
    match len {
        0 => rt_err(format!("String index {} out of bounds: string is empty", i), pos),
        1 => rt_err(format!("String index {} out of bounds: only 1 character in string", i), pos),
        _ => rt_err(format!("String index {} out of bounds: only {} characters in string", i, len), pos),
    }
}

pub fn bit_bounds<T>(i: i64, pos: Pos) -> R<T> {
    rt_err(format!("Bit-field index {} out of bounds: only 64 bits in bit-field", i), pos)
}

/// Start and width of a bit range (`x[2..5]`): ranges count from the LSB, no negatives.
pub fn bit_range(r: &Value, pos: Pos) -> R<(u32, u32)> {
    let (a, end) = match *r {
        Value::Range(a, b) => (a, b),
        Value::RangeIncl(a, b) => (a, b.saturating_add(1)),
        _ => return rt_err(format!("Data type incorrect: {} (expecting range)", r.type_name()), pos),
    };
    if !(0..64).contains(&a) || end > 64 || end < a {
        return rt_err(format!("Bit-field range out of bounds: {}..{}", a, end), pos);
    }
    Ok((a as u32, (end - a) as u32))
}

fn bit_mask(width: u32) -> u64 {
    if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    }
}

pub fn get_bits(x: i64, start: u32, width: u32) -> i64 {
    (((x as u64) >> start) & bit_mask(width)) as i64
}

pub fn set_bits(x: i64, start: u32, width: u32, bits: i64) -> i64 {
    let mask = bit_mask(width) << start;
    (((x as u64) & !mask) | (((bits as u64) << start) & mask)) as i64
}

pub fn values_eq(a: &Value, b: &Value) -> bool {
    use Value::*;
    match (a, b) {
        (Unit, Unit) => true,
        (Bool(x), Bool(y)) => x == y,
        (Int(x), Int(y)) => x == y,
        (Float(x), Float(y)) => float_cmp(BinOp::Eq, *x, *y),
        (Int(x), Float(y)) | (Float(y), Int(x)) => float_cmp(BinOp::Eq, *x as f64, *y),
        (Char(x), Char(y)) => x == y,
        (Str(x), Str(y)) => x == y,
        (Str(s), Char(c)) | (Char(c), Str(s)) => s.chars().eq(std::iter::once(*c)),
        (Array(x), Array(y)) => Rc::ptr_eq(x, y) || (x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| values_eq(p, q))),
        (Map(x), Map(y)) => {
            Rc::ptr_eq(x, y)
                || (x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).map_or(false, |w| values_eq(v, w))))
        }
        (Blob(x), Blob(y)) => x == y,
        (Range(a, b), Range(c, d)) | (RangeIncl(a, b), RangeIncl(c, d)) => a == c && b == d,
        (FnPtr(x), FnPtr(y)) => x.name == y.name && x.curry.len() == y.curry.len(),
        (Timestamp(x), Timestamp(y)) => x == y,
        (Host(x), Host(y)) => x.name == y.name,
        _ => false,
    }
}

fn ordered(op: BinOp, o: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        BinOp::Lt => o == Less,
        BinOp::Le => o != Greater,
        BinOp::Gt => o == Greater,
        _ => o != Less,
    }
}

/// A string or char as text, for comparisons between the two.
fn text_of(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        Value::Char(c) => c.to_string(),
        _ => String::new(),
    }
}

/// FLOAT comparison as the book's "Floating-point Comparison" page defines it: within
/// epsilon of zero, or within `max(|x|, |y|) × epsilon` of each other, counts as equal.
pub fn float_cmp(op: BinOp, x: f64, y: f64) -> bool {
    let eps = f64::EPSILON;
    let tol = if x == 0.0 || y == 0.0 { eps } else { x.abs().max(y.abs()) * eps };
    match op {
        BinOp::Eq => x == y || (x - y).abs() < tol,
        BinOp::Gt => x - y >= tol,
        BinOp::Ge => x == y || x - y >= -tol,
        BinOp::Lt => y - x >= tol,
        _ => x == y || y - x >= -tol,
    }
}

pub fn stmt_pos(e: &Expr) -> Pos {
    match e {
        Expr::Local(_, p)
        | Expr::Bin(_, _, _, p)
        | Expr::Assign(_, _, _, p)
        | Expr::If(_, _, _, p)
        | Expr::While(_, _, p)
        | Expr::Throw(_, p)
        | Expr::Return(_, p) => *p,
        Expr::Call(c) => c.pos,
        Expr::Method(m) => m.pos,
        Expr::For(f) => f.pos,
        _ => Pos::NONE,
    }
}
