//! Communication ports: creation rules, connections, messages (well-formed and not), disconnects,
//! and what unload requires.

mod common;

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicIsize, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{Config, configure, driver_entry};
use fltsim::{FLT_PORT_ALL_ACCESS, Sim};
use windows_sys::Wdk::Foundation::OBJECT_ATTRIBUTES;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FltBuildDefaultSecurityDescriptor, FltCloseClientPort, FltCloseCommunicationPort,
    FltCreateCommunicationPort, FltFreeSecurityDescriptor, FltUnregisterFilter, PFLT_FILTER,
    PFLT_PORT,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, OBJ_CASE_INSENSITIVE, OBJ_KERNEL_HANDLE, STATUS_ACCESS_DENIED,
    STATUS_CONNECTION_COUNT_LIMIT, STATUS_INVALID_PARAMETER, STATUS_OBJECT_NAME_NOT_FOUND,
    STATUS_PORT_DISCONNECTED, STATUS_SUCCESS, UNICODE_STRING,
};
use windows_sys::Win32::Security::PSECURITY_DESCRIPTOR;

const PORT: &str = r"\TestFilterPort";

static SERVER: AtomicIsize = AtomicIsize::new(0);
static CLIENT: Mutex<PFLT_PORT> = Mutex::new(0);
static CONNECT_STATUS: AtomicI32 = AtomicI32::new(0);
static DISCONNECTS: AtomicUsize = AtomicUsize::new(0);
/// Extra output bytes `MessageNotify` claims beyond what it wrote (to break the rule).
static OVERSTATE: AtomicU32 = AtomicU32::new(0);
static CLOSE_CLIENT_ON_DISCONNECT: AtomicUsize = AtomicUsize::new(1);

unsafe extern "system" fn on_connect(
    client: PFLT_PORT,
    _server_cookie: *const c_void,
    context: *const c_void,
    size: u32,
    cookie: *mut *mut c_void,
) -> NTSTATUS {
    let status = CONNECT_STATUS.load(Ordering::SeqCst);
    if status >= 0 {
        *CLIENT.lock().unwrap() = client;
        // SAFETY: Filter Manager's output variable; the cookie is the context size + 1 (non-NULL).
        unsafe { cookie.write((size as usize + 1) as *mut c_void) };
    }
    let _ = context;
    status
}

unsafe extern "system" fn on_disconnect(_cookie: *const c_void) {
    DISCONNECTS.fetch_add(1, Ordering::SeqCst);
    if CLOSE_CLIENT_ON_DISCONNECT.load(Ordering::SeqCst) == 1 {
        let mut client = *CLIENT.lock().unwrap();
        // SAFETY: the connection's client port, closed once.
        unsafe { FltCloseClientPort(common::filter(), &raw mut client) };
        *CLIENT.lock().unwrap() = client;
    }
}

/// Echoes the input reversed, validating lengths as a driver must.
unsafe extern "system" fn on_message(
    _cookie: *const c_void,
    input: *const c_void,
    input_length: u32,
    output: *mut c_void,
    output_length: u32,
    returned: *mut u32,
) -> NTSTATUS {
    // SAFETY: Filter Manager's output variable.
    unsafe { returned.write(0) };
    if input.is_null() || input_length == 0 || output.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: the input buffer holds `input_length` bytes.
    let bytes: Vec<u8> =
        unsafe { std::slice::from_raw_parts(input.cast::<u8>(), input_length as usize) }.to_vec();
    let n = bytes.len().min(output_length as usize);
    // SAFETY: the output buffer holds `output_length` bytes and `n <= output_length`.
    unsafe {
        ptr::copy_nonoverlapping(
            bytes.iter().rev().copied().collect::<Vec<u8>>().as_ptr(),
            output.cast::<u8>(),
            n,
        );
        returned.write(u32::try_from(n).unwrap() + OVERSTATE.load(Ordering::SeqCst));
    }
    STATUS_SUCCESS
}

