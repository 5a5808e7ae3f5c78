//! The node: hosts workers for supervisors on other machines.
//!
//! `lockstep-node serve --nats URL --name a` subscribes to
//! `lockstep.node.a.open`.  For each open request it starts a
//! `lockstep-worker` the way a supervisor does — a memfd segment, the full
//! sandbox of this machine (cgroup, namespaces, empty root, unprivileged
//! identity, Landlock, seccomp), a handshake — answers with the worker's
//! sandbox report, and then carries the link: packets from the bridge
//! become ring messages to the worker, the worker's answers become packets
//! back.  It beats on the link while its worker is healthy, says `Hung`
//! when the worker's heartbeat stalls while it owes an answer, and reports
//! how the worker died (exit code or signal, from its reaper).  A bridge
//! that goes silent or closes the link has its worker killed.
//!
//! The node decides its own sandbox and limits (the machine's owner's
//! settings: `--sandbox`, the manifest's limits are the supervisor's
//! machine's); the run cannot loosen them.

use crate::NodeError;
use crate::link::{LinkRx, LinkTx, Received, connect, runtime};
use crate::wire::{
    BEAT_EVERY, Body, Event, Failure, Hosted, OpenReply, OpenRequest, down_subject, is_token,
    open_subject, up_subject,
};
use futures_util::StreamExt;
use lockstep_common::SandboxMode;
use lockstep_supervisor::child::{Child, ChildSpec, locate_binary};
use lockstep_supervisor::config::WORKER_RING;
use lockstep_supervisor::failure::chain;
use lockstep_supervisor::inference::HOST_RING;
use lockstep_supervisor::jail::{ChildClass, Jails, SandboxSettings};
use lockstep_supervisor::reaper::{ChildExit, ExitKind, Reaper};
use shm_protocol::control::{Down, Role, Up};
use shm_protocol::segment::SegmentConfig;
use shm_protocol::worker::WorkerCommand;
use shm_protocol::{ChannelError, Endpoint, PeerGone, PidFd, WaitPolicy};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// `lockstep-node serve`: host workers.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The NATS server (`nats://host:port`).
    #[arg(long)]
    pub nats: String,
    /// This node's name (what manifests and `--nodes` place workers on).
    #[arg(long)]
    pub name: String,
    /// The workers' sandbox on this machine (default: the
    /// `LOCKSTEP_SANDBOX` environment variable, else strict).
    #[arg(long, value_enum)]
    pub sandbox: Option<SandboxMode>,
    /// Most workers hosted at once.
    #[arg(long, default_value_t = 64)]
    pub max_workers: usize,
    /// Longest silence of a bridge before its worker is killed, ms.
    #[arg(long, default_value_t = 3000)]
    pub link_timeout_ms: u64,
    /// The worker binary (default: `lockstep-worker` next to this one).
    #[arg(long)]
    pub worker_bin: Option<PathBuf>,
    /// Fault injection for tests, when the node relays the order for tick
    /// T: `die@T` (the whole node is SIGKILLed, its workers with it: a
    /// machine lost at a chosen point of a run), `kill-worker@T` (SIGKILL
    /// to the worker), `stop-worker@T` (SIGSTOP: a hung worker).
    #[arg(long, hide = true, value_parser = Fault::parse)]
    pub fault: Option<Fault>,
}

/// A fault injected at a tick (`--fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The node dies.
    Die(u64),
    /// The worker is killed.
    KillWorker(u64),
    /// The worker is stopped.
    StopWorker(u64),
}

impl Fault {
    fn parse(s: &str) -> Result<Self, String> {
        let (kind, tick) = s
            .split_once('@')
            .ok_or_else(|| format!("{s:?}: expected KIND@TICK"))?;
        let t: u64 = tick
            .parse()
            .map_err(|_| format!("{tick:?} is not a tick"))?;
        match kind {
            "die" => Ok(Fault::Die(t)),
            "kill-worker" => Ok(Fault::KillWorker(t)),
            "stop-worker" => Ok(Fault::StopWorker(t)),
            _ => Err(format!(
                "{kind:?}: expected die, kill-worker or stop-worker"
            )),
        }
    }

    /// The tick it fires at.
    fn tick(self) -> u64 {
        match self {
            Fault::Die(t) | Fault::KillWorker(t) | Fault::StopWorker(t) => t,
        }
    }

