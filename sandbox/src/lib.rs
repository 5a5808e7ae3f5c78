//! The sandbox of Lockstep's child processes: how a worker or the inference
//! host jails itself, step by step, before it touches anything untrusted;
//! the cgroups the supervisor puts each child in; and what `/proc` says
//! about a running child (`lockstep doctor`).
//!
//! ```no_run
//! use lockstep_sandbox::{Class, Config, Jail};
//! // In a child's `main`, before anything else (still single-threaded):
//! let cfg = Config::default();
//! let mut jail = Jail::enter(Class::Worker, cfg).unwrap_or_else(|e| e.exit());
//! // … build the engine, load the runtime …
//! jail.confine().unwrap_or_else(|e| e.exit());
//! // … attach the segment, handshake …
//! let report = jail.lock(|| { /* start every thread */ }).unwrap_or_else(|e| e.exit());
//! println!("{}", report.summary());
//! ```
//!
//! # Core concepts
//!
//! * A [`Layer`] is one confinement mechanism; each is a step of the
//!   bring-up, in this order (ARCHITECTURE.md, "Bring-up", repeats it):
//!
//!   | # | step | what | exit code |
//!   |---|------|------|-----------|
//!   | 1 | [`Layer::Fds`] | close every inherited descriptor but stdio and the segment | 73 |
//!   | 2 | [`Layer::Cgroup`] | join the cgroups the supervisor made for this child | 74 |
//!   | 3 | [`Layer::Namespaces`] | new user (when not root), network, IPC, mount and UTS namespaces | 75 |
//!   | 4 | [`Layer::Filesystem`] | an empty, read-only root (`pivot_root` to a tmpfs); CUDA keeps a read-only view | 76 |
//!   | 5 | [`Layer::Capabilities`] | empty the bounding and ambient sets | 78 |
//!   | 6 | [`Layer::Identity`] | drop to the unprivileged uid/gid (root supervisors) | 77 |
//!   | 7 | [`Layer::Capabilities`] | empty the effective, permitted and inheritable sets; `no_new_privs` | 78 |
//!   | 8 | [`Layer::Rlimits`] | address space, open files, file size, core dumps | 79 |
//!   | 9 | [`Layer::Landlock`] | deny every file access (CUDA: read its libraries and devices), TCP, signals out | 80 |
//!   | 10 | [`Layer::Seccomp`] | the class's system-call allowlist, on every thread | 81 |
//!
//!   Steps 1–3 run in [`Jail::enter`] (the process must be single-threaded
//!   for `unshare`), 4–7 in [`Jail::confine`] (after the class has loaded
//!   what it needs from the file system: ONNX Runtime), 8–10 in
//!   [`Jail::lock`], around the start of the child's threads (Landlock
//!   before them, because on older kernels it binds only the calling
//!   thread; seccomp after, because it forbids creating them).  The
//!   environment was cleared by the supervisor at spawn (only `LOCKSTEP_LOG`
//!   and the class's documented variables pass).
//!
//! * A [`Class`] is what the child is: a worker, or the inference host on
//!   the CPU or CUDA.  The class picks the seccomp allowlist
//!   ([`seccomp::allowlist`]) and the file system exceptions (CUDA: its
//!   libraries, `/dev/nvidia*`, `/proc`, `/sys`; documented in
//!   `docs/threat-model.md`).
//!
//! * A [`Mode`] says what happens when a layer cannot be set up: `strict`
//!   fails the child with the step's exit code, `best-effort` skips a layer
//!   the machine lacks (no user namespaces, no Landlock, no seccomp) with a
//!   warning, `log` is strict but a system call outside the allowlist is
//!   logged by the kernel instead of killing, `off` applies nothing.  Single
//!   layers can be turned off ([`Config::disabled`]); the supervisor warns
//!   and journals it.
//!
//! * [`cgroup`] is both sides of the cgroup layer: the supervisor's tree
//!   (created under its own cgroup, limits per child class and tenant, OOM
//!   kills counted from the cgroup's own events) and the child's joining.
//!
//! * [`inspect`] reads a running child's uid, capabilities, namespaces,
//!   seccomp state and cgroup limits from `/proc` — what `lockstep doctor`
//!   prints.
//!
//! Every step's failure is a [`JailError`] naming the step; the child exits
//! with its code ([`JailError::exit`]) and the supervisor reports which
//! step failed.

