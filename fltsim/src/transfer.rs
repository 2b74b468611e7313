//! Data transfers a test issues on a [`FileHandle`], and the simulated file systems' side of them:
//! cached, non-cached and paging IRPs, fast I/O (refused and reissued as an IRP as the I/O manager
//! does), fast-I/O and IRP-based MDL transfers, and byte-range locks. Reads return the stream's
//! data and writes change it (`crate::data`), whatever the path.
//!
//! The rules the file systems follow, from Microsoft's documentation:
//! - Fast I/O is for cached files ("IRPs Are Different From Fast I/O"; "`FsRtlCopyRead` function
//!   (ntifs.h)": it "copies data from a cached file"). A file system caches a file object when it
//!   processes the first cached read or write IRP on it ("`CcInitializeCacheMap` function (ntifs.h)"),
//!   which sets the file object's `PrivateCacheMap`; until then its fast I/O routines return FALSE.
//! - "If the fast I/O routine returns FALSE, the requested operation failed and the caller must
//!   create an IRP" ("IRPs Are Different From Fast I/O"). Filter Manager has called the pre-ops by
//!   then; fltsim calls the post-ops with `IoStatus.Status` = `STATUS_FLT_DISALLOW_FAST_IO`, the
//!   status Filter Manager gives post-ops of a fast I/O refused below them ("Disallowing a Fast I/O
//!   Operation in a Preoperation Callback Routine").
//! - With a byte-range lock on the file the fast path is "questionable": `FastIoCheckIfPossible`
//!   refuses a range that conflicts with another file object's lock ("`FsRtlCopyRead` function
//!   (ntifs.h)", "`FsRtlFastCheckLockForRead`", "`FsRtlFastCheckLockForWrite`"), and the IRP then fails
//!   with `STATUS_FILE_LOCK_CONFLICT`. A read conflicts with another file object's exclusive lock, a
//!   write with any lock another file object holds. Locks go with the file object's cleanup.
//! - MDL transfers: the fast-I/O routines `MdlRead` / `PrepareMdlWrite` reach minifilters as
//!   `IRP_MJ_MDL_READ` / `IRP_MJ_PREPARE_MDL_WRITE`, and their release as `IRP_MJ_MDL_READ_COMPLETE`
//!   / `IRP_MJ_MDL_WRITE_COMPLETE` ("`FLT_PARAMETERS` union (fltkernel.h)"). When the fast routine
//!   refuses, the caller sends `IRP_MJ_READ` / `IRP_MJ_WRITE` with `IRP_MN_MDL`, and releases the MDL
//!   with `IRP_MN_COMPLETE_MDL` ("`IRP_MJ_READ` (IFS)"). fltsim builds no MDL: the pointers are NULL,
//!   and the data goes straight between the caller's buffer and the stream.
//! - A buffered read or write uses the buffer and length the parameters hold when the operation
//!   reaches the file system (a filter may swap the buffer). A read at or past end of file fails
//!   with `STATUS_END_OF_FILE`; one that crosses it transfers the bytes before it. A write extends
//!   the file, except a paging write, which drops the part past end of file.
//! - Non-cached (not paging) reads and writes must start and end on a sector boundary (512 bytes),
//!   else they fail with `STATUS_INVALID_PARAMETER` (MS-FSA 2.1.5.3 "Server Requests a Read",
//!   2.1.5.4 "Server Requests a Write").

use std::cell::Cell;

use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_PARAMETERS, IRP_MJ_MDL_READ, IRP_MJ_MDL_READ_COMPLETE, IRP_MJ_MDL_WRITE_COMPLETE,
    IRP_MJ_PREPARE_MDL_WRITE,
};
use windows_sys::Wdk::System::SystemServices::{
    IRP_MJ_LOCK_CONTROL, IRP_MJ_READ, IRP_MJ_WRITE, IRP_MN_COMPLETE, IRP_MN_LOCK, IRP_MN_MDL,
    IRP_MN_UNLOCK_SINGLE, IRP_NOCACHE, IRP_PAGING_IO,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_END_OF_FILE, STATUS_FILE_LOCK_CONFLICT, STATUS_FLT_DISALLOW_FAST_IO,
    STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER, STATUS_LOCK_NOT_GRANTED,
    STATUS_MEDIA_WRITE_PROTECTED, STATUS_RANGE_NOT_LOCKED, STATUS_SUCCESS,
    STATUS_VOLUME_DISMOUNTED,
};

