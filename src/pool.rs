//! Pool allocators: [`PagedAllocator`] and [`NonPagedAllocator`] over `ExAllocatePool2` / `ExFreePoolWithTag`,
//! each with a readable [`Tag`], implementing [`allocator_api2::alloc::Allocator`] so that
//! `hashbrown` tables and `allocator_api2` boxes and vectors can live in the pool of their choice.
//!
//! Rules kept here (`docs/kernel-rules.md`, "Pool"):
//! - **Every allocation is fallible.** A null return from `ExAllocatePool2` (Driver Verifier's
//!   low-resources simulation makes it happen on purpose), a layout this allocator cannot serve
//!   (alignment above [`MAX_ALIGN`]) or a size the pool cannot take all give `Err(AllocError)`; the
//!   allocators never panic. Use only the `try_*` constructors of the collections (`Vec::try_reserve`,
//!   `HashMap::try_reserve`, `Box::try_new_in`); their infallible forms would call the global
//!   out-of-memory handler, which aborts (a bugcheck).
//! - **Paged pool only at `IRQL <= APC_LEVEL`**: [`PagedAllocator`] asserts it on allocation and on free
//!   in debug builds ([`crate::irql::assert_at_most`]). [`NonPagedAllocator`] asserts `<= DISPATCH_LEVEL`.
//! - **Zero-size allocations** do not call the pool: they return a dangling, well-aligned pointer,
//!   and freeing them does nothing.
//! - `ExAllocatePool2` returns zeroed memory, so `allocate_zeroed` costs nothing extra.
//! - Every tag the driver uses is listed, with its purpose, in [`tags`].

use core::alloc::Layout;
use core::ffi::c_void;
use core::fmt;
use core::ptr::{self, NonNull};

use allocator_api2::alloc::{AllocError, Allocator};
use windows_sys::Wdk::System::SystemServices::{ExAllocatePool2, ExFreePoolWithTag};

use crate::ffi::{POOL_FLAG_NON_PAGED, POOL_FLAG_PAGED};
use crate::irql::{Irql, assert_at_most};

/// The largest alignment the pool guarantees: `MEMORY_ALLOCATION_ALIGNMENT`, 16 bytes on x64.
///
/// Layouts asking for more are refused with `Err(AllocError)` rather than served misaligned.
///
/// ```
/// assert_eq!(iotally::pool::MAX_ALIGN, 16);
/// ```
pub const MAX_ALIGN: usize = 16;

/// A pool tag: four readable ASCII characters that `!poolused`, `PoolMon` and Driver Verifier show for
/// each allocation.
///
/// The tag is stored so that its bytes in memory read in the order written: `Tag::new(*b"ItTb")` is
/// the `u32` `0x6254_7449` (`u32::from_le_bytes`), which the pool tools print as `ItTb`. (C drivers
/// write the same tag as the character constant `'bTtI'`, reversed, because MSVC packs
/// multi-character constants big-end first.)
///
/// ```
/// use iotally::pool::Tag;
/// const TABLE: Tag = Tag::new(*b"ItTb");
/// assert_eq!(TABLE.raw(), 0x6254_7449);
/// assert_eq!(TABLE.raw().to_le_bytes(), *b"ItTb");
/// assert_eq!(TABLE.to_string(), "ItTb");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Tag(u32);

impl Tag {
    /// The tag spelled by `chars`, in reading order.
    ///
    /// # Panics
    /// If a byte is not printable ASCII (`' '..='~'`). Define tags as `const` items, so that this is
    /// a compile-time error, never a run-time panic:
    ///
    /// ```compile_fail
    /// const BAD: iotally::pool::Tag = iotally::pool::Tag::new(*b"It\0b");
    /// ```
    ///
    /// ```
    /// const STREAM: iotally::pool::Tag = iotally::pool::Tag::new(*b"ItSc");
    /// assert_eq!(STREAM.bytes(), *b"ItSc");
    /// ```
    #[must_use]
    pub const fn new(chars: [u8; 4]) -> Self {
        let mut i = 0;
        while i < chars.len() {
            assert!(
                chars[i].is_ascii_graphic() || chars[i] == b' ',
                "a pool tag must be four printable ASCII characters"
            );
            i += 1;
        }
        Self(u32::from_le_bytes(chars))
    }