#![forbid(unsafe_code)]

pub mod cgroup;
#[cfg(feature = "fault-injection")]
pub mod escape;
mod fds;
mod filesystem;
mod identity;
pub mod inspect;
mod landlock_rules;
mod namespaces;
mod rlimits;
pub mod seccomp;

pub use lockstep_common::SandboxMode as Mode;
use shm_protocol::control::{ExitCode, SandboxReport};
use std::collections::BTreeSet;
use std::os::fd::RawFd;
use std::path::PathBuf;

/// What the child is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `lockstep-worker`: runs agents; needs no file, no thread once
    /// locked, no network.
    Worker,
    /// `lockstep-inference-host` on the CPU: ONNX Runtime is loaded before
    /// [`Jail::confine`]; models arrive over the ring; may start threads
    /// (ONNX Runtime's pools), never processes.
    InferenceCpu,
    /// `lockstep-inference-host` with CUDA: as the CPU class, plus read-only
    /// access to the CUDA libraries ([`Config::read_only`]), the
    /// `/dev/nvidia*` devices, `/proc` and `/sys` (the driver reads them),
    /// and the `ioctl`s the driver makes.
    InferenceCuda,
}

impl Class {
    /// Short name (`worker`, `inference-cpu`, `inference-cuda`).
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Worker => "worker",
            Class::InferenceCpu => "inference-cpu",
            Class::InferenceCuda => "inference-cuda",
        }
    }
}

/// One confinement mechanism, and the bring-up step that sets it up.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Layer {
    /// Inherited file descriptors closed.
    Fds,
    /// The child's own cgroups (memory, pids, cpu).
    Cgroup,
    /// New network, IPC, mount and UTS namespaces (and a user namespace when
    /// the supervisor is not root).
    Namespaces,
    /// An empty read-only root file system (needs [`Layer::Namespaces`]).
    Filesystem,
    /// An unprivileged uid/gid.
    Identity,
    /// No capabilities, `no_new_privs`.
    Capabilities,
    /// Resource limits.
    Rlimits,
    /// Landlock: file, network and signal access.
    Landlock,
    /// The seccomp-bpf system-call allowlist.
    Seccomp,
}

impl Layer {
    /// Every layer, in bring-up order.
    pub const ALL: [Layer; 9] = [
        Layer::Fds,
        Layer::Cgroup,
        Layer::Namespaces,
        Layer::Filesystem,
        Layer::Capabilities,
        Layer::Identity,
        Layer::Rlimits,
        Layer::Landlock,
        Layer::Seccomp,
    ];

    /// The command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Fds => "fds",
            Layer::Cgroup => "cgroup",
            Layer::Namespaces => "namespaces",
            Layer::Filesystem => "filesystem",
            Layer::Identity => "identity",
            Layer::Capabilities => "capabilities",
            Layer::Rlimits => "rlimits",
            Layer::Landlock => "landlock",
            Layer::Seccomp => "seccomp",
        }
    }

    /// Parses the command-line spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// The exit code of a child whose step for this layer failed.
    pub fn exit_code(self) -> ExitCode {
        match self {
            Layer::Fds => ExitCode::JailFds,
            Layer::Cgroup => ExitCode::JailCgroup,
            Layer::Namespaces => ExitCode::JailNamespaces,
            Layer::Filesystem => ExitCode::JailFilesystem,
            Layer::Identity => ExitCode::JailIdentity,
            Layer::Capabilities => ExitCode::JailCapabilities,
            Layer::Rlimits => ExitCode::JailRlimits,
            Layer::Landlock => ExitCode::JailLandlock,
            Layer::Seccomp => ExitCode::JailSeccomp,
        }
    }
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bring-up step failed.
#[derive(Debug, thiserror::Error)]
#[error("sandbox step `{layer}` failed: {message}")]
pub struct JailError {
    /// The step.
    pub layer: Layer,
    /// Why (names the setting that turns the layer off where there is one).
    pub message: String,
}

