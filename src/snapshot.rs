//! The on-disk snapshot of the last good posture (DESIGN.md §2).
