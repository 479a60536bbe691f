//! Per-gateway uplink sequence numbers. Every accepted uplink gets the next
//! number, carried in its metadata so that a consumer can drop the duplicates
//! an at-least-once backhaul produces. Numbers only grow, across restarts and
//! power cuts: the file on disk holds a reserved ceiling, written durably one
//! block ahead, so the SD card sees one tiny write per `BLOCK` uplinks. After
//! a crash the sequence jumps to the old ceiling; it never goes back.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Numbers reserved by one durable write.
const BLOCK: u64 = 10_000;

/// Hands out increasing uplink sequence numbers, persisted by blocks.
pub struct UplinkSeq {
    path: PathBuf,
    next: u64,
    ceiling: u64,
}

impl UplinkSeq {
    /// Open (or create) the counter file in `state_dir`.
    pub fn open(state_dir: &Path) -> std::io::Result<UplinkSeq> {
        let path = state_dir.join("uplink-seq");
        let start = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: not a number ({e}); remove the file to restart numbering", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(e),
        };
        let mut seq = UplinkSeq { path, next: start.max(1), ceiling: start.max(1) };
        seq.reserve()?;
        Ok(seq)
    }

    /// The next number; `None` when a new block must be reserved first (call `reserve`).
    pub fn try_next(&mut self) -> Option<u64> {
        if self.next >= self.ceiling {
            return None;
        }
        let n = self.next;
        self.next += 1;
        Some(n)
    }

    /// Durably move the ceiling one block ahead of the next number.
    pub fn reserve(&mut self) -> std::io::Result<()> {
        let ceiling = self.next + BLOCK;
        write_durably(&self.path, format!("{ceiling}\n").as_bytes())?;
        self.ceiling = ceiling;
        Ok(())
    }
}

/// Replace `path` atomically and durably (temp file, fsync, rename, fsync dir); the file
/// is mode 0600 whatever the umask.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(berrygw_core::files::STATE_FILE_MODE)
            .open(&tmp)?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
            berrygw_core::files::STATE_FILE_MODE,
        ))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(seq: &mut UplinkSeq) -> u64 {
        match seq.try_next() {
            Some(n) => n,
            None => {
                seq.reserve().expect("reserve");
                seq.try_next().expect("fresh block")
            }
        }
    }

    #[test]
    fn numbers_grow_across_restarts_and_never_repeat() {
        let dir = std::env::temp_dir().join(format!("berrygw-seq-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("tmp");
        let mut seq = UplinkSeq::open(&dir).expect("open");
        let first: Vec<u64> = (0..3).map(|_| next(&mut seq)).collect();
        assert_eq!(first, vec![1, 2, 3]);
        drop(seq); // as after a crash: nothing flushed on drop
        let mut seq = UplinkSeq::open(&dir).expect("reopen");
        let after = next(&mut seq);
        assert!(after > 3, "restart must not reuse numbers, got {after}");
        for _ in 0..(BLOCK + 5) {
            next(&mut seq);
        }
        assert!(next(&mut seq) > after + BLOCK);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn garbage_counter_file_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("berrygw-seq-bad-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("tmp");
        fs::write(dir.join("uplink-seq"), "banana").expect("write");
        let err = UplinkSeq::open(&dir).err().expect("garbage refused");
        assert!(err.to_string().contains("not a number"), "{err}");
        fs::remove_dir_all(&dir).ok();
    }
}
