//! Files of the state directory: private folders (0700) and files (0600) whatever the
//! umask, and files created with their mode rather than chmodded after.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Mode of the state directory and every folder berrygw creates in it.
pub const STATE_DIR_MODE: u32 = 0o700;
/// Mode of state files that hold nothing another user may read (journals, sessions, counters).
pub const STATE_FILE_MODE: u32 = 0o600;

/// Create `dir` (and missing parents) with mode 0700, whatever the umask. An existing
/// folder keeps its mode: the service manager may have made it (`StateDirectoryMode=`).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(STATE_DIR_MODE).create(dir)?;
    // The umask can only have removed bits; set the mode exactly anyway.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(STATE_DIR_MODE))
}

/// Give everything under `dir` (not following links) mode 0700 (folders) or 0600 (files).
pub fn make_private(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(STATE_DIR_MODE))?;
            make_private(&entry.path())?;
        } else if kind.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(STATE_FILE_MODE))?;
        }
    }
    Ok(())
}

/// Create `path` empty with `mode` if it does not exist, and give an existing one `mode`:
/// a file is never readable by others for a moment between its creation and a chmod.
pub fn create_with_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().create(true).append(true).mode(mode).open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Write `content` to a new file at `tmp` with mode 0600 from its creation, and sync it:
/// the first half of a write that readers see whole (the caller renames `tmp` into place).
/// A leftover `tmp` (a crash mid-write) is replaced.
pub fn write_private_synced(tmp: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(tmp);
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(STATE_FILE_MODE).open(tmp)?;
    file.write_all(content)?;
    file.sync_all()
}
