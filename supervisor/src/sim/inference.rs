//! The inference pipeline's deterministic side: which requests are
//! outstanding, when each one's answer is delivered, and delivering them.
//!
//! A request made in tick `t` to a model declared with `latency_ticks = d`
//! is answered after the barrier of tick `t + d − 1` and received by its
//! agent in tick `t + d`, whatever the machine's speed: the run sends it
//! to the inference host right after tick `t`'s barrier and waits for its
//! answer only at tick `t + d − 1`'s, so the ticks in between run while the
//! model computes.  The version that answers is fixed when the request is
//! made ([`InferRequest::pinned`]), so a model swap in between changes
//! nothing for it.  Outstanding requests are part of the state (and of
//! every snapshot), so a resumed, replayed or forked run sends them again.

use super::{InferAnswer, InferRequest, RUNTIME_SENDER, SimState, WireMessage, kind};
use std::collections::BTreeSet;

/// The first character of a pinned model that no model can answer; the
/// rest is the error the agent gets ([`SimState::pin_model`]).
pub const UNANSWERABLE: char = '!';

impl InferRequest {
    /// A request asked now and answered at the next tick, its version to be
    /// resolved when it is sent (for callers outside a run, e.g. tests of
    /// the inference service).
    pub fn new(agent: u64, request_id: u64, model: &str, input: Vec<u8>) -> Self {
        Self {
            agent,
            request_id,
            model: model.to_owned(),
            pinned: String::new(),
            asked: 0,
            due: 0,
            input,
        }
    }
}

impl SimState {
    /// The model version that answers a request naming `model` now,
    /// decided here, from the state alone, so that a request's fate never
    /// depends on when it reaches the inference host (a resumed run sends
    /// the outstanding ones again, maybe after a load or an unload):
    ///
    /// * `id@version` for a loaded version (the model's current one unless
    ///   the request names one);
    /// * [`ECHO`](crate::inference::ECHO_MODEL) for the built-in model when
    ///   no loaded model has that id;
    /// * otherwise `!` followed by the error the agent gets (an unknown
    ///   model or version): [`UNANSWERABLE`].
    pub fn pin_model(&self, model: &str) -> String {
        let (id, version) = match model.split_once('@') {
            Some((id, v)) => (id, Some(v)),
            None => (model, None),
        };
        let Some(versions) = self.model_catalog.get(id) else {
            return if model == crate::inference::ECHO_MODEL {
                model.to_owned()
            } else {
                format!("{UNANSWERABLE}unknown model `{model}`")
            };
        };
        let version = version.or_else(|| self.model_versions.get(id).map(String::as_str));
        match version {
            Some(v) if versions.contains(v) => format!("{id}@{v}"),
            Some(v) => {
                let known: Vec<&str> = versions.iter().map(String::as_str).collect();
                format!(
                    "{UNANSWERABLE}model `{id}` has no version `{v}` (loaded: {})",
                    known.join(", ")
                )
            }
            None => format!("{UNANSWERABLE}unknown model `{model}`"),
        }
    }

    /// Requests still outstanding for versions being unloaded get the
    /// error `why` when they are due (whatever the host answers).
    pub(crate) fn unanswerable(&mut self, pinned: &BTreeSet<String>, why: &str) {
        for r in self.infer_pending.values_mut().flatten() {
            if pinned.contains(&r.pinned) {
                r.pinned = format!("{UNANSWERABLE}{why}");
            }
        }
    }

    /// Moves the requests collected at this tick's barrier to the
    /// outstanding ones and returns them (to be sent to the host now).
    pub fn take_new_inference(&mut self) -> Vec<InferRequest> {
        let fresh = std::mem::take(&mut self.infer_queue);
        for r in &fresh {
            self.infer_pending.entry(r.due).or_default().push(r.clone());
        }
        fresh
    }

    /// Removes and returns the outstanding requests whose answers are
    /// delivered after `tick`'s barrier, in the order they were asked.
    pub fn take_due_inference(&mut self, tick: u64) -> Vec<InferRequest> {
        let mut due = Vec::new();
        // Requests due earlier cannot remain (each tick takes its own), but
        // a state restored from an older build could hold some: answer them
        // now rather than never.
        while let Some(entry) = self.infer_pending.first_entry() {
            if *entry.key() > tick {
                break;
            }
            due.extend(entry.remove());
        }
        due.sort_by_key(|r| r.asked);
        due
    }

    /// Every outstanding request, in the order they were asked (what a
    /// restored run sends to its inference host again).
    pub fn pending_inference(&self) -> Vec<InferRequest> {
        let mut all: Vec<InferRequest> = self.infer_pending.values().flatten().cloned().collect();
        all.sort_by_key(|r| r.asked);
        all
    }

    /// How many requests are outstanding.
    pub fn inference_in_flight(&self) -> usize {
        self.infer_pending.values().map(Vec::len).sum()
    }

    /// Delivers the answers of `requests` (same order) for the next tick and
    /// folds their hashes into the chain; returns each answer's hash.
    pub fn deliver_answers(
        &mut self,
        requests: &[InferRequest],
        answers: &[InferAnswer],
    ) -> Vec<[u8; 32]> {
        let tick = self.tick;
        let mut drops = 0;
        let mut hashes = Vec::with_capacity(answers.len());
        let mut h = blake3::Hasher::new();
        h.update(b"lockstep-answers-v1");
        h.update(&self.hash);
        for (r, a) in requests.iter().zip(answers) {
            // Decided by the state, not by the host (see `pin_model`).
            let overridden;
            let a = match r.pinned.strip_prefix(UNANSWERABLE) {
                Some(why) if a.result.as_ref().err().is_none_or(|e| e != why) => {
                    overridden = InferAnswer {
                        agent: a.agent,
                        request_id: a.request_id,
                        result: Err(why.to_owned()),
                    };
                    &overridden
                }
                _ => a,
            };
            let ah = *blake3::hash(&shm_protocol::codec::encode(a).unwrap_or_default()).as_bytes();
            h.update(&ah);
            hashes.push(ah);
            let (k, payload) = match &a.result {
                Ok(t) => (kind::INFER_OK, t.clone()),
                Err(e) => (kind::INFER_ERR, e.clone().into_bytes()),
            };
            let msg = WireMessage {
                kind: k,
                sender: RUNTIME_SENDER,
                sent_tick: tick,
                seq: a.request_id,
                topic: r.model.clone(),
                payload: payload.into(),
            };
            self.push_message(a.agent, msg, &mut drops);
        }
        if !answers.is_empty() {
            self.hash = *h.finalize().as_bytes();
        }
        hashes
    }
}
