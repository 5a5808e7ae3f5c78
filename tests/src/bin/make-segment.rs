//! Creates a segment file at the given path and exits (leaving the file), so
//! that tests get a valid segment whose creator is dead.

fn main() {
    let path = std::env::args_os()
        .nth(1)
        .expect("usage: make-segment <path>");
    let seg = shm_protocol::segment::Segment::create(
        shm_protocol::segment::SegmentConfig::default(),
        shm_protocol::segment::Backing::File(path.into()),
    )
    .expect("create segment");
    // Keep the file: skip the unlinking drop.
    std::mem::forget(seg);
}
