//! The one active simulation of the process.

use std::sync::{Mutex, MutexGuard};

use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLTFL_INSTANCE_SETUP_MANUAL_ATTACHMENT, FLTFL_INSTANCE_SETUP_NEWLY_MOUNTED_VOLUME,
    FLTFL_INSTANCE_TEARDOWN_VOLUME_DISMOUNT, PFLT_FILTER, PFLT_INSTANCE,
};
use windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_FLT_DO_NOT_ATTACH, STATUS_FLT_INSTANCE_NOT_FOUND, STATUS_SUCCESS,
};

use crate::abi::{DriverEntry, DriverEntryFn};
use crate::filter::DriverImage;
use crate::image::{ImageError, ImageOptions, LoadedImage};
use crate::verifier::{self, Report, tag_text};
use crate::volume::{Counters, FastIo, Volume, VolumeSpec};
use crate::world::{self, FilterState, InstanceState, PostIrql, lock_ignoring_poison};

/// Serializes simulations: the simulated kernel and a loaded driver's globals are process-wide.
static SESSION: Mutex<()> = Mutex::new(());

/// A simulated machine: kernel, Filter Manager, volumes, and at most one loaded minifilter.
///
/// Creating a `Sim` resets every simulated subsystem; dropping it ends the session. Methods take
/// `&self`, so one `Sim` can be shared by the threads of a `std::thread::scope` to issue I/O
/// concurrently. A rule broken inside a simulated routine (which cannot panic: it is an
/// `extern "system"` function) makes the next `Sim` method, or the `Sim`'s drop, panic with the
/// recorded `fltsim: ...` message; [`Sim::check`] does it on demand.
pub struct Sim {
    _session: MutexGuard<'static, ()>,
    driver: Mutex<Option<DriverImage>>,
    image: Mutex<Option<LoadedImage>>,
    last_unload_report: Mutex<Option<Report>>,
}

/// Panics with a recorded rule violation when dropped, unless the thread is already panicking.
pub(crate) struct CheckOnExit;

impl Drop for CheckOnExit {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            verifier::check();
        }
    }
}

/// Reports earlier violations now, and later ones when the returned guard drops: every public
/// entry point of the simulator starts with it.
#[track_caller]
pub(crate) fn checked() -> CheckOnExit {
    verifier::check();
    CheckOnExit
}

impl Sim {
    /// Starts a new simulation, waiting for any other one in this process to end first.
    #[must_use]
    pub fn new() -> Self {
        let guard = SESSION
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        crate::pool::reset();
        crate::pushlock::reset();
        crate::kernel::reset();
        crate::registry::reset();
        crate::usermem::reset();
        crate::service::reset();
        crate::hang::reset();
        crate::pause::reset();
        crate::names::reset();
        crate::cachemgr::reset();
        world::reset();
        verifier::reset();
        Self {
            _session: guard,
            driver: Mutex::new(None),
            image: Mutex::new(None),
            last_unload_report: Mutex::new(None),
        }
    }

    /// Panics with the first rule violation a simulated routine recorded, if any.
    ///
    /// # Panics
    /// When a rule was broken (the message starts with `fltsim: ` and names it).
    #[track_caller]
    pub fn check(&self) {
        verifier::check();
    }

    /// Loads a driver: calls `driver_entry` at `PASSIVE_LEVEL` with a zeroed `DRIVER_OBJECT` and the
    /// registry path `\REGISTRY\MACHINE\SYSTEM\ControlSet001\Services\<name>`; returns its status.
    ///
    /// If `DriverEntry` fails, the driver must have unregistered any filter it registered; otherwise
    /// the report lists it.
    ///
    /// # Panics
    /// If a driver is already loaded, or the driver broke a rule.
    pub fn load(&self, name: &str, driver_entry: DriverEntry) -> NTSTATUS {
        let _exit = checked();
        assert!(
            !world::with(|w| w.driver_loaded),
            "fltsim: Sim::load: a driver is already loaded (one driver per Sim)"
        );
        let (status, image) = crate::filter::load(name, DriverEntryFn::host(driver_entry));
        *lock_ignoring_poison(&self.driver) = Some(image);
        status
    }

