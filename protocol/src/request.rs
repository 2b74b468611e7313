//! Requests: the fixed bodies, [`encode`] (the client's side) and [`parse`] (the driver's side,
//! which validates every field of a copy it made of the user's bytes).

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::wire::{Cursor, RequestHeader};
use crate::{
    ErrorDetail, Kind, MAGIC, MAX_DUMP_PAGE, MAX_NAME_UNITS, MAX_REQUEST_BYTES, MAX_TOP,
    ResetScope, SortKey, VERSION,
};

/// Body of [`Kind::Top`] (8 bytes), followed by the volume name.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct TopBody {
    /// A [`SortKey`].
    pub by: U16,
    /// UTF-16 units of the volume name that follows.
    pub volume_units: U16,
    /// How many files, 1 to [`MAX_TOP`].
    pub limit: U32,
}

/// Body of [`Kind::Dump`] (40 bytes), followed by the volume name.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct DumpBody {
    /// UTF-16 units of the volume name that follows.
    pub volume_units: U16,
    /// Zero.
    pub reserved: U16,
    /// The most entries on this page, up to [`MAX_DUMP_PAGE`]; 0 for [`MAX_DUMP_PAGE`]. A page
    /// also stops where the output buffer is full.
    pub max_entries: U32,
    /// Where this page starts.
    pub cursor: Cursor,
}

/// Body of [`Kind::Lookup`] (8 bytes), followed by the path.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct LookupBody {
    /// UTF-16 units of the full path that follows (`\Device\HarddiskVolume3\dir\file.txt`).
    pub path_units: U16,
    /// Zero.
    pub reserved: U16,
    /// Zero.
    pub reserved2: U32,
}

/// Body of [`Kind::Reset`] (8 bytes), followed by the volume name ([`ResetScope::Volume`] only).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct ResetBody {
    /// A [`ResetScope`].
    pub scope: U16,
    /// UTF-16 units of the volume name that follows (0 for [`ResetScope::All`]).
    pub volume_units: U16,
    /// Zero.
    pub reserved: U32,
}

const _: () = {
    assert!(size_of::<TopBody>() == 8);
    assert!(size_of::<DumpBody>() == 40);
    assert!(size_of::<LookupBody>() == 8);
    assert!(size_of::<ResetBody>() == 8);
    assert!(MAX_REQUEST_BYTES as usize == 16 + 40 + 2 * MAX_NAME_UNITS as usize);
};

/// A request; `N` is the type of its names: `&[u16]` to [`encode`], [`Name`] once [`parse`]d.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<N> {
    /// [`Kind::Hello`].
    Hello,
    /// [`Kind::Instances`].
    Instances,
    /// [`Kind::Top`].
    Top {
        /// The instance's volume name (`\Device\HarddiskVolume3`).
        volume: N,
        /// What to rank by.
        by: SortKey,
        /// How many files.
        limit: u32,
    },
    /// [`Kind::Dump`].
    Dump {
        /// The instance's volume name.
        volume: N,
        /// The most entries on the page (0: [`MAX_DUMP_PAGE`]).
        max_entries: u32,
        /// Where the page starts.
        cursor: Cursor,
    },
    /// [`Kind::Lookup`].
    Lookup {
        /// The file's full path.
        path: N,
    },
    /// [`Kind::Reset`] of one instance.
    ResetVolume {
        /// The instance's volume name.
        volume: N,
    },
    /// [`Kind::Reset`] of every instance.
    ResetAll,
}

impl<N> Request<N> {
    /// The request's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Hello => Kind::Hello,
            Self::Instances => Kind::Instances,
            Self::Top { .. } => Kind::Top,
            Self::Dump { .. } => Kind::Dump,
            Self::Lookup { .. } => Kind::Lookup,
            Self::ResetVolume { .. } | Self::ResetAll => Kind::Reset,
        }
    }
}

/// A name inside a parsed request: UTF-16 units read in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Name<'a>(&'a [U16]);

