//! Watches for C event loops: a background task on the client's runtime feeds a bounded
//! queue; an eventfd counts what is queued, so `poll()` on it says when `domsync_watch_next`
//! has something.

use std::ffi::{c_char, c_int};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::sync::{Arc, Mutex};

use ::domsync_client::app::{AppClient, ClientError, Watch};
use domsync_proto::app::{Event, KeyRange};
use domsync_proto::model::Position;
use tokio::sync::mpsc;

use crate::args;
use crate::client::domsync_client;
use crate::error::{guard, guard_void, Failure, DOMSYNC_AGAIN, DOMSYNC_ERR_INTERNAL};
use crate::types::{domsync_buf, domsync_position};

/// Most items (events and progress marks) queued before the background task stops reading
/// the watch until the program takes some.
const QUEUE_ITEMS: usize = 4096;

/// What the background task queues.
enum Item {
    /// One change; `then` is the position after its batch when it is the batch's last event.
    Event {
        event: Event,
        then: Option<Position>,
    },
    /// A batch without events: nothing watched changed up to here.
    Mark(Position),
    /// The watch ended with this error.
    End(ClientError),
}

/// The consumer's side, behind a lock so that a misused handle is still memory-safe.
struct Reader {
    queue: mpsc::Receiver<Item>,
    /// The position after the last batch fully taken.
    position: Position,
    /// The error that ended the watch, returned by every later `domsync_watch_next`.
    ended: Option<Failure>,
}

/// A running watch. Opaque; made by `domsync_watch_start`, freed by `domsync_watch_free`.
/// Use it from one thread at a time (typically the event loop's).
pub struct domsync_watch {
    reader: Mutex<Reader>,
    /// Readable while items are queued (semaphore mode: one count per item).
    fd: Arc<OwnedFd>,
    task: tokio::task::JoinHandle<()>,
    /// Keeps the client's threads running while the watch lives.
    _runtime: Arc<tokio::runtime::Runtime>,
}

/// One change seen by a watch. Free with `domsync_event_free`.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct domsync_event {
    /// The key (owned by the caller).
    pub key: domsync_buf,
    /// The new value (owned by the caller); empty when `deleted` is 1.
    pub value: domsync_buf,
    /// 1 when the key was deleted.
    pub deleted: c_int,
    /// The lsn of the record that made the change (the key's new version).
    pub lsn: u64,
}

