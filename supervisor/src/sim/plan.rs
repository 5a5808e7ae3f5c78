//! Planning a tick: spawns, restarts due, deliveries, steps (by the
//! scheduler mode and the tenants' quotas), upgrades and stops.

use super::{AgentRec, AgentStatus, Derived, SimState, Task, TickPlan};
use crate::manifest::Mode;
use shm_protocol::worker::{Delivery, SpawnOrder, StepOrder, TaskRef, UpgradeOrder};
use std::collections::{BTreeMap, BTreeSet};

impl SimState {
    /// Plans tick `self.tick + 1` (after [`SimState::apply_inputs`]).
    pub fn begin_tick(&mut self) -> TickPlan {
        let tick = self.tick + 1;
        let mut plan = TickPlan {
            tick,
            ..TickPlan::default()
        };
        if !self.derived.ready {
            // First tick of this process (genesis, snapshot, fork): index.
            let mut d = Derived {
                ready: true,
                ..Derived::default()
            };
            for (id, a) in &self.agents {
                match a.status {
                    AgentStatus::Live => d.live += 1,
                    AgentStatus::Faulted {
                        restart_at: Some(at),
                        ..
                    } => {
                        d.restart_due.insert((at, *id));
                    }
                    _ => {}
                }
            }
            self.derived = d;
        }
        // Spawns.
        for id in std::mem::take(&mut self.pending_spawns) {
            if let Some(a) = self.agents.get_mut(&id) {
                self.derived.live += u64::from(!matches!(a.status, AgentStatus::Live));
                a.status = AgentStatus::Live;
                plan.spawns.push(SpawnOrder {
                    agent_id: id,
                    module_id: a.module,
                    tenant: a.tenant,
                    limits: a.limits,
                });
            }
        }
        // Restarts due this tick, in agent order.
        while let Some(&(at, id)) = self.derived.restart_due.first() {
            if at > tick {
                break;
            }
            self.derived.restart_due.pop_first();
            if let Some(a) = self.agents.get_mut(&id)
                && let AgentStatus::Faulted {
                    restart_at: Some(due),
                    ..
                } = a.status
                && due == at
            {
                a.status = AgentStatus::Live;
                a.restarts.push_back(tick);
                plan.restarts.push(SpawnOrder {
                    agent_id: id,
                    module_id: a.module,
                    tenant: a.tenant,
                    limits: a.limits,
                });
                self.derived.live += 1;
            }
        }
        plan.restarts.sort_unstable_by_key(|r| r.agent_id);
        plan.live = self.derived.live;
        self.counters.restarts += plan.restarts.len() as u64;
        // Deliveries: everything queued, to agents that are live.
        plan.deliveries.reserve(self.mailboxes.len());
        for (id, mb) in std::mem::take(&mut self.mailboxes) {
            if mb.is_empty() {
                continue;
            }
            if matches!(
                self.agents.get(&id).map(|a| &a.status),
                Some(AgentStatus::Live)
            ) {
                plan.deliveries.push(Delivery {
                    agent_id: id,
                    messages: mb,
                });
            } else {
                self.counters.undeliverable += mb.len() as u64;
            }
        }
        self.plan_steps(&mut plan);
        plan.upgrades = std::mem::take(&mut self.pending_upgrades)
            .into_iter()
            .filter(|(id, _)| {
                matches!(
                    self.agents.get(id).map(|a| &a.status),
                    Some(AgentStatus::Live | AgentStatus::Faulted { .. })
                )
            })
            .map(|(agent_id, module_id)| UpgradeOrder {
                agent_id,
                module_id,
            })
            .collect();
        plan.stops = std::mem::take(&mut self.pending_stops)
            .into_iter()
            .collect();
        plan
    }

    /// Per-tenant step allowance this tick (`u64::MAX` = unlimited).
    fn allowances(&self) -> Vec<u64> {
        self.tenants
            .iter()
            .zip(&self.usage)
            .map(|(t, u)| {
                if u.fuel_debt > 0 {
                    0
                } else {
                    t.max_steps_per_tick.unwrap_or(u64::MAX)
                }
            })
            .collect()
    }

