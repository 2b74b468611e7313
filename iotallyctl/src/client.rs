//! The requests of the protocol as typed calls, over any [`Transport`].

use std::fmt;

use iotally_protocol::reply::{self, Malformed};
use iotally_protocol::request::{Request, encode, encoded_len};
use iotally_protocol::{
    Cursor, ErrorDetail, FileRecord, FilesReply, HelloReply, InstancesReply, MAX_RESPONSE_BYTES,
    ResetReply, ResponseHeader, SortKey, Stat, VERSION,
};
use serde::Serialize;
use zerocopy::FromBytes;

use crate::transport::{Code, Transport};

/// `STATUS_BUFFER_TOO_SMALL`.
const STATUS_BUFFER_TOO_SMALL: i32 = 0xC000_0023_u32.cast_signed();
/// `STATUS_NOT_SUPPORTED`.
const STATUS_NOT_SUPPORTED: i32 = 0xC000_00BB_u32.cast_signed();
/// `STATUS_FLT_INSTANCE_NOT_FOUND`.
const STATUS_FLT_INSTANCE_NOT_FOUND: i32 = 0xC01C_0015_u32.cast_signed();

/// The first reply buffer; answers that need more say so and are asked again.
const FIRST_BUFFER: usize = 64 * 1024;

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The driver speaks another protocol version.
    VersionMismatch {
        /// The driver's.
        driver: u16,
    },
    /// iotally has no instance on that volume.
    NoInstance(String),
    /// The driver refused the request.
    Refused {
        /// Its `NTSTATUS`.
        status: i32,
        /// What it said was wrong.
        detail: Option<ErrorDetail>,
    },
    /// The call failed before the driver answered (the port disconnected, a bad buffer).
    Transport(Code),
    /// The answer does not follow the protocol.
    Malformed(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::VersionMismatch { driver } => write!(
                f,
                "version mismatch: the driver speaks protocol {driver}, this iotallyctl speaks \
                 {VERSION}; use the iotallyctl built with the driver"
            ),
            Self::NoInstance(volume) => write!(f, "iotally is not attached to {volume}"),
            Self::Refused { status, detail } => {
                write!(
                    f,
                    "the driver refused the request ({:#010x}",
                    status.cast_unsigned()
                )?;
                match detail {
                    Some(detail) if *detail != ErrorDetail::None => {
                        write!(f, ": {})", detail.describe())
                    }
                    _ => write!(f, ")"),
                }
            }
            Self::Transport(code) => write!(f, "the request to the driver failed: {code}"),
            Self::Malformed(what) => write!(f, "the driver's answer is malformed: {what}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Malformed> for Error {
    fn from(m: Malformed) -> Self {
        Self::Malformed(m.0)
    }
}

/// What `hello` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hello {
    /// The driver's protocol version.
    pub protocol: u16,
    /// The driver's version, `major.minor.patch`.
    pub driver_version: String,
    /// The `MaxEntriesPerInstance` setting.
    pub max_entries_per_instance: u32,
    /// Instances attached.
    pub instances: u32,
}

/// Sums over the files of a table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Opens.
    pub opens: u64,
    /// Reads.
    pub reads: u64,
    /// Writes.
    pub writes: u64,
    /// Bytes requested by reads.
    pub bytes_read: u64,
    /// Bytes requested by writes.
    pub bytes_written: u64,
}

/// One statistic by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatEntry {
    /// [`Stat::name`], or `stat_<id>` for an id this build does not know.
    pub name: String,
    /// [`Stat::description`] (empty for an unknown id).
    pub description: String,
    /// The counter.
    pub value: u64,
}

/// One instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Instance {
    /// The volume's device name.
    pub volume: String,
    /// Its drive letter, if it has one.
    pub drive: Option<String>,
    /// The file system.
    pub file_system: String,
    /// Files in the table.
    pub entries: u64,
    /// The table's bound.
    pub max_entries: u64,
    /// Sums over the files in the table.
    pub totals: Totals,
    /// Every statistic the driver keeps, in id order.
    pub stats: Vec<StatEntry>,
}

/// One file's tallies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct File {
    /// The name as first opened (full path with the volume's device name).
    pub name: String,
    /// The file ID, in hex.
    pub file_id: String,
    /// Opens.
    pub opens: u64,
    /// Reads.
    pub reads: u64,
    /// Writes.
    pub writes: u64,
    /// Bytes requested by reads.
    pub bytes_read: u64,
    /// Bytes requested by writes.
    pub bytes_written: u64,
    /// System time of the first open (100 ns since 1601, UTC).
    pub first_seen: i64,
    /// System time of the latest open, read or write.
    pub last_seen: i64,
}