use crate::file::{FileHandle, IoResult, major, stream_index};
use crate::io::{Operation, Outcome, perform};
use crate::volume::FastIo;
use crate::world::{self, ByteRangeLock, Volume};

/// What the value of a file object's `PrivateCacheMap` points at once it is cached (opaque to
/// drivers; only its being non-NULL means anything).
static PRIVATE_CACHE_MAP: u64 = 0;

/// A read or a write.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Direction {
    Read,
    Write,
}

/// How a read or write reaches the file system ([`FileHandle::read_into`],
/// [`FileHandle::write_from`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transfer {
    /// A cached IRP (`IRP_MJ_READ` / `IRP_MJ_WRITE`).
    Cached,
    /// A non-cached IRP (`IRP_NOCACHE`): sector-aligned offset and length.
    NonCached,
    /// A paging IRP (`IRP_PAGING_IO | IRP_NOCACHE`, as the memory manager sends): pre-op at
    /// `APC_LEVEL`; a paging write never extends the file.
    Paging,
    /// Fast I/O (`FastIoRead` / `FastIoWrite`), reissued as a cached IRP when a filter disallows it
    /// or the file system refuses it.
    Fast,
    /// An MDL transfer as the SMB server and the cache manager issue it: `IRP_MJ_MDL_READ` /
    /// `IRP_MJ_PREPARE_MDL_WRITE` (fast I/O) then its completion, or, when the fast routine is
    /// disallowed or refused, an IRP with `IRP_MN_MDL` then `IRP_MN_COMPLETE_MDL`.
    Mdl,
}

/// How a transfer reaches the file system.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    /// A cached IRP.
    Cached,
    /// `IRP_NOCACHE`.
    NonCached,
    /// `IRP_PAGING_IO | IRP_NOCACHE`.
    Paging,
    /// Fast I/O (`FastIoRead` / `FastIoWrite`).
    Fast,
    /// Fast-I/O MDL (`MdlRead` / `PrepareMdlWrite`).
    FastMdl,
    /// IRP with `IRP_MN_MDL`.
    IrpMdl,
}

impl Path {
    fn fast(self) -> bool {
        matches!(self, Self::Fast | Self::FastMdl)
    }
}

/// Sector size of the simulated disks (`FLT_VOLUME_PROPERTIES.SectorSize`).
const SECTOR: u64 = 512;

/// The length of a caller's buffer as a transfer's `Length`.
fn length_of(buffer: &[u8]) -> u32 {
    u32::try_from(buffer.len()).expect("fltsim: a transfer's buffer must be shorter than 4 GiB")
}

