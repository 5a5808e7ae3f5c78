//! The inference service: the supervisor's side of `lockstep-inference-host`.
//!
//! [`InferenceService`] owns the inference host process (started only when
//! the manifest declares `[[models]]`), loads every declared model version
//! into it with its BLAKE3 check, and answers the agents' requests:
//!
//! 1. every request arrives with the version that answers it, pinned when
//!    it was asked (`id` → the model's *current* version, from the
//!    [`SimState::model_versions`](crate::sim::SimState::model_versions)
//!    table changed only by the journaled
//!    [`Input::SwapModel`](crate::sim::Input::SwapModel); `id@version` →
//!    that version); the built-in `echo` model (unless the manifest
//!    declares an `echo`) answers with its input, without the host;
//! 2. a tick's requests are grouped by `(model, version)` (groups in that
//!    order; inside a group the queue's canonical order — agent id, then
//!    request id — is kept) and each group goes to the host as one
//!    [`InferenceCommand::Infer`] with the model's `max_batch` (however
//!    large: the endpoint carries it in as many frames as it needs), sent
//!    as soon as the tick that asked is over ([`InferenceService::submit`]);
//!    batches of different ticks are never merged;
//! 3. the run waits for the answers only when they are due — after tick
//!    `asked + latency_ticks − 1` ([`InferenceService::collect`],
//!    [`pipeline`]) — and the host's outputs come back as ABI tensors
//!    ([`shm_protocol::inference::Tensor::encode_abi`]).
//!
//! Everything that goes wrong *for a request* — an unknown model or version,
//! a malformed input tensor, an input the model refuses, an output too large
//! for the reply — is an `Err(text)` answer for that request (a kind-4
//! message for the agent), deterministic, never a supervisor error.
//!
//! # Host crashes
//!
//! The host fails like any child ([`crate::failure`]): it dies (abort,
//! SIGKILL, OOM), its heartbeat stalls while it owes an answer (a stopped
//! or hung host is detected within [`InferenceConfig::hang_timeout`], not
//! at the batch deadline), its ring is corrupt, it breaks the protocol, or
//! it is found dead before a command.  Whatever the cause, the service
//! kills what is left of it, starts a new one, reloads every model, and
//! sends every command still in flight again, once, in order: inference is
//! deterministic on the CPU, so the agents see exactly the answers a
//! failure-free run gives.  After
//! [`InferenceConfig::max_attempts`] failed attempts at one command its
//! requests are answered with errors (a host that cannot run them is
//! reported, the run goes on).  Every restart is logged once, with its
//! cause, and goes to telemetry ([`InferenceTelemetry::host_restarts`]),
//! never to the journal.
//!
//! The supervisor trusts nothing the host sends: a reply with the wrong batch
//! id, the wrong number or order of results, or an output whose hash does not
//! match is a protocol violation, handled like a crash.

use crate::child::{Child, ChildError, ChildSpec, locate_binary};
use crate::failure::{Cause, chain};
use crate::manifest::ModelDef;
use crate::reaper::{ChildExit, Reaper};
use crate::telemetry::InferenceTelemetry;
use shm_protocol::control::{Down, Role, Up};
use shm_protocol::inference::{InferenceCommand, InferenceReply};
use shm_protocol::segment::SegmentConfig;
use shm_protocol::{ChannelError, PidFd, WaitPolicy};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod pipeline;
mod text;
pub mod tolerance;
pub use pipeline::Collected;

/// Name of the built-in model that answers with its input (no host needed).
pub const ECHO_MODEL: &str = "echo";
/// Ring capacity per direction between the supervisor and the host.
pub const HOST_RING: usize = 4 << 20;
/// Largest input tensor of one request (a larger one is answered with an
/// error).
pub const MAX_INPUT_BYTES: usize = shm_protocol::inference::MAX_INPUT;
/// Name of the host process.
pub const HOST_NAME: &str = "inference-host";

