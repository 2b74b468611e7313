//! File-system control requests (`IRP_MJ_FILE_SYSTEM_CONTROL`) sent through the filter, the
//! volume feature rule, and BypassIO.
//!
//! **The volume feature rule** ("`FsRtlGetSupportedFeatures` function (ntifs.h)"; "BypassIO for
//! filter drivers"; `docs/kernel-rules.md`, "Volume features"): a volume keeps an optional feature
//! (offloaded read `0x1`, offloaded write `0x2`, BypassIO `0x8`) only if every minifilter attached to
//! it declares the feature in its `SupportedFeatures` registry value; a filter that registers no
//! `IRP_MJ_READ` or `IRP_MJ_WRITE` callback counts as supporting BypassIO. [`crate::Sim::volume_features`]
//! applies it to the features the volume's file system and storage offer
//! ([`crate::VolumeSpec::features`]).
//!
//! **BypassIO** ("Supporting BypassIO operations"; "`FSCTL_MANAGE_BYPASS_IO` IOCTL (ntifs.h)"):
//! [`FileHandle::bypass_io`] sends `FSCTL_MANAGE_BYPASS_IO` (`METHOD_BUFFERED`, an `FS_BPIO_INPUT` in,
//! an `FS_BPIO_OUTPUT` out) through the filter. The simulated file system answers `FS_BPIO_OP_ENABLE`
//! and `FS_BPIO_OP_QUERY` with `STATUS_SUCCESS` and the result in `OpStatus`: refused for volume and
//! directory opens and on DAX volumes (`STATUS_NOT_SUPPORTED`), for a volume where an attached filter
//! has not opted in (`STATUS_BYPASSIO_FLT_NOT_SUPPORTED`, naming the filter), or where the storage
//! has no BypassIO (`STATUS_NO_BYPASSIO_DRIVER_SUPPORT`). An enabled handle's non-cached reads then
//! skip every filter ([`FileHandle::read_noncached`]) for as long as the volume keeps the feature.
//! `FS_BPIO_OP_DISABLE` turns it off again; the other operations are not modeled.

use std::ffi::c_void;
use std::mem::size_of;

use windows_sys::Wdk::Storage::FileSystem::Minifilters::{FLT_PARAMETERS, PFLT_VOLUME};
use windows_sys::Wdk::Storage::FileSystem::{
    SUPPORTED_FS_FEATURES_BYPASS_IO, SUPPORTED_FS_FEATURES_OFFLOAD_READ,
    SUPPORTED_FS_FEATURES_OFFLOAD_WRITE, SUPPORTED_FS_FEATURES_QUERY_OPEN,
};
use windows_sys::Wdk::System::SystemServices::{
    IRP_MJ_FILE_SYSTEM_CONTROL, IRP_MJ_READ, IRP_MJ_WRITE, IRP_MN_USER_FS_REQUEST,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_BUFFER_TOO_SMALL, STATUS_BYPASSIO_FLT_NOT_SUPPORTED,
    STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER, STATUS_NO_BYPASSIO_DRIVER_SUPPORT,
    STATUS_NOT_IMPLEMENTED, STATUS_NOT_SUPPORTED, STATUS_SUCCESS,
};
use windows_sys::Win32::System::Ioctl::{
    FS_BPIO_INPUT, FS_BPIO_OP_DISABLE, FS_BPIO_OP_ENABLE, FS_BPIO_OP_QUERY, FS_BPIO_OPERATIONS,
    FS_BPIO_OUTPUT, FS_BPIO_RESULTS, FSCTL_MANAGE_BYPASS_IO,
};

use crate::file::{FileHandle, IoResult};
use crate::io::{Operation, Outcome, perform};
use crate::world::{self, InstanceState, World};
use crate::{Sim, Volume};

/// Every optional feature a filter can declare.
const ALL_FEATURES: u32 = SUPPORTED_FS_FEATURES_OFFLOAD_READ
    | SUPPORTED_FS_FEATURES_OFFLOAD_WRITE
    | SUPPORTED_FS_FEATURES_QUERY_OPEN
    | SUPPORTED_FS_FEATURES_BYPASS_IO;

/// The features the filter attached to `volume` lets the volume keep; every feature when none is.
fn filter_features(w: &World, volume: PFLT_VOLUME) -> u32 {
    let attached = w.instance_on(volume).is_some_and(|instance| {
        w.instances
            .get(&instance)
            .is_some_and(|i| i.state == InstanceState::Attached)
    });
    let Some(filter) = w.filter.as_ref().filter(|_| attached) else {
        return ALL_FEATURES;
    };
    let filters_transfers = [IRP_MJ_READ, IRP_MJ_WRITE].iter().any(|&major| {
        u8::try_from(major).is_ok_and(|major| filter.operations.contains_key(&major))
    });
    if filters_transfers {
        filter.supported_features
    } else {
        filter.supported_features | SUPPORTED_FS_FEATURES_BYPASS_IO
    }
}