impl FileHandle<'_> {
    /// Reads `length` bytes at `offset` (cached, IRP); the data is dropped ([`FileHandle::read_into`]
    /// keeps it).
    pub fn read(&mut self, length: u32, offset: u64) -> IoResult {
        self.read_discarding(Transfer::Cached, length, offset)
    }

    /// Writes `length` zero bytes at `offset` (cached, IRP); extends the file.
    pub fn write(&mut self, length: u32, offset: u64) -> IoResult {
        self.write_zeros(Transfer::Cached, length, offset)
    }

    /// Non-cached read (`IRP_NOCACHE`). On a handle with BypassIO enabled (and still allowed on the
    /// volume) it goes from the I/O manager straight to the file system, skipping every filter
    /// ("BypassIO for filter drivers"; [`FileHandle::bypass_io`]).
    pub fn read_noncached(&mut self, length: u32, offset: u64) -> IoResult {
        self.read_discarding(Transfer::NonCached, length, offset)
    }

    /// Non-cached write (`IRP_NOCACHE`) of zeros; extends the file.
    pub fn write_noncached(&mut self, length: u32, offset: u64) -> IoResult {
        self.write_zeros(Transfer::NonCached, length, offset)
    }

    /// Paging read (`IRP_PAGING_IO | IRP_NOCACHE`, as the memory manager sends): pre-op at
    /// `APC_LEVEL`, `RequestorMode` `KernelMode`.
    pub fn read_paging(&mut self, length: u32, offset: u64) -> IoResult {
        self.read_discarding(Transfer::Paging, length, offset)
    }

    /// Paging write of zeros: does not extend the file.
    pub fn write_paging(&mut self, length: u32, offset: u64) -> IoResult {
        self.write_zeros(Transfer::Paging, length, offset)
    }

    /// Fast I/O read (`FLTFL_CALLBACK_DATA_FAST_IO_OPERATION`). If the filter returns
    /// `FLT_PREOP_DISALLOW_FASTIO` or the file system refuses (the file object is not cached yet, a
    /// conflicting byte-range lock, [`crate::Sim::set_fast_io`]), the I/O manager reissues it as a
    /// cached IRP.
    pub fn fast_read(&mut self, length: u32, offset: u64) -> IoResult {
        self.read_discarding(Transfer::Fast, length, offset)
    }

    /// Fast I/O write of zeros, reissued as an IRP when disallowed or refused.
    pub fn fast_write(&mut self, length: u32, offset: u64) -> IoResult {
        self.write_zeros(Transfer::Fast, length, offset)
    }

    /// An MDL read ([`Transfer::Mdl`]). Returns the transfer's result.
    pub fn mdl_read(&mut self, length: u32, offset: u64) -> IoResult {
        self.read_discarding(Transfer::Mdl, length, offset)
    }

    /// An MDL write of `length` zero bytes ([`Transfer::Mdl`]).
    pub fn mdl_write(&mut self, length: u32, offset: u64) -> IoResult {
        self.write_zeros(Transfer::Mdl, length, offset)
    }

    /// Locks `length` bytes at `offset` (`IRP_MJ_LOCK_CONTROL`, `IRP_MN_LOCK`, fail immediately):
    /// `STATUS_LOCK_NOT_GRANTED` if another file object holds a conflicting lock.
    pub fn lock(&mut self, offset: u64, length: u64, exclusive: bool) -> IoResult {
        self.lock_control(IRP_MN_LOCK, offset, length, exclusive)
    }

    /// Releases the lock this handle took on exactly `length` bytes at `offset`
    /// (`IRP_MN_UNLOCK_SINGLE`): `STATUS_RANGE_NOT_LOCKED` if there is none.
    pub fn unlock(&mut self, offset: u64, length: u64) -> IoResult {
        self.lock_control(IRP_MN_UNLOCK_SINGLE, offset, length, false)
    }

    /// Reads `buffer.len()` bytes at `offset` the way `how` says, into `buffer`; the first
    /// `information` bytes of the result are the stream's data.
    ///
    /// # Panics
    /// If `buffer` is 4 GiB or longer.
    pub fn read_into(&mut self, how: Transfer, offset: u64, buffer: &mut [u8]) -> IoResult {
        self.issue(Direction::Read, how, offset, buffer)
    }

    /// Writes `data` at `offset` the way `how` says.
    ///
    /// # Panics
    /// If `data` is 4 GiB or longer.
    pub fn write_from(&mut self, how: Transfer, offset: u64, data: &[u8]) -> IoResult {
        let mut buffer = data.to_vec();
        self.issue(Direction::Write, how, offset, &mut buffer)
    }

    fn read_discarding(&mut self, how: Transfer, length: u32, offset: u64) -> IoResult {
        let mut buffer = vec![0; usize::try_from(length).unwrap_or(0)];
        self.issue(Direction::Read, how, offset, &mut buffer)
    }

    fn write_zeros(&mut self, how: Transfer, length: u32, offset: u64) -> IoResult {
        let mut buffer = vec![0; usize::try_from(length).unwrap_or(0)];
        self.issue(Direction::Write, how, offset, &mut buffer)
    }

    fn issue(
        &mut self,
        direction: Direction,
        how: Transfer,
        offset: u64,
        buffer: &mut [u8],
    ) -> IoResult {
        let _exit = crate::session::checked();
        let path = match how {
            Transfer::Cached => Path::Cached,
            Transfer::NonCached => Path::NonCached,
            Transfer::Paging => Path::Paging,
            Transfer::Fast => Path::Fast,
            Transfer::Mdl => return self.mdl(direction, offset, buffer),
        };
        match self.send(direction, path, buffer, offset, 0) {
            Outcome::Done(status, information) => IoResult {
                status,
                information,
                reissued: false,
            },
            Outcome::FastIoDisallowed => IoResult {
                reissued: true,
                ..result(self.send(direction, Path::Cached, buffer, offset, 0))
            },
        }
    }

    fn mdl(&mut self, direction: Direction, offset: u64, buffer: &mut [u8]) -> IoResult {
        let major_complete = match direction {
            Direction::Read => IRP_MJ_MDL_READ_COMPLETE,
            Direction::Write => IRP_MJ_MDL_WRITE_COMPLETE,
        };
        match self.send(direction, Path::FastMdl, buffer, offset, 0) {
            Outcome::Done(status, information) => {
                if status >= 0 {
                    self.mdl_complete_fast(major_complete, offset);
                }
                IoResult {
                    status,
                    information,
                    reissued: false,
                }
            }
            Outcome::FastIoDisallowed => {
                let minor = u8::try_from(IRP_MN_MDL).unwrap_or(0);
                let transfer = result(self.send(direction, Path::IrpMdl, buffer, offset, minor));
                if transfer.status >= 0 {
                    let complete = u8::try_from(IRP_MN_MDL | IRP_MN_COMPLETE).unwrap_or(0);
                    self.send(direction, Path::IrpMdl, &mut [], offset, complete);
                }
                IoResult {
                    reissued: true,
                    ..transfer
                }
            }
        }
    }

    /// `IRP_MJ_MDL_READ_COMPLETE` / `IRP_MJ_MDL_WRITE_COMPLETE`: gives the MDL back.
    fn mdl_complete_fast(&mut self, code: u16, offset: u64) {
        let mut parameters = FLT_PARAMETERS::default();
        if code == IRP_MJ_MDL_WRITE_COMPLETE {
            parameters.MdlWriteComplete.FileOffset = i64::try_from(offset).unwrap_or(i64::MAX);
        }
        let op = Operation {
            major: pseudo_major(code),
            minor: 0,
            irp_flags: 0,
            stack_flags: 0,
            fast_io: true,
            file_object: self.raw_file_object(),
            volume: self.volume_handle(),
            parameters,
        };
        // The cache manager's completion routines always succeed ("FLT_PARAMETERS union").
        perform(&op, &mut |_| (STATUS_SUCCESS, 0));
    }

    /// Sends one transfer of `buffer` down the stack; a refusal by the file system comes back as
    /// [`Outcome::FastIoDisallowed`], as a filter's disallowing does. Counts how fast I/O fared.
    fn send(
        &mut self,
        direction: Direction,
        path: Path,
        buffer: &mut [u8],
        offset: u64,
        minor: u8,
    ) -> Outcome {
        let length = length_of(buffer);
        let ours = buffer.as_mut_ptr();
        let (code, parameters, irp_flags) = parameters_for(direction, path, length, offset, ours);
        let op = Operation {
            major: pseudo_major(code),
            minor,
            irp_flags,
            stack_flags: 0,
            fast_io: path.fast(),
            file_object: self.raw_file_object(),
            volume: self.volume_handle(),
            parameters,
        };
        let file_object = op.file_object as usize;
        let volume = self.volume_handle();
        let refused = Cell::new(false);
        let reached = Cell::new(false);
        let completion = u32::from(minor) & IRP_MN_COMPLETE != 0;
        let ours_length = buffer.len();
        let mut file_system = |p: &FLT_PARAMETERS| {
            reached.set(true);
            if completion {
                return (STATUS_SUCCESS, 0);
            }
            let (length, offset, theirs) = lengths(direction, path, p);
            // The buffer the parameters name (a filter may have swapped it), or for an MDL
            // transfer the caller's own; the caller's is never overrun.
            let (target, length) = if theirs.is_null() || theirs == ours {
                (ours, length.min(ours_length as u64))
            } else {
                (theirs, length)
            };
            let request = Request {
                direction,
                path,
                length,
                offset,
                buffer: target,
            };
            let (status, information) = transfer_in_file_system(volume, file_object, request);
            if status == STATUS_FLT_DISALLOW_FAST_IO {
                refused.set(true);
            }
            (status, information)
        };
        // A non-cached read on a handle with BypassIO enabled (and still allowed on the volume) goes
        // from the I/O manager straight to the file system, skipping every filter ("BypassIO for
        // filter drivers"; `FileHandle::bypass_io`).
        let bypassed = path == Path::NonCached
            && direction == Direction::Read
            && crate::fsctl::bypassed(file_object);
        let outcome = if bypassed {
            let (status, information) = file_system(&op.parameters);
            Outcome::Done(status, information)
        } else {
            perform(&op, &mut file_system)
        };
        if path.fast() {
            count_fast_io(volume, refused.get(), outcome, reached.get());
        }
        if refused.get() {
            return Outcome::FastIoDisallowed;
        }
        let through_cache = !matches!(path, Path::NonCached | Path::Paging) && !completion;
        if let (Direction::Write, true, Outcome::Done(status, written)) =
            (direction, through_cache, outcome)
            && status >= 0
        {
            crate::cachemgr::dirtied(file_object, volume, offset, written as u64);
        }
        outcome
    }

    fn lock_control(&mut self, minor: u32, offset: u64, length: u64, exclusive: bool) -> IoResult {
        let _exit = crate::session::checked();
        let mut length_value = i64::try_from(length).unwrap_or(i64::MAX);
        let mut parameters = FLT_PARAMETERS::default();
        parameters.LockControl.Length = &raw mut length_value;
        parameters.LockControl.ByteOffset = i64::try_from(offset).unwrap_or(i64::MAX);
        parameters.LockControl.FailImmediately = true;
        parameters.LockControl.ExclusiveLock = exclusive;
        let op = Operation {
            major: major(IRP_MJ_LOCK_CONTROL),
            minor: u8::try_from(minor).unwrap_or(0),
            irp_flags: 0,
            stack_flags: 0,
            fast_io: false,
            file_object: self.raw_file_object(),
            volume: self.volume_handle(),
            parameters,
        };
        let file_object = op.file_object as usize;
        let volume = self.volume_handle();
        let request = ByteRangeLock {
            owner: file_object,
            offset,
            length,
            exclusive,
        };
        result(perform(&op, &mut |_| {
            lock_in_file_system(volume, file_object, minor, request)
        }))
    }
}

