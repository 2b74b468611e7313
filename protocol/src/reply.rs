//! Answers: the driver writes them with a [`Writer`] into a kernel buffer; the client reads them
//! with [`header`], [`body`] and the record iterators, which check every length.

use zerocopy::little_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::wire::{FileRecord, InstanceRecord, ResponseHeader, StatValue};
use crate::{ErrorDetail, MAGIC, VERSION, pad8};

/// Writes an answer into a buffer: everything after the [`ResponseHeader`], which
/// [`Writer::finish`] writes last. Counts the bytes a complete answer needs even past the end of
/// the buffer: once something did not fit, nothing more is written, but `needed` keeps growing.
pub struct Writer<'a> {
    out: &'a mut [u8],
    len: usize,
    needed: usize,
    full: bool,
}

impl<'a> Writer<'a> {
    /// A writer over `out`, with room kept for the header. `None` if `out` cannot hold a header.
    #[must_use]
    pub fn new(out: &'a mut [u8]) -> Option<Self> {
        let header = size_of::<ResponseHeader>();
        (out.len() >= header).then_some(Self {
            out,
            len: header,
            needed: header,
            full: false,
        })
    }

    /// Bytes written so far, the header's included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: the header's room is always counted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes the whole answer needs, as far as it was written.
    #[must_use]
    pub fn needed(&self) -> usize {
        self.needed
    }

    /// Bytes still free in the buffer (0 once something did not fit).
    #[must_use]
    pub fn remaining(&self) -> usize {
        if self.full {
            0
        } else {
            self.out.len() - self.len
        }
    }

    /// Whether something did not fit.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// `n` zeroed bytes at the end of the answer, or `None` (counted in `needed`) if they do not
    /// fit or something earlier did not.
    pub fn reserve(&mut self, n: usize) -> Option<&mut [u8]> {
        self.needed = self.needed.saturating_add(n);
        let end = self.len.checked_add(n).filter(|&end| end <= self.out.len());
        match end {
            Some(end) if !self.full => {
                let space = &mut self.out[self.len..end];
                space.fill(0);
                self.len = end;
                Some(space)
            }
            _ => {
                self.full = true;
                None
            }
        }
    }

    /// Appends `value`; whether it fit.
    pub fn put<T: IntoBytes + Immutable>(&mut self, value: &T) -> bool {
        let bytes = value.as_bytes();
        self.reserve(bytes.len())
            .map(|space| space.copy_from_slice(bytes))
            .is_some()
    }

    /// Overwrites a value written earlier at `offset` (a count known only at the end).
    pub fn patch<T: IntoBytes + Immutable>(&mut self, offset: usize, value: &T) {
        let bytes = value.as_bytes();
        if let Some(space) = offset
            .checked_add(bytes.len())
            .filter(|&end| end <= self.len)
            .map(|end| &mut self.out[offset..end])
        {
            space.copy_from_slice(bytes);
        }
    }

    /// Appends a [`FileRecord`] and its name, padded; its `length` and `name_units` are set here.
    /// Whether it fit (all of it, or nothing).
    pub fn file_record(
        &mut self,
        record: &FileRecord,
        name: impl ExactSizeIterator<Item = u16>,
    ) -> bool {
        let units = name.len().min(usize::from(u16::MAX));
        let length = file_record_len(units);
        let Some(space) = self.reserve(length) else {
            return false;
        };
        let mut record = *record;
        record.length = u32::try_from(length).unwrap_or(u32::MAX).into();
        record.name_units = u16::try_from(units).unwrap_or(u16::MAX).into();
        let (fixed, rest) = space.split_at_mut(size_of::<FileRecord>());
        fixed.copy_from_slice(record.as_bytes());
        write_units(rest, name);
        true
    }

    /// Appends an [`InstanceRecord`], its statistics and its volume name, padded; its `length`,
    /// `stat_count` and `volume_units` are set here. Whether it fit.
    pub fn instance_record(
        &mut self,
        record: &InstanceRecord,
        stats: impl ExactSizeIterator<Item = StatValue>,
        name: impl ExactSizeIterator<Item = u16>,
    ) -> bool {
        let units = name.len().min(usize::from(u16::MAX));
        let count = stats.len().min(usize::from(u16::MAX));
        let stats_bytes = count * size_of::<StatValue>();
        let length = pad8(size_of::<InstanceRecord>() + stats_bytes + 2 * units);
        let Some(space) = self.reserve(length) else {
            return false;
        };
        let mut record = *record;
        record.length = u32::try_from(length).unwrap_or(u32::MAX).into();
        record.volume_units = u16::try_from(units).unwrap_or(u16::MAX).into();
        record.stat_count = u16::try_from(count).unwrap_or(u16::MAX).into();
        let (fixed, rest) = space.split_at_mut(size_of::<InstanceRecord>());
        fixed.copy_from_slice(record.as_bytes());
        let (stat_space, name_space) = rest.split_at_mut(stats_bytes);
        for (slot, stat) in stat_space
            .chunks_exact_mut(size_of::<StatValue>())
            .zip(stats)
        {
            slot.copy_from_slice(stat.as_bytes());
        }
        write_units(name_space, name);
        true
    }

