//! The device registry, `/etc/berrygw/devices.toml`: the LoRaWAN devices this
//! gateway decodes locally, with their keys, codec and where their readings go.
//! Parsed strictly (every error names file, line and key) and refused outright
//! unless the file is mode 0600: it holds keys. Loading never touches the
//! running decoder; the caller swaps a whole new registry in or keeps the old.
//!
//! ```toml
//! [[device]]
//! name = "sonde-niveau-cher-pont"
//! dev_eui = "70b3d57ed0051a02"
//! tags = { site = "pont du Cher", kind = "river_level" }
//! codec = "river-level.js"          # or "cayenne_lpp", "hex" (the default)
//! variables = { offset_cm = "12" }  # ChirpStack codecs read them as input.variables
//! target = "local"                  # optional: a topic of its own, or "local" (not published)
//! relax_fcnt = true                  # optional: accept a counter that restarted (weaker replay protection)
//! abp = { dev_addr = "260b1a02", nwk_s_key = "…", app_s_key = "…" }
//! # or: otaa = { app_key = "…", join_eui = "…" }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use berrygw_lora::phy::{AesKey, DevAddr, Eui64};
use serde::Deserialize;
use toml::Spanned;

use berrygw_core::{locate, read_file, ConfigError};

/// The whole registry, checked.
#[derive(Clone, Debug)]
pub struct Registry {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    devices: Vec<Device>,
    by_eui: HashMap<Eui64, usize>,
}

/// One device.
#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    pub name: String,
    pub dev_eui: Eui64,
    pub tags: BTreeMap<String, String>,
    pub activation: Activation,
    pub codec: CodecRef,
    /// Handed to ChirpStack-style codecs as `input.variables`.
    pub variables: BTreeMap<String, String>,
    pub target: Target,
    /// Accept an uplink counter that went back (an ABP device that restarted its
    /// count after a battery change): such a frame is decoded when its MIC
    /// checks with the counter as sent. Replays of old frames are then decoded too.
    pub relax_fcnt: bool,
}

/// How the device got (or gets) its session keys.
#[derive(Clone, Debug, PartialEq)]
pub enum Activation {
    /// Keys written in the registry.
    Abp { dev_addr: DevAddr, nwk_s_key: AesKey, app_s_key: AesKey },
    /// Keys derived from a join this gateway relays, or pushed by the central side.
    Otaa { join_eui: Option<Eui64>, app_key: AesKey },
}

/// Which codec decodes the device's payloads.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CodecRef {
    CayenneLpp,
    Hex,
    /// A JavaScript file, resolved against the codec folders.
    Js(PathBuf),
}

