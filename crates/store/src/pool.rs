//! The writer pool: a bounded set of threads, shared by every domain of a [`super::Store`],
//! that run the domains' writers, so a node's threads do not grow with its domains.
//!
//! Each open domain has a [`Slot`]: its [`Writer`] and request queue behind a mutex, and a
//! `scheduled` flag. A [`Sender`] queues a request and then wakes the slot: the sender that
//! turns `scheduled` from false to true puts the slot on the ready queue (FIFO). A pool thread
//! takes a slot and runs one *turn*: a due tick, then one batch ([`Writer::step`]: a first
//! request, then whatever else is already queued up to the batch limits, one commit). Then it
//! looks whether more is queued: if so the slot goes to the back of the ready queue (one
//! batch per turn, so a busy domain never starves the others); if not, it clears `scheduled`
//! and looks again, since a request queued between the look and the clear found the flag
//! still set and did not wake the slot. A slot is on the ready queue or run at most once at
//! a time: only the holder of the set flag queues it, and the writer is run under its mutex.
//!
//! Ticks: a writer that wants periodic work ([`Writer::wants_tick`]) is registered on the
//! tick list after its turn; about every [`TICK`] a pool thread marks every registered slot
//! tick-due and wakes it, and its next turn calls [`Writer::tick`]. Writers that want no
//! ticks cost nothing while idle: no timer runs while the list is empty.
//!
//! Closing: when the last handle of a domain is dropped, the slot is marked closing and
//! woken; its writer answers what is queued, then a pool thread drops it (and so its database)
//! and tells the waiting handle ([`Slot::close`]). A writer that panics is dropped with its
//! queue (the requesters get `Closed`), reported when the domain is closed.
//!
//! Threads are started as domains are opened, up to the pool size, and stop when the store
//! and every domain handle are gone.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use domsync_proto::model::DomainId;

use super::writer::{Request, Writer};

/// How often a writer that wants ticks gets one.
pub(crate) const TICK: Duration = Duration::from_millis(250);

/// The default pool size: the number of CPUs, at least 2 and at most 8.
pub(crate) fn default_size() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}

/// What the pool threads share.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when a slot is put on the ready queue, and at shutdown.
    ready: Condvar,
}

#[derive(Default)]
struct State {
    /// Slots whose `scheduled` flag is set and that no thread runs now.
    queue: VecDeque<Arc<Slot>>,
    /// Slots whose writer wants ticks (`Slot::registered` is set exactly for these).
    ticking: Vec<Arc<Slot>>,
    /// When the next tick pass is due (meaningful while `ticking` is not empty).
    next_tick: Option<Instant>,
    /// The store and every domain are gone: the threads end once the queue is empty.
    shutdown: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The threads that run the writers of a store's domains.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    size: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.size)
            .field("threads", &lock(&self.threads).len())
            .finish()
    }
}

impl Pool {
    /// A pool of at most `size` threads (at least one); none is started yet.
    pub fn new(size: usize) -> Pool {
        Pool {
            shared: Arc::new(Shared::default()),
            size: size.max(1),
            threads: Mutex::new(Vec::new()),
        }
    }

    /// Starts one more thread unless the pool is full. Fails only when no thread runs at all:
    /// with one or more, the pool just stays smaller.
    pub fn grow(&self) -> std::io::Result<()> {
        let mut threads = lock(&self.threads);
        if threads.len() >= self.size {
            return Ok(());
        }
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name(format!("domsync-writer-{}", threads.len()))
            .spawn(move || work(&shared));
        match spawned {
            Ok(handle) => {
                threads.push(handle);
                Ok(())
            }
            Err(e) if threads.is_empty() => Err(e),
            Err(e) => {
                tracing::warn!(threads = threads.len(), error = %e, "cannot start one more writer thread: the pool stays at its size");
                Ok(())
            }
        }
    }

    /// Hands a domain's writer and the receiving end of its queue to the pool.
    pub fn slot(&self, domain: DomainId, writer: Writer, rx: mpsc::Receiver<Request>) -> Arc<Slot> {
        Arc::new(Slot {
            domain,
            scheduled: AtomicBool::new(false),
            tick_due: AtomicBool::new(false),
            needs_tick: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            running: Mutex::new(Some(Running { writer, rx })),
            ended: Mutex::new(None),
            ended_signal: Condvar::new(),
        })
    }