impl File {
    fn from_record(record: &FileRecord, name: &[zerocopy::little_endian::U16]) -> Self {
        let units: Vec<u16> = name.iter().map(|u| u.get()).collect();
        Self {
            name: String::from_utf16_lossy(&units),
            file_id: format!("{:032x}", record.key()),
            opens: record.opens.get(),
            reads: record.reads.get(),
            writes: record.writes.get(),
            bytes_read: record.bytes_read.get(),
            bytes_written: record.bytes_written.get(),
            first_seen: record.first_seen.get(),
            last_seen: record.last_seen.get(),
        }
    }
}

/// A list of files and the driver's clock when it answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Files {
    /// The driver's system time.
    pub system_time: i64,
    /// Top and dump: files in the table. Lookup: all matches.
    pub total: u32,
    /// The files.
    pub files: Vec<File>,
}

/// What a reset did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Reset {
    /// Instances emptied.
    pub instances: u32,
    /// Entries removed.
    pub entries_removed: u64,
}

/// The name of an `FLT_FILESYSTEM_TYPE`.
#[must_use]
pub fn file_system_name(value: u32) -> String {
    // FLT_FSTYPE_* in fltuser.h order.
    const NAMES: [&str; 31] = [
        "unknown",
        "raw",
        "ntfs",
        "fat",
        "cdfs",
        "udfs",
        "lanman",
        "webdav",
        "rdpdr",
        "nfs",
        "ms_netware",
        "netware",
        "bsudf",
        "mup",
        "rsfx",
        "roxio_udf1",
        "roxio_udf2",
        "roxio_udf3",
        "tacit",
        "fs_rec",
        "incd",
        "incd_fat",
        "exfat",
        "psfs",
        "gpfs",
        "npfs",
        "msfs",
        "csvfs",
        "refs",
        "openafs",
        "cimfs",
    ];
    NAMES
        .get(value as usize)
        .map_or_else(|| format!("type {value}"), |&name| name.to_owned())
}

/// A reply buffer: 8-byte aligned bytes.
struct Buffer(Vec<u64>);

impl Buffer {
    fn new(bytes: usize) -> Self {
        Self(vec![0; bytes.div_ceil(8)])
    }

    fn bytes(&self) -> &[u8] {
        zerocopy::IntoBytes::as_bytes(self.0.as_slice())
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        zerocopy::IntoBytes::as_mut_bytes(self.0.as_mut_slice())
    }
}

/// The client: typed requests over a transport.
pub struct Client<T> {
    transport: T,
}

