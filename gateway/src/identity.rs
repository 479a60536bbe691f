//! This gateway's identity key, `<state_dir>/identity.key` (mode 0600, owned by the
//! daemon's user): the private X25519 key that opens secrets sealed to this gateway
//! (session keys, a bundle's device keys; `berrygw_proto::sealed`). Made at install
//! (the package runs `berrygw identity init`) or, failing that, at the daemon's first
//! start; never replaced by berrygw once it exists (a new key means the centre must
//! learn it again, so replacing it is a deliberate act: delete the file, then `init`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use berrygw_core::files::{create_private_dir, write_private_synced};
use berrygw_proto::sealed::Identity;

/// The identity file's name in the state directory.
pub const FILE: &str = "identity.key";

/// Where the identity of a gateway whose state is in `state_dir` lives.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The identity in `state_dir`. Refused if others may read it (its key would no longer
/// be this gateway's alone).
pub fn load(state_dir: &Path) -> anyhow::Result<Identity> {
    let path = path(state_dir);
    let text = berrygw_core::read_file(&path, 0o077, |mode| {
        format!(
            "mode {mode:04o} lets other users read this gateway's private key; run `chmod 600 {}` \
             (and, if the key may have been read, make a new one: delete it, run `berrygw identity \
             init`, and let the centre learn it again)",
            path.display()
        )
    })?;
    Identity::from_base64(text.trim()).with_context(|| format!("{}: not an identity key", path.display()))
}

/// The identity in `state_dir`, made first if there is none: `(identity, made now)`.
pub fn load_or_create(state_dir: &Path) -> anyhow::Result<(Identity, bool)> {
    let path = path(state_dir);
    if path.exists() {
        return Ok((load(state_dir)?, false));
    }
    create_private_dir(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let identity = Identity::generate();
    // Written to a temporary file with its mode from the start, synced, then renamed:
    // never a half-written key, never one readable by others for a moment.
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    write_private_synced(&tmp, format!("{}\n", identity.to_base64()).as_bytes())
        .with_context(|| format!("writing {}", tmp.display()))?;
    if path.exists() {
        // Another `init` won the race: keep its key.
        let _ = std::fs::remove_file(&tmp);
        return Ok((load(state_dir)?, false));
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("installing {}", path.display()))?;
    if let Ok(dir) = std::fs::File::open(state_dir) {
        let _ = dir.sync_all();
    }
    Ok((identity, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_identity_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = dir.path().join("state");
        let (first, made) = load_or_create(&state).expect("made");
        assert!(made);
        let mode = std::fs::metadata(path(&state)).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, made) = load_or_create(&state).expect("kept");
        assert!(!made);
        assert_eq!(again.recipient(), first.recipient(), "never replaced");
        assert_eq!(load(&state).expect("loads").recipient(), first.recipient());
    }

    #[test]
    fn a_readable_or_garbled_identity_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tmp");
        load_or_create(dir.path()).expect("made");
        let file = path(dir.path());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = format!("{:#}", load(dir.path()).expect_err("readable by others"));
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&file, "not a key\n").expect("write");
        let err = format!("{:#}", load_or_create(dir.path()).expect_err("garbled"));
        assert!(err.contains("not an identity key"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "not a key\n", "never replaced");
    }
}
