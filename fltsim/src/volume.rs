//! Simulated volumes: names, file systems, device types, and the volume routines a minifilter
//! calls in `InstanceSetup` (`FltGetVolumeName`, `FltGetVolumeProperties`, `FltIsVolumeWritable`).

use std::mem::size_of;

use windows_sys::Wdk::Storage::FileSystem::Minifilters::{FLT_VOLUME_PROPERTIES, PFLT_VOLUME};
use windows_sys::Wdk::Storage::FileSystem::{
    SUPPORTED_FS_FEATURES_BYPASS_IO, SUPPORTED_FS_FEATURES_OFFLOAD_READ,
    SUPPORTED_FS_FEATURES_OFFLOAD_WRITE,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_BUFFER_OVERFLOW, STATUS_BUFFER_TOO_SMALL, STATUS_INVALID_PARAMETER,
    STATUS_SUCCESS, UNICODE_STRING,
};
use windows_sys::Win32::Storage::InstallableFileSystems::{
    FLT_FILESYSTEM_TYPE, FLT_FSTYPE_CDFS, FLT_FSTYPE_EXFAT, FLT_FSTYPE_FAT, FLT_FSTYPE_MUP,
    FLT_FSTYPE_NTFS, FLT_FSTYPE_REFS,
};
use windows_sys::Win32::System::Ioctl::{
    FILE_DEVICE_CD_ROM_FILE_SYSTEM, FILE_DEVICE_DISK_FILE_SYSTEM, FILE_DEVICE_NETWORK_FILE_SYSTEM,
};

use crate::irql::{APC_LEVEL, PASSIVE_LEVEL};
use crate::verifier::{invalid_handle, irql_at_most, violation};
use crate::world::{self, InstanceState};

/// The file system of a simulated volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileSystem {
    /// NTFS: 64-bit file ids; `FileIdInformation` gives them zero-extended.
    Ntfs,
    /// `ReFS`: 128-bit file ids. `FileInternalInformation` gives only their low 64 bits, so two
    /// files can share one 64-bit id (see [`crate::Sim::create_file_with_id`]).
    Refs,
    /// FAT: 64-bit ids; no `FileIdInformation`.
    Fat,
    /// exFAT: 64-bit ids; no `FileIdInformation`.
    ExFat,
    /// CDFS on a CD-ROM: read-only; no `FileIdInformation`.
    Cdfs,
    /// A network redirector under MUP (`FILE_DEVICE_NETWORK_FILE_SYSTEM`).
    Network,
}

impl FileSystem {
    /// The `FLT_FSTYPE_*` value `InstanceSetup` receives.
    #[must_use]
    pub fn flt_type(self) -> FLT_FILESYSTEM_TYPE {
        match self {
            Self::Ntfs => FLT_FSTYPE_NTFS,
            Self::Refs => FLT_FSTYPE_REFS,
            Self::Fat => FLT_FSTYPE_FAT,
            Self::ExFat => FLT_FSTYPE_EXFAT,
            Self::Cdfs => FLT_FSTYPE_CDFS,
            Self::Network => FLT_FSTYPE_MUP,
        }
    }

    /// The volume device type `InstanceSetup` receives.
    #[must_use]
    pub fn device_type(self) -> u32 {
        match self {
            Self::Cdfs => FILE_DEVICE_CD_ROM_FILE_SYSTEM,
            Self::Network => FILE_DEVICE_NETWORK_FILE_SYSTEM,
            _ => FILE_DEVICE_DISK_FILE_SYSTEM,
        }
    }

    /// The file system driver's name (`FLT_VOLUME_PROPERTIES.FileSystemDriverName`).
    fn driver_name(self) -> &'static str {
        match self {
            Self::Ntfs => "\\FileSystem\\Ntfs",
            Self::Refs => "\\FileSystem\\ReFS",
            Self::Fat => "\\FileSystem\\fastfat",
            Self::ExFat => "\\FileSystem\\exfat",
            Self::Cdfs => "\\FileSystem\\cdfs",
            Self::Network => "\\FileSystem\\Mup",
        }
    }

    /// Whether `FileIdInformation` is supported.
    pub(crate) fn has_file_id_information(self) -> bool {
        matches!(self, Self::Ntfs | Self::Refs)
    }

    /// Whether files have named data streams (and `FileStreamInformation` lists them): NTFS and
    /// `ReFS`; FAT and exFAT have none ("File Streams (Local File Systems)").
    pub(crate) fn has_named_streams(self) -> bool {
        matches!(self, Self::Ntfs | Self::Refs)
    }
}