/// Where the device's readings are published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `<prefix>/<gateway_id>/device/<dev_eui>/up` on the app sink.
    Default,
    /// A topic of its own on the app sink.
    Topic(String),
    /// Kept on the gateway (rules, status page); not published.
    Local,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    device: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: Spanned<String>,
    dev_eui: Spanned<Eui64>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    abp: Option<Spanned<AbpEntry>>,
    otaa: Option<Spanned<OtaaEntry>>,
    codec: Option<Spanned<String>>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    target: Option<Spanned<String>>,
    #[serde(default)]
    relax_fcnt: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AbpEntry {
    dev_addr: DevAddr,
    nwk_s_key: AesKey,
    app_s_key: AesKey,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OtaaEntry {
    join_eui: Option<Eui64>,
    app_key: AesKey,
}

/// Largest registry file read: a few hundred bytes per device for [`MAX_DEVICES`].
pub const MAX_REGISTRY_BYTES: u64 = 4 * 1024 * 1024;
/// Most devices one gateway decodes for; parsing and key setup grow with the count.
pub const MAX_DEVICES: usize = 10_000;

impl Registry {
    /// Read and check the registry at `path`; codec files are looked up in `codec_dirs`.
    pub fn load(path: &Path, codec_dirs: &[PathBuf]) -> Result<Registry, ConfigError> {
        let size =
            std::fs::metadata(path).map_err(|e| ConfigError::whole(path, format!("cannot read: {e}")))?.len();
        if size > MAX_REGISTRY_BYTES {
            return Err(too_large(path, size));
        }
        let source = read_file(path, 0o077, |mode| {
            format!(
                "mode {mode:04o} lets other users read device keys; run `chmod 600 {}` \
                 (and chown it to the berrygw user)",
                path.display()
            )
        })?;
        Registry::parse(path, &source, codec_dirs)
    }

    /// Parse and check registry text; `path` names it in messages.
    pub fn parse(path: &Path, source: &str, codec_dirs: &[PathBuf]) -> Result<Registry, ConfigError> {
        if source.len() as u64 > MAX_REGISTRY_BYTES {
            return Err(too_large(path, source.len() as u64));
        }
        let file: File =
            toml::from_str(source).map_err(|e| locate(path, source, e.span(), e.message().to_string()))?;
        if file.device.len() > MAX_DEVICES {
            return Err(ConfigError::whole(
                path,
                format!(
                    "{} devices is more than the {MAX_DEVICES} one gateway decodes for; \
                     split them between gateways",
                    file.device.len()
                ),
            ));
        }
        let at = |span: std::ops::Range<usize>, key: String, message: String| {
            let mut e = locate(path, source, Some(span), message);
            e.key = Some(key);
            e
        };
        let mut devices = Vec::with_capacity(file.device.len());
        let mut by_eui = HashMap::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut abp_keys: HashMap<(DevAddr, [u8; 16]), usize> = HashMap::new();
        for (i, e) in file.device.into_iter().enumerate() {
            let key = |k: &str| format!("device[{i}].{k}");
            let name = e.name.get_ref().trim().to_string();
            if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
                return Err(at(e.name.span(), key("name"), "a name of 1 to 64 printable characters".into()));
            }
            if let Some(other) = names.insert(name.clone(), i) {
                return Err(at(e.name.span(), key("name"), format!("device[{other}] already has this name")));
            }
            let dev_eui = *e.dev_eui.get_ref();
            if let Some(other) = by_eui.insert(dev_eui, i) {
                return Err(at(
                    e.dev_eui.span(),
                    key("dev_eui"),
                    format!("device[{other}] already has DevEUI {dev_eui}"),
                ));
            }
            let activation = match (e.abp, e.otaa) {
                (Some(abp), None) => {
                    let span = abp.span();
                    let abp = abp.into_inner();
                    if let Some(other) = abp_keys.insert((abp.dev_addr, abp.nwk_s_key.0), i) {
                        return Err(at(
                            span,
                            key("abp"),
                            format!("device[{other}] has the same DevAddr and NwkSKey; frames could not be told apart"),
                        ));
                    }
                    Activation::Abp {
                        dev_addr: abp.dev_addr,
                        nwk_s_key: abp.nwk_s_key,
                        app_s_key: abp.app_s_key,
                    }
                }
                (None, Some(otaa)) => {
                    let otaa = otaa.into_inner();
                    Activation::Otaa { join_eui: otaa.join_eui, app_key: otaa.app_key }
                }
                (Some(abp), Some(_)) => {
                    return Err(at(
                        abp.span(),
                        key("abp"),
                        "a device is either `abp` or `otaa`, not both".into(),
                    ))
                }
                (None, None) => {
                    return Err(at(
                        e.name.span(),
                        format!("device[{i}]"),
                        "no keys: add `abp = { dev_addr, nwk_s_key, app_s_key }` or `otaa = { app_key }`"
                            .into(),
                    ))
                }
            };
            let codec = match &e.codec {
                None => CodecRef::Hex,
                Some(c) => resolve_codec(c.get_ref(), codec_dirs)
                    .map_err(|message| at(c.span(), key("codec"), message))?,
            };
            let target = match &e.target {
                None => Target::Default,
                Some(t) if t.get_ref() == "local" => Target::Local,
                Some(t) => {
                    let topic = t.get_ref();
                    if topic.is_empty() || topic.contains(['+', '#', '\n', '\0']) || topic.len() > 256 {
                        return Err(at(
                            t.span(),
                            key("target"),
                            "an MQTT topic without wildcards (at most 256 bytes), or \"local\"".into(),
                        ));
                    }
                    Target::Topic(topic.clone())
                }
            };
            devices.push(Device {
                name,
                dev_eui,
                tags: e.tags,
                activation,
                codec,
                variables: e.variables,
                target,
                relax_fcnt: e.relax_fcnt,
            });
        }
        Ok(Registry { path: path.to_path_buf(), devices, by_eui })
    }

    /// An empty registry (decoding on, no device known yet).
    pub fn empty(path: &Path) -> Registry {
        Registry { path: path.to_path_buf(), devices: Vec::new(), by_eui: HashMap::new() }
    }

    /// Every device, in file order.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The device with this DevEUI.
    pub fn by_eui(&self, dev_eui: Eui64) -> Option<&Device> {
        self.by_eui.get(&dev_eui).and_then(|&i| self.devices.get(i))
    }

    /// The device called `name`, or whose DevEUI is `name`.
    pub fn find(&self, name: &str) -> Option<&Device> {
        self.devices
            .iter()
            .find(|d| d.name == name)
            .or_else(|| name.parse::<Eui64>().ok().and_then(|eui| self.by_eui(eui)))
    }

    /// Every codec the devices use, once each.
    pub fn codecs(&self) -> impl Iterator<Item = &CodecRef> {
        let mut seen: Vec<&CodecRef> = self.devices.iter().map(|d| &d.codec).collect();
        seen.sort();
        seen.dedup();
        seen.into_iter()
    }
}

