//! Helper process for the cross-process ring tests: attaches to a segment
//! created by the test and plays a writer, a rogue writer, or a stalled one.
//!
//! `ring-peer <mode> <segment-path> <seed> <frames>`
//! * `writer`  — sends `frames` checksummed frames of random sizes, then
//!   closes cleanly;
//! * `endless` — sends checksummed frames until killed;
//! * `rogue`   — sends a few valid frames, then scribbles random bytes over
//!   the whole segment, repeatedly, until killed.

use lockstep_tests::stream;
use shm_protocol::segment::Segment;
use shm_protocol::{Endpoint, WaitPolicy};
use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: ring-peer writer|endless|rogue <segment> <seed> <frames>");
        std::process::exit(64);
    }
    let path = PathBuf::from(&args[2]);
    let seed: u64 = args[3].parse().expect("seed");
    let frames: u64 = args[4].parse().expect("frames");
    let seg = Segment::attach_path(&path).expect("attach");
    let raw = seg.raw_bytes();
    // Watch the test process, so that we never outlive it.
    let parent = shm_protocol::PidFd::open(std::os::unix::process::parent_id()).ok();
    let mut ep = Endpoint::new(seg, parent, None, WaitPolicy::ADAPTIVE);
    let max = ep.tx.producer().max_payload() - 16;
    let mut seq = 0u64;
    let send = |ep: &mut Endpoint, seq: u64| {
        let len = 16 + stream::body_len(seed, seq, max);
        let mut r = ep.tx.reserve(len, None).expect("reserve");
        stream::fill(&mut r.buf()[..len], seed, seq);
        r.commit(1, len).expect("commit");
        // Publish in batches of 16 (batched commit), and on every large frame.
        if seq % 16 == 15 || len > 1024 {
            ep.tx.publish();
        }
    };
    match args[1].as_str() {
        "writer" => {
            while seq < frames {
                send(&mut ep, seq);
                seq += 1;
            }
            ep.tx.publish();
            ep.close();
        }
        "endless" => loop {
            send(&mut ep, seq);
            seq += 1;
        },
        "rogue" => {
            for s in 0..frames {
                send(&mut ep, s);
            }
            ep.tx.publish();
            let (base, len) = raw;
            let mut x = seed;
            loop {
                for _ in 0..4096 {
                    x = stream::splitmix(x);
                    // Keep clear of the header (offset < 512) half of the time so
                    // that the rings, not just the header, get the garbage.
                    let off = (x as usize) % len;
                    // SAFETY: `off < len` within our own live mapping; this
                    // process is deliberately the rogue peer.
                    let p = unsafe { base.add(off) };
                    // SAFETY: as above: a byte of our own live mapping.
                    unsafe { p.write_volatile((x >> 32) as u8) };
                }
                std::thread::yield_now();
            }
        }
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(64);
        }
    }
}
