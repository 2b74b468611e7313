//! The simulated Filter Manager's state: one process-wide instance, reset by [`crate::Sim::new`].
//!
//! Everything lives behind one mutex. Driver callbacks are never called with it held (the driver
//! calls back into simulated routines, which take it); code that must wait for another thread (a
//! draining teardown, a held I/O) waits on [`CHANGED`], notified on every state change that matters.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

pub(crate) use crate::hang::Wait;

use crate::abi::{
    ConnectNotify, ContextAllocate, ContextCleanup, ContextFree, DisconnectNotify, FilterUnload,
    InstanceQueryTeardown, InstanceSetup, InstanceTeardown, MessageNotify, PostOperation,
    PreOperation,
};
use crate::fs::{Namespace, NodeKey};
use crate::volume::{FastIo, VolumeSpec};

/// Locks `mutex`, ignoring poisoning: a test that panicked on purpose must not break the next one.
pub(crate) fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The state, `None` before the first [`crate::Sim`].
static WORLD: Mutex<Option<World>> = Mutex::new(None);

/// Notified whenever an instance's in-flight work, a held I/O or a pended operation changes.
pub(crate) static CHANGED: Condvar = Condvar::new();

/// Runs `f` with the state locked.
pub(crate) fn with<R>(f: impl FnOnce(&mut World) -> R) -> R {
    let mut guard = lock_ignoring_poison(&WORLD);
    f(guard.get_or_insert_with(World::default))
}

/// Waits until `ready` returns `Some`, re-checking it each time the state changes: a wait for
/// `what`, bounded and checked for deadlocks by [`crate::hang`].
pub(crate) fn wait_for<R>(what: &Wait, mut ready: impl FnMut(&mut World) -> Option<R>) -> R {
    crate::hang::wait_on(&WORLD, &CHANGED, what, |world| {
        ready(world.get_or_insert_with(World::default))
    })
}

/// Wakes every waiter of [`wait_for`].
pub(crate) fn notify() {
    CHANGED.notify_all();
}

/// Replaces the state with an empty one: called when a new [`crate::Sim`] starts.
pub(crate) fn reset() {
    *lock_ignoring_poison(&WORLD) = Some(World::default());
}

/// A stable, unique address used as a handle (`PFLT_FILTER`, `PFLT_INSTANCE`, ...).
///
/// The allocation is kept until the next [`reset`], so a stale handle never aliases a newer object.
pub(crate) struct Anchor(Box<u64>);

impl Anchor {
    /// A new handle value.
    pub(crate) fn new() -> Self {
        Self(Box::new(0))
    }

    /// The handle's value.
    pub(crate) fn handle(&self) -> isize {
        std::ptr::from_ref::<u64>(&self.0) as isize
    }
}

/// One entry of the registration's operation array.
#[derive(Clone, Copy)]
pub(crate) struct OperationEntry {
    /// `FLTFL_OPERATION_REGISTRATION_*`.
    pub flags: u32,
    /// Pre-operation callback.
    pub pre: Option<PreOperation>,
    /// Post-operation callback.
    pub post: Option<PostOperation>,
}

/// One entry of the registration's context array.
#[derive(Clone, Copy)]
pub(crate) struct ContextEntry {
    /// `FLT_*_CONTEXT`.
    pub context_type: u16,
    /// Called when the last reference goes.
    pub cleanup: Option<ContextCleanup>,
    /// Size, or `FLT_VARIABLE_SIZED_CONTEXTS`.
    pub size: usize,
    /// Pool tag of the contexts' allocations.
    pub tag: u32,
    /// Optional allocator replacing the pool.
    pub allocate: Option<ContextAllocate>,
    /// Optional free routine matching `allocate`.
    pub free: Option<ContextFree>,
}

/// Where a filter is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum FilterState {
    /// `FltRegisterFilter` succeeded.
    Registered,
    /// `FltStartFiltering` succeeded.
    Started,
    /// `FltUnregisterFilter` is tearing the filter down: instances not yet torn down still get
    /// operations, but no new volume is offered and no new context can be allocated.
    Unregistering,
    /// `FltUnregisterFilter` ran.
    Unregistered,
}

/// A registered filter (copy of what the driver's `FLT_REGISTRATION` said).
pub(crate) struct Filter {
    pub anchor: Anchor,
    pub state: FilterState,
    pub operations: HashMap<u8, OperationEntry>,
    pub contexts: Vec<ContextEntry>,
    pub unload: Option<FilterUnload>,
    pub setup: Option<InstanceSetup>,
    pub query_teardown: Option<InstanceQueryTeardown>,
    pub teardown_start: Option<InstanceTeardown>,
    pub teardown_complete: Option<InstanceTeardown>,
    /// `FLT_REGISTRATION.Flags` (`FLTFL_REGISTRATION_*`).
    pub flags: u32,
    /// The `SupportedFeatures` registry value read at registration (`SUPPORTED_FS_FEATURES_*`).
    pub supported_features: u32,
    /// The driver's service name.
    pub service: String,
}

