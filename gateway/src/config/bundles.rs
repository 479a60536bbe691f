//! `[bundles]`, and the site's files on disk when bundles are on: `<state_dir>/bundles/`.
//! (Taking a bundle, watching it and rolling it back is `crate::bundle`.)
//!
//! ```text
//! bundles/
//!   v0/            the files of berrygw.toml, copied at the first start (the seed)
//!   v7/            a bundle's files: devices.toml, rules.toml, authorized_keys, codecs/,
//!                  profiles/, berrygw.toml (its [filters] and [sinks.<name>])
//!   current -> v7  the version in force (a symlink, switched by one rename)
//!   previous -> v0 what a roll-back returns to
//!   highest        the highest version ever put in force: older or equal ones are refused
//!   probation      the version on probation and the one before it, until its watch ends
//! ```
//!
//! Every version folder holds the whole set: a bundle's files, and the files of the kinds
//! it does not carry copied from the version before. The running gateway reads its files
//! through `current/…` ([`overlay`]), so switching `current` and reloading puts a version in
//! force; a power cut at any point leaves either the old or the new link, never half a
//! set (staging happens in `.stage-<version>`, synced, before the rename).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use berrygw_core::files::{create_private_dir, write_private_synced};
use berrygw_proto::bundle::Kind;
use serde::{Deserialize, Serialize};

use super::Config;

/// `[bundles]`: take signed configuration bundles from the centre.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSection {
    /// How long a new version is watched before it is kept.
    #[serde(default = "default_watch_secs")]
    pub watch_secs: u64,
}

fn default_watch_secs() -> u64 {
    300
}

impl BundleSection {
    /// What berrygw.toml must also have for bundles to work.
    pub fn check(&self, config: &Config) -> Result<(), String> {
        if self.watch_secs == 0 || self.watch_secs > 86_400 {
            return Err("bundles.watch_secs must be 1 to 86400".into());
        }
        if config.sinks.app.is_none() {
            return Err("[bundles]: bundles come over the app sink; add [sinks.app]".into());
        }
        if config.field.as_ref().and_then(|f| f.authorized_keys.as_ref()).is_none() {
            return Err("[bundles]: bundles are verified with [field] authorized_keys; set it".into());
        }
        Ok(())
    }
}

/// The folder of bundles under the state directory.
pub const DIR: &str = "bundles";

/// The kinds whose files are a folder of a version (each file a codec, a profile).
const FOLDERS: [Kind; 2] = [Kind::Codecs, Kind::Profiles];

/// In a version folder: the SHA-256 of the bundle message that made it.
const RECEIVED: &str = ".bundle-sha256";

/// Versions kept besides `current` and `previous` (older ones are deleted).
const KEEP: usize = 3;

/// A version on probation: put in force, watched, rolled back to `previous` if it fails.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probation {
    pub version: u64,
    pub previous: u64,
    /// Who signed it (for the audit entry of a roll-back after a restart).
    pub key_id: String,
    /// The sinks connected when it was applied: each must be connected when the watch ends
    /// (across a restart of the pipeline, which starts with every sink disconnected).
    #[serde(default)]
    pub connected_before: Vec<String>,
}

