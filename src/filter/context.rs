//! Typed, reference-counted handles on Filter Manager contexts.
//!
//! Every `FltAllocateContext`, `FltGet*Context` and returned `OldContext` carries one reference that
//! must be balanced by exactly one `FltReleaseContext` (`docs/kernel-rules.md`, "Contexts"). [`ContextRef`]
//! owns one such reference and releases it when dropped, so no path can leak or double-release it.

use core::marker::PhantomData;
use core::ptr::NonNull;

use crate::flt::{
    FltGetInstanceContext, FltGetStreamContext, FltReferenceContext, FltReleaseContext,
};
use windows_sys::Wdk::Foundation::FILE_OBJECT;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_INSTANCE_CONTEXT, FLT_STREAM_CONTEXT, PFLT_CONTEXT, PFLT_INSTANCE,
};

/// A context type iotally registers, with the `FLT_*_CONTEXT` value it is registered under.
///
/// # Safety
/// Every context Filter Manager hands out for `TYPE` in this driver must hold an initialized `Self`.
pub(crate) unsafe trait Context: Sync {
    /// The `FLT_*_CONTEXT` type value.
    const TYPE: u16;
}

/// One counted reference on a context holding a `T`; released with `FltReleaseContext` on drop.
///
/// Contexts iotally uses are paged, so a `ContextRef` must be dropped at `IRQL <= APC_LEVEL`.
pub(crate) struct ContextRef<T: Context> {
    raw: NonNull<T>,
    _owns: PhantomData<T>,
}

// SAFETY: a context reference may be released on any thread; `T: Sync` makes sharing `&T` sound.
unsafe impl<T: Context> Send for ContextRef<T> {}
// SAFETY: a shared `ContextRef` only gives out `&T` (and `T: Sync`) or takes one more reference,
// which `FltReferenceContext` allows from any thread.
unsafe impl<T: Context> Sync for ContextRef<T> {}

impl<T: Context> ContextRef<T> {
    /// Takes ownership of one reference on `raw`.
    ///
    /// # Safety
    /// `raw` must be a context of type `T::TYPE` on which the caller owns one reference, and its memory
    /// must hold an initialized `T`.
    pub(crate) unsafe fn from_raw(raw: PFLT_CONTEXT) -> Option<Self> {
        NonNull::new(raw.cast::<T>()).map(|raw| Self {
            raw,
            _owns: PhantomData,
        })
    }

    /// The raw context, still owned by `self`.
    pub(crate) fn as_raw(&self) -> PFLT_CONTEXT {
        self.raw.as_ptr().cast()
    }
}

impl<T: Context> core::ops::Deref for ContextRef<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `from_raw`'s contract: the memory holds an initialized `T`, kept alive by the
        // reference `self` owns; contexts are only shared, never mutated through `&T`.
        unsafe { self.raw.as_ref() }
    }
}

impl<T: Context> Clone for ContextRef<T> {
    /// One more reference on the same context (`FltReferenceContext`, callable at
    /// `IRQL <= DISPATCH_LEVEL`), released when the clone is dropped.
    fn clone(&self) -> Self {
        // SAFETY: `self` holds a reference, so the context is live; the new reference is owned by
        // the returned `ContextRef`.
        unsafe { FltReferenceContext(self.as_raw()) };
        Self {
            raw: self.raw,
            _owns: PhantomData,
        }
    }
}

impl<T: Context> Drop for ContextRef<T> {
    fn drop(&mut self) {
        crate::irql::assert_at_most(crate::irql::Irql::APC, "FltReleaseContext (paged context)");
        // SAFETY: `self` owns exactly one reference on this context and gives it up here.
        unsafe { FltReleaseContext(self.as_raw()) };
    }
}

/// The instance context of `instance`, referenced; `None` if it has none (or it is being deleted).
pub(crate) fn instance_context<T: Context>(instance: PFLT_INSTANCE) -> Option<ContextRef<T>> {
    debug_assert_eq!(u32::from(T::TYPE), FLT_INSTANCE_CONTEXT);
    let mut raw: PFLT_CONTEXT = core::ptr::null_mut();
    // SAFETY: `instance` comes from the callback's FLT_RELATED_OBJECTS; `raw` is a valid out pointer.
    let status = unsafe { FltGetInstanceContext(instance, &raw mut raw) };
    if status < 0 {
        return None;
    }
    // SAFETY: a successful FltGetInstanceContext returns a referenced context; iotally only sets
    // instance contexts holding a `T` (the only type registered as FLT_INSTANCE_CONTEXT).
    unsafe { ContextRef::from_raw(raw) }
}

/// The stream context of `file_object`'s stream on `instance`, referenced; `None` if there is none.
pub(crate) fn stream_context<T: Context>(
    instance: PFLT_INSTANCE,
    file_object: *const FILE_OBJECT,
) -> Option<ContextRef<T>> {
    debug_assert_eq!(u32::from(T::TYPE), FLT_STREAM_CONTEXT);
    let mut raw: PFLT_CONTEXT = core::ptr::null_mut();
    // SAFETY: `instance` and `file_object` come from the callback's FLT_RELATED_OBJECTS.
    let status = unsafe { FltGetStreamContext(instance, file_object, &raw mut raw) };
    if status < 0 {
        return None;
    }
    // SAFETY: as for `instance_context`: the only stream context type iotally sets holds a `T`.
    unsafe { ContextRef::from_raw(raw) }
}
