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

use serde_bytes::ByteBuf;
use shm_protocol::codec::{self, CodecError};
use shm_protocol::control::Down;
use shm_protocol::worker::{TickWork, WorkerCommand};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// One tick as sent to every worker.
///
/// Each worker's work is kept as the message it was sent, encoded: logging
/// a tick costs no second encoding and no walk over its messages, the log
/// holds compact bytes instead of a structure per message, and spilling
/// is a copy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoggedTick {
    /// The tick.
    pub tick: u64,
    /// The work of each worker, encoded by [`encode_work`] (as finally
    /// executed: after quarantines, with the preempted agents of watchdog
    /// trips).
    pub works: Vec<ByteBuf>,
    /// The digest each worker answered with.
    pub digests: Vec<[u64; 4]>,
}

impl LoggedTick {
    /// Worker `wi`'s work, decoded (`None`: the tick had no worker `wi`).
    pub fn work(&self, wi: usize) -> Option<Result<TickWork, String>> {
        let bytes = self.works.get(wi)?;
        Some(match codec::decode::<Down>(bytes) {
            Ok(Down::Worker(WorkerCommand::Tick(w))) => Ok(w),
            Ok(_) => Err(format!(
                "the work log holds something else than tick {}'s work for worker {wi}",
                self.tick
            )),
            Err(e) => Err(format!(
                "the work log's entry for worker {wi} at tick {} is unreadable: {e}",
                self.tick
            )),
        })
    }
}

/// The message that gives a worker `work` (it is moved into the message
/// for encoding and back, not copied): what is sent and what is logged.
pub fn encode_work(work: &mut TickWork) -> Result<Vec<u8>, CodecError> {
    let msg = Down::Worker(WorkerCommand::Tick(std::mem::take(work)));
    // Sized first (a walk that copies nothing): one allocation, where
    // growing a vector as it is written copies it at every doubling.
    let bytes = codec::encoded_len(&msg).and_then(|len| {
        let mut out = Vec::with_capacity(len);
        codec::encode_into(&msg, &mut out).map(|()| out)
    });
    if let Down::Worker(WorkerCommand::Tick(w)) = msg {
        *work = w;
    }
    bytes
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
            + t.works.capacity() * std::mem::size_of::<ByteBuf>()
            + t.works.iter().map(|w| w.capacity()).sum::<usize>();
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
        // Streamed into the file's buffer: no vector the size of the tick
        // (grown, and copied at each growth, as it was encoded).
        let len = codec::encoded_len(&t).map_err(std::io::Error::other)?;
        w.write_all(&(len as u64).to_le_bytes())?;
        let mut written = Ok(());
        codec::encode_to_sink(&t, &mut |b| {
            if written.is_ok() {
                written = w.write_all(b);
            }
        })
        .map_err(std::io::Error::other)?;
        written?;
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
        let mut work = work(t, payload);
        LoggedTick {
            tick: t,
            works: vec![ByteBuf::from(encode_work(&mut work).unwrap())],
            digests: vec![[t; 4]],
        }
    }

    fn work(t: u64, payload: usize) -> TickWork {
        TickWork {
            tick: t,
            deliveries: vec![Delivery {
                agent_id: 1,
                messages: vec![WireMessage {
                    kind: 0,
                    sender: 2,
                    sent_tick: t,
                    seq: t,
                    topic: String::new(),
                    payload: vec![t as u8; payload].into(),
                }]
                .into(),
            }],
            ..TickWork::default()
        }
    }

    #[test]
    fn a_large_log_moves_to_its_file_and_reads_back_in_order() {
        let dir = tempfile::Builder::new()
            .prefix("lockstep-worklog-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("recovery.log");
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
        // Each tick's work decodes back to what was sent.
        for (i, t) in ticks.iter().enumerate() {
            assert_eq!(t.work(0).unwrap().unwrap(), work(i as u64 + 1, big));
            assert!(t.work(1).is_none());
        }
        // Appending after a read keeps the order.
        log.push(tick(21, 10)).unwrap();
        assert_eq!(log.ticks().unwrap().last().unwrap().tick, 21);
        log.clear();
        assert!(log.is_empty() && !path.exists());
    }

    #[test]
    fn an_entry_that_is_not_a_tick_is_an_error_naming_the_worker() {
        let t = LoggedTick {
            tick: 7,
            works: vec![
                ByteBuf::from(codec::encode(&Down::Shutdown).unwrap()),
                ByteBuf::from(vec![0xff; 3]),
            ],
            digests: vec![],
        };
        let e = t.work(0).unwrap().unwrap_err();
        assert!(e.contains("tick 7") && e.contains("worker 0"), "{e}");
        let e = t.work(1).unwrap().unwrap_err();
        assert!(e.contains("unreadable") && e.contains("worker 1"), "{e}");
    }
}
