//! [`Early`]: stripe transports started before their context is up, so
//! their connection set-up overlaps the primary's; [`Prepared`]: those
//! transports once the context has said where to attach. Apart: they
//! live across the bootstrap, and end with their owner.

use std::time::Duration;

use tokio::process::Command;

use super::open::{count_attached, direct_child, listen_on, settle};
use super::transport::{Transport, spawn_transport};
use super::{ATTACH_ARG, StripeOffer};
use crate::connect::{ContextInfo, Method};
use crate::router::Router;
use crate::stream;

/// Stripe transports started before their context is up (while the
/// primary connection is still being made and bootstrapped), so that their
/// own connection set-up — for ssh a dozen round trips: TCP, key exchange,
/// authentication, the session — overlaps the primary's instead of
/// following it. Each runs a small shell on the far end that waits for one
/// line, `PID SOCKET`, then becomes `/proc/PID/exe __attach SOCKET`
/// (the line is sent once the context has answered `listen`).
///
/// Dropping an `Early` (or the transports [`Early::attach`] does not use)
/// ends those transports.
pub struct Early {
    transports: Vec<Transport>,
}

/// The far end of an early transport: one line, checked to be only what
/// `listen` produces (digits; lowercase letters, digits and dashes), then
/// the listening context's own program as the relay. POSIX `read` takes
/// the line byte by byte from a pipe, so nothing after it is consumed.
fn early_script() -> String {
    format!(
        "read -r p s || exit 1; case $p in \"\"|*[!0-9]*) exit 2;; esac; \
         case $s in \"\"|*[!a-z0-9-]*) exit 2;; esac; exec /proc/$p/exe {ATTACH_ARG} $s"
    )
}

impl Early {
    /// Starts `count` stripe transports with `method` for the context
    /// named `name` (not yet connected). Only `ssh` and `local` can carry
    /// stripes; for others (or `count` 0) nothing is started.
    pub fn start(method: &Method, name: &str, count: usize) -> Early {
        let mut transports = Vec::new();
        for i in 0..count {
            let cmd = match method {
                Method::Local => {
                    let mut c = Command::new("/bin/sh");
                    c.arg("-c").arg(early_script());
                    c
                }
                Method::Ssh(ssh) => {
                    let remote = format!("exec /bin/sh -c '{}'", early_script());
                    let argv = crate::connect::ssh::argv(ssh, Duration::from_secs(30), &remote);
                    let mut c = Command::new(&argv[0]);
                    c.args(&argv[1..]);
                    c
                }
                Method::Sudo(_) => break,
            };
            match spawn_transport(cmd, name, i + 1) {
                Ok(t) => transports.push(t.wanting_line()),
                Err(e) => {
                    tracing::warn!("{name}: stripe {} not started: {e}", i + 1);
                    break;
                }
            }
        }
        tracing::debug!(
            "{name}: started {} stripe transports early",
            transports.len()
        );
        Early { transports }
    }

    /// How many transports were started.
    pub fn len(&self) -> usize {
        self.transports.len()
    }

    /// True if none were started.
    pub fn is_empty(&self) -> bool {
        self.transports.is_empty()
    }

    /// Adds transports started later (for the same context).
    pub fn absorb(&mut self, mut other: Early) {
        self.transports.append(&mut other.transports);
    }

    /// Asks context `ctx_id` (a direct child, now up) where its stripes
    /// attach; `None` (the transports ended) if it cannot say.
    pub async fn prepare(
        self,
        router: &Router,
        ctx_id: u32,
        timeout: Duration,
    ) -> Option<Prepared> {
        if self.transports.is_empty() {
            return None;
        }
        let (ctx, primary) = direct_child(router, ctx_id)?;
        let offer = listen_on(router, &ctx, timeout).await?;
        Some(Prepared {
            early: self,
            ctx,
            primary,
            offer,
            taken: 0,
        })
    }

    /// Attaches up to `count` of these transports as stripes of context
    /// `ctx_id` (a direct child, now up) and ends the others. Returns how
    /// many attached.
    pub async fn attach(
        self,
        router: &Router,
        ctx_id: u32,
        count: usize,
        timeout: Duration,
    ) -> usize {
        match self.prepare(router, ctx_id, timeout).await {
            Some(p) => p.attach(router, count, timeout).await,
            None => 0,
        }
    }
}

/// Early transports whose context has said where to attach.
pub struct Prepared {
    early: Early,
    ctx: ContextInfo,
    primary: stream::StreamId,
    offer: StripeOffer,
    /// Transports taken so far (numbers them in the log).
    taken: usize,
}

impl Prepared {
    /// Attaches up to `count` of the transports and ends the others.
    /// Returns how many attached.
    pub async fn attach(mut self, router: &Router, count: usize, timeout: Duration) -> usize {
        let attaching = self.attach_next(router, count, timeout);
        drop(self);
        attaching.await
    }

    /// Transports not yet attached (each already connected, or connecting).
    pub fn len(&self) -> usize {
        self.early.transports.len()
    }

    /// True if every transport was taken.
    pub fn is_empty(&self) -> bool {
        self.early.transports.is_empty()
    }

    /// Takes up to `count` of the transports and attaches them (they are
    /// on their way once this returns; the rest stay ready for a later
    /// step). The future gives how many attached.
    pub fn attach_next(
        &mut self,
        router: &Router,
        count: usize,
        timeout: Duration,
    ) -> impl std::future::Future<Output = usize> + Send + 'static {
        let keep = count.min(self.early.transports.len());
        let rest = self.early.transports.split_off(keep);
        let taking = std::mem::replace(&mut self.early.transports, rest);
        let mut tasks = Vec::new();
        for t in taking {
            self.taken += 1;
            let n = self.taken;
            let (router, ctx, offer, primary) = (
                router.clone(),
                self.ctx.clone(),
                self.offer.clone(),
                self.primary,
            );
            tasks.push(tokio::spawn(async move {
                let r =
                    tokio::time::timeout(timeout, t.attach(&router, &ctx, &offer, primary)).await;
                settle(&ctx, n, r)
            }));
        }
        count_attached(tasks)
    }
}

impl Drop for Early {
    fn drop(&mut self) {
        for t in self.transports.drain(..) {
            t.end();
        }
    }
}
