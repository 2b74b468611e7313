//! What a volume holds, as a value: every file and directory with its names, ID, streams and data
//! ([`crate::Sim::snapshot`]), so that two runs of one workload can be compared to the byte.

use crate::Sim;
use crate::volume::Volume;
use crate::world;

/// One data stream of a file or directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamState {
    /// The stream's name: empty for the unnamed stream.
    pub name: String,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// One file or directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileState {
    /// Its names (several for an NTFS file with hard links), sorted.
    pub names: Vec<String>,
    /// Its file ID (as `FileIdInformation` or `FileInternalInformation` would give it).
    pub id: u128,
    /// Whether it is a directory.
    pub directory: bool,
    /// Its data streams: the unnamed one first (files only), then the named ones by name.
    pub streams: Vec<StreamState>,
}

/// Every file and directory of a volume, sorted by first name.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The files and directories.
    pub files: Vec<FileState>,
}

impl Snapshot {
    /// A description of the first difference from `other`, or `None` if they are equal.
    #[must_use]
    pub fn difference(&self, other: &Self) -> Option<String> {
        for (mine, theirs) in self.files.iter().zip(&other.files) {
            if mine != theirs {
                return Some(format!(
                    "{} differs:\n{mine:#?}\nagainst\n{theirs:#?}",
                    mine.names.join(" ")
                ));
            }
        }
        let (longer, count) = if self.files.len() > other.files.len() {
            (self, other.files.len())
        } else {
            (other, self.files.len())
        };
        longer
            .files
            .get(count)
            .map(|extra| format!("only one side has {extra:#?}"))
    }
}

impl Sim {
    /// Every file and directory on `volume` now: names, IDs, streams and their bytes.
    ///
    /// # Panics
    /// If the volume is unknown.
    #[must_use]
    pub fn snapshot(&self, volume: Volume) -> Snapshot {
        let mut files: Vec<FileState> = world::with(|w| {
            let v = w
                .volume(volume.0)
                .expect("fltsim: Sim::snapshot: unknown volume");
            v.files
                .nodes()
                .map(|node| {
                    let mut names: Vec<String> =
                        node.links().map(|(_, link)| link.path.clone()).collect();
                    names.sort();
                    let mut streams = Vec::new();
                    if !node.directory {
                        streams.push(StreamState {
                            name: String::new(),
                            data: node.data.to_vec(),
                        });
                    }
                    let mut others: Vec<StreamState> = node
                        .streams()
                        .map(|(_, s)| StreamState {
                            name: s.name.clone(),
                            data: s.data.to_vec(),
                        })
                        .collect();
                    others.sort_by(|a, b| a.name.cmp(&b.name));
                    streams.extend(others);
                    FileState {
                        names,
                        id: node.id,
                        directory: node.directory,
                        streams,
                    }
                })
                .collect()
        });
        files.sort_by(|a, b| a.names.cmp(&b.names));
        Snapshot { files }
    }
}
