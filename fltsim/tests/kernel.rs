//! Kernel odds and ends: `KeBugCheckEx`, `vDbgPrintEx`'s printf and log capture,
//! `KeQuerySystemTimePrecise`, and normal kernel APC disabling (`KeEnterCriticalRegion` /
//! `KeLeaveCriticalRegion`).

use std::ffi::CStr;

use fltsim::apc::{self, KeEnterCriticalRegion, KeLeaveCriticalRegion};
use fltsim::bugcheck::expect_bugcheck;
use fltsim::kernel::{self, DebugLine, KeBugCheckEx, KeQuerySystemTimePrecise, vDbgPrintEx};
use fltsim::{Sim, irql};
use windows_sys::Win32::Foundation::UNICODE_STRING;

/// `DPFLTR_IHVDRIVER_ID` (dpfilter.h).
const IHV_DRIVER: u32 = 77;

/// Calls vDbgPrintEx with `format` and 8-byte argument slots; returns the captured text.
fn print(format: &CStr, slots: &[u64]) -> String {
    // SAFETY: every test passes slots matching its format.
    let status =
        unsafe { vDbgPrintEx(IHV_DRIVER, 3, format.as_ptr().cast(), slots.as_ptr().cast()) };
    assert_eq!(status, 0, "STATUS_SUCCESS");
    kernel::debug_log().pop().expect("a captured line").text
}

/// The slot of a C `int` argument (only the low 32 bits are read by `%d`).
fn int(value: i32) -> u64 {
    u64::from(u32::from_ne_bytes(value.to_ne_bytes()))
}

/// The slot of a C `long long` argument.
fn long_long(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

fn address<T>(p: *const T) -> u64 {
    p.addr() as u64
}

#[test]
fn integers_with_sizes_flags_width_and_precision() {
    let _sim = Sim::new();
    assert_eq!(
        print(c"%d %i %u", &[int(-5), 7, u64::from(u32::MAX)]),
        "-5 7 4294967295"
    );
    assert_eq!(
        print(c"%x %X %#x %08x", &[0xbeef, 0xbeef, 0x1f, 0xab]),
        "beef BEEF 0x1f 000000ab"
    );
    assert_eq!(print(c"%ld %lu %lx", &[int(-1), 42, 0xff]), "-1 42 ff");
    assert_eq!(
        print(
            c"%llu %lld %llx",
            &[u64::MAX, long_long(-2), 0x1234_5678_9abc]
        ),
        "18446744073709551615 -2 123456789abc"
    );
    assert_eq!(
        print(c"%I64u %I64x %Iu", &[1 << 40, 1 << 40, 3]),
        "1099511627776 10000000000 3"
    );
    assert_eq!(
        print(c"[%5d][%-5d][%+d][%.3u]", &[42, 42, 42, 7]),
        "[   42][42   ][+42][007]"
    );
    assert_eq!(print(c"%hd %hu", &[0xFFFF, 0x1_0001]), "-1 1");
    // A 32-bit %d ignores the upper half of its slot.
    assert_eq!(print(c"%d", &[0xFFFF_FFFF_0000_0001]), "1");
}

#[test]
fn strings_chars_pointers_and_percent() {
    let _sim = Sim::new();
    let text = c"volume";
    assert_eq!(
        print(c"%s|%hs|%.3s|%8s", &[address(text.as_ptr()); 4]),
        "volume|volume|vol|  volume"
    );
    assert_eq!(print(c"%s", &[0]), "(null)");
    assert_eq!(
        print(c"%c%c 100%%", &[u64::from(b'o'), u64::from(b'k')]),
        "ok 100%"
    );
    assert_eq!(print(c"%p", &[0xFFFF_F800_1234_5678]), "FFFFF80012345678");
    assert_eq!(print(c"%p", &[0x10]), "0000000000000010");
}

#[test]
fn wide_and_unicode_strings_at_passive() {
    let _sim = Sim::new();
    let wide: Vec<u16> = "C:\\file.txt\0".encode_utf16().collect();
    assert_eq!(
        print(c"%ws %ls %S", &[address(wide.as_ptr()); 3]),
        "C:\\file.txt C:\\file.txt C:\\file.txt"
    );
    let mut buffer: Vec<u16> = "\\Device\\HarddiskVolume1 and more"
        .encode_utf16()
        .collect();
    let name = UNICODE_STRING {
        Length: 23 * 2,
        MaximumLength: 64,
        Buffer: buffer.as_mut_ptr(),
    };
    assert_eq!(
        print(c"name=%wZ", &[address(&raw const name)]),
        "name=\\Device\\HarddiskVolume1"
    );
    assert_eq!(print(c"%wZ", &[0]), "(null)");
}

#[test]
fn lines_are_captured_with_component_and_level_and_cut_at_512_bytes() {
    let sim = Sim::new();
    let oversized = "x".repeat(600) + "\0";
    let args = [address(oversized.as_ptr())];
    // SAFETY: "%s" with one string slot.
    unsafe {
        vDbgPrintEx(IHV_DRIVER, 0, c"first".as_ptr().cast(), std::ptr::null());
        vDbgPrintEx(5, 1, c"%s".as_ptr().cast(), args.as_ptr().cast());
    }
    let lines = kernel::debug_log();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0],
        DebugLine {
            component: IHV_DRIVER,
            level: 0,
            text: "first".into()
        }
    );
    assert_eq!(
        (lines[1].component, lines[1].level, lines[1].text.len()),
        (5, 1, kernel::MAX_DEBUG_LINE)
    );
    drop(sim);
    let _sim = Sim::new();
    assert!(
        kernel::debug_log().is_empty(),
        "a new session starts with an empty log"
    );
}

