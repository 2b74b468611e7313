//! The driver's one logging path: format into a fixed stack buffer, then `vDbgPrintEx`.
//!
//! Use the macros: [`log_error!`](crate::log_error), [`log_warn!`](crate::log_warn),
//! [`log_info!`](crate::log_info) and [`log_trace!`](crate::log_trace). They take `format!`-style
//! arguments and never allocate, never panic and never fail: each call prints one line (the newline
//! is added), a line longer than [`LINE_CAPACITY`] bytes is cut (at a character boundary, keeping the
//! newline), and a NUL in the text is printed as `?` so that it cannot end the C string early.
//!
//! Each line goes out as `vDbgPrintEx(DPFLTR_IHVDRIVER_ID, level, "%s", args)`: the text is never
//! used as a format string, and `args` is an x64 `va_list`, a pointer to one 8-byte slot holding the
//! string's address. Lines are prefixed with `iotally: ` because every third-party driver shares the
//! `IHVDRIVER` component. By default the kernel debugger shows only the error level; enable the others
//! with `ed nt!Kd_IHVDRIVER_Mask 0xf` or the `Debug Print Filter` registry key.
//!
//! Usable at any `IRQL <= DIRQL` (vDbgPrintEx's ceiling): the buffer is on the stack, which is never
//! paged out while the thread runs in the kernel. The frame is about `LINE_CAPACITY` plus the
//! formatter's state, well under the 4 KiB at which the cross build would need `__chkstk`.
//!
//! ```
//! # use fltsim as _;
//! # let _sim = fltsim::Sim::new();
//! let volume = "\\Device\\HarddiskVolume3";
//! iotally::log_info!("attached to {volume}");
//! iotally::log_error!("instance setup failed: {:#x}", 0xC000_009A_u32);
//! ```

use core::fmt::{self, Write};

use crate::ffi::{
    DPFLTR_ERROR_LEVEL, DPFLTR_IHVDRIVER_ID, DPFLTR_INFO_LEVEL, DPFLTR_TRACE_LEVEL,
    DPFLTR_WARNING_LEVEL, vDbgPrintEx,
};

/// Bytes per line, including the prefix, the newline and the terminating NUL (`vDbgPrintEx` sends at
/// most 512 bytes per call; 256 keeps the stack frame small).
///
/// ```
/// assert_eq!(iotally::log::LINE_CAPACITY, 256);
/// ```
pub const LINE_CAPACITY: usize = 256;

/// What every line starts with.
const PREFIX: &str = "iotally: ";

/// The severity of a line: the `Level` argument of `vDbgPrintEx` (dpfilter.h's `DPFLTR_*_LEVEL`).
///
/// ```
/// use iotally::log::Level;
/// assert_eq!(Level::Error.dpfltr(), 0);
/// assert_eq!(Level::Info.dpfltr(), 3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// `DPFLTR_ERROR_LEVEL`: shown by default.
    Error,
    /// `DPFLTR_WARNING_LEVEL`.
    Warning,
    /// `DPFLTR_TRACE_LEVEL`.
    Trace,
    /// `DPFLTR_INFO_LEVEL`.
    Info,
}

impl Level {
    /// The `DPFLTR_*_LEVEL` value passed to `vDbgPrintEx`.
    ///
    /// ```
    /// assert_eq!(iotally::log::Level::Warning.dpfltr(), iotally::ffi::DPFLTR_WARNING_LEVEL);
    /// ```
    #[must_use]
    pub const fn dpfltr(self) -> u32 {
        match self {
            Self::Error => DPFLTR_ERROR_LEVEL,
            Self::Warning => DPFLTR_WARNING_LEVEL,
            Self::Trace => DPFLTR_TRACE_LEVEL,
            Self::Info => DPFLTR_INFO_LEVEL,
        }
    }
}

/// Text bytes a line holds: room is kept for the newline and the NUL.
const TEXT_LIMIT: usize = LINE_CAPACITY - 2;

