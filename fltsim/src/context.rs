//! Minifilter contexts: allocation from the registration's context table, reference counts,
//! instance and stream links, and cleanup when the last reference goes.
//!
//! The simulator keeps each context's header (type, pool, references, link) in a side table keyed
//! by the address it returned, so nothing precedes the driver's bytes; an address not in the table is
//! not a live context. Linking a context (`FltSet*Context`) adds the link's own reference; deleting
//! it (`FltDeleteContext`, instance teardown, the stream's last close) drops that reference.

use std::ffi::c_void;

use windows_sys::Wdk::Foundation::FILE_OBJECT;
use windows_sys::Wdk::Foundation::{NonPagedPool, NonPagedPoolNx, POOL_TYPE, PagedPool};
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CONTEXT_END, FLT_FILE_CONTEXT, FLT_INSTANCE_CONTEXT, FLT_SECTION_CONTEXT,
    FLT_SET_CONTEXT_KEEP_IF_EXISTS, FLT_SET_CONTEXT_OPERATION, FLT_SET_CONTEXT_REPLACE_IF_EXISTS,
    FLT_STREAM_CONTEXT, FLT_STREAMHANDLE_CONTEXT, FLT_TRANSACTION_CONTEXT, FLT_VOLUME_CONTEXT,
    PFLT_CONTEXT, PFLT_FILTER, PFLT_INSTANCE,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_FLT_CONTEXT_ALLOCATION_NOT_FOUND, STATUS_FLT_CONTEXT_ALREADY_DEFINED,
    STATUS_FLT_CONTEXT_ALREADY_LINKED, STATUS_FLT_DELETING_OBJECT, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_BUFFER_SIZE, STATUS_INVALID_PARAMETER, STATUS_NOT_FOUND, STATUS_NOT_SUPPORTED,
    STATUS_SUCCESS,
};

use crate::abi::{ContextCleanup, ContextFree};
use crate::callback::call_at;
use crate::irql::{APC_LEVEL, DISPATCH_LEVEL, PASSIVE_LEVEL};
use crate::verifier::{invalid_handle, irql_at_most, violation};
use crate::world::{self, Context, ContextEntry, FilterState, InstanceState, Link, World};

/// `FLT_VARIABLE_SIZED_CONTEXTS` (fltkernel.h: `(SIZE_T)-1`; windows-sys does not carry it).
pub const FLT_VARIABLE_SIZED_CONTEXTS: usize = usize::MAX;

/// The name of a context type, for messages and the report.
pub(crate) fn type_name(context_type: u16) -> &'static str {
    match u32::from(context_type) {
        FLT_VOLUME_CONTEXT => "FLT_VOLUME_CONTEXT",
        FLT_INSTANCE_CONTEXT => "FLT_INSTANCE_CONTEXT",
        FLT_FILE_CONTEXT => "FLT_FILE_CONTEXT",
        FLT_STREAM_CONTEXT => "FLT_STREAM_CONTEXT",
        FLT_STREAMHANDLE_CONTEXT => "FLT_STREAMHANDLE_CONTEXT",
        FLT_TRANSACTION_CONTEXT => "FLT_TRANSACTION_CONTEXT",
        FLT_SECTION_CONTEXT => "FLT_SECTION_CONTEXT",
        FLT_CONTEXT_END => "FLT_CONTEXT_END",
        _ => "unknown context type",
    }
}

/// A context whose last reference went: its cleanup and free run outside the state lock.
pub(crate) struct Dying {
    address: usize,
    context_type: u16,
    tag: u32,
    cleanup: Option<ContextCleanup>,
    free: Option<ContextFree>,
}

/// Drops one reference of the context at `address`; returns it when that was the last one.
pub(crate) fn unreference(w: &mut World, address: usize) -> Option<Dying> {
    let context = w.contexts.get_mut(&address)?;
    context.references -= 1;
    if context.references > 0 {
        return None;
    }
    let context = w.contexts.remove(&address)?;
    Some(Dying {
        address,
        context_type: context.context_type,
        tag: context.tag,
        cleanup: context.cleanup,
        free: context.free,
    })
}