#[test]
fn narrow_formats_work_at_dispatch() {
    let _sim = Sim::new();
    let _dispatch = irql::raise(irql::DISPATCH_LEVEL);
    assert_eq!(print(c"irql %u", &[2]), "irql 2");
}

#[test]
fn unicode_string_above_passive_panics() {
    expect_bugcheck(
        "fltsim: IRQL_NOT_LESS_OR_EQUAL: vDbgPrintEx with the Unicode format code %wZ at IRQL 1",
        || {
            let _sim = Sim::new();
            let _apc = irql::raise(irql::APC_LEVEL);
            let name = UNICODE_STRING {
                Length: 0,
                MaximumLength: 0,
                Buffer: std::ptr::null_mut(),
            };
            print(c"%wZ", &[address(&raw const name)]);
        },
    );
}

#[test]
fn wide_string_at_dispatch_panics() {
    expect_bugcheck(
        "vDbgPrintEx with the Unicode format code %ws at IRQL 2",
        || {
            let _sim = Sim::new();
            let _dispatch = irql::raise(irql::DISPATCH_LEVEL);
            print(c"%ws", &[0]);
        },
    );
}

#[test]
fn floating_point_panics() {
    expect_bugcheck("fltsim: vDbgPrintEx: floating-point format code %f", || {
        let _sim = Sim::new();
        print(c"%f", &[0]);
    });
}

#[test]
fn unsupported_code_panics() {
    expect_bugcheck("fltsim: vDbgPrintEx: unsupported format code %n", || {
        let _sim = Sim::new();
        print(c"%n", &[0]);
    });
}

#[test]
fn bugcheck_panics_with_every_parameter() {
    expect_bugcheck(
        "fltsim: KeBugCheckEx(0x000000C2, 0x0000000000000007, 0x0000000000001234, 0x0000000000000000, 0xFFFFFFFFFFFFFFFF)",
        || {
            let _sim = Sim::new();
            KeBugCheckEx(0xC2, 7, 0x1234, 0, usize::MAX);
        },
    );
}

#[test]
fn system_time_counts_100ns_since_1601() {
    let _sim = Sim::new();
    let mut first = 0i64;
    let mut second = 0i64;
    // SAFETY: valid i64 outputs.
    unsafe {
        KeQuerySystemTimePrecise(&raw mut first);
        KeQuerySystemTimePrecise(&raw mut second);
    }
    // 2020-01-01T00:00:00Z in 100-ns units since 1601-01-01.
    assert!(first > 132_223_104_000_000_000, "{first} is before 2020");
    assert!(second >= first);
    let unix_100ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        / 100;
    let expected = i64::try_from(unix_100ns).unwrap() + 116_444_736_000_000_000;
    assert!(expected >= second, "the epoch offset is 1601, not later");
}

#[test]
fn system_time_into_null_panics() {
    expect_bugcheck(
        "fltsim: KeQuerySystemTimePrecise: CurrentTime is NULL",
        || {
            let _sim = Sim::new();
            // SAFETY: deliberately NULL: the simulator rejects it before writing.
            unsafe { KeQuerySystemTimePrecise(std::ptr::null_mut()) };
        },
    );
}

#[test]
fn critical_regions_nest_and_balance() {
    let _sim = Sim::new();
    assert_eq!(apc::normal_kernel_apcs_disabled(), 0);
    KeEnterCriticalRegion();
    KeEnterCriticalRegion();
    assert_eq!(apc::normal_kernel_apcs_disabled(), 2);
    KeLeaveCriticalRegion();
    KeLeaveCriticalRegion();
    assert_eq!(apc::normal_kernel_apcs_disabled(), 0);
    let _apc = irql::raise(irql::APC_LEVEL);
    KeEnterCriticalRegion();
    KeLeaveCriticalRegion();
}

#[test]
fn apc_disables_are_per_thread() {
    let _sim = Sim::new();
    KeEnterCriticalRegion();
    let other = std::thread::spawn(apc::normal_kernel_apcs_disabled)
        .join()
        .unwrap();
    assert_eq!(other, 0);
    KeLeaveCriticalRegion();
}

#[test]
fn leave_without_enter_panics() {
    expect_bugcheck(
        "fltsim: APC_INDEX_MISMATCH: KeLeaveCriticalRegion re-enables normal kernel APCs",
        || {
            let _sim = Sim::new();
            KeLeaveCriticalRegion();
        },
    );
}

#[test]
fn enter_critical_region_at_dispatch_panics() {
    expect_bugcheck(
        "fltsim: IRQL_NOT_LESS_OR_EQUAL: KeEnterCriticalRegion called at IRQL 2",
        || {
            let _sim = Sim::new();
            let _dispatch = irql::raise(irql::DISPATCH_LEVEL);
            KeEnterCriticalRegion();
        },
    );
}
