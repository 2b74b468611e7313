//! One message: checks the output buffer, copies the request in, validates it
//! (`iotally_protocol::request::parse`), builds the answer in a paged kernel buffer under the
//! tables' locks, releases them, then copies the answer out.
//!
//! Statuses (the protocol crate's table): a malformed request gets `STATUS_INVALID_PARAMETER`
//! and an `ErrorDetail`, another version `STATUS_NOT_SUPPORTED`, an answer that does not fit
//! `STATUS_BUFFER_TOO_SMALL` with the size it needs, an unknown volume
//! `STATUS_FLT_INSTANCE_NOT_FOUND`. No request changes a table except a reset; a refused one
//! changes nothing.
//!
//! # Dump cursors
//! A dump lists a table in ascending file-key order, from a cursor that holds the last key handed
//! out. Rehashing, inserts and evictions between pages do not disturb it: every file that stays in
//! the table for the whole dump appears exactly once; a file inserted or evicted meanwhile may or
//! may not appear; each entry's counters are those of the moment its page was read (pages are not
//! one snapshot). A cursor carries a token of the volume and of this load of the driver; another
//! volume's, or an earlier load's, is refused (`ErrorDetail::BadCursor`).

use core::cmp::Ordering;
use core::sync::atomic::Ordering as AtomicOrdering;

use allocator_api2::vec::Vec;
use iotally_protocol::reply::{Writer, file_record_len};
use iotally_protocol::request::{Name, Request, fold_ascii, parse};
use iotally_protocol::{
    Cursor, DriverVersion, ErrorDetail, FileRecord, FilesReply, HelloReply, InstanceRecord,
    InstancesReply, MAX_DUMP_PAGE, MAX_MATCHES, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES,
    OUTPUT_ALIGNMENT, ResetReply, ResponseHeader, SortKey, Stat, StatValue, Totals, VERSION,
};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::PFLT_INSTANCE;
use windows_sys::Wdk::System::SystemServices::KeQuerySystemTimePrecise;
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_BUFFER_TOO_SMALL, STATUS_DATATYPE_MISALIGNMENT, STATUS_FLT_INSTANCE_NOT_FOUND,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER, STATUS_NOT_SUPPORTED, STATUS_SUCCESS,
};
use zerocopy::{FromZeros, IntoBytes};

use super::instances::{Instances, file_system};
use super::user::{UserInput, UserOutput};
use crate::filter::InstanceContext;
use crate::pool::{PagedAllocator, tags};
use crate::table::{FileKey, MAX_NAME_UNITS, Table, Tally};

/// The driver's version, from its crate version.
const DRIVER_VERSION: DriverVersion = DriverVersion::parse(env!("CARGO_PKG_VERSION"));

/// Why a request was not answered: its status and what to tell the client.
type Failure = (NTSTATUS, ErrorDetail);

/// A failure without a detail (a status from the system).
fn plain(status: NTSTATUS) -> Failure {
    (status, ErrorDetail::None)
}

/// The current system time, in 100 ns units since 1601.
pub(super) fn now() -> i64 {
    let mut time = 0;
    // SAFETY: `time` is a valid out pointer; callable at any IRQL.
    unsafe { KeQuerySystemTimePrecise(&raw mut time) };
    time
}

/// Answers one message; returns the status and the bytes written to the output buffer.
pub(super) fn handle(input: UserInput, output: UserOutput) -> (NTSTATUS, u32) {
    if output.is_empty() {
        return (STATUS_INVALID_PARAMETER, 0);
    }
    if !output.is_aligned(OUTPUT_ALIGNMENT) {
        return (STATUS_DATATYPE_MISALIGNMENT, 0);
    }
    if output.len() < size_of::<ResponseHeader>() {
        return (STATUS_BUFFER_TOO_SMALL, 0);
    }
    let capacity = output.len().min(MAX_RESPONSE_BYTES as usize);
    let mut buffer = Vec::new_in(PagedAllocator::new(tags::PORT_REPLY));
    if buffer.try_reserve_exact(capacity).is_err() {
        return (STATUS_INSUFFICIENT_RESOURCES, 0);
    }
    buffer.resize(capacity, 0);
    let (status, length) = respond(input, &mut buffer);
    match output.copy_out(&buffer[..length]) {
        Ok(()) => (status, u32::try_from(length).unwrap_or(0)),
        Err(status) => (status, 0),
    }
}

