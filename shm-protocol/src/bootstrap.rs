//! Child-side bring-up: attach the inherited segment and say hello.
//!
//! The supervisor passes the segment as an inherited file descriptor
//! (`--shm-fd N`, a memfd) or a path (`--shm-path P`).  [`connect`] then:
//!
//! 1. asks the kernel to SIGKILL this process if the supervisor dies
//!    (`PR_SET_PDEATHSIG`) and checks the parent did not die before that;
//! 2. attaches the segment, validating its header;
//! 3. opens a pidfd on the creator so blocked ring calls see its death;
//! 4. sends [`Up::Hello`] and waits for [`Down::Welcome`].

use crate::control::{Down, ExitCode, Hello, PROTOCOL_VERSION, Role, Up};
use crate::endpoint::{ChannelError, Endpoint, Receiver, Sender, WaitPolicy};
use crate::peer::PidFd;
use crate::segment::{Segment, SegmentError};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where the child finds its segment.
#[derive(Debug, Clone)]
pub enum SegmentSource {
    /// An inherited descriptor.
    Fd(RawFd),
    /// A file path.
    Path(PathBuf),
    /// A file path this process already opened (before its sandbox took the
    /// file system away).
    Opened(std::sync::Arc<std::fs::File>, PathBuf),
}

impl SegmentSource {
    /// For [`SegmentSource::Path`], the file opened now (read and write),
    /// so that attaching later needs no file system; other sources as they
    /// are.
    pub fn open_now(self) -> Result<Self, BootstrapError> {
        match self {
            SegmentSource::Path(p) => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&p)
                    .map_err(|e| {
                        BootstrapError::Attach(SegmentError::Io {
                            op: "open",
                            what: p.display().to_string(),
                            source: e,
                        })
                    })?;
                Ok(SegmentSource::Opened(std::sync::Arc::new(file), p))
            }
            other => Ok(other),
        }
    }
}

/// Bring-up failures, each mapped to an [`ExitCode`].
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The descriptor is not open.
    #[error("file descriptor {0} passed with --shm-fd is not open")]
    BadFd(RawFd),
    /// The segment could not be attached.
    #[error("could not attach the shared-memory segment")]
    Attach(#[source] SegmentError),
    /// The supervisor is already gone.
    #[error("the supervisor (pid {0}) is not our parent or already exited")]
    ParentGone(u32),
    /// The handshake failed.
    #[error("handshake with the supervisor failed")]
    Handshake(#[source] ChannelError),
    /// The supervisor refused us.
    #[error("the supervisor rejected the handshake: {0}")]
    Rejected(String),
    /// The supervisor answered with something else.
    #[error("unexpected handshake answer: {0}")]
    Unexpected(String),
}

impl BootstrapError {
    /// The exit code for this failure.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            BootstrapError::BadFd(_) | BootstrapError::Attach(_) => ExitCode::Attach,
            BootstrapError::ParentGone(_) => ExitCode::SupervisorGone,
            BootstrapError::Handshake(ChannelError::PeerGone(_)) => ExitCode::SupervisorGone,
            BootstrapError::Handshake(_)
            | BootstrapError::Rejected(_)
            | BootstrapError::Unexpected(_) => ExitCode::Handshake,
        }
    }
}

/// Takes ownership of an inherited descriptor after checking it is open.
fn take_fd(fd: RawFd) -> Result<OwnedFd, BootstrapError> {
    // SAFETY: F_GETFD only queries the descriptor table; any integer is a
    // valid argument (a closed one yields EBADF).
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(BootstrapError::BadFd(fd));
    }
    // SAFETY: the descriptor is open (checked above) and was handed to this
    // process by its supervisor for exactly this purpose; bring-up takes
    // ownership of it once and nothing else in the process refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Closes every descriptor this process inherited except stdin, stdout,