    /// Writes the header (the driver's [`VERSION`], `kind`, `status`, `error`, the length written
    /// and the length needed) and returns the answer's length.
    #[must_use = "the answer's length is ReturnOutputBufferLength"]
    pub fn finish(self, kind: u16, status: i32, error: ErrorDetail) -> usize {
        let header = ResponseHeader {
            magic: MAGIC.into(),
            version: VERSION.into(),
            kind: kind.into(),
            length: u32::try_from(self.len).unwrap_or(u32::MAX).into(),
            needed: u32::try_from(self.needed).unwrap_or(u32::MAX).into(),
            status: status.into(),
            error: (error as u16).into(),
            reserved: 0.into(),
        };
        self.out[..size_of::<ResponseHeader>()].copy_from_slice(header.as_bytes());
        self.len
    }
}

/// Bytes a [`FileRecord`] with a name of `units` UTF-16 units takes.
#[must_use]
pub fn file_record_len(units: usize) -> usize {
    pad8(size_of::<FileRecord>() + 2 * units)
}

/// Writes `units` little-endian into `out` (as many as fit).
fn write_units(out: &mut [u8], units: impl Iterator<Item = u16>) {
    for (chunk, unit) in out.chunks_exact_mut(2).zip(units) {
        chunk.copy_from_slice(&unit.to_le_bytes());
    }
}

/// An answer that does not follow the layouts (a client-side error: the driver and the tool
/// disagree, or the buffer was not written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// The response header at the start of `buffer`, if `buffer` holds one (its magic number).
#[must_use]
pub fn header(buffer: &[u8]) -> Option<ResponseHeader> {
    let (header, _) = ResponseHeader::read_from_prefix(buffer).ok()?;
    (header.magic.get() == MAGIC).then_some(header)
}

/// The fixed reply `T` after the header, and the bytes after it up to the header's `length`.
///
/// # Errors
/// If `length` is shorter than the layouts or longer than `buffer`.
pub fn body<'a, T: FromBytes + KnownLayout + Immutable + Unaligned>(
    buffer: &'a [u8],
    header: &ResponseHeader,
) -> Result<(&'a T, &'a [u8]), Malformed> {
    let length = usize::try_from(header.length.get()).map_err(|_| Malformed("length"))?;
    let answer = buffer
        .get(size_of::<ResponseHeader>()..length)
        .ok_or(Malformed("the answer's length exceeds the buffer"))?;
    T::ref_from_prefix(answer).map_err(|_| Malformed("the answer is shorter than its reply"))
}

/// Splits one record of `length` bytes (its first field) off `rest`.
fn split_record(rest: &[u8], fixed: usize) -> Result<(&[u8], &[u8]), Malformed> {
    let length = rest
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(Malformed("a record is cut short"))?;
    let length = usize::try_from(length).map_err(|_| Malformed("record length"))?;
    if length < fixed || length % 8 != 0 || length > rest.len() {
        return Err(Malformed("a record's length is wrong"));
    }
    Ok(rest.split_at(length))
}

/// Reads `units` UTF-16 units from `bytes`.
fn units(bytes: &[u8], units: usize) -> Result<&[U16], Malformed> {
    <[U16]>::ref_from_prefix_with_elems(bytes, units)
        .map(|(name, _)| name)
        .map_err(|_| Malformed("a name exceeds its record"))
}

/// The [`FileRecord`]s after a [`crate::FilesReply`]: `(record, name)`.
pub fn file_records(
    mut rest: &[u8],
    count: u32,
) -> impl Iterator<Item = Result<(&FileRecord, &[U16]), Malformed>> + '_ {
    (0..count).map(move |_| {
        let (record_bytes, tail) = split_record(rest, size_of::<FileRecord>())?;
        rest = tail;
        let (record, name_bytes) = FileRecord::ref_from_prefix(record_bytes)
            .map_err(|_| Malformed("a file record is cut short"))?;
        let name = units(name_bytes, usize::from(record.name_units.get()))?;
        Ok((record, name))
    })
}

/// One instance as read: the record, its statistics and its volume name.
pub type InstanceParts<'a> = (&'a InstanceRecord, &'a [StatValue], &'a [U16]);

