//! File names: `FltGetFileNameInformation`, `FltReferenceFileNameInformation`,
//! `FltReleaseFileNameInformation` and `FltParseFileNameInformation`.

use std::collections::HashMap;
use std::mem::size_of;
use std::sync::Mutex;

use windows_sys::Wdk::Foundation::FILE_OBJECT;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CALLBACK_DATA, FLT_FILE_NAME_DO_NOT_CACHE, FLT_FILE_NAME_INFORMATION,
    FLT_FILE_NAME_NORMALIZED, FLT_FILE_NAME_QUERY_ALWAYS_ALLOW_CACHE_LOOKUP,
    FLT_FILE_NAME_QUERY_CACHE_ONLY, FLT_FILE_NAME_QUERY_DEFAULT,
    FLT_FILE_NAME_QUERY_FILESYSTEM_ONLY, FLT_FILE_NAME_SHORT, FLTFL_FILE_NAME_PARSED_EXTENSION,
    FLTFL_FILE_NAME_PARSED_FINAL_COMPONENT, FLTFL_FILE_NAME_PARSED_PARENT_DIR,
    FLTFL_FILE_NAME_PARSED_STREAM,
};
use windows_sys::Wdk::System::SystemServices::{FO_CLEANUP_COMPLETE, IRP_MJ_CREATE, IRP_PAGING_IO};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_FLT_INVALID_NAME_REQUEST, STATUS_FLT_NAME_CACHE_MISS,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER, STATUS_NOT_SUPPORTED, STATUS_SUCCESS,
    UNICODE_STRING,
};

use crate::filter::unicode;
use crate::irql::APC_LEVEL;
use crate::verifier::{invalid_handle, irql_at_most, violation};
use crate::world::{self, CallbackDataState, NameInfo, lock_ignoring_poison};

/// Owns a `FLT_FILE_NAME_INFORMATION` and the buffer its strings point into.
pub(crate) struct NameStorage {
    info: Box<FLT_FILE_NAME_INFORMATION>,
    buffer: Box<[u16]>,
    /// Length in UTF-16 units of the volume part.
    volume_units: usize,
}

// SAFETY: the storage is plain memory; the strings point into `buffer`, owned alongside.
unsafe impl Send for NameStorage {}

impl NameStorage {
    fn new(volume_name: &str, path: &str, format: u32) -> Self {
        let buffer: Box<[u16]> = format!("{volume_name}{path}").encode_utf16().collect();
        let volume_units = volume_name.encode_utf16().count();
        let empty = UNICODE_STRING {
            Length: 0,
            MaximumLength: 0,
            Buffer: std::ptr::null_mut(),
        };
        let mut info = Box::new(FLT_FILE_NAME_INFORMATION {
            Size: u16::try_from(size_of::<FLT_FILE_NAME_INFORMATION>()).unwrap_or(u16::MAX),
            NamesParsed: 0,
            Format: format,
            Name: unicode(&buffer),
            Volume: unicode(&buffer[..volume_units]),
            Share: empty,
            Extension: empty,
            Stream: empty,
            FinalComponent: empty,
            ParentDir: empty,
        });
        info.Volume.MaximumLength = info.Volume.Length;
        Self {
            info,
            buffer,
            volume_units,
        }
    }

    fn address(&self) -> usize {
        std::ptr::from_ref::<FLT_FILE_NAME_INFORMATION>(&self.info) as usize
    }

    /// Fills `FinalComponent`, `Extension`, `ParentDir` and `Stream` (`FltParseFileNameInformation`).
    fn parse(&mut self) {
        let path = &self.buffer[self.volume_units..];
        let slash = u16::from(b'\\');
        let dot = u16::from(b'.');
        let last = path.iter().rposition(|&c| c == slash).map_or(0, |i| i + 1);
        let base = self.volume_units;
        let part = |from: usize, to: usize| UNICODE_STRING {
            Length: u16::try_from((to - from) * 2).unwrap_or(u16::MAX),
            MaximumLength: u16::try_from((to - from) * 2).unwrap_or(u16::MAX),
            Buffer: if to > from {
                self.buffer[base + from..].as_ptr().cast_mut()
            } else {
                std::ptr::null_mut()
            },
        };
        self.info.ParentDir = part(0, last);
        self.info.FinalComponent = part(last, path.len());
        self.info.Extension = match path[last..].iter().rposition(|&c| c == dot) {
            Some(i) => part(last + i + 1, path.len()),
            None => part(0, 0),
        };
        self.info.Stream = part(0, 0);
        self.info.NamesParsed = u16::try_from(
            FLTFL_FILE_NAME_PARSED_FINAL_COMPONENT
                | FLTFL_FILE_NAME_PARSED_EXTENSION
                | FLTFL_FILE_NAME_PARSED_STREAM
                | FLTFL_FILE_NAME_PARSED_PARENT_DIR,
        )
        .unwrap_or(0);
    }
}

