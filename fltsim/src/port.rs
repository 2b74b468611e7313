//! Communication ports: `FltCreateCommunicationPort`, `FltCloseCommunicationPort`,
//! `FltCloseClientPort`, the default security descriptor routines, and an in-process user-mode
//! client ([`PortClient`]) that connects (as an administrator or a standard user), sends messages
//! and disconnects.
//!
//! The message callback gets user-mode buffers as Filter Manager passes them ("`PFLT_MESSAGE_NOTIFY`
//! callback function (fltkernel.h)"): raw user addresses, probed with `ProbeForRead` (the range
//! only: an unmapped input buffer gets through) and `ProbeForWrite` (which touches the pages: an
//! unmapped output buffer is refused before the callback runs), never aligned on purpose. A client
//! can hand the callback an unmapped input buffer ([`Input::Unmapped`]), an output buffer that it
//! unmapped or made read-only after the probe ([`Output::UnmappedAfterProbe`],
//! [`Output::ReadOnlyAfterProbe`]) and misaligned buffers; see the `usermem` module for what a
//! driver may do with them.

use std::ffi::c_void;
use std::marker::PhantomData;

use windows_sys::Wdk::Foundation::OBJECT_ATTRIBUTES;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    PFLT_CONNECT_NOTIFY, PFLT_DISCONNECT_NOTIFY, PFLT_FILTER, PFLT_MESSAGE_NOTIFY, PFLT_PORT,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, OBJ_KERNEL_HANDLE, STATUS_ACCESS_DENIED, STATUS_ACCESS_VIOLATION,
    STATUS_CONNECTION_COUNT_LIMIT, STATUS_INVALID_PARAMETER, STATUS_NOT_SUPPORTED,
    STATUS_OBJECT_NAME_COLLISION, STATUS_OBJECT_NAME_NOT_FOUND, STATUS_PORT_DISCONNECTED,
    STATUS_SUCCESS,
};
use windows_sys::Win32::Security::PSECURITY_DESCRIPTOR;

use crate::Sim;
use crate::abi::{ConnectNotify, DisconnectNotify, MessageNotify};
use crate::callback::call_at;
use crate::irql::{APC_LEVEL, PASSIVE_LEVEL};
use crate::usermem::{self, Access, UNMAPPED_BASE, UNMAPPED_LIMIT};
use crate::verifier::{invalid_handle, irql_at_most, violation};
use crate::world::{self, Anchor, ClientPort, FilterState, ServerPort};

/// `FLT_PORT_ALL_ACCESS` (fltkernel.h: `FLT_PORT_CONNECT | STANDARD_RIGHTS_ALL`; windows-sys
/// carries `FLT_PORT_CONNECT` but not this combination).
pub const FLT_PORT_ALL_ACCESS: u32 = 0x0001 | 0x001F_0000;

/// Size of the opaque security descriptor fltsim hands out.
const DESCRIPTOR_BYTES: usize = 64;

/// `FltBuildDefaultSecurityDescriptor`: a descriptor granting `DesiredAccess` to administrators
/// and SYSTEM, to free with `FltFreeSecurityDescriptor`. IRQL <= `APC_LEVEL`
/// ("`FltBuildDefaultSecurityDescriptor` function (fltkernel.h)").
///
/// # Safety
/// `securitydescriptor` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltBuildDefaultSecurityDescriptor(
    securitydescriptor: *mut PSECURITY_DESCRIPTOR,
    desiredaccess: u32,
) -> NTSTATUS {
    if !irql_at_most("FltBuildDefaultSecurityDescriptor", APC_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    if securitydescriptor.is_null() || desiredaccess == 0 {
        violation("fltsim: FltBuildDefaultSecurityDescriptor: NULL output or no access".into());
        return STATUS_INVALID_PARAMETER;
    }
    let mut descriptor: Box<[u8]> = vec![0_u8; DESCRIPTOR_BYTES].into_boxed_slice();
    descriptor[0] = 1; // SECURITY_DESCRIPTOR_REVISION
    let address = descriptor.as_mut_ptr() as usize;
    world::with(|w| w.security_descriptors.insert(address, descriptor));
    // SAFETY: checked non-null; the caller's output variable.
    unsafe { securitydescriptor.write(address as PSECURITY_DESCRIPTOR) };
    STATUS_SUCCESS
}

/// `FltFreeSecurityDescriptor`. IRQL <= `APC_LEVEL` ("`FltFreeSecurityDescriptor` function
/// (fltkernel.h)").
///
/// # Safety
/// None beyond the routine's contract; an unknown descriptor is reported.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltFreeSecurityDescriptor(securitydescriptor: PSECURITY_DESCRIPTOR) {
    if !irql_at_most("FltFreeSecurityDescriptor", APC_LEVEL) {
        return;
    }
    let known = world::with(|w| {
        w.security_descriptors
            .remove(&(securitydescriptor as usize))
    });
    if known.is_none() {
        invalid_handle(
            "FltFreeSecurityDescriptor",
            "security descriptor",
            securitydescriptor as isize,
        );
    }
}

