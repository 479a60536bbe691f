//! [`PowerCutFs`], what a test holds: mounting the filesystem (in its own temporary
//! directory, the handshake off the caller's thread), the power cut itself (syncfs, drop
//! every overlay, invalidate the kernel's caches), the watchdog that aborts a stuck FUSE
//! connection, and the lazy unmount on drop.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{BackgroundSession, Config, INodeNo, MountOption, Notifier};

use super::fuse::PowerCutFuse;
use super::state::{lock, Shared, State};
use super::{CutReport, FsStats, WAIT};

/// A mounted power-cut filesystem in its own temporary directory (`backing/` holds what is
/// durable, `mnt/` is the mount); unmounted on drop.
pub struct PowerCutFs {
    dir: Option<tempfile::TempDir>,
    mountpoint: PathBuf,
    backing: PathBuf,
    state: Shared,
    session: Option<BackgroundSession>,
    notifier: Notifier,
    /// The FUSE connection's number under /sys/fs/fuse/connections.
    connection: u64,
    /// Dropped with the filesystem: ends the watchdog of `abort_after`.
    watchdog: Option<std::sync::mpsc::Sender<()>>,
}

/// Abort FUSE connection `connection`: every request waiting on it fails (ENOTCONN) at
/// once, so no thread stays stuck on the mount. Mounts the fuse control filesystem first
/// if nothing has (root).
fn abort_connection(connection: u64) -> io::Result<()> {
    let control = Path::new("/sys/fs/fuse/connections");
    if !control.join(connection.to_string()).exists() {
        let (src, dir) = (CString::new("fusectl")?, CString::new(control.as_os_str().as_bytes())?);
        // SAFETY: valid NUL-terminated strings; no mount data.
        let rc = unsafe { libc::mount(src.as_ptr(), dir.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    fs::write(control.join(connection.to_string()).join("abort"), "1")
}

/// The kernel's number for a mount's device (`MKDEV`), from the user-space `st_dev`.
fn kernel_dev(dev: u64) -> u64 {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major << 20) | minor
}

impl PowerCutFs {
    /// Mount a new, empty filesystem. Fails (with the reason) when `/dev/fuse` is missing
    /// or the mount is refused (not root, no CAP_SYS_ADMIN).
    pub fn mount() -> io::Result<PowerCutFs> {
        let dir = tempfile::Builder::new().prefix("powercut-").tempdir()?;
        let backing = dir.path().join("backing");
        let mountpoint = dir.path().join("mnt");
        fs::create_dir(&backing)?;
        fs::create_dir(&mountpoint)?;
        fs::set_permissions(&backing, fs::Permissions::from_mode(0o755))?;
        fs::set_permissions(&mountpoint, fs::Permissions::from_mode(0o755))?;
        let mut state = State {
            backing: backing.clone(),
            nodes: HashMap::new(),
            by_path: HashMap::new(),
            next_ino: 1,
            dirs: HashMap::new(),
            next_fh: 1,
            stats: FsStats::default(),
        };
        let root = state.ino_for(PathBuf::new());
        assert_eq!(root, INodeNo::ROOT.0);
        let state = Arc::new(Mutex::new(state));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("berrygw-powercut".into()),
            MountOption::Subtype("powercut".into()),
            MountOption::DefaultPermissions,
            MountOption::RW,
            MountOption::NoAtime,
        ];
        config.n_threads = Some(1);
        // The handshake reads the kernel's INIT: off this thread, so that it cannot hang us.
        let (tx, rx) = std::sync::mpsc::channel();
        let fs = PowerCutFuse { state: state.clone() };
        let at = mountpoint.clone();
        std::thread::Builder::new().name("powercut-mount".into()).spawn(move || {
            let _ = tx.send(fuser::spawn_mount(fs, &at, &config));
        })?;
        let session = match rx.recv_timeout(WAIT) {
            Ok(r) => r?,
            Err(_) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "FUSE mount did not answer in 20 s"))
            }
        };
        let notifier = session.notifier();
        let mut me = PowerCutFs {
            dir: Some(dir),
            mountpoint,
            backing,
            state,
            session: Some(session),
            notifier,
            connection: 0,
            watchdog: None,
        };
        // The mount answers: a stat of its root goes through the FUSE thread.
        let probe = me.mountpoint.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(fs::metadata(&probe).map(|m| (m.is_dir(), m.dev())));
        });
        match rx.recv_timeout(WAIT) {
            Ok(Ok((true, dev))) => {
                me.connection = kernel_dev(dev);
                Ok(me)
            }
            Ok(Ok((false, _))) => Err(io::Error::other("the FUSE mount's root is not a directory")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "the FUSE mount's root did not answer")),
        }
    }

    /// Never hang: if the filesystem is still mounted `deadline` from now, abort its FUSE
    /// connection, so that every thread and process waiting on it gets an error (and the
    /// test fails) instead of waiting for ever in an uninterruptible sleep.
    pub fn abort_after(&mut self, deadline: Duration) {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let connection = self.connection;
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(deadline) {
                eprintln!("powercut fs: still mounted after {deadline:?}: aborting the FUSE connection");
                if let Err(e) = abort_connection(connection) {
                    eprintln!("powercut fs: aborting FUSE connection {connection}: {e}");
                }
            }
        });
        self.watchdog = Some(tx);
    }

    /// The mounted directory.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The backing directory: what survives a cut (read it only while nothing writes).
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    pub fn stats(&self) -> FsStats {
        lock(&self.state).stats
    }

    /// The power cut: every write not yet fsynced is lost. Call it once every process
    /// using the mount is dead (SIGKILL), before starting them again.
    pub fn cut(&self) -> CutReport {
        // Dirty mmap pages (SQLite's -shm) the dead processes left in the page cache are
        // written back now, so that they are dropped below rather than arriving later.
        self.syncfs();
        let mut report = CutReport::default();
        let inodes: Vec<u64> = {
            let mut s = lock(&self.state);
            for n in s.nodes.values_mut() {
                if let Some(d) = n.dirty.take() {
                    report.files_reverted += 1;
                    report.pages_dropped += d.pages.len();
                }
            }
            // Unlinked files (still open when their process died) are gone with it.
            s.nodes.retain(|_, n| n.linked);
            s.stats.cuts += 1;
            s.nodes.keys().copied().collect()
        };
        // The kernel's cached pages and attributes of every file are stale now (not under
        // the lock: invalidating may wait for a read the FUSE thread is serving).
        for ino in inodes {
            let _ = self.notifier.inval_inode(INodeNo(ino), 0, 0);
        }
        report
    }

    fn syncfs(&self) {
        let root = self.mountpoint.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(f) = File::open(&root) {
                use std::os::fd::AsRawFd;
                // SAFETY: syncfs on a valid open descriptor.
                unsafe { libc::syncfs(f.as_raw_fd()) };
            }
            let _ = tx.send(());
        });
        if rx.recv_timeout(WAIT).is_err() {
            eprintln!("powercut fs: syncfs before the cut did not return in {WAIT:?}; cutting anyway");
        }
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        // Lazy unmount: never blocks, even if a process is still inside; the FUSE thread
        // ends when the kernel lets the connection go.
        if let Ok(c) = CString::new(self.mountpoint.as_os_str().as_bytes()) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        if let Some(session) = self.session.take() {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(session.join());
            });
            if rx.recv_timeout(WAIT).is_err() {
                // Something still waits on the mount: fail its requests so that it ends.
                eprintln!("powercut fs: the FUSE thread did not end in {WAIT:?} after unmount; aborting");
                let _ = abort_connection(self.connection);
                if rx.recv_timeout(WAIT).is_err() {
                    // Keep the backing directory: the thread may still use it.
                    if let Some(d) = self.dir.take() {
                        let _ = d.keep();
                    }
                }
            }
        }
        self.watchdog.take();
    }
}
