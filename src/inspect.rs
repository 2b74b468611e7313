//! Reading an instance's tallies: how the host tests and the demo read a volume's table, and what a
//! reporting path inside the driver would use.
//!
//! Takes the instance's table lock **shared** for the duration of the visitor, so the visitor must
//! be short and must not call anything that can re-enter the file system. `IRQL <= APC_LEVEL`.

use windows_sys::Wdk::Storage::FileSystem::Minifilters::PFLT_INSTANCE;

use crate::pool::PagedAllocator;
use crate::table::Table;

/// One instance's state, as seen by a visitor.
pub struct InstanceView<'a> {
    volume_name: &'a [u16],
    table: &'a Table<PagedAllocator>,
}

impl InstanceView<'_> {
    /// The volume's name (e.g. `\Device\HarddiskVolume3`), UTF-16.
    #[must_use]
    pub fn volume_name(&self) -> &[u16] {
        self.volume_name
    }

    /// The instance's tally table.
    #[must_use]
    pub fn table(&self) -> &Table<PagedAllocator> {
        self.table
    }
}

/// Calls `visit` with the state of `instance` under its shared lock; `None` if the instance has no
/// iotally context (not attached, or being torn down).
///
/// # Safety
/// `instance` is passed to `FltGetInstanceContext` as it is, and Filter Manager does not validate
/// it: it must be an instance of this driver's filter (from `FLT_RELATED_OBJECTS`, an enumeration of
/// the filter's instances, or a host test's `fltsim::Sim::instance`) that stays valid for the call,
/// for example because the caller holds a reference on it or runs inside one of its callbacks.
/// Call at `IRQL <= APC_LEVEL` (the table is paged and behind a push lock).
///
/// ```no_run
/// # use fltsim as _;
/// # let instance = 0;
/// // SAFETY: `instance` is an instance of iotally's filter, valid for the call.
/// let files = unsafe { iotally::inspect::with_instance(instance, |view| view.table().len()) };
/// ```
pub unsafe fn with_instance<R>(
    instance: PFLT_INSTANCE,
    visit: impl FnOnce(&InstanceView<'_>) -> R,
) -> Option<R> {
    let context = crate::filter::instance_context(instance)?;
    let table = context.tallies().read();
    let view = InstanceView {
        volume_name: context.volume_name(),
        table: &table,
    };
    Some(visit(&view))
}