/// Writes the answer (or the error header) into `buffer`; returns the status and its length.
fn respond(input: UserInput, buffer: &mut [u8]) -> (NTSTATUS, usize) {
    if input.len() == 0 {
        return header_only(
            buffer,
            0,
            STATUS_INVALID_PARAMETER,
            ErrorDetail::InputMissing,
            0,
        );
    }
    if input.len() > MAX_REQUEST_BYTES as usize {
        return header_only(
            buffer,
            0,
            STATUS_INVALID_PARAMETER,
            ErrorDetail::InputTooLong,
            0,
        );
    }
    let copy = match input.copy_in() {
        Ok(copy) => copy,
        Err(status) => return header_only(buffer, 0, status, ErrorDetail::None, 0),
    };
    let request = match parse(&copy) {
        Ok(request) => request,
        Err(refusal) => {
            let status = if refusal.detail == ErrorDetail::UnsupportedVersion {
                STATUS_NOT_SUPPORTED
            } else {
                STATUS_INVALID_PARAMETER
            };
            return header_only(buffer, refusal.kind, status, refusal.detail, 0);
        }
    };
    let kind = request.kind() as u16;
    let Some(mut writer) = Writer::new(buffer) else {
        return (STATUS_BUFFER_TOO_SMALL, 0);
    };
    let outcome = execute(&request, &mut writer);
    let (full, needed) = (writer.is_full(), writer.needed());
    match outcome {
        Err((status, detail)) => header_only(buffer, kind, status, detail, 0),
        Ok(()) if full => header_only(
            buffer,
            kind,
            STATUS_BUFFER_TOO_SMALL,
            ErrorDetail::OutputTooSmall,
            needed,
        ),
        Ok(()) => (
            STATUS_SUCCESS,
            writer.finish(kind, STATUS_SUCCESS, ErrorDetail::None),
        ),
    }
}

/// Writes a response header alone (an error, or the size needed); returns the status and 24.
fn header_only(
    buffer: &mut [u8],
    kind: u16,
    status: NTSTATUS,
    detail: ErrorDetail,
    needed: usize,
) -> (NTSTATUS, usize) {
    let length = size_of::<ResponseHeader>();
    let header = ResponseHeader {
        magic: iotally_protocol::MAGIC.into(),
        version: VERSION.into(),
        kind: kind.into(),
        length: u32::try_from(length).unwrap_or(0).into(),
        needed: u32::try_from(needed.max(length)).unwrap_or(u32::MAX).into(),
        status: status.into(),
        error: (detail as u16).into(),
        reserved: 0.into(),
    };
    buffer[..length].copy_from_slice(header.as_bytes());
    (status, length)
}

fn execute(request: &Request<Name<'_>>, w: &mut Writer<'_>) -> Result<(), Failure> {
    match request {
        Request::Hello => hello(w),
        Request::Instances => instances(w),
        Request::Top { volume, by, limit } => {
            with_instance(volume, |_, context| top(w, context, *by, *limit))?
        }
        Request::Dump {
            volume,
            max_entries,
            cursor,
        } => with_instance(volume, |_, context| dump(w, context, *max_entries, cursor))?,
        Request::Lookup { path } => lookup(w, path),
        Request::ResetVolume { volume } => {
            let removed = with_instance(volume, |_, context| context.tallies().write().clear())?;
            put_reset(w, 1, removed);
            Ok(())
        }
        Request::ResetAll => {
            let instances = Instances::of(super::filter()).map_err(plain)?;
            let (mut count, mut removed) = (0, 0);
            for (_, context) in instances.contexts() {
                removed += context.tallies().write().clear();
                count += 1;
            }
            put_reset(w, count, removed);
            Ok(())
        }
    }
}

