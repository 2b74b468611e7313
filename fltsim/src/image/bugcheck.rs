//! `KeBugCheckEx` called by a driver image: the same stop as fltsim's routine, with the panic
//! location decoded when the driver said which bug check code its panic handler raises
//! ([`super::ImageOptions::panic_bugcheck`]).

use std::fmt::Write as _;

use windows_sys::Win32::System::Diagnostics::Debug::BUGCHECK_ERROR;

use crate::world::lock_ignoring_poison;

/// Longest file name decoded from a panic bug check.
const MAX_FILE_NAME: usize = 4096;

/// Where the image's panic bug check points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PanicLocation {
    /// The source file, as the driver's panic handler passed it.
    pub file: String,
    /// Line.
    pub line: usize,
    /// Column.
    pub column: usize,
}

/// What the decoder knows about the image that is loaded.
#[derive(Clone, Debug)]
pub(crate) struct Decoder {
    /// The driver's name.
    pub name: String,
    /// Readable address ranges of the image, `[start, end)`.
    pub readable: Vec<(usize, usize)>,
    /// The bug check code of the driver's panic handler, if it told.
    pub panic_code: Option<u32>,
}

impl Decoder {
    /// The panic location a bug check of the panic handler's code carries: parameter 1 is the
    /// address of the file name (UTF-8, in the image's read-only data), 2 its length in bytes, 3
    /// the line, 4 the column. `None` for other codes, or when the name does not lie in the image.
    pub(crate) fn panic_location(&self, code: u32, p: [usize; 4]) -> Option<PanicLocation> {
        if self.panic_code != Some(code) || p[1] > MAX_FILE_NAME {
            return None;
        }
        let end = p[0].checked_add(p[1])?;
        if !self
            .readable
            .iter()
            .any(|&(start, stop)| start <= p[0] && end <= stop)
        {
            return None;
        }
        // SAFETY: `[p[0], end)` lies inside a readable section of the loaded image (checked
        // above), which stays mapped while its code runs.
        let bytes = unsafe {
            std::slice::from_raw_parts(std::ptr::with_exposed_provenance::<u8>(p[0]), p[1])
        };
        Some(PanicLocation {
            file: String::from_utf8_lossy(bytes).into_owned(),
            line: p[2],
            column: p[3],
        })
    }
}

/// The image whose code is loaded, if any.
static LOADED: std::sync::Mutex<Option<Decoder>> = std::sync::Mutex::new(None);

/// Makes `decoder` the loaded image's (or forgets it, with `None`).
pub(crate) fn set(decoder: Option<Decoder>) {
    *lock_ignoring_poison(&LOADED) = decoder;
}

/// `KeBugCheckEx` from image code: panics with the code and parameters in the format of fltsim's
/// `KeBugCheckEx`, followed by the decoded panic location (`panicked at file:line:column`, as Rust
/// prints a panic) when the code is the driver's panic bug check. The panic cannot leave the
/// image's call, so it stops the process, as a bug check stops the machine.
pub(crate) fn raised_by_image(code: BUGCHECK_ERROR, p1: usize, p2: usize, p3: usize, p4: usize) {
    let decoder = lock_ignoring_poison(&LOADED).clone();
    let mut message = format!(
        "fltsim: KeBugCheckEx({code:#010X}, {p1:#018X}, {p2:#018X}, {p3:#018X}, {p4:#018X})"
    );
    if let Some(decoder) = decoder {
        let _ = write!(message, " raised by driver image {}", decoder.name);
        if let Some(location) = decoder.panic_location(code, [p1, p2, p3, p4]) {
            let _ = write!(
                message,
                ": its panic handler reports: panicked at {}:{}:{}",
                location.file, location.line, location.column
            );
        }
    }
    panic!("{message}");
}

#[cfg(test)]
mod tests {
    use super::{Decoder, PanicLocation};

    #[test]
    fn the_panic_location_is_decoded_only_from_the_image_and_for_the_panic_code() {
        let text = b"src/lib.rs";
        let start = text.as_ptr().addr();
        let decoder = Decoder {
            name: "d".into(),
            readable: vec![(start, start + text.len())],
            panic_code: Some(0xE000_0001),
        };
        assert_eq!(
            decoder.panic_location(0xE000_0001, [start, text.len(), 7, 9]),
            Some(PanicLocation {
                file: "src/lib.rs".into(),
                line: 7,
                column: 9
            })
        );
        assert_eq!(
            decoder.panic_location(0xE000_0002, [start, text.len(), 7, 9]),
            None,
            "another code"
        );
        assert_eq!(
            decoder.panic_location(0xE000_0001, [start + 1, text.len(), 7, 9]),
            None,
            "a name running past the image"
        );
        assert_eq!(decoder.panic_location(0xE000_0001, [0, 0, 7, 9]), None);
    }
}
