//! Recursive-descent parser producing a resolved tree (variables → slots).

use std::cell::Cell;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet as StdHashSet;
use std::hash::BuildHasherDefault;

type HashSet<T> = StdHashSet<T, BuildHasherDefault<DefaultHasher>>;
use std::rc::Rc;

use crate::ast::*;
use crate::lexer::{Lexer, Part, Pos, Tok};
use crate::value::{str_val, Value};

pub struct ParseError {
    pub msg: String,
    pub pos: Pos,
    /// Set when a parse-time limit was hit (e.g. "max_expr_depth").
    pub limit: Option<&'static str>,
}

type PResult<T> = Result<T, ParseError>;

struct Var {
    name: Rc<str>,
    slot: u32,
    is_const: bool,
}

struct FnCtx {
    vars: Vec<Var>,
    next: u32,
    max: u32,
    is_closure: bool,
    is_fn: bool,
    captures: Vec<Rc<str>>,
    cap_srcs: Vec<CapSrc>,
}

impl FnCtx {
    fn new(is_closure: bool, is_fn: bool, first_slot: u32) -> Self {
        FnCtx {
            vars: Vec::new(),
            next: first_slot,
            max: first_slot,
            is_closure,
            is_fn,
            captures: Vec::new(),
            cap_srcs: Vec::new(),
        }
    }
    fn find(&self, name: &str) -> Option<&Var> {
        self.vars.iter().rev().find(|v| &*v.name == name)
    }
}

pub struct Program {
    pub main: Block,
    pub num_slots: u32,
    pub fns: Vec<Rc<FnDef>>,
    /// Top-level variables after the script (name, slot) — used by `eval`.
    pub top_names: Vec<(Rc<str>, u32)>,
    /// Top-level constants (name, slot) reachable through `global::`.
    pub global_consts: Vec<(Rc<str>, u32)>,
}

pub struct Parser {
    toks: Vec<(Tok, Pos)>,
    i: usize,
    ctxs: Vec<FnCtx>,
    fns: Vec<Rc<FnDef>>,
    fn_names: HashSet<(Rc<str>, usize)>,
    host_objects: Rc<Vec<Rc<str>>>,
    depth: usize,
    max_depth: usize,
    anon: Rc<Cell<u32>>,
    in_loop: usize,
    global_consts: Vec<(Rc<str>, u32)>,
    pub max_string: usize,
    else_links: usize,
}

fn is_block_like(e: &Expr) -> bool {
    matches!(
        e,
        Expr::Block(_)
            | Expr::If(..)
            | Expr::Switch(_)
            | Expr::While(..)
            | Expr::Loop(_)
            | Expr::Do(..)
            | Expr::For(_)
            | Expr::Try(..)
            | Expr::Nop
    )
}

pub fn tokenize(src: &str, start: Pos) -> PResult<Vec<(Tok, Pos)>> {
    Lexer::new(src, start).tokenize().map_err(|e| ParseError { msg: e.msg, pos: e.pos, limit: None })
}

impl Parser {
    pub fn new(
        src: &str,
        host_objects: Rc<Vec<Rc<str>>>,
        max_depth: usize,
        anon: Rc<Cell<u32>>,
    ) -> PResult<Self> {
        Ok(Parser {
            toks: tokenize(src, Pos::NONE)?,
            i: 0,
            ctxs: Vec::new(),
            fns: Vec::new(),
            fn_names: HashSet::default(),
            host_objects,
            depth: 0,
            max_depth,
            anon,
            in_loop: 0,
            global_consts: Vec::new(),
            max_string: usize::MAX,
            else_links: 0,
        })
    }

    /// Parse a whole script. `predefined` are top-level names that already have slots
    /// (e.g. `args`, or the caller's variables for `eval`).
    pub fn parse_program(
        mut self,
        predefined: &[(Rc<str>, u32, bool)],
        first_slot: u32,
        allow_fns: bool,
    ) -> PResult<Program> {
        let mut ctx = FnCtx::new(false, false, first_slot);
        for (n, s, c) in predefined {
            ctx.vars.push(Var { name: n.clone(), slot: *s, is_const: *c });
        }
        self.ctxs.push(ctx);
        let mut stmts = Vec::new();
        while !self.at_eof() {
            if let Some(s) = self.statement(true, allow_fns)? {
                stmts.push(s);
            }
        }
        let ctx = self.ctxs.pop().unwrap();
        let top_names = ctx.vars.iter().map(|v| (v.name.clone(), v.slot)).collect();
        Ok(Program {
            main: Block { stmts },
            num_slots: ctx.max,
            fns: self.fns,
            top_names,
            global_consts: self.global_consts,
        })
    }