impl JailError {
    fn new(layer: Layer, message: impl Into<String>) -> Self {
        Self {
            layer,
            message: message.into(),
        }
    }

    /// Prints the error on stderr and exits with the step's code.
    pub fn exit(&self) -> ! {
        eprintln!("{}: {self}", program());
        self.layer.exit_code().exit()
    }
}

fn program() -> String {
    std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "lockstep-child".into())
}

/// The sandbox arguments the supervisor gives every child (`#[command(flatten)]`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct JailArgs {
    /// Process sandbox: strict (every layer or exit with the failed step's
    /// code), best-effort (skip layers the machine lacks, with a warning),
    /// log (seccomp violations are logged, not fatal: for auditing the
    /// allowlist) or off.
    #[arg(long, value_enum, default_value_t = Mode::Strict)]
    pub sandbox: Mode,
    /// Same as `--sandbox off`.
    #[arg(long, conflicts_with = "sandbox")]
    pub no_sandbox: bool,
    /// Turn one layer off (repeatable).
    #[arg(long = "disable", value_enum, value_name = "LAYER")]
    pub disable: Vec<Layer>,
    /// Uid to run as (when started as root; default 65534).
    #[arg(long, value_name = "UID")]
    pub uid: Option<u32>,
    /// Gid to run as (when started as root; default 65534).
    #[arg(long, value_name = "GID")]
    pub gid: Option<u32>,
    /// A cgroup directory to join (one per hierarchy; repeatable).
    #[arg(long = "cgroup", value_name = "DIR")]
    pub cgroups: Vec<PathBuf>,
    /// RLIMIT_AS in bytes (0: no limit).
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub address_space_limit: u64,
    /// A directory or file the child may read (CUDA libraries; repeatable).
    #[arg(long = "allow-read", value_name = "PATH")]
    pub read_only: Vec<PathBuf>,
}

impl JailArgs {
    /// The configuration, keeping `fds` open besides stdio.
    pub fn config(&self, keep_fds: &[RawFd]) -> Config {
        Config {
            mode: if self.no_sandbox {
                Mode::Off
            } else {
                self.sandbox
            },
            disabled: self.disable.iter().copied().collect(),
            uid: self.uid.unwrap_or(DEFAULT_ID),
            gid: self.gid.unwrap_or(DEFAULT_ID),
            cgroups: self.cgroups.clone(),
            keep_fds: keep_fds.to_vec(),
            address_space_limit: self.address_space_limit,
            read_only: self.read_only.clone(),
        }
    }
}

/// The uid and gid children run as when the supervisor is root ("nobody").
pub const DEFAULT_ID: u32 = 65534;

/// `RLIMIT_NOFILE` in the sandbox: the segment, a pidfd on the supervisor,
/// stdio, and ONNX Runtime's few.
pub const MAX_OPEN_FILES: u64 = 64;

/// What to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How strictly.
    pub mode: Mode,
    /// Layers turned off.
    pub disabled: BTreeSet<Layer>,
    /// Uid to drop to (when root).
    pub uid: u32,
    /// Gid to drop to (when root).
    pub gid: u32,
    /// Cgroup directories to join.
    pub cgroups: Vec<PathBuf>,
    /// Descriptors kept open besides 0–2.
    pub keep_fds: Vec<RawFd>,
    /// `RLIMIT_AS` (0: none).
    pub address_space_limit: u64,
    /// Paths readable in the CUDA class.
    pub read_only: Vec<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Strict,
            disabled: BTreeSet::new(),
            uid: DEFAULT_ID,
            gid: DEFAULT_ID,
            cgroups: Vec::new(),
            keep_fds: Vec::new(),
            address_space_limit: 0,
            read_only: Vec::new(),
        }
    }
}

impl Config {
    /// Whether `layer` is to be applied.
    pub fn wants(&self, layer: Layer) -> bool {
        self.mode != Mode::Off
            && !self.disabled.contains(&layer)
            && !(layer == Layer::Filesystem && self.disabled.contains(&Layer::Namespaces))
    }
}

/// How far one layer got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// In force.
    On,
    /// In force as far as the kernel goes (Landlock on an older ABI).
    Partial(String),
    /// Not applied, and why.
    Off(String),
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::On => f.write_str("on"),
            State::Partial(w) => write!(f, "partial ({w})"),
            State::Off(w) => write!(f, "off ({w})"),
        }
    }
}