fn create_port(filter: PFLT_FILTER, attributes: u32, max: i32) -> NTSTATUS {
    let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
    // SAFETY: valid output variable.
    let status = unsafe { FltBuildDefaultSecurityDescriptor(&raw mut sd, FLT_PORT_ALL_ACCESS) };
    if status < 0 {
        return status;
    }
    let mut name: Vec<u16> = PORT.encode_utf16().collect();
    let bytes = u16::try_from(name.len() * 2).unwrap();
    let name = UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        Buffer: name.as_mut_ptr(),
    };
    let oa = OBJECT_ATTRIBUTES {
        Length: u32::try_from(size_of::<OBJECT_ATTRIBUTES>()).unwrap(),
        RootDirectory: ptr::null_mut(),
        ObjectName: &raw const name,
        Attributes: attributes,
        SecurityDescriptor: sd.cast_const().cast(),
        SecurityQualityOfService: ptr::null(),
    };
    let mut port: PFLT_PORT = 0;
    // SAFETY: valid arguments for the call.
    let status = unsafe {
        FltCreateCommunicationPort(
            filter,
            &raw mut port,
            &raw const oa,
            ptr::null(),
            Some(on_connect),
            Some(on_disconnect),
            Some(on_message),
            max,
        )
    };
    // SAFETY: the descriptor built above, freed once after creating the port.
    unsafe { FltFreeSecurityDescriptor(sd) };
    SERVER.store(port, Ordering::SeqCst);
    status
}

/// A filter with a port: created in `DriverEntry`, closed in `FilterUnload` before unregistering.
fn port_filter(max: i32) -> Config {
    CONNECT_STATUS.store(STATUS_SUCCESS, Ordering::SeqCst);
    DISCONNECTS.store(0, Ordering::SeqCst);
    OVERSTATE.store(0, Ordering::SeqCst);
    CLOSE_CLIENT_ON_DISCONNECT.store(1, Ordering::SeqCst);
    Config {
        entry: Some(Arc::new(move |filter| {
            create_port(filter, OBJ_KERNEL_HANDLE | OBJ_CASE_INSENSITIVE, max)
        })),
        unload: Some(Arc::new(|_| {
            // SAFETY: the server port and filter of this driver, each closed once, port first.
            unsafe {
                FltCloseCommunicationPort(SERVER.load(Ordering::SeqCst));
                FltUnregisterFilter(common::filter());
            }
            STATUS_SUCCESS
        })),
        ..Config::default()
    }
}

#[test]
fn connect_send_and_disconnect() {
    let sim = Sim::new();
    configure(port_filter(1));
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    assert_eq!(
        sim.connect(r"\NoSuchPort", &[]).err(),
        Some(STATUS_OBJECT_NAME_NOT_FOUND)
    );
    let client = sim.connect(PORT, b"hello").unwrap();
    assert_eq!(client.send(b"abc", 16), (STATUS_SUCCESS, b"cba".to_vec()));
    assert_eq!(
        client.send(b"abcdef", 2),
        (STATUS_SUCCESS, b"fe".to_vec()),
        "short output buffer"
    );
    assert_eq!(
        client.send_raw(None, Some(8)).0,
        STATUS_INVALID_PARAMETER,
        "no input"
    );
    assert_eq!(
        client.send_raw(Some(&[]), Some(8)).0,
        STATUS_INVALID_PARAMETER,
        "empty input"
    );
    assert_eq!(
        client.send_raw(Some(b"x"), None).0,
        STATUS_INVALID_PARAMETER,
        "no output"
    );
    assert_eq!(
        sim.connect(PORT, &[]).err(),
        Some(STATUS_CONNECTION_COUNT_LIMIT)
    );
    client.close();
    assert_eq!(DISCONNECTS.load(Ordering::SeqCst), 1);
    assert_eq!(
        *CLIENT.lock().unwrap(),
        0,
        "FltCloseClientPort clears the handle"
    );
    let again = sim.connect(PORT, &[]).unwrap();
    drop(again);
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

#[test]
fn a_refused_connection_fails_and_does_not_count() {
    let sim = Sim::new();
    configure(port_filter(1));
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    CONNECT_STATUS.store(STATUS_ACCESS_DENIED, Ordering::SeqCst);
    assert_eq!(sim.connect(PORT, &[]).err(), Some(STATUS_ACCESS_DENIED));
    CONNECT_STATUS.store(STATUS_SUCCESS, Ordering::SeqCst);
    drop(sim.connect(PORT, &[]).unwrap());
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}

#[test]
fn clients_still_connected_at_unload_are_disconnected() {
    let sim = Sim::new();
    configure(port_filter(4));
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    let client = sim.connect(PORT, &[]).unwrap();
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    assert_eq!(
        DISCONNECTS.load(Ordering::SeqCst),
        1,
        "DisconnectNotify ran during FltUnregisterFilter"
    );
    assert_eq!(client.send(b"x", 1).0, STATUS_PORT_DISCONNECTED);
    drop(client);
    assert_eq!(DISCONNECTS.load(Ordering::SeqCst), 1, "not twice");
    sim.verifier_report().assert_clean();
}

#[test]
fn a_client_port_never_closed_is_reported() {
    let sim = Sim::new();
    configure(port_filter(1));
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    CLOSE_CLIENT_ON_DISCONNECT.store(0, Ordering::SeqCst);
    sim.connect(PORT, &[]).unwrap().close();
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    assert!(
        sim.verifier_report()
            .mentions("communication client port(s) not closed")
    );
}

#[test]
#[should_panic(
    expected = "fltsim: MessageNotifyCallback reported 4 output bytes, more than the 3-byte output buffer"
)]
fn reporting_more_output_than_the_buffer_is_a_violation() {
    let sim = Sim::new();
    configure(port_filter(1));
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    let client = sim.connect(PORT, &[]).unwrap();
    OVERSTATE.store(1, Ordering::SeqCst);
    let _ = client.send(b"abc", 3);
}