/// How to run the inference host.
#[derive(Debug, Clone)]
pub struct InferenceConfig {
    /// The host binary (`None`: next to the running executable, or
    /// `$LOCKSTEP_INFERENCE_HOST_BIN`; looked up only when models are
    /// declared).
    pub host_bin: Option<PathBuf>,
    /// `--device` of the host: `cpu` (default: bit-reproducible), `auto` or
    /// `cuda`.  `$LOCKSTEP_INFERENCE_DEVICE` overrides the default.
    pub device: String,
    /// Intra-op threads per model session (1 keeps results independent of
    /// the thread count).
    pub intra_threads: u16,
    /// Longest wait for the host's hello and for each model load.
    pub start_timeout: Duration,
    /// Longest wait for one command's answer, however alive the host looks.
    pub batch_timeout: Duration,
    /// Longest silence of the host's heartbeat while it owes an answer.
    pub hang_timeout: Duration,
    /// Attempts at one command (first try + restarts) before its requests
    /// are answered with errors.
    pub max_attempts: u32,
    /// Extra environment of the host (fault injection in tests; by
    /// default [`crate::inject::inference_host_env`]).
    pub env: Vec<(String, String)>,
    /// The run's jails (sandbox settings and cgroups); `None`: the host
    /// is jailed with the default settings and no cgroup.
    pub jails: Option<std::sync::Arc<std::sync::Mutex<crate::jail::Jails>>>,
    /// The host runs on another machine (`None`: here).
    pub remote: Option<crate::remote::RemoteHost>,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            host_bin: None,
            device: std::env::var("LOCKSTEP_INFERENCE_DEVICE").unwrap_or_else(|_| "cpu".into()),
            intra_threads: 1,
            start_timeout: Duration::from_secs(120),
            batch_timeout: Duration::from_secs(120),
            hang_timeout: crate::config::DEFAULT_HANG_TIMEOUT,
            max_attempts: 3,
            env: crate::inject::inference_host_env(),
            jails: None,
            remote: None,
        }
    }
}