/// Runs `f` with the instance whose volume is named `volume` (referenced while it runs).
fn with_instance<R>(
    volume: &Name<'_>,
    f: impl FnOnce(PFLT_INSTANCE, &InstanceContext) -> R,
) -> Result<R, Failure> {
    let instances = Instances::of(super::filter()).map_err(plain)?;
    let found = instances
        .contexts()
        .find(|(_, context)| volume.eq_ignore_ascii_case(context.volume_name()));
    match found {
        Some((instance, context)) => Ok(f(instance, &context)),
        None => Err((STATUS_FLT_INSTANCE_NOT_FOUND, ErrorDetail::NoSuchInstance)),
    }
}

fn hello(w: &mut Writer<'_>) -> Result<(), Failure> {
    let instances = Instances::of(super::filter()).map_err(plain)?;
    #[allow(clippy::cast_possible_truncation)] // Stat::COUNT is a handful
    let reply = HelloReply {
        protocol: VERSION.into(),
        stat_count: (Stat::COUNT as u16).into(),
        driver_major: DRIVER_VERSION.major.into(),
        driver_minor: DRIVER_VERSION.minor.into(),
        driver_patch: DRIVER_VERSION.patch.into(),
        reserved: 0.into(),
        max_entries_per_instance: u32::try_from(crate::filter::max_entries_per_instance())
            .unwrap_or(u32::MAX)
            .into(),
        instances: u32::try_from(instances.len()).unwrap_or(u32::MAX).into(),
        max_request: MAX_REQUEST_BYTES.into(),
        max_response: MAX_RESPONSE_BYTES.into(),
        reserved2: 0.into(),
        system_time: now().into(),
    };
    w.put(&reply);
    Ok(())
}

fn instances(w: &mut Writer<'_>) -> Result<(), Failure> {
    let instances = Instances::of(super::filter()).map_err(plain)?;
    let offset = w.len();
    let mut reply = InstancesReply::new_zeroed();
    reply.system_time = now().into();
    w.put(&reply);
    let mut count = 0_u32;
    for (instance, context) in instances.contexts() {
        let fs = file_system(instance);
        let table = context.tallies().read();
        let mut record = InstanceRecord::new_zeroed();
        record.file_system = fs.cast_unsigned().into();
        record.entries = (table.len() as u64).into();
        record.max_entries = (table.max_entries() as u64).into();
        record.totals = totals(&table);
        let snapshot = table.stats();
        let stats = Stat::ALL.map(|stat| StatValue {
            id: stat.id().into(),
            reserved: [0; 6],
            value: snapshot.get(stat).into(),
        });
        w.instance_record(
            &record,
            stats.into_iter(),
            context.volume_name().iter().copied(),
        );
        count += 1;
    }
    reply.count = count.into();
    w.patch(offset, &reply);
    Ok(())
}

/// Sums of the counters of every file in `table`, saturating.
fn totals(table: &Table<PagedAllocator>) -> Totals {
    let mut sums = [0_u64; 5];
    for (_, tally) in table.iter() {
        let c = tally.counts();
        for (sum, value) in
            sums.iter_mut()
                .zip([c.opens, c.reads, c.writes, c.bytes_read, c.bytes_written])
        {
            *sum = sum.saturating_add(value);
        }
    }
    Totals {
        opens: sums[0].into(),
        reads: sums[1].into(),
        writes: sums[2].into(),
        bytes_read: sums[3].into(),
        bytes_written: sums[4].into(),
    }
}

