//! ferrogen: a routed message bus and a streaming, flow-controlled file
//! service, after Mitogen — in Rust.
//!
//! # Layout
//!
//! The modules follow the parts of the design, bottom to top:
//!
//! * [`wire`] — the 26-byte frame header, the codec, control encodings and
//!   standard handles.
//! * [`stream`] — one physical pipe: a reader task and a prioritised writer.
//! * [`router`] — context ids, routes, delivery, authority checks,
//!   disconnect propagation.
//! * [`channel`] — `Receiver` / `Sender`.
//! * [`call`] — request/reply and the errors calls end with.
//! * [`service`] — named services with per-method policies.
//! * [`connect`] — starting contexts: `local`, `via`, and the child side.
//! * [`files`] — the FileService, the receiving side and push plans.
//! * [`ping`] — the built-in liveness/measurement service.
//! * [`cli`] — the `ferrogen` command line.

pub mod call;
pub mod channel;
pub mod cli;
pub mod connect;
pub mod files;
pub mod ping;
pub mod router;
pub mod service;
pub mod stream;
pub mod wire;
