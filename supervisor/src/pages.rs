//! The content-addressed page store of a run: every memory chunk ever
//! checkpointed, once.
//!
//! # Files
//!
//! `<run-dir>/pages.pack` holds the chunks: records of
//! `hash [32] | len u32 LE | bytes`, appended; a record is valid when its
//! bytes hash to its hash.  Zero chunks are never stored.  Successive
//! checkpoints therefore only add the chunks that changed.
//!
//! `<run-dir>/pages.idx` lets a store open without reading the pack (a
//! gigabyte pack took a quarter of a second to scan): an 8-byte magic, then
//! one 44-byte entry per record, in pack order —
//! `hash [32] | data offset u64 LE | check u32 LE` (the low half of the
//! XXH3-64 of the first 40 bytes).  It is derived data, written by the
//! store's owner when it syncs the pack, after the pack; opening trusts a
//! prefix of it only as far as each entry checks, has the next record's
//! offset and lies inside the pack, and confirms the first and last trusted
//! entries against the pack's own record headers; the records past that
//! prefix are scanned from the pack (and indexed).  A chunk is verified
//! against its BLAKE3 whenever it is read, so an index can make a read fail
//! but never return wrong bytes; when one does fail, the store rebuilds its
//! index from the pack and tries once more.

use crate::snapshot::{SnapshotError, io};
use shm_protocol::worker::{CHUNK, zero_chunk_hash};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes before a record's data.
const RECORD_HEAD: u64 = 36;
/// Bytes of a whole record.
const RECORD: u64 = RECORD_HEAD + CHUNK as u64;
/// Magic of `pages.idx`.
const INDEX_MAGIC: &[u8; 8] = b"LSPGIDX1";
/// Bytes of an index entry.
const ENTRY: usize = 44;

/// The content-addressed page store of a run.  Reads and writes take
/// `&self` (a chunk can be read while a checkpoint adds others).
#[derive(Debug)]
pub struct PageStore {
    path: PathBuf,
    index_path: PathBuf,
    /// Whether this store writes `pages.idx` (the run's own store does;
    /// another run's, read during a replay or fork, is left as it is).
    owner: bool,
    inner: std::sync::Mutex<PackFile>,
}

#[derive(Debug)]
struct PackFile {
    file: File,
    index: HashMap<[u8; 32], u64>,
    len: u64,
    /// Index entries of the records added since the last sync.
    unindexed: Vec<u8>,
    /// Whether `index` came (in part) from `pages.idx`.
    from_index: bool,
}

impl PageStore {
    /// Opens (or creates) `<dir>/pages.pack` as the run's own store,
    /// indexing its records; a torn final record is cut off.
    pub fn open(dir: &Path) -> Result<Self, SnapshotError> {
        Self::open_as(dir, true)
    }

    /// Opens another run's `<dir>/pages.pack` to read chunks from (its
    /// index file is used but not written).
    pub fn open_other(dir: &Path) -> Result<Self, SnapshotError> {
        Self::open_as(dir, false)
    }

    fn open_as(dir: &Path, owner: bool) -> Result<Self, SnapshotError> {
        let path = dir.join("pages.pack");
        let index_path = dir.join("pages.idx");
        let inner = PackFile::open(&path, &index_path, owner, true)?;
        Ok(Self {
            path,
            index_path,
            owner,
            inner: std::sync::Mutex::new(inner),
        })
    }

    fn pack(&self) -> std::sync::MutexGuard<'_, PackFile> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the store holds `hash` (zero chunks are implied).
    pub fn contains(&self, hash: &[u8; 32]) -> bool {
        *hash == zero_chunk_hash() || self.pack().index.contains_key(hash)
    }

    /// Adds a chunk (ignored if already present or all zero).
    pub fn put(&self, hash: &[u8; 32], bytes: &[u8]) -> Result<bool, SnapshotError> {
        if self.contains(hash) {
            return Ok(false);
        }
        if bytes.len() != CHUNK || blake3::hash(bytes).as_bytes() != hash {
            return Err(SnapshotError::Pages {
                path: self.path.display().to_string(),
                reason: "a chunk does not match its hash".into(),
            });
        }
        let mut rec = Vec::with_capacity(RECORD as usize);
        rec.extend_from_slice(hash);
        rec.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        rec.extend_from_slice(bytes);
        let mut p = self.pack();
        p.file.write_all(&rec).map_err(io(&self.path, "write"))?;
        let off = p.len + RECORD_HEAD;
        p.index.insert(*hash, off);
        p.len += rec.len() as u64;
        let entry = index_entry(hash, off);
        p.unindexed.extend_from_slice(&entry);
        Ok(true)
    }

