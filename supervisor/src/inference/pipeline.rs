//! Batches in flight: requests are sent to the host when they are asked
//! ([`InferenceService::submit`]) and their answers are waited for only
//! when they are due ([`InferenceService::collect`]), so that the ticks in
//! between run while the host computes.
//!
//! The host runs each model on a lane of its own and answers each command
//! with one reply tied to its batch id, a model's in the order sent, those
//! of different models in any order; the service keeps the batches sent and
//! not answered and files each reply under its batch.  When
//! the host fails (any [`Cause`]), every batch still in flight is sent
//! again, once, in the same order, to a fresh host (after the failure limit
//! of a batch, its requests are answered with errors instead).  Answers
//! wait in the service until the run collects them: when they arrived never
//! changes what they are or when an agent sees them.

use super::{ECHO_MODEL, InferenceService, MAX_INPUT_BYTES, Resolved};
use crate::failure::Cause;
use crate::journal::BUILTIN_DEVICE;
use crate::sim::{InferAnswer, InferRequest, UNANSWERABLE};
use crate::telemetry::InferenceTelemetry;
use shm_protocol::control::{Down, Up};
use shm_protocol::inference::{InferenceCommand, InferenceReply, InferenceRequest, Tensor};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One command sent to the host and not answered yet.
#[derive(Debug, Clone)]
pub(super) struct Batch {
    id: u64,
    /// The tick its requests were asked in.
    asked: u64,
    model: String,
    version: String,
    max_batch: u32,
    /// `(agent, request id)` of each request (its `request_key` is its
    /// index here).
    members: Vec<(u64, u64)>,
    requests: Vec<InferenceRequest>,
    /// Sends so far.
    attempts: u32,
    /// Host restarts it went through.
    restarts: u64,
    /// When it was first sent.
    first_sent: Instant,
    /// When it was last sent (its deadline counts from here).
    last_sent: Instant,
}

/// What [`InferenceService::collect`] returns.
#[derive(Debug, Default)]
pub struct Collected {
    /// One answer per request asked for, in the same order.
    pub answers: Vec<InferAnswer>,
    /// The device that computed each answer (`builtin`, `cpu`, `cuda:0`…),
    /// in the same order.
    pub devices: Vec<String>,
    /// One record per batch answered since the last collection (and one
    /// for the built-in model per submission that used it).
    pub telemetry: Vec<InferenceTelemetry>,
    /// How long the run waited for the host.
    pub waited: Duration,
    /// Batches still in flight afterwards.
    pub in_flight: usize,
}

type Key = (u64, u64);

/// The "agent" of the requests asked from outside the run (no agent has
/// this id).
const OUTSIDE: u64 = u64::MAX;

impl InferenceService {
    /// Sends the requests asked in tick `asked` to the host, one command
    /// per `(model, version)` (the versions pinned when they were asked),
    /// without waiting for the answers; the built-in model and requests
    /// that cannot be sent (an unknown model, a malformed tensor) are
    /// answered at once.
    pub fn submit(&mut self, asked: u64, requests: &[InferRequest]) {
        let t0 = Instant::now();
        if self.host.is_some()
            && let Some(d) = self.host_died()
        {
            let cause = Cause::from_death(&d, self.host_oom_kills());
            self.recover(asked, cause, "found dead before a batch: restarting it");
        }
        let mut groups: BTreeMap<(String, String), Vec<(Key, Tensor)>> = BTreeMap::new();
        let mut echoed = 0u64;
        for q in requests {
            let key = (q.agent, q.request_id);
            // The state pinned the version (or the error) when the request
            // was asked: a bare name is the built-in model whatever is
            // loaded now.
            let resolved = if let Some(why) = q.pinned.strip_prefix(UNANSWERABLE) {
                Resolved::Error(why.to_owned())
            } else if q.pinned == ECHO_MODEL {
                Resolved::Echo
            } else {
                self.resolve(&q.pinned, &BTreeMap::new())
            };
            let answer = match resolved {
                Resolved::Echo => {
                    echoed += 1;
                    Ok(q.input.clone())
                }
                Resolved::Error(e) => Err(e),
                Resolved::Model(id, version) => match Tensor::decode_abi(&q.input) {
                    Err(e) => Err(format!("malformed input tensor for model `{id}`: {e}")),
                    Ok(t) if t.data().len() > MAX_INPUT_BYTES => Err(format!(
                        "input tensor of {} bytes exceeds the inference limit of {MAX_INPUT_BYTES} bytes",
                        t.data().len()
                    )),
                    Ok(t) => {
                        groups.entry((id, version)).or_default().push((key, t));
                        continue;
                    }
                },
            };
            self.ready.insert(key, (answer, BUILTIN_DEVICE.to_owned()));
        }
        if echoed > 0 {
            let us = t0.elapsed().as_micros() as u64;
            self.telemetry.push(InferenceTelemetry {
                tick: asked,
                model: ECHO_MODEL.into(),
                requests: echoed,
                batches: 1,
                max_batch: echoed,
                latency_us: us,
                run_us: us,
                device: "builtin".into(),
                ..InferenceTelemetry::default()
            });
        }
        for ((id, version), group) in groups {
            let max_batch = self
                .index
                .get(&(id.clone(), version.clone()))
                .and_then(|&k| self.models.get(k))
                .map_or(1, |m| m.def.max_batch);
            let now = Instant::now();
            let batch = Batch {
                id: 0,
                asked,
                model: id,
                version,
                max_batch,
                members: group.iter().map(|(k, _)| *k).collect(),
                requests: group
                    .into_iter()
                    .enumerate()
                    .map(|(i, (_, t))| InferenceRequest {
                        request_key: i as u64,
                        input_name: None,
                        tensor: t,
                    })
                    .collect(),
                attempts: 0,
                restarts: 0,
                first_sent: now,
                last_sent: now,
            };
            self.inflight.push_back(batch);
            let last = self.inflight.len() - 1;
            if let Err(cause) = self.transmit(last) {
                self.recover(
                    asked,
                    cause,
                    "restarting it and re-sending the batches in flight",
                );
            }
        }
    }