/// When a simulated file system refuses fast I/O (its fast I/O routine returns FALSE, and the I/O
/// manager reissues the request as an IRP: "IRPs Are Different From Fast I/O"), beyond the cases it
/// always refuses: a file object whose caching is not initialized yet, and a range another file
/// object holds a conflicting byte-range lock on ([`crate::Sim::set_fast_io`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FastIo {
    /// Fast I/O is possible on cached file objects (the default).
    #[default]
    Possible,
    /// Every fast I/O is refused, as with `FastIoIsNotPossible` in the file's FCB header.
    Refused,
    /// A seeded pseudo-random one in `one_in` fast I/O operations is refused (as when the data is
    /// not resident and the caller cannot wait: "`FsRtlCopyRead` function (ntifs.h)").
    Seeded {
        /// The generator's seed.
        seed: u64,
        /// One refusal in this many fast I/O operations, on average (0 or 1: every one).
        one_in: u32,
    },
}

/// What `FileIdInformation` returns on a volume whose file system supports it
/// ([`VolumeSpec::file_id_information`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FileIdAnswer {
    /// The file's ID (the default).
    #[default]
    Ids,
    /// 0 for every file: "For file systems that do not support a 128-bit file ID, this field must
    /// be set to 0" ("`FILE_ID_INFORMATION` structure (ntifs.h)").
    Zero,
    /// All-ones for every file: MS-FSCC's value for a file system that cannot establish an ID.
    AllOnes,
}

/// What happened on a volume that a test may want to count ([`crate::Sim::counters`]): the
/// file-system queries filters made, and how fast I/O fared. Counts since the volume was mounted or
/// [`crate::Sim::reset_counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// `FltQueryInformationFile` calls on the volume's files (any class, failed ones included).
    pub query_information: u64,
    /// `FltGetFileNameInformation` calls for operations on the volume (failed ones included).
    pub name_queries: u64,
    /// Fast I/O operations (reads, writes, MDL reads, prepare-MDL-writes) the file system served.
    pub fast_io: u64,
    /// Fast I/O operations the file system refused (not cached, a byte-range lock, [`FastIo`]);
    /// the I/O manager reissued each as an IRP.
    pub fast_io_refused: u64,
    /// Fast I/O operations a filter disallowed (`FLT_PREOP_DISALLOW_FASTIO`); each was reissued as
    /// an IRP.
    pub fast_io_disallowed: u64,
    /// `FltGetInstanceContext` calls on the volume's instances (each one writes the context's
    /// reference count, a location shared by every processor doing I/O on the volume).
    pub instance_context_gets: u64,
}

/// Describes a volume for [`crate::Sim::add_volume`].
#[derive(Clone, Debug)]
pub struct VolumeSpec {
    /// The volume's device name, e.g. `\Device\HarddiskVolume2` (what `FltGetVolumeName` returns).
    pub name: String,
    /// Its file system.
    pub file_system: FileSystem,
    /// Whether it is read-only (writes fail with `STATUS_MEDIA_WRITE_PROTECTED`).
    pub read_only: bool,
    /// The volume serial number (`FILE_ID_INFORMATION.VolumeSerialNumber`).
    pub serial: u64,
    /// The optional features the file system and storage offer (`SUPPORTED_FS_FEATURES_*`); the
    /// volume keeps those every attached minifilter supports ([`crate::Sim::volume_features`]).
    pub features: u32,
    /// A direct-access (DAX) volume: only filters registered with
    /// `FLTFL_REGISTRATION_SUPPORT_DAX_VOLUME` are attached to it.
    pub dax: bool,
    /// What `FileIdInformation` answers on NTFS and `ReFS`.
    pub file_ids: FileIdAnswer,
}

impl VolumeSpec {
    /// A writable volume named `name` with file system `file_system` (CDFS volumes are read-only),
    /// offering the features its file system has on capable storage: offloaded read and write
    /// (ODX) on NTFS and `ReFS`, BypassIO on NTFS (an NVMe disk); nothing on the others.
    #[must_use]
    pub fn new(name: &str, file_system: FileSystem) -> Self {
        let features = match file_system {
            FileSystem::Ntfs => {
                SUPPORTED_FS_FEATURES_OFFLOAD_READ
                    | SUPPORTED_FS_FEATURES_OFFLOAD_WRITE
                    | SUPPORTED_FS_FEATURES_BYPASS_IO
            }
            FileSystem::Refs => {
                SUPPORTED_FS_FEATURES_OFFLOAD_READ | SUPPORTED_FS_FEATURES_OFFLOAD_WRITE
            }
            _ => 0,
        };
        Self {
            name: name.to_owned(),
            file_system,
            read_only: file_system == FileSystem::Cdfs,
            serial: 0x5EED_0000_0000_0001,
            features,
            dax: false,
            file_ids: FileIdAnswer::Ids,
        }
    }

