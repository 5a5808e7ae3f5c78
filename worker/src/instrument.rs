//! Validation of agent module bytes against what ABI v1 allows, and the
//! instrumentation every module gets before it is compiled.
//!
//! # What instrumentation adds
//!
//! Nothing an agent can observe; only entry points for the host:
//!
//! * **An export for every unexported mutable global**
//!   (`__lockstep_global_<index>`), so that state capture can read and
//!   restore it (as Wizer does).
//! * **The step entry** (`__lockstep_step`, [`STEP_ENTRY_EXPORT`]): a
//!   function `(ctx_ptr: i32, tick: i64, agent_id: i64, mailbox_and_flags:
//!   i64) -> i32` that writes a plain step's whole 64-byte context
//!   (docs/abi.md "Step context") at `ctx_ptr` with eight `i64.store`s and
//!   then calls `agent_step(ctx_ptr)`, its last instruction.  A plain step
//!   is then one call into wasm with no host access to the agent's memory
//!   (no look-up of the memory through the store and the instance, no
//!   host-side copy and clear: a cached step 37 → 30 ns; the one touch of
//!   the agent's memory page remains, now from wasm).  The entry consumes exactly
//!   [`STEP_ENTRY_FUEL`] fuel before `agent_step` starts and none after it
//!   returns, so the host gives `agent_step` the same fuel and reads back
//!   the same consumption as for a direct call; its stores are bounds-checked
//!   like any other, on a buffer the host has already checked to lie inside
//!   the memory.

use crate::engine::MutableGlobal;
use crate::error::LoadError;
use std::collections::HashMap;

/// Version of what instrumentation adds, part of the compiled-module key
/// ([`crate::engine::engine_key`]): a compiled form made with other
/// instrumentation is never loaded.
pub const VERSION: u32 = 2;

/// Prefix of the exports added for unexported mutable globals.
pub const GLOBAL_EXPORT_PREFIX: &str = "__lockstep_global_";

/// Export name of the step entry (see the module docs).
pub const STEP_ENTRY_EXPORT: &str = "__lockstep_step";

/// Fuel the step entry consumes before it calls `agent_step`: wasmtime
/// charges every function 1 on entry, then eight stores of three
/// instructions each (`local.get`, the value, `i64.store`) and `local.get`
/// + `call`.  (`end` costs nothing, and nothing follows the call.)
pub const STEP_ENTRY_FUEL: u64 = 1 + 8 * 3 + 2;

/// The first eight bytes of every step context: `size` (64) and the ABI
/// version the host speaks, little-endian.
pub const CONTEXT_HEAD: u64 = crate::agent::CTX_SIZE as u64
    | (((crate::engine::ABI_MAJOR << 16) | crate::engine::ABI_MINOR) as u64) << 32;

/// What a pre-compilation scan of the module found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// (global index, mutable, exported name, type).
    globals: Vec<(u32, bool, Option<String>, String)>,
    /// Active data segments of memory 0 with a constant offset.
    pub(crate) data: Vec<(u32, Vec<u8>)>,
    /// Per type index: whether it is the function type `(i32) -> i32`.
    step_types: Vec<bool>,
    /// The type index of every function (imports first).
    func_types: Vec<u32>,
    /// The function exported as `agent_step`, if any.
    step_func: Option<u32>,
    /// Whether the module defines a memory.
    defines_memory: bool,
    /// Whether the module already exports [`STEP_ENTRY_EXPORT`].
    exports_entry_name: bool,
}

impl Scan {
    /// The function index of `agent_step`, when a step entry can wrap it:
    /// it is `(i32) -> i32`, the module defines its memory, and the entry's
    /// name is free.
    fn step_to_wrap(&self) -> Option<u32> {
        let f = self.step_func?;
        let ty = *self.func_types.get(f as usize)?;
        (self.step_types.get(ty as usize) == Some(&true)
            && self.defines_memory
            && !self.exports_entry_name)
            .then_some(f)
    }
}