/// Reads the port name from `attributes`.
///
/// # Safety
/// `attributes` is NULL or valid, with a NULL or valid `ObjectName`.
unsafe fn port_name(attributes: *const OBJECT_ATTRIBUTES) -> Result<String, String> {
    if attributes.is_null() {
        return Err("ObjectAttributes is NULL".into());
    }
    // SAFETY: non-null; the caller's OBJECT_ATTRIBUTES.
    let attributes = unsafe { &*attributes };
    if attributes.Attributes & OBJ_KERNEL_HANDLE == 0 {
        return Err(
            "ObjectAttributes lacks OBJ_KERNEL_HANDLE (the port handle would be a user handle of \
             the current process)"
                .into(),
        );
    }
    if attributes.ObjectName.is_null() {
        return Err("ObjectAttributes has no ObjectName".into());
    }
    // SAFETY: non-null; the caller's UNICODE_STRING, whose buffer holds Length bytes.
    let name = unsafe { &*attributes.ObjectName };
    if name.Buffer.is_null() || name.Length == 0 {
        return Err("the port name is empty".into());
    }
    // SAFETY: as above.
    let units = unsafe { std::slice::from_raw_parts(name.Buffer, usize::from(name.Length / 2)) };
    Ok(String::from_utf16_lossy(units))
}

/// `FltCreateCommunicationPort`: a named server port. IRQL `PASSIVE_LEVEL`.
///
/// `ObjectAttributes` must carry `OBJ_KERNEL_HANDLE` and a name; `ConnectNotify` and
/// `DisconnectNotify` are required; `MaxConnections` must be positive. A name already used by an open
/// port gives `STATUS_OBJECT_NAME_COLLISION`.
///
/// # Safety
/// Pointer arguments must be valid as documented.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltCreateCommunicationPort(
    filter: PFLT_FILTER,
    serverport: *mut PFLT_PORT,
    objectattributes: *const OBJECT_ATTRIBUTES,
    serverportcookie: *const c_void,
    connectnotifycallback: PFLT_CONNECT_NOTIFY,
    disconnectnotifycallback: PFLT_DISCONNECT_NOTIFY,
    messagenotifycallback: PFLT_MESSAGE_NOTIFY,
    maxconnections: i32,
) -> NTSTATUS {
    if !irql_at_most("FltCreateCommunicationPort", PASSIVE_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    let registered = world::with(|w| {
        w.filter_by_handle(filter)
            .is_some_and(|f| f.state != FilterState::Unregistered)
    });
    if !registered {
        invalid_handle("FltCreateCommunicationPort", "filter", filter);
        return STATUS_INVALID_PARAMETER;
    }
    let descriptor = if objectattributes.is_null() {
        0
    } else {
        // SAFETY: non-null; the caller's OBJECT_ATTRIBUTES.
        unsafe { (*objectattributes).SecurityDescriptor }.addr()
    };
    // SAFETY: the caller's OBJECT_ATTRIBUTES (validated inside).
    let name = match unsafe { port_name(objectattributes) } {
        Ok(name) => name,
        Err(problem) => {
            violation(format!("fltsim: FltCreateCommunicationPort: {problem}"));
            return STATUS_INVALID_PARAMETER;
        }
    };
    let connect = ConnectNotify::from_driver(connectnotifycallback);
    let disconnect = DisconnectNotify::from_driver(disconnectnotifycallback);
    let message = MessageNotify::from_driver(messagenotifycallback);
    if serverport.is_null() || connect.is_none() || disconnect.is_none() {
        violation(
            "fltsim: FltCreateCommunicationPort: ServerPort, ConnectNotifyCallback and \
             DisconnectNotifyCallback are required"
                .into(),
        );
        return STATUS_INVALID_PARAMETER;
    }
    if maxconnections <= 0 {
        return STATUS_INVALID_PARAMETER;
    }
    let handle = world::with(|w| {
        if w.server_ports
            .values()
            .any(|p| p.open && p.name.eq_ignore_ascii_case(&name))
        {
            return None;
        }
        let anchor = Anchor::new();
        let handle = anchor.handle();
        let admins_only = w.security_descriptors.contains_key(&descriptor);
        w.server_ports.insert(
            handle,
            ServerPort {
                admins_only,
                _anchor: anchor,
                name,
                cookie: serverportcookie as usize,
                connect,
                disconnect,
                message,
                max_connections: maxconnections,
                open: true,
                connections: 0,
            },
        );
        Some(handle)
    });
    let Some(handle) = handle else {
        return STATUS_OBJECT_NAME_COLLISION;
    };
    // SAFETY: checked non-null; the caller's output variable.
    unsafe { serverport.write(handle) };
    STATUS_SUCCESS
}

/// `FltCloseCommunicationPort`: closes a server port; connections already made stay until they
/// disconnect. IRQL `PASSIVE_LEVEL`.
///
/// # Safety
/// None beyond the routine's contract; an unknown or closed port is reported.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltCloseCommunicationPort(serverport: PFLT_PORT) {
    if !irql_at_most("FltCloseCommunicationPort", PASSIVE_LEVEL) {
        return;
    }
    let closed = world::with(|w| match w.server_ports.get_mut(&serverport) {
        Some(port) if port.open => {
            port.open = false;
            true
        }
        _ => false,
    });
    if !closed {
        invalid_handle("FltCloseCommunicationPort", "server port", serverport);
    }
}