/// A simulated volume and its file system.
pub(crate) struct Volume {
    pub anchor: Anchor,
    pub spec: VolumeSpec,
    /// Dismounted by [`crate::Sim::remove_volume`].
    pub removed: bool,
    /// The file system's files and directories.
    pub files: Namespace,
    /// Open file objects per stream (file key).
    pub open_streams: HashMap<u128, usize>,
    /// The instance attached to the volume most recently (it may be gone since).
    pub instance: Option<isize>,
    /// Byte-range locks per stream.
    pub locks: HashMap<u128, Vec<ByteRangeLock>>,
    /// When the file system refuses fast I/O beyond the documented cases.
    pub fast_io: FastIo,
    /// State of the seeded refusals of [`FastIo::Seeded`].
    pub fast_io_rng: u64,
}

/// A byte-range lock (`IRP_MJ_LOCK_CONTROL`), owned by the file object that took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ByteRangeLock {
    pub owner: usize,
    pub offset: u64,
    pub length: u64,
    pub exclusive: bool,
}

impl ByteRangeLock {
    /// Whether the lock covers part of `[offset, offset + length)`.
    pub(crate) fn overlaps(&self, offset: u64, length: u64) -> bool {
        offset < self.offset.saturating_add(self.length)
            && self.offset < offset.saturating_add(length)
    }
}

/// Where an instance is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum InstanceState {
    /// Attached: operations are filtered.
    Attached,
    /// Teardown started: new operations bypass the filter.
    TearingDown,
    /// Torn down.
    Gone,
}

/// Progress of a post-operation callback owed to an operation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PostState {
    /// The operation is below the filter; its post-op will run when it completes.
    Pending,
    /// The operation completed and its thread is running the post-op.
    Completing,
    /// A teardown is calling the post-op with `FLTFL_POST_OPERATION_DRAINING`.
    Draining,
    /// The teardown called the post-op; the completion must not call it again.
    Drained,
}

/// A post-operation callback owed to an operation below the filter.
#[derive(Clone, Copy)]
pub(crate) struct PendingPost {
    pub state: PostState,
    pub post: PostOperation,
    /// Address of the operation's `FLT_RELATED_OBJECTS`.
    pub objects: usize,
    /// The completion context the pre-op returned.
    pub completion_context: usize,
    /// The IRQL the post-op runs at.
    pub irql: u8,
}

/// An instance of the filter on a volume.
pub(crate) struct Instance {
    /// Owns the handle's address (the map is keyed by it).
    pub _anchor: Anchor,
    pub volume: isize,
    pub state: InstanceState,
    /// The instance context (a linked context holds one reference).
    pub context: Option<usize>,
    /// Stream contexts by stream (file key).
    pub stream_contexts: HashMap<u128, usize>,
    /// Callbacks of this instance now running, plus pended pre-operations.
    pub active: usize,
    /// Operations that owe a post-op, by callback-data address.
    pub posts: HashMap<usize, PendingPost>,
}

/// What a context is attached to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Link {
    /// Allocated, never set.
    Unlinked,
    /// Set on an instance.
    Instance(isize),
    /// Set on a stream of an instance.
    Stream(isize, u128),
    /// Was linked, then deleted (it can never be linked again).
    Deleted,
}

/// A context allocated by `FltAllocateContext`.
#[allow(clippy::struct_field_names)] // `context_type` is Filter Manager's name for it
pub(crate) struct Context {
    pub context_type: u16,
    pub paged: bool,
    pub tag: u32,
    pub references: usize,
    pub link: Link,
    pub cleanup: Option<ContextCleanup>,
    pub free: Option<ContextFree>,
}

/// A simulated `FILE_OBJECT`'s state, keyed by its address.
pub(crate) struct FileObjectState {
    pub volume: isize,
    /// The file or directory once the create succeeded; `None` for volume opens and before.
    pub node: Option<NodeKey>,
    /// The stream (the key stream contexts hang on) once the create succeeded.
    pub stream: Option<u128>,
    /// Path relative to the volume root, as opened.
    pub path: String,
    /// Whether the create succeeded and no close was sent yet.
    pub open: bool,
    /// Whether this is a volume open (`FO_VOLUME_OPEN`).
    pub volume_open: bool,
    /// Whether the file system initialized caching on this file object (`PrivateCacheMap`).
    pub cached: bool,
}

/// Why a callback data exists, for routines that take one.
#[derive(Clone, Copy)]
pub(crate) struct CallbackDataState {
    pub file_object: usize,
    pub major: u8,
    pub irp_flags: u32,
    pub fast_io: bool,
    /// Whether the post-op phase has begun.
    pub post: bool,
    /// The status the file system returned (post phase).
    pub status: i32,
}

