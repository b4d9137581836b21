//! Tokenizer for the Rhai dialect.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub const NONE: Pos = Pos { line: 0, col: 0 };
    pub fn is_none(&self) -> bool {
        self.line == 0
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Lit(String),
    Code(String, Pos),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    Int(i64),
    /// `9223372036854775808`: only valid right after a unary minus (as `i64::MIN`).
    IntMinMagnitude,
    Float(f64),
    Str(String),
    Interp(Vec<Part>),
    Char(char),
    Ident(String),
    Kw(&'static str),
    Op(&'static str),
    Eof,
}

pub struct LexError {
    pub msg: String,
    pub pos: Pos,
}

const KEYWORDS: &[&str] = &[
    "let", "const", "if", "else", "switch", "while", "loop", "do", "until", "for", "in", "break",
    "continue", "return", "throw", "try", "catch", "fn", "private", "import", "export", "as",
    "true", "false", "this", "global",
];

const RESERVED: &[&str] = &[
    "var", "static", "shared", "goto", "exit", "match", "case", "public", "protected", "new",
    "use", "with", "module", "package", "super", "thread", "spawn", "go", "await", "async", "sync",
    "yield", "default", "void", "null", "nil",
];

// Longest first.
const OPS: &[&str] = &[
    "<<=", ">>=", "**=", "..=", "!in", "??=", "...", "==", "!=", "<=", ">=", "&&", "||", "+=", "-=",
    "*=", "/=", "%=", "&=", "|=", "^=", "<<", ">>", "**", "..", "::", "=>", "?.", "?[", "??", "#{",
    "->", "+", "-", "*", "/", "%", "=", "<", ">", "!", "&", "|", "^", "(", ")", "[", "]", "{", "}",
    ",", ";", ":", ".", "?", "@", "#", "$", "~", "`",
];

pub struct Lexer<'a> {
    chars: Vec<char>,
    i: usize,
    line: u32,
    col: u32,
    _src: &'a str,
}

/// After `42.`: not a method call, property, range or `_`, so the `.` ends a FLOAT.
fn ends_bare_float(c: char) -> bool {
    !(is_ident_start(c) || c == '.' || c.is_ascii_digit())
}

// Identifiers are ASCII (Rhai without the `unicode-xid-ident` feature).
fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}
fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

