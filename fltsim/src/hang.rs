//! Hangs become failures: every wait in fltsim is bounded, and deadlocks are found at once from a
//! wait-for graph.
//!
//! On Windows a deadlocked minifilter hangs the machine, and push locks leave no trace of who holds
//! them: there is no owner query and no `!locks` for push locks, and Driver Verifier's deadlock
//! detection does not cover them. fltsim keeps what Windows does not: each thread that waits in
//! fltsim (for a push lock, for a teardown to drain, for held I/O, for a pended operation, at a pause
//! point) is registered here with what it waits for, and [`crate::pushlock`] records who holds each
//! lock, with the routine that acquired it and the driver callback it ran in. From these, a thread
//! about to block computes the wait-for graph:
//!
//! - a thread waiting for a push lock exclusive waits for every holder;
//! - a thread waiting for it shared waits for the exclusive holder and for the exclusive waiters
//!   (Windows queues it behind them);
//! - a thread draining an instance's teardown waits for every thread running a callback of that
//!   instance;
//! - other waits (held I/O, pended pre-ops, pause points) wait for the test, which is not a thread
//!   of the graph: only the bound ends them.
//!
//! A cycle through the waiting thread is a deadlock that would hang Windows for ever; a push lock held
//! by a thread that has exited is one too. Either is reported at once, and any wait longer than the
//! bound ([`set_wait_limit`], default [`DEFAULT_WAIT_LIMIT`], or `FLTSIM_WAIT_LIMIT_MS`) is reported
//! when the bound passes. The report lists who waits for what and who holds what (thread names and
//! ids, lock addresses, modes, acquiring routine and callback).
//!
//! A deadlock stops the process (its threads can never move again), as it would stop the machine. A
//! wait past the bound panics on the waiting thread: inside a simulated export the panic cannot
//! unwind and stops the process there; in a [`crate::Sim`] method it fails the test. Test the cases
//! that stop the process with [`crate::bugcheck::expect_bugcheck`].

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use crate::pushlock::registry::{self as locks, Mode};
use crate::world::lock_ignoring_poison;

/// The bound on any single wait unless a test or `FLTSIM_WAIT_LIMIT_MS` sets another.
pub const DEFAULT_WAIT_LIMIT: Duration = Duration::from_secs(20);

/// How long a wait lasts, with a rule violation recorded, before the violation is reported in its
/// place.
const VIOLATION_GRACE: Duration = Duration::from_secs(1);

/// The longest a blocked thread sleeps before it looks at the graph and the bound again.
const SLICE: Duration = Duration::from_millis(100);

/// The bound in milliseconds; 0 means "not set since the session started" (use the default).
static LIMIT_MS: AtomicU64 = AtomicU64::new(0);

/// Sets the bound on every wait in fltsim for this session (reset by [`crate::Sim::new`]).
pub fn set_wait_limit(limit: Duration) {
    let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
    LIMIT_MS.store(ms, Ordering::Relaxed);
}

/// The bound on every wait: [`set_wait_limit`]'s, else `FLTSIM_WAIT_LIMIT_MS`, else the default.
#[must_use]
pub fn wait_limit() -> Duration {
    match LIMIT_MS.load(Ordering::Relaxed) {
        0 => std::env::var("FLTSIM_WAIT_LIMIT_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(DEFAULT_WAIT_LIMIT, Duration::from_millis),
        ms => Duration::from_millis(ms),
    }
}

/// What a thread waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// To acquire the push lock at this address.
    PushLock { address: usize, mode: Mode },
    /// For the callbacks of this instance to finish (a teardown draining it).
    Drain { instance: isize },
    /// For a post-op another thread is draining.
    DrainingPost { instance: isize },
    /// For the test's [`crate::Sim::release_io`] (the operation is held in the file system).
    HeldIo,
    /// For the test's [`crate::Sim::wait_for_held_io`] count.
    HeldIoCount(usize),
    /// For the driver's `FltCompletePendedPreOperation`.
    PendedPreOp,
    /// Stopped at a pause point until the test resumes it.
    Paused(String),
    /// For some thread to reach a pause point.
    ForPause(String),
    /// For the `MessageNotify` calls running on a connection to return (a disconnect).
    Messages { client: isize },
    /// For the rundown references on an instance to be released (its teardown).
    Rundown { instance: isize },
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PushLock { address, mode } => {
                write!(f, "push lock {address:#x} ({})", mode_name(*mode))
            }
            Self::Drain { instance } => write!(
                f,
                "the callbacks of instance {instance:#x} to finish (teardown draining)"
            ),
            Self::DrainingPost { instance } => write!(
                f,
                "a teardown of instance {instance:#x} calling this operation's post-op (draining)"
            ),
            Self::HeldIo => {
                f.write_str("Sim::release_io (the operation is held in the file system)")
            }
            Self::HeldIoCount(n) => write!(f, "{n} operation(s) to be held in the file system"),
            Self::PendedPreOp => {
                f.write_str("FltCompletePendedPreOperation (the pre-op returned FLT_PREOP_PENDING)")
            }
            Self::Paused(point) => write!(f, "Sim::resume({point}) (stopped at a pause point)"),
            Self::ForPause(point) => write!(f, "a thread to reach pause point {point}"),
            Self::Messages { client } => write!(
                f,
                "the MessageNotify calls on client port {client:#x} to return (a disconnect)"
            ),
            Self::Rundown { instance } => write!(
                f,
                "the rundown references on instance {instance:#x} (FltEnumerateInstances, \
                 FltObjectReference) to be released with FltObjectDereference (its teardown)"
            ),
        }
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Shared => "shared",
        Mode::Exclusive => "exclusive",
    }
}

