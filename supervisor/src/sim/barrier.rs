//! The tick barrier: how the workers' results become the next state, in
//! named phases (ARCHITECTURE.md, "Tick semantics", step 4 and 5).
//!
//! 1. [`Seal::open`] — the tick hash starts from the previous hash, the
//!    inputs, the decisions, the workers' digest and every result (before
//!    routing moves payloads out of them);
//! 2. [`SimState::apply_faults`] — faults, by the restart policy;
//! 3. [`SimState::route`] — every output, in canonical order (agent id, then
//!    the order the agent produced it), into an outbox of (recipient, where
//!    the message is) keys — a direct message stays in its result until it
//!    is delivered; membership changes are set aside; then the keys are
//!    grouped by recipient (a stable radix sort) and each message is
//!    encoded into its mailbox (as the worker will hand it to the agent);
//! 4. [`SimState::complete_tasks`] — tasks that ran complete (or fail with
//!    their agent, cancelling their dependents);
//! 5. [`SimState::apply_membership`] — subscriptions and channel changes,
//!    effective from the next tick's routing;
//! 6. [`SimState::apply_stops`] — agents stopped by request;
//! 7. [`SimState::account_fuel`] — per-tenant fuel quotas;
//! 8. [`Seal::close`] — the tick's counters and events close the hash.

use super::{
    AgentStatus, Decision, Event, HASH_PIECE, InferRequest, Input, Outbox, RUNTIME_SENDER,
    SimState, Task, TickPlan, TickSummary, kind, notice,
};
use shm_protocol::outputs::Offset;
use shm_protocol::worker::{AgentResult, Output, OutputRef, Payload, WireMessage};
use std::collections::{BTreeMap, BTreeSet};

/// What the workers reported for one tick, merged: results in ascending
/// agent id, the sum of the workers' digests, summed per-tenant fuel, and
/// the number of calls.
#[derive(Debug)]
pub struct WorkReport<'a> {
    /// Results, in ascending agent id.
    pub results: &'a mut [AgentResult],
    /// The workers' order-independent digests, summed.
    pub digest: [u64; 4],
    /// Fuel per tenant.
    pub tenant_fuel: &'a BTreeMap<u32, u64>,
    /// Calls made into agents.
    pub calls: u64,
}

/// The tick hash being computed, fed in bounded pieces (the same bytes as
/// one buffer).
#[derive(Debug)]
pub struct Seal {
    hasher: blake3::Hasher,
    buf: Vec<u8>,
}

impl Seal {
    /// Starts the hash of `tick` after `previous` with everything that
    /// determined the transition.
    pub fn open(
        previous: &[u8; 32],
        tick: u64,
        inputs: &[Input],
        decisions: &[Decision],
        report: &WorkReport<'_>,
    ) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"lockstep-tick-v2");
        hasher.update(previous);
        hasher.update(&tick.to_le_bytes());
        let mut buf = Vec::with_capacity(HASH_PIECE + 4096);
        let _ = shm_protocol::codec::encode_into(&inputs, &mut buf);
        let _ = shm_protocol::codec::encode_into(&decisions, &mut buf);
        for d in report.digest {
            buf.extend_from_slice(&d.to_le_bytes());
        }
        let mut seal = Self { hasher, buf };
        // A result with no output, fault or suppressed log says nothing the
        // workers' digests do not (agent, fuel and calls are in them): it
        // is there only because the tick sampled telemetry, which a replay
        // need not do, so it stays out of the hash.
        for r in report
            .results
            .iter()
            .filter(|r| !r.outputs.is_empty() || r.fault.is_some() || r.logs_suppressed > 0)
        {
            r.encode_hashed(&mut seal.buf);
            if seal.buf.len() >= HASH_PIECE {
                seal.hasher.update(&seal.buf);
                seal.buf.clear();
            }
        }
        seal
    }

    /// Adds the tick's own outcome and returns the hash.
    pub fn close(mut self, sum: &TickSummary) -> [u8; 32] {
        let _ = shm_protocol::codec::encode_into(
            &(&sum.events, sum.steps, sum.messages, sum.dropped, sum.calls),
            &mut self.buf,
        );
        self.hasher.update(&self.buf);
        *self.hasher.finalize().as_bytes()
    }
}