/// The [`InstanceRecord`]s after an [`crate::InstancesReply`].
pub fn instance_records(
    mut rest: &[u8],
    count: u32,
) -> impl Iterator<Item = Result<InstanceParts<'_>, Malformed>> + '_ {
    (0..count).map(move |_| {
        let (record_bytes, tail) = split_record(rest, size_of::<InstanceRecord>())?;
        rest = tail;
        let (record, after) = InstanceRecord::ref_from_prefix(record_bytes)
            .map_err(|_| Malformed("an instance record is cut short"))?;
        let (stats, name_bytes) =
            <[StatValue]>::ref_from_prefix_with_elems(after, usize::from(record.stat_count.get()))
                .map_err(|_| Malformed("statistics exceed their record"))?;
        let name = units(name_bytes, usize::from(record.volume_units.get()))?;
        Ok((record, stats, name))
    })
}

#[cfg(test)]
mod tests {
    use std::string::String;
    use std::vec::Vec;

    use zerocopy::FromZeros;

    use super::{Writer, body, file_records, header, instance_records};
    use crate::wire::{FileRecord, FilesReply, InstanceRecord, InstancesReply, StatValue};
    use crate::{ErrorDetail, Stat};

    #[test]
    fn records_written_are_read_back() {
        let mut buffer = [0_u8; 512];
        let mut w = Writer::new(&mut buffer).unwrap();
        assert!(w.put(&FilesReply::new_zeroed()));
        let mut record = FileRecord::new_zeroed();
        record.opens = 7.into();
        record.key_high = 1.into();
        assert!(w.file_record(
            &record,
            "abc".encode_utf16().collect::<Vec<_>>().into_iter()
        ));
        assert!(w.file_record(&record, core::iter::empty()));
        w.patch(24 + 8, &zerocopy::little_endian::U32::new(2));
        let n = w.finish(3, 0, ErrorDetail::None);
        assert_eq!(n, 24 + 48 + 88 + 80);
        let h = header(&buffer).unwrap();
        assert_eq!(
            (h.length.get(), h.needed.get(), h.kind.get()),
            (240, 240, 3)
        );
        let (reply, rest) = body::<FilesReply>(&buffer, &h).unwrap();
        let records: Vec<_> = file_records(rest, reply.count.get())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].0.opens.get(), 7);
        assert_eq!(records[0].0.key(), 1 << 64);
        assert_eq!(
            String::from_utf16_lossy(&records[0].1.iter().map(|u| u.get()).collect::<Vec<_>>()),
            "abc"
        );
    }

    #[test]
    fn what_does_not_fit_is_counted_not_written() {
        let mut buffer = [0_u8; 120];
        let mut w = Writer::new(&mut buffer).unwrap();
        assert!(w.put(&FilesReply::new_zeroed()));
        let record = FileRecord::new_zeroed();
        assert!(!w.file_record(&record, [1_u16].into_iter()));
        assert!(w.is_full());
        assert!(!w.put(&0_u8), "nothing more once full");
        assert_eq!(w.len(), 72);
        assert_eq!(w.needed(), 72 + 88 + 1);
        assert!(Writer::new(&mut [0_u8; 23]).is_none());
    }

    #[test]
    fn instance_records_carry_their_statistics() {
        let mut buffer = [0_u8; 512];
        let mut w = Writer::new(&mut buffer).unwrap();
        let mut reply = InstancesReply::new_zeroed();
        reply.count = 1.into();
        assert!(w.put(&reply));
        let stats = Stat::ALL.iter().map(|s| StatValue {
            id: s.id().into(),
            reserved: [0; 6],
            value: u64::from(s.id() + 10).into(),
        });
        assert!(w.instance_record(&InstanceRecord::new_zeroed(), stats, [1_u16, 2].into_iter()));
        let _ = w.finish(2, 0, ErrorDetail::None);
        let h = header(&buffer).unwrap();
        let (reply, rest) = body::<InstancesReply>(&buffer, &h).unwrap();
        let (record, stats, name) = instance_records(rest, reply.count.get())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(usize::from(record.stat_count.get()), Stat::COUNT);
        assert_eq!(stats[1].value.get(), 11);
        assert_eq!(name.len(), 2);
        assert_eq!(record.length.get() % 8, 0);
    }

    #[test]
    fn lying_lengths_are_malformed() {
        let mut buffer = [0_u8; 256];
        let mut w = Writer::new(&mut buffer).unwrap();
        let mut reply = FilesReply::new_zeroed();
        reply.count = 2.into();
        w.put(&reply);
        w.file_record(&FileRecord::new_zeroed(), [1_u16, 2].into_iter());
        let _ = w.finish(3, 0, ErrorDetail::None);
        let h = header(&buffer).unwrap();
        let (reply, rest) = body::<FilesReply>(&buffer, &h).unwrap();
        let results: Vec<_> = file_records(rest, reply.count.get()).collect();
        assert!(results[0].is_ok());
        assert!(results[1].is_err(), "the second record is missing");
        let mut lying = buffer;
        lying[8..12].copy_from_slice(&1000_u32.to_le_bytes());
        let h = header(&lying).unwrap();
        assert!(body::<FilesReply>(&lying, &h).is_err());
        assert!(header(&[0_u8; 24]).is_none());
    }
}
