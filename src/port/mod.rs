//! The communication port `\iotally`: how `iotallyctl` reads and resets the tallies.
//!
//! - **Created** in `DriverEntry` after `FltRegisterFilter` ([`create`]), with a descriptor from
//!   `FltBuildDefaultSecurityDescriptor` (administrators and SYSTEM only) and `MaxConnections` 1:
//!   one client at a time, the next gets `STATUS_CONNECTION_COUNT_LIMIT`.
//! - **Closed** ([`close`]) before `FltUnregisterFilter`, on unload and on every `DriverEntry`
//!   failure path: with the server port open, `FltUnregisterFilter` never returns.
//! - **Messages** follow `iotally_protocol`; [`user`] says how the user buffers are touched,
//!   [`answer`] how a request is validated and answered.
//!
//! The port's globals (the server port, the filter handle it was created for) stay valid until
//! `FltUnregisterFilter` has returned: a message already running when the server port closes still
//! needs the filter handle, and `FltUnregisterFilter` waits for it (and disconnects the client).

mod answer;
mod instances;
mod user;

use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicI64, AtomicIsize, Ordering};

use windows_sys::Wdk::Foundation::OBJECT_ATTRIBUTES;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{PFLT_FILTER, PFLT_PORT};

use crate::flt::{
    FltBuildDefaultSecurityDescriptor, FltCloseClientPort, FltCloseCommunicationPort,
    FltCreateCommunicationPort, FltFreeSecurityDescriptor,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, OBJ_CASE_INSENSITIVE, OBJ_KERNEL_HANDLE, STATUS_SUCCESS, UNICODE_STRING,
};
use windows_sys::Win32::Security::PSECURITY_DESCRIPTOR;

/// `FLT_PORT_ALL_ACCESS` (fltkernel.h: `FLT_PORT_CONNECT | STANDARD_RIGHTS_ALL`; windows-sys has
/// `FLT_PORT_CONNECT` only).
const FLT_PORT_ALL_ACCESS: u32 = 0x0001 | 0x001F_0000;

/// The port name, UTF-16, as `iotally_protocol::PORT_NAME` spells it.
const PORT_NAME: [u16; 8] = {
    let text = iotally_protocol::PORT_NAME.as_bytes();
    let mut units = [0_u16; 8];
    let mut i = 0;
    while i < units.len() {
        units[i] = text[i] as u16;
        i += 1;
    }
    units
};
const _: () = assert!(iotally_protocol::PORT_NAME.len() == PORT_NAME.len());

/// The server port; 0 while none is open. Swapped out by [`close`], so it is closed once.
static SERVER: AtomicIsize = AtomicIsize::new(0);

/// The filter the port was created for, kept until the next [`create`]: valid for as long as a
/// port callback can run (until `FltUnregisterFilter` returns).
static FILTER: AtomicIsize = AtomicIsize::new(0);

/// Ties dump cursors to this load of the driver (the system time when the port was created).
static LOAD_TOKEN: AtomicI64 = AtomicI64::new(0);

/// The filter handle for the port's Filter Manager calls.
fn filter() -> PFLT_FILTER {
    FILTER.load(Ordering::Acquire)
}

/// Creates the server port `\iotally` for `filter` (`DriverEntry`, after `FltRegisterFilter`).
/// IRQL `PASSIVE_LEVEL`.
pub(crate) fn create(filter: PFLT_FILTER) -> NTSTATUS {
    FILTER.store(filter, Ordering::Release);
    LOAD_TOKEN.store(answer::now().max(1), Ordering::Relaxed);
    let mut descriptor: PSECURITY_DESCRIPTOR = ptr::null_mut();
    // SAFETY: `descriptor` is a valid output variable; PASSIVE_LEVEL (DriverEntry).
    let status =
        unsafe { FltBuildDefaultSecurityDescriptor(&raw mut descriptor, FLT_PORT_ALL_ACCESS) };
    if status < 0 {
        return status;
    }
    let mut name_units = PORT_NAME;
    #[allow(clippy::cast_possible_truncation)] // 16 bytes
    let bytes = (PORT_NAME.len() * 2) as u16;
    let name = UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        Buffer: name_units.as_mut_ptr(),
    };
    #[allow(clippy::cast_possible_truncation)] // 48 bytes
    let attributes = OBJECT_ATTRIBUTES {
        Length: size_of::<OBJECT_ATTRIBUTES>() as u32,
        RootDirectory: ptr::null_mut(),
        ObjectName: &raw const name,
        Attributes: OBJ_KERNEL_HANDLE | OBJ_CASE_INSENSITIVE,
        SecurityDescriptor: descriptor.cast_const().cast(),
        SecurityQualityOfService: ptr::null(),
    };
    let mut server: PFLT_PORT = 0;
    // SAFETY: `filter` is registered; the attributes, name and descriptor live across the call;
    // the callbacks are this module's, valid for the driver's lifetime.
    let status = unsafe {
        FltCreateCommunicationPort(
            filter,
            &raw mut server,
            &raw const attributes,
            ptr::null(),
            Some(connect),
            Some(disconnect),
            Some(message),
            1,
        )
    };
    // SAFETY: the descriptor built above; the port keeps its own copy ("free the descriptor after
    // creating the port").
    unsafe { FltFreeSecurityDescriptor(descriptor) };
    if status >= 0 {
        SERVER.store(server, Ordering::Release);
    }
    status
}

/// Closes the server port if it is open (before `FltUnregisterFilter`, on every path); a second
/// call does nothing. Connections already made stay until `FltUnregisterFilter` ends them.
pub(crate) fn close() {
    let server = SERVER.swap(0, Ordering::AcqRel);
    if server != 0 {
        // SAFETY: `server` came from FltCreateCommunicationPort and, swapped out, is closed once.
        unsafe { FltCloseCommunicationPort(server) };
    }
}

/// `ConnectNotifyCallback` (`PASSIVE_LEVEL`): accepts the connection; the cookie is the client
/// port itself, which the disconnect closes. Filter Manager enforces the single connection.
unsafe extern "system" fn connect(
    client: PFLT_PORT,
    _server_cookie: *const c_void,
    _context: *const c_void,
    _context_size: u32,
    cookie: *mut *mut c_void,
) -> NTSTATUS {
    // SAFETY: Filter Manager's output variable for the connection cookie.
    unsafe { cookie.write(ptr::without_provenance_mut(client.cast_unsigned())) };
    STATUS_SUCCESS
}

/// `DisconnectNotifyCallback` (`PASSIVE_LEVEL`): closes the client port.
unsafe extern "system" fn disconnect(cookie: *const c_void) {
    let mut client: PFLT_PORT = cookie.addr().cast_signed();
    // SAFETY: the cookie is the client port `connect` stored, closed once, here; the filter handle
    // is valid until FltUnregisterFilter returns.
    unsafe { FltCloseClientPort(filter(), &raw mut client) };
}

/// `MessageNotifyCallback` (`PASSIVE_LEVEL`): answers one request. The buffers are raw user
/// addresses; [`answer::handle`] copies the input in before reading it and writes the output only
/// through [`user::copy_out`].
unsafe extern "system" fn message(
    _cookie: *const c_void,
    input: *const c_void,
    input_length: u32,
    output: *mut c_void,
    output_length: u32,
    returned: *mut u32,
) -> NTSTATUS {
    let (status, written) = answer::handle(
        user::UserInput::new(input, input_length),
        user::UserOutput::new(output, output_length),
    );
    // SAFETY: Filter Manager's kernel output variable for the length written.
    unsafe { returned.write(written) };
    status
}
