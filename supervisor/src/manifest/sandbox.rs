//! The manifest's `[sandbox]` table and the process limits of tenants.
//!
//! ```toml
//! [sandbox]
//! mode = "strict"          # strict | best-effort | log | off (default strict)
//! disable = ["seccomp"]    # layers turned off: warned about and journaled
//! uid = 65534              # who children run as when the supervisor is root
//! gid = 65534
//!
//! [sandbox.worker]         # cgroup limits of each worker process
//! memory = "4GiB"          # hard limit (default: 4 GiB + twice the agents' memory)
//! pids = 256               # threads and processes (default 256)
//! cpu = 1.5                # cores (quota; default none)
//! cpu_weight = 100         # 1–10000 (default 100)
//!
//! [sandbox.inference]      # … of the inference host
//! memory = "8GiB"          # default 8 GiB
//! pids = 1024              # default 1024
//!
//! [[tenants]]
//! name = "batch"
//! isolation = "process"    # its agents get workers of their own (default "shared")
//! workers = 1              # how many (default 1)
//! process_memory = "1GiB"  # cgroup limits of all its workers together
//! process_pids = 512
//! process_cpu = 1.0
//! process_cpu_weight = 50
//! ```

use super::{Ctx, ManifestError, RawSize, parse_size};
use lockstep_common::SandboxMode;
use lockstep_sandbox::Layer;
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// Default `pids` of a worker.
pub const WORKER_PIDS: u64 = 256;
/// Default `memory` of the inference host.
pub const INFERENCE_MEMORY: u64 = 8 << 30;
/// Default `pids` of the inference host.
pub const INFERENCE_PIDS: u64 = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSandbox {
    mode: Option<Spanned<String>>,
    disable: Option<Vec<Spanned<String>>>,
    uid: Option<Spanned<u32>>,
    gid: Option<Spanned<u32>>,
    worker: Option<RawLimits>,
    inference: Option<RawLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    memory: Option<Spanned<RawSize>>,
    pids: Option<Spanned<u64>>,
    cpu: Option<Spanned<f64>>,
    cpu_weight: Option<Spanned<u64>>,
}

/// The raw process limits of a tenant (`process_*` keys).
#[derive(Debug, Default)]
pub(super) struct RawTenantLimits<'a> {
    pub(super) memory: Option<&'a Spanned<RawSize>>,
    pub(super) pids: Option<&'a Spanned<u64>>,
    pub(super) cpu: Option<&'a Spanned<f64>>,
    pub(super) cpu_weight: Option<&'a Spanned<u64>>,
}

/// Resource limits of a process or a group of processes (`None`: none):
/// the cgroup limits themselves.
pub use lockstep_sandbox::cgroup::Limits as ProcessLimits;

/// The validated `[sandbox]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxDef {
    /// How strictly.
    #[serde(with = "mode_serde")]
    pub mode: SandboxMode,
    /// Layers turned off.
    pub disable: Vec<Layer>,
    /// Uid of the children when the supervisor is root.
    pub uid: u32,
    /// Gid of the children when the supervisor is root.
    pub gid: u32,
    /// Each worker's limits (`memory` unset: computed from the agents).
    pub worker: ProcessLimits,
    /// The inference host's limits.
    pub inference: ProcessLimits,
}

impl Default for SandboxDef {
    fn default() -> Self {
        Self {
            mode: SandboxMode::Strict,
            disable: Vec::new(),
            uid: lockstep_sandbox::DEFAULT_ID,
            gid: lockstep_sandbox::DEFAULT_ID,
            worker: ProcessLimits {
                memory: None,
                pids: Some(WORKER_PIDS),
                cpu_millis: None,
                cpu_weight: None,
            },
            inference: ProcessLimits {
                memory: Some(INFERENCE_MEMORY),
                pids: Some(INFERENCE_PIDS),
                cpu_millis: None,
                cpu_weight: None,
            },
        }
    }
}

mod mode_serde {
    use lockstep_common::SandboxMode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &SandboxMode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(m.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SandboxMode, D::Error> {
        let s = String::deserialize(d)?;
        SandboxMode::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("sandbox mode `{s}`")))
    }
}