/// One registered wait.
#[derive(Clone)]
struct Waiter {
    /// Unique per registration: a thread that left its wait and waits again has a new id.
    id: u64,
    what: Wait,
    since: Instant,
}

/// A driver callback running on a thread, for an instance.
#[derive(Clone, Copy)]
struct Running {
    instance: isize,
    callback: &'static str,
}

#[derive(Default)]
struct Graph {
    next_id: u64,
    waiters: HashMap<ThreadId, Waiter>,
    running: HashMap<ThreadId, Vec<Running>>,
    names: HashMap<ThreadId, String>,
    exited: HashSet<ThreadId>,
}

static GRAPH: Mutex<Option<Graph>> = Mutex::new(None);

fn graph() -> MutexGuard<'static, Option<Graph>> {
    GRAPH.lock().unwrap_or_else(PoisonError::into_inner)
}

fn with_graph<R>(f: impl FnOnce(&mut Graph) -> R) -> R {
    f(graph().get_or_insert_with(Graph::default))
}

/// Forgets every wait and the bound: called when a new [`crate::Sim`] starts.
///
/// Threads of an earlier session still blocked keep their own registrations' ids, which the new
/// graph does not know: they are ignored.
pub(crate) fn reset() {
    LIMIT_MS.store(0, Ordering::Relaxed);
    let mut guard = graph();
    let graph = guard.get_or_insert_with(Graph::default);
    graph.waiters.clear();
    graph.running.clear();
    graph.exited.clear();
}

thread_local! {
    /// Marks the thread as exited in the graph when it ends (its holds then never go away).
    static ALIVE: Alive = Alive::new();
}

/// Lives as long as its thread (in thread-local storage).
struct Alive(ThreadId);

impl Alive {
    fn new() -> Self {
        let current = thread::current();
        let name = current.name().unwrap_or("<unnamed>").to_owned();
        with_graph(|g| g.names.insert(current.id(), name));
        Self(current.id())
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        with_graph(|g| g.exited.insert(self.0));
    }
}

/// Makes sure the calling thread's name is known and its exit will be noticed: called by the push
/// lock routines when a thread takes a hold, and by every wait.
pub(crate) fn track_thread() {
    // A thread that is being torn down cannot be tracked any more; it holds nothing new then.
    let _ = ALIVE.try_with(|_| ());
}

/// The name fltsim gives `thread` in reports: `'name' (ThreadId(n))`.
fn describe_thread(graph: &Graph, thread: ThreadId) -> String {
    let name = graph.names.get(&thread).map_or("<unnamed>", String::as_str);
    let exited = if graph.exited.contains(&thread) {
        ", exited"
    } else {
        ""
    };
    format!("thread '{name}' ({thread:?}{exited})")
}

thread_local! {
    /// The driver callbacks this thread is running, innermost last.
    static CALLBACKS: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// The driver callback the calling thread is running, if any (for the "acquired in" of holds).
pub(crate) fn current_callback() -> Option<&'static str> {
    CALLBACKS.with(Cell::get)
}