/// stderr and `keep` (the segment): the first step of a child's sandbox
/// (`lockstep_sandbox`), so that nothing the supervisor's own parent
/// leaked reaches an agent's process.  Must be called first thing in
/// `main`, before the process opens anything of its own; returns the
/// descriptors closed.
pub fn close_inherited_fds(keep: &[RawFd]) -> std::io::Result<Vec<RawFd>> {
    let mut open: Vec<RawFd> = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        if let Some(fd) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
            open.push(fd);
        }
    }
    // The directory's own descriptor is closed by now (and listed above):
    // closing it again fails with EBADF, which is ignored.
    let mut closed = Vec::new();
    for fd in open {
        if fd <= 2 || keep.contains(&fd) {
            continue;
        }
        // SAFETY: `fd` was inherited across exec (or is the closed listing
        // descriptor): no object of this process owns it, because the
        // process has opened nothing of its own yet (documented
        // precondition), so closing it cannot invalidate a live owner.
        if unsafe { libc::close(fd) } == 0 {
            closed.push(fd);
        }
    }
    Ok(closed)
}

/// Attaches the segment and completes the handshake as `role`/`name`.
pub fn connect(
    source: &SegmentSource,
    role: Role,
    name: &str,
    policy: WaitPolicy,
) -> Result<Endpoint, BootstrapError> {
    // Die with the supervisor even if we are busy and never touch the rings.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let segment = match source {
        SegmentSource::Fd(fd) => {
            let file = std::fs::File::from(take_fd(*fd)?);
            Segment::attach(file, format!("fd {fd}")).map_err(BootstrapError::Attach)?
        }
        SegmentSource::Path(p) => Segment::attach_path(p).map_err(BootstrapError::Attach)?,
        SegmentSource::Opened(file, p) => {
            let file = file.try_clone().map_err(|e| {
                BootstrapError::Attach(SegmentError::Io {
                    op: "dup",
                    what: p.display().to_string(),
                    source: e,
                })
            })?;
            Segment::attach(file, p.display().to_string()).map_err(BootstrapError::Attach)?
        }
    };
    let creator = segment.info().creator_pid;
    let inherited = matches!(source, SegmentSource::Fd(_));
    if inherited && nix::unistd::getppid().as_raw() as u32 != creator {
        return Err(BootstrapError::ParentGone(creator));
    }
    let pidfd = PidFd::open(creator).map_err(|_| BootstrapError::ParentGone(creator))?;
    let mut ep = Endpoint::new(segment, Some(pidfd), None, policy);
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        role,
        pid: std::process::id(),
        name: name.to_owned(),
        build: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let deadline = Some(Instant::now() + Duration::from_secs(30));
    ep.send_msg(&Up::Hello(hello), deadline)
        .map_err(BootstrapError::Handshake)?;
    match ep
        .recv_msg::<Down>(deadline)
        .map_err(BootstrapError::Handshake)?
    {
        Down::Welcome { protocol, .. } if protocol == PROTOCOL_VERSION => Ok(ep),
        Down::Welcome { protocol, .. } => Err(BootstrapError::Rejected(format!(
            "supervisor speaks protocol {protocol}"
        ))),
        Down::Reject { reason } => Err(BootstrapError::Rejected(reason)),
        other => Err(BootstrapError::Unexpected(format!("{other:?}"))),
    }
}

/// Installs a panic hook that reports the panic and exits with
/// [`ExitCode::Internal`] (instead of unwinding into half-updated state).
pub fn install_panic_exit(name: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("{name}: internal error: {info}");
        ExitCode::Internal.exit();
    }));
}

/// What a child's handler wants after a command.
#[derive(Debug)]
pub enum Reply {
    /// Send this message back.
    Send(Up),
    /// Send these messages back, in order (published together).
    Many(Vec<Up>),
    /// Nothing to send.
    None,
}

/// Runs a child's command loop until [`Down::Shutdown`] or the supervisor
/// disappears, and returns the exit code to use.
///
/// Pings are answered here; every other command goes to `handle`.  A frame
/// that does not decode is answered with [`Up::Error`] (the loop goes on); a
/// corrupt ring ends the loop with [`ExitCode::Protocol`]; a dead, hung or
/// closed supervisor with [`ExitCode::SupervisorGone`].
pub fn serve(ep: &mut Endpoint, mut handle: impl FnMut(Down) -> Reply) -> ExitCode {
    serve_emitting(ep, |cmd, _| handle(cmd))
}

/// Sends one reply while a command is being handled (published at once),
/// for answers too large to hold at once: a handler of
/// [`serve_emitting`] streams them and returns [`Reply::None`] (or a last
/// message).  After an error the handler should stop sending: the loop ends
/// with the error's exit code once the handler returns.
pub type Emit<'a> = dyn FnMut(&Up) -> Result<(), ChannelError> + 'a;