    /// The `ULONG` passed to `ExAllocatePool2` and `ExFreePoolWithTag`.
    ///
    /// ```
    /// assert_eq!(iotally::pool::tags::TABLE.raw(), u32::from_le_bytes(*b"ItTb"));
    /// ```
    #[must_use]
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// The four characters, in reading order.
    ///
    /// ```
    /// assert_eq!(iotally::pool::tags::VOLUME_NAME.bytes(), *b"ItVn");
    /// ```
    #[must_use]
    pub const fn bytes(self) -> [u8; 4] {
        self.0.to_le_bytes()
    }
}

impl fmt::Display for Tag {
    /// The four characters, as the pool tools print them.
    ///
    /// ```
    /// assert_eq!(iotally::pool::tags::STREAM_CONTEXT.to_string(), "ItSc");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.bytes() {
            fmt::Write::write_char(f, char::from(byte))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Tag {
    /// `Tag("ItTb")`.
    ///
    /// ```
    /// assert_eq!(format!("{:?}", iotally::pool::tags::TABLE), "Tag(\"ItTb\")");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag(\"{self}\")")
    }
}

/// Every pool tag the driver uses, one per kind of allocation, with what it is for.
///
/// All start with `It` (iotally) so that `!poolused 2 It*` shows the driver's whole footprint.
/// [`ALL`](tags::ALL) lists them with their purpose (tests check that they are distinct).
/// Allocations made through Rust's global allocator (only the cross and WDK builds' runtime, never
/// the driver's own code paths) carry the runtime's tag instead (wdk-alloc: `rust`).
pub mod tags {
    use super::Tag;

    /// `ItTb`: a per-instance tally table's storage (entry and index blocks, in paged pool).
    ///
    /// ```
    /// assert_eq!(iotally::pool::tags::TABLE.to_string(), "ItTb");
    /// ```
    pub const TABLE: Tag = Tag::new(*b"ItTb");

    /// `ItIc`: instance contexts (allocated by Filter Manager with this tag, paged pool).
    ///
    /// ```
    /// assert_eq!(iotally::pool::tags::INSTANCE_CONTEXT.to_string(), "ItIc");
    /// ```
    pub const INSTANCE_CONTEXT: Tag = Tag::new(*b"ItIc");

    /// `ItSc`: stream contexts carrying a file's table key (allocated by Filter Manager, paged pool).
    ///
    /// ```
    /// assert_eq!(iotally::pool::tags::STREAM_CONTEXT.to_string(), "ItSc");
    /// ```
    pub const STREAM_CONTEXT: Tag = Tag::new(*b"ItSc");

    /// `ItVn`: a volume's name, copied into the instance context when the instance is set up.
    ///
    /// ```
    /// assert_eq!(iotally::pool::tags::VOLUME_NAME.to_string(), "ItVn");
    /// ```
    pub const VOLUME_NAME: Tag = Tag::new(*b"ItVn");

    /// `ItFn`: a file's name as first opened, kept in its table entry.
    ///
    /// ```
    /// assert_eq!(iotally::pool::tags::FILE_NAME.to_string(), "ItFn");
    /// ```
    pub const FILE_NAME: Tag = Tag::new(*b"ItFn");

    /// `ItLk`: a push lock boxed on its own ([`PushLock::try_pin_in`](crate::sync::PushLock::try_pin_in))
    /// rather than embedded in a context.
    ///
    /// ```
    /// assert_eq!(iotally::pool::tags::PUSH_LOCK.to_string(), "ItLk");
    /// ```
    pub const PUSH_LOCK: Tag = Tag::new(*b"ItLk");

    /// `ItRq`: a communication-port request, copied in from user mode (nonpaged:
    /// `MmCopyMemory`'s target must be).
    ///
    /// ```
    /// assert_eq!(iotally::pool::tags::PORT_REQUEST.to_string(), "ItRq");
    /// ```
    pub const PORT_REQUEST: Tag = Tag::new(*b"ItRq");

    /// `ItRp`: a communication-port answer, built before it is copied out to user mode, and the
    /// scratch lists the port builds it with (instances, ranked files).
    ///
    /// ```
    /// assert_eq!(iotally::pool::tags::PORT_REPLY.to_string(), "ItRp");
    /// ```
    pub const PORT_REPLY: Tag = Tag::new(*b"ItRp");

    /// Every tag above with what it is for, for reports and tests.
    ///
    /// ```
    /// let tags: Vec<_> = iotally::pool::tags::ALL.iter().map(|(tag, _)| *tag).collect();
    /// assert!(tags.contains(&iotally::pool::tags::TABLE));
    /// ```
    pub const ALL: [(Tag, &str); 8] = [
        (TABLE, "per-instance tally table storage"),
        (INSTANCE_CONTEXT, "instance contexts"),
        (STREAM_CONTEXT, "stream contexts"),
        (VOLUME_NAME, "volume names"),
        (FILE_NAME, "file names in table entries"),
        (PUSH_LOCK, "stand-alone push locks"),
        (PORT_REQUEST, "communication-port requests"),
        (PORT_REPLY, "communication-port answers"),
    ];
}

