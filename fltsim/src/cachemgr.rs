//! What happens to a file object after its handle closes, as the cache manager and the I/O manager
//! make it happen on Windows: the close comes later, on another thread, sometimes at `APC_LEVEL`;
//! dirty cached data is written by paging writes after the cleanup; the stream (and its contexts)
//! lives until the last file object is closed, so a reopen before that close finds the old stream
//! context; and file systems create stream file objects that filters see only a close for.
//!
//! From Microsoft's pages: "`IRP_MJ_CLOSE` (IFS)" and "`IRP_MJ_CLEANUP` (IFS)" (cleanup when the last
//! handle goes, close when the last reference goes, and the cache manager and memory manager keep
//! references to cached file objects, so data can still be read or written after cleanup);
//! "`IoCreateStreamFileObject` function (ntifs.h)" (a stream file object is created without an
//! `IRP_MJ_CREATE` and its handle-less life ends with an `IRP_MJ_CLOSE` alone); the lazy writer issues
//! its paging writes with the top-level IRP set to `FSRTL_CACHE_TOP_LEVEL_IRP` ("`IoGetTopLevelIrp`
//! function (ntifs.h)").
//!
//! [`CloseTiming::Realistic`] (the default): a file object the file system cached (its first cached
//! read or write initialized caching) is referenced by the cache manager, so closing its handle sends
//! only the cleanup; its dirty data and its close wait for the lazy writer. The lazy writer runs on its
//! own thread when the test asks ([`Sim::run_lazy_writer`]), when a volume is dismounted, and when
//! more than [`MAX_DEFERRED_CLOSES`] closes are waiting; it sends the paging writes (top-level IRP
//! set, pre-op at `APC_LEVEL`) and then the closes, one in four of them at `APC_LEVEL` (chosen by a
//! generator seeded per session, so every run is the same). [`CloseTiming::Immediate`] sends every
//! close right after its cleanup, on the closing thread, and no paging writes.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Mutex;

use windows_sys::Wdk::Foundation::FILE_OBJECT;
use windows_sys::Wdk::System::SystemServices::FO_STREAM_FILE;

use crate::Sim;
use crate::file::{FileObjectBox, IoResult, default_stream, send_close};
use crate::irql::APC_LEVEL;
use crate::verifier::violation;
use crate::volume::Volume;
use crate::world::{self, FileObjectState, lock_ignoring_poison};

/// When closes reach the filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseTiming {
    /// Every close right after its cleanup, on the closing thread (kinder than Windows).
    Immediate,
    /// Closes of cached file objects later, from the lazy writer, some at `APC_LEVEL`; paging writes
    /// of their dirty data after the cleanup. `seed` chooses which closes run at `APC_LEVEL`.
    Realistic {
        /// Seed of the generator choosing the closes' IRQLs.
        seed: u64,
    },
}

impl Default for CloseTiming {
    fn default() -> Self {
        Self::Realistic {
            seed: 0x5EED_C105_E000_0001,
        }
    }
}

/// Closes waiting for the lazy writer beyond which it runs by itself.
pub const MAX_DEFERRED_CLOSES: usize = 256;

/// A file object whose close the cache manager still holds back.
struct Deferred {
    object: Box<FileObjectBox>,
    volume: isize,
}

/// The dirty range of a cached file object, not yet written back.
#[derive(Clone, Copy)]
struct Dirty {
    volume: isize,
    low: u64,
    high: u64,
}

#[derive(Default)]
struct State {
    timing: CloseTiming,
    rng: u64,
    deferred: Vec<Deferred>,
    dirty: HashMap<usize, Dirty>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    f(lock_ignoring_poison(&STATE).get_or_insert_with(State::default))
}

/// Forgets the closes and dirty data of the previous session: called when a new [`Sim`] starts.
/// Its file objects are freed without a close (that session's driver is gone).
pub(crate) fn reset() {
    *lock_ignoring_poison(&STATE) = Some(State::default());
}

