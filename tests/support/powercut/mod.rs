//! A filesystem that can lose power: a FUSE mount (the `fuser` crate, pure Rust, mounted
//! with mount(2) as root; no C libfuse) passing through to a backing directory, that keeps
//! every write made since a file's last `fsync`/`fdatasync` in memory and drops all of
//! them on [`PowerCutFs::cut`]. `kill -9` keeps the page cache; a power cut does not: this
//! is the difference it makes testable.
//!
//! # The model
//!
//! - **File data** is durable only once fsynced. Each regular file has an in-memory overlay
//!   of the 4 KiB pages written since its last `fsync` or `fdatasync` (both flush it: data
//!   and size), and its current size; reads see the overlay. On `cut()` every overlay is
//!   dropped: each file reverts to its content at its last fsync, a file never synced
//!   reverts to empty. This is the worst case a real disk allows for unsynced data (a real
//!   one may keep some of it, in any page order; nothing unsynced is ever promised).
//! - **Namespace and size** operations are applied to the backing directory at once and
//!   survive a cut: create, mknod, mkdir, unlink, rmdir, rename, and the size set by
//!   `truncate`/`ftruncate`/`O_TRUNC` (shrinking or growing, zeros). ext4 journals metadata
//!   within seconds (`commit=5` by default) whether or not the directory was fsynced, so
//!   a program must cope with a rename or a truncate that survived while the data written
//!   around it did not (the zero-length file after truncate-and-rewrite). A size grown by a
//!   `write` past the end, or by `fallocate`, is data: unsynced until an fsync.
//! - Directory fsync is accepted and does nothing (the namespace is already durable).
//! - Not modelled: torn pages and partial survival of unsynced data (we drop it all),
//!   reordering between files' synced writes (a sync is final), a disk that lies about
//!   flushes, and timestamps (atime/mtime come from the backing file and are not reverted).
//!   File modes and owners are applied at once. Extended attributes, hard links and
//!   symlinks are not supported (ENOSYS/EPERM); POSIX and flock locks stay local to the
//!   kernel (not forwarded), which is right for one machine.
//!
//! # What it carries
//!
//! What SQLite (WAL mode) and an append-only segment log need: lookup, getattr, setattr
//! (mode, owner, size, times), create, mknod (a unix socket too), mkdir, unlink, rmdir,
//! rename (NOREPLACE), open, read, write, fsync, fsyncdir, opendir/readdir, statfs,
//! fallocate (mode 0 and KEEP_SIZE), access. Files are opened through the page cache
//! (no `direct_io`) so that SQLite's shared writable mmap of its `-shm` file works: the
//! kernel writes those dirty pages back through `write` like any other. Attributes and
//! entries are never cached by the kernel (TTL 0), and after a cut every inode's cached
//! pages are invalidated.
//!
//! # Use
//!
//! Stop (SIGKILL) every process using the mount, then `cut()`, then start them again on
//! the same mount. `cut()` first writes back any dirty mmap pages the dead processes left
//! in the page cache (syncfs), so that they are dropped with the rest instead of landing
//! after the cut. Needs root and `/dev/fuse` (`modprobe fuse`); a container needs
//! `--device /dev/fuse --cap-add SYS_ADMIN`. The mount is lazily unmounted on drop
//! (MNT_DETACH: never blocks, even with a process still inside).
//!
//! # Layout
//!
//! `state` holds the nodes (what each inode is called in the backing directory) and the
//! shared state behind the mount; `pages` is the unsynced-data overlay on it (read, write,
//! truncate, sync); `fuse` answers the kernel's requests with them; `handle` is
//! [`PowerCutFs`], the mount a test holds, with `cut()`.

mod fuse;
mod handle;
mod pages;
mod state;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use handle::PowerCutFs;

/// Granularity of the unsynced-data overlay.
const PAGE: usize = 4096;
/// The kernel caches no attribute and no entry: every change behind its back (a cut) is
/// seen at once, and sizes are always ours.
const TTL: Duration = Duration::ZERO;
/// Longest wait for the mount's handshake, the syncfs before a cut, and the FUSE thread at
/// unmount.
const WAIT: Duration = Duration::from_secs(20);

/// What one `cut()` threw away.
#[derive(Clone, Copy, Debug, Default)]
pub struct CutReport {
    /// Files that had unsynced data (or an unsynced size) and reverted.
    pub files_reverted: usize,
    /// Unsynced 4 KiB pages dropped.
    pub pages_dropped: usize,
}

/// Counters since the mount, for a test's report.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsStats {
    pub writes: u64,
    pub bytes_written: u64,
    /// fsync and fdatasync calls on files.
    pub fsyncs: u64,
    /// Bytes those calls made durable (whole dirty pages).
    pub bytes_synced: u64,
    pub cuts: u64,
}
