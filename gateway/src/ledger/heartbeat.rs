//! `<state_dir>/ledger.heartbeat`: when the daemon was last known alive, and whether it
//! stopped cleanly. Rewritten every `heartbeat_secs` and at a clean stop, fdatasynced, so a
//! power cut or a crash takes at most one interval from the gateway's own record.
//!
//! Two fixed 128-byte slots written in turn, each a line with its own CRC-32C: a write torn
//! by a power cut spoils only the slot it was writing, and the other still holds the beat
//! before it. Nothing else is written: one page a beat, no rename, no directory update.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::journal::crc32c;

const SLOT: usize = 128;
const MAGIC: &str = "berrygw-heartbeat 1";

/// One beat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Beat {
    /// Counts beats; the higher of the two slots is the latest.
    pub n: u64,
    /// The kernel's boot id: a different one at the next start means the machine restarted.
    pub boot_id: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Written by a clean stop (the daemon was not running after `at_ms`).
    pub stopped: bool,
}

impl Beat {
    fn encode(&self) -> [u8; SLOT] {
        let state = if self.stopped { "stopped" } else { "running" };
        let text = format!("{MAGIC} {} {} {} {state}", self.n, self.boot_id, self.at_ms);
        let line = format!("{text} {:08x}\n", crc32c(0, text.as_bytes()));
        let mut slot = [b' '; SLOT];
        let n = line.len().min(SLOT);
        slot[..n].copy_from_slice(&line.as_bytes()[..n]);
        slot
    }

    fn decode(slot: &[u8]) -> Option<Beat> {
        let line = std::str::from_utf8(slot).ok()?.split('\n').next()?;
        let (text, crc) = line.rsplit_once(' ')?;
        if u32::from_str_radix(crc, 16).ok()? != crc32c(0, text.as_bytes()) {
            return None;
        }
        let rest = text.strip_prefix(MAGIC)?.trim_start();
        let mut f = rest.split(' ');
        let beat = Beat {
            n: f.next()?.parse().ok()?,
            boot_id: f.next()?.to_string(),
            at_ms: f.next()?.parse().ok()?,
            stopped: match f.next()? {
                "stopped" => true,
                "running" => false,
                _ => return None,
            },
        };
        f.next().is_none().then_some(beat)
    }
}

/// The kernel's id of this boot (`unknown` where /proc does not say).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
        .unwrap_or_else(|| "unknown".into())
}

/// The heartbeat file, open for writing.
pub struct Heartbeat {
    file: File,
    path: PathBuf,
    next: u64,
}

impl Heartbeat {
    /// Open (creating, 0600) the file at `path`; the latest beat it holds, if one reads back.
    pub fn open(path: &Path) -> anyhow::Result<(Heartbeat, Option<Beat>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).with_context(|| format!("reading {}", path.display()))?;
        let last = bytes.chunks(SLOT).take(2).filter_map(Beat::decode).max_by_key(|b| b.n);
        let next = last.as_ref().map_or(1, |b| b.n + 1);
        Ok((Heartbeat { file, path: path.to_path_buf(), next }, last))
    }

    /// Write a beat and sync it.
    pub fn beat(&mut self, boot_id: &str, at_ms: i64, stopped: bool) -> anyhow::Result<()> {
        let beat = Beat { n: self.next, boot_id: boot_id.to_string(), at_ms, stopped };
        let offset = (self.next % 2) * SLOT as u64;
        self.file
            .write_all_at(&beat.encode(), offset)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.next += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_beat_reads_back_and_a_torn_slot_leaves_the_one_before() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ledger.heartbeat");
        let (mut hb, none) = Heartbeat::open(&path)?;
        assert_eq!(none, None);
        hb.beat("boot-a", 1_000, false)?;
        hb.beat("boot-a", 2_000, false)?;
        hb.beat("boot-a", 3_000, true)?;
        drop(hb);
        let (_, last) = Heartbeat::open(&path)?;
        assert_eq!(last, Some(Beat { n: 3, boot_id: "boot-a".into(), at_ms: 3_000, stopped: true }));
        // Beat 3 is in slot 1; tear it: beat 2 (slot 0) is what is left.
        let mut bytes = std::fs::read(&path)?;
        bytes[SLOT + 40] ^= 0x55;
        std::fs::write(&path, &bytes)?;
        let (mut hb, last) = Heartbeat::open(&path)?;
        assert_eq!(last.map(|b| (b.n, b.at_ms, b.stopped)), Some((2, 2_000, false)));
        // The next beat goes after the one read back.
        hb.beat("boot-b", 4_000, false)?;
        let (_, last) = Heartbeat::open(&path)?;
        assert_eq!(last.map(|b| (b.n, b.boot_id)), Some((3, "boot-b".to_string())));
        Ok(())
    }

    #[test]
    fn junk_is_no_beat() {
        for junk in [&b""[..], b"berrygw-heartbeat 1 1 b 5 running 00000000\n", &[0xff; SLOT], &[b' '; SLOT]]
        {
            assert_eq!(Beat::decode(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn this_machine_has_a_boot_id() {
        let id = boot_id();
        assert!(!id.is_empty() && !id.contains(' '), "{id}");
    }
}