#[test]
#[should_panic(
    expected = "fltsim: FltUnregisterFilter with communication server port(s) [\"\\\\TestFilterPort\"] still open"
)]
fn unregistering_with_the_server_port_open_is_a_violation() {
    let sim = Sim::new();
    let mut config = port_filter(1);
    config.unload = None;
    configure(config);
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    sim.unload(false);
}

#[test]
#[should_panic(
    expected = "fltsim: FltCreateCommunicationPort: ObjectAttributes lacks OBJ_KERNEL_HANDLE"
)]
fn a_port_without_obj_kernel_handle_is_a_violation() {
    let sim = Sim::new();
    let mut config = port_filter(1);
    config.entry = Some(Arc::new(|filter| {
        create_port(filter, OBJ_CASE_INSENSITIVE, 1)
    }));
    configure(config);
    sim.load("testflt", driver_entry);
}

#[test]
fn an_unfreed_security_descriptor_is_reported() {
    let sim = Sim::new();
    configure(Config {
        entry: Some(Arc::new(|_| {
            let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
            // SAFETY: valid output variable; deliberately never freed.
            unsafe { FltBuildDefaultSecurityDescriptor(&raw mut sd, FLT_PORT_ALL_ACCESS) }
        })),
        ..Config::default()
    });
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    assert!(
        sim.verifier_report()
            .mentions("security descriptor(s) not freed: 1")
    );
}

#[test]
fn user_buffers_are_probed_as_filter_manager_does() {
    let sim = Sim::new();
    configure(port_filter(1));
    assert_eq!(sim.load("testflt", driver_entry), STATUS_SUCCESS);
    assert_eq!(
        sim.connect_as(fltsim::Caller::StandardUser, PORT, &[])
            .err(),
        Some(STATUS_ACCESS_DENIED),
        "the default descriptor admits administrators and SYSTEM only"
    );
    let client = sim.connect(PORT, &[]).unwrap();
    let refused = client.message(fltsim::Input::Bytes(b"ab"), fltsim::Output::Unmapped(8));
    assert_eq!(
        (refused.status, refused.delivered),
        (
            windows_sys::Win32::Foundation::STATUS_ACCESS_VIOLATION,
            false
        ),
        "ProbeForWrite fails before the callback"
    );
    let misaligned = client.message(
        fltsim::Input::Misaligned(b"abc"),
        fltsim::Output::Misaligned(8),
    );
    assert!(misaligned.delivered);
    assert_eq!(
        &misaligned.buffer[..3],
        b"cba",
        "misaligned buffers reach the callback"
    );
    let whole = client.message(fltsim::Input::Bytes(b"xy"), fltsim::Output::Buffer(6));
    assert_eq!(whole.buffer.len(), 6, "the whole output buffer comes back");
    assert_eq!(whole.returned, 2);
    client.close();
    assert_eq!(sim.unload(false), STATUS_SUCCESS);
    sim.verifier_report().assert_clean();
}
