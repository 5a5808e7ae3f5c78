//! The supervisor's side of its children's sandbox (the children's side is
//! `lockstep_sandbox`): the settings (manifest `[sandbox]`, overridden on
//! the command line), the cgroup tree, and for each child it starts its
//! sandbox arguments, its cgroup and its environment.
//!
//! Children start with an empty environment but for [`PASSED_ENV`] (and,
//! for workers, [`WORKER_MALLOC_TUNABLES`]); each
//! gets its own cgroup (limits per class, below its tenant's group for a
//! tenant with process isolation) and the arguments that make it jail
//! itself (ARCHITECTURE.md, "Bring-up").  Layers that are off — turned off
//! by the manifest or the command line, or missing on this machine in
//! `best-effort` mode — are warned about once, loudly, and written in the
//! journal's header ([`Jails::layers_off`]).

use crate::manifest::{Manifest, ProcessLimits, SandboxDef};
use lockstep_common::SandboxMode;
use lockstep_sandbox::Layer;
use lockstep_sandbox::cgroup::{CgroupError, Group, Limits, Tree};
use std::collections::BTreeSet;
use std::ffi::OsString;

/// Environment variables passed to children when set in the supervisor's:
/// logging, and what the inference host needs to find ONNX Runtime and
/// CUDA.  (Test builds also pass the fault-injection variables a test
/// sets for a child explicitly.)
pub const PASSED_ENV: &[&str] = &[
    "LOCKSTEP_LOG",
    "RUST_BACKTRACE",
    "ORT_DYLIB_PATH",
    "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES",
];

/// What the children's sandbox is to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSettings {
    /// How strictly.
    pub mode: SandboxMode,
    /// Layers turned off, with who turned them off (`manifest`, `--flag`).
    pub disabled: Vec<(Layer, String)>,
    /// Uid of the children when the supervisor is root.
    pub uid: u32,
    /// Gid of the children when the supervisor is root.
    pub gid: u32,
    /// Each worker's cgroup limits.
    pub worker: Limits,
    /// The inference host's cgroup limits.
    pub inference: Limits,
    /// Each worker's `RLIMIT_AS` (0: none).
    pub worker_address_space: u64,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        let def = SandboxDef::default();
        let mode = std::env::var("LOCKSTEP_SANDBOX")
            .ok()
            .and_then(|v| SandboxMode::parse(v.trim()))
            .unwrap_or(def.mode);
        Self {
            mode,
            disabled: Vec::new(),
            uid: def.uid,
            gid: def.gid,
            worker: def.worker,
            inference: def.inference,
            worker_address_space: crate::config::MIN_ADDRESS_SPACE,
        }
    }
}

/// The environment children get (the [`PASSED_ENV`] variables that are
/// set).
pub fn passed_env() -> Vec<(String, String)> {
    PASSED_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect()
}

/// glibc's allocator settings for workers: the heap — every agent's
/// wasmtime store and instance — on transparent huge pages, grown 4 MiB at
/// a time so that whole aligned 2 MiB ranges of it exist when it is first
/// touched (with 2 MiB, half the workers got none, depending on where the
/// heap started).  With thousands of
/// agents per worker a step's page walks through the store and instance
/// are then mostly TLB hits (10,000 agents: tick p50 −10 %), for ≈ 0.1 KiB
/// more per agent at 100,000 and a few MB per worker at small sizes
/// (docs/benchmarks.md).  The per-thread cache keeps up to 65,535 free
/// chunks of each small size instead of 7: a tick that delivers and sends
/// thousands of messages allocates and frees a payload for each, and past
/// 7 every free went through glibc's bins and consolidation (a third of a
/// message-heavy worker's time; with the cache 12 %, no change in memory
/// at 100,000 idle agents).  Allocation placement reaches no result.
pub const WORKER_MALLOC_TUNABLES: &str =
    "glibc.malloc.hugetlb=1:glibc.malloc.top_pad=4194304:glibc.malloc.tcache_count=65535";

