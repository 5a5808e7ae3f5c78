//! Agent modules: where their bytes come from, how they are checked and
//! compiled, and where the results are kept.
//!
//! Workers never read module files or a compiled-module cache: the
//! supervisor reads each module, checks it against the hash the run pinned,
//! keeps a copy in the run directory (`modules/<BLAKE3>.wasm`, so that
//! `resume`, `replay`, `verify` and `fork` load the very bytes the run used
//! even if the file changed or vanished), and has it validated and compiled
//! once by the compile step — a fresh worker process that never ran an
//! agent ([`Compiler`]).  Workers then load the compiled form it produced.
//!
//! The persistent cache (`~/.cache/lockstep/modules` by default) holds the
//! compile step's output for later runs.  Only the supervisor writes it, and
//! every entry is bound to the module's BLAKE3 and the engine configuration
//! by a keyed BLAKE3 MAC under a secret key that only the supervisor's user
//! can read (`<cache>/key`, mode 0600): an entry swapped for another
//! module's, edited, or written by anyone without the key fails its MAC and
//! is compiled afresh.

use shm_protocol::worker::ModuleFacts;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Magic of a compiled-module cache entry.
const ENTRY_MAGIC: &[u8; 8] = b"LSMOD\x01\0\0";

/// Why a module cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    /// The file cannot be read.
    #[error("module {name}: cannot read {path}: {reason}")]
    Read {
        /// Module name.
        name: String,
        /// Its path.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The file's hash is not the one pinned.
    #[error("module {name} ({path}): BLAKE3 is {actual}, {pinned_by} pins {expected}")]
    Hash {
        /// Module name.
        name: String,
        /// Its path.
        path: String,
        /// The pinned hash.
        expected: String,
        /// The file's hash.
        actual: String,
        /// Who pinned it (the manifest, the run's journal).
        pinned_by: &'static str,
    },
    /// The compile step refused it (not valid WebAssembly, not the ABI…).
    #[error("{0}")]
    Invalid(String),
}

/// A module ready to load: its bytes, compiled form and declared facts.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The module's bytes.
    pub wasm: Arc<Vec<u8>>,
    /// Its compiled form (for workers with the same engine key).
    pub compiled: Arc<Vec<u8>>,
    /// What it declares.
    pub facts: ModuleFacts,
}

/// The compile step (a fresh worker process, see the module docs).
pub trait Compiler {
    /// Validates and compiles `wasm`: what it declares, its compiled form,
    /// the key of the engine it is valid for.
    fn compile(
        &mut self,
        name: &str,
        wasm: &[u8],
    ) -> Result<(ModuleFacts, Vec<u8>, String), String>;
    /// The workers' engine key.
    fn engine(&self) -> &str;
}

impl Compiler for crate::pool::WorkerPool {
    fn compile(
        &mut self,
        name: &str,
        wasm: &[u8],
    ) -> Result<(ModuleFacts, Vec<u8>, String), String> {
        crate::pool::WorkerPool::compile(self, name, wasm)
    }

    fn engine(&self) -> &str {
        crate::pool::WorkerPool::engine(self)
    }
}

/// The persistent compiled-module cache.
#[derive(Debug)]
struct Cache {
    dir: PathBuf,
    key: [u8; 32],
}