impl Name<'_> {
    /// The name's code units.
    #[must_use]
    pub fn units(&self) -> impl ExactSizeIterator<Item = u16> + '_ {
        self.0.iter().map(|unit| unit.get())
    }

    /// Units in the name.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the name is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the name equals `other`, ignoring the case of ASCII letters.
    #[must_use]
    pub fn eq_ignore_ascii_case(&self, other: &[u16]) -> bool {
        self.len() == other.len()
            && self
                .units()
                .zip(other)
                .all(|(a, &b)| fold_ascii(a) == fold_ascii(b))
    }
}

/// `unit` with ASCII upper case folded to lower case.
#[must_use]
pub fn fold_ascii(unit: u16) -> u16 {
    if (u16::from(b'A')..=u16::from(b'Z')).contains(&unit) {
        unit + 32
    } else {
        unit
    }
}

/// Why [`parse`] refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// What was wrong.
    pub detail: ErrorDetail,
    /// The request's kind as far as it could be read (0 before the header is known good).
    pub kind: u16,
}

/// Bytes [`encode`] writes for `request`.
#[must_use]
pub fn encoded_len(request: &Request<&[u16]>) -> usize {
    let (body, units) = match request {
        Request::Hello | Request::Instances => (0, 0),
        Request::Top { volume, .. } => (size_of::<TopBody>(), volume.len()),
        Request::Dump { volume, .. } => (size_of::<DumpBody>(), volume.len()),
        Request::Lookup { path } => (size_of::<LookupBody>(), path.len()),
        Request::ResetVolume { volume } => (size_of::<ResetBody>(), volume.len()),
        Request::ResetAll => (size_of::<ResetBody>(), 0),
    };
    size_of::<RequestHeader>() + body + 2 * units
}

/// Writes `request` into `out`; returns the bytes written, or `None` if `out` is too small or a
/// name is longer than [`MAX_NAME_UNITS`].
pub fn encode(request: &Request<&[u16]>, out: &mut [u8]) -> Option<usize> {
    let length = encoded_len(request);
    let out = out.get_mut(..length)?;
    let units = |name: &[u16]| {
        u16::try_from(name.len())
            .ok()
            .filter(|&n| n <= MAX_NAME_UNITS)
    };
    let header = RequestHeader {
        magic: MAGIC.into(),
        version: VERSION.into(),
        kind: (request.kind() as u16).into(),
        length: u32::try_from(length).ok()?.into(),
        reserved: 0.into(),
    };
    let (head, rest) = out.split_at_mut(size_of::<RequestHeader>());
    head.copy_from_slice(header.as_bytes());
    let mut body = [0_u8; size_of::<DumpBody>()];
    let (body_len, name): (usize, &[u16]) = match request {
        Request::Hello | Request::Instances => (0, &[]),
        Request::Top { volume, by, limit } => (
            copy_into(
                &mut body,
                &TopBody {
                    by: (*by as u16).into(),
                    volume_units: units(volume)?.into(),
                    limit: (*limit).into(),
                },
            ),
            volume,
        ),
        Request::Dump {
            volume,
            max_entries,
            cursor,
        } => (
            copy_into(
                &mut body,
                &DumpBody {
                    volume_units: units(volume)?.into(),
                    reserved: 0.into(),
                    max_entries: (*max_entries).into(),
                    cursor: *cursor,
                },
            ),
            volume,
        ),
        Request::Lookup { path } => (
            copy_into(
                &mut body,
                &LookupBody {
                    path_units: units(path)?.into(),
                    reserved: 0.into(),
                    reserved2: 0.into(),
                },
            ),
            path,
        ),
        Request::ResetVolume { volume } => (
            copy_into(
                &mut body,
                &ResetBody {
                    scope: (ResetScope::Volume as u16).into(),
                    volume_units: units(volume)?.into(),
                    reserved: 0.into(),
                },
            ),
            volume,
        ),
        Request::ResetAll => (
            copy_into(
                &mut body,
                &ResetBody {
                    scope: (ResetScope::All as u16).into(),
                    volume_units: 0.into(),
                    reserved: 0.into(),
                },
            ),
            &[],
        ),
    };
    let (body_out, name_out) = rest.split_at_mut(body_len);
    body_out.copy_from_slice(&body[..body_len]);
    for (chunk, unit) in name_out.chunks_exact_mut(2).zip(name) {
        chunk.copy_from_slice(&unit.to_le_bytes());
    }
    Some(length)
}