/// The features `volume` keeps now: what it offers, less what an attached filter does not declare.
fn features(w: &mut World, volume: PFLT_VOLUME) -> u32 {
    let filter = filter_features(w, volume);
    w.volume(volume).map_or(0, |v| v.spec.features & filter)
}

impl Sim {
    /// The optional features `volume` keeps (`SUPPORTED_FS_FEATURES_*`): those its file system and
    /// storage offer and every attached minifilter supports, as `FsRtlGetSupportedFeatures` reports
    /// them and `fltmc instances` shows them (`SprtFtrs`).
    #[must_use]
    pub fn volume_features(&self, volume: Volume) -> u32 {
        world::with(|w| features(w, volume.0))
    }
}

/// Whether the file object at `file_object` has BypassIO enabled and its volume still allows it.
pub(crate) fn bypassed(file_object: usize) -> bool {
    world::with(|w| {
        if !w.bypass_io.contains(&file_object) {
            return false;
        }
        let Some(volume) = w.file_objects.get(&file_object).map(|f| f.volume) else {
            return false;
        };
        features(w, volume) & SUPPORTED_FS_FEATURES_BYPASS_IO != 0
    })
}

/// An `FS_BPIO_RESULTS` with `status` and, when a driver refused, its name and the reason.
fn results(status: NTSTATUS, driver: &str, reason: &str) -> FS_BPIO_RESULTS {
    let mut results = FS_BPIO_RESULTS {
        OpStatus: status.cast_unsigned(),
        ..FS_BPIO_RESULTS::default()
    };
    let copy = |target: &mut [u16], text: &str| {
        let units: Vec<u16> = text.encode_utf16().take(target.len()).collect();
        target[..units.len()].copy_from_slice(&units);
        u16::try_from(units.len() * 2).unwrap_or(0)
    };
    results.FailingDriverNameLen = copy(&mut results.FailingDriverName, driver);
    results.FailureReasonLen = copy(&mut results.FailureReason, reason);
    results
}

/// The simulated file system's `FSCTL_MANAGE_BYPASS_IO` for `file_object`: the operation's
/// results, or the status of the whole request.
fn manage_bypass_io(
    file_object: usize,
    operation: FS_BPIO_OPERATIONS,
) -> Result<FS_BPIO_RESULTS, NTSTATUS> {
    world::with(|w| {
        let state = w
            .file_objects
            .get(&file_object)
            .ok_or(STATUS_INVALID_PARAMETER)?;
        let (volume, node, volume_open) = (state.volume, state.node, state.volume_open);
        let directory = w
            .volume(volume)
            .and_then(|v| node.and_then(|key| v.files.node(key)))
            .is_some_and(|f| f.directory);
        match operation {
            FS_BPIO_OP_DISABLE => {
                w.bypass_io.remove(&file_object);
                return Ok(results(STATUS_SUCCESS, "", ""));
            }
            FS_BPIO_OP_ENABLE | FS_BPIO_OP_QUERY => {}
            _ => return Err(STATUS_NOT_IMPLEMENTED),
        }
        let dax = w.volume(volume).is_some_and(|v| v.spec.dax);
        let offered = w.volume(volume).map_or(0, |v| v.spec.features);
        let filter_ok = filter_features(w, volume) & SUPPORTED_FS_FEATURES_BYPASS_IO != 0;
        let refusal = if operation == FS_BPIO_OP_ENABLE && (volume_open || directory) {
            Some(results(STATUS_NOT_SUPPORTED, "file system", "not a file"))
        } else if dax {
            Some(results(STATUS_NOT_SUPPORTED, "file system", "DAX volume"))
        } else if !filter_ok {
            let name = w
                .filter
                .as_ref()
                .map_or(String::new(), |f| format!("{}.sys", f.service));
            Some(results(
                STATUS_BYPASSIO_FLT_NOT_SUPPORTED,
                &name,
                "The specified minifilter does not support bypass IO.",
            ))
        } else if offered & SUPPORTED_FS_FEATURES_BYPASS_IO == 0 {
            Some(results(
                STATUS_NO_BYPASSIO_DRIVER_SUPPORT,
                "storage",
                "no BypassIO",
            ))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            return Ok(refusal);
        }
        if operation == FS_BPIO_OP_ENABLE {
            w.bypass_io.insert(file_object);
        }
        Ok(results(STATUS_SUCCESS, "", ""))
    })
}