/// Why the inference service could not start.
#[derive(Debug, thiserror::Error)]
pub enum InferenceStartError {
    /// The host binary was not found.
    #[error("inference host: {0}")]
    Locate(String),
    /// A declared model could not be loaded.
    #[error("model {id}@{version} ({path}): {reason}")]
    Model {
        /// Model id.
        id: String,
        /// Version.
        version: String,
        /// Its file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The host process could not be started or did not answer.
    #[error("{0}")]
    Host(String),
}

/// A declared model version, with the hash its file must have.
#[derive(Debug, Clone)]
struct ModelEntry {
    def: ModelDef,
    blake3_hex: String,
    /// The file's bytes, read once (the host reads no file; a restarted
    /// host gets the very bytes the run started with).
    bytes: std::sync::Arc<Vec<u8>>,
}

/// The running host process.
#[derive(Debug)]
struct Host {
    child: Child,
    /// Our own pidfd on it (signals through it can never hit a reused pid).
    pidfd: Option<PidFd>,
    /// Where its models run.
    device: String,
}

/// An answer waiting to be collected, and the device that computed it
/// (`builtin` for the supervisor's own).
type Ready = (Result<Vec<u8>, String>, String);

/// The supervisor's inference service (see the module docs).
#[derive(Debug)]
pub struct InferenceService {
    cfg: InferenceConfig,
    /// Declared models, in manifest order.
    models: Vec<ModelEntry>,
    /// `(id, version)` → index into `models`.
    index: BTreeMap<(String, String), usize>,
    /// First declared version of each id (the fallback current version).
    first: BTreeMap<String, String>,
    bin: Option<PathBuf>,
    reaper: Option<(Reaper, mpsc::Receiver<ChildExit>)>,
    host: Option<Host>,
    next_batch: u64,
    restarts: u64,
    /// Restart lines for the live view since the last call.
    notes: Vec<String>,
    /// Batches sent and not answered, in the order they were sent.
    inflight: std::collections::VecDeque<pipeline::Batch>,
    /// Answers not collected yet, by (agent, request id), with the device
    /// that computed each.
    ready: BTreeMap<(u64, u64), Ready>,
    /// Telemetry not collected yet.
    telemetry: Vec<InferenceTelemetry>,
    /// Requests asked from outside the run so far.
    outside_seq: u64,
}

impl InferenceService {
    /// Checks every declared model file against its pinned hash and, if
    /// there are models, starts the host and loads them all (a model that
    /// fails to load is an error naming it and its file).  Without models
    /// no process is started; only the built-in `echo` model answers.
    pub fn start(models: &[ModelDef], cfg: InferenceConfig) -> Result<Self, InferenceStartError> {
        let mut entries = Vec::with_capacity(models.len());
        let mut index = BTreeMap::new();
        let mut first = BTreeMap::new();
        for def in models {
            let model_err = |reason: String| InferenceStartError::Model {
                id: def.id.clone(),
                version: def.version.clone(),
                path: def.path.display().to_string(),
                reason,
            };
            let bytes = std::fs::read(&def.path)
                .map_err(|e| model_err(format!("cannot read the file: {e}")))?;
            let actual = blake3::hash(&bytes).to_hex().to_string();
            if let Some(pin) = &def.blake3
                && !pin.eq_ignore_ascii_case(&actual)
            {
                return Err(model_err(format!(
                    "BLAKE3 is {actual}, the manifest pins {pin}"
                )));
            }
            // A text model travels with its tokenizer.
            let (bytes, actual) = text::host_bytes(def, bytes, actual).map_err(model_err)?;
            index.insert((def.id.clone(), def.version.clone()), entries.len());
            first
                .entry(def.id.clone())
                .or_insert_with(|| def.version.clone());
            entries.push(ModelEntry {
                def: def.clone(),
                blake3_hex: actual,
                bytes: std::sync::Arc::new(bytes),
            });
        }
        let mut svc = Self {
            bin: None,
            cfg,
            models: entries,
            index,
            first,
            reaper: None,
            host: None,
            next_batch: 1,
            restarts: 0,
            notes: Vec::new(),
            inflight: std::collections::VecDeque::new(),
            ready: BTreeMap::new(),
            telemetry: Vec::new(),
            outside_seq: 0,
        };
        if !svc.models.is_empty() {
            let bin = match &svc.cfg.host_bin {
                Some(b) => b.clone(),
                None => locate_binary("lockstep-inference-host", "LOCKSTEP_INFERENCE_HOST_BIN")
                    .map_err(InferenceStartError::Locate)?,
            };
            svc.bin = Some(bin);
            svc.spawn_host()?;
        }
        Ok(svc)
    }

    /// The host's pid, while one is running.
    pub fn host_pid(&self) -> Option<u32> {
        self.host.as_ref().map(|h| h.child.pid())
    }

    /// Where the models run (`cpu`, `cuda:0`; `builtin` without a host).
    pub fn device(&self) -> &str {
        self.host.as_ref().map_or("builtin", |h| h.device.as_str())
    }

    /// The tolerance of a model version (`id@version`, as requests pin
    /// them): the manifest's, or the defaults for a version the manifest
    /// does not declare.
    pub fn tolerance(&self, pinned: &str) -> tolerance::Tolerance {
        pinned
            .split_once('@')
            .and_then(|(id, v)| self.index.get(&(id.to_owned(), v.to_owned())))
            .and_then(|&k| self.models.get(k))
            .map_or_else(tolerance::Tolerance::default, |m| m.def.tolerance)
    }

    /// Host restarts so far (crashes, hangs, protocol violations).
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Telemetry of the batches answered since the last collection.
    pub fn take_telemetry(&mut self) -> Vec<InferenceTelemetry> {
        std::mem::take(&mut self.telemetry)
    }

    /// Restart lines since the last call (for the live view).
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// Logs a host failure once, with its cause.
    fn note(&mut self, tick: u64, cause: &Cause, what: &str) {
        let line = format!("[RECOVERY] inference host {cause} at tick {tick}; {what}");
        tracing::warn!(tick, class = cause.class(), "{line}");
        self.notes.push(line);
    }

