//! The work each worker was sent since the last checkpoint, and the digest
//! it answered with: what recovery re-executes to bring a fresh worker to
//! the tick a failed one reached.
//!
//! The log is bounded in memory: once it holds more than
//! [`WorkLog::MEMORY`] bytes of work, its oldest ticks move to a scratch
//! file in the run directory, a few at each new tick (never the whole log
//! at once: that would stall the tick that crosses the bound), and are read
//! back only by a recovery.  A checkpoint clears it (and truncates the file), so the
//! supervisor's memory does not grow with the length of the run whatever
//! the checkpoint interval.

use shm_protocol::worker::TickWork;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// One tick as sent to every worker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoggedTick {
    /// The tick.
    pub tick: u64,
    /// The work of each worker (as finally executed: after quarantines,
    /// with the preempted agents of watchdog trips).
    pub works: Vec<TickWork>,
    /// The digest each worker answered with.
    pub digests: Vec<[u64; 4]>,
}

/// The log (see the module docs).
#[derive(Debug)]
pub struct WorkLog {
    /// Ticks in memory, oldest first, with the bytes each counts for.
    mem: VecDeque<(LoggedTick, usize)>,
    mem_bytes: usize,
    path: PathBuf,
    file: Option<BufWriter<File>>,
    /// Ticks in the file.
    spilled: usize,
}

/// Memory a tick's work takes: its structures (every vector's capacity)
/// and every message and task payload.
fn work_size(w: &TickWork) -> usize {
    use shm_protocol::worker::{Delivery, SpawnOrder, StepOrder, UpgradeOrder, WireMessage};
    use std::mem::size_of;
    size_of::<TickWork>()
        + w.spawns.capacity() * size_of::<SpawnOrder>()
        + w.restarts.capacity() * size_of::<SpawnOrder>()
        + w.upgrades.capacity() * size_of::<UpgradeOrder>()
        + w.deliveries.capacity() * size_of::<Delivery>()
        + w.deliveries
            .iter()
            .map(|d| {
                d.messages.capacity() * size_of::<WireMessage>()
                    + d.messages
                        .iter()
                        .map(|m| m.topic.capacity() + m.payload.capacity())
                        .sum::<usize>()
            })
            .sum::<usize>()
        + w.steps.capacity() * size_of::<StepOrder>()
        + w.steps
            .iter()
            .map(|s| s.task.as_ref().map_or(0, |t| t.payload.capacity()))
            .sum::<usize>()
        + 8 * (w.stops.capacity() + w.evict.capacity() + w.preempt.capacity())
}

impl WorkLog {
    /// Bytes of work kept in memory before the log moves to its file.
    pub const MEMORY: usize = 16 << 20;

    /// An empty log whose scratch file (created when needed) is `path`.
    pub fn new(path: &Path) -> Self {
        Self {
            mem: VecDeque::new(),
            mem_bytes: 0,
            path: path.to_path_buf(),
            file: None,
            spilled: 0,
        }
    }

    /// Appends a tick; if the log is over its memory bound, moves its
    /// oldest ticks to the file until it is not.
    pub fn push(&mut self, t: LoggedTick) -> std::io::Result<()> {
        let size = std::mem::size_of::<LoggedTick>()
            + t.digests.capacity() * 32
            + t.works.capacity() * std::mem::size_of::<TickWork>()
            + t.works.iter().map(work_size).sum::<usize>();
        self.mem_bytes += size;
        self.mem.push_back((t, size));
        while self.mem_bytes > Self::MEMORY && self.mem.len() > 1 {
            self.spill_oldest()?;
        }
        Ok(())
    }

    /// Moves the oldest tick in memory to the file.
    fn spill_oldest(&mut self) -> std::io::Result<()> {
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(true)
                .open(&self.path)?;
            self.file = Some(BufWriter::with_capacity(1 << 20, f));
        }
        let (Some(w), Some((t, size))) = (self.file.as_mut(), self.mem.pop_front()) else {
            return Ok(());
        };
        let bytes = shm_protocol::codec::encode(&t).map_err(std::io::Error::other)?;
        w.write_all(&(bytes.len() as u64).to_le_bytes())?;
        w.write_all(&bytes)?;
        self.spilled += 1;
        self.mem_bytes -= size;
        Ok(())
    }

    /// Every logged tick, oldest first (read back from the file if the log
    /// spilled).
    pub fn ticks(&mut self) -> std::io::Result<Vec<LoggedTick>> {
        let mut out = Vec::with_capacity(self.spilled + self.mem.len());
        if let Some(w) = self.file.as_mut() {
            w.flush()?;
            let mut f = w.get_ref().try_clone()?;
            f.seek(SeekFrom::Start(0))?;
            let mut r = BufReader::new(f);
            for _ in 0..self.spilled {
                let mut len = [0u8; 8];
                r.read_exact(&mut len)?;
                let mut buf = vec![0u8; u64::from_le_bytes(len) as usize];
                r.read_exact(&mut buf)?;
                out.push(shm_protocol::codec::decode(&buf).map_err(std::io::Error::other)?);
            }
            // Writes continue at the end.
            w.get_mut().seek(SeekFrom::End(0))?;
        }
        out.extend(self.mem.iter().map(|(t, _)| t.clone()));
        Ok(out)
    }

    /// Number of ticks logged.
    pub fn len(&self) -> usize {
        self.spilled + self.mem.len()
    }

    /// Whether nothing is logged.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything (a checkpoint was taken).
    pub fn clear(&mut self) {
        self.mem.clear();
        self.mem_bytes = 0;
        self.spilled = 0;
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for WorkLog {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shm_protocol::worker::{Delivery, WireMessage};

    fn tick(t: u64, payload: usize) -> LoggedTick {
        LoggedTick {
            tick: t,
            works: vec![TickWork {
                tick: t,
                deliveries: vec![Delivery {
                    agent_id: 1,
                    messages: vec![WireMessage {
                        kind: 0,
                        sender: 2,
                        sent_tick: t,
                        seq: t,
                        topic: String::new(),
                        payload: vec![t as u8; payload],
                    }],
                }],
                ..TickWork::default()
            }],
            digests: vec![[t; 4]],
        }
    }

    #[test]
    fn a_large_log_moves_to_its_file_and_reads_back_in_order() {
        let dir = std::env::temp_dir().join(format!("lockstep-worklog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("recovery.log");
        let mut log = WorkLog::new(&path);
        let big = WorkLog::MEMORY / 8;
        for t in 1..=20 {
            log.push(tick(t, big)).unwrap();
        }
        assert!(path.exists(), "the log spilled to its file");
        assert!(log.mem_bytes <= WorkLog::MEMORY);
        let ticks = log.ticks().unwrap();
        assert_eq!(ticks.len(), 20);
        assert!(
            ticks
                .iter()
                .enumerate()
                .all(|(i, t)| *t == tick(i as u64 + 1, big))
        );
        // Appending after a read keeps the order.
        log.push(tick(21, 10)).unwrap();
        assert_eq!(log.ticks().unwrap().last().unwrap().tick, 21);
        log.clear();
        assert!(log.is_empty() && !path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
