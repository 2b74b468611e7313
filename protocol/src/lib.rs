//! The messages between the iotally driver and `iotallyctl`, defined once for both sides.
//!
//! `no_std`, no allocation, no pointers: every layout is fixed, little-endian and byte-aligned
//! (zerocopy's `U16`/`U32`/`U64` fields), with its size asserted at compile time, so that a message
//! is read and written the same way on every machine. Every variable part has an explicit length.
//!
//! # One exchange
//! A client sends one request (`FilterSendMessage`) made of a [`RequestHeader`], a fixed body for
//! its [`Kind`], and for some kinds a UTF-16 name whose length (in code units) the body gives; the
//! header's `length` is the exact length of the whole request. The driver answers into the output
//! buffer with a [`ResponseHeader`] followed by the kind's reply. See [`request`] and [`reply`].
//!
//! # Statuses
//! The message callback's `NTSTATUS` (and the `status` field of the response header, written
//! whenever the output buffer can hold one):
//!
//! | status | when | the response header says |
//! |---|---|---|
//! | `STATUS_SUCCESS` | answered | `length`: bytes of the answer |
//! | `STATUS_INVALID_PARAMETER` | malformed request | `error`: which [`ErrorDetail`] |
//! | `STATUS_NOT_SUPPORTED` | `version` is not [`VERSION`] | `version`: the driver's |
//! | `STATUS_BUFFER_TOO_SMALL` | the answer does not fit | `needed`: bytes it needs |
//! | `STATUS_FLT_INSTANCE_NOT_FOUND` | no iotally instance on the named volume | |
//! | `STATUS_INVALID_USER_BUFFER` | the input or output buffer could not be accessed | nothing (unwritable) |
//! | `STATUS_DATATYPE_MISALIGNMENT` | output not aligned to [`OUTPUT_ALIGNMENT`] | nothing |
//! | `STATUS_INSUFFICIENT_RESOURCES` | a pool allocation failed | |
//!
//! An output buffer that is NULL or empty gets `STATUS_INVALID_PARAMETER`; one shorter than
//! [`ResponseHeader`] gets `STATUS_BUFFER_TOO_SMALL` with nothing written. A client clears the
//! header area before sending, so that it never mistakes stale bytes for an answer.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod reply;
pub mod request;
mod stat;
mod wire;

pub use stat::Stat;
pub use wire::{
    Cursor, FileRecord, FilesReply, HelloReply, InstanceRecord, InstancesReply, RequestHeader,
    ResetReply, ResponseHeader, StatValue, Totals,
};

/// The driver's communication server port.
pub const PORT_NAME: &str = r"\iotally";

/// The protocol version this crate speaks; requests with another version get
/// `STATUS_NOT_SUPPORTED`.
pub const VERSION: u16 = 1;

/// First four bytes of every request and response: `ITly`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"ITly");

/// The longest name (volume name or file path) a request carries, in UTF-16 code units.
pub const MAX_NAME_UNITS: u16 = 4096;

/// The longest request the driver accepts: a header, the largest fixed body and the longest name.
pub const MAX_REQUEST_BYTES: u32 = 16 + 40 + 2 * MAX_NAME_UNITS as u32;

/// The most bytes the driver writes for one request: a dump page stops there, and the complete
/// answers (instances, top, lookup) are bounded below it by [`MAX_TOP`] and [`MAX_MATCHES`].
pub const MAX_RESPONSE_BYTES: u32 = 1 << 20;

/// The output buffer must be aligned to this many bytes (`STATUS_DATATYPE_MISALIGNMENT`
/// otherwise). Every record length is a multiple of it, so a client may overlay the layouts on an
/// aligned buffer.
pub const OUTPUT_ALIGNMENT: usize = 8;

/// The largest `limit` of a [`Kind::Top`] request.
pub const MAX_TOP: u32 = 1000;

/// The most entries one dump page holds (a request's `max_entries` of 0 means this many).
pub const MAX_DUMP_PAGE: u32 = 1024;

/// The most matches a [`Kind::Lookup`] returns; the reply's `total` says how many there were.
pub const MAX_MATCHES: u32 = 256;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Kind {
    /// Protocol and driver versions, settings, the number of instances: a [`HelloReply`].
    Hello = 1,
    /// Every instance with its statistics: an [`InstancesReply`] and one [`InstanceRecord`] each.
    Instances = 2,
    /// The files of one instance with the largest value of a [`SortKey`]: a [`FilesReply`].
    Top = 3,
    /// One page of an instance's whole table, in file-key order, from a [`Cursor`].
    Dump = 4,
    /// The files whose name is a given path, on every instance: a [`FilesReply`].
    Lookup = 5,
    /// Empties the table of one instance or all, and zeroes its statistics: a [`ResetReply`].
    Reset = 6,
}

