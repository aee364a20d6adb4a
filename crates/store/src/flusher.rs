//! The flusher: writes a domain database's dirty pages to disk off the writer's thread, so
//! that the durable checkpoint which follows (a redb commit with an fsync, on the writer's
//! thread, holding up the next batch) finds little left to write.
//!
//! Between checkpoints the tables change by non-durable redb commits: their pages sit dirty
//! in the page cache. A checkpoint due is first handed here: one thread per store opens the
//! database file and `fdatasync`s it (any descriptor of the file flushes its pages), while the
//! writer goes on committing batches. Only when that is done does the writer make the
//! checkpoint itself. The flush guarantees nothing by itself (the checkpoint does); it only
//! moves the bulk of the disk writes off the write path.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc};

/// No flush asked.
pub(crate) const IDLE: u8 = 0;
/// A flush is queued or under way.
pub(crate) const FLUSHING: u8 = 1;
/// The flush finished (successfully or not): the checkpoint may go.
pub(crate) const FLUSHED: u8 = 2;

/// A domain's flush state, shared by its writer and the flusher.
pub(crate) type FlushState = Arc<AtomicU8>;

/// The store's flusher thread. Cheap to clone; the thread ends (and is joined) when the store
/// and every writer holding a clone are gone.
#[derive(Debug, Clone)]
pub(crate) struct Flusher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: Option<mpsc::Sender<(PathBuf, FlushState)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has done what it holds.
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the flusher thread panicked");
            }
        }
    }
}

impl Flusher {
    /// Starts the thread.
    pub fn start() -> std::io::Result<Flusher> {
        let (tx, rx) = mpsc::channel::<(PathBuf, FlushState)>();
        let thread = std::thread::Builder::new()
            .name("domsync-flusher".into())
            .spawn(move || {
                while let Ok((path, state)) = rx.recv() {
                    let flushed = std::fs::File::open(&path).and_then(|f| f.sync_data());
                    if let Err(e) = flushed {
                        // The checkpoint's own fsync reports the error where it matters.
                        tracing::debug!(path = %path.display(), error = %e, "background flush failed");
                    }
                    state.store(FLUSHED, Ordering::SeqCst);
                }
            })?;
        Ok(Flusher {
            inner: Arc::new(Inner {
                tx: Some(tx),
                thread: Some(thread),
            }),
        })
    }

    /// Asks for a flush of `path`; false when the flusher is gone (flush inline instead).
    pub fn request(&self, path: PathBuf, state: &FlushState) -> bool {
        let Some(tx) = self.inner.tx.as_ref() else {
            return false;
        };
        state.store(FLUSHING, Ordering::SeqCst);
        if tx.send((path, Arc::clone(state))).is_err() {
            state.store(IDLE, Ordering::SeqCst);
            return false;
        }
        true
    }
}