/// The wire record of one tally.
fn file_record(key: FileKey, tally: &Tally) -> FileRecord {
    let c = tally.counts();
    let mut record = FileRecord::new_zeroed();
    #[allow(clippy::cast_possible_truncation)] // the two halves of the key
    {
        record.key_low = (key.0 as u64).into();
        record.key_high = ((key.0 >> 64) as u64).into();
    }
    record.opens = c.opens.into();
    record.reads = c.reads.into();
    record.writes = c.writes.into();
    record.bytes_read = c.bytes_read.into();
    record.bytes_written = c.bytes_written.into();
    record.first_seen = c.first_seen.into();
    record.last_seen = c.last_seen.into();
    record
}

/// Ranks `(score, key)` pairs: `Less` is better.
type Rank = fn(&(u64, u128), &(u64, u128)) -> Ordering;

/// Score descending, then key ascending.
fn by_score(a: &(u64, u128), b: &(u64, u128)) -> Ordering {
    b.0.cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Key ascending.
fn by_key(a: &(u64, u128), b: &(u64, u128)) -> Ordering {
    a.1.cmp(&b.1)
}

/// The best `limit` entries of `table` (by `rank`) among those `keep` accepts, best first, in
/// O(n) time and `2 * limit` memory.
fn select(
    table: &Table<PagedAllocator>,
    limit: usize,
    score: impl Fn(&FileRecord) -> u64,
    keep: impl Fn(u128) -> bool,
    rank: Rank,
) -> Result<Vec<(u64, u128), PagedAllocator>, Failure> {
    let mut chosen = Vec::new_in(PagedAllocator::new(tags::PORT_REPLY));
    let room = limit.min(table.len()).saturating_mul(2).max(1);
    chosen
        .try_reserve_exact(room)
        .map_err(|_| plain(STATUS_INSUFFICIENT_RESOURCES))?;
    for (key, tally) in table.iter() {
        if !keep(key.0) {
            continue;
        }
        if chosen.len() == room {
            chosen.select_nth_unstable_by(limit - 1, rank);
            chosen.truncate(limit);
        }
        chosen.push((score(&file_record(key, tally)), key.0));
    }
    chosen.sort_unstable_by(rank);
    chosen.truncate(limit);
    Ok(chosen)
}

fn top(
    w: &mut Writer<'_>,
    context: &InstanceContext,
    by: SortKey,
    limit: u32,
) -> Result<(), Failure> {
    let table = context.tallies().read();
    let chosen = select(
        &table,
        limit as usize,
        |record| by.score(record),
        |_| true,
        by_score,
    )?;
    let offset = w.len();
    let mut reply = FilesReply::new_zeroed();
    reply.system_time = now().into();
    reply.total = u32::try_from(table.len()).unwrap_or(u32::MAX).into();
    w.put(&reply);
    let mut count = 0_u32;
    for &(_, key) in &chosen {
        if let Some(tally) = table.get(FileKey(key)) {
            w.file_record(
                &file_record(FileKey(key), tally),
                tally.name().iter().copied(),
            );
            count += 1;
        }
    }
    reply.count = count.into();
    w.patch(offset, &reply);
    Ok(())
}

/// The token of cursors for the volume named `volume` in this load of the driver: FNV-1a of the
/// case-folded name, mixed with the load's time.
fn cursor_token(volume: &[u16]) -> u64 {
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for &unit in volume {
        for byte in fold_ascii(unit).to_le_bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    (hash
        ^ super::LOAD_TOKEN
            .load(AtomicOrdering::Relaxed)
            .cast_unsigned())
    .max(1)
}

fn dump(
    w: &mut Writer<'_>,
    context: &InstanceContext,
    max_entries: u32,
    cursor: &Cursor,
) -> Result<(), Failure> {
    let token = cursor_token(context.volume_name());
    let after = match cursor.state.get() {
        Cursor::STATE_START => None,
        Cursor::STATE_AFTER if cursor.token.get() == token => Some(cursor.key()),
        Cursor::STATE_END if cursor.token.get() == token => Some(u128::MAX),
        _ => return Err((STATUS_INVALID_PARAMETER, ErrorDetail::BadCursor)),
    };
    let page = if max_entries == 0 {
        MAX_DUMP_PAGE
    } else {
        max_entries
    } as usize;
    let table = context.tallies().read();
    let chosen = if after == Some(u128::MAX) {
        Vec::new_in(PagedAllocator::new(tags::PORT_REPLY))
    } else {
        select(
            &table,
            page,
            |_| 0,
            |key| after.is_none_or(|a| key > a),
            by_key,
        )?
    };
    let offset = w.len();
    let mut reply = FilesReply::new_zeroed();
    reply.system_time = now().into();
    reply.total = u32::try_from(table.len()).unwrap_or(u32::MAX).into();
    w.put(&reply);
    let mut written = 0_usize;
    let mut last = None;
    for &(_, key) in &chosen {
        let Some(tally) = table.get(FileKey(key)) else {
            continue;
        };
        let record = file_record(FileKey(key), tally);
        if file_record_len(tally.name().len()) > w.remaining() {
            if written == 0 {
                // Not even one entry fits: counted in `needed`, the answer is "too small".
                w.file_record(&record, tally.name().iter().copied());
            }
            break;
        }
        w.file_record(&record, tally.name().iter().copied());
        written += 1;
        last = Some(key);
    }
    let complete = written == chosen.len() && chosen.len() < page;
    reply.count = u32::try_from(written).unwrap_or(u32::MAX).into();
    reply.next = Cursor {
        state: if complete {
            Cursor::STATE_END
        } else {
            Cursor::STATE_AFTER
        }
        .into(),
        reserved: 0.into(),
        token: token.into(),
        key_low: 0.into(),
        key_high: 0.into(),
    };
    if let (false, Some(key)) = (complete, last) {
        #[allow(clippy::cast_possible_truncation)] // the two halves of the key
        {
            reply.next.key_low = (key as u64).into();
            reply.next.key_high = ((key >> 64) as u64).into();
        }
    }
    w.patch(offset, &reply);
    Ok(())
}

/// Whether a stored name is `path`: equal ignoring ASCII case, or the kept tail of a name longer
/// than the table keeps (`MAX_NAME_UNITS`).
fn name_matches(stored: &[u16], path: &[u16]) -> bool {
    let eq = |a: &[u16], b: &[u16]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(&x, &y)| fold_ascii(x) == fold_ascii(y))
    };
    eq(stored, path)
        || (stored.len() == MAX_NAME_UNITS
            && path.len() > MAX_NAME_UNITS
            && eq(stored, &path[path.len() - MAX_NAME_UNITS..]))
}