/// Marks the calling thread as running `callback` (a driver routine) until the guard drops; with
/// `instance`, a teardown of that instance waits for it.
pub(crate) struct InCallback {
    previous: Option<&'static str>,
    instance: Option<isize>,
}

impl InCallback {
    pub(crate) fn enter(callback: &'static str, instance: Option<isize>) -> Self {
        let previous = CALLBACKS.with(|c| c.replace(Some(callback)));
        if let Some(instance) = instance {
            track_thread();
            let me = thread::current().id();
            with_graph(|g| {
                g.running
                    .entry(me)
                    .or_default()
                    .push(Running { instance, callback });
            });
        }
        Self { previous, instance }
    }
}

impl Drop for InCallback {
    fn drop(&mut self) {
        CALLBACKS.with(|c| c.set(self.previous));
        if self.instance.is_some() {
            let me = thread::current().id();
            with_graph(|g| {
                if let Some(stack) = g.running.get_mut(&me) {
                    stack.pop();
                    if stack.is_empty() {
                        g.running.remove(&me);
                    }
                }
            });
        }
    }
}

/// A registered wait of the calling thread; unregisters when dropped.
pub(crate) struct Registration {
    thread: ThreadId,
    id: u64,
    since: Instant,
    limit: Duration,
}

/// Registers that the calling thread waits for `what`, from now.
pub(crate) fn register(what: Wait) -> Registration {
    register_since(what, Instant::now())
}

/// Registers that the calling thread waits for `what`, as it has since `since` (a wait made of
/// several sleeps, each registered anew).
pub(crate) fn register_since(what: Wait, since: Instant) -> Registration {
    track_thread();
    let thread = thread::current().id();
    let id = with_graph(|g| {
        g.next_id += 1;
        let id = g.next_id;
        g.waiters.insert(thread, Waiter { id, what, since });
        id
    });
    Registration {
        thread,
        id,
        since,
        limit: wait_limit(),
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        with_graph(|g| {
            if g.waiters.get(&self.thread).is_some_and(|w| w.id == self.id) {
                g.waiters.remove(&self.thread);
            }
        });
    }
}

impl Registration {
    /// How long to sleep before the next [`Registration::check`].
    pub(crate) fn slice(&self) -> Duration {
        SLICE
            .min(self.limit.saturating_sub(self.since.elapsed()))
            .max(Duration::from_millis(1))
    }

    /// Panics with a report if the wait is part of a deadlock or has lasted longer than the bound.
    /// Call it with no fltsim lock held.
    #[track_caller]
    pub(crate) fn check(&self) {
        if let Some(report) = deadlock(self.thread) {
            // The threads on the cycle can never move again, and would keep the test (a scoped
            // thread's join, a session's end) waiting for them: stop the process, as the deadlock
            // stops the machine.
            eprintln!("{report}");
            std::process::abort();
        }
        let waited = self.since.elapsed();
        if waited >= VIOLATION_GRACE.min(self.limit) {
            // A rule broken while this thread waits (an operation that can never complete because
            // its completion was refused, ...) is the likely cause, and Windows would have stopped
            // at it: report it now rather than when the bound passes.
            crate::verifier::check();
        }
        if waited >= self.limit {
            let report = with_graph(|g| {
                let what = g
                    .waiters
                    .get(&self.thread)
                    .map_or_else(|| "?".to_owned(), |w| w.what.to_string());
                format!(
                    "fltsim: hang: {} waited {:.1} s (the bound, see fltsim::hang::set_wait_limit) \
                     for {what}; Windows would wait for ever\n{}",
                    describe_thread(g, self.thread),
                    waited.as_secs_f64(),
                    state(g)
                )
            });
            panic!("{report}");
        }
    }
}

/// Waits on `condvar` (paired with `mutex`) until `ready` returns `Some`, as a registered wait for
/// `what`: bounded, and checked against the wait-for graph each time the thread is about to sleep.
///
/// # Panics
/// With a report, on a deadlock or when the bound passes.
#[track_caller]
pub(crate) fn wait_on<T, R>(
    mutex: &Mutex<T>,
    condvar: &Condvar,
    what: &Wait,
    mut ready: impl FnMut(&mut T) -> Option<R>,
) -> R {
    let mut guard = lock_ignoring_poison(mutex);
    if let Some(result) = ready(&mut guard) {
        return result;
    }
    let registration = register(what.clone());
    loop {
        drop(guard);
        registration.check();
        guard = lock_ignoring_poison(mutex);
        if let Some(result) = ready(&mut guard) {
            return result;
        }
        guard = condvar
            .wait_timeout(guard, registration.slice())
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        if let Some(result) = ready(&mut guard) {
            return result;
        }
    }
}

