//! One fetch from request to verified file: asks the server, creates the
//! file that receives, runs the data loop, and tells the server to stop on
//! every way out but success.

use std::fs::File;
use std::sync::Arc;
use std::time::Instant;

use super::data::receive_data;
use super::names::partial_place;
use super::pending::{PendingFile, io_err};
use super::prepare::Prepared;
use super::sink::Sink;
use super::temp::{ReserveAhead, create_partial, create_temp};
use super::{Observer, ReceiveError, ReceiveOptions, TempFiles};
use crate::channel::Receiver;
use crate::files::compress::FrameLog;
use crate::files::meta::FileMeta;
use crate::files::place::{self, Place};
use crate::files::{FetchArgs, FetchReply};
use crate::router::{Policy, Router};
use crate::wire::ContextId;

/// The written-so-far watch and the frame log of an [`Observer`].
type Observed = (
    Option<Arc<tokio::sync::watch::Sender<u64>>>,
    Option<Arc<FrameLog>>,
);

/// Fetches `src` from `server` into a file for `place`, with what `prep`
/// found there (a partial file, a delta basis, an observer).
#[allow(clippy::too_many_arguments)]
pub(super) async fn receive_prepared(
    router: &Router,
    server: ContextId,
    src: &crate::files::RawPath,
    place: &Place,
    temps: &TempFiles,
    opts: &ReceiveOptions,
    mut prep: Prepared,
    started: Instant,
) -> Result<PendingFile, ReceiveError> {
    let dest_s = place::show(place.shown());
    let (mut rx, reply) = request(router, server, src, &dest_s, opts, &prep).await?;
    let meta = reply.meta.clone();
    // Every way out but success tells the server to stop: an error below,
    // and this future dropped midway (a relay's read-ahead nobody wanted, a
    // cancelled push). Data sent to a handle that no longer exists is not
    // answered, so without this the server would keep a window in flight
    // until its ack timeout.
    let stop = StopServer {
        router,
        ack: Some(reply.ack),
    };
    if let Some(max) = prep.max_size
        && meta.size > max
    {
        return Err(ReceiveError::Mismatch {
            dest: dest_s,
            detail: format!(
                "the source sent {} bytes for a file it announced at {max}; refused \
                 (pull again if it grew meanwhile)",
                meta.size
            ),
        });
    }
    // From here on, any failure must tell the server to stop.
    let made = create_file(place, temps, opts, &mut prep, &meta, started);
    let (mut pending, resume) = match made {
        Ok(m) => m,
        Err(e) => {
            reply.ack.close_with(router, &e.to_string());
            return Err(e);
        }
    };
    pending.stale_partial = prep.stale_partial && !pending.partial;
    let _reserving = match (&prep.basis, pending.file.as_ref()) {
        (Some(_), Some(f)) if !opts.sparse && resume.is_none() => ReserveAhead::start(f, meta.size),
        _ => None,
    };
    let (written, frames) = match observe(prep.observer.take(), &pending, &meta) {
        Ok(o) => o,
        Err(e) => {
            reply.ack.close_with(router, &e.to_string());
            return Err(e);
        }
    };
    let mut sink = None;
    let basis = prep.basis.map(|(f, b)| (f, b.size));
    let result = receive_data(
        router,
        &mut rx,
        &reply,
        &mut pending,
        &mut sink,
        basis,
        resume,
        opts.fsync,
        opts.sparse,
        written,
        frames,
    )
    .await;
    if let Err(e) = &result {
        reply.ack.close_with(router, &e.to_string());
        if pending.partial {
            if matches!(
                e,
                ReceiveError::Interrupted { .. } | ReceiveError::Aborted { .. }
            ) {
                keep_partial(&mut pending, sink.take()).await;
            } else {
                // Wrong data or a failed write: nothing worth resuming.
                pending.keep = false;
            }
        }
    }
    result.map(|()| {
        stop.disarm();
        pending
    })
}

