//! The full-screen view (ratatui over crossterm).  Keys: `q`/`Esc` quit,
//! `↑`/`↓`/`PgUp`/`PgDn`/`Home`/`End` scroll the agents, `f` shows only
//! agents that are not live.  The tick rate is measured here, from the
//! ticks seen between refreshes (the viewer's own clock, never the run's).

use lockstep_common::live::{AgentRow, FlowTarget, LiveState};
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use shm_protocol::board::BoardReader;
use std::path::Path;
use std::time::{Duration, Instant};

/// What the view shows.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// The last state read, with its board generation.
    pub state: Option<(LiveState, u64)>,
    /// The last read error (the previous state stays on screen).
    pub error: Option<String>,
    /// First agent row shown.
    pub scroll: usize,
    /// Only agents that are not live.
    pub only_not_live: bool,
    /// Ticks per second over the last refreshes.
    pub rate: Option<f64>,
    /// (when, tick) of the previous rate sample.
    sample: Option<(Instant, u64)>,
    /// The board file.
    pub path: String,
}

impl View {
    /// Takes a new read of the board.
    pub fn update(&mut self, read: Result<(LiveState, u64), String>, now: Instant) {
        match read {
            Ok((s, g)) => {
                if let Some((t0, tick0)) = self.sample {
                    let dt = now.duration_since(t0).as_secs_f64();
                    if dt >= 0.5 {
                        self.rate = Some(s.tick.saturating_sub(tick0) as f64 / dt);
                        self.sample = Some((now, s.tick));
                    }
                } else {
                    self.sample = Some((now, s.tick));
                }
                self.state = Some((s, g));
                self.error = None;
            }
            Err(e) => self.error = Some(e),
        }
    }

    fn rows(&self) -> Vec<&AgentRow> {
        self.state.as_ref().map_or_else(Vec::new, |(s, _)| {
            s.agents
                .iter()
                .filter(|a| !self.only_not_live || a.status != "live")
                .collect()
        })
    }

    fn scroll_by(&mut self, delta: isize) {
        let n = self.rows().len();
        let max = n.saturating_sub(1);
        self.scroll = self.scroll.saturating_add_signed(delta).min(max);
    }
}

/// Draws the whole view.
pub(crate) fn draw(frame: &mut Frame, view: &View) {
    let [head, stats, children, agents, logs] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(6),
        Constraint::Length(
            view.state
                .as_ref()
                .map_or(3, |(s, _)| s.children.len().min(8) as u16 + 3),
        ),
        Constraint::Min(5),
        Constraint::Length(8),
    ])
    .areas(frame.area());
    let Some((s, generation)) = &view.state else {
        let msg = view
            .error
            .clone()
            .unwrap_or_else(|| "waiting for the supervisor's first state…".into());
        frame.render_widget(
            Paragraph::new(format!("lockstep-ui {}: {msg}", view.path)),
            frame.area(),
        );
        return;
    };
    let rate = view
        .rate
        .map_or_else(|| "…".to_owned(), |r| format!("{r:.0}"));
    let mut title = format!(
        " lockstep · {} · tick {} · {} ticks/s · board generation {generation} · q quits, f filters ",
        s.phase, s.tick, rate
    );
    if let Some(e) = &view.error {
        title.push_str(&format!("· read error: {e} "));
    }
    frame.render_widget(
        Paragraph::new(title).style(Style::new().add_modifier(Modifier::REVERSED)),
        head,
    );
    let st = &s.stats;
    let stats_text = vec![
        Line::from(format!(
            "agents {} live / {} total   faults {}   restarts {}   worker recoveries {}",
            st.live, st.total, st.faults, st.restarts, st.recoveries
        )),
        Line::from(format!(
            "steps {}   fuel {}   messages {} (dropped {}, queued {})   tasks open {}",
            st.steps, st.fuel, st.messages, st.dropped, st.queued, st.tasks_open
        )),
        Line::from(format!(
            "inference: {} in flight   waited {} µs in {} recent ticks   host busy {:.1} %",
            st.infer_pending,
            st.infer_wait_us,
            st.infer_waited_ticks,
            st.infer_busy_permille as f64 / 10.0
        )),
        Line::from(flow_line(s)),
    ];
    frame.render_widget(
        Paragraph::new(stats_text).block(Block::bordered().title(format!(
            " run · tick p50 {} µs · p99 {} µs ",
            st.tick_p50_us, st.tick_p99_us
        ))),
        stats,
    );
    frame.render_widget(children_table(s), children);
    frame.render_widget(agent_table(view, agents), agents);
    let lines: Vec<Line> = s
        .log
        .iter()
        .rev()
        .take(logs.height.saturating_sub(2) as usize)
        .rev()
        .map(|l| Line::from(l.as_str()))
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" recent agent logs ")),
        logs,
    );
}