/// The major function, parameters and IRP flags of a transfer of `length` bytes at `offset` from
/// or into `buffer` (not named in the parameters of the fast-I/O MDL operations).
fn parameters_for(
    direction: Direction,
    path: Path,
    length: u32,
    offset: u64,
    buffer: *mut u8,
) -> (u16, FLT_PARAMETERS, u32) {
    let offset_value = i64::try_from(offset).unwrap_or(i64::MAX);
    let mut parameters = FLT_PARAMETERS::default();
    let buffered = !matches!(path, Path::FastMdl | Path::IrpMdl);
    let data = if buffered {
        buffer.cast()
    } else {
        std::ptr::null_mut()
    };
    let code = match (direction, path) {
        (Direction::Read, Path::FastMdl) => {
            parameters.MdlRead.FileOffset = offset_value;
            parameters.MdlRead.Length = length;
            IRP_MJ_MDL_READ
        }
        (Direction::Write, Path::FastMdl) => {
            parameters.PrepareMdlWrite.FileOffset = offset_value;
            parameters.PrepareMdlWrite.Length = length;
            IRP_MJ_PREPARE_MDL_WRITE
        }
        (Direction::Read, _) => {
            parameters.Read.Length = length;
            parameters.Read.ByteOffset = offset_value;
            parameters.Read.ReadBuffer = data;
            u16::try_from(IRP_MJ_READ).unwrap_or(0)
        }
        (Direction::Write, _) => {
            parameters.Write.Length = length;
            parameters.Write.ByteOffset = offset_value;
            parameters.Write.WriteBuffer = data;
            u16::try_from(IRP_MJ_WRITE).unwrap_or(0)
        }
    };
    let irp_flags = match path {
        Path::NonCached => IRP_NOCACHE,
        Path::Paging => IRP_PAGING_IO | IRP_NOCACHE,
        Path::Cached | Path::Fast | Path::FastMdl | Path::IrpMdl => 0,
    };
    (code, parameters, irp_flags)
}