/// What the jail put in place, layer by layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The class.
    pub class: Class,
    /// The mode.
    pub mode: Mode,
    /// Each layer applied so far, in order.
    pub layers: Vec<(Layer, State)>,
}

impl Report {
    /// The state of `layer` (`None`: not reached).
    pub fn state(&self, layer: Layer) -> Option<&State> {
        self.layers
            .iter()
            .find(|(l, _)| *l == layer)
            .map(|(_, s)| s)
    }

    /// One line: `fds=on cgroup=on … seccomp=on`.
    pub fn summary(&self) -> String {
        self.layers
            .iter()
            .map(|(l, s)| format!("{l}={s}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The form sent to the supervisor in [`shm_protocol::control::Up::Ready`].
    pub fn to_wire(&self) -> SandboxReport {
        SandboxReport {
            class: self.class.as_str().to_owned(),
            mode: self.mode.as_str().to_owned(),
            layers: self
                .layers
                .iter()
                .map(|(l, s)| (l.as_str().to_owned(), s.to_string()))
                .collect(),
        }
    }

    fn set(&mut self, layer: Layer, state: State) {
        if let Some(slot) = self.layers.iter_mut().find(|(l, _)| *l == layer) {
            // Capabilities are two steps; the second one's word stands.
            slot.1 = state;
        } else {
            self.layers.push((layer, state));
        }
    }
}

static OWN_CGROUPS: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();

/// The cgroup directories this process joined (step 2).
pub fn own_cgroups() -> Vec<PathBuf> {
    OWN_CGROUPS.get().cloned().unwrap_or_default()
}

/// A child in the middle of its bring-up (see the crate docs for the
/// steps).
#[derive(Debug)]
pub struct Jail {
    class: Class,
    cfg: Config,
    report: Report,
    /// Whether the process started as root (uid 0 in the initial user
    /// namespace's view of it).
    root: bool,
    /// Threads when [`Jail::confine`] began (empty: unknown).
    threads: Vec<String>,
}

/// The process's threads' names (empty when /proc cannot tell).
fn threads() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.flatten()
        .map(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .map(|c| c.trim().to_owned())
                .unwrap_or_default()
        })
        .collect()
}

impl Jail {
    /// Steps 1–3: descriptors, cgroups, namespaces.  Must be called while
    /// the process has a single thread.
    pub fn enter(class: Class, cfg: Config) -> Result<Self, JailError> {
        let root = nix::unistd::geteuid().is_root();
        let mut jail = Self {
            class,
            report: Report {
                class,
                mode: cfg.mode,
                layers: Vec::new(),
            },
            cfg,
            root,
            threads: Vec::new(),
        };
        if jail.cfg.mode == Mode::Off {
            for l in Layer::ALL {
                jail.report.set(l, State::Off("--sandbox off".into()));
            }
            return Ok(jail);
        }
        jail.step(Layer::Fds, |j| fds::close_inherited(&j.cfg.keep_fds))?;
        jail.step(Layer::Cgroup, |j| cgroup::join(&j.cfg.cgroups))?;
        if jail.report.state(Layer::Cgroup) == Some(&State::On) {
            let _ = OWN_CGROUPS.set(jail.cfg.cgroups.clone());
        }
        jail.step(Layer::Namespaces, |j| {
            namespaces::unshare_all(j.root, j.cfg.mode)
        })?;
        Ok(jail)
    }

    /// Changes the class (the inference host knows whether it runs on CUDA
    /// only after probing it); before [`Jail::confine`].
    pub fn set_class(&mut self, class: Class) {
        self.class = class;
        self.report.class = class;
    }

