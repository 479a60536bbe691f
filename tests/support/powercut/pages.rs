//! The unsynced-data overlay of a regular file: the 4 KiB pages written since its last
//! fsync, and its current size, kept in memory (`Dirty`) over the backing file, which holds
//! only what was synced. Reads see the overlay; a truncate goes to the backing file at once
//! (metadata survives a cut) and trims the overlay; a sync writes the overlay down.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use fuser::{Errno, INodeNo};

use super::state::{errno, Dirty, State};
use super::PAGE;

impl State {
    /// One page as the file holds it now (overlay first, then the backing file).
    fn page(file: &File, dirty: Option<&Dirty>, idx: u64) -> io::Result<Box<[u8]>> {
        if let Some(p) = dirty.and_then(|d| d.pages.get(&idx)) {
            return Ok(p.clone());
        }
        let mut buf = vec![0u8; PAGE].into_boxed_slice();
        let mut done = 0;
        while done < PAGE {
            let n = file.read_at(&mut buf[done..], idx * PAGE as u64 + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        // Past the current size, a page reads as zeros (the backing file may be longer
        // than a size set since only if it was grown, and then it holds zeros too).
        if let Some(d) = dirty {
            let start = idx * PAGE as u64;
            if d.size < start + PAGE as u64 {
                let keep = d.size.saturating_sub(start) as usize;
                buf[keep..].fill(0);
            }
        }
        Ok(buf)
    }

    pub(super) fn read(&mut self, ino: INodeNo, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        self.file(ino)?;
        let n = self.node(ino)?;
        let file = n.file.as_ref().ok_or(Errno::EIO)?;
        let len = match &n.dirty {
            Some(d) => d.size,
            None => file.metadata().map_err(errno)?.len(),
        };
        let end = len.min(offset.saturating_add(u64::from(size)));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        if n.dirty.is_none() {
            out.resize((end - offset) as usize, 0);
            let mut done = 0;
            while done < out.len() {
                let got = file.read_at(&mut out[done..], offset + done as u64).map_err(errno)?;
                if got == 0 {
                    break; // zeros past the backing file's end
                }
                done += got;
            }
            return Ok(out);
        }
        let mut pos = offset;
        while pos < end {
            let idx = pos / PAGE as u64;
            let page = Self::page(file, n.dirty.as_ref(), idx).map_err(errno)?;
            let from = (pos - idx * PAGE as u64) as usize;
            let to = ((end - idx * PAGE as u64) as usize).min(PAGE);
            out.extend_from_slice(&page[from..to]);
            pos = idx * PAGE as u64 + to as u64;
        }
        Ok(out)
    }

    pub(super) fn dirty_mut(&mut self, ino: INodeNo) -> Result<(&File, &mut Dirty), Errno> {
        self.file(ino)?;
        let n = self.node_mut(ino)?;
        let file = n.file.as_ref().ok_or(Errno::EIO)?;
        if n.dirty.is_none() {
            let size = file.metadata().map_err(errno)?.len();
            n.dirty = Some(Dirty { size, pages: BTreeMap::new() });
        }
        Ok((file, n.dirty.as_mut().ok_or(Errno::EIO)?))
    }

    pub(super) fn write(&mut self, ino: INodeNo, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let (file, dirty) = self.dirty_mut(ino)?;
        let mut pos = offset;
        let end = offset + data.len() as u64;
        while pos < end {
            let idx = pos / PAGE as u64;
            if !dirty.pages.contains_key(&idx) {
                let page = Self::page(file, Some(dirty), idx).map_err(errno)?;
                dirty.pages.insert(idx, page);
            }
            let page = dirty.pages.get_mut(&idx).ok_or(Errno::EIO)?;
            let from = (pos - idx * PAGE as u64) as usize;
            let to = ((end - idx * PAGE as u64) as usize).min(PAGE);
            let src = (pos - offset) as usize;
            page[from..to].copy_from_slice(&data[src..src + (to - from)]);
            pos = idx * PAGE as u64 + to as u64;
        }
        dirty.size = dirty.size.max(end);
        self.stats.writes += 1;
        self.stats.bytes_written += data.len() as u64;
        Ok(())
    }

    /// A new size, applied to the backing file at once (a metadata operation), and to the
    /// unsynced pages.
    pub(super) fn truncate(&mut self, ino: INodeNo, size: u64) -> Result<(), Errno> {
        self.file(ino)?.set_len(size).map_err(errno)?;
        let n = self.node_mut(ino)?;
        if let Some(d) = &mut n.dirty {
            let first_gone = size.div_ceil(PAGE as u64);
            d.pages.retain(|idx, _| *idx < first_gone);
            let tail = (size % PAGE as u64) as usize;
            if tail != 0 {
                if let Some(p) = d.pages.get_mut(&(size / PAGE as u64)) {
                    p[tail..].fill(0);
                }
            }
            d.size = size;
        }
        Ok(())
    }

    /// Make the file's unsynced pages and size durable (write them to the backing file).
    pub(super) fn sync(&mut self, ino: INodeNo) -> Result<(), Errno> {
        let n = self.node_mut(ino)?;
        let (Some(file), Some(d)) = (&n.file, &n.dirty) else {
            self.stats.fsyncs += 1;
            return Ok(());
        };
        file.set_len(d.size).map_err(errno)?;
        let mut bytes = 0;
        for (idx, page) in &d.pages {
            let start = idx * PAGE as u64;
            if start >= d.size {
                continue;
            }
            let len = ((d.size - start) as usize).min(PAGE);
            file.write_all_at(&page[..len], start).map_err(errno)?;
            bytes += len as u64;
        }
        n.dirty = None;
        self.stats.fsyncs += 1;
        self.stats.bytes_synced += bytes;
        Ok(())
    }
}
