//! The namespace of a simulated file system: its files and directories, their names (hard links),
//! their data streams, a path index, and file IDs made the way each file system makes them.
//!
//! Every lookup is a hash lookup (by path, or by the simulator's own node key), so an operation
//! costs the same whatever the number of files on the volume.
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
//!   the byte offset of the file's directory entry record (DIRENT) on the disk"): the position of
//!   the parent directory's first cluster plus the entry's offset in the directory, as the fastfat
//!   sample's `FatGenerateFileIdFromDirentOffset` computes it; the root is 0. Directory entries are
//!   allocated as the fastfat sample's `FatCreateNewDirent` does (Windows-driver-samples,
//!   `filesys/fastfat/dirsup.c`): a new name takes the never-used entries after the last one used
//!   while the directory's clusters have room; only when they are full does it take the first run
//!   of free (deleted) entries long enough, searching from the lowest deleted entry; then the
//!   directory grows by a cluster, up to 65,536 entries (2 MiB), beyond which the create fails with
//!   `STATUS_CANNOT_MAKE`. So a deleted file's ID comes back only once its directory has filled its
//!   clusters. A name that is not a valid 8.3 name in one case per part takes long-name entries
//!   before its short entry, one per 13 characters (`FatSelectNames`, `FAT_LFN_DIRENTS_NEEDED`), and
//!   its ID is the short entry's position. A rename within a directory that needs as many entries
//!   keeps them (and the ID); any other rename or move takes new entries first and then frees the
//!   old ones (`FatSetRenameInfo` in `fileinfo.c`). Subdirectories begin with `.` and `..`.
//!   exFAT's driver is not published: fltsim gives it the same allocation with exFAT's entry sets
//!   (a file entry, a stream-extension entry and one name entry per 15 characters: "exFAT file
//!   system specification", 7.4, 7.6, 7.7), the ID at the set's first entry, no `.` and `..`, and
//!   directories of up to 256 MiB. Each directory is laid out contiguously and far enough from the
//!   next (2 MiB on FAT, 256 MiB on exFAT) that IDs of different directories never overlap; on a
//!   real volume, whose directories are cluster chains, they can.
//!
//! A node has one or more names ([`Link`]): NTFS hard links ("`FILE_LINK_INFORMATION` structure
//! (ntifs.h)"); every other file system and every directory has exactly one. A file has an unnamed
//! data stream and may have named ones (`file:name`, "File Streams (Local File Systems)"); a
//! directory has no unnamed data stream but may have named ones (MS-FSCC 2.1.4, "Alternate Data
//! Streams"). FAT and exFAT have no named streams. All streams and names of a node share its ID.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::data::Data;
use crate::volume::FileSystem;

/// The simulator's key of a node: stable while the node exists.
pub(crate) type NodeKey = u64;

/// The key of the root directory's node.
pub(crate) const ROOT: NodeKey = 0;

/// A name of a node, stable while the name exists (the first is 0).
pub(crate) type LinkId = u32;

/// The index of a data stream in its node: 0 is the unnamed stream (of a directory: its index).
pub(crate) type StreamIndex = u32;

/// Size of a FAT directory entry.
const DIRENT: u64 = 32;
/// Entries per cluster (4 KiB clusters).
const DIRENTS_PER_CLUSTER: u32 = 128;
/// Most entries a FAT directory may hold (fastfat: 64 Ki entries of 32 bytes).
const FAT_MAX_DIRENTS: u32 = 64 * 1024;
/// Most entries an exFAT directory may hold (256 MiB of 32-byte entries).
const EXFAT_MAX_DIRENTS: u32 = 8 * 1024 * 1024;
/// Byte offset of the first directory cluster of a simulated FAT volume.
const FAT_DATA_START: u64 = 0x10_0000;
/// The first MFT record number fltsim gives a user file (records below are NTFS metadata files).
const FIRST_USER_RECORD: u64 = 0x40;
/// The table number of a `ReFS` volume's root directory.
const REFS_ROOT_TABLE: u64 = 0x600;
/// The first file number in a `ReFS` directory table.
const REFS_FIRST_FILE: u64 = 0x800;
/// Most hard links an NTFS file may have ("`CreateHardLinkW` function (winbase.h)": 1023 links
/// besides the file's first name).
pub(crate) const MAX_LINKS: usize = 1024;

