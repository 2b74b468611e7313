//! The fixed layouts. Every field is a little-endian zerocopy integer (alignment 1), so a layout
//! reads from and writes to any byte offset; sizes are asserted below and every size is a multiple
//! of 8.

use zerocopy::little_endian::{I32, I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Starts every request (16 bytes).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct RequestHeader {
    /// [`crate::MAGIC`].
    pub magic: U32,
    /// [`crate::VERSION`].
    pub version: U16,
    /// A [`crate::Kind`].
    pub kind: U16,
    /// Bytes of the whole request, this header included.
    pub length: U32,
    /// Zero.
    pub reserved: U32,
}

/// Starts every answer (24 bytes).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct ResponseHeader {
    /// [`crate::MAGIC`].
    pub magic: U32,
    /// The driver's protocol version ([`crate::VERSION`] of the driver's build).
    pub version: U16,
    /// The request's kind (0 if it had none that could be read).
    pub kind: U16,
    /// Bytes of the answer written, this header included.
    pub length: U32,
    /// Bytes a complete answer needs (more than the output buffer with `STATUS_BUFFER_TOO_SMALL`).
    pub needed: U32,
    /// The `NTSTATUS` the message callback returned.
    pub status: I32,
    /// An [`crate::ErrorDetail`].
    pub error: U16,
    /// Zero.
    pub reserved: U16,
}

/// Where a dump continues (32 bytes). Opaque to clients: send back the `next` cursor of the
/// previous page, or [`Cursor::START`].
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct Cursor {
    /// 0: from the start; 1: after `key`; 2: the dump is complete.
    pub state: U32,
    /// Zero.
    pub reserved: U32,
    /// Ties the cursor to the volume and the driver load that handed it out.
    pub token: U64,
    /// The low 64 bits of the last file key handed out.
    pub key_low: U64,
    /// The high 64 bits of the last file key handed out.
    pub key_high: U64,
}

impl Cursor {
    /// The cursor of a dump's first page.
    pub const START: Self = Self {
        state: U32::ZERO,
        reserved: U32::ZERO,
        token: U64::ZERO,
        key_low: U64::ZERO,
        key_high: U64::ZERO,
    };
    /// `state` of [`Cursor::START`].
    pub const STATE_START: u32 = 0;
    /// `state` of a cursor after a key.
    pub const STATE_AFTER: u32 = 1;
    /// `state` of the cursor after the last page.
    pub const STATE_END: u32 = 2;

    /// Whether this cursor says the dump is complete.
    #[must_use]
    pub fn is_end(&self) -> bool {
        self.state.get() == Self::STATE_END
    }

    /// The file key a cursor in state "after" continues after.
    #[must_use]
    pub fn key(&self) -> u128 {
        u128::from(self.key_low.get()) | (u128::from(self.key_high.get()) << 64)
    }
}

/// The answer to [`crate::Kind::Hello`] (40 bytes).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct HelloReply {
    /// The driver's protocol version.
    pub protocol: U16,
    /// How many statistics the driver keeps per instance ([`crate::Stat::COUNT`] of its build).
    pub stat_count: U16,
    /// Driver version, major.
    pub driver_major: U16,
    /// Driver version, minor.
    pub driver_minor: U16,
    /// Driver version, patch.
    pub driver_patch: U16,
    /// Zero.
    pub reserved: U16,
    /// The `MaxEntriesPerInstance` setting in force.
    pub max_entries_per_instance: U32,
    /// Instances attached now.
    pub instances: U32,
    /// [`crate::MAX_REQUEST_BYTES`] of the driver's build.
    pub max_request: U32,
    /// [`crate::MAX_RESPONSE_BYTES`] of the driver's build.
    pub max_response: U32,
    /// Zero.
    pub reserved2: U32,
    /// The driver's system time (100 ns units since 1601, UTC) when it answered.
    pub system_time: I64,
}

/// The answer to [`crate::Kind::Instances`] (16 bytes), followed by `count` [`InstanceRecord`]s.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct InstancesReply {
    /// Records that follow.
    pub count: U32,
    /// Zero.
    pub reserved: U32,
    /// The driver's system time when it answered.
    pub system_time: I64,
}