/// Copies `value`'s bytes to the start of `out` (large enough: every body fits a [`DumpBody`]);
/// returns how many.
fn copy_into<T: IntoBytes + Immutable>(out: &mut [u8], value: &T) -> usize {
    let bytes = value.as_bytes();
    out[..bytes.len()].copy_from_slice(bytes);
    bytes.len()
}

/// Reads and validates a request from `input` (a kernel copy of the user's bytes).
///
/// Checks, in order: not empty, at least a header, at most [`MAX_REQUEST_BYTES`], the magic
/// number, the version ([`ErrorDetail::UnsupportedVersion`]), `length` equal to the input's
/// length, reserved fields zero, a known kind, the body and name exactly filling the rest, and
/// every field of the body. A cursor's token is the driver's to check.
///
/// # Errors
/// A [`Refusal`] naming the first problem.
pub fn parse(input: &[u8]) -> Result<Request<Name<'_>>, Refusal> {
    let refuse = |detail, kind| Refusal { detail, kind };
    if input.is_empty() {
        return Err(refuse(ErrorDetail::InputMissing, 0));
    }
    let Ok((header, rest)) = RequestHeader::ref_from_prefix(input) else {
        return Err(refuse(ErrorDetail::InputTooShort, 0));
    };
    if input.len() > MAX_REQUEST_BYTES as usize {
        return Err(refuse(ErrorDetail::InputTooLong, 0));
    }
    if header.magic.get() != MAGIC {
        return Err(refuse(ErrorDetail::BadMagic, 0));
    }
    let raw_kind = header.kind.get();
    if header.version.get() != VERSION {
        return Err(refuse(ErrorDetail::UnsupportedVersion, raw_kind));
    }
    if usize::try_from(header.length.get()).ok() != Some(input.len()) {
        return Err(refuse(ErrorDetail::LengthMismatch, raw_kind));
    }
    if header.reserved.get() != 0 {
        return Err(refuse(ErrorDetail::ReservedNotZero, raw_kind));
    }
    let Some(kind) = Kind::from_wire(raw_kind) else {
        return Err(refuse(ErrorDetail::UnknownKind, raw_kind));
    };
    parse_body(kind, rest).map_err(|detail| refuse(detail, raw_kind))
}

/// The body of a `kind` request: its fixed part, then exactly `units` UTF-16 units of name.
fn body_and_name<B: FromBytes + KnownLayout + Immutable + Unaligned>(
    rest: &[u8],
    units: impl FnOnce(&B) -> u16,
) -> Result<(&B, Name<'_>), ErrorDetail> {
    let (body, tail) = B::ref_from_prefix(rest).map_err(|_| ErrorDetail::InputTooShort)?;
    let units = units(body);
    if units > MAX_NAME_UNITS {
        return Err(ErrorDetail::NameTooLong);
    }
    let needed = 2 * usize::from(units);
    if tail.len() < needed {
        return Err(ErrorDetail::InputTooShort);
    }
    if tail.len() > needed {
        return Err(ErrorDetail::InputTooLong);
    }
    let name = <[U16]>::ref_from_bytes(tail).map_err(|_| ErrorDetail::InputTooShort)?;
    Ok((body, Name(name)))
}