impl<T: Transport> Client<T> {
    /// A client over `transport`.
    pub fn new(transport: T) -> Self {
        Self { transport }
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Sends `request` and returns the answer's bytes (header included), asking again with a
    /// larger buffer while the driver says it needs one.
    fn exchange(&mut self, request: &Request<&[u16]>) -> Result<Vec<u8>, Error> {
        let mut bytes = vec![0; encoded_len(request)];
        encode(request, &mut bytes).ok_or(Error::Malformed("a name is too long to send"))?;
        let mut size = FIRST_BUFFER;
        loop {
            let mut reply = Buffer::new(size);
            let sent = self.transport.send(&bytes, reply.bytes_mut());
            let header = reply::header(reply.bytes());
            match (sent, header) {
                (_, Some(h)) if h.status.get() >= 0 => {
                    let length = usize::try_from(h.length.get()).unwrap_or(usize::MAX);
                    return reply
                        .bytes()
                        .get(..length)
                        .map(<[u8]>::to_vec)
                        .ok_or(Error::Malformed("the answer's length exceeds the buffer"));
                }
                (_, Some(h)) if h.status.get() == STATUS_BUFFER_TOO_SMALL => {
                    let needed = usize::try_from(h.needed.get()).unwrap_or(usize::MAX);
                    if needed <= size || needed > MAX_RESPONSE_BYTES as usize {
                        return Err(Error::Malformed("the driver asks for an impossible size"));
                    }
                    size = needed;
                }
                (_, Some(h)) => return Err(refusal(&h, request)),
                (Err(code), None) => return Err(Error::Transport(code)),
                (Ok(()), None) => return Err(Error::Malformed("no response header")),
            }
        }
    }

    /// Protocol and driver versions and settings.
    ///
    /// # Errors
    /// See [`Error`].
    pub fn hello(&mut self) -> Result<Hello, Error> {
        let answer = self.exchange(&Request::Hello)?;
        let (h, _) = answer_body::<HelloReply>(&answer)?;
        Ok(Hello {
            protocol: h.protocol.get(),
            driver_version: format!(
                "{}.{}.{}",
                h.driver_major.get(),
                h.driver_minor.get(),
                h.driver_patch.get()
            ),
            max_entries_per_instance: h.max_entries_per_instance.get(),
            instances: h.instances.get(),
        })
    }

    /// Every instance, and the driver's clock.
    ///
    /// # Errors
    /// See [`Error`].
    pub fn instances(&mut self) -> Result<(i64, Vec<Instance>), Error> {
        let answer = self.exchange(&Request::Instances)?;
        let (reply, rest) = answer_body::<InstancesReply>(&answer)?;
        let drives = self.transport.drives();
        let mut instances = Vec::new();
        for parts in reply::instance_records(rest, reply.count.get()) {
            let (record, stats, name) = parts?;
            let units: Vec<u16> = name.iter().map(|u| u.get()).collect();
            let volume = String::from_utf16_lossy(&units);
            let t = &record.totals;
            instances.push(Instance {
                drive: drives
                    .iter()
                    .find(|(_, device)| device.eq_ignore_ascii_case(&volume))
                    .map(|(drive, _)| drive.clone()),
                volume,
                file_system: file_system_name(record.file_system.get()),
                entries: record.entries.get(),
                max_entries: record.max_entries.get(),
                totals: Totals {
                    opens: t.opens.get(),
                    reads: t.reads.get(),
                    writes: t.writes.get(),
                    bytes_read: t.bytes_read.get(),
                    bytes_written: t.bytes_written.get(),
                },
                stats: stats
                    .iter()
                    .map(|s| {
                        let id = s.id.get();
                        let known = Stat::from_id(id);
                        StatEntry {
                            name: known.map_or_else(|| format!("stat_{id}"), |k| k.name().into()),
                            description: known.map(Stat::description).unwrap_or_default().into(),
                            value: s.value.get(),
                        }
                    })
                    .collect(),
            });
        }
        Ok((reply.system_time.get(), instances))
    }

    /// The device name for a volume given as a drive letter (`C:`) or a device name.
    #[must_use]
    pub fn resolve(&self, volume: &str) -> String {
        let trimmed = volume.trim_end_matches('\\');
        if trimmed.len() == 2
            && trimmed.ends_with(':')
            && let Some(device) = self.transport.device_of(&trimmed.to_ascii_uppercase())
        {
            return device;
        }
        trimmed.to_owned()
    }

    /// The `limit` files of `volume` with the largest `by`.
    ///
    /// # Errors
    /// See [`Error`].
    pub fn top(&mut self, volume: &str, by: SortKey, limit: u32) -> Result<Files, Error> {
        let units: Vec<u16> = self.resolve(volume).encode_utf16().collect();
        let answer = self.exchange(&Request::Top {
            volume: &units,
            by,
            limit,
        })?;
        files(&answer).map(|(files, _)| files)
    }

    /// The whole table of `volume`, page by page (`page` entries at most each, 0 for the driver's
    /// page size).
    ///
    /// # Errors
    /// See [`Error`].
    pub fn dump(&mut self, volume: &str, page: u32) -> Result<Files, Error> {
        let units: Vec<u16> = self.resolve(volume).encode_utf16().collect();
        let mut cursor = Cursor::START;
        let mut all = Files {
            system_time: 0,
            total: 0,
            files: Vec::new(),
        };
        loop {
            let answer = self.exchange(&Request::Dump {
                volume: &units,
                max_entries: page,
                cursor,
            })?;
            let (files, next) = files(&answer)?;
            all.system_time = files.system_time;
            all.total = files.total;
            all.files.extend(files.files);
            if next.is_end() {
                return Ok(all);
            }
            cursor = next;
        }
    }

    /// The files named `path` (a device path; a drive letter is resolved).
    ///
    /// # Errors
    /// See [`Error`].
    pub fn lookup(&mut self, path: &str) -> Result<Files, Error> {
        let full = match path.split_once(':') {
            Some((drive, rest)) if drive.len() == 1 => {
                format!("{}{rest}", self.resolve(&format!("{drive}:")))
            }
            _ => path.to_owned(),
        };
        let units: Vec<u16> = full.encode_utf16().collect();
        let answer = self.exchange(&Request::Lookup { path: &units })?;
        files(&answer).map(|(files, _)| files)
    }

    /// Empties the table of `volume` (or of every instance with `None`).
    ///
    /// # Errors
    /// See [`Error`].
    pub fn reset(&mut self, volume: Option<&str>) -> Result<Reset, Error> {
        let answer = match volume {
            Some(volume) => {
                let units: Vec<u16> = self.resolve(volume).encode_utf16().collect();
                self.exchange(&Request::ResetVolume { volume: &units })?
            }
            None => self.exchange(&Request::ResetAll)?,
        };
        let (r, _) = answer_body::<ResetReply>(&answer)?;
        Ok(Reset {
            instances: r.instances.get(),
            entries_removed: r.entries_removed.get(),
        })
    }
}

/// The error a refused request maps to.
fn refusal(h: &ResponseHeader, request: &Request<&[u16]>) -> Error {
    let status = h.status.get();
    let detail = ErrorDetail::from_wire(h.error.get());
    if status == STATUS_NOT_SUPPORTED && detail == Some(ErrorDetail::UnsupportedVersion) {
        return Error::VersionMismatch {
            driver: h.version.get(),
        };
    }
    if status == STATUS_FLT_INSTANCE_NOT_FOUND {
        let volume = match request {
            Request::Top { volume, .. }
            | Request::Dump { volume, .. }
            | Request::ResetVolume { volume } => String::from_utf16_lossy(volume),
            _ => String::new(),
        };
        return Error::NoInstance(volume);
    }
    Error::Refused { status, detail }
}

/// The fixed reply after the header and the bytes after it.
fn answer_body<T: FromBytes + zerocopy::KnownLayout + zerocopy::Immutable + zerocopy::Unaligned>(
    answer: &[u8],
) -> Result<(&T, &[u8]), Error> {
    let header = reply::header(answer).ok_or(Error::Malformed("no response header"))?;
    Ok(reply::body::<T>(answer, &header)?)
}

/// The files of a [`FilesReply`] and its `next` cursor.
fn files(answer: &[u8]) -> Result<(Files, Cursor), Error> {
    let (reply, rest) = answer_body::<FilesReply>(answer)?;
    let files = reply::file_records(rest, reply.count.get())
        .map(|r| r.map(|(record, name)| File::from_record(record, name)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        Files {
            system_time: reply.system_time.get(),
            total: reply.total.get(),
            files,
        },
        reply.next,
    ))
}

#[cfg(test)]
mod tests {
    use iotally_protocol::reply::Writer;
    use iotally_protocol::{ErrorDetail, HelloReply};
    use zerocopy::FromZeros;