/// Counts how one fast I/O operation fared in its volume's [`crate::Counters`].
fn count_fast_io(volume: isize, refused: bool, outcome: Outcome, reached: bool) {
    world::with(|w| {
        if let Some(v) = w.volume(volume) {
            if refused {
                v.counters.fast_io_refused += 1;
            } else if outcome == Outcome::FastIoDisallowed {
                v.counters.fast_io_disallowed += 1;
            } else if reached {
                v.counters.fast_io += 1;
            }
        }
    });
}

/// A paging read or write (`IRP_PAGING_IO | IRP_NOCACHE`) of `length` bytes at `offset` through
/// `file_object`, which has no handle of its own: a cleaned-up file object the cache manager
/// flushes through (the lazy writer), or a stream file object (`crate::cachemgr`). A write carries
/// the stream's bytes as they are (a flush of cached data writes what the cache holds, and fltsim's
/// cache and disk are one copy), so it changes no data; it never extends the file.
pub(crate) fn paging(
    volume: isize,
    file_object: *mut windows_sys::Wdk::Foundation::FILE_OBJECT,
    write: bool,
    offset: u64,
    length: u32,
) -> IoResult {
    let mut buffer = vec![0_u8; usize::try_from(length).unwrap_or(0)];
    let address = file_object as usize;
    if write {
        current_bytes(volume, address, offset, &mut buffer);
    }
    let direction = if write {
        Direction::Write
    } else {
        Direction::Read
    };
    let (code, parameters, irp_flags) =
        parameters_for(direction, Path::Paging, length, offset, buffer.as_mut_ptr());
    let op = Operation {
        major: pseudo_major(code),
        minor: 0,
        irp_flags,
        stack_flags: 0,
        fast_io: false,
        file_object,
        volume,
        parameters,
    };
    let ours = buffer.as_mut_ptr();
    let ours_length = buffer.len() as u64;
    let outcome = perform(&op, &mut |p| {
        let (length, offset, theirs) = lengths(direction, Path::Paging, p);
        let (target, length) = if theirs.is_null() || theirs == ours {
            (ours, length.min(ours_length))
        } else {
            (theirs, length)
        };
        let request = Request {
            direction,
            path: Path::Paging,
            length,
            offset,
            buffer: target,
        };
        transfer_in_file_system(volume, address, request)
    });
    drop(buffer);
    result(outcome)
}

