//! `--delete` (placeholder).