/// A line being formatted: truncates instead of failing; ends with a newline and a NUL.
struct Line {
    bytes: [u8; LINE_CAPACITY],
    /// Text bytes written; always `<= TEXT_LIMIT`, so there is room for the newline and the NUL.
    len: usize,
}

impl Line {
    const fn new() -> Self {
        Self {
            bytes: [0; LINE_CAPACITY],
            len: 0,
        }
    }

    /// The text, a newline and a NUL: a C string.
    fn terminated(&mut self) -> &[u8] {
        // `len <= TEXT_LIMIT` always holds (see `write_str`), so every index is in range; `get` keeps
        // this free of panicking paths anyway.
        if let Some([newline, nul]) = self.bytes.get_mut(self.len..self.len + 2) {
            *newline = b'\n';
            *nul = 0;
        }
        self.bytes.get(..self.len + 2).unwrap_or(b"\n\0")
    }
}

impl Write for Line {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let room = TEXT_LIMIT.saturating_sub(self.len);
        let mut take = text.len().min(room);
        // Cut at a character boundary so the line stays valid UTF-8.
        while !text.is_char_boundary(take) {
            take -= 1;
        }
        let (Some(src), Some(dst)) = (
            text.as_bytes().get(..take),
            self.bytes.get_mut(self.len..self.len + take),
        ) else {
            return Ok(());
        };
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = if s == 0 { b'?' } else { s };
        }
        self.len += take;
        // Never report an error: a full line is cut, not failed.
        Ok(())
    }
}

/// Formats `args` into a stack buffer and sends it to the debugger at `level`. Prefer the macros.
///
/// Never panics and never allocates; the text is cut at [`LINE_CAPACITY`] bytes. A `Display`
/// implementation that returns an error ends the line where it failed.
///
/// ```
/// # use fltsim as _;
/// # let _sim = fltsim::Sim::new();
/// iotally::log::write(iotally::log::Level::Warning, format_args!("{} entries evicted", 3));
/// ```
#[inline(never)]
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    let mut line = Line::new();
    // Neither write can fail (`Line` never returns an error); a failing `Display` impl only ends the
    // text early, which is all that can be done without panicking.
    let _ = line.write_str(PREFIX);
    let _ = line.write_fmt(args);
    let text = line.terminated();
    // The x64 va_list for "%s": a pointer to one 8-byte slot holding the string's address.
    let slots: [*const u8; 1] = [text.as_ptr()];
    // SAFETY: the format is the static C string "%s", which reads exactly one argument: a pointer to
    // a NUL-terminated string. `slots` holds that pointer; `text` ends with a NUL and outlives the call.
    unsafe {
        vDbgPrintEx(
            DPFLTR_IHVDRIVER_ID,
            level.dpfltr(),
            c"%s".as_ptr().cast(),
            slots.as_ptr().cast(),
        );
    }
}

/// Logs an error (`DPFLTR_ERROR_LEVEL`, shown by default); `format!` syntax.
///
/// ```
/// # use fltsim as _;
/// # let _sim = fltsim::Sim::new();
/// iotally::log_error!("FltRegisterFilter failed: {:#010x}", 0xC000_0001_u32);
/// ```
#[macro_export]
macro_rules! log_error {
    ($($arg:tt)*) => {
        $crate::log::write($crate::log::Level::Error, ::core::format_args!($($arg)*))
    };
}

/// Logs a warning (`DPFLTR_WARNING_LEVEL`); `format!` syntax.
///
/// ```
/// # use fltsim as _;
/// # let _sim = fltsim::Sim::new();
/// iotally::log_warn!("table full, evicted {}", 1);
/// ```
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => {
        $crate::log::write($crate::log::Level::Warning, ::core::format_args!($($arg)*))
    };
}

/// Logs information (`DPFLTR_INFO_LEVEL`); `format!` syntax.
///
/// ```
/// # use fltsim as _;
/// # let _sim = fltsim::Sim::new();
/// iotally::log_info!("filtering started");
/// ```
#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => {
        $crate::log::write($crate::log::Level::Info, ::core::format_args!($($arg)*))
    };
}

