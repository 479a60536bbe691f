//! The state behind the mount, under one mutex: every inode the kernel knows, the path it
//! has in the backing directory, its open count and its unsynced data, plus open directory
//! listings and the counters; and the name-side operations on it (path of a child, inode of
//! a path, attributes, unlink and rename in the maps). The data side is in `pages`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo};

use super::{FsStats, PAGE};

/// Unsynced state of one regular file.
pub(super) struct Dirty {
    /// The file's current size (the backing file holds the synced size).
    pub(super) size: u64,
    /// Pages written since the last sync; bytes past `size` are zero.
    pub(super) pages: BTreeMap<u64, Box<[u8]>>,
}

/// One inode the kernel knows.
pub(super) struct Node {
    /// Path relative to the backing root (empty for the root).
    pub(super) rel: PathBuf,
    /// Still reachable by a name (false after unlink, or after a rename replaced it).
    pub(super) linked: bool,
    /// The backing file, opened read-write on first use (regular files only).
    pub(super) file: Option<File>,
    /// Opens not yet released.
    pub(super) opens: u32,
    pub(super) dirty: Option<Dirty>,
}

/// Everything behind the mount, shared by the FUSE thread and the test's handle.
pub(super) struct State {
    pub(super) backing: PathBuf,
    pub(super) nodes: HashMap<u64, Node>,
    pub(super) by_path: HashMap<PathBuf, u64>,
    pub(super) next_ino: u64,
    pub(super) dirs: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    pub(super) next_fh: u64,
    pub(super) stats: FsStats,
}

pub(super) type Shared = Arc<Mutex<State>>;

pub(super) fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

pub(super) fn kind_of(ft: fs::FileType) -> FileType {
    if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_socket() {
        FileType::Socket
    } else if ft.is_fifo() {
        FileType::NamedPipe
    } else if ft.is_char_device() {
        FileType::CharDevice
    } else if ft.is_block_device() {
        FileType::BlockDevice
    } else {
        FileType::RegularFile
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH
    }
}

impl State {
    pub(super) fn abs(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.backing.clone()
        } else {
            self.backing.join(rel)
        }
    }

    pub(super) fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.nodes.get(&ino.0).ok_or(Errno::ENOENT)
    }

    pub(super) fn node_mut(&mut self, ino: INodeNo) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)
    }

    /// The path of `name` in directory `parent`, relative to the backing root.
    pub(super) fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        if name.as_bytes().contains(&b'/') || name == ".." || name == "." {
            return Err(Errno::EINVAL);
        }
        let p = self.node(parent)?;
        if !p.linked {
            return Err(Errno::ENOENT);
        }
        Ok(p.rel.join(name))
    }

    pub(super) fn ino_for(&mut self, rel: PathBuf) -> u64 {
        if let Some(ino) = self.by_path.get(&rel) {
            return *ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, Node { rel: rel.clone(), linked: true, file: None, opens: 0, dirty: None });
        self.by_path.insert(rel, ino);
        ino
    }

    /// The name at `rel` is gone (unlinked, or replaced by a rename): its node lives on
    /// only while open.
    pub(super) fn unlink_path(&mut self, rel: &Path) {
        if let Some(ino) = self.by_path.remove(rel) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.linked = false;
                if n.opens == 0 {
                    self.nodes.remove(&ino);
                }
            }
        }
    }

    fn metadata(&self, ino: INodeNo) -> Result<fs::Metadata, Errno> {
        let n = self.node(ino)?;
        match &n.file {
            Some(f) => f.metadata().map_err(errno),
            None if n.linked => fs::symlink_metadata(self.abs(&n.rel)).map_err(errno),
            None => Err(Errno::ENOENT),
        }
    }

    pub(super) fn attr(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
        let m = self.metadata(ino)?;
        let n = self.node(ino)?;
        let size = n.dirty.as_ref().map_or(m.len(), |d| d.size);
        Ok(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind_of(m.file_type()),
            perm: (m.mode() & 0o7777) as u16,
            nlink: if n.linked { m.nlink() as u32 } else { 0 },
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    /// The backing file of a regular file, opened on first use.
    pub(super) fn file(&mut self, ino: INodeNo) -> Result<&File, Errno> {
        let path = {
            let n = self.node(ino)?;
            if n.file.is_some() {
                None
            } else if !n.linked {
                return Err(Errno::ENOENT);
            } else {
                Some(self.abs(&n.rel))
            }
        };
        if let Some(path) = path {
            if !fs::symlink_metadata(&path).map_err(errno)?.file_type().is_file() {
                return Err(Errno::EINVAL);
            }
            let f = OpenOptions::new().read(true).write(true).open(&path).map_err(errno)?;
            self.node_mut(ino)?.file = Some(f);
        }
        self.node(ino)?.file.as_ref().ok_or(Errno::EIO)
    }

    /// Rename `from` to `to` in the path maps (a directory takes its descendants along).
    pub(super) fn move_paths(&mut self, from: &Path, to: &Path) {
        let moved: Vec<(PathBuf, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, ino)| (p.clone(), *ino))
            .collect();
        for (old, ino) in moved {
            self.by_path.remove(&old);
            let rest = old.strip_prefix(from).map(Path::to_path_buf).unwrap_or_default();
            let new = if rest.as_os_str().is_empty() { to.to_path_buf() } else { to.join(rest) };
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.rel = new.clone();
            }
            self.by_path.insert(new, ino);
        }
    }
}