/// Why the namespace refused a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The directory cannot hold another entry (`STATUS_CANNOT_MAKE`).
    DirectoryFull,
}

/// The run of directory entries a FAT or exFAT name occupies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entries {
    first: u32,
    count: u32,
}

/// One name of a node.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    /// The path (case preserved), relative to the volume root.
    pub path: String,
    /// The directory the name is in.
    pub parent: NodeKey,
    /// Deleted (`FileDispositionInformation` on a handle opened by this name): the name goes when
    /// the last handle opened by it closes.
    pub delete_pending: bool,
    /// Handles open by this name.
    pub opens: usize,
    /// The FAT or exFAT directory entries of the name.
    entries: Option<Entries>,
}

/// A named data stream.
#[derive(Clone, Debug)]
pub(crate) struct NamedStream {
    /// The stream's name (case preserved), without `:` or the `:$DATA` type.
    pub name: String,
    /// Its contents.
    pub data: Data,
    /// Deleted by a handle of this stream: it goes when its last handle closes.
    pub delete_pending: bool,
    /// Handles open on this stream.
    pub opens: usize,
}

/// One file or directory.
#[derive(Clone, Debug)]
pub(crate) struct FileNode {
    /// The file system's file ID: 64-bit IDs are zero-extended; `ReFS` uses all 128 bits.
    pub id: u128,
    /// Whether it is a directory.
    pub directory: bool,
    /// The unnamed data stream (empty for a directory).
    pub data: Data,
    /// The node's names, by link ID; never empty while the node exists.
    links: BTreeMap<LinkId, Link>,
    next_link: LinkId,
    /// Named data streams, by stream index (from 1).
    streams: BTreeMap<StreamIndex, NamedStream>,
    next_stream: StreamIndex,
    /// Whether the file system allocated the ID (not chosen by a test), so it can be recycled.
    allocated: bool,
    /// Allocation state of a directory's entries and IDs.
    dir: Option<Box<DirState>>,
}

impl FileNode {
    /// The node's first name (the one fltsim reports when a name is needed without a handle).
    pub(crate) fn path(&self) -> &str {
        self.links.values().next().map_or("", |l| l.path.as_str())
    }

    /// The name `link`, if it exists.
    pub(crate) fn link(&self, link: LinkId) -> Option<&Link> {
        self.links.get(&link)
    }

    /// The name `link`, to change it.
    pub(crate) fn link_mut(&mut self, link: LinkId) -> Option<&mut Link> {
        self.links.get_mut(&link)
    }

    /// Every name of the node.
    pub(crate) fn links(&self) -> impl Iterator<Item = (LinkId, &Link)> {
        self.links.iter().map(|(id, link)| (*id, link))
    }

    /// How many names the node has (`FILE_STANDARD_INFORMATION.NumberOfLinks`).
    pub(crate) fn link_count(&self) -> usize {
        self.links.len()
    }

    /// The named stream `name` (compared case-insensitively), if the node has it.
    pub(crate) fn stream_index(&self, name: &str) -> Option<StreamIndex> {
        let key = path_key(name);
        self.streams
            .iter()
            .find(|(_, s)| path_key(&s.name) == key)
            .map(|(index, _)| *index)
    }

    /// The named stream `index`.
    pub(crate) fn stream(&self, index: StreamIndex) -> Option<&NamedStream> {
        self.streams.get(&index)
    }

    /// The named stream `index`, to change it.
    pub(crate) fn stream_mut(&mut self, index: StreamIndex) -> Option<&mut NamedStream> {
        self.streams.get_mut(&index)
    }

    /// The named streams, in the order they were made.
    pub(crate) fn streams(&self) -> impl Iterator<Item = (StreamIndex, &NamedStream)> {
        self.streams.iter().map(|(index, s)| (*index, s))
    }