/// A membership change an agent asked for (applied after routing).
type Membership = (u64, Output);

impl SimState {
    /// Completes tick `plan.tick` from the workers' `report`: the barrier's
    /// phases in order (see the module docs).  Returns the summary, with
    /// the new chained hash.
    pub fn finish_tick(
        &mut self,
        plan: &TickPlan,
        inputs: &[Input],
        decisions: &[Decision],
        report: WorkReport<'_>,
    ) -> TickSummary {
        let tick = plan.tick;
        let mut sum = TickSummary {
            tick,
            calls: report.calls,
            ..TickSummary::default()
        };
        let mut drops = 0u64;
        let messages_before = self.counters.messages;
        let faulted: BTreeSet<u64> = report
            .results
            .iter()
            .filter(|r| r.fault.is_some())
            .map(|r| r.agent_id)
            .collect();
        // Only faults and stops change whether an agent is live from here
        // on: the live agents at the end are the plan's count corrected by
        // those agents (no scan of every agent).
        let touched: BTreeSet<u64> = faulted.iter().chain(&plan.stops).copied().collect();
        let live_before = self.count_live(&touched);
        let seal = Seal::open(&self.hash, tick, inputs, decisions, &report);
        self.apply_faults(report.results, tick, &mut sum);
        let (mut outbox, membership) = self.route(report.results, tick, &mut sum);
        outbox.sort();
        self.deliver(outbox, report.results, tick, &mut drops);
        self.complete_tasks(plan, &faulted, tick, &mut drops);
        self.apply_membership(membership);
        self.apply_stops(plan, tick);
        self.account_fuel(report.tenant_fuel, &mut sum);
        let live = (plan.live + self.count_live(&touched)).saturating_sub(live_before);
        debug_assert_eq!(live, self.live_agents().count() as u64, "live agents");
        self.derived.live = live;
        let steps = plan.steps.len() as u64 + if plan.step_all { live } else { 0 };
        sum.steps = steps;
        sum.live = live;
        sum.messages = self.counters.messages - messages_before;
        sum.dropped = drops;
        self.counters.steps += steps;
        self.counters.calls += report.calls;
        self.counters.fuel += sum.fuel;
        self.hash = seal.close(&sum);
        self.tick = tick;
        sum.hash = self.hash;
        sum
    }

    /// Phase 2: every fault goes through the agent's restart policy (an
    /// agent that faulted this tick receives nothing more).
    fn apply_faults(&mut self, results: &[AgentResult], tick: u64, sum: &mut TickSummary) {
        for r in results {
            if let Some(f) = &r.fault {
                sum.faults += 1;
                self.counters.faults += 1;
                let action = self.on_fault(r.agent_id, f, tick);
                sum.events.push(Event::Fault {
                    agent: r.agent_id,
                    fault: f.clone(),
                    action,
                });
            }
        }
    }