/// The threads `waiter` waits for, given the holders of the push locks involved.
fn waits_for(
    graph: &Graph,
    waiter: &Waiter,
    holders: &HashMap<usize, Vec<locks::Hold>>,
) -> Vec<ThreadId> {
    match &waiter.what {
        Wait::PushLock { address, mode } => {
            let held = holders.get(address).map_or(&[][..], Vec::as_slice);
            let mut threads: Vec<ThreadId> = held
                .iter()
                .filter(|hold| *mode == Mode::Exclusive || hold.mode == Mode::Exclusive)
                .map(|hold| hold.thread)
                .collect();
            if *mode == Mode::Shared {
                threads.extend(graph.waiters.iter().filter_map(|(&thread, other)| {
                    (other.what
                        == Wait::PushLock {
                            address: *address,
                            mode: Mode::Exclusive,
                        })
                    .then_some(thread)
                }));
            }
            threads
        }
        Wait::Drain { instance } => graph
            .running
            .iter()
            .filter(|(_, stack)| stack.iter().any(|r| r.instance == *instance))
            .map(|(&thread, _)| thread)
            .collect(),
        _ => Vec::new(),
    }
}

/// A deadlock through `me`, described, if there is one now.
///
/// The graph is read in three steps (waits, then lock holders, then waits again) without holding
/// fltsim's locks together; a cycle counts only if every thread on it is still in the same wait at the
/// end. A thread that stays in one wait cannot release a lock or finish a callback meanwhile, so the
/// holds and callbacks read in between are still true: the cycle is real, and permanent.
fn deadlock(me: ThreadId) -> Option<String> {
    let (waiters, addresses) = with_graph(|g| {
        let addresses: Vec<usize> = g
            .waiters
            .values()
            .filter_map(|w| match w.what {
                Wait::PushLock { address, .. } => Some(address),
                _ => None,
            })
            .collect();
        (
            g.waiters
                .iter()
                .map(|(&t, w)| (t, w.id))
                .collect::<HashMap<_, _>>(),
            addresses,
        )
    });
    waiters.get(&me)?;
    let holders = locks::holders(&addresses);
    let (exited, report) = with_graph(|g| {
        let cycle = find_cycle(g, me, &holders)?;
        let stuck = cycle.iter().all(|step| match step {
            Step::Waits(thread) => {
                g.waiters.get(thread).map(|w| w.id) == waiters.get(thread).copied()
            }
            Step::Exited(thread) => g.exited.contains(thread),
        });
        let exited: Vec<ThreadId> = cycle
            .iter()
            .filter_map(|step| match step {
                Step::Exited(thread) => Some(*thread),
                Step::Waits(_) => None,
            })
            .collect();
        stuck.then(|| (exited, describe_cycle(g, &cycle, &holders)))
    })?;
    // A hold read before its thread exited may have been released on the thread's way out (the
    // waiter not yet woken): the chain is permanent only if the thread, now known to have exited
    // and so unable to release anything, still holds one of the same locks.
    if !exited.is_empty() {
        let now = locks::holders(&addresses);
        let still_holds = |thread: &ThreadId| {
            holders.iter().any(|(address, before)| {
                before.iter().any(|hold| hold.thread == *thread)
                    && now
                        .get(address)
                        .is_some_and(|held| held.iter().any(|hold| hold.thread == *thread))
            })
        };
        if !exited.iter().all(still_holds) {
            return None;
        }
    }
    Some(report)
}

/// A thread on a cycle of waits: waiting, or (ending a chain) exited with a lock held.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    Waits(ThreadId),
    Exited(ThreadId),
}

/// Depth-first search for a cycle of waits from `me` back to `me`, or a chain to an exited thread.
fn find_cycle(
    graph: &Graph,
    me: ThreadId,
    holders: &HashMap<usize, Vec<locks::Hold>>,
) -> Option<Vec<Step>> {
    let mut path = vec![me];
    let mut seen = HashSet::from([me]);
    search(graph, me, holders, &mut path, &mut seen)
}