    /// Loads a driver from its image file (a cross-built `.sys`), as Windows would: maps, relocates
    /// and protects the image, binds its imports to fltsim's routines, then calls its `DriverEntry`
    /// (through the Windows x64 calling convention) like [`Sim::load`] does. Returns the status of
    /// `DriverEntry`. x86-64 Linux only (see [`crate::image`]).
    ///
    /// The image stays mapped until the `Sim` ends. When the driver unloads (or `DriverEntry`
    /// fails), its pages become inaccessible, so that a call into the unloaded driver stops the
    /// process, as it would bugcheck Windows.
    ///
    /// # Errors
    /// [`ImageError`] when the image cannot be loaded: an unsupported host, an unreadable or
    /// malformed file, or an import fltsim does not provide (named in the error). `DriverEntry` has
    /// not run then.
    ///
    /// # Panics
    /// If a driver is already loaded, or the driver broke a rule.
    pub fn load_image(
        &self,
        name: &str,
        path: &std::path::Path,
        options: ImageOptions,
    ) -> Result<NTSTATUS, ImageError> {
        let _exit = checked();
        assert!(
            !world::with(|w| w.driver_loaded),
            "fltsim: Sim::load_image: a driver is already loaded (one driver per Sim)"
        );
        let image = LoadedImage::load(name, path, options)?;
        let (status, object) = crate::filter::load(name, DriverEntryFn::image(image.entry()));
        if status < 0 {
            image.retire();
        }
        *lock_ignoring_poison(&self.driver) = Some(object);
        *lock_ignoring_poison(&self.image) = Some(image);
        Ok(status)
    }

    /// Unloads the driver as `fltmc unload` (`mandatory == false`) or a service stop / system
    /// shutdown (`mandatory == true`) would: calls `FilterUnload` with `FLTFL_FILTER_UNLOAD_MANDATORY`
    /// or 0 and returns its status.
    ///
    /// A driver without `FilterUnloadCallback` cannot be unloaded: `STATUS_NOT_SUPPORTED`, and it stays
    /// loaded. A failure status keeps the driver loaded; it is only allowed for non-mandatory unloads.
    /// On success the driver must have called `FltUnregisterFilter`. The verifier report at this point
    /// is kept ([`Sim::unload_report`]) and printed to stderr unless clean.
    ///
    /// # Panics
    /// If no driver is loaded, or the driver broke a rule (failing a mandatory unload, returning
    /// success without unregistering, ...).
    pub fn unload(&self, mandatory: bool) -> NTSTATUS {
        let _exit = checked();
        let status = crate::filter::unload(mandatory);
        if !self.driver_loaded()
            && let Some(image) = lock_ignoring_poison(&self.image).as_ref()
        {
            image.retire();
        }
        if status >= 0 && !verifier::pending() {
            let report = build_report();
            if !report.is_clean() {
                eprintln!("{report}");
            }
            *lock_ignoring_poison(&self.last_unload_report) = Some(report);
        }
        status
    }

    /// The verifier report made when the driver last unloaded successfully.
    #[must_use]
    pub fn unload_report(&self) -> Option<Report> {
        lock_ignoring_poison(&self.last_unload_report).clone()
    }

    /// What Driver Verifier and Filter Verifier would report now.
    ///
    /// While the filter is registered, leaks cannot be judged (the driver may legitimately hold
    /// memory and references): the report then says the filter is not unregistered. After unload
    /// (or a failed load) it lists leaked pool by tag, leaked context references by type, unreleased
    /// file name information, communication ports left open, and findings such as a filter left
    /// registered by a failed `DriverEntry`.
    #[must_use]
    pub fn verifier_report(&self) -> Report {
        build_report()
    }

    /// Mounts a volume. When filtering has started, Filter Manager offers it to the filter
    /// (`InstanceSetup` with `FLTFL_INSTANCE_SETUP_AUTOMATIC_ATTACHMENT` |
    /// `FLTFL_INSTANCE_SETUP_NEWLY_MOUNTED_VOLUME`); volumes mounted before `FltStartFiltering` are
    /// offered when it is called.
    pub fn add_volume(&self, spec: VolumeSpec) -> Volume {
        let _exit = checked();
        let anchor = world::Anchor::new();
        let handle = anchor.handle();
        world::with(|w| {
            w.add_volume(world::Volume {
                anchor,
                files: crate::fs::Namespace::new(spec.file_system),
                spec,
                removed: false,
                open_streams: std::collections::HashMap::new(),
                instance: None,
                locks: std::collections::HashMap::new(),
                fast_io: crate::volume::FastIo::Possible,
                fast_io_rng: 0,
                counters: crate::volume::Counters::default(),
            });
        });
        crate::instance::setup(
            handle,
            windows_sys::Wdk::Storage::FileSystem::Minifilters::FLTFL_INSTANCE_SETUP_AUTOMATIC_ATTACHMENT
                | FLTFL_INSTANCE_SETUP_NEWLY_MOUNTED_VOLUME,
        );
        Volume(handle)
    }

