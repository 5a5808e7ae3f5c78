//! The external API of a running supervisor: what the control socket, the
//! library and the clients may ask of a run between two ticks — the
//! [`Command`]s, handled by [`Run::command`], and one method per command
//! with the names of the TypeScript client in Rust case
//! ([`Run::spawn_agent`], [`Run::schedule_task`], [`Run::publish`],
//! [`Run::send`], [`Run::join_channel`], [`Run::stop_agent`],
//! [`Run::upgrade_agent`], [`Run::snapshot_state`], [`Run::swap_model`],
//! [`Run::load_model`], [`Run::unload_model`], [`Run::infer`],
//! [`Run::batch_infer`]).
//!
//! Every input is validated exactly as the manifest would validate it, and
//! everything that can fail is tried first — a module is read, checked and
//! compiled, the limits are checked against it; a model is read, hashed
//! and loaded by the inference host — before the input is journaled
//! (durably) and applied for the next tick.  What fails is refused to the
//! caller with the reason and a stable [`ErrorCode`], and the run goes on;
//! so nothing in a journal can make `resume` fail for a reason the
//! original run did not meet.
//!
//! `infer` and `batch-infer` are observation: the run's inference host
//! answers them between ticks with the model's current version; nothing
//! is journaled, no agent sees them, and the run's journal and hashes are
//! the same with or without them.

use crate::command::{Command, TensorJson};
use crate::ctl::{Applied, CtlRequest, ErrorCode, Refusal, Reply};
use crate::journal::Entry;
use crate::manifest::{
    self, MAX_LATENCY_TICKS, MAX_MAX_BATCH, ModelDef, check_agent_name, check_fuel, check_memory,
    check_topic,
};
use crate::run::{Run, RunError, hex};
use crate::sim::{Input, InputOutcome, UNANSWERABLE};
use serde_json::json;
use shm_protocol::inference::Tensor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a call of the embedding API did nothing.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Refused (or failed) with a stable code; the run goes on.
    #[error("{0}")]
    Refused(Refusal),
    /// The run itself failed (journal, workers).
    #[error(transparent)]
    Run(#[from] RunError),
}

impl ApiError {
    /// The stable code (`internal` for a failure of the run).
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Refused(r) => r.code,
            ApiError::Run(_) => ErrorCode::Internal,
        }
    }
}

/// The answer of an outside `infer` or `batch-infer`.
#[derive(Debug, Clone, PartialEq)]
pub struct Inferred {
    /// The model id.
    pub model: String,
    /// The version that answered (`builtin` for the built-in `echo`).
    pub version: String,
    /// One answer per input, in order.
    pub outputs: Vec<Result<Tensor, String>>,
}

/// Largest payload of a message or task sent from outside.
pub const MAX_EXTERNAL_PAYLOAD: usize = 1 << 20;

impl Run {
    /// Applies an external input now: validated, journaled, effective in
    /// the next tick.  This is the library's `spawn_agent`,
    /// `schedule_task`, `publish`, `send`, `join_channel`, `stop_agent`,
    /// `swap_model` path; a refusal changes nothing.
    pub fn input(&mut self, input: Input) -> Result<InputOutcome, RunError> {
        Ok(outcome(self.input_coded(input)?))
    }

    /// [`Run::input`], with the refusal's code and the applied input's
    /// structured facts (what the control socket's JSON answers carry).
    pub fn input_coded(&mut self, input: Input) -> Result<Result<Applied, Refusal>, RunError> {
        let input = match self.validate(input) {
            Ok(i) => i,
            Err(why) => return Ok(Err(why)),
        };
        let coded = self.sim.apply_input(&input);
        let outcome = outcome(coded.clone());
        self.record(&Entry::Input {
            tick: self.sim.tick + 1,
            input: input.clone(),
            outcome: outcome.clone(),
        })?;
        if !self.replaying()
            && let Some(j) = &mut self.journal
        {
            j.sync()?;
        }
        self.pending.push(input);
        Ok(coded)
    }