    /// Phase 3: routes every output in canonical order (by agent id, then
    /// output order).  No agent's status changes while routing, so the
    /// messages are collected and then put into the mailboxes recipient by
    /// recipient (each recipient's in that same order).  A direct message
    /// is read from its result once, when it is encoded into its mailbox.
    fn route(
        &mut self,
        results: &[AgentResult],
        tick: u64,
        sum: &mut TickSummary,
    ) -> (Outbox, Vec<Membership>) {
        let mut outbox = std::mem::take(&mut self.derived.outbox);
        let mut membership: Vec<Membership> = Vec::new();
        let mut infer_count: BTreeMap<u32, u64> = BTreeMap::new();
        for (ri, r) in results.iter().enumerate() {
            let from = r.agent_id;
            let mut outputs = r.outputs.iter();
            loop {
                // A direct message is read from its result when delivered.
                if let Some((at, to)) = outputs.next_send() {
                    outbox.push_send(to, ri, at);
                    continue;
                }
                // A block holds at most `u32::MAX` bytes.
                let at = outputs.offset() as Offset;
                let Some(o) = outputs.next() else { break };
                match o {
                    OutputRef::Send { to, .. } => outbox.push_send(to, ri, at),
                    OutputRef::Publish {
                        topic,
                        seq,
                        payload,
                    } => {
                        let subs = self.topics.get(topic).map(|s| s.iter().copied());
                        for s in subs.into_iter().flatten() {
                            outbox.push(s, fan_out(kind::TOPIC, from, tick, seq, topic, payload));
                        }
                    }
                    OutputRef::ChannelSend {
                        channel,
                        seq,
                        payload,
                    } => {
                        let members = self.channels.get(channel).map(|s| s.iter().copied());
                        for m in members.into_iter().flatten() {
                            outbox
                                .push(m, fan_out(kind::CHANNEL, from, tick, seq, channel, payload));
                        }
                    }
                    OutputRef::Subscribe(_)
                    | OutputRef::Unsubscribe(_)
                    | OutputRef::Join(_)
                    | OutputRef::Leave(_) => {
                        membership.push((from, o.to_output()));
                    }
                    OutputRef::ScheduleTask {
                        task_id,
                        target,
                        priority,
                        payload,
                        deps,
                    } => {
                        let task = Task {
                            id: task_id,
                            agent: target,
                            priority,
                            payload: payload.to_vec(),
                            deps: deps.iter().collect(),
                            seq: 0,
                            submitted: tick,
                        };
                        self.submit_agent_task(from, task, tick, &mut outbox, sum);
                    }
                    OutputRef::Infer {
                        request_id,
                        model,
                        input,
                    } => {
                        let tenant = self.agents.get(&from).map_or(0, |a| a.tenant);
                        let n = infer_count.entry(tenant).or_default();
                        let quota = self
                            .tenants
                            .get(tenant as usize)
                            .and_then(|t| t.max_inference_per_tick);
                        if quota.is_some_and(|q| *n >= q) {
                            let msg = WireMessage {
                                kind: kind::INFER_ERR,
                                sender: RUNTIME_SENDER,
                                sent_tick: tick,
                                seq: request_id,
                                topic: model.to_owned(),
                                payload: Payload::from(b"inference quota exceeded"),
                            };
                            outbox.push(from, msg);
                            sum.events.push(Event::InferRefused {
                                agent: from,
                                request: request_id,
                            });
                        } else {
                            *n += 1;
                            self.counters.inferences += 1;
                            let pinned = self.pin_model(model);
                            let latency = self.model_latency.get(&pinned).copied().unwrap_or(1);
                            self.infer_queue.push(InferRequest {
                                agent: from,
                                request_id,
                                model: model.to_owned(),
                                pinned,
                                asked: tick,
                                due: tick + u64::from(latency) - 1,
                                input: input.to_vec(),
                            });
                        }
                    }
                    OutputRef::Log { .. } => {}
                }
            }
        }
        (outbox, membership)
    }

    /// A task an agent submitted: refused (with a notice and an event)
    /// unless the agent issued its id and its target and dependencies
    /// exist.
    fn submit_agent_task(
        &mut self,
        from: u64,
        task: Task,
        tick: u64,
        outbox: &mut Outbox,
        sum: &mut TickSummary,
    ) {
        let task_id = task.id;
        if (task_id >> 32) != from {
            sum.events.push(Event::TaskRefused {
                agent: from,
                task: task_id,
                reason: "task id not issued by this agent".into(),
            });
        } else if let Err(reason) = self.add_task(task) {
            self.notice_seq += 1;
            let n = notice(
                self.notice_seq,
                tick,
                format!("task {task_id:#x} refused: {reason}"),
            );
            outbox.push(from, n);
            sum.events.push(Event::TaskRefused {
                agent: from,
                task: task_id,
                reason: reason.message,
            });
        }
    }

