//! Instances: setup on a volume, manual detach (query teardown), and teardown with draining.
//!
//! Teardown order (Filter Manager's): the instance stops receiving new operations;
//! `InstanceTeardownStart`; fltsim waits until no callback of the instance is running and no
//! pre-operation is pended; every operation still owed a post-op gets it now, once, with
//! `FLTFL_POST_OPERATION_DRAINING` (its later completion does not call it again);
//! `InstanceTeardownComplete`; then the instance's contexts are deleted.

use std::collections::HashMap;
use std::ptr;

use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_CALLBACK_DATA, FLT_POSTOP_FINISHED_PROCESSING, FLT_RELATED_OBJECTS,
    FLTFL_INSTANCE_TEARDOWN_MANUAL, FLTFL_POST_OPERATION_DRAINING,
    FLTFL_REGISTRATION_SUPPORT_DAX_VOLUME,
};
use windows_sys::Win32::Foundation::{NTSTATUS, STATUS_FLT_DO_NOT_DETACH, STATUS_SUCCESS};

use crate::callback::{call_at, hex, related_objects};
use crate::irql::PASSIVE_LEVEL;
use crate::pause::Point;
use crate::verifier::violation;
use crate::volume::Volume;
use crate::world::{self, FilterState, Instance, InstanceState, PostState, Wait};

/// Runs `InstanceSetup` for `volume` with `flags`; attaches the instance if it succeeds.
pub(crate) fn setup(volume: isize, flags: u32) -> Option<isize> {
    let prepared = world::with(|w| {
        let filter = w
            .filter
            .as_ref()
            .filter(|f| f.state == FilterState::Started)?;
        let callback = filter.setup;
        let filter_handle = filter.anchor.handle();
        let supports_dax = filter.flags & FLTFL_REGISTRATION_SUPPORT_DAX_VOLUME != 0;
        let spec = w.volume(volume).filter(|v| !v.removed)?.spec.clone();
        // Filter Manager attaches to a direct-access volume only filters that registered
        // FLTFL_REGISTRATION_SUPPORT_DAX_VOLUME (`docs/kernel-rules.md`, "Registration and unload";
        // "FLT_REGISTRATION structure (fltkernel.h)").
        if spec.dax && !supports_dax {
            return None;
        }
        if w.instance_on(volume).is_some() {
            return None;
        }
        let anchor = world::Anchor::new();
        let handle = anchor.handle();
        if let Some(v) = w.volume(volume) {
            v.instance = Some(handle);
        }
        w.instances.insert(
            handle,
            Instance {
                _anchor: anchor,
                volume,
                state: InstanceState::Attached,
                context: None,
                stream_contexts: HashMap::new(),
                active: 0,
                posts: HashMap::new(),
            },
        );
        Some((filter_handle, handle, callback, spec))
    });
    let (filter, instance, callback, spec) = prepared?;
    let objects = related_objects(filter, volume, instance, ptr::null());
    let status = callback.map_or(STATUS_SUCCESS, |callback| {
        call_at(PASSIVE_LEVEL, "InstanceSetupCallback", || {
            // SAFETY: the driver's InstanceSetupCallback with valid related objects.
            unsafe {
                callback.call(
                    &raw const objects,
                    flags,
                    spec.file_system.device_type(),
                    spec.file_system.flt_type(),
                )
            }
        })
    });
    if status >= 0 {
        return Some(instance);
    }
    // A refused or failed setup: no instance, and Filter Manager calls no teardown callback.
    crate::context::instance_gone(instance);
    world::with(|w| {
        if let Some(i) = w.instances.get_mut(&instance) {
            i.state = InstanceState::Gone;
        }
    });
    None
}