/// The heaviest message edges, as far as a line holds them.
pub(crate) fn flow_line(s: &LiveState) -> String {
    let f = &s.flow;
    if f.window_ticks == 0 {
        return "message flow: not published".into();
    }
    let mut line = format!(
        "flow, last {} ticks: {} messages on {} edges",
        f.window_ticks, f.messages, f.distinct
    );
    for (i, e) in f.edges.iter().take(4).enumerate() {
        let to = match &e.to {
            FlowTarget::Agent(id) => format!("{id}"),
            FlowTarget::Topic(t) => format!("topic {t}"),
            FlowTarget::Channel(c) => format!("channel {c}"),
        };
        line.push_str(if i == 0 { ": " } else { ", " });
        line.push_str(&format!("{} → {to} ×{}", e.from, e.count));
    }
    line
}

fn children_table(s: &LiveState) -> Table<'_> {
    let rows = s.children.iter().map(|c| {
        Row::new(vec![
            c.name.clone(),
            c.role.clone(),
            c.pid.to_string(),
            c.state.clone(),
        ])
    });
    Table::new(
        rows,
        [
            Constraint::Length(16),
            Constraint::Length(15),
            Constraint::Length(8),
            Constraint::Min(10),
        ],
    )
    .header(Row::new(vec!["child", "role", "pid", "state"]).style(Style::new().bold()))
    .block(Block::bordered().title(" processes "))
}

fn agent_table<'a>(view: &'a View, area: Rect) -> Table<'a> {
    let rows = view.rows();
    let total = view.state.as_ref().map_or(0, |(s, _)| s.stats.total);
    let visible = area.height.saturating_sub(3) as usize;
    let shown = rows.iter().skip(view.scroll).take(visible).map(|a| {
        let style = match a.status.as_str() {
            "live" => Style::new(),
            "pending" => Style::new().fg(Color::Yellow),
            _ => Style::new().fg(Color::Red),
        };
        Row::new(vec![
            a.id.to_string(),
            a.name.clone(),
            a.tenant.to_string(),
            a.queued.to_string(),
            a.status.clone(),
        ])
        .style(style)
    });
    Table::new(
        shown,
        [
            Constraint::Length(7),
            Constraint::Length(24),
            Constraint::Length(6),
            Constraint::Length(7),
            Constraint::Min(10),
        ],
    )
    .header(Row::new(vec!["id", "agent", "tenant", "queued", "status"]).style(Style::new().bold()))
    .block(Block::bordered().title(format!(
        " agents {}–{} of {} shown ({} in the state, {} in the run){} ",
        (view.scroll + 1).min(rows.len()),
        (view.scroll + visible).min(rows.len()),
        rows.len(),
        view.state.as_ref().map_or(0, |(s, _)| s.agents.len()),
        total,
        if view.only_not_live {
            " · not live only"
        } else {
            ""
        }
    )))
}

