//! `lockstep ctl`: talking to a running supervisor over
//! `<run-dir>/control.sock`.
//!
//! One request per connection: a JSON line ([`CtlCommand`]), answered with
//! one text line once the supervisor has applied it at a tick boundary.
//! Inputs are journaled with the tick they apply at, so a replay reproduces
//! them.

use crate::sim::Input;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// Largest request accepted.
pub const MAX_REQUEST: u64 = 4 << 20;

/// A command sent by `lockstep ctl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum CtlCommand {
    /// Start an agent.
    Spawn {
        /// Instance name.
        name: String,
        /// Module path (absolute, or relative to the supervisor's cwd).
        module: String,
        /// Tenant.
        #[serde(default = "default_tenant")]
        tenant: String,
        /// Priority.
        #[serde(default)]
        priority: i32,
        /// Memory limit.
        #[serde(default = "default_memory")]
        memory: u64,
        /// Fuel per call.
        #[serde(default = "default_fuel")]
        fuel: u64,
    },
    /// Schedule a task.
    Task {
        /// Agent name or `#id`.
        agent: String,
        /// Priority.
        #[serde(default)]
        priority: i32,
        /// Payload text.
        #[serde(default)]
        payload: String,
        /// Dependencies (task ids).
        #[serde(default)]
        deps: Vec<u64>,
    },
    /// Publish on a topic.
    Publish {
        /// Topic.
        topic: String,
        /// Payload text.
        payload: String,
    },
    /// Send to an agent.
    Send {
        /// Agent name or `#id`.
        agent: String,
        /// Payload text.
        payload: String,
    },
    /// Stop one agent.
    StopAgent {
        /// Agent name or `#id`.
        agent: String,
    },
    /// Make `version` the current version of model `id` from the next tick.
    SwapModel {
        /// Model id.
        id: String,
        /// A declared version.
        version: String,
    },
    /// Hot-swap an agent to another module at the next tick boundary.
    Upgrade {
        /// Agent name or `#id`.
        agent: String,
        /// Module path.
        module: String,
    },
    /// Take a snapshot now (between ticks).
    Snapshot,
    /// Stop the run at the next tick boundary.
    Stop,
    /// One status line.
    Status,
    /// The run's children: name, role, pid and sandbox report, as one JSON
    /// line (what `lockstep doctor` reads).
    Children,
}

fn default_tenant() -> String {
    "default".into()
}
fn default_memory() -> u64 {
    crate::manifest::DEFAULT_AGENT_MEMORY
}
fn default_fuel() -> u64 {
    crate::manifest::DEFAULT_AGENT_FUEL
}

/// A request handed to the run loop.
#[derive(Debug)]
pub enum CtlRequest {
    /// An input to apply; the outcome text goes back on the sender.
    Input(Input, mpsc::Sender<String>),
    /// Hot-swap (agent, module path).
    Upgrade(String, String, mpsc::Sender<String>),
    /// Snapshot now.
    Snapshot(mpsc::Sender<String>),
    /// Stop the run.
    Stop(mpsc::Sender<String>),
    /// Status line.
    Status(mpsc::Sender<String>),
    /// The children, as JSON.
    Children(mpsc::Sender<String>),
}

impl CtlCommand {
    fn into_request(self, reply: mpsc::Sender<String>) -> CtlRequest {
        let input = match self {
            CtlCommand::Spawn {
                name,
                module,
                tenant,
                priority,
                memory,
                fuel,
            } => {
                let module =
                    std::fs::canonicalize(&module).map_or(module, |p| p.display().to_string());
                Input::Spawn {
                    name,
                    module,
                    tenant,
                    priority,
                    memory,
                    fuel,
                    blake3: None,
                }
            }
            CtlCommand::Task {
                agent,
                priority,
                payload,
                deps,
            } => Input::Task {
                agent,
                priority,
                payload: payload.into_bytes(),
                deps,
            },
            CtlCommand::Publish { topic, payload } => Input::Publish {
                topic,
                payload: payload.into_bytes(),
            },
            CtlCommand::Send { agent, payload } => Input::Send {
                agent,
                payload: payload.into_bytes(),
            },
            CtlCommand::StopAgent { agent } => Input::Stop { agent },
            CtlCommand::SwapModel { id, version } => Input::SwapModel { id, version },
            CtlCommand::Upgrade { agent, module } => {
                let module =
                    std::fs::canonicalize(&module).map_or(module, |p| p.display().to_string());
                return CtlRequest::Upgrade(agent, module, reply);
            }
            CtlCommand::Snapshot => return CtlRequest::Snapshot(reply),
            CtlCommand::Stop => return CtlRequest::Stop(reply),
            CtlCommand::Status => return CtlRequest::Status(reply),
            CtlCommand::Children => return CtlRequest::Children(reply),
        };
        CtlRequest::Input(input, reply)
    }
}

/// The listening side, owned by the run.
#[derive(Debug)]
pub struct CtlServer {
    rx: mpsc::Receiver<CtlRequest>,
    stop: Arc<AtomicBool>,
    path: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CtlServer {
    /// Listens on `path` (replacing a stale socket file).
    pub fn start(path: &Path) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lockstep-ctl".into())
            .spawn(move || {
                while !s2.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let tx = tx.clone();
                            let _ = std::thread::Builder::new()
                                .name("lockstep-ctl-conn".into())
                                .spawn(move || serve(stream, &tx));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        Ok(Self {
            rx,
            stop,
            path: path.to_owned(),
            thread: Some(thread),
        })
    }

    /// Requests waiting to be applied.
    pub fn drain(&self) -> Vec<CtlRequest> {
        self.rx.try_iter().collect()
    }

    /// Stops listening and removes the socket.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(stream: UnixStream, tx: &mpsc::Sender<CtlRequest>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut line = String::new();
    let mut reader = BufReader::new(stream.take(MAX_REQUEST));
    let answer = match reader.read_line(&mut line) {
        Ok(0) | Err(_) => "error: empty or unreadable request".to_owned(),
        Ok(_) => match serde_json::from_str::<CtlCommand>(line.trim()) {
            Err(e) => format!("error: bad request: {e}"),
            Ok(cmd) => {
                let (rtx, rrx) = mpsc::channel();
                if tx.send(cmd.into_request(rtx)).is_err() {
                    "error: the run is ending".to_owned()
                } else {
                    rrx.recv_timeout(Duration::from_secs(120))
                        .unwrap_or_else(|_| {
                            "error: no answer from the run (is it stopped or paused?)".to_owned()
                        })
                }
            }
        },
    };
    let _ = out.write_all(answer.as_bytes());
    let _ = out.write_all(b"\n");
}

/// Sends one command to the run in `run_dir` and returns its answer.
pub fn request(run_dir: &Path, cmd: &CtlCommand) -> Result<String, String> {
    let sock = run_dir.join("control.sock");
    let mut s = UnixStream::connect(&sock).map_err(|e| {
        format!(
            "cannot connect to {} (is the run still going?): {e}",
            sock.display()
        )
    })?;
    let body = serde_json::to_string(cmd).map_err(|e| e.to_string())?;
    s.write_all(body.as_bytes())
        .and_then(|()| s.write_all(b"\n"))
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .map_err(|e| e.to_string())?;
    Ok(answer.trim_end().to_owned())
}