    /// Dismounts `volume`: its instance is torn down with `FLTFL_INSTANCE_TEARDOWN_VOLUME_DISMOUNT`
    /// (no `InstanceQueryTeardown`); later I/O on its file handles fails with
    /// `STATUS_VOLUME_DISMOUNTED`.
    pub fn remove_volume(&self, volume: Volume) {
        let _exit = checked();
        // A dismount flushes the volume's cached data and the cache manager lets its file objects go.
        crate::cachemgr::lazy_writer(Some(volume.0));
        let instance = world::with(|w| {
            if let Some(v) = w.volume(volume.0) {
                v.removed = true;
            }
            w.instance_on(volume.0)
        });
        if let Some(instance) = instance {
            crate::instance::teardown(instance, FLTFL_INSTANCE_TEARDOWN_VOLUME_DISMOUNT);
        }
    }

    /// Detaches the filter from `volume` as `fltmc detach` does: `InstanceQueryTeardown` may refuse
    /// (its status is returned), a filter without that callback cannot be detached manually
    /// (`STATUS_FLT_DO_NOT_DETACH`); otherwise teardown with `FLTFL_INSTANCE_TEARDOWN_MANUAL`.
    /// `STATUS_FLT_INSTANCE_NOT_FOUND` if no instance is attached.
    pub fn detach(&self, volume: Volume) -> NTSTATUS {
        let _exit = checked();
        match world::with(|w| w.instance_on(volume.0)) {
            Some(instance) => crate::instance::detach(instance),
            None => STATUS_FLT_INSTANCE_NOT_FOUND,
        }
    }

    /// Attaches the filter to `volume` as `fltmc attach` does (`InstanceSetup` with
    /// `FLTFL_INSTANCE_SETUP_MANUAL_ATTACHMENT`). Returns `STATUS_FLT_DO_NOT_ATTACH` when setup
    /// refused or no filter is started.
    pub fn attach(&self, volume: Volume) -> NTSTATUS {
        let _exit = checked();
        match crate::instance::setup(volume.0, FLTFL_INSTANCE_SETUP_MANUAL_ATTACHMENT) {
            Some(_) => STATUS_SUCCESS,
            None => STATUS_FLT_DO_NOT_ATTACH,
        }
    }

    /// The filter's instance on `volume`, if one is attached.
    #[must_use]
    pub fn instance(&self, volume: Volume) -> Option<PFLT_INSTANCE> {
        world::with(|w| {
            w.instance_on(volume.0).filter(|i| {
                w.instances
                    .get(i)
                    .is_some_and(|i| i.state == InstanceState::Attached)
            })
        })
    }

    /// The registered filter, if any (`PFLT_FILTER` the driver got from `FltRegisterFilter`).
    #[must_use]
    pub fn filter(&self) -> Option<PFLT_FILTER> {
        world::with(|w| {
            w.filter
                .as_ref()
                .filter(|f| f.state != FilterState::Unregistered)
                .map(|f| f.anchor.handle())
        })
    }

    /// Whether a driver is loaded.
    #[must_use]
    pub fn driver_loaded(&self) -> bool {
        world::with(|w| w.driver_loaded)
    }

    /// Chooses the IRQL of post-operation callbacks that Windows may run at `DISPATCH_LEVEL`
    /// (default [`PostIrql::Dispatch`]). Create, fast I/O and synchronized operations always get
    /// their post-op at `PASSIVE_LEVEL`.
    pub fn set_post_irql(&self, irql: PostIrql) {
        world::with(|w| w.post_irql = irql);
    }

    /// Turns the IRQL checks of the simulated routines off (`false`) or back on (`true`, the
    /// default; every new `Sim` starts with them on).
    ///
    /// With checks on, a Filter Manager or kernel routine called above its documented ceiling is a
    /// rule violation, as Driver Verifier and Filter Verifier report it. With them off, fltsim is a
    /// machine without Verifier: the call goes through, as it does on Windows as long as the paged
    /// memory it touches happens to be resident, so a driver's mistake stays hidden. That is the
    /// setting in which a driver's own IRQL assertions (in its debug build) are the only thing that
    /// catches the mistake: use it to test them. Pool's own `BAD_POOL_CALLER` checks stay on.
    pub fn set_irql_checks(&self, enabled: bool) {
        verifier::set_irql_checks(enabled);
    }

    /// Chooses when `volume`'s file system refuses fast I/O beyond the cases it always refuses
    /// (a file object not cached yet, a conflicting byte-range lock); see [`FastIo`]. A refused
    /// fast read or write is reissued as an IRP, as the I/O manager does.
    pub fn set_fast_io(&self, volume: Volume, fast_io: FastIo) {
        world::with(|w| {
            if let Some(v) = w.volume(volume.0) {
                v.fast_io = fast_io;
                v.fast_io_rng = 0;
            }
        });
    }