    /// Reads and verifies a chunk.
    pub fn get(&self, hash: &[u8; 32]) -> Result<Vec<u8>, SnapshotError> {
        let mut buf = vec![0u8; CHUNK];
        self.read_into(hash, &mut buf)?;
        Ok(buf)
    }

    /// Reads and verifies a chunk into `buf` (`CHUNK` bytes).
    pub fn read_into(&self, hash: &[u8; 32], buf: &mut [u8]) -> Result<(), SnapshotError> {
        if self.read_if_present(hash, buf)? {
            Ok(())
        } else {
            Err(self.bad(format!("chunk {} is missing", hex(&hash[..8]))))
        }
    }

    /// [`PageStore::read_into`], answering `false` (cheaply: no error is
    /// built) when the store does not hold the chunk — a restore from
    /// another run's store asks this run's store first for every chunk.
    pub fn read_if_present(&self, hash: &[u8; 32], buf: &mut [u8]) -> Result<bool, SnapshotError> {
        if buf.len() != CHUNK {
            return Err(self.bad(format!(
                "a read of {} bytes (chunks have {CHUNK})",
                buf.len()
            )));
        }
        if *hash == zero_chunk_hash() {
            buf.fill(0);
            return Ok(true);
        }
        match self.try_read(hash, buf)? {
            None => return Ok(false),
            Some(true) => return Ok(true),
            // The bytes the index pointed at are not the chunk: if the
            // index came from `pages.idx`, rebuild it from the pack (once).
            Some(false) if self.pack().from_index => {
                tracing::warn!(pack = %self.path.display(), "a chunk read through pages.idx is wrong: re-indexing the pack");
                let fresh = PackFile::open(&self.path, &self.index_path, self.owner, false)?;
                *self.pack() = fresh;
                if self.try_read(hash, buf)? == Some(true) {
                    return Ok(true);
                }
            }
            Some(false) => {}
        }
        Err(self.bad(format!("chunk {} is damaged", hex(&hash[..8]))))
    }

    /// Reads `hash` into `buf`: whether the bytes hash to it (`None`: the
    /// store does not hold it).
    fn try_read(&self, hash: &[u8; 32], buf: &mut [u8]) -> Result<Option<bool>, SnapshotError> {
        let p = self.pack();
        let Some(&off) = p.index.get(hash) else {
            return Ok(None);
        };
        p.file
            .read_exact_at(buf, off)
            .map_err(io(&self.path, "read"))?;
        drop(p);
        Ok(Some(blake3::hash(buf).as_bytes() == hash))
    }

    fn bad(&self, reason: String) -> SnapshotError {
        SnapshotError::Pages {
            path: self.path.display().to_string(),
            reason,
        }
    }

    /// Flushes the pack to stable storage, then indexes what was added.
    pub fn sync(&self) -> Result<(), SnapshotError> {
        let mut p = self.pack();
        p.file.sync_data().map_err(io(&self.path, "fdatasync"))?;
        if self.owner && !p.unindexed.is_empty() {
            let entries = std::mem::take(&mut p.unindexed);
            // The index is derived: failing to extend it costs the next
            // opener a scan, never a chunk.
            if let Err(e) = append_index(&self.index_path, &entries) {
                tracing::warn!(index = %self.index_path.display(), error = %e, "page index not extended");
            }
        }
        Ok(())
    }

