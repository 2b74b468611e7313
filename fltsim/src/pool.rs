//! Simulated pool: `ExAllocatePool2` / `ExFreePoolWithTag` with accounting by tag.

use std::collections::HashMap;
use std::sync::Mutex;

/// `POOL_FLAG_NON_PAGED` (wdm.h; windows-sys does not carry the `POOL_FLAG_*` values).
pub const POOL_FLAG_NON_PAGED: u64 = 0x40;
/// `POOL_FLAG_PAGED` (wdm.h; windows-sys does not carry the `POOL_FLAG_*` values).
pub const POOL_FLAG_PAGED: u64 = 0x100;

/// One live allocation.
struct Block {
    tag: u32,
    size: usize,
    paged: bool,
}

/// Live allocations by address.
static LIVE: Mutex<Option<HashMap<usize, Block>>> = Mutex::new(None);

/// Forgets every allocation: called when a new [`crate::Sim`] starts.
pub(crate) fn reset() {
    *LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(HashMap::new());
}

/// Outstanding allocations per tag: `(tag, bytes, count)`, sorted by tag.
#[must_use]
pub fn outstanding() -> Vec<(u32, usize, usize)> {
    let live = LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut by_tag: HashMap<u32, (usize, usize)> = HashMap::new();
    for block in live.iter().flat_map(HashMap::values) {
        let entry = by_tag.entry(block.tag).or_default();
        entry.0 += block.size;
        entry.1 += 1;
    }
    let mut rows: Vec<_> = by_tag.into_iter().map(|(t, (b, c))| (t, b, c)).collect();
    rows.sort_unstable();
    rows
}

/// Whether `flags` ask for paged pool.
#[must_use]
pub fn is_paged(flags: u64) -> bool {
    flags & POOL_FLAG_PAGED != 0 && flags & POOL_FLAG_NON_PAGED == 0
}
