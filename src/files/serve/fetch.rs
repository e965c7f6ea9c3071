//! `fetch`: checks a request, opens the file and starts its transfer.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use super::job::Transfer;
use super::{FileService, lock};
use crate::call::RemoteError;
use crate::files::compress::FrameLog;
use crate::files::meta::FileMeta;
use crate::files::tee::Gate;
use crate::files::{FetchArgs, FetchReply, RawPath};
use crate::router::Policy;
use crate::service::{Caller, FollowUp};

impl FileService {
    pub(super) async fn fetch(
        &self,
        caller: Caller,
        args: FetchArgs,
    ) -> Result<(FetchReply, Option<FollowUp>), RemoteError> {
        let inner = &self.inner;
        if inner.shutting_down.load(Ordering::SeqCst) {
            return Err(RemoteError::Failed(
                "the FileService is shutting down".into(),
            ));
        }
        if args.sender.context != caller.src_id {
            return Err(RemoteError::Failed(format!(
                "{}: sender context {} does not match the requesting context {}",
                args.path, args.sender.context, caller.src_id
            )));
        }
        if args.delta.is_some() && args.resume.is_some() {
            return Err(RemoteError::Failed(format!(
                "{}: a fetch may carry a delta signature or a resume, not both",
                args.path
            )));
        }
        if let Some(basis) = &args.delta {
            basis
                .validate()
                .map_err(|e| RemoteError::Failed(format!("{}: {e}", args.path)))?;
        }
        let slot = self.open_slot(caller.src_id, &args.path.escaped())?;
        let Source {
            file,
            meta,
            gate,
            frames,
        } = self.open_source(&args.path).await?;
        let ack_rx = inner
            .router
            .add_handler(None, Policy::Any, Some(caller.src_id), true)
            .map_err(|e| RemoteError::Failed(e.to_string()))?;
        let id = inner.next_transfer.fetch_add(1, Ordering::Relaxed);
        let (cancel_tx, cancel_rx) = watch::channel(None);
        lock(&inner.cancels).insert(id, cancel_tx);
        let reply = FetchReply {
            meta: meta.clone(),
            ack: ack_rx.to_sender(),
        };
        let job = Transfer {
            fs: self.clone(),
            id,
            path: args.path.to_string(),
            raw: args.path.clone(),
            file,
            meta,
            gate,
            frames,
            to: args.sender,
            delta: args.delta,
            resume: args.resume,
            sparse: args.sparse,
            requester: caller.src_id,
            acks: ack_rx,
            cancel: cancel_rx,
            settled: false,
            stale_acks: 0,
            _slot: slot,
        };
        // The pump is spawned (rather than run as the follow-up itself) so
        // shutdown can wait for it.
        let follow: FollowUp = Box::pin(async move {
            let pumps = job.fs.inner.pumps.clone();
            pumps.spawn(job.run());
        });
        Ok((reply, Some(follow)))
    }

    /// Opens `path` to be sent: from a relay's spool, or a registered file.
    async fn open_source(&self, path: &RawPath) -> Result<Source, RemoteError> {
        let inner = &self.inner;
        match &inner.tee {
            Some(tee) => {
                let s = tee
                    .open(path)
                    .await
                    .map_err(|e| RemoteError::Failed(e.to_string()))?;
                Ok(Source {
                    file: s.file,
                    meta: s.meta,
                    gate: Some(s.gate),
                    frames: s.frames,
                })
            }
            None => {
                let opened = lock(&inner.registry).open(path);
                let file = opened.map_err(|e| RemoteError::Failed(e.to_string()))?;
                let meta = FileMeta::from_fd_with(&file, inner.config.xattrs)
                    .map_err(|e| RemoteError::Failed(format!("{path}: {e}")))?;
                Ok(Source {
                    file: Arc::new(file),
                    meta,
                    gate: None,
                    frames: None,
                })
            }
        }
    }
}

/// A file opened to be sent.
struct Source {
    file: Arc<File>,
    meta: FileMeta,
    /// A relay's spool file: how far it has arrived.
    gate: Option<Gate>,
    /// A relay's spool file: its chunks that came compressed.
    frames: Option<Arc<FrameLog>>,
}