    /// Rewrites the pack with only the chunks in `live` (atomically: a new
    /// file is written, synced and renamed over the old one).
    pub fn compact(&self, live: &std::collections::HashSet<[u8; 32]>) -> Result<(), SnapshotError> {
        let tmp = self.path.with_extension("pack.tmp");
        {
            let mut out = std::io::BufWriter::new(File::create(&tmp).map_err(io(&tmp, "create"))?);
            let p = self.pack();
            let mut buf = vec![0u8; CHUNK];
            let mut kept: Vec<(&[u8; 32], &u64)> =
                p.index.iter().filter(|(h, _)| live.contains(*h)).collect();
            kept.sort_by_key(|(_, off)| **off);
            for (h, off) in kept {
                p.file
                    .read_exact_at(&mut buf, *off)
                    .map_err(io(&self.path, "read"))?;
                out.write_all(h).map_err(io(&tmp, "write"))?;
                out.write_all(&(CHUNK as u32).to_le_bytes())
                    .map_err(io(&tmp, "write"))?;
                out.write_all(&buf).map_err(io(&tmp, "write"))?;
            }
            let f = out
                .into_inner()
                .map_err(|e| io(&tmp, "write")(e.into_error()))?;
            f.sync_all().map_err(io(&tmp, "fsync"))?;
        }
        // The old index goes first: a crash between the two steps leaves a
        // pack without an index (scanned when opened), never an index of
        // another pack.
        match std::fs::remove_file(&self.index_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(&self.index_path, "remove")(e));
            }
            _ => {}
        }
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path, "rename"))?;
        *self.pack() = PackFile::open(&self.path, &self.index_path, self.owner, false)?;
        Ok(())
    }

    /// Bytes in the pack.
    pub fn len(&self) -> u64 {
        self.pack().len
    }

    /// Whether the pack is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Distinct chunks stored.
    pub fn chunks(&self) -> usize {
        self.pack().index.len()
    }
}

/// The index entry of the record whose data starts at `off`.
fn index_entry(hash: &[u8; 32], off: u64) -> [u8; ENTRY] {
    let mut e = [0u8; ENTRY];
    e[..32].copy_from_slice(hash);
    e[32..40].copy_from_slice(&off.to_le_bytes());
    let check = xxhash_rust::xxh3::xxh3_64(&e[..40]) as u32;
    e[40..].copy_from_slice(&check.to_le_bytes());
    e
}

/// Appends `entries` to the index at `path` (creating it, magic first).
fn append_index(path: &Path, entries: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    if f.metadata()?.len() == 0 {
        f.write_all(INDEX_MAGIC)?;
    }
    f.write_all(entries)
}

impl PackFile {
    /// Opens the pack, indexing it from `index_path` as far as that can be
    /// trusted (if `use_index`) and by scanning the rest.  An `owner`
    /// rewrites the index when it had to scan.
    fn open(
        path: &Path,
        index_path: &Path,
        owner: bool,
        use_index: bool,
    ) -> Result<Self, SnapshotError> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io(path, "open"))?;
        let size = file.metadata().map_err(io(path, "fstat"))?.len();
        let mut order = Vec::new();
        if use_index {
            order = trusted_index(&file, size, index_path);
        }
        let mut index = HashMap::with_capacity((size / RECORD) as usize);
        let from_index = !order.is_empty();
        for (h, off) in &order {
            index.insert(*h, *off);
        }
        let indexed = order.len();
        let mut off = order.len() as u64 * RECORD;
        // Scan the records the index does not cover.
        let mut head = [0u8; RECORD_HEAD as usize];
        file.seek(SeekFrom::Start(off)).map_err(io(path, "seek"))?;
        let mut reader = std::io::BufReader::new(&file);
        while off + RECORD_HEAD <= size {
            if reader.read_exact(&mut head).is_err() {
                break;
            }
            let len = u32::from_le_bytes([head[32], head[33], head[34], head[35]]) as u64;
            if len as usize != CHUNK || off + RECORD > size {
                break;
            }
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&head[..32]);
            index.insert(hash, off + RECORD_HEAD);
            order.push((hash, off + RECORD_HEAD));
            if reader.seek_relative(len as i64).is_err() {
                break;
            }
            off += RECORD;
        }
        drop(reader);
        if off != size {
            file.set_len(off).map_err(io(path, "truncate"))?;
        }
        if owner && order.len() != indexed {
            // Rewrite the index whole (it may hold entries past what was
            // trusted); derived data, so a failure is only logged.
            let mut bytes = Vec::with_capacity(8 + order.len() * ENTRY);
            bytes.extend_from_slice(INDEX_MAGIC);
            for (h, o) in &order {
                bytes.extend_from_slice(&index_entry(h, *o));
            }
            let tmp = index_path.with_extension("idx.tmp");
            if let Err(e) =
                std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, index_path))
            {
                tracing::warn!(index = %index_path.display(), error = %e, "page index not written");
            }
        }
        Ok(Self {
            file,
            index,
            len: off,
            unindexed: Vec::new(),
            from_index,
        })
    }
}