/// The first character that is not `_` must be a letter: `_`, `_1`, `_42foo` are not names.
fn is_proper_name(s: &str) -> bool {
    s.trim_start_matches('_').starts_with(|c: char| c.is_ascii_alphabetic())
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a str, start: Pos) -> Self {
        let start = if start.is_none() { Pos { line: 1, col: 1 } } else { start };
        Lexer { chars: src.chars().collect(), i: 0, line: start.line, col: start.col, _src: src }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }
    fn peek_at(&self, k: usize) -> Option<char> {
        self.chars.get(self.i + k).copied()
    }
    fn bump(&mut self) -> Option<char> {
        let c = self.chars.get(self.i).copied()?;
        self.i += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }
    fn pos(&self) -> Pos {
        Pos { line: self.line, col: self.col }
    }
    fn err<T>(&self, msg: String, pos: Pos) -> Result<T, LexError> {
        Err(LexError { msg, pos })
    }

    fn skip_ws(&mut self) -> Result<(), LexError> {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some('/') if self.peek_at(1) == Some('/') => {
                    while let Some(c) = self.peek() {
                        if c == '\n' {
                            break;
                        }
                        self.bump();
                    }
                }
                Some('/') if self.peek_at(1) == Some('*') => {
                    self.bump();
                    self.bump();
                    let mut depth = 1;
                    while depth > 0 {
                        match self.bump() {
                            // as in Rhai, an unclosed block comment runs to the end of the script
                            None => return Ok(()),
                            Some('/') if self.peek() == Some('*') => {
                                self.bump();
                                depth += 1;
                            }
                            Some('*') if self.peek() == Some('/') => {
                                self.bump();
                                depth -= 1;
                            }
                            _ => {}
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    pub fn tokenize(mut self) -> Result<Vec<(Tok, Pos)>, LexError> {
        let mut out = Vec::new();
        loop {
            self.skip_ws()?;
            let p = self.pos();
            let c = match self.peek() {
                None => {
                    out.push((Tok::Eof, p));
                    return Ok(out);
                }
                Some(c) => c,
            };
            if c.is_ascii_digit() {
                out.push((self.number(p)?, p));
            } else if is_ident_start(c) {
                let mut s = String::new();
                while let Some(c) = self.peek() {
                    if is_ident_char(c) {
                        s.push(c);
                        self.bump();
                    } else {
                        break;
                    }
                }
                if s == "_" {
                    out.push((Tok::Op("_"), p));
                } else if let Some(k) = KEYWORDS.iter().find(|k| **k == s) {
                    out.push((Tok::Kw(k), p));
                } else if RESERVED.contains(&s.as_str()) {
                    return self.err(format!("'{}' is a reserved keyword", s), p);
                } else if !is_proper_name(&s) {
                    return self.err(format!("Variable name is not proper: '{}'", s), p);
                } else {
                    out.push((Tok::Ident(s), p));
                }
            } else if c == '"' {
                self.bump();
                let s = self.string_body('"', p)?;
                out.push((Tok::Str(s), p));
            } else if c == '`' {
                self.bump();
                out.push((self.backtick(p)?, p));
            } else if c == '\'' {
                self.bump();
                let s = self.string_body('\'', p)?;
                let mut it = s.chars();
                match (it.next(), it.next()) {
                    (Some(ch), None) => out.push((Tok::Char(ch), p)),
                    _ => return self.err("Invalid character literal".into(), p),
                }
            } else if c == '#' && (self.peek_at(1) == Some('"') || self.peek_at(1) == Some('#')) {
                // raw string #"..."#
                let mut hashes = 0;
                while self.peek() == Some('#') {
                    hashes += 1;
                    self.bump();
                }
                if self.peek() != Some('"') {
                    return self.err("Invalid raw string literal".into(), p);
                }
                self.bump();
                let mut s = String::new();
                loop {
                    match self.bump() {
                        None => return self.err("Unterminated string literal".into(), p),
                        Some('"') => {
                            let mut n = 0;
                            while n < hashes && self.peek_at(n) == Some('#') {
                                n += 1;
                            }
                            if n == hashes {
                                for _ in 0..n {
                                    self.bump();
                                }
                                break;
                            }
                            s.push('"');
                        }
                        Some(c) => s.push(c),
                    }
                }
                out.push((Tok::Str(s), p));
            } else {
                let mut found = None;
                for op in OPS {
                    let n = op.chars().count();
                    if (0..n).all(|k| self.peek_at(k) == op.chars().nth(k)) {
                        found = Some(*op);
                        break;
                    }
                }
                match found {
                    Some("!in") if self.peek_at(3).map_or(false, is_ident_char) => {
                        self.bump();
                        out.push((Tok::Op("!"), p));
                    }
                    Some(op) => {
                        for _ in 0..op.chars().count() {
                            self.bump();
                        }
                        out.push((Tok::Op(op), p));
                    }
                    None => return self.err(format!("Unexpected '{}'", c), p),
                }
            }
        }
    }

    fn number(&mut self, p: Pos) -> Result<Tok, LexError> {
        let mut s = String::new();
        if self.peek() == Some('0') {
            let radix = match self.peek_at(1) {
                Some('x') | Some('X') => 16,
                Some('o') | Some('O') => 8,
                Some('b') | Some('B') => 2,
                _ => 10,
            };
            if radix != 10 {
                self.bump();
                self.bump();
                while let Some(c) = self.peek() {
                    if c == '_' {
                        self.bump();
                    } else if c.is_digit(radix) {
                        s.push(c);
                        self.bump();
                    } else if c.is_ascii_alphanumeric() {
                        return self.err(format!("Invalid number: '{}'", c), p);
                    } else {
                        break;
                    }
                }
                return match u64::from_str_radix(&s, radix) {
                    Ok(v) if radix == 10 || v <= u64::MAX => Ok(Tok::Int(v as i64)),
                    _ => self.err("Invalid number literal".into(), p),
                };
            }
        }
        let mut is_float = false;
        while let Some(c) = self.peek() {
            if c.is_ascii_digit() {
                s.push(c);
                self.bump();
            } else if c == '_' {
                self.bump();
            } else if c == '.'
                && !is_float
                && self.peek_at(1).map_or(false, |d| d.is_ascii_digit())
            {
                is_float = true;
                s.push(c);
                self.bump();
            } else if c == '.' && !is_float && self.peek_at(1).map_or(true, ends_bare_float) {
                // `42.` is the FLOAT 42.0
                is_float = true;
                s.push_str(".0");
                self.bump();
            } else if (c == 'e' || c == 'E')
                && (self.peek_at(1).map_or(false, |d| d.is_ascii_digit())
                    || (matches!(self.peek_at(1), Some('+') | Some('-'))
                        && self.peek_at(2).map_or(false, |d| d.is_ascii_digit())))
            {
                is_float = true;
                s.push('e');
                self.bump();
                if let Some(sign) = self.peek() {
                    if sign == '+' || sign == '-' {
                        s.push(sign);
                        self.bump();
                    }
                }
            } else if is_ident_start(c) {
                return self.err(format!("Invalid number: '{}{}'", s, c), p);
            } else {
                break;
            }
        }
        if is_float {
            s.parse::<f64>().map(Tok::Float).or_else(|_| self.err("Invalid number".into(), p))
        } else {
            match s.parse::<i64>() {
                Ok(v) => Ok(Tok::Int(v)),
                Err(_) if s == "9223372036854775808" => Ok(Tok::IntMinMagnitude),
                Err(_) => self.err(format!("Integer literal too large: {}", s), p),
            }
        }
    }

    fn escape(&mut self, p: Pos) -> Result<Option<char>, LexError> {
        let c = match self.bump() {
            None => return self.err("Unterminated string literal".into(), p),
            Some(c) => c,
        };
        let hex = |lx: &mut Self, n: usize| -> Result<Option<char>, LexError> {
            let mut v: u32 = 0;
            for _ in 0..n {
                match lx.bump().and_then(|c| c.to_digit(16)) {
                    Some(d) => v = v * 16 + d,
                    None => return lx.err("Invalid escape sequence".into(), p),
                }
            }
            match char::from_u32(v) {
                Some(c) => Ok(Some(c)),
                None => lx.err("Invalid escape sequence".into(), p),
            }
        };
        Ok(Some(match c {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            '0' => '\0',
            '\\' => '\\',
            '\'' => '\'',
            '"' => '"',
            '`' => '`',
            '$' => '$',
            'x' => return hex(self, 2),
            'u' => return hex(self, 4),
            'U' => return hex(self, 8),
            '\n' => {
                // line continuation: whitespace up to the opening quote's column is dropped
                while let Some(c) = self.peek() {
                    if (c == ' ' || c == '\t') && self.col <= p.col {
                        self.bump();
                    } else {
                        break;
                    }
                }
                return Ok(None);
            }
            other => return self.err(format!("Invalid escape sequence: '\\{}'", other), p),
        }))
    }

    fn string_body(&mut self, close: char, p: Pos) -> Result<String, LexError> {
        let mut s = String::new();
        loop {
            match self.bump() {
                None => return self.err("Unterminated string literal".into(), p),
                Some('\n') if close == '"' || close == '\'' => {
                    return self.err("Unterminated string literal".into(), p)
                }
                Some('\\') => {
                    if let Some(c) = self.escape(p)? {
                        s.push(c)
                    }
                }
                Some('"') if close == '"' && self.peek() == Some('"') => {
                    self.bump();
                    s.push('"');
                }
                Some(c) if c == close => return Ok(s),
                Some(c) => s.push(c),
            }
        }
    }

    /// Back-tick strings are verbatim (no escapes); `` is a back-tick; a back-tick at
    /// the end of a line starts the text on the next line; `${...}` interpolates.
    fn backtick(&mut self, p: Pos) -> Result<Tok, LexError> {
        let mut parts = Vec::new();
        let mut s = String::new();
        let mut has_code = false;
        if self.peek() == Some('\n') {
            self.bump();
        } else if self.peek() == Some('\r') && self.peek_at(1) == Some('\n') {
            self.bump();
            self.bump();
        }
        loop {
            match self.bump() {
                None => return self.err("Unterminated string literal".into(), p),
                Some('`') if self.peek() == Some('`') => {
                    self.bump();
                    s.push('`');
                }
                Some('`') => break,
                Some('$') if self.peek() == Some('{') => {
                    self.bump();
                    has_code = true;
                    if !s.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut s)));
                    }
                    let cp = self.pos();
                    let code = self.interp_code(p)?;
                    parts.push(Part::Code(code, cp));
                }
                Some(c) => s.push(c),
            }
        }
        if !has_code {
            return Ok(Tok::Str(s));
        }
        if !s.is_empty() {
            parts.push(Part::Lit(s));
        }
        Ok(Tok::Interp(parts))
    }

    /// The code of a `${…}` up to its closing brace (already past `${`). Quoted and
    /// back-tick literals inside are copied whole so their braces do not count.
    fn interp_code(&mut self, p: Pos) -> Result<String, LexError> {
        let mut code = String::new();
        let mut depth = 1;
        loop {
            let c = self.bump().ok_or(LexError { msg: "Unterminated string interpolation".into(), pos: p })?;
            match c {
                '"' | '\'' => {
                    self.copy_quoted(c, &mut code, p)?;
                    continue;
                }
                '`' => {
                    self.copy_backtick(&mut code, p)?;
                    continue;
                }
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(code);
                    }
                }
                _ => {}
            }
            code.push(c);
        }
    }

    fn copy_quoted(&mut self, q: char, code: &mut String, p: Pos) -> Result<(), LexError> {
        code.push(q);
        loop {
            let c = self.bump().ok_or(LexError { msg: "Unterminated string interpolation".into(), pos: p })?;
            code.push(c);
            if c == '\\' {
                if let Some(e) = self.bump() {
                    code.push(e);
                }
            } else if c == q {
                return Ok(());
            }
        }
    }

    /// A back-tick string nested in `${…}`, including its own interpolations.
    fn copy_backtick(&mut self, code: &mut String, p: Pos) -> Result<(), LexError> {
        code.push('`');
        loop {
            let c = self.bump().ok_or(LexError { msg: "Unterminated string interpolation".into(), pos: p })?;
            code.push(c);
            if c == '`' && self.peek() == Some('`') {
                code.push('`');
                self.bump();
            } else if c == '`' {
                return Ok(());
            } else if c == '$' && self.peek() == Some('{') {
                self.bump();
                code.push('{');
                code.push_str(&self.interp_code(p)?);
                code.push('}');
            }
        }
    }
}