/// Name format flags (`FLT_FILE_NAME_*` formats) mask.
const FORMAT_MASK: u32 = 0xFF;
/// Query method mask (the methods are values, not bits).
const QUERY_MASK: u32 = 0xFF00;

/// The pool tag the fault plan ([`crate::pool::set_fault_injection`]) sees for the name information
/// `FltGetFileNameInformation` allocates when it queries the file system (Filter Manager's paged
/// allocation; fltsim does not charge it to the driver's pool).
pub const FILE_NAME_TAG: u32 = u32::from_le_bytes(*b"FMfn");

/// What Filter Manager's name cache holds: names found by earlier queries that were allowed to
/// cache them, by volume and stream (normalized) or by file object (opened names, which depend on
/// how the file was opened).
#[derive(Default)]
struct Cache {
    normalized: HashMap<(isize, u128), String>,
    opened: HashMap<usize, String>,
}

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

fn with_cache<R>(f: impl FnOnce(&mut Cache) -> R) -> R {
    f(lock_ignoring_poison(&CACHE).get_or_insert_with(Cache::default))
}

/// Forgets the name cache: called when a new [`crate::Sim`] starts.
pub(crate) fn reset() {
    *lock_ignoring_poison(&CACHE) = None;
}

/// Why querying the file system for a name is unsafe now, if it is ("`FltGetFileNameInformation`
/// function (fltkernel.h)", `STATUS_FLT_INVALID_NAME_REQUEST`).
fn unsafe_to_query(state: &CallbackDataState, file_object: usize) -> Option<&'static str> {
    // SAFETY: the file object of an operation in progress is live for the operation.
    let flags = unsafe { (*(file_object as *const FILE_OBJECT)).Flags };
    if state.irp_flags & IRP_PAGING_IO != 0 {
        Some("paging I/O")
    } else if crate::kernel::top_level_irp_set() {
        Some("the thread's top-level IRP is set")
    } else if flags & FO_CLEANUP_COMPLETE != 0 {
        Some("after cleanup (post-cleanup, pre-close or post-close)")
    } else if crate::irql::current() >= APC_LEVEL {
        Some("all APCs are disabled (IRQL APC_LEVEL)")
    } else {
        None
    }
}