/// Records a successful cached write of `length` bytes at `offset` through `file_object`.
pub(crate) fn dirtied(file_object: usize, volume: isize, offset: u64, length: u64) {
    if length == 0 {
        return;
    }
    with_state(|s| {
        if s.timing == CloseTiming::Immediate {
            return;
        }
        let end = offset.saturating_add(length);
        let range = s.dirty.entry(file_object).or_insert(Dirty {
            volume,
            low: offset,
            high: end,
        });
        range.low = range.low.min(offset);
        range.high = range.high.max(end);
    });
}

/// The cleanup of `object` is done: returns it if its close is to be sent now, or keeps it (the
/// cache manager's reference) until the lazy writer closes it.
pub(crate) fn defer_close(
    mut object: Box<FileObjectBox>,
    volume: isize,
) -> Option<Box<FileObjectBox>> {
    let address = object.file_object() as usize;
    let cached = world::with(|w| w.file_objects.get(&address).is_some_and(|f| f.cached));
    let immediate = with_state(|s| {
        let immediate = s.timing == CloseTiming::Immediate || !cached;
        if immediate {
            s.dirty.remove(&address);
        }
        immediate
    });
    if immediate {
        return Some(object);
    }
    let full = with_state(|s| {
        s.deferred.push(Deferred { object, volume });
        s.deferred.len() > MAX_DEFERRED_CLOSES
    });
    if full {
        lazy_writer(None);
    }
    None
}

/// One pass of the lazy writer over `volume` (every volume with `None`), on a thread of its own:
/// the paging writes of the dirty data of cached file objects, then the closes the cache manager
/// held back. Returns when the pass is done.
pub(crate) fn lazy_writer(volume: Option<isize>) {
    let on = |v: isize| volume.is_none_or(|only| only == v);
    let (dirty, deferred, closing_at) = with_state(|s| {
        let mut dirty: Vec<(usize, Dirty)> = s
            .dirty
            .iter()
            .filter(|(_, d)| on(d.volume))
            .map(|(&fo, &d)| (fo, d))
            .collect();
        dirty.sort_by_key(|(fo, _)| *fo);
        for (fo, _) in &dirty {
            s.dirty.remove(fo);
        }
        let (taken, kept): (Vec<Deferred>, Vec<Deferred>) = std::mem::take(&mut s.deferred)
            .into_iter()
            .partition(|d| on(d.volume));
        s.deferred = kept;
        let seed = match s.timing {
            CloseTiming::Realistic { seed } => seed,
            CloseTiming::Immediate => 0,
        };
        let irqls: Vec<u8> = taken
            .iter()
            .map(|_| {
                if s.rng == 0 {
                    s.rng = seed | 1;
                }
                s.rng ^= s.rng << 13;
                s.rng ^= s.rng >> 7;
                s.rng ^= s.rng << 17;
                if s.rng.is_multiple_of(4) {
                    APC_LEVEL
                } else {
                    0
                }
            })
            .collect();
        (dirty, taken, irqls)
    });
    if dirty.is_empty() && deferred.is_empty() {
        return;
    }
    let pass = std::thread::Builder::new()
        .name("fltsim lazy writer".into())
        .spawn(move || {
            crate::kernel::with_top_level(crate::kernel::FSRTL_CACHE_TOP_LEVEL_IRP, || {
                for (file_object, range) in dirty {
                    let length = u32::try_from(range.high - range.low).unwrap_or(u32::MAX);
                    crate::transfer::paging(
                        range.volume,
                        file_object as *mut FILE_OBJECT,
                        true,
                        range.low,
                        length,
                    );
                }
            });
            for (mut closing, irql) in deferred.into_iter().zip(closing_at) {
                let _raised = (irql > 0).then(|| crate::irql::raise(irql));
                send_close(closing.volume, closing.object.file_object());
            }
        });
    match pass.map(std::thread::JoinHandle::join) {
        Ok(Ok(())) => {}
        _ => violation(
            "fltsim: the lazy writer's thread failed (a driver callback panicked?)".into(),
        ),
    }
}