    /// Adds an empty named stream `name`; returns its index.
    pub(crate) fn add_stream(&mut self, name: &str) -> StreamIndex {
        self.next_stream += 1;
        self.streams.insert(
            self.next_stream,
            NamedStream {
                name: name.to_owned(),
                data: Data::empty(),
                delete_pending: false,
                opens: 0,
            },
        );
        self.next_stream
    }

    /// Removes the named stream `index`.
    pub(crate) fn remove_stream(&mut self, index: StreamIndex) {
        self.streams.remove(&index);
    }

    /// The data of stream `index` (0: the unnamed stream).
    pub(crate) fn data_of(&self, index: StreamIndex) -> Option<&Data> {
        if index == 0 {
            return Some(&self.data);
        }
        self.streams.get(&index).map(|s| &s.data)
    }

    /// The data of stream `index`, to change it.
    pub(crate) fn data_of_mut(&mut self, index: StreamIndex) -> Option<&mut Data> {
        if index == 0 {
            return Some(&mut self.data);
        }
        self.streams.get_mut(&index).map(|s| &mut s.data)
    }
}

/// What a directory needs to hand out IDs to the files created in it.
#[derive(Clone, Debug, Default)]
struct DirState {
    /// FAT: byte position of the directory's first cluster.
    fat_base: u64,
    /// FAT: entries the directory's clusters hold.
    allocated: u32,
    /// FAT: the first entry never used (fastfat's `UnusedDirentVbo`, in entries).
    unused: u32,
    /// FAT: where the search for deleted entries starts (fastfat's `DeletedDirentHint`).
    deleted_hint: u32,
    /// FAT: entries in use, one bit each (fastfat's `FreeDirentBitmap`).
    in_use: Vec<u64>,
    /// `ReFS`: the directory's table number.
    refs_table: u64,
    /// `ReFS`: the next file number in the table.
    refs_next: u64,
}

impl DirState {
    fn is_used(&self, entry: u32) -> bool {
        self.in_use
            .get(entry as usize / 64)
            .is_some_and(|word| word & (1 << (entry % 64)) != 0)
    }

    fn mark(&mut self, run: Entries, used: bool) {
        for entry in run.first..run.first + run.count {
            let word = entry as usize / 64;
            if self.in_use.len() <= word {
                self.in_use.resize(word + 1, 0);
            }
            if used {
                self.in_use[word] |= 1 << (entry % 64);
            } else {
                self.in_use[word] &= !(1 << (entry % 64));
            }
        }
    }

    /// The first run of `count` free entries within `[from, to)`.
    fn find_free(&self, count: u32, from: u32, to: u32) -> Option<u32> {
        let mut start = from;
        let mut entry = from;
        while entry < to {
            if self.is_used(entry) {
                start = entry + 1;
            } else if entry + 1 - start == count {
                return Some(start);
            }
            entry += 1;
        }
        None
    }

    /// Takes `count` entries for a new name, as fastfat's `FatCreateNewDirent` does; `None` if the
    /// directory already holds `max` entries.
    fn allocate(&mut self, count: u32, max: u32) -> Option<Entries> {
        let first = if self.unused + count <= self.allocated {
            let first = self.unused;
            self.unused += count;
            first
        } else if let Some(first) = self
            .find_free(count, self.deleted_hint, self.allocated)
            .or_else(|| self.find_free(count, 0, self.allocated))
        {
            // RtlFindClearBits searches from the hint to the end, then from the start.
            if first == self.deleted_hint {
                self.deleted_hint += count;
            }
            self.unused = self.unused.max(first + count);
            first
        } else {
            if self.allocated >= max || self.unused + count > max {
                return None;
            }
            let first = self.unused;
            self.unused += count;
            self.allocated = self.unused.div_ceil(DIRENTS_PER_CLUSTER) * DIRENTS_PER_CLUSTER;
            first
        };
        let run = Entries { first, count };
        self.mark(run, true);
        Some(run)
    }

    /// Frees a name's entries (`FatDeleteDirent`): the hint moves back to them if its short entry
    /// (`id_entry`) lies before it.
    fn free(&mut self, run: Entries, id_entry: u32) {
        self.mark(run, false);
        if id_entry < self.deleted_hint {
            self.deleted_hint = run.first;
        }
    }
}