fn too_large(path: &Path, size: u64) -> ConfigError {
    ConfigError::whole(
        path,
        format!(
            "{size} bytes is more than a device registry may hold ({MAX_REGISTRY_BYTES} bytes, \
             about {MAX_DEVICES} devices); split the devices between gateways"
        ),
    )
}

/// A codec name from the registry: a built-in, or a `.js` file found in `dirs`
/// (an absolute path is taken as is).
pub fn resolve_codec(name: &str, dirs: &[PathBuf]) -> Result<CodecRef, String> {
    match name {
        "cayenne_lpp" | "cayenne-lpp" => return Ok(CodecRef::CayenneLpp),
        "hex" | "raw" => return Ok(CodecRef::Hex),
        _ => {}
    }
    if !name.ends_with(".js") {
        return Err(format!(
            "unknown codec `{name}`: use \"cayenne_lpp\", \"hex\" or a file name ending in .js"
        ));
    }
    let path = Path::new(name);
    if path.is_absolute() {
        return if path.is_file() {
            Ok(CodecRef::Js(path.to_path_buf()))
        } else {
            Err(format!("codec file {name} does not exist"))
        };
    }
    if path.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(format!("codec `{name}`: give a file name, or an absolute path"));
    }
    dirs.iter().map(|d| d.join(path)).find(|p| p.is_file()).map(CodecRef::Js).ok_or_else(|| {
        let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        format!("codec file {name} not found in {}", searched.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const ABP: &str = r#"
[[device]]
name = "sonde-niveau-cher-pont"
dev_eui = "70b3d57ed0051a02"
tags = { site = "pont du Cher" }
codec = "cayenne_lpp"
abp = { dev_addr = "260b1a02", nwk_s_key = "9608a1551e4e78dd91ef99ac742febb2", app_s_key = "296286824a033536150f6ee52d24a457" }

[[device]]
name = "compteur-otaa"
dev_eui = "70b3d57ed0051a05"
target = "local"
otaa = { app_key = "000102030405060708090a0b0c0d0e0f" }
"#;

    fn parse(text: &str) -> Result<Registry, ConfigError> {
        Registry::parse(Path::new("devices.toml"), text, &[])
    }

    #[test]
    fn abp_and_otaa_devices_are_read() {
        let r = parse(ABP).expect("valid registry");
        assert_eq!(r.devices().len(), 2);
        let d = r.find("sonde-niveau-cher-pont").expect("by name");
        assert_eq!(d.codec, CodecRef::CayenneLpp);
        assert!(
            matches!(d.activation, Activation::Abp { dev_addr, .. } if dev_addr == DevAddr::from_u32(0x260b_1a02))
        );
        let o = r.find("70b3d57ed0051a05").expect("by DevEUI");
        assert_eq!(o.target, Target::Local);
        assert_eq!(o.codec, CodecRef::Hex, "hex is the default codec");
    }

    #[test]
    fn errors_name_line_and_key() {
        let cases = [
            (
                ABP.replace("dev_eui = \"70b3d57ed0051a05\"", "dev_eui = \"70b3d57ed0051a02\""),
                11,
                "device[1].dev_eui",
            ),
            (ABP.replace("compteur-otaa", "sonde-niveau-cher-pont"), 10, "device[1].name"),
            (ABP.replace("\"cayenne_lpp\"", "\"nonexistent.js\""), 6, "device[0].codec"),
            (ABP.replace("\"cayenne_lpp\"", "\"frobnicate\""), 6, "device[0].codec"),
            (ABP.replace("\"cayenne_lpp\"", "\"../etc/passwd.js\""), 6, "device[0].codec"),
            (ABP.replace("target = \"local\"", "target = \"a/+/b\""), 12, "device[1].target"),
            (ABP.replace("tags = {", "colour = \"red\"\ntags = {"), 5, "device.colour"),
            (ABP.replace("\"260b1a02\"", "\"260b1a0\""), 7, "device.abp"),
        ];
        for (text, line, key) in cases {
            let err = parse(&text).expect_err(key);
            assert_eq!(err.line, Some(line), "{key}: {err}");
            assert_eq!(err.key.as_deref(), Some(key), "{err}");
        }
    }

    #[test]
    fn a_device_needs_exactly_one_activation() {
        let none = "[[device]]\nname = \"x\"\ndev_eui = \"0000000000000001\"\n";
        let err = parse(none).expect_err("no keys");
        assert!(err.message.contains("no keys"), "{err}");
        let both = format!(
            "{none}abp = {{ dev_addr = \"01020304\", nwk_s_key = \"{k}\", app_s_key = \"{k}\" }}\notaa = {{ app_key = \"{k}\" }}\n",
            k = "00".repeat(16)
        );
        let err = parse(&both).expect_err("both");
        assert!(err.message.contains("not both"), "{err}");
    }

    #[test]
    fn registry_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("devices.toml");
        std::fs::write(&path, ABP).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Registry::load(&path, &[]).expect_err("0644 refused");
        assert!(err.message.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        Registry::load(&path, &[]).expect("0600 accepted");
    }

    #[test]
    fn oversized_registries_are_refused_before_parsing() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("devices.toml");
        let huge = format!("{ABP}\n# {}\n", "x".repeat(MAX_REGISTRY_BYTES as usize));
        std::fs::write(&path, &huge).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = Registry::load(&path, &[]).expect_err("too many bytes");
        assert!(err.message.contains("more than a device registry may hold"), "{err}");

        let device = |i: usize| {
            format!(
                "[[device]]\nname = \"d{i}\"\ndev_eui = \"{i:016x}\"\notaa = {{ app_key = \"{}\" }}\n",
                "00".repeat(16)
            )
        };
        let many: String = (0..=MAX_DEVICES).map(device).collect();
        assert!(many.len() as u64 <= MAX_REGISTRY_BYTES, "the count is what is refused here");
        let err = parse(&many).expect_err("too many devices");
        assert!(err.message.contains(&format!("{} devices is more than", MAX_DEVICES + 1)), "{err}");
    }

    #[test]
    fn js_codecs_are_found_in_the_folders_in_order() {
        let site = tempfile::tempdir().expect("tmp");
        let shipped = tempfile::tempdir().expect("tmp");
        std::fs::write(shipped.path().join("a.js"), "").expect("write");
        std::fs::write(shipped.path().join("b.js"), "").expect("write");
        std::fs::write(site.path().join("b.js"), "").expect("write");
        let dirs = [site.path().to_path_buf(), shipped.path().to_path_buf()];
        assert_eq!(resolve_codec("a.js", &dirs), Ok(CodecRef::Js(shipped.path().join("a.js"))));
        assert_eq!(resolve_codec("b.js", &dirs), Ok(CodecRef::Js(site.path().join("b.js"))), "site wins");
        assert!(resolve_codec("c.js", &dirs).is_err());
    }
}