/// Copies the bytes of `file_object`'s stream at `offset` into `buffer` (as far as they go).
fn current_bytes(volume: isize, file_object: usize, offset: u64, buffer: &mut [u8]) {
    world::with(|w| {
        let (node, stream) = w
            .file_objects
            .get(&file_object)
            .and_then(|f| Some((f.node?, f.stream?)))?;
        let data = w
            .volume(volume)?
            .files
            .node(node)?
            .data_of(stream_index(stream))?;
        data.read(offset, buffer);
        Some(())
    });
}

/// The major function code of a Filter Manager pseudo-operation, as `FLT_IO_PARAMETER_BLOCK`
/// holds it (`IRP_MJ_MDL_READ` is `(UCHAR)-15`).
fn pseudo_major(code: u16) -> u8 {
    code.to_le_bytes()[0]
}

fn result(outcome: Outcome) -> IoResult {
    match outcome {
        Outcome::Done(status, information) => IoResult {
            status,
            information,
            reissued: false,
        },
        // An IRP cannot be refused as fast I/O; fltsim reported the filter's misuse already.
        Outcome::FastIoDisallowed => IoResult {
            status: STATUS_INVALID_DEVICE_REQUEST,
            information: 0,
            reissued: false,
        },
    }
}

/// The length, offset and buffer of a transfer, as the filter left the parameters (the buffer is
/// NULL for the fast-I/O MDL operations).
fn lengths(direction: Direction, path: Path, p: &FLT_PARAMETERS) -> (u64, u64, *mut u8) {
    // SAFETY: the operation set the member for its major function; these are plain integers and
    // pointers, read, not dereferenced.
    let (length, offset, buffer) = unsafe {
        match (direction, path) {
            (Direction::Read, Path::FastMdl) => {
                (p.MdlRead.Length, p.MdlRead.FileOffset, std::ptr::null_mut())
            }
            (Direction::Write, Path::FastMdl) => (
                p.PrepareMdlWrite.Length,
                p.PrepareMdlWrite.FileOffset,
                std::ptr::null_mut(),
            ),
            (Direction::Read, _) => (p.Read.Length, p.Read.ByteOffset, p.Read.ReadBuffer),
            (Direction::Write, _) => (p.Write.Length, p.Write.ByteOffset, p.Write.WriteBuffer),
        }
    };
    (
        u64::from(length),
        u64::try_from(offset).unwrap_or(0),
        buffer.cast(),
    )
}

