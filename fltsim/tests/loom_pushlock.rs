//! Model checks of the push-lock algorithm (`fltsim::pushlock::word`) with loom: every interleaving
//! of a few threads, within a preemption bound. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p fltsim --release --test loom_pushlock`.
//!
//! Loom reports a deadlock when every thread is blocked, so each model also checks that no waiter is
//! left parked (no lost wake-up), and each ends by checking that the word is back to 0.
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicUsize};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;
use std::sync::atomic::Ordering::SeqCst;

use fltsim::pushlock::parker::ModelParker;
use fltsim::pushlock::word;

/// A push lock as the algorithm sees it, plus the data it protects.
#[derive(Default)]
struct Model {
    word: AtomicUsize,
    parker: ModelParker,
    /// Written only under the exclusive hold, read under the shared hold: loom flags any race.
    data: UnsafeCell<usize>,
    /// Holders right now, to check the invariants inside the critical sections.
    readers: AtomicUsize,
    writers: AtomicUsize,
}

impl Model {
    fn shared(&self) {
        word::acquire_shared(&self.word, &self.parker, false).expect("not a recursive acquire");
        self.readers.fetch_add(1, SeqCst);
        assert_eq!(
            self.writers.load(SeqCst),
            0,
            "a reader got in while a writer held the lock"
        );
    }
    fn release_shared(&self) {
        self.readers.fetch_sub(1, SeqCst);
        word::release(&self.word, &self.parker);
    }
    fn exclusive(&self) {
        word::acquire_exclusive(&self.word, &self.parker);
        assert_eq!(
            self.writers.fetch_add(1, SeqCst),
            0,
            "two writers held the lock"
        );
        assert_eq!(
            self.readers.load(SeqCst),
            0,
            "a writer got in while a reader held the lock"
        );
    }
    fn release_exclusive(&self) {
        self.writers.fetch_sub(1, SeqCst);
        word::release(&self.word, &self.parker);
    }
    fn write(&self) {
        self.exclusive();
        self.data.with_mut(|data| {
            // SAFETY: exclusive hold (loom checks that no other access overlaps).
            unsafe { *data += 1 }
        });
        self.release_exclusive();
    }
    fn read(&self) -> usize {
        self.shared();
        // SAFETY: shared hold: no writer (loom checks).
        let value = self.data.with(|data| unsafe { *data });
        self.release_shared();
        value
    }
    fn assert_idle(&self) {
        assert_eq!(self.word.load(SeqCst), 0, "stale bits left in the word");
    }
}

/// A model checker exploring every interleaving with at most `preemptions` forced thread switches
/// (bounds chosen so that the whole file runs in about a minute on two cores).
fn builder(preemptions: usize) -> loom::model::Builder {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(preemptions);
    builder
}

/// Two readers hold the lock at the same time: each waits inside its critical section until the other
/// is inside too (if shared holds excluded each other, loom would report a deadlock).
#[test]
fn shared_holders_coexist() {
    builder(5).check(|| {
        let model = Arc::new(Model::default());
        let inside = Arc::new((Mutex::new(0usize), Condvar::new()));
        let reader = |model: Arc<Model>, inside: Arc<(Mutex<usize>, Condvar)>| {
            move || {
                model.shared();
                let (count, both) = &*inside;
                let mut count = count.lock().unwrap();
                *count += 1;
                both.notify_all();
                while *count < 2 {
                    count = both.wait(count).unwrap();
                }
                drop(count);
                model.release_shared();
            }
        };
        let other = thread::spawn(reader(Arc::clone(&model), Arc::clone(&inside)));
        reader(Arc::clone(&model), inside)();
        other.join().unwrap();
        model.assert_idle();
    });
}

/// Writers exclude each other and readers; every waiter is woken (loom reports a deadlock otherwise).
#[test]
fn exclusive_excludes_everyone() {
    builder(3).check(|| {
        let model = Arc::new(Model::default());
        let writer = {
            let model = Arc::clone(&model);
            thread::spawn(move || model.write())
        };
        let reader = {
            let model = Arc::clone(&model);
            thread::spawn(move || model.read())
        };
        model.write();
        writer.join().unwrap();
        let seen = reader.join().unwrap();
        assert!(seen <= 2);
        assert_eq!(model.read(), 2);
        model.assert_idle();
    });
}

/// Two writers and a waiting reader, the lock first held exclusive: no lost wake-up of either kind.
#[test]
fn waiters_of_both_kinds_are_woken() {
    builder(4).check(|| {
        let model = Arc::new(Model::default());
        model.exclusive();
        let writer = {
            let model = Arc::clone(&model);
            thread::spawn(move || model.write())
        };
        let reader = {
            let model = Arc::clone(&model);
            thread::spawn(move || model.read())
        };
        model.release_exclusive();
        writer.join().unwrap();
        reader.join().unwrap();
        model.assert_idle();
    });
}

/// Writer preference: the lock is held shared; once a writer is queued, a new reader is not granted
/// before that writer has had its turn.
#[test]
fn queued_writer_goes_before_later_reader() {
    builder(3).check(|| {
        let model = Arc::new(Model::default());
        let writer_done = Arc::new(AtomicBool::new(false));
        model.shared();
        let writer = {
            let (model, writer_done) = (Arc::clone(&model), Arc::clone(&writer_done));
            thread::spawn(move || {
                model.exclusive();
                writer_done.store(true, SeqCst);
                model.release_exclusive();
            })
        };
        let reader = {
            let (model, writer_done) = (Arc::clone(&model), Arc::clone(&writer_done));
            thread::spawn(move || {
                // Arrive only once the writer is queued (or already through).
                while word::exclusive_waiters(model.word.load(SeqCst)) == 0
                    && !writer_done.load(SeqCst)
                {
                    thread::yield_now();
                }
                model.shared();
                assert!(
                    writer_done.load(SeqCst),
                    "a later reader got in ahead of a queued writer"
                );
                model.release_shared();
            })
        };
        model.release_shared();
        writer.join().unwrap();
        reader.join().unwrap();
        model.assert_idle();
    });
}
