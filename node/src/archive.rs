//! `lockstep-node archive`: mirrors a live run directory into JetStream, so
//! that the run can be resumed on another machine if this one dies
//! (`lockstep resume nats://HOST:PORT/NAME --into DIR`; [`crate::fetch`]).
//!
//! The supervisor starts it for `lockstep run --archive` and stops it with
//! SIGTERM when the run ends; it also gets SIGTERM when the supervisor dies
//! (`PR_SET_PDEATHSIG`).  Either way it makes one last pass, so that what
//! the supervisor wrote before it stopped is archived.
//!
//! Each pass (every `--every-ms`) lists the checkpoints first, then appends
//! what the journal and the page store grew by, then uploads the listed
//! checkpoints not yet uploaded: a checkpoint is archived only after the
//! pages it refers to, and a resume uses the newest checkpoint the archived
//! journal reaches, re-executing the journal after it.

use crate::NodeError;
use crate::link::{connect, runtime};
use crate::store::{APPENDED, BLAKE3_KEY, CHUNK, OFFSET_HEADER, Store, subject};
use async_nats::jetstream::object_store::ObjectMetadata;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `lockstep-node archive`.
#[derive(Debug, clap::Args)]
pub struct ArchiveArgs {
    /// The NATS server (`nats://host:port`), with JetStream.
    #[arg(long)]
    pub nats: String,
    /// The run directory to mirror.
    #[arg(long)]
    pub run_dir: PathBuf,
    /// The archive's name (`lockstep run --archive` passes the run
    /// directory's name by default).
    #[arg(long)]
    pub name: String,
    /// Milliseconds between passes.
    #[arg(long, default_value_t = 200)]
    pub every_ms: u64,
    /// Make one pass and exit (archive a finished run).
    #[arg(long)]
    pub once: bool,
}

/// How far an append-only file is archived.
#[derive(Debug, Clone, Copy)]
struct Appended {
    ino: u64,
    len: u64,
}

/// What the archive holds so far.
#[derive(Debug, Default)]
struct Mirror {
    appended: BTreeMap<&'static str, Appended>,
    /// Object name → (size, mtime) uploaded.
    objects: BTreeMap<String, (u64, i64)>,
}

/// Runs the archiver until SIGTERM (then one last pass).
pub fn run(args: ArchiveArgs) -> Result<(), NodeError> {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(NodeError::Runtime)?;
    }
    let name = args.name.clone();
    if !crate::wire::is_token(&name) {
        return Err(NodeError::Usage(format!(
            "--name {name:?}: one word of letters, digits, `-` and `_`"
        )));
    }
    let rt = runtime()?;
    let client = connect(&rt, &args.nats, &format!("lockstep archive {name}"))?;
    let store = rt.block_on(Store::open(client, &name, true))?;
    {
        // The supervisor waits for this line: from now on SIGTERM means
        // "one last pass".
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "lockstep-node archive {name}: ready");
        let _ = out.flush();
    }
    let mut mirror = Mirror::default();
    loop {
        let last = args.once || stop.load(Ordering::SeqCst);
        rt.block_on(pass(&store, &name, &args.run_dir, &mut mirror))?;
        if last {
            break;
        }
        let mut slept = Duration::ZERO;
        let every = Duration::from_millis(args.every_ms.max(10));
        while slept < every && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
            slept += Duration::from_millis(10);
        }
    }
    tracing::info!(
        %name,
        journal = mirror.appended.get("journal.lsj").map_or(0, |a| a.len),
        objects = mirror.objects.len(),
        "archive complete"
    );
    Ok(())
}

/// The files of the run directory archived as objects: checkpoints,
/// modules, the copies of models loaded while the run went (`models/`), the
/// manifest and the settings.
fn object_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for f in ["manifest.toml", "meta.json"] {
        out.push((f.to_owned(), dir.join(f)));
    }
    for sub in ["snapshots", "modules", "models"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.ends_with(".tmp") {
                    continue;
                }
                out.push((format!("{sub}/{n}"), e.path()));
            }
        }
    }
    out.sort();
    out
}