/// The file system's side of a buffered FSCTL: `FSCTL_MANAGE_BYPASS_IO` is understood, every other
/// control code is `STATUS_INVALID_DEVICE_REQUEST`.
fn fs_control_in_file_system(file_object: usize, parameters: &FLT_PARAMETERS) -> (NTSTATUS, usize) {
    // SAFETY: a buffered FSCTL's parameters are in the `Buffered` arm (set by `fs_control`).
    let buffered = unsafe { parameters.FileSystemControl.Buffered };
    if buffered.FsControlCode != FSCTL_MANAGE_BYPASS_IO {
        return (STATUS_INVALID_DEVICE_REQUEST, 0);
    }
    let input_length = usize::try_from(buffered.InputBufferLength).unwrap_or(0);
    let output_length = usize::try_from(buffered.OutputBufferLength).unwrap_or(0);
    if input_length < size_of::<FS_BPIO_INPUT>() {
        return (STATUS_INVALID_PARAMETER, 0);
    }
    if output_length < size_of::<FS_BPIO_OUTPUT>() {
        return (STATUS_BUFFER_TOO_SMALL, 0);
    }
    // SAFETY: the system buffer holds at least an FS_BPIO_INPUT (checked), possibly unaligned.
    let input = unsafe {
        buffered
            .SystemBuffer
            .cast::<FS_BPIO_INPUT>()
            .read_unaligned()
    };
    let results = match manage_bypass_io(file_object, input.Operation) {
        Ok(results) => results,
        Err(status) => return (status, 0),
    };
    let mut output = FS_BPIO_OUTPUT {
        Operation: input.Operation,
        ..FS_BPIO_OUTPUT::default()
    };
    output.Anonymous.Enable = results;
    // SAFETY: the system buffer holds at least an FS_BPIO_OUTPUT (checked), possibly unaligned.
    unsafe {
        buffered
            .SystemBuffer
            .cast::<FS_BPIO_OUTPUT>()
            .write_unaligned(output);
    }
    (STATUS_SUCCESS, size_of::<FS_BPIO_OUTPUT>())
}

impl FileHandle<'_> {
    /// Sends the buffered file-system control `code` with `input` through the filter and the file
    /// system (`IRP_MJ_FILE_SYSTEM_CONTROL`, `IRP_MN_USER_FS_REQUEST`, as `NtFsControlFile` from user
    /// mode does). The I/O manager's system buffer is as large as the larger of the two buffers; what
    /// the request returns (`Information` bytes) is copied into `output`.
    pub fn fs_control(&mut self, code: u32, input: &[u8], output: &mut [u8]) -> IoResult {
        let _exit = crate::session::checked();
        let mut system_buffer = vec![0_u8; input.len().max(output.len())];
        system_buffer[..input.len()].copy_from_slice(input);
        let mut parameters = FLT_PARAMETERS::default();
        parameters.FileSystemControl.Buffered.FsControlCode = code;
        parameters.FileSystemControl.Buffered.InputBufferLength =
            u32::try_from(input.len()).unwrap_or(u32::MAX);
        parameters.FileSystemControl.Buffered.OutputBufferLength =
            u32::try_from(output.len()).unwrap_or(u32::MAX);
        parameters.FileSystemControl.Buffered.SystemBuffer =
            system_buffer.as_mut_ptr().cast::<c_void>();
        let (file_object, volume) = (self.raw_file_object(), self.volume_handle());
        let op = Operation {
            major: u8::try_from(IRP_MJ_FILE_SYSTEM_CONTROL).unwrap_or(u8::MAX),
            minor: u8::try_from(IRP_MN_USER_FS_REQUEST).unwrap_or(u8::MAX),
            irp_flags: 0,
            fast_io: false,
            file_object,
            volume,
            parameters,
        };
        let address = file_object as usize;
        let outcome = perform(&op, &mut |p| fs_control_in_file_system(address, p));
        let Outcome::Done(status, information) = outcome else {
            unreachable!("an FSCTL is never fast I/O");
        };
        if status >= 0 {
            let returned = information.min(output.len());
            output[..returned].copy_from_slice(&system_buffer[..returned]);
        }
        IoResult {
            status,
            information,
        }
    }

    /// `FSCTL_MANAGE_BYPASS_IO` with `operation` (`FS_BPIO_OP_ENABLE`, `FS_BPIO_OP_QUERY`,
    /// `FS_BPIO_OP_DISABLE`): the request's status, and the operation's results when it succeeded.
    pub fn bypass_io(
        &mut self,
        operation: FS_BPIO_OPERATIONS,
    ) -> (NTSTATUS, Option<FS_BPIO_RESULTS>) {
        let input = FS_BPIO_INPUT {
            Operation: operation,
            ..FS_BPIO_INPUT::default()
        };
        // SAFETY: FS_BPIO_INPUT is plain integers; viewing it as bytes reads initialized memory.
        let input_bytes = unsafe {
            std::slice::from_raw_parts((&raw const input).cast::<u8>(), size_of::<FS_BPIO_INPUT>())
        };
        let mut output = vec![0_u8; size_of::<FS_BPIO_OUTPUT>()];
        let result = self.fs_control(FSCTL_MANAGE_BYPASS_IO, input_bytes, &mut output);
        if result.status < 0 || result.information < size_of::<FS_BPIO_OUTPUT>() {
            return (result.status, None);
        }
        // SAFETY: `output` holds a whole FS_BPIO_OUTPUT written by the file system (or a filter
        // that completed the request), read unaligned from the byte buffer; plain integers.
        let output = unsafe { output.as_ptr().cast::<FS_BPIO_OUTPUT>().read_unaligned() };
        // SAFETY: every arm of the results union but GetInfo is an FS_BPIO_RESULTS, written as one.
        (result.status, Some(unsafe { output.Anonymous.Enable }))
    }
}
