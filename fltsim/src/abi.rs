//! The one place where fltsim calls driver code.
//!
//! A driver linked into the test process (the host build) hands fltsim `extern "system"` functions,
//! which on every host are the platform's C calling convention. A driver *image* mapped into the
//! process (the cross-built `iotally.sys`) hands out functions of the Windows x64 calling convention,
//! typed the same way by windows-sys: on Linux, calling one through its windows-sys type would pass
//! the arguments in the wrong registers. Every function pointer fltsim receives from a driver is
//! therefore wrapped, when fltsim first sees it, in one of the types below, which remembers how to call
//! it; the wrappers' `call` methods are the only calls of driver code in fltsim.
//!
//! Code is recognized as image code by its address: the image loader registers the address range of
//! each image it maps ([`register_image_code`]).

use std::ffi::c_void;
use std::sync::Mutex;

use windows_sys::Wdk::Foundation::{DRIVER_OBJECT, POOL_TYPE};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CALLBACK_DATA, FLT_POSTOP_CALLBACK_STATUS, FLT_PREOP_CALLBACK_STATUS, FLT_RELATED_OBJECTS,
    PFLT_CONTEXT, PFLT_PORT,
};
use windows_sys::Win32::Foundation::{NTSTATUS, UNICODE_STRING};
use windows_sys::Win32::Storage::InstallableFileSystems::FLT_FILESYSTEM_TYPE;

use crate::world::lock_ignoring_poison;

/// A host-built driver's `DriverEntry`, as [`crate::Sim::load`] takes it.
pub type DriverEntry =
    unsafe extern "system" fn(*mut DRIVER_OBJECT, *const UNICODE_STRING) -> NTSTATUS;

/// Address ranges `[start, end)` of the driver images mapped into this process.
static IMAGE_CODE: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

/// Records that `[start, end)` holds image code, called with the Windows x64 convention.
#[cfg_attr(
    not(all(target_os = "linux", target_arch = "x86_64")),
    allow(dead_code, reason = "images are mapped on x86-64 Linux only")
)]
pub(crate) fn register_image_code(start: usize, end: usize) {
    lock_ignoring_poison(&IMAGE_CODE).push((start, end));
}

/// Forgets the image code range starting at `start` (the image was unmapped).
#[cfg_attr(
    not(all(target_os = "linux", target_arch = "x86_64")),
    allow(dead_code, reason = "images are mapped on x86-64 Linux only")
)]
pub(crate) fn unregister_image_code(start: usize) {
    lock_ignoring_poison(&IMAGE_CODE).retain(|&(s, _)| s != start);
}

/// Whether `address` lies in a mapped image.
fn is_image_code(address: usize) -> bool {
    lock_ignoring_poison(&IMAGE_CODE)
        .iter()
        .any(|&(start, end)| (start..end).contains(&address))
}