/// The environment of a worker: [`passed_env`], plus
/// `GLIBC_TUNABLES` = [`WORKER_MALLOC_TUNABLES`].
pub fn worker_env() -> Vec<(String, String)> {
    let mut env = passed_env();
    env.push((
        "GLIBC_TUNABLES".to_owned(),
        WORKER_MALLOC_TUNABLES.to_owned(),
    ));
    env
}

/// The environment of an inference host: [`passed_env`], plus
/// `ORT_DISABLE_TELEMETRY=1` — ONNX Runtime's own telemetry (its 1DS
/// uploader, on by default in the official builds) opens sockets some
/// seconds after start-up; `DisableTelemetryEvents` does not stop it, and
/// the host's seccomp filter would kill the host for it.  Every spawn of a
/// host (the run's, `lockstep ping`'s, tests' and benches') takes this.
pub fn inference_host_env() -> Vec<(String, String)> {
    let mut env = passed_env();
    env.push(("ORT_DISABLE_TELEMETRY".to_owned(), "1".to_owned()));
    env
}

impl SandboxSettings {
    /// The manifest's settings, with `LOCKSTEP_SANDBOX` (a mode) applied.
    pub fn from_manifest(m: &Manifest) -> Self {
        let def: &SandboxDef = &m.sandbox;
        let mut worker = def.worker;
        if worker.memory.is_none() {
            worker.memory = Some(default_worker_memory(m));
        }
        let mut s = Self {
            mode: def.mode,
            disabled: def
                .disable
                .iter()
                .map(|l| (*l, "manifest [sandbox] disable".to_owned()))
                .collect(),
            uid: def.uid,
            gid: def.gid,
            worker,
            inference: def.inference,
            worker_address_space: crate::config::default_address_space_limit(m),
        };
        if let Some(mode) = std::env::var("LOCKSTEP_SANDBOX")
            .ok()
            .and_then(|v| SandboxMode::parse(v.trim()))
        {
            s.mode = mode;
        }
        s
    }

    /// Turns `layer` off (`by`: who asked).
    pub fn disable(&mut self, layer: Layer, by: &str) {
        if !self.disabled.iter().any(|(l, _)| *l == layer) {
            self.disabled.push((layer, by.to_owned()));
        }
    }

    /// The layers these settings turn off, one line each (`seccomp
    /// (manifest [sandbox] disable)`): what the journal's header records.
    pub fn layers_off(&self) -> Vec<String> {
        let mut out: Vec<String> = match self.mode {
            SandboxMode::Off => vec!["all (mode off)".to_owned()],
            SandboxMode::Log => {
                vec!["seccomp kills (mode log: violations are only logged)".to_owned()]
            }
            SandboxMode::BestEffort => {
                vec!["any the machine lacks (mode best-effort)".to_owned()]
            }
            SandboxMode::Strict => Vec::new(),
        };
        if self.mode != SandboxMode::Off {
            out.extend(self.disabled.iter().map(|(l, by)| format!("{l} ({by})")));
        }
        out.sort();
        out
    }

    fn is_disabled(&self, layer: Layer) -> bool {
        self.mode == SandboxMode::Off || self.disabled.iter().any(|(l, _)| *l == layer)
    }
}

/// The default memory limit of a worker: the same bound as its address
/// space (4 GiB for the process plus twice every agent's memory limit).
pub fn default_worker_memory(m: &Manifest) -> u64 {
    crate::config::default_address_space_limit(m)
}

/// What kind of child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildClass {
    /// A worker (also compile steps and bisection probes).
    Worker,
    /// The inference host.
    Inference,
}

/// What a child is started with.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Its sandbox arguments.
    pub args: Vec<OsString>,
    /// Its cgroup, if the layer is on.
    pub cgroup: Option<Group>,
    /// Its environment (besides what a test adds).
    pub env: Vec<(String, String)>,
}

/// The run's jails: settings and cgroup tree.
#[derive(Debug)]
pub struct Jails {
    settings: SandboxSettings,
    tree: Option<Tree>,
    /// Layers this machine lacks (best-effort mode), with why.
    missing: Vec<(Layer, String)>,
}