    /// Checks an input and fills in what replays need (the module hash of
    /// a spawn); the reason names the field.
    fn validate(&mut self, input: Input) -> Result<Input, Refusal> {
        let payload = |what: &str, p: &[u8]| {
            if p.len() > MAX_EXTERNAL_PAYLOAD {
                Err(Refusal::new(
                    ErrorCode::Limit,
                    format!(
                        "{what}: payload of {} bytes exceeds {MAX_EXTERNAL_PAYLOAD}",
                        p.len()
                    ),
                ))
            } else {
                Ok(())
            }
        };
        let bad = |m: String| Refusal::new(ErrorCode::BadRequest, m);
        let module_refused = |m: String| Refusal::new(ErrorCode::ModuleRefused, m);
        match input {
            Input::Spawn {
                name,
                module,
                tenant,
                priority,
                memory,
                fuel,
                blake3,
            } => {
                check_agent_name(&name).map_err(|m| bad(format!("spawn: name: {m}")))?;
                check_memory(memory).map_err(|m| bad(format!("spawn {name}: memory: {m}")))?;
                check_fuel(fuel).map_err(|m| bad(format!("spawn {name}: fuel: {m}")))?;
                if !self.sim.tenants.iter().any(|t| t.name == tenant) {
                    return Err(Refusal::new(
                        ErrorCode::UnknownTenant,
                        format!("spawn {name}: tenant: unknown tenant `{tenant}`"),
                    ));
                }
                let path = std::fs::canonicalize(&module)
                    .map_err(|e| module_refused(format!("spawn {name}: module {module}: {e}")))?
                    .display()
                    .to_string();
                let prepared = self
                    .modules
                    .prepare(&name, &path, blake3.as_deref(), &mut self.pool)
                    .map_err(|e| module_refused(format!("spawn {name}: {e}")))?;
                if prepared.facts.min_memory > memory {
                    return Err(module_refused(format!(
                        "spawn {name}: memory: the module's memory starts at {} bytes, above the limit of {memory}",
                        prepared.facts.min_memory
                    )));
                }
                Ok(Input::Spawn {
                    name,
                    module: path,
                    tenant,
                    priority,
                    memory,
                    fuel,
                    blake3: Some(hex(&prepared.facts.blake3)),
                })
            }
            Input::Publish { topic, payload: p } => {
                check_topic(&topic).map_err(|m| bad(format!("publish: topic: {m}")))?;
                payload("publish", p.bytes())?;
                Ok(Input::Publish { topic, payload: p })
            }
            Input::JoinChannel { agent, channel } => {
                check_topic(&channel).map_err(|m| bad(format!("join-channel: channel: {m}")))?;
                Ok(Input::JoinChannel { agent, channel })
            }
            Input::Send { agent, payload: p } => {
                payload("send", p.bytes())?;
                Ok(Input::Send { agent, payload: p })
            }
            Input::Task {
                agent,
                priority,
                payload: p,
                deps,
            } => {
                payload("task", p.bytes())?;
                if deps.len() > 64 {
                    return Err(Refusal::new(
                        ErrorCode::Limit,
                        format!("task: {} dependencies (at most 64)", deps.len()),
                    ));
                }
                Ok(Input::Task {
                    agent,
                    priority,
                    payload: p,
                    deps,
                })
            }
            Input::Upgrade {
                agent,
                module,
                blake3,
                ..
            } => {
                // Re-derive what the module declares: the input's own claims
                // are not trusted.
                let path = std::fs::canonicalize(&module)
                    .map_err(|e| module_refused(format!("upgrade refused: module {module}: {e}")))?
                    .display()
                    .to_string();
                let Some(id) = self.sim.resolve(&agent) else {
                    return Err(Refusal::new(
                        ErrorCode::UnknownAgent,
                        format!("no agent `{agent}`"),
                    ));
                };
                let prepared = self
                    .modules
                    .prepare(&agent, &path, blake3.as_deref(), &mut self.pool)
                    .map_err(|e| module_refused(format!("upgrade refused: {e}")))?;
                let limit = self
                    .sim
                    .agents
                    .get(&id)
                    .map_or(0, |a| a.limits.memory_bytes);
                let f = prepared.facts;
                if f.min_memory > limit {
                    return Err(module_refused(format!(
                        "upgrade refused: the module's memory starts at {} bytes, above agent {id}'s limit of {limit}",
                        f.min_memory
                    )));
                }
                Ok(Input::Upgrade {
                    agent,
                    module: path,
                    blake3: Some(hex(&f.blake3)),
                    abi_version: f.abi_version,
                    globals: f.globals,
                    migrates: f.migrates,
                })
            }
            Input::LoadModel {
                id,
                version,
                path,
                blake3,
                max_batch,
                latency_ticks,
            } => self.validate_load(id, version, path, blake3, max_batch, latency_ticks),
            other @ (Input::StopAgent { .. }
            | Input::SwapModel { .. }
            | Input::UnloadModel { .. }) => Ok(other),
            other => Err(bad(format!("`{}` is not an input", other.name()))),
        }
    }

