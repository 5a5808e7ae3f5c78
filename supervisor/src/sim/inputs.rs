//! External inputs (spawn, task, publish, send, stop, join, upgrade, model
//! swap, load and unload), applied at a tick boundary in the order they
//! were accepted.

use super::{
    AgentStatus, Input, InputOutcome, LoadedModel, ModuleRec, RUNTIME_SENDER, SimState, Task, kind,
};
use crate::ctl::{Applied, ErrorCode, Refusal};
use crate::manifest::RestartPolicy;
use serde_json::json;
use shm_protocol::worker::{AgentLimits, WireMessage};
use std::collections::BTreeSet;

impl SimState {
    /// Applies external inputs for the coming tick (`self.tick + 1`), in
    /// order; their effects are visible to that tick's plan.
    pub fn apply_inputs(&mut self, inputs: &[Input]) -> Vec<InputOutcome> {
        inputs
            .iter()
            .map(|i| match self.apply_input(i) {
                Ok(a) => InputOutcome::Applied(a.text),
                Err(r) => InputOutcome::Refused(r.message),
            })
            .collect()
    }

    /// Applies one external input; the refusal carries its code.
    pub(crate) fn apply_input(&mut self, input: &Input) -> Result<Applied, Refusal> {
        let tick = self.tick + 1;
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
                let Some(t) = self.tenants.iter().position(|x| &x.name == tenant) else {
                    return Err(Refusal::new(
                        ErrorCode::UnknownTenant,
                        format!("unknown tenant `{tenant}`"),
                    ));
                };
                if name.is_empty() || name.len() > 128 || name.starts_with('#') {
                    return Err(Refusal::new(
                        ErrorCode::BadRequest,
                        format!("invalid agent name `{name}`"),
                    ));
                }
                let same = |m: &ModuleRec| {
                    &m.path == module
                        && m.memory_limit >= *memory
                        && (blake3.is_none() || m.pinned_hash() == blake3.as_deref())
                };
                let module_id = match self.modules.iter().find(|(_, m)| same(m)) {
                    Some((id, _)) => *id,
                    None => {
                        let id = self.modules.keys().next_back().map_or(0, |k| k + 1);
                        let rec = ModuleRec {
                            name: name.clone(),
                            path: module.clone(),
                            expected_blake3: blake3.clone(),
                            blake3: None,
                            memory_limit: *memory,
                            abi_version: None,
                            globals: None,
                            migrates: false,
                        };
                        self.modules.insert(id, rec);
                        id
                    }
                };
                let limits = AgentLimits {
                    memory_bytes: *memory,
                    fuel_per_call: *fuel,
                    ..AgentLimits::default()
                };
                match self.admit_agent(
                    name.clone(),
                    module_id,
                    t as u32,
                    *priority,
                    limits,
                    RestartPolicy {
                        max: 3,
                        within: 100,
                    },
                ) {
                    Ok(id) => Ok(applied(
                        format!("spawned {name} as agent {id}"),
                        json!({"agent": id, "name": name}),
                    )),
                    Err(e) => Err(e),
                }
            }
            Input::Task {
                agent,
                priority,
                payload,
                deps,
            } => {
                let Some(id) = self.resolve(agent) else {
                    return Err(Refusal::new(
                        ErrorCode::UnknownAgent,
                        format!("no agent `{agent}`"),
                    ));
                };
                let task_id = self.runtime_task_id();
                match self.add_task(Task {
                    id: task_id,
                    agent: id,
                    priority: *priority,
                    payload: payload.0.clone(),
                    deps: deps.clone(),
                    seq: 0,
                    submitted: tick,
                }) {
                    Ok(()) => Ok(applied(
                        format!("task {task_id:#x} for agent {id}"),
                        json!({"task": format!("{task_id:#x}"), "agent": id}),
                    )),
                    Err(e) => Err(e),
                }
            }
            Input::Publish { topic, payload } => {
                let subs: Vec<u64> = self
                    .topics
                    .get(topic)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                let mut drops = 0;
                self.notice_seq += 1;
                let seq = self.notice_seq;
                for s in &subs {
                    let msg = WireMessage {
                        kind: kind::TOPIC,
                        sender: RUNTIME_SENDER,
                        sent_tick: tick,
                        seq,
                        topic: topic.clone(),
                        payload: payload.0.as_slice().into(),
                    };
                    self.push_message(*s, msg, &mut drops);
                }
                Ok(applied(
                    format!("published on `{topic}` to {} subscribers", subs.len()),
                    json!({"topic": topic, "subscribers": subs.len()}),
                ))
            }
            Input::Send { agent, payload } => {
                let Some(id) = self.resolve(agent) else {
                    return Err(Refusal::new(
                        ErrorCode::UnknownAgent,
                        format!("no agent `{agent}`"),
                    ));
                };
                self.notice_seq += 1;
                let msg = WireMessage {
                    kind: kind::DIRECT,
                    sender: RUNTIME_SENDER,
                    sent_tick: tick,
                    seq: self.notice_seq,
                    topic: String::new(),
                    payload: payload.0.as_slice().into(),
                };
                let mut drops = 0;
                self.push_message(id, msg, &mut drops);
                Ok(applied(format!("sent to agent {id}"), json!({"agent": id})))
            }
            Input::StopAgent { agent } => {
                let Some(id) = self.resolve(agent) else {
                    return Err(Refusal::new(
                        ErrorCode::UnknownAgent,
                        format!("no agent `{agent}`"),
                    ));
                };
                if matches!(
                    self.agents.get(&id).map(|a| &a.status),
                    Some(AgentStatus::Stopped { .. })
                ) {
                    return Err(Refusal::new(
                        ErrorCode::NotRunning,
                        format!("agent {id} is already stopped"),
                    ));
                }
                self.pending_stops.insert(id);
                Ok(applied(
                    format!("stopping agent {id}"),
                    json!({"agent": id}),
                ))
            }
            Input::JoinChannel { agent, channel } => {
                let Some(id) = self.resolve(agent) else {
                    return Err(Refusal::new(
                        ErrorCode::UnknownAgent,
                        format!("no agent `{agent}`"),
                    ));
                };
                if channel.is_empty() || channel.len() > 256 {
                    return Err(Refusal::new(
                        ErrorCode::BadRequest,
                        "channel names are 1 to 256 bytes",
                    ));
                }
                self.channels.entry(channel.clone()).or_default().insert(id);
                Ok(applied(
                    format!("agent {id} joined `{channel}`"),
                    json!({"agent": id, "channel": channel}),
                ))
            }
            Input::Upgrade {
                agent,
                module,
                blake3,
                abi_version,
                globals,
                migrates,
            } => self.upgrade(
                agent,
                module,
                blake3.as_deref().unwrap_or_default(),
                *abi_version,
                globals,
                *migrates,
            ),
            // --- inference ---
            Input::SwapModel { id, version } => self.swap_model(id, version),
            Input::LoadModel {
                id,
                version,
                path,
                blake3,
                max_batch,
                latency_ticks,
            } => self.load_model(
                id,
                version,
                LoadedModel {
                    path: path.clone(),
                    blake3: blake3.clone().unwrap_or_default(),
                    max_batch: *max_batch,
                    latency_ticks: *latency_ticks,
                },
            ),
            Input::UnloadModel { id, version } => self.unload_model(id, version.as_deref()),
            other @ (Input::Snapshot
            | Input::Stop
            | Input::Status
            | Input::Children
            | Input::Infer { .. }
            | Input::BatchInfer { .. }) => Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("`{}` is not an input", other.name()),
            )),
        }
    }

    /// Applies [`Input::LoadModel`] (already checked and loaded by the
    /// inference host): the version joins the catalog and becomes the
    /// model's current one.
    fn load_model(&mut self, id: &str, version: &str, m: LoadedModel) -> Result<Applied, Refusal> {
        let key = format!("{id}@{version}");
        if self
            .model_catalog
            .get(id)
            .is_some_and(|v| v.contains(version))
        {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                format!("model `{id}` version `{version}` is already loaded"),
            ));
        }
        let tick = self.tick + 1;
        self.model_catalog
            .entry(id.to_owned())
            .or_default()
            .insert(version.to_owned());
        let previous = self
            .model_versions
            .insert(id.to_owned(), version.to_owned());
        self.model_latency
            .insert(key.clone(), m.latency_ticks.max(1));
        let data = json!({
            "model": id,
            "version": version,
            "blake3": m.blake3,
            "previous": previous,
        });
        self.loaded_models.insert(key, m);
        Ok(applied(
            format!("model `{id}` version `{version}` loaded, current from tick {tick}"),
            data,
        ))
    }

    /// Applies [`Input::UnloadModel`]: one version (not the current one
    /// while others remain), or every version of the model.  Requests for
    /// it are then answered as for an unknown model; those already asked
    /// of an unloaded version get an error when due.
    fn unload_model(&mut self, id: &str, version: Option<&str>) -> Result<Applied, Refusal> {
        let Some(versions) = self.model_catalog.get(id) else {
            return Err(Refusal::new(
                ErrorCode::UnknownModel,
                format!("no model `{id}` is loaded"),
            ));
        };
        let gone: Vec<String> = match version {
            None => versions.iter().cloned().collect(),
            Some(v) if !versions.contains(v) => {
                let known: Vec<&str> = versions.iter().map(String::as_str).collect();
                return Err(Refusal::new(
                    ErrorCode::UnknownModel,
                    format!(
                        "model `{id}` has no version `{v}` (loaded: {})",
                        known.join(", ")
                    ),
                ));
            }
            Some(v)
                if versions.len() > 1
                    && self.model_versions.get(id).map(String::as_str) == Some(v) =>
            {
                return Err(Refusal::new(
                    ErrorCode::Conflict,
                    format!(
                        "version `{v}` is model `{id}`'s current version: swap-model to another version first, or unload every version"
                    ),
                ));
            }
            Some(v) => vec![v.to_owned()],
        };
        let tick = self.tick + 1;
        let keys: BTreeSet<String> = gone.iter().map(|v| format!("{id}@{v}")).collect();
        if let Some(set) = self.model_catalog.get_mut(id) {
            for v in &gone {
                set.remove(v);
            }
            if set.is_empty() {
                self.model_catalog.remove(id);
                self.model_versions.remove(id);
            }
        }
        for k in &keys {
            self.model_latency.remove(k);
            self.loaded_models.remove(k);
            self.unanswerable(
                &BTreeSet::from([k.clone()]),
                &format!("model `{k}` was unloaded at tick {tick}, before this answer was due"),
            );
        }
        Ok(applied(
            format!(
                "model `{id}`: version(s) {} unloaded at tick {tick}",
                gone.join(", ")
            ),
            json!({"model": id, "versions": gone}),
        ))
    }

    // --- inference ---
    /// Applies [`Input::Upgrade`]: checks ABI compatibility and the state
    /// layout against the agent's current module, then schedules the swap
    /// for the coming tick.
    fn upgrade(
        &mut self,
        agent: &str,
        module: &str,
        blake3: &str,
        abi: u32,
        globals: &[String],
        migrates: bool,
    ) -> Result<Applied, Refusal> {
        let Some(id) = self.resolve(agent) else {
            return Err(Refusal::new(
                ErrorCode::UnknownAgent,
                format!("no agent `{agent}`"),
            ));
        };
        let Some(rec) = self.agents.get(&id) else {
            return Err(Refusal::new(
                ErrorCode::UnknownAgent,
                format!("no agent `{agent}`"),
            ));
        };
        if matches!(
            rec.status,
            AgentStatus::Stopped { .. } | AgentStatus::Pending
        ) {
            return Err(Refusal::new(
                ErrorCode::NotRunning,
                format!("agent {id} is not running"),
            ));
        }
        let (limit, old) = (
            rec.limits.memory_bytes,
            self.modules.get(&rec.module).cloned(),
        );
        let Some(old) = old else {
            return Err(Refusal::new(
                ErrorCode::NotRunning,
                format!("agent {id} has no module"),
            ));
        };
        let old_abi = old.abi_version.unwrap_or(0x1_0000);
        if abi >> 16 != old_abi >> 16 {
            return Err(Refusal::new(
                ErrorCode::IncompatibleUpgrade,
                format!(
                    "incompatible upgrade: {module} speaks ABI {}.{}, agent {id} runs ABI {}.{}",
                    abi >> 16,
                    abi & 0xFFFF,
                    old_abi >> 16,
                    old_abi & 0xFFFF
                ),
            ));
        }
        if old.globals.as_deref().is_some_and(|g| g != globals) && !migrates {
            return Err(Refusal::new(
                ErrorCode::IncompatibleUpgrade,
                format!(
                    "incompatible upgrade: {module} declares mutable globals {globals:?} instead of {:?} and exports no agent_migrate",
                    old.globals.unwrap_or_default()
                ),
            ));
        }
        let module_id = match self.modules.iter().find(|(_, m)| {
            m.path == module
                && m.expected_blake3.as_deref() == Some(blake3)
                && m.memory_limit >= limit
        }) {
            Some((mid, _)) => *mid,
            None => {
                let mid = self.modules.keys().next_back().map_or(0, |k| k + 1);
                self.modules.insert(
                    mid,
                    ModuleRec {
                        name: format!("{} (upgrade)", old.name),
                        path: module.to_owned(),
                        expected_blake3: Some(blake3.to_owned()),
                        blake3: None,
                        memory_limit: limit,
                        abi_version: Some(abi),
                        globals: Some(globals.to_vec()),
                        migrates,
                    },
                );
                mid
            }
        };
        if let Some(a) = self.agents.get_mut(&id) {
            a.module = module_id;
        }
        self.pending_upgrades.insert(id, module_id);
        Ok(applied(
            format!("agent {id} upgrades to {module} at tick {}", self.tick + 1),
            json!({"agent": id, "module": module}),
        ))
    }

    /// Applies [`Input::SwapModel`]: refused unless the manifest declares
    /// `id` at `version`.
    fn swap_model(&mut self, id: &str, version: &str) -> Result<Applied, Refusal> {
        let Some(versions) = self.model_catalog.get(id) else {
            let known: Vec<&str> = self.model_catalog.keys().map(String::as_str).collect();
            return Err(Refusal::new(
                ErrorCode::UnknownModel,
                if known.is_empty() {
                    format!("no model `{id}`: the manifest declares no models")
                } else {
                    format!(
                        "no model `{id}` (the manifest declares {})",
                        known.join(", ")
                    )
                },
            ));
        };
        if !versions.contains(version) {
            let known: Vec<&str> = versions.iter().map(String::as_str).collect();
            return Err(Refusal::new(
                ErrorCode::UnknownModel,
                format!(
                    "model `{id}` has no version `{version}` (declared: {})",
                    known.join(", ")
                ),
            ));
        }
        let tick = self.tick + 1;
        let previous = self
            .model_versions
            .insert(id.to_owned(), version.to_owned());
        let data = json!({"model": id, "version": version, "previous": previous});
        let text = match previous {
            Some(old) if old == version => {
                format!("model `{id}` is already at version `{version}`")
            }
            Some(old) => {
                format!("model `{id}` swapped from version `{old}` to `{version}` at tick {tick}")
            }
            None => format!("model `{id}` set to version `{version}` at tick {tick}"),
        };
        Ok(applied(text, data))
    }
}

fn applied(text: String, data: serde_json::Value) -> Applied {
    Applied { text, data }
}
