//! A supervisor's set of child processes: K workers and one inference host.

use crate::child::{Child, ChildError, ChildSpec, locate_binary};
use crate::reaper::{ChildExit, Reaper};
use lockstep_common::live::{ChildStatus, LIVE_STATE_VERSION, LiveState};
use shm_protocol::WaitPolicy;
use shm_protocol::control::Role;
use shm_protocol::segment::SegmentConfig;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Number of worker processes.
    pub workers: usize,
    /// Whether to start the inference host.
    pub inference_host: bool,
    /// The worker binary.
    pub worker_bin: PathBuf,
    /// The inference host binary.
    pub host_bin: PathBuf,
    /// Ring sizes of every child.
    pub rings: SegmentConfig,
    /// How the supervisor waits on rings.
    pub policy: WaitPolicy,
    /// Longest wait for a child's hello.
    pub handshake_timeout: Duration,
}

impl ClusterConfig {
    /// `workers` workers plus an inference host, binaries found next to the
    /// running executable (or via `LOCKSTEP_WORKER_BIN` /
    /// `LOCKSTEP_INFERENCE_HOST_BIN`).
    pub fn new(workers: usize) -> Result<Self, String> {
        Ok(Self {
            workers,
            inference_host: true,
            worker_bin: locate_binary("lockstep-worker", "LOCKSTEP_WORKER_BIN")?,
            host_bin: locate_binary("lockstep-inference-host", "LOCKSTEP_INFERENCE_HOST_BIN")?,
            rings: SegmentConfig::default(),
            policy: WaitPolicy::ADAPTIVE,
            handshake_timeout: Duration::from_secs(10),
        })
    }
}

/// Failures of the cluster as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A child failed.
    #[error(transparent)]
    Child(#[from] ChildError),
    /// The reaper thread could not start.
    #[error("could not start the reaper")]
    Reaper(#[source] std::io::Error),
    /// A child died.
    #[error("{0}")]
    Died(ChildExit),
    /// Children were still running after shutdown.
    #[error("{0} children did not report their exit after shutdown")]
    Unreaped(usize),
}

/// Ping statistics of one child.
#[derive(Debug, Clone)]
pub struct PingReport {
    /// The child.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its pid.
    pub pid: u32,
    /// Time from spawn to completed handshake.
    pub handshake: Duration,
    /// Round trips, sorted.
    pub rtts: Vec<Duration>,
}

impl PingReport {
    /// The `q` quantile (0..=1) of the round trips.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.rtts.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.rtts.len() - 1) as f64 * q).round() as usize;
        self.rtts[i.min(self.rtts.len() - 1)]
    }
}

/// The running children.
#[derive(Debug)]
pub struct Cluster {
    children: Vec<Child>,
    handshakes: Vec<Duration>,
    reaper: Reaper,
    deaths: mpsc::Receiver<ChildExit>,
    exited: Vec<ChildExit>,
}

impl Cluster {
    /// Spawns every child, then completes every handshake.
    pub fn start(cfg: &ClusterConfig) -> Result<Self, ClusterError> {
        let (reaper, deaths) = Reaper::start().map_err(ClusterError::Reaper)?;
        let mut specs: Vec<ChildSpec> = (0..cfg.workers)
            .map(|i| ChildSpec {
                role: Role::Worker,
                name: format!("worker-{i}"),
                program: cfg.worker_bin.clone(),
                args: Vec::new(),
                rings: cfg.rings,
                policy: cfg.policy,
                env: crate::jail::worker_env(),
                cgroup: None,
                hang_timeout: None,
            })
            .collect();
        if cfg.inference_host {
            specs.push(ChildSpec {
                role: Role::InferenceHost,
                name: "inference-host".into(),
                program: cfg.host_bin.clone(),
                args: Vec::new(),
                rings: cfg.rings,
                policy: cfg.policy,
                env: crate::jail::inference_host_env(),
                cgroup: None,
                hang_timeout: None,
            });
        }
        let mut cluster = Self {
            children: Vec::new(),
            handshakes: Vec::new(),
            reaper,
            deaths,
            exited: Vec::new(),
        };
        // Spawn all first so the children start up in parallel.
        for spec in &specs {
            let child = Child::spawn(spec, &cluster.reaper)?;
            cluster.children.push(child);
        }
        for child in &mut cluster.children {
            child.handshake(cfg.handshake_timeout)?;
            cluster.handshakes.push(child.started().elapsed());
        }
        Ok(cluster)
    }