    /// Checks a `load-model` and loads the model into the inference host
    /// (the check that matters: ONNX Runtime accepts it); keeps a copy of
    /// the file in the run directory (`models/<BLAKE3>.onnx`) for replays.
    fn validate_load(
        &mut self,
        id: String,
        version: String,
        path: String,
        blake3: Option<String>,
        max_batch: u32,
        latency_ticks: u32,
    ) -> Result<Input, Refusal> {
        let bad = |m: String| Refusal::new(ErrorCode::BadRequest, m);
        let refused = |m: String| Refusal::new(ErrorCode::ModelRefused, m);
        let what = format!("load-model {id}@{version}");
        if !manifest::valid_name(&id) {
            return Err(bad(format!("{what}: id: `{id}` is not a valid name")));
        }
        if !manifest::valid_name(&version) {
            return Err(bad(format!(
                "{what}: version: `{version}` is not a valid version (letters, digits, `-`, `_`, `.`)"
            )));
        }
        if let Some(h) = &blake3
            && !manifest::valid_blake3(h)
        {
            return Err(bad(format!(
                "{what}: blake3: must be 64 hexadecimal digits"
            )));
        }
        if !(1..=MAX_MAX_BATCH).contains(&max_batch) {
            return Err(bad(format!(
                "{what}: max_batch: must be between 1 and {MAX_MAX_BATCH}"
            )));
        }
        if !(1..=MAX_LATENCY_TICKS).contains(&latency_ticks) {
            return Err(bad(format!(
                "{what}: latency_ticks: must be between 1 and {MAX_LATENCY_TICKS}"
            )));
        }
        if self
            .sim
            .model_catalog
            .get(&id)
            .is_some_and(|v| v.contains(&version))
        {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                format!("model `{id}` version `{version}` is already loaded"),
            ));
        }
        let file =
            std::fs::canonicalize(&path).map_err(|e| refused(format!("{what}: {path}: {e}")))?;
        let bytes = std::fs::read(&file)
            .map_err(|e| refused(format!("{what}: {}: {e}", file.display())))?;
        let actual = blake3::hash(&bytes).to_hex().to_string();
        if let Some(pin) = &blake3
            && !pin.eq_ignore_ascii_case(&actual)
        {
            return Err(refused(format!(
                "{what}: {}: BLAKE3 is {actual}, {pin} is pinned",
                file.display()
            )));
        }
        let def = ModelDef {
            id: id.clone(),
            version: version.clone(),
            path: file.clone(),
            blake3: Some(actual.clone()),
            max_batch,
            latency_ticks,
            text: None,
            tolerance: Default::default(),
        };
        self.inference
            .load(self.sim.tick, def, Arc::new(bytes.clone()))
            .map_err(|e| refused(format!("{what}: {e}")))?;
        let copy = model_copy(&self.cfg.run_dir, &actual);
        if !copy.is_file() {
            let _ = std::fs::create_dir_all(self.cfg.run_dir.join("models"));
            crate::rundir::write_private(&copy, &bytes)
                .map_err(|e| Refusal::new(ErrorCode::Internal, format!("{what}: {e}")))?;
        }
        Ok(Input::LoadModel {
            id,
            version,
            path: file.display().to_string(),
            blake3: Some(actual),
            max_batch,
            latency_ticks,
        })
    }

    /// Handles one command between ticks: an input is validated, journaled
    /// and applied for the next tick; the others are answered now.  This is
    /// what the control socket calls; the methods below are the same with
    /// typed results.
    pub fn command(&mut self, command: Command) -> Result<Reply, RunError> {
        let next = self.sim.tick + 1;
        let tick = self.sim.tick;
        Ok(match command {
            c if c.is_input() => Reply::outcome(next, self.input_coded(c)?),
            Command::Snapshot => match self.snapshot_state() {
                Ok((file, h)) => Reply::Ok {
                    tick,
                    text: format!("snapshot after tick {tick}: {file} (state {})", hex(&h)),
                    data: json!({"file": file, "state_hash": hex(&h)}),
                },
                Err(e) => Reply::Error(Refusal::new(ErrorCode::Internal, e.to_string())),
            },
            Command::Stop => {
                self.stop_requested = true;
                Reply::Ok {
                    tick: next,
                    text: format!("stopping after tick {next}"),
                    data: json!({"stops_after_tick": next}),
                }
            }
            Command::Children => {
                let text = crate::doctor::children_json(self);
                let data = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
                Reply::Ok { tick, text, data }
            }
            Command::Status => {
                let c = &self.sim.counters;
                let hash = hex(&self.sim.hash);
                let agents = self.sim.live_agents().count();
                Reply::Ok {
                    tick,
                    text: format!(
                        "tick {tick} hash {hash} agents {agents} steps {} messages {} faults {}",
                        c.steps, c.messages, c.faults
                    ),
                    data: json!({
                        "hash": hash,
                        "agents": agents,
                        "steps": c.steps,
                        "messages": c.messages,
                        "faults": c.faults,
                    }),
                }
            }
            Command::Infer { model, input } => match self.infer_json(&model, &[input]) {
                Err(r) => Reply::Error(r),
                Ok(mut i) => match i.outputs.pop() {
                    Some(Ok(t)) => Reply::Ok {
                        tick,
                        text: format!(
                            "{}@{}: {} tensor of shape {:?}",
                            i.model,
                            i.version,
                            t.dtype().name(),
                            t.shape()
                        ),
                        data: json!({
                            "model": i.model,
                            "version": i.version,
                            "output": TensorJson::from_tensor(&t),
                        }),
                    },
                    Some(Err(e)) => Reply::Error(Refusal::new(ErrorCode::InferenceFailed, e)),
                    None => Reply::Error(Refusal::new(ErrorCode::Internal, "no answer")),
                },
            },
            Command::BatchInfer { model, inputs } => match self.infer_json(&model, &inputs) {
                Err(r) => Reply::Error(r),
                Ok(i) => {
                    let failed = i.outputs.iter().filter(|o| o.is_err()).count();
                    let outputs: Vec<serde_json::Value> = i
                        .outputs
                        .iter()
                        .map(|o| match o {
                            Ok(t) => json!({"output": TensorJson::from_tensor(t)}),
                            Err(e) => json!({"error": e}),
                        })
                        .collect();
                    Reply::Ok {
                        tick,
                        text: format!(
                            "{}@{}: {} answers, {failed} errors",
                            i.model,
                            i.version,
                            outputs.len()
                        ),
                        data: json!({"model": i.model, "version": i.version, "outputs": outputs}),
                    }
                }
            },
            other => Reply::Error(Refusal::new(
                ErrorCode::Internal,
                format!("`{}` has no handler", other.name()),
            )),
        })
    }

    /// Outside inference on JSON tensors (a malformed one is a bad request).
    fn infer_json(&mut self, model: &str, inputs: &[TensorJson]) -> Result<Inferred, Refusal> {
        let tensors = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.to_tensor()
                    .map_err(|e| Refusal::new(ErrorCode::BadRequest, format!("input {i}: {e}")))
            })
            .collect::<Result<Vec<Tensor>, Refusal>>()?;
        self.infer_outside(model, tensors)
    }

    /// Outside inference: the model's current version (or the one named),
    /// answered now by the inference host; nothing in the run changes.
    fn infer_outside(&mut self, model: &str, inputs: Vec<Tensor>) -> Result<Inferred, Refusal> {
        if inputs.is_empty() {
            return Err(Refusal::new(ErrorCode::BadRequest, "no input"));
        }
        if inputs.len() > 4096 {
            return Err(Refusal::new(
                ErrorCode::Limit,
                format!("{} inputs (at most 4096 per request)", inputs.len()),
            ));
        }
        let pinned = self.sim.pin_model(model);
        if let Some(why) = pinned.strip_prefix(UNANSWERABLE) {
            return Err(Refusal::new(ErrorCode::UnknownModel, why));
        }
        let Some((id, version)) = pinned.split_once('@') else {
            // The built-in model answers with its input.
            return Ok(Inferred {
                model: pinned.clone(),
                version: "builtin".into(),
                outputs: inputs.into_iter().map(Ok).collect(),
            });
        };
        let (id, version) = (id.to_owned(), version.to_owned());
        let outputs = self
            .inference
            .infer_outside(self.sim.tick, &id, &version, inputs);
        for t in self.inference.take_telemetry() {
            self.observers.inference(&t);
        }
        Ok(Inferred {
            model: id,
            version,
            outputs,
        })
    }

    /// `spawn_agent`: starts an agent of `module` in the next tick, with
    /// the default limits; returns its id.
    pub fn spawn_agent(&mut self, name: &str, module: &Path, tenant: &str) -> Result<u64, String> {
        let input = Input::Spawn {
            name: name.to_owned(),
            module: module.display().to_string(),
            tenant: tenant.to_owned(),
            priority: crate::command::DEFAULT_PRIORITY,
            memory: manifest::DEFAULT_AGENT_MEMORY,
            fuel: manifest::DEFAULT_AGENT_FUEL,
            blake3: None,
        };
        match self.input(input).map_err(|e| e.to_string())? {
            InputOutcome::Applied(_) => self
                .sim
                .resolve(name)
                .ok_or_else(|| "spawned agent not found".into()),
            InputOutcome::Refused(e) => Err(e),
        }
    }

    /// `schedule_task` from outside (issuer: the runtime).
    pub fn schedule_task(
        &mut self,
        agent: &str,
        priority: i32,
        payload: Vec<u8>,
        deps: Vec<u64>,
    ) -> Result<InputOutcome, RunError> {
        self.input(Input::Task {
            agent: agent.to_owned(),
            priority,
            payload: payload.into(),
            deps,
        })
    }

    /// `publish` from outside (sender: the runtime).
    pub fn publish(&mut self, topic: &str, payload: Vec<u8>) -> Result<InputOutcome, RunError> {
        self.input(Input::Publish {
            topic: topic.to_owned(),
            payload: payload.into(),
        })
    }

    /// `join_channel`: makes `agent` a member of `channel` from the next
    /// tick on.
    pub fn join_channel(&mut self, agent: &str, channel: &str) -> Result<InputOutcome, RunError> {
        self.input(Input::JoinChannel {
            agent: agent.to_owned(),
            channel: channel.to_owned(),
        })
    }

    /// `send` from outside (sender: the runtime).
    pub fn send(&mut self, agent: &str, payload: Vec<u8>) -> Result<InputOutcome, RunError> {
        self.input(Input::Send {
            agent: agent.to_owned(),
            payload: payload.into(),
        })
    }

    /// Hot-swaps `agent` to the module at `module` at the next tick
    /// boundary.  The module is read, checked and compiled first, so that
    /// its hash, ABI version and state layout are journaled with the input;
    /// an incompatible upgrade is refused with a clear reason.
    pub fn upgrade(&mut self, agent: &str, module: &Path) -> Result<InputOutcome, RunError> {
        Ok(outcome(self.upgrade_coded(agent, module)?))
    }

    /// [`Run::upgrade`], with the refusal's code.
    pub fn upgrade_coded(
        &mut self,
        agent: &str,
        module: &Path,
    ) -> Result<Result<Applied, Refusal>, RunError> {
        self.input_coded(Input::Upgrade {
            agent: agent.to_owned(),
            module: module.display().to_string(),
            blake3: None,
            abi_version: 0,
            globals: Vec::new(),
            migrates: false,
        })
    }

    /// An input, with the typed error of the embedding API.
    fn typed(&mut self, input: Input) -> Result<Applied, ApiError> {
        self.input_coded(input)?.map_err(ApiError::Refused)
    }

    /// `upgradeAgent`: [`Run::upgrade`] with a typed error.
    pub fn upgrade_agent(&mut self, agent: &str, module: &Path) -> Result<Applied, ApiError> {
        self.upgrade_coded(agent, module)?
            .map_err(ApiError::Refused)
    }

    /// `stopAgent`: stops `agent` (name or `#id`) at the next tick.
    pub fn stop_agent(&mut self, agent: &str) -> Result<Applied, ApiError> {
        self.typed(Input::StopAgent {
            agent: agent.to_owned(),
        })
    }

    /// `swapModel`: makes `version` the current version of model `id` from
    /// the next tick.
    pub fn swap_model(&mut self, id: &str, version: &str) -> Result<Applied, ApiError> {
        self.typed(Input::SwapModel {
            id: id.to_owned(),
            version: version.to_owned(),
        })
    }

    /// `loadModel`: loads the `.onnx` file at `path` as `id@version` with
    /// the manifest's defaults (current from the next tick); see
    /// [`Command::LoadModel`] for the options.
    pub fn load_model(
        &mut self,
        id: &str,
        version: &str,
        path: &Path,
    ) -> Result<Applied, ApiError> {
        self.typed(Input::LoadModel {
            id: id.to_owned(),
            version: version.to_owned(),
            path: path.display().to_string(),
            blake3: None,
            max_batch: manifest::DEFAULT_MAX_BATCH,
            latency_ticks: 1,
        })
    }

    /// `unloadModel`: unloads one version of model `id`, or every version.
    pub fn unload_model(&mut self, id: &str, version: Option<&str>) -> Result<Applied, ApiError> {
        self.typed(Input::UnloadModel {
            id: id.to_owned(),
            version: version.map(str::to_owned),
        })
    }

    /// `infer`: asks model `model` (`id` or `id@version`) one question from
    /// outside the run; not journaled, never seen by agents.
    pub fn infer(&mut self, model: &str, input: Tensor) -> Result<Tensor, ApiError> {
        let mut i = self
            .infer_outside(model, vec![input])
            .map_err(ApiError::Refused)?;
        match i.outputs.pop() {
            Some(Ok(t)) => Ok(t),
            Some(Err(e)) => Err(ApiError::Refused(Refusal::new(
                ErrorCode::InferenceFailed,
                e,
            ))),
            None => Err(ApiError::Refused(Refusal::new(
                ErrorCode::Internal,
                "no answer",
            ))),
        }
    }

    /// `batchInfer`: [`Run::infer`] for several inputs, one answer each.
    pub fn batch_infer(&mut self, model: &str, inputs: Vec<Tensor>) -> Result<Inferred, ApiError> {
        self.infer_outside(model, inputs).map_err(ApiError::Refused)
    }

    /// `snapshot_state`: a checkpoint now (between ticks); returns the
    /// snapshot file (relative to the run directory) and its state hash.
    pub fn snapshot_state(&mut self) -> Result<(String, [u8; 32]), RunError> {
        let (file, body) = self.checkpoint()?;
        Ok((file, body.state_hash))
    }

    /// Handles the `ctl` requests that arrived since the last tick.
    pub(crate) fn drain_ctl(&mut self) -> Result<(), RunError> {
        let Some(ctl) = &self.ctl else { return Ok(()) };
        let reqs: Vec<CtlRequest> = ctl.drain();
        for r in reqs {
            let answer = self.command(r.command)?;
            let _ = r.reply.send(answer);
        }
        Ok(())
    }

    /// Makes the inference host hold exactly the model versions of the
    /// state's catalog: after inputs (live or replayed) and when a run
    /// boots from a snapshot.  A version loaded while the run ran is read
    /// from the run directory's copy (or its origin's, or its file) and
    /// must have its pinned BLAKE3.
    pub(crate) fn sync_models(&mut self) -> Result<(), RunError> {
        let want: std::collections::BTreeSet<(String, String)> = self
            .sim
            .model_catalog
            .iter()
            .flat_map(|(id, vs)| vs.iter().map(move |v| (id.clone(), v.clone())))
            .collect();
        let have: std::collections::BTreeSet<(String, String)> =
            self.inference.loaded().into_iter().collect();
        if want == have {
            return Ok(());
        }
        let tick = self.sim.tick;
        for (id, v) in have.difference(&want) {
            self.inference.unload(tick, id, v);
        }
        for (id, v) in want.difference(&have) {
            let key = format!("{id}@{v}");
            let def = match self.sim.loaded_models.get(&key) {
                Some(m) => ModelDef {
                    id: id.clone(),
                    version: v.clone(),
                    path: PathBuf::from(&m.path),
                    blake3: Some(m.blake3.clone()),
                    max_batch: m.max_batch,
                    latency_ticks: m.latency_ticks,
                    text: None,
                    tolerance: Default::default(),
                },
                None => match self
                    .cfg
                    .manifest
                    .models
                    .iter()
                    .find(|m| &m.id == id && &m.version == v)
                {
                    Some(m) => m.clone(),
                    None => continue,
                },
            };
            let bytes = self.model_bytes(&def)?;
            self.inference.load(tick, def, Arc::new(bytes))?;
        }
        Ok(())
    }

    /// The bytes of a model to load again: the run directory's copy, the
    /// origin's, else the file (the hash is checked by the loader).
    fn model_bytes(&self, def: &ModelDef) -> Result<Vec<u8>, RunError> {
        if let Some(h) = &def.blake3 {
            let mut dirs = vec![self.cfg.run_dir.clone()];
            dirs.extend(self.cfg.origin.clone());
            for d in dirs {
                if let Ok(b) = std::fs::read(model_copy(&d, h))
                    && blake3::hash(&b).to_hex().as_str() == h.as_str()
                {
                    return Ok(b);
                }
            }
        }
        std::fs::read(&def.path).map_err(|e| {
            RunError::Inference(crate::inference::InferenceStartError::Model {
                id: def.id.clone(),
                version: def.version.clone(),
                path: def.path.display().to_string(),
                reason: format!("cannot read the file: {e}"),
            })
        })
    }
}

/// Where a run directory keeps a copy of a model loaded while it ran.
fn model_copy(dir: &Path, blake3: &str) -> PathBuf {
    dir.join("models").join(format!("{blake3}.onnx"))
}

fn outcome(o: Result<Applied, Refusal>) -> InputOutcome {
    match o {
        Ok(a) => InputOutcome::Applied(a.text),
        Err(r) => InputOutcome::Refused(r.message),
    }
}