/// Manual detach (`fltmc detach`): `InstanceQueryTeardown` may refuse. Without that callback the
/// instance cannot be detached manually (`STATUS_FLT_DO_NOT_DETACH`).
pub(crate) fn detach(instance: isize) -> NTSTATUS {
    let found = world::with(|w| {
        let i = w
            .instances
            .get(&instance)
            .filter(|i| i.state == InstanceState::Attached)?;
        let volume = i.volume;
        let filter = w.filter.as_ref()?;
        Some((filter.anchor.handle(), volume, filter.query_teardown))
    });
    let Some((filter, volume, query)) = found else {
        return STATUS_FLT_DO_NOT_DETACH;
    };
    let Some(query) = query else {
        return STATUS_FLT_DO_NOT_DETACH;
    };
    let objects = related_objects(filter, volume, instance, ptr::null());
    let status = call_at(PASSIVE_LEVEL, "InstanceQueryTeardownCallback", || {
        // SAFETY: the driver's InstanceQueryTeardownCallback with valid related objects; flags 0.
        unsafe { query.call(&raw const objects, 0) }
    });
    if status < 0 {
        return status;
    }
    teardown(instance, FLTFL_INSTANCE_TEARDOWN_MANUAL);
    STATUS_SUCCESS
}

/// Tears `instance` down for `reason` (`FLTFL_INSTANCE_TEARDOWN_*`).
pub(crate) fn teardown(instance: isize, reason: u32) {
    let found = world::with(|w| {
        let filter = w.filter.as_ref()?;
        let callbacks = (
            filter.anchor.handle(),
            filter.teardown_start,
            filter.teardown_complete,
        );
        let i = w
            .instances
            .get_mut(&instance)
            .filter(|i| i.state == InstanceState::Attached)?;
        i.state = InstanceState::TearingDown;
        Some((callbacks, i.volume))
    });
    let Some(((filter, start, complete), volume)) = found else {
        return;
    };
    world::notify();
    let objects = related_objects(filter, volume, instance, ptr::null());
    if let Some(start) = start {
        call_at(PASSIVE_LEVEL, "InstanceTeardownStartCallback", || {
            // SAFETY: the driver's InstanceTeardownStartCallback with valid related objects.
            unsafe { start.call(&raw const objects, reason) };
        });
    }
    crate::pause::reach(Point::TeardownStarted(Volume(volume)));
    drain(instance);
    if let Some(complete) = complete {
        call_at(PASSIVE_LEVEL, "InstanceTeardownCompleteCallback", || {
            // SAFETY: the driver's InstanceTeardownCompleteCallback with valid related objects.
            unsafe { complete.call(&raw const objects, reason) };
        });
    }
    crate::objects::wait_for_rundown(instance);
    crate::context::instance_gone(instance);
    world::with(|w| {
        if let Some(i) = w.instances.get_mut(&instance) {
            i.state = InstanceState::Gone;
        }
    });
    world::notify();
}

/// Waits for running callbacks and pended pre-ops of `instance`, then calls every owed post-op
/// with `FLTFL_POST_OPERATION_DRAINING`.
fn drain(instance: isize) {
    let owed = world::wait_for(&Wait::Drain { instance }, |w| {
        let i = w.instances.get_mut(&instance)?;
        if i.active > 0 {
            return None;
        }
        let mut owed = Vec::new();
        for (&data, post) in &mut i.posts {
            if post.state == PostState::Pending {
                post.state = PostState::Draining;
                owed.push((data, *post));
            }
        }
        Some(owed)
    });
    for (data, post) in owed {
        // "`PFLT_POST_OPERATION_CALLBACK` callback function (fltkernel.h)": with
        // FLTFL_POST_OPERATION_DRAINING the post-op "is called at IRQL <= APC_LEVEL".
        let status = call_at(PASSIVE_LEVEL, "PostOperationCallback (draining)", || {
            // SAFETY: the operation's thread waits (PostState::Draining) until this returns, so the
            // callback data and related objects stay valid; the driver's post-op callback.
            unsafe {
                post.post.call(
                    data as *mut FLT_CALLBACK_DATA,
                    post.objects as *const FLT_RELATED_OBJECTS,
                    post.completion_context as *const core::ffi::c_void,
                    FLTFL_POST_OPERATION_DRAINING,
                )
            }
        });
        if status != FLT_POSTOP_FINISHED_PROCESSING {
            violation(format!(
                "fltsim: a post-operation callback called with FLTFL_POST_OPERATION_DRAINING \
                 returned {}: it must return FLT_POSTOP_FINISHED_PROCESSING",
                hex(status)
            ));
        }
        world::with(|w| {
            if let Some(p) = w
                .instances
                .get_mut(&instance)
                .and_then(|i| i.posts.get_mut(&data))
            {
                p.state = PostState::Drained;
            }
        });
        world::notify();
    }
}