    /// A sender of requests to the writer of `slot`.
    pub fn sender(&self, slot: &Arc<Slot>, tx: mpsc::SyncSender<Request>) -> Sender {
        Sender {
            tx,
            slot: Arc::clone(slot),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Marks `slot` closing and waits until its writer answered what is queued and is dropped.
    pub fn close(&self, slot: &Arc<Slot>) -> Ended {
        slot.closing.store(true, Ordering::SeqCst);
        wake(&self.shared, slot);
        let mut ended = lock(&slot.ended);
        loop {
            if let Some(how) = *ended {
                return how;
            }
            ended = slot
                .ended_signal
                .wait(ended)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.ready.notify_all();
        for handle in lock(&self.threads).drain(..) {
            if handle.join().is_err() {
                tracing::error!("a writer pool thread panicked");
            }
        }
        let mut state = lock(&self.shared.state);
        state.queue.clear();
        state.ticking.clear();
    }
}

/// How a domain's writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Closed after answering every queued request.
    Closed,
    /// It panicked; its queued requests were dropped unanswered.
    Panicked,
}

/// The writer of one domain and the receiving end of its queue.
struct Running {
    writer: Writer,
    rx: mpsc::Receiver<Request>,
}

/// One domain in the pool.
pub(crate) struct Slot {
    domain: DomainId,
    /// On the ready queue or being run; set by whoever queues the slot, cleared by the
    /// thread that ran it when it found nothing more to do. Stays set once the writer ended.
    scheduled: AtomicBool,
    /// The next turn starts with [`Writer::tick`].
    tick_due: AtomicBool,
    /// The writer wants ticks (its [`Writer::wants_tick`] after its last turn).
    needs_tick: AtomicBool,
    /// On the tick list; changed only under the pool's state lock.
    registered: AtomicBool,
    /// The last handle is gone: end the writer once the queue is empty.
    closing: AtomicBool,
    /// `None` once the writer ended.
    running: Mutex<Option<Running>>,
    ended: Mutex<Option<Ended>>,
    ended_signal: Condvar,
}

/// The sending end of a domain's queue: queues a request, then wakes the domain's slot.
#[derive(Clone)]
pub(crate) struct Sender {
    tx: mpsc::SyncSender<Request>,
    slot: Arc<Slot>,
    shared: Arc<Shared>,
}

impl Sender {
    /// Queues `request`, blocking while the queue is full.
    ///
    /// # Errors
    /// The request back when the writer ended.
    pub fn send(&self, request: Request) -> Result<(), mpsc::SendError<Request>> {
        self.tx.send(request)?;
        wake(&self.shared, &self.slot);
        Ok(())
    }

    /// Queues `request` unless the queue is full.
    ///
    /// # Errors
    /// The request back when the queue is full or the writer ended.
    pub fn try_send(&self, request: Request) -> Result<(), mpsc::TrySendError<Request>> {
        self.tx.try_send(request)?;
        wake(&self.shared, &self.slot);
        Ok(())
    }
}

/// Puts `slot` on the ready queue unless it is there or being run already.
fn wake(shared: &Shared, slot: &Arc<Slot>) {
    if !slot.scheduled.swap(true, Ordering::SeqCst) {
        lock(&shared.state).queue.push_back(Arc::clone(slot));
        shared.ready.notify_one();
    }
}

/// What a turn left to do.
enum After {
    /// More is queued: back on the ready queue (the slot stays scheduled).
    Again,
    /// Nothing queued; the slot is not scheduled any more.
    Idle,
    /// The writer ended.
    Ended,
}

/// A pool thread: takes ready slots one turn at a time until shutdown.
fn work(shared: &Shared) {
    let mut done: Option<(Arc<Slot>, After)> = None;
    loop {
        let slot = {
            let mut state = lock(&shared.state);
            if let Some((slot, after)) = done.take() {
                settle(shared, &mut state, slot, after);
            }
            loop {
                tick_pass(shared, &mut state);
                if let Some(slot) = state.queue.pop_front() {
                    break slot;
                }
                if state.shutdown {
                    return;
                }
                state = match state.next_tick.filter(|_| !state.ticking.is_empty()) {
                    Some(due) => {
                        let wait = due.saturating_duration_since(Instant::now());
                        shared
                            .ready
                            .wait_timeout(state, wait)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                    None => shared
                        .ready
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner),
                };
            }
        };
        let after = turn(&slot);
        done = Some((slot, after));
    }
}

/// Puts a slot back on the ready queue or registers it for ticks, as its turn left it.
fn settle(shared: &Shared, state: &mut State, slot: Arc<Slot>, after: After) {
    if matches!(after, After::Ended) {
        return;
    }
    if slot.needs_tick.load(Ordering::SeqCst) && !slot.registered.load(Ordering::SeqCst) {
        slot.registered.store(true, Ordering::SeqCst);
        if state.ticking.is_empty() {
            state.next_tick = Some(Instant::now() + TICK);
            // A thread waiting without a deadline now has one.
            shared.ready.notify_one();
        }
        state.ticking.push(Arc::clone(&slot));
    }
    if matches!(after, After::Again) {
        state.queue.push_back(slot);
        // This thread takes the next slot itself: wake another only for a second one.
        if state.queue.len() > 1 {
            shared.ready.notify_one();
        }
    }
}

/// When a tick is due, marks every slot that wants one tick-due and queues it; drops from
/// the list the slots that want no more ticks. Costs nothing while no writer wants ticks.
fn tick_pass(shared: &Shared, state: &mut State) {
    if state.ticking.is_empty() {
        return;
    }
    let now = Instant::now();
    if state.next_tick.is_some_and(|due| now < due) {
        return;
    }
    state.next_tick = Some(now + TICK);
    state.ticking.retain(|slot| {
        let keep = slot.needs_tick.load(Ordering::SeqCst);
        if !keep {
            slot.registered.store(false, Ordering::SeqCst);
        }
        keep
    });
    let mut woken = 0;
    for slot in &state.ticking {
        slot.tick_due.store(true, Ordering::SeqCst);
        if !slot.scheduled.swap(true, Ordering::SeqCst) {
            state.queue.push_back(Arc::clone(slot));
            woken += 1;
        }
    }
    if woken > 1 {
        shared.ready.notify_all();
    }
}

/// One turn of a slot: a due tick, then one batch of what is queued.
fn turn(slot: &Slot) -> After {
    let mut running = lock(&slot.running);
    let Some(run) = running.as_mut() else {
        return After::Ended;
    };
    let open = catch_unwind(AssertUnwindSafe(|| {
        if slot.tick_due.swap(false, Ordering::SeqCst) {
            run.writer.tick();
        }
        let open = run.writer.step(&run.rx);
        slot.needs_tick
            .store(run.writer.wants_tick(), Ordering::SeqCst);
        open
    }));
    match open {
        Err(_) => return end(slot, &mut running, Ended::Panicked),
        Ok(false) => return end(slot, &mut running, Ended::Closed),
        Ok(true) => {}
    }
    match queued(run) {
        Queued::Yes => return After::Again,
        Queued::Closed => return end(slot, &mut running, Ended::Closed),
        Queued::No if slot.closing.load(Ordering::SeqCst) => {
            return end(slot, &mut running, Ended::Closed)
        }
        Queued::No => {}
    }
    slot.scheduled.swap(false, Ordering::SeqCst);
    // A request, tick or close that came after the look above found the flag still set and
    // did not queue the slot: look again, and queue it unless a waker did in the meantime.
    let again = !matches!(queued(run), Queued::No)
        || slot.tick_due.load(Ordering::SeqCst)
        || slot.closing.load(Ordering::SeqCst);
    if again && !slot.scheduled.swap(true, Ordering::SeqCst) {
        After::Again
    } else {
        After::Idle
    }
}

enum Queued {
    Yes,
    No,
    /// Every sender is gone and nothing is queued.
    Closed,
}

/// Whether a request waits: the one set aside by the last batch, or the next one queued
/// (taken and set aside for the next batch).
fn queued(run: &mut Running) -> Queued {
    if run.writer.pending.is_some() {
        return Queued::Yes;
    }
    match run.rx.try_recv() {
        Ok(request) => {
            run.writer.pending = Some(request);
            Queued::Yes
        }
        Err(TryRecvError::Empty) => Queued::No,
        Err(TryRecvError::Disconnected) => Queued::Closed,
    }
}

/// Drops the writer (and its queue and database) and tells whoever waits for it. The slot
/// stays scheduled, so nothing queues it again.
fn end(slot: &Slot, running: &mut Option<Running>, how: Ended) -> After {
    if how == Ended::Panicked {
        tracing::error!(domain = %slot.domain, "the writer panicked: the domain takes no more writes until it is opened again");
    }
    slot.needs_tick.store(false, Ordering::SeqCst);
    if how != Ended::Panicked {
        if let Some(run) = running.as_mut() {
            // A clean close checkpoints: the next open replays nothing.
            if catch_unwind(AssertUnwindSafe(|| run.writer.close())).is_err() {
                tracing::error!(domain = %slot.domain, "the final checkpoint panicked");
            }
        }
    }
    // Dropping a writer that panicked may panic again: the pool thread must survive it.
    if catch_unwind(AssertUnwindSafe(|| drop(running.take()))).is_err() {
        tracing::error!(domain = %slot.domain, "dropping the writer panicked");
    }
    let mut ended = lock(&slot.ended);
    ended.get_or_insert(how);
    slot.ended_signal.notify_all();
    After::Ended
}
