//! The dashboard's state feed: one sampler thread reads the state board
//! (read-only mapping) and turns each new publication into a JSON event that
//! every HTTP client shares, plus bounded histories for the plots and the
//! agent detail.
//!
//! Nothing here writes to the run: the board is read through
//! [`BoardReader`] and the run directory only through plain reads
//! ([`crate::timeline`], `meta.json`, the `snapshots/` listing).

use crate::timeline::Timeline;
use lockstep_common::live::{AgentRow, LiveState};
use serde::Serialize;
use shm_protocol::board::BoardReader;
use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Run-wide samples kept for the plots (at one per event: minutes).
pub const HISTORY: usize = 1800;
/// Samples kept per agent.
pub const AGENT_HISTORY: usize = 300;
/// Status changes kept per agent.
pub const AGENT_STATUS_CHANGES: usize = 32;
/// Log lines kept (the board carries only its newest 64).
pub const LOG_LINES: usize = 2000;
/// Agents with a history at most (when full, the histories of agents no
/// longer on the board make room).
pub const MAX_TRACKED_AGENTS: usize = 1024;
/// How often the board is polled for a new generation.
pub const POLL: Duration = Duration::from_millis(10);

/// Milliseconds since the epoch (the viewer's clock).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One run-wide sample (short keys: the history is sent whole).
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Viewer wall time, ms since the epoch.
    pub t: u64,
    /// Tick.
    pub tick: u64,
    /// Cumulative steps.
    pub steps: u64,
    /// Cumulative messages delivered.
    pub msgs: u64,
    /// Cumulative messages dropped.
    pub dropped: u64,
    /// Messages waiting in mailboxes.
    pub queued: u64,
    /// Cumulative agent faults.
    pub faults: u64,
    /// Cumulative agent restarts.
    pub restarts: u64,
    /// Cumulative worker recoveries.
    pub recoveries: u64,
    /// Tick wall time p50, µs.
    pub p50: u64,
    /// Tick wall time p99, µs.
    pub p99: u64,
    /// Inference requests in flight.
    pub inf: u64,
    /// Inference wait over the recent ticks, µs.
    pub infw: u64,
    /// Live agents.
    pub live: u64,
    /// Each child's last ping round trip, ns (in `children` order).
    pub rtt: Vec<u64>,
}

impl Sample {
    fn of(s: &LiveState, t: u64) -> Self {
        let st = &s.stats;
        Self {
            t,
            tick: s.tick,
            steps: st.steps,
            msgs: st.messages,
            dropped: st.dropped,
            queued: st.queued,
            faults: st.faults,
            restarts: st.restarts,
            recoveries: st.recoveries,
            p50: st.tick_p50_us,
            p99: st.tick_p99_us,
            inf: st.infer_pending,
            infw: st.infer_wait_us,
            live: st.live,
            rtt: s.children.iter().map(|c| c.last_rtt_ns).collect(),
        }
    }
}

/// One agent's history.
#[derive(Debug, Default, Clone, Serialize)]
pub struct AgentHistory {
    /// (tick, viewer ms, messages queued).
    pub points: VecDeque<(u64, u64, u64)>,
    /// (tick, new status), oldest first.
    pub statuses: VecDeque<(u64, String)>,
}

/// The run's static facts: `meta.json` and the directory layout.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Meta {
    /// The run directory (None: a bare board file was given).
    pub run_dir: Option<String>,
    /// The board file.
    pub board: String,
    /// `meta.json` as written by the supervisor (seed, workers, …), if any.
    pub meta: Option<serde_json::Value>,
}

/// Everything the sampler maintains.
#[derive(Debug, Default)]
pub struct Inner {
    /// Events published so far.
    pub seq: u64,
    /// The latest event, JSON (shared by every client).
    pub latest: Option<Arc<str>>,
    /// When `latest` was built (for the latency bench's server side).
    pub latest_at: Option<Instant>,
    /// The latest state.
    pub state: Option<LiveState>,
    /// Why the board cannot be read now, if so.
    pub error: Option<String>,
    /// Run-wide samples.
    pub history: VecDeque<Sample>,
    /// Child names of the samples' `rtt` (latest).
    pub children: Vec<String>,
    /// Per-agent histories.
    pub agents: HashMap<u64, AgentHistory>,
    /// Recent log lines, oldest first, with the tick they were first seen at.
    pub log: VecDeque<(u64, String)>,
    /// Journal-like events from the run directory and the board.
    pub timeline: Timeline,
    /// Static facts.
    pub meta: Meta,
}