/// [`serve`] whose handler can also send replies before it returns
/// ([`Emit`]).
pub fn serve_emitting(
    ep: &mut Endpoint,
    handle: impl FnMut(Down, &mut Emit<'_>) -> Reply,
) -> ExitCode {
    let status = ep.segment().status();
    let Endpoint { tx, rx, .. } = ep;
    serve_loop(rx, handle, |ups, close| {
        let r = send_all(tx, ups);
        if close {
            tx.close();
            status.mark_closed();
        }
        r
    })
}

/// [`serve`] over the halves of a split [`Endpoint`] whose sending half is
/// shared with threads that answer commands later (a handler returns
/// [`Reply::None`] for those and the thread sends the answer through
/// `tx`).  `segment` is the endpoint's segment (marked closed at
/// shutdown).
pub fn serve_shared(
    rx: &mut Receiver,
    tx: &Mutex<Sender>,
    segment: &Segment,
    mut handle: impl FnMut(Down) -> Reply,
) -> ExitCode {
    let status = segment.status();
    serve_loop(
        rx,
        |cmd, _| handle(cmd),
        |ups, close| {
            let mut tx = tx.lock().map_err(|_| ChannelError::Timeout)?;
            let r = send_all(&mut tx, ups);
            if close {
                tx.close();
                status.mark_closed();
            }
            r
        },
    )
}

/// Sends `ups` in order, published together.
pub fn send_all(tx: &mut Sender, ups: &[Up]) -> Result<(), ChannelError> {
    if let [up] = ups {
        return tx.send_msg(up, None);
    }
    let r = ups.iter().try_for_each(|up| tx.push_msg(up, None));
    tx.publish();
    r
}

/// The exit code for a failed send.
pub fn send_failure(e: &ChannelError) -> ExitCode {
    match e {
        ChannelError::Ring(_) | ChannelError::TooLarge(_) => ExitCode::Protocol,
        _ => ExitCode::SupervisorGone,
    }
}

/// The loop of [`serve`]: `send(ups, close)` sends replies (and, with
/// `close`, closes the sending direction afterwards).
fn serve_loop(
    rx: &mut Receiver,
    mut handle: impl FnMut(Down, &mut Emit<'_>) -> Reply,
    mut send: impl FnMut(&[Up], bool) -> Result<(), ChannelError>,
) -> ExitCode {
    loop {
        let msg = match rx.recv_msg::<Down>(None) {
            Ok(m) => m,
            Err(ChannelError::Codec(e)) => {
                let msg = Up::Error {
                    message: format!("undecodable command: {e}"),
                };
                if send(&[msg], false).is_err() {
                    return ExitCode::SupervisorGone;
                }
                continue;
            }
            Err(ChannelError::UnexpectedKind(k)) => {
                let msg = Up::Error {
                    message: format!("unexpected frame kind {k}"),
                };
                if send(&[msg], false).is_err() {
                    return ExitCode::SupervisorGone;
                }
                continue;
            }
            Err(ChannelError::PeerGone(_)) | Err(ChannelError::Timeout) => {
                return ExitCode::SupervisorGone;
            }
            Err(ChannelError::Ring(_) | ChannelError::TooLarge(_)) => return ExitCode::Protocol,
        };
        let reply = match msg {
            Down::Ping { seq } => Reply::Send(Up::Pong { seq }),
            Down::Shutdown => {
                let _ = send(&[Up::ShutdownAck], true);
                rx.close();
                return ExitCode::Ok;
            }
            other => {
                let mut failed = None;
                let reply = handle(other, &mut |up: &Up| {
                    let r = send(std::slice::from_ref(up), false);
                    if let Err(e) = &r {
                        failed.get_or_insert_with(|| send_failure(e));
                    }
                    r
                });
                if let Some(code) = failed {
                    return code;
                }
                reply
            }
        };
        let sent = match reply {
            Reply::Send(up) => send(&[up], false),
            Reply::Many(ups) => send(&ups, false),
            Reply::None => Ok(()),
        };
        if let Err(e) = sent {
            return send_failure(&e);
        }
    }
}