/// `FltCloseClientPort`: closes a connection (usually in `DisconnectNotify`) and sets `*ClientPort`
/// to NULL. IRQL `PASSIVE_LEVEL`.
///
/// # Safety
/// `clientport` must be valid for a read and a write.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltCloseClientPort(filter: PFLT_FILTER, clientport: *mut PFLT_PORT) {
    if !irql_at_most("FltCloseClientPort", PASSIVE_LEVEL) {
        return;
    }
    if clientport.is_null() {
        violation("fltsim: FltCloseClientPort: ClientPort is NULL".into());
        return;
    }
    // SAFETY: checked non-null; the caller's variable holding the client port.
    let port = unsafe { clientport.read() };
    let known = world::with(|w| {
        if w.filter_by_handle(filter).is_none() {
            return Err("filter");
        }
        match w.client_ports.get_mut(&port) {
            Some(client) if !client.closed_by_driver => {
                client.closed_by_driver = true;
                Ok(())
            }
            _ => Err("client port"),
        }
    });
    match known {
        Ok(()) => {
            // SAFETY: as above.
            unsafe { clientport.write(0) };
        }
        Err(kind) => invalid_handle(
            "FltCloseClientPort",
            kind,
            if kind == "filter" { filter } else { port },
        ),
    }
}

/// A `DisconnectNotify` call owed to a connection that just ended: the client port, its cookie and
/// the callback.
pub(crate) type Disconnect = (isize, usize, Option<DisconnectNotify>);

/// Marks every live connection disconnected (the filter is unregistering); returns the calls to
/// make to `DisconnectNotify`.
pub(crate) fn disconnect_all_clients() -> Vec<Disconnect> {
    world::with(|w| {
        let mut calls = Vec::new();
        let live: Vec<isize> = w
            .client_ports
            .iter()
            .filter(|(_, c)| !c.disconnected)
            .map(|(&h, _)| h)
            .collect();
        for handle in live {
            let Some(client) = w.client_ports.get_mut(&handle) else {
                continue;
            };
            client.disconnected = true;
            let (server, cookie) = (client.server, client.cookie);
            if let Some(port) = w.server_ports.get_mut(&server) {
                port.connections -= 1;
                calls.push((handle, cookie, port.disconnect));
            }
        }
        calls
    })
}

