//! The namespace of a simulated file system: its files and directories, a path index, and file IDs
//! made the way each file system makes them.
//!
//! Every lookup is a hash lookup (by path, by the simulator's own node key, or by file ID), so an
//! operation costs the same whatever the number of files on the volume.
//!
//! A node has a *key* (the simulator's, stable for the node's life, never shown to a driver) and an
//! *ID* (the file system's: what `FileInternalInformation` and `FileIdInformation` report), which
//! some file systems change:
//! - **NTFS**: a file reference number, the MFT record number in the low 48 bits and the record's
//!   sequence number in the high 16. A deleted file's record is reused by a later file, with the
//!   sequence number incremented, so an ID is never handed out twice (`FILE_INTERNAL_INFORMATION
//!   structure (ntifs.h)`: file reference numbers are unique only within a static file system).
//! - **`ReFS`**: 128-bit IDs, the upper 64 bits naming the directory table the file was created in
//!   and the lower 64 its number there. fltsim keeps them across renames and moves and never reuses
//!   them; files in different directories can share the lower 64 bits, which is all that
//!   `FileInternalInformation` reports.
//! - **FAT and exFAT**: the byte offset of the file's directory entry (`FILE_INTERNAL_INFORMATION
//!   structure (ntifs.h)`: "the FAT file system generates the file reference number for a file from
//!   the byte offset of the file's directory entry record (DIRENT) on the disk"), as fastfat's
//!   `FatGenerateFileIdFromDirentOffset` computes it: the position of the parent directory's first
//!   cluster plus the entry's offset in the directory; the root is 0. A move gives the file a new
//!   entry, so a new ID, and the next file created in the parent takes the lowest free entry, so a
//!   deleted or moved file's ID comes back. fltsim gives each name one 32-byte entry (fastfat writes
//!   long-name entries before it, which only shifts offsets) and lays each directory out
//!   contiguously, 2 MiB apart (a FAT directory holds at most 65,536 entries), so IDs of different
//!   directories never overlap.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::volume::FileSystem;

/// The simulator's key of a node: stable while the node exists.
pub(crate) type NodeKey = u64;

/// The key of the root directory (the root has no node of its own).
pub(crate) const ROOT: NodeKey = 0;

/// Size of a FAT directory entry.
const DIRENT: u64 = 32;
/// Where fltsim places a FAT directory's first cluster: directories are this far apart.
const FAT_DIRECTORY_SPAN: u64 = 2 << 20;
/// Byte offset of the first directory cluster of a simulated FAT volume.
const FAT_DATA_START: u64 = 0x10_0000;
/// The first MFT record number fltsim gives a user file (records below are NTFS metadata files).
const FIRST_USER_RECORD: u64 = 0x40;
/// The table number of a `ReFS` volume's root directory.
const REFS_ROOT_TABLE: u64 = 0x600;
/// The first file number in a `ReFS` directory table.
const REFS_FIRST_FILE: u64 = 0x800;

/// One file or directory.
#[derive(Clone, Debug)]
pub(crate) struct FileNode {
    /// The path as created or last renamed (case preserved), relative to the volume root.
    pub path: String,
    /// The file system's file ID: 64-bit IDs are zero-extended; `ReFS` uses all 128 bits.
    pub id: u128,
    /// End of file.
    pub size: u64,
    /// Whether it is a directory.
    pub directory: bool,
    /// The parent directory.
    pub parent: NodeKey,
    /// Deleted (`FileDispositionInformation`): the name goes when the last handle closes.
    pub delete_pending: bool,
    /// The FAT directory entry the node's name occupies in its parent.
    slot: Option<u32>,
    /// Whether the file system allocated the ID (not chosen by a test), so it can be recycled.
    allocated: bool,
    /// Allocation state of a directory's entries and IDs.
    dir: Option<Box<DirState>>,
}

/// What a directory needs to hand out IDs to the files created in it.
#[derive(Clone, Debug, Default)]
struct DirState {
    /// FAT: byte position of the directory's first cluster.
    fat_base: u64,
    /// FAT: the next never-used entry.
    next_slot: u32,
    /// FAT: entries freed by deletes and moves, reused lowest first.
    free_slots: BTreeSet<u32>,
    /// `ReFS`: the directory's table number.
    refs_table: u64,
    /// `ReFS`: the next file number in the table.
    refs_next: u64,
}