    /// Injects the fault.
    fn inject(self, node: &str, worker: &PidFd) {
        use rustix::process::Signal;
        let t = self.tick();
        match self {
            Fault::Die(_) => {
                eprintln!("lockstep-node {node}: dying at tick {t} (fault injection)");
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            }
            Fault::KillWorker(_) => {
                eprintln!("lockstep-node {node}: killing its worker at tick {t} (fault injection)");
                let _ = worker.kill(Signal::KILL);
            }
            Fault::StopWorker(_) => {
                eprintln!(
                    "lockstep-node {node}: stopping its worker at tick {t} (fault injection)"
                );
                let _ = worker.kill(Signal::STOP);
            }
        }
    }
}

/// Deaths reported by the reaper, kept until the session of that pid asks.
#[derive(Debug, Default)]
struct Deaths {
    seen: Mutex<HashMap<u32, ChildExit>>,
    cv: Condvar,
}

impl Deaths {
    fn start(rx: std::sync::mpsc::Receiver<ChildExit>) -> Arc<Self> {
        let d = Arc::new(Self::default());
        let d2 = d.clone();
        std::thread::spawn(move || {
            for exit in rx {
                let mut seen = d2.seen.lock().unwrap_or_else(|p| p.into_inner());
                seen.insert(exit.pid, exit);
                d2.cv.notify_all();
            }
        });
        d
    }

