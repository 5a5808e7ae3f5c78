// Lockstep's read-only dashboard: reads the JSON endpoints and the event
// stream of `lockstep-ui --serve`, draws everything itself (canvas plots).
'use strict';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get('token');
const polling = params.has('poll');
const withToken = (p) => (token ? p + (p.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token) : p);

async function get(path) {
  const r = await fetch(withToken(path), { cache: 'no-store' });
  if (!r.ok) throw new Error(path + ': HTTP ' + r.status);
  return r.json();
}

const HISTORY = 1800;
let latest = null;      // the latest event
let meta = null;        // /api/meta
let samples = [];       // run-wide samples (as the server keeps them)
let childNames = [];
let logLines = [];
let timeline = null;
const sort = { k: 'id', dir: 1 };
let detail = null;      // { id, data }
let dirty = false;

// ---- formatting -----------------------------------------------------------
const nf = new Intl.NumberFormat('en-US');
const num = (n) => (n === undefined || n === null ? '–' : nf.format(n));
function dur(s) {
  if (!(s >= 0)) return '–';
  s = Math.floor(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return (h ? h + 'h ' : '') + (h || m ? m + 'm ' : '') + r + 's';
}
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function statusClass(st) {
  const w = (st || '').split(':')[0];
  return 'st-' + w;
}
function shq(s) {
  return /^[A-Za-z0-9_\/.,:=+-]+$/.test(s) ? s : "'" + s.replace(/'/g, "'\\''") + "'";
}

// ---- plots ------------------------------------------------------------------
const COLORS = ['#5fb3f9', '#ef6f6c', '#6cc788', '#e5b567', '#c792ea', '#89ddff', '#f78c6c', '#a3be8c'];
function plot(canvas, series, opts) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 400, h = canvas.clientHeight || 150;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const g = canvas.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const L = 52, R = 8, T = 16, B = 18;
  let x0 = Infinity, x1 = -Infinity, y1 = 0;
  for (const s of series) for (const [x, y] of s.data) {
    if (x < x0) x0 = x; if (x > x1) x1 = x; if (y > y1) y1 = y;
  }
  g.font = '10px system-ui, sans-serif';
  g.fillStyle = '#8a94a6';
  if (!isFinite(x0)) { g.fillText((opts && opts.empty) || 'no data yet', L, h / 2); return; }
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === 0) y1 = 1;
  y1 *= 1.08;
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (w - L - R);
  const Y = (y) => h - B - (y / y1) * (h - T - B);
  g.strokeStyle = '#2b3340'; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = (y1 * i) / 4, py = Math.round(Y(y)) + 0.5;
    g.beginPath(); g.moveTo(L, py); g.lineTo(w - R, py); g.stroke();
    g.fillText(short(y), 2, py + 3);
  }
  g.fillText(num(Math.round(x0)), L, h - 4);
  const xr = num(Math.round(x1)); g.fillText(xr, w - R - g.measureText(xr).width, h - 4);
  let lx = L + 4;
  series.forEach((s, i) => {
    const c = s.color || COLORS[i % COLORS.length];
    g.strokeStyle = c; g.lineWidth = 1.5; g.beginPath();
    s.data.forEach(([x, y], j) => (j ? g.lineTo(X(x), Y(y)) : g.moveTo(X(x), Y(y))));
    g.stroke();
    g.fillStyle = c; g.fillText(s.name, lx, 11); lx += g.measureText(s.name).width + 12;
  });
}
function short(v) {
  if (v >= 1e9) return (v / 1e9).toFixed(1) + 'G';
  if (v >= 1e6) return (v / 1e6).toFixed(1) + 'M';
  if (v >= 1e3) return (v / 1e3).toFixed(1) + 'k';
  return v >= 10 ? Math.round(v) + '' : v.toFixed(1);
}
// The message flow as a graph: agents on an outer ring (by id), topics and
// channels on an inner one; an edge's width grows with its count.
const FLOW_COLORS = { direct: '#5fb3f9', topic: '#e5b567', channel: '#6cc788' };
function flowTarget(to) {
  if (to.agent !== undefined) return { key: 'a' + to.agent, kind: 'direct', agent: to.agent, label: String(to.agent) };
  if (to.topic !== undefined) return { key: 't' + to.topic, kind: 'topic', label: '#' + to.topic };
  return { key: 'c' + to.channel, kind: 'channel', label: '~' + to.channel };
}
function agentName(id) {
  const a = latest && latest.state.agents.find((x) => x.id === id);
  return a ? a.name : '';
}
function flowGraph(canvas, edges) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 500, h = canvas.clientHeight || 320;
  canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  const g = canvas.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.font = '10px system-ui, sans-serif';
  g.fillStyle = '#8a94a6';
  if (!edges.length) { g.fillText('no messages in the window', 8, h / 2); return; }
  const agents = new Map(), hubs = new Map();
  const addAgent = (id) => { if (!agents.has(id)) agents.set(id, { label: String(id), kind: 'agent' }); };
  for (const e of edges) {
    addAgent(e.from);
    const t = flowTarget(e.to);
    if (t.agent !== undefined) addAgent(t.agent); else if (!hubs.has(t.key)) hubs.set(t.key, { label: t.label, kind: t.kind });
  }
  const cx = w / 2, cy = h / 2, R = Math.min(w, h) / 2 - 22, r = hubs.size > 1 ? R * 0.38 : 0;
  const ids = [...agents.keys()].sort((a, b) => a - b);
  ids.forEach((id, i) => {
    const a = (2 * Math.PI * i) / ids.length - Math.PI / 2;
    Object.assign(agents.get(id), { x: cx + R * Math.cos(a), y: cy + R * Math.sin(a), a });
  });
  [...hubs.keys()].sort().forEach((k, i) => {
    const a = (2 * Math.PI * i) / hubs.size - Math.PI / 2;
    Object.assign(hubs.get(k), { x: cx + r * Math.cos(a), y: cy + r * Math.sin(a), a });
  });
  const max = Math.max(...edges.map((e) => e.count));
  const width = (c) => 0.8 + (5 * Math.log1p(c)) / Math.log1p(max);
  for (const e of edges) {
    const s = agents.get(e.from), t0 = flowTarget(e.to);
    const t = t0.agent !== undefined ? agents.get(t0.agent) : hubs.get(t0.key);
    g.strokeStyle = FLOW_COLORS[t0.kind]; g.globalAlpha = 0.75; g.lineWidth = width(e.count);
    g.beginPath();
    if (s === t) {
      g.arc(s.x + 9 * Math.cos(s.a), s.y + 9 * Math.sin(s.a), 8, 0, 2 * Math.PI);
    } else {
      // Bend each edge towards the centre, so that a → b and b → a differ.
      const mx = (s.x + t.x) / 2, my = (s.y + t.y) / 2, dx = t.x - s.x, dy = t.y - s.y;
      const qx = mx - dy * 0.15, qy = my + dx * 0.15;
      g.moveTo(s.x, s.y); g.quadraticCurveTo(qx, qy, t.x, t.y);
      // An arrow head at the receiver.
      const ang = Math.atan2(t.y - qy, t.x - qx), hx = t.x - 6 * Math.cos(ang), hy = t.y - 6 * Math.sin(ang);
      g.moveTo(hx - 5 * Math.cos(ang - 0.5), hy - 5 * Math.sin(ang - 0.5)); g.lineTo(hx, hy);
      g.lineTo(hx - 5 * Math.cos(ang + 0.5), hy - 5 * Math.sin(ang + 0.5));
    }
    g.stroke();
  }
  g.globalAlpha = 1;
  const dot = (n, color, size) => {
    g.fillStyle = color; g.beginPath(); g.arc(n.x, n.y, size, 0, 2 * Math.PI); g.fill();
  };
  const many = ids.length > 40;
  for (const id of ids) {
    const n = agents.get(id);
    dot(n, '#d8dee9', 3.5);
    if (!many || ids.length < 90) {
      g.fillStyle = '#8a94a6';
      const lx = n.x + 7 * Math.cos(n.a), ly = n.y + 7 * Math.sin(n.a) + 3;
      g.textAlign = Math.cos(n.a) < -0.2 ? 'right' : Math.cos(n.a) > 0.2 ? 'left' : 'center';
      g.fillText(many ? String(id) : id + ' ' + agentName(id).slice(0, 14), lx, ly);
    }
  }
  g.textAlign = 'center';
  for (const n of hubs.values()) {
    dot(n, FLOW_COLORS[n.kind], 5);
    const label = n.label.slice(0, 20), tw = g.measureText(label).width;
    g.fillStyle = 'rgba(17, 21, 28, 0.85)'; g.fillRect(n.x - tw / 2 - 3, n.y - 19, tw + 6, 14);
    g.fillStyle = FLOW_COLORS[n.kind]; g.fillText(label, n.x, n.y - 8);
  }
  g.textAlign = 'left';
}

