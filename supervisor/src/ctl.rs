//! `lockstep ctl`: talking to a running supervisor over
//! `<run-dir>/control.sock`.
//!
//! One request per connection: a JSON line, a [`Command`] in its socket
//! form (`{"cmd":"<name>", …}`, [`Command::from_json`]), answered with one
//! line once the supervisor has handled it at a tick boundary.  Inputs are
//! journaled with the tick they apply at, so a replay reproduces them.
//!
//! The answer is a line of prose unless the request carries
//! `"format": "json"`; then it is one JSON object:
//!
//! ```text
//! {"ok":true,"tick":N,"data":{…},"text":"applied at tick N: …"}
//! {"ok":false,"code":"unknown-agent","message":"no agent `x`","text":"refused: no agent `x`"}
//! ```
//!
//! `tick` is the tick an input applies at (the next one), the tick a
//! snapshot or status was taken after, or the last tick before a stop.
//! `code` is one of [`ErrorCode`]'s stable names.  `text` is the prose
//! line, for people (`lockstep ctl` prints it); programs read the other
//! fields and never parse it.

use crate::command::Command;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// Largest request accepted.
pub const MAX_REQUEST: u64 = 4 << 20;

/// The commands of the socket: the one [`Command`] type (kept under its
/// older name for callers of this module).
pub use crate::command::Command as CtlCommand;

/// Why a request failed: stable names that scripts and clients may match
/// on (the message is for people and may change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is not a valid command, or a field is out of its range
    /// (agent name, memory, fuel, topic or channel name).
    BadRequest,
    /// No agent of that name or `#id`.
    UnknownAgent,
    /// No tenant of that name.
    UnknownTenant,
    /// No such model is loaded, or no such version of it.
    UnknownModel,
    /// An agent of that name (or a task of that id) already exists.
    Conflict,
    /// The agent is stopped or not yet started.
    NotRunning,
    /// The module cannot be read, fails its checks, does not match its
    /// pinned hash or needs more memory than the agent's limit.
    ModuleRefused,
    /// An upgrade's module speaks another ABI major version or changes the
    /// state layout without exporting `agent_migrate`.
    IncompatibleUpgrade,
    /// A task depends on itself, on a failed task or on an unknown task.
    BadDependency,
    /// A quota, size or count limit (tenant agents or memory, payload
    /// size, number of dependencies, agent ids).
    Limit,
    /// The run is stopping or has stopped; nothing was applied.
    Stopping,
    /// The run did not answer in time (paused or stuck).
    Timeout,
    /// The supervisor failed to do it (for example a snapshot write).
    Internal,
    /// A model to load cannot be read, does not match its pinned hash, or
    /// the inference host cannot load it.
    ModelRefused,
    /// A model refused an outside `infer` input (shape, type) or failed
    /// to run it.
    InferenceFailed,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownAgent,
        ErrorCode::UnknownTenant,
        ErrorCode::UnknownModel,
        ErrorCode::Conflict,
        ErrorCode::NotRunning,
        ErrorCode::ModuleRefused,
        ErrorCode::IncompatibleUpgrade,
        ErrorCode::BadDependency,
        ErrorCode::Limit,
        ErrorCode::Stopping,
        ErrorCode::Timeout,
        ErrorCode::Internal,
        ErrorCode::ModelRefused,
        ErrorCode::InferenceFailed,
    ];

    /// The stable kebab-case name.
    pub fn code(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::UnknownAgent => "unknown-agent",
            ErrorCode::UnknownTenant => "unknown-tenant",
            ErrorCode::UnknownModel => "unknown-model",
            ErrorCode::Conflict => "conflict",
            ErrorCode::NotRunning => "not-running",
            ErrorCode::ModuleRefused => "module-refused",
            ErrorCode::IncompatibleUpgrade => "incompatible-upgrade",
            ErrorCode::BadDependency => "bad-dependency",
            ErrorCode::Limit => "limit",
            ErrorCode::Stopping => "stopping",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::ModelRefused => "model-refused",
            ErrorCode::InferenceFailed => "inference-failed",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// A refused input: its code and the reason (the reason is what the
/// journal records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable code.
    pub code: ErrorCode,
    /// The reason, for people.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// An applied input: the prose the journal records and the same facts as
/// JSON for structured answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// Prose.
    pub text: String,
    /// Structured facts (ids, counts).
    pub data: serde_json::Value,
}

/// What the run answers to a request, rendered as prose or JSON by the
/// connection that asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Done (or accepted for the next tick).
    Ok {
        /// See the module documentation.
        tick: u64,
        /// The prose answer.
        text: String,
        /// The structured answer.
        data: serde_json::Value,
    },
    /// An input was refused; nothing changed.
    Refused(Refusal),
    /// Something failed.
    Error(Refusal),
}