/// A volume's files and directories.
pub(crate) struct Namespace {
    file_system: FileSystem,
    nodes: HashMap<NodeKey, FileNode>,
    /// Upper-cased path → the node and the name of it at that path (names compare
    /// case-insensitively).
    paths: HashMap<String, (NodeKey, LinkId)>,
    /// The names in each directory that has any.
    children: HashMap<NodeKey, HashSet<(NodeKey, LinkId)>>,
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

/// The last component of `path`.
pub(crate) fn final_component(path: &str) -> &str {
    path.rsplit('\\').next().unwrap_or(path)
}

/// Characters a FAT short (8.3) name may hold besides letters and digits (the fastfat sample's
/// `FatIsNameShortOemValid`, ASCII only: any other character, a space included, needs a long name).
const SHORT_NAME_PUNCTUATION: &str = "$%'-_@~`!(){}^#&";

/// Whether fastfat must write long-name entries for `name` (`FatSelectNames`): it is not a valid
/// 8.3 name (1 to 8 characters, optionally a dot and 1 to 3 more), or one part mixes upper and
/// lower case (a part entirely in lower case is recorded in the short entry's case flags).
fn needs_long_name(name: &str) -> bool {
    let (base, extension) = match name.split_once('.') {
        Some((base, extension)) => (base, Some(extension)),
        None => (name, None),
    };
    let valid = |part: &str, max: usize| {
        !part.is_empty()
            && part.len() <= max
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || SHORT_NAME_PUNCTUATION.contains(c))
    };
    let one_case = |part: &str| {
        !(part.chars().any(|c| c.is_ascii_lowercase())
            && part.chars().any(|c| c.is_ascii_uppercase()))
    };
    let short = valid(base, 8) && extension.is_none_or(|e| valid(e, 3));
    !short || !one_case(base) || !extension.is_none_or(one_case)
}

impl Namespace {
    /// An empty volume of `file_system`.
    pub(crate) fn new(file_system: FileSystem) -> Self {
        let root = DirState {
            fat_base: FAT_DATA_START,
            allocated: DIRENTS_PER_CLUSTER,
            refs_table: REFS_ROOT_TABLE,
            refs_next: REFS_FIRST_FILE,
            ..DirState::default()
        };
        // The root directory's node: it has no parent and no entry, and it is never removed.
        let root_id = match file_system {
            // NTFS: MFT record 5, sequence number 5.
            FileSystem::Ntfs | FileSystem::Cdfs | FileSystem::Network => (5 << 48) | 5,
            FileSystem::Refs => u128::from(REFS_ROOT_TABLE) << 64,
            FileSystem::Fat | FileSystem::ExFat => 0,
        };
        let root_node = FileNode {
            id: root_id,
            directory: true,
            data: Data::empty(),
            links: BTreeMap::from([(
                0,
                Link {
                    path: "\\".to_owned(),
                    parent: ROOT,
                    delete_pending: false,
                    opens: 0,
                    entries: None,
                },
            )]),
            next_link: 1,
            streams: BTreeMap::new(),
            next_stream: 0,
            allocated: false,
            dir: None,
        };
        Self {
            file_system,
            nodes: HashMap::from([(ROOT, root_node)]),
            paths: HashMap::new(),
            children: HashMap::new(),
            root,
            next_key: ROOT + 1,
            free_records: BTreeSet::new(),
            next_record: FIRST_USER_RECORD,
            sequences: HashMap::new(),
            next_fat_directory: FAT_DATA_START + Self::directory_span(file_system),
            next_refs_table: REFS_ROOT_TABLE + 1,
        }
    }

    /// How far apart fltsim lays out FAT or exFAT directories: room for the most entries one holds.
    fn directory_span(file_system: FileSystem) -> u64 {
        let max = if file_system == FileSystem::ExFat {
            EXFAT_MAX_DIRENTS
        } else {
            FAT_MAX_DIRENTS
        };
        u64::from(max) * DIRENT
    }