/// The entries of the index at `index_path` that can be trusted for a
/// pack of `size` bytes (see the module docs), in pack order.
fn trusted_index(file: &File, size: u64, index_path: &Path) -> Vec<([u8; 32], u64)> {
    let Ok(bytes) = std::fs::read(index_path) else {
        return Vec::new();
    };
    if bytes.len() < INDEX_MAGIC.len() || &bytes[..INDEX_MAGIC.len()] != INDEX_MAGIC {
        return Vec::new();
    }
    let mut out = Vec::with_capacity((bytes.len() - INDEX_MAGIC.len()) / ENTRY);
    for (k, e) in bytes[INDEX_MAGIC.len()..].chunks_exact(ENTRY).enumerate() {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&e[..32]);
        let off = u64::from_le_bytes(e[32..40].try_into().unwrap_or_default());
        if index_entry(&hash, off)[..] != e[..]
            || off != k as u64 * RECORD + RECORD_HEAD
            || off + CHUNK as u64 > size
        {
            break;
        }
        out.push((hash, off));
    }
    // The first and last trusted entries must name the pack's own records
    // (an index left beside another pack is not used at all).
    let names_record = |(hash, off): &([u8; 32], u64)| {
        let mut head = [0u8; RECORD_HEAD as usize];
        file.read_exact_at(&mut head, off - RECORD_HEAD).is_ok()
            && head[..32] == hash[..]
            && head[32..] == (CHUNK as u32).to_le_bytes()
    };
    match (out.first(), out.last()) {
        (Some(first), Some(last)) if names_record(first) && names_record(last) => out,
        _ => Vec::new(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh scratch directory, removed when the value is dropped.
    fn store_dir(tag: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("lockstep-pages-{tag}-"))
            .tempdir()
            .unwrap()
    }

    fn chunk(k: u8) -> (Vec<u8>, [u8; 32]) {
        let c = vec![k; CHUNK];
        let h = *blake3::hash(&c).as_bytes();
        (c, h)
    }

    #[test]
    fn page_store_dedups_verifies_and_survives_a_torn_tail() {
        let tmp = store_dir("torn");
        let dir = tmp.path();
        let (c, h) = chunk(5);
        let p = PageStore::open(dir).unwrap();
        assert!(p.put(&h, &c).unwrap());
        assert!(!p.put(&h, &c).unwrap());
        assert!(p.put(&[0; 32], &c).is_err());
        assert_eq!(p.get(&h).unwrap(), c);
        assert_eq!(p.get(&zero_chunk_hash()).unwrap(), vec![0; CHUNK]);
        p.sync().unwrap();
        drop(p);
        // A torn record at the end is dropped on open.
        let pack = dir.join("pages.pack");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&pack)
            .unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        drop(f);
        let p = PageStore::open(dir).unwrap();
        assert_eq!(p.chunks(), 1);
        assert_eq!(p.len(), RECORD);
        // Damage inside a record is caught when reading.
        drop(p);
        let mut bytes = std::fs::read(&pack).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&pack, bytes).unwrap();
        let p = PageStore::open(dir).unwrap();
        assert!(matches!(p.get(&h), Err(SnapshotError::Pages { .. })));
    }

    /// Every way the index can be wrong — missing, torn, damaged, stale,
    /// another pack's, or trailing the pack — still opens to the pack's
    /// exact contents.
    #[test]
    fn a_wrong_or_missing_index_never_changes_what_the_store_holds() {
        let tmp = store_dir("index");
        let dir = tmp.path();
        let idx = dir.join("pages.idx");
        let chunks: Vec<_> = (1..=6).map(chunk).collect();
        let p = PageStore::open(dir).unwrap();
        for (c, h) in &chunks[..4] {
            p.put(h, c).unwrap();
        }
        p.sync().unwrap();
        assert_eq!(std::fs::metadata(&idx).unwrap().len(), 8 + 4 * ENTRY as u64);
        // Records appended after the last sync are not indexed yet.
        for (c, h) in &chunks[4..] {
            p.put(h, c).unwrap();
        }
        drop(p);
        let good = std::fs::read(&idx).unwrap();
        let check = |what: &str| {
            let p = PageStore::open(dir).unwrap();
            assert_eq!(p.chunks(), 6, "{what}");
            for (c, h) in &chunks {
                assert_eq!(&p.get(h).unwrap(), c, "{what}");
            }
            drop(p);
            // The owner's open indexed every record.
            let p = PageStore::open_other(dir).unwrap();
            assert!(p.pack().from_index, "{what}: index not rewritten");
            assert_eq!(p.chunks(), 6, "{what}");
        };
        check("index trailing the pack");
        let mut torn = good.clone();
        torn.truncate(8 + 2 * ENTRY + 7);
        std::fs::write(&idx, &torn).unwrap();
        check("torn index");
        let mut damaged = good.clone();
        damaged[8 + ENTRY + 3] ^= 0x40;
        std::fs::write(&idx, &damaged).unwrap();
        check("damaged entry");
        std::fs::write(&idx, b"garbage").unwrap();
        check("bad magic");
        std::fs::remove_file(&idx).unwrap();
        check("no index");
        // An index of another pack (same length, other chunks): refused.
        let other_tmp = store_dir("index-other");
        let other = other_tmp.path();
        let q = PageStore::open(other).unwrap();
        for k in 11..=16 {
            let (c, h) = chunk(k);
            q.put(&h, &c).unwrap();
        }
        q.sync().unwrap();
        drop(q);
        std::fs::copy(other.join("pages.idx"), &idx).unwrap();
        check("another pack's index");
        // An index longer than the pack (the pack lost its tail).
        let pack = dir.join("pages.pack");
        let f = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
        f.set_len(3 * RECORD + 10).unwrap();
        drop(f);
        let p = PageStore::open(dir).unwrap();
        assert_eq!(p.chunks(), 3);
        assert_eq!(p.len(), 3 * RECORD);
        assert!(p.get(&chunks[3].1).is_err());
        drop(p);
    }

    /// An index whose entries check but name the wrong chunks (written by
    /// hand: nothing in the store writes one) makes a read rebuild the
    /// index from the pack instead of failing.
    #[test]
    fn a_read_through_a_lying_index_rebuilds_it() {
        let tmp = store_dir("lying");
        let dir = tmp.path();
        let chunks: Vec<_> = (1..=3).map(chunk).collect();
        let p = PageStore::open(dir).unwrap();
        for (c, h) in &chunks {
            p.put(h, c).unwrap();
        }
        p.sync().unwrap();
        drop(p);
        // Entry 1 names chunk 0: first and last still name their records.
        let mut bytes = INDEX_MAGIC.to_vec();
        let offs = [RECORD_HEAD, RECORD_HEAD + RECORD, RECORD_HEAD + 2 * RECORD];
        for (k, (_, h)) in chunks.iter().enumerate() {
            let h = if k == 1 { &chunks[0].1 } else { h };
            bytes.extend_from_slice(&index_entry(h, offs[k]));
        }
        std::fs::write(dir.join("pages.idx"), bytes).unwrap();
        let p = PageStore::open_other(dir).unwrap();
        assert!(p.pack().from_index);
        // Chunk 1 is not indexed at all: missing (no re-index for that).
        assert!(p.get(&chunks[1].1).is_err());
        assert!(p.pack().from_index);
        // Chunk 0 is indexed at record 1 (the later entry won): its read
        // fails the hash, the store re-indexes, the read succeeds.
        assert_eq!(p.get(&chunks[0].1).unwrap(), chunks[0].0);
        assert_eq!(p.get(&chunks[1].1).unwrap(), chunks[1].0);
        assert!(!p.pack().from_index);
    }
}