fn search(
    graph: &Graph,
    me: ThreadId,
    holders: &HashMap<usize, Vec<locks::Hold>>,
    path: &mut Vec<ThreadId>,
    seen: &mut HashSet<ThreadId>,
) -> Option<Vec<Step>> {
    let current = *path.last()?;
    let waiter = graph.waiters.get(&current)?;
    for next in waits_for(graph, waiter, holders) {
        if next == me {
            return Some(path.iter().map(|&t| Step::Waits(t)).collect());
        }
        if graph.exited.contains(&next) && !graph.waiters.contains_key(&next) {
            let mut steps: Vec<Step> = path.iter().map(|&t| Step::Waits(t)).collect();
            steps.push(Step::Exited(next));
            return Some(steps);
        }
        if seen.insert(next) && graph.waiters.contains_key(&next) {
            path.push(next);
            if let Some(found) = search(graph, me, holders, path, seen) {
                return Some(found);
            }
            path.pop();
        }
    }
    None
}

/// The report of a deadlock along `cycle`.
fn describe_cycle(
    graph: &Graph,
    cycle: &[Step],
    holders: &HashMap<usize, Vec<locks::Hold>>,
) -> String {
    let exited = matches!(cycle.last(), Some(Step::Exited(_)));
    let mut out = if exited {
        "fltsim: push lock deadlock: a thread waits for a push lock held by a thread that has exited \
         without releasing it; Windows would wait for ever:\n"
            .to_owned()
    } else {
        "fltsim: push lock deadlock: a cycle of threads each waiting for the next; Windows would \
         hang:\n"
            .to_owned()
    };
    for (at, step) in cycle.iter().enumerate() {
        let Step::Waits(thread) = *step else {
            continue;
        };
        let Some(waiter) = graph.waiters.get(&thread) else {
            continue;
        };
        let next = match cycle.get(at + 1).copied().unwrap_or(cycle[0]) {
            Step::Waits(next) | Step::Exited(next) => next,
        };
        let why = match &waiter.what {
            Wait::PushLock { address, .. } => holders
                .get(address)
                .and_then(|held| held.iter().find(|h| h.thread == next))
                .map_or_else(
                    || {
                        format!(
                            "queued behind the exclusive waiter {}",
                            describe_thread(graph, next)
                        )
                    },
                    |hold| {
                        format!(
                            "held {} by {}",
                            mode_name(hold.mode),
                            describe_thread(graph, next)
                        )
                    },
                ),
            Wait::Drain { .. } => format!(
                "where {} is running a callback",
                describe_thread(graph, next)
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  {} waits for {}, {why}",
            describe_thread(graph, thread),
            waiter.what
        );
    }
    out.push_str(&state(graph));
    out
}

/// Who waits for what in fltsim now, who holds which push lock (acquired with which routine, in which
/// driver callback), and which driver callbacks are running: the `!locks` Windows lacks for push
/// locks. The same text ends every hang and deadlock report.
#[must_use]
pub fn report() -> String {
    with_graph(|g| state(g))
}

fn state(graph: &Graph) -> String {
    let mut out = String::from("who waits for what:\n");
    let mut waiters: Vec<_> = graph.waiters.iter().collect();
    waiters.sort_by_key(|(_, w)| w.id);
    if waiters.is_empty() {
        out.push_str("  nobody\n");
    }
    for (&thread, waiter) in waiters {
        let _ = writeln!(
            out,
            "  {}: {}, for {:.3} s",
            describe_thread(graph, thread),
            waiter.what,
            waiter.since.elapsed().as_secs_f64()
        );
    }
    out.push_str("who holds what:\n");
    let holds = locks::all_holds();
    if holds.is_empty() {
        out.push_str("  no push lock is held\n");
    }
    for (address, hold) in holds {
        let _ = writeln!(
            out,
            "  push lock {address:#x}: {} by {} ({} time(s)), acquired with {}{}",
            mode_name(hold.mode),
            describe_thread(graph, hold.thread),
            hold.count,
            hold.routine,
            hold.during
                .map_or_else(String::new, |callback| format!(" in {callback}"))
        );
    }
    out.push_str("driver callbacks running:\n");
    if graph.running.is_empty() {
        out.push_str("  none\n");
    }
    let mut running: Vec<_> = graph.running.iter().collect();
    running.sort_by_key(|(thread, _)| format!("{thread:?}"));
    for (&thread, stack) in running {
        for call in stack {
            let _ = writeln!(
                out,
                "  {}: {} of instance {:#x}",
                describe_thread(graph, thread),
                call.callback,
                call.instance
            );
        }
    }
    out
}