    /// The node at `path`, and which of its names that is.
    pub(crate) fn lookup_link(&self, path: &str) -> Option<(NodeKey, LinkId)> {
        self.paths.get(&path_key(path)).copied()
    }

    /// The node at `path`.
    pub(crate) fn lookup(&self, path: &str) -> Option<NodeKey> {
        self.lookup_link(path).map(|(key, _)| key)
    }

    /// The node with key `key`.
    pub(crate) fn node(&self, key: NodeKey) -> Option<&FileNode> {
        self.nodes.get(&key)
    }

    /// The node with key `key`, to change it.
    pub(crate) fn node_mut(&mut self, key: NodeKey) -> Option<&mut FileNode> {
        self.nodes.get_mut(&key)
    }

    /// The node at `path`.
    pub(crate) fn get(&self, path: &str) -> Option<&FileNode> {
        self.node(self.lookup(path)?)
    }

    /// Every node but the root's, in no particular order.
    pub(crate) fn nodes(&self) -> impl Iterator<Item = &FileNode> {
        self.nodes
            .iter()
            .filter(|(key, _)| **key != ROOT)
            .map(|(_, node)| node)
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

    /// Whether the file system has named streams.
    pub(crate) fn has_named_streams(&self) -> bool {
        self.file_system.has_named_streams()
    }

    /// A stream of `size` generated bytes for the next node (test setup), seeded by the node's key
    /// so that the same setup always gives the same data.
    pub(crate) fn generated(&self, size: u64) -> Data {
        Data::generated(
            size,
            self.next_key.wrapping_mul(0xA24B_AED4_963E_E407) ^ size,
        )
    }

    /// Creates a file or directory at `path` in `parent` (which must exist; `path` must not), with
    /// `data` as its unnamed stream and the file system's next ID unless `id` is given. Returns the
    /// new node's key.
    ///
    /// # Errors
    /// [`Refusal::DirectoryFull`] if a FAT or exFAT directory has no room for the name.
    pub(crate) fn insert(
        &mut self,
        path: &str,
        parent: NodeKey,
        data: Data,
        directory: bool,
        id: Option<u128>,
    ) -> Result<NodeKey, Refusal> {
        let entries = self.take_entries(parent, final_component(path))?;
        let key = self.next_key;
        self.next_key += 1;
        let allocated = id.is_none();
        let id = id.unwrap_or_else(|| self.new_id(parent, entries));
        let dir = directory.then(|| Box::new(self.new_directory()));
        let link = Link {
            path: path.to_owned(),
            parent,
            delete_pending: false,
            opens: 0,
            entries,
        };
        self.nodes.insert(
            key,
            FileNode {
                id,
                directory,
                data: if directory { Data::empty() } else { data },
                links: BTreeMap::from([(0, link)]),
                next_link: 1,
                streams: BTreeMap::new(),
                next_stream: 0,
                allocated,
                dir,
            },
        );
        self.paths.insert(path_key(path), (key, 0));
        self.children.entry(parent).or_default().insert((key, 0));
        Ok(key)
    }

    /// Gives node `key` another name, `path` in `parent` (NTFS hard links; `path` must be free).
    pub(crate) fn add_link(&mut self, key: NodeKey, path: &str, parent: NodeKey) -> Option<LinkId> {
        let node = self.nodes.get_mut(&key)?;
        let link = node.next_link;
        node.next_link += 1;
        node.links.insert(
            link,
            Link {
                path: path.to_owned(),
                parent,
                delete_pending: false,
                opens: 0,
                entries: None,
            },
        );
        self.paths.insert(path_key(path), (key, link));
        self.children.entry(parent).or_default().insert((key, link));
        Some(link)
    }

    /// Whether directory `key` holds anything.
    pub(crate) fn has_children(&self, key: NodeKey) -> bool {
        self.children.get(&key).is_some_and(|c| !c.is_empty())
    }

    /// Removes the name `link` of node `key`; the node goes with its last name. Its FAT directory
    /// entries are freed for later names; an NTFS record freed with the node gets the next sequence
    /// number when reused.
    pub(crate) fn remove_link(&mut self, key: NodeKey, link: LinkId) {
        let Some(node) = self.nodes.get_mut(&key) else {
            return;
        };
        let Some(name) = node.links.remove(&link) else {
            return;
        };
        let last = node.links.is_empty();
        self.unname(key, link, &name);
        if last {
            self.forget_node(key);
        }
    }

    /// Drops a removed name from the indexes and frees its directory entries.
    fn unname(&mut self, key: NodeKey, link: LinkId, name: &Link) {
        self.paths.remove(&path_key(&name.path));
        if let Some(siblings) = self.children.get_mut(&name.parent) {
            siblings.remove(&(key, link));
        }
        if let Some(entries) = name.entries {
            self.free_entries(name.parent, entries);
        }
    }

    /// Drops a node whose last name went; NTFS recycles its record.
    fn forget_node(&mut self, key: NodeKey) {
        let Some(node) = self.nodes.remove(&key) else {
            return;
        };
        self.children.remove(&key);
        if node.allocated && !self.is_fat() && self.file_system != FileSystem::Refs {
            let record = u64::try_from(node.id & 0xFFFF_FFFF_FFFF).unwrap_or(0);
            let sequence = u16::try_from(node.id >> 48).unwrap_or(u16::MAX);
            // NTFS skips sequence number 0 when it wraps.
            self.sequences
                .insert(record, sequence.checked_add(1).unwrap_or(1));
            self.free_records.insert(record);
        }
    }

    /// Renames the name `link` of node `key` to `new_path` in `new_parent`, removing the name
    /// `replacing` first if given (`new_path` must otherwise be free). On FAT and exFAT the name
    /// gets new directory entries, hence the node a new ID, unless it stays in its directory and
    /// needs as many entries; fastfat takes the new entries before it frees the old ones and the
    /// replaced name's. A directory's contents move with it (their paths change, their IDs do not).
    ///
    /// # Errors
    /// [`Refusal::DirectoryFull`] if the target directory has no room (nothing changed).
    pub(crate) fn rename(
        &mut self,
        key: NodeKey,
        link: LinkId,
        new_path: &str,
        new_parent: NodeKey,
        replacing: Option<(NodeKey, LinkId)>,
    ) -> Result<(), Refusal> {
        let Some(old) = self
            .nodes
            .get(&key)
            .and_then(|n| n.links.get(&link))
            .cloned()
        else {
            return Ok(());
        };
        let mut freed = None;
        if let Some(old_entries) = old.entries {
            let needed = self.entries_needed(final_component(new_path));
            if old.parent != new_parent || needed != old_entries.count {
                let entries = self.take_entries(new_parent, final_component(new_path))?;
                freed = Some(old_entries);
                let id = self.new_id(new_parent, entries);
                if let Some(node) = self.nodes.get_mut(&key) {
                    node.id = id;
                    if let Some(name) = node.links.get_mut(&link) {
                        name.entries = entries;
                    }
                }
            }
        }
        if let Some(old_entries) = freed {
            self.free_entries(old.parent, old_entries);
        }
        if let Some((target, target_link)) = replacing {
            self.remove_link(target, target_link);
        }
        if let Some(siblings) = self.children.get_mut(&old.parent) {
            siblings.remove(&(key, link));
        }
        self.children
            .entry(new_parent)
            .or_default()
            .insert((key, link));
        if let Some(name) = self
            .nodes
            .get_mut(&key)
            .and_then(|n| n.links.get_mut(&link))
        {
            name.parent = new_parent;
        }
        let mut moving = vec![(key, link)];
        while let Some((node_key, link_id)) = moving.pop() {
            let Some(name) = self
                .nodes
                .get_mut(&node_key)
                .and_then(|n| n.links.get_mut(&link_id))
            else {
                continue;
            };
            self.paths.remove(&path_key(&name.path));
            name.path = format!("{new_path}{}", &name.path[old.path.len()..]);
            self.paths.insert(path_key(&name.path), (node_key, link_id));
            moving.extend(self.children.get(&node_key).into_iter().flatten());
        }
        Ok(())
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

    /// The directory entries a name takes on FAT (a short entry, after long-name entries of 13
    /// characters each when needed) or exFAT (a file, a stream-extension and a name entry per 15
    /// characters).
    fn entries_needed(&self, name: &str) -> u32 {
        let units = u32::try_from(name.encode_utf16().count()).unwrap_or(u32::MAX);
        if self.file_system == FileSystem::ExFat {
            2 + units.div_ceil(15)
        } else if needs_long_name(name) {
            1 + units.div_ceil(13)
        } else {
            1
        }
    }

    /// Takes directory entries in `parent` for a name `name` (FAT and exFAT; `None` elsewhere).
    fn take_entries(&mut self, parent: NodeKey, name: &str) -> Result<Option<Entries>, Refusal> {
        if !self.is_fat() {
            return Ok(None);
        }
        let count = self.entries_needed(name);
        let max = if self.file_system == FileSystem::ExFat {
            EXFAT_MAX_DIRENTS
        } else {
            FAT_MAX_DIRENTS
        };
        let Some(dir) = self.dir_state(parent) else {
            return Ok(None);
        };
        dir.allocate(count, max)
            .map(Some)
            .ok_or(Refusal::DirectoryFull)
    }

    /// The entry whose position is a name's ID: FAT's short entry (the run's last), exFAT's file
    /// entry (the run's first).
    fn id_entry(&self, entries: Entries) -> u32 {
        if self.file_system == FileSystem::ExFat {
            entries.first
        } else {
            entries.first + entries.count - 1
        }
    }

    fn free_entries(&mut self, parent: NodeKey, entries: Entries) {
        let id_entry = self.id_entry(entries);
        if let Some(dir) = self.dir_state(parent) {
            dir.free(entries, id_entry);
        }
    }

    /// Allocation state for a new directory.
    fn new_directory(&mut self) -> DirState {
        let fat_base = self.next_fat_directory;
        self.next_fat_directory += Self::directory_span(self.file_system);
        let refs_table = self.next_refs_table;
        self.next_refs_table += 1;
        let mut dir = DirState {
            fat_base,
            allocated: DIRENTS_PER_CLUSTER,
            refs_table,
            refs_next: REFS_FIRST_FILE,
            ..DirState::default()
        };
        if self.file_system == FileSystem::Fat {
            // "." and ".." take the first two entries of every FAT directory but the root.
            dir.mark(Entries { first: 0, count: 2 }, true);
            dir.unused = 2;
            dir.deleted_hint = 2;
        }
        dir
    }

    /// The ID of a new file in `parent` whose name took `entries` (FAT and exFAT).
    fn new_id(&mut self, parent: NodeKey, entries: Option<Entries>) -> u128 {
        match self.file_system {
            FileSystem::Fat | FileSystem::ExFat => {
                let Some(entries) = entries else {
                    return 0;
                };
                let entry = self.id_entry(entries);
                let base = self.dir_state(parent).map_or(0, |d| d.fat_base);
                u128::from(base + u64::from(entry) * DIRENT)
            }
            FileSystem::Refs => {
                let Some(dir) = self.dir_state(parent) else {
                    return 0;
                };
                let number = dir.refs_next;
                dir.refs_next += 1;
                (u128::from(dir.refs_table) << 64) | u128::from(number)
            }
            _ => {
                let record = self.free_records.pop_first().unwrap_or_else(|| {
                    self.next_record += 1;
                    self.next_record - 1
                });
                let sequence = self.sequences.get(&record).copied().unwrap_or(1);
                u128::from((u64::from(sequence) << 48) | record)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::needs_long_name;

    #[test]
    fn short_names_need_no_long_name_entries() {
        for name in [
            "A.TXT",
            "readme.md",
            "NEW.log",
            "x",
            "FILE0001.BIN",
            "a$b.c~",
        ] {
            assert!(!needs_long_name(name), "{name}");
        }
        for name in [
            "ReadMe.txt",
            "long-name.txt",
            "a.html",
            "with space",
            "a.b.c",
            ".hidden",
            "caf\u{e9}",
            "a+b",
        ] {
            assert!(needs_long_name(name), "{name}");
        }
    }
}