    /// Waits until every request of `requests` is answered (receiving the
    /// replies of the batches in flight as they come, and recovering from any host failure on the way) and returns their
    /// answers in the same order, with the telemetry gathered since the
    /// last call.  `tick` names the tick in logs.
    pub fn collect(&mut self, tick: u64, requests: &[InferRequest]) -> Collected {
        let t0 = Instant::now();
        loop {
            let missing = requests
                .iter()
                .any(|r| !self.ready.contains_key(&(r.agent, r.request_id)));
            if !missing || self.inflight.is_empty() {
                break;
            }
            if let Err(cause) = self.receive_one() {
                self.recover(
                    tick,
                    cause,
                    "restarting it and re-sending the batches in flight",
                );
            }
        }
        let waited = t0.elapsed();
        let mut devices = Vec::with_capacity(requests.len());
        let answers = requests
            .iter()
            .map(|r| {
                let (result, device) = self
                    .ready
                    .remove(&(r.agent, r.request_id))
                    .unwrap_or_else(|| (Err("no answer".into()), BUILTIN_DEVICE.to_owned()));
                devices.push(device);
                InferAnswer {
                    agent: r.agent,
                    request_id: r.request_id,
                    result,
                }
            })
            .collect();
        Collected {
            answers,
            devices,
            telemetry: std::mem::take(&mut self.telemetry),
            waited,
            in_flight: self.inflight.len(),
        }
    }

    /// Answers a tick's queue at once: [`InferenceService::submit`] then
    /// [`InferenceService::collect`], the versions of requests that do not
    /// pin one taken from `current` (model id → version; the first declared
    /// version otherwise).
    pub fn infer(
        &mut self,
        tick: u64,
        queue: &[InferRequest],
        current: &BTreeMap<String, String>,
    ) -> (Vec<InferAnswer>, Vec<InferenceTelemetry>) {
        let pinned: Vec<InferRequest> = queue
            .iter()
            .map(|q| {
                let mut q = q.clone();
                if q.pinned.is_empty() {
                    q.pinned = match self.resolve(&q.model, current) {
                        Resolved::Model(id, v) => format!("{id}@{v}"),
                        _ => q.model.clone(),
                    };
                }
                q
            })
            .collect();
        self.submit(tick, &pinned);
        let c = self.collect(tick, &pinned);
        (c.answers, c.telemetry)
    }

