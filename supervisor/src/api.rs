//! The external-input API of a running supervisor: what the control socket,
//! the library and the clients may ask of a run between two ticks.
//!
//! Every input is validated exactly as the manifest would validate it, and
//! everything that can fail is tried first — a module is read, checked and
//! compiled, the limits are checked against it — before the input is
//! journaled (durably) and applied for the next tick.  What fails is
//! refused to the caller with the reason and the run goes on; so nothing in
//! a journal can make `resume` fail.

use crate::ctl::{Applied, CtlRequest, ErrorCode, Refusal, Reply};
use crate::journal::Entry;
use crate::manifest::{self, check_agent_name, check_fuel, check_memory, check_topic};
use crate::run::{Run, RunError, hex};
use crate::sim::{Input, InputOutcome};
use std::path::Path;

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
                payload("publish", &p)?;
                Ok(Input::Publish { topic, payload: p })
            }
            Input::JoinChannel { agent, channel } => {
                check_topic(&channel).map_err(|m| bad(format!("join-channel: channel: {m}")))?;
                Ok(Input::JoinChannel { agent, channel })
            }
            Input::Send { agent, payload: p } => {
                payload("send", &p)?;
                Ok(Input::Send { agent, payload: p })
            }
            Input::Task {
                agent,
                priority,
                payload: p,
                deps,
            } => {
                payload("task", &p)?;
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
                let prepared = self
                    .modules
                    .prepare(&agent, &module, Some(&blake3), &mut self.pool)
                    .map_err(|e| module_refused(format!("upgrade of {agent}: {e}")))?;
                let f = prepared.facts;
                Ok(Input::Upgrade {
                    agent,
                    module,
                    blake3,
                    abi_version: f.abi_version,
                    globals: f.globals,
                    migrates: f.migrates,
                })
            }
            other @ (Input::Stop { .. } | Input::SwapModel { .. }) => Ok(other),
        }
    }

    /// `spawn_agent`: starts an agent of `module` in the next tick, with
    /// the default limits; returns its id.
    pub fn spawn_agent(&mut self, name: &str, module: &Path, tenant: &str) -> Result<u64, String> {
        let input = Input::Spawn {
            name: name.to_owned(),
            module: module.display().to_string(),
            tenant: tenant.to_owned(),
            priority: 0,
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
            payload,
            deps,
        })
    }

    /// `publish` from outside (sender: the runtime).
    pub fn publish(&mut self, topic: &str, payload: Vec<u8>) -> Result<InputOutcome, RunError> {
        self.input(Input::Publish {
            topic: topic.to_owned(),
            payload,
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
            payload,
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
        let refused = |m: String| Ok(Err(Refusal::new(ErrorCode::ModuleRefused, m)));
        let path = match std::fs::canonicalize(module) {
            Ok(p) => p.display().to_string(),
            Err(e) => {
                return refused(format!("upgrade refused: module {}: {e}", module.display()));
            }
        };
        let Some(id) = self.sim.resolve(agent) else {
            return Ok(Err(Refusal::new(
                ErrorCode::UnknownAgent,
                format!("no agent `{agent}`"),
            )));
        };
        let prepared = match self.modules.prepare(agent, &path, None, &mut self.pool) {
            Ok(p) => p,
            Err(e) => return refused(format!("upgrade refused: {e}")),
        };
        let limit = self
            .sim
            .agents
            .get(&id)
            .map_or(0, |a| a.limits.memory_bytes);
        let f = prepared.facts;
        if f.min_memory > limit {
            return refused(format!(
                "upgrade refused: the module's memory starts at {} bytes, above agent {id}'s limit of {limit}",
                f.min_memory
            ));
        }
        self.input_coded(Input::Upgrade {
            agent: agent.to_owned(),
            module: path,
            blake3: hex(&f.blake3),
            abi_version: f.abi_version,
            globals: f.globals,
            migrates: f.migrates,
        })
    }

    /// `snapshot_state`: a checkpoint now (between ticks); returns the
    /// snapshot file (relative to the run directory) and its state hash.
    pub fn snapshot_state(&mut self) -> Result<(String, [u8; 32]), RunError> {
        let (file, body) = self.checkpoint()?;
        Ok((file, body.state_hash))
    }

    /// Applies the `ctl` requests that arrived since the last tick.
    pub(crate) fn drain_ctl(&mut self) -> Result<(), RunError> {
        let Some(ctl) = &self.ctl else { return Ok(()) };
        let reqs: Vec<CtlRequest> = ctl.drain();
        for r in reqs {
            let next = self.sim.tick + 1;
            match r {
                CtlRequest::Input(input, reply) => {
                    let _ = reply.send(Reply::outcome(next, self.input_coded(input)?));
                }
                CtlRequest::Upgrade(agent, module, reply) => {
                    let outcome = self.upgrade_coded(&agent, Path::new(&module))?;
                    let _ = reply.send(Reply::outcome(next, outcome));
                }
                CtlRequest::Snapshot(reply) => {
                    let tick = self.sim.tick;
                    let answer = match self.snapshot_state() {
                        Ok((file, h)) => Reply::Ok {
                            tick,
                            text: format!("snapshot after tick {tick}: {file} (state {})", hex(&h)),
                            data: serde_json::json!({"file": file, "state_hash": hex(&h)}),
                        },
                        Err(e) => Reply::Error(Refusal::new(ErrorCode::Internal, e.to_string())),
                    };
                    let _ = reply.send(answer);
                }
                CtlRequest::Stop(reply) => {
                    self.stop_requested = true;
                    let _ = reply.send(Reply::Ok {
                        tick: next,
                        text: format!("stopping after tick {next}"),
                        data: serde_json::json!({"stops_after_tick": next}),
                    });
                }
                CtlRequest::Children(reply) => {
                    let text = crate::doctor::children_json(self);
                    let data = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
                    let _ = reply.send(Reply::Ok {
                        tick: self.sim.tick,
                        text,
                        data,
                    });
                }
                CtlRequest::Status(reply) => {
                    let c = &self.sim.counters;
                    let (tick, hash) = (self.sim.tick, hex(&self.sim.hash));
                    let agents = self.sim.live_agents().count();
                    let _ = reply.send(Reply::Ok {
                        tick,
                        text: format!(
                            "tick {tick} hash {hash} agents {agents} steps {} messages {} faults {}",
                            c.steps, c.messages, c.faults
                        ),
                        data: serde_json::json!({
                            "hash": hash,
                            "agents": agents,
                            "steps": c.steps,
                            "messages": c.messages,
                            "faults": c.faults,
                        }),
                    });
                }
            }
        }
        Ok(())
    }
}

fn outcome(o: Result<Applied, Refusal>) -> InputOutcome {
    match o {
        Ok(a) => InputOutcome::Applied(a.text),
        Err(r) => InputOutcome::Refused(r.message),
    }
}
