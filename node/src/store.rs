//! Where an archived run lives in JetStream.
//!
//! * The run's two append-only files, `journal.lsj` and `pages.pack` (the
//!   checkpoints' memory chunks), are appended to the stream
//!   [`STREAM`] on `lockstep.run.<name>.journal` and `….pages`: each
//!   message is a run of bytes of at most [`CHUNK`], with its file offset
//!   in the `Lockstep-Offset` header.  A file that was rewritten (retention
//!   compacts both by writing a new file and renaming it) is purged from
//!   the stream and appended again from offset 0.
//! * Every other file of the run directory that a resume needs — the
//!   checkpoints (`snapshots/tick-<T>.lss`), the modules, `manifest.toml`,
//!   `meta.json` — is an object of the object-store bucket
//!   `lockstep-run-<name>`, with its BLAKE3 in the object's metadata
//!   (checked on arrival, besides the store's own SHA-256).

use crate::NodeError;
use async_nats::jetstream::{self, object_store, stream};

/// The stream holding every archived run's append-only files.
pub const STREAM: &str = "LOCKSTEP_RUNS";
/// Largest message of the stream (below the servers' default 1 MiB).
pub const CHUNK: usize = 512 * 1024;
/// The header with a message's file offset.
pub const OFFSET_HEADER: &str = "Lockstep-Offset";
/// The metadata key with an object's BLAKE3 (hex).
pub const BLAKE3_KEY: &str = "blake3";
/// The append-only files, with their subject suffix.
pub const APPENDED: [(&str, &str); 2] = [("journal.lsj", "journal"), ("pages.pack", "pages")];

/// The subject of one append-only file of run `name`.
pub fn subject(name: &str, suffix: &str) -> String {
    format!("lockstep.run.{name}.{suffix}")
}

/// The object-store bucket of run `name`.
pub fn bucket(name: &str) -> String {
    format!("lockstep-run-{name}")
}

/// The stream and bucket of one run.
pub struct Store {
    /// The JetStream context.
    pub js: jetstream::Context,
    /// The stream of append-only files.
    pub stream: stream::Stream,
    /// The run's bucket.
    pub bucket: object_store::ObjectStore,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn js_err(what: &str, e: impl std::fmt::Display) -> NodeError {
    NodeError::Nats(format!("{what}: {e}"))
}

impl Store {
    /// Opens (creating them if `create`) the stream and the bucket of run
    /// `name`.
    pub async fn open(
        client: async_nats::Client,
        name: &str,
        create: bool,
    ) -> Result<Self, NodeError> {
        let js = jetstream::new(client);
        let stream = if create {
            js.get_or_create_stream(stream::Config {
                name: STREAM.to_owned(),
                subjects: vec!["lockstep.run.>".to_owned()],
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| js_err("the run stream", e))?
        } else {
            js.get_stream(STREAM)
                .await
                .map_err(|e| js_err("no archived runs on this server (stream LOCKSTEP_RUNS)", e))?
        };
        let bucket = if create {
            js.create_object_store(object_store::Config {
                bucket: bucket(name),
                ..Default::default()
            })
            .await
            .map_err(|e| js_err("the run's object store", e))?
        } else {
            js.get_object_store(bucket(name))
                .await
                .map_err(|e| js_err(&format!("no archived run {name:?}"), e))?
        };
        Ok(Self { js, stream, bucket })
    }
}