// ---- samples ----------------------------------------------------------------
function sampleOf(ev) {
  const s = ev.state, st = s.stats;
  return { t: ev.now_ms, tick: s.tick, steps: st.steps, msgs: st.messages, dropped: st.dropped,
    queued: st.queued, faults: st.faults, restarts: st.restarts, recoveries: st.recoveries,
    p50: st.tick_p50_us, p99: st.tick_p99_us, inf: st.infer_pending, infw: st.infer_wait_us,
    live: st.live, rtt: s.children.map((c) => c.last_rtt_ns) };
}
function perTick(key) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i], dt = b.tick - a.tick;
    if (dt > 0 && b[key] >= a[key]) out.push([b.tick, (b[key] - a[key]) / dt]);
  }
  return out;
}
const line = (key, f) => samples.map((s) => [s.tick, f ? f(s[key]) : s[key]]);

// ---- rendering ----------------------------------------------------------------
function renderHeader() {
  const ev = latest;
  const conn = $('conn');
  if (!ev || !ev.state) return;
  const s = ev.state;
  $('phase').textContent = s.phase;
  $('tick').textContent = String(s.tick);
  $('rate').textContent = ev.rate === null || ev.rate === undefined ? '–' : num(Math.round(ev.rate));
  $('uptime').textContent = dur(ev.uptime_s);
  $('generation').textContent = num(ev.generation);
  if (s.phase === 'stopped') { conn.textContent = 'run stopped'; conn.className = 'badge'; }
}
function renderMeta() {
  if (!meta) return;
  const m = meta.meta || {};
  $('seed').textContent = m.seed === undefined ? '–' : String(m.seed);
  $('workers').textContent = m.workers === undefined ? '–' : String(m.workers);
  $('rundir').textContent = meta.run_dir || meta.board;
  const run = meta.run_dir || 'RUN';
  $('log-cmd').textContent = 'lockstep log ' + shq(run) + ' --kind input';
  if (!$('fork-into').value) $('fork-into').value = run.replace(/\/+$/, '') + '-fork';
  renderFork();
}
function renderCounters() {
  const s = latest.state.stats;
  const items = [
    ['agents live', num(s.live) + ' / ' + num(s.total)], ['steps', num(s.steps)], ['messages', num(s.messages)],
    ['dropped', num(s.dropped)], ['queued', num(s.queued)], ['faults', num(s.faults)],
    ['restarts', num(s.restarts)], ['worker recoveries', num(s.recoveries)], ['tasks open', num(s.tasks_open)],
    ['fuel', num(s.fuel)], ['tick p50', num(s.tick_p50_us) + ' µs'], ['tick p99', num(s.tick_p99_us) + ' µs'],
    ['inference in flight', num(s.infer_pending)],
    ['inference wait', num(s.infer_wait_us) + ' µs in ' + num(s.infer_waited_ticks) + ' ticks'],
    ['inference host busy', (s.infer_busy_permille / 10).toFixed(1) + ' %'],
  ];
  const grid = $('counter-grid');
  grid.replaceChildren(...items.map(([k, v]) => { const d = el('div'); d.append(el('span', k), el('b', v)); return d; }));
}
function renderPlots() {
  if (samples.length) {
    const a = samples[0], b = samples[samples.length - 1];
    $('plot-span').textContent = 'ticks ' + num(a.tick) + '–' + num(b.tick) + ' (' + dur((b.t - a.t) / 1000) + ')';
  }
  plot($('c-lat'), [{ name: 'p50', data: line('p50') }, { name: 'p99', data: line('p99') }]);
  plot($('c-work'), [{ name: 'steps/tick', data: perTick('steps') }, { name: 'messages/tick', data: perTick('msgs') }]);
  plot($('c-drop'), [{ name: 'dropped', data: line('dropped') }, { name: 'queued', data: line('queued') }]);
  plot($('c-faults'), [{ name: 'faults', data: line('faults') }, { name: 'restarts', data: line('restarts') },
    { name: 'recoveries', data: line('recoveries') }]);
  plot($('c-inf'), [{ name: 'in flight', data: line('inf') }, { name: 'wait ms', data: line('infw', (v) => v / 1000) }]);
  plot($('c-rtt'), childNames.map((n, i) => ({ name: n, data: samples.filter((s) => s.rtt && s.rtt.length > i).map((s) => [s.tick, s.rtt[i] / 1000]) })),
    { empty: 'no children' });
}
function renderChildren() {
  const body = $('children').tBodies[0];
  body.replaceChildren(...latest.state.children.map((c) => {
    const tr = el('tr');
    tr.append(el('td', c.name), el('td', c.role), el('td', String(c.pid)),
      el('td', (c.last_rtt_ns / 1000).toFixed(2) + ' µs'), el('td', c.state));
    return tr;
  }));
}
function agentRows() {
  const q = $('search').value.trim().toLowerCase();
  const st = $('f-state').value, tn = $('f-tenant').value;
  let rows = latest.state.agents.filter((a) => {
    if (q && !String(a.id).startsWith(q) && !a.name.toLowerCase().includes(q)) return false;
    if (st === 'not-live' ? a.status === 'live' : st && !a.status.startsWith(st)) return false;
    if (tn !== '' && String(a.tenant) !== tn) return false;
    return true;
  });
  const k = sort.k, d = sort.dir;
  rows.sort((a, b) => (a[k] < b[k] ? -d : a[k] > b[k] ? d : a.id - b.id));
  return rows;
}
function renderAgents() {
  const agents = latest.state.agents;
  const tenants = [...new Set(agents.map((a) => a.tenant))].sort((a, b) => a - b);
  const sel = $('f-tenant');
  if (sel.options.length - 1 !== tenants.length) {
    const cur = sel.value;
    sel.replaceChildren(el('option', 'every tenant'), ...tenants.map((t) => el('option', 'tenant ' + t)));
    sel.options[0].value = '';
    tenants.forEach((t, i) => (sel.options[i + 1].value = String(t)));
    sel.value = cur;
  }
  const rows = agentRows();
  $('agent-count').textContent = rows.length + ' shown of ' + agents.length + ' on the board (' + num(latest.state.stats.total) + ' in the run)';
  const body = $('agents').tBodies[0];
  body.replaceChildren(...rows.slice(0, 1000).map((a) => {
    const tr = el('tr');
    tr.dataset.id = a.id;
    if (detail && detail.id === a.id) tr.className = 'sel';
    tr.append(el('td', String(a.id)), el('td', a.name), el('td', String(a.tenant)),
      el('td', a.status, statusClass(a.status)), el('td', num(a.queued)));
    return tr;
  }));
  for (const th of $('agents').tHead.rows[0].cells) {
    th.className = th.dataset.k === sort.k ? (sort.dir > 0 ? 'asc' : 'desc') : '';
  }
}
function renderFlow() {
  const f = latest.state.flow || { window_ticks: 0, distinct: 0, messages: 0, edges: [] };
  $('flow-span').textContent = f.window_ticks
    ? 'last ' + f.window_ticks + ' ticks: ' + num(f.messages) + ' messages on ' + num(f.distinct) + ' edges' +
      (f.distinct > f.edges.length ? ' (the ' + f.edges.length + ' heaviest shown)' : '')
    : 'not published by this supervisor';
  flowGraph($('c-flow'), f.edges);
  $('flow-table').tBodies[0].replaceChildren(...f.edges.map((e) => {
    const t = flowTarget(e.to), tr = el('tr');
    tr.dataset.count = String(e.count);
    const name = agentName(e.from);
    const to = t.agent !== undefined ? t.agent + (agentName(t.agent) ? ' · ' + agentName(t.agent) : '') : t.label;
    tr.append(el('td', e.from + (name ? ' · ' + name : '')), el('td', t.kind, 'k-' + t.kind), el('td', to), el('td', num(e.count)));
    return tr;
  }));
}
function renderLog() {
  const pre = $('log');
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.textContent = logLines.slice(-300).map(([t, l]) => '[' + t + '] ' + l).join('\n');
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}
function render() {
  dirty = false;
  if (!latest || !latest.state) return;
  renderHeader(); renderCounters(); renderPlots(); renderChildren(); renderAgents(); renderFlow();
}
function schedule() {
  if (!dirty) { dirty = true; setTimeout(render, 250); }
}