/// Unlinks the context at `address` from whatever it is set on, dropping the link's reference.
pub(crate) fn unlink(w: &mut World, address: usize) -> Option<Dying> {
    let link = w.contexts.get(&address)?.link;
    match link {
        Link::Instance(instance) => {
            if let Some(i) = w.instances.get_mut(&instance) {
                i.context = None;
            }
        }
        Link::Stream(instance, stream) => {
            if let Some(i) = w.instances.get_mut(&instance) {
                i.stream_contexts.remove(&stream);
            }
        }
        Link::Unlinked | Link::Deleted => return None,
    }
    if let Some(context) = w.contexts.get_mut(&address) {
        context.link = Link::Deleted;
    }
    unreference(w, address)
}

/// Runs the cleanup callback of each dying context (at <= `APC_LEVEL`) and frees it.
///
/// When the last reference goes above `APC_LEVEL` (a nonpaged context released at `DISPATCH_LEVEL`),
/// Filter Manager defers the cleanup to a worker thread: fltsim runs it on a new thread at
/// `PASSIVE_LEVEL` and waits for it.
pub(crate) fn finish(dying: Vec<Dying>) {
    for context in dying {
        if crate::irql::current() > APC_LEVEL {
            std::thread::scope(|scope| {
                scope.spawn(|| destroy(&context));
            });
        } else {
            destroy(&context);
        }
    }
}

/// Calls the cleanup callback and frees the memory of `context`.
fn destroy(context: &Dying) {
    let pointer = context.address as *mut c_void;
    if let Some(cleanup) = context.cleanup {
        let level = crate::irql::current();
        call_at(level, "ContextCleanupCallback", || {
            // SAFETY: the registration's cleanup callback, given the live context and its type.
            unsafe { cleanup.call(pointer, context.context_type) };
        });
    }
    if let Some(free) = context.free {
        call_at(PASSIVE_LEVEL, "ContextFreeCallback", || {
            // SAFETY: the registration's free routine for memory its allocate routine returned.
            unsafe { free.call(pointer, context.context_type) };
        });
    } else {
        crate::pool::free(pointer, context.tag);
    }
}

/// Whether `pool_type` is paged, or `None` if it is not a pool type a context may use.
fn pool_is_paged(pool_type: POOL_TYPE) -> Option<bool> {
    if pool_type == PagedPool {
        Some(true)
    } else if pool_type == NonPagedPool || pool_type == NonPagedPoolNx {
        Some(false)
    } else {
        None
    }
}

