//! The `fuser::Filesystem` implementation: each kernel request (lookup, setattr, create,
//! rename, read, write, fsync, readdir, ...) answered from the state under its lock,
//! namespace changes applied to the backing directory at once, data through the overlay.
//! One trait impl, so one file, with the helpers its handlers share (the panic guard,
//! removal, a new entry).

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::state::{errno, kind_of, lock, Shared};
use super::TTL;

/// The FUSE side: every handler runs under `guard`, so a bug here answers EIO instead of
/// killing the session thread (which would leave every process on the mount waiting).
pub(super) struct PowerCutFuse {
    pub(super) state: Shared,
}

fn guard<R>(what: &str, f: impl FnOnce() -> R) -> Option<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(_) => {
            eprintln!("powercut fs: {what} panicked; answered EIO");
            None
        }
    }
}

fn apply_mode(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
}

impl PowerCutFuse {
    /// unlink and rmdir: remove `name` in the backing directory with `remove`, then forget it.
    fn remove(
        &self,
        op: &'static str,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEmpty,
        remove: fn(&Path) -> std::io::Result<()>,
    ) {
        guard(op, || {
            let mut s = lock(&self.state);
            let rel = match s.child(parent, name) {
                Ok(rel) => rel,
                Err(e) => return reply.error(e),
            };
            match remove(&s.abs(&rel)) {
                Ok(()) => {
                    s.unlink_path(&rel);
                    reply.ok()
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn entry(&self, reply: ReplyEntry, rel: PathBuf) {
        let mut s = lock(&self.state);
        let ino = s.ino_for(rel);
        match s.attr(INodeNo(ino)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for PowerCutFuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guard("lookup", || {
            let rel = match lock(&self.state).child(parent, name) {
                Ok(rel) => rel,
                Err(e) => return reply.error(e),
            };
            let exists = fs::symlink_metadata(lock(&self.state).abs(&rel));
            match exists {
                Ok(_) => self.entry(reply, rel),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        guard("getattr", || match lock(&self.state).attr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        guard("setattr", || {
            let mut s = lock(&self.state);
            let result = (|| -> Result<FileAttr, Errno> {
                let path = {
                    let n = s.node(ino)?;
                    n.linked.then(|| s.abs(&n.rel))
                };
                if let Some(size) = size {
                    s.truncate(ino, size)?;
                }
                if let Some(mode) = mode {
                    let done = match (&s.node(ino)?.file, &path) {
                        (Some(f), _) => f.set_permissions(fs::Permissions::from_mode(mode & 0o7777)),
                        (None, Some(p)) => apply_mode(p, mode),
                        (None, None) => Ok(()),
                    };
                    done.map_err(errno)?;
                }
                if uid.is_some() || gid.is_some() {
                    if let Some(p) = &path {
                        std::os::unix::fs::lchown(p, uid, gid).map_err(errno)?;
                    }
                }
                if atime.is_some() || mtime.is_some() {
                    let now = SystemTime::now();
                    let pick = |t: TimeOrNow| match t {
                        TimeOrNow::SpecificTime(t) => t,
                        TimeOrNow::Now => now,
                    };
                    let mut times = fs::FileTimes::new();
                    if let Some(t) = atime {
                        times = times.set_accessed(pick(t));
                    }
                    if let Some(t) = mtime {
                        times = times.set_modified(pick(t));
                    }
                    let kind = s.attr(ino)?.kind;
                    if kind == FileType::RegularFile {
                        s.file(ino)?.set_times(times).map_err(errno)?;
                    } else if let Some(p) = &path {
                        if kind == FileType::Directory {
                            File::open(p).and_then(|f| f.set_times(times)).map_err(errno)?;
                        }
                    }
                }
                s.attr(ino)
            })();
            match result {
                Ok(attr) => reply.attr(&TTL, &attr),
                Err(e) => reply.error(e),
            }
        });
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        guard("mknod", || {
            let (rel, path) = {
                let s = lock(&self.state);
                match s.child(parent, name) {
                    Ok(rel) => {
                        let path = s.abs(&rel);
                        (rel, path)
                    }
                    Err(e) => return reply.error(e),
                }
            };
            let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
                return reply.error(Errno::EINVAL);
            };
            // SAFETY: a valid NUL-terminated path; mknod reads it only.
            let rc =
                unsafe { libc::mknod(c.as_ptr(), (mode & !umask) as libc::mode_t, libc::dev_t::from(rdev)) };
            if rc != 0 {
                return reply.error(errno(io::Error::last_os_error()));
            }
            let _ = apply_mode(&path, mode & !umask);
            self.entry(reply, rel);
        });
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        guard("mkdir", || {
            let (rel, path) = {
                let s = lock(&self.state);
                match s.child(parent, name) {
                    Ok(rel) => {
                        let path = s.abs(&rel);
                        (rel, path)
                    }
                    Err(e) => return reply.error(e),
                }
            };
            if let Err(e) = fs::create_dir(&path).and_then(|()| apply_mode(&path, mode & !umask)) {
                return reply.error(errno(e));
            }
            self.entry(reply, rel);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove("unlink", parent, name, reply, |p| fs::remove_file(p));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove("rmdir", parent, name, reply, |p| fs::remove_dir(p));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        guard("rename", || {
            let mut s = lock(&self.state);
            let (from, to) = match (s.child(parent, name), s.child(newparent, newname)) {
                (Ok(f), Ok(t)) => (f, t),
                (Err(e), _) | (_, Err(e)) => return reply.error(e),
            };
            // RENAME_EXCHANGE and RENAME_WHITEOUT are not needed by anything here.
            if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
                return reply.error(Errno::EINVAL);
            }
            let (abs_from, abs_to) = (s.abs(&from), s.abs(&to));
            if flags.contains(RenameFlags::RENAME_NOREPLACE) && fs::symlink_metadata(&abs_to).is_ok() {
                return reply.error(Errno::EEXIST);
            }
            if let Err(e) = fs::rename(&abs_from, &abs_to) {
                return reply.error(errno(e));
            }
            if from != to {
                s.unlink_path(&to);
                s.move_paths(&from, &to);
            }
            reply.ok();
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        guard("open", || {
            let mut s = lock(&self.state);
            match s.file(ino) {
                Ok(_) => {
                    if let Ok(n) = s.node_mut(ino) {
                        n.opens += 1;
                    }
                    // Through the page cache (no FOPEN_DIRECT_IO: shared writable mmap
                    // must work), and the cache dropped at each open (no KEEP_CACHE).
                    reply.opened(FileHandle(0), FopenFlags::empty())
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guard("read", || match lock(&self.state).read(ino, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        guard("write", || match lock(&self.state).write(ino, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        guard("release", || {
            let mut s = lock(&self.state);
            let gone = match s.nodes.get_mut(&ino.0) {
                Some(n) => {
                    n.opens = n.opens.saturating_sub(1);
                    n.opens == 0 && !n.linked
                }
                None => false,
            };
            if gone {
                s.nodes.remove(&ino.0);
            }
            reply.ok();
        });
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        guard("fsync", || match lock(&self.state).sync(ino) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        guard("opendir", || {
            let mut s = lock(&self.state);
            let rel = match s.node(ino) {
                Ok(n) if n.linked => n.rel.clone(),
                Ok(_) => return reply.error(Errno::ENOENT),
                Err(e) => return reply.error(e),
            };
            let listing = match fs::read_dir(s.abs(&rel)) {
                Ok(l) => l,
                Err(e) => return reply.error(errno(e)),
            };
            let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
            let parent_ino = s.ino_for(parent);
            let mut entries = vec![
                (ino.0, FileType::Directory, OsString::from(".")),
                (parent_ino, FileType::Directory, "..".into()),
            ];
            for entry in listing.flatten() {
                let Ok(ft) = entry.file_type() else { continue };
                let child = s.ino_for(rel.join(entry.file_name()));
                entries.push((child, kind_of(ft), entry.file_name()));
            }
            let fh = s.next_fh;
            s.next_fh += 1;
            s.dirs.insert(fh, entries);
            reply.opened(FileHandle(fh), FopenFlags::empty());
        });
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        guard("readdir", || {
            let s = lock(&self.state);
            let Some(entries) = s.dirs.get(&fh.0) else {
                return reply.error(Errno::EBADF);
            };
            for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        guard("releasedir", || {
            lock(&self.state).dirs.remove(&fh.0);
            reply.ok();
        });
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // The namespace is applied at once (see the module doc).
        reply.ok();
    }

    // statvfs's field types differ between 32- and 64-bit targets.
    #[allow(clippy::unnecessary_cast)]
    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        guard("statfs", || {
            let backing = lock(&self.state).backing.clone();
            let Ok(c) = CString::new(backing.as_os_str().as_bytes()) else {
                return reply.error(Errno::EINVAL);
            };
            // SAFETY: statvfs fills the zeroed struct from a valid NUL-terminated path.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
                return reply.error(errno(io::Error::last_os_error()));
            }
            reply.statfs(
                st.f_blocks as u64,
                st.f_bfree as u64,
                st.f_bavail as u64,
                st.f_files as u64,
                st.f_ffree as u64,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            );
        });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Mounted with default_permissions: the kernel checks the mode bits itself.
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        guard("create", || {
            let mut s = lock(&self.state);
            let result = (|| -> Result<FileAttr, Errno> {
                let rel = s.child(parent, name)?;
                let path = s.abs(&rel);
                let existed = fs::symlink_metadata(&path).is_ok();
                let mut o = OpenOptions::new();
                o.read(true).write(true).mode(mode & !umask & 0o7777);
                if flags & libc::O_EXCL != 0 {
                    o.create_new(true);
                } else {
                    o.create(true);
                }
                let file = o.open(&path).map_err(errno)?;
                if !existed {
                    file.set_permissions(fs::Permissions::from_mode(mode & !umask & 0o7777))
                        .map_err(errno)?;
                }
                let ino = INodeNo(s.ino_for(rel));
                {
                    let n = s.node_mut(ino)?;
                    if n.file.is_none() {
                        n.file = Some(file);
                    }
                    n.opens += 1;
                }
                if existed && flags & libc::O_TRUNC != 0 {
                    s.truncate(ino, 0)?;
                }
                s.attr(ino)
            })();
            match result {
                Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::empty()),
                Err(e) => reply.error(e),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        guard("fallocate", || {
            if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
                return reply.error(Errno::EOPNOTSUPP);
            }
            if mode & libc::FALLOC_FL_KEEP_SIZE != 0 {
                return reply.ok();
            }
            let mut s = lock(&self.state);
            // A size grown by fallocate is data here: unsynced until an fsync.
            match s.dirty_mut(ino) {
                Ok((_, d)) => {
                    d.size = d.size.max(offset + length);
                    reply.ok()
                }
                Err(e) => reply.error(e),
            }
        });
    }
}