    /// How `pid` died, waiting up to `wait`.
    fn of(&self, pid: u32, wait: Duration) -> Option<ChildExit> {
        let deadline = Instant::now() + wait;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(e) = seen.remove(&pid) {
                return Some(e);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            seen = self
                .cv
                .wait_timeout(seen, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// What every session shares.
#[derive(Debug)]
struct Node {
    name: String,
    rt: tokio::runtime::Handle,
    client: async_nats::Client,
    reaper: Reaper,
    deaths: Arc<Deaths>,
    jails: Mutex<Jails>,
    worker_bin: PathBuf,
    /// The inference host binary, if this node has one.
    host_bin: Option<PathBuf>,
    live: AtomicUsize,
    max_workers: usize,
    link_timeout: Duration,
    fault: Option<Fault>,
    /// Whether the fault fired (it fires once).
    fired: AtomicBool,
}

/// Runs a node until its NATS connection ends.
pub fn run(args: ServeArgs) -> Result<(), NodeError> {
    if !is_token(&args.name) {
        return Err(NodeError::Usage(format!(
            "--name {:?}: a node name is one word of letters, digits, `-` and `_` (at most 64)",
            args.name
        )));
    }
    let worker_bin = match args.worker_bin {
        Some(p) => p,
        None => {
            locate_binary("lockstep-worker", "LOCKSTEP_WORKER_BIN").map_err(NodeError::Usage)?
        }
    };
    let mut settings = SandboxSettings::default();
    if let Some(mode) = args.sandbox {
        settings.mode = mode;
    }
    let jails = Jails::new(settings).map_err(NodeError::Sandbox)?;
    let rt = runtime()?;
    let client = connect(&rt, &args.nats, &format!("lockstep-node {}", args.name))?;
    let (reaper, deaths) = Reaper::start().map_err(NodeError::Reaper)?;
    let mut opens = rt
        .block_on(client.subscribe(open_subject(&args.name)))
        .map_err(|e| NodeError::Nats(e.to_string()))?;
    rt.block_on(client.flush())
        .map_err(|e| NodeError::Nats(e.to_string()))?;
    let node = Arc::new(Node {
        name: args.name.clone(),
        rt: rt.handle().clone(),
        client: client.clone(),
        reaper,
        deaths: Deaths::start(deaths),
        jails: Mutex::new(jails),
        worker_bin,
        host_bin: locate_binary("lockstep-inference-host", "LOCKSTEP_INFERENCE_HOST_BIN").ok(),
        live: AtomicUsize::new(0),
        max_workers: args.max_workers,
        link_timeout: Duration::from_millis(args.link_timeout_ms.max(300)),
        fault: args.fault,
        fired: AtomicBool::new(false),
    });
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "lockstep-node {}: ready on {}", args.name, args.nats);
        let _ = out.flush();
    }
    while let Some(msg) = rt.block_on(opens.next()) {
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let answer = |r: OpenReply| {
            let bytes = postcard::to_allocvec(&r).expect("an open reply always encodes");
            let _ = node.rt.block_on(
                node.client
                    .publish(reply.clone(), bytes::Bytes::from(bytes)),
            );
        };
        let req: OpenRequest = match postcard::from_bytes(&msg.payload) {
            Ok(r) => r,
            Err(e) => {
                answer(OpenReply::Refused {
                    reason: format!("undecodable open request: {e}"),
                });
                continue;
            }
        };
        if let Err(reason) = admit(&node, &req) {
            tracing::warn!(node = %node.name, worker = %req.name, %reason, "refused");
            answer(OpenReply::Refused { reason });
            continue;
        }
        node.live.fetch_add(1, Ordering::SeqCst);
        let n = node.clone();
        std::thread::spawn(move || {
            session(&n, &req, reply.to_string());
            n.live.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Err(NodeError::Nats(
        "the connection to the NATS server ended".to_owned(),
    ))
}

/// Whether the node takes the request.
fn admit(node: &Node, req: &OpenRequest) -> Result<(), String> {
    if !is_token(&req.session) || !is_token(&req.name) {
        return Err("the session id or worker name is not a subject word".to_owned());
    }
    if req.build != env!("CARGO_PKG_VERSION") {
        return Err(format!(
            "build {} here, {} in the supervisor",
            env!("CARGO_PKG_VERSION"),
            req.build
        ));
    }
    req.role.validate()?;
    if node.live.load(Ordering::SeqCst) >= node.max_workers {
        return Err(format!(
            "already hosting {} workers (--max-workers)",
            node.max_workers
        ));
    }
    Ok(())
}

/// One hosted worker, from its start to the end of its link.
fn session(node: &Node, req: &OpenRequest, reply: String) {
    let answer = |r: OpenReply| {
        let bytes = postcard::to_allocvec(&r).expect("an open reply always encodes");
        let _ = node.rt.block_on(
            node.client
                .publish(reply.clone(), bytes::Bytes::from(bytes)),
        );
    };
    let local = format!("{}-{}", req.name, req.session);
    let (mut child, killer) = match start(node, req, &local) {
        Ok(c) => c,
        Err(reason) => {
            tracing::warn!(node = %node.name, worker = %req.name, %reason, "could not start");
            answer(OpenReply::Refused { reason });
            return;
        }
    };
    let pid = child.pid();
    let sub = node
        .rt
        .block_on(node.client.subscribe(down_subject(&req.session)));
    let sub = match sub {
        Ok(s) if node.rt.block_on(node.client.flush()).is_ok() => s,
        _ => {
            answer(OpenReply::Refused {
                reason: "cannot subscribe on NATS".to_owned(),
            });
            child.kill_and_wait(Duration::from_secs(5));
            return;
        }
    };
    answer(OpenReply::Ready {
        sandbox: child.sandbox().cloned().unwrap_or_default(),
        pid,
    });
    tracing::info!(node = %node.name, worker = %req.name, pid, "hosting");
    let up = LinkTx::new(
        node.rt.clone(),
        node.client.clone(),
        up_subject(&req.session),
    );
    let mut down = LinkRx::new(node.rt.clone(), sub);
    let failed = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    // When the peer was last heard from.
    let heard = std::sync::Mutex::new(Instant::now());
    let Endpoint { tx, rx, .. } = child.endpoint();
    std::thread::scope(|s| {
        // Beats while the worker is healthy.
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(BEAT_EVERY);
                if !failed.load(Ordering::Relaxed) && up.send(Body::Beat).is_err() {
                    break;
                }
            }
        });
        // Worker → bridge.
        s.spawn(|| {
            let failure = loop {
                match rx.recv_msg::<Up>(None) {
                    Ok(msg) => {
                        if up.message(&msg).is_err() {
                            break Failure::Lost;
                        }
                    }
                    Err(ChannelError::PeerGone(PeerGone::Hung { .. })) => break Failure::Hung,
                    Err(_) => {
                        break match node.deaths.of(pid, Duration::from_secs(2)).map(|d| d.kind) {
                            Some(ExitKind::Exited(code)) => Failure::Exited(code),
                            Some(ExitKind::Signaled { signal, .. }) => Failure::Signaled(signal),
                            _ => Failure::Lost,
                        };
                    }
                }
            };
            failed.store(true, Ordering::Relaxed);
            tracing::info!(node = %node.name, worker = %req.name, ?failure, "worker ended");
            let _ = up.send(Body::Failed(failure));
            let _ = up.flush();
        });
        // Bridge → worker (this thread).
        let why = loop {
            let ev = match down.next(BEAT_EVERY) {
                Ok(Received::Event(ev)) => ev,
                Ok(Received::Nothing) => {
                    let silent = heard.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
                    if silent > node.link_timeout {
                        break format!("no word from the bridge for {} ms", silent.as_millis());
                    }
                    continue;
                }
                Ok(Received::Ended) => break "the NATS connection closed".to_owned(),
                Err(e) => break e.to_string(),
            };
            *heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            match ev {
                Event::Message(bytes) => {
                    let msg: Down = match postcard::from_bytes(&bytes) {
                        Ok(m) => m,
                        Err(e) => break format!("undecodable command: {e}"),
                    };
                    if let (Some(f), Down::Worker(WorkerCommand::Tick(work))) = (node.fault, &msg)
                        && f.tick() == work.tick
                        && !node.fired.swap(true, Ordering::SeqCst)
                    {
                        f.inject(&node.name, &killer);
                    }
                    if let Err(e) = tx.send_msg(&msg, None) {
                        break format!("the worker's ring: {e}");
                    }
                }
                Event::Beat => {}
                Event::Close => break "closed by the bridge".to_owned(),
                Event::Failed(_) => break "a bridge reported a failure".to_owned(),
            }
        };
        tracing::info!(node = %node.name, worker = %req.name, %why, "link ended");
        let _ = killer.kill(rustix::process::Signal::KILL);
        // The worker's death ends the uplink thread; the beats follow.
        while !failed.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
        done.store(true, Ordering::Relaxed);
    });
    child.kill_and_wait(Duration::from_secs(5));
}

/// Starts and handshakes one sandboxed worker; returns it and a pidfd to
/// kill it with while its endpoint is in use.
fn start(node: &Node, req: &OpenRequest, local: &str) -> Result<(Child, PidFd), String> {
    let (class, role, program, mut args, ring) = match &req.role {
        Hosted::Worker => (
            ChildClass::Worker,
            Role::Worker,
            node.worker_bin.clone(),
            Vec::new(),
            WORKER_RING,
        ),
        Hosted::Inference {
            device,
            intra_threads,
        } => (
            ChildClass::Inference,
            Role::InferenceHost,
            node.host_bin
                .clone()
                .ok_or_else(|| "this node has no lockstep-inference-host next to it".to_owned())?,
            vec![
                "--device".into(),
                device.into(),
                "--intra-threads".into(),
                intra_threads.to_string().into(),
            ],
            HOST_RING,
        ),
    };
    let prepared = node
        .jails
        .lock()
        .map_err(|_| "the jails' lock is poisoned".to_owned())?
        .prepare(class, local, None)?;
    args.extend(prepared.args);
    if req.wait_yield && role == Role::Worker {
        args.push("--wait-yield".into());
    }
    let spec = ChildSpec {
        role,
        name: local.to_owned(),
        program,
        args,
        rings: SegmentConfig {
            to_attacher: ring,
            to_creator: ring,
        },
        // On a machine with no core to spare the node's side of the ring
        // yields rather than spins, as the supervisor's does.
        policy: WaitPolicy {
            yielding: req.wait_yield,
            ..WaitPolicy::ADAPTIVE
        },
        env: prepared.env,
        cgroup: prepared.cgroup,
        hang_timeout: Some(Duration::from_millis(req.hang_ms.max(1))),
    };
    let mut child = Child::spawn(&spec, &node.reaper).map_err(|e| chain(&e))?;
    let killer = PidFd::open(child.pid()).map_err(|e| format!("pidfd: {e}"))?;
    if let Err(e) = child.handshake(Duration::from_secs(30)) {
        child.kill_and_wait(Duration::from_secs(5));
        let how = node
            .deaths
            .of(child.pid(), Duration::from_millis(500))
            .map(|d| format!(" ({})", d.kind))
            .unwrap_or_default();
        return Err(format!("{}{how}", chain(&e)));
    }
    Ok((child, killer))
}