/// `FltAllocateContext` ("`FltAllocateContext` function (fltkernel.h)"). IRQL <= `APC_LEVEL`, whatever
/// the pool.
///
/// - `Filter` must be the registered filter: NULL (a driver that cleared its global handle while
///   callbacks still run) or a stale handle is reported; once `FltUnregisterFilter` has begun, the
///   filter "is being torn down" and the call returns `STATUS_FLT_DELETING_OBJECT`.
/// - `ContextSize` must be non-zero (reported) and at most `MAXUSHORT` (`STATUS_INVALID_BUFFER_SIZE`);
///   a fixed-size registration serves any size up to its `Size`, a larger one gets
///   `STATUS_FLT_CONTEXT_ALLOCATION_NOT_FOUND`, as does a type that was not registered.
/// - Volume contexts come from nonpaged pool only (reported).
/// - The memory is not zeroed: the page says fixed-size contexts come from lookaside lists and
///   "can't be assumed to be zeroed", and that before Windows 11 no context is zeroed. fltsim fills
///   every context it allocates with [`crate::pool::UNINITIALIZED_FILL`], so a driver that reads a
///   field it did not write sees garbage, not a convenient zero. A registration's own
///   `ContextAllocateCallback` returns whatever it returns.
///
/// # Safety
/// `returnedcontext` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltAllocateContext(
    filter: PFLT_FILTER,
    contexttype: u16,
    contextsize: usize,
    pooltype: POOL_TYPE,
    returnedcontext: *mut PFLT_CONTEXT,
) -> NTSTATUS {
    crate::pause::on_call("FltAllocateContext");
    if !irql_at_most("FltAllocateContext", APC_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    let Some(paged) = pool_is_paged(pooltype) else {
        violation(format!(
            "fltsim: FltAllocateContext: pool type {pooltype} is not PagedPool or NonPagedPool(Nx)"
        ));
        return STATUS_INVALID_PARAMETER;
    };
    if returnedcontext.is_null() {
        violation("fltsim: FltAllocateContext: ReturnedContext is NULL".into());
        return STATUS_INVALID_PARAMETER;
    }
    if filter == 0 {
        violation(
            "fltsim: FltAllocateContext: Filter is NULL (Filter Manager dereferences it: a bugcheck \
             on Windows; a callback must use FltObjects->Filter, and a global filter handle must stay \
             valid until FltUnregisterFilter returns)"
                .into(),
        );
        return STATUS_INVALID_PARAMETER;
    }
    if contextsize == 0 {
        violation("fltsim: FltAllocateContext: ContextSize is 0".into());
        return STATUS_INVALID_PARAMETER;
    }
    if contextsize > usize::from(u16::MAX) {
        return STATUS_INVALID_BUFFER_SIZE;
    }
    if paged && u32::from(contexttype) == FLT_VOLUME_CONTEXT {
        violation(
            "fltsim: FltAllocateContext: volume contexts must be allocated from nonpaged pool"
                .into(),
        );
        return STATUS_INVALID_PARAMETER;
    }
    let entry = world::with(|w| {
        let f = w.filter_by_handle(filter)?;
        Some(match f.state {
            FilterState::Unregistered => None,
            FilterState::Unregistering => Some(Err(STATUS_FLT_DELETING_OBJECT)),
            FilterState::Registered | FilterState::Started => Some(
                registration_for(&f.contexts, contexttype, contextsize)
                    .ok_or(STATUS_FLT_CONTEXT_ALLOCATION_NOT_FOUND),
            ),
        })
    });
    let entry = match entry {
        Some(Some(Ok(entry))) => entry,
        Some(Some(Err(status))) => return status,
        Some(None) | None => {
            invalid_handle("FltAllocateContext", "filter", filter);
            return STATUS_INVALID_PARAMETER;
        }
    };
    let pointer = if let Some(allocate) = entry.allocate {
        // SAFETY: the registration's allocate routine with its documented arguments.
        unsafe { allocate.call(pooltype, contextsize, contexttype) }
    } else {
        let flags = if paged {
            crate::pool::POOL_FLAG_PAGED
        } else {
            crate::pool::POOL_FLAG_NON_PAGED
        };
        crate::pool::allocate(
            flags | crate::pool::POOL_FLAG_UNINITIALIZED,
            contextsize,
            entry.tag,
        )
    };
    if pointer.is_null() {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    world::with(|w| {
        w.contexts.insert(
            pointer as usize,
            Context {
                context_type: contexttype,
                paged,
                tag: entry.tag,
                references: 1,
                link: Link::Unlinked,
                cleanup: entry.cleanup,
                free: entry.free,
            },
        );
    });
    // SAFETY: checked non-null above; the caller's output variable.
    unsafe { returnedcontext.write(pointer) };
    STATUS_SUCCESS
}

/// The registration entry that serves a `size`-byte context of `context_type`: the type's
/// `ContextAllocateCallback` entry, its variable-size entry, or the smallest fixed-size entry whose
/// `Size` is at least `size` ("`FltAllocateContext` function (fltkernel.h)": for fixed-size contexts
/// `ContextSize` "must be less than or equal to the Size specified").
fn registration_for(
    entries: &[ContextEntry],
    context_type: u16,
    size: usize,
) -> Option<ContextEntry> {
    let of_type = || entries.iter().filter(|e| e.context_type == context_type);
    of_type()
        .find(|e| e.allocate.is_some())
        .or_else(|| of_type().find(|e| e.size == FLT_VARIABLE_SIZED_CONTEXTS))
        .or_else(|| of_type().filter(|e| e.size >= size).min_by_key(|e| e.size))
        .copied()
}

/// `FltReferenceContext`: one more reference. IRQL <= `DISPATCH_LEVEL`.
///
/// # Safety
/// None beyond the routine's contract; an unknown context is reported.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltReferenceContext(context: PFLT_CONTEXT) {
    if !irql_at_most("FltReferenceContext", DISPATCH_LEVEL) {
        return;
    }
    let known = world::with(|w| {
        w.contexts
            .get_mut(&(context as usize))
            .map(|c| c.references += 1)
            .is_some()
    });
    if !known {
        invalid_handle("FltReferenceContext", "context", context as isize);
    }
}

/// `FltReleaseContext` ("`FltReleaseContext` function (fltkernel.h)"): drops a reference; the last
/// one runs the cleanup callback and frees the context. IRQL <= `APC_LEVEL` for paged contexts,
/// <= `DISPATCH_LEVEL` for nonpaged ones.
///
/// A context set on an object holds a reference of its own until it is deleted. A release that
/// would drop that one (the caller releasing a reference it does not own) leaves Filter Manager
/// pointing at freed memory on Windows; fltsim reports it at that release, naming the object.
///
/// # Safety
/// None beyond the routine's contract; an unknown or over-released context is reported.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltReleaseContext(context: PFLT_CONTEXT) {
    let address = context as usize;
    let known = world::with(|w| {
        w.contexts
            .get(&address)
            .map(|c| (c.paged, c.references, c.link))
    });
    let Some((paged, references, link)) = known else {
        violation(format!(
            "fltsim: FltReleaseContext: {address:#x} is not a live context (released more times \
             than referenced, or never allocated)"
        ));
        return;
    };
    if paged && crate::irql::current() > APC_LEVEL && crate::verifier::irql_checks() {
        violation(format!(
            "fltsim: IRQL_NOT_LESS_OR_EQUAL: FltReleaseContext of a paged context at IRQL {}: \
             paged contexts may only be released at IRQL <= APC_LEVEL",
            crate::irql::current()
        ));
        return;
    }
    if !irql_at_most("FltReleaseContext", DISPATCH_LEVEL) {
        return;
    }
    if references == 1 && matches!(link, Link::Instance(_) | Link::Stream(..)) {
        violation(format!(
            "fltsim: FltReleaseContext of context {address:#x} drops its last reference while it \
             is still set on {} (released once more than referenced: Filter Manager would free \
             a context it still links to)",
            link_name(link)
        ));
        return;
    }
    let dying = world::with(|w| unreference(w, address));
    finish(dying.into_iter().collect());
}