impl Jails {
    /// Creates the cgroup tree (unless the layer is off).  In `strict` and
    /// `log` modes a machine without usable cgroups is an error naming the
    /// setting that turns the layer off; in `best-effort` mode a warning.
    pub fn new(settings: SandboxSettings) -> Result<Self, String> {
        let mut missing = Vec::new();
        let tree = if settings.is_disabled(Layer::Cgroup) {
            None
        } else {
            match Tree::create() {
                Ok(t) => Some(t),
                Err(CgroupError::Unavailable(why)) if settings.mode == SandboxMode::BestEffort => {
                    missing.push((Layer::Cgroup, why));
                    None
                }
                Err(CgroupError::Unavailable(why)) => {
                    return Err(format!(
                        "{why}; set [sandbox] disable = [\"cgroup\"] in the manifest, or mode = \"best-effort\", to run without per-process limits"
                    ));
                }
                Err(e) => return Err(format!("cgroups: {e}")),
            }
        };
        let jails = Self {
            settings,
            tree,
            missing,
        };
        for line in jails.layers_off() {
            eprintln!(
                "lockstep: WARNING: sandbox layer off: {line} — children are less confined than the defaults"
            );
        }
        Ok(jails)
    }

    /// Jails with the default settings (mode from `LOCKSTEP_SANDBOX`) and
    /// no cgroup: for children started outside a run (tests, benchmarks).
    pub fn without_cgroups() -> Self {
        let mut settings = SandboxSettings::default();
        settings.disable(Layer::Cgroup, "started outside a run");
        Self {
            settings,
            tree: None,
            missing: Vec::new(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &SandboxSettings {
        &self.settings
    }

    /// Layers that are off, one line each: those the settings turn off
    /// and those this machine lacks (best-effort mode).
    pub fn layers_off(&self) -> Vec<String> {
        let mut out = self.settings.layers_off();
        out.extend(
            self.missing
                .iter()
                .map(|(l, why)| format!("{l} (not available: {why})")),
        );
        out
    }

    /// The tree's root group (for `lockstep doctor`).
    pub fn cgroup_root(&self) -> Option<&Group> {
        self.tree.as_ref().map(Tree::root)
    }

    /// Prepares child `name` of `class`, for tenant `tenant` (name and
    /// process limits) when it runs one tenant's agents alone.
    pub fn prepare(
        &mut self,
        class: ChildClass,
        name: &str,
        tenant: Option<(&str, &ProcessLimits)>,
    ) -> Result<Prepared, String> {
        let s = &self.settings;
        let mut args: Vec<OsString> = vec!["--sandbox".into(), s.mode.as_str().into()];
        let mut off: BTreeSet<Layer> = s.disabled.iter().map(|(l, _)| *l).collect();
        off.extend(self.missing.iter().map(|(l, _)| *l));
        let cgroup = match &mut self.tree {
            Some(tree) if s.mode != SandboxMode::Off => {
                let parent = match tenant {
                    Some((t, limits)) => Some(
                        tree.tenant(t, limits)
                            .map_err(|e| format!("cgroup of tenant {t}: {e}"))?,
                    ),
                    None => None,
                };
                let limits = match class {
                    ChildClass::Worker => s.worker,
                    ChildClass::Inference => s.inference,
                };
                let g = tree
                    .child(parent.as_ref(), name, &limits)
                    .map_err(|e| format!("cgroup of {name}: {e}"))?;
                for d in g.join_dirs() {
                    args.push("--cgroup".into());
                    args.push(d.into());
                }
                Some(g)
            }
            _ => {
                off.insert(Layer::Cgroup);
                None
            }
        };
        for l in off {
            args.push("--disable".into());
            args.push(l.as_str().into());
        }
        args.push("--uid".into());
        args.push(s.uid.to_string().into());
        args.push("--gid".into());
        args.push(s.gid.to_string().into());
        if class == ChildClass::Worker && s.worker_address_space > 0 {
            args.push("--address-space-limit".into());
            args.push(s.worker_address_space.to_string().into());
        }
        let env = match class {
            ChildClass::Inference => inference_host_env(),
            ChildClass::Worker => worker_env(),
        };
        Ok(Prepared { args, cgroup, env })
    }
}