/// Calls `DisconnectNotify` for each connection collected by [`disconnect_all_clients`], once the
/// `MessageNotify` calls still running on it have returned (a disconnect never overtakes them).
pub(crate) fn notify_disconnects(calls: Vec<Disconnect>) {
    for (client, cookie, disconnect) in calls {
        world::wait_for(&world::Wait::Messages { client }, |w| {
            w.client_ports
                .get(&client)
                .is_none_or(|c| c.in_flight == 0)
                .then_some(())
        });
        if let Some(disconnect) = disconnect {
            call_at(PASSIVE_LEVEL, "DisconnectNotifyCallback", || {
                // SAFETY: the driver's DisconnectNotify with the cookie its ConnectNotify returned.
                unsafe { disconnect.call(cookie as *const c_void) };
            });
        }
    }
}

/// Client ports the driver never closed after their user disconnected, for the report.
pub(crate) fn unclosed_client_ports() -> usize {
    world::with(|w| {
        w.client_ports
            .values()
            .filter(|c| c.disconnected && !c.closed_by_driver)
            .count()
    })
}

/// A user-mode connection to a communication server port (what `FilterConnectCommunicationPort`
/// gives an application). Dropping it disconnects ([`PortClient::close`]).
pub struct PortClient<'sim> {
    handle: isize,
    closed: bool,
    _sim: PhantomData<&'sim Sim>,
}

/// Who connects to a port ([`Sim::connect_as`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A member of Administrators (elevated), or SYSTEM.
    Administrator,
    /// A standard user, or an administrator without elevation.
    StandardUser,
}

impl Sim {
    /// Connects to the server port named `port_name` as an administrator, with `context` as the
    /// connection context: [`Sim::connect_as`] with [`Caller::Administrator`].
    ///
    /// # Errors
    /// As [`Sim::connect_as`].
    pub fn connect(&self, port_name: &str, context: &[u8]) -> Result<PortClient<'_>, NTSTATUS> {
        self.connect_as(Caller::Administrator, port_name, context)
    }

    /// Connects to the server port named `port_name` as `caller` (`FilterConnectCommunicationPort`):
    /// checks the port's security, then calls `ConnectNotify` at `PASSIVE_LEVEL`.
    ///
    /// A port created with a descriptor from `FltBuildDefaultSecurityDescriptor` admits
    /// administrators and SYSTEM only ("`FltBuildDefaultSecurityDescriptor` function
    /// (fltkernel.h)"); fltsim does not model other descriptors, and lets anyone connect to them.
    ///
    /// # Errors
    /// `STATUS_OBJECT_NAME_NOT_FOUND` if no open port has that name, `STATUS_ACCESS_DENIED` for a
    /// standard user on an administrators-only port, `STATUS_CONNECTION_COUNT_LIMIT` past
    /// `MaxConnections`, or `ConnectNotify`'s failure status.
    pub fn connect_as(
        &self,
        caller: Caller,
        port_name: &str,
        context: &[u8],
    ) -> Result<PortClient<'_>, NTSTATUS> {
        let _exit = crate::session::checked();
        let found = world::with(|w| {
            let (&server, port) = w
                .server_ports
                .iter_mut()
                .find(|(_, p)| p.open && p.name.eq_ignore_ascii_case(port_name))
                .ok_or(STATUS_OBJECT_NAME_NOT_FOUND)?;
            if port.admins_only && caller == Caller::StandardUser {
                return Err(STATUS_ACCESS_DENIED);
            }
            if port.connections >= usize::try_from(port.max_connections).unwrap_or(0) {
                return Err(STATUS_CONNECTION_COUNT_LIMIT);
            }
            port.connections += 1;
            let (cookie, connect) = (port.cookie, port.connect);
            let anchor = Anchor::new();
            let handle = anchor.handle();
            w.client_ports.insert(
                handle,
                ClientPort {
                    _anchor: anchor,
                    server,
                    cookie: 0,
                    closed_by_driver: false,
                    disconnected: false,
                    in_flight: 0,
                },
            );
            Ok((handle, cookie, connect))
        });
        let (handle, server_cookie, connect) = found?;
        let mut connection_cookie: *mut c_void = std::ptr::null_mut();
        let bytes: Vec<u8> = context.to_vec();
        let status = connect.map_or(STATUS_SUCCESS, |connect| {
            call_at(PASSIVE_LEVEL, "ConnectNotifyCallback", || {
                // SAFETY: the driver's ConnectNotify with a live client port, its server cookie,
                // the connection context bytes and an output cookie slot.
                unsafe {
                    connect.call(
                        handle,
                        server_cookie as *const c_void,
                        if bytes.is_empty() {
                            std::ptr::null()
                        } else {
                            bytes.as_ptr().cast()
                        },
                        u32::try_from(bytes.len()).unwrap_or(u32::MAX),
                        &raw mut connection_cookie,
                    )
                }
            })
        });
        world::with(|w| {
            if status < 0 {
                let server = w.client_ports.remove(&handle).map(|c| c.server);
                if let Some(port) = server.and_then(|s| w.server_ports.get_mut(&s)) {
                    port.connections -= 1;
                }
            } else if let Some(client) = w.client_ports.get_mut(&handle) {
                client.cookie = connection_cookie as usize;
            }
        });
        if status < 0 {
            return Err(status);
        }
        Ok(PortClient {
            handle,
            closed: false,
            _sim: PhantomData,
        })
    }
}