    /// Answers `inputs` with model `id` at `version` for a caller outside
    /// the run (`infer`, `batch-infer`), between ticks: one batch, sent
    /// after the run's own in flight, whose answers go to the caller only
    /// (never to an agent, the journal or the tick hash).  The run's
    /// batches in flight are not disturbed: their answers wait for their
    /// ticks as always.
    pub fn infer_outside(
        &mut self,
        tick: u64,
        id: &str,
        version: &str,
        inputs: Vec<Tensor>,
    ) -> Vec<Result<Tensor, String>> {
        if !self
            .index
            .contains_key(&(id.to_owned(), version.to_owned()))
        {
            return vec![Err(format!("model `{id}` has no version `{version}`")); inputs.len()];
        }
        let max_batch = self
            .index
            .get(&(id.to_owned(), version.to_owned()))
            .and_then(|&k| self.models.get(k))
            .map_or(1, |m| m.def.max_batch);
        let mut out: Vec<Option<Result<Tensor, String>>> = vec![None; inputs.len()];
        let mut members = Vec::new();
        let mut requests = Vec::new();
        for (i, t) in inputs.into_iter().enumerate() {
            if t.data().len() > MAX_INPUT_BYTES {
                out[i] = Some(Err(format!(
                    "input tensor of {} bytes exceeds the inference limit of {MAX_INPUT_BYTES} bytes",
                    t.data().len()
                )));
                continue;
            }
            self.outside_seq += 1;
            members.push((OUTSIDE, self.outside_seq));
            requests.push((i, t));
        }
        if !members.is_empty() {
            let now = Instant::now();
            self.inflight.push_back(Batch {
                id: 0,
                asked: tick,
                model: id.to_owned(),
                version: version.to_owned(),
                max_batch,
                members: members.clone(),
                requests: requests
                    .iter()
                    .enumerate()
                    .map(|(k, (_, t))| InferenceRequest {
                        request_key: k as u64,
                        input_name: None,
                        tensor: t.clone(),
                    })
                    .collect(),
                attempts: 0,
                restarts: 0,
                first_sent: now,
                last_sent: now,
            });
            let last = self.inflight.len() - 1;
            if let Err(cause) = self.transmit(last) {
                self.recover(
                    tick,
                    cause,
                    "restarting it and re-sending the batches in flight",
                );
            }
            while members.iter().any(|k| !self.ready.contains_key(k)) && !self.inflight.is_empty() {
                if let Err(cause) = self.receive_one() {
                    self.recover(
                        tick,
                        cause,
                        "restarting it and re-sending the batches in flight",
                    );
                }
            }
            for (key, (i, _)) in members.iter().zip(&requests) {
                let r = self
                    .ready
                    .remove(key)
                    .map_or_else(|| Err("no answer".into()), |(r, _)| r)
                    .and_then(|abi| Tensor::decode_abi(&abi).map_err(|e| e.to_string()));
                out[*i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err("no answer".into())))
            .collect()
    }

    /// Batches sent and not answered.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Sends batch `i` of the in-flight list under a fresh batch id
    /// (starting a host if none runs).
    fn transmit(&mut self, i: usize) -> Result<(), Cause> {
        if self.host.is_none() {
            self.spawn_host().map_err(|e| Cause::Start(e.to_string()))?;
            self.restarts += 1;
            for b in &mut self.inflight {
                b.restarts += 1;
            }
        }
        let fresh = self.next_batch;
        let Some(b) = self.inflight.get_mut(i) else {
            return Ok(());
        };
        // Every send has its own id, so that a reply to an earlier send can
        // never be taken for this one.
        self.next_batch += 1;
        b.id = fresh;
        b.attempts += 1;
        b.last_sent = Instant::now();
        let cmd = Down::Inference(InferenceCommand::Infer {
            batch_id: b.id,
            model_id: b.model.clone(),
            version: Some(b.version.clone()),
            requests: b.requests.clone(),
            max_batch: b.max_batch,
        });
        let deadline = Some(Instant::now() + self.cfg.batch_timeout);
        let Some(host) = self.host.as_mut() else {
            return Err(Cause::Start("not running".into()));
        };
        host.child
            .endpoint()
            .send_msg(&cmd, deadline)
            .map_err(|e| self.channel_failure(e))
    }

    /// Receives the reply to one batch in flight and files its answers
    /// (the deadline is the oldest send's).
    pub(super) fn receive_one(&mut self) -> Result<(), Cause> {
        let Some(oldest) = self.inflight.iter().map(|b| b.last_sent).min() else {
            return Ok(());
        };
        let deadline = Some(oldest + self.cfg.batch_timeout);
        let Some(host) = self.host.as_mut() else {
            return Err(Cause::Start("not running".into()));
        };
        let up = match host.child.endpoint().recv_msg::<Up>(deadline) {
            Ok(up) => up,
            Err(e) => return Err(self.channel_failure(e)),
        };
        let got = match &up {
            Up::Inference(
                InferenceReply::Results { batch_id, .. } | InferenceReply::Refused { batch_id, .. },
            ) => Some(*batch_id),
            _ => None,
        };
        let Some(at) = got.and_then(|g| self.inflight.iter().position(|b| b.id == g)) else {
            // A reply to no batch in flight, or an error not tied to one
            // (e.g. about an undecodable command): the host is out of step.
            return Err(Cause::Protocol(match got {
                Some(g) => format!("answered batch {g}, which is not in flight"),
                None => format!("unexpected reply {}", super::describe(&up)),
            }));
        };
        let (batch_id, n) = (self.inflight[at].id, self.inflight[at].members.len());
        let (results, bt) = match up {
            Up::Inference(InferenceReply::Results {
                results, telemetry, ..
            }) => {
                if results.len() != n {
                    return Err(Cause::Protocol(format!(
                        "{} results for {n} requests",
                        results.len()
                    )));
                }
                let mut out = Vec::with_capacity(n);
                for (i, r) in results.into_iter().enumerate() {
                    if r.request_key != i as u64 {
                        return Err(Cause::Protocol(format!(
                            "result for key {} where key {i} was expected",
                            r.request_key
                        )));
                    }
                    out.push(match r.output {
                        Ok(t) => {
                            let abi = t.encode_abi();
                            if *blake3::hash(&abi).as_bytes() != r.output_blake3 {
                                return Err(Cause::Protocol(format!(
                                    "output hash mismatch for request key {i}"
                                )));
                            }
                            Ok(abi)
                        }
                        Err(e) => Err(e),
                    });
                }
                (out, Some(telemetry))
            }
            Up::Inference(InferenceReply::Refused { error, .. }) => (vec![Err(error); n], None),
            other => {
                return Err(Cause::Protocol(format!(
                    "unexpected reply {} to batch {batch_id}",
                    super::describe(&other)
                )));
            }
        };
        let Some(b) = self.inflight.remove(at) else {
            return Ok(());
        };
        // Answers (and refusals) of the host are its device's.
        let device = bt
            .as_ref()
            .map_or_else(|| self.device().to_owned(), |t| t.device.clone());
        self.answered(&b, results, bt, &device);
        Ok(())
    }

    /// Files the answers of batch `b`, computed on `device`, and its
    /// telemetry.
    fn answered(
        &mut self,
        b: &Batch,
        results: Vec<Result<Vec<u8>, String>>,
        bt: Option<shm_protocol::inference::BatchTelemetry>,
        device: &str,
    ) {
        let mut tel = InferenceTelemetry {
            tick: b.asked,
            model: b.model.clone(),
            version: b.version.clone(),
            requests: b.members.len() as u64,
            latency_us: b.first_sent.elapsed().as_micros() as u64,
            host_restarts: b.restarts,
            device: self.device().to_owned(),
            ..InferenceTelemetry::default()
        };
        if let Some(bt) = bt {
            tel.batches = u64::from(bt.batches);
            tel.max_batch = u64::from(bt.max_batch_size);
            tel.run_us = bt.run_ns / 1000;
            tel.queue_us = bt.queue_ns / 1000;
            tel.rss_bytes = bt.rss_bytes;
            tel.device = bt.device;
        }
        tel.errors = results.iter().filter(|r| r.is_err()).count() as u64;
        for (key, r) in b.members.iter().zip(results) {
            self.ready.insert(*key, (r, device.to_owned()));
        }
        self.telemetry.push(tel);
    }

    /// After a host failure: the host is discarded; every batch in flight
    /// that may still be tried is sent again, in order, to a fresh host;
    /// a batch that failed [`super::InferenceConfig::max_attempts`] times
    /// is answered with errors.
    pub(super) fn recover(&mut self, tick: u64, mut cause: Cause, what: &str) {
        let mut what = what.to_owned();
        loop {
            let waiting = self.inflight.len();
            self.note(
                tick,
                &cause,
                &format!("{what} ({waiting} batches in flight)"),
            );
            what = "restarting it and re-sending the batches in flight".into();
            self.discard_host();
            let limit = self.cfg.max_attempts.max(1);
            let failure = format!("inference host {cause}");
            let mut kept = std::collections::VecDeque::new();
            for b in std::mem::take(&mut self.inflight) {
                if b.attempts >= limit {
                    tracing::error!(
                        tick,
                        model = %b.model,
                        version = %b.version,
                        attempts = b.attempts,
                        "giving up on an inference batch: {failure}"
                    );
                    let e = format!(
                        "inference failed: the inference host failed {limit} times in a row ({failure})"
                    );
                    let n = b.members.len();
                    // The supervisor's own error, not the host's.
                    self.answered(&b, vec![Err(e); n], None, BUILTIN_DEVICE);
                } else {
                    kept.push_back(b);
                }
            }
            self.inflight = kept;
            if self.inflight.is_empty() {
                return;
            }
            let mut failed = None;
            for i in 0..self.inflight.len() {
                if let Err(c) = self.transmit(i) {
                    failed = Some(c);
                    break;
                }
            }
            match failed {
                None => return,
                Some(c) => {
                    // A host that cannot even be started counts as one
                    // more attempt for every batch waiting.
                    if self.host.is_none() {
                        for b in &mut self.inflight {
                            b.attempts += 1;
                        }
                    }
                    cause = c;
                }
            }
        }
    }
}
