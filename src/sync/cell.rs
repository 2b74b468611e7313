//! [`DataCell`]: where a [`PushLock`](super::PushLock) keeps its `T`.
//!
//! An `UnsafeCell<T>` in every build that runs. Under `cfg(loom)` it is loom's `UnsafeCell`, which
//! records each access the guards make (a read through a shared or exclusive guard, a write through
//! an exclusive one) and fails the model when two accesses of different threads, one of them a
//! write, are not ordered by the lock: a guard that reached the data without a hold that excludes
//! the other would be reported, with the interleaving that shows it.

/// The protected data of a push lock.
pub(super) struct DataCell<T: ?Sized>(Inner<T>);

#[cfg(not(loom))]
type Inner<T> = core::cell::UnsafeCell<T>;
#[cfg(loom)]
type Inner<T> = loom::cell::UnsafeCell<T>;

impl<T> DataCell<T> {
    /// A cell holding `value`.
    pub(super) fn new(value: T) -> Self {
        Self(Inner::new(value))
    }
}

impl<T: ?Sized> DataCell<T> {
    /// A pointer for reading the data, under a shared or exclusive hold. (Under loom: a read access,
    /// checked against every write of other threads.)
    #[inline]
    pub(super) fn read_ptr(&self) -> *const T {
        #[cfg(not(loom))]
        {
            self.0.get()
        }
        #[cfg(loom)]
        {
            self.0.with(|data| data)
        }
    }

    /// A pointer for writing the data, under the exclusive hold. (Under loom: a write access,
    /// checked against every access of other threads.)
    #[inline]
    pub(super) fn write_ptr(&self) -> *mut T {
        #[cfg(not(loom))]
        {
            self.0.get()
        }
        #[cfg(loom)]
        {
            self.0.with_mut(|data| data)
        }
    }

    /// The data, through exclusive access to the cell itself (no lock needed).
    #[inline]
    pub(super) fn get_mut(&mut self) -> &mut T {
        #[cfg(not(loom))]
        {
            self.0.get_mut()
        }
        #[cfg(loom)]
        {
            // SAFETY: `&mut self` proves that no other reference to the data exists.
            self.0.with_mut(|data| unsafe { &mut *data })
        }
    }
}