/// Runs the full-screen view until `q`, `Esc` or Ctrl-C.
pub(crate) fn run(reader: &BoardReader, path: &Path, interval: Duration) -> std::io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let mut view = View {
        path: path.display().to_string(),
        ..View::default()
    };
    let result = (|| -> std::io::Result<()> {
        let mut next = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next {
                view.update(crate::read_state(reader), now);
                next = now + interval;
            }
            terminal.draw(|f| draw(f, &view))?;
            if event::poll(next.saturating_duration_since(Instant::now()))?
                && let Event::Key(k) = event::read()?
                && k.kind == KeyEventKind::Press
            {
                let page = terminal.size()?.height.saturating_sub(20).max(1) as isize;
                match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c')
                        if k.modifiers
                            .contains(ratatui::crossterm::event::KeyModifiers::CONTROL) =>
                    {
                        return Ok(());
                    }
                    KeyCode::Char('f') => {
                        view.only_not_live = !view.only_not_live;
                        view.scroll = 0;
                    }
                    KeyCode::Down | KeyCode::Char('j') => view.scroll_by(1),
                    KeyCode::Up | KeyCode::Char('k') => view.scroll_by(-1),
                    KeyCode::PageDown => view.scroll_by(page),
                    KeyCode::PageUp => view.scroll_by(-page),
                    KeyCode::Home => view.scroll = 0,
                    KeyCode::End => view.scroll_by(isize::MAX),
                    _ => {}
                }
            }
        }
    })();
    ratatui::try_restore()?;
    result
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use lockstep_common::live::{ChildStatus, Flow, FlowEdge, LIVE_STATE_VERSION, RunStats};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    /// A state with `n` agents, agent 3 faulted.
    pub(crate) fn sample(n: u64) -> LiveState {
        LiveState {
            version: LIVE_STATE_VERSION,
            phase: "running".into(),
            tick: 42,
            children: vec![ChildStatus {
                name: "worker-0".into(),
                role: "worker".into(),
                pid: 1234,
                state: "ready".into(),
                last_rtt_ns: 0,
            }],
            log: vec!["hello from agent 1".into()],
            stats: RunStats {
                live: n - 1,
                total: n,
                steps: 100,
                ..RunStats::default()
            },
            agents: (1..=n)
                .map(|id| AgentRow {
                    id,
                    name: format!("sensor-{id}"),
                    tenant: 0,
                    status: if id == 3 {
                        "faulted: trap".into()
                    } else {
                        "live".into()
                    },
                    queued: id,
                })
                .collect(),
            flow: Flow {
                window_ticks: 64,
                distinct: 2,
                messages: 12,
                edges: vec![
                    FlowEdge {
                        from: 1,
                        to: FlowTarget::Topic("readings".into()),
                        count: 9,
                    },
                    FlowEdge {
                        from: 2,
                        to: FlowTarget::Agent(1),
                        count: 3,
                    },
                ],
            },
        }
    }

    fn screen(view: &View) -> String {
        let mut t = Terminal::new(TestBackend::new(110, 40)).unwrap();
        t.draw(|f| draw(f, view)).unwrap();
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn draws_counters_processes_agents_and_logs() {
        let mut v = View::default();
        v.update(Ok((sample(30), 9)), Instant::now());
        let s = screen(&v);
        assert!(s.contains("tick 42"), "{s}");
        assert!(s.contains("agents 29 live / 30 total"), "{s}");
        assert!(s.contains("worker-0"), "{s}");
        assert!(s.contains("sensor-3"), "{s}");
        assert!(s.contains("faulted: trap"), "{s}");
        assert!(s.contains("hello from agent 1"), "{s}");
        assert!(
            s.contains("12 messages on 2 edges: 1 → topic readings ×9, 2 → 1 ×3"),
            "{s}"
        );
    }

    #[test]
    fn filter_scroll_rate_and_errors() {
        let t0 = Instant::now();
        let mut v = View::default();
        v.update(Ok((sample(30), 1)), t0);
        v.only_not_live = true;
        let s = screen(&v);
        assert!(s.contains("sensor-3") && !s.contains("sensor-4 "), "{s}");
        v.only_not_live = false;
        v.scroll_by(10);
        let s = screen(&v);
        assert!(s.contains("sensor-11") && !s.contains("sensor-10 "), "{s}");
        v.scroll_by(isize::MAX);
        assert_eq!(v.scroll, 29);
        let mut later = sample(30);
        later.tick = 542;
        v.update(Ok((later, 2)), t0 + Duration::from_secs(1));
        assert_eq!(v.rate, Some(500.0));
        v.update(Err("torn".into()), t0 + Duration::from_secs(2));
        let s = screen(&v);
        assert!(
            s.contains("tick 542") && s.contains("read error: torn"),
            "{s}"
        );
        assert!(screen(&View::default()).contains("waiting for the supervisor"));
    }
}