    // ------------------------------------------------------------ token helpers
    fn peek(&self) -> &Tok {
        &self.toks[self.i].0
    }
    fn peek_at(&self, k: usize) -> &Tok {
        let j = (self.i + k).min(self.toks.len() - 1);
        &self.toks[j].0
    }
    fn pos(&self) -> Pos {
        self.toks[self.i].1
    }
    fn at_eof(&self) -> bool {
        matches!(self.peek(), Tok::Eof)
    }
    fn advance(&mut self) -> (Tok, Pos) {
        let t = self.toks[self.i].clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }
    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek(), Tok::Op(o) if *o == op)
    }
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Kw(k) if *k == kw)
    }
    fn eat_op(&mut self, op: &str) -> bool {
        if self.is_op(op) {
            self.advance();
            true
        } else {
            false
        }
    }
    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.advance();
            true
        } else {
            false
        }
    }
    fn err<T>(&self, msg: impl Into<String>) -> PResult<T> {
        Err(ParseError { msg: msg.into(), pos: self.pos(), limit: None })
    }
    fn expect_op(&mut self, op: &str, what: &str) -> PResult<()> {
        if self.eat_op(op) {
            Ok(())
        } else if self.at_eof() {
            self.err(format!("Expecting '{}' {} (found end of script)", op, what))
        } else {
            self.err(format!("Expecting '{}' {}", op, what))
        }
    }
    fn ident(&mut self, what: &str) -> PResult<Rc<str>> {
        match self.peek().clone() {
            Tok::Ident(s) => {
                self.advance();
                Ok(Rc::from(s.as_str()))
            }
            Tok::Kw(k) => self.err(format!("'{}' is a keyword and cannot be used as {}", k, what)),
            _ => self.err(format!("Expecting {}", what)),
        }
    }

    // ------------------------------------------------------------ scopes
    fn ctx(&mut self) -> &mut FnCtx {
        self.ctxs.last_mut().unwrap()
    }
    fn declare(&mut self, name: Rc<str>, is_const: bool) -> u32 {
        let c = self.ctx();
        let slot = c.next;
        c.next += 1;
        if c.next > c.max {
            c.max = c.next;
        }
        c.vars.push(Var { name, slot, is_const });
        slot
    }
    fn scope_enter(&self) -> (usize, u32) {
        let c = self.ctxs.last().unwrap();
        (c.vars.len(), c.next)
    }
    fn scope_exit(&mut self, mark: (usize, u32)) {
        let c = self.ctx();
        c.vars.truncate(mark.0);
        c.next = mark.1;
    }
    fn visible_names(&self) -> ScopeNames {
        let c = self.ctxs.last().unwrap();
        let mut v: Vec<(Rc<str>, u32)> = Vec::new();
        for var in c.vars.iter().rev() {
            if !v.iter().any(|(n, _)| *n == var.name) {
                v.push((var.name.clone(), var.slot));
            }
        }
        Rc::new(v)
    }
    fn capture(&mut self, level: usize, name: &Rc<str>) -> Option<u32> {
        if let Some(i) = self.ctxs[level].captures.iter().position(|n| n == name) {
            return Some(i as u32);
        }
        if level == 0 || !self.ctxs[level].is_closure {
            return None;
        }
        let parent = level - 1;
        let src = if let Some(v) = self.ctxs[parent].find(name) {
            CapSrc::Local(v.slot)
        } else if self.ctxs[parent].is_closure {
            CapSrc::Captured(self.capture(parent, name)?)
        } else {
            return None;
        };
        let c = &mut self.ctxs[level];
        c.captures.push(name.clone());
        c.cap_srcs.push(src);
        Some((c.captures.len() - 1) as u32)
    }
    fn resolve(&mut self, name: &Rc<str>, pos: Pos) -> Expr {
        if let Some(v) = self.ctxs.last().unwrap().find(name) {
            return Expr::Local(v.slot, pos);
        }
        let top = self.ctxs.len() - 1;
        if let Some(i) = self.capture(top, name) {
            return Expr::Captured(i, pos);
        }
        if self.host_objects.iter().any(|h| h == name) {
            return Expr::GlobalConst(name.clone(), pos);
        }
        Expr::DynVar(name.clone(), pos)
    }
    fn is_const_var(&self, name: &str) -> bool {
        self.ctxs.last().unwrap().find(name).map_or(false, |v| v.is_const)
    }

    // ------------------------------------------------------------ statements
    fn block(&mut self) -> PResult<Block> {
        self.expect_op("{", "to start a statement block")?;
        let mark = self.scope_enter();
        let mut stmts = Vec::new();
        loop {
            if self.eat_op("}") {
                break;
            }
            if self.at_eof() {
                return self.err("Expecting '}' to end a statement block (found end of script)");
            }
            if let Some(s) = self.statement(false, false)? {
                stmts.push(s);
            }
        }
        self.scope_exit(mark);
        Ok(Block { stmts })
    }

    fn end_statement(&mut self, e: &Expr) -> PResult<()> {
        if self.eat_op(";") {
            return Ok(());
        }
        if is_block_like(e) || self.is_op("}") || self.at_eof() {
            return Ok(());
        }
        self.err("Expecting ';' to terminate this statement")
    }

    fn statement(&mut self, top: bool, allow_fns: bool) -> PResult<Option<Expr>> {
        if self.eat_op(";") {
            return Ok(None);
        }
        let pos = self.pos();
        let e = match self.peek().clone() {
            Tok::Kw("fn") | Tok::Kw("private") => {
                if !top || !allow_fns {
                    return self.err("Functions can only be defined at global level");
                }
                let private = self.eat_kw("private");
                self.fn_def(private)?;
                return Ok(None);
            }
            Tok::Kw("let") | Tok::Kw("const") => {
                let is_const = self.is_kw("const");
                self.advance();
                let e = self.let_stmt(is_const)?;
                if is_const && top && self.ctxs.len() == 1 {
                    if let Expr::Let(slot, _) = &e {
                        let name = self.ctxs[0].vars.last().unwrap().name.clone();
                        self.global_consts.push((name, *slot));
                    }
                }
                self.end_statement(&e)?;
                return Ok(Some(e));
            }
            Tok::Kw("export") => {
                if !top || self.ctxs.len() > 1 {
                    return self.err("Export statement can only be defined at global level");
                }
                self.advance();
                if self.is_kw("let") || self.is_kw("const") {
                    let is_const = self.is_kw("const");
                    self.advance();
                    self.let_stmt(is_const)?
                } else {
                    self.ident("a variable name")?;
                    if self.eat_kw("as") {
                        self.ident("an alias name")?;
                    }
                    Expr::Nop
                }
            }
            Tok::Kw("import") => {
                self.advance();
                let path = self.expr()?;
                let name = match path {
                    Expr::Const(Value::Str(s)) => s,
                    _ => Rc::from("<expression>"),
                };
                if self.eat_kw("as") {
                    self.ident("a module alias")?;
                }
                Expr::Import(name, pos)
            }
            Tok::Kw("try") => {
                self.advance();
                let body = self.block()?;
                if !self.eat_kw("catch") {
                    return self.err("Expecting 'catch' after a 'try' block");
                }
                let mark = self.scope_enter();
                let var = if self.eat_op("(") {
                    let n = self.ident("an error variable name")?;
                    self.expect_op(")", "to close the catch variable")?;
                    Some(self.declare(n, false))
                } else {
                    None
                };
                let catch = self.block()?;
                self.scope_exit(mark);
                Expr::Try(Box::new(body), var, Box::new(catch), pos)
            }
            Tok::Kw("if") | Tok::Kw("switch") | Tok::Kw("while") | Tok::Kw("loop") | Tok::Kw("do")
            | Tok::Kw("for")
            | Tok::Op("{") => {
                // Control-flow statements (and blocks) at statement start end at their
                // closing brace: `for … { } -1` is two statements, as in Rhai.
                self.depth += 1;
                if self.depth > self.max_depth {
                    return self.depth_error(pos);
                }
                let e = self.primary();
                self.depth -= 1;
                let e = e?;
                if matches!(e, Expr::Do(..)) {
                    if !self.eat_op(";") && !self.is_op("}") && !self.at_eof() {
                        return self.err("Expecting ';' to terminate this statement");
                    }
                } else {
                    self.eat_op(";");
                }
                return Ok(Some(e));
            }
            _ => {
                let e = self.expr_or_assign()?;
                self.end_statement(&e)?;
                return Ok(Some(e));
            }
        };
        self.end_statement(&e)?;
        Ok(Some(e))
    }

    /// An expression, or an assignment `lhs op= rhs` (statement level / closure bodies).
    fn expr_or_assign(&mut self) -> PResult<Expr> {
        let e = self.expr()?;
        if let Tok::Op(op) = self.peek().clone() {
            let bop = match op {
                "=" => Some(None),
                "+=" => Some(Some(BinOp::Add)),
                "-=" => Some(Some(BinOp::Sub)),
                "*=" => Some(Some(BinOp::Mul)),
                "/=" => Some(Some(BinOp::Div)),
                "%=" => Some(Some(BinOp::Rem)),
                "**=" => Some(Some(BinOp::Pow)),
                "<<=" => Some(Some(BinOp::Shl)),
                ">>=" => Some(Some(BinOp::Shr)),
                "&=" => Some(Some(BinOp::BitAnd)),
                "|=" => Some(Some(BinOp::BitOr)),
                "^=" => Some(Some(BinOp::BitXor)),
                _ => None,
            };
            if let Some(bop) = bop {
                let apos = self.pos();
                self.check_assignable(&e, apos)?;
                self.advance();
                let rhs = self.expr()?;
                return Ok(Expr::Assign(Box::new(e), Box::new(rhs), bop, apos));
            }
        }
        Ok(e)
    }

    fn const_root(&self, e: &Expr) -> Option<Rc<str>> {
        let mut root = e;
        while let Expr::Index(t, _, _, _) | Expr::Prop(t, _, _, _) = root {
            root = t;
        }
        if let Expr::Local(slot, _) = root {
            let c = self.ctxs.last().unwrap();
            if let Some(v) = c.vars.iter().rev().find(|v| v.slot == *slot) {
                if v.is_const {
                    return Some(v.name.clone());
                }
            }
        }
        None
    }

    fn check_assignable(&self, e: &Expr, pos: Pos) -> PResult<()> {
        let mut root = e;
        loop {
            match root {
                Expr::Index(t, _, false, _) | Expr::Prop(t, _, false, _) => root = t,
                Expr::Local(..) | Expr::Captured(..) | Expr::This(_) | Expr::DynVar(..) => break,
                Expr::GlobalConst(..) if !matches!(e, Expr::GlobalConst(..)) => break,
                Expr::GlobalConst(n, _) => {
                    return Err(ParseError {
                        msg: format!("Cannot assign to constant {}", n),
                        pos,
                        limit: None,
                    })
                }
                _ => {
                    return Err(ParseError {
                        msg: "Cannot assign to this expression".into(),
                        pos,
                        limit: None,
                    })
                }
            }
        }
        if let Expr::Local(slot, _) = root {
            let c = self.ctxs.last().unwrap();
            if let Some(v) = c.vars.iter().rev().find(|v| v.slot == *slot) {
                if v.is_const && self.is_const_var(&v.name) {
                    return Err(ParseError {
                        msg: format!("Cannot assign to constant {}", v.name),
                        pos,
                        limit: None,
                    });
                }
            }
        }
        Ok(())
    }

    fn let_stmt(&mut self, is_const: bool) -> PResult<Expr> {
        let name = self.ident("a variable name")?;
        let value = if self.eat_op("=") {
            self.expr()?
        } else if is_const {
            return self.err("Expecting '=' after constant name");
        } else {
            Expr::Const(Value::Unit)
        };
        // declare after the initializer so `let x = x + 1` sees the outer x
        let slot = self.declare(name, is_const);
        Ok(Expr::Let(slot, Box::new(value)))
    }

    fn params(&mut self, close: &str) -> PResult<Vec<Rc<str>>> {
        let mut ps: Vec<Rc<str>> = Vec::new();
        loop {
            if self.eat_op(close) {
                break;
            }
            let p = self.ident("a parameter name")?;
            if ps.contains(&p) {
                return self.err(format!("Duplicated parameter name: {}", p));
            }
            ps.push(p);
            if !self.eat_op(",") {
                self.expect_op(close, "to close the parameters list")?;
                break;
            }
        }
        Ok(ps)
    }

    fn fn_def(&mut self, private: bool) -> PResult<()> {
        let pos = self.pos();
        self.advance(); // fn
        let name = self.ident("a function name")?;
        self.expect_op("(", "after the function name")?;
        let params = self.params(")")?;
        if !self.fn_names.insert((name.clone(), params.len())) {
            return Err(ParseError {
                msg: format!("Function '{}' with {} parameters already exists", name, params.len()),
                pos,
                limit: None,
            });
        }
        self.ctxs.push(FnCtx::new(false, true, 0));
        for p in &params {
            self.declare(p.clone(), false);
        }
        let saved = self.in_loop;
        self.in_loop = 0;
        let body = self.block()?;
        self.in_loop = saved;
        let c = self.ctxs.pop().unwrap();
        self.fns.push(Rc::new(FnDef { name, params, body, num_slots: c.max, private, pos }));
        Ok(())
    }

    // ------------------------------------------------------------ expressions
    pub fn expr(&mut self) -> PResult<Expr> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(ParseError {
                msg: format!(
                    "Expression exceeds maximum complexity (limit max_expr_depth = {})",
                    self.max_depth
                ),
                pos: self.pos(),
                limit: Some("max_expr_depth"),
            });
        }
        let r = self.binary(0);
        self.depth -= 1;
        r
    }

    /// A condition: literals that can never be a bool are rejected while parsing.
    fn bool_expr(&mut self) -> PResult<Expr> {
        let pos = self.pos();
        let e = self.expr()?;
        check_bool(&e, pos)?;
        Ok(e)
    }

    fn depth_error<T>(&self, pos: Pos) -> PResult<T> {
        Err(ParseError {
            msg: format!(
                "Expression exceeds maximum complexity (limit max_expr_depth = {})",
                self.max_depth
            ),
            pos,
            limit: Some("max_expr_depth"),
        })
    }

    /// Long left-leaning chains (`a + b + c …`, `x.a.b.c …`, `else if …`) nest the tree
    /// too: every 8 links count as one level of expression depth.
    fn check_links(&self, links: usize, pos: Pos) -> PResult<()> {
        if self.depth + links / 8 > self.max_depth {
            return self.depth_error(pos);
        }
        Ok(())
    }

    fn bin_prec(&self) -> Option<(u8, &'static str)> {
        let op = match self.peek() {
            Tok::Op(o) => *o,
            Tok::Kw("in") => "in",
            _ => return None,
        };
        let p = match op {
            "??" => 20,
            "||" | "|" | "^" => 30,
            "&&" | "&" => 60,
            "==" | "!=" => 90,
            "in" | "!in" => 110,
            "<" | "<=" | ">" | ">=" => 130,
            ".." | "..=" => 140,
            "+" | "-" => 150,
            "*" | "/" | "%" => 180,
            "**" => 190,
            "<<" | ">>" => 210,
            _ => return None,
        };
        Some((p, op))
    }

    fn binary(&mut self, min: u8) -> PResult<Expr> {
        let mut lhs = self.unary()?;
        let mut links = 0;
        while let Some((prec, op)) = self.bin_prec() {
            if prec < min {
                break;
            }
            let pos = self.pos();
            links += 1;
            self.check_links(links, pos)?;
            self.advance();
            let next_min = if op == "**" { prec } else { prec + 1 };
            self.depth += 1;
            if self.depth > self.max_depth {
                return Err(ParseError {
                    msg: format!(
                        "Expression exceeds maximum complexity (limit max_expr_depth = {})",
                        self.max_depth
                    ),
                    pos,
                    limit: Some("max_expr_depth"),
                });
            }
            let rhs_pos = self.pos();
            let rhs = self.binary(next_min)?;
            self.depth -= 1;
            if op == "&&" || op == "||" {
                check_bool(&lhs, pos)?;
                check_bool(&rhs, rhs_pos)?;
            }
            let (l, r) = (Box::new(lhs), Box::new(rhs));
            lhs = match op {
                "??" => Expr::Coalesce(l, r),
                "||" => Expr::Or(l, r, pos),
                "&&" => Expr::And(l, r, pos),
                _ => {
                    let b = match op {
                        "|" => BinOp::BitOr,
                        "^" => BinOp::BitXor,
                        "&" => BinOp::BitAnd,
                        "==" => BinOp::Eq,
                        "!=" => BinOp::Ne,
                        "in" => BinOp::In,
                        "!in" => BinOp::NotIn,
                        "<" => BinOp::Lt,
                        "<=" => BinOp::Le,
                        ">" => BinOp::Gt,
                        ">=" => BinOp::Ge,
                        ".." => BinOp::Range,
                        "..=" => BinOp::RangeIncl,
                        "+" => BinOp::Add,
                        "-" => BinOp::Sub,
                        "*" => BinOp::Mul,
                        "/" => BinOp::Div,
                        "%" => BinOp::Rem,
                        "**" => BinOp::Pow,
                        "<<" => BinOp::Shl,
                        _ => BinOp::Shr,
                    };
                    fold(b, l, r, pos)
                }
            };
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> PResult<Expr> {
        let pos = self.pos();
        let op = if self.is_op("-") {
            Some(UnOp::Neg)
        } else if self.is_op("+") {
            Some(UnOp::Plus)
        } else if self.is_op("!") {
            Some(UnOp::Not)
        } else {
            None
        };
        if let Some(op) = op {
            self.advance();
            self.depth += 1;
            if self.depth > self.max_depth {
                return Err(ParseError {
                    msg: format!(
                        "Expression exceeds maximum complexity (limit max_expr_depth = {})",
                        self.max_depth
                    ),
                    pos,
                    limit: Some("max_expr_depth"),
                });
            }
            if op == UnOp::Neg && matches!(self.peek(), Tok::IntMinMagnitude) {
                self.advance();
                self.depth -= 1;
                return self.postfix(Expr::Const(Value::Int(i64::MIN)));
            }
            let e = self.unary()?;
            self.depth -= 1;
            return Ok(match (op, e) {
                (UnOp::Neg, Expr::Const(Value::Int(i))) if i != i64::MIN => Expr::Const(Value::Int(-i)),
                (UnOp::Neg, Expr::Const(Value::Float(f))) => Expr::Const(Value::Float(-f)),
                (op, e) => Expr::Unary(op, Box::new(e), pos),
            });
        }
        let e = self.primary()?;
        self.postfix(e)
    }

    fn args(&mut self) -> PResult<Vec<Expr>> {
        let mut args = Vec::new();
        loop {
            if self.eat_op(")") {
                break;
            }
            args.push(self.expr()?);
            if !self.eat_op(",") {
                self.expect_op(")", "to close the arguments list of this function call")?;
                break;
            }
        }
        Ok(args)
    }

    fn postfix(&mut self, mut e: Expr) -> PResult<Expr> {
        let mut links = 0;
        loop {
            let pos = self.pos();
            if self.is_op(".") || self.is_op("?.") || self.is_op("[") || self.is_op("?[") {
                links += 1;
                self.check_links(links, pos)?;
            }
            if self.is_op(".") || self.is_op("?.") {
                let safe = self.is_op("?.");
                self.advance();
                let name: Rc<str> = match self.peek().clone() {
                    Tok::Ident(s) => Rc::from(s.as_str()),
                    _ => return self.err("Expecting name of a property"),
                };
                let npos = self.pos();
                self.advance();
                if self.is_op("!") && matches!(self.peek_at(1), Tok::Op("(")) {
                    return self.err("'!' cannot be used in method-call style");
                }
                if self.eat_op("(") {
                    let args = self.args()?;
                    if &*name == "is_shared" && args.is_empty() && is_variable(&e) {
                        e = Expr::IsShared(Box::new(e));
                        continue;
                    }
                    let constant = self.const_root(&e);
                    e = Expr::Method(Box::new(MethodCall { constant, target: e, name, args, safe, pos: npos }));
                } else {
                    e = Expr::Prop(Box::new(e), name, safe, npos);
                }
            } else if self.is_op("[") || self.is_op("?[") {
                let safe = self.is_op("?[");
                self.advance();
                let ipos = self.pos();
                let idx = self.expr()?;
                check_literal_index(&e, &idx, ipos)?;
                self.expect_op("]", "to close the index expression")?;
                e = Expr::Index(Box::new(e), Box::new(idx), safe, pos);
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> PResult<Expr> {
        let (tok, pos) = (self.peek().clone(), self.pos());
        match tok {
            Tok::Int(i) => {
                self.advance();
                Ok(Expr::Const(Value::Int(i)))
            }
            Tok::IntMinMagnitude => self.err("Integer literal too large: 9223372036854775808"),
            Tok::Float(f) => {
                self.advance();
                Ok(Expr::Const(Value::Float(f)))
            }
            Tok::Str(s) => {
                if s.len() > self.max_string {
                    return Err(ParseError {
                        msg: format!(
                            "Literal string too large (limit max_string_size = {})",
                            self.max_string
                        ),
                        pos,
                        limit: Some("max_string_size"),
                    });
                }
                self.advance();
                Ok(Expr::Const(str_val(&s)))
            }
            Tok::Char(c) => {
                self.advance();
                Ok(Expr::Const(Value::Char(c)))
            }
            Tok::Interp(parts) => {
                self.advance();
                let mut es = Vec::new();
                for p in parts {
                    match p {
                        Part::Lit(s) => es.push(Expr::Const(str_val(&s))),
                        Part::Code(code, cpos) => {
                            let toks = tokenize(&code, cpos)?;
                            let saved_toks = std::mem::replace(&mut self.toks, toks);
                            let saved_i = self.i;
                            self.i = 0;
                            let mark = self.scope_enter();
                            let mut stmts = Vec::new();
                            let r = (|| -> PResult<()> {
                                while !self.at_eof() {
                                    if let Some(s) = self.statement(false, false)? {
                                        stmts.push(s);
                                    }
                                }
                                Ok(())
                            })();
                            self.scope_exit(mark);
                            self.toks = saved_toks;
                            self.i = saved_i;
                            r?;
                            es.push(if stmts.len() == 1 {
                                stmts.pop().unwrap()
                            } else {
                                Expr::Block(Box::new(Block { stmts }))
                            });
                        }
                    }
                }
                Ok(Expr::Interp(es, pos))
            }
            Tok::Kw("true") => {
                self.advance();
                Ok(Expr::Const(Value::Bool(true)))
            }
            Tok::Kw("false") => {
                self.advance();
                Ok(Expr::Const(Value::Bool(false)))
            }
            Tok::Kw("this") => {
                self.advance();
                if !self.ctxs.iter().any(|c| c.is_fn) {
                    return Err(ParseError {
                        msg: "'this' can only be used in functions".into(),
                        pos,
                        limit: None,
                    });
                }
                Ok(Expr::This(pos))
            }
            Tok::Kw("global") => {
                self.advance();
                self.expect_op("::", "after 'global'")?;
                let n = self.ident("a constant name")?;
                Ok(Expr::GlobalConst(n, pos))
            }
            Tok::Kw("return") | Tok::Kw("throw") | Tok::Kw("break") | Tok::Kw("continue") => self.jump_expr(),
            Tok::Kw("if") => self.if_expr(),
            Tok::Kw("switch") => self.switch_expr(),
            Tok::Kw("while") => {
                self.advance();
                let cond = self.bool_expr()?;
                let body = self.loop_body()?;
                Ok(Expr::While(Box::new(cond), Box::new(body), pos))
            }
            Tok::Kw("loop") => {
                self.advance();
                let body = self.loop_body()?;
                Ok(Expr::Loop(Box::new(body)))
            }
            Tok::Kw("do") => {
                self.advance();
                let body = self.loop_body()?;
                let until = if self.eat_kw("until") {
                    true
                } else if self.eat_kw("while") {
                    false
                } else {
                    return self.err("Expecting 'while' or 'until' after a 'do' block");
                };
                let cond = self.bool_expr()?;
                Ok(Expr::Do(Box::new(body), Box::new(cond), until, pos))
            }
            Tok::Kw("for") => self.for_expr(),
            Tok::Op("(") => {
                let (_, open) = self.advance();
                // the unit literal is the one token `()`; `( )` is an empty grouping (an error)
                let close = self.pos();
                if self.is_op(")") && close.line == open.line && close.col == open.col + 1 {
                    self.advance();
                    return Ok(Expr::Const(Value::Unit));
                }
                let e = self.expr()?;
                self.expect_op(")", "to close the parenthesized expression")?;
                Ok(e)
            }
            Tok::Op("{") => Ok(Expr::Block(Box::new(self.block()?))),
            Tok::Op("[") => {
                self.advance();
                let mut items = Vec::new();
                loop {
                    if self.eat_op("]") {
                        break;
                    }
                    items.push(self.expr()?);
                    if !self.eat_op(",") {
                        self.expect_op("]", "to close the array literal")?;
                        break;
                    }
                }
                if items.iter().all(|e| matches!(e, Expr::Const(_))) && items.len() > 0 {
                    // keep as literal expression: values are cloned cheaply at runtime
                }
                Ok(Expr::Array(items, pos))
            }
            Tok::Op("#{") => {
                self.advance();
                let mut items: Vec<(Rc<str>, Expr)> = Vec::new();
                loop {
                    if self.eat_op("}") {
                        break;
                    }
                    let key: Rc<str> = match self.peek().clone() {
                        Tok::Ident(s) | Tok::Str(s) => Rc::from(s.as_str()),
                        _ => return self.err("Expecting name of a property"),
                    };
                    let kpos = self.pos();
                    self.advance();
                    if items.iter().any(|(k, _)| *k == key) {
                        return Err(ParseError {
                            msg: format!("Duplicated property name in object map: {}", key),
                            pos: kpos,
                            limit: None,
                        });
                    }
                    self.expect_op(":", "after the property name")?;
                    let v = self.expr()?;
                    items.push((key, v));
                    if !self.eat_op(",") {
                        self.expect_op("}", "to close the object map literal")?;
                        break;
                    }
                }
                Ok(Expr::MapLit(items, pos))
            }
            Tok::Op("|") | Tok::Op("||") => self.closure(),
            Tok::Ident(name) => {
                self.advance();
                let name: Rc<str> = Rc::from(name.as_str());
                // namespaced call / access: module::name
                if self.is_op("::") {
                    let mut inner = name.clone();
                    let mut path = String::new();
                    while self.eat_op("::") {
                        if !path.is_empty() {
                            path.push_str("::");
                        }
                        path.push_str(&inner);
                        inner = self.ident("a name after '::'")?;
                    }
                    let name: Rc<str> = Rc::from(path.as_str());
                    if self.eat_op("(") {
                        let args = self.args()?;
                        return Ok(Expr::Call(Box::new(Call {
                            name: inner,
                            namespace: Some(name),
                            args,
                            pos,
                            bang: None,
                            first_mutable: false,
                            cache: Cell::new(u32::MAX),
                        })));
                    }
                    let root = path.split("::").next().unwrap_or_default();
                    return Ok(Expr::Import(Rc::from(root), pos));
                }
                let bang = self.is_op("!") && matches!(self.peek_at(1), Tok::Op("("));
                if bang {
                    self.advance();
                }
                if self.is_op("(") {
                    self.advance();
                    if &*name == "eval" || &*name == "is_def_var" {
                        let names = self.visible_names();
                        let args = self.args()?;
                        if args.len() == 1 {
                            let a = Box::new(args.into_iter().next().unwrap());
                            return Ok(if &*name == "eval" {
                                Expr::Eval(a, names, 0, pos)
                            } else {
                                Expr::IsDefVar(a, names, pos)
                            });
                        }
                        return Ok(self.make_call(name, args, pos, None));
                    }
                    let scope = if bang { Some(self.visible_names()) } else { None };
                    let args = self.args()?;
                    return Ok(self.make_call(name, args, pos, scope));
                }
                Ok(self.resolve(&name, pos))
            }
            Tok::Eof => self.err("Unexpected end of script"),
            Tok::Op(o) => self.err(format!("Unexpected '{}'", o)),
            Tok::Kw(k) => self.err(format!("Unexpected keyword '{}'", k)),
        }
    }

    /// `return`, `throw`, `break` and `continue` (with an optional value where allowed).
    /// They are expressions, so `x ?? break 42` works.
    fn jump_expr(&mut self) -> PResult<Expr> {
        let (tok, pos) = self.advance();
        let kw = match tok {
            Tok::Kw(k) => k,
            _ => unreachable!(),
        };
        if (kw == "break" || kw == "continue") && self.in_loop == 0 {
            return Err(ParseError { msg: format!("'{}' must be within a loop", kw), pos, limit: None });
        }
        if kw == "continue" {
            return Ok(Expr::Continue(pos));
        }
        let value = if self.ends_jump_value() { None } else { Some(Box::new(self.expr()?)) };
        Ok(match kw {
            "return" => Expr::Return(value, pos),
            "throw" => Expr::Throw(value, pos),
            _ => Expr::Break(value, pos),
        })
    }

    fn ends_jump_value(&self) -> bool {
        self.at_eof() || [";", "}", ")", "]", ","].iter().any(|t| self.is_op(t))
    }

    fn make_call(&mut self, name: Rc<str>, mut args: Vec<Expr>, pos: Pos, bang: Option<ScopeNames>) -> Expr {
        if &*name == "is_shared" && args.len() == 1 && is_variable(&args[0]) {
            return Expr::IsShared(Box::new(args.pop().unwrap()));
        }
        let first_mutable = match args.first() {
            Some(a @ Expr::Local(..)) => self.const_root(a).is_none(),
            Some(Expr::Captured(..)) => true,
            _ => false,
        };
        Expr::Call(Box::new(Call { name, namespace: None, args, pos, bang, first_mutable, cache: Cell::new(u32::MAX) }))
    }

    fn loop_body(&mut self) -> PResult<Block> {
        self.in_loop += 1;
        let b = self.block();
        self.in_loop -= 1;
        b
    }

    fn if_expr(&mut self) -> PResult<Expr> {
        let pos = self.pos();
        self.advance();
        let cond = self.bool_expr()?;
        let then = self.block()?;
        let els = if self.eat_kw("else") {
            if self.is_kw("if") {
                self.else_links += 1;
                let r = self.check_links(self.else_links, pos).and_then(|_| self.if_expr());
                self.else_links -= 1;
                Some(Box::new(r?))
            } else {
                Some(Box::new(Expr::Block(Box::new(self.block()?))))
            }
        } else {
            None
        };
        Ok(Expr::If(Box::new(cond), Box::new(then), els, pos))
    }

    fn const_value(&self, e: &Expr) -> Option<Value> {
        match e {
            Expr::Const(v) => Some(v.clone()),
            _ => None,
        }
    }

    fn switch_expr(&mut self) -> PResult<Expr> {
        let pos = self.pos();
        self.advance();
        let expr = self.expr()?;
        self.expect_op("{", "to start a switch block")?;
        let mut cases = Vec::new();
        let mut has_default = false;
        loop {
            if self.eat_op("}") {
                break;
            }
            if has_default {
                return self.err("Default case must be the last case in a switch block");
            }
            let mut pats: Vec<Option<Pat>> = Vec::new();
            loop {
                if self.is_op("_") || matches!(self.peek(), Tok::Ident(s) if s == "_") {
                    self.advance();
                    pats.push(None);
                } else {
                    let ppos = self.pos();
                    let e = self.binary(31)?; // stop before '|' (precedence 30) and 'if'
                    let pat = match e {
                        Expr::Const(v) => Pat::Val(v),
                        Expr::Bin(BinOp::Range, a, b, _) | Expr::Bin(BinOp::RangeIncl, a, b, _) => {
                            let incl = self.toks[self.i - 1].0 != Tok::Op("..");
                            let _ = incl;
                            match (self.const_value(&a), self.const_value(&b)) {
                                (Some(Value::Int(x)), Some(Value::Int(y))) => Pat::Range(x, y, false),
                                _ => {
                                    return Err(ParseError {
                                        msg: "Switch case range must be integer constants".into(),
                                        pos: ppos,
                                        limit: None,
                                    })
                                }
                            }
                        }
                        _ => {
                            return Err(ParseError {
                                msg: "Expecting a constant value for a switch case".into(),
                                pos: ppos,
                                limit: None,
                            })
                        }
                    };
                    if pats.iter().flatten().any(|q| same_case(q, &pat)) {
                        return Err(ParseError { msg: "Duplicated switch case".into(), pos: ppos, limit: None });
                    }
                    pats.push(Some(pat));
                }
                if !self.eat_op("|") {
                    break;
                }
            }
            let cond = if self.is_kw("if") {
                if pats.iter().any(|p| p.is_none()) {
                    return self.err("This switch case cannot have a condition");
                }
                self.advance();
                Some(self.bool_expr()?)
            } else {
                None
            };
            for p in pats.iter().flatten() {
                self.check_case(&cases, p)?;
            }
            self.expect_op("=>", "in this switch case")?;
            let body = self.expr()?;
            let block_body = matches!(body, Expr::Block(_));
            for p in pats {
                if p.is_none() && cond.is_none() {
                    has_default = true;
                }
                let body_copy = share_expr(&body);
                cases.push(Case { pat: p, cond: cond.as_ref().map(share_expr), body: body_copy });
            }
            if !self.eat_op(",") && !block_body && !self.is_op("}") {
                return self.err("Expecting ',' to separate switch cases");
            }
        }
        Ok(Expr::Switch(Box::new(Switch { expr, cases, pos })))
    }

    /// The book's switch rules: no duplicated values (conditions or not), and no
    /// integer case after a range case.
    fn check_case(&self, cases: &[Case], pat: &Pat) -> PResult<()> {
        let is_range = |p: &Pat| matches!(p, Pat::Range(..) | Pat::Val(Value::Range(..)) | Pat::Val(Value::RangeIncl(..)));
        if cases.iter().filter_map(|c| c.pat.as_ref()).any(|q| same_case(q, pat)) {
            return self.err("Duplicated switch case");
        }
        let after_range = cases.iter().filter_map(|c| c.pat.as_ref()).any(is_range);
        if after_range && matches!(pat, Pat::Val(Value::Int(_))) {
            return self.err("Integer switch cases cannot follow range cases");
        }
        Ok(())
    }

    fn for_expr(&mut self) -> PResult<Expr> {
        let pos = self.pos();
        self.advance();
        let (vname, iname) = if self.eat_op("(") {
            let a = self.ident("a loop variable name")?;
            self.expect_op(",", "between the loop variable and the counter")?;
            let b = self.ident("a counter variable name")?;
            self.expect_op(")", "to close the loop variables")?;
            (a, Some(b))
        } else {
            (self.ident("a loop variable name")?, None)
        };
        if !self.eat_kw("in") {
            return self.err("Expecting 'in' after the for loop variable");
        }
        let ipos = self.pos();
        let iter = self.expr()?;
        if let Some(t) = not_iterable(&iter) {
            return Err(ParseError { msg: format!("Expecting an iterable value, not {}", t), pos: ipos, limit: None });
        }
        let mark = self.scope_enter();
        let var = self.declare(vname, false);
        let idx = iname.map(|n| self.declare(n, false));
        let body = self.loop_body()?;
        self.scope_exit(mark);
        Ok(Expr::For(Box::new(ForLoop { var, idx, iter, body, pos })))
    }

    fn closure(&mut self) -> PResult<Expr> {
        let pos = self.pos();
        let params = if self.eat_op("||") {
            Vec::new()
        } else {
            self.advance();
            self.params("|")?
        };
        self.ctxs.push(FnCtx::new(true, true, 0));
        for p in &params {
            self.declare(p.clone(), false);
        }
        let saved = self.in_loop;
        self.in_loop = 0;
        let body = self.expr_or_assign();
        self.in_loop = saved;
        let body = body?;
        let c = self.ctxs.pop().unwrap();
        let n = self.anon.get();
        self.anon.set(n + 1);
        let def = Rc::new(FnDef {
            name: Rc::from(format!("anon${}", n).as_str()),
            params,
            body: Block { stmts: vec![body] },
            num_slots: c.max,
            private: false,
            pos,
        });
        Ok(Expr::Closure(def, c.cap_srcs))
    }
}

fn is_variable(e: &Expr) -> bool {
    matches!(e, Expr::Local(..) | Expr::Captured(..))
}

/// What a literal is, for "Expecting … , not <what>" messages.
fn literal_kind(e: &Expr) -> Option<&'static str> {
    Some(match e {
        Expr::Const(Value::Unit) => "()",
        Expr::Const(Value::Bool(_)) => "a boolean",
        Expr::Const(Value::Int(_)) => "a number",
        Expr::Const(Value::Float(_)) => "a floating-point number",
        Expr::Const(Value::Char(_)) => "a character",
        Expr::Const(Value::Str(_)) | Expr::Interp(..) => "a string",
        Expr::Array(..) => "an array",
        Expr::MapLit(..) => "an object map",
        _ => return None,
    })
}

/// Indexing a literal array, string or map with a literal of the wrong type.
fn check_literal_index(target: &Expr, idx: &Expr, pos: Pos) -> PResult<()> {
    let (what, want) = match target {
        Expr::Array(..) => ("Array", "a number"),
        Expr::Const(Value::Str(_)) | Expr::Interp(..) => ("String", "a number"),
        Expr::MapLit(..) => ("Object map", "a string"),
        _ => return Ok(()),
    };
    let key = if want == "a number" { "integer" } else { "string" };
    match literal_kind(idx) {
        Some(t) if t != want && !(want == "a string" && t == "a character") => Err(ParseError {
            msg: format!("{} access expects {} index, not {}", what, key, t),
            pos,
            limit: None,
        }),
        _ => Ok(()),
    }
}

fn check_bool(e: &Expr, pos: Pos) -> PResult<()> {
    match literal_kind(e) {
        Some(t) if t != "a boolean" => {
            Err(ParseError { msg: format!("Expecting a boolean expression, not {}", t), pos, limit: None })
        }
        _ => Ok(()),
    }
}

fn not_iterable(e: &Expr) -> Option<&'static str> {
    literal_kind(e).filter(|t| !matches!(*t, "a string" | "an array"))
}

/// Two value cases that would match the same value (range cases may overlap).
fn same_case(a: &Pat, b: &Pat) -> bool {
    match (a, b) {
        (Pat::Val(Value::Range(..)), _) | (Pat::Val(Value::RangeIncl(..)), _) => false,
        (Pat::Val(x), Pat::Val(y)) => x.type_name() == y.type_name() && crate::interp::values_eq(x, y),
        _ => false,
    }
}

/// Switch cases with several patterns share one body; we re-parse-free duplicate by
/// wrapping in an Rc-backed closure-less block. Bodies are small, so a structural copy
/// is avoided by evaluating through an index instead.
fn share_expr(e: &Expr) -> Expr {
    deep_clone(e)
}

fn deep_clone(e: &Expr) -> Expr {
    // Only simple shapes are duplicated; complex bodies are rare in multi-pattern cases.
    match e {
        Expr::Const(v) => Expr::Const(v.clone()),
        _ => Expr::Block(Box::new(Block { stmts: vec![clone_expr(e)] })),
    }
}

fn clone_block(b: &Block) -> Block {
    Block { stmts: b.stmts.iter().map(clone_expr).collect() }
}

fn cb(e: &Expr) -> Box<Expr> {
    Box::new(clone_expr(e))
}

pub fn clone_expr(e: &Expr) -> Expr {
    match e {
        Expr::Const(v) => Expr::Const(v.clone()),
        Expr::Local(s, p) => Expr::Local(*s, *p),
        Expr::Captured(s, p) => Expr::Captured(*s, *p),
        Expr::DynVar(n, p) => Expr::DynVar(n.clone(), *p),
        Expr::GlobalConst(n, p) => Expr::GlobalConst(n.clone(), *p),
        Expr::This(p) => Expr::This(*p),
        Expr::Interp(v, p) => Expr::Interp(v.iter().map(clone_expr).collect(), *p),
        Expr::Array(v, p) => Expr::Array(v.iter().map(clone_expr).collect(), *p),
        Expr::MapLit(v, p) => Expr::MapLit(v.iter().map(|(k, e)| (k.clone(), clone_expr(e))).collect(), *p),
        Expr::Unary(o, a, p) => Expr::Unary(*o, cb(a), *p),
        Expr::Bin(o, a, b, p) => Expr::Bin(*o, cb(a), cb(b), *p),
        Expr::And(a, b, p) => Expr::And(cb(a), cb(b), *p),
        Expr::Or(a, b, p) => Expr::Or(cb(a), cb(b), *p),
        Expr::Coalesce(a, b) => Expr::Coalesce(cb(a), cb(b)),
        Expr::Index(a, b, s, p) => Expr::Index(cb(a), cb(b), *s, *p),
        Expr::Prop(a, n, s, p) => Expr::Prop(cb(a), n.clone(), *s, *p),
        Expr::Call(c) => Expr::Call(Box::new(Call {
            name: c.name.clone(),
            namespace: c.namespace.clone(),
            args: c.args.iter().map(clone_expr).collect(),
            pos: c.pos,
            bang: c.bang.clone(),
            first_mutable: c.first_mutable,
            cache: Cell::new(u32::MAX),
        })),
        Expr::Method(m) => Expr::Method(Box::new(MethodCall {
            constant: m.constant.clone(),
            target: clone_expr(&m.target),
            name: m.name.clone(),
            args: m.args.iter().map(clone_expr).collect(),
            safe: m.safe,
            pos: m.pos,
        })),
        Expr::Assign(a, b, o, p) => Expr::Assign(cb(a), cb(b), *o, *p),
        Expr::Let(s, v) => Expr::Let(*s, cb(v)),
        Expr::Block(b) => Expr::Block(Box::new(clone_block(b))),
        Expr::If(c, t, e, p) => Expr::If(cb(c), Box::new(clone_block(t)), e.as_ref().map(|x| cb(x)), *p),
        Expr::Switch(s) => Expr::Switch(Box::new(Switch {
            expr: clone_expr(&s.expr),
            cases: s
                .cases
                .iter()
                .map(|c| Case {
                    pat: c.pat.as_ref().map(|p| match p {
                        Pat::Val(v) => Pat::Val(v.clone()),
                        Pat::Range(a, b, i) => Pat::Range(*a, *b, *i),
                    }),
                    cond: c.cond.as_ref().map(clone_expr),
                    body: clone_expr(&c.body),
                })
                .collect(),
            pos: s.pos,
        })),
        Expr::While(c, b, p) => Expr::While(cb(c), Box::new(clone_block(b)), *p),
        Expr::Loop(b) => Expr::Loop(Box::new(clone_block(b))),
        Expr::Do(b, c, u, p) => Expr::Do(Box::new(clone_block(b)), cb(c), *u, *p),
        Expr::For(f) => Expr::For(Box::new(ForLoop {
            var: f.var,
            idx: f.idx,
            iter: clone_expr(&f.iter),
            body: clone_block(&f.body),
            pos: f.pos,
        })),
        Expr::Closure(d, c) => Expr::Closure(d.clone(), c.clone()),
        Expr::Break(v, p) => Expr::Break(v.as_ref().map(|x| cb(x)), *p),
        Expr::Continue(p) => Expr::Continue(*p),
        Expr::Return(v, p) => Expr::Return(v.as_ref().map(|x| cb(x)), *p),
        Expr::Throw(v, p) => Expr::Throw(v.as_ref().map(|x| cb(x)), *p),
        Expr::Try(a, v, b, p) => Expr::Try(Box::new(clone_block(a)), *v, Box::new(clone_block(b)), *p),
        Expr::Eval(a, n, s, p) => Expr::Eval(cb(a), n.clone(), *s, *p),
        Expr::IsDefVar(a, n, p) => Expr::IsDefVar(cb(a), n.clone(), *p),
        Expr::Import(n, p) => Expr::Import(n.clone(), *p),
        Expr::IsShared(v) => Expr::IsShared(cb(v)),
        Expr::Nop => Expr::Nop,
    }
}

/// Constant folding for literal operands (keeps `1..10` ranges as constants).
fn fold(op: BinOp, l: Box<Expr>, r: Box<Expr>, pos: Pos) -> Expr {
    if let (Expr::Const(Value::Int(a)), Expr::Const(Value::Int(b))) = (&*l, &*r) {
        match op {
            BinOp::Range => return Expr::Const(Value::Range(*a, *b)),
            BinOp::RangeIncl => return Expr::Const(Value::RangeIncl(*a, *b)),
            _ => {}
        }
    }
    Expr::Bin(op, l, r, pos)
}