impl Reply {
    /// The prose line (what `lockstep ctl` has always printed).
    pub fn prose(&self) -> String {
        match self {
            Reply::Ok { text, .. } => text.clone(),
            Reply::Refused(r) => format!("refused: {}", r.message),
            Reply::Error(r) => format!("error: {}", r.message),
        }
    }

    /// The JSON line (keys in the documented order; `text` is
    /// [`Reply::prose`]).
    pub fn json(&self) -> String {
        let text = serde_json::Value::from(self.prose());
        match self {
            Reply::Ok { tick, data, .. } => {
                format!(r#"{{"ok":true,"tick":{tick},"data":{data},"text":{text}}}"#)
            }
            Reply::Refused(r) | Reply::Error(r) => format!(
                r#"{{"ok":false,"code":"{}","message":{},"text":{text}}}"#,
                r.code.code(),
                serde_json::Value::from(r.message.as_str())
            ),
        }
    }

    /// Answer for an applied or refused input taking effect at `tick`.
    pub fn outcome(tick: u64, outcome: Result<Applied, Refusal>) -> Self {
        match outcome {
            Ok(a) => Reply::Ok {
                tick,
                text: format!("applied at tick {tick}: {}", a.text),
                data: a.data,
            },
            Err(r) => Reply::Refused(r),
        }
    }
}

/// A command handed to the run loop, with where its answer goes.
#[derive(Debug)]
pub struct CtlRequest {
    /// The command (module and model paths already made absolute).
    pub command: Command,
    /// Where the answer goes.
    pub reply: mpsc::Sender<Reply>,
}

/// Makes the paths of a command absolute against this process's working
/// directory (the socket's clients may run elsewhere).
pub fn absolute_paths(mut command: Command) -> Command {
    let abs = |p: &mut String| {
        if let Ok(c) = std::fs::canonicalize(&*p) {
            *p = c.display().to_string();
        }
    };
    match &mut command {
        Command::Spawn { module, .. } | Command::Upgrade { module, .. } => abs(module),
        Command::LoadModel { path, .. } => abs(path),
        _ => {}
    }
    command
}

/// The listening side, owned by the run.
#[derive(Debug)]
pub struct CtlServer {
    rx: mpsc::Receiver<CtlRequest>,
    stop: Arc<AtomicBool>,
    path: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CtlServer {
    /// Listens on `path` (replacing a stale socket file).
    pub fn start(path: &Path) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lockstep-ctl".into())
            // A blocking accept: a request is taken at once (no polling
            // delay); `stop` wakes it with a connection of its own.
            .spawn(move || {
                loop {
                    let accepted = listener.accept();
                    if s2.load(Ordering::Relaxed) {
                        break;
                    }
                    match accepted {
                        Ok((stream, _)) => {
                            let tx = tx.clone();
                            let _ = std::thread::Builder::new()
                                .name("lockstep-ctl-conn".into())
                                .spawn(move || serve(stream, &tx));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        Ok(Self {
            rx,
            stop,
            path: path.to_owned(),
            thread: Some(thread),
        })
    }

    /// Requests waiting to be applied.
    pub fn drain(&self) -> Vec<CtlRequest> {
        self.rx.try_iter().collect()
    }

    /// Stops listening and removes the socket.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // Wake the blocked accept; if the socket is gone the thread
            // cannot be woken and is left behind (it holds only the
            // listener).
            if UnixStream::connect(&self.path).is_ok() {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Parses a request line: the command and whether the answer is JSON.
fn parse_request(line: &str) -> Result<(Command, bool), Refusal> {
    let bad =
        |e: serde_json::Error| Refusal::new(ErrorCode::BadRequest, format!("bad request: {e}"));
    let mut v: serde_json::Value = serde_json::from_str(line.trim()).map_err(bad)?;
    let json = match v.as_object_mut().and_then(|o| o.remove("format")) {
        None => false,
        Some(serde_json::Value::String(f)) if f == "json" => true,
        Some(serde_json::Value::String(f)) if f == "text" => false,
        Some(other) => {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("bad request: format must be \"json\" or \"text\", not {other}"),
            ));
        }
    };
    let cmd = Command::from_json(v)
        .map_err(|e| Refusal::new(ErrorCode::BadRequest, format!("bad request: {e}")))?;
    Ok((cmd, json))
}

fn serve(stream: UnixStream, tx: &mpsc::Sender<CtlRequest>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut line = String::new();
    let mut reader = BufReader::new(stream.take(MAX_REQUEST));
    let (reply, json) = match reader.read_line(&mut line) {
        Ok(0) | Err(_) => (
            Reply::Error(Refusal::new(
                ErrorCode::BadRequest,
                "empty or unreadable request",
            )),
            // An unreadable request cannot say; answer JSON if it looks
            // like it asked for it.
            line.contains("\"json\""),
        ),
        Ok(_) => match parse_request(&line) {
            Err(r) => (Reply::Error(r), line.contains("\"json\"")),
            Ok((cmd, json)) => {
                let (rtx, rrx) = mpsc::channel();
                let request = CtlRequest {
                    command: absolute_paths(cmd),
                    reply: rtx,
                };
                let reply = if tx.send(request).is_err() {
                    Reply::Error(Refusal::new(ErrorCode::Stopping, "the run is ending"))
                } else {
                    match rrx.recv_timeout(Duration::from_secs(120)) {
                        Ok(r) => r,
                        Err(mpsc::RecvTimeoutError::Timeout) => Reply::Error(Refusal::new(
                            ErrorCode::Timeout,
                            "no answer from the run (is it stopped or paused?)",
                        )),
                        Err(mpsc::RecvTimeoutError::Disconnected) => Reply::Error(Refusal::new(
                            ErrorCode::Stopping,
                            "no answer from the run (is it stopped or paused?)",
                        )),
                    }
                };
                (reply, json)
            }
        },
    };
    let answer = if json { reply.json() } else { reply.prose() };
    let _ = out.write_all(answer.as_bytes());
    let _ = out.write_all(b"\n");
}

/// Sends one command to the run in `run_dir` and returns its answer (prose,
/// for people).
pub fn request(run_dir: &Path, cmd: &Command) -> Result<String, String> {
    send_line(run_dir, &cmd.to_json().to_string())
}

/// Sends one command asking for the JSON answer and returns that line.
pub fn request_json(run_dir: &Path, cmd: &Command) -> Result<String, String> {
    let mut v = cmd.to_json();
    if let Some(o) = v.as_object_mut() {
        o.insert("format".into(), "json".into());
    }
    send_line(run_dir, &v.to_string())
}

/// A JSON answer, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The answer as it came (one JSON line).
    pub line: String,
    /// Its `ok`.
    pub ok: bool,
    /// Its `text` (the prose line).
    pub text: String,
}

/// Sends one command and reads its JSON answer.
pub fn ask(run_dir: &Path, cmd: &Command) -> Result<Answer, String> {
    let line = request_json(run_dir, cmd)?;
    let v: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| format!("unreadable answer `{line}`: {e}"))?;
    let ok = v["ok"] == serde_json::Value::Bool(true);
    let text = match &v["text"] {
        serde_json::Value::String(t) => t.clone(),
        _ => v["message"].as_str().unwrap_or_default().to_owned(),
    };
    Ok(Answer { line, ok, text })
}

fn send_line(run_dir: &Path, body: &str) -> Result<String, String> {
    let sock = run_dir.join("control.sock");
    let mut s = UnixStream::connect(&sock).map_err(|e| {
        format!(
            "cannot connect to {} (is the run still going?): {e}",
            sock.display()
        )
    })?;
    s.write_all(body.as_bytes())
        .and_then(|()| s.write_all(b"\n"))
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .map_err(|e| e.to_string())?;
    Ok(answer.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_kebab_case() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            let s = c.code();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{s}"
            );
        }
    }

    #[test]
    fn format_is_optional_and_checked() {
        let (c, j) = parse_request(r#"{"cmd":"status"}"#).unwrap();
        assert_eq!((c, j), (Command::Status, false));
        let (c, j) = parse_request(r#"{"cmd":"status","format":"json"}"#).unwrap();
        assert_eq!((c, j), (Command::Status, true));
        let (c, _) =
            parse_request(r#"{"cmd":"join-channel","agent":"a","channel":"c","format":"json"}"#)
                .unwrap();
        assert_eq!(
            c,
            Command::JoinChannel {
                agent: "a".into(),
                channel: "c".into()
            }
        );
        let e = parse_request(r#"{"cmd":"status","format":"xml"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = parse_request(r#"{"cmd":"fly"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn replies_render_both_ways() {
        let ok = Reply::outcome(
            7,
            Ok(Applied {
                text: "sent to agent 2".into(),
                data: serde_json::json!({"agent": 2}),
            }),
        );
        assert_eq!(ok.prose(), "applied at tick 7: sent to agent 2");
        assert_eq!(
            ok.json(),
            r#"{"ok":true,"tick":7,"data":{"agent":2},"text":"applied at tick 7: sent to agent 2"}"#
        );
        let no = Reply::outcome(
            7,
            Err(Refusal::new(ErrorCode::UnknownAgent, "no agent `x`")),
        );
        assert_eq!(no.prose(), "refused: no agent `x`");
        let v: serde_json::Value = serde_json::from_str(&no.json()).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["code"], "unknown-agent");
        assert_eq!(v["message"], "no agent `x`");
        assert_eq!(v["text"], "refused: no agent `x`");
    }
}