impl Sim {
    /// Chooses when closes reach the filter for the rest of the session (default
    /// [`CloseTiming::Realistic`]). Closes already held back stay so until the lazy writer runs.
    pub fn set_close_timing(&self, timing: CloseTiming) {
        with_state(|s| {
            s.timing = timing;
            s.rng = 0;
        });
    }

    /// Runs the lazy writer now, on its own thread, and waits for it: paging writes of the dirty
    /// data of cached file objects (also of closed handles, after their cleanup), then the closes
    /// the cache manager held back (some at `APC_LEVEL`).
    pub fn run_lazy_writer(&self) {
        let _exit = crate::session::checked();
        lazy_writer(None);
    }

    /// Number of file objects whose handle was closed and whose `IRP_MJ_CLOSE` has not been sent.
    #[must_use]
    pub fn closes_pending(&self) -> usize {
        with_state(|s| s.deferred.len())
    }

    /// A stream file object the file system creates for the file at `path` on `volume`
    /// ("`IoCreateStreamFileObject` function (ntifs.h)"), as NTFS does for metadata and caching:
    /// filters see no create and no cleanup for it, only its paging I/O and, when it is dropped or
    /// closed, an `IRP_MJ_CLOSE`. It shares the file's stream (and stream contexts). `None` if
    /// there is no such file.
    #[must_use]
    pub fn stream_file_object(&self, volume: Volume, path: &str) -> Option<StreamFileObject<'_>> {
        let _exit = crate::session::checked();
        let mut object = FileObjectBox::new(path, FO_STREAM_FILE);
        let address = object.file_object() as usize;
        let created = world::with(|w| {
            let v = w.volume(volume.0).filter(|v| !v.removed)?;
            let (node, link) = v.files.lookup_link(path)?;
            let stream = default_stream(node);
            *v.open_streams.entry(stream).or_default() += 1;
            w.file_objects.insert(
                address,
                FileObjectState {
                    volume: volume.0,
                    node: Some(node),
                    link: Some(link),
                    stream: Some(stream),
                    path: path.to_owned(),
                    open: true,
                    volume_open: false,
                    cached: false,
                },
            );
            Some(())
        });
        created.map(|()| StreamFileObject {
            object: Some(object),
            volume: volume.0,
            _sim: PhantomData,
        })
    }
}

/// A stream file object ([`Sim::stream_file_object`]): paging I/O, then only a close.
pub struct StreamFileObject<'sim> {
    object: Option<Box<FileObjectBox>>,
    volume: isize,
    _sim: PhantomData<&'sim Sim>,
}

// SAFETY: the file object is owned by this value; the driver sees it only during its operations.
unsafe impl Send for StreamFileObject<'_> {}

impl StreamFileObject<'_> {
    /// The `FILE_OBJECT` the driver sees (`FO_STREAM_FILE` set).
    #[must_use]
    pub fn file_object(&mut self) -> *const FILE_OBJECT {
        self.object
            .as_mut()
            .map_or(std::ptr::null(), |o| o.file_object().cast_const())
    }

    /// A paging read through the stream file object (pre-op at `APC_LEVEL`).
    pub fn read_paging(&mut self, length: u32, offset: u64) -> IoResult {
        self.paging(false, length, offset)
    }

    /// A paging write through the stream file object (it does not extend the file).
    pub fn write_paging(&mut self, length: u32, offset: u64) -> IoResult {
        self.paging(true, length, offset)
    }

    fn paging(&mut self, write: bool, length: u32, offset: u64) -> IoResult {
        let _exit = crate::session::checked();
        let volume = self.volume;
        let file_object = self
            .object
            .as_mut()
            .map_or(std::ptr::null_mut(), |o| o.file_object());
        crate::transfer::paging(volume, file_object, write, offset, length)
    }

    /// Sends the stream file object's only `IRP_MJ_CLOSE` (also sent when it is dropped).
    pub fn close(mut self) {
        self.close_now();
    }

    fn close_now(&mut self) {
        if let Some(mut object) = self.object.take() {
            let _exit = crate::session::checked();
            send_close(self.volume, object.file_object());
        }
    }
}

impl Drop for StreamFileObject<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.close_now();
        }
    }
}