/// `FltGetFileNameInformation` ("`FltGetFileNameInformation` function (fltkernel.h)"): normalized
/// and opened names, reference-counted by fltsim (release each with `FltReleaseFileNameInformation`;
/// leaks are reported). IRQL <= `APC_LEVEL`.
///
/// Exactly one format and one query method, or `STATUS_INVALID_PARAMETER`; `FLT_FILE_NAME_SHORT` is
/// not modeled (`STATUS_NOT_SUPPORTED`). A name cache is simulated: `FLT_FILE_NAME_QUERY_DEFAULT`
/// and `..._ALWAYS_ALLOW_CACHE_LOOKUP` look in it first and cache what they find (unless
/// `FLT_FILE_NAME_DO_NOT_CACHE`); `..._CACHE_ONLY` never queries the file system and misses with
/// `STATUS_FLT_NAME_CACHE_MISS`; `..._FILESYSTEM_ONLY` neither reads nor fills the cache. A rename
/// makes the cached normalized name stale (dropped). A normalized name is the path of the name
/// (hard link) the file was opened by, as it is now, with the stream's name for a named stream.
/// Every call is counted in the volume's [`crate::Counters`].
///
/// When the cache cannot answer, the query fails with `STATUS_FLT_INVALID_NAME_REQUEST` in paging
/// I/O, with the thread's top-level IRP set ([`crate::kernel::with_top_level_irp`]), after cleanup
/// (the file object has `FO_CLEANUP_COMPLETE`: post-cleanup, pre-close, post-close), and with all
/// APCs disabled (IRQL `APC_LEVEL`); `ALWAYS_ALLOW_CACHE_LOOKUP` then gives
/// `STATUS_FLT_NAME_CACHE_MISS`. A post-create of a failed create has no file to name. Querying the
/// file system allocates the name information, which the fault plan can fail
/// (`STATUS_INSUFFICIENT_RESOURCES`, tag [`FILE_NAME_TAG`]).
///
/// # Safety
/// `filenameinformation` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltGetFileNameInformation(
    callbackdata: *const FLT_CALLBACK_DATA,
    nameoptions: u32,
    filenameinformation: *mut *mut FLT_FILE_NAME_INFORMATION,
) -> NTSTATUS {
    crate::pause::on_call("FltGetFileNameInformation");
    if !irql_at_most("FltGetFileNameInformation", APC_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    if filenameinformation.is_null() {
        violation("fltsim: FltGetFileNameInformation: FileNameInformation is NULL".into());
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: checked non-null; the caller's output variable.
    unsafe { filenameinformation.write(std::ptr::null_mut()) };
    let state = world::with(|w| w.callback_data.get(&(callbackdata as usize)).copied());
    let Some(state) = state else {
        violation(format!(
            "fltsim: invalid handle: FltGetFileNameInformation got callback data {:#x}, which is not \
             an operation in progress",
            callbackdata as usize
        ));
        return STATUS_INVALID_PARAMETER;
    };
    world::with(|w| {
        let volume = w.file_objects.get(&state.file_object).map(|f| f.volume);
        if let Some(v) = volume.and_then(|volume| w.volume(volume)) {
            v.counters.name_queries += 1;
        }
    });
    let format = nameoptions & FORMAT_MASK;
    let method = nameoptions & QUERY_MASK;
    let methods = [
        FLT_FILE_NAME_QUERY_DEFAULT,
        FLT_FILE_NAME_QUERY_CACHE_ONLY,
        FLT_FILE_NAME_QUERY_FILESYSTEM_ONLY,
        FLT_FILE_NAME_QUERY_ALWAYS_ALLOW_CACHE_LOOKUP,
    ];
    if !(FLT_FILE_NAME_NORMALIZED..=FLT_FILE_NAME_SHORT).contains(&format)
        || !methods.contains(&method)
    {
        return STATUS_INVALID_PARAMETER;
    }
    if format == FLT_FILE_NAME_SHORT {
        return STATUS_NOT_SUPPORTED;
    }
    if state.post && u32::from(state.major) == IRP_MJ_CREATE && state.status < 0 {
        return STATUS_FLT_INVALID_NAME_REQUEST;
    }
    let Some(names) = current_names(state.file_object) else {
        return STATUS_INVALID_PARAMETER;
    };
    let path = match lookup(&names, nameoptions, &state) {
        Ok(path) => path,
        Err(status) => return status,
    };
    let storage = NameStorage::new(&names.volume_name, &path, format);
    let address = storage.address();
    world::with(|w| {
        w.names.insert(
            address,
            NameInfo {
                references: 1,
                storage,
            },
        )
    });
    // SAFETY: checked non-null; the caller's output variable.
    unsafe { filenameinformation.write(address as *mut FLT_FILE_NAME_INFORMATION) };
    STATUS_SUCCESS
}

/// What the file system would answer about a file object now.
struct Names {
    file_object: usize,
    volume: isize,
    volume_name: String,
    stream: Option<u128>,
    opened: String,
    /// The file's name now (after renames), once the file system opened it.
    stored: Option<String>,
}

fn current_names(file_object: usize) -> Option<Names> {
    world::with(|w| {
        let fo = w.file_objects.get(&file_object)?;
        let (volume, stream, opened) = (fo.volume, fo.stream, fo.path.clone());
        // The name (hard link) the file was opened by, as it is now, with the stream's name for a
        // named stream (`\dir\file.txt:stream`, "`FLT_FILE_NAME_INFORMATION` structure
        // (fltkernel.h)").
        let stored = crate::file::current_path(w, file_object);
        let v = w.volume(volume)?;
        Some(Names {
            file_object,
            volume,
            volume_name: v.spec.name.clone(),
            stream,
            opened,
            stored,
        })
    })
}

/// The path part of the name asked for: from the cache, or from the file system when that is safe
/// and the method allows it.
fn lookup(names: &Names, options: u32, state: &CallbackDataState) -> Result<String, NTSTATUS> {
    let (format, method) = (options & FORMAT_MASK, options & QUERY_MASK);
    let normalized = format == FLT_FILE_NAME_NORMALIZED;
    let fresh = if normalized {
        names.stored.clone().unwrap_or_else(|| names.opened.clone())
    } else {
        names.opened.clone()
    };
    let cached = with_cache(|cache| {
        if normalized {
            let key = (names.volume, names.stream?);
            let hit = cache.normalized.get(&key)?.clone();
            if Some(&hit) != names.stored.as_ref() {
                cache.normalized.remove(&key);
                return None;
            }
            Some(hit)
        } else {
            cache
                .opened
                .get(&names.file_object)
                .filter(|hit| **hit == names.opened)
                .cloned()
        }
    });
    if method != FLT_FILE_NAME_QUERY_FILESYSTEM_ONLY
        && let Some(hit) = cached
    {
        return Ok(hit);
    }
    if method == FLT_FILE_NAME_QUERY_CACHE_ONLY {
        return Err(STATUS_FLT_NAME_CACHE_MISS);
    }
    if unsafe_to_query(state, names.file_object).is_some() {
        return Err(if method == FLT_FILE_NAME_QUERY_ALWAYS_ALLOW_CACHE_LOOKUP {
            STATUS_FLT_NAME_CACHE_MISS
        } else {
            STATUS_FLT_INVALID_NAME_REQUEST
        });
    }
    if crate::pool::inject_failure(FILE_NAME_TAG) {
        return Err(STATUS_INSUFFICIENT_RESOURCES);
    }
    let fills_cache = method != FLT_FILE_NAME_QUERY_FILESYSTEM_ONLY
        && names.stream.is_some()
        && options & FLT_FILE_NAME_DO_NOT_CACHE == 0;
    if fills_cache {
        with_cache(|cache| {
            if let (true, Some(stream)) = (normalized, names.stream) {
                cache
                    .normalized
                    .insert((names.volume, stream), fresh.clone());
            } else if !normalized {
                cache.opened.insert(names.file_object, fresh.clone());
            }
        });
    }
    Ok(fresh)
}

/// Adjusts the references of a name information; `None` if it is not live.
fn name_reference(address: usize, delta: isize) -> Option<()> {
    world::with(|w| {
        let info = w.names.get_mut(&address)?;
        info.references = info.references.checked_add_signed(delta)?;
        if info.references == 0 {
            w.names.remove(&address);
        }
        Some(())
    })
}

/// `FltReleaseFileNameInformation`. IRQL <= `APC_LEVEL` (the structure is paged).
///
/// # Safety
/// None beyond the routine's contract; an unknown or over-released structure is reported.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltReleaseFileNameInformation(
    filenameinformation: *const FLT_FILE_NAME_INFORMATION,
) {
    if !irql_at_most("FltReleaseFileNameInformation", APC_LEVEL) {
        return;
    }
    if name_reference(filenameinformation as usize, -1).is_none() {
        violation(format!(
            "fltsim: FltReleaseFileNameInformation: {:#x} is not a live FLT_FILE_NAME_INFORMATION \
             (released more times than referenced)",
            filenameinformation as usize
        ));
    }
}

/// `FltReferenceFileNameInformation`. IRQL <= `APC_LEVEL`.
///
/// # Safety
/// None beyond the routine's contract; an unknown structure is reported.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltReferenceFileNameInformation(
    filenameinformation: *const FLT_FILE_NAME_INFORMATION,
) {
    if !irql_at_most("FltReferenceFileNameInformation", APC_LEVEL) {
        return;
    }
    if name_reference(filenameinformation as usize, 1).is_none() {
        invalid_handle(
            "FltReferenceFileNameInformation",
            "name information",
            filenameinformation as isize,
        );
    }
}

