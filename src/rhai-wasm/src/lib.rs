//! HyperMachine's Rhai interpreter, compiled to a WASI-free wasm module.
//!
//! ABI (see docs/rhai.md): the host calls `hm_alloc(len)` to get a buffer, writes the
//! request JSON into it and calls `hm_run(ptr, len)`, which returns `(ptr << 32) | len`
//! of the response JSON. Imports from module `hm`: `emit`, `clock_ms`, `host_call`,
//! `host_response`, `oom`.

pub mod ast;
pub mod builtins;
pub mod interp;
pub mod lexer;
pub mod parser;
pub mod value;

use std::rc::Rc;

use interp::{ErrKind, Flow, Host, Interp, Limits};
use value::*;

#[cfg(target_arch = "wasm32")]
mod abi {
    use std::alloc::{GlobalAlloc, Layout, System};

    #[link(wasm_import_module = "hm")]
    extern "C" {
        pub fn emit(kind: u32, ptr: *const u8, len: usize);
        pub fn clock_ms() -> f64;
        pub fn host_call(ptr: *const u8, len: usize) -> u32;
        pub fn host_response(ptr: *mut u8);
        pub fn oom(size: usize);
    }

    pub struct Alloc;

    unsafe impl GlobalAlloc for Alloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let p = System.alloc(layout);
            if p.is_null() {
                oom(layout.size());
            }
            p
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
            let p = System.realloc(ptr, layout, new);
            if p.is_null() {
                oom(new);
            }
            p
        }
    }

    #[global_allocator]
    static GLOBAL: Alloc = Alloc;

    pub struct WasmHost;

    impl super::Host for WasmHost {
        fn emit(&mut self, kind: u32, text: &str) {
            unsafe { emit(kind, text.as_ptr(), text.len()) }
        }
        fn clock_ms(&mut self) -> f64 {
            unsafe { clock_ms() }
        }
        fn call(&mut self, request: &str) -> String {
            unsafe {
                let n = host_call(request.as_ptr(), request.len()) as usize;
                let mut buf: Vec<u8> = vec![0; n];
                host_response(buf.as_mut_ptr());
                String::from_utf8(buf).unwrap_or_else(|_| "{\"error\":\"invalid UTF-8 from host\"}".into())
            }
        }
    }

    #[no_mangle]
    pub extern "C" fn hm_alloc(len: usize) -> *mut u8 {
        let mut v: Vec<u8> = Vec::with_capacity(len.max(1));
        let p = v.as_mut_ptr();
        std::mem::forget(v);
        p
    }

    #[no_mangle]
    pub unsafe extern "C" fn hm_run(ptr: *mut u8, len: usize) -> u64 {
        let input = Vec::from_raw_parts(ptr, len, len.max(1));
        let text = String::from_utf8_lossy(&input).into_owned();
        drop(input);
        let out = super::run_json(&text, Box::new(WasmHost));
        let bytes = out.into_bytes().into_boxed_slice();
        let n = bytes.len();
        let p = Box::into_raw(bytes) as *mut u8;
        ((p as u64) << 32) | n as u64
    }
}

fn failure(kind: &str, msg: &str, pos: lexer::Pos, limit: Option<&str>, ops: u64) -> String {
    let mut o = String::from("{\"ok\":false,\"kind\":");
    json_escape(&mut o, kind);
    o.push_str(",\"message\":");
    json_escape(&mut o, msg);
    if pos.is_none() {
        o.push_str(",\"line\":null,\"column\":null");
    } else {
        o.push_str(&format!(",\"line\":{},\"column\":{}", pos.line, pos.col));
    }
    o.push_str(",\"limit\":");
    match limit {
        Some(l) => json_escape(&mut o, l),
        None => o.push_str("null"),
    }
    o.push_str(&format!(",\"operations\":{}}}", ops));
    o
}