impl Kind {
    /// The kind with wire value `value`.
    #[must_use]
    pub fn from_wire(value: u16) -> Option<Self> {
        [
            Self::Hello,
            Self::Instances,
            Self::Top,
            Self::Dump,
            Self::Lookup,
            Self::Reset,
        ]
        .into_iter()
        .find(|kind| *kind as u16 == value)
    }
}

/// The counter a [`Kind::Top`] request ranks files by (largest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum SortKey {
    /// Successful opens.
    Opens = 0,
    /// Read requests.
    Reads = 1,
    /// Write requests.
    Writes = 2,
    /// Bytes requested by reads.
    BytesRead = 3,
    /// Bytes requested by writes.
    BytesWritten = 4,
    /// Time of the latest open, read or write.
    LastSeen = 5,
    /// Bytes read and written together.
    Bytes = 6,
}

impl SortKey {
    /// Every sort key, in wire order.
    pub const ALL: [Self; 7] = [
        Self::Opens,
        Self::Reads,
        Self::Writes,
        Self::BytesRead,
        Self::BytesWritten,
        Self::LastSeen,
        Self::Bytes,
    ];

    /// The key with wire value `value`.
    #[must_use]
    pub fn from_wire(value: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|key| *key as u16 == value)
    }

    /// The value of this key for a record (last seen as its bit pattern, which orders the same
    /// for the non-negative times the driver records).
    #[must_use]
    pub fn score(self, record: &FileRecord) -> u64 {
        match self {
            Self::Opens => record.opens.get(),
            Self::Reads => record.reads.get(),
            Self::Writes => record.writes.get(),
            Self::BytesRead => record.bytes_read.get(),
            Self::BytesWritten => record.bytes_written.get(),
            Self::LastSeen => u64::try_from(record.last_seen.get()).unwrap_or(0),
            Self::Bytes => record
                .bytes_read
                .get()
                .saturating_add(record.bytes_written.get()),
        }
    }
}

/// Which tables a [`Kind::Reset`] empties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ResetScope {
    /// The instance on the named volume.
    Volume = 1,
    /// Every instance (the request names no volume).
    All = 2,
}

impl ResetScope {
    /// The scope with wire value `value`.
    #[must_use]
    pub fn from_wire(value: u16) -> Option<Self> {
        [Self::Volume, Self::All]
            .into_iter()
            .find(|scope| *scope as u16 == value)
    }
}

/// Why the driver refused a request: the `error` field of the response header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorDetail {
    /// No error.
    None = 0,
    /// No input buffer, or an empty one.
    InputMissing = 1,
    /// Shorter than its header or than its kind's body and name.
    InputTooShort = 2,
    /// Longer than [`MAX_REQUEST_BYTES`] or than its header, body and name.
    InputTooLong = 3,
    /// The first four bytes are not [`MAGIC`].
    BadMagic = 4,
    /// The header's `length` is not the input's length.
    LengthMismatch = 5,
    /// A reserved field is not zero.
    ReservedNotZero = 6,
    /// The header's `kind` is no [`Kind`].
    UnknownKind = 7,
    /// A [`Kind::Top`] request's `by` is no [`SortKey`].
    UnknownSortKey = 8,
    /// A [`Kind::Reset`] request's `scope` is no [`ResetScope`], or names a volume with
    /// [`ResetScope::All`].
    UnknownScope = 9,
    /// A [`Kind::Dump`] cursor this driver did not hand out for this volume.
    BadCursor = 10,
    /// A name longer than [`MAX_NAME_UNITS`].
    NameTooLong = 11,
    /// A `limit` or `max_entries` outside its range.
    LimitOutOfRange = 12,
    /// A request that needs a name has none.
    NameMissing = 13,
    /// The request's version is not the driver's ([`VERSION`]).
    UnsupportedVersion = 14,
    /// No iotally instance is attached to the named volume.
    NoSuchInstance = 15,
    /// The output buffer is too small for the answer; `needed` says how large it must be.
    OutputTooSmall = 16,
}