    /// The children.
    pub fn children(&self) -> &[Child] {
        &self.children
    }

    /// Mutable access to the children.
    pub fn children_mut(&mut self) -> &mut [Child] {
        &mut self.children
    }

    /// `rounds` pings to every child.
    pub fn ping_all(&mut self, rounds: usize) -> Result<Vec<PingReport>, ClusterError> {
        let mut out = Vec::new();
        for (child, hs) in self.children.iter_mut().zip(&self.handshakes) {
            let mut rtts = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                rtts.push(child.ping(Duration::from_secs(5))?);
            }
            rtts.sort();
            out.push(PingReport {
                name: child.name().to_owned(),
                role: child.role(),
                pid: child.pid(),
                handshake: *hs,
                rtts,
            });
        }
        Ok(out)
    }

    /// A death reported since the last call, if any.
    pub fn try_death(&mut self) -> Option<ChildExit> {
        let d = self.deaths.try_recv().ok()?;
        self.exited.push(d.clone());
        Some(d)
    }

    /// Waits up to `timeout` for a death report.
    pub fn wait_death(&mut self, timeout: Duration) -> Option<ChildExit> {
        let d = self.deaths.recv_timeout(timeout).ok()?;
        self.exited.push(d.clone());
        Some(d)
    }

    /// The live state for the state board.
    pub fn live_state(&self, phase: &str, reports: &[PingReport]) -> LiveState {
        let children = self
            .children
            .iter()
            .map(|c| {
                let dead = self.exited.iter().find(|e| e.pid == c.pid());
                ChildStatus {
                    name: c.name().to_owned(),
                    role: c.role().to_string(),
                    pid: c.pid(),
                    state: dead.map_or_else(|| "ready".to_owned(), |d| d.kind.to_string()),
                    last_rtt_ns: reports
                        .iter()
                        .find(|r| r.pid == c.pid())
                        .map_or(0, |r| r.quantile(0.5).as_nanos() as u64),
                }
            })
            .collect();
        LiveState {
            version: LIVE_STATE_VERSION,
            phase: phase.into(),
            tick: 0,
            children,
            log: Vec::new(),
            stats: Default::default(),
            agents: Vec::new(),
            flow: Default::default(),
        }
    }

    /// Shuts every child down and waits until the reaper has seen each one
    /// exit.  Returns every exit (clean or not).
    pub fn shutdown(mut self, timeout: Duration) -> Result<Vec<ChildExit>, ClusterError> {
        let expected: Vec<u32> = self.children.iter().map(Child::pid).collect();
        let mut errors = Vec::new();
        for child in std::mem::take(&mut self.children) {
            if self.exited.iter().any(|e| e.pid == child.pid()) {
                continue;
            }
            if let Err(e) = child.shutdown(timeout) {
                errors.push(e);
            }
        }
        let deadline = Instant::now() + timeout;
        while expected
            .iter()
            .any(|pid| !self.exited.iter().any(|e| e.pid == *pid))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.wait_death(left).is_none() {
                break;
            }
        }
        let missing = expected
            .iter()
            .filter(|pid| !self.exited.iter().any(|e| e.pid == **pid))
            .count();
        if let Some(e) = errors.into_iter().next() {
            return Err(e.into());
        }
        if missing > 0 {
            return Err(ClusterError::Unreaped(missing));
        }
        Ok(std::mem::take(&mut self.exited))
    }
}