/// The input buffer of a message ([`PortClient::message`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// NULL, length 0.
    Null,
    /// These bytes, in a buffer aligned to 16 bytes (empty: a valid address with length 0).
    Bytes(&'a [u8]),
    /// These bytes at an address one byte past an aligned one.
    Misaligned(&'a [u8]),
    /// An address the process never mapped, with this length: `ProbeForRead` checks only that the
    /// range is in user space, so the callback gets it.
    Unmapped(u32),
}

/// The output buffer of a message ([`PortClient::message`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// NULL, length 0.
    Null,
    /// A zeroed, writable buffer of this length, aligned to 16 bytes.
    Buffer(u32),
    /// A writable buffer of this length at an address one byte past an aligned one.
    Misaligned(u32),
    /// An unmapped address: `ProbeForWrite` fails, Filter Manager returns
    /// `STATUS_ACCESS_VIOLATION` and the callback never runs.
    Unmapped(u32),
    /// A buffer the process unmapped (another of its threads freed it) after Filter Manager probed
    /// it: the callback gets an address that faults.
    UnmappedAfterProbe(u32),
    /// A buffer the process made read-only after Filter Manager probed it.
    ReadOnlyAfterProbe(u32),
}

/// What `FilterSendMessage` gives the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The status (`MessageNotify`'s, or Filter Manager's when the callback did not run).
    pub status: NTSTATUS,
    /// `*ReturnOutputBufferLength` as the callback left it (0 if it did not run).
    pub returned: u32,
    /// The whole output buffer afterwards, whatever the status (empty when it was NULL or
    /// unmapped): the driver wrote into the user's memory directly.
    pub buffer: Vec<u8>,
    /// Whether `MessageNotify` ran.
    pub delivered: bool,
}

/// A simulated user buffer: 16-byte aligned storage, the offset of the buffer in it and its
/// length.
struct UserBuffer {
    storage: Vec<u128>,
    offset: usize,
    len: usize,
}

impl UserBuffer {
    /// A zeroed buffer of `len` bytes at `offset` bytes past a 16-byte boundary.
    fn new(len: usize, offset: usize) -> Self {
        Self {
            storage: vec![0_u128; (len + offset).div_ceil(16).max(1)],
            offset,
            len,
        }
    }

    fn with_bytes(bytes: &[u8], offset: usize) -> Self {
        let mut buffer = Self::new(bytes.len(), offset);
        buffer.bytes_mut().copy_from_slice(bytes);
        buffer
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let all: &mut [u8] = bytes_of(&mut self.storage);
        &mut all[self.offset..self.offset + self.len]
    }

    fn address(&mut self) -> usize {
        self.bytes_mut().as_mut_ptr().addr()
    }

    fn pointer(&mut self) -> *mut c_void {
        self.bytes_mut().as_mut_ptr().cast()
    }
}

/// The bytes of `words`.
fn bytes_of(words: &mut [u128]) -> &mut [u8] {
    let len = size_of_val(words);
    // SAFETY: `u128` has no padding and every byte pattern is a valid `u8`; the slice covers the
    // same memory, borrowed mutably for the same lifetime.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) }
}