    use super::{Client, Error, STATUS_BUFFER_TOO_SMALL, STATUS_NOT_SUPPORTED};
    use crate::transport::{Code, Transport};

    /// Answers every request with the response header `answer` builds into the reply buffer.
    struct Fake<F: FnMut(&mut [u8]) -> i32> {
        answer: F,
        calls: usize,
    }

    impl<F: FnMut(&mut [u8]) -> i32> Transport for Fake<F> {
        fn send(&mut self, _: &[u8], reply: &mut [u8]) -> Result<(), Code> {
            self.calls += 1;
            let status = (self.answer)(reply);
            if status < 0 {
                Err(Code::NtStatus(status))
            } else {
                Ok(())
            }
        }

        fn device_of(&self, _: &str) -> Option<String> {
            None
        }

        fn drives(&self) -> Vec<(String, String)> {
            Vec::new()
        }
    }

    #[test]
    fn another_protocol_version_is_a_version_mismatch() {
        let mut client = Client::new(Fake {
            answer: |reply: &mut [u8]| {
                let w = Writer::new(reply).unwrap();
                let _ = w.finish(1, STATUS_NOT_SUPPORTED, ErrorDetail::UnsupportedVersion);
                STATUS_NOT_SUPPORTED
            },
            calls: 0,
        });
        let error = client.hello().unwrap_err();
        assert!(matches!(error, Error::VersionMismatch { .. }));
        assert!(error.to_string().contains("version mismatch"), "{error}");
    }

    #[test]
    fn a_buffer_too_small_is_asked_again_with_the_size_needed() {
        let mut client = Client::new(Fake {
            answer: |reply: &mut [u8]| {
                let mut w = Writer::new(reply).unwrap();
                if reply_len_is_small(w.remaining()) {
                    // Claim a larger answer than this buffer holds.
                    for _ in 0..(70 * 1024 / 8) {
                        w.put(&0_u64);
                    }
                    let _ = w.finish(1, STATUS_BUFFER_TOO_SMALL, ErrorDetail::OutputTooSmall);
                    return STATUS_BUFFER_TOO_SMALL;
                }
                w.put(&HelloReply::new_zeroed());
                let _ = w.finish(1, 0, ErrorDetail::None);
                0
            },
            calls: 0,
        });
        assert!(client.hello().is_ok());
        assert_eq!(client.transport().calls, 2);
    }

    fn reply_len_is_small(remaining: usize) -> bool {
        remaining < 70 * 1024
    }
}
