//! Recovery of a failed worker, and the search for an agent that makes
//! its worker fail.
//!
//! Every failure goes the same way ([`WorkerPool::recover`]): the worker is
//! replaced by a fresh process, which loads every module, restores the
//! agents it hosts from the last checkpoint and re-executes the work logged
//! since (each logged tick must reproduce its recorded digest, with the
//! wall-clock watchdog off: fuel bounds every call), and the interrupted
//! tick's work is sent again.  Results are deterministic, so the run never
//! notices.
//!
//! A worker that fails again at the same tick may be failing *because* of
//! that tick: then its agents are bisected in scratch processes (each
//! restored from the checkpoint and re-executed to the tick) until the one
//! agent that makes a process fail alone is found.  It is quarantined — a
//! journaled decision — and the tick re-run without it.  If the whole set
//! fails but neither half does alone (an aggregate limit such as the
//! worker's memory), no agent is blamed: the run gives up with an error
//! naming the limit — unless the worker serves one tenant with process
//! isolation alone, in which case that tenant exceeded its own limits and
//! its agents on the worker are quarantined (journaled decisions), while
//! every other tenant goes on untouched.  Replacements leave quarantined
//! agents out (their state serves nothing any more).  If the whole set
//! does not fail in a scratch process, the failures were not caused by the
//! tick (an operator, the machine) and recovery simply goes on; a failure
//! at the same tick after that searches again, since near a limit whether
//! a process fails may turn on a few pages of its own.

use super::{
    ChunkSource, MAX_FAILURES_PER_TICK, POISON_AFTER, PoolError, RestoreFailure, WorkerPool,
    filter_work,
};
use crate::failure::Cause;
use crate::sim::Decision;
use shm_protocol::worker::{TickDone, TickWork, WorkerReply};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// What the search for a poison agent found.
enum Bisect {
    /// This agent makes a process fail alone.
    Culprit(u64),
    /// A set of agents fails together, but neither half of it alone.
    Aggregate {
        /// How many agents the smallest failing set found has.
        agents: usize,
        /// How many agents the worker hosts.
        of: usize,
        /// How the whole set failed.
        cause: Cause,
    },
    /// The tick does not fail in a scratch process.
    NotReproduced,
}

/// Why a replacement worker is not ready.
enum ReplaceError {
    /// Nothing more can be done (a module refused, chunks unreadable).
    Fatal(PoolError),
    /// The replacement failed too.
    Failed(Cause),
}

