//! The simulated registry follows the contracts of `ZwOpenKey`, `ZwQueryValueKey` and `ZwClose`.

use std::ptr;

use fltsim::bugcheck::expect_bugcheck;
use fltsim::registry::{self, Value};
use windows_sys::Wdk::Foundation::OBJECT_ATTRIBUTES;
use windows_sys::Wdk::System::Registry::{KeyValuePartialInformation, ZwOpenKey, ZwQueryValueKey};
use windows_sys::Wdk::System::SystemServices::{KEY_VALUE_PARTIAL_INFORMATION, ZwClose};
use windows_sys::Win32::Foundation::{
    HANDLE, NTSTATUS, OBJ_CASE_INSENSITIVE, OBJ_KERNEL_HANDLE, STATUS_BUFFER_OVERFLOW,
    STATUS_BUFFER_TOO_SMALL, STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS, UNICODE_STRING,
};
use windows_sys::Win32::System::Registry::REG_DWORD;

const KEY: &str = r"\REGISTRY\MACHINE\SYSTEM\CurrentControlSet\Services\demo\Parameters";

struct Utf16(Vec<u16>);

impl Utf16 {
    fn new(s: &str) -> Self {
        Self(s.encode_utf16().collect())
    }
    fn unicode(&mut self) -> UNICODE_STRING {
        let bytes = u16::try_from(self.0.len() * 2).unwrap();
        UNICODE_STRING {
            Length: bytes,
            MaximumLength: bytes,
            Buffer: self.0.as_mut_ptr(),
        }
    }
}

fn open(path: &str, attributes: u32) -> (NTSTATUS, HANDLE) {
    let mut name = Utf16::new(path);
    let name = name.unicode();
    let attributes = OBJECT_ATTRIBUTES {
        Length: u32::try_from(size_of::<OBJECT_ATTRIBUTES>()).unwrap(),
        RootDirectory: ptr::null_mut(),
        ObjectName: &raw const name,
        Attributes: attributes,
        SecurityDescriptor: ptr::null(),
        SecurityQualityOfService: ptr::null(),
    };
    let mut handle: HANDLE = ptr::null_mut();
    // SAFETY: valid out pointer and attributes that outlive the call.
    let status = unsafe { ZwOpenKey(&raw mut handle, 0x20019, &raw const attributes) };
    (status, handle)
}

fn query(handle: HANDLE, value: &str, buffer: &mut [u8]) -> (NTSTATUS, u32) {
    let mut name = Utf16::new(value);
    let name = name.unicode();
    let mut needed = 0;
    // SAFETY: `buffer` is writable for its length; the name outlives the call.
    let status = unsafe {
        ZwQueryValueKey(
            handle,
            &raw const name,
            KeyValuePartialInformation,
            buffer.as_mut_ptr().cast(),
            u32::try_from(buffer.len()).unwrap(),
            &raw mut needed,
        )
    };
    (status, needed)
}

#[test]
fn dword_round_trips_and_sizes_follow_the_contract() {
    let _sim = fltsim::Sim::new();
    registry::set_value(KEY, "MaxEntries", Value::Dword(77));
    let (status, handle) = open(
        &KEY.to_uppercase(),
        OBJ_KERNEL_HANDLE | OBJ_CASE_INSENSITIVE,
    );
    assert_eq!(status, STATUS_SUCCESS);
    assert_eq!(registry::open_handles().len(), 1);

    let header = std::mem::offset_of!(KEY_VALUE_PARTIAL_INFORMATION, Data);
    let mut tiny = [0u8; 4];
    assert_eq!(
        query(handle, "maxentries", &mut tiny),
        (STATUS_BUFFER_TOO_SMALL, 16)
    );
    let mut short = vec![0u8; header];
    assert_eq!(
        query(handle, "MaxEntries", &mut short),
        (STATUS_BUFFER_OVERFLOW, 16)
    );
    let mut full = vec![0u8; 16];
    assert_eq!(query(handle, "MaxEntries", &mut full), (STATUS_SUCCESS, 16));
    assert_eq!(
        u32::from_le_bytes(full[4..8].try_into().unwrap()),
        REG_DWORD
    );
    assert_eq!(u32::from_le_bytes(full[8..12].try_into().unwrap()), 4);
    assert_eq!(u32::from_le_bytes(full[12..16].try_into().unwrap()), 77);
    assert_eq!(
        query(handle, "Missing", &mut full).0,
        STATUS_OBJECT_NAME_NOT_FOUND
    );

    // SAFETY: `handle` is open.
    assert_eq!(unsafe { ZwClose(handle) }, STATUS_SUCCESS);
    assert!(registry::open_handles().is_empty());
}

#[test]
fn missing_key_is_not_found() {
    let _sim = fltsim::Sim::new();
    assert_eq!(open(KEY, OBJ_KERNEL_HANDLE).0, STATUS_OBJECT_NAME_NOT_FOUND);
}

#[test]
fn double_close_bugchecks() {
    expect_bugcheck("fltsim: INVALID_KERNEL_HANDLE: ZwClose", || {
        let _sim = fltsim::Sim::new();
        registry::create_key(KEY);
        let (_, handle) = open(KEY, OBJ_KERNEL_HANDLE);
        // SAFETY: deliberately closes twice to see the simulator catch it.
        unsafe {
            ZwClose(handle);
            ZwClose(handle);
        }
    });
}

#[test]
fn user_handle_from_a_driver_is_caught() {
    expect_bugcheck("OBJ_KERNEL_HANDLE", || {
        let _sim = fltsim::Sim::new();
        registry::create_key(KEY);
        let _ = open(KEY, 0);
    });
}

#[test]
fn open_above_passive_is_caught() {
    expect_bugcheck("fltsim: IRQL_NOT_LESS_OR_EQUAL: ZwOpenKey", || {
        let _sim = fltsim::Sim::new();
        registry::create_key(KEY);
        let _irql = fltsim::irql::raise(fltsim::irql::APC_LEVEL);
        let _ = open(KEY, OBJ_KERNEL_HANDLE);
    });
}

#[test]
fn expect_bugcheck_fails_when_nothing_breaks() {
    let outcome = std::panic::catch_unwind(|| expect_bugcheck("anything", || {}));
    assert!(
        outcome.is_err(),
        "a body that returns must fail the death test"
    );
}

#[test]
fn a_handle_left_open_by_an_unloaded_driver_is_reported() {
    let sim = fltsim::Sim::new();
    registry::create_key(KEY);
    let (status, _leaked) = open(KEY, OBJ_KERNEL_HANDLE);
    assert_eq!(status, STATUS_SUCCESS);
    let report = sim.verifier_report();
    assert!(report.mentions("registry handle left open"), "{report}");
}
