//! ferrogen: a routed message bus and a streaming, flow-controlled file
//! service, after Mitogen — in Rust.
//!
//! Start at [`Controller`]: it owns this process's router (context 0), its
//! services and its FileService, and [`Controller::connect`] starts a
//! [`Context`] — a child process, an ssh host, another account through sudo,
//! or any of those from inside another context. `examples/` has a ping, a
//! custom service and the stock child.
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
//! * [`text`] — making text from targets safe to print.
//! * [`controller`] — the front door: [`Controller`], [`Context`], [`Target`].
//! * [`cli`] — the `ferrogen` command line.

#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod call;
pub mod channel;
pub mod cli;
pub mod connect;
pub mod controller;
pub mod files;
pub mod ping;
pub mod router;
pub mod service;
pub mod stream;
pub mod text;
pub mod wire;

pub use call::{CallError, RemoteError, Rpc};
pub use channel::{ChannelError, Receiver, Sender};
pub use connect::{ConnectError, ContextInfo};
pub use controller::{Context, Controller, Target, TargetError, TransferError, TransferOptions};
pub use files::{FileService, FileServiceConfig};
pub use router::{Policy, Router};
pub use service::{ServiceBuilder, Services};
pub use wire::{ContextId, DeadReason};