/// A volume's files and directories.
pub(crate) struct Namespace {
    file_system: FileSystem,
    nodes: HashMap<NodeKey, FileNode>,
    /// Upper-cased path → node (names compare case-insensitively).
    paths: HashMap<String, NodeKey>,
    /// The nodes in each directory that has any.
    children: HashMap<NodeKey, HashSet<NodeKey>>,
    /// The root directory's allocation state.
    root: DirState,
    next_key: NodeKey,
    /// NTFS: MFT records freed by deletes, reused lowest first.
    free_records: BTreeSet<u64>,
    /// NTFS: the next never-used MFT record.
    next_record: u64,
    /// NTFS: the sequence number of records that were used before (absent: 1).
    sequences: HashMap<u64, u16>,
    /// FAT: the next directory's first-cluster position.
    next_fat_directory: u64,
    /// `ReFS`: the next directory table number.
    next_refs_table: u64,
}

/// The upper-cased key of `path` (names compare case-insensitively).
pub(crate) fn path_key(path: &str) -> String {
    path.to_uppercase()
}

/// The parent directory of `path` (`\` for top-level names).
pub(crate) fn parent_of(path: &str) -> &str {
    match path.rfind('\\') {
        Some(0) | None => "\\",
        Some(index) => &path[..index],
    }
}

impl Namespace {
    /// An empty volume of `file_system`.
    pub(crate) fn new(file_system: FileSystem) -> Self {
        Self {
            file_system,
            nodes: HashMap::new(),
            paths: HashMap::new(),
            children: HashMap::new(),
            root: DirState {
                fat_base: FAT_DATA_START,
                refs_table: REFS_ROOT_TABLE,
                refs_next: REFS_FIRST_FILE,
                ..DirState::default()
            },
            next_key: ROOT + 1,
            free_records: BTreeSet::new(),
            next_record: FIRST_USER_RECORD,
            sequences: HashMap::new(),
            next_fat_directory: FAT_DATA_START + FAT_DIRECTORY_SPAN,
            next_refs_table: REFS_ROOT_TABLE + 1,
        }
    }

    /// The node at `path`.
    pub(crate) fn lookup(&self, path: &str) -> Option<NodeKey> {
        self.paths.get(&path_key(path)).copied()
    }

    /// The node with key `key`.
    pub(crate) fn node(&self, key: NodeKey) -> Option<&FileNode> {
        self.nodes.get(&key)
    }

    /// The node with key `key`, to change its size.
    pub(crate) fn node_mut(&mut self, key: NodeKey) -> Option<&mut FileNode> {
        self.nodes.get_mut(&key)
    }

    /// The node at `path`.
    pub(crate) fn get(&self, path: &str) -> Option<&FileNode> {
        self.node(self.lookup(path)?)
    }

    /// The directory that `path` would be created in, if it exists.
    pub(crate) fn parent_directory(&self, path: &str) -> Option<NodeKey> {
        let dir = parent_of(path);
        if dir == "\\" {
            return Some(ROOT);
        }
        let key = self.lookup(dir)?;
        self.nodes[&key].directory.then_some(key)
    }

    /// Creates a file or directory at `path` in `parent` (which must exist; `path` must not),
    /// with the file system's next ID unless `id` is given. Returns the new node's key.
    pub(crate) fn insert(
        &mut self,
        path: &str,
        parent: NodeKey,
        size: u64,
        directory: bool,
        id: Option<u128>,
    ) -> NodeKey {
        let key = self.next_key;
        self.next_key += 1;
        let allocated = id.is_none();
        let (id, slot) = match id {
            Some(id) => (id, None),
            None => self.new_id(parent),
        };
        let dir = directory.then(|| Box::new(self.new_directory()));
        self.nodes.insert(
            key,
            FileNode {
                path: path.to_owned(),
                id,
                size,
                directory,
                parent,
                delete_pending: false,
                slot,
                allocated,
                dir,
            },
        );
        self.paths.insert(path_key(path), key);
        self.children.entry(parent).or_default().insert(key);
        key
    }

    /// Whether directory `key` holds anything.
    pub(crate) fn has_children(&self, key: NodeKey) -> bool {
        self.children.get(&key).is_some_and(|c| !c.is_empty())
    }

