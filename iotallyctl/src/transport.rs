//! How requests reach the driver: a [`Transport`] sends one message and lets the driver write into
//! the reply buffer. On Windows, `FilterSendMessage` over `\iotally` (`crate::windows`); on every
//! OS with feature `sim`, fltsim's port (`crate::sim`).

use std::fmt;

/// One connection to the driver's port.
pub trait Transport {
    /// Sends `request`; the driver writes its answer into `reply` (8-byte aligned). `Err` carries
    /// the failure code the system returned (an `NTSTATUS` or an `HRESULT`, see [`Code`]); the
    /// driver may still have written a response header into `reply`.
    ///
    /// # Errors
    /// The call failed.
    fn send(&mut self, request: &[u8], reply: &mut [u8]) -> Result<(), Code>;

    /// The device name of a drive letter (`C:` → `\Device\HarddiskVolume3`), if the system knows it.
    fn device_of(&self, drive: &str) -> Option<String>;

    /// Every drive letter with its device name.
    fn drives(&self) -> Vec<(String, String)>;
}

/// A failure code from the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// An `NTSTATUS` (fltsim).
    NtStatus(i32),
    /// An `HRESULT` (`FilterSendMessage`).
    HResult(i32),
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NtStatus(status) => write!(f, "NTSTATUS {:#010x}", status.cast_unsigned()),
            Self::HResult(hr) => write!(f, "HRESULT {:#010x}", hr.cast_unsigned()),
        }
    }
}

/// Why a connection could not be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// No port `\iotally`: the driver is not loaded.
    NotLoaded,
    /// The port admits administrators and SYSTEM only.
    AccessDenied,
    /// The driver takes one client at a time and has one.
    Busy,
    /// Anything else.
    Other(Code),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotLoaded => write!(
                f,
                "the iotally driver is not loaded (no port {}); load it with `fltmc load iotally`",
                iotally_protocol::PORT_NAME
            ),
            Self::AccessDenied => write!(
                f,
                "access denied: the iotally port admits administrators only; run iotallyctl from \
                 an elevated prompt"
            ),
            Self::Busy => write!(
                f,
                "another client is connected to iotally (it serves one at a time); close it and \
                 retry"
            ),
            Self::Other(code) => write!(f, "cannot connect to the iotally port: {code}"),
        }
    }
}

impl std::error::Error for ConnectError {}