/// `FltParseFileNameInformation`: fills the parsed components. IRQL <= `APC_LEVEL`.
///
/// # Safety
/// None beyond the routine's contract; an unknown structure is reported.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltParseFileNameInformation(
    filenameinformation: *mut FLT_FILE_NAME_INFORMATION,
) -> NTSTATUS {
    if !irql_at_most("FltParseFileNameInformation", APC_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    let parsed = world::with(|w| {
        w.names
            .get_mut(&(filenameinformation as usize))
            .map(|n| n.storage.parse())
    });
    if parsed.is_none() {
        invalid_handle(
            "FltParseFileNameInformation",
            "name information",
            filenameinformation as isize,
        );
        return STATUS_INVALID_PARAMETER;
    }
    STATUS_SUCCESS
}

const _: [unsafe extern "system" fn(
    *const FLT_CALLBACK_DATA,
    u32,
    *mut *mut FLT_FILE_NAME_INFORMATION,
) -> NTSTATUS; 2] = [
    FltGetFileNameInformation,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltGetFileNameInformation,
];
const _: [unsafe extern "system" fn(*const FLT_FILE_NAME_INFORMATION); 4] = [
    FltReleaseFileNameInformation,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltReleaseFileNameInformation,
    FltReferenceFileNameInformation,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltReferenceFileNameInformation,
];
const _: [unsafe extern "system" fn(*mut FLT_FILE_NAME_INFORMATION) -> NTSTATUS; 2] = [
    FltParseFileNameInformation,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltParseFileNameInformation,
];
