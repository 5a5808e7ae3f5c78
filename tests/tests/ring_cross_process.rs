//! The ring between real processes: a writer and a reader in separate
//! processes, a writer killed mid-stream, and a rogue writer.

use lockstep_tests::{ChildGuard, TempDir, Watchdog, stream};
use shm_protocol::segment::{Backing, Segment, SegmentConfig};
use shm_protocol::{ChannelError, Endpoint, PeerGone, PidFd, RingError, WaitPolicy};
use std::process::Command;
use std::time::{Duration, Instant};

const PEER: &str = env!("CARGO_BIN_EXE_ring-peer");

fn setup(label: &str, cap: usize) -> (TempDir, std::path::PathBuf, Segment) {
    let dir = TempDir::new(label);
    let path = dir.path().join("segment");
    let seg = Segment::create(
        SegmentConfig {
            to_attacher: 4096,
            to_creator: cap,
        },
        Backing::File(path.clone()),
    )
    .unwrap();
    (dir, path, seg)
}

fn spawn(mode: &str, path: &std::path::Path, seed: u64, frames: u64) -> ChildGuard {
    ChildGuard::new(
        Command::new(PEER)
            .args([
                mode,
                path.to_str().unwrap(),
                &seed.to_string(),
                &frames.to_string(),
            ])
            .spawn()
            .unwrap(),
    )
}

fn deadline() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(30))
}

/// ≥ 1,000,000 frames of random sizes cross from one process to another
/// with every checksum and sequence number intact, through wrap-around and
/// batched publication.
#[test]
fn million_frames_between_processes() {
    let _w = Watchdog::new("million_frames", Duration::from_secs(300));
    const FRAMES: u64 = 1_000_000;
    for (policy, seed) in [(WaitPolicy::ADAPTIVE, 1u64), (WaitPolicy::PARK, 2)] {
        let (_dir, path, seg) = setup("million", 1 << 16);
        let mut child = spawn("writer", &path, seed, FRAMES);
        let pidfd = PidFd::open(child.id()).unwrap();
        let mut ep = Endpoint::new(seg, Some(pidfd), None, policy);
        let mut bytes = 0u64;
        for want in 0..FRAMES {
            let f = ep
                .rx
                .recv(deadline())
                .unwrap_or_else(|e| panic!("frame {want}: {e}"));
            let seq = stream::verify(f.payload()).unwrap();
            assert_eq!(seq, want, "sequence gap or duplicate");
            bytes += f.payload().len() as u64;
        }
        // Then a clean close.
        let end = ep.rx.recv(deadline()).unwrap_err();
        assert!(
            matches!(end, ChannelError::PeerGone(PeerGone::Closed)),
            "{end}"
        );
        assert!(child.child().wait().unwrap().success());
        assert!(bytes > FRAMES * 16);
    }
}

/// A writer SIGKILLed mid-stream: the reader gets every complete frame,
/// never a torn one, then `PeerGone` — not a hang.
#[test]
fn killed_writer_yields_peer_gone() {
    let _w = Watchdog::new("killed_writer", Duration::from_secs(60));
    for seed in 0..3u64 {
        let (_dir, path, seg) = setup("killed", 1 << 14);
        let mut child = spawn("endless", &path, seed, 0);
        let pidfd = PidFd::open(child.id()).unwrap();
        let mut ep = Endpoint::new(seg, Some(pidfd), None, WaitPolicy::ADAPTIVE);
        let mut next = 0u64;
        let kill_at = 20_000 + seed * 7_919;
        let err = loop {
            match ep.rx.recv(deadline()) {
                Ok(f) => {
                    let seq = stream::verify(f.payload()).unwrap();
                    assert_eq!(seq, next);
                    next += 1;
                    if next == kill_at {
                        child.child().kill().unwrap();
                    }
                }
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, ChannelError::PeerGone(PeerGone::Exited { .. })),
            "{err}"
        );
        assert!(next >= kill_at);
        let status = child.child().wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }
}

/// A writer that scribbles random bytes over the segment: the reader reports
/// an error (corrupt ring, or frames that fail their checksum) and this
/// process survives; it never panics inside the ring code.
#[test]
fn rogue_writer_cannot_crash_the_reader() {
    let _w = Watchdog::new("rogue_writer", Duration::from_secs(120));
    let mut corrupt_seen = 0;
    for seed in 0..8u64 {
        let (_dir, path, seg) = setup("rogue", 1 << 12);
        let child = spawn("rogue", &path, 1000 + seed, 50);
        let pidfd = PidFd::open(child.id()).unwrap();
        let mut ep = Endpoint::new(seg, Some(pidfd), None, WaitPolicy::ADAPTIVE);
        let t0 = Instant::now();
        let mut good = 0u64;
        let mut bad_frames = 0u64;
        let outcome = loop {
            match ep
                .rx
                .recv(Some(Instant::now() + Duration::from_millis(200)))
            {
                Ok(f) => match stream::verify(f.payload()) {
                    Ok(_) => good += 1,
                    Err(_) => bad_frames += 1,
                },
                Err(e) => break Some(e),
            }
            if t0.elapsed() > Duration::from_secs(10) {
                break None;
            }
        };
        drop(child);
        match outcome {
            Some(ChannelError::Ring(RingError::Corrupt(c))) => {
                corrupt_seen += 1;
                eprintln!("seed {seed}: corrupt after {good} good / {bad_frames} bad frames: {c}");
            }
            Some(ChannelError::Ring(RingError::Broken)) => corrupt_seen += 1,
            Some(ChannelError::Timeout) | None => {
                eprintln!(
                    "seed {seed}: no structural corruption detected ({good} good, {bad_frames} bad)"
                )
            }
            Some(other) => eprintln!("seed {seed}: ended with {other}"),
        }
        // The ring stays unusable after corruption, with an error, not a panic.
        if ep.rx.consumer().is_broken() {
            assert!(matches!(
                ep.rx.recv(deadline()),
                Err(ChannelError::Ring(RingError::Broken))
            ));
        }
    }
    assert!(
        corrupt_seen > 0,
        "random scribbling should corrupt at least one ring"
    );
}
