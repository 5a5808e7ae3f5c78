//! The bridge: the supervisor's local stand-in for a worker on another
//! machine.
//!
//! The supervisor starts `lockstep-node --shm-fd 3 --name worker-N …` for a
//! worker slot placed on a node exactly as it starts `lockstep-worker`: a
//! child with a segment, a handshake, a heartbeat.  The bridge asks the
//! first node of its list that answers (`--node a --node b …`, the slot's
//! own node first) to host a sandboxed worker, says ready with that
//! worker's sandbox report, and from then on carries every message of the
//! worker protocol both ways, unchanged.  The supervisor's tick state
//! machine cannot tell the difference, which is why a run's journal and
//! hashes do not depend on where its workers run.
//!
//! The bridge repeats how its worker ended, so the supervisor classifies a
//! remote failure exactly like a local one: a worker that exited with a
//! code makes the bridge exit with it, one a signal killed makes the
//! bridge raise the same signal, and a hung one makes the bridge stop its
//! heartbeat (the supervisor then sees the hang itself).  A node that goes
//! silent, a broken packet sequence, or no node willing to host the worker
//! ends the bridge with exit code 82 (`NodeLost`); the supervisor's
//! recovery then starts a new bridge, which moves to the next node.

use crate::link::{LinkRx, LinkTx, Received, connect, runtime};
use crate::wire::{
    BEAT_EVERY, Body, Event, Failure, Hosted, OpenReply, OpenRequest, down_subject, is_token,
    open_subject, up_subject,
};
use lockstep_common::ChildArgs;
use shm_protocol::control::{Down, ExitCode, Role, Up, exit_with};
use shm_protocol::{ChannelError, Endpoint};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// `lockstep-node --shm-fd …`: bridge one worker slot to a node.
#[derive(Debug, clap::Args)]
pub struct BridgeArgs {
    /// The segment and name the supervisor gives every child.
    #[command(flatten)]
    pub child: ChildArgs,
    /// The NATS server (`nats://host:port`).
    #[arg(long)]
    pub nats: String,
    /// Nodes to ask, in order (the slot's own node first).
    #[arg(long = "node", required = true)]
    pub nodes: Vec<String>,
    /// Longest heartbeat silence of the remote worker while it owes an
    /// answer (the run's hang timeout).
    #[arg(long, default_value_t = 1000)]
    pub hang_ms: u64,
    /// Stand in for the inference host on this device (`cpu`, `auto`,
    /// `cuda`, `cuda:N`) instead of a worker.
    #[arg(long)]
    pub inference_device: Option<String>,
    /// The inference host's intra-op threads per model session.
    #[arg(long, default_value_t = 1)]
    pub intra_threads: u16,
    /// Longest silence of the node before the link counts as lost, ms
    /// (default: the hang timeout).
    #[arg(long)]
    pub link_timeout_ms: Option<u64>,
}

/// A fresh link id: unique among the links of one NATS server (the
/// transport only; nothing of it reaches a run's results).
fn session_id() -> String {
    let mut seed = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut seed);
    }
    format!(
        "{}-{:016x}",
        std::process::id(),
        u64::from_le_bytes(seed) ^ Instant::now().elapsed().as_nanos() as u64
    )
}