impl ErrorDetail {
    /// Every detail, in wire order.
    pub const ALL: [Self; 17] = [
        Self::None,
        Self::InputMissing,
        Self::InputTooShort,
        Self::InputTooLong,
        Self::BadMagic,
        Self::LengthMismatch,
        Self::ReservedNotZero,
        Self::UnknownKind,
        Self::UnknownSortKey,
        Self::UnknownScope,
        Self::BadCursor,
        Self::NameTooLong,
        Self::LimitOutOfRange,
        Self::NameMissing,
        Self::UnsupportedVersion,
        Self::NoSuchInstance,
        Self::OutputTooSmall,
    ];

    /// The detail with wire value `value`.
    #[must_use]
    pub fn from_wire(value: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|detail| *detail as u16 == value)
    }

    /// What it means, for an error message.
    #[must_use]
    pub const fn describe(self) -> &'static str {
        match self {
            Self::None => "no error",
            Self::InputMissing => "the request is empty",
            Self::InputTooShort => "the request is shorter than its layout",
            Self::InputTooLong => "the request is longer than its layout",
            Self::BadMagic => "the request does not start with the protocol's magic number",
            Self::LengthMismatch => "the request's length field is not its length",
            Self::ReservedNotZero => "a reserved field of the request is not zero",
            Self::UnknownKind => "unknown request kind",
            Self::UnknownSortKey => "unknown sort key",
            Self::UnknownScope => "unknown reset scope",
            Self::BadCursor => "the dump cursor was not handed out by this driver for this volume",
            Self::NameTooLong => "a name in the request is too long",
            Self::LimitOutOfRange => "a limit in the request is out of range",
            Self::NameMissing => "the request names no volume",
            Self::UnsupportedVersion => "the driver speaks another protocol version",
            Self::NoSuchInstance => "iotally is not attached to that volume",
            Self::OutputTooSmall => "the output buffer is too small for the answer",
        }
    }
}

/// The driver's version, from its crate version, as three numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverVersion {
    /// Major.
    pub major: u16,
    /// Minor.
    pub minor: u16,
    /// Patch.
    pub patch: u16,
}

impl DriverVersion {
    /// Parses `major.minor.patch` (a suffix such as `-rc1` after the patch number is ignored) at
    /// compile time; a malformed part reads as 0.
    #[must_use]
    pub const fn parse(text: &str) -> Self {
        let bytes = text.as_bytes();
        let mut parts = [0_u16; 3];
        let mut part = 0;
        let mut i = 0;
        while i < bytes.len() && part < 3 {
            let b = bytes[i];
            if b == b'.' {
                part += 1;
            } else if b.is_ascii_digit() {
                parts[part] = parts[part]
                    .saturating_mul(10)
                    .saturating_add((b - b'0') as u16);
            } else {
                break;
            }
            i += 1;
        }
        Self {
            major: parts[0],
            minor: parts[1],
            patch: parts[2],
        }
    }
}

/// Rounds `n` up to a multiple of 8 (record lengths), saturating.
#[must_use]
pub const fn pad8(n: usize) -> usize {
    match n.checked_add(7) {
        Some(m) => m & !7,
        None => usize::MAX & !7,
    }
}

#[cfg(test)]
mod tests {
    use super::{DriverVersion, ErrorDetail, Kind, ResetScope, SortKey, pad8};

    #[test]
    fn wire_values_round_trip_and_unknown_ones_are_refused() {
        for value in 0..64 {
            if let Some(kind) = Kind::from_wire(value) {
                assert_eq!(kind as u16, value);
            }
            if let Some(key) = SortKey::from_wire(value) {
                assert_eq!(key as u16, value);
            }
            if let Some(detail) = ErrorDetail::from_wire(value) {
                assert_eq!(detail as u16, value);
            }
        }
        assert_eq!(Kind::from_wire(0), None);
        assert_eq!(Kind::from_wire(7), None);
        assert_eq!(SortKey::from_wire(7), None);
        assert_eq!(ResetScope::from_wire(0), None);
        for (i, detail) in ErrorDetail::ALL.iter().enumerate() {
            assert_eq!(usize::from(*detail as u16), i);
        }
    }

    #[test]
    fn versions_parse_at_compile_time() {
        const V: DriverVersion = DriverVersion::parse("1.22.3-rc1");
        assert_eq!((V.major, V.minor, V.patch), (1, 22, 3));
        assert_eq!(DriverVersion::parse("x").major, 0);
    }

    #[test]
    fn padding_rounds_up_to_eight() {
        assert_eq!(pad8(0), 0);
        assert_eq!(pad8(1), 8);
        assert_eq!(pad8(80), 80);
        assert_eq!(pad8(81), 88);
    }
}
