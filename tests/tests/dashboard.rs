//! The web dashboard (`lockstep-ui --serve`) against real runs: its HTTP
//! surface under malformed, oversized, wrong-method and concurrent
//! requests; its token; event-stream clients that leave a deterministic run
//! byte-identical (and the board's message flow, the metrics and the
//! viewer's journal reading with it); and the page itself in headless
//! Chromium, with the message flow and the journal's inputs.

use lockstep_tests::{ChildGuard, TempDir, Watchdog, bin, journal_diff, society};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where `start_run` keeps the run's stderr.
fn stderr_log(dir: &Path) -> PathBuf {
    dir.with_extension("stderr.log")
}

/// `lockstep run <manifest> --run-dir <dir>` with extra arguments (stderr
/// in [`stderr_log`]).
fn start_run(manifest: &Path, dir: &Path, extra: &[&str]) -> ChildGuard {
    ChildGuard::new(
        Command::new(bin("lockstep"))
            .arg("run")
            .arg(manifest)
            .arg("--run-dir")
            .arg(dir)
            .args(extra)
            .env("LOCKSTEP_WORKER_BIN", bin("lockstep-worker"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stderr_log(dir)).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// The end of a run's stderr, for a failure message.
fn stderr_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(stderr_log(dir)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `lockstep-ui --serve 127.0.0.1:0 <target> [extra]`: the process and the
/// address from its first line (`serving http://ADDR/`).
fn start_ui(target: &Path, extra: &[&str]) -> (ChildGuard, SocketAddr) {
    let mut ui = ChildGuard::new(
        Command::new(bin("lockstep-ui"))
            .args(["--serve", "127.0.0.1:0"])
            .args(extra)
            .arg(target)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(ui.child().stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("serving http://")
        .and_then(|r| r.strip_suffix('/'))
        .unwrap_or_else(|| panic!("first line: {line:?}"))
        .parse()
        .unwrap();
    (ui, addr)
}

/// One raw exchange: status, head, body.
fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer (and close) before it has read everything.
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, _) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let head = head.to_owned();
    let body = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(Vec::new(), |i| out[i + 4..].to_vec());
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, body)
}

fn get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
}

fn state_tick(addr: SocketAddr) -> Option<u64> {
    let (status, _, body) = get(addr, "/api/state");
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v["state"]["tick"].as_u64()
}

/// Waits until the dashboard shows a tick of at least `min`.
fn wait_tick(addr: SocketAddr, min: u64) -> u64 {
    let t0 = Instant::now();
    loop {
        if let Some(t) = state_tick(addr)
            && t >= min
        {
            return t;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the dashboard never showed tick {min}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A run of the test society, forever, with its dashboard.
fn running_dashboard(tmp: &TempDir) -> (ChildGuard, ChildGuard, SocketAddr, PathBuf) {
    let manifest = society(tmp.path(), 4, 200);
    // Keep the whole journal: a `--forever` run keeps 8 checkpoints by
    // default, and on a fast machine this small society runs 1,600 ticks
    // (8 checkpoint periods) in less than the timeline's 1 s between reads
    // of the journal, so an input could be compacted away before the page
    // saw it.
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replacen(
            "checkpoint_every = 200\n",
            "checkpoint_every = 200\nretain_checkpoints = 100000\n",
            1,
        ),
    )
    .unwrap();
    let dir = tmp.path().join("run");
    let mut run = start_run(&manifest, &dir, &["--forever"]);
    let (ui, addr) = start_ui(&dir, &[]);
    let t0 = Instant::now();
    while state_tick(addr).is_none_or(|t| t < 1) {
        if let Some(status) = run.child().try_wait().unwrap() {
            panic!("the run ended ({status}):\n{}", stderr_tail(&dir));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the dashboard showed no tick in 90 s ({:?}); the run's stderr:\n{}",
            String::from_utf8_lossy(&get(addr, "/api/state").2),
            stderr_tail(&dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (run, ui, addr, dir)
}

#[test]
fn http_surface_answers_bad_requests_with_status_codes_and_keeps_serving() {
    let _w = Watchdog::new("dashboard_http", Duration::from_secs(180));
    let tmp = TempDir::new("dash-http");
    let (_run, mut ui, addr, _dir) = running_dashboard(&tmp);

    // The page and its parts, with the security headers.
    let (status, head, body) = get(addr, "/");
    assert_eq!(status, 200, "{head}");
    let lower = head.to_ascii_lowercase();
    for h in [
        "content-security-policy: default-src 'none'; script-src 'self'",
        "x-content-type-options: nosniff",
        "cache-control: no-store",
        "x-frame-options: deny",
        "content-type: text/html",
    ] {
        assert!(lower.contains(h), "missing {h:?} in\n{head}");
    }
    assert!(String::from_utf8_lossy(&body).contains("Lockstep"));
    let (status, head, _) = get(addr, "/app.js");
    assert_eq!(status, 200);
    assert!(head.contains("text/javascript"), "{head}");
    let (status, head, body) = exchange(
        addr,
        format!("HEAD /app.css HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, 200);
    assert!(head.contains("text/css") && body.is_empty(), "{head}");
    for p in ["/api/history", "/api/meta", "/api/timeline", "/api/log"] {
        let (status, _, body) = get(addr, p);
        assert_eq!(status, 200, "{p}");
        serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_else(|e| panic!("{p}: {e}"));
    }

    // Methods other than GET and HEAD.
    for m in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT"] {
        let (status, head, _) = exchange(
            addr,
            format!("{m} / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        );
        assert_eq!(status, 405, "{m}: {head}");
        assert!(head.contains("Allow: GET, HEAD"), "{head}");
    }
    let (status, _, _) = exchange(
        addr,
        format!("POST /api/state HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 5\r\n\r\nhello")
            .as_bytes(),
    );
    assert_eq!(status, 405);

    // Malformed heads.
    let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20_000));
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\n{}\r\n",
        (0..100)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nX-Big: {}\r\n\r\n",
        "b".repeat(10_000)
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "binary garbage",
            b"\x00\x01\x02 hello\r\n\r\n".to_vec(),
            400,
        ),
        ("no method", b" / HTTP/1.1\r\n\r\n".to_vec(), 400),
        (
            "header without colon",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(),
            400,
        ),
        (
            "HTTP/2 request line",
            b"GET / HTTP/2.0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "absolute target",
            b"GET http://x/ HTTP/1.1\r\n\r\n".to_vec(),
            400,
        ),
        (
            "GET with a body",
            format!("GET / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 3\r\n\r\nabc").into_bytes(),
            400,
        ),
        (
            "chunked GET",
            format!(
                "GET / HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            )
            .into_bytes(),
            400,
        ),
        ("over-long request line", long_line.into_bytes(), 414),
        ("100 headers", many_headers.into_bytes(), 431),
        ("one 10 kB header", big_header.into_bytes(), 431),
        (
            "foreign Host (DNS rebinding)",
            b"GET /api/state HTTP/1.1\r\nHost: evil.example\r\n\r\n".to_vec(),
            403,
        ),
        (
            "unknown path",
            format!("GET /nope HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes(),
            404,
        ),
        (
            "agent id not a number",
            format!("GET /api/agent/x HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes(),
            404,
        ),
        (
            "agent not on the board",
            format!("GET /api/agent/99999999 HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes(),
            404,
        ),
        (
            "path traversal",
            format!("GET /../../etc/passwd HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes(),
            404,
        ),
    ];
    for (what, raw, want) in &cases {
        let (status, head, _) = exchange(addr, raw);
        assert_eq!(status, *want, "{what}: {head}");
    }
    // A head cut short, and clients that connect and say nothing: the
    // server stays up and serves others meanwhile.
    {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"));
    }
    let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    assert_eq!(get(addr, "/").0, 200);

    // 64 concurrent clients: each gets a whole answer (200, or 503 when
    // the connection limit is reached), none hangs.
    let threads: Vec<_> = (0..64)
        .map(|i| {
            std::thread::spawn(move || {
                let path = ["/api/state", "/", "/api/history", "/app.js"][i % 4];
                get(addr, path).0
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 48,
        "{statuses:?}"
    );
    drop(idle);

    // Still serving, still running.
    let t1 = wait_tick(addr, 1);
    let t2 = wait_tick(addr, t1 + 1);
    assert!(t2 > t1);
    assert!(ui.child().try_wait().unwrap().is_none(), "the server died");
}

#[test]
fn token_guards_the_data_and_non_loopback_needs_one() {
    let _w = Watchdog::new("dashboard_token", Duration::from_secs(120));
    let tmp = TempDir::new("dash-token");
    let manifest = society(tmp.path(), 1, 200);
    let dir = tmp.path().join("run");
    let _run = start_run(&manifest, &dir, &["--forever"]);
    let token = "s3cret-token-0123456789";
    let (_ui, addr) = start_ui(&dir, &["--token", token]);
    let t0 = Instant::now();
    while get(addr, &format!("/api/state?token={token}")).0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, head, _) = get(addr, "/api/state");
    assert_eq!(status, 401, "{head}");
    assert_eq!(get(addr, "/api/state?token=wrong-token-0123456789").0, 401);
    assert_eq!(get(addr, "/api/events?token=wrong").0, 401);
    let (status, _, body) = exchange(
        addr,
        format!("GET /api/history HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("samples"));
    // The page's code loads without it (it holds no run data).
    assert_eq!(get(addr, "/").0, 200);
    assert_eq!(get(addr, "/app.js").0, 200);

    // Off loopback without a token: refused before binding.
    let out = Command::new(bin("lockstep-ui"))
        .args(["--serve", "0.0.0.0:0"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--token"), "{err}");
    assert!(out.stdout.is_empty());
    // Weak tokens are refused.
    let out = Command::new(bin("lockstep-ui"))
        .args(["--serve", "127.0.0.1:0", "--token", "short"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Reads an event stream until the run stops: (events with a state, ticks
/// seen while running).
fn follow_events(addr: SocketAddr, deadline: Instant) -> (usize, Vec<u64>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let mut events = 0;
    let mut ticks = Vec::new();
    while Instant::now() < deadline {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        if v["state"].is_null() {
            continue;
        }
        events += 1;
        match v["state"]["phase"].as_str() {
            Some("stopped") => break,
            Some("running") => ticks.push(v["state"]["tick"].as_u64().unwrap()),
            _ => {}
        }
    }
    (events, ticks)
}

/// Twenty event-stream clients on a running deterministic run leave its
/// journal and final hash byte-identical to a run without them — and
/// without a board, metrics or a viewer at all: the board's message flow,
/// the per-agent samples (memory sizes included) and the viewer following
/// the journal are observation only.
#[test]
fn event_stream_clients_do_not_change_the_run() {
    let _w = Watchdog::new("dashboard_determinism", Duration::from_secs(300));
    let tmp = TempDir::new("dash-det");
    let manifest = society(tmp.path(), 4, 500);
    let ticks = "6000";
    let summary = |mut run: ChildGuard| -> serde_json::Value {
        let mut out = String::new();
        run.child()
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let status = run.child().wait().unwrap();
        assert!(status.success(), "{out}");
        serde_json::from_str(out.lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("no JSON summary ({e}): {out}"))
    };

    let watched = tmp.path().join("watched");
    let run = start_run(&manifest, &watched, &["--ticks", ticks, "--json"]);
    let (_ui, addr) = start_ui(&watched, &[]);
    let deadline = Instant::now() + Duration::from_secs(200);
    let clients: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || follow_events(addr, deadline)))
        .collect();
    let a = summary(run);
    for c in clients {
        let (events, running_ticks) = c.join().unwrap();
        assert!(
            events >= 2,
            "a client saw {events} events; the run's stderr:\n{}",
            stderr_tail(&watched)
        );
        assert!(
            !running_ticks.is_empty(),
            "a client attached only after the run ended"
        );
        assert!(running_ticks.windows(2).all(|w| w[0] <= w[1]));
    }

    // The viewer followed the journal and the board counted messages.
    let (_, _, body) = get(addr, "/api/timeline");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(v["journal_entries"].as_u64().unwrap_or(0) > 0, "{v}");

    let alone = tmp.path().join("alone");
    let b = summary(start_run(
        &manifest,
        &alone,
        &["--ticks", ticks, "--json", "--no-board", "--no-metrics"],
    ));
    assert!(!alone.join("state.board").exists());
    assert_eq!(a["ticks"], b["ticks"]);
    assert_eq!(a["hash"], b["hash"], "final hashes differ");
    assert_eq!(
        journal_diff(&watched.join("journal.lsj"), &alone.join("journal.lsj")),
        None
    );
}

/// The first `chromium`-like browser on PATH.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for d in std::env::split_paths(&path) {
            let p = d.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Runs headless Chromium on `url` with `what` (`--dump-dom`,
/// `--screenshot=…`); its stdout.
fn headless(browser: &Path, profile: &Path, url: &str, what: &str) -> String {
    let mut child = ChildGuard::new(
        Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--no-first-run",
                "--window-size=1400,2600",
                "--virtual-time-budget=4000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(what)
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = String::new();
    let mut stdout = child.child().stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let t0 = Instant::now();
    while child.child().try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "chromium did not finish with {url}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

fn dom_tick(dom: &str) -> Option<u64> {
    let rest = dom.split("id=\"tick\">").nth(1)?;
    rest.split('<').next()?.trim().parse().ok()
}

/// The page in a real browser: the tick it shows advances between two
/// loads, `#agent=N` opens that agent's detail, and a screenshot is saved.
#[test]
fn dashboard_page_in_headless_chromium() {
    let Some(browser) = chromium() else {
        eprintln!(
            "SKIPPED dashboard_page_in_headless_chromium: no chromium on PATH \
             (`apt-get install chromium`; scripts/test.sh installs it)"
        );
        return;
    };
    let _w = Watchdog::new("dashboard_browser", Duration::from_secs(300));
    let tmp = TempDir::new("dash-browser");
    let (_run, _ui, addr, dir) = running_dashboard(&tmp);
    let profile = tmp.path().join("chromium-profile");
    // An input through the control socket: journaled, then on the timeline.
    let out = Command::new(bin("lockstep"))
        .arg("ctl")
        .arg(&dir)
        .args(["publish", "dash-topic", "hello-from-the-test"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctl publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t0 = Instant::now();
    loop {
        let (_, _, body) = get(addr, "/api/timeline?kind=publish");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let found = v["events"].as_array().is_some_and(|evs| {
            evs.iter().any(|e| {
                e["source"] == "journal"
                    && e["text"]
                        .as_str()
                        .is_some_and(|t| t.contains("hello-from-the-test"))
            })
        });
        if found {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the publish never reached the timeline: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The society's messages are on the board's flow.
    let t0 = Instant::now();
    loop {
        let (_, _, body) = get(addr, "/api/state");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if v["state"]["flow"]["edges"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["count"].as_u64() > Some(0)))
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no message edge on the board: {}",
            v["state"]["flow"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // `poll=1`: the page polls /api/state instead of holding an event
    // stream open, which would keep the headless browser's virtual time
    // from running out (the stream itself is loaded below with `events=5`,
    // which closes it after five events).
    let base = format!("http://{addr}/?poll=1");

    let dom1 = headless(&browser, &profile, &base, "--dump-dom");
    let t1 = dom_tick(&dom1).unwrap_or_else(|| panic!("no tick in the page:\n{dom1}"));
    wait_tick(addr, t1 + 50);
    let dom2 = headless(&browser, &profile, &base, "--dump-dom");
    let t2 = dom_tick(&dom2).unwrap_or_else(|| panic!("no tick in the page:\n{dom2}"));
    assert!(t2 > t1, "the shown tick did not advance: {t1} then {t2}");
    assert!(dom2.contains("id=\"phase\">running<"), "phase not shown");
    assert!(dom2.contains("<td>coordinator</td>"), "agent table empty");
    // The flow table lists edges with their counts, and the timeline the
    // journaled publish, each with its fork button.
    let flow = dom2
        .split("id=\"flow-table\"")
        .nth(1)
        .and_then(|t| t.split("</table>").next())
        .unwrap_or_else(|| panic!("no flow table:\n{dom2}"));
    let counts: Vec<u64> = flow
        .split("data-count=\"")
        .skip(1)
        .filter_map(|r| r.split('"').next()?.parse().ok())
        .collect();
    assert!(
        counts.iter().any(|c| *c > 0),
        "no edge with a count in the flow table: {flow}"
    );
    let timeline = dom2
        .split("id=\"timeline\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no timeline:\n{dom2}"));
    let publish = timeline
        .split("<tr ")
        .find(|r| r.contains("data-kind=\"publish\" data-source=\"journal\""))
        .unwrap_or_else(|| panic!("no journaled publish on the timeline: {timeline}"));
    assert!(publish.contains("hello-from-the-test"), "{publish}");
    assert!(publish.contains("fork here"), "{publish}");

    // The event stream in the browser: five events, then the page closes
    // it (`events=5`), showing the tick of the last one.
    let dom3 = headless(
        &browser,
        &profile,
        &format!("http://{addr}/?events=5"),
        "--dump-dom",
    );
    assert!(
        dom3.contains("data-events=\"5\">stream closed after 5 events<"),
        "the page did not read five events:\n{dom3}"
    );
    let t3 = dom_tick(&dom3).unwrap_or_else(|| panic!("no tick in the page:\n{dom3}"));
    assert!(t3 > t2, "the streamed tick did not advance: {t2} then {t3}");

    let dom = headless(&browser, &profile, &format!("{base}#agent=3"), "--dump-dom");
    let detail = dom
        .split("<section id=\"agent-detail\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no detail section:\n{dom}"));
    let tag = detail.split('>').next().unwrap();
    assert!(tag.contains("data-agent=\"3\""), "{tag}");
    assert!(!tag.contains("hidden"), "detail hidden: {tag}");
    assert!(
        detail.contains("id=\"agent-title\">agent 3 · task-worker-1<"),
        "{}",
        &detail[..detail.len().min(2000)]
    );

    let shot_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shot_dir).unwrap();
    let shot = shot_dir.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &browser,
        &profile,
        &format!("{base}#agent=3"),
        &format!("--screenshot={}", shot.display()),
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    eprintln!("dashboard screenshot: {}", shot.display());
}

/// `--max-clients`: connections beyond it get `503` at once (half of them
/// may be event streams), and the server serves again when they close.
#[test]
fn connection_limit_answers_503_and_recovers() {
    let _w = Watchdog::new("dashboard_limit", Duration::from_secs(60));
    let tmp = TempDir::new("dash-limit");
    // A run directory without a board yet: the page is served all the same.
    let (_ui, addr) = start_ui(tmp.path(), &["--max-clients", "4"]);
    assert_eq!(get(addr, "/").0, 200);
    let (status, _, body) = get(addr, "/api/state");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("error"));

    let open_stream = || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        (s, line)
    };
    let (s1, l1) = open_stream();
    let (s2, l2) = open_stream();
    assert!(l1.starts_with("HTTP/1.1 200") && l2.starts_with("HTTP/1.1 200"));
    let (_s3, l3) = open_stream();
    assert!(l3.starts_with("HTTP/1.1 503"), "third stream: {l3}");
    // Two streams and two idle connections fill the four slots.
    let idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // The server counts a connection once it has accepted it: on a busy
    // machine that may take a moment, so ask until it answers 503.
    let t0 = Instant::now();
    loop {
        let (status, head, _) = get(addr, "/");
        if status == 503 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "a fifth connection was still served: {head}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop((s1, s2, idle));
    let t0 = Instant::now();
    while get(addr, "/").0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(20), "never served again");
        std::thread::sleep(Duration::from_millis(50));
    }
}