    /// Whether the manifest declares models (and so a host is used).
    pub fn has_models(&self) -> bool {
        !self.models.is_empty()
    }

    /// `model` (`id` or `id@version`) resolved against the declared
    /// models, `current` giving the version of a bare `id` (else its first
    /// declared version).
    pub(crate) fn resolve(&self, model: &str, current: &BTreeMap<String, String>) -> Resolved {
        let (id, version) = match model.split_once('@') {
            Some((id, v)) => (id, Some(v)),
            None => (model, None),
        };
        if !self.first.contains_key(id) {
            return if id == ECHO_MODEL {
                Resolved::Echo
            } else {
                Resolved::Error(format!("unknown model `{model}`"))
            };
        }
        let version = version
            .or_else(|| current.get(id).map(String::as_str))
            .or_else(|| self.first.get(id).map(String::as_str))
            .unwrap_or_default();
        if self
            .index
            .contains_key(&(id.to_owned(), version.to_owned()))
        {
            Resolved::Model(id.to_owned(), version.to_owned())
        } else {
            let declared: Vec<&str> = self
                .models
                .iter()
                .filter(|m| m.def.id == id)
                .map(|m| m.def.version.as_str())
                .collect();
            Resolved::Error(format!(
                "model `{id}` has no version `{version}` (declared: {})",
                declared.join(", ")
            ))
        }
    }

    fn channel_failure(&mut self, e: ChannelError) -> Cause {
        let waited = self.cfg.batch_timeout;
        match Cause::from_channel(&e, waited) {
            Some(c) => c,
            None => {
                let death = self
                    .host_died()
                    .or_else(|| self.wait_death(Duration::from_millis(500)));
                let oom = self.host_oom_kills();
                death.map_or_else(
                    || Cause::Exited { code: -1 },
                    |d| Cause::from_death(&d, oom),
                )
            }
        }
    }

    /// The host process, for `lockstep doctor` (`None`: not running).
    pub fn child(&self) -> Option<crate::doctor::ChildInfo> {
        self.host.as_ref().map(|h| crate::doctor::ChildInfo {
            name: h.child.name().to_owned(),
            pid: h.child.pid(),
            sandbox: h.child.sandbox().cloned(),
        })
    }

    /// OOM kills counted in the host's cgroup.
    fn host_oom_kills(&self) -> u64 {
        self.host.as_ref().map_or(0, |h| h.child.oom_kills())
    }

    /// The host's death report, if the reaper has one.
    fn host_died(&mut self) -> Option<ChildExit> {
        let pid = self.host.as_ref()?.child.pid();
        let (_, deaths) = self.reaper.as_ref()?;
        deaths.try_iter().find(|d| d.pid == pid)
    }