    /// The same volume offering exactly `features` (`SUPPORTED_FS_FEATURES_*`).
    #[must_use]
    pub fn with_features(mut self, features: u32) -> Self {
        self.features = features;
        self
    }

    /// The same volume on direct-access storage (DAX), where the file system refuses BypassIO
    /// ("Supporting BypassIO operations").
    #[must_use]
    pub fn dax(mut self) -> Self {
        self.dax = true;
        self.features &= !SUPPORTED_FS_FEATURES_BYPASS_IO;
        self
    }

    /// The same volume, with `FileIdInformation` answering `answer`.
    #[must_use]
    pub fn file_id_information(mut self, answer: FileIdAnswer) -> Self {
        self.file_ids = answer;
        self
    }

    /// The same volume, read-only.
    #[must_use]
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }
}

/// A simulated volume, returned by [`crate::Sim::add_volume`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Volume(pub(crate) isize);

impl Volume {
    /// The `PFLT_VOLUME` the driver sees for this volume.
    #[must_use]
    pub fn as_raw(self) -> PFLT_VOLUME {
        self.0
    }
}

/// The spec of the live volume `volume`: mounted, or dismounted while an instance of the filter is
/// still attached or tearing down on it (the instance keeps the volume object alive, so the volume
/// routines work in the teardown callbacks of a dismount).
fn spec_of(volume: PFLT_VOLUME) -> Option<VolumeSpec> {
    world::with(|w| {
        let attached = w.instance_on(volume).is_some();
        w.volume(volume)
            .filter(|v| !v.removed || attached)
            .map(|v| v.spec.clone())
    })
}

/// Copies `text` as UTF-16 into the buffer of `target`, setting its `Length`.
///
/// # Safety
/// `target.Buffer` must be valid for `target.MaximumLength` bytes.
unsafe fn copy_into(target: &mut UNICODE_STRING, text: &[u16]) -> bool {
    let bytes = text.len() * 2;
    if bytes > usize::from(target.MaximumLength) || target.Buffer.is_null() {
        return false;
    }
    // SAFETY: the buffer holds MaximumLength bytes (caller's contract), checked above.
    unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), target.Buffer, text.len()) };
    target.Length = u16::try_from(bytes).unwrap_or(u16::MAX);
    true
}