/// The shared feed.
#[derive(Debug, Default)]
pub struct Feed {
    inner: Mutex<Inner>,
    changed: Condvar,
}

/// The JSON of one event.
#[derive(Serialize)]
struct Event<'a> {
    seq: u64,
    generation: u64,
    now_ms: u64,
    /// Seconds since the supervisor created the board.
    uptime_s: f64,
    /// Ticks per second over the last second or so (viewer clock).
    rate: Option<f64>,
    writer_pid: u32,
    error: Option<&'a str>,
    state: &'a LiveState,
}

/// The JSON of a read error (the last state stays on the page).
#[derive(Serialize)]
struct ErrorEvent<'a> {
    seq: u64,
    now_ms: u64,
    error: &'a str,
}

impl Feed {
    /// Locks the state (a poisoned lock still holds consistent data: every
    /// writer replaces whole values).
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until an event newer than `seen` exists or `timeout` passes;
    /// returns the newest event and its number.
    pub fn wait_newer(&self, seen: u64, timeout: Duration) -> Option<(u64, Arc<str>)> {
        let guard = self.lock();
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |i| i.seq <= seen || i.latest.is_none())
            .unwrap_or_else(|e| e.into_inner());
        if guard.seq > seen {
            guard.latest.clone().map(|e| (guard.seq, e))
        } else {
            None
        }
    }

    fn publish(&self, f: impl FnOnce(&mut Inner) -> Option<String>) {
        let mut g = self.lock();
        if let Some(json) = f(&mut g) {
            g.latest = Some(json.into());
            g.latest_at = Some(Instant::now());
            drop(g);
            self.changed.notify_all();
        }
    }
}

/// What the sampler needs.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// A run directory or a state board file.  A path that does not exist
    /// yet (a run about to start) is looked at again until it does.
    pub target: PathBuf,
    /// Least time between two events (publications in between are merged).
    pub min_gap: Duration,
}

/// The board file and the run directory (if any) that `target` names now.
fn resolve(target: &Path) -> (PathBuf, Option<PathBuf>) {
    if target.is_dir() {
        (target.join("state.board"), Some(target.to_path_buf()))
    } else {
        (target.to_path_buf(), None)
    }
}

/// Records what `target` resolves to (once it is a run directory, for good).
fn settle(feed: &Feed, target: &Path, run_dir: &mut Option<PathBuf>) -> PathBuf {
    let (board, dir) = resolve(target);
    if run_dir.is_none()
        && let Some(d) = dir
    {
        let mut g = feed.lock();
        g.meta = Meta {
            run_dir: Some(d.display().to_string()),
            board: board.display().to_string(),
            meta: read_meta(&d),
        };
        g.timeline = Timeline::new(&d);
        *run_dir = Some(d);
    } else if run_dir.is_none() {
        feed.lock().meta.board = board.display().to_string();
    }
    board
}

/// Reads `meta.json` of `dir`, if any.
fn read_meta(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read(dir.join("meta.json")).ok()?;
    if text.len() > 1 << 20 {
        return None;
    }
    serde_json::from_slice(&text).ok()
}

/// Starts the sampler thread.
pub fn start(cfg: SamplerConfig) -> Arc<Feed> {
    let feed = Arc::new(Feed::default());
    let f = Arc::clone(&feed);
    std::thread::Builder::new()
        .name("board-sampler".into())
        .spawn(move || sampler(&f, &cfg))
        .expect("spawn the board sampler");
    feed
}

