//! `lockstep run --metrics ADDR`: the OpenMetrics endpoint of a real run,
//! checked by the reference parser (Python's `prometheus_client`), probed
//! with bad requests, and shown not to change the run.

use lockstep_tests::{ChildGuard, TempDir, Watchdog, agent, bin, root, society};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The society plus inferrers asking the MLP (so that inference series
/// exist).
fn manifest(dir: &Path) -> std::path::PathBuf {
    let m = society(dir, 2, 100);
    let mlp = root().join(".deps/models/mlp.onnx");
    assert!(
        mlp.is_file(),
        "{} missing: run scripts/gen-models.sh",
        mlp.display()
    );
    let mut text = std::fs::read_to_string(&m).unwrap();
    text.push_str(&format!(
        "[[agents]]\nname = \"inferrer\"\nmodule = \"{}\"\ncount = 2\n\n\
         [[models]]\nid = \"mlp\"\nversion = \"v1\"\npath = \"{}\"\n",
        agent("inferrer"),
        mlp.display()
    ));
    std::fs::write(&m, text).unwrap();
    m
}

/// One raw HTTP exchange; returns (status code, body).
fn http(addr: &str, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (code, body)
}

fn scrape(addr: &str) -> String {
    let (code, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 200, "{body}");
    body
}

/// A sample's value (`name{labels} value` or `name value`).
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_metrics_endpoint_serves_valid_openmetrics_of_a_live_run() {
    let _w = Watchdog::new("openmetrics_live", Duration::from_secs(240));
    let tmp = TempDir::new("openmetrics");
    let m = manifest(tmp.path());
    let dir = tmp.path().join("run");
    let mut child = Command::new(bin("lockstep"))
        .arg("run")
        .arg(&m)
        .args([
            "--forever",
            "--no-board",
            "--metrics",
            "127.0.0.1:0",
            "--metrics-agents",
            "--run-dir",
        ])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut guard = ChildGuard::new(child);
    // Read the address, then keep draining stderr so the run never blocks.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("lockstep: metrics at http://") {
                let _ = tx.send(a.trim_end_matches("/metrics").to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("no metrics address printed");
    let t0 = Instant::now();
    let first = loop {
        let b = scrape(&addr);
        if value(&b, "lockstep_ticks_total").unwrap_or(0.0) >= 50.0
            && value(&b, "lockstep_checkpoints_total").unwrap_or(0.0) >= 1.0
        {
            break b;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the run did not advance:\n{b}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(500));
    let second = scrape(&addr);
    for counter in [
        "lockstep_ticks_total",
        "lockstep_steps_total",
        "lockstep_messages_total",
    ] {
        let (a, b) = (
            value(&first, counter).unwrap(),
            value(&second, counter).unwrap(),
        );
        assert!(b >= a && b > 0.0, "{counter}: {a} then {b}");
    }
    assert!(value(&second, "lockstep_tick").unwrap() > value(&first, "lockstep_tick").unwrap());
    for needle in [
        "lockstep_tick_duration_seconds_bucket{le=\"+Inf\"}",
        "lockstep_inference_requests_total{model=\"mlp\",device=\"cpu\"}",
        "lockstep_inference_latency_seconds_count{model=\"mlp\"}",
        "lockstep_tenant_agents{tenant=\"default\"}",
        "lockstep_worker_share_seconds{worker=\"0\"}",
        "lockstep_child_rss_bytes{child=\"worker-0\"}",
        "lockstep_agent_fuel{agent=\"",
        "lockstep_agent_mailbox{agent=\"",
        "lockstep_agent_memory_bytes{agent=\"",
        "# EOF",
    ] {
        assert!(second.contains(needle), "{needle} missing:\n{second}");
    }
    // The reference parser accepts the exposition.
    let py = root().join(".deps/pyenv/bin/python");
    let have = Command::new(&py)
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    if have {
        let mut p = Command::new(&py)
            .args([
                "-c",
                "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as f\n\
                 fams = list(f(sys.stdin.read()))\nprint(len(fams), sum(len(x.samples) for x in fams))",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        p.stdin
            .take()
            .unwrap()
            .write_all(second.as_bytes())
            .unwrap();
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "prometheus_client refused the exposition: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let families: usize = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(families >= 25, "{}", String::from_utf8_lossy(&out.stdout));
    } else {
        eprintln!(
            "SKIP the reference-parser check: {} has no prometheus_client (scripts/setup.sh installs it)",
            py.display()
        );
    }
    // Bad requests get their codes; the server goes on serving.
    assert_eq!(http(&addr, b"POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(http(&addr, b"GET /other HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(&addr, b"GARBAGE\r\n\r\n").0, 400);
    let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 16 << 10));
    long.extend_from_slice(b"\r\n\r\n");
    assert_eq!(http(&addr, &long).0, 431);
    let (code, body) = http(&addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!((code, body.as_str()), (200, ""));
    let _ = scrape(&addr);
    let out = Command::new(bin("lockstep"))
        .arg("ctl")
        .arg(&dir)
        .arg("stop")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(guard.child().wait().unwrap().success());
}

/// Scraping while a run goes changes nothing of it.
#[test]
fn scraping_metrics_leaves_the_journal_identical() {
    let _w = Watchdog::new("openmetrics_journal", Duration::from_secs(240));
    let tmp = TempDir::new("openmetrics-journal");
    let m = manifest(tmp.path());
    let run = |name: &str, extra: &[&str]| {
        let dir = tmp.path().join(name);
        let mut child = Command::new(bin("lockstep"))
            .arg("run")
            .arg(&m)
            .args(["--ticks", "400", "--no-board", "--run-dir"])
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let scraper = std::thread::spawn(move || {
            let mut scrapes = 0;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("lockstep: metrics at http://") {
                    let addr = a.trim_end_matches("/metrics").to_owned();
                    // Scrape as fast as possible while the run goes.
                    while let Ok(mut s) = TcpStream::connect(&addr) {
                        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
                        let mut sink = Vec::new();
                        let _ = s.read_to_end(&mut sink);
                        scrapes += 1;
                        if scrapes > 100_000 {
                            break;
                        }
                    }
                }
            }
            scrapes
        });
        assert!(child.wait().unwrap().success());
        (
            std::fs::read(dir.join("journal.lsj")).unwrap(),
            scraper.join().unwrap(),
        )
    };
    let (plain, _) = run("plain", &[]);
    let (scraped, scrapes) = run("scraped", &["--metrics", "127.0.0.1:0", "--metrics-agents"]);
    assert!(scrapes > 0, "nothing was scraped");
    assert!(plain == scraped, "the journal changed under scraping");
}