/// Sums over the files an instance's table holds now (40 bytes).
#[derive(
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
)]
#[repr(C)]
pub struct Totals {
    /// Opens.
    pub opens: U64,
    /// Reads.
    pub reads: U64,
    /// Writes.
    pub writes: U64,
    /// Bytes requested by reads.
    pub bytes_read: U64,
    /// Bytes requested by writes.
    pub bytes_written: U64,
}

/// One instance (72 bytes), followed by `stat_count` [`StatValue`]s and `volume_units` UTF-16
/// units of volume name, padded with zeros to `length`.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct InstanceRecord {
    /// Bytes of the whole record (a multiple of 8).
    pub length: U32,
    /// The volume's `FLT_FILESYSTEM_TYPE`.
    pub file_system: U32,
    /// UTF-16 units of the volume name.
    pub volume_units: U16,
    /// Statistics that follow.
    pub stat_count: U16,
    /// Zero.
    pub reserved: U32,
    /// Files in the table.
    pub entries: U64,
    /// The table's bound on files.
    pub max_entries: U64,
    /// Sums over those files.
    pub totals: Totals,
}

/// One statistic (16 bytes): its [`crate::Stat`] id and value.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct StatValue {
    /// [`crate::Stat::id`]; a client shows ids it does not know by number.
    pub id: U16,
    /// Zero.
    pub reserved: [u8; 6],
    /// The counter.
    pub value: U64,
}

/// The answer to [`crate::Kind::Top`], [`crate::Kind::Dump`] and [`crate::Kind::Lookup`]
/// (48 bytes), followed by `count` [`FileRecord`]s.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct FilesReply {
    /// The driver's system time when it answered.
    pub system_time: I64,
    /// Records that follow.
    pub count: U32,
    /// Top and dump: files in the table; lookup: all matches (more than `count` past
    /// [`crate::MAX_MATCHES`]).
    pub total: U32,
    /// Dump: the cursor of the next page ([`Cursor::is_end`] after the last). Otherwise zero.
    pub next: Cursor,
}

/// One file (80 bytes), followed by `name_units` UTF-16 units of its name, padded with zeros to
/// `length`.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct FileRecord {
    /// Bytes of the whole record (a multiple of 8).
    pub length: U32,
    /// UTF-16 units of the name.
    pub name_units: U16,
    /// Zero.
    pub reserved: U16,
    /// The file key (file ID), low 64 bits.
    pub key_low: U64,
    /// The file key, high 64 bits.
    pub key_high: U64,
    /// Opens.
    pub opens: U64,
    /// Reads.
    pub reads: U64,
    /// Writes.
    pub writes: U64,
    /// Bytes requested by reads.
    pub bytes_read: U64,
    /// Bytes requested by writes.
    pub bytes_written: U64,
    /// System time of the first open.
    pub first_seen: I64,
    /// System time of the latest open, read or write.
    pub last_seen: I64,
}

impl FileRecord {
    /// The file key.
    #[must_use]
    pub fn key(&self) -> u128 {
        u128::from(self.key_low.get()) | (u128::from(self.key_high.get()) << 64)
    }
}

/// The answer to [`crate::Kind::Reset`] (16 bytes).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct ResetReply {
    /// Instances whose table was emptied.
    pub instances: U32,
    /// Zero.
    pub reserved: U32,
    /// Entries removed.
    pub entries_removed: U64,
}

const _: () = {
    assert!(size_of::<RequestHeader>() == 16);
    assert!(size_of::<ResponseHeader>() == 24);
    assert!(size_of::<Cursor>() == 32);
    assert!(size_of::<HelloReply>() == 40);
    assert!(size_of::<InstancesReply>() == 16);
    assert!(size_of::<Totals>() == 40);
    assert!(size_of::<InstanceRecord>() == 72);
    assert!(size_of::<StatValue>() == 16);
    assert!(size_of::<FilesReply>() == 48);
    assert!(size_of::<FileRecord>() == 80);
    assert!(size_of::<ResetReply>() == 16);
    assert!(align_of::<ResponseHeader>() == 1 && align_of::<FileRecord>() == 1);
};