/// An unmapped user address for a buffer of `len` bytes (capped to fltsim's unmapped range).
fn unmapped(len: u32) -> (*mut c_void, u32) {
    let cap = u32::try_from(UNMAPPED_LIMIT - UNMAPPED_BASE).unwrap_or(u32::MAX);
    (
        std::ptr::without_provenance_mut(UNMAPPED_BASE),
        len.min(cap),
    )
}

/// The pointer and length a buffer is handed to the driver with (NULL and 0 without one).
fn raw(buffer: Option<&mut UserBuffer>) -> (*mut c_void, u32) {
    buffer.map_or((std::ptr::null_mut(), 0), |b| {
        (b.pointer(), u32::try_from(b.len).unwrap_or(u32::MAX))
    })
}

impl PortClient<'_> {
    /// Sends `input` and receives at most `output_capacity` bytes (`FilterSendMessage`).
    /// Returns `MessageNotify`'s status and the output bytes it reported.
    #[must_use]
    pub fn send(&self, input: &[u8], output_capacity: u32) -> (NTSTATUS, Vec<u8>) {
        self.send_raw(Some(input), Some(output_capacity))
    }

    /// Like [`PortClient::send`], with NULL buffers where `None` is given (length 0): the way to
    /// send malformed messages (no input, no output buffer, empty input).
    #[must_use]
    pub fn send_raw(
        &self,
        input: Option<&[u8]>,
        output_capacity: Option<u32>,
    ) -> (NTSTATUS, Vec<u8>) {
        let input = match input {
            None | Some([]) => Input::Null,
            Some(bytes) => Input::Bytes(bytes),
        };
        let output = match output_capacity {
            None | Some(0) => Output::Null,
            Some(n) => Output::Buffer(n),
        };
        let mut reply = self.message(input, output);
        reply
            .buffer
            .truncate(usize::try_from(reply.returned).unwrap_or(0));
        (reply.status, reply.buffer)
    }

    /// Sends one message with the buffers described (`FilterSendMessage`): Filter Manager's probes,
    /// then `MessageNotify` at `PASSIVE_LEVEL`, with the user buffers registered as user memory for
    /// the duration of the call.
    ///
    /// Secures the driver left on the buffers when the callback returned are reported
    /// (`MmUnsecureVirtualMemory` missing).
    #[must_use]
    #[allow(clippy::too_many_lines)] // one call's probes, buffers, callback and bookkeeping
    pub fn message(&self, input: Input<'_>, output: Output) -> Reply {
        let _exit = crate::session::checked();
        let refused = |status| Reply {
            status,
            returned: 0,
            buffer: Vec::new(),
            delivered: false,
        };
        let found = world::with(|w| {
            let client = w.client_ports.get(&self.handle)?;
            if client.closed_by_driver || client.disconnected {
                return Some(Err(STATUS_PORT_DISCONNECTED));
            }
            let (server, cookie) = (client.server, client.cookie);
            let message = w.server_ports.get(&server)?.message;
            let delivered = message.is_some() && !matches!(output, Output::Unmapped(_));
            if delivered && let Some(client) = w.client_ports.get_mut(&self.handle) {
                client.in_flight += 1;
            }
            Some(Ok((cookie, message)))
        });
        let (cookie, message) = match found {
            Some(Ok(found)) => found,
            Some(Err(status)) => return refused(status),
            None => return refused(STATUS_PORT_DISCONNECTED),
        };
        let Some(message) = message else {
            return refused(STATUS_NOT_SUPPORTED);
        };
        if matches!(output, Output::Unmapped(_)) {
            // ProbeForWrite touches the pages: the probe raises and Filter Manager fails the call.
            return refused(STATUS_ACCESS_VIOLATION);
        }
        let mut input_buffer = match input {
            Input::Null | Input::Unmapped(_) => None,
            Input::Bytes(bytes) => Some(UserBuffer::with_bytes(bytes, 0)),
            Input::Misaligned(bytes) => Some(UserBuffer::with_bytes(bytes, 1)),
        };
        let (input_pointer, input_length) = match input {
            Input::Unmapped(len) => unmapped(len),
            _ => raw(input_buffer.as_mut()),
        };
        let (mut output_buffer, access) = match output {
            Output::Null | Output::Unmapped(_) | Output::UnmappedAfterProbe(_) => {
                (None, Access::ReadWrite)
            }
            Output::Buffer(n) => (Some(UserBuffer::new(n as usize, 0)), Access::ReadWrite),
            Output::Misaligned(n) => (Some(UserBuffer::new(n as usize, 1)), Access::ReadWrite),
            Output::ReadOnlyAfterProbe(n) => (Some(UserBuffer::new(n as usize, 0)), Access::Read),
        };
        let (output_pointer, capacity) = match output {
            Output::UnmappedAfterProbe(n) => unmapped(n),
            _ => raw(output_buffer.as_mut()),
        };
        let mut registered = Vec::new();
        if let Some(buffer) = input_buffer.as_mut() {
            registered.push(buffer.address());
            usermem::register(buffer.address(), buffer.len, Access::ReadWrite);
        }
        if let Some(buffer) = output_buffer.as_mut() {
            registered.push(buffer.address());
            usermem::register(buffer.address(), buffer.len, access);
        }
        let mut returned: u32 = 0;
        let status = call_at(PASSIVE_LEVEL, "MessageNotifyCallback", || {
            // SAFETY: the driver's MessageNotify with its connection cookie and user buffers that
            // stay allocated for the call (or NULL, or unmapped addresses on purpose).
            unsafe {
                message.call(
                    cookie as *const c_void,
                    input_pointer,
                    input_length,
                    output_pointer,
                    capacity,
                    &raw mut returned,
                )
            }
        });
        let left_secured: usize = registered.into_iter().map(usermem::unregister).sum();
        world::with(|w| {
            if let Some(client) = w.client_ports.get_mut(&self.handle) {
                client.in_flight -= 1;
            }
            if left_secured > 0 {
                w.findings.push(format!(
                    "user memory left secured: MessageNotifyCallback returned with {left_secured} \
                     range(s) of its buffers secured by MmSecureVirtualMemory and not released \
                     with MmUnsecureVirtualMemory"
                ));
            }
        });
        world::notify();
        if returned > capacity {
            violation(format!(
                "fltsim: MessageNotifyCallback reported {returned} output bytes, more than the \
                 {capacity}-byte output buffer"
            ));
        }
        Reply {
            status,
            returned,
            buffer: output_buffer
                .map(|mut b| b.bytes_mut().to_vec())
                .unwrap_or_default(),
            delivered: true,
        }
    }

    /// Disconnects (closes the user handle): `DisconnectNotify` runs, at `PASSIVE_LEVEL`.
    pub fn close(mut self) {
        self.disconnect();
    }

    fn disconnect(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let call = world::with(|w| {
            let client = w.client_ports.get_mut(&self.handle)?;
            if client.disconnected {
                return None;
            }
            client.disconnected = true;
            let (server, cookie) = (client.server, client.cookie);
            let port = w.server_ports.get_mut(&server)?;
            port.connections -= 1;
            Some((self.handle, cookie, port.disconnect))
        });
        notify_disconnects(call.into_iter().collect());
    }
}

