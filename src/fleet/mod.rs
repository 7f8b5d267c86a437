//! The Fleet REST API as a posture source (DESIGN.md §2).
