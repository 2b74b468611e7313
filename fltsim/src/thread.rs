//! Simulated thread identities: `PsGetCurrentThreadId`.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use windows_sys::Win32::Foundation::HANDLE;

/// The id the next thread to ask for one gets.
static NEXT_ID: AtomicUsize = AtomicUsize::new(ID_STEP);

/// Steps between ids. "`PsGetCurrentThreadId` function (ntddk.h)" returns the id as a `HANDLE` (any
/// IRQL); Windows thread ids are handle-table values, multiples of 4, and so are these.
const ID_STEP: usize = 4;

thread_local! {
    /// This thread's id; 0 until it first asks.
    static ID: Cell<usize> = const { Cell::new(0) };
}

/// `PsGetCurrentThreadId`: the calling thread's id, non-zero, a multiple of 4 and distinct for every
/// thread of the process. Any IRQL.
#[unsafe(no_mangle)]
pub extern "system" fn PsGetCurrentThreadId() -> HANDLE {
    let id = ID.with(|id| {
        if id.get() == 0 {
            id.set(NEXT_ID.fetch_add(ID_STEP, Ordering::Relaxed));
        }
        id.get()
    });
    std::ptr::without_provenance_mut(id)
}

const _: [unsafe extern "system" fn() -> HANDLE; 2] = [
    PsGetCurrentThreadId,
    windows_sys::Wdk::System::SystemServices::PsGetCurrentThreadId,
];

#[cfg(test)]
mod tests {
    use super::PsGetCurrentThreadId;

    #[test]
    fn ids_are_stable_per_thread_distinct_and_multiples_of_four() {
        let here = PsGetCurrentThreadId().addr();
        assert_eq!(PsGetCurrentThreadId().addr(), here);
        assert!(here != 0 && here.is_multiple_of(4));
        let there = std::thread::spawn(|| PsGetCurrentThreadId().addr())
            .join()
            .unwrap();
        assert!(there != here && there.is_multiple_of(4));
    }
}