/// Paged pool with one [`Tag`]: for data touched only at `IRQL <= APC_LEVEL` (tables, names).
///
/// Allocation and free assert `IRQL <= APC_LEVEL` in debug builds. All allocation is fallible.
///
/// ```
/// # use fltsim as _;
/// # let _sim = fltsim::Sim::new();
/// use allocator_api2::vec::Vec;
/// use iotally::pool::{tags, PagedAllocator};
///
/// let mut names: Vec<u16, PagedAllocator> = Vec::new_in(PagedAllocator::new(tags::VOLUME_NAME));
/// names.try_reserve(16).expect("paged pool");
/// names.extend_from_slice(&[0x43, 0x3a]);
/// assert_eq!(names.len(), 2);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PagedAllocator {
    tag: Tag,
}

impl PagedAllocator {
    /// An allocator of paged pool tagged `tag`.
    ///
    /// ```
    /// use iotally::pool::{tags, PagedAllocator};
    /// const TABLE_POOL: PagedAllocator = PagedAllocator::new(tags::TABLE);
    /// assert_eq!(TABLE_POOL.tag(), tags::TABLE);
    /// ```
    #[must_use]
    pub const fn new(tag: Tag) -> Self {
        Self { tag }
    }

    /// The tag of every allocation made by this allocator.
    ///
    /// ```
    /// use iotally::pool::{tags, PagedAllocator};
    /// assert_eq!(PagedAllocator::new(tags::VOLUME_NAME).tag(), tags::VOLUME_NAME);
    /// ```
    #[must_use]
    pub const fn tag(self) -> Tag {
        self.tag
    }
}

/// Non-paged pool with one [`Tag`]: for data touched at `DISPATCH_LEVEL` (e.g. from post-operation
/// callbacks that can run there).
///
/// Allocation and free assert `IRQL <= DISPATCH_LEVEL` in debug builds. All allocation is fallible.
///
/// ```
/// # use fltsim as _;
/// # let _sim = fltsim::Sim::new();
/// use allocator_api2::boxed::Box;
/// use iotally::pool::{tags, NonPagedAllocator};
///
/// let counter = Box::try_new_in(0_u64, NonPagedAllocator::new(tags::TABLE)).expect("non-paged pool");
/// assert_eq!(*counter, 0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NonPagedAllocator {
    tag: Tag,
}

impl NonPagedAllocator {
    /// An allocator of non-paged pool tagged `tag`.
    ///
    /// ```
    /// use iotally::pool::{tags, NonPagedAllocator};
    /// assert_eq!(NonPagedAllocator::new(tags::TABLE).tag(), tags::TABLE);
    /// ```
    #[must_use]
    pub const fn new(tag: Tag) -> Self {
        Self { tag }
    }

    /// The tag of every allocation made by this allocator.
    ///
    /// ```
    /// use iotally::pool::{tags, NonPagedAllocator};
    /// assert_eq!(NonPagedAllocator::new(tags::FILE_NAME).tag(), tags::FILE_NAME);
    /// ```
    #[must_use]
    pub const fn tag(self) -> Tag {
        self.tag
    }
}

/// Which pool, with the routine names the IRQL assertions report.
struct PoolKind {
    flags: u64,
    ceiling: Irql,
    allocate: &'static str,
    free: &'static str,
}

/// Paged pool: `IRQL <= APC_LEVEL` (`ExAllocatePool2` with `POOL_FLAG_PAGED`).
const PAGED: PoolKind = PoolKind {
    flags: POOL_FLAG_PAGED,
    ceiling: Irql::APC,
    allocate: "PagedAllocator::allocate (ExAllocatePool2, paged)",
    free: "PagedAllocator::deallocate (ExFreePoolWithTag, paged)",
};

/// Non-paged pool: `IRQL <= DISPATCH_LEVEL`.
const NON_PAGED: PoolKind = PoolKind {
    flags: POOL_FLAG_NON_PAGED,
    ceiling: Irql::DISPATCH,
    allocate: "NonPagedAllocator::allocate (ExAllocatePool2, non-paged)",
    free: "NonPagedAllocator::deallocate (ExFreePoolWithTag, non-paged)",
};