    /// Waits up to `timeout` for the host's death report.
    fn wait_death(&mut self, timeout: Duration) -> Option<ChildExit> {
        let pid = self.host.as_ref()?.child.pid();
        let (_, deaths) = self.reaper.as_ref()?;
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match deaths.recv_timeout(left) {
                Ok(d) if d.pid == pid => return Some(d),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    /// Kills what is left of the host (it may be alive but broken) and
    /// forgets it.
    fn discard_host(&mut self) {
        if let Some(h) = self.host.take() {
            if let Some(p) = &h.pidfd {
                let _ = p.kill(rustix::process::Signal::KILL);
                let _ = p.wait_exit(Some(Duration::from_secs(5)));
            }
            drop(h);
        }
        // Death reports of discarded hosts are of no further use.
        if let Some((_, deaths)) = &self.reaper {
            while deaths.try_recv().is_ok() {}
        }
    }

    /// Starts a host, handshakes and loads every declared model.
    fn spawn_host(&mut self) -> Result<(), InferenceStartError> {
        let Some(bin) = self.bin.clone() else {
            return Err(InferenceStartError::Host(
                "no inference host binary (no models declared)".into(),
            ));
        };
        if self.reaper.is_none() {
            let r = Reaper::start().map_err(|e| {
                InferenceStartError::Host(format!(
                    "cannot start a reaper for the inference host: {e}"
                ))
            })?;
            self.reaper = Some(r);
        }
        let spec = match self.remote_spec() {
            Some(spec) => spec,
            None => self.local_spec(bin)?,
        };
        self.start_child(spec)
    }

    /// The bridge that stands in for a host on another machine.
    fn remote_spec(&self) -> Option<ChildSpec> {
        let r = self.cfg.remote.as_ref()?;
        let mut env = crate::jail::passed_env();
        env.extend(self.cfg.env.iter().cloned());
        Some(ChildSpec {
            role: Role::InferenceHost,
            name: HOST_NAME.into(),
            program: r.node_bin.clone(),
            args: r.bridge_args(
                self.cfg.hang_timeout,
                &self.cfg.device,
                self.cfg.intra_threads,
            ),
            rings: SegmentConfig {
                to_attacher: HOST_RING,
                to_creator: HOST_RING,
            },
            policy: host_policy(),
            env,
            cgroup: None,
            hang_timeout: Some(self.cfg.hang_timeout),
        })
    }

    /// The host here, jailed.
    fn local_spec(&self, bin: PathBuf) -> Result<ChildSpec, InferenceStartError> {
        let prepared = match &self.cfg.jails {
            Some(j) => j
                .lock()
                .map_err(|_| InferenceStartError::Host("the jails' lock is poisoned".into()))?
                .prepare(crate::jail::ChildClass::Inference, HOST_NAME, None),
            None => crate::jail::Jails::without_cgroups().prepare(
                crate::jail::ChildClass::Inference,
                HOST_NAME,
                None,
            ),
        }
        .map_err(InferenceStartError::Host)?;
        let mut args = vec![
            OsString::from("--device"),
            OsString::from(&self.cfg.device),
            OsString::from("--intra-threads"),
            OsString::from(self.cfg.intra_threads.max(1).to_string()),
        ];
        args.extend(prepared.args);
        let mut env = prepared.env;
        env.extend(self.cfg.env.iter().cloned());
        Ok(ChildSpec {
            role: Role::InferenceHost,
            name: HOST_NAME.into(),
            program: bin,
            args,
            rings: SegmentConfig {
                to_attacher: HOST_RING,
                to_creator: HOST_RING,
            },
            policy: host_policy(),
            env,
            cgroup: prepared.cgroup,
            hang_timeout: Some(self.cfg.hang_timeout),
        })
    }

    /// Spawns the host (or its bridge) and brings it up.
    fn start_child(&mut self, spec: ChildSpec) -> Result<(), InferenceStartError> {
        let Some((reaper, _)) = &self.reaper else {
            return Err(InferenceStartError::Host(
                "no reaper for the inference host".into(),
            ));
        };
        let child = Child::spawn(&spec, reaper).map_err(|e| {
            InferenceStartError::Host(format!("cannot start the inference host: {}", chain(&e)))
        })?;
        let pidfd = PidFd::open(child.pid()).ok();
        self.host = Some(Host {
            child,
            pidfd,
            device: String::new(),
        });
        let r = self.bring_up();
        if r.is_err() {
            self.discard_host();
        }
        r
    }

    fn bring_up(&mut self) -> Result<(), InferenceStartError> {
        let timeout = self.cfg.start_timeout;
        let handshake = match self.host.as_mut() {
            Some(h) => h.child.handshake(timeout).map(|_| ()),
            None => {
                return Err(InferenceStartError::Host(
                    "the inference host is not running".into(),
                ));
            }
        };
        if let Err(e) = handshake {
            return Err(self.start_failure(&e));
        }
        for k in 0..self.models.len() {
            self.load_entry(k)?;
        }
        Ok(())
    }

    /// Sends model `k` to the running host and waits until it is loaded.
    fn load_entry(&mut self, k: usize) -> Result<(), InferenceStartError> {
        let timeout = self.cfg.start_timeout;
        let Some(m) = self.models.get(k).cloned() else {
            return Ok(());
        };
        let model_err = |reason: String| InferenceStartError::Model {
            id: m.def.id.clone(),
            version: m.def.version.clone(),
            path: m.def.path.display().to_string(),
            reason,
        };
        let cmd = InferenceCommand::LoadModel {
            id: m.def.id.clone(),
            version: m.def.version.clone(),
            source: m.def.path.display().to_string(),
            bytes: m.bytes.to_vec(),
            blake3_hex: m.blake3_hex.clone(),
        };
        let deadline = Some(Instant::now() + timeout);
        let Some(h) = self.host.as_mut() else {
            return Err(InferenceStartError::Host(
                "the inference host is not running".into(),
            ));
        };
        let ep = h.child.endpoint();
        let reply = ep
            .send_msg(&Down::Inference(cmd), deadline)
            .and_then(|()| ep.recv_msg::<Up>(deadline));
        match reply {
            Ok(Up::Inference(InferenceReply::Loaded {
                id,
                version,
                device,
                ..
            })) if id == m.def.id && version == m.def.version => {
                h.device = device;
                Ok(())
            }
            Ok(Up::Inference(InferenceReply::LoadFailed { error, .. })) => Err(model_err(error)),
            Ok(Up::Error { message }) => Err(model_err(message)),
            Ok(other) => Err(model_err(format!(
                "the inference host answered {}",
                describe(&other)
            ))),
            Err(e) => {
                let why = match e {
                    ChannelError::PeerGone(_) => self
                        .wait_death(Duration::from_millis(500))
                        .map_or_else(|| chain(&e), |d| format!("the inference host {}", d.kind)),
                    other => chain(&other),
                };
                Err(model_err(format!("while loading: {why}")))
            }
        }
    }

    /// The model versions loaded, as `(id, version)`.
    pub fn loaded(&self) -> Vec<(String, String)> {
        self.index.keys().cloned().collect()
    }

    /// Rebuilds the lookup tables after `models` changed.
    fn reindex(&mut self) {
        self.index.clear();
        self.first.clear();
        for (k, m) in self.models.iter().enumerate() {
            self.index
                .insert((m.def.id.clone(), m.def.version.clone()), k);
            self.first
                .entry(m.def.id.clone())
                .or_insert_with(|| m.def.version.clone());
        }
    }

    /// Waits for every batch in flight (their answers wait in the service
    /// until collected), so that a command out of the batch sequence may go
    /// to the host.
    fn drain(&mut self, tick: u64) {
        while !self.inflight.is_empty() {
            if let Err(cause) = self.receive_one() {
                self.recover(
                    tick,
                    cause,
                    "restarting it and re-sending the batches in flight",
                );
            }
        }
    }

    /// Loads a model version while the run runs (`load-model`, or a
    /// replay's journaled one): `bytes` must hash to `blake3_hex`.  Starts
    /// the host if none runs yet.  On failure nothing changed (a host that
    /// died of the model is replaced when next needed) and the error says
    /// why.
    pub fn load(
        &mut self,
        tick: u64,
        def: ModelDef,
        bytes: std::sync::Arc<Vec<u8>>,
    ) -> Result<(), InferenceStartError> {
        let actual = blake3::hash(&bytes).to_hex().to_string();
        if let Some(pin) = &def.blake3
            && !pin.eq_ignore_ascii_case(&actual)
        {
            return Err(InferenceStartError::Model {
                id: def.id.clone(),
                version: def.version.clone(),
                path: def.path.display().to_string(),
                reason: format!("BLAKE3 is {actual}, {pin} is pinned"),
            });
        }
        if self
            .index
            .contains_key(&(def.id.clone(), def.version.clone()))
        {
            return Ok(());
        }
        if self.bin.is_none() {
            let bin = match &self.cfg.host_bin {
                Some(b) => b.clone(),
                None => locate_binary("lockstep-inference-host", "LOCKSTEP_INFERENCE_HOST_BIN")
                    .map_err(InferenceStartError::Locate)?,
            };
            self.bin = Some(bin);
        }
        // A text model travels with its tokenizer.
        let (bytes, actual) = match text::host_bytes(&def, bytes.to_vec(), actual) {
            Ok((b, h)) => (std::sync::Arc::new(b), h),
            Err(reason) => {
                return Err(InferenceStartError::Model {
                    id: def.id.clone(),
                    version: def.version.clone(),
                    path: def.path.display().to_string(),
                    reason,
                });
            }
        };
        self.drain(tick);
        self.models.push(ModelEntry {
            def,
            blake3_hex: actual,
            bytes,
        });
        self.reindex();
        let k = self.models.len() - 1;
        let r = if self.host.is_none() {
            self.spawn_host()
        } else {
            self.load_entry(k)
        };
        if let Err(e) = r {
            self.models.pop();
            self.reindex();
            if self.host.is_some() && self.host_died().is_some() {
                self.discard_host();
            }
            return Err(e);
        }
        Ok(())
    }

    /// Unloads a model version (`unload-model`); its bytes are forgotten.
    pub fn unload(&mut self, tick: u64, id: &str, version: &str) {
        let Some(k) = self
            .index
            .get(&(id.to_owned(), version.to_owned()))
            .copied()
        else {
            return;
        };
        self.drain(tick);
        self.models.remove(k);
        self.reindex();
        let deadline = Some(Instant::now() + self.cfg.start_timeout);
        let Some(h) = self.host.as_mut() else {
            return;
        };
        let ep = h.child.endpoint();
        let cmd = Down::Inference(InferenceCommand::UnloadModel {
            id: id.to_owned(),
            version: Some(version.to_owned()),
        });
        let reply = ep
            .send_msg(&cmd, deadline)
            .and_then(|()| ep.recv_msg::<Up>(deadline));
        if !matches!(reply, Ok(Up::Inference(InferenceReply::Unloaded { .. }))) {
            // A host out of step is replaced (with the remaining models)
            // when next needed.
            tracing::warn!(
                tick,
                "inference host: unloading {id}@{version} failed; replacing it"
            );
            self.discard_host();
        }
    }

    fn start_failure(&mut self, e: &ChildError) -> InferenceStartError {
        let death = match e {
            ChildError::Channel {
                source: ChannelError::PeerGone(_),
                ..
            } => self.wait_death(Duration::from_millis(500)),
            _ => None,
        };
        InferenceStartError::Host(match death {
            Some(d) => format!("{d} during start-up"),
            None => format!("inference host start-up failed: {}", chain(e)),
        })
    }

    /// Shuts the host down cleanly (killing it if it does not exit).
    pub fn shutdown(&mut self) {
        if let Some(h) = self.host.take() {
            let name = h.child.name().to_owned();
            if let Err(e) = h.child.shutdown(Duration::from_secs(5)) {
                tracing::warn!(%name, "inference host shutdown: {}", chain(&e));
            }
        }
    }
}

impl Drop for InferenceService {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub(crate) enum Resolved {
    Echo,
    Model(String, String),
    Error(String),
}

/// A short description of a message (never its whole payload).
pub(crate) fn describe(up: &Up) -> String {
    match up {
        Up::Hello(_) => "Hello".into(),
        Up::Ready { .. } => "Ready".into(),
        Up::Pong { .. } => "Pong".into(),
        Up::ShutdownAck => "ShutdownAck".into(),
        Up::Error { message } => format!("Error({message})"),
        Up::Inference(r) => match r {
            InferenceReply::Loaded { .. } => "Loaded".into(),
            InferenceReply::LoadFailed { .. } => "LoadFailed".into(),
            InferenceReply::Unloaded { .. } => "Unloaded".into(),
            InferenceReply::Results { batch_id, .. } => format!("Results(batch {batch_id})"),
            InferenceReply::Status { .. } => "Status".into(),
            InferenceReply::Refused { batch_id, .. } => format!("Refused(batch {batch_id})"),
        },
        Up::Worker(_) => "a worker reply".into(),
    }
}

/// How the supervisor's side of the host's rings waits.
fn host_policy() -> WaitPolicy {
    WaitPolicy {
        spin: 2_000,
        park_slice: Duration::from_millis(10),
        yielding: false,
    }
}