/// Asks `server` for `src`, offering what `prep` found; the channel the
/// data comes on and the server's reply.
async fn request(
    router: &Router,
    server: ContextId,
    src: &crate::files::RawPath,
    dest_s: &str,
    opts: &ReceiveOptions,
    prep: &Prepared,
) -> Result<(Receiver, FetchReply), ReceiveError> {
    let rx = match router.add_handler(None, Policy::Any, Some(server), true) {
        Ok(rx) => rx,
        Err(e) => unreachable!("dynamic handle allocation cannot collide: {e}"),
    };
    let args = FetchArgs {
        path: src.clone(),
        sender: rx.to_sender(),
        delta: prep.basis.as_ref().map(|(_, b)| b.clone()),
        resume: prep.partial.as_ref().map(|p| crate::files::Resume {
            len: p.len,
            digest: *p.hasher.finalize().as_bytes(),
        }),
        sparse: opts.sparse,
    };
    let reply = router
        .call(server, crate::files::rpc::FETCH, &args)
        .await
        .map_err(|error| ReceiveError::Fetch {
            src: src.to_string(),
            dest: dest_s.to_string(),
            error: Box::new(error),
        })?;
    Ok((rx, reply))
}

/// The file that receives: the partial file `prep` found (with its
/// prefix's length and digest state), a new named partial file
/// (`--partial`, more than one chunk), or a temp file.
fn create_file(
    place: &Place,
    temps: &TempFiles,
    opts: &ReceiveOptions,
    prep: &mut Prepared,
    meta: &FileMeta,
    started: Instant,
) -> Result<(PendingFile, Option<(u64, blake3::Hasher)>), ReceiveError> {
    if let Some(p) = prep.partial.take() {
        let pending = PendingFile::new(
            p.file,
            partial_place(place),
            place,
            temps,
            meta,
            started,
            true,
        );
        return Ok((pending, Some((p.len, p.hasher))));
    }
    let large = meta.size > crate::files::CHUNK_DATA as u64;
    // A delta's space is reserved beside the writes, not before
    // them (`ReserveAhead`).
    let reserve = !opts.sparse && prep.basis.is_none();
    let named = if opts.partial && large {
        create_partial(place, temps, meta, started, reserve)
    } else {
        None
    };
    match named {
        Some(p) => Ok((p, None)),
        None => create_temp(place, temps, meta, started, reserve).map(|p| (p, None)),
    }
}

/// Gives an observer (a relay's tee) the file, reopened read-only, and
/// the sender's metadata; what it watches the data by.
fn observe(
    observer: Option<Observer>,
    pending: &PendingFile,
    meta: &FileMeta,
) -> Result<Observed, ReceiveError> {
    let Some(Observer {
        opened,
        written,
        frames,
    }) = observer
    else {
        return Ok((None, None));
    };
    let reopened = pending.file.as_ref().map(reopen_read_only);
    match (reopened, opened) {
        (Some(Ok(f)), Some(tx)) => {
            let _ = tx.send((f, meta.clone()));
        }
        (Some(Err(e)), _) => return Err(io_err(pending.dest.shown(), "reopen for reading")(e)),
        _ => {}
    }
    Ok((Some(written), frames))
}

/// Tells a transfer's server to stop when dropped, unless disarmed.
pub(super) struct StopServer<'a> {
    pub(super) router: &'a Router,
    pub(super) ack: Option<crate::channel::Sender>,
}

impl StopServer<'_> {
    pub(super) fn disarm(mut self) {
        self.ack = None;
    }
}

impl Drop for StopServer<'_> {
    fn drop(&mut self) {
        if let Some(ack) = self.ack.take() {
            ack.close_with(self.router, "the receiver stopped");
        }
    }
}

/// After an interruption with `--partial`: waits for the writer to put
/// down what it was given (a contiguous prefix: data is written in order),
/// makes it durable, and keeps the partial file for the next push.
pub(super) async fn keep_partial(pending: &mut PendingFile, sink: Option<Sink>) {
    if let Some(Sink::Thread(w)) = sink
        && let Some(out) = w.stop().await
    {
        pending.file = Some(out.file);
    }
    if let Some(f) = pending.file.as_ref()
        && rustix::fs::fsync(f).is_ok()
    {
        tracing::debug!(
            "{}: partial file kept for the next push",
            place::show(pending.dest.shown())
        );
    }
}

/// The temp file behind `file`, opened again read-only (through
/// `/proc/self/fd`, which also reaches an anonymous `O_TMPFILE`).
pub(super) fn reopen_read_only(file: &File) -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let fd = rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    Ok(File::from(fd))
}