/// Defines, for each kind of driver callback, a wrapper that calls it with the right convention.
macro_rules! driver_callbacks {
    ($(
        $(#[$doc:meta])*
        $name:ident = fn($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?;
    )*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub(crate) enum $name {
            /// Host code (`extern "system"`).
            Host(unsafe extern "system" fn($($ty),*) $(-> $ret)?),
            /// Image code (`extern "win64"`), by address.
            Image(usize),
        }

        impl $name {
            /// Wraps a function pointer the driver handed to fltsim (its windows-sys type).
            #[allow(dead_code, reason = "entry points are wrapped by `host` or `image` instead")]
            pub(crate) fn from_driver(
                function: Option<unsafe extern "system" fn($($ty),*) $(-> $ret)?>,
            ) -> Option<Self> {
                function.map(|function| {
                    let address = function as usize;
                    if is_image_code(address) {
                        Self::Image(address)
                    } else {
                        Self::Host(function)
                    }
                })
            }

            /// Calls the driver's function.
            ///
            /// # Safety
            /// The arguments must satisfy the callback's documented contract.
            #[allow(clippy::too_many_arguments)]
            pub(crate) unsafe fn call(self, $($arg: $ty),*) $(-> $ret)? {
                match self {
                    // SAFETY: the driver's own function, called with its declared signature and
                    // convention under the caller's contract.
                    Self::Host(function) => unsafe { function($($arg),*) },
                    Self::Image(address) => call_image!(address, fn($($arg: $ty),*) $(-> $ret)?),
                }
            }
        }
    )*

        /// One test per kind of callback: a win64 function standing in for image code receives
        /// each argument in its place (registers, then stack slots after the shadow space) and its
        /// result comes back.
        #[cfg(all(test, target_arch = "x86_64"))]
        mod win64_calls {
            $(
                #[allow(non_snake_case)]
                mod $name {
                    use super::super::tests::probe::{Probe, Values, record, recorded};
                    #[allow(unused_imports)]
                    use super::super::*;

                    #[allow(clippy::too_many_arguments)]
                    unsafe extern "win64" fn callee($($arg: $ty),*) $(-> $ret)? {
                        record(&[$($arg.id()),*]);
                        $(<$ret as Probe>::nth(Values::RETURNED))?
                    }

                    #[test]
                    fn is_called_with_the_win64_convention() {
                        let address = (callee as *const ()).addr();
                        register_image_code(address, address + 1);
                        // SAFETY: both types have the same arguments; the wrapper sees the address
                        // in image code and calls it as the win64 function it is.
                        let pointer = unsafe {
                            std::mem::transmute::<
                                unsafe extern "win64" fn($($ty),*) $(-> $ret)?,
                                unsafe extern "system" fn($($ty),*) $(-> $ret)?,
                            >(callee)
                        };
                        let wrapped = super::super::$name::from_driver(Some(pointer)).unwrap();
                        unregister_image_code(address);
                        assert!(matches!(wrapped, super::super::$name::Image(_)));
                        let mut values = Values::default();
                        // SAFETY: `callee` only records its arguments.
                        let _result = unsafe { wrapped.call($({ let _ = stringify!($arg); values.next() }),*) };
                        $(assert_eq!(_result, <$ret as Probe>::nth(Values::RETURNED));)?
                        assert_eq!(recorded(), values.given());
                    }
                }
            )*
        }
    };
}

/// Calls image code at `address` with the Windows x64 convention.
#[cfg(all(target_arch = "x86_64", not(windows)))]
macro_rules! call_image {
    ($address:expr, fn($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {{
        let function: unsafe extern "win64" fn($($ty),*) $(-> $ret)? =
            // SAFETY: the caller passes the address of image code with this signature; a function
            // pointer and an address have the same size.
            unsafe { std::mem::transmute::<usize, _>($address) };
        // SAFETY: the caller's contract for the call itself.
        unsafe { function($($arg),*) }
    }};
}

/// On Windows hosts the system convention is win64 already; other hosts load no images.
#[cfg(not(all(target_arch = "x86_64", not(windows))))]
macro_rules! call_image {
    ($address:expr, fn($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {{
        let function: unsafe extern "system" fn($($ty),*) $(-> $ret)? =
            // SAFETY: the caller passes the address of image code with this signature.
            unsafe { std::mem::transmute::<usize, _>($address) };
        // SAFETY: the caller's contract for the call itself.
        unsafe { function($($arg),*) }
    }};
}

driver_callbacks! {
    /// `DriverEntry` (`DRIVER_INITIALIZE`).
    DriverEntryFn = fn(driver: *mut DRIVER_OBJECT, registry_path: *const UNICODE_STRING) -> NTSTATUS;
    /// `PFLT_FILTER_UNLOAD_CALLBACK`.
    FilterUnload = fn(flags: u32) -> NTSTATUS;
    /// `PFLT_INSTANCE_SETUP_CALLBACK`.
    InstanceSetup = fn(
        objects: *const FLT_RELATED_OBJECTS,
        flags: u32,
        device_type: u32,
        file_system_type: FLT_FILESYSTEM_TYPE,
    ) -> NTSTATUS;
    /// `PFLT_INSTANCE_QUERY_TEARDOWN_CALLBACK`.
    InstanceQueryTeardown = fn(objects: *const FLT_RELATED_OBJECTS, flags: u32) -> NTSTATUS;
    /// `PFLT_INSTANCE_TEARDOWN_CALLBACK` (start and complete).
    InstanceTeardown = fn(objects: *const FLT_RELATED_OBJECTS, reason: u32);
    /// `PFLT_PRE_OPERATION_CALLBACK`.
    PreOperation = fn(
        data: *mut FLT_CALLBACK_DATA,
        objects: *const FLT_RELATED_OBJECTS,
        completion_context: *mut *mut c_void,
    ) -> FLT_PREOP_CALLBACK_STATUS;
    /// `PFLT_POST_OPERATION_CALLBACK` (also the safe post callback of
    /// `FltDoCompletionProcessingWhenSafe`).
    PostOperation = fn(
        data: *mut FLT_CALLBACK_DATA,
        objects: *const FLT_RELATED_OBJECTS,
        completion_context: *const c_void,
        flags: u32,
    ) -> FLT_POSTOP_CALLBACK_STATUS;
    /// `PFLT_CONTEXT_CLEANUP_CALLBACK`.
    ContextCleanup = fn(context: PFLT_CONTEXT, context_type: u16);
    /// `PFLT_CONTEXT_ALLOCATE_CALLBACK`.
    ContextAllocate = fn(pool_type: POOL_TYPE, size: usize, context_type: u16) -> *mut c_void;
    /// `PFLT_CONTEXT_FREE_CALLBACK`.
    ContextFree = fn(pool: *const c_void, context_type: u16);
    /// `PFLT_CONNECT_NOTIFY`.
    ConnectNotify = fn(
        client_port: PFLT_PORT,
        server_port_cookie: *const c_void,
        connection_context: *const c_void,
        size_of_context: u32,
        connection_port_cookie: *mut *mut c_void,
    ) -> NTSTATUS;
    /// `PFLT_DISCONNECT_NOTIFY`.
    DisconnectNotify = fn(connection_cookie: *const c_void);
    /// `PFLT_MESSAGE_NOTIFY`.
    MessageNotify = fn(
        port_cookie: *const c_void,
        input: *const c_void,
        input_length: u32,
        output: *mut c_void,
        output_length: u32,
        returned_length: *mut u32,
    ) -> NTSTATUS;
}

impl DriverEntryFn {
    /// The entry point of a host-built driver.
    pub(crate) fn host(entry: DriverEntry) -> Self {
        Self::Host(entry)
    }

    /// The entry point at `address` in a mapped image.
    pub(crate) fn image(address: usize) -> Self {
        Self::Image(address)
    }
}

#[cfg(test)]
mod tests {
    use super::{FilterUnload, is_image_code, register_image_code, unregister_image_code};

    /// Distinct argument values of every type a callback takes, and a record of what arrived.
    pub(super) mod probe {
        use std::cell::RefCell;

        /// A callback argument or result type: the `n`th distinct value, and back.
        pub(crate) trait Probe {
            fn nth(n: u64) -> Self;
            fn id(&self) -> u64;
        }

        macro_rules! integers {
            ($($t:ty),*) => {$(
                impl Probe for $t {
                    fn nth(n: u64) -> Self {
                        Self::try_from(n).unwrap()
                    }
                    fn id(&self) -> u64 {
                        u64::try_from(*self).unwrap()
                    }
                }
            )*};
        }
        integers!(u16, u32, i32, usize, isize);

        impl<T> Probe for *mut T {
            fn nth(n: u64) -> Self {
                std::ptr::without_provenance_mut(usize::try_from(n).unwrap())
            }
            fn id(&self) -> u64 {
                self.addr() as u64
            }
        }

        impl<T> Probe for *const T {
            fn nth(n: u64) -> Self {
                std::ptr::without_provenance(usize::try_from(n).unwrap())
            }
            fn id(&self) -> u64 {
                self.addr() as u64
            }
        }

        /// Hands out argument values 0x5A01, 0x5A02, ... (they fit every argument type).
        #[derive(Default)]
        pub(crate) struct Values(Vec<u64>);

        impl Values {
            /// The value a callee returns.
            pub(crate) const RETURNED: u64 = 0x5A99;

            pub(crate) fn next<T: Probe>(&mut self) -> T {
                let n = 0x5A01 + self.0.len() as u64;
                self.0.push(n);
                T::nth(n)
            }

            pub(crate) fn given(&self) -> Vec<u64> {
                self.0.clone()
            }
        }

        thread_local! {
            static RECORDED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
        }

        /// What a callee received.
        pub(crate) fn record(arguments: &[u64]) {
            RECORDED.with(|r| *r.borrow_mut() = arguments.to_vec());
        }

        /// What the last callee on this thread received.
        pub(crate) fn recorded() -> Vec<u64> {
            RECORDED.with(|r| r.borrow().clone())
        }
    }

    unsafe extern "system" fn unload(flags: u32) -> i32 {
        i32::try_from(flags).unwrap_or(-1)
    }

    #[test]
    fn host_code_is_called_as_host_code() {
        let wrapped = FilterUnload::from_driver(Some(unload)).unwrap();
        assert!(matches!(wrapped, FilterUnload::Host(_)));
        // SAFETY: `unload` takes any flags.
        assert_eq!(unsafe { wrapped.call(7) }, 7);
        assert!(FilterUnload::from_driver(None).is_none());
    }

    #[test]
    fn registered_ranges_are_image_code_until_unregistered() {
        let base = 0x7000_0000_0000;
        register_image_code(base, base + 0x1000);
        assert!(is_image_code(base) && is_image_code(base + 0xFFF));
        assert!(!is_image_code(base + 0x1000) && !is_image_code(base - 1));
        unregister_image_code(base);
        assert!(!is_image_code(base));
    }
}