/// How a tenant's agents share processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// In the run's shared workers.
    #[default]
    Shared,
    /// In workers of their own, in the tenant's cgroup.
    Process,
}

pub(super) fn limits(
    cx: &Ctx<'_>,
    field: &str,
    raw: &RawTenantLimits<'_>,
    mut out: ProcessLimits,
) -> Result<ProcessLimits, ManifestError> {
    if let Some(m) = raw.memory {
        let bytes = parse_size(m.get_ref())
            .or_else(|e| cx.err(Some(m.span()), format!("{field}memory"), e))?;
        if bytes < (16 << 20) {
            return cx.err(
                Some(m.span()),
                format!("{field}memory"),
                "must be at least 16MiB",
            );
        }
        out.memory = Some(bytes);
    }
    if let Some(p) = raw.pids {
        if *p.get_ref() < 4 {
            return cx.err(Some(p.span()), format!("{field}pids"), "must be at least 4");
        }
        out.pids = Some(*p.get_ref());
    }
    if let Some(c) = raw.cpu {
        let v = *c.get_ref();
        if !(0.01..=4096.0).contains(&v) {
            return cx.err(
                Some(c.span()),
                format!("{field}cpu"),
                "must be between 0.01 and 4096 cores",
            );
        }
        out.cpu_millis = Some((v * 1000.0).round() as u64);
    }
    if let Some(w) = raw.cpu_weight {
        if !(1..=10_000).contains(w.get_ref()) {
            return cx.err(
                Some(w.span()),
                format!("{field}cpu_weight"),
                "must be between 1 and 10000",
            );
        }
        out.cpu_weight = Some(*w.get_ref());
    }
    Ok(out)
}

pub(super) fn validate(
    cx: &Ctx<'_>,
    raw: Option<&RawSandbox>,
) -> Result<SandboxDef, ManifestError> {
    let mut def = SandboxDef::default();
    let Some(raw) = raw else {
        return Ok(def);
    };
    if let Some(m) = &raw.mode {
        def.mode = match SandboxMode::parse(m.get_ref()) {
            Some(v) => v,
            None => {
                return cx.err(
                    Some(m.span()),
                    "sandbox.mode",
                    format!(
                        "`{}` is not one of strict, best-effort, log, off",
                        m.get_ref()
                    ),
                );
            }
        };
    }
    for (i, l) in raw.disable.iter().flatten().enumerate() {
        match Layer::parse(l.get_ref()) {
            Some(Layer::Fds) => {
                return cx.err(
                    Some(l.span()),
                    format!("sandbox.disable[{i}]"),
                    "the fds step cannot be turned off",
                );
            }
            Some(layer) => {
                if !def.disable.contains(&layer) {
                    def.disable.push(layer);
                }
            }
            None => {
                let known: Vec<&str> = Layer::ALL.iter().map(|l| l.as_str()).collect();
                return cx.err(
                    Some(l.span()),
                    format!("sandbox.disable[{i}]"),
                    format!(
                        "unknown layer `{}` (one of {})",
                        l.get_ref(),
                        known.join(", ")
                    ),
                );
            }
        }
    }
    def.disable.sort();
    for (field, v, slot) in [
        ("sandbox.uid", &raw.uid, &mut def.uid),
        ("sandbox.gid", &raw.gid, &mut def.gid),
    ] {
        if let Some(v) = v {
            if *v.get_ref() == 0 {
                return cx.err(
                    Some(v.span()),
                    field,
                    "0 is root: children must run unprivileged (disable the identity layer to keep root)",
                );
            }
            *slot = *v.get_ref();
        }
    }
    for (name, raw, slot) in [
        ("worker", &raw.worker, &mut def.worker),
        ("inference", &raw.inference, &mut def.inference),
    ] {
        if let Some(r) = raw {
            let t = RawTenantLimits {
                memory: r.memory.as_ref(),
                pids: r.pids.as_ref(),
                cpu: r.cpu.as_ref(),
                cpu_weight: r.cpu_weight.as_ref(),
            };
            *slot = limits(cx, &format!("sandbox.{name}."), &t, *slot)?;
        }
    }
    Ok(def)
}