/// What a link is to, for messages.
fn link_name(link: Link) -> String {
    match link {
        Link::Instance(instance) => format!("instance {instance:#x}"),
        Link::Stream(instance, stream) => {
            format!("stream {stream:#x} of instance {instance:#x}")
        }
        Link::Unlinked => "nothing".into(),
        Link::Deleted => "nothing (deleted)".into(),
    }
}

/// `FltDeleteContext` ("`FltDeleteContext` function (fltkernel.h)"): unlinks the context from its
/// object, dropping the link's reference. IRQL <= `APC_LEVEL`.
///
/// The caller "must already have a reference to the context", and keeps it (release it after); a
/// context never set on anything has nothing to be deleted from. Both are reported. A second delete
/// of a deleted context (two threads deciding to delete it) does nothing.
///
/// # Safety
/// None beyond the routine's contract; an unknown context is reported.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltDeleteContext(context: PFLT_CONTEXT) {
    if !irql_at_most("FltDeleteContext", APC_LEVEL) {
        return;
    }
    let address = context as usize;
    let dying = world::with(|w| {
        let context = w.contexts.get(&address).ok_or(None)?;
        match context.link {
            Link::Unlinked => Err(Some(format!(
                "fltsim: FltDeleteContext of context {address:#x}, which was never set on an \
                 object (delete a context set with FltSet*Context; free an unset one with \
                 FltReleaseContext)"
            ))),
            Link::Instance(_) | Link::Stream(..) if context.references < 2 => Err(Some(format!(
                "fltsim: FltDeleteContext of context {address:#x} without holding a reference \
                     to it (only its link holds one: get or reference the context first)"
            ))),
            _ => Ok(unlink(w, address)),
        }
    });
    match dying {
        Ok(dying) => finish(dying.into_iter().collect()),
        Err(Some(message)) => violation(message),
        Err(None) => invalid_handle("FltDeleteContext", "context", context as isize),
    }
}

/// Where a `FltSet*Context` call wants to link a context.
#[derive(Clone, Copy)]
enum Target {
    Instance,
    Stream(u128),
}