impl WorkerPool {
    /// Recovers worker `wi`, which failed with `first` while running
    /// `tick`, and returns its result of `work` (which loses a quarantined
    /// agent, whose decision goes to `decisions`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn recover(
        &mut self,
        wi: usize,
        tick: u64,
        work: &mut TickWork,
        first: Cause,
        pages: &dyn ChunkSource,
        known: &dyn Fn(u64) -> bool,
        decisions: &mut Vec<Decision>,
    ) -> Result<TickDone, PoolError> {
        let t0 = Instant::now();
        let mut cause = first;
        loop {
            self.note(wi, tick, &cause);
            let n = {
                let n = self.failures.entry(tick).or_default();
                *n += 1;
                *n
            };
            if n > MAX_FAILURES_PER_TICK {
                return Err(PoolError::GiveUp {
                    tick,
                    reason: format!(
                        "worker-{wi} failed {n} times at tick {tick} and the tick does not fail in a scratch process (last: {cause}); giving up"
                    ),
                });
            }
            if n >= POISON_AFTER && self.bisected.insert((tick, wi)) {
                match self.bisect(wi, tick, work, pages)? {
                    Bisect::Culprit(agent) => {
                        *work = filter_work(work, |a| a != agent);
                        work.evict.push(agent);
                        decisions.push(Decision::Quarantine { agent });
                        self.stats.quarantined.push(agent);
                        let line = format!(
                            "[QUARANTINE] agent {agent} makes worker-{wi} fail at tick {tick} ({cause}): removed"
                        );
                        tracing::error!(agent, tick, "{line}");
                        self.notes.push(line);
                    }
                    Bisect::Aggregate { agents, of, cause } => {
                        let Some(tenant) = self.isolated_tenant(wi).map(|t| t.name.clone()) else {
                            return Err(PoolError::GiveUp {
                                tick,
                                reason: self.aggregate_reason(wi, tick, agents, of, &cause),
                            });
                        };
                        // The worker holds one tenant's agents alone: the
                        // tenant exceeded its own limits, and only its
                        // agents on this worker are stopped.
                        let hosted = self.agents_of(wi, Some(work))?.0;
                        *work = filter_work(work, |a| !hosted.contains(&a));
                        for &agent in &hosted {
                            work.evict.push(agent);
                            decisions.push(Decision::Quarantine { agent });
                            self.stats.quarantined.push(agent);
                        }
                        let line = format!(
                            "[QUARANTINE] tenant {tenant} exceeded the limits of its processes at tick {tick} ({cause}): its {} agents on worker-{wi} are stopped",
                            hosted.len()
                        );
                        tracing::error!(tenant, tick, "{line}");
                        self.notes.push(line);
                    }
                    Bisect::NotReproduced => {
                        // Near a limit, whether a process fails may depend
                        // on a few pages of its own: a later failure at the
                        // same tick searches again.
                        self.bisected.remove(&(tick, wi));
                        tracing::warn!(
                            worker = wi,
                            tick,
                            "the failures do not reproduce in a scratch process: recovering again"
                        );
                    }
                }
            }
            match self.replace(wi, pages, &work.evict) {
                Ok(()) => {}
                Err(ReplaceError::Fatal(e)) => return Err(e),
                Err(ReplaceError::Failed(c)) => {
                    cause = c;
                    continue;
                }
            }
            let timeout = self.cfg.tick_timeout;
            if let Err(e) = self.workers[wi].send_tick(work, timeout) {
                cause = self.cause_of_worker(wi, &e, timeout);
                continue;
            }
            match self.recv_tick(wi, tick, known) {
                Ok(done) => {
                    let took = t0.elapsed();
                    self.stats.last_recovery = Some(took);
                    tracing::info!(
                        worker = wi,
                        tick,
                        ms = took.as_millis() as u64,
                        "worker recovered"
                    );
                    return Ok(done);
                }
                Err(c) => cause = c,
            }
        }
    }

    /// Recovers worker `wi`, which failed with `cause` between ticks (the
    /// replacement is brought to the last completed tick).
    pub(super) fn recover_between_ticks(
        &mut self,
        wi: usize,
        mut cause: Cause,
        pages: &dyn ChunkSource,
    ) -> Result<(), PoolError> {
        let tick = self.tick;
        for _ in 0..MAX_FAILURES_PER_TICK {
            self.note(wi, tick, &cause);
            match self.replace(wi, pages, &[]) {
                Ok(()) => return Ok(()),
                Err(ReplaceError::Fatal(e)) => return Err(e),
                Err(ReplaceError::Failed(c)) => cause = c,
            }
        }
        Err(PoolError::GiveUp {
            tick,
            reason: format!(
                "worker-{wi} failed {MAX_FAILURES_PER_TICK} times after tick {tick} (last: {cause}); giving up"
            ),
        })
    }

    /// Logs a failure once and counts it.
    fn note(&mut self, wi: usize, tick: u64, cause: &Cause) {
        self.stats.recoveries += 1;
        *self.stats.by_cause.entry(cause.class()).or_default() += 1;
        let line = format!("[RECOVERY] worker-{wi} {cause} at tick {tick}; replacing it");
        tracing::warn!(worker = wi, tick, class = cause.class(), "{line}");
        self.notes.push(line);
    }

    /// Replaces worker `wi` by a fresh process at the state the run reached.
    ///
    /// Agents evicted since the checkpoint (quarantined: by the logged work
    /// or by `evicting`, the interrupted tick's evictions) are left out of
    /// the replacement: their state serves nothing any more, and what made
    /// them fail — memory they filled, say — must not make the replacement
    /// fail too.  Without them the logged ticks cannot reproduce their
    /// recorded digests, which are then not checked.
    fn replace(
        &mut self,
        wi: usize,
        pages: &dyn ChunkSource,
        evicting: &[u64],
    ) -> Result<(), ReplaceError> {
        let name = format!("worker-{wi}");
        let (mut hosted, mut evicted) = self.agents_of(wi, None).map_err(ReplaceError::Fatal)?;
        evicted.extend(evicting.iter().copied());
        let keep = if evicted.is_empty() {
            None
        } else {
            hosted.retain(|a| !evicted.contains(a));
            Some(hosted)
        };
        self.workers[wi].child.kill_and_wait(Duration::from_secs(5));
        let fresh = self
            .spawn(&name, false, Some(wi))
            .map_err(|f| ReplaceError::Failed(f.cause))?;
        self.workers[wi] = fresh;
        match &keep {
            None => self.prepare(wi, pages, None, true),
            Some(keep) => self.prepare(wi, pages, Some(keep), false),
        }
    }

    /// Brings worker `wi` (fresh) to the last completed tick: modules, the
    /// checkpoint's agents (those in `subset`, if given), the logged work
    /// (restricted to `subset`; digests checked unless a subset is given).
    fn prepare(
        &mut self,
        wi: usize,
        pages: &dyn ChunkSource,
        subset: Option<&[u64]>,
        check: bool,
    ) -> Result<(), ReplaceError> {
        let timeout = Duration::from_secs(600);
        let modules: Vec<(u32, super::ModuleImage)> =
            self.modules.iter().map(|(k, v)| (*k, v.clone())).collect();
        for (id, m) in modules {
            match self.workers[wi].load(id, &m) {
                Ok(_) => {}
                Err(super::LoadFailure::Refused(e)) => {
                    return Err(ReplaceError::Fatal(PoolError::Module(e)));
                }
                Err(super::LoadFailure::Channel(e)) => {
                    return Err(ReplaceError::Failed(self.cause_of_worker(wi, &e, timeout)));
                }
            }
        }
        if let Some(base) = self.base.clone() {
            match self.restore_worker(wi, &base, pages, subset) {
                Ok(()) => {}
                Err(RestoreFailure::Chunks(e)) => {
                    return Err(ReplaceError::Fatal(PoolError::Restore(e)));
                }
                Err(RestoreFailure::Worker(c)) => return Err(ReplaceError::Failed(c)),
            }
        }
        let log = self.log.ticks().map_err(|e| {
            ReplaceError::Fatal(PoolError::Restore(format!("cannot read the work log: {e}")))
        })?;
        let timeout = self.cfg.tick_timeout;
        for lt in log {
            let w = match lt.work(wi) {
                None => continue,
                Some(Ok(w)) => w,
                Some(Err(e)) => return Err(ReplaceError::Fatal(PoolError::Restore(e))),
            };
            let mut w = match subset {
                Some(s) => filter_work(&w, |a| s.contains(&a)),
                None => w,
            };
            w.watchdog = false;
            if let Err(e) = self.workers[wi].send_tick(&mut w, timeout) {
                return Err(ReplaceError::Failed(self.cause_of_worker(wi, &e, timeout)));
            }
            let done = match self.workers[wi].recv(timeout) {
                Ok(WorkerReply::TickDone(d)) if d.tick == lt.tick => d,
                Ok(_) => {
                    self.workers[wi].child.kill_and_wait(Duration::from_secs(5));
                    return Err(ReplaceError::Failed(Cause::Protocol(format!(
                        "answered something else than tick {} while re-executing it",
                        lt.tick
                    ))));
                }
                Err(e) => return Err(ReplaceError::Failed(self.cause_of_worker(wi, &e, timeout))),
            };
            if check && lt.digests.get(wi) != Some(&done.digest) {
                self.workers[wi].child.kill_and_wait(Duration::from_secs(5));
                return Err(ReplaceError::Failed(Cause::Protocol(format!(
                    "re-executing tick {} did not reproduce its recorded results",
                    lt.tick
                ))));
            }
        }
        Ok(())
    }

    /// The agents worker `wi` hosts or started since the checkpoint (and,
    /// with `work`, starts in it), and those the work logged since the
    /// checkpoint evicted from it (one read of the log for both).
    fn agents_of(
        &mut self,
        wi: usize,
        work: Option<&TickWork>,
    ) -> Result<(Vec<u64>, BTreeSet<u64>), PoolError> {
        let mut s: BTreeSet<u64> = BTreeSet::new();
        let mut evicted: BTreeSet<u64> = BTreeSet::new();
        if let Some(base) = &self.base {
            s.extend(
                base.agents
                    .iter()
                    .map(|(id, _)| *id)
                    .filter(|id| self.placement.worker_of(*id) == wi),
            );
        }
        let log = self
            .log
            .ticks()
            .map_err(|e| PoolError::Restore(format!("cannot read the work log: {e}")))?;
        let mut note = |w: &TickWork| {
            s.extend(w.spawns.iter().map(|x| x.agent_id));
            s.extend(w.restarts.iter().map(|x| x.agent_id));
        };
        for l in &log {
            match l.work(wi) {
                None => {}
                Some(Ok(w)) => {
                    note(&w);
                    evicted.extend(w.evict.iter().copied());
                }
                Some(Err(e)) => return Err(PoolError::Restore(e)),
            }
        }
        if let Some(w) = work {
            note(w);
        }
        Ok((s.into_iter().collect(), evicted))
    }

    /// Searches worker `wi`'s agents for one that makes `tick` fail alone.
    fn bisect(
        &mut self,
        wi: usize,
        tick: u64,
        work: &TickWork,
        pages: &dyn ChunkSource,
    ) -> Result<Bisect, PoolError> {
        let mut suspects = self.agents_of(wi, Some(work))?.0;
        tracing::warn!(
            worker = wi,
            tick,
            agents = suspects.len(),
            "worker failed twice at the same tick: searching for the agent that causes it"
        );
        let Some(whole) = self.probe(wi, work, pages, &suspects)? else {
            return Ok(Bisect::NotReproduced);
        };
        let total = suspects.len();
        while suspects.len() > 1 {
            let (a, b) = suspects.split_at(suspects.len() / 2);
            let (a, b) = (a.to_vec(), b.to_vec());
            if self.probe(wi, work, pages, &a)?.is_some() {
                suspects = a;
            } else if self.probe(wi, work, pages, &b)?.is_some() {
                suspects = b;
            } else {
                return Ok(Bisect::Aggregate {
                    agents: suspects.len(),
                    of: total,
                    cause: whole,
                });
            }
        }
        match suspects.first() {
            Some(&a) => Ok(Bisect::Culprit(a)),
            // No agent at all, and still failing: the process itself.
            None => Ok(Bisect::Aggregate {
                agents: 0,
                of: 0,
                cause: whole,
            }),
        }
    }

    /// Runs `tick` for `subset` of worker `wi`'s agents alone in a scratch
    /// process (restored from the checkpoint, re-executed from the log);
    /// returns how it failed, if it did.
    fn probe(
        &mut self,
        wi: usize,
        work: &TickWork,
        pages: &dyn ChunkSource,
        subset: &[u64],
    ) -> Result<Option<Cause>, PoolError> {
        let name = format!("probe-{}", self.spawned);
        let mut scratch = match self.spawn(&name, false, Some(wi)) {
            Ok(p) => p,
            Err(f) => {
                return Err(PoolError::Start(format!(
                    "cannot start a scratch worker to search for a poison agent: {f}"
                )));
            }
        };
        std::mem::swap(&mut self.workers[wi], &mut scratch);
        let outcome = match self.prepare(wi, pages, Some(subset), false) {
            Err(ReplaceError::Fatal(e)) => Err(e),
            Err(ReplaceError::Failed(c)) => Ok(Some(c)),
            Ok(()) => {
                let mut w = filter_work(work, |a| subset.contains(&a));
                let timeout = self.cfg.tick_timeout;
                match self.workers[wi].send_tick(&mut w, timeout) {
                    Err(e) => Ok(Some(self.cause_of_worker(wi, &e, timeout))),
                    Ok(_) => match self.workers[wi].recv(timeout) {
                        Ok(WorkerReply::TickDone(_)) => Ok(None),
                        Ok(_) => Ok(Some(Cause::Protocol(
                            "answered something else than the tick".into(),
                        ))),
                        Err(e) => Ok(Some(self.cause_of_worker(wi, &e, timeout))),
                    },
                }
            }
        };
        std::mem::swap(&mut self.workers[wi], &mut scratch);
        scratch.child.kill_and_wait(Duration::from_secs(5));
        outcome
    }

    /// The error of a run that gives up because a worker fails with all
    /// its agents but with no single one.
    fn aggregate_reason(
        &self,
        wi: usize,
        tick: u64,
        agents: usize,
        of: usize,
        cause: &Cause,
    ) -> String {
        let mut r = format!(
            "worker-{wi} {cause} at tick {tick} with {agents} of its {of} agents together, but with neither half of them alone: no single agent causes it, so none is blamed"
        );
        if cause.is_memory() {
            let limit = if self.cfg.address_space > 0 {
                format!(
                    "its address-space limit of {} GiB (RLIMIT_AS)",
                    self.cfg.address_space as f64 / f64::from(1u32 << 30)
                )
            } else {
                "the machine's memory".to_owned()
            };
            let maps = std::fs::read_to_string("/proc/sys/vm/max_map_count")
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or_else(String::new, |n| {
                    format!(", or the kernel's limit of {n} memory mappings per process (vm.max_map_count)")
                });
            r.push_str(&format!(
                ". The limit is the worker's memory, {limit}{maps}: spread the agents over more workers (`--workers`), lower their memory limits, or raise the limit (`--worker-address-space`)"
            ));
        }
        r
    }
}