/// Whether the seeded policy refuses this fast I/O (xorshift64, advanced once per fast I/O).
fn seeded_refusal(v: &mut Volume) -> bool {
    match v.fast_io {
        FastIo::Possible => false,
        FastIo::Refused => true,
        FastIo::Seeded { seed, one_in } => {
            if v.fast_io_rng == 0 {
                v.fast_io_rng = seed | 1;
            }
            let mut x = v.fast_io_rng;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.fast_io_rng = x;
            one_in <= 1 || x.is_multiple_of(u64::from(one_in))
        }
    }
}

/// Whether `owner` may read (`write == false`) or write `[offset, offset + length)` of `stream`
/// ("`FsRtlFastCheckLockForRead`", "`FsRtlFastCheckLockForWrite`").
fn lock_allows(
    v: &Volume,
    stream: u128,
    owner: usize,
    write: bool,
    offset: u64,
    length: u64,
) -> bool {
    v.locks.get(&stream).is_none_or(|locks| {
        !locks.iter().any(|l| {
            l.owner != owner && (write || l.exclusive) && l.overlaps(offset, length.max(1))
        })
    })
}

/// A read or write as it reaches the file system.
#[derive(Clone, Copy)]
struct Request {
    direction: Direction,
    path: Path,
    length: u64,
    offset: u64,
    /// Where the data comes from or goes: `length` bytes.
    buffer: *mut u8,
}