    /// Steps 4–7: the file system, capabilities and identity.  Called once
    /// the class has loaded what it needs from the file system.
    pub fn confine(&mut self) -> Result<(), JailError> {
        if self.cfg.mode == Mode::Off {
            return Ok(());
        }
        // Landlock (step 9) binds the calling thread only on older kernels:
        // no thread may exist before it.  /proc is still there to tell.
        self.threads = threads();
        let namespaces_on = self.report.state(Layer::Namespaces) == Some(&State::On);
        self.step(Layer::Filesystem, |j| {
            if !namespaces_on {
                return Ok(State::Off("no mount namespace".into()));
            }
            filesystem::confine(j.class, &j.cfg.read_only)
        })?;
        self.step(Layer::Capabilities, |_| identity::drop_bounding())?;
        let root = self.root;
        self.step(Layer::Identity, |j| {
            identity::drop_identity(root, j.cfg.uid, j.cfg.gid)
        })?;
        // Whatever the layers above did, no capability survives.
        let state =
            identity::drop_capabilities().map_err(|m| JailError::new(Layer::Capabilities, m))?;
        if !matches!(
            self.report.state(Layer::Capabilities),
            Some(State::Partial(_))
        ) {
            self.report.set(Layer::Capabilities, state);
        }
        Ok(())
    }

    /// Steps 8–10: [`Jail::restrict`], `start_threads` (every thread the
    /// child will ever need, except the inference host's ONNX Runtime
    /// pools), [`Jail::seal`].  Returns the report.
    pub fn lock(mut self, start_threads: impl FnOnce()) -> Result<Report, JailError> {
        self.restrict()?;
        start_threads();
        self.seal()
    }

    /// Steps 8–9: rlimits and Landlock.  Threads started after this are
    /// bound by Landlock whatever the kernel's ABI.
    pub fn restrict(&mut self) -> Result<(), JailError> {
        if self.cfg.mode == Mode::Off {
            return Ok(());
        }
        if self.threads.len() > 1 && self.cfg.wants(Layer::Landlock) {
            return Err(JailError::new(
                Layer::Landlock,
                format!(
                    "the process already ran {} threads ({}) before its sandbox was complete; Landlock must be applied while it has one",
                    self.threads.len(),
                    self.threads.join(", ")
                ),
            ));
        }
        self.step(Layer::Rlimits, |j| rlimits::set(j.cfg.address_space_limit))?;
        self.step(Layer::Landlock, |j| {
            landlock_rules::restrict(j.class, &j.cfg)
        })?;
        Ok(())
    }

    /// Step 10: the seccomp filter, on every thread.  Returns the report.
    pub fn seal(mut self) -> Result<Report, JailError> {
        if self.cfg.mode == Mode::Off {
            tracing::warn!("{} sandbox disabled (--sandbox off)", self.class.as_str());
            return Ok(self.report);
        }
        self.step(Layer::Seccomp, |j| seccomp::install(j.class, j.cfg.mode))?;
        tracing::debug!(report = %self.report.summary(), "sandbox in force");
        Ok(self.report)
    }

    /// Makes `path` (a file or directory) readable in the sandbox: bound
    /// read-only into the empty root and allowed by Landlock.  Before
    /// [`Jail::confine`].
    pub fn allow_read(&mut self, path: PathBuf) {
        if !self.cfg.read_only.contains(&path) {
            self.cfg.read_only.push(path);
        }
    }

    /// The report so far.
    pub fn report(&self) -> &Report {
        &self.report
    }

    fn step(
        &mut self,
        layer: Layer,
        f: impl FnOnce(&Self) -> Result<State, String>,
    ) -> Result<(), JailError> {
        if !self.cfg.wants(layer) {
            let why = if self.cfg.disabled.contains(&layer) {
                format!("--disable {layer}")
            } else {
                "--disable namespaces".to_owned()
            };
            self.report.set(layer, State::Off(why));
            return Ok(());
        }
        let state = f(self).map_err(|m| JailError::new(layer, m))?;
        self.report.set(layer, state);
        Ok(())
    }
}

/// `Err` in strict and log modes, a warning and [`State::Off`] in
/// best-effort mode: for a layer the machine lacks.
fn unavailable(mode: Mode, what: &str, why: String) -> Result<State, String> {
    if mode == Mode::BestEffort {
        tracing::warn!(reason = %why, "{what} is NOT in force (--sandbox best-effort)");
        Ok(State::Off(why))
    } else {
        Err(format!(
            "{why}; use --sandbox best-effort (manifest: [sandbox] mode = \"best-effort\") to run without it"
        ))
    }
}
