//! Resolved syntax tree: variables are frame slots, closures list their captures.

use std::cell::Cell;
use std::rc::Rc;

use crate::lexer::Pos;
use crate::value::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Pow,
    Shl,
    Shr,
    BitAnd,
    BitOr,
    BitXor,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
    Range,
    RangeIncl,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        use BinOp::*;
        match self {
            Add => "+",
            Sub => "-",
            Mul => "*",
            Div => "/",
            Rem => "%",
            Pow => "**",
            Shl => "<<",
            Shr => ">>",
            BitAnd => "&",
            BitOr => "|",
            BitXor => "^",
            Eq => "==",
            Ne => "!=",
            Lt => "<",
            Le => "<=",
            Gt => ">",
            Ge => ">=",
            In => "in",
            NotIn => "!in",
            Range => "..",
            RangeIncl => "..=",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Plus,
    Not,
}

#[derive(Clone, Copy, Debug)]
pub enum CapSrc {
    Local(u32),
    Captured(u32),
}

pub type ScopeNames = Rc<Vec<(Rc<str>, u32)>>;

#[derive(Debug)]
pub struct FnDef {
    pub name: Rc<str>,
    pub params: Vec<Rc<str>>,
    pub body: Block,
    pub num_slots: u32,
    pub private: bool,
    pub pos: Pos,
}

#[derive(Debug, Default)]
pub struct Block {
    pub stmts: Vec<Expr>,
}

#[derive(Debug)]
pub struct Call {
    pub name: Rc<str>,
    pub namespace: Option<Rc<str>>,
    pub args: Vec<Expr>,
    pub pos: Pos,
    /// `f!(...)`: names visible at the call site, so the callee can reach them.
    pub bang: Option<ScopeNames>,
    /// The first argument is a variable that a native function may change
    /// (`push(a, 1)` changes `a`, as `a.push(1)` does).
    pub first_mutable: bool,
    pub cache: Cell<u32>,
}

#[derive(Debug)]
pub struct MethodCall {
    /// Set when the target's root is a constant: the call must not change it.
    pub constant: Option<Rc<str>>,
    pub target: Expr,
    pub name: Rc<str>,
    pub args: Vec<Expr>,
    pub safe: bool,
    pub pos: Pos,
}

#[derive(Debug)]
pub enum Pat {
    Val(Value),
    Range(i64, i64, bool),
}

#[derive(Debug)]
pub struct Case {
    pub pat: Option<Pat>,
    pub cond: Option<Expr>,
    pub body: Expr,
}

#[derive(Debug)]
pub struct Switch {
    pub expr: Expr,
    pub cases: Vec<Case>,
    pub pos: Pos,
}

#[derive(Debug)]
pub struct ForLoop {
    pub var: u32,
    pub idx: Option<u32>,
    pub iter: Expr,
    pub body: Block,
    pub pos: Pos,
}

#[derive(Debug)]
pub enum Expr {
    Const(Value),
    Local(u32, Pos),
    Captured(u32, Pos),
    DynVar(Rc<str>, Pos),
    GlobalConst(Rc<str>, Pos),
    This(Pos),
    Interp(Vec<Expr>, Pos),
    Array(Vec<Expr>, Pos),
    MapLit(Vec<(Rc<str>, Expr)>, Pos),
    Unary(UnOp, Box<Expr>, Pos),
    Bin(BinOp, Box<Expr>, Box<Expr>, Pos),
    And(Box<Expr>, Box<Expr>, Pos),
    Or(Box<Expr>, Box<Expr>, Pos),
    Coalesce(Box<Expr>, Box<Expr>),
    Index(Box<Expr>, Box<Expr>, bool, Pos),
    Prop(Box<Expr>, Rc<str>, bool, Pos),
    Call(Box<Call>),
    Method(Box<MethodCall>),
    Assign(Box<Expr>, Box<Expr>, Option<BinOp>, Pos),
    Let(u32, Box<Expr>),
    Block(Box<Block>),
    If(Box<Expr>, Box<Block>, Option<Box<Expr>>, Pos),
    Switch(Box<Switch>),
    While(Box<Expr>, Box<Block>, Pos),
    Loop(Box<Block>),
    Do(Box<Block>, Box<Expr>, bool, Pos),
    For(Box<ForLoop>),
    Closure(Rc<FnDef>, Vec<CapSrc>),
    Break(Option<Box<Expr>>, Pos),
    Continue(Pos),
    Return(Option<Box<Expr>>, Pos),
    Throw(Option<Box<Expr>>, Pos),
    Try(Box<Block>, Option<u32>, Box<Block>, Pos),
    Eval(Box<Expr>, ScopeNames, u32, Pos),
    IsDefVar(Box<Expr>, ScopeNames, Pos),
    Import(Rc<str>, Pos),
    /// `is_shared(x)` / `x.is_shared()` on a variable: is it captured by a closure?
    IsShared(Box<Expr>),
    Nop,
}