/// `ExAllocatePool2` for `layout`, or `Err(AllocError)`; never panics (outside debug IRQL checks).
#[inline]
fn allocate(kind: &PoolKind, tag: Tag, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
    assert_at_most(kind.ceiling, kind.allocate);
    if layout.align() > MAX_ALIGN {
        return Err(AllocError);
    }
    if layout.size() == 0 {
        // A dangling pointer aligned for `layout`: `align` is a non-zero power of two.
        let dangling =
            NonNull::new(ptr::without_provenance_mut::<u8>(layout.align())).ok_or(AllocError)?;
        return Ok(NonNull::slice_from_raw_parts(dangling, 0));
    }
    // `Layout` guarantees `size <= isize::MAX`, so the size always fits ExAllocatePool2's SIZE_T;
    // the pool rounds it up internally and returns null when it cannot serve it.
    // SAFETY: the flags name exactly one pool type, the size is non-zero, and the IRQL rule of that
    // pool is asserted above (debug builds) and is the caller's contract (release builds).
    let block = unsafe { ExAllocatePool2(kind.flags, layout.size(), tag.raw()) };
    let block = NonNull::new(block.cast::<u8>()).ok_or(AllocError)?;
    Ok(NonNull::slice_from_raw_parts(block, layout.size()))
}

/// `ExFreePoolWithTag` for a block returned by [`allocate`] with the same `kind`, `tag` and `layout`.
///
/// # Safety
/// `block` was returned by `allocate(kind, tag, layout)` and is not used afterwards.
#[inline]
unsafe fn deallocate(kind: &PoolKind, tag: Tag, block: NonNull<u8>, layout: Layout) {
    assert_at_most(kind.ceiling, kind.free);
    if layout.size() != 0 {
        // SAFETY: by the caller's contract, `block` came from ExAllocatePool2 with this tag (zero-size
        // layouts never reach the pool) and is freed once.
        unsafe { ExFreePoolWithTag(block.as_ptr().cast::<c_void>(), tag.raw()) };
    }
}

// SAFETY: blocks come from ExAllocatePool2, stay valid until freed with ExFreePoolWithTag (only in
// `deallocate`), and any copy of the allocator can free them (the pool is global; copies have the same
// tag). Zero-size blocks are dangling, aligned and never passed to the pool. The default `grow` and
// `shrink` allocate, copy and free through these methods.
unsafe impl Allocator for PagedAllocator {
    #[inline]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        allocate(&PAGED, self.tag, layout)
    }

    /// `ExAllocatePool2` zeroes what it returns.
    #[inline]
    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        allocate(&PAGED, self.tag, layout)
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the trait's contract: `ptr` was allocated by this allocator (or a copy of it) with
        // `layout`.
        unsafe { deallocate(&PAGED, self.tag, ptr, layout) }
    }
}

// SAFETY: as for `PagedAllocator`, with non-paged pool.
unsafe impl Allocator for NonPagedAllocator {
    #[inline]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        allocate(&NON_PAGED, self.tag, layout)
    }

    /// `ExAllocatePool2` zeroes what it returns.
    #[inline]
    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        allocate(&NON_PAGED, self.tag, layout)
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the trait's contract: `ptr` was allocated by this allocator (or a copy of it) with
        // `layout`.
        unsafe { deallocate(&NON_PAGED, self.tag, ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_ALIGN, Tag, tags};

    #[test]
    fn tags_are_distinct_readable_and_prefixed() {
        for (i, (tag, purpose)) in tags::ALL.iter().enumerate() {
            assert!(!purpose.is_empty());
            assert_eq!(&tag.bytes()[..2], b"It", "{tag} lacks the driver prefix");
            assert!(tag.bytes().iter().all(u8::is_ascii_alphanumeric));
            for (other, _) in &tags::ALL[i + 1..] {
                assert_ne!(tag, other, "tag {tag} listed twice");
            }
        }
    }

    #[test]
    fn tag_byte_order_matches_pool_tools() {
        // '!poolused' prints the tag's bytes in memory order: little-endian u32.
        assert_eq!(Tag::new(*b"ItTb").raw(), 0x6254_7449);
        assert_eq!(std::format!("{}", Tag::new(*b"Ab c")), "Ab c");
    }

    #[test]
    #[should_panic(expected = "a pool tag must be four printable ASCII characters")]
    fn unreadable_tag_is_refused() {
        let _ = Tag::new(*b"It\x07b");
    }

    #[test]
    fn max_align_is_x64_memory_allocation_alignment() {
        assert_eq!(MAX_ALIGN, 2 * core::mem::align_of::<u64>());
    }
}
