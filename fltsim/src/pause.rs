//! Pause points: where a test stops a simulated thread so that a race happens every time.
//!
//! A race in a driver usually needs one thread to be at a precise point (inside `FilterUnload`,
//! between a create's pre-op and its post-op, inside a callback) while another thread does
//! something. [`crate::Sim::hold_io`] keeps operations in the file system; a pause point stops the
//! thread that reaches it: [`crate::Sim::pause_at`] arms a point, the next thread to reach it waits
//! there, [`Pause::wait`] returns once one does, and [`Pause::resume`] (or dropping the [`Pause`])
//! lets it go. Each arming stops one thread once.
//!
//! The waits are bounded like every wait in fltsim ([`crate::hang`]): a point that is never reached,
//! or a paused thread never resumed, fails the test with a report instead of hanging it.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread::{self, ThreadId};

use crate::Sim;
use crate::hang::{self, Wait};
use crate::volume::Volume;
use crate::world::lock_ignoring_poison;

/// Where a thread can be paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Point {
    /// The driver called `FltUnregisterFilter` and no instance teardown has begun: every instance
    /// still receives operations and a volume mounted now is still offered to the filter. This is
    /// the window between the start of `FilterUnload` and the unregistration, where whatever the
    /// driver tore down before calling `FltUnregisterFilter` is already gone.
    Unregister,
    /// The instance on this volume is tearing down: `InstanceTeardownStartCallback` returned, new
    /// operations no longer reach the filter, and operations already below it have not been
    /// drained (their post-ops may run now, concurrently with the teardown).
    TeardownStarted(Volume),
    /// A driver called the named export (for example `"FltAllocateContext"`): the thread stops on
    /// entry, before the routine does anything.
    Call(&'static str),
}

/// What an armed point is doing (a point not in the table is not armed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The next thread to reach the point stops there.
    Armed,
    /// This thread is stopped at the point.
    Paused(ThreadId),
}

/// Armed and paused points of the session.
static POINTS: Mutex<Option<HashMap<Point, State>>> = Mutex::new(None);
/// Notified when a point changes state.
static CHANGED: Condvar = Condvar::new();
/// Whether any point is armed or paused (a cheap test on every export's entry).
static ANY: AtomicBool = AtomicBool::new(false);

/// Forgets every point: called when a new [`Sim`] starts.
pub(crate) fn reset() {
    *lock_ignoring_poison(&POINTS) = Some(HashMap::new());
    ANY.store(false, Ordering::Release);
}

/// Called by fltsim where `point` lies: if the point is armed, the calling thread stops here until
/// the test resumes it.
pub(crate) fn reach(point: Point) {
    if !ANY.load(Ordering::Acquire) {
        return;
    }
    let me = thread::current().id();
    {
        let mut guard = lock_ignoring_poison(&POINTS);
        let points = guard.get_or_insert_with(HashMap::new);
        if points.get(&point) != Some(&State::Armed) {
            return;
        }
        points.insert(point, State::Paused(me));
    }
    CHANGED.notify_all();
    let what = Wait::Paused(format!("{point:?}"));
    hang::wait_on(&POINTS, &CHANGED, &what, |points| {
        let points = points.get_or_insert_with(HashMap::new);
        (points.get(&point) != Some(&State::Paused(me))).then_some(())
    });
}

/// The entry of export `routine`: stops there if `Point::Call(routine)` is armed.
pub(crate) fn on_call(routine: &'static str) {
    reach(Point::Call(routine));
}

impl Sim {
    /// Arms `point`: the next thread that reaches it stops there until the returned [`Pause`] is
    /// resumed or dropped. Arming a point that is already armed or paused is a test bug (reported).
    ///
    /// # Panics
    /// If `point` is already armed or paused.
    pub fn pause_at(&self, point: Point) -> Pause<'_> {
        let mut guard = lock_ignoring_poison(&POINTS);
        let points = guard.get_or_insert_with(HashMap::new);
        assert!(
            !matches!(points.get(&point), Some(State::Armed | State::Paused(_))),
            "fltsim: Sim::pause_at({point:?}): the point is already armed"
        );
        points.insert(point, State::Armed);
        ANY.store(true, Ordering::Release);
        Pause {
            point,
            _sim: PhantomData,
        }
    }
}

/// An armed pause point ([`Sim::pause_at`]). Dropping it resumes the point, so a test that fails
/// while a thread is paused does not leave that thread stopped.
#[must_use = "the point is resumed when the Pause is dropped"]
pub struct Pause<'sim> {
    point: Point,
    _sim: PhantomData<&'sim Sim>,
}

impl Pause<'_> {
    /// Waits until a thread is stopped at the point.
    ///
    /// # Panics
    /// If no thread reaches it within the wait bound ([`crate::hang::set_wait_limit`]), or a rule
    /// violation is pending.
    pub fn wait(&self) {
        let _exit = crate::session::checked();
        let point = self.point;
        let what = Wait::ForPause(format!("{point:?}"));
        hang::wait_on(&POINTS, &CHANGED, &what, |points| {
            let points = points.get_or_insert_with(HashMap::new);
            matches!(points.get(&point), Some(State::Paused(_)) | None).then_some(())
        });
    }

    /// Lets the thread stopped at the point go on (or, if none reached it yet, disarms it).
    pub fn resume(self) {
        drop(self);
    }
}

impl Drop for Pause<'_> {
    fn drop(&mut self) {
        {
            let mut guard = lock_ignoring_poison(&POINTS);
            let points = guard.get_or_insert_with(HashMap::new);
            points.remove(&self.point);
            let busy = points
                .values()
                .any(|state| matches!(state, State::Armed | State::Paused(_)));
            ANY.store(busy, Ordering::Release);
        }
        CHANGED.notify_all();
    }
}
