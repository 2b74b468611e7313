//! The transport on Windows: `FilterConnectCommunicationPort` / `FilterSendMessage` (fltlib), and
//! `QueryDosDeviceW` for drive letters.

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::Storage::FileSystem::QueryDosDeviceW;
use windows_sys::Win32::Storage::InstallableFileSystems::{
    FilterConnectCommunicationPort, FilterSendMessage,
};

use crate::transport::{Code, ConnectError, Transport};

/// `HRESULT_FROM_WIN32(ERROR_FILE_NOT_FOUND)`: no such port.
const E_NOT_FOUND: i32 = 0x8007_0002_u32.cast_signed();
/// `HRESULT_FROM_WIN32(ERROR_ACCESS_DENIED)`.
const E_ACCESS_DENIED: i32 = 0x8007_0005_u32.cast_signed();
/// `HRESULT_FROM_WIN32(ERROR_CONNECTION_COUNT_LIMIT)`.
const E_CONNECTION_COUNT_LIMIT: i32 = 0x8007_04D6_u32.cast_signed();

/// A connection to the driver's port.
pub struct WindowsPort {
    handle: HANDLE,
}

impl WindowsPort {
    /// Connects to `\iotally`.
    ///
    /// # Errors
    /// Why the connection was refused.
    pub fn connect() -> Result<Self, ConnectError> {
        let name: Vec<u16> = iotally_protocol::PORT_NAME
            .encode_utf16()
            .chain([0])
            .collect();
        let mut handle: HANDLE = INVALID_HANDLE_VALUE;
        // SAFETY: a NUL-terminated name, no context, no security attributes, a valid output.
        let hr = unsafe {
            FilterConnectCommunicationPort(
                name.as_ptr(),
                0,
                std::ptr::null(),
                0,
                std::ptr::null(),
                &raw mut handle,
            )
        };
        match hr {
            0 => Ok(Self { handle }),
            E_NOT_FOUND => Err(ConnectError::NotLoaded),
            E_ACCESS_DENIED => Err(ConnectError::AccessDenied),
            E_CONNECTION_COUNT_LIMIT => Err(ConnectError::Busy),
            other => Err(ConnectError::Other(Code::HResult(other))),
        }
    }
}

impl Drop for WindowsPort {
    fn drop(&mut self) {
        // SAFETY: the handle FilterConnectCommunicationPort returned, closed once.
        unsafe { CloseHandle(self.handle) };
    }
}

impl Transport for WindowsPort {
    fn send(&mut self, request: &[u8], reply: &mut [u8]) -> Result<(), Code> {
        let mut returned = 0_u32;
        // SAFETY: both buffers are valid for their lengths for the call; `returned` is valid.
        let hr = unsafe {
            FilterSendMessage(
                self.handle,
                request.as_ptr().cast(),
                u32::try_from(request.len()).unwrap_or(u32::MAX),
                reply.as_mut_ptr().cast(),
                u32::try_from(reply.len()).unwrap_or(u32::MAX),
                &raw mut returned,
            )
        };
        if hr < 0 {
            Err(Code::HResult(hr))
        } else {
            Ok(())
        }
    }

    fn device_of(&self, drive: &str) -> Option<String> {
        let name: Vec<u16> = drive.encode_utf16().chain([0]).collect();
        let mut target = vec![0_u16; 1024];
        // SAFETY: a NUL-terminated drive name and a buffer of `target.len()` units.
        let n = unsafe {
            QueryDosDeviceW(
                name.as_ptr(),
                target.as_mut_ptr(),
                u32::try_from(target.len()).unwrap_or(0),
            )
        };
        if n == 0 {
            return None;
        }
        let end = target.iter().position(|&u| u == 0).unwrap_or(target.len());
        Some(String::from_utf16_lossy(&target[..end]))
    }

    fn drives(&self) -> Vec<(String, String)> {
        (b'A'..=b'Z')
            .filter_map(|letter| {
                let drive = format!("{}:", char::from(letter));
                self.device_of(&drive).map(|device| (drive, device))
            })
            .collect()
    }
}