/// A `FLT_FILE_NAME_INFORMATION` handed out by `FltGetFileNameInformation`.
pub(crate) struct NameInfo {
    pub references: usize,
    /// Owns the structure and its buffer; freed when the last reference goes.
    pub storage: crate::names::NameStorage,
}

/// A communication server port.
pub(crate) struct ServerPort {
    /// Owns the handle's address (the map is keyed by it).
    pub _anchor: Anchor,
    pub name: String,
    pub cookie: usize,
    pub connect: Option<ConnectNotify>,
    pub disconnect: Option<DisconnectNotify>,
    pub message: Option<MessageNotify>,
    pub max_connections: i32,
    pub open: bool,
    pub connections: usize,
    /// Created with a descriptor from `FltBuildDefaultSecurityDescriptor`: only administrators and
    /// SYSTEM may connect.
    pub admins_only: bool,
}

/// A connection (client port) to a server port.
pub(crate) struct ClientPort {
    /// Owns the handle's address (the map is keyed by it).
    pub _anchor: Anchor,
    pub server: isize,
    pub cookie: usize,
    /// Closed by the driver with `FltCloseClientPort`.
    pub closed_by_driver: bool,
    /// The user-mode side disconnected.
    pub disconnected: bool,
    /// `MessageNotify` calls now running for this connection.
    pub in_flight: usize,
}

/// How the simulator runs post-operation callbacks that Windows may run at `DISPATCH_LEVEL`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum PostIrql {
    /// At `DISPATCH_LEVEL`, the worst case Windows allows (the default).
    #[default]
    Dispatch,
    /// At `PASSIVE_LEVEL`, as when the I/O completes at passive level.
    Passive,
}

/// Everything the simulated Filter Manager knows.
#[derive(Default)]
pub(crate) struct World {
    pub driver_loaded: bool,
    /// Whether the `FilterUnload` now running is mandatory.
    pub unloading_mandatory: bool,
    pub filter: Option<Filter>,
    /// Volumes in the order they were mounted.
    pub volumes: Vec<Volume>,
    /// Index into `volumes` by volume handle.
    pub volume_index: HashMap<isize, usize>,
    pub instances: HashMap<isize, Instance>,
    pub contexts: HashMap<usize, Context>,
    pub file_objects: HashMap<usize, FileObjectState>,
    pub callback_data: HashMap<usize, CallbackDataState>,
    /// Pre-operations that returned `FLT_PREOP_PENDING`, with their completion once given.
    pub pended: HashMap<usize, Option<(i32, usize)>>,
    /// Safe post-op work queued by `FltDoCompletionProcessingWhenSafe`, by callback data.
    pub deferred: HashMap<usize, std::thread::JoinHandle<i32>>,
    pub names: HashMap<usize, NameInfo>,
    pub server_ports: HashMap<isize, ServerPort>,
    pub client_ports: HashMap<isize, ClientPort>,
    pub security_descriptors: HashMap<usize, Box<[u8]>>,
    /// Rundown references on filters, instances and volumes (`FltObjectReference`,
    /// `FltEnumerateInstances`), by handle.
    pub object_references: HashMap<isize, usize>,
    pub post_irql: PostIrql,
    /// Whether I/O reaching the file system waits for [`crate::Sim::release_io`].
    pub hold_io: bool,
    /// How many operations are waiting in the file system.
    pub held: usize,
    /// Findings for the report that are not panics.
    pub findings: Vec<String>,
    /// File objects with BypassIO enabled (`FSCTL_MANAGE_BYPASS_IO`), by address.
    pub bypass_io: std::collections::HashSet<usize>,
}

impl World {
    /// The filter with handle `handle`, if it is the registered one.
    pub(crate) fn filter_by_handle(&mut self, handle: isize) -> Option<&mut Filter> {
        self.filter.as_mut().filter(|f| f.anchor.handle() == handle)
    }

    /// The volume with handle `handle`.
    pub(crate) fn volume(&mut self, handle: isize) -> Option<&mut Volume> {
        let index = *self.volume_index.get(&handle)?;
        self.volumes.get_mut(index)
    }

    /// Mounts `volume` (it keeps its place in `volumes` forever).
    pub(crate) fn add_volume(&mut self, volume: Volume) {
        self.volume_index
            .insert(volume.anchor.handle(), self.volumes.len());
        self.volumes.push(volume);
    }

    /// The instance attached to volume `volume`, if it is attached or tearing down.
    pub(crate) fn instance_on(&self, volume: isize) -> Option<isize> {
        let index = *self.volume_index.get(&volume)?;
        let instance = self.volumes.get(index)?.instance?;
        self.instances
            .get(&instance)
            .is_some_and(|i| i.state != InstanceState::Gone)
            .then_some(instance)
    }
}
