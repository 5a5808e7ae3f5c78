//! Scheduler, routing and quota tests on the deterministic state machine.

use super::*;
use crate::manifest::Manifest;
use shm_protocol::worker::{AgentResult, Fault, Output, Outputs};
use std::collections::BTreeMap;

/// Runs the barrier of `plan` with synthetic results.
fn finish(
    s: &mut SimState,
    plan: &TickPlan,
    results: &[AgentResult],
    fuel: &BTreeMap<u32, u64>,
) -> TickSummary {
    let mut results = results.to_vec();
    s.finish_tick(
        plan,
        &[],
        &[],
        WorkReport {
            results: &mut results,
            digest: [0; 4],
            tenant_fuel: fuel,
            calls: 0,
        },
    )
}

fn manifest(extra: &str, agents: &str) -> Manifest {
    let dir = tempfile::Builder::new()
        .prefix("lockstep-sim-")
        .tempdir()
        .unwrap();
    std::fs::write(dir.path().join("a.wasm"), b"\0asm").unwrap();
    Manifest::parse(&format!("{extra}\n{agents}"), "m.toml", dir.path()).unwrap()
}

fn agents(n: u64) -> String {
    format!("[[agents]]\nname = \"a\"\nmodule = \"a.wasm\"\ncount = {n}\n")
}

/// Runs the state machine for one tick with synthetic worker results.
fn tick(s: &mut SimState, results: Vec<AgentResult>) -> (TickPlan, TickSummary) {
    let plan = s.begin_tick();
    let sum = finish(s, &plan, &results, &BTreeMap::new());
    (plan, sum)
}

fn out(agent: u64, outputs: Vec<Output>) -> AgentResult {
    AgentResult {
        agent_id: agent,
        fuel: 10,
        calls: 1,
        outputs: outputs.into(),
        fault: None,
        wall_ns: 0,
        logs_suppressed: 0,
        memory_bytes: 0,
    }
}

fn send(to: u64, seq: u64) -> Output {
    Output::Send {
        to,
        seq,
        payload: vec![seq as u8].into(),
    }
}

#[test]
fn round_robin_steps_every_live_agent_once() {
    let mut s = SimState::new(&manifest("", &agents(5)), 1).unwrap();
    let (plan, sum) = tick(&mut s, vec![]);
    assert_eq!(plan.spawns.len(), 5);
    assert!(plan.step_all);
    assert_eq!(sum.steps, 5);
    let (plan, _) = tick(&mut s, vec![]);
    assert!(plan.spawns.is_empty() && plan.step_all);
}

#[test]
fn messages_are_delivered_next_tick_in_canonical_order() {
    let mut s = SimState::new(&manifest("", &agents(4)), 1).unwrap();
    tick(&mut s, vec![]);
    // Agents 3 and 2 both send to 1; results arrive sorted by agent id.
    tick(
        &mut s,
        vec![
            out(2, vec![send(1, 1), send(1, 2)]),
            out(3, vec![send(1, 1)]),
        ],
    );
    let (plan, _) = tick(&mut s, vec![]);
    let d = &plan.deliveries[0];
    assert_eq!(d.agent_id, 1);
    let order: Vec<(u64, u64)> = d.messages.iter().map(|m| (m.sender, m.seq)).collect();
    assert_eq!(order, vec![(2, 1), (2, 2), (3, 1)]);
    assert!(d.messages.iter().all(|m| m.sent_tick == 2));
}

