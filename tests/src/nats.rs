//! A real NATS server and real `lockstep-node` processes for the scale-out
//! tests (all on loopback).

use crate::{ChildGuard, TempDir, bin, root};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The pinned `nats-server` (scripts/fetch-nats-server.sh), or one named by
/// `LOCKSTEP_NATS_SERVER`, or one on `PATH`.
pub fn server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LOCKSTEP_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let pinned = root().join(".deps/nats/nats-server");
    if pinned.is_file() {
        return Some(pinned);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    })
}

/// A NATS server with JetStream on a free loopback port, killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    _proc: ChildGuard,
    _dir: TempDir,
}

impl NatsServer {
    /// Starts one, or says why it cannot (the caller prints that and
    /// skips: no server binary on this machine).
    pub fn start() -> Result<Self, String> {
        let bin = server_binary().ok_or(
            "no nats-server (run scripts/fetch-nats-server.sh, or set LOCKSTEP_NATS_SERVER)",
        )?;
        let dir = TempDir::new("nats");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let guard = ChildGuard::new(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            url: format!("nats://127.0.0.1:{port}"),
            _proc: guard,
            _dir: dir,
        })
    }
}

/// A running `lockstep-node serve`, killed on drop.
#[derive(Debug)]
pub struct Node {
    /// Its name.
    pub name: String,
    /// The process.
    pub proc: ChildGuard,
}

impl Node {
    /// Starts node `name` on `url` with `extra` arguments, and waits until
    /// it takes open requests.
    pub fn start(url: &str, name: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(bin("lockstep-node"))
            .args(["serve", "--nats", url, "--name", name])
            .args(extra)
            .env("LOCKSTEP_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start lockstep-node");
        let out = child.stdout.take().expect("stdout");
        let guard = ChildGuard::new(child);
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .expect("read the node's first line");
        assert!(
            line.contains("ready"),
            "node {name} did not come up: {line:?}"
        );
        Self {
            name: name.to_owned(),
            proc: guard,
        }
    }
}

/// A cluster of NATS servers on loopback (routes between all of them, no
/// JetStream), each killable on its own.
#[derive(Debug)]
pub struct NatsCluster {
    /// Every server's client URL, comma-separated (what `--nats` takes).
    pub url: String,
    /// The servers.
    pub servers: Vec<ChildGuard>,
}

impl NatsCluster {
    /// Starts `n` servers, or says why it cannot.
    pub fn start(n: usize) -> Result<Self, String> {
        let bin = server_binary().ok_or(
            "no nats-server (run scripts/fetch-nats-server.sh, or set LOCKSTEP_NATS_SERVER)",
        )?;
        let free = || -> Result<u16, String> {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| format!("no free port: {e}"))
        };
        let mut ports = Vec::new();
        for _ in 0..n {
            ports.push((free()?, free()?));
        }
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, r)| format!("nats://127.0.0.1:{r}"))
            .collect();
        let mut servers = Vec::new();
        for (i, (client, route)) in ports.iter().enumerate() {
            let child = Command::new(&bin)
                .args(["-a", "127.0.0.1", "-p", &client.to_string()])
                .args(["-n", &format!("s{i}"), "--cluster_name", "lockstep"])
                .args(["--cluster", &format!("nats://127.0.0.1:{route}")])
                .args(["--routes", &routes.join(",")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
            servers.push(ChildGuard::new(child));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (client, _) in &ports {
            while std::net::TcpStream::connect(("127.0.0.1", *client)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "nats-server did not listen on {client}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Give the routes a moment to form (a message to a server not yet
        // routed is simply not seen by the others).
        std::thread::sleep(Duration::from_millis(500));
        Ok(Self {
            url: ports
                .iter()
                .map(|(c, _)| format!("nats://127.0.0.1:{c}"))
                .collect::<Vec<_>>()
                .join(","),
            servers,
        })
    }
}
