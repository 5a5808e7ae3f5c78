//! `lockstep-node fetch`: rebuilds a run directory from its JetStream
//! archive ([`crate::archive`]) on any machine, for `lockstep resume`,
//! `verify` or `fork`.  `lockstep resume nats://HOST:PORT/NAME --into DIR`
//! runs it, then resumes.
//!
//! Every object is checked against the BLAKE3 recorded when it was
//! archived (and the store's own SHA-256); the append-only files must come
//! back as one contiguous run of bytes from offset 0.  Anything else is an
//! error naming the object or the offset, and nothing is resumed.

use crate::NodeError;
use crate::link::{connect, runtime};
use crate::store::{APPENDED, BLAKE3_KEY, OFFSET_HEADER, Store, subject};
use async_nats::jetstream::stream::DirectGetErrorKind;
use futures_util::StreamExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use tokio::io::AsyncReadExt;

/// `lockstep-node fetch`.
#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// The NATS server (`nats://host:port`).
    #[arg(long)]
    pub nats: String,
    /// The archive's name.
    #[arg(long)]
    pub name: String,
    /// The run directory to create (must not exist, or be empty).
    #[arg(long)]
    pub into: PathBuf,
}

/// Fetches the archive into `--into`.
pub fn run(args: FetchArgs) -> Result<(), NodeError> {
    if !crate::wire::is_token(&args.name) {
        return Err(NodeError::Usage(format!(
            "--name {:?}: one word of letters, digits, `-` and `_`",
            args.name
        )));
    }
    let dir = &args.into;
    if dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(NodeError::Usage(format!(
            "{}: exists and is not empty",
            dir.display()
        )));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| NodeError::Usage(format!("{}: {e}", dir.display())))?;
    let rt = runtime()?;
    let client =
        connect(&rt, &args.nats, &format!("lockstep fetch {}", args.name)).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(dir);
        })?;
    let (journal, objects) = match rt.block_on(fetch(client, &args.name, dir)) {
        Ok(r) => r,
        Err(e) => {
            // Nothing half-fetched is left to be resumed by mistake.
            let _ = std::fs::remove_dir_all(dir);
            return Err(e);
        }
    };
    println!(
        "fetched {} from {}: journal {journal} bytes, {objects} objects, into {}",
        args.name,
        args.nats,
        dir.display()
    );
    Ok(())
}

async fn fetch(
    client: async_nats::Client,
    name: &str,
    dir: &Path,
) -> Result<(u64, usize), NodeError> {
    let store = Store::open(client, name, false).await?;
    let mut journal_len = 0;
    for (file, suffix) in APPENDED {
        let subj = subject(name, suffix);
        let mut bytes: Vec<u8> = Vec::new();
        let mut seq = 1;
        loop {
            let msg = match store
                .stream
                .direct_get_next_for_subject(&subj, Some(seq))
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(NodeError::Nats(format!("reading {subj}: {e}"))),
            };
            let off: Option<u64> = msg
                .headers
                .get(OFFSET_HEADER)
                .and_then(|v| v.as_str().parse().ok());
            if off != Some(bytes.len() as u64) {
                return Err(NodeError::Nats(format!(
                    "{subj}: message {} holds offset {off:?} where {} was due",
                    msg.sequence,
                    bytes.len()
                )));
            }
            bytes.extend_from_slice(&msg.payload);
            seq = msg.sequence + 1;
        }
        if file == "journal.lsj" {
            if bytes.is_empty() {
                return Err(NodeError::Nats(format!(
                    "archive {name:?} holds no journal"
                )));
            }
            journal_len = bytes.len() as u64;
        }
        write(dir, file, &bytes)?;
    }
    let mut list = store
        .bucket
        .list()
        .await
        .map_err(|e| NodeError::Nats(format!("listing the objects: {e}")))?;
    let mut objects = 0;
    while let Some(info) = list.next().await {
        let info = info.map_err(|e| NodeError::Nats(format!("listing the objects: {e}")))?;
        if info.deleted {
            continue;
        }
        let mut obj = store
            .bucket
            .get(&info.name)
            .await
            .map_err(|e| NodeError::Nats(format!("{}: {e}", info.name)))?;
        // The size is the archive's claim: a hint, never an allocation of
        // whatever it says.
        let mut bytes = Vec::with_capacity(info.size.min(64 << 20));
        obj.read_to_end(&mut bytes)
            .await
            .map_err(|e| NodeError::Nats(format!("{}: {e}", info.name)))?;
        let want = info.metadata.get(BLAKE3_KEY);
        let got = blake3::hash(&bytes).to_hex().to_string();
        if want != Some(&got) {
            return Err(NodeError::Nats(format!(
                "{}: BLAKE3 {got} where {want:?} was archived",
                info.name
            )));
        }
        write(dir, &info.name, &bytes)?;
        objects += 1;
    }
    Ok((journal_len, objects))
}

/// Writes `rel` below `dir` (owner only); a name that would leave `dir` is
/// refused.
fn write(dir: &Path, rel: &str, bytes: &[u8]) -> Result<(), NodeError> {
    use std::io::Write;
    let rel_path = Path::new(rel);
    if rel.is_empty()
        || !rel_path
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(NodeError::Nats(format!(
            "object name {rel:?} is not a plain relative path"
        )));
    }
    let path = dir.join(rel_path);
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| NodeError::Nats(format!("{}: {e}", parent.display())))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| NodeError::Nats(format!("{}: {e}", path.display())))
}