impl Drop for PortClient<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.disconnect();
        }
    }
}

const _: [unsafe extern "system" fn(*mut PSECURITY_DESCRIPTOR, u32) -> NTSTATUS; 2] = [
    FltBuildDefaultSecurityDescriptor,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltBuildDefaultSecurityDescriptor,
];
const _: [unsafe extern "system" fn(PSECURITY_DESCRIPTOR); 2] = [
    FltFreeSecurityDescriptor,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltFreeSecurityDescriptor,
];
const _: [unsafe extern "system" fn(
    PFLT_FILTER,
    *mut PFLT_PORT,
    *const OBJECT_ATTRIBUTES,
    *const c_void,
    PFLT_CONNECT_NOTIFY,
    PFLT_DISCONNECT_NOTIFY,
    PFLT_MESSAGE_NOTIFY,
    i32,
) -> NTSTATUS; 2] = [
    FltCreateCommunicationPort,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltCreateCommunicationPort,
];
const _: [unsafe extern "system" fn(PFLT_PORT); 2] = [
    FltCloseCommunicationPort,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltCloseCommunicationPort,
];
const _: [unsafe extern "system" fn(PFLT_FILTER, *mut PFLT_PORT); 2] = [
    FltCloseClientPort,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltCloseClientPort,
];