/// Parses and validates the module bytes, rejects what ABI v1 forbids, and
/// returns the facts instrumentation needs.
pub(crate) fn scan(name: &str, bytes: &[u8]) -> Result<Scan, LoadError> {
    use wasmparser::{CompositeInnerType, Operator, Parser, Payload, TypeRef, ValType};
    let invalid = |reason: String| LoadError::Invalid {
        module: name.to_owned(),
        reason,
    };
    let mut features = wasmparser::WasmFeatures::default();
    features.remove(wasmparser::WasmFeatures::THREADS);
    features.remove(wasmparser::WasmFeatures::SHARED_EVERYTHING_THREADS);
    features.remove(wasmparser::WasmFeatures::RELAXED_SIMD);
    features.remove(wasmparser::WasmFeatures::MULTI_MEMORY);
    features.remove(wasmparser::WasmFeatures::MEMORY64);
    features.remove(wasmparser::WasmFeatures::COMPONENT_MODEL);
    let mut validator = wasmparser::Validator::new_with_features(features);
    validator
        .validate_all(bytes)
        .map_err(|e| invalid(e.to_string()))?;
    let mut out = Scan::default();
    let mut imported_globals = 0u32;
    let mut exports: HashMap<u32, String> = HashMap::new();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| invalid(e.to_string()))? {
            Payload::TypeSection(r) => {
                for group in r {
                    let group = group.map_err(|e| invalid(e.to_string()))?;
                    for sub in group.types() {
                        let is_step = match &sub.composite_type.inner {
                            CompositeInnerType::Func(f) => {
                                f.params() == [ValType::I32] && f.results() == [ValType::I32]
                            }
                            _ => false,
                        };
                        out.step_types.push(is_step);
                    }
                }
            }
            Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    let imp = imp.map_err(|e| invalid(e.to_string()))?;
                    match imp.ty {
                        TypeRef::Global(_) => imported_globals += 1,
                        TypeRef::Func(t) | TypeRef::FuncExact(t) => out.func_types.push(t),
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(r) => {
                for t in r {
                    out.func_types.push(t.map_err(|e| invalid(e.to_string()))?);
                }
            }
            Payload::MemorySection(r) => out.defines_memory |= r.count() > 0,
            Payload::GlobalSection(r) => {
                for (i, g) in r.into_iter().enumerate() {
                    let g = g.map_err(|e| invalid(e.to_string()))?;
                    let index = imported_globals + i as u32;
                    let ty = match g.ty.content_type {
                        ValType::I32 => "i32",
                        ValType::I64 => "i64",
                        ValType::F32 => "f32",
                        ValType::F64 => "f64",
                        ValType::V128 => "v128",
                        ValType::Ref(_) if g.ty.mutable => {
                            return Err(LoadError::Forbidden {
                                module: name.to_owned(),
                                item: format!("mutable reference-typed global {index}"),
                                why: "its value cannot be captured in a snapshot".into(),
                            });
                        }
                        ValType::Ref(_) => "ref",
                    };
                    out.globals.push((index, g.ty.mutable, None, ty.to_owned()));
                }
            }
            Payload::ExportSection(r) => {
                for e in r {
                    let e = e.map_err(|e| invalid(e.to_string()))?;
                    match e.kind {
                        wasmparser::ExternalKind::Global => {
                            exports.entry(e.index).or_insert_with(|| e.name.to_owned());
                        }
                        wasmparser::ExternalKind::Func if e.name == "agent_step" => {
                            out.step_func = Some(e.index);
                        }
                        _ => {}
                    }
                    out.exports_entry_name |= e.name == STEP_ENTRY_EXPORT;
                }
            }
            Payload::DataSection(r) => {
                for d in r {
                    let d = d.map_err(|e| invalid(e.to_string()))?;
                    if let wasmparser::DataKind::Active {
                        memory_index: 0,
                        offset_expr,
                    } = d.kind
                    {
                        let mut ops = offset_expr.get_operators_reader();
                        if let Ok(Operator::I32Const { value }) = ops.read() {
                            out.data.push((value as u32, d.data.to_vec()));
                        }
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut ops = body
                    .get_operators_reader()
                    .map_err(|e| invalid(e.to_string()))?;
                while !ops.eof() {
                    let op = ops.read().map_err(|e| invalid(e.to_string()))?;
                    let forbidden = match op {
                        Operator::TableSet { .. }
                        | Operator::TableGrow { .. }
                        | Operator::TableFill { .. }
                        | Operator::TableCopy { .. }
                        | Operator::TableInit { .. }
                        | Operator::ElemDrop { .. } => Some("table mutation"),
                        Operator::DataDrop { .. } => Some("data.drop"),
                        _ => None,
                    };
                    if let Some(what) = forbidden {
                        return Err(LoadError::Forbidden {
                            module: name.to_owned(),
                            item: format!("instruction {what} at offset {}", ops.original_position()),
                            why: "ABI v1 keeps tables and data segments immutable so that state capture is complete".into(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    for g in &mut out.globals {
        g.2 = exports.get(&g.0).cloned();
    }
    Ok(out)
}

/// The body of the step entry (locals: none besides the four parameters),
/// size-prefixed as it stands in a code section.
fn step_entry_body(agent_step: u32) -> Vec<u8> {
    use wasm_encoder::{Encode, Function, MemArg};
    let at = |offset: u64| MemArg {
        offset,
        align: 3,
        memory_index: 0,
    };
    let mut f = Function::new([]);
    let mut i = f.instructions();
    // Offsets 0, 8, 16 and 40 from constants and parameters; the rest zero.
    i.local_get(0)
        .i64_const(CONTEXT_HEAD as i64)
        .i64_store(at(0));
    i.local_get(0).local_get(1).i64_store(at(8));
    i.local_get(0).local_get(2).i64_store(at(16));
    for zero in [24, 32, 48, 56] {
        i.local_get(0).i64_const(0).i64_store(at(zero));
    }
    i.local_get(0).local_get(3).i64_store(at(40));
    i.local_get(0).call(agent_step).end();
    let mut out = Vec::new();
    f.encode(&mut out);
    out
}

/// A section's entries with one more appended: its count (a LEB128 at the
/// start of `data`) raised by one.
fn append_entry(data: &[u8], entry: &[u8]) -> Result<Vec<u8>, String> {
    use wasm_encoder::Encode;
    let mut r = wasmparser::BinaryReader::new(data, 0);
    let count = r.read_var_u32().map_err(|e| e.to_string())?;
    let rest = &data[r.current_position()..];
    let mut out = Vec::with_capacity(data.len() + entry.len() + 5);
    (count + 1).encode(&mut out);
    out.extend_from_slice(rest);
    out.extend_from_slice(entry);
    Ok(out)
}

/// Adds an export for every mutable global that has none and the step
/// entry (see the module docs).  Returns the new bytes, the export name of
/// every mutable global, and whether the step entry was added.
pub(crate) fn instrument(
    name: &str,
    bytes: &[u8],
    scan: &Scan,
) -> Result<(Vec<u8>, Vec<MutableGlobal>, bool), LoadError> {
    use wasm_encoder::{Encode, ExportKind, ExportSection, RawSection};
    use wasmparser::{Parser, Payload};
    let invalid = |reason: String| LoadError::Invalid {
        module: name.to_owned(),
        reason,
    };
    let mut globals = Vec::new();
    let mut added = Vec::new();
    for (index, mutable, export, ty) in &scan.globals {
        if !mutable {
            continue;
        }
        let export = match export {
            Some(e) => e.clone(),
            None => {
                let e = format!("{GLOBAL_EXPORT_PREFIX}{index}");
                added.push((e.clone(), *index));
                e
            }
        };
        globals.push(MutableGlobal {
            index: *index,
            export,
            ty: ty.clone(),
        });
    }
    let step = scan.step_to_wrap();
    // The entry's type and function index: after all existing ones.
    let entry_type = scan.step_types.len() as u32;
    let entry_func = scan.func_types.len() as u32;
    let mut module = wasm_encoder::Module::new();
    let mut wrote_exports = false;
    let write_exports = |module: &mut wasm_encoder::Module,
                         existing: Option<wasmparser::ExportSectionReader<'_>>|
     -> Result<(), LoadError> {
        let mut sec = ExportSection::new();
        if let Some(r) = existing {
            for e in r {
                let e = e.map_err(|e| invalid(e.to_string()))?;
                let kind = match e.kind {
                    wasmparser::ExternalKind::Func => ExportKind::Func,
                    wasmparser::ExternalKind::Table => ExportKind::Table,
                    wasmparser::ExternalKind::Memory => ExportKind::Memory,
                    wasmparser::ExternalKind::Global => ExportKind::Global,
                    wasmparser::ExternalKind::Tag => ExportKind::Tag,
                    other => return Err(invalid(format!("unsupported export kind {other:?}"))),
                };
                sec.export(e.name, kind, e.index);
            }
        }
        for (n, i) in &added {
            sec.export(n, ExportKind::Global, *i);
        }
        if step.is_some() {
            sec.export(STEP_ENTRY_EXPORT, ExportKind::Func, entry_func);
        }
        module.section(&sec);
        Ok(())
    };
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| invalid(e.to_string()))?;
        match payload {
            Payload::Version { .. } | Payload::End(_) => {}
            Payload::ExportSection(r) => {
                write_exports(&mut module, Some(r))?;
                wrote_exports = true;
            }
            other => {
                if let Some((id, range)) = other.as_section() {
                    // Start (8), element (9), data count (12), code (10) and
                    // data (11) follow the export section's slot.
                    if !wrote_exports && matches!(id, 8..=12) {
                        write_exports(&mut module, None)?;
                        wrote_exports = true;
                    }
                    let data = bytes
                        .get(range.clone())
                        .ok_or_else(|| invalid("section out of range".into()))?;
                    // With a step entry: its type (`(i32 i64 i64 i64) ->
                    // i32`), its function and its body go after the
                    // existing entries of the type (1), function (3) and
                    // code (10) sections, which its checks say exist.
                    let grown = match (step, id) {
                        (Some(_), 1) => Some(append_entry(
                            data,
                            &[0x60, 4, 0x7f, 0x7e, 0x7e, 0x7e, 1, 0x7f],
                        )),
                        (Some(_), 3) => Some(append_entry(data, &{
                            let mut t = Vec::new();
                            entry_type.encode(&mut t);
                            t
                        })),
                        (Some(f), 10) => Some(append_entry(data, &step_entry_body(f))),
                        _ => None,
                    };
                    match grown {
                        Some(d) => {
                            let d = d.map_err(|e| invalid(format!("section {id}: {e}")))?;
                            module.section(&RawSection { id, data: &d });
                        }
                        None => {
                            module.section(&RawSection { id, data });
                        }
                    }
                }
            }
        }
    }
    if !wrote_exports {
        write_exports(&mut module, None)?;
    }
    Ok((module.finish(), globals, step.is_some()))
}

/// Fuzz entry point: loads arbitrary bytes (binary or text) as an agent
/// module; never panics, and whenever instrumentation added the step entry
/// the compiled module exports it with its signature.
#[doc(hidden)]
pub fn fuzz_load(bytes: &[u8]) {
    use std::sync::OnceLock;
    use wasmtime::ValType;
    static ENGINE: OnceLock<Option<wasmtime::Engine>> = OnceLock::new();
    let Some(engine) = ENGINE.get_or_init(|| crate::engine::deterministic_engine().ok()) else {
        return;
    };
    let Ok(m) = crate::engine::load_module(engine, "fuzz", bytes, None, 1 << 24) else {
        return;
    };
    if m.step_entry {
        let ty = m
            .module
            .get_export(STEP_ENTRY_EXPORT)
            .and_then(|e| e.func().cloned())
            .expect("the step entry is exported");
        let params: Vec<ValType> = ty.params().collect();
        let results: Vec<ValType> = ty.results().collect();
        assert!(
            params.len() == 4
                && ValType::eq(&params[0], &ValType::I32)
                && params[1..].iter().all(|p| ValType::eq(p, &ValType::I64))
                && results.len() == 1
                && ValType::eq(&results[0], &ValType::I32),
            "step entry signature {params:?} -> {results:?}"
        );
    }
}