// ---- agent detail ----------------------------------------------------------------
function hashAgent() {
  const m = /(?:^|[#&])agent=(\d+)/.exec(location.hash);
  return m ? Number(m[1]) : null;
}
async function loadDetail() {
  const id = hashAgent();
  const sec = $('agent-detail');
  if (id === null) { detail = null; sec.hidden = true; return; }
  sec.hidden = false;
  sec.dataset.agent = String(id);
  try {
    const d = await get('/api/agent/' + id);
    detail = { id, data: d };
    $('agent-missing').hidden = true;
    renderDetail();
  } catch (e) {
    detail = { id, data: null };
    $('agent-title').textContent = 'agent ' + id;
    $('agent-missing').textContent = 'agent ' + id + ' is not on the board (' + e.message + ')';
    $('agent-missing').hidden = false;
  }
}
function renderDetail() {
  const d = detail && detail.data;
  if (!d) return;
  const a = d.row;
  $('agent-title').textContent = 'agent ' + a.id + ' · ' + a.name;
  const h = d.history || { points: [], statuses: [] };
  const tel = d.telemetry || [];
  const last = tel.length ? tel[tel.length - 1] : null;
  const items = [['id', String(a.id)], ['name', a.name], ['tenant', String(a.tenant)], ['status', a.status],
    ['mailbox (queued)', num(a.queued)], ['status changes seen', String(h.statuses.length)],
    ['last sampled tick', last ? num(last.tick) : '–'], ['calls (sample)', last ? num(last.calls) : '–'],
    ['fuel (sample)', last ? num(last.fuel) : '–'], ['wall (sample)', last ? (last.wall_ns / 1000).toFixed(1) + ' µs' : '–'],
    ['memory (sample)', last && last.memory_bytes ? num(last.memory_bytes / 1024) + ' KiB' : '–']];
  $('agent-grid').replaceChildren(...items.map(([k, v]) => { const x = el('div'); x.append(el('span', k), el('b', v)); return x; }));
  plot($('c-agent-mail'), [{ name: 'queued', data: h.points.map((p) => [p[0], p[2]]) }]);
  plot($('c-agent-fuel'), [{ name: 'fuel', data: tel.map((t) => [t.tick, t.fuel]) }, { name: 'calls', data: tel.map((t) => [t.tick, t.calls]) }],
    { empty: 'no sampled ticks in metrics.jsonl' });
  plot($('c-agent-mem'), [{ name: 'KiB', data: tel.filter((t) => t.memory_bytes).map((t) => [t.tick, t.memory_bytes / 1024]) }],
    { empty: 'no memory samples in metrics.jsonl' });
  $('agent-status').replaceChildren(...h.statuses.map(([t, s]) => el('li', 'tick ' + num(t) + ': ' + s, statusClass(s))));
  $('agent-log').textContent = d.logs.length ? d.logs.map(([t, l]) => '[' + t + '] ' + l).join('\n') : 'no log lines from this agent seen yet';
  for (const tr of $('agents').tBodies[0].rows) tr.className = Number(tr.dataset.id) === a.id ? 'sel' : '';
}

// ---- timeline and fork ------------------------------------------------------------
function forkCommand() {
  const run = (meta && meta.run_dir) || 'RUN';
  const t = $('fork-tick').value || 'T';
  return 'lockstep fork ' + shq(run) + ' --at ' + t + ' --into ' + shq($('fork-into').value || 'DIR');
}
function renderFork() { $('fork-cmd').textContent = forkCommand(); }
async function copyFork() {
  const cmd = forkCommand();
  let ok = false;
  try { await navigator.clipboard.writeText(cmd); ok = true; } catch (_) { ok = false; }
  if (!ok) {
    const r = document.createRange(); r.selectNodeContents($('fork-cmd'));
    const s = getSelection(); s.removeAllRanges(); s.addRange(r);
  }
  $('fork-copied').textContent = ok ? 'copied' : 'selected: press Ctrl+C';
  setTimeout(() => ($('fork-copied').textContent = ''), 2500);
}
function renderTimeline() {
  if (!timeline) return;
  const kinds = Object.keys(timeline.kinds || {});
  const sel = $('f-kind');
  const want = ['', ...kinds].join('\n');
  if ([...sel.options].map((o) => o.value).join('\n') !== want) {
    const cur = sel.value;
    sel.replaceChildren(el('option', 'every kind'), ...kinds.map((k) => el('option', k + ' (' + timeline.kinds[k] + ')')));
    sel.options[0].value = '';
    kinds.forEach((k, i) => (sel.options[i + 1].value = k));
    sel.value = kinds.includes(cur) ? cur : '';
  }
  const evs = timeline.events.slice(-500).reverse();
  const kept = Object.values(timeline.kinds || {}).reduce((a, b) => a + b, 0);
  $('timeline-count').textContent = num(kept) + ' events kept, ' + num(timeline.journal_entries) + ' journal entries and ' +
    num(timeline.metrics_lines) + ' metrics lines read';
  $('checkpoints').textContent = timeline.checkpoints.length
    ? 'retained checkpoints at ticks ' + timeline.checkpoints.map(num).join(', ') : 'no checkpoints on disk yet';
  $('journal-state').textContent = timeline.journal_error || '';
  $('journal-state').className = timeline.journal_error ? 'error' : '';
  $('timeline').tBodies[0].replaceChildren(...evs.map((e) => {
    const tr = el('tr');
    tr.dataset.kind = e.kind; tr.dataset.source = e.source;
    const b = el('button', 'fork here'); b.type = 'button'; b.dataset.tick = e.tick;
    const td = el('td'); td.append(b);
    tr.append(el('td', num(e.tick)), el('td', e.kind, 'k-' + e.kind), el('td', e.text, 'wrap'), el('td', e.source), td);
    return tr;
  }));
}
async function loadTimeline() {
  const k = $('f-kind').value;
  try { timeline = await get('/api/timeline' + (k ? '?kind=' + encodeURIComponent(k) : '')); renderTimeline(); } catch (_) { /* shown by the connection badge */ }
}
async function loadLog() {
  try { logLines = (await get('/api/log')).lines; renderLog(); } catch (_) { /* idem */ }
}

// ---- feed -----------------------------------------------------------------------
function onEvent(ev) {
  const err = $('error');
  if (ev.error) { err.textContent = 'board: ' + ev.error; err.hidden = false; } else err.hidden = true;
  if (!ev.state) return;
  latest = ev;
  childNames = ev.state.children.map((c) => c.name);
  const s = sampleOf(ev);
  const prev = samples[samples.length - 1];
  if (!prev || prev.tick !== s.tick || prev.t !== s.t) samples.push(s);
  if (samples.length > HISTORY) samples.splice(0, samples.length - HISTORY);
  renderHeader();
  schedule();
}
function connect() {
  const conn = $('conn');
  if (polling) {
    const tick = async () => {
      try { onEvent(await get('/api/state')); conn.textContent = 'polling'; conn.className = 'badge live'; }
      catch (_) { conn.textContent = 'disconnected'; conn.className = 'badge down'; }
    };
    setInterval(tick, 500);
    return;
  }
  // `?events=N`: close the stream after N events (a headless browser's
  // virtual time runs out only once no request is open).
  const limit = Number(params.get('events')) || 0;
  let seen = 0;
  const es = new EventSource(withToken('/api/events'));
  es.onopen = () => { conn.textContent = 'live'; conn.className = 'badge live'; };
  es.onmessage = (m) => {
    try { onEvent(JSON.parse(m.data)); } catch (_) { return; /* a malformed event is skipped */ }
    conn.dataset.events = String(++seen);
    if (limit && seen >= limit) { es.close(); conn.textContent = 'stream closed after ' + seen + ' events'; conn.className = 'badge'; }
  };
  es.onerror = () => { conn.textContent = 'reconnecting'; conn.className = 'badge down'; };
}

async function start() {
  $('agents').tHead.addEventListener('click', (e) => {
    const k = e.target.dataset && e.target.dataset.k;
    if (!k) return;
    if (sort.k === k) sort.dir = -sort.dir; else { sort.k = k; sort.dir = 1; }
    render();
  });
  $('agents').tBodies[0].addEventListener('click', (e) => {
    const tr = e.target.closest('tr');
    if (tr && tr.dataset.id) location.hash = 'agent=' + tr.dataset.id;
  });
  for (const id of ['search', 'f-state', 'f-tenant']) $(id).addEventListener('input', render);
  $('f-kind').addEventListener('input', loadTimeline);
  $('agent-close').addEventListener('click', () => { history.replaceState(null, '', location.pathname + location.search); loadDetail(); });
  $('fork-tick').addEventListener('input', renderFork);
  $('fork-into').addEventListener('input', renderFork);
  $('fork-copy').addEventListener('click', copyFork);
  $('timeline').tBodies[0].addEventListener('click', (e) => {
    const t = e.target.dataset && e.target.dataset.tick;
    if (t !== undefined) { $('fork-tick').value = t; renderFork(); }
  });
  window.addEventListener('hashchange', loadDetail);
  window.addEventListener('resize', () => { render(); renderDetail(); });
  try {
    const [m, h, s] = await Promise.all([get('/api/meta'), get('/api/history'), get('/api/state')]);
    meta = m; samples = h.samples; childNames = h.children;
    renderMeta();
    onEvent(s);
    render();
  } catch (e) {
    $('error').textContent = String(e.message || e); $('error').hidden = false;
  }
  await Promise.all([loadDetail(), loadTimeline(), loadLog()]);
  connect();
  setInterval(() => { if (detail) loadDetail(); }, 1000);
  setInterval(loadTimeline, 2000);
  setInterval(loadLog, 1000);
}
start();