    /// Removes the node at `key` (a deleted file whose last handle closed, or a directory with
    /// nothing in it). Its FAT directory entry is freed for the next file; its NTFS record is freed
    /// too, and gets the next sequence number when reused.
    pub(crate) fn remove(&mut self, key: NodeKey) {
        let Some(node) = self.nodes.remove(&key) else {
            return;
        };
        self.paths.remove(&path_key(&node.path));
        if let Some(siblings) = self.children.get_mut(&node.parent) {
            siblings.remove(&key);
        }
        self.children.remove(&key);
        if let Some(slot) = node.slot {
            self.free_slot(node.parent, slot);
        }
        if node.allocated && !self.is_fat() && self.file_system != FileSystem::Refs {
            let record = u64::try_from(node.id & 0xFFFF_FFFF_FFFF).unwrap_or(0);
            let sequence = u16::try_from(node.id >> 48).unwrap_or(u16::MAX);
            // NTFS skips sequence number 0 when it wraps.
            self.sequences
                .insert(record, sequence.checked_add(1).unwrap_or(1));
            self.free_records.insert(record);
        }
    }

    /// Renames the node at `key` to `new_path` in `new_parent` (`new_path` must be free). On FAT
    /// and exFAT the node gets a new directory entry, hence a new ID, and its old entry is freed. A
    /// directory's contents move with it (their paths change, their IDs do not).
    pub(crate) fn rename(&mut self, key: NodeKey, new_path: &str, new_parent: NodeKey) {
        let Some((old_path, old_parent, old_slot)) = self
            .nodes
            .get(&key)
            .map(|n| (n.path.clone(), n.parent, n.slot))
        else {
            return;
        };
        if self.is_fat()
            && let Some(slot) = old_slot
        {
            self.free_slot(old_parent, slot);
            let (id, slot) = self.new_id(new_parent);
            if let Some(node) = self.nodes.get_mut(&key) {
                node.id = id;
                node.slot = slot;
            }
        }
        if let Some(siblings) = self.children.get_mut(&old_parent) {
            siblings.remove(&key);
        }
        self.children.entry(new_parent).or_default().insert(key);
        if let Some(node) = self.nodes.get_mut(&key) {
            node.parent = new_parent;
        }
        let mut moving = vec![key];
        while let Some(node_key) = moving.pop() {
            let Some(node) = self.nodes.get_mut(&node_key) else {
                continue;
            };
            self.paths.remove(&path_key(&node.path));
            node.path = format!("{new_path}{}", &node.path[old_path.len()..]);
            self.paths.insert(path_key(&node.path), node_key);
            moving.extend(self.children.get(&node_key).into_iter().flatten());
        }
    }

    fn is_fat(&self) -> bool {
        matches!(self.file_system, FileSystem::Fat | FileSystem::ExFat)
    }

    fn dir_state(&mut self, key: NodeKey) -> Option<&mut DirState> {
        if key == ROOT {
            return Some(&mut self.root);
        }
        self.nodes.get_mut(&key)?.dir.as_deref_mut()
    }

    fn free_slot(&mut self, parent: NodeKey, slot: u32) {
        if let Some(dir) = self.dir_state(parent) {
            dir.free_slots.insert(slot);
        }
    }

    /// Allocation state for a new directory.
    fn new_directory(&mut self) -> DirState {
        let fat_base = self.next_fat_directory;
        self.next_fat_directory += FAT_DIRECTORY_SPAN;
        let refs_table = self.next_refs_table;
        self.next_refs_table += 1;
        DirState {
            fat_base,
            // "." and ".." take the first two entries of every directory but the root.
            next_slot: 2,
            free_slots: BTreeSet::new(),
            refs_table,
            refs_next: REFS_FIRST_FILE,
        }
    }

    /// The ID of a new file in `parent`, and the FAT directory entry it takes.
    fn new_id(&mut self, parent: NodeKey) -> (u128, Option<u32>) {
        match self.file_system {
            FileSystem::Fat | FileSystem::ExFat => {
                let Some(dir) = self.dir_state(parent) else {
                    return (0, None);
                };
                let slot = dir.free_slots.pop_first().unwrap_or_else(|| {
                    dir.next_slot += 1;
                    dir.next_slot - 1
                });
                let id = dir.fat_base + u64::from(slot) * DIRENT;
                (u128::from(id), Some(slot))
            }
            FileSystem::Refs => {
                let Some(dir) = self.dir_state(parent) else {
                    return (0, None);
                };
                let number = dir.refs_next;
                dir.refs_next += 1;
                (
                    (u128::from(dir.refs_table) << 64) | u128::from(number),
                    None,
                )
            }
            _ => {
                let record = self.free_records.pop_first().unwrap_or_else(|| {
                    self.next_record += 1;
                    self.next_record - 1
                });
                let sequence = self.sequences.get(&record).copied().unwrap_or(1);
                (u128::from((u64::from(sequence) << 48) | record), None)
            }
        }
    }
}