async fn pass(store: &Store, name: &str, dir: &Path, mirror: &mut Mirror) -> Result<(), NodeError> {
    let listed = object_files(dir);
    for (file, suffix) in APPENDED {
        append(store, &subject(name, suffix), &dir.join(file), file, mirror).await?;
    }
    for (obj, path) in &listed {
        let Ok(md) = std::fs::metadata(path) else {
            continue;
        };
        let stamp = (md.len(), md.mtime_nsec() + md.mtime() * 1_000_000_000);
        if mirror.objects.get(obj) == Some(&stamp) {
            continue;
        }
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        let mut meta = ObjectMetadata {
            name: obj.clone(),
            ..Default::default()
        };
        meta.metadata.insert(
            BLAKE3_KEY.to_owned(),
            blake3::hash(&bytes).to_hex().to_string(),
        );
        store
            .bucket
            .put(meta, &mut bytes.as_slice())
            .await
            .map_err(|e| NodeError::Nats(format!("uploading {obj}: {e}")))?;
        mirror.objects.insert(obj.clone(), stamp);
    }
    // Checkpoints that retention removed leave the archive too.
    let gone: Vec<String> = mirror
        .objects
        .keys()
        .filter(|o| !listed.iter().any(|(l, p)| l == *o && p.exists()))
        .cloned()
        .collect();
    for o in gone {
        let _ = store.bucket.delete(&o).await;
        mirror.objects.remove(&o);
    }
    Ok(())
}

/// Appends what `path` grew by since the last pass (all of it, after a
/// purge, if it was rewritten).
async fn append(
    store: &Store,
    subj: &str,
    path: &Path,
    key: &'static str,
    mirror: &mut Mirror,
) -> Result<(), NodeError> {
    use std::io::{Read, Seek};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Ok(());
    };
    let md = f
        .metadata()
        .map_err(|e| NodeError::Nats(format!("{}: {e}", path.display())))?;
    let (ino, len) = (md.ino(), md.len());
    let from = match mirror.appended.get(key) {
        Some(a) if a.ino == ino && a.len <= len => a.len,
        _ => {
            // New to this archiver, or rewritten: start the subject over.
            store
                .stream
                .purge()
                .filter(subj)
                .await
                .map_err(|e| NodeError::Nats(format!("purging {subj}: {e}")))?;
            0
        }
    };
    if from == len && mirror.appended.contains_key(key) {
        return Ok(());
    }
    f.seek(std::io::SeekFrom::Start(from))
        .map_err(|e| NodeError::Nats(format!("{}: {e}", path.display())))?;
    let mut buf = vec![0u8; CHUNK];
    let mut off = from;
    let mut acks = Vec::new();
    while off < len {
        let want = ((len - off) as usize).min(CHUNK);
        f.read_exact(&mut buf[..want])
            .map_err(|e| NodeError::Nats(format!("{}: {e}", path.display())))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(OFFSET_HEADER, off.to_string().as_str());
        let ack = store
            .js
            .publish_with_headers(
                subj.to_owned(),
                headers,
                bytes::Bytes::copy_from_slice(&buf[..want]),
            )
            .await
            .map_err(|e| NodeError::Nats(format!("appending to {subj}: {e}")))?;
        acks.push(ack);
        off += want as u64;
    }
    for ack in acks {
        ack.await
            .map_err(|e| NodeError::Nats(format!("appending to {subj}: {e}")))?;
    }
    mirror.appended.insert(key, Appended { ino, len });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::object_files;

    /// Everything a resume elsewhere needs is an object: checkpoints,
    /// modules and the models loaded at run time; temporary files are not.
    #[test]
    fn object_files_cover_checkpoints_modules_and_loaded_models() {
        let tmp = tempfile::Builder::new()
            .prefix("lockstep-archive-list-")
            .tempdir()
            .unwrap();
        let dir = tmp.path();
        for (sub, file) in [
            ("snapshots", "000100.snap"),
            ("modules", "ab.wasm"),
            ("models", "cd.onnx"),
            ("models", "ef.onnx.tmp"),
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            std::fs::write(dir.join(sub).join(file), b"x").unwrap();
        }
        let names: Vec<String> = object_files(dir).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "manifest.toml",
                "meta.json",
                "models/cd.onnx",
                "modules/ab.wasm",
                "snapshots/000100.snap"
            ]
        );
    }
}