#[cfg(test)]
mod tests {
    use super::super::Manifest;
    use super::*;
    use std::path::Path;

    fn parse(extra: &str) -> Result<Manifest, super::super::ManifestError> {
        Manifest::parse(
            &format!("[run]\nseed = 1\n\n{extra}"),
            "m.toml",
            Path::new("."),
        )
    }

    #[test]
    fn the_sandbox_table_is_validated() {
        let m = parse(
            "[sandbox]\nmode = \"best-effort\"\ndisable = [\"seccomp\", \"cgroup\"]\nuid = 1000\ngid = 1001\n\
             [sandbox.worker]\nmemory = \"1GiB\"\npids = 64\ncpu = 1.5\ncpu_weight = 50\n\
             [sandbox.inference]\nmemory = \"2GiB\"\n\n\
             [[tenants]]\nname = \"a\"\nisolation = \"process\"\nworkers = 2\nprocess_memory = \"512MiB\"\nprocess_cpu = 0.5\n",
        )
        .unwrap();
        let s = &m.sandbox;
        assert_eq!(s.mode, SandboxMode::BestEffort);
        assert_eq!(s.disable, vec![Layer::Cgroup, Layer::Seccomp]);
        assert_eq!((s.uid, s.gid), (1000, 1001));
        assert_eq!(s.worker.memory, Some(1 << 30));
        assert_eq!(s.worker.pids, Some(64));
        assert_eq!(s.worker.cpu_millis, Some(1500));
        assert_eq!(s.worker.cpu_weight, Some(50));
        assert_eq!(s.inference.memory, Some(2 << 30));
        assert_eq!(s.inference.pids, Some(INFERENCE_PIDS));
        let t = &m.tenants[0];
        assert_eq!(t.isolation, Isolation::Process);
        assert_eq!(t.workers, 2);
        assert_eq!(t.process.memory, Some(512 << 20));
        assert_eq!(t.process.cpu_millis, Some(500));
        // Defaults: every layer on, unprivileged ids, worker memory computed later.
        let d = parse("").unwrap().sandbox;
        assert_eq!(d, SandboxDef::default());
        assert!(d.disable.is_empty());
        assert_eq!(d.worker.memory, None);
    }

    #[test]
    fn bad_sandbox_settings_name_their_field() {
        for (text, field, what) in [
            ("[sandbox]\nmode = \"lax\"\n", "sandbox.mode", "not one of"),
            (
                "[sandbox]\ndisable = [\"moat\"]\n",
                "sandbox.disable[0]",
                "unknown layer `moat`",
            ),
            (
                "[sandbox]\ndisable = [\"fds\"]\n",
                "sandbox.disable[0]",
                "cannot be turned off",
            ),
            ("[sandbox]\nuid = 0\n", "sandbox.uid", "0 is root"),
            (
                "[sandbox.worker]\nmemory = \"1MiB\"\n",
                "sandbox.worker.memory",
                "at least 16MiB",
            ),
            (
                "[sandbox.worker]\npids = 1\n",
                "sandbox.worker.pids",
                "at least 4",
            ),
            (
                "[sandbox.inference]\ncpu = 0.0\n",
                "sandbox.inference.cpu",
                "between 0.01",
            ),
            (
                "[sandbox.worker]\ncpu_weight = 0\n",
                "sandbox.worker.cpu_weight",
                "between 1",
            ),
            (
                "[[tenants]]\nname = \"a\"\nprocess_memory = \"1GiB\"\n",
                "tenants[0].isolation",
                "need isolation = \"process\"",
            ),
            (
                "[[tenants]]\nname = \"a\"\nisolation = \"process\"\nworkers = 0\n",
                "tenants[0].workers",
                "between 1 and 64",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
            assert!(e.message.contains(what), "{text}: {e}");
            assert!(e.line > 0, "{text}: {e}");
        }
    }
}
