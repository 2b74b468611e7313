//! Communication ports: `FltCreateCommunicationPort`, `FltCloseCommunicationPort`,
//! `FltCloseClientPort`, the default security descriptor routines, and an in-process user-mode
//! client ([`PortClient`]) that connects, sends messages and disconnects.
//!
//! The message callback gets user-mode-like buffers: the client's bytes copied into a fresh
//! allocation (NULL when empty) and an output buffer of exactly the capacity asked for.

use std::ffi::c_void;
use std::marker::PhantomData;

use windows_sys::Wdk::Foundation::OBJECT_ATTRIBUTES;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    PFLT_CONNECT_NOTIFY, PFLT_DISCONNECT_NOTIFY, PFLT_FILTER, PFLT_MESSAGE_NOTIFY, PFLT_PORT,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, OBJ_KERNEL_HANDLE, STATUS_CONNECTION_COUNT_LIMIT, STATUS_INVALID_PARAMETER,
    STATUS_NOT_SUPPORTED, STATUS_OBJECT_NAME_COLLISION, STATUS_OBJECT_NAME_NOT_FOUND,
    STATUS_PORT_DISCONNECTED, STATUS_SUCCESS,
};
use windows_sys::Win32::Security::PSECURITY_DESCRIPTOR;

use crate::Sim;
use crate::abi::{ConnectNotify, DisconnectNotify, MessageNotify};
use crate::callback::call_at;
use crate::irql::{APC_LEVEL, PASSIVE_LEVEL};
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
        w.server_ports.insert(
            handle,
            ServerPort {
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

/// Marks every live connection disconnected (the filter is unregistering); returns the calls to
/// make to `DisconnectNotify`.
pub(crate) fn disconnect_all_clients() -> Vec<(usize, Option<DisconnectNotify>)> {
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
                calls.push((cookie, port.disconnect));
            }
        }
        calls
    })
}

/// Calls `DisconnectNotify` for each connection collected by [`disconnect_all_clients`].
pub(crate) fn notify_disconnects(calls: Vec<(usize, Option<DisconnectNotify>)>) {
    for (cookie, disconnect) in calls {
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

impl Sim {
    /// Connects to the server port named `port_name` with `context` as the connection context:
    /// calls `ConnectNotify` at `PASSIVE_LEVEL`.
    ///
    /// # Errors
    /// `STATUS_OBJECT_NAME_NOT_FOUND` if no open port has that name,
    /// `STATUS_CONNECTION_COUNT_LIMIT` past `MaxConnections`, or `ConnectNotify`'s failure status.
    pub fn connect(&self, port_name: &str, context: &[u8]) -> Result<PortClient<'_>, NTSTATUS> {
        let _exit = crate::session::checked();
        let found = world::with(|w| {
            let (&server, port) = w
                .server_ports
                .iter_mut()
                .find(|(_, p)| p.open && p.name.eq_ignore_ascii_case(port_name))
                .ok_or(STATUS_OBJECT_NAME_NOT_FOUND)?;
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

impl PortClient<'_> {
    /// Sends `input` and receives at most `output_capacity` bytes (`FilterSendMessage`).
    /// Returns `MessageNotify`'s status and the output bytes it reported.
    #[must_use]
    pub fn send(&self, input: &[u8], output_capacity: u32) -> (NTSTATUS, Vec<u8>) {
        self.send_raw(Some(input), Some(output_capacity))
    }

    /// Like [`PortClient::send`], with NULL buffers where `None` is given (length 0): the way to
    /// send malformed messages (no input, no output buffer, empty input).
    pub fn send_raw(
        &self,
        input: Option<&[u8]>,
        output_capacity: Option<u32>,
    ) -> (NTSTATUS, Vec<u8>) {
        let _exit = crate::session::checked();
        let found = world::with(|w| {
            let client = w.client_ports.get(&self.handle)?;
            if client.closed_by_driver || client.disconnected {
                return Some(Err(STATUS_PORT_DISCONNECTED));
            }
            let port = w.server_ports.get(&client.server)?;
            Some(Ok((client.cookie, port.message)))
        });
        let (cookie, message) = match found {
            Some(Ok(found)) => found,
            Some(Err(status)) => return (status, Vec::new()),
            None => return (STATUS_PORT_DISCONNECTED, Vec::new()),
        };
        let Some(message) = message else {
            return (STATUS_NOT_SUPPORTED, Vec::new());
        };
        let input: Vec<u8> = input.map(<[u8]>::to_vec).unwrap_or_default();
        let capacity = output_capacity.unwrap_or(0);
        let mut output = vec![0_u8; usize::try_from(capacity).unwrap_or(0)];
        let mut returned: u32 = 0;
        let status = call_at(PASSIVE_LEVEL, "MessageNotifyCallback", || {
            // SAFETY: the driver's MessageNotify with its connection cookie and buffers that stay
            // valid for the call (NULL when empty).
            unsafe {
                message.call(
                    cookie as *const c_void,
                    if input.is_empty() {
                        std::ptr::null()
                    } else {
                        input.as_ptr().cast()
                    },
                    u32::try_from(input.len()).unwrap_or(u32::MAX),
                    if output.is_empty() {
                        std::ptr::null_mut()
                    } else {
                        output.as_mut_ptr().cast()
                    },
                    capacity,
                    &raw mut returned,
                )
            }
        });
        if returned > capacity {
            violation(format!(
                "fltsim: MessageNotifyCallback reported {returned} output bytes, more than the \
                 {capacity}-byte output buffer"
            ));
            return (status, output);
        }
        output.truncate(usize::try_from(returned).unwrap_or(0));
        (status, output)
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
            Some((cookie, port.disconnect))
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