fn eventfd() -> Result<OwnedFd, Failure> {
    // SAFETY: eventfd takes no pointer; the descriptor it returns is owned below.
    let fd = unsafe {
        libc::eventfd(
            0,
            libc::EFD_SEMAPHORE | libc::EFD_NONBLOCK | libc::EFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Failure::new(
            DOMSYNC_ERR_INTERNAL,
            format!(
                "cannot create the watch's eventfd: {}; raise the process's descriptor limit if it is reached",
                std::io::Error::last_os_error()
            ),
        ));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to the eventfd's count (one more item queued).
fn signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to a descriptor this watch owns. The count
    // cannot overflow: at most QUEUE_ITEMS items are queued.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Takes one from the eventfd's count: false when it is zero (nothing queued).
fn take(fd: &OwnedFd) -> bool {
    let mut count: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64 from a descriptor this watch owns.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    n == 8
}

/// Reads the watch and queues what it delivers until the program frees the handle or the
/// watch ends. Each item is queued before its count is added, so a count always has its item.
async fn feed(mut watch: Watch, queue: mpsc::Sender<Item>, fd: Arc<OwnedFd>) {
    loop {
        let items = match watch.next().await {
            Ok(batch) => {
                let n = batch.events.len();
                if n == 0 {
                    vec![Item::Mark(batch.position)]
                } else {
                    let mut position = Some(batch.position);
                    batch
                        .events
                        .into_iter()
                        .enumerate()
                        .map(|(i, event)| Item::Event {
                            event,
                            then: if i + 1 == n { position.take() } else { None },
                        })
                        .collect()
                }
            }
            Err(e) => vec![Item::End(e)],
        };
        let end = matches!(items.last(), Some(Item::End(_)));
        for item in items {
            if queue.send(item).await.is_err() {
                return;
            }
            signal(&fd);
        }
        if end {
            return;
        }
    }
}

/// Watches the keys of `domain` starting with `prefix` (`prefix_len` 0: every key), from
/// `from` (the position after which to deliver changes, e.g. a scan's or a previous watch's;
/// NULL: from now). On success `*out` is a new watch, to free with `domsync_watch_free`; on
/// failure NULL. `DOMSYNC_ERR_COMPACTED` / `DOMSYNC_ERR_DIVERGED`: `from` cannot be resumed;
/// read again and watch from the new read's position.
///
/// The watch resumes by itself after a dropped connection or a failover; changes are
/// delivered once, in order.
///
/// # Safety
/// `client`: a handle; `domain`: NUL-terminated; `prefix`: `prefix_len` bytes; `from`: NULL or
/// a position; `out`: where to store the handle.
#[no_mangle]
pub unsafe extern "C" fn domsync_watch_start(
    client: *const domsync_client,
    domain: *const c_char,
    prefix: *const u8,
    prefix_len: usize,
    from: *const domsync_position,
    out: *mut *mut domsync_watch,
) -> c_int {
    guard(|| {
        let out = args::out(out, "out")?;
        *out = std::ptr::null_mut();
        let client = args::handle(client, "client")?;
        let domain = args::domain(domain)?;
        let prefix = args::bytes(prefix, prefix_len, "prefix")?;
        // SAFETY: NULL or a position, valid for the call.
        let from = match unsafe { from.as_ref() } {
            Some(p) => Some(p.to_position()?),
            None => None,
        };
        let fd = Arc::new(eventfd()?);
        let app: &AppClient = &client.client;
        let watch = client.run(app.watch(&domain, KeyRange::prefix(prefix), from))?;
        let position = watch.position().clone();
        let (tx, rx) = mpsc::channel(QUEUE_ITEMS);
        let task = client.runtime.spawn(feed(watch, tx, fd.clone()));
        *out = Box::into_raw(Box::new(domsync_watch {
            reader: Mutex::new(Reader {
                queue: rx,
                position,
                ended: None,
            }),
            fd,
            task,
            _runtime: client.runtime.clone(),
        }));
        Ok(())
    })
}

/// The watch's file descriptor: readable while events are queued (an eventfd). Wait on it
/// with `poll()`/`epoll` for `POLLIN`, then call `domsync_watch_next` until `DOMSYNC_AGAIN`.
/// Do not read, write or close it; it is closed by `domsync_watch_free`.
///
/// # Safety
/// `watch`: a handle; `fd`: where to store the descriptor.
#[no_mangle]
pub unsafe extern "C" fn domsync_watch_fd(watch: *const domsync_watch, fd: *mut c_int) -> c_int {
    guard(|| {
        let fd = args::out(fd, "fd")?;
        *fd = args::handle(watch, "watch")?.fd.as_raw_fd();
        Ok(())
    })
}

/// The next change, without waiting. `*out` is zeroed first. `DOMSYNC_OK`: `*out` holds it
/// (free with `domsync_event_free`). `DOMSYNC_AGAIN`: nothing queued now (wait on
/// `domsync_watch_fd`). Any other code: the watch ended (the same code and message on every
/// later call); free it and start another.
///
/// # Safety
/// `watch`: a handle; `out`: a struct to fill.
#[no_mangle]
pub unsafe extern "C" fn domsync_watch_next(
    watch: *mut domsync_watch,
    out: *mut domsync_event,
) -> c_int {
    guard(|| {
        let out = args::out(out, "out")?;
        *out = domsync_event {
            key: domsync_buf::empty(),
            value: domsync_buf::empty(),
            deleted: 0,
            lsn: 0,
        };
        let watch = args::handle(watch, "watch")?;
        let mut reader = watch
            .reader
            .lock()
            .map_err(|_| Failure::new(DOMSYNC_ERR_INTERNAL, "the watch's lock was poisoned by an earlier failure: free the watch and start another"))?;
        loop {
            if let Some(ended) = &reader.ended {
                return Err(Failure::new(ended.code, ended.message.clone()));
            }
            if !take(&watch.fd) {
                return Err(Failure::new(
                    DOMSYNC_AGAIN,
                    "no event queued yet: wait until the watch's descriptor is readable",
                ));
            }
            // Counted, so queued: try_recv finds it.
            let item = reader.queue.try_recv().map_err(|e| {
                Failure::new(
                    DOMSYNC_ERR_INTERNAL,
                    format!("the watch's queue disagrees with its descriptor ({e}): free the watch and start another"),
                )
            })?;
            match item {
                Item::Event { event, then } => {
                    if let Some(position) = then {
                        reader.position = position;
                    }
                    out.lsn = event.lsn.0;
                    out.key = domsync_buf::from_vec(event.key);
                    match event.value {
                        Some(value) => out.value = domsync_buf::from_vec(value.into_vec()),
                        None => out.deleted = 1,
                    }
                    return Ok(());
                }
                Item::Mark(position) => reader.position = position,
                Item::End(e) => reader.ended = Some(e.into()),
            }
        }
    })
}

/// Where a new watch would resume to miss nothing already taken: the position after the last
/// batch whose every event `domsync_watch_next` returned (or the watch's start). Pass it as
/// `from` to `domsync_watch_start`.
///
/// # Safety
/// `watch`: a handle; `out`: a struct to fill.
#[no_mangle]
pub unsafe extern "C" fn domsync_watch_position(
    watch: *const domsync_watch,
    out: *mut domsync_position,
) -> c_int {
    guard(|| {
        let out = args::out(out, "out")?;
        let watch = args::handle(watch, "watch")?;
        let reader = watch.reader.lock().map_err(|_| {
            Failure::new(DOMSYNC_ERR_INTERNAL, "the watch's lock was poisoned by an earlier failure: free the watch and start another")
        })?;
        *out = domsync_position::from_position(&reader.position);
        Ok(())
    })
}

/// Frees an event's key and value and zeroes it (NULL is ignored).
///
/// # Safety
/// `event`: NULL or an event filled in by `domsync_watch_next`.
#[no_mangle]
pub unsafe extern "C" fn domsync_event_free(event: *mut domsync_event) {
    guard_void(|| {
        // SAFETY: NULL or an event filled in by this library.
        if let Some(event) = unsafe { event.as_mut() } {
            event.key.release();
            event.value.release();
            event.deleted = 0;
            event.lsn = 0;
        }
    });
}

/// Stops and frees a watch (NULL is ignored); its descriptor is closed.
///
/// # Safety
/// `watch`: NULL or a handle from `domsync_watch_start`, not used again.
#[no_mangle]
pub unsafe extern "C" fn domsync_watch_free(watch: *mut domsync_watch) {
    guard_void(|| {
        if watch.is_null() {
            return;
        }
        // SAFETY: a handle made by `domsync_watch_start`, given back once.
        let watch = unsafe { Box::from_raw(watch) };
        watch.task.abort();
        let domsync_watch {
            reader,
            fd,
            task,
            _runtime: runtime,
        } = *watch;
        {
            // Wait for the task to be gone (it holds the connection), inside its runtime.
            let _ = runtime.block_on(task);
        }
        drop(reader);
        drop(fd);
        drop(runtime);
    });
}