/// The bundles folder of one gateway.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Store {
        Store { dir: state_dir.join(DIR) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `current`: the path through which the running gateway reads its files.
    pub fn current(&self) -> PathBuf {
        self.dir.join("current")
    }

    fn version_dir(&self, version: u64) -> PathBuf {
        self.dir.join(format!("v{version}"))
    }

    /// The version `link` points at.
    fn link_version(&self, link: &str) -> anyhow::Result<Option<u64>> {
        match std::fs::read_link(self.dir.join(link)) {
            Ok(target) => {
                let name = target.to_string_lossy();
                let v = name.strip_prefix('v').and_then(|n| n.parse().ok());
                v.map(Some)
                    .with_context(|| format!("{}/{link} points at {name}, not a version", self.dir.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}/{link}", self.dir.display())),
        }
    }

    /// The version in force, if the store has been seeded.
    pub fn in_force(&self) -> anyhow::Result<Option<u64>> {
        self.link_version("current")
    }

    /// The highest version ever put in force (bundles up to it are refused as old).
    pub fn highest(&self) -> anyhow::Result<u64> {
        let in_force = self.in_force()?.unwrap_or(0);
        match std::fs::read_to_string(self.dir.join("highest")) {
            Ok(t) => {
                let v: u64 = t
                    .trim()
                    .parse()
                    .with_context(|| format!("{}/highest: not a number", self.dir.display()))?;
                Ok(v.max(in_force))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(in_force),
            Err(e) => Err(e).with_context(|| format!("reading {}/highest", self.dir.display())),
        }
    }

    pub fn probation(&self) -> anyhow::Result<Option<Probation>> {
        match std::fs::read(self.dir.join("probation")) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).context("bundles/probation")?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading bundles/probation"),
        }
    }

    /// The first start with bundles on: `v0` made of the files `config` names (before any
    /// overlay), and `current` pointing at it. Nothing if `current` exists. Leftover
    /// staging folders (a power cut while staging) are removed.
    pub fn seed(&self, config: &Config) -> anyhow::Result<()> {
        create_private_dir(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(".stage-") {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        if self.in_force()?.is_some() {
            return Ok(());
        }
        let stage = self.dir.join(".stage-0");
        create_private_dir(&stage)?;
        for folder in FOLDERS {
            create_private_dir(&stage.join(kind_file(folder)))?;
        }
        for (kind, path) in configured(config) {
            let name = kind_file(kind);
            let content = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            write_synced(&stage.join(name), &content)?;
        }
        sync_dir(&stage)?;
        let v0 = self.version_dir(0);
        if v0.exists() {
            std::fs::remove_dir_all(&v0)?;
        }
        std::fs::rename(&stage, &v0)?;
        self.point("current", 0)?;
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// A new version's folder, staged: `files` (path in the bundle, content) over the
    /// version in force's files of the kinds they do not carry. Not in force yet.
    pub fn stage(&self, version: u64, files: &[(String, Vec<u8>)]) -> anyhow::Result<PathBuf> {
        let Some(from) = self.in_force()? else { bail!("{} is not seeded", self.dir.display()) };
        let from = self.version_dir(from);
        let stage = self.dir.join(format!(".stage-{version}"));
        if stage.exists() {
            std::fs::remove_dir_all(&stage)?;
        }
        create_private_dir(&stage)?;
        for folder in FOLDERS {
            create_private_dir(&stage.join(kind_file(folder)))?;
        }
        let carried: Vec<Kind> = files.iter().filter_map(|(p, _)| Kind::of_path(p)).collect();
        for kind in Kind::ALL.into_iter().filter(|k| !carried.contains(k)) {
            if FOLDERS.contains(&kind) {
                let folder = kind_file(kind);
                let entries = match std::fs::read_dir(from.join(folder)) {
                    Ok(entries) => entries,
                    // A version made before this kind existed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(e).with_context(|| format!("reading {}", from.join(folder).display()))
                    }
                };
                for entry in entries {
                    let entry = entry?;
                    let content = std::fs::read(entry.path())?;
                    write_synced(&stage.join(folder).join(entry.file_name()), &content)?;
                }
            } else {
                let name = kind_file(kind);
                match std::fs::read(from.join(name)) {
                    Ok(content) => write_synced(&stage.join(name), &content)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("reading {}", from.join(name).display()))
                    }
                }
            }
        }
        for (path, content) in files {
            // Paths were checked by `bundle::open` (Kind::of_path): no `..`, no absolute path.
            write_synced(&stage.join(path), content)?;
        }
        for folder in FOLDERS {
            sync_dir(&stage.join(kind_file(folder)))?;
        }
        sync_dir(&stage)?;
        Ok(stage)
    }

    /// Put a staged version in force, on probation: its folder renamed into place,
    /// `previous` and `highest` written, then `current` switched by one rename.
    /// `payload_sha256` (of the bundle as received) is kept with it: the same message coming
    /// again (a retained copy at each connection) is then known and ignored.
    pub fn commit(
        &self,
        staged: &Path,
        version: u64,
        key_id: &str,
        payload_sha256: &str,
        connected_before: Vec<String>,
    ) -> anyhow::Result<Probation> {
        let Some(previous) = self.in_force()? else { bail!("{} is not seeded", self.dir.display()) };
        write_synced(&staged.join(RECEIVED), payload_sha256.as_bytes())?;
        let target = self.version_dir(version);
        if target.exists() {
            std::fs::remove_dir_all(&target)?;
        }
        std::fs::rename(staged, &target)?;
        let probation = Probation { version, previous, key_id: key_id.to_string(), connected_before };
        write_synced(&self.dir.join("probation"), &serde_json::to_vec(&probation)?)?;
        write_synced(&self.dir.join("highest"), format!("{}\n", version.max(self.highest()?)).as_bytes())?;
        self.point("previous", previous)?;
        self.point("current", version)?;
        sync_dir(&self.dir)?;
        self.prune();
        Ok(probation)
    }

    /// Whether `payload_sha256` is the bundle that made `version` (in force, kept or rolled back).
    pub fn received(&self, version: u64, payload_sha256: &str) -> bool {
        std::fs::read_to_string(self.version_dir(version).join(RECEIVED)).is_ok_and(|s| s == payload_sha256)
    }

    /// Whether versions `a` and `b` differ in what is read only at start (settings,
    /// profiles): then going from one to the other restarts the pipeline, not a reload.
    pub fn restart_needed(&self, a: u64, b: u64) -> bool {
        let read = |v: u64| std::fs::read(self.version_dir(v).join(kind_file(Kind::Settings))).ok();
        // Profiles are read once, when the field devices start: a change restarts them too.
        let profiles = |v: u64| -> Vec<(std::ffi::OsString, Vec<u8>)> {
            let Ok(entries) = std::fs::read_dir(self.version_dir(v).join(kind_file(Kind::Profiles))) else {
                return Vec::new();
            };
            let mut all: Vec<_> = entries
                .filter_map(|e| e.ok())
                .map(|e| (e.file_name(), std::fs::read(e.path()).unwrap_or_default()))
                .collect();
            all.sort();
            all
        };
        read(a) != read(b) || profiles(a) != profiles(b)
    }

    /// The version on probation passed its watch: it stays.
    pub fn keep(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(self.dir.join("probation")) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Back to the version before the one on probation: `current` switched back; the failed
    /// version's folder stays for inspection, and `highest` keeps it refused.
    pub fn roll_back(&self) -> anyhow::Result<Probation> {
        let Some(p) = self.probation()? else { bail!("no version on probation") };
        if !self.version_dir(p.previous).is_dir() {
            bail!("version {} to roll back to is gone from {}", p.previous, self.dir.display());
        }
        self.point("current", p.previous)?;
        std::fs::remove_file(self.dir.join("probation"))?;
        sync_dir(&self.dir)?;
        Ok(p)
    }

    /// `link` → `v<version>`, replaced by one rename.
    fn point(&self, link: &str, version: u64) -> anyhow::Result<()> {
        let tmp = self.dir.join(format!(".{link}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("v{version}"), &tmp)?;
        std::fs::rename(&tmp, self.dir.join(link))?;
        Ok(())
    }

    /// Delete the oldest versions beyond [`KEEP`], never `current` or `previous`.
    fn prune(&self) {
        let (Ok(Some(current)), Ok(previous)) = (self.in_force(), self.link_version("previous")) else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let mut versions: Vec<u64> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix('v')?.parse().ok())
            .filter(|v| *v != current && Some(*v) != previous)
            .collect();
        versions.sort_unstable();
        let excess = versions.len().saturating_sub(KEEP);
        for v in &versions[..excess] {
            if let Err(e) = std::fs::remove_dir_all(self.version_dir(*v)) {
                tracing::warn!("bundles: could not delete old version {v}: {e}");
            }
        }
    }
}

/// The name of a kind's file (or folder) in a version folder.
fn kind_file(kind: Kind) -> &'static str {
    match kind {
        Kind::Devices => "devices.toml",
        Kind::Codecs => "codecs",
        Kind::Profiles => "profiles",
        Kind::Rules => "rules.toml",
        Kind::AuthorizedKeys => "authorized_keys",
        Kind::Settings => "berrygw.toml",
    }
}

/// The kinds berrygw.toml configures a file for, and the file: only these may come in a
/// bundle (a bundle cannot turn on a part the gateway was not set up to run).
pub fn configured(config: &Config) -> Vec<(Kind, PathBuf)> {
    let mut out = Vec::new();
    if let Some(d) = &config.decode {
        out.push((Kind::Devices, d.devices.get_ref().clone()));
    }
    if let Some(f) = &config.field {
        if let Some(r) = &f.rules {
            out.push((Kind::Rules, r.get_ref().clone()));
        }
        if let Some(k) = &f.authorized_keys {
            out.push((Kind::AuthorizedKeys, k.get_ref().clone()));
        }
    }
    out
}

/// Whether berrygw.toml configures the part files of `kind` feed.
pub fn accepts(config: &Config, kind: Kind) -> bool {
    match kind {
        Kind::Codecs => config.decode.is_some(),
        Kind::Profiles => config.field.is_some(),
        Kind::Settings => true,
        _ => configured(config).iter().any(|(k, _)| *k == kind),
    }
}

/// The settings of the bundle in force (its `berrygw.toml`), if bundles are on and it has some.
pub fn settings_in_force(config: &Config) -> Option<PathBuf> {
    config.bundles.as_ref()?;
    let path = Store::new(&config.gateway.state_dir).current().join(kind_file(Kind::Settings));
    path.exists().then_some(path)
}

/// Make `config` read its site files from `dir` (a version folder, or `current`): the
/// registry, the rules and the keys from there, and codecs from `dir/codecs` first, then
/// the folders berrygw.toml names (the codecs shipped with the package stay reachable).
pub fn overlay(config: &mut Config, dir: &Path) {
    if let Some(d) = &mut config.decode {
        let span = d.devices.span();
        d.devices = toml::Spanned::new(span, dir.join("devices.toml"));
        d.codec_dirs.insert(0, dir.join("codecs"));
    }
    if let Some(f) = &mut config.field {
        if let Some(r) = &mut f.rules {
            *r = toml::Spanned::new(r.span(), dir.join("rules.toml"));
        }
        if let Some(k) = &mut f.authorized_keys {
            *k = toml::Spanned::new(k.span(), dir.join("authorized_keys"));
        }
        // Last: a later folder's profile replaces an earlier one of the same name.
        f.profile_dirs.push(dir.join("profiles"));
    }
}

/// Write `content` to `path` with mode 0600 through a synced temporary file and a rename.
fn write_synced(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp-write");
    write_private_synced(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::config::parse;

    /// A configuration with a registry and keys in `dir`, bundles on, state in `dir/s`.
    fn config(dir: &Path) -> Config {
        std::fs::write(dir.join("devices.toml"), "# seed registry\n").expect("devices");
        std::fs::write(dir.join("authorized_keys"), "# seed keys\n").expect("keys");
        let text = format!(
            "[gateway]\nid = \"0016c001ff10a235\"\nstate_dir = \"{d}/s\"\n\n[radio]\nkind = \"sim\"\n[radio.sim]\n\
             devices = []\n\n[sinks.chirpstack]\nserver = \"mqtt://127.0.0.1:1883\"\n\n[sinks.app]\n\
             server = \"mqtt://127.0.0.1:1883\"\n\n[decode]\ndevices = \"{d}/devices.toml\"\n\n\
             [field]\nauthorized_keys = \"{d}/authorized_keys\"\n\n[bundles]\nwatch_secs = 5\n",
            d = dir.display()
        );
        parse(Path::new("berrygw.toml"), text).expect("config").config
    }

    fn read(path: PathBuf) -> String {
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn seeded_once_then_each_version_is_whole_and_switched_by_one_link() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = config(dir.path());
        let store = Store::new(&dir.path().join("s"));
        store.seed(&c).expect("seed");
        assert_eq!(store.in_force().expect("read"), Some(0));
        assert_eq!(read(store.current().join("devices.toml")), "# seed registry\n");
        // The base files change by hand later: the seed is not made again.
        std::fs::write(dir.path().join("devices.toml"), "# edited\n").expect("edit");
        store.seed(&c).expect("seed again");
        assert_eq!(read(store.current().join("devices.toml")), "# seed registry\n");

        let files = vec![
            ("devices.toml".to_string(), b"# v3 registry\n".to_vec()),
            ("codecs/meter.js".to_string(), b"function decodeUplink() {}".to_vec()),
        ];
        let staged = store.stage(3, &files).expect("stage");
        assert_eq!(store.in_force().expect("read"), Some(0), "staged is not in force");
        store.commit(&staged, 3, "config", "abc", Vec::new()).expect("commit");
        assert_eq!(store.in_force().expect("read"), Some(3));
        assert_eq!(store.highest().expect("highest"), 3);
        assert!(store.received(3, "abc") && !store.received(3, "abd"));
        let current = store.current();
        assert_eq!(read(current.join("devices.toml")), "# v3 registry\n");
        assert_eq!(read(current.join("authorized_keys")), "# seed keys\n", "kinds not carried come along");
        assert_eq!(read(current.join("codecs/meter.js")), "function decodeUplink() {}");
        let mode =
            std::fs::metadata(current.join("devices.toml")).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(store.probation().expect("p").map(|p| (p.version, p.previous)), Some((3, 0)));

        // A version without codecs keeps the codecs in force.
        store.keep().expect("keep");
        assert_eq!(store.probation().expect("p"), None);
        let staged = store.stage(4, &[("authorized_keys".into(), b"# v4 keys\n".to_vec())]).expect("stage");
        store.commit(&staged, 4, "root", "def", Vec::new()).expect("commit");
        assert_eq!(read(store.current().join("codecs/meter.js")), "function decodeUplink() {}");
        assert_eq!(read(store.current().join("devices.toml")), "# v3 registry\n");

        // Rolled back: version 3 again, and 4 stays refused (highest).
        let p = store.roll_back().expect("roll back");
        assert_eq!((p.version, p.previous, p.key_id.as_str()), (4, 3, "root"));
        assert_eq!(store.in_force().expect("read"), Some(3));
        assert_eq!(store.highest().expect("highest"), 4);
        assert_eq!(read(store.current().join("authorized_keys")), "# seed keys\n");
        assert!(store.roll_back().is_err(), "nothing on probation any more");
    }

    #[test]
    fn a_power_cut_while_staging_leaves_the_version_in_force_and_no_debris() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = config(dir.path());
        let store = Store::new(&dir.path().join("s"));
        store.seed(&c).expect("seed");
        let staged = store.stage(1, &[("devices.toml".into(), b"# half".to_vec())]).expect("stage");
        // The power goes before the commit: the next start removes the staging folder.
        store.seed(&c).expect("next start");
        assert!(!staged.exists());
        assert_eq!(store.in_force().expect("read"), Some(0));
        assert_eq!(store.highest().expect("highest"), 0, "a version never in force can still come");
    }

    #[test]
    fn a_damaged_store_is_an_error_never_a_guess() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = config(dir.path());
        let store = Store::new(&dir.path().join("s"));
        store.seed(&c).expect("seed");
        std::fs::write(store.dir().join("highest"), "lots\n").expect("damage");
        let err = store.highest().expect_err("not a number").to_string();
        assert!(err.contains("highest"), "{err}");
        std::fs::write(store.dir().join("probation"), "{").expect("damage");
        assert!(store.probation().is_err());
        assert!(store.roll_back().is_err(), "nothing rolled back on a probation that does not read");
        std::fs::remove_file(store.current()).expect("unlink");
        std::os::unix::fs::symlink("elsewhere", store.current()).expect("link");
        let err = store.in_force().expect_err("not a version").to_string();
        assert!(err.contains("not a version"), "{err}");
        assert!(store.stage(1, &[]).is_err(), "nothing staged over a store that does not read");
    }

    #[test]
    fn old_versions_are_pruned_but_current_and_previous_stay() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = config(dir.path());
        let store = Store::new(&dir.path().join("s"));
        store.seed(&c).expect("seed");
        for v in 1..=8 {
            let staged =
                store.stage(v, &[("devices.toml".into(), format!("# {v}").into_bytes())]).expect("stage");
            store.commit(&staged, v, "config", "x", Vec::new()).expect("commit");
            store.keep().expect("keep");
        }
        let mut left: Vec<String> = std::fs::read_dir(store.dir())
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().to_str().map(String::from))
            .filter(|n| n.starts_with('v'))
            .collect();
        left.sort();
        assert_eq!(left, ["v4", "v5", "v6", "v7", "v8"]);
    }

    #[test]
    fn the_overlay_reads_the_site_through_the_link_and_keeps_shipped_codecs() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = config(dir.path());
        let shipped = c.decode.as_ref().map(|d| d.codec_dirs.clone()).unwrap_or_default();
        overlay(&mut c, Path::new("/s/bundles/current"));
        let d = c.decode.as_ref().expect("decode");
        assert_eq!(d.devices.get_ref(), Path::new("/s/bundles/current/devices.toml"));
        assert_eq!(d.codec_dirs[0], Path::new("/s/bundles/current/codecs"));
        assert_eq!(&d.codec_dirs[1..], shipped.as_slice());
        let keys = c.field.as_ref().and_then(|f| f.authorized_keys.as_ref()).expect("keys");
        assert_eq!(keys.get_ref(), Path::new("/s/bundles/current/authorized_keys"));
        assert!(accepts(&c, Kind::Codecs) && accepts(&c, Kind::Devices) && !accepts(&c, Kind::Rules));
    }
}