/// Links `new` to `instance` (or one of its streams) per `operation`; shared by the set routines.
fn set_context(
    routine: &str,
    instance: isize,
    target: Target,
    operation: FLT_SET_CONTEXT_OPERATION,
    new: usize,
    old: *mut PFLT_CONTEXT,
) -> NTSTATUS {
    if operation != FLT_SET_CONTEXT_KEEP_IF_EXISTS && operation != FLT_SET_CONTEXT_REPLACE_IF_EXISTS
    {
        violation(format!(
            "fltsim: {routine}: invalid FLT_SET_CONTEXT_OPERATION {operation}"
        ));
        return STATUS_INVALID_PARAMETER;
    }
    let wanted_type = match target {
        Target::Instance => FLT_INSTANCE_CONTEXT,
        Target::Stream(_) => FLT_STREAM_CONTEXT,
    };
    let outcome = world::with(|w| {
        let Some(inst) = w
            .instances
            .get(&instance)
            .filter(|i| i.state != InstanceState::Gone)
        else {
            return Err(None);
        };
        if inst.state != InstanceState::Attached {
            return Ok((STATUS_FLT_DELETING_OBJECT, 0, None));
        }
        let Some(context) = w.contexts.get(&new) else {
            return Err(Some(format!(
                "fltsim: {routine}: NewContext {new:#x} is not a live context"
            )));
        };
        if u32::from(context.context_type) != wanted_type {
            return Err(Some(format!(
                "fltsim: {routine}: NewContext is a {}, not a {}",
                type_name(context.context_type),
                type_name(u16::try_from(wanted_type).unwrap_or(u16::MAX))
            )));
        }
        if context.link != Link::Unlinked {
            return Ok((STATUS_FLT_CONTEXT_ALREADY_LINKED, 0, None));
        }
        let existing = match target {
            Target::Instance => inst.context,
            Target::Stream(stream) => inst.stream_contexts.get(&stream).copied(),
        };
        let mut dying = None;
        let mut returned = 0;
        if let Some(existing) = existing {
            if !old.is_null() {
                if let Some(c) = w.contexts.get_mut(&existing) {
                    c.references += 1;
                }
                returned = existing;
            }
            if operation == FLT_SET_CONTEXT_KEEP_IF_EXISTS {
                return Ok((STATUS_FLT_CONTEXT_ALREADY_DEFINED, returned, None));
            }
            dying = unlink(w, existing);
        }
        let link = match target {
            Target::Instance => Link::Instance(instance),
            Target::Stream(stream) => Link::Stream(instance, stream),
        };
        if let Some(c) = w.contexts.get_mut(&new) {
            c.references += 1;
            c.link = link;
        }
        if let Some(inst) = w.instances.get_mut(&instance) {
            match target {
                Target::Instance => inst.context = Some(new),
                Target::Stream(stream) => {
                    inst.stream_contexts.insert(stream, new);
                }
            }
        }
        Ok((STATUS_SUCCESS, returned, dying))
    });
    match outcome {
        Err(None) => {
            invalid_handle(routine, "instance", instance);
            STATUS_INVALID_PARAMETER
        }
        Err(Some(message)) => {
            violation(message);
            STATUS_INVALID_PARAMETER
        }
        Ok((status, returned, dying)) => {
            if !old.is_null() {
                // SAFETY: the caller's optional output variable, checked non-null.
                unsafe { old.write(returned as PFLT_CONTEXT) };
            }
            finish(dying.into_iter().collect());
            status
        }
    }
}

/// Looks up the context of `instance` (or one of its streams) and references it.
fn get_context(
    routine: &str,
    instance: isize,
    target: Target,
    context: *mut PFLT_CONTEXT,
) -> NTSTATUS {
    if context.is_null() {
        violation(format!("fltsim: {routine}: Context is NULL"));
        return STATUS_INVALID_PARAMETER;
    }
    let found = world::with(|w| {
        let inst = w
            .instances
            .get(&instance)
            .filter(|i| i.state != InstanceState::Gone)?;
        let found = match target {
            Target::Instance => inst.context,
            Target::Stream(stream) => inst.stream_contexts.get(&stream).copied(),
        };
        let volume = inst.volume;
        if let Some(c) = found.and_then(|address| w.contexts.get_mut(&address)) {
            c.references += 1;
        }
        if let (Target::Instance, Some(v)) = (target, w.volume(volume)) {
            v.counters.instance_context_gets += 1;
        }
        Some(found)
    });
    let Some(found) = found else {
        invalid_handle(routine, "instance", instance);
        return STATUS_INVALID_PARAMETER;
    };
    // SAFETY: checked non-null; the caller's output variable.
    unsafe { context.write(found.unwrap_or(0) as PFLT_CONTEXT) };
    if found.is_some() {
        STATUS_SUCCESS
    } else {
        STATUS_NOT_FOUND
    }
}