/// Runs the bridge; never returns.
pub fn run(args: BridgeArgs) -> ! {
    let source = args.child.open_source();
    let (role, hosted) = match &args.inference_device {
        Some(device) => (
            Role::InferenceHost,
            Hosted::Inference {
                device: device.clone(),
                intra_threads: args.intra_threads,
            },
        ),
        None => (Role::Worker, Hosted::Worker),
    };
    let (mut ep, name) = lockstep_common::connect_or_exit(&args.child, &source, role);
    let refuse = |ep: &mut Endpoint, msg: String| -> ! {
        tracing::error!(%name, error = %msg, "cannot bring up the remote worker");
        let _ = ep.send_msg(
            &Up::Error {
                message: format!("{name}: {msg}"),
            },
            Some(Instant::now() + Duration::from_secs(1)),
        );
        ExitCode::NodeLost.exit()
    };
    if let Some(bad) = args.nodes.iter().find(|n| !is_token(n)) {
        refuse(
            &mut ep,
            format!("node name {bad:?} is not a single word of letters, digits, `-`, `_`"),
        );
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => refuse(&mut ep, e.to_string()),
    };
    let client = match connect(&rt, &args.nats, &format!("lockstep bridge {name}")) {
        Ok(c) => c,
        Err(e) => refuse(&mut ep, e.to_string()),
    };
    let session = session_id();
    let up = match rt.block_on(client.subscribe(up_subject(&session))) {
        Ok(s) => s,
        Err(e) => refuse(&mut ep, format!("cannot subscribe on NATS: {e}")),
    };
    let req = OpenRequest {
        session: session.clone(),
        name: name.clone(),
        build: env!("CARGO_PKG_VERSION").to_owned(),
        hang_ms: args.hang_ms,
        wait_yield: args.child.wait_yield,
        role: hosted,
    };
    let payload = postcard::to_allocvec(&req).expect("an open request always encodes");
    let mut refusals = Vec::new();
    let mut opened = None;
    for node in &args.nodes {
        let reply =
            rt.block_on(client.request(open_subject(node), bytes::Bytes::from(payload.clone())));
        match reply.map(|m| postcard::from_bytes::<OpenReply>(&m.payload)) {
            Ok(Ok(OpenReply::Ready { sandbox, pid })) => {
                opened = Some((node.clone(), sandbox, pid));
                break;
            }
            Ok(Ok(OpenReply::Refused { reason })) => refusals.push(format!("{node}: {reason}")),
            Ok(Err(e)) => refusals.push(format!("{node}: undecodable answer ({e})")),
            Err(e) => refusals.push(format!("{node}: {e}")),
        }
    }
    let Some((node, mut sandbox, pid)) = opened else {
        refuse(
            &mut ep,
            format!("no node would host it ({})", refusals.join("; ")),
        )
    };
    for r in &refusals {
        tracing::warn!(%name, refusal = %r, "a node did not host the worker");
    }
    tracing::info!(%name, %node, pid, %session, "remote worker ready");
    sandbox.class = format!("{} on node {node}", sandbox.class);
    lockstep_common::ready_or_exit(&mut ep, sandbox);

    // When the peer was last heard from.
    let heard = std::sync::Mutex::new(Instant::now());
    let hung = AtomicBool::new(false);
    let link_timeout = Duration::from_millis(args.link_timeout_ms.unwrap_or(args.hang_ms).max(300));
    let down = LinkTx::new(rt.handle().clone(), client.clone(), down_subject(&session));
    let mut up = LinkRx::new(rt.handle().clone(), up);
    let status = ep.segment().status();
    let Endpoint { tx, rx, .. } = &mut ep;
    let lost = |why: String| -> ! {
        eprintln!("lockstep-node: {name}: lost node {node}: {why}");
        ExitCode::NodeLost.exit()
    };
    std::thread::scope(|s| {
        // Supervisor → node.  Waiting on the ring beats this side's
        // heartbeat, so once the node reports its worker hung this thread
        // stops waiting: the supervisor then sees the hang.
        s.spawn(|| {
            loop {
                if hung.load(Ordering::Relaxed) {
                    std::thread::sleep(BEAT_EVERY);
                    continue;
                }
                match rx.recv_msg::<Down>(Some(Instant::now() + BEAT_EVERY)) {
                    Ok(msg) => {
                        if let Err(e) = down.message(&msg) {
                            lost(e.to_string());
                        }
                    }
                    Err(ChannelError::Timeout) => {}
                    Err(e) => {
                        let _ = down.send(Body::Close);
                        let _ = down.flush();
                        shm_protocol::bootstrap::send_failure(&e).exit();
                    }
                }
            }
        });
        // Beats to the node, and the node's silence.
        s.spawn(|| {
            loop {
                std::thread::sleep(BEAT_EVERY);
                if let Err(e) = down.send(Body::Beat) {
                    lost(e.to_string());
                }
                // A node that reported its worker hung has said its last
                // word: the supervisor's hang detection takes over.
                let silent = heard.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
                if silent > link_timeout && !hung.load(Ordering::Relaxed) {
                    lost(format!("no word from it for {} ms", silent.as_millis()));
                }
            }
        });
        // Node → supervisor.
        loop {
            let ev = match up.next(BEAT_EVERY) {
                Ok(Received::Nothing) => continue,
                Ok(Received::Ended) => lost("the NATS connection closed".to_owned()),
                Ok(Received::Event(ev)) => ev,
                Err(e) => lost(e.to_string()),
            };
            *heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            match ev {
                Event::Beat => {
                    if !hung.load(Ordering::Relaxed) {
                        status.beat();
                    }
                }
                Event::Message(bytes) => {
                    let msg: Up = match postcard::from_bytes(&bytes) {
                        Ok(m) => m,
                        Err(e) => {
                            eprintln!("lockstep-node: {name}: undecodable answer from {node}: {e}");
                            ExitCode::Protocol.exit()
                        }
                    };
                    let done = matches!(msg, Up::ShutdownAck);
                    if let Err(e) = tx.send_msg(&msg, None) {
                        shm_protocol::bootstrap::send_failure(&e).exit();
                    }
                    if done {
                        let _ = down.send(Body::Close);
                        let _ = down.flush();
                        ExitCode::Ok.exit();
                    }
                }
                Event::Failed(Failure::Exited(code)) => {
                    eprintln!("lockstep-node: {name} on {node} exited with code {code}");
                    exit_with(code)
                }
                Event::Failed(Failure::Signaled(sig)) => {
                    eprintln!("lockstep-node: {name} on {node} was killed by signal {sig}");
                    if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
                        let _ = nix::sys::signal::raise(sig);
                    }
                    exit_with(128 + sig)
                }
                Event::Failed(Failure::Hung) => {
                    eprintln!("lockstep-node: {name} on {node} is hung");
                    hung.store(true, Ordering::Relaxed);
                }
                Event::Failed(Failure::Lost) | Event::Close => {
                    lost("it dropped the worker".to_owned())
                }
            }
        }
    })
}