/// The file system's read or write.
fn transfer_in_file_system(
    volume: isize,
    file_object: usize,
    request: Request,
) -> (NTSTATUS, usize) {
    let Request {
        direction,
        path,
        length,
        offset,
        buffer,
    } = request;
    world::with(|w| {
        let Some(state) = w.file_objects.get(&file_object) else {
            return (STATUS_INVALID_PARAMETER, 0);
        };
        let (node, stream, volume_open, cached) =
            (state.node, state.stream, state.volume_open, state.cached);
        let Some(v) = w.volume(volume).filter(|v| !v.removed) else {
            return (STATUS_VOLUME_DISMOUNTED, 0);
        };
        if volume_open {
            if path.fast() {
                return (STATUS_FLT_DISALLOW_FAST_IO, 0);
            }
            return if direction == Direction::Write && v.spec.read_only {
                (STATUS_MEDIA_WRITE_PROTECTED, 0)
            } else {
                (STATUS_SUCCESS, to_usize(length))
            };
        }
        let (Some(node), Some(stream)) = (node, stream) else {
            return (STATUS_INVALID_PARAMETER, 0);
        };
        let write = direction == Direction::Write;
        let lock_ok = lock_allows(v, stream, file_object, write, offset, length);
        if path.fast() && (!cached || !lock_ok || seeded_refusal(v)) {
            return (STATUS_FLT_DISALLOW_FAST_IO, 0);
        }
        if path == Path::NonCached && (offset % SECTOR != 0 || length % SECTOR != 0) {
            return (STATUS_INVALID_PARAMETER, 0);
        }
        if path != Path::Paging && !lock_ok {
            // "FsRtlCheckLockForReadAccess" / "FsRtlCheckLockForWriteAccess" in the IRP path.
            return (STATUS_FILE_LOCK_CONFLICT, 0);
        }
        let read_only = v.spec.read_only;
        let Some(file) = v.files.node_mut(node) else {
            return (STATUS_INVALID_PARAMETER, 0);
        };
        let index = stream_index(stream);
        if file.directory && index == 0 {
            return (STATUS_INVALID_DEVICE_REQUEST, 0);
        }
        let Some(data) = file.data_of_mut(index) else {
            return (STATUS_INVALID_PARAMETER, 0);
        };
        let bytes = if buffer.is_null() || length == 0 {
            &mut [][..]
        } else {
            // SAFETY: `buffer` holds `length` bytes: the caller's own buffer (its length), or one a
            // filter put in the parameters with the length it set there, valid for the operation.
            unsafe { std::slice::from_raw_parts_mut(buffer, to_usize(length)) }
        };
        let outcome = if direction == Direction::Read {
            if offset >= data.size() {
                (STATUS_END_OF_FILE, 0)
            } else {
                (STATUS_SUCCESS, data.read(offset, bytes))
            }
        } else if read_only {
            (STATUS_MEDIA_WRITE_PROTECTED, 0)
        } else if path == Path::Paging {
            // Paging writes never extend the file: the part past end of file is dropped.
            (STATUS_SUCCESS, data.write_within(offset, bytes))
        } else {
            data.write(offset, bytes);
            (STATUS_SUCCESS, bytes.len())
        };
        if matches!(path, Path::Cached | Path::IrpMdl)
            && !cached
            && let Some(state) = w.file_objects.get_mut(&file_object)
        {
            state.cached = true;
            let object = file_object as *mut windows_sys::Wdk::Foundation::FILE_OBJECT;
            // SAFETY: the file object belongs to the handle issuing this operation, which is alive
            // for its duration; only the file system writes `PrivateCacheMap`.
            unsafe { (*object).PrivateCacheMap = (&raw const PRIVATE_CACHE_MAP).cast_mut().cast() };
        }
        outcome
    })
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The file system's `IRP_MJ_LOCK_CONTROL` ("`FsRtlProcessFileLock`").
fn lock_in_file_system(
    volume: isize,
    file_object: usize,
    minor: u32,
    request: ByteRangeLock,
) -> (NTSTATUS, usize) {
    world::with(|w| {
        let Some(stream) = w.file_objects.get(&file_object).and_then(|f| f.stream) else {
            return (STATUS_INVALID_DEVICE_REQUEST, 0);
        };
        let Some(v) = w.volume(volume).filter(|v| !v.removed) else {
            return (STATUS_VOLUME_DISMOUNTED, 0);
        };
        let locks = v.locks.entry(stream).or_default();
        if minor == IRP_MN_LOCK {
            let conflict = locks.iter().any(|l| {
                l.owner != file_object
                    && (l.exclusive || request.exclusive)
                    && l.overlaps(request.offset, request.length)
            });
            if conflict {
                return (STATUS_LOCK_NOT_GRANTED, 0);
            }
            locks.push(request);
            return (STATUS_SUCCESS, 0);
        }
        let held = locks.iter().position(|l| {
            l.owner == file_object && l.offset == request.offset && l.length == request.length
        });
        match held {
            Some(index) => {
                locks.swap_remove(index);
                (STATUS_SUCCESS, 0)
            }
            None => (STATUS_RANGE_NOT_LOCKED, 0),
        }
    })
}

/// Drops the byte-range locks of `file_object` (its cleanup, "`FsRtlFastUnlockAll`").
pub(crate) fn unlock_all(w: &mut world::World, volume: isize, file_object: usize) {
    let Some(stream) = w.file_objects.get(&file_object).and_then(|f| f.stream) else {
        return;
    };
    if let Some(v) = w.volume(volume)
        && let Some(locks) = v.locks.get_mut(&stream)
    {
        locks.retain(|l| l.owner != file_object);
        if locks.is_empty() {
            v.locks.remove(&stream);
        }
    }
}