/// The stream of `file_object` for stream-context routines, or the status to return.
///
/// A torn-down instance is a stale handle, and a file object on another volume than the
/// instance's is not one the instance can have a context for: both are reported (Filter Verifier
/// checks the objects passed to Filter Manager routines).
fn stream_of(
    routine: &str,
    instance: PFLT_INSTANCE,
    file_object: *const FILE_OBJECT,
) -> Result<u128, NTSTATUS> {
    let state = world::with(|w| {
        let volume = w
            .instances
            .get(&instance)
            .filter(|i| i.state != InstanceState::Gone)
            .map(|i| i.volume);
        let file = w
            .file_objects
            .get(&(file_object as usize))
            .map(|f| (f.volume, f.stream, f.volume_open));
        (volume, file)
    });
    match state {
        (None, _) => {
            invalid_handle(routine, "instance", instance);
            Err(STATUS_INVALID_PARAMETER)
        }
        (_, None) => {
            invalid_handle(routine, "file object", file_object as isize);
            Err(STATUS_INVALID_PARAMETER)
        }
        (Some(volume), Some((on, _, _))) if on != volume => {
            violation(format!(
                "fltsim: {routine}: file object {:#x} is on volume {on:#x}, not on the volume \
                 {volume:#x} of instance {instance:#x}",
                file_object as usize
            ));
            Err(STATUS_INVALID_PARAMETER)
        }
        (_, Some((_, stream, volume_open))) => match (stream, volume_open) {
            // Volume opens have no stream, and before the file system opened the file
            // (pre-create) there is none yet: Filter Manager returns STATUS_NOT_SUPPORTED.
            (None, _) | (_, true) => Err(STATUS_NOT_SUPPORTED),
            (Some(stream), false) => Ok(stream),
        },
    }
}

/// `FltSetInstanceContext`. IRQL <= `APC_LEVEL`.
///
/// # Safety
/// `oldcontext` must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltSetInstanceContext(
    instance: PFLT_INSTANCE,
    operation: FLT_SET_CONTEXT_OPERATION,
    newcontext: PFLT_CONTEXT,
    oldcontext: *mut PFLT_CONTEXT,
) -> NTSTATUS {
    if !irql_at_most("FltSetInstanceContext", APC_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    set_context(
        "FltSetInstanceContext",
        instance,
        Target::Instance,
        operation,
        newcontext as usize,
        oldcontext,
    )
}

/// `FltGetInstanceContext`. IRQL <= `APC_LEVEL`.
///
/// # Safety
/// `context` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltGetInstanceContext(
    instance: PFLT_INSTANCE,
    context: *mut PFLT_CONTEXT,
) -> NTSTATUS {
    if !irql_at_most("FltGetInstanceContext", APC_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    get_context("FltGetInstanceContext", instance, Target::Instance, context)
}

/// `FltSetStreamContext`. IRQL <= `APC_LEVEL`.
///
/// # Safety
/// `oldcontext` must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltSetStreamContext(
    instance: PFLT_INSTANCE,
    fileobject: *const FILE_OBJECT,
    operation: FLT_SET_CONTEXT_OPERATION,
    newcontext: PFLT_CONTEXT,
    oldcontext: *mut PFLT_CONTEXT,
) -> NTSTATUS {
    if !irql_at_most("FltSetStreamContext", APC_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    let stream = match stream_of("FltSetStreamContext", instance, fileobject) {
        Ok(stream) => stream,
        Err(status) => return status,
    };
    set_context(
        "FltSetStreamContext",
        instance,
        Target::Stream(stream),
        operation,
        newcontext as usize,
        oldcontext,
    )
}

/// `FltGetStreamContext`. IRQL <= `APC_LEVEL`.
///
/// # Safety
/// `context` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltGetStreamContext(
    instance: PFLT_INSTANCE,
    fileobject: *const FILE_OBJECT,
    context: *mut PFLT_CONTEXT,
) -> NTSTATUS {
    if !irql_at_most("FltGetStreamContext", APC_LEVEL) {
        return STATUS_INVALID_PARAMETER;
    }
    let stream = match stream_of("FltGetStreamContext", instance, fileobject) {
        Ok(stream) => stream,
        Err(status) => {
            if !context.is_null() {
                // SAFETY: the caller's output variable, checked non-null.
                unsafe { context.write(std::ptr::null_mut()) };
            }
            return status;
        }
    };
    get_context(
        "FltGetStreamContext",
        instance,
        Target::Stream(stream),
        context,
    )
}

