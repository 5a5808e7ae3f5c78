//! Model checking of the ring and the state board with loom.
//!
//! Run with: `RUSTFLAGS="--cfg loom" cargo test -p shm-protocol --test loom --release`
//! (the README's test command does, with a separate target directory).
#![cfg(loom)]

use loom::thread;
use shm_protocol::board::loom_board;
use shm_protocol::ring::loom_ring;
use std::time::Duration;

/// Frames published by the producer are read intact and in order; loom
/// checks that every payload byte read happens-after its write.
#[test]
fn publish_then_consume() {
    loom::model(|| {
        let (mut p, mut c) = loom_ring(64);
        let t = thread::spawn(move || {
            assert!(p.try_push(1, &[1, 2, 3]).unwrap());
            assert!(p.try_push(2, &[4, 5]).unwrap());
            p.publish();
        });
        let mut got = Vec::new();
        while got.len() < 2 {
            match c.try_read().unwrap() {
                Some(f) => got.push((f.kind, f.payload().to_vec())),
                None => thread::yield_now(),
            }
        }
        assert_eq!(got, vec![(1, vec![1, 2, 3]), (2, vec![4, 5])]);
        t.join().unwrap();
    });
}

/// A consumer that parks is always woken by the publish that makes data
/// available (a lost wake-up would be a loom deadlock).
#[test]
fn needs_wakeup_handshake_never_loses_a_wakeup() {
    loom::model(|| {
        let (mut p, mut c) = loom_ring(64);
        let t = thread::spawn(move || {
            assert!(p.try_push(7, &[9; 8]).unwrap());
            p.publish();
        });
        loop {
            if let Some(f) = c.try_read().unwrap() {
                assert_eq!((f.kind, f.payload()), (7, &[9u8; 8][..]));
                break;
            }
            c.wait_for_data(Duration::from_secs(1));
        }
        t.join().unwrap();
    });
}

/// A producer parked on a full ring is woken by the consumer's release, and
/// the wrap-around padding is handled when space is recycled.
#[test]
fn producer_waits_for_space() {
    loom::model(|| {
        let (mut p, mut c) = loom_ring(64);
        // Two 24-byte frames (32 bytes each) fill the 64-byte ring.
        assert!(p.try_push(1, &[1; 24]).unwrap());
        assert!(p.try_push(1, &[2; 24]).unwrap());
        p.publish();
        let t = thread::spawn(move || {
            loop {
                if p.try_push(3, &[3; 24]).unwrap() {
                    p.publish();
                    break;
                }
                p.wait_for_space(24, Duration::from_secs(1));
            }
        });
        let f = c.try_read().unwrap().unwrap();
        assert_eq!(f.payload(), &[1; 24]);
        c.release();
        let mut seen = 1;
        while seen < 3 {
            match c.try_read().unwrap() {
                Some(_) => seen += 1,
                None => {
                    c.release();
                    c.wait_for_data(Duration::from_secs(1));
                }
            }
        }
        t.join().unwrap();
    });
}

/// A seqlock reader running concurrently with two publications sees either
/// nothing yet or one complete state, never a mix.
#[test]
fn seqlock_reads_are_consistent() {
    loom::model(|| {
        let (mut w, r) = loom_board(16);
        let t = thread::spawn(move || {
            w.publish(&[1; 16]).unwrap();
            w.publish(&[2; 12]).unwrap();
        });
        match r.read() {
            Ok(s) => {
                let ok = (s.generation == 1 && s.data == vec![1; 16])
                    || (s.generation == 2 && s.data == vec![2; 12]);
                assert!(ok, "inconsistent read {s:?}");
            }
            Err(shm_protocol::board::BoardError::Empty { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
        t.join().unwrap();
    });
}