fn sampler(feed: &Feed, cfg: &SamplerConfig) {
    let mut run_dir: Option<PathBuf> = None;
    settle(feed, &cfg.target, &mut run_dir);
    let mut reader: Option<BoardReader> = None;
    let mut last_gen = 0u64;
    let mut last_emit: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    let mut rate_base: Option<(Instant, u64)> = None;
    let mut rate: Option<f64> = None;
    let mut last_scan: Option<Instant> = None;
    // The board file opened (path, inode): a new run in the same directory
    // writes a new file, which is opened afresh.
    let mut opened: Option<(PathBuf, u64)> = None;
    loop {
        if last_scan.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            last_scan = Some(Instant::now());
            if let Some((path, ino)) = &opened
                && std::fs::metadata(path).is_ok_and(|m| m.ino() != *ino)
            {
                reader = None;
                last_gen = 0;
                feed.lock().meta.meta = run_dir.as_deref().and_then(read_meta);
            }
            if run_dir.is_some() {
                let mut timeline = std::mem::take(&mut feed.lock().timeline);
                timeline.scan();
                let mut g = feed.lock();
                g.timeline = timeline;
                if g.meta.meta.is_none() {
                    g.meta.meta = run_dir.as_deref().and_then(read_meta);
                }
            }
        }
        if reader.is_none() {
            let board = settle(feed, &cfg.target, &mut run_dir);
            let ino = std::fs::metadata(&board).map(|m| m.ino());
            match BoardReader::open(&board) {
                Ok(r) => {
                    reader = Some(r);
                    opened = ino.ok().map(|i| (board, i));
                }
                Err(e) => {
                    report_error(feed, &mut last_error, e.to_string());
                    std::thread::sleep(Duration::from_millis(250));
                    continue;
                }
            }
        }
        let Some(r) = reader.as_ref() else { continue };
        let due = last_emit.is_none_or(|t| t.elapsed() >= cfg.min_gap);
        if due {
            match crate::read_state(r) {
                Ok((state, generation)) if generation != last_gen => {
                    last_gen = generation;
                    let now = Instant::now();
                    match rate_base {
                        Some((t0, tick0)) if now.duration_since(t0) >= Duration::from_secs(1) => {
                            let dt = now.duration_since(t0).as_secs_f64();
                            rate = Some(state.tick.saturating_sub(tick0) as f64 / dt);
                            rate_base = Some((now, state.tick));
                        }
                        None => rate_base = Some((now, state.tick)),
                        _ => {}
                    }
                    let uptime_s = {
                        let start = r.writer_start_ns();
                        let now_ns = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_nanos() as u64);
                        now_ns.saturating_sub(start) as f64 / 1e9
                    };
                    let pid = r.writer_pid();
                    last_error = None;
                    last_emit = Some(now);
                    feed.publish(|g| {
                        absorb(g, &state);
                        g.seq += 1;
                        g.error = None;
                        let json = serde_json::to_string(&Event {
                            seq: g.seq,
                            generation,
                            now_ms: now_ms(),
                            uptime_s,
                            rate,
                            writer_pid: pid,
                            error: None,
                            state: &state,
                        })
                        .ok();
                        g.state = Some(state);
                        json
                    });
                }
                Ok(_) => {}
                Err(e) if e.contains("no state published yet") => {}
                Err(e) => {
                    // A new board (a restarted run) is opened afresh.
                    reader = None;
                    report_error(feed, &mut last_error, e);
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

fn report_error(feed: &Feed, last: &mut Option<String>, e: String) {
    if last.as_deref() == Some(e.as_str()) {
        return;
    }
    *last = Some(e.clone());
    feed.publish(|g| {
        g.seq += 1;
        let json = serde_json::to_string(&ErrorEvent {
            seq: g.seq,
            now_ms: now_ms(),
            error: &e,
        })
        .ok();
        g.error = Some(e);
        json
    });
}

/// Folds a new state into the histories.
pub fn absorb(g: &mut Inner, s: &LiveState) {
    let t = now_ms();
    if g.history.len() == HISTORY {
        g.history.pop_front();
    }
    g.history.push_back(Sample::of(s, t));
    g.children = s.children.iter().map(|c| c.name.clone()).collect();
    let prev = g.state.take();
    let unseen = s
        .agents
        .iter()
        .filter(|a| !g.agents.contains_key(&a.id))
        .count();
    if g.agents.len() + unseen > MAX_TRACKED_AGENTS {
        let on_board: std::collections::HashSet<u64> = s.agents.iter().map(|a| a.id).collect();
        g.agents.retain(|id, _| on_board.contains(id));
    }
    for a in &s.agents {
        if g.agents.len() >= MAX_TRACKED_AGENTS && !g.agents.contains_key(&a.id) {
            continue;
        }
        let h = g.agents.entry(a.id).or_default();
        if h.points.len() == AGENT_HISTORY {
            h.points.pop_front();
        }
        h.points.push_back((s.tick, t, a.queued));
        if h.statuses.back().is_none_or(|(_, st)| *st != a.status) {
            if h.statuses.len() == AGENT_STATUS_CHANGES {
                h.statuses.pop_front();
            }
            if !h.statuses.is_empty() {
                g.timeline
                    .board_event(s.tick, &status_kind(&a.status), agent_text(a));
            }
            h.statuses.push_back((s.tick, a.status.clone()));
        }
    }
    if let Some(p) = &prev {
        if s.stats.restarts > p.stats.restarts {
            g.timeline.board_event(
                s.tick,
                "restart",
                format!(
                    "{} agent restart(s) (total {})",
                    s.stats.restarts - p.stats.restarts,
                    s.stats.restarts
                ),
            );
        }
        if s.stats.recoveries > p.stats.recoveries {
            g.timeline.board_event(
                s.tick,
                "recovery",
                format!("worker recovered (total {})", s.stats.recoveries),
            );
        }
    }
    let fresh = new_lines(prev.as_ref().map_or(&[][..], |p| &p.log[..]), &s.log);
    for line in fresh {
        if g.log.len() == LOG_LINES {
            g.log.pop_front();
        }
        g.log.push_back((s.tick, line.clone()));
    }
    g.state = prev;
}

fn status_kind(status: &str) -> String {
    if status.starts_with("faulted") {
        "fault".into()
    } else if status.starts_with("stopped") {
        "stop".into()
    } else if status == "live" {
        "live".into()
    } else {
        "status".into()
    }
}

fn agent_text(a: &AgentRow) -> String {
    format!("agent {} {}: {}", a.id, a.name, a.status)
}

/// The lines of `new` that follow what `old` already showed (both are
/// sliding windows over one log, newest last).
pub fn new_lines<'a>(old: &[String], new: &'a [String]) -> &'a [String] {
    // The longest suffix of `old` that is a prefix of `new`.
    let max = old.len().min(new.len());
    for k in (1..=max).rev() {
        if old[old.len() - k..] == new[..k] {
            return &new[k..];
        }
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_string()).collect()
    }

    #[test]
    fn new_lines_follow_the_overlap() {
        assert_eq!(
            new_lines(&v(&["a", "b", "c"]), &v(&["b", "c", "d"])),
            v(&["d"])
        );
        assert_eq!(
            new_lines(&v(&["a", "b"]), &v(&["a", "b"])),
            Vec::<String>::new()
        );
        assert_eq!(new_lines(&[], &v(&["x"])), v(&["x"]));
        assert_eq!(new_lines(&v(&["a"]), &v(&["x", "y"])), v(&["x", "y"]));
    }

    #[test]
    fn absorb_keeps_bounded_histories_and_status_changes() {
        let mut g = Inner::default();
        let mut s = crate::tui::tests::sample(3);
        for tick in 0..(HISTORY as u64 + 10) {
            s.tick = tick;
            absorb(&mut g, &s);
            g.state = Some(s.clone());
        }
        assert_eq!(g.history.len(), HISTORY);
        assert_eq!(g.history.back().map(|x| x.tick), Some(HISTORY as u64 + 9));
        let h = &g.agents[&1];
        assert_eq!(h.points.len(), AGENT_HISTORY);
        assert_eq!(h.statuses.len(), 1);
        s.agents[0].status = "faulted: trap".into();
        absorb(&mut g, &s);
        assert_eq!(g.agents[&s.agents[0].id].statuses.len(), 2);
        assert!(
            g.timeline
                .events()
                .iter()
                .any(|e| e.kind == "fault" && e.text.contains("faulted: trap"))
        );
    }

    #[test]
    fn agent_histories_stay_bounded_as_agents_come_and_go() {
        let mut g = Inner::default();
        let mut s = crate::tui::tests::sample(3);
        let row = s.agents[0].clone();
        for round in 0..5u64 {
            s.agents = (0..600)
                .map(|i| AgentRow {
                    id: round * 600 + i,
                    ..row.clone()
                })
                .collect();
            absorb(&mut g, &s);
            g.state = Some(s.clone());
            assert!(g.agents.len() <= MAX_TRACKED_AGENTS);
            // Every agent on the board has its history.
            assert!(s.agents.iter().all(|a| g.agents.contains_key(&a.id)));
        }
    }
}