    /// What happened on `volume` since it was mounted or [`Sim::reset_counters`]: the file-system
    /// queries filters made (`FltQueryInformationFile`, `FltGetFileNameInformation`) and how fast
    /// I/O fared ([`Counters`]), so a test can assert what an operation cost.
    ///
    /// # Panics
    /// If the volume is unknown.
    #[must_use]
    pub fn counters(&self, volume: Volume) -> Counters {
        world::with(|w| w.volume(volume.0).map(|v| v.counters))
            .expect("fltsim: Sim::counters: unknown volume")
    }

    /// Zeroes `volume`'s [`Counters`].
    pub fn reset_counters(&self, volume: Volume) {
        world::with(|w| {
            if let Some(v) = w.volume(volume.0) {
                v.counters = Counters::default();
            }
        });
    }

    /// From now on, operations that reach the file system wait there until [`Sim::release_io`]:
    /// the way to have I/O in flight while a volume detaches or the driver unloads.
    pub fn hold_io(&self) {
        world::with(|w| w.hold_io = true);
    }

    /// Lets held operations complete, and new ones pass.
    pub fn release_io(&self) {
        world::with(|w| w.hold_io = false);
        world::notify();
    }

    /// Waits until at least `count` operations are held in the file system.
    pub fn wait_for_held_io(&self, count: usize) {
        world::wait_for(&world::Wait::HeldIoCount(count), |w| {
            (w.held >= count).then_some(())
        });
    }
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        // Unmapped before the session ends, so that the next session starts with no image of this
        // one registered.
        drop(lock_ignoring_poison(&self.image).take());
        if world::with(|w| w.driver_loaded) {
            eprintln!(
                "fltsim: the Sim ends with the driver still loaded\n{}",
                build_report()
            );
        }
        if !std::thread::panicking() {
            verifier::check();
        }
    }
}

/// Builds the report from the simulator's state now.
pub(crate) fn build_report() -> Report {
    let (mut lines, registered, names, ports, descriptors) = world::with(|w| {
        let registered = w
            .filter
            .as_ref()
            .is_some_and(|f| f.state != FilterState::Unregistered);
        let names: usize = w.names.values().map(|n| n.references).sum();
        let ports: Vec<String> = w
            .server_ports
            .values()
            .filter(|p| p.open)
            .map(|p| p.name.clone())
            .collect();
        (
            w.findings.clone(),
            registered,
            names,
            ports,
            w.security_descriptors.len(),
        )
    });
    let mut leaked_pool = Vec::new();
    if registered {
        lines.push("filter not unregistered: the driver is still loaded".into());
    } else {
        leaked_pool = crate::pool::outstanding();
        for &(tag, bytes, count) in &leaked_pool {
            lines.push(format!(
                "leaked pool: tag '{}' ({tag:#010x}): {bytes} bytes in {count} allocation(s)",
                tag_text(tag)
            ));
        }
        for (context_type, contexts, references) in crate::context::outstanding() {
            lines.push(format!(
                "leaked context references: {}: {contexts} context(s), {references} reference(s) \
                 outstanding",
                crate::context::type_name(context_type)
            ));
        }
        if names > 0 {
            lines.push(format!(
                "leaked file name information: {names} FLT_FILE_NAME_INFORMATION reference(s) not \
                 released"
            ));
        }
        for port in ports {
            lines.push(format!("communication server port left open: {port}"));
        }
        let clients = crate::port::unclosed_client_ports();
        if clients > 0 {
            lines.push(format!(
                "communication client port(s) not closed: {clients} connection(s) disconnected \
                 without FltCloseClientPort"
            ));
        }
        if descriptors > 0 {
            lines.push(format!(
                "security descriptor(s) not freed: {descriptors} from FltBuildDefaultSecurityDescriptor \
                 without FltFreeSecurityDescriptor"
            ));
        }
        let push_locks = crate::pushlock::live();
        if push_locks > 0 {
            lines.push(format!(
                "push locks never deleted: {push_locks} initialized without FltDeletePushLock"
            ));
        }
        for (handle, references) in crate::objects::outstanding() {
            lines.push(format!(
                "rundown references never released: {references} on object {handle:#x} \
                 (FltObjectReference or FltEnumerateInstances without FltObjectDereference)"
            ));
        }
        for key in crate::registry::open_handles() {
            lines.push(format!(
                "registry handle left open: {key} (ZwOpenKey without ZwClose)"
            ));
        }
    }
    Report { leaked_pool, lines }
}