/// Run one request (JSON text) and produce the response JSON text.
pub fn run_json(input: &str, host: Box<dyn Host>) -> String {
    let req = match parse_json(input) {
        Ok(j) => j,
        Err(e) => return failure("runtime", &format!("invalid request: {}", e), lexer::Pos::NONE, None, 0),
    };
    let code = req.get("code").and_then(|c| c.as_str()).unwrap_or("").to_string();
    let mut limits = Limits::default();
    if let Some(l) = req.get("limits") {
        let get = |k: &str| l.get(k).and_then(|v| v.as_i64()).filter(|v| *v > 0);
        if let Some(v) = get("max_operations") {
            limits.max_operations = v as u64;
        }
        if let Some(v) = get("max_call_depth") {
            limits.max_call_depth = v as usize;
        }
        if let Some(v) = get("max_expr_depth") {
            limits.max_expr_depth = v as usize;
        }
        if let Some(v) = get("max_string_size") {
            limits.max_string_size = v as usize;
        }
        if let Some(v) = get("max_array_size") {
            limits.max_array_size = v as usize;
        }
        if let Some(v) = get("max_map_size") {
            limits.max_map_size = v as usize;
        }
        if let Some(v) = get("max_output_bytes") {
            limits.max_output_bytes = v as usize;
        }
    }
    // The instance is thrown away after this call: never drop the interpreter, so
    // deeply nested values cannot recurse while being freed.
    let mut it = std::mem::ManuallyDrop::new(Interp::new(host, limits));
    let mut objs: Vec<Rc<str>> = Vec::new();
    if let Some(Json::Obj(o)) = req.get("objects") {
        for (name, spec) in o {
            let tn = spec.get("type").and_then(|t| t.as_str()).unwrap_or(name).to_string();
            let n: Rc<str> = Rc::from(name.as_str());
            let names = |key: &str| -> Vec<Rc<str>> {
                match spec.get(key) {
                    Some(Json::Arr(v)) => v.iter().filter_map(|x| x.as_str()).map(Rc::from).collect(),
                    _ => Vec::new(),
                }
            };
            let obj = HostObj {
                name: n.clone(),
                type_name: Rc::from(tn.as_str()),
                properties: names("properties"),
                methods: names("methods"),
            };
            it.globals.insert(n.clone(), Value::Host(Rc::new(obj)));
            objs.push(n);
        }
    }
    it.host_objects = Rc::new(objs);
    if let Some(Json::Arr(fs)) = req.get("functions") {
        for f in fs {
            if let Some(s) = f.as_str() {
                it.host_fns.push(Rc::from(s));
            }
        }
    }
    let args = match req.get("args") {
        Some(j @ Json::Obj(_)) => json_to_value(j),
        _ => Value::Map(Rc::new(Map::new())),
    };
    it.globals.insert(Rc::from("args"), args.clone());
    let prog = match it.parse(&code, &[(Rc::from("args"), 0, true)], 1, true) {
        Ok(p) => p,
        Err(e) => {
            // a parse-time limit (expression depth, literal size) is a syntax error, as in Rhai
            return failure("syntax", &e.msg, e.pos, e.limit, 0);
        }
    };
    let prog = std::mem::ManuallyDrop::new(prog);
    let r = it.run_program(&prog, vec![args]);
    let ops = it.ops;
    let v = match r {
        Ok(v) | Err(Flow::Return(v)) => v,
        Err(Flow::Err(e)) => {
            let kind = match e.kind {
                ErrKind::Limit => "limit",
                ErrKind::Syntax => "syntax",
                ErrKind::Runtime => "runtime",
            };
            return failure(kind, &e.msg, e.pos, e.limit, ops);
        }
        Err(_) => return failure("runtime", "break or continue outside a loop", lexer::Pos::NONE, None, ops),
    };
    let mut out = String::from("{\"ok\":true,\"result\":");
    let limit = it.limits.max_string_size.max(1 << 16) + out.len();
    if !value_to_json(&mut out, &v, limit, 0) {
        return failure(
            "limit",
            &format!("Result too large (limit max_string_size = {})", it.limits.max_string_size),
            lexer::Pos::NONE,
            Some("max_string_size"),
            ops,
        );
    }
    out.push_str(",\"type\":");
    json_escape(&mut out, v.type_name());
    out.push_str(&format!(",\"operations\":{}}}", ops));
    // The instance is thrown away after this call: skip dropping the interpreter
    // (deeply nested values would otherwise recurse while being freed).
    std::mem::forget(v);
    out
}
