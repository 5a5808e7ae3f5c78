//! What differs between two snapshots of the same run: the report `verify`
//! gives after a divergence.

use crate::snapshot::SnapshotBody;
use std::collections::BTreeMap;
use std::fmt;

/// How one agent differs between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AgentDiff {
    /// The agent.
    pub agent: u64,
    /// Its name.
    pub name: String,
    /// Byte ranges of linear memory that differ (chunk granularity).
    pub memory: Vec<(u64, u64)>,
    /// Whether the memory sizes differ.
    pub memory_size: Option<(u64, u64)>,
    /// Whether globals differ.
    pub globals: bool,
    /// Whether host counters differ.
    pub host: bool,
    /// Whether its module differs.
    pub module: bool,
    /// Present in only one snapshot.
    pub presence: Option<&'static str>,
    /// Its mailbox differs.
    pub mailbox: bool,
    /// Its status differs.
    pub status: bool,
}

/// Where and how a replay left the recorded run.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Divergence {
    /// First tick whose hash differed (if found by tick hashes).
    pub first_tick: Option<u64>,
    /// Tick of the state comparison.
    pub compared_at: u64,
    /// Agents whose state differs.
    pub agents: Vec<AgentDiff>,
    /// Scheduler-level differences (task table, memberships, counters…).
    pub scheduler: Vec<String>,
    /// The first inference answer recorded on another device that the
    /// re-execution could not confirm (not equal within its model's
    /// tolerance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<crate::inference::tolerance::AnswerDivergence>,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.first_tick {
            Some(t) => writeln!(
                f,
                "diverged: first divergent tick {t}; state compared after tick {}",
                self.compared_at
            )?,
            None => writeln!(f, "diverged: state after tick {} differs", self.compared_at)?,
        }
        if let Some(a) = &self.answer {
            writeln!(f, "  {a}")?;
        }
        for a in &self.agents {
            write!(f, "  agent {} ({}):", a.agent, a.name)?;
            if let Some(p) = a.presence {
                write!(f, " {p}")?;
            }
            if let Some((x, y)) = a.memory_size {
                write!(f, " memory size {x} vs {y};")?;
            }
            if !a.memory.is_empty() {
                let ranges: Vec<String> = a
                    .memory
                    .iter()
                    .map(|(s, e)| format!("{s:#x}..{e:#x}"))
                    .collect();
                write!(f, " memory {}", ranges.join(", "))?;
            }
            if a.globals {
                write!(f, " globals;")?;
            }
            if a.host {
                write!(f, " host counters;")?;
            }
            if a.module {
                write!(f, " module;")?;
            }
            if a.mailbox {
                write!(f, " mailbox;")?;
            }
            if a.status {
                write!(f, " status;")?;
            }
            writeln!(f)?;
        }
        for s in &self.scheduler {
            writeln!(f, "  scheduler: {s}")?;
        }
        Ok(())
    }
}

/// Compares a recorded snapshot with a replayed one.
pub fn diff(recorded: &SnapshotBody, replayed: &SnapshotBody) -> Divergence {
    let mut d = Divergence {
        compared_at: replayed.tick,
        ..Divergence::default()
    };
    let a: BTreeMap<u64, &shm_protocol::worker::AgentImage> =
        recorded.agents.iter().map(|(i, m)| (*i, m)).collect();
    let b: BTreeMap<u64, &shm_protocol::worker::AgentImage> =
        replayed.agents.iter().map(|(i, m)| (*i, m)).collect();
    let (rs, ps) = (&recorded.scheduler, &replayed.scheduler);
    let mut ids: Vec<u64> = a.keys().chain(b.keys()).copied().collect();
    ids.extend(rs.agents.keys());
    ids.extend(ps.agents.keys());
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let name = rs
            .agents
            .get(&id)
            .or_else(|| ps.agents.get(&id))
            .map_or_else(String::new, |r| r.name.clone());
        let mut ad = AgentDiff {
            agent: id,
            name,
            memory: Vec::new(),
            memory_size: None,
            globals: false,
            host: false,
            module: false,
            presence: None,
            mailbox: rs.mailboxes.get(&id) != ps.mailboxes.get(&id),
            status: rs.agents.get(&id).map(|r| &r.status) != ps.agents.get(&id).map(|r| &r.status),
        };
        match (a.get(&id), b.get(&id)) {
            (Some(x), Some(y)) => {
                if x.memory_len != y.memory_len {
                    ad.memory_size = Some((x.memory_len, y.memory_len));
                }
                let chunk = shm_protocol::worker::CHUNK as u64;
                let mut run: Option<(u64, u64)> = None;
                for (i, (p, q)) in x.chunks.iter().zip(y.chunks.iter()).enumerate() {
                    let i = i as u64;
                    if p != q {
                        run = match run {
                            Some((s, e)) if e == i * chunk => Some((s, (i + 1) * chunk)),
                            Some(r) => {
                                ad.memory.push(r);
                                Some((i * chunk, (i + 1) * chunk))
                            }
                            None => Some((i * chunk, (i + 1) * chunk)),
                        };
                    }
                }
                if let Some(r) = run {
                    ad.memory.push(r);
                }
                ad.globals = x.globals != y.globals;
                ad.host = x.host != y.host;
                ad.module = x.module_hash != y.module_hash;
            }
            (Some(_), None) => ad.presence = Some("only in the recorded run"),
            (None, Some(_)) => ad.presence = Some("only in the replay"),
            (None, None) => {}
        }
        let differs = !ad.memory.is_empty()
            || ad.memory_size.is_some()
            || ad.globals
            || ad.host
            || ad.module
            || ad.presence.is_some()
            || ad.mailbox
            || ad.status;
        if differs {
            d.agents.push(ad);
        }
    }
    let checks: [(&str, bool); 7] = [
        ("task table", rs.tasks != ps.tasks),
        ("topic subscriptions", rs.topics != ps.topics),
        ("channel memberships", rs.channels != ps.channels),
        ("tenant usage and quotas", rs.usage != ps.usage),
        ("counters", rs.counters != ps.counters),
        ("tick hash chain", rs.hash != ps.hash),
        (
            "pending inference requests",
            rs.infer_queue != ps.infer_queue || rs.infer_pending != ps.infer_pending,
        ),
    ];
    for (what, differs) in checks {
        if differs {
            d.scheduler.push(format!("{what} differ"));
        }
    }
    if d.agents.is_empty() && d.scheduler.is_empty() && recorded.state_hash != replayed.state_hash {
        d.scheduler
            .push("other state differs (models or modules)".into());
    }
    d
}