    fn plan_steps(&mut self, plan: &mut TickPlan) {
        let mut allow = self.allowances();
        let live = |a: &AgentRec| matches!(a.status, AgentStatus::Live);
        match self.mode {
            Mode::RoundRobin => {
                // The highest-priority open task of each agent rides on its step.
                let mut task_of: BTreeMap<u64, &Task> = BTreeMap::new();
                for t in self.tasks.open.values() {
                    let better = task_of.get(&t.agent).is_none_or(|b| {
                        (t.priority, std::cmp::Reverse(t.seq))
                            > (b.priority, std::cmp::Reverse(b.seq))
                    });
                    if better {
                        task_of.insert(t.agent, t);
                    }
                }
                let restricted = allow.iter().any(|a| *a != u64::MAX) || self.budget != u64::MAX;
                if task_of.is_empty() && !restricted {
                    plan.step_all = true;
                    return;
                }
                // Rotation: each tenant starts where it stopped last tick.
                let mut per_tenant: Vec<Vec<u64>> = vec![Vec::new(); self.tenants.len()];
                for (id, a) in &self.agents {
                    if live(a) {
                        per_tenant[a.tenant as usize].push(*id);
                    }
                }
                let mut chosen: BTreeSet<u64> = BTreeSet::new();
                for (t, ids) in per_tenant.iter().enumerate() {
                    if ids.is_empty() {
                        continue;
                    }
                    let n = (allow[t].min(ids.len() as u64)) as usize;
                    let start = (self.usage[t].rotation % ids.len() as u64) as usize;
                    for k in 0..n {
                        chosen.insert(ids[(start + k) % ids.len()]);
                    }
                    self.usage[t].rotation = self.usage[t].rotation.wrapping_add(n as u64);
                    allow[t] -= n as u64;
                }
                // The budget takes the chosen agents in a rotation that
                // resumes where the previous tick stopped, so that every
                // agent steps in turn whatever the budget.
                let chosen: Vec<u64> = chosen.into_iter().collect();
                let n = chosen.len();
                let take = (self.budget.min(n as u64)) as usize;
                let mut picked: Vec<u64> = if take == n {
                    chosen
                } else {
                    let start = (self.budget_rotation % n as u64) as usize;
                    self.budget_rotation = self.budget_rotation.wrapping_add(take as u64);
                    (0..take).map(|k| chosen[(start + k) % n]).collect()
                };
                picked.sort_unstable();
                for id in picked {
                    let task = task_of.get(&id).map(|t| TaskRef {
                        task_id: t.id,
                        priority: t.priority,
                        payload: t.payload.clone(),
                    });
                    plan.steps.push(StepOrder { agent_id: id, task });
                }
            }
            Mode::Priority | Mode::Dag => {
                let mut ready: Vec<&Task> = self
                    .tasks
                    .open
                    .values()
                    .filter(|t| {
                        self.mode == Mode::Priority
                            || t.deps.iter().all(|d| self.tasks.completed.contains(d))
                    })
                    .filter(|t| self.agents.get(&t.agent).is_some_and(live))
                    .collect();
                ready.sort_by_key(|t| (std::cmp::Reverse(t.priority), t.seq));
                let mut budget = self.budget;
                for t in ready {
                    if budget == 0 {
                        break;
                    }
                    let tenant = self.agents.get(&t.agent).map_or(0, |a| a.tenant as usize);
                    if allow[tenant] == 0 {
                        continue;
                    }
                    allow[tenant] -= 1;
                    budget -= 1;
                    plan.steps.push(StepOrder {
                        agent_id: t.agent,
                        task: Some(TaskRef {
                            task_id: t.id,
                            priority: t.priority,
                            payload: t.payload.clone(),
                        }),
                    });
                }
            }
        }
    }
}