#[test]
fn publish_fans_out_and_subscriptions_apply_from_the_next_tick() {
    let m = manifest(
        "",
        "[[agents]]\nname = \"s\"\nmodule = \"a.wasm\"\ncount = 3\nsubscriptions = [\"t\"]\n[[agents]]\nname = \"p\"\nmodule = \"a.wasm\"\n",
    );
    let mut s = SimState::new(&m, 1).unwrap();
    tick(&mut s, vec![]);
    let publish = || Output::Publish {
        topic: "t".into(),
        seq: 1,
        payload: vec![7].into(),
    };
    // Agent 4 subscribes and publishes in the same tick: it does not get
    // its own publication yet (membership changes apply after routing).
    tick(
        &mut s,
        vec![out(4, vec![Output::Subscribe("t".into()), publish()])],
    );
    let (plan, _) = tick(&mut s, vec![out(4, vec![publish()])]);
    assert_eq!(
        plan.deliveries
            .iter()
            .map(|d| d.agent_id)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let (plan, _) = tick(&mut s, vec![out(2, vec![Output::Unsubscribe("t".into())])]);
    assert_eq!(
        plan.deliveries
            .iter()
            .map(|d| d.agent_id)
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    tick(&mut s, vec![out(4, vec![publish()])]);
    let (plan, _) = tick(&mut s, vec![]);
    assert_eq!(
        plan.deliveries
            .iter()
            .map(|d| d.agent_id)
            .collect::<Vec<_>>(),
        vec![1, 3, 4]
    );
}

#[test]
fn channels_reach_current_members_only() {
    let mut s = SimState::new(&manifest("", &agents(3)), 1).unwrap();
    tick(
        &mut s,
        vec![
            out(1, vec![Output::Join("c".into())]),
            out(2, vec![Output::Join("c".into())]),
        ],
    );
    let cs = || Output::ChannelSend {
        channel: "c".into(),
        seq: 1,
        payload: vec![].into(),
    };
    tick(
        &mut s,
        vec![out(3, vec![cs()]), out(2, vec![Output::Leave("c".into())])],
    );
    let (plan, _) = tick(&mut s, vec![out(3, vec![cs()])]);
    // Sent while 2 was still a member: both get it.
    assert_eq!(
        plan.deliveries
            .iter()
            .map(|d| d.agent_id)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    let (plan, _) = tick(&mut s, vec![]);
    assert_eq!(
        plan.deliveries
            .iter()
            .map(|d| d.agent_id)
            .collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(
        plan.deliveries[0].messages.iter().next().unwrap().kind,
        kind::CHANNEL
    );
}

#[test]
fn mailbox_overflow_policies_drop_and_count() {
    for (policy, want) in [
        ("drop-oldest", vec![3u64, 4, 5]),
        ("drop-newest", vec![1, 2, 3]),
    ] {
        let m = manifest(
            &format!("[scheduler]\nmailbox_capacity = 3\nmailbox_overflow = \"{policy}\"\n"),
            &agents(2),
        );
        let mut s = SimState::new(&m, 1).unwrap();
        tick(&mut s, vec![]);
        let (_, sum) = tick(&mut s, vec![out(2, (1..=5).map(|i| send(1, i)).collect())]);
        assert_eq!(sum.dropped, 2);
        assert_eq!(s.counters.dropped, 2);
        let (plan, _) = tick(&mut s, vec![]);
        assert_eq!(
            plan.deliveries[0]
                .messages
                .iter()
                .map(|m| m.seq)
                .collect::<Vec<_>>(),
            want,
            "{policy}"
        );
    }
}

fn task_output(issuer: u64, n: u64, target: u64, priority: i32, deps: Vec<u64>) -> Output {
    Output::ScheduleTask {
        task_id: (issuer << 32) | n,
        target,
        priority,
        payload: vec![n as u8],
        deps,
    }
}

fn task_ids(plan: &TickPlan) -> Vec<u64> {
    plan.steps
        .iter()
        .filter_map(|s| s.task.as_ref().map(|t| t.task_id & 0xFFFF_FFFF))
        .collect()
}

#[test]
fn priority_mode_orders_by_priority_then_sequence_within_budget() {
    let m = manifest("[scheduler]\nmode = \"priority\"\nbudget = 3\n", &agents(2));
    let mut s = SimState::new(&m, 1).unwrap();
    tick(&mut s, vec![]);
    let tasks = vec![
        task_output(1, 1, 2, 1, vec![]),
        task_output(1, 2, 2, 5, vec![]),
        task_output(1, 3, 2, 5, vec![]),
        task_output(1, 4, 2, 9, vec![]),
        task_output(1, 5, 2, 0, vec![]),
    ];
    tick(&mut s, vec![out(1, tasks)]);
    let (plan, _) = tick(&mut s, vec![]);
    assert_eq!(task_ids(&plan), vec![4, 2, 3]);
    let (plan, _) = tick(&mut s, vec![]);
    assert_eq!(task_ids(&plan), vec![1, 5]);
    assert_eq!(s.counters.tasks_completed, 5);
}

#[test]
fn dag_mode_runs_tasks_after_their_dependencies() {
    let m = manifest("[scheduler]\nmode = \"dag\"\n", &agents(2));
    let mut s = SimState::new(&m, 1).unwrap();
    tick(&mut s, vec![]);
    let id = |n: u64| (1u64 << 32) | n;
    // 3 depends on 1 and 2; 4 depends on 3; 2 has the highest priority.
    let tasks = vec![
        task_output(1, 1, 2, 1, vec![]),
        task_output(1, 2, 2, 7, vec![]),
        task_output(1, 3, 2, 100, vec![id(1), id(2)]),
        task_output(1, 4, 2, 100, vec![id(3)]),
    ];
    tick(&mut s, vec![out(1, tasks)]);
    let (plan, _) = tick(&mut s, vec![]);
    assert_eq!(task_ids(&plan), vec![2, 1]);
    let (plan, _) = tick(&mut s, vec![]);
    assert_eq!(task_ids(&plan), vec![3]);
    let (plan, _) = tick(&mut s, vec![]);
    assert_eq!(task_ids(&plan), vec![4]);
}

#[test]
fn missing_dependencies_are_refused_and_failures_cascade() {
    let m = manifest("[scheduler]\nmode = \"dag\"\n", &agents(2));
    let mut s = SimState::new(&m, 1).unwrap();
    tick(&mut s, vec![]);
    let id = |n: u64| (1u64 << 32) | n;
    let (_, sum) = tick(
        &mut s,
        vec![out(1, vec![task_output(1, 1, 2, 0, vec![id(99)])])],
    );
    assert!(
        matches!(&sum.events[0], Event::TaskRefused { reason, .. } if reason.contains("missing dependency"))
    );
    // A task whose agent faults fails, and its dependents are cancelled.
    tick(
        &mut s,
        vec![out(
            1,
            vec![
                task_output(1, 2, 2, 0, vec![]),
                task_output(1, 3, 1, 0, vec![id(2)]),
            ],
        )],
    );
    let mut faulted = out(2, vec![]);
    faulted.fault = Some(Fault::Trap("UnreachableCodeReached".into()));
    let (plan, _) = tick(&mut s, vec![faulted]);
    assert_eq!(task_ids(&plan), vec![2]);
    assert!(s.tasks.failed.contains(&id(2)) && s.tasks.failed.contains(&id(3)));
    assert!(s.tasks.open.is_empty());
}

#[test]
fn tenant_step_quota_rotates_deterministically() {
    let m = manifest(
        "[[tenants]]\nname = \"default\"\nmax_steps_per_tick = 2\n",
        &agents(5),
    );
    let mut s = SimState::new(&m, 1).unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let (plan, _) = tick(&mut s, vec![]);
        assert!(!plan.step_all);
        seen.push(plan.steps.iter().map(|x| x.agent_id).collect::<Vec<_>>());
    }
    assert_eq!(
        seen,
        vec![vec![1, 2], vec![3, 4], vec![1, 5], vec![2, 3], vec![4, 5]]
    );
}

#[test]
fn tenant_fuel_quota_throttles_the_next_ticks() {
    let m = manifest(
        "[[tenants]]\nname = \"default\"\nmax_fuel_per_tick = 100\n",
        &agents(2),
    );
    let mut s = SimState::new(&m, 1).unwrap();
    let plan = s.begin_tick();
    let fuel = BTreeMap::from([(0u32, 250u64)]);
    finish(&mut s, &plan, &[], &fuel);
    // 150 over quota: throttled for two ticks (paying 100 per tick).
    let (p1, _) = tick(&mut s, vec![]);
    assert!(p1.steps.is_empty() && !p1.step_all);
    let (p2, _) = tick(&mut s, vec![]);
    assert!(p2.steps.is_empty() && !p2.step_all, "{:?}", s.usage);
    let (p3, sum) = tick(&mut s, vec![]);
    assert!(p3.step_all);
    assert_eq!(sum.steps, 2);
}

#[test]
fn tenant_agent_and_inference_quotas() {
    let m = manifest(
        "[[tenants]]\nname = \"default\"\nmax_agents = 2\nmax_inference_per_tick = 1\n",
        &agents(2),
    );
    let mut s = SimState::new(&m, 1).unwrap();
    let outcome = s.apply_inputs(&[Input::Spawn {
        name: "x".into(),
        module: "a.wasm".into(),
        tenant: "default".into(),
        priority: 0,
        memory: 1 << 20,
        fuel: 1000,
        blake3: None,
    }]);
    assert!(matches!(&outcome[0], InputOutcome::Refused(r) if r.contains("limit of 2 agents")));
    tick(&mut s, vec![]);
    let infer = |r| Output::Infer {
        request_id: r,
        model: "echo".into(),
        input: vec![],
    };
    let (_, sum) = tick(&mut s, vec![out(1, vec![infer(1)]), out(2, vec![infer(1)])]);
    assert_eq!(s.infer_queue.len(), 1);
    assert_eq!(
        sum.events,
        vec![Event::InferRefused {
            agent: 2,
            request: 1
        }]
    );
}

#[test]
fn restart_intensity_then_stop() {
    let m = manifest(
        "",
        "[[agents]]\nname = \"a\"\nmodule = \"a.wasm\"\nrestart = { max = 2, within = 10 }\n",
    );
    let mut s = SimState::new(&m, 1).unwrap();
    tick(&mut s, vec![]);
    let fault = || {
        let mut r = out(1, vec![]);
        r.fault = Some(Fault::OutOfFuel);
        r
    };
    let mut restarts = 0;
    for _ in 0..4 {
        let (plan, sum) = tick(&mut s, vec![fault()]);
        restarts += plan.restarts.len();
        if let Event::Fault { action, .. } = &sum.events[0]
            && action.starts_with("stopped")
        {
            break;
        }
    }
    assert_eq!(restarts, 2);
    assert!(matches!(s.agents[&1].status, AgentStatus::Stopped { .. }));
}

/// The restart schedule and live count that `begin_tick` keeps instead
/// of scanning every agent survive a save and load (they are rebuilt):
/// a faulted agent restarts at the same tick, in agent order, and the
/// state hashes stay equal.
#[test]
fn restarts_and_live_count_survive_a_save_and_load() {
    let m = manifest("", &agents(5));
    let mut s = SimState::new(&m, 1).unwrap();
    tick(&mut s, vec![]);
    let fault = |id| {
        let mut r = out(id, vec![]);
        r.fault = Some(Fault::Trap("unreachable".into()));
        r
    };
    let (_, sum) = tick(&mut s, vec![fault(4), fault(2)]);
    assert_eq!(sum.live, 3);
    let bytes = shm_protocol::codec::encode(&s).unwrap();
    let mut loaded: SimState = shm_protocol::codec::decode(&bytes).unwrap();
    assert_eq!(loaded, s);
    let (pa, sa) = tick(&mut s, vec![]);
    let (pb, sb) = tick(&mut loaded, vec![]);
    let ids = |p: &TickPlan| p.restarts.iter().map(|r| r.agent_id).collect::<Vec<_>>();
    assert_eq!(ids(&pa), vec![2, 4]);
    assert_eq!(ids(&pb), vec![2, 4]);
    assert_eq!((sa.live, sa.steps, sa.hash), (sb.live, sb.steps, sb.hash));
    assert_eq!(sa.live, 5);
}

#[test]
fn same_inputs_same_hash_different_seed_different_hash() {
    let run = |seed| {
        let mut s = SimState::new(&manifest("", &agents(3)), seed).unwrap();
        for _ in 0..3 {
            tick(&mut s, vec![out(1, vec![send(2, 1)])]);
        }
        s.hash
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

/// Round-robin with a per-tick budget below the number of agents steps
/// every agent in turn (a budget used to starve all but the first ones).
#[test]
fn round_robin_budget_rotates_over_every_agent() {
    let m = manifest("[scheduler]\nbudget = 2\n", &agents(5));
    let mut s = SimState::new(&m, 1).unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let (plan, sum) = tick(&mut s, vec![]);
        assert_eq!(sum.steps, 2);
        seen.push(plan.steps.iter().map(|x| x.agent_id).collect::<Vec<_>>());
    }
    assert_eq!(
        seen,
        vec![vec![1, 2], vec![3, 4], vec![1, 5], vec![2, 3], vec![4, 5]]
    );
}

proptest::proptest! {
    /// Delivering a barrier's messages in bulk leaves exactly the mailboxes
    /// and counters that pushing them one by one does, whatever the policy,
    /// the capacity, the messages already queued (even more than the
    /// capacity) and the mix of direct and made messages.
    #[test]
    fn bulk_delivery_is_pushing_one_by_one(
        drop_oldest in proptest::bool::ANY,
        cap in 1u64..6,
        queued in 0u64..9,
        sends in proptest::collection::vec((1u64..4, proptest::bool::ANY), 0..14),
    ) {
        let policy = if drop_oldest { "drop-oldest" } else { "drop-newest" };
        let m = manifest(
            &format!("[scheduler]\nmailbox_capacity = {cap}\nmailbox_overflow = \"{policy}\"\n"),
            &agents(3),
        );
        let mut s = SimState::new(&m, 1).unwrap();
        tick(&mut s, vec![]);
        // Queued messages (pushed past the capacity by raising it).
        s.mailbox_capacity = 100;
        let mut drops = 0;
        for q in 0..queued {
            s.push_message(1 + q % 3, notice(100 + q, 1, format!("q{q}")), &mut drops);
        }
        s.mailbox_capacity = cap;
        // Agent 1's outputs, routed: direct sends stay in the result, made
        // messages (notices standing in for topic copies) go in the outbox.
        let mut outbox = Outbox::default();
        let mut outputs = Outputs::new();
        for (i, &(to, made)) in sends.iter().enumerate() {
            if made {
                outbox.push(to, notice(i as u64, 2, format!("m{i}")));
            } else {
                outbox.push_send(to, 0, outputs.as_bytes().len() as u32);
                outputs.push(&send(to, i as u64));
            }
        }
        let results = vec![out(1, outputs.to_vec())];
        outbox.sort();
        let mut model = s.clone();
        let mut model_drops = 0;
        for &(to, src) in &outbox.keys {
            let msg = outbox.view(src, &results, 2).unwrap().to_message();
            model.push_message(to, msg, &mut model_drops);
        }
        let mut bulk_drops = 0;
        s.deliver(outbox, &results, 2, &mut bulk_drops);
        proptest::prop_assert_eq!(bulk_drops, model_drops);
        proptest::prop_assert_eq!(&s.counters, &model.counters);
        for id in 1..=3 {
            proptest::prop_assert_eq!(
                s.mailboxes.get(&id).map(|b| b.to_vec()),
                model.mailboxes.get(&id).map(|b| b.to_vec()),
                "mailbox {}", id
            );
        }
    }
}