impl Cache {
    /// Opens (creating) the cache directory and its key.
    fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        let key_path = dir.join("key");
        let key = match std::fs::read(&key_path) {
            Ok(k) if k.len() == 32 => {
                let mode = std::fs::metadata(&key_path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(std::io::Error::other(format!(
                        "{} is readable by other users (mode {:o}): not trusting the cache",
                        key_path.display(),
                        mode & 0o777
                    )));
                }
                let mut a = [0u8; 32];
                a.copy_from_slice(&k);
                a
            }
            _ => {
                let mut a = [0u8; 32];
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut a))?;
                let tmp = dir.join(format!("key.tmp{}", std::process::id()));
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .mode(0o600)
                    .open(&tmp)
                    .and_then(|mut f| f.write_all(&a).and_then(|()| f.sync_all()))?;
                std::fs::rename(&tmp, &key_path)?;
                a
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
        })
    }

    fn path(&self, hash: &[u8; 32], engine: &str) -> PathBuf {
        let engine: String = engine
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        self.dir.join(format!(
            "{}-{engine}.lsmod",
            blake3::Hash::from(*hash).to_hex()
        ))
    }

    fn mac(&self, hash: &[u8; 32], engine: &str, payload: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(b"lockstep-compiled-module-v1");
        h.update(hash);
        h.update(&(engine.len() as u64).to_le_bytes());
        h.update(engine.as_bytes());
        h.update(payload);
        *h.finalize().as_bytes()
    }

    /// A valid entry for `hash` and `engine`, if there is one.
    fn get(&self, hash: &[u8; 32], engine: &str) -> Option<(ModuleFacts, Vec<u8>)> {
        let path = self.path(hash, engine);
        let bytes = std::fs::read(&path).ok()?;
        let refuse = |why: &str| {
            tracing::warn!(path = %path.display(), "compiled-module cache entry refused ({why}); compiling afresh");
        };
        if bytes.len() < 40 || &bytes[..8] != ENTRY_MAGIC {
            refuse("not an entry");
            return None;
        }
        let payload = &bytes[40..];
        let mac = self.mac(hash, engine, payload);
        if bytes[8..40] != mac {
            refuse(
                "its MAC does not match: it was not written by this user's supervisor for this module and engine",
            );
            return None;
        }
        match shm_protocol::codec::decode::<(ModuleFacts, serde_bytes::ByteBuf)>(payload) {
            Ok((facts, compiled)) if facts.blake3 == *hash => Some((facts, compiled.into_vec())),
            _ => {
                refuse("malformed");
                None
            }
        }
    }

    /// Stores an entry (atomically; failures only cost a later compile).
    fn put(&self, hash: &[u8; 32], engine: &str, facts: &ModuleFacts, compiled: &[u8]) {
        let Ok(payload) = shm_protocol::codec::encode(&(facts, serde_bytes::Bytes::new(compiled)))
        else {
            return;
        };
        let mac = self.mac(hash, engine, &payload);
        let path = self.path(hash, engine);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(ENTRY_MAGIC)?;
                f.write_all(&mac)?;
                f.write_all(&payload)
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::debug!(path = %path.display(), error = %e, "cannot write a compiled-module cache entry");
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// Every module of a run (see the module docs).
#[derive(Debug, Default)]
pub struct ModuleStore {
    /// `<run-dir>/modules`.
    copies: Option<PathBuf>,
    /// `modules/` of the run a snapshot came from (replay, fork).
    origin: Option<PathBuf>,
    cache: Option<Cache>,
    prepared: HashMap<[u8; 32], Prepared>,
}

impl ModuleStore {
    /// A store keeping copies in `run_dir/modules` (read also from
    /// `origin/modules`) and compiled modules in `cache`, if given.
    pub fn new(run_dir: Option<&Path>, origin: Option<&Path>, cache: Option<&Path>) -> Self {
        let cache = cache.and_then(|d| match Cache::open(d) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(dir = %d.display(), error = %e, "no compiled-module cache");
                None
            }
        });
        Self {
            copies: run_dir.map(|d| d.join("modules")),
            origin: origin.map(|d| d.join("modules")),
            cache,
            prepared: HashMap::new(),
        }
    }

    /// The bytes of module `name` at `path`: the run's own copy of the
    /// pinned version if there is one, else the file (which must match the
    /// pin).
    fn read(&self, name: &str, path: &str, pinned: Option<&str>) -> Result<Vec<u8>, ModuleError> {
        if let Some(pin) = pinned {
            for dir in self.copies.iter().chain(&self.origin) {
                let copy = dir.join(format!("{pin}.wasm"));
                if let Ok(bytes) = std::fs::read(&copy)
                    && blake3::hash(&bytes).to_hex().as_str() == pin
                {
                    return Ok(bytes);
                }
            }
        }
        let bytes = std::fs::read(path).map_err(|e| ModuleError::Read {
            name: name.to_owned(),
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let actual = blake3::hash(&bytes).to_hex().to_string();
        if let Some(pin) = pinned
            && !pin.eq_ignore_ascii_case(&actual)
        {
            return Err(ModuleError::Hash {
                name: name.to_owned(),
                path: path.to_owned(),
                expected: pin.to_owned(),
                actual,
                pinned_by: "the run",
            });
        }
        Ok(bytes)
    }

    /// Reads, checks, keeps and compiles a module (each distinct module
    /// once per run).
    pub fn prepare(
        &mut self,
        name: &str,
        path: &str,
        pinned: Option<&str>,
        compiler: &mut dyn Compiler,
    ) -> Result<Prepared, ModuleError> {
        let bytes = self.read(name, path, pinned)?;
        let hash = *blake3::hash(&bytes).as_bytes();
        if let Some(p) = self.prepared.get(&hash) {
            return Ok(p.clone());
        }
        if let Some(dir) = &self.copies {
            let copy = dir.join(format!("{}.wasm", blake3::Hash::from(hash).to_hex()));
            if !copy.exists() {
                let _ = std::fs::create_dir_all(dir);
                let tmp = copy.with_extension("tmp");
                let ok = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .mode(0o600)
                    .open(&tmp)
                    .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
                    .and_then(|()| std::fs::rename(&tmp, &copy));
                if let Err(e) = ok {
                    tracing::warn!(file = %copy.display(), error = %e, "cannot keep a copy of a module in the run directory");
                }
            }
        }
        let engine = compiler.engine().to_owned();
        let cached = self.cache.as_ref().and_then(|c| c.get(&hash, &engine));
        let (facts, compiled) = match cached {
            Some(hit) => hit,
            None => {
                let (facts, compiled, made_by) = compiler
                    .compile(name, &bytes)
                    .map_err(ModuleError::Invalid)?;
                if facts.blake3 != hash {
                    return Err(ModuleError::Invalid(format!(
                        "module {name}: the compile step answered for other bytes"
                    )));
                }
                if let Some(c) = &self.cache
                    && made_by == engine
                {
                    c.put(&hash, &engine, &facts, &compiled);
                }
                (facts, compiled)
            }
        };
        let p = Prepared {
            wasm: Arc::new(bytes),
            compiled: Arc::new(compiled),
            facts,
        };
        self.prepared.insert(hash, p.clone());
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        compiles: u32,
    }

    impl Compiler for Fake {
        fn compile(
            &mut self,
            _: &str,
            wasm: &[u8],
        ) -> Result<(ModuleFacts, Vec<u8>, String), String> {
            self.compiles += 1;
            Ok((
                ModuleFacts {
                    blake3: *blake3::hash(wasm).as_bytes(),
                    abi_version: 0x10000,
                    globals: vec![],
                    migrates: false,
                    min_memory: 65536,
                },
                wasm.iter().rev().copied().collect(),
                "e1".into(),
            ))
        }
        fn engine(&self) -> &str {
            "e1"
        }
    }

    /// A fresh scratch directory, removed when the value is dropped.
    fn dir(tag: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("lockstep-modules-{tag}-"))
            .tempdir()
            .unwrap()
    }

    /// A cache entry swapped for another module's entry fails its MAC
    /// (and so does one edited in place): the module is compiled afresh.
    #[test]
    fn swapped_or_edited_cache_entries_are_refused() {
        let tmp = dir("mac");
        let d = tmp.path();
        let (a, b) = (d.join("a.wasm"), d.join("b.wasm"));
        std::fs::write(&a, b"module a").unwrap();
        std::fs::write(&b, b"module b").unwrap();
        let cache = d.join("cache");
        let mut c = Fake { compiles: 0 };
        let mut s = ModuleStore::new(None, None, Some(&cache));
        let pa = s.prepare("a", a.to_str().unwrap(), None, &mut c).unwrap();
        s.prepare("b", b.to_str().unwrap(), None, &mut c).unwrap();
        assert_eq!(c.compiles, 2);
        // A new run hits the cache.
        let mut s = ModuleStore::new(None, None, Some(&cache));
        let again = s.prepare("a", a.to_str().unwrap(), None, &mut c).unwrap();
        assert_eq!((c.compiles, &again.compiled), (2, &pa.compiled));
        // Swap a's entry for b's.
        let ha = blake3::hash(b"module a");
        let hb = blake3::hash(b"module b");
        let ea = cache.join(format!("{}-e1.lsmod", ha.to_hex()));
        let eb = cache.join(format!("{}-e1.lsmod", hb.to_hex()));
        std::fs::copy(&eb, &ea).unwrap();
        let mut s = ModuleStore::new(None, None, Some(&cache));
        let p = s.prepare("a", a.to_str().unwrap(), None, &mut c).unwrap();
        assert_eq!(c.compiles, 3, "the swapped entry was not trusted");
        assert_eq!(p.compiled, pa.compiled);
        // Edit an entry's compiled bytes in place.
        let mut bytes = std::fs::read(&eb).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&eb, bytes).unwrap();
        let mut s = ModuleStore::new(None, None, Some(&cache));
        s.prepare("b", b.to_str().unwrap(), None, &mut c).unwrap();
        assert_eq!(c.compiles, 4, "the edited entry was not trusted");
        let mode = std::fs::metadata(cache.join("key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A run keeps a copy of every module: a pinned module that changed on
    /// disk is read from the copy.
    #[test]
    fn the_run_directory_keeps_the_bytes_it_ran() {
        let tmp = dir("copy");
        let d = tmp.path();
        let m = d.join("m.wasm");
        std::fs::write(&m, b"version 1").unwrap();
        let run = d.join("run");
        let mut c = Fake { compiles: 0 };
        let mut s = ModuleStore::new(Some(&run), None, None);
        let p = s.prepare("m", m.to_str().unwrap(), None, &mut c).unwrap();
        let pin = blake3::Hash::from(p.facts.blake3).to_hex().to_string();
        std::fs::write(&m, b"version 2").unwrap();
        let mut s = ModuleStore::new(Some(&run), None, None);
        let again = s
            .prepare("m", m.to_str().unwrap(), Some(&pin), &mut c)
            .unwrap();
        assert_eq!(&again.wasm[..], b"version 1");
        // Without the copy, the pin refuses the changed file.
        std::fs::remove_dir_all(run.join("modules")).unwrap();
        let mut s = ModuleStore::new(Some(&run), None, None);
        let e = s
            .prepare("m", m.to_str().unwrap(), Some(&pin), &mut c)
            .unwrap_err();
        assert!(matches!(e, ModuleError::Hash { .. }), "{e}");
    }
}