/// Unlinks the stream contexts of `stream` on volume `volume` (its last file object closed), in
/// the same critical section that saw the last close, so that a concurrent open of the same file
/// either keeps the stream alive or finds it gone with its contexts. Finish the returned contexts
/// with [`finish`] once the state lock is released.
pub(crate) fn stream_closed(w: &mut World, volume: isize, stream: u128) -> Vec<Dying> {
    // Only the volume's live instance can hold stream contexts: a gone one had them all deleted.
    let address = w
        .instance_on(volume)
        .and_then(|i| w.instances.get(&i))
        .and_then(|i| i.stream_contexts.get(&stream).copied());
    address.and_then(|a| unlink(w, a)).into_iter().collect()
}

/// Deletes every context linked to `instance` (teardown complete, or setup failed).
pub(crate) fn instance_gone(instance: isize) {
    let dying = world::with(|w| {
        let Some(inst) = w.instances.get(&instance) else {
            return Vec::new();
        };
        let mut addresses: Vec<usize> = inst.stream_contexts.values().copied().collect();
        addresses.extend(inst.context);
        addresses
            .into_iter()
            .filter_map(|a| unlink(w, a))
            .collect::<Vec<_>>()
    });
    finish(dying);
}

/// Live contexts as `(type, contexts, references)`, for the report.
pub(crate) fn outstanding() -> Vec<(u16, usize, usize)> {
    world::with(|w| {
        let mut rows: Vec<(u16, usize, usize)> = Vec::new();
        for context in w.contexts.values() {
            match rows.iter_mut().find(|r| r.0 == context.context_type) {
                Some(row) => {
                    row.1 += 1;
                    row.2 += context.references;
                }
                None => rows.push((context.context_type, 1, context.references)),
            }
        }
        rows.sort_unstable();
        rows
    })
}

const _: [unsafe extern "system" fn(
    PFLT_FILTER,
    u16,
    usize,
    POOL_TYPE,
    *mut PFLT_CONTEXT,
) -> NTSTATUS; 2] = [
    FltAllocateContext,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltAllocateContext,
];
const _: [unsafe extern "system" fn(PFLT_CONTEXT); 3] = [
    FltReferenceContext,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltReferenceContext,
    FltDeleteContext,
];
const _: [unsafe extern "system" fn(PFLT_CONTEXT); 3] = [
    FltReleaseContext,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltReleaseContext,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltDeleteContext,
];
const _: [unsafe extern "system" fn(
    PFLT_INSTANCE,
    FLT_SET_CONTEXT_OPERATION,
    PFLT_CONTEXT,
    *mut PFLT_CONTEXT,
) -> NTSTATUS; 2] = [
    FltSetInstanceContext,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltSetInstanceContext,
];
const _: [unsafe extern "system" fn(PFLT_INSTANCE, *mut PFLT_CONTEXT) -> NTSTATUS; 2] = [
    FltGetInstanceContext,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltGetInstanceContext,
];
const _: [unsafe extern "system" fn(
    PFLT_INSTANCE,
    *const FILE_OBJECT,
    FLT_SET_CONTEXT_OPERATION,
    PFLT_CONTEXT,
    *mut PFLT_CONTEXT,
) -> NTSTATUS; 2] = [
    FltSetStreamContext,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltSetStreamContext,
];
const _: [unsafe extern "system" fn(
    PFLT_INSTANCE,
    *const FILE_OBJECT,
    *mut PFLT_CONTEXT,
) -> NTSTATUS; 2] = [
    FltGetStreamContext,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltGetStreamContext,
];