/// Logs a trace line (`DPFLTR_TRACE_LEVEL`) in **debug builds only**; in release builds the
/// arguments are type-checked but nothing is formatted or sent, so it may be used on hot paths.
///
/// ```
/// # use fltsim as _;
/// # let _sim = fltsim::Sim::new();
/// iotally::log_trace!("pre-read of {} bytes", 4096);
/// ```
#[macro_export]
macro_rules! log_trace {
    ($($arg:tt)*) => {
        if ::core::cfg!(debug_assertions) {
            $crate::log::write($crate::log::Level::Trace, ::core::format_args!($($arg)*))
        }
    };
}

#[cfg(test)]
mod tests {
    use super::{LINE_CAPACITY, Level, Line, write};
    use core::fmt::Write;

    /// The line's text, checking the newline and the NUL that end it.
    fn text(line: &mut Line) -> std::string::String {
        let bytes = line.terminated();
        assert!(bytes.ends_with(b"\n\0"), "always a newline and a NUL");
        std::string::String::from_utf8(bytes[..bytes.len() - 2].to_vec()).expect("valid UTF-8")
    }

    #[test]
    fn short_lines_are_kept_whole() {
        let mut line = Line::new();
        write!(line, "{} + {} = {}", 1, 2, 3).expect("never fails");
        assert_eq!(text(&mut line), "1 + 2 = 3");
    }

    #[test]
    fn long_lines_are_cut_and_terminated() {
        let mut line = Line::new();
        for _ in 0..100 {
            write!(line, "0123456789").expect("never fails");
        }
        let cut = text(&mut line);
        assert_eq!(cut.len(), LINE_CAPACITY - 2);
        assert!(cut.bytes().all(|b| b.is_ascii_digit()));
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        let mut line = Line::new();
        write!(line, "{}", "x".repeat(LINE_CAPACITY - 4)).expect("never fails");
        // Two bytes of room left; 'é' is two bytes, '€' is three: the '€' must not be split.
        write!(line, "é€").expect("never fails");
        let cut = text(&mut line);
        assert!(cut.ends_with('é'));
        assert_eq!(cut.len(), LINE_CAPACITY - 2);
    }

    #[test]
    fn nul_bytes_cannot_end_the_string_early() {
        let mut line = Line::new();
        write!(line, "a\0b").expect("never fails");
        assert_eq!(text(&mut line), "a?b");
    }

    #[test]
    fn empty_line_is_a_newline_and_a_nul() {
        let mut line = Line::new();
        assert_eq!(line.terminated(), b"\n\0");
    }

    #[test]
    fn lines_reach_the_debugger_as_ihvdriver_output() {
        let _sim = fltsim::Sim::new();
        write(Level::Info, format_args!("{} files, 100%s done", 3));
        crate::log_error!("failed: {:#x}", 0xC000_0001_u32);
        let lines = fltsim::kernel::debug_log();
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[0].component, lines[0].level), (77, 3));
        assert_eq!(
            lines[0].text, "iotally: 3 files, 100%s done\n",
            "the text is not a format string"
        );
        assert_eq!(
            (lines[1].level, lines[1].text.as_str()),
            (0, "iotally: failed: 0xc0000001\n")
        );
    }

    #[test]
    fn trace_lines_are_sent_in_debug_builds_only() {
        let _sim = fltsim::Sim::new();
        crate::log_trace!("hot path {}", 1);
        assert_eq!(
            fltsim::kernel::debug_log().len(),
            usize::from(cfg!(debug_assertions))
        );
    }

    #[test]
    fn overlong_lines_are_cut_without_panicking() {
        let _sim = fltsim::Sim::new();
        crate::log_warn!("{}", "y".repeat(4 * LINE_CAPACITY));
        let lines = fltsim::kernel::debug_log();
        assert_eq!(
            lines[0].text.len(),
            LINE_CAPACITY - 1,
            "text and newline, without the NUL"
        );
        assert!(lines[0].text.ends_with("yy\n"));
    }
}