/// `FltGetVolumeName`: the volume's device name. IRQL <= `APC_LEVEL`.
///
/// With `VolumeName` NULL or too small, returns `STATUS_BUFFER_TOO_SMALL` and the size needed in
/// `BufferSizeNeeded` (when given).
///
/// # Safety
/// `volumename` is NULL or a valid `UNICODE_STRING` whose buffer holds `MaximumLength` bytes;
/// `buffersizeneeded` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltGetVolumeName(
    volume: PFLT_VOLUME,
    volumename: *mut UNICODE_STRING,
    buffersizeneeded: *mut u32,
) -> NTSTATUS {
    if !irql_at_most("FltGetVolumeName", APC_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    let Some(spec) = spec_of(volume) else {
        invalid_handle("FltGetVolumeName", "volume", volume);
        return STATUS_INVALID_PARAMETER;
    };
    let name: Vec<u16> = spec.name.encode_utf16().collect();
    if !buffersizeneeded.is_null() {
        // SAFETY: the caller's optional output variable, checked non-null.
        unsafe { buffersizeneeded.write(u32::try_from(name.len() * 2).unwrap_or(u32::MAX)) };
    }
    if volumename.is_null() {
        return STATUS_BUFFER_TOO_SMALL;
    }
    // SAFETY: non-null; the caller's UNICODE_STRING with a buffer of MaximumLength bytes.
    if unsafe { copy_into(&mut *volumename, &name) } {
        STATUS_SUCCESS
    } else {
        STATUS_BUFFER_TOO_SMALL
    }
}

/// `FltGetVolumeProperties`: the fixed part, then the three names packed after it.
/// IRQL <= `APC_LEVEL` ("`FltGetVolumeProperties` function (fltkernel.h)").
///
/// Shorter than the fixed part: `STATUS_BUFFER_TOO_SMALL`; room for the fixed part but not the
/// names: the fixed part is filled and `STATUS_BUFFER_OVERFLOW` returned. `LengthReturned` gets the
/// bytes needed.
///
/// # Safety
/// `volumeproperties` must be valid for `volumepropertieslength` bytes and 8-byte aligned;
/// `lengthreturned` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltGetVolumeProperties(
    volume: PFLT_VOLUME,
    volumeproperties: *mut FLT_VOLUME_PROPERTIES,
    volumepropertieslength: u32,
    lengthreturned: *mut u32,
) -> NTSTATUS {
    if !irql_at_most("FltGetVolumeProperties", APC_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    let Some(spec) = spec_of(volume) else {
        invalid_handle("FltGetVolumeProperties", "volume", volume);
        return STATUS_INVALID_PARAMETER;
    };
    if lengthreturned.is_null() {
        violation("fltsim: FltGetVolumeProperties: LengthReturned is NULL".into());
        return STATUS_INVALID_PARAMETER;
    }
    let names: [Vec<u16>; 3] = [
        spec.file_system.driver_name().encode_utf16().collect(),
        spec.name.encode_utf16().collect(),
        spec.name.encode_utf16().collect(),
    ];
    let fixed = size_of::<FLT_VOLUME_PROPERTIES>();
    let needed = fixed + names.iter().map(|n| n.len() * 2).sum::<usize>();
    // SAFETY: checked non-null; the caller's output variable.
    unsafe { lengthreturned.write(u32::try_from(needed).unwrap_or(u32::MAX)) };
    let length = usize::try_from(volumepropertieslength).unwrap_or(usize::MAX);
    if length < fixed || volumeproperties.is_null() {
        return STATUS_BUFFER_TOO_SMALL;
    }
    // SAFETY: the caller's buffer holds at least `fixed` bytes, aligned for the structure.
    let properties = unsafe { &mut *volumeproperties };
    properties.DeviceType = spec.file_system.device_type();
    properties.DeviceCharacteristics = if spec.file_system == FileSystem::Network {
        0x10 // FILE_REMOTE_DEVICE
    } else {
        0
    };
    properties.DeviceObjectFlags = 0;
    properties.AlignmentRequirement = 0;
    properties.SectorSize = 512;
    properties.Flags = 0;
    let empty = UNICODE_STRING {
        Length: 0,
        MaximumLength: 0,
        Buffer: std::ptr::null_mut(),
    };
    properties.FileSystemDriverName = empty;
    properties.FileSystemDeviceName = empty;
    properties.RealDeviceName = empty;
    if length < needed {
        return STATUS_BUFFER_OVERFLOW;
    }
    let mut cursor = volumeproperties.wrapping_add(1).cast::<u16>();
    let targets = [
        &raw mut properties.FileSystemDriverName,
        &raw mut properties.FileSystemDeviceName,
        &raw mut properties.RealDeviceName,
    ];
    for (target, name) in targets.into_iter().zip(&names) {
        let bytes = u16::try_from(name.len() * 2).unwrap_or(u16::MAX);
        // SAFETY: `needed <= length`, so each name fits in the caller's buffer after the fixed
        // part; `target` points into the fixed part.
        unsafe {
            std::ptr::copy_nonoverlapping(name.as_ptr(), cursor, name.len());
            target.write(UNICODE_STRING {
                Length: bytes,
                MaximumLength: bytes,
                Buffer: cursor,
            });
            cursor = cursor.add(name.len());
        }
    }
    STATUS_SUCCESS
}

/// `FltIsVolumeWritable`: `FltObject` is a volume or an instance (a torn-down instance is a stale
/// handle). IRQL `PASSIVE_LEVEL` ("`FltIsVolumeWritable` function (fltkernel.h)": it sends
/// `IOCTL_DISK_IS_WRITABLE` to the storage device).
///
/// # Safety
/// `iswritable` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltIsVolumeWritable(
    fltobject: *const std::ffi::c_void,
    iswritable: *mut bool,
) -> NTSTATUS {
    if !irql_at_most("FltIsVolumeWritable", PASSIVE_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    let handle = fltobject as isize;
    let volume = world::with(|w| match w.instances.get(&handle) {
        Some(i) if i.state == InstanceState::Gone => 0,
        Some(i) => i.volume,
        None => handle,
    });
    let Some(spec) = spec_of(volume) else {
        invalid_handle("FltIsVolumeWritable", "volume or instance", handle);
        return STATUS_INVALID_PARAMETER;
    };
    if iswritable.is_null() {
        violation("fltsim: FltIsVolumeWritable: IsWritable is NULL".into());
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: checked non-null; the caller's output variable.
    unsafe { iswritable.write(!spec.read_only) };
    STATUS_SUCCESS
}

const _: [unsafe extern "system" fn(PFLT_VOLUME, *mut UNICODE_STRING, *mut u32) -> NTSTATUS; 2] = [
    FltGetVolumeName,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltGetVolumeName,
];
const _: [unsafe extern "system" fn(
    PFLT_VOLUME,
    *mut FLT_VOLUME_PROPERTIES,
    u32,
    *mut u32,
) -> NTSTATUS; 2] = [
    FltGetVolumeProperties,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltGetVolumeProperties,
];
const _: [unsafe extern "system" fn(*const std::ffi::c_void, *mut bool) -> NTSTATUS; 2] = [
    FltIsVolumeWritable,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltIsVolumeWritable,
];
