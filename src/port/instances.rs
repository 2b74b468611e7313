//! The filter's instances, listed with `FltEnumerateInstances` ("`FltEnumerateInstances` function
//! (fltkernel.h)"): each returned instance carries a rundown reference, released here with
//! `FltObjectDereference` when the list drops, on every path.

use allocator_api2::vec::Vec;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{PFLT_FILTER, PFLT_INSTANCE};

use crate::flt::{FltEnumerateInstances, FltGetFileSystemType, FltObjectDereference};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_BUFFER_TOO_SMALL, STATUS_INSUFFICIENT_RESOURCES,
};
use windows_sys::Win32::Storage::InstallableFileSystems::{
    FLT_FILESYSTEM_TYPE, FLT_FSTYPE_UNKNOWN,
};

use crate::filter::InstanceContext;
use crate::pool::{PagedAllocator, tags};

/// Referenced instances; dereferenced on drop.
pub(super) struct Instances {
    list: Vec<PFLT_INSTANCE, PagedAllocator>,
}

/// Attempts at listing while instances come and go between the count and the listing.
const ATTEMPTS: usize = 8;

impl Instances {
    /// Every instance of `filter` now (`IRQL <= APC_LEVEL`).
    ///
    /// # Errors
    /// `FltEnumerateInstances`'s failure, or `STATUS_INSUFFICIENT_RESOURCES`.
    pub(super) fn of(filter: PFLT_FILTER) -> Result<Self, NTSTATUS> {
        let mut list = Vec::new_in(PagedAllocator::new(tags::PORT_REPLY));
        let mut room = 0_u32;
        for _ in 0..ATTEMPTS {
            list.clear();
            list.try_reserve_exact(room as usize)
                .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
            list.resize(room as usize, 0);
            let mut count = 0_u32;
            // SAFETY: `list` holds `room` slots; `count` is a valid output variable; the filter
            // handle is valid while port callbacks run.
            let status = unsafe {
                FltEnumerateInstances(0, filter, list.as_mut_ptr(), room, &raw mut count)
            };
            if status == STATUS_BUFFER_TOO_SMALL {
                // Nothing was referenced; make room for the instances counted and a few more.
                room = count.saturating_add(4);
                continue;
            }
            if status < 0 {
                list.clear();
                return Err(status);
            }
            list.truncate(count as usize);
            return Ok(Self { list });
        }
        list.clear();
        Err(STATUS_INSUFFICIENT_RESOURCES)
    }

    /// How many.
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// Each instance with its iotally context (instances without one, being set up or torn down,
    /// are skipped).
    pub(super) fn contexts(
        &self,
    ) -> impl Iterator<
        Item = (
            PFLT_INSTANCE,
            impl core::ops::Deref<Target = InstanceContext>,
        ),
    > + '_ {
        self.list
            .iter()
            .filter_map(|&instance| Some((instance, crate::filter::instance_context(instance)?)))
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        for &instance in &self.list {
            // SAFETY: FltEnumerateInstances referenced each listed instance once; released once.
            unsafe {
                FltObjectDereference(core::ptr::without_provenance_mut(instance.cast_unsigned()));
            }
        }
    }
}

/// The file system of `instance`'s volume (`FLT_FSTYPE_UNKNOWN` if it cannot be told).
pub(super) fn file_system(instance: PFLT_INSTANCE) -> FLT_FILESYSTEM_TYPE {
    let mut fs = FLT_FSTYPE_UNKNOWN;
    // SAFETY: a referenced instance and a valid output variable.
    let status = unsafe {
        FltGetFileSystemType(
            core::ptr::without_provenance(instance.cast_unsigned()),
            &raw mut fs,
        )
    };
    if status < 0 { FLT_FSTYPE_UNKNOWN } else { fs }
}