    /// Phase 4: tasks that ran complete unless their agent faulted (their
    /// dependents become ready from the next tick on); tasks of stopped
    /// agents can never run and fail.
    fn complete_tasks(
        &mut self,
        plan: &TickPlan,
        faulted: &BTreeSet<u64>,
        tick: u64,
        drops: &mut u64,
    ) {
        for s in &plan.steps {
            let Some(t) = &s.task else { continue };
            if self.tasks.open.remove(&t.task_id).is_some() {
                if faulted.contains(&s.agent_id) {
                    self.fail_task(t.task_id, tick, drops);
                } else {
                    self.tasks.completed.insert(t.task_id);
                    self.counters.tasks_completed += 1;
                }
            }
        }
        let dead: Vec<u64> = self
            .tasks
            .open
            .values()
            .filter(|t| {
                matches!(
                    self.agents.get(&t.agent).map(|a| &a.status),
                    Some(AgentStatus::Stopped { .. }) | None
                )
            })
            .map(|t| t.id)
            .collect();
        for t in dead {
            if self.tasks.open.remove(&t).is_some() {
                self.fail_task(t, tick, drops);
            }
        }
    }

    /// Phase 5: membership changes take effect for the next tick's routing.
    fn apply_membership(&mut self, membership: Vec<Membership>) {
        for (agent, o) in membership {
            match o {
                Output::Subscribe(t) => {
                    self.topics.entry(t).or_default().insert(agent);
                }
                Output::Unsubscribe(t) => {
                    if let Some(s) = self.topics.get_mut(&t) {
                        s.remove(&agent);
                    }
                }
                Output::Join(c) => {
                    self.channels.entry(c).or_default().insert(agent);
                }
                Output::Leave(c) => {
                    if let Some(s) = self.channels.get_mut(&c) {
                        s.remove(&agent);
                    }
                }
                _ => {}
            }
        }
    }

    /// Phase 6: agents stopped by request.
    fn apply_stops(&mut self, plan: &TickPlan, tick: u64) {
        for &id in &plan.stops {
            self.stop_agent(id, tick, "stopped by request");
        }
    }

    /// Phase 7: fuel above a tenant's per-tick quota becomes a debt paid
    /// back at the quota per tick (the tenant's steps are suspended until
    /// then).
    fn account_fuel(&mut self, tenant_fuel: &BTreeMap<u32, u64>, sum: &mut TickSummary) {
        for (t, fuel) in tenant_fuel {
            sum.fuel += fuel;
            if let (Some(tenant), Some(u)) = (
                self.tenants.get(*t as usize),
                self.usage.get_mut(*t as usize),
            ) {
                match tenant.max_fuel_per_tick {
                    Some(q) => u.fuel_debt = (u.fuel_debt + fuel).saturating_sub(q),
                    None => u.fuel_debt = 0,
                }
            }
        }
        for (t, u) in self.usage.iter_mut().enumerate() {
            if !tenant_fuel.contains_key(&(t as u32))
                && let Some(q) = self.tenants.get(t).and_then(|x| x.max_fuel_per_tick)
            {
                u.fuel_debt = u.fuel_debt.saturating_sub(q);
            }
        }
    }
}

/// A copy of a topic or channel message for one recipient.
fn fan_out(kind: u32, from: u64, tick: u64, seq: u64, name: &str, payload: &[u8]) -> WireMessage {
    WireMessage {
        kind,
        sender: from,
        sent_tick: tick,
        seq,
        topic: name.to_owned(),
        payload: Payload::from(payload),
    }
}
