//! How far a spooled file has arrived, for its readers: they wait for the
//! bytes they need, and learn of an upstream failure at once.

use tokio::sync::watch;

use super::error::SpoolError;

/// How a spooled file ended: its digest, or why it failed.
pub(super) type Ending = Option<Result<[u8; 32], SpoolError>>;

/// How far a spooled file has arrived, for its readers.
#[derive(Clone)]
pub struct Gate {
    pub(super) written: watch::Receiver<u64>,
    pub(super) done: watch::Receiver<Ending>,
}

impl Gate {
    /// Waits until the whole file has arrived and was verified; its digest.
    pub async fn complete(&mut self) -> Result<[u8; 32], SpoolError> {
        match self.done.wait_for(|d| d.is_some()).await {
            Ok(d) => d.clone().unwrap_or(Err(SpoolError::NoEnding)),
            Err(_) => Err(SpoolError::Abandoned),
        }
    }

    /// Blocks (on a reader thread) until `[0, upto)` is written. Fails if
    /// the upstream fetch fails first.
    pub fn wait_blocking(&mut self, upto: u64) -> Result<(), SpoolError> {
        if *self.written.borrow() >= upto {
            return Ok(());
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| SpoolError::NoRuntime)?;
        handle.block_on(async {
            loop {
                if *self.written.borrow_and_update() >= upto {
                    return Ok(());
                }
                if let Some(end) = self.done.borrow_and_update().clone() {
                    return match end {
                        Ok(_) if *self.written.borrow() >= upto => Ok(()),
                        Ok(_) => Err(SpoolError::Shorter),
                        Err(why) => Err(why),
                    };
                }
                tokio::select! {
                    r = self.written.changed() => {
                        if r.is_err() {
                            // The writer is gone: only the ending can tell.
                            return self.complete().await.and_then(|_| {
                                if *self.written.borrow() >= upto {
                                    Ok(())
                                } else {
                                    Err(SpoolError::Shorter)
                                }
                            });
                        }
                    }
                    r = self.done.changed() => {
                        if r.is_err() {
                            return Err(SpoolError::Abandoned);
                        }
                    }
                }
            }
        })
    }

    /// Blocks (on a reader thread) until the file is verified; its digest.
    pub fn digest_blocking(&mut self) -> Result<[u8; 32], SpoolError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| SpoolError::NoRuntime)?;
        handle.block_on(self.complete())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> (watch::Sender<u64>, watch::Sender<Ending>, Gate) {
        let (w, wr) = watch::channel(0u64);
        let (d, dr) = watch::channel(None);
        (
            w,
            d,
            Gate {
                written: wr,
                done: dr,
            },
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_waits_for_the_bytes_it_needs_and_no_longer() {
        let (w, d, g) = gate();
        let reader = tokio::task::spawn_blocking(move || {
            let mut g = g;
            let first = g.wait_blocking(100);
            let end = g.digest_blocking();
            (first, end)
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        w.send_replace(50);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!reader.is_finished(), "50 of 100 bytes are not enough");
        w.send_replace(100);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        d.send_replace(Some(Ok([5; 32])));
        let (first, end) = reader.await.expect("join");
        assert!(first.is_ok(), "{first:?}");
        assert_eq!(end.ok(), Some([5; 32]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upstream_failure_ends_every_reader_with_its_reason() {
        let (w, d, g) = gate();
        let g2 = g.clone();
        let a = tokio::task::spawn_blocking(move || g.clone().wait_blocking(1 << 20));
        let b = tokio::task::spawn_blocking(move || g2.clone().digest_blocking());
        w.send_replace(10);
        d.send_replace(Some(Err(SpoolError::NotOpened { path: "/x".into() })));
        let a = a.await.expect("join");
        let b = b.await.expect("join");
        assert!(
            matches!(a, Err(SpoolError::NotOpened { ref path }) if path == "/x"),
            "{a:?}"
        );
        assert!(
            matches!(b, Err(SpoolError::NotOpened { ref path }) if path == "/x"),
            "{b:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spool_shorter_than_announced_is_an_error_not_a_hang() {
        let (w, d, g) = gate();
        w.send_replace(10);
        d.send_replace(Some(Ok([0; 32])));
        let r = tokio::task::spawn_blocking(move || g.clone().wait_blocking(20))
            .await
            .expect("join");
        assert!(matches!(r, Err(SpoolError::Shorter)), "{r:?}");
        // The writer gone before the end: decided by the ending alone.
        let (w, d, g) = gate();
        drop(w);
        let r = tokio::task::spawn_blocking(move || g.clone().wait_blocking(20));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        drop(d);
        assert!(r.await.expect("join").is_err());
    }
}
