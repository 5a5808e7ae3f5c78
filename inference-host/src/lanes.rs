//! Model lanes: each model id runs on a thread of its own, so that a slow
//! model never holds up the answers of a fast one.
//!
//! The main thread receives commands and hands each model's (`LoadModel`,
//! `UnloadModel`, `Infer`) to that model's lane, started at its first
//! command; the lane runs them in arrival order on a registry of its own
//! and sends each reply itself, through the sending half of the ring shared
//! by every lane.  Replies of different models may therefore arrive in any
//! order, each tied to its batch id; a model's own replies keep the order
//! of its commands.  Every session runs with the same options whatever the
//! lanes do, so an answer never depends on what else runs at the time.

use crate::answer::{fit_reply, handle, rss_bytes};
use lockstep_common::Activity;
use lockstep_inference_host::{ModelRegistry, RssSampler};
use shm_protocol::Sender;
use shm_protocol::bootstrap::{Reply, send_all, send_failure};
use shm_protocol::control::{ExitCode, Up};
use shm_protocol::inference::{InferenceCommand, InferenceReply, ModelStatus};
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Work for a lane.
enum Job {
    /// A command for the lane's model.
    Command(InferenceCommand),
    /// Report the lane's models.
    Status(mpsc::Sender<Vec<ModelStatus>>),
}

/// What every lane shares.
#[derive(Clone)]
struct Shared {
    tx: Arc<Mutex<Sender>>,
    rss: Arc<Mutex<RssSampler>>,
    activity: Arc<Activity>,
    max_reply: usize,
}

/// The lanes of a host process.
pub struct Lanes {
    /// The registry lanes are made from (runtime, options, CUDA state).
    base: ModelRegistry,
    shared: Shared,
    lanes: BTreeMap<String, mpsc::Sender<Job>>,
}

impl Lanes {
    /// Lanes over `base`'s runtime, answering through `tx`.
    pub fn new(
        base: ModelRegistry,
        tx: Arc<Mutex<Sender>>,
        rss: Arc<Mutex<RssSampler>>,
        activity: Arc<Activity>,
        max_reply: usize,
    ) -> Self {
        Self {
            base,
            shared: Shared {
                tx,
                rss,
                activity,
                max_reply,
            },
            lanes: BTreeMap::new(),
        }
    }

    /// Takes one command: a model's command goes to its lane (which
    /// answers it), a status request is answered here from every lane.
    pub fn dispatch(&mut self, cmd: InferenceCommand) -> Reply {
        let model = match &cmd {
            InferenceCommand::LoadModel { id, .. }
            | InferenceCommand::UnloadModel { id, .. }
            | InferenceCommand::Infer { model_id: id, .. } => id.clone(),
            InferenceCommand::Status => return Reply::Send(self.status()),
        };
        if let InferenceCommand::UnloadModel { id, .. } = &cmd
            && !self.lanes.contains_key(id)
        {
            return Reply::Send(Up::Inference(InferenceReply::Unloaded {
                id: id.clone(),
                versions: Vec::new(),
            }));
        }
        let lane = match self.lane(&model) {
            Ok(l) => l,
            Err(e) => {
                return Reply::Send(Up::Error {
                    message: format!("cannot start the lane of model `{model}`: {e}"),
                });
            }
        };
        if lane.send(Job::Command(cmd)).is_err() {
            // A lane ends only with the process (a panic exits it).
            ExitCode::Internal.exit();
        }
        Reply::None
    }

    /// The lane of `model`, started if it is new.
    fn lane(&mut self, model: &str) -> std::io::Result<&mpsc::Sender<Job>> {
        if !self.lanes.contains_key(model) {
            let (jobs, inbox) = mpsc::channel();
            let registry = self.base.sibling();
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name("lockstep-lane".into())
                .spawn(move || run(registry, &inbox, &shared))?;
            self.lanes.insert(model.to_owned(), jobs);
        }
        Ok(&self.lanes[model])
    }

    /// Every lane's models, by id then version.
    fn status(&self) -> Up {
        let mut models = Vec::new();
        for lane in self.lanes.values() {
            let (tx, rx) = mpsc::channel();
            if lane.send(Job::Status(tx)).is_ok()
                && let Ok(m) = rx.recv()
            {
                models.extend(m);
            }
        }
        Up::Inference(InferenceReply::Status {
            models,
            rss_bytes: rss_bytes(&self.shared.rss),
            gpu_mem_bytes: None,
        })
    }
}

/// A lane's loop: runs its commands in order and sends each reply.
fn run(mut registry: ModelRegistry, inbox: &mpsc::Receiver<Job>, shared: &Shared) {
    for job in inbox {
        match job {
            Job::Command(cmd) => {
                let reply = {
                    let _busy = shared.activity.busy();
                    fit_reply(handle(&mut registry, &shared.rss, cmd), shared.max_reply)
                };
                let sent = match shared.tx.lock() {
                    Ok(mut tx) => send_all(&mut tx, &[reply]),
                    Err(_) => ExitCode::Internal.exit(),
                };
                if let Err(e) = sent {
                    send_failure(&e).exit();
                }
            }
            Job::Status(answer) => {
                let _ = answer.send(registry.status());
            }
        }
    }
}