fn lookup(w: &mut Writer<'_>, path: &Name<'_>) -> Result<(), Failure> {
    let mut units = Vec::new_in(PagedAllocator::new(tags::PORT_REPLY));
    units
        .try_reserve_exact(path.len())
        .map_err(|_| plain(STATUS_INSUFFICIENT_RESOURCES))?;
    units.extend(path.units());
    let instances = Instances::of(super::filter()).map_err(plain)?;
    let offset = w.len();
    let mut reply = FilesReply::new_zeroed();
    reply.system_time = now().into();
    w.put(&reply);
    let (mut count, mut total) = (0_u32, 0_u32);
    for (_, context) in instances.contexts() {
        let volume = context.volume_name();
        let on_volume = units.len() > volume.len()
            && units[volume.len()] == u16::from(b'\\')
            && name_matches(volume, &units[..volume.len()]);
        if !on_volume {
            continue;
        }
        let table = context.tallies().read();
        for (key, tally) in table.iter() {
            if !name_matches(tally.name(), &units) {
                continue;
            }
            total = total.saturating_add(1);
            if count < MAX_MATCHES {
                w.file_record(&file_record(key, tally), tally.name().iter().copied());
                count += 1;
            }
        }
    }
    reply.count = count.into();
    reply.total = total.into();
    w.patch(offset, &reply);
    Ok(())
}

fn put_reset(w: &mut Writer<'_>, instances: u32, removed: usize) {
    w.put(&ResetReply {
        instances: instances.into(),
        reserved: 0.into(),
        entries_removed: (removed as u64).into(),
    });
}