fn parse_body(kind: Kind, rest: &[u8]) -> Result<Request<Name<'_>>, ErrorDetail> {
    match kind {
        Kind::Hello | Kind::Instances => {
            if !rest.is_empty() {
                return Err(ErrorDetail::InputTooLong);
            }
            Ok(if kind == Kind::Hello {
                Request::Hello
            } else {
                Request::Instances
            })
        }
        Kind::Top => {
            let (body, volume) = body_and_name::<TopBody>(rest, |b| b.volume_units.get())?;
            let by = SortKey::from_wire(body.by.get()).ok_or(ErrorDetail::UnknownSortKey)?;
            let limit = body.limit.get();
            if limit == 0 || limit > MAX_TOP {
                return Err(ErrorDetail::LimitOutOfRange);
            }
            if volume.is_empty() {
                return Err(ErrorDetail::NameMissing);
            }
            Ok(Request::Top { volume, by, limit })
        }
        Kind::Dump => {
            let (body, volume) = body_and_name::<DumpBody>(rest, |b| b.volume_units.get())?;
            if body.reserved.get() != 0 {
                return Err(ErrorDetail::ReservedNotZero);
            }
            let max_entries = body.max_entries.get();
            if max_entries > MAX_DUMP_PAGE {
                return Err(ErrorDetail::LimitOutOfRange);
            }
            if volume.is_empty() {
                return Err(ErrorDetail::NameMissing);
            }
            let cursor = body.cursor;
            let well_formed = cursor.reserved.get() == 0
                && match cursor.state.get() {
                    Cursor::STATE_START => cursor == Cursor::START,
                    Cursor::STATE_AFTER | Cursor::STATE_END => true,
                    _ => false,
                };
            if !well_formed {
                return Err(ErrorDetail::BadCursor);
            }
            Ok(Request::Dump {
                volume,
                max_entries,
                cursor,
            })
        }
        Kind::Lookup => {
            let (body, path) = body_and_name::<LookupBody>(rest, |b| b.path_units.get())?;
            if body.reserved.get() != 0 || body.reserved2.get() != 0 {
                return Err(ErrorDetail::ReservedNotZero);
            }
            if path.is_empty() {
                return Err(ErrorDetail::NameMissing);
            }
            Ok(Request::Lookup { path })
        }
        Kind::Reset => {
            let (body, volume) = body_and_name::<ResetBody>(rest, |b| b.volume_units.get())?;
            if body.reserved.get() != 0 {
                return Err(ErrorDetail::ReservedNotZero);
            }
            match ResetScope::from_wire(body.scope.get()) {
                Some(ResetScope::Volume) if volume.is_empty() => Err(ErrorDetail::NameMissing),
                Some(ResetScope::Volume) => Ok(Request::ResetVolume { volume }),
                Some(ResetScope::All) if volume.is_empty() => Ok(Request::ResetAll),
                Some(ResetScope::All) | None => Err(ErrorDetail::UnknownScope),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Name, Refusal, Request, encode, encoded_len, parse};
    use crate::wire::Cursor;
    use crate::{ErrorDetail, MAX_NAME_UNITS, SortKey};

    const VOLUME: [u16; 3] = [b'\\' as u16, b'V' as u16, b'1' as u16];

    fn encoded(request: &Request<&[u16]>) -> ([u8; 256], usize) {
        let mut out = [0_u8; 256];
        let n = encode(request, &mut out).unwrap();
        assert_eq!(n, encoded_len(request));
        (out, n)
    }

    fn same(parsed: &Request<Name<'_>>, sent: &Request<&[u16]>) -> bool {
        let eq = |n: &Name<'_>, s: &[u16]| n.units().eq(s.iter().copied());
        match (parsed, sent) {
            (Request::Hello, Request::Hello)
            | (Request::Instances, Request::Instances)
            | (Request::ResetAll, Request::ResetAll) => true,
            (
                Request::Top { volume, by, limit },
                Request::Top {
                    volume: v,
                    by: b,
                    limit: l,
                },
            ) => eq(volume, v) && by == b && limit == l,
            (
                Request::Dump {
                    volume,
                    max_entries,
                    cursor,
                },
                Request::Dump {
                    volume: v,
                    max_entries: m,
                    cursor: c,
                },
            ) => eq(volume, v) && max_entries == m && cursor == c,
            (Request::Lookup { path }, Request::Lookup { path: p }) => eq(path, p),
            (Request::ResetVolume { volume }, Request::ResetVolume { volume: v }) => eq(volume, v),
            _ => false,
        }
    }

    #[test]
    fn every_request_round_trips() {
        let requests: [Request<&[u16]>; 7] = [
            Request::Hello,
            Request::Instances,
            Request::Top {
                volume: &VOLUME,
                by: SortKey::BytesWritten,
                limit: 10,
            },
            Request::Dump {
                volume: &VOLUME,
                max_entries: 0,
                cursor: Cursor::START,
            },
            Request::Lookup { path: &VOLUME },
            Request::ResetVolume { volume: &VOLUME },
            Request::ResetAll,
        ];
        for request in &requests {
            let (bytes, n) = encoded(request);
            let parsed = parse(&bytes[..n]).unwrap();
            assert!(same(&parsed, request), "{parsed:?} vs {request:?}");
        }
    }

    #[test]
    fn malformed_requests_are_refused_precisely() {
        let (top, n) = encoded(&Request::Top {
            volume: &VOLUME,
            by: SortKey::Opens,
            limit: 5,
        });
        let detail = |bytes: &[u8]| parse(bytes).map(|_| ()).unwrap_err().detail;
        assert_eq!(detail(&[]), ErrorDetail::InputMissing);
        assert_eq!(detail(&top[..15]), ErrorDetail::InputTooShort);
        assert_eq!(detail(&top[..n - 1]), ErrorDetail::LengthMismatch);
        assert_eq!(detail(&top[..=n]), ErrorDetail::LengthMismatch);
        let mut bad = top;
        bad[0] ^= 1;
        assert_eq!(detail(&bad[..n]), ErrorDetail::BadMagic);
        let mut bad = top;
        bad[4] = 9;
        assert_eq!(
            parse(&bad[..n]).unwrap_err(),
            Refusal {
                detail: ErrorDetail::UnsupportedVersion,
                kind: 3
            }
        );
        let mut bad = top;
        bad[6] = 99;
        assert_eq!(detail(&bad[..n]), ErrorDetail::UnknownKind);
        let mut bad = top;
        bad[12] = 1;
        assert_eq!(detail(&bad[..n]), ErrorDetail::ReservedNotZero);
        let mut bad = top;
        bad[16] = 42;
        assert_eq!(detail(&bad[..n]), ErrorDetail::UnknownSortKey);
        let mut bad = top;
        bad[20..24].copy_from_slice(&0_u32.to_le_bytes());
        assert_eq!(detail(&bad[..n]), ErrorDetail::LimitOutOfRange);
        // A name shorter or longer than announced, with a consistent header length.
        let mut bad = top;
        bad[18] = 2;
        bad[8..12].copy_from_slice(&u32::try_from(n).unwrap().to_le_bytes());
        assert_eq!(detail(&bad[..n]), ErrorDetail::InputTooLong);
        bad[18] = 4;
        assert_eq!(detail(&bad[..n]), ErrorDetail::InputTooShort);
        bad[18..20].copy_from_slice(&(MAX_NAME_UNITS + 1).to_le_bytes());
        assert_eq!(detail(&bad[..n]), ErrorDetail::NameTooLong);
    }

    #[test]
    fn cursors_and_scopes_are_checked() {
        let mut cursor = Cursor::START;
        cursor.token = 5.into();
        let (bytes, n) = encoded(&Request::Dump {
            volume: &VOLUME,
            max_entries: 1,
            cursor,
        });
        assert_eq!(
            parse(&bytes[..n]).unwrap_err().detail,
            ErrorDetail::BadCursor
        );
        cursor.state = 7.into();
        let (bytes, n) = encoded(&Request::Dump {
            volume: &VOLUME,
            max_entries: 1,
            cursor,
        });
        assert_eq!(
            parse(&bytes[..n]).unwrap_err().detail,
            ErrorDetail::BadCursor
        );
        let (mut bytes, n) = encoded(&Request::ResetAll);
        bytes[16] = 3;
        assert_eq!(
            parse(&bytes[..n]).unwrap_err().detail,
            ErrorDetail::UnknownScope
        );
        let (bytes, n) = encoded(&Request::ResetVolume { volume: &[] });
        assert_eq!(
            parse(&bytes[..n]).unwrap_err().detail,
            ErrorDetail::NameMissing
        );
    }

    #[test]
    fn names_compare_ignoring_ascii_case() {
        let (bytes, n) = encoded(&Request::Lookup { path: &VOLUME });
        let Request::Lookup { path } = parse(&bytes[..n]).unwrap() else {
            panic!("not a lookup");
        };
        let lower: [u16; 3] = [u16::from(b'\\'), u16::from(b'v'), u16::from(b'1')];
        assert!(path.eq_ignore_ascii_case(&lower));
        assert!(!path.eq_ignore_ascii_case(&lower[..2]));
    }
}
